"""An image held in the store: its manifest, config, layers and the names it is known by."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional

from .. import mediatypes as mt
from ..errors import BlobNotFoundError, ImageError
from ..oci.blobs import read_verified
from ..oci.model import document_media_type, load_json, parse_config, parse_manifest
from ..platform import Platform


def chain_ids(diff_ids):
    """OCI ChainIDs: ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


@dataclass
class Image:
    manifest_digest: str
    media_type: str                     # of the manifest (OCI or Docker schema2)
    manifest: dict
    manifest_size: int
    config_digest: str                  # the image ID, as docker shows it
    config: dict
    config_size: int
    layers: list                        # oci.model.Descriptor, bottom first
    diff_ids: list
    platform: Optional[Platform] = None
    refs: list = field(default_factory=list)          # tagged names (Reference), docker's RepoTags
    repo_digests: list = field(default_factory=list)  # "name@sha256:…", docker's RepoDigests
    names: list = field(default_factory=list)         # every index.json name of this image (str)
    # the platforms an index chose this image by that its config does not say (a mislabelled
    # build copied with --platform linux/arm64 whose config says amd64): --platform finds it by them
    chosen_platforms: list = field(default_factory=list)
    # what Store.resolve found it by, as the caller spelled it (a warning names the image so);
    # not part of the image: two resolves of one image are equal
    asked_as: Optional[str] = field(default=None, compare=False, repr=False)

    @property
    def id(self):
        return self.config_digest

    @property
    def chain_ids(self):
        return chain_ids(self.diff_ids)

    @property
    def size(self):
        """Bytes of content: config + layer blobs as stored (compressed)."""
        return self.config_size + sum(layer.size for layer in self.layers)

    @property
    def blobs(self):
        """Every blob digest this image needs, manifest first."""
        return [self.manifest_digest, self.config_digest] + [layer.digest for layer in self.layers]

    @property
    def dangling(self):
        return not self.refs


def read_document(open_blob, digest, what, size=None):
    try:
        with open_blob(digest) as f:
            return read_verified(f, digest, size, what)
    except FileNotFoundError:
        raise BlobNotFoundError(f"{what}: blob {digest} is not in the store") from None


def load_image(open_blob, manifest_digest, media_type=None, size=None):
    """Read and check an image's manifest and config from the store's blobs.

    Raises BlobNotFoundError naming the missing blob, ImageError for anything malformed.
    """
    what = f"manifest {manifest_digest}"
    data = read_document(open_blob, manifest_digest, what, size)
    doc = load_json(data, what)
    media_type = document_media_type(doc, media_type, what)
    if mt.is_index(media_type):
        raise ImageError(f"{what} is an image index; the store keeps platform-specific manifests")
    manifest = parse_manifest(doc, media_type, what, limits=None)   # its source checked the layer count
    cwhat = f"config {manifest.config.digest}"
    cdata = read_document(open_blob, manifest.config.digest, cwhat, manifest.config.size)
    config = parse_config(cdata, cwhat, len(manifest.layers))
    return Image(
        manifest_digest=manifest_digest, media_type=media_type, manifest=doc, manifest_size=len(data),
        config_digest=manifest.config.digest, config=config.raw, config_size=len(cdata),
        layers=list(manifest.layers), diff_ids=list(config.diff_ids), platform=config.platform)
