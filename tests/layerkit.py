"""Helpers shared by the extractor tests: oracles, compression, digests, sentinels."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import zlib

import pytest

from conftest import require_tool, run
from treecmp import compare, listing, snapshot

GNU_TAR_X = ["--xattrs", "--xattrs-include=*", "--same-owner", "--numeric-owner",
             "--same-permissions", "--delay-directory-restore"]


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return "sha256:" + h.hexdigest()


def gz(data, level=6):
    return gzip.compress(data, compresslevel=level, mtime=0)


def gz_all_header_fields(data, name=b"layer.tar"):
    """gzip whose member header has every optional field (FEXTRA, FNAME, FCOMMENT and the
    FHCRC header checksum), as zlib's gzsetheader writes it: valid for gzip(1) and Go."""
    import struct
    head = b"\x1f\x8b\x08" + bytes([4 | 8 | 16 | 2]) + b"\0\0\0\0\0\xff"
    head += struct.pack("<H", 6) + b"LA\x02\x00hi" + name + b"\0" + b"a comment\0"
    head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return head + c.compress(data) + c.flush() + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def gz_multimember(data):
    """gzip with two members (pigz/concatenation style): a valid gzip stream."""
    half = len(data) // 2
    return gz(data[:half]) + gz(data[half:])


def zst(data, *, content_size=True, frames=1):
    import zstandard
    if frames == 1:
        if content_size:
            return zstandard.ZstdCompressor(level=3).compress(data)
        cobj = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
        return cobj.compress(data) + cobj.flush()
    step = -(-len(data) // frames)
    return b"".join(zstandard.ZstdCompressor(level=3).compress(data[i:i + step])
                    for i in range(0, len(data), step))


def write(path, data):
    path = os.fspath(path)
    with open(path, "wb") as f:
        f.write(data)
    return path


def gnu_tar_extract(tarpath, dest):
    """The oracle: GNU tar as root, keeping owners, modes and every xattr."""
    require_tool("tar")
    os.makedirs(dest, exist_ok=True)
    run("tar", *GNU_TAR_X, "-xf", tarpath, "-C", dest)
    return dest


def apply(layer, dest, **kw):
    import lamina
    return lamina.apply_layer(os.fspath(layer) if isinstance(layer, os.PathLike) else layer,
                              os.fspath(dest), **kw)



def overlay_layers(tmp_path, tars, prefix="layer"):
    """Overlay-format layer dirs of ``tars`` (tarbuild.Tar, bottom first) in ``tmp_path``, each
    extracted over the ones below, as a finished image's layers are."""
    dirs = []
    for k, t in enumerate(tars):
        p = tmp_path / f"{prefix}{k}.tar"
        p.write_bytes(t.bytes())
        dirs.append(tmp_path / f"{prefix}{k}")
        dirs[-1].mkdir()
        apply(p, dirs[-1], format="overlay", lower_dirs=[os.fspath(x) for x in dirs[:-1]] or None)
    return dirs

class OnlyRead:
    """A binary stream with nothing but read() (like an HTTP response body)."""

    def __init__(self, data):
        self._b = io.BytesIO(data)

    def read(self, n=-1):
        return self._b.read(n)


class Guard:
    """Watches everything in tmp_path outside `dest`.

    Creates a sentinel directory (files, a subdir, a secret file) as a sibling
    of dest; `check()` asserts the sentinel is byte-for-byte and metadata
    unchanged (incl. dir mtimes and the sentinel root) and that no new path
    appeared anywhere in tmp_path outside dest.
    """

    def __init__(self, tmp_path, dest_name="dest"):
        self.tmp = tmp_path
        self.dest = tmp_path / dest_name
        self.dest.mkdir(exist_ok=True)
        self.sentinel = tmp_path / "sentinel"
        s = self.sentinel
        s.mkdir(exist_ok=True)
        (s / "secret").write_bytes(b"top secret\n")
        (s / "sub").mkdir(exist_ok=True)
        (s / "sub" / "file").write_bytes(b"sub file\n")
        os.chmod(s / "secret", 0o600)
        os.chmod(s, 0o750)
        for p in (s / "secret", s / "sub" / "file", s / "sub", s):
            os.utime(p, ns=(10**18, 10**18))
        self.outside_file = tmp_path / "outside.txt"
        self.outside_file.write_bytes(b"outside\n")
        os.utime(self.outside_file, ns=(10**18, 10**18))
        self._snap = self._take()
        self.root_ino = os.stat(self.dest).st_ino

    def _take(self):
        snap = snapshot(self.sentinel, include_root=True, dir_mtime=True)
        nlinks = {}
        for dirpath, dirnames, filenames in os.walk(self.sentinel):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                nlinks[p] = os.lstat(p).st_nlink
        st = os.lstat(self.outside_file)
        outside = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_mtime_ns,
                   self.outside_file.read_bytes())
        top = sorted(p.name for p in self.tmp.iterdir())
        # one and two levels up (pytest's base temp dirs): '../../x' from dest lands there.
        # Only names pytest itself would not create there are compared (other pytest
        # sessions create and prune test_*/pytest-* dirs concurrently).
        up1 = sorted(n for n in os.listdir(self.tmp.parent)
                     if not (n.startswith("test_") or n.endswith("current") or n == ".lock"))
        up2 = sorted(n for n in os.listdir(self.tmp.parent.parent)
                     if not (n.startswith(("pytest-", "garbage-")) or n == ".lock"))
        up = up1, up2
        return snap, (outside, nlinks), (top, up)

    def check(self):
        snap, outside, top = self._take()
        diff = compare(self._snap[0], snap, labels=("before", "after"))
        assert not diff, "the sentinel directory OUTSIDE dest was changed:\n" + diff
        assert outside[0] == self._snap[1][0], "a file outside dest was changed: %s" % self.outside_file
        assert outside[1] == self._snap[1][1], \
            f"link counts in the sentinel changed (hardlinked from dest?): {self._snap[1][1]} -> {outside[1]}"
        assert top[0] == self._snap[2][0], f"paths appeared/disappeared next to dest: {self._snap[2][0]} -> {top[0]}"
        assert top[1] == self._snap[2][1], f"paths appeared above tmp_path: {self._snap[2][1]} -> {top[1]}"
        st = os.lstat(self.dest)
        assert os.path.isdir(self.dest) and not os.path.islink(self.dest), "dest root was replaced"
        assert st.st_ino == self.root_ino, "dest root inode was replaced"
        for stray in ("/pwned", "/tmp/pwned", "/pwned-lamina-test"):
            assert not os.path.lexists(stray), f"something was written at {stray}"

    def tree(self):
        return listing(self.dest)


