"""A registry image as an unpack source: ``lamina unpack docker://REF DEST``.

``RegistrySource`` resolves a reference like ``pull`` does (mirrors first,
platform choice, every manifest digest checked) and hands the unpacker layers
whose ``open()`` reads the blob as it arrives from the registry (a BlobStream,
which resumes a cut transfer with Range).  The unpacker then runs its usual
single pass per layer -- inflate, verify blob digest and diffID, write --
into its staging directory, which becomes DEST only once every layer
verified.  Nothing is kept in the store.

Read-ahead: the link must stay busy while a layer is extracted, so each blob
downloads on its own thread, and when one download ends the next layer the
unpacker will open starts downloading, before its turn comes.  The expected
order is the one of a flat unpack: the small upper layers it scans top-down
first (unpacker.SCAN_FRACTION), then the layers bottom-up; a layer opened out
of that order (overlay unpacks open several at once) starts downloading at
once.  One read-ahead download at a time: the bottom layer gets the whole link.
A layer read once arrives into a buffer of at most READ_AHEAD bytes until its
reader comes, which then reads the rest of the transfer itself (a spool file on
a busy disk, and a hand-off between threads per chunk, both measured slower;
a bigger buffer would cost memory for nothing: extraction keeps up with a
link).  A layer the unpacker may scan is read twice, so it arrives into a
spool file in a temporary directory that its readers follow as it grows (and
crosses the link once).
"""
from __future__ import annotations

import collections
import io
import os
import shutil
import tempfile
import threading

from ..oci.image import LayerRef, ResolvedImage, Source
from ..oci.model import document_media_type, parse_config, parse_manifest
from ..platform import Platform
from ..reference import Reference
from .blobstream import Cancelled, open_layer_stream
from .client import RegistryClient
from .progress import Reporter
from .pull import fetch_config, image_platform, resolve

_CHUNK = 256 << 10
# bytes a layer read once may arrive ahead of its reader: the request and the first 50 ms at
# 40 MB/s, while the layer before it finishes extracting; little memory on a faster link
READ_AHEAD = 2 << 20
# The next read-ahead download starts when the running one has this much left to arrive: its
# request's round trip then overlaps the end of the other's transfer, and the link does not idle
# between two blobs (7-11 ms each time at 40 MB/s on loopback, more over a real link).
NEXT_AHEAD = 1 << 20

PREFIX = "docker://"


