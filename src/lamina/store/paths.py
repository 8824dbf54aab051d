"""Where things live under a store root, and creating that layout.

    ROOT/oci-layout, ROOT/index.json, ROOT/blobs/sha256/<hex>   the OCI image layout (always valid)
    ROOT/ingest/<hex>.partial                                   blobs being written (resumable)
    ROOT/ingest/load-*.tmp                                      an archive a load from stdin spools
    ROOT/locks/                                                 flock files
    ROOT/snapshots/<chainID hex>/{fs,meta.json}                 extracted layers (overlay format)
    ROOT/objects/blake3/<2 hex>/<blake3>.<meta key>              file objects shared by snapshots (objects.py)
    ROOT/lamina/holds/<key>.json                                content kept alive by mounts etc.
    ROOT/lamina/config.json                                     store settings (config.py)
    ROOT/lamina/rollbacks/<random>.json                         what failed imports (and rmi beside a writer) left (imports.py)
    ROOT/lamina/verified/<blob hex>                             a layer blob's diffID, hashed once (snapshots.verify_shared)

Every digest is validated before it becomes a path (digest.hex_of raises on
anything but sha256 + 64 lowercase hex), so ``sha256:../../x`` never reaches
the filesystem.
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from .. import digest as _digest
from .. import mediatypes as mt
from ..errors import StoreError
from .fsutil import write_if_absent

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
# (prefix, suffix) of the file in ingest/ that ``lamina load`` spools an archive on stdin to
LOAD_SPOOL = ("load-", ".tmp")
# A compact store (keep-blobs false) lacks the layer blobs it rebuilds from snapshots; the
# layout stays valid, and says so to whoever reads it (see README, "Compact store").
OCI_LAYOUT_COMPACT = (b'{"imageLayoutVersion":"1.0.0","lamina.compact":"layer blobs are not kept in this store;'
                      b' export images with: lamina copy REF oci:DIR"}')
EMPTY_INDEX = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}).encode()
# What a store holds at its root (check_outside_store also finds the store's directories by them).
# oci-layout is among them: a reader that found no oci-layout lists the root a moment later, when
# the creating process may have written it (the store is complete then, so it is not foreign).
OWN_ENTRIES = {"blobs", "ingest", "locks", "snapshots", "objects", "lamina", "index.json", "oci-layout"}
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FANOUT_RE = re.compile(r"[0-9a-f]{2}")


def default_root():
    """``$LAMINA_ROOT``; else /var/lib/lamina as root, ``$XDG_DATA_HOME/lamina`` (or ~/.local/share/lamina)."""
    env = os.environ.get("LAMINA_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/lamina")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "lamina"


def foreign_entries(root):
    """Names in ``root`` that a store being created has no business with (lamina's own
    entries may be there already: another process is creating the store right now)."""
    return [n for n in os.listdir(root) if n not in OWN_ENTRIES and ".tmp-" not in n]


class Paths:
    def __init__(self, root):
        self.root = Path(os.path.abspath(os.fsdecode(root)))
        self.blobs = self.root / "blobs" / "sha256"
        self.ingest = self.root / "ingest"
        self.locks = self.root / "locks"
        self.snapshots = self.root / "snapshots"
        self.meta = self.root / "lamina"
        self.holds = self.meta / "holds"
        self.rollbacks = self.meta / "rollbacks"
        self.verified = self.meta / "verified"
        self.index = self.root / "index.json"

    def blob(self, digest):
        return self.blobs / _digest.hex_of(digest)

    def partial(self, digest):
        return self.ingest / f"{_digest.hex_of(digest)}.partial"

    def snapshot(self, chain_id):
        return self.snapshots / _digest.hex_of(chain_id)

    def blob_lock(self, digest):
        return self.locks / f"blob-{_digest.hex_of(digest)}.lock"

    def snapshot_lock(self, chain_id):
        return self.locks / f"snapshot-{_digest.hex_of(chain_id)}.lock"

    @property
    def index_lock(self):
        return self.locks / "index.lock"

    @property
    def gc_lock(self):
        return self.locks / "gc.lock"

    def hold(self, key):
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise StoreError(f"invalid hold key {key!r} (letters, digits, '.', '_', '-')")
        return self.holds / f"{key}.json"

    def own_dirs(self):
        """The store's own directories that exist (relative name, path): those lamina lists, and
        removes from, by name."""
        root = self.root
        fixed = ["blobs", "blobs/sha256", "ingest", "locks", "snapshots", "objects", "objects/blake3",
                 "objects/stage", "lamina", "lamina/holds",
                 "lamina/rollbacks", "lamina/verified"]
        try:
            fixed += [f"objects/blake3/{n}" for n in sorted(os.listdir(root / "objects" / "blake3"))
                      if _FANOUT_RE.fullmatch(n)]
        except OSError:
            pass  # absent (no objects yet), or itself not a directory: check_own_dirs says which
        return [(rel, root / rel) for rel in fixed]

    def check_own_dirs(self):
        """Refuse a store one of whose own directories is a symlink, or no directory: gc, fsck
        --repair and rmi list them and remove what they find there by name, so a ``blobs/sha256``,
        ``snapshots`` or ``objects/blake3/XX`` put in place of the directory, pointing outside,
        made them delete files outside the store."""
        for rel, path in self.own_dirs():
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise StoreError(f"store {self.root}: {rel}: {e.strerror}") from None
            if stat.S_ISLNK(st.st_mode):
                raise StoreError(f"store {self.root}: {rel} is a symlink (to {os.readlink(path)!r}): lamina never"
                                 " follows symlinks inside its store; put the directory back in its place")
            if not stat.S_ISDIR(st.st_mode):
                raise StoreError(f"store {self.root}: {rel} is not a directory")

    def create(self):
        """Create the layout if missing (idempotent; safe when processes race)."""
        root = self.root
        try:
            if root.exists() and not (root / "oci-layout").exists():
                if not root.is_dir():
                    raise StoreError(f"store root {root} is not a directory")
                if foreign_entries(root):
                    raise StoreError(f"{root} is not empty and is not an OCI image layout; refusing to use it as a store")
            root.mkdir(parents=True, exist_ok=True)
            for d in (self.blobs, self.ingest, self.locks, self.holds):
                d.mkdir(parents=True, exist_ok=True)
            # Snapshots hold setuid binaries and device nodes of every image; keep other users out
            # of the tree (containers reach it through overlay mounts, not through this path).
            self.snapshots.mkdir(mode=0o700, exist_ok=True)
            write_if_absent(self.index, EMPTY_INDEX)
            # last: oci-layout says the store exists, so whoever sees it finds everything else
            write_if_absent(root / "oci-layout", OCI_LAYOUT)
        except PermissionError as e:
            raise StoreError(f"cannot create the store at {root}: {e.strerror} (use --root or LAMINA_ROOT)") from None
        except OSError as e:
            raise StoreError(f"cannot create the store at {root}: {e.strerror or e}") from None
