"""Snapshots: each layer extracted once, in overlay format, keyed by its chainID.

    snapshots/<chainID hex>/fs         the layer dir (overlayfs lowerdir)
    snapshots/<chainID hex>/meta.json  chainID, diffID, parent, blob digest, sizes

A snapshot is built in ``snapshots/.tmp-<hex>-…`` under the per-snapshot lock and
renamed into place only after the blob digest and the diffID verified and the
filesystem was synced: if ``snapshots/<hex>`` exists, it is complete.  Overlay
layers do not depend on the content below them, so any number of layers of
one image can be extracted at once.

One thing does depend on the layers below: directories a layer needs but does
not list (``etc`` for ``etc/new``) are invented by the extractor, and in an
overlay mount the topmost copy of a directory decides its mode, owner and
xattrs.  They must inherit those from below (lamina.overlay).  A chainID fixes
the layers below, so this is done once per snapshot: before the rename when the
lower snapshots are already there, else later, bottom-up, by ensure_all()
(``meta.json`` says ``"inherited": false`` until then).
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from .. import digest as _digest
from ..errors import BlobNotFoundError, StoreError
from ..tree import remove_tree
from ..overlay import inherit_implicit_dirs
from .fsutil import atomic_write, disk_usage, fsync_dir, syncfs
from .image import chain_ids
from .locks import FileLock

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
# apply_layer already keeps about two cores busy per layer (inflate, hash, write overlap).
MAX_PARALLEL = 4


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
    implicit_dirs: list = None  # dirs the layer implies but does not list
    inherited: bool = True      # their metadata was taken from the layers below

    @property
    def fs(self):
        return self.path / "fs"

    def to_dict(self):
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def chain_id_of(diff_id, parent_chain_id=None):
    _digest.validate(diff_id, "diffID")
    if parent_chain_id is None:
        return diff_id
    _digest.validate(parent_chain_id, "parent chainID")
    return chain_ids([parent_chain_id, diff_id])[1]


def read_info(paths, chain_id):
    """The snapshot's metadata, or None if it does not exist (or is not a complete snapshot)."""
    path = paths.snapshot(chain_id)
    try:
        with open(path / "meta.json", "rb") as f:
            meta = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise StoreError(f"snapshot {chain_id}: unreadable meta.json ({e}); run lamina fsck --repair") from None
    try:
        return SnapshotInfo(
            chain_id=meta["chain_id"], diff_id=meta["diff_id"], parent=meta.get("parent"), digest=meta["digest"],
            media_type=meta.get("media_type"), path=path, size=meta.get("size", 0), inodes=meta.get("inodes", 0),
            tar_bytes=meta.get("tar_bytes", 0), entries=meta.get("entries", 0), created=meta.get("created", 0.0),
            implicit_dirs=list(meta.get("implicit_dirs") or []), inherited=bool(meta.get("inherited", True)))
    except (KeyError, TypeError):
        raise StoreError(f"snapshot {chain_id}: incomplete meta.json; run lamina fsck --repair") from None


def list_chain_ids(paths):
    """ChainIDs of the snapshots present (temp and trash dirs excluded)."""
    try:
        names = os.listdir(paths.snapshots)
    except FileNotFoundError:
        return []
    return [f"sha256:{n}" for n in names if _digest.is_valid(f"sha256:{n}")]


def _extract(blob, fs, digest, diff_id, media_type):
    """Apply one layer blob into ``fs`` (overlay format), verifying digest and diffID.

    A separate function so that tests can count how often extraction really happens.
    """
    from ..layer import apply_layer  # the native core, imported only when extracting
    # The blob was verified when it was ingested; the diffID check below still
    # catches any change to it since, so hashing it again would only cost CPU.
    return apply_layer(os.fspath(blob), os.fspath(fs), format="overlay", diff_id=diff_id, hash_blob=False,
                       media_type=media_type, name=f"layer {digest}")


def _stale_dirs(paths, hexid, prefix):
    start = f"{prefix}{hexid}-"
    try:
        return [paths.snapshots / n for n in os.listdir(paths.snapshots) if n.startswith(start)]
    except FileNotFoundError:
        return []


