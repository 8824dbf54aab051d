"""Top-down skipping in a flat unpack: entries that an upper layer deletes or
replaces are never written, and the result is exactly the plain one (umoci's)."""
import os
import random

import pytest

import lamina
import ocibuild
from conftest import require_tool, run
from treecmp import assert_same, snapshot

unpacker = __import__("importlib").import_module("lamina.unpacker")


def _noise(n, seed):
    return random.Random(seed).randbytes(n)  # incompressible: lower layers stay big


def _image(tmp_path, layers):
    lay = ocibuild.Layout(tmp_path / "img")
    lay.add(lay.image(layers), "latest")
    return lay.root


def _oracle(tmp_path, root):
    require_tool("umoci")
    out = tmp_path / "umoci"
    run("umoci", "raw", "unpack", "--image", f"{root}:latest", out)
    return out


def test_hidden_entries_are_skipped_and_the_tree_is_exact(tmp_path, monkeypatch):
    base = {
        "keep/": None, "keep/a": _noise(200_000, 1),
        "cache/": None, "cache/x.deb": _noise(300_000, 2), "cache/sub/": None, "cache/sub/y": _noise(1000, 3),
        "opq/": None, "opq/old": _noise(100_000, 4),
        "file": b"old\n",
        "swap/": None, "swap/inner": b"inner\n",
    }
    middle = {"keep/b": b"b\n", "cache/late": _noise(50_000, 5)}
    top = {
        ".wh.cache": b"",                                   # whiteout of a directory
        "opq/": None, "opq/.wh..wh..opq": b"", "opq/new": b"new\n",   # opaque directory
        "file": b"new\n",                                   # file replaced by a file
        "swap": b"now a file\n",                            # directory replaced by a file
    }
    root = _image(tmp_path, [base, middle, top])
    stats = lamina.unpack(f"oci:{root}", tmp_path / "skip")
    # the optimization really ran: the bottom layer skipped the hidden files, dirs and the
    # replaced ones (cache/ and below, opq/old, file, swap/ and below)
    assert stats.layers[0].hidden == 8, [layer.hidden for layer in stats.layers]
    assert stats.layers[1].hidden == 1  # cache/late
    got = snapshot(tmp_path / "skip", dir_mtime=True)
    assert_same(snapshot(_oracle(tmp_path, root), dir_mtime=True), got, labels=("umoci", "lamina top-down"))
    monkeypatch.setattr(unpacker, "SCAN_FRACTION", 0.0)  # the plain way, for good measure
    plain = lamina.unpack(f"oci:{root}", tmp_path / "plain")
    assert all(layer.hidden == 0 for layer in plain.layers)
    assert_same(snapshot(tmp_path / "plain", dir_mtime=True), got, labels=("plain", "top-down"))


def test_whiteouts_look_at_each_skipped_path_once(tmp_path, monkeypatch):
    """A layer's whiteouts drop what the layers below skipped: each skipped path is looked at
    once, however many whiteouts the layer has (a scan of all of them per whiteout made 16k
    whiteouts over 16k skipped files cost 4 s of CPU; 1M over 64k, hours)."""
    n = 3000
    base = {"noise": _noise(1_000_000, 7), "d/": None}
    base.update({f"d/f{i}": b"low %d\n" % i for i in range(n)})        # all hidden by the top layer
    middle = {"e/": None, "d/": None}
    middle.update({f"e/.wh.g{i}": b"" for i in range(n)})              # hide nothing
    middle.update({f"d/.wh.f{i}": b"" for i in range(0, n, 2)})        # hide half of the skipped files
    middle.update({"o/": None, "o/.wh..wh..opq": b""})                 # an opaque dir over nothing skipped
    top = {"d/": None}
    top.update({f"d/f{i}": b"top %d\n" % i for i in range(n)})
    root = _image(tmp_path, [base, middle, top])
    stats = lamina.unpack(f"oci:{root}", tmp_path / "skip")
    assert stats.layers[0].hidden == n
    assert stats.layers[1].whiteouts == n + n // 2
    assert 0 < stats.layers[1].hidden_examined <= n, stats.layers[1].hidden_examined
    got = snapshot(tmp_path / "skip", dir_mtime=True)
    assert_same(snapshot(_oracle(tmp_path, root), dir_mtime=True), got, labels=("umoci", "lamina top-down"))
    monkeypatch.setattr(unpacker, "SCAN_FRACTION", 0.0)
    plain = lamina.unpack(f"oci:{root}", tmp_path / "plain")
    assert all(layer.hidden == 0 for layer in plain.layers)
    assert_same(snapshot(tmp_path / "plain", dir_mtime=True), got, labels=("plain", "top-down"))


