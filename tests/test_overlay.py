"""format="overlay": per-layer dirs mounted with kernel overlayfs must show exactly
the format="dir" flatten (and umoci's unpack), with no overlay artifacts visible;
the layer dirs themselves hold char 0/0 whiteouts and trusted.overlay.opaque=y.
"""
from __future__ import annotations

import os
import stat

import pytest

from conftest import require_root, run
from everypath import overlay_mount
from layerkit import apply, read_layout, sha256, write
from tarbuild import Tar
from treecmp import assert_same, snapshot
from umoci_images import TAGS

pytestmark = pytest.mark.usefixtures("_root")


@pytest.fixture
def _root():
    require_root()


def overlay_layers(blobs, base):
    """blobs: [(blob_path_or_bytes, diff_id)] bottom first -> layer dirs."""
    dirs = []
    for i, (blob, diff_id) in enumerate(blobs):
        d = base / "layers" / str(i)
        d.mkdir(parents=True)
        if isinstance(blob, bytes):
            blob = write(base / f"blob{i}", blob)
        # one layer at a time, as a snapshotter would: the dirs below are given
        apply(blob, d, format="overlay", diff_id=diff_id, lower_dirs=list(dirs))
        dirs.append(d)
    return dirs


def dir_flatten(blobs, dest):
    for blob, diff_id in blobs:
        if isinstance(blob, bytes):
            blob = write(str(dest) + f".blob{sha256(blob)[7:19]}", blob)
        apply(blob, dest, format="dir", diff_id=diff_id)
    return dest


def assert_no_artifacts(snap, where):
    for p, e in snap.entries.items():
        assert not os.path.basename(p).startswith(".wh."), f"{where}: whiteout file visible: {p}"
        assert not (e.type == "chr" and e.rdev == (0, 0)), f"{where}: 0/0 whiteout device visible: {p}"
        for k, _ in e.xattrs:
            assert not k.startswith(("trusted.overlay.", "user.overlay.")), f"{where}: {p} has {k}"


def layer_artifacts(layer_dir):
    """-> (whiteouts: set of paths that are char 0/0, opaque: set of dirs with trusted.overlay.opaque=y)."""
    s = snapshot(layer_dir, include_root=True, mtime=False)
    wh = {p for p, e in s.entries.items() if e.type == "chr" and e.rdev == (0, 0)}
    opq = {p for p, e in s.entries.items() if e.type == "dir" and ("trusted.overlay.opaque", b"y") in e.xattrs}
    stray = [p for p in s.paths() if os.path.basename(p).startswith(".wh.")]
    assert not stray, f"{layer_dir}: whiteout marker files left as plain files: {stray}"
    return wh, opq


def compare_overlay_with_flatten(tmp_path, blobs, context, also=None):
    flat = dir_flatten(blobs, tmp_path / "flat")
    dirs = overlay_layers(blobs, tmp_path)
    with overlay_mount(dirs, tmp_path / "mnt") as mnt:
        merged = snapshot(mnt)
        assert_no_artifacts(merged, "overlay mount")
        assert_same(snapshot(flat), merged, labels=("dir-flatten", "overlay-mount"), context=context)
        if also is not None:
            assert_same(snapshot(also), merged, labels=("umoci", "overlay-mount"), context=context)
    return dirs, merged


# ---------------------------------------------------------------------------
# umoci images
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("tag", [TAGS[1], TAGS[-1]])
def test_umoci_image_overlay_equals_flatten(tmp_path, umoci_image, tag):
    _, _, layers = read_layout(umoci_image, tag)
    out = tmp_path / "umoci"
    run("umoci", "raw", "unpack", "--image", f"{umoci_image}:{tag}", out)
    dirs, _ = compare_overlay_with_flatten(tmp_path, [(b, d) for _, d, b in layers], tag, also=out)
    wh, _ = layer_artifacts(dirs[1])
    assert "etc/shadow" in wh and "victim" in wh, f"layer 1 whiteouts: {sorted(wh)}"


def test_umoci_replace_image_overlay(tmp_path, umoci_replace_image):
    _, _, layers = read_layout(umoci_replace_image, "t3")
    compare_overlay_with_flatten(tmp_path, [(b, d) for _, d, b in layers], "replace t3")


# ---------------------------------------------------------------------------
# hand-made image: opaque markers at different positions, whiteouts of files and
# dirs, file <-> dir replacement, whiteout + same name in one layer
# ---------------------------------------------------------------------------

