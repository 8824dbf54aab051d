"""A store whose filesystem says no: out of space or out of inodes in each phase of storing an
image.  Each failure is one `lamina: error:` line naming what failed (the layer, the entry or
the store's own file), the store stays consistent (fsck clean, earlier images intact, no staging
left), and the same command succeeds once the filesystem has room again.

tmpfs with `size=` / `nr_inodes=` stands in for a full disk: its limits are exact and a remount
raises them, so the retry runs on the very store that failed."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess

import pytest

import ocibuild as ob
from conftest import require_root
from storekit import lamina, seeded_bytes
from registryfixture import reg, registry_env, skopeo_push  # noqa: F401
from test_store_badinput import fails


@contextlib.contextmanager
def _tmpfs(path, **opts):
    os.makedirs(path, exist_ok=True)
    options = ",".join(f"{k}={v}" for k, v in opts.items())
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", os.fspath(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", os.fspath(path)], check=True)


def _remount(path, **opts):
    options = ",".join(f"{k}={v}" for k, v in opts.items())
    subprocess.run(["mount", "-o", f"remount,{options}", os.fspath(path)], check=True)


def _inodes_used(path):
    st = os.statvfs(path)
    return st.f_files - st.f_ffree


def _fill(path):
    """Take every free block of the filesystem holding ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with pytest.raises(OSError) as e:
            while True:
                os.write(fd, b"\xff" * (1 << 16))
        assert e.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def _fan_out(root):
    d = os.path.join(root, "objects", "blake3")
    return len(os.listdir(d)) if os.path.isdir(d) else 0


