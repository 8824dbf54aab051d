"""apply_layer: stream one layer blob onto a directory, verifying as it goes.

Two stages on two cores (the native pipeline, lamina._pipeline):

    stage-1 thread (no GIL):  pread/readinto blob -> sha256(blob) -> inflate [-> sha256(tar)]
                                  -> ring of reusable 1 MiB buffers ->
    caller thread:            [sha256(tar) ->] native Extractor.feed (parse + write)

Both report the seconds and thread CPU seconds of each stage (ApplyStats.seconds /
.cpu, STAGES): read, inflate, hash_blob (the digest), hash_tar (the diffID; a plain
tar is hashed once, as hash_tar: its digest is its diffID), parse, write, wait.
parse and write alternate entry by entry inside Extractor.feed, which times its
writes (``write_ns``): write is that, parse the rest of feed()/finish(), and the
caller thread's CPU over each feed() is shared between them in the same proportion.

sha256(tar) runs in whichever stage has time for it, chunk by chunk, so that
the two stages take about the same time (TAR_HASH); so does sha256(blob), read by
read, in the native pipeline.  When the native stage 1 cannot
handle a layer (a codec not built in, no OpenSSL), or LAMINA_PIPELINE=python,
the Python pipeline runs instead: three threads, a reader+inflate thread
(isal / zstandard), a hasher thread (hashlib) and the caller's feeding
queued ``bytes`` chunks to the extractor.  Memory stays at a few MiB whatever
the layer size in both.
"""
from __future__ import annotations

import hashlib
import io
import os
import queue
import stat
import threading
import time

from . import _pipeline, compression, errors
from .digest import validate
from .tree import is_pinned, make_dirs
from ._extract import Extractor, cancelled
from .limits import DEFAULT_LIMITS
from .stats import ApplyStats

CHUNK = 1 << 20       # bytes per read and per queue item (Python pipeline)
QUEUE_DEPTH = 8       # chunks in flight between the threads (Python pipeline)
RING_SLOTS = 4        # 1 MiB buffers between the native stage 1 and the extractor
# ... when the blob is a stream (a pull): the network, not inflate, sets the pace, and the
# 2 MiB saved per layer is a third of a 3-layer pull's buffers (peak RSS, issue 13)
STREAM_RING_SLOTS = 2
HEAD = 8              # bytes enough to recognise the compression

# Which stage hashes the tar: "auto" moves it chunk by chunk to the stage that
# waits ("stage1" / "stage2" pin it; measured on the bench image, auto was the
# fastest for gzip, where inflate alone is about the extractor's whole work).
TAR_HASH = "auto"

# The stages of ApplyStats.seconds and .cpu: disjoint, they add up to what the threads did.
STAGES = _pipeline.STAGES
# The coarser stages reported before hashing and extracting were split, kept (as sums of
# their parts) so that readers of ApplyStats and of `apply --format json` still find them.
COARSE_STAGES = {"hash": ("hash_blob", "hash_tar"), "extract": ("parse", "write")}

_DONE = object()

# ``cancelled`` (from the native core) is set by the CLI on Ctrl-C: every
# running extraction stops at its next chunk or few dozen entries (worker
# threads do not see KeyboardInterrupt, and a pool would otherwise wait for
# whole layers to finish).


# Seconds a failing _native waits for its stage-1 thread before it leaves it behind.
ABANDON_READER_AFTER = 0.5


def _check_cancelled(what):
    if cancelled.is_set():
        raise errors.Interrupted(f"{what}: interrupted")