def test_an_upper_layer_hiding_too_many_paths_is_not_skipped_over(tmp_path, monkeypatch):
    """The paths the scanned layers hide are kept until the layers below are written (~150 B
    each): past SCAN_MAX_PATHS a layer counts as not scanned (its whiteouts apply as it is
    written, issue 14), and the layers scanned within the budget still skip what they hide.
    Same tree either way."""
    base = {"a/": None, "b/": None, "c": _noise(300_000, 1)}
    base.update({f"a/f{i}": _noise(1000, 10 + i) for i in range(10)})
    base.update({f"b/f{i}": _noise(1000, 30 + i) for i in range(10)})
    middle = {".wh.c": b""}                                        # hides 1 path
    top = {f"a/.wh.f{i}": b"" for i in range(10)} | {"b/": None}    # hides 10
    root = _image(tmp_path, [base, middle, top])
    stats = lamina.unpack(f"oci:{root}", tmp_path / "all")
    assert [layer.hidden for layer in stats.layers] == [11, 0, 0]
    monkeypatch.setattr(unpacker, "SCAN_MAX_PATHS", 5)  # top's 10 overflow; middle's 1 fits
    capped = lamina.unpack(f"oci:{root}", tmp_path / "capped")
    assert [layer.hidden for layer in capped.layers] == [1, 0, 0]
    assert_same(snapshot(tmp_path / "all", dir_mtime=True), snapshot(tmp_path / "capped", dir_mtime=True),
                labels=("scanned", "capped"))
    assert_same(snapshot(_oracle(tmp_path, root), dir_mtime=True), snapshot(tmp_path / "capped", dir_mtime=True),
                labels=("umoci", "capped"))


@pytest.mark.parametrize("where", ["same-layer", "next-layer"])
def test_hardlink_to_a_hidden_file_falls_back_to_the_plain_way(tmp_path, where):
    """cache/big is hidden by the top layer, but a link outside cache/ keeps its inode alive."""
    big = _noise(300_000, 6)
    if where == "same-layer":
        layers = [{"cache/": None, "cache/big": big, "link": ("hardlink", "cache/big")}, {".wh.cache": b""}]
    else:
        layers = [{"cache/": None, "cache/big": big}, {"link": ("hardlink", "cache/big"), "pad": _noise(100_000, 7)},
                  {".wh.cache": b""}]
    root = _image(tmp_path, layers)
    lamina.unpack(f"oci:{root}", tmp_path / "out")
    assert (tmp_path / "out" / "link").read_bytes() == big
    assert not os.path.lexists(tmp_path / "out" / "cache")
    assert_same(snapshot(_oracle(tmp_path, root)), snapshot(tmp_path / "out"), labels=("umoci", "lamina"))


def test_a_broken_upper_layer_still_fails_clearly(tmp_path):
    """Scanning reads the upper layer first; its damage must surface as the usual error."""
    lay = ocibuild.Layout(tmp_path / "img")
    desc = lay.image([{"big": _noise(200_000, 8)}, {"small": b"s"}], diff_ids=None)
    manifest = lay.read_json(desc["digest"])
    top = manifest["layers"][1]["digest"]
    path = lay.path(top)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    os.chmod(path, 0o644)
    open(path, "wb").write(bytes(data))
    lay.add(desc, "latest")
    with pytest.raises(lamina.errors.LaminaError) as e:
        lamina.unpack(f"oci:{lay.root}", tmp_path / "out")
    assert "layer 1" in str(e.value) or top in str(e.value)
    assert not os.path.lexists(tmp_path / "out")


