"""Images other container tools write (tests/toolimages.py: buildah, podman, skopeo, umoci,
mmdebstrap), read by lamina and compared with umoci's reading of the same image.

The oracle for an image: ``skopeo copy`` of it into a gzip OCI layout (umoci 0.4.7 reads no
zstd; skopeo keeps each layer's tar and the config's diffIDs), unpacked by ``umoci raw unpack``.
lamina reads each image as the tool wrote it (every compression, every archive kind), in both
on-disk formats (``overlay`` mounted by the kernel); each tool's layer tars go through every
path of everypath.py; a store's ``save`` of each is read back by skopeo with the same diffIDs.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

import everypath
import toolimages
from conftest import require_root, require_tool
from treecmp import compare, snapshot

IMAGES = ["buildah-overlay/oci", "buildah-overlay/oci-zstd", "buildah-overlay/docker-archive",
          "buildah-overlay/oci-archive", "buildah-vfs/oci", "buildah-vfs/oci-zstd", "buildah-vfs/docker-archive",
          "buildah-vfs/oci-archive", *(f"podman/docker-archive:{t}" for t in toolimages.PODMAN_TAGS),
          "podman/oci-archive", "skopeo/zstd", "skopeo/zstd-chunked", "skopeo/gzip-1", "skopeo/gzip-9",
          "umoci/insert", "mmdebstrap/tar", "buildah-run/oci"]
# one image per set of layer tars (the others hold the same tars, compressed or archived otherwise)
LAYER_SETS = ["buildah-overlay/oci", "buildah-vfs/oci", "umoci/insert", "mmdebstrap/tar", "buildah-run/oci"]


@pytest.fixture(scope="session")
def tool_images(tmp_path_factory):
    require_root()
    return toolimages.build(tmp_path_factory.mktemp("tool-images"))


def _oracle(work, spec):
    """umoci raw unpack of the image (copied by skopeo into a gzip OCI layout)."""
    require_tool("umoci")
    os.makedirs(work, exist_ok=True)
    layout = os.path.join(work, "oracle-layout")
    subprocess.run(["skopeo", "copy", "-q", "--dest-compress-format", "gzip", spec, f"oci:{layout}:img"],
                   check=True, capture_output=True)
    dest = os.path.join(work, "oracle")
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout}:img", dest], check=True, capture_output=True)
    return snapshot(dest), layout


def _same(expected, got, label):
    diff = compare(expected, got, labels=("umoci", label))
    assert not diff, f"{label} differs from umoci:\n{diff}"


def _diff_ids(spec):
    out = subprocess.run(["skopeo", "inspect", "--config", spec], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["rootfs"]["diff_ids"]


@pytest.mark.parametrize("name", IMAGES)
def test_lamina_unpacks_it_as_umoci_does(g, tool_images, name):
    import lamina
    spec = tool_images[name]
    expected, _ = _oracle(g.dest, spec)
    _same(expected, snapshot(lamina.unpack(spec, os.fspath(g.dest / "dir")).dest), "unpack")
    stats = lamina.unpack(spec, os.fspath(g.dest / "ovl"), format="overlay")
    with everypath.overlay_mount(stats.layer_dirs, os.fspath(g.dest / "ovl-mnt")) as mnt:
        _same(expected, snapshot(mnt), "unpack --format overlay, mounted")


@pytest.mark.parametrize("name", LAYER_SETS)
def test_every_path_reads_its_layers_as_umoci_does(g, tool_images, name):
    _, layout = _oracle(g.dest, tool_images[name])
    tars = toolimages.layer_tars(layout, "img")
    work = g.dest / "paths"
    results = everypath.run_paths(work, tars, everypath.PATHS + ("compact-save", "apply", "apply-atomic"))
    results = {"umoci": everypath.umoci_tree(work, tars), **results}
    everypath.assert_agree(results, context=f"{name}\n{everypath.describe(tars)}")


@pytest.mark.parametrize("keep_blobs", ["true", "false"])
@pytest.mark.parametrize("name", IMAGES)
def test_the_stores_save_of_it_round_trips_through_skopeo(g, tool_images, name, keep_blobs):
    from storekit import lamina
    spec = tool_images[name]
    store = g.dest / "store"
    lamina(store, "config", "set", "keep-blobs", keep_blobs)
    lamina(store, "copy", spec, "img:1")
    want = _diff_ids(spec)
    for fmt in ("docker-archive", "oci-archive"):
        out = g.dest / f"saved-{fmt}.tar"
        lamina(store, "save", "--format", fmt, "-o", out, "img:1")
        assert _diff_ids(f"{fmt}:{out}") == want, fmt
        # skopeo reads every layer back (a copy checks each blob's digest), umoci unpacks it
        expected, _ = _oracle(g.dest / fmt, spec)
        got, _ = _oracle(g.dest / f"{fmt}-saved", f"{fmt}:{out}")
        _same(expected, got, f"lamina save --format {fmt}, read by skopeo and umoci")


@pytest.mark.parametrize("name", ["skopeo/zstd-chunked", "buildah-vfs/oci-zstd", "umoci/insert",
                                  "podman/docker-archive:localhost/top:second"])
def test_pulled_from_a_registry_as_skopeo_pushed_it(g, tool_images, name):
    """skopeo copy to a real docker-registry (the blobs as the tool wrote them: zstd:chunked's
    skippable frames included), then ``unpack docker://`` (both formats) and pull + unpack."""
    import lamina
    from lamina.registry.source import RegistrySource
    from lamina.store import Store
    from lamina.store import materialize as mat
    spec = tool_images[name]
    expected, _ = _oracle(g.dest, spec)
    host = everypath.shared_registry().host
    ref = f"{host}/tool-images/{name.replace(':', '-').replace('/', '-').lower()}-{os.getpid()}:1"
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", spec, f"docker://{ref}"],
                   check=True, capture_output=True)
    client = everypath._registry_client(host)
    _same(expected, snapshot(lamina.unpack(RegistrySource(ref, client=client), os.fspath(g.dest / "reg")).dest),
          "unpack docker://")
    stats = lamina.unpack(RegistrySource(ref, client=client), os.fspath(g.dest / "reg-ovl"), format="overlay")
    with everypath.overlay_mount(stats.layer_dirs, os.fspath(g.dest / "reg-ovl-mnt")) as mnt:
        _same(expected, snapshot(mnt), "unpack docker:// --format overlay, mounted")
    store = Store(os.fspath(g.dest / "store"))
    lamina.pull(ref, store=store, client=client)
    mat.materialize(store, ref, os.fspath(g.dest / "pulled"))
    _same(expected, snapshot(g.dest / "pulled"), "pull, then unpack from the store")


