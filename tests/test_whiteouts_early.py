"""Whiteouts an overlay-format layer meets before the layers below it are known.

The store extracts an image's layers side by side (copy, load, pull as blobs arrive), and so
does ``unpack --format overlay``.  A whiteout ``a/.wh.x`` is made (a 0/0 node) only where a
layer below shows ``a/x``: a layer that met one early (``RUN rm -rf /var/lib/apt/lists/*``
above the layer that ran ``apt-get update``) waited there for every layer below and ran after
them, not beside them.  Now a whiteout whose parent the layer has as a directory of its own
(so the mount resolves it there whatever is below) and whose name it has not written is held
until the layers below are known: at the end of the layer, or at the first later entry that
touches its name (at, under or above it) or needs the layers below anyway, which applies the
held whiteouts first, in layer order.

Each case extracts the top layer both ways over the same finished layers (waiting for them,
and early) and requires the same layer directory, then runs the image through every path.
"""
from __future__ import annotations

import os

import pytest

from conftest import require_root
from tarbuild import Tar
from layerkit import overlay_layers
from test_implied_dirs_early import agree_on_every_path, both_ways, same_both_ways
from treecmp import compare

T = 1_000_000_000

CASES = {
    # made where a layer below shows the name, dropped where none does (nor its directory)
    "hides-something-and-nothing": (
        [Tar().dir("a", mtime=T).file("a/x", b"x").file("a/y", b"y").file("r", b"r")],
        Tar().dir("a", mtime=T + 1).whiteout("a/x", mtime=T + 2).whiteout("a/nothing").whiteout("r", mtime=T + 3)
        .whiteout("not-below").dir("new").whiteout("new/nothing").file("a/z", b"z")),
    "a-run-in-one-directory": (
        [Tar().dir("d", mtime=T).file("d/f0", b"0").file("d/f2", b"2").file("d/f4", b"4")],
        Tar().dir("d", mtime=T).whiteout("d/f0").whiteout("d/f1").whiteout("d/f2").whiteout("d/f3")
        .whiteout("d/f4").file("e/g", b"g")),
    "re-created-as-a-file": (
        [Tar().dir("a", mtime=T).file("a/x", b"lower")],
        Tar().dir("a", mtime=T).whiteout("a/x").file("b", b"b").file("a/x", b"upper")),
    "re-created-as-a-directory-over-a-file-below": (
        [Tar().dir("a", mtime=T).file("a/x", b"lower")],
        Tar().dir("a", mtime=T).whiteout("a/x").dir("a/x", mtime=T + 4).file("a/x/f", b"f")),
    "re-created-as-a-directory-over-nothing": (
        [Tar().dir("a", mtime=T).file("a/other", b"o")],
        Tar().dir("a", mtime=T).whiteout("a/x").dir("a/x", mtime=T + 4).file("a/x/f", b"f")),
    "re-created-under-it-as-an-implied-directory": (
        [Tar().dir("a", mtime=T).dir("a/d", mode=0o700, mtime=T).file("a/d/old", b"o")],
        Tar().dir("a", mtime=T).whiteout("a/d").file("a/d/new", b"n")),
    "re-created-through-a-symlink-of-this-layer": (
        [Tar().dir("a", mtime=T).file("a/x", b"lower")],
        Tar().dir("a", mtime=T).whiteout("a/x").symlink("s", "a").dir("s/x", mtime=T + 4).file("s/x/f", b"f")),
    "re-created-through-a-symlink-of-this-layer-over-nothing": (
        [Tar().dir("a", mtime=T)],
        Tar().dir("a", mtime=T).whiteout("a/x").symlink("s", "a").dir("s/x", mtime=T + 4).file("s/x/f", b"f")),
    "its-directory-made-opaque-later": (
        [Tar().dir("a", mtime=T).file("a/x", b"x").file("a/y", b"y")],
        Tar().dir("a", mtime=T).whiteout("a/x").file("a/z", b"z").opaque("a").file("a/w", b"w")),
    "an-opaque-marker-first": (
        [Tar().dir("a", mtime=T).file("a/x", b"x")],
        Tar().dir("a", mtime=T).opaque("a").whiteout("a/x").file("a/z", b"z")),
    "an-opaque-root-later": (
        [Tar().dir("a", mtime=T).file("a/x", b"x").file("r", b"r")],
        Tar().dir("a", mtime=T).whiteout("a/x").whiteout("r").file("q", b"q").opaque("")),
    "its-directory-whited-out-later": (
        [Tar().dir("a", mtime=T).dir("a/b", mtime=T).file("a/b/x", b"x").file("a/y", b"y")],
        Tar().dir("a", mtime=T).dir("a/b", mtime=T).whiteout("a/b/x").file("a/b/n", b"n").whiteout("a")),
    "its-directory-replaced-by-a-file-later": (
        [Tar().dir("a", mtime=T).file("a/x", b"x")],
        Tar().dir("a", mtime=T).whiteout("a/x").file("a", b"now a file")),
    "twice": (
        [Tar().dir("a", mtime=T).file("a/x", b"x")],
        Tar().dir("a", mtime=T).whiteout("a/x", mtime=T + 1).whiteout("a/x", mtime=T + 2)),
    # the parent is a symlink below: the layer does not have it, the walk waits as before
    "its-parent-a-symlink-below": (
        [Tar().dir("t", mtime=T).file("t/x", b"x").symlink("l", "t")],
        Tar().whiteout("l/x").file("z", b"z")),
    # ... and a directory of this layer there hides that symlink: nothing shows below it
    "its-parent-a-directory-over-a-symlink-below": (
        [Tar().dir("t", mtime=T).file("t/x", b"x").symlink("l", "t")],
        Tar().dir("l", mtime=T).whiteout("l/x").file("l/y", b"y")),
    "then-a-whiteout-through-a-symlink-of-this-layer": (
        [Tar().dir("a", mtime=T).file("a/x", b"x").file("a/y", b"y")],
        Tar().dir("a", mtime=T).whiteout("a/x").symlink("s", "a").whiteout("s/y").whiteout("s/x")),
    "of-a-symlink-below": (
        [Tar().dir("a", mtime=T).symlink("a/s", "/etc").symlink("a/dot", ".")],
        Tar().dir("a", mtime=T).whiteout("a/s").whiteout("a/dot").file("a/dot/f", b"f")),
    # a hardlink to a lower file copies it up: one to the name a whiteout before it hid fails
    "a-hardlink-to-another-lower-file": (
        [Tar().dir("a", mtime=T).file("a/f", b"f", mode=0o600).file("a/g", b"g")],
        Tar().dir("a", mtime=T).whiteout("a/f").hardlink("h", "a/g").file("a/n", b"n")),
    "whited-out-then-copied-up": (
        [Tar().dir("a", mtime=T).file("a/f", b"f", mode=0o600).hardlink("a/g", "a/f")],
        Tar().dir("a", mtime=T).whiteout("a/g").hardlink("h", "a/f")),
    # directories the layer implies, made early, before and after it
    "after-an-implied-directory": (
        [Tar().dir("u", mode=0o750, mtime=T).file("u/old", b"o").dir("a", mtime=T).file("a/x", b"x")],
        Tar().file("u/new", b"n").dir("a", mtime=T).whiteout("a/x").whiteout("u/old")),
    "before-an-implied-directory": (
        [Tar().dir("u", mode=0o750, mtime=T).file("u/old", b"o").dir("a", mtime=T).file("a/x", b"x")],
        Tar().dir("a", mtime=T).whiteout("a/x").file("u/new", b"n").file("m/y/f", b"f")),
}