def _consistent(root, *, images, tmp_path, warnings=()):
    """fsck finds no error and no warning but ``warnings`` (substrings), only ``images`` are
    listed and each unpacks, no staging is left."""
    fsck = lamina(root, "fsck", check=False)
    assert fsck.returncode == 0 and " 0 errors, " in fsck.stdout, fsck.stdout + fsck.stderr
    for line in fsck.stdout.splitlines():
        assert not line.startswith("warning: ") or any(w in line for w in warnings), fsck.stdout
    listed = lamina(root, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert sorted(listed) == sorted(images), listed
    for i, ref in enumerate(images):
        lamina(root, "unpack", ref, tmp_path / f"check-{len(os.listdir(tmp_path))}-{i}")
    for sub in ("snapshots", "ingest", "blobs/sha256"):
        d = os.path.join(root, sub)
        left = [n for n in os.listdir(d) if ".tmp-" in n or ".trash-" in n] if os.path.isdir(d) else []
        assert not left, (sub, left)


@pytest.fixture
def layout(tmp_path):
    lay = ob.Layout(tmp_path / "lay")
    lay.add(lay.image([{"small.txt": b"small\n"}]), "small:1")
    # ~500 files of distinct content: the dedup pass makes most of the 256 objects/blake3/<xx> dirs
    lay.add(lay.image([{"n": None, **{f"n/f{i}": b"%d\n" % i for i in range(500)}}]), "many:1")
    lay.add(lay.image([{"big": None, "big/r.bin": seeded_bytes("r", 3 << 20)}]), "big:1")
    # small:1's layer under big:1's: the one a full disk stops is the second of two
    lay.add(lay.image([{"small.txt": b"small\n"}, {"big": None, "big/r.bin": seeded_bytes("r", 3 << 20)}]), "pair:1")
    lay.add(lay.image([{"z": None, "z/one.bin": b"one\n" * 1000}]), "one:1")
    # 3 MiB that gzip makes a few KiB: its blob always fits where its extraction cannot
    lay.add(lay.image([{"text": None, "text/t.txt": b"lamina layer text\n" * ((3 << 20) // 18)}]), "text:1")
    return lay


def test_running_out_of_inodes_in_the_dedup_pass_names_the_layer(tmp_path, layout):
    """The layer's files all fit, then the pass's objects/blake3/<xx> dirs found no inode.
    It said "lamina: error: 60: No space left on device": no layer, no store path; then the
    layer by its digest alone, where every other error of an image's layers says which it is."""
    require_root()
    src = f"oci:{layout.root}"
    with _tmpfs(tmp_path / "probe", nr_inodes=100000, size="64m") as probe:
        lamina(probe / "s", "copy", f"{src}:small:1", "small:1")
        before = _fan_out(probe / "s")
        lamina(probe / "s", "copy", f"{src}:many:1", "many:1")
        used, fan_out = _inodes_used(probe), _fan_out(probe / "s") - before
    assert fan_out > 100, fan_out
    with _tmpfs(tmp_path / "fs", nr_inodes=used - fan_out // 2, size="64m") as fs:
        root = fs / "s"
        lamina(root, "copy", f"{src}:small:1", "small:1")
        msg = fails(root, "copy", f"{src}:many:1", "many:1", match="No space left on device")
        assert msg.startswith(f"lamina: error: {layout.root}: layer 1 of 1 (sha256:"), msg
        assert "storing its snapshot failed: objects/blake3/" in msg, msg
        _consistent(root, images=["small:1"], tmp_path=tmp_path)
        _remount(fs, nr_inodes=100000)
        lamina(root, "copy", f"{src}:many:1", "many:1")
        _consistent(root, images=["small:1", "many:1"], tmp_path=tmp_path)


def test_a_full_disk_while_a_blob_is_ingested_names_the_blob(tmp_path, layout):
    """A 3 MiB incompressible layer copied into a store with 2 MiB free.
    It said "lamina: error: No space left on device", and nothing more; then the blob, but not
    which layer of the image it is (the second of two here)."""
    require_root()
    src = f"oci:{layout.root}"
    with _tmpfs(tmp_path / "fs", size="2m") as fs:
        root = fs / "s"
        lamina(root, "copy", f"{src}:small:1", "small:1")
        msg = fails(root, "copy", f"{src}:pair:1", "pair:1", match="No space left on device")
        assert msg.startswith(f"lamina: error: {layout.root}: layer 2 of 2: blob sha256:"), msg
        assert f"the store {root}" in msg, msg
        _consistent(root, images=["small:1"], tmp_path=tmp_path)
        _remount(fs, size="64m")
        lamina(root, "copy", f"{src}:pair:1", "pair:1")
        _consistent(root, images=["small:1", "pair:1"], tmp_path=tmp_path)


@pytest.mark.parametrize("image,named", [("big:1", "blob sha256:"), ("text:1", "entry 'text/t.txt'")],
                         ids=["blob", "extraction"])
def test_a_full_disk_during_a_pull_names_what_failed(tmp_path, layout, reg, registry_env, image, named):
    """2 MiB free: a 3 MiB incompressible layer's blob does not fit; a 3 MiB layer that gzip
    makes a few KiB fits as a blob and its extraction does not.  (A pull extracts while it
    downloads, so with one layer both big, which of the two fills the disk first is a race.)"""
    require_root()
    skopeo_push(f"oci:{layout.root}:small:1", reg.host, "small:1")
    skopeo_push(f"oci:{layout.root}:{image}", reg.host, image)
    with _tmpfs(tmp_path / "fs", size="2m") as fs:
        root = fs / "s"
        lamina(root, "pull", f"{reg.host}/small:1")
        msg = fails(root, "pull", f"{reg.host}/{image}", match="No space left on device")
        assert named in msg, msg
        assert msg.startswith("lamina: error: layer 1 of 1"), msg
        # what was fetched stays for the next pull to resume from, and fsck says so
        _consistent(root, images=[f"{reg.host}/small:1"], tmp_path=tmp_path,
                    warnings=("not used by any image", "resumed by the next pull", "free space"))
        _remount(fs, size="64m")
        lamina(root, "pull", f"{reg.host}/{image}")
        _consistent(root, images=[f"{reg.host}/small:1", f"{reg.host}/{image}"], tmp_path=tmp_path)


def test_fsck_on_a_full_disk_does_not_call_a_good_layer_bad(tmp_path, layout):
    """fsck extracts each layer again to compare it with its snapshot; on a full disk that
    extraction failed and fsck reported "error: ... layer sha256:... does not extract: entry
    'small.txt': write failed: No space left on device", exit 1: a good image called broken."""
    require_root()
    with _tmpfs(tmp_path / "fs", size="8m") as fs:
        root = fs / "s"
        lamina(root, "copy", f"oci:{layout.root}:small:1", "small:1")
        _fill(fs / "filler")
        for argv in (["fsck"], ["fsck", "--repair"]):
            proc = lamina(root, *argv, check=False)
            assert proc.returncode == 0 and " 0 errors, 1 warning" in proc.stdout, proc.stdout + proc.stderr
            assert "no room to extract its layer again to check it" in proc.stdout, proc.stdout
            assert "free space on the store's filesystem and run lamina fsck again" in proc.stdout, proc.stdout
        os.unlink(fs / "filler")
        _consistent(root, images=["small:1"], tmp_path=tmp_path)


def test_running_out_of_inodes_at_each_step_of_storing_a_layer_names_the_layer(tmp_path, layout):
    """A compact store (keep-blobs false) with 1 to 7 inodes too few for a one-file layer: the
    last inodes go to the snapshot's staging dir, its fs/ and hashed/ dirs, the file, meta.json,
    the file list and the sidecar.  Past the file's own entry, errors said only
    "lamina: error: /…/snapshots/.tmp-…/hashed: No space left on device"; then the layer and
    that staging path ("…/.tmp-<chainID>-<pid>-<random>/tmpjo3ic1jj" for the dedup pass's temp
    file), which names nothing the user knows: now what the file is, and the store."""
    require_root()
    src = f"oci:{layout.root}"

    def store_on(fs):
        root = fs / "s"
        lamina(root, "config", "set", "keep-blobs", "false")
        lamina(root, "copy", f"{src}:small:1", "small:1")
        return root

    with _tmpfs(tmp_path / "probe", nr_inodes=100000, size="64m") as probe:
        lamina(store_on(probe), "copy", f"{src}:one:1", "one:1")
        used = _inodes_used(probe)
    for missing in range(1, 8):
        with _tmpfs(tmp_path / f"fs{missing}", nr_inodes=used - missing, size="64m") as fs:
            root = store_on(fs)
            msg = fails(root, "copy", f"{src}:one:1", "one:1", match="No space left on device")
            assert msg.startswith(f"lamina: error: {layout.root}: layer 1 of 1 (sha256:"), (missing, msg)
            assert ".tmp-" not in msg, (missing, msg)
            if "storing its snapshot failed" in msg:
                assert msg.endswith(f" (in the store {root}): No space left on device"), (missing, msg)
            _consistent(root, images=["small:1"], tmp_path=tmp_path)
            _remount(fs, nr_inodes=100000)
            lamina(root, "copy", f"{src}:one:1", "one:1")
            _consistent(root, images=["small:1", "one:1"], tmp_path=tmp_path)


def test_a_full_disk_at_each_file_of_a_snapshot_names_the_file(tmp_path, layout):
    """one:1 copied into a store with 0, 1, 2, ... pages free, until it fits.  Past the layer's
    own entries, a full disk on the snapshot's meta.json, its objects and file lists or a temp
    file of the dedup pass said only "storing its snapshot failed: No space left on device"
    (a write through a Python file object names no file): now which file, and the store."""
    require_root()
    src = f"oci:{layout.root}"
    page = os.sysconf("SC_PAGE_SIZE")
    named = []
    for free in range(64):
        with _tmpfs(tmp_path / f"fs{free}", size="64m") as fs:
            root = fs / "s"
            lamina(root, "copy", f"{src}:small:1", "small:1")
            _fill(fs / "filler")
            os.truncate(fs / "filler", os.path.getsize(fs / "filler") - free * page)
            proc = lamina(root, "copy", f"{src}:one:1", "one:1", check=False)
            if proc.returncode == 0:
                break
            msg = proc.stderr.strip().splitlines()[-1]
            assert msg.endswith("No space left on device") and msg.startswith("lamina: error: "), (free, msg)
            if "storing its snapshot failed" in msg:
                assert msg.endswith(f" (in the store {root}): No space left on device"), (free, msg)
                named.append(msg.split("storing its snapshot failed: ")[1].split(" (in the store")[0])
            os.unlink(fs / "filler")
            _consistent(root, images=["small:1"], tmp_path=tmp_path)
    else:
        pytest.fail("one:1 never fitted")
    assert "meta.json" in named and "files.lz4" in named, named


@pytest.mark.parametrize("argv,named", [
    (["save", "-o", "{out}/a.tar", "big:1"], "{out}/a.tar"),
    (["copy", "big:1", "oci-archive:{out}/a.tar"], "{out}/a.tar"),
    (["copy", "big:1", "docker-archive:{out}/a.tar"], "{out}/a.tar"),
    (["copy", "big:1", "oci:{out}/lay:big"], "{out}/lay/blobs/sha256/"),
], ids=["save", "oci-archive", "docker-archive", "oci"])
def test_a_full_disk_while_writing_a_layer_out_names_the_file(tmp_path, layout, argv, named):
    """The 3 MiB layer of big:1 written where 2 MiB are free.  save and copy to an archive blamed
    the layer ("layer sha256:... (diffID ...): [Errno 28] No space left on device (expected
    ... bytes)"), copy to a layout said "No space left on device" alone."""
    require_root()
    root = tmp_path / "s"
    lamina(root, "copy", f"oci:{layout.root}:big:1", "big:1")
    with _tmpfs(tmp_path / "out", size="2m") as out:
        msg = fails(root, *[a.format(out=out) for a in argv], match="No space left on device")
        assert msg.startswith(f"lamina: error: {named.format(out=out)}"), msg
        left = [n for _, _, files in os.walk(out) for n in files if "tmp" in n]
        assert not left, left
        _remount(out, size="64m")
        lamina(root, *[a.format(out=out) for a in argv])
    _consistent(root, images=["big:1"], tmp_path=tmp_path)


@pytest.mark.parametrize("stdin", [False, True], ids=["file", "stdin"])
def test_a_full_disk_during_load_names_what_failed(tmp_path, layout, stdin):
    """load of a docker-archive holding a 3 MiB layer into a store with 2 MiB free.  From stdin
    the spool file filled the disk: "lamina: error: No space left on device", nothing more."""
    require_root()
    archive = tmp_path / "big.tar"
    lamina(tmp_path / "src", "copy", f"oci:{layout.root}:big:1", "big:1")
    lamina(tmp_path / "src", "save", "-o", archive, "big:1")
    argv = ["load"] if stdin else ["load", "-i", archive]

    def load(root, **kw):
        with open(archive, "rb") as f:
            return lamina(root, *argv, stdin=f, **kw) if stdin else lamina(root, *argv, **kw)

    with _tmpfs(tmp_path / "fs", size="2m") as fs:
        root = fs / "s"
        lamina(root, "copy", f"oci:{layout.root}:small:1", "small:1")
        with open(archive, "rb") as f:
            msg = fails(root, *argv, match="No space left on device", stdin=f if stdin else None)
        expected = (f"lamina: error: the archive on stdin: no room to spool it in the store {root}: " if stdin
                    else f"lamina: error: {archive}: image big:1 layer 1 of 1: blob sha256:")
        assert msg.startswith(expected), msg
        _consistent(root, images=["small:1"], tmp_path=tmp_path)
        _remount(fs, size="64m")
        load(root)
        _consistent(root, images=["small:1", "big:1"], tmp_path=tmp_path)


@pytest.mark.parametrize("source", ["store", "bundle", "oci", "docker"])
def test_a_full_dest_names_the_file_and_dest_on_every_unpack_source(tmp_path, reg, registry_env, source):  # noqa: F811
    """unpack into a DEST with 2 MiB free of an image of 24 files of 300 KiB.  It said
    "lamina: error: 'big/f3': cannot copy: No space left on device" without DEST (the entry
    alone does not say which disk is full: the store's or DEST's); from the store, most runs
    said "lamina: error: '.': cannot .: Success" (a copy thread had failed, and the walk
    stopped without an error of its own).  A layout or registry unpack names the layer too."""
    require_root()
    lay = ob.Layout(tmp_path / "lay")
    # above flatten's 256 KiB: each is copied on a worker thread, more than its queue holds
    lay.add(lay.image([{"big": None, **{f"big/f{i}": seeded_bytes(f"f{i}", 300 << 10) for i in range(24)}}]),
            "big:1")
    root = tmp_path / "s"
    if source == "docker":
        skopeo_push(f"oci:{lay.root}:big:1", reg.host, "fulldest:1")
        argv = [f"docker://{reg.host}/fulldest:1"]
    elif source == "oci":
        argv = [f"oci:{lay.root}:big:1"]
    else:
        lamina(root, "copy", f"oci:{lay.root}:big:1", "big:1")
        argv = ["--bundle", "big:1"] if source == "bundle" else ["big:1"]
    with _tmpfs(tmp_path / "fs", size="2m") as fs:
        dest = fs / "rootfs"
        msg = fails(root, "unpack", *argv, dest, match="No space left on device")
        assert msg.endswith(f"No space left on device (unpacking into {dest})"), msg
        entry = "entry 'big/f" if source in ("oci", "docker") else "lamina: error: 'big/f"
        assert entry in msg and "Success" not in msg, msg
        if source in ("oci", "docker"):
            assert msg.startswith("lamina: error: layer 1 of 1 (sha256:"), msg
        assert os.listdir(fs) == [], os.listdir(fs)   # no staging left
        _remount(fs, size="64m")
        lamina(root, "unpack", *argv, dest)
    if source in ("store", "bundle"):
        _consistent(root, images=["big:1"], tmp_path=tmp_path)


def test_rmi_on_a_store_out_of_inodes_says_what_to_do(tmp_path, layout):
    """Every inode taken: rmi (like tag and prune) must write the new index.json beside the old
    one, and said only "lamina: error: /…/index.json: No space left on device" on a disk whose
    blocks were mostly free: nothing told the user an inode, any, is what it needs."""
    require_root()
    src = f"oci:{layout.root}"
    with _tmpfs(tmp_path / "fs", nr_inodes=400, size="64m") as fs:
        root = fs / "s"
        lamina(root, "copy", f"{src}:small:1", "small:1")
        lamina(root, "copy", f"{src}:one:1", "one:1")
        os.mkdir(fs / "fill")
        with pytest.raises(OSError) as e:
            for i in range(1000):
                open(fs / "fill" / str(i), "w").close()
        assert e.value.errno == errno.ENOSPC and os.statvfs(fs).f_favail == 0
        for argv in (["rmi", "small:1"], ["image", "prune", "-af"]):
            msg = fails(root, *argv, match="no free inode")
            assert msg == (f"lamina: error: cannot update {root}/index.json: the store's filesystem has no free "
                           "inode, and even removing an image writes the new index.json beside the old one "
                           "first; remove a file on that filesystem (lamina fsck --repair removes the store's "
                           "unused content, if any) and run the command again"), msg
        _consistent(root, images=["small:1", "one:1"], tmp_path=tmp_path,
                    warnings=("no room to extract its layer again",))
        os.unlink(fs / "fill" / "0")   # one inode is all rmi needs
        lamina(root, "rmi", "small:1")
        _consistent(root, images=["one:1"], tmp_path=tmp_path)


# --- ext4's own limits, on every path (everypath.run_paths) ---

@contextlib.contextmanager
def _ext4(path, block_size):
    """A fresh 64 MiB ext4 (sparse image) with ``block_size`` mounted on ``path``."""
    from conftest import require_tool, run
    require_tool("mkfs.ext4")
    img = f"{path}.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    run("mkfs.ext4", "-q", "-F", "-b", str(block_size), img)
    os.makedirs(path, exist_ok=True)
    run("mount", "-o", "loop", img, path)
    try:
        yield path
    finally:
        import gc
        gc.collect()   # run_paths's Store objects hold fds on the mount
        if subprocess.run(["umount", os.fspath(path)]).returncode != 0:
            subprocess.run(["umount", "-l", os.fspath(path)], check=True)
        os.unlink(img)


def _refused_everywhere(work, layer, *needles):
    from everypath import PATHS, run_paths
    results = run_paths(work, [layer])
    assert set(results) == set(PATHS), results
    for path, err in results.items():
        assert isinstance(err, Exception), (path, err)
        assert all(n in str(err) for n in needles), (path, err)
    _consistent_store(work / "store")


def _consistent_store(root):
    fsck = lamina(root, "fsck", check=False)
    assert fsck.returncode == 0 and " 0 errors, 0 warnings" in fsck.stdout, fsck.stdout + fsck.stderr
    assert not os.listdir(root / "snapshots"), os.listdir(root / "snapshots")


@pytest.mark.parametrize("xattrs", [
    {f"user.k{i}": "v" * 1000 for i in range(6)},   # 6 KB: more than the one 4 KiB block ext4 gives an inode
    {"user.big": "v" * 65536},                      # one value of XATTR_SIZE_MAX (xfs keeps it)
], ids=["many", "one-64k"])
def test_xattrs_ext4_cannot_hold_on_one_inode_are_refused_by_entry_and_xattr_on_every_path(g, xattrs):
    """Every path said "entry 'd/f': set xattr 'user.k3' failed: No space left on device" on a
    disk with 50 MB free: the user frees space and fails again.  The error now says why."""
    require_root()
    from tarbuild import Tar
    layer = Tar().dir("d").pax({f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}.items()).file("d/f", b"x").bytes()
    with _ext4(g.dest / "ext4", 4096) as work:
        _refused_everywhere(work, layer, "entry 'd/f': set xattr 'user.", "No space left on device",
                            f"its {len(xattrs)} xattrs hold", "more than this filesystem keeps on one inode")


def test_a_sparse_file_past_ext4s_largest_file_is_refused_by_entry_on_every_path(g):
    """4 TiB of holes (within lamina's sparse limit) on an ext4 of 1 KiB blocks, whose files end
    before 4 TiB: refused by name on every path, nothing written out, the store clean.  No other
    test meets EFBIG (tmpfs and 4 KiB-block ext4 take any size lamina allows)."""
    require_root()
    from tarbuild import Tar
    from tarvectors import archive, sparse_pax_10
    big = 4 << 40
    layer = archive(Tar().dir("var").bytes(end=False),
                    sparse_pax_10("var/huge", big, [(0, b"head" * 1024), (big - 4096, b"tail" * 1024)]))
    with _ext4(g.dest / "ext4", 1024) as work:
        _refused_everywhere(work, layer, "entry 'var/huge'", "File too large")
        assert os.statvfs(work).f_bfree * 1024 > 40 << 20   # the holes were never written out


@pytest.mark.parametrize("free", [0, 16 << 10])
def test_an_unpack_whose_compaction_finds_the_disk_full_still_unpacks(tmp_path, layout, free):
    """keep-blobs false set on a store holding an image: its next use compacts it (sidecars, then
    the blobs go).  With the store's disk full, `unpack IMAGE DEST` (DEST elsewhere) failed with
    '…/snapshots/<chain>/tarsplit.lz4: No space left on device', naming neither the image nor
    the compaction, though nothing the unpack needed was missing.  Now the unpack is made and the
    compaction waits for the next use, with one warning line saying so."""
    require_root()
    src = f"oci:{layout.root}"
    with _tmpfs(tmp_path / "fs", size="64m") as fs:
        root = fs / "s"
        lamina(root, "copy", f"{src}:many:1", "many:1")
        lamina(root, "config", "set", "keep-blobs", "false")
        _fill(fs / "filler")
        if free:
            os.truncate(fs / "filler", os.stat(fs / "filler").st_size - free)
        dest = tmp_path / "dest"
        proc = lamina(root, "unpack", "many:1", dest, check=False)
        assert proc.returncode == 0, proc.stderr
        assert sorted(os.listdir(dest / "n")) == sorted(f"f{i}" for i in range(500))
        assert (dest / "n" / "f7").read_bytes() == b"7\n"
        warnings = [l for l in proc.stderr.splitlines() if l.startswith("lamina: warning: ")]
        assert len(warnings) == 1, proc.stderr
        assert "image many:1 stays uncompacted" in warnings[0], warnings   # as typed, not its ID
        assert "compact" in warnings[0] and "No space left on device" in warnings[0], warnings
        blobs = os.listdir(root / "blobs" / "sha256")
        _consistent(root, images=["many:1"], tmp_path=tmp_path, warnings=("no room to extract its layer again",))
        os.unlink(fs / "filler")
        proc = lamina(root, "unpack", "many:1", tmp_path / "again")
        assert "warning" not in proc.stderr, proc.stderr
        assert len(os.listdir(root / "blobs" / "sha256")) < len(blobs)   # the layer blob went this time
        _consistent(root, images=["many:1"], tmp_path=tmp_path)
