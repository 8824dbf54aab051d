"""lamina.unpack end to end, with umoci and skopeo as oracles."""
import importlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading

import pytest

import lamina
import ocibuild as ob
from conftest import require_root, require_tool, run
from lamina.tree import remove_tree
from lamina.errors import (DigestMismatchError, ExtractError, ImageNotFoundError, InvalidArchiveError,
                           PlatformNotFoundError)
from treecmp import assert_same, snapshot

# importlib, not "from lamina import unpack": the package attribute is the public function.
unpack_mod = importlib.import_module("lamina.unpacker")
SAMPLE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "sample", "image"))


@pytest.fixture(scope="module")
def umoci_tree(tmp_path_factory):
    """The sample image as `umoci raw unpack` lays it out (the oracle)."""
    require_tool("umoci")
    require_root()
    out = tmp_path_factory.mktemp("umoci")
    img = out / "image"
    shutil.copytree(SAMPLE, img)
    run("umoci", "raw", "unpack", "--image", f"{img}:latest", out / "rootfs")
    return out / "rootfs"


def leftovers(dest):
    """Staging directories left next to dest."""
    parent, name = os.path.split(os.fspath(dest))
    return [n for n in os.listdir(parent) if n.startswith(name + ".lamina-tmp-")]


def tree(path):
    # Directory mtimes are left out: umoci restores a parent's mtime after a later layer
    # changes its children, containerd and lamina do not (reported to the lead).
    return snapshot(path, include_root=True)


# --- the sample image ------------------------------------------------------------

def test_sample_unpacks_like_umoci(tmp_path, umoci_tree):
    dest = tmp_path / "rootfs"
    stats = lamina.unpack(f"oci:{SAMPLE}:latest", dest)
    assert_same(tree(umoci_tree), tree(dest), labels=("umoci", "lamina"))
    # The whiteout layer did what the sample promises (guards against a broken oracle too).
    assert not (dest / "etc/old.conf").exists() and not (dest / "usr/share/doc").exists()
    assert sorted(os.listdir(dest / "opt/app")) == ["README", "config.ini"]
    assert (dest / "usr/bin/tool-alias").read_bytes() == b"#!/bin/sh\necho tool v1\n"
    assert os.getxattr(dest / "etc/motd", "user.lamina.note") == b"sample"

    oci = ob.Layout.existing(SAMPLE)
    manifest = oci.read_json(oci.entries[0]["digest"])
    config = oci.read_json(manifest["config"]["digest"])
    assert stats.manifest_digest == oci.entries[0]["digest"]
    assert stats.config_digest == manifest["config"]["digest"]
    assert [s.digest for s in stats.layers] == [d["digest"] for d in manifest["layers"]]
    assert [s.diff_id for s in stats.layers] == config["rootfs"]["diff_ids"]
    assert stats.platform == "linux/amd64" and stats.format == "dir" and stats.dest == str(dest)
    assert stats.entries == sum(s.entries for s in stats.layers) > 0
    assert set(stats.seconds) >= {"resolve", "layers", "commit", "total"}
    assert leftovers(dest) == []
    json.dumps(stats.to_dict())   # JSON-ready


@pytest.mark.parametrize("which", ["plain", "gzip"])
def test_docker_archive_unpacks_like_the_oci_source(tmp_path, skopeo_archives, which):
    archive = skopeo_archives[0] if which == "plain" else skopeo_archives[1]
    oci_stats = lamina.unpack(f"oci:{SAMPLE}", tmp_path / "from-oci")
    stats = lamina.unpack(f"docker-archive:{archive}", tmp_path / "from-archive")
    assert_same(tree(tmp_path / "from-oci"), tree(tmp_path / "from-archive"), labels=("oci", "docker-archive"))
    assert stats.config_digest == oci_stats.config_digest
    assert [s.diff_id for s in stats.layers] == [s.diff_id for s in oci_stats.layers]


