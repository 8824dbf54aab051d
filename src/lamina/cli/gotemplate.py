"""A subset of Go's text/template, as docker's ``--format`` uses it.

Supported: text and ``{{ }}`` actions with ``{{-``/``-}}`` trimming and
``{{/* comments */}}``; pipelines with ``|``; fields (``.A.B``), ``.``, ``$``,
variables (``$x := …``, ``$x = …``, ``range $i, $v := …``); string (``"…"``
and raw), number, bool and nil literals; parenthesized pipelines with fields;
``if``/``else if``/``else``/``end``, ``range`` (with ``else``, ``break``,
``continue``), ``with`` (with ``else``); the functions of Go
(``and or not len index slice eq ne lt le gt ge print println printf``) and of
docker (``json join split lower upper title pad truncate``).

Not supported, and reported as an error rather than guessed at: ``define``,
``template``, ``block``, method calls with arguments, ``html``/``js``/``urlquery``
and unknown functions, printf verbs other than ``%s %d %v %q %x %t %f %%``
(with optional width/precision).

Values are Python objects standing in for Go ones:

    None        nil                      MISSING     Go's invalid value, printed "<no value>"
    bool, int, float, str                 list        slice: [a b c]
    dict        map: map[k:v] (keys sorted), missing key -> <no value>
    GoStruct    struct: field access by Go name, unknown field -> error, printed {v1 v2}
    EMPTY       struct{}: printed {}     GoTime      time.Time: printed like Go's Time.String()

Formatting and JSON follow Go's fmt ``%v`` and encoding/json (map keys sorted,
no HTML escaping, like docker's ``json`` function).
"""
from __future__ import annotations

import datetime as _dt
import functools
import json as _json
import math
import re
import unicodedata

from ..errors import LaminaError


class TemplateError(LaminaError):
    """A --format template that cannot be parsed or executed."""


# --- Go values -----------------------------------------------------------------

class _Missing:
    """Go's invalid reflect.Value (a missing map key): prints as <no value>."""
    __slots__ = ()

    def __repr__(self):
        return "MISSING"

    def __bool__(self):
        return False


MISSING = _Missing()


class _Empty:
    """Go's struct{} value (the values of ExposedPorts and Volumes)."""
    __slots__ = ()

    def __repr__(self):
        return "EMPTY"


EMPTY = _Empty()


class GoMap(dict):
    """A map whose element type is known: ``index`` of a missing key gives that type's zero value."""

    def __init__(self, data=(), zero=MISSING):
        super().__init__(data)
        self.zero = zero


class NilSlice(list):
    """A nil Go slice: prints [] like an empty one, but encodes as JSON null."""

    def __init__(self):
        super().__init__()


class NilMap(GoMap):
    """A nil Go map: prints map[], encodes as JSON null."""

    def __init__(self, zero=MISSING):
        super().__init__((), zero)


class GoStruct:
    """A Go struct value: ordered fields (Go name -> value), optional JSON names and omitempty.

    ``fields``: list of (go_name, value) or (go_name, value, json_name, omitempty).
    ``methods``: name -> callable() (no arguments), like the formatter contexts' methods.
    ``json_fields``: override the JSON encoding (a list of (json_name, value, omitempty)).
    """

    def __init__(self, typename, fields=(), *, methods=None, pointer=False, json_methods=False, embedded=()):
        self.typename = typename
        self.pointer = pointer
        self._fields = []
        for f in fields:
            name, value = f[0], f[1]
            json_name = f[2] if len(f) > 2 and f[2] is not None else name
            omitempty = f[3] if len(f) > 3 else False
            self._fields.append((name, value, json_name, omitempty))
        self._index = {f[0]: f[1] for f in self._fields}
        self.methods = dict(methods or {})
        # encode as {method: value} sorted, like docker's MarshalJSON of its formatter contexts
        self.json_methods = json_methods or (not self._fields and not embedded and bool(self.methods))
        # Embedded structs (Go struct embedding): their fields are promoted, printed as one {…} each.
        self.embedded = list(embedded)
        for emb in self.embedded:
            for name, value, _, _ in emb._fields:
                self._index.setdefault(name, value)

    def has(self, name):
        return name in self._index or name in self.methods

    def get(self, name):
        if name in self._index:
            return self._index[name]
        return self.methods[name]()

    def names(self):
        return list(self._index) + sorted(self.methods)

    def go_string(self):
        parts = [format_value(e) for e in self.embedded] + [format_value(f[1]) for f in self._fields]
        return ("&" if self.pointer else "") + "{" + " ".join(parts) + "}"

    def to_json(self):
        if self.json_methods:
            return StructJSON((k, _to_jsonable(self.methods[k]())) for k in sorted(self.methods))
        out = StructJSON()
        for emb in self.embedded:
            out.update(emb.to_json())
        for name, value, json_name, omitempty in self._fields:
            if omitempty and _is_empty(value):
                continue
            out[json_name] = _to_jsonable(value)
        return out

    def __repr__(self):
        return f"GoStruct({self.typename})"


class StructJSON(dict):
    """A struct's JSON object: keys stay in field order (a plain dict is a Go map: keys sorted)."""


class GoTime:
    """time.Time: String() like Go ("2006-01-02 15:04:05.999999999 -0700 MST"), JSON as RFC 3339 with ns."""

    def __init__(self, seconds=None, nanos=0, tz=None):
        self.seconds = seconds  # None = the zero time
        self.nanos = nanos
        self.tz = tz

    @classmethod
    def parse(cls, text):
        """An RFC 3339 timestamp (as in image configs) -> GoTime; None if unparsable."""
        parsed = parse_rfc3339(text)
        if parsed is None:
            return None
        secs, nanos, offset = parsed
        return cls(secs, nanos, _dt.timezone(_dt.timedelta(seconds=offset)))

    def _dt(self):
        return _dt.datetime.fromtimestamp(self.seconds, self.tz or _dt.timezone.utc)

    def go_string(self):
        if self.seconds is None:
            return "0001-01-01 00:00:00 +0000 UTC"
        d = self._dt()
        frac = f".{self.nanos:09d}".rstrip("0") if self.nanos else ""
        off = d.utcoffset() or _dt.timedelta(0)
        sign = "-" if off < _dt.timedelta(0) else "+"
        mins = abs(int(off.total_seconds())) // 60
        zone = "UTC" if off == _dt.timedelta(0) else ""
        if not zone:
            zone = f"{sign}{mins // 60:02d}{mins % 60:02d}"
        return f"{d.year:04d}{d:-%m-%d %H:%M:%S}{frac} {sign}{mins // 60:02d}{mins % 60:02d} {zone}"  # Go's 0500

    def rfc3339(self):
        if self.seconds is None:
            return "0001-01-01T00:00:00Z"
        d = self._dt()
        frac = f".{self.nanos:09d}".rstrip("0") if self.nanos else ""
        off = d.utcoffset() or _dt.timedelta(0)
        if off == _dt.timedelta(0):
            tz = "Z"
        else:
            sign = "-" if off < _dt.timedelta(0) else "+"
            mins = abs(int(off.total_seconds())) // 60
            tz = f"{sign}{mins // 60:02d}:{mins % 60:02d}"
        return f"{d.year:04d}{d:-%m-%dT%H:%M:%S}{frac}{tz}"


from ..timefmt import parse_rfc3339  # noqa: E402 - shared with the library (lamina.images)


# --- fmt %v and encoding/json ----------------------------------------------------

