"""Compact store (``lamina config set keep-blobs false``): layers rebuilt bit-exact from snapshots.

Oracles: the original layer tars' sha256 (diffIDs) and bytes, skopeo and umoci reading what
``save`` / ``copy`` write and failing on the compact store itself, and umoci's unpack of the
original image for tree equality.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import time

import pytest

import ocibuild
from lamina import mediatypes as mt
from conftest import require_tool, run
from registryfixture import lamina_cli, reg, registry_env, skopeo_raw  # noqa: F401
from tarbuild import Tar
from test_store_dedup import _chains, _fs, _fsck_clean, build_images
from treecmp import assert_same, snapshot
from verbkit import lamina_subprocess


def _compact_store(tmp_path, layout, refs=("a", "b")):
    root = tmp_path / "root"
    lamina_subprocess(root, "config", "set", "keep-blobs", "false")
    for ref in refs:
        lamina_subprocess(root, "copy", f"oci:{layout}:{ref}", f"{ref}:1")
    return root


def _layer_blobs(layout, ref):
    lay = ocibuild.Layout.existing(layout)
    entry = next(e for e in lay.entries if e["annotations"]["org.opencontainers.image.ref.name"] == ref)
    manifest = lay.read_json(entry["digest"])
    config = lay.read_json(manifest["config"]["digest"])
    return [l["digest"] for l in manifest["layers"]], config["rootfs"]["diff_ids"]


def _umoci_tree(tmp_path, layout, ref, name):
    require_tool("umoci")
    bundle = tmp_path / name
    run("umoci", "unpack", "--rootless", "--image", f"{layout}:{ref}", str(bundle))
    return snapshot(bundle / "rootfs")


@pytest.fixture
def layout(tmp_path):
    build_images(tmp_path / "layout")
    return tmp_path / "layout"


def test_compact_store_drops_layer_blobs_and_saves_bit_exact(tmp_path, layout):
    root = _compact_store(tmp_path, layout)
    present = set(os.listdir(root / "blobs" / "sha256"))
    for ref in ("a", "b"):
        blobs, diff_ids = _layer_blobs(layout, ref)
        assert not present & {d.split(":")[1] for d in blobs}, "compressed layer blobs must be gone"
    assert len(present) == 4  # two manifests, two configs
    report = _fsck_clean(root)
    assert report["checked"]["sidecars"] == 4

    # docker-archive: each layer tar's sha256 is its original diffID, and skopeo + umoci unpack it
    # to the tree umoci unpacks from the original image
    archive = tmp_path / "a.tar"
    lamina_subprocess(root, "save", "a:1", "-o", archive)
    _, diff_ids = _layer_blobs(layout, "a")
    with tarfile.open(archive) as t:
        manifest = json.load(t.extractfile("manifest.json"))[0]
        layer_sums = ["sha256:" + hashlib.sha256(t.extractfile(n).read()).hexdigest() for n in manifest["Layers"]]
    assert layer_sums == diff_ids
    require_tool("skopeo")
    run("skopeo", "copy", f"docker-archive:{archive}", f"oci:{tmp_path / 'from-archive'}:a")
    expected = _umoci_tree(tmp_path, layout, "a", "orig")
    assert_same(expected, _umoci_tree(tmp_path, tmp_path / "from-archive", "a", "saved"),
                labels=("original", "saved from compact store"))

    # copy to oci: gives a complete layout; config (and so the image ID) is unchanged
    out = tmp_path / "out"
    lamina_subprocess(root, "copy", "a:1", f"oci:{out}:a")
    inspect = json.loads(run("skopeo", "inspect", f"oci:{out}:a").stdout)
    assert inspect["Layers"] == diff_ids
    config = json.loads(run("skopeo", "inspect", "--config", f"oci:{out}:a").stdout)
    assert config["rootfs"]["diff_ids"] == diff_ids
    assert_same(expected, _umoci_tree(tmp_path, out, "a", "copied"), labels=("original", "copied"))


def test_a_saved_or_copied_image_loaded_back_into_the_compact_store_checks_clean(tmp_path, layout):
    """save and copy oci: rebuild a compact layer uncompressed, under a new blob digest (its
    diffID); that image loaded back into the compact store (another name, the same config)
    shares the layer's snapshot, whose sidecar rebuilds it, so its layer blob is dropped as the
    original's was.  fsck took that blob for a missing one ("blob ... is missing"), as it did a
    plain blob of a layer the store held gzipped: it knew only the blob each snapshot was
    extracted from (found by test_fuzz_store.py)."""
    root = _compact_store(tmp_path, layout, refs=("a",))
    blobs, diff_ids = _layer_blobs(layout, "a")
    out = tmp_path / "out"
    lamina_subprocess(root, "copy", "a:1", f"oci:{out}:a")
    archive = tmp_path / "a.tar"
    lamina_subprocess(root, "save", "a:1", "-o", archive)
    lamina_subprocess(root, "copy", f"oci:{out}:a", "copied:1")
    lamina_subprocess(root, "copy", f"docker-archive:{archive}", "saved:1")
    # the same layers under their uncompressed digests: nothing of them kept but the sidecars
    assert _layer_blobs(out, "a")[0] == diff_ids
    present = set(os.listdir(root / "blobs" / "sha256"))
    assert not present & {d.split(":")[1] for d in blobs + diff_ids}
    _fsck_clean(root)
    # and each of them saves bit-exact
    for ref in ("copied:1", "saved:1"):
        again = tmp_path / f"{ref[:-2]}.tar"
        lamina_subprocess(root, "save", ref, "-o", again)
        with tarfile.open(again) as t:
            manifest = json.load(t.extractfile("manifest.json"))[0]
            assert ["sha256:" + hashlib.sha256(t.extractfile(n).read()).hexdigest()
                    for n in manifest["Layers"]] == diff_ids


def test_compacting_one_image_keeps_a_blob_another_image_needs_elsewhere(tmp_path):
    """Two images hold one layer blob over different layers (two chainIDs), stored while the
    store kept blobs.  Once the store is compact, the first image used is compacted: its places
    of the blob get sidecars, and the blob was dropped, though the other image's place had no
    sidecar yet and nothing else to be rebuilt from: tagging, saving or pushing that image failed
    ("layer ... is not in the store"), fsck reported the blob missing.  Now every place of the
    store that uses the blob gets its sidecar first, or the blob stays (found by
    test_fuzz_store.py)."""
    lay = ocibuild.Layout(tmp_path / "layout")
    shared = {"shared/": None, "shared/f": b"the same layer over two others\n"}
    lay.add(lay.image([{"a": b"under x\n"}, shared]), "x")
    lay.add(lay.image([{"c": b"under y\n"}, shared]), "y")
    root = tmp_path / "root"
    for ref in ("x", "y"):
        lamina_subprocess(root, "copy", f"oci:{lay.root}:{ref}", f"{ref}:1")
    x_blobs, _ = _layer_blobs(lay.root, "x")
    y_blobs, y_diff_ids = _layer_blobs(lay.root, "y")
    assert x_blobs[1] == y_blobs[1]
    lamina_subprocess(root, "config", "set", "keep-blobs", "false")
    lamina_subprocess(root, "unpack", "x:1", tmp_path / "x")   # compacts x
    _fsck_clean(root)
    lamina_subprocess(root, "tag", "y:1", "y:2")
    archive = tmp_path / "y.tar"
    lamina_subprocess(root, "save", "y:1", "-o", archive)
    with tarfile.open(archive) as t:
        manifest = json.load(t.extractfile("manifest.json"))[0]
        assert ["sha256:" + hashlib.sha256(t.extractfile(n).read()).hexdigest()
                for n in manifest["Layers"]] == y_diff_ids


def _may_fail(*cmd):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)


def test_tools_reading_the_compact_store_fail_clearly(tmp_path, layout):
    root = _compact_store(tmp_path, layout, refs=("a",))
    with open(root / "oci-layout") as f:
        assert "lamina copy REF oci:DIR" in json.load(f)["lamina.compact"]
    blobs, _ = _layer_blobs(layout, "a")
    require_tool("skopeo")
    require_tool("umoci")
    sk = _may_fail("skopeo", "copy", f"oci:{root}:docker.io/library/a:1", f"dir:{tmp_path / 'x'}")
    assert sk.returncode != 0 and blobs[0].split(":")[1] in sk.stderr
    um = _may_fail("umoci", "unpack", "--rootless", "--image", f"{root}:docker.io/library/a:1", tmp_path / "b")
    assert um.returncode != 0 and blobs[0].split(":")[1] in um.stderr + um.stdout


def _change_a_file_keeping_its_metadata(root, chain):
    victim = os.path.join(_fs(root, chain), "usr/share/pkgapp/f003")
    st = os.lstat(victim)
    with open(victim, "r+b") as f:
        f.write(b"Z")
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_fsck_rebuilds_each_compact_layer_once(tmp_path, layout, monkeypatch):
    """The snapshot check extracts each compact layer as its sidecar rebuilds it, the diffID
    checked at the end: sidecar.check rebuilt every one of them a second time to check the same
    diffID, doubling fsck's time on a compact store.  A layer that did not rebuild there is
    still rebuilt by sidecar.check, and named once as a bad sidecar."""
    from lamina.store import Store, sidecar
    root = _compact_store(tmp_path, layout)
    rebuilt = []
    real = sidecar.RebuiltLayer.__init__

    def counting(self, snapshot_dir, *args):
        rebuilt.append(os.path.basename(os.fspath(snapshot_dir)))
        real(self, snapshot_dir, *args)
    monkeypatch.setattr(sidecar.RebuiltLayer, "__init__", counting)
    report = Store(root).fsck()
    assert report.clean and report.checked["sidecars"] == 4
    assert len(rebuilt) == 4 and len(set(rebuilt)) == 4, rebuilt

    chain = _chains(root, "a:1")[1]
    _change_a_file_keeping_its_metadata(root, chain)
    report = Store(root).fsck()
    bad = [f for f in report.findings if f.kind == "bad-sidecar" and f.subject == chain]
    assert len(bad) == 1, list(report.findings)
    assert "usr/share/pkgapp/f003" in bad[0].message and "xxh3" in bad[0].message
    assert report.checked["sidecars"] == 4


def test_a_file_changed_behind_lamina_is_caught_on_save(tmp_path, layout):
    root = _compact_store(tmp_path, layout, refs=("a",))
    chain = _chains(root, "a:1")[1]
    _change_a_file_keeping_its_metadata(root, chain)
    proc = lamina_subprocess(root, "save", "a:1", "-o", tmp_path / "a.tar", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("lamina: error: layer ") and "usr/share/pkgapp/f003" in proc.stderr
    assert "xxh3" in proc.stderr
    assert not os.path.exists(tmp_path / "a.tar")
    report = json.loads(lamina_subprocess(root, "fsck", "--json", check=False).stdout)
    assert any(f["kind"] == "bad-sidecar" and f["subject"] == chain for f in report["findings"])


def _hostile_file_to_shadow(fs):
    os.unlink(os.path.join(fs, "usr/share/pkgapp/f003"))
    os.symlink("/etc/shadow", os.path.join(fs, "usr/share/pkgapp/f003"))


def _hostile_dir_out_of_the_store(fs):
    os.rename(os.path.join(fs, "usr/share/pkgapp"), os.path.join(fs, "usr/share/pkgapp.moved"))
    os.symlink("/etc", os.path.join(fs, "usr/share/pkgapp"))


def _hostile_fifo(fs):
    os.unlink(os.path.join(fs, "usr/share/pkgapp/f003"))
    os.mkfifo(os.path.join(fs, "usr/share/pkgapp/f003"))


def _hostile_grown_sparse(fs):
    os.truncate(os.path.join(fs, "usr/share/pkgapp/f003"), 10 << 30)


def _hostile_tree_a_fifo(fs):
    os.rename(fs, fs + ".moved")
    os.mkfifo(fs)


def _hostile_tree_a_file(fs):
    os.rename(fs, fs + ".moved")
    with open(fs, "wb") as f:
        f.write(b"not a tree\n")


@pytest.mark.parametrize("verb", ["save", "copy"])
@pytest.mark.parametrize("change, names", [
    (_hostile_file_to_shadow, "'usr/share/pkgapp/f003' is missing"),
    (_hostile_dir_out_of_the_store, "'usr/share/pkgapp/f000' is missing"),
    (_hostile_fifo, "'usr/share/pkgapp/f003' is missing"),
    (_hostile_grown_sparse, "'usr/share/pkgapp/f003' changed"),
    (_hostile_tree_a_fifo, "/fs is not a directory"),
    (_hostile_tree_a_file, "/fs is not a directory"),
], ids=lambda x: x.__name__.removeprefix("_hostile_") if callable(x) else "")
def test_a_compact_snapshot_changed_in_hostile_ways_is_refused_naming_the_layer(tmp_path, layout, verb, change,
                                                                                 names):
    """A compact layer is rebuilt from its snapshot, which someone changed behind lamina: a file
    now a symlink to /etc/shadow, a directory now a symlink out of the store, a FIFO where a file
    was (never opened: it would wait for a writer), a file grown to 10 GiB sparse (read no further
    than its stored size), the snapshot's whole tree a FIFO or a file.  Each is a refusal naming
    the layer and what changed, with nothing written.  On 9283a86 a tree that is no directory
    said only "<store>/snapshots/<chain>/fs: Not a directory": no layer, no remedy."""
    root = _compact_store(tmp_path, layout, refs=("a",))
    chain = _chains(root, "a:1")[1]
    change(_fs(root, chain))
    out = tmp_path / "out"
    dest = ["-o", out] if verb == "save" else [f"oci:{out}:a"]
    proc = lamina_subprocess(root, verb, "a:1", *dest, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("lamina: error: layer ") and names in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "shadow" not in proc.stderr
    if verb == "save":
        assert not os.path.exists(out)
    else:
        assert not os.path.exists(out / "index.json") or b"\"a\"" not in (out / "index.json").read_bytes()


def _odd_layer():
    """A layer whose bytes no tar writer would reproduce: PAX and GNU long names, the same path
    twice (the second wins in the snapshot), a hardlink, a symlink, big padding, trailing zeros, a
    Go 1.7 writer's prefix in a GNU header."""
    long = "d/" + "x" * 150
    t = Tar()
    t.dir("d")
    t.pax({"path": long, "mtime": "1700000000.5"}).file("ignored-name", b"pax long name\n" * 40)
    t.gnu_longname("d/" + "y" * 120).file("gnu-ignored", b"gnu long name\n" * 30)
    t.file("d/dup", b"first version\n" * 100)
    t.file("d/dup", b"second\n")
    t.hardlink("d/link", "d/dup")
    t.symlink("d/sym", "dup")
    t.file("d/empty", b"")
    t.file("d/big", os.urandom(300_000))
    # Go 1.7's GNU header: the extractor names it go17/file (Go's prefix), so must the sidecar
    t.file("file", os.urandom(100_000), fmt="gnu", prefix=b"go17")
    return t.bytes(end=False) + b"\0" * 10240  # a blocking factor's worth of end blocks


