"""Recognise a layer's compression and open a streaming decompressor over it.

Detection is by magic bytes; a media type, when the caller has one, must
agree with them.  Inflate is ISA-L (``isal``) for gzip and ``zstandard`` for
zstd; both release the GIL, which is what lets inflate overlap with writing.
"""
import gzip
import io
import zlib

from . import errors
from .mediatypes import layer_compression

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _zstd_skippable(head: bytes) -> bool:
    """A zstd skippable frame (magic 0x184D2A50..5F, little-endian) starts
    the stream, as pzstd writes: the data is zstd, behind that frame."""
    return len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50


def read_exact(stream, n: int) -> bytes:
    """``n`` bytes of ``stream`` (fewer only at its end): streams may return short reads."""
    data = stream.read(n)
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            break
        data += more
    return data


def detect(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC) or _zstd_skippable(head):
        return "zstd"
    return "none"


TAR_BLOCK = 512


def _is_tar_header(block: bytes) -> bool:
    """Does ``block`` hold a tar header whose checksum field is its checksum (unsigned or, as
    old tars wrote it, signed)?"""
    if len(block) < TAR_BLOCK:
        return False
    digits = block[148:156].strip(b" \0")
    if not digits or digits.strip(b"01234567"):
        return False
    rest = block[:148] + b" " * 8 + block[156:TAR_BLOCK]
    return int(digits, 8) in (sum(rest), sum(rest) - 256 * sum(b > 127 for b in rest))


def sniff(raw, media_type=None, n: int = 8):
    """``(head, kind)``: the first bytes of the layer blob ``raw`` and its compression.

    A tar's first bytes are its first member's name, which may start with gzip's or zstd's
    magic: when the first 512 bytes are a tar header that the magic's decoder refuses (a gzip
    header's reserved flag bits, a zstd frame's reserved bit), it is that tar, as GNU tar
    (which tries a header before any magic), bsdtar, umoci and containerd read it, unless the
    media type announces a compression.  Bytes that decode as what the magic says stay
    compressed: a blob both readings take would be two trees."""
    head = read_exact(raw, n)
    kind = detect(head)
    if kind != "none" and (media_type is None or _announces_no_compression(media_type)):
        head += read_exact(raw, TAR_BLOCK - len(head))
        if _is_tar_header(head) and _refused_by(kind, head):
            kind = "none"
    return head, kind


def _announces_no_compression(media_type):
    try:
        return layer_compression(media_type) == "none"
    except errors.UnsupportedMediaTypeError:  # not a layer type: check_media_type names it
        return False


def _refused_by(kind, head):
    try:
        if kind == "gzip":
            zlib.decompressobj(31).decompress(head)
        else:
            import zstandard
            zstandard.ZstdDecompressor().decompressobj().decompress(head)
    except zlib.error:
        return True
    except Exception as e:  # zstandard.ZstdError (zstandard may be absent: then not refused)
        return type(e).__name__ == "ZstdError"
    return False


# What a layer that is not a tar may be instead (magic bytes that fit in HEAD): named in the
# error when its first tar header does not parse, rather than the parser's complaint about
# a checksum that xz's or bzip2's bytes happened to spell.
_FOREIGN_COMPRESSIONS = (
    ("bzip2", b"BZh"), ("xz", b"\xfd7zXZ\x00"), ("lzma", b"\x5d\x00\x00"), ("lz4", b"\x04\x22\x4d\x18"),
    ("lz4 (legacy frame)", b"\x02\x21\x4c\x18"), ("compress (.Z)", b"\x1f\x9d"), ("lzip", b"LZIP"),
    ("lzop", b"\x89LZO\x00"), ("snappy", b"\xff\x06\x00\x00sNaP"),
    ("zlib", b"\x78\x01"), ("zlib", b"\x78\x5e"), ("zlib", b"\x78\x9c"), ("zlib", b"\x78\xda"),
    # zstd before 1.0: `zstd -dc` reads v0.5 and later, but Go's decoder (containerd, docker),
    # GNU tar and bsdtar take the 1.0 magic only, so read such a layer as a tar that fails
    ("zstd v0.1 (legacy format)", b"\x1e\xb5\x2f\xfd"),
    *((f"zstd v0.{v} (legacy format)", bytes([0x20 + v]) + b"\xb5\x2f\xfd") for v in range(2, 8)),
)
_FOREIGN_ARCHIVES = (
    ("zip", b"PK\x03\x04"), ("7z", b"7z\xbc\xaf\x27\x1c"), ("rar", b"Rar!\x1a\x07"), ("cpio", b"070701"),
    ("cpio", b"070702"), ("cpio", b"070707"), ("cpio", b"\xc7\x71"), ("cpio", b"\x71\xc7"),
    ("ar", b"!<arch>\n"), ("xar", b"xar!"), ("cab", b"MSCF\x00\x00\x00\x00"),
)