def apply_layer(layer, dest, *, format="dir", diff_id=None, digest=None, media_type=None, limits=None,
                name=None, lower_dirs=None, hash_blob=True, hidden=None, defer_lowers=False,
                lowers_provider=None, lower_shared=None, hash_files_into=None, link_objects=None,
                early_dirs=False, progress=None) -> ApplyStats:
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
    for them and returns their dirs, or None), else raises NeedsLowers;
    ``early_dirs=True`` with it: directories the layer implies do not wait (see
    Extractor), ImpliedDirMoved when one turns out not to be a directory below.
    ``lower_shared(dir)`` names a lower dir's files whose inode the store's
    file dedup shares (not hardlinks of the image).  ``hash_blob=False``
    skips hashing a compressed blob whose digest the caller has verified
    already (the store's ingest does); the diffID is always computed.
    ``hidden`` (dir format) is what the layers above hide, as returned by
    ``scan_layer``: entries under it are skipped, since nobody will see them.
    ``hash_files_into`` (a directory, created if missing): each regular file
    written gets a second name there carrying its blake3 (see Extractor).
    ``link_objects`` (with it: the store's ``objects/blake3``): a file the store
    has an object for is named by a link to that object, not written (see Extractor).
    ``progress(n)`` is called as the extraction goes, on its thread, with the bytes of the
    blob (compressed, as a download counts them) read so far, and once more at the end.
    """
    if not hash_blob and digest is not None:
        raise ValueError("apply_layer: digest given but hash_blob=False")
    _check_layer(layer)
    check_not_symlink(dest)
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise errors.ExtractError(f"destination {os.fsdecode(dest)} exists and is not a directory")
    make_dirs(dest, f"destination {os.fsdecode(dest)}")
    if hash_files_into is not None:
        os.makedirs(hash_files_into, exist_ok=True)
    limits = limits or DEFAULT_LIMITS
    extractor = Extractor(dest, format=format, limits=limits, hidden=hidden,
                          lowers=[os.fspath(d) for d in lower_dirs or ()], defer_lowers=defer_lowers,
                          lowers_provider=lowers_provider, lower_shared=lower_shared,
                          hash_files_into=hash_files_into, link_objects=link_objects, early_dirs=early_dirs)
    return _run(layer, extractor, diff_id, digest, media_type, name, hash_blob, progress=progress)


def check_not_symlink(dest):
    """Refuse a DEST that is a symlink (``link`` or ``link/``), as apply --atomic and unpack do:
    they make DEST by a rename onto its name, which cannot go through a link, so an in-place
    apply that followed it wrote where the others would not (CONFORMANCE.md).  unpack's own
    pinned staging dir (tree.pin) is no such link."""
    if is_pinned(dest):
        return
    if os.path.islink(os.path.abspath(os.fspath(dest))):
        raise errors.ExtractError(f"destination {os.fsdecode(dest)} exists and is not a directory (a symlink: "
                                  f"lamina does not apply through one; give the directory it points to)")


def scan_layer(layer, *, diff_id=None, digest=None, media_type=None, limits=None, name=None, max_paths=-1):
    """Read a layer through the same parser and checks without writing anything.

    Returns ``(stats, hides)``, where ``hides`` is ``(at, below)``: the paths
    this layer hides in the layers under it, for ``apply_layer(hidden=...)``;
    None if they are more than ``max_paths`` (see Extractor's ``scan_max``).
    """
    _check_layer(layer)
    extractor = Extractor(None, limits=limits or DEFAULT_LIMITS, scan_max=max_paths)
    stats = _run(layer, extractor, diff_id, digest, media_type, name, True, writes=False)
    if extractor.scan_overflow:
        return stats, None
    return stats, (extractor.scan_at, extractor.scan_below)


def _check_layer(layer):
    # by apply_layer and scan_layer themselves, before they make DEST or an Extractor
    if not isinstance(layer, (str, bytes, os.PathLike)) and not callable(getattr(layer, "read", None)):
        # an int failed deep in the pipeline, DEST made: "'int' object has no attribute 'read'"
        raise TypeError(f"layer: a blob's path or a binary file open for reading, not {layer!r}")


def _run(layer, extractor, diff_id, digest, media_type, name, hash_blob, writes=True, progress=None):
    """``writes=False``: the extractor only scans (its bookkeeping is parse, not write)."""
    for d, label in ((digest, "digest"), (diff_id, "diff_id")):
        if d is not None:
            validate(d, label)
    owned = isinstance(layer, (str, bytes, os.PathLike))
    what = name or (f"layer {digest}" if digest else f"layer {os.fsdecode(layer)}" if owned else "layer")
    t0 = time.perf_counter()
    raw = open(layer, "rb", buffering=0) if owned else layer
    try:
        head, kind = compression.sniff(raw, media_type, HEAD)
        if head:  # 0 bytes are the empty layer whatever the media type (docker and containerd)
            compression.check_media_type(kind, media_type, what, head)
        run = _native if _use_native(kind) else _python
        try:
            feed = _TimedFeed(extractor, writes)
            stats, counts = run(raw, head, kind, feed, what, t0, hash_blob, progress)
        except (errors.InvalidArchiveError, errors.ExtractError) as e:
            if extractor.entries == 0 and isinstance(e, errors.InvalidArchiveError):
                # a gzip or zstd layer's own first bytes (a cpio in gzip, as `bsdtar --format newc
                # -z` writes it) say what it is as well as a plain layer's do
                _refuse_foreign(head if kind == "none" else feed.first, what, e)
            if str(e).startswith(what):
                raise
            named = type(e)(f"{what}: {e}")  # say which layer, not only which entry
            if isinstance(e, errors.ExtractError):
                named.errno = e.errno
            raise named from e
        except OSError as e:
            raise errors.ExtractError(f"{what}: {e}", errno=e.errno) from e
    finally:
        extractor.close()
        if owned:
            raw.close()
    stats.bytes = counts["bytes"]
    stats.entries = counts["entries"]
    stats.whiteouts = counts["whiteouts"]
    stats.nogil_entries = counts.get("nogil_entries", 0)
    stats.hidden_examined = counts.get("hidden_examined", 0)
    stats.hidden = counts["hidden"]
    stats.skipped = counts["skipped"]
    stats.seconds["total"] = round(time.perf_counter() - t0, 6)
    _check_digest(f"{what}: blob", digest, stats.digest)
    _check_digest(f"{what}: diffID (uncompressed tar)", diff_id, stats.diff_id)
    return stats


def _refuse_foreign(head, what, error):
    """The first tar header did not parse: if the layer's magic says what it is instead (xz,
    bzip2, zip...), say that rather than what the tar parser made of those bytes."""
    refuse_foreign(head, what, f"read as a tar: {error}", error)


def refuse_foreign(head, what, said, error=None):
    """Raise the error saying ``head`` is a compression or archive format no layer is in (``said``:
    what the layer failed otherwise), if its magic says so."""
    found = compression.foreign(head)
    if found is None:
        return
    name, kind = found
    if kind == "compression":
        raise errors.CompressionError(f"{what}: {name}-compressed, which a layer never is (a layer is a tar, "
                                      f"plain or compressed with gzip or zstd) ({said})") from error
    raise errors.InvalidArchiveError(f"{what}: in the {name} archive format, not a tar ({said})") from error


def _use_native(kind):
    choice = os.environ.get("LAMINA_PIPELINE", "native")
    if choice not in ("native", "python"):
        raise ValueError(f"LAMINA_PIPELINE={choice!r}: expected 'native' or 'python'")
    return choice == "native" and _pipeline.available(kind)


def _blob_fd(raw):
    """Stage1's source for ``raw`` when it is read through its fd: ``{"fd", "offset"}`` to
    pread the rest of a regular file (the common case: a blob of an image directory), or
    ``{"fd", "stream"}`` for an unbuffered pipe or FIFO: a dup of its fd, which the stage
    polls so that Ctrl-C stops it while the writer stalls, and which the caller closing
    its own fd cannot turn into someone else's.  None: Stage1 reads ``raw`` with ``readinto``."""
    base = raw.raw if isinstance(raw, io.BufferedReader) else raw
    if not isinstance(base, io.FileIO):
        return None
    try:
        if stat.S_ISREG(os.fstat(base.fileno()).st_mode):
            return {"fd": base.fileno(), "offset": raw.tell()}  # the buffered reader's position, not its raw file's
        if raw is base:  # a buffered reader may hold bytes its fd no longer has
            return {"fd": os.dup(base.fileno()), "stream": True}
    except (OSError, ValueError):
        pass
    return None


def _native(raw, head, kind, feed, what, t0, hash_blob, progress=None):
    """Stage 1 in lamina._pipeline's thread, the extractor (``feed``) on the caller's thread."""
    stage1 = _pipeline.Timeline("lamina-inflate", "inflate", t0)
    stage2 = feed.timeline = _pipeline.Timeline(threading.current_thread().name, "parse", t0)
    stage2.begin()
    source = _blob_fd(raw) or {"fileobj": raw}
    stage = _pipeline.Stage1(kind, head=bytes(head), hash_blob=hash_blob, tar_hash=TAR_HASH,
                             slots=RING_SLOTS if "offset" in source else STREAM_RING_SLOTS, timeline=stage1,
                             consumer=stage2, **source)
    # the thread's bound method keeps the stage (its ring, its fd) alive as long as it runs
    thread = threading.Thread(target=stage.run, name="lamina-inflate", daemon=True)
    thread.start()
    try:
        while True:
            try:
                chunk = stage.next()
            except _pipeline.CorruptStream as e:
                raise errors.CompressionError(f"{what}: {compression.corrupt(kind, e)}") from None
            _check_cancelled(what)
            if chunk is None:
                break
            if chunk is False:  # a slow stream: nothing for 0.1 s
                continue
            feed(chunk)
            if progress is not None:
                progress(stage.compressed_bytes)
        counts = feed.finish()
        if progress is not None:
            progress(stage.compressed_bytes)
    except BaseException:
        # a reader stuck in a Python stream's read (its writer stalled) must not keep an
        # interrupted or failed caller waiting: leave the daemon thread to end on its own
        stage.close()
        thread.join(ABANDON_READER_AFTER)
        raise
    stage.close()
    thread.join()
    blob, tar = stage.digests()
    stats = ApplyStats(compression=kind, pipeline="native", compressed_bytes=stage.compressed_bytes,
                       digest="sha256:" + blob if blob else "", diff_id="sha256:" + tar)
    _timings(stats, [stage1, stage2])
    return stats, counts


class _TimedFeed:
    """The extractor on the caller's thread (whose ``timeline`` the pipeline sets), its
    time split into parse and write.

    The extractor times its own writes (``write_ns``: creating entries, writing their
    data and metadata, the final directory fixups); the rest of feed() / finish() is
    parsing.  Each call's thread CPU is shared between the two in the proportion of
    their wall times in that call (they alternate entry by entry, too finely for a
    CPU clock reading at each switch).  A scan (``writes=False``) writes nothing: what
    its extractor times is bookkeeping, all parse."""

    def __init__(self, extractor, writes=True):
        self.extractor, self.writes, self.timeline = extractor, writes, None
        self.write_ns = extractor.write_ns
        self.first = b""  # the tar stream's first bytes, to name a foreign format the tar parser refuses

    def _step(self, t):
        now = self.extractor.write_ns
        written = (now - self.write_ns) * 1e-9 if self.writes else 0.0
        self.timeline.step("parse", t, "write", written)
        self.write_ns = now

    def __call__(self, chunk):
        if len(self.first) < HEAD:
            self.first += bytes(chunk[:HEAD - len(self.first)])
        t = time.perf_counter()
        self.extractor.feed(chunk)
        self._step(t)

    def finish(self):
        t = time.perf_counter()
        counts = self.extractor.finish()
        self._step(t)
        return counts


def _timings(stats, timelines):
    """seconds / cpu / timeline of ApplyStats from the threads' Timelines: every stage of
    STAGES in seconds (0.0 when it did not run), those that ran in cpu, and the
    COARSE_STAGES sums in both."""
    seconds, cpu = {}, {}
    for tl in timelines:
        for d, part in ((seconds, tl.seconds()), (cpu, tl.cpu())):
            for stage, s in part.items():
                d[stage] = d.get(stage, 0.0) + s
    seconds = {stage: seconds.get(stage, 0.0) for stage in STAGES}
    for d in (seconds, cpu):
        for coarse, parts in COARSE_STAGES.items():
            if any(p in d for p in parts):
                d[coarse] = sum(d.get(p, 0.0) for p in parts)
    stats.seconds = {stage: round(s, 6) for stage, s in seconds.items()}
    stats.cpu = {stage: round(s, 6) for stage, s in cpu.items()}
    stats.timeline = sorted((span for tl in timelines for span in tl.spans()), key=lambda span: span[2])


# ------------------------------------------------------------------ the Python pipeline


class _Hasher:
    """sha256 of the blob and of the tar, computed off the critical path.  ``blob_stage``:
    the stage the blob's hash is timed as ("hash_tar" for a plain tar, whose one hash is
    its diffID, as the native pipeline reports it)."""

    def __init__(self, timeline, blob_stage="hash_blob"):
        self.blob = hashlib.sha256()
        self.tar = hashlib.sha256()
        self.hash_blob = True
        self.blob_stage = blob_stage
        self.timeline = timeline
        self._queue = queue.Queue(16)
        self._thread = threading.Thread(target=self._run, name="lamina-hash", daemon=True)
        self._thread.start()

    def _run(self):
        get, clock, step = self._queue.get, time.perf_counter, self.timeline.step
        self.timeline.begin()
        while True:
            t = clock()
            item = get()
            t = step("wait", t)
            if item is None:
                return
            item[0].update(item[1])
            step(item[2], t)

    def blob_bytes(self, data):
        if self.hash_blob:
            self._queue.put((self.blob, data, self.blob_stage))

    def tar_bytes(self, data):
        self._queue.put((self.tar, data, "hash_tar"))

    def close(self):
        """Wait until every queued byte is hashed (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class _BlobReadError(Exception):
    """Reading the blob failed (its cause says how)."""


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
        try:
            data = self.raw.read(n if n is not None and n >= 0 else CHUNK)
        except OSError as e:  # a broken stream, not a corrupt one: the decompressor must not relabel it
            raise _BlobReadError() from e
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
        try:
            while self.read(CHUNK):
                pass
        except _BlobReadError as e:
            raise e.__cause__ from None


def _check_digest(what, expected, actual):
    if expected is not None and expected != actual:
        raise errors.DigestMismatchError(what, expected, actual)


def _python(raw, head, kind, feed, what, t0, hash_blob, progress=None):
    """Reader+inflate thread, hasher thread, and the extractor (``feed``) on the caller's thread."""
    reader_tl = _pipeline.Timeline("lamina-inflate", "inflate", t0)
    hasher_tl = _pipeline.Timeline("lamina-hash", "hash_tar", t0)
    caller_tl = feed.timeline = _pipeline.Timeline(threading.current_thread().name, "parse", t0)
    caller_tl.begin()
    hasher = _Hasher(hasher_tl, "hash_tar" if kind == "none" else "hash_blob")
    hasher.hash_blob = hash_blob or kind == "none"  # a plain tar's blob hash is its diffID
    reader = _HashingReader(raw, hasher)
    hasher.blob_bytes(head)
    reader.count = len(head)
    chunks = queue.Queue(QUEUE_DEPTH)
    stop = threading.Event()

    def produce():
        reader_tl.begin()
        try:
            src = compression.Prefixed(head, reader)
            stream = compression.open_decompressed(src, kind, what)
            while not stop.is_set() and not cancelled.is_set():
                t = time.perf_counter()
                try:
                    data = stream.read(CHUNK)
                except _BlobReadError as e:
                    raise e.__cause__ from None
                except compression.decompress_errors() as e:
                    raise errors.CompressionError(f"{what}: {compression.corrupt(kind, e)}") from e
                reader_tl.step("inflate", t)  # includes the reads it triggered
                if not data:
                    break
                _put(data)
            t = time.perf_counter()
            if not stop.is_set() and not cancelled.is_set():
                reader.drain()
            reader_tl.step("read", t)
            _put(_DONE)
        except BaseException as e:  # handed to the caller's thread
            _put(e)

    def _put(item):
        t = time.perf_counter()
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        reader_tl.step("wait", t)

    thread = threading.Thread(target=produce, name="lamina-inflate", daemon=True)
    thread.start()
    try:
        while True:
            t = time.perf_counter()
            item = chunks.get()
            t = caller_tl.step("wait", t)
            _check_cancelled(what)
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            if kind != "none":  # a plain tar's diffID is its blob digest: hash it once
                hasher.tar_bytes(item)  # waits while the hasher's queue is full
                caller_tl.step("wait", t)
            feed(item)
            if progress is not None:
                progress(reader.count)
        counts = feed.finish()
        if progress is not None:
            progress(reader.count)
        t = time.perf_counter()
    finally:
        stop.set()
        thread.join()
        feed.extractor.close()
        hasher.close()
    caller_tl.step("wait", t)  # for the hasher to finish

    stats = ApplyStats(compression=kind, pipeline="python", compressed_bytes=reader.count)
    stats.digest = "sha256:" + hasher.blob.hexdigest() if hasher.hash_blob else ""
    stats.diff_id = stats.digest if kind == "none" else "sha256:" + hasher.tar.hexdigest()
    _timings(stats, [reader_tl, hasher_tl, caller_tl])
    # the reader thread's reads happen inside inflate: report them apart, as before
    inflate = stats.seconds["inflate"]
    stats.seconds["read"] = round(reader.seconds, 6)
    stats.seconds["inflate"] = round(max(inflate - reader.seconds, 0.0), 6)
    return stats, counts