# --- OCI image layout reading (enough for umoci-built images) --------------

def read_layout(layout, ref):
    """-> (manifest, config, [(descriptor, diff_id, blob_path)]) for tag `ref`."""
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    descs = [m for m in index["manifests"]
             if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref]
    assert len(descs) == 1, f"ref {ref!r} not found once in {layout}/index.json"

    def blob(digest):
        algo, hexd = digest.split(":")
        return os.path.join(layout, "blobs", algo, hexd)

    with open(blob(descs[0]["digest"])) as f:
        manifest = json.load(f)
    with open(blob(manifest["config"]["digest"])) as f:
        config = json.load(f)
    diff_ids = config["rootfs"]["diff_ids"]
    assert len(diff_ids) == len(manifest["layers"])
    layers = [(d, diff_ids[i], blob(d["digest"])) for i, d in enumerate(manifest["layers"])]
    return manifest, config, layers


def inflate_layer(blob_path):
    data = open(blob_path, "rb").read()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


# --- running lamina as an unprivileged user --------------------------------

NOBODY = 65534


def world_tmpdir():
    """A fresh directory under /tmp that user nobody can enter (pytest's tmp is 0700)."""
    d = tempfile.mkdtemp(prefix="lamina-test-")
    os.chmod(d, 0o755)
    return d


