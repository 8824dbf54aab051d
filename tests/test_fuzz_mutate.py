"""Mutation fuzzer on real archives: other tools' tars with one header changed.

test_fuzz_tar.py and test_fuzz_paths.py draw layers from what a generator knows; here the
layers are the corpus archives (tests/corpora.py: GNU tar's and bsdtar's own formats written
on this machine, Go's and CPython's testdata) with one or two of their headers changed: a byte
of a field flipped, a field replaced by a value a reader must be careful with (a type flag of
every kind, a name or link that climbs out, a number in base-256 or past its field, a size
that runs past the archive, a magic of another format), a byte of a PAX or GNU long-name
record flipped, a PAX header of drawn records put before it (overlayfs's own xattrs, names,
numbers, sparse maps: RECORDS); the header's checksum is then set right, so that the header still parses and
the change reaches the reader's logic instead of its checksum test.

Every such layer, alone or above another corpus archive left whole, goes through the dir
unpack (bottom-up and top-down), the overlay format mounted, and the store's copy, --link,
mount and relinked copy (everypath.py), in a Guard, and must give:

* a tree, or a LaminaError of one line (never another exception: a crash);
* the same tree on every path, or an error on every path;
* nothing changed outside the work directory, and the host directory untouched;
* where accepted, a compact store gives the layers back bit-exact and checks clean.

Seeded and bounded in CI (LAMINA_FUZZ_EXAMPLES, default 8 mutants: some 10 s);
LAMINA_FUZZ_SEED=N explores others, LAMINA_FUZZ_SHRINK=0 reports a failing mutant as drawn,
LAMINA_FUZZ_PATHS=dir,registry-pull,registry-unpack takes other paths (everypath.PATHS),
LAMINA_FUZZ_PROGRESS=FILE counts the mutants run in FILE:

    LAMINA_FUZZ_EXAMPLES=2000 LAMINA_FUZZ_SEED=7 python -m pytest tests/test_fuzz_mutate.py
"""
from __future__ import annotations

import functools
import os

from hypothesis import given, seed, settings
from hypothesis import strategies as st

import corpora
import test_fuzz_paths as fz
from everypath import assert_agree, describe, run_paths
from tarbuild import B256, BLOCK, FIELDS, _num, header, pad, pax_records
from test_fuzz_paths import Sandbox, host  # noqa: F401 (the fixture)

# (test_fuzz_paths.py's settings: LAMINA_FUZZ_SEED and LAMINA_FUZZ_SHRINK as there)
EXAMPLES = int(os.environ.get("LAMINA_FUZZ_EXAMPLES", "8"))
SEED = fz.SEED
SETTINGS = settings(fz.SETTINGS, max_examples=EXAMPLES)

# (LAMINA_FUZZ_PATHS: everypath's names, comma-separated; the registry's two are slow)
PATHS = tuple(os.environ.get("LAMINA_FUZZ_PATHS", "dir,dir-topdown,overlay-mount,store-copy,store-link,store-mount,"
                                                  "store-relink").split(","))

# small archives of every format and feature (written here, so always at hand), then the
# projects' own where the corpora are installed
WRITTEN = ["gnutar/v7.tar", "gnutar/oldgnu.tar", "gnutar/gnu.tar", "gnutar/ustar.tar", "gnutar/posix.tar",
           "gnutar/posix-sparse-0.0.tar", "gnutar/posix-sparse-0.1.tar", "gnutar/posix-sparse-1.0.tar",
           "gnutar/gnu-volume-label.tar", "gnutar/posix-volume-label.tar", "gnutar/gnu-incremental-1.tar",
           "gnutar/posix-incremental-1.tar", "gnutar/posix-not-utf8.tar", "bsdtar/pax-not-utf8.tar",
           "bsdtar/gnutar.tar", "bsdtar/ustar.tar", "bsdtar/v7.tar", "bsdtar/pax.tar"]
