"""Pulls through a fault-injecting proxy: retries, resume with Range, corrupt bytes, kill -9, redirects.

The proxy (tests/registryfixture.FaultProxy) sits between lamina and a real docker-registry and
counts the body bytes it serves, so "resumed" means "those bytes were not sent twice".
"""
import base64
import json
import subprocess
import sys

import pytest

import ocibuild
from registryfixture import (FaultProxy, Registry, fast_random, kill9_when, reg, registry_env,  # noqa: F401
                             skopeo_push, skopeo_raw)

from lamina import errors
from lamina.registry import RegistryClient, Transport, list_tags, pull
from lamina.store import Store
from lamina.store.fsck import check

MiB = 1 << 20


@pytest.fixture(scope="module")
def image(reg, tmp_path_factory):
    """faults:1 = a small gzip layer + a 6 MiB uncompressed layer of random bytes."""
    lay = ocibuild.Layout(tmp_path_factory.mktemp("lay") / "oci")
    m = lay.image([{"small.txt": b"small\n" * 100}, {"big.bin": fast_random(6 * MiB, 1)}], compress=False)
    lay.add(m, "1")
    # --preserve-digests: skopeo would gzip the uncompressed layers for a docker:// destination.
    skopeo_push(f"oci:{lay.root}:1", reg.host, "faults:1", extra=("--preserve-digests",))
    raw, digest = skopeo_raw(reg.host, "faults:1")
    assert digest == m["digest"]
    doc = json.loads(raw)
    return {"manifest": digest, "layers": doc["layers"], "config": doc["config"],
            "big": doc["layers"][1], "small": doc["layers"][0]}


@pytest.fixture
def proxy(reg):
    p = FaultProxy(reg.host)
    yield p
    p.stop()


def _blob_gets(proxy, digest):
    return proxy.requests_for(f"/blobs/{digest}", "GET")


def _check_pulled(store, ref, image):
    img = store.resolve(ref)
    assert img.manifest_digest == image["manifest"]
    fs = store.snapshots_for(img)
    assert (fs[1] / "big.bin").stat().st_size == 6 * MiB
    return img


def test_cut_connections_resume_with_range(proxy, image, registry_env):  # noqa: F811
    big = image["big"]
    proxy.add("cut", method="GET", path=f"/blobs/{big['digest']}", after=1 * MiB, times=2)
    store = Store(registry_env / "root")
    r = pull(f"{proxy.host}/faults:1", store=store)
    _check_pulled(store, f"{proxy.host}/faults:1", image)
    gets = _blob_gets(proxy, big["digest"])
    assert len(gets) == 3
    assert "Range" not in gets[0][2]
    assert gets[1][2]["Range"] == f"bytes={1 * MiB}-"
    assert gets[2][2]["Range"] == f"bytes={2 * MiB}-"
    # Every byte crossed the wire once.
    assert proxy.bytes_for(big["digest"]) == big["size"]
    assert r.layers[1].downloaded_bytes == big["size"]


def test_status_bursts_are_retried(proxy, image, registry_env):  # noqa: F811
    rules = [proxy.add("status", code=503, path="/manifests/1", times=2),
             proxy.add("status", code=429, retry_after=0, path=f"/blobs/{image['big']['digest']}", times=3),
             proxy.add("status", code=500, path=f"/blobs/{image['config']['digest']}", times=2),
             proxy.add("status", code=502, path=f"/blobs/{image['small']['digest']}", times=1)]
    store = Store(registry_env / "root")
    pull(f"{proxy.host}/faults:1", store=store)
    _check_pulled(store, f"{proxy.host}/faults:1", image)
    assert [r.hits for r in rules] == [2, 3, 2, 1]


def _assert_consistent(store):
    """A failed pull leaves a store fsck finds no error in (the verified blobs it kept, for
    a rerun to resume from, are at most unused), and image prune gives them back."""
    from lamina.images import prune
    assert check(store).errors == [], check(store).findings
    prune(store, all=True)
    report = check(store)
    assert report.findings == [], report.findings


