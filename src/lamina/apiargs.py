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
