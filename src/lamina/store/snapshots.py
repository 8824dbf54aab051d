"""Snapshots: each layer extracted once, in overlay format, keyed by its chainID.

    snapshots/<chainID hex>/fs         the layer dir (overlayfs lowerdir)
    snapshots/<chainID hex>/meta.json  chainID, diffID, parent, blob digest, sizes, marker xattrs

A snapshot is built in ``snapshots/.tmp-<hex>-…`` under the per-snapshot lock and
renamed into place only after the blob digest and the diffID verified, its files
were shared with the store's objects (dedup, objects.py) and the filesystem was
synced: if ``snapshots/<hex>`` exists, it is complete.

A layer is extracted through the union view of the snapshots below it (see
lamina._extract): its paths resolve as the mount will show them, directories
it implies are copied up with their metadata from below, hardlinks to lower
files copy them up.  A chainID fixes the layers below, so the result is a
function of the chainID.  Most entries need nothing from below, so
ensure_all() extracts every layer at once, and a layer that meets an entry
that does need the layers below waits there until they are committed, then
goes on over them (what it wrote before needed nothing from below).
ensure_all() and a pull hand a layer's tree over to the layers above as soon
as it is final (diffID and blob verified, the swaps of its dedup pass done),
before the rest of that pass and its commit; the layer above then waits for
that commit before its own, so a committed snapshot only ever lies over
committed ones.

``meta.json`` carries ``"format": 2``; snapshots of older lamina versions
(implicit directories fixed up afterwards by path) are extracted again.  Its
``"markers"`` says which xattrs mark the snapshot's opaque directories:
``"trusted"`` (trusted.overlay.*, extracted by root) or ``"user"``
(user.overlay.*, by anyone else), which a mount must tell overlayfs.  Snapshots
from before it have none: their directory's owner says it (mounts.py).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from .. import digest as _digest, trace
from ..lowers import LayersBelow
from ..errors import BlobNotFoundError, LaminaError, StoreError, at_layer
from ..tree import abandon, remove_tree
from ..errors import ImpliedDirMoved, NeedsLowers
from ..limits import open_file_budget
from .fsutil import FULL_ERRNOS, disk_usage, fsync_dir, name_error, open_own, syncfs
from .image import chain_ids
from .locks import FileLock
from . import objects as _objects

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
# apply_layer already keeps about two cores busy per layer (inflate, hash, write overlap).
MAX_PARALLEL = 4
FORMAT = 2


@dataclass
class SnapshotInfo:
    chain_id: str
    diff_id: str
    parent: Optional[str]
    digest: str                 # the layer blob it was extracted from
    media_type: Optional[str]
    path: Path                  # snapshots/<hex>
    size: int = 0               # bytes on disk (st_blocks), hardlinks counted once
    inodes: int = 0
    tar_bytes: int = 0          # uncompressed layer size (what the diffID covers)
    entries: int = 0
    created: float = 0.0
    markers: Optional[str] = None  # "trusted" or "user" (see marker_kind); None: from before it was kept

    @property
    def fs(self):
        return self.path / "fs"

    def to_dict(self):
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def marker_kind():
    """The xattrs an extraction by this process marks opaque directories with: the
    extractor's own rule (lamina._extract: trusted.overlay.* as root, else user.overlay.*)."""
    return "trusted" if os.geteuid() == 0 else "user"


def chain_id_of(diff_id, parent_chain_id=None):
    _digest.validate(diff_id, "diffID")
    if parent_chain_id is None:
        return diff_id
    _digest.validate(parent_chain_id, "parent chainID")
    return chain_ids([parent_chain_id, diff_id])[1]


