"""``lamina mount`` / ``lamina umount``: kernel overlayfs over an image's snapshots.

The snapshots are overlay-format already, so they are the lower layers as
they are.  The new mount API (fsopen/fsconfig with one ``lowerdir+`` per
layer) is used where the kernel has it; mount(2) with escaped options
otherwise.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re

from ..errors import MaterializeError
from ..quoting import quote_name
from ..tree import make_dirs, remove_tree
from .flatten import _is_root
from .inuse import drop_record, in_use, key_for, load_records, record_dir_of, record_use, records_dir
from .materialize import _check_platform, check_outside_store, snapshot_dirs

_libc = None


def _libc_fn(name):
    global _libc
    import ctypes
    import ctypes.util
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return getattr(_libc, name)


# New mount API (unified syscall numbers on every architecture since 5.2)
_SYS_MOVE_MOUNT, _SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 429, 430, 431, 432
_FSOPEN_CLOEXEC = 1
_FSCONFIG_SET_FLAG, _FSCONFIG_SET_STRING, _FSCONFIG_SET_FD, _FSCONFIG_CMD_CREATE = 0, 1, 5, 6
_FSCONFIG_MAX_STRING = 255  # fsconfig copies a string value of at most 256 bytes with its NUL
_FSMOUNT_CLOEXEC = 1
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
_MOVE_MOUNT_F_EMPTY_PATH, _MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
_MS_RDONLY, _MS_NOSUID, _MS_NODEV = 1, 2, 4
_MNT_DETACH = 2
_MAX_MOUNT_DATA = 4095  # mount(2) copies at most one page of options


def _syscall(*args):
    import ctypes
    fn = _libc_fn("syscall")
    fn.restype = ctypes.c_long
    conv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    r = fn(*conv)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _mount_new_api(lowers, upper, work, target_fd, readonly, userxattr=False, suid=False):
    """overlayfs through fsopen/fsconfig: one ``lowerdir+`` per layer, so neither the page-size limit
    of mount(2) options nor ':' and ',' in paths matter (Linux >= 6.8).  Mounted on the directory
    ``target_fd`` holds (see _pin_target)."""
    import ctypes
    fsfd = _syscall(_SYS_FSOPEN, ctypes.c_char_p(b"overlay"), _FSOPEN_CLOEXEC)
    try:
        def setstr(key, value):
            try:
                _syscall(_SYS_FSCONFIG, fsfd, _FSCONFIG_SET_STRING, ctypes.c_char_p(key.encode()),
                         ctypes.c_char_p(os.fsencode(value)), 0)
            except OSError as e:
                raise OSError(e.errno, f"overlay option {key}={value}: {e.strerror}") from None
        def setdir(key, path):
            if len(os.fsencode(path)) <= _FSCONFIG_MAX_STRING:
                setstr(key, path)
                return
            # a longer path (a store root deep in the tree: ROOT/snapshots/<chainID>/fs) was
            # refused (EINVAL), and the fallback to mount(2) refused more than a few layers
            # "for want of lowerdir+": the directory goes by an fd (Linux 6.13), else by a
            # short name of it, /proc/self/fd/N, which overlayfs resolves here and now
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                try:
                    _syscall(_SYS_FSCONFIG, fsfd, _FSCONFIG_SET_FD, ctypes.c_char_p(key.encode()), None, fd)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise OSError(e.errno, f"overlay option {key}={path}: {e.strerror}") from None
                    setstr(key, f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
        setstr("source", "lamina")
        for d in lowers:  # top first
            setdir("lowerdir+", d)
        if upper:
            setdir("upperdir", upper)
            setdir("workdir", work)
        if userxattr:
            _syscall(_SYS_FSCONFIG, fsfd, _FSCONFIG_SET_FLAG, ctypes.c_char_p(b"userxattr"), None, 0)
        _syscall(_SYS_FSCONFIG, fsfd, _FSCONFIG_CMD_CREATE, None, None, 0)
        attrs = (_MOUNT_ATTR_NODEV | (0 if suid else _MOUNT_ATTR_NOSUID)
                 | (_MOUNT_ATTR_RDONLY if readonly else 0))
        mfd = _syscall(_SYS_FSMOUNT, fsfd, _FSMOUNT_CLOEXEC, attrs)
        try:
            _syscall(_SYS_MOVE_MOUNT, mfd, ctypes.c_char_p(b""), target_fd, ctypes.c_char_p(b""),
                     _MOVE_MOUNT_F_EMPTY_PATH | _MOVE_MOUNT_T_EMPTY_PATH)
        finally:
            os.close(mfd)
    finally:
        os.close(fsfd)


def _escape(path):
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def _mount_legacy(lowers, upper, work, target_fd, readonly, userxattr=False, suid=False):
    opts = "lowerdir=" + ":".join(_escape(d) for d in lowers)
    if upper:
        opts += f",upperdir={_escape(upper)},workdir={_escape(work)}"
    if userxattr:
        opts += ",userxattr"
    import ctypes
    data = opts.encode()
    if len(data) > _MAX_MOUNT_DATA:
        raise MaterializeError(f"{len(lowers)} layers make overlay options of {len(data)} bytes, more than mount(2)"
                               f" accepts, and this kernel lacks fsconfig lowerdir+ (Linux 6.8)")
    fn = _libc_fn("mount")
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    flags = _MS_NODEV | (0 if suid else _MS_NOSUID) | (_MS_RDONLY if readonly else 0)
    # mount(2) follows the fd's magic link to the directory it holds, whatever its path is now
    if fn(b"lamina", b"/proc/self/fd/%d" % target_fd, b"overlay", flags, data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _pin_target(target):
    """An O_PATH fd of the directory at ``target`` (a path without symlinks: realpath's), checked
    to be still at that path once held.  Root mounting into a directory another user can write
    must not follow a symlink that user swaps into the path meanwhile: the image would cover
    whatever it points to (/etc).  The mount then goes on the held directory, not on a path."""
    fd = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    if os.readlink(f"/proc/self/fd/{fd}") != target:
        os.close(fd)
        raise MaterializeError(f"mount target {target} changed while it was being mounted (a symlink on its path?)")
    return fd


def _kernel_mount(lowers, upper, work, target, readonly, userxattr=False, suid=False):
    target_fd = _pin_target(target)
    try:
        return _mount_on(lowers, upper, work, target_fd, readonly, userxattr, suid)
    finally:
        os.close(target_fd)


def _mount_on(lowers, upper, work, target_fd, readonly, userxattr=False, suid=False):
    try:
        _mount_new_api(lowers, upper, work, target_fd, readonly, userxattr, suid)
        return "fsconfig"
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        if e.errno == errno.EINVAL and "lowerdir+" not in str(e):
            raise
    _mount_legacy(lowers, upper, work, target_fd, readonly, userxattr, suid)
    return "mount"


def _marker_kind(store, chain):
    """"trusted" or "user": the xattrs snapshot ``chain`` marks opaque directories with.
    Its meta.json says so since lamina kept it there; before that, the snapshot's own
    directory (beside fs/, never an image's inode) was the clue: it belongs to whoever
    extracted it, unless it was chowned since (a store handed to another user)."""
    from . import snapshots as _snapshots
    info = _snapshots.read_info(store.paths, chain)
    if info is not None and info.markers is not None:
        return info.markers
    return "trusted" if os.stat(store.paths.snapshot(chain)).st_uid == 0 else "user"


def _user_markers(store, image):
    """Do the image's snapshots mark opaque directories with user.overlay.* (made by an
    unprivileged lamina) rather than trusted.overlay.*?  A mount reads one namespace only:
    mixed snapshots cannot be mounted as the flatten reads them."""
    kinds = {_marker_kind(store, c) for c in image.chain_ids}
    if kinds <= {"trusted"}:
        return False
    if kinds == {"user"}:
        return True
    raise MaterializeError(f"image {image.config_digest[7:19]} has snapshots extracted by root and by another user "
                           "(opaque directories marked in trusted.overlay.* and user.overlay.*): overlayfs reads one "
                           "kind only; lamina unpack gives its tree")


def _mountinfo():
    """[(mount point, fstype, source)] from /proc/self/mountinfo (octal escapes decoded)."""
    out = []
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    unesc = lambda s: re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), s)  # noqa: E731
    for line in lines:
        left, _, right = line.partition(b" - ")
        fields = left.split(b" ")
        rfields = right.split(b" ")
        if len(fields) < 5 or len(rfields) < 2:
            continue
        out.append((os.fsdecode(unesc(fields[4])), os.fsdecode(rfields[0]), os.fsdecode(unesc(rfields[1]))))
    return out


def is_mountpoint(path):
    return any(mp == path and fs == "overlay" and src == "lamina" for mp, fs, src in _mountinfo())


def _lock(store, key):
    from .locks import FileLock
    return FileLock(store.paths.locks / f"{key}.lock")


def _check_not_above_store(store, target):
    """Refuse a TARGET that holds the store (its root, a directory above it, "/"): the image
    would cover the store, its snapshots and its mount records, so that the store looks empty
    and ``lamina umount TARGET`` cannot find the mount it made.  By inode, from the store's
    root up to "/", as check_outside_store looks from the target up."""
    try:
        fd = os.open(store.paths.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return  # no store yet: the mount will find none to extract from and say so
    try:
        st = os.stat(target)
        mine = (st.st_dev, st.st_ino)
        while True:
            here = os.fstat(fd)
            if (here.st_dev, here.st_ino) == mine:
                raise MaterializeError(f"mount target {target} holds the store {store.paths.root}: the image would "
                                       f"cover it (and the records lamina umount needs); give one outside it")
            up = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = up
            above = os.fstat(fd)
            if (above.st_dev, above.st_ino) == (here.st_dev, here.st_ino):
                return  # "/" is its own parent
    finally:
        os.close(fd)


def mount(store, ref, target, *, rw=False, platform=None, suid=False):
    """``lamina mount REF TARGET [--rw]``: overlayfs over the image's snapshots. Returns the mount record.

    Read-only: the snapshots are the lower layers and nothing else.  ``rw``: an
    upper and a work dir under ROOT/lamina/mounts/<key>/ take the writes (removed
    by umount).  The image counts as in use until umount.

    A store this user cannot write (a read-only mount) is mounted all the same,
    if its snapshots are all extracted: the record, and a ``rw`` mount's upper and
    work dirs, then live in the runtime directory (inuse.outside_dir; a tmpfs
    as a rule, so a ``rw`` mount's writes take memory), and nothing holds the
    image in the store.

    The mount is ``nodev`` and, unless ``suid``, ``nosuid``: an image is
    somebody else's tree, and its set-user-ID / set-group-ID files (and file
    capabilities) would otherwise give whoever can reach TARGET the privileges
    of the image's owners on this host.  ``suid`` is for trees that are run
    as a system's own (a chroot-style boot of a trusted image).
    """
    if not _is_root():
        raise MaterializeError("lamina mount needs root (overlayfs mounts need CAP_SYS_ADMIN); "
                               "use lamina unpack for a private copy instead")
    image = ref if hasattr(ref, "chain_ids") else store.resolve(ref)
    _check_platform(image, platform)
    given = os.path.abspath(os.fsdecode(target))
    if os.path.islink(given):
        # as apply, apply --atomic and unpack refuse a DEST that is a symlink (CONFORMANCE.md): a
        # TARGET left by an earlier image's tree (mnt -> /etc) put the mount over the host's /etc
        where = quote_name(os.fsencode(os.readlink(given)))
        raise MaterializeError(f"mount target {given} is a symlink (to {where}): lamina does not mount through one; "
                               "give the directory it points to")
    if os.path.lexists(given) and not os.path.isdir(given):
        raise MaterializeError(f"mount target {given} exists and is not a directory")
    check_outside_store(store, given, "mount target")
    made = not os.path.lexists(given)
    # made before it is resolved: a symlink to nothing on the way (R/d -> /etc/new, left by an
    # earlier image's tree) is refused, as by mkdir -p, not followed to make /etc/new/mnt
    make_dirs(given, f"mount target {given}")
    target = os.path.realpath(given)
    try:
        check_outside_store(store, target, "mount target")
        _check_not_above_store(store, target)
    except BaseException:
        if made:
            os.rmdir(given)
        raise
    key = key_for("mount", target)
    lock = _lock(store, key)
    lock.acquire()
    mounted = False
    try:
        if is_mountpoint(target):
            raise MaterializeError(f"{target} is already a lamina mount (lamina umount {target} first)")
        for old in [r for r in load_records(store, "mount") if r["key"] == key]:
            if _holds_writes(old):
                raise MaterializeError(f"{target} is already a lamina mount (lamina umount {target} first)")
            # nothing mounted (we hold its lock: no mount of it is on its way) and nothing
            # written: a mount killed before mount(2), or a mount a reboot took -- keeps nothing
            remove_tree(os.path.join(record_dir_of(store, old), key))
            drop_record(store, old)
        layer_dirs = snapshot_dirs(store, image)
        userxattr = _user_markers(store, image)
        lowers = list(reversed(layer_dirs))  # overlayfs wants the top layer first
        outside = not store.writable
        base = os.path.join(records_dir(store, "mount", outside=outside, create=outside), key)
        os.makedirs(base, mode=0o700, exist_ok=True)
        # overlayfs needs two lower layers without an upper one, and one with it: pad with empty dirs
        for i in range(max(0, (1 if rw else 2) - len(lowers))):
            empty = os.path.join(base, f"empty{i}")
            os.makedirs(empty, exist_ok=True)
            lowers.append(empty)
        upper = work = None
        if rw:
            upper, work = os.path.join(base, "upper"), os.path.join(base, "work")
            for d in (upper, work):
                if os.path.exists(d):
                    remove_tree(d)
                os.mkdir(d, 0o755)
        # record (and hold) first: a crash after the mount leaves a record umount can clean up
        record = record_use(store, "mount", target, image,
                            {"rw": rw, "suid": suid, "upper": upper, "work": work, "layers": len(layer_dirs)},
                            outside=outside)
        try:
            record["api"] = _kernel_mount(lowers, upper, work, target, readonly=not rw, userxattr=userxattr, suid=suid)
        except OSError as e:
            drop_record(store, record)
            remove_tree(base)
            raise MaterializeError(f"cannot mount {image.config_digest[7:19]} on {target}: {e.strerror or e}") from None
        record["mounted"] = mounted = True
        return record
    finally:
        if made and not mounted:
            # a refused mount (a layer that does not extract, mount(2) saying no) leaves no
            # TARGET the user never had, as a refused apply leaves no DEST
            with contextlib.suppress(OSError):
                os.rmdir(target)
        lock.release(unlink=True)


def _holds_writes(record):
    """Whether a mount record's upper dir (a --rw mount's) holds anything written through it."""
    try:
        return bool(record.get("upper")) and bool(os.listdir(record["upper"]))
    except FileNotFoundError:
        return False


def umount(store, target, *, lazy=False):
    """``lamina umount TARGET``: unmount and remove the mount's upper/work dirs and in-use record."""
    target_abs = os.path.abspath(os.fsdecode(target))
    real = os.path.realpath(target_abs)
    records = {r["key"]: r for r in load_records(store, "mount")}
    key = next((k for k in (key_for("mount", real), key_for("mount", target_abs)) if k in records), None)
    if key is None:
        raise MaterializeError(f"{target_abs} is not a lamina mount of the store {store.root}")
    record = records[key]
    path = record["path"]
    lock = _lock(store, key)
    lock.acquire()
    try:
        if is_mountpoint(path):
            import ctypes
            fn = _libc_fn("umount2")
            fn.argtypes = [ctypes.c_char_p, ctypes.c_int]
            if fn(os.fsencode(path), _MNT_DETACH if lazy else 0) != 0:
                e = ctypes.get_errno()
                hint = " (still in use; close what uses it or pass --lazy)" if e == errno.EBUSY else ""
                raise MaterializeError(f"cannot unmount {path}: {os.strerror(e)}{hint}")
        remove_tree(os.path.join(record_dir_of(store, record), key))
        drop_record(store, record)
    finally:
        lock.release(unlink=True)
    return record


def mounts(store):
    """The mount records (each with ``mounted``: whether the kernel mount is present)."""
    return [r for r in in_use(store, prune_stale=False) if r["kind"] == "mount"]
