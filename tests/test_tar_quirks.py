"""Header quirks of other writers and readers, through every path (everypath.py) and
against GNU tar and bsdtar (tarvectors.extract_with): fields a format does not have (a v7
header's device numbers and name prefix, GNU's old sparse map outside a GNU header),
star's shorter name prefix and its SCHILY.devmajor/devminor/realsize records, a checksum
in base-256, the type flags bsdtar reads otherwise than GNU tar (Solaris ACL 'A',
multivolume 'M'), PAX records that one reader applies and another drops (NULs after
them, spaces before a key, GNU.sparse.size without a map), and a 0-byte layer blob.
What lamina chose where the readers disagree is in CONFORMANCE.md.
"""
from __future__ import annotations

import pytest

from layerkit import write
from tarbuild import Tar, header, pad, pax_records
from tarvectors import extract_with, sparse_old_gnu
from test_hostile_more import agree, refused_everywhere
from treecmp import compare, snapshot


def _with_checksum(blk):
    blk = bytearray(blk)
    blk[148:156] = b" " * 8
    blk[148:156] = b"%06o\0 " % sum(blk)
    return bytes(blk)


def as_references(g, layer):
    """lamina's tree on every path, which must be GNU tar's and bsdtar's."""
    raw = layer if isinstance(layer, bytes) else layer.bytes()
    tree, _ = agree(g, [raw], umoci=False)
    tarpath = write(g.dest / "ref.tar", raw)
    for tool in ("gnu", "bsd"):
        extract_with(tool, tarpath, g.dest / tool)
        diff = compare(snapshot(g.dest / tool), tree, labels=(tool, "lamina"))
        assert not diff, diff
    return tree


def references_refuse(g, raw):
    """GNU tar and bsdtar both fail on ``raw``."""
    tarpath = write(g.dest / "ref.tar", raw)
    for tool in ("gnu", "bsd"):
        rc, err = extract_with(tool, tarpath, g.dest / tool, check=False)
        assert rc != 0, f"{tool} read it: {err}"


class Raw:
    """Prebuilt bytes where refused_everywhere wants a Tar."""

    def __init__(self, data):
        self.data = data

    def bytes(self):
        return self.data


def test_a_header_checksum_in_base256_is_refused(g):
    """GNU tar, bsdtar and Go read the checksum field in octal only and refuse the archive;
    lamina read it as a number like any other field and extracted the entry."""
    blk = bytearray(header("f", size=1))
    blk[148:156] = b" " * 8
    blk[148:156] = b"\x80" + sum(blk).to_bytes(7, "big")
    raw = bytes(blk) + pad(b"x") + bytes(1024)
    references_refuse(g, raw)
    refused_everywhere(g, [Raw(raw)], "InvalidArchiveError", "checksum in base-256")


def test_device_numbers_of_a_v7_header_are_not_read(g):
    """A v7 header (no magic) has no device fields: GNU tar, bsdtar and Go read a device 0/0
    whatever those bytes hold.  lamina read them: a block device 1/3 where the references
    make 0/0, and a character device 1/3 where Go-based tools make 0/0, overlayfs's
    whiteout.  (GNU's magic with another version: see the tests of odd magics below.)"""
    blk = bytearray(header("dev/b", type=b"4", devmajor=1, devminor=3, mode=0o600))
    blk[257:265] = bytes(8)
    tree = as_references(g, Tar().dir("dev").raw(_with_checksum(blk)).bytes())
    assert tree.entries["dev/b"].rdev == (0, 0)


def test_a_character_device_of_a_v7_header_is_refused_as_a_whiteout(g):
    """A v7 character device is 0/0 to every reader: overlayfs's whiteout, refused as one."""
    blk = bytearray(header("c", type=b"3", devmajor=1, devminor=3))
    blk[257:265] = bytes(8)
    refused_everywhere(g, [Raw(Tar().raw(_with_checksum(blk)).bytes())], "UnsupportedEntryError", "entry 'c'")


def _star_header(name, prefix, atime):
    blk = bytearray(header(name, prefix=prefix))
    blk[476:488] = atime
    blk[488:500] = b"00000000000 "
    blk[508:512] = b"tar\0"
    return _with_checksum(blk)


