"""Images as exact bytes, whatever they come from: the store, an OCI layout, a docker or OCI archive.

Copying must keep digests, so an ImageData carries the manifest and config
*bytes* (read through the oci/ readers, which verify them) and an opener per
layer blob.  A legacy ``docker save`` archive has no manifest: one is made
(OCI, deterministic, uncompressed layers whose blob digest is the diffID), so
loading the same archive twice, or from eight processes, names the same image.
"""
from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass, field
from typing import Callable, Optional

from .. import compression
from .. import digest as _digest
from .. import mediatypes as mt
from ..errors import ArtifactError, BlobNotFoundError, ImageError, InvalidReferenceError, LaminaError, layer_of
from ..oci.blobs import read_verified
from ..oci.dockerarchive import DockerArchive, images_of
from ..oci.layout import open_layout_dir
from ..oci.model import document_media_type
from ..reference import Reference
from .output import open_uncompressed

_CHUNK = 1 << 20


@dataclass
class LayerData:
    digest: str
    size: int
    media_type: str
    diff_id: str
    opener: Callable = field(repr=False)
    tar_size: Optional[int] = None      # uncompressed size when known without inflating

    def open(self):
        return self.opener()


@dataclass
class ImageData:
    manifest: bytes
    manifest_digest: str
    media_type: str
    config: bytes
    config_digest: str
    layers: list
    names: list = field(default_factory=list)    # references (Reference) the source names it by
    description: str = ""
    synthesized: bool = False                    # manifest made up for a legacy docker archive
    index: Optional["IndexData"] = None          # the multi-arch image this one is a platform of (load)
    platform: Optional[object] = None            # the Platform an index chose it by (its entry's word)

    @property
    def config_doc(self):
        return json.loads(self.config)


# --- the store ------------------------------------------------------------------

def from_store(store, ref):
    image = store.resolve(ref)
    return image_data(store, image, _store_names(image, ref), str(ref))


def image_data(store, image, names=(), description=""):
    """ImageData of an image in the store (its blobs read, and verified, as they are written out)."""
    with store.open_blob(image.manifest_digest) as f:
        manifest = read_verified(f, image.manifest_digest, None, f"manifest {image.manifest_digest}")
    with store.open_blob(image.config_digest) as f:
        config = read_verified(f, image.config_digest, None, f"config {image.config_digest}")
    layers = []
    rebuilt = False
    # In a compact store a blob chosen here may be dropped before it is read (an unpack beside
    # this compacts the image): it is held open from the choice on, and read through that.
    pin = not store.config()["keep-blobs"]
    if pin:
        # one fd per layer blob still there, until it is written: 500-layer platforms copied
        # --all-platforms by an API caller under a soft limit of 1024 failed "Too many open files"
        from ..limits import make_room_for_fds
        make_room_for_fds(sum(1 for desc in image.layers if store.has_blob(desc.digest)),
                          f"image {image.asked_as or image.manifest_digest}",
                          "a copy out of a compact store (keep-blobs false), which keeps each layer blob open until "
                          "it is written,")
    for desc, diff_id, chain in zip(image.layers, image.diff_ids, image.chain_ids):
        info = store.snapshot_info(chain)
        tar_size = info.tar_bytes if info else (desc.size if mt.layer_compression(desc.media_type) == "none" else None)
        opener = _held_blob(store, desc.digest) if pin else None
        if opener is None and not store.has_blob(desc.digest) and info is not None and store.layer_is_compact(chain):
            # A compact store keeps no blob: the layer leaves as the tar rebuilt from its snapshot,
            # uncompressed, so its digest is its diffID (a gzip stream cannot be reproduced bit-exact).
            layers.append(LayerData(diff_id, info.tar_bytes, _uncompressed_type(desc.media_type), diff_id,
                                    functools.partial(store.layer_reader, desc, diff_id, chain), info.tar_bytes))
            rebuilt = True
            continue
        layers.append(LayerData(desc.digest, desc.size, desc.media_type, diff_id,
                                opener or functools.partial(store.open_blob, desc.digest), tar_size))
    media_type, digest = image.media_type, image.manifest_digest
    if rebuilt:
        manifest, digest = _with_layers(manifest, layers)
    return ImageData(manifest, digest, media_type, config, image.config_digest, layers,
                     list(names), description=description or image.manifest_digest, synthesized=rebuilt)


