"""A registry blob as a readable stream that survives cut connections.

``BlobStream`` is what both ``pull`` (into the store) and ``unpack docker://``
(straight into a directory) read: a binary file object over one blob that
hides resumption.  A cut connection, a timeout, a short body or a connection
slower than the transport's minimum rate re-opens the blob with
``Range: bytes=OFFSET-`` (the reader just sees its bytes continue);
an endpoint that keeps failing hands over to the next one (mirrors first,
then the registry).  The bytes are not verified here: the consumer hashes
them (the store's ingest, or apply_layer) and decides what a mismatch means.
"""
from __future__ import annotations

import io
import re
import threading
import time

from .. import trace
from ..errors import BlobNotFoundError, RegistryError
from .transport import CONNECTION_ERRORS, describe_error

# At most 19 digits (any 64-bit size): int() of thousands of digits raises, of millions takes seconds
_CONTENT_RANGE = re.compile(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19}|\*)", re.ASCII)


class Cancelled(Exception):
    """The pull was cancelled (another layer failed); not an error of this blob."""


class _ShortBody(Exception):
    pass


class _TooSlow(_ShortBody):
    """Fewer bytes than the minimum rate over a window of time spent waiting for the network: a
    server dripping a byte a second stays inside every read timeout."""


def open_blob_stream(repos, desc, **kw):
    """The stream of the blob ``desc`` describes: the bytes the descriptor embeds (image-spec
    1.1's ``data``, verified against its digest and size as the manifest was parsed), else a
    BlobStream from ``repos``.  ``kw``: BlobStream's keywords."""
    if desc.data is not None:
        return EmbeddedBlob(desc.digest, desc.data, **kw)
    return BlobStream(repos, desc.digest, desc.size, **kw)


def open_layer_stream(repos, desc, reporter, count, *, offset=0, cancel=None, on_chunk=None):
    """The one place that decides how a layer's bytes are fetched and counted, for ``pull`` and
    ``unpack docker://`` alike: the stream of open_blob_stream, announced as "Downloading" now and
    its arrival shown and counted (``count(n)`` per chunk) -- unless the descriptor embeds the
    bytes (image-spec 1.1's ``data``): those came with the manifest, so none of them is shown as
    downloading nor counted as downloaded.  ``on_chunk(stream)`` follows every chunk, after the
    counts (the caller's own states, read-ahead, link turns)."""
    digest, size = desc.digest, desc.size
    fetched = desc.data is None
    first = [True]

    def on_data(n):
        if first[0]:
            first[0] = False
            trace.event("blob-first-byte", digest=digest[7:19])
        if fetched:
            count(n)
            reporter.progress(digest, stream.offset, size)
        if stream.offset >= size:
            trace.event("blob-last-byte", digest=digest[7:19])
        if on_chunk is not None:
            on_chunk(stream)

    if fetched:
        reporter.state(digest, "Downloading")
    stream = open_blob_stream(repos, desc, offset=offset, on_data=on_data, cancel=cancel,
                              on_retry=lambda: reporter.state(digest, "Retrying"))
    return stream


class EmbeddedBlob(io.RawIOBase):
    """A blob its descriptor carries, read as a BlobStream is (offset, counts, cancel): no
    request is made for it, as containerd's fetcher and cue's ociregistry make none."""

    def __init__(self, digest, data, *, offset=0, on_data=None, on_retry=None, cancel=None):
        super().__init__()
        self.digest, self.size, self._data = digest, len(data), memoryview(data)
        self.offset = offset
        self.attempts = 0
        self.served = []
        self._on_data = on_data or (lambda n: None)
        self._cancel = cancel

    def readable(self):
        return True

    def readinto(self, buf):
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled()
        view = memoryview(buf).cast("B")
        n = min(len(view), self.size - self.offset)
        if n <= 0:
            return 0
        view[:n] = self._data[self.offset:self.offset + n]
        self.offset += n
        self._on_data(n)
        return n


