"""Images of the store as a flat rootfs: ``lamina unpack REF DEST`` (and ``--link``).

materialize(store, ref, dest, link=False)
    Resolve the image in the store, make sure its snapshots exist (a "cold"
    unpack extracts them first), flatten them (store/flatten.py) into a staging
    directory and move it into place (``dest`` never looks complete before it
    is; see unpacker._make_staging for where the staging directory goes).

Bundles (``--bundle``) are in store/bundles.py, overlayfs mounts in
store/mounts.py, and the records that keep mounted and bundled images in use
in store/inuse.py.
"""
from __future__ import annotations

import os
import stat
import time

from ..errors import ImageError, MaterializeError, layer_of, layers_named
from .flatten import check_link, flatten
from .paths import OWN_ENTRIES


def _staged(dest, fill):
    """Make ``dest`` (absent or empty) complete or not at all: ``fill(staging_dir)``, then commit
    the staging dir as unpacker._commit does (a rename, or a move up from inside ``dest``)."""
    from ..unpacker import _abandon_staging, _check_dest, _commit, _make_staging, name_dest, release_staging
    dest = os.path.abspath(os.fsdecode(dest))
    _check_dest(dest)
    staging = _make_staging(dest)
    try:
        result = fill(staging)
        _commit(staging, dest)
    except BaseException as e:
        name_dest(e, dest, staging)
        _abandon_staging(staging, e)  # by its fd: never a tree put at its name meanwhile
        raise
    finally:
        release_staging(staging)
    return result


def check_outside_store(store, path, what):
    """Refuse a DEST, bundle or mount target inside the store: gc, prune and fsck --repair own
    every name there, so a tree put among them would be taken (``fsck --repair`` removed a DEST in
    snapshots/ or objects/ as debris) or trip them up (a --link tree in objects/stage/).

    By inode, not by path: the store reached through a bind mount (of it or of its snapshots/)
    or another mount of its filesystem has other paths but the same (st_dev, st_ino)."""
    theirs = _store_dirs(store)
    if not theirs:
        return  # no store there yet: nothing to be inside of
    fd = _nearest_existing(os.path.abspath(os.fsdecode(path)))
    try:
        while True:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in theirs:
                raise MaterializeError(f"{what} {path} is inside the store {store.paths.root}; "
                                       f"give one outside it")
            up = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            above = os.fstat(up)
            os.close(fd)
            fd = up
            if (above.st_dev, above.st_ino) == (st.st_dev, st.st_ino):
                return  # "/" is its own parent
    finally:
        os.close(fd)


def _store_dirs(store):
    """(st_dev, st_ino) of the store's root and of the directories in it, which a bind mount
    can show elsewhere one by one."""
    try:
        root = os.open(store.paths.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    try:
        st = os.fstat(root)
        dirs = {(st.st_dev, st.st_ino)}
        for name in sorted(OWN_ENTRIES) + ["blobs/sha256"]:
            try:
                st = os.stat(name, dir_fd=root, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if stat.S_ISDIR(st.st_mode):
                dirs.add((st.st_dev, st.st_ino))
        return dirs
    finally:
        os.close(root)


def _nearest_existing(path):
    """An O_PATH fd of ``path``, else of its nearest ancestor that exists (what unpack makes
    DEST under); symlinks in the user's path are followed, as the verbs that write there do."""
    while True:
        try:
            return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:  # absent, not a directory, not searchable: unpack makes or fails on it
            parent = os.path.dirname(path)
            if parent == path:
                raise
            path = parent


def _check_platform(image, platform):
    if platform is None or image.platform is None:
        return
    from ..platform import Platform
    want = platform if isinstance(platform, Platform) else Platform.parse(platform)
    held = [image.platform, *image.chosen_platforms]
    if not any(want.matches(p) or _any_level_of(want, p) for p in held):
        raise ImageError(f"image {image.config_digest[7:19]} is {image.platform}, not {want}")


def _any_level_of(want, held):
    """``--platform linux/amd64`` (no level) takes an amd64/vN image the store holds: a pull
    without --platform chooses the CPU's level from an index, as docker does, and the store keeps
    that image alone; the plain amd64 build it passed over is not there to give instead."""
    from ..platform import Platform
    held = Platform.parse(held)
    return (want.architecture == "amd64" and not want.variant
            and (held.os, held.architecture) == (want.os, want.architecture))


def materialize(store, ref, dest, *, link=False, platform=None):
    """``lamina unpack REF DEST`` from the store. Returns (Image, FlattenStats).

    The snapshots are extracted first if the store does not have them yet (a
    "cold" unpack); then they are flattened into DEST (the "warm" part).
    """
    image = ref if hasattr(ref, "chain_ids") else store.resolve(ref)
    _check_platform(image, platform)
    dest = os.path.abspath(os.fsdecode(dest))
    check_outside_store(store, dest, "destination")
    layer_dirs, t_extract, extracted = _snapshots(store, image)
    if link:
        check_link(layer_dirs, dest)
    stats = _staged(dest, lambda staging: flatten(layer_dirs, staging, link=link))
    stats.dest = dest
    stats.extract_seconds, stats.extracted = t_extract, extracted
    return image, stats


def snapshot_dirs(store, image):
    """store.snapshots_for(image) as paths, its errors naming the layer by its place in the image.

    A snapshot any image may share names its layer by digest alone ("layer sha256:…: entry 'x':
    …"); unpack REF, --link, --bundle and mount, which extract an image's missing snapshots
    (an image added through the Store API, a snapshot fsck --repair removed), said no more, where
    unpack, copy, load and pull say "layer 2 of 3 (sha256:…)"."""
    with layers_named([layer.digest for layer in image.layers], lambda k: layer_of(k, len(image.layers))):
        return [os.fspath(p) for p in store.snapshots_for(image)]


def _snapshots(store, image):
    t0 = time.perf_counter()
    missing = sum(1 for c in image.chain_ids if store.snapshot_info(c) is None)
    dirs = snapshot_dirs(store, image)
    return dirs, round(time.perf_counter() - t0, 6) if missing else 0.0, missing
