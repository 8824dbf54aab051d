"""Putting a whole image into the store: blobs, snapshots, then names (in that order).

Names come last, so an image is never visible before everything it needs is
in the store and every diffID verified (extraction checks them).  If an import
fails, the blobs and snapshots it created (and the file objects only those
snapshots used) are removed again; while another writer is active (it might be
sharing them) they are listed in ``lamina/rollbacks`` and the last writer to
finish removes them (gc and fsck --repair take them too).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets

from .. import digest as _digest
from ..errors import DigestMismatchError, ImageError, LaminaError, StoreError, layer_of, layers_named, name_the_layer
from ..layer import refuse_foreign
from . import objects as _objects
from . import snapshots as _snapshots
from .fsutil import atomic_write
from .gc import reachable
from .image import load_image
from .locks import FileLock
from .store import check_digest_name


def _skip(f, n):
    if n <= 0:
        return
    try:
        if f.seekable():
            f.seek(n)
            return
    except (AttributeError, OSError):
        pass
    while n:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            return
        n -= len(chunk)


def ingest_stream(store, digest, size, opener):
    """Ingest one blob from ``opener()`` (resuming a partial). True if this call wrote it."""
    if store.has_blob(digest):
        return False
    for attempt in range(2):
        with store.ingest(digest, size) as w:
            if w.exists:
                return False
            resumed = w.offset
            try:
                with opener() as f:
                    _skip(f, resumed)
                    w.write_from(f)
                w.commit()
                return True
            except DigestMismatchError:
                if resumed and attempt == 0:
                    continue  # the partial came from other bytes than ours; commit() discarded it
                raise
            except BaseException:
                # A local source re-reads cheaply, and a bad one must leave nothing behind; only a
                # killed process leaves a partial (resumed next time, or removed by fsck --repair).
                w.discard()
                raise
    return True


def _same_image(store, data):
    """For a legacy docker archive (no manifest of its own): an image already stored with the same
    config, i.e. the same image ID and diffIDs.  Like docker load, reuse it rather than storing
    the archive's uncompressed layers beside it."""
    if not data.synthesized:
        return None
    for e in store.index.read():
        try:
            image = store.image(e["digest"])
        except (ImageError, StoreError):
            continue
        if image.config_digest == data.config_digest and all(store.has_blob(b) for b in image.blobs):
            return image
    return None


def check_names(data, names):
    """Refuse names an ImageData cannot be given (a ``name@digest`` of other content)."""
    for ref in names:
        check_digest_name(ref, data.manifest_digest, data.index.digest if data.index else None)


def import_image(store, data, names=(), report=None):
    """Store an ImageData and give it ``names`` (References; none: recorded dangling). Returns the Image."""
    return import_images(store, [(data, names)], report)[0]


def import_images(store, items, report=None):
    """Store every ImageData of ``items`` ([(data, names)]), then name them: all or nothing.

    ``lamina load`` of an archive whose second image is bad named the first and stored its
    blobs and snapshots, so a refused load changed the store; now nothing is named until every
    image's blobs are in and every layer extracted and verified, and a failure takes back what
    any of them created.  Returns the Images, in order."""
    report = report or (lambda *a: None)
    for data, names in items:
        check_names(data, names)  # before any work: an import refused stores nothing
    created_blobs, created_snaps, ready = [], [], []
    dropped = _snapshots.dedups_dropped_since()
    try:
        for data, names in items:
            existing = _same_image(store, data)
            if existing is not None:
                _snapshots_named(store, data, existing)   # its snapshots may be gone: extracted again
                ready.append((existing.manifest_digest, names, None, "exists", data.platform))
                continue
            _put_blobs(store, data, created_blobs, report)
            # A multi-arch image keeps every platform under its name, as pull --all-platforms does:
            # the index is its repo digest, the other platforms' blobs stored but not extracted.
            index = data.index
            others = [c for c in index.children if c.manifest_digest != data.manifest_digest] if index else []
            for child in others:
                _put_blobs(store, child, created_blobs, report)
            if index is not None and not store.has_blob(index.digest):
                store.put_blob(index.data, index.digest)
                created_blobs.append(index.digest)
            image = load_image(store.open_blob, data.manifest_digest)
            created_snaps += [c for c in image.chain_ids if store.snapshot_info(c) is None]
            _snapshots_named(store, data, image, check=True)
            ready.append((data.manifest_digest, names, index.digest if index else None, "written", data.platform))
        results = []
        for manifest_digest, names, repo_digest, status, platform in ready:
            results.append(store.add_names(manifest_digest, list(names) or [None], repo_digest=repo_digest,
                                           platform=platform))
            report("manifest", manifest_digest, status)
        return results
    except BaseException:
        _rollback(store, created_blobs, created_snaps, dropped())
        raise


