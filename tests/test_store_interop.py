"""The store and lamina's archives against real tools: skopeo and umoci read what we write,
and we read what skopeo writes."""
import json
import os

import pytest

import lamina
from conftest import require_tool, run
from lamina.store import Store
from storekit import lamina as cli
from treecmp import assert_same, snapshot

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sample", "image")
NAME = "docker.io/lamina/sample:v1"


@pytest.fixture(scope="module")
def sample_rootfs(tmp_path_factory):
    """The sample image unpacked straight from its layout: the reference tree."""
    dest = tmp_path_factory.mktemp("ref") / "rootfs"
    lamina.unpack(f"oci:{SAMPLE}:latest", dest)
    return dest


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("store") / "root"
    cli(root, "copy", f"oci:{SAMPLE}:latest", "lamina/sample:v1")
    return root


def _manifest_digest(layout, ref="latest"):
    index = json.load(open(os.path.join(layout, "index.json")))
    return next(m["digest"] for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref)


def test_skopeo_inspects_the_store(loaded):
    require_tool("skopeo")
    out = json.loads(run("skopeo", "inspect", f"oci:{loaded}:{NAME}").stdout)
    assert out["Digest"] == _manifest_digest(SAMPLE)
    raw = json.loads(run("skopeo", "inspect", "--config", f"oci:{loaded}:{NAME}").stdout)
    assert raw["rootfs"]["diff_ids"] == Store(loaded).resolve("lamina/sample:v1").diff_ids


def test_umoci_unpacks_from_the_store(loaded, sample_rootfs, tmp_path):
    require_tool("umoci")
    run("umoci", "unpack", "--image", f"{loaded}:{NAME}", tmp_path / "bundle")
    assert_same(snapshot(sample_rootfs), snapshot(tmp_path / "bundle" / "rootfs"), labels=("layout", "umoci"))


def test_skopeo_docker_archive_loads(tmp_path, sample_rootfs):
    require_tool("skopeo")
    archive = tmp_path / "sk.tar"
    run("skopeo", "copy", "-q", f"oci:{SAMPLE}:latest", f"docker-archive:{archive}:example.com/team/app:2")
    root = tmp_path / "root"
    out = cli(root, "load", "-i", archive).stdout
    assert out.splitlines() == ["Loaded image: example.com/team/app:2"]
    image = Store(root).resolve("example.com/team/app:2")
    assert image.config_digest == json.load(open(os.path.join(SAMPLE, "blobs", "sha256",
                                                              _manifest_digest(SAMPLE)[7:])))["config"]["digest"]
    cli(root, "copy", "example.com/team/app:2", f"oci:{tmp_path}/out:x")
    lamina.unpack(f"oci:{tmp_path}/out:x", tmp_path / "rootfs")
    assert_same(snapshot(sample_rootfs), snapshot(tmp_path / "rootfs"), labels=("layout", "loaded"))


def test_skopeo_oci_archive_loads(tmp_path):
    require_tool("skopeo")
    archive = tmp_path / "sk-oci.tar"
    run("skopeo", "copy", "-q", f"oci:{SAMPLE}:latest", f"oci-archive:{archive}:registry.local:5000/x/y:3")
    root = tmp_path / "root"
    assert cli(root, "load", "-i", archive).stdout.splitlines() == ["Loaded image: registry.local:5000/x/y:3"]
    assert Store(root).resolve("registry.local:5000/x/y:3").manifest_digest == _manifest_digest(SAMPLE)


