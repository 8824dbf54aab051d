"""File-level sharing in the store (store/objects.py): a rebuilt image shares its unchanged files.

Oracles: the real CLI in subprocesses (copy, fsck, image prune, system df, config, unpack),
inode numbers on disk, the PyPI ``blake3`` package for the native hash, and fsck's own
comparison of every snapshot with a fresh extraction of its layer.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import blake3
import pytest

import ocibuild
from tarbuild import tarfile_bytes, ti
from verbkit import lamina_subprocess

MTIME = ocibuild.MTIME


def _files(n, seed, size=20_000):
    return {f"usr/share/pkg{seed}/f{i:03d}": (f"{seed}:{i}:".encode() * (size // 8))[:size] for i in range(n)}


def _layer(files, extra=()):
    """A tar of regular files (sorted), then ``extra`` (TarInfo, data) members."""
    members = [(ti(name), data) for name, data in sorted(files.items())]
    return tarfile_bytes(members + list(extra))


def _special_members(mtime=MTIME):
    """A layer hardlink pair, a setuid binary and a file with an xattr, all with shareable content."""
    suid = ti("usr/bin/su", mode=0o4755, mtime=mtime)
    pair = ti("usr/bin/pair-a", mtime=mtime)
    link = ti("usr/bin/pair-b", tarfile.LNKTYPE, linkname="usr/bin/pair-a")
    xattr = ti("usr/bin/capped", mtime=mtime, pax_headers={"SCHILY.xattr.user.note": "hello"})
    return [(suid, b"setuid body" * 100), (pair, b"pair body" * 100), (link, None), (xattr, b"xattr body" * 100)]


BASE = _files(40, "base")
APP = _files(30, "app")


def build_images(layout_dir):
    """Image "a" and its rebuild "b": every layer changed in one file, so every digest differs.

    b also has one file whose content is unchanged but whose mtime moved (a rebuild touched it).
    """
    lay = ocibuild.Layout(layout_dir)
    base_b = dict(BASE, **{"usr/share/pkgbase/f000": b"patched security fix"})
    app_b = dict(APP, **{"usr/share/pkgapp/f000": b"new app build"})
    layers = {
        "a": [_layer(BASE, _special_members()), _layer(APP)],
        "b": [_layer(base_b, _special_members()),
              _layer(app_b, [(ti("usr/share/touched", mtime=MTIME + 60), APP["usr/share/pkgapp/f001"])])],
    }
    for ref, tars in layers.items():
        lay.image_of_tars(tars, ref)
    return lay


def _chains(root, ref):
    out = lamina_subprocess(root, "inspect", ref).stdout
    diff_ids = json.loads(out)[0]["RootFS"]["Layers"]
    from lamina.store.image import chain_ids
    return chain_ids(diff_ids)


def _fs(root, chain):
    return os.path.join(root, "snapshots", chain.split(":")[1], "fs")


def _ino(root, chain, rel):
    return os.lstat(os.path.join(_fs(root, chain), rel)).st_ino


def _fsck_clean(root):
    proc = lamina_subprocess(root, "fsck", "--json", check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["findings"] == [], report["findings"]
    return report


@pytest.fixture
def images(tmp_path):
    build_images(tmp_path / "layout")
    return tmp_path / "layout"


def _copy(root, layout, ref):
    lamina_subprocess(root, "copy", f"oci:{layout}:{ref}", f"{ref}:1")


def _store_with_a_and_b(tmp_path, images):
    """A store holding image a and its rebuild b; (root, a's chainIDs)."""
    root = tmp_path / "root"
    _copy(root, images, "a")
    _copy(root, images, "b")
    return root, _chains(root, "a:1")


def test_native_blake3_matches_the_reference(tmp_path):
    from lamina import _objects
    for n in (0, 1, 1024, 1025, 64 << 10, (1 << 20) + 3, 3 << 20):
        data = os.urandom(n)
        path = tmp_path / "f"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.lseek(fd, 7, os.SEEK_SET)  # hash_fd reads from offset 0 whatever the fd's offset
            assert _objects.hash_fd(fd) == (blake3.blake3(data).hexdigest(), n)
        finally:
            os.close(fd)
        assert _objects.hash_bytes(data) == blake3.blake3(data).hexdigest()


def test_rebuilt_image_shares_its_unchanged_files(tmp_path, images):
    root, a = _store_with_a_and_b(tmp_path, images)
    b = _chains(root, "b:1")
    assert set(a).isdisjoint(b), "the rebuild must change every chainID for this test to mean anything"
    for rel in list(BASE)[1:]:
        assert _ino(root, a[0], rel) == _ino(root, b[0], rel), rel
    for rel in list(APP)[1:]:
        assert _ino(root, a[1], rel) == _ino(root, b[1], rel), rel
    # changed content: own inode
    assert _ino(root, a[0], "usr/share/pkgbase/f000") != _ino(root, b[0], "usr/share/pkgbase/f000")
    # same content, other mtime: not hardlinked, and it keeps its own mtime
    touched = os.lstat(os.path.join(_fs(root, b[1]), "usr/share/touched"))
    assert touched.st_ino != _ino(root, a[1], "usr/share/pkgapp/f001")
    assert touched.st_mtime == MTIME + 60
    # setuid and xattr files are shared with identical metadata
    for rel in ("usr/bin/su", "usr/bin/capped"):
        assert _ino(root, a[0], rel) == _ino(root, b[0], rel), rel
    su = os.lstat(os.path.join(_fs(root, b[0]), "usr/bin/su"))
    assert su.st_mode & 0o7777 == 0o4755
    assert os.getxattr(os.path.join(_fs(root, b[0]), "usr/bin/capped"), "user.note") == b"hello"
    # a hardlink of the layer stays a private pair (never an object)
    pa, pb = (os.lstat(os.path.join(_fs(root, b[0]), f"usr/bin/pair-{x}")) for x in "ab")
    assert pa.st_ino == pb.st_ino and pa.st_nlink == 2
    assert pa.st_ino != _ino(root, a[0], "usr/bin/pair-a")
    # fsck re-extracts every layer and compares: the shared snapshots read exactly as extracted
    report = _fsck_clean(root)
    assert report["checked"]["objects"] > 0

    from lamina.store import Store
    store = Store(root)
    digest = blake3.blake3(BASE["usr/share/pkgbase/f005"]).hexdigest()
    found = sorted((img.refs[0].familiar(), e.path) for img, _, e in store.find_files(blake3=digest))
    assert found == [("a:1", "usr/share/pkgbase/f005"), ("b:1", "usr/share/pkgbase/f005")]
    assert {img.refs[0].familiar() for img, _, _ in store.find_files(path="/usr/share/touched")} == {"b:1"}


def test_system_df_shows_what_sharing_saves(tmp_path, images):
    root, _ = _store_with_a_and_b(tmp_path, images)
    out = lamina_subprocess(root, "system", "df").stdout
    files_row = next(line for line in out.splitlines() if line.startswith("Files"))
    total, active = files_row.split()[1:3]
    # 40 + 30 unchanged-or-changed files, su, capped, the touched variant, and the 2 changed files
    assert int(total) == 40 + 30 + 2 + 1 + 2 and int(active) == 39 + 29 + 2
    verbose = lamina_subprocess(root, "system", "df", "-v").stdout
    assert "sharing saves" in verbose and "sharing saves 0B" not in verbose
    from lamina.store import Store
    usage = Store(root).file_usage()
    # b's shared files cost nothing more: saved is about one copy of each shared 20 kB file
    assert usage.saved >= (39 + 29) * 20_000


def test_dedup_can_be_switched_off(tmp_path, images):
    root = tmp_path / "root"
    lamina_subprocess(root, "config", "set", "dedup", "false")
    assert lamina_subprocess(root, "config", "get", "dedup").stdout.strip() == "false"
    _copy(root, images, "a")
    _copy(root, images, "b")
    a, b = _chains(root, "a:1"), _chains(root, "b:1")
    assert _ino(root, a[0], "usr/share/pkgbase/f005") != _ino(root, b[0], "usr/share/pkgbase/f005")
    assert not os.path.exists(root / "objects" / "blake3") or not any(os.scandir(root / "objects" / "blake3"))
    proc = lamina_subprocess(root, "config", "set", "dedup", "maybe", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("lamina: error: setting dedup: 'maybe' is not a boolean")


def test_gc_removes_objects_no_snapshot_uses(tmp_path, images):
    root, a = _store_with_a_and_b(tmp_path, images)
    shared = os.path.join(_fs(root, a[0]), "usr/share/pkgbase/f005")
    only_a = os.path.join(_fs(root, a[0]), "usr/share/pkgbase/f000")
    ino_only_a = os.lstat(only_a).st_ino
    lamina_subprocess(root, "rmi", "a:1")
    lamina_subprocess(root, "image", "prune", "-f")
    assert not os.path.exists(shared)
    names = {e.name for d in os.scandir(root / "objects" / "blake3") for e in os.scandir(d.path)}
    inodes = {os.lstat(os.path.join(root, "objects", "blake3", n[:2], n)).st_ino for n in names}
    assert ino_only_a not in inodes, "the object only a used must be gone"
    assert blake3.blake3(BASE["usr/share/pkgbase/f005"]).hexdigest() in {n.split(".")[0] for n in names}
    _fsck_clean(root)
    lamina_subprocess(root, "rmi", "b:1")
    lamina_subprocess(root, "image", "prune", "-a", "-f")
    assert [d for d in os.scandir(root / "objects" / "blake3") if any(os.scandir(d.path))] == []


def test_fsck_catches_an_object_changed_behind_lamina(tmp_path, images):
    root, a = _store_with_a_and_b(tmp_path, images)
    victim = os.path.join(_fs(root, a[0]), "usr/share/pkgbase/f007")
    st = os.lstat(victim)
    with open(victim, "r+b") as f:  # what a user writing through `unpack --link` would do
        f.write(b"X")
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = lamina_subprocess(root, "fsck", "--json", check=False)
    assert proc.returncode == 1
    kinds = {(f["kind"], f["severity"]) for f in json.loads(proc.stdout)["findings"]}
    assert ("bad-object", "error") in kinds
    digest = blake3.blake3(BASE["usr/share/pkgbase/f007"]).hexdigest()
    assert any(f["kind"] == "bad-object" and f["subject"].startswith(digest)
               for f in json.loads(proc.stdout)["findings"])
    lamina_subprocess(root, "fsck", "--repair", check=False)
    _fsck_clean(root)
    for ref in ("a:1", "b:1"):
        chain = _chains(root, ref)[0]
        with open(os.path.join(_fs(root, chain), "usr/share/pkgbase/f007"), "rb") as f:
            assert f.read() == BASE["usr/share/pkgbase/f007"], ref


def _big_layout(layout_dir, files=3000):
    lay = ocibuild.Layout(layout_dir)
    raw = _layer({f"d{i % 50}/f{i}": (b"%d" % (i % 700)) * 300 for i in range(files)})
    blob = lay.blob(raw)
    cdesc = lay.json_blob({"architecture": "amd64", "os": "linux", "config": {},
                           "rootfs": {"type": "layers", "diff_ids": [ocibuild.sha256(raw)]}}, ocibuild.OCI_CONFIG)
    lay.add(lay.json_blob({"schemaVersion": 2, "mediaType": ocibuild.OCI_MANIFEST, "config": cdesc,
                           "layers": [ocibuild.desc(ocibuild.OCI_LAYER, raw)]}, ocibuild.OCI_MANIFEST), "big")
    return blob


def test_kill_9_during_dedup_then_fsck_clean_and_rerun(tmp_path):
    """Kill the dedup pass at many points; fsck finds no error and a rerun finishes the job."""
    root = tmp_path / "root"
    _big_layout(tmp_path / "layout")
    lamina_subprocess(root, "config", "set", "dedup", "false")
    _copy(root, tmp_path / "layout", "big")
    lamina_subprocess(root, "config", "set", "dedup", "true")
    chain = _chains(root, "big:1")[0]
    sdir = os.path.dirname(_fs(root, chain))
    killed_mid_pass = 0
    for delay in (0.3, 0.45, 0.6, 0.75, 0.9, 1.1):
        if os.path.exists(os.path.join(sdir, "files.lz4")):
            break
        dest = tmp_path / f"dest-{delay}"
        proc = subprocess.Popen([sys.executable, "-m", "lamina", "--root", str(root), "unpack", "big:1", str(dest)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if os.path.isdir(root / "objects" / "blake3") and not os.path.exists(os.path.join(sdir, "files.lz4")):
            killed_mid_pass += 1
        report = json.loads(lamina_subprocess(root, "fsck", "--json", check=False).stdout)
        assert report["ok"], [f for f in report["findings"] if f["severity"] == "error"]
    assert killed_mid_pass, "no kill landed inside the dedup pass; the test proves nothing"
    lamina_subprocess(root, "fsck", "--repair")
    lamina_subprocess(root, "unpack", "big:1", str(tmp_path / "final"))
    assert os.path.exists(os.path.join(sdir, "files.lz4"))
    _fsck_clean(root)
    # 700 distinct contents: the rerun shared every duplicate
    fs = _fs(root, chain)
    inodes = {os.lstat(os.path.join(fs, f"d{i % 50}", f"f{i}")).st_ino for i in range(3000)}
    assert len(inodes) == 700


def test_parallel_pulls_share_files(tmp_path, images):
    root = tmp_path / "root"
    lamina_subprocess(root, "images")  # create the store once
    procs = [subprocess.Popen([sys.executable, "-m", "lamina", "--root", str(root), "copy",
                               f"oci:{images}:{ref}", f"{ref}:1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for ref in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    a, b = _chains(root, "a:1"), _chains(root, "b:1")
    for rel in list(BASE)[1:]:
        assert _ino(root, a[0], rel) == _ino(root, b[0], rel), rel
    _fsck_clean(root)


def test_unpack_does_not_hardlink_files_that_only_share_an_object(tmp_path):
    lay = ocibuild.Layout(tmp_path / "layout")
    raw = tarfile_bytes([(ti("x"), b"same bytes" * 50), (ti("y"), b"same bytes" * 50),
                         (ti("pair-a"), b"pair" * 50), (ti("pair-b", tarfile.LNKTYPE, linkname="pair-a"), None)])
    lay.blob(raw)
    cdesc = lay.json_blob({"architecture": "amd64", "os": "linux", "config": {},
                           "rootfs": {"type": "layers", "diff_ids": [ocibuild.sha256(raw)]}}, ocibuild.OCI_CONFIG)
    lay.add(lay.json_blob({"schemaVersion": 2, "mediaType": ocibuild.OCI_MANIFEST, "config": cdesc,
                           "layers": [ocibuild.desc(ocibuild.OCI_LAYER, raw)]}, ocibuild.OCI_MANIFEST), "twins")
    root = tmp_path / "root"
    _copy(root, tmp_path / "layout", "twins")
    fs = _fs(root, _chains(root, "twins:1")[0])
    assert os.lstat(os.path.join(fs, "x")).st_ino == os.lstat(os.path.join(fs, "y")).st_ino  # one object
    from lamina.store.objects import singletons
    assert singletons(os.path.dirname(fs)) == {"x", "y"}
    dest = tmp_path / "dest"
    lamina_subprocess(root, "unpack", "twins:1", str(dest))
    assert os.lstat(dest / "pair-a").st_ino == os.lstat(dest / "pair-b").st_ino  # the image's own hardlink
    assert os.lstat(dest / "x").st_ino != os.lstat(dest / "y").st_ino, "x and y are not hardlinked in the image"


@pytest.fixture
def xfs_dir(tmp_path):
    """A fresh XFS (reflinks on by default) on a loop device, unmounted afterwards."""
    from conftest import require_root, require_tool, run
    require_root()
    require_tool("mkfs.xfs")
    img, mnt = tmp_path / "xfs.img", tmp_path / "xfs"
    with open(img, "wb") as f:
        f.truncate(300 << 20)
    run("mkfs.xfs", "-q", img)
    mnt.mkdir()
    run("mount", "-o", "loop", img, mnt)
    try:
        yield mnt
    finally:
        run("umount", mnt)


def test_same_content_other_metadata_is_reflinked_where_the_filesystem_can(tmp_path, xfs_dir):
    from conftest import run
    big = os.urandom(2 << 20)
    lay = ocibuild.Layout(tmp_path / "layout")
    for ref, mtime in (("a", MTIME), ("b", MTIME + 60)):
        raw = tarfile_bytes([(ti("data/big", mtime=mtime), big), (ti("data/small", mtime=mtime), b"x" * 100)])
        lay.blob(raw)
        cdesc = lay.json_blob({"architecture": "amd64", "os": "linux", "config": {},
                               "rootfs": {"type": "layers", "diff_ids": [ocibuild.sha256(raw)]}}, ocibuild.OCI_CONFIG)
        lay.add(lay.json_blob({"schemaVersion": 2, "mediaType": ocibuild.OCI_MANIFEST, "config": cdesc,
                               "layers": [ocibuild.desc(ocibuild.OCI_LAYER, raw)]}, ocibuild.OCI_MANIFEST), ref)
    root = xfs_dir / "root"
    _copy(root, tmp_path / "layout", "a")
    _copy(root, tmp_path / "layout", "b")
    a, b = _chains(root, "a:1")[0], _chains(root, "b:1")[0]
    fa, fb = (os.path.join(_fs(root, c), "data/big") for c in (a, b))
    sa, sb = os.lstat(fa), os.lstat(fb)
    assert sa.st_ino != sb.st_ino and sb.st_mtime == MTIME + 60  # other metadata: never hardlinked
    with open(fb, "rb") as f:
        assert f.read() == big
    extents = run("filefrag", "-v", fb).stdout
    assert "shared" in extents, f"b's copy should share a's blocks (FICLONE):\n{extents}"
    _fsck_clean(root)
