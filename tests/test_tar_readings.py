"""Header forms the reference readers read apart, and metadata a layer can carry that
changes other metadata, through every path (see everypath.py).

What test_tar_conformance.py and test_hostile_*.py do not cover: an extended header
left pending across a global header or a volume label; GNU.sparse.name on an entry that
is not sparse, on an old GNU sparse entry, or against a GNU long name; GNU.sparse.size on an
old GNU sparse entry; an empty GNU long name or link; GNU sparse records given twice or in
two forms that disagree; PAX ``size`` on entries that carry no data; SCHILY.xattr and
LIBARCHIVE.xattr records that disagree or name nothing, and LIBARCHIVE.xattr values that
libarchive's base64 reader ends early; SCHILY.acl records; an access ACL among the xattrs of a file (the kernel
rewrites the mode's group bits from it); hardlink targets with a trailing slash; and
gzip members whose header has a header checksum (FHCRC).  Where GNU tar, bsdtar and
Go's archive/tar (docker, containerd, umoci) give different trees, lamina refuses the
layer or reads as Go and one of the two C readers (tests/CONFORMANCE.md).
"""
from __future__ import annotations

import base64
import os
import struct
import subprocess

import pytest

import ocibuild
from conftest import require_tool
from layerkit import GNU_TAR_X, gnu_tar_extract, gz_all_header_fields, write
from tarbuild import Tar
from tarvectors import BSDTAR_X, extract_with, sparse_old_gnu
from test_hostile_more import agree, refused_everywhere
from treecmp import snapshot


def _acl(*entries):
    """A system.posix_acl_access value: (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


USER_OBJ, USER, GROUP_OBJ, MASK, OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
NOID = 0xFFFFFFFF
# user 1000 rwx, mask rwx: set after the mode, it would turn 0644 into 0674
WIDE_ACL = _acl((USER_OBJ, 6, NOID), (USER, 7, 1000), (GROUP_OBJ, 4, NOID), (MASK, 7, NOID), (OTHER, 4, NOID))


def _mask(acl):
    for off in range(4, len(acl), 8):
        tag, perm, _ = struct.unpack_from("<HHI", acl, off)
        if tag == MASK:
            return perm
    return None


def test_an_access_acl_never_changes_the_entrys_mode(g):
    """The header's mode wins over the mask of an access ACL among the entry's xattrs (the
    kernel keeps the two in step: the mask becomes the mode's group bits), as docker and
    containerd leave it (GNU tar: for regular files only); lamina once set the ACL after the mode on regular
    files as root and gave 0674 for 0644 (directories and other nodes were already right)."""
    modes = {"small": 0o644, "large": 0o4750, "d": 0o750, "p": 0o640}
    layer = Tar()
    for name, size in (("small", 5), ("large", 300_000)):
        layer.pax([("SCHILY.xattr.system.posix_acl_access", WIDE_ACL)])
        layer.file(name, b"x" * size, mode=modes[name], uid=1000)
    layer.pax([("SCHILY.xattr.system.posix_acl_access", WIDE_ACL)]).dir("d", mode=modes["d"])
    layer.pax([("SCHILY.xattr.system.posix_acl_access", WIDE_ACL)]).fifo("p", mode=modes["p"])
    tree, _ = agree(g, [layer], umoci=False)
    gnu = snapshot(gnu_tar_extract(write(g.dest / "layer.tar", layer.bytes()), g.dest / "gnu"))
    for name, want in modes.items():
        e = tree.entries[name]
        assert e.mode == want, f"{name}: mode {e.mode:o}, the entry says {want:o}"
        acl = dict(e.xattrs)["system.posix_acl_access"]
        assert _mask(acl) == (want >> 3) & 7
        if name in ("small", "large"):  # GNU tar sets other nodes' xattrs after their mode
            assert e.mode == gnu.entries[name].mode
            assert acl == dict(gnu.entries[name].xattrs)["system.posix_acl_access"]


@pytest.mark.parametrize("pending", [
    lambda t: t.pax({"path": ".wh.victim"}),
    lambda t: t.gnu_longname(".wh.victim"),
    lambda t: t.gnu_longlink("victim"),
], ids=["pax", "gnu-L", "gnu-K"])
def test_an_extended_header_left_pending_across_a_global_header_is_refused(g, pending):
    """``x`` (or ``L``, ``K``), then ``g``, then the entry: GNU tar and bsdtar apply the
    extended header to the entry, Go's archive/tar drops it with the global header (which
    docker and containerd then skip).  The same layer hid a file as a whiteout from one
    and showed it to the other; lamina read it as GNU tar does.  Now refused."""
    base = Tar().file("victim", b"v")
    top = Tar().file("a", b"a")
    pending(top).pax({"comment": "global"}, type=b"g").file("harmless", b"h")
    refused_everywhere(g, [base, top], "InvalidArchiveError", "global header after entry 'a'")


@pytest.mark.parametrize("pending", [
    lambda t: t.pax({"path": ".wh.victim"}),
    lambda t: t.gnu_longname(".wh.victim"),
], ids=["pax", "gnu-L"])
def test_an_extended_header_before_a_volume_label_is_refused(g, pending):
    """``x`` (or ``L``), then a GNU volume label ``V``, then the entry: GNU tar gives the
    extended header to the label (the entry stays ``harmless``), bsdtar hands it on to the
    entry (a whiteout of ``victim``); lamina read it as GNU tar.  Go-based tools refuse the
    label's type.  Refused."""
    top = Tar().file("a", b"a")
    pending(top).entry("VOLUME", b"", type=b"V", fmt="gnu").file("harmless", b"h")
    refused_everywhere(g, [Tar().file("victim", b"v"), top], "InvalidArchiveError", "before a volume label")


