"""File objects: regular files shared across snapshots by content (blake3) and inode metadata.

    objects/blake3/<2 hex>/<64 hex blake3>.<16 hex metadata key>   one object inode per (content, metadata)
    objects/stage/                                                 one link name at a time while a name is swapped
    snapshots/<chainID hex>/files.lz4                              the snapshot's file list (see FileList)
    snapshots/<chainID hex>/objects.lz4                            the objects it uses, 40 bytes each (system df)
    snapshots/<chainID hex>/hashed/<blake3>-<n>                    files the extractor hashed, until the pass

The pass runs when a snapshot is extracted, before it is synced and committed
(snapshots.ensure, ``dedup_snapshot(sync=...)``): duplicates are swapped for objects
before their data is written, and new objects are named only after the sync.
``Store.dedup`` runs it on snapshots committed without it (dedup switched on later).

An object *is* the inode of the snapshot files that share it: ``dedup_snapshot``
replaces each regular file of a snapshot by a hardlink to the object with the same
blake3 **and** the same inode metadata, so the snapshot reads exactly as the layer
wrote it (fsck's tree comparison cannot tell the difference).  The metadata that
must match is everything an inode carries for a tar entry: the full ``st_mode``
(type, permissions, setuid/setgid/sticky), uid, gid, mtime (ns) and every xattr
(name and value).  The object's name carries them as a 64-bit key (16 hex of blake3), which
is only where to look: before a file is linked to an object, its mode, owner, mtime, size and
xattrs are compared with the object's own (an image finding xattrs whose key is another image's
file's must not hand that file its xattrs).  atime and ctime are not: no layer format preserves ctime, and
atime is not part of an image (docker, containerd and umoci ignore it too).  This
is stricter than ostree, which hardlinks on (uid, gid, mode, xattrs) and zeroes
mtime in its checkouts: a lamina snapshot must keep the layer's mtimes.

When no object has the same metadata but one has the same content, the file is
reflinked from it (``FICLONE``; btrfs, XFS) so the data blocks are shared, and it
becomes the object for its own metadata.  Where reflinks are not supported the
private copy stays (it still becomes an object, for the next layer with the same
file and metadata).  Files with setuid/setgid bits or a ``security.capability``
xattr are never reflinked: the kernel strips those when a file is cloned into.

Objects are immutable once shared: nothing in lamina writes to a snapshot file
after extraction.  ``unpack --link`` and ``mount`` hand out these inodes
read-only; writing through them (as root, against the docs) changes every image
sharing the file, and ``fsck`` reports it (the object no longer hashes to its name).  Its
name no longer says its bytes then, so a file is linked to an object (by the extractor or
the pass) or reflinked from one only after their bytes compare equal: a read of the object,
never a write, and an image stored later never gets bytes its layer does not hold.

The blake3 of a file is computed by the extractor as it writes the file (the store asks for it
with ``hashed_dir``): each hashed file gets a second name ``hashed/<blake3>-<n>`` beside the
snapshot's ``fs/``.  That name keeps the inode alive, so no other file can take its inode
number: the pass matches tree entries to hashes by ``d_ino`` from the directory listing, no
read and no stat needed to identify them, and a new object simply takes over that name (one
``rename``).  Files without such a name (copied up from a lower layer, sparse, or hashed by
an older lamina) are read and hashed here.  A file whose object the store already has is
not even written: the extractor hashes a payload it holds whole before creating anything, and
names the file by a link to the object (``link_objects``, see Extractor), which on a disk
filesystem is far cheaper than creating an inode and freeing it again in the pass.  The
common case (a hashed file alone on its inode, no xattrs, no object yet) is done natively, a
directory at a time and without the GIL for its syscalls (``_objects.DirScan``,
``new_objects``, ``claim_objects``).

Small files are shared like big ones, on purpose: what a file costs the pass is its two name
operations (the extractor's link, then one rename), not its size, and a small file left out
would still need its ``hashed/`` name removed (the same cost) while keeping a block of its own
in every image that has it (measured on the bench image: 9.3k files, 4 syscalls each, about
0.25 s of CPU for the whole pass, a third of it the walk and the file list).

Every operation on a snapshot tree goes through directory fds anchored at the
snapshot root (``openat`` with ``O_NOFOLLOW`` per component); objects are linked
from an fd (``/proc/self/fd/N``), so the inode hashed is the inode shared.  A name
is swapped with ``rename(2)`` from ``objects/stage``, outside every image tree:
a ``kill -9`` at any point leaves each name pointing at either its original
inode or an object with the same bytes and metadata, plus at most a stage name
that gc/fsck remove.  Objects whose only name is their own (``st_nlink == 1``)
are unused; gc removes them while holding the gc lock, so no writer is running.
"""
from __future__ import annotations

import array
import bisect
import codecs
import errno
import fcntl
import heapq
import itertools
import json
import os
import re
import secrets
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, field

from ..errors import StoreError

FILES_LIST = "files.lz4"
OBJECTS_LIST = "objects.lz4"   # the distinct objects a snapshot uses, for system df (snapshot_objects)
HASHED = "hashed"
FICLONE = 0x40049409
# Reflinking into these would make the kernel drop them (file_remove_privs).
_PRIVILEGED_MODE = stat.S_ISUID | stat.S_ISGID
_CAPABILITY_XATTR = "security.capability"
_OBJECT_RE = re.compile(r"([0-9a-f]{64})\.([0-9a-f]{16})")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_COMPARE_CHUNK = 1 << 20
_NOT_SUPPORTED = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS}
_json_string = json.encoder.encode_basestring_ascii  # a str as json.dumps writes it (ensure_ascii)


def _native():
    """lamina._objects (BLAKE3 and renameat2), imported on first use: only the store needs it."""
    global _NATIVE
    if _NATIVE is None:
        from .. import _objects
        _NATIVE = _objects
    return _NATIVE


_NATIVE = None


def _hash_fd(fd):
    return _native().hash_fd(fd)


def _has_holes(fd, st):
    """Whether the file has a hole: fewer blocks than bytes (compression, inline data) and a hole
    before its end."""
    if st.st_blocks * 512 >= st.st_size:
        return False
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) < st.st_size
    except OSError:  # no SEEK_HOLE here
        return False


def _hash_bytes(data):
    return _native().hash_bytes(data)


def _rename_noreplace(src_dir_fd, src, dst_dir_fd, dst):
    """Rename ``src`` to ``dst`` unless ``dst`` exists (then False): a new object's name, atomically."""
    try:
        return _native().rename_noreplace(src_dir_fd, src, dst_dir_fd, dst)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
    try:  # a filesystem or kernel without RENAME_NOREPLACE: link, then drop the old name
        os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)
    except FileExistsError:
        return False
    os.unlink(src, dir_fd=src_dir_fd)
    return True


def _can_reflink(dir_fd):
    """Whether the filesystem of ``dir_fd`` clones files (FICLONE), tried on two empty temp files."""
    names = [f"probe-{os.getpid()}-{secrets.token_hex(8)}" for _ in range(2)]
    fds = []
    try:
        for n in names:
            fds.append(os.open(n, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dir_fd))
        fcntl.ioctl(fds[1], FICLONE, fds[0])
        return True
    except OSError:
        return False
    finally:
        for fd in fds:
            os.close(fd)
        for n in names[:len(fds)]:
            os.unlink(n, dir_fd=dir_fd)


# --- where objects live -------------------------------------------------------------------

def objects_dir(paths):
    return paths.root / "objects"


def stage_dir(paths):
    return objects_dir(paths) / "stage"


def object_relpath(name):
    """``blake3/<2 hex>/<name>`` for a well-formed object name, else StoreError."""
    if not isinstance(name, str) or not _OBJECT_RE.fullmatch(name):
        raise StoreError(f"invalid object name {name!r}")
    return f"blake3/{name[:2]}/{name}"


def object_path(paths, name):
    return objects_dir(paths) / object_relpath(name)


def metadata_key(st, xattrs):
    """16 hex of blake3 over the inode metadata that hardlinked names must agree on."""
    parts = [f"{st.st_mode:o}:{st.st_uid}:{st.st_gid}:{st.st_mtime_ns}".encode()]
    for name, value in sorted(xattrs):
        parts.append(b"\0" + name.encode("utf-8", "surrogateescape") + b"\0%d\0" % len(value) + value)
    return _hash_bytes(b"".join(parts))[:16]


def _xattrs(fd):
    try:
        names = os.listxattr(fd)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise
    out = []
    for n in names:
        try:
            out.append((n, os.getxattr(fd, n)))
        except OSError as e:
            if e.errno != errno.ENODATA:  # removed since listxattr
                raise
    return out


