"""What a hostile image writer tries with names, link names and the entries they point at,
through every path (see everypath.py): the same tree everywhere (or an error everywhere,
naming the entry), umoci's where umoci reads the layer, nothing changed outside the work
directory, and for the store's paths a clean fsck (its objects still hash to their names).

Hardlinks to entries a layer whited out, made opaque, or replaced by a symlink or a
directory; link names through lower symlinks (absolute, ``..``, loops); PAX records and GNU
long names that rename an entry into a whiteout or out of the root; a name linked to a
store object and then rewritten in the same layer; a GNU long name and a PAX path that
disagree (each reference reader takes another: refused).
"""
from __future__ import annotations

import os

import pytest

from everypath import assert_agree, describe, run_paths, umoci_tree
from tarbuild import Tar


def _fsck_clean(work):
    from lamina.store import Store
    with Store(os.path.join(work, "store")) as store:
        report = store.fsck()
    assert report.clean, [str(f) for f in report.findings]


def agree(g, layers, *, umoci=True):
    raws = [t.bytes() for t in layers]
    results = run_paths(g.dest, raws)
    if umoci:
        u = umoci_tree(g.dest, raws)
        if not isinstance(u, Exception):
            results["umoci"] = u
    tree = assert_agree(results, context=describe(raws))
    assert tree is not None, {k: v for k, v in results.items() if isinstance(v, Exception)}
    _fsck_clean(g.dest)
    g.check()
    return tree


def refused(g, layers, entry):
    raws = [t.bytes() for t in layers]
    results = run_paths(g.dest, raws)
    for path, r in results.items():
        assert isinstance(r, Exception), (path, describe(raws))
        assert f"entry '{entry}'" in str(r), (path, str(r))
    _fsck_clean(g.dest)
    g.check()


def _content(g, rel):
    with open(os.path.join(g.dest, "dir", rel), "rb") as f:
        return f.read()


# --- hardlinks to what a layer replaced or hid ----------------------------------------------

def test_hardlink_to_a_lower_file_an_upper_layer_replaced_by_an_absolute_symlink(g):
    """h names f, which is now a symlink to /etc/shadow: h is that symlink (a hardlink never
    follows its target), never a link to the host's file or to the image's old f."""
    tree = agree(g, [Tar().file("f", b"old"), Tar().symlink("f", "/etc/shadow"), Tar().hardlink("h", "f")])
    assert tree.entries["h"].type == "symlink" and tree.entries["h"].target == "/etc/shadow"
    assert os.lstat("/etc/shadow").st_nlink == 1


def test_hardlink_to_a_file_replaced_by_a_symlink_earlier_in_the_same_layer(g):
    tree = agree(g, [Tar().file("f", b"x").file("g", b"g"), Tar().symlink("f", "g").hardlink("h", "f")])
    assert tree.entries["h"].type == "symlink" and tree.entries["h"].target == "g"
    assert frozenset({"f", "h"}) in tree.links


def test_hardlink_to_a_lower_file_then_a_whiteout_of_it_keeps_the_link(g):
    """The copy-up the link makes is not an entry of the layer: the whiteout later in the
    layer removes f, and h keeps the lower data."""
    tree = agree(g, [Tar().file("f", b"lower"), Tar().hardlink("h", "f").whiteout("f")])
    assert "f" not in tree.entries and tree.entries["h"].type == "file"
    assert _content(g, "h") == b"lower"


def test_hardlink_to_a_lower_file_then_the_file_rewritten(g):
    tree = agree(g, [Tar().file("f", b"old"), Tar().hardlink("h", "f").file("f", b"new")])
    assert _content(g, "h") == b"old" and _content(g, "f") == b"new"
    assert not any("h" in grp for grp in tree.links)


def test_hardlink_to_a_lower_dir_replaced_by_a_file(g):
    tree = agree(g, [Tar().dir("d"), Tar().file("d", b"now a file").hardlink("h", "d")])
    assert frozenset({"d", "h"}) in tree.links and _content(g, "h") == b"now a file"


def test_a_name_whited_out_then_recreated_as_a_hardlink(g):
    tree = agree(g, [Tar().file("f", b"x").file("g", b"g"), Tar().whiteout("f").hardlink("f", "g")])
    assert frozenset({"f", "g"}) in tree.links and _content(g, "f") == b"g"


def test_a_symlink_hardlinked_then_replaced_by_a_file(g):
    tree = agree(g, [Tar().file("t", b"t").symlink("s", "t"), Tar().hardlink("s2", "s").file("s", b"file now")])
    assert tree.entries["s2"].type == "symlink" and tree.entries["s2"].target == "t"
    assert tree.entries["s"].type == "file"


def test_a_hardlink_to_itself_over_a_lower_file_changes_nothing(g):
    """umoci refuses this one; lamina keeps the file as it was, on every path."""
    tree = agree(g, [Tar().file("h", b"x"), Tar().hardlink("h", "h")], umoci=False)
    assert tree.entries["h"].type == "file" and _content(g, "h") == b"x"
    assert not tree.links


