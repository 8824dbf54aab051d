"""Multi-layer OCI images built with umoci (the conformance oracle's own writer).

build_umoci_image(base) creates base/L (an OCI layout) with tags t1..t4, one
new layer per tag, each made by modifying an unpacked bundle's rootfs and
`umoci repack --refresh-bundle`.  The steps exercise: odd modes, setuid/
setgid/sticky, uid/gid, hardlinks (3-way, broken later, re-added), symlinks
(relative, absolute, dangling, to a dir; retargeted), user.* and trusted.*
xattrs (added, removed, on dirs and symlinks), char/block devices and a fifo,
long and unicode names, file deletions and dir deletions (whiteouts), a dir
deleted and recreated (same layer and across layers), file<->dir
replacements, metadata-only changes (chmod, chown, mtime).
"""
from __future__ import annotations

import os
import random
import shutil
import stat

from conftest import require_tool, run

TAGS = ["t1", "t2", "t3", "t4"]
T0 = 1_550_000_000


def _w(path, data, mode=0o644, uid=0, gid=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _md(path, mode=0o755, uid=0, gid=0):
    os.makedirs(path, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _fix_times(root, when):
    """Deterministic mtimes on everything whose mtime is not already pinned (< T0)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in filenames + dirnames:
            p = os.path.join(dirpath, n)
            if os.lstat(p).st_mtime > T0 + 10_000_000:
                os.utime(p, ns=(when * 10**9 + 123_456_789,) * 2, follow_symlinks=False)
    os.utime(root, (when, when))


def step1(r):
    j = lambda *p: os.path.join(r, *p)  # noqa: E731
    _md(j("etc"))
    _w(j("etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\n")
    _w(j("etc", "shadow"), "root:*:1::::::\n", mode=0o640, gid=42)
    _w(j("etc", "hostname"), "one\n")
    _w(j("etc", "group"), "root:x:0:\n")
    os.setxattr(j("etc", "passwd"), "user.color", b"blue")
    os.setxattr(j("etc", "passwd"), "trusted.secret", b"s\0s")
    os.setxattr(j("etc"), "user.dir", b"etc-dir")
    _md(j("bin"))
    _w(j("bin", "prog"), "#!/bin/sh\n", mode=0o755)
    _w(j("bin", "suid"), "suid\n", mode=0o4755)
    _w(j("bin", "sgid"), "sgid\n", mode=0o2711, gid=50)
    _w(j("bin", "noperm"), "nobody reads me\n", mode=0o000)
    _w(j("bin", "ro"), "ro\n", mode=0o444)
    _md(j("tmp"), 0o1777)
    _md(j("home"))
    _md(j("home", "user"), 0o700, 1000, 1000)
    _w(j("home", "user", ".profile"), "export A=1\n", mode=0o600, uid=1000, gid=1000)
    _md(j("usr", "lib"))
    _md(j("usr", "bin"))
    _w(j("usr", "lib", "a"), "shared inode\n")
    os.link(j("usr", "lib", "a"), j("usr", "lib", "a.link"))
    os.link(j("usr", "lib", "a"), j("usr", "bin", "a.link2"))
    os.symlink("a", j("usr", "lib", "rel"))
    os.symlink("/usr/lib/a", j("usr", "lib", "abs"))
    os.symlink("/nonexistent/path", j("usr", "lib", "dangling"))
    os.symlink("usr/lib", j("libdir"))
    os.setxattr(j("usr", "lib", "abs"), "trusted.onlink", b"L", follow_symlinks=False)
    _md(j("dev"))
    os.mknod(j("dev", "null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(j("dev", "zero"), 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    os.mknod(j("dev", "sda"), 0o660 | stat.S_IFBLK, os.makedev(8, 0))
    os.chown(j("dev", "sda"), 0, 6)
    os.mkfifo(j("dev", "fifo"), 0o620)
    _w(j("data", "big.bin"), random.Random(7).randbytes(1 << 20))
    _w(j("data", "empty"), b"")
    _w(j("data", "ünï cødé ☃"), "unicode\n")
    deep = j("data", *(c * 50 for c in "abcdef"))
    _w(os.path.join(deep, "f" * 120), "deep and long\n")
    _w(j("data", "pinned"), "pinned mtime\n")
    os.utime(j("data", "pinned"), ns=(1_000_000_000_500_000_000, 1_000_000_000_500_000_000))
    _md(j("victim"))
    _w(j("victim", "v1"), "v1\n")
    _md(j("victim", "sub"))
    _w(j("victim", "sub", "v2"), "v2\n")
    _md(j("recreate"))
    _w(j("recreate", "old1"), "old1\n")
    _w(j("recreate", "keep"), "keep\n")
    _w(j("replace-me-file"), "file that becomes a dir\n")
    _md(j("replace-me-dir"))
    _w(j("replace-me-dir", "child"), "child\n")
    _fix_times(r, T0 + 1000)


def step2(r):
    j = lambda *p: os.path.join(r, *p)  # noqa: E731
    os.unlink(j("etc", "shadow"))                                  # file whiteout
    shutil.rmtree(j("victim"))                                     # dir whiteout
    shutil.rmtree(j("recreate"))                                   # deleted and recreated in one layer
    _md(j("recreate"), 0o750)
    _w(j("recreate", "new1"), "new1\n")
    _w(j("recreate", "keep"), "keep but new\n")
    _w(j("etc", "hostname"), "two\n")                              # content change
    os.chmod(j("bin", "prog"), 0o700)                              # metadata-only change
    os.chown(j("etc", "group"), 0, 42)
    os.removexattr(j("etc", "passwd"), "user.color")               # xattr removed
    os.setxattr(j("etc", "group"), "user.new", b"new")             # xattr added
    os.unlink(j("replace-me-file"))                                # file -> dir
    _md(j("replace-me-file"))
    _w(j("replace-me-file", "inner"), "inner\n")
    # (dir -> file lives in its own image, REPLACE_STEPS: umoci writes a whiteout *below*
    #  the new file, replace-me-dir/.wh.child, which deserves a separate test)
    os.unlink(j("usr", "lib", "rel"))                              # symlink retarget
    os.symlink("a.link", j("usr", "lib", "rel"))
    os.unlink(j("usr", "lib", "a.link"))                           # break the 3-way link
    with open(j("usr", "lib", "a"), "a") as f:                     # modify through a remaining link
        f.write("appended\n")
    _w(j("new", "x"), "x\n")                                       # new hardlink pair
    os.link(j("new", "x"), j("new", "x.hl"))
    _fix_times(r, T0 + 2000)


def step3(r):
    j = lambda *p: os.path.join(r, *p)  # noqa: E731
    _md(j("victim"), 0o711)                                        # recreated across layers
    _w(j("victim", "v9"), "v9\n")
    os.unlink(j("dev", "zero"))                                    # device -> regular file
    _w(j("dev", "zero"), "not a device anymore\n")
    os.mknod(j("dev", "tty"), 0o620 | stat.S_IFCHR, os.makedev(5, 0))
    os.chown(j("dev", "tty"), 0, 5)
    os.unlink(j("libdir"))                                         # symlink -> dir
    _md(j("libdir"))
    _w(j("libdir", "real"), "real\n")
    os.unlink(j("new", "x.hl"))
    os.setxattr(j("data"), "trusted.dirx", b"on data")
    _fix_times(r, T0 + 3000)


def step4(r):
    j = lambda *p: os.path.join(r, *p)  # noqa: E731
    os.utime(j("etc", "passwd"), (T0 + 4444, T0 + 4444))           # mtime-only change
    shutil.rmtree(j("home"))                                       # whole tree gone
    os.chmod(j("bin", "ro"), 0o4555)                               # setuid added
    shutil.rmtree(j("data", "a" * 50))                             # the deep tree goes
    _w(j("etc", "hostname"), "four\n")
    _fix_times(r, T0 + 4000)


STEPS = [step1, step2, step3, step4]


def r1(r):
    j = lambda *p: os.path.join(r, *p)  # noqa: E731
    _md(j("d"))
    _w(j("d", "child"), "child\n")
    _md(j("d", "sub"))
    _w(j("d", "sub", "deeper"), "deeper\n")
    _w(j("f"), "f\n")
    _fix_times(r, T0 + 1000)


def r2(r):
    j = lambda *p: os.path.join(r, *p)  # noqa: E731
    shutil.rmtree(j("d"))                  # dir -> file: umoci writes d, d/.wh.child, d/.wh.sub
    _w(j("d"), "d is a file now\n")
    os.unlink(j("f"))                      # file -> dir
    _md(j("f"))
    _w(j("f", "in"), "in\n")
    _fix_times(r, T0 + 2000)


def r3(r):
    j = lambda *p: os.path.join(r, *p)  # noqa: E731
    os.unlink(j("d"))                      # and back: file -> dir
    _md(j("d"), 0o700)
    _w(j("d", "again"), "again\n")
    _fix_times(r, T0 + 3000)


REPLACE_STEPS = [r1, r2, r3]


def build_umoci_image(base, steps=STEPS):
    require_tool("umoci")
    layout = os.path.join(base, "L")
    bundle = os.path.join(base, "B")
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:t0")
    run("umoci", "unpack", "--image", f"{layout}:t0", bundle)
    rootfs = os.path.join(bundle, "rootfs")
    for tag, step in zip(TAGS, steps):
        step(rootfs)
        run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:{tag}", bundle)
    return layout
