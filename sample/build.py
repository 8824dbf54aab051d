#!/usr/bin/env python3
"""Build the sample OCI image layout at sample/image (tag "latest"), with umoci.

Three layers:
  0. base (umoci repack): dirs, files, a symlink to a dir, a relative symlink,
     a hardlink pair, a setuid file, a user xattr, a 1000:1000 home, a sticky
     /tmp, an empty file and a >100-character name.
  1. hand-made tar (umoci raw add-layer), since umoci never writes opaque
     directories: a file whiteout, a directory whiteout, an opaque directory
     (its marker placed after an entry of the same layer, which must survive),
     and a file rewritten under a hardlink (the other name keeps the old data).
  2. umoci repack again: a new dir, a dangling absolute symlink, a chmod and a
     deletion (umoci writes the whiteout).

Times, owners and modes are fixed so rebuilding gives the same blobs. Needs
root (ownership) and umoci. Usage: python3 sample/build.py [OUT]
"""
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
EPOCH = 1704067200  # 2024-01-01T00:00:00Z
CREATED = "2024-01-01T00:00:00Z"


def umoci(*args):
    subprocess.run(["umoci", *args], check=True)


def write(root, rel, data, mode=0o644, uid=0, gid=0):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def mkdir(root, rel, mode=0o755, uid=0, gid=0):
    path = os.path.join(root, rel)
    os.makedirs(path, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def pin_times(root):
    """Same mtime everywhere (deepest first so a parent's time is set last)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(root, (EPOCH, EPOCH))


def base_layer(rootfs):
    for d in ("etc", "usr", "usr/bin", "usr/lib", "usr/share", "usr/share/doc", "opt", "opt/app",
              "opt/app/data", "var", "home"):
        mkdir(rootfs, d)
    mkdir(rootfs, "tmp", 0o1777)
    mkdir(rootfs, "home/user", 0o750, 1000, 1000)
    write(rootfs, "home/user/.profile", b"export PS1='$ '\n", 0o600, 1000, 1000)
    write(rootfs, "etc/hostname", b"lamina-sample\n")
    write(rootfs, "etc/old.conf", b"deleted by layer 1\n")
    write(rootfs, "etc/issue", b"deleted by layer 2\n")
    motd = write(rootfs, "etc/motd", b"hello from the base layer\n")
    os.setxattr(motd, "user.lamina.note", b"sample")
    tool = write(rootfs, "usr/bin/tool", b"#!/bin/sh\necho tool v1\n", 0o755)
    os.link(tool, os.path.join(rootfs, "usr/bin/tool-alias"))
    write(rootfs, "usr/bin/suid-tool", b"#!/bin/sh\nid\n", 0o4755)
    write(rootfs, "usr/lib/libdemo.so.1", b"\x7fELF not really\n" + bytes(range(256)))
    os.symlink("libdemo.so.1", os.path.join(rootfs, "usr/lib/libdemo.so"))
    os.symlink("usr/bin", os.path.join(rootfs, "bin"))
    write(rootfs, "usr/share/doc/" + "a-rather-long-file-name-" * 5 + "end.txt", b"long name\n")
    write(rootfs, "opt/app/config.ini", b"[app]\nversion = 1\n")
    write(rootfs, "opt/app/data/one.txt", b"one\n")
    write(rootfs, "opt/app/data/two.txt", b"two\n")
    write(rootfs, "var/empty.log", b"")
    pin_times(rootfs)


def whiteout_layer():
    """The tar of layer 1, uncompressed (umoci raw add-layer compresses it)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name, data=None, mode=0o644, kind=tarfile.REGTYPE):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, mode, EPOCH
            info.uname = info.gname = "root"
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        add("etc/.wh.old.conf", b"")                   # file whiteout
        add("usr/share/.wh.doc", b"")                  # directory whiteout
        add("opt/app/", mode=0o755, kind=tarfile.DIRTYPE)
        add("opt/app/config.ini", b"[app]\nversion = 2\n")
        add("opt/app/.wh..wh..opq", b"")               # opaque: hides lower data/, not config.ini above
        add("opt/app/README", b"replaced the lower contents\n")
        add("usr/bin/tool", b"#!/bin/sh\necho tool v2\n", 0o755)  # tool-alias keeps v1
    return buf.getvalue()


def top_layer(rootfs):
    mkdir(rootfs, "srv")
    mkdir(rootfs, "srv/data", 0o700)
    write(rootfs, "srv/data/hello.txt", b"hello from the top layer\n", 0o640, 0, 0)
    os.symlink("hello.txt", os.path.join(rootfs, "srv/data/link"))
    os.symlink("/usr/share/zoneinfo/UTC", os.path.join(rootfs, "etc/localtime"))
    os.chmod(os.path.join(rootfs, "etc/hostname"), 0o600)
    os.unlink(os.path.join(rootfs, "etc/issue"))
    pin_times(rootfs)


def build(out):
    if os.path.exists(out):
        shutil.rmtree(out)
    image = f"{out}:latest"
    history = ["--history.created", CREATED, "--history.author", "lamina sample"]
    with tempfile.TemporaryDirectory() as tmp:
        umoci("init", "--layout", out)
        umoci("new", "--image", image)
        umoci("config", "--image", image, "--no-history", "--created", CREATED, "--author", "lamina sample",
              "--os", "linux", "--architecture", "amd64", "--config.cmd", "/bin/sh")
        bundle = os.path.join(tmp, "bundle")
        umoci("unpack", "--image", image, bundle)
        base_layer(os.path.join(bundle, "rootfs"))
        umoci("repack", "--image", image, *history, "--history.created_by", "base", bundle)

        layer = os.path.join(tmp, "layer1.tar")
        with open(layer, "wb") as f:
            f.write(whiteout_layer())
        umoci("raw", "add-layer", "--image", image, *history, "--history.created_by", "whiteouts", layer)

        bundle = os.path.join(tmp, "bundle2")
        umoci("unpack", "--image", image, bundle)
        top_layer(os.path.join(bundle, "rootfs"))
        umoci("repack", "--image", image, *history, "--history.created_by", "top", bundle)
        umoci("gc", "--layout", out)
    # umoci writes blobs 0600; git keeps 0644 anyway, so match it here too.
    for dirpath, dirnames, filenames in os.walk(out):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)


if __name__ == "__main__":
    build(os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "image")))
