"""Other projects' gzip and zstd test streams as layer compressions (tests/corpora.py).

zstd's golden decompression streams, containers/image's "Hello" fixtures, file(1)'s zstd frame
headers of every format version, the streams klauspost/compress's Go decoders are tested
with (good.zip, bad.zip, and the crashers its fuzzers found: regression.zip) and pgzip's, Go's
compress/gzip testdata and the crafted gzip file of GNU gzip's tests (hufts-segv.gz).  A stream
holds no tar, so each goes between two frames (gzip members) of the test's making: the first a
tar header for a file 'f' as long as what the stream gives ``zstd -dc`` (``gzip -dc``), the last
the padding and the end blocks.  Concatenated frames are one stream to every decompressor, so
the layer is a tar exactly when its decompressor reads the stream through, and then:

- where ``zstd -dc`` (``gzip -dc``) reads the layer, lamina's 'f' is what the stream gave it;
- where it fails, lamina refuses the layer with a CompressionError naming the layer (not a tar
  reader's complaint about bytes a broken decompressor made up, and no crash);
- every path gives the same: the first stream of each outcome (read, or each libzstd error)
  of a source goes through every path, unless it inflates to more than 16 MiB;
  LAMINA_CORPORA_EVERY_STREAM=1 sends every stream.
"""
from __future__ import annotations

import gzip
import os
import subprocess

import pytest

import corpora
from conftest import require_tool
from everypath import assert_agree, run_paths
from layerkit import apply, write
from ocibuild import OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Shipped
from tarbuild import header
from treecmp import content_digest

EVERY_STREAM = os.environ.get("LAMINA_CORPORA_EVERY_STREAM") == "1"

# source -> how many streams it holds at least (the corpus really is there and read whole)
SOURCES = {
    "zstd/golden-decompression/empty-block.zst": 1,  # a frame of one empty block
    "zstd/golden-decompression/rle-first-block.zst": 1,  # an RLE block first (zstd 1.5.4's fix)
    "zstd/gzip/hufts-segv.gz": 1,  # a Huffman table that crashed gzip 1.3.x
    "klauspost/gzip/testdata/issue6550.gz": 1,  # a member cut short (Go issue 6550: a hang)
    "pgzip/bigempty.gz": 1,  # a member of no data, its trailer claiming gigabytes
    "gocompress/issue6550.gz.base64": 1,  # Go's own copy, another cut
    "klauspost/zstd/testdata/good.zip": 11,  # each block type and literal header size
    "klauspost/zstd/testdata/bad.zip": 40,  # reserved bits, bad sizes, windows, dictionaries
    "klauspost/zstd/testdata/regression.zip": 30,  # crashers of its fuzzers
    "klauspost/zstd/testdata/decode-regression.zip": 1,
    "klauspost/zstd/testdata/xml.zst": 1,
    "klauspost/zstd/testdata/z000028.zst": 1,
    "klauspost/zstd/testdata/headers-want.json.zst": 1,
    "cimage/pkg/compression/fixtures/Hello.gz": 1,  # containers/image's compression detection fixtures
    "cimage/pkg/compression/fixtures/Hello.zst": 1,
    "cimage/copy/fixtures/Hello.gz": 1,  # (a link to the one above)
    "cimage/copy/fixtures/Hello.zst": 1,  # another zstd writer's frame of the same "Hello"
    # file(1)'s magic tests: the first 10 bytes of a frame of each zstd version (v0.2 to v0.8+),
    # its dictionary IDs and window descriptors; libzstd reads v0.5 and later (legacy support)
    "file/zstd-v*.testfile": 17,
}


def _kind(source):
    return "gzip" if ".gz" in os.path.basename(source) else "zstd"  # (.zst, zstd-*.testfile)


def _frame(kind, data):
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    import zstandard
    return zstandard.ZstdCompressor().compress(data)


def _streams(source):
    found = corpora.streams(source)
    if source.endswith("good.zip"):  # the raw files beside their .zst
        found = [(n, d) for n, d in found if n.endswith(".zst")]
    return found


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_another_projects_stream_as_a_layer_reads_as_its_decompressor_reads_it(g, source):
    streams = _streams(source)
    assert len(streams) >= SOURCES[source], [n for n, _ in streams]
    _check_streams(g, _kind(source), source, streams)


# zstd's golden compression inputs (long literals and matches, a Huffman table larger than the
# literals it codes, an HTTP header), compressed by this machine's zstd at its levels' ends and
# with a 128 MiB window (the most a decoder takes by default); and one compressed with its golden
# dictionary, which a layer never comes with: refused, as `zstd -dc` refuses it
ZSTD_FLAGS = (("-1",), ("-19",), ("--ultra", "-22"), ("--long=27", "-3"), ("--fast=5",))


