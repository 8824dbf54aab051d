"""``lamina pull``: registry -> store, blobs verified while streaming, layers extracted as they land.

    reference --(mirrors, then the registry)--> manifest or index --platform--> manifest
        --> config (diffIDs) --> layers, ``concurrency`` at a time:
            store.ingest(digest, size): resume at w.offset with Range, retry cut/failed transfers,
            commit verifies size + digest (a mismatch discards the partial, one fresh retry)
            --> store.ensure_snapshot(...) on the extraction pool while other layers download
        --> store.put_blob(manifest[, index]) --> store.add_image(manifest, ref, repo_digest)
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field

from .. import mediatypes as mt
from ..errors import (BlobNotFoundError, DigestMismatchError, ImageError, LaminaError, PlatformNotFoundError,
                      RegistryError)
from ..oci.model import document_media_type, parse_config, parse_index, parse_manifest
from ..platform import Platform
from ..reference import Reference
from .client import RegistryClient
from .progress import Reporter
from .transport import CONNECTION_ERRORS, describe_error

DEFAULT_CONCURRENCY = 3
MAX_CONFIG_SIZE = 8 << 20
_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
MAX_INDEX_DEPTH = 4


class _Cancelled(Exception):
    pass


class _ShortBody(Exception):
    pass


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


def _entries(index, fetch, depth):
    """(descriptor, platform) candidates; nested unplatformed indexes are flattened."""
    if depth > MAX_INDEX_DEPTH:
        raise ImageError(f"image indexes nested deeper than {MAX_INDEX_DEPTH}")
    out = []
    for d in index.manifests:
        if d.is_attestation:
            continue
        if mt.is_index(d.media_type) and d.platform is None:
            out.extend(_entries(fetch(d), fetch, depth + 1))
        elif mt.is_index(d.media_type) or mt.is_manifest(d.media_type):
            out.append((d, d.platform))
    return out


def choose_platform(index, want, fetch, depth=0):
    """The manifest descriptor for ``want`` (Platform or None = host, with compatible fallbacks)."""
    entries = _entries(index, fetch, depth)
    wanted = [want] if want is not None else Platform.host().compatible()
    for w in wanted:
        for d, p in entries:
            if p == w:
                if mt.is_index(d.media_type):
                    return choose_platform(fetch(d), want or w, fetch, depth + 1)
                return d, p
    unplatformed = [d for d, p in entries if p is None and mt.is_manifest(d.media_type)]
    if want is None and len(entries) == 1 and unplatformed:
        return unplatformed[0], None
    available = sorted({str(p) for _, p in entries if p is not None})
    raise PlatformNotFoundError(str(want or Platform.host()), available)


# --------------------------------------------------------------------------------------------


class Puller:
    def __init__(self, ref, *, store=None, platform=None, all_platforms=False, concurrency=None,
                 extract_workers=None, client=None, reporter=None, insecure=()):
        self.ref = ref if isinstance(ref, Reference) else Reference.parse(ref)
        self.store = _open_store(store)
        self.want = Platform.parse(platform) if platform else None
        self.all_platforms = all_platforms
        self.concurrency = max(1, int(concurrency or os.environ.get("LAMINA_MAX_CONCURRENT_DOWNLOADS")
                                      or DEFAULT_CONCURRENCY))
        self.extract_workers = max(1, extract_workers or min(4, os.cpu_count() or 2))
        self._own_client = client is None
        self.client = client or RegistryClient(insecure=insecure)
        self.reporter = reporter or Reporter()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self.downloaded = 0

    # --- manifests ----------------------------------------------------------------------------

    def _resolve(self):
        """(repository that answered, ManifestResponse) trying mirrors first."""
        repos = self.client.repositories(self.ref, ("pull",))
        wanted = self.ref.digest or self.ref.tag
        for i, repo in enumerate(repos):
            try:
                return repos, repo, repo.get_manifest(wanted)
            except LaminaError:
                if i + 1 == len(repos):
                    raise   # the registry's own answer (mirrors are best effort)
        raise RegistryError(f"no endpoint for {self.ref}")  # pragma: no cover

    def _child(self, repo, desc):
        mr = repo.get_manifest(desc.digest)
        if len(mr.data) != desc.size:
            raise ImageError(f"manifest {desc.digest}: {len(mr.data)} bytes but the index says {desc.size}")
        if mr.media_type != desc.media_type:
            # The index and the document must name the same kind (CVE-2021-41190).
            raise ImageError(f"manifest {desc.digest}: descriptor says {desc.media_type} but the document says"
                             f" {mr.media_type}")
        return mr

    # --- one blob ---------------------------------------------------------------------------------

    def fetch_blob(self, repos, desc, result: LayerResult):
        """Download one blob into the store (resume, retries, one fresh retry on a digest mismatch)."""
        digest, size = desc.digest, desc.size
        mismatch_retries = 1
        while True:
            try:
                with self.store.ingest(digest, size=size) as w:
                    if getattr(w, "exists", False):
                        if result.status == "pending":
                            result.status = "exists"
                        return
                    result.status = "downloaded"
                    result.resumed_from = result.resumed_from or w.offset
                    self._download(repos, desc, w, result)
                    w.commit()
                    return
            except DigestMismatchError as e:
                if mismatch_retries <= 0:
                    raise DigestMismatchError(f"blob from {repos[0].name}", e.expected, e.actual) from None
                mismatch_retries -= 1

    def _download(self, repos, desc, w, result):
        digest, size = desc.digest, desc.size
        transport = self.client.transport
        budget = transport.retries + 1
        failures = 0
        endpoint = 0
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        self.reporter.state(digest, "Downloading")
        while w.offset < size:
            if self._cancel.is_set():
                raise _Cancelled()
            repo = repos[endpoint]
            start = w.offset
            try:
                result.attempts += 1
                resp = repo.open_blob(digest, start)
                try:
                    skip = self._check_range(resp, digest, start, size)
                    self._copy(resp, w, view, skip, size, digest, result)
                finally:
                    resp.close(reuse=w.offset >= size)
            except (BlobNotFoundError, RegistryError):
                # The transport already retried statuses and connection failures: this endpoint
                # is done.  A mirror falls back to the next endpoint (resuming from w.offset).
                if endpoint + 1 < len(repos):
                    endpoint, failures = endpoint + 1, 0
                    continue
                raise
            except CONNECTION_ERRORS + (_ShortBody,) as e:
                # Cut connection, timeout, short body: keep what was verified, resume with Range.
                failures = 0 if w.offset > start else failures + 1
                if failures >= budget:
                    if endpoint + 1 < len(repos):
                        endpoint, failures = endpoint + 1, 0
                        continue
                    raise RegistryError(f"blob {digest} from {repo.name}: download failed at byte "
                                        f"{w.offset} of {size}: {describe_error(e)} "
                                        f"(after {result.attempts} attempts)") from None
                self.reporter.state(digest, "Retrying")
                transport.sleep_backoff(max(failures, 1))
        self.reporter.state(digest, "Verifying Checksum")

    @staticmethod
    def _check_range(resp, digest, start, size):
        """Bytes to skip at the head of the body (a registry that ignored Range sends it all)."""
        if resp.status == 206:
            m = _CONTENT_RANGE.fullmatch((resp.header("Content-Range") or "").strip())
            if not m or int(m.group(1)) != start:
                raise RegistryError(f"blob {digest}: asked for bytes from {start}, got Content-Range "
                                    f"{resp.header('Content-Range')!r}")
            if m.group(3) != "*" and int(m.group(3)) != size:
                raise RegistryError(f"blob {digest}: registry has {m.group(3)} bytes, the manifest says {size}")
            return 0
        length = resp.length
        if length is not None and length != size:
            raise RegistryError(f"blob {digest}: registry sent {length} bytes, the manifest says {size}")
        return start

    def _copy(self, resp, w, view, skip, size, digest, result):
        reporter = self.reporter
        while skip:
            n = resp.readinto(view[:min(len(view), skip)])
            if not n:
                raise _ShortBody(f"body ended after {n} bytes")
            skip -= n
            with self._lock:
                self.downloaded += n
            result.downloaded_bytes += n
        remaining = size - w.offset
        while remaining > 0:
            if self._cancel.is_set():
                raise _Cancelled()
            n = resp.readinto(view[:min(len(view), remaining)])
            if not n:
                raise _ShortBody(f"connection closed at byte {w.offset} of {size}")
            w.write(view[:n])
            remaining -= n
            result.downloaded_bytes += n
            with self._lock:
                self.downloaded += n
            reporter.progress(digest, w.offset, size)

    # --- the whole pull ------------------------------------------------------------------------------

    def run(self) -> PullResult:
        t0 = time.monotonic()
        try:
            return self._run(t0)
        finally:
            self.reporter.close()
            if self._own_client:
                self.client.close()

    def _previous_manifest(self):
        try:
            return self.store.resolve(str(self.ref)).manifest_digest
        except LaminaError:
            return None
        except (KeyError, LookupError, ValueError):
            return None

    def _run(self, t0):
        ref = self.ref
        previous = self._previous_manifest()
        repos, repo, top = self._resolve()
        # The repository that answered serves the blobs; the others stay as fallbacks.
        repos = [repo] + [r for r in repos if r is not repo]
        self.reporter.line(f"{ref.digest or ref.tag}: Pulling from {ref.path}")
        repo_digest = top.digest

        children = {}   # digest -> ManifestResponse, for --all-platforms

        def fetch_index(desc):
            mr = self._child(repo, desc)
            if not mr.is_index:
                raise ImageError(f"{desc.digest}: expected an index, got {mr.media_type}")
            children[desc.digest] = mr
            return parse_index(mr.document, mr.media_type, f"index {desc.digest}")

        if top.is_index:
            index = parse_index(top.document, top.media_type, f"index {top.digest}")
            desc, chosen = choose_platform(index, self.want, fetch_index)
            mr = self._child(repo, desc)
            if not mt.is_manifest(mr.media_type):
                raise ImageError(f"{desc.digest}: expected a manifest, got {mr.media_type}")
            others = []
            if self.all_platforms:
                for d in index.manifests:
                    if d.digest != desc.digest and mt.is_manifest(d.media_type):
                        others.append(self._child(repo, d))
        else:
            mr, chosen, others = top, None, []

        media_type = document_media_type(mr.document, mr.media_type, f"manifest {mr.digest}")
        manifest = parse_manifest(mr.document, media_type, f"manifest {mr.digest}")
        config_data, config = self._config(repos, manifest, mr.digest)
        if self.want is not None and chosen is None and config.platform is not None \
                and config.platform != self.want:
            raise PlatformNotFoundError(str(self.want), [str(config.platform)])
        platform = chosen or config.platform

        # Blobs of the other platforms (--all-platforms) are fetched but not extracted.
        extra_layers = []
        for other in others:
            mtype = document_media_type(other.document, other.media_type, f"manifest {other.digest}")
            om = parse_manifest(other.document, mtype, f"manifest {other.digest}")
            self._config(repos, om, other.digest)
            extra_layers.extend(om.layers)

        layers = self._layers(repos, manifest.layers, config.diff_ids, extra_layers)

        for other in others:
            self.store.put_blob(other.data, other.digest)
        for child in children.values():
            self.store.put_blob(child.data, child.digest)
        if top.is_index:
            self.store.put_blob(top.data, top.digest)
        self.store.put_blob(mr.data, mr.digest)
        tagged = ref if ref.tag is not None and ref.digest is None else None
        image = self.store.add_image(mr.digest, ref=tagged if tagged is not None else ref,
                                     repo_digest=repo_digest)
        # Every snapshot exists by now; this finishes, bottom-up, the ones extracted before their
        # parent was committed (directories a layer implies inherit their metadata from below).
        self.store.snapshots_for(image)
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

    def _config(self, repos, manifest, manifest_digest):
        cdesc = manifest.config
        what = f"config {cdesc.digest}"
        if cdesc.size > MAX_CONFIG_SIZE:
            raise ImageError(f"{what}: {cdesc.size} bytes is larger than the {MAX_CONFIG_SIZE}-byte limit")
        if self.store.has_blob(cdesc.digest):
            with self.store.open_blob(cdesc.digest) as f:
                data = f.read(MAX_CONFIG_SIZE + 1)
        else:
            data = None
            for i, repo in enumerate(repos):
                try:
                    data = repo.get_blob(cdesc.digest, limit=max(cdesc.size, 1))
                    break
                except LaminaError:
                    if i + 1 == len(repos):
                        raise
            if len(data) != cdesc.size:
                raise ImageError(f"{what}: {len(data)} bytes but the manifest says {cdesc.size}")
            self.store.put_blob(data, cdesc.digest)
            self._config_fetched += 1
        return data, parse_config(data, what, len(manifest.layers))

    def _layers(self, repos, layer_descs, diff_ids, extra_descs=()):
        chains = chain_ids(diff_ids)
        results = [LayerResult(d.digest, d.size, d.media_type) for d in layer_descs]
        by_digest = {}
        for d, r in zip(layer_descs, results):
            by_digest.setdefault(d.digest, (d, []))[1].append(r)
        extra = {}
        for d in extra_descs:
            if d.digest not in by_digest and d.digest not in extra:
                extra[d.digest] = (d, [LayerResult(d.digest, d.size, d.media_type)])
        for digest, (d, _) in list(by_digest.items()) + list(extra.items()):
            self.reporter.layer(digest, d.size)

        extract_pool = ThreadPoolExecutor(self.extract_workers, thread_name_prefix="lamina-extract")
        fetch_pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="lamina-fetch")
        extract_futures = []
        efl = threading.Lock()
        ready = [False] * len(layer_descs)
        next_submit = [0]

        def extract(i):
            d = layer_descs[i]
            self.reporter.state(d.digest, "Extracting")
            path = self.store.ensure_snapshot(d.digest, diff_ids[i], chains[i - 1] if i else None,
                                              media_type=d.media_type)
            results[i].snapshot = str(path)
            if results[i].status != "exists":
                self.reporter.state(d.digest, "Pull complete")
            return i

        def fetch(digest, desc, rs, indexes):
            existed = self.store.has_blob(digest)
            if not existed:
                self.fetch_blob(repos, desc, rs[0])
            else:
                rs[0].status = "exists"
            for r in rs[1:]:
                r.status = rs[0].status
            if rs[0].status == "exists":
                self.reporter.state(digest, "Already exists")
            else:
                self.reporter.state(digest, "Download complete")
            with efl:
                # Submitted in layer order, so a snapshot whose commit needs its parent's (overlay
                # fix-ups) never waits on a job queued behind it; extraction still overlaps downloads.
                for i in indexes:
                    ready[i] = True
                while next_submit[0] < len(layer_descs) and ready[next_submit[0]]:
                    extract_futures.append(extract_pool.submit(extract, next_submit[0]))
                    next_submit[0] += 1
            return digest

        indexes_of = {}
        for i, d in enumerate(layer_descs):
            indexes_of.setdefault(d.digest, []).append(i)
        try:
            pending = set()
            for digest, (d, rs) in by_digest.items():
                pending.add(fetch_pool.submit(fetch, digest, d, rs, indexes_of[digest]))
            for digest, (d, rs) in extra.items():
                pending.add(fetch_pool.submit(fetch, digest, d, rs, []))
            seen = 0
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    exc = f.exception()
                    if exc is not None:
                        raise exc
                with efl:   # a fetch queues its extractions before it completes
                    pending |= set(extract_futures[seen:])
                    seen = len(extract_futures)
        except BaseException:
            self._cancel.set()
            raise
        finally:
            fetch_pool.shutdown(wait=True, cancel_futures=True)
            extract_pool.shutdown(wait=True, cancel_futures=True)
        return results + [r for _, rs in extra.values() for r in rs]


def pull(ref, *, store=None, platform=None, all_platforms=False, concurrency=None, client=None,
         reporter=None, insecure=()) -> PullResult:
    """Pull ``ref`` (tag or digest) into the store; returns what was pulled and how."""
    return Puller(ref, store=store, platform=platform, all_platforms=all_platforms, concurrency=concurrency,
                  client=client, reporter=reporter, insecure=insecure).run()
