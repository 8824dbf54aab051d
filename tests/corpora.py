"""Other projects' tar test archives, as installed or fetched by tests/run-all.sh.

    go/NAME          Go's archive/tar testdata (Debian golang-src)
    cpython/NAME     CPython's tarfile test archives (Debian libpython3.11-testsuite)
    libarchive/NAME  libarchive's test archives, uuencoded in its source package
                     (ci/fetch-corpora.sh puts them in /var/cache/lamina-corpora)
    moby/NAME        Docker's layers for its tarsum and archive tests (pkg/...), and
    tarsplit/NAME    the archives tar-split must reassemble bit-exact (tar/asm/testdata),
                     both from Debian's Go source packages (also fetched by ci/fetch-corpora.sh)
    nodetar/NAME     node-tar's test fixtures (test/fixtures/tars/..., from its source package)
    commons/NAME     Apache Commons Compress's tar test resources (src/test/resources/...)
    busybox/NAME     busybox's tar test archives: NAME is a file of its testsuite, or
                     ``FILE:BLOCK`` for an archive written inside a test script (a
                     ``begin-base64 644 BLOCK`` block of tar.tests, or the printf escapes of
                     the shell function BLOCK in tar/tar_with_*)
    gomtree/NAME     go-mtree's testdata tars (testdata/*.tar)
    cimage/NAME      containers/image's fixtures (a docker-archive; "Hello" in each compression)
    ccommon/NAME     containers/common's libimage testdata (BuildKit's exports, a podman export)
    podman/NAME      podman's test tars (test/...: build contexts, docker- and oci-archives)
    ostree/NAME      libostree's test tars (tests/*.tar.gz, *.tar.xz)
    file/NAME        file(1)'s magic test files (tests/*.testfile: a cut Gentoo package, zstd headers)
    buildah/NAME     buildah's test tars (tests/...)
    git/NAME         git's test tars (t/t5000, t/t5004: git archive's PAX headers, a size and a
                     time past the ustar fields)
    npm/NAME         npm's test package tarballs (workspaces/arborist/test/fixtures: npm pack's)
    cargo/NAME       cargo's benchmark workspaces (benches/workspaces/*.tgz, GNU tar's)
    rpm/NAME         rpm's test source tarballs (tests/data/SOURCES)
    dockerio/NAME    moby's integration test archives (engine/integration-cli/testdata)
    diffoscope/NAME  diffoscope's test tars (tests/data)
    archextract/NAME, archany/NAME, archanylite/NAME, archpeek/NAME
                     the test tars of CPAN's Archive::Extract (t/src), Archive::Any, Archive::Any::Lite
                     and Archive::Peek (t/): absolute names, no top directory, a symlink
    jarchivelib/NAME jarchivelib's test archives (src/test/resources/archive.tar*: a name of 230 bytes)
    tarconduit/NAME  Haskell tar-conduit's test tars (tests/files)
    proftpd/NAME     ProFTPD mod_tar's test tar (t/etc/modules/mod_tar)
    libarchivec/NAME python-libarchive-c's test tars (tests/data, from its PyPI sdist)
    distlib/NAME     distlib's unpack tests' tars (tests/, from its PyPI sdist)
    pgzip/NAME       klauspost/pgzip's gzip test streams (testdata/*.gz)
    ruby/NAME        rubygems' test gems (test/rubygems/...): NAME a .gem (a plain tar), or
                     ``GEM:data.tar.gz`` for the gzipped tar of its files inside
    zstd/NAME        zstd's golden decompression streams and a gzip file of its tests
    klauspost/NAME   klauspost/compress's gzip and zstd test streams; ``FILE.zip:MEMBER``
                     for a stream kept in one of its zips (good, bad, the fuzzers' regressions)
    gocompress/NAME  Go's compress/gzip testdata (Debian golang-src; NAME.base64 decoded)
                     (these three: tests/test_compression_corpora.py, as layer compressions)
    gnutar/NAME      archives GNU tar writes in its own test suite's formats (it ships none):
                     each format with xattrs and sparse files, volume labels, multi-volume
    bsdtar/NAME      sets, incremental dumps; and libarchive's writers; written here by the
                     tools of this machine on first use (``written``)
    features/NAME    the tar features real archives carry, each written by the tool that writes
                     it on first use (``written``): GNU tar's own v7/ustar/old GNU/GNU headers
                     (its --xattrs and --acls force POSIX), sparse files past 8 GiB (base-256),
                     --acls, --selinux, global PAX records that would change later entries
                     (GNU tar's --pax-option, CPython's pax_headers), archives joined by tar -A
                     and by cat, trailing garbage, no end blocks, dpkg-deb's data.tar in each
                     compression and the .deb, umoci repack's layers (Go's archive/tar, a
                     whiteout), tarlz's, and cpio (bsdtar's, GNU cpio's) to be refused
    gitarchive/NAME  archives git archive writes (its own tar writer and gzip), over a small
                     repository, by the git of this machine on first use

Looked at and left out, shipping no tar archive or none the mirror has (ci/fetch-corpora.sh
says why): tar-rs, minitar, Haskell's tar, libtar, dpkg, zig, GNU tar,
tarlz, pigz, zlib, php-pear's Archive_Tar, pristine-tar, containers-storage, MirBSD pax, cpio,
umoci, containerd, lz4, python-pip (no tar), setuptools and node-gyp (the mirror lacks their
.orig tarballs), Archive::Tar::Wrapper, python-handy-archives, ruby-mixlib-archive,
ruby-ffi-libarchive, archivemount, notary, tardiff and zarchive (the same), PyPI's
backports.tarfile and Debian's pypy3-lib-testsuite (CPython's testtar.tar, recursion.tar and
testtar.tar.xz, byte for byte), tarsafe (its sdist does not build without poetry), e2fsprogs (two GNU tars of 2 MiB disk images, bzip2: nothing cargo's and rpm's
GNU tars lack).  tar-split's archive/tar/testdata
(in the same Debian package as its tar/asm/testdata) is byte for byte Go's.  libarchive's test
archives newer than Debian's 3.6.2 (3.7's global-header, vendor-keyword, sparse-past-the-size,
Mac GNU tar and cut-short-header archives) are written by hand in test_tar_corpora.py's
crafted cousins, with the feature each was made to exercise.

``archive(key)`` returns (layer bytes as the project ships them, the plain tar or
None where it has no plain form).  Compressed forms: ``.tgz``/``.gz`` and ``.zst``
stay compressed as layers (lamina reads them); ``.Z``, ``.bz2`` and ``.xz`` (which lamina
does not read) are inflated here.
"""
from __future__ import annotations

