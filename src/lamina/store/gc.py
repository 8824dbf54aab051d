"""Garbage collection: delete the blobs and snapshots that nothing reaches.

Roots are the index.json entries (named and dangling images) and the holds.
gc runs with the gc lock exclusive, i.e. while no other Store is writing, so
a blob ingested for an image that is not named yet is never taken.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .. import digest as _digest
from .. import mediatypes as mt
from ..errors import ImageError, StoreError
from ..oci.model import document_media_type, parse_manifest
from . import objects as _objects
from . import snapshots as _snapshots
from .fsutil import open_own
from .image import chain_ids
from .index import entry_repo_digest
from .locks import FileLock, is_locked
from .paths import LOAD_SPOOL


@dataclass
class GCResult:
    blobs: list = field(default_factory=list)       # (digest, bytes) removed (or that would be)
    snapshots: list = field(default_factory=list)   # (chainID, bytes on disk)
    # ingest/ files of killed pulls and loads (digest of the blob, or the spool's name; bytes on disk)
    partials: list = field(default_factory=list)
    # file objects no snapshot uses any more: counted, not named (there can be millions)
    objects: int = 0
    objects_size: int = 0                           # their bytes on disk
    dry_run: bool = False

    @property
    def reclaimed(self):
        return (sum(n for _, n in self.blobs) + sum(n for _, n in self.snapshots)
                + sum(n for _, n in self.partials) + self.objects_size)

    def to_dict(self):
        return {"blobs": [{"digest": d, "size": n} for d, n in self.blobs],
                "snapshots": [{"chain_id": c, "size": n} for c, n in self.snapshots],
                "objects": {"count": self.objects, "size": self.objects_size},
                "partials": [{"name": d, "size": n} for d, n in self.partials],
                "reclaimed": self.reclaimed, "dry_run": self.dry_run}


def _read_json(path, limit=16 << 20):
    try:
        with open_own(path) as f:   # a FIFO planted there is not waited on
            data = f.read(limit + 1)
    except (FileNotFoundError, StoreError):
        return None
    try:
        return json.loads(data) if len(data) <= limit else None
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested deep
        return None


def reachable(store):
    """(blob digests, chainIDs) reachable from index.json and holds.

    Tolerant on purpose: an image whose config is missing still protects its
    layers, so a damaged image loses nothing more than what is already gone.
    """
    paths = store.paths
    blobs, chains = set(), set()
    for e in store.index.read():
        _reach_manifest(paths, e["digest"], e.get("mediaType"), blobs, chains)
        rd = entry_repo_digest(e)
        if rd:
            # The index the registry served, when it was kept, and every platform's image
            # stored under it (pull --all-platforms): a multi-arch image lives by its tag.
            blobs.add(rd)
            for child, media_type in stored_index_children(store, rd):
                _reach_manifest(paths, child, media_type, blobs, chains)
    for record in store.holds().values():
        blobs.update(d for d in record.get("blobs", []) if _digest.is_valid(d))
        chains.update(c for c in record.get("chain_ids", []) if _digest.is_valid(c))
    return blobs, chains


def _read_manifest(paths, m, media_type):
    """(manifest, diffIDs) of the stored manifest ``m``, read tolerantly as gc must: manifest
    None if it is not one; diffIDs None unless its config lists valid ones."""
    doc = _read_json(paths.blob(m))
    if not isinstance(doc, dict):
        return None, None
    try:
        manifest = parse_manifest(doc, document_media_type(doc, media_type, m), m, limits=None)
    except (ImageError, ValueError):
        return None, None
    config = _read_json(paths.blob(manifest.config.digest))
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = ((rootfs.get("diff_ids") or []) if "diff_ids" in rootfs else None) if isinstance(rootfs, dict) else None
    if not (isinstance(diff_ids, list) and all(_digest.is_valid(d) for d in diff_ids)):
        diff_ids = None
    return manifest, diff_ids


def _reach_manifest(paths, m, media_type, blobs, chains):
    blobs.add(m)
    manifest, diff_ids = _read_manifest(paths, m, media_type)
    if manifest is None:
        return
    blobs.add(manifest.config.digest)
    blobs.update(layer.digest for layer in manifest.layers)
    if diff_ids is not None:
        chains.update(chain_ids(diff_ids))


def blob_places(store, digests):
    """{layer blob digest: {(chainID, diffID)}}: every place a reachable image (named, dangling,
    or a platform of a stored index) puts one of ``digests``.  Tolerant as reachable() is."""
    out = {}
    todo = []
    for e in store.index.read():
        todo.append((e["digest"], e.get("mediaType")))
        rd = entry_repo_digest(e)
        if rd:
            todo += stored_index_children(store, rd)
    for m, media_type in dict.fromkeys(todo):
        manifest, diff_ids = _read_manifest(store.paths, m, media_type)
        if manifest is None or not any(layer.digest in digests for layer in manifest.layers):
            continue
        if diff_ids is None or len(diff_ids) != len(manifest.layers):
            continue
        for layer, diff_id, chain in zip(manifest.layers, diff_ids, chain_ids(diff_ids)):
            if layer.digest in digests:
                out.setdefault(layer.digest, set()).add((chain, diff_id))
    return out


def stored_index_children(store, index_digest):
    """[(digest, media type)] of the platform manifests (and nested indexes) of a stored image
    index that are in the store themselves; [] if ``index_digest`` is not a stored index."""
    out, todo, seen = [], [index_digest], set()
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        doc = _read_json(store.paths.blob(d))
        if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
            continue
        for m in doc["manifests"]:
            digest = m.get("digest") if isinstance(m, dict) else None
            if not (isinstance(digest, str) and _digest.is_valid(digest) and store.has_blob(digest)):
                continue
            media_type = m.get("mediaType")
            out.append((digest, media_type))
            if mt.is_index(media_type or ""):
                todo.append(digest)
    return out


def unreferenced(store):
    """(blob digests, chainIDs) present in the store but not reachable."""
    keep_blobs, keep_chains = reachable(store)
    blobs = [d for d in store.blobs() if d not in keep_blobs]
    chains = [c for c in _snapshots.list_chain_ids(store.paths) if c not in keep_chains]
    return blobs, chains


def _snapshot_size(store, chain):
    try:
        info = store.snapshot_info(chain)
    except StoreError:
        return 0
    return info.size if info else 0


def stale_ingest(paths):
    """[(name, path, bytes on disk)] of the files in ingest/ that stopped pulls and loads leave:
    blobs' ``.partial`` files and the archives ``load`` spools from stdin.  Other names are not
    ours to count or remove (fsck reports them)."""
    try:
        names = sorted(os.listdir(paths.ingest))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for n in names:
        if n.endswith(".partial"):
            digest = "sha256:" + n[:-len(".partial")]
            if _digest.is_valid(digest):
                out.append((digest, paths.ingest / n))
        elif n.startswith(LOAD_SPOOL[0]) and n.endswith(LOAD_SPOOL[1]):
            out.append((n, paths.ingest / n))
    return [(name, path, _on_disk(path)) for name, path in out]


def _on_disk(path):
    try:
        return os.lstat(path).st_blocks * 512
    except OSError:
        return 0


def collect(store, dry_run=False):
    result = GCResult(dry_run=dry_run)
    with FileLock(store.paths.gc_lock):
        collect_locked(store, result)
        # Only in the gc a user asks for (prune), not in the one the last writer runs for others
        # (imports.finish_pending calls collect_locked): a failed pull keeps its partial for its
        # rerun to resume.  With the gc lock exclusive no pull or load is at work, so every
        # partial is a stopped one's; system df counts them as what prune frees.
        collect_partials(store.paths, result)
    return result


def collect_partials(paths, result):
    for name, path, size in stale_ingest(paths):
        if name.startswith("sha256:") and is_locked(paths.blob_lock(name)):
            continue   # an ingest without a Store's lease (IngestWriter used alone)
        if not result.dry_run:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
        result.partials.append((name, size))


def collect_locked(store, result):
    """collect() for a caller that holds the gc lock exclusive; fills ``result``."""
    dry_run = result.dry_run
    blobs, chains = unreferenced(store)
    for d in blobs:
        path = store.paths.blob(d)
        try:
            size = path.stat().st_size
            if not dry_run:
                os.unlink(path)
        except FileNotFoundError:
            continue
        result.blobs.append((d, size))
    for c in chains:
        size = _snapshot_size(store, c)
        if dry_run or _snapshots.remove(store.paths, c):
            result.snapshots.append((c, size))
    # After the snapshots: their names were what kept these objects in use.  A dry run
    # cannot tell which objects the snapshots it would remove are the last users of.
    objects = _objects.collect(store.paths, dry_run=dry_run)
    result.objects, result.objects_size = objects.objects, objects.reclaimed
    if not dry_run:
        from .imports import clear_pending
        clear_pending(store.paths)
        _snapshots.forget_verified(store.paths)
