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
import json
import re

from .. import digest as _digest
from .. import mediatypes as mt
from ..errors import (ArtifactError, BlobNotFoundError, DigestMismatchError, ImageError, ImageNotFoundError,
                      layer_of, listing, warn_if_other_platform)
from ..limits import MAX_CONFIG_SIZE, check_layer_count
from ..platform import Platform
from .blobs import TarArchive, TarBlobStore, member_name
from .image import LayerRef, ResolvedImage, Source
from .layout import OCILayout
from .model import check_field_spelling, decode_json, parse_config
from .refs import names_match, normalize_docker_name

# Member names that carry the blob's digest: "blobs/sha256/<hex>" or "<hex>.json".
_DIGEST_NAME_RE = re.compile(r"(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?")
# The fields of a manifest.json entry (docker's and skopeo's ManifestItem); Go matches them
# case-insensitively, see model.MANIFEST_FIELDS.
ARCHIVE_ENTRY_FIELDS = ("Config", "RepoTags", "Layers", "Parent", "LayerSources")


class DockerArchive(Source):
    def __init__(self, path, ref=None, *, oci_only=False, scratch=None):
        self.archive = TarArchive(path, scratch)
        self.ref = ref or None
        self.description = self.archive.path
        self._layout = None
        self._configs = {}   # Config member name -> its bytes
        try:
            if oci_only and not self.archive.has("oci-layout") and self.archive.has("manifest.json"):
                raise ImageError(f"{self.description} is a docker-archive (manifest.json, no oci-layout), not an "
                                 f"oci-archive: use docker-archive:{path}")
            if self.archive.has("oci-layout") or oci_only:
                try:
                    layout = OCILayout(TarBlobStore(self.archive), self._read_meta, self.ref, self.description)
                except ImageError as e:
                    # docker's load and skopeo's docker-archive: read manifest.json alone: an
                    # unreadable oci-layout or index.json beside it is none of theirs (an
                    # oci-archive: is read through them, as skopeo's oci-archive: reads it)
                    # (a member held twice stays refused: skopeo reads the first, tar the last)
                    if oci_only or not self.archive.has("manifest.json") or \
                            self.archive.twice & {"oci-layout", "index.json"}:
                        raise
                    layout = None
                # docker save of an untagged image writes an empty index.json: use manifest.json then.
                if layout is not None and (layout.index.manifests or oci_only
                                           or not self.archive.has("manifest.json")):
                    self._layout = layout
                    if self.archive.has("manifest.json"):
                        self._check_manifest_json(layout, oci_only)
            if self._layout is None:
                self.entries = self._read_manifest_json()
        except BaseException:
            self.close()
            raise

    @property
    def layout(self):
        """The OCI layout the archive is read through, or None for a legacy docker save."""
        return self._layout

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
            if self.archive.has("repositories"):
                # docker load still reads these by each layer's <id>/json; skopeo refuses them too
                raise ImageError(f"{self.description}: a docker save from before docker 1.10 (a 'repositories' file, "
                                 "no manifest.json): lamina reads manifest.json; load it into docker and save it again")
            raise ImageError(f"{self.description}: not a docker archive (no manifest.json) nor an OCI archive")
        doc = decode_json(self.archive.read("manifest.json", what), what)
        if not isinstance(doc, list) or not doc:
            raise ImageError(f"{what}: expected a non-empty list of images")
        for i, entry in enumerate(doc):
            if isinstance(entry, dict):
                check_field_spelling(entry, ARCHIVE_ENTRY_FIELDS, f"{what}: entry {i}")
                if "Layers" in entry and entry["Layers"] is None:
                    # Go writes an empty slice as null (BuildKit's export of an image of no
                    # layers), and reads null back as one: docker load and skopeo take it
                    entry["Layers"] = []
            ok = (isinstance(entry, dict) and isinstance(entry.get("Config"), str)
                  and isinstance(entry.get("Layers"), list)
                  and all(isinstance(x, str) for x in entry["Layers"]))
            if not ok:
                raise ImageError(f"{what}: entry {i} lacks Config/Layers")
            # Go's readers (docker load, skopeo) fail on a RepoTags that is no []string; unpack by
            # name matched the name against whatever was there (a TypeError on a number)
            tags = entry.get("RepoTags")
            if tags is not None and not isinstance(tags, list):
                raise ImageError(f"{what}: entry {i}: RepoTags must be a list of names, not {json.dumps(tags)[:60]}")
            for tag in tags or ():
                if not isinstance(tag, str):
                    raise ImageError(f"{what}: entry {i}: RepoTags {repr(tag)[:60]} is not a string")
        return doc

    def _check_manifest_json(self, layout, oci_only):
        """An archive holding both an OCI layout and a manifest.json (docker >= 25) is read through
        its layout here and by containerd, but through manifest.json by docker's own load and by
        skopeo: each image manifest.json lists must be one of the layout's, config and layers; a
        name both give must name the same image; and ``docker-archive:`` must pick, for its ref or
        none, the image manifest.json's reader (skopeo) picks."""
        what = f"{self.description}: manifest.json"
        self.entries = self._read_manifest_json()
        keys = [entry_image(entry) for entry in self.entries]
        by_name = {}   # a name -> the images index.json gives it (an index: each of its manifests)
        images = set()
        for desc in layout.index.manifests:
            reached = images_of(layout, desc)
            images |= reached
            # a bare ref.name ("1", as docker writes beside the full name) names no repository
            for name in (n for n in desc.ref_names if any(c in n for c in ":/@")):
                by_name.setdefault(normalize_docker_name(name), set()).update(reached)
        for i, (entry, key) in enumerate(zip(self.entries, keys)):
            if key not in images:
                raise ImageError(f"{what}: entry {i} (config {entry['Config']}) is not an image of the archive's "
                                 "index.json: docker and skopeo would load another image than containerd and lamina")
        last = {}   # docker load tags entry by entry: a name given twice goes to the last entry
        for i, entry in enumerate(self.entries):
            for tag in entry.get("RepoTags") or []:
                if isinstance(tag, str):
                    last[normalize_docker_name(tag)] = (i, tag)
        for name, (i, tag) in last.items():
            if name in by_name and keys[i] not in by_name[name]:
                raise ImageError(f"{what}: entry {i} (config {self.entries[i]['Config']}) is named {tag!r}, but "
                                 f"index.json gives {tag!r} to another image: docker and skopeo would load another "
                                 "image under that name than containerd and lamina")
        if oci_only:
            return
        if self.ref and (re.fullmatch(r"@\d+", self.ref, re.ASCII) or not layout._named(self.ref)):
            # skopeo's docker-archive:PATH:@N is manifest.json's entry N, and its :NAME a name of
            # manifest.json's (docker's load gives it too), which index.json may name nothing by:
            # the layout reads that entry's manifest (it is one of the layout's, see above)
            key = entry_image(self._select())
            layout.pinned = next(d for d in _manifests_of(layout) if images_of(layout, d) == {key})
            return
        try:
            entry = self._select()
            picked = set().union(*(images_of(layout, d) for d in layout._select()))
        except ImageError:
            return   # nothing picked on one side: resolving says so
        if entry_image(entry) not in picked:
            raise ImageError(f"{what}: picks config {entry['Config']} for {self.ref or 'no name'!r}, but index.json "
                             "picks another image: skopeo's docker-archive reader would read another image than "
                             "lamina (name the image: docker-archive:PATH:NAME)")

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
                named = [e for e in entries if any(names_match(self.ref, t) for t in e.get("RepoTags") or [])]
                images = {(e["Config"], tuple(e["Layers"])): e for e in named}
                if len(images) > 1:
                    # no tool writes a name twice; when one is, skopeo reads its first image and
                    # docker load tags the last: the name means two images
                    raise ImageError(
                        f"{self.description}: manifest.json: {self.ref!r} names {len(images)} different images "
                        f"(configs {', '.join(e['Config'] for e in images.values())}): skopeo reads the first, docker "
                        "load tags the last")
                if named:
                    return named[0]
            raise ImageNotFoundError(
                f"{self.description}: no image {self.ref!r}; available: {listing(tags)}"
                f" (or @0..@{len(entries) - 1})")
        if len(entries) == 1:
            return entries[0]
        raise ImageNotFoundError(
            f"{self.description} holds {len(entries)} images; name one (docker-archive:PATH:NAME or :@N);"
            f" available: {listing(tags)}")

    def resolve(self, platform=None):
        if self._layout is not None:
            return self._layout.resolve(platform)
        want = Platform.parse(platform) if platform is not None else None
        entry = self._select()
        check_layer_count(len(entry["Layers"]), f"{self.description}: {self.image_name()}")
        what = f"config {entry['Config']}"
        data = self.config_data()
        config_digest = _digest.sha256_bytes(data)
        layer_names = entry["Layers"]
        config = parse_config(data, what, len(layer_names))
        # a single image: taken, with a warning if it is of another platform (as docker's load)
        warn_if_other_platform(want, config.platform, f"{self.image_name()} of {self.description}")
        layers = []
        for i, name in enumerate(layer_names):
            try:
                size = self.archive.size(name)
            except BlobNotFoundError as e:
                if getattr(e, "dangling", False):
                    raise  # a link's ("ARCHIVE: member NAME is a symlink to …"): led by the archive
                # led by the archive's name and saying which layer, as the layout form's error and
                # every other error of the archive's images (it said "l/layer.tar not found in ARCHIVE")
                raise BlobNotFoundError(f"{self.description}: {self.image_name()} {layer_of(i, len(layer_names))}: "
                                        f"member {name} not found in it") from None
            blob = re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", member_name(name))
            layers.append(LayerRef(i, config.diff_ids[i], f"sha256:{blob.group(1)}" if blob else None,
                                   size, None, functools.partial(self.archive.open, name)))
        return ResolvedImage(config=config.raw, config_digest=config_digest, layers=layers,
                             platform=config.platform, ref=self.ref)

    def image_name(self):
        """How an error names the chosen image among the archive's: "image " and its RepoTags,
        else its Config member (the image ID)."""
        entry = self._select()
        return "image " + (", ".join(t for t in entry.get("RepoTags") or [] if isinstance(t, str)) or entry["Config"])

    def config_data(self):
        """The exact bytes of the chosen image's config (legacy archives: the member its Config names)."""
        config_name = self._select()["Config"]
        if config_name not in self._configs:  # read once: resolve hashes what load then stores
            what = f"config {config_name}"
            data = self.archive.read(config_name, what, limit=MAX_CONFIG_SIZE)
            m = _DIGEST_NAME_RE.fullmatch(member_name(config_name))
            if m and (actual := _digest.sha256_bytes(data)) != f"sha256:{m.group(1)}":
                # The config file is named by its digest (the image ID): a mismatch means tampering.
                raise DigestMismatchError(what, f"sha256:{m.group(1)}", actual)
            self._configs[config_name] = data
        return self._configs[config_name]

    def close(self):
        pass  # TarArchive keeps no file open between reads