def _snapshots_named(store, data, image, check=False):
    """The image's snapshots (``check``: its layer blobs checked first), a refused layer named
    by its place in ``data`` ("layer 2 of 3 (sha256:…)"), not by its digest alone."""
    with layers_named([layer.digest for layer in image.layers], lambda k: _which_layer(data, k),
                      mismatch_comma=True):
        if check:
            store.check_layer_blobs(image.manifest_digest, image.layers, image.diff_ids)
        store._ensure_snapshots(image)   # its rollback takes back what a refusal dropped


def _put_blobs(store, data, created, report):
    """Layers, config and manifest of one ImageData into the store (``created``: what was new)."""
    for i, layer in enumerate(data.layers):
        try:
            wrote = ingest_stream(store, layer.digest, layer.size, layer.open)
        except DigestMismatchError as e:
            # "blob sha256:...: digest mismatch" alone left the reader to find which of the
            # archive's images and layers that was; a docker-archive's layer member compressed
            # by hand (xz, bzip2) is not the tar its name says, and is named for what it is
            what = f"{_which_layer(data, i)} ({e.what})"
            head = b""
            with contextlib.suppress(LaminaError, OSError), layer.open() as f:
                head = f.read(16)
            refuse_foreign(head, what, f"its digest is {e.actual}, not {e.expected}")
            raise DigestMismatchError(what, e.expected, e.actual) from None
        except LaminaError as e:   # a full disk's "blob sha256:…: cannot write it into the store", a short blob's
            name_the_layer(e, [layer.digest], lambda _: _which_layer(data, i))
            raise
        if wrote:
            created.append(layer.digest)
            report("blob", layer.digest, "copied")
        else:
            report("blob", layer.digest, "exists")
    for blob, digest in ((data.config, data.config_digest), (data.manifest, data.manifest_digest)):
        if not store.has_blob(digest):
            store.put_blob(blob, digest)
            created.append(digest)


def _which_layer(data, i):
    """The source, image and layer (counted from 1, of how many) an error is about."""
    image = f" image {', '.join(n.familiar() for n in data.names)}" if data.names else ""
    return f"{data.description}:{image} {layer_of(i, len(data.layers))}"


def _rollback(store, blobs, chains, dropped_dedup=False):
    """Remove what a failed import created.  ``dropped_dedup``: a staging snapshot was dropped
    after its dedup pass began (see drop_unused_objects).

    Another writer may share what we made (an image of the same base layer found our blob or
    snapshot and is about to name it), so nothing is removed while one is at work.  The list is
    kept in ``lamina/rollbacks`` and the last writer to finish takes it back (Store.close): a
    refused copy beside a good one left its blobs for gc, and fsck warned of them."""
    if not blobs and not chains and not dropped_dedup:
        return
    try:
        _note_pending(store.paths, blobs, chains, dropped_dedup)  # before our lease goes: see finish_pending
        unlisted = None
    except OSError:
        unlisted = (blobs, chains, dropped_dedup)  # a full disk: taken back now if we can, else by gc
    store.close()  # our own shared lease would block the exclusive lock below
    take_back(store, unlisted)


def take_back(store, unlisted=None):
    """finish_pending, failing quietly: it runs as a writer ends, a failed import's error is
    the one to report, and what is left stays listed for the next writer, gc or fsck --repair."""
    try:
        finish_pending(store, unlisted)
    except (OSError, LaminaError):
        pass


