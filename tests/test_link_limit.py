"""ext4's link limit (65000 names per inode) on every path (see everypath.py).

tmpfs has no such limit, so the work runs on a loop-mounted ext4.  A layer that names one
file exactly 65000 times is a valid image ext4 can hold: every path must give that tree,
though the store takes names of its own for its files (the extractor's hashed/ name, the
dedup pass's object, --link's names of the snapshot's inodes).  One name more cannot be
made: every path must refuse it with an error naming the entry, and leave the store clean.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from everypath import assert_agree, run_paths
from tarbuild import Tar

EXT4_LINK_MAX = 65000


@pytest.fixture
def ext4(g):
    """A fresh ext4 (4 GiB sparse, enough inodes for 65000 files on every path) mounted on the
    guarded work directory."""
    from conftest import require_tool, run
    require_tool("mkfs.ext4")
    img = g.tmp / "ext4.img"
    with open(img, "wb") as f:
        f.truncate(4 << 30)
    run("mkfs.ext4", "-q", "-F", "-N", "400000", img)
    run("mount", "-o", "loop", img, g.dest)
    try:
        yield g
    finally:
        import gc
        gc.collect()   # run_paths's Store objects hold fds on the mount
        if subprocess.run(["umount", os.fspath(g.dest)]).returncode != 0:
            subprocess.run(["umount", "-l", os.fspath(g.dest)], check=True)
        os.unlink(img)


def _fsck_clean(root):
    from lamina.store import Store
    with Store(root) as store:
        report = store.fsck()
    assert report.clean, [str(f) for f in report.findings]


def _many_names(n, name="d/f"):
    t = Tar().dir("d").file(name, b"x" * 100)
    for i in range(n - 1):
        t.hardlink(f"d/l{i}", name)
    return t


def test_a_file_with_as_many_names_as_ext4_allows_unpacks_on_every_path(ext4):
    """65000 names of one file.  The store's extraction named each file it wrote once more
    (its hashed/ name, for the dedup pass), so the 65000th name failed with EMLINK in every
    store path ("entry 'd/l64998': hardlink failed: Too many links") though dir and overlay
    gave the tree."""
    results = run_paths(ext4.dest, [_many_names(EXT4_LINK_MAX).bytes()])
    tree = assert_agree(results, context="65000 names of d/f")
    assert tree is not None, results
    group = next(g for g in tree.links if "d/f" in g)
    assert len(group) == EXT4_LINK_MAX
    assert os.lstat(os.path.join(ext4.dest, "store-copy", "d/f")).st_nlink == EXT4_LINK_MAX
    _fsck_clean(ext4.dest / "store")


def test_one_name_past_ext4s_limit_is_refused_naming_the_entry_on_every_path(ext4):
    """An upper layer hardlinks a lower file that already has 65000 names (a copy-up in the
    overlay format, which takes them all along): no path can make it; each says which entry,
    and the store keeps nothing of that layer."""
    upper = Tar().hardlink("up", "d/f").bytes()
    results = run_paths(ext4.dest, [_many_names(EXT4_LINK_MAX).bytes(), upper])
    assert all(isinstance(r, Exception) for r in results.values()), results
    for path, err in results.items():
        assert "entry 'up'" in str(err) and "d/f" in str(err), (path, err)
    from lamina.store import Store
    with Store(ext4.dest / "store") as store:
        assert len(store.snapshots()) == 1   # the lower layer, committed; nothing of the upper one
    snapshots = ext4.dest / "store" / "snapshots"
    assert not [n for n in os.listdir(snapshots) if n.startswith((".tmp-", ".trash-"))]
    _fsck_clean(ext4.dest / "store")


def test_more_identical_files_than_an_object_can_name_stay_correct(ext4):
    """65100 distinct files with one content and metadata: the dedup pass links them to one
    object until it has 65000 names, the rest keep their own inodes; --link and a relinking
    extraction meet EMLINK on the object and must copy, never fail or group wrongly."""
    t = Tar().dir("d")
    for i in range(EXT4_LINK_MAX + 100):
        t.file(f"d/c{i}", b"same" * 25)
    results = run_paths(ext4.dest, [t.bytes()], paths=("dir", "store-copy", "store-link", "store-relink"))
    tree = assert_agree(results, context="65100 identical files")
    assert tree is not None, results
    assert not tree.links, "identical files are not hardlinks of the image"
    ino = {os.lstat(os.path.join(ext4.dest, "store-copy", "d", f"c{i}")).st_ino for i in range(0, 65100, 997)}
    assert len(ino) == len(range(0, 65100, 997)), "copy mode gives private files"
    _fsck_clean(ext4.dest / "store")
