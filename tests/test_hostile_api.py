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


def test_the_store_api_names_a_refused_layer_by_its_place(tmp_path):
    """Store.snapshots_for and add_image (the Store API of README's API section, which verbkit's
    load_layout uses) named a refused layer by its digest alone: "layer sha256:…: entry 'x': …",
    "manifest sha256:…: layer sha256:… is not in the store", where unpack, copy, load and pull
    say "layer 2 of 3 (sha256:…)".  Now they say its place too (put_blob and ingest are given a
    blob, of no image yet: its digest is all they can name)."""
    tars = _three_layers_the_middle_one_refused()
    root, digests = _added_without_snapshots(tmp_path, tars)
    store = lamina_api.Store(root)
    try:
        image = store.resolve("bad:1")
        with pytest.raises(LaminaError) as e:
            store.snapshots_for(image)
        text = str(e.value)
        assert text.startswith(f"layer 2 of 3 ({digests[1]}): entry 'x': "), text
        assert "hardlink target 'missing' not found" in text, text
    finally:
        store.close()
    _fsck_clean(root)

    # the same image, its second layer's blob never stored
    lay = ob.Layout(tmp_path / "lay2")
    m = lay.image_of_tars(tars, "t")
    manifest = lay.read_json(m["digest"])
    store = lamina_api.Store(tmp_path / "root2")
    try:
        for digest in [manifest["layers"][0]["digest"], manifest["layers"][2]["digest"], manifest["config"]["digest"],
                       m["digest"]]:
            with open(lay.path(digest), "rb") as f:
                store.put_blob(f.read(), digest)
        with pytest.raises(LaminaError) as e:
            store.add_image(m["digest"], "bad:1")
        assert str(e.value) == (f"manifest {m['digest']}: layer 2 of 3 ({digests[1]}) is not in the store"), \
            str(e.value)
        assert list(store.images()) == []
    finally:
        store.close()


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


# --- what a calling tool passes: references, platforms, and the descriptors a refusal gives back ---

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sample", "image")
HOSTILE_PLATFORMS = ["linux/../amd64", "linux/amd64/../../x", "../..", "linux/amd64\n", "linux/amd64\0",
                     "linux/amd64/v8/extra", "", "linux//amd64", "/amd64", b"linux/amd64", 5]


def _open_fds():
    return sorted(os.listdir("/proc/self/fd"))


@pytest.fixture
def sample_store(tmp_path):
    from lamina.transports import copy
    store = lamina_api.Store(tmp_path / "root")
    copy(f"oci:{SAMPLE}:latest", "sample:1", store=store)
    I.unpack(store, "sample:1", tmp_path / "warm")   # the store's own cached descriptors opened
    yield store
    store.close()


def test_hostile_references_and_platforms_are_refused_by_every_api_call(tmp_path, sample_store):
    """A reference with ``..`` or a NUL, a digest of the wrong length, a platform of ``..`` or a
    NUL or of another type: each call refuses it with a LaminaError (the API's promise: nothing
    else on bad input), makes no DEST and gives back every descriptor it opened."""
    from lamina.store import mounts
    from lamina.transports import copy
    store = sample_store
    dest = tmp_path / "dest"
    calls = [
        ("unpack ref ..", lambda: lamina_api.unpack(f"oci:{SAMPLE}:../../etc", dest)),
        ("unpack ref NUL", lambda: lamina_api.unpack(f"oci:{SAMPLE}:lat\0est", dest)),
        ("unpack bytes", lambda: lamina_api.unpack(os.fsencode(f"oci:{SAMPLE}:latest"), dest)),
        ("copy ref ..", lambda: copy(f"oci:{SAMPLE}:latest", "a/../b:1", store=store)),
        ("store ref ..", lambda: I.unpack(store, "../../etc", dest)),
        ("store ref NUL", lambda: I.unpack(store, "sample:1\0", dest)),
        ("store short digest", lambda: I.unpack(store, "sha256:abc", dest)),
        ("store digest ..", lambda: I.unpack(store, "sha256:" + "../" * 21 + "a", dest)),
        ("tag ..", lambda: I.tag(store, "sample:1", "../../x")),
        ("remove ..", lambda: I.remove(store, "../x")),
        ("mount ref ..", lambda: mounts.mount(store, "../x", dest)),
    ]
    for p in HOSTILE_PLATFORMS:
        calls += [(f"unpack platform {p!r}", lambda p=p: lamina_api.unpack(f"oci:{SAMPLE}:latest", dest, platform=p)),
                  (f"store platform {p!r}", lambda p=p: I.unpack(store, "sample:1", dest, platform=p)),
                  (f"copy platform {p!r}", lambda p=p: copy(f"oci:{SAMPLE}:latest", "x:1", store=store, platform=p)),
                  (f"mount platform {p!r}", lambda p=p: mounts.mount(store, "sample:1", dest, platform=p))]
    before = _open_fds()
    for what, call in calls:
        with pytest.raises(LaminaError):
            call()
        assert not dest.exists(), what
        assert _open_fds() == before, what
    assert store.fsck().ok