def ensure(paths, layer_digest, diff_id, parent_chain_id=None, media_type=None):
    """Extract the layer into ``snapshots/<chainID>`` unless it is there; return its ``fs`` dir.

    Safe to call from many threads and processes at once: one extracts, the
    others wait on the snapshot's lock and then find it done.
    """
    _digest.validate(layer_digest, "layer digest")
    chain = chain_id_of(diff_id, parent_chain_id)
    final = paths.snapshot(chain)
    if (final / "fs").is_dir():
        return final / "fs"
    blob = paths.blob(layer_digest)
    lock = FileLock(paths.snapshot_lock(chain))
    lock.acquire()
    try:
        if (final / "fs").is_dir():
            return final / "fs"
        if not blob.exists():
            raise BlobNotFoundError(f"layer {layer_digest} (diffID {diff_id}): blob is not in the store")
        hexid = _digest.hex_of(chain)
        for stale in _stale_dirs(paths, hexid, TMP_PREFIX):  # left by a killed extractor; we hold the lock
            remove_tree(stale)
        if final.exists():  # a snapshot dir without fs/: debris, never a usable snapshot
            _discard(paths, final, hexid)
        tmp = paths.snapshots / f"{TMP_PREFIX}{hexid}-{os.getpid()}-{secrets.token_hex(4)}"
        os.mkdir(tmp, 0o755)
        try:
            stats = _extract(blob, tmp / "fs", layer_digest, diff_id, media_type)
            implicit = list(stats.implicit_dirs) if parent_chain_id else []
            inherited = not implicit
            if implicit:
                lower = lower_chain(paths, parent_chain_id)
                if lower is not None:
                    inherit_implicit_dirs(lower + [os.fspath(tmp / "fs")], [[]] * len(lower) + [implicit])
                    inherited = True
            size, inodes = disk_usage(tmp / "fs")
            meta = {"chain_id": chain, "diff_id": diff_id, "parent": parent_chain_id, "digest": layer_digest,
                    "media_type": media_type, "size": size, "inodes": inodes, "tar_bytes": stats.bytes,
                    "entries": stats.entries, "created": time.time(), "implicit_dirs": implicit,
                    "inherited": inherited}
            with open(tmp / "meta.json", "w") as f:
                json.dump(meta, f, indent=2)
            syncfs(tmp)
            os.rename(tmp, final)
            fsync_dir(paths.snapshots)
        except BaseException:
            remove_tree(tmp)
            raise
        return final / "fs"
    finally:
        lock.release(unlink=True)


def lower_chain(paths, parent_chain_id):
    """``fs`` dirs of the snapshots below (bottom first), or None unless all exist and are final."""
    dirs, chain = [], parent_chain_id
    while chain is not None:
        info = read_info(paths, chain)
        if info is None or not info.inherited:
            return None
        dirs.append(os.fspath(info.fs))
        chain = info.parent
    return dirs[::-1]


def finish(paths, chain_id):
    """Give a committed snapshot's implicit dirs their metadata from below (see the module doc)."""
    info = read_info(paths, chain_id)
    if info is None or info.inherited:
        return
    lock = FileLock(paths.snapshot_lock(chain_id))
    lock.acquire()
    try:
        info = read_info(paths, chain_id)
        if info is None or info.inherited:
            return
        lower = lower_chain(paths, info.parent)
        if lower is None:
            raise StoreError(f"snapshot {chain_id}: the snapshots below it are missing")
        inherit_implicit_dirs(lower + [os.fspath(info.fs)], [[]] * len(lower) + [info.implicit_dirs])
        syncfs(info.fs)
        meta = {k: v for k, v in info.to_dict().items() if k != "path"}
        meta["inherited"] = True
        atomic_write(info.path / "meta.json", json.dumps(meta, indent=2).encode())
    finally:
        lock.release(unlink=True)


def ensure_all(paths, layers, diff_ids, media_types=None):
    """Snapshots for a whole image (bottom first), independent layers extracted in parallel."""
    ids = chain_ids(diff_ids)
    parents = [None] + ids[:-1]
    media_types = media_types or [None] * len(layers)
    jobs = list(zip(layers, diff_ids, parents, media_types))
    if not jobs:
        return []
    missing = [j for j, c in zip(jobs, ids) if not (paths.snapshot(c) / "fs").is_dir()]
    if len(missing) <= 1:
        dirs = [ensure(paths, *j) for j in jobs]
    else:
        workers = min(MAX_PARALLEL, len(missing), max(os.cpu_count() or 1, 2))
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="lamina-snapshot") as pool:
            futures = [pool.submit(ensure, paths, *j) for j in jobs]
            concurrent.futures.wait(futures)
        for f in futures:  # report the lowest failing layer, so errors are stable
            if f.exception() is not None:
                raise f.exception()
        dirs = [f.result() for f in futures]
    for chain in ids:  # bottom-up: each one inherits from finished snapshots only
        finish(paths, chain)
    return dirs


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