def test_overlay_format(tmp_path):
    dest = tmp_path / "ov"
    stats = lamina.unpack(f"oci:{SAMPLE}", dest, format="overlay")
    n = 3
    assert stats.format == "overlay"
    assert sorted(os.listdir(dest)) == ["layers", "mount-options"]
    assert sorted(os.listdir(dest / "layers")) == [str(i) for i in range(n)]
    assert stats.layer_dirs == [str(dest / "layers" / str(i)) for i in range(n)]
    want = "lowerdir=" + ":".join(str(dest / "layers" / str(i)) for i in reversed(range(n)))
    assert stats.mount_options == want
    assert (dest / "mount-options").read_text().strip() == want
    # Layer 1 holds the whiteouts the overlayfs way.
    wh = os.lstat(dest / "layers/1/etc/old.conf")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == os.makedev(0, 0)
    assert os.getxattr(dest / "layers/1/opt/app", "trusted.overlay.opaque") == b"y"
    assert (dest / "layers/0/opt/app/data/one.txt").exists()   # lower layers untouched
    assert [s.digest for s in stats.layers] == [s.digest for s in lamina.unpack(
        f"oci:{SAMPLE}", tmp_path / "flat").layers]


def test_overlay_mount_matches_the_flat_unpack(tmp_path):
    """The kernel's merged view of the overlay layers equals the dir-format rootfs.

    The destination has ':' and ',' in its name, which the mount options must escape.
    """
    require_root()
    lamina.unpack(f"oci:{SAMPLE}", tmp_path / "flat")
    dest = tmp_path / "we:ird,name"
    stats = lamina.unpack(f"oci:{SAMPLE}", dest, format="overlay")
    assert "\\:" in stats.mount_options and "\\," in stats.mount_options
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run("mount", "-t", "overlay", "overlay", "-o", (dest / "mount-options").read_text().strip(), mnt)
    try:
        assert_same(tree(tmp_path / "flat"), tree(mnt), labels=("flat", "overlay"))
        assert os.getxattr(mnt / "etc/motd", "user.lamina.note") == b"sample"
    finally:
        run("umount", mnt)


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_the_mount_options_of_an_image_of_one_layer_mount(tmp_path, layers):
    """overlayfs mounts no fewer than two lower layers without an upper one: DEST/mount-options
    of a one-layer image (busybox, anything FROM scratch) was lowerdir= that one layer, and the
    mount README shows failed (EINVAL) where every other path gives the tree.  Such a DEST has
    an empty bottom layer for the mount too (an image of no layers had no mount-options at all;
    its layers/ is the second empty one)."""
    require_root()
    from everypath import write_image
    from tarbuild import Tar
    tars = [Tar().dir("etc").file("etc/f", b"f\n", mode=0o600).symlink("s", "/etc").bytes(),
            Tar().whiteout("etc/f").file("g", b"g\n").bytes()][:layers]
    src = "oci:" + write_image(tmp_path / "layout", tars) + ":img"
    lamina.unpack(src, tmp_path / "flat")
    dest = tmp_path / "ovl"
    stats = lamina.unpack(src, dest, format="overlay")
    assert stats.layer_dirs == [str(dest / "layers" / str(i)) for i in range(layers)]
    assert sorted(os.listdir(dest / "layers")) == [str(i) for i in range(layers)]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run("mount", "-t", "overlay", "overlay", "-o", "nosuid,nodev," + (dest / "mount-options").read_text().strip(), mnt)
    try:
        assert_same(tree(tmp_path / "flat"), tree(mnt), labels=("flat", "overlay"))
    finally:
        run("umount", mnt)


def test_mount_options_order_and_escaping():
    assert unpack_mod.mount_options([]) == ""
    assert unpack_mod.mount_options(["/a/0", "/a/1"]) == "lowerdir=/a/1:/a/0"
    assert unpack_mod.mount_options(["/x:y,z\\w/0"]) == "lowerdir=/x\\:y\\,z\\\\w/0"


def test_dest_may_be_an_empty_dir_but_not_a_full_one(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    lamina.unpack(f"oci:{SAMPLE}", empty)
    assert (empty / "srv/data/hello.txt").exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("mine")
    with pytest.raises(ExtractError, match="not empty"):
        lamina.unpack(f"oci:{SAMPLE}", full)
    assert os.listdir(full) == ["keep"] and leftovers(full) == []
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ExtractError, match="not a directory"):
        lamina.unpack(f"oci:{SAMPLE}", afile)


def test_dest_parent_is_created(tmp_path):
    lamina.unpack(f"oci:{SAMPLE}", tmp_path / "a" / "b" / "rootfs")
    assert (tmp_path / "a/b/rootfs/etc/hostname").exists()


# --- integrity failures leave nothing behind ---------------------------------------

def copy_sample(tmp_path):
    shutil.copytree(SAMPLE, tmp_path / "image")
    lay = ob.Layout.existing(tmp_path / "image")
    return lay, lay.read_json(lay.entries[0]["digest"])


