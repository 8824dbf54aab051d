"""``lamina push``: store -> registry.

For each blob (config and layers, ``concurrency`` at a time): ``HEAD`` and
skip it when the repository has it; else try a cross-repository mount from
the other repositories of the same registry the image is known by; else
upload it, in one ``PUT`` (blobs up to ``chunk_size``) or in ``PATCH``
chunks that resume from the registry's ``Range`` after a failure.  Then the
manifests are ``PUT`` byte for byte as stored (children by digest, then the
index or the manifest under the tag), and the digest is printed like docker.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .. import digest as _digest
from .. import mediatypes as mt
from ..errors import ImageError, LaminaError, NoSuchImageError, RegistryError
from ..oci.model import document_media_type, parse_index, parse_manifest
from ..reference import Reference
from .client import MAX_ERROR_BODY, RegistryClient, error_message
from .progress import Reporter
from .pull import _open_store
from .transport import CONNECTION_ERRORS, describe_error, resolve_url

# The upload status's "Range: 0-<last byte>" (some registries write "bytes=0-..."); at most 19
# digits, so that a hostile registry's thousands of digits are a clear error, not int()'s traceback
_UPLOAD_RANGE = re.compile(r"(?:bytes=)?\d{1,19}-(\d{1,19})", re.ASCII)

DEFAULT_CHUNK_SIZE = 64 << 20    # blobs above this go up in PATCH chunks of this size
DEFAULT_CONCURRENCY = 3
MAX_MOUNT_SOURCES = 4   # docker's most mount attempts per blob (its big blobs)


@dataclass
class PushResult:
    reference: str
    digest: str
    size: int
    media_type: str
    blobs: dict = field(default_factory=dict)   # digest -> "pushed" | "exists" | "mounted from X"
    tag: str = None   # None: pushed by digest alone

    def to_dict(self):
        return {"reference": self.reference, "digest": self.digest, "size": self.size,
                "media_type": self.media_type, "blobs": self.blobs, "tag": self.tag}


def _shared_components(a, b):
    n = 0
    for x, y in zip(a.split("/"), b.split("/")):
        if x != y:
            break
        n += 1
    return n


def _read_blob(store, digest):
    with store.open_blob(digest) as f:
        return f.read()


class _Window:
    """``length`` bytes of a blob from ``offset``, a PATCH body read in pieces as it is sent: a
    chunk read whole (64 MiB by default) was most of a push's peak RSS (issue 14)."""

    PIECE = 1 << 20

    def __init__(self, fd, offset, length, digest):
        self.fd, self.pos, self.left, self.digest = fd, offset, length, digest

    def read(self, n=-1):
        n = self.left if n is None or n < 0 else min(n, self.left, self.PIECE)
        data = os.pread(self.fd, n, self.pos) if n else b""
        if n and not data:
            raise ImageError(f"blob {self.digest} is shorter than its descriptor says")
        self.pos += len(data)
        self.left -= len(data)
        return data


@dataclass
class _Upload:
    """An upload session: where its next request goes."""
    location: str