def go_float(f, json_mode=False):
    """Go's shortest formatting of a float64: %v (exponent when exp < -4 or >= 21... for JSON, >= 6 for %v)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 and not json_mode else "0"
    sign = "-" if f < 0 else ""
    # shortest round-trip digits and the decimal point position, from repr()
    mant, _, exp_s = repr(abs(f)).partition("e")
    ip, _, fp = mant.partition(".")
    raw = ip + fp
    lead = len(raw) - len(raw.lstrip("0"))
    digits = raw.strip("0") or "0"
    dp = len(ip) + (int(exp_s) if exp_s else 0) - lead
    exp = dp - 1
    # fmt's %v: shortest digits, %e when the exponent is < -4 or >= 6 (strconv 'g', -1);
    # encoding/json: %e only when < -6 or >= 21 (like ES6).
    use_e = (exp < -6 or exp >= 21) if json_mode else (exp < -4 or exp >= 6)
    if use_e:
        m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        es = "-" if exp < 0 else "+"
        if json_mode and exp < 0:
            return f"{sign}{m}e-{abs(exp)}"  # encoding/json cleans e-07 up to e-7
        return f"{sign}{m}e{es}{abs(exp):02d}"
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return sign + digits + "0" * (dp - len(digits))
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


# values come from images: an escape sequence there stays text
from . import no_escapes as _no_escapes  # noqa: E402 - (the package is loaded before its modules)
from .output import utf8_text as _utf8_text  # noqa: E402


def format_value(v):
    """Go's fmt %v."""
    if v is MISSING:
        return "<no value>"
    if v is None:
        return "<nil>"
    if v is EMPTY:
        return "{}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, str):
        return v
    if isinstance(v, GoStruct):
        return v.go_string()
    if isinstance(v, GoTime):
        return v.go_string()
    if isinstance(v, dict):
        return "map[" + " ".join(f"{format_value(k)}:{_inner(v[k])}" for k in _sorted_keys(v)) + "]"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_inner(x) for x in v) + "]"
    return str(v)


def _inner(v):
    # Inside a composite, a nil interface prints <nil> and a missing value cannot occur.
    return "<nil>" if v is MISSING else format_value(v)


def _sorted_keys(d):
    try:
        return sorted(d)
    except TypeError:
        return sorted(d, key=lambda k: (type(k).__name__, str(k)))


def _is_empty(v):
    if v is None or v is MISSING or v is False:
        return True
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v == 0
    if isinstance(v, (str, list, tuple, dict)):
        return len(v) == 0
    return False


def _to_jsonable(v):
    if v is MISSING or v is None or isinstance(v, (NilSlice, NilMap)):
        return None
    if v is EMPTY:
        return {}
    if isinstance(v, GoStruct):
        return v.to_json()
    if isinstance(v, GoTime):
        return v.rfc3339()
    if isinstance(v, StructJSON):
        return StructJSON((k, _to_jsonable(x)) for k, x in v.items())
    if isinstance(v, dict):
        return {str(k): _to_jsonable(v[k]) for k in _sorted_keys(v)}
    if isinstance(v, (list, tuple)):
        return [_to_jsonable(x) for x in v]
    return v


def go_json(v, indent=None):
    """encoding/json with SetEscapeHTML(false), as docker's ``json`` template function.

    Map keys sorted, struct fields in order, floats like Go (exponent only below 1e-6 or
    from 1e21 on), U+2028/U+2029 escaped; ``indent`` gives json.Indent's layout.
    """
    from .output import utf8_document
    out = []
    # an image's config may escape a lone surrogate ("\\udc80"): UTF-8 output cannot carry it
    _encode(utf8_document(_to_jsonable(v)), out, indent, 0)
    return "".join(out)


@functools.lru_cache(maxsize=1)
def _json_escapes():
    # Go escapes U+2028 and U+2029; JSON leaves DEL, the C1 controls and the bidi overrides raw,
    # which would drive the terminal (and the template's no_escapes would write them \x9b,
    # which is no JSON): \u escapes, the same value to every JSON reader
    from . import _CONTROLS
    table = {c: f"\\u{c:04x}" for c in _CONTROLS if c >= 0x7f}
    table.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
    return table


def _json_string(s):
    return _json.dumps(s, ensure_ascii=False).translate(_json_escapes())


def _encode(v, out, indent, depth):
    if v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, int):
        out.append(str(v))
    elif isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise TemplateError(f"json: unsupported value: {go_float(v)}")
        out.append(go_float(v, json_mode=True))
    elif isinstance(v, str):
        out.append(_json_string(v))
    elif isinstance(v, (list, tuple, dict)):
        is_map = isinstance(v, dict)
        items = list(v.items()) if is_map else list(v)
        if not items:
            out.append("{}" if is_map else "[]")
            return
        out.append("{" if is_map else "[")
        for i, item in enumerate(items):
            if i:
                out.append(",")
            if indent is not None:
                out.append("\n" + " " * (indent * (depth + 1)))
            if is_map:
                k, item = item
                out.append(_json_string(str(k)))
                out.append(": " if indent is not None else ":")
            _encode(item, out, indent, depth + 1)
        if indent is not None:
            out.append("\n" + " " * (indent * depth))
        out.append("}" if is_map else "]")
    else:
        raise TemplateError(f"json: cannot encode {type(v).__name__}")


def _json_default(o):
    raise TypeError(f"cannot encode {type(o).__name__} as JSON")


def type_name(v):
    if v is None or v is MISSING:
        return "interface {}"
    if isinstance(v, GoStruct):
        return v.typename
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, GoTime):
        return "time.Time"
    if isinstance(v, dict):
        return "map[string]interface {}"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if v is EMPTY:
        return "struct {}"
    return type(v).__name__


# --- lexer -----------------------------------------------------------------------

class _Tok:
    __slots__ = ("kind", "val", "pos")

    def __init__(self, kind, val, pos):
        self.kind, self.val, self.pos = kind, val, pos

    def __repr__(self):
        return f"{self.kind}:{self.val!r}"


_KEYWORDS = {"if", "else", "end", "range", "with", "break", "continue", "define", "template", "block", "nil",
             "true", "false"}