@pytest.mark.parametrize("flags", [" ".join(f) for f in ZSTD_FLAGS])
def test_zstds_golden_inputs_compressed_here_read_back(g, flags):
    require_tool("zstd")
    base = corpora.require_corpus("zstd")
    streams = []
    for name in sorted(os.listdir(os.path.join(base, "golden-compression"))):
        path = os.path.join(base, "golden-compression", name)
        streams.append((name, subprocess.run(["zstd", "-c", *flags.split(), path], check=True,
                                             capture_output=True).stdout))
    assert len(streams) >= 3, streams
    if flags == "-19":
        streams.append(("http with the golden dictionary", subprocess.run(
            ["zstd", "-c", "-D", os.path.join(base, "golden-dictionaries", "http-dict-missing-symbols"),
             os.path.join(base, "golden-compression", "http")], check=True, capture_output=True).stdout))
    outcomes = _check_streams(g, "zstd", f"zstd {flags}", streams)
    if flags == "-19":
        assert any("Dictionary mismatch" in o for o in outcomes), outcomes


def _check_streams(g, kind, source, streams):
    """Each (name, stream) as a layer, as the module's docstring says: the outcomes seen."""
    require_tool(kind)
    import lamina.errors
    outcomes = set()
    wrong = []
    for i, (name, stream) in enumerate(streams):
        given = subprocess.run([kind, "-dc"], input=stream, capture_output=True).stdout
        layer = (_frame(kind, header("f", size=len(given))) + stream
                 + _frame(kind, bytes(-len(given) % 512) + bytes(1024)))
        ref = subprocess.run([kind, "-dc"], input=layer, capture_output=True)
        layer_path = write(g.dest / f"layer-{i}", layer)
        try:
            apply(layer_path, g.dest / f"lamina-{i}")
            with open(g.dest / f"lamina-{i}" / "f", "rb") as f:
                got = f.read()
            outcome = "read"
            if ref.returncode != 0:
                wrong.append(f"{name}: read ({len(got)} bytes) where {kind} -dc fails: {ref.stderr[-200:]!r}")
            elif got != given:
                wrong.append(f"{name}: read {len(got)} bytes, not the {len(given)} {kind} -dc gives")
        except lamina.errors.CompressionError as e:
            outcome = str(e).split(" stream: ", 1)[-1].split(" (", 1)[0]
            if ref.returncode == 0:
                wrong.append(f"{name}: refused where {kind} -dc reads it: {e}")
            elif f"layer {layer_path}" not in str(e):
                wrong.append(f"{name}: the error does not name the layer: {e}")
        except Exception as e:  # noqa: BLE001 - the point is what kind of error it is
            wrong.append(f"{name}: {e!r}")
            continue
        if (outcome in outcomes or len(given) > 16 << 20) and not EVERY_STREAM:
            continue  # (pgzip's bigempty.gz inflates to 100 MB: ten paths write a gigabyte)
        outcomes.add(outcome)
        shipped = Shipped(layer, ref.stdout, OCI_LAYER_GZIP if kind == "gzip" else OCI_LAYER_ZSTD)
        results = run_paths(g.dest / f"paths-{i}", [shipped])
        tree = assert_agree(results, context=f"{source}:{name}")
        if outcome == "read":
            assert tree is not None and tree.paths() == ["f"], (name, results)
            assert tree["f"].sha256 == content_digest(given), (name, tree["f"])
        else:
            for path, error in results.items():
                assert isinstance(error, lamina.errors.CompressionError), (name, path, error)
    assert not wrong, "\n".join(wrong)
    g.check()
    return outcomes


def _zstd_frame_of_raw_blocks(content, declared, *, empty_last):
    """One zstd frame holding ``content`` in raw blocks (of 100,000 bytes), its header declaring
    ``declared`` bytes of content (8 bytes, a 1 MiB window, no checksum), ending in an empty
    last block or in the last block of content."""
    out = b"\x28\xb5\x2f\xfd" + bytes([0b11000000, 10 << 3]) + declared.to_bytes(8, "little")
    pieces = [content[i:i + 100_000] for i in range(0, len(content), 100_000)]
    for k, piece in enumerate(pieces):
        last = not empty_last and k == len(pieces) - 1
        out += (len(piece) << 3 | last).to_bytes(3, "little") + piece
    return out + ((1).to_bytes(3, "little") if empty_last else b"")


# the cousins of regression.zip's 2aa9ddad...: a frame declaring 12,592 bytes that gives 137,
# ending in an empty last block.  libzstd (1.5.4) checks a frame's size against its header when
# it reads the frame in one piece, and not when it reads it block by block and the last block is
# empty: `zstd -d`, bsdtar and GNU tar refuse such a frame that fits their first read, and read
# it when it does not; Go's decoder (containerd's) always refuses it (ErrFrameSizeMismatch), and
# so does lamina (it read the frame through: it reads the first bytes of a layer apart)
FRAME_SIZES = {  # name: (declared / actual, ends in an empty block, bytes of file data)
    "small-declares-more-ends-in-an-empty-block": (3, True, 500),
    "small-declares-less-ends-in-an-empty-block": (0.5, True, 500),
    "small-declares-its-size-ends-in-an-empty-block": (1, True, 500),
    "large-declares-more-ends-in-an-empty-block": (3, True, 256_000),
    "large-declares-more-ends-in-a-block-of-data": (3, False, 256_000),
    "large-declares-its-size-ends-in-an-empty-block": (1, True, 256_000),
}


