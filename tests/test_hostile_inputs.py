"""Hostile inputs around the layers: layout directories, archive indexes, configs, registries.

Each refusal is one clear line naming what is wrong, and leaves the store exactly as it was.
"""
import io
import json
import os
import re
import shutil
import subprocess
import tarfile

import pytest

import ocibuild as ob
from conftest import require_tool, run
from storekit import fingerprint, lamina
from test_store_badinput import fails, root  # noqa: F401  (the store fixture holding keep:1)

import lamina as lamina_api
from lamina.errors import ImageError


def _unchanged(root, before):  # noqa: F811
    assert fingerprint(root) == before
    assert json.loads(lamina(root, "fsck", "--format", "json").stdout)["ok"]


# --- OCI layout directories: nothing is followed out of them -------------------------------------


def _layout(tmp_path):
    lay = ob.Layout(tmp_path / "lay")
    m = lay.add(lay.image([{"f": b"content\n"}]), "latest")
    manifest = lay.read_json(m["digest"])
    return lay, manifest["config"]["digest"], manifest["layers"][0]["digest"]


def _move_out(path, outside):
    shutil.move(path, outside)
    os.symlink(outside, path)


def _config_to_a_copy_outside(lay, config, layer, outside):
    _move_out(lay.path(config), outside / "config")   # the very bytes: only the symlink is wrong


def _layer_to_dev_zero(lay, config, layer, outside):
    os.unlink(lay.path(layer))
    os.symlink("/dev/zero", lay.path(layer))


def _blob_dir_outside(lay, config, layer, outside):
    _move_out(os.path.join(lay.root, "blobs", "sha256"), outside / "sha256")


def _index_outside(lay, config, layer, outside):
    _move_out(os.path.join(lay.root, "index.json"), outside / "index.json")


def _oci_layout_outside(lay, config, layer, outside):
    _move_out(os.path.join(lay.root, "oci-layout"), outside / "oci-layout")


def _blob_to_another_blob_inside(lay, config, layer, outside):
    # inside the layout, but still a symlink: refused alike (no resolver to trust with it)
    shutil.copy(lay.path(config), os.path.join(lay.root, "config-copy"))
    os.unlink(lay.path(config))
    os.symlink("../../config-copy", lay.path(config))


@pytest.mark.parametrize("plant", [_config_to_a_copy_outside, _layer_to_dev_zero, _blob_dir_outside,
                                   _index_outside, _oci_layout_outside, _blob_to_another_blob_inside])
def test_a_symlink_in_a_layout_is_never_followed(root, tmp_path, plant):  # noqa: F811
    """A layout's blob, ``blobs/sha256``, index.json or oci-layout that is a symlink was followed
    wherever it led (a blob symlinked to a file outside the layout with the right bytes loaded
    fine; one to /dev/zero was 'not a regular file').  skopeo follows them; lamina refuses them,
    naming the symlink, on copy, load and unpack."""
    lay, config, layer = _layout(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    plant(lay, config, layer, outside)
    before = fingerprint(root)
    fails(root, "copy", f"oci:{lay.root}:latest", "x:1", match="is a symlink")
    fails(root, "load", "-i", lay.root, match="is a symlink")
    _unchanged(root, before)
    with pytest.raises(ImageError, match="is a symlink"):
        lamina_api.unpack(f"oci:{lay.root}:latest", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


# --- one name, several images ----------------------------------------------------------------


def _oci_archive(lay, path):
    with tarfile.open(path, "w") as tar:
        for name in ("oci-layout", "index.json", "blobs"):
            tar.add(os.path.join(lay.root, name), name)
    return path


@pytest.mark.parametrize("names", [("latest", "latest"), ("app:1", "app:1"), (None, None)])
def test_two_images_under_one_name_are_refused(root, tmp_path, names):  # noqa: F811
    """index.json naming two different images alike (or naming neither, without platforms to
    choose by) loaded the first and dropped the other without a word; skopeo takes the first,
    containerd the last, umoci refuses ("tag is ambiguous"): lamina refuses, naming both."""
    lay = ob.Layout(tmp_path / "lay")
    a = lay.add(lay.image([{"a": b"A"}]), names[0])
    b = lay.add(lay.image([{"b": b"B"}]), names[1])
    archive = _oci_archive(lay, tmp_path / "dup.tar")
    before = fingerprint(root)
    ref = f":{names[0]}" if names[0] else ""
    line = fails(root, "copy", f"oci:{lay.root}{ref}", "x:1", match="ambiguous")
    assert a["digest"] in line and b["digest"] in line
    fails(root, "load", "-i", archive, match="ambiguous")
    with open(archive, "rb") as f:
        fails(root, "load", match="ambiguous", stdin=f)
    _unchanged(root, before)


def test_one_name_on_images_of_different_platforms_still_picks_by_platform(root, tmp_path):  # noqa: F811
    lay = ob.Layout(tmp_path / "lay")
    lay.add(ob.with_platform(lay.image([{"arm": b"1"}], arch="arm64"), "linux", "arm64"), "latest")
    amd = lay.add(ob.with_platform(lay.image([{"amd": b"2"}]), "linux", "amd64"), "latest")
    out = json.loads(lamina(root, "copy", "--format", "json", f"oci:{lay.root}:latest", "x:1",
                            "--platform", "linux/amd64").stdout)
    assert out["manifest_digest"] == amd["digest"]
    # unnamed: images whose configs name different platforms, and an artifact beside them
    lay = ob.Layout(tmp_path / "unnamed")
    lay.add(lay.image([{"arm": b"1"}], arch="arm64"))
    amd = lay.add(lay.image([{"amd": b"2"}]))
    config = lay.json_blob({}, "application/vnd.example.sbom.config+json")
    lay.add(lay.json_blob({"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST, "config": config,
                           "layers": [], "subject": amd}, ob.OCI_MANIFEST))
    out = json.loads(lamina(root, "copy", "--format", "json", f"oci:{lay.root}", "y:1",
                            "--platform", "linux/amd64").stdout)
    assert out["manifest_digest"] == amd["digest"]


# --- load: all or nothing ------------------------------------------------------------------------


def _good_then_bad_archive(path):
    """A docker archive of good:1 and then bad:1, whose layer is not the diffID its config says."""
    good, bad = ob.tar_bytes({"good": b"G" * 1000}), ob.tar_bytes({"bad": b"B" * 1000})
    members, entries = {}, []
    for i, (raw, diff_id, tag) in enumerate(((good, ob.sha256(good), "good:1"), (bad, ob.sha256(b"x"), "bad:1"))):
        config = ob.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers",
                                                                              "diff_ids": [diff_id]}})
        name = ob.sha256(config)[7:] + ".json"
        members[f"l{i}/layer.tar"], members[name] = raw, config
        entries.append({"Config": name, "RepoTags": [tag], "Layers": [f"l{i}/layer.tar"]})
    members["manifest.json"] = json.dumps(entries).encode()
    path.write_bytes(ob.tar_of(members))
    return path