def foreign(head: bytes):
    """``(name, "compression" or "archive")`` when ``head`` (a layer's first bytes, neither
    gzip nor zstd) is the magic of a compression or an archive format lamina does not read;
    None when it says nothing."""
    for table, kind in ((_FOREIGN_COMPRESSIONS, "compression"), (_FOREIGN_ARCHIVES, "archive")):
        for name, magic in table:
            if head.startswith(magic):
                return name, kind
    return None


def check_media_type(kind: str, media_type, what: str, head: bytes = b""):
    if media_type is None:
        return
    announced = layer_compression(media_type)
    if announced != kind:
        content = kind
        if kind == "none":  # name what it is (bzip2 or xz under a gzip media type), not "none"
            found = foreign(head)
            content = (f"{found[0]}-compressed" if found[1] == "compression" else f"a {found[0]} archive"
                       ) if found else "not compressed"
        raise errors.CompressionError(
            f"{what}: media type {media_type} announces {announced} but the content is {content}")


def open_decompressed(raw, kind: str, what: str):
    """A readable binary stream of the uncompressed bytes of ``raw``."""
    if kind == "gzip":
        return io.BufferedReader(_GzipMembers(raw), buffer_size=_GZIP_READ)
    if kind == "zstd":
        return io.BufferedReader(_ZstdFramewise(raw), buffer_size=1 << 20)
    return raw


class _ZstdFramewise(io.RawIOBase):
    """The frames of ``raw`` decoded one by one, each held to the content size its header
    declares, as the native stage holds them (libzstd checks it when it has a frame in one
    piece, and block by block only at a last block of data; Go's decoder always)."""

    def __init__(self, raw):
        super().__init__()
        import zstandard
        self._frames = _ZstdFrames(raw)
        self._dctx = zstandard.ZstdDecompressor()  # one for every frame (zstd:chunked has thousands)
        self._reader = None
        self._made = 0

    def readable(self):
        return True

    def readinto(self, buf):
        import zstandard
        while True:
            if self._reader is None:
                if not self._frames.next_frame():
                    return 0
                self._reader = self._dctx.stream_reader(self._frames, read_size=1 << 20, read_across_frames=False)
                self._made = 0
            n = self._reader.readinto(buf)
            if n:
                self._made += n
                return n
            declared = self._frames.declared
            if declared is not None and declared != self._made:
                raise zstandard.ZstdError(f"Data corruption detected (a frame declares {declared} bytes of "
                                          f"content and gives {self._made})")
            self._reader = None


