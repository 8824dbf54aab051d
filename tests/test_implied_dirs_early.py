"""Directories a layer implies, made before the layers below it are known (``early_dirs``).

The store extracts an image's layers side by side (overlay format): a layer waited for every
layer below it at its first entry whose parent directory it does not list (``usr/bin/x``
without ``usr``), since that directory is copied up with the metadata it has below.  With
``early_dirs`` the directory is made at once and gets that metadata once the layers below
are known (at the next entry that needs them, or at the end of the layer); if a layer below
has no directory there after all (a symlink: the entries under it belong elsewhere), the
extractor raises ImpliedDirMoved and the store extracts the layer again, waiting.

Each case extracts the top layer both ways over the same finished layers and requires the
same layer directory (owners, modes, times, xattrs, whiteouts, opaque markers), and runs the
image through every path (everypath.py), where the store extracts the layers side by side.
"""
from __future__ import annotations

import dataclasses
import os
import time

import pytest

from conftest import require_root
from everypath import assert_agree, describe, run_paths
from layerkit import apply, overlay_layers
from tarbuild import Tar
from treecmp import compare, snapshot

T = 1_000_000_000  # a time no directory made during the test has


def _new_dir_times_dropped(tree, since):
    """Directory times kept, except those the kernel gave a directory made during the test
    (a new implied directory's: not the image's)."""
    entries = {p: (dataclasses.replace(e, mtime=None) if e.type == "dir" and e.mtime >= since else e)
               for p, e in tree.entries.items()}
    return dataclasses.replace(tree, entries=entries)


def _layer_tree(path, since):
    return _new_dir_times_dropped(snapshot(path, include_root=True, dir_mtime=True), since)


def both_ways(tmp_path, lowers, top):
    """Extract ``top`` over ``lowers`` (tars, bottom first) waiting for them, and early: (the
    waiting result, the early result, how many entries of the top layer were on disk each time
    the early extraction asked for the layers below).  A result is a Snapshot or the error."""
    from lamina import errors
    since = int(time.time()) - 1
    dirs = [os.fspath(d) for d in overlay_layers(tmp_path, lowers, prefix="lower")]
    top_p = tmp_path / "top.tar"
    top_p.write_bytes(top.bytes())
    waiting, early = tmp_path / "waiting", tmp_path / "early"
    asked = []

    def provider():
        asked.append(sum(len(fs) + len(ds) for _, ds, fs in os.walk(early)))
        return dirs

    out = []
    for dest, kw in ((waiting, dict(lower_dirs=dirs)),
                     (early, dict(defer_lowers=True, lowers_provider=provider, early_dirs=True))):
        dest.mkdir()
        try:
            apply(top_p, dest, format="overlay", **kw)
            out.append(_layer_tree(dest, since))
        except (errors.NeedsLowers, errors.LaminaError) as e:  # ImpliedDirMoved, or the entry refused
            out.append(e)
    return out[0], out[1], asked


@pytest.fixture
def root():
    require_root()


def test_a_layer_implying_directories_asks_for_the_layers_below_only_at_its_end(tmp_path, root):
    """The bench image's second layer names usr/bin but not usr: it waited there, at its
    309th entry, for the whole bottom layer (extraction and dedup pass) and so ran after it,
    not beside it.  Now the provider is called once, after the last entry is on disk, and the
    layer comes out as the waiting extraction makes it."""
    lower = (Tar().dir("usr", mode=0o750, uid=12, gid=34, mtime=T).dir("usr/bin", mode=0o711, mtime=T + 1)
             .file("usr/bin/old", b"o"))
    top = Tar()
    for i in range(50):
        top.file(f"etc/f{i}", b"e")
    top.dir("etc", mode=0o755)
    top.file("usr/bin/new", b"n").file("usr/lib/x/y", b"y")
    for i in range(50):
        top.file(f"var/f{i}", b"v")
    waiting, early, asked = both_ways(tmp_path, [lower], top)
    assert len(asked) == 1 and asked[0] >= 100, f"asked for the layers below with {asked} entries made"
    assert not compare(waiting, early, labels=("waiting", "early"))
    assert early.entries["usr"].mode == 0o750 and (early.entries["usr"].uid, early.entries["usr"].gid) == (12, 34)
    assert early.entries["usr/bin"].mode == 0o711 and early.entries["usr/bin"].mtime == T + 1
    assert early.entries["usr/lib"].mode == 0o755 and early.entries["usr/lib/x"].mode == 0o755


