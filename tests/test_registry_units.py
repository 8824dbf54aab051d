"""Registry client pieces that need no server: challenges, credentials lookup, config, progress."""
import base64
import io
import json
import os
import stat

import pytest

from registryfixture import registry_env  # noqa: F401

from lamina import errors
from lamina.registry import credentials
from lamina.registry.client import error_message, parse_challenge
from lamina.registry.config import Endpoint, RegistryConfig, is_loopback
from lamina.registry.progress import PlainReporter, RichReporter, reporter_for
from lamina.registry.pull import chain_ids
from lamina.registry.transport import Origin, _parse_retry_after


def test_parse_challenge():
    s, p = parse_challenge('Bearer realm="https://auth.invalid/token",service="reg.invalid",'
                           'scope="repository:a/b:pull,push repository:c:pull"')
    assert s == "bearer"
    assert p == {"realm": "https://auth.invalid/token", "service": "reg.invalid",
                 "scope": "repository:a/b:pull,push repository:c:pull"}
    s, p = parse_challenge('Basic realm="a \\"quoted\\" realm"')
    assert (s, p) == ("basic", {"realm": 'a "quoted" realm'})
    assert parse_challenge('Bearer realm=http://x/t, error=insufficient_scope')[1] == {
        "realm": "http://x/t", "error": "insufficient_scope"}
    assert parse_challenge(None) == (None, {})