def read_info(paths, chain_id):
    """The snapshot's metadata, or None if it does not exist (or is not a complete snapshot)."""
    path = paths.snapshot(chain_id)
    for p in (path, path / "fs"):
        # a snapshot (or its tree) put in place as a symlink behind lamina: never mounted,
        # flattened or compared through it (fsck --repair removes the link)
        if os.path.islink(p):
            raise StoreError(f"snapshot {chain_id}: {os.fspath(p)} is a symlink; run lamina fsck --repair")
    try:
        with open_own(path / "meta.json") as f:
            meta = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (ValueError, UnicodeDecodeError, OSError, RecursionError) as e:  # RecursionError: nested deep
        raise StoreError(f"snapshot {chain_id}: unreadable meta.json ({e}); run lamina fsck --repair") from None
    if not isinstance(meta, dict) or meta.get("format", 1) != FORMAT:
        return None  # made by another lamina version: extracted again when needed
    try:
        return SnapshotInfo(
            chain_id=meta["chain_id"], diff_id=meta["diff_id"], parent=meta.get("parent"), digest=meta["digest"],
            media_type=meta.get("media_type"), path=path, size=meta.get("size", 0), inodes=meta.get("inodes", 0),
            tar_bytes=meta.get("tar_bytes", 0), entries=meta.get("entries", 0), created=meta.get("created", 0.0),
            markers=meta.get("markers") if meta.get("markers") in ("trusted", "user") else None)
    except (KeyError, TypeError):
        raise StoreError(f"snapshot {chain_id}: incomplete meta.json; run lamina fsck --repair") from None


def list_chain_ids(paths):
    """ChainIDs of the snapshots present (temp and trash dirs excluded)."""
    try:
        names = os.listdir(paths.snapshots)
    except FileNotFoundError:
        return []
    return [f"sha256:{n}" for n in names if _digest.is_valid(f"sha256:{n}")]


def _extract(blob, fs, digest, diff_id, media_type, lower_dirs=None, defer_lowers=False, lowers_provider=None,
             hash_files_into=None, lower_shared=None, link_objects=None, early_dirs=False, progress=None):
    """Apply one layer blob into ``fs`` (overlay format), verifying digest and diffID.

    A separate function so that tests can count how often extraction really happens.
    """
    from ..layer import apply_layer  # the native core, imported only when extracting
    # The blob was verified when it was ingested (or is, as it streams in); the
    # diffID check below still catches any change, so hashing it here would only cost CPU.
    return apply_layer(blob if hasattr(blob, "read") else os.fspath(blob), os.fspath(fs), format="overlay", diff_id=diff_id, hash_blob=False,
                       media_type=media_type, name=f"layer {digest}", lower_dirs=lower_dirs,
                       defer_lowers=defer_lowers, lowers_provider=lowers_provider, lower_shared=lower_shared,
                       hash_files_into=hash_files_into, link_objects=link_objects, early_dirs=early_dirs,
                       progress=progress)


def dedup_shared(paths, fs, chain=None):
    """Names of a lower snapshot whose inode its file dedup shares (see objects.singletons).

    A pull deduplicates a layer while the layers above it extract: taking the
    snapshot's lock waits for a dedup pass under way, whose names are shared
    before its file list says so.  ``chain``: the lower's chainID, for a lower
    handed over before its commit (``fs`` is then not under its final name);
    its lock is held until that commit, so the list is read from there."""
    if chain is None:
        chain = "sha256:" + os.path.basename(os.path.dirname(os.fspath(fs)))
    lock = FileLock(paths.snapshot_lock(chain))
    lock.acquire()
    try:
        return _objects.singletons(paths.snapshot(chain))
    finally:
        lock.release(unlink=True)


def _open_lowers(paths, lowers, opened):
    """Dirs for the extractor of the lowers ``[(chainID, fs dir or None)]`` (bottom first)
    that a pull hands over once their trees are final, some maybe not committed yet: each is
    opened here and named ``/proc/self/fd/N``, so that a commit renaming it meanwhile does
    not matter.  ``opened``: {name: chainID}, the fds to close.  None if one is gone (a
    lower that failed: its temp dir was removed, and it was never committed)."""
    dirs = []
    for chain, fs in lowers:
        fd = None
        for d in ([fs] if fs is not None else []) + [paths.snapshot(chain) / "fs"]:
            try:
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                break
            except FileNotFoundError:
                continue   # committed meanwhile (renamed), or failed
        if fd is None:
            return None
        name = f"/proc/self/fd/{fd}"
        opened[name] = chain
        dirs.append(name)
    return dirs


