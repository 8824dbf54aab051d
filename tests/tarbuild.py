"""Byte-exact tar builder for test vectors.

Python's tarfile decides by itself when to emit PAX / GNU extensions; hostile
and edge-case vectors need full control over every header field, so this
module writes raw 512-byte blocks.  Numeric fields accept an int (written in
octal), ``B256(n)`` (GNU base-256) or raw ``bytes`` (written verbatim).
"""
from __future__ import annotations

import io
import tarfile

BLOCK = 512

# field name -> (offset, width)
FIELDS = {
    "name": (0, 100), "mode": (100, 8), "uid": (108, 8), "gid": (116, 8),
    "size": (124, 12), "mtime": (136, 12), "chksum": (148, 8), "type": (156, 1),
    "linkname": (157, 100), "magic": (257, 6), "version": (263, 2),
    "uname": (265, 32), "gname": (297, 32), "devmajor": (329, 8),
    "devminor": (337, 8), "prefix": (345, 155),
}

MTIME = 1_600_000_000


class B256:
    """A number written in GNU base-256 form."""

    def __init__(self, n):
        self.n = n


def _b(s):
    if isinstance(s, str):
        return s.encode("utf-8", "surrogateescape")
    return bytes(s)


def _num(value, width):
    if isinstance(value, bytes):
        return value
    if isinstance(value, B256):
        n = value.n
        raw = (n % (256 ** width)).to_bytes(width, "big")
        if n >= 0:
            assert raw[0] == 0, "number too big for base-256 field"
            return b"\x80" + raw[1:]
        assert raw[0] == 0xFF, "number too small for base-256 field"
        return raw
    s = b"%0*o" % (width - 1, value) + b"\0"
    if len(s) > width:
        return _num(B256(value), width)  # as GNU tar writes what octal cannot hold
    return s


def header(name, *, type=b"0", mode=0o644, uid=0, gid=0, size=0, mtime=MTIME,
           linkname=b"", uname=b"root", gname=b"root", devmajor=0, devminor=0,
           prefix=b"", fmt="ustar", chksum=None, raw=None):
    """One 512-byte header block.  fmt: "ustar" (POSIX magic), "gnu" (GNU magic), "v7" (no magic)."""
    blk = bytearray(BLOCK)

    def put(field, data):
        off, width = FIELDS[field]
        data = _b(data) if not isinstance(data, (bytes, bytearray)) else bytes(data)
        if len(data) > width:
            raise ValueError(f"{field} too long: {len(data)} > {width}")
        blk[off:off + len(data)] = data

    put("name", _b(name))
    put("mode", _num(mode, 8))
    put("uid", _num(uid, 8))
    put("gid", _num(gid, 8))
    put("size", _num(size, 12))
    put("mtime", _num(mtime, 12))
    put("type", _b(type))
    put("linkname", _b(linkname))
    if fmt == "ustar":
        put("magic", b"ustar\0")
        put("version", b"00")
    elif fmt == "gnu":
        put("magic", b"ustar ")
        put("version", b" \0")
    if fmt != "v7":
        put("uname", _b(uname))
        put("gname", _b(gname))
        put("devmajor", _num(devmajor, 8))
        put("devminor", _num(devminor, 8))
        put("prefix", _b(prefix))
    for field, data in (raw or {}).items():
        put(field, data)
    if chksum is None:
        blk[148:156] = b" " * 8
        chksum = sum(blk)
        blk[148:156] = b"%06o\0 " % chksum
    else:
        blk[148:156] = _num(chksum, 8) if not isinstance(chksum, bytes) else chksum
    return bytes(blk)


def pad(data):
    data = bytes(data)
    rem = len(data) % BLOCK
    return data + (b"\0" * (BLOCK - rem) if rem else b"")