class _ZstdFrames(io.RawIOBase):
    """``raw`` passed one frame at a time (``next_frame``; a read ends at the frame's end)
    while its zstd frames are walked (headers and block sizes only): at its end a frame left
    unfinished is "truncated", as in the native stage (libzstd's stream reader in
    python-zstandard ends quietly on a cut frame after a whole one).  ``declared``: the
    content size the frame's header declares, None if it declares none."""

    def __init__(self, raw):
        super().__init__()
        self._raw = raw
        self._buf = b""      # bytes of the next header not complete yet
        self._skip = 0       # payload bytes to pass before the next header
        self._state = "frame"  # the next header: "frame", "block" or "checksum"
        self._checksum = False
        self._ending = False   # the frame ends once _skip is passed
        self._ended = False    # the frame has ended: reads give nothing until next_frame()
        self._rest = b""       # bytes read after the frame's end
        self.declared = None

    def readable(self):
        return True

    def next_frame(self):
        """Go on to the next frame: False at the end of the stream."""
        self._ended = False
        if not self._rest:
            self._rest = self._raw.read(1 << 20)
        return bool(self._rest)

    def readinto(self, buf):
        if self._ended:
            return 0
        data, self._rest = (self._rest[:len(buf)], self._rest[len(buf):]) if self._rest else (self._raw.read(len(buf)), b"")
        if not data:
            if self._buf or self._skip or self._state != "frame":
                raise EOFError("truncated (the stream ends inside a zstd frame)")
            return 0
        end = self._walk(memoryview(data))
        if end < len(data):
            self._rest = bytes(data[end:]) + self._rest
            data = data[:end]
        buf[:len(data)] = data
        return len(data)

    def _walk(self, data):
        """Walk ``data``: where in it the frame ends (its length when it does not)."""
        pos = 0
        while pos < len(data):
            if self._skip:
                n = min(self._skip, len(data) - pos)
                self._skip -= n
                pos += n
                if not self._skip and self._ending:
                    break
                continue
            need = self._need()
            take = min(need - len(self._buf), len(data) - pos)
            self._buf += bytes(data[pos:pos + take])
            pos += take
            if len(self._buf) == self._need():  # _need grows once the frame header's flags are in
                self._header()
                if self._ending and not self._skip:
                    break
        if self._ending and not self._skip:
            self._ending, self._ended = False, True
        return pos

    def _need(self):
        if self._state == "block":
            return 3
        if self._state == "checksum":
            return 4
        b = self._buf
        if len(b) < 5 or b[1:4] == b"\x2a\x4d\x18":
            return 8 if len(b) >= 4 and b[1:4] == b"\x2a\x4d\x18" else 5
        fhd = b[4]
        single, fcs = fhd >> 5 & 1, fhd >> 6
        return 5 + (not single) + (0, 1, 2, 4)[fhd & 3] + ((1 if single else 0), 2, 4, 8)[fcs]

    def _header(self):
        b, self._buf = self._buf, b""
        if self._state == "block":
            h = int.from_bytes(b, "little")
            kind, size = h >> 1 & 3, h >> 3
            self._skip = 1 if kind == 1 else size  # RLE: one byte; reserved (3): libzstd refuses it
            if h & 1:
                self._state = "checksum" if self._checksum else "frame"
                self._ending = not self._checksum
        elif self._state == "checksum":
            self._state, self._ending = "frame", True
        elif b[1:4] == b"\x2a\x4d\x18":  # skippable frame
            self._skip = int.from_bytes(b[4:8], "little")
            self._ending, self.declared = True, None
        else:  # a frame header (a bad magic is libzstd's to refuse)
            self._checksum = bool(b[4] >> 2 & 1)
            self._state = "block"
            fhd = b[4]
            single, width = fhd >> 5 & 1, ((1 if fhd >> 5 & 1 else 0), 2, 4, 8)[fhd >> 6]
            at = 5 + (not single) + (0, 1, 2, 4)[fhd & 3]
            self.declared = (int.from_bytes(b[at:at + width], "little") + (256 if width == 2 else 0)
                             if width and b[:4] == ZSTD_MAGIC else None)


_GZIP_READ = 1 << 20
# the native stage's words (pipeline_codecs.h), for the same layer on either pipeline
GZIP_AFTER_PADDING = "a gzip member after zero padding (gzip(1) and bsdtar stop at the padding, Go's reader fails)"
GZIP_RESERVED_FLAGS = "reserved flag bits set in a gzip member's header (gzip(1) and bsdtar refuse it)"
GZIP_HEADER_CRC = "gzip header CRC16 check failed"
_FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 0x02, 0x04, 0x08, 0x10
# the native stage streams any header; here a member with a header CRC is held whole to check it
_GZIP_HEADER_MAX = 16 << 20


def _gzip_header_end(b):
    """Where the gzip member header at the start of ``b`` ends (its CRC16 included), or None
    when ``b`` holds only part of it."""
    if len(b) < 10:
        return None
    flg, pos = b[3], 10
    if flg & _FEXTRA:
        if len(b) < pos + 2:
            return None
        pos += 2 + int.from_bytes(b[pos:pos + 2], "little")
    for flag in (_FNAME, _FCOMMENT):
        if flg & flag:
            nul = b.find(b"\0", pos)
            if nul < 0:
                return None
            pos = nul + 1
    pos += 2 if flg & _FHCRC else 0
    return pos if pos <= len(b) else None


