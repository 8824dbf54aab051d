"""lamina pull against a real docker-registry (distribution 2.8) on loopback.

Images are pushed with skopeo (the oracle) from OCI layouts built by tests/ocibuild.py or umoci;
what lamina stored is checked against the bytes that went in.
"""
import hashlib
import json
import re
import shutil

import pytest

import ocibuild
from conftest import X86_LEVEL_FLAGS, require_tool, run
from registryfixture import (FaultProxy, lamina_cli, reg, registry_env, skopeo_inspect,  # noqa: F401
                             skopeo_push, skopeo_raw, umoci_multiarch)

from lamina import errors
from lamina.oci import open_source
from lamina.platform import Platform
from lamina.registry import inspect_manifest, pull
from lamina.store import Store

HEX12 = re.compile(r"^[0-9a-f]{12}: (Pull complete|Already exists)$")


@pytest.fixture(scope="module")
def images(reg, tmp_path_factory):
    """app:v1 (2 layers), app:v2 (v1's base + 1 layer), docker-format multi-platform list multi:1."""
    root = tmp_path_factory.mktemp("layouts")
    lay = ocibuild.Layout(root / "oci")
    base = {"etc/": None, "etc/os-release": b"ID=lamina-test\n"}
    v1 = lay.image([base, {"a.txt": b"hello"}])
    v2 = lay.image([base, {"b.txt": b"world" * 1000}])
    lay.add(v1, "v1")
    lay.add(v2, "v2")
    skopeo_push(f"oci:{lay.root}:v1", reg.host, "app:v1")
    skopeo_push(f"oci:{lay.root}:v2", reg.host, "app:v2")

    dl = ocibuild.Layout(root / "docker")
    ms = []
    for arch, variant in (("amd64", None), ("arm64", "v8"), ("arm", "v7")):
        m = dl.image([{"arch": f"linux/{arch}".encode()}], arch=arch, variant=variant, docker=True)
        ms.append(ocibuild.with_platform(m, "linux", arch, variant))
    dl.add(dl.index(ms), "1")
    # skopeo's layout reader wants OCI index types; --format v2s2 makes it a Docker list upstream.
    skopeo_push(f"oci:{dl.root}:1", reg.host, "multi:1", all_images=True, extra=("--format", "v2s2"))
    raw, list_digest = skopeo_raw(reg.host, "multi:1")
    assert json.loads(raw)["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    return {"layout": lay, "v1": v1, "v2": v2, "docker": dl, "list_digest": list_digest,
            "list_children": json.loads(raw)["manifests"]}


def _fs(store, image, i):
    return store.snapshots_for(image)[i]


def test_pull_cli_lines_and_up_to_date(reg, images, registry_env):  # noqa: F811
    root = registry_env / "root"
    ref = f"{reg.host}/app:v1"
    out = lamina_cli("pull", ref, root=root).stdout.splitlines()
    assert out[0] == "v1: Pulling from app"
    layer_lines = out[1:3]
    assert all(HEX12.match(x) for x in layer_lines), out
    assert {x.split(":")[0] for x in layer_lines} == {d["digest"][7:19] for d in
                                                     images["layout"].read_json(images["v1"]["digest"])["layers"]}
    assert all(x.endswith("Pull complete") for x in layer_lines)
    assert out[3] == f"Digest: {images['v1']['digest']}"
    assert out[4] == f"Status: Downloaded newer image for {ref}"
    assert out[5] == ref

    store = Store(root)
    image = store.resolve(ref)
    assert image.manifest_digest == images["v1"]["digest"]
    for layer in image.layers:
        path = store.blob_path(layer.digest)
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == layer.digest
    assert (_fs(store, image, 1) / "a.txt").read_bytes() == b"hello"
    assert (_fs(store, image, 0) / "etc" / "os-release").read_bytes() == b"ID=lamina-test\n"
    assert not list((root / "ingest").iterdir())
    # every snapshot extracted and committed when pull returns
    assert all(store.snapshot_info(c) is not None for c in image.chain_ids)

    again = lamina_cli("pull", ref, root=root).stdout.splitlines()
    assert [x.split(": ", 1)[1] for x in again[1:3]] == ["Already exists"] * 2
    assert again[4] == f"Status: Image is up to date for {ref}"