_SETPRIV = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
_setpriv_ok = None


def _setpriv_works():
    """Can user nobody exec this interpreter and import lamina? (Not when it lives under /root.)"""
    global _setpriv_ok
    if _setpriv_ok is None:
        import sys
        try:
            p = subprocess.run(_SETPRIV + [sys.executable, "-c", "import lamina._extract"],
                               capture_output=True, timeout=60, cwd="/")
            _setpriv_ok = p.returncode == 0
        except OSError:
            _setpriv_ok = False
    return _setpriv_ok


def run_as_nobody(script, *args, timeout=120, preload=(), prefix=()):
    """Run `script` (python source) as user nobody (uid/gid 65534, no groups), argv[1:] = args.

    Preferred: `setpriv --reuid=65534 --regid=65534 --clear-groups python -c ...`.
    When nobody cannot exec the interpreter (pyenv under /root, mode 0700, as on
    the dev machines and CI), the child starts as root, imports lamina and warms
    it up (so no lazy import needs /root later), then drops to the same end
    state with setgroups([]) / setresgid / setresuid (every capability is lost
    on the 0 -> non-zero uid transition) and runs the script.  Either way the
    child first proves it is unprivileged: mknod of a char device must fail.
    ``preload`` names modules to import before the drop (lazy imports after it
    would need to read the interpreter's tree).  ``prefix``: a command that runs the
    child (e.g. strace with a fault injection).
    """
    require_tool("setpriv")
    import sys
    probe = (
        "try:\n"
        "    os.mknod('/tmp/.lamina-mknod-probe-%d' % os.getpid(), 0o600 | 0o020000, os.makedev(1, 3))\n"
        "    print('NOT-UNPRIVILEGED'); sys.exit(3)\n"
        "except PermissionError:\n"
        "    pass\n"
    )
    head = "import os, sys, io, json, tarfile\nimport lamina, lamina.errors\n"
    # modules the script needs, imported while the interpreter's tree is still readable
    head += "".join(f"import {m}\n" for m in preload)
    if _setpriv_works():
        cmd = _SETPRIV + [sys.executable, "-c", head + probe + script, *map(str, args)]
    else:
        drop = (
            "_w = io.BytesIO()\n"
            "with tarfile.open(fileobj=_w, mode='w') as _t: _t.addfile(tarfile.TarInfo('warm'))\n"
            "import tempfile, shutil\n"
            "_d = tempfile.mkdtemp()\n"
            "lamina.apply_layer(io.BytesIO(_w.getvalue()), _d); shutil.rmtree(_d)\n"
            "os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)\n"
        )
        cmd = [sys.executable, "-c", head + drop + probe + script, *map(str, args)]
    return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=timeout, cwd="/")


def rmtree(path):
    shutil.rmtree(path, ignore_errors=True)


def deflate_zeros(total, chunk=1 << 24):
    """gzip (raw bytes) of `total` zero bytes, built incrementally."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [c.compress(b"")]
    z = bytes(chunk)
    left = total
    while left > 0:
        n = min(chunk, left)
        out.append(c.compress(z[:n]))
        left -= n
    out.append(c.flush())
    return b"".join(out)


def gz_stream(*parts):
    """One gzip member over several byte parts (bytes or ("zeros", n))."""
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    out = []
    for p in parts:
        if isinstance(p, tuple):
            n = p[1]
            z = bytes(1 << 24)
            while n > 0:
                k = min(n, len(z))
                out.append(c.compress(z[:k]))
                n -= k
        else:
            out.append(c.compress(p))
    out.append(c.flush())
    return b"".join(out)


def exc_chain_text(exc):
    return str(exc) + " " + " ".join(str(a) for a in getattr(exc, "args", ()))


def need_lamina():
    """Import lamina (collection fails loudly if the package is missing)."""
    import lamina  # noqa: F401
    return lamina


skip_unless_root = pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                                      reason="needs root")
