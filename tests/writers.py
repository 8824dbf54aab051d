"""Archives that other tar writers produce, written here from one tree of edge cases.

corpora.py holds the archives other projects keep for their readers, and GNU tar's and
bsdtar's own writing; the layers lamina meets are written by other tools still.  Each
writer below archives the same tree (corpora._tree's long names and links, sparse files,
names with newlines and '=', times before 1970 and after 2242, plus ``_more``'s names
that are no UTF-8, fifos, devices, setuid/setgid/sticky modes, owners without a name):

    go/MODE          Go's archive/tar (what docker, buildkit, containerd, umoci, kaniko
                     write), through tests/gotar/main.go: ``moby`` as docker's
                     pkg/archive, ``default`` (Go picks the format), ``gnu``, ``pax``,
                     ``ustar``, and ``crafted*``, headers no tree gives
    busybox/tar      busybox tar (ustar, GNU long names)
    pax/ustar,       MirBSD pax's ``-x ustar`` and ``-x tar`` (v7)
    pax/tar
    cpio/ustar,      GNU cpio's ``-H ustar`` and ``-H tar``
    cpio/tar
    7zip/tar,        7-Zip's tar writer (``7zz a -ttar``, links kept as links), and its PAX
    7zip/pax         format with nanoseconds, atime, ctime and owners
    python/FMT       CPython's tarfile: ustar, gnu, pax, pax with a global header and
                     latin-1 names (``pax-global-latin1``), gnu in strict ASCII
    nodetar/FORM     node-tar (npm's writer), default and portable
    WRITER/dot...    the tree archived as "." (busybox, pax, cpio, CPython)

``archive(key)`` returns the bytes, written on first use and kept for the session;
``compressed(key)`` go/moby's tar as a layer compressor writes it (COMPRESSED_KEYS: Go's
compress/gzip, busybox, 7-Zip, pigz, gzip, CPython, zstd).  What a writer cannot store it
leaves out, refuses or cuts; ``SKIPPED[key]`` is what it said about that.
"""
from __future__ import annotations

import os
import socket
import subprocess
import tarfile
import tempfile

import corpora

MEMBERS = ["d", "e", "u", "x"]
_GOTAR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gotar")
_WRITTEN = {}
COMPRESSED = {}  # key -> go/moby's tar compressed by another writer
COVERS = {}  # key -> the members of MEMBERS it archives
TREE = set()  # every name under MEMBERS, as bytes
SKIPPED = {}  # key -> the names the writer said it left out (or that are missing from it)


