"""Image references, parsed and normalized exactly like docker's.

    nginx                      -> docker.io/library/nginx:latest
    user/app:1.2               -> docker.io/user/app:1.2
    localhost:5000/app@sha256:… -> localhost:5000/app@sha256:…

The grammar is distribution's reference package (the one docker uses).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .errors import InvalidReferenceError

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})(?::[0-9]+)?"
# Go's \w is ASCII; Python's would take any letter or digit of Unicode (a tag "١" or "ТЕГ")
TAG_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE_RE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{TAG_PATTERN}))?(?:@(?P<digest>{_DIGEST}))?\Z")  # \Z: $ would let a final newline through
_ANCHORED_ID = re.compile(r"^[a-f0-9]{64}\Z")
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}\Z")
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*\Z")


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: Optional[str] = None
    digest: Optional[str] = None

    @classmethod
    def parse(cls, text: str, *, default_tag: bool = True) -> "Reference":
        """Parse and normalize like ``docker pull`` does.

        A reference with neither tag nor digest gets ``:latest`` unless
        ``default_tag`` is false.
        """
        if not isinstance(text, str):
            raise InvalidReferenceError(f"invalid reference format: {text!r} is not a string")
        if not text:
            raise InvalidReferenceError("invalid reference format: empty reference")
        if _ANCHORED_ID.match(text):
            raise InvalidReferenceError(
                f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings")
        # docker checks case before the grammar, so "Team/App" gets the helpful message
        domain, remainder = _split_domain(text)
        remote = re.split(r"[:@]", remainder, maxsplit=1)[0]
        if remote != remote.lower():
            raise InvalidReferenceError(f"invalid reference format: repository name ({remote}) must be lowercase")
        name_part, tag, digest = _split(text)
        domain, path = _split_domain(name_part)
        if not _DOMAIN_RE.match(domain) or not _PATH_RE.match(path):
            raise InvalidReferenceError(f"invalid reference format: {text!r}")
        if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
            raise InvalidReferenceError(f"invalid reference format: repository name must not be more than "
                                        f"{NAME_TOTAL_LENGTH_MAX} characters")
        if digest is not None:
            from .digest import validate
            validate(digest, f"digest of reference {text!r}")
        if tag is None and digest is None and default_tag:
            tag = DEFAULT_TAG
        return cls(domain, path, tag, digest)

    @property
    def name(self) -> str:
        """The fully qualified repository, e.g. ``docker.io/library/nginx``."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository as docker prints it, e.g. ``nginx`` or ``user/app``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        if self.path.startswith(OFFICIAL_REPO_PREFIX) and "/" not in self.path[len(OFFICIAL_REPO_PREFIX):]:
            return self.path[len(OFFICIAL_REPO_PREFIX):]
        return self.path

    def familiar(self) -> str:
        return self.familiar_name + self._suffix()

    def with_tag(self, tag: str) -> "Reference":
        if not re.fullmatch(TAG_PATTERN, tag):
            raise InvalidReferenceError(f"invalid tag format: {tag!r}")
        return Reference(self.domain, self.path, tag, None)

    def with_digest(self, digest: str) -> "Reference":
        return Reference(self.domain, self.path, None, digest)

    def _suffix(self) -> str:
        out = ""
        if self.tag is not None:
            out += ":" + self.tag
        if self.digest is not None:
            out += "@" + self.digest
        return out

    def __str__(self) -> str:
        return self.name + self._suffix()


def _split(text: str):
    m = _REFERENCE_RE.match(text)
    if m is None:
        raise InvalidReferenceError(f"invalid reference format: {text!r}")
    return m.group("name"), m.group("tag"), m.group("digest")


def _split_domain(name: str):
    """docker's splitDockerDomain: the first component is a registry only if
    it looks like a host (has '.' or ':', or is 'localhost', or has capitals)."""
    first, sep, rest = name.partition("/")
    if not sep or (
        "." not in first and ":" not in first and first != "localhost" and first.lower() == first
    ):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse(text: str, *, default_tag: bool = True) -> Reference:
    return Reference.parse(text, default_tag=default_tag)
