"""Writing images to an OCI image layout directory (``oci:PATH[:REF]``) or tar (``oci-archive:PATH[:REF]``).

Blobs are copied byte for byte (digests kept) and re-hashed on the way; the
index entry carries REF in ``org.opencontainers.image.ref.name`` as skopeo
writes it, replacing an entry that had the same name.
"""
from __future__ import annotations

import fcntl
import io
import json
import os
import re
import stat

from .. import digest as _digest
from .. import mediatypes as mt
from ..errors import ImageError
from ..oci.blobs import MAX_DOCUMENT_SIZE, open_in_layout
from ..oci.layout import parse_index_json
from ..oci.model import ANNOTATION_REF_NAME
from ..store.fsutil import NamedWrites, atomic_write, fsync_dir, name_error, tmp_name
from .output import CHUNK, VerifyingReader, add_bytes, add_dir, add_stream, atomic_output, stream_tar
from .sources import IndexData

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


def _blobs(data):
    """(digest, size, opener) of every blob of an image, layers first, manifest last."""
    out = [(l.digest, l.size, l.open, f"layer {l.digest}") for l in data.layers]
    out.append((data.config_digest, len(data.config), lambda: io.BytesIO(data.config), f"config {data.config_digest}"))
    out.append((data.manifest_digest, len(data.manifest), lambda: io.BytesIO(data.manifest),
                f"manifest {data.manifest_digest}"))
    return out


def _index_blobs(index):
    """_blobs() of every platform of an IndexData, then the index itself."""
    out = [b for child in index.children for b in _blobs(child)]
    out.append((index.digest, len(index.data), lambda: io.BytesIO(index.data), f"index {index.digest}"))
    return out


def _entry(data, ref):
    if isinstance(data, IndexData):
        entry = {"mediaType": data.media_type, "digest": data.digest, "size": len(data.data)}
    else:
        entry = {"mediaType": data.media_type, "digest": data.manifest_digest, "size": len(data.manifest)}
    if ref:
        entry["annotations"] = {ANNOTATION_REF_NAME: ref}
    return entry


def _check_ref(ref):
    # The OCI image-layout ref.name grammar (what skopeo and umoci accept).
    if ref is not None and not re.fullmatch(r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
                                            r"(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*", ref):
        raise ImageError(f"invalid OCI layout reference name {ref!r}")


# --- directory ----------------------------------------------------------------------------

def write_layout(data, path, ref=None):
    _check_ref(ref)
    root = os.path.abspath(os.fsdecode(path))
    if os.path.exists(root) and not os.path.isdir(root):
        raise ImageError(f"{root} exists and is not a directory")
    # A copy that fails part-way (a corrupt blob, a full disk) leaves the user's directory as it was:
    # what it created, and only that, is taken back (skopeo leaves the blobs it had copied).
    created = []
    lock = None
    try:
        lock = _lock_layout(root, created)
        _write_locked(data, root, ref, created)
    except BaseException:
        # Only under the lock: nobody has seen these blobs as "already there".  Interrupted
        # while waiting for it, the directories made for the layout stay (empty): the copy
        # holding the lock may be about to fill them.
        if lock is not None:
            _take_back(created)
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _lock_layout(root, created):
    """An fd of ``root`` (made where missing; what was made is appended to ``created``) holding an
    exclusive flock, so that two copies into one layout run one after the other.

    Without it, each copy read index.json, added its entry and renamed its own version into place:
    the last one won, the other image's entry was lost (skopeo, umoci and go-containerregistry all
    do that: containers/image#513, umoci#146).  A copy that failed took back blobs it had written
    that the other had skipped as already there.  The lock is on the directory itself, not a file
    in it: the layout gets no file that skopeo or umoci would not write, and a directory that a
    failed copy made is still removed whole."""
    while True:
        missing, path = [], root
        while not os.path.lexists(path) and os.path.dirname(path) != path:
            missing.append(path)
            path = os.path.dirname(path)
        os.makedirs(root, exist_ok=True)   # the path the user named: followed
        created.extend(reversed(missing))
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.stat(root)
        except FileNotFoundError:
            st = None
        except BaseException:
            os.close(fd)
            raise
        fst = os.fstat(fd)
        if st is not None and (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino):
            return fd
        os.close(fd)   # the copy we waited for made the directory, failed and removed it: again


def _write_locked(data, root, ref, created):
    _sweep_killed_copies(root)
    if not os.path.exists(os.path.join(root, "oci-layout")) and os.listdir(root):
        raise ImageError(f"{root} is not empty and is not an OCI image layout")
    # oci-layout first, before blobs/: a copy killed before it was renamed into place left a
    # directory holding blobs/ (or oci-layout.tmp-*) and no oci-layout, which every later copy
    # into it refused as "not empty and not an OCI image layout"
    if not os.path.exists(os.path.join(root, "oci-layout")):
        atomic_write(os.path.join(root, "oci-layout"), OCI_LAYOUT)
        created.append(os.path.join(root, "oci-layout"))
    index_path = os.path.join(root, "index.json")
    entries = []
    # Read before any blob is written, and a regular file only: a FIFO there hung the copy,
    # /dev/zero (through a symlink) filled memory.
    fd = open_in_layout(root, "index.json", index_path)
    if fd is not None:
        try:
            with open(fd, "rb") as f:
                raw = f.read(MAX_DOCUMENT_SIZE + 1)
            if len(raw) > MAX_DOCUMENT_SIZE:
                raise ImageError(f"larger than the {MAX_DOCUMENT_SIZE}-byte limit")
            # checked as a source's index.json is: entries that are not descriptors ("manifests": "abc"
            # became entries "a", "b", "c") were kept, and the layout written was one skopeo cannot read
            doc, _ = parse_index_json(raw, index_path)
            entries = list(doc["manifests"] or [])  # null: none (parse_index)
        except ImageError as e:
            detail = str(e).removeprefix(f"{index_path}: ")
            raise ImageError(f"{index_path}: not a valid image index ({detail}); refusing to overwrite it") from None
    blobs_dir = _blobs_dir(root, created)
    for digest, size, opener, what in _blobs(data):
        dest = os.path.join(blobs_dir, _digest.hex_of(digest))
        if _is_file_of_size(dest, size):
            continue  # a symlink of that size is replaced (rename), never written through
        # one there already (of another size: cut short, or a symlink) is replaced, not taken back
        new = not os.path.lexists(dest)
        _copy_blob(opener, dest, digest, size, what)
        if new:
            created.append(dest)
    fsync_dir(blobs_dir)
    if ref:
        entries = [e for e in entries if not (isinstance(e, dict)
                                              and (e.get("annotations") or {}).get(ANNOTATION_REF_NAME) == ref)]
    new = _entry(data, ref)
    if new not in entries:
        entries.append(new)
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
    # Once index.json names the image, what was written is the layout's: a sync of the directory
    # failing after that (EIO) took back the blobs and oci-layout, leaving an index.json whose
    # image had no blobs in a directory every later copy refused as no OCI layout
    atomic_write(index_path, json.dumps(doc, indent=2).encode() + b"\n", renamed=created.clear)