def test_a_volume_label_alone_is_skipped(g):
    t = Tar().entry("VOLUME", b"label data", type=b"V", fmt="gnu").file("f", b"x")
    tree, _ = agree(g, [t], umoci=False)
    assert sorted(tree.entries) == ["f"]


def test_a_global_header_before_an_extended_header_is_read(g):
    """The ordinary order (git archive: ``g`` first, then each entry's ``x``) still reads."""
    t = Tar().pax({"comment": "global"}, type=b"g").pax({"path": "long/name"}).file("short", b"x")
    tree, _ = agree(g, [t])
    assert "long/name" in tree.entries and "short" not in tree.entries


def test_gnu_sparse_name_on_an_entry_that_is_not_sparse_is_refused(g):
    """GNU.sparse.name without a sparse map: GNU tar and bsdtar rename the entry, Go's
    archive/tar keeps the header's name.  lamina kept the header's; the references
    extract another name, so a scanner and the extractor could see different files.
    Refused when the two names differ."""
    layer = Tar().pax({"GNU.sparse.name": ".wh.victim"}).file("harmless", b"x")
    raw = write(g.dest / "ref.tar", layer.bytes())
    for tool in ("gnu", "bsd"):
        extract_with(tool, raw, g.dest / tool)
        assert os.listdir(g.dest / tool) == [".wh.victim"], tool
    refused_everywhere(g, [Tar().file("victim", b"v"), layer], "InvalidArchiveError", "entry 'harmless'")


def test_gnu_sparse_name_on_an_old_gnu_sparse_entry_is_refused(g):
    """An old GNU sparse entry (type 'S', its map in the header) with a PAX GNU.sparse.name:
    GNU tar and bsdtar rename it, Go reads the old map and keeps the header's name."""
    layer = Tar().pax({"GNU.sparse.name": ".wh.victim"}).raw(sparse_old_gnu("s", 8192, [(0, b"a" * 512)]))
    refused_everywhere(g, [Tar().file("victim", b"v"), layer], "InvalidArchiveError", "entry 's'")


@pytest.mark.parametrize("key", ["GNU.sparse.size", "GNU.sparse.realsize"])
def test_a_gnu_sparse_size_on_an_old_gnu_sparse_entry_is_refused(g, key):
    """An old GNU sparse entry (its real size, 8192, in the header) with a PAX record of
    another size: bsdtar makes the file that size, Go reads the header (GNU tar fails on
    it).  lamina read it as Go."""
    layer = Tar().pax({key: "4096"}).raw(sparse_old_gnu("s", 8192, [(0, b"a" * 512)]))
    raw = write(g.dest / "ref.tar", layer.bytes())
    extract_with("bsd", raw, g.dest / "bsd")
    assert os.path.getsize(g.dest / "bsd" / "s") == 4096
    refused_everywhere(g, [layer], "InvalidArchiveError", "entry 's'")