SYMLINK_CASES = {
    # lower entries written through a symlink land elsewhere; hiding the link must not hide them
    "replace-the-link": (
        {"real/": None, "link": ("symlink", "real"), "link/x": _noise(200_000, 9)},
        {"link": b"now a file\n"},
        "real/x"),
    "whiteout-the-link": (
        {"real/": None, "link": ("symlink", "real"), "link/x": _noise(200_000, 10)},
        {".wh.link": b""},
        "real/x"),
    "whiteout-a-dir-holding-a-link": (
        {"elsewhere/": None, "d/": None, "d/s": ("symlink", "/elsewhere"), "d/s/x": _noise(200_000, 11)},
        {".wh.d": b""},
        "elsewhere/x"),
    "opaque-over-a-replaced-link": (
        {"T/": None, "A": ("symlink", "T"), "A/x": _noise(200_000, 12)},
        {"A/": None, "A/.wh..wh..opq": b"", "A/new": b"new\n"},
        "T/x"),
    # a hidden directory entry replaces a symlink of its own layer: what the layer puts under
    # it goes into the new directory, not through the link that skipping it would leave
    "hidden-dir-replaces-a-link": (
        {"a": _noise(200_000, 13), "b": ("symlink", "."), "b/": None, "b/a/": None},
        {"b": b"now a file\n"},
        "a"),
    "hidden-dir-replaces-a-link-to-a-dir": (
        {"real/": None, "real/x": _noise(200_000, 14), "b": ("symlink", "real"), "b/": None, "b/x": b"new\n"},
        {".wh.b": b""},
        "real/x"),
}


@pytest.mark.parametrize("case", sorted(SYMLINK_CASES))
def test_entries_written_through_symlinks_are_never_skipped(tmp_path, monkeypatch, case):
    lower, top, survivor = SYMLINK_CASES[case]
    root = _image(tmp_path, [lower, top])
    lamina.unpack(f"oci:{root}", tmp_path / "skip")
    monkeypatch.setattr(unpacker, "SCAN_FRACTION", 0.0)
    lamina.unpack(f"oci:{root}", tmp_path / "plain")
    assert (tmp_path / "plain" / survivor).is_file(), "the plain unpack keeps what went through the link"
    assert_same(snapshot(tmp_path / "plain", dir_mtime=True), snapshot(tmp_path / "skip", dir_mtime=True),
                labels=("plain", "top-down"), context=case)


IMPLIED_THEN_HIDDEN = {
    # the layer writes a/b/f (implying a/b, which takes its metadata from below), then hides a's
    # lower content: the scan hid a/b too, so the top-down unpack made a new 0755 a/b
    "opaque-marker": lambda t: t.file("a/b/f", b"f").opaque("a"),
    "whiteout": lambda t: t.file("a/b/f", b"f").whiteout("a"),
    "whiteout-of-the-implied-dir": lambda t: t.file("a/b/c/f", b"f").whiteout("a/b"),
}


@pytest.mark.parametrize("case", sorted(IMPLIED_THEN_HIDDEN))
def test_a_directory_the_layer_implied_before_hiding_its_parent_keeps_its_metadata(tmp_path, case):
    """Every other path (and umoci) gives a/b the lower layer's 0700 and time; the scan of the
    top layer now hides nothing under a directory it implied a directory in."""
    from everypath import assert_agree, describe, run_paths, umoci_tree
    from tarbuild import Tar
    lower = (Tar().dir("a", mode=0o750, mtime=1_000_000_000).dir("a/b", mode=0o700, mtime=1_000_000_000)
             .dir("a/b/c", mode=0o710, mtime=1_000_000_000).file("a/b/old", b"o").file("a/x", b"x"))
    raws = [lower.bytes(), IMPLIED_THEN_HIDDEN[case](Tar()).bytes()]
    results = run_paths(tmp_path, raws, paths=("dir", "dir-topdown", "overlay-mount"), dir_mtime=True)
    tree = assert_agree(results, context=describe(raws))
    b = tree.entries["a/b"]
    assert (b.mode, b.mtime) == (0o700, 1_000_000_000), b.describe()
    # umoci leaves the time a removal gave a directory (a known difference): modes and owners only
    assert_agree({"dir": run_paths(tmp_path / "again", raws, paths=("dir",))["dir"],
                  "umoci": umoci_tree(tmp_path, raws)}, context=describe(raws))


