"""The Store: content-addressed blobs, named images, shared layer snapshots.

Concurrency model (all fcntl.flock, see locks.py):
  * per blob digest / per snapshot: one writer at a time, the others wait and reuse;
  * index.json: read-modify-write under locks/index.lock, replaced atomically;
  * the gc lease: every Store that writes holds locks/gc.lock *shared* from its first
    write until close() (or process exit).  gc and fsck --repair take it *exclusive*,
    so they never delete a blob that an import has written but not yet named.
Readers take no lock: blobs are immutable and index.json is only ever renamed over.
Only writers create the store: ``Store(root)`` and every read of a store that does not
exist yet (no images) leave the disk alone, and a store that cannot be written
(mounted read-only, another user's) serves every read, including unpacking an image
whose snapshots are all there.
"""
from __future__ import annotations

import copy
import errno
import json
import os
import re
import threading

from ..apiargs import a_path
from .. import digest as _digest
from .. import mediatypes as mt
from ..errors import (AmbiguousImageError, BlobNotFoundError, DigestMismatchError, ImageError,
                      ImageNotFoundError, InvalidReferenceError, LaminaError, NoSuchImageError, StoreError, layer_of,
                      layers_named)
from ..oci.model import ANNOTATION_REF_NAME
from ..platform import Platform
from ..reference import Reference
from . import snapshots as _snapshots
from .fsutil import atomic_write, open_own
from .image import Image, load_image
from .index import IndexFile, entry_name, entry_repo_digest, make_entry
from .ingest import IngestWriter, check_stored_size, put_bytes, stored_blob
from .locks import FileLock
from .paths import Paths, default_root

_HEX_PREFIX_RE = re.compile(r"[0-9a-f]{1,64}")


def _as_reference(ref):
    if isinstance(ref, Reference):
        return ref
    if not isinstance(ref, str):
        raise InvalidReferenceError(f"invalid reference {ref!r}")
    return Reference.parse(ref)


_OUTSIDE = {"oci:": "lamina copy {s} NAME", "oci-archive:": "lamina copy {s} NAME",
            "docker-archive:": "lamina copy {s} NAME", "docker://": "lamina pull {rest}"}


def _refuse_outside_image(s):
    """An image outside the store (a layout, an archive, a registry) named where one in the store
    is meant (mount, tag, inspect...): say how to bring it in, not "invalid reference format"."""
    for prefix, how in _OUTSIDE.items():
        if s.startswith(prefix):
            raise InvalidReferenceError(f"{s} is not an image in the store; bring it in first: "
                                        + how.format(s=s, rest=s[len(prefix):]))


def name_of(ref):
    """The index.json name of a reference: ``repo:tag``, or ``repo@digest`` when it has a digest
    (a digest pins the content, so docker drops the tag then too)."""
    ref = _as_reference(ref)
    return f"{ref.name}@{ref.digest}" if ref.digest else f"{ref.name}:{ref.tag}"


def check_digest_name(ref, manifest_digest, repo_digest=None):
    """Refuse a ``name@digest`` for an image that digest does not name (its manifest, or the
    index it was pulled or loaded by): the name resolves by that digest, so given to other
    content (an archive's RepoTags, an index annotation) it would pin the name to the wrong image."""
    if ref.digest and ref.digest not in (manifest_digest, repo_digest):
        raise InvalidReferenceError(
            f"{ref}: a name with a digest must name this image ({manifest_digest}"
            f"{' or ' + repo_digest if repo_digest else ''}), not {ref.digest}")


