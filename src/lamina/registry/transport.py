"""HTTP transport for registries: urllib3 underneath, registry rules on top.

urllib3 does the generic HTTP work: keep-alive connection pools, proxies
(``CONNECT`` tunnels for HTTPS, absolute-form requests for plain HTTP), TLS,
and the low-level retries (connection failures, 429/5xx with ``Retry-After``)
through a ``Retry`` that sleeps with our backoff and jitter.  What stays here
is what a registry client needs on top of that:

* redirects are followed here, not by urllib3, because each hop may need
  another proxy and another TLS context (blob GETs are often redirected to
  object storage), and ``Authorization`` is dropped as soon as scheme, host or
  port changes, so credentials never reach another origin;
* TLS contexts per registry: the system CAs plus the docker ``certs.d``
  convention (``DIR/HOST[:PORT]/*.crt`` extra CAs, ``*.cert``/``*.key`` client
  pairs), or no verification for hosts the user marked insecure;
* proxies as docker and curl read them from the environment (``HTTPS_PROXY``,
  ``HTTP_PROXY``, ``NO_PROXY``, either case; credentials in the proxy URL
  become ``Proxy-Authorization``) -- urllib3 does not read the environment;
* a connection refused (or an unknown host) is retried once, not with the
  whole budget: nothing listening is a certain answer;
* a document's body (manifest, index, config, token, error) must arrive whole
  within a deadline: the read timeout is per socket read, and a server sending
  a byte every few seconds would otherwise hold a 4 MiB manifest for days;
  every response's status line and headers get the same deadline (http.client
  reads up to 100 header lines of 64 KiB each, one socket read at a time).
"""
from __future__ import annotations

import base64
import contextlib
import functools
import email.utils
import http.client
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass

import urllib3
from urllib3.exceptions import (HTTPError as Urllib3Error, InvalidChunkLength, MaxRetryError, ProtocolError,
                                ProxyError, ReadTimeoutError, SSLError as Urllib3SSLError)
from urllib3.util.retry import Retry

from .. import trace
from ..errors import AuthenticationError, RegistryError

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10
DEFAULT_TIMEOUT = 60.0
# Generous: a 4 MiB manifest at 20 KiB/s.  Go clients (docker, containerd, containers/image) set
# no overall deadline of their own and leave it to the caller's context; lamina has no caller to.
DEFAULT_DOCUMENT_DEADLINE = 300.0
# A blob body slower than this over a minute of waiting is resumed on a new connection, as a
# stall is (a few such windows in a row fail the download): a dripping server never times out.
DEFAULT_MIN_RATE = 1024.0      # bytes per second
DEFAULT_RATE_WINDOW = 60.0     # seconds spent waiting for the network
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 0.5
MAX_BACKOFF = 10.0
MAX_RETRY_AFTER = 30.0
USER_AGENT = "lamina/0.1"
POOL_SIZE = 8          # keep-alive connections kept per origin (pull runs 3 downloads at once)

# docker's per-registry TLS directory, then the containers one.  Overridable (tests) with
# LAMINA_CERTS_D, a colon-separated list of directories.
DEFAULT_CERTS_DIRS = ("/etc/docker/certs.d", "/etc/containers/certs.d")

# Errors that mean "the connection broke", worth a retry on a fresh one (urllib3 raises its
# own while reading a body: ProtocolError, ReadTimeoutError).
CONNECTION_ERRORS = (OSError, http.client.HTTPException, ssl.SSLError, Urllib3Error)

# At most this many bytes per read where urllib3 reads the body (Response.readinto's fallback):
# it reads into a temporary bytes object of the asked size and copies it, and temporaries of
# 1 MiB per concurrent layer left the allocator's heaps several MiB larger at the end of a pull
# (peak RSS, issue 13).  The direct path has no temporary: it reads whatever has arrived, up to
# the caller's buffer (the extractor's 1 MiB), 7x fewer reads on loopback than at this cap.
READ_MAX = 128 << 10


class _AnswerRefused(Exception):
    """Raised out of urllib3 on purpose: not an OSError or HTTPException, so it is not retried
    (a server that drips its headers, or sends interim answers without end, would do it again),
    and request() names the URL."""


