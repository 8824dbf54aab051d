"""Raw tar vectors for the conformance tests: GNU sparse entries in every
format, hole maps, and the reference extractors (GNU tar, bsdtar).

Sparse builders take the file as ``segments``: a list of ``(offset, data)``
written at ``offset`` of a file of ``realsize`` bytes; everything else is a
hole.  ``sparse_map=`` overrides the map written into the archive (for hostile
maps) while the stored data stays the concatenation of the segments' data.
"""
from __future__ import annotations

import os
import shutil
import subprocess

from conftest import require_tool, run
from layerkit import GNU_TAR_X
from tarbuild import BLOCK, Tar, _num, header, pad

SPARSES_IN_OLDGNU_HEADER = 4
SPARSES_IN_EXTENSION = 21


def _map_of(segments, realsize):
    """GNU tar's map: one (offset, length) per segment, closed by (realsize, 0)."""
    out = [(off, len(data)) for off, data in segments]
    if not out or out[-1][0] + out[-1][1] != realsize or out[-1][1] != 0:
        out.append((realsize, 0))
    return out


def _stored(segments):
    return b"".join(data for _, data in segments)


def sparse_old_gnu(name, realsize, segments, *, sparse_map=None, stored=None, **kw):
    """One old-GNU type 'S' entry (GNU tar --format=gnu/oldgnu --sparse): the map
    sits in the header (4 slots), then in 512-byte extension blocks of 21 slots."""
    smap = _map_of(segments, realsize) if sparse_map is None else list(sparse_map)
    data = _stored(segments) if stored is None else stored
    blk = bytearray(header(name, type=b"S", size=len(data), fmt="gnu", **kw))
    first, rest = smap[:SPARSES_IN_OLDGNU_HEADER], smap[SPARSES_IN_OLDGNU_HEADER:]
    for i, (off, n) in enumerate(first):
        at = 386 + 24 * i
        blk[at:at + 12] = _num(off, 12)
        blk[at + 12:at + 24] = _num(n, 12)
    blk[482] = 1 if rest else 0
    blk[483:495] = _num(realsize, 12)
    blk[148:156] = b" " * 8
    blk[148:156] = b"%06o\0 " % sum(blk)
    out = bytes(blk)
    while rest:
        chunk, rest = rest[:SPARSES_IN_EXTENSION], rest[SPARSES_IN_EXTENSION:]
        ext = bytearray(BLOCK)
        for i, (off, n) in enumerate(chunk):
            ext[24 * i:24 * i + 12] = _num(off, 12)
            ext[24 * i + 12:24 * i + 24] = _num(n, 12)
        ext[504] = 1 if rest else 0
        out += bytes(ext)
    return out + pad(data)


def sparse_pax_00(name, realsize, segments, *, sparse_map=None, stored=None):
    """PAX sparse 0.0: repeated GNU.sparse.offset / GNU.sparse.numbytes records."""
    smap = _map_of(segments, realsize) if sparse_map is None else list(sparse_map)
    data = _stored(segments) if stored is None else stored
    recs = [("GNU.sparse.size", str(realsize)), ("GNU.sparse.numblocks", str(len(smap)))]
    for off, n in smap:
        recs += [("GNU.sparse.offset", str(off)), ("GNU.sparse.numbytes", str(n))]
    return Tar().pax(recs).entry(name, data).bytes(end=False)


def sparse_pax_01(name, realsize, segments, *, sparse_map=None, stored=None, records=()):
    """PAX sparse 0.1: the whole map in one GNU.sparse.map record; the ustar name
    is GNU tar's GNUSparseFile.<pid>/<name> and GNU.sparse.name holds the real one."""
    smap = _map_of(segments, realsize) if sparse_map is None else list(sparse_map)
    data = _stored(segments) if stored is None else stored
    recs = [("GNU.sparse.size", str(realsize)), ("GNU.sparse.numblocks", str(len(smap))),
            ("GNU.sparse.name", name), ("GNU.sparse.map", ",".join(f"{o},{n}" for o, n in smap))]
    recs += list(records)
    return Tar().pax(recs).entry("GNUSparseFile.0/" + name, data).bytes(end=False)


def sparse_pax_10(name, realsize, segments, *, sparse_map=None, stored=None, map_text=None):
    """PAX sparse 1.0: the map is decimal lines at the start of the entry's data,
    padded to a block; header size covers map + data."""
    smap = _map_of(segments, realsize) if sparse_map is None else list(sparse_map)
    data = _stored(segments) if stored is None else stored
    if map_text is None:
        map_text = (f"{len(smap)}\n" + "".join(f"{o}\n{n}\n" for o, n in smap)).encode()
    body = pad(map_text) + data
    recs = [("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.name", name),
            ("GNU.sparse.realsize", str(realsize))]
    return Tar().pax(recs).entry("GNUSparseFile.0/" + name, body).bytes(end=False)


SPARSE_BUILDERS = {"oldgnu-S": sparse_old_gnu, "pax-0.0": sparse_pax_00,
                   "pax-0.1": sparse_pax_01, "pax-1.0": sparse_pax_10}


def archive(*parts):
    """Concatenate raw entries and close the archive."""
    return b"".join(parts) + b"\0" * (2 * BLOCK)


# --- hole maps --------------------------------------------------------------

def data_map(path):
    """[(start, end)] of the data regions of a file, by SEEK_DATA / SEEK_HOLE."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        out, pos = [], 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
        return out
    finally:
        os.close(fd)


# --- the reference extractors -----------------------------------------------

BSDTAR_X = ["--xattrs", "--same-owner", "--numeric-owner", "-p"]


def extract_with(tool, tarpath, dest, *, check=True):
    """Extract with GNU tar ("gnu") or bsdtar ("bsd") as root, keeping owners, modes,
    xattrs.  Returns (returncode, stderr); check=True fails the test on an error."""
    exe = "tar" if tool == "gnu" else "bsdtar"
    require_tool(exe)
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    args = GNU_TAR_X if tool == "gnu" else BSDTAR_X
    if check:
        proc = run(exe, *args, "-xf", tarpath, "-C", dest)
    else:
        proc = subprocess.run([exe, *args, "-xf", os.fspath(tarpath), "-C", os.fspath(dest)],
                              capture_output=True, text=True, errors="replace")
    return proc.returncode, proc.stderr