import base64
import binascii
import bz2
import glob
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile

from conftest import IN_CI

CACHE = os.environ.get("LAMINA_CORPORA", "/var/cache/lamina-corpora")
LIBARCHIVE = os.path.join(CACHE, "libarchive")
_GOCODE = {"moby": "docker/docker/pkg", "tarsplit": "vbatts/tar-split/tar/asm/testdata",
           "imagespec": "opencontainers/image-spec/schema"}
_SOURCES = {"libarchive": "libarchive", "nodetar": "nodetar", "commons": "commons-compress",
            "busybox": "busybox", "tarstream": "tar-stream", "perl": "perl-archive-tar",
            "plexus": "plexus-archiver", "php": "php-phar",
            "ant": "ant", "erlang": "erlang-tar",
            "toybox": "toybox", "ruby": "ruby", "zstd": "zstd", "gomtree": "go-mtree", "buildah": "buildah",
            "pgzip": "pgzip", "cimage": "containers-image", "podman": "podman", "ostree": "ostree",
            "file": "file", "ccommon": "containers-common",
            "klauspost": "klauspost-compress", "git": "git", "npm": "npm", "cargo": "cargo", "rpm": "rpm",
            "dockerio": "docker.io", "diffoscope": "diffoscope",
            "archextract": "perl-archive-extract", "archany": "perl-archive-any",
            "archanylite": "perl-archive-any-lite", "archpeek": "perl-archive-peek",
            "jarchivelib": "jarchivelib", "tarconduit": "tar-conduit",
            "proftpd": "proftpd-mod-tar", "libarchivec": "libarchive-c", "distlib": "distlib"}  # corpus: its directory in CACHE (ci/fetch-corpora.sh)


def _go_compress_dir():
    found = sorted(glob.glob("/usr/share/go-*/src/compress/gzip/testdata"))
    return found[-1] if found else None


def _go_dir():
    found = sorted(glob.glob("/usr/share/go-*/src/archive/tar/testdata"))
    return found[-1] if found else None


def _cpython_dir():
    found = sorted(glob.glob("/usr/lib/python3*/test/testtar.tar"))
    return os.path.dirname(found[-1]) if found else None


def corpus_dir(corpus):
    if corpus in _GOCODE:
        path = os.path.join(CACHE, "gocode", _GOCODE[corpus])
    else:
        path = {"go": _go_dir(), "cpython": _cpython_dir(), "gocompress": _go_compress_dir()}.get(corpus) or os.path.join(CACHE, _SOURCES[corpus])
    return path if path and os.path.isdir(path) else None


def require_corpus(corpus):
    import pytest
    path = corpus_dir(corpus)
    if path is None:
        msg = (f"the {corpus} test archives are not here (tests/run-all.sh installs golang-src and "
               "libpython3.11-testsuite, and runs ci/fetch-corpora.sh for the others)")
        if IN_CI:
            pytest.fail(msg + " (CI must provide them)")
        pytest.skip(msg)
    return path


def uudecode(path):
    """The payload of a uuencoded file (libarchive's test archives are kept this way)."""
    out = bytearray()
    inside = False
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"begin "):
                inside = True
                continue
            if line.strip() == b"end":
                break
            if inside and line.strip():
                try:
                    out += binascii.a2b_uu(line)
                except binascii.Error:  # trailing garbage after the counted bytes
                    n = (((line[0] - 32) & 63) * 4 + 5) // 3
                    out += binascii.a2b_uu(line[:n])
    return bytes(out)


