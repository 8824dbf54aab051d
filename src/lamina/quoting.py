"""How lamina writes a name that came from a layer into a message.

A layer's entry names are arbitrary bytes: a newline or an escape sequence in one
must not make a line of lamina's output or drive the terminal, and bytes that are
not UTF-8 must never make the message itself fail.  Every message that names an
entry (the native extractor, the flattener's skip notes, the rebuild of a layer
from its sidecar) quotes it here, so one name reads the same whichever part of
lamina reports it.  Paths and names in JSON output go through utf8_text, which
writes such bytes the same way.  Pure Python: the Cython modules import it too.
"""
import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def quote_name(name):
    """``name`` (bytes as in the layer, or str) quoted, Python-repr style: control
    characters escaped, bytes that are not UTF-8 written as ``\\\\xNN``."""
    if isinstance(name, (bytes, bytearray, memoryview)):
        return repr(bytes(name).decode("utf-8", "backslashreplace"))
    return repr(name)


def utf8_text(s):
    """``s`` as text that encodes to UTF-8: a name or path that is not UTF-8 reaches Python as
    a str with lone surrogates (``os.fsdecode``'s surrogateescape), which UTF-8 output cannot
    carry (and strict JSON readers refuse, even escaped).  Each byte that is not UTF-8
    (U+DC80..U+DCFF) is written ``\\xNN`` (four characters), as quote_name writes it; any
    other lone surrogate (from a JSON document that escaped one) ``\\udXXX``."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return _SURROGATE.sub(_escape_surrogate, s)


def _escape_surrogate(m):
    c = ord(m.group())
    return f"\\x{c - 0xdc00:02x}" if 0xdc80 <= c <= 0xdcff else f"\\u{c:04x}"


def utf8_document(doc):
    """``doc`` (dicts, lists, tuples, strings, numbers) with every string, keys included,
    passed through utf8_text: a document json.dump writes as valid UTF-8 JSON."""
    if isinstance(doc, str):
        return utf8_text(doc)
    if isinstance(doc, dict):
        return {utf8_text(k) if isinstance(k, str) else k: utf8_document(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [utf8_document(v) for v in doc]
    return doc