class HeadersCut(http.client.HTTPException):
    """The connection ended inside a response's headers.  http.client takes that end for the
    blank line that ends them, and a response without Content-Length for one whose body lasts
    until the connection closes: a manifest read as empty.  An HTTPException, so urllib3 retries
    it like any other cut connection."""


class _LastLine:
    """A response's file object, remembering the last line read from it."""

    def __init__(self, fp):
        self._fp, self.last = fp, None

    def readline(self, *args):
        self.last = self._fp.readline(*args)
        return self.last

    def __getattr__(self, name):
        return getattr(self._fp, name)


class _CheckedResponse(http.client.HTTPResponse):
    MAX_INTERIM = 5   # Go's net/http: more are "too many 1xx informational responses"

    def _read_status(self):
        # http.client skips only 100 Continue and takes a 103 Early Hints or 102 Processing for
        # the answer, leaving the real one in the connection to be read as the next request's.
        # Skip them as Go does; 101 is final (nothing here asks to switch protocols).
        for _ in range(self.MAX_INTERIM + 1):
            version, status, reason = super()._read_status()
            if not 101 < status < 200:
                return version, status, reason
            http.client.parse_headers(self.fp)
        raise _AnswerRefused(f"more than {self.MAX_INTERIM} informational (1xx) answers before the response")

    def begin(self):
        fp = self.fp = _LastLine(self.fp)
        try:
            super().begin()
        finally:
            if self.fp is fp:     # None once http.client closed it
                self.fp = fp._fp
        if fp.last is not None and not fp.last.endswith(b"\n"):
            self.close()
            raise HeadersCut("connection closed in the middle of the response's headers")
        try:
            content_length(self.msg.get_all("Content-Length"), body=not (
                self.chunked or self._method == "HEAD" or self.status in (204, 304)))
        except ValueError as e:
            self.close()
            raise _AnswerRefused(str(e)) from None


# RFC 9110 8.6: Content-Length = 1*DIGIT.  Not int(): it reads "+5", "5_0", " 5 " and "-1" (which
# http.client then takes for "until the connection closes"); at most 19 digits, any 64-bit size.
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}", re.ASCII)


def content_length(values, body=True):
    """The length the Content-Length header lines ``values`` give (None: there is none), as Go's
    net/http reads it: several lines must agree (else a request could be smuggled past a proxy
    that reads another of them), and a response with a body (``body``: not to a HEAD, not
    chunked, not 204/304) must give digits only.  A ValueError says what is wrong."""
    if not values:
        return None
    first = values[0].strip(" \t")
    if any(v.strip(" \t") != first for v in values[1:]):
        raise ValueError(f"Content-Length given {len(values)} times, with different values "
                         f"{', '.join(_quote_line(v) for v in values[:4])}")
    if not first:
        return None   # Go reads an empty one as no length
    if not _CONTENT_LENGTH.fullmatch(first):
        if body:
            raise ValueError(f"bad Content-Length {_quote_line(first)} (not a number of bytes)")
        return None
    return int(first)


def _raw_socket(sock):
    while sock is not None and not isinstance(sock, socket.socket):
        sock = getattr(sock, "socket", None)    # urllib3's SSLTransport (TLS inside a TLS proxy)
    return sock


def _with_header_deadline(connection_cls, deadline):
    """``connection_cls`` whose getresponse() gets status line and headers within ``deadline``
    seconds, else shuts the socket down (which wakes the blocked read) and raises _AnswerRefused."""

    class DeadlineConnection(connection_cls):
        response_class = _CheckedResponse

        def getresponse(self):
            sock, lock, state = _raw_socket(self.sock), threading.Lock(), []
            if sock is None:
                return super().getresponse()

            def expire():
                with lock:
                    if state:
                        return
                    state.append("expired")
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

            def finish():
                with lock:
                    expired = bool(state)
                    state.append("done")
                timer.cancel()
                if expired:
                    raise _AnswerRefused(f"response headers not received within {deadline:g} s "
                                          "(LAMINA_REGISTRY_DOCUMENT_DEADLINE)") from None

            timer = threading.Timer(deadline, expire)
            timer.daemon = True
            timer.start()
            try:
                response = super().getresponse()
            except Exception:
                finish()
                raise
            finish()
            return response

    return DeadlineConnection