def test_error_message():
    body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": {}}]})
    assert error_message(body.encode(), 404) == "manifest unknown"
    body = json.dumps({"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]})
    assert error_message(body.encode(), 403) == "denied: requested access to the resource is denied"
    assert error_message(b"", 500, "Internal Server Error") == "500 Internal Server Error"


def test_retry_after_and_origin():
    assert _parse_retry_after("3") == 3.0
    assert _parse_retry_after("garbage") is None
    assert Origin.of("https://h.invalid/v2/") == Origin("https", "h.invalid", 443)
    assert Origin.of("http://127.0.0.1:5000/x").hostport == "127.0.0.1:5000"
    assert Origin.of("https://h.invalid:443/") == Origin.of("https://h.invalid/")
    assert Origin.of("https://h.invalid:444/") != Origin.of("https://h.invalid/")


@pytest.mark.parametrize("host,loop", [("127.0.0.1:5000", True), ("127.1.2.3", True), ("[::1]:5000", True),
                                       ("localhost", True), ("localhost:1", True), ("10.0.0.1:5000", False),
                                       ("registry.invalid", False), ("::1", True)])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_a_localhost_name_is_loopback_only_where_it_resolves_to_loopback(tmp_path):
    """Any name under .localhost counted as loopback: plain HTTP, and the credentials of a
    plain-HTTP token realm, went to it unasked.  glibc resolves such a name through /etc/hosts
    and then DNS, which may answer with any host.  Run against the real resolver, with an
    /etc/hosts of the test's own bound over the system's in a private mount namespace."""
    import subprocess
    import sys
    from conftest import require_root, require_tool
    require_root()
    unshare = require_tool("unshare")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.2 reg.localhost\n::1 six.localhost\n"
                     "192.0.2.7 elsewhere.localhost\n127.0.0.1 both.localhost\n192.0.2.8 both.localhost\n")
    names = ["reg.localhost", "reg.localhost:5000", "[six.localhost]:5000", "elsewhere.localhost:80",
             "both.localhost", "localhost:5000"]
    code = ("import json, sys; from lamina.registry.config import is_loopback; "
            "print(json.dumps([is_loopback(n) for n in sys.argv[1:]]))")
    r = subprocess.run([unshare, "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts),
                        sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert dict(zip(names, json.loads(r.stdout))) == {
        "reg.localhost": True, "reg.localhost:5000": True, "[six.localhost]:5000": True,
        "elsewhere.localhost:80": False, "both.localhost": False, "localhost:5000": True}


def test_chain_ids_match_store():
    from lamina.store.image import chain_ids as store_chain_ids
    ids = ["sha256:" + c * 64 for c in "abc"]
    assert chain_ids(ids) == store_chain_ids(ids)


def _write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def test_credentials_lookup_order(registry_env, monkeypatch):  # noqa: F811
    docker = registry_env / "home" / ".docker" / "config.json"
    auth = base64.b64encode(b"u1:p1").decode()
    _write(docker, {"auths": {"https://reg.invalid:5000/v1/": {"auth": auth},
                              "other.invalid": {"username": "u2", "password": "p2"}}})
    c = credentials.lookup("reg.invalid:5000")
    assert (c.username, c.password) == ("u1", "p1")
    assert credentials.lookup("other.invalid").username == "u2"
    assert credentials.lookup("nothing.invalid") is None
    assert "p1" not in repr(c)
    # auth.json comes first
    _write(registry_env / "run" / "containers" / "auth.json",
           {"auths": {"reg.invalid:5000": {"auth": base64.b64encode(b"pod:man").decode()}}})
    assert credentials.lookup("reg.invalid:5000").username == "pod"
    # docker hub keys are URLs under docker.io
    _write(docker, {"auths": {"https://index.docker.io/v1/": {"auth": auth}}})
    assert credentials.lookup("docker.io").username == "u1"
    _write(docker, {"auths": {"x": {"auth": "!!!notbase64"}}})
    with pytest.raises(errors.AuthenticationError, match="not base64"):
        credentials.lookup("x")


def test_credential_helper_store_and_erase(registry_env, monkeypatch):  # noqa: F811
    bindir = registry_env / "bin"
    bindir.mkdir()
    log = registry_env / "helper.log"
    helper = bindir / "docker-credential-fake"
    helper.write_text(f"#!/bin/sh\ncat > {log}.$1\necho $1 >> {log}\n")
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    docker = registry_env / "home" / ".docker" / "config.json"
    _write(docker, {"credsStore": "fake"})
    where = credentials.store("reg.invalid", "me", "pw")
    assert where == "docker-credential-fake"
    assert json.loads((registry_env / "helper.log.store").read_text()) == {
        "ServerURL": "reg.invalid", "Username": "me", "Secret": "pw"}
    assert "pw" not in docker.read_text()
    assert credentials.erase("reg.invalid")
    assert (registry_env / "helper.log.erase").read_text() == "reg.invalid"


def test_config_endpoints(registry_env, tmp_path):  # noqa: F811
    conf = tmp_path / "r.toml"
    conf.write_text("""
[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "mirror.invalid:5000/hub"
insecure = true
[[registry]]
prefix = "reg.invalid/team"
location = "other.invalid/x"
""")
    cfg = RegistryConfig.load(str(conf))
    eps = cfg.endpoints("docker.io", "library/debian")
    assert eps[0] == Endpoint("mirror.invalid:5000", "hub", None, True, True, "all", "")
    assert eps[0].repo_path("library/debian") == "hub/library/debian"
    assert eps[1].host == "docker.io" and not eps[1].mirror
    assert cfg.endpoints("docker.io", "library/debian", for_push=True) == eps[1:]
    (ep,) = cfg.endpoints("reg.invalid", "team/app")
    assert (ep.host, ep.repo_path("team/app")) == ("other.invalid", "x/app")
    (ep,) = cfg.endpoints("reg.invalid", "teamwork/app")   # a prefix matches whole components only
    assert (ep.host, ep.repo_path("teamwork/app")) == ("reg.invalid", "teamwork/app")


def test_plain_reporter():
    out = io.StringIO()
    r = PlainReporter(out)
    d = "sha256:" + "ab" * 32
    r.layer(d, 10)
    r.state(d, "Downloading")
    r.progress(d, 5, 10)
    r.state(d, "Pull complete")
    r.line("Digest: x")
    assert out.getvalue() == "abababababab: Pull complete\nDigest: x\n"


def test_rich_reporter(monkeypatch):
    pytest.importorskip("rich")   # optional: without it a terminal gets the plain lines
    # rich draws nothing live on TERM=dumb (CI shells, chroots): this test sets the terminal it needs.
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    from rich.console import Console
    d = "sha256:" + "ab" * 32
    buf = io.StringIO()
    rr = RichReporter(console=Console(file=buf, force_terminal=True, width=100))
    rr.layer(d, 10)
    rr.state(d, "Downloading")
    rr.progress(d, 5, 10)
    rr.state(d, "Already exists")
    rr.close()
    text = buf.getvalue()
    assert "abababababab: Already exists" in text and "\x1b[" in text   # drawn live, final line kept


def test_reporter_choice():
    assert type(reporter_for("quiet")).__name__ == "Reporter"
    assert type(reporter_for("json")).__name__ == "Reporter"
    assert isinstance(reporter_for("auto", io.StringIO()), PlainReporter)   # not a terminal


def test_nothing_listening_fails_fast(registry_env):  # noqa: F811
    """Connection refused is retried once (a registry restarting), not five times with backoff."""
    from lamina.registry.transport import Transport
    from registryfixture import free_port
    slept = []
    t = Transport(retries=5, backoff=0.5, sleep=slept.append)
    with pytest.raises(errors.RegistryError, match="refused") as e:
        t.request("GET", f"http://127.0.0.1:{free_port()}/v2/")
    assert "after 2 attempts" in str(e.value)
    assert len(slept) == 1


def _serve_bodies(bodies):
    """A loopback HTTP/1.1 server: GET /NAME answers bodies[NAME] = (data, framing), framing
    'length' (Content-Length), 'chunked', or 'cut' (a Content-Length longer than what is sent)."""
    import http.server
    import threading
    from registryfixture import QuietHandler

    class Handler(QuietHandler):
        def do_GET(self):
            bodies.setdefault("peers", set()).add(self.client_address)
            data, framing = bodies[self.path.lstrip("/")]
            self.send_response(200)
            if framing == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(data), 7000):
                    piece = data[i:i + 7000]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
                return
            self.send_header("Content-Length", str(len(data) + (1000 if framing == "cut" else 0)))
            if framing == "cut":
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            if framing == "cut":
                self.close_connection = True

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_response_readinto_gives_the_body_whatever_its_framing():
    """Response.readinto reads a sized body straight from the socket's buffer (http.client's own
    bookkeeping) and anything else through urllib3's read1: the same bytes either way, the end
    of a sized body seen at its length, and a body cut short is short, not padded."""
    from lamina.registry.transport import Transport
    data = os.urandom(300_000)
    bodies = {"sized": (data, "length"), "chunked": (data, "chunked"), "cut": (data, "cut")}
    server = _serve_bodies(bodies)
    t = Transport(retries=0)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        for name in ("sized", "sized", "chunked", "sized", "cut"):
            resp = t.request("GET", base + name)
            buf, got = bytearray(65536), bytearray()
            try:
                while True:
                    try:
                        n = resp.readinto(buf)
                    except Exception as e:
                        assert name == "cut", repr(e)
                        break
                    if not n:
                        break
                    assert n <= len(buf)
                    got += buf[:n]
            finally:
                resp.close(reuse=name != "cut")
            assert bytes(got) == data, name
        # one connection for all five: a body read to its end past urllib3 leaves it reusable
        assert len(bodies["peers"]) == 1, bodies["peers"]
    finally:
        t.close()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("body, said", [
    (b"zz\r\n", "broken chunked encoding: b'zz' where a chunk size was expected"),
    (b"zz;ext=1\r\n", "broken chunked encoding: b'zz' where a chunk size was expected"),
    (b"it's\r\n", "broken chunked encoding: b\"it's\" where a chunk size was expected"),
    (b"\xff\r\n", "broken chunked encoding: b'\\xff' where a chunk size was expected"),
    (b"", "connection closed between the chunks of a chunked body"),
])
@pytest.mark.parametrize("how", ["read", "read(n)", "read1", "readinto"])
def test_a_bad_chunk_size_line_is_named_from_http_clients_own_error(body, said, how):
    """describe_error finds the chunk-size line in the text of the ValueError http.client's chunked
    reader raised (int(line, 16): "invalid literal for int() with base 16: b'zz\\r\\n'"), then
    dropped for an IncompleteRead(b'').  Nothing else keeps that line, so the text is the contract:
    pinned here against the real http.client, a CPython that words it otherwise fails this test
    instead of turning every such error into "connection closed between the chunks".
    Only read1's error was recognized: read(), read(n) and readinto() put a second IncompleteRead
    (of the bytes they had) over it, said as "connection closed after 10 bytes of the body"."""
    import http.client
    from lamina.registry.transport import describe_error

    class Sock:
        def makefile(self, mode):
            return io.BytesIO(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"a\r\n0123456789\r\n" + body)
    response = http.client.HTTPResponse(Sock())
    response.begin()
    with pytest.raises(http.client.IncompleteRead) as e:
        if how == "read":
            response.read()
        else:
            while (response.read(4) if how == "read(n)" else response.read1(4) if how == "read1"
                   else response.readinto(bytearray(4))):
                pass
    assert describe_error(e.value) == said


@pytest.mark.parametrize("retry_after", ["86400", "Fri, 31 Dec 2100 23:59:59 GMT", "-5", "soon",
                                         "nan", "NaN", "inf", "1e9", "8_6400", "0x10"])
def test_a_429_retry_after_is_honoured_within_a_bounded_wait(registry_env, retry_after):  # noqa: F811
    """A registry answering 429 with Retry-After a day (or a date in 2100) would hold a pull
    for as long: each wait is Retry-After capped at MAX_RETRY_AFTER (a negative one is 0,
    a word the backoff), and the retries are counted, so the whole wait is bounded.  The
    last 429 is the answer, not another wait.
    Retry-After is a date or whole seconds (RFC 9110 10.2.3): on 1b031d2 Python's float()
    read "nan", and time.sleep(nan) ended the pull with a ValueError traceback; "inf",
    "1e9" and "8_6400" (underscores are Python's, nobody's header) are no delay either:
    the backoff's, as for any word."""
    import http.server
    import threading
    from registryfixture import QuietHandler
    from lamina.registry.transport import DEFAULT_BACKOFF, MAX_BACKOFF, MAX_RETRY_AFTER, Transport

    class Handler(QuietHandler):
        def do_GET(self):
            self.send_response(429)
            self.send_header("Retry-After", retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        slept = []
        t = Transport(retries=5, backoff=DEFAULT_BACKOFF, sleep=slept.append)
        resp = t.request("GET", f"http://127.0.0.1:{server.server_address[1]}/v2/")
        assert resp.status == 429
        resp.close()
    finally:
        server.shutdown()
    assert len(slept) == 5, slept
    if retry_after == "-5":
        assert slept == [0.0] * 5
    elif retry_after in ("soon", "nan", "NaN", "inf", "1e9", "8_6400", "0x10"):
        assert all(s <= MAX_BACKOFF for s in slept), slept
    else:
        assert slept == [MAX_RETRY_AFTER] * 5, slept


def test_login_writes_through_a_config_json_that_is_a_symlink(tmp_path, monkeypatch):
    """Dotfile managers make ~/.docker/config.json a symlink into their repository: login and
    logout replaced the link with a plain file, so the managed file kept the old credentials and
    the link was gone.  The link's target is replaced (a temp file in its own directory, renamed),
    as docker's configfile.Save does, and stays 0600."""
    home = tmp_path / "home" / ".docker"
    dots = tmp_path / "dotfiles" / "docker"
    home.mkdir(parents=True)
    dots.mkdir(parents=True)
    (dots / "config.json").write_text('{"auths": {}, "psFormat": "table"}\n')
    os.symlink("../../dotfiles/docker/config.json", home / "config.json")
    monkeypatch.setenv("DOCKER_CONFIG", str(home))
    for step in ("login", "logout"):
        if step == "login":
            credentials.store("reg.example:5000", "alice", "s3cret")
        else:
            assert credentials.erase("reg.example:5000")
        assert os.readlink(home / "config.json") == "../../dotfiles/docker/config.json", step
        doc = json.loads((dots / "config.json").read_text())
        assert doc["psFormat"] == "table"
        assert ("reg.example:5000" in doc["auths"]) == (step == "login"), (step, doc)
        assert stat.S_IMODE((dots / "config.json").stat().st_mode) == 0o600
        assert sorted(os.listdir(home)) == ["config.json"] and sorted(os.listdir(dots)) == ["config.json"]


def test_login_through_a_dangling_config_json_symlink_makes_no_directory_where_it_points(tmp_path, monkeypatch):
    """A config.json that is a symlink to nothing had login make the target's directories
    (0700) where the link pointed, as no docker does: docker's configfile.Save makes only the
    link's own directory, and writes the target file only where its directory exists.  So does
    lamina now; where it does not, login says so and makes nothing."""
    home = tmp_path / "home" / ".docker"
    home.mkdir(parents=True)
    monkeypatch.setenv("DOCKER_CONFIG", str(home))
    os.symlink(tmp_path / "nowhere" / "deeper" / "config.json", home / "config.json")
    with pytest.raises(errors.AuthenticationError, match=r"config\.json: it is a symlink to .*no directory .*deeper"):
        credentials.store("reg.example:5000", "alice", "s3cret")
    assert sorted(os.listdir(tmp_path)) == ["home"], "a directory was made where the link points"
    assert sorted(os.listdir(home)) == ["config.json"]
    # the target's directory exists, its file not yet: made there (0600), the link kept
    (tmp_path / "nowhere" / "deeper").mkdir(parents=True)
    credentials.store("reg.example:5000", "alice", "s3cret")
    target = tmp_path / "nowhere" / "deeper" / "config.json"
    assert "reg.example:5000" in json.loads(target.read_text())["auths"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and os.path.islink(home / "config.json")
