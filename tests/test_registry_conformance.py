"""The registry client against the OCI distribution-spec and what skopeo and containerd do there.

The real docker-registry where it answers; a FaultProxy in front of it where the answer has to be
one docker-registry does not give (a tags page's Link with more parameters than its own).
"""
import json
import subprocess

import pytest

import ocibuild
from conftest import require_tool
from registryfixture import FaultProxy, fast_random, reg, registry_env, skopeo_push  # noqa: F401

from lamina import errors
from lamina.registry import list_tags, pull, push
from lamina.store import Store


def _skopeo_tags(host, repo):
    proc = subprocess.run([require_tool("skopeo"), "list-tags", "--tls-verify=false", f"docker://{host}/{repo}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return sorted(json.loads(proc.stdout)["Tags"])


def _paged(reg, link):  # noqa: F811
    """A repository of two tags pages, "1" then "2", the first page's Link header ``link``."""
    front = FaultProxy(reg.host)
    front.add("respond", method="GET", path="last=1", times=None,
              body=json.dumps({"name": "paged", "tags": ["2"]}).encode(), headers={"Content-Type": "application/json"})
    front.add("respond", method="GET", path="/tags/list", times=None,
              body=json.dumps({"name": "paged", "tags": ["1"]}).encode(),
              headers={"Content-Type": "application/json", "Link": link})
    return front


@pytest.mark.parametrize("link", [
    '</v2/paged/tags/list?last=1>; type="application/json"; rel="next"',
    '</v2/paged/tags/list?last=1>; REL="Next"',
    '</v2/paged/tags/list?last=1>; rel="last next"',
    '</v2/paged/tags/list?last=1>; rel=next; title="a, b"',
], ids=["param-before-rel", "rel-in-capitals", "rel-list", "title-with-a-comma"])
def test_a_tags_page_link_is_read_as_rfc_8288_says(reg, registry_env, link):  # noqa: F811
    """A Link's parameters may come in any order, its ``rel`` is a list of case-insensitive
    relation types (RFC 8288 section 3.3): lamina took the next page only from ``<URL>; rel="next"``
    as docker-registry writes it, and any other spelling ended the listing at its first page,
    without a word.  skopeo follows each of these to the second page."""
    front = _paged(reg, link)
    try:
        assert _skopeo_tags(front.host, "paged") == ["1", "2"]
        assert list_tags(f"{front.host}/paged") == ["1", "2"]
    finally:
        front.stop()


@pytest.mark.parametrize("link", [
    '</v2/paged/tags/list?last=1>; rel="prev"',
    '</v2/paged/tags/list?last=1>; rel="nextpage"',
    '</v2/paged/tags/list?last=1>; title="rel=next"',
])
def test_a_tags_page_link_that_is_no_next_page_ends_the_listing(reg, registry_env, link):  # noqa: F811
    """Only a link whose relation types hold ``next`` is the next page (skopeo follows the first
    link of any relation, so a ``prev`` pages back and forth for ever)."""
    front = _paged(reg, link)
    try:
        assert list_tags(f"{front.host}/paged") == ["1"]
        assert not front.requests_for("last=1")
    finally:
        front.stop()


@pytest.fixture
def proxy(reg):  # noqa: F811
    p = FaultProxy(reg.host)
    yield p
    p.stop()


def _two_platform_index(tmp_path, reg, name, note=b"1", platforms=True):  # noqa: F811
    """An index of an amd64 and an arm64 image; ``platforms``: its entries say theirs (else only
    the images' configs do)."""
    lay = ocibuild.Layout(tmp_path / f"oci-{name}")
    amd = lay.image([{"etc/hostname": b"amd64 " + note}], arch="amd64")
    arm = lay.image([{"etc/hostname": b"arm64 " + note}], arch="arm64")
    if platforms:
        amd["platform"] = {"architecture": "amd64", "os": "linux"}
        arm["platform"] = {"architecture": "arm64", "os": "linux"}
    lay.add(lay.index([amd, arm]), "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, f"{name}:1", all_images=True, extra=("--preserve-digests",))
    return lay


def _manifest_requests(proxy, since=0):
    return [(m, p) for m, p, _, _ in proxy.seen[since:] if "/manifests/" in p]


@pytest.mark.parametrize("how", ["tag", "digest"])
def test_a_pull_the_store_is_up_to_date_for_asks_with_head_and_gets_no_manifest(reg, proxy, tmp_path,  # noqa: F811
                                                                               registry_env, how):
    """containerd (and docker since 20.10) resolve a reference with a HEAD of the manifest and take
    the document its Docker-Content-Digest names from their content store when they hold it: a
    pull of an image that has not changed costs no GET, which Docker Hub counts against the pull
    rate limit and a HEAD not.  lamina sent a GET for the index and one for the platform's
    manifest on every pull.  Now an up-to-date pull asks the registry with one HEAD."""
    _two_platform_index(tmp_path, reg, "uptodate")
    store = Store(registry_env / "root")
    first = pull(f"{proxy.host}/uptodate:1", store=store, platform="linux/arm64")
    ref = f"{proxy.host}/uptodate" + (":1" if how == "tag" else f"@{first.repo_digest}")
    if how == "digest":
        pull(ref, store=store, platform="linux/arm64")
    n = len(proxy.seen)
    again = pull(ref, store=store, platform="linux/arm64")
    assert again.status == "up to date"
    assert (again.repo_digest, again.manifest_digest) == (first.repo_digest, first.manifest_digest)
    reference = "1" if how == "tag" else first.repo_digest
    assert [(m, p) for m, p, _, _ in proxy.seen[n:] if p != "/v2/"] == [("HEAD", f"/v2/uptodate/manifests/{reference}")]


def test_the_config_saying_an_index_entrys_platform_is_read_from_the_store_when_it_holds_it(
        reg, proxy, tmp_path, registry_env):  # noqa: F811
    """Index entries without a platform are matched by their images' configs: an up-to-date pull
    fetched the config of the image the store holds again from the registry, each time.  Only
    the other platform's manifest and config, which the store lacks, are fetched now."""
    lay = _two_platform_index(tmp_path, reg, "noplatform", platforms=False)
    store = Store(registry_env / "root")
    first = pull(f"{proxy.host}/noplatform:1", store=store, platform="linux/arm64")
    n = len(proxy.seen)
    again = pull(f"{proxy.host}/noplatform:1", store=store, platform="linux/arm64")
    assert again.status == "up to date" and again.manifest_digest == first.manifest_digest
    held = {first.manifest_digest, first.config_digest}
    asked = [p.rsplit("/", 1)[1] for m, p, _, _ in proxy.seen[n:] if m == "GET" and p != "/v2/"]
    others = [d["digest"] for d in lay.read_json(lay.entries[0]["digest"])["manifests"]
              if d["digest"] != first.manifest_digest]
    assert len(asked) == 2 and asked[0] == others[0] and not held & set(asked), asked


def test_a_head_without_docker_content_digest_is_followed_by_a_get(reg, proxy, tmp_path, registry_env):  # noqa: F811
    """The digest is the registry's SHOULD, not a MUST, on a HEAD: without it lamina cannot know
    what the tag names, and GETs it (containerd does the same)."""
    _two_platform_index(tmp_path, reg, "nodigest")
    store = Store(registry_env / "root")
    first = pull(f"{proxy.host}/nodigest:1", store=store, platform="linux/arm64")
    proxy.add("rewrite", method="HEAD", path="/manifests/", times=None,
              headers=lambda k, v: None if k.lower() == "docker-content-digest" else v)
    n = len(proxy.seen)
    again = pull(f"{proxy.host}/nodigest:1", store=store, platform="linux/arm64")
    assert again.status == "up to date" and again.repo_digest == first.repo_digest
    assert _manifest_requests(proxy, n) == [("HEAD", "/v2/nodigest/manifests/1"), ("GET", "/v2/nodigest/manifests/1")]


def test_a_tag_moved_to_an_image_the_store_lacks_is_fetched(reg, proxy, tmp_path, registry_env):  # noqa: F811
    _two_platform_index(tmp_path, reg, "moved")
    store = Store(registry_env / "root")
    first = pull(f"{proxy.host}/moved:1", store=store, platform="linux/arm64")
    _two_platform_index(tmp_path, reg, "moved", note=b"2")
    n = len(proxy.seen)
    again = pull(f"{proxy.host}/moved:1", store=store, platform="linux/arm64")
    assert again.status == "downloaded" and again.repo_digest != first.repo_digest
    assert again.repo_digest == store.resolve(f"{proxy.host}/moved:1").repo_digests[0].split("@")[1]
    assert [m for m, _ in _manifest_requests(proxy, n)] == ["HEAD", "GET", "GET"]


def test_a_head_naming_a_digest_the_tag_does_not_serve_is_taken_from_the_get(reg, proxy, tmp_path,  # noqa: F811
                                                                              registry_env):
    """A HEAD whose Docker-Content-Digest names a document the store holds, while its length is
    not that document's: the answer contradicts itself, and the GET's document decides."""
    _two_platform_index(tmp_path, reg, "liar")
    store = Store(registry_env / "root")
    first = pull(f"{proxy.host}/liar:1", store=store, platform="linux/arm64")
    proxy.add("rewrite", method="HEAD", path="/manifests/", times=None,
              headers=lambda k, v: first.manifest_digest if k.lower() == "docker-content-digest" else v)
    n = len(proxy.seen)
    again = pull(f"{proxy.host}/liar:1", store=store, platform="linux/arm64")
    assert again.status == "up to date" and again.repo_digest == first.repo_digest
    assert [m for m, _ in _manifest_requests(proxy, n)] == ["HEAD", "GET"]


def test_a_head_naming_a_layer_the_store_holds_is_taken_from_the_get(reg, proxy, tmp_path, registry_env):  # noqa: F811
    """A HEAD whose Docker-Content-Digest (and length) are a config's the store holds: those bytes
    are no manifest, and the GET's document decides."""
    _two_platform_index(tmp_path, reg, "layerhead")
    store = Store(registry_env / "root")
    first = pull(f"{proxy.host}/layerhead:1", store=store, platform="linux/arm64")
    with store.open_blob(first.config_digest) as f:
        config = f.read()
    proxy.add("respond", method="HEAD", path="/manifests/", times=None, body=config,   # its length, not sent
              headers={"Docker-Content-Digest": first.config_digest, "Content-Type": ocibuild.OCI_INDEX})
    n = len(proxy.seen)
    again = pull(f"{proxy.host}/layerhead:1", store=store, platform="linux/arm64")
    assert again.status == "up to date" and again.repo_digest == first.repo_digest
    assert [m for m, _ in _manifest_requests(proxy, n)] == ["HEAD", "GET"]


@pytest.fixture(scope="module")
def big_image(reg, tmp_path_factory):  # noqa: F811
    lay = ocibuild.Layout(tmp_path_factory.mktemp("lay") / "oci")
    m = lay.image([{"big.bin": fast_random(3 << 20, 7)}], compress=False)
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "storage:1", extra=("--preserve-digests",))
    return lay.read_json(m["digest"])["layers"][0]


def test_a_storage_backend_that_answers_a_resume_with_the_whole_blob_is_read_past_its_head(
        reg, proxy, big_image, registry_env):  # noqa: F811
    """The registry redirects a blob GET to its storage (S3, a CDN); a connection cut there is
    resumed with Range, and a backend that ignores it answers 200 with the whole blob: lamina
    reads past the bytes it holds (RFC 9110: a server may ignore Range), it does not append
    the head again."""
    storage = FaultProxy(reg.host)
    try:
        proxy.add("redirect", method="GET", path=f"/blobs/{big_image['digest']}", to=f"http://{storage.host}",
                  times=None)
        storage.add("cut", method="GET", path=f"/blobs/{big_image['digest']}", after=1 << 20)
        storage.add("ignore_range", method="GET", path=f"/blobs/{big_image['digest']}", times=None)
        store = Store(registry_env / "root")
        pull(f"{proxy.host}/storage:1", store=store)
        gets = storage.requests_for(f"/blobs/{big_image['digest']}", "GET")
        assert [g[2].get("Range") for g in gets] == [None, f"bytes={1 << 20}-"] and gets[1][3] == 200
        assert store.has_blob(big_image["digest"], big_image["size"])
    finally:
        storage.stop()


def test_a_storage_backend_that_refuses_a_resume_with_416_fails_naming_the_blob(reg, proxy, big_image,  # noqa: F811
                                                                                registry_env):
    """416 to ``bytes=N-`` with N below the blob's size: the backend holds less than the
    descriptor says (or cannot serve ranges at all); containerd fails the fetch on it, and so
    does lamina, once, naming the layer and the blob, the store left without it."""
    storage = FaultProxy(reg.host)
    try:
        proxy.add("redirect", method="GET", path=f"/blobs/{big_image['digest']}", to=f"http://{storage.host}",
                  times=None)
        storage.add("cut", method="GET", path=f"/blobs/{big_image['digest']}", after=1 << 20)
        storage.add("status", method="GET", path=f"/blobs/{big_image['digest']}", code=416, times=None)
        store = Store(registry_env / "root")
        with pytest.raises(errors.RegistryError, match=f"layer 1 of 1: GET blob {big_image['digest']} from "
                           f"{proxy.host}/storage: 416 "):
            pull(f"{proxy.host}/storage:1", store=store)
        assert [(g[2].get("Range"), g[3]) for g in storage.requests_for("/blobs/", "GET")] == [
            (None, 200), (f"bytes={1 << 20}-", 416)]
        assert not store.has_blob(big_image["digest"])
    finally:
        storage.stop()


def _registry_error(code, message):
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()


@pytest.fixture(scope="module")
def small_image(reg, tmp_path_factory):  # noqa: F811
    lay = ocibuild.Layout(tmp_path_factory.mktemp("lay") / "oci")
    m = lay.image([{"etc/hostname": b"small\n"}])
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "refused:1")
    return lay.read_json(m["digest"])


@pytest.mark.parametrize("status, code, message, said", [
    (403, "DENIED", "requested access to the resource is denied", "access denied: denied: requested access"),
    (401, "UNAUTHORIZED", "authentication required", "authentication failed: unauthorized: authentication required"),
], ids=["403-denied", "401-unauthorized"])
@pytest.mark.parametrize("where", ["manifest", "config"])
def test_a_refusal_names_the_manifest_or_blob_asked_for(reg, proxy, small_image, registry_env,  # noqa: F811
                                                         tmp_path, status, code, message, said, where):
    """A 401 or 403 with the spec's error JSON said the repository and the method alone ("GET
    host/refused: access denied: ..."): not which manifest (tag) or blob was refused, where
    skopeo says "reading manifest 1 in host/refused: denied: ..." and a 404 named them."""
    digest = small_image["config"]["digest"]
    path = "/manifests/" if where == "manifest" else f"/blobs/{digest}"
    proxy.add("respond", method="GET", path=path, times=None, code=status, body=_registry_error(code, message),
              headers={"Content-Type": "application/json"})
    with pytest.raises(errors.AuthenticationError) as e:
        pull(f"{proxy.host}/refused:1", store=Store(tmp_path / "root"))
    asked = f"manifest {proxy.host}/refused:1" if where == "manifest" else f"blob {digest} from {proxy.host}/refused"
    assert f"GET {asked}: {said}" in str(e.value)


def test_a_push_refused_names_the_blob_asked_for(reg, proxy, small_image, registry_env, tmp_path):  # noqa: F811
    """docker-registry answers a push to a repository the user may only pull from with 401 or
    403 on the upload's POST; the message said "POST host/name: access denied"."""
    store = Store(tmp_path / "root")
    pull(f"{proxy.host}/refused:1", store=store)
    store.add_image(pull(f"{proxy.host}/refused:1", store=store).manifest_digest, ref=f"{proxy.host}/ro:1")
    proxy.add("respond", method="POST", path="/v2/ro/blobs/uploads/", times=None, code=403,
              body=_registry_error("DENIED", "requested access to the resource is denied"),
              headers={"Content-Type": "application/json"})
    with pytest.raises(errors.AuthenticationError) as e:
        push(f"{proxy.host}/ro:1", store=store)
    assert f"POST upload of sha256:" in str(e.value) and f" to {proxy.host}/ro: access denied: denied: " in str(e.value)
