# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The one layer extractor: a push-fed tar parser that writes safely under a root fd.

Bytes of an uncompressed layer tar are pushed in with ``Extractor.feed`` (any
chunking).  The parser is a small state machine over 512-byte headers, so no
Python object is built per data block and file contents go straight from the
caller's buffer to ``write(2)`` with the GIL released.

Safety is structural: every parent directory is opened with
``openat2(RESOLVE_IN_ROOT)`` relative to the root fd (or an equivalent
component walk on kernels without it), and the last component is acted on
with ``*at()`` calls that never follow it.  Names are normalised lexically
first, so ``..`` and absolute names are re-rooted, never rejected.

Two on-disk formats share all of this: ``dir`` applies whiteouts by deleting
lower content; ``overlay`` records them the way overlayfs reads them.
"""
import bisect as _bisect
import errno as _errno
import heapq
import marshal
import os
import re
import sys
import threading
from array import array

from cpython.exc cimport PyErr_CheckSignals

from libc.string cimport memcpy, memcmp, memchr, memset
from libc.stdlib cimport calloc, malloc, realloc, free
from libc.errno cimport (errno, EEXIST, ENOENT, ENOTDIR, ELOOP, ENOSYS, EPERM, EOPNOTSUPP, EISDIR, ENOTEMPTY, EACCES,
                         ESTALE, EIO, EMLINK, ENAMETOOLONG)
from libc.stdint cimport int64_t, uint64_t, uint32_t
from posix.time cimport timespec, clock_gettime, CLOCK_MONOTONIC
from posix.types cimport mode_t, uid_t, gid_t, off_t, dev_t
from posix.unistd cimport lseek, SEEK_SET, pread, pwrite

from syscalls cimport *
from blake3_c cimport *

cdef extern from "hash_worker.h" nogil:
    ctypedef struct lamina_hash_worker:
        int started
    int lamina_hw_start(lamina_hash_worker *w)
    void lamina_hw_post(lamina_hash_worker *w, blake3_hasher *hasher, const void *data, size_t len)
    void lamina_hw_wait(lamina_hash_worker *w)
    void lamina_hw_stop(lamina_hash_worker *w)

# A write of at least this much (a large file's part of a chunk) is hashed by the extractor's
# hash thread while it is written; a smaller one costs less to hash than to hand over.
DEF HASH_OFFLOAD_MIN = 65536
from libc.stdint cimport uint8_t
from libc.stdio cimport snprintf

cdef extern from "<stdio.h>" nogil:
    int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)

from lamina import errors as _errors
from lamina.limits import DEFAULT_LIMITS
from lamina.quoting import quote_name as _show

_PAX_TIME = re.compile(rb"([-+]?)([0-9]+)(?:\.([0-9]*))?")

cdef enum State:
    ST_HEADER, ST_DATA, ST_SKIP, ST_META, ST_END

cdef enum Kind:
    K_REG, K_LINK, K_SYMLINK, K_CHR, K_BLK, K_DIR, K_FIFO

# Which syscall of an entry failed, when its syscalls run in one block without the GIL
# (errno is kept beside it and the error raised once the GIL is back).
cdef enum Step:
    SC_OK, SC_CREATE, SC_WRITE, SC_CHOWN, SC_CHMOD, SC_TIMES, SC_SYMLINK, SC_MKDIR, SC_OPAQUE

DEF BLOCK = 512
DEF PROC_PATH_MAX = 4096   # what a /proc/self/fd readlink is read into
DEF WH_LIST_RUN = 64       # overlay: whiteouts in one directory before its listings below are read
DEF WH_LIST_NAMES = 16     # ... if they hold at most this many names a whiteout of the run so far
DEF WH_LIST_MAX = 1 << 20  # ... and at most this many in all
DEF NAMES_BELOW_MIN_LOWERS = 8    # overlay: from this many layers below, whiteouts look in names_below first
DEF NAMES_BELOW_MAX = 1 << 18      # ... which holds at most this many names
DEF NAMES_BELOW_DIRS = 1 << 16     # ... of at most this many directories
DEF UP_MIN_LOWERS = 8      # overlay: from this many layers below, a hardlink to a lower file looks it up in _below_dir
DEF UP_LIST_BASE = 4096     # ... whose directories below are listed when they hold at most this many names,
DEF UP_LIST_NAMES = 16      # ... or this many per lookup so far and layer they are in (NAMES_BELOW_MAX in all)
DEF UP_OTHER = 0            # _BelowDir.names: what the topmost layer that has a name has there
DEF UP_DIR = 1
DEF UP_WHITEOUT = 2
DEF UP_SYMLINK = 3
DEF NOGIL_LOWERS = 512     # overlay: whiteouts over more layers below take the general path (limits: 500 layers)
DEF WH_PENDING_MAX = 1 << 14  # overlay, early_dirs: whiteouts held for the layers below before waiting for them
DEF NAME_BITS = 1 << 21    # dir format: bits of the filter of the names of the non-directories written
DEF PAR_MAX = 32           # dir format: cached parents kept open above the current one (_parent)

cdef bytes WH_PREFIX = b".wh."
cdef const char *GNU_MAGIC = b"ustar  \0"  # magic and version of a GNU header, as GNU tar tells it
cdef bytes WH_OPAQUE = b".wh..wh..opq"
cdef tuple OVERLAY_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")
# lamina's own mark on its staging dirs (unpacker._MARK): a layer's entry carrying it is no
# staging dir of lamina's, and what marks one must be lamina alone.  (Only this name: other
# user.lamina.* names are a layer's own, as the sample image's user.lamina.note.)
cdef bytes STAGING_MARK = b"user.lamina.staging"
cdef bytes ACL_ACCESS = b"system.posix_acl_access"
cdef bytes ACL_DEFAULT = b"system.posix_acl_default"
cdef Py_ssize_t XATTR_LIST_MAX = 65536  # <linux/limits.h>: the most listxattr(2) returns


cdef inline void _hex(char *dst, const uint8_t *src, int n) noexcept nogil:
    """``n`` bytes as 2n lowercase hex digits (no NUL)."""
    cdef int i
    for i in range(n):
        dst[2 * i] = b"0123456789abcdef"[src[i] >> 4]
        dst[2 * i + 1] = b"0123456789abcdef"[src[i] & 15]


cdef bint _no_xattrs(int fd) noexcept nogil:
    """The object has no xattrs, as the entry linked to it.  Its name's metadata key covers its
    xattrs only through 64 bits of blake3: an image could give an object xattrs (a
    security.capability) chosen so that its key is a file's without any, and every image with
    that file would then get them.  One syscall, only when an object is about to be linked."""
    cdef ssize_t n = flistxattr(fd, NULL, 0)
    return n == 0 or (n < 0 and errno == EOPNOTSUPP)  # ENOTSUP on Linux: no xattrs here at all


cdef bint _file_holds(int fd, const unsigned char *data, int64_t size) noexcept nogil:
    """True if the open file ``fd`` holds exactly the ``size`` bytes at ``data``."""
    cdef char buf[65536]
    cdef int64_t off = 0
    cdef ssize_t got
    cdef size_t want
    while off < size:
        want = <size_t>(size - off) if size - off < 65536 else 65536
        got = pread(fd, buf, want, off)
        if got <= 0 or memcmp(buf, data + off, <size_t>got) != 0:
            return False
        off += got
    return pread(fd, buf, 1, size) == 0


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int64_t _pad(int64_t size):
    return (BLOCK - size % BLOCK) % BLOCK


cdef bint _base256(const unsigned char *f, int n, int64_t *out):
    """A GNU base-256 field (big-endian two's complement, the first byte's top bit set) into
    ``out``; False if a significant byte would shift out of an int64 (a 0xFF among the leading
    bytes of a positive number included), as for Go's parseNumeric: it never wraps."""
    cdef int i
    cdef uint64_t v = 0
    cdef unsigned char c, inv = 0xFF if f[0] & 0x40 else 0
    for i in range(n):
        c = f[i] ^ inv
        if i == 0:
            c &= 0x7F
        if v >> 56:
            return False
        v = (v << 8) | c
    if v >> 63:
        return False
    out[0] = ~(<int64_t>v) if inv else <int64_t>v
    return True


cdef bint _go_reads_number(const unsigned char *f, int n):
    """Whether Go's archive/tar parses the numeric field without error (strconv.go parseNumeric:
    base-256, or octal once leading and trailing spaces and NULs are trimmed, cut at a NUL, and
    then nothing but octal digits).  Stricter than _parse_number, which stops at a space as GNU
    tar does: this is only a test of what Go takes for a number."""
    cdef int64_t ignored
    cdef int i = 0, end = n
    if f[0] & 0x80:
        return _base256(f, n, &ignored)
    while i < end and (f[i] == c' ' or f[i] == 0):
        i += 1
    while end > i and (f[end - 1] == c' ' or f[end - 1] == 0):
        end -= 1
    while i < end and f[i] != 0:
        if f[i] < c'0' or f[i] > c'7':
            return False
        i += 1
    return True  # 12 octal digits at most: never out of a uint64's range


cdef bytes _go17_prefix(const unsigned char *h):
    """The name prefix Go's archive/tar (so docker, containerd, podman, umoci) reads in a GNU
    header that Go <= 1.7's writer made: it put a ustar prefix where GNU keeps atime and ctime
    (golang issues 12594, 21005).  Go takes the 155 bytes at 345 (to their first NUL) for a
    prefix when the atime or the ctime field is set and is no number to it, and the prefix is
    all ASCII; else there is none (b"").  GNU tar and bsdtar never read a prefix there: lamina
    gives the tree the container runtimes give."""
    cdef int i
    if not ((h[345] and not _go_reads_number(h + 345, 12)) or
            (h[357] and not _go_reads_number(h + 357, 12))):
        return b""
    for i in range(155):
        if h[345 + i] == 0:
            break
        if h[345 + i] >= 0x80:
            return b""
    return _cstr(h + 345, 155)


def header_prefix(bytes hdr not None):
    """The prefix (b"" if none) the extractor puts before the name field of a 512-byte tar
    header, ``prefix + b"/" + name``: a ustar prefix, or Go 1.7's in a GNU header.  For readers
    of layers lamina already extracted (the compact store's sidecar), which must name the
    entries as the extractor did."""
    if len(hdr) != BLOCK:
        raise ValueError("a tar header is 512 bytes")
    cdef const unsigned char *h = hdr
    if memcmp(h + 257, b"ustar\0", 6) == 0:
        return _cstr(h + 345, 155)
    if memcmp(h + 257, GNU_MAGIC, 8) == 0:
        return _go17_prefix(h)
    return b""


cdef int64_t _parse_number(const unsigned char *f, int n, str field, object where) except? -1:
    """Octal or GNU base-256 numeric header field, read the way Go's archive/tar
    (strconv.go parseNumeric) and GNU tar read it, so that no value means one
    thing to lamina and another to the tools that scan the same layer."""
    cdef int i = 0
    cdef uint64_t v = 0
    cdef int64_t b256
    if f[0] & 0x80:
        if not _base256(f, n, &b256):
            raise _errors.InvalidArchiveError(f"{where}: {field} field does not fit 64 bits")
        return b256
    # octal: leading spaces/NULs skipped; the digits end at the first NUL
    # whatever follows it (GNU tar and Go; bsdtar too for the checksum) or
    # at the first space (GNU tar)
    while i < n and (f[i] == c' ' or f[i] == 0):
        i += 1
    while i < n and f[i] >= c'0' and f[i] <= c'7':
        if v >> 60:
            raise _errors.InvalidArchiveError(f"{where}: {field} field does not fit 64 bits")
        v = v * 8 + (f[i] - c'0')
        i += 1
    if i < n and f[i] != c' ' and f[i] != 0:
        raise _errors.InvalidArchiveError(f"{where}: invalid {field} field in tar header")
    return <int64_t>v


def header_number(bytes field not None):
    """A numeric header field read as the extractor reads it, for readers of layers lamina
    already extracted (the compact store's sidecar): they must find each payload where the
    extractor did.  ValueError if the field holds no number to it."""
    try:
        return _parse_number(field, len(field), "numeric", "tar header")
    except _errors.InvalidArchiveError as e:
        raise ValueError(str(e)) from None


cdef inline bint _has_byte(bytes b, char c):
    return memchr(<const char *>b, c, len(b)) != NULL


cdef inline bint _has_wh_component(bytes b, Py_ssize_t n):
    """Whether ``b[:n]`` holds "/.wh." (a component after the first starting with .wh.)."""
    cdef const char *s = b
    cdef const char *p = s
    cdef const char *end = s + n
    while True:
        p = <const char *>memchr(p, c'/', end - p)
        if p == NULL or end - p < 5:
            return False
        if memcmp(p, b"/.wh.", 5) == 0:
            return True
        p += 1


cdef _target_can_be_there(bytes target, bytes link, object name):
    """A hardlink's target with a component past NAME_MAX is in no layer (such an entry is
    refused): it is not found, as any missing target.  Looked up, the kernel's ENAMETOOLONG
    came out as the dir format's "hardlink failed ... (unpacking into DEST)", blaming DEST's
    filesystem, and as the overlay format's "cannot open" of a directory on the way."""
    if _long_component(target):
        raise _errors.InvalidArchiveError(
            f"entry {_show(name)}: hardlink target {_show(link)} not found in the layer or below")


cdef inline bint _long_component(bytes b):
    """Whether a component of ``b`` is longer than a filesystem names (NAME_MAX, 255 bytes)."""
    cdef const char *s = b
    cdef const char *p = s
    cdef const char *q
    cdef const char *end = s + len(b)
    if end - s <= 255:
        return False
    while p < end:
        q = <const char *>memchr(p, c'/', end - p)
        if q == NULL:
            q = end
        if q - p > 255:
            return True
        p = q + 1
    return False


cdef inline bint _one_below(bytes path, bytes top):
    """Whether ``path`` is ``top`` and one more component ("" is the root)."""
    cdef Py_ssize_t n = len(top), m = len(path)
    cdef const char *p = path
    if m <= n or memcmp(p, <const char *>top, n) != 0:
        return False
    if n:
        if p[n] != c'/':
            return False
        n += 1
    return m > n and memchr(p + n, c'/', m - n) == NULL


cdef bytes _cstr(const unsigned char *f, int n):
    cdef int i = 0
    while i < n and f[i] != 0:
        i += 1
    return (<const char *>f)[:i]


cdef class _Where:
    """Where in the stream a header sits, for error messages; formatted only
    when an error is raised, never on the per-entry path."""
    cdef str what
    cdef object prev

    def __cinit__(self, str what, prev):
        self.what = what
        self.prev = prev

    def __str__(self):
        if self.prev is None:
            return "first tar header" if self.what == "header" else f"{self.what} at the start of the layer"
        return f"{self.what} after entry {_show(self.prev)}"

    def __format__(self, spec):
        return format(str(self), spec)


cdef class _AtEntry:
    """An error in one of an entry's PAX values names the entry (its PAX path, if it has one), not
    the header's place in the stream ("first tar header"), which the user cannot look up."""
    cdef object name

    def __cinit__(self, name):
        self.name = name

    def __str__(self):
        return f"entry {_show(self.name)}"

    def __format__(self, spec):
        return format(str(self), spec)


def parse_pax(bytes data, where):
    """PAX extended header records "LEN key=value\\n" -> {key: value}.

    An empty value unsets a key (POSIX) except for xattrs, where it is an
    xattr with an empty value (GNU tar and libarchive agree).  A key with a
    NUL is refused (Go refuses it; C readers would cut the key at the NUL).
    GNU sparse 0.0 repeats GNU.sparse.offset / GNU.sparse.numbytes once per
    region: those are collected, in order, into one GNU.sparse.map value as
    Go does, so the 0.0 and 0.1 forms read alike."""
    cdef Py_ssize_t pos = 0, n = len(data), sp, length
    out = {}
    sparse = []
    while pos < n:
        if data[pos] == 0:
            # GNU tar applies the records before the NULs, bsdtar drops them all, Go refuses
            raise _errors.InvalidArchiveError(
                f"{where}: NUL bytes after the PAX records, at offset {pos} (tar readers disagree on the records)")
        sp = data.find(b" ", pos, min(n, pos + 24))
        if sp < 0 or not data[pos:sp].isdigit():
            raise _errors.InvalidArchiveError(f"{where}: malformed PAX record at offset {pos}")
        length = int(data[pos:sp])
        if length <= sp - pos + 1 or pos + length > n or data[pos + length - 1] != 10:
            raise _errors.InvalidArchiveError(f"{where}: malformed PAX record at offset {pos}")
        rec = data[sp + 1:pos + length - 1]
        eq = rec.find(b"=")
        if eq <= 0:
            raise _errors.InvalidArchiveError(f"{where}: malformed PAX record at offset {pos}")
        key = rec[:eq]
        if b"\0" in key:
            raise _errors.InvalidArchiveError(f"{where}: NUL byte in PAX record key {_show(key)}")
        if key[0] == 32:
            # GNU tar skips every space after the length (" path" is "path" to it); bsdtar
            # and Go read the key with them, a key they do not know
            raise _errors.InvalidArchiveError(f"{where}: PAX record key {_show(key)} starts with a space")
        if key == b"GNU.sparse.offset" or key == b"GNU.sparse.numbytes":
            if (key == b"GNU.sparse.offset") != (len(sparse) % 2 == 0) or b"," in rec[eq + 1:]:
                raise _errors.InvalidArchiveError(f"{where}: GNU sparse 0.0 records out of order")
            sparse.append(rec[eq + 1:])
        else:
            value = rec[eq + 1:]
            if key.startswith(b"GNU.sparse.") and out.get(key, value) != value:
                # Go takes the last record, bsdtar the first map (GNU tar joins or fails):
                # the same bytes would land at other offsets of the file
                raise _errors.InvalidArchiveError(
                    f"{where}: PAX record {_show(key)} given twice with different values "
                    "(tar readers disagree on which applies)")
            out[key] = value
        pos += length
    if sparse:
        if b"GNU.sparse.map" in out:
            # Go reads the 0.0 records, bsdtar whichever form came first
            raise _errors.InvalidArchiveError(
                f"{where}: GNU sparse map given both as GNU.sparse.map and as 0.0 offset/numbytes records "
                "(tar readers disagree on which applies)")
        out[b"GNU.sparse.map"] = b",".join(sparse)
    return out


def _acl_last(item):
    """Sort key putting the ACLs (an xattr name, or a (name, value) pair) after the other xattrs."""
    k = item[0] if isinstance(item, tuple) else item
    return k in (ACL_ACCESS, ACL_DEFAULT, "system.posix_acl_access", "system.posix_acl_default")


cdef inline bint _is_xattr_key(bytes k):
    return k.startswith(b"SCHILY.xattr.") or k.startswith(b"LIBARCHIVE.xattr.")


INT64_MAX = (1 << 63) - 1
UINT32_MAX = (1 << 32) - 1


def _decimal(text, maxval=INT64_MAX):
    """A non-negative decimal of ASCII digits only, up to ``maxval``, else None
    (Python's int() would also take "+", "_", spaces and other scripts' digits)."""
    if text is None or not text.isdigit():
        return None
    # leading zeros are fine (Go's pax-pos-size-file.tar), however many: int() of the whole
    # text raised ValueError past 4300 digits (sys.int_max_str_digits), a crash, not an error
    digits = text.lstrip(b"0")
    if len(digits) > 19:
        return None
    v = int(digits) if digits else 0
    return v if v <= maxval else None


def _pax_time(bytes value, where, key="mtime"):
    """PAX time "[sign]sec[.frac]" -> (sec, nsec), negative times included; strictly decimal
    but for one leading sign, as Go reads it (strconv.ParseInt: "+5" is 5; no "_" or spaces,
    which Python's int() would take)."""
    m = _PAX_TIME.fullmatch(value)
    negative = m is not None and m.group(1) == b"-"
    # a negative one may be -2^63 (GNU tar's time01 test writes it; Go reads it)
    sec = _decimal(m.group(2), INT64_MAX + negative) if m is not None else None
    if sec is None:
        raise _errors.InvalidArchiveError(f"{where}: invalid PAX {key} {value!r}")
    frac = m.group(3) or b""
    nsec = int((frac + b"000000000")[:9])
    if negative:
        sec, nsec = -sec, -nsec
        if nsec < 0:
            sec, nsec = sec - 1, nsec + 1000000000
            if sec < -INT64_MAX - 1:  # -2^63 and a fraction
                raise _errors.InvalidArchiveError(f"{where}: invalid PAX {key} {value!r}")
    return sec, nsec


def _pax_int(value, key, where, maxval=INT64_MAX):
    """A non-negative decimal PAX value up to ``maxval`` (uid/gid: 32 bits)."""
    v = _decimal(value, maxval)
    if v is None:
        raise _errors.InvalidArchiveError(f"{where}: invalid or out-of-range PAX {key} {value!r}")
    return v


_BASE64_DIGITS = re.compile(rb"[^A-Za-z0-9+/]")


def _libarchive_base64(bytes value):
    """The value bsdtar reads from a LIBARCHIVE.xattr record (libarchive's base64_decode):
    bytes outside the alphabet skipped, the value ended by the first '=' or '_', a last lone
    digit dropped.  Python's decoder reads on past a '=' or '_' (``QUJD_REVG``: ``ABCDEF``
    where bsdtar sets ``ABC``)."""
    import base64
    cdef Py_ssize_t end = len(value), at
    for c in (b"=", b"_"):
        at = value.find(c, 0, end)
        if at >= 0:
            end = at
    digits = _BASE64_DIGITS.sub(b"", value[:end])
    cdef Py_ssize_t left = len(digits) % 4  # (cdivision: never negative here)
    if left == 1:
        digits = digits[:len(digits) - 1]
    return base64.b64decode(digits + b"=" * ((4 - left) % 4 if left != 1 else 0))


def _libarchive_xattr(bytes key, bytes value):
    """LIBARCHIVE.xattr.<urlencoded name>=<base64 value>."""
    from urllib.parse import unquote_to_bytes
    return unquote_to_bytes(key), _libarchive_base64(value)


NeedsLowers = _errors.NeedsLowers
ImpliedDirMoved = _errors.ImpliedDirMoved

# Set on Ctrl-C (lamina.cli): every extraction, in any thread, stops within a
# few dozen entries or one chunk, whichever comes first.
cancelled = threading.Event()


def _sparse_num(bytes text, name):
    """One decimal number of a sparse map (PAX 0.1 map or 1.0 data prefix)."""
    v = _decimal(text)
    if v is None:
        raise _errors.InvalidArchiveError(f"entry {_show(name)}: invalid sparse map number {text[:40]!r}")
    return v


class HiddenLinkTarget(Exception):
    """A hardlink names a file this extractor skipped as hidden by an upper layer.

    Not a LaminaError: the caller, which chose to skip hidden paths, applies
    the layers again without skipping."""


cdef inline void _close_fds(list fds):
    """Close each fd of ``fds`` that is open (a layer below that does not show the path is -1)."""
    for x in fds:
        if <int>x >= 0:
            close(<int>x)


cdef int _descend(int fd, bytes name):
    """The directory ``name`` under ``fd``, never following a symlink; ``fd``
    is closed either way.  -1 with errno set on failure."""
    cdef int nfd = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    cdef int e = errno
    close(fd)
    if nfd < 0:
        lamina_set_errno(e)
    return nfd


cdef int _walk_plain(int root, bytes path) except -2:
    """openat() one component at a time, never following a symlink.  -1 with errno set when
    a component is not there (or is no directory); a failed dup raises (see _dup_checked)."""
    cdef int fd = _dup_checked(root)
    for c in path.split(b"/"):
        if c:
            fd = _descend(fd, <bytes>c)
            if fd < 0:
                return -1
    return fd


cdef dict _multiply_linked(int root, shared):
    """{(dev, ino): [paths]} of the non-directories with more than one link
    under ``root`` (a finished layer dir), except the ``shared`` paths."""
    cdef int fd
    out = {}
    todo = [b""]
    # depth first, each directory opened from its parent's fd the stack still holds: a tree
    # thousands of levels deep (a symlink of the image led a layer there) costs linear time
    cdef _DirStack stack = _DirStack(root)
    try:
        while todo:
            rel = todo.pop()
            fd = stack.open(rel)  # borrowed
            if fd < 0:
                continue
            with os.scandir(fd) as it:
                for e in it:
                    path = rel + b"/" + os.fsencode(e.name) if rel else os.fsencode(e.name)
                    if e.is_dir(follow_symlinks=False):
                        todo.append(path)
                        continue
                    st = e.stat(follow_symlinks=False)
                    if st.st_nlink > 1 and path not in shared:
                        out.setdefault((st.st_dev, st.st_ino), []).append(path)
    finally:
        stack.close()
    return out


def _current_umask():
    """The process umask, read without changing it (/proc), else by the set-and-restore dance."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


cdef int _dup_checked(int fd) except -2:
    """dup(2) that raises: a walk reads -1 as "this layer has nothing here", so a dup that
    failed (EMFILE) silently hid a layer (the walk then made a directory over its symlink)."""
    cdef int nfd = dup(fd)
    if nfd < 0:
        raise OSError(errno, f"cannot duplicate a layer's directory fd: {os.strerror(errno)}")
    return nfd


cdef int _reset(int fd, int root) except -2:
    """A new fd of ``root`` for ``fd`` (closed).  When that fails ``fd`` is left open, still
    the caller's to close once."""
    cdef int nfd = _dup_checked(root)
    if fd >= 0:
        close(fd)
    return nfd


cdef _copy_data(int src, int dst, int64_t size):
    """A lower file's data into a new file; only its data regions, so a sparse file keeps its holes."""
    cdef long long pos = 0, start, end
    cdef int r
    while pos < size:
        r = lamina_next_data(src, pos, size, &start, &end)
        if r < 0:
            raise OSError(errno, os.strerror(errno), "copy (SEEK_DATA)")
        if r == 0:
            break
        _copy_range(src, dst, start, end - start)
        pos = end
    if os.fstat(dst).st_size != size:
        os.ftruncate(dst, size)


cdef _copy_range(int src, int dst, long long offset, long long size):
    # copy_file_range shares extents where the filesystem can (reflink, NFS server-side)
    left = size
    while left > 0:
        try:
            n = os.copy_file_range(src, dst, min(left, 1 << 30), offset, offset)
        except OSError:
            os.lseek(dst, offset, os.SEEK_SET)
            n = os.sendfile(dst, src, offset, min(left, 1 << 30))
        if n <= 0:
            break
        left -= n
        offset += n


def _components(bytes path):
    return path.split(b"/") if path else []


def _sort_key(bytes path):
    """Orders paths as _components does (names have no NUL)."""
    return path.replace(b"/", b"\0")


# bytes the _NameStores of an extraction hold in memory (it has up to four, a quarter each:
# LAMINA_NAMES_HELD; tests make it tiny, so that every lookup reads spilled names back)
cdef int64_t NAMES_HELD = int(os.environ.get("LAMINA_NAMES_HELD") or 4 << 20)
DEF NAME_BLOCK = 4096          # bytes of spilled records a lookup reads at once (a block of a run)
DEF NAME_WRITE = 1 << 16       # bytes of spilled records written at once
cdef extern from "<endian.h>" nogil:
    uint64_t htobe64(uint64_t)

cdef extern from *:
    """
    #define LAMINA_GROUP_BIT 0x80000000u
    #define LAMINA_NO_NAME 0xFFFFFFFFu
    """
    const uint32_t GROUP_BIT "LAMINA_GROUP_BIT"  # in the memory arena: this length word starts a directory's key
    const uint32_t NO_NAME "LAMINA_NO_NAME"      # an empty slot of the memory table

cdef extern from "<stdlib.h>" nogil:
    void qsort_r(void *base, size_t nmemb, size_t size,
                 int (*compar)(const void *, const void *, void *) noexcept nogil, void *arg)


cdef struct _NameSlot:
    uint64_t h
    uint32_t g                 # where the directory's key is in the arena
    uint32_t o                 # where the name is (NO_NAME: an empty slot)


cdef inline int _cmp_pair(const char *d1, size_t dl1, const char *n1, size_t nl1,
                          const char *d2, size_t dl2, const char *n2, size_t nl2) noexcept nogil:
    """(directory key, name) pairs in the order of Python's tuples of bytes (heapq.merge of runs)."""
    cdef int c = memcmp(d1, d2, dl1 if dl1 < dl2 else dl2)
    if c == 0 and dl1 != dl2:
        c = -1 if dl1 < dl2 else 1
    if c != 0:
        return c
    c = memcmp(n1, n2, nl1 if nl1 < nl2 else nl2)
    if c == 0 and nl1 != nl2:
        c = -1 if nl1 < nl2 else 1
    return c


cdef inline uint32_t _word(const char *p) noexcept nogil:
    cdef uint32_t w
    memcpy(&w, p, 4)
    return w


cdef int _cmp_mem(const void *a, const void *b, void *arena) noexcept nogil:
    """Two names of the memory arena, as (group offset << 32 | name offset)."""
    cdef const char *base = <const char *>arena
    cdef uint64_t x = (<const uint64_t *>a)[0], y = (<const uint64_t *>b)[0]
    cdef const char *g1 = base + (x >> 32)
    cdef const char *g2 = base + (y >> 32)
    cdef const char *n1 = base + <uint32_t>x
    cdef const char *n2 = base + <uint32_t>y
    return _cmp_pair(g1 + 4, _word(g1) & ~GROUP_BIT, n1 + 4, _word(n1), g2 + 4, _word(g2) & ~GROUP_BIT, n2 + 4, _word(n2))


cdef inline uint64_t _pair_hash(bytes d, bytes n):
    # Python's hashes of bytes: keyed per process, so an image cannot aim names at one slot
    return (<uint64_t>hash(d)) * <uint64_t>0x9E3779B97F4A7C15ULL ^ <uint64_t>hash(n)


cdef void *_grown(void *p, size_t size) except NULL:
    cdef void *q = realloc(p, size)
    if q == NULL:
        raise MemoryError()
    return q


cdef class _NameRun:
    """One sorted run of a _NameStore's temp file: records (u32 key length, u32 name length,
    key, name) in blocks of about NAME_BLOCK bytes, and in memory each block's first record
    (~1% of the run) to find the one block a lookup reads."""
    cdef int64_t *boff         # where each block starts in the file, and the run's end (nblocks + 1)
    cdef size_t *koff          # where each block's first record is in ``keys``
    cdef char *keys
    cdef size_t nblocks, cap, kused, ksize
    cdef bytes last_d, last_n      # the run's last record: a lookup past it reads no block
    cdef char *block           # the block read last (a run of lookups in one directory reads it once)
    cdef size_t bsize
    cdef int64_t cached

    def __cinit__(self):
        self.cached = -1

    def __dealloc__(self):
        free(self.boff)
        free(self.koff)
        free(self.keys)
        free(self.block)

    cdef int start_block(self, int64_t at, const char *rec, size_t length) except -1:
        cdef size_t cap
        if self.nblocks + 2 > self.cap:
            cap = self.cap * 2 if self.cap else 8
            self.boff = <int64_t *>_grown(self.boff, cap * sizeof(int64_t))
            self.koff = <size_t *>_grown(self.koff, cap * sizeof(size_t))
            self.cap = cap
        if self.kused + length > self.ksize:
            self.ksize = max(self.kused + length, 2 * self.ksize, 256)
            self.keys = <char *>_grown(self.keys, self.ksize)
        memcpy(self.keys + self.kused, rec, length)
        self.boff[self.nblocks] = at
        self.koff[self.nblocks] = self.kused
        self.kused += length
        self.nblocks += 1
        return 0

    cdef const char *read(self, int fd, size_t i, size_t *length) except NULL:
        cdef size_t n = <size_t>(self.boff[i + 1] - self.boff[i])
        if <int64_t>i != self.cached:
            if n > self.bsize:
                self.block = <char *>_grown(self.block, n)
                self.bsize = n
            self.cached = -1
            if pread(fd, self.block, n, self.boff[i]) != <ssize_t>n:
                raise _errors.ExtractError("the temp file of the names written so far is short")
            self.cached = i
        length[0] = n
        return self.block

    cdef size_t nbytes(self):
        return self.cap * (sizeof(int64_t) + sizeof(size_t)) + self.ksize + self.bsize


