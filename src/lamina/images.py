"""The docker image verbs as an API: what ``lamina images``, ``inspect``, ``history``,
``rmi``, ``image prune`` and ``system df`` show or do, as plain data.

    import lamina
    from lamina import images as I

    store = lamina.Store()
    for row in I.ls(store, filters={"dangling": ["true"]}):     # lamina images --filter dangling=true
        print(row.id, row.repo_tags, row.size)
    details = I.inspect(store, "app:1")                         # lamina inspect app:1
    for item in I.history(store, "app:1"): ...                  # lamina history app:1
    I.tag(store, "app:1", "app:latest")                         # lamina tag
    result = I.remove(store, "app:1")                           # lamina rmi app:1
    result = I.prune(store, all=True)                           # lamina image prune -a -f
    usage = I.disk_usage(store)                                 # lamina system df

The CLI (cli/images.py) only formats these.  Sizes mean what docker's do: an image's
size is its unpacked content (the sum of its layers' snapshots, bytes on disk; a layer
not extracted yet counts its compressed size), so every tag of an image shows the same
size and ``history`` adds up to it.  Layers used by several images are their shared
size; ``system df`` also counts as shared the files of an image's other layers that
share a file object (dedup) with another image, so UNIQUE SIZE is what removing that
image alone frees.  The compressed blobs lamina also keeps (for push and save) are counted by
``disk_usage`` on their own line.

Mounts (``lamina mount``) and bundles (``lamina unpack --bundle``) play the part of
docker's containers: they keep their image in use (remove needs force, prune skips it).
"""
from __future__ import annotations

import itertools
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Optional

from .apiargs import a_flag, a_path, a_store
from .errors import AmbiguousImageError, ImageError, ImageNotFoundError, InvalidReferenceError, LaminaError, StoreError
from .reference import Reference

# --- what is in use, and how big ------------------------------------------------------------


def created_ts(image):
    """The image's creation time (unix seconds), None if its config does not say."""
    from .timefmt import parse_rfc3339
    parsed = parse_rfc3339((image.config or {}).get("created"))
    return parsed[0] if parsed else None


def in_use(store):
    """{manifest digest: [records]} of the mounts and bundles that keep an image in use."""
    from .store.inuse import in_use as records
    out = {}
    for rec in records(store):
        out.setdefault(rec["manifest_digest"], []).append(rec)
    return out


class Sizes:
    """Sizes of the images of a store, docker's way (see the module docstring)."""

    def __init__(self, store, images=None, *, file_level=False):
        """``file_level``: shared sizes also count files shared with other images through the
        store's file objects (dedup), not only whole layers (``system df`` does; it reads every
        snapshot's objects list, in bounded memory: objects.shared_file_bytes)."""
        self.store = store
        self._images = images
        self._users = None
        self._snap = {}
        self._files = None
        if file_level and store.exists:
            from .store.objects import shared_file_bytes
            self._files = shared_file_bytes(store, self.images)

    @property
    def images(self):
        # read when first needed: an image's size is its own layers' (inspect, history), and
        # every image's config is parsed whole to list them (an 8 MB one takes a second)
        if self._images is None:
            self._images = self.store.images()
        return self._images

    @property
    def users(self):
        """chainID -> number of images whose layers include it."""
        if self._users is None:
            self._users = {}
            for img in self.images:
                for c in set(img.chain_ids):
                    self._users[c] = self._users.get(c, 0) + 1
        return self._users

    def snapshot_size(self, chain):
        """Bytes on disk of an extracted snapshot, None if it was not extracted."""
        if chain not in self._snap:
            try:
                info = self.store.snapshot_info(chain)
            except LaminaError:  # a broken snapshot counts as absent here; fsck reports it
                info = None
            self._snap[chain] = info.size if info is not None else None
        return self._snap[chain]

    def layer_sizes(self, image):
        """Each layer's size, bottom first: its snapshot, or its compressed blob if not extracted."""
        out = []
        for chain, layer in zip(image.chain_ids, image.layers):
            s = self.snapshot_size(chain)
            out.append(s if s is not None else layer.size)
        return out

    def _by_chain(self, image):
        return dict(zip(image.chain_ids, self.layer_sizes(image)))

    def size(self, image):
        return sum(self._by_chain(image).values())

    def shared(self, image):
        layers = sum(s for c, s in self._by_chain(image).items() if self.users.get(c, 0) > 1)
        files = self._files.get(image.manifest_digest, 0) if self._files is not None else 0
        return min(layers + files, self.size(image))

    def total(self, images=None):
        """The images' layers, each counted once."""
        chains = {}
        for img in (self.images if images is None else images):
            chains.update(self._by_chain(img))
        return sum(chains.values())