@pytest.mark.parametrize("layers,entry", [
    ([Tar().file("f", b"x"), Tar().whiteout("f"), Tar().hardlink("h", "f")], "h"),
    ([Tar().dir("d").file("d/f", b"x"), Tar().opaque("d").file("d/g", b"g"), Tar().hardlink("h", "d/f")], "h"),
    ([Tar().dir("d").file("d/f", b"x"), Tar().opaque("d").hardlink("h", "d/f")], "h"),
    ([Tar().file("victim", b"v"), Tar().whiteout("victim").hardlink("h", ".wh.victim")], "h"),
    ([Tar().file("k"), Tar().hardlink("a", "b").hardlink("b", "a")], "a"),
    ([Tar().file("k"), Tar().hardlink("h", "h")], "h"),
    ([Tar().symlink("loop", "loop"), Tar().hardlink("h", "loop/f")], "h"),
    ([Tar().dir("d").file("d/f", b"x"), Tar().hardlink("h", "d/f/..")], "h"),
    ([Tar().file("d", b"x"), Tar().dir("d").hardlink("h", "d")], "h"),
], ids=["whited-out-in-a-middle-layer", "under-a-middle-opaque-dir", "opaque-earlier-in-the-layer",
        "the-whiteout-entry-itself", "a-cycle", "itself-missing", "through-a-symlink-loop",
        "dotdot-normalises-to-a-dir", "file-replaced-by-a-dir"])
def test_hardlinks_to_nothing_a_layer_shows_are_refused_everywhere(g, layers, entry):
    refused(g, layers, entry)



CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)   # cap_sys_admin, permitted+effective


@pytest.mark.parametrize("same_layer", [False, True], ids=["over-a-lower-file", "in-the-same-layer"])
def test_a_hardlink_entrys_own_metadata_never_reaches_the_file(g, same_layer):
    """A hardlink entry's mode (setuid), owner, mtime and PAX xattrs (security.capability)
    are not the file's: GNU tar, Go and umoci ignore them.  Applied to the shared inode they
    would make the image's f a setuid-1234 binary with CAP_SYS_ADMIN."""
    base = Tar().file("f", b"x", mode=0o644)
    link = Tar().pax([("SCHILY.xattr.security.capability", CAP), ("SCHILY.xattr.user.evil", b"1"),
                      ("mtime", "5")]).hardlink("h", "f", mode=0o6755, uid=1234, gid=99)
    layers = [Tar().raw(base.bytes(end=False)).raw(link.bytes())] if same_layer else [base, link]
    tree = agree(g, layers)
    for name in ("f", "h"):
        e = tree.entries[name]
        assert (e.mode, e.uid, e.gid, e.xattrs) == (0o644, 0, 0, ()), (name, e)
        assert e.mtime != 5, (name, e)
    assert frozenset({"f", "h"}) in tree.links

# --- link names and names through lower symlinks ----------------------------------------------

def test_hardlink_through_an_absolute_lower_symlink_stays_in_the_root(g):
    tree = agree(g, [Tar().dir("real").file("real/f", b"x").symlink("ln", "/real"), Tar().hardlink("h", "ln/f")])
    assert frozenset({"real/f", "h"}) in tree.links


def test_hardlink_through_a_dotdot_lower_symlink_stays_in_the_root(g):
    tree = agree(g, [Tar().dir("a").dir("real").file("real/f", b"x").symlink("a/ln", "../../../../real"),
                     Tar().hardlink("h", "a/ln/f")])
    assert frozenset({"real/f", "h"}) in tree.links


def test_opaque_marker_and_whiteout_through_a_symlink_to_the_root(g):
    """s -> / in a lower layer: s/.wh..wh..opq reaches the root through it (as umoci and
    containerd resolve it) and hides all the layers below, s itself included; s/new then
    implies a new directory s.  The same on every path, and nothing outside the root."""
    tree = agree(g, [Tar().file("keep", b"k").dir("d").file("d/x", b"x").symlink("s", "/"),
                     Tar().opaque("s").file("s/new", b"n").whiteout("s/keep")])
    assert sorted(tree.entries) == ["s", "s/new"] and tree.entries["s"].type == "dir"


def test_pax_linkpath_makes_a_symlink_to_the_root_that_the_next_layer_writes_through(g):
    tree = agree(g, [Tar().pax([("linkpath", "/")]).symlink("up", "harmless"), Tar().file("up/x", b"x")])
    assert tree.entries["up"].target == "/" and tree.entries["x"].type == "file"


def test_pax_linkpath_absolute_and_dotdot_on_a_hardlink_is_rerooted(g):
    tree = agree(g, [Tar().dir("etc").file("etc/passwd", b"root:x:0:0"),
                     Tar().pax([("linkpath", "/../../etc/passwd")]).hardlink("pw", "harmless")])
    assert frozenset({"etc/passwd", "pw"}) in tree.links