# --- the per-snapshot file list -------------------------------------------------------------

@dataclass
class FileEntry:
    path: str            # relative to the snapshot's fs/, '/'-separated (surrogateescape for non-UTF-8 names)
    blake3: str          # "" for a sparse file: private, never hashed (see _Pass.one)
    size: int
    object: str | None   # the object it shares, None if it kept a private inode (e.g. EMLINK)


class FileRows:
    """A dedup pass's file list as it is made, kept out of memory: each file's row (the JSON
    array the file list holds) is one line of an unlinked temp file beside the snapshot's tree,
    and the objects' 40-byte keys go in sorted runs of at most ``RUN`` keys to another.  A
    FileEntry per file, then the whole JSON document and its compressed copy, took ~1.3 KB a
    file at the pass's end: most of a big layer's peak RSS in the store (``bench/rss.py``)."""

    RUN = 1 << 14   # ~2 MiB of keys in a set

    def __init__(self, snapshot_dir):
        self.dir = snapshot_dir
        self.rows = tempfile.TemporaryFile(dir=snapshot_dir)
        self.runs = None
        self.bounds = []     # (offset, keys) of each run written
        self.keys = set()    # the keys of the run being made

    def close(self):
        # a buffer a full disk left unwritten fails the close too, and that error would hide the
        # one that stopped the pass; what is read back was flushed first (_flush), so none is lost
        for f in (self.rows, self.runs):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    def _flush(self, f):
        try:
            f.flush()
        except OSError as e:
            raise _temp_error(e, self.dir)

    def add(self, path, blake3, size, obj):
        # the text json.dumps([path, blake3, size, obj]) writes, without its per-call cost (a
        # third of the pass's Python time per file): the same escaping of each string
        null = "null" if obj is None else _json_string(obj)
        try:
            self.rows.write(f"[{_json_string(path)}, {_json_string(blake3)}, {size:d}, {null}]\n".encode())
        except OSError as e:
            raise _temp_error(e, self.dir)
        if obj is not None:
            self.keys.add(bytes.fromhex(obj[:64] + obj[65:]))
            if len(self.keys) >= self.RUN:
                self._spill()

    def _spill(self):
        if self.runs is None:
            self.runs = tempfile.TemporaryFile(dir=self.dir)
        self.runs.seek(0, os.SEEK_END)
        self.bounds.append((self.runs.tell(), len(self.keys)))
        try:
            self.runs.write(b"".join(sorted(self.keys)))
        except OSError as e:
            raise _temp_error(e, self.dir)
        self.keys = set()

    def entries(self):
        """The rows added so far, as FileEntry, read back from the temp file."""
        self._flush(self.rows)
        with open(os.dup(self.rows.fileno()), "rb", closefd=True) as f:
            f.seek(0)
            for line in f:
                p, b, s, o = json.loads(line)
                yield FileEntry(p, b, s, o)

    def _run(self, offset, count):
        fd = self.runs.fileno()
        left = count * _OBJECT_BYTES
        while left:
            buf = os.pread(fd, min(left, 1024 * _OBJECT_BYTES), offset)
            if not buf:
                raise StoreError("the dedup pass's temp file of object keys is short")
            offset += len(buf)
            left -= len(buf)
            for i in range(0, len(buf), _OBJECT_BYTES):
                yield buf[i:i + _OBJECT_BYTES]

    def object_keys(self):
        """The distinct object keys, sorted (as their names sort: lowercase hex, one '.')."""
        if not self.bounds:
            yield from sorted(self.keys)
            return
        if self.keys:
            self._spill()
        self._flush(self.runs)
        last = None
        for key in heapq.merge(*(self._run(o, n) for o, n in self.bounds)):
            if key != last:
                yield key
                last = key

    def document(self):
        """The file list's JSON text in chunks: what json.dumps of the whole document writes."""
        self._flush(self.rows)
        yield b'{"version": 1, "files": ['
        sep = b""
        with open(os.dup(self.rows.fileno()), "rb", closefd=True) as f:
            f.seek(0)
            batch = []
            for line in f:
                batch.append(sep + line[:-1])
                sep = b", "
                if len(batch) >= 4096:
                    yield b"".join(batch)
                    batch = []
            yield b"".join(batch)
        yield b"]}"


def _temp_error(e, directory):
    """``e`` named as a temp file of the dedup pass in ``directory``: an O_TMPFILE has no name,
    and "tmp" there is what snapshots._storing_failed calls "a temp file of its dedup pass"."""
    from .fsutil import name_error
    return name_error(e, os.path.join(directory, "tmp"))


def _lz4_chunks(chunks):
    import lz4.frame
    with lz4.frame.LZ4FrameCompressor() as c:
        yield c.begin()
        buf = []
        size = 0
        for chunk in chunks:
            buf.append(chunk)
            size += len(chunk)
            if size >= 1 << 20:
                yield c.compress(b"".join(buf))
                buf, size = [], 0
        yield c.compress(b"".join(buf))
        yield c.flush()


def write_file_list(snapshot_dir, rows, durable=True):
    """Write the snapshot's file list and objects list from ``rows`` (FileRows), streamed: neither
    document is ever whole in memory.  ``durable=False``: the snapshot is a temp
    dir that a syncfs will cover before it is published (dedup_snapshot's ``sync``), so the lists
    are plain writes, without the fsyncs and renames of atomic_write."""
    from .fsutil import atomic_write, name_error
    # The objects list first: the file list says the pass is done (is_deduplicated), and a
    # snapshot without an objects list is read through its file list (snapshot_objects).
    for name, chunks in ((OBJECTS_LIST, rows.object_keys()), (FILES_LIST, rows.document())):
        path = os.path.join(snapshot_dir, name)
        if durable:
            atomic_write(path, _lz4_chunks(chunks))
        else:
            f = open(path, "wb")
            try:
                for chunk in _lz4_chunks(chunks):
                    f.write(chunk)
                f.close()
            except BaseException as e:
                try:
                    f.close()
                except OSError:
                    pass  # its unwritten buffer: the error to say is e (maybe the rows' temp file's)
                raise name_error(e, path)


_OBJECT_BYTES = 40   # an object name in the objects list: blake3 (32 bytes), metadata key (8)


def snapshot_objects(snapshot_dir):
    """The names of the objects a deduplicated snapshot's files use (a set; empty if it is not
    deduplicated).  Read from its objects list, 40 bytes an object, not from the file list (a
    JSON document of every file).  A set of them all: iter_object_keys() for a big snapshot."""
    return {_object_name(k) for k in iter_object_keys(snapshot_dir)}


def _object_name(key):
    return f"{key[:32].hex()}.{key[32:].hex()}"


def iter_object_keys(snapshot_dir):
    """The 40-byte keys of the objects a deduplicated snapshot uses, streamed from its objects
    list (from its file list if it has none or it is damaged): the whole list as a set took
    ~75 B an object, and ``system df`` reads every snapshot's."""
    path = os.path.join(snapshot_dir, OBJECTS_LIST)
    if _objects_list_size(path) is None:
        for e in iter_file_list(snapshot_dir) or ():
            if e.object is not None:
                yield bytes.fromhex(e.object[:64] + e.object[65:])
        return
    for buf in _lz4_read(path):
        for i in range(0, len(buf), _OBJECT_BYTES):
            yield buf[i:i + _OBJECT_BYTES]


_READ = 4096 * _OBJECT_BYTES   # what a streamed list is read in (a multiple of a key)


def _lz4_read(path):
    """The decompressed bytes of an lz4 frame file, in pieces of at most _READ bytes."""
    import lz4.frame
    with lz4.frame.open(path, "rb") as f:
        while True:
            buf = f.read(_READ)
            if not buf:
                return
            yield buf


def _objects_list_size(path):
    """The decompressed size of an objects list (read through once, not kept), None if it is
    missing or damaged (an older lamina wrote none; the file list then says the same)."""
    size = 0
    try:
        for buf in _lz4_read(path):
            size += len(buf)
    except (FileNotFoundError, RuntimeError, EOFError, ValueError):
        return None
    return size if size % _OBJECT_BYTES == 0 else None


def read_file_list(snapshot_dir):
    """[FileEntry] of a deduplicated snapshot, None if it has no list (not deduplicated yet).
    A list in memory (~1 KB a file): iter_file_list() for a walk over a big snapshot."""
    rows = iter_file_list(snapshot_dir)
    return None if rows is None else list(rows)


def iter_file_list(snapshot_dir):
    """read_file_list() as an iterator, parsed as it is decompressed (bounded memory), None if
    there is no list.  A damaged list raises StoreError when the iteration reaches the damage."""
    path = os.path.join(snapshot_dir, FILES_LIST)
    if not os.path.exists(path):
        return None
    return _file_rows(path)


