"""lamina push: store -> real docker-registry, checked with skopeo (the oracle)."""
import hashlib
import json
import os
import re

import pytest

import ocibuild
from registryfixture import (FaultProxy, Registry, TokenServer, fast_random, lamina_cli,  # noqa: F401
                             load_layout_into_store, reg, registry_env, skopeo_inspect, skopeo_push, skopeo_raw)

from lamina import errors
from lamina.registry import list_tags, pull, push
from lamina.store import Store


@pytest.fixture
def proxy(reg):
    p = FaultProxy(reg.host)
    yield p
    p.stop()


def _image(tmp_path, big=0):
    lay = ocibuild.Layout(tmp_path / "oci")
    layers = [{"etc/": None, "etc/hostname": b"pushed\n"}, {"app/data.bin": fast_random(big or 4096, 3)}]
    m = lay.image(layers)
    lay.add(m, "1")
    return lay, m


def _manifest_bytes(lay, m):
    with open(lay.path(m["digest"]), "rb") as f:
        return f.read()


def test_push_cli_then_skopeo_agrees(reg, tmp_path, registry_env):  # noqa: F811
    root = registry_env / "root"
    lay, m = _image(tmp_path)
    ref = f"{reg.host}/pushed/app:1"
    load_layout_into_store(Store(root), lay.root, m, ref)
    out = lamina_cli("push", ref, root=root).stdout.splitlines()
    assert out[0] == f"The push refers to repository [{reg.host}/pushed/app]"
    layers = lay.read_json(m["digest"])["layers"]
    assert sorted(out[1:3]) == sorted(f"{d['digest'][7:19]}: Pushed" for d in layers)
    body = _manifest_bytes(lay, m)
    assert out[3] == f"1: digest: {m['digest']} size: {len(body)}"
    raw, digest = skopeo_raw(reg.host, "pushed/app:1")
    assert raw == body and digest == m["digest"]
    info = skopeo_inspect(reg.host, "pushed/app:1")
    assert info["Digest"] == m["digest"]
    assert info["Layers"] == [d["digest"] for d in layers]
    for d in layers + [lay.read_json(m["digest"])["config"]]:
        assert reg.has_blob(d["digest"])

    again = lamina_cli("push", ref, root=root).stdout.splitlines()
    assert sorted(again[1:3]) == sorted(f"{d['digest'][7:19]}: Layer already exists" for d in layers)


def test_round_trip_pull_tag_push(reg, tmp_path, registry_env):  # noqa: F811
    """lamina pull, lamina tag, lamina push: skopeo sees the same image under both names."""
    lay, m = _image(tmp_path)
    skopeo_push(f"oci:{lay.root}:1", reg.host, "origin:1")
    root = registry_env / "root"
    lamina_cli("pull", "-q", f"{reg.host}/origin:1", root=root)
    lamina_cli("tag", f"{reg.host}/origin:1", f"{reg.host}/copy:2", root=root)
    out = lamina_cli("push", "-q", f"{reg.host}/copy:2", root=root).stdout
    origin = skopeo_inspect(reg.host, "origin:1")
    assert out.strip() == origin["Digest"]
    copy = skopeo_inspect(reg.host, "copy:2")
    assert (copy["Digest"], copy["Layers"]) == (origin["Digest"], origin["Layers"])


def test_cross_repository_mount(reg, proxy, tmp_path, registry_env):  # noqa: F811
    lay, m = _image(tmp_path)
    store = Store(registry_env / "root")
    load_layout_into_store(store, lay.root, m, f"{proxy.host}/first:1")
    push(f"{proxy.host}/first:1", store=store)
    store.add_image(m["digest"], ref=f"{proxy.host}/second:1")
    proxy.seen.clear()
    lines = []

    class Rec:
        def line(self, text):
            lines.append(text)

        def state(self, digest, status):
            lines.append(f"{digest[7:19]}: {status}")

        def layer(self, *a):
            pass

        def close(self):
            pass

    r = push(f"{proxy.host}/second:1", store=store, reporter=Rec())
    assert set(r.blobs.values()) == {"mounted from first"}
    assert sum(1 for x in lines if x.endswith(": Mounted from first")) == 2
    mounts = [s for s in proxy.seen if s[0] == "POST" and "mount=" in s[1]]
    assert len(mounts) == 3 and all(s[3] == 201 for s in mounts)
    assert not [s for s in proxy.seen if s[0] in ("PUT", "PATCH") and "/blobs/uploads/" in s[1]]
    assert skopeo_inspect(reg.host, "second:1")["Digest"] == m["digest"]


def _pushed_again(proxy, tmp_path, registry_env, names, pushed, target):
    """An image stored under ``names`` (repositories, in that order), pushed as ``pushed``, then
    pushed to ``target`` with the proxy's log cleared first: (that push's result, the manifest's
    descriptor, the store)."""
    lay, m = _image(tmp_path)
    store = Store(registry_env / "root")
    load_layout_into_store(store, lay.root, m, f"{proxy.host}/{names[0]}:1")
    for name in names[1:]:
        store.add_image(m["digest"], ref=f"{proxy.host}/{name}:1")
    push(f"{proxy.host}/{pushed}:1", store=store)
    store.add_image(m["digest"], ref=f"{proxy.host}/{target}:1")
    proxy.seen.clear()
    return push(f"{proxy.host}/{target}:1", store=store), m, store


