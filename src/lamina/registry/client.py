"""Distribution-spec v2 client: endpoints, authentication, manifests and blobs.

A :class:`RegistryClient` holds what is shared across repositories and
threads (transport and its connection pools, configuration, credentials,
tokens).  ``client.repository(ref)`` gives a :class:`Repository` bound to one
endpoint; ``client.repositories(ref)`` gives one per endpoint to try (mirrors
first).

Authentication follows docker: a ``GET /v2/`` ping learns the scheme (HTTPS;
loopback and insecure registries may fall back to plain HTTP) and the
challenge.  ``Bearer`` challenges get a token from the realm (anonymously, or
with basic credentials, or an identity token through the OAuth2 refresh
grant) for the repository scopes asked, cached until shortly before it
expires and fetched again on a 401 (``insufficient_scope`` adds the scope
asked by the registry).  ``Basic`` challenges get the stored credentials.
"""
from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from typing import Optional

from .. import digest as _digest
from .. import mediatypes as mt
from ..errors import (AuthenticationError, BlobNotFoundError, ImageNotFoundError, LaminaError, RegistryError,
                      UnsupportedMediaTypeError)
from ..limits import MAX_MANIFEST_SIZE  # distribution's own limit, the same for layouts
from ..oci.model import document_media_type, load_json
from ..quoting import quote_name
from ..reference import TAG_PATTERN, Reference
from . import credentials as _creds
from .config import Endpoint, RegistryConfig, insecure_hosts, is_loopback
from .transport import CONNECTION_ERRORS, Origin, TLSPolicy, Transport, resolve_url

MANIFEST_ACCEPT = ", ".join([
    mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST,
    # Accepted only to recognise and refuse them with a clear message.
    mt.DOCKER_SCHEMA1_SIGNED_MANIFEST + ";q=0.5", mt.DOCKER_SCHEMA1_MANIFEST + ";q=0.5",
])
MAX_ERROR_BODY = 1 << 16
# tags/list pages one repository may take (docker hub serves 100 tags a page: a million tags)
MAX_TAG_PAGES = 10_000
MAX_TOKEN_BODY = 1 << 20
TOKEN_DEFAULT_EXPIRY = 60     # seconds, per the token spec
TOKEN_MAX_EXPIRY = 86400      # a token is asked for again after a day, whatever its server said


def parse_challenges(header):
    """Every challenge of a WWW-Authenticate value, in order: ``Bearer realm="x",service="y",
    Basic realm="z"`` -> [("bearer", {"realm": "x", "service": "y"}), ("basic", {"realm": "z"})].
    Several header lines come joined by ", ", so a challenge ends where a name without "=" starts."""
    challenges = []
    rest, i, n = header or "", 0, len(header or "")
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        j = i
        while j < n and rest[j] not in "= ,":
            j += 1
        name = rest[i:j]
        if j >= n or rest[j] != "=":
            if name:
                challenges.append((name.lower(), {}))   # a scheme: a new challenge
            i = j + 1
            continue
        j += 1
        if j < n and rest[j] == '"':
            j += 1
            val = []
            while j < n and rest[j] != '"':
                if rest[j] == "\\" and j + 1 < n:
                    j += 1
                val.append(rest[j])
                j += 1
            value = "".join(val)
            j += 1
        else:
            k = j
            while j < n and rest[j] != ",":
                j += 1
            value = rest[k:j].strip()
        if name and challenges:   # a parameter before any scheme belongs to none
            challenges[-1][1][name.lower()] = value
        i = j
    return challenges


def parse_challenge(header):
    """The challenge lamina answers: the first Bearer one, else the first Basic one, else the
    first (containerd's choice among several); (None, {}) when there is none."""
    challenges = parse_challenges(header)
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c[0] == scheme:
                return c
    return challenges[0] if challenges else (None, {})


# Visible ASCII and spaces: what an HTTP header value may hold (RFC 9110 field-vchar, no obs-text).
_TOKEN_RE = re.compile(r"[\x21-\x7e]+(?: +[\x21-\x7e]+)*")


