"""``lamina unpack docker://REF DEST``: a registry image straight into a directory, nothing in the store.

The reference result is ``lamina unpack oci:LAYOUT`` of the very layout that was pushed; the
registry is a real docker-registry on loopback, with a FaultProxy in front where the test
needs to cut, corrupt or count bytes.
"""
import hashlib
import io
import json
import os
import tarfile
import time

import pytest

import ocibuild
import treecmp
from registryfixture import FaultProxy, fast_random, lamina_cli, reg, registry_env, skopeo_push  # noqa: F401

from lamina import errors
from lamina.registry.source import READ_AHEAD, RegistrySource
from lamina.unpacker import unpack

MiB = 1 << 20


@pytest.fixture(scope="module")
def images(reg, tmp_path_factory):  # noqa: F811
    """app:1 = base (etc, a 3 MiB random file, a doomed dir) + an app layer + a small layer that
    deletes the doomed dir (small enough for top-down skipping); multi:1 = amd64 + arm64 index."""
    lay = ocibuild.Layout(tmp_path_factory.mktemp("lay") / "oci")
    base = {"etc/": None, "etc/os-release": b"ID=lamina-test\n", "big.bin": fast_random(3 * MiB, 7),
            "doomed/": None, "doomed/cache.bin": fast_random(1 * MiB, 8)}
    app = {"app/": None, "app/run.sh": b"#!/bin/sh\necho hi\n", "etc/app.conf": b"x=1\n"}
    cleanup = {".wh.doomed": b"", "etc/cleaned": b"yes\n"}
    m = lay.image([base, app, cleanup])
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "app:1", extra=("--preserve-digests",))
    ms = []
    for arch in ("amd64", "arm64"):
        d = lay.image([{"arch": f"linux/{arch}\n".encode()}], arch=arch)
        ms.append(ocibuild.with_platform(d, "linux", arch, None))
    lay.add(lay.index(ms), "multi")
    skopeo_push(f"oci:{lay.root}:multi", reg.host, "multi:1", all_images=True, extra=("--preserve-digests",))
    return {"layout": lay, "manifest": m, "layers": lay.read_json(m["digest"])["layers"]}


@pytest.fixture
def proxy(reg):  # noqa: F811
    p = FaultProxy(reg.host)
    yield p
    p.stop()


def _expected(images, tmp_path, fmt="dir", ref="1"):
    out = tmp_path / f"expected-{fmt}-{ref}"
    unpack(f"oci:{images['layout'].root}:{ref}", out, format=fmt)
    return out


def test_flat_rootfs_matches_a_local_unpack(reg, images, registry_env, tmp_path):  # noqa: F811
    dest = tmp_path / "rootfs"
    out = lamina_cli("unpack", f"docker://{reg.host}/app:1", dest).stdout
    assert f"manifest: {images['manifest']['digest']}" in out
    lines = out.splitlines()
    assert lines[0] == "1: Unpacking from app"
    assert lines[1:4] == [f"{d['digest'][7:19]}: Pull complete" for d in images["layers"]]
    treecmp.assert_same(treecmp.snapshot(_expected(images, tmp_path)), treecmp.snapshot(dest))
    assert not (dest / "doomed").exists() and (dest / "etc" / "cleaned").read_bytes() == b"yes\n"
    assert not (registry_env / "home" / ".local" / "share" / "lamina").exists()   # nothing stored


def test_overlay_layer_dirs_match_a_local_unpack(reg, images, registry_env, tmp_path):  # noqa: F811
    dest = tmp_path / "layers"
    stats = unpack(RegistrySource(f"{reg.host}/app:1"), dest, format="overlay")
    assert len(stats.layer_dirs) == 3
    want = _expected(images, tmp_path, "overlay")
    for i in range(3):
        treecmp.assert_same(treecmp.snapshot(want / "layers" / str(i)), treecmp.snapshot(dest / "layers" / str(i)),
                            context=f"layer {i}")


def test_platform_is_chosen_from_the_index(reg, images, registry_env, tmp_path):  # noqa: F811
    dest = tmp_path / "arm"
    lamina_cli("unpack", "--platform", "linux/arm64", f"docker://{reg.host}/multi:1", dest)
    assert (dest / "arch").read_bytes() == b"linux/arm64\n"
    p = lamina_cli("unpack", "--platform", "linux/s390x", f"docker://{reg.host}/multi:1", tmp_path / "no",
                   check=False)
    assert p.returncode == 1 and p.stderr.startswith("lamina: error: ") and "linux/arm64" in p.stderr
    assert not (tmp_path / "no").exists()


