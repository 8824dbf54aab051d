"""Recognise a layer's compression and open a streaming decompressor over it.

Detection is by magic bytes; a media type, when the caller has one, must
agree with them.  Inflate is ISA-L (``isal``) for gzip and ``zstandard`` for
zstd; both release the GIL, which is what lets inflate overlap with writing.
"""
import io

from . import errors
from .mediatypes import layer_compression

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def detect(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def check_media_type(kind: str, media_type, what: str):
    if media_type is None:
        return
    announced = layer_compression(media_type)
    if announced != kind:
        raise errors.CompressionError(
            f"{what}: media type {media_type} announces {announced} but the content is {kind}")


def open_decompressed(raw, kind: str, what: str):
    """A readable binary stream of the uncompressed bytes of ``raw``."""
    if kind == "gzip":
        from isal import igzip
        return igzip.IGzipFile(fileobj=raw, mode="rb")
    if kind == "zstd":
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(raw, read_size=1 << 20, read_across_frames=True)
    return raw


def decompress_errors():
    """Exceptions a decompressor raises on corrupt or truncated input."""
    import zlib

    import zstandard
    from isal import isal_zlib
    import gzip
    return (EOFError, OSError, zlib.error, isal_zlib.error, zstandard.ZstdError, gzip.BadGzipFile, io.UnsupportedOperation)
