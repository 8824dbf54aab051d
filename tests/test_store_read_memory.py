"""Reading a big snapshot back out of the store in bounded memory (issue 14: peak RSS <= 64 MiB
whatever the layer size).  A flatten copy (``lamina unpack NAME DEST``) read the whole file list
of every snapshot into a set of paths first, to know which names share an object inode: ~0.8 KB a
file, 250 MiB for a layer of 300k files.  It now takes the objects' inode numbers (8 bytes an
object), and the file and objects lists are read as streams.  Measured as the VmHWM growth of a
child process, no timing; and the streamed reader must read exactly what the writer wrote."""
from __future__ import annotations

import json
import os
import sys

import lz4.frame
import pytest

import ocibuild
from conftest import run
from tarbuild import header
from test_extract_memory import VM, _scratch

FILES = 50_000


def _distinct_files(n):
    """One directory of ``n`` files of distinct bodies: ``n`` objects, ``n`` rows in the list."""
    out = bytearray(header("d/", type=b"5", mode=0o755))
    for i in range(n):
        body = b"%d\n" % i
        out += header(f"d/a-module-file-name-{i:06d}.py", size=len(body)) + body + bytes(-len(body) % 512)
    return bytes(out + bytes(1024))


CHILD = VM + r'''
import json, os, sys
import lz4.frame
import lamina
from lamina import images as I
import lamina.store.flatten, lamina.store.fsck, lamina.store.objects, lamina.store.materialize, lamina.store.treediff

store = lamina.Store(sys.argv[1])
base = vm("VmHWM:")
if sys.argv[2] == "unpack":
    _, stats = I.unpack(store, "big:1", sys.argv[3])
    got = {"files": stats.files, "hardlinks": stats.hardlinks}
elif sys.argv[2] == "prune":
    store.untag("big:1")
    gc = store.gc().to_dict()
    got = {"objects": gc["objects"], "snapshots": len(gc["snapshots"])}
else:
    report = store.fsck()
    got = {"ok": report.ok, "objects": report.checked["objects"]}
got["growth"] = vm("VmHWM:") - base
print(json.dumps(got))
'''


@pytest.fixture(scope="module")
def big_layout(tmp_path_factory):
    lay = ocibuild.Layout(tmp_path_factory.mktemp("big") / "layout")
    lay.image_of_tars([_distinct_files(FILES)], "big")
    return lay


def _big_store(lay, scratch):
    """A store holding one image: a layer of FILES distinct files in one directory."""
    from lamina import Store
    from lamina.transports import copy
    root = os.path.join(scratch, "store")
    copy(f"oci:{lay.root}:big", "big:1", store=Store(root))
    return root


@pytest.fixture(scope="module")
def big_store(big_layout, tmp_path_factory):
    with _scratch(tmp_path_factory.mktemp("scratch")) as scratch:  # tmpfs
        yield scratch, _big_store(big_layout, scratch)


def _child(*args):
    return json.loads(run(sys.executable, "-c", CHILD, *args).stdout)


def test_peak_rss_of_unpacking_a_snapshot_of_50k_files(big_store):
    scratch, root = big_store
    got = _child(root, "unpack", os.path.join(scratch, "dest"))
    assert got["files"] == FILES and got["hardlinks"] == 0
    # the set of paths grew ~40 MiB here; the inode numbers and the streamed lists, < 3 MiB
    assert got["growth"] < 12 << 20, f"peak RSS grew {got['growth'] / 2**20:.1f} MiB over {FILES} files"


def test_peak_rss_of_fsck_of_a_snapshot_of_50k_files(big_store):
    """fsck read every snapshot's whole file list and listed every object at once: ~60 MiB here.
    Then the tree comparison held sorted listings of the one big directory (11.1 MiB in all);
    it streams them now, and what is left is the fresh extraction it compares with (9.0-10.1 MiB,
    with the allocator's noise).  The bound catches per-file lists coming back; test_treediff's
    memory tests hold the comparison itself to its budget."""
    _, root = big_store
    got = _child(root, "fsck")
    assert got["ok"] and got["objects"] == FILES
    assert got["growth"] < 16 << 20, f"peak RSS grew {got['growth'] / 2**20:.1f} MiB over {FILES} files"


def test_peak_rss_of_gc_freeing_50k_objects(big_layout, tmp_path):
    """The gc after the last image went listed every object it removed by name (~200 B an
    object, and ~200 MiB in `image prune` after a layer of a million files): now it counts them."""
    with _scratch(tmp_path) as scratch:
        root = _big_store(big_layout, scratch)
        got = _child(root, "prune")
        assert got["objects"]["count"] == FILES and got["objects"]["size"] >= FILES * 4096 and got["snapshots"] == 1
        assert os.listdir(os.path.join(root, "snapshots")) == []
        assert all(not os.listdir(d.path) for d in os.scandir(os.path.join(root, "objects", "blake3")))
        assert got["growth"] < 6 << 20, f"peak RSS grew {got['growth'] / 2**20:.1f} MiB freeing {FILES} objects"