REPLACING_A_LINK = {
    "file": lambda t: t.file("L", b"now a file"),
    "hardlink": lambda t: t.file("f", b"f").hardlink("L", "f"),
    "fifo": lambda t: t.fifo("L"),
}


@pytest.mark.parametrize("kind", sorted(REPLACING_A_LINK))
def test_a_hidden_entry_that_replaced_a_lower_symlink_is_not_skipped(tmp_path, kind):
    """A layer replaces the lower symlink L -> T with a file; a layer above whites out L/keep (in
    a file: nothing), the top one L.  Skipped as hidden, the file left the link in place and
    the whiteout went through it and removed T/keep (the fuzzer's seed 20603)."""
    from everypath import assert_agree, describe, run_paths, umoci_tree
    from tarbuild import Tar
    raws = [Tar().dir("T").file("T/keep", b"k").symlink("L", "T").bytes(),
            REPLACING_A_LINK[kind](Tar()).bytes(),
            Tar().whiteout("L/keep").bytes(),
            Tar().whiteout("L").bytes()]
    results = run_paths(tmp_path, raws, paths=("dir", "dir-topdown", "overlay-mount"), dir_mtime=True)
    results["umoci"] = umoci_tree(tmp_path, raws, dir_mtime=True)
    tree = assert_agree(results, context=describe(raws))
    assert "T/keep" in tree.entries and "L" not in tree.entries


@pytest.mark.parametrize("layers,expect", [
    # the fuzzer's seed 20903: a lower symlink at `a` makes the layer's first `a` written, not
    # skipped; its second `a` is skipped (no link there now); the top layer links `a` to itself
    ([lambda t: t.file("a", b"low").symlink("a", "a"),
      lambda t: t.pax({"SCHILY.xattr.user.fuzz": "1"}).file("a", b"first").file("a", b"second"),
      lambda t: t.hardlink("a", "a")], b"second"),
    # a plain skipped file below a link to itself
    ([lambda t: t.file("a", b"low"), lambda t: t.file("a", b"middle"), lambda t: t.hardlink("a", "a")], b"middle"),
], ids=["written-then-skipped", "skipped"])
def test_a_hardlink_to_itself_over_a_skipped_file_names_the_last_one(tmp_path, layers, expect):
    """A hardlink ``a => a`` names what is at ``a`` below it: the middle layer's last ``a``.  The
    top-down unpack skipped that one as hidden (the link hides ``a``), yet linked ``a`` to what
    was there: the middle layer's first ``a``, with its xattr and bytes, where every other path
    has the last ``a`` (umoci refuses the link: "file exists")."""
    from everypath import assert_agree, describe, run_paths
    from tarbuild import Tar
    raws = [make(Tar()).bytes() for make in layers]
    results = run_paths(tmp_path, raws, paths=("dir", "dir-topdown", "store-copy"))
    tree = assert_agree(results, context=describe(raws))
    assert tree.entries["a"].xattrs == ()
    for path in ("dir", "dir-topdown"):
        with open(tmp_path / path / "a", "rb") as f:
            assert f.read() == expect, path


UNDER_A_SKIPPED_NON_DIRECTORY = {
    # the fuzzer's seed 40000: b/a (a symlink, which is never skipped) implies b, a fifo replaces
    # b, a link names b/a; the top layer's file b hides b, so the top-down unpack skipped the
    # fifo, left b a directory and linked h to the b/a in it, where every other path fails
    "by-name": lambda t: t.symlink("b/a", "a").fifo("b").hardlink("h", "b/a"),
    # the target named through a symlink to the directory the fifo replaced
    "through-a-symlink": lambda t: t.symlink("b/a", "a").symlink("l", "b").fifo("b").hardlink("h", "l/a"),
    # the link skipped too (the top layer hides h): a skipped link must name a file there is
    "the-link-skipped-too": lambda t: t.symlink("b/a", "a").fifo("b").hardlink("h", "b/a").file("z", b"z"),
    # the skipped fifo replaced by a (skipped) directory again: b/a went with the fifo
    "then-a-directory-again": lambda t: t.symlink("b/a", "a").fifo("b").dir("b").hardlink("h", "b/a"),
}


