"""lamina: a fast, safe OCI/Docker image layer store and unpacker.

The public API is small:

    lamina.apply_layer(blob, dest, format="dir" | "overlay", diff_id=..., digest=...)
    lamina.unpack("oci:PATH[:REF]" | "docker-archive:PATH", dest, platform=..., format=...)

Both return stats (entries, bytes, digests, seconds per stage) and raise
only subclasses of ``lamina.errors.LaminaError`` on bad input.
"""
from . import errors
from ._extract import Extractor  # the compiled core; there is deliberately no pure-Python fallback
from .errors import LaminaError
from .layer import apply_layer
from .limits import DEFAULT_LIMITS, Limits
from .platform import Platform
from .stats import ApplyStats, UnpackStats
from .unpack import unpack

NATIVE = Extractor.__module__ == "lamina._extract"

__version__ = "0.1.0"

__all__ = [
    "ApplyStats", "DEFAULT_LIMITS", "Extractor", "LaminaError", "Limits", "NATIVE", "Platform", "UnpackStats",
    "apply_layer", "errors", "unpack",
]
