"""The paper's datasets in one command: ``python -m posinfo.datasets fetch duts pascal-s --to DIR``.

Downloads each archive from the dataset's official address into ``DIR/downloads/`` (a partial
download resumes with an HTTP Range request), verifies it, and unpacks only its images into
the folders ``data=folder`` reads (``DIR/DUTS-TR/images``, ``DIR/DUTS-TE/images``,
``DIR/PASCAL-S/images``), then prints the ``sweep.py`` overrides that use them.

Checksums. Neither project page publishes one. The MD5s pinned below come from third-party
public code (named beside each) and could not be confirmed here (no network): a mismatch
stops with one line, and ``--sha256 FILE=HEX`` pins a checksum of your own, which then
decides alone. Every archive's SHA-256 is recorded in ``DIR/checksums.json`` the first time
it is verified (or downloaded, when nothing is pinned), and any later copy of it (a re-fetch,
a file placed by hand) must match that record.

Offline, the command stops before downloading anything, with one line naming what it could not
reach and where to put the archive by hand: it verifies and unpacks files found in
``DIR/downloads/`` without the network.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from posinfo.errors import PosinfoError
from posinfo.io import write_json
from posinfo.names import DATA_DIR_ENV, FETCHABLE_DATASETS, default_data_dir

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DOWNLOADS = "downloads"
CHECKSUMS = "checksums.json"
_CHUNK = 1 << 20
_USER_AGENT = "posinfo-datasets (python urllib)"


@dataclass(frozen=True)
class Archive:
    """One archive of a dataset and the folder its images go to."""

    file: str  # its name in DIR/downloads/
    url: str  # the dataset's official address for it
    members: str  # the folder inside the archive whose images are kept
    folder: str  # where they go, relative to DIR (always ``<set>/images``)
    md5: str | None  # a published MD5, or None
    md5_source: str  # who published it


_DUTS_MD5_SOURCE = "a public third-party DUTS download script"
CATALOGUE: dict[str, tuple[Archive, ...]] = {
    # DUTS (Wang et al., CVPR 2017): saliencydetection.net/duts; 10,553 training and 5,019 test images.
    "duts": (
        Archive("DUTS-TR.zip", "http://saliencydetection.net/duts/download/DUTS-TR.zip", "DUTS-TR/DUTS-TR-Image/",
                "DUTS-TR/images", "30256edc326a4f6c880414f16114c356", _DUTS_MD5_SOURCE),
        Archive("DUTS-TE.zip", "http://saliencydetection.net/duts/download/DUTS-TE.zip", "DUTS-TE/DUTS-TE-Image/",
                "DUTS-TE/images", "ed8b6d5995132fb2900657e46a584923", _DUTS_MD5_SOURCE),
    ),
    # PASCAL-S (Li et al., CVPR 2014): cbs.ic.gatech.edu/salobj; 850 images, in datasets/imgs/pascal/ of salObj.zip
    # (beside other datasets' images, masks and fixations, which are not unpacked).
    "pascal-s": (
        Archive("salObj.zip", "http://cbs.ic.gatech.edu/salobj/download/salObj.zip", "datasets/imgs/pascal/",
                "PASCAL-S/images", "e48b4e5deac08bddcaec55ce56e4d420",
                "pysaliency (matthias-k/pysaliency, external_datasets/pascal_s.py)"),
    ),
}
assert tuple(CATALOGUE) == FETCHABLE_DATASETS  # one vocabulary: posinfo.names
# data=duts (conf/data/duts.yaml): the paper's pairing, relative to the data root.
TRAIN_FOLDER, TEST_FOLDER = "DUTS-TR/images", "PASCAL-S/images"


# ----------------------------------------------------------------------------- checksums


def _digests(path: Path) -> dict[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            md5.update(chunk)
            sha.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def _records(root: Path) -> dict:
    p = root / CHECKSUMS
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, ValueError):
        raise PosinfoError(f"{p} is not readable JSON: delete it (checksums are recorded again on the next fetch)") from None


def verify(path: Path, archive: Archive, root: Path, pinned_sha256: str | None) -> str:
    """Check ``path`` against the user's pin, else the published MD5 and the recorded SHA-256;
    record its SHA-256 when it passes; returns how it was verified. A file that fails is moved
    to ``<file>.rejected`` (never unpacked) and the error names both checksums."""
    got = _digests(path)
    records = _records(root)
    recorded = records.get(archive.file, {}).get("sha256")
    if pinned_sha256:
        checks = [("sha256", pinned_sha256.lower(), "the --sha256 pin")]
    else:
        checks = [("md5", archive.md5, f"the MD5 published by {archive.md5_source}")] if archive.md5 else []
        checks += [("sha256", recorded, f"the SHA-256 recorded in {root / CHECKSUMS}")] if recorded else []
    for kind, want, source in checks:
        if got[kind] != want:
            rejected = path.with_name(path.name + ".rejected")
            os.replace(path, rejected)
            raise PosinfoError(
                f"{archive.file}: {kind.upper()} {got[kind]} does not match {source} ({want}); moved it to {rejected} "
                f"and unpacked nothing: run the command again to download it afresh, or, if the archive really changed "
                f"upstream, pin it with --sha256 {archive.file}={got['sha256']}")
    how = " and ".join(source for _, _, source in checks) or "nothing (no checksum published or pinned)"
    records[archive.file] = {**got, "url": archive.url, "bytes": path.stat().st_size, "verified_against": how}
    write_json(root / CHECKSUMS, records)
    return how


# ----------------------------------------------------------------------------- network


def _request(url: str, method: str = "GET", start: int = 0) -> urllib.request.Request:
    headers = {"User-Agent": _USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.Request(url, method=method, headers=headers)


def unreachable(urls: Sequence[str], timeout_s: float) -> dict[str, str]:
    """url -> why it could not be reached (a HEAD request each); empty when all answer."""
    out = {}
    for url in urls:
        try:
            with urllib.request.urlopen(_request(url, "HEAD"), timeout=timeout_s):
                pass
        except urllib.error.HTTPError as e:  # the server answered: only a missing file is a problem
            if e.code == 404 or e.code == 410:
                out[url] = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:  # refused, no route, DNS, timeout
            reason = getattr(e, "reason", e)
            out[url] = f"{type(e).__name__}: {reason}"
    return out


def download(url: str, dest: Path, timeout_s: float) -> None:
    """``url`` into ``dest``, resuming ``dest.part`` with a Range request; ``dest`` appears only
    once the whole file has arrived (its length as the server stated it)."""
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    try:
        _receive(url, part, start, timeout_s)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not start:
            raise
        # Nothing left to send from byte `start`: a .part whose rename was interrupted, or a
        # longer one. Its bytes cannot be trusted to be complete: fetched again from the start.
        log.warning("%s: the server has nothing after byte %d (HTTP 416): downloading it from the start", dest.name, start)
        part.unlink()
        _receive(url, part, 0, timeout_s)
    os.replace(part, dest)


def _receive(url: str, part: Path, start: int, timeout_s: float) -> None:
    """The bytes of ``url`` from ``start`` on (or all of them, if the server ignores the Range)
    into ``part``, checked against the length the server announced."""
    name = part.name.removesuffix(".part")
    with urllib.request.urlopen(_request(url, start=start), timeout=timeout_s) as r:
        resumed = start > 0 and r.status == 206 and r.headers.get("Content-Range", "").startswith(f"bytes {start}-")
        if start and not resumed:
            log.warning("%s: the server did not resume at byte %d (HTTP %d): downloading it from the start",
                        name, start, r.status)
            start = 0
        length = r.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        if resumed:
            log.info("%s: resuming at byte %d", name, start)
        _copy(r, part, start, total, name)
    size = part.stat().st_size
    if total is not None and size != total:
        raise PosinfoError(f"{name}: the connection ended at {size} of {total} bytes: run the command again "
                           f"to resume ({part} is kept)")


def _copy(response, part: Path, start: int, total: int | None, name: str) -> None:
    from tqdm import tqdm

    with part.open("r+b" if start else "wb") as f, \
            tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=name, disable=None, leave=False) as bar:
        f.seek(start)
        f.truncate()
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            f.write(chunk)
            bar.update(len(chunk))


# ----------------------------------------------------------------------------- unpacking


def _kept(name: str, members: str) -> bool:
    """An image file directly inside the archive's ``members`` folder (at any depth of wrapping)."""
    path = "/" + name.replace("\\", "/").lstrip("./")
    head, _, base = path.rpartition("/")
    return (head + "/").endswith("/" + members) and base.lower().endswith(IMAGE_SUFFIXES) and not base.startswith(".")


