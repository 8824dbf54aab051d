"""Where blobs come from: an image-layout directory or members of a tar archive.

Both stores hand out independent file objects, so layers can be read by
several threads at once (overlay unpack applies layers in parallel).
"""
from __future__ import annotations

import bisect
import contextlib
import errno
import io
import itertools
import os
import posixpath
import re
import stat
import tarfile
import tempfile
import threading
import weakref
import zlib

from .. import digest as _digest
from .._extract import header_number, header_prefix
from ..compression import decompress_errors
from ..errors import BlobNotFoundError, DigestMismatchError, ImageError
from ..limits import DEFAULT_LIMITS

# Manifests and configs are read into memory; a descriptor pointing at a
# multi-GB layer must not be slurped. Real ones are a few KB (configs with
# long histories reach a few hundred KB).  16 MiB: a layout's index.json and
# oci-layout, an archive's manifest.json (a store's index.json names every image).
MAX_DOCUMENT_SIZE = 16 << 20


def read_verified(fileobj, digest, size, what, limit=MAX_DOCUMENT_SIZE):
    """Read a small blob fully and check its size and digest."""
    if size is not None and size > limit:
        raise ImageError(f"{what}: {size} bytes is larger than the {limit}-byte limit for a JSON document")
    data = fileobj.read(limit + 1)
    if len(data) > limit:
        raise ImageError(f"{what}: larger than the {limit}-byte limit for a JSON document")
    if size is not None and len(data) != size:
        raise ImageError(f"{what}: blob is {len(data)} bytes but its descriptor says {size}")
    actual = _digest.sha256_bytes(data)
    if digest is not None and actual != digest:
        raise DigestMismatchError(what, digest, actual)
    return data


def open_regular(path, what, dir_fd=None):
    """An fd of the regular file at ``path`` (an archive, or a name relative to ``dir_fd``), None if
    there is none; anything else there (a FIFO, a device, a directory) is an ImageError."""
    try:
        # O_NONBLOCK so a FIFO planted in a layout cannot hang us; no effect on regular files.
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (os.O_NOFOLLOW if dir_fd is not None else 0)
        fd = os.open(path, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP and dir_fd is not None:
            raise ImageError(f"{what} is a symlink: lamina does not follow symlinks inside a layout") from None
        try:  # a socket cannot be opened at all (ENXIO, "No such device or address"): say what it is
            mode = os.stat(path, dir_fd=dir_fd, follow_symlinks=dir_fd is None).st_mode
        except OSError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            raise ImageError(f"{what} is not a regular file ({_file_kind(mode)})") from None
        raise ImageError(f"{what}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ImageError(f"{what} is not a regular file ({_file_kind(mode)})")
    return fd


def _file_kind(mode):
    """What a file that is not a regular file is, in words."""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return kind
    return f"of type {stat.S_IFMT(mode):o}"


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_in_layout(root, relpath, what):
    """``open_regular`` of ``relpath`` (``index.json``, ``blobs/sha256/<hex>``) inside the layout
    directory ``root``, every component opened without following a symlink: a layout's blob,
    index.json or ``blobs/sha256`` that is a symlink (to /etc/shadow, to /dev/zero, anywhere
    outside the layout) is refused, as is one that is not a regular file; None if absent."""
    *dirs, name = relpath.split("/")
    fds = []
    try:
        fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))  # the path the user named
        for i, d in enumerate(dirs):
            try:
                fds.append(os.open(d, _DIR_FLAGS, dir_fd=fds[-1]))
            except FileNotFoundError:
                return None
            except OSError as e:
                sub = f"{root}/{'/'.join(dirs[:i + 1])}"
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    # O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR: look at what it is
                    is_link = stat.S_ISLNK(os.stat(d, dir_fd=fds[-1], follow_symlinks=False).st_mode)
                    kind = "a symlink" if is_link else "not a directory"
                    raise ImageError(f"{what}: {sub} is {kind} (lamina does not follow symlinks inside a "
                                     "layout)") from None
                raise ImageError(f"{what}: {sub}: {e.strerror}") from None
        return open_regular(name, what, fds[-1])
    finally:
        for fd in fds:
            os.close(fd)


