"""On-disk, memory-mapped, file-locked store of precomputed features.

An entry holds N items, each an H×W×C array (channels-last, format 2; H = W =
``readout.feature_size``, 28 by default), as one ``.npy`` file (so it is
self-describing) plus a JSON meta file. The key is a hash of the fields that
determine the features (backbone, weights identity, padding, taps, image set,
dtype, ...). Files in the cache directory:

``<key>.npy``
    the data (``np.lib.format`` header + array)
``<key>.json``
    meta: fields, shape, dtype, created time, size, and the CRC-32 of each 64 MiB
    chunk of the data. Written last, so its presence is the completeness marker.
    A process checks the data against it the first time it opens the entry.
``<key>.verified``
    which sweep ($POSINFO_SWEEP_ID) last checked the data (or wrote it) and the
    file's inode, size and modification time then: the other jobs of that sweep
    trust the check while the file is unchanged, so a sweep reads each entry
    through once, not once per job.
``<key>.lock``
    the ``filelock`` lock that makes concurrent processes compute an entry once.
    Lock files are never deleted (deleting a lock file another process may be
    waiting on breaks mutual exclusion); they are empty.
``<key>.<pid>-<rand>.tmp.npy`` / ``.tmp.json`` / ``.tmp.verified``
    an entry being written. Left behind only by a crash; ignored by readers and
    deleted by the next process that takes the entry's lock.
``readouts/<key>.pt``
    the readout store (posinfo.readoutstore.ReadoutStore): trained readouts, reused by
    jobs that differ only in their evaluation input, keyed also by the identity of
    the entry they were trained on (``content_id``), so a rebuilt entry serves none
    of the readouts of its earlier build. Listed by ``ls``, removed by ``clear``.
``encoders/<key>.json``
    an encoder configuration's name and taps (channels, sizes), so that a job whose
    features are all cached never builds its encoder (posinfo.sources.encoder_taps).
    A few hundred bytes each; removed by ``clear``.

Command line::

    python -m posinfo.cache [--dir D] ls | rm KEY [KEY ...] | clear
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import filelock
import numpy as np

from posinfo.errors import PosinfoError
from posinfo.io import quiet_closed_pipe
from posinfo.names import CACHE_DIR_ENV, SWEEP_ID_ENV, default_cache_dir, utc_now
from posinfo.names import CACHE_DTYPES as DTYPES

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: items stored channels-last (N×H×W×C)
KEY_LENGTH = 20
# Free disk space left untouched when deciding whether an entry fits.
DISK_MARGIN_BYTES = 1_000_000_000

_DATA_SUFFIX = ".npy"
_META_SUFFIX = ".json"
_LOCK_SUFFIX = ".lock"
_STAMP_SUFFIX = ".verified"  # which sweep last checked the entry, and the file it checked
_TMP_MARK = ".tmp"
READOUTS_DIR = "readouts"  # the readout store (posinfo.readoutstore.ReadoutStore)
ENCODERS_DIR = "encoders"  # each encoder configuration's taps (posinfo.sources.encoder_taps)
CHECKSUM_CHUNK_BYTES = 64 << 20
_VERIFIED: set[str] = set()  # data files this process has checked against their checksum (or written)


@dataclass
class Entry:
    """One complete cache entry."""

    key: str
    path: Path  # the .npy data file
    meta: dict
    size_bytes: int


# --------------------------------------------------------------------------- keys


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def make_key(fields: dict) -> str:
    """The entry key: first ``KEY_LENGTH`` hex digits of the sha256 of the fields
    (plus the format version) as sorted-key JSON."""
    if not isinstance(fields, dict):
        raise PosinfoError(f"cache fields must be a dict, got {type(fields).__name__}")
    payload = json.dumps(
        {**fields, "format": FORMAT_VERSION}, sort_keys=True, default=_json_default
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:KEY_LENGTH]


def file_digest(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """sha256 hex digest of a file's content, read in chunks."""
    p = Path(path)
    h = hashlib.sha256()
    try:
        with open(p, "rb") as f:
            while chunk := f.read(chunk_bytes):
                h.update(chunk)
    except OSError as e:
        raise PosinfoError(f"cannot read {p} to hash it: {e.strerror or e}") from e
    return h.hexdigest()


