"""The dedup pass's maps past their memory budget (issue 14: peak RSS <= 64 MiB whatever the
layer size): the extractor's hashed/ names by inode and the objects planned for after the sync
go to sorted runs of a temp file past ``LAMINA_PASS_NAMES_HELD`` entries.  A store made with the
maps forced out of memory must be the very store made without: same objects, same links, same
file lists, fsck clean."""
from __future__ import annotations

import os
import stat

import pytest

import ocibuild
from tarbuild import tarfile_bytes, ti
from test_store_dedup import (_AFTER_COMMITS, APP, _copy_with_pass_stats, _files, _fsck_clean, _layer,
                              _special_members, build_images)

MTIME = ocibuild.MTIME


def _layout(tmp_path):
    """Images a and b of test_store_dedup, and one whose bottom layer has more files than a run's
    block, each body three times (duplicates within the layer: planned, then looked up), and whose
    upper layer repeats some of them and a's files (linked by the extractor or swapped)."""
    lay = build_images(tmp_path / "layout")
    many = _files(120, "many", size=300)
    dups = {name.replace("pkgmany", f"copy{n}"): body for n in (1, 2) for name, body in many.items()}
    lower = _layer(dict(many, **dups), _special_members())
    upper = _layer(dict({k.replace("pkgmany", "up"): v for k, v in list(many.items())[::3]}, **APP),
                   [(ti("usr/share/late", mtime=MTIME + 5), b"late body" * 40)])
    lay.image_of_tars([lower, upper], "many")
    return lay.root


def _store_state(root):
    """What a store holds, independent of inode numbers: per snapshot its lists, and per file the
    object it is a name of (or the first of the layer's names of its private inode)."""
    from lamina.store.objects import read_file_list, snapshot_objects
    objects, by_ino = {}, {}
    for dirpath, _, names in os.walk(root / "objects" / "blake3"):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            objects[name] = st.st_nlink
            by_ino[st.st_ino] = name
    snapshots = {}
    for snap in sorted((root / "snapshots").iterdir()):
        if not (snap / "fs").is_dir():
            continue
        assert not (snap / "hashed").exists(), snap
        files = sorted((e.path, e.blake3, e.size, e.object) for e in read_file_list(snap))
        inodes, first = {}, {}
        for dirpath, _, names in os.walk(snap / "fs"):
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode):
                    rel = os.path.relpath(path, snap / "fs")
                    inodes[rel] = st.st_ino
                    first[st.st_ino] = min(first.get(st.st_ino, rel), rel)
        links = {rel: by_ino.get(ino, ("private", first[ino])) for rel, ino in inodes.items()}
        snapshots[snap.name] = (files, sorted(snapshot_objects(snap)), links)
    return objects, snapshots


def _store(tmp_path, layout, budget, monkeypatch):
    root = tmp_path / f"root-{budget}"
    if budget is None:
        monkeypatch.delenv("LAMINA_PASS_NAMES_HELD", raising=False)
        monkeypatch.delenv("LAMINA_PASS_LISTING_HELD", raising=False)
    else:
        monkeypatch.setenv("LAMINA_PASS_NAMES_HELD", str(budget))
        # a directory's listing in a temp file past 16 bytes a budget, batches of one entry
        monkeypatch.setenv("LAMINA_PASS_LISTING_HELD", str(16 * budget))
    passes = []
    for ref in ("a", "many", "b"):
        # each upper layer waits for the commits below: which files the extractor links and which
        # the pass swaps then depends on nothing but the maps (a lost hold or plan shows here)
        for st in _copy_with_pass_stats(root, layout, ref, prelude=_AFTER_COMMITS):
            passes.append({k: v for k, v in st.items() if not k.endswith("seconds")})
    _fsck_clean(root)
    return _store_state(root), sorted(passes, key=lambda p: sorted(p.items()))


@pytest.mark.parametrize("budget", [1, 3, 40])
def test_a_pass_past_its_memory_budget_makes_the_same_store(tmp_path, monkeypatch, budget):
    """Budgets of 1 (every record its own run), 3 (runs of one block) and 40 (runs of two blocks:
    the index of block keys is searched) against the default, which holds these in memory."""
    layout = _layout(tmp_path)
    expected = _store(tmp_path, layout, None, monkeypatch)
    (objects, snapshots), passes = expected
    assert len(objects) > 150 and len(snapshots) == 6
    assert any(isinstance(o, str) and o for s in snapshots.values() for o in s[2].values())
    assert len(passes) == 6 and sum(p["prehashed"] for p in passes) > 300 and sum(p["linked"] for p in passes) > 100
    assert _store(tmp_path, layout, budget, monkeypatch) == expected


def test_spilled_names_find_update_and_list_every_record(tmp_path, monkeypatch):
    """The map itself: lookups, removals and the listing agree with a dict at every budget."""
    from lamina.store.objects import SpilledNames, _inode, _inode_key
    for budget in (1, 2, 5, 33, 64, 1000):
        monkeypatch.setenv("LAMINA_PASS_NAMES_HELD", str(budget))
        names = SpilledNames(tmp_path, _inode_key, _inode)
        ref = {}
        for i in range(0, 300, 1):
            ino = (i * 7919) % 1009 + (1 << 40) * (i % 3)
            names[ino] = ref[ino] = f"{ino:064x}-{i}"
        for ino in list(ref)[::4]:
            names.remove(ino)
            del ref[ino]
        names.remove(123456789)  # not there: nothing happens
        assert len(names) == len(ref)
        for ino in range(0, 1100):
            for key in (ino, ino + (1 << 40), ino + (2 << 40)):
                assert names.get(key) == ref.get(key), (budget, key)
        assert sorted(names.items()) == sorted(ref.items()), budget
        assert (names.runs != []) == (budget <= 300), budget
        names.close()