def test_a_gnu_long_name_and_a_gnu_sparse_name_that_differ_are_refused(g):
    """A PAX 0.1 sparse entry behind a GNU long name: bsdtar names it by the long name, Go by
    GNU.sparse.name (GNU tar fails on it).  lamina read it as Go.  Refused."""
    recs = [("GNU.sparse.size", "8192"), ("GNU.sparse.numblocks", "1"), ("GNU.sparse.name", ".wh.victim"),
            ("GNU.sparse.map", "0,512")]
    layer = Tar().gnu_longname("harmless").pax(recs).file("GNUSparseFile.0/x", b"a" * 512)
    refused_everywhere(g, [Tar().file("victim", b"v"), layer], "InvalidArchiveError", "entry 'harmless'")


# GNU sparse records of one PAX header that say two things: Go's archive/tar (docker, containerd,
# umoci) takes GNU.sparse.size over GNU.sparse.realsize, the last GNU.sparse.map, the 0.0
# offset/numbytes records over a map, and a 1.0 map from the data only; bsdtar takes the last
# of size/realsize, the first map, whichever map form came first, and a 1.0 entry's map record
# over its data (GNU tar fails on most).  (records, where Go puts the data, its size)
_SPARSE_TWICE = {
    "size-and-realsize": ([("GNU.sparse.size", "8192"), ("GNU.sparse.realsize", "4096"),
                           ("GNU.sparse.numblocks", "1"), ("GNU.sparse.map", "0,5")], b"DATA!", 0, 8192),
    "map-twice": ([("GNU.sparse.size", "8192"), ("GNU.sparse.numblocks", "1"), ("GNU.sparse.map", "4096,5"),
                   ("GNU.sparse.numblocks", "1"), ("GNU.sparse.map", "0,5")], b"DATA!", 0, 8192),
    "map-then-0.0-records": ([("GNU.sparse.size", "8192"), ("GNU.sparse.numblocks", "1"), ("GNU.sparse.map", "0,5"),
                              ("GNU.sparse.offset", "4096"), ("GNU.sparse.numbytes", "5")], b"DATA!", 4096, 8192),
    "1.0-with-a-map-record": ([("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.realsize", "8192"),
                               ("GNU.sparse.map", "4096,5")], b"1\n0\n5\n".ljust(512, b"\0") + b"DATA!", 0, 8192),
}


@pytest.mark.parametrize("case", sorted(_SPARSE_TWICE))
def test_gnu_sparse_records_that_disagree_are_refused(g, case):
    """lamina read these as Go does; bsdtar extracts the same bytes at another offset of the
    file, or the file at another size (a config read by a Go-based scanner is not the one
    the container gets).  Refused, naming the entry or the record."""
    records, data, go_at, go_size = _SPARSE_TWICE[case]
    layer = Tar().pax(records).file("f", data)
    raw = write(g.dest / "ref.tar", layer.bytes())
    extract_with("bsd", raw, g.dest / "bsd", check=False)
    with open(g.dest / "bsd" / "f", "rb") as f:
        bsd = f.read()
    assert (bsd.find(b"DATA!"), len(bsd)) != (go_at, go_size), "bsdtar reads it as Go: nothing to refuse"
    refused_everywhere(g, [layer], "InvalidArchiveError", "GNU.sparse", "entry 'f'")


def test_gnu_sparse_records_given_twice_alike_are_read(g):
    recs = [("GNU.sparse.size", "8192"), ("GNU.sparse.realsize", "8192"), ("GNU.sparse.numblocks", "1"),
            ("GNU.sparse.map", "0,5"), ("GNU.sparse.map", "0,5")]
    tree, _ = agree(g, [Tar().pax(recs).file("f", b"DATA!")], umoci=False)
    assert tree.entries["f"].size == 8192


