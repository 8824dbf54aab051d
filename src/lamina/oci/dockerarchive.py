"""``docker save`` / ``skopeo copy docker-archive:`` tars (and oci-archive tars).

Three shapes are read:
* legacy docker save: ``manifest.json`` + ``<id>/layer.tar`` (+ symlinks for
  repeated layers) + ``<hex>.json`` config;
* skopeo: ``manifest.json`` + ``<hex>.tar`` layers + ``<hex>.json`` config;
* docker >= 25 (and oci-archive): an OCI image layout inside the tar, with a
  ``manifest.json`` beside it for old readers. The layout is preferred since its
  manifests carry digests and media types for every blob.

Legacy layers have no manifest digest: they are verified by their diffID
(apply_layer checks it against the config's rootfs.diff_ids).
"""
from __future__ import annotations

import functools
import re

from .. import digest as _digest
from .. import mediatypes as mt
from ..errors import (ArtifactError, BlobNotFoundError, DigestMismatchError, ImageError, ImageNotFoundError,
                      PlatformNotFoundError)
from ..limits import check_layer_count
from ..platform import Platform
from .blobs import MAX_DOCUMENT_SIZE, TarArchive, TarBlobStore, member_name
from .image import LayerRef, ResolvedImage, Source
from .layout import OCILayout
from .model import check_field_spelling, decode_json, parse_config
from .refs import names_match

# Member names that carry the blob's digest: "blobs/sha256/<hex>" or "<hex>.json".
_DIGEST_NAME_RE = re.compile(r"(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?")
# The fields of a manifest.json entry (docker's and skopeo's ManifestItem); Go matches them
# case-insensitively, see model.MANIFEST_FIELDS.
ARCHIVE_ENTRY_FIELDS = ("Config", "RepoTags", "Layers", "Parent", "LayerSources")