# --- filters (docker's --filter) ---------------------------------------------------------------

IMAGE_FILTERS = ("dangling", "reference", "label", "before", "since", "until")
PRUNE_FILTERS = ("until", "label", "label!")


def parse_filters(values, allowed=IMAGE_FILTERS):
    """docker's --filter key=value (repeatable) -> {key: [values]}; unknown keys are an error."""
    out = {}
    for v in values or []:
        key, sep, val = v.partition("=")
        key = key.strip().lower()
        if not sep:
            raise LaminaError(f"bad format of filter (expected name=value): {v}")
        if key not in allowed:
            raise LaminaError(f"invalid filter '{key}'")
        out.setdefault(key, []).append(val)
    return out


def _check_filters(filters, allowed):
    if filters is not None and not isinstance(filters, dict):
        # an int said "'int' object is not iterable", naming no argument
        raise TypeError(f"filters: {{key: [values]}} or a list of \"key=value\" strings, not {filters!r}")
    for key in filters or {}:
        if key not in allowed:
            raise LaminaError(f"invalid filter '{key}'")
    return {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in (filters or {}).items()}


def _bool_filter(vals, name):
    out = set()
    for v in vals:
        lv = str(v).lower()
        if lv in ("true", "1"):
            out.add(True)
        elif lv in ("false", "0"):
            out.add(False)
        else:
            raise LaminaError(f"invalid filter '{name}={v}': expected true or false")
    if len(out) > 1:
        raise LaminaError(f"conflicting {name} filters")
    return out.pop()


class _BadPattern(Exception):
    pass


def _path_match(pattern, name):
    """Go's path.Match: '*' and '?' do not cross '/'.  Go's own way, chunk by chunk, each
    taken at the first place it fits: a translation to a regular expression backtracked
    over every way to split the name (a pattern of ten '*a' against a name of 60 'a's ran
    for hours); a malformed pattern is Go's ErrBadPattern."""
    while pattern:
        star, chunk, pattern = _scan_chunk(pattern)
        if star and not chunk:
            return "/" not in name   # a trailing '*' takes the rest of a name without '/'
        rest = _match_chunk(chunk, name)
        if rest is not None and (not rest or pattern):
            name = rest
            continue
        if star and (rest := _skip_to_chunk(chunk, name, pattern)) is not None:
            name = rest
            continue
        while pattern:   # no match: the rest of the pattern must still be well-formed, as in Go
            _, chunk, pattern = _scan_chunk(pattern)
            _match_chunk(chunk, "")
        return False
    return not name


def _skip_to_chunk(chunk, name, pattern):
    """After a '*': what is left of ``name`` once ``chunk`` matched at the first place past
    its start it can (the star skips no '/'), or None."""
    for i in range(len(name)):
        if name[i] == "/":
            return None
        rest = _match_chunk(chunk, name[i + 1:])
        if rest is not None and (pattern or not rest):   # the last chunk must end the name
            return rest
    return None


def _scan_chunk(pattern):
    star = False
    while pattern.startswith("*"):
        pattern, star = pattern[1:], True
    inrange, i = False, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern):
                i += 1
        elif c == "[":
            inrange = True
        elif c == "]":
            inrange = False
        elif c == "*" and not inrange:
            break
        i += 1
    return star, pattern[:i], pattern[i:]


def _match_chunk(chunk, s):
    """What is left of ``s`` once ``chunk`` (no '*' outside a class) matched its start, or
    None; the whole chunk is checked for syntax whether or not it matched."""
    failed = False
    while chunk:
        if not failed and not s:
            failed = True
        c = chunk[0]
        if c == "[":
            r = None
            if not failed:
                r, s = s[0], s[1:]
            chunk = chunk[1:]
            negated = chunk.startswith("^")
            if negated:
                chunk = chunk[1:]
            match, nrange = False, 0
            while True:
                if chunk.startswith("]") and nrange > 0:
                    chunk = chunk[1:]
                    break
                lo, chunk = _get_esc(chunk)
                hi = lo
                if chunk[0] == "-":
                    hi, chunk = _get_esc(chunk[1:])
                if r is not None and lo <= r <= hi:
                    match = True
                nrange += 1
            if match == negated:
                failed = True
        elif c == "?":
            if not failed:
                failed, s = s[0] == "/", s[1:]
            chunk = chunk[1:]
        else:
            if c == "\\":
                chunk = chunk[1:]
                if not chunk:
                    raise _BadPattern
            if not failed:
                failed, s = chunk[0] != s[0], s[1:]
            chunk = chunk[1:]
    return None if failed else s


