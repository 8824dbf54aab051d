"""Tar parser vectors: every header form lamina must read, checked against GNU tar.

Each vector is a tar built here (Python tarfile, a raw block builder, GNU tar,
bsdtar).  The oracle is GNU tar extracting the same bytes as root
(--xattrs --xattrs-include='*' --same-owner --numeric-owner -p); the two
trees are compared with treecmp (type, mode incl. setuid, uid/gid, size,
sha256, link target, rdev, xattrs, mtimes incl. directories, hardlink groups).
"""
from __future__ import annotations

import base64
import io
import os
import random
import stat
import tarfile
import urllib.parse

import pytest

import lamina
from lamina import errors
from conftest import require_root, require_tool, run
from layerkit import (OnlyRead, apply, gnu_tar_extract, gz, gz_all_header_fields, gz_multimember, sha256,
                      write, zst)
from tarbuild import B256, MTIME, Tar, tarfile_bytes, ti
from treecmp import assert_same, snapshot

pytestmark = pytest.mark.usefixtures("_root")


@pytest.fixture
def _root():
    require_root()


def rnd(n, seed=1):
    return random.Random(seed).randbytes(n)


def check_vs_gnu_tar(tmp_path, data, *, dir_mtime=True, label="", ignore=()):
    """Extract `data` with GNU tar and lamina; assert identical trees and digests."""
    tarp = write(tmp_path / "layer.tar", data)
    oracle = gnu_tar_extract(tarp, tmp_path / "oracle")
    dest = tmp_path / "lamina"
    stats = apply(tarp, dest)
    want = snapshot(oracle, dir_mtime=dir_mtime)
    got = snapshot(dest, dir_mtime=dir_mtime)
    assert_same(want, got, labels=("gnu-tar", "lamina"), context=label, ignore=ignore)
    assert stats.diff_id == sha256(data), "diff_id of a plain tar must be its sha256"
    assert stats.digest == sha256(data), "digest of a plain tar blob must be its sha256"
    assert stats.compression == "none"
    return got, stats


# ---------------------------------------------------------------------------
# Python tarfile vectors (USTAR / GNU / PAX)
# ---------------------------------------------------------------------------

USTAR_LONG = "long/" + "p" * 90 + "/" + "n" * 99        # 195 bytes: needs the ustar prefix field
LONG_DIRS = ["deep", "deep/" + "a" * 60, "deep/" + "a" * 60 + "/" + "b" * 60,
             "deep/" + "a" * 60 + "/" + "b" * 60 + "/" + "c" * 60,
             "deep/" + "a" * 60 + "/" + "b" * 60 + "/" + "c" * 60 + "/" + "d" * 60]
LONG_150 = "x" * 150                                    # > 100, single component
LONG_300 = LONG_DIRS[-1] + "/" + "e" * 50 + ".txt"      # > 255
LONG_TARGET = "../" * 10 + "t" * 250                    # symlink target > 100 (> 255)