@pytest.mark.parametrize("build, tool_reads", [
    (lambda: Tar().gnu_longname(b"", nul=False).dir("etc", mode=0o777), "etc"),
    (lambda: Tar().gnu_longname(b"").file(".wh.victim"), None),
    (lambda: Tar().gnu_longlink(b"", nul=False).symlink("s", "victim"), "s"),
], ids=["L-before-a-directory", "L-before-a-whiteout", "K-before-a-symlink"])
def test_an_empty_gnu_long_name_or_link_is_refused(g, build, tool_reads):
    """A GNU long name (or link) of no bytes: Go's archive/tar (so umoci, docker, containerd)
    reads none and keeps the header's name; GNU tar substitutes "." and bsdtar skips the
    entry.  lamina read "": the root's metadata changed (mode 0777) where Go-based tools make
    ``etc``, or a whiteout refused as replacing the root."""
    from everypath import umoci_tree
    layer = build()
    if tool_reads:
        umoci = umoci_tree(g.dest, [Tar().file("victim", b"v").bytes(), layer.bytes()])
        assert tool_reads in umoci.entries, "umoci (Go) reads the header's name"
    refused_everywhere(g, [Tar().file("victim", b"v"), layer], "InvalidArchiveError", "empty GNU long")


def test_gnu_sparse_name_equal_to_the_name_is_read(g):
    t = Tar().pax({"GNU.sparse.name": "d/f"}).file("d/f", b"x")
    tree, _ = agree(g, [t])
    assert tree.entries["d/f"].size == 1


@pytest.mark.parametrize("entry", [
    lambda t, data: t.entry("d", data, size=0, type=b"5", mode=0o755),
    lambda t, data: t.entry("s", data, size=0, type=b"2", linkname="target", mode=0o777),
    lambda t, data: t.entry("h", data, size=0, type=b"1", linkname="f"),
], ids=["dir", "symlink", "hardlink"])
def test_pax_size_on_an_entry_without_data_is_ignored(g, entry):
    """PAX ``size`` on a directory, symlink or hardlink: GNU tar and Go's archive/tar give
    such entries no data whatever the size says, so the bytes after the header are the next
    header; bsdtar skips them as data.  lamina reads as GNU tar and Go (CONFORMANCE.md)."""
    hidden = Tar().file("hidden", b"HIDDEN").bytes(end=False)
    t = Tar().file("f", b"f").pax({"size": str(len(hidden))})
    entry(t, hidden)
    t.file("after", b"a")
    tree, _ = agree(g, [t])
    gnu = snapshot(gnu_tar_extract(write(g.dest / "ref.tar", t.bytes()), g.dest / "gnu"))
    assert "hidden" in tree.entries and "after" in tree.entries
    assert sorted(gnu.entries) == sorted(tree.entries)


@pytest.mark.parametrize("records", [
    [("SCHILY.xattr.security.capability", b"\x00" * 20),
     ("LIBARCHIVE.xattr.security.capability", base64.b64encode(bytes.fromhex("01000002" "00200000" + "00" * 12)))],
    [("SCHILY.xattr.user.a", b"one"), ("LIBARCHIVE.xattr.user.a", base64.b64encode(b"two"))],
    [("LIBARCHIVE.xattr.user.a%00b", base64.b64encode(b"v"))],
    [("LIBARCHIVE.xattr.", base64.b64encode(b"v"))],
    [("SCHILY.xattr.", b"v")],
    [("SCHILY.xattr.user.%C3%A9", b"one"), ("LIBARCHIVE.xattr.user.%C3%A9", base64.b64encode(b"two"))],
], ids=["schily-vs-libarchive-capability", "schily-vs-libarchive", "libarchive-%00", "libarchive-empty", "schily-empty",
        "schily-vs-libarchive-encoded-name"])
def test_xattr_records_that_disagree_or_name_nothing_are_refused(g, records):
    """Go-based tools read SCHILY.xattr only, bsdtar also LIBARCHIVE.xattr (the last one
    applies): a capability that differs between the two forms was set by lamina as bsdtar
    sets it, unseen by a Go-based scanner.  A url-encoded %00 in a LIBARCHIVE name cut the
    name at the NUL (user.a set for user.a%00b), and an empty name failed only after the
    file was written.  All refused before anything of the entry is written, naming it."""
    layer = Tar().file("before", b"b").pax(records).file("f", b"x").file("after", b"a")
    refused_everywhere(g, [layer], "InvalidArchiveError", "entry 'f'")