def _get_esc(chunk):
    if not chunk or chunk[0] in "-]":
        raise _BadPattern
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if not chunk:
            raise _BadPattern
    rest = chunk[1:]
    if not rest:
        raise _BadPattern
    return chunk[0], rest


def _ref_match(pattern, ref):
    # docker's FamiliarMatch: the familiar string, then the name alone; a bad pattern is an error
    try:
        return _path_match(pattern, ref.familiar()) or _path_match(pattern, ref.familiar_name)
    except _BadPattern:
        raise LaminaError(f"invalid reference filter {pattern!r}: syntax error in pattern") from None


def matching_names(patterns, image):
    """(tags, repo digests) of the image that docker's reference filter (FamiliarMatch) keeps."""
    refs = [r for r in image.refs if any(_ref_match(p, r) for p in patterns)]
    rds = []
    for rd in image.repo_digests:
        try:
            r = Reference.parse(rd, default_tag=False)
        except InvalidReferenceError:
            continue
        if any(_ref_match(p, r) for p in patterns):
            rds.append(rd)
    return refs, rds


def label_match(image, spec):
    """docker's label=KEY, label=KEY=VALUE (and prune's label!=...) on the image config's Labels."""
    labels = ((image.config or {}).get("config") or {}).get("Labels") or {}
    key, sep, val = spec.partition("=")
    if key.endswith("!"):
        return labels.get(key[:-1]) != val
    if not sep:
        return key in labels
    return labels.get(key) == val


def parse_until(value):
    """docker's until filter: a Go duration (10m, 1h30m), a unix timestamp or an RFC 3339 time -> unix seconds."""
    from .timefmt import parse_rfc3339
    m = re.fullmatch(r"((?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+)", value)
    if m:
        units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
        total = sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", value))
        return time.time() - total
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parsed = parse_rfc3339(value) or parse_rfc3339(value + "T00:00:00Z")
    if parsed:
        return parsed[0]
    raise LaminaError(f"invalid filter 'until={value}': expected a duration (24h), a timestamp or a date")


def filter_images(store, images, filters):
    out = list(images)
    if "dangling" in filters:
        want = _bool_filter(filters["dangling"], "dangling")
        out = [i for i in out if (not i.refs) == want]
    if "reference" in filters:
        pats = filters["reference"]
        out = [i for i in out if any(matching_names(pats, i))]
    if "label" in filters:
        out = [i for i in out if all(label_match(i, spec) for spec in filters["label"])]
    for key in ("before", "since"):
        for v in filters.get(key, []):
            try:
                ref_img = store.resolve(v)
            except LaminaError as e:
                raise LaminaError(f"invalid filter '{key}={v}': {e}") from None
            t0 = created_ts(ref_img)
            if t0 is None:
                continue
            if key == "before":
                out = [i for i in out if (created_ts(i) or 0) < t0]
            else:
                out = [i for i in out if (created_ts(i) or 0) > t0]
    for v in filters.get("until", []):
        limit = parse_until(v)
        out = [i for i in out if (created_ts(i) or 0) < limit]
    return out


def newest_first(images):
    """The daemon's order: newest first, images without a creation time last."""
    return sorted(images, key=lambda i: -(created_ts(i) or float("-inf")))


# --- ls ----------------------------------------------------------------------------------------


@dataclass
class ImageSummary:
    """One image as ``lamina images`` lists it (docker's image.Summary)."""
    id: str                              # the config digest
    manifest_digest: str
    repo_tags: list                      # familiar "name:tag" strings the filters kept
    repo_digests: list                   # familiar "name@sha256:..." strings the filters kept
    created: Optional[float]             # unix seconds, None if the config does not say
    size: int                            # unpacked content (see the module docstring)
    shared_size: int                     # the part of it in layers other images use too
    containers: int                      # mounts and bundles using it
    labels: dict = field(default_factory=dict)
    image: object = field(default=None, repr=False, compare=False)   # the store.Image

    @property
    def unique_size(self):
        return self.size - self.shared_size

    @property
    def dangling(self):
        return not self.image.refs if self.image is not None else not self.repo_tags

    def to_dict(self):
        return {"id": self.id, "manifest_digest": self.manifest_digest, "repo_tags": self.repo_tags,
                "repo_digests": self.repo_digests, "created": self.created, "size": self.size,
                "shared_size": self.shared_size, "unique_size": self.unique_size, "containers": self.containers,
                "labels": self.labels}