class BlobStream(io.RawIOBase):
    """Blob ``digest`` of ``size`` bytes from ``repos`` (tried in order), starting at ``offset``.

    ``on_data(n)`` is called for every chunk received (progress, byte counts),
    ``on_retry()`` before a resumption; ``cancel`` (a threading.Event) stops the
    transfer with Cancelled at the next chunk.  So does close(), from any thread: a
    reader left behind in a read (a failed extraction waits for its stage-1 thread only
    ABANDON_READER_AFTER, see lamina.layer) opens no new request once its stream is closed.
    """

    def __init__(self, repos, digest, size, *, offset=0, on_data=None, on_retry=None, cancel=None):
        super().__init__()
        self.repos, self.digest, self.size = list(repos), digest, size
        self.offset = offset
        self.attempts = 0
        self.served = []         # names of the endpoints that sent bytes, in order (a mirror may fall back)
        self._on_data = on_data or (lambda n: None)
        self._on_retry = on_retry or (lambda: None)
        self._cancel = cancel
        self._endpoint = 0
        self._failures = 0
        self._resp = None
        self._skip = 0
        self._slow = 0           # windows in a row below the minimum rate (progress does not reset it)
        self._waited = 0.0       # seconds spent in reads since the window began, not the consumer's time
        self._window_bytes = 0
        # close() and _open() from two threads: a response opened as the stream is closed is
        # closed at once, never kept (nobody would read or close it)
        self._lock = threading.Lock()
        self._stopped = False

    def readable(self):
        return True

    @property
    def repo(self):
        return self.repos[self._endpoint]

    def readinto(self, buf):
        view = memoryview(buf).cast("B")
        while self.offset < self.size:
            if self._stopped or (self._cancel is not None and self._cancel.is_set()):
                raise Cancelled()
            try:
                if self._resp is None:
                    self._open()
                while self._skip:   # a registry that ignored Range re-sends the head
                    n = self._read(view[:min(len(view), self._skip)])
                    if not n:
                        raise _ShortBody(f"body ended before byte {self.offset}")
                    self._skip -= n
                    self._on_data(n)
                n = self._read(view[:min(len(view), self.size - self.offset)])
                if not n:
                    raise _ShortBody(f"connection closed at byte {self.offset} of {self.size}")
            except (BlobNotFoundError, RegistryError):
                # The transport already retried statuses and connection failures: this endpoint
                # is done.  A mirror falls back to the next endpoint (resuming from the offset).
                self._drop()
                if not self._next_endpoint():
                    raise
                continue
            except _TooSlow as e:
                self._slow += 1
                self._failures = max(self._failures, self._slow - 1)   # a drip's progress buys no retries
                self._failed(e)
                continue
            except CONNECTION_ERRORS + (_ShortBody,) as e:
                self._failed(e)
                continue
            self.offset += n
            self._failures = 0
            if not self.served or self.served[-1] != self.repo.name:
                self.served.append(self.repo.name)
            self._on_data(n)
            if self.offset >= self.size:
                self._drop(reuse=True)
            return n
        return 0

    def _read(self, view):
        # judged before the read, so that no byte received is dropped with the connection
        transport = self.repo.session.transport
        if self._waited >= transport.rate_window:
            got, waited = self._window_bytes, self._waited
            self._waited, self._window_bytes = 0.0, 0
            if got < transport.min_rate * waited:
                raise _TooSlow(f"{got} bytes in {waited:.0f} s (less than {transport.min_rate:g} bytes/s)")
            self._slow = 0
        t = time.monotonic()
        n = self._resp.readinto(view)
        self._waited += time.monotonic() - t
        self._window_bytes += n
        return n

    def _open(self):
        self.attempts += 1
        resp = self.repo.open_blob(self.digest, self.offset)
        try:
            self._skip = self._check_range(resp)
            with self._lock:
                if self._stopped:   # closed while the request went out
                    raise Cancelled()
                self._resp = resp
        except BaseException:
            resp.close(reuse=False)
            raise

    def _check_range(self, resp):
        """Bytes to skip at the head of the body (a registry that ignored Range sends it all)."""
        start, size, digest = self.offset, self.size, self.digest
        if resp.status == 206:
            m = _CONTENT_RANGE.fullmatch((resp.header("Content-Range") or "").strip())
            if not m or int(m.group(1)) != start:
                raise RegistryError(f"blob {digest}: asked for bytes from {start}, got Content-Range "
                                    f"{resp.header('Content-Range')!r}")
            if m.group(3) != "*" and int(m.group(3)) != size:
                raise RegistryError(f"blob {digest}: registry has {m.group(3)} bytes, the manifest says {size}")
            return 0
        length = resp.length
        if length is not None and length != size:
            raise RegistryError(f"blob {digest}: registry sent {length} bytes, the manifest says {size}")
        return start

    def _failed(self, error):
        """Cut connection, timeout, short body: keep the offset, resume with Range after a backoff."""
        self._drop()
        self._waited, self._window_bytes = 0.0, 0
        self._failures += 1
        transport = self.repo.session.transport
        if self._failures >= transport.retries + 1:
            if self._next_endpoint():
                return
            raise RegistryError(f"blob {self.digest} from {self.repo.name}: download failed at byte "
                                f"{self.offset} of {self.size}: "
                                f"{error if isinstance(error, _ShortBody) else describe_error(error)} "
                                f"(after {self.attempts} attempts)") from None
        self._on_retry()
        transport.sleep_backoff(self._failures)

    def _next_endpoint(self):
        if self._endpoint + 1 < len(self.repos):
            self._endpoint += 1
            self._failures = self._slow = 0
            return True
        return False

    def _drop(self, reuse=False):
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close(reuse=reuse)

    def close(self):
        with self._lock:
            self._stopped = True
        self._drop()
        super().close()