def _file_rows(path):
    # The document is {"version": 1, "files": [[path, blake3, size, object], ...]}: written in
    # pieces by write_file_list (json.dumps' separators), read here one row at a time.
    decoder = json.JSONDecoder()
    space = " \t\r\n"
    text = ""
    pos = 0
    state = "head"
    pieces = _lz4_read(path)
    decode = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    try:
        while True:
            if state == "head":
                i = text.find("[", text.find('"files"') + 1) if '"files"' in text else -1
                if i >= 0:
                    pos = i + 1
                    state = "row"
                    continue
            else:
                while pos < len(text) and text[pos] in space + ",":
                    pos += 1
                if pos < len(text) and text[pos] == "]":
                    return
                if pos < len(text):
                    try:
                        row, end = decoder.raw_decode(text, pos)
                    except ValueError:
                        row = None  # an incomplete row at the end of what was read so far
                    if row is not None and end < len(text):
                        p, b, sz, o = row
                        yield FileEntry(p, b, int(sz), o)
                        pos = end
                        continue
            buf = next(pieces, None)
            if buf is None:
                raise ValueError("the document ends early")
            text = text[pos:] + decode.decode(buf)
            pos = 0
    except (RuntimeError, ValueError, KeyError, TypeError, EOFError) as e:
        raise StoreError(f"{path}: unreadable file list ({e}); run lamina fsck --repair") from None


# --- the dedup pass ---------------------------------------------------------------------------

@dataclass
class DedupStats:
    files: int = 0          # regular files (names) seen
    bytes: int = 0          # their apparent size
    linked: int = 0         # names now sharing an object another snapshot made
    linked_bytes: int = 0
    new_objects: int = 0    # inodes of this snapshot that became objects
    reflinked: int = 0      # files whose data is now shared through a reflink
    reflinked_bytes: int = 0
    private: int = 0        # names left with an inode of their own (layer hardlinks, link limit, changed object)
    prehashed: int = 0      # inodes whose blake3 the extractor computed while writing them
    seconds: float = 0.0
    hash_seconds: float = 0.0  # of which reading and hashing (blake3) the files the extractor did not hash
    # where ``seconds`` went (wall, for bench/dedup_cost.py): the walk that swaps duplicates and
    # plans new objects, the sync (including the wait for this process's other writers), the
    # claim renames after it, and dropping the extractor's names plus writing the file list
    plan_seconds: float = 0.0
    sync_seconds: float = 0.0
    claim_seconds: float = 0.0
    finish_seconds: float = 0.0

    def to_dict(self):
        return asdict(self)


class _Keys:
    """The index keys of a run (every BLOCK-th key, sorted) in one buffer, as a sequence for
    ``bisect``: a list of small bytes objects took 57 B a key and, made among a spill's
    short-lived records, kept the allocator's pools from being freed (a dedup pass of a
    1M-file layer grew 26 MiB for 11 MiB of live data)."""
    __slots__ = ("blob", "starts")

    def __init__(self):
        self.blob = bytearray()
        self.starts = array.array("q", [0])

    def append(self, key):
        self.blob += key
        self.starts.append(len(self.blob))

    def __len__(self):
        return len(self.starts) - 1

    def __getitem__(self, i):
        if i < 0:
            i += len(self.starts) - 1
        return bytes(self.blob[self.starts[i]:self.starts[i + 1]])


class _Run:
    """A sorted run of SpilledNames records in a temp file of its own (a merge frees it)."""
    __slots__ = ("file", "keys", "offsets", "count", "removed", "bits", "nbits", "level")

    def __init__(self, file, keys, offsets, count, bits):
        self.file, self.keys, self.offsets, self.count = file, keys, offsets, count
        self.removed = 0
        self.level = 0  # how many merges its records went through
        # a one-hash filter of 16 bits a key (~6% false hits): most lookups of new objects miss
        # every run, and a hit is in one run; the filter saves the other block reads
        self.bits, self.nbits = bits, len(bits) * 8


class SpilledNames:
    """A map of the dedup pass (inode -> extractor's hashed/ name, object -> planned name) whose
    size is bounded: at most ``LAMINA_PASS_NAMES_HELD`` entries (default ``BUDGET``) in a dict, the
    rest in sorted runs of unlinked temp files beside the snapshot's tree, found through an
    in-memory index of every ``BLOCK``-th key and a filter of the keys (2 bytes a key).  As
    dicts, the two maps took ~0.43 KB a file: most of a big layer's peak RSS in the store
    (``bench/rss.py``).

    A run is a NUL, then per record ``<key>\\0+<name>\\0``; a removal overwrites the ``+`` with
    ``-``.  Keys are lowercase hex (``encode``: for inode numbers fixed-width, so that text order
    is number order) and a name follows a ``+`` or ``-``, so ``\\0<key>\\0`` only matches a key.
    A lookup reads one block of each run whose filter may hold the key; ``RUNS`` runs of one
    level are merged into one of the next (tiers, as in an LSM tree), so a big map has a few
    runs a level and each record is rewritten a few times."""

    BUDGET = 1 << 13
    BLOCK = 16
    RUNS = 8

    def __init__(self, directory, encode=str, decode=str):
        self.dir = directory
        self.encode, self.decode = encode, decode
        self.front = {}
        self.budget = max(1, int(os.environ.get("LAMINA_PASS_NAMES_HELD") or self.BUDGET))
        self.runs = []
        self.found = {}     # key -> (run, offset of its flag) of lookups since forget()

    def close(self):
        for run in self.runs:
            run.file.close()
        self.runs = []
        self.found = {}

    def __len__(self):
        return len(self.front) + sum(run.count - run.removed for run in self.runs)

    def __setitem__(self, key, name):
        self.front[key] = name
        if len(self.front) >= self.budget:
            self._spill()

    def _spill(self):
        front, encode = self.front, self.encode
        # keys sorted as their encodings sort (inode numbers: fixed-width hex), records made
        # one at a time as they are written, not all at once beside the dict
        keys = sorted(front, key=lambda k: encode(k).encode())
        records = ((encode(k).encode(), front[k].encode(errors="surrogateescape")) for k in keys)
        self.runs.append(self._write(records, len(keys)))
        self.front = {}
        del keys
        self.runs[-1].level = 0
        # tiered: RUNS runs of one level merge into one of the next, so a record is rewritten
        # log_RUNS(entries / budget) times, not once every RUNS spills
        while len(self.runs) >= self.RUNS and len({r.level for r in self.runs[-self.RUNS:]}) == 1:
            runs, level = self.runs[-self.RUNS:], self.runs[-1].level
            merged = self._write(heapq.merge(*map(self._records, runs)), sum(r.count - r.removed for r in runs))
            merged.level = level + 1
            for run in runs:
                run.file.close()
            self.runs[-self.RUNS:] = [merged]
        self.found = {}

    def _write(self, records, most):
        """A run of (key, name) bytes pairs, sorted by key (``most`` of them at most)."""
        file = tempfile.TemporaryFile(dir=self.dir)
        try:
            return self._fill(file, records, most)
        except BaseException as e:
            try:
                file.close()
            except OSError:
                pass  # the unwritten buffer again: the error that stopped the write is e
            raise _temp_error(e, self.dir)

    def _fill(self, file, records, most):
        keys, offsets, chunk = _Keys(), array.array("q"), [b"\0"]
        at, count = 1, 0
        bits = bytearray(2 * max(1, most))
        nbits = len(bits) * 8
        for key, name in records:
            h = hash(key) % nbits
            bits[h >> 3] |= 1 << (h & 7)
            record = b"%s\0+%s\0" % (key, name)
            if count % self.BLOCK == 0:
                keys.append(key)
                offsets.append(at)
            at += len(record)
            count += 1
            chunk.append(record)
            if len(chunk) >= 4096:
                file.write(b"".join(chunk))
                chunk = []
        offsets.append(at)
        file.write(b"".join(chunk))
        file.flush()
        return _Run(file, keys, offsets, count, bits)

    def _records(self, run):
        """(key, name) bytes of the run's records not removed, in order, read in chunks."""
        fd = run.file.fileno()
        for b in range(0, len(run.keys), 128):
            at, end = run.offsets[b], run.offsets[min(b + 128, len(run.keys))]
            block = os.pread(fd, end - at, at).split(b"\0")
            for j in range(0, len(block) - 1, 2):
                if block[j + 1][0] == 0x2B:  # '+'
                    yield block[j], block[j + 1][1:]

    def _find(self, key):
        """(name, its run, offset of its flag) of ``key`` in the runs, or None."""
        want = self.encode(key).encode()
        h = hash(want)
        for run in self.runs:
            b = h % run.nbits
            if not run.bits[b >> 3] & (1 << (b & 7)):
                continue
            i = bisect.bisect_right(run.keys, want) - 1
            if i < 0:
                continue
            at = run.offsets[i] - 1  # from the NUL before the block's first key
            block = os.pread(run.file.fileno(), run.offsets[i + 1] - at, at)
            j = block.find(b"\0%s\0" % want)
            if j < 0:
                continue
            j += len(want) + 2
            if block[j] != 0x2B:  # '-': removed, and a key is in one run at most
                return None
            return block[j + 1:block.index(b"\0", j)].decode(errors="surrogateescape"), run, at + j
        return None

    def forget(self):
        """Drop the places of earlier lookups (kept for remove(): one directory's at a time)."""
        if self.found:
            self.found = {}

    def get(self, key):
        name = self.front.get(key)
        if name is None and self.runs:
            found = self._find(key)
            if found is not None:
                return found[0]
        return name

    def __getitem__(self, key):
        name = self.get(key)
        if name is None:
            raise KeyError(key)
        return name

    def __contains__(self, key):
        return self.get(key) is not None

    def spilled_get(self):
        """For DirScan: the lookup of keys past the dict, or None while everything is in it."""
        return self.get_spilled if self.runs else None

    def get_spilled(self, key):
        found = self._find(key)
        if found is None:
            return None
        self.found[key] = found[1:]  # remove() follows for most
        return found[0]

    def remove(self, key):
        if self.front.pop(key, None) is not None or not self.runs:
            return
        found = self.found.pop(key, None)
        if found is None:
            found = self._find(key)
            if found is None:
                return
            found = found[1:]
        run, at = found
        os.pwrite(run.file.fileno(), b"-", at)
        run.removed += 1

    def items(self):
        """(key, name) of every entry: the dict's, then the runs'."""
        yield from list(self.front.items())
        for run in list(self.runs):
            for key, name in self._records(run):
                yield self.decode(key.decode()), name.decode(errors="surrogateescape")

    def values(self):
        for _, name in self.items():
            yield name