@pytest.mark.parametrize("name", sorted(FRAME_SIZES))
def test_a_zstd_frame_is_refused_where_its_declared_size_is_not_what_it_gives(g, name):
    """A frame whose content is not the size its header declares is refused on every path,
    naming the layer, as Go's decoder refuses it; `zstd -dc`, bsdtar and GNU tar refuse it too
    but where libzstd reads it block by block to an empty last block (CONFORMANCE.md)."""
    require_tool("zstd")
    require_tool("bsdtar")
    import lamina.errors
    from tarbuild import Tar
    factor, empty_last, size = FRAME_SIZES[name]
    tar = Tar().file("f", (bytes(range(256)) * 1000)[:size]).file("g", b"hello").bytes()
    layer = _zstd_frame_of_raw_blocks(tar, int(len(tar) * factor), empty_last=empty_last)
    layer_path = write(g.dest / "layer.tar.zst", layer)
    refs = {argv[0]: subprocess.run([*argv, os.fspath(layer_path)], capture_output=True).returncode == 0
            for argv in (["zstd", "-dc"], ["bsdtar", "-tf"], ["tar", "--zstd", "-tf"])}
    ok = factor == 1
    quirk = not ok and empty_last and name.startswith("large")
    assert set(refs.values()) == {ok or quirk}, refs
    if ok:
        apply(layer_path, g.dest / "lamina")
        assert sorted(os.listdir(g.dest / "lamina")) == ["f", "g"]
    else:
        with pytest.raises(lamina.errors.CompressionError) as info:
            apply(layer_path, g.dest / "lamina")
        assert f"layer {layer_path}: corrupt zstd stream: " in str(info.value), info.value
        if factor > 1:
            assert f"declares {len(tar) * factor} bytes of content and gives {len(tar)}" in str(info.value) or (
                "Data corruption detected" in str(info.value)), info.value
    results = run_paths(g.dest / "paths", [Shipped(layer, tar, OCI_LAYER_ZSTD)])
    tree = assert_agree(results, context=name)
    if ok:
        assert tree.paths() == ["f", "g"], results
    else:
        for path, error in results.items():
            assert isinstance(error, lamina.errors.CompressionError) and "corrupt zstd stream" in str(error), (
                path, error)
    g.check()


# zstd's magic before 1.0 (0xFD2FB51E, then 0xFD2FB522 to 0xFD2FB527 for v0.2 to v0.7): `zstd -dc`
# reads v0.5 and later (Debian builds its legacy support), but no layer reader does: Go's decoder
# (containerd, docker, podman), GNU tar's and bsdtar's detection know the 1.0 magic only, and
# read such a layer as a tar that does not parse.  Named for what it is, as xz or lz4 are
LEGACY_ZSTD = {"0.1": b"\x1e", **{f"0.{v}": bytes([0x20 + v]) for v in range(2, 8)}}


@pytest.mark.parametrize("version", sorted(LEGACY_ZSTD))
def test_a_layer_in_a_pre_1_0_zstd_format_is_refused_naming_it(g, version):
    """file(1)'s zstd-v0.N test files (the first 10 bytes of a frame of each version), and a frame
    of v0.1 (which file has none of), each a whole layer: refused on every path with a
    CompressionError naming the layer and the format, under no media type or under zstd's (whose
    error said "the content is not compressed")."""
    import lamina.errors
    from ocibuild import OCI_LAYER
    base = corpora.require_corpus("file")
    found = sorted(n for n in os.listdir(base) if n.startswith(f"zstd-v{version}-"))
    layers = [corpora.streams(f"file/{n}")[0][1] for n in found] or [LEGACY_ZSTD[version] + b"\xb5\x2f\xfd" + bytes(6)]
    assert version == "0.1" or found, os.listdir(base)
    words = f"zstd v{version} (legacy format)-compressed, which a layer never is"
    for i, layer in enumerate(layers):
        assert layer[:4] == LEGACY_ZSTD[version] + b"\xb5\x2f\xfd", layer
        layer_path = write(g.dest / f"layer-{i}", layer + bytes(2048))  # past a first tar header
        with pytest.raises(lamina.errors.CompressionError) as info:
            apply(layer_path, g.dest / f"lamina-{i}")
        assert f"layer {layer_path}: {words}" in str(info.value), str(info.value)
        for media_type, said in ((OCI_LAYER, words), (OCI_LAYER_ZSTD, f"announces zstd but the content is "
                                                                       f"zstd v{version} (legacy format)-compressed")):
            results = run_paths(g.dest / f"paths-{i}-{media_type[-4:]}", [Shipped(layer, layer, media_type)])
            for path, got in results.items():
                assert isinstance(got, lamina.errors.CompressionError) and said in str(got), (path, got)
    g.check()
