"""Pulling through an HTTP proxy named by the environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY).

The proxy here is a small forward proxy on loopback: CONNECT tunnels for HTTPS,
absolute-form requests for plain HTTP.  It records what it was asked, so the tests
see that lamina really went through it (or really did not, under NO_PROXY).
"""
import base64
import select
import socket
import socketserver
import threading
import urllib.parse

import pytest

import ocibuild
from registryfixture import Registry, make_ca, registry_env, skopeo_push  # noqa: F401

from lamina import errors
from lamina.registry import pull
from lamina.store import Store


class ForwardProxy:
    def __init__(self, *, credentials=None):
        self.requests = []          # (method, target, proxy-authorization or None)
        self.credentials = credentials
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                proxy._handle(self.request)

        class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        if self.credentials:
            user, password = self.credentials
            return f"http://{urllib.parse.quote(user)}:{urllib.parse.quote(password)}@127.0.0.1:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    def _handle(self, client):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                return
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        auth = fields.get("Proxy-Authorization")
        self.requests.append((method, target, auth))
        if self.credentials:
            want = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
            if auth != want:
                client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                               b"Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
                return
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            first = rest
        else:
            u = urllib.parse.urlsplit(target)
            assert u.scheme == "http", f"proxy got a non-absolute target {target!r}"
            upstream = socket.create_connection((u.hostname, u.port or 80))
            origin_form = (u.path or "/") + (f"?{u.query}" if u.query else "")
            kept = [line for line in lines[1:] if not line.lower().startswith("proxy-authorization:")]
            first = ("\r\n".join([f"{method} {origin_form} {version}"] + kept) + "\r\n\r\n").encode("latin-1")
            first += rest
        # From here on, relay bytes both ways (later keep-alive requests to the same
        # origin stay in absolute form, which the registry accepts).
        if first:
            upstream.sendall(first)
        self._relay(client, upstream)

    @staticmethod
    def _relay(a, b):
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 30)
                if not ready:
                    return
                for s in ready:
                    data = s.recv(1 << 16)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return
        finally:
            b.close()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _push_image(tmp, registry):
    lay = ocibuild.Layout(tmp / "oci")
    m = lay.image([{"etc/": None, "etc/hello": b"through the proxy\n"}])
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", registry.host, "proxied:1")
    return m


@pytest.fixture(scope="module")
def plain_reg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plain")
    r = Registry(tmp)
    manifest = _push_image(tmp, r)
    yield r, manifest
    r.stop()


@pytest.fixture(scope="module")
def tls_reg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tlsproxy")
    ca = make_ca(tmp / "ca")
    r = Registry(tmp, tls_ca=ca)
    manifest = _push_image(tmp, r)
    yield r, manifest, ca
    r.stop()


@pytest.fixture
def proxy():
    p = ForwardProxy()
    yield p
    p.stop()


def _pulled(store, ref, manifest):
    image = store.resolve(ref)
    assert image.manifest_digest == manifest["digest"]
    assert (store.snapshots_for(image)[0] / "etc" / "hello").read_bytes() == b"through the proxy\n"


def test_plain_http_goes_through_http_proxy(plain_reg, proxy, registry_env, monkeypatch):  # noqa: F811
    reg, manifest = plain_reg
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    store = Store(registry_env / "root")
    pull(f"{reg.host}/proxied:1", store=store)
    _pulled(store, f"{reg.host}/proxied:1", manifest)
    targets = [t for _, t, _ in proxy.requests]
    assert targets and all(t.startswith(f"http://{reg.host}/v2/") for t in targets), targets


def test_no_proxy_bypasses_the_proxy(plain_reg, proxy, registry_env, monkeypatch):  # noqa: F811
    reg, manifest = plain_reg
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    store = Store(registry_env / "root")
    pull(f"{reg.host}/proxied:1", store=store)
    _pulled(store, f"{reg.host}/proxied:1", manifest)
    assert proxy.requests == []


def test_https_tunnels_through_proxy_with_credentials(tls_reg, registry_env, monkeypatch):  # noqa: F811
    reg, manifest, ca = tls_reg
    certs = registry_env / "certs.d" / reg.host
    certs.mkdir(parents=True)
    (certs / "ca.crt").write_bytes(open(ca["cert_path"], "rb").read())
    p = ForwardProxy(credentials=("proxy user", "p@ss:word"))
    try:
        monkeypatch.setenv("HTTPS_PROXY", p.url)
        store = Store(registry_env / "root")
        pull(f"{reg.host}/proxied:1", store=store)
        _pulled(store, f"{reg.host}/proxied:1", manifest)
        # a tunnel to the registry itself, so TLS (and the CA check) stays end to end
        assert p.requests and all(m == "CONNECT" and t == reg.host for m, t, _ in p.requests), p.requests
        want = "Basic " + base64.b64encode(b"proxy user:p@ss:word").decode()
        assert all(a == want for _, _, a in p.requests)
    finally:
        p.stop()


def test_proxy_refusing_credentials_is_a_clear_error(plain_reg, registry_env, monkeypatch):  # noqa: F811
    reg, _ = plain_reg
    p = ForwardProxy(credentials=("u", "right"))
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://u:wrong@127.0.0.1:{p.port}")
        with pytest.raises(errors.RegistryError) as e:
            pull(f"{reg.host}/proxied:1", store=Store(registry_env / "root"))
        assert "407" in str(e.value)
    finally:
        p.stop()
