"""How lamina writes a name that came from a layer into a message.

A layer's entry names are arbitrary bytes: a newline or an escape sequence in one
must not make a line of lamina's output or drive the terminal, and bytes that are
not UTF-8 must never make the message itself fail.  Every message that names an
entry (the native extractor, the flattener's skip notes, the rebuild of a layer
from its sidecar) quotes it here, so one name reads the same whichever part of
lamina reports it (the CLI's JSON writes such bytes the same way: cli/output.py).
Pure Python with no imports: the Cython modules import it too.
"""


def quote_name(name):
    """``name`` (bytes as in the layer, or str) quoted, Python-repr style: control
    characters escaped, bytes that are not UTF-8 written as ``\\\\xNN``."""
    if isinstance(name, (bytes, bytearray, memoryview)):
        return repr(bytes(name).decode("utf-8", "backslashreplace"))
    return repr(name)