def ls(store, filters=None, *, sizes=None, use=None):
    """The images ``lamina images`` lists, newest first.  ``filters``: {key: [values]} or a
    list of docker's "key=value" strings (dangling, reference, label, before, since, until)."""
    a_store(store)
    if isinstance(filters, (list, tuple)):
        filters = parse_filters(filters)
    filters = _check_filters(filters, IMAGE_FILTERS)
    every = store.images()   # once: each image's config is parsed again by another images()
    images = newest_first(filter_images(store, every, filters))
    sizes = sizes or Sizes(store, every)
    use = in_use(store) if use is None else use
    out = []
    for img in images:
        refs, rds = (matching_names(filters["reference"], img) if "reference" in filters
                     else (img.refs, img.repo_digests))
        labels = ((img.config or {}).get("config") or {}).get("Labels") or {}
        out.append(ImageSummary(
            id=img.config_digest, manifest_digest=img.manifest_digest, repo_tags=[r.familiar() for r in refs],
            repo_digests=[familiar(rd) for rd in rds], created=created_ts(img), size=sizes.size(img),
            shared_size=sizes.shared(img), containers=len(use.get(img.manifest_digest, [])),
            labels=dict(labels) if isinstance(labels, dict) else {}, image=img))
    return out


def familiar(name):
    """``name`` as docker shows it (docker.io/library/ dropped); a name that is not a reference as is."""
    try:
        return Reference.parse(name, default_tag=False).familiar()
    except InvalidReferenceError:
        return name


# --- inspect -------------------------------------------------------------------------------------


@dataclass
class ImageDetails:
    """Everything ``lamina inspect`` shows of one image."""
    image: object                      # store.Image: manifest, config (dict), layers, diff_ids, platform
    size: int
    snapshot_dirs: list                # each layer's extracted tree, bottom first (overlayfs lowerdirs)
    index_digest: Optional[str] = None  # a multi-arch image: the index its platforms are stored under
    platforms: list = field(default_factory=list)   # "os/arch[/variant]" of each stored platform

    @property
    def id(self):
        return self.image.config_digest

    def to_dict(self):
        img = self.image
        return {"id": img.config_digest, "manifest_digest": img.manifest_digest, "media_type": img.media_type,
                "repo_tags": [r.familiar() for r in img.refs], "repo_digests": [familiar(d) for d in img.repo_digests],
                "config": img.config, "diff_ids": list(img.diff_ids), "size": self.size,
                "snapshot_dirs": self.snapshot_dirs, "index_digest": self.index_digest, "platforms": self.platforms}


def inspect(store, ref, *, sizes=None):
    """ImageDetails of the image ``ref`` names (name[:tag], name@digest, ID or ID prefix)."""
    a_store(store)
    image = store.resolve(ref)
    sizes = sizes or Sizes(store)
    index_digest, stored = store.platforms(image)
    platforms = [str(i.platform) for i in stored if i.platform is not None] if index_digest else []
    return ImageDetails(image=image, size=sizes.size(image),
                        snapshot_dirs=[str(store.snapshot_dir(c)) for c in image.chain_ids],
                        index_digest=index_digest, platforms=platforms)


# --- history -------------------------------------------------------------------------------------


@dataclass
class HistoryItem:
    """One row of ``lamina history``, newest first (docker's image.HistoryResponseItem)."""
    id: str                 # the image ID on the newest row, "<missing>" below it (as docker shows)
    created: float
    created_by: str
    size: int               # the layer's size (0 for an empty_layer step); the rows add up to the image's
    comment: str
    empty_layer: bool = False

    def to_dict(self):
        return {"id": self.id, "created": self.created, "created_by": self.created_by, "size": self.size,
                "comment": self.comment, "empty_layer": self.empty_layer}


def history(store, ref, *, sizes=None):
    """The image's build steps, newest first; an image whose config has no history gets one
    row per layer (docker shows none)."""
    return list(HistorySteps(store, ref, sizes=sizes))