def test_xattr_records_of_both_forms_that_agree_are_read(g):
    """bsdtar's default: every xattr in both forms, alike."""
    layer = Tar().pax([("SCHILY.xattr.user.a", b"one"), ("LIBARCHIVE.xattr.user.a", base64.b64encode(b"one")),
                       ("LIBARCHIVE.xattr.user.b", base64.b64encode(b"two"))]).file("f", b"x")
    tree, _ = agree(g, [layer])
    assert dict(tree.entries["f"].xattrs) == {"user.a": b"one", "user.b": b"two"}


def test_xattrs_bsdtar_writes_under_encoded_names_are_set_once(g):
    """bsdtar url-encodes an xattr name that is not plain ASCII or holds a '%', '=' or space
    in both its records: SCHILY.xattr.user.%C3%A9 and LIBARCHIVE.xattr.user.%C3%A9 for user.é.
    lamina read the SCHILY one as it is and the LIBARCHIVE one decoded, and set the xattr
    twice: user.%C3%A9 and user.é (as bsdtar 3.6 does).  The twins are one xattr, now set
    once, under the SCHILY name as it is: what GNU tar (but for %25 and %3D, which it
    decodes), docker, containerd and umoci set, reading the SCHILY records alone
    (tests/CONFORMANCE.md)."""
    import tempfile
    names = {"user.\u00e9": b"one", "user.a%b": b"two", "user.sp ace=x": b"three", "user.plain": b"four"}
    with tempfile.TemporaryDirectory() as src:  # not beside g's dest, which g checks
        with open(os.path.join(src, "f"), "wb") as f:
            f.write(b"x")
        for k, v in names.items():
            os.setxattr(os.path.join(src, "f"), k, v)
        raw = subprocess.run(["bsdtar", "--xattrs", "--format", "pax", "-cf", "-", "-C", src, "f"],
                             capture_output=True, check=True).stdout
    assert b"SCHILY.xattr.user.%C3%A9=" in raw and b"LIBARCHIVE.xattr.user.%C3%A9=" in raw  # both forms
    tree, umoci = agree(g, [raw])
    want = {"user.%C3%A9": b"one", "user.a%25b": b"two", "user.sp%20ace%3Dx": b"three", "user.plain": b"four"}
    assert dict(tree.entries["f"].xattrs) == want
    assert dict(umoci.entries["f"].xattrs) == want
    gnu = snapshot(gnu_tar_extract(write(g.dest / "ref.tar", raw), g.dest / "gnu"))
    assert dict(gnu.entries["f"].xattrs) == {"user.%C3%A9": b"one", "user.a%b": b"two", "user.sp%20ace=x": b"three",
                                             "user.plain": b"four"}


@pytest.mark.parametrize("value", [b"QUJD_REVG", b"QUJD=REVG", b"QUJD!RE\nVG", b"Q"])
def test_a_libarchive_xattr_value_is_decoded_as_bsdtar_decodes_it(g, value):
    """LIBARCHIVE.xattr values are set as bsdtar sets them (Go-based tools ignore them), and
    libarchive's base64 reader ends the value at a '=' or '_' (``QUJD_REVG`` is ``ABC``),
    skips other bytes outside the alphabet and drops a last lone digit.  lamina decoded with
    Python's reader, which reads on past them: ``ABCDEF``, or refused ``Q``."""
    layer = Tar().pax([(b"LIBARCHIVE.xattr.user.k", value)]).file("f", b"x")
    raw = write(g.dest / "ref.tar", layer.bytes())
    extract_with("bsd", raw, g.dest / "bsd")
    tree, _ = agree(g, [layer], umoci=False)
    assert dict(tree.entries["f"].xattrs) == {"user.k": os.getxattr(g.dest / "bsd" / "f", "user.k")}


def test_schily_acl_records_are_not_applied(g):
    """SCHILY.acl.access / SCHILY.acl.default (star, GNU tar --acls): bsdtar as root sets them,
    GNU tar without --acls and Go-based tools do not; lamina does not (CONFORMANCE.md)."""
    layer = (Tar().pax({"SCHILY.acl.access": "user::rw-,user:1000:rwx,group::r--,mask::rwx,other::r--"})
             .file("f", b"x", mode=0o644)
             .pax({"SCHILY.acl.default": "user::rwx,group::r-x,other::r-x"}).dir("d", mode=0o755))
    tree, _ = agree(g, [layer])
    gnu = snapshot(gnu_tar_extract(write(g.dest / "ref.tar", layer.bytes()), g.dest / "gnu"))
    for name in ("f", "d"):
        assert tree.entries[name].xattrs == () and tree.entries[name].mode == gnu.entries[name].mode