def basic_members():
    D, R, S, H = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
    m = [
        (ti("d", D, mode=0o755), None),
        (ti("d/f", R, mode=0o644), b"hello\n"),
        (ti("d/hard", H, linkname="d/f"), None),
        (ti("d/hard2", H, linkname="d/f"), None),
        (ti("d/link", S, linkname="f", mode=0o777), None),
        (ti("abs", S, linkname="/etc/passwd", mode=0o777), None),
        (ti("dangling", S, linkname="nope/x", mode=0o777), None),
        (ti("exec", R, mode=0o755, mtime=MTIME + 1), b"#!/bin/sh\necho hi\n"),
        (ti("suid", R, mode=0o4755), b"suid\n"),
        (ti("sgid", R, mode=0o2711), b"sgid\n"),
        (ti("tmp", D, mode=0o1777), None),
        (ti("private", D, mode=0o700, uid=33, gid=33), None),
        (ti("private/owned", R, mode=0o640, uid=1000, gid=2000), b"owned\n"),
        (ti("ro", R, mode=0o400), b"read only\n"),
        (ti("empty", R, mode=0o600), b""),
        (ti("b511", R), rnd(511, 2)),
        (ti("b512", R), rnd(512, 3)),
        (ti("b513", R), rnd(513, 4)),
        (ti("big", R, mode=0o644), rnd(300_000, 5)),
        (ti("dev", D, mode=0o755), None),
        (ti("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3), None),
        (ti("dev/loop0", tarfile.BLKTYPE, mode=0o660, gid=6, devmajor=7, devminor=0), None),
        (ti("dev/fifo", tarfile.FIFOTYPE, mode=0o644), None),
        (ti("old", R, mtime=0), b"epoch\n"),
    ]
    return m


def long_members():
    D, R, S, H = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
    m = [(ti(d, D), None) for d in LONG_DIRS]
    m += [
        (ti(LONG_150, R), b"150\n"),
        (ti(LONG_300, R, mode=0o640), b"300\n"),
        (ti("longlink", S, linkname=LONG_TARGET, mode=0o777), None),
        (ti("hl-to-long", H, linkname=LONG_300), None),
        (ti(LONG_DIRS[-1] + "/" + "h" * 80, H, linkname=LONG_150), None),
    ]
    return m


def ustar_long_members():
    return [(ti("long", tarfile.DIRTYPE), None), (ti("long/" + "p" * 90, tarfile.DIRTYPE), None),
            (ti(USTAR_LONG, tarfile.REGTYPE), b"prefix\n"),
            (ti("sl-prefix", tarfile.SYMTYPE, linkname="p" * 99, mode=0o777), None)]


FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_tarfile_basic_types(tmp_path, fmt):
    members = basic_members()
    data = tarfile_bytes(members, FORMATS[fmt])
    got, stats = check_vs_gnu_tar(tmp_path, data, label=f"tarfile {fmt}")
    # independent spot checks, in case the oracle itself is off
    assert got["suid"].mode == 0o4755 and got["sgid"].mode == 0o2711 and got["tmp"].mode == 0o1777
    assert got["dev/null"].type == "chr" and got["dev/null"].rdev == (1, 3)
    assert got["dev/loop0"].type == "blk" and got["dev/loop0"].rdev == (7, 0)
    assert got["dev/fifo"].type == "fifo"
    assert got["private/owned"].uid == 1000 and got["private/owned"].gid == 2000
    assert frozenset({"d/f", "d/hard", "d/hard2"}) in got.links
    assert got["d/link"].target == "f"
    assert got["exec"].mtime == MTIME + 1
    assert stats.entries == len(members), "stats.entries must count tar entries (not extension headers)"
    assert stats.skipped == [], f"as root nothing is skipped: {stats.skipped}"
    assert stats.bytes == len(data)


def test_tarfile_ustar_prefix_field(tmp_path):
    data = tarfile_bytes(ustar_long_members(), tarfile.USTAR_FORMAT)
    # make sure tarfile really used the prefix field
    assert any(data[i + 345:i + 345 + 95] == b"long/" + b"p" * 90 for i in range(0, len(data), 512))
    got, _ = check_vs_gnu_tar(tmp_path, data)
    assert USTAR_LONG in got


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_tarfile_long_names_and_targets(tmp_path, fmt):
    data = tarfile_bytes(long_members(), FORMATS[fmt])
    marker = b"././@LongLink" if fmt == "gnu" else b"path="
    assert marker in data
    got, _ = check_vs_gnu_tar(tmp_path, data, label=fmt)
    assert got[LONG_300].sha256 is not None and got["longlink"].target == LONG_TARGET
    assert frozenset({LONG_300, "hl-to-long"}) in got.links


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_tarfile_big_ids_and_mtime(tmp_path, fmt):
    big_mtime = 8 ** 11 + 5                         # does not fit 11 octal digits
    members = [(ti("bigids", tarfile.REGTYPE, uid=3_000_000, gid=4_000_001, mtime=big_mtime), b"x\n"),
               (ti("bigdir", tarfile.DIRTYPE, uid=2_097_152, gid=2_097_153, mtime=big_mtime + 7), None)]
    data = tarfile_bytes(members, FORMATS[fmt])
    if fmt == "gnu":
        assert data[108] & 0x80 and data[136] & 0x80, "vector must use base-256 fields"
    got, _ = check_vs_gnu_tar(tmp_path, data, label=fmt)
    assert (got["bigids"].uid, got["bigids"].gid, got["bigids"].mtime) == (3_000_000, 4_000_001, big_mtime)
    assert (got["bigdir"].uid, got["bigdir"].gid) == (2_097_152, 2_097_153)


def test_tarfile_pax_fractional_mtime(tmp_path):
    members = [(ti("frac", tarfile.REGTYPE, mtime=1_600_000_000.75), b"f\n"),
               (ti("fracdir", tarfile.DIRTYPE, mtime=1_500_000_000.5), None)]
    data = tarfile_bytes(members, tarfile.PAX_FORMAT)
    assert b"mtime=1600000000.75" in data
    got, _ = check_vs_gnu_tar(tmp_path, data)
    assert got["frac"].mtime == 1_600_000_000


def test_pax_mtime_nanoseconds_match_gnu_tar(tmp_path):
    """Sub-second mtimes from PAX are restored exactly (ns), like GNU tar does."""
    t = Tar()
    t.pax({"mtime": "1600000000.123456789"}).file("ns", b"x")
    t.pax({"mtime": "1500000000.987654321"}).dir("nsdir")
    data = t.bytes()
    tarp = write(tmp_path / "l.tar", data)
    gnu_tar_extract(tarp, tmp_path / "o")
    apply(tarp, tmp_path / "l")
    for p in ("ns", "nsdir"):
        want = os.lstat(tmp_path / "o" / p).st_mtime_ns
        got = os.lstat(tmp_path / "l" / p).st_mtime_ns
        assert want in (1_600_000_000_123_456_789, 1_500_000_000_987_654_321)
        assert got == want, f"{p}: mtime_ns lamina={got} gnu-tar={want}"


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_tarfile_unicode_names(tmp_path, fmt):
    members = [(ti("ünï", tarfile.DIRTYPE), None), (ti("ünï/名前.txt", tarfile.REGTYPE), b"u\n"),
               (ti("ünï/лінк", tarfile.SYMTYPE, linkname="名前.txt", mode=0o777), None)]
    data = tarfile_bytes(members, FORMATS[fmt])
    got, _ = check_vs_gnu_tar(tmp_path, data, label=fmt)
    assert "ünï/名前.txt" in got and got["ünï/лінк"].target == "名前.txt"


def test_non_utf8_raw_name(tmp_path):
    """Names are bytes: a latin-1 byte in a ustar name is kept as-is."""
    t = Tar().file(b"caf\xe9", b"raw\n").dir(b"d\xff").file(b"d\xff/x", b"x")
    got, _ = check_vs_gnu_tar(tmp_path, t.bytes())
    assert os.fsdecode(b"caf\xe9") in got


def test_uname_gname_ignored_numeric_ids_win(tmp_path):
    """OCI layers use numeric ids: uname/gname (even existing names) must not remap."""
    members = [(ti("named", tarfile.REGTYPE, uid=1234, gid=5678, uname="root", gname="daemon"), b"n\n"),
               (ti("nobodyname", tarfile.REGTYPE, uid=42, gid=43, uname="nobody", gname="nogroup"), b"m\n")]
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        sub = tmp_path / str(fmt)
        sub.mkdir()
        got, _ = check_vs_gnu_tar(sub, tarfile_bytes(members, fmt))
        assert (got["named"].uid, got["named"].gid) == (1234, 5678)
        assert (got["nobodyname"].uid, got["nobodyname"].gid) == (42, 43)


# ---------------------------------------------------------------------------
# Raw header vectors
# ---------------------------------------------------------------------------

def test_gnu_longname_longlink_raw(tmp_path):
    long_name = "g" * 120 + "/" + "h" * 200            # 321 bytes
    long_target = "/" + "/".join(["seg" * 20] * 8)    # ~490 bytes
    t = Tar()
    t.gnu_longname("g" * 120 + "/").dir("g" * 99, fmt="gnu")
    t.gnu_longname(long_name).file("truncated-short-name", b"long\n", fmt="gnu")
    t.gnu_longname("sym-" + "s" * 150).gnu_longlink(long_target).symlink("x", "y", fmt="gnu")
    t.gnu_longname("hard-" + "k" * 150).gnu_longlink(long_name).hardlink("x", "y", fmt="gnu")
    # a longname without trailing NUL (some writers) and one padded with several NULs
    t.gnu_longname("nonul-" + "q" * 110, nul=False).file("z", b"q", fmt="gnu")
    t.entry(b"././@LongLink", b"pad-" + b"w" * 110 + b"\0\0\0\0", type=b"L", fmt="gnu")
    t.file("w", b"w", fmt="gnu")
    t.file("after", b"short names are normal again\n", fmt="gnu")
    got, _ = check_vs_gnu_tar(tmp_path, t.bytes())
    assert long_name in got and "truncated-short-name" not in got
    assert got["sym-" + "s" * 150].target == long_target
    assert frozenset({long_name, "hard-" + "k" * 150}) in got.links
    assert "nonul-" + "q" * 110 in got and "pad-" + "w" * 110 in got
    assert "after" in got and "x" not in got and "y" not in got


def test_pax_path_and_linkpath_raw(tmp_path):
    long_dir = "P" * 200
    long_name = long_dir + "/" + "Q" * 200
    t = Tar()
    t.pax({"path": long_dir}).dir("short-dir-ignored")
    t.pax({"path": long_name}).file("short-ignored", b"pax path\n")
    t.pax({"path": "sym", "linkpath": "L" * 400}).symlink("ignored", "ignored-too")
    t.pax({"path": "hard", "linkpath": long_name}).hardlink("ignored2", "nothing")
    got, _ = check_vs_gnu_tar(tmp_path, t.bytes())
    assert set(got.paths()) == {long_dir, long_name, "sym", "hard"}
    assert got["sym"].target == "L" * 400


def test_pax_records_apply_to_next_entry_only(tmp_path):
    t = Tar()
    t.pax({"path": "first-long-" + "a" * 120, "uid": "4242", "gid": "4343", "mtime": "1234567890",
           "SCHILY.xattr.user.only": "first", "uname": "x", "size": "6"}).file("first", b"first\n")
    t.file("second", b"second\n", uid=7, gid=8)
    t.dir("third")
    got, _ = check_vs_gnu_tar(tmp_path, t.bytes())
    first = got["first-long-" + "a" * 120]
    assert (first.uid, first.gid, first.mtime) == (4242, 4343, 1234567890)
    assert first.xattrs == (("user.only", b"first"),)
    s = got["second"]
    assert (s.uid, s.gid, s.mtime, s.xattrs) == (7, 8, MTIME, ()), "PAX records leaked into the next entry"
    assert got["third"].xattrs == () and got["third"].type == "dir"


def test_pax_size_overrides_header_size(tmp_path):
    body = b"the real content is longer than the header says\n"
    t = Tar()
    t.pax({"size": str(len(body))}).file("sized", body, size=3)   # ustar size field says 3
    t.file("next", b"next\n")
    got, _ = check_vs_gnu_tar(tmp_path, t.bytes())
    assert got["sized"].size == len(body) and "next" in got


def test_pax_xattrs_binary_values_and_namespaces(tmp_path):
    weird = b"va=lue\nwith\0nul and = and \xff"
    t = Tar()
    t.pax([("SCHILY.xattr.user.bin", weird), ("SCHILY.xattr.trusted.t", b"trusted-value"),
           ("SCHILY.xattr.user.empty", b"")]).file("x", b"x\n")
    t.pax([("SCHILY.xattr.user.d", b"on a dir")]).dir("d")
    t.pax([("SCHILY.xattr.trusted.sym", b"on a symlink")]).symlink("s", "x")
    got, _ = check_vs_gnu_tar(tmp_path, t.bytes())
    xa = dict(got["x"].xattrs)
    assert xa.get("user.bin") == weird and xa.get("trusted.t") == b"trusted-value"
    assert dict(got["d"].xattrs) == {"user.d": b"on a dir"}
    assert dict(got["s"].xattrs) == {"trusted.sym": b"on a symlink"}


def test_pax_overlay_xattrs_in_archive_are_dropped(tmp_path):
    """trusted.overlay.* / user.overlay.* from an archive must not be restored (contract)."""
    t = Tar()
    t.pax([("SCHILY.xattr.trusted.overlay.opaque", b"y"), ("SCHILY.xattr.user.overlay.opaque", b"y"),
           ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"), ("SCHILY.xattr.user.keep", b"1")]).dir("d")
    t.pax([("SCHILY.xattr.trusted.overlay.origin", b"zz"), ("SCHILY.xattr.user.keep", b"2")]).file("f", b"f")
    dest = tmp_path / "l"
    apply(write(tmp_path / "l.tar", t.bytes()), dest)
    got = snapshot(dest)
    assert dict(got["d"].xattrs) == {"user.keep": b"1"}
    assert dict(got["f"].xattrs) == {"user.keep": b"2"}


def _libarchive_name(n):
    return urllib.parse.quote(n, safe="")


def test_libarchive_xattr_records(tmp_path):
    """LIBARCHIVE.xattr.<urlencoded name>=<base64 value>, alone and next to SCHILY (bsdtar writes both)."""
    vals = {"user.plain": b"abc", "user.we ird%name": b"\x00\x01\x02binary", "trusted.t": b"tt"}
    t = Tar()
    t.pax([("LIBARCHIVE.xattr." + _libarchive_name(k), base64.b64encode(v).rstrip(b"="))
           for k, v in vals.items()]).file("only-libarchive", b"1")
    t.pax([("LIBARCHIVE.xattr.user.both", base64.b64encode(b"same").rstrip(b"=")),
           ("SCHILY.xattr.user.both", b"same")]).file("both", b"2")
    dest = tmp_path / "l"
    apply(write(tmp_path / "l.tar", t.bytes()), dest)
    got = snapshot(dest)
    assert dict(got["only-libarchive"].xattrs) == vals
    assert dict(got["both"].xattrs) == {"user.both": b"same"}
    # and the SCHILY-only equivalent extracted by GNU tar gives the same tree
    t2 = Tar()
    t2.pax([("SCHILY.xattr." + k, v) for k, v in vals.items()]).file("only-libarchive", b"1")
    t2.pax([("SCHILY.xattr.user.both", b"same")]).file("both", b"2")
    oracle = gnu_tar_extract(write(tmp_path / "o.tar", t2.bytes()), tmp_path / "o")
    assert_same(snapshot(oracle), got, labels=("gnu-tar(SCHILY)", "lamina(LIBARCHIVE)"))


def test_pax_global_header_like_git_archive(tmp_path):
    """git archive starts with a 'g' header holding `comment`: no pax_global_header file appears."""
    t = Tar()
    t.pax({"comment": "0123456789abcdef0123456789abcdef01234567"}, type=b"g", name="pax_global_header")
    t.dir("repo").file("repo/README", b"readme\n")
    got, stats = check_vs_gnu_tar(tmp_path, t.bytes())
    assert got.paths() == ["repo", "repo/README"]
    assert stats.entries in (2, 3)


def test_pax_global_header_values_applied_or_ignored(tmp_path):
    """A global 'g' uid/mtime record: lamina may apply it (POSIX, GNU tar) or ignore it
    (containerd, umoci), but it must not become a file, break parsing or leak a path."""
    t = Tar()
    t.pax({"uid": "777", "mtime": "1111111111"}, type=b"g", name="pax_global_header")
    t.file("a", b"a\n", uid=5, mtime=MTIME)
    t.pax({"uid": "888"}).file("b", b"b\n", uid=6, mtime=MTIME)
    dest = tmp_path / "l"
    apply(write(tmp_path / "l.tar", t.bytes()), dest)
    got = snapshot(dest)
    assert got.paths() == ["a", "b"]
    assert (got["a"].uid, got["a"].mtime) in {(777, 1111111111), (5, MTIME)}
    assert got["b"].uid == 888
    # consistency: applied to both entries or to neither
    assert (got["a"].mtime == 1111111111) == (got["b"].mtime == 1111111111)


def test_base256_negative_and_large_numbers_raw(tmp_path):
    t = Tar()
    t.file("neg-mtime", b"n", mtime=B256(-86400 * 365), fmt="gnu")
    t.file("b256-ids", b"i", uid=B256(70_000), gid=B256(2 ** 31 - 2), fmt="gnu")
    t.file("b256-size", b"sized by base-256", size=B256(len(b"sized by base-256")), fmt="gnu")
    t.file("b256-mode", b"m", mode=B256(0o640), fmt="gnu")
    got, _ = check_vs_gnu_tar(tmp_path, t.bytes())
    assert got["neg-mtime"].mtime == -86400 * 365
    assert (got["b256-ids"].uid, got["b256-ids"].gid) == (70_000, 2 ** 31 - 2)
    assert got["b256-size"].size == len(b"sized by base-256")


def test_octal_fields_with_spaces_and_nuls(tmp_path):
    """Old writers pad octal fields with leading spaces or end them with space/NUL variants."""
    t = Tar()
    t.file("spaces", b"s\n", raw={"mode": b"   644 \0", "uid": b"  1750 \0", "gid": b"     12\0",
                                  "mtime": b" 1375264201\0", "size": b"          2 "})
    t.file("no-terminator", b"nt\n", raw={"mode": b"00000755", "size": b"000000000003"})
    got, _ = check_vs_gnu_tar(tmp_path, t.bytes())
    assert got["spaces"].mode == 0o644 and got["spaces"].uid == 0o1750 and got["spaces"].gid == 0o12
    assert got["no-terminator"].mode == 0o755


def test_v7_and_old_type_flags(tmp_path):
    t = Tar()
    t.entry("v7file", b"v7\n", type=b"\0", fmt="v7")          # AREGTYPE
    t.entry("v7dir/", b"", type=b"\0", mode=0o755, fmt="v7")  # AREGTYPE + trailing slash = directory
    t.entry("contig", b"contiguous\n", type=b"7")               # CONTTYPE = regular file
    t.entry("oldgnu", b"gnu magic\n", type=b"0", fmt="gnu")
    got, _ = check_vs_gnu_tar(tmp_path, t.bytes())
    assert got["v7file"].type == "file" and got["v7dir"].type == "dir" and got["contig"].type == "file"


def test_name_normalisation(tmp_path):
    """'./x', trailing '/', '//' and '/./' inside names resolve to the same clean paths."""
    t = Tar()
    t.dir("./").dir("./d/").file("./d/a", b"a").file("d//b", b"b").file("d/./c", b"c")
    t.dir("e//").file("./e/./f", b"f")
    got, _ = check_vs_gnu_tar(tmp_path, t.bytes(), dir_mtime=False)
    assert got.paths() == ["d", "d/a", "d/b", "d/c", "e", "e/f"]


def test_bad_header_checksum_is_invalid_archive(tmp_path):
    t = Tar().file("good", b"g").file("bad", b"b", chksum=1).file("after", b"a")
    with pytest.raises(errors.InvalidArchiveError):
        apply(write(tmp_path / "l.tar", t.bytes()), tmp_path / "l")


def test_signed_header_checksum_accepted(tmp_path):
    """Some historic writers sum header bytes as signed chars; readers accept both."""
    from tarbuild import header
    hdr = bytearray(header("signed-\xe9\xe9", size=2, uname="\xe9", fmt="ustar"))
    hdr[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in hdr)
    assert signed != sum(hdr)
    hdr[148:156] = b"%06o\0 " % (signed & 0o777777)
    data = bytes(hdr) + b"ok" + b"\0" * 510 + b"\0" * 1024
    check_vs_gnu_tar(tmp_path, data)


# ---------------------------------------------------------------------------
# Archives written by GNU tar and bsdtar from a real tree
# ---------------------------------------------------------------------------

def _make_tree(root, extended):
    os.makedirs(root)
    j = lambda *p: os.path.join(root, *p)  # noqa: E731
    os.makedirs(j("etc", "conf.d"))
    with open(j("etc", "hosts"), "w") as f:
        f.write("127.0.0.1 localhost\n")
    with open(j("etc", "conf.d", "big"), "wb") as f:
        f.write(rnd(200_000, 9))
    os.link(j("etc", "hosts"), j("etc", "hosts.hard"))
    os.symlink("hosts", j("etc", "hosts.sym"))
    os.symlink("/nonexistent/abs", j("etc", "abs.sym"))
    with open(j("suid"), "w") as f:
        f.write("suid\n")
    os.chmod(j("suid"), 0o4755)
    with open(j("sgid"), "w") as f:
        f.write("sgid\n")
    os.chmod(j("sgid"), 0o2750)
    os.mkdir(j("tmp"))
    os.chmod(j("tmp"), 0o1777)
    with open(j("owned"), "w") as f:
        f.write("owned\n")
    os.chown(j("owned"), 1000, 1001)
    os.mkdir(j("dev"))
    os.mknod(j("dev", "null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(j("dev", "sda"), 0o660 | stat.S_IFBLK, os.makedev(8, 0))
    os.mkfifo(j("dev", "fifo"), 0o600)
    os.setxattr(j("etc", "hosts"), "user.color", b"blue")
    os.setxattr(j("etc", "hosts"), "trusted.secret", b"t\0t")
    os.setxattr(j("etc", "conf.d"), "user.dir", b"d")
    if extended:
        d = j("long")
        for i in range(5):
            d = os.path.join(d, chr(ord("a") + i) * 60)
        os.makedirs(d)
        with open(os.path.join(d, "f" * 100), "w") as f:
            f.write("long\n")
        os.link(os.path.join(d, "f" * 100), j("long", "hl"))
        os.symlink("t" * 200, j("long", "longtarget"))
        with open(j("bigids"), "w") as f:
            f.write("big\n")
        os.chown(j("bigids"), 3_000_000, 3_000_001)
        with open(j("frac"), "w") as f:
            f.write("frac\n")
        os.utime(j("frac"), ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    # deterministic mtimes, deepest first, symlinks without following
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in filenames + dirnames:
            p = os.path.join(dirpath, n)
            if n == "frac":
                continue
            os.utime(p, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000), follow_symlinks=False)
    os.utime(root, (1_500_000_000, 1_500_000_000))


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    require_root()
    base = tmp_path_factory.mktemp("srctrees")
    _make_tree(str(base / "basic"), False)
    _make_tree(str(base / "extended"), True)
    return base


TOOL_VECTORS = [
    # (id, tool, args, tree)
    ("gnutar-gnu", "tar", ["--format=gnu"], "extended"),
    ("gnutar-oldgnu", "tar", ["--format=oldgnu"], "extended"),
    ("gnutar-posix", "tar", ["--format=posix", "--xattrs", "--xattrs-include=*"], "extended"),
    ("gnutar-ustar", "tar", ["--format=ustar"], "basic"),
    ("bsdtar-pax", "bsdtar", ["--format=pax", "--xattrs"], "extended"),
    ("bsdtar-gnutar", "bsdtar", ["--format=gnutar"], "extended"),
    ("bsdtar-ustar", "bsdtar", ["--format=ustar"], "basic"),
]


@pytest.mark.parametrize("vid,tool,args,tree", TOOL_VECTORS, ids=[v[0] for v in TOOL_VECTORS])
def test_tool_written_archives(tmp_path, trees, vid, tool, args, tree):
    require_tool(tool)
    tarp = tmp_path / "layer.tar"
    run(tool, *args, "-cf", tarp, "-C", trees / tree, ".")
    data = tarp.read_bytes()
    got, _ = check_vs_gnu_tar(tmp_path, data, label=vid)
    assert got["suid"].mode == 0o4755 and got["dev/sda"].rdev == (8, 0)
    assert frozenset({"etc/hosts", "etc/hosts.hard"}) in got.links
    if "--xattrs" in args:
        assert dict(got["etc/hosts"].xattrs).get("user.color") == b"blue"
    if tree == "extended":
        assert got["bigids"].uid == 3_000_000 and got["long/longtarget"].target == "t" * 200


# GNU sparse files: see test_tar_conformance.py (every format, holes, hostile maps)


# ---------------------------------------------------------------------------
# Compression: gzip / zstd / plain give identical trees and digests
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_layer():
    return tarfile_bytes(basic_members() + long_members(), tarfile.PAX_FORMAT)


BLOBS = {
    "plain": lambda d: (d, "none"),
    "gzip": lambda d: (gz(d), "gzip"),
    "gzip-1": lambda d: (gz(d, 1), "gzip"),
    "gzip-multimember": lambda d: (gz_multimember(d), "gzip"),
    "gzip-header-fields": lambda d: (gz_all_header_fields(d), "gzip"),
    "zstd": lambda d: (zst(d), "zstd"),
    "zstd-nosize": lambda d: (zst(d, content_size=False), "zstd"),
    "zstd-multiframe": lambda d: (zst(d, frames=3), "zstd"),
}


@pytest.mark.parametrize("kind", sorted(BLOBS))
@pytest.mark.parametrize("how", ["str", "pathlib", "fileobj", "readonly-stream"])
def test_compression_variants_identical(tmp_path, plain_layer, kind, how):
    blob, comp = BLOBS[kind](plain_layer)
    bp = tmp_path / "blob"
    bp.write_bytes(blob)
    ref = tmp_path / "ref"
    apply(str(write(tmp_path / "plain.tar", plain_layer)), ref)
    dest = tmp_path / "dest"
    import lamina as L
    if how == "str":
        stats = L.apply_layer(str(bp), str(dest))
    elif how == "pathlib":
        stats = L.apply_layer(bp, dest)
    elif how == "fileobj":
        with open(bp, "rb") as f:
            stats = L.apply_layer(f, str(dest))
    else:
        stats = L.apply_layer(OnlyRead(blob), str(dest))
    assert_same(snapshot(ref, dir_mtime=True), snapshot(dest, dir_mtime=True),
                labels=("plain", kind), context=how)
    assert stats.diff_id == sha256(plain_layer)
    assert stats.digest == sha256(blob)
    assert stats.compression == comp
    assert stats.bytes == len(plain_layer)
    assert stats.compressed_bytes == len(blob)


@pytest.mark.parametrize("kind", ["gzip", "zstd", "plain"])
def test_correct_digests_accepted(tmp_path, plain_layer, kind):
    blob, _ = BLOBS[kind](plain_layer)
    stats = apply(write(tmp_path / "b", blob), tmp_path / "d",
                  digest=sha256(blob), diff_id=sha256(plain_layer))
    assert stats.digest == sha256(blob) and stats.diff_id == sha256(plain_layer)


def test_empty_layer(tmp_path):
    """Docker's empty layer: gzip of 1024 zero bytes."""
    data = b"\0" * 1024
    stats = apply(write(tmp_path / "e", gz(data)), tmp_path / "d", diff_id=sha256(data))
    assert os.listdir(tmp_path / "d") == []
    assert stats.entries == 0


def test_record_padding_after_end_of_archive(tmp_path):
    """GNU tar pads to a 10240-byte record: zeros after the two end blocks are fine."""
    t = Tar().file("a", b"a\n").bytes()
    data = t + b"\0" * (10240 - len(t) % 10240)
    stats = apply(write(tmp_path / "p.tar", data), tmp_path / "d", diff_id=sha256(data))
    assert os.listdir(tmp_path / "d") == ["a"]
    assert stats.bytes == len(data)


def test_apply_creates_missing_dest(tmp_path):
    dest = tmp_path / "not" / "there"
    apply(write(tmp_path / "l.tar", Tar().file("a", b"a").bytes()), dest)
    assert (dest / "a").read_bytes() == b"a"