def _inode_key(ino):
    return "%016x" % ino


def _inode(text):
    return int(text, 16)


PASS_OPEN_LEVELS = 16   # directories the dedup pass keeps open along its path (see _Pass.run)


def _reopen_parent(frame, child_fd):
    """Open again the directory of the pass's stack ``frame``, closed for depth, through ".."
    of its subdirectory ``child_fd``; its DirScan goes on from there."""
    from .fsutil import open_parent_again
    frame[0] = fd = open_parent_again(child_fd, frame[5], f"{frame[1] or '/'} moved while the dedup pass walked it")
    if frame[2] is not None:
        frame[2].dir_fd = fd


def _inode_names(directory):
    """An empty {inode number: hashed/ name} of the pass, spilling beside ``directory``."""
    return SpilledNames(directory, _inode_key, _inode)


def hashed_dir(paths, snapshot_dir):
    """Where the extractor names the files it hashes while writing a snapshot (``Extractor``'s
    ``hash_files_into``): ``<snapshot>/hashed``, or None when the store does not deduplicate."""
    from .config import read
    return os.path.join(snapshot_dir, HASHED) if read(paths)["dedup"] else None


def linkable_dir(paths, hashed):
    """``objects/blake3`` for the extractor's ``link_objects`` (files the store has an object for
    are named by a link to it), when it deduplicates into ``hashed``.

    Made if missing: the extractor opens it once, at its start, and then sees the objects the
    layers below make meanwhile.  In a fresh store the first image's upper layers start beside
    its bottom one, before any object exists; without the directory they could link nothing,
    and wrote every file they share with the layers below, for their pass to swap and free."""
    if hashed is None:
        return None
    _make_objects_dirs(paths)
    return os.fspath(objects_dir(paths) / "blake3")


def _make_objects_dirs(paths):
    objects = objects_dir(paths)
    for d in (objects, objects / "blake3", stage_dir(paths)):
        try:
            os.mkdir(d, 0o700)  # objects hold setuid binaries of every image, like snapshots/
        except FileExistsError:
            pass


def _held(hashed_path, snapshot_dir):
    """{inode number: name} (SpilledNames) of the extractor's names in ``hashed/``, and its fd (or None).

    A name ``<blake3>-x<n>`` says the file has xattrs, ``<blake3>-<n>`` that it has none
    (the extractor asked the inode itself once it was complete), ``<blake3>-o<key>-<size>``
    that the inode is the existing object ``<blake3>.<key>`` (the extractor linked it).
    Each name keeps its inode alive, so while it exists no other file can have that inode
    number: a tree entry whose ``d_ino`` is in the map *is* that inode, with that content.
    """
    try:
        fd = os.open(hashed_path, _DIR_FLAGS)
    except FileNotFoundError:
        return _inode_names(snapshot_dir), None
    held = _inode_names(snapshot_dir)
    try:
        _native().list_held(fd, held)  # names, not (name, blake3) tuples: ~170 B a file less (DirScan)
    except BaseException:
        held.close()
        os.close(fd)
        raise
    return held, fd