def _bad_layout(tmp_path):
    lay = ob.Layout(tmp_path / "bad")
    lay.image_of_tars(_three_layers_the_middle_one_refused(), "t")
    return lay.root


@pytest.mark.parametrize("call", ["unpack", "unpack overlay", "copy", "store unpack into a file", "mount refused"])
def test_a_refused_call_gives_back_every_descriptor(tmp_path, sample_store, call):
    """A refusal half-way (a layer refused while others extract, four at a time for the
    overlay format; a store's unpack refused after its image resolved; a mount refused after
    its target was pinned) closes what it opened: a tool that calls lamina in a loop over
    hostile images must not run out of descriptors."""
    from lamina.store import mounts
    from lamina.transports import copy
    store = sample_store
    bad = _bad_layout(tmp_path)
    (tmp_path / "file").write_bytes(b"")
    run = {"unpack": lambda i: lamina_api.unpack(f"oci:{bad}:t", tmp_path / f"d{i}"),
           "unpack overlay": lambda i: lamina_api.unpack(f"oci:{bad}:t", tmp_path / f"d{i}", format="overlay"),
           "copy": lambda i: copy(f"oci:{bad}:t", f"bad:{i}", store=store),
           "store unpack into a file": lambda i: I.unpack(store, "sample:1", tmp_path / "file"),
           "mount refused": lambda i: mounts.mount(store, "sample:1", tmp_path / "file")}[call]
    with pytest.raises(LaminaError):
        run(0)   # a first refusal may close what the store kept open (a rollback drops its caches)
    before = _open_fds()
    for i in range(1, 6):
        with pytest.raises(LaminaError):
            run(i)
        assert len(_open_fds()) <= len(before), (i, _open_fds(), before)
    assert sorted(os.listdir(tmp_path)) == ["bad", "file", "root", "warm"]
    assert store.fsck().ok


@pytest.mark.parametrize("how", ["save", "docker-archive", "oci-archive"])
def test_an_archive_under_a_file_is_refused_saying_what_is_there(tmp_path, sample_store, how):
    """``save -o FILE/x.tar`` (and copy to ``docker-archive:`` / ``oci-archive:FILE/x.tar``),
    FILE a regular file an earlier tree left: refused with "FILE: no such directory", which
    sent the user looking for a directory that was never missing.  Now it says what is there;
    nothing is written."""
    from lamina.transports import copy, save
    (tmp_path / "file").write_bytes(b"kept\n")
    out = tmp_path / "file" / "x.tar"
    with pytest.raises(LaminaError) as e:
        if how == "save":
            save(["sample:1"], out, store=sample_store)
        else:
            copy("sample:1", f"{how}:{out}", store=sample_store)
    assert str(e.value) == f"{tmp_path / 'file'} exists and is not a directory", str(e.value)
    assert (tmp_path / "file").read_bytes() == b"kept\n"
    assert sorted(os.listdir(tmp_path)) == ["file", "root", "warm"]


@pytest.mark.parametrize("call", ["unpack", "unpack overlay", "apply_layer_atomic", "Store", "images.unpack",
                                  "images.unpack link", "images.unpack bundle", "mount", "save", "copy oci:"])