def test_persistent_errors_fail_clearly_and_store_nothing(proxy, image, registry_env):  # noqa: F811
    big = image["big"]
    proxy.add("status", code=500, path=f"/blobs/{big['digest']}", times=None)
    store = Store(registry_env / "root")
    with pytest.raises(errors.RegistryError) as e:
        pull(f"{proxy.host}/faults:1", store=store)
    assert "500" in str(e.value) and big["digest"] in str(e.value)
    assert not store.has_blob(big["digest"])
    with pytest.raises(errors.ImageNotFoundError):
        store.resolve(f"{proxy.host}/faults:1")
    _assert_consistent(store)
    p = subprocess.run([sys.executable, "-m", "lamina", "--root", str(registry_env / "root"), "pull",
                        f"{proxy.host}/faults:1"], capture_output=True, text=True)
    assert p.returncode == 1
    assert p.stderr.startswith("lamina: error: ") and "500" in p.stderr and len(p.stderr.splitlines()) == 1


def test_slow_body(proxy, image, registry_env):  # noqa: F811
    proxy.add("slow", path=f"/blobs/{image['small']['digest']}", chunk=512, delay=0.002)
    store = Store(registry_env / "root")
    pull(f"{proxy.host}/faults:1", store=store)
    _check_pulled(store, f"{proxy.host}/faults:1", image)


@pytest.mark.parametrize("document", ["manifest", "config"])
@pytest.mark.parametrize("how", ["pull", "unpack"])
def test_a_document_dripped_byte_by_byte_hits_the_document_deadline(proxy, image, registry_env, monkeypatch,  # noqa: F811
                                                                    document, how):
    """A registry sending the manifest (or config) 8 bytes every 0.1 s: each read is far inside
    the read timeout, so the pull took as long as the server liked (here ~9 s; 4 MiB that way:
    two weeks).  The document's body has an overall deadline (1.5 s here) and the error names
    its URL."""
    monkeypatch.setenv("LAMINA_REGISTRY_DOCUMENT_DEADLINE", "1.5")
    path = "/manifests/1" if document == "manifest" else f"/blobs/{image['config']['digest']}"
    proxy.add("slow", path=path, chunk=8, delay=0.1, times=None)
    store = Store(registry_env / "root")
    message = _failed_pull_or_resolve(proxy, store, how)
    assert f"http://{proxy.host}/v2/faults{path}: body not received within 1.5 s" in message, message
    assert all(not store.has_blob(d["digest"]) for d in image["layers"])


def _failed_pull_or_resolve(proxy, store, how):
    """The RegistryError's message of pulling faults:1 through ``proxy`` (or, ``how`` == "unpack",
    of resolving it as unpack docker:// does), after which the store holds no image."""
    from lamina.registry.source import RegistrySource
    with pytest.raises(errors.RegistryError) as e:
        if how == "pull":
            pull(f"{proxy.host}/faults:1", store=store)
        else:
            with RegistrySource(f"{proxy.host}/faults:1") as source:
                source.resolve()
    with pytest.raises(errors.ImageNotFoundError):
        store.resolve(f"{proxy.host}/faults:1")
    return str(e.value)


