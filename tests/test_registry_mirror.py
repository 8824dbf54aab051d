"""Mirrors: a second docker-registry in proxy mode (pull-through cache) in front of the upstream,
configured with a registries.conf-style TOML file or a containerd hosts.toml."""
import pytest

import ocibuild
from registryfixture import FaultProxy, Registry, free_port, registry_env, skopeo_push  # noqa: F401

from lamina import errors
from lamina.registry import pull
from lamina.store import Store


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("upstream")
    r = Registry(tmp, name="upstream")
    lay = ocibuild.Layout(tmp / "oci")
    m = lay.image([{"mirrored.txt": b"through the cache"}])
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", r.host, "team/app:1")
    cache = Registry(tmp, name="cache", proxy_remote=r.url)
    yield r, cache, m["digest"], lay.read_json(m["digest"])["layers"][0]["digest"]
    cache.stop()
    r.stop()


@pytest.fixture
def watched(upstream):
    """Fault proxies (pure forwarders) in front of both, to see who served what."""
    up, cache, _, _ = upstream
    a, b = FaultProxy(up.host), FaultProxy(cache.host)
    yield a, b
    a.stop()
    b.stop()


def _conf(env_root, text):
    path = env_root / "registries.toml"
    path.write_text(text)
    return path


def test_pull_through_mirror(upstream, watched, registry_env, monkeypatch):  # noqa: F811
    _, cache, manifest, layer = upstream
    up_proxy, cache_proxy = watched
    conf = _conf(registry_env, f"""
[[registry]]
location = "{up_proxy.host}"

[[registry.mirror]]
location = "{cache_proxy.host}"
insecure = true
""")
    monkeypatch.setenv("LAMINA_REGISTRIES_CONFIG", str(conf))
    store = Store(registry_env / "root")
    ref = f"{up_proxy.host}/team/app:1"
    r = pull(ref, store=store)
    assert r.endpoint == cache_proxy.host
    assert r.manifest_digest == manifest
    assert cache_proxy.requests_for(f"/blobs/{layer}", "GET")
    assert not up_proxy.seen          # lamina never talked to the upstream
    assert cache.has_blob(layer)      # the cache now holds it
    img = store.resolve(ref)          # stored under the name asked, not the mirror's
    assert (store.snapshots_for(img)[0] / "mirrored.txt").read_bytes() == b"through the cache"


def test_mirror_down_falls_back_to_upstream(upstream, watched, registry_env, monkeypatch):  # noqa: F811
    up_proxy, _ = watched
    dead = f"127.0.0.1:{free_port()}"
    conf = _conf(registry_env, f"""
[[registry]]
prefix = "{up_proxy.host}"
location = "{up_proxy.host}"
[[registry.mirror]]
location = "http://{dead}"
""")
    monkeypatch.setenv("LAMINA_REGISTRIES_CONFIG", str(conf))
    monkeypatch.setenv("LAMINA_REGISTRY_RETRIES", "1")
    r = pull(f"{up_proxy.host}/team/app:1", store=registry_env / "root")
    assert r.endpoint == up_proxy.host
    assert up_proxy.requests_for("/manifests/1", "GET")


def test_digest_only_mirror(upstream, watched, registry_env, monkeypatch):  # noqa: F811
    _, _, manifest, _ = upstream
    up_proxy, cache_proxy = watched
    conf = _conf(registry_env, f"""
[[registry]]
location = "{up_proxy.host}"
[[registry.mirror]]
location = "{cache_proxy.host}"
pull-from-mirror = "digest-only"
""")
    monkeypatch.setenv("LAMINA_REGISTRIES_CONFIG", str(conf))
    r = pull(f"{up_proxy.host}/team/app:1", store=registry_env / "root")
    assert r.endpoint == up_proxy.host
    r = pull(f"{up_proxy.host}/team/app@{manifest}", store=registry_env / "root")
    assert r.endpoint == cache_proxy.host


def test_containerd_hosts_toml(upstream, watched, registry_env):  # noqa: F811
    up_proxy, cache_proxy = watched
    d = registry_env / "certs.d" / up_proxy.host
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(f"""
server = "http://{up_proxy.host}"

[host."http://{cache_proxy.host}"]
  capabilities = ["pull", "resolve"]
""")
    r = pull(f"{up_proxy.host}/team/app:1", store=registry_env / "root")
    assert r.endpoint == cache_proxy.host
    assert not up_proxy.seen


def test_namespace_rewrite_and_blocked(upstream, watched, registry_env, monkeypatch):  # noqa: F811
    up_proxy, _ = watched
    conf = _conf(registry_env, f"""
[[registry]]
prefix = "example.invalid/mirrored"
location = "{up_proxy.host}/team"

[[registry]]
prefix = "blocked.invalid"
blocked = true
""")
    monkeypatch.setenv("LAMINA_REGISTRIES_CONFIG", str(conf))
    store = Store(registry_env / "root")
    r = pull("example.invalid/mirrored/app:1", store=store)
    assert r.endpoint == up_proxy.host
    assert up_proxy.requests_for("/v2/team/app/manifests/1", "GET")
    assert store.resolve("example.invalid/mirrored/app:1").manifest_digest == r.manifest_digest
    with pytest.raises(errors.RegistryError, match="blocked"):
        pull("blocked.invalid/x:1", store=store)


def test_bad_config_is_reported(registry_env, monkeypatch):  # noqa: F811
    conf = _conf(registry_env, "[[registry]]\nlocation = 5\n")
    monkeypatch.setenv("LAMINA_REGISTRIES_CONFIG", str(conf))
    with pytest.raises(errors.RegistryError, match="registry\\[0\\].location must be a string"):
        pull("127.0.0.1:1/x:1", store=registry_env / "root")
    conf.write_text("not toml [")
    with pytest.raises(errors.RegistryError, match="cannot read registry configuration"):
        pull("127.0.0.1:1/x:1", store=registry_env / "root")