def test_a_destination_given_as_bytes_is_the_path_those_bytes_name(tmp_path, sample_store, call):
    """A calling tool names a DEST by its bytes (``b"/srv/rootfs\\xff"``: not UTF-8, as an
    image's or a host's names may be), as os functions and apply_layer take it.  unpack,
    images.unpack, mount, save, Store(...) failed with "TypeError: can't concat str to bytes"
    (no LaminaError, nothing said of the path) once they joined it with a name of their own."""
    from lamina.store import mounts
    from lamina.transports import copy, save
    dest = os.fsencode(tmp_path) + b"/dest\xff"
    blob = os.path.join(SAMPLE, "blobs", "sha256", sorted(os.listdir(os.path.join(SAMPLE, "blobs", "sha256")))[0])
    run = {"unpack": lambda: lamina_api.unpack(f"oci:{SAMPLE}:latest", dest),
           "unpack overlay": lambda: lamina_api.unpack(f"oci:{SAMPLE}:latest", dest, format="overlay"),
           "apply_layer_atomic": lambda: lamina_api.apply_layer_atomic(blob, dest),
           "Store": lambda: copy(f"oci:{SAMPLE}:latest", "s:1", store=lamina_api.Store(dest)),
           "images.unpack": lambda: I.unpack(sample_store, "sample:1", dest),
           "images.unpack link": lambda: I.unpack(sample_store, "sample:1", dest, link=True),
           "images.unpack bundle": lambda: I.unpack(sample_store, "sample:1", dest, bundle=True),
           "mount": lambda: mounts.mount(sample_store, "sample:1", dest),
           "save": lambda: save(["sample:1"], dest, store=sample_store),
           "copy oci:": lambda: copy("sample:1", "oci:" + os.fsdecode(dest), store=sample_store)}[call]
    try:
        run()
        assert sorted(n for n in os.listdir(os.fsencode(tmp_path)) if n not in (b"root", b"warm")) == [b"dest\xff"]
        if call == "unpack overlay":
            with open(dest + b"/mount-options", "rb") as f:
                assert dest + b"/layers/0" in f.read()   # the path's own bytes, as mount -o wants them
        elif call == "mount":
            assert os.path.ismount(dest) and os.path.isdir(dest + b"/bin")
    finally:
        if call == "mount" and os.path.ismount(dest):
            mounts.umount(sample_store, dest)
    assert sample_store.fsck().ok