# The temp files lamina's writers of a layout give (fsutil.tmp_name: NAME.tmp-PID-RANDOM): a blob
# being copied, index.json or oci-layout being replaced.  Each is written under the layout's lock
# (_lock_layout), so one found by whoever holds that lock is a killed copy's, never renamed into
# place: left there, each copy killed mid-blob added one for ever (a partial blob under a name
# that is no digest, which the layout's readers and fsck tools list as junk).
_KILLED_TMP = re.compile(r"(?:[0-9a-f]{64}|index\.json|oci-layout)\.tmp-[0-9]+-[0-9a-f]{8}")


def _sweep_killed_copies(root):
    """Remove what copies into ``root`` that were killed left (_KILLED_TMP); called under the
    layout's lock.  Regular files only, through the fds of root and blobs/sha256 (a blobs that is
    a symlink is not followed: the copy refuses it next)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fds = []
    try:
        fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        for name in ("blobs", "sha256"):
            fds.append(os.open(name, flags, dir_fd=fds[-1]))
    except OSError:
        pass   # no blobs/sha256 yet
    try:
        for fd in (fds[0], fds[2]) if len(fds) == 3 else fds[:1]:
            for name in os.listdir(fd):
                if not _KILLED_TMP.fullmatch(name):
                    continue
                try:
                    if stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        os.unlink(name, dir_fd=fd)
                except OSError:
                    pass   # gone meanwhile, or not ours to remove: the copy goes on beside it
    finally:
        for fd in fds:
            os.close(fd)


def _blobs_dir(root, created):
    """``root/blobs/sha256``, made where missing (what was made is appended to ``created``).  A
    ``blobs`` or ``blobs/sha256`` that is a symlink (or not a directory) is refused: blobs were
    written wherever it pointed, outside the layout."""
    path = root
    for name in ("blobs", "sha256"):
        path = os.path.join(path, name)
        try:
            os.mkdir(path, 0o755)
            created.append(path)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise ImageError(f"{path} is {'a symlink' if os.path.islink(path) else 'not a directory'}: "
                                 "lamina writes blobs inside the layout only") from None
    return path


def _take_back(created):
    """Remove what a failed write_layout made, newest first.  Directories go by rmdir only: one
    that something else has filled since is left."""
    for path in reversed(created):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError:
            pass


def _is_file_of_size(path, size):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def _copy_blob(opener, dest, digest, size, what):
    tmp = tmp_name(dest)
    try:
        with opener() as src:
            # its writes and sync name the blob: a write through a file object names no file, so
            # a layout whose disk failed (EIO) said the bare 'Input/output error'
            raw_out = open(tmp, "xb")
            out = NamedWrites(raw_out, dest)
            try:
                reader = VerifyingReader(src, digest, what)
                while True:
                    chunk = reader.read(CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                reader.check()
                if reader.count != size:
                    raise ImageError(f"{what}: {reader.count} bytes, expected {size}")
                out.flush()
                try:
                    os.fsync(out.fileno())
                except OSError as e:
                    raise name_error(e, dest)
            finally:
                try:
                    raw_out.close()
                except OSError:
                    # what a failed write left buffered fails the same way (and, raised by a
                    # `with`, replaced the named error); after a good flush and fsync, nothing
                    pass
        os.rename(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# --- archive --------------------------------------------------------------------------------

def write_archive(images, fileobj):
    """An oci-archive of [(ImageData or IndexData, ref-or-None)] onto a binary stream."""
    for _, ref in images:
        _check_ref(ref)
    with stream_tar(fileobj) as tar:
        add_bytes(tar, "oci-layout", OCI_LAYOUT)
        add_dir(tar, "blobs")
        add_dir(tar, "blobs/sha256")
        written, entries = set(), []
        for data, ref in images:
            for digest, size, opener, what in (_index_blobs(data) if isinstance(data, IndexData) else _blobs(data)):
                if digest in written:
                    continue
                with opener() as f:
                    add_stream(tar, f"blobs/sha256/{_digest.hex_of(digest)}", size, f, digest, what, mode=0o444)
                written.add(digest)
            entries.append(_entry(data, ref))
        doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
        add_bytes(tar, "index.json", json.dumps(doc, indent=2).encode() + b"\n")


def write_archive_file(images, path):
    with atomic_output(path) as f:
        write_archive(images, f)