class BlobStore:
    """Content-addressed blobs: ``open(digest)`` and ``size(digest)``."""

    name = "?"

    def open(self, digest):
        raise NotImplementedError

    def size(self, digest):
        raise NotImplementedError

    def read(self, desc, what, limit=MAX_DOCUMENT_SIZE):
        with self.open(desc.digest) as f:
            return read_verified(f, desc.digest, desc.size, what, limit)

    def close(self):
        pass


class DirBlobStore(BlobStore):
    """``blobs/sha256/<hex>`` files of an OCI image-layout directory."""

    def __init__(self, root):
        self.root = os.fspath(root)
        self.name = self.root

    def _stat_open(self, digest):
        fd = open_in_layout(self.root, _digest.blob_relpath(digest), f"blob {digest} in {self.root}")
        if fd is None:
            raise BlobNotFoundError(f"blob {digest} not found in {self.root}")
        return fd, os.fstat(fd).st_size

    def open(self, digest):
        fd, _ = self._stat_open(digest)
        return os.fdopen(fd, "rb")

    def size(self, digest):
        fd, size = self._stat_open(digest)
        os.close(fd)
        return size


class _Section(io.RawIOBase):
    """A byte range of a file, read with pread on a private fd.

    No fileno(): a reader must not mistake the whole archive for the member.
    """

    def __init__(self, path, offset, size, fd=None):
        self._fd = _open_archive(path) if fd is None else os.dup(fd)
        self._start, self._end, self._pos = offset, offset + size, offset

    def readable(self):
        return True

    def readinto(self, buf):
        n = min(len(buf), self._end - self._pos)
        if n <= 0:
            return 0
        data = os.pread(self._fd, n, self._pos)
        if not data:
            raise ImageError("archive member is truncated")
        buf[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self):
        if not self.closed:
            os.close(self._fd)
        super().close()


class _Checkpoints:
    """Places where inflating a gzip-compressed archive can start again: (uncompressed offset,
    zlib inflater, compressed input not yet inflated, file offset of the input after it).

    Every member read used to inflate the archive from its start: for an archive whose
    manifest lists a layer near its end N times (or N layers), N times the archive, hours for
    a few MiB of gzip.  A read now starts at the nearest checkpoint at or before its member;
    one is made where each read reached its member and where it stopped (and every 4 MiB of a
    skip), so reading the layers in any order, or one layer again, inflates about the
    archive once.  zlib, not ISA-L: only zlib's inflater state can be copied."""

    MAX = 512        # each holds a 32 KiB window and up to one input chunk: 25 MiB at most
    SPACING = 4 << 20

    def __init__(self):
        self._lock = threading.Lock()
        self._offsets, self._states = [0], [(zlib.decompressobj(31), b"", 0)]

    def nearest(self, offset):
        with self._lock:
            k = bisect.bisect_right(self._offsets, offset) - 1
            d, pending, raw = self._states[k]
            return self._offsets[k], d.copy(), pending, raw

    def add(self, offset, d, pending, raw):
        with self._lock:
            k = bisect.bisect_left(self._offsets, offset)
            if len(self._offsets) >= self.MAX or (k < len(self._offsets) and self._offsets[k] == offset):
                return
            self._offsets.insert(k, offset)
            self._states.insert(k, (d.copy(), pending, raw))


