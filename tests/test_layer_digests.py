"""Blob digest / diffID verification, corrupt compressed streams, media types."""
from __future__ import annotations

import os
import random

import pytest

import lamina
from lamina import errors
from layerkit import apply, gz, sha256, write, zst
from tarbuild import Tar

GZ_MT = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD_MT = "application/vnd.oci.image.layer.v1.tar+zstd"
TAR_MT = "application/vnd.oci.image.layer.v1.tar"
DOCKER_GZ_MT = "application/vnd.docker.image.rootfs.diff.tar.gzip"


@pytest.fixture(scope="module")
def plain():
    # random content: deflate keeps it in stored blocks, so a flipped byte in the
    # middle of the blob changes file content (not tar headers) and only the
    # gzip CRC / the digests can notice
    return Tar().dir("d").file("d/random.bin", random.Random(3).randbytes(300_000)).file("z", b"z\n").bytes()


def flip(data, pos):
    b = bytearray(data)
    b[pos] ^= 0x5A
    return bytes(b)


@pytest.mark.parametrize("where", ["middle", "crc", "isize"])
def test_flipped_byte_in_gzip_with_digest(tmp_path, plain, where):
    blob = gz(plain)
    pos = {"middle": len(blob) // 2, "crc": len(blob) - 6, "isize": len(blob) - 2}[where]
    bad = flip(blob, pos)
    with pytest.raises((errors.CompressionError, errors.DigestMismatchError)) as ei:
        apply(write(tmp_path / "b", bad), tmp_path / "d", digest=sha256(blob), diff_id=sha256(plain))
    if isinstance(ei.value, errors.DigestMismatchError) and ei.value.expected == sha256(blob):
        assert ei.value.actual == sha256(bad)


@pytest.mark.parametrize("where", ["middle", "crc", "isize"])
def test_flipped_byte_in_gzip_without_digest_is_compression_error(tmp_path, plain, where):
    """The gzip trailer (CRC32, ISIZE) must be checked even when no digest is given."""
    blob = gz(plain)
    pos = {"middle": len(blob) // 2, "crc": len(blob) - 6, "isize": len(blob) - 2}[where]
    with pytest.raises(errors.CompressionError):
        apply(write(tmp_path / "b", flip(blob, pos)), tmp_path / "d")


def test_flipped_byte_in_zstd_with_digest(tmp_path, plain):
    blob = zst(plain)
    bad = flip(blob, len(blob) // 2)
    with pytest.raises((errors.InvalidArchiveError, errors.DigestMismatchError)):
        apply(write(tmp_path / "b", bad), tmp_path / "d", digest=sha256(blob))


@pytest.mark.parametrize("comp", ["gzip", "zstd", "none"])
def test_wrong_digest(tmp_path, plain, comp):
    blob = {"gzip": gz, "zstd": zst, "none": lambda d: d}[comp](plain)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(errors.DigestMismatchError) as ei:
        apply(write(tmp_path / "b", blob), tmp_path / "d", digest=wrong)
    assert ei.value.expected == wrong and ei.value.actual == sha256(blob)
    assert wrong in str(ei.value) and sha256(blob) in str(ei.value)


@pytest.mark.parametrize("comp", ["gzip", "zstd", "none"])
def test_wrong_diff_id(tmp_path, plain, comp):
    blob = {"gzip": gz, "zstd": zst, "none": lambda d: d}[comp](plain)
    wrong = "sha256:" + "1" * 64
    with pytest.raises(errors.DigestMismatchError) as ei:
        apply(write(tmp_path / "b", blob), tmp_path / "d", digest=sha256(blob), diff_id=wrong)
    assert ei.value.expected == wrong and ei.value.actual == sha256(plain)


def test_diff_id_of_compressed_blob_is_not_its_digest(tmp_path, plain):
    """Passing the blob digest as diff_id (a classic mix-up) must fail."""
    blob = gz(plain)
    with pytest.raises(errors.DigestMismatchError):
        apply(write(tmp_path / "b", blob), tmp_path / "d", diff_id=sha256(blob))


def test_digest_covers_bytes_after_the_compressed_stream(tmp_path, plain):
    """Garbage appended after the gzip member is part of the blob: the digest covers it."""
    blob = gz(plain)
    padded = blob + b"\0" * 100
    try:
        st = apply(write(tmp_path / "b", padded), tmp_path / "d", digest=sha256(blob))
    except (errors.DigestMismatchError, errors.CompressionError):
        return
    pytest.fail(f"digest {sha256(blob)} accepted for a blob that hashes to {sha256(padded)} ({st.digest})")


@pytest.mark.parametrize("bad", ["sha256:abc", "sha256:" + "A" * 64, "md5:" + "0" * 32, "0" * 64,
                                 "sha256:" + "0" * 63 + "g", "sha256:../../" + "0" * 58])
@pytest.mark.parametrize("which", ["digest", "diff_id"])
def test_malformed_expected_digest(tmp_path, plain, bad, which):
    """A malformed expected digest is refused up front, before anything is written."""
    with pytest.raises(errors.InvalidDigestError):
        apply(write(tmp_path / "b", plain), tmp_path / "d", **{which: bad})
    assert not (tmp_path / "d").exists() or os.listdir(tmp_path / "d") == []


@pytest.mark.parametrize("comp,mt", [
    ("zstd", GZ_MT), ("gzip", ZSTD_MT), ("gzip", TAR_MT), ("none", GZ_MT), ("zstd", TAR_MT),
    ("none", ZSTD_MT), ("zstd", DOCKER_GZ_MT)])
def test_media_type_mismatch(tmp_path, plain, comp, mt):
    blob = {"gzip": gz, "zstd": zst, "none": lambda d: d}[comp](plain)
    dest = tmp_path / "d"
    with pytest.raises((errors.CompressionError, errors.UnsupportedMediaTypeError)):
        apply(write(tmp_path / "b", blob), dest, media_type=mt)
    assert not dest.exists() or os.listdir(dest) == [], "nothing may be written before the media type check"


@pytest.mark.parametrize("comp,content", [("bzip2", "bzip2-compressed"), ("xz", "xz-compressed"),
                                          ("none", "not compressed")])
def test_media_type_mismatch_names_what_the_blob_is(tmp_path, plain, comp, content):
    """A bzip2 or xz layer under a gzip media type: the error says what it is (was: "the
    content is none")."""
    import bz2
    import lzma
    blob = {"bzip2": bz2.compress, "xz": lzma.compress, "none": lambda d: d}[comp](plain)
    with pytest.raises(errors.CompressionError, match=f"announces gzip but the content is {content}$"):
        apply(write(tmp_path / "b", blob), tmp_path / "d", media_type=GZ_MT)


@pytest.mark.parametrize("mt", ["application/vnd.oci.image.config.v1+json", "application/octet-stream",
                                "application/vnd.oci.image.layer.v1.tar+bzip2", ""])
def test_unsupported_media_type(tmp_path, plain, mt):
    with pytest.raises(errors.UnsupportedMediaTypeError):
        apply(write(tmp_path / "b", gz(plain)), tmp_path / "d", media_type=mt)


@pytest.mark.parametrize("comp,mt", [("gzip", GZ_MT), ("gzip", DOCKER_GZ_MT), ("zstd", ZSTD_MT),
                                     ("none", TAR_MT), ("none", "application/vnd.docker.image.rootfs.diff.tar")])
def test_media_type_match(tmp_path, plain, comp, mt):
    blob = {"gzip": gz, "zstd": zst, "none": lambda d: d}[comp](plain)
    st = apply(write(tmp_path / "b", blob), tmp_path / "d", media_type=mt, digest=sha256(blob),
               diff_id=sha256(plain))
    assert st.compression == comp
    assert (tmp_path / "d" / "z").read_bytes() == b"z\n"


@pytest.mark.parametrize("what", ["random", "gzip-of-json", "zstd-of-text"])
def test_not_a_tar(tmp_path, what):
    blob = {"random": random.Random(1).randbytes(5000),
            "gzip-of-json": gz(b'{"not": "a tar"}' * 100),
            "zstd-of-text": zst(b"hello world\n" * 100)}[what]
    with pytest.raises(errors.InvalidArchiveError):
        apply(write(tmp_path / "b", blob), tmp_path / "d")


def test_hash_blob_false_still_checks_the_diff_id(tmp_path, plain):
    """The store skips re-hashing verified blobs; the diffID must still be checked."""
    blob = write(tmp_path / "b", gz(plain))
    stats = apply(blob, tmp_path / "ok", diff_id=sha256(plain), hash_blob=False)
    assert stats.digest == "" and stats.diff_id == sha256(plain)
    with pytest.raises(errors.DigestMismatchError, match="diffID"):
        apply(blob, tmp_path / "bad", diff_id=sha256(plain + b"x"), hash_blob=False)
    with pytest.raises(ValueError):
        apply(blob, tmp_path / "both", digest=sha256(gz(plain)), hash_blob=False)
    # a plain tar's blob digest is its diffID, so it is computed anyway
    tar = write(tmp_path / "t", plain)
    assert apply(tar, tmp_path / "plain", hash_blob=False).digest == sha256(plain)


def _ar(plain):
    return b"!<arch>\n" + b"layer.tar/      0           0     0     644     " + b"%-10d`\n" % len(plain) + plain


def _zip(plain):
    import io
    import zipfile
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("layer.tar", plain)
    return out.getvalue()


def _cpio(plain):
    name = b"layer.tar\0"
    fields = [1, 0o100644, 0, 0, 1, 0, len(plain), 0, 0, 0, 0, len(name), 0]
    head = b"070701" + b"".join(b"%08X" % v for v in fields) + name
    return head + bytes(-len(head) % 4) + plain


def _foreign_layers():
    import bz2
    import lzma
    import zlib
    return {
        "bzip2": (bz2.compress, "CompressionError", "bzip2-compressed"),
        "xz": (lzma.compress, "CompressionError", "xz-compressed"),
        "lzma": (lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE), "CompressionError", "lzma-compressed"),
        "zlib": (zlib.compress, "CompressionError", "zlib-compressed"),
        "zip": (_zip, "InvalidArchiveError", "in the zip archive format"),
        "ar": (_ar, "InvalidArchiveError", "in the ar archive format"),
        "cpio": (_cpio, "InvalidArchiveError", "in the cpio archive format"),
        # inside a layer compression (bsdtar --format newc -z): said "first tar header: bad header
        # checksum", the magic of the inflated bytes unread
        "cpio in gzip": (lambda d: gz(_cpio(d)), "InvalidArchiveError", "in the cpio archive format"),
        "zip in zstd": (lambda d: zst(_zip(d)), "InvalidArchiveError", "in the zip archive format"),
        "xz in gzip": (lambda d: gz(lzma.compress(d)), "CompressionError", "xz-compressed"),
    }


@pytest.mark.parametrize("pipeline", ["native", "python"])
@pytest.mark.parametrize("form", sorted(_foreign_layers()))
def test_a_layer_in_a_foreign_compression_or_format_is_named(tmp_path, plain, form, pipeline, monkeypatch):
    """Commons Compress's bla.tar.xz / .lzma / .lz4 / .sz and libarchive's xz, bzip2, zip, cpio
    archives: the error says what the layer is.  It said what the tar parser made of those bytes
    ("header checksum in base-256" for xz, "the stream ends inside the first tar header" for a
    small lzma stream), which sent the reader looking for a corrupt tar."""
    monkeypatch.setenv("LAMINA_PIPELINE", pipeline)
    make, error, words = _foreign_layers()[form]
    with pytest.raises(errors.InvalidArchiveError) as info:
        apply(write(tmp_path / "b", make(plain)), tmp_path / "d", name="layer f")
    assert type(info.value).__name__ == error and str(info.value).startswith(f"layer f: {words}"), str(info.value)


@pytest.mark.parametrize("name", ["BZh91AY", "PK\x03\x04", "070701", "x\x9c"])
def test_a_tar_whose_first_name_looks_like_a_magic_is_a_tar(tmp_path, name):
    """The magic is looked at only when the first tar header does not parse."""
    apply(write(tmp_path / "b", Tar().file(name, b"data").bytes()), tmp_path / "d")
    assert (tmp_path / "d" / name).read_bytes() == b"data"