@pytest.mark.parametrize("case", list(UNDER_A_SKIPPED_NON_DIRECTORY))
def test_a_hardlink_under_a_skipped_non_directory_fails_as_the_written_layer_does(tmp_path, case):
    """Written, the fifo at ``b`` replaces the directory and the link to ``b/a`` fails (ENOTDIR,
    or nothing there).  Skipped as hidden, the top-down unpack must fail it the same, not link
    to what the skipped entry would have removed."""
    from everypath import assert_agree, describe, run_paths
    from tarbuild import Tar
    top = Tar().file("b", b"top")
    if case == "the-link-skipped-too":
        top.file("h", b"top")
    raws = [UNDER_A_SKIPPED_NON_DIRECTORY[case](Tar()).bytes(), top.bytes()]
    results = run_paths(tmp_path, raws, paths=("dir", "dir-topdown", "overlay-mount", "store-copy"))
    assert_agree(results, context=describe(raws))
    assert all(isinstance(r, Exception) for r in results.values()), results


THROUGH_A_HARDLINK_TO_A_SYMLINK = {
    # the top-down probe's stack (``b -> .``; ``b/c -> .``, ``t => b``, ``t/.wh..wh..opq``): t is
    # one more name of the symlink b, so the opaque marker through it empties the root of what
    # the layers below left (b); skipped as hidden, t made no symlink and the marker nothing
    "opaque-marker": [lambda t: t.symlink("b", ".").file("f", b"f"),
                      lambda t: t.hardlink("t", "b").opaque("t"), lambda t: t.file("t", b"top")],
    "whiteout": [lambda t: t.symlink("b", ".").file("f", b"f"),
                 lambda t: t.hardlink("t", "b").whiteout("t/f"), lambda t: t.file("t", b"top")],
    "entry": [lambda t: t.dir("d").symlink("b", "d"),
              lambda t: t.hardlink("t", "b").file("t/x", b"x"), lambda t: t.file("t", b"top")],
}


@pytest.mark.parametrize("case", list(THROUGH_A_HARDLINK_TO_A_SYMLINK))
def test_a_hidden_hardlink_to_a_symlink_is_written_as_a_symlink_is(tmp_path, case):
    """A hardlink to a symlink is one more symlink: what the layer writes through it lands
    where it leads.  The top-down unpack skips what an upper layer hides but never a symlink;
    a hardlink to one must not be skipped either."""
    from everypath import assert_agree, describe, run_paths
    from tarbuild import Tar
    raws = [make(Tar()).bytes() for make in THROUGH_A_HARDLINK_TO_A_SYMLINK[case]]
    results = run_paths(tmp_path, raws, paths=("dir", "dir-topdown", "overlay-mount", "store-copy"))
    tree = assert_agree(results, context=describe(raws))
    assert tree is not None, results
    assert "t" in tree.entries and tree.entries["t"].type == "file"