# an entry through a symlink below to the whited-out name: the directory it implies, made early,
# is a symlink below (ImpliedDirMoved), so the store reads the layer again waiting for the layers
# below (test_implied_dirs_early.py); only every path's tree is compared
MOVED = {
    "then-an-entry-through-a-symlink-below-to-it": (
        [Tar().dir("t", mtime=T).file("t/x", b"x").symlink("l", "t")],
        Tar().dir("t", mtime=T).whiteout("t/x").dir("l/x", mtime=T + 4).file("l/x/f", b"f")),
}

FAILING = {
    # the whiteout hid a/f: the link names nothing, whichever order the layer is read in
    "hardlinked-later": (
        [Tar().dir("a", mtime=T).file("a/f", b"f")],
        Tar().dir("a", mtime=T).whiteout("a/f").file("b", b"b").hardlink("h", "a/f")),
}


@pytest.fixture
def root():
    require_root()


@pytest.mark.parametrize("name", list(CASES))
def test_an_early_whiteout_gives_the_layer_the_waiting_extraction_gives(tmp_path, root, name):
    same_both_ways(tmp_path, name, *CASES[name])


@pytest.mark.parametrize("name", list(FAILING))
def test_an_early_whiteout_fails_a_layer_where_the_waiting_extraction_does(tmp_path, root, name):
    from lamina import errors
    lowers, top = FAILING[name]
    waiting, early, _ = both_ways(tmp_path, lowers, top)
    assert isinstance(waiting, errors.LaminaError), waiting
    assert type(early) is type(waiting) and str(early) == str(waiting), (waiting, early)


@pytest.mark.parametrize("name", list(CASES) + list(MOVED) + list(FAILING))
def test_every_path_agrees_on_early_whiteouts(g, name):
    agree_on_every_path(g, *(CASES.get(name) or MOVED.get(name) or FAILING[name]))