def _validate_unverified(pool, conn):
    # urllib3's HTTPS check without its InsecureRequestWarning: the user named this host
    # insecure (skopeo --tls-verify=false, docker's insecure-registries, both silent), and a
    # warning on every request of a pull only repeats what they asked for
    urllib3.HTTPConnectionPool._validate_conn(pool, conn)
    if conn.is_closed:
        conn.connect()


@functools.lru_cache(maxsize=None)
def _pool_classes(deadline, insecure=False):
    """urllib3's pool classes per scheme, their connections under the header deadline
    (``insecure``: the HTTPS pool of a host the user named insecure)."""
    https = {"ConnectionCls": _with_header_deadline(urllib3.connection.HTTPSConnection, deadline)}
    if insecure:
        https["_validate_conn"] = _validate_unverified
    return {"http": type("HTTPConnectionPool", (urllib3.HTTPConnectionPool,), {
                "ConnectionCls": _with_header_deadline(urllib3.connection.HTTPConnection, deadline)}),
            "https": type("HTTPSConnectionPool", (urllib3.HTTPSConnectionPool,), https)}


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
        try:
            u = urllib.parse.urlsplit(url)
            hostname = u.hostname
        except ValueError as e:   # "http://[::1": a URL a registry handed out is hostile input
            raise RegistryError(f"invalid URL {url!r}: {e}") from None
        if u.scheme not in ("http", "https") or not hostname:
            raise RegistryError(f"unsupported URL {url!r}")
        try:
            port = u.port
        except ValueError:
            raise RegistryError(f"invalid port in URL {url!r}") from None
        port = port or (443 if u.scheme == "https" else 80)
        # The origin is what credentials are kept to, and urllib3 parses the URL again to
        # connect: "http://a:1\\@b:2/" is b:2 to urlsplit and a:1 to urllib3, so a registry's
        # Location could keep Authorization while the request went elsewhere.  No registry URL
        # carries userinfo (Go's net/url refuses the backslash), and the two parsers must agree.
        if "@" in u.netloc or "\\" in u.netloc:
            raise RegistryError(f"refusing URL {url!r}: userinfo or a backslash in its host part")
        try:
            p = urllib3.util.parse_url(url)
        except ValueError as e:   # urllib3's LocationParseError is one
            raise RegistryError(f"invalid URL {url!r}: {e}") from None
        if ((p.host or "").strip("[]").lower(), p.port or port) != (hostname, port):
            raise RegistryError(f"refusing URL {url!r}: its host is read as {hostname!r} or as {p.host!r}")
        return cls(u.scheme, hostname, port)

    @property
    def hostport(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def resolve_url(base, ref, what):
    """``ref`` (a Location, a Link a registry sent) resolved against ``base``: an http(s) URL
    with a host, else RegistryError naming ``what`` (urljoin raises a bare ValueError on
    "http://[::1")."""
    try:
        url = urllib.parse.urljoin(base, ref)
    except ValueError as e:
        raise RegistryError(f"{what}: invalid URL {ref!r}: {e}") from None
    try:
        Origin.of(url)
    except RegistryError as e:
        raise RegistryError(f"{what}: {e}") from None
    return url


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

    def context(self, origin, probe=False):
        """``probe``: without the system's CAs, whose loading costs more than a loopback request
        (only certs.d vouches); for a first try at an endpoint that may turn out not to speak TLS."""
        key = (origin.hostport, probe)
        with self._lock:
            ctx = self._cache.get(key)
            if ctx is None:
                ctx = self._cache[key] = self._build(origin, probe)
            return ctx

    def _build(self, origin, probe):
        if self.is_insecure(origin.hostport):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)   # verifies nothing: no CAs to load
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT) if probe else ssl.create_default_context()
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
    """A response whose body may still be streaming; close() gives the connection back to its pool."""

    def __init__(self, resp, url, method, deadline=DEFAULT_DOCUMENT_DEADLINE, timeout=DEFAULT_TIMEOUT):
        self._resp = resp
        self._deadline, self._timeout = deadline, timeout
        self.url, self.method = url, method
        self._direct_ended = False   # readinto read the body to its end past urllib3
        self.status = resp.status
        self.reason = resp.reason
        self.headers = resp.headers

    def header(self, name, default=None):
        return self.headers.get(name, default)

    @property
    def length(self):
        """The body's length its Content-Length gives, or None (none, or a HEAD's that is no
        number: the transport refused any other response with a bad one)."""
        try:
            return content_length(self.headers.getlist("Content-Length"), body=False)
        except ValueError as e:
            raise RegistryError(f"{self.method} {self.url}: {e}") from None

    def readinto(self, buf):
        # What has arrived (at most len(buf)), not len(buf) bytes: a reader that downloads ahead
        # of its consumer must not sit on received bytes while waiting for the rest of a chunk,
        # and a server dripping bytes must not hold one read for ages (BlobStream's minimum rate).
        view = memoryview(buf).cast("B")
        if self._direct_ended:
            return 0
        body = getattr(self._resp, "_fp", None)
        # (http.client's private parts: any other shape of them, as a future urllib3 or Python
        # may have, takes the public read1 below)
        if (not isinstance(body, http.client.HTTPResponse) or body.chunked or body.length is None
                or getattr(body, "fp", None) is None or not callable(getattr(body, "_close_conn", None))):
            data = self._resp.read1(min(len(view), READ_MAX))
            view[:len(data)] = data
            return len(data)
        # Straight from the socket's buffered reader into the caller's buffer (the pipeline's
        # ring): urllib3's read1 makes a new bytes object per chunk, which was then copied here.
        # The bookkeeping is http.client's own read1 (length left; the connection released at
        # the end of the body or when it is cut); urllib3 neither decodes nor counts this body.
        n = body.fp.readinto1(view[:body.length])
        if n:
            body.length -= n
        if not n or not body.length:
            # urllib3 never saw these bytes: from here on its read1 would call the body short
            self._direct_ended = True
            body._close_conn()
            if not n:
                raise http.client.IncompleteRead(b"", body.length)
        return n

    def read(self, amt=None):
        return self._resp.read(amt)

    def content(self, limit=None):
        """The whole body (at most ``limit`` bytes, else RegistryError), within the document deadline."""
        end = time.monotonic() + self._deadline
        sock = getattr(getattr(self._resp, "connection", None), "sock", None)
        chunks, got = [], 0
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                self.close(reuse=False)
                raise RegistryError(f"{self.method} {self.url}: body not received within {self._deadline:g} s "
                                    f"({got} bytes so far; LAMINA_REGISTRY_DOCUMENT_DEADLINE)")
            capped = sock is not None and remaining < self._timeout
            if capped:
                # this read may wait only for what is left of the deadline (urllib3 sets the
                # socket's timeout again for the connection's next request)
                try:
                    sock.settimeout(remaining)
                except OSError:
                    sock, capped = None, False
            try:
                data = self._resp.read1(1 << 16 if limit is None else min(1 << 16, limit + 1 - got))
            except CONNECTION_ERRORS as e:
                if not capped or not is_timeout(e):
                    # a body shorter than its Content-Length, a reset: urllib3's ProtocolError
                    # would reach the user with neither the document nor the registry named
                    self.close(reuse=False)
                    raise RegistryError(f"{self.method} {self.url}: {describe_error(e)}") from None
                end = time.monotonic()   # the deadline, not the server, cut this read: say so above
                continue
            if not data:
                break
            chunks.append(data)
            got += len(data)
            if limit is not None and got > limit:
                self.close(reuse=False)
                raise RegistryError(f"{self.method} {self.url}: response larger than {limit} bytes")
        self.close()
        return b"".join(chunks)

    def drain(self, limit=1 << 16):
        """Read and drop a small body so the connection can be reused; one that is larger, broken
        or slower than the document deadline costs the connection instead (a plain read of it had
        no deadline: a redirect's or a ping's body dripping a byte a minute held the pull for weeks)."""
        try:
            self.content(limit=limit)
        except RegistryError:
            pass   # content() closed the connection

    def close(self, reuse=True):
        resp, self._resp = self._resp, _CLOSED
        if resp is _CLOSED:
            return
        if not (reuse and resp.isclosed()):
            resp.close()       # unread body (or a broken one): the connection cannot be reused
        resp.release_conn()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(reuse=exc[0] is None)