class _Pass:
    """One dedup pass over a snapshot.

    ``defer``: the snapshot is a temp dir not synced yet (snapshots.ensure), so no inode of it
    may become an object before the sync (an object's name must never outlive its data in a
    power cut).  Its duplicates are still swapped for existing objects at once, so their data
    is freed before it is ever written; a file that would make a new object is *planned*
    (``planned``: object -> its name in hashed/), later names with the same object are swapped
    for that inode, and claim() renames the planned names into objects/ after the sync.
    """
    def __init__(self, paths, snapshot_dir, reflink, defer=False):
        self.paths = paths
        self.snapshot_dir = os.fspath(snapshot_dir)
        self.reflink = reflink
        self.defer = defer
        self.planned = SpilledNames(self.snapshot_dir)
        self.stats = DedupStats()
        self.files = FileRows(self.snapshot_dir)
        # (dev, ino) of a snapshot inode with more names than the one met -> (object name or None,
        # blake3): an inode alone on its name is met once, and is not kept
        self.inodes = {}
        self.keys = {}        # (mode, uid, gid, mtime) -> metadata key of a file without xattrs
        self.hashed_path = os.path.join(self.snapshot_dir, HASHED)
        _make_objects_dirs(paths)
        objects = objects_dir(paths)
        self.blake3_fd = os.open(objects / "blake3", _DIR_FLAGS)
        self.fan = _native().FanOut(self.blake3_fd)  # objects/blake3/<2 hex>/ fds
        self.stage_fd = os.open(stage_dir(paths), _DIR_FLAGS)
        self.held, self.hashed_fd = _held(self.hashed_path, self.snapshot_dir)
        if self.reflink:  # else every new object would look for siblings to clone from in vain
            self.reflink = _can_reflink(self.stage_fd)

    def close(self):
        self.files.close()
        self.held.close()
        self.planned.close()
        self.fan.close()
        os.close(self.blake3_fd)
        os.close(self.stage_fd)
        if self.hashed_fd is not None:
            os.close(self.hashed_fd)

    def drop_held(self, rmdir=True):
        """Remove the extractor's names not renamed into objects (nor planned), and their directory."""
        if self.hashed_fd is None:
            return
        for name in self.held.values():
            try:
                os.unlink(name, dir_fd=self.hashed_fd)
            except FileNotFoundError:
                pass
        self.held.close()
        self.held = _inode_names(self.snapshot_dir)
        if not rmdir:
            return
        try:
            os.rmdir(self.hashed_path)
        except OSError as e:
            if e.errno != errno.ENOTEMPTY:
                raise
            drop_hashed(self.snapshot_dir)  # not the extractor's names only: remove whatever it is

    def run(self):
        """Walk the snapshot's tree, iteratively, never following a link: each directory is
        opened with openat(parent fd, name, O_NOFOLLOW|O_DIRECTORY), so the walk cannot leave
        the tree whatever its symlinks say.  A directory's listing and its common case (files
        the extractor hashed, alone on their inode, without xattrs, whose object does not exist
        yet) are native (``_objects.DirScan``), a batch of entries at a time; what it leaves
        goes the general way."""
        start = time.perf_counter()
        fast = not self.reflink  # reflink: every new object looks for siblings
        hashed_fd = -1 if self.hashed_fd is None else self.hashed_fd
        # Depth first, a directory opened only when its turn comes: the stack holds one fd per
        # level (each with its listing and the names of a batch's subdirectories still to visit),
        # never one per subdirectory waiting (30,000 sibling directories ran out of file
        # descriptors), nor a whole listing (a directory of 300k files took 341 MiB).
        # A layer's symlinks lead its tree thousands of levels down, past any open-file limit: of
        # the levels above the deepest PASS_OPEN_LEVELS, the fd is closed (-1), the directory's
        # (dev, ino) kept, and it is opened again through ".." of the level below on the way up.
        root = os.open(os.path.join(self.snapshot_dir, "fs"), _DIR_FLAGS)
        stack = [[root, "", None, (), 0, None]]   # fd, prefix, its DirScan, a batch's subdirectories, next one, id
        lowest = 0   # stack[lowest:] have their fds open
        listing = {"held": int(os.environ["LAMINA_PASS_LISTING_HELD"])} if os.environ.get("LAMINA_PASS_LISTING_HELD") else {}
        try:
            while stack:
                frame = stack[-1]
                fd, prefix, scan, subdirs, i, _ = frame
                if i < len(subdirs):
                    frame[4] = i + 1
                    stack.append([os.open(subdirs[i], _DIR_FLAGS, dir_fd=fd), f"{prefix}{subdirs[i]}/", None, (), 0, None])
                    if len(stack) - lowest > PASS_OPEN_LEVELS:
                        closing = stack[lowest]
                        st = os.fstat(closing[0])
                        closing[5] = (st.st_dev, st.st_ino)
                        os.close(closing[0])
                        closing[0] = -1
                        lowest += 1
                    continue
                if scan is None:
                    frame[2] = scan = _native().DirScan(fd, self.snapshot_dir, **listing)
                subdirs = self._scan_batch(scan, fast, hashed_fd, fd, prefix)
                if subdirs is None:
                    stack.pop()
                    if stack and stack[-1][0] < 0:
                        _reopen_parent(stack[-1], fd)
                        lowest -= 1
                    os.close(fd)
                    continue
                frame[3], frame[4] = subdirs, 0
        finally:
            for frame in stack:
                if frame[0] >= 0:
                    os.close(frame[0])
                if frame[2] is not None:
                    frame[2].close()
        self.stats.seconds = time.perf_counter() - start
        return self.stats

    def _scan_batch(self, scan, fast, hashed_fd, fd, prefix):
        """A batch of one directory's entries (see run): its files done; returns the names of its
        subdirectories, or None when the directory's listing is done.

        DirScan.take does the common case natively, without a Python object per file: each such
        file is (or, ``defer``, is planned to become) a new object under its hashed/ name, its
        row goes to the file list.  One whose object this pass has planned already (a duplicate
        within the layer) comes back to one_held() at its place, and is swapped for it."""
        self.held.forget()
        batch = scan.take(self.held, self.planned, self.files, prefix, hashed_fd, self.fan, not self.defer, fast,
                          self.one_held)
        if batch is None:
            return None
        subdirs, slow, done_files, done_bytes = batch
        st = self.stats
        st.files += done_files
        st.bytes += done_bytes
        st.prehashed += done_files
        if not self.defer:
            st.new_objects += done_files
        for name, ino, held in slow:
            if held is None:
                self.one(fd, name, prefix + name)
            elif held[0][65] == "o":
                self.linked_by_extractor(prefix + name, held)
            else:
                self.one_held(fd, name, ino, prefix + name, held)
        return subdirs

    def linked_by_extractor(self, rel, held):
        """A name the extractor made a link to an existing object (``<blake3>-o<key>-<size>``
        in hashed/, a name of the object's inode): matched by ``d_ino``, it *is* that object."""
        hold, digest = held
        key, _, size = hold[66:].partition("-")
        size = int(size)
        obj = f"{digest}.{key}"
        st = self.stats
        st.files += 1
        st.bytes += size
        st.linked += 1
        st.linked_bytes += size
        self.files.add(rel, digest, size, obj)

    def plan(self, obj, fd, hold, st):
        """``defer``: this inode becomes ``obj`` once claim() runs; False if it cannot be named."""
        if hold is None:  # not hashed by the extractor: give it a name in hashed/ to claim
            if self.hashed_fd is None:
                os.makedirs(self.hashed_path, exist_ok=True)
                self.hashed_fd = os.open(self.hashed_path, _DIR_FLAGS)
            hold = f"{obj[:64]}-p{len(self.planned)}"
            try:
                os.link(f"/proc/self/fd/{fd[0]}", hold, dst_dir_fd=self.hashed_fd, follow_symlinks=True)
            except OSError as e:
                if e.errno != errno.EMLINK:
                    raise
                return False
        else:
            self.held.remove(st.st_ino)
        self.planned[obj] = hold
        return True

    def claim(self):
        """``defer``, after the sync: the planned names become objects.  Where another pass made
        the same object meanwhile (a parallel pull of the same files), this snapshot's names of
        the planned inode are swapped for that object instead (share_lost)."""
        plan = self.planned
        planned = plan.items()
        self.planned = SpilledNames(self.snapshot_dir)
        lost = set()
        while True:
            # in batches: a copy of the whole plan (a tuple and two list slots an object) was the
            # pass's peak on a big layer
            items = list(itertools.islice(planned, 4096))
            if not items:
                break
            codes = _native().claim_objects(self.hashed_fd, [h for _, h in items], [o for o, _ in items], self.fan)
            for (obj, hold), code in zip(items, codes):
                if code in (errno.EINVAL, errno.ENOSYS):  # no RENAME_NOREPLACE here
                    code = 0 if _rename_noreplace(self.hashed_fd, hold, self.fan.get(obj), obj) else errno.EEXIST
                if code == 0:
                    self.stats.new_objects += 1
                elif code == errno.EEXIST:
                    os.unlink(hold, dir_fd=self.hashed_fd)
                    lost.add(obj)
                else:
                    raise OSError(code, os.strerror(code), f"{self.hashed_path}/{hold}")
        plan.close()
        if lost:
            self.share_lost(lost)

    def share_lost(self, objs):
        """Swap the names of planned inodes whose object another pass made first for that object
        (a name whose inode is not like the object's keeps its inode: see share())."""
        root_fd = os.open(os.path.join(self.snapshot_dir, "fs"), _DIR_FLAGS)
        try:
            for e in self.files.entries():
                if e.object not in objs:
                    continue
                try:
                    ofd = os.open(e.object, _FILE_FLAGS, dir_fd=self.fan.get(e.object))
                except FileNotFoundError:
                    continue
                parent, name = e.path.rpartition("/")[::2]
                dfd = _open_dir(root_fd, parent)
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    ost = os.fstat(ofd)
                    if (st.st_ino != ost.st_ino and _same_inode_metadata(ost, st)
                            and self.name_holds_same_bytes(ofd, dfd, name, st) and self.swap(dfd, name, ofd)):
                        self.stats.linked += 1
                        self.stats.linked_bytes += st.st_size
                finally:
                    os.close(dfd)
                    os.close(ofd)
        finally:
            os.close(root_fd)

    def one_held(self, dfd, name, ino, rel, held):
        """A file the extractor hashed: its blake3 is known, and ``hashed/<hold>`` is the same inode
        (``ino``: its inode number in the directory listing)."""
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if st.st_ino != ino:  # a filesystem whose listings disagree with stat: no shortcut
            return self.one(dfd, name, rel)
        if not stat.S_ISREG(st.st_mode):
            return
        self.stats.files += 1
        self.stats.bytes += st.st_size
        key = (st.st_dev, st.st_ino)
        known = self.inodes.get(key)
        if known is None:
            hold, digest = held
            self.stats.prehashed += 1
            if hold[65] == "x":
                xattrs = _xattrs(f"{self.hashed_path}/{hold}")
                meta = metadata_key(st, xattrs)
            else:  # most files: no xattrs, and many share mode, owner and mtime
                xattrs = []
                k = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
                meta = self.keys.get(k)
                if meta is None:
                    meta = self.keys[k] = metadata_key(st, xattrs)
            obj = f"{digest}.{meta}"
            known = (self.share(dfd, name, None, st, obj, digest, xattrs, hold=hold), digest)
            if st.st_nlink > 2:  # names besides this one and its hold: the layer's hardlinks
                self.inodes[key] = known
        self.record(rel, st, known)

    def one(self, dfd, name, rel):
        fd = [os.open(name, _FILE_FLAGS, dir_fd=dfd)]  # share() may close it early (see there)
        try:
            st = os.fstat(fd[0])
            if not stat.S_ISREG(st.st_mode):
                return
            self.stats.files += 1
            self.stats.bytes += st.st_size
            key = (st.st_dev, st.st_ino)
            known = self.inodes.get(key)  # else: another name of an inode already handled
            if known is None and _has_holes(fd[0], st):
                # a sparse file stays private and unhashed, as the extractor leaves it: hashing
                # (and sharing) its holes would read every byte of an image's terabyte lastlog
                known = (None, "")
            elif known is None:
                t = time.perf_counter()
                digest, _ = _hash_fd(fd[0])
                self.stats.hash_seconds += time.perf_counter() - t
                xattrs = _xattrs(fd[0])
                obj = f"{digest}.{metadata_key(st, xattrs)}"
                known = (self.share(dfd, name, fd, st, obj, digest, xattrs), digest)
            if st.st_nlink > 1 and key not in self.inodes:
                self.inodes[key] = known
            self.record(rel, st, known)
        finally:
            if fd[0] >= 0:
                os.close(fd[0])

    def record(self, rel, st, known):
        obj, digest = known
        if obj is None:
            self.stats.private += 1
        self.files.add(rel, digest, st.st_size, obj)

    def share(self, dfd, name, fd, st, obj, digest, xattrs, hold=None):
        """Make this inode share ``obj``; the object's name, or None if the inode stays private.

        The inode is open as ``fd[0]``, or (``hold``) named ``hashed/<hold>`` by the extractor:
        that name is then one more link, and becomes the object's name if there is no object yet.
        Only names that are alone on their inode are shared: a hardlink group of the layer keeps
        its own inode, so that "same inode" keeps meaning "hardlinked in the image" for every
        inode that is not an object (materialize relies on it, see singletons()).
        """
        ffd = self.fan.get(obj)
        hardlinked = st.st_nlink - (hold is not None) > 1
        for _ in range(3):  # a race with another pass creating the same object: at most a retry
            if hold is not None and not hardlinked and not self.reflink and not self.defer:
                # the common case first: a new object takes over the extractor's name (one rename)
                if _rename_noreplace(self.hashed_fd, hold, ffd, obj):
                    self.held.remove(st.st_ino)
                    self.stats.new_objects += 1
                    return obj
            try:
                planned = self.planned.get(obj)
                if planned is not None:  # to be claimed after the sync: its inode is the object
                    ofd = os.open(planned, _FILE_FLAGS, dir_fd=self.hashed_fd)
                else:
                    ofd = os.open(obj, _FILE_FLAGS, dir_fd=ffd)
            except FileNotFoundError:
                ofd = None
            if ofd is not None:
                try:
                    ost = os.fstat(ofd)
                    if (ost.st_dev, ost.st_ino) == (st.st_dev, st.st_ino):
                        return obj  # already the object (a rerun after a crash)
                    if hardlinked or not _same_inode_metadata(ost, st):
                        return None  # a hardlink of the layer, or an object changed behind lamina's back
                    if not _same_xattrs(ofd, xattrs):
                        # the name's metadata key covers xattrs through 64 bits of blake3 only: an
                        # image must not give another image's file xattrs (a security.capability)
                        # by finding ones whose key is that file's
                        return None
                    if planned is None and not self.holds_same_bytes(ofd, fd, hold, st.st_size):
                        # its name says what it held when it was made: written through `unpack
                        # --link` with its mtime put back, it must not give this image its bytes
                        # (the file stays private; fsck names the object)
                        return None
                    if fd is not None:
                        # Close the file first: the rename then frees its inode at once, instead of
                        # putting it on the filesystem's orphan list until the close.
                        os.close(fd[0])
                        fd[0] = -1
                    if not self.swap(dfd, name, ofd):
                        return None
                finally:
                    os.close(ofd)
                self.stats.linked += 1
                self.stats.linked_bytes += st.st_size
                return obj
            if hardlinked:
                return None
            if self.reflink:
                self.clone_from_sibling(dfd, name, st, digest, ffd, xattrs)
            if self.defer:
                return obj if self.plan(obj, fd, hold, st) else None
            try:
                if hold is not None:
                    if not _rename_noreplace(self.hashed_fd, hold, ffd, obj):
                        continue
                    self.held.remove(st.st_ino)
                else:
                    os.link(f"/proc/self/fd/{fd[0]}", obj, dst_dir_fd=ffd, follow_symlinks=True)
            except FileExistsError:
                continue
            except OSError as e:
                if e.errno != errno.EMLINK:
                    raise
                return None
            self.stats.new_objects += 1
            return obj
        raise StoreError(f"object {obj}: keeps appearing and disappearing; is gc running without its lock?")

    def holds_same_bytes(self, ofd, fd, hold, size):
        """True if the object open as ``ofd`` holds this file's bytes (the file open as ``fd[0]``,
        or named ``hashed/<hold>``)."""
        ffd = fd[0] if fd is not None else os.open(hold, _FILE_FLAGS, dir_fd=self.hashed_fd)
        try:
            return _same_bytes(ofd, ffd, size)
        finally:
            if fd is None:
                os.close(ffd)

    def name_holds_same_bytes(self, ofd, dfd, name, st):
        """holds_same_bytes() for the snapshot's ``name`` (lstat ``st``): a regular file, that inode."""
        if not stat.S_ISREG(st.st_mode):
            return False
        ffd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
        try:
            return os.fstat(ffd).st_ino == st.st_ino and _same_bytes(ofd, ffd, st.st_size)
        finally:
            os.close(ffd)

    def swap(self, dfd, name, ofd):
        """Replace the snapshot's ``name`` by a hardlink to the object open as ``ofd``, atomically.
        The directory keeps the time the layer gave it: the rename moves it to now, which every
        other path (dir unpack, the overlay format, umoci) would not show."""
        before = os.fstat(dfd)
        tmp = f"{os.getpid()}-{secrets.token_hex(8)}"
        try:
            os.link(f"/proc/self/fd/{ofd}", tmp, dst_dir_fd=self.stage_fd, follow_symlinks=True)
        except OSError as e:
            if e.errno in (errno.EMLINK, errno.ENOENT):  # link limit, or the object was just unlinked
                return False
            raise
        try:
            try:
                os.rename(tmp, name, src_dir_fd=self.stage_fd, dst_dir_fd=dfd)
            except PermissionError:
                # without root, a directory the layer made read-only (0555, 0500) is opened to
                # its owner (this user) for the rename, then given its mode back
                mode = stat.S_IMODE(before.st_mode)
                os.chmod(dfd, mode | 0o300)
                try:
                    os.rename(tmp, name, src_dir_fd=self.stage_fd, dst_dir_fd=dfd)
                finally:
                    os.chmod(dfd, mode)
        except BaseException:
            os.unlink(tmp, dir_fd=self.stage_fd)
            raise
        os.utime(dfd, ns=(before.st_atime_ns, before.st_mtime_ns))
        return True

    def clone_from_sibling(self, dfd, name, st, digest, ffd, xattrs):
        """Share data blocks with an object of the same content and other metadata, if the fs can."""
        if st.st_mode & _PRIVILEGED_MODE or any(n == _CAPABILITY_XATTR for n, _ in xattrs) or st.st_size == 0:
            return
        siblings = [n for n in os.listdir(ffd) if n.startswith(digest)]
        if not siblings:
            return
        try:
            src = os.open(siblings[0], _FILE_FLAGS, dir_fd=ffd)
        except FileNotFoundError:
            return
        try:
            wfd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except PermissionError:
            os.close(src)
            return
        try:
            if os.fstat(wfd).st_ino != st.st_ino or os.fstat(src).st_size != st.st_size:
                return
            rfd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
            try:
                # a sibling changed behind lamina's back must not give its blocks to this file
                if os.fstat(rfd).st_ino != st.st_ino or not _same_bytes(src, rfd, st.st_size):
                    return
            finally:
                os.close(rfd)
            try:
                fcntl.ioctl(wfd, FICLONE, src)
            except OSError as e:
                if e.errno in _NOT_SUPPORTED:
                    self.reflink = False  # same filesystem for the whole pass: stop trying
                    return
                raise
            os.utime(wfd, ns=(st.st_atime_ns, st.st_mtime_ns))  # cloning into a file touches its mtime
            self.stats.reflinked += 1
            self.stats.reflinked_bytes += st.st_size
        finally:
            os.close(wfd)
            os.close(src)


