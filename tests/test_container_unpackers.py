"""The crafted cases of the container projects' own unpacker tests, on every path.

umoci's ``oci/layer/tar_extract_test.go`` (its Debian source package: TestUnpackOpaqueWhiteout,
TestUnpackHardlink, TestUnpackEntryWhiteout, the scoping tests), containerd's ``archive/tar_test.go`` (TestBreakouts, TestApplyTar), moby's
``pkg/archive`` (TestUntarInvalidFilenames, TestUntarHardlinkToSymlink,
TestUntarInvalidHardlink, TestUntarInvalidSymlink, TestXGlobalNoParent,
TestPrefixHeaderReadable) and containers/storage's copy of it (the same cases) build
their archives in Go; each is rebuilt here with tarbuild (tartest's ``Symlink(target,
name)`` and ``Link(target, name)`` keep their argument order below) and run through
every path (everypath.run_paths), with what that project's test expects: a breakout
refused or kept inside the root, and nothing written outside it (the ``g`` guard, and a
``victim`` directory beside the roots as moby's tests place it).  Where lamina reads a
case otherwise than the project, CONFORMANCE.md says so.

Cases whose layers cannot disturb each other share one image (each under names of its
own, ``etc-N`` for containerd's ``etc``), to keep the suite's time down.
"""
from __future__ import annotations

import os

import pytest

from everypath import assert_agree, describe, run_paths, umoci_tree
from layerkit import gnu_tar_extract, write
from ocibuild import Shipped
from tarbuild import Tar
from treecmp import compare, snapshot
from test_hostile_more import refused_everywhere

CONTENT = b"This is an expected value\n"  # containerd's unbrokenCheck value


# --- containerd TestBreakouts / TestApplyTar ---------------------------------------------
# (name, lower layer or None, layer, check(tree, etc, localetc)); every name below is
# rewritten per case (etc -> etc-N ...), absolute ones included, so the cases share an image.

def _same(tree, a, b):
    assert any({a, b} <= group for group in tree.links), f"{a} and {b} are not one file"


def _unbroken(tree, n):
    assert tree[f"etc-{n}/unbroken"].type == "file" and tree[f"etc-{n}/unbroken"].size == len(CONTENT)