def test_a_star_prefix_that_runs_into_its_atime_is_refused(g):
    """star's name prefix is 131 bytes, its atime follows.  When the prefix fills all 131,
    Go (which knows star by the "tar\\0" at 508) cuts the name there, GNU tar and bsdtar
    read on into the atime: ``.../lib`` + atime "64" was ``lib/evil.so`` to Go-based
    scanners and ``lib64/evil.so`` to lamina, GNU tar and bsdtar."""
    prefix = b"p" * 127 + b"/lib"
    full = Tar().raw(_star_header("evil.so", prefix, b"64".ljust(12, b"\0"))).raw(pad(b"")).bytes()
    tree = None
    for tool in ("gnu", "bsd"):
        extract_with(tool, write(g.dest / "ref.tar", full), g.dest / tool)
        tree = snapshot(g.dest / tool)
        assert "p" * 127 + "/lib64/evil.so" in tree.entries, tool
    refused_everywhere(g, [Raw(full)], "InvalidArchiveError", "star header")


def test_a_star_prefix_shorter_than_131_bytes_is_read(g):
    """star's own headers (prefix NUL-terminated inside its 131 bytes): every reader agrees."""
    raw = Tar().raw(_star_header("f", b"p" * 60 + b"/lib", b"14567777777 ")).bytes()
    tree = as_references(g, raw)
    assert "p" * 60 + "/lib/f" in tree.entries


def test_solaris_acl_headers_before_their_entries_are_read(g):
    """Solaris tar writes an 'A' header named as the entry that follows it, its data the
    ACL: bsdtar reads it as that entry's ACL, GNU tar extracts it as a file the entry then
    replaces; the trees agree (libarchive's test_compat_solaris_tar_acl.tar), and lamina
    does not apply the ACL (as for SCHILY.acl.*)."""
    # POSIX draft ACLs (type 01000000) of 3 entries, as the modes say (bsdtar sets them as root)
    layer = (Tar().entry("f", b"1000003\0user::rw-,group::r--,other:---\0", type=b"A").file("f", b"data", mode=0o640)
             .entry("d/", b"1000003\0user::rwx,group::r-x,other:---\0", type=b"A").dir("d", mode=0o750)
             .file("after", b"a"))
    tree = as_references(g, layer)
    assert tree.entries["f"].size == 4 and tree.entries["d"].type == "dir"


@pytest.mark.parametrize("build", [
    lambda t: t.entry(".wh.victim", b"user::rw-\0", type=b"A").file("harmless", b"h"),
    lambda t: t.entry("a", b"user::rw-\0", type=b"A").entry("a", b"user::rw-\0", type=b"A").file("a", b"h"),
    lambda t: t.pax({"path": ".wh.victim"}).entry("x", b"user::rw-\0", type=b"A").file("x", b"h"),
    lambda t: t.entry("victim", b"user::rw-\0", type=b"A"),
], ids=["other-name", "two-in-a-row", "extended-header-before", "at-the-end"])
def test_a_solaris_acl_header_not_followed_by_its_entry_is_refused(g, build):
    """An 'A' header named otherwise than the next entry is a file to GNU tar and nothing to
    bsdtar (Go-based tools refuse its type): lamina extracted it as a file, here a whiteout
    of ``victim``.  Refused, naming it."""
    refused_everywhere(g, [Tar().file("victim", b"v"), build(Tar().file("a", b"a"))],
                       "InvalidArchiveError", "Solaris ACL", "after entry 'victim'")


def test_a_multivolume_continuation_is_refused(g):
    """Type 'M' (the rest of a file begun in another volume): GNU tar refuses the entry,
    bsdtar extracts it as a file, docker and containerd refuse the type; lamina extracted
    it.  Refused."""
    raw = Tar().file("a", b"a").entry("m", b"tail of a file", type=b"M", fmt="gnu").file("b", b"b")
    refused_everywhere(g, [raw], "InvalidArchiveError", "entry 'm'")


@pytest.mark.parametrize("magic", [b"ustar\x0000", b"\0" * 8, b"ustar xx"], ids=["ustar", "v7", "gnu-magic-bad-version"])
def test_an_old_gnu_sparse_type_outside_a_gnu_header_is_a_plain_file(g, magic):
    """Type 'S' is GNU's old sparse format only in a GNU header (star's own 'S' lays its map
    out otherwise): GNU tar and bsdtar extract it as a plain file of the stored bytes (Go
    refuses the layer).  lamina read the map at the GNU offsets anyway and wrote 8192
    bytes with a hole for the references' 1024 bytes of data."""
    entry = bytearray(sparse_old_gnu("s", 8192, [(0, b"a" * 512), (4096, b"b" * 512)]))
    entry[257:265] = magic
    entry[:512] = _with_checksum(entry[:512])
    tree = as_references(g, Tar().raw(bytes(entry)).file("after", b"x"))
    assert tree.entries["s"].size == 1024 and "after" in tree.entries


