"""Resolving an image in an OCI image layout (a directory, or one inside a tar).

index.json -> (ref) -> index(es) -> (platform) -> manifest -> config + layers.
Every manifest, index and config is read through the blob store, which
checks its size and digest before it is parsed.
"""
from __future__ import annotations

import functools
import os

from .. import mediatypes as mt
from ..errors import (ArtifactError, BlobNotFoundError, ImageError, ImageNotFoundError, UnsupportedMediaTypeError,
                      layer_of, listing, warn_if_other_platform)
from ..limits import MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE
from ..platform import Platform
from .blobs import DirBlobStore, MAX_DOCUMENT_SIZE, open_in_layout
from .image import LayerRef, ResolvedImage, Source
from .model import (ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, check_field_spelling, document_media_type,
                    choose_platform, load_json, parse_config, parse_index, parse_manifest)
from .refs import normalize_docker_name

# Indexes nest (index.json -> image index -> ...); real images use two levels.
MAX_INDEX_DEPTH = 8


class OCILayout(Source):
    """An OCI image layout. ``read_meta(name)`` returns the bytes of a top-level
    file (``oci-layout``, ``index.json``) or None when it is absent."""

    def __init__(self, store, read_meta, ref=None, description=None):
        self.store = store
        self.ref = ref or None
        self._docs, self._configs = {}, {}  # by digest: documents are read and verified once
        self._by_name = None                 # see _named
        self.pinned = None                   # a manifest descriptor chosen otherwise than by name
        self.description = description or store.name
        layout = read_meta("oci-layout")
        if layout is None:
            raise ImageError(f"{self.description}: not an OCI image layout (no oci-layout file)")
        what = f"{self.description}: oci-layout"
        layout = load_json(layout, what)
        check_field_spelling(layout, ("imageLayoutVersion",), what)
        version = layout.get("imageLayoutVersion")
        if not isinstance(version, str) or version.split(".")[0] != "1":
            raise ImageError(f"{self.description}: unsupported imageLayoutVersion {version!r}")
        raw_index = read_meta("index.json")
        if raw_index is None:
            raise ImageError(f"{self.description}: OCI image layout without index.json")
        _, self.index = parse_index_json(raw_index, f"{self.description}: index.json")

    # --- choosing the image ----------------------------------------------------

    def ref_names(self):
        """Names of the images in index.json (OCI ref names first), for messages."""
        names = []
        for d in self.index.manifests:
            name = d.annotations.get(ANNOTATION_REF_NAME) or d.annotations.get(ANNOTATION_CONTAINERD_NAME)
            if isinstance(name, str) and name not in names:
                names.append(name)
        return names

    def _available(self):
        names = self.ref_names()
        unnamed = sum(1 for d in self.index.manifests if not d.ref_names)
        if not unnamed:
            return listing(names)
        return f"{listing(names)}, {unnamed} unnamed" if names else f"{unnamed} unnamed"

    def _select(self):
        """Descriptors of index.json that the ref (or the default rule) picks."""
        if self.pinned is not None:
            return [self.pinned]
        descs = self.index.manifests
        if not descs:
            raise ImageNotFoundError(f"{self.description}: the layout holds no images")
        if self.ref:
            picked = self._named(self.ref)
            if not picked:
                raise ImageNotFoundError(
                    f"{self.description}: no image named {self.ref!r}; available: {self._available()}")
        elif len(descs) == 1 or not any(d.ref_names for d in descs):
            # One image, or an index.json used as a plain image index (no names): choose by platform.
            picked = descs
        else:
            picked = [d for d in descs if d.annotations.get(ANNOTATION_REF_NAME) == "latest"]
            if not picked:
                raise ImageNotFoundError(
                    f"{self.description} holds several images and none is 'latest'; "
                    f"name one (oci:PATH:REF); available: {self._available()}")
        # The same digest listed twice under one name is still one image.
        picked = _each_digest_once(picked)
        if len(picked) > 1:
            self._check_distinct(picked, descs)
        return picked

    def _check_distinct(self, picked, descs):
        """Several images under one name (or several unnamed ones) must each run on a platform of
        its own: skopeo takes the first, containerd's import the last, umoci refuses ("tag is
        ambiguous"); lamina loaded the one the platform match met first and dropped the others
        without a word.  Artifacts and attestations beside an image run on none: not counted."""
        by_platform = {}
        for d in picked:
            if d.is_attestation:
                continue
            platform = d.platform
            if platform is None and mt.is_manifest(d.media_type):
                try:
                    platform = self._config(d).platform
                except ArtifactError:
                    continue
                except BlobNotFoundError:
                    platform = None
            other = by_platform.setdefault(platform, d)
            if other is not d:
                which = f"named {self.ref!r}" if self.ref else (
                    "named 'latest'" if any(x.ref_names for x in descs) else "without a name")
                on = f" for {platform}" if platform else ""
                raise ImageError(f"{self.description}: two different images {which}{on} ({other.digest}, "
                                 f"{d.digest}): ambiguous; the layout's index.json must give each image a name "
                                 "of its own")

    def _named(self, ref):
        """index.json's descriptors named ``ref`` (OCI ref name, or a containerd name that
        names_match it), in order.  Looked up in a dict made once: load resolves every name of
        the layout, and a scan per name cost the square of their number."""
        if self._by_name is None:
            self._by_name = {}
            for i, d in enumerate(self.index.manifests):
                keys = {("ref", d.annotations.get(ANNOTATION_REF_NAME)),
                        ("containerd", normalize_docker_name(d.annotations.get(ANNOTATION_CONTAINERD_NAME) or ""))}
                for key in keys:
                    self._by_name.setdefault(key, []).append(i)
        found = set(self._by_name.get(("ref", ref), ())) | set(
            self._by_name.get(("containerd", normalize_docker_name(ref)), ()))
        return [self.index.manifests[i] for i in sorted(found)]

    # --- reading documents --------------------------------------------------

    def _document(self, desc):
        """(media type, parsed Index or Manifest, raw dict) of a manifest/index descriptor."""
        if desc.digest not in self._docs:
            self._docs[desc.digest] = self._read_document(desc)
        return self._docs[desc.digest]

    def _read_document(self, desc):
        if not (mt.is_index(desc.media_type) or mt.is_manifest(desc.media_type)):
            if desc.media_type in mt.SCHEMA1_TYPES:
                raise UnsupportedMediaTypeError(f"manifest {desc.digest}: {mt.SCHEMA1_MESSAGE}")
            raise UnsupportedMediaTypeError(
                f"{self.description}: {desc.digest} has unsupported media type {desc.media_type!r}")
        kind = "index" if mt.is_index(desc.media_type) else "manifest"
        what = f"{kind} {desc.digest}"
        data = self.store.read(desc, what, MAX_MANIFEST_SIZE)
        doc = load_json(data, what)
        media_type = document_media_type(doc, desc.media_type, what)
        if mt.is_index(media_type):
            return media_type, parse_index(doc, media_type, what), doc
        return media_type, parse_manifest(doc, media_type, what), doc

    def _config(self, manifest_desc):
        _, manifest, _ = self._document(manifest_desc)
        cdesc = manifest.config
        key = (cdesc.digest, len(manifest.layers))
        if key not in self._configs:
            data = self.store.read(cdesc, f"config {cdesc.digest}", MAX_CONFIG_SIZE)
            self._configs[key] = parse_config(data, f"config {cdesc.digest}", len(manifest.layers))
        return self._configs[key]

    def _platform_of(self, desc):
        """A manifest's platform: from its descriptor, else from its config (as containerd does)."""
        if desc.platform is not None:
            return desc.platform
        try:
            return self._config(desc).platform
        except BlobNotFoundError:
            # Partial exports (docker save of one platform) omit the other platforms' blobs.
            return None
        except ArtifactError:
            # An artifact beside the images (an SBOM, a signature: image-spec 1.1 puts them in
            # indexes without a platform) runs on none: not a candidate, as containerd reads it.
            return None

    # --- platform choice ------------------------------------------------------

    def _choose(self, descs, want, depth):
        return choose_platform(descs, want, lambda d: self._document(d)[1], self._platform_of, MAX_INDEX_DEPTH,
                               self.description, depth)

    def resolve(self, platform=None):
        want = Platform.parse(platform) if platform is not None else None
        descs = self._select()
        if len(descs) == 1 and not mt.is_index(descs[0].media_type):
            desc, chosen, lister = descs[0], None, "index.json"
        else:
            desc, chosen = self._choose(descs, want, 0)
            lister = f"the image index {self.ref!r}" if self.ref else "the image index"
        try:
            self._document(desc)
        except BlobNotFoundError as e:
            if getattr(e, "dangling", False):
                raise
            # a digest the user never typed: say where it came from, as skopeo's "selected from image index"
            on = f" for {chosen}" if chosen is not None else ""
            raise BlobNotFoundError(f"{self.description}: {lister} lists manifest {desc.digest}{on}, but the "
                                    "blob is not there") from None
        return self._image(desc, want, chosen)

    def selected_index(self):
        """(descriptor, exact bytes, [manifest descriptors]) when the ref names one image index
        (a multi-arch image, as ``docker save`` and ``skopeo copy --all`` write it), else None.
        The manifests are the index's own (attestations included, as a registry serves them),
        whether or not the layout holds their blobs."""
        descs = self._select()
        if len(descs) != 1 or not mt.is_index(descs[0].media_type):
            return None
        desc = descs[0]
        _, index, _ = self._document(desc)
        data = self.store.read(desc, f"index {desc.digest}")
        # each manifest once, however often the index lists it
        return desc, data, _each_digest_once(d for d in index.manifests if mt.is_manifest(d.media_type))

    def image_of(self, desc):
        """The ResolvedImage of one manifest descriptor (a platform of ``selected_index``)."""
        return self._image(desc, None, desc.platform)

    def _image(self, desc, want, chosen):
        # desc has a manifest media type here, and _read_document made the content agree.
        _, manifest, doc = self._document(desc)
        config = self._config(desc)
        if chosen is None:   # a single image: taken, with a warning if it is of another platform
            name = self.ref or next(iter(desc.ref_names), desc.digest)
            warn_if_other_platform(want, config.platform, f"image {name} of {self.description}")
        layers = []
        # a layout or an archive may hold several images, each with a "layer 1 of 1": say which
        image = f"image {self.ref or desc.digest}" + (f" ({desc.platform})" if self.ref and desc.platform else "")
        for i, ldesc in enumerate(manifest.layers):
            which = f"{image} {layer_of(i, len(manifest.layers))}"
            size = self._layer_size(which, ldesc)
            if size != ldesc.size:
                raise ImageError(f"{self.description}: {which} ({ldesc.digest}): blob is {size} bytes but the "
                                 f"manifest says {ldesc.size}")
            layers.append(LayerRef(i, config.diff_ids[i], ldesc.digest, ldesc.size, ldesc.media_type,
                                   functools.partial(self.store.open, ldesc.digest)))
        return ResolvedImage(
            config=config.raw, config_digest=manifest.config.digest, layers=layers,
            manifest_digest=desc.digest, manifest=doc, platform=chosen or config.platform, ref=self.ref)

    def _layer_size(self, which, ldesc):
        try:
            return self.store.size(ldesc.digest)
        except BlobNotFoundError as e:
            # led by the layout's or archive's name, as every other error of its images is (a
            # blob of the wrong size, a config refused, a layer refused by load)
            if getattr(e, "dangling", False):
                raise BlobNotFoundError(f"{self.description}: {which}: {e}") from None
            if ldesc.media_type in mt.FOREIGN_LAYER_TYPES or ldesc.urls:
                raise BlobNotFoundError(
                    f"{self.description}: {which} ({ldesc.digest}) is a non-distributable layer absent from it;"
                    " lamina does not download layer urls") from None
            raise BlobNotFoundError(f"{self.description}: {which}: blob {ldesc.digest} not found in it") from None