def test_a_mount_from_a_repository_without_the_blob_goes_on_to_the_next_one(reg, proxy, tmp_path,  # noqa: F811
                                                                           registry_env):
    """An image known as a:1 (never pushed) and b:1 (pushed), pushed to c:1.  The registry
    answers a mount from a, which lacks the blobs, with 202 and an upload session; lamina took
    that answer as the end of the mounts and uploaded every blob, though b held them all.  docker
    tries the next candidates and cancels each session it leaves (DELETE); so does lamina now, and
    a mount no source could do still uploads (into the last session opened)."""
    r, m, store = _pushed_again(proxy, tmp_path, registry_env, ["a", "b"], "b", "c")
    assert set(r.blobs.values()) == {"mounted from b"}, r.blobs
    tried = [(s[1], s[3]) for s in proxy.seen if s[0] == "POST" and "mount=" in s[1]]
    assert sorted(code for _, code in tried) == [201] * 3 + [202] * 3, tried
    assert not [s for s in proxy.seen if s[0] in ("PUT", "PATCH") and "/blobs/uploads/" in s[1]]
    cancelled = [s for s in proxy.seen if s[0] == "DELETE" and "/v2/c/blobs/uploads/" in s[1]]
    assert [s[3] for s in cancelled] == [204] * 3, cancelled
    raw, digest = skopeo_raw(reg.host, "c:1")
    assert digest == m["digest"]

    # none of the sources holds the blobs: one session per blob is kept and used, the others cancelled
    other, om = _image(tmp_path / "other", big=5000)
    load_layout_into_store(store, other.root, om, f"{proxy.host}/d:1")
    store.add_image(om["digest"], ref=f"{proxy.host}/e:1")
    store.add_image(om["digest"], ref=f"{proxy.host}/f:1")
    proxy.seen.clear()
    r = push(f"{proxy.host}/f:1", store=store)
    assert set(r.blobs.values()) == {"pushed"}, r.blobs
    posts = [s for s in proxy.seen if s[0] == "POST"]
    assert len(posts) == 6 and all(s[3] == 202 for s in posts), posts
    assert len([s for s in proxy.seen if s[0] == "DELETE"]) == 3
    assert len([s for s in proxy.seen if s[0] == "PUT" and "/blobs/uploads/" in s[1]]) == 3
    assert skopeo_raw(reg.host, "f:1")[1] == om["digest"]


def test_mount_sources_sharing_the_targets_path_are_tried_first(reg, proxy, tmp_path, registry_env):  # noqa: F811
    """At most 4 mounts are tried per blob (docker's most), so which come first matters: docker
    orders its candidates by the leading path components they share with the target.  An image
    known under four other names and as team/src (the one pushed), pushed to team/dst: team/src
    is tried first and every blob is mounted from it."""
    r, _, _ = _pushed_again(proxy, tmp_path, registry_env, ["a/x", "b/y", "c/z", "d/w", "team/src"], "team/src",
                            "team/dst")
    assert set(r.blobs.values()) == {"mounted from team/src"}, r.blobs
    assert [s[3] for s in proxy.seen if s[0] == "POST"] == [201] * 3