def unpack(archive_path: Path, archive: Archive, root: Path) -> int:
    """The images of ``archive.members`` into ``root/archive.folder`` (by file name only, so no
    member can land outside it), written into a temporary folder that takes its final name only
    when complete; returns how many images."""
    final = root / archive.folder
    tmp = final.with_name(final.name + ".unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = 0
    try:
        with zipfile.ZipFile(archive_path) as z:
            for info in z.infolist():
                if info.is_dir() or not _kept(info.filename, archive.members):
                    continue
                with z.open(info) as src, (tmp / Path(info.filename).name).open("wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                n += 1
    except zipfile.BadZipFile:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PosinfoError(f"{archive_path} is not a readable zip archive: delete it and run the command again") from None
    if n == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PosinfoError(f"{archive_path} holds no images under {archive.members}: is it {archive.file} from "
                           f"{archive.url}? Delete it and run the command again")
    os.replace(tmp, final)
    return n


# ----------------------------------------------------------------------------- the command


def _by_hand(missing: dict[str, str], todo: list[Archive], downloads: Path) -> str:
    names = {a.url: a.file for a in todo}
    reasons = set(missing.values())
    what = (f"{', '.join(missing)} ({reasons.pop()})" if len(reasons) == 1 else
            "; ".join(f"{url} ({why})" for url, why in missing.items()))
    files = ", ".join(names[u] for u in missing)
    return (f"cannot reach {what}: download {files} where there is network and put {'it' if len(missing) == 1 else 'them'} "
            f"in {downloads}/ under {'that name' if len(missing) == 1 else 'those names'}, then run this command again "
            f"(it verifies and unpacks archives found there without the network)")


def fetch(names: Sequence[str], root: Path, pins: dict[str, str] | None = None, timeout_s: float = 15.0) -> dict:
    """Fetch, verify and unpack the datasets ``names`` under ``root``; returns, per archive
    folder, its image count and how it was verified ('' when it was already unpacked)."""
    unknown = [n for n in names if n not in CATALOGUE]
    if unknown or not names:
        raise PosinfoError(f"unknown dataset '{unknown[0] if unknown else ''}': choose from {', '.join(CATALOGUE)}")
    pins = dict(pins or {})
    archives = [a for n in dict.fromkeys(names) for a in CATALOGUE[n]]
    bad_pin = [f for f in pins if f not in {a.file for a in archives}]
    if bad_pin:
        raise PosinfoError(f"--sha256 {bad_pin[0]}=…: not an archive of {', '.join(names)}: pin one of "
                           f"{', '.join(a.file for a in archives)}")
    downloads = root / DOWNLOADS
    todo = [a for a in archives if not (root / a.folder).is_dir()]
    missing = unreachable([a.url for a in todo if not (downloads / a.file).is_file()], timeout_s)
    if missing:  # before any byte is downloaded: all or nothing
        raise PosinfoError(_by_hand(missing, todo, downloads))
    downloads.mkdir(parents=True, exist_ok=True)
    out = {a.folder: {"images": _count(root / a.folder), "verified": ""} for a in archives if a not in todo}
    for a in todo:
        path = downloads / a.file
        if not path.is_file():
            log.info("downloading %s from %s", a.file, a.url)
            try:
                download(a.url, path, timeout_s)
            except (urllib.error.URLError, OSError) as e:  # a server or a connection that failed mid-way
                raise PosinfoError(f"downloading {a.url} failed ({type(e).__name__}: {getattr(e, 'reason', e)}): "
                                   f"run the command again to resume it") from None
        how = verify(path, a, root, pins.get(a.file))
        out[a.folder] = {"images": unpack(path, a, root), "verified": how}
    return out


def _count(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def overrides(root: Path) -> list[str]:
    """The lines that tell how to use what is under ``root``: sweep.py commands."""
    train = root / TRAIN_FOLDER
    test = next((root / f for f in (TEST_FOLDER, "DUTS-TE/images") if (root / f).is_dir()), None)
    if not train.is_dir() or test is None:
        return [f"to train as the paper did you need DUTS-TR too: python -m posinfo.datasets fetch duts --to {root}"]
    lines = []
    if test == root / TEST_FOLDER:  # data=duts is the paper's pairing: DUTS-TR, then PASCAL-S
        env = "" if root.resolve() == default_data_dir().resolve() else f"{DATA_DIR_ENV}={root} "
        lines.append(f"{env}python sweep.py -m experiment=table1 data=duts")
    lines.append(f"python sweep.py -m experiment=table1 data=folder data.train_dir={train} data.test_dir={test}")
    return lines


def missing_hint(folder: str | os.PathLike) -> str | None:
    """For a missing folder of the fetcher's layout (``<root>/DUTS-TR/images``, …), the command
    that fetches it; None for any other folder."""
    p = Path(folder).expanduser()
    for name, archives in CATALOGUE.items():
        for a in archives:
            if p.as_posix().endswith("/" + a.folder):
                root = Path(p.as_posix()[: -len(a.folder) - 1])
                return f"python -m posinfo.datasets fetch {name} --to {root}"
    return None


def _pin(text: str) -> tuple[str, str]:
    file, sep, digest = text.partition("=")
    if not sep or len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
        raise argparse.ArgumentTypeError(f"--sha256 {text}: give FILE=HEX, the 64 hex digits of the archive's SHA-256")
    return file, digest


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m posinfo.datasets fetch NAME… [--to DIR] [--sha256 FILE=HEX]…``."""
    parser = argparse.ArgumentParser(prog="python -m posinfo.datasets",
                                     description="Download, verify and unpack the paper's datasets.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fetch", help="download, verify and unpack datasets")
    p.add_argument("names", nargs="+", choices=list(CATALOGUE), metavar="NAME", help=", ".join(CATALOGUE))
    p.add_argument("--to", type=Path, default=None, help=f"where (default: ${DATA_DIR_ENV} or ~/.cache/posinfo-data)")
    p.add_argument("--sha256", type=_pin, action="append", default=[], metavar="FILE=HEX",
                   help="pin an archive's SHA-256 (repeatable); it replaces the published MD5 check for that file")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for a server (default 15)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = (args.to or default_data_dir()).expanduser().absolute()
    try:
        done = fetch(args.names, root, dict(args.sha256), args.timeout)
    except PosinfoError as e:
        print(f"posinfo: error: {e}", file=sys.stderr)
        return 2
    print(f"posinfo: datasets in {root}:")
    for folder, info in done.items():
        how = f"; verified against {info['verified']}" if info["verified"] else " (already there)"
        print(f"  {root / folder}: {info['images']} images{how}")
    print(f"  checksums (SHA-256 recorded at first verification): {root / CHECKSUMS}")
    print("use them with:")
    for line in overrides(root):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