@pytest.mark.parametrize("above", [1, 2])
def test_a_mount_target_that_holds_the_store_is_refused(tmp_path, above):
    """``lamina mount IMG DIR`` where DIR holds the store (ROOT's parent, or a directory above
    it; "/" is one): the image covered the store, which then looked empty (``lamina images``
    listed nothing), and ``lamina umount DIR`` said "not a lamina mount of the store", its
    records being under the mount.  Refused now; a target beside the store still mounts."""
    root = tmp_path / "a" / "root"
    lamina(root, "copy", f"oci:{SAMPLE}:latest", "s:1")
    target = root.parents[above - 1]
    try:
        proc = lamina(root, "mount", "s:1", target, check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == (
            f"lamina: error: mount target {target} holds the store {root}: the image would cover it "
            "(and the records lamina umount needs); give one outside it"), proc.stderr
    finally:
        if os.path.ismount(target):
            os.system(f"umount {target}")
            pytest.fail("mounted over the store")
    assert lamina(root, "images", "-q").stdout.strip()
    beside = root.parent / "mnt"
    lamina(root, "mount", "s:1", beside)
    assert os.path.ismount(beside)
    lamina(root, "umount", beside)
    assert json.loads(lamina(root, "mount", "--format", "json").stdout)["mounts"] == []
    _fsck_clean(root)


def _a_layer_blob():
    return os.path.join(SAMPLE, "blobs", "sha256", sorted(os.listdir(os.path.join(SAMPLE, "blobs", "sha256")))[0])


@pytest.mark.parametrize("verb", ["mount", "unpack", "unpack --bundle", "unpack oci:", "apply", "apply --atomic"])
@pytest.mark.parametrize("left", ["symlink to nothing", "file"])
def test_a_path_through_what_an_earlier_tree_left_is_refused_saying_what_is_there(tmp_path, verb, left):
    """An earlier image's tree at R left ``R/d -> OUT/new`` (nothing there yet) or a file
    ``R/d``.  ``lamina mount IMG R/d/mnt`` resolved the path first and made OUT/new/mnt where
    the link pointed, then mounted the image there; unpack said "R/d/mnt: No such file or
    directory", "R/d: File exists" or "Not a directory" (apply --atomic: of a staging dir the
    user never named).  Now, as ``mkdir -p``, nothing is made
    through the link, and the error names the component and what it is."""
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{SAMPLE}:latest", "s:1")
    r, out = tmp_path / "R", tmp_path / "OUT"
    r.mkdir()
    if left == "file":
        (r / "d").write_bytes(b"")
        why = f"{r / 'd'} exists and is not a directory"
    else:
        os.symlink(out / "new", r / "d")
        why = f"{r / 'd'} is a symlink to {str(out / 'new')!r}, where there is no directory"
    dest = r / "d" / "mnt"
    args = {"mount": ["mount", "s:1", dest], "unpack": ["unpack", "s:1", dest / "x"],
            "unpack --bundle": ["unpack", "--bundle", "s:1", dest / "x"],
            "unpack oci:": ["unpack", f"oci:{SAMPLE}:latest", dest / "x"],
            "apply": ["apply", _a_layer_blob(), dest / "x"],
            "apply --atomic": ["apply", "--atomic", _a_layer_blob(), dest / "x"]}[verb]
    try:
        proc = lamina(root, *args, check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        what = f"mount target {dest}" if verb == "mount" else f"destination {dest / 'x'}"
        assert proc.stderr.strip().splitlines()[-1] == f"lamina: error: cannot make {what}: {why}", proc.stderr
    finally:
        if os.path.ismount(out / "new" / "mnt"):
            os.system(f"umount {out / 'new' / 'mnt'}")
            pytest.fail("mounted where the dangling link pointed")
    assert not out.exists() and sorted(os.listdir(r)) == ["d"]
    _fsck_clean(root)


def _wrong_types(store, tmp_path):
    """(call, the argument's name in the TypeError) for each API function of README's section
    given a wrong type where it takes a name, path, list or store."""
    from lamina.transports import copy, load, save
    d = str(tmp_path / "d")
    sample = f"oci:{SAMPLE}:latest"
    return {
        "Store root": (lambda: lamina_api.Store(5), "root"),
        "unpack dest": (lambda: lamina_api.unpack(sample, 5), "dest"),
        "copy source": (lambda: copy(5, "x:1", store=store), "source"),
        "copy destination": (lambda: copy(sample, 5, store=store), "destination"),
        "copy store": (lambda: copy(sample, "x:1", store=5), "store"),
        "load path": (lambda: load(5, store=store), "path"),
        "load store": (lambda: load(SAMPLE, store=5), "store"),
        "images.prune all": (lambda: I.prune(store, all=5), "all"),
        "images.remove force": (lambda: I.remove(store, "sample:1", force=5), "force"),
        "images.remove prune": (lambda: I.remove(store, "sample:1", prune=5), "prune"),
        "images.unpack dest": (lambda: I.unpack(store, "sample:1", 5), "dest"),
        "images.unpack bundle": (lambda: I.unpack(store, "sample:1", d, bundle=5), "bundle"),
        "images.unpack link": (lambda: I.unpack(store, "sample:1", d, link=5), "link"),
        "images.mount target": (lambda: I.mount(store, "sample:1", 5), "target"),
        "images.mount rw": (lambda: I.mount(store, "sample:1", d, rw=5), "rw"),
        "images.mount suid": (lambda: I.mount(store, "sample:1", d, suid=5), "suid"),
        "images.umount target": (lambda: I.umount(store, 5), "target"),
        "images.umount lazy": (lambda: I.umount(store, d, lazy=5), "lazy"),
        "find_files path": (lambda: store.find_files(path=5), "find_files: path"),
        "find_files blake3": (lambda: store.find_files(blake3=5), "find_files: blake3"),
        "apply_layer layer": (lambda: lamina_api.apply_layer(5, d), "layer"),
        "apply_layer_atomic layer": (lambda: lamina_api.apply_layer_atomic(5, d), "layer"),
        "scan_layer layer": (lambda: __import__("lamina.layer").layer.scan_layer(5), "layer"),
        "images.ls filters": (lambda: I.ls(store, 5), "filters"),
        "images.prune filters": (lambda: I.prune(store, filters=5), "filters"),
        "save refs": (lambda: save(5, str(tmp_path / "s.tar"), store=store), "refs"),
        "save refs items": (lambda: save(["sample:1", 5], str(tmp_path / "s.tar"), store=store), "refs"),
        "images.ls store": (lambda: I.ls(5), "store"),
        "images.inspect store": (lambda: I.inspect(5, "sample:1"), "store"),
        "images.history store": (lambda: I.history(5, "sample:1"), "store"),
        "images.tag store": (lambda: I.tag(5, "sample:1", "x:1"), "store"),
        "images.remove store": (lambda: I.remove(5, "sample:1"), "store"),
        "images.prune store": (lambda: I.prune(5), "store"),
        "images.disk_usage store": (lambda: I.disk_usage(5), "store"),
        "images.unpack store": (lambda: I.unpack(5, "sample:1", d), "store"),
        "images.mount store": (lambda: I.mount(5, "sample:1", d), "store"),
        "images.mounts store": (lambda: I.mounts(5), "store"),
        "images.umount store": (lambda: I.umount(5, d), "store"),
    }


WRONG_TYPES = sorted(_wrong_types(None, __import__("pathlib").Path("/nonexistent")))


@pytest.mark.parametrize("call", WRONG_TYPES)
def test_a_wrong_type_is_a_type_error_naming_the_argument(tmp_path, sample_store, call):
    """``store.find_files(path=5)`` raised "AttributeError: 'int' object has no attribute
    'lstrip'" (and ``blake3=5`` matched nothing); ``apply_layer(5, ...)``, ``images.ls(store, 5)``,
    ``images.disk_usage(5)`` and their kind failed as deep in, naming no argument.  Each is now
    a TypeError saying which argument and what it takes; nothing is written and the store is
    left as it was."""
    run, what = _wrong_types(sample_store, tmp_path)[call]
    try:
        with pytest.raises(TypeError) as e:
            run()
    finally:
        if os.path.ismount(tmp_path / "d"):   # mount(rw=5) took the 5 for True
            I.umount(sample_store, str(tmp_path / "d"))
    assert str(e.value).startswith(f"{what}: "), str(e.value)
    assert str(e.value).endswith("not 5"), str(e.value)
    assert not os.path.exists(tmp_path / "d") and not os.path.exists(tmp_path / "s.tar")
    assert [r.repo_tags for r in I.ls(sample_store)] == [["sample:1"]]
    assert sample_store.fsck().ok


@pytest.mark.parametrize("word", ["no", "false", ""])
def test_prune_all_given_a_word_is_a_type_error_not_every_image_removed(tmp_path, sample_store, word):
    """``images.prune(store, all="no")`` took the str for true and removed every image the
    store held (``all=""`` none): a flag given anything but True or False is a TypeError."""
    with pytest.raises(TypeError, match=f"^all: True or False, not {word!r}$"):
        I.prune(sample_store, all=word)
    assert [r.repo_tags for r in I.ls(sample_store)] == [["sample:1"]]


def test_save_takes_one_reference_given_as_a_string(tmp_path, sample_store):
    """``save("sample:1", FILE)``: the str was taken for its characters, and the save failed with
    "no such image: s:latest" (the same slip as ``insecure=``'s); now it is that one image."""
    import tarfile
    from lamina.transports import save
    out = tmp_path / "s.tar"
    save("sample:1", str(out), store=sample_store)
    with tarfile.open(out) as t:
        manifest = json.load(t.extractfile("manifest.json"))
    assert [m["RepoTags"] for m in manifest] == [["sample:1"]], manifest