class _GzipMembers(io.RawIOBase):
    """gzip members one after another, read as the native stage reads them: zero padding
    after the last member is skipped, but a member after zero padding is an error (gzip(1)
    and bsdtar stop at the padding, Go's reader fails; Python's gzip module and isal's
    IGzipFile read on, so a tar carried on there was seen by lamina alone), and so are
    reserved FLG bits (gzip(1) and bsdtar refuse them; isal ignores them)."""

    def __init__(self, raw):
        super().__init__()
        self._raw, self._member, self._pending = raw, None, b""
        self._members, self._padded = 0, False

    def readable(self):
        return True

    def _header_crc_checked(self, rest):
        """``rest`` (a member with FHCRC set, and what follows it) with its header CRC16
        verified, as gzip(1), zlib and Go verify it, then taken out of the header: isal's
        decompressobj refused every member that carries one, valid or not."""
        while (end := _gzip_header_end(rest)) is None:
            more = self._raw.read(_GZIP_READ) if len(rest) < _GZIP_HEADER_MAX else b""
            if not more:
                if len(rest) >= _GZIP_HEADER_MAX:
                    raise gzip.BadGzipFile(f"gzip member header with a header CRC longer than {_GZIP_HEADER_MAX} bytes")
                raise EOFError("truncated (the stream ends inside a gzip member)")
            rest += more
        if zlib.crc32(rest[:end - 2]) & 0xFFFF != int.from_bytes(rest[end - 2:end], "little"):
            raise gzip.BadGzipFile(GZIP_HEADER_CRC)
        return rest[:3] + bytes([rest[3] & ~_FHCRC]) + rest[4:end - 2] + rest[end:]

    def readinto(self, buf):
        from isal import isal_zlib
        while True:
            if self._member is None:
                data = self._pending or self._raw.read(_GZIP_READ)
                self._pending = b""
                if not data:
                    return 0
                rest = data.lstrip(b"\0")
                self._padded |= len(rest) < len(data) and self._members > 0
                if not rest:
                    continue
                if self._padded:
                    raise gzip.BadGzipFile(GZIP_AFTER_PADDING)
                while len(rest) < 4 and (more := self._raw.read(_GZIP_READ)):
                    rest += more
                if len(rest) >= 4 and rest.startswith(GZIP_MAGIC) and rest[3] & 0xE0:
                    raise gzip.BadGzipFile(GZIP_RESERVED_FLAGS)
                if len(rest) >= 4 and rest.startswith(GZIP_MAGIC) and rest[3] & _FHCRC:
                    rest = self._header_crc_checked(rest)
                self._member, self._pending = isal_zlib.decompressobj(wbits=31), rest
                self._members += 1
            m = self._member
            if m.unconsumed_tail:
                data = m.unconsumed_tail
            else:
                data, self._pending = self._pending or self._raw.read(_GZIP_READ), b""
                if not data:
                    raise EOFError("truncated (the stream ends inside a gzip member)")
            out = m.decompress(data, len(buf))
            if m.eof:
                self._pending, self._member = m.unused_data, None
            if out:
                buf[:len(out)] = out
                return len(out)


def corrupt(kind: str, error) -> str:
    """The words for a stream its decompressor refused (either pipeline)."""
    if "requires too much memory" in str(error):  # libzstd's words for a window over its 128 MiB default
        return (f"the zstd frame needs a window over the 128 MiB that decoders accept by default (zstd "
                f"--long=28 or more), so lamina, as `zstd -d` without --memory, bsdtar and GNU tar, "
                f"does not read it: {error}")
    if "Destination buffer is too small" in str(error):
        # libzstd's words when a single-segment frame, whose output it sizes by the content size
        # its header declares, holds more: the header lied (the output buffers are lamina's own
        # and never run out otherwise)
        return f"corrupt {kind} stream: a frame holds more than the content size its header declares ({error})"
    words = f"corrupt {kind} stream: {error}"
    if "Dictionary mismatch" in words:  # libzstd's words for a frame with a dictionary ID
        words += " (the frame needs a zstd dictionary, and a layer comes with none)"
    return words


def decompress_errors():
    """Exceptions a decompressor raises on corrupt or truncated input."""
    import zlib

    import zstandard
    from isal import igzip_lib, isal_zlib
    import gzip
    # (igzip's reader raises igzip_lib.IsalError, no OSError, on a bad deflate block)
    return (EOFError, OSError, zlib.error, isal_zlib.error, igzip_lib.IsalError, zstandard.ZstdError,
            gzip.BadGzipFile, io.UnsupportedOperation)


class Prefixed(io.RawIOBase):
    """``raw`` with its already-sniffed first bytes put back in front.

    ``read`` hands out the stream's own chunks (no copy through a buffer);
    ``close_raw`` closes ``raw`` with it, for callers that hand over ownership.
    """

    def __init__(self, head, raw, *, close_raw=False):
        super().__init__()
        self._head, self._raw, self._close_raw = head, raw, close_raw

    def readable(self):
        return True

    def read(self, n=-1):
        if self._head:
            if n is None or n < 0 or n >= len(self._head):
                data, self._head = self._head, b""
            else:
                data, self._head = self._head[:n], self._head[n:]
            return data
        return self._raw.read(n)

    def readinto(self, buf):
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def close(self):
        if self._close_raw and not self.closed:
            self._raw.close()
        super().close()
