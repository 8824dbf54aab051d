"""index.json: the store's list of image roots, edited under a lock and replaced atomically.

One entry per name.  A name is the full normalized reference, tagged
(``docker.io/library/nginx:latest``) or by digest (``docker.io/library/nginx@sha256:…``),
in ``org.opencontainers.image.ref.name`` so that ``skopeo inspect oci:ROOT:NAME`` and
``umoci unpack --image ROOT:NAME`` find it (both split ``ROOT:NAME`` at the first ':'
and accept ':' and '@' inside NAME).  An image with no name at all (docker's
dangling ``<none>:<none>``) keeps exactly one entry without the annotation, so
every image the store holds is reachable from index.json, which is all gc reads.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager

from .. import digest as _digest
from .. import mediatypes as mt
from ..errors import StoreError
from ..oci.model import ANNOTATION_REF_NAME
from .fsutil import FULL_ERRNOS, atomic_write, open_own
from .locks import FileLock
from .paths import foreign_entries

REPO_DIGEST = "io.lamina.repo.digest"


def entry_name(entry):
    name = (entry.get("annotations") or {}).get(ANNOTATION_REF_NAME)
    return name if isinstance(name, str) else None


def entry_repo_digest(entry):
    d = (entry.get("annotations") or {}).get(REPO_DIGEST)
    return d if _digest.is_valid(d) else None


def make_entry(media_type, digest, size, name=None, repo_digest=None, platform=None):
    entry = {"mediaType": media_type, "digest": digest, "size": size}
    if platform:
        entry["platform"] = platform
    annotations = {}
    if name:
        annotations[ANNOTATION_REF_NAME] = name
    if repo_digest:
        annotations[REPO_DIGEST] = repo_digest
    if annotations:
        entry["annotations"] = annotations
    return entry


class IndexFile:
    def __init__(self, paths):
        self.paths = paths

    def read(self):
        """The entries (list of descriptor dicts). Lock-free: the file is only ever replaced whole."""
        path = self.paths.index
        try:
            with open_own(path) as f:
                doc = json.load(f)
        except NotADirectoryError:
            raise StoreError(f"store root {self.paths.root} is not a directory (use --root or LAMINA_ROOT "
                             "to name the store)") from None
        except FileNotFoundError:
            if not (self.paths.root / "oci-layout").exists():
                return self._no_store()
            raise StoreError(f"{path} is missing; run lamina fsck") from None
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested deep
            raise StoreError(f"{path}: invalid JSON ({e}); run lamina fsck") from None
        manifests = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(manifests, list):
            raise StoreError(f"{path}: not an image index (no manifests list)")
        entries = []
        for i, e in enumerate(manifests):
            if not (isinstance(e, dict) and _digest.is_valid(e.get("digest"))):
                raise StoreError(f"{path}: manifests[{i}] is not a valid descriptor")
            entries.append(e)
        return entries

    def _no_store(self):
        """No store at the root yet (writers create it): no images, unless the root is something else."""
        root = self.paths.root
        try:
            names = foreign_entries(root)
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            raise StoreError(f"store root {root} is not a directory") from None
        if names:
            raise StoreError(f"{root} is not a lamina store (no oci-layout, and it holds other files);"
                             " use --root or LAMINA_ROOT to name the store")
        return []

    def write(self, entries):
        doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
        try:
            atomic_write(self.paths.index, json.dumps(doc, indent=2).encode() + b"\n")
        except OSError as e:
            if e.errno in FULL_ERRNOS:
                raise StoreError(self._full(e)) from e
            raise

    def _full(self, e):
        """A full disk refused the new index.json.  Every change of the names (rmi and prune
        too, which would free space) writes the new index beside the old one and renames it
        over, for a crash to leave one or the other: out of inodes even rmi cannot start."""
        index = self.paths.index
        try:
            st = os.statvfs(self.paths.root)
            no_inode = st.f_files > 0 and st.f_favail == 0   # f_files 0: no fixed inode count (btrfs)
        except OSError:
            no_inode = False
        if no_inode:
            return (f"cannot update {index}: the store's filesystem has no free inode, and even removing an "
                    "image writes the new index.json beside the old one first; remove a file on that "
                    "filesystem (lamina fsck --repair removes the store's unused content, if any) and run "
                    "the command again")
        return (f"cannot update {index}: {e.strerror}; free space on the store's filesystem and run the "
                "command again")

    @contextmanager
    def update(self):
        """``with index.update() as entries:`` edit the list in place; written back if changed."""
        with FileLock(self.paths.index_lock):
            entries = self.read()
            before = json.dumps(entries, sort_keys=True)
            yield entries
            if json.dumps(entries, sort_keys=True) != before:
                self.write(entries)