def test_each_blob_crosses_the_wire_once_even_when_scanned_top_down(proxy, images, registry_env, tmp_path):
    """The small deleting layer is read first (top-down scan) and again when applied: from a spool."""
    source = RegistrySource(f"{proxy.host}/app:1")
    with source:
        stats = unpack(source, tmp_path / "rootfs")
    assert stats.layers[0].hidden, "top-down skipping did not happen (the doomed dir was written)"
    for layer in images["layers"]:
        assert proxy.bytes_for(layer["digest"]) == layer["size"], layer
    assert source.downloaded == sum(layer["size"] for layer in images["layers"])
    assert not os.path.exists(source._spool_dir or "/nonexistent")   # spool removed on close


def test_resolved_once_for_the_cli_and_the_unpacker(proxy, images, registry_env):
    """The CLI resolves a docker:// source before importing the unpacker (the first blobs then
    download meanwhile), and the unpacker resolves it again: the second answer is the first
    one, with no second round of manifest and config requests and no second download."""
    source = RegistrySource(f"{proxy.host}/app:1")
    with source:
        image = source.resolve()
        asked = len(proxy.seen)
        assert source.resolve() is image
        assert len(proxy.seen) == asked
        assert [s[1] for s in proxy.requests_for("/manifests/", "GET")] == ["/v2/app/manifests/1"]


def test_layers_download_ahead_of_the_reader_in_unpack_order(proxy, images, registry_env):
    """Read-ahead: with nothing read yet, the blobs arrive one download after the other, in the
    order a flat unpack reads them: the small top layers it scans, top-down (both upper layers
    here), into spool files (they are read twice), then the bottom layer, into memory (as much of
    it as READ_AHEAD allows)."""
    layers = images["layers"]
    source = RegistrySource(f"{proxy.host}/app:1")
    with source:
        image = source.resolve()
        deadline = time.monotonic() + 30
        ahead = sum(d["size"] for d in layers[1:]) + min(layers[0]["size"], READ_AHEAD)
        while source.downloaded < ahead:
            assert time.monotonic() < deadline, "the layers were not fetched ahead of the reader"
            time.sleep(0.01)
        digests = {d["digest"] for d in layers}   # the config's GET may come between them
        gets = [s[1].rsplit("/", 1)[1] for s in proxy.seen if s[0] == "GET" and "/blobs/" in s[1]]
        assert [g for g in gets if g in digests][-3:] == [layers[2]["digest"], layers[1]["digest"],
                                                          layers[0]["digest"]]
        spool = source._spool_dir
        spooled = sorted(f"{i}-{d['digest'].replace(':', '-')}" for i, d in enumerate(layers) if i)
        assert sorted(os.listdir(spool)) == spooled
        for layer in (image.layers[0], image.layers[2], image.layers[2]):   # a scanned layer: twice
            with layer.open() as f:
                assert hashlib.sha256(f.read()).hexdigest() == layer.digest[7:]
    assert not os.path.exists(spool)
    for layer in layers:
        assert proxy.bytes_for(layer["digest"]) == layer["size"], layer


def test_cut_connection_resumes_with_range_mid_extraction(proxy, images, registry_env, tmp_path):
    big = images["layers"][0]
    proxy.add("cut", method="GET", path=f"/blobs/{big['digest']}", after=1 * MiB, times=2)
    dest = tmp_path / "rootfs"
    unpack(RegistrySource(f"{proxy.host}/app:1"), dest)
    gets = proxy.requests_for(f"/blobs/{big['digest']}", "GET")
    assert [g[2].get("Range") for g in gets] == [None, f"bytes={1 * MiB}-", f"bytes={2 * MiB}-"]
    assert proxy.bytes_for(big["digest"]) == big["size"]
    treecmp.assert_same(treecmp.snapshot(_expected(images, tmp_path)), treecmp.snapshot(dest))


def test_corrupt_blob_fails_and_leaves_no_dest(reg, proxy, registry_env, tmp_path):  # noqa: F811
    lay = ocibuild.Layout(tmp_path / "lay")
    m = lay.image([{"blob.bin": fast_random(2 * MiB, 3)}], compress=False)
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "corrupt:1", extra=("--preserve-digests",))
    layer = lay.read_json(m["digest"])["layers"][0]
    proxy.add("corrupt", path=f"/blobs/{layer['digest']}", offset=layer["size"] - 5000, times=None)
    out = tmp_path / "out"
    p = lamina_cli("unpack", f"docker://{proxy.host}/corrupt:1", out / "rootfs", check=False)
    assert p.returncode == 1, p.stdout
    assert p.stderr.startswith("lamina: error: ") and layer["digest"] in p.stderr, p.stderr
    assert "digest" in p.stderr and len(p.stderr.splitlines()) == 1
    assert os.listdir(out) == []   # neither DEST nor a staging dir left behind