def test_odd_tars_rebuild_bit_exact(tmp_path):
    raw = _odd_layer()
    lay = ocibuild.Layout(tmp_path / "layout")
    lay.blob(ocibuild.gz(raw))
    cdesc = lay.json_blob({"architecture": "amd64", "os": "linux", "config": {},
                           "rootfs": {"type": "layers", "diff_ids": [ocibuild.sha256(raw)]}}, ocibuild.OCI_CONFIG)
    lay.add(lay.json_blob({"schemaVersion": 2, "mediaType": ocibuild.OCI_MANIFEST, "config": cdesc,
                           "layers": [ocibuild.desc(ocibuild.OCI_LAYER_GZIP, ocibuild.gz(raw))]},
                          ocibuild.OCI_MANIFEST), "odd")
    root = _compact_store(tmp_path, tmp_path / "layout", refs=("odd",))
    from lamina.store import Store
    store = Store(root)
    image = store.resolve("odd:1")
    assert not store.has_blob(image.layers[0].digest)
    with store.layer_reader(image.layers[0], image.diff_ids[0], image.chain_ids[0]) as f:
        assert f.read() == raw
    # only payloads the snapshot holds are referenced: the first d/dup is kept raw in the sidecar
    import lz4.frame
    with lz4.frame.open(os.path.join(store.paths.snapshot(image.chain_ids[0]), "tarsplit.lz4")) as f:
        side = f.read()
    assert b"first version\n" * 100 in side and b"second\n" not in side
    assert len(side) < len(raw) - 400_000  # d/big and go17/file are referenced, not copied
    _fsck_clean(root)