def test_a_layer_with_an_early_whiteout_asks_for_the_layers_below_only_at_its_end(tmp_path, root):
    """``rm -rf /var/lib/apt/lists/*`` above the layer that ran ``apt-get update``: the upper
    layer lists var/lib/apt/lists/ and its whiteouts first, then 200 files of its own.  It
    asked for the layers below at its first whiteout (with 5 entries on disk) and so ran after
    them; now it asks once, with all of its entries on disk, and comes out as the waiting
    extraction makes it: the whiteouts of names below made, the others dropped."""
    lists = ["deb_InRelease", "deb_main_Packages", "deb_updates_InRelease"]
    apt = ["var", "var/lib", "var/lib/apt", "var/lib/apt/lists"]
    lower = Tar()
    for d in apt:
        lower.dir(d, mtime=T)
    for x in lists:
        lower.file(f"var/lib/apt/lists/{x}", b"list")
    top = Tar()
    for d in apt:
        top.dir(d, mtime=T + 1)
    for x in lists + ["partial", "lock"]:
        top.whiteout(f"var/lib/apt/lists/{x}", mtime=T + 2)
    for i in range(200):
        top.file(f"usr/share/pkg/f{i}", b"%d" % i)
    waiting, early, asked = both_ways(tmp_path, [lower], top)
    assert len(asked) == 1 and asked[0] >= 200, f"asked for the layers below with {asked} entries made"
    assert not compare(waiting, early, labels=("waiting", "early"))
    made = sorted(p for p, e in early.entries.items() if p.startswith("var/lib/apt/lists/"))
    assert made == [f"var/lib/apt/lists/{x}" for x in sorted(lists)], made
    assert all(early.entries[p].type == "chr" and early.entries[p].rdev == (0, 0) and early.entries[p].mtime == T + 2 for p in made), \
        [early.entries[p] for p in made]


def test_held_whiteouts_past_the_cap_wait_for_the_layers_below(tmp_path, root):
    """Held whiteouts cost memory until the layers below are known: past WH_PENDING_MAX
    (16384) the layer waits for them, as before, and the rest apply as they come; the tree is
    the waiting extraction's either way."""
    lower = Tar().dir("d", mtime=T)
    for i in range(0, 16500, 2):
        lower.file(f"d/f{i}", b"")
    top = Tar().dir("d", mtime=T)
    for i in range(16500):
        top.whiteout(f"d/f{i}")
    top.file("z", b"z")
    waiting, early, asked = both_ways(tmp_path, [lower], top)
    assert len(asked) == 1, asked
    assert not compare(waiting, early, labels=("waiting", "early"))
    assert sum(1 for p in early.entries if p.startswith("d/")) == 8250


def test_a_run_of_held_whiteouts_in_a_deep_directory_opens_it_once(tmp_path, root):
    """Each whiteout held (_defer_whiteout) opened its directory again from the layer's root,
    a walk of its depth per whiteout: 200 whiteouts 20 directories down were 200 lookups of
    that path (strace).  The held run reuses the directory it opened, and the layer is the
    waiting extraction's."""
    import subprocess
    import sys
    dirs = ["/".join(f"d{k}" for k in range(i + 1)) for i in range(20)]
    deep = dirs[-1]
    lower, top = Tar(), Tar()
    for d in dirs:
        lower.dir(d, mtime=T)
        top.dir(d, mtime=T)
    for i in range(0, 200, 2):
        lower.file(f"{deep}/f{i}", b"")
    for i in range(200):
        top.whiteout(f"{deep}/f{i}")
    top.file("z", b"z")
    (tmp_path / "compare").mkdir()
    waiting, early, asked = both_ways(tmp_path / "compare", [lower], top)
    assert len(asked) == 1 and not compare(waiting, early, labels=("waiting", "early"))
    below = overlay_layers(tmp_path, [lower], prefix="below")[0]
    (tmp_path / "top.tar").write_bytes(top.bytes())
    (tmp_path / "out").mkdir()
    script = ("import sys, lamina\n"
              "lamina.apply_layer(sys.argv[1], sys.argv[2], format='overlay', defer_lowers=True,\n"
              "                   lowers_provider=lambda: [sys.argv[3]], early_dirs=True)\n")
    trace = tmp_path / "strace.txt"
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat,openat2", "-o", trace, sys.executable, "-c", script,
                    tmp_path / "top.tar", tmp_path / "out", below], check=True, capture_output=True)
    # with openat2 the whole path in one call; without, the walk's last step
    opens = [line for line in trace.read_text().splitlines() if f'"{deep}"' in line or '"d19"' in line]
    assert len(opens) < 10, f"{len(opens)} opens of the whiteouts' directory:\n" + "\n".join(opens[:5])
    assert sorted(os.listdir(tmp_path / "out" / deep)) == sorted(f"f{i}" for i in range(0, 200, 2))