cdef class _NameStore:
    """A set of (directory key, name) pairs of bytes: the names of the non-directories a layer
    wrote in each directory (``Extractor.created_leaves``, ``created_in``, ``provided_leaves``).
    In memory a directory's key is kept once for a run of names added in it (tar order), each
    name by its bytes (a lookup table of 16 B a name is built only once a lookup comes); beyond
    NAMES_HELD / 4 bytes (names and table) they are sorted into a run of an unlinked temp file
    (TMPDIR), of which only a block's first record in ~4 KiB and the run's last record stay in
    memory.  One _Names object and a dict entry a directory, twice over, cost ~0.6 KB a
    directory: 100 MiB of a 200k-directory layer's RSS.  A lookup reads at most one block a run
    (none past its last record); once lookups have read more blocks than the runs hold (a layer
    checking its own names over and over, in no order), the runs are merged into one."""
    cdef char *arena           # u32 words: GROUP_BIT | key length, then the key; a name's length, then it
    cdef size_t used, size, budget
    cdef uint32_t group        # where the current directory's key is in the arena
    cdef bytes cur             # and that key (None: no name held)
    cdef size_t held           # names in the arena
    cdef _NameSlot *slots      # lookup table of the arena's names (NULL: not built since the last spill)
    cdef size_t cap
    cdef list runs
    cdef object f              # the temp file (None until the first spill)
    cdef int fd                # and its fd
    cdef int64_t end           # bytes written to it
    cdef int64_t on_disk       # blocks in the runs
    cdef int64_t reads         # blocks read by lookups since the runs were last merged
    cdef char *wbuf            # records being written
    cdef size_t wused, wsize
    cdef int64_t fill          # bytes in the block being written (-1: start a block at the next record)
    cdef _NameRun wrun
    cdef readonly int64_t n    # names added (a name added twice counts twice)

    def __cinit__(self):
        self.runs = []
        self.budget = <size_t>min(max(NAMES_HELD // 4, 1), 1 << 30)

    def __dealloc__(self):
        free(self.arena)
        free(self.slots)
        free(self.wbuf)

    cdef int _put(self, uint32_t word, const char *p, size_t length) except -1:
        cdef size_t need = self.used + 4 + length
        if need > self.size:
            self.size = max(need, 2 * self.size, 4096)
            self.arena = <char *>_grown(self.arena, self.size)
        memcpy(self.arena + self.used, &word, 4)
        memcpy(self.arena + self.used + 4, p, length)
        self.used = need
        return 0

    cdef int add(self, bytes d, bytes n) except -1:
        cdef uint32_t at
        if d is not self.cur:
            if self.cur is None or self.cur != d:
                self.group = <uint32_t>self.used
                self._put(GROUP_BIT | <uint32_t>len(d), d, len(d))
            self.cur = d
        at = <uint32_t>self.used
        self._put(<uint32_t>len(n), n, len(n))
        self.n += 1
        self.held += 1
        if self.slots != NULL:
            self._insert(_pair_hash(d, n), self.group, at)
        if self.used + self.cap * sizeof(_NameSlot) > self.budget:
            self._spill()
        return 0

    cdef int _insert(self, uint64_t h, uint32_t g, uint32_t o) except -1:
        cdef size_t i, mask
        if 2 * (self.held + 1) > self.cap:
            self._grow()
        mask = self.cap - 1
        i = <size_t>(h * <uint64_t>0x9E3779B97F4A7C15ULL >> 7) & mask
        while self.slots[i].o != NO_NAME:
            i = (i + 1) & mask
        self.slots[i].h = h
        self.slots[i].g = g
        self.slots[i].o = o
        return 0

    cdef int _grow(self) except -1:
        cdef _NameSlot *old = self.slots
        cdef size_t old_cap = self.cap, j, i, mask
        cdef size_t cap = old_cap * 2 if old_cap else 16  # small: the table counts in the budget
        while cap < 2 * (self.held + 1):
            cap *= 2
        new = <_NameSlot *>malloc(cap * sizeof(_NameSlot))
        if new == NULL:
            raise MemoryError()
        memset(new, 0xff, cap * sizeof(_NameSlot))
        mask = cap - 1
        for j in range(old_cap):
            if old[j].o != NO_NAME:
                i = <size_t>(old[j].h * <uint64_t>0x9E3779B97F4A7C15ULL >> 7) & mask
                while new[i].o != NO_NAME:
                    i = (i + 1) & mask
                new[i] = old[j]
        free(old)
        self.slots = new
        self.cap = cap
        return 0

    cdef int _build(self) except -1:
        """The lookup table of the names in the arena (kept in step by add until the next spill)."""
        cdef size_t at = 0
        cdef uint32_t w, g = 0
        cdef bytes d = b""
        self._grow()
        while at < self.used:
            w = _word(self.arena + at)
            if w & GROUP_BIT:
                g = <uint32_t>at
                d = self.arena[at + 4:at + 4 + (w & ~GROUP_BIT)]
            else:
                self._insert(_pair_hash(d, self.arena[at + 4:at + 4 + w]), g, <uint32_t>at)
            at += 4 + (w & ~GROUP_BIT)
        return 0

    cdef bint _held(self, bytes d, bytes n) except -1:
        cdef uint64_t h = _pair_hash(d, n)
        cdef size_t mask, i
        cdef const char *p
        if self.held == 0:
            return False
        if self.slots == NULL:
            self._build()
        mask = self.cap - 1
        i = <size_t>(h * <uint64_t>0x9E3779B97F4A7C15ULL >> 7) & mask
        while self.slots[i].o != NO_NAME:
            if self.slots[i].h == h:
                p = self.arena + self.slots[i].o
                if _word(p) == <uint32_t>len(n) and memcmp(p + 4, <const char *>n, len(n)) == 0:
                    p = self.arena + self.slots[i].g
                    if (_word(p) & ~GROUP_BIT) == <uint32_t>len(d) and memcmp(p + 4, <const char *>d, len(d)) == 0:
                        return True
            i = (i + 1) & mask
        return False

    cdef bint has(self, bytes d, bytes n) except -1:
        """Was ``n`` added in ``d``?"""
        cdef _NameRun run
        if self.n == 0:
            return False
        if self.reads > self.on_disk and len(self.runs) > 1:
            self._merge()
        if self._held(d, n):
            return True
        for run in self.runs:
            if self._in_run(run, d, n):
                return True
        return False

    cdef bint _in_run(self, _NameRun run, bytes d, bytes n) except -1:
        cdef size_t lo = 0, hi = run.nblocks, mid, length, at = 0
        cdef const char *p
        cdef const char *blk
        cdef uint32_t dl, nl
        cdef int c
        cdef int64_t before = run.cached
        if _cmp_pair(run.last_d, len(run.last_d), run.last_n, len(run.last_n), d, len(d), n, len(n)) < 0:
            return False
        while lo < hi:  # the first block whose first record is after (d, n)
            mid = (lo + hi) // 2
            p = run.keys + run.koff[mid]
            dl = _word(p)
            nl = _word(p + 4)
            if _cmp_pair(p + 8, dl, p + 8 + dl, nl, d, len(d), n, len(n)) <= 0:
                lo = mid + 1
            else:
                hi = mid
        if lo == 0:
            return False
        blk = run.read(self.fd, lo - 1, &length)
        if run.cached != before:
            self.reads += 1
        while at < length:
            dl = _word(blk + at)
            nl = _word(blk + at + 4)
            c = _cmp_pair(blk + at + 8, dl, blk + at + 8 + dl, nl, d, len(d), n, len(n))
            if c == 0:
                return True
            if c > 0:
                return False
            at += 8 + dl + nl
        return False

    cdef int _write(self, const char *d, uint32_t dl, const char *n, uint32_t nl) except -1:
        """One record to the run being written (self.wrun), in order."""
        cdef size_t length = 8 + dl + nl
        cdef char *p
        if self.wused + length > self.wsize:
            self._flush()
            if length > self.wsize:
                self.wsize = max(length, NAME_WRITE)
                self.wbuf = <char *>_grown(self.wbuf, self.wsize)
        p = self.wbuf + self.wused
        memcpy(p, &dl, 4)
        memcpy(p + 4, &nl, 4)
        memcpy(p + 8, d, dl)
        memcpy(p + 8 + dl, n, nl)
        if self.fill < 0 or self.fill >= NAME_BLOCK:
            self.wrun.start_block(self.end + <int64_t>self.wused, p, length)
            self.on_disk += 1
            self.fill = 0
        self.fill += length
        self.wused += length
        return 0

    cdef int _flush(self) except -1:
        if self.wused:
            if pwrite(self.fd, self.wbuf, self.wused, self.end) != <ssize_t>self.wused:
                raise _errors.ExtractError("short write to the temp file of the names written so far")
            self.end += self.wused
            self.wused = 0
        return 0

    cdef int _begin_run(self) except -1:
        if self.f is None:
            import tempfile
            self.f = tempfile.TemporaryFile(prefix="lamina-names-")
            self.fd = self.f.fileno()
        if self.wbuf == NULL:
            self.wsize = NAME_WRITE
            self.wbuf = <char *>_grown(NULL, self.wsize)
        self.wrun = _NameRun()
        self.fill = -1
        return 0

    cdef int _end_run(self, bytes last_d, bytes last_n) except -1:
        self._flush()
        run = self.wrun
        self.wrun = None
        run.last_d = last_d
        run.last_n = last_n
        run.boff[run.nblocks] = self.end  # start_block keeps a spare entry
        self.runs.append(run)
        return 0

    cdef int _spill(self) except -1:
        """The arena's names, sorted and without repeats, as a new run."""
        cdef uint64_t *order = <uint64_t *>malloc(self.held * sizeof(uint64_t) + 8)
        cdef size_t at = 0, k = 0, i
        cdef uint32_t w, g = 0
        cdef const char *pg
        cdef const char *pn
        if order == NULL:
            raise MemoryError()
        try:
            while at < self.used:
                w = _word(self.arena + at)
                if w & GROUP_BIT:
                    g = <uint32_t>at
                else:
                    order[k] = (<uint64_t>g << 32) | at
                    k += 1
                at += 4 + (w & ~GROUP_BIT)
            qsort_r(order, k, sizeof(uint64_t), _cmp_mem, self.arena)
            self._begin_run()
            for i in range(k):
                if i and _cmp_mem(&order[i - 1], &order[i], self.arena) == 0:
                    continue
                pg = self.arena + (order[i] >> 32)
                pn = self.arena + <uint32_t>order[i]
                self._write(pg + 4, _word(pg) & ~GROUP_BIT, pn + 4, _word(pn))
            pg = self.arena + (order[k - 1] >> 32)
            pn = self.arena + <uint32_t>order[k - 1]
            self._end_run(pg[4:4 + (_word(pg) & ~GROUP_BIT)], pn[4:4 + _word(pn)])
        finally:
            free(order)
        self.used = 0
        self.held = 0
        self.cur = None
        free(self.slots)
        self.slots = NULL
        self.cap = 0
        return 0

    def _records(self, _NameRun run, int fd):
        cdef size_t i, at, length
        cdef uint32_t dl, nl
        for i in range(run.nblocks):
            length = <size_t>(run.boff[i + 1] - run.boff[i])
            data = os.pread(fd, length, run.boff[i])
            if len(data) != length:
                raise _errors.ExtractError("the temp file of the names written so far is short")
            at = 0
            while at < length:
                dl = _word(<const char *>data + at)
                nl = _word(<const char *>data + at + 4)
                yield data[at + 8:at + 8 + dl], data[at + 8 + dl:at + 8 + dl + nl]
                at += 8 + dl + nl

    cdef int _merge(self) except -1:
        """All runs as one, in a new temp file: a lookup then reads one block, not one a run."""
        old, runs = self.f, self.runs
        fd = old.fileno()
        self.f = None
        self.runs = []
        self.end = self.on_disk = self.reads = 0
        self._begin_run()
        prev = None
        for rec in heapq.merge(*[self._records(r, fd) for r in runs]):
            if rec != prev:
                self._write(<bytes>rec[0], len(rec[0]), <bytes>rec[1], len(rec[1]))
                prev = rec
        self._end_run(prev[0], prev[1])
        old.close()
        return 0

    cdef void close(self):
        if self.f is not None:
            self.f.close()
            self.f = None
        self.runs = []
        self.wrun = None
        free(self.arena)
        free(self.slots)
        free(self.wbuf)
        self.arena = NULL
        self.slots = NULL
        self.wbuf = NULL
        self.used = self.size = self.cap = self.held = self.wused = self.wsize = 0
        self.end = self.on_disk = self.reads = self.n = 0
        self.cur = None

    cdef size_t nbytes(self):
        """Bytes held in memory (arena, lookup table, the runs' indexes and cached blocks): of the
        arena what it uses, the pages of its allocation beyond that are not touched yet."""
        cdef _NameRun run
        cdef size_t total = self.used + self.cap * sizeof(_NameSlot) + self.wsize
        for run in self.runs:
            total += run.nbytes()
        return total

# directory fixup records (and their resolutions at the layer's end) one sort holds in memory;
# past it they go, sorted, to an unlinked temp file (LAMINA_FIXUPS_HELD: tests make it tiny, so
# that every record goes through the file and the merge of its runs)
cdef Py_ssize_t FIXUPS_HELD = int(os.environ.get("LAMINA_FIXUPS_HELD") or 1 << 14)
# records a spilled run is written and read back in (what each run costs in memory while merged)
cdef Py_ssize_t SPILL_BLOCK = 128


def _drain(list items):
    """``items`` from the last, each let go as it is handed out: the next sort fills as this one
    empties, so that the layer's end does not hold all three."""
    while items:
        yield items.pop()


cdef class _SpillSort:
    """Tuples sorted by their natural order: up to FIXUPS_HELD in memory, beyond that in sorted
    runs in an unlinked temp file (TMPDIR), merged when read back (``sorted``).  A directory's
    fixup cost ~430 B in dicts until the layer ended (a fixup by path, its inode by path): 82 MiB
    of a 200k-directory layer's peak RSS, and its sort at the end as much again."""
    cdef list items
    cdef list runs             # per run, array("q") of (offset, length) of its marshalled blocks
    cdef object f
    cdef int64_t end
    cdef bint reverse

    def __cinit__(self, bint reverse=False):
        self.items = []
        self.runs = []
        self.reverse = reverse

    cdef inline int add(self, tuple item) except -1:
        self.items.append(item)
        if len(self.items) >= FIXUPS_HELD:
            self._spill()
        return 0

    cdef int _spill(self) except -1:
        cdef Py_ssize_t i
        items = self.items
        self.items = []
        items.sort(reverse=self.reverse)
        if self.f is None:
            import tempfile
            self.f = tempfile.TemporaryFile(prefix="lamina-fixups-")
        blocks = array("q")
        for i in range(0, len(items), SPILL_BLOCK):
            data = marshal.dumps(items[i:i + SPILL_BLOCK])
            if os.pwrite(self.f.fileno(), data, self.end) != len(data):
                raise _errors.ExtractError("short write to the temp file of the directory fixups")
            blocks.append(self.end)
            blocks.append(len(data))
            self.end += len(data)
        self.runs.append(blocks)
        return 0

    def _run(self, blocks):
        fd = self.f.fileno()
        for i in range(0, len(blocks), 2):
            data = os.pread(fd, blocks[i + 1], blocks[i])
            if len(data) != blocks[i + 1]:
                raise _errors.ExtractError("the temp file of the directory fixups is short")
            yield from marshal.loads(data)

    def sorted(self):
        """All items, in order (once: the sort is emptied)."""
        if not self.runs:
            items = self.items
            self.items = []
            items.sort(reverse=not self.reverse)
            return _drain(items)
        if self.items:
            self._spill()
        runs = self.runs
        self.runs = []
        return heapq.merge(*[self._run(b) for b in runs], reverse=self.reverse)

    cdef void close(self):
        if self.f is not None:
            self.f.close()
            self.f = None
        self.items = []
        self.runs = []
        self.end = 0


# kinds of fixup records (_Fixups), as the dicts they replaced were written
cdef enum:
    FX_DIR = 0      # dir_fixups[path] = (mode, sec, nsec) (and fixup_ino[path] = (dev, ino) if given)
    FX_INO = 1      # fixup_ino[path] = (dev, ino)
    FX_TIME = 2     # parent_times.setdefault(path, (sec, nsec)); fixup_ino.setdefault(path, (dev, ino))
    FX_MODE = 3     # restore_modes.setdefault(path, mode); fixup_ino.setdefault(path, (dev, ino))
    FX_FORGET = 4   # all of them popped (a directory removed: one made there later is another)


cdef class _Fixups:
    """What the directories of a layer get once it is written (mode, times), and which inode each
    record is for: records appended as the layer goes (a later one overrides or yields as a dict
    assignment or setdefault would), resolved at the end by three sorts that spill (_SpillSort):
    by path (the records of one directory), by inode (a directory reached under several names:
    ``t``, and ``l/`` with ``l -> t``, see ``resolved``), by path deepest first (to apply them)."""
    cdef _SpillSort records
    cdef int64_t seq
    cdef readonly int64_t n        # records since the last reset (0: nothing to fix up)
    cdef bytes last_time           # the path of the last FX_TIME: a run of entries in one
                                   # directory records its time once, not once an entry
    cdef bytes last_dir            # the path of the last FX_DIR: its entries need no FX_TIME

    def __cinit__(self):
        self.records = _SpillSort()

    cdef inline int _add(self, bytes path, int kind, object a, object b, object c, object dev, object ino) except -1:
        self.seq += 1
        self.n += 1
        return self.records.add((path, self.seq, kind, a, b, c, dev, ino))

    cdef int dir(self, bytes path, int64_t mode, int64_t sec, int64_t nsec, stat *st) except -1:
        self.last_dir = path
        if st == NULL:
            return self._add(path, FX_DIR, mode, sec, nsec, None, None)
        return self._add(path, FX_DIR, mode, sec, nsec, st.st_dev, st.st_ino)

    cdef int ino(self, bytes path, stat *st) except -1:
        return self._add(path, FX_INO, None, None, None, st.st_dev, st.st_ino)

    cdef inline bint has_time(self, bytes path):
        """A time is recorded for ``path`` already, or needs none (its FX_DIR wins over any):
        False: maybe not; another record is harmless."""
        return ((self.last_time is not None and self.last_time == path)
                or (self.last_dir is not None and self.last_dir == path))

    cdef int time(self, bytes path, stat *st) except -1:
        if self.has_time(path):
            return 0
        self.last_time = path
        return self._add(path, FX_TIME, st.st_mtim.tv_sec, st.st_mtim.tv_nsec, None, st.st_dev, st.st_ino)

    cdef int mode(self, bytes path, stat *st) except -1:
        return self._add(path, FX_MODE, st.st_mode & 0o7777, None, None, st.st_dev, st.st_ino)

    cdef int forget(self, bytes path) except -1:
        self.last_time = self.last_dir = None
        return self._add(path, FX_FORGET, None, None, None, None, None)

    def resolved(self):
        """(sort key, mode or None, sec or None, nsec, dev, ino, listed) per directory, deepest
        first (the sort key is the path with "/" as NUL, see _sort_key; dev and ino None: no
        inode known; listed: an entry of the layer (or a copy-up) gave its mode and time)."""
        by_inode = _SpillSort()
        todo = _SpillSort(reverse=True)
        try:
            for path, d, dseq, t, tseq, m, mseq, key in _by_path(self.records.sorted()):
                if key is None:  # no other name can share its record
                    _own(todo, [(None, None, path, d, dseq, t, tseq, m, mseq)])
                else:
                    by_inode.add((key[0], key[1], path, d, dseq, t, tseq, m, mseq))
            self.reset()
            group = []
            for rec in by_inode.sorted():
                if group and (group[0][0] != rec[0] or group[0][1] != rec[1]):
                    _own(todo, group)
                    group = []
                group.append(rec)
            if group:
                _own(todo, group)
            by_inode.close()
            yield from todo.sorted()
        finally:
            by_inode.close()
            todo.close()

    cdef void reset(self):
        self.records.close()
        self.seq = 0
        self.n = 0
        self.last_time = self.last_dir = None


def _by_path(records):
    """Records sorted by (path, seq) -> per path (path, (mode, sec, nsec) or None and the seq it
    was first recorded with since the last forget (a dict keeps the first insertion's place),
    (sec, nsec) or None and its seq, restore mode or None and its seq, (dev, ino) or None):
    what dir_fixups, parent_times, restore_modes and fixup_ino held for it."""
    cur = None
    d = t = m = key = first_key = None
    dseq = tseq = mseq = 0
    for path, seq, kind, a, b, c, dev, ino in records:
        if path != cur:
            if cur is not None and (d is not None or t is not None or m is not None):
                yield cur, d, dseq, t, tseq, m, mseq, key if key is not None else first_key
            cur = path
            d = t = m = key = first_key = None
        if kind == FX_DIR:
            if d is None:
                dseq = seq
            d = (a, b, c)
            if dev is not None:
                key = (dev, ino)
        elif kind == FX_INO:
            key = (dev, ino)
        elif kind == FX_TIME:
            if t is None:
                t = (a, b)
                tseq = seq
            if first_key is None:
                first_key = (dev, ino)
        elif kind == FX_MODE:
            if m is None:
                m = a
                mseq = seq
            if first_key is None:
                first_key = (dev, ino)
        else:  # FX_FORGET
            d = t = m = key = first_key = None
    if cur is not None and (d is not None or t is not None or m is not None):
        yield cur, d, dseq, t, tseq, m, mseq, key if key is not None else first_key


cdef int _own(_SpillSort todo, list group) except -1:
    """One fixup per directory, from the per-path records of the names that reached one inode
    (``group``: (dev, ino, path, dir, its seq, time, its seq, mode, its seq)): the entry's own
    mode and time (a ``dir``) win, else the first time and mode recorded, which are from before
    the layer touched it under any name.  A later record may hold this layer's own changes (t's
    time once files went in through l).  The paths' records are taken in the order they were
    first made, as the dicts of dir_fixups, parent_times and restore_modes were iterated."""
    cdef dict out = {}
    owner = None
    listed = set()
    best = -1
    for rec in group:
        if rec[3] is not None:
            listed.add(rec[2])
            if rec[4] > best:  # the last listed name to claim the inode
                best = rec[4]
                owner = rec[2]
    if len(group) > 1:
        group = sorted(group, key=_time_order)
    for rec in group:
        if rec[5] is None or rec[2] in listed:
            continue
        if owner is None:
            owner = rec[2]
        elif owner != rec[2]:
            continue
        out[rec[2]] = (None, rec[5][0], rec[5][1])
    if len(group) > 1:
        group = sorted(group, key=_mode_order)
    for rec in group:
        if rec[7] is None or rec[2] in listed:
            continue
        path = rec[2]
        if rec[0] is not None:
            if owner is None:
                owner = path
            if owner in listed:
                continue
            path = owner
        old = out.get(path)
        if old is None:
            out[path] = (rec[7], None, None)
        elif old[0] is None:
            out[path] = (rec[7], old[1], old[2])
    for rec in group:
        if rec[3] is not None:
            out[rec[2]] = rec[3]
    for path, (mode, sec, nsec) in out.items():
        todo.add((_sort_key(path), mode, sec, nsec, group[0][0], group[0][1], path in listed))
    return 0


def _time_order(rec):
    return rec[6]


def _mode_order(rec):
    return rec[8]


cdef struct _Ino:
    uint64_t dev
    uint64_t ino


cdef inline bytes _ino_bytes(uint64_t dev, uint64_t ino):
    """(dev, ino) of a directory as the key of its names in a _NameStore, big-endian: keys sort
    as inode numbers, which a filesystem hands out mostly in creation order, so that each run
    of the store covers its own range of them (see _NameStore._in_run)."""
    cdef _Ino k
    k.dev = htobe64(dev)
    k.ino = htobe64(ino)
    return (<char *>&k)[:sizeof(_Ino)]


cdef class _InodeSet:
    """A set of (dev, ino) pairs, bounded in memory: a _NameStore of their _ino_bytes.  An
    open-addressed table of them all cost 32-64 B a directory (8 MiB of a 200k-directory layer's
    peak RSS, 16 MiB while it grew)."""
    cdef _NameStore keys
    cdef readonly size_t n

    def __cinit__(self):
        self.keys = _NameStore()

    cdef bint has(self, uint64_t dev, uint64_t ino) except -1:
        return self.n > 0 and self.keys.has(_ino_bytes(dev, ino), b"")

    cdef int add(self, uint64_t dev, uint64_t ino) except -1:
        """1 if (dev, ino) is new, 0 if it was there."""
        key = _ino_bytes(dev, ino)
        if self.n > 0 and self.keys.has(key, b""):
            return 0
        self.keys.add(key, b"")
        self.n += 1
        return 1

    cdef size_t nbytes(self):
        return self.keys.nbytes()


cdef class _PathSet:
    """A set of paths (bytes), bounded in memory: a _NameStore of (path, b"").  Each path in an
    arena and a slot of an open-addressed table cost ~75 B a directory (15 MiB of a
    200k-directory layer's peak RSS)."""
    cdef _NameStore keys
    cdef readonly size_t n

    def __cinit__(self):
        self.keys = _NameStore()

    cdef bint has(self, bytes path) except -1:
        return self.n > 0 and self.keys.has(path, b"")

    cdef int add(self, bytes path) except -1:
        """1 if ``path`` is new, 0 if it was there."""
        if self.n > 0 and self.keys.has(path, b""):
            return 0
        self.keys.add(path, b"")
        self.n += 1
        return 1

    cdef size_t nbytes(self):
        return self.keys.nbytes()


# Directories a _DirStack keeps open along its path; the ones above are closed and opened again
# through ".." when the walk comes back up to them.  A layer's own symlinks lead its tree
# thousands of levels down (test_hostile_deep.py): an fd per level ran out of fds ("Too many
# open files").
DEF DIRSTACK_OPEN_LEVELS = 32


cdef class _DirStack:
    """Open directories along the last path asked for, so that walking a
    sorted list of paths opens each directory about once (no symlinks followed),
    with at most DIRSTACK_OPEN_LEVELS of them open whatever the depth."""
    cdef int root
    cdef list names, fds, ids   # fds[i]: the directory names[:i + 1] leads to, -1 once closed,
    cdef Py_ssize_t lowest      # then ids[i] its (dev, ino); fds[lowest:] are open

    def __cinit__(self, int root):
        self.root = root
        self.names = []
        self.fds = []
        self.ids = []
        self.lowest = 0

    cdef int _push(self, int fd, bytes name) except -2:
        """The directory ``name`` under ``fd`` as the next level, or -1 with errno; past
        DIRSTACK_OPEN_LEVELS open, the shallowest is closed."""
        cdef int nfd = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if nfd < 0:
            return -1
        self.names.append(name)
        self.fds.append(nfd)
        self.ids.append(None)
        while len(self.fds) - self.lowest > DIRSTACK_OPEN_LEVELS:
            st = os.fstat(<int>self.fds[self.lowest])
            self.ids[self.lowest] = (st.st_dev, st.st_ino)
            close(<int>self.fds[self.lowest])
            self.fds[self.lowest] = -1
            self.lowest += 1
        return nfd

    cdef int _up_to(self, Py_ssize_t level) except -2:
        """Open the closed level ``level`` again, through ".." from the shallowest open one
        (the levels between are left closed: the caller drops them); 0, or -1 with errno
        (ESTALE: a directory on the way is not the one that was closed)."""
        cdef Py_ssize_t at = self.lowest
        cdef int fd = <int>self.fds[at], nfd
        while at > level:
            nfd = openat(fd, b"..", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if at < self.lowest:
                close(fd)   # opened here, on the way: not in fds
            if nfd < 0:
                return -1
            at -= 1
            st = os.fstat(nfd)
            if (st.st_dev, st.st_ino) != self.ids[at]:
                close(nfd)
                lamina_set_errno(ESTALE)
                return -1
            fd = nfd
        self.fds[level] = fd
        self.lowest = level
        return 0

    cdef int open(self, bytes path) except -2:
        """A borrowed fd for ``path`` (valid until the next call), or -1 with errno."""
        cdef int fd, nfd
        cdef Py_ssize_t keep = 0
        parts = _components(path)
        while keep < len(self.names) and keep < len(parts) and self.names[keep] == parts[keep]:
            keep += 1
        if 0 < keep <= self.lowest and self._up_to(keep - 1) < 0:
            return -1
        while len(self.names) > keep:
            self.names.pop()
            self.ids.pop()
            nfd = <int>self.fds.pop()
            if nfd >= 0:
                close(nfd)
        if not self.fds:
            self.lowest = 0
        fd = <int>self.fds[len(self.fds) - 1] if self.fds else self.root
        for c in parts[keep:]:
            fd = self._push(fd, <bytes>c)
            if fd < 0:
                return -1
        return fd

    def close(self):
        while self.fds:
            fd = <int>self.fds.pop()
            if fd >= 0:
                close(fd)
        self.names = []
        self.ids = []
        self.lowest = 0


cdef _one_name(bytes name, object sparse_name):
    """GNU.sparse.name on an entry that is not sparse (or an old GNU 'S' one, whose map is in
    its header) renames it for GNU tar and bsdtar and not for Go's archive/tar: refused when
    it differs from the name, as _one_reading."""
    if not sparse_name or name.rstrip(b"/") == (<bytes>sparse_name).rstrip(b"/"):
        return
    raise _errors.InvalidArchiveError(
        f"entry {_show(name)}: GNU.sparse.name {_show(sparse_name)} on an entry that is not sparse "
        f"(tar readers disagree on its name: GNU tar and bsdtar read the record, Go's archive/tar the header)")

cdef _one_size(bytes name, dict gs, int64_t size, str what):
    """GNU.sparse.size / GNU.sparse.realsize records on an entry whose size they do not set
    for Go's archive/tar (``what``, of ``size`` bytes): refused when they say another size."""
    for key in (b"size", b"realsize"):
        if gs.get(key) is not None and _decimal(gs[key]) != size:
            raise _errors.InvalidArchiveError(
                f"entry {_show(name)}: GNU.sparse.{key.decode()} {gs[key][:40]!r} on {what}, of {size} bytes "
                "(tar readers disagree on its size)")

cdef dict _entry_xattrs(bytes name, dict schily, dict lib, dict encoded):
    """The entry's xattrs from its SCHILY.xattr and LIBARCHIVE.xattr records.  bsdtar writes
    both forms, alike; where they differ Go-based tools (which read SCHILY only) and bsdtar
    (the last record) set different values: refused, as is a name that is empty or holds a
    NUL (a url-encoded %00, which setxattr would cut the name at).

    ``encoded``: {url-encoded name: name} of the LIBARCHIVE records whose name needed encoding
    (``user.%C3%A9`` for ``user.é``, ``user.a%25b`` for ``user.a%b``).  bsdtar writes the
    SCHILY twin of such a record under the same encoded name, and lamina read the SCHILY one
    as it is and the LIBARCHIVE one decoded: one xattr set twice, under two names (as bsdtar
    3.6 sets it).  The twins are one xattr, set once under the SCHILY name as it is: the name
    GNU tar, docker, containerd and umoci give it (they read the SCHILY record alone)."""
    out = dict(schily) if schily else {}
    if encoded and out:
        for raw, decoded in encoded.items():
            if raw in out:
                if out[raw] != lib.get(decoded, out[raw]):
                    raise _errors.InvalidArchiveError(
                        f"entry {_show(name)}: its SCHILY.xattr and LIBARCHIVE.xattr records for {_show(raw)} differ "
                        "(tar readers disagree on which applies)")
                lib.pop(decoded, None)
    for k, v in (lib or {}).items():
        if out.get(k, v) != v:
            raise _errors.InvalidArchiveError(
                f"entry {_show(name)}: its SCHILY.xattr and LIBARCHIVE.xattr records for {_show(k)} differ "
                "(tar readers disagree on which applies)")
        out[k] = v
    cdef Py_ssize_t listed = 0
    for k in out:
        if not k or _has_byte(k, 0):
            raise _errors.InvalidArchiveError(f"entry {_show(name)}: xattr name {_show(k)} is empty or holds a NUL byte")
        listed += len(<bytes>k) + 1
    if listed > XATTR_LIST_MAX:
        # tmpfs, xfs and btrfs set them all, but listxattr(2) then fails (E2BIG): nothing
        # (a flat copy, the store's dedup pass, tar, getfattr) could read them back
        raise _errors.LimitExceededError(
            f"entry {_show(name)}: {len(out)} xattr names of {listed} bytes in all, more than the "
            f"{XATTR_LIST_MAX} bytes listxattr(2) returns")
    return out

cdef _one_reading(object entry, object gnu, object paxv, str what, bytes key):
    """An entry with both a GNU long name (or link) and a PAX path (or linkpath) that differ is
    read differently by each reference reader: GNU tar takes the PAX record, Go's archive/tar
    (docker, containerd, umoci) the GNU header, bsdtar whichever came last.  A hostile layer
    could show a scanner one tree and lamina another (a harmless name to one, a whiteout to
    the other), so such an entry is refused."""
    if gnu is None or not paxv or (<bytes>gnu).rstrip(b"/") == (<bytes>paxv).rstrip(b"/"):
        return
    raise _errors.InvalidArchiveError(
        f"entry {_show(entry)}: its GNU long {what} {_show(gnu)} and its PAX {key.decode()} {_show(paxv)} differ "
        f"(tar readers disagree on which applies)")


cdef int _unlink_opening(int fd, const char *name, int flags) noexcept nogil:
    """unlinkat, tried once more after opening directory ``fd`` to its owner (0700) when
    its mode refused it: a layer may leave a directory read-only, and removing its tree
    must not need root.  0, or -1 with errno set (by the last call that failed)."""
    if unlinkat(fd, name, flags) == 0:
        return 0
    if errno != EACCES or fchmod(fd, 0o700) < 0:
        return -1
    return unlinkat(fd, name, flags)


DEF SUBDIRS_AT_ONCE = 1024


cdef list _scan_and_unlink(int fd):
    """Unlink every non-directory in ``fd`` as the listing goes; return the names of at most
    SUBDIRS_AT_ONCE of its subdirectories, with a None first if there were more (the caller
    removes those, then scans again).  The listing is never held whole: a store snapshot's
    hashed/ of a million names took 60 MiB as a list (a failed copy of a 1.6M-file layer
    peaked at 272 MiB).  Unlinking the entries a readdir stream has returned leaves the
    others in it on Linux's filesystems; an entry missed anyway is found by the next scan of
    a caller (the directory's removal fails ENOTEMPTY and it scans again).

    A directory a layer left read-only is opened up (u+rwx) first: it is going away anyway.
    -1 from the syscalls is reported through errno by raising OSError."""
    cdef int dfd = openat(fd, b".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    cdef DIR *d
    cdef dirent *ent
    cdef stat st
    cdef bint more = False
    cdef int err = 0
    if dfd < 0 and errno == EACCES and fchmod(fd, 0o700) == 0:  # readable, not searchable (rw-)
        dfd = openat(fd, b".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if dfd < 0:
        raise OSError(errno, os.strerror(errno))
    d = fdopendir(dfd)
    if d == NULL:
        close(dfd)
        raise OSError(errno, os.strerror(errno))
    subdirs = []
    try:
        while True:
            ent = readdir(d)
            if ent == NULL:
                break
            if ent.d_name[0] == 46 and (ent.d_name[1] == 0 or (ent.d_name[1] == 46 and ent.d_name[2] == 0)):
                continue
            if ent.d_type != DT_DIR:
                if _unlink_opening(fd, ent.d_name, 0) == 0 or errno == ENOENT:
                    continue
                err = errno
                # d_type may be DT_UNKNOWN: a directory is known only once unlink refuses it
                if not ((err == EISDIR or err == EPERM) and fstatat(fd, ent.d_name, &st, AT_SYMLINK_NOFOLLOW) == 0
                        and S_ISDIR(st.st_mode)):
                    raise OSError(err, os.strerror(err), os.fsdecode(<bytes>ent.d_name))
            if len(subdirs) < SUBDIRS_AT_ONCE:
                subdirs.append(<bytes>ent.d_name)
            else:
                more = True
    finally:
        closedir(d)
    if more:
        subdirs.insert(0, None)
    return subdirs


cdef int _chmod_pinned(int pfd, mode_t mode) noexcept nogil:
    """chmod the inode of the O_PATH fd ``pfd`` (closed): through /proc, since fchmod refuses
    O_PATH fds.  0, or -1 with errno set."""
    cdef char proc[32]
    cdef int r, e
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", pfd)
    r = fchmodat(AT_FDCWD, proc, mode, 0)
    e = errno
    close(pfd)
    lamina_set_errno(e)
    return r


cdef int _chmod_at(int fd, const char *name, mode_t mode) noexcept nogil:
    """chmod ``name`` under ``fd``, never through a symlink: fchmodat follows one (its
    AT_SYMLINK_NOFOLLOW needs fchmodat2, Linux 6.6, or a glibc that emulates it), and a name
    lamina has just made (a node, a directory) may have been swapped meanwhile for a symlink to
    a host file by whoever can write its directory (any local user, in an image's 0777 directory
    that a lower layer of the dir format left so).  The name is pinned by an O_PATH|O_NOFOLLOW fd
    and a symlink refused (ELOOP), as glibc's own emulation does.  0, or -1 with errno set."""
    cdef int e
    cdef stat st
    cdef int pfd = openat(fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC)
    if pfd < 0:
        return -1
    if fstat(pfd, &st) < 0:
        e = errno
    elif S_ISLNK(st.st_mode):
        e = ELOOP
    else:
        return _chmod_pinned(pfd, mode)
    close(pfd)
    lamina_set_errno(e)
    return -1


cdef int _chmod_dir_at(int fd, const char *name, mode_t mode) noexcept nogil:
    """chmod the directory ``name`` under ``fd`` (see _chmod_at): pinned by an O_PATH fd that
    O_DIRECTORY makes fail on anything else (a symlink: ENOTDIR).  0, or -1 with errno set."""
    cdef int pfd = openat(fd, name, O_PATH | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC)
    if pfd < 0:
        return -1
    return _chmod_pinned(pfd, mode)


cdef int _open_subdir(int fd, bytes name) except -2:
    cdef int nfd = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    if nfd < 0 and errno == EACCES and _chmod_dir_at(fd, name, 0o700) == 0:
        nfd = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    return nfd


cdef int _remove_at(int pfd, bytes base, list gone=None, bint retry=False) except -2:
    """Remove ``base`` under ``pfd`` whatever it is; a directory tree is
    removed iteratively with two fds open whatever its depth (moving up
    through "..", checked against the inode it came from).  Symlinks are
    never followed.  ``gone``: gets the path of each directory removed,
    relative to ``base`` (b"" for ``base`` itself).  0, or -1 with errno set."""
    cdef int fd, nfd
    cdef stat st, up
    if _unlink_opening(pfd, base, 0) == 0 or errno == ENOENT:
        return 0
    if errno != EISDIR and errno != EPERM:
        return -1
    if unlinkat(pfd, base, AT_REMOVEDIR) == 0:
        if gone is not None:
            gone.append(b"")
        return 0
    if errno != ENOTEMPTY and errno != EEXIST and errno != EACCES:
        return -1
    fd = _open_subdir(pfd, base)
    if fd < 0:
        return -1
    names = []        # the directories we are in, below base
    inodes = []       # (dev, ino) of each directory on the way, to check ".."
    again = set()     # (dev, ino) of directories scanned a second time
    try:
        if fstat(fd, &st) < 0:
            return -1
        inodes.append((st.st_dev, st.st_ino))
        pending = [_scan_and_unlink(fd)]
        while True:
            subs = pending[len(pending) - 1]
            if subs:
                n = subs.pop()
                if n is None:  # more subdirectories than one scan returns: the next ones
                    pending[len(pending) - 1] = _scan_and_unlink(fd)
                    continue
                if gone is not None:
                    gone.append(b"/".join(names + [n]))
                # (a read-only directory holding only directories: _scan_and_unlink had no
                # file to unlink in it, so it may still be closed to the removal of its subdirs)
                if _unlink_opening(fd, <bytes>n, AT_REMOVEDIR) == 0 or errno == ENOENT:
                    continue
                nfd = _open_subdir(fd, <bytes>n)
                if nfd < 0:
                    return -1
                close(fd)
                fd = nfd
                if fstat(fd, &st) < 0:
                    return -1
                names.append(n)
                inodes.append((st.st_dev, st.st_ino))
                pending.append(_scan_and_unlink(fd))
                continue
            pending.pop()
            child = inodes.pop()
            if not names:
                break
            nfd = openat(fd, b"..", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if nfd < 0:
                return -1
            close(fd)
            fd = nfd
            if fstat(fd, &up) < 0 or (up.st_dev, up.st_ino) != inodes[len(inodes) - 1]:
                lamina_set_errno(ESTALE)
                return -1  # moved under us: stop rather than remove elsewhere
            n = names.pop()
            if _unlink_opening(fd, <bytes>n, AT_REMOVEDIR) < 0 and errno != ENOENT:
                if errno != ENOTEMPTY or child in again:
                    return -1
                again.add(child)  # an entry the scan's stream missed (see _scan_and_unlink)
                pending[len(pending) - 1].append(n)
    except OSError as e:
        lamina_set_errno(e.errno or EIO)
        return -1
    finally:
        if fd >= 0:
            close(fd)
    if unlinkat(pfd, base, AT_REMOVEDIR) < 0 and errno != ENOENT:
        if errno == ENOTEMPTY and not retry:
            return _remove_at(pfd, base, gone, True)  # once more (see _scan_and_unlink)
        return -1
    if gone is not None:
        gone.append(b"")
    return 0


cdef void _put_mode_back(int fd, stat *was, bint known) noexcept nogil:
    """A directory that is kept (the parent of what remove_tree removed, the one clear_dir
    empties) may have been opened to 0700 by _unlink_opening to remove what a read-only mode
    kept in it: it gets its own mode back, or a read-only (or 0750, setgid...) directory of
    the caller would be left open to its owner only.  Best effort: what was removed is gone."""
    cdef stat now
    cdef int e = errno
    if known and fstat(fd, &now) == 0 and (now.st_mode & 0o7777) != (was.st_mode & 0o7777):
        fchmod(fd, was.st_mode & 0o7777)
    lamina_set_errno(e)


def remove_tree(path):
    """Remove ``path`` (a directory tree, a file or a symlink) as a layer
    left it: read-only directories included, symlinks never followed, any
    depth with a bounded number of open fds.  Absent is fine."""
    cdef int pfd
    path = os.fsencode(os.path.abspath(path))
    parent, base = os.path.split(path)
    pfd = openat(AT_FDCWD, parent or b"/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if pfd < 0:
        if errno == ENOENT:
            return
        raise OSError(errno, os.strerror(errno), os.fsdecode(parent))
    cdef stat was
    cdef bint known = fstat(pfd, &was) == 0
    try:
        if _remove_at(pfd, base) < 0:
            raise OSError(errno, f"cannot remove {os.fsdecode(path)}: {os.strerror(errno)}")
    finally:
        _put_mode_back(pfd, &was, known)
        close(pfd)


def clear_dir(path, shown=None):
    """Remove everything inside directory ``path``, keeping ``path`` itself.  ``shown``: how its
    errors name the directory, when ``path`` is one the user never gave (/proc/self/fd/N/.)."""
    cdef int fd = openat(AT_FDCWD, os.fsencode(path), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    cdef stat was
    cdef bint known
    if fd < 0:
        raise OSError(errno, os.strerror(errno), os.fspath(shown or path))
    known = fstat(fd, &was) == 0
    try:
        while True:
            subdirs = _scan_and_unlink(fd)
            for n in subdirs:
                if n is not None and _remove_at(fd, <bytes>n) < 0:
                    raise OSError(errno, f"cannot remove {os.fsdecode(n)} in {os.fspath(shown or path)}: "
                                         f"{os.strerror(errno)}")
            if not subdirs or subdirs[0] is not None:
                break
    finally:
        _put_mode_back(fd, &was, known)
        close(fd)


cdef inline bint _has_default_acl(int fd) noexcept nogil:
    """Does directory ``fd`` give what is made in it an ACL (and a mode masked by it)?"""
    return fgetxattr(fd, "system.posix_acl_default", NULL, 0) > 0


cdef inline bint _opaque_fd(int fd) noexcept nogil:
    """Is directory ``fd`` marked opaque (trusted.overlay.* or user.overlay.*)?"""
    cdef char v[2]
    if fgetxattr(fd, "trusted.overlay.opaque", v, 2) == 1 and v[0] == b'y':
        return True
    return fgetxattr(fd, "user.overlay.opaque", v, 2) == 1 and v[0] == b'y'


cdef int _dir_empty(int fd) noexcept nogil:
    """1 if directory ``fd`` holds nothing, 0 if it holds something, -1 on an error."""
    cdef int dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), res = 1
    cdef DIR *d
    cdef dirent *ent
    if dfd < 0:
        return -1
    d = fdopendir(dfd)
    if d == NULL:
        close(dfd)
        return -1
    while True:
        lamina_set_errno(0)
        ent = readdir(d)
        if ent == NULL:
            if errno != 0:
                res = -1
            break
        if not (ent.d_name[0] == 46 and (ent.d_name[1] == 0 or (ent.d_name[1] == 46 and ent.d_name[2] == 0))):
            res = 0
            break
    closedir(d)
    return res


cdef void _union_release(int *lf, int nl, int *ufd, bint owned) noexcept nogil:
    """Close what _union_parent opened (if ``owned``): the lower fds and this layer's."""
    cdef int i
    if owned:
        for i in range(nl):
            if lf[i] >= 0:
                close(lf[i])
                lf[i] = -1
        if ufd[0] >= 0:
            close(ufd[0])
            ufd[0] = -1


cdef int _below_shows(int *lf, int nl, const char *hidden) noexcept nogil:
    """1 if the topmost lower layer (``lf``: their fds of one directory, topmost first, -1 where
    a layer does not show it) that has ``hidden`` shows it, 0 if none does or it is a whiteout."""
    cdef int i
    cdef stat st
    for i in range(nl):
        if lf[i] >= 0 and fstatat(lf[i], hidden, &st, AT_SYMLINK_NOFOLLOW) == 0:
            return 0 if S_ISCHR(st.st_mode) and st.st_rdev == 0 else 1
    return 0


cdef int _union_parent(int root, int *lf, int nl, const char *parent, Py_ssize_t n,
                       int *ufd_out, bint *owned_out) noexcept nogil:
    """The component walk of ``_union_walk`` for the directory ``parent``, without the GIL, for
    the common case (Extractor._overlay_whiteout_nogil): per component the topmost layer that
    has it decides; a whiteout or a non-directory hides it; an opaque directory, a
    non-directory or a whiteout ends the merge with the layers under it; no layer that decides
    a component may have a symlink there.  ``parent`` is normalized (no empty, ``.`` or ``..``
    component); ``lf``: the lower layers' root fds, topmost first (overwritten).
    2: ``lf`` holds the lower layers' fds of ``parent`` (-1 where a layer does not show it)
    and ``*ufd_out`` this layer's (-1: only below), both to close if ``*owned_out``
    (_union_release); 0: the merged view has no such directory; -1: something unusual (a
    symlink on the way, an error): the general path decides.  On 0 and -1 nothing is left open."""
    cdef int ufd = root, fd, nfd, i, found, res = -2
    cdef bint owned = False, stop, failed
    cdef stat st
    cdef char comp[256]
    cdef Py_ssize_t a = 0, b
    while a < n:
        b = a
        while b < n and parent[b] != 47:
            b += 1
        if b == a or b - a > 255:
            res = -1
            break
        memcpy(comp, parent + a, b - a)
        comp[b - a] = 0
        a = b + 1
        if comp[0] == 46 and (comp[1] == 0 or (comp[1] == 46 and comp[2] == 0)):
            res = -1
            break
        found = -2
        if ufd >= 0:
            if fstatat(ufd, comp, &st, AT_SYMLINK_NOFOLLOW) == 0:
                found = -1
            elif errno != ENOENT:
                res = -1
                break
        if found == -2:
            for i in range(nl):
                if lf[i] < 0:
                    continue
                if fstatat(lf[i], comp, &st, AT_SYMLINK_NOFOLLOW) == 0:
                    found = i
                    break
                if errno != ENOENT:
                    found = -3
                    break
            if found == -3:
                res = -1
                break
        if found == -2 or (S_ISCHR(st.st_mode) and st.st_rdev == 0):
            res = 0  # absent from the merged view: nothing below shows there
            break
        if S_ISLNK(st.st_mode):
            res = -1
            break
        if not S_ISDIR(st.st_mode):
            res = 0
            break
        nfd = -1
        if found == -1:
            nfd = openat(ufd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if nfd < 0:
                res = -1
                break
        stop = nfd >= 0 and _opaque_fd(nfd)
        if owned and ufd >= 0:
            close(ufd)
        ufd = nfd
        failed = False
        for i in range(nl):
            fd = lf[i]
            nfd = -1
            if fd >= 0 and not stop and i >= found:
                nfd = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                if nfd < 0:
                    if errno == ENOTDIR or errno == ELOOP:
                        stop = True  # a file, symlink or whiteout here hides the layers below
                    elif errno != ENOENT:
                        # EMFILE, EIO: taken for a file, it hid the layers below (the whiteout
                        # of a name only they show was then left out, exit 0)
                        failed = True
                elif _opaque_fd(nfd):
                    stop = True
            if owned and fd >= 0:
                close(fd)
            lf[i] = nfd
        owned = True
        if failed:
            res = -1  # the general path decides, and says what fails
            break
    if res == -2:
        ufd_out[0] = ufd
        owned_out[0] = owned
        return 2
    _union_release(lf, nl, &ufd, owned)
    ufd_out[0] = -1
    owned_out[0] = False
    return res


cdef list _dir_entries(int dfd, int64_t limit):
    """(name, d_type) of each entry of directory ``dfd`` but ``.`` and ``..`` (``dfd`` stays
    open), or None on an error or past ``limit`` entries (-1: no limit)."""
    cdef int fd = openat(dfd, b".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    cdef DIR *d = fdopendir(fd) if fd >= 0 else NULL
    cdef dirent *ent
    if d == NULL:
        if fd >= 0:
            close(fd)
        return None
    out = []
    try:
        while True:
            lamina_set_errno(0)
            ent = readdir(d)
            if ent == NULL:
                return out if errno == 0 else None
            if ent.d_name[0] == b'.' and (ent.d_name[1] == 0 or (ent.d_name[1] == b'.' and ent.d_name[2] == 0)):
                continue
            if 0 <= limit <= len(out):
                return None
            out.append((<bytes>ent.d_name, ent.d_type))
    finally:
        closedir(d)


def openat2_available():
    cdef int fd = lamina_openat2(AT_FDCWD, b".", O_RDONLY | O_DIRECTORY | O_CLOEXEC, LAMINA_RESOLVE_IN_ROOT)
    if fd >= 0:
        close(fd)
        return True
    return False


cdef object _UNSEEN = object()


cdef class _BelowDir:
    """A directory as the layers below merge it (Extractor._below_dir): which of them take part,
    with no symlink on the way in any."""
    cdef list layers       # the lower layers that merge into it (indices into lower_fds), topmost first
    cdef dict names        # name -> layer << 2 | UP_* of the topmost of them that has it (None: not listed)
    cdef dict under        # ... and of the layers under it that have it too, where that is a directory
    cdef int64_t lookups, list_at


cdef inline int _up_kind(stat *st) noexcept nogil:
    if S_ISDIR(st.st_mode):
        return UP_DIR
    if S_ISLNK(st.st_mode):
        return UP_SYMLINK
    if S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return UP_WHITEOUT
    return UP_OTHER


cdef class Extractor:
    """Apply one layer tar, fed in chunks, onto the directory ``root``."""

    cdef int rootfd, outfd, cache_fd
    cdef bint overlay, is_root, use_openat2, cache_valid
    cdef int64_t umask             # the process umask: new files need a chmod only where it strips bits
    cdef State state
    cdef unsigned char hdr[BLOCK]
    cdef Py_ssize_t hdr_len
    cdef int64_t remaining, pad
    cdef int64_t max_entries, max_bytes, max_header, max_path, max_depth, max_trailing
    cdef int64_t max_extended, max_global_headers, max_sparse_entries, max_sparse_size
    cdef bytearray meta
    cdef unsigned char meta_kind
    cdef object pax, long_name, long_link, cache_path, prev_name
    cdef object acl_name           # the name of a Solaris ACL header ('A'), until its entry
    # the size field of the entry just read when it was a file named with a trailing '/', read
    # as a directory with no data: named when the bytes after it turn out to be no header
    cdef int64_t dir_size_dropped
    cdef int64_t ext_total, global_headers
    cdef bint skipping_global      # ST_SKIP over a global header's records: finish names the header
    # the last bytes of the ST_SKIP under way that are the padding after an entry's whole data:
    # a layer that ends there ends, as Go's archive/tar reads it (umoci 0.4.7's insert writes
    # layers with neither that padding nor end blocks)
    cdef int64_t skip_pad
    # GNU sparse: the map of the entry being read (offset, length pairs flat in
    # an int64 array), the region being written, and the file's real size
    cdef object sparse, sparse_pending
    cdef bytearray sparse_text
    cdef Py_ssize_t sparse_i
    cdef int64_t sparse_left, sparse_realsize, sparse_size, sparse_nl, sparse_need
    # the entry being written (regular files span feed() calls)
    cdef object cur_name, cur_xattrs
    cdef int64_t cur_mode, cur_uid, cur_gid, cur_sec, cur_nsec
    cdef _Fixups fixups             # directory modes and times to set at the end, and their inodes
    # top-down skipping (dir format): what upper layers hide, and what was skipped
    cdef bint scan_only
    cdef object hide_at, hide_below
    cdef int64_t hide_level       # hide_* map a path to the highest layer hiding it; -1: plain sets
    cdef set hidden_files
    cdef set own_hidden            # the paths of hidden_files this layer skipped (its whiteouts spare them)
    cdef list lower_hidden         # the others (skipped below), sorted, made at this layer's first whiteout
    cdef set unmade_devices        # without root: paths of device nodes not made (and of hardlinks to them)
    # overlay: a run of whiteouts in one directory (_overlay_whiteout_nogil): the directory, the
    # entry that last used it, its fds in the layers below and in this one (_union_parent)
    cdef bytes wh_parent
    cdef int64_t wh_seq
    cdef int wh_lf[NOGIL_LOWERS]
    cdef int wh_ufd, wh_found, wh_nl
    cdef bint wh_owned
    cdef int64_t wh_run, wh_list_at   # whiteouts of the run so far; when to list the layers below
    cdef dict wh_below                # {name: shown below} of the run's directory, once listed
    cdef dict names_below             # overlay: directory -> frozenset of the names the layers below have there
    cdef int64_t names_below_left     # ... names it may still hold
    cdef readonly int64_t hidden_examined  # paths _forget_hidden looked at (a test bounds it)
    cdef readonly set scan_at, scan_below
    cdef set scan_dirs             # scan: the directories the layer's entries so far list or imply
    cdef set scan_dir_parents      # scan: the parents of those (a directory with one of them in it)
    cdef int64_t scan_max          # scan: most paths scan_at, scan_below and scan_dirs may hold (-1: no limit)
    cdef readonly bint scan_overflow   # scan: more than scan_max: the sets were dropped (see __init__)
    cdef readonly int64_t hidden
    cdef object plain_parent      # last parent found free of symlinks (None: unknown)
    cdef bint dir_at              # _symlink_at found a directory at the path it looked at
    cdef object hid_parent        # last parent _is_hidden looked at (None: none), and whether
    cdef bint hid_parent_hides    # an upper layer hides what is in it (hide_* are fixed per layer)
    cdef object unskipped_parent  # a parent with no skipped non-directory on its way (None: unknown)
    cdef _PathSet created          # dir format: the directories this layer wrote or wrote into, by path
    cdef _NameStore created_leaves # dir format: (the path of a directory, name) of the non-directories
                                   # this layer wrote by a path in it (``created`` with them: _created_path)
    cdef _PathSet provided         # overlay format: physical paths of the directories this layer wrote or
                                   # wrote into (every entry's parents)
    cdef _NameStore provided_leaves  # and (the physical path of a directory, name) of the non-directories
                                   # this layer wrote in it (_provided checks both)
    cdef set cleared               # (path, dev, ino) of the directories an opaque marker cleared (see _opaque)
    cdef set cleared_paths         # and their paths (a marker there takes the general path)
    cdef int64_t headers
    cdef _InodeSet created_ino     # dir format: the (dev, ino) of the directories this layer wrote or wrote into
    cdef _NameStore created_in     # dir format: (_ino_bytes of a directory, name) of the non-directories
                                   # this layer wrote in it, wherever it landed (see _record_inode)
    cdef bytes cache_ino           # the _ino_bytes of the cached parent (None: not made yet)
    # dir format: a Bloom filter (2 bits a name, calloc'ed at the first) of the names of the
    # non-directories in created_in: a name it has not seen was written nowhere by this layer
    cdef uint64_t *name_bits
    cdef bytes recorded_parent     # the parent of the last path _record added: known to be in created
    cdef _Where header_where       # reused for each header: formatted only when an error is raised
    cdef object root_key
    cdef bytes root_real           # dir format: the root's path as the kernel names it (/proc/self/fd)
    cdef list lower_fds            # overlay: root fds of the finished layers below, topmost first
    cdef bint defer_lowers         # overlay: the layers below are unknown yet; ask for them (NeedsLowers)
    cdef bint root_named           # the layer has an entry for the root ("./")
    cdef object lowers_provider    # overlay, deferred: () -> lower dirs once finished, or None
    cdef bint early_dirs           # overlay, deferred with a provider: implied dirs made before the lowers are known
    cdef dict early_pending        # early_dirs: phys path -> (st_dev, st_ino) of one made, until _settle_early_dirs
    # early_dirs: whiteouts whose effect only the layers below decide, held until they are known
    # (_defer_whiteout): (parent, hidden, target, name, sec, nsec, entry number) in layer order; their
    # targets, and the targets' ancestors, which a later entry must not touch before they apply
    cdef list wh_pending
    cdef set wh_pending_at, wh_pending_above
    # the directory of the last whiteout held, open (-1: none): a run of them in one directory
    # (``rm -rf /var/lib/apt/lists/*``) looks each name up there, not each from the root.  Its
    # path is one of wh_pending_above, so an entry that could replace it or a directory on its
    # way applies the held whiteouts first, and that closes it (_apply_pending_whiteouts).
    cdef int wh_dir_fd
    cdef object wh_dir
    cdef list lower_dirs           # overlay: the dirs of lower_fds, topmost first
    cdef object lower_shared       # overlay: lower dir -> names sharing an inode only by the store's dedup
    cdef dict lower_links          # overlay: lower index -> {(dev, ino): [paths]} of its multiply linked files
    cdef int up_layer              # overlay: the lower layer the last _copy_up_node copied from
    cdef stat up_st                #          and what it copied
    cdef dict up_dirs              # overlay: directory -> _BelowDir (False: no directory below; None: unsure)
    cdef dict up_links             # overlay: path of a symlink below (_below_phys) -> its target
    cdef int64_t up_names_left     # ... names their listings may still hold
    cdef int64_t up_layers_left    # ... and lower layers their lists may still name
    cdef object cache_phys         # overlay: where the cached parent really is in the layer
    cdef object cache_real         # dir: where the cached parent really is (None: not read yet)
    cdef object cache_realp        # dir: the cached parent's real path as /proc names it, None: unknown
    cdef stat cache_st             # fstat of cache_fd when it became the cache; its owner and mode
    cdef bint cache_st_fresh       # are stale once a directory's owner changed (refreshed on demand)
    cdef bint cache_st_ok          # its dev and ino are known (the fstat worked)
    # dir format: the cached parents the current one was reached from by one name each (tars list
    # trees depth first), outermost first, still open: an entry back up in one of them reuses its
    # fd, stat and real path instead of resolving it from the root (and asking /proc where it is).
    # Valid as long as the cache is (emptied by _invalidate, as it is).
    cdef int par_n
    cdef int par_fd[PAR_MAX]
    cdef stat par_st[PAR_MAX]
    cdef bint par_st_ok[PAR_MAX]
    cdef list par_paths, par_realps
    cdef bint owner_checked        # an inode created under the cached parent was fstat'ed against the rule
    cdef bint default_acls         # a directory with a default ACL was met: new inodes are checked for it
    cdef bint predict_owner        # root: new inodes get (euid, egid or a setgid parent's gid), so a chown
    cdef uid_t euid                # to those ids is skipped; off for the rest of the layer once an fstat
    cdef gid_t egid                # disagrees (idmapped or grpid mounts, squashing NFS...)
    cdef object last_phys          # overlay: where the last _union_dir result really is
    cdef readonly int64_t entries, total, whiteouts, trailing
    cdef readonly list skipped
    # hash_files_into: blake3 of each regular file's data as it is written (store dedup, see
    # _hold_hashed); the file being written is hashed while cur_hashing
    cdef int hold_fd
    cdef bint cur_hashing, hold_empty_path
    # _link_object hashed the payload and found no object: the write takes that digest
    cdef bint cur_prehashed
    cdef uint8_t pre_digest[BLAKE3_OUT_LEN]
    cdef bint cur_new_owner         # the file being written was created with the entry's owner (_owner_is)
    cdef blake3_hasher hasher
    cdef lamina_hash_worker hash_worker  # hashes large writes beside them (hash_worker.h); zeroed: not started
    cdef readonly int64_t hashed
    # link_objects: objects/blake3 of the store (O_PATH; objects are reached as "<2 hex>/<name>"
    # from it); a file whose payload is in the chunk being fed when its header is read is hashed
    # first, and named by a link to the object with its content and metadata if there is one
    # (see _link_object).  feed_p/feed_avail: the rest of that chunk, while _header() runs.
    cdef int obj_fd
    cdef const unsigned char *feed_p
    cdef int64_t feed_avail
    cdef set obj_inodes             # inode numbers this layer named by linking an object
    cdef int64_t privatized         # names tried for _privatize's copies
    # time spent writing (creating entries, their data and metadata, the final
    # directory fixups); the rest of feed() is parsing: lamina bench splits the
    # extract stage with it (monotonic clock, a vDSO call: cheap per entry)
    cdef readonly int64_t write_ns
    cdef readonly int64_t nogil_entries   # entries whose syscalls all ran in one block without the GIL

    def __cinit__(self):
        self.rootfd = -1
        self.outfd = -1
        self.cache_fd = -1
        self.wh_dir_fd = -1
        self.par_n = 0
        self.par_paths = []
        self.par_realps = []
        self.hold_fd = -1
        self.obj_fd = -1

    def __init__(self, root, *, str format="dir", limits=None, use_openat2=None, hidden=None,
                 lowers=None, bint defer_lowers=False, lowers_provider=None, lower_shared=None,
                 hash_files_into=None, link_objects=None, int64_t scan_max=-1, bint early_dirs=False):
        """``root=None`` scans instead of extracting: headers are parsed and
        checked, nothing is written, and ``scan_at`` / ``scan_below`` collect
        what this layer hides in the layers below it (whiteouts and non-directory
        entries hide a path and everything under it; opaque markers everything
        under a directory).  ``hidden=(at, below)``, two such sets from the layers
        above, makes a ``dir`` extraction skip entries nobody will ever see;
        ``hidden=(at, below, level)`` takes dicts mapping a path to the highest
        layer hiding it, and skips what a layer above ``level`` hides.  ``scan_max``:
        a scan that would hold more than that many paths in ``scan_at`` and
        ``scan_below`` together, with the directories the layer lists or implies
        (whose whiteout later in the layer hides only what is under them), stops
        collecting them (``scan_overflow``, the sets emptied): each costs ~150 B
        until the layers below are written, so a
        layer of millions of entries is better not skipped over (its whiteouts
        then apply as it is written).

        ``lowers`` (overlay format): the finished layer directories below this
        one, bottom first.  Paths then resolve as the overlay mount will show
        them (symlinks, whiteouts and opaque dirs of every layer), directories
        this layer implies are copied up with the metadata they have below, and
        a hardlink to a lower file copies that file up first.  With
        ``defer_lowers`` the layers below are not ready: any entry that needs
        them calls ``lowers_provider()`` (which waits for them and returns
        their dirs, bottom first) or, without one or if it returns None, raises
        NeedsLowers: so layers extract in parallel, each one waiting for those
        below it only once it meets an entry that needs them.  ``early_dirs``
        (with a provider): a directory the layer implies does not wait; it is
        made at once, as the copy-up would make it, and given the metadata it
        has below once the layers below are known (at the next entry that needs
        them, or at the end); ImpliedDirMoved (a NeedsLowers) if a layer below
        has no directory there after all (a symlink there would have put the
        entries under it elsewhere): the caller extracts the layer again
        without ``early_dirs``.  With ``early_dirs`` a whiteout in a directory of
        the layer's own does not wait either: it is held until the layers below
        are known (see _defer_whiteout).
        ``lower_shared(lower_dir)``: the names (relative paths) of that lower
        layer whose inode is shared by the store's file dedup rather than
        hardlinked in the image, so a copy-up never takes them for the copied
        file's hardlinks.

        ``hash_files_into`` (an existing directory on the same filesystem as
        ``root``): the blake3 of every regular file's data is computed as it is
        written (GIL released, no second read), and the finished file gets a
        second name there, ``<64 hex blake3>-<n>`` (``-x<n>`` if it has
        xattrs).  That name keeps the inode alive, so its inode number cannot
        be reused by another file while the name exists: a tree walk may match files to hashes by ``d_ino`` (the
        store's dedup pass does, lamina.store.objects).  Sparse files are not
        hashed (their holes are never written); nor is anything not written
        through the data path (e.g. a file copied up from a lower layer).

        ``link_objects`` (overlay format, with ``hash_files_into``, as root: the
        store's ``objects/blake3`` directory): a regular file without xattrs whose whole
        payload is in the chunk being fed is hashed before anything is created,
        and if the store has an object with that content and exactly the inode
        metadata the entry asks for (mode, owner, mtime, size), the file's name
        is a hardlink to that object and its data is never written: on a disk
        filesystem, creating and then freeing an inode costs far more than a
        link.  The object gets one name ``<blake3>-o<metadata key>-<size>`` in
        ``hash_files_into`` (the dedup pass reads the object's name from it).  A
        hardlink entry of the layer that names such a file first gives the file
        a private inode (a copy), so that names sharing an object never pass for
        a hardlink group of the image."""
        if format not in ("dir", "overlay"):
            raise ValueError(f"unknown format {format!r} (expected 'dir' or 'overlay')")
        self.overlay = format == "overlay"
        self.is_root = geteuid() == 0
        self.euid = geteuid()
        self.egid = getegid()
        self.predict_owner = self.is_root
        self.default_acls = False
        self.umask = _current_umask()
        self.scan_only = root is None
        self.scan_max = scan_max
        self.scan_at = set()
        self.scan_below = set()
        self.scan_dirs = set()
        self.scan_dir_parents = set()
        self.hidden_files = set()
        self.own_hidden = set()
        self.lower_hidden = None
        self.unmade_devices = set()
        self.wh_parent = None
        self.wh_ufd = -1
        self.names_below = {}
        self.names_below_left = NAMES_BELOW_MAX
        self.up_dirs = {}
        self.up_links = {}
        self.up_names_left = NAMES_BELOW_MAX
        self.up_layers_left = NAMES_BELOW_MAX * 4
        if hidden is not None:
            if self.overlay:
                raise ValueError("hidden paths only apply to the dir format")
            if len(hidden) == 4:  # + the set of non-directories skipped so far, shared by the layers
                self.hide_at, self.hide_below, self.hide_level, self.hidden_files = hidden
            elif len(hidden) == 3:
                self.hide_at, self.hide_below, self.hide_level = hidden
            else:
                self.hide_at, self.hide_below = hidden
                self.hide_level = -1
        if not self.scan_only:
            root_b = os.fsencode(root)
            # never through a symlink, as apply_layer refuses one: a name checked then opened
            # by its path could be swapped for a link to /etc in between by whoever can write
            # its parent (a staging dir beside DEST in a shared directory)
            self.rootfd = openat(AT_FDCWD, root_b, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if self.rootfd < 0:
                e = errno
                if (e == ELOOP or e == ENOTDIR) and os.path.islink(root_b):  # O_DIRECTORY says ENOTDIR
                    raise _errors.ExtractError(f"destination {os.fsdecode(root_b)!r} is a symlink: lamina "
                                               f"does not extract through one", errno=ELOOP)
                raise _errors.ExtractError(f"cannot open destination {os.fsdecode(root_b)!r}: {os.strerror(e)}")
        if self.rootfd >= 0:
            rst = os.fstat(self.rootfd)
            self.root_key = (rst.st_dev, rst.st_ino)
            try:
                self.root_real = os.readlink(b"/proc/self/fd/%d" % self.rootfd)
            except OSError:
                self.root_real = None
        if use_openat2 is None:
            use_openat2 = not os.environ.get("LAMINA_NO_OPENAT2") and openat2_available()
        self.use_openat2 = use_openat2
        self.lower_fds = []
        self.lower_dirs = []
        self.lower_shared = lower_shared
        self.lower_links = {}
        self.defer_lowers = defer_lowers and self.overlay
        self.root_named = False
        self.lowers_provider = lowers_provider
        self.early_dirs = early_dirs and self.defer_lowers and lowers_provider is not None and not self.scan_only
        self.early_pending = {}
        self.wh_pending = []
        self.wh_pending_at = set()
        self.wh_pending_above = set()
        if lowers and not self.scan_only:
            if not self.overlay:
                raise ValueError("lowers only apply to the overlay format")
            self._add_lowers(lowers)
        if hash_files_into is not None and not self.scan_only:
            self.hold_fd = openat(AT_FDCWD, os.fsencode(hash_files_into), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if self.hold_fd < 0:
                raise _errors.ExtractError(
                    f"cannot open {os.fsdecode(hash_files_into)!r}: {os.strerror(errno)}")
            self.hold_empty_path = True
            if link_objects is not None and self.is_root and self.overlay:  # as the store extracts
                self.obj_fd = openat(AT_FDCWD, os.fsencode(link_objects), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                self.obj_inodes = set()
        lim = limits if limits is not None else DEFAULT_LIMITS
        self.max_entries = lim.max_entries
        self.max_bytes = lim.max_bytes
        self.max_header = lim.max_header
        self.max_path = lim.max_path
        self.max_depth = lim.max_depth
        self.max_trailing = lim.max_trailing
        self.max_extended = lim.max_extended
        self.max_global_headers = lim.max_global_headers
        self.max_sparse_entries = lim.max_sparse_entries
        self.max_sparse_size = lim.max_sparse_size
        self.sparse_realsize = -1
        self.state = ST_HEADER
        self.fixups = _Fixups()
        self.created = _PathSet()
        self.provided = _PathSet()
        self.provided_leaves = _NameStore()
        self.cleared = set()
        self.cleared_paths = set()
        self.created_ino = _InodeSet()
        self.created_in = _NameStore()
        self.created_leaves = _NameStore()
        self.header_where = _Where("header", None)
        self.skipped = []
        self.prev_name = None

    def __dealloc__(self):
        lamina_hw_stop(&self.hash_worker)
        free(self.name_bits)
        self._drop_whiteout_run()
        if self.outfd >= 0:
            close(self.outfd)
        if self.hold_fd >= 0:
            close(self.hold_fd)
        if self.cache_fd >= 0:
            close(self.cache_fd)
        if self.wh_dir_fd >= 0:
            close(self.wh_dir_fd)
        while self.par_n > 0:
            self.par_n -= 1
            close(self.par_fd[self.par_n])
        if self.rootfd >= 0:
            close(self.rootfd)
        if self.lower_fds:
            for fd in self.lower_fds:
                close(<int>fd)

    def retained(self):
        """What this extractor keeps until the layer ends, structure by structure:
        {name: (items, bytes)}, bytes as sys.getsizeof counts the container, its keys
        and values (an object two structures share counts in each).  It grows with the
        layer's entries, so it is most of a big layer's peak RSS: for tests and memory
        measurements, not for the hot path."""
        def size(obj):
            n = sys.getsizeof(obj)
            if isinstance(obj, dict):
                return n + sum([size(k) + size(v) for k, v in obj.items()])
            if isinstance(obj, (set, frozenset, tuple, list)):
                return n + sum([size(x) for x in obj])
            return n
        out = {name: (len(obj), size(obj)) for name, obj in (
            ("hidden_files", self.hidden_files), ("wh_pending", self.wh_pending),
            ("wh_pending_at", self.wh_pending_at), ("wh_pending_above", self.wh_pending_above))}
        out["created"] = (self.created.n, self.created.nbytes())
        out["provided"] = (self.provided.n, self.provided.nbytes())
        out["created_ino"] = (self.created_ino.n, self.created_ino.nbytes())
        out["fixups"] = (len(self.fixups.records.items), size(self.fixups.records.items))
        out["created_leaves"] = (self.created_leaves.n, self.created_leaves.nbytes())
        out["provided_leaves"] = (self.provided_leaves.n, self.provided_leaves.nbytes())
        out["created_in"] = (self.created_in.n, self.created_in.nbytes())
        out["name_bits"] = (0, NAME_BITS // 8 if self.name_bits != NULL else 0)
        return out

    # ------------------------------------------------------------------ feed

    def feed(self, data):
        """Consume the next chunk of the uncompressed tar stream."""
        cdef const unsigned char[::1] mv = data
        cdef Py_ssize_t n = mv.shape[0], pos = 0, take
        cdef const unsigned char *p
        cdef int rc, fd
        cdef bint posted
        cdef int64_t t
        if n == 0:
            return
        p = &mv[0]
        self.total += n
        if self.total > self.max_bytes:
            raise _errors.LimitExceededError(
                f"layer exceeds the limit of {self.max_bytes} uncompressed bytes (at entry {_show(self.prev_name)})")
        while pos < n:
            if self.state == ST_DATA:
                take = min(<int64_t>(n - pos), self.remaining)
                fd = self.outfd
                t = _now_ns()
                if self.sparse is not None:
                    self._write_sparse(p + pos, take)
                else:
                    with nogil:
                        posted = self._hash_begin(p + pos, <size_t>take)
                        rc = lamina_write_all(fd, <const char *>(p + pos), take)
                        self._hash_end(posted, p + pos, <size_t>take)  # before the chunk is let go
                    if rc < 0:
                        self._oserror("write", self.cur_name)
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self._finish_file()
                    self._skip_then_header(self.pad)
                    self.skip_pad = self.pad
                self.write_ns += _now_ns() - t
            elif self.state == ST_HEADER:
                take = min(n - pos, BLOCK - self.hdr_len)
                memcpy(&self.hdr[self.hdr_len], p + pos, take)
                self.hdr_len += take
                pos += take
                if self.hdr_len == BLOCK:
                    self.hdr_len = 0
                    self.feed_p = p + pos
                    self.feed_avail = n - pos
                    try:
                        self._header()
                    finally:
                        self.feed_avail = 0
            elif self.state == ST_SKIP:
                take = min(<int64_t>(n - pos), self.remaining)
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = ST_HEADER
            elif self.state == ST_META:
                take = min(<int64_t>(n - pos), self.remaining)
                self.meta += mv[pos:pos + take]
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self._skip_then_header(self.pad)
                    self._end_meta()  # may go on reading (sparse maps) or start the entry
            else:  # ST_END: anything after the end-of-archive block only gets hashed
                self.trailing += n - pos
                if self.trailing > self.max_trailing:
                    raise _errors.LimitExceededError(
                        f"{self.trailing} bytes after the end-of-archive marker (limit {self.max_trailing}): "
                        "not a tar layer, or a decompression bomb")
                pos = n

    cdef inline void _skip_then_header(self, int64_t pad):
        self.skipping_global = False  # the global header's branch sets it after
        self.skip_pad = 0  # and the branches that end an entry's data, skip_pad
        if pad:
            self.state = ST_SKIP
            self.remaining = pad
        else:
            self.state = ST_HEADER

    def finish(self):
        """End of stream: check completeness, fix up directories, return counters."""
        with nogil:
            lamina_hw_stop(&self.hash_worker)  # nothing left to hash (and it is idle: see feed)
        if self.state == ST_SKIP and self.remaining <= self.skip_pad:
            # cut in the padding after an entry's whole data (umoci 0.4.7's insert): the end of
            # the layer to Go's reader, so to docker, containerd, podman and umoci; GNU tar and
            # bsdtar fail ("Unexpected EOF"), having the data whole (CONFORMANCE.md)
            self.state = ST_HEADER
        if self.state == ST_DATA or self.state == ST_META or self.state == ST_SKIP or self.hdr_len:
            where = self.cur_name if self.state == ST_DATA else self.prev_name
            # a cut header or extended header (or its padding: ST_SKIP with one pending) belongs to
            # the entry after prev_name, which was read whole: naming prev_name as the entry cut
            # short sends the reader to the wrong place (a sparse map, 'M', is its own entry's
            # data, named as before)
            if self.state == ST_HEADER and self.hdr_len and where is not None:
                raise _errors.InvalidArchiveError(
                    f"truncated layer: archive ends inside the {_Where('header', where)}")
            if (self.state == ST_META and self.meta_kind != c'M') or (self.state == ST_SKIP and (
                    self.pax is not None or self.long_name is not None or self.long_link is not None)):
                raise _errors.InvalidArchiveError(
                    f"truncated layer: archive ends inside the {_Where('extended header', where)}")
            if self.state == ST_SKIP and self.skipping_global:  # its records are skipped, as data
                raise _errors.InvalidArchiveError(
                    f"truncated layer: archive ends inside the {_Where('global header', where)}")
            if where is None:
                raise _errors.InvalidArchiveError(
                    f"not a tar archive: the stream ends inside the first tar header ({self.total} bytes)")
            raise _errors.InvalidArchiveError(f"truncated layer: archive ends inside entry {_show(where)}")
        if (self.pax is not None or self.long_name is not None or self.long_link is not None
                or self.acl_name is not None):
            raise _errors.InvalidArchiveError(
                f"truncated layer: archive ends after an extended header (after entry {_show(self.prev_name)})")
        cdef int64_t t = _now_ns()
        if self.wh_pending:  # before _drop_written: they read what this layer provides
            self._load_lowers("whiteouts of this layer are made only where the layers below show something")
        self._drop_written()
        if not self.scan_only:
            if self.early_pending:  # only ever while the layers below are unknown (_load_lowers settles it)
                self._load_lowers("directories this layer implies take their metadata from the layers below")
            if self.overlay and not self.root_named:
                self._root_from_below()
            self._fixup_dirs()
        self._close_cache()
        self.write_ns += _now_ns() - t
        return {"entries": self.entries, "bytes": self.total, "whiteouts": self.whiteouts, "hidden": self.hidden,
                "hidden_examined": self.hidden_examined,
                "skipped": list(self.skipped), "trailing": self.trailing, "hashed": self.hashed,
                "write_ns": self.write_ns, "nogil_entries": self.nogil_entries}

    cdef void _drop_written(self):
        """What only whiteouts and opaque markers read (what this layer wrote), freed once the
        stream ends: the directory fixups then build their own list, and the layer's peak RSS
        need not hold both."""
        self.created = _PathSet()
        self.created_leaves.close()
        self.created_in.close()
        self.created_ino = _InodeSet()
        self.provided = _PathSet()
        self.provided_leaves.close()
        self.cache_ino = None
        self.recorded_parent = None
        free(self.name_bits)
        self.name_bits = NULL

    def close(self):
        with nogil:
            lamina_hw_stop(&self.hash_worker)
        self._drop_whiteout_run()
        if self.outfd >= 0:
            close(self.outfd)
            self.outfd = -1
        self._close_cache()
        self.fixups.reset()
        if self.rootfd >= 0:
            close(self.rootfd)
            self.rootfd = -1
        if self.lower_fds:
            for fd in self.lower_fds:
                close(<int>fd)
        self.lower_fds = []
        self.up_dirs = {}  # layer indices into lower_fds
        self.up_links = {}
        if self.hold_fd >= 0:
            close(self.hold_fd)
            self.hold_fd = -1
        if self.obj_fd >= 0:
            close(self.obj_fd)
            self.obj_fd = -1

    # --------------------------------------------------------------- headers

    cdef _header(self):
        cdef const unsigned char *h = self.hdr
        cdef int i
        cdef int64_t stored, usum = 0, ssum = 0, size
        cdef uint32_t u, hi
        cdef unsigned char tf
        self.headers += 1
        if self.headers & 31 == 0:  # small files on a slow disk: a chunk can take a second
            if PyErr_CheckSignals() < 0:
                raise KeyboardInterrupt
            if cancelled.is_set():
                raise _errors.Interrupted(f"interrupted at entry {_show(self.prev_name)}")
        where = self.header_where
        where.prev = self.prev_name  # no object per header
        for i in range(BLOCK):
            if h[i]:
                break
        else:
            self.state = ST_END
            return
        # The checksum field counts as 8 spaces.  One branch-free loop over the block, which
        # the compiler vectorizes (a test for the field inside it cost as much as the rest of
        # the header): the signed sum is the unsigned one less 256 per byte >= 0x80.
        u = hi = 0
        for i in range(BLOCK):
            u += h[i]
            hi += h[i] >> 7
        for i in range(148, 156):
            u -= h[i]
            hi -= h[i] >> 7
        usum = <int64_t>u + 8 * 32
        ssum = usum - 256 * <int64_t>hi
        if h[148] & 0x80:
            # GNU tar, bsdtar and Go read the checksum in octal only
            raise _errors.InvalidArchiveError(f"{where}: header checksum in base-256 (no tar reader takes it)")
        stored = _parse_number(h + 148, 8, "checksum", where)
        if stored != usum and stored != ssum:
            if self.dir_size_dropped:
                raise _errors.InvalidArchiveError(
                    f"entry {_show(self.prev_name)}: a file named as a directory (trailing '/') whose "
                    f"header gives {self.dir_size_dropped} bytes of data: read as a directory with no data "
                    "(GNU tar, bsdtar), the bytes after its header are no tar header (Go's reader takes "
                    "them as the file's data)")
            raise _errors.InvalidArchiveError(f"{where}: bad header checksum (not a tar stream, or corrupt)")
        tf = h[156]
        size = _parse_number(h + 124, 12, "size", where)
        if size < 0:
            raise _errors.InvalidArchiveError(f"{where}: negative size")
        if tf == c'X':  # Solaris extended header: PAX 'x' for GNU tar and bsdtar
            tf = c'x'
        if tf == c'g':
            # Global PAX records are not applied: Go's archive/tar hands them
            # over as an entry of their own, which docker and containerd skip,
            # so the tree every Go-based tool sees ignores them.  Skipped
            # unread: O(1) per later entry, bounded in size and number.
            if self.pax is not None or self.long_name is not None or self.long_link is not None:
                # Go drops the pending records with the global header; GNU tar and bsdtar
                # apply them to the next entry: a name one tool reads as a whiteout and
                # another as a harmless file.  No writer puts an entry's headers there.
                raise _errors.InvalidArchiveError(
                    f"{_Where('global header', self.prev_name)}: a global header between an extended "
                    f"header and its entry (tar readers disagree on what the extended header names)")
            self.global_headers += 1
            if self.global_headers > self.max_global_headers:
                raise _errors.LimitExceededError(
                    f"{where}: more than {self.max_global_headers} global PAX headers")
            if size > self.max_header:
                raise _errors.LimitExceededError(
                    f"{where}: global PAX header of {size} bytes exceeds the limit of {self.max_header}")
            self._skip_then_header(size + _pad(size))
            self.skipping_global = True
            return
        if tf == c'x' or tf == c'L' or tf == c'K':
            if size > self.max_header:
                raise _errors.LimitExceededError(
                    f"{where}: extended header of {size} bytes exceeds the limit of {self.max_header}")
            # only the last header of each kind applies, but all of them are
            # read: bound what one entry may make us read, not each header
            self.ext_total += size
            if self.ext_total > self.max_extended:
                raise _errors.LimitExceededError(
                    f"{where}: extended headers of more than {self.max_extended} bytes for one entry")
            self._read_meta(tf, size)
            return
        if tf == c'S' and h[482] and memcmp(h + 257, GNU_MAGIC, 8) == 0:
            # old GNU sparse map continued in extension blocks before the data
            self.sparse = array("q", [])
            self._read_meta(c'S', BLOCK)
            return
        self.sparse = None
        self._entry(tf, size, where)

    cdef _read_meta(self, unsigned char kind, int64_t size):
        """Collect ``size`` bytes of extended header data, then _end_meta."""
        self.meta = bytearray()
        self.meta_kind = kind
        self.pad = _pad(size)
        if size == 0:
            self._skip_then_header(0)
            self._end_meta()
        else:
            self.state = ST_META
            self.remaining = size

    cdef _end_meta(self):
        data = bytes(self.meta)
        self.meta = None
        where = _Where("extended header", self.prev_name)
        if self.meta_kind == c'x':
            # a later 'x' replaces an earlier one (GNU tar, bsdtar and Go agree)
            self.pax = parse_pax(data, where)
        elif self.meta_kind == c'L':
            self.long_name = data.split(b"\0", 1)[0]
        elif self.meta_kind == c'K':
            self.long_link = data.split(b"\0", 1)[0]
        elif self.meta_kind == c'S':
            self._old_gnu_sparse_block(data, 504)
        else:  # c'M'
            self._sparse_map_block(data)

    # ------------------------------------------------------------ GNU sparse

    cdef _old_gnu_sparse_block(self, bytes data, int flag_at):
        """One old GNU sparse extension block: 21 (offset, length) slots, then
        the "another block follows" flag.  Entries end at an empty slot (Go)."""
        cdef const unsigned char *b = data
        cdef int i
        where = _Where("GNU sparse extension block", self.prev_name)
        for i in range(21):
            if b[24 * i] == 0:
                break
            self._sparse_add(_parse_number(b + 24 * i, 12, "sparse offset", where),
                             _parse_number(b + 24 * i + 12, 12, "sparse length", where), where)
        if b[flag_at]:
            self._read_meta(c'S', BLOCK)
        else:
            hwhere = _Where("header", self.prev_name)
            self._entry(c'S', _parse_number(self.hdr + 124, 12, "size", hwhere), hwhere)

    cdef _sparse_add(self, int64_t offset, int64_t length, where):
        if len(self.sparse) >= 2 * self.max_sparse_entries:
            raise _errors.LimitExceededError(
                f"{where}: sparse map of more than {self.max_sparse_entries} regions")
        self.sparse.append(offset)
        self.sparse.append(length)

    cdef _sparse_map_block(self, bytes data):
        """One block of a PAX 1.0 sparse map, which leads the entry's data:
        decimal lines "count", then "offset", "length" per region, padded to
        a block; read a block at a time until all the lines are there (Go)."""
        where = _Where("sparse map", self.prev_name)
        kind, path, name, link, size, major, minor = self.sparse_pending
        self.sparse_size += BLOCK
        if self.sparse_size > size:
            raise _errors.InvalidArchiveError(f"entry {_show(name)}: sparse map runs past the entry's data")
        if self.sparse_size > self.max_extended:
            raise _errors.LimitExceededError(
                f"entry {_show(name)}: sparse map of more than {self.max_extended} bytes")
        self.sparse_text += data
        self.sparse_nl += data.count(b"\n")
        if self.sparse_need < 0 and not self.sparse_nl:
            # the count's line runs on into the next block (leading zeros: GNU tar and Go read
            # on; the map's bytes are bounded by max_extended): each block of it all digits
            if not data.isdigit():
                raise _errors.InvalidArchiveError(f"entry {_show(name)}: invalid sparse map")
        elif self.sparse_need < 0:
            count = _decimal(bytes(self.sparse_text).split(b"\n", 1)[0])
            if count is None:
                raise _errors.InvalidArchiveError(f"entry {_show(name)}: invalid sparse map")
            if count > self.max_sparse_entries:
                raise _errors.LimitExceededError(
                    f"entry {_show(name)}: sparse map of more than {self.max_sparse_entries} regions")
            self.sparse_need = 1 + 2 * count
        if self.sparse_need < 0 or self.sparse_nl < self.sparse_need:
            self.meta = bytearray()
            self.meta_kind = c'M'
            self.state = ST_META
            self.remaining = BLOCK
            self.pad = 0
            return
        lines = bytes(self.sparse_text).split(b"\n", self.sparse_need)[1:self.sparse_need]
        self.sparse_text = None
        self.sparse_pending = None
        self.sparse = array("q", [])
        for i in range(0, len(lines), 2):
            self._sparse_add(_sparse_num(lines[i], name), _sparse_num(lines[i + 1], name), where)
        self._start_entry(kind, path, name, link, size - self.sparse_size, major, minor, 0)

    cdef _check_sparse(self, bytes name, int64_t stored):
        """The map must name regions in order, without overlap, inside the
        real size, and account for exactly the bytes stored in the archive
        (the checks of Go's validateSparseEntries and bsdtar)."""
        cdef Py_ssize_t i, n = len(self.sparse)
        cdef int64_t off, ln, end = 0, total = 0
        if self.sparse_realsize < 0 or self.sparse_realsize > self.max_sparse_size:
            raise _errors.LimitExceededError(
                f"entry {_show(name)}: sparse file of {self.sparse_realsize} bytes "
                f"(limit {self.max_sparse_size})")
        for i in range(0, n, 2):
            off = self.sparse[i]
            ln = self.sparse[i + 1]
            if off < 0 or ln < 0 or off > self.sparse_realsize or ln > self.sparse_realsize - off:
                raise _errors.InvalidArchiveError(
                    f"entry {_show(name)}: sparse region {off}+{ln} outside the file's {self.sparse_realsize} bytes")
            if off < end:
                raise _errors.InvalidArchiveError(
                    f"entry {_show(name)}: sparse regions overlap or go backwards at offset {off}")
            end = off + ln
            total += ln
        if total != stored:
            raise _errors.InvalidArchiveError(
                f"entry {_show(name)}: sparse map names {total} bytes but the entry stores {stored}")

    cdef _write_sparse(self, const unsigned char *p, int64_t n):
        """Stored bytes of a sparse file go to their mapped offsets; what lies
        between regions is never written and stays a hole."""
        cdef int fd = self.outfd, rc
        cdef int64_t take
        while n > 0:
            while self.sparse_left == 0:  # next region (empty ones skipped)
                self.sparse_i += 2
                self.sparse_left = self.sparse[self.sparse_i + 1]
                if self.sparse_left and lseek(fd, <off_t>self.sparse[self.sparse_i], SEEK_SET) < 0:
                    self._oserror("seek in", self.cur_name)
            take = min(n, self.sparse_left)
            with nogil:
                rc = lamina_write_all(fd, <const char *>p, take)
            if rc < 0:
                self._oserror("write", self.cur_name)
            p += take
            n -= take
            self.sparse_left -= take

    cdef _sparse_truncate(self, int fd):
        """A sparse file gets its real size: a hole up to the end, if it ends in one."""
        if self.sparse_realsize >= 0 and ftruncate(fd, <off_t>self.sparse_realsize) < 0:
            self._oserror("truncate", self.cur_name)

    cdef _entry(self, unsigned char tf, int64_t size, where):
        cdef const unsigned char *h = self.hdr
        cdef bint ustar = memcmp(h + 257, b"ustar\0", 6) == 0
        cdef bint gnu = memcmp(h + 257, GNU_MAGIC, 8) == 0
        # another version of the magic ("ustar" then other bytes): bsdtar still reads a ustar
        # header, GNU tar and Go a v7 one
        cdef bint odd_ustar = not ustar and not gnu and memcmp(h + 257, b"ustar", 5) == 0
        cdef int64_t mode, uid, gid, sec, nsec = 0, major = 0, minor = 0
        cdef int i
        cdef Kind kind
        self.ext_total = 0
        ext_sparse = self.sparse  # old GNU extension blocks already read
        self.sparse = None
        self.sparse_realsize = -1
        gnu_sparse = None
        name = _cstr(h, 100)
        if ustar and h[345]:
            if h[476] and memcmp(h + 508, b"tar\0", 4) == 0 and memchr(h + 345, 0, 131) == NULL:
                # star's prefix is 131 bytes, its atime follows: Go cuts the name there,
                # GNU tar and bsdtar read on into the atime (lib/x to one, lib64/x to the others)
                raise _errors.InvalidArchiveError(
                    f"{where}: star header whose name prefix fills its 131 bytes and runs into the "
                    "atime field (tar readers disagree on the name)")
            name = _cstr(h + 345, 155) + b"/" + name
        elif h[345] and odd_ustar:  # bsdtar reads prefix and name, GNU tar and Go the name alone
            raise _errors.InvalidArchiveError(
                f"{where}: header whose magic {bytes(h[257:265])!r} is neither ustar's nor GNU tar's, "
                "with a name prefix (tar readers disagree on the name)")
        elif gnu:
            prefix = _go17_prefix(h)
            if prefix:
                name = prefix + b"/" + name
        link = _cstr(h + 157, 100)
        mode = _parse_number(h + 100, 8, "mode", where)
        uid = _parse_number(h + 108, 8, "uid", where)
        gid = _parse_number(h + 116, 8, "gid", where)
        sec = _parse_number(h + 136, 12, "mtime", where)
        gnu_name, gnu_link = self.long_name, self.long_link
        if (gnu_name is not None and not gnu_name and name) or (gnu_link is not None and not gnu_link and link):
            # Go's archive/tar takes an empty long name (link) for none and reads the header's;
            # GNU tar reads "." (the root), bsdtar skips the entry
            raise _errors.InvalidArchiveError(
                f"{where}: an empty GNU long {'name' if gnu_name is not None and not gnu_name else 'link name'} "
                f"before an entry named {_show(name)} (tar readers disagree on its name)")
        if gnu_name is not None:
            name = gnu_name
            self.long_name = None
        if gnu_link is not None:
            link = gnu_link
            self.long_link = None
        xattrs = lib_xattrs = lib_encoded = schily = None
        pax = self.pax
        self.pax = None
        if pax and (gnu_name is not None or gnu_link is not None):
            _one_reading(gnu_name, gnu_name, pax.get(b"path"), "name", b"path")
            _one_reading(pax.get(b"path") or name, gnu_link, pax.get(b"linkpath"), "link name", b"linkpath")
        if pax:
            at = _AtEntry(pax.get(b"path") or name)   # (an empty path is none, as below)
            for k, v in pax.items():
                if not v and not _is_xattr_key(k):
                    continue
                if k == b"path":
                    name = v
                elif k == b"linkpath":
                    link = v
                elif k == b"size":
                    size = _pax_int(v, "size", at)
                elif k == b"uid":
                    uid = _pax_int(v, "uid", at, UINT32_MAX)
                elif k == b"gid":
                    gid = _pax_int(v, "gid", at, UINT32_MAX)
                elif k == b"mtime":
                    sec, nsec = _pax_time(v, at)
                elif k == b"atime" or k == b"ctime":
                    # ignored (CONFORMANCE.md), but one Go cannot read makes it refuse the
                    # header, and docker, containerd and umoci the layer (GNU tar exits 2)
                    _pax_time(v, at, k.decode())
                elif (k == b"uname" or k == b"gname") and _has_byte(v, 0):
                    # lamina owns files by uid/gid alone, but the readers part here: bsdtar cuts
                    # "root\0x" to root's name and gives the file to root, GNU tar keeps the
                    # uid, Go refuses the header (docker and containerd the layer)
                    raise _errors.InvalidArchiveError(f"{at}: NUL byte in PAX {k.decode()} {_show(v)}")
                elif k.startswith(b"SCHILY.xattr."):
                    xattrs = xattrs or {}
                    xattrs[k[13:]] = v
                elif k.startswith(b"LIBARCHIVE.xattr."):
                    lib_xattrs = lib_xattrs or {}
                    xn, xv = _libarchive_xattr(k[17:], v)
                    lib_xattrs[xn] = xv
                    if xn != k[17:]:
                        lib_encoded = lib_encoded or {}
                        lib_encoded[k[17:]] = xn
                elif k.startswith(b"GNU.sparse."):
                    gnu_sparse = gnu_sparse or {}
                    gnu_sparse[k[11:]] = v
                elif k == b"SCHILY.devmajor" or k == b"SCHILY.devminor" or k == b"SCHILY.realsize":
                    schily = schily or {}
                    schily[k[7:]] = v
        sparse_version = 0
        if tf == c'S' and gnu:
            # (in another format 'S' is a plain file to GNU tar and bsdtar, its data dense)
            if gnu_sparse is not None:  # the old map applies, as for Go: the records do not rename
                _one_name(name, gnu_sparse.get(b"name"))
            self.sparse = array("q", [])
            for i in range(4):  # the header's own slots come first
                if h[386 + 24 * i] == 0:
                    break
                self._sparse_add(_parse_number(h + 386 + 24 * i, 12, "sparse offset", where),
                                 _parse_number(h + 398 + 24 * i, 12, "sparse length", where), where)
            if ext_sparse is not None:
                if len(self.sparse) + len(ext_sparse) > 2 * self.max_sparse_entries:
                    raise _errors.LimitExceededError(
                        f"{where}: sparse map of more than {self.max_sparse_entries} regions")
                self.sparse.extend(ext_sparse)
            self.sparse_realsize = _parse_number(h + 483, 12, "sparse real size", where)
            if gnu_sparse is not None:  # bsdtar makes the file that size, Go keeps the header's
                _one_size(name, gnu_sparse, self.sparse_realsize, "an old GNU sparse entry")
        elif gnu_sparse is not None:
            name, sparse_version = self._pax_sparse(gnu_sparse, name, size, where)
            if sparse_version and gnu_name is not None and gnu_sparse.get(b"name"):
                # bsdtar names a sparse file by its GNU long name, Go by GNU.sparse.name
                _one_reading(gnu_name, gnu_name, gnu_sparse[b"name"], "name", b"GNU.sparse.name")
        self.prev_name = name
        self.dir_size_dropped = 0
        if self.acl_name is not None:
            self._check_acl_entry(name, tf)
        if _has_byte(name, 0) or _has_byte(link, 0):  # not ``in``: bytes.__contains__ formats a TypeError first
            raise _errors.InvalidArchiveError(f"entry {_show(name)}: NUL byte in name")
        if xattrs or lib_xattrs:
            xattrs = _entry_xattrs(name, xattrs, lib_xattrs, lib_encoded)

        if tf == c'0' or tf == 0 or tf == c'7':
            # a "file" named with a trailing slash is an old-style directory,
            # with no data whatever its size field says (GNU tar and bsdtar)
            kind = K_DIR if name.endswith(b"/") else K_REG
            if kind == K_DIR:
                self.dir_size_dropped = size
                size = 0
        elif tf == c'5' or tf == c'D':
            kind = K_DIR
        elif tf == c'1':
            kind = K_LINK
        elif tf == c'2':
            kind = K_SYMLINK
        elif tf == c'3':
            kind = K_CHR
        elif tf == c'4':
            kind = K_BLK
        elif tf == c'6':
            kind = K_FIFO
        elif tf == c'S':
            kind = K_REG
        elif tf == c'V':  # volume label: not a file
            if pax is not None or gnu_name is not None or gnu_link is not None:
                # GNU tar lets the label take the extended header, bsdtar hands it on to
                # the next entry (a whiteout name to one, a harmless file to the other)
                raise _errors.InvalidArchiveError(
                    f"entry {_show(name)}: an extended header before a volume label "
                    "(tar readers disagree on which entry it names)")
            self._skip_then_header(size + _pad(size))
            return
        elif tf == c'A':
            # Solaris tar's ACL of the entry that follows, named as it: bsdtar reads it so, GNU
            # tar extracts it as a file that entry then replaces; ACLs are not applied (as for
            # SCHILY.acl.*).  The name is checked against the next entry's (_check_acl_entry).
            if pax is not None or gnu_name is not None or gnu_link is not None:
                raise _errors.InvalidArchiveError(
                    f"entry {_show(name)}: an extended header before a Solaris ACL header "
                    "(tar readers disagree on which entry it names)")
            self.acl_name = name
            self._skip_then_header(size + _pad(size))
            return
        elif tf == c'M':
            # GNU tar refuses a continuation of another volume's file, bsdtar extracts it
            raise _errors.InvalidArchiveError(
                f"entry {_show(name)}: type 'M' (a file continued from another volume of a multivolume archive)")
        else:
            # POSIX: an unknown type is read as a regular file; GNU tar and bsdtar do so
            kind = K_REG
            self.skipped.append(f"{_show(name)}: unknown tar entry type {bytes([tf])!r}, "
                                "extracted as a regular file")
        skip_after = 0
        if tf >= c'1' and tf <= c'6':
            # header-only types carry no data even when their size field says
            # so (the rule of Go's archive/tar, which wrote most image layers)
            size = 0
        elif tf == c'D':  # GNU dumpdir: its data is a listing we do not need
            skip_after = size + _pad(size)
            size = 0

        self.entries += 1
        if self.entries > self.max_entries:
            raise _errors.LimitExceededError(f"entry {_show(name)}: more than {self.max_entries} entries in layer")
        if (kind == K_CHR or kind == K_BLK) and (ustar or gnu):
            # a header without the ustar or GNU magic (v7) has no device fields: GNU tar, bsdtar
            # and Go read 0/0 whatever those bytes hold
            major = _parse_number(h + 329, 8, "devmajor", where)
            minor = _parse_number(h + 337, 8, "devminor", where)
        elif (kind == K_CHR or kind == K_BLK) and odd_ustar and (
                _parse_number(h + 329, 8, "devmajor", where) or _parse_number(h + 337, 8, "devminor", where)):
            # bsdtar reads them under any magic starting "ustar"
            raise _errors.InvalidArchiveError(
                f"entry {_show(name)}: device numbers in a header whose magic {bytes(h[257:265])!r} is neither "
                "ustar's nor GNU tar's (bsdtar reads them, GNU tar and Go read 0/0)")
        if kind == K_CHR or kind == K_BLK:
            if major < 0 or major > UINT32_MAX or minor < 0 or minor > UINT32_MAX:
                raise _errors.InvalidArchiveError(f"entry {_show(name)}: device number out of range")
            if kind == K_CHR and major == 0 and minor == 0:
                # overlayfs reads a 0/0 character device in a layer as a whiteout: the overlay
                # formats (and the store) would delete what the dir format shows as a node
                raise _errors.UnsupportedEntryError(
                    f"entry {_show(name)}: a character device 0/0 is overlayfs's whiteout "
                    "(layers mark deletions with .wh. files)")
        if schily is not None:
            self._check_schily(name, kind, schily, size, major, minor)
        if uid < 0 or uid > UINT32_MAX or gid < 0 or gid > UINT32_MAX:
            raise _errors.InvalidArchiveError(f"entry {_show(name)}: uid/gid out of range ({uid}/{gid})")
        if (uid == UINT32_MAX and mode & 0o4000) or (gid == UINT32_MAX and mode & 0o2000):
            # 2^32-1 is (uid_t)-1, chown's "leave the owner": GNU tar, bsdtar and Go's unpackers
            # leave the extracting user's, root's, so the bit would run as root where a scanner
            # reading the header sees another owner.  Without the bit root's file is what they all
            # extract (CPython's testtar.tar has one)
            raise _errors.InvalidArchiveError(
                f"entry {_show(name)}: set{'u' if uid == UINT32_MAX and mode & 0o4000 else 'g'}id bit with "
                f"owner {uid}/{gid}: 4294967295 is (uid_t)-1, which leaves the file root's")
        if (self.sparse is not None or sparse_version) and kind != K_REG:
            raise _errors.InvalidArchiveError(f"entry {_show(name)}: sparse map on an entry that is not a file")

        self.cur_name = name
        self.cur_mode = mode & 0o7777
        if not self.is_root:
            self.cur_mode &= 0o1777  # no setuid/setgid without root
            # Rootless, every inode is the extracting user's, and a bundle maps that user to
            # the container's root, for whom owner bits are moot (DAC override).  Without them
            # the user could not read their own tree: a mode 0000 file (/etc/shadow of Fedora
            # and UBI images) or directory broke the store's commit, flatten, fsck and save,
            # and the next layer's entries under such a directory.
            if kind == K_DIR:
                self.cur_mode |= 0o500
            elif kind == K_REG:
                self.cur_mode |= 0o400
        self.cur_uid = uid
        self.cur_gid = gid
        self.cur_sec = sec
        self.cur_nsec = nsec
        if xattrs:
            for k in xattrs:
                if k == STAGING_MARK:
                    self.skipped.append(f"{_show(name)}: xattr {_show(k)} not set (lamina's own mark on its "
                                        "staging dirs: no layer's entry sets it)")
            xattrs = {k: v for k, v in xattrs.items()
                      if not k.startswith(OVERLAY_XATTR_PREFIXES) and k != STAGING_MARK}
        self.cur_xattrs = xattrs or None

        path = self._normalize(name)
        if sparse_version == 10:
            # the map leads the data: read it before anything is written
            if size < BLOCK:
                raise _errors.InvalidArchiveError(f"entry {_show(name)}: sparse map missing from the data")
            self.sparse_pending = (kind, path, name, link, size, major, minor)
            self.sparse_text = bytearray()
            self.sparse_size = 0
            self.sparse_nl = 0
            self.sparse_need = -1
            self._read_meta(c'M', BLOCK)
            return
        self._start_entry(kind, path, name, link, size, major, minor, skip_after)

    cdef _check_acl_entry(self, bytes name, unsigned char tf):
        """The entry after a Solaris ACL header ('A') must bear its name: GNU tar leaves the
        'A' header as a file where bsdtar sees nothing unless that entry replaces it."""
        acl_name, self.acl_name = self.acl_name, None
        if tf == c'A' or self._normalize(acl_name) != self._normalize(name):
            raise _errors.InvalidArchiveError(
                f"entry {_show(name)}: follows a Solaris ACL header of {_show(acl_name)} "
                "(GNU tar extracts that header as a file, bsdtar as this entry's ACL)")

    cdef _check_schily(self, bytes name, Kind kind, dict schily, int64_t size, int64_t major, int64_t minor):
        """star's SCHILY.devmajor, SCHILY.devminor and SCHILY.realsize: bsdtar applies them over
        the header's numbers, GNU tar and Go ignore them (a device 0/0, overlayfs's whiteout, or a
        file, or a hardlink's target, cut or stretched to another size for bsdtar alone).  They
        must say what the header says."""
        checks = []
        if kind == K_CHR or kind == K_BLK:
            checks = [(b"devmajor", major), (b"devminor", minor)]
        elif kind == K_REG:
            checks = [(b"realsize", self.sparse_realsize if self.sparse_realsize >= 0 else size)]
        elif kind == K_LINK:
            checks = [(b"realsize", 0)]
        for key, want in checks:
            v = schily.get(key)
            if v is not None and _decimal(v) != want:
                raise _errors.InvalidArchiveError(
                    f"entry {_show(name)}: SCHILY.{key.decode()} {v[:40]!r} is not the header's {want} "
                    "(bsdtar applies it, GNU tar and Go do not)")

    cdef _pax_sparse(self, dict gs, bytes name, int64_t size, where):
        """GNU.sparse.* records -> (name, version): 1 for the 0.0/0.1 forms (map
        in the records, read here), 10 for 1.0 (map leads the data), 0 when the
        records do not make a sparse file (Go's readGNUSparsePAXHeaders)."""
        major, minor = gs.get(b"major"), gs.get(b"minor")
        if major == b"1" and minor == b"0":
            version = 10
        elif major == b"0" and (minor == b"0" or minor == b"1"):
            version = 1
        elif major is not None or minor is not None:
            raise _errors.UnsupportedEntryError(
                f"entry {_show(name)}: unknown GNU sparse format version {major!r}.{minor!r}")
        elif gs.get(b"map"):
            version = 1
        else:
            # Not sparse: Go ignores GNU.sparse.name, GNU tar and bsdtar rename the entry
            _one_name(name, gs.get(b"name"))
            # bsdtar makes the file that size (zeros after the data), GNU tar reads a sparse
            # map out of the data, Go ignores the record
            _one_size(name, gs, size, "an entry that is not sparse")
            return name, 0
        if gs.get(b"size") and gs.get(b"realsize") and _decimal(gs[b"size"]) != _decimal(gs[b"realsize"]):
            # Go takes GNU.sparse.size, bsdtar the last of the two records: files of two sizes
            raise _errors.InvalidArchiveError(
                f"entry {_show(name)}: GNU.sparse.size {gs[b'size'][:40]!r} and GNU.sparse.realsize "
                f"{gs[b'realsize'][:40]!r} differ (tar readers disagree on the file's size)")
        if version == 10 and gs.get(b"map"):
            # Go reads a 1.0 map from the data only, bsdtar applies the record to the data as it is
            raise _errors.InvalidArchiveError(
                f"entry {_show(name)}: a GNU.sparse.map record on a GNU sparse 1.0 entry, whose map leads "
                "its data (tar readers disagree on which applies)")
        if gs.get(b"name"):
            name = gs[b"name"]
        real = gs.get(b"size") or gs.get(b"realsize")
        self.sparse_realsize = _pax_int(real, "GNU.sparse.size", where) if real else size
        if version == 1:
            parts = gs.get(b"map", b"").split(b",") if gs.get(b"map") else []
            if len(parts) > 2 * self.max_sparse_entries:
                raise _errors.LimitExceededError(
                    f"entry {_show(name)}: sparse map of more than {self.max_sparse_entries} regions")
            if len(parts) % 2:
                raise _errors.InvalidArchiveError(f"entry {_show(name)}: GNU.sparse.map of an odd length")
            blocks = gs.get(b"numblocks")
            if blocks is not None and (_decimal(blocks) or 0) * 2 != len(parts):
                raise _errors.InvalidArchiveError(f"entry {_show(name)}: GNU.sparse.numblocks does not match the map")
            self.sparse = array("q", [])
            for i in range(0, len(parts), 2):
                self._sparse_add(_sparse_num(parts[i], name), _sparse_num(parts[i + 1], name), where)
        return name, version

    cdef _start_entry(self, Kind kind, bytes path, bytes name, bytes link, int64_t size,
                      int64_t major, int64_t minor, int64_t skip_after):
        """Apply a decoded entry and set the parser up for its data."""
        if self.sparse is not None:
            self._check_sparse(name, size)
            self.sparse_i = -2
            self.sparse_left = 0
        cdef int64_t t = _now_ns()
        try:
            self._apply(kind, path, name, link, size, major, minor)
        except _errors.LaminaError:
            if self.early_pending:
                self._moved_first()
            raise
        if not self.scan_only:  # a scan's _apply only records what the layer hides
            self.write_ns += _now_ns() - t
        if skip_after:
            self._skip_then_header(skip_after)
            self.skip_pad = _pad(size)
        elif size and self.outfd >= 0:
            self.state = ST_DATA
            self.remaining = size
            self.pad = _pad(size)
        elif size:  # a whiteout with content, say: consume it unwritten
            self._skip_then_header(size + _pad(size))
            self.skip_pad = _pad(size)
        else:
            self.state = ST_HEADER

    # ----------------------------------------------------------------- paths

    cdef bytes _normalize(self, bytes raw):
        """Lexically clean a member name into "a/b/c" under the root.

        Leading slashes, "." and empty components vanish; ".." pops a
        component but never climbs above the root.  "" means the root.
        """
        cdef Py_ssize_t n = len(raw), i = 0, start, clen
        cdef const char *s = raw
        cdef bytearray out
        cdef char *o
        cdef Py_ssize_t olen = 0
        cdef int64_t depth = 0
        # Most names are clean already ("a/b/c", a directory's with a trailing "/"): return
        # them as they are, or less that slash, without building a copy.
        while True:
            start = i
            while i < n and s[i] != c'/':
                i += 1
            clen = i - start
            if clen == 0 or (s[start] == c'.' and (clen == 1 or (clen == 2 and s[start + 1] == c'.'))):
                break  # "", "/..", "a//b", "./a", "a/../b": the general loop below
            depth += 1
            if i >= n - 1:  # the end, or a trailing slash
                olen = i
                if olen > self.max_path or depth > self.max_depth:
                    break  # the general loop raises the error
                return raw if i == n else raw[:i]
            i += 1
        i = 0
        depth = 0
        olen = 0
        out = bytearray(n)
        o = out
        while i < n:
            while i < n and s[i] == c'/':
                i += 1
            start = i
            while i < n and s[i] != c'/':
                i += 1
            clen = i - start
            if clen == 0 or (clen == 1 and s[start] == c'.'):
                continue
            if clen == 2 and s[start] == c'.' and s[start + 1] == c'.':
                while olen > 0 and o[olen - 1] != c'/':
                    olen -= 1
                if olen > 0:
                    olen -= 1
                if depth > 0:
                    depth -= 1
                continue
            if olen:
                o[olen] = c'/'
                olen += 1
            memcpy(o + olen, s + start, clen)
            olen += clen
            depth += 1
        if olen > self.max_path:
            raise _errors.LimitExceededError(
                f"entry {_show(raw[:200])}...: path of {olen} bytes exceeds the limit of {self.max_path}")
        if depth > self.max_depth:
            raise _errors.LimitExceededError(
                f"entry {_show(raw[:200])}...: {depth} levels deep exceeds the limit of {self.max_depth}")
        return bytes(out[:olen])

    cdef int _open_in_root(self, bytes path) except -2:
        """Open directory ``path`` (normalized) inside the root, symlinks re-rooted.

        Returns a new fd, or -1 with errno set."""
        cdef int fd, e, root = self.rootfd
        cdef const char *cpath = path
        if not path:
            return dup(self.rootfd)
        if self.use_openat2:
            with nogil:  # a resolution from the root: the costly syscall of a change of parent
                fd = lamina_openat2(root, cpath, O_RDONLY | O_DIRECTORY | O_CLOEXEC,
                                    LAMINA_RESOLVE_IN_ROOT | LAMINA_RESOLVE_NO_MAGICLINKS)
                e = errno
            if e == ENAMETOOLONG:
                return self._walk_in_root(path)  # past PATH_MAX: one component at a time has no bound
            if fd >= 0 or (e != ENOSYS and e != EPERM):
                lamina_set_errno(e)
                return fd
            self.use_openat2 = False  # seccomp or an old kernel: walk by hand from now on
        return self._walk_in_root(path)

    cdef int _walk_in_root(self, bytes path) except -2:
        """RESOLVE_IN_ROOT by hand: component by component with O_NOFOLLOW,
        expanding symlinks ourselves so that ".." and absolute targets stop at the root."""
        cdef int fd = _dup_checked(self.rootfd), nfd, links = 0, e
        cdef stat st
        cdef char buf[4096]
        cdef Py_ssize_t ln
        stack = []
        todo = path.split(b"/")[::-1]
        while todo:
            c = todo.pop()
            if not c or c == b".":
                continue
            if c == b"..":
                if stack:
                    # fd was reached from the root one plain directory at a time, so its ".."
                    # is the directory of stack[:-1]: a walk again from the root per ".." cost
                    # time quadratic in the depth (a symlink of 1,300 ".." deep down)
                    stack.pop()
                    nfd = openat(fd, b"..", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                    e = errno
                    close(fd)
                    if nfd < 0:
                        lamina_set_errno(e)
                        return -1
                    fd = nfd
                continue
            if fstatat(fd, c, &st, AT_SYMLINK_NOFOLLOW) < 0:
                e = errno
                close(fd)
                # a component past NAME_MAX (only a symlink's target has one: such entries are
                # refused) names nothing: absent, as the overlay formats' walk reads it
                lamina_set_errno(ENOENT if e == ENAMETOOLONG else e)
                return -1
            if S_ISLNK(st.st_mode):
                links += 1
                ln = readlinkat(fd, c, buf, sizeof(buf))
                if links > 40 or ln < 0:
                    close(fd)
                    lamina_set_errno(ELOOP)
                    return -1
                target = buf[:ln]
                if target.startswith(b"/"):
                    stack = []
                    close(fd)
                    fd = dup(self.rootfd)
                    if fd < 0:
                        return -1  # errno from dup (EMFILE): not a walk on from fd -1 ("Bad file descriptor")
                todo.extend(target.split(b"/")[::-1])
                continue
            fd = _descend(fd, <bytes>c)
            if fd < 0:
                return -1
            stack.append(c)
        return fd

    cdef int _resolve_dir(self, bytes path, bint create, object name) except -2:
        """A new fd for directory ``path`` inside the root; creates missing
        components (mode 0755) when ``create``; else -1 when it does not exist."""
        cdef int fd
        if self.overlay:
            return self._union_dir(path, create, name)
        fd = self._open_in_root(path)
        if fd >= 0:
            return fd
        if errno == ENOENT and create:
            return self._mkdir_p(path, name)
        if (errno == ENOENT or errno == ENOTDIR) and not create:
            return -1  # absent, or under a non-directory: nothing there either way
        self._parent_error(path, name)
        return -1

    cdef _parent_error(self, bytes path, name):
        e = errno
        if e == ENOTDIR:
            raise _errors.ExtractError(
                f"entry {_show(name)}: a component of {_show(path)} is not a directory")
        if e == ELOOP:
            raise _errors.ExtractError(f"entry {_show(name)}: too many levels of symlinks in {_show(path)}")
        raise _errors.ExtractError(f"entry {_show(name)}: cannot open {_show(path)}: {os.strerror(e)}")

    cdef int _mkdir_p(self, bytes path, name) except -2:
        """Create the missing directories of ``path`` (dir format).

        The deepest existing prefix is found by bisection and the rest made
        one openat() at a time from there, so a deep new chain costs linear
        time, not one resolution from the root per level."""
        cdef int fd = -1, nfd, rc, e
        cdef Py_ssize_t lo = 0, hi, mid, i
        cdef stat st
        cdef bint sgid
        parts = path.split(b"/")
        hi = len(parts) - 1            # the whole path is known to be missing
        while lo < hi:                 # invariant: parts[:lo] exists, parts[:hi + 1] does not
            mid = (lo + hi + 1) // 2
            nfd = self._open_in_root(b"/".join(parts[:mid]))
            if nfd >= 0:
                close(nfd)
                lo = mid
            elif errno == ENOENT:
                hi = mid - 1
            else:
                self._parent_error(b"/".join(parts[:mid]), name)
        fd = self._open_in_root(b"/".join(parts[:lo])) if lo else dup(self.rootfd)
        if fd < 0:
            self._parent_error(path, name)
        self._keep_times(fd, b"/".join(parts[:lo]))  # the dirs made below it are new: nothing to keep
        if not self.overlay:
            try:
                self._record_ancestors(fd, name)
            except BaseException:
                close(fd)
                raise
        # A directory made under a setgid one (of a lower layer: this layer's modes are set
        # at its end) would take its group and setgid bit; the overlay formats make it in a
        # layer of its own, where it does not, and an implied directory is the extractor's
        # anyway: the same 0755 and owner on every path.
        sgid = fstat(fd, &st) == 0 and (st.st_mode & 0o2000) != 0
        for i in range(lo, len(parts)):
            rc = mkdirat(fd, <bytes>parts[i], 0o755)
            if rc < 0 and errno != EEXIST:
                if errno == EACCES and self._open_up(fd, b"/".join(parts[:i])):
                    rc = mkdirat(fd, <bytes>parts[i], 0o755)
                    if rc < 0 and errno != EEXIST:
                        close(fd)
                        self._parent_error(path, name)
                else:
                    close(fd)
                    self._parent_error(path, name)
            if rc == 0 and _has_default_acl(fd):
                self.default_acls = True
                try:
                    self._undo_default_acl(fd, <bytes>parts[i], name, True, 0o755, ())
                except BaseException:
                    close(fd)
                    raise
            if rc < 0 and fstatat(fd, <bytes>parts[i], &st, AT_SYMLINK_NOFOLLOW) == 0 and S_ISLNK(st.st_mode):
                # there, but the search above found nothing through it: a link to nowhere in
                # the root (the overlay formats' words for it; was "is not a directory")
                close(fd)
                raise _errors.ExtractError(
                    f"entry {_show(name)}: {_show(path)} goes through a dangling symlink")
            fd = _descend(fd, <bytes>parts[i])
            if fd < 0:
                self._parent_error(b"/".join(parts[:i + 1]), name)
            if sgid and rc == 0:
                if (fchown(fd, <uid_t>-1, <gid_t>self.egid) < 0 or fstat(fd, &st) < 0
                        or fchmod(fd, st.st_mode & 0o777) < 0):
                    e = errno
                    close(fd)
                    lamina_set_errno(e)
                    self._oserror("set the owner and mode of", name)
                sgid = False
            if not self.overlay:
                self._record_inode(fd, b"")
        return fd

    cdef bint _open_up(self, int fd, bytes key) except -1:
        """Rootless: give the owner write and search rights on a directory a
        lower layer left read-only, for the rest of this layer (as umoci's
        unpriv does); the mode is restored at the end.  False if it cannot."""
        cdef stat st
        if self.is_root or fstat(fd, &st) < 0 or st.st_uid != geteuid():
            return False
        if (st.st_mode & 0o700) == 0o700:
            return False
        if fchmod(fd, (st.st_mode & 0o7777) | 0o700) < 0:
            return False
        self.fixups.mode(key, &st)  # the first one recorded wins
        return True

    cdef int _parent(self, bytes path, Py_ssize_t slash, object name) except -2:
        """fd of the parent directory of ``path`` (created if missing), cached
        for the run of entries in one directory; callers do not close it."""
        cdef int fd = -1, old = self.cache_fd, base_fd = -1, sr = -2, k
        cdef Py_ssize_t n
        cdef const char *cleaf
        cdef stat nst
        cdef bint reused = False, push = False
        cdef bytes cp = self.cache_path
        if (self.cache_valid and self.cache_fd >= 0 and len(cp) == (slash if slash > 0 else 0)
                and memcmp(<const char *>path, <const char *>cp, len(cp)) == 0):
            return self.cache_fd  # the common case, without slicing ``path``
        parent = path[:slash] if slash > 0 else b""
        realp = None
        if self.cache_valid and self.cache_fd >= 0:
            # one level below the cached parent (tars list trees depth first), or below or at
            # one of the parents kept above it: a real directory there is where the full
            # resolution would lead
            base_path, base_realp, base_fd = cp, self.cache_realp, old
            if not self.overlay and not _one_below(parent, cp):
                base_fd = -1
                k = self.par_n - 1
                while k >= 0:
                    up = <bytes>self.par_paths[k]
                    if up == parent or _one_below(parent, up):
                        base_path, base_realp, base_fd = up, self.par_realps[k], self.par_fd[k]
                        break
                    k -= 1
                if base_fd >= 0 and base_path == parent:  # back up in a parent kept open
                    fd, realp, reused = base_fd, base_realp, True
                    nst = self.par_st[k]
                    sr = 0 if self.par_st_ok[k] else -2
                    self._drop_pars(k + 1)  # closes those above it
                    self.par_n = k         # and takes it off, open
                    del self.par_paths[k:]
                    del self.par_realps[k:]
                elif base_fd >= 0:
                    self._drop_pars(k + 1)  # those above it are not on the new parent's way
            if fd < 0 and base_fd >= 0 and _one_below(parent, base_path):
                n = len(base_path)
                leaf = parent[n + 1 if n else 0:]
                cleaf = leaf
                with nogil:  # open and stat in one block without the GIL
                    fd = openat(base_fd, cleaf, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                    if fd >= 0:
                        sr = fstat(fd, &nst)
                if fd >= 0:
                    push = base_fd == old  # the old parent stays open above the new one
                if fd >= 0 and self.overlay:
                    self.cache_phys = self.cache_phys + b"/" + leaf if self.cache_phys else leaf
                elif fd >= 0 and base_realp is not None:  # reached by one name, no symlink
                    realp = base_realp + b"/" + leaf if base_realp else leaf
        if fd < 0:
            fd = self._resolve_dir(parent, True, name)
            self.cache_phys = self.last_phys
            if not parent:
                realp = b""  # dup(root)
            self._drop_pars(0)
        if self.cache_fd >= 0:
            if push and not self.overlay and self.par_n < PAR_MAX:
                self.par_fd[self.par_n] = self.cache_fd
                self.par_st[self.par_n] = self.cache_st
                self.par_st_ok[self.par_n] = self.cache_st_ok
                self.par_paths.append(self.cache_path)
                self.par_realps.append(self.cache_realp)
                self.par_n += 1
            else:
                close(self.cache_fd)
        self.cache_fd = fd
        if not self.default_acls and not reused and _has_default_acl(fd):
            # (a parent kept open was checked when it was first the cached one, and a
            # default ACL set since, by an entry or a copy, set default_acls then)
            self.default_acls = True
        self.cache_ino = None
        self.cache_path = parent
        self.cache_real = None
        self.cache_realp = realp
        self.cache_valid = True
        self.owner_checked = False
        if sr == -2:
            sr = fstat(fd, &nst)
        if sr == 0:
            self.cache_st = nst
        self.cache_st_fresh = self.cache_st_ok = sr == 0
        if reused:
            # its times, inode and ancestors were recorded when it was first the cached parent;
            # its owner and mode are fstat'ed again when a new inode's owner is predicted
            self.cache_st_fresh = False
            if not self.is_root:
                self._open_up(fd, parent)
            return fd
        if self.cache_st_fresh:
            # (a directory this layer listed has its own times, which take precedence)
            if not self.overlay and not self.fixups.has_time(parent):
                self.fixups.time(self._cached_real_path(fd, parent), &self.cache_st)
        else:
            self._keep_times(fd, parent)
        if not self.overlay:
            if not self.cache_st_fresh or not self.created_ino.has(self.cache_st.st_dev, self.cache_st.st_ino):
                self._record_ancestors(fd, name)   # (fd is cache_fd now: closed with the cache)
            if not self.is_root:
                self._open_up(fd, parent)
                self.cache_st_fresh = False
        return fd

    cdef inline bint _hash_begin(self, const void *data, size_t size) noexcept nogil:
        """The blake3 of a regular file's bytes about to be written: a large write's is posted to
        the worker thread (hash_worker.h), to run on the other core while they are written;
        True if it was.  _hash_end must follow before ``data`` is let go."""
        if self.cur_hashing and size >= HASH_OFFLOAD_MIN and lamina_hw_start(&self.hash_worker) == 0:
            lamina_hw_post(&self.hash_worker, &self.hasher, data, size)
            return True
        return False

    cdef inline void _hash_end(self, bint posted, const void *data, size_t size) noexcept nogil:
        """After the write: wait for the worker, or hash here; errno stays the write's (for the
        error that may follow)."""
        cdef int e = errno
        if posted:
            lamina_hw_wait(&self.hash_worker)
        elif self.cur_hashing:
            blake3_hasher_update(&self.hasher, <const uint8_t *>data, size)
        lamina_set_errno(e)

    cdef bint _owner_is(self, int pfd) noexcept nogil:
        """Does an inode just created under ``pfd`` (the cached parent) already have
        the entry's owner?  Then its chown would change nothing.  The rule (root: the
        creator's ids, a setgid parent's group) is checked by fstat on the first
        inode under each cached parent (``_owner_seen``) until it fails once."""
        if not self.predict_owner or pfd != self.cache_fd or self.cur_uid != self.euid:
            return False
        if not self.cache_st_fresh:
            if fstat(pfd, &self.cache_st) < 0:
                return False
            self.cache_st_fresh = self.cache_st_ok = True
        if self.cache_st.st_mode & 0o2000:
            return self.cur_gid == self.cache_st.st_gid
        return self.cur_gid == self.egid

    cdef bint _owner_seen(self, stat *st) noexcept nogil:
        """Whether the rule held for the inode of ``st``; if not, never predict again."""
        self.owner_checked = True
        if st.st_uid == self.cur_uid and st.st_gid == self.cur_gid:
            return True
        self.predict_owner = False
        return False

    # ------------------------------------------------ overlay: the union view

    cdef bint _is_opaque(self, int fd):
        return _opaque_fd(fd)

    cdef int _plain_dir(self, int root, bytes path) except -2:
        """fd of directory ``path`` under ``root`` reached without following
        any symlink, or -1 with errno set (ELOOP/ENOTDIR: something else is on the way)."""
        cdef int fd, e
        cdef const char *cpath = path
        if not path:
            return dup(root)
        if self.use_openat2:
            with nogil:
                fd = lamina_openat2(root, cpath, O_RDONLY | O_DIRECTORY | O_CLOEXEC,
                                    LAMINA_RESOLVE_IN_ROOT | LAMINA_RESOLVE_NO_SYMLINKS | LAMINA_RESOLVE_NO_MAGICLINKS)
                e = errno
            if e == ENAMETOOLONG:
                # a directory a symlink below led to, deeper than PATH_MAX: the walk has no bound
                return _walk_plain(root, path)
            if fd >= 0 or (e != ENOSYS and e != EPERM):
                lamina_set_errno(e)
                return fd
            self.use_openat2 = False
        return _walk_plain(root, path)

    cdef int _union_dir(self, bytes path, bint create, object name) except -2:
        """This layer's fd for directory ``path`` as the overlay mount will
        resolve it (see ``_union_walk``); sets ``last_phys`` to where it is.
        -1 (errno ENOENT or ENOTDIR) when it is not there and not ``create``."""
        cdef int fd = self._plain_dir(self.rootfd, path)
        if fd >= 0:
            self.last_phys = path  # this layer's own directories all the way: the mount shows them
            return fd
        if errno != ENOENT and errno != ELOOP and errno != ENOTDIR:
            self._parent_error(path, name)
        if create and errno == ENOENT and len(self.lower_fds) >= NAMES_BELOW_MIN_LOWERS and not self.defer_lowers:
            fd = self._new_dir_nothing_below(path, name)
            if fd >= 0:
                return fd
        return self._union_walk(path, create, name, None)

    cdef int _new_dir_nothing_below(self, bytes path, object name) except -2:
        """A directory the layer implies, as _union_walk would make it, when this layer has its
        parent (reached without a symlink) and no layer below has it: a new 0755 directory,
        without the walk through every layer below (5k implied directories over 400 layers
        took 14 s).  -1: not so, nothing done."""
        cdef Py_ssize_t slash = path.rfind(b"/")
        cdef int pfd, fd
        if slash <= 0:
            return -1  # the root's: rare, and the walk is short
        pfd = self._plain_dir(self.rootfd, path[:slash])
        if pfd < 0:
            return -1
        try:
            if not self._none_below(path):
                return -1
            fd = self._mkdir_open(pfd, path[slash + 1:], 0o755, name)
            if fd < 0:
                return -1  # something else is there after all: the walk says what
        finally:
            close(pfd)
        self.last_phys = path
        return fd

    cdef int _mkdir_open(self, int pfd, bytes base, mode_t mode, object name) except -2:
        """Make directory ``base`` in ``pfd`` (a default ACL there undone, as for every directory
        the layer makes) and open it; -1 with errno EEXIST, nothing made, if a name is there."""
        cdef int fd
        if mkdirat(pfd, base, mode) < 0:
            if errno == EEXIST:
                return -1
            self._oserror("mkdir", name)
        if _has_default_acl(pfd):
            self.default_acls = True
            self._undo_default_acl(pfd, base, name, True, mode, ())
        fd = openat(pfd, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0:
            self._oserror("open", name)
        return fd

    cdef int _union_walk(self, bytes path, bint create, object name, list lowers_out, bint copy_up=True) except -4:
        """Resolve ``path`` through this layer and the layers below, the way
        overlayfs merges them: per component the topmost layer that has it
        decides; a whiteout hides it; a non-directory or an opaque directory
        ends the merge with the layers under it; symlinks in any layer are
        followed, re-rooted at the image root.  Missing directories are created
        in this layer when ``create``; directories only the layers below
        have are copied up in any case, with the metadata they have below.  ``lowers_out`` receives the lower layers' fds of the
        final directory (the caller closes them)."""
        cdef int nl = len(self.lower_fds), i, ufd = -1, nfd, fd, links = 0, found, e
        cdef stat st
        cdef char buf[4096]
        cdef Py_ssize_t ln
        cdef bint stop
        cdef bint unknown_below = self.defer_lowers  # the layers below may have it, and are not ready
        todo = [(c, False) for c in reversed(path.split(b"/"))]
        phys = []       # where the directory really is
        source = []     # per component: the lower layer that provides it, -1 if none / this layer
        # per component: going down into it left the same layers showing something (and the
        # same unknown_below), so ".." is the parent of each fd held: a symlink of 1,300 ".."
        # deep below walked again from the root per "..", time quadratic in the depth (16 s an
        # entry at 2,400 levels)
        plain = []
        lf = []
        try:
            ufd = _dup_checked(self.rootfd)
            for x in self.lower_fds:   # (into lf as each is made: the finally closes them)
                lf.append(_dup_checked(<int>x))
            while todo:
                c, from_link = todo.pop()
                if not c or c == b".":
                    continue
                if c == b".." and phys and plain[len(plain) - 1]:
                    phys.pop()
                    source.pop()
                    plain.pop()
                    ufd = self._up(ufd, path, name)
                    for i in range(nl):
                        lf[i] = self._up(<int>lf[i], path, name)
                    continue
                if c == b"..":
                    if phys:
                        phys.pop()
                        source.pop()
                    todo.extend((x, False) for x in reversed(phys))
                    phys, source, plain = [], [], []
                    ufd = _reset(ufd, self.rootfd)
                    unknown_below = self.defer_lowers
                    for i in range(nl):
                        lf[i] = _reset(<int>lf[i], <int>self.lower_fds[i])
                    continue
                found = -2
                if ufd >= 0:
                    if fstatat(ufd, <bytes>c, &st, AT_SYMLINK_NOFOLLOW) == 0:
                        found = -1
                    elif errno != ENOENT and errno != ENAMETOOLONG:  # past NAME_MAX: in no layer
                        self._parent_error(path, name)
                if found == -2:
                    if unknown_below:
                        if create and copy_up and lowers_out is None and links == 0 and self.early_dirs:
                            nfd = self._early_dir(ufd, <bytes>c, b"/".join(phys + [c]), name)
                            if nfd >= 0:
                                close(ufd)
                                ufd = nfd
                                phys.append(c)
                                source.append(-1)
                                plain.append(False)
                                continue
                        self._load_lowers(f"entry {_show(name)}: {_show(path)} is not in this layer")
                        return self._union_walk(path, create, name, lowers_out, copy_up)
                    for i in range(nl):
                        if <int>lf[i] < 0:
                            continue
                        if fstatat(<int>lf[i], <bytes>c, &st, AT_SYMLINK_NOFOLLOW) == 0:
                            found = i
                            break
                        if errno != ENOENT and errno != ENAMETOOLONG:
                            self._parent_error(path, name)
                if found == -2 or (S_ISCHR(st.st_mode) and st.st_rdev == 0):
                    # absent from the merged view
                    if not create:
                        lamina_set_errno(ENOENT)
                        return -1
                    if from_link:
                        raise _errors.ExtractError(
                            f"entry {_show(name)}: {_show(path)} goes through a dangling symlink")
                    phys.append(c)
                    source.append(-1)
                    plain.append(False)
                    unknown_below = False  # whited out, or new: nothing below shows here
                    if ufd >= 0:
                        close(ufd)
                    ufd = -1
                    for i in range(nl):
                        if <int>lf[i] >= 0:
                            close(<int>lf[i])
                        lf[i] = -1
                    continue
                fd = ufd if found == -1 else <int>lf[found]
                if S_ISLNK(st.st_mode):
                    links += 1
                    ln = readlinkat(fd, <bytes>c, buf, sizeof(buf))
                    if links > 40 or ln <= 0:
                        lamina_set_errno(ELOOP)
                        self._parent_error(path, name)
                    target = buf[:ln]
                    if target.startswith(b"/"):
                        phys, source, plain = [], [], []
                        ufd = _reset(ufd, self.rootfd)
                        unknown_below = self.defer_lowers
                        for i in range(nl):
                            lf[i] = _reset(<int>lf[i], <int>self.lower_fds[i])
                    todo.extend((x, True) for x in reversed(target.split(b"/")))
                    continue
                if not S_ISDIR(st.st_mode):
                    if not create:
                        lamina_set_errno(ENOTDIR)
                        return -1
                    lamina_set_errno(ENOTDIR)
                    self._parent_error(path, name)
                # descend: this layer's copy (if any), then the lower copies it merges with
                was = (ufd >= 0, unknown_below, [<int>x >= 0 for x in lf])
                nfd = -1
                if found == -1:
                    nfd = openat(ufd, <bytes>c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                    if nfd < 0:
                        self._parent_error(path, name)
                stop = nfd >= 0 and self._is_opaque(nfd)
                if stop:
                    unknown_below = False
                if ufd >= 0:
                    close(ufd)
                ufd = nfd
                self._descend_lowers(lf, <bytes>c, found, stop)
                phys.append(c)
                source.append(found)
                plain.append(was == (ufd >= 0, unknown_below, [<int>x >= 0 for x in lf]))
            if lowers_out is not None and unknown_below:
                self._load_lowers(f"entry {_show(name)}: needs the layers below {_show(path)}")
                return self._union_walk(path, create, name, lowers_out, copy_up)
            self.last_phys = b"/".join(phys)
            if lowers_out is not None:
                lowers_out.extend(lf)
                lf = []
            if ufd < 0:
                if not copy_up:
                    return -3  # only the layers below have it (a lookup: nothing copied up)
                ufd = self._copy_up_dirs(phys, source, name)
            fd, ufd = ufd, -1
            return fd
        finally:
            if ufd >= 0:
                close(ufd)
            _close_fds(lf)

    cdef int _up(self, int fd, bytes path, object name) except -2:
        """The parent of directory ``fd`` (then closed), -1 for -1: a layer's directory reached
        from its root one plain directory at a time, not its root.  On an error ``fd`` stays open:
        the caller still holds it (``ufd = self._up(ufd, ...)`` keeps the old number when this
        raises) and closes it; closed here as well, its ``finally`` closed the number a second
        time, by then maybe another thread's new file (EMFILE, or EACCES without root)."""
        cdef int nfd
        if fd < 0:
            return -1
        nfd = openat(fd, b"..", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if nfd < 0:
            self._parent_error(path, name)
        close(fd)
        return nfd

    cdef int _copy_up_dirs(self, list phys, list source, object name) except -2:
        """Make the directories of ``phys`` that this layer lacks: with the
        metadata of the lower layer that provides each one, or as new 0755
        directories; a whiteout of this layer in the way becomes an opaque
        directory (what was below stays hidden)."""
        cdef int fd = _dup_checked(self.rootfd), nfd, below = -1, below_layer = -1
        cdef stat st
        cdef Py_ssize_t k
        try:
            for k in range(len(phys)):
                c = <bytes>phys[k]
                # the lower directory of the level above, kept while one layer provides level
                # after level: a chain thousands deep (a symlink below led there) copies up
                # in linear time, and its path past PATH_MAX is never resolved from the top
                if below >= 0 and <int>source[k] != below_layer:
                    close(below)
                    below = -1
                if below >= 0:
                    below = _descend(below, c)
                    if below < 0:
                        self._parent_error(b"/".join(phys[:k + 1]), name)
                elif <int>source[k] >= 0:
                    below = self._plain_dir(<int>self.lower_fds[<int>source[k]], b"/".join(phys[:k + 1]))
                    if below < 0:
                        self._parent_error(b"/".join(phys[:k + 1]), name)
                below_layer = <int>source[k]
                nfd = openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                if nfd < 0:
                    if errno != ENOENT and errno != ENOTDIR:
                        self._parent_error(b"/".join(phys[:k + 1]), name)
                    opaque = False
                    if fstatat(fd, c, &st, AT_SYMLINK_NOFOLLOW) == 0:
                        if not (S_ISCHR(st.st_mode) and st.st_rdev == 0):
                            lamina_set_errno(ENOTDIR)
                            self._parent_error(b"/".join(phys[:k + 1]), name)
                        if unlinkat(fd, c, 0) < 0:
                            self._oserror("replace whiteout", name)
                        opaque = True
                    nfd = self._mkdir_open(fd, c, 0o700 if <int>source[k] >= 0 else 0o755, name)
                    if nfd < 0:
                        self._oserror("mkdir", name)
                    if opaque:
                        self._set_opaque(nfd, name)
                    elif below >= 0:
                        try:
                            self._copy_dir_metadata(below, nfd, b"/".join(phys[:k + 1]), name)
                        except BaseException:
                            close(nfd)
                            raise
                close(fd)
                fd = nfd
            nfd, fd = fd, -1
            return nfd
        finally:
            if fd >= 0:
                close(fd)
            if below >= 0:
                close(below)

    cdef _root_from_below(self):
        """A layer that does not name the root leaves it as the layers below have it (the
        dir format never touches it).  overlayfs shows the topmost layer's root instead, so
        this layer's root gets the metadata of the one below (which got it the same way
        from further down, or from a layer naming it): a mount then shows what a copy
        does."""
        if self.defer_lowers:
            self._load_lowers("the root takes its metadata from the layers below")
        if self.lower_fds:
            self._copy_dir_metadata(<int>self.lower_fds[0], self.rootfd, b"", b"./")

    cdef _copy_dir_metadata(self, int src, int dst, bytes phys, object name):
        """A copied-up directory: owner and xattrs now, mode and times at the end."""
        cdef stat st
        if fstat(src, &st) < 0:
            self._oserror("stat lower directory of", name)
        if self.is_root and fchown(dst, st.st_uid, st.st_gid) < 0:
            self._oserror("chown", name)
        # the lower copy's access ACL sets the owner's bits (user::r-x of a read-only directory)
        self._dir_xattrs(dst, not self.is_root, name, src)
        self.fixups.dir(phys, st.st_mode & 0o7777, st.st_mtim.tv_sec, st.st_mtim.tv_nsec, NULL)
        self._fixup_for(dst, phys)

    cdef _copy_xattrs(self, src, dst, object name):
        """A lower layer's xattrs onto this layer's copy (copy-up), as _set_xattrs sets an entry's:
        one the kernel refuses here (trusted.* without root) is reported in ``skipped``.
        ``src`` and ``dst``: fds, or /proc/self/fd paths of a symlink or node (never followed)."""
        follow = not isinstance(src, bytes)  # an fd: Python takes no follow_symlinks=False with it
        try:
            keys = os.listxattr(src, follow_symlinks=follow)
        except OSError as e:
            raise _errors.ExtractError(f"entry {_show(name)}: list xattrs of the lower copy failed: "
                                       f"{os.strerror(e.errno)}") from None
        for k in ("system.posix_acl_access", "system.posix_acl_default"):
            # what a default ACL of dst's directory gave it (see _undo_default_acl)
            if k not in keys:
                try:
                    os.removexattr(dst, k, follow_symlinks=follow)
                except OSError:
                    pass  # none (ENODATA), or no ACLs here: nothing was given
            elif k == "system.posix_acl_default":
                self.default_acls = True
        for k in sorted(keys, key=_acl_last):  # the ACLs last, as _set_xattrs sets them
            if k.startswith(("trusted.overlay.", "user.overlay.")) or k == "user.lamina.staging":
                continue
            try:
                os.setxattr(dst, k, os.getxattr(src, k, follow_symlinks=follow), follow_symlinks=follow)
            except OSError as e:
                if e.errno == _errno.ENODATA or self._xattr_refused(name, k, e.errno):
                    continue  # ENODATA: gone from the lower copy meanwhile
                raise _errors.ExtractError(f"entry {_show(name)}: copy xattr {_show(k)} failed: "
                                           f"{os.strerror(e.errno)}") from None

    cdef _set_opaque(self, int fd, object name):
        key = b"trusted.overlay.opaque" if self.is_root else b"user.overlay.opaque"
        if fsetxattr(fd, key, b"y", 1, 0) < 0:
            self._oserror("mark opaque", name)

    cdef bint _copy_up_node(self, int pfd, bytes base, list lowers, object name, bytes link) except -1:
        """Copy ``base`` from the topmost lower layer that shows it into this
        layer's directory ``pfd`` (overlayfs's copy-up, done ahead of a
        hardlink to it).  False if no lower layer shows it."""
        cdef stat st
        cdef int i, sfd = -1, dfd = -1
        cdef char buf[4096]
        cdef Py_ssize_t ln
        cdef timespec ts[2]
        for i in range(len(lowers)):
            if <int>lowers[i] >= 0 and fstatat(<int>lowers[i], base, &st, AT_SYMLINK_NOFOLLOW) == 0:
                break
        else:
            return False
        lfd = <int>lowers[i]
        if S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return False  # whited out
        self.up_layer = i
        self.up_st = st
        if S_ISDIR(st.st_mode):
            raise _errors.InvalidArchiveError(f"entry {_show(name)}: hardlink target {_show(link)} is a directory")
        ts[0] = st.st_atim
        ts[1] = st.st_mtim
        if S_ISREG(st.st_mode):
            sfd = openat(lfd, base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
            if sfd < 0:
                self._oserror("open lower copy of", name)
            try:
                dfd = openat(pfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
                if dfd < 0:
                    self._oserror("copy up", name)
                _copy_data(sfd, dfd, st.st_size)
                if self.is_root and fchown(dfd, st.st_uid, st.st_gid) < 0:
                    self._oserror("chown", name)
                self._copy_xattrs(sfd, dfd, name)
                if fchmod(dfd, st.st_mode & 0o7777) < 0 or futimens(dfd, ts) < 0:
                    self._oserror("copy up", name)
            finally:
                close(sfd)
                if dfd >= 0:
                    close(dfd)
            return True
        if S_ISLNK(st.st_mode):
            ln = readlinkat(lfd, base, buf, sizeof(buf))
            if ln < 0 or symlinkat(buf[:ln], pfd, base) < 0:
                self._oserror("copy up", name)
        elif mknodat(pfd, base, st.st_mode, st.st_rdev) < 0:
            self._oserror("copy up", name)
        elif _has_default_acl(pfd):
            self._undo_default_acl(pfd, base, name, False, st.st_mode & 0o7777, ())
        if self.is_root and fchownat(pfd, base, st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW) < 0:
            self._oserror("chown", name)
        self._copy_xattrs(b"/proc/self/fd/%d/%s" % (lfd, base), b"/proc/self/fd/%d/%s" % (pfd, base), name)
        if not S_ISLNK(st.st_mode) and _chmod_at(pfd, base, st.st_mode & 0o7777) < 0:
            self._oserror("chmod", name)
        if utimensat(pfd, base, ts, AT_SYMLINK_NOFOLLOW) < 0:
            self._oserror("set times of", name)
        return True

    cdef _keep_times(self, int fd, bytes path):
        """Remember a directory's mtime before this layer first changes it, so
        that a directory the layer does not list keeps its lower mtime (as
        umoci and docker do) although entries were added or removed in it."""
        cdef stat st
        if self.overlay or self.fixups.has_time(path):
            return
        if fstat(fd, &st) == 0:
            # where it really is: a name through a symlink may be gone by the end of the layer
            # (a/y written through a -> b, then .wh.a), and b must still get its time back
            self.fixups.time(self._cached_real_path(fd, path), &st)  # the first one recorded wins

    cdef void _close_cache(self):
        if self.cache_fd >= 0:
            close(self.cache_fd)
        self.cache_fd = -1
        self.cache_ino = None
        self.cache_valid = False
        self.cache_st_ok = self.cache_st_fresh = False
        self._drop_pars(0)

    cdef void _drop_pars(self, int keep):
        """Close the parents kept above the cached one, all but the outermost ``keep``."""
        while self.par_n > keep:
            self.par_n -= 1
            close(self.par_fd[self.par_n])
        del self.par_paths[keep:]
        del self.par_realps[keep:]

    cdef void _record(self, bytes path, Py_ssize_t slash, bytes base, bint is_dir) except *:
        """Remember that this layer provides ``path`` and its parents: whiteouts
        and opaque markers only hide what lies below the layer.  ``slash``: where
        ``path``'s last "/" is (-1: none); ``base``: what follows it.  A directory goes
        into ``created`` by its path, a non-directory by its name in its parent's
        ``created_leaves``: most entries are files, and their paths, kept for the whole
        layer, were its largest structure (~125 B an entry)."""
        cdef Py_ssize_t i
        cdef bytes rp = self.recorded_parent
        cdef _PathSet created = self.created
        # A run of entries in one directory: their parent went in with the first of them, and
        # ``created`` only grows, always with a path's parents: no slice, hash or lookup of it.
        if slash > 0 and rp is not None and len(rp) == slash and memcmp(<const char *>path, <const char *>rp, slash) == 0:
            if is_dir:
                created.add(path)
            else:
                self.created_leaves.add(rp, base)
            return
        parent = path[:slash] if slash > 0 else b""
        if not is_dir:
            self.created_leaves.add(parent, base)
            path = parent
        if slash > 0:
            self.recorded_parent = parent
        while path and created.add(path):
            i = path.rfind(b"/")
            path = path[:i] if i > 0 else b""

    cdef bint _created_path(self, bytes path, bytes parent, bytes base):
        """Did this layer write ``path`` (``base`` in ``parent``), or into it (see _record)?"""
        return self.created.has(path) or self.created_leaves.has(parent, base)

    cdef int _note_name(self, bytes base) except -1:
        """``base`` names a non-directory this layer wrote (the filter of _maybe_written)."""
        cdef uint64_t h = <uint64_t>hash(base)
        if self.name_bits == NULL:
            self.name_bits = <uint64_t *>calloc(NAME_BITS // 64, sizeof(uint64_t))
            if self.name_bits == NULL:
                raise MemoryError()
        self.name_bits[(h % NAME_BITS) >> 6] |= (<uint64_t>1) << (h & 63)
        h = (h >> 32) % NAME_BITS
        self.name_bits[h >> 6] |= (<uint64_t>1) << (h & 63)
        return 0

    cdef bint _maybe_written(self, bytes base):
        """False: no non-directory this layer wrote is named ``base`` (True: perhaps one is)."""
        cdef uint64_t h
        if self.name_bits == NULL:
            return False
        h = <uint64_t>hash(base)
        if not self.name_bits[(h % NAME_BITS) >> 6] & ((<uint64_t>1) << (h & 63)):
            return False
        h = (h >> 32) % NAME_BITS
        return (self.name_bits[h >> 6] & ((<uint64_t>1) << (h & 63))) != 0

    # ---------------------------------------------------------------- apply

    cdef _apply(self, Kind kind, bytes path, bytes name, bytes link, int64_t size, int64_t major, int64_t minor):
        cdef Py_ssize_t slash
        cdef int pfd
        cdef bint made = False   # a device node or fifo was made
        if not path:
            if kind != K_DIR:
                raise _errors.UnsafeEntryError(
                    f"entry {_show(name)}: refusing to replace the root directory with a non-directory")
            self.root_named = True
            if not self.scan_only:
                # named again (a lower layer's "./", or an earlier entry's): the entry's xattrs
                # only, as for any directory that exists (_mkdir); the overlay mount shows so
                self._open_up(self.rootfd, b"")
                self._drop_other_xattrs(self.rootfd, b".", name)
                self._dir_metadata(self.rootfd, b"", name)
            return
        slash = path.rfind(b"/")
        base = path[slash + 1:]
        if path.startswith(WH_PREFIX) or _has_wh_component(path, len(path)):
            if (not base.startswith(WH_PREFIX) or _has_wh_component(path, slash + 1)
                    or path[:slash + 1].startswith(WH_PREFIX)):
                raise _errors.InvalidWhiteoutError(
                    f"entry {_show(name)}: whiteout-named directory in path")
            self._whiteout(path, slash, base, name)
            return
        if self.scan_only:
            self._scan_dirs(path, slash, kind == K_DIR)
            # a device node without root is not made, so it replaces nothing below (see below),
            # nor is a hardlink to one (_hardlink): ``b/c => b/c`` over such a node left the
            # lower b/c in place, which the scan had hidden and the layer below skipped
            if kind == K_LINK:
                target = self._normalize(link)  # the same checks as a real extraction
                if self.unmade_devices and target in self.unmade_devices:
                    self.unmade_devices.add(path)
                    return
            if self.unmade_devices:
                self.unmade_devices.discard(path)
            if (kind == K_CHR or kind == K_BLK) and not self.is_root:
                self.unmade_devices.add(path)
            elif kind != K_DIR:
                self._scan_hides(self.scan_at, path)
            return
        if self.wh_pending and (self._touches_pending(path) or (kind == K_LINK and self._link_touches_pending(link))):
            self._load_lowers(f"entry {_show(name)}: it meets a whiteout of this layer, which waits for them")
        target = None  # a hardlink's, normalised where first needed (in the order its errors come)
        skip = self.hide_at is not None and kind != K_SYMLINK and self._is_hidden(path)
        if skip and kind == K_LINK:
            target = self._normalize(link)
            skip = not self._links_a_symlink(target, name)
        if (skip
                # a name no filesystem takes fails its entry, written: skipped, it must too
                and not _long_component(path)
                and self._no_symlinks_to(path[:slash] if slash > 0 else b"")
                # an entry replaces a symlink at its path (the layer's own ``b -> .``, then ``b/``;
                # a lower layer's ``L -> T``, then a file ``L``): skipped, the link would stay and lead
                # the entries under it elsewhere (a whiteout L/.wh.x of a layer in between removed T/x)
                and (self._no_symlinks_to(path) if kind == K_DIR else not self._symlink_at(path, slash))):
            self.hidden += 1
            self._check_skipped_parents(path, name)
            if kind == K_LINK:  # before the entry counts as a skipped file: a link to itself names what is there
                self._check_skipped_link(target, link, name, path)
            if kind != K_DIR:  # a later hardlink may name it, directly or through another link
                if self.dir_at:  # (_symlink_at looked at the path just now, in the test above)
                    self._drop_dir_skipped_over(path, slash, name)
                self.hidden_files.add(path)
                self.own_hidden.add(path)
                self.unskipped_parent = None  # it may be on the way of the one checked
            else:
                self.hidden_files.discard(path)
            visible = self._visible_parent(path)
            if visible:  # the dirs the entry implies that nothing above hides still show
                self._parent(visible + b"/.", len(visible), name)
            return
        if self.hidden_files:
            self._check_skipped_parents(path, name)  # e.g. a symlink (never skipped) under a skipped file
        pfd = self._parent(path, slash, name)
        if self.hidden_files:
            if slash > 0 and not self.overlay:
                self._check_skipped_real_parent(pfd, path[:slash], name)
            if kind == K_LINK:
                if target is None:
                    target = self._normalize(link)
                self._check_target_under_skipped(target, link, name)
            if kind == K_LINK and target in self.hidden_files:
                # before the discard below: a link to itself (``a => a``) names the skipped
                # file it replaces, not what an older layer left at the name
                raise HiddenLinkTarget(f"entry {_show(name)}: hardlink to {_show(link)}, which was skipped as hidden")
            self.hidden_files.discard(path)  # written here now: no longer a skipped non-directory
        if self.unmade_devices and kind != K_LINK:
            self.unmade_devices.discard(path)  # something else there now (a hardlink: _hardlink decides)
        if (kind == K_CHR or kind == K_BLK) and not self.is_root:
            self.unmade_devices.add(path)  # a hardlink to it is not made either (_hardlink)
            # Not made, on every path as if the layer did not list it: recorded as this layer's
            # (provided), it made a whiteout of the name later in the layer spare what is below
            # in the overlay format and empty it in the dir format.  The directories it implies
            # are the layer's, as in root's tree (an opaque marker of the layer spares them).
            if not self.overlay:
                if slash > 0:
                    up = path.rfind(b"/", 0, slash)
                    self._record(path[:slash], up, path[up + 1:slash], True)
            elif self.cache_phys:
                self._provide_dir(self.cache_phys)
            self.skipped.append(f"{_show(name)}: device node not created (needs root)")
            return
        if not self.overlay:
            real = self._cached_real_path(pfd, path[:slash]) if slash > 0 else None
            if real is not None and real != path[:slash]:
                # written through a symlink (``c/l -> /c``, then ``c/l/b``): the layer wrote
                # where the link leads, not into the directories it names on the way (c/), which
                # a whiteout of the layer must then remove as the overlay formats do
                self._record(real + b"/" + base if real else base, len(real) if real else -1, base, kind == K_DIR)
            else:
                self._record(path, slash, base, kind == K_DIR)
        else:
            self._provide(self.cache_phys or b"", base, kind == K_DIR)
            if self.cache_phys != (path[:slash] if slash > 0 else b""):
                # The parent was reached through a symlink, which this very entry may hide
                # (``b -> .`` below, then ``b/b/`` and ``b/a/``: ``b/a`` goes into the new
                # ``b``): the next entry resolves its parent again.  Writing through
                # symlinks is rare; a real image's runs of entries keep their cache.
                self._invalidate()
        if kind == K_REG:
            self._open_file(pfd, base, name, size)
        elif kind == K_DIR:
            self._mkdir(pfd, base, path, name)
        elif kind == K_SYMLINK:
            self._symlink(pfd, base, name, link)
        elif kind == K_LINK:
            self._hardlink(pfd, base, name, link, self._normalize(link) if target is None else target)
        else:
            made = self._mknod(pfd, base, name, kind, major, minor)
        if self.default_acls and (kind == K_REG or kind == K_DIR or made) and _has_default_acl(pfd):
            self._undo_default_acl(pfd, base, name, kind == K_DIR, self._made_mode(kind), self.cur_xattrs or ())
        if not self.overlay:
            if kind == K_DIR:
                pass  # recorded by _mkdir, from its fstat
            elif ((kind == K_REG or kind == K_SYMLINK or kind == K_LINK or made)
                    and pfd == self.cache_fd and self.cache_st_ok):
                # just created by name in the cached parent (a hardlink is never a directory,
                # nor a node): its (dev, ino) is known
                key = self.cache_ino
                if key is None:
                    key = self.cache_ino = _ino_bytes(self.cache_st.st_dev, self.cache_st.st_ino)
                self.created_in.add(key, base)
                self._note_name(base)
            else:
                self._record_inode(pfd, base)

    cdef int _made_mode(self, int kind):
        """The mode the entry's inode was made with (before fixups and _finish_file)."""
        if kind == K_DIR:
            return (self.cur_mode & 0o755) | 0o700  # as _mkdir makes it; its fixup sets the rest
        if kind == K_REG and self.outfd >= 0:  # still being written: as _open_file made it
            return (self.cur_mode & 0o777) | (0o200 if self.cur_xattrs and not self.is_root else 0)
        return self.cur_mode & 0o7777

    cdef _undo_default_acl(self, int pfd, bytes base, object name, bint is_dir, int mode, own):
        """``base`` was just made in a directory holding a default ACL, which gave it an
        access ACL (a directory the default ACL too) and masked its mode.  An entry's xattrs
        and mode are its own, as umoci has them (it clears a new inode's xattrs), and as an
        overlay layer, whose directories are made anew, has them: the ACLs the entry does not
        carry (``own``: its xattrs) are removed and the mode lamina made it with is set again."""
        cdef stat st
        lpath = b"/proc/self/fd/%d/%s" % (pfd, base)  # l*xattr: base itself, never followed
        for k in ((ACL_ACCESS, ACL_DEFAULT) if is_dir else (ACL_ACCESS,)):
            if k in own:
                continue
            try:
                os.removexattr(lpath, k, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (_errno.ENODATA, EOPNOTSUPP):
                    raise _errors.ExtractError(f"entry {_show(name)}: remove the ACL its directory "
                                               f"gave it failed: {os.strerror(e.errno)}") from None
        if (fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 and (st.st_mode & 0o7777) != mode
                and _chmod_at(pfd, base, <mode_t>mode) < 0):
            self._oserror("chmod", name)

    cdef void _provide(self, bytes parent, bytes base, bint is_dir) except *:
        """Overlay format: this layer writes ``base`` in the physical directory ``parent``
        ("": the root), and so into the directories above it.  A directory goes into
        ``provided`` by its path, a non-directory by its name in its parent's
        ``provided_leaves`` (as _record does: ~125 B an entry for a path kept to the end)."""
        if is_dir:
            self._provide_dir(parent + b"/" + base if parent else base)
            return
        self.provided_leaves.add(parent, base)
        self._provide_dir(parent)

    cdef void _provide_dir(self, bytes phys) except *:
        """Overlay format: this layer has the physical directory ``phys``, and those above it."""
        cdef Py_ssize_t i
        cdef _PathSet provided = self.provided
        while phys and provided.add(phys):
            i = phys.rfind(b"/")
            phys = phys[:i] if i > 0 else b""

    cdef bint _provided(self, bytes phys):
        """Overlay format: did this layer write ``phys``, or into it (see _provide)?"""
        cdef Py_ssize_t i
        if self.provided.has(phys):
            return True
        i = phys.rfind(b"/")
        return self.provided_leaves.has(phys[:i] if i > 0 else b"", phys[i + 1:])

    cdef int _record_ancestors(self, int fd, object name) except -1:
        """The directories this layer writes into, up to the root, by inode: an
        opaque marker or whiteout reached through a symlink must spare them.
        Stops at the first one already known, so the cost stays linear.  A dup or
        walk up that fails (EMFILE, ENOMEM) raises: an ancestor left unrecorded is one
        the layer's own opaque marker or whiteout may clear later on, with exit 0.
        EACCES (rootless, a directory its user may not search) stops as it always did."""
        cdef stat st
        cdef int cur = _dup_checked(fd), up, e
        while True:
            if fstat(cur, &st) < 0:
                e = errno
                close(cur)
                lamina_set_errno(e)
                self._oserror("stat a directory above it", name)
            if not self.created_ino.add(st.st_dev, st.st_ino):
                break
            if (st.st_dev, st.st_ino) == self.root_key:
                break
            up = openat(cur, b"..", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            e = errno
            close(cur)
            if up < 0:
                if e == EACCES:
                    return 0
                lamina_set_errno(e)
                self._oserror("open a directory above it", name)
            cur = up
        close(cur)
        return 0

    cdef void _record_inode(self, int pfd, bytes base) except *:
        """Whiteouts and opaque markers of this layer must spare what it wrote,
        also when it was written through a symlink (its path then differs).
        ``base`` empty: ``pfd`` itself.  A directory is known by its inode; a
        non-directory by its name in its directory's inode, since a hardlink
        to a lower file shares that file's inode with the file's other names,
        which this layer did not write."""
        cdef stat st
        if (fstat(pfd, &st) if not base else fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW)) == 0:
            if S_ISDIR(st.st_mode):
                self.created_ino.add(st.st_dev, st.st_ino)
            elif fstat(pfd, &st) == 0:
                self.created_in.add(_ino_bytes(st.st_dev, st.st_ino), base)
                self._note_name(base)

    cdef bint _written_here(self, int pfd, bytes base, stat *st):
        """Did this layer write ``base`` of ``pfd`` (see _record_inode)?  ``st``: its lstat."""
        cdef stat pst
        if S_ISDIR(st.st_mode):
            return self.created_ino.has(st.st_dev, st.st_ino)
        if fstat(pfd, &pst) < 0:
            return False
        return self.created_in.has(_ino_bytes(pst.st_dev, pst.st_ino), base)

    cdef _open_file(self, int pfd, bytes base, bytes name, int64_t size):
        # Created with its final permissions (the fd is writable whatever they are), so
        # that _finish_file needs no chmod unless the umask or setuid/setgid/sticky bits
        # are in the way.
        cdef mode_t create_mode = <mode_t>self.cur_mode & 0o777
        cdef int fd
        if self.cur_xattrs and not self.is_root:
            create_mode |= 0o200  # user.* xattrs need it, the owner's too: _finish_file sets the mode after them
        self.cur_prehashed = False
        if (self.obj_fd >= 0 and self.sparse is None and self.cur_xattrs is None and size <= self.feed_avail
                and self._link_object(pfd, base, name, size)):
            return  # named by a link to the store's object: the payload is consumed unwritten
        self.cur_hashing = self.hold_fd >= 0 and self.sparse is None and not self.cur_prehashed
        if self.cur_hashing:
            blake3_hasher_init(&self.hasher)
        if self.sparse is None and not self.cur_xattrs and size <= self.feed_avail:
            self._write_whole(pfd, base, name, size)
            return
        fd = openat(pfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, create_mode)
        if fd < 0 and errno == EEXIST:
            self._remove(pfd, base, name)
            fd = openat(pfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, create_mode)
        if fd < 0:
            self.cur_hashing = False
            self._oserror("create", name)
        self.outfd = fd
        self.cur_new_owner = self.is_root and self._owner_is(pfd)
        if size == 0:
            self._finish_file()

    cdef _write_whole(self, int pfd, bytes base, bytes name, int64_t size):
        """A file without xattrs whose payload is all in the chunk being fed (most files of
        a layer): created, written and finished in one block without the GIL, so that other
        threads (inflate, hashing, other layers) run meanwhile.  The payload is then
        consumed unwritten (outfd stays -1)."""
        cdef const char *cbase = base
        cdef const char *data = <const char *>self.feed_p
        cdef mode_t create_mode = <mode_t>self.cur_mode & 0o777
        cdef bint keep = self.cur_hashing or self.cur_prehashed  # _hold_hashed needs the fd
        cdef bint owned, posted
        cdef int fd = -1, e = 0, step = SC_OK, tries
        for tries in range(2):
            with nogil:
                fd = openat(pfd, cbase, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, create_mode)
                if fd < 0:
                    step = SC_CREATE
                else:
                    owned = self.is_root and self._owner_is(pfd)
                    posted = self._hash_begin(data, <size_t>size)
                    if size and lamina_write_all(fd, data, <size_t>size) < 0:
                        step = SC_WRITE
                    else:
                        step = self._finish_meta(fd, owned)  # while the worker hashes
                    self._hash_end(posted, data, <size_t>size)
                e = errno
                if fd >= 0 and (step != SC_OK or not keep):
                    close(fd)
            if step != SC_CREATE or e != EEXIST or tries:
                break
            self._remove(pfd, base, name)  # under the GIL: rare, and it may drop the cached parent
            step = SC_OK
        self.nogil_entries += 1
        self._after_nogil_file(fd, step, e, keep, name)

    cdef _after_nogil_file(self, int fd, int step, int e, bint keep, object name):
        """A file finished without the GIL: raise its error (its fd is closed then), or give it
        its hashed/ name (``keep``: the fd was left open for that) and close it."""
        if step != SC_OK:
            self.cur_hashing = self.cur_prehashed = False
            self._step_error(step, e, name)
        if keep:
            try:
                self._hold_hashed(fd)
            finally:
                self.cur_hashing = self.cur_prehashed = False
                close(fd)

    cdef int _owner_and_mode(self, int fd, bint owned) noexcept nogil:
        """A new file's owner and mode, with or without the GIL (``owned``: it was created
        with the entry's owner, if the rule holds): SC_OK, or the failed step with errno set."""
        cdef stat st
        if owned and not self.owner_checked:
            owned = fstat(fd, &st) == 0 and self._owner_seen(&st)
        if self.is_root and not owned and fchown(fd, <uid_t>self.cur_uid, <gid_t>self.cur_gid) < 0:
            return SC_CHOWN
        if ((self.cur_mode & 0o7000 or self.cur_mode & self.umask & 0o777)
                and fchmod(fd, <mode_t>self.cur_mode) < 0):  # after chown, which clears setuid/setgid
            return SC_CHMOD
        return SC_OK

    cdef int _finish_meta(self, int fd, bint owned) noexcept nogil:
        """What _finish_file does to a file without xattrs or holes (owner, mode, times),
        callable without the GIL: SC_OK, or the step that failed with errno set."""
        cdef timespec ts[2]
        cdef int step = self._owner_and_mode(fd, owned)
        if step != SC_OK:
            return step
        self._entry_times(ts)
        if futimens(fd, ts) < 0:
            return SC_TIMES
        return SC_OK

    cdef _step_error(self, int step, int e, object name):
        """The error a nogil block's failed ``step`` stands for, as _oserror words it."""
        op = ("create", "write", "chown", "chmod", "set times of", "symlink", "mkdir", "mark opaque")[step - 1]
        raise _errors.ExtractError(f"entry {_show(name)}: {op} failed: {os.strerror(e)}", errno=e)

    cdef bint _link_object(self, int pfd, bytes base, bytes name, int64_t size) except -1:
        """Name the entry by a hardlink to the store's object with its payload (in the chunk
        being fed) and the inode metadata it asks for; False (nothing done) if there is none.
        Objects are immutable and gc never runs beside an extraction (the store's lease), so the
        object checked is the object linked; the link is still checked to be that inode."""
        cdef uint8_t digest[BLAKE3_OUT_LEN]
        cdef blake3_hasher h
        cdef char rel[96]       # <2 hex>/<64 hex blake3>.<16 hex metadata key>
        cdef char hold[112]
        cdef stat ost, lst, cst
        cdef int ofd
        cdef bint same
        cdef unsigned int mode = S_IFREG | <unsigned int>self.cur_mode
        cdef const unsigned char *data = self.feed_p
        with nogil:
            blake3_hasher_init(&h)
            blake3_hasher_update(&h, data, <size_t>size)
            blake3_hasher_finalize(&h, digest, BLAKE3_OUT_LEN)
        memcpy(self.pre_digest, digest, BLAKE3_OUT_LEN)
        self.cur_prehashed = True  # until the link is made: a file written after all is not hashed twice
        _hex(rel + 3, digest, BLAKE3_OUT_LEN)
        rel[0], rel[1], rel[2], rel[67] = rel[3], rel[4], b"/", b"."
        lamina_metadata_key(mode, <unsigned int>self.cur_uid, <unsigned int>self.cur_gid, <long long>self.cur_sec,
                            <long>self.cur_nsec, rel + 68)
        if (fstatat(self.obj_fd, rel, &ost, AT_SYMLINK_NOFOLLOW) < 0 or ost.st_mode != mode
                or ost.st_uid != self.cur_uid or ost.st_gid != self.cur_gid or ost.st_size != size
                or ost.st_mtim.tv_sec != self.cur_sec or ost.st_mtim.tv_nsec != self.cur_nsec):
            return False
        # The object's name says what it held when it was made, not what it holds now: written
        # through `unpack --link` (its mtime put back), it must not hand those bytes to this
        # image.  The payload is in memory, so this costs a read of the object, no write.
        ofd = openat(self.obj_fd, rel, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        if ofd < 0:
            return False
        with nogil:
            same = (fstat(ofd, &cst) == 0 and cst.st_ino == ost.st_ino and cst.st_dev == ost.st_dev
                    and _no_xattrs(ofd) and _file_holds(ofd, data, size))
        close(ofd)
        if not same:
            return False
        if linkat(self.obj_fd, rel, pfd, base, 0) < 0:
            if errno != EEXIST:
                return False  # e.g. EMLINK: the object has all the names it can take
            self._remove(pfd, base, name)
            if linkat(self.obj_fd, rel, pfd, base, 0) < 0:
                return False
        if fstatat(pfd, base, &lst, AT_SYMLINK_NOFOLLOW) < 0 or lst.st_ino != ost.st_ino or lst.st_dev != ost.st_dev:
            if unlinkat(pfd, base, 0) < 0:
                self._oserror("unlink", name)
            return False
        if ost.st_ino not in self.obj_inodes:  # its one hashed/ name: the pass reads the object's name there
            self.obj_inodes.add(ost.st_ino)
            snprintf(hold, sizeof(hold), "%.64s-o%.16s-%lld", rel + 3, rel + 68, <long long>size)
            linkat(self.obj_fd, rel, self.hold_fd, hold, 0)  # if not, the pass hashes the file itself
        self.cur_prehashed = False
        return True

    cdef bint _drop_hold(self, int tfd, bytes tbase):
        """Remove the name ``hash_files_into`` holds for the file ``tbase`` (found by its inode
        number), so a hardlink entry gets the link it is refused (EMLINK: ext4 allows 65000) for
        it.  A file hardlinked in its layer keeps a private inode anyway, so the dedup pass loses
        nothing by it.  False if the file has no such name (the image itself names it too often).
        Runs only on EMLINK, so a readdir of the whole directory costs nothing in the common case."""
        cdef stat a, h
        cdef int dfd
        cdef DIR *d
        cdef dirent *ent
        if self.hold_fd < 0 or fstatat(tfd, tbase, &a, AT_SYMLINK_NOFOLLOW) < 0 or not S_ISREG(a.st_mode):
            lamina_set_errno(EMLINK)
            return False
        dfd = openat(self.hold_fd, b".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        d = fdopendir(dfd) if dfd >= 0 else NULL
        if d == NULL:
            if dfd >= 0:
                close(dfd)
            lamina_set_errno(EMLINK)
            return False
        found = None
        try:
            while True:
                ent = readdir(d)
                if ent == NULL:
                    break
                if ent.d_ino == a.st_ino and ent.d_name[0] != b'.':
                    found = <bytes>ent.d_name
                    break
        finally:
            closedir(d)
        if (found is None or fstatat(self.hold_fd, <bytes>found, &h, AT_SYMLINK_NOFOLLOW) < 0
                or h.st_ino != a.st_ino or h.st_dev != a.st_dev or unlinkat(self.hold_fd, <bytes>found, 0) < 0):
            lamina_set_errno(EMLINK)
            return False
        return True

    cdef _privatize(self, int tfd, bytes tbase, bytes name):
        """Give ``tbase`` (a name this layer linked to a store object) a private inode with the
        same data and metadata: a hardlink entry is about to name it, and names sharing an
        object must never look like a hardlink group of the image."""
        cdef stat st
        cdef timespec ts[2]
        cdef int sfd = openat(tfd, tbase, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), dfd = -1
        cdef bytes tmp = b""
        if sfd < 0:
            self._oserror("open", name)
        try:
            if fstat(sfd, &st) < 0:
                self._oserror("stat", name)
            while dfd < 0:
                tmp = b".lamina-private-%d" % self.privatized
                self.privatized += 1
                dfd = openat(tfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
                if dfd < 0 and (errno != EEXIST or self.privatized > 1000000):
                    self._oserror("copy", name)
            try:
                _copy_data(sfd, dfd, st.st_size)
                if _has_default_acl(tfd):
                    self._undo_default_acl(tfd, tmp, name, False, 0o600, ())
                ts[0] = st.st_mtim
                ts[1] = st.st_mtim
                if (fchown(dfd, st.st_uid, st.st_gid) < 0 or fchmod(dfd, st.st_mode & 0o7777) < 0
                        or futimens(dfd, ts) < 0 or renameat(tfd, tmp, tfd, tbase) < 0):
                    self._oserror("copy", name)
            except BaseException:
                unlinkat(tfd, tmp, 0)
                raise
        finally:
            close(sfd)
            if dfd >= 0:
                close(dfd)

    cdef _finish_file(self):
        cdef int fd = self.outfd
        cdef timespec ts[2]
        cdef bint owned = self.cur_new_owner
        cdef bint keep
        cdef int step, e
        self.outfd = -1
        if self.sparse is None and self.sparse_realsize < 0 and not self.cur_xattrs:  # a large file: its last chunk was just written
            keep = self.cur_hashing or self.cur_prehashed
            with nogil:
                step = self._finish_meta(fd, owned)
                e = errno
                if step != SC_OK or not keep:
                    close(fd)
            self._after_nogil_file(fd, step, e, keep, self.cur_name)
            return
        try:
            self._sparse_truncate(fd)
            # user.* xattrs need write permission on the inode, even for its owner: without
            # root they go on before a read-only mode does (root's go after the chown, which
            # would drop security.capability)
            if self.cur_xattrs and not self.is_root:
                self._set_xattrs(fd, None, self.cur_name)
                if fchmod(fd, <mode_t>self.cur_mode) < 0:
                    self._oserror("chmod", self.cur_name)
            step = self._owner_and_mode(fd, owned)
            if step != SC_OK:
                self._step_error(step, errno, self.cur_name)
            if self.cur_xattrs and self.is_root:
                self._set_xattrs(fd, None, self.cur_name)
                # an access ACL rewrites the group bits to its mask: the header's mode wins,
                # as for GNU tar, docker and containerd (chmod after the xattrs, which the
                # kernel mirrors back into the ACL's mask)
                if ACL_ACCESS in self.cur_xattrs and fchmod(fd, <mode_t>self.cur_mode) < 0:
                    self._oserror("chmod", self.cur_name)
            self._entry_times(ts)
            if futimens(fd, ts) < 0:
                self._oserror("set times of", self.cur_name)
            if self.cur_hashing or self.cur_prehashed:
                self._hold_hashed(fd)
        finally:
            self.cur_hashing = self.cur_prehashed = False
            close(fd)

    cdef _hold_hashed(self, int fd):
        """Name the finished file ``<blake3 hex>-<n>`` in the hash_files_into dir.  A file
        that cannot be named there is simply not reported (the dedup pass hashes it itself)."""
        cdef uint8_t out[BLAKE3_OUT_LEN]
        cdef char name[96]
        cdef char proc[48]
        if self.cur_prehashed:
            memcpy(out, self.pre_digest, BLAKE3_OUT_LEN)
        else:
            blake3_hasher_finalize(&self.hasher, out, BLAKE3_OUT_LEN)
        _hex(name, out, BLAKE3_OUT_LEN)
        # "-x<n>": the inode has xattrs (the pass reads them), "-<n>": it has none
        snprintf(name + 2 * BLAKE3_OUT_LEN, 32, "-x%lld" if flistxattr(fd, NULL, 0) != 0 else "-%lld",
                 <long long>self.hashed)
        # AT_EMPTY_PATH links the fd itself but needs CAP_DAC_READ_SEARCH; /proc/self/fd does not
        if self.hold_empty_path and linkat(fd, b"", self.hold_fd, name, AT_EMPTY_PATH) == 0:
            self.hashed += 1
            return
        self.hold_empty_path = False
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd)
        if linkat(AT_FDCWD, proc, self.hold_fd, name, AT_SYMLINK_FOLLOW) == 0:
            self.hashed += 1

    cdef _mkdir(self, int pfd, bytes base, bytes path, bytes name):
        cdef stat st
        cdef int fd
        cdef bint opaque = False
        cdef const char *cbase = base
        cdef int r, e, sr = -1, se = 0
        cdef ssize_t xl = 0
        cdef char proc[320]
        # Made with its final permissions (the fixup's chmod is skipped then) where they
        # let no one but the owner write and do not lock the owner out; else with no more
        # than them for anyone but the owner (a 1777 dir is not writable by all, a 0555 dir
        # not closed to its owner, before the fixup).
        cdef mode_t create_mode = (<mode_t>self.cur_mode & 0o755) | 0o700
        if self.overlay:
            path = self.cache_phys + b"/" + base if self.cache_phys else base
            if self.early_pending and path in self.early_pending:
                self.early_pending[path] = None  # named: its entry's metadata, not the one below
        with nogil:  # the syscalls of the common case, in one block without the GIL
            r = mkdirat(pfd, cbase, create_mode)
            e = errno
            if r == 0 or e == EEXIST:
                sr = fstatat(pfd, cbase, &st, AT_SYMLINK_NOFOLLOW)
                se = errno
                if (r < 0 and sr == 0 and S_ISDIR(st.st_mode)
                        and snprintf(proc, sizeof(proc), "/proc/self/fd/%d/%s", pfd, cbase) < <int>sizeof(proc)):
                    xl = llistxattr(proc, NULL, 0)  # > 0: the existing dir has xattrs
        if (not self.is_root and r < 0 and sr == 0 and S_ISDIR(st.st_mode) and (xl > 0 or self.cur_xattrs)
                and not (st.st_mode & 0o200) and st.st_uid == geteuid()):
            # a lower layer's read-only directory: its user.* xattrs can be changed only with
            # write permission, even by its owner; the entry's mode is set at the end (fixups)
            _chmod_dir_at(pfd, cbase, (st.st_mode & 0o7777) | 0o700)
        if xl > 0:
            self._drop_other_xattrs(pfd, base, name)
        if r < 0:
            if e != EEXIST:
                lamina_set_errno(e)
                self._oserror("mkdir", name)
            if sr < 0:
                lamina_set_errno(se)
                self._oserror("stat", name)
            if not S_ISDIR(st.st_mode):
                # a whiteout or a non-directory of this same layer hid what is below
                # (in the dir format it was deleted): the new dir must not show it
                opaque = self.overlay
                self._remove(pfd, base, name)
                if mkdirat(pfd, base, create_mode) < 0:
                    self._oserror("mkdir", name)
                sr = -1  # a new inode: st no longer tells
        if not opaque and not self.cur_xattrs:
            # the common case needs no fd: a stat by name gives the ids (no chown
            # when it has the entry's) and the inode; the cached parent's real path
            # gives this one's (what _real_path reads in /proc)
            real = path if self.overlay else self._real_child(pfd, base, path)
            if (real is not None and (sr == 0 or fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0)
                    and S_ISDIR(st.st_mode)
                    and (not self.is_root or (st.st_uid == self.cur_uid and st.st_gid == self.cur_gid))):
                self.fixups.dir(real, self.cur_mode, self.cur_sec, self.cur_nsec, &st)
                if not self.overlay:
                    self.created_ino.add(st.st_dev, st.st_ino)
                self.nogil_entries += 1
                return
        fd = openat(pfd, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0:
            self._oserror("open", name)
        try:
            if opaque:
                self._set_opaque(fd, name)
            if fstat(fd, &st) < 0:
                self._oserror("stat", name)
            self._dir_metadata(fd, path, name, &st)
            if not self.overlay:
                self.created_ino.add(st.st_dev, st.st_ino)  # what _record_inode would record
        finally:
            close(fd)

    cdef _drop_other_xattrs(self, int pfd, bytes base, bytes name):
        """A directory entry over a directory that exists (a lower layer's, or this layer's
        own from an earlier entry) leaves it the entry's xattrs only, as it does its owner and
        mode: in the overlay formats the upper layer's directory hides the lower one's, and
        umoci clears a directory's xattrs before it sets the entry's.  Kept: the overlay
        markers this extraction set (an opaque directory stays opaque), unpack's mark on the
        root (its staging dir's, which the image's tree never gets), and the host's security
        label, which an SELinux kernel lets no one remove; a security.selinux a layer's entry
        set where the kernel keeps none goes, as from the overlay mount."""
        lpath = b"/proc/self/fd/%d/%s" % (pfd, base)  # l*xattr: base itself, never followed
        keep = self.cur_xattrs or {}
        for k in os.listxattr(lpath, follow_symlinks=False):
            kb = os.fsencode(k)
            if kb in keep or kb.startswith((b"trusted.overlay.", b"user.overlay.")):
                continue
            if kb == b"user.lamina.staging" and base == b".":
                continue   # unpack's mark on the staging dir it extracts into (unpacker._MARK), not the image's
            try:
                os.removexattr(lpath, kb, follow_symlinks=False)
            except OSError as e:
                if kb == b"security.selinux" and e.errno in (EACCES, EPERM, EOPNOTSUPP):
                    continue  # the host's label
                if e.errno in (EPERM, EOPNOTSUPP, _errno.ENODATA):  # trusted.* without root; gone meanwhile
                    self.skipped.append(f"{_show(name)}: xattr {_show(k)} of the existing directory kept "
                                        f"({os.strerror(e.errno)})")
                    continue
                raise _errors.ExtractError(f"entry {_show(name)}: remove xattr {k} of the existing directory "
                                           f"failed: {os.strerror(e.errno)}") from None

    cdef _dir_xattrs(self, int fd, bint acl, object name, int src=-1):
        """Set a directory's xattrs: the entry's, or (``src`` >= 0) those of its lower copy.
        ``acl``: rootless, and they may hold an access ACL, which sets the owner's bits too
        (rw-: no search; r-x of a read-only directory): the owner would be shut out of the
        directory until the fix-up sets its mode, so the mode it had goes back on at once (the
        kernel brings the ACL in step with it)."""
        cdef stat now
        if acl and fstat(fd, &now) < 0:
            self._oserror("stat", name)
        if src >= 0:
            self._copy_xattrs(src, fd, name)
        else:
            self._set_xattrs(fd, None, name)
        if acl and fchmod(fd, now.st_mode & 0o7777) < 0:
            self._oserror("chmod", name)

    cdef _dir_metadata(self, int fd, bytes path, bytes name, stat *st=NULL):
        """Owner and xattrs now; mode and mtime once the layer is done, since
        creating children changes mtime and a read-only mode would stop them.
        ``st``: the directory's fstat, if taken (a chown to the ids it has is skipped:
        on a directory it changes nothing else, unlike on a file)."""
        if self.is_root and (st == NULL or st.st_uid != self.cur_uid or st.st_gid != self.cur_gid):
            if fchown(fd, <uid_t>self.cur_uid, <gid_t>self.cur_gid) < 0:
                self._oserror("chown", name)
            self.cache_st_fresh = False  # it may be the cached parent, whose owner rules new inodes
        if self.cur_xattrs:
            self._dir_xattrs(fd, not self.is_root and ACL_ACCESS in self.cur_xattrs, name)
        if not self.overlay:
            path = self._real_path(fd, path)
        self.fixups.dir(path, self.cur_mode, self.cur_sec, self.cur_nsec, st)
        if st == NULL:
            self._fixup_for(fd, path)

    cdef object _real_child(self, int pfd, bytes base, bytes path):
        """What _real_path would say of directory ``base`` just made in the cached
        parent ``pfd``, from the parent's real path (read once per parent, or
        carried down from the one above); None if it is not known that way."""
        if self.root_real is None:
            return path
        if pfd != self.cache_fd or not self.cache_valid:
            return None
        if self.cache_realp is None:
            self.cache_realp = self._proc_rel(pfd)
            if self.cache_realp is None:
                return None
        real = self.cache_realp + b"/" + base if self.cache_realp else base
        if len(self.root_real) + 1 + len(real) >= PROC_PATH_MAX - 1:
            return None  # where /proc might not tell: ask it the slow way
        return real

    cdef object _proc_rel(self, int fd):
        """Where ``fd`` is under the root as /proc names it: b"" for the root itself, a
        relative path below it, or None if /proc cannot tell (or says it is not below)."""
        cdef char proc[32]
        cdef char buf[PROC_PATH_MAX]
        cdef ssize_t n
        cdef Py_ssize_t k = len(self.root_real)
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd)
        n = readlinkat(AT_FDCWD, proc, buf, sizeof(buf))
        if n < k or n >= <ssize_t>sizeof(buf) or memcmp(buf, <const char *>self.root_real, k) != 0:
            return None
        if n == k:
            return b""
        if n == k + 1 or buf[k] != b'/':
            return None
        return buf[k + 1:n]

    cdef bytes _cached_real_path(self, int pfd, bytes parent):
        """_real_path of the cached parent from its real path, carried down from the one above
        or read once per parent (_real_child's), rather than from /proc for each run of
        entries in it."""
        if self.root_real is None or pfd != self.cache_fd or not self.cache_valid:
            return self._real_path(pfd, parent)
        if self.cache_realp is None:
            self.cache_realp = self._proc_rel(pfd)
            if self.cache_realp is None:
                return parent  # /proc cannot tell: what _real_path says then
        if len(self.root_real) + 1 + len(self.cache_realp) >= PROC_PATH_MAX - 1:
            return self._real_path(pfd, parent)  # where /proc might not tell: ask it
        return self.cache_realp  # b"" is the root (a marker in a -> ., say), not "unknown"

    cdef void _new_name_at(self, int pfd, bytes base):
        """A symlink is about to be made as ``base`` in ``pfd`` (or a hardlink, which may
        name one): the parent last found free of symlinks stays so unless the new name
        lies on its way.  Where the new name is really is known from the cached parent's
        real path; when it is not, the check is forgotten."""
        pp = self.plain_parent
        if pp is None:
            return
        if (pfd == self.cache_fd and self.cache_valid and self.cache_realp is not None
                and self.root_real is not None):
            real = self.cache_realp + b"/" + base if self.cache_realp else base
            if not (pp == real or pp.startswith(real + b"/")):
                return
        self.plain_parent = None

    cdef bytes _real_path(self, int fd, bytes path):
        """Where directory ``fd`` really is under the root (no symlinks), as the
        kernel names it: a dir made through a symlink (``c/a`` with ``c -> a``)
        keeps its fixup when the layer later replaces the symlink.  ``path`` if
        /proc cannot tell."""
        if self.root_real is None:
            return path
        real = self._proc_rel(fd)
        # None: /proc cannot tell (or says the dir is no longer under the root); b"" is the root
        return real if real is not None else path

    cdef void _fixup_for(self, int fd, bytes path):
        """Remember which directory ``path`` names now: if the layer later replaces
        it or a parent (by a symlink, say), its fixup must not land on whatever
        the path names then."""
        cdef stat st
        if fstat(fd, &st) == 0:
            self.fixups.ino(path, &st)

    cdef _symlink(self, int pfd, bytes base, bytes name, bytes target):
        cdef const char *cbase = base
        cdef const char *ctarget = target
        cdef bint whole = not self.cur_xattrs
        cdef int r, e, step = SC_OK
        if not target:
            raise _errors.InvalidArchiveError(f"entry {_show(name)}: symlink with an empty target")
        self._new_name_at(pfd, base)  # a new symlink may sit on a path checked before
        with nogil:  # the common case: link, owner and times in one block without the GIL
            r = symlinkat(ctarget, pfd, cbase)
            e = errno
            if r == 0 and whole:
                step = self._link_meta(pfd, cbase)
                e = errno
        if r == 0 and whole:
            self.nogil_entries += 1
            if step != SC_OK:
                self._step_error(step, e, name)
            return
        if r < 0:
            if e != EEXIST:
                lamina_set_errno(e)
                self._oserror("symlink", name)
            self._remove(pfd, base, name)
            if symlinkat(target, pfd, base) < 0:
                self._oserror("symlink", name)
        self._metadata_at(pfd, base, name, self._symlink_owned(pfd, cbase))

    cdef bint _symlink_owned(self, int pfd, const char *base) noexcept nogil:
        """Whether the symlink just made as ``base`` has the entry's owner already (no chown)."""
        cdef stat st
        cdef bint owned = self.is_root and self._owner_is(pfd)
        if owned and not self.owner_checked:
            owned = fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 and self._owner_seen(&st)
        return owned

    cdef int _link_meta(self, int pfd, const char *base) noexcept nogil:
        """What _symlink does after symlinkat for an entry without xattrs (its owner,
        as _metadata_at sets it, and times), without the GIL: SC_OK, or the failed step."""
        cdef timespec ts[2]
        if (self.is_root and not self._symlink_owned(pfd, base)
                and fchownat(pfd, base, <uid_t>self.cur_uid, <gid_t>self.cur_gid, AT_SYMLINK_NOFOLLOW) < 0):
            return SC_CHOWN
        self._entry_times(ts)
        if utimensat(pfd, base, ts, AT_SYMLINK_NOFOLLOW) < 0:
            return SC_TIMES
        return SC_OK

    cdef _metadata_at(self, int pfd, bytes base, bytes name, bint owned=False):
        """Owner, xattrs and times of a node that cannot be opened (symlink,
        device), acted on by name under its parent without following it.
        ``owned``: it was just created with the entry's owner."""
        cdef timespec ts[2]
        if self.is_root and not owned and fchownat(pfd, base, <uid_t>self.cur_uid, <gid_t>self.cur_gid, AT_SYMLINK_NOFOLLOW) < 0:
            self._oserror("chown", name)
        if self.cur_xattrs:
            # no *at() xattr call before Linux 6.13: reach the node through the
            # verified parent fd, l*xattr leaves the last component unfollowed
            self._set_xattrs(-1, b"/proc/self/fd/%d/%s" % (pfd, base), name)
        self._entry_times(ts)
        if utimensat(pfd, base, ts, AT_SYMLINK_NOFOLLOW) < 0:
            self._oserror("set times of", name)

    cdef inline void _entry_times(self, timespec *ts) noexcept nogil:
        ts[0].tv_sec = self.cur_sec
        ts[0].tv_nsec = self.cur_nsec
        ts[1] = ts[0]

    cdef bint _no_symlinks_to(self, bytes parent):
        """Is ``parent`` reached from the root without a symlink (or not there yet)?

        Skipping is only right when the entry would land under the hidden
        path itself: an entry written through a symlink lands elsewhere, and a
        whiteout of the link would not remove it.  Symlinks are never skipped,
        so any on the way are on disk to be seen here."""
        cdef int fd
        if parent == self.plain_parent:
            return True
        fd = self._plain_dir(self.rootfd, parent)
        if fd >= 0:
            close(fd)
        elif errno != ENOENT:
            return False  # a symlink (ELOOP), a file on the way (ENOTDIR), ...
        self.plain_parent = parent
        return True

    cdef bint _symlink_at(self, bytes path, Py_ssize_t slash):
        """Is there a symlink at ``path``, in a parent reached without one (_no_symlinks_to)?
        ``dir_at`` says whether a directory is there instead (_drop_dir_skipped_over's case)."""
        cdef int fd
        cdef stat st
        cdef bint found
        self.dir_at = False
        fd = self._plain_dir(self.rootfd, path[:slash] if slash > 0 else b"")
        if fd < 0:
            return False
        found = fstatat(fd, <bytes>path[slash + 1:], &st, AT_SYMLINK_NOFOLLOW) == 0
        close(fd)
        self.dir_at = found and S_ISDIR(st.st_mode)
        return found and S_ISLNK(st.st_mode)

    cdef bint _is_hidden(self, bytes path):
        """Does an upper layer hide ``path`` (it or an ancestor whited out or
        replaced by a non-directory, or an ancestor made opaque)?"""
        cdef Py_ssize_t i
        if self._hides(self.hide_at, path):
            return True
        # what the ancestors say depends on the parent alone, and a layer lists its
        # entries directory by directory: looked up once per run of one parent
        i = path.rfind(b"/")
        cp = self.hid_parent
        if cp is not None and len(cp) == (i if i > 0 else 0) and memcmp(<const char *>path, <const char *>cp, len(cp)) == 0:
            return self.hid_parent_hides
        self.hid_parent = path[:i] if i > 0 else b""
        self.hid_parent_hides = self._hides(self.hide_below, b"")
        while i > 0 and not self.hid_parent_hides:
            ancestor = path[:i]
            self.hid_parent_hides = self._hides(self.hide_at, ancestor) or self._hides(self.hide_below, ancestor)
            i = path.rfind(b"/", 0, i)
        return self.hid_parent_hides

    cdef bytes _visible_parent(self, bytes path):
        """The longest ancestor of hidden ``path`` that no upper layer hides: a
        skipped entry still implies it (an opaque marker above hides only what
        is under it, and may be the dir's only other entry)."""
        cdef Py_ssize_t i = path.find(b"/")
        visible = b""
        while i > 0:
            ancestor = path[:i]
            if self._hides(self.hide_at, ancestor) or self._hides(self.hide_below, visible):
                break
            visible = ancestor
            i = path.find(b"/", i + 1)
        return visible

    cdef _check_skipped_parents(self, bytes path, object name):
        """Skipping must not hide an error: an entry under a non-directory that
        this layer skipped would have failed, had it been written."""
        cdef Py_ssize_t i
        if not self.hidden_files:
            return
        i = path.rfind(b"/")
        cp = self.unskipped_parent  # checked for the entry before, in the same directory
        if i <= 0 or (cp is not None and len(cp) == i and memcmp(<const char *>path, <const char *>cp, i) == 0):
            return
        parent = path[:i]
        while i > 0:
            if path[:i] in self.hidden_files:
                raise _errors.ExtractError(
                    f"entry {_show(name)}: a component of {_show(path[:i])} is not a directory")
            i = path.rfind(b"/", 0, i)
        self.unskipped_parent = parent

    cdef _check_skipped_real_parent(self, int pfd, bytes parent, object name):
        """The same for an entry reached through a symlink: it lands where the link
        leads (``c -> a``, then ``c/x``), and a skipped file there would have failed it."""
        if self.cache_real is None:
            self.cache_real = self._cached_real_path(pfd, parent)
        if self.cache_real != parent:
            self._check_skipped_parents(self.cache_real + b"/.", name)

    cdef _check_skipped_link(self, bytes target, bytes link, object name, bytes path):
        """A skipped hardlink must still name a file that is there (as a written one would);
        ``target`` is ``link`` normalised, ``path`` the entry's own."""
        cdef stat st
        cdef int fd
        cdef Py_ssize_t tslash
        if not target:
            raise _errors.InvalidArchiveError(f"entry {_show(name)}: hardlink to the root directory")
        _target_can_be_there(target, link, name)
        if target in self.hidden_files and self._skipped_file_stays(target):
            if target.startswith(path + b"/"):
                # its directories are plain ones (no symlink: see _skipped_file_stays), and the
                # link would replace one of them, as _hardlink refuses
                raise _errors.InvalidArchiveError(f"entry {_show(name)}: hardlink to {_show(link)}, which is inside it")
            return
        self._check_target_under_skipped(target, link, name)
        tslash = target.rfind(b"/")
        try:
            fd = self._resolve_dir(target[:tslash] if tslash > 0 else b"", False, name)
            if fd < 0:
                self._no_target_dir(target[:tslash] if tslash > 0 else b"", link, name)
        except _errors.ExtractError as e:
            raise self._about_target(e, link, name) from None
        if fstatat(fd, <bytes>target[tslash + 1:], &st, AT_SYMLINK_NOFOLLOW) < 0:
            if fd >= 0:
                close(fd)
            raise _errors.InvalidArchiveError(
                f"entry {_show(name)}: hardlink target {_show(link)} not found in the layer or below")
        close(fd)
        if target.startswith(path + b"/"):
            # a written target (it replaced a symlink, so it was not skipped) under the entry's
            # own name: that name is a directory the link would replace, as _hardlink refuses
            raise _errors.InvalidArchiveError(f"entry {_show(name)}: hardlink to {_show(link)}, which is inside it")
        if S_ISDIR(st.st_mode):
            raise _errors.InvalidArchiveError(f"entry {_show(name)}: hardlink target {_show(link)} is a directory")

    cdef bint _links_a_symlink(self, bytes target, object name) except -1:
        """Does a hardlink name a symlink?  Then it is one more symlink, never skipped as a
        symlink is not: a later entry, whiteout or opaque marker reached through it acts where it
        leads (``t => b`` with ``b -> .``, then ``t/.wh..wh..opq`` empties the root).  A target
        this walk cannot reach is left to the checks of a skipped link.  (``target``: the link's,
        normalised.)"""
        cdef stat st
        cdef int fd, r
        if not target or target in self.hidden_files:
            return False  # (what was skipped is no symlink)
        i = target.rfind(b"/")
        try:
            fd = self._resolve_dir(target[:i] if i > 0 else b"", False, name)
        except _errors.LaminaError:
            return False
        if fd < 0:
            return False
        r = fstatat(fd, <bytes>target[i + 1:], &st, AT_SYMLINK_NOFOLLOW)
        close(fd)
        return r == 0 and S_ISLNK(st.st_mode)

    cdef _drop_dir_skipped_over(self, bytes path, Py_ssize_t slash, object name):
        """A non-directory skipped where a directory stands (made for an entry that is never
        skipped: a symlink in it, say): written, it would have replaced the directory and what
        is in it, so a directory the layer lists there later is a new, empty one, and a hardlink
        to a name in it finds nothing.  The directory goes now, as the written entry takes it
        (an upper layer hides the path: nothing in it shows)."""
        cdef int pfd
        cdef stat st
        parent = path[:slash] if slash > 0 else b""
        pfd = self._plain_dir(self.rootfd, parent)
        if pfd < 0:
            return  # (the entry was skipped with no symlink on its way: nothing there)
        try:
            base = path[slash + 1:] if slash >= 0 else path
            if fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 and S_ISDIR(st.st_mode):
                # the written entry's removal keeps the parent's time where the layer does not
                # list it; this one must too
                self._keep_times(pfd, parent)
                self._remove(pfd, base, name)
        finally:
            close(pfd)

    cdef _check_target_under_skipped(self, bytes target, bytes link, object name):
        """A hardlink's target under a non-directory skipped as hidden (``b/a -> a``, a fifo
        ``b``, then ``h => b/a``, with ``b`` hidden above): the directory it replaced is still
        here, the target in it, but written the non-directory would be in the way and the link
        fail, as it fails on the paths that write every entry.  By the target's name, and by
        where its directory really is (reached through a symlink)."""
        cdef int fd
        cdef Py_ssize_t i = target.rfind(b"/")
        if i <= 0 or not self.hidden_files:
            return
        parent = target[:i]
        ways = [parent]
        if not self.overlay:
            fd = self._open_in_root(parent)
            if fd >= 0:
                try:
                    ways.append(self._real_path(fd, parent))
                finally:
                    close(fd)
        for way in ways:
            i = len(way)
            while i > 0:
                if way[:i] in self.hidden_files:
                    raise _errors.ExtractError(f"entry {_show(name)}: hardlink target {_show(link)}: "
                                               f"a component of {_show(way[:i])} is not a directory")
                i = way.rfind(b"/", 0, i)

    cdef _no_target_dir(self, bytes tparent, bytes link, object name):
        """The dir format found no directory ``tparent`` for a hardlink's target: say why in
        the overlay formats' words (their walk through the layers names a dangling symlink or
        a non-directory on the way), or that the target is not there at all."""
        cdef int fd, nfd, e
        cdef stat st
        e = errno
        if e == ENOTDIR:
            raise _errors.ExtractError(f"entry {_show(name)}: a component of {_show(tparent)} is not a directory")
        if e == ENOENT:
            # the deepest directory there, then what is in the way under it
            parts = tparent.split(b"/")
            fd = _dup_checked(self.rootfd)
            for i in range(len(parts)):
                nfd = self._open_in_root(b"/".join(parts[:i + 1]))
                if nfd >= 0:
                    close(fd)
                    fd = nfd
                    continue
                e = errno
                try:
                    if fstatat(fd, <bytes>parts[i], &st, AT_SYMLINK_NOFOLLOW) == 0 and S_ISLNK(st.st_mode):
                        raise _errors.ExtractError(
                            f"entry {_show(name)}: {_show(b'/'.join(parts[:i + 1]))} goes through a dangling symlink")
                finally:
                    close(fd)
                if e == ENOTDIR:
                    raise _errors.ExtractError(
                        f"entry {_show(name)}: a component of {_show(tparent)} is not a directory")
                break
            else:
                close(fd)
        raise _errors.InvalidArchiveError(
            f"entry {_show(name)}: hardlink target {_show(link)} not found in the layer or below")

    cdef object _about_target(self, object e, bytes link, object name):
        """A failure to reach a hardlink's target names the target (the path in it is the
        target's, not the entry's): "entry 'h': hardlink target 'l/f': 'l' goes through ..."."""
        head = f"entry {_show(name)}: "
        msg = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else ""
        if msg.startswith(head) and not msg.startswith(head + "hardlink"):
            # rewritten in place: the class and errno (a full disk's ENOSPC in a copy-up) stay
            e.args = (f"{head}hardlink target {_show(link)}: {msg[len(head):]}",)
        return e

    cdef bint _skipped_file_stays(self, bytes target) except -1:
        """Is skipped non-directory ``target`` still where it was, had it been written?  Not
        when one of its directories was replaced since: by a non-directory skipped after it
        (an ancestor skipped before it would have failed its entry), or, written, by a
        symlink or file (no symlink was on its way: it was skipped), or removed (the
        directories it implied that no upper layer hides were made, and are no longer there)."""
        cdef int fd
        cdef Py_ssize_t i = target.rfind(b"/")
        if i <= 0:
            return True
        while i > 0:
            if target[:i] in self.hidden_files:
                return False
            i = target.rfind(b"/", 0, i)
        fd = self._plain_dir(self.rootfd, target[:target.rfind(b"/")])
        if fd < 0 and errno == ENOENT:  # not made (hidden), or removed: its visible part must be there
            visible = self._visible_parent(target)
            fd = self._plain_dir(self.rootfd, visible)
        if fd < 0:
            return False
        close(fd)
        return True

    cdef inline bint _hides(self, object paths, bytes path):
        if self.hide_level < 0:
            return path in paths
        level = paths.get(path)
        return level is not None and <int64_t>level > self.hide_level

    cdef _hardlink(self, int pfd, bytes base, bytes name, bytes link, bytes target):
        """``target``: ``link`` normalised."""
        cdef stat a, b
        cdef int tfd
        cdef Py_ssize_t tslash
        if not target:
            raise _errors.InvalidArchiveError(f"entry {_show(name)}: hardlink to the root directory")
        _target_can_be_there(target, link, name)
        if self.unmade_devices and target in self.unmade_devices:
            # without root the device node was not made, as if the layer did not list it: nor is a
            # link to it (the dir format's top-down skipping skipped it, the other paths refused)
            self.unmade_devices.add(self._normalize(name))
            self.skipped.append(f"{_show(name)}: hardlink to a device node not created (needs root)")
            return
        if self.unmade_devices:
            self.unmade_devices.discard(self._normalize(name))
        if target in self.hidden_files:
            raise HiddenLinkTarget(f"entry {_show(name)}: hardlink to {_show(link)}, which was skipped as hidden")
        self._new_name_at(pfd, base)  # the link may be one more name of a symlink
        tslash = target.rfind(b"/")
        tbase = target[tslash + 1:]
        tparent = target[:tslash] if tslash > 0 else b""
        if self._hardlink_nogil(pfd, base, tparent, tbase):
            return
        try:
            tfd = self._copy_up_fast(tparent, tbase, name, link) if self.overlay else -1
            if tfd >= 0:
                self._invalidate()
            else:
                tfd = self._resolve_dir(tparent, False, name)
                if tfd < 0 and not self.overlay:
                    self._no_target_dir(tparent, link, name)
                if self.overlay and (tfd < 0 or fstatat(tfd, tbase, &a, AT_SYMLINK_NOFOLLOW) < 0
                                     or (S_ISCHR(a.st_mode) and a.st_rdev == 0)):
                    # the target is only in a lower layer: copy it up, then link (as overlayfs does)
                    if tfd >= 0:
                        close(tfd)
                    tfd = self._copy_up_target(tparent, tbase, link, name)
                    self._invalidate()
        except _errors.ExtractError as e:
            raise self._about_target(e, link, name) from None
        try:
            if fstatat(tfd, tbase, &a, AT_SYMLINK_NOFOLLOW) == 0:
                if S_ISDIR(a.st_mode):
                    raise _errors.InvalidArchiveError(
                        f"entry {_show(name)}: hardlink target {_show(link)} is a directory")
                if self.obj_inodes and S_ISREG(a.st_mode) and a.st_ino in self.obj_inodes:
                    self._privatize(tfd, tbase, name)
            if linkat(tfd, tbase, pfd, base, 0) < 0:
                if errno == EMLINK and self._drop_hold(tfd, tbase) and linkat(tfd, tbase, pfd, base, 0) == 0:
                    return  # the file's hashed/ name took the link the image needed
                if errno == EEXIST:
                    if (fstatat(tfd, tbase, &a, AT_SYMLINK_NOFOLLOW) == 0
                            and fstatat(pfd, base, &b, AT_SYMLINK_NOFOLLOW) == 0
                            and a.st_ino == b.st_ino and a.st_dev == b.st_dev):
                        return
                    if (fstatat(pfd, base, &b, AT_SYMLINK_NOFOLLOW) == 0 and S_ISDIR(b.st_mode)
                            and target.startswith(self._normalize(name) + b"/")):
                        # replacing the directory would take the target with it, and the error
                        # would then say "not found" (a symlink to it can go: the target stays)
                        raise _errors.InvalidArchiveError(
                            f"entry {_show(name)}: hardlink to {_show(link)}, which is inside it")
                    self._remove(pfd, base, name)
                    if linkat(tfd, tbase, pfd, base, 0) == 0:
                        return
                if errno == ENOENT:
                    raise _errors.InvalidArchiveError(
                        f"entry {_show(name)}: hardlink target {_show(link)} not found in the layer or below")
                if errno == EPERM or errno == EISDIR:
                    raise _errors.InvalidArchiveError(
                        f"entry {_show(name)}: hardlink target {_show(link)} is a directory")
                if errno == EMLINK:
                    raise _errors.ExtractError(
                        f"entry {_show(name)}: hardlink to {_show(link)}: that file has as many names as the "
                        f"filesystem allows ({os.strerror(EMLINK)})")
                self._oserror("hardlink", name)
        finally:
            close(tfd)

    cdef bint _hardlink_nogil(self, int pfd, bytes base, bytes tparent, bytes tbase):
        """The common hardlink, to a file this layer's tree has where the target's path
        resolves (in the overlay format: reached without a symlink), linked in one block
        without the GIL: the target's directory resolved as _resolve_dir does (or the
        cached parent, which is where it resolves to), the target checked, the link made.
        False when anything is out of the ordinary: nothing was changed then, and
        _hardlink's general path decides (copy-up, errors, an existing name, store objects)."""
        cdef int tfd = -1, r = -1, root = self.rootfd
        cdef int how = LAMINA_RESOLVE_IN_ROOT | LAMINA_RESOLVE_NO_MAGICLINKS
        cdef bint own = False, overlay = self.overlay
        cdef stat a
        cdef const char *ctparent = tparent
        cdef const char *ctbase = tbase
        cdef const char *cbase = base
        if self.obj_inodes or not self.use_openat2:
            return False  # a target may be a store object to privatize; or no openat2 here
        if not overlay and self.cache_valid and self.cache_fd >= 0 and tparent == self.cache_path:
            tfd = self.cache_fd
        elif not tparent:
            tfd = root
        else:
            own = True
            if overlay:
                how = how | LAMINA_RESOLVE_NO_SYMLINKS  # as _plain_dir: else the union view decides
        with nogil:
            if own:
                tfd = lamina_openat2(root, ctparent, O_RDONLY | O_DIRECTORY | O_CLOEXEC, how)
            if (tfd >= 0 and fstatat(tfd, ctbase, &a, AT_SYMLINK_NOFOLLOW) == 0 and not S_ISDIR(a.st_mode)
                    and not (overlay and S_ISCHR(a.st_mode) and a.st_rdev == 0)):
                r = linkat(tfd, ctbase, pfd, cbase, 0)
            if own and tfd >= 0:
                close(tfd)
        if r < 0:
            return False
        self.nogil_entries += 1
        return True

    cdef int _load_lowers(self, str why) except -1:
        """The layers below are needed now: get them from ``lowers_provider``
        (which waits until they are finished), or raise NeedsLowers.  What was
        written so far needed nothing from below, so it stays valid."""
        cdef int fd
        dirs = self.lowers_provider() if self.lowers_provider is not None else None
        if dirs is None:
            raise NeedsLowers(why)
        self._add_lowers(dirs)
        self.defer_lowers = False
        if self.early_pending:
            self._settle_early_dirs()
        if self.wh_pending:
            self._apply_pending_whiteouts()
        return 0

    cdef _moved_first(self):
        """An entry refused while directories made early (_early_dir) are unsettled: if one is a
        symlink or a file below, the waiting walk would have followed it or refused the entry
        that implied it, and this entry may never have been met.  So settle them first: their
        ImpliedDirMoved makes the caller read the layer again, waiting, and it fails (if it
        does) with the entry and the words every other path gives.  The entry's own error
        otherwise, also when the layers below cannot be had."""
        try:
            self._load_lowers("an entry was refused while directories this layer implies were unsettled")
        except ImpliedDirMoved:
            raise
        except Exception:
            pass

    cdef int _early_dir(self, int pfd, bytes base, bytes path, object name) except -2:
        """A directory the layer implies while the layers below are not known yet (``early_dirs``):
        made now, in this layer, as _copy_up_dirs makes a copy-up (0700 until its metadata is
        known), and noted for _settle_early_dirs, so that the layer goes on without waiting for
        the layers below.  -1: not so, nothing made (the caller waits for them)."""
        cdef stat st
        cdef int fd
        if _has_default_acl(pfd):
            return -1  # what the entries under it inherit would depend on when its metadata came
        fd = self._mkdir_open(pfd, base, 0o700, name)
        if fd < 0:
            return -1  # a name is there after all: the walk over the layers below says what it is
        if fstat(fd, &st) < 0:
            close(fd)
            self._oserror("stat", name)
        self.early_pending[path] = (st.st_dev, st.st_ino)
        return fd

    cdef _settle_early_dirs(self):
        """The layers below are known: each directory _early_dir made (parents first) gets what
        _copy_up_dirs would have given it then: the metadata of the topmost layer below that has
        it, or a new 0755 directory's if none shows it.  One that an entry of this layer named
        or replaced since keeps what that entry gave it.  ImpliedDirMoved if a layer below has a
        symlink or a non-directory there, even if an entry replaced it since: the walk would
        have followed the symlink or refused the entry that implied it."""
        cdef stat st, lst
        cdef int fd, lfd, src, found
        cdef Py_ssize_t slash, i
        cdef bytes path, base
        pending, self.early_pending = self.early_pending, {}
        for path, ident in pending.items():
            slash = path.rfind(b"/")
            base = path[slash + 1:]
            lowers = self._lower_merge(path[:slash] if slash > 0 else b"")
            fd = -1
            try:
                found = -1
                for i in range(len(lowers)):
                    lfd = <int>lowers[i]
                    if lfd < 0:
                        continue
                    if fstatat(lfd, base, &lst, AT_SYMLINK_NOFOLLOW) == 0:
                        found = i
                        break
                    if errno != ENOENT:
                        self._parent_error(path, path)
                if found >= 0 and S_ISCHR(lst.st_mode) and lst.st_rdev == 0:
                    found = -1  # whited out below: nothing shows there
                if found >= 0 and not S_ISDIR(lst.st_mode):
                    raise ImpliedDirMoved(f"{_show(path)}, a directory this layer implies, is not a directory "
                                          "in the layers below")
                if ident is None:
                    continue  # named by an entry of this layer
                fd = self._plain_dir(self.rootfd, path)
                if fd < 0 or fstat(fd, &st) < 0 or (st.st_dev, st.st_ino) != ident:
                    continue  # replaced or removed by an entry of this layer
                if found < 0:
                    if fchmod(fd, 0o755 & ~self.umask) < 0:
                        self._oserror("chmod", path)
                    continue
                src = openat(<int>lowers[found], base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                if src < 0:
                    self._parent_error(path, path)
                try:
                    self._copy_dir_metadata(src, fd, path, path)
                finally:
                    close(src)
            finally:
                if fd >= 0:
                    close(fd)
                _close_fds(lowers)

    cdef list _lower_merge(self, bytes parent):
        """The layers below at ``parent`` (fds, topmost first; -1 where one does not show it), as
        _union_walk merges them under directories of this layer's own that no marker of it made
        opaque (what an early directory's parents were), one _descend_lowers per component."""
        lf = []
        try:
            for x in self.lower_fds:
                lf.append(_dup_checked(<int>x))
            for c in parent.split(b"/"):
                if c:
                    self._descend_lowers(lf, <bytes>c, 0, False)
        except BaseException:
            _close_fds(lf)
            raise
        return lf

    cdef _descend_lowers(self, list lf, bytes c, int first, bint stop):
        """``lf`` (the layers below at a directory, topmost first, -1 where one shows nothing) one
        component down, into ``c``: each layer from ``first`` merges its directory ``c`` there,
        down to a layer with a non-directory or whiteout there (it and those under it show
        nothing) or an opaque one (those under it show nothing); ``stop``: none does."""
        cdef int i, fd, nfd
        for i in range(len(lf)):
            fd = <int>lf[i]
            nfd = -1
            if fd >= 0 and not stop and i >= first:
                nfd = openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                if nfd < 0:
                    if errno == ENOTDIR or errno == ELOOP:
                        stop = True  # a file, symlink or whiteout here hides the layers below
                    elif errno != ENOENT and errno != ENAMETOOLONG:
                        # (EMFILE, ENOMEM, EIO: taken for a file here, it hid the layers below;
                        # fd stays in lf, the caller's to close)
                        raise OSError(errno, f"cannot open {_show(c)} in a layer below: {os.strerror(errno)}")
                elif self._is_opaque(nfd):
                    stop = True
            if fd >= 0:
                close(fd)
            lf[i] = nfd

    cdef _add_lowers(self, dirs):
        """Open the layer dirs below (given bottom first), kept topmost first."""
        cdef int fd
        for d in reversed(list(dirs)):
            fd = openat(AT_FDCWD, os.fsencode(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if fd < 0:
                raise _errors.ExtractError(f"cannot open lower layer {os.fsdecode(d)!r}: {os.strerror(errno)}")
            self.lower_fds.append(fd)
            self.lower_dirs.append(os.fsdecode(d))

    cdef bint _visible_below(self, bytes parent, bytes hidden, object name) except -1:
        """Does a layer below show ``parent/hidden`` (overlay format)?  Raises
        NeedsLowers when that depends on layers that are not ready."""
        cdef stat st
        cdef int fd, fast = self._visible_below_fast(parent, hidden)
        if fast >= 0:
            return fast == 1
        lowers = []
        try:
            fd = self._union_walk(parent, False, name, lowers, False)
            if fd == -1:
                return False
            if fd >= 0:
                close(fd)
            for x in lowers:
                if <int>x >= 0 and fstatat(<int>x, hidden, &st, AT_SYMLINK_NOFOLLOW) == 0:
                    return not (S_ISCHR(st.st_mode) and st.st_rdev == 0)
            return False
        finally:
            _close_fds(lowers)

    cdef int _visible_below_fast(self, bytes parent, bytes hidden) except -2:
        """_visible_below from _below_dir, when this layer reaches ``parent`` as _layer_has wants:
        1 shown, 0 not; -1: unsure, the walk decides.  Whiteouts over more layers below than the
        run cache holds fds for (NOGIL_LOWERS, with a raised max_layers) each walked every
        layer: 5k over 600 layers took 9.4 s."""
        cdef int have
        cdef int64_t v
        if self.defer_lowers or len(self.lower_fds) < UP_MIN_LOWERS:
            return -1
        have = self._layer_has(parent.split(b"/") if parent else [])
        if have < 0:
            return -1
        e = self._below_dir(parent)
        if e is None:
            return -1
        if e is False:
            return 0
        v = self._below_name(<_BelowDir>e, parent, hidden)
        if v == -2:
            return -1
        return 0 if v == -1 or (v & 3) == UP_WHITEOUT else 1

    cdef int _copy_up_target(self, bytes tparent, bytes tbase, bytes link, bytes name) except -2:
        cdef int tfd = -1
        cdef stat st
        if self.defer_lowers:
            self._load_lowers(f"entry {_show(name)}: hardlink to {_show(link)}, not in this layer")
        lowers = []
        try:
            tfd = self._union_walk(tparent, True, name, lowers)
            if fstatat(tfd, tbase, &st, AT_SYMLINK_NOFOLLOW) < 0 and self._copy_up_node(tfd, tbase, lowers, name, link):
                # not provided: a copy-up is not an entry of this layer, so its
                # whiteout later in the layer still hides it (the link keeps the data)
                tphys = self.last_phys + b"/" + tbase if self.last_phys else tbase
                if self.up_st.st_nlink > 1 and not S_ISDIR(self.up_st.st_mode):
                    self._copy_up_links(tfd, tbase, tphys, name)
                return tfd
            close(tfd)  # a whiteout of this layer, or nowhere below
        finally:
            _close_fds(lowers)
        raise _errors.InvalidArchiveError(
            f"entry {_show(name)}: hardlink target {_show(link)} not found in the layer or below")

    cdef _copy_up_links(self, int tfd, bytes tbase, bytes tphys, object name):
        """The file just copied up (``tphys``) had other names in its lower
        layer (hardlinks of the image): link the ones the merged view still
        shows to the copy, as a flat unpack (and umoci) keeps them one inode
        with the names this layer links to it.  Names that only share the
        inode through the store's dedup are not hardlinks of the image."""
        cdef int i = self.up_layer, pfd
        cdef stat st
        key = (self.up_st.st_dev, self.up_st.st_ino)
        links = self.lower_links.get(i)
        if links is None:
            shared = ()
            if self.lower_shared is not None:
                shared = {os.fsencode(p) for p in self.lower_shared(self.lower_dirs[i]) or ()}
            links = self.lower_links[i] = _multiply_linked(<int>self.lower_fds[i], shared)
        for p in links.get(key, ()):
            if p == tphys:
                continue
            slash = p.rfind(b"/")
            pparent, pbase = (p[:slash], p[slash + 1:]) if slash > 0 else (b"", p)
            if self._link_up_fast(tfd, tbase, pparent, pbase, name):
                continue
            lowers = []
            try:
                pfd = self._union_walk(pparent, False, name, lowers, False)
                if pfd == -1 or self.last_phys != pparent:
                    continue  # hidden, or shown somewhere else through a symlink of a layer above
                if pfd >= 0:
                    found = fstatat(pfd, <bytes>pbase, &st, AT_SYMLINK_NOFOLLOW) == 0
                    close(pfd)
                    if found:
                        continue  # this layer has its own entry (or whiteout) there
                for x in lowers:
                    if <int>x >= 0 and fstatat(<int>x, <bytes>pbase, &st, AT_SYMLINK_NOFOLLOW) == 0:
                        break
                else:
                    continue
                if st.st_ino != self.up_st.st_ino or st.st_dev != self.up_st.st_dev:
                    continue  # a layer in between replaced it
            finally:
                _close_fds(lowers)
            pfd = self._union_walk(pparent, True, name, None)
            try:
                if linkat(tfd, tbase, pfd, <bytes>pbase, 0) < 0:
                    self._oserror("copy up hardlink of", name)
            finally:
                close(pfd)
        self._invalidate()

    cdef object _below_dir(self, bytes d):
        """Directory ``d`` as the layers below merge it, the way _union_walk merges them under
        a directory of this layer that is neither opaque nor missing a lower one: a _BelowDir;
        False if they show no directory there; None if unsure (a symlink on the way in a layer
        that decides a component, an error, too many directories): the walk decides.  Each
        directory is resolved once from its parent's (the layers below do not change while
        this layer extracts): a hardlink to a lower file walked its directory through every
        layer below, 3k of them over 400 layers took 3 to 5 s."""
        cdef _BelowDir e, pe
        cdef Py_ssize_t at
        cdef int64_t v
        cdef int i, fd, f
        cdef bint stop
        r = self.up_dirs.get(d, _UNSEEN)
        if r is not _UNSEEN:
            return r
        # the nearest ancestor resolved already, then down from it
        at = len(d)
        while at > 0:
            at = d.rfind(b"/", 0, at)
            if at < 0:
                at = 0
            r = self.up_dirs.get(d[:at], _UNSEEN)
            if r is not _UNSEEN:
                break
        if r is _UNSEEN:  # nothing yet: the root, which every layer below has
            e = _BelowDir()
            e.layers = list(range(len(self.lower_fds)))
            e.list_at = 1
            self.up_dirs[b""] = r = e
        while at < len(d) and isinstance(r, _BelowDir):
            if len(self.up_dirs) >= NAMES_BELOW_DIRS or self.up_layers_left <= 0:
                return None
            pe = <_BelowDir>r
            parent = d[:at]
            end = d.find(b"/", at + 1 if at else 0)
            if end < 0:
                end = len(d)
            c = d[at + 1 if at else 0:end]
            r = None
            if c != b"." and c != b".." and c:
                v = self._below_name(pe, parent, c)
                if v == -1 or (v >= 0 and ((v & 3) == UP_WHITEOUT or (v & 3) == UP_OTHER)):
                    r = False  # absent, whited out, or a non-directory: no directory below
                elif v >= 0 and (v & 3) == UP_DIR:
                    # the topmost layer that has it decides; the ones under it merge until one
                    # has something else there or is opaque (_union_walk's descent)
                    f = <int>(v >> 2)
                    e = _BelowDir()
                    e.layers = []
                    e.list_at = 1
                    r = e
                    if pe.names is not None:
                        # the listing says which layers have it: only those are opened (each
                        # directory only the topmost lower layer has took an open in every layer)
                        layers = [f]
                        for w in pe.under.get(c, ()):
                            if (<int64_t>w & 3) != UP_DIR:
                                break  # a file, whiteout or symlink here hides the layers under it
                            layers.append(<int64_t>w >> 2)
                    else:
                        layers = pe.layers
                    for i in layers:
                        if i < f:
                            continue
                        fd = self._plain_dir(<int>self.lower_fds[i], d[:end])
                        if fd < 0:
                            if errno == ENOENT:
                                continue
                            if errno == ENOTDIR or errno == ELOOP:
                                break  # a file, whiteout or symlink here hides the layers under it
                            r = None
                            break
                        e.layers.append(i)
                        stop = _opaque_fd(fd)
                        close(fd)
                        if stop:
                            break
                    self.up_layers_left -= len(e.layers)
            self.up_dirs[d[:end]] = r
            at = end
        return r

    cdef int64_t _below_name(self, _BelowDir e, bytes d, bytes nm) except -3:
        """``layer << 2 | UP_*`` of the topmost layer of ``e`` (directory ``d``) that has ``nm``;
        -1: none has it; -2: unsure (an error).  The directory is listed in each of its layers
        once that costs at most UP_LIST_NAMES names per lookup so far and layer (or
        UP_LIST_BASE), tried again as the lookups double; until then a stat in each layer."""
        cdef int i, fd, r
        cdef stat st
        e.lookups += 1
        if e.names is None and e.lookups >= e.list_at:
            # a lookup without the listing costs a stat in each layer: listing is worth up to
            # UP_LIST_NAMES names per stat the lookups so far took
            e.names = self._list_below_dir(e, d, min(max(UP_LIST_BASE, UP_LIST_NAMES * e.lookups * len(e.layers)),
                                                      self.up_names_left))
            if e.names is None:
                e.list_at *= 2
        if e.names is not None:
            v = e.names.get(nm)
            return -1 if v is None else <int64_t>v
        for i in e.layers:
            fd = self._plain_dir(<int>self.lower_fds[i], d)
            if fd < 0:
                return -2
            r = fstatat(fd, nm, &st, AT_SYMLINK_NOFOLLOW)
            if r < 0 and errno != ENOENT:
                close(fd)
                return -2
            close(fd)
            if r == 0:
                return (<int64_t>i << 2) | _up_kind(&st)
        return -1

    cdef dict _list_below_dir(self, _BelowDir e, bytes d, int64_t budget):
        """{name: layer << 2 | UP_*} of directory ``d`` in the layers of ``e`` (the topmost that
        has a name decides), or None past ``budget`` names or on an error.  ``e.under`` gets the
        other layers that have a name the topmost has as a directory: they merge into it."""
        cdef int i, fd
        cdef stat st
        cdef int64_t kind
        names = {}
        under = {}
        for i in e.layers:
            fd = self._plain_dir(<int>self.lower_fds[i], d)
            if fd < 0:
                return None
            try:
                entries = _dir_entries(fd, budget)
                if entries is None:
                    return None
                budget -= len(entries)
                for nm, dtype in entries:
                    first = names.get(nm)
                    if first is not None and (<int64_t>first & 3) != UP_DIR:
                        continue
                    if dtype == DT_DIR:
                        kind = UP_DIR
                    elif dtype == DT_LNK:
                        kind = UP_SYMLINK
                    elif dtype == DT_CHR or dtype == DT_UNKNOWN:
                        if fstatat(fd, <bytes>nm, &st, AT_SYMLINK_NOFOLLOW) < 0:
                            return None
                        kind = _up_kind(&st)
                    else:
                        kind = UP_OTHER
                    if first is None:
                        names[nm] = (<int64_t>i << 2) | kind
                    else:
                        under.setdefault(nm, []).append((<int64_t>i << 2) | kind)
            finally:
                close(fd)
        self.up_names_left -= len(names)
        e.under = under
        return names

    cdef int _layer_has(self, list comps) except -2:
        """How many leading components of ``comps`` this layer has as directories reached without a
        symlink, none opaque, the rest absent: then the layers below merge there as _below_dir
        says.  -1 if anything else is on the way (a symlink, a file or whiteout, an opaque dir)."""
        cdef int fd = dup(self.rootfd), nfd, k = 0
        if fd < 0:
            self._oserror("dup", b".")
        for c in comps:
            nfd = openat(fd, <bytes>c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if nfd < 0:
                close(fd)
                return k if errno == ENOENT else -1
            close(fd)
            fd = nfd
            if _opaque_fd(fd):
                close(fd)
                return -1
            k += 1
        close(fd)
        return k

    cdef object _below_phys(self, list comps):
        """Where directory ``comps`` really is when the walk (_union_walk) goes through symlinks
        of the layers below on the way, resolved from _below_dir's cache and the symlinks'
        targets (read once each), re-rooted at the image root as the walk does; None if
        anything else decides a component (this layer's symlink, file, whiteout or opaque
        directory; no directory; too many links; an error): the walk decides, and words the
        errors.  Each link through ``lib -> usr/lib`` walked every layer below (3k over 400
        layers: 10 s, where the other links to lower files took 0.2 s)."""
        cdef int fd, nfd, mfd = -1, f, links = 0
        cdef Py_ssize_t ln, mine = 0
        cdef int64_t v
        cdef char buf[4096]
        todo = list(reversed(comps))
        cur = []        # the physical path so far: plain directories of this layer or below
        # this layer has the first ``mine`` directories of ``cur`` (mfd: its fd of them, -1: not
        # open): one open per component, not a walk from the root each
        try:
            while todo:
                c = todo.pop()
                if not c or c == b".":
                    continue
                if c == b"..":
                    if cur:
                        cur.pop()  # re-rooted: '..' of the root is the root
                        if mine > len(cur):
                            mine = len(cur)
                            if mfd >= 0:
                                close(mfd)
                                mfd = -1
                    continue
                cur.append(c)
                if mine == len(cur) - 1:
                    # this layer has every directory of ``cur`` so far: does it have this one?
                    if mfd < 0:
                        mfd = self._plain_dir(self.rootfd, b"/".join(cur[:mine]))
                        if mfd < 0:
                            return None
                    nfd = openat(mfd, <bytes>c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                    if nfd < 0:
                        if errno != ENOENT:
                            return None  # its symlink, file or whiteout: the walk
                    else:
                        close(mfd)
                        mfd = nfd
                        if _opaque_fd(mfd):
                            return None
                        mine += 1
                        continue  # its directory decides (the ones below under it merge or are hidden)
                d = b"/".join(cur)
                e = self._below_dir(d)
                if isinstance(e, _BelowDir):
                    continue
                if e is False:
                    return None
                parent = b"/".join(cur[:len(cur) - 1])
                pe = self.up_dirs.get(parent)
                if not isinstance(pe, _BelowDir):
                    return None
                target = self.up_links.get(d)
                if target is None:
                    v = self._below_name(<_BelowDir>pe, parent, c)
                    if v < 0 or (v & 3) != UP_SYMLINK:
                        return None
                    f = <int>(v >> 2)
                    fd = self._plain_dir(<int>self.lower_fds[f], parent)
                    if fd < 0:
                        return None
                    ln = readlinkat(fd, <bytes>c, buf, sizeof(buf))
                    close(fd)
                    if ln <= 0:
                        return None
                    target = buf[:ln]
                    if len(self.up_links) < NAMES_BELOW_DIRS:
                        self.up_links[d] = target
                links += 1
                if links > 40:
                    return None  # ELOOP: the walk says so
                cur.pop()
                if target.startswith(b"/"):
                    cur = []
                    mine = 0
                    if mfd >= 0:
                        close(mfd)
                        mfd = -1
                todo.extend(reversed(target.split(b"/")))
            return b"/".join(cur)
        finally:
            if mfd >= 0:
                close(mfd)

    cdef int _up_dirs_fast(self, bytes parent, list comps, int have, object name) except -2:
        """This layer's fd of ``parent`` (of which it has the first ``have`` components), the
        missing ones copied up from the layer below that decides each (_copy_up_dirs, as the walk
        does)."""
        cdef Py_ssize_t k
        source = []
        for k in range(len(comps)):
            if k < have:
                source.append(-1)
            else:
                e = self._below_dir(b"/".join(comps[:k + 1]))
                if not isinstance(e, _BelowDir) or not (<_BelowDir>e).layers:
                    raise _errors.ExtractError(f"entry {_show(name)}: {_show(parent)} changed below")
                source.append((<_BelowDir>e).layers[0])
        return self._copy_up_dirs(comps, source, name)

    cdef int _copy_up_fast(self, bytes tparent, bytes tbase, object name, bytes link) except -2:
        """_copy_up_target without the walk through every layer below, when this layer reaches
        ``tparent`` as _layer_has wants and no layer below has a symlink on the way
        (_below_dir): the topmost layer below that has ``tbase`` there is looked up in the
        directory's listing (or a stat in each layer that merges there), and the file copied up
        from it.  -1: not so, nothing changed: the general path decides (and words the errors)."""
        cdef int have, tfd, lfd, f, fd
        cdef int64_t v
        cdef stat st
        cdef bint ok
        if self.defer_lowers or len(self.lower_fds) < UP_MIN_LOWERS:
            return -1
        comps = tparent.split(b"/") if tparent else []
        have = self._layer_has(comps)
        if have < 0:
            return -1
        e = self._below_dir(tparent)
        if e is None:
            # perhaps a symlink below on the way (lib -> usr/lib): the directory it leads to
            tparent = self._below_phys(comps)
            if tparent is None:
                return -1
            comps = tparent.split(b"/") if tparent else []
            have = self._layer_has(comps)
            if have < 0:
                return -1
            e = self._below_dir(tparent)
        if not isinstance(e, _BelowDir):
            return -1
        if have == len(comps):
            fd = self._plain_dir(self.rootfd, tparent)
            if fd < 0:
                return -1
            ok = fstatat(fd, tbase, &st, AT_SYMLINK_NOFOLLOW) < 0 and errno == ENOENT
            close(fd)
            if not ok:
                return -1  # this layer has something there (a whiteout): the general path
        v = self._below_name(<_BelowDir>e, tparent, tbase)
        if v < 0 or (v & 3) == UP_DIR or (v & 3) == UP_WHITEOUT:
            return -1  # not found, a directory, unsure: the general path says so
        f = <int>(v >> 2)
        lfd = self._plain_dir(<int>self.lower_fds[f], tparent)
        if lfd < 0:
            return -1
        try:
            tfd = self._up_dirs_fast(tparent, comps, have, name)
            try:
                if not self._copy_up_node(tfd, tbase, [lfd], name, link):
                    raise _errors.InvalidArchiveError(
                        f"entry {_show(name)}: hardlink target {_show(link)} not found in the layer or below")
                self.up_layer = f
                if self.up_st.st_nlink > 1 and not S_ISDIR(self.up_st.st_mode):
                    self._copy_up_links(tfd, tbase, tparent + b"/" + tbase if tparent else tbase, name)
            except BaseException:
                close(tfd)
                raise
        finally:
            close(lfd)
        return tfd

    cdef bint _link_up_fast(self, int tfd, bytes tbase, bytes pparent, bytes pbase, object name) except -1:
        """One other name ``pparent/pbase`` of the file just copied up, as _copy_up_links does it,
        without the walks: True when done (linked, or nothing to link); False: the general path."""
        cdef int have, fd, lfd, r, f
        cdef int64_t v
        cdef stat st
        if self.defer_lowers or len(self.lower_fds) < UP_MIN_LOWERS:
            return False
        comps = pparent.split(b"/") if pparent else []
        have = self._layer_has(comps)
        if have < 0:
            return False
        e = self._below_dir(pparent)
        if e is None:
            return False
        if e is False:
            return True  # no directory below there: the name is hidden
        if have == len(comps):
            fd = self._plain_dir(self.rootfd, pparent)
            if fd < 0:
                return False
            r = fstatat(fd, pbase, &st, AT_SYMLINK_NOFOLLOW)
            close(fd)
            if r == 0:
                return True  # this layer has its own entry (or whiteout) there
            if errno != ENOENT:
                return False
        v = self._below_name(<_BelowDir>e, pparent, pbase)
        if v == -2:
            return False
        if v == -1:
            return True
        f = <int>(v >> 2)
        lfd = self._plain_dir(<int>self.lower_fds[f], pparent)
        if lfd < 0:
            return False
        r = fstatat(lfd, pbase, &st, AT_SYMLINK_NOFOLLOW)
        close(lfd)
        if r < 0:
            return False
        if st.st_ino != self.up_st.st_ino or st.st_dev != self.up_st.st_dev:
            return True  # a layer in between replaced it
        fd = self._up_dirs_fast(pparent, comps, have, name)
        try:
            if linkat(tfd, tbase, fd, pbase, 0) < 0:
                self._oserror("copy up hardlink of", name)
        finally:
            close(fd)
        return True

    cdef bint _mknod(self, int pfd, bytes base, bytes name, Kind kind, int64_t major, int64_t minor) except -1:
        """A device node or fifo; False if not made (a device without root)."""
        cdef mode_t fmt = S_IFIFO
        cdef const char *cbase = base
        cdef bint whole = not self.cur_xattrs
        cdef int r, e, step = SC_OK
        cdef dev_t dev = makedev(<unsigned>major, <unsigned>minor)
        if kind == K_CHR or kind == K_BLK:
            if not self.is_root:
                self.skipped.append(f"{_show(name)}: device node not created (needs root)")
                return False
            if major >= 1 << 12 or minor >= 1 << 20:
                # what Linux's dev_t holds (glibc's mknod says only EINVAL); the tar header's
                # fields go up to 2^32 and so does the check when the header is read
                raise _errors.UnsupportedEntryError(
                    f"entry {_show(name)}: device number {major}:{minor} does not fit Linux's "
                    "(major below 4096, minor below 1048576)")
            fmt = S_IFCHR if kind == K_CHR else S_IFBLK
        with nogil:  # the common case: node, owner, times and mode in one block without the GIL
            r = mknodat(pfd, cbase, fmt | <mode_t>self.cur_mode, dev)
            e = errno
            if r == 0 and whole:
                step = self._node_meta(pfd, cbase)
                e = errno
        if r == 0 and whole:
            self.nogil_entries += 1
            if step != SC_OK:
                self._step_error(step, e, name)
            return True
        if r < 0:
            if e != EEXIST:
                lamina_set_errno(e)
                self._oserror("mknod", name)
            self._remove(pfd, base, name)
            if mknodat(pfd, base, fmt | <mode_t>self.cur_mode, makedev(<unsigned>major, <unsigned>minor)) < 0:
                self._oserror("mknod", name)
        self._metadata_at(pfd, base, name)
        # mknod applies the umask, and chown may clear setuid bits: chmod last (by _chmod_at: the
        # node was just made, but another user may have swapped it for a symlink since)
        if _chmod_at(pfd, base, <mode_t>self.cur_mode) < 0:
            self._oserror("chmod", name)
        return True

    cdef int _node_meta(self, int pfd, const char *base) noexcept nogil:
        """What _mknod does after mknodat for an entry without xattrs (owner as _metadata_at
        sets it, times, then the mode), without the GIL: SC_OK, or the failed step."""
        cdef timespec ts[2]
        if self.is_root and fchownat(pfd, base, <uid_t>self.cur_uid, <gid_t>self.cur_gid, AT_SYMLINK_NOFOLLOW) < 0:
            return SC_CHOWN
        self._entry_times(ts)
        if utimensat(pfd, base, ts, AT_SYMLINK_NOFOLLOW) < 0:
            return SC_TIMES
        if _chmod_at(pfd, base, <mode_t>self.cur_mode) < 0:
            return SC_CHMOD
        return SC_OK

    cdef _set_xattrs(self, int fd, bytes lpath, bytes name):
        cdef int rc
        # the ACLs last: an access ACL sets the owner's bits (user::r--), and without root
        # user.* xattrs need the owner's write
        for k, v in sorted(self.cur_xattrs.items(), key=_acl_last):
            if k == ACL_DEFAULT:
                self.default_acls = True
            if fd >= 0:
                rc = fsetxattr(fd, <bytes>k, <const char *>(<bytes>v), len(v), 0)
            else:
                rc = lsetxattr(lpath, <bytes>k, <const char *>(<bytes>v), len(v), 0)
            if rc < 0:
                if self._xattr_refused(name, k, errno):
                    continue
                e = errno
                if e == _errno.ENOSPC or e == _errno.E2BIG:
                    # ext4 keeps an inode's xattrs in one block: "No space left" with the disk
                    # half empty sent users to free space and fail again
                    size = sum(len(x) + len(y) for x, y in self.cur_xattrs.items())
                    raise _errors.ExtractError(
                        f"entry {_show(name)}: set xattr {_show(k)} failed: {os.strerror(e)} (its "
                        f"{len(self.cur_xattrs)} xattrs hold {size} bytes: more than this filesystem keeps "
                        f"on one inode, or it is full)", errno=e)
                self._oserror(f"set xattr {_show(k)}", name)

    cdef bint _xattr_refused(self, object name, object k, int e) except -1:
        """An xattr the kernel will not set here (trusted.* without root, user.* on a symlink,
        a filesystem without xattrs): reported in ``skipped``, the layer goes on."""
        if e != EOPNOTSUPP and e != EPERM:
            return False
        self.skipped.append(f"{_show(name)}: xattr {_show(k)} not set ({os.strerror(e)})")
        return True

    # ------------------------------------------------------------ whiteouts

    cdef void _scan_hides(self, set paths, bytes path):
        """A scan: this layer hides ``path`` (scan_at) or what is under it (scan_below)."""
        if self.scan_overflow:
            return
        paths.add(path)
        self._scan_check_max()

    cdef void _scan_dirs(self, bytes path, Py_ssize_t slash, bint is_dir):
        """A scan: the directories an entry of the layer lists or implies (``path`` and its
        ancestors), which a whiteout later in the layer does not remove (see _whiteout)."""
        if self.scan_overflow:
            return
        if not is_dir:
            if slash <= 0:
                return
            path = path[:slash]
        while path not in self.scan_dirs:  # an ancestor already there has its own ancestors there
            self.scan_dirs.add(path)
            slash = path.rfind(b"/")
            self.scan_dir_parents.add(path[:slash] if slash > 0 else b"")
            if slash <= 0:
                break
            path = path[:slash]
        self._scan_check_max()

    cdef void _scan_check_max(self):
        # the directories count too: a layer of millions of them must not hold them all
        if self.scan_max >= 0 and len(self.scan_at) + len(self.scan_below) + len(self.scan_dirs) > self.scan_max:
            self.scan_overflow = True
            self.scan_at = set()
            self.scan_below = set()
            self.scan_dirs = set()
            self.scan_dir_parents = set()

    cdef _forget_hidden(self, bytes target, bint itself):
        """A whiteout (``itself``) or an opaque marker removes what the layers below left at
        ``target``: a file they had skipped as hidden is then gone for a later hardlink, as it
        would be, had it been written.  What this layer skipped stays (a whiteout spares its own
        layer's entries).

        The files skipped below are looked up in a sorted list, each range dropped once looked
        at: a scan of every skipped path per whiteout made a layer of 16k whiteouts over 16k
        skipped files cost 4 s of CPU, and 1M whiteouts over the 64k paths upper layers may hide
        would have taken hours.  A path this layer skips again is its own from then on, so the
        list (only ever for this layer's whiteouts) never needs it back."""
        cdef Py_ssize_t i, j
        if self.lower_hidden is None:
            self.lower_hidden = sorted(p for p in self.hidden_files if p not in self.own_hidden)
        lst = self.lower_hidden
        if itself:
            i = _bisect.bisect_left(lst, target)
            if i < len(lst) and lst[i] == target:
                self.hidden_examined += 1
                if target not in self.own_hidden:
                    self.hidden_files.discard(target)
                del lst[i]
        if target:
            # the paths under target/ sort from target + "/" up to (not with) target + "0"
            i = _bisect.bisect_left(lst, target + b"/")
            j = _bisect.bisect_left(lst, target + b"0", i)
        else:
            i, j = 0, len(lst)
        if i == j:
            return
        self.hidden_examined += j - i
        for p in lst[i:j]:
            if p not in self.own_hidden:
                self.hidden_files.discard(p)
        del lst[i:j]

    cdef _forget_hidden_through(self, bytes parent, bytes hidden, object name):
        """A whiteout (of ``hidden``) or an opaque marker (``hidden`` empty) in a directory
        reached through a symlink (``l -> b``, then ``l/.wh.a``) acts where the link leads: the
        files skipped there are gone too, for a later hardlink (skipped or written) as for one
        on the paths that write every entry.  Where the link leads nowhere on disk (to a
        directory skipped as hidden, say), what it removes is unknown here: the plain way."""
        cdef int fd
        if self.overlay or not parent or self._no_symlinks_to(parent):
            return
        fd = self._open_in_root(parent)
        if fd < 0:
            raise HiddenLinkTarget(f"entry {_show(name)}: a whiteout through {_show(parent)}, "
                                   f"which leads to no directory with files skipped as hidden")
        try:
            real = self._real_path(fd, parent)
        finally:
            close(fd)
        if real != parent:
            if hidden:
                self._forget_hidden(real + b"/" + hidden if real else hidden, True)
            else:
                self._forget_hidden(real, False)

    cdef _whiteout(self, bytes path, Py_ssize_t slash, bytes base, bytes name):
        cdef int pfd
        cdef bint found
        cdef stat st
        cdef timespec ts[2]
        parent = path[:slash] if slash > 0 else b""
        if base == WH_OPAQUE:
            if self.wh_pending and self._touches_pending(parent):
                # it clears what the layer left in its directory: the whiteouts held there first
                self._load_lowers(f"entry {_show(name)}: an opaque marker over whiteouts of this layer")
            if self.early_pending:
                # what a marker does depends on the implied directories' metadata, as the
                # layers below give it: settled now, as the copy-up would have had it by then
                self._load_lowers(f"entry {_show(name)}: an opaque marker, after directories this layer implies")
            if self.scan_only:
                # A directory the layer implied in it before the marker takes its metadata from
                # below, where the marker hides it: no skipping (the marker applies as it is read)
                if parent not in self.scan_dir_parents:
                    self._scan_hides(self.scan_below, parent)
                return
            if self.hidden_files:
                self._forget_hidden(parent, False)
                self._forget_hidden_through(parent, b"", name)
            self._opaque(parent, name)
            return
        hidden = base[4:]
        if hidden.startswith(WH_PREFIX):
            # other .wh..wh.* names are AUFS bookkeeping (hardlink dirs), not whiteouts
            self.skipped.append(f"{_show(name)}: AUFS metadata entry ignored")
            return
        if hidden in (b"", b".", b".."):
            raise _errors.InvalidWhiteoutError(
                f"entry {_show(name)}: whiteout does not name an entry in its directory")
        self.whiteouts += 1
        target = parent + b"/" + hidden if parent else hidden
        if self.unmade_devices:
            self.unmade_devices.discard(target)
        if self.scan_only:
            # a directory this layer listed or implied before its whiteout stays, with what the layer
            # put in it (see below): the whiteout hides only what is below it, as an opaque marker,
            # and nothing if the layer implied a directory in it (as for the marker above)
            if target not in self.scan_dir_parents:
                self._scan_hides(self.scan_below if target in self.scan_dirs else self.scan_at, target)
            return
        if self.hidden_files:
            self._forget_hidden(target, True)
            self._forget_hidden_through(parent, hidden, name)
        if self.overlay:
            if self.wh_pending and self._touches_pending(target):
                self._load_lowers(f"entry {_show(name)}: a whiteout where one of this layer waits for the layers below")
            elif self._defer_whiteout(parent, hidden, target, name):
                return
            if self.early_pending:
                # what a whiteout does depends on the implied directories' metadata, as the
                # layers below give it: settled now, as the copy-up would have had it by then
                self._load_lowers(f"entry {_show(name)}: a whiteout, after directories this layer implies")
            self._overlay_whiteout(path, slash, parent, hidden, target, name, False)
            return
        if self._created_path(target, parent, hidden):
            # a dir of this layer loses only what is below it; anything else of the layer stays.
            # ``created`` is lexical: a layer that wrote ``a/x`` through a lower symlink ``a``
            # did not write ``a``, and its whiteout removes that symlink (as the mount shows).
            # absent or under a non-directory now (-1): nothing below shows there; a symlink
            # loop on the way fails as it does for any other entry, and on the overlay path
            pfd = self._resolve_dir(parent, False, name)
            if pfd >= 0:
                try:
                    if fstatat(pfd, hidden, &st, AT_SYMLINK_NOFOLLOW) == 0:
                        if S_ISDIR(st.st_mode):
                            self._opaque(target, name)
                        elif not self._written_here(pfd, hidden, &st):
                            self._keep_times(pfd, parent)
                            if not self.is_root:
                                self._open_up(pfd, parent)
                            self._remove(pfd, hidden, name)
                finally:
                    close(pfd)
            return
        pfd = self._whiteout_nogil(parent, hidden, name, &st)
        if pfd == -2:
            return
        if pfd >= 0:
            found = True  # a directory, its parent resolved and its lstat in st
        else:
            pfd = self._resolve_dir(parent, False, name)
            if pfd < 0:
                return  # nothing below to hide
            found = fstatat(pfd, hidden, &st, AT_SYMLINK_NOFOLLOW) == 0
        try:
            if found:
                if not self._written_here(pfd, hidden, &st):
                    self._keep_times(pfd, parent)
                    if not self.is_root:
                        self._open_up(pfd, parent)
                    self._remove(pfd, hidden, name)
                elif S_ISDIR(st.st_mode):
                    self._opaque(target, name)
        finally:
            close(pfd)

    cdef _overlay_whiteout(self, bytes path, Py_ssize_t slash, bytes parent, bytes hidden, bytes target,
                           object name, bint held):
        """A whiteout of the overlay format, the layers below known.  ``held``: one that
        _defer_whiteout held, applied now (_load_lowers): its parent is resolved on its own,
        not through the cached parent of the entry that is being applied meanwhile."""
        cdef int pfd
        cdef stat st
        cdef timespec ts[2]
        if self._overlay_whiteout_nogil(parent, hidden, target, name):
            return
        if not self._visible_below(parent, hidden, name):
            # nothing to hide; and a whiteout in a directory that no lower layer
            # has would show up in the mount's readdir (overlayfs filters them
            # only in merged directories)
            return
        if held:
            pfd = self._resolve_dir(parent, True, name)
            phys = self.last_phys + b"/" + hidden if self.last_phys else hidden
        else:
            pfd = self._parent(path, slash, name)
            phys = self.cache_phys + b"/" + hidden if self.cache_phys else hidden
        try:
            if self._provided(phys):
                # a whiteout only hides lower layers: a directory of this layer keeps
                # what the layer put in it and shows nothing from below (as umoci)
                if fstatat(pfd, hidden, &st, AT_SYMLINK_NOFOLLOW) == 0 and S_ISDIR(st.st_mode):
                    self._opaque(target, name)
                return
            if fstatat(pfd, hidden, &st, AT_SYMLINK_NOFOLLOW) == 0:
                if S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    return
                self._remove(pfd, hidden, name)  # only copied up (or whited out inside) by this layer
            # Linux >= 5.8 lets unprivileged users make 0/0 whiteout nodes
            if mknodat(pfd, hidden, S_IFCHR, makedev(0, 0)) < 0:
                if errno == EPERM:
                    raise _errors.ExtractError(
                        f"entry {_show(name)}: this kernel refuses overlay whiteout nodes (0/0) to "
                        "unprivileged users (Linux >= 5.8 allows them); use format='dir' or run as root")
                self._oserror("create whiteout", name)
            # the name may be a lower symlink the cached parent was reached through (a whiteout
            # b/.wh.b with b -> .): later entries must resolve it as the mount will, hidden
            self._invalidate()
            # the .wh. entry's times, not the extraction's: the same layer gives the same snapshot
            self._entry_times(ts)
            if utimensat(pfd, hidden, ts, AT_SYMLINK_NOFOLLOW) < 0:
                self._oserror("set times of", name)
        finally:
            if held:
                close(pfd)

    cdef bint _defer_whiteout(self, bytes parent, bytes hidden, bytes target, object name) except -1:
        """Hold a whiteout until the layers below are known (early_dirs), so that the layer goes
        on beside them: whether it is made depends on them alone (does one show ``target``?)
        when this layer has its parent as a directory of its own, reached without a symlink (so
        the mount resolves the parent there whatever is below), and has nothing at ``target``.
        A later entry at, under or above ``target`` (_touches_pending), or that needs the
        layers below, applies it first (_load_lowers), so every entry still meets the tree
        the whiteouts before it made; the rest cannot tell.  An upper layer meeting
        ``rm -rf /var/lib/apt/lists/*`` early waited there for the whole layer below."""
        cdef int fd, r, e
        cdef stat st
        cdef Py_ssize_t i
        if (not self.early_dirs or not self.defer_lowers or len(self.wh_pending) >= WH_PENDING_MAX
                or self._provided(target)):
            return False
        if self.wh_dir_fd >= 0 and parent == self.wh_dir:
            fd = self.wh_dir_fd
        else:
            fd = self._plain_dir(self.rootfd, parent)
            if fd < 0:
                return False
        r = fstatat(fd, hidden, &st, AT_SYMLINK_NOFOLLOW)
        e = errno
        if fd != self.wh_dir_fd:
            if r == 0 or e != ENOENT:
                close(fd)
                return False
            # kept open only once a whiteout held there puts its path on wh_pending_above
            self._close_wh_dir()
            self.wh_dir_fd, self.wh_dir = fd, parent
        elif r == 0 or e != ENOENT:
            return False
        self.wh_pending.append((parent, hidden, target, name, self.cur_sec, self.cur_nsec, self.entries))
        self.wh_pending_at.add(target)
        above = self.wh_pending_above
        while parent and parent not in above:
            above.add(parent)
            i = parent.rfind(b"/")
            parent = parent[:i] if i > 0 else b""
        return True

    cdef void _close_wh_dir(self):
        if self.wh_dir_fd >= 0:
            close(self.wh_dir_fd)
        self.wh_dir_fd, self.wh_dir = -1, None

    cdef bint _link_touches_pending(self, bytes link):
        try:
            target = self._normalize(link)
        except Exception:
            return True  # the entry fails as it would have: the whiteouts before it first
        return self._touches_pending(target)

    cdef bint _touches_pending(self, bytes path):
        """Is ``path`` a held whiteout's target, above one (the root is above all), or under one?"""
        cdef Py_ssize_t i
        if not path or path in self.wh_pending_at or path in self.wh_pending_above:
            return True
        i = path.rfind(b"/")
        while i > 0:
            if path[:i] in self.wh_pending_at:
                return True
            i = path.rfind(b"/", 0, i)
        return False

    cdef _apply_pending_whiteouts(self):
        """The whiteouts _defer_whiteout held, in layer order, each with its own entry's times and
        number (a run of them in one directory still shares its walk: _overlay_whiteout_nogil)."""
        cdef int64_t sec = self.cur_sec, nsec = self.cur_nsec, entries = self.entries
        pending, self.wh_pending = self.wh_pending, []
        self.wh_pending_at = set()
        self.wh_pending_above = set()
        self._close_wh_dir()
        self._drop_whiteout_run()
        try:
            for parent, hidden, target, name, wsec, wnsec, number in pending:
                self.cur_sec, self.cur_nsec, self.entries = wsec, wnsec, number
                self._overlay_whiteout(b"", -1, parent, hidden, target, name, True)
        finally:
            self.cur_sec, self.cur_nsec, self.entries = sec, nsec, entries
            self._drop_whiteout_run()
            self._invalidate()

    cdef int _whiteout_nogil(self, bytes parent, bytes hidden, object name, stat *st) except -3:
        """The common whiteout of the dir format, of a non-directory from a layer below
        (or of nothing), in one block without the GIL: what the general path below does
        (resolve the parent, keep its times, open it up, remove), without its stats
        that change nothing.  Whether this layer wrote the name is known beforehand
        when no non-directory it wrote has that name (``_maybe_written``).  -2: done.
        Else the general path decides, nothing changed: from scratch (-1: errors, no
        openat2...), or with the fd returned, of the parent, when the name is a directory
        (lstat in ``st``: which may be this layer's; removed with all it holds)."""
        cdef int pfd = self.rootfd, r = -1, e = 0, sr = -1, root = self.rootfd
        cdef bint own = len(parent) > 0, need_times, is_root = self.is_root, opened = False
        cdef bint found = False, slow = False, held = False
        cdef uid_t euid = self.euid
        cdef stat pst
        cdef const char *cparent = parent
        cdef const char *chidden = hidden
        if self.overlay or not self.use_openat2 or self._maybe_written(hidden):
            return -1
        need_times = not self.fixups.has_time(parent)
        with nogil:
            if own:
                pfd = lamina_openat2(root, cparent, O_RDONLY | O_DIRECTORY | O_CLOEXEC,
                                     LAMINA_RESOLVE_IN_ROOT | LAMINA_RESOLVE_NO_MAGICLINKS)
                e = errno
                held = pfd >= 0
            if pfd >= 0 and fstatat(pfd, chidden, st, AT_SYMLINK_NOFOLLOW) == 0:
                found = True
                if S_ISDIR(st.st_mode):
                    slow = True
                else:
                    if need_times or not is_root:
                        sr = fstat(pfd, &pst)  # _keep_times, _open_up
                    if (not is_root and sr == 0 and pst.st_uid == euid and (pst.st_mode & 0o700) != 0o700
                            and fchmod(pfd, (pst.st_mode & 0o7777) | 0o700) == 0):
                        opened = True
                    r = unlinkat(pfd, chidden, 0)
                    if r < 0 and errno == ENOENT:
                        r = 0
            if held and not slow and not (found and r < 0) and sr != 0:
                close(pfd)  # the common case, still without the GIL: nothing below needs the fd
                held = False
        if pfd < 0:
            # the parent is absent, or under a non-directory: nothing to hide (as _resolve_dir
            # says); else the general path raises or walks by hand
            if e == ENOENT or e == ENOTDIR:
                self.nogil_entries += 1
                return -2
            return -1
        if slow:
            return pfd if own else -1  # the root is the caller's to dup
        try:
            if not found:
                self.nogil_entries += 1
                return -2
            if sr == 0:
                # where the parent really is, as _keep_times: reached through a symlink the layer
                # then removes (a/.wh.f, .wh.a with a -> b), a record under the name a is lost
                # with it, and b keeps the time of the run
                real = self._real_path(pfd, parent) if own else parent
                if need_times:
                    self.fixups.time(real, &pst)
                if opened:
                    self.fixups.mode(real, &pst)
            if r < 0:  # the general removal, its retries and its error
                self._remove(pfd, hidden, name)
                return -2
            if S_ISLNK(st.st_mode):
                self._invalidate()  # as _remove: the cached parent may have been reached through it
            self.nogil_entries += 1
            return -2
        finally:
            if held:
                close(pfd)

    cdef bint _overlay_whiteout_nogil(self, bytes parent, bytes hidden, bytes target, object name) except -1:
        """The common whiteout of the overlay format in one block without the GIL: what the
        general path below does (is the name visible below?  then a 0/0 node with the entry's
        times in this layer's parent), when the parent is reached without a symlink in every
        layer that decides one of its components, this layer has it already (no copy-up), and
        this layer did not write the name itself.  True: done.  False: nothing changed, the
        general path decides (and words any error of the node's creation).

        The parent's walk through every layer is kept for the next entry when that is a
        whiteout in the same directory (a run, as ``rm -rf dir/*`` leaves): such a whiteout
        changes no component of the parent, and nothing else happened in between.  Walking it
        again for each made 50k whiteouts over 100 layers take 28 s, most of it opening the
        parent in every layer."""
        cdef int nl = len(self.lower_fds), i, ufd = -1, res, e = 0, step = SC_OK, root = self.rootfd
        cdef int *lf = self.wh_lf
        cdef bint owned = False, made = False, listed
        cdef const char *cparent = parent
        cdef const char *chidden = hidden
        cdef Py_ssize_t n = len(parent)
        cdef stat st
        cdef timespec ts[2]
        if self.defer_lowers or nl > NOGIL_LOWERS or self._provided(target):
            return False
        if self.wh_parent is None or self.wh_seq != self.entries - 1 or self.wh_parent != parent:
            self._drop_whiteout_run()
            if nl >= NAMES_BELOW_MIN_LOWERS and self._absent_below(parent):
                self.nogil_entries += 1
                return True  # nothing below has the directory: nothing to hide
            for i in range(nl):
                lf[i] = <int>self.lower_fds[i]
            with nogil:
                res = _union_parent(root, lf, nl, cparent, n, &ufd, &owned)
            if res < 0:
                return False
            self.wh_parent, self.wh_found, self.wh_ufd, self.wh_owned, self.wh_nl = parent, res, ufd, owned, nl
            self.wh_run, self.wh_list_at = 0, WH_LIST_RUN
        ufd = self.wh_ufd
        self.wh_run += 1
        if self.wh_run == self.wh_list_at and self.wh_found and self.wh_below is None:
            # a long run: one listing of the directory in each layer below instead of a stat in
            # each per whiteout, unless that listing is much longer than the run (tried again
            # when the run is twice as long, so listing never costs more than the run did)
            self.wh_below = self._list_below(min(WH_LIST_NAMES * self.wh_run, WH_LIST_MAX))
            self.wh_list_at *= 2
        listed = self.wh_below is not None
        if listed:
            res = 1 if self.wh_below.get(hidden, False) else 0
        with nogil:
            if not listed:
                res = 0 if self.wh_found == 0 else _below_shows(lf, nl, chidden)
            if res == 1:
                if ufd < 0:
                    res = -1  # only the layers below have the parent: copied up on the general path
                elif fstatat(ufd, chidden, &st, AT_SYMLINK_NOFOLLOW) == 0:
                    if not (S_ISCHR(st.st_mode) and st.st_rdev == 0):
                        res = -1  # a copy-up of this layer's to remove first
                elif mknodat(ufd, chidden, S_IFCHR, makedev(0, 0)) < 0:
                    res = -1  # nothing made: the general path tries again and says why it fails
                else:
                    made = True
                    self._entry_times(ts)
                    if utimensat(ufd, chidden, ts, AT_SYMLINK_NOFOLLOW) < 0:
                        step = SC_TIMES
                        e = errno
        if res < 0:
            return False  # the general path may change the parent: the run ends (wh_seq)
        self.wh_seq = self.entries
        if made:
            # the name may be a lower symlink the cached parent was reached through (see below)
            self._invalidate()
            if step != SC_OK:
                self._step_error(step, e, name)
        self.nogil_entries += 1
        return True

    cdef void _drop_whiteout_run(self) noexcept:
        """Close the parent fds a run of whiteouts kept (_overlay_whiteout_nogil)."""
        cdef int ufd = self.wh_ufd
        if self.wh_parent is not None:
            _union_release(self.wh_lf, self.wh_nl, &ufd, self.wh_owned)
        self.wh_parent = None
        self.wh_below = None
        self.wh_ufd = -1
        self.wh_owned = False
        self.wh_nl = 0

    cdef bint _absent_below(self, bytes parent) except -1:
        """True if no layer below has anything at ``parent`` (so none shows a name in it) and
        this layer reaches ``parent`` without a symlink: a whiteout there hides nothing.
        Whiteouts in as many directories as there are, over 400 layers, each walked its
        directory through every layer (5k of them took 8 s)."""
        cdef int fd
        if not parent:
            return False
        fd = self._plain_dir(self.rootfd, parent)
        if fd < 0:
            return False
        close(fd)
        return self._none_below(parent)

    cdef bint _none_below(self, bytes path) except -1:
        """True if no layer below has ``path`` (nor so, anything under it), told from the names
        the layers below have in each of its ancestors (_names_below), each directory listed
        once.  False when unsure (a symlink on the way in some layer, too many names to keep):
        the walk through every layer decides."""
        cdef Py_ssize_t start = 0, end
        while True:
            names = self._names_below(path[:start - 1] if start else b"")
            if names is None:
                return False
            end = path.find(b"/", start)
            if (path[start:] if end < 0 else path[start:end]) not in names:
                return True
            if end < 0:
                return False
            start = end + 1

    cdef object _names_below(self, bytes directory):
        """The frozenset of names any layer below has in ``directory`` (reached there without a
        symlink; a layer where something else is on the way has none), or None if a layer has a
        symlink on the way, or past NAMES_BELOW_MAX names or NAMES_BELOW_DIRS directories."""
        cdef int fd
        try:
            return self.names_below[directory]
        except KeyError:
            pass
        if len(self.names_below) >= NAMES_BELOW_DIRS or self.names_below_left <= 0:
            return None
        names = set()
        result = None
        for lower in self.lower_fds:
            fd = self._plain_dir(<int>lower, directory)
            if fd < 0:
                if errno == ENOENT or errno == ENOTDIR:
                    continue  # not there, or a file on the way: nothing of it below
                break
            entries = _dir_entries(fd, -1)
            close(fd)
            if entries is None:
                break
            names.update([e[0] for e in entries])
            if len(names) > self.names_below_left:
                break
        else:
            result = frozenset(names)
            self.names_below_left -= len(result)
        self.names_below[directory] = result  # unsure is kept too: asking again would not change it
        return result

    cdef dict _list_below(self, int64_t budget):
        """{name: shown} of the whiteout run's directory in the layers below (the topmost layer
        that has a name decides: a 0/0 node there hides it), or None past ``budget`` names or
        on any error (the run goes on with a stat per whiteout)."""
        cdef stat st
        cdef int i
        names = {}
        for i in range(self.wh_nl):
            if self.wh_lf[i] < 0:
                continue
            entries = _dir_entries(self.wh_lf[i], budget)
            if entries is None:
                return None
            budget -= len(entries)
            for nm, dtype in entries:
                if nm in names:
                    continue
                if dtype == DT_CHR or dtype == DT_UNKNOWN:
                    if fstatat(self.wh_lf[i], <bytes>nm, &st, AT_SYMLINK_NOFOLLOW) < 0:
                        return None
                    names[nm] = not (S_ISCHR(st.st_mode) and st.st_rdev == 0)
                else:
                    names[nm] = True
        return names

    cdef int _opaque_nogil(self, bytes parent, object name) except -3:
        """An opaque marker in one block without the GIL, when the directory it marks holds
        nothing yet (the overlay format's common case: the marker follows the directory's
        entry; in the dir format, a directory new to the image): what ``_opaque`` does then
        (resolve it; overlay: mark it opaque; dir: keep its times) with no clearing to do.
        -2: done.  -1: nothing done, the general path from scratch (the root, a marker
        repeated in the layer, a parent the overlay format reaches through a symlink or
        only below, an error...).  Else the directory's fd, resolved as the general path
        resolves it (overlay: ``last_phys`` is its path): it holds something, the general
        path goes on with it."""
        cdef int fd = -1, root = self.rootfd, e = 0, sr = -1, empty = -1, step = SC_OK
        cdef bint overlay = self.overlay
        cdef int how = LAMINA_RESOLVE_IN_ROOT | LAMINA_RESOLVE_NO_MAGICLINKS
        cdef const char *cparent = parent
        cdef const char *key = "trusted.overlay.opaque" if self.is_root else "user.overlay.opaque"
        cdef stat st
        if not self.use_openat2 or not parent or parent in self.cleared_paths:
            return -1
        if overlay:
            how |= LAMINA_RESOLVE_NO_SYMLINKS  # as _plain_dir: this layer's own directories all the way
        with nogil:
            fd = lamina_openat2(root, cparent, O_RDONLY | O_DIRECTORY | O_CLOEXEC, how)
            e = errno
            if fd >= 0:
                sr = fstat(fd, &st)
                if sr == 0:
                    empty = _dir_empty(fd)
                if empty == 1 and overlay:
                    if fsetxattr(fd, key, "y", 1, 0) < 0:
                        step = SC_OPAQUE
                        e = errno
                    close(fd)
        if fd < 0:
            if not overlay and (e == ENOENT or e == ENOTDIR):
                self.nogil_entries += 1  # absent, or under a non-directory: nothing to hide
                return -2
            return -1
        if overlay:
            self.last_phys = parent
        if empty != 1:
            return fd
        self.cleared.add((parent, st.st_dev, st.st_ino))
        self.cleared_paths.add(parent)
        if step != SC_OK:
            self._step_error(step, e, name)
        self._invalidate()
        if not overlay:  # _keep_times, where the directory really is (see _whiteout_nogil)
            try:
                self.fixups.time(self._real_path(fd, parent), &st)
            finally:
                close(fd)
        self.nogil_entries += 1
        return -2

    cdef bint _cleared_before(self, int fd, bytes path) except -1:
        """True if an opaque marker (or a whiteout of a directory the layer wrote into) of this
        layer already cleared this directory: all it holds since is the layer's, so clearing it
        again changes nothing.  Without this, a layer repeating the marker after each of its
        entries in one directory cost time quadratic in its size.  The path is part of the key:
        an inode number freed by a removal may come back as another directory."""
        cdef stat st
        if fstat(fd, &st) < 0:
            return False
        key = (path, st.st_dev, st.st_ino)
        if key in self.cleared:
            return True
        self.cleared.add(key)
        self.cleared_paths.add(path)
        return False

    cdef _opaque(self, bytes parent, bytes name):
        cdef int fd
        # a marker for a directory the image does not have (or not as a
        # directory) has nothing to hide: ignored in both formats
        fd = self._opaque_nogil(parent, name)
        if fd == -2:
            return
        if self.overlay:
            if fd == -1:
                fd = self._resolve_dir(parent, False, name)
            if fd >= 0:
                try:
                    if self._cleared_before(fd, self.last_phys):
                        return
                    self._set_opaque(fd, name)
                    self._invalidate()
                    self._clear_lower(fd, self.last_phys, name)
                    if not self.last_phys:
                        self._whiteout_root_below(fd, name)
                finally:
                    close(fd)
            return
        if fd == -1:
            fd = self._resolve_dir(parent, False, name)
        if fd < 0:
            return
        # the marker alone does not make the dir this layer's: a whiteout of it still
        # removes it (as umoci does); the overlay format agrees (see _provide)
        self._invalidate()
        self._keep_times(fd, parent)
        try:
            if not self._cleared_before(fd, parent):
                self._clear_lower(fd, parent, name)
        finally:
            close(fd)

    cdef bint _created_here(self, int dfd, bytes child):
        cdef stat st
        return fstatat(dfd, child, &st, AT_SYMLINK_NOFOLLOW) == 0 and self._written_here(dfd, child, &st)

    cdef _whiteout_root_below(self, int rootfd, bytes name):
        """An opaque root (a marker reached through a symlink to the root):
        overlayfs always merges the layers' roots, whatever their xattrs, so
        every name the layers below show there gets a whiteout instead, and a
        directory of this layer's own there turns opaque (the mount would merge
        it with the one below, which the opaque root hides)."""
        cdef stat st
        cdef timespec ts[2]
        cdef int sub
        if self.defer_lowers:
            self._load_lowers(f"entry {_show(name)}: an opaque root hides the layers below")
        self._entry_times(ts)
        seen = set()
        for lfd in self.lower_fds:
            for n in self._listdir(<int>lfd, name):
                if n in seen:
                    continue
                seen.add(n)
                if fstatat(<int>lfd, <bytes>n, &st, AT_SYMLINK_NOFOLLOW) < 0:
                    continue
                if S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    continue  # already hidden below
                if self._provided(<bytes>n):
                    if S_ISDIR(st.st_mode):
                        sub = openat(rootfd, <bytes>n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                        if sub >= 0:  # else not a directory here: it merges with nothing
                            try:
                                self._set_opaque(sub, name)
                            finally:
                                close(sub)
                    continue
                if fstatat(rootfd, <bytes>n, &st, AT_SYMLINK_NOFOLLOW) == 0:
                    continue
                if mknodat(rootfd, <bytes>n, S_IFCHR, makedev(0, 0)) < 0:
                    self._oserror("create whiteout", name)
                utimensat(rootfd, <bytes>n, ts, AT_SYMLINK_NOFOLLOW)

    cdef _clear_lower(self, int dfd, bytes dpath, bytes name):
        """Remove everything under ``dpath`` that this layer did not provide (an
        opaque marker, or a whiteout of a directory the layer wrote into).  In the
        overlay format ``dpath`` is where the directory really is, and what the
        layer only copied up or whited out there goes: it hides nothing now, and a
        whiteout in a directory that merges with nothing shows in the mount's readdir."""
        cdef int sub
        cdef stat st
        todo = [b""]   # directories below dpath still to clear, relative to it
        while todo:
            rel = todo.pop()
            sub = _walk_plain(dfd, rel) if rel else _dup_checked(dfd)
            if sub < 0:
                if errno == ENOENT or errno == ENOTDIR or errno == ELOOP:
                    continue  # replaced meanwhile: nothing of ours is there
                # (EMFILE, EIO...: read as "replaced", the lower entries stayed under the marker)
                self._oserror(f"open {_show(dpath + b'/' + rel if dpath else rel)} to clear it", name)
            here = dpath + b"/" + rel if dpath and rel else dpath or rel
            try:
                for child in self._listdir(sub, name):
                    crel = rel + b"/" + child if rel else child
                    cpath = dpath + b"/" + crel if dpath else crel
                    if fstatat(sub, <bytes>child, &st, AT_SYMLINK_NOFOLLOW) < 0:
                        continue  # gone meanwhile
                    # dir format: ``created`` is lexical, so it vouches only for directories; a
                    # lower symlink the layer wrote through is not the layer's (_written_here)
                    if (not self._provided(cpath) if self.overlay
                            else not self._written_here(sub, child, &st)
                            and not (S_ISDIR(st.st_mode) and self.created.has(cpath))):
                        # a directory below dpath the layer does not list keeps its lower time
                        # too, though what was below is gone from it (the caller keeps dpath's)
                        self._keep_times(sub, here)
                        if not self.is_root:
                            self._open_up(sub, here)
                        self._remove(sub, child, name)
                    elif S_ISDIR(st.st_mode):
                        todo.append(crel)
            finally:
                close(sub)

    # -------------------------------------------------------------- removal

    cdef list _listdir(self, int dfd, object name):
        cdef int fd = openat(dfd, b".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        cdef DIR *d
        cdef dirent *ent
        if fd < 0:
            self._oserror("open", name)
        d = fdopendir(fd)
        if d == NULL:
            close(fd)
            self._oserror("read directory", name)
        out = []
        while True:
            ent = readdir(d)
            if ent == NULL:
                break
            n = <bytes>ent.d_name
            if n != b"." and n != b"..":
                out.append(n)
        closedir(d)
        return out

    cdef _remove(self, int pfd, bytes base, object name):
        """Remove ``base`` under ``pfd`` whatever it is, a directory with all
        it holds (never following symlinks).  Removing a symlink invalidates the cached
        parent too: it may have been resolved through that very link (``b -> .``, then
        ``b/b/`` replaces ``b`` by a directory: ``b/a`` must land in the new ``b``)."""
        cdef stat st
        gone = None
        if fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 and (S_ISDIR(st.st_mode) or S_ISLNK(st.st_mode)):
            self._invalidate()
            if S_ISDIR(st.st_mode) and self.fixups.n:
                gone = []
        if _remove_at(pfd, base, gone) < 0:
            self._oserror("remove", name)
        if gone:
            self._forget_fixups(pfd, base, gone)

    cdef _forget_fixups(self, int pfd, bytes base, list gone):
        """The fixups of directories just removed: a directory the layer makes later at the
        same path (or reaches there through a new symlink) is another one, though the
        filesystem may give it the same inode number, so the inode check would pass."""
        parent = self._proc_rel(pfd) if self.root_real is not None else None
        if parent is None:
            return  # the inode checks still catch what is not on a reused inode
        top = parent + b"/" + base if parent else base
        for rel in gone:
            path = top + b"/" + rel if rel else top
            self.fixups.forget(path)

    cdef void _invalidate(self):
        # keep the fd open: the caller may still be using it as its parent
        self.cache_valid = False
        self.plain_parent = None
        self._drop_pars(0)  # nobody uses these: what they were reached by may be gone

    # ------------------------------------------------------------- finishing

    cdef int _open_last_nofollow(self, bytes path) except -2:
        """Directory ``path`` with its parent resolved in the root (symlinks
        re-rooted) but its last component never followed."""
        cdef int pfd, fd
        cdef Py_ssize_t slash = path.rfind(b"/")
        pfd = self._open_in_root(path[:slash]) if slash > 0 else dup(self.rootfd)
        if pfd < 0:
            return -1
        fd = openat(pfd, <bytes>path[slash + 1:], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        close(pfd)
        return fd

    cdef _fixup_dirs(self):
        """Directory modes and times, set once the layer is written, deepest
        first, through a stack of open parents so each costs one openat()."""
        cdef int fd, step, e
        cdef bint owned, check, same, has_mode, has_time
        cdef mode_t cmode
        cdef dev_t wdev = 0
        cdef unsigned long wino = 0
        cdef timespec ts[2]
        cdef stat st
        stack = _DirStack(self.rootfd)
        try:
            for skey, mode, sec, nsec, dev, ino, listed in self.fixups.resolved():
                path = (<bytes>skey).replace(b"\0", b"/")
                fd = stack.open(path)  # borrowed: the stack closes it
                owned = False
                if fd < 0:
                    e = errno
                    if e != ENOENT and e != ENOTDIR and e != ELOOP and e != ESTALE:
                        # (EMFILE, EIO: the directory kept the mode it was made with, exit 0)
                        raise OSError(e, f"cannot open {_show(path)} to set its mode and times: {os.strerror(e)}")
                    lamina_set_errno(e)
                    if self.overlay or (errno != ELOOP and errno != ENOTDIR):
                        continue  # removed or replaced by a non-directory later in the layer
                    if listed and self.root_real is not None:
                        # recorded where it really was (_real_path): a symlink on the way there
                        # now means the layer removed it, and what the path reaches through
                        # that symlink is another directory, maybe on the reused inode
                        continue
                    fd = self._open_last_nofollow(path)  # dir format: named through a symlinked parent
                    if fd < 0 and not listed and dev is not None:
                        # a parent opened up or touched, not an entry: its name was resolved
                        # following symlinks (ln/f with ln -> real), so is its fixup; the inode
                        # check below makes sure it is that directory still
                        fd = self._open_in_root(path)
                    if fd < 0:
                        continue  # replaced (by a symlink, a file) later in the layer
                    owned = True
                check = dev is not None
                if check:
                    wdev, wino = dev, ino
                has_mode = mode is not None
                cmode = <mode_t>mode if has_mode else 0
                has_time = sec is not None
                if has_time:
                    ts[0].tv_sec = sec
                    ts[0].tv_nsec = nsec
                    ts[1] = ts[0]
                with nogil:  # one block per directory, as for an entry
                    # not the directory the fixup was recorded for: the layer replaced it,
                    # or a directory above it, later on
                    same = not check or (fstat(fd, &st) == 0 and st.st_dev == wdev and st.st_ino == wino)
                    step = SC_OK
                    if same:
                        # a mode the directory has already (made with it, or a lower layer's)
                        # needs no chmod; with setuid/setgid/sticky it is always set, since
                        # a chmod may clear setgid, which a skipped one would keep
                        if (has_mode and not (check and (st.st_mode & 0o7777) == cmode and not (cmode & 0o7000))
                                and fchmod(fd, cmode) < 0):
                            step = SC_CHMOD
                        elif has_time and futimens(fd, ts) < 0:
                            step = SC_TIMES
                    e = errno
                    if owned:
                        close(fd)
                if step != SC_OK:
                    self._step_error(step, e, path)
        finally:
            stack.close()
            self.fixups.reset()

    cdef _oserror(self, str op, object name):
        e = errno
        raise _errors.ExtractError(f"entry {_show(name)}: {op} failed: {os.strerror(e)}", errno=e)