@pytest.mark.parametrize("document,how", [("manifest", "pull"), ("manifest", "unpack"), ("big", "pull")])
def test_response_headers_dripped_byte_by_byte_hit_the_deadline(proxy, image, registry_env, monkeypatch,  # noqa: F811
                                                                document, how):
    """A registry dripping its status line and headers 8 bytes every 0.1 s: http.client reads
    up to 100 header lines of 64 KiB, one socket read at a time, each inside the read timeout,
    so the pull lasted as long as the server went on (here until the proxy gave up after 30 s;
    6.5 MB of headers that way: three weeks).  Headers get the document deadline too, and the
    error names the request."""
    monkeypatch.setenv("LAMINA_REGISTRY_DOCUMENT_DEADLINE", "1.5")
    path = "/manifests/1" if document == "manifest" else f"/blobs/{image[document]['digest']}"
    proxy.add("drip_headers", method="GET", path=path, chunk=8, delay=0.1, times=None)
    store = Store(registry_env / "root")
    message = _failed_pull_or_resolve(proxy, store, how)
    assert f"/v2/faults{path}: response headers not received within 1.5 s" in message, message
    assert not store.has_blob(image["big"]["digest"])


@pytest.mark.parametrize("document,how", [("manifest", "pull"), ("manifest", "unpack"), ("config", "pull"),
                                          ("big", "pull")])
def test_a_connection_cut_in_the_middle_of_the_headers_is_retried(proxy, image, registry_env, document, how):  # noqa: F811
    """http.client takes the end of the connection inside the headers for their end, and a body
    without Content-Length for one that lasts until the connection closes: the manifest read as
    empty ("invalid JSON", a failed pull).  A cut there is retried like any other cut."""
    digest = {"manifest": image["manifest"], "config": image["config"]["digest"],
              "big": image["big"]["digest"]}[document]
    path = "/manifests/1" if document == "manifest" else f"/blobs/{digest}"
    rule = proxy.add("cut_headers", method="GET", path=path, times=2)
    store = Store(registry_env / "root")
    if how == "pull":
        pull(f"{proxy.host}/faults:1", store=store)
        _check_pulled(store, f"{proxy.host}/faults:1", image)
    else:
        from lamina.registry.source import RegistrySource
        with RegistrySource(f"{proxy.host}/faults:1") as source:
            assert source.resolve().manifest_digest == image["manifest"]
    assert rule.hits == 2 and len(proxy.requests_for(path, "GET")) == 3


def test_headers_cut_on_every_connection_fail_by_name(proxy, image, registry_env):  # noqa: F811
    proxy.add("cut_headers", method="GET", path="/manifests/1", times=None)
    store = Store(registry_env / "root")
    message = _failed_pull_or_resolve(proxy, store, "pull")
    assert f"/v2/faults/manifests/1: connection closed in the middle of the response's headers" in message, message
    assert "after 6 attempts" in message and "JSON" not in message


def test_a_blob_dripped_slower_than_the_minimum_rate_resumes_on_a_new_connection(proxy, image, registry_env,  # noqa: F811
                                                                                     monkeypatch):
    """The small layer at 16 bytes per 0.1 s on its first GET: every read arrives inside the read
    timeout, so the download took as long as the server dripped (a few KiB: ~15 s here; a GiB:
    years).  Below the minimum rate (4 KiB/s over 1 s of waiting here) it is resumed with Range,
    as a stall is, and what was received is not fetched again."""
    small = image["small"]
    monkeypatch.setenv("LAMINA_REGISTRY_MIN_RATE", "4096")
    monkeypatch.setenv("LAMINA_REGISTRY_RATE_WINDOW", "1")
    proxy.add("slow", path=f"/blobs/{small['digest']}", chunk=16, delay=0.1)
    store = Store(registry_env / "root")
    pull(f"{proxy.host}/faults:1", store=store)
    _check_pulled(store, f"{proxy.host}/faults:1", image)
    gets = _blob_gets(proxy, small["digest"])
    assert len(gets) == 2, gets
    assert gets[-1][2]["Range"].startswith("bytes="), gets[-1][2]
    assert int(gets[-1][2]["Range"][len("bytes="):-1]) > 0
    # sent twice at most: what the proxy had written into the socket and lamina not yet read
    assert small["size"] <= proxy.bytes_for(small["digest"]) <= small["size"] + 16