class _Writers:
    """Layers of this process still writing files that their dedup pass may yet drop.

    syncfs flushes the whole filesystem: a layer committing while another still extracts
    would write that layer's duplicates to disk just before its pass frees them (on ext4,
    most of a rebuilt image's copy time).  So a deduplicating layer syncs only once no
    other layer of this process is writing.  A layer waiting for the layers below it is
    not writing (they may be the ones syncing); a layer streamed from a registry never
    waits or counts (its commit must not wait for other downloads).
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._count = 0

    def enter(self):
        with self._cond:
            self._count += 1

    def leave(self):
        with self._cond:
            self._count -= 1
            self._cond.notify_all()

    def wait_idle(self):
        with self._cond:
            self._cond.wait_for(lambda: self._count == 0)


_WRITERS = _Writers()


def _stale_dirs(paths, hexid, prefix):
    start = f"{prefix}{hexid}-"
    try:
        return [paths.snapshots / n for n in os.listdir(paths.snapshots) if n.startswith(start)]
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def _full_disk_named(layer_digest, staging):
    """A full disk's OSError in the block raised as the StoreError naming the layer
    (_storing_failed); any other as it is."""
    try:
        yield
    except OSError as e:
        if e.errno in FULL_ERRNOS:
            raise _storing_failed(layer_digest, e, staging) from e
        raise


def _storing_failed(layer_digest, e, staging=None):
    """The StoreError for an OSError of the store's own files while it stores a layer's snapshot.

    A file of the snapshot's ``staging`` dir is named by what it is ("meta.json (in the store
    /s)"): its path, snapshots/.tmp-<chainID>-<pid>-<random>/…, names nothing the user knows."""
    if e.filename is None:
        return StoreError(f"layer {layer_digest}: storing its snapshot failed: {e.strerror or e}")
    name = os.fsdecode(e.filename)
    rel = os.path.relpath(name, staging) if staging is not None else os.pardir
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return StoreError(f"layer {layer_digest}: storing its snapshot failed: {name}: {e.strerror}")
    if rel == os.curdir:
        what = "its staging directory"
    elif os.sep not in rel and rel.startswith("tmp"):
        what = "a temp file of its dedup pass"   # tempfile's names: the pass's spilled rows and keys
    else:
        what = rel + (os.sep if rel in ("fs", _objects.HASHED) else "")
    root = os.path.dirname(os.path.dirname(os.path.normpath(os.fspath(staging))))
    return StoreError(f"layer {layer_digest}: storing its snapshot failed: {what} (in the store {root}): "
                      f"{e.strerror}")


def _present(paths, chain):
    info = read_info(paths, chain)
    return info is not None and info.fs.is_dir()