# --------------------------------------------------------------------------- paths


def _data_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{key}{_DATA_SUFFIX}"


def _meta_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{key}{_META_SUFFIX}"


def _lock_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{key}{_LOCK_SUFFIX}"


def _stamp_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{key}{_STAMP_SUFFIX}"


def _is_tmp(p: Path) -> bool:
    return _TMP_MARK + "." in p.name


def _tmp_files(cache_dir: Path, key: str) -> list[Path]:
    return [p for p in cache_dir.glob(f"{key}.*") if _is_tmp(p)]


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass


def _fmt_size(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.1f} MB"


# --------------------------------------------------------------------------- entries


def _read_meta(cache_dir: Path, key: str) -> dict | None:
    """The meta of a complete entry, or None (missing, unreadable, other format,
    or no data file)."""
    mp = _meta_path(cache_dir, key)
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        return None
    if not isinstance(meta.get("shape"), list):
        return None
    if not _data_path(cache_dir, key).is_file():
        return None
    return meta


def _open_complete(
    cache_dir: Path, key: str, shape: tuple[int, ...], dtype: str, quiet: bool = False, verify: bool = True
) -> np.ndarray | None:
    """Open the entry read-only if complete, of the expected shape/dtype and, the first time
    this process opens it (``verify``), matching its checksum (``quiet``: do not warn about
    a bad entry, the caller already did). Entries written before checksums pass unchecked."""
    warn = (lambda *a: None) if quiet else log.warning
    meta = _read_meta(cache_dir, key)
    if meta is None:
        return None
    if tuple(meta.get("shape", ())) != shape or meta.get("dtype") != dtype:
        warn(
            "feature cache entry %s has shape %s %s, expected %s %s; not using it",
            key, meta.get("shape"), meta.get("dtype"), list(shape), dtype,
        )
        return None
    try:
        arr = np.lib.format.open_memmap(_data_path(cache_dir, key), mode="r")
    except (OSError, ValueError) as e:
        warn("feature cache entry %s is unreadable (%s); not using it", key, e)
        return None
    if arr.shape != shape or arr.dtype != np.dtype(dtype):
        warn("feature cache entry %s data does not match its meta; not using it", key)
        return None
    data = str(_data_path(cache_dir, key).resolve())
    if verify and data not in _VERIFIED and isinstance(meta.get("checksum"), dict):
        if _stamped(cache_dir, key):
            log.debug("feature cache entry %s was checked by another job of this sweep", key)
        else:
            bad = _corrupt_chunk(_data_path(cache_dir, key), meta["checksum"])
            if bad is not None:
                warn("feature cache entry %s is corrupt (%s fails its checksum): rebuilding it", key,
                     "its size" if bad < 0 else f"chunk {bad + 1} of {len(meta['checksum']['values'])}")
                return None
            _stamp(cache_dir, key)
        _VERIFIED.add(data)
    return arr


