"""``lamina load`` of a multi-arch archive keeps every platform under the tag, as
``pull --all-platforms`` does: the archive's index is the image's repo digest, every
platform's manifest, config and layers are stored (only the chosen one extracted),
fsck is clean, prune keeps them, and ``save --format oci-archive`` writes them all."""
import json
import os

import pytest

import ocibuild as ob
from conftest import require_tool, run
from lamina import images as api
from lamina.store import Store
from storekit import lamina

REF = "example.com/multi:1"
ARCHES = {"amd64": "linux/amd64", "arm64": "linux/arm64/v8", "arm": "linux/arm/v7"}


@pytest.fixture
def multi_archive(tmp_path):
    """(oci-archive written by skopeo copy --all, its index digest, the digests in that index)."""
    require_tool("skopeo")
    lay = ob.multiarch(tmp_path / "lay", ref="1")  # three platforms and an attestation
    archive = tmp_path / "multi.tar"
    run("skopeo", "copy", "-q", "--all", f"oci:{lay.root}:1", f"oci-archive:{archive}:{REF}")
    entry, = json.loads(run("tar", "xOf", archive, "index.json").stdout)["manifests"]
    index = lay.read_json(entry["digest"])
    return archive, entry["digest"], sorted(m["digest"] for m in index["manifests"])


def _arch_file(store, image):
    return (store.paths.snapshot(image.chain_ids[-1]) / "fs" / "arch").read_bytes().decode()


@pytest.mark.parametrize("platform", [None, "linux/arm64"])
def test_load_keeps_every_platform(tmp_path, multi_archive, platform):
    archive, index_digest, children = multi_archive
    root = tmp_path / "store"
    lamina(root, "load", "-i", archive, *(["--platform", platform] if platform else []))
    store = Store(root)
    image = store.resolve(REF)
    want = platform or "linux/amd64"
    assert str(image.platform).startswith(want) and _arch_file(store, image).startswith(want)
    got_index, platforms = store.platforms(image)
    assert got_index == index_digest
    assert sorted(i.manifest_digest for i in platforms) == children
    for i in platforms:  # every blob of every platform, but only the tagged one extracted
        assert all(store.has_blob(b) for b in i.blobs), i.manifest_digest
    assert [c for c in os.listdir(root / "snapshots")] == [image.chain_ids[-1][7:]]

    details = api.inspect(store, REF)
    assert details.index_digest == index_digest
    assert set(ARCHES.values()) <= set(details.platforms)
    assert f"example.com/multi@{index_digest}" in lamina(root, "inspect", REF).stdout
    assert index_digest in lamina(root, "images", "--digests", "--no-trunc").stdout

    report = json.loads(lamina(root, "fsck", "--format", "json").stdout)
    assert report["findings"] == [], report
    lamina(root, "image", "prune", "-f")
    for d in children + [index_digest]:
        assert store.has_blob(d), d


def test_saved_again_it_is_the_same_multi_arch_image(tmp_path, multi_archive):
    archive, index_digest, _ = multi_archive
    root = tmp_path / "store"
    lamina(root, "load", "-i", archive)
    again = tmp_path / "again.tar"
    lamina(root, "save", "--format", "oci-archive", "-o", again, REF)
    saved, = json.loads(run("tar", "xOf", again, "index.json").stdout)["manifests"]
    assert saved["digest"] == index_digest
    for arch, platform in ARCHES.items():
        out = run("skopeo", "--override-arch", arch, "inspect", f"oci-archive:{again}:{REF}").stdout
        assert json.loads(out)["Architecture"] == arch
    # and a second store loads what the first saved, whole
    lamina(tmp_path / "second", "load", "-i", again)
    second = Store(tmp_path / "second")
    assert second.platforms(second.resolve(REF))[0] == index_digest


def test_a_partial_export_keeps_the_platforms_it_holds(tmp_path, multi_archive):
    """docker save of one platform lists every platform in its index but holds the blobs of
    one: the others are left out, and the image is still whole by fsck."""
    archive, index_digest, children = multi_archive
    tree = tmp_path / "tree"
    tree.mkdir()
    run("tar", "xf", archive, "-C", tree)

    def doc(digest):
        return json.loads((tree / "blobs/sha256" / digest[7:]).read_bytes())

    arm = next(d for d in children if doc(doc(d)["config"]["digest"]).get("architecture") == "arm")
    manifest = doc(arm)
    for layer in manifest["layers"]:
        os.unlink(tree / "blobs/sha256" / layer["digest"][7:])
    partial = tmp_path / "partial.tar"
    run("tar", "cf", partial, "-C", tree, ".")
    root = tmp_path / "store"
    lamina(root, "load", "-i", partial)
    store = Store(root)
    got_index, platforms = store.platforms(store.resolve(REF))
    assert got_index == index_digest
    assert sorted(i.manifest_digest for i in platforms) == sorted(set(children) - {arm})
    report = json.loads(lamina(root, "fsck", "--format", "json").stdout)
    assert report["findings"] == [], report


def test_a_docker_archive_of_a_multi_arch_image_and_another_is_read_by_skopeo_and_umoci(tmp_path, multi_archive):
    """docker's archive format holds one image per tag, so ``save`` (docker-archive) of a multi-arch
    image writes the platform the tag was loaded as, as docker save does.  skopeo reads both
    images of the archive by name, umoci unpacks what skopeo copied out, and the archive skopeo
    writes back loads into a store with the same layers (skopeo rewrites the config it converts,
    so the image ID is its own)."""
    require_tool("umoci")
    archive, _, _ = multi_archive
    root = tmp_path / "store"
    lamina(root, "load", "-i", archive, "--platform", "linux/arm64")
    lay = ob.Layout(tmp_path / "other")
    lay.add(lay.image([{"other": b"second image\n"}]), "2")
    lamina(root, "copy", f"oci:{lay.root}:2", "example.com/other:2")
    saved = tmp_path / "two.tar"
    lamina(root, "save", "-o", saved, REF, "example.com/other:2")
    store = Store(root)
    layers = {name: store.resolve(name).diff_ids for name in (REF, "example.com/other:2")}
    for name, path, content in ((REF, "arch", "linux/arm64/v8"), ("example.com/other:2", "other", "second image\n")):
        tag = name.rsplit(":", 1)[1]
        run("skopeo", "copy", "-q", f"docker-archive:{saved}:{name}", f"oci:{tmp_path}/copied:{tag}")
        run("umoci", "unpack", "--image", f"{tmp_path}/copied:{tag}", tmp_path / f"bundle-{tag}")
        assert (tmp_path / f"bundle-{tag}" / "rootfs" / path).read_text() == content
        back = tmp_path / f"back-{tag}.tar"
        run("skopeo", "copy", "-q", f"oci:{tmp_path}/copied:{tag}", f"docker-archive:{back}:{name}")
        lamina(tmp_path / "again", "load", "-i", back)
        assert Store(tmp_path / "again").resolve(name).diff_ids == layers[name]