class HistorySteps:
    """``history``'s rows made as they are iterated, newest first, as often as iterated: what
    ``lamina history`` streams (350,000 steps held as rows took a gigabyte).  The image, its
    layer sizes and docker's check of the steps against the layers are done once, here."""

    def __init__(self, store, ref, *, sizes=None):
        a_store(store)
        self.image = image = ref if hasattr(ref, "chain_ids") else store.resolve(ref)
        self.sizes = list((sizes or Sizes(store, [image])).layer_sizes(image))
        hist = (image.config or {}).get("history")
        self.hist = hist if isinstance(hist, list) and hist else None
        if self.hist is not None:
            steps = sum(1 for h in self.hist if isinstance(h, dict) and not h.get("empty_layer"))
            if steps > len(self.sizes):
                # docker refuses this too ("too many non-empty layers in History section"): the
                # rows would show steps of layers the image does not have, each 0B
                raise ImageError(f"image {image.config_digest}: its config's history lists more steps with a "
                                 f"layer (not empty_layer) than the image's {len(self.sizes)} layers")
            self.steps = steps

    def __iter__(self):
        from .timefmt import parse_rfc3339
        image, sizes = self.image, self.sizes
        ids = itertools.chain([image.config_digest], itertools.repeat("<missing>"))
        if self.hist is None:
            ts = created_ts(image) or 0
            for s in reversed(sizes):
                yield HistoryItem(next(ids), ts, "", s, "")
            return
        layer = self.steps   # the step with a layer k-th from the oldest has the k-th layer's size
        for h in reversed(self.hist):
            if not isinstance(h, dict):
                continue
            empty = bool(h.get("empty_layer"))
            if not empty:
                layer -= 1
            parsed = parse_rfc3339(h.get("created"))
            yield HistoryItem(next(ids), parsed[0] if parsed else 0, str(h.get("created_by") or ""),
                              0 if empty else sizes[layer], str(h.get("comment") or ""), empty)


# --- tag, remove, prune ----------------------------------------------------------------------------


def tag(store, source, target):
    """Give the image ``source`` names the name ``target`` (docker tag).  Returns the store.Image."""
    a_store(store)
    image = store.resolve(source)
    parsed = Reference.parse(target)
    if parsed.digest:
        raise InvalidReferenceError(f"refusing to create a tag with a digest reference: {target}")
    if store.writable:   # (a read-only store names what it holds already, or says it is read-only)
        store.hold_image(image)
    return store.add_image(image.manifest_digest, parsed)


@dataclass
class RemoveResult:
    """What ``lamina rmi`` did: names untagged, image IDs deleted, unused snapshots removed."""
    untagged: list = field(default_factory=list)     # familiar names
    deleted: list = field(default_factory=list)      # image IDs that left the store
    snapshots: list = field(default_factory=list)    # chainIDs of the layers removed with them
    reclaimed: int = 0                               # bytes
    busy: bool = False                               # another writer ran: it collects the layers when done
    # manifests that left the store (an image's ID may stay, by another manifest of it): what
    # they alone used is unused now (not in to_dict: docker's output has no such list)
    manifests: list = field(default_factory=list)

    def to_dict(self):
        return {"untagged": self.untagged, "deleted": self.deleted, "snapshots": self.snapshots,
                "reclaimed": self.reclaimed, "busy": self.busy}


def _use_text(recs):
    return ", ".join(("mount " if r["kind"] == "mount" else "bundle ") + r["path"] for r in recs)


def _short(image_id):
    return image_id.split(":", 1)[-1][:12]


def _parses(name):
    try:
        Reference.parse(name, default_tag=False)
        return True
    except InvalidReferenceError:
        return False


def _id_still_there(store, image_id):
    return any(i.config_digest == image_id for i in store.images(skip_broken=True))


def remove(store, ref, *, force=False, prune=True):
    """docker's ImageDelete for one reference: untag a name, or remove an image by ID.

    Refuses (LaminaError, docker's "conflict: ...") an image in use by a mount or bundle,
    or an ID several repositories name, unless ``force``.  With ``prune`` the layers no
    image needs any more are deleted now.  Returns RemoveResult."""
    a_store(store)
    a_flag(force, "force")
    a_flag(prune, "prune")
    from .store.store import name_of
    try:
        image = store.resolve(ref)
    except (ImageError, StoreError) as e:
        if isinstance(e, ImageNotFoundError) and not _ID_LIKE.fullmatch(ref):
            raise   # (an ID of broken images only is not found by resolve(), which skips them)
        return _untag_broken(store, ref, e, force=force, prune=prune)
    uses = in_use(store)
    use = uses.get(image.manifest_digest, [])
    result = RemoveResult()
    by_id = ref.startswith("sha256:") or re.fullmatch(r"[0-9a-f]{64}", ref) is not None
    if not by_id:
        try:
            wanted = name_of(Reference.parse(ref))
            # a name that is also a hex prefix of the ID: docker prefers the name when it exists
            by_id = wanted not in image.names and re.fullmatch(r"[0-9a-f]{1,64}", ref) is not None
        except InvalidReferenceError:
            by_id = True
    gone = False
    if not by_id:
        full = Reference.parse(ref)
        others = [n for n in image.names if n != name_of(full)]
        if use and not others and not force:
            raise LaminaError(f'conflict: unable to remove repository reference "{ref}" (must force) - image '
                              f"{_short(image.config_digest)} is in use by {_use_text(use)}")
        gone = store.untag(full)
        result.untagged.append(full.familiar())
    else:
        # An image ID is the image under every manifest the store holds it by (a copy of it
        # loaded back from a compact store, a save of it re-loaded): docker has one image per ID.
        # A manifest digest is that manifest alone.
        same = [image]
        if "sha256:" + ref.split(":", 1)[-1] != image.manifest_digest:
            same += [i for i in store.images(skip_broken=True)
                     if i.config_digest == image.config_digest and i.manifest_digest != image.manifest_digest]
        names = [n for i in same for n in i.names]
        use = [r for i in same for r in uses.get(i.manifest_digest, [])]
        _refuse_id_conflicts(image.config_digest, names, use, force)
        for i in same:
            result.untagged += [familiar(n) for n in store.remove_image(i)]
        gone = True
    if gone and not use:
        result.manifests.append(image.manifest_digest)
    if gone and not use and not _id_still_there(store, image.config_digest):
        result.deleted.append(image.config_digest)
    if gone and not use and prune:
        collect_unused(store, result)
    return result