def _file_identity(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _stamped(cache_dir: Path, key: str) -> bool:
    """Whether a process of this sweep ($POSINFO_SWEEP_ID) checked the entry's data file
    against its checksum (or wrote it), and the file has not been replaced or written since
    (same inode, size and modification time). So a sweep reads each entry through once,
    not once per job: at DUTS scale a VGG16 entry is 24 GB."""
    sweep = os.environ.get(SWEEP_ID_ENV)
    if not sweep:
        return False
    try:
        stamp = json.loads(_stamp_path(cache_dir, key).read_text(encoding="utf-8"))
        return stamp.get("sweep") == sweep and stamp.get("file") == _file_identity(_data_path(cache_dir, key))
    except (OSError, ValueError, AttributeError):
        return False


def _stamp(cache_dir: Path, key: str) -> None:
    """Record that this sweep's process checked (or wrote) the entry's data file; best effort:
    a cache folder this process cannot write to only means the next job checks again."""
    sweep = os.environ.get(SWEEP_ID_ENV)
    if not sweep:
        return
    tmp = cache_dir / f"{key}.{os.getpid()}-{uuid.uuid4().hex[:8]}{_TMP_MARK}{_STAMP_SUFFIX}"
    try:
        tmp.write_text(json.dumps({"sweep": sweep, "file": _file_identity(_data_path(cache_dir, key)),
                                   "checked": utc_now()}), encoding="utf-8")
        os.replace(tmp, _stamp_path(cache_dir, key))
    except OSError as e:
        _unlink(tmp)
        log.debug("feature cache entry %s: no verification stamp (%s)", key, e)


def _reserve(path: Path, cache_dir: Path, key: str) -> None:
    """Give the (sparse) entry file its disk blocks before it is filled: a disk that fills
    up then fails here with one line, not with SIGBUS halfway through the memory map."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: best effort
                return
            raise
        raise _no_space(cache_dir, key, size) from None
    finally:
        os.close(fd)


def _no_space(cache_dir: Path, key: str, size: int) -> PosinfoError:
    return PosinfoError(
        f"no space left in {cache_dir} for feature cache entry {key} ({_fmt_size(size)} needed): "
        f"free space there, set cache.dir to a larger disk, or cache.enabled=false"
    )


# errno of a write refused by the folder (a read-only mount, no permission), not by a full disk
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
_READ_ONLY: set[str] = set()  # cache folders this process found it cannot write to


def note_read_only(cache_dir: Path, error: OSError) -> bool:
    """Whether ``error`` is a write refused by ``cache_dir`` (read-only, no permission); the first
    time per folder and process, one warning that says what a read-only cache does."""
    if error.errno not in _READ_ONLY_ERRNOS:
        return False
    where = _folder_id(cache_dir)
    if where not in _READ_ONLY:
        _READ_ONLY.add(where)
        log.warning("feature cache %s cannot be written (%s): its entries and readouts are used, what it lacks is "
                    "computed for this job and not stored (to store it, set cache.dir to a writable folder)",
                    cache_dir, error.strerror or error)
    return True


def read_only(cache_dir: Path) -> bool:
    """Whether this process found ``cache_dir`` read-only (note_read_only)."""
    return _folder_id(cache_dir) in _READ_ONLY


def _folder_id(cache_dir: Path) -> str:
    return str(Path(cache_dir).expanduser().resolve())


def _writable(cache_dir: Path, key: str) -> bool:
    """Whether the entry's lock file can be opened for writing: a shared cache mounted read-only
    (common on clusters) is still read; only its misses cannot be stored."""
    try:
        with open(_lock_path(cache_dir, key), "a"):
            return True
    except OSError as e:
        if note_read_only(cache_dir, e):
            return False
        raise


def _checksum(path: Path) -> dict:
    """CRC-32 of each chunk of the entry file (header included)."""
    values = []
    with open(path, "rb") as f:
        while chunk := f.read(CHECKSUM_CHUNK_BYTES):
            values.append(zlib.crc32(chunk))
    return {"algorithm": "crc32", "chunk_bytes": CHECKSUM_CHUNK_BYTES, "values": values}


def _corrupt_chunk(path: Path, checksum: dict) -> int | None:
    """The first chunk of ``path`` whose CRC-32 differs from ``checksum`` (-1: a size change), or None."""
    chunk_bytes = int(checksum.get("chunk_bytes", CHECKSUM_CHUNK_BYTES))
    expected = list(checksum.get("values", []))
    with open(path, "rb") as f:
        for i, want in enumerate(expected):
            if zlib.crc32(f.read(chunk_bytes)) != want:
                return i
        if f.read(1):
            return -1
    return None


def _entry_of(arr: Any) -> tuple[Path, str] | None:
    """The folder and key of the entry whose data file ``arr`` maps (an entry opened here, or a
    slice of one: numpy keeps a memory map's file name through slicing); None for any other array."""
    name = getattr(arr, "filename", None)
    if not name:
        return None
    p = Path(name)
    if _is_tmp(p) or not p.name.endswith(_DATA_SUFFIX):
        return None
    return p.parent, p.name[: -len(_DATA_SUFFIX)]


def content_id(arr: Any) -> dict | None:
    """What pins down the bytes of the entry that ``arr`` maps: its key, when it was written and
    the CRC-32s recorded then. A rebuild of the entry (after it failed its checksum) writes it
    anew, so its identity changes even when the rebuilt bytes equal the first build's. None when
    ``arr`` is no complete entry's map (features computed in memory)."""
    found = _entry_of(arr)
    meta = _read_meta(*found) if found else None
    if meta is None:
        return None
    checksum = meta.get("checksum")
    return {"entry": found[1], "created": meta.get("created"),
            "crc32": checksum.get("values") if isinstance(checksum, dict) else None}


def recheck(arr: Any) -> str | None:
    """Check the entry that ``arr`` maps against its checksum now, trusting no earlier check (a
    sweep trusts one check per file; bytes damaged in place without changing the file's size or
    time stamp pass that): None if it is sound (or unchecked: written before checksums), else one
    line naming the entry. A corrupt entry loses its verification stamp, so its next use checks
    it again and rebuilds it."""
    found = _entry_of(arr)
    meta = _read_meta(*found) if found else None
    if meta is None or not isinstance(meta.get("checksum"), dict):
        return None
    cache_dir, key = found
    data = _data_path(cache_dir, key)
    try:
        bad = _corrupt_chunk(data, meta["checksum"])
    except OSError as e:
        what = f"unreadable: {e.strerror or e}"
    else:
        if bad is None:
            return None
        what = "its size changed" if bad < 0 else f"chunk {bad + 1} of {len(meta['checksum']['values'])} fails its checksum"
    _VERIFIED.discard(str(data.resolve()))
    _unlink(_stamp_path(cache_dir, key))
    return f"feature cache entry {key} in {cache_dir} is corrupt ({what})"


def _check_args(shape: Sequence[int], dtype: str, max_gb: float) -> tuple[int, ...]:
    if dtype not in DTYPES:
        raise PosinfoError(
            f"cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r} (set cache.dtype)"
        )
    try:
        shp = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as e:
        raise PosinfoError(f"cache shape must be a tuple of ints, got {shape!r}") from e
    if not shp or any(s < 0 for s in shp) or any(int(s) != s for s in shape):
        raise PosinfoError(f"cache shape must be non-negative ints, got {tuple(shape)!r}")
    if not isinstance(max_gb, (int, float)) or math.isnan(max_gb):
        raise PosinfoError(f"cache max_gb must be a number, got {max_gb!r} (set cache.max_gb)")
    return shp


def get_or_create(
    cache_dir: Path,
    fields: dict,
    shape: tuple[int, ...],
    dtype: str,
    fill: Callable[[np.ndarray], None],
    max_gb: float,
    verify: bool = True,
) -> np.ndarray | None:
    """Return a read-only ``np.memmap`` of ``shape`` for the entry keyed by
    ``fields``, computing it with ``fill(arr)`` (which writes every item of the
    writable array in place) if it is not on disk yet.

    Returns None (after one warning line) when the entry would be larger than
    ``max_gb`` GB or than the free disk space less a margin: the caller then
    computes the features without the cache.

    Concurrent callers (threads or processes, same host or a shared file system
    with working locks) compute an entry once: the others wait on the entry's
    lock and then open the finished entry. An exception in ``fill`` (or a crash)
    leaves no complete entry; the next call recomputes it.
    """
    shape = _check_args(shape, dtype, max_gb)
    cache_dir = Path(cache_dir).expanduser()
    key = make_key(fields)

    arr = _open_complete(cache_dir, key, shape, dtype, verify=verify)
    if arr is not None:
        log.info("feature cache hit %s (%s, %s)", key, _fmt_size(arr.nbytes), cache_dir)
        return arr
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if not _fits(cache_dir, key, size, max_gb):  # too large, or a read-only folder (read_only says which)
        return None

    lock = filelock.FileLock(str(_lock_path(cache_dir, key)))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        log.info("feature cache entry %s is being computed by another process; waiting", key)
        lock.acquire()
    try:
        arr = _open_complete(cache_dir, key, shape, dtype, quiet=True, verify=verify)
        if arr is not None:
            log.info(
                "feature cache hit %s (%s, computed by another process)",
                key, _fmt_size(arr.nbytes),
            )
            return arr
        _create(cache_dir, key, fields, shape, dtype, fill, size)
    except OSError as e:  # a folder whose lock files can be written, but not the entry
        if not note_read_only(cache_dir, e):
            raise
        return None
    finally:
        lock.release()

    arr = _open_complete(cache_dir, key, shape, dtype)
    if arr is None:  # pragma: no cover - only if someone deletes it meanwhile
        raise PosinfoError(f"feature cache entry {key} vanished right after it was written")
    return arr


def get_prefix(cache_dir: Path, fields: dict, shape: tuple[int, ...], dtype: str,
               verify: bool = True) -> np.ndarray | None:
    """The first ``shape[0]`` items of a complete entry that differs from ``fields`` only in a
    larger ``images.n``, when the entry for ``fields`` itself does not exist; else None.

    Only for image sets whose item i does not depend on n (``prefix_stable`` datasets: the
    embedded images, photo crops): a sweep over ``data.num_train`` then extracts its largest
    set once. The smallest such entry is used."""
    cache_dir = Path(cache_dir).expanduser()
    images = fields.get("images")
    if not isinstance(images, dict) or not isinstance(images.get("n"), int) or _read_meta(cache_dir, make_key(fields)):
        return None
    want = json.loads(json.dumps(fields, sort_keys=True, default=_json_default))
    best: tuple[int, Entry] | None = None
    for e in list_entries(cache_dir):
        got = e.meta.get("fields")
        n = (got or {}).get("images", {}).get("n") if isinstance(got, dict) else None
        if not isinstance(n, int) or n <= images["n"] or (best and n >= best[0]):
            continue
        if {**got, "images": {**got["images"], "n": images["n"]}} == want:
            best = (n, e)
    if best is None:
        return None
    n, e = best
    arr = _open_complete(cache_dir, e.key, (n, *shape[1:]), dtype, verify=verify)
    if arr is None:
        return None
    log.info("feature cache hit %s: its first %d of %d items", e.key, shape[0], n)
    return arr[: shape[0]]


def _fits(cache_dir: Path, key: str, size: int, max_gb: float) -> bool:
    """Whether an entry of ``size`` bytes may be written (one warning line if not: too large for
    cache.max_gb or the free disk, or a folder that cannot be written)."""
    limit = max_gb * 1e9
    if size > limit:
        log.warning(
            "feature cache: entry %s needs %s > cache.max_gb limit %s; running uncached",
            key, _fmt_size(size), _fmt_size(limit),
        )
        return False
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PosinfoError(
            f"cannot create feature cache dir {cache_dir}: {e.strerror or e} "
            f"(set cache.dir or ${CACHE_DIR_ENV}, or cache.enabled=false)"
        ) from e
    if not _writable(cache_dir, key):  # before the free space: a read-only file system may report none
        return False
    free = shutil.disk_usage(cache_dir).free
    if size > free - DISK_MARGIN_BYTES:
        log.warning(
            "feature cache: entry %s needs %s > free disk %s (less a %s margin) in %s; "
            "running uncached",
            key, _fmt_size(size), _fmt_size(free), _fmt_size(DISK_MARGIN_BYTES), cache_dir,
        )
        return False
    return True


def _create(
    cache_dir: Path,
    key: str,
    fields: dict,
    shape: tuple[int, ...],
    dtype: str,
    fill: Callable[[np.ndarray], None],
    size: int,
) -> None:
    """Write the entry; called with the entry's lock held."""
    # Holding the lock, any temp file of this key is a crashed writer's leftover.
    leftovers = _tmp_files(cache_dir, key)
    for p in leftovers:
        _unlink(p)
    if leftovers:
        log.info("feature cache: removed %d leftover temp file(s) of %s", len(leftovers), key)
    # A stale meta (data missing / mismatched) must not survive the rewrite window.
    _unlink(_meta_path(cache_dir, key))

    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}{_TMP_MARK}"
    tmp_data = cache_dir / f"{key}.{tag}{_DATA_SUFFIX}"
    tmp_meta = cache_dir / f"{key}.{tag}{_META_SUFFIX}"
    log.info(
        "feature cache miss %s: computing %d items (%s) into %s",
        key, shape[0], _fmt_size(size), cache_dir,
    )
    t0 = time.perf_counter()
    try:
        # The header and the (sparse) size first, unmapped at once: a failed reservation must not
        # leave a map that keeps the file, and its disk, busy.
        np.lib.format.open_memmap(tmp_data, mode="w+", dtype=np.dtype(dtype), shape=shape).flush()
        _reserve(tmp_data, cache_dir, key)
        arr = np.lib.format.open_memmap(tmp_data, mode="r+")
        fill(arr)
        arr.flush()
        del arr
        with open(tmp_data, "rb") as f:
            os.fsync(f.fileno())
        meta = {"key": key, "format": FORMAT_VERSION, "fields": fields, "shape": list(shape), "dtype": dtype,
                "size_bytes": tmp_data.stat().st_size, "created": utc_now(),
                "fill_seconds": round(time.perf_counter() - t0, 3), "checksum": _checksum(tmp_data)}
        with open(tmp_meta, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_data, _data_path(cache_dir, key))
        os.replace(tmp_meta, _meta_path(cache_dir, key))  # last: marks it complete
        _VERIFIED.add(str(_data_path(cache_dir, key).resolve()))
        _stamp(cache_dir, key)
    except BaseException as e:
        _unlink(tmp_data)
        _unlink(tmp_meta)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # filled while writing the meta, say
            raise _no_space(cache_dir, key, size) from None
        raise
    log.info(
        "feature cache: wrote %s (%s) in %.1f s", key, _fmt_size(meta["size_bytes"]),
        meta["fill_seconds"],
    )


# --------------------------------------------------------------------------- management


def list_entries(cache_dir: Path) -> list[Entry]:
    """Complete entries in ``cache_dir``, oldest first (temp files are skipped)."""
    cache_dir = Path(cache_dir).expanduser()
    if not cache_dir.is_dir():
        return []
    out: list[Entry] = []
    for mp in cache_dir.glob(f"*{_META_SUFFIX}"):
        if _is_tmp(mp):
            continue
        key = mp.name[: -len(_META_SUFFIX)]
        meta = _read_meta(cache_dir, key)
        if meta is None:
            continue
        dp = _data_path(cache_dir, key)
        try:
            size = dp.stat().st_size
        except OSError:
            continue
        out.append(Entry(key=key, path=dp, meta=meta, size_bytes=size))
    out.sort(key=lambda e: (str(e.meta.get("created", "")), e.key))
    return out


def _delete_entry(cache_dir: Path, entry: Entry) -> None:
    with filelock.FileLock(str(_lock_path(cache_dir, entry.key))):
        _unlink(_meta_path(cache_dir, entry.key))  # first: no longer looks complete
        _unlink(entry.path)
        _unlink(_stamp_path(cache_dir, entry.key))


def _match(cache_dir: Path, entries: list[Entry], key_prefix: str) -> Entry:
    """The one entry whose key starts with ``key_prefix``."""
    prefix = (key_prefix or "").strip()
    if not prefix:
        raise PosinfoError("give a cache key (or a prefix of one) to remove; see `ls`")
    matches = [e for e in entries if e.key.startswith(prefix)]
    if not matches:
        raise PosinfoError(
            f"no feature cache entry in {cache_dir} has a key starting with {prefix!r}; "
            "see `python -m posinfo.cache ls`"
        )
    if len(matches) > 1:
        keys = ", ".join(e.key for e in matches)
        raise PosinfoError(
            f"cache key prefix {prefix!r} is ambiguous ({len(matches)} entries: {keys}); "
            "give more characters"
        )
    return matches[0]


def remove(cache_dir: Path, key_prefix: str) -> list[Entry]:
    """Remove the one entry whose key starts with ``key_prefix``; return it in a list."""
    cache_dir = Path(cache_dir).expanduser()
    entry = _match(cache_dir, list_entries(cache_dir), key_prefix)
    _delete_entry(cache_dir, entry)
    return [entry]


def clear(cache_dir: Path) -> int:
    """Remove every entry (and crashed writers' temp files); return the number of
    entries removed. Lock files are kept (see the module docstring)."""
    cache_dir = Path(cache_dir).expanduser()
    entries = list_entries(cache_dir)
    for e in entries:
        _delete_entry(cache_dir, e)
    if cache_dir.is_dir():
        # Temp files of keys whose lock is free belong to crashed writers.
        for p in [p for p in cache_dir.iterdir() if _is_tmp(p)]:
            key = p.name.split(".", 1)[0]
            lock = filelock.FileLock(str(_lock_path(cache_dir, key)))
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                continue
            try:
                _unlink(p)
            finally:
                lock.release()
    return len(entries)


def list_readouts(cache_dir: Path) -> list[Path]:
    """The stored readouts (``readouts/<key>.pt``), temp files aside."""
    d = Path(cache_dir).expanduser() / READOUTS_DIR
    return sorted(p for p in d.glob("*.pt") if not p.name.startswith(".")) if d.is_dir() else []


def clear_readouts(cache_dir: Path) -> tuple[int, int]:
    """Remove every stored readout (and the remembered encoder taps); return (how many
    readouts, their bytes)."""
    n = size = 0
    for p in list_readouts(cache_dir):
        with contextlib.suppress(OSError):
            size += p.stat().st_size
            p.unlink()
            n += 1
    encoders = Path(cache_dir).expanduser() / ENCODERS_DIR
    if encoders.is_dir():
        for p in encoders.glob("*.json"):
            _unlink(p)
    return n, size


# --------------------------------------------------------------------------- CLI


def _short(value: Any, width: int = 24) -> str:
    """A short, readable rendering of a field value for the `ls` table."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        for k in ("kind", "name", "source", "id", "path"):
            if k in value and not isinstance(value[k], (dict, list)):
                s = str(value[k])
                break
        else:
            s = json.dumps(value, sort_keys=True, default=_json_default)
    elif isinstance(value, (list, tuple)):
        s = ",".join(str(v) for v in value) if len(value) <= 4 else f"[{len(value)} items]"
    else:
        s = str(value)
    s = " ".join(s.split())
    return s if len(s) <= width else s[: width - 1] + "…"


def _weights_str(value: Any) -> str:
    """Weights identity: a name, a path, or a dict with a name and a digest."""
    if isinstance(value, dict):
        name = next((str(value[k]) for k in ("name", "source", "path", "file") if k in value), "")
        digest = next((str(value[k]) for k in ("digest", "sha256", "hash") if k in value), "")
        if name and digest:
            return _short(f"{Path(name).name}@{digest[:8]}", 36)
        if name or digest:
            return _short(Path(name).name if name else digest[:12])
    return _short(value)


def _data_str(value: Any) -> str:
    if isinstance(value, dict):
        for k in ("kind", "name", "type", "source"):
            if k in value and not isinstance(value[k], (dict, list)):
                return _short(value[k], 16)
    return _short(value, 16)


_COLUMNS = ("key", "size", "created", "backbone", "weights", "padding", "image_size",
            "normalize", "data", "n_items")


def _row(e: Entry) -> list[str]:
    f = e.meta.get("fields") or {}
    if not isinstance(f, dict):
        f = {}
    shape = e.meta.get("shape") or [None]
    created = str(e.meta.get("created", "-")).replace("T", " ").rstrip("Z")
    return [
        e.key,
        _fmt_size(e.size_bytes),
        created,
        _short(f.get("backbone")),
        _weights_str(f.get("weights")),
        _short(f.get("padding"), 12),
        _short(f.get("image_size"), 12),
        _short(f.get("normalize"), 12),
        _data_str(f.get("images", f.get("data"))),
        str(shape[0]) if shape[0] is not None else "-",
    ]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _print_ls(cache_dir: Path) -> None:
    entries = list_entries(cache_dir)
    readouts = list_readouts(cache_dir)
    if entries:
        print(_table([list(_COLUMNS)] + [_row(e) for e in entries]))
        total = sum(e.size_bytes for e in entries)
        print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {_fmt_size(total)} in {cache_dir}")
    else:
        print(f"no feature cache entries in {cache_dir}")
    if readouts:
        size = sum(p.stat().st_size for p in readouts)
        print(f"{len(readouts)} stored readout{'s' if len(readouts) != 1 else ''}, {_fmt_size(size)} "
              f"in {cache_dir / READOUTS_DIR}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m posinfo.cache [--dir D] ls | rm KEY [KEY ...] | clear``."""
    parser = argparse.ArgumentParser(
        prog="python -m posinfo.cache", description="List or remove posinfo feature-cache entries and stored readouts."
    )
    parser.add_argument(
        "--dir", type=Path, default=None,
        help=f"cache directory (default: ${CACHE_DIR_ENV} or ~/.cache/posinfo)",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ls", help="list entries")
    p_rm = sub.add_parser("rm", help="remove entries by key (a unique prefix is enough)")
    p_rm.add_argument("keys", nargs="+", metavar="KEY")
    sub.add_parser("clear", help="remove every entry and every stored readout")
    args = parser.parse_args(argv)
    cache_dir = (args.dir if args.dir is not None else default_cache_dir()).expanduser()

    try:
        with quiet_closed_pipe():
            _run(args.cmd, args.keys if args.cmd == "rm" else [], cache_dir)
    except PosinfoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # rm or clear on a cache folder this user cannot change (read-only, another's)
        print(f"error: cannot change {e.filename or cache_dir}: {e.strerror or e}: run it as the cache's owner, "
              "or where the folder is writable", file=sys.stderr)
        return 2
    return 0


def _run(cmd: str, keys: list[str], cache_dir: Path) -> None:
    """One command of the CLI."""
    if cmd == "ls":
        _print_ls(cache_dir)
    elif cmd == "rm":
        # Resolve every key first so a typo removes nothing.
        entries = list_entries(cache_dir)
        for k in keys:
            _match(cache_dir, entries, k)
        for k in keys:
            for e in remove(cache_dir, k):
                print(f"removed {e.key} ({_fmt_size(e.size_bytes)})")
    elif cmd == "clear":
        entries = list_entries(cache_dir)
        total = sum(e.size_bytes for e in entries)
        n = clear(cache_dir)
        n_ro, ro_bytes = clear_readouts(cache_dir)
        print(f"removed {n} entries ({_fmt_size(total)}) and {n_ro} stored readouts ({_fmt_size(ro_bytes)}) "
              f"from {cache_dir}")


if __name__ == "__main__":
    raise SystemExit(main())