def test_shared_layer_is_not_fetched_again(reg, images, registry_env):  # noqa: F811
    proxy = FaultProxy(reg.host)
    try:
        store = Store(registry_env / "root")
        pull(f"{proxy.host}/app:v1", store=store)
        base = images["layout"].read_json(images["v1"]["digest"])["layers"][0]["digest"]
        assert proxy.bytes_for(base) > 0
        before = proxy.bytes_for(base)
        r = pull(f"{proxy.host}/app:v2", store=store)
        assert [layer.status for layer in r.layers] == ["exists", "downloaded"]
        assert proxy.bytes_for(base) == before
        assert not proxy.requests_for(f"/blobs/{base}", "GET")[1:]
        image = store.resolve(f"{proxy.host}/app:v2")
        assert (_fs(store, image, 1) / "b.txt").read_bytes() == b"world" * 1000
    finally:
        proxy.stop()


def test_pull_by_digest(reg, images, registry_env):  # noqa: F811
    store = Store(registry_env / "root")
    digest = images["v2"]["digest"]
    r = pull(f"{reg.host}/app@{digest}", store=store)
    assert r.manifest_digest == r.repo_digest == digest
    assert store.resolve(f"{reg.host}/app@{digest}").manifest_digest == digest


def test_json_and_quiet_output(reg, images, registry_env):  # noqa: F811
    root = registry_env / "root"
    ref = f"{reg.host}/app:v1"
    doc = json.loads(lamina_cli("pull", "--format", "json", ref, root=root).stdout)
    assert doc["reference"] == ref
    assert doc["manifest_digest"] == images["v1"]["digest"]
    assert doc["status"] == "downloaded"
    assert [layer["status"] for layer in doc["layers"]] == ["downloaded", "downloaded"]
    assert doc["image_id"].startswith("sha256:")
    assert lamina_cli("pull", "-q", ref, root=root).stdout == ref + "\n"


def test_unknown_tag_and_repo_fail_clearly(reg, images, registry_env):  # noqa: F811
    p = lamina_cli("pull", f"{reg.host}/app:nope", root=registry_env / "root", check=False)
    assert p.returncode == 1
    assert p.stderr.startswith("lamina: error: manifest for ") and "manifest unknown" in p.stderr
    with pytest.raises(errors.ImageNotFoundError):
        pull(f"{reg.host}/nothing/here:1", store=registry_env / "root")


def test_docker_manifest_list_platforms(reg, images, registry_env):  # noqa: F811
    store = Store(registry_env / "root")
    ref = f"{reg.host}/multi:1"
    for platform, want in (("linux/arm64", "linux/arm64/v8"), ("linux/arm/v7", "linux/arm/v7"),
                           ("linux/amd64", "linux/amd64")):
        r = pull(ref, store=store, platform=platform)
        assert r.repo_digest == images["list_digest"]
        assert r.platform == want
        image = store.resolve(ref)
        assert (_fs(store, image, 0) / "arch").read_bytes() == "/".join(want.split("/")[:2]).encode()
        assert image.config["architecture"] == want.split("/")[1]
    with pytest.raises(errors.PlatformNotFoundError) as e:
        pull(ref, store=store, platform="linux/s390x")
    assert "linux/amd64" in str(e.value) and "linux/arm64/v8" in str(e.value)


def test_umoci_multiarch_index(reg, registry_env, tmp_path):  # noqa: F811
    layout, index_digest, by_arch = umoci_multiarch(tmp_path)
    skopeo_push(f"oci:{layout}:multi", reg.host, "umoci-multi:latest", all_images=True)
    raw = skopeo_inspect(reg.host, "umoci-multi:latest", raw=True)
    assert {m["platform"]["architecture"] for m in raw["manifests"]} == {"amd64", "arm64"}
    store = Store(registry_env / "root")
    ref = f"{reg.host}/umoci-multi:latest"
    for arch, expect in (("arm64", b"linux/arm64/v8\n"), ("amd64", b"linux/amd64\n")):
        r = pull(ref, store=store, platform=f"linux/{arch}")
        assert r.manifest_digest == by_arch[arch]
        assert r.repo_digest == index_digest
        image = store.resolve(ref)
        assert image.config["architecture"] == arch
        assert (_fs(store, image, len(image.layers) - 1) / "arch").read_bytes() == expect