def _containerd_cases():
    cases = []

    def case(name, lower, layer, check):
        cases.append((name, lower, layer, check))

    # names: E=etc, L=localetc, D=dummy, B=breakouts, O=downandout, P=localpasswd
    def N(n):
        return dict(E=f"etc-{n}", L=f"localetc-{n}", D=f"dummy-{n}", B=f"breakouts-{n}",
                    O=f"downandout-{n}", P=f"localpasswd-{n}", W=f"passwdlink-{n}")

    n = 0
    n += 1; k = N(n)
    case("SymlinkAbsolute", None,
         Tar().dir(k["E"]).symlink(k["L"], f"/{k['E']}").file(f"/{k['L']}/unbroken", CONTENT),
         lambda t, n=n: _unbroken(t, n))
    n += 1; k = N(n)
    case("SymlinkUpAndOut", None,
         Tar().dir(k["E"]).dir(k["D"]).symlink(k["L"], f"/{k['D']}/../{k['E']}")
         .file(f"/{k['L']}/unbroken", CONTENT), lambda t, n=n: _unbroken(t, n))
    n += 1; k = N(n)
    case("SymlinkMultipleAbsolute", None,
         Tar().dir(k["E"]).dir(k["D"]).symlink(f"/{k['D']}/etc", f"/{k['E']}")
         .symlink(k["L"], f"/{k['D']}/etc").file(f"/{k['D']}/etc/unbroken", CONTENT),
         lambda t, n=n: _unbroken(t, n))
    n += 1; k = N(n)
    case("SymlinkMultipleRelative", None,
         Tar().dir(k["E"]).dir(k["D"]).symlink(f"/{k['D']}/etc", f"/{k['E']}")
         .symlink(k["L"], f"./{k['D']}/etc").file(f"/{k['D']}/etc/unbroken", CONTENT),
         lambda t, n=n: _unbroken(t, n))
    n += 1; k = N(n)

    def emptied(t, E=k["E"]):
        assert t[f"{E}/emptied"].size == 0
    case("SymlinkEmptyFile", None,
         Tar().dir(k["E"]).file(f"{k['E']}/emptied", b"notempty").symlink(k["L"], f"/{k['E']}")
         .file(f"/{k['L']}/emptied", b""), emptied)
    n += 1; k = N(n)
    case("HardlinkRelative", None,
         Tar().dir(k["E"], mode=0o770).file(f"/{k['E']}/passwd", b"inside").dir(k["B"])
         .symlink(f"{k['B']}/d1", f"../../{k['E']}").hardlink(f"{k['B']}/mypasswd", f"/{k['B']}/d1/passwd"),
         lambda t, k=k: _same(t, f"{k['B']}/mypasswd", f"{k['E']}/passwd"))
    n += 1; k = N(n)
    case("HardlinkDownAndOut", None,
         Tar().dir(k["E"], mode=0o770).file(f"/{k['E']}/passwd", b"inside").dir(k["B"]).dir(k["O"])
         .symlink(f"{k['B']}/d1", f"../{k['O']}/../../{k['E']}")
         .hardlink(f"{k['B']}/mypasswd", f"/{k['B']}/d1/passwd"),
         lambda t, k=k: _same(t, f"{k['B']}/mypasswd", f"{k['E']}/passwd"))
    # HardlinkRelativeUpAndOut (a link through "upandout/../../../etc", no upandout): its own test
    for name, target in (("HardlinkAbsolute", "/{E}"), ("HardlinkRelativeLong", "../../../../../../../{E}")):
        n += 1; k = N(n)
        case(name, None,
             Tar().dir(k["E"], mode=0o770).file(f"/{k['E']}/passwd", b"inside")
             .symlink(k["L"], target.format(**k)).hardlink(k["P"], f"/{k['L']}/passwd"),
             lambda t, k=k: _same(t, k["P"], f"{k['E']}/passwd"))
    for name, target in (("HardlinkDirectRelative", "../../../../../{E}/passwd"),
                         ("HardlinkDirectAbsolute", "/{E}/passwd")):
        n += 1; k = N(n)
        case(name, None,
             Tar().dir(k["E"], mode=0o770).file(f"/{k['E']}/passwd", b"inside").hardlink(k["P"], target.format(**k)),
             lambda t, k=k: _same(t, k["P"], f"{k['E']}/passwd"))
    n += 1; k = N(n)

    def symlink_linked(t, k=k):
        # a hardlink to a symlink links the symlink (containerd's check stats through it)
        assert t[k["P"] + "-dup"].type == "symlink" and t[k["P"] + "-dup"].target == f"/{k['E']}/passwd"
        _same(t, k["P"] + "-dup", k["P"])
        assert t[f"{k['E']}/passwd"].size == len(b"after")
    case("HardlinkSymlinkBeforeCreateTarget", None,
         Tar().dir(k["E"], mode=0o770).symlink(k["P"], f"/{k['E']}/passwd").hardlink(k["P"] + "-dup", k["P"])
         .file(f"/{k['E']}/passwd", b"after"), symlink_linked)
    for name, target in (("HardlinkSymlinkRelative", "../../../../../{E}/passwd"),
                         ("HardlinkSymlinkAbsolute", "/{E}/passwd")):
        n += 1; k = N(n)

        def linked_symlink(t, k=k, target=target.format(**k)):
            assert t[k["P"]].type == "symlink" and t[k["P"]].target == target
            _same(t, k["P"], k["W"])
        case(name, None,
             Tar().dir(k["E"], mode=0o770).file(f"/{k['E']}/passwd", b"inside")
             .symlink(k["W"], target.format(**k)).hardlink(k["P"], f"/{k['W']}"), linked_symlink)
    n += 1; k = N(n)
    case("SymlinkSlashEnded", None,
         Tar().dir(k["E"], mode=0o770).file(f"/{k['E']}/passwd", b"inside").dir(k["L"] + "/", mode=0o770)
         .hardlink(f"/{k['L']}/{k['P']}", f"/{k['E']}/passwd"),
         lambda t, k=k: _same(t, f"{k['L']}/{k['P']}", f"{k['E']}/passwd"))
    for name, target in (("SymlinkOverrideDirectory", "/{E}"), ("SymlinkOverrideDirectoryRelative", "../../{E}")):
        n += 1; k = N(n)

        def overridden(t, k=k):
            # the symlink replaced the lower (empty) directory; the link went through it
            assert t[k["L"]].type == "symlink"
            _same(t, f"{k['E']}/{k['P']}", f"{k['E']}/passwd")
        case(name, Tar().dir(k["E"]).file(f"{k['E']}/passwd", b"inside").dir(k["L"]),
             Tar().symlink(k["L"], target.format(**k)).hardlink(f"/{k['L']}/{k['P']}", f"/{k['E']}/passwd"),
             overridden)
    n += 1; k = N(n)

    def dir_over_symlink(t, k=k):
        assert t[k["L"]].type == "dir"
        _same(t, f"{k['L']}/{k['P']}", f"{k['E']}/passwd")
    case("DirectoryOverrideSymlink",
         Tar().dir(k["E"]).file(f"{k['E']}/passwd", b"inside").symlink(k["L"], f"/{k['E']}"),
         Tar().dir(k["L"] + "/").hardlink(f"/{k['L']}/{k['P']}", f"/{k['E']}/passwd"), dir_over_symlink)
    n += 1; k = N(n)

    def dir_over_symlink_and_link(t, k=k):
        assert t[k["L"]].type == "dir" and t[f"{k['E']}/passwd"].size == len(b"inside")
        assert t[f"{k['L']}/{k['P']}"].size == len(b"different")
    case("DirectoryOverrideSymlinkAndHardlink",
         Tar().dir(k["E"]).file(f"{k['E']}/passwd", b"inside").symlink(k["L"], k["E"]),
         Tar().dir(k["L"] + "/").file(f"/{k['L']}/{k['P']}", b"different"), dir_over_symlink_and_link)
    n += 1; k = N(n)

    def whiteout_symlink(t, k=k):
        assert k["L"] not in t and t[f"{k['E']}/passwd"].size == len(b"all users")
    case("WhiteoutSymlink",
         Tar().dir(k["E"]).file(f"{k['E']}/passwd", b"all users").symlink(k["L"], f"/{k['E']}"),
         Tar().whiteout(k["L"]), whiteout_symlink)
    n += 1; k = N(n)

    def whiteout_symlink_path(t, k=k):
        # containerd follows the link (its TODO: "should change"); lamina follows it too
        assert f"{k['E']}/whitedout" not in t and t[f"{k['E']}/passwd"].size == len(b"all users")
    case("WhiteoutSymlinkPath",
         Tar().dir(k["E"]).file(f"{k['E']}/passwd", b"all users").file(f"{k['E']}/whitedout", b"ahhhh")
         .symlink(k["L"], f"/{k['E']}"),
         Tar().whiteout(f"{k['L']}/whitedout"), whiteout_symlink_path)
    n += 1; k = N(n)

    # WhiteoutDirectoryName ('.wh.etc/somefile'): refused, its own test
    def dead_symlink_parent(t, k=k):
        assert t[f"{k['E']}/passwd"].size == len(b"all users")
    case("WhiteoutDeadSymlinkParent",
         Tar().dir(k["E"]).file(f"{k['E']}/passwd", b"all users").symlink(k["L"], f"/dne-{n}"),
         Tar().whiteout(f"{k['L']}/{k['E']}"), dead_symlink_parent)
    n += 1; k = N(n)

    def relative_path(t, k=k):
        assert k["E"] not in t
    case("WhiteoutRelativePath",
         Tar().dir(k["E"]).file(f"{k['E']}/passwd", b"all users").symlink(k["L"], f"/dne-{n}"),
         Tar().whiteout(f"dne-{n}/../{k['E']}"), relative_path)
    n += 1; k = N(n)

    def created(t, k=k):
        for d in (f"{k['E']}/subdir", f"{k['E']}/subdir2", f"{k['E']}/subdir2/more",
                  f"{k['D']}/noparent-1/1", f"{k['D']}/noparent-2/2"):
            assert t[d].type == "dir", d
    case("TestApplyTar/DirectoryCreation", Tar().dir(k["E"]),
         Tar().dir(f"/{k['E']}/subdir").dir(f"/{k['E']}/subdir2/").dir(f"/{k['E']}/subdir2/more")
         .dir(f"/{k['D']}/noparent-1/1").dir(f"/{k['D']}/noparent-2/2/"), created)
    return cases