def parse_index_json(data, what):
    """(the document, its Index) of a layout's index.json, checked as every index is."""
    doc = load_json(data, what)
    media_type = document_media_type(doc, None, what)
    if not mt.is_index(media_type):
        raise ImageError(f"{what}: is a {media_type}, not an image index")
    return doc, parse_index(doc, media_type, what)


def _each_digest_once(descs):
    """``descs`` in order, each digest's first descriptor only."""
    unique = {}
    for d in descs:
        unique.setdefault(d.digest, d)
    return list(unique.values())


def open_layout_dir(path, ref=None):
    path = os.fspath(path)

    def read_meta(name):
        fd = open_in_layout(path, name, f"{path}/{name}")
        if fd is None:
            return None
        with open(fd, "rb") as f:
            data = f.read(MAX_DOCUMENT_SIZE + 1)
        if len(data) > MAX_DOCUMENT_SIZE:
            raise ImageError(f"{path}/{name}: larger than the {MAX_DOCUMENT_SIZE}-byte limit")
        return data

    if os.path.isfile(path):
        raise ImageNotFoundError(f"{path} is a file, not an OCI layout directory: use oci-archive:{path} or "
                                 f"docker-archive:{path}")
    if not os.path.isdir(path):
        raise ImageNotFoundError(f"{path}: no such directory")
    return OCILayout(DirBlobStore(path), read_meta, ref, description=path)
