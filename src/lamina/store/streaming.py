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

A layer that needs the snapshots below it waits for them at the first entry
that does (see snapshots.ensure).
"""
from __future__ import annotations

import io

from . import snapshots as _snap

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
                     before_commit, wait_lowers=None):
    """Extract the blob read from ``source`` into ``snapshots/<chainID>``; return its ``fs`` dir.

    ``before_commit()`` runs once the diffID verified, before the snapshot is
    published (it commits the blob, which verifies its digest; raising aborts).
    Returns None, without reading ``source``, if the snapshot already exists.
    When the layer needs snapshots below it that are not there yet, waits for
    them with ``wait_lowers()`` (the download of this layer pauses meanwhile),
    or raises NeedsLowers (having read part of ``source``) without it.
    """
    return _snap.ensure(paths, layer_digest, diff_id, parent_chain_id, media_type, defer=True,
                        source=source, before_commit=before_commit, wait_lowers=wait_lowers)