@pytest.mark.parametrize("fmt", ["dir", "overlay"])
def test_tampered_layer_blob_is_a_digest_mismatch_and_dest_never_appears(tmp_path, fmt):
    lay, manifest = copy_sample(tmp_path)
    top = manifest["layers"][2]["digest"]
    with open(lay.path(top), "r+b") as f:
        f.seek(4)          # gzip header MTIME: a different blob that still inflates to the same tar
        f.write(b"\x01\x02\x03\x04")
    dest = tmp_path / "rootfs"
    with pytest.raises(DigestMismatchError) as e:
        lamina.unpack(f"oci:{lay.root}", dest, format=fmt)
    assert e.value.expected == top
    assert not os.path.lexists(dest) and leftovers(dest) == []


def test_corrupt_layer_leaves_nothing(tmp_path):
    lay, manifest = copy_sample(tmp_path)
    bottom = manifest["layers"][0]["digest"]
    size = os.path.getsize(lay.path(bottom))
    with open(lay.path(bottom), "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xff" * 16)
    dest = tmp_path / "rootfs"
    with pytest.raises(lamina.LaminaError):
        lamina.unpack(f"oci:{lay.root}", dest)
    assert not os.path.lexists(dest) and leftovers(dest) == []


def rewrite_config(lay, manifest, mutate):
    """Change the config, then re-write the manifest and index.json so only the config's content is wrong."""
    config = lay.read_json(manifest["config"]["digest"])
    mutate(config)
    manifest = dict(manifest, config=lay.json_blob(config, ob.OCI_CONFIG))
    lay.entries = [dict(lay.json_blob(manifest, ob.OCI_MANIFEST), annotations=lay.entries[0]["annotations"])]
    lay.write_index()


def test_wrong_diff_id_in_config(tmp_path):
    lay, manifest = copy_sample(tmp_path)
    wrong = ob.sha256(b"not the layer")
    rewrite_config(lay, manifest, lambda c: c["rootfs"]["diff_ids"].__setitem__(1, wrong))
    dest = tmp_path / "rootfs"
    with pytest.raises(DigestMismatchError) as e:
        lamina.unpack(f"oci:{lay.root}", dest)
    assert e.value.expected == wrong
    assert not os.path.lexists(dest) and leftovers(dest) == []


def test_wrong_diff_id_in_docker_archive(tmp_path):
    path = tmp_path / "save.tar"
    ob.legacy_docker_save(path, [{"a": b"1"}])
    members = {}
    with tarfile.open(path) as tar:
        for m in tar:
            if m.isfile():
                members[m.name] = tar.extractfile(m).read()
    # Change the layer, keep the config: only the diffID check can notice.
    layer_name = [n for n in members if n.endswith("layer.tar")][0]
    members[layer_name] = ob.tar_bytes({"a": b"2"})
    path.write_bytes(ob.tar_of(members))
    dest = tmp_path / "rootfs"
    with pytest.raises(DigestMismatchError, match="diffID"):
        lamina.unpack(f"docker-archive:{path}", dest)
    assert not os.path.lexists(dest) and leftovers(dest) == []


def test_unknown_platform_lists_platforms_and_creates_nothing(tmp_path):
    lay = ob.multiarch(tmp_path / "img")
    dest = tmp_path / "rootfs"
    with pytest.raises(PlatformNotFoundError) as e:
        lamina.unpack(f"oci:{lay.root}", dest, platform="linux/riscv64")
    assert e.value.available == ["linux/amd64", "linux/arm/v7", "linux/arm64/v8"]
    assert not os.path.lexists(dest) and leftovers(dest) == []


@pytest.mark.parametrize("platform, content", [("linux/arm64", b"linux/arm64/v8"), ("linux/arm", b"linux/arm/v7"),
                                               ("linux/amd64", b"linux/amd64")])
def test_multiarch_unpack_picks_the_platform(tmp_path, platform, content):
    lay = ob.multiarch(tmp_path / "img")
    stats = lamina.unpack(f"oci:{lay.root}", tmp_path / "rootfs", platform=platform)
    assert (tmp_path / "rootfs" / "arch").read_bytes() == content
    assert stats.platform == content.decode()


def test_unknown_ref_creates_nothing(tmp_path):
    dest = tmp_path / "rootfs"
    with pytest.raises(ImageNotFoundError, match="available: latest"):
        lamina.unpack(f"oci:{SAMPLE}:nope", dest)
    assert not os.path.lexists(dest)