_UNSUPPORTED = {"define", "template", "block"}
_NUM_RE = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][+-]?\d+)?)")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Lexer:
    def __init__(self, src):
        self.src = src
        self.items = []  # ("text", str, pos) | ("action", [tokens], pos)

    def line_col(self, pos):
        line = self.src.count("\n", 0, pos) + 1
        col = pos - (self.src.rfind("\n", 0, pos) + 1) + 1
        return line, col

    def error(self, pos, msg):
        line, col = self.line_col(pos)
        raise TemplateError(f"template: :{line}:{col}: {msg}")

    def run(self):
        src, i, n = self.src, 0, len(self.src)
        trim_next = False
        while i < n:
            j = src.find("{{", i)
            text = src[i:] if j < 0 else src[i:j]
            if trim_next:
                text = text.lstrip(" \t\r\n")
                trim_next = False
            if j < 0:
                if text:
                    self.items.append(("text", text, i))
                break
            start = j
            k = j + 2
            if src.startswith("- ", k) or src.startswith("-\t", k) or src.startswith("-\n", k) or src.startswith("-\r", k):
                text = text.rstrip(" \t\r\n")
                k += 1
            if text:
                self.items.append(("text", text, i))
            # comment
            m = re.match(r"\s*/\*", src[k:])
            if m:
                end = src.find("*/", k + m.end())
                if end < 0:
                    self.error(start, "unclosed comment")
                after = end + 2
                close = re.match(r"\s*(-?)\}\}", src[after:])
                if not close:
                    self.error(start, "comment ends before closing delimiter")
                if close.group(1):
                    trim_next = True
                i = after + close.end()
                continue
            toks, i, trim_next = self._action(k, start)
            self.items.append(("action", toks, start))
        return self.items

    def _action(self, i, start):
        src, n = self.src, len(self.src)
        toks = []
        while True:
            while i < n and src[i] in " \t\r\n":
                i += 1
            if i >= n:
                self.error(start, "unclosed action")
            if src.startswith("-}}", i) and i > 0 and src[i - 1] in " \t\r\n":
                return toks, i + 3, True
            if src.startswith("}}", i):
                return toks, i + 2, False
            c = src[i]
            if c == '"':
                j = i + 1
                while j < n and src[j] != '"':
                    if src[j] == "\\":
                        j += 1
                    elif src[j] == "\n":
                        self.error(i, "unterminated quoted string")
                    j += 1
                if j >= n:
                    self.error(i, "unterminated quoted string")
                toks.append(_Tok("string", _unquote(src[i:j + 1], lambda m: self.error(i, m)), i))
                i = j + 1
            elif c == "`":
                j = src.find("`", i + 1)
                if j < 0:
                    self.error(i, "unterminated raw quoted string")
                toks.append(_Tok("string", src[i + 1:j], i))
                i = j + 1
            elif c == "'":
                m = re.match(r"'(\\.|[^\\'])'", src[i:])
                if not m:
                    self.error(i, "bad character constant")
                ch = _unquote('"' + m.group(1) + '"', lambda msg: self.error(i, msg))
                toks.append(_Tok("number", ord(ch), i))
                i += m.end()
            elif c == "." and i + 1 < n and (src[i + 1].isalpha() or src[i + 1] == "_"):
                m = _IDENT_RE.match(src, i + 1)
                toks.append(_Tok("field", m.group(0), i))
                i = m.end()
            elif c == ".":
                if i + 1 < n and src[i + 1].isdigit():
                    m = _NUM_RE.match(src, i)
                    toks.append(_Tok("number", _number(m.group(0), lambda msg: self.error(i, msg)), i))
                    i = m.end()
                else:
                    toks.append(_Tok("dot", ".", i))
                    i += 1
            elif c == "$":
                m = _IDENT_RE.match(src, i + 1)
                name = "$" + (m.group(0) if m else "")
                toks.append(_Tok("var", name, i))
                i += len(name)
            elif c.isdigit() or (c in "+-" and i + 1 < n and (src[i + 1].isdigit() or src[i + 1] == ".")):
                m = _NUM_RE.match(src, i)
                toks.append(_Tok("number", _number(m.group(0), lambda msg: self.error(i, msg)), i))
                i = m.end()
            elif c.isalpha() or c == "_":
                m = _IDENT_RE.match(src, i)
                word = m.group(0)
                kind = "keyword" if word in _KEYWORDS else "ident"
                toks.append(_Tok(kind, word, i))
                i = m.end()
            elif src.startswith(":=", i):
                toks.append(_Tok("declare", ":=", i))
                i += 2
            elif c in "|(),=":
                toks.append(_Tok(c, c, i))
                i += 1
            else:
                self.error(i, f"unexpected {c!r} in command")


def _unquote(s, error):
    try:
        return _go_unescape(s[1:-1])
    except (ValueError, IndexError) as e:
        error(f"invalid quoted string {s}: {e}")


def _go_unescape(body):
    out, i = [], 0
    simple = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"',
              "'": "'"}
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        i += 1
        if i >= len(body):
            raise ValueError("trailing backslash")
        c = body[i]
        if c in simple:
            out.append(simple[c])
            i += 1
        elif c == "x":
            out.append(chr(int(body[i + 1:i + 3], 16)))
            i += 3
        elif c == "u":
            out.append(chr(int(body[i + 1:i + 5], 16)))
            i += 5
        elif c == "U":
            out.append(chr(int(body[i + 1:i + 9], 16)))
            i += 9
        elif c in "01234567":
            out.append(chr(int(body[i:i + 3], 8)))
            i += 3
        else:
            raise ValueError(f"unknown escape sequence \\{c}")
    return "".join(out)


def _number(text, error):
    t = text.replace("_", "")
    try:
        if re.fullmatch(r"[+-]?0[xX][0-9a-fA-F]+", t):
            return int(t, 16)
        if re.fullmatch(r"[+-]?0[bB][01]+", t):
            return int(t, 2)
        if re.fullmatch(r"[+-]?0[oO][0-7]+", t):
            return int(t, 8)
        if re.fullmatch(r"[+-]?\d+", t):
            return int(t, 8) if len(t.lstrip("+-")) > 1 and t.lstrip("+-").startswith("0") else int(t)
        return float(t)
    except ValueError:
        error(f"bad number syntax: {text!r}")


# --- parser ----------------------------------------------------------------------

class _Node:
    pos = 0


class _Text(_Node):
    def __init__(self, text, pos):
        self.text, self.pos = text, pos


class _Pipe(_Node):
    def __init__(self, pos, decl, cmds, assign=False):
        self.pos, self.decl, self.cmds, self.assign = pos, decl, cmds, assign


class _Action(_Node):
    def __init__(self, pipe, pos, src):
        self.pipe, self.pos, self.src = pipe, pos, src


class _Branch(_Node):
    def __init__(self, kind, pipe, body, else_body, pos):
        self.kind, self.pipe, self.body, self.else_body, self.pos = kind, pipe, body, else_body, pos


class _Loop(_Node):
    def __init__(self, kind, pos):
        self.kind, self.pos = kind, pos


class _Arg(_Node):
    """One operand: kind in field, chain, var, dot, string, number, bool, nil, ident, pipe."""

    def __init__(self, kind, pos, value=None, fields=(), node=None, text=""):
        self.kind, self.pos, self.value, self.fields, self.node, self.text = kind, pos, value, list(fields), node, text


