"""Authentication against real registries: htpasswd basic auth, token auth (JWTs from a test token
server the registry trusts), stored credentials (config.json, auth.json, credential helpers),
login/logout, and TLS with a test CA."""
import base64
import json
import os
import stat

import pytest

import ocibuild
from registryfixture import (Registry, TokenServer, lamina_cli, make_ca, registry_env,  # noqa: F401
                             skopeo_push)

from lamina import errors
from lamina.registry import RegistryClient, pull
from lamina.registry.config import Endpoint
from lamina.store import Store

USERS = {"alice": "s3cret"}


def _layout(tmp_path):
    lay = ocibuild.Layout(tmp_path / "oci")
    m = lay.image([{"hello.txt": b"hello auth"}, {"more.txt": b"more"}])
    lay.add(m, "1")
    return lay, m


def _docker_config(env_root, doc):
    path = env_root / "home" / ".docker" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _auth(user="alice", pw="s3cret"):
    return base64.b64encode(f"{user}:{pw}".encode()).decode()


def _pulled_ok(store, ref):
    img = store.resolve(ref)
    assert (store.snapshots_for(img)[0] / "hello.txt").read_bytes() == b"hello auth"


# --------------------------------------------------------------------------------------------
# htpasswd (basic)


@pytest.fixture(scope="module")
def basic_reg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("basic")
    r = Registry(tmp, htpasswd_users=USERS)
    lay, m = _layout(tmp)
    skopeo_push(f"oci:{lay.root}:1", r.host, "private:1", extra=("--dest-creds", "alice:s3cret"))
    yield r
    r.stop()


def test_basic_auth_needs_credentials(basic_reg, registry_env):  # noqa: F811
    with pytest.raises(errors.AuthenticationError, match=f"lamina login {basic_reg.host}"):
        pull(f"{basic_reg.host}/private:1", store=registry_env / "root")


def test_basic_auth_from_docker_config(basic_reg, registry_env):  # noqa: F811
    _docker_config(registry_env, {"auths": {f"https://{basic_reg.host}/v1/": {"auth": _auth()}}})
    store = Store(registry_env / "root")
    pull(f"{basic_reg.host}/private:1", store=store)
    _pulled_ok(store, f"{basic_reg.host}/private:1")


def test_basic_auth_wrong_password(basic_reg, registry_env):  # noqa: F811
    _docker_config(registry_env, {"auths": {basic_reg.host: {"auth": _auth(pw="nope")}}})
    with pytest.raises(errors.AuthenticationError, match="authentication failed"):
        pull(f"{basic_reg.host}/private:1", store=registry_env / "root")


def test_containers_auth_json(basic_reg, registry_env):  # noqa: F811
    path = registry_env / "run" / "containers" / "auth.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"auths": {basic_reg.host: {"auth": _auth()}}}))
    store = Store(registry_env / "root")
    pull(f"{basic_reg.host}/private:1", store=store)
    _pulled_ok(store, f"{basic_reg.host}/private:1")


def test_credential_helper(basic_reg, registry_env, monkeypatch):  # noqa: F811
    bindir = registry_env / "bin"
    bindir.mkdir()
    log = registry_env / "helper.log"
    helper = bindir / "docker-credential-lamtest"
    helper.write_text(f"""#!/bin/sh
read server
echo "$1 $server" >> {log}
if [ "$server" = "{basic_reg.host}" ]; then
  echo '{{"ServerURL": "{basic_reg.host}", "Username": "alice", "Secret": "s3cret"}}'
else
  echo "credentials not found in native keychain"; exit 1
fi
""")
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    _docker_config(registry_env, {"credHelpers": {basic_reg.host: "lamtest"}})
    store = Store(registry_env / "root")
    pull(f"{basic_reg.host}/private:1", store=store)
    _pulled_ok(store, f"{basic_reg.host}/private:1")
    assert log.read_text().splitlines() == [f"get {basic_reg.host}"]


