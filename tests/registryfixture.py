"""Real registries on loopback for the registry tests, and the servers around them.

* Registry: Debian's docker-registry (distribution 2.8) on 127.0.0.1:<free port>, config YAML
  and filesystem storage under a temp dir, stopped by pid.  Modes: no auth, htpasswd (bcrypt via
  libcrypt), token (JWTs from TokenServer, trusted through auth.token.rootcertbundle), TLS with
  a test CA, pull-through proxy (proxy.remoteurl).
* TokenServer: a thread issuing ES256 JWTs signed by a test key (x5c header = its self-signed cert).
* FaultProxy: a thread forwarding to a registry, injecting faults per rule (status bursts, cuts,
  stalls, slow bodies, corrupt bytes, redirects, hangs) and counting the body bytes it served.
* build/push helpers: OCI layouts (tests/ocibuild.py or umoci) copied to a registry with skopeo.
"""
from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import datetime
import hashlib
import http.client
import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import socketserver
import subprocess
import threading
import time
import urllib.parse

import pytest
from conftest import require_tool, run

LOOPBACK = "127.0.0.1"


def free_port():
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------
# keys and certificates (cryptography)


def make_ca(tmp, name="lamina test CA", key_ids=True):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True))
    if key_ids:  # what real CAs write; key_ids=False makes the home-made kind some registries use
        cert = cert.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    cert = cert.sign(key, hashes.SHA256())
    os.makedirs(tmp, exist_ok=True)
    cert_path, key_path = os.path.join(tmp, "ca.crt"), os.path.join(tmp, "ca.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return {"cert": cert, "key": key, "cert_path": cert_path, "key_path": key_path, "key_ids": key_ids}


def make_server_cert(tmp, ca, ip=LOOPBACK):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
            .issuer_name(ca["cert"].subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    if ca.get("key_ids", True):
        cert = (cert.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca["key"].public_key()),
                               critical=False))
    cert = cert.sign(ca["key"], hashes.SHA256())
    cert_path, key_path = os.path.join(tmp, "server.crt"), os.path.join(tmp, "server.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    return cert_path, key_path


# ------------------------------------------------------------------------------------------
# htpasswd with bcrypt, through the system's libcrypt (libxcrypt does bcrypt)


def bcrypt_hash(password):
    name = ctypes.util.find_library("crypt")
    if name is None:
        raise RuntimeError("libcrypt not found")
    lib = ctypes.CDLL(name)
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2b$", 5, None, 0)
    out = lib.crypt(password.encode(), salt)
    if not out or not out.startswith(b"$2b$"):
        raise RuntimeError("libcrypt cannot make bcrypt hashes")
    return out.decode()


def write_htpasswd(path, users):
    with open(path, "w") as f:
        for user, pw in users.items():
            f.write(f"{user}:{bcrypt_hash(pw)}\n")


# ------------------------------------------------------------------------------------------
# token server


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """What every test server's handler wants: keep-alive (HTTP/1.1) and no request log on stderr."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


class _QuietServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass


class TokenServer:
    """Issues registry tokens: anonymous pull (if allowed) and everything for known users."""

    def __init__(self, tmp, *, users=None, anonymous_pull=True, service="lamina-test-registry",
                 issuer="lamina-test-issuer", expires_in=300, expired_tokens=0, address=LOOPBACK):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        self.users = dict(users or {})
        self.anonymous_pull = anonymous_pull
        self.service, self.issuer, self.expires_in = service, issuer, expires_in
        self.requests = []   # (user or None, [scopes])
        self.expired_tokens = expired_tokens   # the next N tokens are already expired (registry says 401)
        self.ca = make_ca(os.path.join(tmp, "token-ca"), "lamina test token signer")
        self.bundle = self.ca["cert_path"]
        self._x5c = base64.b64encode(self.ca["cert"].public_bytes(serialization.Encoding.DER)).decode()
        self._x509 = x509
        self._lock = threading.Lock()
        owner = self

        class Handler(QuietHandler):
            def do_GET(self):
                owner._handle(self, "GET")

            def do_POST(self):
                owner._handle(self, "POST")

        self.address = address
        self.server = _QuietServer((address, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self):
        return f"http://{self.address}:{self.port}/token"

    def _handle(self, h, method):
        u = urllib.parse.urlsplit(h.path)
        q = urllib.parse.parse_qs(u.query)
        if method == "POST":
            length = int(h.headers.get("Content-Length") or 0)
            q = urllib.parse.parse_qs(h.rfile.read(length).decode())
        user = None
        auth = h.headers.get("Authorization")
        if auth and auth.startswith("Basic "):
            raw = base64.b64decode(auth[6:]).decode()
            name, _, pw = raw.partition(":")
            if self.users.get(name) != pw:
                return self._reply(h, 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
            user = name
        elif method == "POST" and q.get("grant_type") == ["refresh_token"]:
            tok = q.get("refresh_token", [""])[0]
            user = next((u for u, p in self.users.items() if tok == f"refresh-{u}-{p}"), None)
            if user is None:
                return self._reply(h, 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad refresh token"}]})
        scopes = []
        for s in q.get("scope", []):
            scopes.extend(s.split(" "))
        self.requests.append((user, scopes))
        access = []
        for s in scopes:
            parts = s.split(":")
            if len(parts) < 3 or parts[0] != "repository":
                continue
            actions = parts[-1].split(",")
            name = ":".join(parts[1:-1])
            granted = actions if user else ([a for a in actions if a == "pull"] if self.anonymous_pull else [])
            if granted:
                access.append({"type": "repository", "name": name, "actions": granted})
        expired = False
        with self._lock:
            if self.expired_tokens > 0:
                self.expired_tokens -= 1
                expired = True
        token = self.sign(user or "", access, expired=expired)
        self._reply(h, 200, {"token": token, "access_token": token, "expires_in": self.expires_in,
                             "issued_at": datetime.datetime.now(datetime.timezone.utc).isoformat()})

    def _reply(self, h, status, doc):
        body = json.dumps(doc).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def sign(self, subject, access, expired=False):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
        now = int(time.time()) - (3600 if expired else 0)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self._x5c]}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + self.expires_in,
                  "nbf": now - 30, "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())).encode()
        der = self.ca["key"].sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input.decode() + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------
# the registry


class Registry:
    def __init__(self, tmp, *, name="registry", htpasswd_users=None, token=None, tls_ca=None, proxy_remote=None,
                 allow_layer_urls=False):
        self.binary = require_tool("docker-registry")
        self.dir = os.path.join(os.fspath(tmp), name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.scheme = "https" if tls_ca else "http"
        self.storage = os.path.join(self.dir, "data")
        lines = [
            "version: 0.1",
            "log:",
            "  level: error",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: {LOOPBACK}:{self.port}",
            "  secret: lamina-test-secret",
        ]
        if tls_ca:
            cert, key = make_server_cert(self.dir, tls_ca)
            lines += ["  tls:", f"    certificate: {cert}", f"    key: {key}"]
        if htpasswd_users:
            path = os.path.join(self.dir, "htpasswd")
            write_htpasswd(path, htpasswd_users)
            lines += ["auth:", "  htpasswd:", "    realm: lamina-test", f"    path: {path}"]
        elif token is not None:
            lines += ["auth:", "  token:", f"    realm: {token.realm}", f"    service: {token.service}",
                      f"    issuer: {token.issuer}", f"    rootcertbundle: {token.bundle}"]
        if proxy_remote:
            lines += ["proxy:", f"  remoteurl: {proxy_remote}"]
        if allow_layer_urls:  # manifests naming foreign layers by urls (distribution refuses them by default)
            lines += ["validation:", "  manifests:", "    urls:", "      allow:", "        - ^https?://"]
        self.config = os.path.join(self.dir, "config.yml")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log = open(os.path.join(self.dir, "registry.log"), "wb")
        self.proc = subprocess.Popen([self.binary, "serve", self.config], stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        try:
            self._wait_ready(tls_ca)
        except BaseException:
            self.stop()  # a server that never became ready is still a process to end
            raise

    @property
    def host(self):
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self):
        return f"{self.scheme}://{self.host}"

    def _wait_ready(self, tls_ca):
        import ssl
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited {self.proc.returncode}: {self.read_log()}")
            try:
                if tls_ca:
                    ctx = ssl.create_default_context(cafile=tls_ca["cert_path"])
                    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)  # Python >= 3.13
                    conn = http.client.HTTPSConnection(LOOPBACK, self.port, timeout=2, context=ctx)
                else:
                    conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=2)
                conn.request("GET", "/v2/")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not start: {self.read_log()}")

    def read_log(self):
        try:
            with open(os.path.join(self.dir, "registry.log"), "rb") as f:
                return f.read()[-4000:].decode(errors="replace")
        except OSError:
            return ""

    def has_blob(self, digest):
        hexd = digest.split(":", 1)[1]
        return os.path.exists(os.path.join(self.storage, "docker", "registry", "v2", "blobs", "sha256", hexd[:2],
                                           hexd, "data"))

    def stop(self):
        if self.proc.poll() is None:
            # A throw-away test registry: no graceful drain of keep-alive connections needed.
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------------------------------
# the fault-injecting proxy


class Rule:
    """A fault applied to the first ``times`` requests matching method and path substring, after
    the first ``skip`` of them."""

    def __init__(self, action, *, method=None, path=None, times=1, skip=0, **kw):
        self.action, self.method, self.path, self.times, self.kw = action, method, path, times, kw
        self.hits = 0
        self.skip = skip

    def matches(self, method, path):
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method and method != self.method:
            return False
        if not (self.path is None or self.path in path):
            return False
        if self.skip:
            self.skip -= 1
            return False
        return True


class FaultProxy:
    """HTTP/1.1 reverse proxy to ``upstream`` (host:port) with fault rules.

    Actions: status (code, retry_after), rewrite (headers: fn(name, value) -> value or None to
    leave the header out, on the upstream's answer; add: {name: value} more), cut (after bytes of body, then close), stall (after bytes,
    sleep seconds, close), slow (chunk, delay), corrupt (offset), redirect (to base URL), hang (after
    bytes, then wait for release()), drip_headers (status line and ~19 KB of headers, chunk bytes
    every delay, for at most seconds, then close), cut_headers (the upstream's status line and
    headers but Content-Length, then close before the blank line), ignore_range (the request
    forwarded without its Range).  ``served[path]`` counts body bytes sent; ``seen`` logs
    (method, path, headers dict, status).
    """

    def __init__(self, upstream, *, upstream_headers=None, scheme="http"):
        self.upstream = upstream
        self.upstream_headers = dict(upstream_headers or {})
        self.rules = []
        self.seen = []
        self.served = {}
        self._lock = threading.Lock()
        self.hang_reached = threading.Event()
        self.release_hang = threading.Event()
        owner = self

        class Handler(QuietHandler):
            def _go(self):
                owner._handle(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _go

        self.port = free_port()
        self.server = _QuietServer((LOOPBACK, self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self):
        return f"{LOOPBACK}:{self.port}"

    def add(self, action, **kw):
        rule = Rule(action, **kw)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self):
        with self._lock:
            self.rules.clear()

    def bytes_for(self, fragment):
        with self._lock:
            return sum(n for p, n in self.served.items() if fragment in p)

    def requests_for(self, fragment, method=None):
        return [s for s in self.seen if fragment in s[1] and (method is None or s[0] == method)]

    def _count(self, path, n):
        with self._lock:
            self.served[path] = self.served.get(path, 0) + n

    def _handle(self, h):
        method, path = h.command, h.path
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        headers = {k: v for k, v in h.headers.items()}
        rule = None
        with self._lock:
            for r in self.rules:
                if r.matches(method, path):
                    r.hits += 1
                    rule = r
                    break
        action = rule.action if rule else None
        if action == "status":
            code = rule.kw.get("code", 503)
            self.seen.append((method, path, headers, code))
            h.send_response(code)
            if rule.kw.get("retry_after") is not None:
                h.send_header("Retry-After", str(rule.kw["retry_after"]))
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if action == "respond":
            code, body_out = rule.kw.get("code", 200), rule.kw.get("body", b"")
            self.seen.append((method, path, headers, code))
            h.send_response(code)
            for k, v in (rule.kw.get("headers") or {}).items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body_out)))
            h.end_headers()
            if method != "HEAD":
                h.wfile.write(body_out)
            return
        if action == "drip_headers":
            self.seen.append((method, path, headers, 200))
            head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"x" * 200) for i in range(90))
            chunk, delay = rule.kw.get("chunk", 8), rule.kw.get("delay", 0.1)
            end = time.monotonic() + rule.kw.get("seconds", 30)
            h.close_connection = True
            with contextlib.suppress(OSError):
                for i in range(0, len(head), chunk):
                    if time.monotonic() > end:
                        break
                    h.wfile.write(head[i:i + chunk])
                    h.wfile.flush()
                    time.sleep(delay)
            return
        if action == "redirect":
            self.seen.append((method, path, headers, 307))
            h.send_response(307)
            h.send_header("Location", rule.kw["to"] + path)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        up_headers = {k: v for k, v in headers.items() if k.lower() not in ("connection", "keep-alive")}
        up_headers.update(self.upstream_headers)
        if action == "ignore_range":
            # a server (an object store behind a redirect) that serves the whole blob, 200, to a Range
            up_headers = {k: v for k, v in up_headers.items() if k.lower() != "range"}
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            conn.request(method, path, body=body, headers=up_headers)
            resp = conn.getresponse()
            data = resp.read() if method != "HEAD" else b""
        finally:
            conn.close()
        self.seen.append((method, path, headers, resp.status))
        if action == "cut_headers":
            # the status line and the headers before Content-Length, then the connection closes
            # where the blank line ending the headers would come
            h.close_connection = True
            head = f"HTTP/1.1 {resp.status} {resp.reason}\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in resp.getheaders()
                if k.lower() not in ("transfer-encoding", "connection", "content-length", "keep-alive"))
            with contextlib.suppress(OSError):
                h.wfile.write(head.encode("latin-1"))
                h.wfile.flush()
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() in ("transfer-encoding", "connection", "content-length", "keep-alive", "date", "server"):
                continue
            if action == "rewrite" and "headers" in rule.kw:
                v = rule.kw["headers"](k, v)
                if v is None:
                    continue
            h.send_header(k, v)
        if action == "rewrite":
            for k, v in (rule.kw.get("add") or {}).items():
                h.send_header(k, v)
        if method == "HEAD":
            h.send_header("Content-Length", resp.getheader("Content-Length") or "0")
            h.end_headers()
            return
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if action == "corrupt" and data:
            i = min(rule.kw.get("offset", len(data) // 2), len(data) - 1)
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
        try:
            if action in ("cut", "stall", "hang"):
                n = min(rule.kw.get("after", len(data) // 2), len(data))
                h.wfile.write(data[:n])
                h.wfile.flush()
                self._count(path, n)
                if action == "stall":
                    time.sleep(rule.kw.get("seconds", 3))
                elif action == "hang":
                    self.hang_reached.set()
                    self.release_hang.wait(60)
                h.close_connection = True
                with contextlib.suppress(OSError):
                    h.connection.shutdown(socket.SHUT_RDWR)
                return
            if action == "slow":
                chunk, delay = rule.kw.get("chunk", 4096), rule.kw.get("delay", 0.001)
                for i in range(0, len(data), chunk):
                    h.wfile.write(data[i:i + chunk])
                    h.wfile.flush()
                    self._count(path, len(data[i:i + chunk]))
                    time.sleep(delay)
                return
            h.wfile.write(data)
            self._count(path, len(data))
        except OSError:
            h.close_connection = True

    def stop(self):
        self.release_hang.set()
        self.server.shutdown()
        self.server.server_close()


def kill9_when(proxy, child, ready, what, timeout=60):
    """Once ``child`` (a pull) reached the blob the proxy holds and ``ready()`` holds, kill -9 it.
    The proxy's hang is released whatever happens."""
    try:
        assert proxy.hang_reached.wait(60), "the pull never reached the blob"
        deadline = time.monotonic() + timeout
        while not ready():
            assert time.monotonic() < deadline, what
            assert child.poll() is None, child.stderr.read()
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        proxy.release_hang.set()


# ------------------------------------------------------------------------------------------
# images


def skopeo_push(src, registry_host, dest, *, all_images=False, extra=()):
    """skopeo copy SRC docker://HOST/DEST (TLS not verified: the registry is a test one)."""
    skopeo = require_tool("skopeo")
    cmd = [skopeo, "copy", "--quiet", "--dest-tls-verify=false"]
    if all_images:
        cmd.append("--all")
    cmd += list(extra) + [src, f"docker://{registry_host}/{dest}"]
    run(*cmd)


def skopeo_inspect(registry_host, ref, *, raw=False, creds=None):
    skopeo = require_tool("skopeo")
    cmd = [skopeo, "inspect", "--tls-verify=false"]
    if raw:
        cmd.append("--raw")
    if creds:
        cmd += ["--creds", creds]
    cmd.append(f"docker://{registry_host}/{ref}")
    out = run(*cmd).stdout
    return json.loads(out)


def skopeo_raw(registry_host, ref):
    """The manifest bytes as the registry serves them (via skopeo) and their digest."""
    skopeo = require_tool("skopeo")
    proc = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{registry_host}/{ref}"],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.fail(f"skopeo inspect --raw failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout, "sha256:" + hashlib.sha256(proc.stdout).hexdigest()


def fast_random(n, seed=0):
    import random
    return random.Random(seed).randbytes(n)


def umoci_multiarch(root, tag="multi"):
    """An OCI layout (built with umoci) holding two images, linux/amd64 and linux/arm64/v8, each with
    one layer whose /arch file names its platform, and an index tagged ``tag`` over both."""
    umoci = require_tool("umoci")
    layout = os.path.join(root, "layout")
    run(umoci, "init", "--layout", layout)
    descs = []
    for arch, variant in (("amd64", None), ("arm64", "v8")):
        run(umoci, "new", "--image", f"{layout}:{arch}")
        run(umoci, "config", "--image", f"{layout}:{arch}", "--architecture", arch, "--os", "linux")
        # (umoci insert writes a truncated tar in this version: unpack, edit, repack instead)
        bundle = os.path.join(root, f"bundle-{arch}")
        run(umoci, "unpack", "--image", f"{layout}:{arch}", bundle)
        with open(os.path.join(bundle, "rootfs", "arch"), "w") as f:
            f.write(f"linux/{arch}" + (f"/{variant}" if variant else "") + "\n")
        run(umoci, "repack", "--image", f"{layout}:{arch}", bundle)
        with open(os.path.join(layout, "index.json")) as f:
            entry = next(m for m in json.load(f)["manifests"]
                         if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == arch)
        d = {"mediaType": entry["mediaType"], "digest": entry["digest"], "size": entry["size"],
             "platform": {"os": "linux", "architecture": arch}}
        if variant:
            d["platform"]["variant"] = variant
        descs.append(d)
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": descs}).encode()
    digest = "sha256:" + hashlib.sha256(index).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest[7:]), "wb") as f:
        f.write(index)
    with open(os.path.join(layout, "index.json")) as f:
        top = json.load(f)
    top["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest,
                             "size": len(index), "annotations": {"org.opencontainers.image.ref.name": tag}})
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(top, f)
    return layout, digest, {d["platform"]["architecture"]: d["digest"] for d in descs}


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    """A plain docker-registry on loopback for the tests of one module."""
    r = Registry(tmp_path_factory.mktemp("reg"))
    yield r
    r.stop()


