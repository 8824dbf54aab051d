"""Tar-split sidecars: rebuild a layer's uncompressed tar bit-exact from its snapshot (compact store).

    snapshots/<chainID hex>/tarsplit.lz4     one lz4 frame: MAGIC, then records

A record is either raw bytes of the tar, kept as they were (headers, PAX and GNU
long-name records, padding, the end-of-archive blocks and anything after them, and
any payload the snapshot cannot give back), or a reference to a regular file of
the snapshot whose bytes are the payload, with its length and xxh3-64:

    b"R" <u64 length> <bytes>
    b"F" <u64 path length> <path, relative to fs/> <u64 size> <u64 xxh3-64>
    b"E" <u64 tar length>

The idea is tar-split's (containers/storage keeps one per layer, crc64 + gzip);
lz4 makes reading it cost next to nothing.  A payload is referenced only if the
snapshot file at that path holds exactly those bytes when the sidecar is made (a
later entry of the same layer may have replaced it; a name may lead through a
symlink): everything else is kept raw.  Rebuilding reads each referenced file
through directory fds opened with O_NOFOLLOW from the snapshot root, checks its
xxh3 (a file changed behind lamina's back, e.g. through ``unpack --link``, is
caught and named), and checks the sha256 of the whole tar against the diffID.

The compressed blob itself cannot be rebuilt: gzip output depends on the
compressor, its version and its settings.  Images leave a compact store with
uncompressed layers whose digest is their diffID (transports.sources.from_store), or,
pushed to a registry, with new gzip blobs (gzip_layer): config and diffIDs are unchanged,
the manifest is new.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import struct

from .._extract import header_number, header_prefix
from ..compression import read_exact as _read_exact
from ..errors import StoreError
from ..quoting import quote_name
from .fsutil import NamedWrites

SIDECAR = "tarsplit.lz4"
MAGIC = b"LAMINA-TARSPLIT/1\n"
_BLOCK = 512
_CHUNK = 1 << 20
_U64 = struct.Struct(">Q")
# The longest path a sidecar record may name: far past any image's (the extractor's max_path
# is 4096 by default); a longer one is a damaged sidecar, not a reason to allocate its length.
_MAX_SIDECAR_PATH = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
# Header types whose payload is metadata for the next entry (kept raw with the header).
_META_TYPES = {b"x", b"g", b"L", b"K", b"X"}
_FILE_TYPES = {b"0", b"\0", b"7"}
# Types that carry no payload whatever their size field says (the extractor's rule).
_HEADER_ONLY_TYPES = {b"1", b"2", b"3", b"4", b"5", b"6"}
# 'S' is GNU's old sparse format only under GNU's magic (elsewhere a plain file: the extractor's rule)
_GNU_MAGIC = b"ustar  \0"


class SidecarError(StoreError):
    """A layer cannot be rebuilt from its snapshot and sidecar."""


def sidecar_path(snapshot_dir):
    return os.path.join(os.fspath(snapshot_dir), SIDECAR)


def has_sidecar(snapshot_dir):
    return os.path.exists(sidecar_path(snapshot_dir))


# --- tar headers (the layer was verified when it was extracted; anything odd is kept raw) -----

def _header_number(field, what, base=8):
    try:
        # a PAX number may carry any run of leading zeros (the extractor takes them): int() of
        # more than 4300 digits is a ValueError whatever their value
        return header_number(bytes(field)) if base == 8 else int(bytes(field).lstrip(b"0") or b"0")
    except ValueError:
        raise SidecarError(f"{what}: unreadable tar number {bytes(field)[:20]!r}") from None


def _pax(data):
    out, i = {}, 0
    while i < len(data):
        sp = data.find(b" ", i)
        if sp < 0:
            break
        try:
            length = int(data[i:sp])
        except ValueError:
            break
        if length <= 0:
            break
        rec = data[sp + 1:i + length - 1]
        k, _, v = rec.partition(b"=")
        out[k.decode("utf-8", "surrogateescape")] = v
        i += length
    return out


def _padding(size):
    return -size % _BLOCK


def _snapshot_relpath(name):
    """Where the extractor put an entry: re-rooted, '.' and '..' resolved inside the root."""
    parts = []
    for p in name.split(b"/"):
        if p in (b"", b"."):
            continue
        if p == b"..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return b"/".join(parts)


def open_in_tree(root_fd, rel):
    """An fd of the regular file at ``rel`` (bytes) under ``root_fd``, never following a symlink.

    None if a component is missing, is a symlink, or the last one is not a regular file.  The
    last component is looked at before it is opened: a layer may replace a file by a device node
    of the same name, and opening a device runs its driver (a watchdog arms, a tape rewinds, a
    terminal becomes the controlling one).
    """
    parts = rel.split(b"/")
    fd = os.dup(root_fd)
    try:
        for p in parts[:-1]:
            nfd = os.open(p, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return None
        ffd = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    fst = os.fstat(ffd)
    if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
        os.close(ffd)
        return None
    return ffd


def _inside(rel):
    """A sidecar's path names a file below the snapshot root: no empty, '.' or '..' component
    (build() writes only _snapshot_relpath()'s; anything else is a damaged or forged sidecar)."""
    return all(p not in (b"", b".", b"..") for p in rel.split(b"/"))


# --- building -----------------------------------------------------------------------------

class _Writer:
    def __init__(self, out):
        self.out = out
        self.raw = bytearray()

    def add_raw(self, data):
        self.raw += data
        if len(self.raw) >= _CHUNK:
            self.flush()

    def flush(self):
        if self.raw:
            self.out.write(b"R" + _U64.pack(len(self.raw)) + bytes(self.raw))
            self.raw.clear()

    def add_file(self, path, size, xxh):
        self.flush()
        self.out.write(b"F" + _U64.pack(len(path)) + path + _U64.pack(size) + _U64.pack(xxh))


class _Hashing:
    """Reads through, hashing: build() checks the tar it split is the one the diffID names."""

    def __init__(self, raw):
        self.raw, self.hash = raw, hashlib.sha256()

    def read(self, n):
        data = self.raw.read(n)
        self.hash.update(data)
        return data


def build(tar_stream, fs_dir, out_path, diff_id, what):
    """Write the sidecar of the uncompressed tar ``tar_stream`` for the snapshot tree ``fs_dir``.

    Raw records are the tar's own bytes and every referenced payload was compared byte for
    byte with its snapshot file, so once the tar's sha256 is ``diff_id`` the sidecar rebuilds
    it exactly (as long as the snapshot is not changed: rebuilding checks xxh3 and diffID).
    Returns (entries, referenced payload bytes, tar length).
    """
    import lz4.frame
    from ..transports.output import atomic_output
    tar_stream = _Hashing(tar_stream)
    root_fd = os.open(fs_dir, _DIR_FLAGS)
    entries = referenced = total = 0
    try:
        with atomic_output(out_path) as f, lz4.frame.open(NamedWrites(f, out_path), "wb", compression_level=0) as out:
            w = _Writer(out)
            out.write(MAGIC)
            pax, longname = {}, None
            while True:
                hdr = _read_exact(tar_stream, _BLOCK)
                total += len(hdr)
                if len(hdr) < _BLOCK or hdr == b"\0" * _BLOCK:
                    w.add_raw(hdr)
                    for chunk in iter(lambda: tar_stream.read(_CHUNK), b""):  # end blocks and beyond
                        total += len(chunk)
                        w.add_raw(chunk)
                    break
                typ = hdr[156:157]
                size = _header_number(hdr[124:136], what)
                w.add_raw(hdr)
                if typ in _META_TYPES:
                    data = _read_exact(tar_stream, size + _padding(size))
                    total += len(data)
                    w.add_raw(data)
                    # the extractor's rules: 'X' is PAX 'x', and global records ('g') never apply
                    if typ in (b"x", b"X"):
                        pax = _pax(data[:size])
                    elif typ == b"L":
                        longname = data[:size].split(b"\0", 1)[0]
                    continue
                if typ == b"S" and hdr[482] and hdr[257:265] == _GNU_MAGIC:  # a GNU sparse map continued
                    ext = hdr
                    while ext[482 if ext is hdr else 504]:
                        ext = _read_exact(tar_stream, _BLOCK)
                        total += len(ext)
                        w.add_raw(ext)
                        if len(ext) < _BLOCK:
                            raise SidecarError(f"{what}: the layer tar ends inside a sparse map")
                entries += 1
                fields = {k: v for k, v in pax.items() if v}  # an empty record unsets its key
                if "size" in fields:
                    size = _header_number(fields["size"], what, base=10)
                name = fields.get("path") or longname
                if name is None:
                    name = hdr[0:100].split(b"\0", 1)[0]
                    prefix = header_prefix(hdr)  # the extractor's reading, so the payload is found
                    if prefix:
                        name = prefix + b"/" + name
                if typ in _HEADER_ONLY_TYPES or (typ in _FILE_TYPES and name.endswith(b"/")):
                    size = 0  # no payload whatever the size says (Go's archive/tar; a "file/" is a dir)
                sparse = typ == b"S" or any(k.startswith("GNU.sparse") for k in fields)
                pax, longname = {}, None
                if size <= 0:
                    continue
                rel = _snapshot_relpath(name) if typ in _FILE_TYPES and not sparse else b""
                ffd = open_in_tree(root_fd, rel) if rel else None
                if ffd is not None and os.fstat(ffd).st_size != size:
                    os.close(ffd)
                    ffd = None
                if ffd is None:
                    _copy_raw(tar_stream, w, size)
                else:
                    try:
                        xxh = _compare(tar_stream, ffd, size, w)
                    finally:
                        os.close(ffd)
                    if xxh is not None:
                        w.add_file(rel, size, xxh)
                        referenced += size
                total += size
                # the padding as it is: a layer may end inside it (the extractor's rule, Go's)
                pad = _read_exact(tar_stream, _padding(size))
                total += len(pad)
                w.add_raw(pad)
            w.flush()
            out.write(b"E" + _U64.pack(total))
            actual = "sha256:" + tar_stream.hash.hexdigest()
            if actual != diff_id:  # inside the with: the sidecar never appears
                raise SidecarError(f"{what}: the layer tar has sha256 {actual}, not its diffID {diff_id}")
    finally:
        os.close(root_fd)
    return entries, referenced, total


def _copy_raw(stream, w, n):
    while n:
        data = stream.read(min(n, _CHUNK))
        if not data:
            raise SidecarError("the layer tar ends inside an entry")
        w.add_raw(data)
        n -= len(data)


def _compare(stream, ffd, size, w):
    """Consume ``size`` payload bytes; xxh3-64 if the snapshot file holds exactly them, else None
    (after keeping the payload raw: the part that matched is read back from the file)."""
    import xxhash
    h = xxhash.xxh3_64()
    done = 0
    while done < size:
        want = min(_CHUNK, size - done)
        data = _read_exact(stream, want)
        if len(data) != want:
            raise SidecarError("the layer tar ends inside an entry")
        mine = os.pread(ffd, want, done)
        if mine != data:
            off = 0
            while off < done:  # the matching prefix: the same bytes, from the file
                piece = os.pread(ffd, min(_CHUNK, done - off), off)
                w.add_raw(piece)
                off += len(piece)
            w.add_raw(data)
            _copy_raw(stream, w, size - done - want)
            return None
        h.update(data)
        done += want
    return h.intdigest()


# --- rebuilding ---------------------------------------------------------------------------

class RebuiltLayer(io.RawIOBase):
    """The layer tar, read from snapshot + sidecar; raises at EOF unless its sha256 is ``diff_id``."""

    def __init__(self, snapshot_dir, diff_id, what):
        import lz4.frame
        self.what, self.diff_id = what, diff_id
        self.fs = os.path.join(os.fspath(snapshot_dir), "fs")
        path = sidecar_path(snapshot_dir)
        try:
            # lamina writes it as a regular file: a symlink put there is not followed, a FIFO not
            # waited on
            fd = os.open(path, _FILE_FLAGS)
        except FileNotFoundError:
            raise SidecarError(f"{what}: no tar-split sidecar in {snapshot_dir}") from None
        except OSError as e:
            raise SidecarError(f"{what}: unreadable sidecar {path} ({e.strerror})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SidecarError(f"{what}: {path} is not a regular file")
        self.raw = os.fdopen(fd, "rb")
        self.src = lz4.frame.open(self.raw, "rb")
        try:
            magic = self.src.read(len(MAGIC))
        except (RuntimeError, EOFError) as e:  # EOFError: an empty or cut lz4 frame
            self._close_src()
            raise SidecarError(f"{what}: unreadable sidecar ({e})") from None
        if magic != MAGIC:
            self._close_src()
            raise SidecarError(f"{what}: {path} is not a lamina tar-split sidecar")
        try:
            self.root_fd = os.open(self.fs, _DIR_FLAGS)
        except OSError as e:
            # the tree swapped for a FIFO, a file or a symlink behind lamina: said with the layer
            # it rebuilds (a bare "fs: Not a directory" named neither it nor the remedy)
            self._close_src()
            why = "is not a directory" if e.errno in (errno.ENOTDIR, errno.ELOOP) else f"is unreadable ({e.strerror})"
            raise SidecarError(f"{what}: the snapshot's tree {self.fs} {why}; the layer cannot be rebuilt "
                               "(run lamina fsck --repair)") from None
        except BaseException:
            self._close_src()
            raise
        self.hash = hashlib.sha256()
        self.count = 0
        self.pending = memoryview(b"")
        self.chunks = self._chunks()

    def readable(self):
        return True

    def _read(self, n):
        """``n`` bytes of the sidecar, read a chunk at a time (a damaged length never becomes one
        huge allocation); a short read, a damaged or cut lz4 frame is a SidecarError."""
        parts = []
        while n:
            try:
                data = self.src.read(min(n, _CHUNK))
            except (RuntimeError, EOFError, OSError) as e:
                raise SidecarError(f"{self.what}: corrupt sidecar ({e})") from None
            if not data:
                raise SidecarError(f"{self.what}: truncated sidecar")
            parts.append(data)
            n -= len(data)
        return b"".join(parts)

    def _u64(self):
        return _U64.unpack(self._read(8))[0]

    def _chunks(self):
        import xxhash
        while True:
            try:
                kind = self.src.read(1)
            except (RuntimeError, EOFError, OSError) as e:
                raise SidecarError(f"{self.what}: corrupt sidecar ({e})") from None
            if kind == b"R":
                n = self._u64()
                while n:
                    data = self._read(min(n, _CHUNK))
                    n -= len(data)
                    yield data
            elif kind == b"F":
                n = self._u64()
                if n > _MAX_SIDECAR_PATH:
                    raise SidecarError(f"{self.what}: corrupt sidecar (a path of {n} bytes)")
                path = self._read(n)
                size, want = self._u64(), self._u64()
                shown = quote_name(path)
                if not _inside(path):
                    raise SidecarError(f"{self.what}: corrupt sidecar (entry {shown} is not a path inside "
                                       "the snapshot); the layer cannot be rebuilt")
                fd = open_in_tree(self.root_fd, path)
                if fd is None:
                    raise SidecarError(f"{self.what}: entry {shown} is missing from the snapshot; "
                                       "the layer cannot be rebuilt")
                try:
                    h = xxhash.xxh3_64()
                    off = 0
                    while off < size:
                        data = os.pread(fd, min(_CHUNK, size - off), off)
                        if not data:
                            break
                        h.update(data)
                        off += len(data)
                        yield data
                    if off != size or os.pread(fd, 1, size) or h.intdigest() != want:
                        raise SidecarError(f"{self.what}: entry {shown} changed in the snapshot since the layer "
                                           "was stored (xxh3 mismatch); the layer cannot be rebuilt")
                finally:
                    os.close(fd)
            elif kind == b"E":
                total = self._u64()
                try:
                    after = self.src.read(1)
                except (RuntimeError, EOFError, OSError) as e:
                    raise SidecarError(f"{self.what}: corrupt sidecar ({e})") from None
                if after:
                    raise SidecarError(f"{self.what}: corrupt sidecar (records after its end record)")
                actual = "sha256:" + self.hash.hexdigest()
                if actual != self.diff_id:
                    raise SidecarError(f"{self.what}: rebuilt tar has sha256 {actual} ({self.count} bytes), "
                                       f"not its diffID {self.diff_id} ({total} bytes)")
                if self.count != total:
                    raise SidecarError(f"{self.what}: corrupt sidecar (its end record says {total} bytes, "
                                       f"the records hold {self.count})")
                return
            else:
                raise SidecarError(f"{self.what}: corrupt sidecar (record {kind!r})")

    def readinto(self, buf):
        while not self.pending:
            try:
                data = next(self.chunks)
            except StopIteration:
                return 0
            self.hash.update(data)
            self.count += len(data)
            self.pending = memoryview(data)
        n = min(len(buf), len(self.pending))
        buf[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def _close_src(self):
        try:
            self.src.close()
        finally:
            self.raw.close()

    def close(self):
        if not self.closed and hasattr(self, "root_fd"):
            self._close_src()
            os.close(self.root_fd)
        super().close()


def open_layer(snapshot_dir, diff_id, what):
    """A buffered reader of the rebuilt layer tar (verified against ``diff_id`` at its end)."""
    return io.BufferedReader(RebuiltLayer(snapshot_dir, diff_id, what), _CHUNK)


def gzip_layer(snapshot_dir, diff_id, what, out):
    """Rebuild the layer tar (checked against ``diff_id`` as it streams) and write it gzipped
    (ISA-L, level 1) to the binary file ``out``.  Returns (sha256 digest of the gzip stream, size).

    For ``push``: a registry wants compressed layers, and the original blob cannot be
    reproduced, so the pushed layer is a new gzip blob with the same diffID."""
    from isal import isal_zlib
    sha, size = hashlib.sha256(), 0
    z = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)  # wbits 31: a gzip member
    with open_layer(snapshot_dir, diff_id, what) as tar:
        while True:
            data = tar.read(_CHUNK)
            block = z.compress(data) if data else z.flush()
            out.write(block)
            sha.update(block)
            size += len(block)
            if not data:
                break
    return "sha256:" + sha.hexdigest(), size


def verify(snapshot_dir, diff_id, what):
    """Rebuild the layer to nowhere; raises SidecarError (a LaminaError) unless it is bit-exact."""
    with open_layer(snapshot_dir, diff_id, what) as f:
        while f.read(_CHUNK):
            pass



def check(store, report):
    """fsck for a compact store: every sidecar must rebuild its layer bit-exact.

    A layer blob that is missing because its layer is rebuilt from a sidecar is not damage:
    the image check does not report it, and the snapshot check extracts the layer as its
    sidecar rebuilds it (fsck.Checker._snapshot), leaving a sidecar that fails to this check
    (the sha256 of the rebuilt tar against the diffID).  A sidecar that check extracted from
    to the end (``report.sidecars_rebuilt``) rebuilt its layer bit-exact there already: it is
    not rebuilt again, which doubled the time fsck took on a compact store.
    """
    from . import snapshots as _snapshots
    checked = 0
    for chain in _snapshots.list_chain_ids(store.paths):
        sdir = store.paths.snapshot(chain)
        if not has_sidecar(sdir):
            continue
        try:
            info = _snapshots.read_info(store.paths, chain)
        except StoreError:
            continue  # reported as a bad snapshot already
        if info is None:
            continue
        checked += 1
        if chain in report.sidecars_rebuilt:
            continue
        try:
            verify(sdir, info.diff_id, f"layer {info.digest} (diffID {info.diff_id})")
        except (SidecarError, OSError) as e:
            report.add("error", "bad-sidecar", chain, f"snapshot {chain}: {e}")
    if checked:
        report.checked["sidecars"] = checked
