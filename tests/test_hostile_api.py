"""Hostile inputs given through the Python API and the store's second chances: images whose
snapshots are extracted later than their import (added through the Store API, a snapshot that
fsck --repair removed), and targets that an earlier image's tree left in place.

Each refusal names what is wrong as the CLI's unpack names it (``layer 2 of 3 (sha256:…)``),
leaves the store consistent and leaves no DEST or mount target the caller did not have.
"""
import json
import os

import pytest

import ocibuild as ob
from storekit import lamina
from tarbuild import Tar

import lamina as lamina_api
from lamina import images as I
from lamina.errors import LaminaError


def _added_without_snapshots(tmp_path, tars, ref="bad:1"):
    """A store holding an image whose blobs went in through the Store API (ingest, put_blob,
    add_image) and whose layers were never extracted: the first unpack/mount extracts them."""
    lay = ob.Layout(tmp_path / "lay")
    m = lay.image_of_tars(tars, "t")
    manifest = lay.read_json(m["digest"])
    root = tmp_path / "root"
    store = lamina_api.Store(root)
    for layer in manifest["layers"]:
        with store.ingest(layer["digest"], layer["size"]) as w:
            if not w.exists:
                with open(lay.path(layer["digest"]), "rb") as f:
                    w.write(f.read())
                w.commit()
    for digest in (manifest["config"]["digest"], m["digest"]):
        with open(lay.path(digest), "rb") as f:
            store.put_blob(f.read(), digest)
    store.add_image(m["digest"], ref)
    store.close()
    return root, [layer["digest"] for layer in manifest["layers"]]


def _three_layers_the_middle_one_refused():
    good = Tar().file("a", b"a").bytes()
    return [good, Tar().file("b", b"b").hardlink("x", "missing").bytes(), Tar().file("c", b"c").bytes()]


def _fsck_clean(root):
    report = json.loads(lamina(root, "fsck", "--format", "json").stdout)
    assert report["ok"] and not report.get("errors"), report


@pytest.mark.parametrize("verb", ["unpack", "unpack --link", "unpack --bundle", "mount"])
def test_a_layer_extracted_after_its_import_is_named_by_its_place(tmp_path, verb):
    """unpack REF, --link, --bundle and mount extract the snapshots an image lacks.  A layer
    refused there was named by its digest alone ("layer sha256:…: entry 'x': …"), where unpack
    of a layout, copy, load and pull say "layer 2 of 3 (sha256:…): entry 'x': …".  And a
    refused mount left the TARGET directory it had made."""
    root, digests = _added_without_snapshots(tmp_path, _three_layers_the_middle_one_refused())
    target = tmp_path / "target"
    proc = lamina(root, *verb.split(), "bad:1", target, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"lamina: error: layer 2 of 3 ({digests[1]}): entry 'x': "), line
    assert "hardlink target 'missing' not found" in line, line
    assert not target.exists()
    assert sorted(os.listdir(tmp_path)) == ["lay", "root"]  # no staging sibling left either
    _fsck_clean(root)


@pytest.mark.parametrize("call", ["images.unpack", "mounts.mount"])
def test_the_api_names_the_layer_as_the_cli_does(tmp_path, call):
    """The same through the Python API: the exception's text names the layer's place."""
    from lamina.store import mounts
    tars = _three_layers_the_middle_one_refused()
    root, digests = _added_without_snapshots(tmp_path, tars)
    store = lamina_api.Store(root)
    try:
        with pytest.raises(LaminaError) as e:
            if call == "images.unpack":
                I.unpack(store, "bad:1", tmp_path / "dest")
            else:
                mounts.mount(store, "bad:1", tmp_path / "dest")
    finally:
        store.close()
    text = str(e.value)
    assert text.startswith(f"layer 2 of 3 ({digests[1]}): entry 'x': "), text
    assert not (tmp_path / "dest").exists()
    _fsck_clean(root)


# --- in-place targets: what an earlier image's tree left where the next one goes --------------


@pytest.mark.parametrize("how", ["cli", "cli link/", "api"])
def test_a_mount_target_that_is_a_symlink_is_refused(tmp_path, how):
    """An earlier image unpacked at R left ``R/mnt -> /etc`` (here: to an empty dir of the test).
    ``lamina mount IMG R/mnt`` followed it and put the image over the link's target, where
    apply, apply --atomic and unpack refuse a DEST that is a symlink (CONFORMANCE.md).  Now
    refused too, naming both; nothing is mounted and no mount recorded."""
    root = tmp_path / "root"
    lamina(root, "copy", "oci:" + os.path.join(os.path.dirname(__file__), "..", "sample", "image") + ":latest", "s:1")
    victim, link = tmp_path / "victim", tmp_path / "mnt"
    victim.mkdir()
    os.symlink(victim, link)
    try:
        if how == "api":
            store = lamina_api.Store(root)
            try:
                with pytest.raises(LaminaError) as e:
                    I.mount(store, "s:1", link)
            finally:
                store.close()
            line = str(e.value)
        else:
            proc = lamina(root, "mount", "s:1", f"{link}/" if how == "cli link/" else link, check=False)
            assert proc.returncode == 1, proc.stdout + proc.stderr
            line = proc.stderr.strip().splitlines()[-1]
        assert f"mount target {link} is a symlink (to {str(victim)!r})" in line, line
    finally:
        if os.path.ismount(victim):
            os.system(f"umount {victim}")
            pytest.fail("mounted through the symlink")
    assert os.path.islink(link) and os.listdir(victim) == []
    assert json.loads(lamina(root, "mount", "--format", "json").stdout)["mounts"] == []
    _fsck_clean(root)