@pytest.mark.parametrize("failed", [1, 3], ids=["first-patch", "third-patch"])
def test_chunked_upload_resumes(reg, proxy, tmp_path, registry_env, failed):  # noqa: F811
    """A PATCH fails (500, the chunk never reached the registry): lamina asks the upload's status
    and sends the rest from the registry's Range.  distribution answers "Range: 0-0" for a
    session that holds no byte yet (its end is size-1, but never below 0), which lamina read as
    one byte held: after a failed first chunk it sent the blob from byte 1, the registry refused
    the digest at the end (400) and the whole blob went up again in a new session."""
    lay, m = _image(tmp_path, big=300_000)
    store = Store(registry_env / "root")
    load_layout_into_store(store, lay.root, m, f"{proxy.host}/chunked-{failed}:1")
    big = lay.read_json(m["digest"])["layers"][1]
    assert big["size"] > 4 * 65536
    proxy.add("status", code=500, method="PATCH", times=1, skip=failed - 1)
    push(f"{proxy.host}/chunked-{failed}:1", store=store, chunk_size=65536)
    patches = [s for s in proxy.seen if s[0] == "PATCH"]
    assert [s[3] for s in patches] == [202] * (failed - 1) + [500] + [202] * (-(-big["size"] // 65536) - failed + 1)
    statuses = [s for s in proxy.seen if s[0] == "GET" and "/blobs/uploads/" in s[1]]
    assert [s[3] for s in statuses] == [204]   # asked the registry where to resume, once
    assert len([s for s in proxy.seen if s[0] == "POST"]) == 3   # no session started again
    assert [s[3] for s in proxy.seen if s[0] == "PUT" and "/blobs/uploads/" in s[1]] == [201] * 3
    assert skopeo_inspect(reg.host, f"chunked-{failed}:1")["Digest"] == m["digest"]
    pulled = Store(registry_env / "root2")
    pull(f"{reg.host}/chunked-{failed}:1", store=pulled)
    with pulled.open_blob(big["digest"]) as f:
        assert "sha256:" + hashlib.sha256(f.read()).hexdigest() == big["digest"]


def _relative_location(form):
    """The registry's upload Location as a path (``/v2/...``) or relative to the upload URL
    (``UUID?_state=...``), both of which the distribution-spec lets a registry send."""
    def rewrite(name, value):
        if name.lower() != "location" or "/blobs/uploads/" not in value:
            return value
        path = "/v2/" + value.split("/v2/", 1)[1]
        return path if form == "path" else path.split("/blobs/uploads/", 1)[1]
    return rewrite


@pytest.mark.parametrize("form", ["path", "relative"])
@pytest.mark.parametrize("chunked", [False, True], ids=["monolithic", "chunked"])
def test_a_relative_upload_location_keeps_its_query(reg, proxy, tmp_path, registry_env, form, chunked):  # noqa: F811
    """distribution-spec: the Location of an upload may be relative, and its query (distribution's
    _state, which signs the upload's state) must be kept when lamina adds ?digest= or sends the
    next chunk.  The answers of POST, PATCH and the upload status are rewritten so, a PATCH failed
    once to make lamina ask where to resume; the registry takes every blob."""
    lay, m = _image(tmp_path, big=200_000)
    store = Store(registry_env / "root")
    repo = f"rel-{form}-{int(chunked)}"
    load_layout_into_store(store, lay.root, m, f"{proxy.host}/{repo}:1")
    rewrite = proxy.add("rewrite", path="/blobs/uploads/", headers=_relative_location(form), times=None)
    if chunked:
        proxy.add("status", code=500, method="PATCH", times=1)
        proxy.rules.insert(0, proxy.rules.pop())   # before the rewrite, which matches every upload
    push(f"{proxy.host}/{repo}:1", store=store, chunk_size=65536 if chunked else None)
    assert rewrite.hits >= (11 if chunked else 6)
    finals = [s for s in proxy.seen if s[0] == "PUT" and "/blobs/uploads/" in s[1]]
    assert len(finals) == 3 and all(s[3] == 201 and "_state=" in s[1] and "digest=" in s[1] for s in finals), finals
    if chunked:
        assert [s[3] for s in proxy.seen if s[0] == "GET" and "/blobs/uploads/" in s[1]] == [204]
    assert skopeo_raw(reg.host, f"{repo}:1")[1] == m["digest"]


def test_no_docker_content_digest_header_anywhere(reg, proxy, tmp_path, registry_env):  # noqa: F811
    """Docker-Content-Digest is optional for a registry (distribution-spec: clients SHOULD verify
    the content themselves).  Without it on any answer, a push and a pull of the same image
    still work: lamina hashes what it got and what it sent."""
    lay, m = _image(tmp_path)
    store = Store(registry_env / "root")
    load_layout_into_store(store, lay.root, m, f"{proxy.host}/nodigest:1")
    dropped = proxy.add("rewrite", headers=lambda k, v: None if k.lower() == "docker-content-digest" else v,
                        times=None)
    r = push(f"{proxy.host}/nodigest:1", store=store)
    assert r.digest == m["digest"]
    pulled = Store(registry_env / "root2")
    res = pull(f"{proxy.host}/nodigest:1", store=pulled)
    assert res.manifest_digest == m["digest"] and dropped.hits > 0
    assert pulled.resolve(f"{proxy.host}/nodigest:1").manifest_digest == m["digest"]
    assert skopeo_raw(reg.host, "nodigest:1")[1] == m["digest"]


def _two_platforms_in(reg, tmp_path, dest):
    """A linux/amd64 and linux/arm64 image under an index, pushed by skopeo to ``dest``: (layout,
    the two manifests' descriptors, the index's)."""
    lay = ocibuild.Layout(tmp_path / "oci")
    ms = [ocibuild.with_platform(lay.image([{"arch": arch.encode()}], arch=arch), "linux", arch)
          for arch in ("amd64", "arm64")]
    index = lay.index(ms)
    lay.add(index, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, dest, all_images=True)
    return lay, ms, index


def test_a_push_cut_at_the_manifest_leaves_no_tag_and_its_rerun_sends_no_blob_again(reg, proxy, tmp_path,  # noqa: F811
                                                                                   registry_env, monkeypatch):
    """A multi-arch push whose index PUT fails (the registry keeps answering 500): the tag must
    not exist (a tag naming half an image breaks every pull of it), the blobs and the children
    pushed stay, and the rerun sends no blob again ("Layer already exists") and puts the index
    under the tag, byte for byte."""
    monkeypatch.setenv("LAMINA_REGISTRY_RETRIES", "1")
    lay, ms, index = _two_platforms_in(reg, tmp_path, "cut-src:1")
    store = Store(registry_env / "root")
    r = pull(f"{reg.host}/cut-src:1", store=store, all_platforms=True)
    store.add_image(r.manifest_digest, ref=f"{proxy.host}/cut:1", repo_digest=index["digest"])
    proxy.add("status", code=500, method="PUT", path="/manifests/1", times=None)
    with pytest.raises(errors.RegistryError, match="manifest"):
        push(f"{proxy.host}/cut:1", store=store)
    assert _manifest_status(reg.host, "cut:1") == 404
    for m in ms:
        assert skopeo_raw(reg.host, f"cut@{m['digest']}")[1] == m["digest"]
    proxy.clear()
    proxy.seen.clear()
    res = push(f"{proxy.host}/cut:1", store=store)
    assert res.digest == index["digest"] and set(res.blobs.values()) == {"exists"}, res.blobs
    assert not [s for s in proxy.seen if s[0] in ("POST", "PATCH") or "/blobs/uploads/" in s[1]]
    raw, digest = skopeo_raw(reg.host, "cut:1")
    assert digest == index["digest"] and raw == _manifest_bytes(lay, index)


def _manifest_status(host, ref):
    """The registry's status for GET manifest ``ref`` (name:tag), asked directly."""
    import http.client
    name, tag = ref.split(":")
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.request("GET", f"/v2/{name}/manifests/{tag}", headers={"Accept": ocibuild.OCI_INDEX})
    status = conn.getresponse().status
    conn.close()
    return status


def test_a_manifest_with_a_subject_goes_through_pull_and_push_byte_for_byte(reg, tmp_path, registry_env):  # noqa: F811
    """An image manifest with an OCI 1.1 ``subject`` (a signed or attested image's referrer) is an
    image like any other to lamina: pulled and pushed as its bytes, subject kept, so its digest
    (what a signature names) stays.  docker-registry 2.8 knows no referrers API: it takes the
    manifest and answers without OCI-Subject, and lamina asks for nothing more (no referrers
    tag schema fallback, as docker)."""
    lay, base = _image(tmp_path)
    lay.add(base, "base")
    doc = lay.read_json(base["digest"])
    doc["subject"] = {"mediaType": base["mediaType"], "digest": base["digest"], "size": base["size"]}
    doc["annotations"] = {"org.opencontainers.image.ref.name": "ignored-here", "com.example.note": "kept"}
    m = lay.json_blob(doc, doc["mediaType"])
    lay.add(m, "referrer")
    skopeo_push(f"oci:{lay.root}:base", reg.host, "subj:base")
    skopeo_push(f"oci:{lay.root}:referrer", reg.host, "subj:referrer")
    raw, digest = skopeo_raw(reg.host, "subj:referrer")
    assert digest == m["digest"] and json.loads(raw)["subject"]["digest"] == base["digest"]
    store = Store(registry_env / "root")
    r = pull(f"{reg.host}/subj:referrer", store=store)
    assert r.manifest_digest == m["digest"]
    store.add_image(m["digest"], ref=f"{reg.host}/subj-copy:referrer")
    res = push(f"{reg.host}/subj-copy:referrer", store=store)
    raw2, digest2 = skopeo_raw(reg.host, "subj-copy:referrer")
    assert res.digest == digest2 == m["digest"] and raw2 == raw
    # no referrers tag schema index (sha256-<subject hex>) beside the tags pushed, from skopeo or
    # lamina: the spec's fallback for a registry answering without OCI-Subject is a SHOULD that
    # the tools making referrers (oras, cosign, notation) carry out, not the copies
    assert list_tags(f"{reg.host}/subj") == ["base", "referrer"]
    assert list_tags(f"{reg.host}/subj-copy") == ["referrer"]


def test_chunks_are_as_long_as_the_registrys_oci_chunk_min_length(reg, proxy, tmp_path, registry_env):  # noqa: F811
    """distribution-spec 1.1: a registry may answer the upload's POST with OCI-Chunk-Min-Length,
    and every chunk but the last SHOULD be at least that long (registries over object stores
    refuse smaller parts).  lamina sent its own chunk size whatever the registry said.  Now the
    larger of the two; a value that is no number says nothing."""
    lay, m = _image(tmp_path, big=300_000)
    store = Store(registry_env / "root")
    big = lay.read_json(m["digest"])["layers"][1]
    load_layout_into_store(store, lay.root, m, f"{proxy.host}/minchunk:1")
    said = proxy.add("rewrite", method="POST", add={"OCI-Chunk-Min-Length": "131072"}, times=None)
    push(f"{proxy.host}/minchunk:1", store=store, chunk_size=65536)
    lengths = [int(s[2]["Content-Length"]) for s in proxy.seen if s[0] == "PATCH"]
    assert said.hits == 3 and lengths == [131072, 131072, big["size"] - 2 * 131072], lengths
    assert skopeo_raw(reg.host, "minchunk:1")[1] == m["digest"]
    proxy.clear()
    proxy.seen.clear()
    other, om = _image(tmp_path / "other", big=300_001)
    load_layout_into_store(store, other.root, om, f"{proxy.host}/minchunk-junk:1")
    proxy.add("rewrite", method="POST", add={"OCI-Chunk-Min-Length": "9" * 40}, times=None)
    push(f"{proxy.host}/minchunk-junk:1", store=store, chunk_size=65536)
    lengths = [int(s[2]["Content-Length"]) for s in proxy.seen if s[0] == "PATCH"]
    assert lengths[:4] == [65536] * 4 and sum(lengths) == other.read_json(om["digest"])["layers"][1]["size"], lengths
    assert skopeo_raw(reg.host, "minchunk-junk:1")[1] == om["digest"]


PUSH_CHILD = r'''
import json, sys
from lamina.registry import push
from lamina.store import Store

store = Store(sys.argv[1])
push(sys.argv[2], store=store)   # the modules and the connection, before the baseline
base = vm("VmHWM:")
push(sys.argv[3], store=store, chunk_size=int(sys.argv[4]))
print(json.dumps({"growth": vm("VmHWM:") - base}))
'''


def test_peak_rss_of_a_chunked_push(reg, tmp_path, registry_env):  # noqa: F811
    """Each PATCH chunk is read from the blob as it is sent, not whole (issue 14): an 8 MiB
    chunk read whole grew the peak RSS by ~16 MiB (the chunk and a copy of it)."""
    import sys
    from conftest import run
    from test_extract_memory import VM
    small, sm = _image(tmp_path / "small")
    lay, m = _image(tmp_path, big=24 << 20)
    store = Store(registry_env / "root")
    load_layout_into_store(store, small.root, sm, f"{reg.host}/warm:1")
    load_layout_into_store(store, lay.root, m, f"{reg.host}/bigchunks:1")
    out = run(sys.executable, "-c", VM + PUSH_CHILD, registry_env / "root", f"{reg.host}/warm:1",
              f"{reg.host}/bigchunks:1", str(8 << 20))
    growth = json.loads(out.stdout)["growth"]
    assert growth < 4 << 20, f"peak RSS grew {growth / 2**20:.1f} MiB pushing 8 MiB chunks"
    assert skopeo_inspect(reg.host, "bigchunks:1")["Digest"] == m["digest"]


@pytest.mark.parametrize("repo, upload_range", [("badrange-long", "0-" + "9" * 5000), ("badrange-nan", "0-abc")])
def test_a_malformed_upload_range_starts_the_upload_again(reg, proxy, tmp_path, registry_env, repo,  # noqa: F811
                                                          upload_range):
    """After a failed PATCH lamina asks where to resume; a Range of 5000 digits (or not a number)
    in the answer made int() raise a ValueError traceback.  Now it is the registry's error, and
    the upload starts over in a fresh session as for any other one."""
    lay, m = _image(tmp_path, big=300_000)
    store = Store(registry_env / "root")
    load_layout_into_store(store, lay.root, m, f"{proxy.host}/{repo}:1")
    proxy.add("status", code=500, method="PATCH", times=1)
    asked = proxy.add("respond", method="GET", path="/blobs/uploads/", code=204, headers={"Range": upload_range},
                      times=None)
    push(f"{proxy.host}/{repo}:1", store=store, chunk_size=65536)
    assert asked.hits == 1
    assert skopeo_inspect(reg.host, f"{repo}:1")["Digest"] == m["digest"]


@pytest.mark.parametrize("upload_range", ["0-9999999", "0-65536"], ids=["past-the-blob", "past-what-was-sent"])
def test_an_upload_range_holding_bytes_never_sent_is_refused_naming_the_blob(reg, proxy, tmp_path,  # noqa: F811
                                                                             registry_env, upload_range):
    """After a failed PATCH of the first 64 KiB lamina asks where to resume; a registry saying
    it holds more than lamina sent (past the blob's end, or one byte past the chunk) made
    lamina resume there: it skipped the bytes between and ended the session with a PUT of a
    blob with a hole in it (on 9283a86, for a Range past the blob's end, straight to the PUT),
    which the registry refused with a digest error that said nothing of why.  Now no such PUT
    is sent, and the refusal names the blob and the Range (the upload is tried once more in a
    fresh session, which the registry answers the same)."""
    lay, m = _image(tmp_path, big=300_000)
    store = Store(registry_env / "root")
    repo = f"range-{upload_range[2:]}"
    load_layout_into_store(store, lay.root, m, f"{proxy.host}/{repo}:1")
    big = max(lay.read_json(m["digest"])["layers"], key=lambda d: d["size"])
    proxy.add("status", code=500, method="PATCH", times=None)
    proxy.add("respond", method="GET", path="/blobs/uploads/", code=204, headers={"Range": upload_range}, times=None)
    with pytest.raises(errors.RegistryError) as e:
        push(f"{proxy.host}/{repo}:1", store=store, chunk_size=65536)
    assert str(e.value) == (f"upload of {big['digest']} to {proxy.host}/{repo}: the registry says its upload "
                            f"session holds bytes {upload_range}, but lamina sent it 65536 bytes of {big['size']}")
    assert not [s for s in proxy.seen if s[0] == "PUT" and big["digest"][7:] in s[1]], "a PUT of a blob with a hole"


def test_push_multiplatform_index(reg, tmp_path, registry_env):  # noqa: F811
    lay = ocibuild.Layout(tmp_path / "oci")
    ms = []
    for arch, variant in (("amd64", None), ("arm64", "v8")):
        mm = lay.image([{"arch": arch.encode()}], arch=arch, variant=variant)
        ms.append(ocibuild.with_platform(mm, "linux", arch, variant))
    lay.add(lay.index(ms), "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "multi-src:1", all_images=True)
    raw, index_digest = skopeo_raw(reg.host, "multi-src:1")
    store = Store(registry_env / "root")
    r = pull(f"{reg.host}/multi-src:1", store=store, platform="linux/arm64", all_platforms=True)
    store.add_image(r.manifest_digest, ref=f"{reg.host}/multi-dst:1", repo_digest=index_digest)
    res = push(f"{reg.host}/multi-dst:1", store=store)
    assert res.digest == index_digest
    raw2, digest2 = skopeo_raw(reg.host, "multi-dst:1")
    assert raw2 == raw and digest2 == index_digest
    for d in json.loads(raw)["manifests"]:
        assert skopeo_inspect(reg.host, f"multi-dst@{d['digest']}")["Digest"] == d["digest"]


def test_push_with_token_auth(tmp_path, registry_env):  # noqa: F811
    token = TokenServer(tmp_path, users={"bob": "pw"}, anonymous_pull=True)
    reg = Registry(tmp_path, token=token)
    try:
        lay, m = _image(tmp_path)
        store = Store(registry_env / "root")
        load_layout_into_store(store, lay.root, m, f"{reg.host}/team/svc:1")
        with pytest.raises(errors.AuthenticationError):
            push(f"{reg.host}/team/svc:1", store=store)
        lamina_cli("login", reg.host, "-u", "bob", "--password-stdin", input="pw")
        token.requests.clear()
        out = json.loads(lamina_cli("push", "--format", "json", f"{reg.host}/team/svc:1",
                                    root=registry_env / "root").stdout)
        assert out["digest"] == m["digest"]
        assert set(out["blobs"].values()) == {"pushed"}
        assert all(user == "bob" for user, _ in token.requests)
        assert any("repository:team/svc:pull,push" in scopes for _, scopes in token.requests)
        assert skopeo_inspect(reg.host, "team/svc:1")["Digest"] == m["digest"]
    finally:
        reg.stop()
        token.stop()


def test_push_unknown_image_fails(reg, registry_env):  # noqa: F811
    p = lamina_cli("push", f"{reg.host}/nothing:1", root=registry_env / "root", check=False)
    assert p.returncode == 1 and re.match(r"lamina: error: .*no such image", p.stderr)


FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"


def test_a_foreign_layer_with_urls_is_not_pushed_and_a_pull_says_what_it_lacks(tmp_path, registry_env):  # noqa: F811
    """A non-distributable layer (docker's foreign type, with urls: Windows base layers): docker,
    containerd and skopeo push the manifest naming it, not its blob, and whoever pulls fetches
    it from its urls.  lamina pushed the blob to the registry like any other.  Now it is skipped
    (the registry takes the manifest without it); the other layers are pushed.  lamina never
    downloads urls (another host, named by the image): a pull of that image from the registry
    fails naming the layer as non-distributable, and stores nothing of it (tests/CONFORMANCE.md)."""
    reg = Registry(tmp_path / "reg", allow_layer_urls=True)
    try:
        _foreign_layer_push_pull(reg, tmp_path, registry_env)
    finally:
        reg.stop()


def _foreign_layer_push_pull(reg, tmp_path, registry_env):
    root = registry_env / "root"
    lay = ocibuild.Layout(tmp_path / "oci")
    m = lay.image([{"base": b"licensed base"}, {"app": b"app"}], docker=True)
    doc = lay.read_json(m["digest"])
    doc["layers"][0]["mediaType"] = FOREIGN
    doc["layers"][0]["urls"] = ["https://example.invalid/base.tar.gz"]
    m = lay.json_blob(doc, doc["mediaType"])
    ref = f"{reg.host}/foreign/app:1"
    load_layout_into_store(Store(root), lay.root, m, ref)
    base, app = (d["digest"] for d in doc["layers"])
    out = lamina_cli("push", ref, root=root).stdout.splitlines()
    assert sorted(out[1:3]) == sorted([f"{base[7:19]}: Skipped foreign layer", f"{app[7:19]}: Pushed"])
    assert not reg.has_blob(base) and reg.has_blob(app)
    raw, digest = skopeo_raw(reg.host, "foreign/app:1")
    assert digest == m["digest"] and json.loads(raw)["layers"][0]["urls"] == doc["layers"][0]["urls"]
    p = lamina_cli("pull", ref, root=registry_env / "root2", check=False)
    assert p.returncode == 1 and base in p.stderr and "non-distributable" in p.stderr, p.stderr
    assert "lamina does not download layer urls" in p.stderr
    with pytest.raises(errors.ImageNotFoundError):
        Store(registry_env / "root2").resolve(ref)


def _tags(host, name):
    """The registry's tag list of repository ``name`` (None: a 404, distribution's answer for a
    repository that holds no tag as for one that does not exist)."""
    import http.client
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.request("GET", f"/v2/{name}/tags/list")
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return json.loads(body).get("tags") or [] if resp.status == 200 else None


def test_push_by_digest_finds_the_image_wherever_the_store_names_it(reg, tmp_path, registry_env):  # noqa: F811
    """skopeo copy to docker://HOST/new@sha256:X puts the manifest by digest, creating no tag.
    lamina looked the digest up only under the names of repository ``new``, which the store had
    none of, and said "no such image".  The digest names the content: an image named elsewhere,
    or not named at all, is found by it (CLI and API alike); a digest the store lacks is refused
    in one line naming it."""
    root = registry_env / "root"
    lay, m = _image(tmp_path)
    load_layout_into_store(Store(root), lay.root, m, f"{reg.host}/bydigest/named:1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, f"bydigest/skopeo@{m['digest']}")
    lamina_cli("push", f"{reg.host}/bydigest/new@{m['digest']}", root=root)
    body = _manifest_bytes(lay, m)
    for repo in ("bydigest/skopeo", "bydigest/new"):
        assert skopeo_raw(reg.host, f"{repo}@{m['digest']}") == (body, m["digest"])
    assert _tags(reg.host, "bydigest/new") == _tags(reg.host, "bydigest/skopeo") and not _tags(reg.host, "bydigest/new")

    other, om = _image(tmp_path / "other", big=5000)
    store = Store(root)
    load_layout_into_store(store, other.root, om, None)   # unnamed (dangling)
    r = push(f"{reg.host}/bydigest/unnamed@{om['digest']}", store=store)
    assert r.digest == om["digest"] and set(r.blobs.values()) == {"pushed"}
    assert skopeo_raw(reg.host, f"bydigest/unnamed@{om['digest']}")[1] == om["digest"]
    assert not _tags(reg.host, "bydigest/unnamed")

    missing = "sha256:" + "ab" * 32
    p = lamina_cli("push", f"{reg.host}/bydigest/none@{missing}", root=root, check=False)
    assert p.returncode == 1 and f"no image with digest {missing} is in the store" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    with pytest.raises(errors.ImageNotFoundError, match=f"no image with digest {missing} is in"):
        push(f"{reg.host}/bydigest/none@{missing}", store=store)


def test_a_push_by_digest_says_its_digest_on_one_line_without_a_tag(reg, tmp_path, registry_env):  # noqa: F811
    """docker's last line of a push names the tag: "1: digest: sha256:... size: N".  A push by
    digest has none, and lamina put the digest in its place: "sha256:X: digest: sha256:X size: N".
    docker's containerd push prints no such line without a tag; lamina keeps it, without the tag
    ("digest: sha256:X size: N"), and its JSON has ``tag``: the tag pushed, null by digest."""
    root = registry_env / "root"
    lay, m = _image(tmp_path)
    ref = f"{reg.host}/saydigest/app:1"
    load_layout_into_store(Store(root), lay.root, m, ref)
    size = len(_manifest_bytes(lay, m))
    out = lamina_cli("push", f"{reg.host}/saydigest/other@{m['digest']}", root=root).stdout.splitlines()
    assert out[0] == f"The push refers to repository [{reg.host}/saydigest/other]"
    assert out[-1] == f"digest: {m['digest']} size: {size}", out
    assert sum(m["digest"] in line for line in out) == 1, out
    doc = json.loads(lamina_cli("push", "--format", "json", f"{reg.host}/saydigest/other@{m['digest']}",
                                root=root).stdout)
    assert (doc["reference"], doc["digest"], doc["size"], doc["tag"]) == (
        f"{reg.host}/saydigest/other@{m['digest']}", m["digest"], size, None)
    doc = json.loads(lamina_cli("push", "--format", "json", ref, root=root).stdout)
    assert (doc["reference"], doc["digest"], doc["tag"]) == (ref, m["digest"], "1")


def _upload_uuid(path):
    return path.split("/blobs/uploads/", 1)[1].split("?", 1)[0]


@pytest.mark.parametrize("cancel", [204, 500], ids=["cancelled", "cancel-fails"])
def test_an_upload_started_again_cancels_the_session_it_leaves(reg, proxy, tmp_path, registry_env, cancel):  # noqa: F811
    """A chunked upload fails at its third PATCH and its status cannot be read: lamina starts the
    upload again in a new session and left the first one, holding two chunks, for the registry
    to expire (distribution: after a week).  docker cancels it (DELETE); so does lamina now, at
    the session's latest Location (distribution refuses a _state whose offset is behind), and a
    cancel that fails does not fail the push."""
    lay, m = _image(tmp_path, big=300_000)
    store = Store(registry_env / "root")
    name = f"restarted-{cancel}"
    load_layout_into_store(store, lay.root, m, f"{proxy.host}/{name}:1")
    proxy.add("status", code=500, method="PATCH", times=1, skip=2)
    proxy.add("respond", method="GET", path="/blobs/uploads/", code=204, headers={"Range": "0-abc"}, times=None)
    if cancel != 204:
        proxy.add("status", code=cancel, method="DELETE", times=None)
    push(f"{proxy.host}/{name}:1", store=store, chunk_size=65536)
    patches = [s for s in proxy.seen if s[0] == "PATCH"]
    failed = _upload_uuid(patches[2][1])
    assert patches[2][3] == 500 and _upload_uuid(patches[0][1]) == failed
    deletes = [(_upload_uuid(s[1]), s[3]) for s in proxy.seen if s[0] == "DELETE"]
    assert deletes == [(failed, cancel)], deletes
    assert [s for s in patches if _upload_uuid(s[1]) != failed and s[3] == 202]   # the new session's
    assert skopeo_inspect(reg.host, f"{name}:1")["Digest"] == m["digest"]


def test_a_push_by_an_index_digest_the_store_holds_part_of_sends_nothing(reg, proxy, tmp_path, registry_env):  # noqa: F811
    """One platform of a multi-arch image pulled: its index's digest finds it, but the index
    cannot be pushed (its other platform is not in the store), and what can be pushed has
    another digest.  lamina uploaded every blob before it said the digests differ; now it says
    so before sending anything."""
    _, ms, index = _two_platforms_in(reg, tmp_path, "partindex-src:1")
    store = Store(registry_env / "root")
    r = pull(f"{reg.host}/partindex-src:1", store=store, platform="linux/arm64")
    assert r.manifest_digest == ms[1]["digest"]
    proxy.seen.clear()
    with pytest.raises(errors.ImageError, match=f"cannot push {ms[1]['digest']} as .*@{index['digest']}"):
        push(f"{proxy.host}/partindex@{index['digest']}", store=store)
    assert not [s for s in proxy.seen if s[0] in ("POST", "PATCH", "PUT")], proxy.seen


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "monolithic"])
def test_a_blob_shorter_than_its_descriptor_leaves_no_upload_session(reg, tmp_path, registry_env, chunked):  # noqa: F811
    """A stored blob cut short (a damaged store) failed its upload mid-request and left the session,
    holding the bytes already sent, for the registry to expire after a week: distribution refuses
    a DELETE of it (the broken request's bytes put it past the offset its Location says).  A
    monolithic PUT sent the file as it was and left the registry waiting for the bytes its
    Content-Length owed.  The blob's size is checked before the upload, which opens no session."""
    lay, m = _image(tmp_path, big=300_000)
    store = Store(registry_env / "root")
    name = f"cut-{'chunked' if chunked else 'whole'}"
    load_layout_into_store(store, lay.root, m, f"{reg.host}/{name}:1")
    big = max(lay.read_json(m["digest"])["layers"], key=lambda d: d["size"])
    with open(store.blob_path(big["digest"]), "r+b") as f:
        f.truncate(big["size"] - 1000)
    said = re.escape(f"blob {big['digest']} is shorter than its descriptor says ({big['size'] - 1000} of "
                     f"{big['size']} bytes)")
    with pytest.raises(errors.ImageError, match=said):
        push(f"{reg.host}/{name}:1", store=store, chunk_size=65536 if chunked else None)
    uploads = os.path.join(reg.storage, "docker/registry/v2/repositories", name, "_uploads")
    assert not os.path.isdir(uploads) or os.listdir(uploads) == []


def test_a_blob_cut_short_during_its_upload_cancels_the_session_at_its_latest_location(
        reg, proxy, tmp_path, registry_env):  # noqa: F811
    """The blob is cut short while its upload runs (the store damaged under it): the third PATCH
    fails with an ImageError, which left the session as it was, where a RegistryError cancels
    it; now it is cancelled too, at the Location the last PATCH gave.  (distribution refuses
    that DELETE, the broken PATCH's bytes having moved the session past the offset the
    Location says: the size check before the upload is what spares it such a session.)"""
    lay, m = _image(tmp_path, big=300_000)
    store = Store(registry_env / "root")
    load_layout_into_store(store, lay.root, m, f"{proxy.host}/cut-during:1")
    big = max(lay.read_json(m["digest"])["layers"], key=lambda d: d["size"])

    def cut(name, value):
        # while the second PATCH's answer passes, before lamina reads the third window
        os.truncate(store.blob_path(big["digest"]), 150_000)
        return value

    proxy.add("rewrite", method="PATCH", skip=1, times=1, headers=cut)
    with pytest.raises(errors.ImageError, match=f"blob {big['digest']} is shorter than its descriptor says"):
        push(f"{proxy.host}/cut-during:1", store=store, chunk_size=65536, concurrency=1)
    patches = [s for s in proxy.seen if s[0] == "PATCH"]
    assert len(patches) == 2 and all(s[3] == 202 for s in patches), patches
    deletes = [s for s in proxy.seen if s[0] == "DELETE"]
    assert len(deletes) == 1, deletes
    # the session's latest Location: the second PATCH's answer, whose _state the first's is not
    locations = [s[1] for s in proxy.seen if "/blobs/uploads/" in s[1]]
    assert deletes[0][1] not in locations[:-1] and deletes[0][1].split("?")[0] == patches[1][1].split("?")[0]
