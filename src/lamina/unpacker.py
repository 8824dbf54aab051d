"""unpack(): a whole image from a source into a rootfs (``dir``) or per-layer dirs (``overlay``).

Everything is written into a staging directory that becomes ``dest`` only
when every layer applied and verified (a sibling renamed onto it, or, for an
existing empty ``dest`` that cannot be replaced, a hidden dir inside it whose
entries move up: see "destination handling"), so a failed or interrupted unpack
never leaves ``dest`` looking complete.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import os
import re
import secrets
import stat
import time

from .apiargs import a_path
from ._extract import HiddenLinkTarget
from . import trace
from .errors import (Cancelled, ExtractError, ImpliedDirMoved, Interrupted, InvalidArchiveError, LaminaError, layer_of,
                     name_the_layer)
from .limits import check_layer_count, open_file_budget
from .lowers import LayersBelow
from .oci import open_source
from .stats import UnpackStats
from .tree import clear_dir, make_dirs, pin, remove_tree, unpin

FORMATS = ("dir", "overlay")
# Overlay layers are independent, and apply_layer keeps about two cores busy by itself
# (inflate and write overlap), so a few layers at a time is enough.
MAX_PARALLEL_LAYERS = 4
# Top-down skipping: an upper layer is read ahead (headers only, nothing written)
# when it is at most this fraction of the compressed bytes below it, so that the
# lower layers need not write what it deletes or replaces.  Images that delete in
# a late layer (apt caches, build trees) often hide half of what lies below.
SCAN_FRACTION = 0.25
# ... and while the paths the scanned layers hide (kept until the layers below are written,
# ~150 B each) are at most this many: past it, a layer's whiteouts apply as it is written,
# as if it had not been scanned, so that a flat unpack's peak RSS does not grow with an upper
# layer of millions of entries (issue 14)
SCAN_MAX_PATHS = 1 << 16


def unpack(source, dest, *, platform=None, format="dir", limits=None, insecure=()) -> UnpackStats:
    """Unpack ``source`` (``oci:PATH[:REF]``, ``docker-archive:PATH``, ``oci-archive:PATH``, a
    path, or ``docker://REF`` straight from a registry, nothing kept) into ``dest``.

    ``dest`` must not exist or be an empty directory. ``platform`` is
    ``os/arch[/variant]`` or None for the host. Every manifest, config, blob
    and diffID is verified.  ``insecure``: registry hosts a ``docker://`` source may reach over
    plain HTTP or without TLS verification (loopback ones may always), as ``lamina.pull``'s.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {format!r}")
    a_path(dest, "dest", "a directory's path")
    if isinstance(source, str) and source.startswith("docker://"):
        # the CLI's `unpack docker://REF`, for a Python caller: the same source, silent (made
        # after the checks of the other arguments, so that a refusal leaves no client open)
        from .registry.source import RegistrySource
        source = RegistrySource(source, insecure=tuple(insecure))
    t_start = time.perf_counter()
    seconds = {}
    dest = os.path.abspath(os.fsdecode(dest))

    t = time.perf_counter()
    # a zstd, xz or bzip2 archive is inflated beside the tree (not in a tmpfs /tmp it could fill)
    with open_source(source, os.path.dirname(dest)) as src:
        image = src.resolve(platform)
        seconds["resolve"] = time.perf_counter() - t
        # the sources refused more than the default already; a caller's lower cap applies here
        check_layer_count(len(image.layers), f"{_describe(source)}: manifest {image.manifest_digest}", limits)
        _check_dest(dest)
        stats = UnpackStats(
            source=_describe(source), dest=dest, format=format, manifest_digest=image.manifest_digest,
            config_digest=image.config_digest, platform=str(image.platform) if image.platform else "")

        staging = _make_staging(dest)
        try:
            t = time.perf_counter()
            # the layers (each opens its target anew), and the lower ones each overlay layer
            # opens when it needs them, by the staging dir's fd: never by a path through DEST's
            # parent, where whoever can write it could swap the staging dir for a dir of theirs,
            # or a link to where lowers/0 is /etc
            pinned = pinned_staging(staging)
            if format == "dir":
                # "/." so that the extractor's and clear_dir's O_NOFOLLOW open reach the dir
                stats.layers = _apply_flat(image.layers, os.path.join(pinned, "."), limits)
            else:
                stats.layers = _apply_overlay(image.layers, pinned, limits)
                stats.layer_dirs = [os.path.join(dest, "layers", str(i)) for i in range(len(image.layers))]
                lowers = stats.layer_dirs
                if len(lowers) < 2:
                    # overlayfs mounts no fewer than two lower layers without an upper one (an
                    # image of none: layers/ is the other empty one; one dir twice is refused)
                    os.mkdir(os.path.join(pinned, EMPTY_LOWER))
                    os.chmod(os.path.join(pinned, EMPTY_LOWER), 0o755)  # whatever the umask
                    lowers = [os.path.join(dest, EMPTY_LOWER)] + (lowers or [os.path.join(dest, "layers")])
                # the extractor marks opaque dirs trusted.overlay.* as root, else user.overlay.*:
                # a mount reads one namespace, and without userxattr not the user one
                stats.mount_options = mount_options(lowers, userxattr=os.geteuid() != 0)
                # the path's own bytes (DEST need not be UTF-8), as mount -o wants them; a new
                # file, never one a symlink there leads to (see _make_staging on who may write)
                fd = os.open(os.path.join(pinned, "mount-options"),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
                with open(fd, "wb") as f:
                    f.write(os.fsencode(stats.mount_options) + b"\n")
            seconds["layers"] = time.perf_counter() - t

            t = time.perf_counter()
            trace.event("commit")
            _commit(staging, dest)
            trace.event("committed")
            seconds["commit"] = time.perf_counter() - t
        except BaseException as e:  # includes KeyboardInterrupt: never leave a half-made tree
            name_dest(e, dest, staging)
            _abandon_staging(staging, e)
            raise
        finally:
            release_staging(staging)
    seconds["total"] = time.perf_counter() - t_start
    stats.seconds = {k: round(v, 6) for k, v in seconds.items()}
    return stats


def _describe(source):
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "description", repr(source))


def _layer_name(layer, count):
    return f"{layer_of(layer.index, count)} ({layer.digest or layer.diff_id})"


@contextlib.contextmanager
def _naming_the_layer(layer, count):
    """A blob's error from its source (a registry's 404 or 500 as the layer is opened, a download
    cut as it is read) names the blob alone: say which layer of the image it is too."""
    try:
        yield
    except LaminaError as e:
        if layer.digest:
            name_the_layer(e, [layer.digest], lambda _: layer_of(layer.index, count))
        raise


def _apply(layer, count, target, format, limits, hidden=None, lower_dirs=None, defer_lowers=False,
           lowers_provider=None, early_dirs=False):
    from .layer import apply_layer  # imported late: the native core is only needed to extract

    trace.event("apply", layer=layer.index, format=format, scan_hidden=hidden is not None)
    with _naming_the_layer(layer, count), layer.open() as f:
        stats = apply_layer(f, target, format=format, digest=layer.digest, diff_id=layer.diff_id,
                            media_type=layer.media_type, limits=limits, name=_layer_name(layer, count),
                            hidden=hidden,
                            lower_dirs=lower_dirs, defer_lowers=defer_lowers, lowers_provider=lowers_provider,
                            early_dirs=early_dirs, progress=getattr(layer, "progress", None))
    trace.event("applied", layer=layer.index)
    return stats


def _apply_flat(layers, root, limits):
    # Order matters: each layer's whiteouts delete what the layers below wrote.
    at, below = _scan_upper_layers(layers, limits)
    if not at and not below:
        return [_apply(layer, len(layers), root, "dir", limits) for layer in layers]
    try:
        skipped = set()  # non-directories skipped in any layer: what lies under them is an error, as unskipped
        return [_apply(layer, len(layers), root, "dir", limits, hidden=(at, below, i, skipped))
                for i, layer in enumerate(layers)]
    except (HiddenLinkTarget, InvalidArchiveError, ExtractError):
        # A hardlink to a skipped file, or any other failure: do it the plain way,
        # which is always right (and reports a real error as it is).
        clear_dir(root)
        return [_apply(layer, len(layers), root, "dir", limits) for layer in layers]


def _scan_upper_layers(layers, limits):
    """What the small upper layers hide below them: two dicts, path -> the
    highest layer that hides it (the path itself, or everything under it)."""
    from .layer import scan_layer

    at, below = {}, {}
    for k in range(len(layers) - 1, 0, -1):
        layer = layers[k]
        under = sum(lower.size or 0 for lower in layers[:k])
        if layer.size is None or not under or layer.size > SCAN_FRACTION * under:
            continue
        trace.event("scan", layer=k)
        try:
            with _naming_the_layer(layer, len(layers)), layer.open() as f:
                _, hides = scan_layer(f, digest=layer.digest, diff_id=layer.diff_id, media_type=layer.media_type,
                                      limits=limits, name=_layer_name(layer, len(layers)),
                                      max_paths=max(0, SCAN_MAX_PATHS - len(at) - len(below)))
        except (Interrupted, Cancelled):
            raise
        except LaminaError:
            # Not scanned: its error comes as it is written, after those of the layers below
            # (the plain way's order: a bad lower layer is the one named, as on every path;
            # an image of reordered diffIDs named layer 2 here, layer 1 there).
            trace.event("scanned", layer=k, failed=True)
            continue
        trace.event("scanned", layer=k, overflow=hides is None)
        if hides is None:
            continue  # too many paths to keep: its whiteouts apply as it is written
        layer_at, layer_below = hides
        for p in layer_at:  # top-down: the first layer to hide a path is the highest
            at.setdefault(p, k)
        for p in layer_below:
            below.setdefault(p, k)
    return at, below


def _apply_overlay(layers, root, limits):
    layers_dir = os.path.join(root, "layers")
    os.mkdir(layers_dir, 0o755)
    targets = []
    for layer in layers:
        target = os.path.join(layers_dir, str(layer.index))
        os.mkdir(target, 0o755)
        targets.append(target)
    return apply_overlay_layers(layers, targets,
                                lambda i, **kw: _apply(layers[i], len(layers), targets[i], "overlay", limits, **kw))


def apply_overlay_layers(layers, targets, apply):
    """Extract overlay-format layers all at once: a layer that meets an entry
    needing the layers below it (a path through a lower symlink, a whiteout in a
    directory the layer does not have, a hardlink to a lower file) waits there
    until they are finished, then goes on over them.  A directory it implies, and
    a whiteout in a directory of its own (held until they are known), do not wait
    (early_dirs, see lamina._extract): in the rare image where one turns out to be a symlink or
    a file below, the layer is read again, waiting there.

    ``apply(i, lower_dirs=..., defer_lowers=..., lowers_provider=..., early_dirs=...)`` extracts
    layer ``i`` into ``targets[i]``."""
    if not layers:
        return []
    below = LayersBelow(len(layers))

    def provider(i):
        return lambda: targets[:i] if below.wait(i) else None

    def one(i):
        ok = False
        try:
            try:
                result = apply(i, lower_dirs=None, defer_lowers=i > 0, lowers_provider=provider(i), early_dirs=True)
            except ImpliedDirMoved:
                trace.event("apply-again", layer=i)
                clear_dir(targets[i])
                result = apply(i, lower_dirs=None, defer_lowers=True, lowers_provider=provider(i))
            ok = True
            return result
        finally:
            below.finished(i, ok)

    # started bottom-up: a layer only ever waits for the ones below it, which started before it
    workers = open_file_budget(len(layers) - 1, f"{len(layers)} layers",
                               "the overlay format's top layer, extracted over the layers below it,",
                               min(MAX_PARALLEL_LAYERS, len(layers)))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="lamina-layer") as pool:
        futures = [pool.submit(one, i) for i in range(len(layers))]
        concurrent.futures.wait(futures)
    for f in futures:  # the lowest failing layer's error, so the report is stable
        if f.exception() is not None:
            raise f.exception()
    return [f.result() for f in futures]


