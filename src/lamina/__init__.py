"""lamina: a fast, safe OCI/Docker image layer store and unpacker.

The public API is small:

    lamina.apply_layer(blob, dest, format="dir" | "overlay", diff_id=..., digest=...)
    lamina.unpack("oci:PATH[:REF]" | "docker-archive:PATH" | "docker://REF", dest, platform=..., format=...)
    lamina.pull("debian:12", store=lamina.Store()) / lamina.push(ref, store=...)
    lamina.Store(root): the image store (images, tags, snapshots, gc, fsck)

Both return stats (entries, bytes, digests, seconds per stage) and raise
only subclasses of ``lamina.errors.LaminaError`` on bad input.

Names are imported on first use, so that ``lamina mount`` and friends do
not pay for the unpack machinery at start-up.
"""
from . import errors
from ._extract import Extractor  # the compiled core; there is deliberately no pure-Python fallback
from ._lazy import lazy_getattr
from .errors import LaminaError

NATIVE = Extractor.__module__ == "lamina._extract"

__version__ = "0.1.0"

_LAZY = {
    "apply_layer": ".layer",
    "apply_layer_atomic": ".atomic",
    "unpack": ".unpacker",
    "Platform": ".platform",
    "Limits": ".limits",
    "DEFAULT_LIMITS": ".limits",
    "ApplyStats": ".stats",
    "UnpackStats": ".stats",
    "Store": ".store",
    "pull": ".registry.pull",
    "push": ".registry.push",
}

__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    "ApplyStats", "DEFAULT_LIMITS", "Extractor", "LaminaError", "Limits", "NATIVE", "Platform", "Store", "UnpackStats",
    "apply_layer", "errors", "pull", "push", "unpack",
]
