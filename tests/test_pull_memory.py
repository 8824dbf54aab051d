"""Peak memory of ``lamina pull`` and ``lamina unpack docker://``: at most 64 MiB (issue 13).

Peak RSS is deterministic enough to assert, unlike time: it is the interpreter and its imports
plus, per layer in flight, the inflate stage's buffers, plus what the allocator keeps.  The
image has three gzip layers big enough that all three download and extract at once (the
default concurrency), with enough files that the dedup pass's lists count.

The peak is the CLI process's VmHWM, read at its exit (it starts afresh at exec, unlike the
ru_maxrss of a child of this big pytest process).
"""
import subprocess
import sys

import pytest

import ocibuild
from registryfixture import fast_random, reg, registry_env, skopeo_push  # noqa: F401
from verbkit import peak_rss_kib

MiB = 1 << 20
LIMIT_KIB = 64 * 1024


@pytest.fixture(scope="module")
def big_image(reg, tmp_path_factory):  # noqa: F811
    """mem:1 = three gzip layers, 44 MiB of incompressible files in all, 3,000 small files."""
    lay = ocibuild.Layout(tmp_path_factory.mktemp("lay") / "oci")
    base = {"usr/": None, "usr/lib/": None, "usr/lib/big.so": fast_random(16 * MiB, 1)}
    base.update({f"usr/lib/m{i:04}.py": f"# module {i}\n".encode() * (1 + i % 40) for i in range(2000)})
    app = {"opt/": None, "opt/app.bin": fast_random(20 * MiB, 2)}
    app.update({f"opt/d{i:04}": fast_random(1024 + i, 100 + i) for i in range(1000)})
    top = {"srv/": None, "srv/data.bin": fast_random(8 * MiB, 3)}
    m = lay.image([base, app, top])
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "mem:1", extra=("--preserve-digests",))
    return f"{reg.host}/mem:1"


def test_pull_peak_rss_stays_under_64_mib(big_image, registry_env, tmp_path):  # noqa: F811
    root = tmp_path / "store"
    peak = peak_rss_kib(["--root", str(root), "pull", "-q", big_image], tmp_path)
    # It really pulled: three snapshots, the 20 MiB file among them.
    assert len(list((root / "snapshots").glob("*/fs"))) == 3
    assert any(p.stat().st_size == 20 * MiB for p in (root / "snapshots").glob("*/fs/opt/app.bin"))
    assert peak < LIMIT_KIB, f"lamina pull: peak RSS {peak} KiB"


def test_unpack_from_the_registry_peak_rss_stays_under_64_mib(big_image, registry_env, tmp_path):  # noqa: F811
    dest = tmp_path / "rootfs"
    peak = peak_rss_kib(["unpack", f"docker://{big_image}", str(dest)], tmp_path)
    assert (dest / "opt/app.bin").stat().st_size == 20 * MiB
    assert len(list((dest / "usr/lib").iterdir())) == 2001
    assert peak < LIMIT_KIB, f"lamina unpack docker://: peak RSS {peak} KiB"


def test_pull_then_unpack_peak_rss_stays_under_64_mib(big_image, registry_env, tmp_path):  # noqa: F811
    root = tmp_path / "store"
    subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), "pull", "-q", big_image], check=True,
                   capture_output=True, timeout=600, cwd=tmp_path)
    dest = tmp_path / "rootfs"
    peak = peak_rss_kib(["--root", str(root), "unpack", big_image, str(dest)], tmp_path)
    assert (dest / "srv/data.bin").stat().st_size == 8 * MiB
    assert peak < LIMIT_KIB, f"lamina unpack REF: peak RSS {peak} KiB"


def test_a_blob_arrives_in_the_readers_buffer_without_a_new_object_per_chunk(big_image, registry_env):  # noqa: F811
    """The stream of a layer blob is read into the pipeline's ring straight from the socket;
    urllib3's read1 made a new bytes object per chunk (up to 128 KiB, each copied once more),
    per layer in flight.  The Python allocations while the whole blob arrives stay small."""
    import hashlib
    import tracemalloc

    from lamina.reference import Reference
    from lamina.registry import RegistryClient
    from lamina.registry.blobstream import BlobStream

    client = RegistryClient()
    repo = client.repositories(Reference.parse(big_image), ("pull",))[0]
    desc = repo.get_manifest("1").document["layers"][1]
    buf, sha = bytearray(MiB), hashlib.sha256()
    stream = BlobStream([repo], desc["digest"], desc["size"])
    try:
        n = stream.readinto(buf)   # the request and its response's headers: not the steady state
        sha.update(memoryview(buf)[:n])
        tracemalloc.start()
        try:
            while n := stream.readinto(buf):
                sha.update(memoryview(buf)[:n])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        stream.close()
        client.close()
    assert "sha256:" + sha.hexdigest() == desc["digest"] and desc["size"] > 16 * MiB
    assert peak < 32 << 10, f"{peak} bytes allocated at once while reading the blob"