# overlay format, an image of one layer (or none): the empty bottom layer its mount-options add
EMPTY_LOWER = "empty"


def mount_options(layer_dirs, *, userxattr=False):
    """overlayfs options for read-only layers, bottom first in ``layer_dirs`` (overlayfs wants top first);
    ``userxattr``: the layers mark opaque dirs with user.overlay.* (extracted without root)."""
    if not layer_dirs:
        return ""
    return ("lowerdir=" + ":".join(_escape_lowerdir(d) for d in reversed(layer_dirs))
            + (",userxattr" if userxattr else ""))


def _escape_lowerdir(path):
    # overlayfs splits lowerdir on ':' and mount options on ','; both honour a backslash escape.
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


# --- destination handling ------------------------------------------------------
#
# DEST never looks complete before it is.  As a rule the image is staged in a
# sibling of DEST and renamed onto it in one rename(2) (which replaces an empty
# directory atomically).  An existing empty DEST whose parent lamina cannot
# write (a read-only parent, another user's) or that is a mount point (rename
# cannot replace it) is filled in place instead: the image is staged in a hidden
# DEST/.lamina-tmp-* and its entries are moved up one by one only once all of
# it applied and verified, the staging dir going last.  So DEST holds a
# .lamina-tmp-* entry until it is complete; an error or Ctrl-C while moving up
# takes back what was moved, and only a crash there (kill -9, power loss) leaves
# DEST part-filled, with that entry in it, which the next unpack names.  The staging
# dir is locked as a sibling's is, so a DEST that holds nothing but staging dirs nobody
# holds is one that crashed before it moved anything up: the next unpack removes them.
#
# Filling in place, DEST sits in a directory someone else owns, who may swap DEST for a
# symlink to a directory of the user's (~/.ssh) at any moment.  So DEST is held by an fd from
# the start, and the move up, the root's metadata and the cleanup go through that fd and the
# staging dir's (checked to be the one made), never through DEST's path.