class Template:
    """A parsed template; ``execute(data)`` returns the output string."""

    def __init__(self, source, funcs=None):
        self.source = source
        self.funcs = dict(BASE_FUNCS)
        if funcs:
            self.funcs.update(funcs)
        self._lex = _Lexer(source)
        items = self._lex.run()
        self._items = items
        self._i = 0
        self._range_depth = 0
        try:
            body, end = self._parse_list(top=True)
        except RecursionError:
            # the parser recurses per nesting level ((((x)))), {{if}} in {{if}}): a clear error
            # where Go (1.20 on) stops at 10,000 levels, never a traceback
            pos = self._items[min(self._i, len(self._items)) - 1][2] if self._items else 0
            self._error(pos, "max expression depth exceeded")
        self.root = body
        self._plain = _plain_parts(body)

    # parsing helpers
    def _error(self, pos, msg):
        self._lex.error(pos, msg)

    def _parse_list(self, top=False):
        out = []
        while self._i < len(self._items):
            kind, val, pos = self._items[self._i]
            self._i += 1
            if kind == "text":
                out.append(_Text(val, pos))
                continue
            toks = val
            if not toks:
                self._error(pos, "missing value for command")
            t0 = toks[0]
            if t0.kind == "keyword" and t0.val in ("end", "else"):
                if top:
                    self._error(pos, f"unexpected {{{{{t0.val}}}}}")
                return out, (t0.val, toks, pos)
            if t0.kind == "keyword" and t0.val in _UNSUPPORTED:
                self._error(pos, f"{{{{{t0.val}}}}} is not supported by lamina's --format templates")
            if t0.kind == "keyword" and t0.val in ("if", "with", "range"):
                out.append(self._parse_branch(t0.val, toks[1:], pos))
                continue
            if t0.kind == "keyword" and t0.val in ("break", "continue"):
                if self._range_depth == 0:
                    self._error(pos, f"{{{{{t0.val}}}}} outside {{{{range}}}}")
                if len(toks) > 1:
                    self._error(pos, f"unexpected {toks[1].val!r} in {{{{{t0.val}}}}}")
                out.append(_Loop(t0.val, pos))
                continue
            pipe = self._parse_pipe(toks, pos, allow_decl=True)
            out.append(_Action(pipe, pos, self._action_text(pos)))
        if not top:
            self._error(len(self.source), "unexpected EOF (missing {{end}})")
        return out, None

    def _action_text(self, pos):
        end = self.source.find("}}", pos)
        return self.source[pos + 2:end].strip(" -\t\n") if end >= 0 else ""

    def _parse_branch(self, kind, toks, pos):
        if not toks:
            self._error(pos, f"missing value for {kind}")
        pipe = self._parse_pipe(toks, pos, allow_decl=True, range_decl=(kind == "range"))
        if kind == "range":
            self._range_depth += 1
        body, end = self._parse_list()
        if kind == "range":
            self._range_depth -= 1
        else_body = None
        word, etoks, epos = end
        if word == "else":
            if len(etoks) > 1:
                nxt = etoks[1]
                if nxt.kind == "keyword" and nxt.val in ("if", "with") and kind in ("if", "with"):
                    # "else if": the rest of the chain shares our {{end}}
                    branch = self._parse_branch(nxt.val, etoks[2:], epos)
                    return _Branch(kind, pipe, body, [branch], pos)
                self._error(epos, f"unexpected {nxt.val!r} in else")
            else_body, end = self._parse_list()
            word, etoks, epos = end
            if word != "end":
                self._error(epos, "expected end; found {{else}}")
        if len(etoks) > 1:
            self._error(epos, f"unexpected {etoks[1].val!r} in end")
        return _Branch(kind, pipe, body, else_body, pos)

    def _parse_pipe(self, toks, pos, allow_decl=False, range_decl=False, lo=0, hi=None):
        """The pipeline of ``toks[lo:hi]`` (an action's tokens, or a parenthesized part of them).
        Parts are index ranges into the action's one token list, and each "(" knows its ")"
        (``self._closing``): a part copied and scanned again at each level of nesting made
        parsing cost tokens x depth (51,200 parentheses: 14 s to say "max expression depth
        exceeded")."""
        if hi is None:
            hi = len(toks)
            self._closing = self._match_parens(toks, pos)
        decl, assign = [], False
        i = lo
        if allow_decl and hi > lo and toks[lo].kind == "var":
            # $x := / $x = / $i, $v :=
            if hi - lo > 1 and toks[lo + 1].kind in ("declare", "="):
                decl, assign, i = [toks[lo].val], toks[lo + 1].kind == "=", lo + 2
            elif range_decl and hi - lo > 3 and toks[lo + 1].kind == "," and toks[lo + 2].kind == "var" \
                    and toks[lo + 3].kind in ("declare", "="):
                decl, assign, i = [toks[lo].val, toks[lo + 2].val], toks[lo + 3].kind == "=", lo + 4
        if i >= hi:
            self._error(pos, "missing value for command")
        groups, start, j = [], i, i
        while j < hi:
            t = toks[j]
            if t.kind == "(":
                j = self._closing[j]   # a parenthesized part holds no | of this pipeline
            elif t.kind == "|":
                if j == start:
                    self._error(t.pos, "missing command before |")
                groups.append((start, j))
                start = j + 1
            j += 1
        if start == hi:
            self._error(pos, "missing command after |")
        groups.append((start, hi))
        return _Pipe(pos, decl, [self._parse_command(toks, a, b) for a, b in groups], assign)

    def _match_parens(self, toks, pos):
        """{index of each "(": index of its ")"} of an action's tokens."""
        closing, open_at = {}, []
        for j, t in enumerate(toks):
            if t.kind == "(":
                open_at.append(j)
            elif t.kind == ")":
                if not open_at:
                    self._error(t.pos, "unexpected right paren")
                closing[open_at.pop()] = j
        if open_at:
            self._error(pos, "unclosed left paren")
        return closing

    def _parse_command(self, toks, lo, hi):
        args, j = [], lo
        while j < hi:
            arg, j = self._parse_operand(toks, j, hi)
            args.append(arg)
        if args and args[0].kind == "nil":
            self._error(args[0].pos, "nil is not a command")
        return args

    def _parse_operand(self, toks, j, hi):
        t = toks[j]
        j += 1
        if t.kind == "(":
            k = self._closing[j - 1]
            if k == j:
                self._error(t.pos, "missing value in parenthesized pipeline")
            node = _Arg("pipe", t.pos, node=self._parse_pipe(toks, t.pos, allow_decl=True, lo=j, hi=k))
            j = k + 1
        elif t.kind == "field":
            node = _Arg("field", t.pos, fields=[t.val], text="." + t.val)
        elif t.kind == "var":
            node = _Arg("var", t.pos, value=t.val, text=t.val)
        elif t.kind == "dot":
            node = _Arg("dot", t.pos, text=".")
        elif t.kind == "string":
            return _Arg("string", t.pos, value=t.val, text=_json.dumps(t.val)), j
        elif t.kind == "number":
            return _Arg("number", t.pos, value=t.val, text=str(t.val)), j
        elif t.kind == "keyword" and t.val in ("true", "false"):
            return _Arg("bool", t.pos, value=t.val == "true", text=t.val), j
        elif t.kind == "keyword" and t.val == "nil":
            return _Arg("nil", t.pos, text="nil"), j
        elif t.kind == "ident":
            if t.val not in self.funcs:
                if t.val in _GO_UNSUPPORTED_FUNCS:
                    self._error(t.pos, f"function {t.val!r} is not supported by lamina's --format templates")
                self._error(t.pos, f'function "{t.val}" not defined')
            return _Arg("ident", t.pos, value=t.val, text=t.val), j
        elif t.kind == "keyword":
            self._error(t.pos, f"unexpected {{{{{t.val}}}}} in command")
        else:
            self._error(t.pos, f"unexpected {t.val!r} in operand")
        # field chains: .A.B, $x.A, (pipe).A
        while j < hi and toks[j].kind == "field" and toks[j].pos == _end_pos(toks[j - 1]):
            node.fields.append(toks[j].val)
            node.text += "." + toks[j].val
            j += 1
        if node.kind == "pipe" and node.fields:
            node.kind = "chain"
        return node, j

    # -- execution --
    def execute(self, data, *, missingkey_error=False):
        if self._plain is not None and type(data) is GoStruct:
            # a row of a table (docker's default formats): text and fields, without the walk
            out = []
            for part in self._plain:
                if type(part) is str:
                    out.append(part)
                    continue
                val = data
                for name in part:
                    if type(val) is not GoStruct or not val.has(name):
                        return self._walk(data, missingkey_error)   # which says what is wrong
                    val = val.get(name)
                out.append(_no_escapes(format_value(val)))
            return _utf8_text("".join(out))
        return self._walk(data, missingkey_error)

    def _walk(self, data, missingkey_error):
        st = _State(self, data, missingkey_error)
        out = []
        try:
            st.walk(self.root, data, out)
        except _LoopSignal:  # pragma: no cover - parser forbids it
            pass
        except RecursionError:
            raise TemplateError('template: :1:1: executing "": max expression depth exceeded') from None
        return _utf8_text("".join(out))  # a config's lone surrogate would stop the output midway


def _plain_parts(nodes):
    """A template of text and ``{{.A.B}}`` fields only, as a list of texts and field-name
    tuples (None for any other): what Template.execute renders without the walk."""
    parts = []
    for n in nodes:
        if type(n) is _Text:
            parts.append(n.text)
            continue
        if type(n) is not _Action or n.pipe.decl or len(n.pipe.cmds) != 1 or len(n.pipe.cmds[0]) != 1:
            return None
        arg = n.pipe.cmds[0][0]
        if arg.kind != "field" or not arg.fields:
            return None
        parts.append(tuple(arg.fields))
    return parts


