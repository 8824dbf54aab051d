"""Turning a source string into a Source: ``oci:PATH[:REF]``, ``docker-archive:PATH[:REF]``,
``oci-archive:PATH[:REF]`` or a bare path (directory = OCI layout, file = archive)."""
from __future__ import annotations

import os

from ..errors import ImageNotFoundError, InvalidReferenceError
from .dockerarchive import DockerArchive
from .image import Source
from .layout import open_layout_dir

TRANSPORTS = ("oci", "docker-archive", "oci-archive")
# skopeo transports lamina does not read (yet): named so the error says "unsupported", not "missing".
_OTHER_TRANSPORTS = ("docker", "docker-daemon", "containers-storage", "dir", "sif", "tarball")


def _split_path_ref(rest):
    """PATH[:REF] -> (path, ref).

    A path that exists as written wins (so paths containing ':' work);
    otherwise the first ':' separates the reference, as skopeo does (OCI ref
    names may themselves contain ':').
    """
    if os.path.exists(rest) or ":" not in rest:
        return rest, None
    path, _, ref = rest.partition(":")
    return path, ref or None


def parse_source(source):
    """(transport, path, ref) for a source string; transport None for a bare path."""
    if isinstance(source, os.PathLike):
        return None, os.fspath(source), None
    if not isinstance(source, str) or not source:
        raise InvalidReferenceError(f"invalid image source {source!r}")
    transport, sep, rest = source.partition(":")
    if sep and transport in TRANSPORTS:
        if not rest:
            raise InvalidReferenceError(f"{source!r}: missing path after {transport}:")
        return (transport, *_split_path_ref(rest))
    if sep and not os.path.exists(source) and not os.path.exists(transport) and (
            transport in _OTHER_TRANSPORTS or rest.startswith("//")):
        raise InvalidReferenceError(
            f"unsupported image source {source!r}: use oci:PATH[:REF], docker-archive:PATH[:REF],"
            " oci-archive:PATH[:REF] or a path")
    path, ref = _split_path_ref(source)
    if ref is not None and not os.path.exists(path):
        path, ref = source, None  # neither form exists: report the whole string as missing
    return None, path, ref


def open_source(source, scratch=None) -> Source:
    """Open an image source for resolve(); close it (or use ``with``) when done.  ``scratch``:
    where a zstd, xz or bzip2 archive is inflated (TarArchive)."""
    if isinstance(source, Source):
        return source
    transport, path, ref = parse_source(source)
    if not os.path.exists(path):
        raise ImageNotFoundError(f"{path}: no such file or directory")
    if transport is None:
        transport = "oci" if os.path.isdir(path) else "docker-archive"
    if transport == "oci":
        return open_layout_dir(path, ref)
    if os.path.isdir(path):
        raise InvalidReferenceError(f"{transport}:{path}: is a directory, expected an archive file")
    return DockerArchive(path, ref, oci_only=transport == "oci-archive", scratch=scratch)