@dataclass
class IndexData:
    """A multi-arch image of the store: its image index and every platform's ImageData."""
    data: bytes
    digest: str
    media_type: str
    children: list


def multi_arch_from_store(store, image):
    """IndexData when ``image`` is one platform of a multi-arch image whose every platform is
    stored (pull --all-platforms), else None."""
    index_digest, images = store.platforms(image)
    if index_digest is None:
        return None
    with store.open_blob(index_digest) as f:
        data = read_verified(f, index_digest, None, f"index {index_digest}")
    doc = json.loads(data)
    wanted = {m.get("digest") for m in doc.get("manifests") or [] if isinstance(m, dict)}
    if wanted - {i.manifest_digest for i in images}:
        return None  # some platform is missing (or nested): save what is there, the tagged one
    return IndexData(data, index_digest, document_media_type(doc, None, f"index {index_digest}"),
                     [image_data(store, i) for i in images])


def _held_blob(store, digest):
    """An opener of the blob ``digest`` that reads the file open now, even once its name is gone;
    None if it is not in the store (now)."""
    try:
        held = store.open_blob(digest)
    except BlobNotFoundError:
        return None

    def reopen():
        # a new open file description of the same inode: each read starts at 0, on its own
        return open(f"/proc/self/fd/{held.fileno()}", "rb")
    reopen.held = held   # open for as long as the opener lives
    return reopen


def _uncompressed_type(media_type):
    return mt.DOCKER_LAYER if media_type.startswith("application/vnd.docker.") else mt.OCI_LAYER


def _with_layers(manifest, layers):
    """The manifest with new layer descriptors (same order, same config): (bytes, digest)."""
    doc = json.loads(manifest)
    for d, layer in zip(doc["layers"] or [], layers):  # null: no layers (parse_manifest)
        d["mediaType"], d["digest"], d["size"] = layer.media_type, layer.digest, layer.size
        d.pop("urls", None)  # a foreign layer's URLs name the original blob, not this tar
    data = json.dumps(doc, indent=3).encode()
    return data, _digest.sha256_bytes(data)


def _store_names(image, asked):
    """The name a copy out of the store carries: the tag asked for, else the image's only tag."""
    if isinstance(asked, str):
        try:
            ref = Reference.parse(asked)
            if any(r == ref for r in image.refs):
                return [ref]
        except InvalidReferenceError:
            pass
    return list(image.refs[:1]) if len(image.refs) == 1 else []


# --- layouts and archives ----------------------------------------------------------

def open_layout(spec, scratch=None):
    """An OCILayout for ``oci:`` / ``oci-archive:`` (and docker archives that hold one), or None
    for a legacy docker-archive.  Returns (source-to-close, layout-or-None, DockerArchive-or-None).
    ``scratch``: where a zstd, xz or bzip2 archive is inflated (TarArchive)."""
    if spec.transport == "oci":
        layout = open_layout_dir(spec.path, spec.ref)
        return layout, layout, None
    archive = DockerArchive(spec.path, spec.ref, oci_only=spec.transport == "oci-archive", scratch=scratch)
    return archive, archive.layout, archive


def from_layout(layout, platform=None, names=()):
    return _image_data(layout, layout.resolve(platform), names)


def _image_data(layout, image, names=()):
    store = layout.store
    manifest = _read(store, image.manifest_digest, f"manifest {image.manifest_digest}")
    media_type = image.manifest.get("mediaType") or mt.OCI_MANIFEST
    config = _read(store, image.config_digest, f"config {image.config_digest}")
    layers = [LayerData(l.digest, l.size, l.media_type, l.diff_id, l.open,
                        l.size if mt.layer_compression(l.media_type) == "none" else None)
              for l in image.layers]
    return ImageData(manifest, image.manifest_digest, media_type, config, image.config_digest, layers,
                     list(names), description=layout.description, platform=image.platform)


def _with_platforms(layout, data):
    """``data`` (the chosen platform) with ``index`` set when the layout's image is a multi-arch
    index: every platform whose manifest, config and layers the layout holds (a partial export,
    e.g. docker save of one platform, lists platforms it has no blobs for: they are left out)."""
    selected = layout.selected_index()
    if selected is None:
        return data
    desc, raw, manifests = selected
    children = []
    for m in manifests:
        if m.digest == data.manifest_digest:
            children.append(data)
            continue
        try:
            children.append(_image_data(layout, layout.image_of(m)))  # every blob there, or:
        except (BlobNotFoundError, ArtifactError):  # ... not an image (an SBOM, a signature)
            continue
    data.index = IndexData(raw, desc.digest, desc.media_type, children)
    return data


