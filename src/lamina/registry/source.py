"""A registry image as an unpack source: ``lamina unpack docker://REF DEST``.

``RegistrySource`` resolves a reference like ``pull`` does (mirrors first,
platform choice, every manifest digest checked) and hands the unpacker layers
whose ``open()`` is the blob streaming from the registry (a BlobStream, which
resumes a cut transfer with Range).  The unpacker then runs its usual single
pass per layer -- inflate, verify blob digest and diffID, write -- straight
from the network into its staging directory, which becomes DEST only once
every layer verified.  Nothing is kept in the store.

Top-down skipping reads the small upper layers before the lower ones are
written.  A registry layer read twice would cross the link twice, so the
layers the unpacker may scan (unpacker.SCAN_FRACTION) are spooled to a
temporary file as they stream the first time, and read back from it after.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading

from ..oci.image import LayerRef, ResolvedImage, Source
from ..oci.model import document_media_type, parse_config, parse_manifest
from ..platform import Platform
from ..reference import Reference
from .blobstream import BlobStream
from .client import RegistryClient
from .progress import Reporter
from .pull import fetch_config, image_platform, resolve

PREFIX = "docker://"


class RegistrySource(Source):
    def __init__(self, ref, *, client=None, insecure=(), reporter=None):
        if isinstance(ref, str) and ref.startswith(PREFIX):
            ref = ref[len(PREFIX):]
        self.ref = ref if isinstance(ref, Reference) else Reference.parse(ref)
        self.description = PREFIX + str(self.ref)
        self._own_client = client is None
        self.client = client or RegistryClient(insecure=insecure)
        self.reporter = reporter or Reporter()
        self._spool_dir = None
        self.image = None       # the ResolvedImage, once resolve() ran
        self.downloaded = 0
        self._lock = threading.Lock()

    def resolve(self, platform=None):
        want = Platform.parse(platform) if isinstance(platform, str) else platform
        r = resolve(self.client, self.ref, want)
        mr = r.manifest
        manifest = parse_manifest(mr.document, document_media_type(mr.document, mr.media_type,
                                                                   f"manifest {mr.digest}"),
                                  f"manifest {mr.digest}")
        cdesc = manifest.config
        config = parse_config(fetch_config(r.repos, cdesc), f"config {cdesc.digest}", len(manifest.layers))
        self.reporter.line(f"{self.ref.digest or self.ref.tag}: Unpacking from {self.ref.path}")
        layers = []
        below = 0
        for i, d in enumerate(manifest.layers):
            self.reporter.layer(d.digest, d.size)
            opener = _Opener(self, r.repos, d, spool=self._may_be_scanned(i, d.size, below))
            layers.append(LayerRef(i, config.diff_ids[i], d.digest, d.size, d.media_type, opener))
            below += d.size
        self.image = ResolvedImage(config=config.raw, config_digest=cdesc.digest, layers=layers,
                                   manifest_digest=mr.digest, manifest=mr.document,
                                   platform=image_platform(want, r.chosen, config), ref=str(self.ref))
        return self.image

    def finished(self, image):
        """Report every layer complete (the unpack verified and committed them all)."""
        for layer in image.layers:
            self.reporter.state(layer.digest, "Pull complete")

    @staticmethod
    def _may_be_scanned(index, size, below):
        from ..unpacker import SCAN_FRACTION
        return index > 0 and below > 0 and size <= SCAN_FRACTION * below

    def spool_dir(self):
        with self._lock:
            if self._spool_dir is None:
                self._spool_dir = tempfile.mkdtemp(prefix="lamina-unpack-")
            return self._spool_dir

    def close(self):
        if self._spool_dir is not None:
            shutil.rmtree(self._spool_dir, ignore_errors=True)
            self._spool_dir = None
        if self._own_client:
            self.client.close()


class _Opener:
    """LayerRef's opener: the blob from the registry, or from its spool file once one was completed."""

    def __init__(self, source, repos, desc, *, spool):
        self.source, self.repos, self.desc, self.spool = source, repos, desc, spool
        self.spooled = None   # path of a complete copy

    def __call__(self):
        if self.spooled is not None:
            return open(self.spooled, "rb")
        d, source, reporter = self.desc, self.source, self.source.reporter

        def on_data(n):
            with source._lock:
                source.downloaded += n
            reporter.progress(d.digest, stream.offset, d.size)
            if stream.offset >= d.size:
                reporter.state(d.digest, "Verifying Checksum")

        reporter.state(d.digest, "Downloading")
        stream = BlobStream(self.repos, d.digest, d.size, on_data=on_data,
                            on_retry=lambda: reporter.state(d.digest, "Retrying"))
        if not self.spool:
            return stream
        return _SpoolingReader(stream, os.path.join(source.spool_dir(), d.digest.replace(":", "-")), self)


class _SpoolingReader(io.RawIOBase):
    """Passes a BlobStream through, keeping a copy; a copy of the whole blob is used by later opens."""

    def __init__(self, stream, path, opener):
        super().__init__()
        self._stream, self._path, self._opener = stream, path, opener
        self._file = open(path + ".part", "wb")

    def readable(self):
        return True

    def readinto(self, buf):
        n = self._stream.readinto(buf)
        if n:
            self._file.write(memoryview(buf)[:n])
        elif not self._file.closed:
            self._file.close()
            os.rename(self._path + ".part", self._path)
            self._opener.spooled = self._path
        return n

    def close(self):
        if not self._file.closed:
            self._file.close()
        self._stream.close()
        super().close()