def _more(root):
    """What corpora._tree leaves out: names that are no UTF-8 (``u``, as corpora writes for
    gnutar/bsdtar's not-utf8 archives), node types and mode bits (``x``)."""
    u = os.path.join(root, "u").encode()
    os.makedirs(u)
    with open(os.path.join(u, b"caf\xe9"), "wb") as f:
        f.write(b"x")
    os.setxattr(os.path.join(u, b"caf\xe9"), "user.n\u00e4me", b"v")
    os.symlink(b"caf\xe9", os.path.join(u, b"ln\xff"))
    os.makedirs(os.path.join(u, "\u00e4\u00f6 \u65e5\u672c".encode()))  # UTF-8, not ASCII: a PAX path in Go
    x = os.path.join(root, "x")
    os.makedirs(os.path.join(x, "empty-dir"))
    os.mkfifo(os.path.join(x, "fifo"), 0o640)
    os.mknod(os.path.join(x, "null"), 0o20666, os.makedev(1, 3))
    os.mknod(os.path.join(x, "loop7"), 0o60660, os.makedev(7, 7))
    for name, mode, data in (("setuid", 0o4755, b"#!/bin/sh\n"), ("setgid", 0o2755, b"#!/bin/sh\n"),
                             ("empty", 0o600, b""), ("block", 0o644, b"B" * 512), ("n" * 100, 0o644, b"100\n")):
        with open(os.path.join(x, name), "wb") as f:
            f.write(data)
        os.chmod(os.path.join(x, name), mode)
    # the ends of ustar's fields: a name of 100 bytes (no NUL), a directory of 99 (100 with its
    # '/'), a name of 256 split into a prefix of 155 and a name of 100
    for path in ("x/" + "m" * 98, "x/" + "p" * 153 + "/" + "q" * 100):
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        with open(os.path.join(root, path), "wb") as f:
            f.write(b"edge\n")
    os.makedirs(os.path.join(x, "k" * 97))
    # hardlinks to what is no regular file (Linux links the node itself; Go-based writers, which
    # find hardlinks by inode, write them as hardlinks), to an empty file and to a setuid one
    os.symlink("setuid", os.path.join(x, "symlink"))
    for target, link in (("fifo", "hard-fifo"), ("null", "hard-null"), ("symlink", "hard-symlink"),
                         ("empty", "hard-empty"), ("setuid", "hard-setuid")):
        os.link(os.path.join(x, target), os.path.join(x, link), follow_symlinks=False)
    # xattrs as layers carry them: a file capability (ping's cap_net_raw+ep, VFS v2), a value of
    # binary bytes (a NUL, a newline, an '='), an empty value, one on a directory
    os.setxattr(os.path.join(x, "setgid"), "security.capability",
                bytes.fromhex("0100000200200000000000000000000000000000"))
    os.setxattr(os.path.join(x, "block"), "user.bin", b"\x00\xff\n=\x00")
    os.setxattr(os.path.join(x, "block"), "user.empty", b"")
    os.setxattr(os.path.join(x, "empty-dir"), "user.dir", b"on a directory")
    # a socket (a rootfs's /run has them): no tar type holds one; GNU cpio writes an empty regular
    # file of the old '\0' type, the others leave it out
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.path.join(x, "sock"))
    os.utime(os.path.join(x, "sock"), (corpora._MTIME, corpora._MTIME))
    os.makedirs(os.path.join(x, "sticky"))
    os.chmod(os.path.join(x, "sticky"), 0o1777)
    os.makedirs(os.path.join(x, "setgid-dir"))
    os.chmod(os.path.join(x, "setgid-dir"), 0o2775)
    with open(os.path.join(x, "owned"), "wb") as f:  # an owner and group no passwd entry names
        f.write(b"o")
    os.chown(os.path.join(x, "owned"), 1000, 1001)
    for top in (u, x.encode()):
        for dirpath, dirnames, filenames in os.walk(top, topdown=False):
            for n in filenames + dirnames + [b""]:
                os.utime(os.path.join(dirpath, n), (corpora._MTIME, corpora._MTIME), follow_symlinks=False)


# 7-Zip opens a fifo or a device node and reads it as a file's data (on a fifo it waits
# forever): they are left out, with their hardlinks; a socket it cannot open (exit 1)
_7Z_LEAVE_OUT = ["-x!x/sock", "-x!x/fifo", "-x!x/null", "-x!x/loop7", "-x!x/hard-fifo", "-x!x/hard-null"]


_NODE_TAR = """
const tar = require('tar');
tar.c(Object.assign({file: process.argv[2], sync: true,
                     onwarn: (code, message) => console.error(code + ': ' + message)}, JSON.parse(process.argv[1])),
      process.argv.slice(3));
"""


def _gotar(work):
    """The built tests/gotar program (stdlib only, built offline, once per session)."""
    from conftest import require_tool
    require_tool("go")
    exe = os.path.join(work, "gotar")
    env = dict(os.environ, GOFLAGS="-mod=mod", GOPROXY="off", GOCACHE=os.path.join(work, "gocache"),
               GOPATH=os.path.join(work, "gopath"), CGO_ENABLED="0")
    subprocess.run(["go", "build", "-o", exe, "."], cwd=_GOTAR, env=env, check=True, capture_output=True)
    return exe


def _python(root, work, fmt, members=MEMBERS, **kw):
    """tarfile's own walk (TarFile.add), one entry at a time so an entry the format refuses
    (ValueError: a name too long for ustar, a time before 1970...) is left out, not the rest."""
    out = os.path.join(work, "py.tar")
    skipped = []
    with tarfile.open(out, "w", format=fmt, **kw) as tf:
        def add(path):
            try:
                tf.add(path, recursive=False)
            except ValueError as e:
                skipped.append(f"skipped {path!r}: {e}")
                return
            if os.path.isdir(path) and not os.path.islink(path):
                for n in sorted(os.listdir(path)):
                    add(os.path.join(path, n))
        cwd = os.getcwd()
        os.chdir(root)
        try:
            for m in members:
                add(m)
        finally:
            os.chdir(cwd)
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data, skipped


