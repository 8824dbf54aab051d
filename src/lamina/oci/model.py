"""Parsed, validated image documents: descriptors, indexes, manifests, configs.

Everything here works on bytes already read (and digest-checked) by a blob
store; the parsers only check structure and say which blob was wrong.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

from .. import digest as _digest
from .. import mediatypes as mt
from ..errors import ImageError, UnsupportedMediaTypeError
from ..platform import Platform

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
# buildkit puts provenance/SBOM manifests in image indexes with platform unknown/unknown.
ANNOTATION_DOCKER_REFERENCE_TYPE = "vnd.docker.reference.type"


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Optional[Platform] = None
    annotations: dict = field(default_factory=dict, hash=False, compare=False)
    urls: tuple = ()

    @property
    def ref_names(self):
        """Names this descriptor is known by in an index (OCI ref name, containerd image name)."""
        return [self.annotations[k] for k in (ANNOTATION_REF_NAME, ANNOTATION_CONTAINERD_NAME)
                if isinstance(self.annotations.get(k), str)]

    @property
    def is_attestation(self):
        if self.annotations.get(ANNOTATION_DOCKER_REFERENCE_TYPE) == "attestation-manifest":
            return True
        return self.platform is not None and self.platform.os == "unknown" and self.platform.architecture == "unknown"


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: list


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: list


@dataclass(frozen=True)
class Config:
    raw: dict
    diff_ids: list
    platform: Optional[Platform]


def load_json(data, what):
    """Decode a JSON object, naming ``what`` if it is not one."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(f"{what}: invalid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{what}: expected a JSON object, got {type(doc).__name__}")
    return doc


def parse_descriptor(obj, what):
    if not isinstance(obj, dict):
        raise ImageError(f"{what}: descriptor is not a JSON object")
    media_type = obj.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise ImageError(f"{what}: descriptor has no mediaType")
    digest = _digest.validate(obj.get("digest"), what)
    size = obj.get("size")
    # bool is an int subclass; a size of true is still malformed.
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{what}: descriptor {digest} has invalid size {size!r}")
    platform = None
    if obj.get("platform") is not None:
        p = obj["platform"]
        try:
            platform = Platform.from_dict(p) if isinstance(p, dict) else None
        except ValueError:
            platform = None
        if platform is None:
            raise ImageError(f"{what}: descriptor {digest} has an invalid platform {p!r}")
    annotations = obj.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ImageError(f"{what}: descriptor {digest} has invalid annotations")
    urls = obj.get("urls") or []
    if not isinstance(urls, list):
        raise ImageError(f"{what}: descriptor {digest} has invalid urls")
    return Descriptor(media_type, digest, size, platform, annotations, tuple(u for u in urls if isinstance(u, str)))


def document_media_type(doc, declared, what):
    """The media type of a manifest-or-index document, checked against its descriptor.

    Refuses schema1 with a clear message. ``declared`` is the descriptor's
    media type (None for index.json, which has no descriptor).
    """
    if mt.is_schema1(declared, doc):
        raise UnsupportedMediaTypeError(f"{what}: {mt.SCHEMA1_MESSAGE}")
    version = doc.get("schemaVersion")
    if version != 2:
        raise ImageError(f"{what}: unsupported schemaVersion {version!r} (expected 2)")
    inner = doc.get("mediaType")
    if inner is not None and not isinstance(inner, str):
        raise ImageError(f"{what}: invalid mediaType {inner!r}")
    if inner and declared and inner != declared:
        # image-spec: the descriptor and the content must agree, or the blob was swapped.
        raise ImageError(f"{what}: descriptor says {declared} but the document says {inner}")
    media_type = inner or declared
    if not media_type:
        # OCI allows omitting mediaType; guess from the shape like containerd does.
        if "manifests" in doc:
            media_type = mt.OCI_INDEX
        elif "config" in doc or "layers" in doc:
            media_type = mt.OCI_MANIFEST
        else:
            raise ImageError(f"{what}: neither an image index nor a manifest")
    if media_type not in mt.INDEX_TYPES and media_type not in mt.MANIFEST_TYPES:
        raise UnsupportedMediaTypeError(f"{what}: unsupported media type {media_type!r}")
    return media_type


def parse_index(doc, media_type, what):
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise ImageError(f"{what}: 'manifests' must be a list")
    return Index(media_type, [parse_descriptor(d, f"{what} manifests[{i}]") for i, d in enumerate(manifests)])


def parse_manifest(doc, media_type, what):
    config = parse_descriptor(doc.get("config"), f"{what} config")
    if config.media_type not in mt.CONFIG_TYPES:
        # Artifacts (Helm charts, signatures, SBOMs) use image manifests with other config types.
        raise UnsupportedMediaTypeError(
            f"{what}: config media type {config.media_type!r} is not a container image config"
            " (is this an artifact?)")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ImageError(f"{what}: 'layers' must be a list")
    parsed = []
    for i, obj in enumerate(layers):
        desc = parse_descriptor(obj, f"{what} layers[{i}]")
        if desc.media_type not in mt.LAYER_TYPES:
            raise UnsupportedMediaTypeError(
                f"{what} layers[{i}] ({desc.digest}): unsupported layer media type {desc.media_type!r}")
        parsed.append(desc)
    return Manifest(media_type, config, parsed)


def parse_config(data, what, layer_count):
    """Parse an image config and check rootfs.diff_ids against the manifest's layer count."""
    doc = load_json(data, what)
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict):
        raise ImageError(f"{what}: missing rootfs")
    if rootfs.get("type") != "layers":
        raise ImageError(f"{what}: unsupported rootfs.type {rootfs.get('type')!r} (expected 'layers')")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise ImageError(f"{what}: rootfs.diff_ids must be a list")
    diff_ids = [_digest.validate(d, f"{what} rootfs.diff_ids[{i}]") for i, d in enumerate(diff_ids)]
    if len(diff_ids) != layer_count:
        raise ImageError(
            f"{what}: rootfs.diff_ids has {len(diff_ids)} entries but the image has {layer_count} layers")
    platform = None
    if isinstance(doc.get("os"), str) and isinstance(doc.get("architecture"), str):
        try:
            platform = Platform.from_dict(doc)
        except ValueError:
            platform = None
    return Config(doc, diff_ids, platform)