@pytest.fixture
def registry_env(tmp_path, monkeypatch):
    """Isolate from the machine's registry configuration and credentials; fast retries."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("LAMINA_REGISTRIES_CONFIG", "")
    monkeypatch.setenv("LAMINA_CERTS_D", str(tmp_path / "certs.d"))
    monkeypatch.delenv("LAMINA_INSECURE_REGISTRIES", raising=False)
    monkeypatch.setenv("LAMINA_REGISTRY_BACKOFF", "0.02")
    monkeypatch.delenv("LAMINA_REGISTRY_TIMEOUT", raising=False)
    monkeypatch.delenv("LAMINA_REGISTRY_RETRIES", raising=False)
    monkeypatch.delenv("LAMINA_MAX_CONCURRENT_DOWNLOADS", raising=False)
    monkeypatch.delenv("LAMINA_ROOT", raising=False)
    for var in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    return tmp_path


def lamina_cli(*args, root=None, input=None, env=None, check=True):
    """Run the lamina CLI in a child process; returns CompletedProcess (text)."""
    import sys
    cmd = [sys.executable, "-m", "lamina"]
    if root is not None:
        cmd += ["--root", str(root)]
    cmd += [str(a) for a in args]
    proc = subprocess.run(cmd, capture_output=True, text=True, input=input, env=env, timeout=300)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def load_layout_into_store(store, layout_root, manifest_desc, ref):
    """Put an ocibuild layout's blobs into the store (store API) and name the image."""
    for name in os.listdir(os.path.join(layout_root, "blobs", "sha256")):
        with open(os.path.join(layout_root, "blobs", "sha256", name), "rb") as f:
            store.put_blob(f.read(), "sha256:" + name)
    return store.add_image(manifest_desc["digest"], ref=ref)


def cleanup(*things):
    for t in things:
        with contextlib.suppress(Exception):
            t.stop()


def rmtree(path):
    shutil.rmtree(path, ignore_errors=True)