def _note_pending(paths, blobs, chains, dropped_dedup, gc=False):
    os.makedirs(paths.rollbacks, exist_ok=True)
    doc = {"blobs": list(blobs), "chain_ids": list(chains), "objects": bool(dropped_dedup)}
    if gc:
        doc["gc"] = True
    atomic_write(paths.rollbacks / f"{secrets.token_hex(8)}.json", json.dumps(doc).encode())


def defer_gc(store):
    """rmi or prune found another writer at work: the last writer to finish collects what no
    image needs (as gc), rather than the next prune.  The record is written before this tries
    to collect at once (the writer may just have finished): see finish_pending.

    Written under the index lock: the rmi holds no gc lease, so a fsck --repair may have the gc
    lock, and it sweeps lamina/rollbacks' temp names (an interrupted write's) under this lock."""
    with FileLock(store.paths.index_lock):
        _note_pending(store.paths, [], [], False, gc=True)
    take_back(store)


def _pending(paths):
    try:
        return sorted(n for n in os.listdir(paths.rollbacks) if n.endswith(".json") and ".tmp-" not in n)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _read_pending(path):
    """(blobs, chains, objects) a record lists; None for a record asking for a gc, or one that
    cannot be read (a store's own file: whatever it listed, a gc takes it)."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(16 << 20))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("gc") is not None:
        return None

    def digests(key):
        v = doc.get(key)
        return [d for d in v if isinstance(d, str) and _digest.is_valid(d)] if isinstance(v, list) else []
    return digests("blobs"), digests("chain_ids"), doc.get("objects") is not False


def finish_pending(store, unlisted=None):
    """Take back what failed imports left in ``lamina/rollbacks`` (and run the gc an rmi or prune
    beside a writer asked for), if no writer is at work (it holds the gc lease shared): then
    what they made and no image reaches is nobody's, as for gc.  Called by a writer as it lets its lease go; one that finds another still at work leaves
    the records to it (a record is written before its writer lets its lease go, so the last
    writer always sees it), or to gc and fsck --repair.  ``unlisted``: (blobs, chains, objects)
    of a failed import that could not write its record, taken back with the others."""
    paths = store.paths
    if not _pending(paths) and unlisted is None:
        return
    lock = FileLock(paths.gc_lock)
    if not lock.try_acquire():
        return
    try:
        paths.check_own_dirs()
        records = [(paths.rollbacks / n, _read_pending(paths.rollbacks / n)) for n in _pending(paths)]
        if any(listed is None for _, listed in records):
            from .gc import GCResult, collect_locked
            collect_locked(store, GCResult())  # takes every record's leftovers, and the records
            return
        keep_blobs, keep_chains = reachable(store)
        if unlisted is not None:
            records.append((None, unlisted))
        collect = False
        for record, (blobs, chains, objects) in records:
            for d in blobs:
                if d not in keep_blobs:
                    try:
                        paths.blob(d).unlink()
                    except FileNotFoundError:
                        pass
            for c in chains:
                if c not in keep_chains:
                    collect = _snapshots.remove(paths, c) or collect
            collect = collect or objects
        if collect:
            # Each layer's files were shared with the store's objects as it committed: the objects
            # only the removed snapshots used stayed behind ("not used by any snapshot" in fsck).
            # Likewise those of a layer whose dedup pass ran beside the extraction of a layer
            # below it, and whose snapshot was dropped when that one was refused.
            _objects.collect(paths)
        for record, _ in records:
            if record is not None:
                record.unlink()  # last: a kill before it only means the (idempotent) work is redone
    finally:
        lock.release()


def clear_pending(paths):
    """gc and fsck --repair (under the gc lock, exclusive) took everything unreachable: the
    records are done with."""
    for n in _pending(paths):
        try:
            (paths.rollbacks / n).unlink()
        except FileNotFoundError:
            pass


def drop_unused_objects(store):
    """After a failed pull: remove the objects of the staging snapshots it dropped after their
    dedup pass began (a good layer deduplicated beside a layer below it that was then refused),
    which nothing uses, so that fsck is clean but for what the pull keeps for its rerun (blobs,
    committed snapshots).  Skipped while another writer holds the gc lease: gc takes them."""
    _rollback(store, [], [], dropped_dedup=True)