@pytest.mark.parametrize("rename", [
    lambda t: t.pax([("path", "dir/../.wh.victim")]).file("harmless", b""),
    lambda t: t.gnu_longname("a/../.wh.victim").file("harmless", b""),
], ids=["pax-path", "gnu-longname"])
def test_a_renaming_record_that_makes_a_whiteout_is_a_whiteout_everywhere(g, rename):
    """The whiteout name comes from the extended record, after normalisation: every path reads
    the same name, so victim goes on every path (and nothing named harmless appears)."""
    tree = agree(g, [Tar().file("victim", b"v").file("keep", b"k"), rename(Tar())])
    assert "victim" not in tree.entries and "harmless" not in tree.entries and "keep" in tree.entries


def test_a_hardlink_named_like_a_whiteout_is_a_whiteout(g):
    tree = agree(g, [Tar().file("victim", b"v").file("t", b"t"), Tar().hardlink(".wh.victim", "t")])
    assert "victim" not in tree.entries and ".wh.victim" not in tree.entries


def test_a_symlink_named_like_an_opaque_marker_is_one(g):
    """d/.wh..wh..opq as a symlink to /etc: d is opaque everywhere, and no symlink to /etc exists."""
    tree = agree(g, [Tar().dir("d").file("d/x", b"x"), Tar().symlink("d/.wh..wh..opq", "/etc")])
    assert "d/x" not in tree.entries and not any(e.target == "/etc" for e in tree.entries.values())


# --- names linked to store objects, then rewritten ------------------------------------------

@pytest.mark.parametrize("layers", [
    [Tar().file("g", b"A" * 100).file("f", b"A" * 100).file("f", b"B" * 100)],
    [Tar().file("g", b"A" * 3000).file("f", b"A" * 3000).file("f", b"B" * 5000).hardlink("h", "g").file("g", b"C")],
    [Tar().file("g", b"A" * 100).file("f", b"A" * 100).hardlink("h", "f").file("f", b"B" * 100)],
    [Tar().file("g", b"A" * 100), Tar().file("f", b"A" * 100).whiteout("f").file("f", b"Z")],
    [Tar().file("g", b"A" * 100).file("f", b"A" * 100).symlink("f", "g").file("f", b"D")],
], ids=["rewritten", "rewritten-bigger-then-hardlinked", "hardlinked-then-rewritten", "whited-out-then-recreated",
        "replaced-by-a-symlink-then-a-file"])
def test_a_name_linked_to_a_store_object_then_rewritten_never_writes_into_the_object(g, layers):
    """store-relink extracts these over a store that has the content A as an object: f is
    named by a link to it, then rewritten by a later entry.  Writing through that name (an
    O_TRUNC open) would change every image sharing the object: fsck (every object hashes to
    its name) and the trees of every path say it did not."""
    tree = agree(g, layers)
    assert tree.entries["f"].type == "file"
    assert _content(g, "f") != b"A" * 100 and _content(g, "f") != b"A" * 3000


# --- one entry, two names: GNU long name vs PAX path ----------------------------------------

@pytest.mark.parametrize("build,entry", [
    (lambda: Tar().gnu_longname("first" * 40).pax([("path", ".wh.victim")]).file("harmless", b""), "first"),
    (lambda: Tar().pax([("path", ".wh.victim")]).gnu_longname("long/" + "n" * 120).file("harmless", b""), "long/"),
    (lambda: Tar().gnu_longlink("keep").pax([("linkpath", "victim")]).hardlink("h", "x"), "h"),
    (lambda: Tar().pax([("path", "s"), ("linkpath", "/etc")]).gnu_longlink("keep").symlink("u", "x"), "s"),
], ids=["longname-then-pax-path", "pax-path-then-longname", "longlink-vs-linkpath", "linkpath-vs-longlink"])
def test_a_gnu_long_name_and_a_pax_path_that_differ_are_refused_everywhere(g, build, entry):
    """GNU tar reads the PAX record, Go's archive/tar (docker, containerd, umoci, most
    scanners) the GNU header, bsdtar the last of the two: an entry that is a harmless file to
    one reader and a whiteout of victim to the other.  lamina read the PAX one (so a layer Go
    tools list as "firstfirst..." deleted victim); it now refuses the entry, naming it."""
    raws = [Tar().file("victim", b"v").file("keep", b"k").bytes(), build().bytes()]
    results = run_paths(g.dest, raws)
    for path, r in results.items():
        assert isinstance(r, Exception), (path, r)
        assert "entry '" + entry in str(r) and "PAX" in str(r), (path, str(r))
    g.check()


def test_a_gnu_long_name_and_a_pax_path_that_agree_are_read(g):
    name = "d/" + "n" * 150
    tree = agree(g, [Tar().dir("d").gnu_longname(name + "/").pax([("path", name)]).dir("zz")
                     .gnu_longname(name + "/f").pax([("path", name + "/f")]).file("zz/f", b"f")])
    assert tree.entries[name].type == "dir" and tree.entries[name + "/f"].type == "file"