THROUGH_A_SYMLINK_TO_SKIPPED_FILES = {
    # test_fuzz_topdown.py's probe: the whiteout l/.wh.a removes b/a (l -> b), which the layer
    # below skipped as hidden; the link h => b/a (skipped too: the top layer hides h) then
    # counted b/a as still there, where every path that writes it finds nothing
    "whiteout, own symlink": [lambda t: t.dir("b").file("b/a", b"x"),
                              lambda t: t.symlink("l", "b").whiteout("l/a").hardlink("h", "b/a"),
                              lambda t: t.file("b/a", b"top").file("h", b"top")],
    "whiteout, lower symlink": [lambda t: t.dir("b").file("b/a", b"x").symlink("l", "b"),
                                lambda t: t.whiteout("l/a").hardlink("h", "b/a"),
                                lambda t: t.file("b/a", b"top").file("h", b"top")],
    "opaque marker, lower symlink": [lambda t: t.dir("b").file("b/a", b"x").symlink("l", "b"),
                                     lambda t: t.opaque("l").hardlink("h", "b/a"),
                                     lambda t: t.file("b/a", b"top").file("h", b"top")],
    # the symlink leads to a directory skipped whole (the top layer whites out b): not on disk
    "whiteout, to a skipped directory": [lambda t: t.dir("b").file("b/a", b"x"),
                                         lambda t: t.symlink("l", "b").whiteout("l/a").hardlink("h", "b/a"),
                                         lambda t: t.whiteout("b").file("h", b"top")],
    # the link in a layer above the whiteout's
    "whiteout, link a layer up": [lambda t: t.dir("b").file("b/a", b"x").symlink("l", "b"),
                                  lambda t: t.whiteout("l/a"),
                                  lambda t: t.hardlink("h", "b/a"),
                                  lambda t: t.file("b/a", b"top").file("h", b"top")],
}


@pytest.mark.parametrize("case", list(THROUGH_A_SYMLINK_TO_SKIPPED_FILES))
def test_a_whiteout_through_a_symlink_removes_the_skipped_files_it_reaches(tmp_path, case):
    """A whiteout or opaque marker reached through a symlink removes what is where the link
    leads: a file skipped there as hidden is gone, and a hardlink to it fails, skipped or not,
    as on the paths that write every entry."""
    from everypath import assert_agree, describe, run_paths
    from tarbuild import Tar
    raws = [make(Tar()).bytes() for make in THROUGH_A_SYMLINK_TO_SKIPPED_FILES[case]]
    results = run_paths(tmp_path, raws, paths=("dir", "dir-topdown", "overlay-mount", "store-copy"))
    assert_agree(results, context=describe(raws))
    assert all(isinstance(r, Exception) for r in results.values()), results
    assert "hardlink target 'b/a' not found" in str(results["dir-topdown"])


# A whiteout or marker through a symlink that leads to no directory on disk: dangling on every
# path (a no-op there), or to a directory the top-down way skipped whole, which the plain way
# wrote (its whiteout removes a file there).  The top-down way cannot tell them apart and does
# the layers again the plain way; a hardlink after it names what the whiteout removed or not.
THROUGH_A_SYMLINK_TO_NOWHERE = {
    "whiteout, dangling": ([lambda t: t.dir("b").file("b/a", b"x").file("x", b"x"),
                            lambda t: t.symlink("l", "nowhere").whiteout("l/a").file("y", b"y"),
                            lambda t: t.whiteout("x")], ["b", "b/a", "l", "y"]),
    "opaque marker, dangling absolute": ([lambda t: t.dir("b").file("b/a", b"x").file("x", b"x"),
                                          lambda t: t.symlink("l", "/no/where").opaque("l").file("y", b"y"),
                                          lambda t: t.whiteout("x")], ["b", "b/a", "l", "y"]),
    "whiteout, to a skipped directory": ([lambda t: t.dir("b").file("b/a", b"x").file("x", b"x"),
                                          lambda t: t.symlink("l", "b").whiteout("l/a").file("y", b"y"),
                                          lambda t: t.whiteout("b")], ["l", "x", "y"]),
    "to a skipped directory, then a skipped link to a file it kept": (
        [lambda t: t.dir("b").file("b/a", b"x").file("b/c", b"c"),
         lambda t: t.symlink("l", "b").whiteout("l/a").hardlink("h", "b/c"),
         lambda t: t.whiteout("b").file("h", b"top")], ["h", "l"]),
    "to a skipped directory, then a skipped link to the file it removed": (
        [lambda t: t.dir("b").file("b/a", b"x").file("b/c", b"c"),
         lambda t: t.symlink("l", "b").whiteout("l/a").hardlink("h", "b/a"),
         lambda t: t.whiteout("b").file("h", b"top")], None),
}