CONTAINERD = _containerd_cases()


def test_containerd_breakouts_stay_inside_on_every_path(g):
    """TestBreakouts' cases that containerd applies (and TestApplyTar's), all in one image:
    every one kept inside the root, the tree it checks, the same on every path."""
    lower = Tar()
    upper = Tar()
    for _, lo, up, _ in CONTAINERD:
        if lo is not None:
            lower.raw(lo.buf.getvalue())
        upper.raw(up.buf.getvalue())
    raws = [lower.bytes(), upper.bytes()]
    results = run_paths(g.dest, raws)
    results["umoci"] = umoci_tree(g.dest, raws)
    tree = assert_agree(results, context=describe(raws))
    assert tree is not None, f"refused on every path: {next(iter(results.values()))!r}"
    for name, _, _, check in CONTAINERD:
        try:
            check(tree)
        except (AssertionError, KeyError) as e:
            raise AssertionError(f"containerd's {name}: {e!r}") from e


def _host_link_case(g):
    """containerd's HardlinkSymlinkChmod: a symlink named by a host path to another host
    file, and a hardlink to it: nothing outside may change mode (the guard checks)."""
    ep = str(g.sentinel / "secret") + "-also-exists-outside-root"
    return (Tar().pax({"path": ep, "linkpath": str(g.sentinel / "secret")}).symlink("ep", "secret")
            .pax({"linkpath": ep}).hardlink("sketchylink", "ep", mode=0o644))