def test_our_docker_archive_loads_into_skopeo(loaded, sample_rootfs, tmp_path):
    require_tool("skopeo")
    require_tool("umoci")
    archive = tmp_path / "ours.tar"
    cli(loaded, "save", "lamina/sample:v1", "-o", archive)
    manifest = json.loads(run("tar", "-xOf", archive, "manifest.json").stdout)
    assert manifest[0]["RepoTags"] == ["lamina/sample:v1"]
    assert json.loads(run("tar", "-xOf", archive, "repositories").stdout).keys() == {"lamina/sample"}
    run("skopeo", "copy", "-q", f"docker-archive:{archive}", f"oci:{tmp_path}/sk:x")
    run("umoci", "unpack", "--image", f"{tmp_path}/sk:x", tmp_path / "bundle")
    assert_same(snapshot(sample_rootfs), snapshot(tmp_path / "bundle" / "rootfs"), labels=("layout", "skopeo"))
    # and skopeo finds it by name, as docker load would tag it
    run("skopeo", "inspect", f"docker-archive:{archive}:lamina/sample:v1")


def test_save_several_images_and_stdout(loaded, tmp_path):
    require_tool("skopeo")
    cli(loaded, "copy", "lamina/sample:v1", "other/name:7")
    archive = tmp_path / "two.tar"
    with open(archive, "wb") as f:
        cli(loaded, "save", "lamina/sample", "other/name:7", stdout=f, stderr=None, capture_output=False)
    tags = sorted(t for entry in json.loads(run("tar", "-xOf", archive, "manifest.json").stdout)
                  for t in entry["RepoTags"])
    assert tags == ["lamina/sample:v1", "other/name:7"]  # one image, one manifest entry with both tags
    for tag in tags:
        run("skopeo", "inspect", f"docker-archive:{archive}:{tag}")
    root2 = tmp_path / "root2"
    assert sorted(cli(root2, "load", "-i", archive).stdout.splitlines()) == [
        "Loaded image: lamina/sample:v1", "Loaded image: other/name:7"]


def test_our_oci_archive_and_layout_read_by_skopeo_and_umoci(loaded, sample_rootfs, tmp_path):
    require_tool("skopeo")
    require_tool("umoci")
    cli(loaded, "save", "--format", "oci-archive", "lamina/sample:v1", "-o", tmp_path / "o.tar")
    out = json.loads(run("skopeo", "inspect", f"oci-archive:{tmp_path}/o.tar:{NAME}").stdout)
    assert out["Digest"] == _manifest_digest(SAMPLE)
    cli(loaded, "copy", "lamina/sample:v1", f"oci:{tmp_path}/lay:v1")
    cli(loaded, "copy", "lamina/sample:v1", f"oci:{tmp_path}/lay:v2")  # a second name in the same layout
    run("umoci", "unpack", "--image", f"{tmp_path}/lay:v2", tmp_path / "bundle")
    assert_same(snapshot(sample_rootfs), snapshot(tmp_path / "bundle" / "rootfs"), labels=("layout", "umoci"))
    cli(loaded, "copy", "lamina/sample:v1", f"oci-archive:{tmp_path}/single.tar:v1")
    assert json.loads(run("skopeo", "inspect", f"oci-archive:{tmp_path}/single.tar:v1").stdout)["Digest"] \
        == _manifest_digest(SAMPLE)


def test_save_then_load_round_trips_the_image_id(loaded, tmp_path):
    archive = tmp_path / "rt.tar"
    cli(loaded, "save", "lamina/sample:v1", "-o", archive)
    before = Store(loaded).resolve("lamina/sample:v1")
    cli(loaded, "load", "-i", archive)
    after = Store(loaded).resolve("lamina/sample:v1")
    # Same image ID, and no uncompressed duplicate: docker load reuses what it has.
    assert after.config_digest == before.config_digest and after.manifest_digest == before.manifest_digest
    root2 = tmp_path / "fresh"
    cli(root2, "load", "-i", archive)
    assert Store(root2).resolve("lamina/sample:v1").config_digest == before.config_digest