class _Closed:
    def __getattr__(self, name):
        raise ValueError("I/O operation on a closed registry response")


_CLOSED = _Closed()


@dataclass(frozen=True)
class Proxy:
    url: str         # http://host:port, without credentials
    headers: tuple   # (("Proxy-Authorization", "Basic ..."),) or ()

    @classmethod
    def for_origin(cls, origin):
        """The proxy the environment names for ``origin``, or None (NO_PROXY, or none set)."""
        wanted = origin.scheme + "_proxy"
        if not any(value and name.lower() == wanted for name, value in os.environ.items()):
            return None   # urllib.request's answer too, without its import (~2 ms)
        import urllib.request
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
        host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
        return cls(f"http://{host}:{u.port or 80}", headers)


class _Retry(Retry):
    """urllib3's Retry, sleeping through the transport (our backoff, jitter, Retry-After cap) and
    counting the attempts for the error message."""

    transport = None

    def new(self, **kw):
        r = super().new(**kw)
        r.transport = self.transport
        return r

    def failures(self):
        return sum(1 for h in self.history if h.redirect_location is None)

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if error is not None and isinstance(_underlying(error), http.client.LineTooLong):
            # An answer line over http.client's 64 KiB is the same line the next time: retried,
            # a registry's huge Location or header only came back after seven tries and backoff.
            e = MaxRetryError(_pool, url, error)
            e.attempts = self.failures() + 1
            raise e
        try:
            return super().increment(method, url, response, error, _pool, _stacktrace)
        except MaxRetryError as e:
            e.attempts = self.failures() + 1
            raise

    def sleep(self, response=None):
        retry_after = response.headers.get("Retry-After") if response is not None else None
        self.transport._sleep(self.transport._delay(self.failures(), retry_after))


