# cython: language_level=3
"""Stage 1 of the layer pipeline, without the GIL: read the blob, sha256 it,
inflate it, sha256 the tar, into a ring of reusable buffers that the caller's
thread hands to the extractor (stage 2, ``Extractor.feed``).

No ``bytes`` object is made per chunk: the ring's buffers are allocated once
per layer and handed out as memoryviews.  Python is only entered to read
from a Python file object (an HTTP stream); files are read with ``pread``.
The tar's sha256 is done by whichever stage would otherwise wait
(``tar_hash="auto"``): stage 1 when the ring is full (the extractor is the
slower stage), the consumer when the ring is empty (inflate is).  It is a job
per chunk, done strictly in chunk order by one thread at a time, and a slot is
reused only once it is both fed and hashed.  The blob's sha256 follows the same
rule over a second ring, of the blob's reads: stage 1 hashes a read itself
only when it needs that buffer again, or when the ring of tar is full, so an
extractor waiting for inflate takes the blob's hash off the slower stage.
"""
from cpython.buffer cimport PyBUF_WRITE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.memoryview cimport PyMemoryView_FromMemory
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memcpy
from libc.errno cimport errno, EINTR, EAGAIN
from posix.types cimport off_t

import os

cdef extern from "<unistd.h>" nogil:
    ssize_t pread(int fd, void *buf, size_t count, off_t offset)
    ssize_t read(int fd, void *buf, size_t count)
    int close(int fd)

cdef extern from "<poll.h>" nogil:
    cdef struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLIN

# How long a read of a pipe or FIFO waits for data before it looks whether the
# consumer closed the stage (Ctrl-C while the writer stalls), in milliseconds.
cdef enum:
    STREAM_POLL_MS = 100

cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t, timespec *)
    enum:
        CLOCK_REALTIME
        CLOCK_MONOTONIC
        CLOCK_THREAD_CPUTIME_ID

cdef extern from "<dlfcn.h>" nogil:
    void *dlopen(const char *filename, int flags)
    enum:
        RTLD_LAZY
        RTLD_NOLOAD

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *, void *)
    int pthread_mutex_destroy(pthread_mutex_t *)
    int pthread_mutex_lock(pthread_mutex_t *)
    int pthread_mutex_unlock(pthread_mutex_t *)
    int pthread_cond_init(pthread_cond_t *, void *)
    int pthread_cond_destroy(pthread_cond_t *)
    int pthread_cond_wait(pthread_cond_t *, pthread_mutex_t *)
    int pthread_cond_timedwait(pthread_cond_t *, pthread_mutex_t *, const timespec *)
    int pthread_cond_broadcast(pthread_cond_t *)

cdef extern from "pipeline_codecs.h" nogil:
    enum:
        LAMINA_NONE
        LAMINA_GZIP
        LAMINA_ZSTD
    ctypedef struct lamina_inflater:
        char err[160]
    int lamina_sha_load(void *handle)
    void *lamina_sha_new()
    int lamina_sha_update(void *ctx, const void *data, size_t n)
    int lamina_sha_final(void *ctx, unsigned char *out)
    void lamina_sha_free(void *ctx)
    int lamina_inflate_available(int kind)
    int lamina_inflater_init(lamina_inflater *z, int kind)
    void lamina_inflater_free(lamina_inflater *z)
    int lamina_inflate(lamina_inflater *z, const uint8_t *inp, size_t in_len, size_t *in_pos,
                       uint8_t *out, size_t out_cap, size_t *out_pos)
    int lamina_inflate_end(lamina_inflater *z)


# ------------------------------------------------------------------ stats

cdef enum:
    S_READ = 0
    S_INFLATE = 1
    S_HASH_BLOB = 2     # sha256 of the blob as read (its digest)
    S_HASH_TAR = 3      # sha256 of the uncompressed tar (its diffID), on whichever thread waits
    S_PARSE = 4         # the extractor's feed()/finish() but for its writes
    S_WRITE = 5         # the extractor writing: entries, data, metadata, directory fixups
    S_WAIT = 6
    N_STAGES = 7
    S_BUSY = N_STAGES   # a span of work: which stages, and for how long, is in span_wall
    MAX_SPANS = 128     # per thread: past that, the timeline coarsens (see Timeline._compact)