_STAGING_PREFIX = ".lamina-tmp-"
# A sibling staging dir is made under this name, locked (flock), then renamed to its staging
# name: so a DEST.lamina-tmp-* dir nobody holds locked is one a killed unpack left, which the
# next unpack to DEST removes (a --link one holds names of store objects gc could never free).
_NEWBORN_PREFIX = ".lamina-new-"
# the names _make_staging_inside gives, which the next unpack may sweep
_IN_PLACE_NAME = re.compile(r"\.lamina-(?:tmp|new)-[0-9a-f]{8}")
# A staging dir is marked by lamina with this xattr, its value the directory's inode number and
# the random token of its name (_mark_value): the sweep removes only a marked one.  A name alone
# said nothing of whose it is: an image whose one top-level entry is named .lamina-tmp-<8 hex>
# was swept out of DEST by the next unpack, and a DEST.lamina-tmp-* someone else left beside
# DEST went too.  Neither an image's entry (the
# value names an inode nobody can choose) nor a copy (cp -a, a tar of it: another inode) passes
# for one.  On a filesystem without user xattrs nothing is marked, and nothing is swept.
_MARK = "user.lamina.staging"
_held = {}  # staging dir -> an fd of it (a sibling's holds its lock)
_in_place = {}  # staging dir inside DEST -> (DEST's fd, (st_dev, st_ino) of the staging dir)
_beside = {}  # sibling staging dir -> an fd of DEST's parent, which the commit and cleanup go by
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def name_dest(e, dest, staging=None):
    """Add DEST to the error of a system call that said no while DEST was filled: the entry
    alone does not tell the user which disk is full, read-only or refuses device nodes (and
    the staging dir the entry was written in is not a path the user knows).  ``staging``: the
    staging dir, whose ``/proc/self/fd/N`` (pinned_staging: what the layers are written
    through) an error may name; DEST is named in its place."""
    fd = _held.get(staging) if staging is not None else None
    if fd is not None:
        _unpin_message(e, f"/proc/self/fd/{fd}", dest)
    if isinstance(e, ExtractError) and e.errno is not None and len(e.args) == 1 and isinstance(e.args[0], str):
        e.args = (f"{e.args[0]} (unpacking into {dest})",)