class Store:
    def __init__(self, root=None):
        if root is not None:
            a_path(root, "root", "the store's directory path or None")
        self.paths = Paths(root if root is not None else default_root())
        self.root = self.paths.root
        self.index = IndexFile(self.paths)
        self._lease = None
        self._created = False
        self._lease_mutex = threading.Lock()

    def __repr__(self):
        return f"Store({str(self.root)!r})"

    @property
    def exists(self):
        """True once something was written to the store (its oci-layout file is there)."""
        return (self.root / "oci-layout").is_file()

    @property
    def writable(self):
        """False for a store on a read-only mount or one this user may not write."""
        root = self.root
        while not root.exists() and root != root.parent:
            root = root.parent  # a store that does not exist yet is created in the first existing parent
        return os.access(root, os.W_OK)

    def _check_writable(self, what):
        if not self.writable:
            raise StoreError(f"{what}: the store at {self.root} is read-only (a read-only mount, or another "
                             "user's store); use --root or LAMINA_ROOT for a store of your own")

    # --- the gc lease -------------------------------------------------------------

    def lease(self):
        """Hold the gc lease now (writes take it by themselves): nothing this Store is about to
        write or stage is collected, and fsck --repair waits, until close()."""
        self._take_lease()

    def _take_lease(self, create=True):
        """The shared gc lock; writers (``create``) first create the store if it is not there."""
        with self._lease_mutex:  # threads of one Store: one creates, the others wait for it
            if create and not self._created:  # once per Store: writes come by the thousand in a pull
                self._check_writable("cannot write")
                self.paths.create()
                self.paths.check_own_dirs()
                self._created = True
            if self._lease is None and (create or self.exists):
                self._lease = FileLock(self.paths.gc_lock, shared=True).acquire()

    def hold_image(self, image, create=True):
        """Take the lease for using ``image``, resolved before: gc waits for the lease, so what
        is here now stays.  An rmi or image prune (their gc) between the caller's resolve and
        this took the image's blobs and snapshots, which is no fault of the store and must not
        be reported as a missing blob: ImageNotFoundError says what happened."""
        self._take_lease(create=create)
        if self.exists and not self.has_blob(image.manifest_digest):
            name = image.refs[0].familiar() if image.refs else image.config_digest[7:19]
            raise ImageNotFoundError(f"image {name} was removed from the store (rmi or image prune) "
                                     "while this command was using it")

    def _drop_lease(self):
        with self._lease_mutex:
            if self._lease is not None:
                self._lease.release()
                self._lease = None

    def close(self):
        """Let gc run again (it waits for every Store that has written and is still open).  The
        last writer to close takes back what failed imports beside it left (imports.finish_pending)."""
        with self._lease_mutex:
            was_writing = self._lease is not None
        self._drop_lease()
        if was_writing:
            from .imports import take_back
            take_back(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        lease = getattr(self, "_lease", None)
        if lease is not None:
            lease.release()

    # --- blobs --------------------------------------------------------------------

    def has_blob(self, digest, size=None):
        """Whether the store holds the blob; ``size``: the descriptor's, which the stored
        blob (verified against its digest) must have, else an ImageError says the descriptor lies."""
        st = stored_blob(self.paths.blob(digest))
        if st is not None and size is not None:
            check_stored_size(digest, size, st.st_size)
        return st is not None

    def blob_path(self, digest):
        return self.paths.blob(digest)

    def open_blob(self, digest):
        path = self.paths.blob(digest)
        try:
            return open_own(path)   # a FIFO or a symlink planted there is refused, naming it
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {digest} is not in the store {self.root}") from None

    def blob_size(self, digest):
        try:
            return self.paths.blob(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {digest} is not in the store {self.root}") from None

    def blobs(self):
        """Digests of every blob in blobs/sha256 (well-named files only)."""
        try:
            names = os.listdir(self.paths.blobs)
        except FileNotFoundError:
            return []
        return [f"sha256:{n}" for n in names if _digest.is_valid(f"sha256:{n}")]

    def ingest(self, digest, size=None):
        """``with store.ingest(digest, size) as w:`` see ingest.IngestWriter."""
        self._take_lease()
        return IngestWriter(self.paths, digest, size)

    def put_blob(self, data, digest=None):
        if digest is not None and not self.writable and self.has_blob(digest):
            # storing what is there writes nothing: an up-to-date pull on a read-only store
            _digest.validate(digest, "blob digest")
            actual = _digest.sha256_bytes(bytes(data))
            if actual != digest:
                raise DigestMismatchError(f"blob {digest}", digest, actual)
            return digest
        self._take_lease()
        return put_bytes(self.paths, data, digest)

    # --- images ---------------------------------------------------------------------

    def _load(self, entries, digest, loaded=None):
        """An Image for manifest ``digest`` with the names ``entries`` give it; ``loaded``: that
        image as load_image gave it, without names (its config is not parsed again)."""
        first = next(e for e in entries if e["digest"] == digest)
        image = loaded or load_image(self.open_blob, digest, first.get("mediaType"), first.get("size"))
        for e in entries:
            if e["digest"] != digest:
                continue
            chosen = _entry_platform(e)
            if chosen is not None and chosen != image.platform and chosen not in image.chosen_platforms:
                image.chosen_platforms.append(chosen)
            name = entry_name(e)
            if name is None:
                continue
            image.names.append(name)
            try:
                ref = Reference.parse(name, default_tag=False)
            except InvalidReferenceError:
                continue  # a foreign layout's name (e.g. a bare "latest"): still reachable by that name
            if ref.digest:
                repo_digest = f"{ref.name}@{ref.digest}"
            else:
                if ref.tag:
                    image.refs.append(ref)
                rd = entry_repo_digest(e)
                repo_digest = f"{ref.name}@{rd}" if rd else None
            if repo_digest and repo_digest not in image.repo_digests:
                image.repo_digests.append(repo_digest)
        return image

    def image(self, manifest_digest):
        """The image with this manifest digest (it must be in index.json)."""
        _digest.validate(manifest_digest, "manifest digest")
        return self._image(manifest_digest)

    def _image(self, manifest_digest, loaded=None):
        entries = self.index.read()
        if not any(e["digest"] == manifest_digest for e in entries):
            raise ImageNotFoundError(f"no image with manifest {manifest_digest} in the store")
        return self._load(entries, manifest_digest, loaded)

    def image_by_digest(self, digest):
        """The image a registry digest names, whatever the store calls it (or if it calls it
        nothing): its manifest's digest, else the digest it was pulled by (a multi-arch image's
        index).  What a push to ``repo@digest`` sends: the digest names content, not a name."""
        _digest.validate(digest, "digest")
        entries = self.index.read()
        for e in entries:
            if e["digest"] == digest:
                return self._load(entries, digest)
        for e in entries:
            if entry_repo_digest(e) == digest or (entry_name(e) or "").endswith("@" + digest):
                return self._load(entries, e["digest"])
        raise ImageNotFoundError(f"no image with digest {digest} is in the store")

    def images(self, skip_broken=False):
        """Every image in the store, in index.json order.

        A broken image (manifest or config missing or corrupt) raises StoreError
        naming it, unless ``skip_broken``: the store is meant to be consistent,
        and fsck says what happened.  untag/remove_image work on broken images.
        """
        entries = self.index.read()
        out, seen = [], set()
        for e in entries:
            d = e["digest"]
            if d in seen:
                continue
            seen.add(d)
            try:
                out.append(self._load(entries, d))
            except (ImageError, OSError) as err:
                if skip_broken:
                    continue
                names = ", ".join(filter(None, (entry_name(x) for x in entries if x["digest"] == d))) or d
                raise StoreError(f"image {names} is broken: {err}; run lamina fsck") from None
        return out

    def platforms(self, image):
        """(index digest, [Image]) of a multi-arch image: the image index its tag was pulled
        from and every platform's image stored under it (``pull --all-platforms``), this
        one included.  (None, [image]) for an image without a stored index."""
        from .gc import stored_index_children
        for index_digest in {rd.split("@", 1)[1] for rd in image.repo_digests}:
            children = [(d, t) for d, t in stored_index_children(self, index_digest) if not mt.is_index(t or "")]
            if any(d == image.manifest_digest for d, _ in children):
                out = []
                for d, t in children:
                    try:
                        out.append(image if d == image.manifest_digest else load_image(self.open_blob, d, t))
                    except (ImageError, OSError):
                        continue  # only partly there (a platform whose config was never fetched)
                return index_digest, out
        return None, [image]

    def resolve(self, ref_or_id):
        """An image by name[:tag], full reference, name@digest, image ID (``sha256:…``) or unique ID prefix."""
        if isinstance(ref_or_id, Reference):
            found = self._by_reference(ref_or_id)
            if found:
                found.asked_as = ref_or_id.familiar()
                return found
            raise NoSuchImageError(ref_or_id.familiar())
        s = ref_or_id
        if not isinstance(s, str) or not s:
            raise InvalidReferenceError(f"invalid image reference {s!r}")
        try:
            found = self._resolve_string(s)
            found.asked_as = s
            return found
        except (InvalidReferenceError, ImageNotFoundError):
            _refuse_outside_image(s)  # "oci:1" may name a store image too: only when it does not
            raise

    def _resolve_string(self, s):
        if s.startswith("sha256:") and not _digest.is_valid(s) and _HEX_PREFIX_RE.fullmatch(s[7:]):
            # a short ID with its algorithm (docker's digest set looks "sha256:3f2a" up as the
            # prefix 3f2a of sha256 IDs), unless a repository "sha256" holds that tag
            return self._by_reference(Reference.parse(s)) or self._by_id_prefix(s[7:], s)
        if s.startswith("sha256:"):
            return self._by_id(_digest.validate(s, "image ID"), s)
        if re.fullmatch(r"[0-9a-f]{64}", s):
            return self._by_id("sha256:" + s, s)
        try:
            ref = Reference.parse(s)
        except InvalidReferenceError:
            if _HEX_PREFIX_RE.fullmatch(s):
                return self._by_id_prefix(s)
            raise
        found = self._by_reference(ref)
        if found:
            return found
        if _HEX_PREFIX_RE.fullmatch(s):
            return self._by_id_prefix(s)
        raise NoSuchImageError(ref.familiar())

    def _by_reference(self, ref):
        entries = self.index.read()
        if ref.digest:
            wanted = f"{ref.name}@{ref.digest}"
            for e in entries:
                name = entry_name(e)
                if name == wanted:
                    return self._load(entries, e["digest"])
            for e in entries:  # repo@digest also finds a tagged image of that repo by repo digest or manifest
                name = entry_name(e) or ""
                if name.startswith(ref.name + ":") and ref.digest in (entry_repo_digest(e), e["digest"]):
                    return self._load(entries, e["digest"])
            return None
        wanted = f"{ref.name}:{ref.tag}"
        for e in entries:
            if entry_name(e) == wanted:
                return self._load(entries, e["digest"])
        return None

    def _by_id(self, digest, shown):
        entries = self.index.read()
        for e in entries:  # a manifest digest identifies an image too (what skopeo and crane print)
            if e["digest"] == digest:
                return self._load(entries, digest)
        for image in self.images(skip_broken=True):
            if image.config_digest == digest:
                return image
        raise NoSuchImageError(shown)

    def _by_id_prefix(self, prefix, shown=None):
        matches = [i for i in self.images(skip_broken=True) if i.config_digest[len("sha256:"):].startswith(prefix)]
        ids = {i.config_digest for i in matches}
        if not matches:
            raise NoSuchImageError(shown or prefix)
        if len(ids) > 1:
            raise AmbiguousImageError(f"image ID prefix {shown or prefix!r} is ambiguous: it matches {len(ids)} "
                                      "images")
        return matches[0]

    def add_image(self, manifest_digest, ref=None, repo_digest=None, platform=None):
        """Name an image whose manifest, config and layers are already in blobs/.

        ``ref`` (str or Reference) moves that name to this image; the image that
        had it keeps its other names, or becomes dangling (docker's ``<none>``),
        keeping its repo digest as ``repo@digest`` the way docker does.  Without
        ``ref`` the image is recorded dangling unless it already has a name.
        """
        return self.add_names(manifest_digest, [ref], repo_digest, platform)

    def add_names(self, manifest_digest, refs, repo_digest=None, platform=None):
        """``add_image`` for each of ``refs`` (None: dangling), in one update of index.json: an
        archive may give one image thousands of names, and an update per name rewrote the whole
        index each time."""
        # On a read-only store, names it already holds as asked write nothing and succeed (an
        # up-to-date pull); the lease, which makes the store writable or says it is not, waits.
        writable = self.writable
        if writable:
            self._take_lease()
        _digest.validate(manifest_digest, "manifest digest")
        if repo_digest is not None:
            _digest.validate(repo_digest, "repo digest")
        image = load_image(self.open_blob, manifest_digest)
        count = len(image.layers)
        for k, (layer, chain) in enumerate(zip(image.layers, image.chain_ids)):
            if not self.has_blob(layer.digest) and not self.layer_is_compact(chain):
                raise BlobNotFoundError(f"manifest {manifest_digest}: {layer_of(k, count)} ({layer.digest}) "
                                        "is not in the store")
        # copy, load and pull check first, but a caller of the Store API (ingest, put_blob,
        # add_image, snapshots_for) named a liar over a held layer's snapshot unchecked, and
        # check_layer_blobs trusts every named image to have been checked
        self.check_layer_blobs(manifest_digest, image.layers, image.diff_ids)
        # ``platform``: the one the image was chosen by (an index entry's word), which may not
        # be its config's (a mislabelled build): recorded so that --platform finds it again
        chosen = platform is not None
        platform = platform if chosen else image.platform
        if platform is not None:
            platform = {"architecture": platform.architecture, "os": platform.os,
                        **({"variant": platform.variant} if platform.variant else {})}
        news = []
        for ref in refs:
            parsed = _as_reference(ref) if ref is not None else None
            name, rd = (name_of(parsed) if parsed is not None else None), repo_digest
            if parsed is not None and parsed.digest:
                check_digest_name(parsed, manifest_digest, repo_digest)
                rd = None  # the name itself is the repo digest
            news.append((name, rd, make_entry(image.media_type, manifest_digest, image.manifest_size, name, rd,
                                              platform), chosen))
        if not writable:
            entries = self.index.read()
            after = copy.deepcopy(entries)
            _name_entries(after, manifest_digest, news)
            if after == entries:
                return self._load(entries, manifest_digest, image)
            self._take_lease()   # says the store is read-only
        with self.index.update() as entries:
            _name_entries(entries, manifest_digest, news)
        # the image named, from the index as now (an rmi may have come between), and not parsed
        # again: a config of 300,000 history steps takes a quarter second per parse
        return self._image(manifest_digest, image)

    def untag(self, ref):
        """Remove one name. True if that was the image's last name (the image is gone from the index).

        Like ``docker rmi NAME``; blobs and snapshots stay until gc().
        """
        name = name_of(ref)
        if not any(entry_name(e) == name for e in self.index.read()):
            raise NoSuchImageError(_as_reference(ref).familiar())
        self._check_writable(f"cannot untag {_as_reference(ref).familiar()}")
        self.paths.check_own_dirs()  # refused before a name goes, not by the gc after it
        with self.index.update() as entries:
            old = next((e for e in entries if entry_name(e) == name), None)
            if old is None:
                raise NoSuchImageError(_as_reference(ref).familiar())
            entries.remove(old)
            return not any(e["digest"] == old["digest"] for e in entries)

    def remove_image(self, image):
        """Remove every name of an image (Image or manifest digest). Returns the names removed."""
        digest = image.manifest_digest if isinstance(image, Image) else _digest.validate(image, "manifest digest")
        if not any(e["digest"] == digest for e in self.index.read()):
            raise ImageNotFoundError(f"no image with manifest {digest} in the store")
        self._check_writable(f"cannot remove image {digest}")
        self.paths.check_own_dirs()
        with self.index.update() as entries:
            removed = [entry_name(e) for e in entries if e["digest"] == digest]
            if not removed:
                raise ImageNotFoundError(f"no image with manifest {digest} in the store")
            entries[:] = [e for e in entries if e["digest"] != digest]
        return [n for n in removed if n]

    # --- snapshots ------------------------------------------------------------------

    def ensure_snapshot(self, layer_digest, diff_id, parent_chain_id=None, media_type=None, *, defer=False,
                        wait_lowers=None, progress=None):
        """The layer's snapshot dir, extracted if missing.  The snapshots below must exist,
        unless ``defer``: then, should the layer need them, ``wait_lowers()`` is called to
        wait for them (see snapshots.ensure), or NeedsLowers raised.  ``progress(n)``: the
        blob's bytes the extraction has read so far (see apply_layer)."""
        chain = _snapshots.chain_id_of(diff_id, parent_chain_id)
        if not self.writable and self._snapshot_complete(chain):
            return self.paths.snapshot(chain) / "fs"   # only read: an up-to-date pull of a read-only store
        self._take_lease()
        fs = _snapshots.ensure(self.paths, layer_digest, diff_id, parent_chain_id, media_type, defer=defer,
                               wait_lowers=wait_lowers, progress=progress)
        self.dedup(chain)
        return fs

    def check_layer_blobs(self, manifest_digest, layers, diff_ids):
        """Before a new image is named: each layer blob whose snapshot the store holds already,
        extracted from another blob, must hash (uncompressed) to the layer's diffID
        (snapshots.verify_shared).  A snapshot is found by its chainID, i.e. by what the config
        says: without this, a config naming a layer the store holds would get that layer's tree
        without its own blob ever being read.  An image the store holds already was checked
        when it was stored, so an up-to-date pull reads nothing."""
        if any(e["digest"] == manifest_digest for e in self.index.read()):
            return
        digests = [layer.digest for layer in layers]
        with _named(digests):
            _snapshots.verify_shared(self.paths, digests, diff_ids, [layer.media_type for layer in layers])

    def snapshots_for(self, image):
        """Layer dirs of an image, bottom first, extracting the missing ones (in parallel).

        An image whose snapshots are all there is only read (a read-only store serves it)."""
        dropped = _snapshots.dedups_dropped_since()
        try:
            return self._ensure_snapshots(image)
        except BaseException:
            # a good layer deduplicated beside a refused one below it: the objects only its
            # dropped staging snapshot used are taken back, as a refused copy or pull does
            if dropped():
                from .imports import drop_unused_objects
                drop_unused_objects(self)
            raise

    def _ensure_snapshots(self, image):
        """snapshots_for, leaving what a refusal dropped to the caller's own rollback (an import,
        a pull), which takes it back with the rest."""
        self.hold_image(image, create=False)
        complete = all(self._snapshot_complete(c) for c in image.chain_ids)
        if not complete:
            self._check_writable(f"image {image.config_digest[7:19]} has layers not extracted yet")
        self._take_lease(create=not complete)
        digests = [layer.digest for layer in image.layers]
        with _named(digests):
            dirs = _snapshots.ensure_all(self.paths, digests, image.diff_ids,
                                         [layer.media_type for layer in image.layers])
            if self.writable:
                for chain in image.chain_ids:
                    self.dedup(chain)
                if not self.config()["keep-blobs"]:
                    self._compact_on_use(image, stored=complete)
        return dirs

    def _compact_on_use(self, image, stored):
        """compact(image) as a compact store does at each use.  An image ``stored`` before this
        use (keep-blobs false set since) that cannot be compacted for want of space is only
        warned about: what the use needs is all there, the blobs stay, and the next use tries
        again (compact() drops a blob only once every sidecar it needs is written).  An image
        being stored now still fails: a compact store holds it compacted or not at all."""
        try:
            self.compact(image)
        except (OSError, LaminaError) as e:
            cause = e if isinstance(e, OSError) else e.__cause__
            if not stored or getattr(cause, "errno", None) not in (errno.ENOSPC, errno.EDQUOT):
                raise
            import warnings
            from ..errors import CompactionDeferredWarning
            # named as the user named it ("unpack app:1"), else by ID (an image from an import)
            warnings.warn(CompactionDeferredWarning(f"image {image.asked_as or image.config_digest[7:19]}", cause),
                          stacklevel=2)

    # --- settings and file objects ----------------------------------------------------

    def config(self):
        """{setting: value} (see store/config.py)."""
        from . import config
        return config.read(self.paths)

    def config_value(self, key):
        """One setting's value; an unknown name is a StoreError naming it."""
        from . import config
        config.parse_value(key, "true")
        return self.config()[key]

    def set_config(self, key, value):
        from . import config
        self._take_lease()  # a writer: creates the store if it is not there yet
        return config.write(self.paths, key, value, self.paths.index_lock)

    def dedup(self, chain_id):
        """Share a committed snapshot's files with the store's objects, once (store/objects.py).

        Snapshots extracted with dedup on are shared before they are committed (snapshots.ensure);
        this does it for the others (extracted with dedup off, or by an older lamina) once dedup
        is on.  Returns objects.DedupStats, or None if there was nothing to do."""
        from . import objects
        path = self.paths.snapshot(chain_id)
        if objects.is_deduplicated(path):
            return None
        dedup = self.config()["dedup"]
        if not dedup and not (path / objects.HASHED).exists():
            return None
        lock = FileLock(self.paths.snapshot_lock(chain_id))
        lock.acquire()
        try:
            if objects.is_deduplicated(path) or not (path / "fs").is_dir():
                return None
            if not dedup:  # extracted while dedup was on, switched off since: drop the extractor's names
                objects.drop_hashed(path)
                return None
            return objects.dedup_snapshot(self.paths, path)
        finally:
            lock.release(unlink=True)

    _dedup = dedup  # its name before it was public (kept for callers outside the store package)

    # --- compact store: layer blobs replaced by tar-split sidecars ------------------------

    def layer_is_compact(self, chain_id):
        """True if this layer's tar is rebuilt from its snapshot (its blob may be gone)."""
        from .sidecar import has_sidecar
        return has_sidecar(self.paths.snapshot(chain_id))

    def holds_compact(self, layer_digest, chain_id):
        """True if the layer ``chain_id`` is here as a compact snapshot extracted from the blob
        ``layer_digest`` itself: the blob's bytes were checked against the diffID then, and a
        compact store has no use for them again (an image naming them is stored without them)."""
        try:
            info = self.snapshot_info(chain_id)
        except StoreError:
            return False
        return info is not None and info.digest == layer_digest and info.fs.is_dir() and \
            self.layer_is_compact(chain_id)

    def compact(self, image):
        """Give every layer of ``image`` a sidecar proven to rebuild its tar bit-exact, then drop
        its compressed blob (``keep-blobs false``).  Returns the digests of the blobs dropped."""
        self._take_lease()
        dropped = []
        for layer, diff_id, chain in zip(image.layers, image.diff_ids, image.chain_ids):
            self._give_sidecar(chain, layer.digest, diff_id)
        # Blobs go only once every place that uses them has its sidecar, each built from the blob:
        # an image may hold one blob at two places (identical layers, two chainIDs), and other
        # images of the store at places of their own (the same layer over other layers), whose
        # snapshots have no sidecar yet when they were stored while the store kept blobs.  A
        # place not extracted (another platform's image) keeps the blob.
        # Finding the places reads every image's manifest and config: an image compacted
        # already (every use of it from the store, unpack, mount, a copy out, comes here) has no
        # blob left to drop and reads none.
        held = {layer.digest for layer in image.layers if self.has_blob(layer.digest)}
        if not held:
            return dropped
        from .gc import blob_places
        places = blob_places(self, held)
        for layer, diff_id, chain in zip(image.layers, image.diff_ids, image.chain_ids):
            places.setdefault(layer.digest, set()).add((chain, diff_id))
        for layer in image.layers:
            if not self.has_blob(layer.digest) or not self._sidecars_everywhere(layer, places[layer.digest]):
                continue
            self._mark_compact()
            blob_lock = FileLock(self.paths.blob_lock(layer.digest)).acquire()
            try:
                os.unlink(self.paths.blob(layer.digest))
                dropped.append(layer.digest)
            except FileNotFoundError:
                pass
            finally:
                blob_lock.release(unlink=True)
        return dropped

    def _give_sidecar(self, chain, digest, diff_id):
        """Build the snapshot ``chain``'s sidecar from the blob ``digest`` if it has none; True if
        it has one then, False if the snapshot is not extracted or the blob is not here."""
        from . import sidecar
        from ..transports.output import open_uncompressed
        sdir = self.paths.snapshot(chain)
        if sidecar.has_sidecar(sdir):
            return True
        lock = FileLock(self.paths.snapshot_lock(chain))
        lock.acquire()
        try:
            if not (sdir / "fs").is_dir():
                return False
            if not sidecar.has_sidecar(sdir):
                if not self.has_blob(digest):
                    return False
                # build() proves the sidecar replaces the blob (tar bytes vs diffID, payloads vs files)
                what = f"layer {digest} (diffID {diff_id})"
                with open_uncompressed(lambda: self.open_blob(digest), what) as tar:
                    sidecar.build(tar, os.fspath(sdir / "fs"), sidecar.sidecar_path(sdir), diff_id, what)
            return True
        finally:
            lock.release(unlink=True)

    def _sidecars_everywhere(self, layer, places):
        """Give every extracted place of ``layer``'s blob ({(chainID, diffID)}) its sidecar, from the
        blob; True if all of them have one then (none is left unextracted)."""
        for chain, diff_id in sorted(places):
            try:
                if not self._give_sidecar(chain, layer.digest, diff_id):
                    return False
            except LaminaError:
                return False  # (that place is another image's: its own compaction or fsck says why)
        return True

    def _mark_compact(self):
        """Say in oci-layout (extra fields are allowed there) why layer blobs are missing."""
        from .paths import OCI_LAYOUT_COMPACT
        path = self.paths.root / "oci-layout"
        with open(path, "rb") as f:
            if f.read() != OCI_LAYOUT_COMPACT:
                atomic_write(path, OCI_LAYOUT_COMPACT)

    def layer_reader(self, layer, diff_id, chain_id):
        """The layer's uncompressed tar: rebuilt from a compact snapshot, verified against the diffID."""
        from .sidecar import open_layer
        return open_layer(self.paths.snapshot(chain_id), diff_id, f"layer {layer.digest} (diffID {diff_id})")

    def file_usage(self):
        """objects.FileUsage: what file-level sharing saves."""
        from . import objects
        return objects.usage(self.paths)

    def find_files(self, blake3=None, path=None):
        """[(Image, chainID, FileEntry)]: which images hold a file with this content and/or path."""
        from . import objects
        return objects.find_files(self, blake3=blake3, path=path)

    def _snapshot_complete(self, chain_id):
        try:
            info = self.snapshot_info(chain_id)
        except StoreError:
            return False
        return info is not None and info.fs.is_dir()

    def snapshot_dir(self, chain_id):
        """The extracted tree of a layer (an overlayfs lowerdir), whether or not it exists yet."""
        return self.paths.snapshot(chain_id) / "fs"

    def snapshot_info(self, chain_id):
        """SnapshotInfo (sizes, source blob) or None if that snapshot was not extracted yet."""
        return _snapshots.read_info(self.paths, chain_id)

    def snapshots(self):
        out = []
        for chain in _snapshots.list_chain_ids(self.paths):
            info = _snapshots.read_info(self.paths, chain)
            if info is not None:
                out.append(info)
        return out

    # --- holds: content kept alive by something other than a name ----------------------

    def hold(self, key, image):
        """Keep ``image``'s blobs and snapshots through gc until release(key) (mounts, bundles)."""
        record = {"manifest_digest": image.manifest_digest, "blobs": image.blobs, "chain_ids": image.chain_ids}
        atomic_write(self.paths.hold(key), json.dumps(record).encode())

    def release(self, key):
        try:
            os.unlink(self.paths.hold(key))
            return True
        except FileNotFoundError:
            return False

    def holds(self):
        """{key: record}; a record has manifest_digest, blobs, chain_ids."""
        out = {}
        try:
            names = sorted(os.listdir(self.paths.holds))
        except FileNotFoundError:
            return out
        for n in names:
            if not n.endswith(".json") or ".tmp-" in n:
                continue
            try:
                with open_own(self.paths.holds / n) as f:
                    out[n[:-5]] = json.load(f)
            except (OSError, ValueError, RecursionError):  # RecursionError: nested deep
                raise StoreError(f"hold {n}: unreadable; run lamina fsck") from None
        return out

    # --- maintenance ----------------------------------------------------------------

    def gc(self, dry_run=False):
        """Delete blobs and snapshots that no name, dangling image or hold reaches. Returns GCResult."""
        from .gc import GCResult, collect
        self._drop_lease()  # flock on a second fd of ours would wait for ourselves
        if not self.exists:
            return GCResult(dry_run=dry_run)
        if not dry_run:
            self._check_writable("cannot remove unused content")
        self.paths.check_own_dirs()
        return collect(self, dry_run=dry_run)

    def fsck(self, repair=False, waiting=None):
        """Check (and with ``repair`` fix) the whole store. Returns FsckReport.

        Repairs wait until no other Store is writing; ``waiting()`` is called first if they must."""
        from . import objects, sidecar
        from .fsck import FsckReport, check
        self._drop_lease()
        if not self.exists:  # nothing written yet: nothing to check (unless the root is something else)
            self.index.read()
            return FsckReport(checked={"blobs": 0, "images": 0, "snapshots": 0}, repair=repair)
        if repair:
            self._check_writable("cannot repair")
        self.paths.check_own_dirs()
        report = check(self, repair=repair, waiting=waiting)
        if report.locks_refused:
            return report
        with FileLock(self.paths.gc_lock, shared=not repair):
            objects.check(self, report, repair)
            sidecar.check(self, report)
            if repair:  # orphans it could not remove, it finds again next time (as does gc)
                from .imports import clear_pending
                clear_pending(self.paths)
        return report


def _named(digests):
    """A snapshot's error names its layer by digest alone, as every image may share it: a Store
    API caller hears which layer of the image it is too ("layer 2 of 3 (sha256:…): …"), as the
    verbs say it, unless the caller names the layers itself (load: the archive's image too)."""
    return layers_named(digests, lambda k: layer_of(k, len(digests)), unless_named=True)


def _entry_platform(entry):
    """The platform an index.json entry records (see add_names), None if none or unreadable."""
    p = entry.get("platform")
    if not isinstance(p, dict):
        return None
    try:
        return Platform.from_dict(p, strict=True)
    except ValueError:
        return None


def _name_entries(entries, manifest_digest, news):
    """Give the image ``manifest_digest`` each (name, repo digest, entry) of ``news`` in the
    index's ``entries`` (see Store.add_image); names are looked up in a dict, so a new name
    costs the same however many the index holds."""
    by_name = {}
    for e in entries:
        by_name.setdefault(entry_name(e), e)
    unnamed_dropped = False
    held = next((e["platform"] for e in entries if e["digest"] == manifest_digest and e.get("platform")), None)
    for name, repo_digest, new, chosen in news:
        if not chosen and held is not None:
            new["platform"] = held  # a new name (tag) of an image keeps the platform it was chosen by
        if name is None:
            if not any(e["digest"] == manifest_digest for e in entries):
                entries.append(new)
            continue
        old = by_name.get(name)
        if old is not None and old["digest"] == manifest_digest:
            if ((repo_digest and entry_repo_digest(old) != repo_digest)
                    or (chosen and old.get("platform") != new.get("platform"))):
                entries[entries.index(old)] = by_name[name] = new
            continue
        if old is not None:
            entries.remove(old)
            kept = len(entries)
            _keep_reachable(entries, old)
            for e in entries[kept:]:
                by_name.setdefault(entry_name(e), e)
        if not unnamed_dropped:  # named now: its dangling record goes (once; none comes back below)
            entries[:] = [e for e in entries if not (e["digest"] == manifest_digest and entry_name(e) is None)]
            unnamed_dropped = True
        entries.append(new)
        by_name[name] = new


def _keep_reachable(entries, old):
    """``old`` lost its name.  Like docker, keep its repo digest (``repo@digest``) as a name of
    its own, and if nothing names the image any more keep it dangling (docker's <none>)."""
    name, rd = entry_name(old), entry_repo_digest(old)
    keep_name = None
    if name and rd:
        try:
            keep_name = f"{Reference.parse(name).name}@{rd}"
        except InvalidReferenceError:
            pass
    def renamed(name):  # the same descriptor (as another tool may have written it), another name
        entry = {k: v for k, v in old.items() if k != "annotations"}
        if name:
            entry["annotations"] = {ANNOTATION_REF_NAME: name}
        return entry

    if keep_name and not any(entry_name(e) == keep_name for e in entries):
        entries.append(renamed(keep_name))
    if not any(e["digest"] == old["digest"] for e in entries):
        entries.append(renamed(None))
