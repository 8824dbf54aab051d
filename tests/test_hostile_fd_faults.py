"""The tree engine's descriptors when a syscall fails half-way through a walk.

An LD_PRELOAD shim (as in test_resolver.py) makes the K-th ``openat(fd, "..")`` or ``dup(fd)``
of the process fail with EMFILE, for each K a clean run makes, and counts every close(2) that
found no open descriptor (EBADF).  Each run must give the clean run's tree or a refusal.  One that did closed a number twice: between the two closes another thread
(a pull extracts layers side by side, with the reader and hash threads beside them) may have
got that number for a file or a directory of its own, which the second close takes from it,
and its next write or ``*at()`` call then goes to whatever gets the number after that.
"""
import os
import subprocess
import sys

import pytest

import everypath
from conftest import build_preload_shim
from tarbuild import Tar
from treecmp import compare, snapshot

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long dotdots, dups, openats, badf;
static int armed;

/* called once the child has imported what it needs: Python's own opens are not counted */
void lamina_shim_arm(void)
{
    armed = 1;
}

/* LAMINA_SHIM_FAIL="KIND:K": the K-th call of KIND ("dotdot": openat(fd, ".."); "dup";
   "openat": any) fails */
static int fail_nth(const char *kind, long *count)
{
    const char *s = getenv("LAMINA_SHIM_FAIL");
    if (!armed)
        return 0;
    long n = __atomic_add_fetch(count, 1, __ATOMIC_RELAXED);
    size_t k = strlen(kind);
    return s && strncmp(s, kind, k) == 0 && s[k] == ':' && atol(s + k + 1) == n;
}

static int fail_this(const char *path)
{
    return path && strcmp(path, "..") == 0 && fail_nth("dotdot", &dotdots);
}

int dup(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "dup");
    if (fail_nth("dup", &dups)) {
        errno = EMFILE;
        return -1;
    }
    return real(fd);
}

#define OPENAT(name) \
int name(int dirfd, const char *path, int flags, ...) \
{ \
    static int (*real)(int, const char *, int, ...); \
    mode_t mode = 0; \
    if (flags & (O_CREAT | __O_TMPFILE)) { \
        va_list ap; \
        va_start(ap, flags); \
        mode = va_arg(ap, mode_t); \
        va_end(ap); \
    } \
    if (!real) \
        real = (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, #name); \
    if (fail_this(path) || fail_nth("openat", &openats)) { \
        errno = EMFILE; \
        return -1; \
    } \
    return real(dirfd, path, flags, mode); \
}
OPENAT(openat)
OPENAT(openat64)

int close(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "close");
    int rc = real(fd);
    if (rc < 0 && errno == EBADF)
        __atomic_add_fetch(&badf, 1, __ATOMIC_RELAXED);
    return rc;
}

__attribute__((destructor)) static void report(void)
{
    const char *path = getenv("LAMINA_SHIM_REPORT");
    FILE *f = path ? fopen(path, "w") : NULL;
    if (f) {
        fprintf(f, "%ld %ld %ld %ld\n", dotdots, dups, openats, badf);
        fclose(f);
    }
}
"""

UNPACK = """
import ctypes
import sys
import lamina
import lamina.unpacker
ctypes.CDLL(None).lamina_shim_arm()
try:
    lamina.unpack("oci:" + sys.argv[1] + ":img", sys.argv[2], format=sys.argv[3])
    print("ok")
except (lamina.errors.LaminaError, OSError) as e:
    print("refused:", e)
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    return build_preload_shim(tmp_path_factory, "fdshim", SHIM)


