"""The path resolver a test claims is the one that runs.

An LD_PRELOAD shim counts the extractor's openat2 syscalls (lamina_sys.h calls syscall(SYS_openat2)),
so "openat2" means openat2 resolved the entries and "o_nofollow-walk" means it was never called.
Under qemu-user, which answers openat2 with ENOSYS, conftest.resolvers() offers only the walk.
"""
import os
import subprocess
import sys

import pytest

from conftest import EMULATION, build_preload_shim, openat2_usable, resolvers, use_resolver
from tarbuild import Tar

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static long calls, successes;

long syscall(long number, ...)
{
    static long (*real)(long, ...);
    long a[6];
    va_list ap;
    if (!real)
        real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    va_start(ap, number);
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    long rc = real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
    if (number == 437) {   /* SYS_openat2, the same on every architecture */
        int saved = errno;
        __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
        if (rc >= 0)
            __atomic_add_fetch(&successes, 1, __ATOMIC_RELAXED);
        errno = saved;
    }
    return rc;
}

__attribute__((destructor)) static void report(void)
{
    const char *path = getenv("LAMINA_OPENAT2_COUNT");
    FILE *f = path ? fopen(path, "w") : NULL;
    if (f) {
        fprintf(f, "%ld %ld\n", calls, successes);
        fclose(f);
    }
}
"""

DIRS = ["a/", "a/b/", "a/b/c/", "a/b/c/d/", "e/"]


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    return build_preload_shim(tmp_path_factory, "count", SHIM)


@pytest.fixture
def layer(tmp_path):
    t = Tar()
    for name in DIRS:
        t.dir(name)
    # each file's parent neither the last one nor one level below it: the extractor
    # resolves it from the root (a child of the cached parent is one openat())
    for name in ("a/b/c/d/", "e/", "a/b/", "a/", "a/b/c/"):
        t.file(name + "f", b"x")
    path = tmp_path / "layer.tar"
    path.write_bytes(t.bytes())
    return path


def apply_counting(shim, layer, dest, env_extra=None):
    """Apply the layer in a child with the shim loaded: (openat2 calls, successful ones)."""
    count = dest.parent / "count"
    env = dict(os.environ, LD_PRELOAD=str(shim), LAMINA_OPENAT2_COUNT=str(count), **(env_extra or {}))
    code = "import lamina, sys; lamina.apply_layer(sys.argv[1], sys.argv[2])"
    subprocess.run([sys.executable, "-c", code, str(layer), str(dest)], env=env, check=True)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("f")) == sorted(n + "f" for n in DIRS)
    calls, ok = map(int, count.read_text().split())
    return calls, ok


@pytest.mark.parametrize("name", resolvers())
def test_claimed_resolver_runs(name, shim, layer, tmp_path, monkeypatch):
    use_resolver(name, monkeypatch)
    calls, ok = apply_counting(shim, layer, tmp_path / "dest")
    if name == "openat2":
        assert ok >= len(DIRS), f"openat2 claimed but only {ok} of {calls} openat2 calls succeeded"
    else:
        assert calls == 0, f"the O_NOFOLLOW walk was claimed but openat2 was called {calls} times"


def test_default_resolver_is_what_the_machine_offers(shim, layer, tmp_path, monkeypatch):
    monkeypatch.delenv("LAMINA_NO_OPENAT2", raising=False)
    calls, ok = apply_counting(shim, layer, tmp_path / "dest")
    assert (ok > 0) == openat2_usable()
    if EMULATION and not openat2_usable():
        # qemu-user 7.2: the extractor's probe meets ENOSYS once and never retries.
        assert ok == 0 and calls <= 1
    assert ("openat2" in resolvers()) == (openat2_usable() or not EMULATION)