def test_login_logout_cli(basic_reg, registry_env):  # noqa: F811
    root = registry_env / "root"
    cfg = registry_env / "home" / ".docker" / "config.json"
    bad = lamina_cli("login", basic_reg.host, "-u", "alice", "--password-stdin", input="wrong\n", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("lamina: error: ")
    assert not cfg.exists()
    ok = lamina_cli("login", basic_reg.host, "-u", "alice", "--password-stdin", input="s3cret\n")
    assert ok.stdout.startswith("Login Succeeded")
    doc = json.loads(cfg.read_text())
    assert base64.b64decode(doc["auths"][basic_reg.host]["auth"]) == b"alice:s3cret"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    lamina_cli("pull", "-q", f"{basic_reg.host}/private:1", root=root)
    out = lamina_cli("logout", basic_reg.host).stdout
    assert out.strip() == f"Removing login credentials for {basic_reg.host}"
    assert basic_reg.host not in json.loads(cfg.read_text())["auths"]
    p = lamina_cli("pull", f"{basic_reg.host}/private:1", root=registry_env / "root2", check=False)
    assert p.returncode == 1 and "authentication required" in p.stderr


# --------------------------------------------------------------------------------------------
# token auth


@pytest.fixture(scope="module")
def token_reg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("token")
    token = TokenServer(tmp, users=USERS, anonymous_pull=True)
    r = Registry(tmp, token=token)
    lay, m = _layout(tmp)
    skopeo_push(f"oci:{lay.root}:1", r.host, "public/app:1", extra=("--dest-creds", "alice:s3cret"))
    yield r, token
    r.stop()
    token.stop()


def test_token_anonymous_pull_one_token(token_reg, registry_env):  # noqa: F811
    reg, token = token_reg
    token.requests.clear()
    store = Store(registry_env / "root")
    pull(f"{reg.host}/public/app:1", store=store)
    _pulled_ok(store, f"{reg.host}/public/app:1")
    # manifest, config and two layers, concurrently: one token for the repository scope, cached.
    assert token.requests == [(None, ["repository:public/app:pull"])]


def test_token_refetched_when_registry_rejects_it(token_reg, registry_env):  # noqa: F811
    reg, token = token_reg
    token.requests.clear()
    token.expired_tokens = 1
    store = Store(registry_env / "root")
    pull(f"{reg.host}/public/app:1", store=store)
    _pulled_ok(store, f"{reg.host}/public/app:1")
    assert len(token.requests) == 2


def test_token_with_credentials_and_identity_token(token_reg, registry_env):  # noqa: F811
    reg, token = token_reg
    _docker_config(registry_env, {"auths": {reg.host: {"auth": _auth()}}})
    token.requests.clear()
    pull(f"{reg.host}/public/app:1", store=registry_env / "root")
    assert token.requests[0][0] == "alice"
    _docker_config(registry_env, {"auths": {reg.host: {"identitytoken": "refresh-alice-s3cret"}}})
    token.requests.clear()
    pull(f"{reg.host}/public/app:1", store=registry_env / "root2")
    assert token.requests[0][0] == "alice"   # the refresh grant was used
    _docker_config(registry_env, {"auths": {reg.host: {"auth": _auth(pw="bad")}}})
    with pytest.raises(errors.AuthenticationError, match="refused the credentials as 'alice'"):
        pull(f"{reg.host}/public/app:1", store=registry_env / "root3")


def test_a_token_dripped_byte_by_byte_hits_the_document_deadline(token_reg, registry_env, monkeypatch):  # noqa: F811
    """The token server sends its answer 8 bytes per 0.1 s: every read is inside the read timeout,
    so the pull waited as long as the server liked (a token of a few KiB: about a minute here).
    A token's body has the document deadline (1.5 s here) and the error names the token URL."""
    import time
    reg, token = token_reg

    def dripping_reply(h, status, doc):
        body = json.dumps(doc).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for i in range(0, len(body), 8):
            h.wfile.write(body[i:i + 8])
            time.sleep(0.1)

    monkeypatch.setattr(token, "_reply", dripping_reply)
    monkeypatch.setenv("LAMINA_REGISTRY_DOCUMENT_DEADLINE", "1.5")
    store = Store(registry_env / "root")
    with pytest.raises(errors.RegistryError) as e:
        pull(f"{reg.host}/public/app:1", store=store)
    assert f"GET {token.realm}?" in str(e.value) and "body not received within 1.5 s" in str(e.value), str(e.value)
    with pytest.raises(errors.ImageNotFoundError):
        store.resolve(f"{reg.host}/public/app:1")


def test_token_private_repo(tmp_path, registry_env):  # noqa: F811
    token = TokenServer(tmp_path, users=USERS, anonymous_pull=False)
    reg = Registry(tmp_path, token=token)
    try:
        lay, m = _layout(tmp_path)
        skopeo_push(f"oci:{lay.root}:1", reg.host, "secret:1", extra=("--dest-creds", "alice:s3cret"))
        with pytest.raises(errors.AuthenticationError, match="run 'lamina login"):
            pull(f"{reg.host}/secret:1", store=registry_env / "root")
        ok = lamina_cli("login", reg.host, "-u", "alice", "--password-stdin", input="s3cret")
        assert ok.stdout.startswith("Login Succeeded")
        store = Store(registry_env / "root")
        pull(f"{reg.host}/secret:1", store=store)
        _pulled_ok(store, f"{reg.host}/secret:1")
    finally:
        reg.stop()
        token.stop()


# --------------------------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def tls_reg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    ca = make_ca(tmp / "ca")
    r = Registry(tmp, tls_ca=ca)
    lay, m = _layout(tmp)
    skopeo_push(f"oci:{lay.root}:1", r.host, "tls:1")
    yield r, ca
    r.stop()


def test_tls_with_ca_from_certs_d(tls_reg, registry_env):  # noqa: F811
    reg, ca = tls_reg
    d = registry_env / "certs.d" / reg.host
    d.mkdir(parents=True)
    (d / "ca.crt").write_bytes(open(ca["cert_path"], "rb").read())
    store = Store(registry_env / "root")
    r = pull(f"{reg.host}/tls:1", store=store)
    _pulled_ok(store, f"{reg.host}/tls:1")
    assert r.endpoint == reg.host


def test_tls_loopback_registry_vouched_for_by_the_system_cas(tls_reg, registry_env, monkeypatch):  # noqa: F811
    """A loopback endpoint is first tried over TLS without the system's CAs (it may well speak
    plain HTTP); one that speaks TLS with a certificate only the system's CAs vouch for must
    still verify, over TLS, not fall back to plain HTTP."""
    reg, ca = tls_reg
    monkeypatch.setenv("SSL_CERT_FILE", ca["cert_path"])   # OpenSSL's system CA bundle
    store = Store(registry_env / "root")
    pull(f"{reg.host}/tls:1", store=store)
    _pulled_ok(store, f"{reg.host}/tls:1")


def test_tls_with_a_ca_without_key_identifiers(tmp_path, registry_env):  # noqa: F811
    """Home-made CAs often lack key identifiers. docker accepts them; Python >= 3.13's
    default verification would not, so lamina relaxes exactly that (this test is the
    one that fails on 3.13 when it does not)."""
    ca = make_ca(tmp_path / "ca", key_ids=False)
    reg = Registry(tmp_path / "reg", tls_ca=ca)
    try:
        lay, _ = _layout(tmp_path)
        skopeo_push(f"oci:{lay.root}:1", reg.host, "tls:1")
        d = registry_env / "certs.d" / reg.host
        d.mkdir(parents=True)
        (d / "ca.crt").write_bytes(open(ca["cert_path"], "rb").read())
        store = Store(registry_env / "root")
        pull(f"{reg.host}/tls:1", store=store)
        _pulled_ok(store, f"{reg.host}/tls:1")
    finally:
        reg.stop()


def test_tls_unknown_ca_fails_clearly(tls_reg, registry_env):  # noqa: F811
    reg, ca = tls_reg
    with pytest.raises(errors.RegistryError) as e:
        pull(f"{reg.host}/tls:1", store=registry_env / "root")
    msg = str(e.value)
    assert "certificate verification failed" in msg and f"{reg.host}/ca.crt" in msg
    # --insecure: no verification (the user said so)
    out = lamina_cli("pull", "--insecure", "-q", f"{reg.host}/tls:1", root=registry_env / "root").stdout
    assert out == f"{reg.host}/tls:1\n"


class _RecordingTransport:
    """Stands in for Transport: records URLs, fails every connection."""

    def __init__(self):
        self.urls = []
        from lamina.registry.transport import TLSPolicy
        self.tls = TLSPolicy()

    def request(self, method, url, **kw):
        self.urls.append(url)
        raise errors.RegistryError(f"{method} {url}: connection refused")

    def close(self):
        pass


@pytest.mark.parametrize("host,insecure,expect", [
    ("registry.invalid:5000", False, ["https://registry.invalid:5000/v2/"]),
    ("registry.invalid:5000", True, ["https://registry.invalid:5000/v2/", "http://registry.invalid:5000/v2/"]),
    ("127.0.0.1:5000", False, ["https://127.0.0.1:5000/v2/", "http://127.0.0.1:5000/v2/"]),
    ("localhost:5000", False, ["https://localhost:5000/v2/", "http://localhost:5000/v2/"]),
])
def test_plain_http_only_for_loopback_or_insecure(host, insecure, expect, registry_env):  # noqa: F811
    t = _RecordingTransport()
    client = RegistryClient(transport=t, credentials={})
    session = client.session(Endpoint(host, insecure=insecure))
    with pytest.raises(errors.RegistryError, match="not reachable"):
        session.ready()
    assert t.urls == expect


@pytest.mark.parametrize("given", ["host", "[host]"])
def test_insecure_given_as_one_host_string_marks_that_host(tls_reg, registry_env, given):  # noqa: F811
    """The API's ``insecure=`` takes a list of hosts; a calling tool passing one host as a str
    (``insecure="reg.example:5000"``) had it taken for its characters, so nothing was marked
    and the pull failed on the certificate as if insecure had not been given.  A non-host
    (``True``) said "'bool' object is not iterable"; now it says what insecure takes."""
    reg, ca = tls_reg
    store = Store(registry_env / "root")
    pull(f"{reg.host}/tls:1", store=store, insecure=reg.host if given == "host" else [reg.host])
    _pulled_ok(store, f"{reg.host}/tls:1")
    with pytest.raises(TypeError, match="insecure: a registry host or a list of them, not True"):
        pull(f"{reg.host}/tls:1", store=store, insecure=True)


def _an_address_off_loopback():
    """One of this machine's own IPv4 addresses that is not loopback: a token server there is
    reached over the network interface, as a realm on another host would be."""
    import socket
    import subprocess
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        addr = line.split()[3].split("/")[0]
        with socket.socket() as s:
            try:
                s.bind((addr, 0))
            except OSError:
                continue
        return addr
    pytest.fail("no non-loopback IPv4 address on this machine to serve a token realm from")


def test_an_https_registry_marked_insecure_sends_no_credentials_to_a_plain_http_realm(tmp_path,  # noqa: F811
                                                                                       registry_env, monkeypatch):
    """A registry reached over HTTPS (marked insecure for its self-signed certificate) names a token
    realm over plain HTTP on another, non-loopback host: lamina sent the stored basic credentials
    there in clear, since the registry's insecure mark allowed any plain-HTTP realm.  Now that is
    refused, naming the realm, and the token server sees no request; marking the realm's host
    insecure too allows it (the user said so).  A realm on another port of loopback gets them, as
    docker's and skopeo's clients send them (test_token_with_credentials_and_identity_token)."""
    token = TokenServer(tmp_path, users=USERS, anonymous_pull=False, address=_an_address_off_loopback())
    ca = make_ca(tmp_path / "ca")
    reg = Registry(tmp_path, token=token, tls_ca=ca)
    try:
        lay, m = _layout(tmp_path)
        d = registry_env / "certs.d" / reg.host
        d.mkdir(parents=True)
        (d / "ca.crt").write_bytes(open(ca["cert_path"], "rb").read())
        skopeo_push(f"oci:{lay.root}:1", reg.host, "secret:1",
                    extra=("--dest-creds", "alice:s3cret", "--dest-cert-dir", str(d)))
        _docker_config(registry_env, {"auths": {reg.host: {"auth": _auth()}}})
        monkeypatch.setenv("LAMINA_INSECURE_REGISTRIES", reg.host)
        token.requests.clear()
        with pytest.raises(errors.AuthenticationError) as e:
            pull(f"{reg.host}/secret:1", store=registry_env / "root")
        assert token.realm in str(e.value) and "over HTTPS" in str(e.value)
        assert token.requests == []
        realm_host = token.realm.split("/")[2]
        monkeypatch.setenv("LAMINA_INSECURE_REGISTRIES", f"{reg.host},{realm_host}")
        store = Store(registry_env / "root")
        pull(f"{reg.host}/secret:1", store=store)
        _pulled_ok(store, f"{reg.host}/secret:1")
        assert token.requests and token.requests[0][0] == "alice"
    finally:
        reg.stop()
        token.stop()


def test_a_host_named_insecure_is_read_without_a_warning(tls_reg, registry_env):  # noqa: F811
    """``insecure=[HOST]`` (``--insecure``): urllib3 warned "Unverified HTTPS request is being
    made to host ..." (InsecureRequestWarning) on each request of the pull, the CLI printing it
    to stderr.  The user asked for exactly that, as with skopeo's --tls-verify=false, which is
    silent: no warning now.  A host not named is still verified (and refused on its CA)."""
    import warnings
    from urllib3.exceptions import InsecureRequestWarning
    reg, ca = tls_reg
    store = Store(registry_env / "root")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pull(f"{reg.host}/tls:1", store=store, insecure=[reg.host])
    _pulled_ok(store, f"{reg.host}/tls:1")
    assert not [w for w in caught if issubclass(w.category, InsecureRequestWarning)], [str(w.message) for w in caught]
    proc = lamina_cli("pull", "--insecure", "-q", f"{reg.host}/tls:1", root=registry_env / "root2")
    assert proc.stdout == f"{reg.host}/tls:1\n" and proc.stderr == "", proc.stderr
    with pytest.raises(errors.RegistryError, match="certificate verification failed"):
        pull(f"{reg.host}/tls:1", store=registry_env / "root3", insecure=["other.invalid:5000"])