@pytest.mark.parametrize("magic", [b"ustar xx", b"ustar \0\0", b"ustarXX\0"])
def test_a_name_prefix_under_a_magic_of_neither_ustar_nor_gnu_is_refused(g, magic):
    """A magic that starts "ustar" but is neither ustar's (``ustar\\0``) nor GNU's
    (``ustar  \\0``): bsdtar reads a ustar header and puts the prefix before the name
    (``x/.wh.victim``), GNU tar and Go read a v7 header without one (``.wh.victim``, a
    whiteout), as lamina did.  Refused when there is a prefix; without one all agree."""
    blk = bytearray(header(".wh.victim", prefix=b"x"))
    blk[257:265] = magic
    bad = Tar().raw(_with_checksum(blk))
    refused_everywhere(g, [Tar().file("victim", b"v"), bad], "InvalidArchiveError", "neither ustar's nor GNU tar's")


@pytest.mark.parametrize("magic", [b"ustar xx", b"ustar   "])
def test_device_numbers_under_a_magic_of_neither_ustar_nor_gnu_are_refused(g, magic):
    """The same magic on a block device 8/1: bsdtar reads the device fields, GNU tar and Go
    (and lamina, since the v7 fix) read 0/0.  Refused."""
    blk = bytearray(header("dev/b", type=b"4", devmajor=8, devminor=1))
    blk[257:265] = magic
    raw = Tar().dir("dev").raw(_with_checksum(blk)).bytes()
    tarpath = write(g.dest / "ref.tar", raw)
    rdev = {}
    for tool in ("gnu", "bsd"):
        extract_with(tool, tarpath, g.dest / tool)
        rdev[tool] = snapshot(g.dest / tool).entries["dev/b"].rdev
    assert rdev == {"gnu": (0, 0), "bsd": (8, 1)}
    refused_everywhere(g, [Raw(raw)], "InvalidArchiveError", "entry 'dev/b': device numbers")


def test_a_magic_of_neither_ustar_nor_gnu_without_a_prefix_is_read(g):
    blk = bytearray(header("f", size=1))
    blk[257:265] = b"ustar xx"
    tree = as_references(g, Tar().raw(_with_checksum(blk)).raw(pad(b"x")).bytes())
    assert tree.entries["f"].size == 1


@pytest.mark.parametrize("records,entry", [
    ({"SCHILY.devmajor": "0", "SCHILY.devminor": "0"}, lambda t: t.chardev("dev/c", 1, 3)),
    ({"SCHILY.devmajor": "1", "SCHILY.devminor": "3"}, lambda t: t.blockdev("dev/c", 7, 9)),
    ({"SCHILY.realsize": "100000"}, lambda t: t.file("dev/c", b"hello")),
    ({"SCHILY.realsize": "2"}, lambda t: t.hardlink("dev/c", "victim")),
], ids=["chardev-to-whiteout", "blockdev", "file-stretched", "hardlink-cuts-its-target"])
def test_schily_records_bsdtar_applies_over_the_header_are_refused(g, records, entry):
    """star's SCHILY.devmajor/devminor/realsize: bsdtar takes them over the header's numbers,
    GNU tar and Go ignore them; lamina ignored them.  A character device 1/3 was 0/0 to a
    libarchive-based tool (a whiteout), a 5-byte file 100000 bytes of which all but 5 are
    zeros, and a hardlink with a SCHILY.realsize cut its target.  Refused unless they say
    what the header says."""
    layer = entry(Tar().file("victim", b"hello").dir("dev").pax(records)).bytes()
    tarpath = write(g.dest / "ref.tar", layer)
    trees = {}
    for tool in ("gnu", "bsd"):
        extract_with(tool, tarpath, g.dest / tool, check=False)
        trees[tool] = snapshot(g.dest / tool)
    assert compare(trees["gnu"], trees["bsd"], labels=("gnu", "bsd"))
    refused_everywhere(g, [Raw(layer)], "InvalidArchiveError", "entry 'dev/c': SCHILY.")