def _unpin_message(e, pinned, dest):
    """``pinned`` (and its "/." form) in ``e``'s message or file name, as ``dest``."""
    at = re.compile(re.escape(pinned) + r"(?![0-9])(?:/\.(?![^/\s'\":]))?")
    if isinstance(e, OSError) and not isinstance(e, LaminaError):
        for attr in ("strerror", "filename", "filename2"):
            v = getattr(e, attr, None)
            if isinstance(v, str) and pinned in v:
                setattr(e, attr, at.sub(lambda m: dest, v))
    elif e.args and isinstance(e.args[0], str) and pinned in e.args[0]:
        e.args = (at.sub(lambda m: dest, e.args[0]), *e.args[1:])


def _check_dest(dest):
    try:
        st = os.lstat(dest)
    except (FileNotFoundError, NotADirectoryError):
        return  # made with its parents (make_dirs says what is in the way)
    if not stat.S_ISDIR(st.st_mode):
        raise ExtractError(f"destination {dest} exists and is not a directory")
    names = os.listdir(dest)
    left = sorted(n for n in names if n.startswith((_STAGING_PREFIX, _NEWBORN_PREFIX)))
    if left and len(left) == len(names):
        # nothing moved up yet: staging dirs of killed unpacks (gone now), or of running ones
        _sweep_killed_inside(dest)
        names = os.listdir(dest)
        left = sorted(n for n in names if n.startswith((_STAGING_PREFIX, _NEWBORN_PREFIX)))
    if left:
        raise ExtractError(f"destination {dest} holds an unpack that did not finish ({left[0]}); "
                           f"empty it and unpack again")
    if names:
        raise ExtractError(f"destination {dest} exists and is not empty")


def _make_staging(dest):
    """The staging dir for ``dest``: a sibling, or a hidden dir inside an existing empty
    ``dest`` when a sibling cannot be renamed onto it (see above)."""
    parent, name = os.path.split(dest)
    if _fill_in_place(dest, parent):
        return _make_staging_inside(dest)
    return make_sibling_staging(dest)


def make_sibling_staging(dest):
    """A new, locked staging dir beside ``dest`` (in its parent, made if missing), after the
    staging dirs of killed unpacks there are swept; held by fds until release_staging()."""
    parent, name = os.path.split(dest)
    make_dirs(parent, f"destination {dest}")
    _sweep_killed_siblings(parent, name)
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd, staging = _make_sibling(parent_fd, parent, name, dest)
    except BaseException:
        os.close(parent_fd)
        raise
    _held[staging] = fd
    _beside[staging] = parent_fd
    # mkdtemp makes it 0700; a rootfs (or the overlay container dir) is normally 0755.
    # A layer's own "./" entry may still set the root's mode.
    os.fchmod(fd, 0o755)
    return staging


