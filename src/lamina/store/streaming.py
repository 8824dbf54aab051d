"""Extracting a layer's snapshot while its blob is still arriving (``pull`` over a real link).

    network -> BlobStream -> IngestTee --(every byte)--> ingest partial (hashed)
                                 |
                                 v
                 apply_layer(overlay) into snapshots/.tmp-<chain>-...  (diffID hashed)

The snapshot is renamed into place only after the diffID verified *and* the
blob was committed (size and digest verified by the ingest), so a failure at
any point leaves nothing that looks complete.  A resumed download (the ingest
holds a partial) restarts the extraction cleanly: the tee replays the partial
from disk, then continues with the network bytes.

``ensure_streaming`` is a stand-in for a hook in store/snapshots.py (owned
elsewhere): ``snapshots.ensure(..., source=stream, before_commit=callback)``.
It reuses that module's helpers and follows ensure() step by step; once
ensure() grows the two parameters this function reduces to a call of it.
"""
from __future__ import annotations

import io
import json
import os
import secrets
import time

from ..overlay import inherit_implicit_dirs
from ..tree import remove_tree
from . import snapshots as _snap
from .fsutil import disk_usage, fsync_dir, syncfs
from .locks import FileLock

_CHUNK = 1 << 20


class IngestTee(io.RawIOBase):
    """The blob for the extractor: the ingest's partial first (a resumed download), then ``stream``,
    whose bytes are written into the ingest as they pass."""

    def __init__(self, writer, partial_path, stream):
        super().__init__()
        self._writer, self._stream = writer, stream
        self._replay = writer.offset
        self._partial = open(partial_path, "rb") if self._replay else None

    def readable(self):
        return True

    def readinto(self, buf):
        view = memoryview(buf).cast("B")
        if self._replay:
            n = self._partial.readinto(view[:min(len(view), self._replay)])
            if not n:   # the partial shrank under us: cannot happen while we hold the ingest lock
                raise OSError(f"ingest partial {self._partial.name} ended early")
            self._replay -= n
            if not self._replay:
                self._partial.close()
            return n
        n = self._stream.readinto(view)
        if n:
            self._writer.write(view[:n])
        return n

    def drain(self):
        """Read what is left (the extractor stopped early): the ingest must see every byte."""
        buf = bytearray(_CHUNK)
        while self.readinto(buf):
            pass

    def close(self):
        if self._partial is not None:
            self._partial.close()
        super().close()


def ensure_streaming(paths, source, layer_digest, diff_id, parent_chain_id=None, media_type=None, *,
                     before_commit):
    """Extract the blob read from ``source`` into ``snapshots/<chainID>``; return its ``fs`` dir.

    ``before_commit()`` runs once the diffID verified, before the snapshot is
    published (it commits the blob, which verifies its digest; raising aborts).
    Returns None, without reading ``source``, if the snapshot already exists.
    """
    chain = _snap.chain_id_of(diff_id, parent_chain_id)
    final = paths.snapshot(chain)
    if (final / "fs").is_dir():
        return None
    lock = FileLock(paths.snapshot_lock(chain))
    lock.acquire()
    try:
        if (final / "fs").is_dir():
            return None
        hexid = chain.split(":", 1)[1]
        for stale in _snap._stale_dirs(paths, hexid, _snap.TMP_PREFIX):
            remove_tree(stale)
        if final.exists():
            _snap._discard(paths, final, hexid)
        tmp = paths.snapshots / f"{_snap.TMP_PREFIX}{hexid}-{os.getpid()}-{secrets.token_hex(4)}"
        os.makedirs(paths.snapshots, exist_ok=True)
        os.mkdir(tmp, 0o755)
        try:
            from ..layer import apply_layer
            # hash_blob=False: the ingest hashes the blob as it is written, and before_commit checks it.
            stats = apply_layer(source, os.fspath(tmp / "fs"), format="overlay", diff_id=diff_id, hash_blob=False,
                                media_type=media_type, name=f"layer {layer_digest}")
            before_commit()
            implicit = list(stats.implicit_dirs) if parent_chain_id else []
            inherited = not implicit
            if implicit:
                lower = _snap.lower_chain(paths, parent_chain_id)
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
