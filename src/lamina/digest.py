"""Content digests: validation, hashing, and turning a digest into a blob path.

A digest string comes from untrusted JSON (index.json, manifests, archive
manifests), so it is validated before it is ever used to build a path: a
checked digest is ``sha256:`` + 64 lowercase hex, which cannot contain a
separator, ``..`` or a NUL.
"""
from __future__ import annotations

import hashlib
import re

from .errors import InvalidDigestError

ALGORITHM = "sha256"
_HEX_LEN = 64
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_CHUNK = 1 << 20


def validate(digest, what="digest"):
    """Return ``digest`` if it is ``sha256:<64 lowercase hex>``, else raise InvalidDigestError.

    ``what`` names where the digest came from, for the error message.
    """
    if not isinstance(digest, str):
        raise InvalidDigestError(f"{what}: expected a digest string, got {type(digest).__name__}")
    if _DIGEST_RE.fullmatch(digest):
        return digest
    algo, sep, _ = digest.partition(":")
    if sep and algo != ALGORITHM and re.fullmatch(r"[a-z0-9]+([+._-][a-z0-9]+)*", algo):
        # A well-formed digest of another algorithm (sha512, blake3...): say so plainly.
        raise InvalidDigestError(f"{what}: unsupported digest algorithm {algo!r} in {digest!r} (only sha256)")
    raise InvalidDigestError(f"{what}: invalid digest {digest!r} (expected sha256: + 64 lowercase hex)")


def is_valid(digest):
    return isinstance(digest, str) and _DIGEST_RE.fullmatch(digest) is not None


def hex_of(digest):
    """The 64-hex part of a valid digest (validated first)."""
    return validate(digest)[len(ALGORITHM) + 1:]


def from_hex(hexstr, what="digest"):
    """``sha256:<hex>`` from a bare hex string, validated."""
    return validate(f"{ALGORITHM}:{hexstr}", what)


def blob_relpath(digest):
    """``blobs/sha256/<hex>``: the OCI image-layout path of a blob, from a validated digest."""
    return f"blobs/{ALGORITHM}/{hex_of(digest)}"


def sha256_bytes(data):
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def sha256_fileobj(fileobj):
    """Digest of the rest of a binary file object (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    readinto = getattr(fileobj, "readinto", None)
    if readinto is not None:
        while True:
            n = readinto(view)
            if not n:
                break
            h.update(view[:n])
    else:
        for chunk in iter(lambda: fileobj.read(_CHUNK), b""):
            h.update(chunk)
    return f"{ALGORITHM}:{h.hexdigest()}"


def sha256_file(path):
    """Digest of a file's whole content."""
    with open(path, "rb", buffering=0) as f:
        return sha256_fileobj(f)