def _read(blob_store, digest, what):
    with blob_store.open(digest) as f:
        return read_verified(f, digest, None, what)


def from_legacy(archive, platform=None, names=()):
    """A classic docker save / skopeo docker-archive image (``archive.ref`` picks which)."""
    image = archive.resolve(platform)
    # The bytes resolve hashed.  Looking for them among the archive's .json members cost a read
    # of the whole archive per member when it is gzipped: hours for a few MiB of members.
    config = archive.config_data()
    layers = []
    for l in image.layers:
        # an archive may hold several images, each with a "layer 1 of 1": say which
        which = f"{archive.description}: {archive.image_name()} {layer_of(l.index, len(image.layers))}"
        opener = functools.partial(open_uncompressed, l.open, which)
        with l.open() as f:
            kind = compression.sniff(f)[1]
        size = l.size if kind == "none" else _count(opener)
        # Stored as an uncompressed OCI layer: its blob digest is its diffID, checked on ingest.
        layers.append(LayerData(l.diff_id, size, mt.OCI_LAYER, l.diff_id, opener, size))
    manifest = {
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": image.config_digest, "size": len(config)},
        "layers": [{"mediaType": l.media_type, "digest": l.digest, "size": l.size} for l in layers],
    }
    data = json.dumps(manifest, separators=(",", ":")).encode()
    return ImageData(data, _digest.sha256_bytes(data), mt.OCI_MANIFEST, config, image.config_digest, layers,
                     list(names), description=archive.description, synthesized=True)


def _count(opener):
    n = 0
    with opener() as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return n
            n += len(chunk)


# --- every image of an archive (load) --------------------------------------------------

def _oci_names(desc):
    """Names an OCI index entry gives an image: containerd's full name, else ref.name if it is a
    reference rather than a bare tag (``latest`` alone says nothing about the repository)."""
    full = desc.annotations.get("io.containerd.image.name")
    ref_name = desc.annotations.get("org.opencontainers.image.ref.name")
    for candidate in (full, ref_name if isinstance(ref_name, str) and any(c in ref_name for c in ":/@") else None):
        if isinstance(candidate, str):
            try:
                return [Reference.parse(candidate)]
            except InvalidReferenceError:
                continue
    return []


@contextlib.contextmanager
def _naming_image(description, name):
    """An error reading one image of an archive (its manifest, config, platforms) names the
    image as the errors of its layers do ("ARCHIVE: image NAME layer 1 of 2 (…)"): a load of
    several images said "config sha256:…: invalid JSON" alone, a digest the user never saw.
    ``name`` None: the archive's only image (its errors keep their words, as unpack's)."""
    try:
        yield
    except LaminaError as e:
        if name is not None and len(e.args) == 1 and isinstance(e.args[0], str):
            msg = e.args[0]
            if msg.startswith(f"{name} "):   # a layer's: "image NAME layer 1 of 2: …"
                e.args = (f"{description}: {msg}",)
            elif not msg.startswith(f"{description}: {name}"):
                e.args = (f"{description}: {name}: {msg}",)
        raise


def _layout_image_name(names, desc):
    """How an error names an image of a layout: its names, else the index.json ref.name."""
    if names:
        return "image " + ", ".join(n.familiar() for n in names)
    ref_name = desc.annotations.get("org.opencontainers.image.ref.name") if desc is not None else None
    return f"image {ref_name}" if isinstance(ref_name, str) else None


def archive_images(spec, platform=None, scratch=None):
    """[ImageData] for every image in an archive or layout (``lamina load``).

    The layer openers stay usable after the source is closed: the oci/ readers
    keep no file open between reads (each open() is independent)."""
    closer, layout, archive = open_layout(spec, scratch)
    with closer:
        if layout is not None:
            return _layout_images(layout, platform, _archive_tags(archive))
        return _legacy_images(archive, platform)