def test_a_blob_dripped_on_every_connection_fails_by_name(proxy, image, registry_env, monkeypatch):  # noqa: F811
    """A server that drips on every connection is not resumed forever: a few windows below the
    rate in a row fail the download, naming the blob, though every window made some progress."""
    small = image["small"]
    monkeypatch.setenv("LAMINA_REGISTRY_MIN_RATE", "4096")
    monkeypatch.setenv("LAMINA_REGISTRY_RATE_WINDOW", "0.5")
    monkeypatch.setenv("LAMINA_REGISTRY_RETRIES", "2")
    proxy.add("slow", path=f"/blobs/{small['digest']}", chunk=16, delay=0.1, times=None)
    store = Store(registry_env / "root")
    with pytest.raises(errors.RegistryError) as e:
        pull(f"{proxy.host}/faults:1", store=store)
    assert f"blob {small['digest']}" in str(e.value) and "less than 4096 bytes/s" in str(e.value), str(e.value)
    assert len(_blob_gets(proxy, small["digest"])) == 3
    assert not store.has_blob(small["digest"])


def test_stalled_body_times_out_and_resumes(proxy, image, registry_env):  # noqa: F811
    big = image["big"]
    proxy.add("stall", path=f"/blobs/{big['digest']}", after=3 * MiB, seconds=4)
    client = RegistryClient(transport=Transport(timeout=1.0, backoff=0.01))
    store = Store(registry_env / "root")
    pull(f"{proxy.host}/faults:1", store=store, client=client)
    _check_pulled(store, f"{proxy.host}/faults:1", image)
    gets = _blob_gets(proxy, big["digest"])
    assert gets[-1][2]["Range"] == f"bytes={3 * MiB}-"
    assert proxy.bytes_for(big["digest"]) == big["size"]


def test_corrupt_bytes_once_are_fetched_again(proxy, image, registry_env):  # noqa: F811
    big = image["big"]
    proxy.add("corrupt", path=f"/blobs/{big['digest']}", offset=12345, times=1)
    store = Store(registry_env / "root")
    pull(f"{proxy.host}/faults:1", store=store)
    _check_pulled(store, f"{proxy.host}/faults:1", image)
    assert len(_blob_gets(proxy, big["digest"])) == 2
    assert "Range" not in _blob_gets(proxy, big["digest"])[1][2]   # the bad partial was thrown away


def test_corrupt_bytes_always_fail_and_store_nothing(proxy, image, registry_env):  # noqa: F811
    big = image["big"]
    proxy.add("corrupt", path=f"/blobs/{big['digest']}", times=None)
    root = registry_env / "root"
    store = Store(root)
    with pytest.raises(errors.DigestMismatchError) as e:
        pull(f"{proxy.host}/faults:1", store=store)
    assert e.value.expected == big["digest"]
    assert not store.has_blob(big["digest"])
    assert not list((root / "ingest").glob(big["digest"][7:] + "*"))
    with pytest.raises(errors.ImageNotFoundError):
        store.resolve(f"{proxy.host}/faults:1")
    _assert_consistent(store)


def test_wrong_length_fails_clearly(proxy, image, registry_env):  # noqa: F811
    big = image["big"]
    proxy.add("respond", path=f"/blobs/{big['digest']}", body=b"x" * 100, times=None)
    store = Store(registry_env / "root")
    with pytest.raises(errors.RegistryError, match="registry sent 100 bytes"):
        pull(f"{proxy.host}/faults:1", store=store)
    assert not store.has_blob(big["digest"])