def test_a_load_refused_at_its_second_image_leaves_the_first_out(root, tmp_path):  # noqa: F811
    """The first image of the archive was named and its blob and snapshot kept when the second
    failed: a refused load changed the store.  Now nothing is named before every image is in,
    and the message names the image and layer at fault (it named a blob digest only)."""
    archive = _good_then_bad_archive(tmp_path / "two.tar")
    before = fingerprint(root)
    line = fails(root, "load", "-i", archive, match="digest mismatch")
    assert "bad:1 layer 1 of 1" in line, line
    with open(archive, "rb") as f:
        line = fails(root, "load", match="the archive on stdin: image bad:1 layer 1 of 1", stdin=f)
    _unchanged(root, before)
    assert "good" not in lamina(root, "images").stdout


# --- configs used for more than digests: runtime bundles -------------------------------------------


def _store_image(root, tmp_path, exec_config):
    lay = ob.Layout(tmp_path / "cfg")
    lay.add(lay.image([{"etc": None, "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n"}],
                      config_extra={"config": exec_config}), "latest")
    lamina(root, "copy", f"oci:{lay.root}:latest", "cfg:1")


@pytest.mark.parametrize("working_dir, cwd", [("app", "/app"), ("../../etc/x", "/etc/x"), ("/srv/../../x", "/x"),
                                              ("//a//b/", "/a/b"), ("", "/"), ("/srv", "/srv")])
def test_a_bundle_cwd_is_absolute_and_clean(root, tmp_path, working_dir, cwd):  # noqa: F811
    """WorkingDir was copied as it is (umoci does too), and runc refuses a relative cwd; docker
    makes it absolute (filepath.Join("/", WorkingDir)), and so does lamina now."""
    _store_image(root, tmp_path, {"WorkingDir": working_dir})
    lamina(root, "unpack", "--bundle", "cfg:1", tmp_path / "b")
    assert json.loads((tmp_path / "b" / "config.json").read_text())["process"]["cwd"] == cwd


@pytest.mark.parametrize("exec_config, match", [
    ({"Env": ["A=1", "FOO"]}, "Env 'FOO': an environment variable must be NAME=VALUE"),
    ({"Env": ["A=x\0y"]}, "Env 'A=x\\x00y': holds a NUL byte"),
    ({"Cmd": ["sh", "-c", "a\0b"]}, "Cmd 'a\\x00b': holds a NUL byte"),
    ({"Entrypoint": ["/bin/\0sh"]}, "Entrypoint '/bin/\\x00sh': holds a NUL byte"),
    ({"WorkingDir": "/a\0b"}, "WorkingDir '/a\\x00b': holds a NUL byte"),
])
def test_a_bundle_of_a_process_no_runtime_can_start_is_refused_by_name(root, tmp_path, exec_config,  # noqa: F811
                                                                     match):
    """An Env without '=' (umoci refuses it too: "environment variable must contain '='") or a
    NUL in what becomes execve's arguments was written into config.json for runc to fail on."""
    _store_image(root, tmp_path, exec_config)
    before = fingerprint(root)
    fails(root, "unpack", "--bundle", "cfg:1", tmp_path / "b", match=match)
    assert not (tmp_path / "b").exists()
    assert fingerprint(root)["blobs"] == before["blobs"]


