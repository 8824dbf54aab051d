"""Conformance with umoci: apply each layer of umoci-built images in order
(format="dir") and compare with `umoci raw unpack` of the same tag.

Compared: types, modes (incl. setuid/setgid/sticky), uid/gid, sizes, sha256
of contents, symlink targets, device numbers, hardlink groups, all xattrs,
mtimes of files, symlinks and devices (directories' mtimes separately).
"""
from __future__ import annotations

import os

import pytest

from conftest import require_root, require_tool, run
from layerkit import apply, inflate_layer, read_layout, sha256
from treecmp import assert_same, snapshot
from umoci_images import TAGS

pytestmark = pytest.mark.usefixtures("_root")


@pytest.fixture
def _root():
    require_root()


def umoci_unpack(layout, tag, out):
    require_tool("umoci")
    run("umoci", "raw", "unpack", "--image", f"{layout}:{tag}", out)
    return out


def lamina_flatten(layout, tag, dest):
    _, _, layers = read_layout(layout, tag)
    stats = []
    for desc, diff_id, blob in layers:
        st = apply(blob, dest, format="dir", diff_id=diff_id, digest=desc["digest"],
                   media_type=desc["mediaType"])
        assert st.digest == desc["digest"] and st.diff_id == diff_id
        assert st.compressed_bytes == desc["size"]
        stats.append(st)
    return stats


def test_image_has_the_expected_layers(umoci_image):
    for i, tag in enumerate(TAGS):
        _, _, layers = read_layout(umoci_image, tag)
        assert len(layers) == i + 1
    # the vectors really contain what the tests are about
    import tarfile, io
    members = {}
    for desc, _, blob in read_layout(umoci_image, TAGS[-1])[2]:
        with tarfile.open(fileobj=io.BytesIO(inflate_layer(blob))) as tf:
            for m in tf.getmembers():
                members.setdefault(desc["digest"], []).append(m)
    allm = [m for ms in members.values() for m in ms]
    names = [m.name for m in allm]
    assert any(os.path.basename(n).startswith(".wh.") for n in names), "no whiteouts in the umoci image"
    assert any(m.islnk() for m in allm) and any(m.issym() for m in allm)
    assert any(m.ischr() for m in allm) and any(m.isblk() for m in allm) and any(m.isfifo() for m in allm)
    assert any(m.mode & 0o4000 for m in allm)
    assert any(k.startswith("SCHILY.xattr.trusted.") for m in allm for k in m.pax_headers)


@pytest.mark.parametrize("tag", TAGS)
def test_flatten_matches_umoci_raw_unpack(tmp_path, umoci_image, tag):
    want = umoci_unpack(umoci_image, tag, str(tmp_path / "umoci"))
    dest = tmp_path / "lamina"
    lamina_flatten(umoci_image, tag, dest)
    assert_same(snapshot(want), snapshot(dest), labels=("umoci", "lamina"), context=tag)


@pytest.mark.parametrize("tag", [TAGS[0], TAGS[-1]])
def test_flatten_directory_mtimes_match_umoci(tmp_path, umoci_image, tag):
    want = umoci_unpack(umoci_image, tag, str(tmp_path / "umoci"))
    dest = tmp_path / "lamina"
    lamina_flatten(umoci_image, tag, dest)
    a = snapshot(want, dir_mtime=True).filtered(lambda p, e: e.type == "dir")
    b = snapshot(dest, dir_mtime=True).filtered(lambda p, e: e.type == "dir")
    assert_same(a, b, labels=("umoci", "lamina"), context=f"{tag} directory mtimes")


def test_flatten_spot_checks(tmp_path, umoci_image):
    """Facts about the final image, independent of the oracle."""
    dest = tmp_path / "lamina"
    lamina_flatten(umoci_image, TAGS[-1], dest)
    s = snapshot(dest)
    assert "etc/shadow" not in s and "home" not in s
    assert sorted(p for p in s.paths() if p.startswith("victim")) == ["victim", "victim/v9"]
    assert sorted(p for p in s.paths() if p.startswith("recreate/")) == ["recreate/keep", "recreate/new1"]
    assert s["replace-me-file"].type == "dir" and s["replace-me-file/inner"].type == "file"
    assert s["dev/zero"].type == "file" and s["dev/tty"].rdev == (5, 0) and s["dev/null"].rdev == (1, 3)
    assert s["libdir"].type == "dir" and s["bin/ro"].mode == 0o4555 and s["bin/suid"].mode == 0o4755
    assert s["bin/noperm"].mode == 0 and s["tmp"].mode == 0o1777
    assert dict(s["etc/passwd"].xattrs) == {"trusted.secret": b"s\0s"}
    assert dict(s["etc/group"].xattrs) == {"user.new": b"new"}
    assert s["etc/passwd"].mtime == 1_550_004_444
    assert s["data/pinned"].mtime in (1_000_000_000, 1_000_000_001)   # x.5 s: umoci rounds
    assert (dest / "usr/lib/a").read_bytes() == b"shared inode\nappended\n"
    assert frozenset({"usr/lib/a", "usr/bin/a.link2"}) in s.links
    assert "new/x.hl" not in s


def test_layers_in_docker_order_match_gnu_tar_sequence(tmp_path, umoci_image):
    """Per layer: each layer alone, applied to an empty dir, matches GNU tar extracting it
    (whiteout files are kept as plain files by GNU tar, so compare them out)."""
    from layerkit import GNU_TAR_X, write
    _, _, layers = read_layout(umoci_image, TAGS[-1])
    for i, (desc, diff_id, blob) in enumerate(layers):
        plain = inflate_layer(blob)
        tarp = write(tmp_path / f"l{i}.tar", plain)
        oracle = tmp_path / f"o{i}"
        oracle.mkdir()
        run("tar", *GNU_TAR_X, "--exclude=.wh.*", "-xf", tarp, "-C", oracle)
        dest = tmp_path / f"d{i}"
        apply(blob, dest, diff_id=diff_id)
        keep = lambda p, e: not os.path.basename(p).startswith(".wh.")  # noqa: E731
        assert_same(snapshot(oracle).filtered(keep), snapshot(dest), labels=("gnu-tar", "lamina"),
                    context=f"layer {i} alone")


@pytest.mark.parametrize("tag", ["t1", "t2", "t3"])
def test_dir_replaced_by_file_matches_umoci(tmp_path, umoci_replace_image, tag):
    """umoci writes `d` (now a file) followed by `d/.wh.child`: a whiteout below a path that
    this same layer made a non-directory.  Nothing is left below d to delete, so it is a no-op."""
    want = umoci_unpack(umoci_replace_image, tag, str(tmp_path / "umoci"))
    dest = tmp_path / "lamina"
    lamina_flatten(umoci_replace_image, tag, dest)
    assert_same(snapshot(want), snapshot(dest), labels=("umoci", "lamina"), context=tag)