def _go_field(doc, name):
    """``doc``'s value for the struct field ``name`` as Go's encoding/json fills it: the last key
    equal to it up to case ("Token", "TOKEN")."""
    value = None
    for key, v in doc.items():
        if key.casefold() == name:
            value = v
    return value


def registry_json(body):
    """A registry's or token server's JSON answer, or None when it is not JSON lamina can read:
    such a body is hostile input like any other (nested thousands deep it is a RecursionError,
    not a ValueError, out of json.loads)."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def error_message(resp_body, status, reason=""):
    """A short message from a registry's JSON error body (``{"errors": [{code, message, detail}]}``)."""
    doc = registry_json(resp_body)
    errs = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errs, list) and errs:
        parts = []
        for e in errs[:3]:
            if not isinstance(e, dict):
                continue
            code = _text(e.get("code")).lower().replace("_", " ")
            msg = _text(e.get("message")).strip()
            if code or msg:
                parts.append(f"{code}: {msg}" if msg and msg.lower() != code else (code or msg))
        if parts:
            return "; ".join(parts)
    text = resp_body[:200].decode("utf-8", "replace").strip() if resp_body else ""
    return f"{status} {reason}".strip() + (f": {text}" if text and "<" not in text[:1] else "")


def _text(value):
    # a number is shown as it is; a list or object nested deep would not even print
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""


def error_code(resp_body):
    doc = registry_json(resp_body)
    errs = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errs, list) and errs and isinstance(errs[0], dict) and "code" in errs[0]:
        return _text(errs[0]["code"])
    return None


# RFC 8288: link-value = "<" URI-Reference ">" *( OWS ";" OWS link-param ), link-params are
# token [ "=" ( token / quoted-string ) ]; several link-values (or Link lines, joined) by ",".
# No "<" inside the brackets (no URI holds one): a header of thousands of "<" is read once, not
# once for each (30 s for 60,000 of them).
_LINK_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM_VALUE = r'"(?:[^"\\]|\\.)*"|[^\s;,"]*'
_LINK_VALUE = re.compile(rf"<([^<>]*)>((?:\s*;\s*{_LINK_TOKEN}\s*(?:=\s*(?:{_PARAM_VALUE}))?)*)")
_LINK_PARAM = re.compile(rf"\s*;\s*({_LINK_TOKEN})\s*(?:=\s*({_PARAM_VALUE}))?")


def next_link(header):
    """The URL of a Link header's link whose relation types hold ``next``, or None.  Its params
    come in any order, ``rel`` is a space-separated list compared without case, and only the
    first ``rel`` of a link counts (RFC 8288 3.3): docker-registry writes ``<URL>; rel="next"``,
    other registries and proxies need not."""
    for m in _LINK_VALUE.finditer(header or ""):
        for p in _LINK_PARAM.finditer(m.group(2)):
            if p.group(1).lower() == "rel":
                value = p.group(2) or ""
                if value.startswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                if "next" in value.lower().split():
                    return m.group(1)
                break
    return None