def _write_all(root):
    out = {}
    corpora._tree(root)
    _more(root)
    TREE.update(os.path.relpath(os.path.join(dirpath, n), root.encode())
                for m in MEMBERS for dirpath, dirnames, filenames in os.walk(os.path.join(root, m).encode())
                for n in dirnames + filenames)
    TREE.update(m.encode() for m in MEMBERS)
    work = os.path.join(os.path.dirname(root), "work")  # beside the tree: "." archives the tree alone
    os.makedirs(work)
    o_tar = os.path.join(work, "o.tar")

    def run(key, *argv, stdin=None, ok=(0,), file=None):
        # Debian's node-tar is no global module: NODE_PATH finds it
        p = subprocess.run(argv, cwd=root, input=stdin, capture_output=True,
                           env=dict(os.environ, NODE_PATH="/usr/share/nodejs"))
        assert p.returncode in ok, (key, argv, p.returncode, p.stderr.decode(errors="replace"))
        if file:
            with open(file, "rb") as f:
                out[key] = f.read()
            os.unlink(file)
        else:
            out[key] = p.stdout
        COVERS[key] = [m for m in MEMBERS if m in argv[3:]] if argv[0] == gotar else MEMBERS
        said = p.stderr.decode(errors="replace").splitlines()
        SKIPPED[key] = [line for line in said if line.startswith("skipped ")] if argv[0] == gotar else said

    from conftest import require_tool
    for tool in ("busybox", "pax", "cpio", "7zz", "node"):
        require_tool(tool)
    gotar = _gotar(work)
    for mode in ("moby", "default", "gnu", "pax", "ustar"):
        # Go writes a name that is no UTF-8 into a PAX path record as it is (no hdrcharset), which
        # bsdtar cannot extract in this locale: those names are an archive of their own, so that
        # the rest is checked against both references
        if mode in ("moby", "default", "pax"):
            run(f"go/{mode}", gotar, mode, root, *[m for m in MEMBERS if m != "u"])
            run(f"go/{mode}-not-utf8", gotar, mode, root, "u")
        else:
            run(f"go/{mode}", gotar, mode, root, *MEMBERS)
    run("go/crafted", gotar, "crafted")
    run("go/crafted-types", gotar, "crafted-types")
    run("go/crafted-sparse", gotar, "crafted-sparse")
    run("go/crafted-type-A", gotar, "crafted-type-A")
    run("busybox/tar", "busybox", "tar", "-cf", "-", *MEMBERS)
    # pax exits 1 having written every entry it could: the others it names on stderr.  In v7
    # ('-x tar') it leaves out a fifo or a device, but not a hardlink to one: a link to nothing,
    # which GNU tar and bsdtar fail and lamina refuses.  Those links are left out (an empty -s
    # replacement skips the name)
    for fmt, skip in (("ustar", ()), ("tar", ("-s", ",^x/hard-fifo$,,", "-s", ",^x/hard-null$,,"))):
        run(f"pax/{fmt}", "pax", "-w", "-x", fmt, *skip, "-f", o_tar, *MEMBERS, ok=(0, 1), file=o_tar)
    # NUL-ended names: the tree has names with a newline.  cpio exits 2 having written every
    # entry it could: the others it names on stderr.  It writes a hardlink's target cut to 100
    # bytes (a link to nothing: a ustar prefix holds the name, nothing holds the target), so the
    # link to the long name is left out
    listing = subprocess.run(["find", *MEMBERS, "-print0"], cwd=root, capture_output=True, check=True).stdout
    listing = listing.replace(b"e/hardlink-to-a-long-name\0", b"")
    for fmt in ("ustar", "tar"):
        run(f"cpio/{fmt}", "cpio", "--quiet", "-0", "-o", "-H", fmt, stdin=listing, ok=(0, 2))
    run("7zip/tar", "7zz", "a", "-bso0", "-bsp0", "-ttar", "-snl", "-snh", *_7Z_LEAVE_OUT,
        o_tar, *MEMBERS, file=o_tar)
    # its PAX format with times to the nanosecond, atime and ctime, owners' ids and names
    run("7zip/pax", "7zz", "a", "-bso0", "-bsp0", "-ttar", "-snl", "-snh", "-snoi", "-snon", "-mm=pax", "-mtp=3",
        "-mtc=on", "-mta=on", *_7Z_LEAVE_OUT, o_tar, *MEMBERS, file=o_tar)
    # node-tar (npm's), in its default form (PAX records of atime, ctime, SCHILY.dev/ino/nlink)
    # and its portable one; it reads names as UTF-8 (a name that is none it cannot find again:
    # ENOENT), so "u" is left out
    for key, opts in (("nodetar/default", "{}"), ("nodetar/portable", '{"portable": true}')):
        run(key, "node", "-e", _NODE_TAR, opts, o_tar, *[m for m in MEMBERS if m != "u"], file=o_tar)
        COVERS[key] = [m for m in MEMBERS if m != "u"]
    # the whole tree as "." (names "./d/a", and the root itself as "./" or "."), as
    # `tar -C rootfs -c .` makes a layer
    run("busybox/dot", "busybox", "tar", "-cf", "-", ".")
    run("pax/dot-ustar", "pax", "-w", "-x", "ustar", "-f", o_tar, ".", ok=(0, 1), file=o_tar)
    listing = subprocess.run(["find", ".", "-print0"], cwd=root, capture_output=True, check=True).stdout
    run("cpio/dot-ustar", "cpio", "--quiet", "-0", "-o", "-H", "ustar",
        stdin=listing.replace(b"./e/hardlink-to-a-long-name\0", b""), ok=(0, 2))
    out["python/dot-pax"], SKIPPED["python/dot-pax"] = _python(root, work, tarfile.PAX_FORMAT, members=["."])
    COVERS["python/dot-pax"] = MEMBERS
    # the layer compressions of those writers, over Go's moby-style tar: Go's compress/gzip
    # (docker), busybox gzip, 7-Zip's gzip, pigz's independent blocks (-i), gzip --rsyncable
    # (both flush mid-stream), CPython's gzip with a file name and time in its header
    plain = out["go/moby"]
    for key, argv in (("gzip/go", [gotar, "gzip"]), ("gzip/busybox", ["busybox", "gzip", "-c"]),
                      ("gzip/7zip", ["7zz", "a", "-an", "-tgzip", "-si", "-so", "-bso0", "-bsp0", "-mx=9"]),
                      ("gzip/pigz-independent", ["pigz", "-i", "-b", "32", "-c"]),
                      ("gzip/gzip-rsyncable", ["gzip", "--rsyncable", "-c"]), ("zstd/zstd", ["zstd", "-q", "-c"])):
        p = subprocess.run(argv, input=plain, capture_output=True)
        assert p.returncode == 0, (key, p.stderr)
        COMPRESSED[key] = p.stdout
    import gzip
    import io
    buf = io.BytesIO()
    with gzip.GzipFile(filename="layer.tar", mode="wb", fileobj=buf, mtime=corpora._MTIME) as z:
        z.write(plain)
    COMPRESSED["gzip/python"] = buf.getvalue()
    for key, fmt, kw in (("python/ustar", tarfile.USTAR_FORMAT, {}), ("python/gnu", tarfile.GNU_FORMAT, {}),
                         ("python/pax", tarfile.PAX_FORMAT, {}),
                         ("python/pax-global-latin1", tarfile.PAX_FORMAT,
                          {"pax_headers": {"comment": "lamina"}, "encoding": "latin-1"}),
                         # a name it cannot encode is refused (UnicodeEncodeError), the rest written
                         ("python/gnu-ascii-strict", tarfile.GNU_FORMAT, {"encoding": "ascii", "errors": "strict"})):
        out[key], SKIPPED[key] = _python(root, work, fmt, **kw)
        COVERS[key] = MEMBERS
    return out