def ensure(paths, layer_digest, diff_id, parent_chain_id=None, media_type=None, *, defer=False,
           source=None, before_commit=None, wait_lowers=None, tree_ready=None, before_publish=None,
           progress=None):
    """Extract the layer into ``snapshots/<chainID>`` unless it is there; return its ``fs`` dir.

    The snapshots below must exist, unless ``defer``: then the layer is
    extracted on its own and NeedsLowers raised (nothing kept) if it needs
    them.  Safe to call from many threads and processes at once: one
    extracts, the others wait on the snapshot's lock and then find it done.

    ``source``: read the blob from this stream instead of the store (a pull
    extracting while it downloads); returns None without reading it if the
    snapshot exists.  ``before_commit()`` runs once the diffID verified,
    before the snapshot is published; raising aborts it.  ``wait_lowers()``
    (with ``defer``): called when the layer turns out to need the snapshots
    below it; blocks until they are committed, True if they were (the
    extraction then goes on over them), False to give up with NeedsLowers,
    or ``[(chainID, fs dir or None)]`` of the layers below (bottom first)
    whose trees are final though maybe not committed: the extraction goes
    on over those (their dedup pass may still swap a file for an object
    with the same bytes and metadata, which reads the same).

    ``tree_ready(fs)``: this layer's tree is final (diffID verified, blob
    committed, the dedup pass changes no name in it any more) in ``fs``, a
    temp dir until the commit.  ``before_publish()``:
    called before the commit; False aborts it with NeedsLowers (a layer
    below, handed over before its commit, failed).  A snapshot is never
    committed before the snapshots below it: a pull that hands lowers over
    early waits for their commits there.

    ``progress(n)``: the blob's bytes the extraction has read so far (see apply_layer).
    """
    _digest.validate(layer_digest, "layer digest")
    chain = chain_id_of(diff_id, parent_chain_id)
    final = paths.snapshot(chain)
    if _present(paths, chain):
        return final / "fs" if source is None else None
    blob = paths.blob(layer_digest)
    lock = FileLock(paths.snapshot_lock(chain))
    lock.acquire()
    stored = None
    try:
        if _present(paths, chain):
            return final / "fs" if source is None else None
        if source is None:
            stored = open_blob(blob, f"layer {layer_digest} (diffID {diff_id})")
        lower = lower_chain(paths, parent_chain_id) if parent_chain_id else []
        if lower is None and not defer:
            raise StoreError(f"layer {layer_digest}: the snapshots of the layers below it are missing")
        hexid = _digest.hex_of(chain)
        for stale in _stale_dirs(paths, hexid, TMP_PREFIX):  # left by a killed extractor; we hold the lock
            remove_tree(stale)
        if final.exists():  # a snapshot dir without fs/ or of an old format: never a usable snapshot
            _discard(paths, final, hexid)
        tmp = paths.snapshots / f"{TMP_PREFIX}{hexid}-{os.getpid()}-{secrets.token_hex(4)}"
        deduplicating = False
        with _full_disk_named(layer_digest, tmp):
            os.makedirs(paths.snapshots, exist_ok=True)
            os.mkdir(tmp, 0o755)
            # a set-group-ID store directory would hand its group (and the bit) down to every entry
            # an unprivileged extraction cannot chown, where the dir unpack's staging gives its own
            os.chmod(tmp, 0o755)
        hashed = _objects.hashed_dir(paths, tmp)
        writing = [hashed is not None and source is None]  # counted in _WRITERS
        if writing[0]:
            _WRITERS.enter()

        def pause_writing(wait):
            if not writing[0]:
                return wait()
            _WRITERS.leave()
            try:
                return wait()
            finally:
                _WRITERS.enter()

        def sync():
            if writing[0]:
                writing[0] = False
                _WRITERS.leave()
                _WRITERS.wait_idle()
            syncfs(tmp)

        opened = {}   # lowers handed over before their commit: /proc/self/fd/N -> chainID
        try:
            def provider():
                trace.event("wait-lowers", chain=hexid[:12])
                try:
                    got = pause_writing(wait_lowers) if wait_lowers is not None else None
                    if not got:
                        return None
                    if got is True:
                        return lower_chain(paths, parent_chain_id)
                    return _open_lowers(paths, got, opened)
                finally:
                    trace.event("wait-lowers-done", chain=hexid[:12])

            trace.event("extract", chain=hexid[:12], streaming=source is not None)
            # Directories the layer implies are made at once rather than waited for (early_dirs),
            # so that it extracts beside the layers below it; in the rare image where one is not a
            # directory below after all, a blob from the store is extracted again, waiting.
            for early in (True, False):
                try:
                    # a full disk in the extractor's own dirs (fs/, hashed/); the entries' errors name them
                    with _full_disk_named(layer_digest, tmp):
                        stats = _extract(stored if source is None else source, tmp / "fs", layer_digest, diff_id,
                                         media_type, lower_dirs=lower or None, defer_lowers=lower is None,
                                         lowers_provider=provider, hash_files_into=hashed,
                                         link_objects=_objects.linkable_dir(paths, hashed),
                                         lower_shared=lambda fs: pause_writing(
                                             lambda: dedup_shared(paths, fs, opened.get(fs))),
                                         early_dirs=early, progress=progress)
                    break
                except ImpliedDirMoved:
                    if source is not None or not early:
                        raise  # a stream cannot be read again: the pull extracts its stored blob
                    trace.event("extract-again", chain=hexid[:12])
                    stored.seek(0)
                    remove_tree(tmp / "fs")
                    if hashed is not None:
                        _objects.drop_hashed(tmp)
                finally:
                    for name in opened:
                        os.close(int(name.rsplit("/", 1)[1]))
                    opened.clear()
            trace.event("extracted", chain=hexid[:12])
            if before_commit is not None:
                before_commit()
                trace.event("blob-committed", chain=hexid[:12])
            if tree_ready is not None and hashed is None:
                tree_ready(tmp / "fs")  # else once the dedup pass has swapped its names (tree_final)
            try:
                size, inodes = disk_usage(tmp / "fs")
                trace.event("disk-usage", chain=hexid[:12])
                meta = {"format": FORMAT, "chain_id": chain, "diff_id": diff_id, "parent": parent_chain_id,
                        "digest": layer_digest, "media_type": media_type, "size": size, "inodes": inodes,
                        "tar_bytes": stats.bytes, "entries": stats.entries, "created": time.time(),
                        "markers": marker_kind()}
                try:
                    with open(tmp / "meta.json", "w") as f:
                        json.dump(meta, f, indent=2)
                except OSError as e:
                    raise name_error(e, tmp / "meta.json")
                if hashed is None:
                    syncfs(tmp)
                else:
                    # Deduplicated here, before the sync: a duplicate is swapped for the shared
                    # object before its data is ever written (see objects.dedup_snapshot).  This also
                    # runs in the layer's own thread, beside the other layers' extraction.
                    final_tree = None if tree_ready is None else (lambda: tree_ready(tmp / "fs"))
                    deduplicating = True
                    ds = _objects.dedup_snapshot(paths, tmp, sync=sync, tree_final=final_tree)
                    trace.event("dedup", chain=hexid[:12], plan=f"{ds.plan_seconds:.3f}",
                                sync=f"{ds.sync_seconds:.3f}", claim=f"{ds.claim_seconds:.3f}",
                                finish=f"{ds.finish_seconds:.3f}")
                if before_publish is not None:
                    trace.event("wait-lowers-commit", chain=hexid[:12])
                    if not before_publish():
                        raise NeedsLowers(f"layer {layer_digest}: a layer below it failed")
                os.rename(tmp, final)
                fsync_dir(paths.snapshots)
            except OSError as e:
                # the extractor names the entry a full disk stopped; past it, the store's own
                # files (meta.json, objects, file lists, the sync) said only "60: No space left"
                raise _storing_failed(layer_digest, e, tmp) from e
            trace.event("committed", chain=hexid[:12])
        except BaseException as e:
            abandon(tmp, e, f"{TRASH_PREFIX}{hexid}-{secrets.token_hex(4)}")
            if deduplicating:
                _note_dropped_dedup()
            raise
        finally:
            if writing[0]:
                _WRITERS.leave()
        return final / "fs"
    finally:
        if stored is not None:
            stored.close()
        lock.release(unlink=True)