PROJECTS = ["go/file-and-dir.tar", "go/gnu.tar", "go/pax.tar", "go/ustar.tar", "go/star.tar", "go/v7.tar",
            "go/pax-records.tar", "go/gnu-sparse-big.tar", "go/sparse-formats.tar", "go/hdr-only.tar",
            "go/pax-path-hdr.tar", "go/pax-multi-hdrs.tar", "go/gnu-long-nul.tar", "go/xattrs.tar",
            "go/trailing-slash.tar", "go/ustar-file-devs.tar", "cpython/testtar.tar"]

NAMES = [b"../escape", b"/abs", b"a/../../up", b"", b".", b"./", b"..", b"d", b"d/sub", b"d/sub/a",
         b"e", b"x" * 100, b"a\0b", b".wh.d", b"d/.wh..wh..opq", b".wh..wh..opq", b"d//x/"]
LINKS = NAMES + [b"/etc/passwd", b"../../../../etc", b"d/sub", b"self"]
TYPES = [b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"g", b"x", b"L", b"K", b"S", b"D", b"M",
         b"N", b"V", b"A", b"X", b"\xff"]
NUMBERS = [0, 1, 0o777, 0o7777, 0o17777777, 511, 512, 513, 1 << 20, (1 << 33) - 1, 1 << 33, 1 << 62,
           B256(1 << 40), B256(-1), b"\xff" * 12, b"\x80" + b"\xff" * 11, b" " * 12, b"0x10\0", b"-1\0",
           b"7" * 12, b"", b"\0" * 12]
MAGICS = [b"ustar\0", b"ustar ", b"\0" * 6, b"ustaR\0", b"GNUtar"]
VERSIONS = [b"00", b" \0", b"\0\0", b"99"]
NUMERIC = ("mode", "uid", "gid", "size", "mtime", "devmajor", "devminor")
# PAX records put before a header: overlayfs's own xattrs (which only the overlay paths would
# read as markers), xattrs the kernel parses, names and links that climb out, numbers past the
# header's, sparse maps, and charset and device records
RECORDS = [("SCHILY.xattr.trusted.overlay.opaque", b"y"), ("SCHILY.xattr.user.overlay.opaque", b"y"),
           ("SCHILY.xattr.trusted.overlay.whiteout", b""), ("SCHILY.xattr.user.overlay.whiteout", b""),
           ("SCHILY.xattr.trusted.overlay.redirect", b"/d"), ("SCHILY.xattr.trusted.overlay.metacopy", b""),
           ("SCHILY.xattr.trusted.overlay.origin", b"\x00\xfb\x01"), ("SCHILY.xattr.trusted.overlay.overlay.opaque", b"y"),
           ("SCHILY.xattr.security.capability", b"\x01\x00"), ("SCHILY.xattr.system.posix_acl_access", b"\x02\x00\x00"),
           ("SCHILY.xattr.user.fuzz", b"v"), ("LIBARCHIVE.xattr.user.b64", b"dmFsdWU"), ("SCHILY.xattr.", b"v"),
           ("path", b"../up"), ("path", b"/abs"), ("path", b"d"), ("path", b"d/.wh.sub"), ("path", b""),
           ("linkpath", b"/etc/passwd"), ("linkpath", b"../../x"), ("linkpath", b"d"), ("size", b"0"),
           ("size", b"99999999999"), ("size", b"-1"), ("uid", b"4294967296"), ("gid", b"-5"), ("mtime", b"nan"),
           ("mtime", b"1e400"), ("atime", b"x"), ("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0"),
           ("GNU.sparse.map", b"0,1,999999,1"), ("GNU.sparse.size", b"4096"), ("GNU.sparse.realsize", b"1"),
           ("GNU.sparse.name", b"../sparse"), ("hdrcharset", b"BINARY"), ("SCHILY.devmajor", b"1"),
           ("SCHILY.devminor", b"3"), ("comment", b"\xff")]


def _checksum_ok(blk):
    want = blk[148:156].split(b"\0", 1)[0].strip(b" ")
    try:
        stored = int(want, 8)
    except ValueError:
        return False
    return stored in (sum(blk[:148]) + 256 + sum(blk[156:]),
                      sum((b - 256 if b > 127 else b) for b in blk[:148] + blk[156:]) + 256)