class Transport:
    """Thread-safe HTTP client: one urllib3 pool manager per (proxy, TLS context)."""

    def __init__(self, *, timeout=None, retries=None, backoff=None, document_deadline=None, tls=None,
                 max_idle=POOL_SIZE, sleep=time.sleep):
        self.timeout = timeout if timeout is not None else env_float("LAMINA_REGISTRY_TIMEOUT", DEFAULT_TIMEOUT)
        self.retries = retries if retries is not None else env_int("LAMINA_REGISTRY_RETRIES", DEFAULT_RETRIES)
        self.backoff = backoff if backoff is not None else env_float("LAMINA_REGISTRY_BACKOFF", DEFAULT_BACKOFF)
        self.document_deadline = (document_deadline if document_deadline is not None
                                  else env_float("LAMINA_REGISTRY_DOCUMENT_DEADLINE", DEFAULT_DOCUMENT_DEADLINE))
        self.min_rate = env_float("LAMINA_REGISTRY_MIN_RATE", DEFAULT_MIN_RATE)
        self.rate_window = env_float("LAMINA_REGISTRY_RATE_WINDOW", DEFAULT_RATE_WINDOW)
        self.tls = tls or TLSPolicy()
        self.max_idle = max_idle
        self._sleep = sleep
        self._managers = {}
        self._proxies = {}
        self._lock = threading.Lock()

    def _proxy(self, origin):
        with self._lock:
            if origin not in self._proxies:
                self._proxies[origin] = Proxy.for_origin(origin)
            return self._proxies[origin]

    def _manager(self, origin, tls_probe=False):
        """The pool manager for ``origin``: its proxy, and for HTTPS its TLS context."""
        proxy = self._proxy(origin)
        tls_key = origin.hostport if origin.scheme == "https" else None
        key = (proxy, tls_key, tls_key is not None and self.tls.is_insecure(origin.hostport),
               tls_key is not None and tls_probe)
        with self._lock:
            manager = self._managers.get(key)
            if manager is not None:
                return manager
        kw = {"maxsize": self.max_idle, "block": False,
              "timeout": urllib3.Timeout(connect=self.timeout, read=self.timeout)}
        if tls_key is not None:
            kw["ssl_context"] = self.tls.context(origin, probe=tls_probe)
            if key[2]:
                kw.update(cert_reqs="CERT_NONE", assert_hostname=False)
        if proxy is not None:
            manager = urllib3.ProxyManager(proxy.url, proxy_headers=dict(proxy.headers), **kw)
        else:
            manager = urllib3.PoolManager(**kw)
        manager.pool_classes_by_scheme = _pool_classes(self.document_deadline, insecure=key[2])
        with self._lock:
            return self._managers.setdefault(key, manager)

    def close(self):
        with self._lock:
            managers, self._managers = self._managers, {}
        for m in managers.values():
            m.clear()

    def _retry(self, retry):
        if not retry:
            r = _Retry(total=0, redirect=False, raise_on_status=False)
        else:
            r = _Retry(total=None, connect=min(self.retries, 1), read=self.retries, status=self.retries,
                       other=0, redirect=False, status_forcelist=RETRY_STATUSES, allowed_methods=None,
                       raise_on_status=False, respect_retry_after_header=True)
        r.transport = self
        return r

    def request(self, method, url, *, headers=None, body=None, retry=True, follow_redirects=True,
                ok_statuses=None, tls_probe=False, secret_body=False):
        """Send a request; returns a Response whose body is not read yet.

        ``body`` is None, bytes, or a zero-argument callable returning a fresh body (bytes
        or a seekable file object, which urllib3 rewinds for a retry).  With ``retry``
        connection failures and RETRY_STATUSES are retried with backoff; after the last
        attempt a connection failure raises RegistryError and a status response is returned
        as is.  Redirects are followed; ``Authorization`` is dropped when the origin changes.
        ``tls_probe``: see TLSPolicy.context.  ``secret_body``: the body holds credentials (an
        OAuth2 refresh token): a 307/308 to another origin, which would send it along, is refused.
        """
        headers = {"User-Agent": USER_AGENT, **(headers or {})}
        redirects = 0
        while True:
            origin = Origin.of(url)
            payload = body() if callable(body) else body
            if payload is None and method in ("POST", "PUT", "PATCH"):
                headers.setdefault("Content-Length", "0")
            trace.event("http", method=method, url=url)
            try:
                raw = self._manager(origin, tls_probe).urlopen(
                    method, url, body=payload, headers=headers, retries=self._retry(retry), redirect=False,
                    preload_content=False, decode_content=False, assert_same_host=False)
            except MaxRetryError as e:
                self._fail(method, url, e.reason, getattr(e, "attempts", 1))
            except CONNECTION_ERRORS as e:
                self._fail(method, url, e, 1)
            except _AnswerRefused as e:
                raise RegistryError(f"{method} {url}: {e}") from None
            finally:
                if hasattr(payload, "close"):
                    payload.close()
            resp = Response(raw, url, method, self.document_deadline, self.timeout)
            trace.event("http-response", method=method, url=url, status=resp.status)
            if resp.status in REDIRECT_STATUSES and follow_redirects and (ok_statuses is None or
                                                                          resp.status not in ok_statuses):
                location = resp.header("Location")
                resp.drain()
                if not location:
                    raise RegistryError(f"{method} {url}: redirect {resp.status} without a Location")
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise RegistryError(f"{method} {url}: more than {MAX_REDIRECTS} redirects")
                new_url = resolve_url(url, location, f"{method} {url}: redirect {resp.status}")
                new_origin = Origin.of(new_url)
                if new_origin != origin:
                    # Never hand credentials to another origin (object storage, CDN, attacker).
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                    if secret_body and resp.status in (307, 308):
                        # these keep method and body: the body would follow where Authorization
                        # does not (Go's client sends it along; an https realm redirected to
                        # http:// would even put it on the network in clear)
                        raise AuthenticationError(
                            f"{method} {url}: redirected to {new_origin.scheme}://{new_origin.hostport}, "
                            f"another origin: lamina sends the credentials in this request to "
                            f"{origin.scheme}://{origin.hostport} only")
                if resp.status == 303 or (resp.status in (301, 302) and method not in ("GET", "HEAD")):
                    method, body = ("HEAD" if method == "HEAD" else "GET"), None
                    headers = {k: v for k, v in headers.items()
                               if k.lower() not in ("content-length", "content-type", "content-range")}
                url = new_url
                continue
            return resp

    @staticmethod
    def _fail(method, url, error, attempts):
        if isinstance(error, ProxyError) and error.original_error is not None:
            error = error.original_error
        if isinstance(error, Urllib3SSLError) and error.args and isinstance(error.args[0], ssl.SSLError):
            error = error.args[0]   # urllib3 wraps the ssl module's error
        if isinstance(error, ssl.SSLCertVerificationError):
            raise RegistryError(
                f"{method} {url}: TLS certificate verification failed: {error.verify_message or error}"
                f" (put the registry's CA in {certs_dirs()[0] if certs_dirs() else 'certs.d'}"
                f"/{Origin.of(url).hostport}/ca.crt, or mark the registry insecure)") from None
        raise RegistryError(f"{method} {url}: {describe_error(error)}"
                            + (f" (after {attempts} attempts)" if attempts > 1 else "")) from error

    def _delay(self, failures, retry_after):
        if retry_after:
            seconds = _parse_retry_after(retry_after)
            if seconds is not None:
                return min(max(seconds, 0.0), MAX_RETRY_AFTER)
        base = self.backoff * (2 ** (max(failures, 1) - 1))
        return min(base, MAX_BACKOFF) * (0.5 + random.random() / 2)

    def sleep_backoff(self, failures):
        self._sleep(self._delay(failures, None))