# --- moby pkg/archive (containers/storage's copy has the same cases) ---------------------
# Each of its archives on its own; the accepted ones share an image under a suffix per case.

MOBY_ACCEPTED = {  # name -> (layer, check(tree, suffix))
    "TestUntarInvalidFilenames/0": (lambda s: Tar().file(f"../victim/dotdot{s}"),
                                    lambda t, s: t[f"victim/dotdot{s}"].type == "file"),
    "TestUntarInvalidFilenames/1": (lambda s: Tar().file(f"/../victim/slash-dotdot{s}"),
                                    lambda t, s: t[f"victim/slash-dotdot{s}"].type == "file"),
    "TestUntarHardlinkToSymlink": (
        lambda s: Tar().symlink(f"symlink1{s}", f"regfile{s}").hardlink(f"symlink2{s}", f"symlink1{s}")
        .file(f"regfile{s}"),
        lambda t, s: t[f"symlink2{s}"].type == "symlink" and t[f"symlink2{s}"].target == f"regfile{s}"),
    "TestUntarInvalidSymlink/0": (lambda s: Tar().symlink(f"dotdot{s}", "../victim/hello"),
                                  lambda t, s: t[f"dotdot{s}"].target == "../victim/hello"),
    "TestUntarInvalidSymlink/1": (lambda s: Tar().symlink(f"slash-dotdot{s}", "/../victim/hello"),
                                  lambda t, s: t[f"slash-dotdot{s}"].target == "/../victim/hello"),
    # a link to a missing target, and a link through it: both kept as links, read inside
    "TestUntarInvalidSymlink/3": (
        lambda s: Tar().symlink(f"loophole-victim{s}", "../victim").symlink(f"symlink{s}", f"loophole-victim{s}/hello"),
        lambda t, s: t[f"symlink{s}"].target == f"loophole-victim{s}/hello"),
    # the symlink replaced by the file, not the directory it names
    "TestUntarInvalidSymlink/5": (lambda s: Tar().symlink(f"loophole-victim{s}", "../victim").file(f"loophole-victim{s}"),
                                  lambda t, s: t[f"loophole-victim{s}"].type == "file"),
    "TestXGlobalNoParent": (lambda s: Tar().pax({"comment": "g"}, type=b"g", name=f"foo{s}/bar").file(f"f{s}"),
                            lambda t, s: f"foo{s}" not in t),
}

# moby refuses these ("breakout") or writes inside; lamina refuses them, on every path:
# each names a target outside the root that the root does not hold (name -> layer, words)
NOT_FOUND, DANGLING = "not found in the layer or below", "goes through a dangling symlink"
MOBY_REFUSED = {
    "TestUntarInvalidHardlink/0": (Tar().hardlink("dotdot", "../victim/hello"), NOT_FOUND),
    "TestUntarInvalidHardlink/1": (Tar().hardlink("slash-dotdot", "/../victim/hello"), NOT_FOUND),
    "TestUntarInvalidHardlink/2": (Tar().hardlink("loophole-victim", "../victim", mode=0o755)
                                   .file("loophole-victim/file"), NOT_FOUND),
    "TestUntarInvalidHardlink/5": (Tar().hardlink("loophole-victim", "../victim", mode=0o755)
                                   .file("loophole-victim"), NOT_FOUND),
    "TestUntarInvalidSymlink/2": (Tar().symlink("loophole-victim", "../victim").file("loophole-victim/file"),
                                  f"'loophole-victim' {DANGLING}"),
    "TestUntarInvalidSymlink/4": (Tar().symlink("loophole-victim", "../victim")
                                  .hardlink("hardlink", "loophole-victim/hello"),
                                  f"entry 'hardlink': hardlink target 'loophole-victim/hello': 'loophole-victim' {DANGLING}"),
    "TestUntarInvalidSymlink/6": (Tar().symlink("dir/loophole", "../../victim").file("dir/loophole/newdir/newfile"),
                                  f"'dir/loophole/newdir' {DANGLING}"),
}