def test_schily_records_that_say_what_the_header_says_are_read(g):
    layer = (Tar().dir("dev").pax({"SCHILY.devmajor": "7", "SCHILY.devminor": "9"}).blockdev("dev/b", 7, 9)
             .pax({"SCHILY.realsize": "5"}).file("f", b"hello").hardlink("h", "f"))
    tree = as_references(g, layer)
    assert tree.entries["dev/b"].rdev == (7, 9) and tree.entries["f"].size == 5


@pytest.mark.parametrize("key", ["GNU.sparse.size", "GNU.sparse.realsize"])
def test_a_gnu_sparse_size_on_an_entry_that_is_not_sparse_is_refused(g, key):
    """A GNU.sparse.size (or .realsize) record without a map or version: bsdtar makes the file
    that size, GNU tar reads a sparse map out of its data and fails, Go and lamina kept the
    5 bytes.  Refused when it is not the entry's size."""
    refused_everywhere(g, [Tar().pax({key: "100000"}).file("f", b"hello").file("after", b"a")],
                       "InvalidArchiveError", "entry 'f'")


@pytest.mark.parametrize("key", ["GNU.sparse.size", "GNU.sparse.realsize"])
def test_a_gnu_sparse_size_of_the_entrys_size_is_read(g, key):
    tree = as_references(g, Tar().pax({key: "5"}).file("f", b"hello").file("after", b"a"))
    assert tree.entries["f"].size == 5


@pytest.mark.parametrize("media", ["gzip", "zstd"])
def test_a_layer_blob_of_0_bytes_is_the_empty_layer_whatever_its_media_type(g, monkeypatch, media):
    """A 0-byte blob announced as gzip or zstd: docker and containerd sniff no compression
    and read a tar of no entries (bsdtar too; GNU tar, gzip and zstd fail on 0 bytes); lamina
    refused it ("announces gzip but the content is none").  Read as the empty layer, on
    every path (an uncompressed 0-byte layer already was)."""
    import ocibuild
    from layerkit import zst
    compress = zst if media == "zstd" else ocibuild.gz
    monkeypatch.setattr(ocibuild, "gz", lambda data: b"" if data == b"" else compress(data))
    if media == "zstd":
        monkeypatch.setattr(ocibuild, "OCI_LAYER_GZIP", "application/vnd.oci.image.layer.v1.tar+zstd")
    tree, _ = agree(g, [Tar().file("a", b"a").bytes(), b"", Tar().file("b", b"b").bytes()], umoci=False)
    assert sorted(tree.entries) == ["a", "b"]


@pytest.mark.parametrize("tail", [bytes(30), b"\0\0" + pax_records({"path": "other"})], ids=["nul-padded", "record-after-nuls"])
def test_nul_bytes_after_the_pax_records_are_refused(g, tail):
    """A PAX header whose data goes on with NULs after its records: GNU tar applies the
    records before the NULs (a whiteout ``.wh.victim``), bsdtar ignores them all (the
    entry is ``harmless``), Go refuses the header; lamina stopped at the NUL as GNU tar
    does.  No writer pads the records (none of the corpora).  Refused."""
    layer = Tar().pax(pax_records({"path": ".wh.victim"}) + tail).file("harmless", b"h")
    tarpath = write(g.dest / "ref.tar", layer.bytes())
    names = {}
    for tool in ("gnu", "bsd"):
        extract_with(tool, tarpath, g.dest / tool, check=False)
        names[tool] = sorted(snapshot(g.dest / tool).entries)
    assert names == {"gnu": [".wh.victim"], "bsd": ["harmless"]}
    refused_everywhere(g, [Tar().file("victim", b"v"), layer], "InvalidArchiveError", "NUL")


def test_a_pax_key_after_two_spaces_is_refused(g):
    """``NN  path=.wh.victim``: GNU tar skips every space after the length and renames the
    entry (a whiteout), bsdtar and Go keep the key " path", which they do not know, as
    lamina did (the entry stays ``harmless``).  Refused."""
    body = b"  path=.wh.victim\n"
    record = b"%d" % (len(body) + 2) + body
    layer = Tar().pax(record).file("harmless", b"h")
    tarpath = write(g.dest / "ref.tar", layer.bytes())
    names = {}
    for tool in ("gnu", "bsd"):
        extract_with(tool, tarpath, g.dest / tool)
        names[tool] = sorted(snapshot(g.dest / tool).entries)
    assert names == {"gnu": [".wh.victim"], "bsd": ["harmless"]}
    refused_everywhere(g, [Tar().file("victim", b"v"), layer], "InvalidArchiveError", "starts with a space")
