"""In-use records: ROOT/lamina/mounts/<key>.json and ROOT/lamina/bundles/<key>.json.

Each lists a mounted or bundled image and holds it in the store, so that
``image prune -a`` and gc keep its blobs and snapshots until ``lamina umount``
(or until the bundle directory is deleted).

A store that cannot be written (mounted read-only, another user's) can neither
take the record nor the hold: its mounts are recorded outside it, in this
user's runtime directory keyed by the store (see ``outside_dir``), and hold
nothing; whoever can write the store may remove the image while it is mounted
(the README says so).  Readers look in both places, so ``umount`` finds a
mount whatever became of the store's writability in between.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import time

from ..errors import StoreError
from .fsutil import open_own


def records_dir(store, kind, *, outside=False, create=False):
    """Where ``kind`` records live: in the store, or (``outside``) in the runtime directory
    (whose safe creation ``create`` asks for: readers leave the disk alone)."""
    if outside:
        return os.path.join(outside_dir(store, create=create), kind + "s")
    return os.path.join(store.paths.meta, kind + "s")


def outside_dir(store, *, create=False):
    """<runtime dir>/lamina-stores/<device-inode of the store root>: the records of a store
    this user cannot write.  Keyed by the root's inode so that every path to one store
    (a read-only bind mount of it, say) finds the same records."""
    from .locks import runtime_dir
    try:
        st = os.stat(store.root)
        key = f"{st.st_dev}-{st.st_ino}"
    except OSError:
        key = hashlib.sha256(os.fsencode(os.fspath(store.root))).hexdigest()[:16]
    return os.path.join(runtime_dir(create=create), "lamina-stores", key)


def record_dir_of(store, record):
    return records_dir(store, record["kind"], outside=record.get("outside", False))


def key_for(kind, path):
    return f"{kind}-" + hashlib.sha256(os.fsencode(path)).hexdigest()[:24]


def record_use(store, kind, path, image, extra=None, *, outside=None):
    """Write the record (and the hold) of ``image`` used at ``path``.  ``outside`` (by default:
    when the store cannot be written): the record goes to the runtime directory and holds nothing."""
    if outside is None:
        outside = not store.writable
    key = key_for(kind, path)
    record = {"kind": kind, "key": key, "path": path, "manifest_digest": image.manifest_digest,
              "image_id": image.config_digest, "names": [r.familiar() for r in image.refs], "created": time.time()}
    record.update(extra or {})
    if outside:
        record["outside"] = True
    else:
        store.hold(key, image)  # gc keeps the image's blobs and snapshots while the record exists
    d = records_dir(store, kind, outside=outside, create=True)
    os.makedirs(d, exist_ok=True)
    from .fsutil import atomic_write
    atomic_write(os.path.join(d, key + ".json"), json.dumps(record, indent=2).encode())
    return record


def drop_record(store, record, *, best_effort=False):
    try:
        try:
            os.unlink(os.path.join(record_dir_of(store, record), record["key"] + ".json"))
        except FileNotFoundError:
            pass
        if not record.get("outside"):
            store.release(record["key"])
    except OSError:
        if not best_effort:  # e.g. a read-only listing by a user who cannot write the store
            raise


def load_records(store, kind):
    """The records of ``kind``, those in the store first, then those kept outside it."""
    out = []
    for outside in (False, True):
        d = records_dir(store, kind, outside=outside)
        try:
            names = sorted(os.listdir(d))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for n in names:
            if not n.endswith(".json") or ".tmp-" in n:
                continue
            try:
                with open_own(os.path.join(d, n)) as f:
                    rec = json.load(f)
            except (OSError, ValueError, RecursionError, StoreError):  # RecursionError: nested deep
                continue
            # whoever owns the store can write its records: a record is read as what its place says
            # it is, since its kind and key name the directories umount and prune remove, and its
            # path (which umount unmounts) must be the one its key was made from
            if (isinstance(rec, dict) and rec.get("kind") == kind and rec.get("key") == n[:-5]
                    and isinstance(rec.get("path"), str) and key_for(kind, rec["path"]) == n[:-5]
                    and bool(rec.get("outside")) == outside):
                out.append(rec)
    return out


def _bundle_alive(rec):
    path = rec.get("path", "")
    try:
        st = os.stat(os.path.join(path, "config.json"))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and os.path.isdir(os.path.join(path, "rootfs"))


def in_use(store, *, prune_stale=True):
    """Records of mounts and bundles that keep images in use: [{kind, path, manifest_digest, image_id, ...}].

    A bundle whose directory was deleted no longer counts (and its record and hold
    are dropped when ``prune_stale``).  A mount counts until ``lamina umount``, even
    if the kernel mount is gone (e.g. after a reboot): its upper dir may hold writes.
    (A new mount to its TARGET takes the place of one that holds none: mounts.mount.)
    """
    from .mounts import is_mountpoint
    out = []
    for rec in load_records(store, "bundle"):
        if _bundle_alive(rec):
            out.append(rec)
        elif prune_stale:
            drop_record(store, rec, best_effort=True)
    for rec in load_records(store, "mount"):
        rec["mounted"] = is_mountpoint(rec.get("path", ""))
        out.append(rec)
    return out