def _end_pos(tok):
    if tok.kind == "field":
        return tok.pos + 1 + len(tok.val)
    if tok.kind == "var":
        return tok.pos + len(tok.val)
    if tok.kind == "dot":
        return tok.pos + 1
    if tok.kind == ")":
        return tok.pos + 1
    return -1


class _LoopSignal(Exception):
    def __init__(self, kind):
        self.kind = kind


class _State:
    def __init__(self, tmpl, data, missingkey_error):
        self.tmpl = tmpl
        self.vars = [("$", data)]
        self.missingkey_error = missingkey_error
        self.node = None

    def error(self, node, msg):
        line, col = self.tmpl._lex.line_col(node.pos)
        at = getattr(node, "text", "") or ""
        where = f' at <{at}>' if at else ""
        raise TemplateError(f'template: :{line}:{col}: executing ""{where}: {msg}')

    def walk(self, nodes, dot, out):
        for n in nodes:
            if isinstance(n, _Text):
                out.append(n.text)
            elif isinstance(n, _Action):
                val = self.eval_pipe(n.pipe, dot)
                if not n.pipe.decl:
                    out.append(_no_escapes(format_value(val)))
            elif isinstance(n, _Branch):
                self.walk_branch(n, dot, out)
            elif isinstance(n, _Loop):
                raise _LoopSignal(n.kind)

    def walk_branch(self, n, dot, out):
        mark = len(self.vars)
        try:
            val = self.eval_pipe(n.pipe, dot, in_range=(n.kind == "range"))
            if n.kind == "range":
                self.walk_range(n, val, dot, out, mark)
                return
            if truth(val):
                self.walk(n.body, val if n.kind == "with" else dot, out)
            elif n.else_body is not None:
                self.walk(n.else_body, dot, out)
        finally:
            del self.vars[mark:]

    def walk_range(self, n, val, dot, out, mark):
        if val is None or val is MISSING:
            items = []
        elif isinstance(val, dict):
            items = [(k, val[k]) for k in _sorted_keys(val)]
        elif isinstance(val, (list, tuple)):
            items = list(enumerate(val))
        elif isinstance(val, int) and not isinstance(val, bool):
            # one at a time, as Go counts: {{range 10000000000}} ended by {{break}} is no list of that length
            items = ((i, i) for i in range(val)) if val > 0 else ()
        else:
            self.error(n.pipe.cmds[-1][0] if n.pipe.cmds else n, f"range can't iterate over {format_value(val)}")
        if not items:
            if n.else_body is not None:
                self.walk(n.else_body, dot, out)
            return
        decl = n.pipe.decl
        for k, v in items:
            inner = len(self.vars)
            if len(decl) == 1:
                self._set_var(decl[0], v, n.pipe.assign, n)
            elif len(decl) == 2:
                self._set_var(decl[0], k, n.pipe.assign, n)
                self._set_var(decl[1], v, n.pipe.assign, n)
            try:
                self.walk(n.body, v, out)
            except _LoopSignal as s:
                if s.kind == "break":
                    del self.vars[inner:]
                    break
            del self.vars[inner:]

    def _set_var(self, name, value, assign, node):
        if assign:
            for i in range(len(self.vars) - 1, -1, -1):
                if self.vars[i][0] == name:
                    self.vars[i] = (name, value)
                    return
            self.error(node, f"undefined variable: {name}")
        self.vars.append((name, value))

    def var(self, node, name):
        for n, v in reversed(self.vars):
            if n == name:
                return v
        self.error(node, f"undefined variable: {name}")

    def eval_pipe(self, pipe, dot, in_range=False):
        val = MISSING
        first = True
        for cmd in pipe.cmds:
            val = self.eval_command(cmd, dot, None if first else val, has_final=not first)
            first = False
        if pipe.decl and not in_range:
            for name in pipe.decl:
                self._set_var(name, val, pipe.assign, pipe)
        return val

    def eval_command(self, cmd, dot, final, has_final):
        head = cmd[0]
        if head.kind == "ident":
            return self.call(head, cmd[1:], dot, final, has_final)
        if len(cmd) > 1 or has_final:
            if head.kind in ("field", "chain", "var") and head.fields:
                self.error(head, f"{head.fields[-1]} has arguments but cannot be invoked as function")
            self.error(head, f"can't give argument to non-function {head.text}")
        return self.eval_arg(head, dot)

    def eval_arg(self, a, dot):
        k = a.kind
        if k == "string" or k == "number" or k == "bool":
            return a.value
        if k == "nil":
            return None
        if k == "dot":
            return dot
        if k == "field":
            return self.fields(a, dot, a.fields)
        if k == "var":
            base = self.var(a, a.value)
            return self.fields(a, base, a.fields)
        if k == "pipe":
            return self.eval_pipe(a.node, dot)
        if k == "chain":
            return self.fields(a, self.eval_pipe(a.node, dot), a.fields)
        if k == "ident":
            return self.call(a, [], dot, None, False)
        self.error(a, f"can't evaluate {a.text}")  # pragma: no cover

    def fields(self, node, val, names):
        for name in names:
            val = self.field(node, val, name)
        return val

    def field(self, node, recv, name):
        if isinstance(recv, GoStruct):
            if recv.has(name):
                return recv.get(name)
            hint = ", ".join(recv.names())
            self.error(node, f"can't evaluate field {name} in type {recv.typename} (it has: {hint})")
        if isinstance(recv, dict):
            if name in recv:
                return recv[name]
            if self.missingkey_error:
                self.error(node, f'map has no entry for key "{name}"')
            return MISSING
        if recv is MISSING:
            if self.missingkey_error:
                self.error(node, f'nil data; no entry for key "{name}"')
            return MISSING
        if recv is None:
            self.error(node, f"nil pointer evaluating interface {{}}.{name}")
        self.error(node, f"can't evaluate field {name} in type {type_name(recv)}")

    def call(self, head, args, dot, final, has_final):
        name = head.value
        fn = self.tmpl.funcs[name]
        if name in ("and", "or"):
            # short-circuit like Go 1.18+
            vals = [(lambda a=a: self.eval_arg(a, dot)) for a in args]
            if has_final:
                vals.append(lambda: final)
            if not vals:
                self.error(head, f"wrong number of args for {name}: want at least 1 got 0")
            v = None
            for get in vals:
                v = get()
                if (name == "and" and not truth(v)) or (name == "or" and truth(v)):
                    return v
            return v
        vals = [self.eval_arg(a, dot) for a in args]
        if has_final:
            vals.append(final)
        try:
            return fn(*vals)
        except _FuncError as e:
            self.error(head, f"error calling {name}: {e}")
        except TypeError as e:
            msg = str(e)
            if "positional argument" in msg or "required" in msg or "takes" in msg:
                self.error(head, f"wrong number of args for {name}: got {len(vals)}")
            self.error(head, f"error calling {name}: {msg}")


def truth(v):
    if v is MISSING or v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, tuple, dict)):
        return len(v) > 0
    return True  # structs, times


# --- functions --------------------------------------------------------------------

class _FuncError(Exception):
    pass


def _need_str(v, fname):
    if isinstance(v, str):
        return v
    raise _FuncError(f"wrong type for value; expected string; got {type_name(v)}")


def _f_json(v):
    return go_json(v)


def _f_join(elems, sep):
    if not isinstance(elems, (list, tuple)):
        raise _FuncError(f"wrong type for value; expected []string; got {type_name(elems)}")
    return _need_str(sep, "join").join(format_value(e) if not isinstance(e, str) else e for e in elems)