def _unpack(shim, layout, dest, fmt, fail=""):
    """(the child's last line, {"dotdot": its openat(fd, "..") calls, "dup": its dups}, closes
    of no descriptor) of an unpack whose ``fail`` ("dotdot:K", "dup:K") call fails."""
    report = f"{dest}.report"
    env = dict(os.environ, LD_PRELOAD=str(shim), LAMINA_SHIM_FAIL=fail, LAMINA_SHIM_REPORT=report)
    r = subprocess.run([sys.executable, "-c", UNPACK, layout, dest, fmt], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    with open(report) as f:
        dotdots, dups, openats, badf = map(int, f.read().split())
    return r.stdout.strip().splitlines()[-1], {"dotdot": dotdots, "dup": dups, "openat": openats}, badf


def _tree(dest, fmt):
    # (the overlay format's mount-options name DEST's own path)
    return snapshot(os.path.join(dest, "layers") if fmt == "overlay" else dest)


def _each_call_failing(shim, layout, tmp_path, kind, least):
    for fmt in ("overlay", "dir"):
        last, calls, badf = _unpack(shim, layout, tmp_path / f"{fmt}-clean", fmt)
        assert last == "ok" and badf == 0, (fmt, last, badf)
        if fmt == "overlay":
            assert calls[kind] >= least, f"{calls[kind]} {kind} calls: this test no longer tests the walk"
        _each_failing_in_turn(shim, layout, tmp_path, fmt, kind, calls[kind], _tree(tmp_path / f"{fmt}-clean", fmt))


def _each_failing_in_turn(shim, layout, tmp_path, fmt, kind, n, clean):
    """Each of the ``n`` ``kind`` calls failing in turn: a refusal naming the error (and DEST, not
    the staging dir's /proc/self/fd/N the layers are written through), or the ``clean`` tree."""
    for k in range(1, n + 1):
        dest = tmp_path / f"{fmt}-{kind}-{k}"
        last, _, badf = _unpack(shim, layout, dest, fmt, f"{kind}:{k}")
        assert badf == 0, f"{fmt}, {kind} #{k} failing: {badf} close(2) of no descriptor ({last})"
        if last == "ok":   # a call lamina could do without: the same tree
            diff = compare(clean, _tree(dest, fmt), labels=("clean", f"{kind} #{k} failed"))
            assert not diff, f"{fmt}, {kind} #{k} failing gave another tree:\n{diff}"
        else:
            assert last.startswith("refused:") and "Too many open files" in last, (fmt, k, last)
            assert "/proc/self/fd" not in last, (fmt, k, last)


def test_a_walk_up_that_fails_closes_each_descriptor_once(shim, tmp_path):
    """``s -> d/..`` below, then ``d/`` and ``s/e/f``: the overlay format's walk of ``s/e/f``
    goes down into ``d`` of both layers and back up by ``openat(fd, "..")``.  On 1b031d2 that
    open failing (EMFILE, ENOMEM) closed the directory it started from, then closed it again
    on the way out: the layer's fd (the 2nd '..') and the layer below's (the 3rd).  On 9283a86
    the first one failing was refused as "cannot remove s in /proc/self/fd/4/layers/1" (the
    overlay unpack's second try of a layer, emptying it first), a path nobody knows, where
    DEST/layers/1 is meant; the 19th openat of the test below likewise."""
    below = Tar().dir("d").dir("e").symlink("s", "d/..").bytes()
    above = Tar().dir("d").file("s/e/f", b"through d/..\n").bytes()
    _each_call_failing(shim, everypath.write_image(tmp_path / "layout", [below, above]), tmp_path, "dotdot", 3)


def test_a_dup_that_fails_never_hides_a_layer_below(shim, tmp_path):
    """The walk through the layers takes a new fd of each layer's root by dup(2), and read -1
    as "this layer shows nothing here".  On 1b031d2 a dup that failed (EMFILE) hid the layer
    below: ``s/e/f`` through a symlink ``s`` below made a directory ``s`` in the upper layer
    (overlayfs then shows a directory where the image has a symlink), and ``l/g`` likewise;
    exit 0.  A directory of a layer below that failed to open (EMFILE, EIO) was taken for a
    file there, hiding the layers under it alike."""
    below = Tar().dir("d").dir("e").symlink("s", "d/..").file("e/old", b"old\n").symlink("l", "e").bytes()
    above = Tar().dir("d").file("s/e/f", b"through d/..\n").file("l/g", b"through l\n").whiteout("e/old").bytes()
    _each_call_failing(shim, everypath.write_image(tmp_path / "layout", [below, above]), tmp_path, "dup", 5)


def test_an_open_that_fails_anywhere_is_a_refusal_or_the_same_tree(shim, tmp_path):
    """Every openat(2) of the unpack failing in turn (EMFILE).  On 1b031d2, with the two fixes
    above, two still gave another tree and exit 0: a directory of the layer below that failed
    to open in the GIL-free whiteout walk was taken for a file there, and the whiteout of
    ``e/old``, a name only that layer shows, was left out (the mount showed ``e/old`` again);
    and a directory the fix-up pass failed to open kept the mode it was made with (0700)."""
    below = Tar().dir("d").dir("e").symlink("s", "d/..").file("e/old", b"old\n").symlink("l", "e") \
        .file("h", b"linked\n").bytes()
    above = Tar().dir("d").file("s/e/f", b"through d/..\n").file("l/g", b"through l\n").whiteout("e/old") \
        .hardlink("e/h2", "h").opaque("d").bytes()
    _each_call_failing(shim, everypath.write_image(tmp_path / "layout", [below, above]), tmp_path, "openat", 20)


def test_a_dup_that_fails_in_the_dir_formats_own_walks_is_a_refusal_or_the_same_tree(shim, tmp_path):
    """The dir format's walks outside the layer walk: an opaque marker clears the lower ``d``
    level by level (``_clear_lower``, a dup of each level's fd); ``l/sub/g`` through a lower
    symlink ``l`` makes ``e/sub``, whose ancestors are recorded by inode (``_record_ancestors``)
    so the opaque marker of ``e`` later in the layer spares them.  On 9283a86 a dup failing
    there was read as "nothing there" (or not checked at all): with the 4th failing, the lower
    ``d/x/y/old`` stayed under the opaque ``d``, exit 0."""
    below = Tar().dir("d").dir("d/x").dir("d/x/y").file("d/x/y/old", b"old\n").dir("e") \
        .file("e/old", b"old\n").symlink("l", "e").bytes()
    above = Tar().file("l/sub/g", b"through l\n").opaque("d").file("d/new", b"new\n").opaque("e").bytes()
    layout = everypath.write_image(tmp_path / "layout", [below, above])
    last, calls, badf = _unpack(shim, layout, tmp_path / "dir-clean", "dir")
    assert last == "ok" and badf == 0 and calls["dup"] >= 3, (last, calls, badf)
    clean = _tree(tmp_path / "dir-clean", "dir")
    assert clean.paths() == ["d", "d/new", "e", "e/sub", "e/sub/g", "l"], clean.paths()
    _each_failing_in_turn(shim, layout, tmp_path, "dir", "dup", calls["dup"], clean)


def test_a_dup_that_fails_while_naming_a_missing_hardlink_target_names_the_failure(shim, tmp_path):
    """A hardlink whose target's directory is not there is refused, and the refusal says what
    is in the way (``_no_target_dir``).  On 9283a86 its dup failing (EMFILE) walked from fd -1
    and said "Bad file descriptor", not what failed."""
    layout = everypath.write_image(tmp_path / "layout", [Tar().dir("a").file("a/f", b"f\n")
                                                          .hardlink("h", "a/b/c/missing").bytes()])
    last, calls, _ = _unpack(shim, layout, tmp_path / "dir-clean", "dir")
    assert last.startswith("refused:") and "missing" in last, last
    for k in range(1, calls["dup"] + 1):
        last, _, badf = _unpack(shim, layout, tmp_path / f"dir-dup-{k}", "dir", f"dup:{k}")
        assert badf == 0, f"dup #{k} failing: {badf} close(2) of no descriptor ({last})"
        assert last.startswith("refused:") and "Bad file descriptor" not in last, (k, last)


def test_a_dup_that_fails_in_the_walk_without_openat2_names_the_failure(shim, tmp_path, monkeypatch):
    """Without openat2 (older kernels, qemu-user) a path is resolved in the root component by
    component, an absolute symlink restarting from a dup of the root's fd.  On 153e1dc that
    dup failing (EMFILE) walked on from fd -1 and said "Bad file descriptor"; or a clean run's
    tree.  ``abs -> /d`` is followed for ``abs/x/f`` (the walk), ``d/x`` made through it."""
    monkeypatch.setenv("LAMINA_NO_OPENAT2", "1")
    layout = everypath.write_image(tmp_path / "layout", [
        Tar().dir("d").dir("d/x").symlink("abs", "/d").bytes(),
        Tar().file("abs/x/f", b"through /d\n").file("abs/y", b"y\n").bytes()])
    last, calls, badf = _unpack(shim, layout, tmp_path / "dir-clean", "dir")
    assert last == "ok" and badf == 0, (last, badf)
    clean = _tree(tmp_path / "dir-clean", "dir")
    assert "d/x/f" in clean.paths() and "d/y" in clean.paths(), clean.paths()
    _each_failing_in_turn(shim, layout, tmp_path, "dir", "dup", calls["dup"], clean)