class DockerArchive(Source):
    def __init__(self, path, ref=None, *, oci_only=False):
        self.archive = TarArchive(path)
        self.ref = ref or None
        self.description = self.archive.path
        self._layout = None
        self._configs = {}   # Config member name -> its bytes
        try:
            if oci_only and not self.archive.has("oci-layout") and self.archive.has("manifest.json"):
                raise ImageError(f"{self.description} is a docker-archive (manifest.json, no oci-layout), not an "
                                 f"oci-archive: use docker-archive:{path}")
            if self.archive.has("oci-layout") or oci_only:
                layout = OCILayout(TarBlobStore(self.archive), self._read_meta, self.ref, self.description)
                # docker save of an untagged image writes an empty index.json: use manifest.json then.
                if layout.index.manifests or oci_only or not self.archive.has("manifest.json"):
                    self._layout = layout
                    if self.archive.has("manifest.json"):
                        self._check_manifest_json(layout)
            if self._layout is None:
                self.entries = self._read_manifest_json()
        except BaseException:
            self.close()
            raise

    @property
    def compressed(self):
        """True when the archive is gzip-compressed (its members are inflated to be read)."""
        return self.archive.compressed

    def _read_meta(self, name):
        if not self.archive.has(name):
            return None
        return self.archive.read(name, f"{self.description}: {name}")

    def _read_manifest_json(self):
        what = f"{self.description}: manifest.json"
        if not self.archive.has("manifest.json"):
            raise ImageError(f"{self.description}: not a docker archive (no manifest.json) nor an OCI archive")
        doc = decode_json(self.archive.read("manifest.json", what), what)
        if not isinstance(doc, list) or not doc:
            raise ImageError(f"{what}: expected a non-empty list of images")
        for i, entry in enumerate(doc):
            if isinstance(entry, dict):
                check_field_spelling(entry, ARCHIVE_ENTRY_FIELDS, f"{what}: entry {i}")
            ok = (isinstance(entry, dict) and isinstance(entry.get("Config"), str)
                  and isinstance(entry.get("Layers"), list)
                  and all(isinstance(x, str) for x in entry["Layers"])
                  and isinstance(entry.get("RepoTags") or [], list))
            if not ok:
                raise ImageError(f"{what}: entry {i} lacks Config/Layers")
        return doc

    def _check_manifest_json(self, layout):
        """An archive holding both an OCI layout and a manifest.json (docker >= 25) is read through
        its layout here and by containerd, but through manifest.json by docker's own load and by
        skopeo: each image manifest.json lists must be one of the layout's, config and layers."""
        images = set()
        for desc in _each_manifest(layout):
            try:
                manifest = layout._document(desc)[1]
            except (BlobNotFoundError, ArtifactError):
                continue   # a platform a partial export lists without its blobs; an SBOM, a signature
            images.add((manifest.config.digest, tuple(d.digest for d in manifest.layers)))
        what = f"{self.description}: manifest.json"
        for i, entry in enumerate(self._read_manifest_json()):
            names = [entry["Config"], *entry["Layers"]]
            digests = [re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", member_name(n)) for n in names]
            key = (f"sha256:{digests[0].group(1)}", tuple(f"sha256:{m.group(1)}" for m in digests[1:])) \
                if all(digests) else None
            if key not in images:
                raise ImageError(f"{what}: entry {i} (config {entry['Config']}) is not an image of the archive's "
                                 "index.json: docker and skopeo would load another image than containerd and lamina")

    def _select(self):
        entries = self.entries
        tags = [t for e in entries for t in (e.get("RepoTags") or []) if isinstance(t, str)]
        if self.ref:
            if re.fullmatch(r"@\d+", self.ref, re.ASCII):  # skopeo's docker-archive:PATH:@N
                # a number of thousands of digits is out of range, not a traceback from int()
                n = int(self.ref[1:]) if len(self.ref) <= 19 else len(entries)
                if n < len(entries):
                    return entries[n]
            else:
                for e in entries:
                    if any(names_match(self.ref, t) for t in e.get("RepoTags") or []):
                        return e
            raise ImageNotFoundError(
                f"{self.description}: no image {self.ref!r}; available: {', '.join(tags) or 'none'}"
                f" (or @0..@{len(entries) - 1})")
        if len(entries) == 1:
            return entries[0]
        raise ImageNotFoundError(
            f"{self.description} holds {len(entries)} images; name one (docker-archive:PATH:NAME or :@N);"
            f" available: {', '.join(tags) or 'none'}")

    def resolve(self, platform=None):
        if self._layout is not None:
            return self._layout.resolve(platform)
        want = Platform.parse(platform) if platform is not None else None
        entry = self._select()
        name = ", ".join(t for t in entry.get("RepoTags") or [] if isinstance(t, str)) or entry["Config"]
        check_layer_count(len(entry["Layers"]), f"{self.description}: image {name}")
        what = f"config {entry['Config']}"
        data = self.config_data()
        config_digest = _digest.sha256_bytes(data)
        layer_names = entry["Layers"]
        config = parse_config(data, what, len(layer_names))
        if want is not None and config.platform is not None and config.platform != want:
            raise PlatformNotFoundError(str(want), [str(config.platform)])
        layers = []
        for i, name in enumerate(layer_names):
            size = self.archive.size(name)  # BlobNotFoundError names the member
            blob = re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", member_name(name))
            layers.append(LayerRef(i, config.diff_ids[i], f"sha256:{blob.group(1)}" if blob else None,
                                   size, None, functools.partial(self.archive.open, name)))
        return ResolvedImage(config=config.raw, config_digest=config_digest, layers=layers,
                             platform=config.platform, ref=self.ref)

    def config_data(self):
        """The exact bytes of the chosen image's config (legacy archives: the member its Config names)."""
        config_name = self._select()["Config"]
        if config_name not in self._configs:  # read once: resolve hashes what load then stores
            what = f"config {config_name}"
            data = self.archive.read(config_name, what, limit=MAX_DOCUMENT_SIZE)
            m = _DIGEST_NAME_RE.fullmatch(member_name(config_name))
            if m and (actual := _digest.sha256_bytes(data)) != f"sha256:{m.group(1)}":
                # The config file is named by its digest (the image ID): a mismatch means tampering.
                raise DigestMismatchError(what, f"sha256:{m.group(1)}", actual)
            self._configs[config_name] = data
        return self._configs[config_name]

    def close(self):
        pass  # TarArchive keeps no file open between reads


def _each_manifest(layout):
    """The manifest descriptors index.json lists, and those of the image indexes it lists."""
    for desc in layout.index.manifests:
        if mt.is_manifest(desc.media_type):
            yield desc
        elif mt.is_index(desc.media_type):
            try:
                children = layout._document(desc)[1].manifests
            except BlobNotFoundError:
                continue
            yield from (d for d in children if mt.is_manifest(d.media_type))