def _f_split(s, sep):
    s, sep = _need_str(s, "split"), _need_str(sep, "split")
    if sep == "":
        return list(s)
    return s.split(sep)


def _f_title(s):
    s = _need_str(s, "title")
    return re.sub(r"(^|[^A-Za-z0-9_'])([a-z])", lambda m: m.group(1) + m.group(2).upper(), s)


def _f_pad(s, prefix, suffix):
    s = _need_str(s, "pad")
    if s == "":
        return s
    if int(prefix) < 0 or int(suffix) < 0:
        raise _FuncError("strings: negative Repeat count")  # docker's strings.Repeat panics, told as this
    return " " * int(prefix) + s + " " * int(suffix)


def _go_bytes(s):
    """A string's bytes as Go holds them: UTF-8, a byte that is no UTF-8 (held as a surrogate
    escape) as itself, and a lone surrogate as U+FFFD (Go's strings cannot hold one)."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xd800 <= ord(c) <= 0xdfff and not 0xdc80 <= ord(c) <= 0xdcff else c
                       for c in s).encode("utf-8", "surrogateescape")


def _go_string(data):
    """Bytes back to a string: a character cut in two stays its bytes (surrogate escapes)."""
    return data.decode("utf-8", "surrogateescape")


def _f_truncate(s, length):
    s = _need_str(s, "truncate")
    b = _go_bytes(s)
    if len(b) < length:
        return s
    if length < 0:
        # docker's source[:length] panics, which text/template reports as this error
        raise _FuncError(f"runtime error: slice bounds out of range [:{length}]")
    return _go_string(b[:length])


def _f_index(item, *keys):
    v = item
    for k in keys:
        if isinstance(v, dict):
            if k in v:
                v = v[k]
            else:
                v = v.zero if isinstance(v, GoMap) else MISSING
        elif isinstance(v, (list, tuple, str)):
            if not isinstance(k, int) or isinstance(k, bool):
                raise _FuncError(f"cannot index slice/array with type {type_name(k)}")
            if k < 0 or k >= (len(_go_bytes(v)) if isinstance(v, str) else len(v)):
                raise _FuncError(f"index out of range: {k}")
            v = v[k] if not isinstance(v, str) else _go_bytes(v)[k]
        elif v is None or v is MISSING:
            raise _FuncError("index of untyped nil")
        else:
            raise _FuncError(f"can't index item of type {type_name(v)}")
    return v


def _f_slice(item, *idx):
    """Go's slice: a string by its bytes (slice "héllo" 1 3 is "é"), as len and index count."""
    if item is None or item is MISSING:
        raise _FuncError("slice of untyped nil")
    if len(idx) > 3:
        raise _FuncError(f"too many slice indexes: {len(idx)}")
    if not isinstance(item, (list, tuple, str)):
        raise _FuncError(f"can't slice item of type {type_name(item)}")
    if isinstance(item, str) and len(idx) == 3:
        raise _FuncError("cannot 3-index slice a string")
    seq = _go_bytes(item) if isinstance(item, str) else item
    bounds = [0, len(seq), len(seq)]
    for n, x in enumerate(idx):
        if not isinstance(x, int) or isinstance(x, bool):
            raise _FuncError(f"cannot index slice/array with type {type_name(x)}")
        if not 0 <= x <= len(seq):
            raise _FuncError(f"index out of range: {x}")
        bounds[n] = x
    for a, b in ((bounds[0], bounds[1]), (bounds[1], bounds[2])):
        if a > b:
            raise _FuncError(f"invalid slice index: {a} > {b}")
    return _go_string(seq[bounds[0]:bounds[1]]) if isinstance(item, str) else item[bounds[0]:bounds[1]]


def _f_len(v):
    if isinstance(v, (str,)):
        return len(_go_bytes(v))
    if isinstance(v, (list, tuple, dict)):
        return len(v)
    raise _FuncError(f"len of type {type_name(v)}")


def _basic(v):
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, (int, float)):
        return ("num", v)
    if isinstance(v, str):
        return ("str", v)
    if v is None or v is MISSING:
        return ("nil", None)
    raise _FuncError("invalid type for comparison")


def _f_eq(a, *bs):
    if not bs:
        raise _FuncError("missing argument for comparison")
    ka = _basic(a)
    for b in bs:
        kb = _basic(b)
        if ka[0] != kb[0]:
            if "nil" in (ka[0], kb[0]):
                if ka == kb:
                    return True
                continue
            raise _FuncError("incompatible types for comparison")
        if ka[1] == kb[1]:
            return True
    return False


def _f_ne(a, b):
    return not _f_eq(a, b)


def _ordered(a, b):
    ka, kb = _basic(a), _basic(b)
    if ka[0] != kb[0] or ka[0] in ("bool", "nil"):
        raise _FuncError("incompatible types for comparison" if ka[0] != kb[0] else "invalid type for comparison")
    return ka[1], kb[1]


def _f_lt(a, b):
    x, y = _ordered(a, b)
    return x < y


def _f_le(a, b):
    x, y = _ordered(a, b)
    return x <= y


def _f_gt(a, b):
    x, y = _ordered(a, b)
    return x > y


def _f_ge(a, b):
    x, y = _ordered(a, b)
    return x >= y


def _f_not(v):
    return not truth(v)


def _f_print(*args):
    # fmt.Sprint: spaces between operands when neither side is a string
    out = []
    for i, a in enumerate(args):
        if i > 0 and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(format_value(a) if a is not MISSING else "<nil>")
    return "".join(out)


def _f_println(*args):
    return " ".join(format_value(a) if a is not MISSING else "<nil>" for a in args) + "\n"


_PRINTF_RE = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d*|\*))?([a-zA-Z%])?")
_GO_MAX_WIDTH = 1_000_000  # fmt's tooLarge


def _go_number_overflows(digits):
    """fmt's parsenum: before each next digit, a number read so far past 1e6 is an overflow
    ("crazy long number"), which ends the format with %!(NOVERB); up to 7 digits always read."""
    num = 0
    for c in digits or "":
        if num > _GO_MAX_WIDTH:
            return True
        num = num * 10 + ord(c) - 48
    return False


def _integer(a, flags, prec):
    """fmt's fmtInteger in decimal: a precision is the least number of digits (%.5d of -255 is
    -00255; %.0d of 0 is nothing), a sign as the flags say."""
    digits = str(abs(a))
    if prec is not None:
        digits = "" if int(prec) == 0 and a == 0 else digits.zfill(int(prec))
    return _signed(digits, a < 0, flags)


def _signed(digits, negative, flags):
    return ("-" if negative else "+" if "+" in flags else " " if " " in flags else "") + digits


