"""How lamina writes a name that came from a layer into a message.

A layer's entry names are arbitrary bytes: a newline or an escape sequence in one
must not make a line of lamina's output or drive the terminal, and bytes that are
not UTF-8 must never make the message itself fail.  Every message that names an
entry (the native extractor, the flattener's skip notes, the rebuild of a layer
from its sidecar) quotes it here, so one name reads the same whichever part of
lamina reports it.
Pure Python, stdlib only: the Cython modules import it too.
"""
import re

# In repr()'s output: an escaped backslash, a character U+0080..U+00FF repr escapes as \xNN
# (the C1 controls, the soft hyphen), and a byte that is not UTF-8 (surrogateescape's
# U+DC80..U+DCFF, which repr writes \udcNN).  Matched left to right, so the "x" of an
# escaped backslash followed by "xff" is never read as an escape.
_REPR_ESCAPE = re.compile(r"\\(\\|x[89a-f][0-9a-f]|udc[89a-f][0-9a-f])")


def _go_style(m):
    e = m.group(1)
    if e[0] == "x":
        return "\\u00" + e[1:]  # a character, as Go's %q writes U+0085: never a byte's \xNN
    if e[0] == "u":
        return "\\x" + e[3:]  # the byte itself, as Go's %q writes a byte that is not UTF-8
    return m.group()


def quote_name(name):
    """``name`` (bytes as in the layer, or str) quoted, Python-repr style, and as unambiguous
    as Go's %q: a byte that is not UTF-8 is ``\\xNN`` (``\\xff``), a character
    ``\\u00NN`` (U+0085 is ``\\u0085``) and a backslash in the name ``\\\\``, so the name
    holding the byte 0xff and the one holding the four characters ``\\xff`` read apart."""
    if isinstance(name, (bytes, bytearray, memoryview)):
        name = bytes(name).decode("utf-8", "surrogateescape")
    return _REPR_ESCAPE.sub(_go_style, repr(name))