# containerd's cases lamina reads otherwise (CONFORMANCE.md): (lower, layer, error class, words)
ETC = Tar().dir("etc").file("etc/passwd", b"inside")
CONTAINERD_REFUSED = {
    # containerd cleans "upandout/../../../etc" lexically; the kernel (and GNU tar) need
    # upandout to exist, so in the image /localetc leads nowhere
    "HardlinkRelativeUpAndOut": (None, Tar().dir("etc").file("etc/passwd", b"inside")
                                 .symlink("localetc", "upandout/../../../etc").hardlink("lp", "/localetc/passwd"),
                                 "ExtractError", f"entry 'lp': hardlink target '/localetc/passwd': 'localetc' {DANGLING}"),
    # containerd extracts '.wh.etc/somefile'; a '.wh.' directory is no path of an image
    "WhiteoutDirectoryName": (ETC, Tar().file(".wh.etc/somefile", b"non-empty"),
                              "InvalidWhiteoutError", "whiteout-named directory in path"),
    # containerd skips an entry that resolves to the root; lamina refuses to replace it
    "SymlinkParentDirectory": (None, Tar().dir("etc").symlink("..", "/etc/"),
                               "UnsafeEntryError", "refusing to replace the root directory"),
    "SymlinkEmptyFilename": (None, Tar().dir("etc").symlink("", "/etc/"),
                             "UnsafeEntryError", "refusing to replace the root directory"),
    # containerd: errInvalidArchive, as here
    "WhiteoutRootParent": (ETC, Tar().file(".wh..."), "InvalidWhiteoutError", "does not name an entry"),
    "WhiteoutParent": (ETC, Tar().file("etc/.wh..."), "InvalidWhiteoutError", "does not name an entry"),
    "WhiteoutRoot": (ETC, Tar().file(".wh.."), "InvalidWhiteoutError", "does not name an entry"),
    "WhiteoutCurrentDirectory": (ETC, Tar().file("etc/.wh.."), "InvalidWhiteoutError", "does not name an entry"),
}


def _victim(g):
    """moby's victim directory, beside the roots (``../victim`` of the dir path's root)."""
    v = g.dest / "victim"
    v.mkdir(parents=True, exist_ok=True)
    (v / "hello").write_bytes(b"hello")
    return v


def _victim_untouched(v):
    assert sorted(os.listdir(v)) == ["hello"] and (v / "hello").read_bytes() == b"hello"


def test_moby_breakouts_stay_inside_on_every_path(g):
    victim = _victim(g)
    layer = Tar()
    for i, (make, _) in enumerate(MOBY_ACCEPTED.values()):
        layer.raw(make(f"-{i}").buf.getvalue())
    layer.raw(_host_link_case(g).buf.getvalue())
    raws = [layer.bytes()]
    results = run_paths(g.dest, raws)
    tree = assert_agree(results, context=describe(raws))
    assert tree is not None, f"refused on every path: {next(iter(results.values()))!r}"
    for i, (name, (_, check)) in enumerate(MOBY_ACCEPTED.items()):
        assert check(tree, f"-{i}"), f"moby's {name}"
    assert tree["sketchylink"].type == "symlink"  # containerd's HardlinkSymlinkChmod
    _victim_untouched(victim)


@pytest.mark.parametrize("case", sorted(MOBY_REFUSED))
def test_moby_breakouts_refused_on_every_path(g, case):
    victim = _victim(g)
    layer, words = MOBY_REFUSED[case]
    refused_everywhere(g, [layer], "LaminaError", *((words,) if isinstance(words, str) else words))
    _victim_untouched(victim)


@pytest.mark.parametrize("case", sorted(CONTAINERD_REFUSED))
def test_containerd_cases_lamina_refuses(g, case):
    lower, layer, cls, words = CONTAINERD_REFUSED[case]
    refused_everywhere(g, ([lower] if lower is not None else []) + [layer], cls, words)


# --- containers/storage pkg/archive: its cases beyond moby's ------------------------------

def test_containers_storage_nested_overlay_whiteouts(g):
    """TestNestedOverlayWhiteouts: ``.wh.foo`` then ``foo/.wh.bar`` in one layer: foo stays
    deleted (containers/storage leaves one whiteout node for foo), on every path and in umoci."""
    raws = [Tar().dir("foo").file("foo/bar", b"b").file("foo/baz", b"z").bytes(),
            Tar().whiteout("foo").whiteout("foo/bar").bytes()]
    results = run_paths(g.dest, raws)
    results["umoci"] = umoci_tree(g.dest, raws)
    tree = assert_agree(results, context=describe(raws))
    assert tree is not None and tree.entries == {}


def test_containers_storage_untar_selinux_label(g):
    """TestUntarSelinuxLabel: a ``security.selinux`` record the host may not know is no
    reason to fail the layer; lamina sets it as it sets any xattr, on every path."""
    raws = [Tar().pax({"SCHILY.xattr.security.selinux": "invalid-label"}).file("foo", b"x").bytes()]
    tree = assert_agree(run_paths(g.dest, raws), context=describe(raws))
    assert tree is not None and tree["foo"].type == "file"