# an image ID, whole or a prefix, with or without its algorithm (or a manifest digest)
_ID_LIKE = re.compile(r"(sha256:)?[0-9a-f]{1,64}")


def _refuse_id_conflicts(image_id, names, use, force):
    """docker's conflicts for rmi by ID, unless ``force``: names of several repositories, a use."""
    repos = {Reference.parse(n, default_tag=False).name for n in names if _parses(n)}
    if len(repos) > 1 and not force:
        raise LaminaError(f"conflict: unable to delete {_short(image_id)} (must be forced) - image is referenced "
                          "in multiple repositories")
    if use and not force:
        raise LaminaError(f"conflict: unable to delete {_short(image_id)} (must be forced) - image is in use by "
                          f"{_use_text(use)}")


def _untag_broken(store, ref, error, *, force, prune):
    """``rmi NAME`` of an image whose manifest or config no longer reads (fsck: "remove it with
    lamina rmi"; a check added since it was stored): the name goes, as docker untags a name
    without reading the image.  ``rmi ID`` (fsck names a broken image by its manifest digest,
    the only name of one that has none) removes the manifests of that ID, read as raw JSON."""
    from .store.store import entry_name, name_of
    try:
        parsed = Reference.parse(ref)
    except InvalidReferenceError:
        parsed = None
    wanted = parsed and name_of(parsed)
    entry = next((e for e in store.index.read() if entry_name(e) == wanted), None) if parsed else None
    if entry is None:
        image_id, manifests = _broken_by_id(store, ref) if _ID_LIKE.fullmatch(ref) else (None, [])
        if not manifests:
            raise error
        return _remove_broken(store, image_id, manifests, force=force, prune=prune)
    use = in_use(store).get(entry["digest"], [])
    if use and not force:
        raise LaminaError(f'conflict: unable to remove repository reference "{ref}" (must force) - image '
                          f"is in use by {_use_text(use)}")
    result = RemoveResult()
    gone = store.untag(parsed)
    result.untagged.append(parsed.familiar())
    if gone and not use:
        result.manifests.append(entry["digest"])
        if prune:
            collect_unused(store, result)
    return result


def _broken_by_id(store, ref):
    """(the ID, its manifest digests in the index) that ``ref`` names when resolve() found no
    image there: a whole manifest digest (that manifest alone, as for an image that reads), else
    the manifests whose config digest is the ID or starts with the prefix; (None, []) if none."""
    hexpart = ref[len("sha256:"):] if ref.startswith("sha256:") else ref
    digests = list(dict.fromkeys(e["digest"] for e in store.index.read()))
    if len(hexpart) == 64 and "sha256:" + hexpart in digests:
        return "sha256:" + hexpart, ["sha256:" + hexpart]
    by_config = {}
    for d in digests:
        try:
            with store.open_blob(d) as f:
                config = json.load(f)["config"]["digest"]
        except (OSError, LaminaError, ValueError, KeyError, TypeError):
            continue   # a manifest that does not read names no config: found by its digest only
        if isinstance(config, str) and config.startswith("sha256:") and config[7:].startswith(hexpart):
            by_config.setdefault(config, []).append(d)
    if len(by_config) > 1:
        raise AmbiguousImageError(f"image ID prefix {ref!r} is ambiguous: it matches {len(by_config)} images")
    return next(iter(by_config.items()), (None, []))