def _make_sibling(parent_fd, parent, name, dest):
    """The locked fd and the name of a new sibling staging dir, made in DEST's parent (by its fd:
    a path through a parent swapped meanwhile would put it elsewhere)."""
    fd, own = _make_newborn(parent_fd, parent, name + _NEWBORN_PREFIX, name + _STAGING_PREFIX, dest)
    return fd, os.path.join(parent, own)


def _make_newborn(dir_fd, shown, newborn_prefix, own_prefix, dest):
    """The locked and marked fd and the name of a new staging dir in ``dir_fd`` (``shown``: its
    path): made under ``newborn_prefix`` + a token, locked, marked, then renamed to
    ``own_prefix`` + the token, so a staging dir nobody holds is a killed unpack's, which the
    next unpack removes (_sweep_killed).  All by ``dir_fd``, never a path through it."""
    while True:
        token = secrets.token_hex(4)
        newborn, own = newborn_prefix + token, own_prefix + token
        try:
            os.mkdir(newborn, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            continue
        except OSError as e:  # named by its whole path, as mkdtemp did (the CLI names its directory)
            raise type(e)(e.errno, e.strerror, os.path.join(shown, newborn)) from None
        try:  # O_NOFOLLOW: the layers go by this fd (pinned_staging)
            fd = os.open(newborn, _DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            continue  # another unpack to DEST swept it (empty, unlocked yet): make another
        except OSError as e:
            if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            # whoever can write the directory moved ours away (empty: nothing of ours is left) and
            # put something at its name; a symlink or file there is unlinked, never followed
            _unlink_if_not_dir(dir_fd, newborn)
            raise ExtractError(f"cannot unpack into {dest}: the new staging dir {os.path.join(shown, newborn)} "
                               f"was replaced by someone else before lamina opened it") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _mark(fd, own)
            os.rename(newborn, own, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return fd, own
        except FileNotFoundError:
            os.close(fd)   # another unpack to DEST swept it before our lock: still empty, make another
        except BaseException:
            if _is_at(dir_fd, newborn, fd):
                _remove_newborn(newborn, dir_fd)
            os.close(fd)
            raise


def _mark(fd, name):
    """Mark directory ``fd`` as the staging dir named ``name`` (its token)."""
    try:
        os.setxattr(fd, _MARK, _mark_value(os.fstat(fd).st_ino, _token(name)))
    except OSError:
        pass   # no user xattrs here: left unmarked, a killed unpack's dir is never swept


def _unmark(fd):
    try:
        os.removexattr(fd, _MARK)
    except OSError:
        pass   # none (ENODATA), or no user xattrs here


def _is_marked(fd, name):
    """Is directory ``fd``, found at ``name``, a staging dir lamina marked under that name?"""
    try:
        return os.getxattr(fd, _MARK) == _mark_value(os.fstat(fd).st_ino, _token(name))
    except OSError:
        return False


def _mark_value(ino, token):
    return f"{ino} {token}".encode()


def _token(name):
    """The random token of a staging dir's name (DEST.lamina-tmp-TOKEN, its newborn
    DEST.lamina-new-TOKEN, apply --atomic's DEST.lamina-tmp-TOKEN-old): the mark names it, so
    that a mark a kill left on DEST's root (between the rename onto DEST and the unmark) never
    passes for a staging dir's, whatever DEST is called (even DEST2.lamina-tmp-x)."""
    rest = re.split(r"\.lamina-(?:tmp|new)-", name)[-1]
    return rest[:-len("-old")] if rest.endswith("-old") else rest


def _unlink_if_not_dir(dir_fd, name):
    try:
        if not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _make_staging_inside(dest):
    """The hidden staging dir inside an existing empty ``dest``, made and recorded through an
    fd of ``dest`` (see "destination handling")."""
    try:
        dest_fd = os.open(dest, _DIR_FLAGS)
    except OSError as e:
        raise ExtractError(f"cannot open destination {dest}: {e.strerror}") from None
    try:
        # born under another name and locked before it is named, as a sibling is
        fd, own = _make_newborn(dest_fd, dest, _NEWBORN_PREFIX, _STAGING_PREFIX, dest)
        try:
            st = os.fstat(fd)
            os.fchmod(fd, 0o755)  # as a sibling's: a layer's own "./" entry may still set it
        except BaseException:
            os.close(fd)
            raise
        _record_in_place(st, own)
    except BaseException:
        os.close(dest_fd)
        raise
    staging = os.path.join(dest, own)
    _in_place[staging] = (dest_fd, (st.st_dev, st.st_ino))
    _held[staging] = fd
    return staging


def pinned_staging(staging):
    """``/proc/self/fd/N`` of the staging dir: a path that reaches the directory made, whatever
    is at its name now."""
    return pin(_held[staging])


def sibling_fds(staging):
    """(DEST's parent's fd, the staging dir's fd) of a sibling staging dir."""
    return _beside[staging], _held[staging]


def release_staging(staging):
    """Let go of the lock on a staging dir (after its commit or its removal)."""
    fd = _held.pop(staging, None)
    if fd is not None:
        unpin(fd)
        os.close(fd)
    held = _in_place.pop(staging, None)
    if held is not None:
        os.close(held[0])
        _forget_in_place(*held[1], os.path.basename(staging))
    parent_fd = _beside.pop(staging, None)
    if parent_fd is not None:
        os.close(parent_fd)


def _is_at(dir_fd, name, fd):
    """Is the entry ``name`` in ``dir_fd`` the directory ``fd`` (not whatever was put there)?"""
    try:
        at = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    st = os.fstat(fd)
    return (at.st_dev, at.st_ino) == (st.st_dev, st.st_ino)


def _abandon_staging(staging, exc):
    """Remove a failed unpack's staging dir: its entries through its own fd (wherever it is now),
    then its name only if that is still the directory made.  Never by a path through DEST or
    its parent, where someone may have put a tree of theirs (or of the user's) by now.  After
    Ctrl-C the name goes at once and the entries are removed by a detached process that inherits
    the fds (and so the lock, which keeps a sweep out meanwhile)."""
    from .errors import Interrupted
    fd = _held.get(staging)
    if fd is None:
        return
    dir_fd = _beside.get(staging)
    if dir_fd is None:
        dir_fd = _in_place[staging][0]
    name = os.path.basename(staging)
    if isinstance(exc, (KeyboardInterrupt, Interrupted)):
        if _is_at(dir_fd, name, fd):
            trash = f".lamina-trash-{secrets.token_hex(6)}"
            try:
                os.rename(name, trash, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                name = trash
            except OSError:
                pass
        if _discard_by_fds(dir_fd, name, fd):
            return
    clear_dir(f"/proc/self/fd/{fd}/.", shown=staging)  # "/.": clear_dir's O_NOFOLLOW open takes it
    if _is_at(dir_fd, name, fd):
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError:
            pass


_DISCARD = """
import os, sys
from lamina.tree import clear_dir
from lamina.unpacker import _is_at
dir_fd, fd, name = int(sys.argv[1]), int(sys.argv[2]), os.fsencode(sys.argv[3])
clear_dir(f"/proc/self/fd/{fd}/.")
if _is_at(dir_fd, name, fd):
    os.rmdir(name, dir_fd=dir_fd)
"""


def _discard_by_fds(dir_fd, name, fd):
    """Empty directory ``fd`` and remove it as ``name`` in ``dir_fd`` (if it is still there) in a
    detached process: True if started."""
    import subprocess
    import sys
    try:
        subprocess.Popen([sys.executable, "-c", _DISCARD, str(dir_fd), str(fd), name], pass_fds=(dir_fd, fd),
                         start_new_session=True, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    except OSError:
        return False
    return True


def _remove_newborn(name, dir_fd):
    try:
        os.rmdir(name, dir_fd=dir_fd)   # empty until it is renamed to its staging name: never more than that
    except OSError:
        pass


def _sweep_killed_siblings(parent, name):
    """Remove the DEST.lamina-tmp-* dirs of unpacks that were killed (nobody holds their lock),
    and the empty DEST.lamina-new-* dirs of unpacks killed before they named theirs: only those
    lamina marked (_sweep_killed)."""
    prefix, newborn = name + _STAGING_PREFIX, name + _NEWBORN_PREFIX
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _sweep_killed(parent_fd, parent, lambda n: n.startswith((prefix, newborn)), newborn)
    finally:
        os.close(parent_fd)


def _sweep_killed_inside(dest):
    """Remove the staging dirs inside DEST of in-place unpacks killed before they moved anything
    up (nobody holds their lock); through DEST's fd, as the fill itself goes."""
    try:
        dest_fd = os.open(dest, _DIR_FLAGS)
    except OSError:
        return
    try:
        # Only names _make_staging_inside gives, and of those only the directories it recorded: an
        # image's own top-level directory, or the user's, may be named like one too (a completed
        # unpack leaves the image's tree in DEST, and nobody holds a lock on it)
        _sweep_killed(dest_fd, dest, _IN_PLACE_NAME.fullmatch, _NEWBORN_PREFIX, recorded=_is_recorded)
    finally:
        os.close(dest_fd)


# An image's top-level directory, or the user's, may have the name of an in-place staging dir
# (and nobody holds a lock on it), so each staging dir is recorded by its inode and name in this
# user's runtime directory while it lives: one nobody holds locked whose record is there is a
# killed unpack's.  (A reboot clears the records with the runtime directory: what a killed unpack
# left is then named, as an unfinished unpack, not swept.)
def _in_place_record(st_dev, st_ino, name, *, create=False):
    from .store.locks import runtime_dir
    # (create: a runtime dir in a shared temp dir must be ours alone, whether we write or read
    # it: records another user planted there would steer our sweep)
    d = os.path.join(runtime_dir(create=True), "lamina-staging")
    if create:
        os.makedirs(d, mode=0o700, exist_ok=True)
    return os.path.join(d, f"{st_dev}-{st_ino}-{name}")


def _record_in_place(st, name):
    try:
        os.close(os.open(_in_place_record(st.st_dev, st.st_ino, name, create=True),
                         os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    except (OSError, LaminaError):
        pass  # unrecorded: a kill leaves a staging dir the next unpack names instead of sweeping


def _is_recorded(st_dev, st_ino, name):
    try:
        return stat.S_ISREG(os.lstat(_in_place_record(st_dev, st_ino, name)).st_mode)
    except (OSError, LaminaError):
        return False


def _forget_in_place(st_dev, st_ino, name):
    try:
        os.unlink(_in_place_record(st_dev, st_ino, name))
    except (OSError, LaminaError):
        pass


def _sweep_killed(dir_fd, shown, ours, newborn, recorded=None):
    """Remove the staging dirs in ``dir_fd`` (``shown``: its path) whose names ``ours`` takes, that
    lamina marked (_MARK), and whose lock nobody holds: those of killed unpacks (``newborn``-named
    ones are empty: they were never named; one killed before its mark, three system calls after
    its mkdir, stays, as anyone else's dir of that name does).  Through ``dir_fd``, never by a
    path through a parent swapped meanwhile.  ``recorded``: (st_dev, st_ino, name) -> whether a staging dir was recorded
    as made so, which it must also be to be taken (a newborn needs none: only ever removed if
    empty)."""
    try:
        found = [n for n in os.listdir(dir_fd) if ours(n)]
    except OSError:
        return
    for n in found:
        try:
            fd = os.open(n, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st = os.fstat(fd)
            if recorded is not None and not n.startswith(newborn) and not recorded(st.st_dev, st.st_ino, n):
                continue  # no unpack made it: an image's directory, or the user's
            if not (_is_marked(fd, n) and _is_at(dir_fd, n, fd)):
                continue   # not lamina's: an empty DEST.lamina-new-x of someone else's too
            trace.event("sweep-killed-staging", path=os.path.join(shown, n))
            if n.startswith(newborn):
                _remove_newborn(n, dir_fd)   # (an rmdir: only ever an empty one)
            else:
                remove_tree(f"/proc/self/fd/{dir_fd}/{n}")
                if recorded is not None:
                    _forget_in_place(st.st_dev, st.st_ino, n)
        except OSError:
            pass  # held: another unpack to DEST is working in it (or it is not ours to remove)
        finally:
            os.close(fd)


def _fill_in_place(dest, parent):
    try:
        st = os.stat(dest)
    except (FileNotFoundError, NotADirectoryError):
        return False  # it must be made anyway, in its parent
    if os.path.ismount(dest):
        return True
    if not os.access(parent, os.W_OK | os.X_OK):
        return True
    try:  # writable by its permissions, but maybe not by its filesystem (a read-only mount)
        return os.statvfs(parent).f_flag & os.ST_RDONLY != 0 or os.stat(parent).st_dev != st.st_dev
    except OSError:
        return True


def _commit(staging, dest):
    if staging in _in_place:
        _move_up(staging, dest)
        return
    fd = _held[staging]
    _rename_onto(_beside[staging], os.path.basename(staging), os.path.basename(dest), fd, dest)
    # DEST is the image's tree, without lamina's mark; taken off only now: killed at the rename,
    # the staging dir keeps its mark and the next unpack sweeps it (a kill between the two
    # leaves the mark on DEST's root, which no sweep ever matches: it names the staging dir's
    # token, which DEST's name does not hold)
    _unmark(fd)


def _rename_onto(dir_fd, own, name, fd, dest):
    """Put the staging dir ``own`` (directory ``fd``) in ``dir_fd`` at DEST's ``name``, as
    rename(2) would (an empty DEST replaced, a non-empty one refused), and make sure it was
    ours that went there: whoever can write DEST's parent can swap the staging dir for a
    directory of theirs at any moment before the rename, which would make DEST theirs and
    leave the image where they moved it.  So DEST is made new (RENAME_NOREPLACE) or exchanged
    with the staging dir (RENAME_EXCHANGE), then checked: a swap is undone and refused."""
    from ._objects import RENAME_EXCHANGE, rename_noreplace, renameat2

    def refuse(why):
        raise ExtractError(f"cannot move the unpacked image into {dest}: {why}") from None

    replaced = (f"its staging dir {own} was replaced by someone else while the image was unpacked "
                f"(the image was removed; what is at {own} now is not lamina's)")
    if not _is_at(dir_fd, own, fd):
        refuse(replaced)
    try:
        exchanged = not rename_noreplace(dir_fd, own, dir_fd, name)
        if exchanged:
            renameat2(dir_fd, own, dir_fd, name, RENAME_EXCHANGE)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            refuse(e.strerror)
        exchanged = None  # a filesystem without renameat2's flags: rename(2), the swap check after
        try:
            os.rename(own, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as e:
            refuse(e.strerror)
    if not _is_at(dir_fd, name, fd):
        # theirs went onto DEST: back to where it was (with the user's DEST, if exchanged)
        if exchanged:
            renameat2(dir_fd, own, dir_fd, name, RENAME_EXCHANGE)
        else:
            os.rename(name, own, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        refuse(replaced)
    if exchanged:
        try:
            os.rmdir(own, dir_fd=dir_fd)  # DEST as it was: an empty directory, or rename(2) refuses
        except OSError as e:
            renameat2(dir_fd, own, dir_fd, name, RENAME_EXCHANGE)
            refuse("it is not empty any more" if e.errno in (errno.ENOTEMPTY, errno.EEXIST) else
                   "it is not a directory any more" if e.errno == errno.ENOTDIR else e.strerror)


def _move_up(staging, dest):
    """Fill ``dest`` from the staging dir inside it (see above): every entry, then the
    root's own metadata; on failure, take back what was moved.  All through the fds of
    ``dest`` and of the staging dir: never a path that a swap of DEST could redirect."""
    dest_fd, made = _in_place[staging]
    own = os.path.basename(staging)
    try:
        stage_fd = os.open(own, _DIR_FLAGS, dir_fd=dest_fd)
    except OSError as e:
        raise ExtractError(f"cannot move the unpacked image into {dest}: its staging dir {own} "
                           f"is gone ({e.strerror})") from None
    try:
        st = os.fstat(stage_fd)  # before the moves change its mtime
        if (st.st_dev, st.st_ino) != made:
            raise ExtractError(f"cannot move the unpacked image into {dest}: its staging dir {own} was "
                               f"replaced while the image was unpacked")
        others = [n for n in os.listdir(dest_fd) if n != own]
        if others:  # as rename(2) would: never mix our tree with what someone else put there
            raise ExtractError(f"cannot move the unpacked image into {dest}: it is not empty any more ({others[0]})")
        names = os.listdir(stage_fd)
        if own in names:  # the image has an entry named like our staging dir (a 1 in 62**8 chance)
            raise ExtractError(f"cannot unpack into {dest}: the image has an entry named {own}; unpack again")
        if stat.S_IMODE(st.st_mode) & 0o300 != 0o300:
            os.fchmod(stage_fd, stat.S_IMODE(st.st_mode) | 0o700)  # an image's 0555 root: moving out needs write
        moved = []
        try:
            for n in names:
                os.rename(n, n, src_dir_fd=stage_fd, dst_dir_fd=dest_fd)
                moved.append(n)
            _copy_root_metadata(st, stage_fd, dest_fd)
            os.rmdir(own, dir_fd=dest_fd)
            os.utime(dest_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        except BaseException:
            for n in moved:  # back into staging, which the caller then abandons as a whole
                try:
                    os.rename(n, n, src_dir_fd=dest_fd, dst_dir_fd=stage_fd)
                except OSError:
                    remove_tree(f"/proc/self/fd/{dest_fd}/{n}")
            raise
    finally:
        os.close(stage_fd)


def _copy_root_metadata(st, src_fd, dst_fd):
    """What the layers gave the staging root (``src_fd``; owner and mode from ``st``, xattrs)
    onto DEST (``dst_fd``); what this user may not change (another's directory) stays as it was.
    The mtime is the caller's: removing the staging dir changes it."""
    steps = []
    if os.geteuid() == 0:
        steps.append(lambda: os.chown(dst_fd, st.st_uid, st.st_gid))
    steps.append(lambda: os.chmod(dst_fd, stat.S_IMODE(st.st_mode)))
    for attr in os.listxattr(src_fd):
        if attr == _MARK:
            continue   # lamina's, of the staging dir
        steps.append(lambda attr=attr: os.setxattr(dst_fd, attr, os.getxattr(src_fd, attr)))
    for step in steps:
        try:
            step()
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EROFS):
                raise