_QUOTE_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def _go_quote(text, quote='"'):
    """strconv.Quote (QuoteRune with quote "'"): what unicode.IsPrint calls printable as it
    is, the rest escaped: \\x1b, \\u202e, \\U0001f600 (a byte that is no UTF-8, held as
    a surrogate escape: \\xNN)."""
    out = [quote]
    for ch in text:
        o = ord(ch)
        if ch == quote or ch == "\\":
            out.append("\\" + ch)
        elif ch == " " or (unicodedata.category(ch)[0] in "LMNPS" and not 0xd800 <= o <= 0xdfff):
            out.append(ch)
        elif ch in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[ch])
        elif o < 0x20 or o == 0x7f:
            out.append(f"\\x{o:02x}")
        elif 0xdc80 <= o <= 0xdcff:
            out.append(f"\\x{o - 0xdc00:02x}")
        elif o < 0x10000:
            out.append(f"\\u{0xfffd if 0xd800 <= o <= 0xdfff else o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "".join(out) + quote


def _go_quoted(v):
    """fmt's %q: a string quoted, an integer as the quoted character it is, each element of
    a slice or map so."""
    if isinstance(v, str):
        return _go_quote(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return _go_quote(chr(v) if 0 <= v <= 0x10ffff and not 0xd800 <= v <= 0xdfff else "\ufffd", "'")
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_go_quoted(x) for x in v) + "]"
    if isinstance(v, dict) and not isinstance(v, GoStruct):
        return "map[" + " ".join(f"{_go_quoted(k)}:{_go_quoted(v[k])}" for k in _sorted_keys(v)) + "]"
    return f"%!q({type_name(v)}={format_value(v)})"


def _printf_one(verb, flags, width, prec, a):
    """One operand of printf, padded to ``width``.  A slice or map is each of its elements so
    formatted and padded (fmt's printValue): %5s of [a b] is [    a     b]."""
    if isinstance(a, (list, tuple)) and not (verb == "v" and isinstance(a, NilSlice)):
        return "[" + " ".join(_printf_one(verb, flags, width, prec, _nil_inside(x)) for x in a) + "]"
    if isinstance(a, dict) and not isinstance(a, GoStruct):
        return "map[" + " ".join(f"{_printf_one(verb, flags, width, prec, k)}:"
                                 f"{_printf_one(verb, flags, width, prec, _nil_inside(a[k]))}"
                                 for k in _sorted_keys(a)) + "]"
    if (a is None or a is MISSING) and verb != "v":
        return f"%!{verb}(<nil>)"   # a nil interface (a missing key too): fmt's badVerb
    bad = False   # fmt's badVerb: the operand's %v inside, padded there, not the whole text
    if verb == "s" and isinstance(a, (bool, int, float)):
        bad = True
    elif verb == "v" and isinstance(a, int) and not isinstance(a, bool):
        s = _integer(a, flags, prec)
    elif verb in "sv":
        s = ("<nil>" if a is MISSING else format_value(a)) if not (verb == "s" and isinstance(a, str)) else a
        if prec is not None and (verb == "s" or isinstance(a, str)):
            s = s[:int(prec)]   # runes, as fmt's truncateString
    elif verb == "q":
        if isinstance(a, str) or (isinstance(a, int) and not isinstance(a, bool)):
            s = _go_quoted(a[:int(prec)] if prec is not None and isinstance(a, str) else a)
        else:
            bad = True
    elif verb == "d":
        if isinstance(a, bool) or not isinstance(a, int):
            bad = True
        else:
            s = _integer(a, flags, prec)
    elif verb in "xX":
        if isinstance(a, int) and not isinstance(a, bool):
            s = _signed(("0" + verb.lower() if "#" in flags else "") + format(abs(a), verb), a < 0, flags)
        elif isinstance(a, float):
            s = _hex_float_operand(a, verb, flags, prec)
        elif isinstance(a, str):
            s = _hex_string(_go_bytes(a)[:int(prec)] if prec is not None else _go_bytes(a), verb, flags)
        else:
            bad = True
    elif verb == "t":
        if isinstance(a, bool):
            s = format_value(a)
        else:
            bad = True
    elif verb == "f":
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            digits = f"{abs(float(a)):.{int(prec) if prec is not None else 6}f}"
            s = _signed(digits, str(float(a)).startswith("-"), flags)
        else:
            bad = True
    else:
        raise _FuncError(f"printf verb %{verb} is not supported by lamina's --format templates")
    if bad:
        return f"%!{verb}({type_name(a)}={_printf_one('v', flags, width, prec, a)})"
    if width is not None:
        w = int(width)
        number = isinstance(a, (int, float)) and not isinstance(a, bool)
        # fmt pads whatever it pads with zeros when the flag says so (%05s of "ab" is 000ab, %05t
        # 0true), but an infinity or NaN
        zeros = "0" in flags and not (isinstance(a, float) and not math.isfinite(a)) and \
            not (prec is not None and number and verb in "dv")  # fmtInteger: a precision turns zeros off
        if "-" in flags:
            s = s.ljust(w)
        elif zeros and number and s[:1] in ("-", "+", " "):
            s = s[0] + s[1:].rjust(w - 1, "0")   # fmt pads after the sign: -0000255
        else:
            s = s.rjust(w, "0") if zeros else s.rjust(w)
    return s


def _hex_float_operand(a, verb, flags, prec):
    """fmt's %x / %X of a float: strconv's hex form, signed as fmt signs a float, and with
    ``#`` the trailing zeros fmt adds up to its digit count (fmtFloat)."""
    num = _go_hex_float(a, int(prec) if prec is not None else -1, verb)
    if "#" in flags and math.isfinite(a):
        mantissa, _, exponent = num.partition("p" if verb == "x" else "P")
        digits, seen = (int(prec) if prec is not None else 6), False
        for c in mantissa.lstrip("-"):
            if c != ".":
                seen = seen or c != "0"   # the "x" of 0x counts, as in fmt
                digits -= seen
        if "." not in mantissa:
            mantissa += "."
        num = mantissa + "0" * max(digits, 0) + ("p" if verb == "x" else "P") + exponent
    negative = num.startswith("-")
    num = num.lstrip("-+")
    if math.isinf(a) and not negative and "+" not in flags and " " not in flags:
        return "+" + num   # fmt's +Inf, signed unasked
    return _signed(num, negative, flags)


def _go_hex_float(v, prec, verb):
    """strconv.FormatFloat(v, 'x' or 'X', prec, 64): -0x1.8p+00, rounded to ``prec`` hex digits
    (half to even) unless it is -1 (the shortest), the exponent of at least two digits."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "-Inf" if v < 0 else "+Inf"
    import struct
    bits = struct.unpack("<Q", struct.pack("<d", v))[0]
    negative, exp, mant = bits >> 63, (bits >> 52) & 0x7FF, bits & ((1 << 52) - 1)
    if exp == 0:
        exp += 1   # a subnormal
    else:
        mant |= 1 << 52
    exp -= 1023
    if mant == 0:
        exp = 0
    mant <<= 8   # the leading 1 at bit 60
    while mant and not mant & (1 << 60):
        mant <<= 1
        exp -= 1
    if 0 <= prec < 15:
        shift = prec * 4
        extra = (mant << shift) & ((1 << 60) - 1)
        mant >>= 60 - shift
        if extra | (mant & 1) > 1 << 59:
            mant += 1
        mant <<= 60 - shift
        if mant & (1 << 61):
            mant >>= 1
            exp += 1
    hexdigits = "0123456789abcdef" if verb == "x" else "0123456789ABCDEF"
    out = ("-" if negative else "") + "0" + verb + str((mant >> 60) & 1)
    mant = (mant << 4) & ((1 << 64) - 1)
    if prec < 0 and mant:
        out += "."
        while mant:
            out += hexdigits[(mant >> 60) & 15]
            mant = (mant << 4) & ((1 << 64) - 1)
    elif prec > 0:
        out += "."
        for _ in range(prec):
            out += hexdigits[(mant >> 60) & 15]
            mant = (mant << 4) & ((1 << 64) - 1)
    return out + ("p" if verb == "x" else "P") + ("-" if exp < 0 else "+") + f"{abs(exp):02d}"


def _nil_inside(v):
    return None if v is MISSING else v


def _hex_string(data, verb, flags):
    """fmt's fmtSbx: %x of a string's bytes; "% x" spaces them, "%#x" gives each (or, without
    the space flag, the whole) a 0x."""
    digits = data.hex() if verb == "x" else data.hex().upper()
    prefix = ("0" + verb) if "#" in flags else ""
    if " " in flags:
        return " ".join(prefix + digits[i:i + 2] for i in range(0, len(digits), 2))
    return prefix + digits if digits else ""


def _f_printf(fmt, *args):
    fmt = _need_str(fmt, "printf")
    out, i, ai = [], 0, 0
    for m in _PRINTF_RE.finditer(fmt):
        flags, width, prec, verb = m.groups()
        if _go_number_overflows(width) or _go_number_overflows(prec):
            # not a width of gigabytes: Go gives up on the rest of the format, as here
            out.append(fmt[i:m.start()] + "%!(NOVERB)")
            i = len(fmt)
            break
        if verb is None:
            continue  # no verb: the text as it is, as before (Go's %!(NOVERB) and bad verbs aside)
        out.append(fmt[i:m.start()])
        i = m.end()
        if prec == "":
            prec = "0"  # "%.s": Go's precision 0
        if verb == "%":
            out.append("%")
            continue
        if width == "*" or prec == "*":
            raise _FuncError("printf: '*' width/precision is not supported")
        if ai >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        a = args[ai]
        ai += 1
        if verb == "v":
            flags = flags.replace("+", "")  # doPrintf: %+v is plusV (field names), no sign
        s = _printf_one(verb, flags, width, prec, a)
        out.append(s)
    out.append(fmt[i:])
    if ai < len(args):
        out.append("%!(EXTRA " + ", ".join(f"{type_name(a)}={format_value(a)}" for a in args[ai:]) + ")")
    return "".join(out)


BASE_FUNCS = {
    "json": _f_json, "join": _f_join, "split": _f_split, "lower": lambda s: _need_str(s, "lower").lower(),
    "upper": lambda s: _need_str(s, "upper").upper(), "title": _f_title, "pad": _f_pad, "truncate": _f_truncate,
    "index": _f_index, "slice": _f_slice, "len": _f_len, "eq": _f_eq, "ne": _f_ne, "lt": _f_lt, "le": _f_le,
    "gt": _f_gt, "ge": _f_ge, "not": _f_not, "and": None, "or": None, "print": _f_print, "println": _f_println,
    "printf": _f_printf,
}

# docker's table headers: these keep the header text as it is (pad is not overridden)
HEADER_FUNCS = {
    "json": lambda v: v, "split": lambda v, _s: v, "join": lambda v, _s: v, "title": lambda v: v,
    "lower": lambda v: v, "upper": lambda v: v, "truncate": lambda v, _n: v,
}

_GO_UNSUPPORTED_FUNCS = {"html", "js", "urlquery", "call"}


def parse(source, funcs=None):
    return Template(source, funcs)


# --- docker's formatter conventions -------------------------------------------------

def prepare_format(fmt):
    """docker's preFormat: (is_table, final template text)."""
    is_table = fmt.startswith("table")
    text = fmt
    if is_table:
        text = text[len("table"):]
    elif fmt == "json":
        text = "{{json .}}"
    text = text.strip(" ")
    text = text.replace("\\t", "\t").replace("\\n", "\n")
    return is_table, text


def render_rows(fmt, rows, header):
    """Render rows (GoStruct contexts) with a docker --format string; ``header`` maps field -> column title."""
    is_table, text = prepare_format(fmt)
    tmpl = parse(text)
    body = []
    for row in rows:
        line = tmpl.execute(row)
        # a table row is one line: a newline in a value (a history step's) would forge another
        body.append((line.replace("\n", "\\n") if is_table else line) + "\n")
    if not is_table:
        return "".join(body)
    htmpl = parse(text, HEADER_FUNCS)
    head = htmpl.execute(GoMap(header))
    return tabwrite(head + "\n" + "".join(body))


def write_rows(out, fmt, rows, header, minwidth=10, padding=3):
    """render_rows written to ``out`` as the rows come, for as many rows as a config may list
    (``lamina history`` of 350,000 steps held them all in a gigabyte).  ``rows()`` gives the rows
    afresh each time: they are rendered twice, first for the template's errors (which print
    nothing, as docker's) and a table's column widths only, since a
    column is as wide as its widest cell, the last row's included (docker's tabwriter holds
    every row until it flushes).  When every line has the same cells (a cell holds no tab, the
    usual case) each column is one tabwriter block, as wide as its widest cell; otherwise the
    rows are rendered whole and go through tabwrite."""
    is_table, text = prepare_format(fmt)
    tmpl = parse(text)
    if not is_table:
        # a row the template fails on prints nothing at all, as docker's buffered formatter
        for row in rows():
            tmpl.execute(row)
        for row in rows():
            out.write(tmpl.execute(row) + "\n")
        return
    head = parse(text, HEADER_FUNCS).execute(GoMap(header)).split("\n")

    def lines():
        yield from head
        for row in rows():
            # a table row is one line: a newline in a value (a history step's) would forge another
            yield tmpl.execute(row).replace("\n", "\\n")
    cells = None
    widths = []
    for line in lines():
        split = line.split("\t")
        if cells is None:
            cells = len(split)
            widths = [0] * (cells - 1)
        elif len(split) != cells:   # a cell with a tab: blocks of their own (Go's format)
            out.write(render_rows(fmt, rows(), header))
            return
        for j in range(cells - 1):
            w = text_width(split[j])
            if w > widths[j]:
                widths[j] = w
    widths = [max(minwidth, w + padding) for w in widths]
    for line in lines():
        if cells == 1:
            out.write(line + "\n")
            continue
        split = line.split("\t")
        out.write("".join(c + " " * (widths[j] - text_width(c)) for j, c in enumerate(split[:-1]))
                  + split[-1] + "\n")


def char_width(ch):
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(s):
    if s.isascii():   # the common case, without a unicodedata lookup per character of every cell
        return len(s)
    return sum(char_width(c) for c in s)


def tabwrite(text, minwidth=10, padding=3, padchar=" "):
    """Go's text/tabwriter as docker configures it (minwidth 10, tabwidth 1, padding 3, ' ', no flags).

    Cells are tab-terminated; contiguous lines with a cell in a column form a
    block whose width is the widest cell + padding (at least minwidth).  A line
    without any tab ends all blocks.  Text after the last tab of a line is not
    part of a column and is never padded.
    """
    out = []
    lines = [[]]
    # split by lines and cells, not read a character at a time (a history of 100,000s of rows)
    *ended, last = text.split("\n")
    for line in ended:
        cells = line.split("\t")
        lines[-1].extend((s, text_width(s)) for s in cells)
        lines.append([])
        if len(cells) == 1:
            _format_lines(lines, out, minwidth, padding, padchar)
            lines = [[]]
    cells = last.split("\t")
    if not cells[-1]:
        cells.pop()   # the text ends with a tab, or is done: no last cell
    lines[-1].extend((s, text_width(s)) for s in cells)
    _format_lines(lines, out, minwidth, padding, padchar)
    return "".join(out)


def _format_lines(lines, out, minwidth, padding, padchar):
    """Go's Writer.format over ``lines`` (the last one is not newline-terminated)."""
    widths = []

    def write_lines(line0, line1):
        for i in range(line0, line1):
            for j, (s, w) in enumerate(lines[i]):
                out.append(s)
                if j < len(widths):
                    out.append(padchar * (widths[j] - w))
            if i + 1 < len(lines):
                out.append("\n")

    def fmt(line0, line1):
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write_lines(line0, this)
            line0 = this
            width = minwidth
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, lines[this][column][1] + padding)
                this += 1
            widths.append(width)
            fmt(line0, this)
            widths.pop()
            line0 = this
            this += 1
        write_lines(line0, line1)

    fmt(0, len(lines))
