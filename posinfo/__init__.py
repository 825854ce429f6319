"""posinfo: measure how much absolute position information CNN features encode."""

from posinfo.errors import PosinfoError

__all__ = ["PosinfoError"]
__version__ = "0.1.0"
