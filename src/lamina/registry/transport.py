"""HTTP transport for registries: pooled keep-alive connections, TLS, retries, redirects.

Built on ``http.client`` (no third-party HTTP stack): a registry pull is a
handful of requests to one or two hosts, which a small per-origin pool of
keep-alive connections serves as well as urllib3 would, and we need exact
control over three things libraries tend to hide:

* retries: 429/5xx and connection failures are retried with exponential
  backoff and jitter (``Retry-After`` honoured, capped), only for requests
  whose body can be replayed;
* redirects: followed (blob GETs are often redirected to object storage), and
  the ``Authorization`` header is dropped as soon as scheme, host or port
  changes, so credentials never reach another origin;
* TLS: the system CAs plus the docker ``certs.d`` convention
  (``DIR/HOST[:PORT]/*.crt`` extra CAs, ``*.cert``/``*.key`` client pairs),
  and plain HTTP only where the caller allowed it (loopback / insecure).

Proxies come from the environment as docker and curl read them
(``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``, either case): HTTPS goes
through a ``CONNECT`` tunnel, so TLS is still end to end with the registry;
plain HTTP is sent in absolute form.  Credentials in the proxy URL become
``Proxy-Authorization``.
"""
from __future__ import annotations

import base64
import email.utils
import http.client
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass

from ..errors import RegistryError

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 0.5
MAX_BACKOFF = 10.0
MAX_RETRY_AFTER = 30.0
_BLOCK = 1 << 20
USER_AGENT = "lamina/0.1"

# docker's per-registry TLS directory, then the containers one.  Overridable (tests) with
# LAMINA_CERTS_D, a colon-separated list of directories.
DEFAULT_CERTS_DIRS = ("/etc/docker/certs.d", "/etc/containers/certs.d")

# Errors that mean "the connection broke", worth a retry on a fresh one.
CONNECTION_ERRORS = (OSError, http.client.HTTPException, ssl.SSLError)


def certs_dirs():
    env = os.environ.get("LAMINA_CERTS_D")
    if env is not None:
        return tuple(d for d in env.split(os.pathsep) if d)
    return DEFAULT_CERTS_DIRS


def env_float(name, default):
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


def env_int(name, default):
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return default


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str   # hostname or IP (IPv6 without brackets)
    port: int

    @classmethod
    def of(cls, url):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise RegistryError(f"unsupported URL {url!r}")
        try:
            port = u.port
        except ValueError:
            raise RegistryError(f"invalid port in URL {url!r}") from None
        return cls(u.scheme, u.hostname, port or (443 if u.scheme == "https" else 80))

    @property
    def hostport(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


class TLSPolicy:
    """Which SSL context an origin gets: verified with system + certs.d CAs, or unverified
    for hosts the user marked insecure."""

    def __init__(self, insecure_hosts=()):
        self._insecure = set(insecure_hosts)
        self._cache = {}
        self._lock = threading.Lock()

    def mark_insecure(self, hostport):
        with self._lock:
            self._insecure.add(hostport)
            self._cache.clear()

    def is_insecure(self, hostport):
        return hostport in self._insecure

    def context(self, origin):
        key = origin.hostport
        with self._lock:
            ctx = self._cache.get(key)
            if ctx is None:
                ctx = self._cache[key] = self._build(origin)
            return ctx

    def _build(self, origin):
        if self.is_insecure(origin.hostport):
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context()
            # Python >= 3.13 verifies with VERIFY_X509_STRICT, which rejects certificates
            # without key identifiers; docker (Go) accepts them, and registries with a
            # home-made CA often have none.
            ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
        # docker looks up HOST:PORT (or HOST for 443); accept both spellings.
        names = [origin.hostport]
        if f"{origin.host}:{origin.port}" not in names:
            names.append(f"{origin.host}:{origin.port}")
        for base in certs_dirs():
            for name in names:
                d = os.path.join(base, name)
                try:
                    entries = sorted(os.listdir(d))
                except OSError:
                    continue
                for entry in entries:
                    path = os.path.join(d, entry)
                    if entry.endswith(".crt"):
                        try:
                            ctx.load_verify_locations(cafile=path)
                        except (ssl.SSLError, OSError) as e:
                            raise RegistryError(f"cannot load CA certificate {path}: {e}") from None
                    elif entry.endswith(".cert"):
                        key = path[:-len(".cert")] + ".key"
                        if not os.path.exists(key):
                            raise RegistryError(f"client certificate {path} has no matching {key}")
                        try:
                            ctx.load_cert_chain(path, key)
                        except (ssl.SSLError, OSError) as e:
                            raise RegistryError(f"cannot load client certificate {path}: {e}") from None
        return ctx


class Response:
    """A response whose body may still be streaming; close() returns the connection to the pool."""

    def __init__(self, transport, origin, conn, resp, url, method):
        self._transport, self._origin, self._conn, self._resp = transport, origin, conn, resp
        self.url, self.method = url, method
        self.status = resp.status
        self.reason = resp.reason
        self.headers = resp.headers

    def header(self, name, default=None):
        return self.headers.get(name, default)

    @property
    def length(self):
        v = self.headers.get("Content-Length")
        try:
            return int(v) if v is not None else None
        except ValueError:
            return None

    def readinto(self, buf):
        return self._resp.readinto(buf)

    def read(self, amt=None):
        return self._resp.read(amt)

    def content(self, limit=None):
        """The whole body (at most ``limit`` bytes, else RegistryError)."""
        if limit is None:
            data = self._resp.read()
        else:
            data = self._resp.read(limit + 1)
            if len(data) > limit:
                self.close(reuse=False)
                raise RegistryError(f"{self.method} {self.url}: response larger than {limit} bytes")
        self.close()
        return data

    def drain(self, limit=1 << 16):
        """Read and drop a small body so the connection can be reused."""
        try:
            self._resp.read(limit)
        except CONNECTION_ERRORS:
            pass
        self.close()

    def close(self, reuse=True):
        conn, self._conn = self._conn, None
        if conn is None:
            return
        resp = self._resp
        if reuse and resp.isclosed() and not resp.will_close:
            self._transport._release(self._origin, conn)
        else:
            try:
                resp.close()
            finally:
                conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(reuse=exc[0] is None)

    def __del__(self):
        if getattr(self, "_conn", None) is not None:
            try:
                self._conn.close()
            except Exception:
                pass


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    headers: tuple   # (("Proxy-Authorization", "Basic ..."),) or ()

    @classmethod
    def for_origin(cls, origin):
        """The proxy the environment names for ``origin``, or None (NO_PROXY, or none set)."""
        proxies = urllib.request.getproxies_environment()
        url = proxies.get(origin.scheme)
        if not url or urllib.request.proxy_bypass_environment(origin.hostport, proxies):
            return None
        u = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if u.scheme != "http" or not u.hostname:
            raise RegistryError(f"unsupported proxy {url!r}: lamina speaks to proxies over plain http:// "
                                "(HTTPS to the registry is still tunnelled end to end)")
        headers = ()
        if u.username is not None:
            cred = f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}"
            headers = (("Proxy-Authorization", "Basic " + base64.b64encode(cred.encode()).decode()),)
        return cls(u.hostname, u.port or 80, headers)


