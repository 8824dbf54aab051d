"""``lamina pull``: registry -> store, each layer extracted from its bytes as they arrive.

    reference --(mirrors, then the registry)--> manifest or index --platform--> manifest
        --> config (diffIDs) --> layers, ``concurrency`` at a time, taking the link in turns
            bottom first (LinkTurns: each blob starts as the one below it nearly ended), each one:
            BlobStream (resume with Range at w.offset, retry cut/failed transfers, next endpoint)
            --> IngestTee --> store.ingest(digest, size), and the same bytes --> the layer's
            snapshot extraction (store/streaming.py); the blob is committed once the diffID
            verified (commit checks size + digest, a mismatch discards both and retries once),
            then the snapshot, whose files are then shared with the store's objects (dedup)
            while the other layers still download.  A layer needing the layers below goes on
            over their trees once final (diffID verified), before their dedup passes and
            commits; it is committed after them.
            Blobs already in the store: store.ensure_snapshot(...) on the extraction pool.
        --> store.put_blob(manifest[, index]) --> store.add_image(manifest, ref, repo_digest)
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field

from .. import digest as _digest, errors, mediatypes as mt, trace
from ..errors import DigestMismatchError, ImageError, LaminaError, RegistryError
from ..oci.model import choose_platform as _choose_platform
from ..oci.model import document_media_type, parse_config, parse_index, parse_manifest
from ..limits import MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, open_file_budget  # one limit for every way an image comes in
from ..lowers import LayersBelow
from ..platform import Platform
from ..reference import Reference
from .client import RegistryClient, manifest_response
from .progress import Reporter
from .blobstream import Cancelled, open_layer_stream

DEFAULT_CONCURRENCY = 3
# The next blob's request goes out when the one before it has about a request's latency of
# bytes left to arrive (twice the longest latency seen, at the link's rate so far), so the link
# never idles between two blobs, yet the last blob ends alone rather than with the one before
# it: its short tail then overlaps the other's.  At most TURN_OVERLAP (also the value until
# both are measured), at least TURN_OVERLAP_MIN.
TURN_OVERLAP = 8 << 20
TURN_OVERLAP_MIN = 256 << 10
# A blob that received nothing for this long (a stalled connection, a retry's backoff) lets the
# next ones start meanwhile: the link would idle otherwise.
TURN_STALL = 2.0
MAX_INDEX_DEPTH = 4


@dataclass
class LayerResult:
    digest: str
    size: int
    media_type: str
    status: str = "pending"           # "exists" or "downloaded"
    downloaded_bytes: int = 0         # bytes received from the network for this blob
    resumed_from: int = 0             # verified bytes already in the store's partial
    attempts: int = 0
    snapshot: str = ""


@dataclass
class PullResult:
    reference: str                    # full normalized reference pulled
    repo_digest: str                  # digest the registry served for the reference (index or manifest)
    manifest_digest: str
    config_digest: str
    platform: str
    status: str                       # "downloaded" or "up to date"
    endpoint: str                     # host that served the manifest (a mirror or the registry)
    layers: list = field(default_factory=list)
    bytes_downloaded: int = 0
    seconds: float = 0.0
    image: object = None

    def to_dict(self):
        d = {k: v for k, v in asdict(self).items() if k != "image"}
        d["image_id"] = self.config_digest
        return d


def chain_ids(diff_ids):
    out = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def _open_store(store):
    if store is None or isinstance(store, (str, os.PathLike)):
        from ..store import Store
        return Store(store)
    return store


# --------------------------------------------------------------------------------------------
# platform choice


def choose_platform(index, want, fetch, depth=0, platform_of=None):
    """The manifest descriptor for ``want`` (Platform or None: this machine, ``Platform.native()``,
    with its fallbacks).  ``platform_of(desc)``: a manifest's platform when its descriptor gives
    none (its config's)."""
    return _choose_platform(index.manifests, want, fetch, platform_of or (lambda d: d.platform), MAX_INDEX_DEPTH,
                            "image index", depth)


# --------------------------------------------------------------------------------------------
# from a reference to one manifest


@dataclass
class Resolved:
    repos: list          # endpoints to fetch blobs from: the one that answered first, then the others
    repo: object         # the Repository that served the manifest
    top: object          # ManifestResponse for the reference (an index or a manifest)
    manifest: object     # ManifestResponse of the chosen platform's manifest
    chosen: object       # the Platform the index named for it, or None
    children: dict       # nested indexes fetched on the way, digest -> ManifestResponse
    others: list         # the other platforms' manifests (all_platforms)


def _first_answer(client, ref, known=None):
    """(repositories, the one that answered, ManifestResponse), trying mirrors first.
    ``known(digest)``: the bytes of a document the caller holds, or None (Repository.known_manifest)."""
    repos = client.repositories(ref, ("pull",))
    for i, repo in enumerate(repos):
        try:
            held = repo.known_manifest(ref.digest or ref.tag, known) if known is not None else None
            return repos, repo, held or repo.get_manifest(ref.digest or ref.tag)
        except LaminaError:
            if i + 1 == len(repos):
                raise   # the registry's own answer (mirrors are best effort)
    raise RegistryError(f"no endpoint for {ref}")  # pragma: no cover


def _child(repo, desc, known=None):
    data = known(desc.digest) if known is not None else None
    if data is not None and _digest.sha256_bytes(data) == desc.digest:
        # held already: the index's descriptor names it by digest, so the registry has nothing to add
        mr = manifest_response(data, desc.digest, desc.media_type, f"{repo.name}@{desc.digest}")
    else:
        mr = repo.get_manifest(desc.digest)
    if len(mr.data) != desc.size:
        raise ImageError(f"manifest {desc.digest}: {len(mr.data)} bytes but the index says {desc.size}")
    if mr.media_type != desc.media_type:
        # The index and the document must name the same kind (CVE-2021-41190).
        raise ImageError(f"manifest {desc.digest}: descriptor says {desc.media_type} but the document says"
                         f" {mr.media_type}")
    return mr


def resolve(client, ref, want, *, all_platforms=False, known=None) -> Resolved:
    """The manifest ``ref`` names for platform ``want`` (None: this machine), every digest checked.
    ``known(digest)``: the bytes of a manifest, index or config the caller holds, or None; such
    a document is not fetched again (the reference itself is asked for with a HEAD)."""
    repos, repo, top = _first_answer(client, ref, known)
    repos = [repo] + [r for r in repos if r is not repo]
    children = {}

    def child(desc, platform=None):
        try:
            return _child(repo, desc, known)
        except errors.ImageNotFoundError as e:
            # the registry's "manifest unknown" for a digest the user never typed: say where it came from
            on = f" for {platform}" if platform is not None else ""
            raise errors.ImageNotFoundError(f"{ref}: its image index lists {desc.digest}{on}, but {e}") from None

    def fetch_index(desc):
        mr = child(desc, desc.platform)
        if not mr.is_index:
            raise ImageError(f"{desc.digest}: expected an index, got {mr.media_type}")
        children[desc.digest] = mr
        return parse_index(mr.document, mr.media_type, f"index {desc.digest}")

    if not top.is_index:
        return Resolved(repos, repo, top, top, None, children, [])
    fetched = {}   # manifests read for their platform, digest -> ManifestResponse

    def platform_of(desc):
        """An entry's platform: its descriptor's, else its config's, as containerd (and the layout
        reader) match an entry without one; an artifact's is none."""
        if desc.platform is not None or not mt.is_manifest(desc.media_type):
            return desc.platform
        if desc.digest not in fetched:
            fetched[desc.digest] = child(desc)
        mr = fetched[desc.digest]
        try:
            manifest = parse_manifest(mr.document, mr.media_type, f"manifest {desc.digest}")
        except errors.ArtifactError:
            return None
        cdesc = manifest.config
        config = known(cdesc.digest) if known is not None else None
        if config is None or len(config) != cdesc.size or _digest.sha256_bytes(config) != cdesc.digest:
            config = fetch_config([repo], cdesc)
        return parse_config(config, f"config {cdesc.digest}", len(manifest.layers)).platform

    index = parse_index(top.document, top.media_type, f"index {top.digest}")
    desc, chosen = choose_platform(index, want, fetch_index, platform_of=platform_of)
    mr = fetched.get(desc.digest) or child(desc, chosen)
    if not mt.is_manifest(mr.media_type):
        raise ImageError(f"{desc.digest}: expected a manifest, got {mr.media_type}")
    others = []
    if all_platforms:
        listed = {d.digest: d for d in index.manifests if mt.is_manifest(d.media_type)}  # each one once
        others = [child(d, d.platform) for digest, d in listed.items() if digest != desc.digest]
    return Resolved(repos, repo, top, mr, chosen, children, others)


def _check_config_size(cdesc):
    if cdesc.size > MAX_CONFIG_SIZE:
        raise ImageError(f"config {cdesc.digest}: {cdesc.size} bytes is larger than the {MAX_CONFIG_SIZE}-byte limit")


def fetch_config(repos, cdesc):
    """An image config's bytes (digest and size checked), from the first endpoint that has it."""
    what = f"config {cdesc.digest}"
    _check_config_size(cdesc)
    if cdesc.data is not None:
        return cdesc.data  # embedded in the manifest, checked against digest and size as it was parsed
    for i, repo in enumerate(repos):
        try:
            data = repo.get_blob(cdesc.digest, limit=max(cdesc.size, 1))
            break
        except LaminaError:
            if i + 1 == len(repos):
                raise
    if len(data) != cdesc.size:
        raise ImageError(f"{what}: {len(data)} bytes but the manifest says {cdesc.size}")
    return data


def _say_non_distributable(e, desc):
    """A foreign (non-distributable) layer the registry lacks: its image names it by urls, which
    docker, containerd and skopeo fetch it from; lamina never downloads another host's urls."""
    if (isinstance(e, errors.BlobNotFoundError) and len(e.args) == 1 and isinstance(e.args[0], str)
            and (desc.urls or desc.media_type in mt.FOREIGN_LAYER_TYPES)):
        e.args = (f"{e.args[0]} (a non-distributable layer, named by the image for download from "
                  f"{len(desc.urls)} url(s): lamina does not download layer urls)",)


def image_platform(want, chosen, config, what):
    """The platform of the image: the index's word for it, else its config's (a single image of
    another platform than ``want`` is taken with a warning naming ``what``, as docker does)."""
    if chosen is None:
        errors.warn_if_other_platform(want, config.platform, what)
    return chosen or config.platform


# --------------------------------------------------------------------------------------------


class LinkTurns:
    """Blobs take the link in turns, in the order given (bottom layer first).

    Downloads that share a link finish together, at its end, and every layer's extraction
    tail comes after that; worse, an upper layer soon waits for the snapshots below it, so
    what it receives meanwhile piles up.  In turns, the bottom layer arrives at the link's
    full rate and is extracted as it arrives, each next layer arrives once the ones below it
    are nearly there, and only the last blob's tail is left at the end.  Blob ``k`` may start
    when every blob before it has at most ``overlap`` bytes left to arrive, has ended, or has
    received nothing for ``stall`` seconds since its start."""

    def __init__(self, sizes, stall=None, cancel=None):
        self._left = list(sizes)
        self._stall = TURN_STALL if stall is None else stall
        self._heard = [None] * len(self._left)   # when each started or last received bytes
        self._started = [None] * len(self._left)
        self._latency = None   # the longest from a turn to its first byte
        self._since = None     # the first byte of all
        self._received = 0
        self._overlap = TURN_OVERLAP
        self._cancel = cancel
        self._cond = threading.Condition()

    def _holds(self, j, now):
        heard = self._heard[j]
        return self._left[j] > self._overlap and (heard is None or now - heard < self._stall)

    def wait(self, k):
        from .._extract import cancelled
        with self._cond:
            while True:
                now = time.monotonic()
                if not any(self._holds(j, now) for j in range(k)):
                    self._heard[k] = self._started[k] = now
                    trace.event("turn", blob=k, overlap=self._overlap)
                    return
                if cancelled.is_set() or (self._cancel is not None and self._cancel.is_set()):
                    raise Cancelled()
                self._cond.wait(min(0.2, self._stall))

    def left(self, k, n):
        with self._cond:
            now = time.monotonic()
            if self._started[k] is not None:   # its first byte
                latency, self._started[k] = now - self._started[k], None
                self._latency = max(latency, self._latency or 0.0)
            if self._since is None:
                self._since = now
            self._received += max(0, self._left[k] - n)
            self._left[k] = n
            self._heard[k] = now
            if self._latency is not None and now - self._since > 0.05:
                rate = self._received / (now - self._since)
                self._overlap = min(TURN_OVERLAP, max(TURN_OVERLAP_MIN, int(2 * rate * self._latency)))
            if n <= self._overlap:
                self._cond.notify_all()

    def ended(self, k):
        self.left(k, 0)


class Puller:
    def __init__(self, ref, *, store=None, platform=None, all_platforms=False, concurrency=None,
                 extract_workers=None, client=None, reporter=None, insecure=()):
        self.ref = ref if isinstance(ref, Reference) else Reference.parse(ref)
        self.store = _open_store(store)
        self._own_store = self.store is not store
        self.want = Platform.parse(platform) if platform else None
        self.all_platforms = all_platforms
        self.concurrency = max(1, int(concurrency or os.environ.get("LAMINA_MAX_CONCURRENT_DOWNLOADS")
                                      or DEFAULT_CONCURRENCY))
        self.extract_workers = max(1, extract_workers or min(4, os.cpu_count() or 2))
        self._own_client = client is None
        self.client = client or RegistryClient(insecure=insecure)
        self.reporter = reporter or Reporter()
        # Extract each layer from its bytes as they arrive (LAMINA_PULL_STREAM=0: download, then extract).
        self.stream_extract = os.environ.get("LAMINA_PULL_STREAM", "1") != "0"
        # Download each streamed blob ahead of its extraction (LAMINA_PULL_AHEAD=0: at its pace).
        self.download_ahead = os.environ.get("LAMINA_PULL_AHEAD", "1") != "0"
        # Blobs take the link in turns (LAMINA_PULL_TURNS=0: all at once, as before; for benches).
        self.turns = os.environ.get("LAMINA_PULL_TURNS", "1") != "0"
        # A streamed layer goes on over the trees below before their commits
        # (LAMINA_PULL_EARLY_LOWERS=0: after them, as before; for benches).
        self.early_lowers = os.environ.get("LAMINA_PULL_EARLY_LOWERS", "1") != "0"
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self.downloaded = 0

    # --- one blob ---------------------------------------------------------------------------------

    def fetch_blob(self, repos, desc, result: LayerResult, turn=None):
        """Download one blob into the store (resume, retries, one fresh retry on a digest mismatch)."""
        digest, size = desc.digest, desc.size
        mismatch_retries = 1
        while True:
            served, resumed = [], 0
            try:
                with self.store.ingest(digest, size=size) as w:
                    if getattr(w, "exists", False):
                        if result.status == "pending":
                            result.status = "exists"
                        return
                    resumed = w.offset
                    result.status = "downloaded"
                    result.resumed_from = result.resumed_from or w.offset
                    self._download(repos, desc, w, result, turn, served)
                    w.commit()
                    return
            except DigestMismatchError as e:
                again = _mismatch_retry(repos, mismatch_retries)
                if again is None:
                    raise DigestMismatchError(f"blob {digest} from {_sources(served, repos, resumed)}",
                                              e.expected, e.actual) from None
                repos, mismatch_retries = again

    def fetch_and_extract(self, repos, desc, result, diff_id, parent_chain_id, wait_lowers=None, turn=None,
                          tree_ready=None, before_publish=None):
        """Download a blob into the store while extracting its snapshot from the same bytes.

        Returns the snapshot's fs dir, or None if the snapshot existed already (then only the
        blob was fetched).  A blob digest mismatch discards both and retries once, like fetch_blob.
        """
        from ..store.streaming import IngestTee, ensure_streaming   # not at the top: unpack docker:// needs no store
        digest, size = desc.digest, desc.size
        partial = self.store.paths.partial(digest)
        mismatch_retries = 1
        while True:
            served, resumed = [], 0
            try:
                with self.store.ingest(digest, size=size) as w:
                    if w.exists:   # another pull committed it meanwhile: extract the usual way
                        result.status = "exists"
                        return None
                    resumed = w.offset
                    result.status = "downloaded"
                    result.resumed_from = result.resumed_from or w.offset
                    stream = self.blob_stream(repos, desc, result, w.offset, at_end="Extracting", turn=turn)
                    tee = IngestTee(w, partial, stream)
                    if self.download_ahead:
                        # An extraction that waits (for the layers below, the disk, a core) does not
                        # stall the connection: measured at 40 MB/s, a stalled one lost link time.
                        tee.download_ahead()
                    checked = []   # the ingest's commit ran (and checked the blob's digest)

                    def commit():
                        checked.append(True)
                        w.commit()

                    try:
                        path = ensure_streaming(self.store.paths, tee, digest, diff_id, parent_chain_id,
                                                desc.media_type, before_commit=commit, wait_lowers=wait_lowers,
                                                tree_ready=tree_ready, before_publish=before_publish,
                                                progress=self.reporter.extraction(digest, size))
                        if path is None:
                            # the snapshot is there (from another blob of the layer): the rest of
                            # the blob, through the tee, once its spooler has stopped (it may hold
                            # bytes read from the stream and not yet written into the ingest)
                            tee.drain()
                            w.commit()
                        return path
                    except (Cancelled, RegistryError):
                        raise
                    except Exception:
                        if not checked:
                            # Corrupt bytes usually fail the extraction (or the diffID) before the
                            # blob's digest can be checked: finish the download and let the digest
                            # say whether the registry sent a bad blob (retried) or the image is bad.
                            tee.drain()
                            w.commit()
                        raise
                    finally:
                        result.attempts += stream.attempts
                        served.extend(stream.served)
                        tee.close()
                        stream.close()
            except DigestMismatchError as e:
                if e.expected != digest:
                    raise   # a diffID mismatch: the blob itself verified
                again = _mismatch_retry(repos, mismatch_retries)
                if again is None:
                    raise DigestMismatchError(f"blob {digest} from {_sources(served, repos, resumed)}",
                                              e.expected, e.actual) from None
                repos, mismatch_retries = again

    def blob_stream(self, repos, desc, result, offset=0, at_end="Verifying Checksum", turn=None):
        """The blob as a resuming stream, announced, counted into ``result`` and the progress
        display (open_layer_stream); ``turn(bytes left)`` follows its arrival (LinkTurns)."""
        digest, size = desc.digest, desc.size

        def count(n):
            result.downloaded_bytes += n
            with self._lock:
                self.downloaded += n

        def on_chunk(stream):
            if turn is not None:
                turn(size - stream.offset)
            if stream.offset >= size:
                self.reporter.state(digest, at_end)

        return open_layer_stream(repos, desc, self.reporter, count, offset=offset, cancel=self._cancel,
                                 on_chunk=on_chunk)

    def _download(self, repos, desc, w, result, turn=None, served=None):
        """``served``: a list the names of the endpoints that sent the bytes are added to."""
        stream = self.blob_stream(repos, desc, result, w.offset, turn=turn)
        try:
            w.write_from(stream)
        finally:
            result.attempts += stream.attempts
            if served is not None:
                served.extend(stream.served)
            stream.close()

    # --- the whole pull ------------------------------------------------------------------------------

    def run(self) -> PullResult:
        from ..store import imports as _imports, snapshots as _snapshots
        t0 = time.monotonic()
        dropped = _snapshots.dedups_dropped_since()
        try:
            return self._run(t0)
        except BaseException:
            if dropped():
                _imports.drop_unused_objects(self.store)
            raise
        finally:
            self.reporter.close()
            if self._own_client:
                self.client.close()
            if self._own_store:
                self.store.close()  # a writer's close takes back what an import refused beside it left

    def _stored_document(self, digest):
        """The bytes of a manifest, index or config of at most MAX_MANIFEST_SIZE the store holds, or None."""
        if not _digest.is_valid(digest) or not self.store.has_blob(digest):
            return None
        with self.store.open_blob(digest) as f:
            data = f.read(MAX_MANIFEST_SIZE + 1)
        return data if len(data) <= MAX_MANIFEST_SIZE else None

    def _previous_image(self):
        try:
            return self.store.resolve(str(self.ref))
        except LaminaError:
            return None
        except (KeyError, LookupError, ValueError):
            return None

    def _pinned_by_a_tag(self, held, manifest_digest):
        """Pulled by a digest that is the repo digest a tag of the same repository holds this
        image under (app:1 pulled, then app@sha256:…): nothing new to record, as docker
        records nothing (its tag pull recorded the digest); ``app@sha256:…`` resolves to the
        tag's image, and removing the tag removes the image."""
        return (self.ref.digest is not None and held is not None and held.manifest_digest == manifest_digest
                and f"{self.ref.name}@{self.ref.digest}" in held.repo_digests)

    def _check_read_only_writes(self, held, top, mr, chosen, indexes, others):
        """On a read-only store, the manifest is the one the store holds: refuse, saying what,
        if the pull would still write (the lease's own error said only "cannot write")."""
        writes = []
        if any(not self.store.has_blob(d.digest) for d in indexes):
            writes.append("the new index")
        if any(not self.store.has_blob(d.digest) for d in others):
            writes.append("the other platforms' manifests")
        if self.ref.digest is None and f"{self.ref.name}@{top.digest}" not in held.repo_digests:
            writes.append("the name's repo digest")
        elif self.ref.digest is not None and not self._pinned_by_a_tag(held, mr.digest) \
                and f"{self.ref.name}@{self.ref.digest}" not in held.names:
            writes.append(f"the name {self.ref.familiar()}")
        if writes:
            if top.is_index:
                what = f"its index is now {top.digest}; its {chosen or 'chosen'} manifest"
            else:
                what = "its manifest"
            self.store._check_writable(f"cannot pull {self.ref.familiar()} ({what} {mr.digest} is the one the "
                                       f"store holds, but {' and '.join(writes)} would be written)")

    def _run(self, t0):
        ref = self.ref
        trace.event("run")
        if self.store.writable:
            # The lease before the first look at what the store holds: an rmi or prune beside
            # us (their gc) took a layer found held ("Already exists") before we extracted over it.
            self.store._take_lease(create=False)
        held = self._previous_image()
        previous = held.manifest_digest if held is not None else None
        trace.event("previous")
        # A read-only store takes a pull only when it finds the image up to date (nothing
        # written): with the name not in the store, say so before asking the registry.
        read_only = not self.store.writable
        if read_only and previous is None:
            self.store._check_writable(f"cannot pull {ref.familiar()}")
        try:
            # a name the store holds is asked for with a HEAD first (up to date: no GET); another
            # with a GET straight away, which a HEAD would only delay (and a 404 needs for its message)
            known = self._stored_document if held is not None else None
            r = resolve(self.client, ref, self.want, all_platforms=self.all_platforms, known=known)
        except LaminaError as e:
            if read_only and len(e.args) == 1 and isinstance(e.args[0], str):
                e.args = (f"{e.args[0]} (and the store at {self.store.root} is read-only: a pull there "
                          "can only find its image up to date)",)
            raise
        repos, repo, top, mr, chosen, children, others = (r.repos, r.repo, r.top, r.manifest, r.chosen,
                                                          r.children, r.others)
        if read_only and mr.digest != previous:
            self.store._check_writable(f"cannot pull {ref.familiar()} (its manifest is now {mr.digest})")
        if read_only:
            self._check_read_only_writes(held, top, mr, chosen, [*children.values(), top] if top.is_index else [],
                                         others)
        self.reporter.line(f"{ref.digest or ref.tag}: Pulling from {ref.path}")
        repo_digest = top.digest

        media_type = document_media_type(mr.document, mr.media_type, f"manifest {mr.digest}")
        manifest = parse_manifest(mr.document, media_type, f"manifest {mr.digest}")
        # before the config is stored: a limit too low for the layers leaves the store as it was
        config_data, config = self._config(repos, manifest, mr.digest,
                                           check=lambda c: self._extract_slots(len(manifest.layers), c.diff_ids))
        platform = image_platform(self.want, chosen, config, f"image {ref.familiar()}")

        # Blobs of the other platforms (--all-platforms) are fetched but not extracted.
        extra_layers = []
        for other in others:
            mtype = document_media_type(other.document, other.media_type, f"manifest {other.digest}")
            om = parse_manifest(other.document, mtype, f"manifest {other.digest}")
            self._config(repos, om, other.digest)
            extra_layers.extend(om.layers)

        trace.event("layers-start")
        # each layer extracts as it arrives: a refused layer's or a full disk's error, which names
        # the layer by its digest alone (the store's snapshots are shared), says which one it is
        with errors.layers_named([d.digest for d in manifest.layers],
                                 lambda k: errors.layer_of(k, len(manifest.layers))):
            layers = self._layers(repos, manifest.layers, config.diff_ids, extra_layers)
            self.store.check_layer_blobs(mr.digest, manifest.layers, config.diff_ids)
        trace.event("layers-done")

        for other in others:
            self.store.put_blob(other.data, other.digest)
        for child in children.values():
            self.store.put_blob(child.data, child.digest)
        if top.is_index:
            self.store.put_blob(top.data, top.digest)
        self.store.put_blob(mr.data, mr.digest)
        tagged = ref if ref.tag is not None and ref.digest is None else None
        image = None
        if self._pinned_by_a_tag(held, mr.digest):
            try:
                image = self.store.image(mr.digest)
            except errors.ImageNotFoundError:
                pass  # its tag removed since: the name@digest is its name now
        if image is None:
            image = self.store.add_image(mr.digest, ref=tagged if tagged is not None else ref,
                                         repo_digest=repo_digest, platform=chosen)
        # Every snapshot exists by now; this shares their files (dedup) or compacts the layers,
        # as the store's settings say.
        trace.event("snapshots-for")
        self.store._ensure_snapshots(image)   # run() takes back what a refusal dropped
        trace.event("snapshots-for-done")
        fetched = sum(1 for layer in layers if layer.status == "downloaded") + self._config_fetched
        status = "up to date" if previous == mr.digest and fetched == 0 else "downloaded"
        self.reporter.line(f"Digest: {repo_digest}")
        familiar = ref.familiar()
        if status == "up to date":
            self.reporter.line(f"Status: Image is up to date for {familiar}")
        else:
            self.reporter.line(f"Status: Downloaded newer image for {familiar}")
        self.reporter.line(str(ref))
        return PullResult(
            reference=str(ref), repo_digest=repo_digest, manifest_digest=mr.digest,
            config_digest=manifest.config.digest, platform=str(platform) if platform else "",
            status=status, endpoint=repo.host, layers=layers[:len(manifest.layers)],
            bytes_downloaded=self.downloaded, seconds=time.monotonic() - t0, image=image)

    _config_fetched = 0
    _extract_workers = None
    _stream = True

    def _extract_slots(self, layers, diff_ids):
        """How many layers extract at once under the open-file limit, each over (and holding an fd
        for) every layer below it: the extraction workers' and, as the blobs arrive, the fetch
        threads' (stream extraction).  Under ``ulimit -n 350`` 250 layers passed the check of one
        layer's fds, and then the fetch threads, extracting three layers over some 160 below
        them, failed with "cannot open lower layer …: Too many open files".  A limit that fits
        fewer than all of them extracts after the download, on fewer workers; one that fits no
        layer's fds is an ImageError before anything is written.  Only the layers whose snapshots
        the store lacks are extracted: a pull of an image the store holds whole was refused under
        a limit it needs no fds from."""
        parallel = self.extract_workers + (self.concurrency if self.stream_extract else 0)
        missing = [k for k, c in enumerate(chain_ids(diff_ids)) if not self.store._snapshot_complete(c)]
        if missing:
            top = max(missing)
            slots = open_file_budget(top, f"{layers} layers",
                                     f"{'the top layer' if top == layers - 1 else f'layer {top + 1}'}'s snapshot, "
                                     "extracted over the layers below it,", parallel)
        else:
            slots = parallel
        self._stream = self.stream_extract and slots >= parallel
        self._extract_workers = min(self.extract_workers, slots)

    def _config(self, repos, manifest, manifest_digest, check=None):
        """``check(config)``: before a fetched config is stored (raising, it leaves the store as it was)."""
        cdesc = manifest.config
        what = f"config {cdesc.digest}"
        if self.store.has_blob(cdesc.digest, cdesc.size):
            _check_config_size(cdesc)  # (fetch_config checks it before a fetch)
            with self.store.open_blob(cdesc.digest) as f:
                data = f.read(MAX_CONFIG_SIZE + 1)
            config = parse_config(data, what, len(manifest.layers))
            if check is not None:
                check(config)
            return data, config
        data = fetch_config(repos, cdesc)
        # parsed before it is stored: a refused config leaves no blob behind in the store
        config = parse_config(data, what, len(manifest.layers))
        if check is not None:
            check(config)
        self.store.put_blob(data, cdesc.digest)
        self._config_fetched += 1
        return data, config

    def _layers(self, repos, layer_descs, diff_ids, extra_descs=()):
        chains = chain_ids(diff_ids)
        results = [LayerResult(d.digest, d.size, d.media_type) for d in layer_descs]
        by_digest = {}
        for d, r in zip(layer_descs, results):
            by_digest.setdefault(d.digest, (d, []))[1].append(r)
        extra = {}
        for d in extra_descs:
            known = by_digest.get(d.digest) or extra.get(d.digest)
            if known is None:
                extra[d.digest] = (d, [LayerResult(d.digest, d.size, d.media_type)])
            elif known[0].size != d.size:
                # fetched once, by the first size: the other platform's manifest would keep its lie
                raise ImageError(f"blob {d.digest}: the image's platforms list it with size {known[0].size} "
                                 f"and with size {d.size}")
        for digest, (d, _) in list(by_digest.items()) + list(extra.items()):
            self.reporter.layer(digest, d.size)

        if self._extract_workers is None:
            self._extract_slots(len(layer_descs), diff_ids)
        extract_pool = ThreadPoolExecutor(self._extract_workers, thread_name_prefix="lamina-extract")
        fetch_pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="lamina-fetch")
        extract_futures = []
        efl = threading.Lock()
        ready = [False] * len(layer_descs)
        next_submit = [0]

        # submitted (and fetched) in layer order: a layer waits only for running or finished ones
        below = LayersBelow(len(layer_descs), cancel=self._cancel)
        streamed = set()   # layers whose snapshot was extracted while their blob arrived

        def wait_lowers(i):
            return lambda: below.wait(i)

        def lower_trees(i):
            # A streamed layer goes on over the layers below once their trees are final, not
            # committed: their dedup passes (and an upper layer's wait for them) no longer add
            # up at the end of the pull.  Its own commit still waits for theirs (before_publish).
            return lambda: below.final_trees(i, chains)

        def extract(i):
            d = layer_descs[i]
            parent = chains[i - 1] if i else None
            ok = False
            try:
                self.reporter.state(d.digest, "Extracting")
                try:
                    path = self.store.ensure_snapshot(d.digest, diff_ids[i], parent, media_type=d.media_type,
                                                      defer=True, wait_lowers=wait_lowers(i),
                                                      progress=self.reporter.extraction(d.digest, d.size))
                except errors.LaminaError as e:
                    errors.at_layer(e, i)
                    raise
                results[i].snapshot = str(path)
                ok = True
            finally:
                below.finished(i, ok)
            if results[i].status != "exists":
                self.reporter.state(d.digest, "Pull complete")
            return i

        def share_files(i):
            # A streamed layer's snapshot is committed: share its files with the store's objects
            # now, while the other layers still download, not all at the end (snapshots_for).
            trace.event("share-files", layer=i)
            self.store._dedup(chains[i])
            trace.event("share-files-done", layer=i)
            self.reporter.state(layer_descs[i].digest, "Pull complete")
            return i

        def fetch(k, digest, desc, rs, indexes):
            try:
                existed = self.store.has_blob(digest, desc.size) or (
                    indexes and compact and all(self.store.holds_compact(digest, chains[i]) for i in indexes))
                if not existed and self.turns:
                    turns.wait(k)
            except BaseException:
                turns.ended(k)
                raise
            turn = lambda left: turns.left(k, left)
            try:
                if existed:
                    rs[0].status = "exists"
                elif indexes and self._stream:
                    i = indexes[0]
                    try:
                        path = self.fetch_and_extract(repos, desc, rs[0], diff_ids[i],
                                                      chains[i - 1] if i else None,
                                                      wait_lowers=lower_trees(i) if self.early_lowers else wait_lowers(i),
                                                      turn=turn, tree_ready=lambda fs: below.tree(i, fs),
                                                      before_publish=wait_lowers(i) if self.early_lowers else None)
                    except errors.NeedsLowers:
                        path = None  # the blob is stored; extract(i) extracts it over the layers below
                    except BaseException as e:
                        below.finished(i, False)
                        errors.at_layer(e, i)
                        _say_non_distributable(e, desc)
                        raise
                    if path is not None:
                        results[i].snapshot = str(path)
                        streamed.add(i)
                        below.finished(i)
                else:
                    self.fetch_blob(repos, desc, rs[0], turn)
            finally:
                turns.ended(k)
            for r in rs[1:]:
                r.status = rs[0].status
            if rs[0].status == "exists":
                self.reporter.state(digest, "Already exists")
            elif indexes[:1] and indexes[0] not in streamed:
                self.reporter.state(digest, "Download complete")
            with efl:
                # Submitted in layer order, so a layer that needs the snapshots below it
                # (NeedsLowers) never waits on a job queued behind it; extraction still overlaps downloads.
                for i in indexes:
                    ready[i] = True
                    if i in streamed:
                        extract_futures.append(extract_pool.submit(share_files, i))
                while next_submit[0] < len(layer_descs) and ready[next_submit[0]]:
                    if next_submit[0] not in streamed:
                        extract_futures.append(extract_pool.submit(extract, next_submit[0]))
                    next_submit[0] += 1
            return digest

        # a compact store drops a layer's blob once it is extracted: one it holds so is not fetched
        compact = not self.store.config()["keep-blobs"]
        indexes_of = {}
        for i, d in enumerate(layer_descs):
            indexes_of.setdefault(d.digest, []).append(i)
        # the link in turns: bottom layer first, then up, then other platforms' blobs
        order = list(by_digest.items()) + list(extra.items())
        turns = LinkTurns([d.size for _, (d, _) in order], cancel=self._cancel)
        fetch_futures = []
        failed = False
        try:
            for k, (digest, (d, rs)) in enumerate(order):
                fetch_futures.append(fetch_pool.submit(fetch, k, digest, d, rs, indexes_of.get(digest, [])))
            pending = set(fetch_futures)
            seen = 0
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                if any(f.exception() is not None for f in done):
                    failed = True
                    self._cancel.set()
                    break
                with efl:   # a fetch queues its extractions before it completes
                    pending |= set(extract_futures[seen:])
                    seen = len(extract_futures)
        except BaseException:
            self._cancel.set()
            raise
        finally:
            fetch_pool.shutdown(wait=True, cancel_futures=True)
            extract_pool.shutdown(wait=True, cancel_futures=True)
        if failed:
            raise _cause(f.exception() for f in fetch_futures + extract_futures if f.done() and not f.cancelled())
        return results + [r for _, rs in extra.values() for r in rs]


