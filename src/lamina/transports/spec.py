"""skopeo-style image names: ``oci:PATH[:REF]``, ``docker-archive:PATH[:REF]``, ``oci-archive:PATH[:REF]``,
and a bare reference or image ID, which means the store."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from ..errors import InvalidReferenceError
from ..oci.source import TRANSPORTS, parse_source

STORE = "store"
_REGISTRY_HINT = "docker:// names a registry: use lamina pull / lamina push"


@dataclass(frozen=True)
class ImageSpec:
    transport: str              # "oci", "docker-archive", "oci-archive" or "store"
    path: Optional[str]         # None for the store
    ref: Optional[str]          # REF of a layout/archive, or the store reference / image ID

    def __str__(self):
        if self.transport == STORE:
            return self.ref
        return f"{self.transport}:{self.path}" + (f":{self.ref}" if self.ref else "")


def parse(spec):
    """An ImageSpec for a source or destination string.

    PATH[:REF] splits like skopeo (at the first ':' unless the whole string is
    an existing path).  Anything without a transport prefix is a store reference.
    """
    if isinstance(spec, ImageSpec):
        return spec
    if isinstance(spec, os.PathLike) or not isinstance(spec, str) or not spec:
        raise InvalidReferenceError(f"invalid image name {spec!r}: use oci:PATH[:REF], docker-archive:PATH,"
                                    " oci-archive:PATH or an image reference")
    transport, sep, rest = spec.partition(":")
    if sep and transport in TRANSPORTS:
        _, path, ref = parse_source(spec)
        return ImageSpec(transport, path, ref)
    if sep and transport == "docker" and rest.startswith("//"):
        raise InvalidReferenceError(f"{spec!r}: {_REGISTRY_HINT}")
    if sep and (rest.startswith("//") or transport in ("dir", "docker-daemon", "containers-storage", "sif", "tarball")):
        raise InvalidReferenceError(f"unsupported transport in {spec!r}: lamina copies between oci:,"
                                    " docker-archive:, oci-archive: and its store")
    if spec.startswith(("/", "./", "../", "~")):
        # a path where a store name is expected: say which prefixes make it an image
        kinds = ["oci"] if os.path.isdir(spec) else ["docker-archive", "oci-archive"]
        raise InvalidReferenceError(f"{spec} is a path, not an image name: name it with its transport ("
                                    + " or ".join(f"{k}:{spec}" for k in kinds) + "), or give a name in the store")
    return ImageSpec(STORE, None, spec)
