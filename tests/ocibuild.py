"""Build small OCI image layouts and docker archives for tests, byte by byte.

Tests need broken images (bad digests, wrong media types, missing blobs) that
no tool would write, so the layout is assembled here from plain JSON; the
good ones are cross-checked against skopeo/umoci in the tests.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import typing

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MTIME = 1_700_000_000


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(files):
    """A tar of {name: bytes | None (directory) | ("symlink", target) | ("hardlink", target)}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(data, tuple):
                info.type = tarfile.LNKTYPE if data[0] == "hardlink" else tarfile.SYMTYPE
                info.linkname = data[1]
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Shipped(typing.NamedTuple):
    """A layer given as its blob, byte for byte (padded, multi-member, odd headers...),
    with the tar it holds (its diffID) and its media type."""
    blob: bytes
    tar: bytes
    media_type: str = OCI_LAYER_GZIP


def gz(data):
    return gzip.compress(data, mtime=0)


OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
ENCODINGS = ("gzip", "plain", "gzip-members", "zstd", "zstd-frames")


class Encoded(bytes):
    """A layer's tar that ships in ``how`` (one of ENCODINGS) rather than as one gzip member:
    uncompressed, a gzip member per piece (as pigz and estargz write), one zstd frame, or a
    zstd frame per piece with a skippable frame before each (as zstd:chunked and pzstd write).
    ``cuts`` are where the pieces end, in thousandths of the tar: a member or frame may end
    inside a header, inside data or between entries, and a reader must carry on across it."""

    def __new__(cls, tar, how="gzip", cuts=()):
        self = super().__new__(cls, tar)
        self.how, self.cuts = how, tuple(cuts)
        return self

    def shipped(self):
        import zstandard
        tar = bytes(self)
        ends = sorted({len(tar) * c // 1000 for c in self.cuts} - {0, len(tar)}) + [len(tar)]
        pieces = [tar[a:b] for a, b in zip([0] + ends, ends)]
        if self.how == "plain":
            return Shipped(tar, tar, OCI_LAYER)
        if self.how == "gzip-members":
            return Shipped(b"".join(gz(p) for p in pieces), tar)
        cz = zstandard.ZstdCompressor(level=3, write_checksum=True)
        if self.how == "zstd":
            return Shipped(cz.compress(tar), tar, OCI_LAYER_ZSTD)
        if self.how == "zstd-frames":
            skip = b"\x50\x2a\x4d\x18" + (3).to_bytes(4, "little") + b"skp"
            return Shipped(b"".join(skip + cz.compress(p) for p in pieces), tar, OCI_LAYER_ZSTD)
        return Shipped(gz(tar), tar)


def desc(media_type, data, **extra):
    d = {"mediaType": media_type, "digest": sha256(data), "size": len(data)}
    d.update(extra)
    return d


def dumps(obj):
    return json.dumps(obj, sort_keys=True).encode()


class Layout:
    """An OCI image layout directory under construction."""

    def __init__(self, root):
        self.root = os.fspath(root)
        os.makedirs(os.path.join(self.root, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(self.root, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion": "1.0.0"}')
        self.entries = []

    @classmethod
    def existing(cls, root):
        """Wrap a layout already on disk (its index.json entries are kept)."""
        lay = cls.__new__(cls)
        lay.root = os.fspath(root)
        with open(os.path.join(lay.root, "index.json")) as f:
            lay.entries = json.load(f)["manifests"]
        return lay

    def path(self, digest):
        return os.path.join(self.root, "blobs", "sha256", digest.split(":", 1)[1])

    def blob(self, data):
        with open(self.path(sha256(data)), "wb") as f:
            f.write(data)
        return sha256(data)

    def json_blob(self, obj, media_type, **extra):
        data = dumps(obj)
        self.blob(data)
        return desc(media_type, data, **extra)

    def image(self, layers, *, os_name="linux", arch="amd64", variant=None, docker=False,
              diff_ids=None, compress=True, config_extra=None, layer_media_type=None):
        """Add an image whose layers are tars of the given {name: data} dicts; return its manifest descriptor."""
        layer_descs, ids = [], []
        for files in layers:
            raw = tar_bytes(files)
            blob = gz(raw) if compress else raw
            self.blob(blob)
            mt = layer_media_type or (
                (DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP) if compress else OCI_LAYER)
            layer_descs.append(desc(mt, blob))
            ids.append(sha256(raw))
        config = {"architecture": arch, "os": os_name,
                  "rootfs": {"type": "layers", "diff_ids": ids if diff_ids is None else diff_ids},
                  "config": {}}
        if variant:
            config["variant"] = variant
        config.update(config_extra or {})
        cdesc = self.json_blob(config, DOCKER_CONFIG if docker else OCI_CONFIG)
        mtype = DOCKER_MANIFEST if docker else OCI_MANIFEST
        manifest = {"schemaVersion": 2, "mediaType": mtype, "config": cdesc, "layers": layer_descs}
        return self.json_blob(manifest, mtype)

    def image_of_tars(self, tars, ref=None):
        """Add an amd64 image whose layers are these raw tars (gzipped; a ``Shipped`` as its blob
        is); return its manifest descriptor."""
        descs, ids = [], []
        for raw in tars:
            shipped = raw if isinstance(raw, Shipped) else raw.shipped() if isinstance(raw, Encoded) else \
                Shipped(gz(raw), raw, OCI_LAYER_GZIP)
            blob, raw = shipped.blob, shipped.tar
            self.blob(blob)
            descs.append(desc(shipped.media_type, blob))
            ids.append(sha256(raw))
        cdesc = self.json_blob({"architecture": "amd64", "os": "linux", "config": {},
                                "rootfs": {"type": "layers", "diff_ids": ids}}, OCI_CONFIG)
        manifest = self.json_blob({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc,
                                   "layers": descs}, OCI_MANIFEST)
        return self.add(manifest, ref=ref)

    def index(self, manifests, *, docker=False):
        mtype = DOCKER_LIST if docker else OCI_INDEX
        return self.json_blob({"schemaVersion": 2, "mediaType": mtype, "manifests": manifests}, mtype)

    def add(self, descriptor, ref=None, **annotations):
        d = dict(descriptor)
        if ref is not None:
            annotations["org.opencontainers.image.ref.name"] = ref
        if annotations:
            d["annotations"] = annotations
        self.entries.append(d)
        self.write_index()
        return d

    def write_index(self):
        with open(os.path.join(self.root, "index.json"), "wb") as f:
            f.write(dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.entries}))

    def read_json(self, digest):
        with open(self.path(digest), "rb") as f:
            return json.load(f)


def with_platform(descriptor, os_name, arch, variant=None):
    d = dict(descriptor)
    d["platform"] = {"os": os_name, "architecture": arch}
    if variant:
        d["platform"]["variant"] = variant
    return d


def multiarch(root, ref="latest"):
    """A layout with one index for linux/amd64, linux/arm64/v8 and linux/arm/v7 (+ an attestation).

    Each image has one layer holding /arch with its platform string.
    """
    lay = Layout(root)
    manifests = []
    for os_name, arch, variant in (("linux", "amd64", None), ("linux", "arm64", "v8"), ("linux", "arm", "v7")):
        platform = "/".join(x for x in (os_name, arch, variant) if x)
        m = lay.image([{"arch": platform.encode()}], os_name=os_name, arch=arch, variant=variant)
        manifests.append(with_platform(m, os_name, arch, variant))
    att = lay.image([{"sbom.json": b"{}"}], os_name="unknown", arch="unknown")
    att = with_platform(att, "unknown", "unknown")
    att["annotations"] = {"vnd.docker.reference.type": "attestation-manifest"}
    manifests.append(att)
    idx = lay.index(manifests)
    lay.add(idx, ref)
    return lay


def tar_of(members):
    """A tar archive (bytes) of {name: bytes | ("symlink", target)}; used for docker archives."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            if isinstance(data, tuple):
                info.type, info.linkname = (tarfile.SYMTYPE if data[0] == "symlink" else tarfile.LNKTYPE), data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def legacy_docker_save(path, layers, *, repo_tags=("example/app:1.0",), duplicate_last=False, gzip_it=False):
    """A classic ``docker save`` tar: <id>/layer.tar (+ a symlink for a repeated layer), <hex>.json."""
    members, names, ids = {}, [], []
    first_name = None
    for i, files in enumerate(layers):
        raw = tar_bytes(files)
        layer_id = hashlib.sha256(b"v1 id %d" % i).hexdigest()
        name = f"{layer_id}/layer.tar"
        members[f"{layer_id}/VERSION"] = b"1.0"
        members[name] = raw
        names.append(name)
        ids.append(sha256(raw))
        first_name = first_name or name
    if duplicate_last:
        # docker save writes a repeated layer once and symlinks the later <id>/layer.tar to it.
        layer_id = hashlib.sha256(b"v1 id dup").hexdigest()
        members[f"{layer_id}/layer.tar"] = ("symlink", "../" + first_name)
        names.append(f"{layer_id}/layer.tar")
        ids.append(ids[0])
    config = dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": ids}})
    config_name = sha256(config).split(":")[1] + ".json"
    members[config_name] = config
    members["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": list(repo_tags), "Layers": names}]).encode()
    data = tar_of(members)
    with open(path, "wb") as f:
        f.write(gz(data) if gzip_it else data)
    return {"config_digest": sha256(config), "diff_ids": ids, "layer_names": names}
