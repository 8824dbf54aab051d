"""``lamina system df`` in bounded memory (issue 14: peak RSS <= 64 MiB whatever the store holds).

Its per-image SHARED SIZE at file level needs, of every object of the store, which images' snapshots
use it.  It took a set of each snapshot's 40-byte object keys, their union per image and a Counter
over all of them (92 MiB for one image of 300k files); the keys are now grouped by KeyGroups,
which holds a budget of records in memory and partitions the rest into a temp file by key bytes.
Checked three ways: KeyGroups against a dict on crafted keys (shared prefixes, copies of one
key, several budgets); the sizes of a store where files are shared across images and within
one, with the spilled path forced (``LAMINA_DF_KEYS_HELD``), against sizes read from the
snapshots' inodes; and the VmHWM growth of a child process running ``disk_usage`` on 100k
object records (no timing).  The Files row reads the objects' fan-out directories, each as a
stream now: VmHWM growth again, over one directory of 100k names.
"""
from __future__ import annotations

import json
import os
import random
import sys

import lz4.frame
import pytest

import ocibuild
from conftest import run
from test_extract_memory import VM, _scratch
from tarbuild import header
from test_store_read_memory import _distinct_files


def _expected_groups(records):
    out = {}
    for key, payload in records:
        out.setdefault(key, set()).add(payload)
    return sorted(out.items())


def _crafted_records(n, seed):
    """Keys that share prefixes of every length (so a partition splits again and again), copies of
    one key under many payloads and the same record several times (an older snapshot's file list
    names an object once per file)."""
    rng = random.Random(seed)
    records = []
    base = bytes(rng.randrange(256) for _ in range(40))
    for i in range(n):
        kind = i % 4
        if kind == 0:
            key = bytes(rng.randrange(256) for _ in range(40))
        elif kind == 1:   # agrees with base on a prefix of any length, then differs
            cut = rng.randrange(40)
            key = base[:cut] + bytes([(base[cut] + 1 + rng.randrange(255)) % 256]) + \
                bytes(rng.randrange(256) for _ in range(39 - cut))
        elif kind == 2:
            key = base
        else:             # a record seen before, again
            key = records[rng.randrange(len(records))][0] if records else base
        records.append((key, rng.randrange(6).to_bytes(4, "little")))
    return records


@pytest.mark.parametrize("held", [1, 2, 7, 100, None])
def test_key_groups_read_back_every_record_grouped_by_key(tmp_path, held):
    from lamina.store.keygroups import KeyGroups
    records = _crafted_records(3000, held or 0)
    with KeyGroups(40, 4, scratch_dir=str(tmp_path), held=held) as groups:
        for key, payload in records:
            groups.add_all([key], payload)
        got = list(groups.groups())
        spilled = groups.file is not None
    assert got == _expected_groups(records)
    assert spilled == (held is not None), "the budget decides whether records go to the temp file"


def test_key_groups_without_a_writable_scratch_dir_use_the_temp_dir(tmp_path):
    from lamina.store.keygroups import KeyGroups
    records = _crafted_records(500, 9)
    with KeyGroups(40, 4, scratch_dir=str(tmp_path / "missing"), held=3) as groups:
        for key, payload in records:
            groups.add_all([key], payload)
        assert list(groups.groups()) == _expected_groups(records)


# Contents, every file with the same metadata (ocibuild.tar_bytes), so equal content is one object.
# Their sizes differ, so that each sum of them says which ones it counts.
X, S, U, T, G, H, W, Y, O = (bytes([65 + i]) * (4096 * (i + 1) + 100) for i in range(9))


def _sharing_layout(root):
    """a, b, c, d: b and c share their bottom layer (a whole layer: shared the docker way); files
    are shared at file level between a's and b's own layers (S), a's own layer and that shared
    layer (U), a's and c's own layers (T), c's and d's (W); and within one image only: X in a's
    two layers and twice in one of them, H twice in b's own layer, Y in d's two own layers."""
    lay = ocibuild.Layout(root)
    shared = {"ls/u": U, "ls/only": O}
    images = {
        "a": [{"a/x1": X, "a/x2": X, "a/s": S, "a/u": U, "a/g": G}, {"a/t": T, "a/x3": X}],
        "b": [shared, {"b/s": S, "b/h": H, "b/h2": H}],
        "c": [shared, {"c/t": T, "c/w": W}],
        "d": [{"d/w": W, "d/y": Y}, {"e/y": Y}],
    }
    for name, layers in images.items():
        lay.image_of_tars([ocibuild.tar_bytes(files) for files in layers], name)
    return lay


@pytest.fixture
def sharing_store(tmp_path):
    from lamina import Store
    from lamina.transports import copy
    lay = _sharing_layout(tmp_path / "layout")
    store = Store(tmp_path / "store")
    for name in "abcd":
        copy(f"oci:{lay.root}:{name}", f"{name}:1", store=store)
    return store


def _on_disk(store, image, rel):
    """Bytes on disk of a file of one of the image's snapshots."""
    for chain in image.chain_ids:
        path = store.paths.snapshot(chain) / "fs" / rel
        if path.exists():
            return path.stat().st_blocks * 512
    raise AssertionError(rel)


def _shared_by_name(store):
    from lamina.store.objects import shared_file_bytes
    images = store.images()
    got = shared_file_bytes(store, images)
    return {img.refs[0].familiar(): got[img.manifest_digest] for img in images}