# --- umoci oci/layer/tar_extract_test.go ------------------------------------------------
# TestUnpackOpaqueWhiteout: (path, link target, type, in the upper layer); the lower layer
# holds the others, under test-subdir, and the upper one ends with test-subdir's opaque
# marker: what the upper layer lists stays (even a name it also whites out: a whiteout
# applies to the layers below only), what only the lower one lists goes.
UMOCI_OPAQUE = {
    "OneLevel": [("file", "", b"0", False), ("link", "..", b"2", True), ("badlink", "./nothing", b"2", True),
                 ("fifo", "", b"6", False)],
    "TwoLevel": [("file", "", b"0", True), ("link", "..", b"2", False), ("badlink", "./nothing", b"2", False),
                 ("dir", "", b"5", True), ("dir/file", "", b"\0", True), ("dir/link", "../badlink", b"2", False),
                 ("dir/verybadlink", "../" * 12 + "etc/shadow", b"2", True),
                 ("dir/verybadlink2", "/" + "../" * 12 + "etc/shadow", b"2", False)],
    "MultiLevel": [("level1_file", "", b"0", True), ("level1_link", "..", b"2", False),
                   ("level1a", "", b"5", True), ("level1a/level2_file", "", b"\0", False),
                   ("level1a/level2_link", "../../../", b"2", True), ("level1a/level2a", "", b"5", False),
                   ("level1a/level2a/level3_fileA", "", b"0", False), ("level1a/level2b", "", b"5", True),
                   ("level1a/level2b/level3_fileA", "", b"0", True), ("level1a/level2b/level3_fileB", "", b"0", False),
                   ("level1a/level2b/level3", "", b"5", False), ("level1a/level2b/level3/level4", "", b"5", False),
                   ("level1b", "", b"5", False), ("level1b/level2/level3_file", "", b"0", False)],
    "UpperWhiteout": [(".wh.fileB", "", b"0", True), ("fileA", "", b"0", True), ("fileB", "", b"0", True),
                      ("fileC", "", b"0", False), (".wh.fileA", "", b"0", True), (".wh.fileC", "", b"0", True)],
    "UpperDirWhiteout": [(".wh.dir2", "", b"0", True), ("file", "", b"0", False), ("dir1", "", b"5", True),
                         ("dir1/file", "", b"\0", True), ("dir1/link", "../badlink", b"2", False),
                         ("dir1/verybadlink", "../" * 12 + "etc/shadow", b"2", True), (".wh.dir1", "", b"0", True),
                         ("dir2", "", b"5", True), ("dir2/file", "", b"\0", True), ("dir2/link", "../badlink", b"2", False)],
}


def _umoci_entry(tar, path, link, tf):
    data = b"" if tf in (b"2", b"5", b"6") else bytes(range(256)) * 4
    return tar.entry(path, data, type=tf, linkname=link, mode=0o777)


def test_umoci_opaque_whiteouts_keep_the_layers_own_entries(g):
    lower, upper = Tar(), Tar()
    for name, entries in UMOCI_OPAQUE.items():
        for path, link, tf, up in entries:
            _umoci_entry(upper if up else lower, f"{name}/{path}", link, tf)
        upper.opaque(name)
    raws = [lower.bytes(), upper.bytes()]
    results = run_paths(g.dest, raws)
    results["umoci"] = umoci_tree(g.dest, raws)
    tree = assert_agree(results, context=describe(raws))
    assert tree is not None, f"refused on every path: {next(iter(results.values()))!r}"
    for name, entries in UMOCI_OPAQUE.items():
        for path, _, _, up in entries:
            if not path.rpartition("/")[2].startswith(".wh."):
                assert (f"{name}/{path}" in tree) == up, f"umoci's {name}: {path}"


def test_umoci_hardlinks_to_a_file_and_to_a_symlink(g):
    """TestUnpackHardlink: a link to ``/regular`` and one to ``../../../link`` (a symlink): the
    second links the symlink itself; the links' own uid/gid are not applied."""
    layer = (Tar().file("regular", b"some content we won't check", uid=7, gid=8)
             .hardlink("hard link", "/regular", uid=7 + 1337, gid=8 + 2020)
             .symlink("link", "../../../regular", uid=7, gid=8)
             .hardlink("hard link to symlink", "../../../link", uid=7 + 1337, gid=8 + 2020))
    raws = [layer.bytes()]
    results = run_paths(g.dest, raws)
    results["umoci"] = umoci_tree(g.dest, raws)
    tree = assert_agree(results, context=describe(raws))
    _same(tree, "hard link", "regular")
    _same(tree, "hard link to symlink", "link")
    assert (tree["regular"].uid, tree["regular"].gid, tree["link"].uid) == (7, 8, 7)
    assert tree["hard link to symlink"].target == "../../../regular"