def test_all_platforms_fetches_every_image(reg, images, registry_env):  # noqa: F811
    store = Store(registry_env / "root")
    r = pull(f"{reg.host}/multi:1", store=store, platform="linux/arm64", all_platforms=True)
    assert r.platform == "linux/arm64/v8"
    assert store.has_blob(images["list_digest"])
    for m in images["list_children"]:
        assert store.has_blob(m["digest"])
        with store.open_blob(m["digest"]) as f:
            for layer in json.load(f)["layers"]:
                assert store.has_blob(layer["digest"])


def test_all_platforms_is_one_multi_arch_image(reg, registry_env, tmp_path):  # noqa: F811
    """--all-platforms keeps every platform under the tag: fsck is clean, prune keeps them all,
    and an oci-archive save holds the registry's index with every platform (skopeo reads each)."""
    lay = ocibuild.Layout(tmp_path / "oci")
    ms = []
    for arch, variant in (("amd64", None), ("arm64", "v8"), ("arm", "v7")):
        m = lay.image([{"arch": arch.encode()}], arch=arch, variant=variant)
        ms.append(ocibuild.with_platform(m, "linux", arch, variant))
    lay.add(lay.index(ms), "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "multi-oci:1", all_images=True)
    raw, index_digest = skopeo_raw(reg.host, "multi-oci:1")
    children = sorted(m["digest"] for m in json.loads(raw)["manifests"])

    root = registry_env / "root-multi"
    ref = f"{reg.host}/multi-oci:1"
    lamina_cli("pull", "--all-platforms", "--platform", "linux/arm64", ref, root=root)
    store = Store(root)
    got_index, platforms = store.platforms(store.resolve(ref))
    assert got_index == index_digest
    assert sorted(i.manifest_digest for i in platforms) == children
    report = json.loads(lamina_cli("fsck", "--json", root=root).stdout)
    assert report["findings"] == [], report
    lamina_cli("image", "prune", "-f", root=root)
    for d in children + [index_digest]:
        assert store.has_blob(d), d
    archive = tmp_path / "multi.tar"
    lamina_cli("save", "--format", "oci-archive", "-o", archive, ref, root=root)
    saved, = json.loads(run("tar", "xOf", archive, "index.json").stdout)["manifests"]
    assert saved["digest"] == index_digest
    for arch in ("amd64", "arm64", "arm"):
        out = run("skopeo", "--override-arch", arch, "inspect", f"oci-archive:{archive}:{ref}").stdout
        assert json.loads(out)["Architecture"] == arch


def test_pull_dash_a_is_all_tags(reg, images, registry_env):  # noqa: F811
    root = registry_env / "root-all-tags"
    out = lamina_cli("pull", "-a", f"{reg.host}/app", root=root).stdout
    assert "v1: Pulling from app" in out and "v2: Pulling from app" in out
    store = Store(root)
    assert store.resolve(f"{reg.host}/app:v1").manifest_digest == images["v1"]["digest"]
    assert store.resolve(f"{reg.host}/app:v2").manifest_digest == images["v2"]["digest"]
    bad = lamina_cli("pull", "-a", f"{reg.host}/app:v1", root=root, check=False)
    assert bad.returncode == 1 and "can't be used with --all-tags" in bad.stderr


def test_manifest_inspect_is_raw(reg, images, registry_env):  # noqa: F811
    out = lamina_cli("manifest", "inspect", f"{reg.host}/multi:1").stdout
    assert json.loads(out) == skopeo_inspect(reg.host, "multi:1", raw=True)
    mr = inspect_manifest(f"{reg.host}/multi:1")
    assert "sha256:" + hashlib.sha256(mr.data).hexdigest() == images["list_digest"] == mr.digest


def test_schema1_is_refused(reg, images, registry_env):  # noqa: F811
    proxy = FaultProxy(reg.host)
    try:
        body = json.dumps({"schemaVersion": 1, "name": "app", "tag": "old", "fsLayers": [], "history": []}).encode()
        proxy.add("respond", path="/manifests/old", times=None, body=body,
                  headers={"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"})
        with pytest.raises(errors.UnsupportedMediaTypeError, match="schema1"):
            pull(f"{proxy.host}/app:old", store=registry_env / "root")
    finally:
        proxy.stop()


def test_manifest_digest_is_checked(reg, images, registry_env):  # noqa: F811
    proxy = FaultProxy(reg.host)
    try:
        lay = images["layout"]
        with open(lay.path(images["v1"]["digest"]), "rb") as f:
            body = f.read()
        wrong = "sha256:" + "0" * 64
        proxy.add("respond", path="/manifests/v1", times=None, body=body,
                  headers={"Content-Type": images["v1"]["mediaType"], "Docker-Content-Digest": wrong})
        with pytest.raises(errors.RegistryError, match="does not match the Docker-Content-Digest"):
            pull(f"{proxy.host}/app:v1", store=registry_env / "root")
        # Asked by digest, served other content: refused whatever the headers say.
        proxy.clear()
        proxy.add("respond", path=f"/manifests/{images['v2']['digest']}", times=None, body=body,
                  headers={"Content-Type": images["v1"]["mediaType"]})
        with pytest.raises(errors.RegistryError, match="registry sent content with digest"):
            pull(f"{proxy.host}/app@{images['v2']['digest']}", store=registry_env / "root")
        assert not Store(registry_env / "root").has_blob(images["v1"]["digest"])
    finally:
        proxy.stop()


def test_single_manifest_platform_mismatch(reg, images, registry_env):  # noqa: F811
    """A tag naming one amd64 image, pulled with --platform linux/arm64: refused before ("no image
    for platform linux/arm64/v8; available: linux/amd64"); docker pulls it and warns, containerd
    and skopeo pull it (tests/CONFORMANCE.md).  Pulled with the warning now, stored as what its
    config says; unpack from the store by platform stays exact, as docker run's does."""
    root = registry_env / "root"
    with pytest.warns(errors.PlatformMismatchWarning, match=f"image {reg.host}/app:v1 was found but its platform "
                      r"\(linux/amd64\) does not match the specified platform \(linux/arm64/v8\)"):
        result = pull(f"{reg.host}/app:v1", store=root, platform="linux/arm64")
    assert result.platform == "linux/amd64" and result.manifest_digest == images["v1"]["digest"]
    p = lamina_cli("pull", "--platform", "linux/arm64", f"{reg.host}/app:v1", root=registry_env / "root2", check=False)
    assert p.returncode == 0, p.stderr
    assert f"lamina: warning: image {reg.host}/app:v1 was found but its platform (linux/amd64)" in p.stderr, p.stderr
    assert Store(registry_env / "root2").resolve(f"{reg.host}/app:v1").manifest_digest == images["v1"]["digest"]


def test_concurrent_pulls_share_the_download(reg, images, registry_env):  # noqa: F811
    """Two processes pull the same image into one store: each blob crosses the wire once."""
    import subprocess
    import sys
    proxy = FaultProxy(reg.host)
    try:
        root = registry_env / "root"
        ref = f"{proxy.host}/app:v2"
        # slow the big layer down so both pulls are in flight at the same time
        big = images["layout"].read_json(images["v2"]["digest"])["layers"][1]
        proxy.add("slow", path=f"/blobs/{big['digest']}", chunk=16, delay=0.005, times=None)
        procs = [subprocess.Popen([sys.executable, "-m", "lamina", "--root", str(root), "pull", "-q", ref],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        assert proxy.bytes_for(big["digest"]) == big["size"]
        image = Store(root).resolve(ref)
        assert (_fs(Store(root), image, 1) / "b.txt").read_bytes() == b"world" * 1000
    finally:
        proxy.stop()


def test_default_tag_line(reg, images, registry_env):  # noqa: F811
    run(require_tool("skopeo"), "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
        f"docker://{reg.host}/app:v1", f"docker://{reg.host}/app:latest")
    out = lamina_cli("pull", f"{reg.host}/app", root=registry_env / "root").stdout.splitlines()
    assert out[:2] == ["Using default tag: latest", "latest: Pulling from app"]
    assert out[-1] == f"{reg.host}/app:latest"


def test_public_api_pull_then_unpack(reg, images, registry_env, tmp_path):  # noqa: F811
    """The thin API a Python user starts from: lamina.pull into a Store, then a rootfs from it."""
    import lamina
    from lamina.store.materialize import materialize
    store = lamina.Store(tmp_path / "root")
    ref = f"{reg.host}/app:v2"
    result = lamina.pull(ref, store=store)
    assert result.manifest_digest == images["v2"]["digest"] and result.status == "downloaded"
    materialize(store, ref, tmp_path / "rootfs")
    assert (tmp_path / "rootfs" / "b.txt").read_bytes() == b"world" * 1000
    assert (tmp_path / "rootfs" / "etc" / "os-release").read_bytes() == b"ID=lamina-test\n"
    assert lamina.pull(ref, store=store).status == "up to date"


def test_a_refused_layer_is_named_by_its_place_and_digest(reg, registry_env, tmp_path):  # noqa: F811
    """The second of three layers links to a file no layer has: the pull named the layer by
    its digest alone ("layer sha256:…: entry 'x': …"), where unpack says "layer 2 of 3
    (sha256:…)"; now both, the image's name left out of the store."""
    from tarbuild import Tar
    lay = ocibuild.Layout(tmp_path / "lay")
    good = Tar().file("a", b"a").bytes()
    bad = lay.image_of_tars([good, Tar().file("b", b"b").hardlink("x", "missing").bytes(), good])
    lay.add(bad, "bad")
    digest = lay.read_json(bad["digest"])["layers"][1]["digest"]
    skopeo_push(f"oci:{lay.root}:bad", reg.host, "refused:1")
    root = registry_env / "root"
    proc = lamina_cli("pull", f"{reg.host}/refused:1", root=root, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"lamina: error: layer 2 of 3 ({digest}): entry 'x': hardlink target 'missing' "), last
    with pytest.raises(errors.InvalidArchiveError, match=re.escape(f"layer 2 of 3 ({digest}): entry 'x'")):
        pull(f"{reg.host}/refused:1", store=root)
    assert lamina_cli("images", "-q", root=root).stdout.strip() == ""


def test_a_pull_by_the_repo_digest_of_a_tag_records_nothing_new(reg, images, registry_env):  # noqa: F811
    """app:v1 pulled, then app@<its repo digest>: docker finds the image up to date and records
    nothing (its tag pull recorded the digest); lamina recorded app@sha256:… as a name of its
    own, so that removing app:v1 left the image behind under it.  Now the store is left as it
    was, the digest still resolves to the tag's image, and rmi of the tag removes the image.
    A digest no tag holds the image under is recorded as before."""
    from storekit import fingerprint
    root = registry_env / "root"
    digest = images["v1"]["digest"]
    pinned = f"{reg.host}/app@{digest}"
    lamina_cli("pull", f"{reg.host}/app:v1", root=root)
    before = fingerprint(root)
    out = lamina_cli("pull", pinned, root=root).stdout
    assert f"Status: Image is up to date for {pinned}" in out, out
    assert fingerprint(root) == before
    shown = json.loads(lamina_cli("inspect", pinned, root=root).stdout)[0]
    assert shown["RepoTags"] == [f"{reg.host}/app:v1"] and shown["RepoDigests"] == [pinned], shown
    rows = lamina_cli("images", "--digests", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}", root=root).stdout
    assert rows.splitlines() == [f"{reg.host}/app v1 {digest}"], rows
    lamina_cli("rmi", f"{reg.host}/app:v1", root=root)
    assert lamina_cli("images", "-q", root=root).stdout.strip() == ""
    # no tag holds it now: the pull by digest names it by that digest, as docker does
    out = lamina_cli("pull", pinned, root=root).stdout
    assert f"Status: Downloaded newer image for {pinned}" in out, out
    rows = lamina_cli("images", "--digests", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}", root=root).stdout
    assert rows.splitlines() == [f"{reg.host}/app <none> {digest}"], rows


def test_a_diff_id_naming_a_layer_the_store_holds_is_checked_on_pull(reg, registry_env, tmp_path):  # noqa: F811
    """A pulled config whose diffID names a layer the store already holds, for a blob of other
    content: the snapshot is found by chainID, so the blob was fetched but never checked against
    the diffID, and the image was named (its tree the other layer's; save then handed the lie on).
    Refused now, naming the layer, the image not named (found by test_fuzz_store.py)."""
    lay = ocibuild.Layout(tmp_path / "lay")
    real = ocibuild.tar_bytes({"f": b"real\n"})
    lay.add(lay.image([{"f": b"real\n"}]), "real")
    liar = lay.image([{"f": b"a lie\n"}], diff_ids=[ocibuild.sha256(real)])
    lay.add(liar, "liar")
    skopeo_push(f"oci:{lay.root}:real", reg.host, "difflie:real")
    skopeo_push(f"oci:{lay.root}:liar", reg.host, "difflie:liar")
    root = registry_env / "root"
    lamina_cli("pull", f"{reg.host}/difflie:real", root=root)
    proc = lamina_cli("pull", f"{reg.host}/difflie:liar", root=root, check=False)
    layer = lay.read_json(liar["digest"])["layers"][0]["digest"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "layer 1 of 1" in proc.stderr and layer in proc.stderr and ocibuild.sha256(real) in proc.stderr
    store = Store(root)
    with pytest.raises(errors.LaminaError):
        store.resolve(f"{reg.host}/difflie:liar")
    assert [i.names for i in store.images()] == [[f"{reg.host}/difflie:real"]]


def test_a_blob_of_a_layer_the_store_holds_already_is_stored_whole(reg, tmp_path):  # noqa: F811
    """The store holds a layer's snapshot, made from its gzip blob; an image shipping the same
    layer uncompressed (another blob, the same diffID) is pulled.  The extraction found the
    snapshot and read nothing, and the pull copied the blob from the registry's stream into the
    store while the download-ahead thread read the same stream into the same partial file: the
    blob's bytes came twice, "more data than the expected N bytes", or the partial that write
    discarded could not be renamed (a FileNotFoundError).  Found by test_fuzz_store.py."""
    from everypath import TAG, _push_layout, _registry_client
    from storekit import seeded_bytes
    files = {"big": seeded_bytes("ahead", 16 << 20)}
    store = Store(tmp_path / "store")
    for name, compress in (("gz", True), ("plain", False)):
        lay = ocibuild.Layout(tmp_path / name)
        lay.add(lay.image([files], compress=compress), TAG)
        _push_layout(reg.host, f"ahead-{name}", lay.root)
        pull(f"{reg.host}/ahead-{name}:{TAG}", store=store, client=_registry_client(reg.host))
    plain = lay.read_json(lay.entries[0]["digest"])["layers"][0]["digest"]
    with open(store.paths.blob(plain), "rb") as f:
        assert ocibuild.sha256(f.read()) == plain
    assert list(store.fsck().findings) == []


def test_a_pulled_image_is_found_again_by_the_platform_its_index_entry_says(reg, registry_env, tmp_path):  # noqa: F811
    """An index entry says linux/arm64, its config amd64 (a mislabelled build): pull --platform
    linux/arm64 takes it by the index's word (tests/CONFORMANCE.md), and then `unpack --platform
    linux/arm64` of the stored image refused it ("is linux/amd64, not linux/arm64/v8").  The store
    records the platform the image was chosen by; inspect still shows the config's."""
    lay = ocibuild.Layout(tmp_path / "oci")
    honest = lay.image([{"honest": b"x"}], arch="amd64")
    liar = lay.image([{"liar": b"x"}], arch="amd64")
    lay.add(lay.index([ocibuild.with_platform(honest, "linux", "amd64"),
                       ocibuild.with_platform(liar, "linux", "arm64")]), "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "mislabelled:1", all_images=True)
    root = registry_env / "root"
    ref = f"{reg.host}/mislabelled:1"
    lamina_cli("pull", "--platform", "linux/arm64", ref, root=root)
    assert Store(root).resolve(ref).manifest_digest == liar["digest"]
    assert lamina_cli("inspect", "--format", "{{.Architecture}}", ref, root=root).stdout.strip() == "amd64"
    lamina_cli("unpack", "--platform", "linux/arm64", ref, str(tmp_path / "u"), root=root)
    assert (tmp_path / "u" / "liar").read_bytes() == b"x"


def test_index_entries_without_a_platform_are_matched_by_their_config_as_from_a_layout(reg, registry_env,  # noqa: F811
                                                                                         tmp_path):
    """An index whose entries carry no ``platform`` (image-spec makes it optional): containerd
    reads each entry's config for its platform, and so does lamina's layout reader.  skopeo
    takes the first such entry for any platform (an amd64 image for linux/s390x); lamina's pull
    passed over them ("no image for platform linux/amd64; available: linux/arm64/v8")."""
    lay = ocibuild.Layout(tmp_path / "np")
    amd = lay.image([{"arch": b"amd64"}])
    arm = lay.image([{"arch": b"arm64"}], arch="arm64")
    s390 = lay.image([{"arch": b"s390x"}], arch="s390x")
    lay.add(lay.index([ocibuild.with_platform(arm, "linux", "arm64"), amd, s390]), "np")
    skopeo_push(f"oci:{lay.root}:np", reg.host, "noplatform:1", all_images=True)
    raw = skopeo_inspect(reg.host, "noplatform:1", raw=True)
    assert [m.get("platform") is None for m in raw["manifests"]] == [False, True, True]
    store = Store(registry_env / "root")
    ref = f"{reg.host}/noplatform:1"
    for platform, expect in (("linux/amd64", amd), ("linux/arm64", arm), ("linux/s390x", s390)):
        with open_source(f"oci:{lay.root}:np") as src:
            assert src.resolve(platform).manifest_digest == expect["digest"]
        assert pull(ref, store=store, platform=platform).manifest_digest == expect["digest"]
    host = {"amd64": amd, "arm64": arm, "s390x": s390}[Platform.host().architecture]
    assert pull(ref, store=store).manifest_digest == host["digest"]
    with pytest.raises(errors.PlatformNotFoundError, match="available: linux/amd64, linux/arm64/v8, linux/s390x"):
        pull(ref, store=store, platform="linux/ppc64le")


def test_a_pull_takes_the_x86_64_level_the_cpu_runs(reg, registry_env, tmp_path, x86_cpu):  # noqa: F811
    """A tag whose index offers linux/amd64 and linux/amd64/v3: a v3 (or v4) CPU gets the v3 build,
    as docker picks it; lamina's pull took plain amd64 on every x86-64 machine, and refused a
    v3-only index.  One rule with the layouts (test_platform.py)."""
    lay = ocibuild.Layout(tmp_path / "lv")
    v1 = lay.image([{"level": b"v1"}])
    v3 = lay.image([{"level": b"v3"}], variant="v3")
    lay.add(lay.index([ocibuild.with_platform(v1, "linux", "amd64"),
                       ocibuild.with_platform(v3, "linux", "amd64", "v3")]), "both")
    lay.add(lay.index([ocibuild.with_platform(v3, "linux", "amd64", "v3")]), "v3")
    skopeo_push(f"oci:{lay.root}:both", reg.host, "levels:both", all_images=True)
    skopeo_push(f"oci:{lay.root}:v3", reg.host, "levels:v3", all_images=True)
    for cpu, both, only_v3 in (("v4", v3, v3), ("v3", v3, v3), ("v2", v1, None)):
        x86_cpu(X86_LEVEL_FLAGS[cpu])
        store = Store(registry_env / f"root-{cpu}")
        result = pull(f"{reg.host}/levels:both", store=store)
        assert (result.manifest_digest, result.platform) == (
            both["digest"], "linux/amd64/v3" if both is v3 else "linux/amd64")
        if only_v3 is None:
            with pytest.raises(errors.PlatformNotFoundError, match="linux/amd64/v2; available: linux/amd64/v3"):
                pull(f"{reg.host}/levels:v3", store=store)
        else:
            assert pull(f"{reg.host}/levels:v3", store=store).manifest_digest == v3["digest"]
        assert pull(f"{reg.host}/levels:both", store=store, platform="linux/amd64").manifest_digest == v1["digest"]


def test_a_tag_whose_index_lists_a_manifest_the_registry_lacks_names_the_tag_platform_and_digest(
        reg, registry_env, tmp_path):  # noqa: F811
    """The index a tag names lists, for the platform asked, a manifest the registry no longer has
    (deleted by digest, or a mirror half-synced).  skopeo: "fetching target platform image selected
    from image index: reading manifest sha256:…: manifest unknown"; lamina said only "manifest for
    REPO@sha256:… not found", not that the tag's index led there."""
    lay = ocibuild.Layout(tmp_path / "l")
    amd = lay.image([{"a": b"amd"}])
    arm = lay.image([{"a": b"arm"}], arch="arm64")
    lay.add(lay.index([ocibuild.with_platform(amd, "linux", "amd64"),
                       ocibuild.with_platform(arm, "linux", "arm64")]), "x")
    skopeo_push(f"oci:{lay.root}:x", reg.host, "halfgone:1", all_images=True)
    link = f"{reg.storage}/docker/registry/v2/repositories/halfgone/_manifests/revisions/sha256/{amd['digest'][7:]}"
    shutil.rmtree(link)
    store = Store(registry_env / "root")
    with pytest.raises(errors.ImageNotFoundError) as info:
        pull(f"{reg.host}/halfgone:1", store=store, platform="linux/amd64")
    assert f"{reg.host}/halfgone:1: its image index lists {amd['digest']} for linux/amd64" in str(info.value)
    assert "not found" in str(info.value)
    assert pull(f"{reg.host}/halfgone:1", store=store, platform="linux/arm64").manifest_digest == arm["digest"]