# Retry-After's delay: whole seconds (RFC 9110 10.2.3: 1*DIGIT), a fraction or a sign taken
# as a lenient reader would ("-5" waits nothing).  Not float() alone: it reads "nan" (and
# time.sleep(nan) raises ValueError, a traceback out of a pull), "inf", "1e9" and "8_6400".
_RETRY_AFTER_SECONDS = re.compile(r"[-+]?[0-9]{1,30}(?:\.[0-9]{0,30})?", re.ASCII)


def _parse_retry_after(value):
    value = value.strip()
    if _RETRY_AFTER_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when is None:
        return None
    return when.timestamp() - time.time()


def _underlying(e):
    if isinstance(e, Urllib3Error) and isinstance(e.__cause__, OSError):
        e = e.__cause__                         # urllib3 wraps the socket's error
    if isinstance(e, ProtocolError) and e.args and isinstance(e.args[-1], BaseException):
        e = e.args[-1]                          # ("Connection broken: ...", the real error)
    return e


def is_timeout(e):
    return isinstance(_underlying(e), (socket.timeout, TimeoutError, ReadTimeoutError))


def _quote_line(line):
    line = line if isinstance(line, bytes) else str(line).encode()
    return repr(line.rstrip(b"\r\n")[:40])


def _chunk_size_error(e):
    """The ValueError of http.client's chunked reader under an IncompleteRead, or None.  read1()
    raises IncompleteRead(b'') from it; read(), read(n) and readinto() raise another
    IncompleteRead (the bytes they had) over that one."""
    while isinstance(e, http.client.IncompleteRead):
        e = e.__cause__ or e.__context__
    return e if isinstance(e, ValueError) else None