class _GzipMember(io.RawIOBase):
    """``size`` bytes at uncompressed ``offset`` of a gzip-compressed archive (see _Checkpoints)."""

    _CHUNK = 1 << 14

    def __init__(self, path, checkpoints, offset, size, what):
        self._fd = _open_archive(path)
        self._checkpoints, self._what = checkpoints, what
        try:
            self._pos, self._d, self._in, self._raw = checkpoints.nearest(offset)
            mark = self._pos
            while self._pos < offset:
                if not self._inflate(min(offset - self._pos, 1 << 18)):
                    raise ImageError(f"{what} is truncated")
                if self._pos - mark >= checkpoints.SPACING:
                    mark = self._pos
                    self._checkpoint()
            self._checkpoint()
        except BaseException:
            os.close(self._fd)
            raise
        self._end = offset + size

    def _checkpoint(self):
        self._checkpoints.add(self._pos, self._d, self._in, self._raw)

    def _inflate(self, n):
        """Up to ``n`` bytes from the current offset; b"" at the end of the archive."""
        try:
            while True:
                if not self._in:
                    self._in = os.pread(self._fd, self._CHUNK, self._raw)
                    self._raw += len(self._in)
                    if not self._in:
                        return b""
                if self._d.eof:  # gzip members concatenate (gzip -c a b); zero bytes may pad the end
                    if not self._in.strip(b"\0"):
                        self._in = b""
                        continue
                    self._d = zlib.decompressobj(31)
                out = self._d.decompress(self._in, n)
                self._in = self._d.unused_data if self._d.eof else self._d.unconsumed_tail
                if out:
                    self._pos += len(out)
                    return out
        except zlib.error as e:
            raise ImageError(f"{self._what}: {e}") from None

    def readable(self):
        return True

    def readinto(self, buf):
        n = min(len(buf), self._end - self._pos)
        if n <= 0:
            return 0
        data = self._inflate(n)
        if not data:
            raise ImageError(f"{self._what} is truncated")
        buf[:len(data)] = data
        return len(data)

    def close(self):
        if not self.closed:
            self._checkpoint()
            os.close(self._fd)
        super().close()


def _open_gzip(f):
    try:
        from isal import igzip  # ISA-L: several times faster than zlib for this
        return igzip.open(f, "rb")
    except ImportError:
        import gzip
        return gzip.open(f, "rb")


def _open_archive(path):
    """An fd of the archive at ``path``, read at random and so a regular file: a FIFO there (or
    put there between two reads) is refused at once, never waited on."""
    fd = open_regular(path, path)
    if fd is None:
        raise ImageError(f"{path}: no such file")
    return fd


