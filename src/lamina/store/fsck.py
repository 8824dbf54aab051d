"""lamina fsck [--repair]: check every blob, image and snapshot; find leftovers of crashes.

Errors are damage (a blob that does not hash to its name, an image missing a
blob, a snapshot that differs from its layer).  Warnings are debris a killed
process leaves (partials, temp dirs, lock files) and content nothing uses any
more; both kinds are listed, only unrepaired errors make fsck fail.

--repair runs with the gc lock exclusive, i.e. while no other lamina process is
writing, so every partial and temp dir it finds is stale:
  corrupt blob -> deleted (the images that needed it are then reported missing it);
  bad snapshot -> replaced by a fresh extraction of its (verified) layer blob, or of the layer
                  its sidecar rebuilds (a compact layer: the sidecar is kept);
  unreadable index.json -> kept aside, and rebuilt with every intact image, unnamed;
  debris and unreferenced blobs/snapshots -> removed.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import digest as _digest
from .. import mediatypes
from ..errors import BlobNotFoundError, LaminaError, StoreError
from ..images import familiar
from . import sidecar
from . import snapshots as _snapshots
from .fsutil import FULL_ERRNOS, atomic_write, disk_usage, open_own, syncfs
from .gc import reachable
from .image import load_image
from .index import entry_name, make_entry
from .locks import FileLock, is_locked, remove_if_unlocked
from .paths import LOAD_SPOOL, OCI_LAYOUT
from .treediff import first_difference

_PERMANENT_LOCKS = ("gc.lock", "index.lock")


@dataclass
class Finding:
    severity: str           # "error" or "warning"
    kind: str               # corrupt-blob, missing-blob, broken-image, bad-snapshot, orphan-blob, ...
    subject: str            # the digest, chainID or path concerned
    message: str
    repaired: bool = False

    def __str__(self):
        return f"{self.severity}: {self.message}" + (" (repaired)" if self.repaired else "")


class Findings:
    """The findings of one fsck, in the order found: the newest HELD as Finding objects, the
    older ones as JSON lines in a temp file (``scratch``).  A store an interrupted prune left
    holds an unused object per file of its layers, and 300k findings took ~200 MiB; every one
    is still listed (``lamina fsck --format json``), read back as a stream.  Only the newest
    finding is changed after it is added (a repair marks it), so it is never the one spilled."""
    HELD = 1000

    def __init__(self, scratch=None):
        self.held = []
        self.scratch = scratch
        self.file = None
        self.end = 0           # bytes of the temp file written
        self.spilled = 0

    def append(self, finding):
        self.held.append(finding)
        if len(self.held) > self.HELD:
            if self.file is None:
                self.file = tempfile.TemporaryFile(dir=self.scratch)
            out = "".join(json.dumps(asdict(f)) + "\n" for f in self.held[:-1]).encode()
            os.pwrite(self.file.fileno(), out, self.end)
            self.end += len(out)
            self.spilled += len(self.held) - 1
            del self.held[:-1]

    def __iter__(self):
        pos, rest = 0, b""
        while pos < self.end:
            chunk = os.pread(self.file.fileno(), min(1 << 18, self.end - pos), pos)
            pos += len(chunk)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield Finding(**json.loads(line))
        yield from list(self.held)

    def __len__(self):
        return self.spilled + len(self.held)

    def __getitem__(self, i):
        return list(self)[i]

    def __eq__(self, other):
        if isinstance(other, (list, Findings)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    def __repr__(self):
        return repr(list(self)) if len(self) <= self.HELD else f"<{len(self)} findings>"

    def keep(self, wanted):
        """Drop the findings ``wanted(finding)`` is false for."""
        kept = Findings(self.scratch)
        for f in self:
            if wanted(f):
                kept.append(f)
        self.close()
        self.__dict__.update(kept.__dict__)

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


@dataclass
class FsckReport:
    findings: Findings = field(default_factory=Findings)
    checked: dict = field(default_factory=dict)
    repair: bool = False
    # chainIDs whose sidecar the snapshot check rebuilt the layer from to the end (the diffID
    # checked at its end record): sidecar.check need not rebuild them a second time
    sidecars_rebuilt: set = field(default_factory=set, repr=False, compare=False)
    # a lock file the check has to take is a symlink (not removed): nothing else was checked
    locks_refused: bool = field(default=False, repr=False, compare=False)

    def add(self, severity, kind, subject, message):
        f = Finding(severity, kind, subject, message)
        self.findings.append(f)
        return f

    def _unrepaired_errors(self):
        return (f for f in self.findings if f.severity == "error" and not f.repaired)

    @property
    def errors(self):
        """Errors still present (not repaired)."""
        return list(self._unrepaired_errors())

    @property
    def ok(self):
        # stops at the first (the findings may be a stream of hundreds of thousands)
        return next(self._unrepaired_errors(), None) is None

    @property
    def clean(self):
        return not self.findings

    def to_dict(self, findings=True):
        """The JSON document; ``findings=False``: without the list (see iter_dicts)."""
        doc = {"ok": self.ok, "checked": self.checked, "repair": self.repair}
        if findings:
            doc["findings"] = list(self.iter_dicts())
        return doc

    def iter_dicts(self):
        return (asdict(f) for f in self.findings)


def check(store, repair=False, waiting=None):
    """``waiting()`` is called if --repair has to wait for other lamina writers first."""
    report = FsckReport(Findings(store.paths.root if store.writable else None), repair=repair)
    if _symlinked_locks(store, report, repair):
        report.locks_refused = True
        return report   # no lock is taken through a symlink: nothing else is checked without it
    lock = FileLock(store.paths.gc_lock)
    if repair:
        if not lock.try_acquire():
            if waiting:
                waiting()
            lock.acquire()
        quiet = True
    else:
        # Without the lock some writer may be mid-import: judge its debris by the item locks only.
        quiet = lock.try_acquire()
    try:
        Checker(store, report, repair, quiet).run()
    finally:
        lock.release()
    return report


def _symlinked_locks(store, report, repair):
    """Report lock files that are symlinks (lamina makes none, and takes no lock through one:
    see locks._NOFOLLOW), removing the links with ``repair`` before any lock is taken.  True if
    one the check itself has to lock (gc.lock, index.lock) is left."""
    try:
        names = sorted(os.listdir(store.paths.locks))
    except (FileNotFoundError, NotADirectoryError):
        return False
    left = False
    for n in names:
        path = store.paths.locks / n
        try:
            to = os.readlink(path)
        except OSError:
            continue   # not a symlink
        f = report.add("error", "symlink-lock", str(path), f"locks/{n} is a symlink (to {to!r}): lamina never "
                       "follows symlinks inside its store")
        if repair:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            f.repaired = True
        left = left or (not repair and n in _PERMANENT_LOCKS)
    return left


class Checker:
    def __init__(self, store, report, repair, quiet):
        self.store, self.paths, self.report = store, store.paths, report
        self.repair = repair
        self.quiet = quiet              # True: no other writer is running
        self.bad_blobs = set()
        self.layer_blobs = {}           # chainID: [(layer digest, media type)] of the images listing it
        self.layers_checked = set()     # (layer digest, diffID) checked by _not_its_layer
        self.bad_snapshots = set()      # chainIDs of snapshots found bad and not repaired
        self.parents = {}               # chainID: the parent its meta.json names (None: none, or unreadable)

    def run(self):
        self.layout()
        self.blobs()
        index_ok = self.index()
        self.snapshots()
        if index_ok:
            self.orphans()
        self.ingest()
        self.debris()
        self.locks()

    def _fix(self, finding, action):
        """Run a repair action if repairing; mark the finding repaired when it succeeds."""
        if not self.repair:
            return
        try:
            action()
            finding.repaired = True
        except (OSError, LaminaError) as e:
            finding.message += f"; repair failed: {e}"

    # --- layout and blobs -----------------------------------------------------------

    def layout(self):
        try:
            with open_own(self.paths.root / "oci-layout") as f:
                version = json.load(f).get("imageLayoutVersion")
            if not isinstance(version, str) or not version.startswith("1."):
                raise ValueError(version)
        except (OSError, ValueError, AttributeError, StoreError):
            f = self.report.add("error", "layout", "oci-layout", "oci-layout is missing or invalid")
            self._fix(f, lambda: atomic_write(self.paths.root / "oci-layout", OCI_LAYOUT))

    def blobs(self):
        names = sorted(os.listdir(self.paths.blobs))
        good = []
        for n in names:
            path = self.paths.blobs / n
            if not _digest.is_valid(f"sha256:{n}") or not path.is_file() or path.is_symlink():
                f = self.report.add("warning", "stray-blob", str(path), f"blobs/sha256/{n}: not a blob (bad name or type)")
                self._fix(f, lambda p=path: _remove_any(p))
            else:
                good.append(f"sha256:{n}")
        workers = min(4, max(os.cpu_count() or 1, 2))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # hashlib releases the GIL
            actual = list(pool.map(lambda d: _hash_or_error(self.paths.blob(d)), good))
        # A blob listed, then gone when hashed: a compaction beside this check (keep-blobs false,
        # under a lease, which no check-only fsck waits for) dropped it once its layer's sidecar
        # was in place.  Not a corrupt blob (it said "content hashes to <unreadable: No such file
        # or directory>"); the images that need it are checked against what is there now.
        good, actual = [d for d, a in zip(good, actual) if a is not None], [a for a in actual if a is not None]
        for d, a in zip(good, actual):
            if a != d:
                self.bad_blobs.add(d)
                f = self.report.add("error", "corrupt-blob", d, f"blob {d}: content hashes to {a}")
                self._fix(f, lambda d=d: self.paths.blob(d).unlink())
        self.report.checked["blobs"] = len(good)

    # --- index and images -------------------------------------------------------------

    def index(self):
        try:
            entries = self.store.index.read()
        except StoreError as e:
            f = self.report.add("error", "index", "index.json", str(e))
            self._fix(f, self._rebuild_index)
            return f.repaired
        digests = list(dict.fromkeys(e["digest"] for e in entries))
        for d in digests:
            # named as `lamina images` shows them (s:1, not docker.io/library/s:1)
            named = (entry_name(e) for e in entries if e["digest"] == d)
            names = ", ".join(familiar(n) for n in named if n) or "<none>"
            advice = "re-load or re-pull it, or remove it with lamina rmi"
            try:
                image = load_image(self._open_good, d)
            except LaminaError as e:
                self.report.add("error", "broken-image", d, f"image {names} ({d}): {e}; {advice}")
                continue
            # A layer blob is not needed where the image's layer has a sidecar (sidecar.check
            # rebuilds it against the diffID): whichever blob the snapshot was extracted from, as
            # another image's (a saved and re-loaded copy's: uncompressed) may name the layer
            rebuilt = {}
            for k, (chain, layer, diff_id) in enumerate(zip(image.chain_ids, image.layers, image.diff_ids)):
                self.layer_blobs.setdefault(chain, []).append((layer.digest, layer.media_type))
                rebuilt[layer.digest] = rebuilt.get(layer.digest, True) and self.store.layer_is_compact(chain)
                problem = self._not_its_layer(chain, layer, diff_id)
                if problem:
                    self.report.add("error", "broken-image", d, f"image {names} ({d}): layer {k + 1} "
                                    f"({layer.digest}) is not the layer its config names: {problem}; {advice}")
            for b in image.blobs:
                if b in self.bad_blobs and self.store.has_blob(b):
                    self.report.add("error", "broken-image", d, f"image {names} ({d}) needs blob {b}, which is"
                                    f" corrupt; {advice}")
                elif not self.store.has_blob(b) and not rebuilt.get(b) and not self._compact_now(image, b):
                    self.report.add("error", "missing-blob", b, f"image {names} ({d}): blob {b} is missing; {advice}")
            # an older pull took a descriptor that lies about a blob the store held already
            described = [(image.config_digest, image.manifest["config"]["size"])]
            described += [(x.digest, x.size) for x in image.layers]
            for b, size in described:
                if b in self.bad_blobs:
                    continue
                try:
                    actual = self.store.blob_size(b)
                except BlobNotFoundError:
                    continue   # (missing, reported above; or dropped by a compaction beside us)
                if actual != size:
                    self.report.add("error", "broken-image", d, f"image {names} ({d}): its manifest says blob {b} "
                                    f"is {size} bytes, but it is {actual}; {advice}")
        self.report.checked["images"] = len(digests)
        return True

    def _not_its_layer(self, chain, layer, diff_id):
        """What is wrong with a layer blob whose snapshot was made from another blob (the image was
        stored beside one holding that layer in another compression, or by a lamina that did not
        check it then): its extraction never read it, so its diffID is checked here."""
        key = (layer.digest, diff_id)
        if key in self.layers_checked or not self._good_blob(layer.digest):
            return None
        self.layers_checked.add(key)
        try:
            info = _snapshots.read_info(self.paths, chain)
        except StoreError:
            return None
        if info is None or info.digest == layer.digest:
            return None
        try:
            _snapshots.check_diff_id(self.paths.blob(layer.digest), layer.digest, diff_id, layer.media_type)
        except FileNotFoundError:
            return None   # dropped by a compaction beside this check: its sidecar is checked instead
        except LaminaError as e:
            return str(e).removeprefix(f"layer {layer.digest}: ")
        return None

    def _compact_now(self, image, blob):
        """Every layer of ``image`` that is ``blob`` has its sidecar now: a compaction beside this
        check gives each its sidecar before it drops the blob, so a blob found missing after the
        sidecars were looked for may be one it dropped meanwhile."""
        chains = [c for c, x in zip(image.chain_ids, image.layers) if x.digest == blob]
        return bool(chains) and all(self.store.layer_is_compact(c) for c in chains)

    def _good_blob(self, digest):
        return digest not in self.bad_blobs and self.store.has_blob(digest)

    def _open_good(self, digest):
        if digest in self.bad_blobs:
            raise StoreError(f"blob {digest} is corrupt")
        return self.store.open_blob(digest)

    def _rebuild_index(self):
        path = self.paths.index
        if path.exists():
            os.rename(path, path.with_name(f"index.json.corrupt-{int(time.time())}"))
        entries = []
        for d in self.store.blobs():
            if d in self.bad_blobs or not self.store.has_blob(d):
                continue
            try:
                image = load_image(self.store.open_blob, d)
            except LaminaError:
                continue  # not a manifest (a layer, a config), or a broken one
            entries.append(make_entry(image.media_type, d, image.manifest_size))
        self.store.index.write(entries)

    # --- snapshots ----------------------------------------------------------------------

    def snapshots(self):
        count = 0
        chains = []
        for n in sorted(os.listdir(self.paths.snapshots)):
            path = self.paths.snapshots / n
            if n.startswith((_snapshots.TMP_PREFIX, _snapshots.TRASH_PREFIX)):
                hexid = n.split("-", 2)[1] if n.count("-") >= 2 else ""
                busy = _digest.is_valid(f"sha256:{hexid}") and is_locked(self.paths.snapshot_lock(f"sha256:{hexid}"))
                if not busy and (self.quiet or n.startswith(_snapshots.TRASH_PREFIX)):
                    f = self.report.add("warning", "stale-temp", str(path), f"snapshots/{n}: left by an interrupted"
                                        " extraction or removal")
                    self._fix(f, lambda p=path: _snapshots.remove_tree(p))
                continue
            if not _digest.is_valid(f"sha256:{n}"):
                f = self.report.add("warning", "stray-snapshot", str(path), f"snapshots/{n}: not a snapshot")
                self._fix(f, lambda p=path: _remove_any(p))
                continue
            count += 1
            chains.append(f"sha256:{n}")
        # Bottom up: an upper layer is extracted again over the snapshots below it (directories it
        # implies copied up with their metadata, hardlinks to their files), so a changed lower made
        # a good upper look bad, and --repair rebuilt the upper from the change.  A lower is judged
        # (and repaired) first; while one is bad, a difference above it proves nothing.
        depth = {chain: len(self._ancestors(chain)) for chain in chains}
        for chain in sorted(chains, key=lambda c: (depth[c], c)):
            self._snapshot(chain)
        self.report.checked["snapshots"] = count

    def _ancestors(self, chain):
        """The chainIDs below ``chain``, nearest first, as far as their meta.json say."""
        out = []
        while True:
            if chain not in self.parents:
                try:
                    info = _snapshots.read_info(self.paths, chain)
                except StoreError:
                    info = None
                self.parents[chain] = info.parent if info is not None else None
            chain = self.parents[chain]
            if chain is None or chain in out:  # (a meta.json may lie: no loop is followed round)
                return out
            out.append(chain)

    def _snapshot(self, chain, again=False):
        try:
            info = _snapshots.read_info(self.paths, chain)
        except StoreError as e:
            info, problem = None, str(e).removeprefix(f"snapshot {chain}: ")
        else:
            problem = None if info else "no meta.json"
        if info is not None and (info.chain_id != chain or not info.fs.is_dir()
                                 or _snapshots.chain_id_of(info.diff_id, info.parent) != chain):
            problem = "meta.json does not match the snapshot"
        if problem:
            f = self.report.add("error", "bad-snapshot", chain, f"snapshot {chain}: {problem}")
            self._fix(f, lambda: _snapshots.remove(self.paths, chain))  # re-extracted when next needed
            self._bad(f)
            return
        digest, media_type = info.digest, info.media_type
        if not self._good_blob(digest):
            # Images of one layer in other compressions (a docker-archive's plain tar, a
            # registry's gzip) share its snapshot, which names the blob it was made from: once
            # the image that brought that blob was removed, the snapshot went unchecked (a
            # changed file in it unseen) while the store held the layer in another blob.  The
            # extraction checks the diffID, so any of them shows what the snapshot must hold.
            digest, media_type = next(((d, m) for d, m in self.layer_blobs.get(chain, ()) if self._good_blob(d)),
                                      (digest, media_type))
        rebuilt = None
        if not self._good_blob(digest):
            if not self.store.layer_is_compact(chain):
                self.report.add("warning", "unverifiable-snapshot", chain,
                                f"snapshot {chain}: its layer blob {info.digest} is missing or corrupt; cannot verify it")
                return
            # A compact layer's sidecar rebuilds it from the snapshot's own files, each checked by
            # its xxh3 and the whole by the diffID; but a mode, an owner, an xattr, a symlink or a
            # name added or removed is in no file it reads: the layer rebuilt bit-exact while
            # unpack, mount and --link handed out another tree.  Extracting the rebuilt layer shows it.
            digest, media_type = info.digest, info.media_type
            rebuilt = lambda: sidecar.open_layer(self.paths.snapshot(chain), info.diff_id,  # noqa: E731
                                                 f"layer {info.digest} (diffID {info.diff_id})")
        retry = False
        if self.store.writable:
            fresh = self.paths.snapshots / f"{_snapshots.TMP_PREFIX}{_digest.hex_of(chain)}-fsck-{secrets.token_hex(4)}"
        else:  # a read-only store is still checked: the fresh extraction goes to a temp dir of ours
            fresh = Path(tempfile.mkdtemp(prefix="lamina-fsck-")) / "snapshot"
        try:
            os.mkdir(fresh, 0o755)
            lower = _snapshots.lower_chain(self.paths, info.parent) if info.parent else []
            try:
                # the lowers' names that share an inode through file dedup are no hardlinks of
                # the image, as for the extraction that made the snapshot: without them a hardlink
                # to a lower file took every identical file of that directory for its hardlinks
                # (a good snapshot was "bad", and --repair made them one inode in the image)
                with rebuilt() if rebuilt else contextlib.nullcontext(self.paths.blob(digest)) as layer:
                    _snapshots._extract(layer, fresh / "fs", digest, info.diff_id,
                                        mediatypes.OCI_LAYER if rebuilt else media_type,
                                        lower_dirs=lower or None, defer_lowers=lower is None,
                                        lower_shared=lambda fs: _snapshots.dedup_shared(self.paths, fs))
                if rebuilt:  # read to its end record: the rebuilt tar's sha256 is the diffID
                    self.report.sidecars_rebuilt.add(chain)
            except sidecar.SidecarError:
                # a file the sidecar reads changed, or the sidecar did: sidecar.check names it
                self.bad_snapshots.add(chain)
                return
            except _snapshots.NeedsLowers:
                self.report.add("warning", "unverifiable-snapshot", chain,
                                f"snapshot {chain}: the snapshots below it are missing; cannot verify it")
                return
            diff = first_difference(os.fspath(info.fs), os.fspath(fresh / "fs"), scratch=os.fspath(fresh))
            below = next((c for c in self._ancestors(chain) if c in self.bad_snapshots), None)
            if diff and below is not None:
                # (what the layer copies up or links from below came from the changed snapshot)
                self.report.add("warning", "unverifiable-snapshot", chain,
                                f"snapshot {chain}: the snapshot {below} below it differs from its layer; "
                                f"cannot verify it until lamina fsck --repair has replaced that one ({diff})")
            elif diff:
                f = self.report.add("error", "bad-snapshot", chain,
                                    f"snapshot {chain}: differs from layer {digest}: {diff}")
                self._fix(f, lambda: self._replace_snapshot(chain, fresh, digest, media_type))
                self._bad(f)
        except (LaminaError, OSError) as e:
            if getattr(e, "errno", None) in FULL_ERRNOS:
                # the check's own extraction found the disk full: nothing is known of the
                # snapshot, and calling its layer bad sent users to delete a good image
                self.report.add("warning", "unverifiable-snapshot", chain,
                                f"snapshot {chain}: no room to extract its layer again to check it "
                                f"({_words(e)}); free space on the store's filesystem and run lamina fsck again")
                return
            if getattr(e, "errno", None) in (errno.EMFILE, errno.ENFILE):
                # the same for this process's open-file limit: nothing is wrong with the layer
                self.report.add("warning", "unverifiable-snapshot", chain,
                                f"snapshot {chain}: too many open files to extract its layer again to check "
                                f"it ({_words(e)}); raise the open-file limit (ulimit -n) and run lamina fsck again")
                return
            if isinstance(e, FileNotFoundError) and rebuilt is None and not again and \
                    not self.store.has_blob(digest) and self.store.layer_is_compact(chain):
                # the blob went as it was read: a compaction beside this check dropped it, the
                # layer's sidecar in place first; it rebuilds the layer now
                retry = True
            elif isinstance(e, OSError):
                raise
            else:
                self.report.add("error", "bad-layer", digest, f"snapshot {chain}: layer {digest}"
                                f" does not extract: {e}")
        finally:
            _snapshots.remove_tree(fresh if self.store.writable else fresh.parent)
        if retry:
            self._snapshot(chain, again=True)

    def _bad(self, finding):
        if not finding.repaired:
            self.bad_snapshots.add(finding.subject)

    def _replace_snapshot(self, chain, fresh, digest, media_type):
        """Swap in the fresh extraction, keeping the original meta.json (sizes are recomputed; the
        blob is the one it was extracted from now)."""
        info = _snapshots.read_info(self.paths, chain)
        meta = {k: v for k, v in info.to_dict().items() if k != "path"}
        meta["digest"], meta["media_type"] = digest, media_type
        meta["size"], meta["inodes"] = disk_usage(fresh / "fs")
        meta["format"] = _snapshots.FORMAT
        meta["markers"] = _snapshots.marker_kind()  # the fresh extraction's, not the original's
        with open(fresh / "meta.json", "w") as f:
            json.dump(meta, f, indent=2)
        if sidecar.has_sidecar(self.paths.snapshot(chain)):
            # (its records name the files by path and content, which any extraction of the layer
            # holds: without it a compact layer, whose blob is gone, could never be rebuilt again)
            shutil.copyfile(sidecar.sidecar_path(self.paths.snapshot(chain)), sidecar.sidecar_path(fresh))
        syncfs(fresh)
        lock = FileLock(self.paths.snapshot_lock(chain)).acquire()
        try:
            old = self.paths.snapshots / f"{_snapshots.TRASH_PREFIX}{_digest.hex_of(chain)}-{secrets.token_hex(4)}"
            os.rename(self.paths.snapshot(chain), old)
            os.rename(fresh, self.paths.snapshot(chain))
        finally:
            lock.release(unlink=True)
        _snapshots.remove_tree(old)

    # --- leftovers --------------------------------------------------------------------------

    def orphans(self):
        keep_blobs, keep_chains = reachable(self.store)
        for d in self.store.blobs():
            if d not in keep_blobs and d not in self.bad_blobs and self.store.has_blob(d):
                f = self.report.add("warning", "orphan-blob", d, f"blob {d}: not used by any image")
                self._fix(f, lambda d=d: self.paths.blob(d).unlink())
        for c in _snapshots.list_chain_ids(self.paths):
            if c not in keep_chains and self.paths.snapshot(c).exists():
                f = self.report.add("warning", "orphan-snapshot", c, f"snapshot {c}: not used by any image")
                self._fix(f, lambda c=c: _snapshots.remove(self.paths, c))

    def ingest(self):
        for n in sorted(os.listdir(self.paths.ingest)):
            path = self.paths.ingest / n
            hexid = n[:-len(".partial")] if n.endswith(".partial") else None
            if hexid and _digest.is_valid(f"sha256:{hexid}"):
                if is_locked(self.paths.blob_lock(f"sha256:{hexid}")):
                    continue  # being written right now
                size = path.stat().st_size
                f = self.report.add("warning", "stale-partial", str(path), f"ingest/{n}: interrupted ingest of"
                                    f" {size} bytes (resumed by the next pull or load of that blob)")
            elif self.quiet:
                what = "not an ingest file"
                if n.startswith(LOAD_SPOOL[0]) and n.endswith(LOAD_SPOOL[1]):
                    what = "the archive a load from stdin spooled, left when it was killed"
                f = self.report.add("warning", "stray-ingest", str(path), f"ingest/{n}: {what}")
            else:
                continue
            self._fix(f, lambda p=path: _remove_any(p))

    def debris(self):
        """Temp files of atomic writes (index.json, holds, rollbacks) that a killed process left."""
        if not self.quiet:
            return
        for d in (self.paths.root, self.paths.holds, self.paths.rollbacks, self.paths.verified):
            if d in (self.paths.rollbacks, self.paths.verified) and not d.is_dir():
                continue  # made by the first import refused beside another writer (the first shared layer)
            # An rmi or prune beside us holds no gc lease for this to wait for: it writes its new
            # index.json, and the record of a gc it leaves to the last writer (imports.defer_gc),
            # under a temp name and the index lock.  Neither is debris.
            swept_beside_rmi = (self.paths.root, self.paths.rollbacks)
            lock = FileLock(self.paths.index_lock) if self.repair and d in swept_beside_rmi else None
            with lock or contextlib.nullcontext():
                for n in sorted(os.listdir(d)):
                    if ".tmp-" in n:
                        path = d / n
                        f = self.report.add("warning", "stale-temp", str(path), f"{path}: left by an interrupted write")
                        self._fix(f, lambda p=path: _remove_any(p))

    def locks(self):
        for n in sorted(os.listdir(self.paths.locks)):
            if n in _PERMANENT_LOCKS:
                continue
            path = self.paths.locks / n
            if path.is_symlink() or is_locked(path):
                continue   # a symlink: reported (and removed) before any lock was taken
            f = self.report.add("warning", "stale-lock", str(path), f"locks/{n}: lock file of a process that"
                                " was killed")
            self._fix(f, lambda p=path: remove_if_unlocked(p))


def _words(e):
    return e.strerror if isinstance(e, OSError) else str(e)


def _hash_or_error(path):
    """The file's digest, a description of why it cannot be read, or None if it is gone."""
    try:
        return _digest.sha256_file(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"<unreadable: {e.strerror}>"


def _remove_any(path):
    if path.is_dir() and not path.is_symlink():
        _snapshots.remove_tree(path)
    else:
        path.unlink()