def handmade_layers():
    l0 = Tar()
    l0.dir("a").file("a/keep", b"keep").file("a/gone", b"gone").dir("a/sub").file("a/sub/deep", b"deep")
    l0.dir("b").file("b/x", b"x")
    l0.file("c", b"c file")
    l0.dir("d").file("d/1", b"d1")
    l0.dir("e").file("e/1", b"e1").dir("e/olddir").file("e/olddir/f", b"eo")
    l0.file("f", b"f file")
    l0.dir("g").file("g/1", b"g1").file("g/2", b"g2")
    l0.dir("i").file("i/k", b"ik")
    l0.dir("j", mode=0o700).file("j/lower", b"jl")

    l1 = Tar()
    l1.dir("a").whiteout("a/gone")                               # file whiteout
    l1.whiteout("b")                                             # dir whiteout
    l1.dir("c").file("c/inner", b"inner")                        # file -> dir
    l1.file("d", b"d is file")                                   # dir -> file
    l1.dir("e").opaque("e").file("e/new", b"new")                # opaque first
    l1.dir("g").file("g/new", b"gnew").opaque("g")               # opaque last
    l1.dir("h").opaque("h").file("h/hh", b"hh")                  # opaque on a brand-new dir
    l1.whiteout("nothere")                                       # whiteout of nothing
    l1.dir("j", mode=0o750).file("j/upper", b"ju")               # dir over dir merges

    l2 = Tar()
    l2.dir("b").file("b/y", b"y")                                # recreated after whiteout
    l2.dir("e").file("e/n1", b"n1").opaque("e").file("e/n2", b"n2")   # opaque in the middle
    l2.dir("a").whiteout("a/sub")                                # dir whiteout in a subdir
    l2.symlink("f", "c/inner")                                   # file -> symlink

    l3 = Tar()
    l3.whiteout("a").file("a", b"a is file")                     # whiteout then same name
    l3.file("i", b"i file").whiteout("i")                        # same name then whiteout
    l3.dir("g").whiteout("g/new").file("g/z", b"z")
    return [l0.bytes(), l1.bytes(), l2.bytes(), l3.bytes()]


EXPECTED_FINAL = {
    "a": ("file", b"a is file"), "b": ("dir", None), "b/y": ("file", b"y"),
    "c": ("dir", None), "c/inner": ("file", b"inner"), "d": ("file", b"d is file"),
    "e": ("dir", None), "e/n1": ("file", b"n1"), "e/n2": ("file", b"n2"),
    "f": ("symlink", "c/inner"), "g": ("dir", None), "g/z": ("file", b"z"),
    "h": ("dir", None), "h/hh": ("file", b"hh"), "i": ("file", b"i file"),
    "j": ("dir", None), "j/lower": ("file", b"jl"), "j/upper": ("file", b"ju"),
}


def _check_expected(root, snap):
    assert snap.paths() == sorted(EXPECTED_FINAL), \
        f"got {snap.paths()}\nwant {sorted(EXPECTED_FINAL)}"
    for p, (t, v) in EXPECTED_FINAL.items():
        assert snap[p].type == t, f"{p}: {snap[p].type} != {t}"
        if t == "file":
            assert open(os.path.join(root, p), "rb").read() == v, p
        if t == "symlink":
            assert snap[p].target == v
    assert snap["j"].mode == 0o750


def test_handmade_dir_flatten_expected(tmp_path):
    blobs = [(b, None) for b in handmade_layers()]
    flat = dir_flatten(blobs, tmp_path / "flat")
    _check_expected(flat, snapshot(flat))


def test_handmade_overlay_mount_expected_and_equals_flatten(tmp_path):
    blobs = [(b, sha256(b)) for b in handmade_layers()]
    dirs, merged = compare_overlay_with_flatten(tmp_path, blobs, "hand-made")
    with overlay_mount(dirs, tmp_path / "mnt2") as mnt:
        _check_expected(mnt, snapshot(mnt))