def describe_error(e):
    e = _underlying(e)
    if is_timeout(e):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve host: {e.strerror or e}"
    if isinstance(e, InvalidChunkLength):
        # an IncompleteRead too, whose count is urllib3's (0 for a body it did not decode itself)
        return f"broken chunked encoding: {_quote_line(e.length)} where a chunk size was expected"
    bad_size = _chunk_size_error(e)
    if bad_size is not None:
        # http.client's chunked reader failed on a chunk-size line (int(line, 16)); its
        # IncompleteRead(b'') said "closed after 0 bytes" whatever had arrived.  The line is
        # only in the ValueError's text (test_registry_units pins that wording)
        m = re.search(r"base 16: (b'.*'|b\".*\")$", str(bad_size))
        if m is None or m.group(1) in ("b''", 'b""'):
            return "connection closed between the chunks of a chunked body"
        line = re.sub(r"(\\r)?\\n(?=['\"]$)", "", m.group(1))   # the repr's line end
        return f"broken chunked encoding: {line[:60]} where a chunk size was expected"
    if isinstance(e, http.client.IncompleteRead):
        got = e.partial if isinstance(e.partial, int) else len(e.partial)
        return f"connection closed after {got} bytes of the body"
    if isinstance(e, HeadersCut):
        return str(e)
    if isinstance(e, http.client.RemoteDisconnected):
        return "server closed the connection without a response"
    if isinstance(e, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(e, ssl.SSLError):
        return f"TLS error: {e.reason or e}"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