@pytest.mark.parametrize("prefix", ["/..", "..", "/../../../../../../../../../../../../../../../",
                                    "/./.././.././.././.././.././.././.././.././../"])
def test_umoci_entry_scoping(g, prefix):
    """TestUnpackEntrySanitiseScoping / TestUnpackEntrySymlinkScoping: ``PREFIX/file`` and a
    symlink ``link -> PREFIX`` with ``link/file`` land inside the root."""
    layer = Tar().file(f"{prefix}/file", b"a").symlink("link", prefix).file("link/file2", b"b")
    raws = [layer.bytes()]
    results = run_paths(g.dest, raws)
    results["umoci"] = umoci_tree(g.dest, raws)
    tree = assert_agree(results, context=describe(raws))
    assert tree["file"].size == 1 and tree["file2"].size == 1


# moby's and containerd's TestPrefixHeaderReadable, byte for byte: a tar a Go <= 1.8 writer made,
# GNU magic with a ustar prefix ('a' * 97) where GNU keeps atime and ctime, gzipped with FNAME
PREFIX_HEADER_TGZ = (
    b"\x1f\x8b\x08\x08\x44\x21\x68\x59\x00\x03\x74\x2e\x74\x61\x72\x00\x4b\xcb\xcf\x67\xa0\x35\x30\x80"
    b"\x00\x86\x06\x10\x47\x01\xc1\x37\x40\x00\x54\xb6\xb1\xa1\xa9\x99\x09\x48\x25\x1d\x40\x69\x71"
    b"\x49\x62\x91\x02\xe5\x76\xa1\x79\x84\x21\x91\xd6\x80\x72\xaf\x8f\x82\x51\x30\x0a\x46\x36\x00"
    b"\x00\xf0\x1c\x1e\x95\x00\x06\x00\x00")


def test_go17_prefix_header_reads_as_the_container_runtimes_read_it(g):
    """moby and containerd expect 'aaa...a/foo': Go's reader takes the atime/ctime bytes that do
    not parse as numbers for a ustar prefix, and so does lamina, on every path, as umoci does;
    GNU tar and bsdtar read 'foo' (CONFORMANCE.md, the Go 1.7 row)."""
    import gzip
    tar = gzip.decompress(PREFIX_HEADER_TGZ)
    results = run_paths(g.dest, [Shipped(PREFIX_HEADER_TGZ, tar)])
    results["umoci"] = umoci_tree(g.dest, [tar])
    tree = assert_agree(results)
    assert tree is not None, f"refused on every path: {next(iter(results.values()))!r}"
    assert sorted(tree.entries) == ["a" * 97, "a" * 97 + "/foo"]
    gnu = snapshot(gnu_tar_extract(write(g.dest / "ref.tar", tar), g.dest / "gnu"))
    assert sorted(gnu.entries) == ["foo"]  # the documented difference


# The edges of Go's heuristic (reader.go, FormatGNU): the 155 bytes at 345 are a prefix when the
# atime (345, 12 bytes) or the ctime (357) is set and fails strconv.go's parseNumeric, and they
# are ASCII up to their first NUL.  (prefix bytes at 345, name field, the name Go reads)
GO17_EDGES = [
    (b"abc\0\0\0\0\0\0\0\0\0" + b"00000001234\0", "f-atime-text", "abc/f-atime-text"),
    (b"12345670123 " + b"dir", "f-ctime-text", "12345670123 dir/f-ctime-text"),
    (b"00000001234\0" + b"00000001234\0", "f-both-numbers", "f-both-numbers"),
    (b"12 34", "f-space-inside", "12 34/f-space-inside"),  # GNU tar's reading stops at the space
    (b" " * 12, "f-spaces", "f-spaces"),  # trimmed to nothing: 0
    (b"\x80" + b"\0" * 10 + b"\x01", "f-base256", "f-base256"),
    (b"\x80\x7f" + b"\xff" * 10, "f-base256-overflow", "f-base256-overflow"),  # fails; not ASCII
    (b"caf\xc3\xa9", "f-non-ascii", "f-non-ascii"),
    (b"\0" * 12 + b"xyz", "f-empty-prefix", "f-empty-prefix"),  # ctime fails, the prefix is ""
    (b"../../..", "f-dotdot", "f-dotdot"),  # ../../../f-dotdot, kept inside the root
    (b"/abs/dir", "f-absolute", "abs/dir/f-absolute"),
    (b"p" * 155, "n" * 100, "p" * 155 + "/" + "n" * 100),  # no NUL in either field
    (b"12\0abcdefghi", "f-text-after-nul", "f-text-after-nul"),  # cut at the NUL: 12
    (b"1234 \0\0\0\0\0\0x", "f-space-before-nul", "1234 /f-space-before-nul"),  # trimmed, then cut: "1234 "
    # an octal atime and a base-256 ctime: a prefix only when the ctime does not fit 64 bits
    (b"00000000001\0" + b"\x80" + b"\0" * 10 + b"\x01", "f-ctime-base256", "f-ctime-base256"),
    (b"00000000001\0" + b"\xff" * 12, "f-ctime-base256-negative", "f-ctime-base256-negative"),
    (b"00000000001\0" + b"\x80\x7f" + b"\xff" * 10, "f-ctime-base256-overflow",
     "00000000001/f-ctime-base256-overflow"),
    (b"00000000002\0" + b"\xff\0" + b"\0" * 10, "f-ctime-base256-underflow", "00000000002/f-ctime-base256-underflow"),
]