class RegistrySource(Source):
    def __init__(self, ref, *, client=None, insecure=(), reporter=None):
        if isinstance(ref, str) and ref.startswith(PREFIX):
            ref = ref[len(PREFIX):]
        self.ref = ref if isinstance(ref, Reference) else Reference.parse(ref)
        self.description = PREFIX + str(self.ref)
        self._own_client = client is None
        self.client = client or RegistryClient(insecure=insecure)
        self.reporter = reporter or Reporter()
        self._spool_dir = None
        self.image = None       # the ResolvedImage, once resolve() ran
        self._want = None       # the platform it was resolved for
        self.downloaded = 0
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._repos = []
        self._descs = []
        self._plan = []         # layer indexes in the order a flat unpack opens them
        self._scanned = set()   # layers the unpacker may read twice: their spool files stay
        self._downloads = {}    # layer index -> its _Download (running or ended)

    def resolve(self, platform=None):
        want = Platform.parse(platform) if isinstance(platform, str) else platform
        if self.image is not None and want == self._want:
            # asked again by the unpacker, after a caller resolved early to start the downloads
            return self.image
        r = resolve(self.client, self.ref, want)
        mr = r.manifest
        manifest = parse_manifest(mr.document, document_media_type(mr.document, mr.media_type,
                                                                   f"manifest {mr.digest}"),
                                  f"manifest {mr.digest}")
        cdesc = manifest.config
        self.reporter.line(f"{self.ref.digest or self.ref.tag}: Unpacking from {self.ref.path}")
        below = 0
        for i, d in enumerate(manifest.layers):
            self.reporter.layer(d.digest, d.size)
            if self._may_be_scanned(i, d.size, below):
                self._scanned.add(i)
            below += d.size
        self._repos, self._descs = r.repos, manifest.layers
        self._plan = sorted(self._scanned, reverse=True) + [i for i in range(len(manifest.layers))
                                                            if i not in self._scanned]
        # The first layer starts downloading before the config is asked for: the config's round
        # trip then overlaps that transfer instead of delaying its first byte (close() stops the
        # download if the config turns out bad).
        with self._lock:
            self._read_ahead()
        config = parse_config(fetch_config(r.repos, cdesc), f"config {cdesc.digest}", len(manifest.layers))
        layers = [LayerRef(i, config.diff_ids[i], d.digest, d.size, d.media_type, lambda i=i: self._open(i),
                           progress=self.reporter.extraction(d.digest, d.size))
                  for i, d in enumerate(manifest.layers)]
        self.image = ResolvedImage(config=config.raw, config_digest=cdesc.digest, layers=layers,
                                   manifest_digest=mr.digest, manifest=mr.document,
                                   platform=image_platform(want, r.chosen, config, f"image {self.ref.familiar()}"),
                                   ref=str(self.ref))
        self._want = want
        return self.image

    def finished(self, image):
        """Report every layer complete (the unpack verified and committed them all)."""
        for layer in image.layers:
            self.reporter.state(layer.digest, "Pull complete")

    @staticmethod
    def _may_be_scanned(index, size, below):
        from ..unpacker import SCAN_FRACTION
        return index > 0 and below > 0 and size <= SCAN_FRACTION * below

    # --- downloads, ahead of their readers -------------------------------------------------

    def _open(self, i):
        with self._lock:
            download = self._downloads.get(i)
            if download is None or not download.readable_again():
                download = self._start(i)
        return download.reader()

    def _start(self, i):
        """Start downloading layer ``i`` (the lock is held)."""
        d = self._descs[i]
        path = None
        if i in self._scanned:
            if self._spool_dir is None:
                self._spool_dir = tempfile.mkdtemp(prefix="lamina-unpack-")
            # by position: a manifest may list one blob as several layers, each with its own download
            path = os.path.join(self._spool_dir, f"{i}-{d.digest.replace(':', '-')}")
        download = self._downloads[i] = _Download(self, i, d, path)
        download.start()
        return download

    def _read_ahead(self):
        """With no download running (or only one nearly done), start the next layer of the plan
        (the lock is held)."""
        if self._cancel.is_set() or any(not d.ended and not d.nearly_done for d in self._downloads.values()):
            return
        for i in self._plan:
            if i not in self._downloads:
                self._start(i)
                return

    def _ended(self, download):
        with self._lock:
            self._read_ahead()

    def _consumed(self, download):
        """A reader read the whole blob (a scanned layer is read again: complete when applied)."""
        if download.index not in self._scanned:
            self.reporter.state(download.desc.digest, "Pull complete")

    def close(self):
        self._cancel.set()
        with self._lock:
            downloads = list(self._downloads.values())
        for d in downloads:
            d.join()
            d.finish(Cancelled())   # a transfer parked for a reader that never came
        if self._spool_dir is not None:
            shutil.rmtree(self._spool_dir, ignore_errors=True)
            self._spool_dir = None
        if self._own_client:
            self.client.close()