# Staging snapshots dropped after their dedup pass began, in this process: that pass may have
# made objects which only the dropped snapshot used (a good layer deduplicated beside the
# extraction of a layer below it that was then refused).  A failed import or pull asks
# dedups_dropped_since() whether to collect them (imports.drop_unused_objects).
_dropped_dedups = 0
_dropped_lock = threading.Lock()


def _note_dropped_dedup():
    global _dropped_dedups
    with _dropped_lock:
        _dropped_dedups += 1


def dedups_dropped_since():
    """A function telling whether this process has dropped a staging snapshot after its dedup
    pass began since this call (a failed import or pull then collects the objects only that
    snapshot used)."""
    at = _dropped_dedups
    return lambda: _dropped_dedups != at


# chainID -> its parent's, as read from a meta.json: a chainID hashes its parent's, so this never
# changes.  Walking the chain read every lower's meta.json for each layer, the square of the layer
# count (1,000 one-file layers: 500,000 reads, half a minute of a load); a lower known here is
# looked up in one listing of snapshots/.
_PARENTS = {}


def lower_chain(paths, parent_chain_id):
    """``fs`` dirs of the snapshots below (bottom first), or None unless all exist."""
    dirs, chain = [], parent_chain_id
    present = None
    while chain is not None:
        hexid = _digest.hex_of(chain)
        if chain in _PARENTS:
            if present is None:
                try:
                    present = set(os.listdir(paths.snapshots))
                except FileNotFoundError:
                    return None
            if hexid not in present:
                return None
            parent = _PARENTS[chain]
        else:
            info = read_info(paths, chain)
            if info is None:
                return None
            parent = _PARENTS[chain] = info.parent
        dirs.append(os.fspath(paths.snapshot(chain) / "fs"))
        chain = parent
    return dirs[::-1]


