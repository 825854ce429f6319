"""posinfo: measure how much absolute position information CNN features encode.

From Python: ``posinfo.probe(model, images)`` -> a table (posinfo.api), ``posinfo.load(job_dir)`` ->
a job's trained readout with ``.predict`` / ``.evaluate`` (posinfo.trained). Both load on first
use, so ``import posinfo`` stays cheap (no torch, no Hydra).
"""

from posinfo.errors import PosinfoError

__all__ = ["PosinfoError", "probe", "load"]
__version__ = "0.1.0"

_LAZY = {"probe": "posinfo.api", "load": "posinfo.trained"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'posinfo' has no attribute {name!r}")