def _remove_broken(store, image_id, manifests, *, force, prune):
    """Remove every name of each of ``manifests`` (images of ``image_id`` that do not read), as
    rmi by ID does."""
    from .store.store import entry_name
    uses = in_use(store)
    use = [r for d in manifests for r in uses.get(d, [])]
    names = [entry_name(e) for e in store.index.read() if e["digest"] in manifests]
    _refuse_id_conflicts(image_id, [n for n in names if n], use, force)
    result = RemoveResult()
    for d in manifests:
        result.untagged += [familiar(n) for n in store.remove_image(d)]
    if not use:
        result.manifests += manifests
        result.deleted.append(image_id)
        if prune:
            collect_unused(store, result)
    return result


def collect_unused(store, result):
    """gc now, unless another lamina process is writing (then the last writer to finish does it)."""
    from .store.imports import defer_gc
    from .store.locks import is_locked
    # the lease this Store took when it read the images is ours, not another writer's (gc drops it too)
    store._drop_lease()
    if is_locked(store.paths.gc_lock):
        # left to the next prune, an rmi beside a pull kept the image's layers and fsck warned of them
        result.busy = True
        defer_gc(store)
        return
    gc = store.gc()
    result.snapshots += [c for c, _ in gc.snapshots]
    result.reclaimed += gc.reclaimed


def prune(store, *, all=False, filters=None):
    """docker's image prune: remove dangling images (``all``: every image no mount or bundle
    uses), then the content nothing needs.  ``filters``: until, label, label!.  RemoveResult."""
    a_store(store)
    a_flag(all, "all")
    if isinstance(filters, (list, tuple)):
        filters = parse_filters(filters, PRUNE_FILTERS)
    filters = _check_filters(filters, PRUNE_FILTERS)
    use = in_use(store)
    victims = [i for i in store.images() if i.manifest_digest not in use and (all or not i.refs)]
    for v in filters.get("until", []):
        limit = parse_until(v)
        victims = [i for i in victims if (created_ts(i) or 0) < limit]
    for spec in filters.get("label", []):
        victims = [i for i in victims if label_match(i, spec)]
    for spec in filters.get("label!", []):
        victims = [i for i in victims if not label_match(i, spec)]
    result = RemoveResult()
    for image in victims:
        result.untagged += [familiar(n) for n in store.remove_image(image)]
        if not _id_still_there(store, image.config_digest):  # another manifest of the same image keeps its ID
            result.deleted.append(image.config_digest)
    if store.exists:
        collect_unused(store, result)
    return result


# --- disk usage ----------------------------------------------------------------------------------


@dataclass
class SnapshotUsage:
    chain_id: str
    size: int
    images: int             # how many images' layers include it
    in_use: bool            # by a mount or bundle (also one whose image was removed with force)


@dataclass
class DiskUsage:
    """What ``lamina system df`` shows, in bytes."""
    images: list                  # ImageSummary of every image
    active: int                   # images in use by a mount or bundle
    images_size: int              # the images' layers (snapshots), each counted once
    images_reclaimable: int       # the part no mount or bundle needs
    blobs: int                    # compressed blobs of the images (kept for push and save)
    blobs_size: int
    mounts: list                  # mount records (dicts: path, image_id, rw, mounted, upper, ...)
    mounts_size: int              # their upper dirs (writes of --rw mounts)
    mounts_reclaimable: int       # upper dirs of mounts whose kernel mount is gone
    snapshots: list               # SnapshotUsage
    unreferenced_blobs: int
    unreferenced_snapshots: int
    partials: int                 # bytes of interrupted downloads
    unreferenced_size: int        # what prune frees (blobs, snapshots, partial downloads)

    def to_dict(self):
        from dataclasses import asdict
        d = asdict(self)
        d["images"] = [i.to_dict() for i in self.images]
        return d


def directory_usage(path):
    """Bytes on disk under ``path`` (0 if it is gone)."""
    from .store.fsutil import disk_usage as du
    try:
        return du(path)[0]
    except (FileNotFoundError, NotADirectoryError):
        return 0