# --- archives: one name, one member ---------------------------------------------------------------


def _tar_in_order(path, members):
    """A tar of (name, bytes) in order, names repeated as given (``tar -r`` appends like this)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _legacy_members(tag):
    raw = ob.tar_bytes({"a": b"A"})
    config = ob.dumps({"architecture": "amd64", "os": "linux",
                       "rootfs": {"type": "layers", "diff_ids": [ob.sha256(raw)]}})
    name = ob.sha256(config)[7:] + ".json"
    manifest = json.dumps([{"Config": name, "RepoTags": [tag], "Layers": ["l/layer.tar"]}]).encode()
    return [("l/layer.tar", raw), (name, config)], manifest


def _layout_with_two_indexes(tmp_path, first_name, second_name):
    """(the members of a one-image layout but its index.json, an index.json naming the image
    ``first_name``, one naming it ``second_name``)."""
    lay = ob.Layout(tmp_path / "lay")
    lay.add(lay.image([{"a": b"A"}]), first_name)
    first = open(os.path.join(lay.root, "index.json"), "rb").read()
    lay.entries[0]["annotations"]["org.opencontainers.image.ref.name"] = second_name
    lay.write_index()
    members = [(os.path.relpath(os.path.join(d, f), lay.root), open(os.path.join(d, f), "rb").read())
               for d, _, files in os.walk(lay.root) for f in files if f != "index.json"]
    return members, first, open(os.path.join(lay.root, "index.json"), "rb").read()


@pytest.mark.parametrize("twice", ["manifest.json", "index.json", "l/layer.tar"])
def test_a_member_the_archive_holds_twice_is_refused(root, tmp_path, twice):  # noqa: F811
    """An archive with two manifest.json (or index.json, or layer) members: skopeo reads the
    first, docker (which extracts the archive) and tar the last, and lamina took the last, so the
    one archive was two different images.  Refused, naming the member."""
    if twice == "index.json":
        members, first, second = _layout_with_two_indexes(tmp_path, "first:1", "second:1")
        members += [("index.json", first), ("index.json", second)]
    else:
        members, manifest = _legacy_members("first:1")
        members.append(("manifest.json", manifest))
        if twice == "manifest.json":
            members.append(("manifest.json", _legacy_members("second:1")[1]))
        else:
            members.append(("l/layer.tar", ob.tar_bytes({"b": b"B"})))
    archive = _tar_in_order(tmp_path / "twice.tar", members)
    before = fingerprint(root)
    fails(root, "load", "-i", archive, match=f"member {twice} appears more than once")
    _unchanged(root, before)


def _tar_with_links(path, members):
    """A tar of (name, bytes | ("symlink" or "hardlink", target)) in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type = tarfile.SYMTYPE if data[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("target, where", [
    ("../../../etc/passwd", "out of the archive"),
    ("/etc/passwd", "out of the archive"),
    ("../../l", "out of the archive"),
    ("gone.tar", "which the archive does not hold"),
])
def test_a_layer_member_that_is_a_dangling_symlink_is_named_with_where_it_points(root, tmp_path, target, where):  # noqa: F811
    """A docker-archive whose layer member is a symlink pointing out of the archive (or to a member
    it lacks) was refused with "l/layer.tar not found", as if the manifest named a member the
    archive has not: the error names the symlink and where it points.  (Targets are read inside the
    archive, as docker's load resolves them in scope: ``/etc/passwd`` is the member ``etc/passwd``.)"""
    members, manifest = _legacy_members("dangling:1")
    members = [(n, ("symlink", target) if n == "l/layer.tar" else d) for n, d in members]
    archive = _tar_with_links(tmp_path / "dangling.tar", members + [("manifest.json", manifest)])
    before = fingerprint(root)
    fails(root, "load", "-i", archive,
          match=f"{archive}: member l/layer.tar is a symlink to {target!r}, {where}")
    _unchanged(root, before)


def test_an_oci_archive_blob_that_is_a_symlink_out_of_the_archive_is_named(root, tmp_path):  # noqa: F811
    """The same for a layout inside the archive: the blob's member is named with its target."""
    lay = ob.Layout(tmp_path / "lay")
    m = lay.image([{"a": b"A"}])
    lay.add(m, "linked:1")
    layer = lay.read_json(m["digest"])["layers"][0]["digest"]
    members = []
    for d, _, files in os.walk(lay.root):
        for f in sorted(files):
            rel = os.path.relpath(os.path.join(d, f), lay.root)
            members.append((rel, open(os.path.join(d, f), "rb").read()))
    rel = "blobs/sha256/" + layer[7:]
    members = [(n, ("symlink", "../../../outside.tar") if n == rel else d) for n, d in members]
    archive = _tar_with_links(tmp_path / "linked.tar", members)
    before = fingerprint(root)
    fails(root, "load", "-i", archive,
          match=f"blob {layer}: {archive}: member {rel} is a symlink to '../../../outside.tar', out of the archive")
    _unchanged(root, before)


@pytest.mark.parametrize("member", ["manifest.json", "index.json"])
def test_a_hardlink_to_a_symlink_member_reads_the_symlink_from_where_the_hardlink_is(
        root, tmp_path, member):  # noqa: F811
    """A hardlink to a symlink is that symlink under a second name (link(2) does not follow it),
    so its relative target is read from the hardlink's directory: tar and docker's load (both
    extract the archive) read top-level ``m.json`` for a ``manifest.json`` linked to ``d/s -> m.json``.
    lamina followed the target from ``d/``, where the archive put a second manifest: one archive
    was two images.  The answer is what GNU tar's extraction gives."""
    require_tool("tar")
    if member == "index.json":
        members, top, deep = _layout_with_two_indexes(tmp_path, "top:1", "deep:1")
    else:
        members, top = _legacy_members("top:1")
        deep = _legacy_members("deep:1")[1]
    members += [("m.json", top), ("d/m.json", deep), ("d/s", ("symlink", "m.json")),
                (member, ("hardlink", "d/s"))]
    archive = _tar_with_links(tmp_path / "linked.tar", members)
    out = tmp_path / "tar-x"
    os.mkdir(out)
    run("tar", "-xf", archive, "-C", out)
    assert open(out / member, "rb").read() == top   # GNU tar's reading of the archive
    lamina(root, "load", "-i", archive)
    names = lamina(root, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert "top:1" in names and "deep:1" not in names, names


@pytest.mark.parametrize("member", ["manifest.json", "l/layer.tar"])
def test_a_hardlink_to_a_member_the_archive_holds_only_later_is_refused(root, tmp_path, member):  # noqa: F811
    """tar and docker's load (which extracts the archive) make a hardlink when they reach it, and
    fail when its target is not there yet; lamina read the later member through it, loading an
    archive neither reads.  Refused as GNU tar refuses it, naming the link."""
    require_tool("tar")
    members, manifest = _legacy_members("later:1")
    data = dict(members + [("manifest.json", manifest)])
    members = [(n, d) for n, d in members + [("manifest.json", manifest)] if n != member]
    members = [(member, ("hardlink", "x/later")), *members, ("x/later", data[member])]
    archive = _tar_with_links(tmp_path / "later.tar", members)
    out = tmp_path / "tar-x"
    os.mkdir(out)
    assert subprocess.run(["tar", "-xf", archive, "-C", out], capture_output=True).returncode != 0
    before = fingerprint(root)
    fails(root, "load", "-i", archive,
          match=f"{archive}: member {member} is a hardlink to 'x/later', which the archive holds only after it")
    _unchanged(root, before)


@pytest.mark.parametrize("member,climbing", [
    ("manifest.json", "../manifest.json"), ("manifest.json", "./blobs/../../manifest.json"),
    ("l/layer.tar", "l/../../l/layer.tar"), ("manifest.json", ("hardlink", "../m.json")),
    ("l/layer.tar", ("hardlink", "l/../../x/layer.tar"))])
def test_a_member_whose_name_or_hardlink_climbs_out_of_the_archive_is_refused(root, tmp_path, member,  # noqa: F811
                                                                          climbing):
    """A member named ``../manifest.json`` (or ``./blobs/../../manifest.json``), or a hardlink to
    ``../m.json``: lamina dropped the ``..`` that climbs above the archive's top and read it as
    ``manifest.json`` (the hardlink: as ``m.json``), loading an archive docker's load refuses (its
    extraction stops at a name or link target that breaks out of the directory) and skopeo does
    not read (it finds no member of that name, and takes no hardlink).  Refused now, naming it."""
    skopeo = require_tool("skopeo")
    members, manifest = _legacy_members("climb:1")
    data = dict(members + [("manifest.json", manifest)])
    if isinstance(climbing, tuple):
        target = climbing[1].split("../")[-1] if climbing[1].startswith("l/") else climbing[1][3:]
        listed = [(n, d) for n, d in data.items() if n != member] + [(target, data[member]), (member, climbing)]
        expect = f"member {member} is a hardlink to {climbing[1]!r}, out of the archive"
    else:
        listed = [(n, d) for n, d in data.items() if n != member] + [(climbing, data[member])]
        expect = f"member {climbing} climbs out of the archive"
    archive = _tar_with_links(tmp_path / "climb.tar", listed)
    sk = subprocess.run([skopeo, "copy", "-q", f"docker-archive:{archive}", f"oci:{tmp_path / 'sk'}:x"],
                        capture_output=True, text=True)
    assert sk.returncode != 0, "skopeo read it"
    before = fingerprint(root)
    fails(root, "load", "-i", archive, match=f"{archive}: {expect}")
    _unchanged(root, before)
    with pytest.raises(ImageError, match=re.escape(expect)):
        lamina_api.unpack(f"docker-archive:{archive}", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("symlink_first", [True, False], ids=["symlink-first", "symlink-after"])
def test_a_member_under_a_symlink_member_is_refused(root, tmp_path, symlink_first):  # noqa: F811
    """``d -> e`` and a member ``d/m.json``: tar and docker's load (which extract the archive)
    write it through the symlink over ``e/m.json``, so a manifest.json linked to ``e/m.json`` is
    image B to them, while lamina and skopeo read the member ``e/m.json`` by name, image A, and
    bsdtar refuses to extract through the symlink.  One archive, two images: refused, naming both."""
    require_tool("tar")
    members, top = _legacy_members("a:1")
    other = _legacy_members("b:1")[1]
    through = [("d", ("symlink", "e")), ("d/m.json", other)]
    members += [("e/m.json", top), *(through if symlink_first else through[::-1]),
                ("manifest.json", ("symlink", "e/m.json"))]
    archive = _tar_with_links(tmp_path / "through.tar", members)
    if symlink_first:
        out = tmp_path / "tar-x"
        os.mkdir(out)
        run("tar", "-xf", archive, "-C", out)
        assert open(out / "manifest.json", "rb").read() == other   # GNU tar wrote through d
    before = fingerprint(root)
    fails(root, "load", "-i", archive, match=f"{archive}: member d/m.json lies under the symlink d")
    _unchanged(root, before)


@pytest.mark.parametrize("target", ["d/../m.json", "d/m.json"], ids=["dotdot", "beneath"])
def test_a_symlink_whose_target_passes_through_a_symlink_member_is_refused(root, tmp_path, target):  # noqa: F811
    """``d -> sub/deep`` and ``manifest.json -> d/../m.json``: tar and docker's load (which
    extract the archive) follow ``d`` and then ``..``, reading ``sub/m.json`` (image B); skopeo
    and lamina cleaned the target as text and read ``m.json`` (image A).  ``d/m.json``: tar
    reads ``sub/deep/m.json``, skopeo finds no member, and lamina said the archive did not hold
    it.  One archive, two readings: refused, naming the link and the symlink on its way."""
    require_tool("tar")
    skopeo = require_tool("skopeo")
    members, top = _legacy_members("a:1")
    other = _legacy_members("b:1")[1]
    members += [("m.json", top), ("sub/m.json", other), ("sub/deep/m.json", other), ("d", ("symlink", "sub/deep")),
                ("manifest.json", ("symlink", target))]
    archive = _tar_with_links(tmp_path / "through.tar", members)
    out = tmp_path / "tar-x"
    os.mkdir(out)
    run("tar", "-xf", archive, "-C", out)
    assert open(out / "manifest.json", "rb").read() == other   # GNU tar followed d
    # skopeo reads image A (the tag a:1) through "d/../m.json", and no manifest through "d/m.json"
    sk = subprocess.run([skopeo, "inspect", "--raw", f"docker-archive:{archive}:a:1"], capture_output=True, text=True)
    assert (sk.returncode == 0) == (target == "d/../m.json"), sk.stderr
    before = fingerprint(root)
    fails(root, "load", "-i", archive,
          match=f"{archive}: member manifest.json is a symlink to {target!r}, through the symlink member d")
    _unchanged(root, before)


def test_a_hardlink_whose_target_passes_through_a_symlink_member_is_refused(root, tmp_path):  # noqa: F811
    """``d -> sub/deep`` and ``manifest.json`` a hardlink to ``d/m.json``: link(2) follows ``d``
    on the way (only the last component is not followed), so tar and docker's load link
    ``sub/deep/m.json`` (image B), while skopeo finds no member ``d/m.json``.  lamina said only
    "which the archive does not hold", as if the target were missing: it names the symlink."""
    require_tool("tar")
    skopeo = require_tool("skopeo")
    members, top = _legacy_members("a:1")
    other = _legacy_members("b:1")[1]
    members += [("m.json", top), ("sub/deep/m.json", other), ("d", ("symlink", "sub/deep")),
                ("manifest.json", ("hardlink", "d/m.json"))]
    archive = _tar_with_links(tmp_path / "through.tar", members)
    out = tmp_path / "tar-x"
    os.mkdir(out)
    run("tar", "-xf", archive, "-C", out)
    assert open(out / "manifest.json", "rb").read() == other   # GNU tar's link(2) followed d
    sk = subprocess.run([skopeo, "inspect", "--raw", f"docker-archive:{archive}:a:1"], capture_output=True, text=True)
    assert sk.returncode != 0, sk.stdout
    before = fingerprint(root)
    fails(root, "load", "-i", archive,
          match=f"{archive}: member manifest.json is a hardlink to 'd/m.json', through the symlink member d")
    _unchanged(root, before)


# --- a layout as a destination -------------------------------------------------------------------


@pytest.mark.parametrize("link", ["blobs", "blobs/sha256"])
def test_a_destination_layout_whose_blob_directory_is_a_symlink_gets_nothing_written_through_it(
        root, tmp_path, link):  # noqa: F811
    """copy IMG oci:DIR wrote every blob wherever DIR/blobs or DIR/blobs/sha256 pointed."""
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    outside.mkdir()
    (dest / link).parent.mkdir(parents=True, exist_ok=True)
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    os.symlink(outside, dest / link)
    fails(root, "copy", "keep:1", f"oci:{dest}:keep", match=f"{dest / link} is a symlink")
    assert os.listdir(outside) == []
    assert not (dest / "index.json").exists()


def test_a_destination_blob_that_is_a_symlink_of_the_right_size_is_replaced(root, tmp_path):  # noqa: F811
    """A blob there of the right size was taken as the blob, whatever it was: a symlink to a file
    outside with other bytes left the layout naming content it did not hold."""
    lamina(root, "copy", "keep:1", f"oci:{tmp_path / 'first'}:keep")
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    shutil.copytree(tmp_path / "first", dest)
    blobs = sorted((dest / "blobs" / "sha256").iterdir())
    outside.mkdir()
    for blob in blobs:
        impostor = outside / blob.name
        impostor.write_bytes(b"x" * blob.stat().st_size)
        blob.unlink()
        blob.symlink_to(impostor)
    lamina(root, "copy", "keep:1", f"oci:{dest}:keep")
    assert all(not b.is_symlink() for b in blobs)
    assert all(set(f.read_bytes()) == {ord("x")} for f in outside.iterdir())   # untouched
    lamina(root, "copy", f"oci:{dest}:keep", "again:1")


@pytest.mark.parametrize("dest", ["store", "load", "unpack", "unpack-overlay"])
def test_a_refused_layer_is_named_by_its_place_and_digest(root, tmp_path, dest):  # noqa: F811
    """The second of three layers links to a file no layer has.  unpack said "layer 2 of 3
    (sha256:…): entry 'x': …"; copy and load, whose snapshots any image may share, named
    the layer by its digest alone ("layer sha256:…: entry 'x': …"), as a full disk's error
    did before it said both."""
    from tarbuild import Tar
    lay = ob.Layout(tmp_path / "lay")
    good = Tar().file("a", b"a").bytes()
    bad = lay.image_of_tars([good, Tar().file("b", b"b").hardlink("x", "missing").bytes(), good])
    lay.add(bad, "bad:1")
    digest = lay.read_json(bad["digest"])["layers"][1]["digest"]
    before = fingerprint(root)
    args = {"store": ("copy", f"oci:{lay.root}:bad:1", "bad:1"), "load": ("load", "-i", lay.root),
            "unpack": ("unpack", f"oci:{lay.root}:bad:1", tmp_path / "dest"),
            "unpack-overlay": ("unpack", "--overlay", f"oci:{lay.root}:bad:1", tmp_path / "dest")}[dest]
    msg = fails(root, *args, match="hardlink target 'missing' not found")
    where = {"store": f"{lay.root}: ", "load": f"{lay.root}: image bad:1 "}.get(dest, "")
    assert msg.startswith(f"lamina: error: {where}layer 2 of 3 ({digest}): entry 'x': "), msg
    _unchanged(root, before)


@pytest.mark.parametrize("dest", ["store", "load", "docker-archive", "unpack", "unpack-overlay"])
def test_a_diffid_mismatch_names_the_layer_by_its_place_in_the_image(root, tmp_path, dest):  # noqa: F811
    """The second of three layers is not the diffID its config says.  copy and load said
    "layer sha256:…: diffID (uncompressed tar): digest mismatch", copy to a docker-archive
    "layer sha256:… (diffID …)": which of the image's layers that was, the reader had to find.
    unpack said "layer 1 (sha256:…)", counting from 0 where the others count from 1."""
    lay = ob.Layout(tmp_path / "lay")
    layers = [{"a": b"1"}, {"b": b"2"}, {"c": b"3"}]
    config = lay.read_json(lay.read_json(lay.image(layers)["digest"])["config"]["digest"])
    diff_ids = list(config["rootfs"]["diff_ids"])
    diff_ids[1] = ob.sha256(b"not it")
    bad = lay.image(layers, diff_ids=diff_ids)
    lay.add(bad, "bad:1")
    before = fingerprint(root)
    args = {"store": ("copy", f"oci:{lay.root}:bad:1", "bad:1"), "load": ("load", "-i", lay.root),
            "docker-archive": ("copy", f"oci:{lay.root}:bad:1", f"docker-archive:{tmp_path}/d.tar"),
            "unpack": ("unpack", f"oci:{lay.root}:bad:1", tmp_path / "dest"),
            "unpack-overlay": ("unpack", "--overlay", f"oci:{lay.root}:bad:1", tmp_path / "dest")}[dest]
    msg = fails(root, *args, match="digest mismatch")
    assert "layer 2 of 3" in msg and f"expected {diff_ids[1]}" in msg, msg
    if dest.startswith("unpack"):
        assert f"layer 2 of 3 ({lay.read_json(bad['digest'])['layers'][1]['digest']})" in msg, msg
        assert not (tmp_path / "dest").exists()
    _unchanged(root, before)


@pytest.mark.parametrize("verb", ["copy", "load"])
def test_a_refused_import_leaves_no_object_of_the_layers_it_had_extracted(root, tmp_path, verb):  # noqa: F811
    """An image whose first layer is new and fine and whose second is refused (its diffID is not
    its tar's): the import removed the blobs and snapshot it had made, but the file objects the
    first layer's files were shared into stayed, and fsck warned "not used by any snapshot"."""
    lay = ob.Layout(tmp_path / "lay")
    raws = [ob.tar_bytes({"first": b"first layer, new to the store\n" * 50}), ob.tar_bytes({"second": b"2\n"})]
    blobs = [ob.gz(raw) for raw in raws]
    for blob in blobs:
        lay.blob(blob)
    config = lay.json_blob({"architecture": "amd64", "os": "linux",
                            "rootfs": {"type": "layers", "diff_ids": [ob.sha256(raws[0]), ob.sha256(b"not it")]}},
                           ob.OCI_CONFIG)
    lay.add(lay.json_blob({"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST, "config": config,
                           "layers": [ob.desc(ob.OCI_LAYER_GZIP, b) for b in blobs]}, ob.OCI_MANIFEST),
            "docker.io/library/bad:1")
    before = fingerprint(root)
    if verb == "copy":
        args = ("copy", f"oci:{lay.root}:docker.io/library/bad:1", "bad:1")
    else:
        archive = tmp_path / "bad.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(lay.root, arcname=".")
        args = ("load", "-i", archive)
    fails(root, *args, match="diffID (uncompressed tar): digest mismatch")
    _unchanged(root, before)
    assert json.loads(lamina(root, "fsck", "--format", "json").stdout)["findings"] == []


# --- configs used for more than digests: history --------------------------------------------------


def test_a_history_with_more_layer_steps_than_layers_is_refused_as_docker_does(root, tmp_path):  # noqa: F811
    """history showed the steps beyond the image's layers as layers of 0B; docker refuses such
    a config ("too many non-empty layers in History section")."""
    steps = [{"created_by": f"RUN step {i}"} for i in range(3)] + [{"created_by": "ENV x=1", "empty_layer": True}]
    lay = ob.Layout(tmp_path / "hist")
    lay.add(lay.image([{"a": b"A"}], config_extra={"history": steps}), "latest")
    lamina(root, "copy", f"oci:{lay.root}:latest", "hist:1")
    fails(root, "history", "hist:1", match="more steps with a layer (not empty_layer) than the image's 1 layers")
    lay2 = ob.Layout(tmp_path / "hist2")   # as many layer steps as layers: fine, empty ones 0B
    lay2.add(lay2.image([{"a": b"A"}], config_extra={"history": steps[2:]}), "latest")
    lamina(root, "copy", f"oci:{lay2.root}:latest", "hist:2")
    sizes = lamina(root, "history", "--format", "{{.Size}}", "hist:2").stdout.split()
    assert len(sizes) == 2 and sizes[0] == "0B" and sizes[1] != "0B"


def test_a_destination_index_that_is_a_fifo_is_refused_not_waited_on(root, tmp_path):  # noqa: F811
    """copy IMG oci:DIR opened DIR/index.json to merge its entries: a FIFO there hung it for
    good (and a symlink to /dev/zero read on until memory ran out)."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    os.mkfifo(dest / "index.json")
    fails(root, "copy", "keep:1", f"oci:{dest}:keep", match=f"{dest / 'index.json'} is not a regular file",
          timeout=60)
    assert not (dest / "blobs").exists()   # refused before any blob was written


@pytest.mark.parametrize("manifests,detail", [
    ('"abc"', "'manifests' must be a list"),
    ('{"k": 1}', "'manifests' must be a list"),
    ('[1, "x", null]', "descriptor is not a JSON object"),
    ('[{"mediaType": 5}]', "invalid mediaType 5"),
    ('[], "manifests": []', "duplicate key 'manifests'"),
])
def test_a_destination_index_that_is_no_image_index_is_refused_not_extended(root, tmp_path, manifests,  # noqa: F811
                                                                            detail):
    """copy IMG oci:DIR:REF kept whatever DIR/index.json's "manifests" held and added its entry:
    a string became one entry per character ("a", "b", "c"), a map its keys, and the index.json
    written was one that skopeo and umoci refuse ("cannot unmarshal string into ... Descriptor")."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = '{"schemaVersion": 2, "manifests": %s}' % manifests
    (dest / "index.json").write_text(index)
    error = fails(root, "copy", "keep:1", f"oci:{dest}:keep", match=f"{dest / 'index.json'}: not a valid image index")
    assert detail in error and error.endswith("refusing to overwrite it")
    assert (dest / "index.json").read_text() == index
    assert not (dest / "blobs").exists()   # refused before any blob was written


def test_an_archive_whose_manifest_json_and_index_json_name_different_images_is_refused(root, tmp_path):  # noqa: F811
    """docker >= 25 writes an OCI layout and a manifest.json for older readers.  lamina (and
    containerd) read the layout, docker's own load and skopeo the manifest.json: an archive whose
    two name different images was two images.  Refused, naming the manifest.json entry."""
    lay = ob.Layout(tmp_path / "lay")
    shown = lay.add(lay.image([{"a": b"A"}], compress=False), "1", **{"io.containerd.image.name": "app:1"})
    hidden = lay.read_json(lay.image([{"b": b"B"}], compress=False)["digest"])

    def entry(manifest):
        return {"Config": "blobs/sha256/" + manifest["config"]["digest"][7:], "RepoTags": ["app:1"],
                "Layers": ["blobs/sha256/" + d["digest"][7:] for d in manifest["layers"]]}

    def archive(path, manifest):
        (tmp_path / "lay" / "manifest.json").write_text(json.dumps([entry(manifest)]))
        with tarfile.open(path, "w") as tar:
            for name in sorted(os.listdir(lay.root)):
                tar.add(os.path.join(lay.root, name), name)
        return path

    before = fingerprint(root)
    fails(root, "load", "-i", archive(tmp_path / "two.tar", hidden), match="manifest.json: entry 0 (config "
          f"blobs/sha256/{hidden['config']['digest'][7:]}) is not an image of the archive's index.json")
    _unchanged(root, before)
    lamina(root, "load", "-i", archive(tmp_path / "one.tar", lay.read_json(shown["digest"])))   # agreeing: loads


# --- documents too big to read -------------------------------------------------------------------


def _oversized(tmp_path, kind):
    """A layout whose config (100 MB), manifest (10 MB) or index (100,000 entries, some 15 MB) is
    over lamina's limit, and what the error names.  The 100 MB config is a sparse file of zeros
    under a digest it does not have: read, it would fail the digest, not the size."""
    lay = ob.Layout(tmp_path / "lay")
    m = lay.image([{"a": b"A"}])
    if kind == "config":
        doc = lay.read_json(m["digest"])
        fake = "sha256:" + "c0" * 32
        with open(lay.path(fake), "wb") as f:
            f.truncate(100 << 20)
        doc["config"] = dict(doc["config"], digest=fake, size=100 << 20)
        top = lay.json_blob(doc, ob.OCI_MANIFEST)
        return lay, top, f"config {fake}: {100 << 20} bytes is larger than the {8 << 20}-byte limit"
    if kind == "manifest":
        doc = lay.read_json(m["digest"])
        doc["annotations"] = {"pad": "p" * (10 << 20)}
        top = lay.json_blob(doc, ob.OCI_MANIFEST)
        return lay, top, f"manifest {top['digest']}: {top['size']} bytes is larger than the {4 << 20}-byte limit"
    entries = [{"mediaType": ob.OCI_MANIFEST, "digest": m["digest"], "size": m["size"]}] * 100_000
    top = lay.index(entries)
    assert 14 << 20 < top["size"] < 16 << 20, top["size"]   # under the 16 MiB lamina took for any document
    return lay, top, f"index {top['digest']}: {top['size']} bytes is larger than the {4 << 20}-byte limit"


@pytest.mark.parametrize("kind", ["config", "manifest", "index"])
def test_a_document_over_its_limit_is_refused_by_its_size_naming_the_blob(root, tmp_path, kind):  # noqa: F811
    """A 10 MB manifest and a 100,000-entry index (15 MB) were read and parsed whole from a layout
    or archive (any document up to 16 MiB), though docker-registry refuses to store either and
    skopeo to read it (4 MiB); a config, up to 16 MiB where a pull allowed 8.  Now a manifest or
    index is held to 4 MiB and a config to 8 MiB whichever way it comes, refused by its
    descriptor's size before a byte is read, naming the blob."""
    lay, top, match = _oversized(tmp_path, kind)
    lay.add(top, "latest")
    before = fingerprint(root)
    fails(root, "copy", f"oci:{lay.root}:latest", "big:1", match=match)
    fails(root, "unpack", f"oci:{lay.root}:latest", tmp_path / "out", match=match)
    assert not (tmp_path / "out").exists()
    _unchanged(root, before)


def test_a_manifest_whose_descriptor_understates_it_is_read_no_further_than_the_limit(root, tmp_path):  # noqa: F811
    """A 10 MB manifest whose index.json entry says 500 bytes: read up to the limit and refused."""
    lay, top, _ = _oversized(tmp_path, "manifest")
    lay.add(dict(top, size=500), "latest")
    fails(root, "copy", f"oci:{lay.root}:latest", "big:1",
          match=f"manifest {top['digest']}: larger than the {4 << 20}-byte limit")