def verify_shared(paths, layers, diff_ids, media_types=None):
    """Check that each layer blob of an image being stored whose snapshot exists already, made
    from another blob, is that layer: its uncompressed bytes hash to the diffID.  ensure() finds
    such a snapshot present and reads nothing, so an image whose config names a layer the store
    holds (a popular base) over a blob of other content was named, unpacked as the base, passed
    fsck, and handed its own blob to every reader of the store's layout (and to save, which
    refused it).  Where no snapshot exists the extraction checks the diffID itself."""
    ids = chain_ids(diff_ids)
    media_types = media_types or [None] * len(layers)
    checked = set()
    for k, (digest, diff_id, media_type, chain) in enumerate(zip(layers, diff_ids, media_types, ids)):
        if (digest, diff_id) in checked or not _present(paths, chain):
            continue
        try:
            info = read_info(paths, chain)
        except StoreError:
            continue  # a broken snapshot is fsck's; ensure() extracts no other over it
        blob = paths.blob(digest)
        # absent: a compact store's, dropped; anything else there is open_blob's to refuse (a FIFO or a
        # symlink, which is_file() took for no blob, and so let the image through unchecked)
        if info is None or info.digest == digest or not os.path.lexists(blob):
            continue
        checked.add((digest, diff_id))
        if _verified(paths, digest, diff_id, media_type):
            continue
        try:
            check_diff_id(blob, digest, diff_id, media_type)
        except LaminaError as e:
            raise at_layer(e, k)
        _record_verified(paths, digest, diff_id, media_type)


# A layer blob whose snapshot came from another blob is hashed whole (decompressed) by
# verify_shared each time an image naming it is stored: a blob is immutable by its digest, so
# its diffID, once hashed, is recorded and not hashed again.  The record is written only after
# a hash that matched, for the media types it was read as (check_media_type depends on it);
# fsck hashes for real (check_diff_id), whatever the records say.

def _verified_lines(paths, digest):
    try:
        with open(paths.verified / _digest.hex_of(digest), "rb") as f:
            return f.read(4096).decode("ascii", "replace").split("\n")
    except (FileNotFoundError, NotADirectoryError):
        return None


def _verified(paths, digest, diff_id, media_type):
    lines = _verified_lines(paths, digest)
    return bool(lines) and lines[0] == diff_id and (media_type or "-") in lines[1:]


def _record_verified(paths, digest, diff_id, media_type):
    from .fsutil import atomic_write
    if media_type is not None and not (media_type.isascii() and media_type.isprintable()):
        return  # one a line: a hostile media type would spell others
    lines = _verified_lines(paths, digest)
    types = [t for t in (lines[1:] if lines and lines[0] == diff_id else []) if t][:16]
    types.append(media_type or "-")
    try:
        paths.verified.mkdir(parents=True, exist_ok=True)
        atomic_write(paths.verified / _digest.hex_of(digest), "\n".join([diff_id, *types]).encode("ascii"))
    except OSError:
        pass  # a record not written costs one more hash next time, nothing else


def forget_verified(paths):
    """gc: drop the records of blobs no longer in the store (removed, or dropped by compaction),
    which nothing reads again (verify_shared hashes only a blob present) and would pile up."""
    try:
        names = os.listdir(paths.verified)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        if len(name) != 64 or name.strip("0123456789abcdef"):
            continue  # not a record (an interrupted write's temporary file is fsck's)
        if not paths.blob(f"sha256:{name}").is_file():
            try:
                os.unlink(paths.verified / name)
            except FileNotFoundError:
                pass


