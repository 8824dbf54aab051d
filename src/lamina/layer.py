"""apply_layer: stream one layer blob onto a directory, verifying as it goes.

Three threads share the work so that both cores stay busy whichever stage
is the slowest for a given layer:

    reader thread:  read blob -> inflate ---------------> queue -> caller thread:
                       |                        |                 native Extractor.feed (write)
                       v                        v
    hasher thread:  sha256(blob)           sha256(tar)

hashlib, ISA-L, zstandard and the extractor's write loop all release the GIL,
so the threads really run in parallel.  Every queue is bounded, so memory
stays at a few MiB whatever the layer size.
"""
from __future__ import annotations

import hashlib
import os
import queue
import threading
import time

from . import compression, errors
from .digest import validate
from ._extract import Extractor, cancelled
from .limits import DEFAULT_LIMITS
from .stats import ApplyStats

CHUNK = 1 << 20       # bytes per read and per queue item
QUEUE_DEPTH = 8       # chunks in flight between the threads

_DONE = object()

# ``cancelled`` (from the native core) is set by the CLI on Ctrl-C: every
# running extraction stops at its next chunk or few dozen entries (worker
# threads do not see KeyboardInterrupt, and a pool would otherwise wait for
# whole layers to finish).


def _check_cancelled(what):
    if cancelled.is_set():
        raise errors.Interrupted(f"{what}: interrupted")