@pytest.mark.parametrize("case", list(THROUGH_A_SYMLINK_TO_NOWHERE))
def test_a_whiteout_through_a_symlink_to_no_directory_on_disk_agrees_with_every_path(tmp_path, case):
    """The top-down way gives the plain way's tree, or its error, and so do the overlay format
    mounted and the store."""
    from everypath import assert_agree, describe, run_paths
    from tarbuild import Tar
    makes, names = THROUGH_A_SYMLINK_TO_NOWHERE[case]
    raws = [make(Tar()).bytes() for make in makes]
    results = run_paths(tmp_path, raws, paths=("dir", "dir-topdown", "overlay-mount", "store-copy"))
    assert_agree(results, context=describe(raws))
    if names is None:
        assert "hardlink target 'b/a' not found" in str(results["dir-topdown"]), results
        assert str(results["dir-topdown"]) == str(results["dir"])
    else:
        assert sorted(results["dir-topdown"].entries) == names, results


LONG = "x" * 256  # a component longer than NAME_MAX


@pytest.mark.parametrize("case", ["file", "under-a-directory", "directory"])
def test_a_hidden_entry_with_a_name_no_filesystem_takes_fails_as_written(tmp_path, case):
    """Written, an entry with a component of 256 bytes fails (ENAMETOOLONG) on every path; the
    top-down unpack skipped it as hidden (the top layer whites out b) and succeeded."""
    from everypath import assert_agree, describe, run_paths
    from tarbuild import Tar
    lower = Tar()
    if case == "file":
        lower.pax({"path": f"b/{LONG}"}).file("b/short", b"1")
    elif case == "under-a-directory":
        lower.pax({"path": f"b/{LONG}/f"}).file("b/short/f", b"1")
    else:
        lower.pax({"path": f"b/{LONG}/"}).dir("b/short")
    raws = [lower.file("keep", b"k").bytes(), Tar().whiteout("b").bytes()]
    results = run_paths(tmp_path, raws, paths=("dir", "dir-topdown", "overlay-mount", "store-copy"))
    assert_agree(results, context=describe(raws))
    assert all(isinstance(r, Exception) for r in results.values()), results
    assert "File name too long" in str(results["dir-topdown"]), results["dir-topdown"]


@pytest.mark.parametrize("case", ["link-to-itself", "link-to-the-node"])
def test_a_hardlink_to_a_device_node_nobody_cannot_make_hides_nothing(case):
    """Without root a device node is not made, nor a hardlink to one: ``b/c => b/c`` over the
    layer's char device leaves the lower b/c where it is.  The scan of that layer counted the
    link as hiding b/c, and the top-down unpack skipped the lower b/c: it was missing (the
    rootless top-down fuzzer's seed 41010)."""
    import json
    import shutil
    from everypath import describe, write_image
    from layerkit import run_as_nobody, world_tmpdir
    from tarbuild import Tar
    from test_fuzz_topdown import ROOTLESS
    upper = Tar().chardev("b/c", 1, 3).hardlink("b/c", "b/c") if case == "link-to-itself" else \
        Tar().chardev("n", 1, 3).hardlink("b/c", "n")
    raws = [Tar().file("l/a", b"22", mode=0o755).hardlink("b/c", "l/a").bytes(), upper.bytes()]
    base = world_tmpdir()
    try:
        layout = write_image(os.path.join(base, "layout"), raws)
        work = os.path.join(base, "work")
        os.mkdir(work)
        os.chown(work, 65534, 65534)
        proc = run_as_nobody(ROOTLESS, json.dumps([{"src": f"oci:{layout}:img", "work": work, "cap": None}]))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        res = json.loads(proc.stdout.strip().splitlines()[-1])[0]
        assert res["dir"] == res["dir-topdown"] == "ok", res
        trees = {n: snapshot(os.path.join(work, n)) for n in ("dir", "dir-topdown")}
        assert "b/c" in trees["dir"].entries, describe(raws)
        assert_same(trees["dir"], trees["dir-topdown"], labels=("dir", "dir-topdown"), context=describe(raws))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_bad_lower_layer_is_the_one_named_though_an_upper_one_is_bad_too(tmp_path):
    """The plain unpack fails at the first bad layer from the bottom.  The top-down one scanned
    the upper layers first and named the top one (a hardlink ``.``, refused), not the middle
    one's link to nothing (the rootless top-down fuzzer's seed 41010).  A scan's failure now
    leaves the layer to fail as it is written, in the plain way's order."""
    from everypath import describe, run_paths
    from tarbuild import Tar
    from test_fuzz_topdown import agree
    raws = [Tar().file("a", b"a").bytes(), Tar().hardlink("h", "missing").bytes(), Tar().hardlink(".", "a").bytes()]
    results = run_paths(tmp_path, raws, paths=("dir", "dir-topdown", "registry-unpack"))
    assert all(isinstance(r, Exception) for r in results.values()), results
    assert "layer 2 of 3" in str(results["dir"]) and "'missing' not found" in str(results["dir"]), results["dir"]
    agree(results, tmp_path, describe(raws))


