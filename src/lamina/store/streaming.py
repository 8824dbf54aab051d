"""Extracting a layer's snapshot while its blob is still arriving (``pull`` over a real link).

    network -> BlobStream -> IngestTee --(every byte)--> ingest partial (hashed)
                                 |
                                 v
                 apply_layer(overlay) into snapshots/.tmp-<chain>-...  (diffID hashed)

The snapshot is renamed into place only after the diffID verified *and* the
blob was committed (size and digest verified by the ingest), so a failure at
any point leaves nothing that looks complete.  A resumed download (the ingest
holds a partial) restarts the extraction cleanly: the tee replays the partial
from disk, then continues with the network bytes.  The download runs ahead
of the extraction on a thread of its own (download_ahead), into the partial,
and the extraction reads those bytes back from it: a pull that waits for the
layers below, the disk or a core does not stall its connection meanwhile.

A layer that needs the snapshots below it waits for them at the first entry
that does (see snapshots.ensure).
"""
from __future__ import annotations

import io
import threading

from . import snapshots as _snap

_SPOOL_CHUNK = 128 << 10


class IngestTee(io.RawIOBase):
    """The blob for the extractor: ``stream``'s bytes, written into the ingest as they pass.

    Bytes the ingest holds that the extractor has not read yet come from the ingest's partial:
    a resumed download's head, and what the spooler thread (``download_ahead``) wrote.  While
    the spooler runs it alone reads the stream; the extractor (one thread: the inflate stage)
    waits for its bytes, and reads the stream itself only once the spooler has stopped."""

    def __init__(self, writer, partial_path, stream):
        super().__init__()
        self._writer, self._stream = writer, stream
        self._partial_path = partial_path
        self._partial = None
        self._pos = 0          # bytes the extractor has read
        self._arrived = threading.Condition()
        self._spooler = None
        self._spooling = False
        self._spool_stop = threading.Event()
        self._spool_error = None

    def readable(self):
        return True

    def readinto(self, buf):
        view = memoryview(buf).cast("B")
        while True:
            behind = self._writer.offset - self._pos
            if behind:
                if self._partial is None:
                    self._partial = open(self._partial_path, "rb", buffering=0)
                self._partial.seek(self._pos)
                n = self._partial.readinto(view[:min(len(view), behind)])
                if not n:   # the partial shrank under us: cannot happen while we hold the ingest lock
                    raise OSError(f"ingest partial {self._partial_path} ended early")
                break
            with self._arrived:
                while self._spooling and self._writer.offset == self._pos:
                    self._arrived.wait()
                if self._writer.offset != self._pos:
                    continue
            if self._spool_error is not None:
                raise self._spool_error
            n = self._stream.readinto(view)   # the spooler has stopped: the stream is ours
            if n:
                self._writer.write(view[:n])
            break
        self._pos += n
        return n

    def download_ahead(self):
        """Download the blob into the ingest on a thread of its own, at the link's pace: the
        extractor reads the bytes back from the partial at its pace, and waits (for the layers
        below, for the disk, for a core) without stalling the connection."""
        if self._spooler is None:
            self._spooling = True
            self._spooler = threading.Thread(target=self._spool, name="lamina-spool", daemon=True)
            self._spooler.start()

    def _spool(self):
        buf = bytearray(_SPOOL_CHUNK)
        try:
            while not self._spool_stop.is_set():
                n = self._stream.readinto(buf)
                if not n:
                    return
                with self._arrived:
                    self._writer.write(memoryview(buf)[:n])
                    self._arrived.notify_all()
        except BaseException as e:   # raised to the extractor once it has read what came
            self._spool_error = e
        finally:
            with self._arrived:
                self._spooling = False
                self._arrived.notify_all()

    def drain(self):
        """Download what is left into the ingest (the extractor stopped early): it must see every byte."""
        self._stop_spooler()
        if self._spool_error is not None:
            raise self._spool_error
        buf = bytearray(_SPOOL_CHUNK)
        while True:
            n = self._stream.readinto(buf)
            if not n:
                return
            self._writer.write(memoryview(buf)[:n])

    def _stop_spooler(self):
        # The spooler writes into the ingest: it must be done before the ingest closes.
        self._spool_stop.set()
        if self._spooler is not None:
            self._spooler.join()
            self._spooler = None

    def close(self):
        self._stop_spooler()
        if self._partial is not None:
            self._partial.close()
        super().close()


def ensure_streaming(paths, source, layer_digest, diff_id, parent_chain_id=None, media_type=None, *,
                     before_commit, wait_lowers=None, tree_ready=None, before_publish=None, progress=None):
    """Extract the blob read from ``source`` into ``snapshots/<chainID>``; return its ``fs`` dir.

    ``before_commit()`` runs once the diffID verified, before the snapshot is
    published (it commits the blob, which verifies its digest; raising aborts).
    Returns None, without reading ``source``, if the snapshot already exists.
    When the layer needs snapshots below it that are not there yet, waits for
    them with ``wait_lowers()`` (the download of this layer pauses meanwhile),
    or raises NeedsLowers (having read part of ``source``) without it.
    ``tree_ready``, ``before_publish`` and ``progress``: see snapshots.ensure (a pull hands a
    layer's final tree to the layers above before its commit).
    """
    return _snap.ensure(paths, layer_digest, diff_id, parent_chain_id, media_type, defer=True,
                        source=source, before_commit=before_commit, wait_lowers=wait_lowers,
                        tree_ready=tree_ready, before_publish=before_publish, progress=progress)