class _Hasher:
    """sha256 of the blob and of the tar, computed off the critical path."""

    def __init__(self):
        self.blob = hashlib.sha256()
        self.tar = hashlib.sha256()
        self.hash_blob = True
        self.seconds = 0.0
        self._queue = queue.Queue(16)
        self._thread = threading.Thread(target=self._run, name="lamina-hash", daemon=True)
        self._thread.start()

    def _run(self):
        get, clock = self._queue.get, time.perf_counter
        while True:
            item = get()
            if item is None:
                return
            t = clock()
            item[0].update(item[1])
            self.seconds += clock() - t

    def blob_bytes(self, data):
        if self.hash_blob:
            self._queue.put((self.blob, data))

    def tar_bytes(self, data):
        self._queue.put((self.tar, data))

    def close(self):
        """Wait until every queued byte is hashed (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class _HashingReader:
    """A raw file wrapper that hashes every byte the decompressor pulls."""

    def __init__(self, raw, hasher):
        self.raw = raw
        self.hasher = hasher
        self.count = 0
        self.seconds = 0.0

    def readable(self):
        return True

    def read(self, n=-1):
        t = time.perf_counter()
        data = self.raw.read(n if n is not None and n >= 0 else CHUNK)
        self.hasher.blob_bytes(data)
        self.count += len(data)
        self.seconds += time.perf_counter() - t
        return data

    def readinto(self, buf):
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def drain(self):
        """Hash whatever the decompressor left unread, so the digest covers the whole blob."""
        while self.read(CHUNK):
            pass


def _check_digest(what, expected, actual):
    if expected is not None and expected != actual:
        raise errors.DigestMismatchError(what, expected, actual)


def apply_layer(layer, dest, *, format="dir", diff_id=None, digest=None, media_type=None, limits=None,
                name=None, lower_dirs=None, hash_blob=True, hidden=None, defer_lowers=False,
                lowers_provider=None, lower_shared=None, hash_files_into=None) -> ApplyStats:
    """Apply one layer blob (gzip, zstd or plain tar) onto ``dest``.

    ``layer`` is a path or a binary file object.  ``digest`` / ``diff_id``,
    when given, are checked against the blob and the uncompressed tar; a
    mismatch raises DigestMismatchError once the stream is consumed.
    ``name`` labels the layer in error messages.  With ``format="overlay"``,
    ``lower_dirs`` (the overlay-format dirs of the finished layers below,
    bottom first) makes paths resolve as the mount will show them: through
    symlinks, whiteouts and opaque dirs of the layers below, with directories
    the layer does not list copied up with their metadata from below and
    hardlinks to lower files copied up, so that a mount shows what a flat
    unpack shows.  ``defer_lowers=True`` (overlay, layers below not ready)
    calls ``lowers_provider()`` at the first entry that needs them (it waits
    for them and returns their dirs, or None), else raises NeedsLowers.
    ``lower_shared(dir)`` names a lower dir's files whose inode the store's
    file dedup shares (not hardlinks of the image).  ``hash_blob=False``
    skips hashing a compressed blob whose digest the caller has verified
    already (the store's ingest does); the diffID is always computed.
    ``hidden`` (dir format) is what the layers above hide, as returned by
    ``scan_layer``: entries under it are skipped, since nobody will see them.
    ``hash_files_into`` (a directory, created if missing): each regular file
    written gets a second name there carrying its blake3 (see Extractor).
    """
    if not hash_blob and digest is not None:
        raise ValueError("apply_layer: digest given but hash_blob=False")
    os.makedirs(dest, exist_ok=True)
    if hash_files_into is not None:
        os.makedirs(hash_files_into, exist_ok=True)
    limits = limits or DEFAULT_LIMITS
    extractor = Extractor(dest, format=format, limits=limits, hidden=hidden,
                          lowers=[os.fspath(d) for d in lower_dirs or ()], defer_lowers=defer_lowers,
                          lowers_provider=lowers_provider, lower_shared=lower_shared,
                          hash_files_into=hash_files_into)
    return _run(layer, extractor, diff_id, digest, media_type, name, hash_blob)


def scan_layer(layer, *, diff_id=None, digest=None, media_type=None, limits=None, name=None):
    """Read a layer through the same parser and checks without writing anything.

    Returns ``(stats, hides)``, where ``hides`` is ``(at, below)``: the paths
    this layer hides in the layers under it, for ``apply_layer(hidden=...)``.
    """
    extractor = Extractor(None, limits=limits or DEFAULT_LIMITS)
    stats = _run(layer, extractor, diff_id, digest, media_type, name, True)
    return stats, (extractor.scan_at, extractor.scan_below)


def _run(layer, extractor, diff_id, digest, media_type, name, hash_blob):
    for d, label in ((digest, "digest"), (diff_id, "diff_id")):
        if d is not None:
            validate(d, label)
    owned = isinstance(layer, (str, bytes, os.PathLike))
    what = name or (f"layer {digest}" if digest else f"layer {os.fsdecode(layer)}" if owned else "layer")
    t0 = time.perf_counter()
    raw = open(layer, "rb", buffering=0) if owned else layer
    hasher = _Hasher()
    try:
        return _pipeline(raw, hasher, extractor, diff_id, digest, media_type, what, t0, hash_blob)
    finally:
        hasher.close()
        extractor.close()
        if owned:
            raw.close()


def _pipeline(raw, hasher, extractor, diff_id, digest, media_type, what, t0, hash_blob):
    reader = _HashingReader(raw, hasher)
    head = reader.read(CHUNK)
    kind = compression.detect(head)
    hasher.hash_blob = hash_blob or kind == "none"  # a plain tar's blob hash is its diffID
    compression.check_media_type(kind, media_type, what)
    stats = ApplyStats(compression=kind)
    chunks = queue.Queue(QUEUE_DEPTH)
    stop = threading.Event()
    produced = {}

    def produce():
        try:
            src = compression.Prefixed(head, reader)
            stream = compression.open_decompressed(src, kind, what)
            inflate = 0.0
            while not stop.is_set() and not cancelled.is_set():
                t = time.perf_counter()
                try:
                    data = stream.read(CHUNK)
                except compression.decompress_errors() as e:
                    raise errors.CompressionError(f"{what}: corrupt {kind} stream: {e}") from e
                inflate += time.perf_counter() - t
                if not data:
                    break
                _put(data)
            reader.drain()
            produced["inflate"] = inflate  # includes the reads it triggered
            _put(_DONE)
        except BaseException as e:  # handed to the caller's thread
            _put(e)

    def _put(item):
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    thread = threading.Thread(target=produce, name="lamina-inflate", daemon=True)
    thread.start()
    t_write = t_wait = 0.0
    try:
        while True:
            t = time.perf_counter()
            item = chunks.get()
            t1 = time.perf_counter()
            t_wait += t1 - t
            _check_cancelled(what)
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            if kind != "none":  # a plain tar's diffID is its blob digest: hash it once
                hasher.tar_bytes(item)
            t2 = time.perf_counter()
            extractor.feed(item)
            t_write += time.perf_counter() - t2
        t = time.perf_counter()
        counts = extractor.finish()
        t_write += time.perf_counter() - t
    except (errors.InvalidArchiveError, errors.ExtractError) as e:
        if str(e).startswith(what):
            raise
        raise type(e)(f"{what}: {e}") from e  # say which layer, not only which entry
    except OSError as e:
        raise errors.ExtractError(f"{what}: {e}") from e
    finally:
        stop.set()
        thread.join()
        extractor.close()

    t = time.perf_counter()
    hasher.close()
    t_wait += time.perf_counter() - t
    stats.digest = "sha256:" + hasher.blob.hexdigest() if hasher.hash_blob else ""
    stats.diff_id = stats.digest if kind == "none" else "sha256:" + hasher.tar.hexdigest()
    stats.compressed_bytes = reader.count
    stats.bytes = counts["bytes"]
    stats.entries = counts["entries"]
    stats.whiteouts = counts["whiteouts"]
    stats.hidden = counts["hidden"]
    stats.skipped = counts["skipped"]
    stats.seconds = {
        "read": round(reader.seconds, 6),
        "inflate": round(max(produced.get("inflate", 0.0) - reader.seconds, 0.0), 6),
        "hash": round(hasher.seconds, 6),
        "extract": round(t_write, 6),
        "wait": round(t_wait, 6),
        "total": round(time.perf_counter() - t0, 6),
    }
    _check_digest(f"{what}: blob", digest, stats.digest)
    _check_digest(f"{what}: diffID (uncompressed tar)", diff_id, stats.diff_id)
    return stats