def pax_records(records):
    """Encode PAX records; records: dict or list of (key, value) (str or bytes)."""
    items = records.items() if isinstance(records, dict) else records
    out = []
    for key, value in items:
        kv = _b(key) + b"=" + _b(value) + b"\n"
        n = len(kv) + 2
        while True:
            rec = b"%d " % n + kv
            if len(rec) == n:
                break
            n = len(rec)
        out.append(rec)
    return b"".join(out)


class Tar:
    """Accumulates raw tar blocks."""

    def __init__(self):
        self.buf = io.BytesIO()

    def raw(self, data):
        self.buf.write(data)
        return self

    def entry(self, name, data=b"", *, size=None, **kw):
        data = _b(data)
        self.buf.write(header(name, size=len(data) if size is None else size, **kw))
        self.buf.write(pad(data))
        return self

    # --- typed helpers -------------------------------------------------
    def file(self, name, data=b"", **kw):
        kw.setdefault("type", b"0")
        return self.entry(name, data, **kw)

    def dir(self, name, **kw):
        kw.setdefault("mode", 0o755)
        return self.entry(name, b"", type=b"5", **kw)

    def symlink(self, name, target, **kw):
        kw.setdefault("mode", 0o777)
        return self.entry(name, b"", type=b"2", linkname=target, **kw)

    def hardlink(self, name, target, **kw):
        return self.entry(name, b"", type=b"1", linkname=target, **kw)

    def chardev(self, name, major, minor, **kw):
        return self.entry(name, b"", type=b"3", devmajor=major, devminor=minor, **kw)

    def blockdev(self, name, major, minor, **kw):
        return self.entry(name, b"", type=b"4", devmajor=major, devminor=minor, **kw)

    def fifo(self, name, **kw):
        return self.entry(name, b"", type=b"6", **kw)

    def whiteout(self, path, **kw):
        d, _, base = _b(path).rpartition(b"/")
        return self.file((d + b"/" if d else b"") + b".wh." + base, b"", **kw)

    def opaque(self, dirpath, **kw):
        d = _b(dirpath).rstrip(b"/")
        return self.file((d + b"/" if d else b"") + b".wh..wh..opq", b"", **kw)

    # --- extensions ----------------------------------------------------
    def pax(self, records, *, type=b"x", name=b"././@PaxHeader", size=None, **kw):
        body = records if isinstance(records, (bytes, bytearray)) else pax_records(records)
        return self.entry(name, body, size=size, type=type, **kw)

    def gnu_longname(self, name, *, size=None, nul=True):
        body = _b(name) + (b"\0" if nul else b"")
        return self.entry(b"././@LongLink", body, size=size, type=b"L", fmt="gnu", mode=0o644,
                          uname=b"root", gname=b"root", mtime=0)

    def gnu_longlink(self, target, *, size=None, nul=True):
        body = _b(target) + (b"\0" if nul else b"")
        return self.entry(b"././@LongLink", body, size=size, type=b"K", fmt="gnu", mode=0o644,
                          uname=b"root", gname=b"root", mtime=0)

    def end(self, blocks=2):
        self.buf.write(b"\0" * (BLOCK * blocks))
        return self

    def bytes(self, end=True):
        if end:
            self.end()
        return self.buf.getvalue()


def tarfile_bytes(members, fmt=tarfile.PAX_FORMAT):
    """Build a tar with Python's tarfile.  members: list of (TarInfo, data-or-None)."""
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=fmt) as tf:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    return bio.getvalue()


def ti(name, type=tarfile.REGTYPE, *, mode=0o644, uid=0, gid=0, mtime=MTIME, linkname="",
       uname="", gname="", devmajor=0, devminor=0, pax_headers=None):
    t = tarfile.TarInfo(name)
    t.type = type
    t.mode = mode
    t.uid, t.gid = uid, gid
    t.mtime = mtime
    t.linkname = linkname
    t.uname, t.gname = uname, gname
    t.devmajor, t.devminor = devmajor, devminor
    if pax_headers:
        t.pax_headers = dict(pax_headers)
    return t