def _open_dir(root_fd, rel):
    """A directory below ``root_fd`` (``rel``: '/'-separated, '' for the root itself), one
    component at a time, never following a link."""
    fd = os.dup(root_fd)
    for part in filter(None, rel.split("/")):
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def _same_bytes(fa, fb, size):
    """Both open files hold the same ``size`` bytes (and no more)."""
    off = 0
    while off < size:
        n = min(_COMPARE_CHUNK, size - off)
        a = os.pread(fa, n, off)
        if not a or a != os.pread(fb, len(a), off):
            return False
        off += len(a)
    return not os.pread(fa, 1, size) and not os.pread(fb, 1, size)


def _same_xattrs(fd, xattrs):
    return sorted(_xattrs(fd)) == sorted(xattrs)


def _same_inode_metadata(a, b):
    return (a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns, a.st_size) == (b.st_mode, b.st_uid, b.st_gid,
                                                                        b.st_mtime_ns, b.st_size)


def dedup_snapshot(paths, snapshot_dir, reflink=True, sync=None, tree_final=None):
    """Share the regular files of ``snapshot_dir/fs`` with the store's objects; write its file list.

    The caller holds the snapshot's lock (or owns ``snapshot_dir``, e.g. a ``.tmp-`` snapshot
    not renamed into place yet) and the gc lease.  Idempotent: a rerun after a crash finishes
    the job.  Returns DedupStats.

    ``sync``: the snapshot is a temp dir whose files are not on disk yet (snapshots.ensure
    passes its syncfs).  Duplicates are swapped for objects first, and their extractor names
    dropped, so the sync never writes their data (on ext4 that write and sync was most of the
    cost of a rebuilt image); then ``sync()`` runs, and only then do this snapshot's own
    inodes become objects, so no object name can outlive its data in a power cut.  A crash
    before the snapshot is committed leaves a temp dir, removed by the next extraction, and
    at most objects nothing uses (gc).

    ``tree_final()`` (with ``sync``): called once the pass changes no name of ``fs/`` any more
    (the swaps and reflinks are done; claim() renames names in hashed/ only), before the sync:
    the layers above may read the tree from then on.  Not before: a swap's rename moves its
    directory's mtime until the pass puts it back, and a layer above copying that directory
    up meanwhile would keep the wrong time.  (share_lost() still swaps after the claim, when
    another process made one of this pass's new objects in between: rare, and left as is.)
    """
    start = time.perf_counter()
    p = _Pass(paths, snapshot_dir, reflink, defer=sync is not None)
    try:
        stats = p.run()
        stats.plan_seconds = time.perf_counter() - start
        if sync is not None:
            p.drop_held(rmdir=False)
            # The lists are final already (claim changes which inode a name has, not its object),
            # and the sync covers them: written now, while the other layers of the pull may still
            # be extracting, rather than after the wait, with fsyncs of their own.  A crash
            # before the commit drops the temp dir, lists and all.
            write_file_list(p.snapshot_dir, p.files, durable=False)
            if tree_final is not None:
                tree_final()
            t = time.perf_counter()
            sync()
            stats.sync_seconds = time.perf_counter() - t
            t = time.perf_counter()
            p.claim()
            stats.claim_seconds = time.perf_counter() - t
        # Before the list of a snapshot in place: once that list exists the pass never reruns,
        # and a name left in hashed/ would keep a replaced inode alive for good.
        p.drop_held()
        if sync is None:
            # No syncfs: a swap lost in a power cut leaves the name on its original inode, with the
            # same bytes and metadata; the list then calls it shared when it is not, which costs
            # nothing but a missed saving (singletons() stays true: it was alone on its inode).
            write_file_list(p.snapshot_dir, p.files)
    finally:
        p.close()
    stats.seconds = time.perf_counter() - start
    stats.finish_seconds = stats.seconds - stats.plan_seconds - stats.sync_seconds - stats.claim_seconds
    return stats


