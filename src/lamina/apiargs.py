"""Checks of what a calling tool passes to the Python API, where Python's own errors would
name nothing the caller wrote."""


def one_or_many(value, arg, what):
    """``value`` as a list of str: a list of them, or one.  A str is one, not its characters:
    ``save("app:1")`` looked for images "a", "p", ... and ``insecure="reg:5000"`` marked the
    hosts "r", "e", ..., each failing far from the slip.  Anything else is a TypeError naming
    ``arg`` and ``what`` it takes ("insecure: a registry host or a list of them, not True")."""
    if isinstance(value, (str, bytes)):
        value = [value]
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{arg}: {what} or a list of them, not {value!r}") from None
    bad = [v for v in items if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{arg}: {what} or a list of them, not {bad[0]!r}")
    return items


def a_path(value, arg, what="a path"):
    """``value`` if it is a path (str, bytes or os.PathLike); else a TypeError naming ``arg``.
    ``unpack(src, 5)`` said "expected str, bytes or os.PathLike object, not int", ``Store(5)``
    the same, naming no argument of the call."""
    import os
    if not isinstance(value, (str, bytes, os.PathLike)):
        raise TypeError(f"{arg}: {what}, not {value!r}")
    return value


def a_name(value, arg, what):
    """``value`` if it is a str; else a TypeError naming ``arg``: ``copy(5, ...)`` said "invalid
    image name 5", as if the caller had written a name and misspelled it."""
    if not isinstance(value, str):
        raise TypeError(f"{arg}: {what}, not {value!r}")
    return value


def a_flag(value, arg):
    """``value`` if it is a bool; else a TypeError naming ``arg``: ``prune(all="no")`` was true,
    and removed every image."""
    if not isinstance(value, bool):
        raise TypeError(f"{arg}: True or False, not {value!r}")
    return value


def a_store(value, arg="store", optional=False):
    """``value`` if it is a lamina.Store (or None, ``optional``); anything else failed deep inside
    ("'int' object has no attribute 'images'"), naming no argument."""
    from .store import Store
    if not isinstance(value, Store) and not (optional and value is None):
        raise TypeError(f"{arg}: a lamina.Store{' or None' if optional else ''}, not {value!r}")
    return value