OVER_A_SYMLINK_AT_ITS_TARGET = {
    # the target replaced a symlink at its name, so it was written, not skipped
    "same-layer": [lambda t: t.symlink("b/c", "/b").file("b/c", b"c").hardlink("b", "b/c")],
    "lower-symlink": [lambda t: t.symlink("b/c", "x"), lambda t: t.file("b/c", b"c").hardlink("b", "b/c")],
}


@pytest.mark.parametrize("case", list(OVER_A_SYMLINK_AT_ITS_TARGET))
def test_a_hidden_hardlink_replacing_the_directory_of_its_written_target_is_refused(tmp_path, case):
    """``b => b/c`` with b a directory is refused on every path (it would take its target with
    it).  Hidden by an upper ``b`` and skipped, the top-down unpack refused it only when b/c was
    skipped too; b/c written (it replaced a symlink, which is never skipped) let it through,
    and the flat unpack gave a tree where every other path refused (found by test_fuzz_paths.py)."""
    from everypath import describe, run_paths
    from tarbuild import Tar
    raws = [build(Tar()).bytes() for build in OVER_A_SYMLINK_AT_ITS_TARGET[case]] + [Tar().file("b", b"top").bytes()]
    results = run_paths(tmp_path, raws, paths=("dir", "dir-topdown", "overlay-mount", "store-copy"))
    assert all(isinstance(r, Exception) and "which is inside it" in str(r) for r in results.values()), \
        describe(raws) + "\n" + repr(results)


SKIPPED_OVER_A_DIRECTORY = {
    "file": lambda t: t.file("d/r", b"r"),
    "hardlink": lambda t: t.hardlink("d/r", "base"),
    "fifo": lambda t: t.fifo("d/r"),
}


@pytest.mark.parametrize("kind", sorted(SKIPPED_OVER_A_DIRECTORY))
def test_a_skipped_entry_that_replaces_a_directory_keeps_its_parents_time(tmp_path, kind):
    """A layer writes the symlink d/r (never skipped), then the directory d/r over it (not
    skipped: a symlink is there); the next layer replaces d/r with a file, hidden by an opaque
    d above and skipped, so the directory goes as the written entry would take it.  That
    removal gave d the time of the unpack, where every other path and umoci keep the time d
    was listed with (test_fuzz_paths.py's rewrite_stacks(), seed 46600)."""
    from everypath import assert_agree, describe, run_paths, umoci_tree
    from tarbuild import Tar
    raws = [Tar().dir("d", mtime=1_000_000_000).file("base", b"b").bytes(),
            Tar().symlink("d/r", "base").dir("d/r").bytes(),
            SKIPPED_OVER_A_DIRECTORY[kind](Tar()).bytes(),
            Tar().opaque("d").bytes()]
    results = run_paths(tmp_path, raws, paths=("dir", "dir-topdown", "overlay-mount"), dir_mtime=True)
    results["umoci"] = umoci_tree(tmp_path, raws, dir_mtime=True)
    tree = assert_agree(results, context=describe(raws))
    assert tree.entries["d"].mtime == 1_000_000_000, tree.entries["d"].describe()
