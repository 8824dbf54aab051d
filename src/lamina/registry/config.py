"""Where to send a repository's requests: endpoints, mirrors, insecure registries.

Two familiar formats are read, both TOML:

1. a ``registries.conf``-style file (containers-registries.conf v2 habits)::

       [[registry]]
       prefix = "docker.io"          # matched against "domain/path" of the reference; default: location
       location = "docker.io"        # endpoint that serves it (host[:port][/namespace])
       insecure = false              # plain HTTP allowed, TLS not verified
       blocked = false

       [[registry.mirror]]           # tried first, in order, for pulls
       location = "127.0.0.1:5001"
       insecure = true
       pull-from-mirror = "all"      # or "digest-only" / "tag-only"

   looked up in ``$LAMINA_REGISTRIES_CONFIG``, else ``$XDG_CONFIG_HOME/lamina/registries.toml``
   (``~/.config/...``), else ``/etc/lamina/registries.toml``.

2. containerd's ``hosts.toml`` in a certs.d directory (``DIR/HOST[:PORT]/hosts.toml``)::

       server = "https://registry.internal:5000"
       [host."http://127.0.0.1:5001"]
         capabilities = ["pull", "resolve"]
         skip_verify = true

   with the same directories as the TLS files (``$LAMINA_CERTS_D`` or /etc/docker/certs.d,
   /etc/containers/certs.d).

Plain HTTP is used only for loopback registries and those marked insecure
(config, ``$LAMINA_INSECURE_REGISTRIES`` comma list, or ``--insecure``).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from ..errors import RegistryError
from .transport import certs_dirs


def _toml_module():
    # Imported only when a configuration file exists (start-up time of every pull).
    if sys.version_info >= (3, 11):
        import tomllib
        return tomllib
    import tomli  # pragma: no cover - Python 3.9/3.10: the "tomli" dependency
    return tomli


@dataclass(frozen=True)
class Endpoint:
    """One place a repository can be fetched from."""
    host: str                       # host[:port] as written in references
    namespace: str = ""             # path prefix inside the endpoint (mirror "host/ns")
    scheme: Optional[str] = None    # "http"/"https" when fixed by config; None = decide (https, loopback may fall back)
    insecure: bool = False          # skip TLS verification, plain HTTP allowed
    mirror: bool = False
    pull_from_mirror: str = "all"
    remove_prefix: str = ""         # part of the repository path the namespace replaces
    credentials_key: str = ""       # host whose stored credentials apply (default: host)

    def repo_path(self, path):
        if self.remove_prefix and (path == self.remove_prefix or path.startswith(self.remove_prefix + "/")):
            path = path[len(self.remove_prefix):].lstrip("/")
        if self.namespace:
            return f"{self.namespace}/{path}" if path else self.namespace
        return path

    def serves(self, has_digest):
        if not self.mirror or self.pull_from_mirror == "all":
            return True
        if self.pull_from_mirror == "digest-only":
            return has_digest
        if self.pull_from_mirror == "tag-only":
            return not has_digest
        return True


# Registries whose API is served from another host than their reference domain: Docker
# Hub's references say docker.io, its distribution API lives elsewhere (as in docker itself).
DEFAULT_ENDPOINTS = {"docker.io": "registry-1.docker.io"}


def is_loopback(host):
    """True for localhost / 127.0.0.0/8 / ::1 (with or without a port), and for a name under
    .localhost that resolves to loopback addresses only."""
    h = host
    if h.startswith("["):
        h = h[1:h.index("]")] if "]" in h else h[1:]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    if h.lower() == "localhost":
        return True
    if h.lower().endswith(".localhost"):
        return _resolves_to_loopback_only(h)
    if not (h[:1].isdigit() or ":" in h):
        return False
    import ipaddress
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _resolves_to_loopback_only(name):
    """RFC 6761 asks resolvers to answer every *.localhost name with loopback, but glibc
    ("files dns") asks DNS for one not in /etc/hosts, and the answer may be any host: plain
    HTTP, and the credentials sent over it, must not follow the name there (docker, too,
    decides by the addresses a name resolves to)."""
    import ipaddress
    import socket
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%", 1)[0]).is_loopback for info in infos)


def _split_location(location):
    """'http://host:5000/ns' -> (scheme or None, 'host:5000', 'ns')."""
    scheme = None
    loc = location.strip()
    for s in ("http://", "https://"):
        if loc.lower().startswith(s):
            scheme, loc = s[:-3], loc[len(s):]
            break
    loc = loc.rstrip("/")
    host, _, ns = loc.partition("/")
    if not host:
        raise RegistryError(f"invalid registry location {location!r}")
    return scheme, host, ns


@dataclass
class RegistryRule:
    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirrors: list = field(default_factory=list)   # [(location, insecure, pull_from_mirror)]
    source: str = ""


def _load_toml(path):
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RegistryError(f"cannot read registry configuration {path}: {e}") from None
    try:
        with f:
            return _toml_module().load(f)
    except (OSError, ValueError) as e:
        raise RegistryError(f"cannot read registry configuration {path}: {e}") from None


def default_config_path():
    env = os.environ.get("LAMINA_REGISTRIES_CONFIG")
    if env is not None:
        return env or None
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    user = os.path.join(xdg, "lamina", "registries.toml")
    if os.path.exists(user):
        return user
    return "/etc/lamina/registries.toml"


def insecure_hosts(value):
    """The set of hosts an ``insecure=`` argument names: a list of hosts, or one host."""
    if value is None:
        return set()
    from ..apiargs import one_or_many
    return set(one_or_many(value, "insecure", "a registry host"))


class RegistryConfig:
    """Rules from the configuration files, plus insecure registries given on the command line."""

    def __init__(self, rules=(), insecure=()):
        self.rules = list(rules)
        self.insecure = insecure_hosts(insecure)
        self._hosts_cache = {}

    @classmethod
    def load(cls, path=None, insecure=()):
        path = path if path is not None else default_config_path()
        rules = []
        if path:
            doc = _load_toml(path)
            if doc is not None:
                rules = _parse_registries_conf(doc, path)
        env = os.environ.get("LAMINA_INSECURE_REGISTRIES", "")
        extra = {h.strip() for h in env.split(",") if h.strip()}
        return cls(rules, insecure_hosts(insecure) | extra)

    def _rule_for(self, name):
        """Longest-prefix rule matching 'domain/path'."""
        best = None
        for r in self.rules:
            p = r.prefix
            if name == p or name.startswith(p + "/") or (p.startswith("*.") and
                                                          name.split("/", 1)[0].endswith(p[1:])):
                if best is None or len(p) > len(best.prefix):
                    best = r
        return best

    def endpoints(self, domain, path, *, for_push=False):
        """Endpoints to try for ``domain/path``: mirrors first (pull only), then the registry."""
        name = f"{domain}/{path}"
        rule = self._rule_for(name)
        out = []
        if rule is not None:
            if rule.blocked:
                raise RegistryError(f"registry {rule.prefix} is blocked by {rule.source}")
            # The part of the name the rule's prefix covers is replaced by its location.
            prefix_path = rule.prefix.split("/", 1)[1] if "/" in rule.prefix else ""
            if not for_push:
                for loc, insecure, pfm in rule.mirrors:
                    scheme, host, ns = _split_location(loc)
                    out.append(Endpoint(host, ns, scheme, insecure or host in self.insecure, True, pfm,
                                        prefix_path))
            scheme, host, ns = _split_location(rule.location)
            out.append(Endpoint(host, ns, scheme, rule.insecure or host in self.insecure, False, "all",
                                prefix_path))
        else:
            hosts_mirrors, server = self._hosts_toml(domain)
            if not for_push:
                out.extend(hosts_mirrors)
            if server is not None:
                out.append(server)
            elif domain in DEFAULT_ENDPOINTS:
                out.append(Endpoint(DEFAULT_ENDPOINTS[domain], credentials_key=domain))
            else:
                out.append(Endpoint(domain, insecure=domain in self.insecure))
        return out

    # --- containerd hosts.toml ----------------------------------------------------------

    def _hosts_toml(self, domain):
        if domain in self._hosts_cache:
            return self._hosts_cache[domain]
        mirrors, server = [], None
        for base in certs_dirs():
            path = os.path.join(base, domain, "hosts.toml")
            doc = _load_toml(path)
            if doc is None:
                continue
            mirrors, server = _parse_hosts_toml(doc, path, domain, self.insecure)
            break
        self._hosts_cache[domain] = (mirrors, server)
        return mirrors, server


def _bool(v, what, path):
    if not isinstance(v, bool):
        raise RegistryError(f"{path}: {what} must be true or false")
    return v


def _parse_registries_conf(doc, path):
    regs = doc.get("registry", [])
    if not isinstance(regs, list):
        raise RegistryError(f"{path}: 'registry' must be an array of tables ([[registry]])")
    rules = []
    for i, r in enumerate(regs):
        if not isinstance(r, dict):
            raise RegistryError(f"{path}: registry[{i}] must be a table")
        location, prefix = r.get("location"), r.get("prefix")
        if location is not None and not isinstance(location, str):
            raise RegistryError(f"{path}: registry[{i}].location must be a string")
        if prefix is not None and not isinstance(prefix, str):
            raise RegistryError(f"{path}: registry[{i}].prefix must be a string")
        prefix = prefix or location
        if not prefix:
            raise RegistryError(f"{path}: registry[{i}] needs a location or a prefix")
        location = location or prefix
        mirrors = []
        for j, m in enumerate(r.get("mirror", []) or []):
            if not isinstance(m, dict) or not isinstance(m.get("location"), str):
                raise RegistryError(f"{path}: registry[{i}].mirror[{j}] needs a location string")
            pfm = m.get("pull-from-mirror", "all")
            if pfm not in ("all", "digest-only", "tag-only"):
                raise RegistryError(f"{path}: registry[{i}].mirror[{j}].pull-from-mirror must be "
                                    "all, digest-only or tag-only")
            mirrors.append((m["location"], _bool(m.get("insecure", False), "insecure", path), pfm))
        rules.append(RegistryRule(prefix.rstrip("/"), location, _bool(r.get("insecure", False), "insecure", path),
                                  _bool(r.get("blocked", False), "blocked", path), mirrors, path))
    return rules


def _parse_hosts_toml(doc, path, domain, insecure_set):
    mirrors = []
    hosts = doc.get("host", {}) or {}
    if not isinstance(hosts, dict):
        raise RegistryError(f"{path}: 'host' must be a table of [host.\"URL\"] entries")
    for url, h in hosts.items():
        if not isinstance(h, dict):
            raise RegistryError(f"{path}: host {url!r} must be a table")
        caps = h.get("capabilities", ["pull", "resolve", "push"])
        if "pull" not in caps:
            continue
        scheme, host, ns = _split_location(url)
        # containerd: a host path defaults to /v2; "override_path" means the path is the API root.
        ns = ns[len("v2"):].strip("/") if ns.startswith("v2") else ns
        skip = h.get("skip_verify", False) is True
        pfm = "all" if "resolve" in caps else "digest-only"
        mirrors.append(Endpoint(host, ns, scheme, skip or host in insecure_set, True, pfm))
    server = None
    if isinstance(doc.get("server"), str):
        scheme, host, ns = _split_location(doc["server"])
        ns = ns[len("v2"):].strip("/") if ns.startswith("v2") else ns
        server = Endpoint(host, ns, scheme, host in insecure_set)
    return mirrors, server