def test_shared_file_sizes_are_the_same_held_or_spilled(sharing_store, monkeypatch):
    from lamina import images as api
    store = sharing_store
    a, b, c, d = (store.resolve(f"{n}:1") for n in "abcd")
    size = {"S": _on_disk(store, a, "a/s"), "U": _on_disk(store, a, "a/u"), "T": _on_disk(store, a, "a/t"),
            "W": _on_disk(store, c, "c/w")}
    # the files share inodes as the sums below assume (dedup made one object of each content)
    assert (store.paths.snapshot(a.chain_ids[0]) / "fs/a/x1").stat().st_ino == \
        (store.paths.snapshot(a.chain_ids[1]) / "fs/a/x3").stat().st_ino
    want = {"a:1": size["S"] + size["U"] + size["T"], "b:1": size["S"], "c:1": size["T"] + size["W"],
            "d:1": size["W"]}
    assert _shared_by_name(store) == want
    rows = {r.repo_tags[0]: r.shared_size for r in api.disk_usage(store).images}
    layer = store.snapshot_info(b.chain_ids[0]).size   # b's and c's bottom layer, shared whole
    assert rows == {"a:1": want["a:1"], "b:1": want["b:1"] + layer, "c:1": want["c:1"] + layer,
                    "d:1": want["d:1"]}
    for held in ("1", "2", "5"):
        monkeypatch.setenv("LAMINA_DF_KEYS_HELD", held)
        assert _shared_by_name(store) == want, held

    # b's own layer loses its lists part way through the file list (an older lamina's snapshot,
    # then damaged): no file-level sharing of that layer is known, held or spilled
    snap = store.paths.snapshot(b.chain_ids[1])
    os.unlink(snap / "objects.lz4")
    text = lz4.frame.decompress((snap / "files.lz4").read_bytes())
    (snap / "files.lz4").write_bytes(lz4.frame.compress(text[:len(text) * 2 // 3]))
    want.update({"a:1": size["U"] + size["T"], "b:1": 0})
    for held in ("", "1"):
        monkeypatch.setenv("LAMINA_DF_KEYS_HELD", held)
        assert _shared_by_name(store) == want, held


FILES = 50_000

CHILD = VM + r'''
import json, sys
import lamina
from lamina import images as I
import lamina.store.gc, lamina.store.objects, lamina.store.inuse, lamina.timefmt

store = lamina.Store(sys.argv[1])
base = vm("VmHWM:")
du = I.disk_usage(store)
files = store.file_usage()
got = {"shared": {s.repo_tags[0]: s.shared_size for s in du.images}, "objects": files.objects,
       "growth": vm("VmHWM:") - base}
print(json.dumps(got))
'''


@pytest.fixture(scope="module")
def two_big_images(tmp_path_factory):
    """big:1, a layer of FILES distinct files in one directory, and big:2, the same files and
    one more (a layer of its own): FILES objects that two images use, 2 x FILES records."""
    from lamina import Store
    from lamina.transports import copy
    tmp = tmp_path_factory.mktemp("df")
    lay = ocibuild.Layout(tmp / "layout")
    layer = _distinct_files(FILES)
    lay.image_of_tars([layer], "one")
    body = b"one more\n"
    lay.image_of_tars([layer[:-1024] + header("zz", size=len(body)) + body + bytes(512 - len(body) + 1024)], "two")
    with _scratch(tmp) as scratch:
        root = os.path.join(scratch, "store")
        for n, ref in enumerate(("one", "two"), 1):
            copy(f"oci:{lay.root}:{ref}", f"big:{n}", store=Store(root))
        yield root


def test_peak_rss_of_system_df_over_100k_objects_records(two_big_images):
    got = json.loads(run(sys.executable, "-c", CHILD, two_big_images).stdout)
    assert got["objects"] == FILES + 1
    # every file of each image is shared with the other, at a block (4 KiB) each
    assert got["shared"] == {"big:1": FILES * 4096, "big:2": FILES * 4096}
    # the sets, unions and Counter of every key grew 21 MiB here; the records held, < 5 MiB
    assert got["growth"] < 12 << 20, f"peak RSS grew {got['growth'] / 2**20:.1f} MiB over {FILES} objects"


NAMES = 100_000

USAGE_CHILD = VM + r'''
import json, sys
import lamina
import lamina.store.objects

store = lamina.Store(sys.argv[1])
base = vm("VmHWM:")
files = store.file_usage()
print(json.dumps({"objects": files.objects, "growth": vm("VmHWM:") - base}))
'''


def test_peak_rss_of_the_files_row_over_one_fan_out_dir_of_100k_names(tmp_path):
    """The Files row (objects.usage) listed each fan-out directory whole and kept the names that
    are not objects in a list it then dropped: 26 MiB for this directory of 100k names (60k
    well-named empty objects, 40k strays).  It reads each directory as a stream now (4 KiB)."""
    from lamina import Store
    with _scratch(tmp_path) as scratch:
        store = Store(os.path.join(scratch, "store"))
        store.paths.create()
        fanout = store.paths.root / "objects" / "blake3" / "ab"
        fanout.mkdir(parents=True)
        fd = os.open(fanout, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(NAMES):
                name = f"ab{i:062x}.{i:016x}" if i % 5 < 3 else f"stray-{i:090d}"
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        finally:
            os.close(fd)
        got = json.loads(run(sys.executable, "-c", USAGE_CHILD, store.paths.root).stdout)
    assert got["objects"] == NAMES * 3 // 5
    assert got["growth"] < 6 << 20, f"peak RSS grew {got['growth'] / 2**20:.1f} MiB over {NAMES} names"
