"""Registry credentials: docker's config.json, containers' auth.json, credential helpers.

Lookup order for a registry host (docker and podman habits):

1. ``$REGISTRY_AUTH_FILE`` or ``$XDG_RUNTIME_DIR/containers/auth.json`` (podman/skopeo);
2. ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``:
   ``credHelpers[host]`` -> ``docker-credential-<helper> get``, else ``credsStore`` ->
   ``docker-credential-<store> get``, else ``auths[host]`` (``auth`` = base64 "user:pass",
   or ``username``/``password``, or ``identitytoken``).

Keys of ``auths`` may be written as URLs (``https://host/v1/``): the host part is compared.
Docker Hub credentials are filed by docker under its index server URL, a subdomain of
``docker.io``; any key whose host is ``docker.io`` or ends in ``.docker.io`` counts for it.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional

from ..errors import AuthenticationError
from ..reference import DEFAULT_DOMAIN

HELPER_PREFIX = "docker-credential-"
HELPER_TIMEOUT = 30


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""   # OAuth2 refresh token (docker "identitytoken")
    source: str = ""

    def __repr__(self):  # never print secrets
        return f"Credentials(username={self.username!r}, source={self.source!r})"


def docker_config_path():
    d = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(d, "config.json")


def containers_auth_path():
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return env
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "containers", "auth.json")
    return None


def key_host(key):
    """Host part of an ``auths`` key: 'https://host:5000/v1/' -> 'host:5000'."""
    k = key.strip()
    if "://" in k:
        k = k.split("://", 1)[1]
    return k.split("/", 1)[0]


def _key_matches(key, host):
    h = key_host(key)
    if h == host:
        return True
    return host == DEFAULT_DOMAIN and h.endswith("." + DEFAULT_DOMAIN)


def _read_json(path):
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise AuthenticationError(f"cannot read credentials file {path}: {e}") from None
    if not isinstance(doc, dict):
        raise AuthenticationError(f"credentials file {path}: expected a JSON object")
    return doc


def _decode_entry(entry, path, key):
    if not isinstance(entry, dict):
        return None
    token = entry.get("identitytoken") or ""
    user, pw = entry.get("username") or "", entry.get("password") or ""
    auth = entry.get("auth")
    if auth:
        try:
            decoded = base64.b64decode(auth, validate=False).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise AuthenticationError(f"{path}: auths[{key!r}].auth is not base64 of 'user:password'") from None
        user, sep, pw = decoded.partition(":")
        if not sep:
            raise AuthenticationError(f"{path}: auths[{key!r}].auth is not base64 of 'user:password'")
    if not (user or pw or token):
        return None
    return Credentials(user, pw, token, f"{path} ({key})")


def _from_auths(doc, host, path):
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return None
    if host in auths:
        c = _decode_entry(auths[host], path, host)
        if c:
            return c
    for key, entry in auths.items():
        if key != host and _key_matches(key, host):
            c = _decode_entry(entry, path, key)
            if c:
                return c
    return None


def helper_get(helper, host):
    """Ask ``docker-credential-<helper>`` for a host's credentials (None when it has none)."""
    import subprocess   # here: most pulls ask no helper, and it costs 3-4 ms of start-up
    exe = shutil.which(HELPER_PREFIX + helper)
    if exe is None:
        raise AuthenticationError(f"credential helper {HELPER_PREFIX + helper} not found in PATH")
    try:
        proc = subprocess.run([exe, "get"], input=host.encode(), capture_output=True, timeout=HELPER_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AuthenticationError(f"credential helper {HELPER_PREFIX + helper} failed: {e}") from None
    if proc.returncode != 0:
        msg = (proc.stdout or proc.stderr).decode(errors="replace").strip()
        if "credentials not found" in msg.lower():
            return None
        raise AuthenticationError(f"credential helper {HELPER_PREFIX + helper} get {host}: {msg or 'failed'}")
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise AuthenticationError(f"credential helper {HELPER_PREFIX + helper} returned invalid JSON") from None
    user, secret = doc.get("Username") or "", doc.get("Secret") or ""
    if not secret:
        return None
    if user == "<token>":
        return Credentials("", "", secret, HELPER_PREFIX + helper)
    return Credentials(user, secret, "", HELPER_PREFIX + helper)


def _helper_call(helper, action, payload):
    import subprocess
    exe = shutil.which(HELPER_PREFIX + helper)
    if exe is None:
        raise AuthenticationError(f"credential helper {HELPER_PREFIX + helper} not found in PATH")
    try:
        proc = subprocess.run([exe, action], input=payload, capture_output=True, timeout=HELPER_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AuthenticationError(f"credential helper {HELPER_PREFIX + helper} failed: {e}") from None
    if proc.returncode != 0:
        msg = (proc.stdout or proc.stderr).decode(errors="replace").strip()
        raise AuthenticationError(f"credential helper {HELPER_PREFIX + helper} {action}: {msg or 'failed'}")


def lookup(host):
    """Credentials for a registry host, or None (anonymous)."""
    path = containers_auth_path()
    if path:
        doc = _read_json(path)
        if doc:
            helpers = doc.get("credHelpers")
            if isinstance(helpers, dict) and isinstance(helpers.get(host), str):
                c = helper_get(helpers[host], host)
                if c:
                    return c
            c = _from_auths(doc, host, path)
            if c:
                return c
    path = docker_config_path()
    doc = _read_json(path)
    if not doc:
        return None
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict) and isinstance(helpers.get(host), str):
        return helper_get(helpers[host], host)
    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        c = helper_get(store, host)
        if c:
            return c
    return _from_auths(doc, host, path)


# --- login / logout ------------------------------------------------------------------------

def _write_json_atomic(path, doc):
    # A config.json that is a symlink (a dotfile manager's) stays one: its target is replaced, by
    # a temp file in the target's own directory, as docker's configfile.Save does.  Like docker,
    # only the link's own directory is ever made: a link to nothing gets its target file made
    # where the target's directory exists, and is refused where it does not (docker renames its
    # temp file onto the first missing component then, a file where a directory was meant).
    if os.path.islink(path):
        target = os.path.realpath(path)
        d = os.path.dirname(target)
        if not os.path.isdir(d):
            raise AuthenticationError(f"cannot save credentials in {path}: it is a symlink to {target}, "
                                      f"and there is no directory {d}")
        path = target
    d = os.path.dirname(path) or "."
    os.makedirs(d, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent="\t")
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def store(host, username, password, authfile=None):
    """Save credentials like ``docker login``: a credential helper when configured, else
    base64 in the ``auths`` of the file.  Returns where they went."""
    path = authfile or docker_config_path()
    doc = _read_json(path) or {}
    if authfile is None:
        helpers = doc.get("credHelpers") if isinstance(doc.get("credHelpers"), dict) else {}
        helper = helpers.get(host) or doc.get("credsStore")
        if isinstance(helper, str) and helper:
            _helper_call(helper, "store", json.dumps(
                {"ServerURL": host, "Username": username, "Secret": password}).encode())
            auths = doc.setdefault("auths", {})
            if not isinstance(auths, dict):
                raise AuthenticationError(f"{path}: 'auths' is not an object")
            if helper == doc.get("credsStore") and host not in helpers:
                auths.setdefault(host, {})   # docker keeps an empty marker entry
                _write_json_atomic(path, doc)
            return HELPER_PREFIX + helper
    auths = doc.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise AuthenticationError(f"{path}: 'auths' is not an object")
    auths[host] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    _write_json_atomic(path, doc)
    return path


def erase(host, authfile=None):
    """Remove a host's credentials (every matching ``auths`` key and the helper's entry).
    Returns True if something was removed."""
    removed = False
    paths = [authfile] if authfile else [p for p in (containers_auth_path(), docker_config_path()) if p]
    for path in paths:
        doc = _read_json(path)
        if not doc:
            continue
        changed = False
        helpers = doc.get("credHelpers") if isinstance(doc.get("credHelpers"), dict) else {}
        helper = helpers.get(host) or doc.get("credsStore")
        if authfile is None and isinstance(helper, str) and helper:
            try:
                _helper_call(helper, "erase", host.encode())
                removed = True
            except AuthenticationError:
                pass
        auths = doc.get("auths")
        if isinstance(auths, dict):
            for key in [k for k in auths if _key_matches(k, host)]:
                del auths[key]
                changed = removed = True
        if changed:
            _write_json_atomic(path, doc)
    return removed


def basic_header(creds: Optional[Credentials]):
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()
