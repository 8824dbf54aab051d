"""Store snapshots mounted with kernel overlayfs show exactly a flat unpack, whatever order
the snapshots were created in (implicit directories inherit their metadata from below)."""
import os
import subprocess

import pytest

import lamina
import ocibuild as ob
from conftest import require_root, require_tool, run
from lamina.errors import StoreError
from lamina.store import Store
from tarbuild import Tar
from treecmp import assert_same, snapshot


def _layers():
    # Layer 0: /etc is 0700, owned 5:6, with an xattr. Layer 1 adds etc/app/conf without listing
    # etc or etc/app, so the extractor invents them; in a mount they must still look like layer 0's.
    base = Tar()
    base.pax({"SCHILY.xattr.user.origin": "base"})
    base.entry("etc/", type=b"5", mode=0o700, uid=5, gid=6)
    base.file("etc/base.conf", b"base\n")
    top = Tar()
    top.file("etc/app/conf", b"top\n")
    return [base.bytes(), top.bytes()]


def _layout(path):
    lay = ob.Layout(path)
    descs, ids = [], []
    for raw in _layers():
        lay.blob(raw)
        descs.append(ob.desc(ob.OCI_LAYER, raw))
        ids.append(ob.sha256(raw))
    cfg = lay.json_blob({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": ids}},
                        ob.OCI_CONFIG)
    man = lay.json_blob({"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST, "config": cfg, "layers": descs},
                        ob.OCI_MANIFEST)
    lay.add(man, "implicit")
    return lay


@pytest.fixture
def mounted_equals_flat(tmp_path):
    require_root()
    require_tool("mount")

    def check(store, image):
        dirs = store.snapshots_for(image)
        flat = tmp_path / "flat"
        lamina.unpack(f"oci:{tmp_path}/src:implicit", flat)
        mnt = tmp_path / "mnt"
        mnt.mkdir(exist_ok=True)
        run("mount", "-t", "overlay", "overlay", "-o", "lowerdir=" + ":".join(str(d) for d in reversed(dirs)), mnt)
        try:
            assert_same(snapshot(flat), snapshot(mnt), labels=("flat unpack", "overlay of snapshots"))
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        assert os.stat(dirs[1] / "etc").st_mode & 0o777 == 0o700 and os.stat(dirs[1] / "etc").st_uid == 5
        assert store.fsck().clean
    return check


def test_in_order(tmp_path, mounted_equals_flat):
    lay = _layout(tmp_path / "src")
    store = Store(tmp_path / "root")
    from lamina import transports
    transports.copy(f"oci:{lay.root}:implicit", "implicit:1", store=store)
    mounted_equals_flat(store, store.resolve("implicit:1"))


def test_top_snapshot_created_before_its_parent(tmp_path, mounted_equals_flat):
    lay = _layout(tmp_path / "src")
    store = Store(tmp_path / "root")
    for name in os.listdir(os.path.join(lay.root, "blobs", "sha256")):
        store.put_blob(open(os.path.join(lay.root, "blobs", "sha256", name), "rb").read(), f"sha256:{name}")
    image = store.add_image(lay.entries[0]["digest"], "implicit:1")
    # As a registry pull may do: the top layer arrives first.  It implies dirs of the
    # layer below, so it cannot be extracted alone: it says so and keeps nothing.
    from lamina.errors import NeedsLowers
    with pytest.raises(NeedsLowers):
        store.ensure_snapshot(image.layers[1].digest, image.diff_ids[1], image.chain_ids[0], defer=True)
    assert store.snapshot_info(image.chain_ids[1]) is None
    assert not [n for n in os.listdir(store.paths.snapshots) if not n.endswith(".lock")]
    with pytest.raises(StoreError):  # and never without its parent when not deferred
        store.ensure_snapshot(image.layers[1].digest, image.diff_ids[1], image.chain_ids[0])
    assert store.fsck().clean
    mounted_equals_flat(store, image)
    assert store.snapshot_info(image.chain_ids[1]) is not None
