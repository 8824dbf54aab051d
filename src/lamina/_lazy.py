"""Module attributes imported on first use (PEP 562), so that start-up of a
command only pays for what it touches."""
import importlib


def lazy_getattr(package, names, namespace):
    """A module ``__getattr__`` resolving ``names`` ({attribute: ".submodule"})
    relative to ``package`` and caching each in ``namespace`` (the module's globals)."""

    def __getattr__(name):
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__