class Session:
    """Per-endpoint state: resolved base URL, challenge, token cache."""

    def __init__(self, client, endpoint: Endpoint):
        self.client, self.endpoint = client, endpoint
        self.host = endpoint.host
        self.base = None                  # "https://host:port"
        self.challenge = (None, {})
        self._tokens = {}                 # frozenset(scopes) -> (token, expires_at monotonic)
        self._lock = threading.Lock()
        self._creds_loaded = False
        self._creds = None

    @property
    def transport(self):
        return self.client.transport

    def credentials(self):
        if not self._creds_loaded:
            self._creds = self.client.credentials_for(self.endpoint.credentials_key or self.host)
            self._creds_loaded = True
        return self._creds

    # --- discovery -------------------------------------------------------------------

    def ready(self):
        with self._lock:
            if self.base is None:
                self._ping()
            return self.base

    def _ping(self):
        ep = self.endpoint
        may_http = ep.insecure or is_loopback(ep.host)
        schemes = [ep.scheme] if ep.scheme else (["https", "http"] if may_http else ["https"])
        last = None
        for i, scheme in enumerate(schemes):
            base = f"{scheme}://{ep.host}"
            fallback_left = i + 1 < len(schemes)
            try:
                resp = self._get_v2(base, retry=not fallback_left, probe=scheme == "https" and fallback_left)
            except RegistryError as e:
                last = e
                if fallback_left and "certificate verification failed" not in str(e):
                    continue
                raise RegistryError(f"registry {ep.host} is not reachable: {_strip_method(e)}") from None
            body = resp.content(limit=MAX_ERROR_BODY) if resp.status != 200 else (resp.drain() or b"")
            if resp.status == 401 and Origin.of(resp.url) != Origin.of(base):
                # The ping was redirected and the other origin asks for credentials: its challenge
                # is not the registry's (docker files challenges under the host that sent them),
                # and answering it would send the registry's credentials to the realm it names.
                raise _foreign_challenge(f"GET {base}/v2/", resp.url)
            if resp.status == 401:
                self.challenge = parse_challenge(resp.header("WWW-Authenticate"))
            elif resp.status in (200,):
                self.challenge = (None, {})
            elif resp.status == 404:
                raise RegistryError(f"{base}/v2/: 404 not found: {ep.host} does not serve the registry API v2",
                                    status=404)
            else:
                raise RegistryError(f"{base}/v2/: {error_message(body, resp.status, resp.reason)}",
                                    status=resp.status)
            self.base = base
            return
        raise last  # pragma: no cover

    def _get_v2(self, base, *, retry, probe):
        """GET /v2/.  ``probe``: HTTPS that may fall back to plain HTTP, tried first without the
        system's CAs (most such endpoints do not speak TLS at all; loading the CAs would cost
        more than the request); an endpoint that does speak TLS and that certs.d does not vouch
        for gets the usual verification with the system's CAs."""
        if probe:
            try:
                return self.transport.request("GET", base + "/v2/", retry=retry, tls_probe=True)
            except RegistryError as e:
                if "certificate verification failed" not in str(e):
                    raise
        return self.transport.request("GET", base + "/v2/", retry=retry)

    # --- authorization ------------------------------------------------------------------

    def authorization(self, scopes, *, refresh=False):
        scheme, params = self.challenge
        if scheme == "bearer":
            return "Bearer " + self._token(params, scopes, refresh)
        if scheme == "basic":
            creds = self.credentials()
            if creds is None or not (creds.username or creds.password):
                raise AuthenticationError(
                    f"{self.host}: authentication required (no credentials; run 'lamina login {self.host}')")
            return _creds.basic_header(creds)
        return None

    def _token(self, params, scopes, refresh):
        key = frozenset(scopes)
        with self._lock:
            cached = self._tokens.get(key)
            if cached and not refresh and cached[1] > time.monotonic():
                return cached[0]
            token, ttl = self._fetch_token(params, sorted(scopes))
            margin = min(10.0, ttl / 10)
            self._tokens[key] = (token, time.monotonic() + ttl - margin)
            return token

    def _fetch_token(self, params, scopes):
        realm = params.get("realm")
        if not realm:
            raise AuthenticationError(f"{self.host}: bearer challenge without a realm")
        try:
            # the origin the request goes to, not the realm's netloc: "http://127.0.0.1:80@evil/"
            # looked like loopback and took the basic credentials to evil in clear
            realm_origin = Origin.of(realm)
        except RegistryError as e:
            raise AuthenticationError(f"{self.host}: invalid token realm {realm!r} ({e})") from None
        netloc = realm_origin.hostport
        insecure = self.client.config.insecure
        if (realm_origin.scheme == "http" and not is_loopback(realm_origin.host) and netloc not in insecure
                and f"{realm_origin.host}:{realm_origin.port}" not in insecure):
            # The basic credentials (or identity token) go to the realm.  A registry marked
            # insecure and spoken to over plain HTTP already has them cross the network in clear;
            # one spoken to over HTTPS (insecure for a self-signed certificate) must not have
            # them sent in clear to another host: only marking that host insecure allows it.
            if not self.endpoint.insecure:
                raise AuthenticationError(f"{self.host}: refusing plain-HTTP token realm {realm!r} "
                                          "(mark the registry insecure to allow it)")
            if self.base is None or not self.base.startswith("http:"):
                raise AuthenticationError(
                    f"{self.host}: refusing plain-HTTP token realm {realm!r} of a registry reached over "
                    f"HTTPS: the credentials would cross the network in clear (mark {netloc} "
                    "insecure to allow it)")
        service = params.get("service")
        creds = self.credentials()
        headers = {"Accept": "application/json"}
        if creds is not None and creds.identity_token:
            form = [("grant_type", "refresh_token"), ("refresh_token", creds.identity_token),
                    ("client_id", "lamina")]
            if service:
                form.append(("service", service))
            if scopes:
                form.append(("scope", " ".join(scopes)))
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            resp = self.transport.request("POST", realm, headers=headers, body=data, secret_body=True)
        else:
            query = []
            if service:
                query.append(("service", service))
            query += [("scope", s) for s in scopes]
            if creds is not None and (creds.username or creds.password):
                headers["Authorization"] = _creds.basic_header(creds)
                query.append(("account", creds.username))
            sep = "&" if urllib.parse.urlsplit(realm).query else "?"
            url = realm + (sep + urllib.parse.urlencode(query) if query else "")
            resp = self.transport.request("GET", url, headers=headers)
        body = resp.content(limit=MAX_TOKEN_BODY)
        if resp.status in (401, 403):
            who = f" as {creds.username!r}" if creds and creds.username else ""
            raise AuthenticationError(
                f"{self.host}: token server refused the credentials{who}: "
                f"{error_message(body, resp.status, resp.reason)}", status=resp.status)
        if resp.status != 200:
            raise AuthenticationError(f"{self.host}: token request to {realm} failed: "
                                      f"{error_message(body, resp.status, resp.reason)}", status=resp.status)
        doc = registry_json(body)
        if doc is None:
            raise AuthenticationError(f"{self.host}: token server sent invalid JSON")
        if not isinstance(doc, dict):
            raise AuthenticationError(f"{self.host}: token server sent no token")
        # docker's client: "access_token" (OAuth2) is used over "token" when both are there
        token = _go_field(doc, "access_token") or _go_field(doc, "token")
        if not isinstance(token, str) or not token:
            raise AuthenticationError(f"{self.host}: token server sent no token")
        if not _TOKEN_RE.fullmatch(token):
            # a CR/LF would end the Authorization header and start another one (Go's http refuses
            # such a header value too); said here, not as http.client's "Invalid header value"
            raise AuthenticationError(f"{self.host}: token server sent a token that is no HTTP header value "
                                      f"({len(token)} characters, not all printable ASCII)")
        ttl = _go_field(doc, "expires_in")
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not 0 < ttl < float("inf"):
            ttl = TOKEN_DEFAULT_EXPIRY  # also NaN, and a number of 400 digits that no float holds
        return token, float(min(ttl, TOKEN_MAX_EXPIRY))

    def forget_tokens(self):
        with self._lock:
            self._tokens.clear()