def test_podman_saves_shared_layers_once_and_lamina_loads_every_tag(g, tool_images):
    """podman save -m of three names (two tags of one image, and its base): one load gives all
    three, the base's layer one snapshot shared by both images."""
    from storekit import lamina
    archive = tool_images["podman/docker-archive:" + toolimages.PODMAN_TAGS[0]].split(":")[1]
    store = g.dest / "store"
    lamina(store, "load", "-i", archive)
    listed = lamina(store, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert sorted(listed) == sorted(toolimages.PODMAN_TAGS), listed
    top = json.loads(lamina(store, "inspect", toolimages.PODMAN_TAGS[0]).stdout)[0]
    base = json.loads(lamina(store, "inspect", toolimages.PODMAN_TAGS[2]).stdout)[0]
    assert top["Id"] == json.loads(lamina(store, "inspect", toolimages.PODMAN_TAGS[1]).stdout)[0]["Id"]
    assert top["RootFS"]["Layers"][:1] == base["RootFS"]["Layers"]
    snapshots = os.listdir(store / "snapshots")
    assert len([s for s in snapshots if not s.startswith(".")]) == len(top["RootFS"]["Layers"]), snapshots
    for tag in toolimages.PODMAN_TAGS:
        expected, _ = _oracle(g.dest / tag.replace("/", "-"), f"docker-archive:{archive}:{tag}")
        dest = g.dest / f"unpacked-{tag.replace('/', '-')}"
        lamina(store, "unpack", tag, dest)
        _same(expected, snapshot(dest), f"load, then unpack {tag}")


def test_skopeos_zstd_chunked_of_a_layer_padded_past_its_end_blocks_is_refused_naming_it(g):
    """skopeo 1.9's zstd:chunked writes a layer's entries and end blocks only: a tar padded past
    them (Python's tarfile, GNU tar: records of 10240 bytes) comes out shorter, while the config
    keeps its diffID.  That image is broken; lamina says which layer, as every verifying reader
    must (CONFORMANCE.md)."""
    import lamina
    import lamina.errors
    sample = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sample", "image")
    layout = g.dest / "chunked"
    subprocess.run(["skopeo", "copy", "-q", "--dest-compress-format", "zstd:chunked", f"oci:{sample}:latest",
                    f"oci:{layout}:latest"], check=True, capture_output=True)
    with pytest.raises(lamina.errors.LaminaError) as info:
        lamina.unpack(f"oci:{layout}:latest", os.fspath(g.dest / "dir"))
    assert "layer 2 of 3" in str(info.value) and "diff" in str(info.value).lower(), str(info.value)
