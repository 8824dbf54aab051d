"""Reading images from OCI image layouts and docker/OCI archives.

Names are imported on first use: the store only needs the models, and
should not pay for the archive readers on every command.
"""
import importlib

_LAZY = {
    "LayerRef": ".image",
    "ResolvedImage": ".image",
    "Source": ".image",
    "open_source": ".source",
    "parse_source": ".source",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lamina.oci' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = sorted(_LAZY)