def _foreign_challenge(what, url, redirected=True):
    """The error for a 401 from ``url``, an origin other than the registry's."""
    origin = Origin.of(url)
    return AuthenticationError(f"{what}: {'redirected to ' if redirected else ''}{origin.host}:{origin.port}, "
                               "which asks for credentials: lamina sends the registry's to the registry only",
                               status=401)


def _strip_method(e):
    s = str(e)
    # "GET https://h/v2/: connection refused" -> "connection refused"
    if s.startswith(("GET ", "HEAD ")) and ": " in s:
        return s.split(": ", 1)[1]
    return s


class ManifestResponse:
    def __init__(self, data, media_type, digest, document):
        self.data, self.media_type, self.digest, self.document = data, media_type, digest, document

    @property
    def is_index(self):
        return mt.is_index(self.media_type)


def manifest_response(data, digest, content_type, what):
    """A manifest or index the registry describes by ``content_type``, as a ManifestResponse."""
    content_type = (content_type or "").split(";")[0].strip()
    if content_type in mt.SCHEMA1_TYPES:
        raise UnsupportedMediaTypeError(f"{what}: {mt.SCHEMA1_MESSAGE}")
    doc = load_json(data, f"manifest {what}")
    # The Content-Type is the registry's descriptor of the document: when it names a manifest or
    # index type, the document must agree with it (a generic type such as application/json
    # says nothing and the document's own mediaType or shape decides).
    announced = content_type if content_type in mt.INDEX_TYPES or content_type in mt.MANIFEST_TYPES else None
    media_type = document_media_type(doc, announced, f"manifest {what}")
    return ManifestResponse(data, media_type, digest, doc)