_TRACED_PASS = """
import json, os, sys, tracemalloc
from lamina.store import objects
orig = objects.dedup_snapshot
def traced(*a, **k):
    tracemalloc.start()
    try:
        return orig(*a, **k)
    finally:
        os.write(2, b"PEAK %d\\n" % tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
objects.dedup_snapshot = traced
from lamina.cli import main
main(sys.argv[1:])
"""


# ~50 s each under load.  One directory by default: its peak holds the maps too (measured at 41k
# files: 10.5 MiB within budget, 18.1 MiB with the maps and listing held whole, 18.0 with 100
# directories) and its listing is the one that goes to a temp file; LAMINA_SPILL_DEEP=1 adds
# the 100-directory layer.
_BUDGET_DIRS = [1, 100] if os.environ.get("LAMINA_SPILL_DEEP") == "1" else [1]


@pytest.mark.parametrize("dirs", _BUDGET_DIRS)
def test_the_pass_keeps_its_maps_within_their_budget(tmp_path, monkeypatch, dirs):
    """The Python memory a copy's dedup pass allocates at its peak (tracemalloc), for a 41k-file
    layer, with a budget of 2048 names a map: ~8 MiB (the file list's run of keys, the claim's
    batches...); with the maps as dicts (~0.43 KB a file) it was ~18 MiB.  The store it makes is
    still that of every file.  All 41k files in one directory: its listing goes to a temp file
    and is done a batch at a time (held whole, as lists of names, inodes and holds, it took
    ~1.1 KB a file: a directory of 300k files peaked at 341 MiB)."""
    import subprocess
    import sys
    from test_store_dedup import _many_files_tar
    from lamina.store.objects import read_file_list, snapshot_objects
    monkeypatch.setenv("LAMINA_PASS_NAMES_HELD", "2048")
    lay = ocibuild.Layout(tmp_path / "oci")
    lay.image_of_tars([_many_files_tar(41000, dirs)], ref="1")
    root = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-c", _TRACED_PASS, "--root", str(root), "copy", f"oci:{lay.root}:1",
                           "many:1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (peak,) = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK ")]
    assert peak < 12 * 2**20, f"the pass peaked at {peak / 2**20:.1f} MiB of Python memory"
    (snap,) = [p.parent for p in (root / "snapshots").glob("*/fs")]
    files = read_file_list(snap)
    assert len(files) == 41000 and len(snapshot_objects(snap)) == 41000 == len({f.object for f in files})
    _fsck_clean(root)


def _limited_fds(n):
    def pre():
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return pre


def test_a_layer_of_more_sibling_directories_than_open_files_goes_through_the_store(tmp_path):
    """The dedup pass opened every subdirectory of a directory before it walked the first one:
    a layer of 30,000 sibling directories failed its copy into the store with "Too many open
    files" (here 1,500 under a limit of 1,024).  Copy, the flat unpack from the store, --link
    and fsck each hold at most one directory fd per level (besides the objects' fan-out dirs)."""
    import subprocess
    import sys
    lay = ocibuild.Layout(tmp_path / "lay")
    m = lay.image([{f"usr/lib/pkg-{i:04d}/mod.py": b"body %d\n" % i for i in range(1500)},
                   {"usr/lib/pkg-0007/mod.py": b"changed\n"}], compress=False)
    lay.add(m, "1")
    root, dest, linked = tmp_path / "store", tmp_path / "dest", tmp_path / "linked"

    def lamina(*args):
        p = subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), *args], capture_output=True,
                           text=True, timeout=300, preexec_fn=_limited_fds(1024))
        assert p.returncode == 0, (args, p.stderr)
        return p

    lamina("copy", f"oci:{lay.root}:1", "wide:1")
    lamina("unpack", "wide:1", str(dest))
    lamina("unpack", "--link", "wide:1", str(linked))
    for tree in (dest, linked):
        assert len(os.listdir(tree / "usr/lib")) == 1500
        assert (tree / "usr/lib/pkg-0399/mod.py").read_bytes() == b"body 399\n"
        assert (tree / "usr/lib/pkg-0007/mod.py").read_bytes() == b"changed\n"
    lamina("fsck")


def test_the_objects_fan_out_fds_stay_within_a_low_fd_limit(tmp_path):
    """A pass kept an fd open for each objects/blake3/<2 hex>/ it used, up to 256, whatever the
    process's limit: under a limit of 128 a copy of 1,500 distinct files (~255 fan-out
    directories) failed "Too many open files".  The cache holds a 64th of the limit below 16k."""
    import subprocess
    import sys
    lay = ocibuild.Layout(tmp_path / "lay")
    m = lay.image([{f"usr/lib/pkg-{i % 10}/mod-{i:04d}.py": b"body %d\n" % i for i in range(1500)}], compress=False)
    lay.add(m, "1")
    root = tmp_path / "store"
    for args in (("copy", f"oci:{lay.root}:1", "fan:1"), ("fsck",)):
        p = subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), *args], capture_output=True,
                           text=True, timeout=300, preexec_fn=_limited_fds(128))
        assert p.returncode == 0, (args, p.stderr)
    assert len(os.listdir(root / "objects" / "blake3")) > 128  # more fan-out dirs than fds to hold them