def _raw_config_digest(ref):
    import hashlib
    raw = run("skopeo", "inspect", "--raw", "--config", ref).stdout.encode()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def test_save_of_an_untagged_image_and_of_two_images_read_by_skopeo(loaded, tmp_path):
    """An image saved by its ID has no RepoTags (``null``, as moby's tarexport writes it) and
    skopeo reads it as the archive's only image; two images in one archive are skopeo's ``@0`` and
    ``@1`` in manifest.json's order, each by its tag too, configs byte for byte."""
    require_tool("skopeo")
    import ocibuild as ob
    image = Store(loaded).resolve("lamina/sample:v1")
    untagged = tmp_path / "untagged.tar"
    cli(loaded, "save", image.config_digest, "-o", untagged)
    manifest = json.loads(run("tar", "-xOf", untagged, "manifest.json").stdout)
    assert manifest == [{"Config": image.config_digest[7:] + ".json", "RepoTags": None,
                         "Layers": [d[7:] + ".tar" for d in image.diff_ids]}]
    assert _raw_config_digest(f"docker-archive:{untagged}") == image.config_digest
    run("skopeo", "copy", "-q", f"docker-archive:{untagged}", f"oci:{tmp_path}/sk:x")
    assert json.loads(run("skopeo", "inspect", f"oci:{tmp_path}/sk:x").stdout)["RepoTags"] == []

    lay = ob.Layout(tmp_path / "other")
    lay.add(lay.image([{"other": b"o"}]), "o")
    cli(loaded, "copy", f"oci:{lay.root}:o", "other/image:1")
    other = Store(loaded).resolve("other/image:1")
    two = tmp_path / "two.tar"
    cli(loaded, "save", "other/image:1", "lamina/sample:v1", "-o", two)
    entries = json.loads(run("tar", "-xOf", two, "manifest.json").stdout)
    assert [e["RepoTags"] for e in entries] == [["other/image:1"], ["lamina/sample:v1"]]
    for i, (img, tag) in enumerate([(other, "other/image:1"), (image, "lamina/sample:v1")]):
        assert _raw_config_digest(f"docker-archive:{two}:@{i}") == img.config_digest
        assert _raw_config_digest(f"docker-archive:{two}:{tag}") == img.config_digest
    root2 = tmp_path / "root2"
    assert sorted(cli(root2, "load", "-i", two).stdout.splitlines()) == [
        "Loaded image: lamina/sample:v1", "Loaded image: other/image:1"]


def test_load_of_skopeo_archives_with_additional_tags_and_with_none(tmp_path):
    """skopeo writes every name (``--additional-tag``) into one manifest.json entry, fully
    qualified (``docker.io/ex/a:1``), and none at all (``RepoTags: []``) when copied without a
    tag: docker load reads them as the names and as an untagged image."""
    require_tool("skopeo")
    tagged, bare = tmp_path / "tagged.tar", tmp_path / "bare.tar"
    run("skopeo", "copy", "-q", f"oci:{SAMPLE}:latest", f"docker-archive:{tagged}:ex/a:1",
        "--additional-tag", "ex/b:2")
    assert json.loads(run("tar", "-xOf", tagged, "manifest.json").stdout)[0]["RepoTags"] == [
        "docker.io/ex/a:1", "docker.io/ex/b:2"]
    run("skopeo", "copy", "-q", f"oci:{SAMPLE}:latest", f"docker-archive:{bare}")
    assert json.loads(run("tar", "-xOf", bare, "manifest.json").stdout)[0]["RepoTags"] == []
    root = tmp_path / "root"
    assert cli(root, "load", "-i", tagged).stdout.splitlines() == ["Loaded image: ex/a:1", "Loaded image: ex/b:2"]
    config_digest = Store(root).resolve("ex/a:1").config_digest
    root2 = tmp_path / "root2"
    assert cli(root2, "load", "-i", bare).stdout.splitlines() == [f"Loaded image ID: {config_digest}"]
    rows = cli(root2, "images", "--format", "{{.Repository}} {{.Tag}} {{.ID}}").stdout.splitlines()
    assert rows == [f"<none> <none> {config_digest[7:19]}"]