def entry_image(entry):
    """(config digest, layer digests) of a manifest.json entry naming layout blobs, else None."""
    names = [entry["Config"], *entry["Layers"]]
    digests = [re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", member_name(n)) for n in names]
    if not all(digests):
        return None
    return f"sha256:{digests[0].group(1)}", tuple(f"sha256:{m.group(1)}" for m in digests[1:])


def _manifests_of(layout, desc=None):
    """The manifest descriptors an index.json entry leads to (itself, or an image index's), or
    with no entry those of every entry."""
    if desc is None:
        for d in layout.index.manifests:
            yield from _manifests_of(layout, d)
        return
    descs = [desc]
    if mt.is_index(desc.media_type):
        try:
            descs = layout._document(desc)[1].manifests
        except BlobNotFoundError:
            return
    yield from (d for d in descs if mt.is_manifest(d.media_type))


def images_of(layout, desc):
    """{(config digest, layer digests)} of the images an index.json entry leads to: a manifest, or
    those of an image index.  Blobs a partial export left out, and artifacts, lead to none."""
    out = set()
    for d in _manifests_of(layout, desc):
        try:
            manifest = layout._document(d)[1]
        except (BlobNotFoundError, ArtifactError):
            continue
        out.add((manifest.config.digest, tuple(l.digest for l in manifest.layers)))
    return out