def _pull_killed_in_blob(proxy, root, ref, blob, held):
    """``lamina pull ref`` through the proxy, which holds ``blob`` after ``held`` bytes, killed
    (-9) once its partial has them all; the partial's path."""
    proxy.add("hang", path=f"/blobs/{blob['digest']}", after=held)
    child = subprocess.Popen([sys.executable, "-m", "lamina", "--root", str(root), "pull", ref],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = root / "ingest" / f"{blob['digest'][7:]}.partial"
    kill9_when(proxy, child, lambda: partial.exists() and partial.stat().st_size >= held,
               "the partial never got the bytes sent")
    return partial


def test_kill9_then_pull_again_downloads_the_rest_only(reg, tmp_path, registry_env):  # noqa: F811
    size = 24 * MiB
    lay = ocibuild.Layout(tmp_path / "oci")
    m = lay.image([{"huge.bin": fast_random(size, 7)}], compress=False)
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "huge:1", extra=("--preserve-digests",))
    blob = lay.read_json(m["digest"])["layers"][0]
    root = registry_env / "root"
    proxy = FaultProxy(reg.host)
    held = 10 * MiB
    try:
        ref = f"{proxy.host}/huge:1"
        partial = _pull_killed_in_blob(proxy, root, ref, blob, held)
        assert partial.stat().st_size == held
        first = proxy.bytes_for(blob["digest"])
        assert first == held
        proxy.clear()

        subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), "pull", ref], check=True,
                       capture_output=True)
        gets = _blob_gets(proxy, blob["digest"])
        assert gets[-1][2]["Range"] == f"bytes={held}-"
        assert proxy.bytes_for(blob["digest"]) - first == blob["size"] - held
        store = Store(root)
        assert store.has_blob(blob["digest"])
        img = store.resolve(ref)
        assert (store.snapshots_for(img)[0] / "huge.bin").read_bytes() == fast_random(size, 7)
    finally:
        proxy.stop()


def test_a_pull_killed_then_its_tag_repushed_fetches_the_new_blob_whole(reg, tmp_path, registry_env):  # noqa: F811
    """kill -9 a pull midway through a big layer, then the tag is pushed again with another
    layer in that place: the rerun fetches the new blob from byte 0, all of it, and never
    resumes it from the partial the killed pull left (the old blob's bytes, kept under the old
    digest for a pull of that one); the store holds the new image, fsck finds no error."""
    size, held = 8 * MiB, 3 * MiB
    blobs = []
    for seed in (7, 8):
        lay = ocibuild.Layout(tmp_path / f"oci{seed}")
        m = lay.image([{"huge.bin": fast_random(size, seed)}], compress=False)
        lay.add(m, "1")
        blobs.append((lay, m, lay.read_json(m["digest"])["layers"][0]))
    (old_lay, _, old), (new_lay, new_m, new) = blobs
    skopeo_push(f"oci:{old_lay.root}:1", reg.host, "repushed:1", extra=("--preserve-digests",))
    root = registry_env / "root"
    proxy = FaultProxy(reg.host)
    try:
        ref = f"{proxy.host}/repushed:1"
        _pull_killed_in_blob(proxy, root, ref, old, held)
        proxy.clear()
        skopeo_push(f"oci:{new_lay.root}:1", reg.host, "repushed:1", extra=("--preserve-digests",))

        subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), "pull", ref], check=True,
                       capture_output=True)
        # (the killed pull's GET of the old blob may be logged only now, when its handler ends)
        assert [h.get("Range") for _, _, h, *_ in _blob_gets(proxy, old["digest"])] in ([], [None])
        assert [h.get("Range") for _, _, h, *_ in _blob_gets(proxy, new["digest"])] == [None]
        assert proxy.bytes_for(new["digest"]) == new["size"]
        store = Store(root)
        img = store.resolve(ref)
        assert img.manifest_digest == new_m["digest"]
        assert (store.snapshots_for(img)[0] / "huge.bin").read_bytes() == fast_random(size, 8)
        assert [f for f in check(store).findings if f.severity == "error"] == []
    finally:
        proxy.stop()


