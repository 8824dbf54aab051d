"""Matching a user's image name against the names stored in layouts and archives."""
from __future__ import annotations


def normalize_docker_name(name):
    """Docker's familiar-name expansion: ``busybox`` -> ``docker.io/library/busybox:latest``.

    Used so ``docker-archive:x.tar:busybox`` finds RepoTags ``busybox:latest`` and
    an index.json annotation ``docker.io/library/busybox:latest``.
    """
    if "@" in name:
        repo, sep, rest = name.partition("@")
    else:
        repo, sep, rest = name, "", ""
    first, slash, remainder = repo.partition("/")
    if not slash:
        repo = "docker.io/library/" + repo
    elif "." not in first and ":" not in first and first != "localhost":
        repo = "docker.io/" + repo
    elif first == "index.docker.io":
        repo = "docker.io/" + remainder
    if repo.startswith("docker.io/") and repo.count("/") == 1:
        repo = "docker.io/library/" + repo[len("docker.io/"):]
    last = repo.rsplit("/", 1)[-1]
    if not sep and ":" not in last:
        repo += ":latest"
    return repo + sep + rest


def names_match(wanted, stored):
    return wanted == stored or normalize_docker_name(wanted) == normalize_docker_name(stored)
