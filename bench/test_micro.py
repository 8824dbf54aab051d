"""pytest-benchmark micro benches for lamina's parser and layer pipeline.

Run:  pytest bench/test_micro.py --benchmark-only
      pytest bench/test_micro.py --benchmark-only --benchmark-group-by=group --benchmark-columns=min,median,ops

Not part of the normal suite: pyproject's testpaths is tests/, so `pytest` and
`pytest tests/` never collect this file.

Inputs are generated in memory (no network, no corpus needed):
  * "small": a tar of 2000 small files (plus their dirs, symlinks, a hardlink
    and some >100-char names that need PAX records), plain / gzip / zstd;
  * "big": a tar holding one 64 MiB file, plain / gzip.
Destinations are fresh directories on tmpfs (/dev/shm) for every round, made
and removed outside the timing.  Every lamina bench checks its result, so a
bench cannot pass on an extractor that silently does nothing.
Python's tarfile extracting the same bytes is included as a baseline (same
group), so `--benchmark-group-by=group` shows the ratio directly.
"""
from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
import tempfile

import pytest

pytest.importorskip("pytest_benchmark")

try:
    import lamina
    from lamina import _extract
    LAMINA_ERR = None
except Exception as e:  # noqa: BLE001 - report why, run the baselines anyway
    lamina = _extract = None
    LAMINA_ERR = f"lamina is not importable: {type(e).__name__}: {e}"

needs_lamina = pytest.mark.skipif(lamina is None, reason=LAMINA_ERR or "")

SMALL_FILES = 2000
BIG_SIZE = 64 << 20
ROUNDS_SMALL = 15
ROUNDS_BIG = 8


# --------------------------------------------------------------------------
# inputs