FINDINGS = VM + r'''
import contextlib, json, sys
import lamina.cli, lamina.cli.store, lamina.store.fsck, lamina.store.objects, lamina.store.treediff

base = vm("VmHWM:")
with open(sys.argv[2], "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    code = lamina.cli.main(["--root", sys.argv[1], "fsck", *sys.argv[3:]])
print(json.dumps({"growth": vm("VmHWM:") - base, "code": code}))
'''


def test_peak_rss_of_fsck_listing_50k_unused_objects(big_layout, tmp_path):
    """What an interrupted prune leaves: the snapshots gone, their objects not yet, one
    finding each.  The findings were all held as objects and the JSON document built whole
    besides (growth 36.5 MiB for the text, 45.9 for --json; 223 and 279 MiB for a layer of 300k
    files); now the newest are held and the rest spilled to a temp file (10.4, 12.4 MiB), and
    every one is still listed."""
    with _scratch(tmp_path) as scratch:
        root = _big_store(big_layout, scratch)
        run(sys.executable, "-m", "lamina", "--root", root, "rmi", "--no-prune", "big:1")
        run("rm", "-rf", os.path.join(root, "snapshots"))
        os.mkdir(os.path.join(root, "snapshots"))
        out = os.path.join(scratch, "out")
        for how in ("json", "text"):
            args = ["--json"] if how == "json" else []
            got = json.loads(run(sys.executable, "-c", FINDINGS, root, out, *args).stdout)
            assert got["code"] == 0
            assert got["growth"] < 16 << 20, f"peak RSS grew {got['growth'] / 2**20:.1f} MiB ({how})"
            with open(out) as f:
                if how == "text":
                    text = f.read()
                    assert f"warning: {FILES - 5} more unused-object findings like these" in text, text
                    assert f": 0 errors, {FILES + 3} warnings" in text, text  # and the image's 3 blobs
                    continue
                doc = json.load(f)
            unused = [f["subject"] for f in doc["findings"] if f["kind"] == "unused-object"]
            assert doc["ok"] and len(unused) == len(set(unused)) == FILES


NAMES = ["plain", "with, comma", "brackets]], [x", 'quote " and \\ back', "uni\u00e9\u4e2d",
         "bad-\udcff-utf8", "new\nline", "x" * 300]


def _rows(n):
    from lamina.store.objects import FileEntry
    for i in range(n):
        name = f"dir-{i % 7}/{NAMES[i % len(NAMES)]}-{i}"
        obj = None if i % 5 == 0 else f"{i:064x}.{i:016x}"
        yield FileEntry(name, f"{i:064x}" if i % 11 else "", i * 3, obj)


@pytest.mark.parametrize("n", [0, 1, 30_000])
def test_the_streamed_file_list_reads_what_was_written(tmp_path, n):
    """Rows of awkward names across many read pieces (30k rows: ~4 MB of JSON, 25 pieces)."""
    from lamina.store.objects import FileRows, iter_file_list, iter_object_keys, write_file_list
    snap = tmp_path / "snap"
    snap.mkdir()
    rows = FileRows(str(snap))
    for e in _rows(n):
        rows.add(e.path, e.blake3, e.size, e.object)
    write_file_list(str(snap), rows, durable=False)
    rows.close()
    got = list(iter_file_list(str(snap)))
    assert got == list(_rows(n))
    # the whole document, as json.loads reads it, says the same
    doc = json.loads(lz4.frame.decompress((snap / "files.lz4").read_bytes()))
    assert [[e.path, e.blake3, e.size, e.object] for e in got] == doc["files"]
    want = sorted({bytes.fromhex(e.object[:64] + e.object[65:]) for e in got if e.object is not None})
    assert list(iter_object_keys(str(snap))) == want
    # without an objects list (an older lamina's snapshot) the keys come from the file list
    os.unlink(snap / "objects.lz4")
    assert sorted(iter_object_keys(str(snap))) == want


def test_a_damaged_file_list_read_as_a_stream_is_a_store_error(tmp_path):
    from lamina.errors import StoreError
    from lamina.store.objects import FileRows, iter_file_list, write_file_list
    snap = tmp_path / "snap"
    snap.mkdir()
    rows = FileRows(str(snap))
    for e in _rows(100):
        rows.add(e.path, e.blake3, e.size, e.object)
    write_file_list(str(snap), rows, durable=False)
    rows.close()
    text = lz4.frame.decompress((snap / "files.lz4").read_bytes())
    (snap / "files.lz4").write_bytes(lz4.frame.compress(text[:len(text) // 2]))
    with pytest.raises(StoreError, match="files.lz4: unreadable file list"):
        list(iter_file_list(str(snap)))
    assert iter_file_list(str(tmp_path)) is None
