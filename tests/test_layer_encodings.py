"""Layer encodings the registries hold beside plain gzip: eStargz (stargz-snapshotter's
lazy-pull gzip) and zstd:chunked (podman's partial-pull zstd), built here as their writers
build them (Debian's golang-github-containerd-stargz-snapshotter-dev ``estargz/gzip.go``,
``build.go``; golang-github-containers-storage-dev ``pkg/chunked/compressor``,
``internal/compression.go``).

A runtime that does not pull lazily unpacks them as ordinary layers: containerd's applier
and podman without partial pulls extract every entry of the tar, the TOC
(``stargz.index.json``) and the landmark files (``.prefetch.landmark``,
``.no.prefetch.landmark``) included, and the diffID is the sha256 of that whole tar; only the
snapshotter's lazy mount hides the landmarks at the root (``fs/layer/node.go``).  lamina
is such an unpacker: the tree is GNU tar's reading of the decompressed stream, the same on
every path, and the diffID verifies.
"""
from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib

import pytest
import zstandard

from everypath import assert_agree, run_paths
from layerkit import apply, gnu_tar_extract, sha256, write
from ocibuild import Shipped
from tarbuild import Tar
from treecmp import compare, snapshot

OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def _entries(tar):
    """The byte spans of each entry of ``tar`` (header, extended headers and data), and
    where its end-of-archive blocks start."""
    spans, start = [], 0
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        for m in tf:
            end = m.offset_data + -(-m.size // 512) * 512
            spans.append((start, end))
            start = end
    return spans, start


def _gz_member(data, extra=None, level=6):
    flags = 4 if extra is not None else 0
    head = b"\x1f\x8b\x08" + bytes([flags]) + b"\0\0\0\0\0\xff"
    if extra is not None:
        head += struct.pack("<H", len(extra)) + extra
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return head + c.compress(data) + c.flush() + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def estargz(files, *, prefetch=True):
    """An eStargz layer of ``files`` ({name: bytes}): the landmark first, a gzip member per
    entry (large files cut into chunks of members), the TOC entry and the tar's end in one
    member, then the 51-byte footer whose FEXTRA gives the TOC's offset."""
    landmark = ".prefetch.landmark" if prefetch else ".no.prefetch.landmark"
    t = Tar().file(landmark, b"\x0f")
    for name, data in files.items():
        t.file(name, data)
    body = t.bytes(end=False)
    toc = json.dumps({"version": 1, "entries": [{"name": n, "type": "reg", "size": len(d)}
                                                for n, d in files.items()]}, indent="\t").encode()
    toc_entry = Tar().file("stargz.index.json", toc).bytes()  # with the end-of-archive blocks
    tar = body + toc_entry
    spans, _ = _entries(body + bytes(1024))
    blob = b""
    for start, end in spans:
        header_end = min(end, start + 512)
        blob += _gz_member(body[start:header_end])
        for off in range(header_end, end, 4096):  # estargz's chunk size, here small
            blob += _gz_member(body[off:min(end, off + 4096)])
    toc_offset = len(blob)
    blob += _gz_member(toc_entry)
    subfield = b"%016xSTARGZ" % toc_offset
    footer = _gz_member(b"", extra=b"SG" + struct.pack("<H", len(subfield)) + subfield, level=0)
    assert len(footer) == 51, len(footer)
    return Shipped(blob + footer, tar)


def zstd_chunked(files):
    """A zstd:chunked layer of ``files``: a zstd frame per entry's header and per file's data,
    the tar's end in a frame, the manifest (zstd-compressed JSON) in a skippable frame and the
    40-byte footer in another (offset, sizes, type, magic ``GnUlInUx``)."""
    t = Tar()
    for name, data in files.items():
        t.file(name, data)
    tar = t.bytes()
    spans, end_at = _entries(tar)
    cz = zstandard.ZstdCompressor(level=3, write_checksum=True)
    blob = b""
    for start, end in spans:
        blob += cz.compress(tar[start:start + 512])
        if end > start + 512:
            blob += cz.compress(tar[start + 512:end])
    blob += cz.compress(tar[end_at:])
    manifest = json.dumps({"version": 1, "entries": [{"type": "reg", "name": n, "size": len(d)}
                                                      for n, d in files.items()]}).encode()
    packed = zstandard.ZstdCompressor().compress(manifest)
    offset = len(blob) + 8
    blob += b"\x50\x2a\x4d\x18" + struct.pack("<I", len(packed)) + packed
    footer = struct.pack("<QQQQ", offset, len(packed), len(manifest), 1) + b"GnUlInUx"
    blob += b"\x50\x2a\x4d\x18" + struct.pack("<I", len(footer)) + footer
    return Shipped(blob, tar, OCI_LAYER_ZSTD)


FILES = {"etc/os-release": b"ID=test\n", "usr/bin/tool": bytes(range(256)) * 50, "empty": b""}


def _gnu(g, tar):
    return snapshot(gnu_tar_extract(write(g.dest / "ref.tar", tar), g.dest / "gnu"))


def _agree_with_gnu_tar(g, layers):
    results = run_paths(g.dest, layers)
    tree = assert_agree(results)
    assert tree is not None, f"refused on every path: {next(iter(results.values()))!r}"
    diff = compare(_gnu(g, layers[-1].tar), tree, labels=("GNU tar", "lamina"))
    assert not diff, diff
    return tree


def test_estargz_layer_unpacks_as_containerd_applies_it(g):
    """Every entry, TOC and landmark included, on every path; the diffID (of the whole tar,
    TOC included) verifies, over a footer member with FEXTRA and no data."""
    tree = _agree_with_gnu_tar(g, [estargz(FILES)])
    assert {"stargz.index.json", ".prefetch.landmark", "etc/os-release", "usr/bin/tool"} <= set(tree.entries)


def test_estargz_without_prefetch_landmark(g):
    tree = _agree_with_gnu_tar(g, [estargz({"a": b"x" * 10_000}, prefetch=False)])
    assert ".no.prefetch.landmark" in tree.entries and tree["a"].size == 10_000


def test_zstd_chunked_layer_unpacks_like_a_zstd_layer(g):
    """Frames per entry and per file, then the manifest and the footer in skippable frames
    after the tar's end: the tree of the tar, on every path, its diffID verified."""
    tree = _agree_with_gnu_tar(g, [zstd_chunked(FILES)])
    assert sorted(tree.entries) == sorted([*FILES, "etc", "usr", "usr/bin"])


def test_estargz_diff_id_is_the_whole_tar(g):
    """A config whose diffID leaves the TOC out (the tar of the files alone) is refused."""
    layer = estargz(FILES)
    files_only = Tar().file(".prefetch.landmark", b"\x0f")
    for n, d in FILES.items():
        files_only.file(n, d)
    results = run_paths(g.dest, [Shipped(layer.blob, files_only.bytes())], paths=("dir", "store-copy"))
    for path, r in results.items():
        assert type(r).__name__ == "DigestMismatchError", f"{path}: {r!r}"
    assert sha256(layer.tar) != sha256(files_only.bytes())


@pytest.mark.parametrize("pipeline", ["native", "python"])
@pytest.mark.parametrize("encode", [estargz, zstd_chunked], ids=["estargz", "zstd-chunked"])
def test_both_pipelines_verify_the_blob_and_diff_id(tmp_path, monkeypatch, pipeline, encode):
    monkeypatch.setenv("LAMINA_PIPELINE", pipeline)
    layer = encode(FILES)
    st = apply(write(tmp_path / "blob", layer.blob), tmp_path / "d", digest=sha256(layer.blob),
               diff_id=sha256(layer.tar))
    assert st.pipeline == pipeline and st.compressed_bytes == len(layer.blob)