def headers(tar):
    """(offset, type flag, offset past the header's payload) of every header of ``tar``: each
    512-byte block whose checksum holds, walked entry by entry (a data block skipped by its
    header's size)."""
    out, off = [], 0
    while off + BLOCK <= len(tar):
        blk = tar[off:off + BLOCK]
        if blk == bytes(BLOCK) or not _checksum_ok(blk):
            off += BLOCK
            continue
        field = blk[124:136]
        try:
            size = int.from_bytes(field[1:], "big") if field[0] & 0x80 else int(field.split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            size = 0
        payload = 0 if blk[156:157] in (b"1", b"2", b"3", b"4", b"5", b"6") else -(-size // BLOCK) * BLOCK
        out.append((off, blk[156:157], off + BLOCK + payload))
        off += BLOCK + payload
    return out


def _set_checksum(blk):
    blk[148:156] = b" " * 8
    blk[148:156] = b"%06o\0 " % sum(blk)


def _fit(value, width):
    return (value + bytes(width))[:width]


@st.composite
def mutations(draw, tar):
    """One mutation of ``tar``'s headers (a description, the changed tar)."""
    hdrs = headers(tar)
    if not hdrs:
        return "no header", tar
    off, type_, end = draw(st.sampled_from(hdrs))
    out = bytearray(tar)
    blk = out[off:off + BLOCK]
    what = draw(st.sampled_from(["field"] * 6 + ["flip"] * 3 + ["record"] * (2 if type_ in (b"x", b"g", b"L", b"K") else 0)
                                + ["swap", "pax", "pax"]))
    if what == "pax":
        records = draw(st.lists(st.sampled_from(RECORDS), min_size=1, max_size=3))
        payload = pax_records(records)
        kind = draw(st.sampled_from([b"x", b"x", b"g"]))
        inserted = header("PaxHeaders/fuzz", type=kind, size=len(payload)) + pad(payload)
        return f"before the header at {off} ({type_!r}): a {kind.decode()} header of {records}", \
            tar[:off] + inserted + tar[off:]
    if what == "record" and end > off + BLOCK:
        at = draw(st.integers(off + BLOCK, min(end, len(tar)) - 1))
        new = draw(st.sampled_from([b"0", b"9", b"=", b"\n", b" ", b"\0", b"/", b".", b"\xff"]))
        out[at:at + 1] = new
        return f"header at {off} ({type_!r}): its record byte {at - off - BLOCK} now {new!r}", bytes(out)
    if what == "swap" and len(hdrs) > 1:
        # a header's name given to another (the same path twice, of two types)
        other = draw(st.sampled_from([h for h in hdrs if h[0] != off]))[0]
        blk[0:100] = tar[other:other + 100]
        desc = f"header at {off} ({type_!r}): the name of the header at {other}"
    elif what == "flip":
        name = draw(st.sampled_from([f for f in FIELDS if f != "chksum"]))
        start, width = FIELDS[name]
        at = draw(st.integers(start, start + width - 1))
        bit = draw(st.integers(0, 7))
        blk[at] ^= 1 << bit
        desc = f"header at {off} ({type_!r}): bit {bit} of {name} byte {at - start} flipped"
    else:
        name = draw(st.sampled_from(["name", "name", "linkname", "type", "type", "prefix", "magic", "version",
                                     *NUMERIC, "size", "size"]))
        start, width = FIELDS[name]
        if name in ("name", "prefix"):
            value = draw(st.sampled_from(NAMES))
        elif name == "linkname":
            value = draw(st.sampled_from(LINKS))
        elif name == "type":
            value = draw(st.sampled_from(TYPES))
        elif name == "magic":
            value = draw(st.sampled_from(MAGICS))
        elif name == "version":
            value = draw(st.sampled_from(VERSIONS))
        else:
            number = draw(st.sampled_from(NUMBERS))
            try:
                value = _num(number, width)
            except (AssertionError, OverflowError, TypeError):
                value = b"7" * width
            number = number.n if isinstance(number, B256) else number
            value = value if isinstance(number, bytes) or len(value) <= width else b"7" * width
        blk[start:start + width] = _fit(value, width)
        desc = f"header at {off} ({type_!r}): {name} = {value!r}"
    _set_checksum(blk)
    out[off:off + BLOCK] = blk
    return desc, bytes(out)


def _corpus():
    keys = list(WRITTEN)
    for key in PROJECTS:
        if corpora.corpus_dir(key.split("/", 1)[0]) is not None:
            keys.append(key)
    return keys


@functools.lru_cache(maxsize=None)
def corpus():
    """{key: plain tar} (a function, not a fixture: a failing case prints its arguments)."""
    out = {}
    for key in _corpus():
        try:
            _, plain = corpora.archive(key)
        except (OSError, KeyError):
            continue
        if plain is not None and len(plain) <= 256 << 10:
            out[key] = plain
    assert len(out) >= len(WRITTEN) - 2, sorted(out)
    return out


def _one_line(e):
    text = str(e)
    return text and "\n" not in text


@seed(20261241 + SEED)
@SETTINGS
@given(data=st.data())
def test_mutated_corpus_archives_agree_on_every_path(host, data):  # noqa: F811
    """A corpus archive with one or two headers changed (checksums set right): a tree or a
    one-line LaminaError, the same on every path, nothing written outside."""
    key = data.draw(st.sampled_from(sorted(corpus())))
    tar, done = corpus()[key], []
    for _ in range(data.draw(st.integers(1, 2))):
        desc, tar = data.draw(mutations(tar))
        done.append(desc)
    # half the time above another archive (or the same one) left whole: the changed entries then
    # replace, hide or link to what a layer below wrote, and the top-down unpack skips below them
    below = data.draw(st.sampled_from(sorted(corpus()))) if data.draw(st.booleans()) else None
    layers = [corpus()[below], tar] if below else [tar]
    fz._count_case()
    context = (f"above {below}, " if below else "") + f"{key}: " + "; ".join(done) + "\n" + describe(layers)
    box = Sandbox(host)
    try:
        results = run_paths(box.guard.dest, layers, paths=PATHS)
        bad = {p: r for p, r in results.items() if isinstance(r, Exception) and not _one_line(r)}
        assert not bad, f"{context}\nan error that is no one line: {bad}"
        if assert_agree(results, context=context) is not None:
            compact_round_trip(box.guard.dest, layers, context)
    finally:
        box.close()


def compact_round_trip(work, layers, context):
    """A compact store (keep-blobs false) takes the image and gives every layer back bit-exact
    from snapshot and sidecar (whatever odd header the extractor read, the sidecar's reader
    must name its payload as the extractor did), and fsck finds nothing."""
    from everypath import TAG, write_image
    from lamina.store import Store
    from lamina.transports import copy
    with Store(os.path.join(work, "compact")) as store:
        store.set_config("keep-blobs", "false")
        copy(f"oci:{write_image(os.path.join(work, 'compact-layout'), layers)}:{TAG}", "x:1", store=store)
        image = store.resolve("x:1")
        for i, tar in enumerate(layers):
            assert not store.has_blob(image.layers[i].digest), "the compact store kept a blob"
            with store.layer_reader(image.layers[i], image.diff_ids[i], image.chain_ids[i]) as f:
                assert f.read() == tar, f"{context}\nthe compact store rebuilt layer {i} otherwise"
    findings = Store(os.path.join(work, "compact")).fsck().findings
    assert list(findings) == [], f"{context}\nfsck of the compact store: {list(findings)}"


def test_headers_walks_every_entry_of_a_corpus_archive():
    """The mutator reaches every header (not only the first), and no payload block for one."""
    import tarfile
    import io
    tar = corpora.archive("gnutar/posix.tar")[1]
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        members = t.getmembers()
    # (tarfile hides the PAX 'x' headers in the member that follows them)
    assert len([h for h in headers(tar) if h[1] not in (b"x", b"g")]) == len(members)
