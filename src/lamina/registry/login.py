"""``lamina login`` / ``lamina logout``: check credentials against the registry, then save or erase them."""
from __future__ import annotations

from ..errors import AuthenticationError, RegistryError
from ..reference import DEFAULT_DOMAIN
from . import credentials as _creds
from .client import MAX_ERROR_BODY, RegistryClient, error_message


def normalize_server(server):
    """'https://host:5000/v2/' -> 'host:5000'; empty -> docker.io."""
    if not server:
        return DEFAULT_DOMAIN
    host = _creds.key_host(server)
    if host == DEFAULT_DOMAIN or host.endswith("." + DEFAULT_DOMAIN):
        return DEFAULT_DOMAIN
    return host


def _session(client, host):
    eps = client.config.endpoints(host, "_", for_push=True)
    return client.session(eps[-1])


def verify(host, username, password, *, client=None, insecure=()):
    """Log in to ``host`` with the given credentials; raises AuthenticationError when refused."""
    creds = _creds.Credentials(username, password, "", "command line")
    own = client is None
    client = client or RegistryClient(credentials={host: creds}, insecure=insecure)
    try:
        session = _session(client, host)
        session._creds, session._creds_loaded = creds, True
        base = session.ready()
        if session.challenge[0] is None:
            return   # the registry needs no authentication
        auth = session.authorization(set(), refresh=True)
        resp = client.transport.request("GET", base + "/v2/", headers={"Authorization": auth})
        data = resp.content(limit=MAX_ERROR_BODY)
        if resp.status in (401, 403):
            raise AuthenticationError(f"login to {host} failed: {error_message(data, resp.status, resp.reason)}",
                                      status=resp.status)
        if resp.status != 200:
            raise RegistryError(f"login to {host}: {error_message(data, resp.status, resp.reason)}",
                                status=resp.status)
    finally:
        if own:
            client.close()


def login(server, username, password, *, authfile=None, client=None, insecure=()):
    """Verify then store credentials; returns (host, where they were stored)."""
    host = normalize_server(server)
    if not username:
        raise AuthenticationError("login needs a username")
    if not password:
        raise AuthenticationError("login needs a password")
    verify(host, username, password, client=client, insecure=insecure)
    return host, _creds.store(host, username, password, authfile=authfile)


def logout(server, *, authfile=None):
    """Erase stored credentials; returns (host, whether anything was removed)."""
    host = normalize_server(server)
    return host, _creds.erase(host, authfile=authfile)