def drop_hashed(snapshot_dir):
    """Remove the extractor's ``hashed/`` names of a snapshot that will not be deduplicated."""
    from ..tree import remove_tree
    path = os.path.join(snapshot_dir, HASHED)
    if os.path.isdir(path):
        remove_tree(path)


def is_deduplicated(snapshot_dir):
    return os.path.exists(os.path.join(snapshot_dir, FILES_LIST))


def singletons(snapshot_dir):
    """Paths (relative to fs/) of the snapshot's files that share an object inode.

    Each was alone on its inode in the layer, so when flattening, a name from this set must
    never be hardlinked to another name with the same inode (that is sharing, not a hardlink
    of the image).  Every other inode of the snapshot is private to it, so grouping those by
    inode still finds exactly the layer's hardlinks.  Empty for a snapshot not deduplicated.
    """
    return frozenset(e.path for e in read_file_list(snapshot_dir) or () if e.object is not None)


def object_inodes(snapshot_dir):
    """The inode numbers of the objects a snapshot's files share, in no order (an array of 'Q').

    What the flattener needs of singletons(): a name of the snapshot on an object's inode shares
    it through file dedup (the pass links only names alone on their inode to an object), any
    other inode is the layer's own.  8 bytes an object, where the set of paths took ~1 KB a
    file (300k files in a snapshot: 250 MiB for a flatten copy)."""
    inodes = array.array("Q")
    fd = _open_objects_fanout(os.path.dirname(os.path.dirname(os.fspath(snapshot_dir))))
    if fd is None:
        return inodes
    try:
        for key in iter_object_keys(snapshot_dir):
            name = _object_name(key)
            try:
                inodes.append(os.stat(f"{name[:2]}/{name}", dir_fd=fd, follow_symlinks=False).st_ino)
            except FileNotFoundError:
                continue  # gone (gc of an unused object, fsck --repair): no name of ours is on it
    finally:
        os.close(fd)
    return inodes