# Disjoint: their seconds (and CPU seconds) add up to what the threads did.
STAGES = ("read", "inflate", "hash_blob", "hash_tar", "parse", "write", "wait")
cdef dict _STAGE_INDEX = {name: i for i, name in enumerate(STAGES)}

# A wait shorter than this is not worth a span of its own (a 1 s unpack drawn
# 1000 px wide would not show it): it is absorbed into the busy span around
# it, which keeps the timeline to a few entries per real stall.
cdef double MIN_WAIT = 0.002


cdef inline double _clock(clockid_t which) noexcept nogil:
    cdef timespec ts
    clock_gettime(which, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class Timeline:
    """What one thread did for a layer.

    ``step(stage, since)`` after each piece of work (or wait) adds its wall
    time and the thread's CPU time (CLOCK_THREAD_CPUTIME_ID) to ``stage``, and
    extends the thread's timeline: spans of work and of ``wait``, relative to
    the layer start ``t0`` (``time.perf_counter()``, CLOCK_MONOTONIC),
    adjacent spans of one kind coalesced, and waits shorter than ``min_wait``
    (2 ms at first) absorbed into the work span around them.  A thread that
    stalls more often than MAX_SPANS times doubles ``min_wait`` and coarsens
    its spans accordingly, so the list stays short on a busy machine too.
    ``begin()`` must run on the thread being measured.

    A work span keeps how long each stage took in it: its stages alternate
    chunk by chunk (read, blob sha256, inflate every 1 MiB; parse and write
    every entry), far faster than a chart can show, so ``spans()`` lays each
    work span out as consecutive pieces, one per stage, in proportion to the
    time the stage took in it (``busy``, the thread's main stage, names a span
    whose pieces were too short for the clock).
    """
    cdef readonly str thread
    cdef int busy
    cdef double t0, cpu_mark, min_wait
    cdef double cpu_s[N_STAGES]
    cdef double wall_s[N_STAGES]
    cdef int n
    cdef int span_stage[MAX_SPANS]        # S_BUSY or S_WAIT
    cdef double span_start[MAX_SPANS]
    cdef double span_end[MAX_SPANS]
    cdef double span_wall[MAX_SPANS][N_STAGES]

    def __init__(self, str thread, str busy, double t0):
        self.thread = thread
        self.busy = _STAGE_INDEX[busy]
        self.t0 = t0
        self.min_wait = MIN_WAIT

    def begin(self):
        self.cpu_mark = _clock(CLOCK_THREAD_CPUTIME_ID)

    cdef double _step(self, int stage, double since) noexcept nogil:
        return self._step_part(stage, since, stage, 0.0)

    cdef double _step_part(self, int stage, double since, int part, double part_s) noexcept nogil:
        """The work since ``since``: ``part_s`` seconds of it (measured inside it) were
        ``part``, the rest ``stage``.  The thread's CPU over it is shared in the same
        proportion: the two alternate too finely to read the CPU clock at each switch."""
        cdef double now = _clock(CLOCK_MONOTONIC), cpu = _clock(CLOCK_THREAD_CPUTIME_ID)
        cdef double wall = now - since, dcpu = cpu - self.cpu_mark, share = 0.0
        self.cpu_mark = cpu
        if part != stage and wall > 0:
            part_s = min(max(part_s, 0.0), wall)
            share = part_s / wall
        else:
            part_s = 0.0
        self.wall_s[stage] += wall - part_s
        self.cpu_s[stage] += dcpu * (1 - share)
        if part_s:
            self.wall_s[part] += part_s
            self.cpu_s[part] += dcpu * share
        if stage != S_WAIT:
            self._span(S_BUSY, since - self.t0, now - self.t0, stage, wall - part_s)
            if part_s:
                self.span_wall[self.n - 1][part] += part_s
        elif wall >= self.min_wait:
            self._span(S_WAIT, since - self.t0, now - self.t0, S_WAIT, wall)
        return now

    cdef void _span(self, int kind, double start, double end, int stage, double secs) noexcept nogil:
        cdef int i, last = self.n - 1
        if last >= 0 and self.span_stage[last] == kind and start - self.span_end[last] < 2 * self.min_wait:
            self.span_end[last] = end
            self.span_wall[last][stage] += secs
            return
        while self.n == MAX_SPANS:
            self._compact()
        if self.n and self.span_stage[self.n - 1] == kind:  # its neighbour went in the compaction
            self.span_end[self.n - 1] = end
            self.span_wall[self.n - 1][stage] += secs
            return
        self.span_stage[self.n] = kind
        self.span_start[self.n] = start
        self.span_end[self.n] = end
        for i in range(N_STAGES):
            self.span_wall[self.n][i] = 0.0
        self.span_wall[self.n][stage] = secs
        self.n += 1

    cdef void _compact(self) noexcept nogil:
        """Double min_wait and apply it to the spans so far: shorter waits go, the
        work spans they separated merge."""
        cdef int i, j, n = self.n
        self.min_wait *= 2
        self.n = 0
        for i in range(n):
            if self.span_stage[i] == S_WAIT and self.span_end[i] - self.span_start[i] < self.min_wait:
                continue
            if self.n and self.span_stage[self.n - 1] == self.span_stage[i]:
                self.span_end[self.n - 1] = self.span_end[i]
                for j in range(N_STAGES):
                    self.span_wall[self.n - 1][j] += self.span_wall[i][j]
            else:
                self.span_stage[self.n] = self.span_stage[i]
                self.span_start[self.n] = self.span_start[i]
                self.span_end[self.n] = self.span_end[i]
                for j in range(N_STAGES):
                    self.span_wall[self.n][j] = self.span_wall[i][j]
                self.n += 1

    def step(self, str stage, double since, str part=None, double part_seconds=0.0):
        """Account the work (or wait) since ``since``; returns the time now.  With
        ``part``: ``part_seconds`` of it were that stage (say the extractor's writes,
        timed inside feed()), the rest ``stage``, and the CPU is shared in proportion."""
        cdef int s = _STAGE_INDEX[stage]
        return self._step_part(s, since, s if part is None else _STAGE_INDEX[part], part_seconds)

    def spans(self):
        """[[thread, stage, start_s, end_s], ...]: waits, and each work span as
        consecutive pieces per stage in proportion to their time in it (STAGES order)."""
        cdef int i, j
        cdef double start, end, busy, at
        cdef list out = [], parts
        for i in range(self.n):
            start, end = self.span_start[i], self.span_end[i]
            if self.span_stage[i] == S_WAIT:
                out.append([self.thread, "wait", round(start, 6), round(end, 6)])
                continue
            parts = [j for j in range(N_STAGES) if j != S_WAIT and self.span_wall[i][j] > 0]
            busy = sum([self.span_wall[i][j] for j in parts])
            if not parts:
                out.append([self.thread, STAGES[self.busy], round(start, 6), round(end, 6)])
                continue
            at = start
            last = parts[len(parts) - 1]  # (built without wraparound: no [-1])
            for j in parts:
                piece_end = end if j == last else at + (end - start) * self.span_wall[i][j] / busy
                out.append([self.thread, STAGES[j], round(at, 6), round(piece_end, 6)])
                at = piece_end
        return out

    def cpu(self):
        """{stage: thread CPU seconds} of the stages this thread did."""
        return {STAGES[i]: self.cpu_s[i] for i in range(N_STAGES) if self.cpu_s[i] or self.wall_s[i]}

    def seconds(self):
        """{stage: wall seconds} of the stages this thread did."""
        return {STAGES[i]: self.wall_s[i] for i in range(N_STAGES) if self.wall_s[i]}


# ----------------------------------------------------------------- SHA-256

cdef int _sha_state = 0  # 0: not tried, 1: loaded and checked, -1: unavailable


def sha256_available():
    """Whether OpenSSL's SHA-256 was found in the libcrypto hashlib uses (checked once)."""
    global _sha_state
    cdef void *handle
    cdef unsigned char out[32]
    cdef void *ctx
    if _sha_state == 0:
        _sha_state = -1
        try:
            import _hashlib
        except ImportError:  # an interpreter built without OpenSSL
            return False
        import hashlib
        handle = dlopen(_hashlib.__file__.encode(), RTLD_LAZY | RTLD_NOLOAD)
        if handle == NULL or lamina_sha_load(handle) < 0:
            return False
        ctx = lamina_sha_new()
        if ctx == NULL:
            return False
        ok = lamina_sha_update(ctx, b"lamina", 6) == 0 and lamina_sha_final(ctx, out) == 0
        lamina_sha_free(ctx)
        if ok and out[:32] == hashlib.sha256(b"lamina").digest():
            _sha_state = 1
    return _sha_state == 1


def available(str kind):
    """Whether the native stage 1 can handle a ``kind`` ("gzip", "zstd", "none") layer."""
    if kind not in _KINDS or not sha256_available():
        return False
    return _KINDS[kind] == LAMINA_NONE or lamina_inflate_available(_KINDS[kind]) != 0


cdef dict _KINDS = {"none": LAMINA_NONE, "gzip": LAMINA_GZIP, "zstd": LAMINA_ZSTD}


cdef class _Sha256:
    cdef void *ctx

    def __cinit__(self):
        if not sha256_available():
            raise RuntimeError("OpenSSL SHA-256 not available")
        self.ctx = lamina_sha_new()
        if self.ctx == NULL:
            raise MemoryError()

    def __dealloc__(self):
        lamina_sha_free(self.ctx)

    def hexdigest(self):
        cdef unsigned char out[32]
        if lamina_sha_final(self.ctx, out) < 0:
            raise RuntimeError("SHA-256 final failed")
        return (<bytes>out[:32]).hex()


# ------------------------------------------------------------------ stage 1

cdef enum:
    TAR_STAGE1 = 0
    TAR_STAGE2 = 1
    TAR_AUTO = 2

cdef dict _TAR_HASH = {"stage1": TAR_STAGE1, "stage2": TAR_STAGE2, "auto": TAR_AUTO}

cdef enum:
    SLOT = 1 << 20      # bytes per ring buffer (one extractor feed)
    INBUF = 1 << 20     # bytes per read of the blob
    MAX_SLOTS = 16
    E_NONE = 0
    E_CORRUPT = 1
    E_OS = 2
    E_PYTHON = 3


cdef bytearray _unfilled(Py_ssize_t size):
    """A bytearray of ``size`` bytes as malloc returns them: ``bytearray(size)`` zero-fills,
    which makes every page of a ring resident at once, though stage 1 writes each byte before
    anyone reads it (a chunk is read only up to the length stage 1 wrote).  Owned like any
    bytearray: a memoryview handed out keeps it alive."""
    return PyByteArray_FromStringAndSize(NULL, size)


cdef class Stage1:
    """Read + sha256(blob) + inflate [+ sha256(tar)] of one layer blob.

    ``run()`` is the body of the stage-1 thread; the consumer calls ``next()``
    for each chunk of tar and ``close()`` when it stops (early or not).

    The blob is either ``fd`` read with pread from ``offset`` (a regular
    file), ``fd`` with ``stream=True`` (a pipe, FIFO or socket: read(2) after a
    short poll(2), so that close() stops a reader whose writer stalls; the stage
    owns that fd and closes it when its thread ends), or ``fileobj`` read with
    its ``readinto`` (a Python stream); ``head`` is what was already read from
    it to recognise the compression.
    """
    cdef int kind, fd
    cdef bint stream
    cdef int64_t offset
    cdef object readinto, read
    cdef bytes head
    cdef const char *head_ptr
    cdef Py_ssize_t head_pos, head_len
    cdef bint hash_blob
    cdef int tar_hash         # TAR_STAGE1, TAR_STAGE2 or TAR_AUTO
    cdef _Sha256 sha_blob, sha_tar
    cdef lamina_inflater z
    cdef bint z_ready
    # the blob's reads: read k lives in in_buf[k % nin], reused once blob-hashed
    cdef list inbufs
    cdef uint8_t *in_buf[MAX_SLOTS]
    cdef size_t in_lens[MAX_SLOTS]
    cdef int nin
    cdef int64_t reads, blob_hashed
    cdef bint blob_hashing
    cdef uint8_t *in_ptr
    cdef size_t in_len, in_pos
    cdef list slots
    cdef uint8_t *slot_ptr[MAX_SLOTS]
    cdef size_t slot_len[MAX_SLOTS]
    cdef int nslots
    # chunk sequence numbers (chunk k lives in slot k % nslots): published by
    # stage 1, taken and released (fed) by the consumer, tar-hashed (by either)
    cdef int64_t published, taken, released, hashed
    cdef bint held, hashing
    cdef pthread_mutex_t mu
    cdef pthread_cond_t cv
    cdef bint done, stop
    cdef int err_kind, err_errno
    cdef object py_exc
    cdef readonly int64_t compressed_bytes
    cdef readonly Timeline timeline, consumer

    def __cinit__(self):
        pthread_mutex_init(&self.mu, NULL)
        pthread_cond_init(&self.cv, NULL)

    def __init__(self, str kind, *, int fd=-1, int64_t offset=0, bint stream=False, fileobj=None,
                 bytes head=b"", bint hash_blob=True, str tar_hash="auto", int slots=4, Timeline timeline=None,
                 Timeline consumer=None):
        self.fd, self.stream = fd, stream and fd >= 0  # first: a stream's fd is ours to close, even on error
        if not available(kind):
            raise ValueError(f"no native stage 1 for {kind!r} layers in this build")
        if (fd < 0) == (fileobj is None):
            raise ValueError("Stage1 needs an fd or a file object")
        self.kind = _KINDS[kind]
        if timeline is None or consumer is None:
            raise ValueError("Stage1 needs a timeline for each side")
        self.offset, self.head = offset, head
        self.head_ptr, self.head_len = head, len(head)
        if fileobj is not None:
            self.readinto = getattr(fileobj, "readinto", None)
            self.read = fileobj.read
        self.hash_blob = hash_blob and self.kind != LAMINA_NONE  # a plain tar's digest is its diffID
        self.tar_hash = _TAR_HASH[tar_hash]
        self.sha_blob, self.sha_tar = _Sha256(), _Sha256()
        if self.kind != LAMINA_NONE:
            if lamina_inflater_init(&self.z, self.kind) < 0:
                raise MemoryError()
            self.z_ready = True
        self.nslots = max(2, min(slots, MAX_SLOTS))
        self.nin = self.nslots if self.kind != LAMINA_NONE else 0
        # not zero-filled: a buffer's pages become resident when the stream first reaches it
        self.inbufs = [_unfilled(INBUF) for _ in range(self.nin)]
        for i in range(self.nin):
            self.in_buf[i] = <uint8_t *>PyByteArray_AS_STRING(self.inbufs[i])
        self.slots = [_unfilled(SLOT) for _ in range(self.nslots)]
        for i in range(self.nslots):
            self.slot_ptr[i] = <uint8_t *>PyByteArray_AS_STRING(self.slots[i])
        self.timeline, self.consumer = timeline, consumer

    def __dealloc__(self):
        self._close_stream()
        if self.z_ready:
            lamina_inflater_free(&self.z)
        pthread_cond_destroy(&self.cv)
        pthread_mutex_destroy(&self.mu)

    # ---------------------------------------------------------- producer

    def run(self):
        """The stage-1 thread: fill the ring until the blob ends, an error, or close()."""
        self.timeline.begin()
        with nogil:
            if self._produce() and self.err_kind == E_NONE:
                self._blob_hash_until(1, _clock(CLOCK_MONOTONIC))  # the end of the blob: hash what is left
            self._close_stream()
            pthread_mutex_lock(&self.mu)
            self.done = True
            pthread_cond_broadcast(&self.cv)
            pthread_mutex_unlock(&self.mu)

    cdef bint _produce(self) noexcept nogil:
        """Fill the ring; True once the whole blob went through it."""
        cdef int slot
        cdef uint8_t *out
        cdef size_t out_pos, before, in_before
        cdef ssize_t n
        cdef bint eof = False, finished = False
        cdef double t = _clock(CLOCK_MONOTONIC)
        while not finished:
            pthread_mutex_lock(&self.mu)
            while not self.stop and self.published - min(self.released, self.hashed) >= self.nslots:
                if self.tar_hash == TAR_AUTO and not self.hashing and self.hashed < self.published:
                    t = self.timeline._step(S_WAIT, t)  # the ring is full: hash instead of waiting
                    t = self._hash_next(self.timeline, t)
                elif self.blob_hashed < self.reads and not self.blob_hashing:
                    t = self.timeline._step(S_WAIT, t)
                    t = self._hash_blob_next(self.timeline, t)
                else:
                    pthread_cond_wait(&self.cv, &self.mu)
            slot = self.published % self.nslots
            pthread_mutex_unlock(&self.mu)
            t = self.timeline._step(S_WAIT, t)
            if self.stop:
                return False
            out = self.slot_ptr[slot]
            out_pos = 0
            while out_pos < SLOT:
                if self.kind == LAMINA_NONE:  # a plain tar: read straight into the ring
                    n = self._read(out + out_pos, SLOT - out_pos)
                    t = self.timeline._step(S_READ, t)
                    if n < 0:
                        return False
                    if n == 0:
                        finished = True
                        break
                    out_pos += n
                    continue
                if self.in_pos == self.in_len and not eof:
                    t = self._blob_hash_until(self.nin, t)  # the buffer of this read must be hashed
                    if self.stop:
                        return False
                    self.in_ptr = self.in_buf[self.reads % self.nin]
                    n = self._read(self.in_ptr, INBUF)
                    t = self.timeline._step(S_READ, t)
                    if n < 0:
                        return False
                    self.in_pos, self.in_len = 0, n
                    eof = n == 0
                    if n:
                        pthread_mutex_lock(&self.mu)
                        self.in_lens[self.reads % self.nin] = n
                        self.reads += 1
                        if not self.hash_blob:
                            self.blob_hashed = self.reads
                        pthread_cond_broadcast(&self.cv)  # a consumer waiting for tar may hash it
                        pthread_mutex_unlock(&self.mu)
                before, in_before = out_pos, self.in_pos
                if lamina_inflate(&self.z, self.in_ptr, self.in_len, &self.in_pos, out, SLOT, &out_pos) < 0:
                    self.err_kind = E_CORRUPT
                    return False
                t = self.timeline._step(S_INFLATE, t)
                if out_pos == before and self.in_pos == in_before and self.in_pos < self.in_len:
                    self.err_kind = E_CORRUPT  # a codec that neither reads nor writes would spin
                    memcpy(self.z.err, b"inflate makes no progress", 26)
                    return False
                if eof and out_pos == before:  # nothing left to flush
                    if lamina_inflate_end(&self.z) < 0:
                        self.err_kind = E_CORRUPT
                        return False
                    finished = True
                    break
            if out_pos == 0:
                break
            if self.tar_hash == TAR_STAGE1:  # every chunk, in order: nobody else hashes
                lamina_sha_update(self.sha_tar.ctx, out, out_pos)
                t = self.timeline._step(S_HASH_TAR, t)
            pthread_mutex_lock(&self.mu)
            self.slot_len[slot] = out_pos
            self.published += 1
            if self.tar_hash == TAR_STAGE1:
                self.hashed += 1
            pthread_cond_broadcast(&self.cv)
            pthread_mutex_unlock(&self.mu)
        return True

    cdef double _blob_hash_until(self, int64_t pending, double t) noexcept nogil:
        """Wait until fewer than ``pending`` reads are left to blob-hash, hashing them
        here while nobody else is.  Returns the time now."""
        pthread_mutex_lock(&self.mu)
        while not self.stop and self.reads - self.blob_hashed >= pending:
            if not self.blob_hashing:
                t = self._hash_blob_next(self.timeline, t)
            else:
                pthread_cond_wait(&self.cv, &self.mu)
                t = self.timeline._step(S_WAIT, t)
        pthread_mutex_unlock(&self.mu)
        return t

    cdef double _hash_blob_next(self, Timeline tl, double t) noexcept nogil:
        """Blob-hash read ``blob_hashed`` (lock held, nobody blob-hashing)."""
        cdef int k = self.blob_hashed % self.nin
        return self._hash_in_order(tl, t, self.sha_blob.ctx, self.in_buf[k], self.in_lens[k], S_HASH_BLOB,
                                   &self.blob_hashed, &self.blob_hashing)

    cdef double _hash_next(self, Timeline tl, double t) noexcept nogil:
        """Tar-hash chunk ``hashed`` (lock held, nobody tar-hashing)."""
        cdef int slot = self.hashed % self.nslots
        return self._hash_in_order(tl, t, self.sha_tar.ctx, self.slot_ptr[slot], self.slot_len[slot], S_HASH_TAR,
                                   &self.hashed, &self.hashing)

    cdef double _hash_in_order(self, Timeline tl, double t, void *ctx, const uint8_t *data, size_t n, int stage,
                               int64_t *done, bint *busy) noexcept nogil:
        """Hash the next buffer of one ring (called with the lock held; released while
        hashing, which ``busy`` tells the other thread), then count it ``done``.
        Returns the time now."""
        busy[0] = True
        pthread_mutex_unlock(&self.mu)
        lamina_sha_update(ctx, data, n)
        t = tl._step(stage, t)
        pthread_mutex_lock(&self.mu)
        done[0] += 1
        busy[0] = False
        pthread_cond_broadcast(&self.cv)
        return t

    cdef void _close_stream(self) noexcept nogil:
        if self.stream and self.fd >= 0:
            close(self.fd)
            self.fd = -1

    cdef ssize_t _read_stream(self, void *buf, size_t size) noexcept nogil:
        """read(2) of a pipe-like fd, polling first so that a stalled writer cannot keep
        the thread from seeing close(); -1 on error or once closed."""
        cdef pollfd p
        cdef ssize_t n
        cdef int ready
        while not self.stop:
            p.fd, p.events, p.revents = self.fd, POLLIN, 0
            ready = poll(&p, 1, STREAM_POLL_MS)
            if ready == 0 or (ready < 0 and errno == EINTR):
                continue
            if ready < 0:
                self.err_kind, self.err_errno = E_OS, errno
                return -1
            n = read(self.fd, buf, size)
            if n >= 0:
                return n
            if errno != EINTR and errno != EAGAIN:  # EAGAIN: an O_NONBLOCK fd another reader drained
                self.err_kind, self.err_errno = E_OS, errno
                return -1
        return -1

    cdef ssize_t _read(self, void *buf, size_t size) noexcept nogil:
        """Up to ``size`` bytes of the blob (the sniffed head first); 0 at its end, -1 on error."""
        cdef ssize_t n
        if self.head_pos < self.head_len:
            n = min(<ssize_t>size, self.head_len - self.head_pos)
            memcpy(buf, self.head_ptr + self.head_pos, n)
            self.head_pos += n
        elif self.stream:
            n = self._read_stream(buf, size)
            if n < 0:
                return -1
        elif self.fd >= 0:
            while True:
                n = pread(self.fd, buf, size, self.offset)
                if n >= 0 or errno != EINTR:
                    break
            if n < 0:
                self.err_kind, self.err_errno = E_OS, errno
                return -1
            self.offset += n
        else:
            n = self._read_python(buf, size)
            if n < 0:
                return -1
        self.compressed_bytes += n
        return n

    cdef ssize_t _read_python(self, void *buf, size_t size) noexcept with gil:
        try:
            if self.readinto is not None:
                n = self.readinto(PyMemoryView_FromMemory(<char *>buf, size, PyBUF_WRITE))
                if n is None:
                    raise OSError("the blob stream returned no data (non-blocking?)")
            else:
                data = self.read(size)
                if not isinstance(data, bytes):
                    data = bytes(data)
                n = len(data)
                if n <= <Py_ssize_t>size:
                    memcpy(buf, <const char *>data, n)
            if not 0 <= n <= <Py_ssize_t>size:
                raise OSError(f"the blob stream returned {n} bytes for a read of {size}")
            return n
        except BaseException as e:
            self.py_exc = e
            self.err_kind = E_PYTHON
            return -1

    # ---------------------------------------------------------- consumer

    def next(self):
        """The next chunk of tar as a memoryview (valid until the next call), None at
        the end, or False after 0.1 s without one (so the caller can look at signals
        and cancellation while a slow stream stalls).

        Raises what stage 1 met: CorruptStream (message only), OSError, or the
        file object's own exception.
        """
        cdef int slot = -1
        cdef size_t n = 0
        cdef double t = _clock(CLOCK_MONOTONIC)
        cdef timespec deadline
        cdef bint timed_out = False, ended = False
        with nogil:
            clock_gettime(CLOCK_REALTIME, &deadline)  # the condition variable's clock
            deadline.tv_nsec += 100_000_000
            if deadline.tv_nsec >= 1_000_000_000:
                deadline.tv_sec += 1
                deadline.tv_nsec -= 1_000_000_000
            pthread_mutex_lock(&self.mu)
            if self.held:
                self.released += 1
                self.held = False
                pthread_cond_broadcast(&self.cv)
            while self.tar_hash == TAR_STAGE2 and self.hashed < self.released:
                t = self.consumer._step(S_WAIT, t)
                t = self._hash_next(self.consumer, t)
            while self.published == self.taken and not timed_out:
                if self.hashed < self.released and not self.hashing:  # nothing to feed: hash instead of waiting
                    t = self.consumer._step(S_WAIT, t)
                    t = self._hash_next(self.consumer, t)
                elif self.blob_hashed < self.reads and not self.blob_hashing:
                    t = self.consumer._step(S_WAIT, t)
                    t = self._hash_blob_next(self.consumer, t)
                elif self.done and not self.hashing:
                    break
                else:
                    timed_out = pthread_cond_timedwait(&self.cv, &self.mu, &deadline) != 0
            if self.published > self.taken:
                slot = self.taken % self.nslots
                n = self.slot_len[slot]
                self.taken += 1
                self.held = True
            else:
                # read with the ring, under the lock: stage 1 publishes its last chunks, then sets
                # done, all between a timed-out wait and a read of done after the unlock, and the
                # stream looked ended with those chunks never fed (an empty or cut layer, which
                # only a diffID check could catch)
                ended = self.done
            pthread_mutex_unlock(&self.mu)
            self.consumer._step(S_WAIT, t)
        if slot >= 0:
            return memoryview(self.slots[slot])[:n]
        if not ended:
            return False
        if self.err_kind == E_CORRUPT:
            raise CorruptStream(self.z.err.decode())
        if self.err_kind == E_OS:
            raise OSError(self.err_errno, f"cannot read the blob: {os.strerror(self.err_errno)}")
        if self.err_kind == E_PYTHON:
            raise self.py_exc
        return None

    def close(self):
        """Make the stage-1 thread stop at its next chunk (the caller joins it)."""
        with nogil:
            pthread_mutex_lock(&self.mu)
            self.stop = True
            pthread_cond_broadcast(&self.cv)
            pthread_mutex_unlock(&self.mu)

    def digests(self):
        """(blob sha256 hex or "" when not hashed, tar sha256 hex): after the last next()."""
        tar = self.sha_tar.hexdigest()
        if self.kind == LAMINA_NONE:
            return tar, tar
        return (self.sha_blob.hexdigest() if self.hash_blob else ""), tar


class CorruptStream(Exception):
    """The compressed stream is corrupt or truncated (the message says how)."""