def open_blob(path, what):
    """A layer blob of the store opened to read as every blob is (fsutil.open_own: a symlink or a
    FIFO planted in its place is refused, naming it, never followed or waited on)."""
    try:
        return open_own(path, buffering=0)
    except FileNotFoundError:
        raise BlobNotFoundError(f"{what}: blob is not in the store") from None


def check_diff_id(blob, digest, diff_id, media_type):
    import hashlib

    from .. import compression
    from ..errors import CompressionError, DigestMismatchError
    what = f"layer {digest}"
    with open_blob(blob, what) as f:
        head, kind = compression.sniff(f, media_type)
        if head:  # 0 bytes are the empty layer whatever the media type, as for the extraction
            compression.check_media_type(kind, media_type, what, head)
        stream = compression.open_decompressed(compression.Prefixed(head, f), kind, what)
        h = hashlib.sha256()
        try:
            while True:
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
        except compression.decompress_errors() as e:
            raise CompressionError(f"{what}: {compression.corrupt(kind, e)}") from e
    actual = "sha256:" + h.hexdigest()
    if actual != diff_id:
        raise DigestMismatchError(f"{what}: diffID (uncompressed tar)", diff_id, actual)


def ensure_all(paths, layers, diff_ids, media_types=None):
    """Snapshots for a whole image (bottom first), all missing layers at once:
    a layer that needs the snapshots below it waits at that entry for their
    trees to be final (not for their commits)."""
    ids = chain_ids(diff_ids)
    parents = [None] + ids[:-1]
    media_types = media_types or [None] * len(layers)
    jobs = list(zip(layers, diff_ids, parents, media_types))
    if not jobs:
        return []
    missing = [k for k, c in enumerate(ids) if not _present(paths, c)]
    # layer k extracts over the k below it, each an open fd: checked before any is extracted
    workers = open_file_budget(max(missing, default=0), f"{len(jobs)} layers",
                               f"layer {max(missing, default=0) + 1}'s snapshot, extracted over the layers below it,",
                               min(MAX_PARALLEL, len(missing), max(os.cpu_count() or 1, 2)))
    if len(missing) > 1:
        below = LayersBelow(len(jobs))
        for k in set(range(len(jobs))) - set(missing):
            below.finished(k)

        def one(k):
            ok = False
            try:
                # As a pull does: go on over the layers below once their trees are final, so
                # that their dedup passes run beside this layer's extraction, not before it.
                result = ensure(paths, *jobs[k], defer=True, wait_lowers=lambda: below.final_trees(k, ids),
                                tree_ready=lambda fs: below.tree(k, fs), before_publish=lambda: below.wait(k))
                ok = True
                return result
            finally:
                below.finished(k, ok)

        # submitted bottom-up and started in that order, so a layer only ever waits for running ones
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="lamina-snapshot") as pool:
            futures = [pool.submit(one, k) for k in missing]
            concurrent.futures.wait(futures)
        for k, f in zip(missing, futures):  # report the lowest failing layer, so errors are stable
            if f.exception() is not None and not isinstance(f.exception(), NeedsLowers):
                raise at_layer(f.exception(), k)
    out = []
    for k, j in enumerate(jobs):
        try:
            out.append(ensure(paths, *j))
        except LaminaError as e:
            raise at_layer(e, k)
    return out


def _discard(paths, path, hexid):
    """Move a snapshot out of its name first, so a half-deleted one never looks present."""
    trash = paths.snapshots / f"{TRASH_PREFIX}{hexid}-{secrets.token_hex(4)}"
    os.rename(path, trash)
    remove_tree(trash)


def remove(paths, chain_id):
    """Delete a snapshot under its lock. True if something was removed."""
    hexid = _digest.hex_of(chain_id)
    lock = FileLock(paths.snapshot_lock(chain_id))
    lock.acquire()
    try:
        path = paths.snapshot(chain_id)
        if not path.exists():
            return False
        _discard(paths, path, hexid)
        return True
    finally:
        lock.release(unlink=True)