# What a layer raises when it stops because another failed: never the pull's error while that one is there.
_CONSEQUENCES = (errors.Cancelled, errors.NeedsLowers, Cancelled)


def _sources(served, repos, resumed=0):
    """Where a bad blob came from, for its error: the endpoints that sent its bytes (a mirror
    that failed hands the download to the next endpoint), and the earlier download the first
    ``resumed`` bytes were kept from (which endpoint sent those, the store does not record).
    The first endpoint asked only when no byte came from anywhere (an empty blob)."""
    earlier = ["an earlier, interrupted download"] if resumed else []
    return " and ".join(served + earlier) or repos[0].name


def _mismatch_retry(repos, retries):
    """(endpoints, retries left) for fetching again a blob that did not hash to its digest: the
    same endpoints once more (a corruption in transit), then, when a mirror sent the bad bytes
    again, the endpoints after it (docker goes on to the next endpoint when a mirror fails, and
    the registry behind a broken or hostile mirror may serve the blob intact); None: give up."""
    if retries > 0:
        return repos, retries - 1
    if len(repos) > 1 and repos[0].is_mirror:
        return repos[1:], 1
    return None


def _cause(exceptions):
    """The error a failed pull reports, whichever of its layers' threads ended first: a failure
    of its own, not a layer stopped by it (Cancelled, or lowers that failed), the lowest layer's
    where several failed (the same error on every run)."""
    found = [e for e in exceptions if e is not None]
    causes = [e for e in found if not isinstance(e, _CONSEQUENCES)] or found
    placed = [e for e in causes if getattr(e, "layer_index", None) is not None]
    return min(placed, key=lambda e: e.layer_index) if placed else causes[0]


def pull(ref, *, store=None, platform=None, all_platforms=False, concurrency=None, client=None,
         reporter=None, insecure=()) -> PullResult:
    """Pull ``ref`` (tag or digest) into the store; returns what was pulled and how."""
    return Puller(ref, store=store, platform=platform, all_platforms=all_platforms, concurrency=concurrency,
                  client=client, reporter=reporter, insecure=insecure).run()