def test_diffid_mismatch_fails_and_leaves_no_dest(reg, registry_env, tmp_path):  # noqa: F811
    lay = ocibuild.Layout(tmp_path / "bad")
    m = lay.image([{"f": b"one"}], diff_ids=["sha256:" + "0" * 64])
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "baddiff:1", extra=("--preserve-digests",))
    dest = tmp_path / "out" / "rootfs"
    with pytest.raises(errors.DigestMismatchError, match="diffID"):
        unpack(RegistrySource(f"{reg.host}/baddiff:1"), dest)
    assert not dest.exists() and os.listdir(tmp_path / "out") == []


def test_json_output_and_store_untouched(reg, images, registry_env, tmp_path):  # noqa: F811
    root = tmp_path / "store"
    out = lamina_cli("unpack", "--json", f"docker://{reg.host}/app:1", tmp_path / "r", root=root).stdout
    doc = json.loads(out)
    assert doc["manifest_digest"] == images["manifest"]["digest"] and doc["source"] == f"docker://{reg.host}/app:1"
    assert not root.exists()


def test_next_download_starts_as_the_running_one_nearly_ends(reg, proxy, registry_env):  # noqa: F811
    """Read-ahead takes one blob at a time, but the next request goes out once the running blob has
    at most NEXT_AHEAD bytes left: its round trip overlaps the end of the other transfer, and the
    link does not idle between two blobs.  The bottom blob is held just before its end here: the
    next one is requested meanwhile."""
    from lamina.registry.source import NEXT_AHEAD
    lay = ocibuild.Layout(registry_env / "lay-next")
    m = lay.image([{"base.bin": fast_random(NEXT_AHEAD + NEXT_AHEAD // 2, 31)},
                   {"top.bin": fast_random(NEXT_AHEAD, 32)}], compress=False)
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "next:1", extra=("--preserve-digests",))
    base, top = lay.read_json(m["digest"])["layers"]
    proxy.add("hang", path=f"/blobs/{base['digest']}", after=base["size"] - NEXT_AHEAD // 4)
    source = RegistrySource(f"{proxy.host}/next:1")
    try:
        with source:
            image = source.resolve()
            assert proxy.hang_reached.wait(30), "the bottom blob was never fetched"
            deadline = time.monotonic() + 30
            while not proxy.requests_for(f"/blobs/{top['digest']}", "GET"):
                assert time.monotonic() < deadline, "the next blob waited for the held one to end"
                time.sleep(0.01)
            proxy.release_hang.set()
            for layer in image.layers:
                with layer.open() as f:
                    assert hashlib.sha256(f.read()).hexdigest() == layer.digest[7:]
    finally:
        proxy.release_hang.set()


def test_first_layer_is_requested_while_the_config_arrives(proxy, images, registry_env, tmp_path):
    """The config's round trip overlaps the first layer's transfer: with the config dripping out of
    the proxy (a slow link, a far registry), the first blob the unpack reads is asked for before
    resolve() has the config; the unpack then completes and verifies as usual."""
    import threading
    config = images["layout"].read_json(images["manifest"]["digest"])["config"]
    proxy.add("slow", path=f"/blobs/{config['digest']}", chunk=max(config["size"] // 8, 1), delay=0.25)
    layers = {d["digest"] for d in images["layers"]}
    source = RegistrySource(f"{proxy.host}/app:1")
    resolved, failed = threading.Event(), []

    def run():
        try:
            source.resolve()
        except BaseException as e:   # raised in the test below
            failed.append(e)
        resolved.set()

    with source:
        t = threading.Thread(target=run, daemon=True)
        t.start()
        requested = False
        while not resolved.is_set() and not requested:
            requested = any(s[1].rsplit("/", 1)[1] in layers for s in proxy.requests_for("/blobs/", "GET"))
            time.sleep(0.005)
        config_done = resolved.is_set()
        t.join(60)
        assert not failed, failed
        assert requested and not config_done, "the layers waited for the config"
    dest = tmp_path / "rootfs"
    with RegistrySource(f"{proxy.host}/app:1") as again:
        unpack(again, dest)
    treecmp.assert_same(treecmp.snapshot(_expected(images, tmp_path)), treecmp.snapshot(dest))


def test_the_python_api_takes_a_docker_reference_as_the_cli_does(reg, images, registry_env, tmp_path):  # noqa: F811
    """``lamina.unpack("docker://REF", DEST)``: what ``lamina unpack docker://REF DEST`` does, from
    Python (it refused the string as an unsupported transport); platform and format go through."""
    import lamina
    stats = lamina.unpack(f"docker://{reg.host}/app:1", tmp_path / "rootfs")
    assert stats.manifest_digest == images["manifest"]["digest"]
    assert stats.source == f"docker://{reg.host}/app:1"
    treecmp.assert_same(treecmp.snapshot(_expected(images, tmp_path)), treecmp.snapshot(tmp_path / "rootfs"))
    lamina.unpack(f"docker://{reg.host}/multi:1", tmp_path / "arm", platform="linux/arm64",
                  insecure=(reg.host,))
    assert (tmp_path / "arm" / "arch").read_bytes() == b"linux/arm64\n"
    stats = lamina.unpack(f"docker://{reg.host}/app:1", tmp_path / "layers", format="overlay")
    assert len(stats.layer_dirs) == 3
    with pytest.raises(errors.LaminaError, match="linux/s390x"):
        lamina.unpack(f"docker://{reg.host}/multi:1", tmp_path / "no", platform="linux/s390x")
    assert not (tmp_path / "no").exists()
    assert not (registry_env / "home" / ".local" / "share" / "lamina").exists()   # nothing stored


def test_a_failed_layers_reader_left_behind_asks_for_its_blob_no_more(reg, proxy, registry_env, tmp_path,  # noqa: F811
                                                                       monkeypatch):
    """An overlay unpack extracts its layers at once.  A layer that fails while its stage-1 thread
    waits for the network leaves that thread behind (layer.ABANDON_READER_AFTER): here it sleeps
    in the backoff after a cut connection.  The layer's reader is then closed and its transfer
    finished as cancelled, but the unpack goes on with the bottom layer, still arriving slowly.
    The thread left behind woke from its backoff and asked the registry for the blob again (a
    second GET, every byte of it read for nobody, with more retries if that one failed too)."""
    monkeypatch.setenv("LAMINA_REGISTRY_BACKOFF", "6")   # the first backoff: 3 to 6 s, past ABANDON_READER_AFTER
    lay = ocibuild.Layout(tmp_path / "lay")
    # 800 small files (tens of ms to write: the stage-1 thread meets the cut first), then a header
    # whose checksum is wrong, all in the pipeline's first chunk (1 MiB), then 4 MiB more
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for i in range(800):
            info = tarfile.TarInfo(f"f{i}")
            info.size = 100
            t.addfile(info, io.BytesIO(b"%99d\n" % i))
        entries = buf.getvalue()[:t.offset]   # no end of archive
    bad = entries + b"\xa5" * 512 + fast_random(4 * MiB, 41)
    base = ocibuild.tar_bytes({"base.bin": fast_random(6 * MiB, 42)})
    m = lay.image_of_tars([ocibuild.Shipped(base, base, ocibuild.OCI_LAYER),
                           ocibuild.Shipped(bad, bad, ocibuild.OCI_LAYER)], ref="1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "abandon:1", extra=("--preserve-digests",))
    bottom, top = lay.read_json(m["digest"])["layers"]
    assert top["size"] > 0.25 * bottom["size"]   # not a layer the unpack may scan (spooled): one reader
    # the bottom layer takes 8 s to arrive (32 pieces, 0.25 s apart); the top one is cut once, just past
    # the stage's first chunk, which the extractor then reads and fails on
    proxy.add("slow", method="GET", path=f"/blobs/{bottom['digest']}", chunk=bottom["size"] // 32 + 1, delay=0.25)
    proxy.add("cut", method="GET", path=f"/blobs/{top['digest']}", after=MiB + (64 << 10))
    with pytest.raises(errors.InvalidArchiveError, match="layer 2 of 2"):
        unpack(RegistrySource(f"{proxy.host}/abandon:1"), tmp_path / "out" / "layers", format="overlay")
    assert len(proxy.requests_for(f"/blobs/{bottom['digest']}", "GET")) == 1
    gets = proxy.requests_for(f"/blobs/{top['digest']}", "GET")
    assert [g[2].get("Range") for g in gets] == [None], "the failed layer's blob was asked for again"
    assert os.listdir(tmp_path / "out") == []
