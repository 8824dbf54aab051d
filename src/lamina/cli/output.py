"""One output convention for every verb, docker's: text by default, ``--format json`` for
the machine-readable document, ``--format TEMPLATE`` for a Go template over it (``--json``
is kept as an alias of ``--format json``).

The JSON of lamina's own verbs (apply, unpack, bench, fsck, pull, push, load, save, copy, tag,
rmi, prune) is a stable interface: one object carrying ``"version": JSON_VERSION``; fields
are only ever added within a version.  The docker-shaped verbs (images, inspect, history,
system df) print what docker prints, so tools written for docker read them unchanged.
"""
from __future__ import annotations

import json
import os
import re
import sys

JSON_VERSION = 1
_SURROGATE = re.compile("[\ud800-\udfff]")
_DECIMAL = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def human_size(size, precision=4):
    """go-units HumanSizeWithPrecision: decimal units, %.{precision}g (every verb prints sizes
    this one way, docker's)."""
    size = float(size)
    i = 0
    while size >= 1000.0 and i < len(_DECIMAL) - 1:
        size /= 1000.0
        i += 1
    return f"{_go_g(size, precision)}{_DECIMAL[i]}"


def _go_g(value, precision):
    # Go's %.*g: like C's, which Python's 'g' matches (no '#' flag: trailing zeros removed)
    return f"{value:.{precision}g}"


def add_format_option(p, *, example=None, text_values=()):
    """--format FORMAT and its alias --json.  ``example``: a template over this verb's own JSON
    (the help shows it, and a test runs it).  ``text_values``: more spellings of the default
    text output that older command lines used (``--format text``)."""
    p.add_argument("--format", metavar="FORMAT", default=None,
                   help="'json' for the documented JSON (see the README), or a Go template over it"
                        + (f", e.g. '{example}'" if example else ""))
    p.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")
    p.set_defaults(_text_formats=("text", "table", *text_values))


def wants_text(args):
    return args.format is None or args.format in getattr(args, "_text_formats", ("text", "table"))


def check_format(args):
    """Parse a template before any work is done, so a typo costs nothing (docker does the same)."""
    if wants_text(args) or args.format == "json":
        return None
    from .gotemplate import parse
    return parse(args.format)


def document(doc):
    """The versioned JSON document of a verb (a dict, or a list wrapped as ``items``).  Its
    strings are UTF-8 text, each decodable back to its exact bytes (quoted_text): a path or
    name that is not UTF-8 is quoted, never written as lone surrogates."""
    if isinstance(doc, list):
        doc = {"items": doc}
    return _quoted_document({"version": JSON_VERSION, **doc})


def emit(args, doc, text=None, *, out=None):
    """Print ``doc`` (a dict) the way --format asks: ``text()`` prints the default output."""
    out = out or sys.stdout
    if wants_text(args):
        if text is not None:
            text()
        return
    doc = document(doc)
    if args.format == "json":
        json.dump(doc, out, indent=2)
        out.write("\n")
        return
    from .gotemplate import parse
    from .images import _raw_for_template
    out.write(parse(args.format).execute(_raw_for_template(doc)) + "\n")


def write_json_streamed(doc, key, items, out=None):
    """``json.dump(document({**doc, key: list(items)}), out, indent=2)``, byte for byte, with the
    ``items`` encoded one at a time: a list too long to hold (fsck's findings) is never one."""
    out = out or sys.stdout
    head = json.dumps(document({**doc, key: []}), indent=2)
    first = True
    for item in items:
        if first:
            out.write(head[:-len("[]\n}")] + "[\n")
            first = False
        else:
            out.write(",\n")
        out.write("    " + json.dumps(_quoted_document(item), indent=2).replace("\n", "\n    "))
    out.write(head + "\n" if first else "\n  ]\n}\n")


def shown_path(path):
    """A path in a line of plain text (mount's TARGET, "applied ... onto DEST"): as it is when it
    reads back as itself (UTF-8, no control character, no leading quote), so a script takes it
    whole; else as lamina.quoting writes a name from a layer, between quotes, a byte that is not
    UTF-8 ``\\xNN`` and a backslash of its own ``\\\\``: the dir holding the byte 0xff and the one
    holding the four characters ``\\xff`` read apart."""
    from ..quoting import quote_name
    from . import one_line
    s = os.fsdecode(path)
    if one_line(s) == s and not s.startswith(("'", '"')):
        return s
    return quote_name(s)


def utf8_text(s):
    """``s`` as text that encodes to UTF-8: a name or path that is not UTF-8 reaches Python as
    a str with lone surrogates (``os.fsdecode``'s surrogateescape), which UTF-8 output cannot
    carry (and strict JSON readers refuse, even escaped).  Each byte that is not UTF-8
    (U+DC80..U+DCFF) is written ``\\xNN`` (four characters), as lamina.quoting.quote_name
    writes it; any other lone surrogate (from a JSON document that escaped one) ``\\udXXX``."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return _SURROGATE.sub(_escape_surrogate, s)


def _escape_surrogate(m):
    c = ord(m.group())
    return f"\\x{c - 0xdc00:02x}" if 0xdc80 <= c <= 0xdcff else f"\\u{c:04x}"


def quoted_text(s):
    """``s`` as a string of lamina's JSON: as it is when it is UTF-8 and does not start with
    ``"``; else, as git's core.quotePath writes a path, between double quotes, with each byte
    that is not UTF-8 written ``\\xNN`` and a backslash or double quote of its own escaped
    (``\\\\``, ``\\"``).  The name holding the byte 0xff is ``"\\xff"`` and the one holding
    the four characters ``\\xff`` is ``\\xff``: a tool reads back the exact bytes (README:
    "The JSON is UTF-8 whatever the bytes it reports")."""
    try:
        s.encode("utf-8")
        if not s.startswith('"'):
            return s
    except UnicodeEncodeError:
        pass
    return '"' + _QUOTED_ESCAPE.sub(_quoted_escape, s) + '"'


_QUOTED_ESCAPE = re.compile('[\\\\"\ud800-\udfff]')


def _quoted_escape(m):
    c = m.group()
    return "\\" + c if c in '\\"' else _escape_surrogate(m)


def _quoted_document(doc):
    return _each_string(doc, quoted_text)


def utf8_document(doc):
    """``doc`` (dicts, lists, tuples, strings, numbers) with every string, keys included,
    passed through utf8_text: a document json.dump writes as valid UTF-8 JSON."""
    return _each_string(doc, utf8_text)


def _each_string(doc, text):
    """``doc`` with every string in it, keys included, replaced by ``text(string)``."""
    if isinstance(doc, str):
        return text(doc)
    if isinstance(doc, dict):
        return {text(k) if isinstance(k, str) else k: _each_string(v, text) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [_each_string(v, text) for v in doc]
    return doc