def test_handmade_overlay_layer_artifacts(tmp_path):
    blobs = [(b, sha256(b)) for b in handmade_layers()]
    dirs = overlay_layers(blobs, tmp_path)
    wh0, opq0 = layer_artifacts(dirs[0])
    assert wh0 == set() and opq0 == set()
    wh1, opq1 = layer_artifacts(dirs[1])
    assert {"a/gone", "b"} <= wh1 and wh1 <= {"a/gone", "b", "nothere"}, sorted(wh1)
    assert opq1 == {"e", "g", "h"}, sorted(opq1)
    wh2, opq2 = layer_artifacts(dirs[2])
    assert wh2 == {"a/sub"} and opq2 == {"e"}, (sorted(wh2), sorted(opq2))
    wh3, opq3 = layer_artifacts(dirs[3])
    assert wh3 == {"g/new"} and opq3 == set(), (sorted(wh3), sorted(opq3))
    s3 = snapshot(dirs[3])
    assert s3["a"].type == "file" and s3["i"].type == "file", \
        "a whiteout and an entry of the same name in one layer: the entry wins"
    # the whiteout device is what overlayfs expects: char 0/0
    st = os.lstat(dirs[1] / "b")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    # layers keep their own content, not the merged one
    s1 = snapshot(dirs[1])
    assert "e/new" in s1 and "e/1" not in s1 and "g/new" in s1 and "j/upper" in s1 and "j/lower" not in s1


def test_overlay_opaque_positions_single_layer(tmp_path):
    """Opaque marker first / middle / last, with and without the dir entry itself."""
    for pos in ("first", "middle", "last"):
        for with_dir in (True, False):
            base = tmp_path / f"{pos}-{with_dir}"
            base.mkdir()
            lower = Tar().dir("d").file("d/old", b"o").dir("d/sub").file("d/sub/oldsub", b"s").bytes()
            up = Tar()
            if with_dir:
                up.dir("d", mode=0o711)
            items = [("f", "d/n1"), ("d", "d/sub"), ("f", "d/sub/n2")]
            at = {"first": 0, "middle": 1, "last": 3}[pos]
            for i, (k, n) in enumerate(items + [(None, None)]):
                if i == at:
                    up.opaque("d")
                if k == "f":
                    up.file(n, n.encode())
                elif k == "d":
                    up.dir(n)
            blobs = [(lower, None), (up.bytes(), None)]
            dirs, merged = compare_overlay_with_flatten(base, blobs, f"opaque {pos} dir-entry={with_dir}")
            assert merged.paths() == ["d", "d/n1", "d/sub", "d/sub/n2"], (pos, with_dir, merged.paths())
            _, opq = layer_artifacts(dirs[1])
            assert opq == {"d"}


def test_overlay_whiteout_metadata_and_xattrs_dropped(tmp_path):
    """Archive-supplied trusted.overlay.* must not turn a dir opaque (or redirect) in overlay format."""
    lower = Tar().dir("d").file("d/lower", b"l").bytes()
    up = Tar().pax([("SCHILY.xattr.trusted.overlay.opaque", b"y")]).dir("d").file("d/upper", b"u").bytes()
    dirs, merged = compare_overlay_with_flatten(tmp_path, [(lower, None), (up, None)], "xattr-opaque")
    assert "d/lower" in merged and "d/upper" in merged


def test_overlay_unlisted_parent_dirs_inherit_lower_metadata(tmp_path):
    """A layer that adds p/new without listing p/ (umoci does this) must not make the
    mount show an invented p (default mode/owner/xattrs) over the real one below."""
    lower = Tar()
    lower.pax([("SCHILY.xattr.user.keep", b"me"), ("SCHILY.xattr.trusted.t", b"tt")])
    lower.dir("p", mode=0o710, uid=1234, gid=4321, mtime=1_000_000_000)
    lower.dir("p/q", mode=0o700, uid=7, gid=8).file("p/q/old", b"old")
    upper = Tar().file("p/q/new", b"new").file("p/top", b"top")
    blobs = [(lower.bytes(), None), (upper.bytes(), None)]
    dirs, merged = compare_overlay_with_flatten(tmp_path, blobs, "unlisted parents")
    assert merged["p"].mode == 0o710 and (merged["p"].uid, merged["p"].gid) == (1234, 4321)
    assert dict(merged["p"].xattrs) == {"user.keep": b"me", "trusted.t": b"tt"}
    assert merged["p/q"].mode == 0o700 and (merged["p/q"].uid, merged["p/q"].gid) == (7, 8)
    assert "p/q/old" in merged and "p/q/new" in merged


def test_whiteout_nodes_carry_the_entrys_time(tmp_path):
    """The same layer gives the same snapshot: a whiteout node gets the .wh. entry's
    mtime, not the time of the extraction."""
    require_root()
    lower, upper = tmp_path / "l0", tmp_path / "l1"
    import io
    apply(io.BytesIO(Tar().file("f", b"x").bytes()), lower, format="overlay")
    apply(io.BytesIO(Tar().whiteout("f", mtime=1234567890).bytes()), upper, format="overlay", lower_dirs=[lower])
    st = os.lstat(upper / "f")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert st.st_mtime == 1234567890