# Compressions docker load (DecompressStream) and skopeo (AutoDecompress) take an archive in
# besides gzip.  Their streams cannot be restarted part-way as zlib's can (_Checkpoints), so the
# archive is inflated once, as it is indexed, into an unnamed temporary file and read from there,
# as skopeo reads every compressed archive.  bzip2's magic is checked up to its block's, so a
# plain tar whose first member is named "BZh..." stays a plain tar.
_SPILLED = (("zstd", re.compile(rb"\x28\xb5\x2f\xfd")), ("xz", re.compile(rb"\xfd7zXZ\x00")),
            ("bzip2", re.compile(rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)")))


def _spilled_compression(head):
    return next((name for name, magic in _SPILLED if magic.match(head)), None)


def _open_spilled(f, compression):
    if compression == "zstd":   # as a layer is read: a cut frame is "truncated", not the end
        from ..compression import open_decompressed
        return open_decompressed(f, "zstd", "")
    if compression == "xz":
        import lzma
        return lzma.open(f, "rb")
    import bz2
    return bz2.open(f, "rb")


class _Spilling(io.RawIOBase):
    """The inflated archive, read once as a stream by the index pass and written as it goes to
    ``fd``, so that a member's offset in the stream is its offset in the file.  Chunks of zeros
    are left as holes (``end()`` sets the length): a few KiB of zstd inflate to terabytes of them."""

    def __init__(self, stream, fd, what, where):
        self._stream, self._fd, self._what, self._where = stream, fd, what, where
        self._pos = 0

    def readable(self):
        return True

    def readinto(self, buf):
        try:
            n = self._stream.readinto(buf)
        except (OSError, EOFError, ValueError) as e:
            raise ImageError(f"{self._what}: {e}") from None
        except Exception as e:
            if type(e).__name__ not in ("ZstdError", "LZMAError"):
                raise
            raise ImageError(f"{self._what}: {e}") from None
        data = memoryview(buf)[:n].tobytes()
        if data.count(0) != n:
            try:
                done = 0
                while done < n:
                    done += os.pwrite(self._fd, data[done:], self._pos + done)
            except OSError as e:
                raise ImageError(f"{self._what}: cannot inflate it into a temporary file in "
                                 f"{self._where}: {e.strerror}") from None
        self._pos += n
        return n

    def end(self):
        os.ftruncate(self._fd, self._pos)


class _ArchiveTooBig(Exception):
    """An archive whose headers would take more memory to index than any real one."""


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a member's extended headers (PAX, GNU long names) and sparse map into memory
    whole before it returns the member: a few KiB of gzip can say gigabytes.  Bounded here, by the
    extractor's own limit for one header; a sparse map that continues past the header (GNU
    extension blocks, PAX 1.0 maps) is not read at all: no member lamina reads is sparse."""

    MAX_RUN = 32   # extended headers for one member (tarfile recurses once per header)

    @classmethod
    def fromtarfile(cls, tar):
        offset = tar.fileobj.tell()
        try:
            return super().fromtarfile(tar)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as e:
            # tarfile takes a damaged header after the first for the end of the archive and
            # reads no further; Go's archive/tar (docker load, skopeo) fails there, and so must we
            raise tarfile.TarError(f"{e} at offset {offset}") from None

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        # tarfile puts the 155 bytes at 345 before the name whatever the magic: GNU tar's atime
        # and ctime ('00000001234/manifest.json'), a v7 header's padding.  docker load and skopeo
        # read the archive with Go's archive/tar, as the extractor reads layers: its prefix.
        obj = super().frombuf(buf, encoding, errors)
        # tarfile reads a number up to its first NUL (NULs then digits: a size of 0, the data
        # then read as headers); Go, and so the extractor, skip leading NULs and spaces
        try:
            obj.size = header_number(buf[124:136])
        except ValueError as e:
            raise tarfile.TarError(f"member {tarfile.nts(buf[0:100], encoding, errors)!r}: size: {e}") from None
        name = tarfile.nts(buf[0:100], encoding, errors)
        if obj.isdir():
            name = name.rstrip("/")
        prefix = header_prefix(buf)
        obj.name = tarfile.nts(prefix, encoding, errors) + "/" + name if prefix else name
        return obj

    def _apply_pax_info(self, pax_headers, encoding, errors):
        # tarfile takes a PAX number int() refuses for 0, and int() refuses more than 4300 digits
        # however many are leading zeros: a blob's "size=000...2048" made its size 0 and its data
        # the next headers, so lamina read the members of a layer (a manifest.json among them)
        # where docker load and skopeo (Go) read the archive's own.  Read as Go and the
        # extractor read it, or refused.
        for key, value in pax_headers.items():
            _check_go_pax_nul(key, value, self.name)
        # The first call is _proc_builtin's (global records: none, lamina applies none), then one
        # per PAX header, innermost (the last in the archive) first.  Go, GNU tar, bsdtar and the
        # extractor take the last of two PAX headers in a row; tarfile applied the first over it
        calls = self._lamina_pax_calls = getattr(self, "_lamina_pax_calls", 0) + 1
        if calls > 2:
            return
        # A name two records give differently is refused, as the extractor refuses it: tarfile
        # takes GNU.sparse.name (and .realsize for the size) on any member, Go on a sparse one
        # only, and a PAX path over the GNU long name after it, where Go takes the long name;
        # image A's manifest.json was renamed away and B's notes.json renamed manifest.json
        if not _go_sparse(pax_headers):
            sparse_name = pax_headers.get("GNU.sparse.name")
            if sparse_name is not None and sparse_name.rstrip("/") != pax_headers.get("path", self.name).rstrip("/"):
                raise tarfile.TarError(f"member {self.name!r}: GNU.sparse.name {sparse_name!r} on a member "
                                       f"that is not sparse")
            pax_headers = {k: v for k, v in pax_headers.items() if k not in ("GNU.sparse.name", "GNU.sparse.realsize")}
        for key, field in (("path", "_lamina_longname"), ("linkpath", "_lamina_longlink")):
            _same_name(self, key, pax_headers.get(key), getattr(self, field, None))
        numbers = {}
        for key in ("size", "uid", "gid"):
            value = pax_headers.get(key)
            if value is None:
                continue
            if value == "":  # an empty record unsets its key: the header's number stands (Go)
                numbers[key] = getattr(self, key)
                continue
            digits = value.lstrip("0")
            if not (value.isascii() and value.isdigit()) or len(digits) > 19:
                raise tarfile.TarError(f"member {pax_headers.get('path', self.name)!r}: invalid PAX {key} "
                                       f"{value[:40]!r}")
            numbers[key] = int(digits or "0")
        super()._apply_pax_info(pax_headers, encoding, errors)
        for key, value in numbers.items():
            setattr(self, key, value)

    def _proc_member(self, tar):
        if self.type in _EXTENDED_TYPES and self.size > DEFAULT_LIMITS.max_header:
            raise _ArchiveTooBig(f"an extended header of {self.size} bytes at offset {self.offset} (limit "
                                 f"{DEFAULT_LIMITS.max_header})")
        run = tar.lamina_extended_run = getattr(tar, "lamina_extended_run", 0) + 1 if (
            self.type in _EXTENDED_TYPES and self.type != tarfile.XGLTYPE) else 0
        if run > self.MAX_RUN:
            raise _ArchiveTooBig(f"more than {self.MAX_RUN} extended headers for one member at offset {self.offset}")
        if self.type == tarfile.XGLTYPE:
            # Never applied to later members (tarfile would: a global "path" renamed them all, so
            # lamina read another manifest.json than docker, skopeo or its extractor); but Go
            # parses its records as an "x" header's and refuses the archive at a bad one
            member = self._proc_builtin(tar)   # first: it takes the data's offset from the file's
            _check_go_pax_records(tar.fileobj.read(self.size), self.name)
            return member
        return super()._proc_member(tar)

    def _proc_gnulong(self, tar):
        next = super()._proc_gnulong(tar)
        key, field = ("path", "_lamina_longname") if self.type == tarfile.GNUTYPE_LONGNAME else ("linkpath", "_lamina_longlink")
        later = getattr(next, field, None)
        if later is not None:
            # two long names in a row: the last is the name (Go, GNU tar, the extractor), where
            # tarfile, which processes the last first, set the first over it
            setattr(next, "name" if key == "path" else "linkname", later)
            return next
        given = next.name if key == "path" else next.linkname
        # a PAX header after the long name was applied first, inside the call above
        _same_name(next, key, getattr(next, "pax_headers", {}).get(key), given)
        setattr(next, field, given)
        return next

    def _proc_sparse(self, tar):
        if self._sparse_structs[1]:
            raise _ArchiveTooBig(f"member {self.name}: a sparse file whose map continues past its header")
        return super()._proc_sparse(tar)

    def _proc_gnusparse_10(self, next, pax_headers, tar):
        raise _ArchiveTooBig(f"member {next.name}: a sparse file with a PAX 1.0 map")


def _check_go_pax_records(buf, name):
    """Refuse the PAX records Go's archive/tar refuses (parsePAXRecord), whatever header holds them."""
    rest = buf
    while rest:
        # a record is "<n> <key>=<value>\n", n counting the whole record, its own digits too
        length, space, _ = rest.partition(b" ")
        n = int(length) if space and re.fullmatch(rb"[+-]?[0-9]{1,18}", length) else 0
        whole = 5 <= n <= len(rest) and n > len(length) + 1 and rest[n - 1:n] == b"\n"
        key, eq, value = rest[len(length) + 1:n - 1].partition(b"=") if whole else (b"", b"", b"")
        if not (eq and key):
            raise tarfile.TarError(f"member {name!r}: malformed PAX record {rest[:40]!r}")
        _check_go_pax_nul(key.decode("utf-8", "replace"), value.decode("utf-8", "replace"), name)
        rest = rest[n:]


def _check_go_pax_nul(key, value, name):
    """Go refuses the whole archive at a NUL in these (validPAXRecord), and the extractor a name
    holding one; tarfile kept the NUL, a member no lookup finds, and read on."""
    if "\0" in key or (key in ("path", "linkpath", "uname", "gname") and "\0" in value):
        raise tarfile.TarError(f"member {name!r}: PAX record {key!r} holds a NUL byte")


def _go_sparse(pax_headers):
    """Whether Go's archive/tar reads these records as a GNU sparse file's (readGNUSparsePAXHeaders)."""
    major, minor = pax_headers.get("GNU.sparse.major", ""), pax_headers.get("GNU.sparse.minor", "")
    if major or minor:   # another version is no sparse file to Go
        return (major, minor) in (("0", "0"), ("0", "1"), ("1", "0"))
    return bool(pax_headers.get("GNU.sparse.map"))


def _same_name(info, key, pax_value, long_value):
    if pax_value is not None and long_value is not None and pax_value.rstrip("/") != long_value.rstrip("/"):
        raise tarfile.TarError(f"member {long_value!r}: a GNU long name and a PAX {key} {pax_value!r} that differ")


_EXTENDED_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                   tarfile.SOLARIS_XHDTYPE)


