"""Reading images from OCI image layouts and docker/OCI archives.

Names are imported on first use: the store only needs the models, and
should not pay for the archive readers on every command.
"""
from .._lazy import lazy_getattr

_LAZY = {
    "LayerRef": ".image",
    "ResolvedImage": ".image",
    "Source": ".image",
    "open_source": ".source",
    "parse_source": ".source",
}

__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = sorted(_LAZY)
