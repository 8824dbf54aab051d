"""Media types of OCI and Docker schema2 images, and what each means for lamina."""
from __future__ import annotations

from .errors import UnsupportedMediaTypeError

# --- OCI image-spec ---------------------------------------------------------
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYOUT_HEADER = "application/vnd.oci.layout.header.v1+json"

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
# Deprecated in image-spec 1.1 but still found in the wild (Windows base layers).
OCI_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_GZIP = OCI_LAYER_NONDISTRIBUTABLE + "+gzip"
OCI_LAYER_NONDISTRIBUTABLE_ZSTD = OCI_LAYER_NONDISTRIBUTABLE + "+zstd"

# --- Docker image manifest v2, schema 2 -----------------------------------------
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
# The config type docker 1.10 pushed in schema2 manifests (docker/distribution#1622); Docker Hub
# still serves images of that time so.  containerd reads it as DOCKER_CONFIG (its
# LegacyConfigMediaType), containers/image's own schema2 fixture has it, image-spec's backwards
# compatibility tests take such a manifest as valid.
DOCKER_LEGACY_CONFIG = "application/octet-stream"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
# Not in the Docker spec, but produced by some tools and accepted by containerd.
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"

# --- Docker schema 1 (refused) ------------------------------------------------
DOCKER_SCHEMA1_MANIFEST = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED_MANIFEST = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1_MANIFEST, DOCKER_SCHEMA1_SIGNED_MANIFEST})

_LAYER_COMPRESSION = {
    OCI_LAYER: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_NONDISTRIBUTABLE: "none",
    OCI_LAYER_NONDISTRIBUTABLE_GZIP: "gzip",
    OCI_LAYER_NONDISTRIBUTABLE_ZSTD: "zstd",
    DOCKER_LAYER: "none",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_ZSTD: "zstd",
    DOCKER_LAYER_FOREIGN: "none",
    DOCKER_LAYER_FOREIGN_GZIP: "gzip",
}
LAYER_TYPES = frozenset(_LAYER_COMPRESSION)
# Layers whose blob is usually fetched from the descriptor's urls, not shipped with the image.
FOREIGN_LAYER_TYPES = frozenset({
    OCI_LAYER_NONDISTRIBUTABLE, OCI_LAYER_NONDISTRIBUTABLE_GZIP, OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
    DOCKER_LAYER_FOREIGN, DOCKER_LAYER_FOREIGN_GZIP,
})


def layer_compression(media_type):
    """``"gzip"``, ``"zstd"`` or ``"none"`` for a layer media type.

    Raises UnsupportedMediaTypeError for anything that is not an image layer
    (e.g. a Helm chart or signature blob in an artifact manifest).
    """
    try:
        return _LAYER_COMPRESSION[media_type]
    except (KeyError, TypeError):
        raise UnsupportedMediaTypeError(f"unsupported layer media type {media_type!r}") from None


def is_index(media_type):
    return media_type in INDEX_TYPES


def is_manifest(media_type):
    return media_type in MANIFEST_TYPES


def is_config(media_type, manifest_media_type):
    """Is ``media_type`` the type of an image config, in a manifest of ``manifest_media_type``?"""
    return media_type in CONFIG_TYPES or (media_type == DOCKER_LEGACY_CONFIG
                                          and manifest_media_type == DOCKER_MANIFEST)


def is_schema1(media_type=None, document=None):
    """True for a Docker schema1 manifest, by media type or by content.

    Schema1 documents often come without a usable media type (registries
    served them as ``application/json``), so ``schemaVersion: 1`` counts too.
    """
    if media_type in SCHEMA1_TYPES:
        return True
    # type(...) is int: a schemaVersion of true is malformed, not schema1.
    return isinstance(document, dict) and type(document.get("schemaVersion")) is int \
        and document["schemaVersion"] == 1


SCHEMA1_MESSAGE = (
    "Docker schema1 manifests are deprecated and not supported; "
    "convert the image to a current format (for example with skopeo copy) first"
)