def _open_objects_fanout(root):
    """An fd of ``objects/blake3`` of the store at ``root``, None if there is none."""
    try:
        return os.open(os.path.join(root, "objects", "blake3"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _object_size(fd, key):
    """Bytes on disk of the object of a 40-byte key, below ``fd`` (_open_objects_fanout); 0 if
    it is gone."""
    if fd is None:
        return 0
    name = _object_name(key)
    try:
        return os.stat(f"{name[:2]}/{name}", dir_fd=fd, follow_symlinks=False).st_blocks * 512
    except OSError:
        return 0


# --- objects: listing, gc, fsck, usage ------------------------------------------------------------

@dataclass
class ObjectInfo:
    name: str
    size: int        # bytes on disk (st_blocks)
    names: int       # hardlinks besides the object's own name (snapshot names, --link copies)


def iter_objects(paths, strays=None):
    """ObjectInfo of every well-named object, each fan-out directory read as a stream (a list of
    them all took ~300 B an object, a list of one directory's names 1/256th of that: fsck, gc
    and system df walk this); ``strays`` (a list, or None for gc and system df, which only skip
    them) gets the (relative path, why) of the names that are not objects."""
    root = objects_dir(paths) / "blake3"
    try:
        subs = sorted(os.listdir(root))
    except FileNotFoundError:
        return
    for sub in subs:
        try:
            entries = os.scandir(root / sub)
        except NotADirectoryError:
            if strays is not None:
                strays.append((f"blake3/{sub}", "not a directory"))
            continue
        with entries:
            for e in entries:
                st = e.stat(follow_symlinks=False)
                if not _OBJECT_RE.fullmatch(e.name) or e.name[:2] != sub or not stat.S_ISREG(st.st_mode):
                    if strays is not None:
                        strays.append((f"blake3/{sub}/{e.name}", "not an object (bad name or type)"))
                    continue
                yield ObjectInfo(e.name, st.st_blocks * 512, st.st_nlink - 1)


def stage_debris(paths):
    try:
        return sorted(os.listdir(stage_dir(paths)))
    except FileNotFoundError:
        return []


@dataclass
class ObjectGC:
    # counted, not listed: a prune after the last image of a big layer went frees hundreds
    # of thousands of objects, and a list of their names took ~200 B each (issue 14)
    objects: int = 0     # objects removed (or that would be)
    reclaimed: int = 0   # their bytes on disk
    stage: int = 0


def collect(paths, dry_run=False):
    """Remove objects no snapshot uses any more and stage debris. The caller holds the gc lock."""
    result = ObjectGC()
    for o in iter_objects(paths):
        if o.names == 0:
            if not dry_run:
                try:
                    os.unlink(object_path(paths, o.name))
                except FileNotFoundError:
                    continue
            result.objects += 1
            result.reclaimed += o.size
    for n in stage_debris(paths):
        if not dry_run:
            try:
                os.unlink(stage_dir(paths) / n)
            except FileNotFoundError:
                continue
        result.stage += 1
    return result


def verify_object(paths, name):
    """None if the object hashes to its name and its metadata to its key, else what is wrong."""
    m = _OBJECT_RE.fullmatch(name)
    fd = os.open(object_path(paths, name), _FILE_FLAGS)
    try:
        st = os.fstat(fd)
        digest, _ = _hash_fd(fd)
        if digest != m.group(1):
            return f"content changed (blake3 {digest})"
        if metadata_key(st, _xattrs(fd)) != m.group(2):
            return "inode metadata changed (mode, owner, mtime or xattrs)"
    finally:
        os.close(fd)
    return None


def check(store, report, repair):
    """fsck for objects and file lists; adds Findings to ``report`` (store.fsck calls it).

    Repairs (under the gc lock): unused objects, stray names and stage debris are removed;
    a changed object loses its name (no new snapshot will share it); the snapshots sharing
    it are named in the finding, and fsck's own snapshot check (which runs first) finds
    them different from their layer and re-extracts them.  An unreadable file list is
    removed (the next use of the snapshot deduplicates it again).
    """
    from . import snapshots as _snapshots
    paths = store.paths
    changed = {}
    report.checked["objects"] = 0
    for o in iter_objects(paths, _StrayFindings(paths, report, repair)):
        report.checked["objects"] += 1
        problem = verify_object(paths, o.name)
        if problem:
            changed[o.name] = (o, problem)
        elif o.names == 0:
            f = report.add("warning", "unused-object", o.name, f"object {o.name}: not used by any snapshot")
            _fix(f, repair, lambda o=o: os.unlink(object_path(paths, o.name)))
    users = {}
    for chain in _snapshots.list_chain_ids(paths):
        sdir = paths.snapshot(chain)
        for n in _temp_files(sdir):
            f = report.add("warning", "stale-temp", n, f"snapshots/{sdir.name}/{n}: left by an interrupted "
                           "dedup pass or compaction")
            _fix(f, repair, lambda n=n, sdir=sdir: os.unlink(sdir / n))
        entries = iter_file_list(sdir)   # streamed: a snapshot's whole list took ~1 KB a file
        found = {}
        try:
            for e in entries or ():
                if e.object in changed:
                    where = found.setdefault(e.object, [])
                    if len(where) < USERS_NAMED:
                        where.append(f"{chain} ({e.path})")
        except StoreError as e:
            f = report.add("error", "bad-file-list", chain, str(e))
            _fix(f, repair, lambda sdir=sdir: _drop_lists(sdir))
            continue
        if entries is not None and os.path.isdir(os.path.join(sdir, HASHED)):
            # the pass removes hashed/ before it writes the list; names left there keep inodes alive
            f = report.add("warning", "stale-hashed", chain, f"snapshots/{sdir.name}/{HASHED}: left after "
                           "the dedup pass")
            _fix(f, repair, lambda sdir=sdir: drop_hashed(sdir))
        for name, where in found.items():
            users.setdefault(name, []).extend(where)
    for name, (o, problem) in sorted(changed.items()):
        where = f"shared by snapshot {_some(users[name], o.names)}" if name in users else f"{o.names} name(s) use it"
        f = report.add("error", "bad-object", name, f"object {name}: {problem}; {where}")
        _fix(f, repair, lambda name=name: os.unlink(object_path(paths, name)))
    for n in stage_debris(paths):
        f = report.add("warning", "object-stage", n, f"objects/stage/{n}: left by an interrupted dedup")
        _fix(f, repair, lambda n=n: os.unlink(stage_dir(paths) / n))


# A changed object's finding names this many of the snapshot files using it: an object of a
# common file (an empty one) is used by thousands, and the finding was a line of all of them.
USERS_NAMED = 5


def _some(where, names):
    """The first USERS_NAMED of ``where`` (snapshot files using an object of ``names`` names)."""
    more = names - len(where) if len(where) >= USERS_NAMED else 0
    return ", ".join(where[:USERS_NAMED]) + (f" and {more} more name(s)" if more > 0 else "")


class _StrayFindings:
    """iter_objects' ``strays``: each reported (and with --repair removed) as it is met, not
    listed until the walk ends (a name per stray: a store's worth of them is unbounded)."""
    def __init__(self, paths, report, repair):
        self.paths, self.report, self.repair = paths, report, repair

    def append(self, stray):
        rel, why = stray
        f = self.report.add("warning", "stray-object", rel, f"objects/{rel}: {why}")
        _fix(f, self.repair, lambda: os.unlink(objects_dir(self.paths) / rel))


def _drop_lists(snapshot_dir):
    """Forget a snapshot's dedup pass (its next use runs it again and writes both lists)."""
    os.unlink(os.path.join(snapshot_dir, FILES_LIST))
    try:
        os.unlink(os.path.join(snapshot_dir, OBJECTS_LIST))
    except FileNotFoundError:
        pass


def _temp_files(snapshot_dir):
    """Temp files of the file list and the sidecar (``<name>.tmp-<pid>-<random>``, fsutil.tmp_name)."""
    from .sidecar import SIDECAR
    try:
        names = os.listdir(snapshot_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if n.startswith((f"{FILES_LIST}.tmp-", f"{OBJECTS_LIST}.tmp-", f"{SIDECAR}.tmp-")))


def _fix(finding, repair, action):
    if not repair:
        return
    try:
        action()
        finding.repaired = True
    except OSError as e:
        finding.message += f"; repair failed: {e}"


# --- what sharing saves, and who has a file ---------------------------------------------------------

@dataclass
class FileUsage:
    objects: int = 0
    shared_objects: int = 0       # used by more than one name
    size: int = 0                 # bytes on disk of all objects (each counted once)
    logical: int = 0              # what the names would take without sharing
    unused: int = 0               # bytes of objects nothing uses (gc removes them)

    @property
    def saved(self):
        return self.logical - self.size + self.unused


def usage(paths):
    u = FileUsage()
    for o in iter_objects(paths):
        u.objects += 1
        u.size += o.size
        u.logical += o.size * o.names
        if o.names > 1:
            u.shared_objects += 1
        if o.names == 0:
            u.unused += o.size
    return u


def shared_file_bytes(store, images):
    """{manifest digest: bytes on disk of the image's files that another image shares}, at file level.

    Only layers no other image uses are looked at (a layer several images use is shared as a
    whole, docker's way).  In those, a file counts as shared when its object is also used by a
    snapshot of another image; each object counts once per image, at its size on disk.  An
    image's UNIQUE SIZE is then what removing it alone would free.

    Every snapshot's objects are grouped by key in bounded memory (KeyGroups: about 3 MiB
    held, the rest in a temp file), each record a key and the index of a snapshot using it.
    """
    from .keygroups import KeyGroups
    digests = list(dict.fromkeys(img.manifest_digest for img in images))
    number = {d: i for i, d in enumerate(digests)}
    layer_users = {}   # chain -> indexes of the images whose layers include it
    for img in images:
        for c in img.chain_ids:
            layer_users.setdefault(c, set()).add(number[img.manifest_digest])
    chains = list(layer_users)
    users = [frozenset(layer_users[c]) for c in chains]
    totals = [0] * len(digests)
    broken = set()
    with KeyGroups(_OBJECT_BYTES, 4, scratch_dir=store.paths.ingest) as groups:
        for n, chain in enumerate(chains):
            tag = n.to_bytes(4, "little")
            try:
                groups.add_all(iter_object_keys(store.paths.snapshot(chain)), tag)
            except StoreError:
                broken.add(tag)  # an unreadable list: no file-level sharing known (fsck reports it)
        fd = _open_objects_fanout(store.paths.root)
        try:
            for key, tags in groups.groups():
                if len(tags) < 2:
                    continue  # one snapshot's: shared only if that layer is, and that counts whole
                using = [users[int.from_bytes(t, "little")] for t in tags - broken]
                own = {i for u in using if len(u) == 1 for i in u}   # images with it in a layer of their own
                if own and len(frozenset().union(*using)) > 1:
                    size = _object_size(fd, key)
                    for i in own:
                        totals[i] += size
        finally:
            if fd is not None:
                os.close(fd)
    return dict(zip(digests, totals))


def find_files(store, blake3=None, path=None):
    """[(image, chainID, FileEntry)] of the files with this content and/or path in the images of the store.

    ``path`` is matched against the path in the layer (leading '/' optional).
    """
    from ..apiargs import a_name
    for what, v, kind in (("blake3", blake3, "a BLAKE3 digest in hex"), ("path", path, "a path in the layers")):
        if v is not None:
            # path=5 failed with "'int' object has no attribute 'lstrip'", blake3=5 matched nothing
            a_name(v, f"find_files: {what}", f"{kind} (a str)")
    if blake3 is None and path is None:
        raise ValueError("give blake3, path or both")
    want_path = path.lstrip("/") if path is not None else None
    lists = {}
    out = []
    for image in store.images(skip_broken=True):
        for chain in image.chain_ids:
            if chain not in lists:
                lists[chain] = read_file_list(store.paths.snapshot(chain)) or []
            for e in lists[chain]:
                if (blake3 is None or e.blake3 == blake3) and (want_path is None or e.path == want_path):
                    out.append((image, chain, e))
    return out