def compressed(key):
    """go/moby's tar compressed as ``key`` names."""
    archive("go/moby")
    return COMPRESSED[key]


def archive(key):
    """The bytes ``key`` names, all written on first use."""
    if not _WRITTEN:
        with tempfile.TemporaryDirectory(prefix="lamina-writers-") as base:
            os.makedirs(os.path.join(base, "tree"))
            _WRITTEN.update(_write_all(os.path.join(base, "tree")))
    return _WRITTEN[key]


KEYS = ["go/moby", "go/moby-not-utf8", "go/default", "go/default-not-utf8", "go/gnu", "go/pax", "go/pax-not-utf8",
        "go/ustar", "go/crafted", "go/crafted-types", "go/crafted-sparse", "go/crafted-type-A", "busybox/tar",
        "pax/ustar", "pax/tar", "cpio/ustar", "cpio/tar", "7zip/tar", "7zip/pax", "python/ustar", "python/gnu",
        "python/pax", "python/pax-global-latin1", "python/gnu-ascii-strict", "nodetar/default", "nodetar/portable",
        "busybox/dot", "pax/dot-ustar", "cpio/dot-ustar", "python/dot-pax"]
COMPRESSED_KEYS = ["gzip/go", "gzip/busybox", "gzip/7zip", "gzip/pigz-independent", "gzip/gzip-rsyncable",
                   "gzip/python", "zstd/zstd"]