class Transport:
    """Thread-safe HTTP client with a keep-alive pool per origin."""

    def __init__(self, *, timeout=None, retries=None, backoff=None, tls=None, max_idle=8, sleep=time.sleep):
        self.timeout = timeout if timeout is not None else env_float("LAMINA_REGISTRY_TIMEOUT", DEFAULT_TIMEOUT)
        self.retries = retries if retries is not None else env_int("LAMINA_REGISTRY_RETRIES", DEFAULT_RETRIES)
        self.backoff = backoff if backoff is not None else env_float("LAMINA_REGISTRY_BACKOFF", DEFAULT_BACKOFF)
        self.tls = tls or TLSPolicy()
        self.max_idle = max_idle
        self._sleep = sleep
        self._idle = {}
        self._proxies = {}
        self._lock = threading.Lock()

    # --- connections ---------------------------------------------------------------

    def _proxy(self, origin):
        with self._lock:
            if origin not in self._proxies:
                self._proxies[origin] = Proxy.for_origin(origin)
            return self._proxies[origin]

    def _new_conn(self, origin):
        proxy = self._proxy(origin)
        if origin.scheme == "https":
            if proxy is None:
                return http.client.HTTPSConnection(origin.host, origin.port, timeout=self.timeout,
                                                   context=self.tls.context(origin), blocksize=_BLOCK)
            conn = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=self.timeout,
                                               context=self.tls.context(origin), blocksize=_BLOCK)
            conn.set_tunnel(origin.host, origin.port, headers=dict(proxy.headers))
            return conn
        if proxy is not None:
            return http.client.HTTPConnection(proxy.host, proxy.port, timeout=self.timeout, blocksize=_BLOCK)
        return http.client.HTTPConnection(origin.host, origin.port, timeout=self.timeout, blocksize=_BLOCK)

    def _acquire(self, origin):
        with self._lock:
            idle = self._idle.get(origin)
            if idle:
                return idle.pop(), True
        return self._new_conn(origin), False

    def _release(self, origin, conn):
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self.max_idle:
                idle.append(conn)
                return
        conn.close()

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for c in conns:
                c.close()

    # --- one exchange -----------------------------------------------------------------

    def _send(self, method, url, headers, body):
        """One request/response on a pooled connection (a stale keep-alive connection is
        replaced transparently once)."""
        origin = Origin.of(url)
        u = urllib.parse.urlsplit(url)
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        hdrs = {"User-Agent": USER_AGENT}
        proxy = self._proxy(origin) if origin.scheme == "http" else None
        if proxy is not None:  # plain HTTP through a proxy: absolute-form target
            target = f"{origin.scheme}://{origin.hostport}{target}"
            hdrs.update(proxy.headers)
        hdrs.update(headers or {})
        if body is None and method in ("POST", "PUT", "PATCH"):
            hdrs.setdefault("Content-Length", "0")
        for attempt in (0, 1):
            conn, reused = self._acquire(origin)
            payload = body() if callable(body) else body
            try:
                conn.request(method, target, body=payload, headers=hdrs)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    ConnectionAbortedError) as e:
                conn.close()
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection: not a real failure
                raise e
            except BaseException:
                conn.close()
                raise
            return Response(self, origin, conn, resp, url, method)
        raise AssertionError("unreachable")

    # --- the public entry point ---------------------------------------------------------

    def request(self, method, url, *, headers=None, body=None, retry=True, follow_redirects=True,
                ok_statuses=None):
        """Send a request; returns a Response whose body is not read yet.

        ``body`` is None, bytes, or a zero-argument callable returning a fresh body (bytes
        or a file object) for each attempt.  With ``retry`` connection failures and
        RETRY_STATUSES are retried with backoff; after the last attempt a connection
        failure raises RegistryError and a status response is returned as is.
        Redirects are followed; ``Authorization`` is dropped when the origin changes.
        """
        headers = dict(headers or {})
        attempts = self.retries + 1 if retry else 1
        redirects = 0
        failures = 0
        while True:
            try:
                resp = self._send(method, url, headers, body)
            except CONNECTION_ERRORS as e:
                if isinstance(e, ssl.SSLCertVerificationError):
                    raise RegistryError(
                        f"{method} {url}: TLS certificate verification failed: {e.verify_message or e}"
                        f" (put the registry's CA in {certs_dirs()[0] if certs_dirs() else 'certs.d'}"
                        f"/{Origin.of(url).hostport}/ca.crt, or mark the registry insecure)") from None
                failures += 1
                # Nothing listening, or no such host: one more try covers a restart,
                # five would only make the user wait for a certain answer.
                hopeless = isinstance(e, (ConnectionRefusedError, socket.gaierror)) and failures >= 2
                if failures >= attempts or hopeless:
                    raise RegistryError(f"{method} {url}: {describe_error(e)}"
                                        + (f" (after {failures} attempts)" if failures > 1 else "")) from e
                self._sleep(self._delay(failures, None))
                continue
            if resp.status in REDIRECT_STATUSES and follow_redirects and (ok_statuses is None or
                                                                          resp.status not in ok_statuses):
                location = resp.header("Location")
                resp.drain()
                if not location:
                    raise RegistryError(f"{method} {url}: redirect {resp.status} without a Location")
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise RegistryError(f"{method} {url}: more than {MAX_REDIRECTS} redirects")
                new_url = urllib.parse.urljoin(url, location)
                if Origin.of(new_url) != Origin.of(url):
                    # Never hand credentials to another origin (object storage, CDN, attacker).
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                if resp.status == 303 or (resp.status in (301, 302) and method not in ("GET", "HEAD")):
                    method, body = ("HEAD" if method == "HEAD" else "GET"), None
                    headers = {k: v for k, v in headers.items()
                               if k.lower() not in ("content-length", "content-type", "content-range")}
                url = new_url
                continue
            if retry and resp.status in RETRY_STATUSES:
                failures += 1
                if failures < attempts:
                    delay = self._delay(failures, resp.header("Retry-After"))
                    resp.drain()
                    self._sleep(delay)
                    continue
            return resp

    def _delay(self, failures, retry_after):
        if retry_after:
            seconds = _parse_retry_after(retry_after)
            if seconds is not None:
                return min(max(seconds, 0.0), MAX_RETRY_AFTER)
        base = self.backoff * (2 ** (failures - 1))
        return min(base, MAX_BACKOFF) * (0.5 + random.random() / 2)

    def sleep_backoff(self, failures):
        self._sleep(self._delay(failures, None))


def _parse_retry_after(value):
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return when.timestamp() - time.time()


def describe_error(e):
    if isinstance(e, socket.timeout) or isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve host: {e.strerror or e}"
    if isinstance(e, http.client.IncompleteRead):
        return f"connection closed after {len(e.partial)} bytes of the body"
    if isinstance(e, http.client.RemoteDisconnected):
        return "server closed the connection without a response"
    if isinstance(e, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(e, ssl.SSLError):
        return f"TLS error: {e.reason or e}"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