CASES = {
    # the topmost layer below that has the directory gives its metadata, xattrs included
    "copied-up-from-the-topmost": (
        [Tar().dir("a", mode=0o700, uid=1, gid=1, mtime=T).dir("a/b", mode=0o755, mtime=T),
         Tar().pax({"SCHILY.xattr.user.k": "v"}).dir("a", mode=0o750, uid=1234, gid=5678, mtime=T + 5)
         .dir("a/b", mode=0o701, uid=7, gid=8, mtime=T + 6)],
        Tar().file("a/b/c/f", b"f")),
    "nothing-below": ([Tar().file("z", b"z")], Tar().file("x/y/f", b"f").file("x/g", b"g")),
    "whited-out-in-a-middle-layer": (
        [Tar().dir("a", mode=0o700, mtime=T).file("a/old", b"o"), Tar().whiteout("a")],
        Tar().file("a/f", b"f")),
    "under-an-opaque-directory-below": (
        [Tar().dir("d", mtime=T).dir("d/old", mode=0o700, mtime=T).file("d/old/x", b"x"),
         Tar().dir("d", mode=0o750, mtime=T + 1).opaque("d")],
        Tar().file("d/old/f", b"f")),
    "named-later-in-the-layer": (
        [Tar().dir("a", mode=0o700, uid=5, gid=5, mtime=T).file("a/old", b"o")],
        Tar().file("a/f", b"f").dir("a", mode=0o711, uid=42, gid=43, mtime=T + 9)),
    "replaced-by-a-symlink-later": (
        [Tar().dir("a", mode=0o700, mtime=T), Tar().dir("t")],
        Tar().file("a/f", b"f").symlink("a", "t")),
    "a-whiteout-in-it-later": (
        [Tar().dir("a", mode=0o750, mtime=T).file("a/g", b"g").file("a/h", b"h")],
        Tar().file("a/f", b"f").whiteout("a/g").whiteout("a/nothing")),
    "made-opaque-later": (
        [Tar().dir("a", mode=0o750, mtime=T).dir("a/b", mode=0o700, mtime=T).file("a/x", b"x")],
        Tar().file("a/b/f", b"f").opaque("a")),
    "whited-out-later": (
        [Tar().dir("a", mode=0o750, mtime=T).dir("a/b", mode=0o700, mtime=T).file("a/b/old", b"o").file("a/x", b"x")],
        Tar().file("a/b/f", b"f").whiteout("a")),
    "a-hardlink-to-a-lower-file-in-it": (
        [Tar().dir("a", mode=0o750, mtime=T).file("a/f", b"lower", mode=0o600)],
        Tar().file("a/new", b"n").hardlink("a/h", "a/f").file("a/more/x", b"x")),
    "through-a-symlink-of-this-layer": (
        [Tar().dir("a", mode=0o750, mtime=T).dir("a/b", mode=0o700, mtime=T)],
        Tar().symlink("s", "a").file("s/b/f", b"f")),
    "a-default-acl-below": (
        [Tar().pax([("SCHILY.xattr.system.posix_acl_default",
                     bytes.fromhex("02000000" "01000700ffffffff" "04000500ffffffff" "20000500ffffffff"))])
         .dir("a", mode=0o755, mtime=T)],
        Tar().file("a/f", b"f").dir("a/d", mode=0o700).file("a/n/x", b"x")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_an_implied_directory_made_early_settles_as_the_waiting_walk_makes_it(tmp_path, root, name):
    same_both_ways(tmp_path, name, *CASES[name])


def same_both_ways(tmp_path, name, lowers, top):
    """The layer extracted early (beside the layers below) is the waiting extraction's."""
    waiting, early, _ = both_ways(tmp_path, lowers, top)
    assert not isinstance(waiting, Exception), waiting
    assert not isinstance(early, Exception), f"{name}: {early!r}"
    diff = compare(waiting, early, labels=("waiting", "early"))
    assert not diff, f"{name}:\n{diff}"


MOVED = {
    # merged /usr: a layer naming lib/x without lib writes into usr/lib
    "a-symlink-below": ([Tar().dir("usr").dir("usr/lib", mode=0o700, mtime=T).symlink("lib", "usr/lib")],
                        Tar().file("lib/x/f", b"f").file("etc/g", b"g")),
    "a-file-below": ([Tar().file("a", b"not a directory")], Tar().file("a/f", b"f")),
    # the entry that implied it is refused over the file below, whatever the layer does next
    # (the differential fuzzer's case: the store took the layer, every other path refused it)
    "a-file-below-replaced-later": ([Tar().file("a", b"not a directory")], Tar().file("a/b", b"b").file("a", b"a")),
    "a-file-below-named-later": ([Tar().file("a", b"not a directory")], Tar().file("a/b", b"b").dir("a")),
    # ... and a later entry refused for a reason of its own: the waiting walk refused a/b first
    "a-file-below-then-another-entry-refused": (
        [Tar().file("a", b"not a directory")],
        Tar().dir("x").file("a/b", b"b").file("x", b"now a file").file("x/y", b"y")),
    "a-symlink-below-a-directory-made-early": (
        [Tar().dir("a", mtime=T).dir("real").symlink("a/b", "../real")], Tar().file("a/b/c/f", b"f")),
}


@pytest.mark.parametrize("name", list(MOVED))
def test_an_implied_directory_that_is_not_one_below_makes_the_store_extract_again(tmp_path, root, name):
    """Made early, it turns out to be a symlink or a file below: the early extraction says so
    (ImpliedDirMoved, a NeedsLowers), and the waiting one follows the symlink or refuses."""
    from lamina import errors
    lowers, top = MOVED[name]
    waiting, early, _ = both_ways(tmp_path, lowers, top)
    assert isinstance(early, errors.ImpliedDirMoved), f"{name}: {early!r}"
    if name.startswith("a-file-below"):
        assert isinstance(waiting, errors.LaminaError), waiting
    else:
        assert not isinstance(waiting, Exception), waiting


@pytest.mark.parametrize("name", list(CASES) + list(MOVED))
def test_every_path_agrees_on_implied_directories(g, name):
    """The store extracts the layers side by side, so there the top layer meets its implied
    directories early (and extracts again where one moved); every path gives one tree."""
    agree_on_every_path(g, *(CASES.get(name) or MOVED[name]))


def agree_on_every_path(g, lowers, top):
    """Every path gives one tree (or one error) for ``lowers`` under ``top``, the times of
    directories a path makes itself left out, and nothing outside the guard moved."""
    raws = [t.bytes() for t in lowers] + [top.bytes()]
    since = int(time.time()) - 1
    results = {p: r if isinstance(r, Exception) else _new_dir_times_dropped(r, since)
               for p, r in run_paths(g.dest, raws, dir_mtime=True).items()}
    assert_agree(results, context=describe(raws))
    g.check()


def test_the_store_extracts_a_layer_again_when_an_implied_directory_moved(tmp_path, root):
    """snapshots.ensure of the top layer while the one below is not there: its implied lib/ is
    made early, the layer below (made while it waits) has lib -> usr/lib, and the layer is
    extracted again over it: lib/x/f lands in usr/lib as the mount shows it."""
    from lamina.store import Store
    from lamina.store import snapshots
    from lamina.store.image import chain_ids
    from layerkit import gz, sha256
    store = Store(tmp_path / "store")
    tars = [Tar().dir("usr", mtime=T).dir("usr/lib", mode=0o700, mtime=T).symlink("lib", "usr/lib").bytes(),
            Tar().file("lib/x/f", b"f").file("etc/g", b"g").bytes()]
    digests, diff_ids = [], []
    for t in tars:
        digests.append(store.put_blob(gz(t)))
        diff_ids.append(sha256(t))
    chains = chain_ids(diff_ids)
    asked = []

    def wait_lowers():
        asked.append(True)
        snapshots.ensure(store.paths, digests[0], diff_ids[0])
        return True

    fs = snapshots.ensure(store.paths, digests[1], diff_ids[1], chains[0], defer=True, wait_lowers=wait_lowers)
    assert asked, "the top layer never asked for the layer below"
    assert os.path.isfile(os.path.join(fs, "usr/lib/x/f")) and not os.path.lexists(os.path.join(fs, "lib"))
    assert os.path.isfile(os.path.join(fs, "etc/g"))
    assert not [n for n in os.listdir(store.paths.snapshots) if n.startswith(".")], "a temp dir was left"


def test_unpack_in_the_overlay_format_reads_a_layer_again_when_an_implied_directory_moved(tmp_path, root):
    """unpack --format overlay extracts its layers side by side too: lib/x/f over lib -> usr/lib
    is made early in the top layer's own lib/, found to be a symlink below, and the layer read
    again (the trace says so), so that the top layer has usr/lib/x/f as the mount shows it."""
    import subprocess
    import sys
    from everypath import write_image
    layout = write_image(tmp_path / "layout", [t.bytes() for t in MOVED["a-symlink-below"][0]]
                         + [MOVED["a-symlink-below"][1].bytes()])
    trace, dest = tmp_path / "trace", tmp_path / "out"
    subprocess.run([sys.executable, "-m", "lamina", "unpack", "--format", "overlay", f"oci:{layout}:img", dest],
                   check=True, capture_output=True, env=dict(os.environ, LAMINA_TRACE=str(trace)), cwd="/")
    assert "apply-again layer=1" in trace.read_text()
    top = dest / "layers" / "1"
    assert (top / "usr/lib/x/f").is_file() and not os.path.lexists(top / "lib")