def _archive_tags(archive):
    """{(config digest, layer digests): [Reference]}: the RepoTags of a docker >= 25 archive's
    manifest.json, which docker's load reads alone (index.json is for containerd); a name
    given twice goes to the last entry, as docker tags entry by entry.  The archive was
    opened only if each entry is an image of the layout and each name both files give names
    the same image there (DockerArchive._check_manifest_json)."""
    from ..oci.dockerarchive import entry_image
    entries = getattr(archive, "entries", None) if archive is not None else None
    if not entries:
        return {}
    what = f"{archive.description}: manifest.json"
    last = {}
    for entry in entries:
        key = entry_image(entry)
        for tag in entry.get("RepoTags") or []:
            try:
                last[Reference.parse(tag)] = key
            except InvalidReferenceError as e:
                raise InvalidReferenceError(f"{what}: RepoTags {tag!r}: {e}") from None
    tags = {}
    for name, key in last.items():
        if key is not None:
            tags.setdefault(key, []).append(name)
    return tags


def _layout_images(layout, platform, tags=None):
    out, by_digest, reached = [], {}, []
    descs = layout.index.manifests
    named = [d for d in descs if d.ref_names]
    several = len({d.digest for d in descs}) > 1
    if not named and not tags:
        return [_with_platforms(layout, from_layout(layout, platform))]

    def add(data, names, desc):
        if data.manifest_digest in by_digest:
            kept, known = by_digest[data.manifest_digest]   # known: kept.names as a set
            kept.names.extend(n for n in names if n not in known)
            known.update(names)
            return
        data.names = list(names)
        by_digest[data.manifest_digest] = data, set(names)
        reached.append((data, images_of(layout, desc)))
        out.append(data)

    for d in named:
        layout.ref = d.annotations.get("org.opencontainers.image.ref.name") or d.annotations.get(
            "io.containerd.image.name")
        names = _oci_names(d)
        with _naming_image(layout.description, _layout_image_name(names, d) if several else None):
            data = _with_platforms(layout, from_layout(layout, platform))
        add(data, names, d)
    # A name only manifest.json gives is docker's too: to the image of its entry, which
    # index.json may leave unnamed (then that entry is read, as docker-archive:PATH:@N is).
    for key, names in (tags or {}).items():
        data = next((data for data, images in reached if key in images), None)
        if data is not None:
            add(data, names, None)
            continue
        desc = next((d for d in descs if key in images_of(layout, d)), None)
        if desc is None:
            continue
        layout.ref, layout.pinned = None, desc
        try:
            with _naming_image(layout.description, _layout_image_name(names, None) if several else None):
                data = _with_platforms(layout, from_layout(layout, platform))
            add(data, names, desc)
        finally:
            layout.pinned = None
    return out or [_with_platforms(layout, from_layout(layout, platform))]


def _legacy_images(archive, platform):
    what = f"{archive.description}: manifest.json"
    entries = archive.entries   # read and checked as the archive was opened
    # An image listed again (under other tags) is read, and imported, once: read per entry, a
    # manifest.json repeating one image thousands of times cost that many reads of its layers
    # and the square of it in store updates.  A name goes to the last entry giving it, as when
    # the entries are loaded one after another.
    images, claims = {}, []   # (Config, Layers) -> ImageData; [(that key, names)] in entry order
    several = len({(entry["Config"], tuple(entry["Layers"])) for entry in entries}) > 1
    for i, entry in enumerate(entries):
        names = []
        for tag in entry.get("RepoTags") or []:
            try:
                names.append(Reference.parse(tag))
            except InvalidReferenceError as e:
                raise InvalidReferenceError(f"{what}: RepoTags {tag!r}: {e}") from None
        key = (entry["Config"], tuple(entry["Layers"]))
        if key not in images:
            archive.ref = f"@{i}"
            with _naming_image(archive.description, archive.image_name() if several else None):
                images[key] = from_legacy(archive, platform)
        claims.append((key, names))
    last = {name: key for key, names in claims for name in names}
    for key, names in claims:
        for n in names:
            if last.get(n) == key:
                images[key].names.append(n)
                del last[n]   # given once
    return list(images.values())


def open_image(spec, platform=None, store=None, scratch=None):
    """The one image a spec names (``lamina copy`` source)."""
    if spec.transport == "store":
        if store is None:
            raise ImageError(f"{spec}: no store to read from")
        return from_store(store, spec.ref)
    closer, layout, archive = open_layout(spec, scratch)
    with closer:
        if layout is not None:
            return from_layout(layout, platform)
        return from_legacy(archive, platform)