class Repository:
    """One repository on one endpoint."""

    def __init__(self, session: Session, path: str, actions=("pull",), name: Optional[str] = None):
        self.session = session
        self.path = path                  # path on this endpoint
        self.name = name or f"{session.host}/{path}"
        self.actions = tuple(actions)
        self.extra_scopes = set()

    @property
    def host(self):
        return self.session.host

    @property
    def is_mirror(self):
        return self.session.endpoint.mirror

    def scopes(self):
        return {f"repository:{self.path}:{','.join(self.actions)}"} | self.extra_scopes

    def url(self, suffix):
        return f"{self.session.ready()}/v2/{self.path}/{suffix}"

    # --- the authenticated request loop ------------------------------------------------------

    def request(self, method, url, *, headers=None, body=None, retry=True, follow_redirects=True, what=None):
        """Send with authorization; on 401 learn the challenge and retry with fresh credentials.
        ``what``: the request as a refusal names it ("GET manifest host/app:1"; by default the
        method and the repository)."""
        what = what or f"{method} {self.name}"
        base = self.session.ready()
        # A URL the registry handed us (a tags page's Link, an upload's Location) may name another
        # host: it gets no credentials, as the redirects do not (docker's are keyed to the host too).
        own = Origin.of(url) == Origin.of(base)
        scopes = self.scopes()
        refresh = False
        data = b""
        for attempt in range(3):
            h = dict(headers or {})
            auth = self.session.authorization(scopes, refresh=refresh) if own else None
            if auth:
                h["Authorization"] = auth
            resp = self.session.transport.request(method, url, headers=h, body=body, retry=retry,
                                                  follow_redirects=follow_redirects)
            if resp.status == 403:
                data = resp.content(limit=MAX_ERROR_BODY)
                raise AuthenticationError(f"{what}: access denied: {error_message(data, 403, resp.reason)}",
                                          status=403)
            if resp.status != 401:
                return resp
            data = resp.content(limit=MAX_ERROR_BODY)
            if not own or (resp.url != url and Origin.of(resp.url) != Origin.of(url)):
                # A host a redirect led to (object storage, a CDN, anyone) asks for credentials: its
                # challenge is not the registry's, and answering it would hand the registry's
                # credentials (or a token fetched with them) to whatever realm it names.
                raise _foreign_challenge(what, resp.url, redirected=own)
            scheme, params = parse_challenge(resp.header("WWW-Authenticate"))
            if scheme is None:
                break
            wanted = set(scopes)
            if scheme == "bearer" and params.get("scope"):
                wanted |= set(params["scope"].split(" "))
            if attempt > 0 and wanted == scopes and scheme == self.session.challenge[0]:
                break   # fresh credentials for the same scopes were refused again
            self.session.challenge = (scheme, params)
            scopes, refresh = wanted, True
        creds = self.session.credentials()
        hint = "" if creds else f" (no credentials; run 'lamina login {self.host}')"
        raise AuthenticationError(
            f"{what}: authentication failed: {error_message(data, 401, 'Unauthorized')}{hint}", status=401)

    def _fail(self, resp, what):
        data = resp.content(limit=MAX_ERROR_BODY)
        msg = error_message(data, resp.status, resp.reason)
        raise RegistryError(f"{what}: {msg}", status=resp.status, code=error_code(data))

    # --- manifests -------------------------------------------------------------------------

    def get_manifest(self, reference: str, *, head=False) -> ManifestResponse:
        """Fetch a manifest or index by tag or digest and check its digest."""
        is_digest = reference.startswith("sha256:")
        if is_digest:
            _digest.validate(reference, f"{self.name}@{reference}")
        sep = "@" if is_digest else ":"
        what = f"{self.name}{sep}{reference}"
        resp = self.request("GET", self.url(f"manifests/{reference}"), headers={"Accept": MANIFEST_ACCEPT},
                            what=f"GET manifest {what}")
        if resp.status == 404:
            data = resp.content(limit=MAX_ERROR_BODY)
            raise ImageNotFoundError(f"manifest for {what} not found: {error_message(data, 404, 'Not Found')}")
        if resp.status != 200:
            self._fail(resp, f"GET manifest {what}")
        data = resp.content(limit=MAX_MANIFEST_SIZE)
        encoding = (resp.header("Content-Encoding") or "").strip()
        if encoding.lower() not in ("", "identity"):
            # lamina asks for the bytes as stored (Accept-Encoding: identity), as a Go client with
            # its own Accept-Encoding does, which then also gets the body undecoded: the JSON
            # parser's "not UTF-8" said nothing of why
            raise RegistryError(f"manifest {what}: the registry sent it with Content-Encoding: "
                                f"{encoding[:40]}, which lamina did not ask for (it takes identity only)")
        actual = _digest.sha256_bytes(data)
        if is_digest and actual != reference:
            raise RegistryError(f"manifest {what}: registry sent content with digest {actual}")
        header_digest = (resp.header("Docker-Content-Digest") or "").strip()
        if header_digest and header_digest.startswith("sha256:") and header_digest != actual:
            raise RegistryError(f"manifest {what}: content digest {actual} does not match the "
                                f"Docker-Content-Digest header {header_digest}")
        return manifest_response(data, actual, resp.header("Content-Type"), what)

    def known_manifest(self, reference, known):
        """The manifest ``reference`` names, from ``known(digest)`` (the bytes of a document the
        caller holds, or None) when a HEAD says its digest; None when the GET must decide.

        containerd resolves a reference so (docker too since 20.10), and takes the document
        from its content store: a pull of an image that has not changed sends no GET, which
        Docker Hub counts against its pull rate limit and a HEAD not."""
        is_digest = reference.startswith("sha256:")
        if is_digest:
            _digest.validate(reference, f"{self.name}@{reference}")
        self.session.ready()   # an unreachable registry is said once, by the ping, not again by the GET
        try:
            resp = self.request("HEAD", self.url(f"manifests/{reference}"), headers={"Accept": MANIFEST_ACCEPT})
        except RegistryError:
            return None   # the GET's answer, with its error body, says what is wrong
        resp.close()
        digest = (resp.header("Docker-Content-Digest") or "").strip()
        if is_digest and not digest:
            digest = reference
        if resp.status != 200 or not _digest.is_valid(digest) or (is_digest and digest != reference):
            return None
        data = known(digest)
        # a HEAD whose length is not the document's contradicts itself: the GET decides
        if data is None or (resp.length is not None and resp.length != len(data)) \
                or _digest.sha256_bytes(data) != digest:
            return None
        what = f"{self.name}{'@' if is_digest else ':'}{reference}"
        try:
            return manifest_response(data, digest, resp.header("Content-Type"), what)
        except LaminaError:
            return None   # a digest of a layer or config the store holds, a type the document denies

    def put_manifest(self, reference, data, media_type):
        resp = self.request("PUT", self.url(f"manifests/{reference}"), headers={"Content-Type": media_type},
                            body=data, what=f"PUT manifest {self.name}:{reference}")
        if resp.status not in (200, 201, 202):
            self._fail(resp, f"PUT manifest {self.name}:{reference}")
        resp.drain()
        return resp.header("Docker-Content-Digest")

    def list_tags(self):
        """Every tag of the repository (the registry's tags/list, all pages), sorted."""
        tags, url, fetched = [], self.url("tags/list"), {}   # url -> its page number
        while url:
            # a next link back to a page already read (or an endless chain of them) would page forever
            if url in fetched:
                raise RegistryError(f"tags of {self.name}: the registry's next page is page {fetched[url]}"
                                    f" again ({url}): its pagination loops")
            if len(fetched) == MAX_TAG_PAGES:
                raise RegistryError(f"tags of {self.name}: more than {MAX_TAG_PAGES} pages")
            fetched[url] = len(fetched) + 1
            resp = self.request("GET", url, what=f"GET tags of {self.name}")
            if resp.status == 404:
                data = resp.content(limit=MAX_ERROR_BODY)
                raise ImageNotFoundError(f"repository {self.name} not found: {error_message(data, 404, 'Not Found')}")
            if resp.status != 200:
                self._fail(resp, f"GET tags of {self.name}")
            doc = registry_json(resp.content(limit=MAX_MANIFEST_SIZE))
            if not isinstance(doc, dict):
                raise RegistryError(f"tags of {self.name}: invalid JSON")
            page = doc.get("tags") or []
            if not isinstance(page, list):  # a string would give its letters as tags
                raise RegistryError(f"tags of {self.name}: \"tags\" is a {type(page).__name__}, not a list")
            page = [t for t in page if isinstance(t, str)]
            for t in page:
                if not re.fullmatch(TAG_PATTERN, t):  # "x@sha256:..." would pull by digest, "../x"...
                    raise RegistryError(f"tags of {self.name}: the registry lists {quote_name(t)}, which is not "
                                        "a tag (docker refuses it too)")
            tags += page
            link = next_link(resp.header("Link"))
            url = resolve_url(url, link, f"tags of {self.name}: next page") if link else None
        return sorted(set(tags))

    # --- blobs -----------------------------------------------------------------------------------

    def open_blob(self, digest, offset=0):
        """A streaming response for a blob from ``offset``; status 200 (whole blob) or 206."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = self.request("GET", self.url(f"blobs/{digest}"), headers=headers,
                            what=f"GET blob {digest} from {self.name}")
        if resp.status == 404:
            data = resp.content(limit=MAX_ERROR_BODY)
            raise BlobNotFoundError(f"blob {digest} not found in {self.name}: "
                                    f"{error_message(data, 404, 'Not Found')}")
        if resp.status not in (200, 206):
            self._fail(resp, f"GET blob {digest} from {self.name}")
        return resp

    def get_blob(self, digest, limit):
        """A small blob's bytes (configs), verified."""
        resp = self.open_blob(digest)
        data = resp.content(limit=limit)
        actual = _digest.sha256_bytes(data)
        if actual != digest:
            raise RegistryError(f"blob {digest} from {self.name}: registry sent content with digest {actual}")
        return data

    def blob_exists(self, digest):
        resp = self.request("HEAD", self.url(f"blobs/{digest}"), what=f"HEAD blob {digest} in {self.name}")
        resp.close()
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise RegistryError(f"HEAD blob {digest} in {self.name}: {resp.status} {resp.reason}", status=resp.status)

    # --- uploads -----------------------------------------------------------------------------------

    def start_upload(self, mount=None, from_path=None, digest=None):
        """POST an upload (of blob ``digest``, named in errors).  Returns ("mounted", None, 0) or
        ("upload", location URL, the least length of a chunk but the last the registry takes:
        its OCI-Chunk-Min-Length, else 0)."""
        url = self.url("blobs/uploads/")
        if mount:
            url += "?" + urllib.parse.urlencode({"mount": mount, "from": from_path})
        blob = mount or digest
        resp = self.request("POST", url, what=f"POST upload of {blob} to {self.name}" if blob else None)
        if resp.status == 201 and mount:
            resp.drain()
            return "mounted", None, 0
        if resp.status != 202:
            self._fail(resp, f"POST upload to {self.name}")
        location = resp.header("Location")
        min_chunk = (resp.header("OCI-Chunk-Min-Length") or "").strip()
        resp.drain()
        if not location:
            raise RegistryError(f"POST upload to {self.name}: no Location in the answer")
        # distribution-spec 1.1: chunks but the last SHOULD be at least this long (object stores
        # behind a registry refuse smaller parts).  Not a number: no minimum said.
        min_chunk = int(min_chunk) if re.fullmatch(r"[0-9]{1,19}", min_chunk, re.ASCII) else 0
        return "upload", resolve_url(url, location, f"POST upload to {self.name}: Location"), min_chunk

    def cancel_upload(self, location):
        """DELETE an upload session not used.  A failure is left be: the registry expires sessions
        (distribution after a week), and a push must not fail for a session it did not need.
        distribution wants the "delete" action for it: behind a token server that is one token
        request more (docker's cancel asks for it too), refused to a user who may not delete."""
        try:
            self.request("DELETE", location, retry=False).drain()
        except (LaminaError, *CONNECTION_ERRORS):
            pass

    @staticmethod
    def with_query(url, **params):
        u = urllib.parse.urlsplit(url)
        q = urllib.parse.parse_qsl(u.query, keep_blank_values=True)
        q += list(params.items())
        return urllib.parse.urlunsplit((u.scheme, u.netloc, u.path, urllib.parse.urlencode(q), u.fragment))