def test_redirect_to_another_host_gets_no_credentials(tmp_path, registry_env):  # noqa: F811
    users = {"alice": "s3cret"}
    reg = Registry(tmp_path / "authreg", htpasswd_users=users)
    basic = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    # B plays object storage: it is reachable without the registry's credentials (it adds its own).
    storage = FaultProxy(reg.host, upstream_headers={"Authorization": basic})
    front = FaultProxy(reg.host)
    try:
        lay = ocibuild.Layout(tmp_path / "oci")
        m = lay.image([{"f": b"redirected content"}])
        lay.add(m, "1")
        skopeo_push(f"oci:{lay.root}:1", reg.host, "red:1", extra=("--dest-creds", "alice:s3cret"))
        front.add("redirect", method="GET", path="/blobs/", to=f"http://{storage.host}", times=None)
        cfg = registry_env / "home" / ".docker" / "config.json"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(json.dumps({"auths": {front.host: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}))
        store = Store(registry_env / "root")
        pull(f"{front.host}/red:1", store=store)
        img = store.resolve(f"{front.host}/red:1")
        assert (store.snapshots_for(img)[0] / "f").read_bytes() == b"redirected content"
        redirected = storage.requests_for("/blobs/", "GET")
        assert len(redirected) == 2   # config + layer
        assert all("Authorization" not in h for _, _, h, _ in redirected)
        manifests = front.requests_for("/manifests/", "GET")
        assert manifests and all(h.get("Authorization") == basic for _, _, h, status in manifests if status == 200)
    finally:
        front.stop()
        storage.stop()
        reg.stop()


def test_a_challenge_from_the_host_a_blob_was_redirected_to_gets_no_credentials(reg, tmp_path,  # noqa: F811
                                                                                 registry_env):
    """Blob GETs redirected to another host lose their Authorization, but a 401 from that host
    was taken for the registry's own challenge: lamina sent the registry's basic credentials to
    the token realm it named (any host, any path).  Now a challenge from another origin than the
    registry's is not answered: the pull fails, naming that host, and it gets no credentials."""
    basic = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    front = FaultProxy(reg.host)
    evil = FaultProxy(reg.host)
    try:
        lay = ocibuild.Layout(tmp_path / "oci")
        lay.add(lay.image([{"f": b"redirected content"}]), "1")
        skopeo_push(f"oci:{lay.root}:1", reg.host, "chal:1")
        front.add("redirect", method="GET", path="/blobs/", to=f"http://{evil.host}", times=None)
        evil.add("respond", path="/blobs/", code=401, times=None,
                 headers={"WWW-Authenticate": f'Bearer realm="http://{evil.host}/token",service="evil"'})
        evil.add("respond", path="/token", body=b'{"token": "t"}', times=None)
        cfg = registry_env / "home" / ".docker" / "config.json"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(json.dumps({"auths": {front.host: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}))
        store = Store(registry_env / "root")
        with pytest.raises(errors.AuthenticationError) as e:
            pull(f"{front.host}/chal:1", store=store)
        assert not [h for _, _, h, _ in evil.seen if "Authorization" in h], evil.seen
        assert evil.requests_for("/token") == []
        assert evil.host in str(e.value)
        assert not store.has_blob(json.loads(open(lay.path(lay.entries[0]["digest"]), "rb").read())
                                  ["layers"][0]["digest"])
    finally:
        front.stop()
        evil.stop()


def test_a_tags_page_on_another_host_gets_no_credentials(tmp_path, registry_env):  # noqa: F811
    """The tag list's Link to its next page may name any host: lamina fetched it with the
    registry's Authorization (basic credentials here).  Now a URL the registry hands out that is
    on another origin gets none (docker keys credentials to the host too); its tags still count."""
    reg = Registry(tmp_path / "authreg", htpasswd_users={"alice": "s3cret"})
    front = FaultProxy(reg.host)
    other = FaultProxy(reg.host)
    try:
        front.add("respond", method="GET", path="/tags/list", times=None,
                  body=json.dumps({"name": "paged", "tags": ["1"]}).encode(),
                  headers={"Content-Type": "application/json",
                           "Link": f'<http://{other.host}/v2/paged/tags/list?last=1>; rel="next"'})
        other.add("respond", method="GET", path="/tags/list", times=None,
                  body=json.dumps({"name": "paged", "tags": ["2"]}).encode(),
                  headers={"Content-Type": "application/json"})
        cfg = registry_env / "home" / ".docker" / "config.json"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(json.dumps({"auths": {front.host: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}))
        assert list_tags(f"{front.host}/paged") == ["1", "2"]
        assert [h.get("Authorization", "").split()[0] for _, _, h, _ in front.requests_for("/tags/list")] == ["Basic"]
        assert other.requests_for("/tags/list") and not [h for _, _, h, _ in other.seen if "Authorization" in h]
    finally:
        front.stop()
        other.stop()
        reg.stop()


@pytest.mark.parametrize("content_range", [f"bytes {MiB}-{'9' * 5000}/*", f"bytes {'1' * 5000}-2/3",
                                           f"bytes {MiB}-{MiB + 1}/{'7' * 5000}"])
def test_a_resume_answer_with_a_number_of_thousands_of_digits_is_a_clear_error(proxy, image, registry_env,  # noqa: F811
                                                                                content_range):
    """A hostile registry's Content-Range of 5000 digits made int() raise a ValueError traceback
    (Python refuses to convert more than 4300 digits) instead of the RegistryError naming the blob."""
    big = image["big"]
    proxy.add("cut", method="GET", path=f"/blobs/{big['digest']}", after=1 * MiB, times=1)
    proxy.add("respond", method="GET", path=f"/blobs/{big['digest']}", code=206, body=b"x" * 100,
              headers={"Content-Range": content_range}, times=None)
    store = Store(registry_env / "root")
    with pytest.raises(errors.RegistryError) as e:
        pull(f"{proxy.host}/faults:1", store=store)
    assert big["digest"] in str(e.value) and "Content-Range" in str(e.value)
    assert not store.has_blob(big["digest"])
    # the 1 MiB before the cut stays as a .partial for the next pull to resume (a warning)
    assert check(store).errors == [], check(store).findings


def test_fsck_says_what_a_failed_pulls_kept_blobs_are_and_how_to_remove_them(proxy, image, registry_env):  # noqa: F811
    """A pull that failed on its second layer keeps the first (verified) layer and its
    snapshot: fsck listed them as "not used by any image" and blamed "an interrupted rmi or
    prune".  It now says a failed pull keeps them, and that is true: the rerun does not fetch
    them again; image prune removes them."""
    small, big = image["small"], image["big"]
    root = registry_env / "root"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), *args],
                              capture_output=True, text=True)

    rule = proxy.add("status", code=500, path=f"/blobs/{big['digest']}", times=None)
    assert cli("pull", f"{proxy.host}/faults:1").returncode == 1
    fsck = cli("fsck")
    assert fsck.returncode == 0 and f"warning: blob {small['digest']}: not used by any image" in fsck.stdout, fsck
    assert fsck.stderr == ("unused content (what a failed pull keeps for its rerun to reuse, or an interrupted rmi "
                           "or prune leaves): lamina image prune removes it\n"), fsck.stderr
    rule.times = 0   # the registry answers again
    assert cli("pull", f"{proxy.host}/faults:1").returncode == 0
    assert len(_blob_gets(proxy, small["digest"])) == 1   # the kept blob was reused
    assert cli("fsck").stdout.endswith(": 0 errors, 0 warnings\n")

    assert cli("rmi", f"{proxy.host}/faults:1").returncode == 0
    rule.times = None
    assert cli("pull", f"{proxy.host}/faults:1").returncode == 1
    assert "not used by any image" in cli("fsck").stdout
    assert cli("image", "prune", "-f").returncode == 0
    fsck = cli("fsck")
    assert fsck.stdout.endswith(": 0 errors, 0 warnings\n") and fsck.stderr == "", fsck
