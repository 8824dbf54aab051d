"""Distribution-spec v2 registry client: pull into the store, push from it, log in.

    from lamina.registry import pull, push
    result = pull("127.0.0.1:5000/app:1.0", store=store)          # PullResult
    push("127.0.0.1:5000/app:1.1", store=store, source="app:1.0")   # PushResult

Transport, auth, mirrors and TLS: see transport.py, client.py, credentials.py, config.py.
"""
from .client import ManifestResponse, RegistryClient, Repository, parse_challenge
from .config import Endpoint, RegistryConfig, is_loopback
from .credentials import Credentials
from .login import login, logout
from .pull import PullResult, pull
from .push import PushResult, push
from .transport import Transport


def inspect_manifest(ref, *, client=None, insecure=()):
    """The raw manifest or index bytes a registry serves for ``ref`` (ManifestResponse)."""
    from ..reference import Reference
    ref = ref if isinstance(ref, Reference) else Reference.parse(ref)
    own = client is None
    client = client or RegistryClient(insecure=insecure)
    try:
        repos = client.repositories(ref, ("pull",))
        for i, repo in enumerate(repos):
            try:
                return repo.get_manifest(ref.digest or ref.tag)
            except Exception:
                if i + 1 == len(repos):
                    raise
    finally:
        if own:
            client.close()


def list_tags(repository, *, client=None, insecure=()):
    """Every tag of a repository (``NAME``, a tag or digest in it is ignored), sorted."""
    from ..reference import Reference
    ref = repository if isinstance(repository, Reference) else Reference.parse(repository)
    own = client is None
    client = client or RegistryClient(insecure=insecure)
    try:
        return client.repository(ref, ("pull",)).list_tags()
    finally:
        if own:
            client.close()


__all__ = [
    "Credentials", "Endpoint", "ManifestResponse", "PullResult", "PushResult", "RegistryClient", "RegistryConfig",
    "Repository", "Transport", "inspect_manifest", "is_loopback", "list_tags", "login", "logout", "parse_challenge", "pull",
    "push",
]