def test_bad_layer_in_parallel_overlay_leaves_nothing(tmp_path):
    lay = ob.Layout(tmp_path / "img")
    m = lay.image([{f"f{i}": b"x" * 1000} for i in range(6)])
    lay.add(m, "latest")
    bad = lay.read_json(m["digest"])["layers"][3]["digest"]
    with open(lay.path(bad), "r+b") as f:
        f.seek(4)
        f.write(b"\x09\x09\x09\x09")
    dest = tmp_path / "ov"
    with pytest.raises(DigestMismatchError, match=bad):
        lamina.unpack(f"oci:{lay.root}", dest, format="overlay")
    assert not os.path.lexists(dest) and leftovers(dest) == []


def test_overlay_layers_really_run_in_parallel(tmp_path, monkeypatch):
    import lamina.layer
    real = lamina.layer.apply_layer
    # Layers meet in pairs: if unpack applied them one at a time, the first would wait alone and fail.
    barrier = threading.Barrier(2, timeout=20)

    def apply_layer(*a, **kw):
        barrier.wait()
        return real(*a, **kw)
    monkeypatch.setattr(lamina.layer, "apply_layer", apply_layer)
    monkeypatch.setattr(unpack_mod, "MAX_PARALLEL_LAYERS", 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    lay = ob.Layout(tmp_path / "img")
    lay.add(lay.image([{f"f{i}": b"x"} for i in range(4)]), "latest")
    stats = lamina.unpack(f"oci:{lay.root}", tmp_path / "ov", format="overlay")
    assert len(stats.layers) == 4
    assert [os.listdir(d) for d in stats.layer_dirs] == [[f"f{i}"] for i in range(4)]


def test_limits_are_passed_down(tmp_path):
    dest = tmp_path / "rootfs"
    with pytest.raises(InvalidArchiveError):   # LimitExceededError is one
        lamina.unpack(f"oci:{SAMPLE}", dest, limits=lamina.Limits(max_entries=3))
    assert not os.path.lexists(dest) and leftovers(dest) == []


def test_bad_format_is_refused(tmp_path):
    with pytest.raises(ValueError):
        lamina.unpack(f"oci:{SAMPLE}", tmp_path / "x", format="tarball")


# --- cleanup as an unprivileged user ---------------------------------------------

def run_as_nobody(code, *args):
    """Run python ``code`` as uid/gid 65534 with no groups.

    The interpreter may live under /root (0700), so the child starts as root,
    imports everything unpack needs, then drops privileges itself (the same
    end state as ``setpriv --reuid=65534 --regid=65534 --clear-groups``).
    """
    require_root()
    prologue = (
        "import os, sys, gzip, zlib, json\n"
        "import lamina, lamina.layer, lamina.oci, isal.igzip, isal.isal_zlib, zstandard\n"
        "from lamina.unpacker import unpack\nfrom lamina.tree import remove_tree\n"
        "os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)\n"
        "assert os.geteuid() == 65534\n"
    )
    return subprocess.run([sys.executable, "-c", prologue + code, *map(str, args)],
                          capture_output=True, text=True, cwd="/", timeout=120)


@pytest.fixture
def world_dir():
    """A directory user nobody can write (pytest's own temp dirs are 0700 root)."""
    base = tempfile.mkdtemp(prefix="lamina-unpack-test-", dir="/tmp")
    os.chmod(base, 0o755)
    os.chown(base, 65534, 65534)
    yield base
    remove_tree(base)


def test_remove_tree_copes_with_read_only_dirs_as_nobody(world_dir):
    top = os.path.join(world_dir, "stage")
    os.makedirs(os.path.join(top, "ro/deeper"))
    os.makedirs(os.path.join(top, "closed/inner"))
    os.makedirs(os.path.join(top, "listed/inner"))
    for f in ("ro/deeper/file", "ro/file", "closed/inner/f", "listed/inner/f"):
        with open(os.path.join(top, f), "w") as fh:
            fh.write("x")
    os.symlink("/etc", os.path.join(top, "ro/etc-link"))   # must never be followed
    for dirpath, dirnames, filenames in os.walk(top):
        for n in filenames:
            os.chown(os.path.join(dirpath, n), 65534, 65534)
        os.chown(dirpath, 65534, 65534)
    # listed/inner: readable, not searchable (rw-, what an access ACL gives its owner)
    for d, mode in (("ro/deeper", 0o555), ("ro", 0o555), ("closed/inner", 0o000), ("closed", 0o000),
                    ("listed/inner", 0o600)):
        os.chmod(os.path.join(top, d), mode)
    etc_mode = os.stat("/etc").st_mode
    proc = run_as_nobody("import shutil\n"
                         "try:\n    shutil.rmtree(sys.argv[1])\nexcept PermissionError:\n    pass\n"
                         "else:\n    sys.exit('plain rmtree worked: the test proves nothing')\n"
                         "remove_tree(sys.argv[1])", top)
    assert proc.returncode == 0, proc.stderr
    assert not os.path.lexists(top)
    assert os.stat("/etc").st_mode == etc_mode


def test_unprivileged_unpack(world_dir):
    image = os.path.join(world_dir, "image")
    shutil.copytree(SAMPLE, image)
    for dirpath, dirnames, filenames in os.walk(image):   # umoci writes blobs 0600
        for n in filenames:
            os.chmod(os.path.join(dirpath, n), 0o644)
    proc = run_as_nobody("s = unpack('oci:' + sys.argv[1], sys.argv[2]); print(json.dumps(s.to_dict()))",
                         image, os.path.join(world_dir, "rootfs"))
    assert proc.returncode == 0, proc.stderr
    rootfs = os.path.join(world_dir, "rootfs")
    st = os.lstat(os.path.join(rootfs, "usr/bin/suid-tool"))
    assert st.st_uid == 65534 and not st.st_mode & stat.S_ISUID     # no setuid binary owned by nobody
    assert os.lstat(os.path.join(rootfs, "home/user/.profile")).st_uid == 65534
    assert open(os.path.join(rootfs, "srv/data/hello.txt"), "rb").read() == b"hello from the top layer\n"
    assert leftovers(rootfs) == []


def test_unprivileged_failure_cleans_up_read_only_dirs(world_dir):
    lay = ob.Layout(os.path.join(world_dir, "image"))
    m = lay.image([{"ro/": None, "ro/file": b"x"}, {"later": b"y"}])
    lay.add(m, "latest")
    # Make the first layer's directory read-only, then break the second layer.
    manifest = lay.read_json(m["digest"])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        d = tarfile.TarInfo("ro")
        d.type, d.mode = tarfile.DIRTYPE, 0o555
        tar.addfile(d)
        f = tarfile.TarInfo("ro/file")
        f.size = 1
        tar.addfile(f, io.BytesIO(b"x"))
    raw = buf.getvalue()
    blob = ob.gz(raw)
    lay.blob(blob)
    manifest["layers"][0] = ob.desc(ob.OCI_LAYER_GZIP, blob)
    config = lay.read_json(manifest["config"]["digest"])
    config["rootfs"]["diff_ids"][0] = ob.sha256(raw)
    config["rootfs"]["diff_ids"][1] = ob.sha256(b"wrong")
    manifest["config"] = lay.json_blob(config, ob.OCI_CONFIG)
    lay.entries = [lay.json_blob(manifest, ob.OCI_MANIFEST)]
    lay.write_index()
    for dirpath, dirnames, filenames in os.walk(lay.root):
        os.chmod(dirpath, 0o755)
    dest = os.path.join(world_dir, "rootfs")
    proc = run_as_nobody(
        "from lamina.errors import DigestMismatchError\n"
        "try:\n    unpack('oci:' + sys.argv[1], sys.argv[2])\n"
        "except DigestMismatchError:\n    pass\n"
        "else:\n    sys.exit('no error')\n", lay.root, dest)
    assert proc.returncode == 0, proc.stderr
    assert not os.path.lexists(dest) and leftovers(dest) == []


def test_public_unpack_stays_a_function(tmp_path):
    """Importing the module behind lamina.unpack must not replace the lamina.unpack function."""
    importlib.import_module("lamina.unpacker")
    lamina.unpack(f"oci:{SAMPLE}", tmp_path / "one")
    assert callable(lamina.unpack) and not isinstance(lamina.unpack, type(os))
    lamina.unpack(f"oci:{SAMPLE}", tmp_path / "two")


def test_apply_layer_onto_a_file_names_it(tmp_path):
    from lamina.layer import apply_layer
    from tarbuild import Tar
    layer = tmp_path / "layer.tar"
    layer.write_bytes(Tar().file("a", b"x").bytes())
    target = tmp_path / "file"
    target.write_bytes(b"mine")
    with pytest.raises(ExtractError, match=r"file exists and is not a directory"):
        apply_layer(str(layer), str(target))
    assert target.read_bytes() == b"mine"