def test_kill_9_during_compaction_then_fsck_clean_and_rerun(tmp_path):
    from test_store_dedup import _big_layout
    raw_digest = _big_layout(tmp_path / "layout", files=6000)
    root = tmp_path / "root"
    lamina_subprocess(root, "copy", f"oci:{tmp_path / 'layout'}:big", "big:1")
    lamina_subprocess(root, "config", "set", "keep-blobs", "false")
    blob = root / "blobs" / "sha256" / raw_digest.split(":")[1]
    for delay in (0.25, 0.4, 0.55, 0.7, 0.85, 1.0):
        if not blob.exists():
            break
        proc = subprocess.Popen([sys.executable, "-m", "lamina", "--root", str(root), "unpack", "big:1",
                                 str(tmp_path / f"d{delay}")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        report = json.loads(lamina_subprocess(root, "fsck", "--json", check=False).stdout)
        assert report["ok"], [f for f in report["findings"] if f["severity"] == "error"]
    lamina_subprocess(root, "fsck", "--repair")
    lamina_subprocess(root, "unpack", "big:1", str(tmp_path / "final"))
    assert not blob.exists()
    _fsck_clean(root)
    archive = tmp_path / "big.tar"
    lamina_subprocess(root, "save", "big:1", "-o", archive)
    with tarfile.open(archive) as t:
        layer = json.load(t.extractfile("manifest.json"))[0]["Layers"][0]
        assert "sha256:" + hashlib.sha256(t.extractfile(layer).read()).hexdigest() == raw_digest


def test_push_from_a_compact_store_rebuilds_gzips_and_pulls_back_the_same_tree(tmp_path, layout, reg,
                                                                                registry_env):
    """push rebuilds each dropped layer (diffID checked), gzips it and pushes a manifest naming the
    new blobs; the config and diffIDs are the original ones, and a pull gives umoci's tree."""
    root = registry_env / "root"
    lamina_subprocess(root, "config", "set", "keep-blobs", "false")
    lamina_subprocess(root, "copy", f"oci:{layout}:a", "a:1")
    ref = f"{reg.host}/compact/a:1"
    lamina_cli("tag", "a:1", ref, root=root)
    out = lamina_cli("push", ref, root=root).stdout.splitlines()
    blobs, diff_ids = _layer_blobs(layout, "a")
    raw, digest = skopeo_raw(reg.host, "compact/a:1")
    pushed = json.loads(raw)
    assert out[-1] == f"1: digest: {digest} size: {len(raw)}"
    assert [l["mediaType"] for l in pushed["layers"]] == [mt.OCI_LAYER_GZIP] * 2
    assert not {l["digest"] for l in pushed["layers"]} & set(blobs)  # new gzip blobs, not the originals
    original = ocibuild.Layout.existing(layout)
    entry = next(e for e in original.entries if e["annotations"]["org.opencontainers.image.ref.name"] == "a")
    assert pushed["config"] == original.read_json(entry["digest"])["config"]
    for layer, diff_id in zip(pushed["layers"], diff_ids):
        assert reg.has_blob(layer["digest"])
    # pull it back into a fresh store: the pull checks every blob digest and diffID
    back = tmp_path / "back"
    lamina_cli("pull", "-q", ref, root=back)
    info = json.loads(lamina_cli("inspect", ref, root=back).stdout)[0]
    assert info["RootFS"]["Layers"] == diff_ids
    lamina_cli("unpack", ref, tmp_path / "pulled", root=back)
    assert_same(_umoci_tree(tmp_path, layout, "a", "orig"), snapshot(tmp_path / "pulled"),
                labels=("original", "pushed from a compact store and pulled back"))
    # the store is still compact: nothing was written back into it
    assert not set(os.listdir(root / "blobs" / "sha256")) & {b.split(":")[1] for b in blobs}


def test_push_from_a_compact_store_of_an_image_holding_one_layer_twice(tmp_path, reg, registry_env):
    """An image whose layers repeat one blob (two empty layers) between others.  push named each
    rebuilt layer's file by how many digests it had rebuilt: the repeated layer's digest did not
    add one, so the next layer's file took the repeated one's name and overwrote it, and the
    upload of the repeated blob sent the next layer's bytes ("digest invalid", found by
    test_fuzz_roundtrip.py, seed 45312)."""
    root = registry_env / "root"
    lay = ocibuild.Layout(tmp_path / "oci")
    empty = bytes(1024)
    raws = [Tar().file("a", b"a\n").bytes(), empty, empty, Tar().file("b", b"b\n").bytes()]
    lay.image_of_tars(raws, "1")
    lamina_subprocess(root, "config", "set", "keep-blobs", "false")
    lamina_subprocess(root, "copy", f"oci:{lay.root}:1", "a:1")
    ref = f"{reg.host}/compact/twice:1"
    lamina_cli("tag", "a:1", ref, root=root)
    lamina_cli("push", ref, root=root)
    back = tmp_path / "back"
    lamina_cli("pull", "-q", ref, root=back)
    info = json.loads(lamina_cli("inspect", ref, root=back).stdout)[0]
    assert info["RootFS"]["Layers"] == ["sha256:" + hashlib.sha256(r).hexdigest() for r in raws]
    lamina_cli("unpack", ref, tmp_path / "pulled", root=back)
    assert sorted(snapshot(tmp_path / "pulled").paths()) == ["a", "b"]


def test_push_from_a_compact_store_catches_a_changed_file(tmp_path, layout, reg, registry_env):
    root = registry_env / "root"
    lamina_subprocess(root, "config", "set", "keep-blobs", "false")
    lamina_subprocess(root, "copy", f"oci:{layout}:a", "a:1")
    victim = os.path.join(_fs(root, _chains(root, "a:1")[1]), "usr/share/pkgapp/f003")
    st = os.lstat(victim)
    with open(victim, "r+b") as f:
        f.write(b"Z")
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    ref = f"{reg.host}/compact/changed:1"
    lamina_cli("tag", "a:1", ref, root=root)
    proc = lamina_cli("push", ref, root=root, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("lamina: error: layer ") and "usr/share/pkgapp/f003" in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
                          capture_output=True).returncode != 0, "nothing may be tagged after a failed push"


def test_push_of_one_compact_platform_pushes_the_whole_index(tmp_path, reg, registry_env):
    """A multi-arch archive loaded into a compact store: only the tagged platform is extracted and
    compacted (its blobs dropped), the others keep their blobs.  push sends one index naming every
    platform: the compact one with rebuilt layers, the others byte for byte as stored."""
    require_tool("skopeo")
    lay = ocibuild.multiarch(tmp_path / "lay", ref="1")
    archive = tmp_path / "multi.tar"
    run("skopeo", "copy", "-q", "--all", f"oci:{lay.root}:1", f"oci-archive:{archive}:example.com/multi:1")
    entry, = lay.entries
    original = lay.read_json(entry["digest"])
    by_arch = {m["platform"]["architecture"]: m for m in original["manifests"]}
    root = registry_env / "root"
    lamina_subprocess(root, "config", "set", "keep-blobs", "false")
    lamina_subprocess(root, "load", "-i", archive)
    amd64_layers = lay.read_json(by_arch["amd64"]["digest"])["layers"]
    assert not (root / "blobs" / "sha256" / amd64_layers[0]["digest"][7:]).exists(), "the store is not compact"
    ref = f"{reg.host}/compact/multi:1"
    lamina_cli("tag", "example.com/multi:1", ref, root=root)
    out = lamina_cli("push", ref, root=root).stdout.splitlines()
    raw, digest = skopeo_raw(reg.host, "compact/multi:1")
    assert out[-1] == f"1: digest: {digest} size: {len(raw)}"
    pushed = json.loads(raw)
    assert pushed["mediaType"] == original["mediaType"]
    assert [m["platform"] for m in pushed["manifests"]] == [m["platform"] for m in original["manifests"]]
    for old, new in zip(original["manifests"], pushed["manifests"]):
        child_raw, child_digest = skopeo_raw(reg.host, f"compact/multi@{new['digest']}")
        assert child_digest == new["digest"] and len(child_raw) == new["size"]
        if old["platform"]["architecture"] == "amd64":  # rebuilt: new gzip layer, same config
            child = json.loads(child_raw)
            assert child["config"] == lay.read_json(old["digest"])["config"]
            assert child["layers"][0]["digest"] != amd64_layers[0]["digest"]
            assert reg.has_blob(child["layers"][0]["digest"])
        else:  # kept its blobs: pushed byte for byte
            assert new == old
    # every platform pulls back with its own tree (the pull checks digests and diffIDs)
    back = tmp_path / "back"
    for platform in ("linux/amd64", "linux/arm64/v8", "linux/arm/v7"):
        lamina_cli("pull", "-q", "--platform", platform, ref, root=back)
        dest = tmp_path / f"pulled-{platform.replace('/', '-')}"
        lamina_cli("unpack", ref, dest, root=back)
        assert (dest / "arch").read_bytes() == platform.encode()


def test_using_an_image_compacted_already_reads_no_other_image(tmp_path, monkeypatch):
    """Every use of a store image (unpack, mount, bundle, a copy out) goes through
    snapshots_for, which compacts it: compact() read the manifest and config of every image of
    the store to find where its blobs are used (23 ms an unpack with 200 images, growing with
    them), even when the image had no blob left to drop.  An image compacted already now reads
    none; one whose blobs are still here is still compacted (its blob dropped)."""
    from lamina.store import Store, gc
    lay = ocibuild.Layout(tmp_path / "lay")
    base = {"base": b"b" * 1000}
    for i in range(6):
        lay.add(lay.image([base, {f"f{i}": b"%d" % i}]), f"i{i}")
    root = _compact_store(tmp_path, lay.root, refs=[f"i{i}" for i in range(5)])
    store = Store(root)
    reads = []
    real = gc._read_manifest
    monkeypatch.setattr(gc, "_read_manifest", lambda *a: reads.append(a[1]) or real(*a))
    image = store.resolve("i0:1")
    assert not any(store.has_blob(layer.digest) for layer in image.layers)
    store.snapshots_for(image)
    assert reads == []
    from lamina.transports import copy
    copy(f"oci:{lay.root}:i5", "i5:1", store=store)  # blobs here: the places are looked up
    assert len(reads) >= 5
    assert not any(store.has_blob(layer.digest) for layer in store.resolve("i5:1").layers)


def _tamper_dir_mode(fs):
    os.chmod(os.path.join(fs, "d"), 0o700)


def _tamper_extra_file(fs):
    with open(os.path.join(fs, "d", "planted"), "wb") as f:
        f.write(b"not in the layer\n")


def _tamper_xattr(fs):
    os.setxattr(os.path.join(fs, "d"), "user.planted", b"1")


def _tamper_symlink(fs):
    os.unlink(os.path.join(fs, "d", "sym"))
    os.symlink("/etc/shadow", os.path.join(fs, "d", "sym"))


def _tamper_removed(fs):
    os.unlink(os.path.join(fs, "d", "empty"))


@pytest.mark.parametrize("tamper", [_tamper_dir_mode, _tamper_extra_file, _tamper_xattr, _tamper_symlink,
                                    _tamper_removed], ids=lambda f: f.__name__.removeprefix("_tamper_"))
def test_a_compact_snapshot_changed_where_its_sidecar_does_not_look_is_caught_and_repaired(tmp_path, tamper):
    """A compact snapshot's sidecar references file payloads only: a changed mode, xattr or
    symlink, a name added or removed leave the rebuilt layer bit-exact but the snapshot (what
    unpack, mount and --link hand out) no longer the layer's tree.  fsck extracts the rebuilt
    layer again to compare, as it extracts a blob, and --repair puts back the layer's tree with
    its sidecar (the layer still rebuilds)."""
    raw = _odd_layer()
    lay = ocibuild.Layout(tmp_path / "layout")
    lay.image_of_tars([raw], "odd")
    root = tmp_path / "root"
    lamina_subprocess(root, "config", "set", "dedup", "false")  # (else a file's change shows in its object)
    root = _compact_store(tmp_path, tmp_path / "layout", refs=("odd",))
    chain = _chains(root, "odd:1")[0]
    fs = _fs(root, chain)
    pristine = snapshot(fs)
    tamper(fs)
    proc = lamina_subprocess(root, "fsck", "--json", check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert [(f["kind"], f["subject"]) for f in report["findings"]] == [("bad-snapshot", chain)], report["findings"]
    assert re.search(r"differs from layer sha256:\w+: 'd(/\w+)?': ", report["findings"][0]["message"]), report["findings"]
    report = json.loads(lamina_subprocess(root, "fsck", "--repair", "--json", check=False).stdout)
    assert [(f["kind"], f["repaired"]) for f in report["findings"]] == [("bad-snapshot", True)], report["findings"]
    assert_same(pristine, snapshot(fs), labels=("stored", "repaired"))
    _fsck_clean(root)
    from lamina.store import Store
    store = Store(root)
    image = store.resolve("odd:1")
    with store.layer_reader(image.layers[0], image.diff_ids[0], image.chain_ids[0]) as f:
        assert f.read() == raw


def test_a_compact_store_pulls_no_blob_of_a_layer_it_holds_compact(tmp_path, reg, registry_env):
    """A compact store pulling an image over a layer it holds as a compact snapshot, made from
    the very blob the manifest names: the pull fetched that blob again (fetch() asked only
    whether the blob was stored), extracted nothing from it and dropped it.  A manifest naming
    another blob of the same diffID (here uncompressed) still has it fetched, so the store
    learns from its bytes that it is that layer."""
    from registryfixture import FaultProxy, skopeo_push
    lay = ocibuild.Layout(tmp_path / "layout")
    base = ocibuild.tar_bytes({"etc": None, "etc/os-release": b"ID=compact\n", "usr/f": b"shared\n" * 50})
    tops = {ref: ocibuild.tar_bytes({f"{ref}.txt": f"image {ref}\n".encode()}) for ref in "abc"}
    for ref in "ab":
        lay.image_of_tars([base, tops[ref]], ref)
    lay.image_of_tars([ocibuild.Encoded(base, "plain"), tops["c"]], "c")
    lay.write_index()
    for ref in "abc":
        skopeo_push(f"oci:{lay.root}:{ref}", reg.host, f"held/{ref}:1", extra=("--preserve-digests",))
    blobs = {ref: _layer_blobs(lay.root, ref)[0] for ref in "abc"}
    assert blobs["a"][0] == blobs["b"][0] != blobs["c"][0]
    root = registry_env / "root"
    lamina_cli("config", "set", "keep-blobs", "false", root=root)
    proxy = FaultProxy(reg.host)
    try:
        lamina_cli("pull", "-q", f"{proxy.host}/held/a:1", root=root)
        assert not (root / "blobs" / "sha256" / blobs["a"][0].split(":")[1]).exists()
        for ref in "bc":
            proxy.seen.clear()
            lamina_cli("pull", f"{proxy.host}/held/{ref}:1", root=root)
            got = {path.rsplit("/", 1)[1] for method, path, *_ in proxy.seen
                   if method == "GET" and "/blobs/sha256:" in path}
            assert blobs[ref][1] in got
            assert (blobs[ref][0] in got) == (ref == "c"), (ref, sorted(got), blobs[ref])
            lamina_cli("unpack", f"{proxy.host}/held/{ref}:1", tmp_path / ref, root=root)
            assert (tmp_path / ref / "usr/f").read_bytes() == b"shared\n" * 50
            assert (tmp_path / ref / f"{ref}.txt").read_bytes() == f"image {ref}\n".encode()
    finally:
        proxy.stop()
    _fsck_clean(root)
    assert not (set(os.listdir(root / "blobs" / "sha256")) & {d.split(":")[1] for ds in blobs.values() for d in ds})


@pytest.mark.parametrize("hard", [4096, 64])
def test_a_copy_out_of_a_store_going_compact_under_a_low_open_file_limit(tmp_path, hard):
    """A copy out of a compact store holds each layer blob still there open until it is written
    (else an unpack beside it could compact them away): 200 layers under an API caller's soft
    limit of 64 failed 'Too many open files' (as 'unreadable meta.json …; run lamina fsck
    --repair').  The soft limit is raised as far as needed, as the CLI raises its own; under a
    hard limit too low the copy is refused naming the limit, before it writes anything."""
    lay = ocibuild.Layout(tmp_path / "layout")
    lay.add(lay.image([{f"f{i}": b"%d\n" % i} for i in range(200)]), "many")
    root = tmp_path / "root"
    lamina_subprocess(root, "copy", f"oci:{lay.root}:many", "many:1")
    lamina_subprocess(root, "config", "set", "keep-blobs", "false")   # the blobs go at the next use
    out = tmp_path / "out"
    code = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (64, {hard}))
from lamina import transports
from lamina.store import Store
transports.copy("many:1", "oci:{out}:many", store=Store({str(root)!r}), report=lambda *a: None)
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if hard == 64:
        assert proc.returncode != 0 and not out.exists(), proc.stdout
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("lamina.errors.ImageError: image many:1: ") and "open-file limit is 64" in last, last
        return
    assert proc.returncode == 0, proc.stderr
    assert 64 < int(proc.stdout) <= hard
    other = tmp_path / "other"
    lamina_subprocess(other, "copy", f"oci:{out}:many", "many:1")   # checks every digest and diffID
    lamina_subprocess(other, "unpack", "many:1", tmp_path / "tree")
    assert sorted(os.listdir(tmp_path / "tree"), key=lambda n: int(n[1:])) == [f"f{i}" for i in range(200)]