class Pusher:
    def __init__(self, ref, *, store=None, source=None, client=None, reporter=None, chunk_size=None,
                 concurrency=None, insecure=()):
        self.ref = ref if isinstance(ref, Reference) else Reference.parse(ref)
        self.source = source
        self.store = _open_store(store)
        self._own_client = client is None
        self.client = client or RegistryClient(insecure=insecure)
        self.reporter = reporter or Reporter()
        self.chunk_size = int(chunk_size or os.environ.get("LAMINA_PUSH_CHUNK_SIZE") or DEFAULT_CHUNK_SIZE)
        self.concurrency = max(1, int(concurrency or DEFAULT_CONCURRENCY))
        self._rebuilt = {}   # digest -> path of a layer blob rebuilt from a compact store
        self._spools = []    # the nameless files holding them (their paths are /proc/self/fd/N)

    def run(self):
        try:
            return self._run()
        finally:
            for f in self._spools:
                f.close()
            self.reporter.close()
            if self._own_client:
                self.client.close()

    # --- what to push ----------------------------------------------------------------------------

    def _document(self, digest):
        data = _read_blob(self.store, digest)
        try:
            doc = json.loads(data)
        except ValueError:
            raise ImageError(f"stored manifest {digest} is not JSON") from None
        if not isinstance(doc, dict):
            raise ImageError(f"stored manifest {digest} is not a JSON object")
        return data, doc

    def _manifest_blobs(self, digest):
        data, doc = self._document(digest)
        media_type = document_media_type(doc, None, f"manifest {digest}")
        if not mt.is_manifest(media_type):
            raise ImageError(f"{digest} is not an image manifest")
        m = parse_manifest(doc, media_type, f"manifest {digest}", limits=None)   # a stored image
        return data, media_type, [m.config] + list(m.layers), m.layers

    def _complete_index(self, image):
        """The index the image was pulled as, when it and all its images are in the store."""
        for rd in getattr(image, "repo_digests", []) or []:
            d = str(rd).rsplit("@", 1)[-1]
            if d == image.manifest_digest or not self.store.has_blob(d):
                continue
            try:
                data, doc = self._document(d)
                media_type = document_media_type(doc, None, f"index {d}")
                if not mt.is_index(media_type):
                    continue
                index = parse_index(doc, media_type, f"index {d}")
            except LaminaError:
                continue
            children = [c for c in index.manifests if mt.is_manifest(c.media_type)]
            if len(children) != len(index.manifests) or image.manifest_digest not in {c.digest for c in children}:
                continue
            ok = True
            for c in children:
                if not self.store.has_blob(c.digest):
                    ok = False
                    break
                _, _, blobs, _ = self._manifest_blobs(c.digest)
                if not all(self.store.has_blob(b.digest) for b in blobs):
                    ok = False
                    break
            if ok:
                return d, data, media_type, children
        return None

    def _compact_index(self, image):
        """A compact image that is one platform of a stored index: (index doc, its media type,
        [Image] of the platforms in the store that can be pushed), else None.  Platforms not in
        the store are left out of the index pushed (their blobs could not be pushed anyway)."""
        index_digest, platforms = self.store.platforms(image)
        if index_digest is None or len(platforms) < 2:
            return None
        data, doc = self._document(index_digest)
        media_type = document_media_type(doc, None, f"index {index_digest}")
        if not mt.is_index(media_type):
            return None
        index = parse_index(doc, media_type, f"index {index_digest}")
        if not all(mt.is_manifest(c.media_type) for c in index.manifests):
            return None  # nested indexes: push the platform alone, as before
        present = [i for i in platforms if self.store.has_blob(i.config_digest) and all(
            self.store.has_blob(d.digest) or self.store.layer_is_compact(c) for d, c in zip(i.layers, i.chain_ids))]
        return doc, media_type, present

    def _compact_manifests(self, images):
        """Each image's manifest, rebuilt where its layers are compact: [(old digest, digest, data,
        media type, descs, layers)]."""
        out = []
        for image in images:
            data, mtype, descs, layers = self._manifest_blobs(image.manifest_digest)
            data, descs, layers = self._rebuild_compact(image, data, descs, layers)
            out.append((image.manifest_digest, _digest.sha256_bytes(data), data, mtype, descs, layers))
        return out

    def _rebuild_compact(self, image, data, descs, layers):
        """A compact store dropped layer blobs (``keep-blobs false``): rebuild those layers from
        snapshot + sidecar (diffID checked while streaming), gzip them, and rewrite the manifest
        to name the new blobs.  Returns (manifest bytes, descs, layers) unchanged otherwise."""
        from ..store.sidecar import gzip_layer
        from ..store.fsutil import NamedWrites
        from ..transports.sources import _with_layers
        new = {}
        for desc, diff_id, chain in zip(image.layers, image.diff_ids, image.chain_ids):
            if desc.digest in new or self.store.has_blob(desc.digest) or not self.store.layer_is_compact(chain):
                continue  # (a blob the image repeats is rebuilt once)
            gz_type = mt.DOCKER_LAYER_GZIP if desc.media_type.startswith("application/vnd.docker.") else mt.OCI_LAYER_GZIP
            # a file of its own for each rebuild: two layers may rebuild to one digest (blobs
            # of one diffID, gzipped otherwise), which _rebuilt counts once.  Nameless (O_TMPFILE,
            # else unlinked at once): a push killed mid-way left $TMPDIR/lamina-push-*/layer-N.gz,
            # as big as the layer, for ever.  Its writes name it: a full $TMPDIR said the bare 'No
            # space left on device', which reads as the store's or the registry's disk.
            spool = tempfile.TemporaryFile(prefix="lamina-push-")
            self._spools.append(spool)
            shown = f"{tempfile.gettempdir()} (a temp file of layer {desc.digest}, gzipped for the push)"
            out = NamedWrites(spool, shown)
            digest, size = gzip_layer(self.store.paths.snapshot(chain), diff_id,
                                      f"layer {desc.digest} (diffID {diff_id})", out)
            out.flush()
            self._rebuilt[digest] = f"/proc/self/fd/{spool.fileno()}"
            new[desc.digest] = dataclasses.replace(desc, media_type=gz_type, digest=digest, size=size, urls=())
        if not new:
            return data, descs, layers
        layers = [new.get(d.digest, d) for d in layers]
        data, _ = _with_layers(data, layers)
        return data, [new.get(d.digest, d) for d in descs], layers

    def _blob_path(self, digest):
        return self._rebuilt.get(digest) or self.store.blob_path(digest)

    def _mount_sources(self, image):
        """Other repositories of the target registry the image is known by (cross-repo mount)."""
        out = []
        names = [str(r) for r in getattr(image, "refs", []) or []]
        names += [str(r) for r in getattr(image, "repo_digests", []) or []]
        for n in names:
            try:
                r = Reference.parse(n)
            except LaminaError:
                continue
            if r.domain == self.ref.domain and r.path != self.ref.path and r.path not in out:
                out.append(r.path)
        # docker tries first the repositories sharing most leading path components with the
        # target (team/app for team/app-test): only the first MAX_MOUNT_SOURCES are tried
        return sorted(out, key=lambda path: -_shared_components(path, self.ref.path))

    def _source_image(self):
        if self.source is not None:
            return self.store.resolve(self.source)
        try:
            return self.store.resolve(str(self.ref))
        except NoSuchImageError:
            if not self.ref.digest:
                raise
            # skopeo copy to docker://HOST/new@sha256:X pushes X into a repository the source
            # never named: the digest alone says which image
            return self.store.image_by_digest(self.ref.digest)

    # --- the push ------------------------------------------------------------------------------------

    def _run(self):
        ref = self.ref
        image = self._source_image()
        repo = self.client.repository(ref, ("pull", "push"))
        sources = self._mount_sources(image)
        for s in sources:
            repo.extra_scopes.add(f"repository:{s}:pull")
        self.reporter.line(f"The push refers to repository [{ref.name}]")

        compact = any(not self.store.has_blob(d.digest) and self.store.layer_is_compact(c)
                      for d, c in zip(image.layers, image.chain_ids))
        # a compact image's manifest changes (new layer blobs): the stored index no longer names it,
        # so it is pushed with a new index naming the new manifests (_compact_index)
        index = None if compact else self._complete_index(image)
        manifests = []   # (digest, data, media_type)
        blobs = {}
        layer_digests = []

        def add_blobs(descs, layers):
            for b in descs:
                blobs.setdefault(b.digest, b)
            layer_digests.extend(layer.digest for layer in layers)

        compact_index = self._compact_index(image) if compact else None
        if compact_index is not None:
            doc, index_type, platforms = compact_index
            new = {}
            for old, digest, data, mtype, descs, layers in self._compact_manifests(platforms):
                manifests.append((digest, data, mtype))
                new[old] = (digest, len(data))
                add_blobs(descs, layers)
            doc = dict(doc, manifests=[dict(m, digest=new[m["digest"]][0], size=new[m["digest"]][1])
                                       for m in doc["manifests"] or [] if m.get("digest") in new])
            data = json.dumps(doc, indent=3).encode()
            index = (_digest.sha256_bytes(data), data, index_type, None)
        elif index is not None:
            for c in index[3]:
                data, mtype, descs, layers = self._manifest_blobs(c.digest)
                manifests.append((c.digest, data, mtype))
                add_blobs(descs, layers)
        else:
            data, mtype, descs, layers = self._manifest_blobs(image.manifest_digest)
            if compact:
                data, descs, layers = self._rebuild_compact(image, data, descs, layers)
            add_blobs(descs, layers)
        for d in blobs:
            if d not in self._rebuilt and not self.store.has_blob(d):
                raise ImageError(f"cannot push {ref}: blob {d} is not in the store")
        if index is not None:
            top_digest, top_data, top_type = index[0], index[1], index[2]
        else:
            top_digest = _digest.sha256_bytes(data) if compact else image.manifest_digest
            top_data, top_type = data, mtype
        if ref.digest and ref.digest != top_digest:
            # before any upload: a blob sent for a push refused would be left in the repository
            raise ImageError(f"cannot push {top_digest} as {ref}: the digests differ")

        for d in dict.fromkeys(layer_digests):
            self.reporter.layer(d, blobs[d].size)
        statuses = {}
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="lamina-push") as pool:
            futures = {pool.submit(self._push_blob, repo, desc, sources, desc.digest in layer_digests): d
                       for d, desc in blobs.items()}
            for f, d in futures.items():
                statuses[d] = f.result()

        tag = ref.digest or ref.tag
        for digest, data, mtype in manifests:
            self._put_manifest(repo, digest, data, mtype, digest)
        self._put_manifest(repo, top_digest, top_data, top_type, tag)
        # docker names the tag first; a push by digest has none to name (docker's containerd
        # push then prints no line at all): the digest is said once, not twice
        said = f"{ref.tag}: " if not ref.digest else ""
        self.reporter.line(f"{said}digest: {top_digest} size: {len(top_data)}")
        return PushResult(str(ref), top_digest, len(top_data), top_type, statuses,
                          tag=None if ref.digest else ref.tag)

    def _put_manifest(self, repo, digest, data, media_type, tag):
        served = repo.put_manifest(tag, data, media_type)
        if served and served.startswith("sha256:") and served != digest:
            raise RegistryError(f"PUT manifest {repo.name}:{tag}: registry computed {served}, expected {digest}")

    def _push_blob(self, repo, desc, sources, is_layer):
        digest = desc.digest
        report = self.reporter.state if is_layer else (lambda *a: None)
        if is_layer and desc.urls and desc.media_type in mt.FOREIGN_LAYER_TYPES:
            # A non-distributable layer (Windows base layers) is fetched from its urls by who
            # pulls it: docker, containerd and skopeo push the manifest naming it, not its blob
            # (its licence may forbid that); the registry takes such a manifest without the blob.
            report(digest, "Skipped foreign layer")
            return "skipped (foreign layer)"
        if repo.blob_exists(digest):
            report(digest, "Layer already exists")
            return "exists"
        location, min_chunk = None, 0
        for src in sources[:MAX_MOUNT_SOURCES]:
            try:
                how, loc, min_chunk = repo.start_upload(mount=digest, from_path=src)
            except RegistryError:
                continue
            if how == "mounted":
                if location:
                    repo.cancel_upload(location)
                report(digest, f"Mounted from {src}")
                return f"mounted from {src}"
            # 202: src lacks the blob (or we may not read it), and the registry opened an upload
            # session instead.  The next source may hold it, as docker tries; the session kept is
            # the last one, for the upload if no mount works, and each one left is cancelled.
            if location:
                repo.cancel_upload(location)
            location = loc
        try:
            self._check_blob_size(desc)
        except ImageError:
            if location:
                repo.cancel_upload(location)
            raise
        report(digest, "Pushing")
        for attempt in range(2):
            if location is None:
                _, location, min_chunk = repo.start_upload(digest=digest)
            upload = _Upload(location)
            try:
                if desc.size <= self.chunk_size:
                    self._monolithic(repo, upload, desc)
                else:
                    self._chunked(repo, upload, desc, max(self.chunk_size, min_chunk))
                break
            except LaminaError as e:
                # the failed session keeps its bytes until the registry expires it (distribution:
                # a week); docker cancels it.  At its latest Location: distribution refuses a
                # _state whose offset is behind the session's.  cancel_upload never raises.
                repo.cancel_upload(upload.location)
                if attempt == 1 or not isinstance(e, RegistryError):
                    raise   # an ImageError (the stored blob cut short) fails a second upload alike
                location = None   # start a fresh upload session once
        report(digest, "Pushed")
        return "pushed"

    def _check_blob_size(self, desc):
        """Before the upload: a stored blob cut short would fail mid-request, and distribution
        cannot cancel a session whose last request broke off (its bytes put the session past the
        offset its Location says, and a DELETE there is refused: the session stays a week)."""
        size = os.stat(self._blob_path(desc.digest)).st_size
        if size < desc.size:
            raise ImageError(f"blob {desc.digest} is shorter than its descriptor says ({size} of {desc.size} bytes)")

    def _monolithic(self, repo, upload, desc):
        # a window of the descriptor's size: a blob cut short in the store is an ImageError, where
        # the file sent as it is left the registry waiting for the bytes its Content-Length owed
        with open(self._blob_path(desc.digest), "rb") as f:
            url = repo.with_query(upload.location, digest=desc.digest)
            resp = repo.request("PUT", url, headers={"Content-Type": "application/octet-stream",
                                                     "Content-Length": str(desc.size)},
                                body=lambda: _Window(f.fileno(), 0, desc.size, desc.digest),
                                what=_upload_what(repo, desc))
        self._check_put(repo, resp, desc)

    def _check_put(self, repo, resp, desc):
        if resp.status != 201:
            data = resp.content(limit=MAX_ERROR_BODY)
            raise RegistryError(f"{_upload_what(repo, desc)}: "
                                f"{error_message(data, resp.status, resp.reason)}", status=resp.status)
        served = resp.header("Docker-Content-Digest")
        resp.drain()
        if served and served.startswith("sha256:") and served != desc.digest:
            raise RegistryError(f"{_upload_what(repo, desc)}: registry stored {served}")

    def _upload_offset(self, repo, location, desc, sent):
        """Bytes the registry holds for an upload session (GET status, Range: 0-N), at most
        ``sent``, the bytes lamina sent it."""
        resp = repo.request("GET", location)
        rng = resp.header("Range")
        status = resp.status
        new_loc = resp.header("Location")
        resp.drain()
        if status != 204:
            raise RegistryError(f"upload status of {repo.name}: {status} {resp.reason}", status=status)
        if new_loc:
            location = resolve_url(location, new_loc, f"upload status of {repo.name}: Location")
        if not rng or "-" not in rng:
            return 0, location
        m = _UPLOAD_RANGE.fullmatch(rng.strip())
        if not m:
            raise RegistryError(f"upload status of {repo.name}: malformed Range {rng!r}")
        end = int(m.group(1))
        if end >= sent:
            # a session holding bytes lamina never sent: resumed past them, the upload would end
            # in a PUT of a blob with a hole (a digest error at best, the registry's own bytes at
            # worst), and a Range past the blob's size skipped straight to that PUT
            raise RegistryError(f"{_upload_what(repo, desc)}: the registry says its upload session holds "
                                f"bytes 0-{end}, but lamina sent it {sent} bytes of {desc.size}")
        # distribution writes "0-0" for an empty session as for one of 1 byte (its end is size-1,
        # never below 0): 0 it is, the likely case.  Were the byte there, the PATCH from 0 gets a
        # 416 and the upload starts over; read as 1 held, an empty session lost byte 0 unnoticed
        # until the digest check at the end failed the whole upload.
        return (end + 1 if end else 0), location

    def _chunked(self, repo, upload, desc, chunk_size):
        """``upload.location`` follows the session's Location as it moves (its cancel needs it)."""
        path = self._blob_path(desc.digest)
        size = desc.size
        offset = 0
        failures = 0
        budget = self.client.transport.retries + 1
        with open(path, "rb") as f:
            while offset < size:
                length = min(chunk_size, size - offset)
                # a callable: a redirected PATCH sends the window again from its start
                chunk = (lambda o=offset, n=length: _Window(f.fileno(), o, n, desc.digest))
                headers = {"Content-Type": "application/octet-stream",
                           "Content-Range": f"{offset}-{offset + length - 1}",
                           "Content-Length": str(length)}
                try:
                    resp = repo.request("PATCH", upload.location, headers=headers, body=chunk, retry=False,
                                        what=_upload_what(repo, desc))
                    if resp.status != 202:
                        try:
                            data = resp.content(limit=MAX_ERROR_BODY)
                        except RegistryError:
                            data = b""   # an error body cut short: the status still decides the retry
                        if resp.status < 500 and resp.status not in (408, 416, 429):
                            raise RegistryError(f"{_upload_what(repo, desc)}: "
                                                f"{error_message(data, resp.status, resp.reason)}",
                                                status=resp.status)
                        raise ConnectionError(f"{resp.status} {resp.reason}")
                    loc = resp.header("Location")
                    resp.drain()
                    if loc:
                        upload.location = resolve_url(upload.location, loc, f"{_upload_what(repo, desc)}: Location")
                    offset += length
                    failures = 0
                except CONNECTION_ERRORS as e:
                    failures += 1
                    if failures >= budget:
                        raise RegistryError(f"{_upload_what(repo, desc)} failed at byte {offset}: "
                                            f"{describe_error(e)}") from None
                    self.client.transport.sleep_backoff(failures)
                    offset, upload.location = self._upload_offset(repo, upload.location, desc, offset + length)
        url = repo.with_query(upload.location, digest=desc.digest)
        resp = repo.request("PUT", url, headers={"Content-Length": "0"}, what=_upload_what(repo, desc))
        self._check_put(repo, resp, desc)


def _upload_what(repo, desc):
    """How every message of a blob's upload names it."""
    return f"upload of {desc.digest} to {repo.name}"


def push(ref, *, store=None, source=None, client=None, reporter=None, chunk_size=None, concurrency=None,
         insecure=()) -> PushResult:
    """Push the stored image ``source`` (default: ``ref`` itself) to ``ref``."""
    return Pusher(ref, store=store, source=source, client=client, reporter=reporter, chunk_size=chunk_size,
                  concurrency=concurrency, insecure=insecure).run()