class _Download:
    """One blob arriving ahead of its readers: into a spool file (``path``; a layer read twice),
    on its own thread, that readers follow as it grows; or else, for the one reader of a layer
    read once, into a buffer of at most READ_AHEAD bytes until that reader comes, which then
    reads what is left of the transfer itself (no hand-off between threads per chunk)."""

    def __init__(self, source, index, desc, path=None):
        self.source, self.index, self.desc, self.path = source, index, desc, path
        self.written = 0          # bytes the thread received (spool file or buffer)
        self.ended = False        # the transfer is over (complete, failed or cancelled)
        self.error = None         # why it failed
        self.reading = 0          # readers open on it
        self.opened = False       # a reader was opened (a buffer serves only one)
        self.prefetching = True   # the thread is receiving
        self.nearly_done = False  # at most NEXT_AHEAD bytes left to arrive: the next one may start
        self.cond = threading.Condition()
        self._chunks = collections.deque()   # buffer: what arrived and was not read yet
        self._buffered = 0
        self._fd = None
        if path is not None:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

        def count(n):
            with source._lock:
                source.downloaded += n

        def on_chunk(stream):
            if not self.nearly_done and desc.size - stream.offset <= NEXT_AHEAD:
                self.nearly_done = True
                source._ended(self)

        self.stream = open_layer_stream(source._repos, desc, source.reporter, count, cancel=source._cancel,
                                        on_chunk=on_chunk)
        self._thread = threading.Thread(target=self._run, name=f"lamina-download-{index}", daemon=True)

    def start(self):
        self._thread.start()

    def join(self):
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def readable_again(self):
        return self.path is not None or not self.opened

    def reader(self):
        with self.cond:
            self.opened = True
            self.reading += 1
            arrived = self.ended and self.error is None
            self.cond.notify_all()   # a prefetching thread hands the transfer over
        if arrived:
            self.source.reporter.state(self.desc.digest, "Extracting")
        return _SpoolReader(self) if self.path is not None else _BufferReader(self)

    def _run(self):
        view = memoryview(bytearray(_CHUNK))
        try:
            while True:
                if self.path is None:
                    with self.cond:
                        if self.opened or self._buffered >= READ_AHEAD:
                            return   # the reader goes on with the stream (finally: not ended)
                n = self.stream.readinto(view)
                if not n:
                    break
                if self.path is not None:
                    chunk = view[:n]
                    while chunk:
                        chunk = chunk[os.write(self._fd, chunk):]
                with self.cond:
                    if self.path is None:   # a copy of the exact size; readers slice it, no copying
                        self._chunks.append(memoryview(bytes(view[:n])))
                        self._buffered += n
                    self.written += n
                    self.cond.notify_all()
            self.finish()
        except BaseException as e:   # handed to the reader, which raises it in the unpack
            self.finish(e)
        finally:
            if self._fd is not None:
                os.close(self._fd)
            with self.cond:
                self.prefetching = False
                self.cond.notify_all()

    def finish(self, error=None):
        """The transfer is over (idempotent): say so, and let the next read-ahead start."""
        with self.cond:
            if self.ended:
                return
            self.ended, self.error = True, error
            self.cond.notify_all()
            reading = self.reading
        self.stream.close()
        if error is None:
            self.source.reporter.state(self.desc.digest, "Extracting" if reading else "Download complete")
        self.source._ended(self)

    def check(self):
        """Raise what ended the transfer, if it failed (cond held)."""
        if self.error is not None:
            raise self.error if not isinstance(self.error, Cancelled) else Cancelled()

    def closed_reader(self, pos):
        with self.cond:
            self.reading -= 1
            whole = self.ended and self.error is None and pos == self.desc.size
            self._chunks.clear()
        if whole:
            self.source._consumed(self)
        elif self.path is None:
            self.join()   # a reader that stopped early: nobody will read the rest
            self.finish(Cancelled())


class _SpoolReader(io.RawIOBase):
    """A layer blob read from its spool file, as far as it has arrived."""

    def __init__(self, download):
        super().__init__()
        self._download = download
        self._file = open(download.path, "rb", buffering=0)
        self._pos = 0

    def readable(self):
        return True

    def readinto(self, buf):
        d = self._download
        with d.cond:
            while self._pos >= d.written and not d.ended:
                d.cond.wait()
            d.check()
            ready = d.written - self._pos
        if not ready:
            return 0
        view = memoryview(buf).cast("B")
        n = self._file.readinto(view[:min(len(view), ready)])
        self._pos += n
        return n

    def close(self):
        if not self.closed:
            self._file.close()
            self._download.closed_reader(self._pos)
        super().close()


class _BufferReader(io.RawIOBase):
    """A layer blob: what arrived ahead in its download's buffer, then the rest of the transfer."""

    def __init__(self, download):
        super().__init__()
        self._download = download
        self._pos = 0

    def readable(self):
        return True

    def readinto(self, buf):
        d = self._download
        view = memoryview(buf).cast("B")
        with d.cond:
            while d.prefetching and not d._chunks:
                d.cond.wait()
            d.check()
            if d._chunks:
                chunk = d._chunks[0]
                n = min(len(view), len(chunk))
                view[:n] = chunk[:n]
                if n == len(chunk):
                    d._chunks.popleft()
                else:
                    d._chunks[0] = chunk[n:]
                d._buffered -= n
                self._pos += n
                return n
            if d.ended:
                return 0
        try:
            n = d.stream.readinto(view)
        except BaseException as e:
            d.finish(e)
            raise
        if not n:
            d.finish()
        self._pos += n
        return n

    def close(self):
        if not self.closed:
            self._download.closed_reader(self._pos)
        super().close()
