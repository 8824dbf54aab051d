"""Shared test plumbing.

A test that needs an external tool (umoci, skopeo, GNU tar, ...) skips on a
developer box without it but FAILS in CI (CI=true), where .ci/run installs
every tool: a skip must never hide missing work.
"""
import os
import shutil
import subprocess
from collections import namedtuple

import pytest

IN_CI = os.environ.get("CI") == "true"


def require_tool(name):
    path = shutil.which(name)
    if path is None:
        msg = f"required tool {name!r} is not installed"
        if IN_CI:
            pytest.fail(msg + " (CI must install it)")
        pytest.skip(msg)
    return path


def require_root():
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("this test needs root and CI runs as root")
        pytest.skip("needs root")


@pytest.fixture
def g(tmp_path):
    """As root: a layerkit.Guard over tmp_path, checked after the test (nothing outside its
    ``dest`` changed)."""
    require_root()
    from layerkit import Guard
    guard = Guard(tmp_path)
    yield guard
    guard.check()


@pytest.fixture
def small_fs(g):
    """A 256 MiB tmpfs in the guarded dest, for the work: a path that writes a sparse file's
    holes out fails on it (ENOSPC) instead of filling the machine; and, unlike ext4, it keeps
    as many xattrs on an inode as anyone sets."""
    work = g.dest / "small-fs"
    os.makedirs(work, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", os.fspath(work)], check=True)
    try:
        yield work
    finally:
        subprocess.run(["umount", "-l", os.fspath(work)], check=True)


# /proc/cpuinfo's names for the features of each x86-64 level (the psABI's, as go-archvariant
# reads them by CPUID for docker): SSE3 is "pni", LZCNT "abm"
BASELINE = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 syscall lm"
X86_LEVEL_FLAGS = {
    "v1": BASELINE,
    "v2": BASELINE + " pni ssse3 cx16 sse4_1 sse4_2 popcnt lahf_lm",
    "v3": BASELINE + " pni ssse3 cx16 sse4_1 sse4_2 popcnt lahf_lm avx avx2 bmi1 bmi2 f16c fma abm movbe xsave",
}
X86_LEVEL_FLAGS["v4"] = X86_LEVEL_FLAGS["v3"] + " avx512f avx512bw avx512cd avx512dq avx512vl avx512_vnni"


@pytest.fixture
def x86_cpu(monkeypatch, tmp_path):
    """Make this an x86_64 machine whose /proc/cpuinfo lists ``flags`` (None: no cpuinfo)."""
    from lamina import platform as platform_module
    Uname = namedtuple("Uname", "sysname nodename release version machine")
    monkeypatch.setattr(os, "uname", lambda: Uname("Linux", "h", "6", "#1", "x86_64"))

    def cpu(flags):
        path = tmp_path / "cpuinfo"
        if flags is None:
            path.unlink(missing_ok=True)
        else:   # two processors, as the kernel lists each
            path.write_text("".join(f"processor\t: {n}\nvendor_id\t: AuthenticAMD\nflags\t\t: {flags}\n\n"
                                    for n in range(2)))
        monkeypatch.setattr(platform_module, "CPUINFO", str(path))
        platform_module.amd64_level.cache_clear()
    yield cpu
    platform_module.amd64_level.cache_clear()


def run(*cmd, **kw):
    """Run a command, failing the test with its stderr when it fails."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    proc = subprocess.run([str(c) for c in cmd], **kw)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def build_preload_shim(tmp_path_factory, name, source):
    """Compile the C ``source`` into ``NAME.so`` for LD_PRELOAD (gcc, which CI installs)."""
    gcc = require_tool("gcc")
    d = tmp_path_factory.mktemp(name)
    (d / f"{name}.c").write_text(source)
    run(gcc, "-shared", "-fPIC", "-O2", "-o", d / f"{name}.so", d / f"{name}.c", "-ldl")
    return d / f"{name}.so"


@pytest.fixture(scope="session", autouse=True)
def _shared_registry_stopped():
    """everypath's registry paths start one docker-registry on first use: stop it at the end."""
    yield
    import sys
    everypath = sys.modules.get("everypath")
    if everypath is not None:
        everypath.stop_shared_registry()


@pytest.fixture(scope="session")
def umoci_image(tmp_path_factory):
    """An OCI layout built with umoci: tags t1..t4, one more layer per tag (see umoci_images.py)."""
    require_root()
    from umoci_images import build_umoci_image
    return build_umoci_image(str(tmp_path_factory.mktemp("umoci-image")))


@pytest.fixture(scope="session")
def umoci_replace_image(tmp_path_factory):
    """A small umoci image whose layers replace a dir by a file and back (tags t1..t3)."""
    require_root()
    from umoci_images import REPLACE_STEPS, build_umoci_image
    return build_umoci_image(str(tmp_path_factory.mktemp("umoci-replace")), REPLACE_STEPS)


@pytest.fixture(scope="session")
def skopeo_archives(tmp_path_factory):
    """The sample image as skopeo writes it: (docker-archive, the same gzipped, oci-archive)."""
    import gzip
    require_tool("skopeo")
    sample = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sample", "image")
    out = tmp_path_factory.mktemp("archives")
    plain = out / "sample.tar"
    run("skopeo", "copy", "-q", f"oci:{sample}:latest", f"docker-archive:{plain}:lamina/sample:v1")
    gz_path = out / "sample.tar.gz"
    gz_path.write_bytes(gzip.compress(plain.read_bytes()))
    oci_archive = out / "sample-oci.tar"
    run("skopeo", "copy", "-q", f"oci:{sample}:latest", f"oci-archive:{oci_archive}:latest")
    return plain, gz_path, oci_archive


# --- which kernel paths this machine really offers -----------------------------------------------
# Under qemu-user (ci/arm64-chroot.sh sets LAMINA_TEST_EMULATION=qemu-user) openat2 and fsopen answer
# ENOSYS, so lamina runs its fallbacks there.  Tests that claim a path use these helpers, so a
# claim the machine cannot honour fails instead of quietly testing the fallback twice.

EMULATION = os.environ.get("LAMINA_TEST_EMULATION", "")


def openat2_usable():
    """True if openat2(RESOLVE_IN_ROOT) works here (the extractor's own probe)."""
    from lamina import _extract
    return bool(_extract.openat2_available())


def resolvers():
    """The path resolvers the hostile-layer tests run: both natively; under emulation without
    openat2 passthrough only the O_NOFOLLOW walk (explicitly, and the session summary says so)."""
    if EMULATION and not openat2_usable():
        return ["o_nofollow-walk"]
    return ["openat2", "o_nofollow-walk"]


def use_resolver(name, monkeypatch):
    """Make the extractor use resolver ``name``; fail if that is "openat2" and openat2 does not work."""
    if name == "openat2":
        if not openat2_usable():
            pytest.fail("this test claims the openat2 resolver but openat2(RESOLVE_IN_ROOT) is unavailable"
                        " here (ENOSYS/EPERM): it would only test the fallback walk")
        monkeypatch.delenv("LAMINA_NO_OPENAT2", raising=False)
    elif name == "o_nofollow-walk":
        monkeypatch.setenv("LAMINA_NO_OPENAT2", "1")
    else:
        raise ValueError(name)
    return name


def fsopen_usable():
    """True if the new mount API (fsopen) exists here; False means mount(2) is lamina's only path."""
    import ctypes
    import errno
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(430, b"overlay", 1)   # SYS_fsopen (unified table: every architecture), FSOPEN_CLOEXEC
    if fd >= 0:
        os.close(fd)
        return True
    return ctypes.get_errno() not in (errno.ENOSYS, errno.EPERM)


def pytest_report_header(config):
    if EMULATION:
        return (f"emulation: {EMULATION}; openat2 {'works' if openat2_usable() else 'is ENOSYS'} "
                f"(resolvers tested: {', '.join(resolvers())}); fsopen "
                f"{'works' if fsopen_usable() else 'is ENOSYS (mount(2) fallback)'}")
    return None


def _claims_openat2(item):
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("resolver") == "openat2"


def pytest_collection_modifyitems(config, items):
    # Under emulation without openat2, the "openat2" variants of resolver-parametrized tests
    # (test_security.py) would silently run the walk a second time: deselect them, and say so.
    if not EMULATION or openat2_usable():
        return
    dropped = [item for item in items if _claims_openat2(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not _claims_openat2(item)]
        config._lamina_resolver_note = (f"{len(dropped)} openat2 variants deselected: {EMULATION} has no openat2;"
                                        " the o_nofollow walk ran instead")


def pytest_runtest_setup(item):
    # Natively, a test that claims openat2 on a machine without it fails (see use_resolver).
    if _claims_openat2(item) and not openat2_usable():
        pytest.fail("this test claims the openat2 resolver but openat2(RESOLVE_IN_ROOT) is unavailable here")


def pytest_terminal_summary(terminalreporter, config):
    note = getattr(config, "_lamina_resolver_note", None)
    if note:
        terminalreporter.write_line(f"resolvers: {note}")