def test_go17_prefix_edges_read_as_go_reads_them(g):
    """Each edge of the heuristic in one layer, on every path and by umoci: a PAX path and a GNU
    long name still win over the prefix, as over any header name."""
    t = Tar()
    for prefix, name, _ in GO17_EDGES:
        t.file(name, b"x", fmt="gnu", prefix=prefix)
    t.pax({"path": "f-pax"}).file("x-pax", b"x", fmt="gnu", prefix=b"abc")
    t.gnu_longname("f-longname").file("x-longname", b"x", fmt="gnu", prefix=b"abc")
    raws = [t.bytes()]
    results = run_paths(g.dest, raws)
    results["umoci"] = umoci_tree(g.dest, raws)
    tree = assert_agree(results, context=describe(raws))
    assert tree is not None, f"refused on every path: {next(iter(results.values()))!r}"
    files = sorted(k for k, v in tree.entries.items() if v.type == "file")
    assert files == sorted([want for _, _, want in GO17_EDGES] + ["f-pax", "f-longname"])


def _numberish(rng):
    """12 bytes of an atime or ctime field, near the edges of what Go's parseNumeric takes."""
    kind = rng.randrange(7)
    if kind == 0:
        return b""  # not set
    if kind == 1:  # octal, with the paddings GNU tar, Go and others write, and spaces inside
        digits = "".join(rng.choice("01234567") for _ in range(rng.randint(1, 11))).encode()
        field = rng.choice([b"", b" ", b"\0"]) + digits + rng.choice([b"", b" ", b"\0", b" \0", b"\0 "])
        if rng.random() < 0.3:
            i = rng.randrange(len(field))
            field = field[:i] + rng.choice([b" ", b"\0", b"8", b"x"]) + field[i + 1:]
        return field[:12]
    if kind == 2:
        return bytes(rng.choice(b" \0") for _ in range(rng.randint(1, 12)))
    if kind == 3:  # base-256, fitting or not
        return bytes([rng.choice([0x80, 0xFF])] + [rng.choice([0, 0x7F, 0x80, 0xFF]) for _ in range(11)])
    if kind == 4:  # text, ASCII or not
        return bytes(rng.choice(b"abc./- 0\xc3\xa9") for _ in range(rng.randint(1, 12)))
    if kind == 5:
        return b"\0" + bytes(rng.choice(b"abc1") for _ in range(rng.randint(1, 11)))  # not set: text after
    return b"../" * rng.randint(1, 4)


def test_go17_prefix_heuristic_matches_umoci_on_generated_fields(g):
    """Two hundred atime/ctime pairs near the edges of Go's parseNumeric (seeded, so a failure
    repeats), one entry each, in one layer: lamina's tree on every path is umoci's."""
    import random
    rng = random.Random(1712)
    t = Tar()
    for n in range(200):
        atime, ctime = _numberish(rng), _numberish(rng)
        field = atime.ljust(12, b"\0") + ctime.ljust(12, b"\0")
        if rng.random() < 0.3:  # the rest of the 155 bytes, that the prefix may run on into
            field += bytes(rng.choice(b"de/\0") for _ in range(rng.randint(1, 131)))
        t.file(f"zz-{n}", b"x", fmt="gnu", prefix=field)
    raws = [t.bytes()]
    results = run_paths(g.dest, raws)
    results["umoci"] = umoci_tree(g.dest, raws)
    tree = assert_agree(results, context="generated GNU atime/ctime fields")
    assert tree is not None, f"refused on every path: {next(iter(results.values()))!r}"
    files = [k for k, v in tree.entries.items() if v.type == "file"]
    assert len(files) == 200 and sum("/" in f for f in files) > 20, sorted(files)  # prefixes were read