def test_a_gzip_header_with_every_optional_field_is_read_everywhere(g, monkeypatch):
    """A gzip member with FEXTRA, FNAME, FCOMMENT and FHCRC (zlib's gzsetheader; gzip(1) and
    Go read it): ISA-L checked the header CRC16 over the bytes of its last read only, and
    the sniffed first bytes are a read of their own, so every path refused the layer
    ("CRC32 or length check failed")."""
    monkeypatch.setattr(ocibuild, "gz", gz_all_header_fields)
    big = bytes(range(256)) * 4000
    tree, _ = agree(g, [Tar().dir("d").file("d/f", b"x"), Tar().file("d/big", big).whiteout("d/f")])
    assert sorted(tree.entries) == ["d", "d/big"] and tree.entries["d/big"].size == len(big)


def test_a_gzip_header_checksum_that_does_not_match_is_refused(tmp_path):
    from lamina import errors
    from layerkit import apply
    blob = bytearray(gz_all_header_fields(Tar().file("f", b"x").bytes()))
    blob[33] ^= 0xFF  # the CRC16 after the 10 fixed bytes, FEXTRA (2+6), FNAME (10), FCOMMENT (10)
    with pytest.raises(errors.CompressionError, match="gzip header CRC16"):
        apply(write(tmp_path / "layer.tar.gz", bytes(blob)), tmp_path / "dest")


@pytest.mark.parametrize("target", ["f/", "f/.", "d/f/", "d/f/."])
@pytest.mark.parametrize("same_layer", [False, True], ids=["lower", "same-layer"])
def test_a_hardlink_target_with_a_trailing_slash_or_dot_names_the_file(g, target, same_layer):
    """``h`` -> ``f/`` (or ``f/.``, ``d/f/``) where ``f`` is a file: GNU tar and bsdtar fail on
    the entry (ENOTDIR), Go-based tools clean the name (filepath.Join) and link ``f``; lamina
    links it as they do, on every path (CONFORMANCE.md).  The two C readers' refusal is run
    here, so the row's columns stay true of the installed tools."""
    linked = target.split("/.")[0].rstrip("/")
    files = Tar().dir("d").file("d/f", b"x").file("f", b"y")
    layers = [files.hardlink("h", target)] if same_layer else [files, Tar().hardlink("h", target)]
    tree, oracle = agree(g, layers)
    assert tree.entries["h"].size == 1 and {"h", linked} in tree.links
    assert {"h", linked} in oracle.links, "umoci no longer links the cleaned name"
    for tool, exe, args in (("gnu", "tar", GNU_TAR_X), ("bsd", "bsdtar", BSDTAR_X)):
        dest = g.dest / f"{tool}-tree"
        dest.mkdir()
        for i, layer in enumerate(layers):   # the layers in order into one tree
            path = write(g.dest / f"{tool}-{i}.tar", layer.bytes())
            proc = subprocess.run([require_tool(exe), *args, "-xf", path, "-C", dest], capture_output=True)
        assert proc.returncode != 0 and not os.path.lexists(dest / "h") and (dest / linked).is_file(), \
            f"{exe} now links h -> {target}: CONFORMANCE.md's row is stale"


@pytest.mark.parametrize("name", ["/", "./", "//", "d/"])
def test_a_file_named_as_a_directory_with_data_names_the_entry(g, name):
    """A type '0' entry named ``/`` (or ``./``, ``d/``) with 5 bytes of data: read as a directory
    with no data, as GNU tar (but for ``/``, a file ``.`` it cannot open) and bsdtar read it, the
    data block is the next header; both skip it with an error and go on, Go's reader takes it
    as the file's data.  The bytes are no header: the entry is named and why, on every path,
    not "bad header checksum" after it."""
    layer = Tar().file(name, b"data!").file("after", b"x")
    refused_everywhere(g, [layer], "InvalidArchiveError",
                       f"entry '{name}': a file named as a directory (trailing '/') whose header gives 5 bytes")