def disk_usage(store):
    """DiskUsage of the store (``lamina system df``)."""
    a_store(store)
    from .store.gc import unreferenced
    images = store.images()
    sizes = Sizes(store, images, file_level=True)
    use = in_use(store)
    active = [i for i in images if i.manifest_digest in use]
    mounts = [r for recs in use.values() for r in recs if r["kind"] == "mount"]
    blobs, chains = unreferenced(store) if store.exists else ([], [])
    garbage = sum(_blob_size(store, d) for d in blobs)
    for c in chains:
        try:
            info = store.snapshot_info(c)
        except LaminaError:  # a broken snapshot: measure it
            info = None
        garbage += info.size if info is not None else directory_usage(store.snapshot_dir(c).parent)
    from .store.gc import stale_ingest
    partials = sum(size for _, _, size in stale_ingest(store.paths))  # what prune removes
    image_blobs = {d for img in images for d in img.blobs}
    users = {}
    for img in images:
        for c in img.chain_ids:
            users.setdefault(c, []).append(img)
    held = {c for record in store.holds().values() for c in record.get("chain_ids", [])}
    snapshots = []
    for info in store.snapshots():
        if info.chain_id in chains:
            continue
        imgs = users.get(info.chain_id, [])
        # in use: by a mount or bundle of one of its images, or held by one whose image is gone (rmi -f)
        snapshots.append(SnapshotUsage(info.chain_id, info.size, len(imgs),
                                       info.chain_id in held or any(i.manifest_digest in use for i in imgs)))
    total = sizes.total()
    return DiskUsage(
        images=ls(store, sizes=sizes, use=use), active=len(active), images_size=total,
        images_reclaimable=total - sizes.total(active),
        blobs=len(image_blobs), blobs_size=sum(_blob_size(store, d) for d in image_blobs),
        mounts=mounts, mounts_size=sum(directory_usage(r["upper"]) for r in mounts if r.get("upper")),
        mounts_reclaimable=sum(directory_usage(r["upper"]) for r in mounts if r.get("upper") and not r.get("mounted")),
        snapshots=snapshots, unreferenced_blobs=len(blobs), unreferenced_snapshots=len(chains),
        partials=partials, unreferenced_size=garbage + partials)


def _blob_size(store, digest):
    try:
        return os.stat(store.blob_path(digest)).st_blocks * 512
    except OSError:
        return 0


# --- unpack, mounts ----------------------------------------------------------------------------------------


def mounts(store):
    """The mount records (each with ``mounted``: whether the kernel mount is present)."""
    a_store(store)
    from .store.mounts import mounts as records
    return records(store)


def mount(store, ref, target, *, rw=False, suid=False):
    """Mount the image with overlayfs at ``target`` (read-only unless ``rw``; nosuid unless ``suid``).
    Returns the record."""
    a_store(store)
    a_path(target, "target", "a mount point's path")
    a_flag(rw, "rw")
    a_flag(suid, "suid")
    from .store.mounts import mount as do_mount
    return do_mount(store, ref, target, rw=rw, suid=suid)


def umount(store, target, *, lazy=False):
    a_store(store)
    a_path(target, "target", "a mount point's path")
    a_flag(lazy, "lazy")
    from .store.mounts import umount as do_umount
    return do_umount(store, target, lazy=lazy)


def unpack(store, ref, dest, *, bundle=False, link=False, platform=None):
    """An image of the store as a rootfs at ``dest`` (or an OCI runtime bundle).
    Returns (store.Image, stats)."""
    a_store(store)
    a_path(dest, "dest", "a directory's path")
    a_flag(bundle, "bundle")
    a_flag(link, "link")
    from .store.bundles import make_bundle
    from .store.materialize import materialize
    image = store.resolve(ref)
    if bundle:
        image, stats, _spec = make_bundle(store, image, dest, link=link, platform=platform)
    else:
        image, stats = materialize(store, image, dest, link=link, platform=platform)
    return image, stats


TRANSPORTS = ("oci:", "docker-archive:", "oci-archive:")


def check_path_source(source):
    """A SOURCE ``is_store_source`` did not take for a store image is a path: one that is not
    there and is not an image name either (``Debian:12``: names are lowercase) is both, and
    saying only "no such file or directory" would hide the second."""
    if source.startswith(TRANSPORTS) or os.path.lexists(source):
        return
    try:
        Reference.parse(source)
    except InvalidReferenceError as e:
        raise InvalidReferenceError(f"{source}: no such file or directory, and not an image name: {e}") from None


def is_store_source(source, root=None):
    """True if ``lamina unpack SOURCE`` means an image in the store rather than a layout or archive path."""
    if source.startswith(TRANSPORTS):
        return False
    if source in (".", "..") or source.startswith(("/", "./", "../", "~")):
        return False
    id_like = re.fullmatch(r"(sha256:)?[0-9a-f]{1,64}", source) is not None
    try:
        Reference.parse(source)
        is_ref = True
    except InvalidReferenceError:
        is_ref = False
    if not (is_ref or id_like):
        return False
    if not os.path.exists(source):
        return True
    # both a path and a valid reference: the store wins if it has that image
    from .store.paths import default_root
    store_root = root or default_root()
    if not os.path.exists(os.path.join(store_root, "index.json")):
        return False
    from .store import Store
    try:
        Store(store_root).resolve(source)
        return True
    except LaminaError:
        return False