def _nearest_dir(path):
    """``path``'s nearest existing directory (itself, a parent, ...): scratch for an output that
    may not exist yet goes on the filesystem the output will be on."""
    path = os.path.abspath(os.fspath(path))
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


class _Member:
    """What the index keeps of a member (a TarInfo and its PAX dict cost ~0.5 KiB each)."""

    __slots__ = ("type", "size", "offset_data", "linkname")

    def __init__(self, info):
        self.type = b"S" if info.issparse() else info.type
        self.size, self.offset_data, self.linkname = info.size, info.offset_data, info.linkname

    def issym(self):
        return self.type == tarfile.SYMTYPE

    def islnk(self):
        return self.type == tarfile.LNKTYPE

    def isreg(self):
        return self.type in tarfile.REGULAR_TYPES

    def issparse(self):
        return self.type == b"S"


class TarArchive:
    """Random access to the members of a (possibly compressed) tar file.

    Members of a plain tar are read in place with pread. Members of a
    gzip-compressed tar are inflated from the nearest checkpoint before them
    (_Checkpoints): the archive is inflated once to index it, and about once more
    for all the members read, in whatever order.
    """

    MAX_MEMBERS = 1_000_000
    MAX_LINK_HOPS = 16
    MAX_HEADER_BYTES = 64 << 20   # all members' extended headers read, names and link targets kept

    def __init__(self, path, scratch=None):
        """``scratch``: where a zstd, xz or bzip2 archive is inflated: the store's ingest dir, or
        an output that may not exist yet, whose nearest existing directory takes it (default:
        the temp dir, often a small tmpfs)."""
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise ImageError(f"{self.path}: is a directory, not an archive")
        self.members = {}
        self.twice = set()   # names of more than one member (see _lookup)
        self._spill = None   # the fd of the inflated archive, when it is not inflated from gzip
        with os.fdopen(_open_archive(self.path), "rb") as f:
            head = f.read(16)
            spilled = _spilled_compression(head)
            self.compressed = head[:2] == b"\x1f\x8b" or spilled is not None
            self._checkpoints = _Checkpoints() if self.compressed and not spilled else None
            f.seek(0)
            if spilled is None:
                self._index(f)
                return
            where = _nearest_dir(scratch) if scratch is not None else tempfile.gettempdir()
            try:
                with tempfile.TemporaryFile(dir=where) as spill:   # unnamed (O_TMPFILE) where the filesystem allows
                    self._spill = os.dup(spill.fileno())
            except OSError as e:
                raise ImageError(f"{self.path}: cannot make a temporary file in {where} to "
                                 f"inflate it into: {e.strerror}") from None
            weakref.finalize(self, os.close, self._spill)
            spilling = _Spilling(_open_spilled(f, spilled), self._spill, f"{self.path} ({spilled})", where)
            self._index(io.BufferedReader(spilling, 1 << 20))
            spilling.end()

    def _index(self, f):
        try:
            # A plain tar is indexed by seeking over member data (a multi-GB archive costs
            # a few reads); a compressed one has to be inflated once, as a stream.
            gzipped = self.compressed and self._spill is None
            with _open_gzip(f) if gzipped else contextlib.nullcontext(f) as raw, tarfile.open(
                    fileobj=raw, mode="r|" if self.compressed else "r:", tarinfo=_BoundedTarInfo) as tar:
                header_bytes = 0
                for i in itertools.count():
                    info = tar.next()
                    if info is None:
                        break
                    tar.members.clear()  # tarfile keeps every member it read: we keep _Members
                    if i >= self.MAX_MEMBERS:
                        raise ImageError(f"{self.path}: more than {self.MAX_MEMBERS} members")
                    extended = info.offset_data - info.offset - tarfile.BLOCKSIZE
                    header_bytes += extended + len(info.name) + len(info.linkname)
                    if header_bytes > self.MAX_HEADER_BYTES:
                        raise ImageError(f"{self.path}: more than {self.MAX_HEADER_BYTES} bytes of member "
                                         f"headers and names (at member {info.name})")
                    name = member_name(info.name)
                    if info.type != tarfile.XGLTYPE:
                        self._refuse_climbing(info)
                    if name and info.type != tarfile.XGLTYPE:
                        old = self.members.get(name)
                        if old is not None and not (old.type == info.type == tarfile.DIRTYPE):
                            self.twice.add(name)
                        self.members[name] = _Member(info)
            self._refuse_members_under_symlinks()
        except _ArchiveTooBig as e:
            raise ImageError(f"{self.path}: {e}: not a docker or OCI archive") from None
        except (tarfile.TarError, ValueError, *decompress_errors()) as e:
            # ValueError: tarfile's own reading of malformed PAX records (GNU.sparse.map=a,b);
            # the inflater's errors: a gzipped archive's bad deflate block raised a traceback
            raise ImageError(f"{self.path}: not a readable tar archive: {e}") from None

    def _refuse_climbing(self, info):
        """A member named ``../x`` (``a/../../x``), or a hardlink to one: member_name would read it
        as ``x``, where docker's load stops its extraction at a name or link target that breaks
        out of its directory, and skopeo finds no member of that name (and takes no hardlink)."""
        if _climbs(info.name):
            raise ImageError(f"{self.path}: member {info.name} climbs out of the archive: docker's load "
                             "refuses it, skopeo does not read it")
        if info.type == tarfile.LNKTYPE and _climbs(info.linkname):
            raise ImageError(f"{self.path}: member {info.name} is a hardlink to {info.linkname!r}, out of the "
                             "archive: docker's load refuses it, skopeo does not read it")

    def _refuse_members_under_symlinks(self):
        """A member ``d/x`` beside a symlink member ``d``: tar and docker's load, which extract the
        archive, write it where ``d`` points (over another member there), skopeo and lamina read
        each member by its own name, bsdtar refuses it; the one archive would be two images."""
        links = {n for n, m in self.members.items() if m.issym()}
        if not links:
            return
        for name in self.members:
            cut = name.rfind("/")
            while cut > 0:
                if name[:cut] in links:
                    raise ImageError(f"{self.path}: member {name} lies under the symlink {name[:cut]}: tar and "
                                     f"docker's load would write it where that points, skopeo reads it by its name")
                cut = name.rfind("/", 0, cut)

    def _lookup(self, name):
        """The regular-file member a name refers to, following links inside the archive."""
        return self._resolve(name)[0]

    def _resolve(self, name):
        """(the regular-file member a name refers to, None) or, when there is none, (None, why):
        a link whose target is none of the archive's members; (None, None) for a name no member has."""
        seen = name
        why = None
        # where the file being followed is named: a hardlink is its target's inode under the
        # link's own name (link(2) follows no symlink), so when that inode is a symlink tar and
        # docker's load read its relative target from the hardlink's directory, not the target's
        at = name
        link = None  # (name, member) of the hardlink that led to ``name``
        for _ in range(self.MAX_LINK_HOPS):
            if name in self.twice:
                # skopeo reads the first member of a name, docker (which extracts the archive) and
                # tar the last: a second manifest.json would be another image to each of them
                raise ImageError(f"{self.path}: member {name} appears more than once in the archive")
            info = self.members.get(name)
            if info is None:
                return None, why
            if link is not None and info.offset_data > link[1].offset_data:
                # tar and docker's load make the link as they reach it: its target is not there yet
                raise ImageError(f"{self._link(seen, link[0])} is a hardlink to {link[1].linkname!r}, "
                                 f"which the archive holds only after it")
            link = None
            if info.issym():
                target = info.linkname
                base = "" if target.startswith("/") else posixpath.dirname(at)
                joined = posixpath.normpath(posixpath.join(base, target))
                # an absolute target, or one whose ".." climbs above the archive's top, is read
                # inside the archive (docker's load resolves it in scope: /x is the member x);
                # when nothing is there, "not found" would hide that the link points outside
                outside = target.startswith("/") or joined == ".." or joined.startswith("../")
                through = self._symlink_on_the_way(base, target)
                if through is not None:
                    # tar and docker's load (which extract the archive) follow that symlink, then
                    # its "..": skopeo and lamina read the target as text, so d/../m.json was
                    # two members, and a d/m.json none to skopeo: one archive, two images
                    raise ImageError(f"{self._link(seen, name)} is a symlink to {target!r}, through the symlink "
                                     f"member {through}: tar and docker's load would follow it, skopeo does not")
                where = "out of the archive" if outside else "which the archive does not hold"
                why = f"{self._link(seen, name)} is a symlink to {target!r}, {where}"
                name = at = member_name(posixpath.join(base, target))
            elif info.islnk():
                through = self._symlink_on_the_way("", info.linkname)
                if through is not None:
                    # link(2) follows every component of the target but the last: tar and
                    # docker's load link what lies where that symlink points, skopeo finds nothing
                    raise ImageError(f"{self._link(seen, name)} is a hardlink to {info.linkname!r}, through the "
                                     f"symlink member {through}: tar and docker's load would follow it, skopeo "
                                     "does not")
                why = f"{self._link(seen, name)} is a hardlink to {info.linkname!r}, which the archive does not hold"
                link = (name, info)
                name = member_name(info.linkname)
            elif info.isreg():
                if info.issparse():
                    raise ImageError(f"{self.path}: member {seen} is a sparse file")
                return info, None
            else:
                raise ImageError(f"{self.path}: member {seen} is not a regular file")
        raise ImageError(f"{self.path}: member {seen}: too many levels of links")

    def _symlink_on_the_way(self, base, target):
        """The symlink member a link's target passes through before its last component, if any."""
        parts = (target if target.startswith("/") else posixpath.join(base, target)).split("/")
        walked = []
        for part in parts[:-1]:
            if part == "..":
                if walked:
                    walked.pop()
            elif part not in ("", "."):
                walked.append(part)
                member = self.members.get("/".join(walked))
                if member is not None and member.issym():
                    return "/".join(walked)
        return None

    def _link(self, seen, name):
        return f"{self.path}: member {seen}" + (f": {name}" if name != seen else "")

    def has(self, name):
        return self._lookup(member_name(name)) is not None

    def member(self, name):
        info, why = self._resolve(member_name(name))
        if info is None:
            e = BlobNotFoundError(why or f"{name} not found in {self.path}")
            e.dangling = why is not None   # a link the archive holds, its error led by the archive's name
            raise e
        return info

    def size(self, name):
        return self.member(name).size

    def open(self, name):
        info = self.member(name)
        if not self.compressed or self._spill is not None:
            return io.BufferedReader(_Section(self.path, info.offset_data, info.size, self._spill), 1 << 20)
        return io.BufferedReader(_GzipMember(self.path, self._checkpoints, info.offset_data, info.size,
                                             f"{self.path}: member {name}"), 1 << 20)

    def read(self, name, what, digest=None, limit=MAX_DOCUMENT_SIZE):
        with self.open(name) as f:
            return read_verified(f, digest, None, what, limit)


def _climbs(name):
    """True for a relative name whose ``..`` lead above the archive's top (Go's filepath.Clean)."""
    return not name.startswith("/") and posixpath.normpath(name).split("/", 1)[0] == ".."


def member_name(name):
    """Archive member name without leading ``./`` or ``/``, normalized."""
    name = posixpath.normpath("/" + name).lstrip("/")
    return "" if name == "." else name


class TarBlobStore(BlobStore):
    """``blobs/sha256/<hex>`` members of a tar archive (oci-archive, newer ``docker save``)."""

    def __init__(self, archive):
        self.archive = archive
        self.name = archive.path

    def _member(self, digest):
        name = _digest.blob_relpath(digest)
        info, why = self.archive._resolve(name)
        if info is None:
            if why is None:
                raise BlobNotFoundError(f"blob {digest} not found in {self.archive.path}")
            e = BlobNotFoundError(f"blob {digest}: {why}")
            e.dangling = True   # a link the archive holds: a layout's "not found" would hide it
            raise e
        return name

    def open(self, digest):
        return self.archive.open(self._member(digest))

    def size(self, digest):
        return self.archive.size(self._member(digest))