def _script_archive(path, block):
    """An archive a busybox test script spells inline: a ``begin-base64 644 BLOCK`` block
    (the first of that name), or the ``$ECHO -ne "\\x.."`` lines of the shell function BLOCK."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if f"{block}()" in lines:
        body = lines[lines.index(f"{block}()") + 1:]
        body = body[:body.index("}")]
        escapes = "".join(re.findall(r'\$ECHO -ne "([^"]*)"', "\n".join(body)))
        return bytes(int(h, 16) for h in re.findall(r"\\x([0-9a-fA-F]{2})", escapes))
    start = lines.index(f"begin-base64 644 {block}") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("===="))
    return base64.b64decode("".join(lines[start:end]))


def _unZ(data):
    return subprocess.run(["gzip", "-dc"], input=data, capture_output=True, check=True).stdout


def _unzstd(data):
    return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout


def shipped(key):
    """The bytes of ``corpus/name`` as the project ships them (a .Z or .bz2 still compressed)."""
    corpus, name = key.split("/", 1)
    if corpus in ("gnutar", "bsdtar", "gitarchive", "features"):
        return written(key)
    base = require_corpus(corpus)
    if corpus == "libarchive":
        return uudecode(os.path.join(base, name + ".uu"))
    if corpus == "busybox" and ":" in name:
        return _script_archive(os.path.join(base, name.split(":")[0]), name.split(":")[1])
    if corpus == "ruby" and ":" in name:
        import tarfile
        with tarfile.open(os.path.join(base, name.split(":")[0])) as gem:
            return gem.extractfile(name.split(":")[1]).read()
    with open(os.path.join(base, name), "rb") as f:
        return f.read()


def archive(key):
    """(layer bytes, plain tar bytes or None) of ``corpus/name``."""
    corpus, name = key.split("/", 1)
    if corpus in ("gnutar", "bsdtar", "gitarchive"):
        data = written(key)
        return data, gzip.decompress(data) if name.endswith(".gz") else data
    data = shipped(key)
    if name.endswith(".Z"):
        data = _unZ(data)
    elif name.endswith((".bz2", "_bz2", ".tbz")):
        data = bz2.decompress(data)
    elif name.endswith((".xz", ".txz")):
        data = lzma.decompress(data)
    if name.endswith((".tgz", ".gz")):
        try:
            return data, gzip.decompress(data)
        except (OSError, EOFError):
            return data, None
    if name.endswith(".zst"):
        return data, _unzstd(data)
    return data, data


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def streams(key):
    """[(name, bytes)] of the compressed streams ``corpus/FILE`` holds: the file itself, each
    member of a zip (``FILE.zip``), the decoded file (``FILE.base64``), or each file a glob
    pattern (``corpus/zstd-v*.testfile``) matches."""
    import zipfile
    corpus, name = key.split("/", 1)
    path = os.path.join(require_corpus(corpus), name)
    if "*" in name:  # each file the pattern matches
        return [(os.path.basename(p), _read(p)) for p in sorted(glob.glob(path))]
    if name.endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            return [(m, z.read(m)) for m in sorted(z.namelist()) if not m.endswith("/")]
    with open(path, "rb") as f:
        data = f.read()
    return [(name, base64.b64decode(data) if name.endswith(".base64") else data)]


def other_libarchive_archives(known):
    """Every libarchive test archive not in ``known``: zip, rar, 7z, cpio, iso, xar..., and tars
    compressed in ways a layer never is."""
    base = require_corpus("libarchive")
    return sorted(n[:-3] for n in os.listdir(base) if n.endswith(".uu") and f"libarchive/{n[:-3]}" not in known)


# --- archives written here by GNU tar and bsdtar themselves -------------------------------------
# GNU tar's own test suite writes its archives from scripts (tests/*.at: incremental dumps,
# volume labels, multi-volume sets, sparse files of each format); no project ships them.  They
# are written here the same way, over one small tree, by the tar (1.34) and bsdtar (3.6) of this
# machine, so ``gnutar/NAME`` and ``bsdtar/NAME`` are the bytes those writers produce.
_MTIME = 1_000_000_000
_WRITTEN = {}
_GNU = ["tar", "--owner=0", "--group=0", "--numeric-owner", "--sort=name"]
_BSD = ["bsdtar", "--uid", "0", "--gid", "0", "--uname", "root", "--gname", "root"]
LONG = "d/" + "l" * 60 + "/" + "n" * 70  # over 100 bytes: a GNU long name, a ustar prefix, a PAX path
_SPARSE_EXT = [0x1000 + 0x2000 * i for i in range(6)]  # more regions than an old GNU header holds


def _tree(root):
    """tar-rs's test files, in one tree: a file with an xattr (xattrs.tar), a symlink (link.tar),
    sparse files (sparse.tar's: data at the start, at the end, six regions that need GNU's
    extension header; sparse-1.tar's data at both ends, the last not a block long; no data),
    links whose name or target is over 100 bytes (pax2.tar), names with a newline, '=', '%',
    spaces at either end, a backslash, a control byte."""
    d = os.path.join(root, "d")
    os.makedirs(os.path.join(d, "sub"))
    os.makedirs(os.path.dirname(os.path.join(root, LONG)))
    files = {"d/a": b"hello\n", "d/sub/b": b"x\n", LONG: b"long\n",
             "d/big": b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(938))}  # 30016 bytes
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    os.setxattr(os.path.join(d, "a"), "user.pax.flags", b"epm")
    os.symlink("a", os.path.join(d, "lnk"))
    os.link(os.path.join(d, "a"), os.path.join(d, "sub", "ha"))
    # links whose names and targets need a GNU long link or a PAX linkpath (no ustar, no v7)
    e = os.path.join(root, "e")
    os.makedirs(os.path.join(e, "t" * 90))
    with open(os.path.join(e, "t" * 90, "f" * 30), "wb") as f:
        f.write(b"target\n")
    os.symlink("../e/" + "t" * 90 + "/" + "f" * 30, os.path.join(e, "long-symlink"))
    os.link(os.path.join(e, "t" * 90, "f" * 30), os.path.join(e, "hardlink-to-a-long-name"))
    for n in ("new\nline", "k=v", "p%25", " lead", "trail ", "back\\slash", "\x01ctl", "x" * 120 + "\nz"):
        with open(os.path.join(e, n), "wb") as f:  # a PAX record's length, not its bytes, ends the value
            f.write(n.encode())
    os.symlink("new\nline", os.path.join(e, "link=\n"))
    os.link(os.path.join(e, "new\nline"), os.path.join(e, "hard\nlink"))
    with open(os.path.join(e, "t" * 90, "s" * 40), "wb") as f:  # a sparse file of a long name
        f.truncate(1 << 16)
        f.seek(8192)
        f.write(b"data")
    for name, regions, size in (("holes", [(0, b"0MB through\n"), (1 << 20, b"1MB through\n")], (1 << 20) + 12),
                                ("ext", [(o, b"text\n") for o in _SPARSE_EXT], 0xc000),
                                ("sparse-begin", [(0, b"test\n")], 0x4000),
                                ("sparse-end", [(0x4000 - 9, b"test_end\n")], 0x4000),
                                ("all-hole", [], 0x4000)):
        with open(os.path.join(d, name), "wb") as f:
            f.truncate(size)
            for off, data in regions:
                f.seek(off)
                f.write(data)
    for top in (d, e):
        for dirpath, dirnames, filenames in os.walk(top, topdown=False):
            for n in filenames + dirnames + [""]:
                os.utime(os.path.join(dirpath, n), (_MTIME, _MTIME), follow_symlinks=False)
    # times a ustar field cannot hold (base-256 in GNU's formats, PAX records), and a fraction
    for n, t in (("before-1970", -_MTIME), ("after-2242", 100 * _MTIME), ("fraction", _MTIME + 0.5)):
        with open(os.path.join(e, n), "wb") as f:
            f.write(n.encode())
        os.utime(os.path.join(e, n), (t, t))
    os.utime(e, (_MTIME, _MTIME))


def _write_all(root):
    """name -> archive bytes, each written by the tool in ``root``."""
    out = {}

    def run(*argv):
        subprocess.run(argv, cwd=root, check=True, capture_output=True)

    def take(name, path):
        with open(os.path.join(root, path), "rb") as f:
            out[name] = f.read()
        os.unlink(os.path.join(root, path))

    _tree(root)
    for fmt in ("v7", "oldgnu", "gnu", "ustar", "posix"):
        # v7 holds no name over 100 bytes, ustar no link target.  (--xattrs makes GNU tar write
        # POSIX whatever --format says: these are five POSIX archives; GNU tar's own v7, ustar and
        # GNU headers are features/gnutar-FORMAT-without-xattrs.tar)
        members = {"v7": ["d/sub", "d/a", "d/lnk"], "ustar": ["d"]}.get(fmt, ["d", "e"])
        run(*_GNU, f"--format={fmt}", "--xattrs", "--sparse", "-cf", "o.tar", *members)
        take(f"gnutar/{fmt}.tar", "o.tar")
    for version in ("0.0", "0.1", "1.0"):
        run(*_GNU, "--format=posix", "--sparse", f"--sparse-version={version}", "-cf", "o.tar", "d")
        take(f"gnutar/posix-sparse-{version}.tar", "o.tar")
    # tar-rs's sparse-large.tar, made by its tests/archives/sparse-n.sh: a file of N + 1 regions a
    # MiB apart ("iMB through" at each), here N = 2000 (2 GiB; tar-rs's N of about 12,000 makes
    # 12 GiB, which takes the references half a minute to write out): 96 GNU extension blocks,
    # a PAX 1.0 map of 4,000 numbers
    big = os.path.join(root, "big")
    os.makedirs(big)
    with open(os.path.join(big, "a.big"), "wb") as f:
        for i in range(2001):
            f.seek(i << 20)
            f.write(b"%dMB through\n" % i)
    for path in (os.path.join(big, "a.big"), big):
        os.utime(path, (_MTIME, _MTIME))
    for fmt, extra in (("gnu", ()), ("posix", ("--sparse-version=1.0",))):
        run(*_GNU, f"--format={fmt}", "--sparse", *extra, "-cf", "o.tar", "big")
        take(f"gnutar/sparse-many-regions-{fmt}.tar", "o.tar")
    # and as PAX 0.0 (4,002 GNU.sparse.offset/numbytes records, in order, in one header) and 0.1
    # (one GNU.sparse.map record of 4,002 numbers)
    for version in ("0.0", "0.1"):
        run(*_GNU, "--format=posix", "--sparse", f"--sparse-version={version}", "-cf", "o.tar", "big")
        take(f"gnutar/sparse-many-regions-posix-{version}.tar", "o.tar")
    os.unlink(os.path.join(big, "a.big"))
    # volume labels: a 'V' header (GNU), a global GNU.volume.label record (POSIX)
    run(*_GNU, "--format=gnu", "-V", "My Label", "-cf", "o.tar", "d/sub")
    take("gnutar/gnu-volume-label.tar", "o.tar")
    run(*_GNU, "--format=posix", "-V", "PaxLabel", "-cf", "o.tar", "d/sub")
    take("gnutar/posix-volume-label.tar", "o.tar")
    # multi-volume sets of 20 KiB volumes: d/big runs over into the second; GNU format continues
    # it in an 'M' header (after a 'V' label with -V), POSIX in a file d/GNUFileParts/big.2
    # under global GNU.volume.* records
    for fmt, label in (("gnu", ()), ("gnu", ("-V", "Set")), ("posix", ())):
        name = f"gnutar/{fmt}-multivolume{'-labelled' if label else ''}"
        run(*_GNU, f"--format={fmt}", *label, "-M", "-L", "20", "-f", "v1.tar", "-f", "v2.tar", "-f", "v3.tar",
            "-c", "d/big", "d/sub")
        for i in (1, 2, 3):
            if os.path.exists(os.path.join(root, f"v{i}.tar")):
                take(f"{name}-{i}.tar", f"v{i}.tar")
    # incremental dumps: 'D' headers whose data lists the directory (GNU.dumpdir in POSIX)
    for fmt in ("gnu", "posix"):
        run(*_GNU, f"--format={fmt}", "-g", f"{fmt}.snar", "-cf", "o.tar", "d/sub")
        take(f"gnutar/{fmt}-incremental-0.tar", "o.tar")
    os.unlink(os.path.join(root, "d/sub/b"))
    with open(os.path.join(root, "d/sub/c"), "wb") as f:
        f.write(b"new\n")
    os.utime(os.path.join(root, "d/sub/c"), (_MTIME + 1, _MTIME + 1))
    for fmt in ("gnu", "posix"):
        run(*_GNU, f"--format={fmt}", "-g", f"{fmt}.snar", "-cf", "o.tar", "d/sub")
        take(f"gnutar/{fmt}-incremental-1.tar", "o.tar")
    # names that are no UTF-8 (PAX: GNU tar writes the bytes, bsdtar adds hdrcharset=BINARY) and an
    # xattr name that is no ASCII (bsdtar writes its SCHILY and LIBARCHIVE records percent-encoded)
    u = os.path.join(root, "u")
    os.makedirs(u)
    with open(os.path.join(u.encode(), b"caf\xe9"), "wb") as f:
        f.write(b"x")
    os.setxattr(os.path.join(u.encode(), b"caf\xe9"), "user.n\u00e4me", b"v")
    os.symlink(b"caf\xe9", os.path.join(u.encode(), b"ln\xff"))
    for writer, tool, fmt in (("gnutar", _GNU, "gnu"), ("gnutar", _GNU, "posix"), ("bsdtar", _BSD, "gnutar"),
                              ("bsdtar", _BSD, "pax")):
        run(*tool, f"--format={fmt}", "--xattrs", "-cf", "o.tar", "u")
        take(f"{writer}/{fmt}-not-utf8.tar", "o.tar")
    # libarchive's writers: its GNU tar, ustar, v7 and pax (restricted or not) formats
    for fmt in ("gnutar", "ustar", "v7", "pax", "paxr"):
        members = {"v7": ["d/sub", "d/a", "d/lnk"], "ustar": ["d"]}.get(fmt, ["d", "e"])
        run(*_BSD, f"--format={fmt}", "--xattrs", "-cf", "o.tar", *members)
        take(f"bsdtar/{fmt}.tar", "o.tar")
    return out


# --- the tar features real archives carry, each written by the tool that writes it ----------------
# gnutar/ and bsdtar/ above are the formats; these are the features archives carry beside them:
# ACLs (GNU tar's and bsdtar's --acls: SCHILY.acl.* records, and with --xattrs GNU tar's
# SCHILY.xattr.system.posix_acl_*), SELinux labels (GNU tar's --selinux: RHT.security.selinux;
# bsdtar's SCHILY and LIBARCHIVE xattr records), global PAX headers whose records would change
# the entries after them (GNU tar's --pax-option KEY=VALUE, CPython's pax_headers), extended
# headers of odd names (--pax-option exthdr.name=..), GNU tar's own v7/ustar/GNU headers, sparse
# files past 8 GiB and over volumes, archives joined by GNU tar -A and by cat (end blocks between
# them: every reader stops there), garbage after the end blocks, no end blocks, a Debian
# package's data.tar as dpkg-deb writes it (GNU tar's format under "./", in each compression),
# umoci's and tarlz's archives, and cpio and ar, which no layer is.
_FEATURE_TOOLS = ("tar", "bsdtar", "dpkg-deb", "cpio", "umoci", "tarlz")


def _posix_acl(*entries):
    """The system.posix_acl_* xattr value of (tag, perm, id) entries (acl_ea.h: version 2)."""
    import struct
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


def _ar_members(data):
    """name -> bytes of an ar archive (a .deb): 60-byte headers, members padded to even sizes."""
    assert data.startswith(b"!<arch>\n"), data[:8]
    out, at = {}, 8
    while at < len(data):
        head = data[at:at + 60]
        name, size = head[:16].strip().rstrip(b"/").decode(), int(head[48:58])
        out[name] = data[at + 60:at + 60 + size]
        at += 60 + size + (size & 1)
    return out


def _feature_archives(root):
    """features/NAME -> the bytes the tool NAME names writes."""
    import tarfile
    out = {}

    def run(*argv, cwd=root, env=None):
        return subprocess.run(argv, cwd=cwd, check=True, capture_output=True,
                              env=dict(os.environ, **(env or {}))).stdout

    def take(path):
        with open(os.path.join(root, path), "rb") as f:
            data = f.read()
        os.unlink(os.path.join(root, path))
        return data

    def times(top):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, top), topdown=False):
            for n in filenames + dirnames + [""]:
                os.utime(os.path.join(dirpath, n), (_MTIME, _MTIME), follow_symlinks=False)

    # a directory with a default ACL (what its new files would inherit) and a file whose access
    # ACL names another user, its mask wider than the group's bits (mode 0674 to ls)
    no_id = 0xFFFFFFFF
    acl = os.path.join(root, "acl")
    os.makedirs(os.path.join(acl, "d"))
    with open(os.path.join(acl, "d", "f"), "wb") as f:
        f.write(b"acl\n")
    with open(os.path.join(acl, "plain"), "wb") as f:
        f.write(b"no acl\n")
    os.setxattr(os.path.join(acl, "d", "f"), "system.posix_acl_access",
                _posix_acl((0x01, 6, no_id), (0x02, 7, 1000), (0x04, 4, no_id), (0x10, 7, no_id), (0x20, 4, no_id)))
    os.setxattr(os.path.join(acl, "d"), "system.posix_acl_default",
                _posix_acl((0x01, 7, no_id), (0x02, 5, 1000), (0x04, 5, no_id), (0x10, 7, no_id), (0x20, 5, no_id)))
    times("acl")
    # (--acls, as --xattrs, makes GNU tar write POSIX whatever --format says)
    run(*_GNU, "--format=posix", "--acls", "-cf", "o.tar", "acl")
    out["features/gnutar-posix-acls.tar"] = take("o.tar")
    run(*_GNU, "--format=posix", "--acls", "--xattrs", "-cf", "o.tar", "acl")
    out["features/gnutar-posix-acls-and-xattrs.tar"] = take("o.tar")
    run(*_BSD, "--format=pax", "--acls", "-cf", "o.tar", "acl")
    out["features/bsdtar-pax-acls.tar"] = take("o.tar")
    # an SELinux label (the kernel keeps security.selinux as it is when no LSM claims it)
    sel = os.path.join(root, "sel")
    os.makedirs(sel)
    with open(os.path.join(sel, "shadow"), "wb") as f:
        f.write(b"root:*:1::::::\n")
    os.setxattr(os.path.join(sel, "shadow"), "security.selinux", b"system_u:object_r:shadow_t:s0")
    times("sel")
    run(*_GNU, "--format=posix", "--selinux", "-cf", "o.tar", "sel")
    out["features/gnutar-posix-selinux.tar"] = take("o.tar")
    run(*_BSD, "--format=pax", "--xattrs", "-cf", "o.tar", "sel")
    out["features/bsdtar-pax-selinux.tar"] = take("o.tar")
    # global records that would change every later entry: GNU tar applies a global header's
    # records, bsdtar ignores them, Go hands it on as an entry that docker and containerd skip
    plain = os.path.join(root, "plain")
    os.makedirs(os.path.join(plain, "sub"))
    for name in ("a", "sub/b"):
        with open(os.path.join(plain, name), "wb") as f:
            f.write(name.encode() + b"\n")
    times("plain")
    run(*_GNU, "--format=posix", "--pax-option=uid=4242,gid=4243,mtime=12345,uname=nobody4242",
        "-cf", "o.tar", "plain")
    out["features/gnutar-pax-global-owner-and-time.tar"] = take("o.tar")
    # the names of the extended headers themselves, from templates: absolute, with '..'
    run(*_GNU, "--format=posix", "--pax-option=exthdr.name=../../%d/x-%f,globexthdr.name=/etc/g-%n",
        "--pax-option=comment:=per entry,note=global", "-cf", "o.tar", "plain")
    out["features/gnutar-pax-header-names.tar"] = take("o.tar")
    buf = os.path.join(root, "py.tar")
    with tarfile.open(buf, "w", format=tarfile.PAX_FORMAT,
                      pax_headers={"uid": "4242", "gid": "4243", "mtime": "12345", "path": "global-name"}) as tf:
        for name in ("plain", "plain/a", "plain/sub", "plain/sub/b"):
            tf.add(os.path.join(root, name), arcname=name, recursive=False)
    out["features/python-pax-global-owner-time-and-path.tar"] = take("py.tar")
    # GNU tar's own formats, really: gnutar/FORMAT.tar above are written with --xattrs, which makes
    # GNU tar write POSIX whatever --format says (ustar magic, 'x' headers), so old GNU sparse
    # headers ('S', with extension blocks past 4 regions), GNU long names ('L', 'K'), base-256
    # times and the v7 and ustar headers of GNU tar are written here without it.  v7 and ustar
    # take no --sparse ("GNU features wanted on incompatible archive format"): the sparse files
    # are written dense
    _tree(root)
    for fmt in ("v7", "ustar", "oldgnu", "gnu"):
        members = {"v7": ["d/sub", "d/a", "d/lnk", "d/ext", "d/sparse-end", "d/all-hole"],
                   "ustar": ["d"]}.get(fmt, ["d", "e"])
        sparse = ["--sparse"] if fmt in ("oldgnu", "gnu") else []
        run(*_GNU, f"--format={fmt}", *sparse, "-cf", "o.tar", *members)
        out[f"features/gnutar-{fmt}-without-xattrs.tar"] = take("o.tar")
    # a sparse file of a name over 100 bytes (e/ttt.../sss...) in each PAX sparse form: GNU.sparse.name
    # (0.0, 0.1) or the PAX path of GNUSparseFile.N beside GNU.sparse.name (1.0) names it
    for version in ("0.0", "0.1", "1.0"):
        run(*_GNU, "--format=posix", "--sparse", f"--sparse-version={version}", "-cf", "o.tar", "e")
        out[f"features/gnutar-posix-sparse-{version}-long-name.tar"] = take("o.tar")
    # a sparse file of 10 GiB, data past 8 GiB: the old GNU header's offsets and real size past
    # what 11 octal digits hold, in base-256; the PAX formats' records (holes cost no disk, and
    # treecmp reads none of them)
    huge = os.path.join(root, "huge")
    os.makedirs(huge)
    with open(os.path.join(huge, "sparse"), "wb") as f:
        f.truncate(10 << 30)
        f.seek(9 << 30)
        f.write(b"past 8 GiB\n")
        f.seek((10 << 30) - 4)
        f.write(b"end\n")
    times("huge")
    for fmt, version in (("oldgnu", ""), ("gnu", ""), ("posix", "0.0"), ("posix", "0.1"), ("posix", "1.0")):
        run(*_GNU, f"--format={fmt}", "--sparse", *([f"--sparse-version={version}"] if version else []),
            "-cf", "o.tar", "huge")
        out[f"features/gnutar-{fmt}{version}-sparse-past-8-gib.tar"] = take("o.tar")
    os.unlink(os.path.join(huge, "sparse"))
    # a sparse file run over three volumes of 40 KiB (7 regions of 9,000 bytes in 200,000): the
    # GNU format continues its data in 'M' headers, POSIX in mv/GNUFileParts/sparse.N files under
    # GNU.volume.* records, each piece whole or cut where its volume ends
    mv = os.path.join(root, "mv")
    os.makedirs(mv)
    with open(os.path.join(mv, "sparse"), "wb") as f:
        f.truncate(200_000)
        for off in range(0, 200_000, 30_000):
            f.seek(off)
            f.write(hashlib.sha256(b"%d" % off).digest() * 281)
    times("mv")
    for fmt in ("gnu", "posix"):
        run(*_GNU, f"--format={fmt}", "--sparse", "-M", "-L", "40", *(a for i in (1, 2, 3) for a in ("-f", f"v{i}.tar")),
            "-c", "mv")
        for i in (1, 2, 3):
            out[f"features/gnutar-{fmt}-multivolume-sparse-{i}.tar"] = take(f"v{i}.tar")
    os.unlink(os.path.join(mv, "sparse"))
    # a level-1 incremental dump after a directory was renamed, another removed and one made: 'D'
    # headers (GNU.dumpdir records in POSIX) for each directory, their atime and ctime set (bytes
    # CPython's tarfile reads as a ustar prefix), the moved file dumped again under its new name
    inc = os.path.join(root, "inc")
    for d in ("a/b", "c"):
        os.makedirs(os.path.join(inc, d))
    for name in ("a/b/f", "c/g"):
        with open(os.path.join(inc, name), "wb") as f:
            f.write(name.encode() + b"\n")
    times("inc")
    for fmt in ("gnu", "posix"):
        run(*_GNU, f"--format={fmt}", "-g", f"inc-{fmt}.snar", "-cf", "o.tar", "inc")
        os.unlink(os.path.join(root, "o.tar"))
    os.rename(os.path.join(inc, "a"), os.path.join(inc, "renamed"))
    shutil.rmtree(os.path.join(inc, "c"))
    os.makedirs(os.path.join(inc, "new"))
    with open(os.path.join(inc, "new", "h"), "wb") as f:
        f.write(b"new\n")
    for fmt in ("gnu", "posix"):
        run(*_GNU, f"--format={fmt}", "-g", f"inc-{fmt}.snar", "-cf", "o.tar", "inc")
        out[f"features/gnutar-{fmt}-incremental-after-a-rename.tar"] = take("o.tar")
    # archives joined: GNU tar -A drops the first one's end blocks; cat keeps them between the two,
    # where GNU tar (without --ignore-zeros), bsdtar and Go stop: the second is not read
    os.makedirs(os.path.join(root, "two"))
    with open(os.path.join(root, "two", "b"), "wb") as f:
        f.write(b"second archive\n")
    times("two")
    run(*_GNU, "-cf", "one.tar", "plain")
    run(*_GNU, "-cf", "two.tar", "two")
    first, second = take("one.tar"), take("two.tar")
    with open(os.path.join(root, "joined.tar"), "wb") as f:
        f.write(first)
    with open(os.path.join(root, "two.tar"), "wb") as f:
        f.write(second)
    run("tar", "-A", "-f", "joined.tar", "two.tar")
    os.unlink(os.path.join(root, "two.tar"))
    out["features/gnutar-concatenated.tar"] = take("joined.tar")
    # a labelled archive joined after another: a 'V' header (GNU), a global GNU.volume.label
    # header (POSIX) in the middle of the archive
    for fmt in ("gnu", "posix"):
        run(*_GNU, f"--format={fmt}", "-cf", "joined.tar", "two")
        run(*_GNU, f"--format={fmt}", "-V", "Label", "-cf", "labelled.tar", "plain")
        run("tar", "-A", "-f", "joined.tar", "labelled.tar")
        os.unlink(os.path.join(root, "labelled.tar"))
        out[f"features/gnutar-{fmt}-concatenated-labelled.tar"] = take("joined.tar")
    out["features/cat-two-archives.tar"] = first + second
    out["features/trailing-garbage.tar"] = first + hashlib.sha256(b"garbage").digest() * 100
    # the end blocks cut off (a writer killed before it closed the archive): what is whole is read
    end = len(first.rstrip(b"\0"))
    out["features/no-end-blocks.tar"] = first[:end + (-end % 512)]
    # a Debian package's data.tar: dpkg-deb runs GNU tar (--format=gnu, names under "./", the
    # root "./" itself first, a hardlink, a symlink), compressed as asked; xz (its default) is
    # no layer compression: refused, naming it
    pkg = os.path.join(root, "pkg")
    os.makedirs(os.path.join(pkg, "DEBIAN"))
    os.makedirs(os.path.join(pkg, "usr", "share", "doc", "p"))
    os.makedirs(os.path.join(pkg, "usr", "bin"))
    with open(os.path.join(pkg, "DEBIAN", "control"), "w") as f:
        f.write("Package: p\nVersion: 1.0\nArchitecture: all\nMaintainer: a <a@example.com>\nDescription: t\n")
    with open(os.path.join(pkg, "usr", "share", "doc", "p", "README"), "wb") as f:
        f.write(b"readme\n")
    os.symlink("../share/doc/p/README", os.path.join(pkg, "usr", "bin", "readme"))
    os.link(os.path.join(pkg, "usr", "share", "doc", "p", "README"), os.path.join(pkg, "usr", "share", "doc", "p", "HARD"))
    os.chmod(os.path.join(pkg, "usr", "bin"), 0o755)
    for z, ext in (("none", ""), ("gzip", ".gz"), ("xz", ".xz"), ("zstd", ".zst")):
        run("dpkg-deb", "--root-owner-group", f"-Z{z}", "-b", "pkg", "p.deb", env={"SOURCE_DATE_EPOCH": str(_MTIME)})
        deb = take("p.deb")
        members = _ar_members(deb)
        out[f"features/dpkg-deb-data.tar{ext}"] = members[f"data.tar{ext}"]
        if z == "gzip":
            out["features/dpkg-deb-control.tar.gz"] = members["control.tar.gz"]
            out["features/dpkg-deb-package.deb"] = deb  # the .deb itself: an ar archive, no layer
    # a layer as a packaged Go program writes it: umoci repack (Go's archive/tar, PAX xattrs on a
    # hardlink too, the root "./"), then a second layer of a whiteout, as umoci diffs a deletion
    layout, bundle = os.path.join(root, "layout"), os.path.join(root, "bundle")
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:x")
    run("umoci", "unpack", "--image", f"{layout}:x", bundle)
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(os.path.join(rootfs, "d", "sub"))
    with open(os.path.join(rootfs, "d", "a"), "wb") as f:
        f.write(b"umoci\n")
    os.setxattr(os.path.join(rootfs, "d", "a"), "user.k", b"v")
    os.link(os.path.join(rootfs, "d", "a"), os.path.join(rootfs, "d", "sub", "ha"))
    os.symlink("a", os.path.join(rootfs, "d", "lnk"))
    os.mkfifo(os.path.join(rootfs, "d", "fifo"))
    os.mknod(os.path.join(rootfs, "d", "null"), 0o20666, os.makedev(1, 3))
    os.makedirs(os.path.join(rootfs, "l" * 120))
    times(os.path.relpath(rootfs, root))
    run("umoci", "repack", "--image", f"{layout}:x", bundle)
    # (a repack diffs against the image the bundle was unpacked from: unpacked again for the second)
    run("umoci", "unpack", "--image", f"{layout}:x", bundle + "2")
    os.unlink(os.path.join(bundle + "2", "rootfs", "d", "lnk"))
    run("umoci", "repack", "--image", f"{layout}:x", bundle + "2")
    with open(os.path.join(layout, "index.json")) as f:
        manifest = json.load(f)["manifests"][0]["digest"].split(":")[1]
    with open(os.path.join(layout, "blobs", "sha256", manifest)) as f:
        layers = [d["digest"].split(":")[1] for d in json.load(f)["layers"]]
    for name, digest in zip(("umoci-repack-layer.tar.gz", "umoci-repack-whiteout-layer.tar.gz"), layers):
        with open(os.path.join(layout, "blobs", "sha256", digest), "rb") as f:
            out[f"features/{name}"] = f.read()
    # tarlz (lzip's archiver): POSIX headers of its own (GNU.crc32 records, hardlinks stored as
    # files), uncompressed; and its default lzip form, no layer compression: refused, naming lzip
    out["features/tarlz-uncompressed.tar"] = run("tarlz", "--uncompressed", "-cf", "-", "d", "e")
    out["features/tarlz.tar.lz"] = run("tarlz", "-cf", "-", "d")
    # cpio, which bsdtar and GNU cpio write and bsdtar also reads: no layer is one (docker,
    # containerd and GNU tar refuse it): refused, naming the format, plain or in gzip
    for fmt in ("cpio", "newc"):
        out[f"features/bsdtar-{fmt}.cpio"] = run("bsdtar", "--format", fmt, "-cf", "-", "plain")
    out["features/bsdtar-newc.cpio.gz"] = run("bsdtar", "--format", "newc", "-z", "-cf", "-", "plain")
    listing = run("find", "plain", "-print0")
    for fmt in ("bin", "odc", "newc", "crc"):
        out[f"features/gnucpio-{fmt}.cpio"] = subprocess.run(["cpio", "--quiet", "-0", "-o", "-H", fmt], cwd=root,
                                                            input=listing, check=True, capture_output=True).stdout
    return out


# --- archives git archive writes -----------------------------------------------------------------
# git's tar writer is its own (archive-tar.c): a global header whose 'comment' record is the
# commit's id, ustar prefixes for names up to 255 bytes and PAX 'path' records past them, PAX
# 'linkpath' for long symlink targets, modes from tar.umask (002), and its own gzip (git 2.38's
# internal "git archive gzip") for tar.gz; git's test suite checks its archives with tar, so
# they are written here, over a small repository, by the git of this machine.
_GIT_ENV = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@example.com", "GIT_AUTHOR_DATE": f"{_MTIME} +0000",
            "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@example.com",
            "GIT_COMMITTER_DATE": f"{_MTIME} +0000", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}


def _git_archives(root):
    """gitarchive/NAME -> the bytes git archive writes."""
    env = {**os.environ, **_GIT_ENV}

    def git(*argv):
        return subprocess.run(["git", *argv], cwd=root, env=env, check=True, capture_output=True).stdout

    git("init", "-q", ".")
    files = {"d/a": b"hello\n", "d/sub/b": b"x\n", "run.sh": b"#!/bin/sh\n",
             "l" * 60 + "/" + "m" * 60 + "/" + "n" * 40: b"prefix\n",  # a ustar prefix
             "p" * 100 + "/" + "q" * 100 + "/" + "r" * 80: b"pax path\n"}  # past 255: a PAX path
    for name, data in files.items():
        os.makedirs(os.path.join(root, os.path.dirname(name)) or root, exist_ok=True)
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    os.chmod(os.path.join(root, "run.sh"), 0o755)
    with open(os.path.join(root.encode(), b"caf\xe9"), "wb") as f:  # a name that is no UTF-8
        f.write(b"latin-1\n")
    os.symlink("d/a", os.path.join(root, "lnk"))
    os.symlink("../" + "t" * 120, os.path.join(root, "d", "long-target"))
    git("add", "-A")
    git("commit", "-q", "-m", "corpus")
    out = {"gitarchive/HEAD.tar": git("archive", "--format=tar", "HEAD"),
           "gitarchive/HEAD.tar.gz": git("archive", "--format=tar.gz", "HEAD"),
           # a tree, not a commit: no global header; a prefix on every name
           "gitarchive/tree-prefixed.tar": git("archive", "--format=tar", "--prefix=pre/fix/", "HEAD:d")}
    return out


def written(key):
    """The bytes of ``gnutar/NAME`` or ``bsdtar/NAME``, written by that tool on first use (and
    ``gitarchive/NAME``, by git)."""
    if key.startswith("features/"):
        if key not in _WRITTEN:
            from conftest import require_tool
            for tool in _FEATURE_TOOLS:
                require_tool(tool)
            with tempfile.TemporaryDirectory(prefix="lamina-written-features-") as root:
                _WRITTEN.update(_feature_archives(root))
        return _WRITTEN[key]
    if key.startswith("gitarchive/"):
        if key not in _WRITTEN:
            from conftest import require_tool
            require_tool("git")
            with tempfile.TemporaryDirectory(prefix="lamina-written-git-") as root:
                _WRITTEN.update(_git_archives(root))
        return _WRITTEN[key]
    if not any(k.startswith(("gnutar/", "bsdtar/")) for k in _WRITTEN):
        from conftest import require_tool
        require_tool("tar")
        require_tool("bsdtar")
        with tempfile.TemporaryDirectory(prefix="lamina-written-") as root:
            _WRITTEN.update(_write_all(root))
    return _WRITTEN[key]
