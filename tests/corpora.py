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

``archive(key)`` returns (layer bytes as the project ships them, the plain tar or
None where it has no plain form).  Compressed forms: ``.tgz``/``.gz`` and ``.zst``
stay compressed as layers (lamina reads them); ``.Z`` and ``.bz2`` (which lamina
does not read) are inflated here.
"""
from __future__ import annotations

import base64
import binascii
import bz2
import glob
import gzip
import os
import re
import subprocess

from conftest import IN_CI

CACHE = os.environ.get("LAMINA_CORPORA", "/var/cache/lamina-corpora")
LIBARCHIVE = os.path.join(CACHE, "libarchive")
_GOCODE = {"moby": "docker/docker/pkg", "tarsplit": "vbatts/tar-split/tar/asm/testdata"}
_SOURCES = {"libarchive": "libarchive", "nodetar": "nodetar", "commons": "commons-compress",
            "busybox": "busybox"}  # corpus: its directory in CACHE (ci/fetch-corpora.sh)


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
        path = {"go": _go_dir(), "cpython": _cpython_dir()}.get(corpus) or os.path.join(CACHE, _SOURCES[corpus])
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


def archive(key):
    """(layer bytes, plain tar bytes or None) of ``corpus/name``."""
    corpus, name = key.split("/", 1)
    base = require_corpus(corpus)
    if corpus == "libarchive":
        data = uudecode(os.path.join(base, name + ".uu"))
    elif corpus == "busybox" and ":" in name:
        data = _script_archive(os.path.join(base, name.split(":")[0]), name.split(":")[1])
    else:
        with open(os.path.join(base, name), "rb") as f:
            data = f.read()
    if name.endswith(".Z"):
        data = _unZ(data)
    elif name.endswith((".bz2", "_bz2")):
        data = bz2.decompress(data)
    if name.endswith((".tgz", ".gz")):
        try:
            return data, gzip.decompress(data)
        except (OSError, EOFError):
            return data, None
    if name.endswith(".zst"):
        return data, _unzstd(data)
    return data, data


def other_libarchive_archives(known):
    """Every libarchive test archive not in ``known``: zip, rar, 7z, cpio, iso, xar..., and tars
    compressed in ways a layer never is."""
    base = require_corpus("libarchive")
    return sorted(n[:-3] for n in os.listdir(base) if n.endswith(".uu") and f"libarchive/{n[:-3]}" not in known)