class RegistryClient:
    """Entry point: configuration, credentials and sessions shared by every repository."""

    def __init__(self, *, config: Optional[RegistryConfig] = None, transport: Optional[Transport] = None,
                 credentials=None, insecure=()):
        self.config = config or RegistryConfig.load(insecure=insecure)
        if insecure:
            self.config.insecure |= insecure_hosts(insecure)
        self.transport = transport or Transport(tls=TLSPolicy())
        self._credentials = credentials   # None (look up), or {host: Credentials} / callable(host)
        self._sessions = {}
        self._lock = threading.Lock()

    def credentials_for(self, host):
        c = self._credentials
        if callable(c):
            return c(host)
        if isinstance(c, dict):
            return c.get(host)
        return _creds.lookup(host)

    def session(self, endpoint: Endpoint) -> Session:
        with self._lock:
            s = self._sessions.get(endpoint)
            if s is None:
                if endpoint.insecure:
                    self.transport.tls.mark_insecure(endpoint.host)
                s = self._sessions[endpoint] = Session(self, endpoint)
            return s

    def repositories(self, ref, actions=("pull",), *, for_push=False):
        """Repositories to try for ``ref`` (Reference or str), mirrors first."""
        if not isinstance(ref, Reference):
            ref = Reference.parse(ref)
        out = []
        for ep in self.config.endpoints(ref.domain, ref.path, for_push=for_push):
            if not ep.serves(ref.digest is not None):
                continue
            out.append(Repository(self.session(ep), ep.repo_path(ref.path), actions, name=ref.name
                                  if not ep.mirror else f"{ep.host}/{ep.repo_path(ref.path)}"))
        return out

    def repository(self, ref, actions=("pull",)):
        """The registry's own repository (no mirrors): for pushes, logins, manifest PUTs."""
        return self.repositories(ref, actions, for_push=True)[-1]

    def close(self):
        self.transport.close()