def _add(tf, name, data=b"", **kw):
    ti = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(ti, k, v)
    if ti.type == tarfile.REGTYPE:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def make_small_tar(n=SMALL_FILES) -> bytes:
    """n small files (0.1-8 KiB) in 40 dirs, like a python/perl library tree."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "usr/", type=tarfile.DIRTYPE, mode=0o755, mtime=1700000000)
        _add(tf, "usr/lib/", type=tarfile.DIRTYPE, mode=0o755, mtime=1700000000)
        for d in range(40):
            _add(tf, f"usr/lib/pkg{d:02d}/", type=tarfile.DIRTYPE, mode=0o755, mtime=1700000000)
        for i in range(n):
            d = i % 40
            size = 100 + (i * 7919) % 8000
            body = (f"# file {i}\n".encode() + b"x = 1\n" * (size // 6))[:size]
            name = f"usr/lib/pkg{d:02d}/module_{i:05d}.py"
            if i % 100 == 0:  # long names -> PAX path records
                name = f"usr/lib/pkg{d:02d}/" + "long_directory_name_" * 5 + f"/module_{i:05d}.py"
                _add(tf, os.path.dirname(name) + "/", type=tarfile.DIRTYPE, mode=0o755, mtime=1700000000)
            _add(tf, name, body, mode=0o644, mtime=1700000000 + i, uid=0, gid=0)
        for i in range(0, n, 50):
            _add(tf, f"usr/lib/link_{i:05d}.py", type=tarfile.SYMTYPE,
                 linkname=f"pkg{i % 40:02d}/module_{i:05d}.py", mode=0o777, mtime=1700000000)
        _add(tf, "usr/lib/hardlink.py", type=tarfile.LNKTYPE, linkname="usr/lib/pkg01/module_00001.py",
             mode=0o644, mtime=1700000000)
    return buf.getvalue()


def make_big_tar(size=BIG_SIZE) -> bytes:
    """One big file; content compresses ~3x like binaries do."""
    block = os.urandom(1 << 16) + bytes(2 << 16)
    data = (block * (size // len(block) + 1))[:size]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "opt/", type=tarfile.DIRTYPE, mode=0o755, mtime=1700000000)
        _add(tf, "opt/big.bin", data, mode=0o644, mtime=1700000000)
    return buf.getvalue()


def _zstd(data: bytes) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    return zstandard.ZstdCompressor(level=3).compress(data)


@pytest.fixture(scope="module")
def small_tar():
    return make_small_tar()


@pytest.fixture(scope="module")
def big_tar():
    return make_big_tar()


@pytest.fixture(scope="module")
def scratch():
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix="lamina-micro-", dir=base)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Dests:
    """A fresh empty destination per round; the previous one is removed (untimed)."""

    def __init__(self, scratch):
        self.scratch, self.n, self.last = scratch, 0, None

    def fresh(self):
        if self.last:
            shutil.rmtree(self.last, ignore_errors=True)
        self.n += 1
        self.last = tempfile.mkdtemp(prefix=f"d{self.n}-", dir=self.scratch)
        return self.last


def run_apply(benchmark, blob: bytes, scratch, rounds, **kw):
    dests = Dests(scratch)
    seen = {}

    def setup():
        return (io.BytesIO(blob), dests.fresh()), kw

    def target(f, dest, **kw):
        seen["dest"] = dest
        seen["stats"] = lamina.apply_layer(f, dest, **kw)

    benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=1, iterations=1)
    return seen


def run_tarfile(benchmark, blob: bytes, scratch, rounds, mode):
    dests = Dests(scratch)
    kw = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}

    def setup():
        return (io.BytesIO(blob), dests.fresh()), {}

    def target(f, dest):
        with tarfile.open(fileobj=f, mode=mode) as tf:
            tf.extractall(dest, numeric_owner=True, **kw)

    benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=1, iterations=1)


def _check_small(seen, n=SMALL_FILES):
    st = seen["stats"]
    assert st.entries >= n, st
    got = os.path.join(seen["dest"], "usr/lib/pkg01/module_00001.py")
    with open(got, "rb") as f:
        assert f.read().startswith(b"# file 1\n")
    assert os.path.islink(os.path.join(seen["dest"], "usr/lib/link_00000.py"))
    assert os.stat(got).st_nlink == 2


# --------------------------------------------------------------------------
# the parser


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n += 1
    return str(n).encode() + body


PAX_BLOCK = b"".join([
    _pax_record(b"mtime", b"1700000000.123456789"),
    _pax_record(b"path", b"usr/lib/python3/dist-packages/some_long_package_name/with/a/deep/tree/module_0001.py"),
    _pax_record(b"SCHILY.xattr.security.capability", b"\x01\x00\x00\x02 \x00\x00\x00"),
    _pax_record(b"uid", b"1000000000"),
])


@needs_lamina
@pytest.mark.benchmark(group="parser: pax records")
def test_parse_pax(benchmark):
    if not hasattr(_extract, "parse_pax"):
        pytest.skip("lamina._extract.parse_pax is gone")
    out = benchmark(_extract.parse_pax, PAX_BLOCK, "bench")
    assert out[b"uid"] == b"1000000000"


def _headers_only_tar(n=5000):
    """Headers and nothing else: n empty files, so feed() cost is the parser + one create per entry."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _add(tf, "e/", type=tarfile.DIRTYPE, mode=0o755)
        for i in range(n):
            _add(tf, f"e/f{i:05d}", b"", mode=0o644, mtime=1700000000)
    return buf.getvalue()


@needs_lamina
@pytest.mark.benchmark(group="parser: Extractor.feed 5000 empty files")
def test_extractor_feed_headers(benchmark, scratch):
    data = _headers_only_tar()
    dests = Dests(scratch)
    counts = {}

    def setup():
        return (dests.fresh(),), {}

    def target(dest):
        ex = _extract.Extractor(dest, format="dir", limits=lamina.DEFAULT_LIMITS)
        try:
            view = memoryview(data)
            for off in range(0, len(data), 1 << 20):
                ex.feed(view[off:off + (1 << 20)])
            counts.update(ex.finish())
        finally:
            ex.close()

    benchmark.pedantic(target, setup=setup, rounds=ROUNDS_SMALL, warmup_rounds=1, iterations=1)
    assert counts["entries"] >= 5001
    assert len(os.listdir(os.path.join(dests.last, "e"))) == 5000


