"""Sweep and job folder names: deterministic, safe on any file system, resumable.

The same command always lands in the same folder (that is what makes a re-run a resume).
Hydra reads the names through two resolvers, ``${posinfo.job_dirname:...}`` and
``${posinfo.sweep_name:...}`` (conf/hydra/default.yaml), and the job folder leaves out
the keys of ``${posinfo.folder_excluded_keys:}`` (posinfo.schema.folder_excluded_keys).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from omegaconf import OmegaConf

from posinfo.schema import folder_excluded_keys

# A folder name longer than this (in bytes) becomes a readable prefix + a hash of the whole
# name. File systems allow 255 bytes per component; some (eCryptfs) fewer.
MAX_DIRNAME_BYTES = 200

# An override's key at the start of an item of Hydra's override_dirname ("+experiment/table4=")
_KEY = re.compile(r"(^|,)(?:\+\+|\+)?([\w.@/-]+)=")
# Anything but these becomes "_": "/" (it would nest folders), spaces, quotes, shell specials.
_UNSAFE = re.compile(r"[^\w.,=+@%~\[\]-]")


def _shorten(name: str, whole: str, limit: int = MAX_DIRNAME_BYTES) -> str:
    """``name`` if it fits in ``limit`` bytes, else a readable prefix + '--' + a hash of ``whole``."""
    if len(name.encode("utf-8")) <= limit:
        return name
    digest = hashlib.sha256(whole.encode("utf-8")).hexdigest()[:12]
    keep = limit - len(digest) - 2
    prefix = name.encode("utf-8")[:keep].decode("utf-8", "ignore")
    cut = prefix.rfind(",")
    if cut >= keep // 2:  # end the prefix at a whole override when that keeps most of it
        prefix = prefix[:cut]
    return f"{prefix}--{digest}"


def job_dirname(override_dirname: Any) -> str:
    """A job's folder name from Hydra's ``override_dirname`` (``k=v,k=v``, sorted).

    ``+experiment/table4=posenet_pad0,target=hor`` -> ``experiment.table4=posenet_pad0,target=hor``:
    no ``+`` prefixes, group paths with dots, every character that is not safe in a folder
    name (``/`` in a path value, spaces, quotes) replaced by ``_``; longer than
    MAX_DIRNAME_BYTES: a prefix and a hash of the full name. Deterministic, so the same
    command always lands in the same folder.
    """
    raw = "" if override_dirname is None else str(override_dirname)
    name = _KEY.sub(lambda m: f"{m.group(1)}{m.group(2).replace('/', '.')}=", raw)
    name = _UNSAFE.sub("_", name)
    if not name:
        return "default"
    if name[0] in ".-":
        name = "_" + name
    return _shorten(name, raw)


def sweep_name(experiment: Any = None, tag: Any = None) -> str:
    """A sweep's folder name: the preset's ``experiment_name`` (else 'default'), then ``-<name>``."""
    base = "default" if experiment in (None, "") else _UNSAFE.sub("_", str(experiment))
    if tag not in (None, ""):
        base = f"{base}-{_UNSAFE.sub('_', str(tag))}"
    if base[0] in ".-":
        base = "_" + base
    return _shorten(base, base)


def register_resolvers() -> None:
    """The resolvers conf/hydra/default.yaml names folders with."""
    OmegaConf.register_new_resolver("posinfo.job_dirname", job_dirname, replace=True)
    OmegaConf.register_new_resolver("posinfo.sweep_name", sweep_name, replace=True)
    OmegaConf.register_new_resolver("posinfo.folder_excluded_keys", folder_excluded_keys, replace=True)