# --------------------------------------------------------------------------
# the pipeline: apply_layer on 2000 small files


@needs_lamina
@pytest.mark.benchmark(group="apply 2000 small files, plain tar")
def test_apply_small_plain(benchmark, small_tar, scratch):
    _check_small(run_apply(benchmark, small_tar, scratch, ROUNDS_SMALL))


@needs_lamina
@pytest.mark.benchmark(group="apply 2000 small files, gzip")
def test_apply_small_gzip(benchmark, small_tar, scratch):
    blob = gzip.compress(small_tar, 6)
    _check_small(run_apply(benchmark, blob, scratch, ROUNDS_SMALL))


@needs_lamina
@pytest.mark.benchmark(group="apply 2000 small files, zstd")
def test_apply_small_zstd(benchmark, small_tar, scratch):
    _check_small(run_apply(benchmark, _zstd(small_tar), scratch, ROUNDS_SMALL))


@needs_lamina
@pytest.mark.benchmark(group="apply 2000 small files, overlay format, gzip")
def test_apply_small_gzip_overlay(benchmark, small_tar, scratch):
    blob = gzip.compress(small_tar, 6)
    _check_small(run_apply(benchmark, blob, scratch, ROUNDS_SMALL, format="overlay"))


@pytest.mark.benchmark(group="apply 2000 small files, plain tar")
def test_tarfile_small_plain(benchmark, small_tar, scratch):
    run_tarfile(benchmark, small_tar, scratch, ROUNDS_SMALL, "r|")


@pytest.mark.benchmark(group="apply 2000 small files, gzip")
def test_tarfile_small_gzip(benchmark, small_tar, scratch):
    igzip = pytest.importorskip("isal.igzip")
    blob = gzip.compress(small_tar, 6)
    dests = Dests(scratch)
    kw = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}

    def setup():
        return (io.BytesIO(blob), dests.fresh()), {}

    def target(f, dest):
        with igzip.IGzipFile(fileobj=f, mode="rb") as g, tarfile.open(fileobj=g, mode="r|") as tf:
            tf.extractall(dest, numeric_owner=True, **kw)

    benchmark.pedantic(target, setup=setup, rounds=ROUNDS_SMALL, warmup_rounds=1, iterations=1)


# --------------------------------------------------------------------------
# the pipeline: one big file (throughput of inflate + hash + write)


def _check_big(seen, big_tar):
    st = seen["stats"]
    assert st.bytes == len(big_tar)
    assert os.path.getsize(os.path.join(seen["dest"], "opt/big.bin")) == BIG_SIZE


@needs_lamina
@pytest.mark.benchmark(group="apply one 64 MiB file, plain tar")
def test_apply_big_plain(benchmark, big_tar, scratch):
    _check_big(run_apply(benchmark, big_tar, scratch, ROUNDS_BIG), big_tar)


@needs_lamina
@pytest.mark.benchmark(group="apply one 64 MiB file, gzip")
def test_apply_big_gzip(benchmark, big_tar, scratch):
    blob = gzip.compress(big_tar, 6)
    _check_big(run_apply(benchmark, blob, scratch, ROUNDS_BIG), big_tar)


@needs_lamina
@pytest.mark.benchmark(group="apply one 64 MiB file, plain tar + diff_id check")
def test_apply_big_plain_verified(benchmark, big_tar, scratch):
    import hashlib
    diff_id = "sha256:" + hashlib.sha256(big_tar).hexdigest()
    _check_big(run_apply(benchmark, big_tar, scratch, ROUNDS_BIG, diff_id=diff_id), big_tar)


@pytest.mark.benchmark(group="apply one 64 MiB file, plain tar")
def test_tarfile_big_plain(benchmark, big_tar, scratch):
    run_tarfile(benchmark, big_tar, scratch, ROUNDS_BIG, "r|")
