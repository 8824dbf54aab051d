"""Hostile images and the store's life afterwards: what a refused image leaves when another
writer is at work beside it, and what rmi, prune, gc, fsck, save and mount do with what a
hostile image stored.

Oracles: every path of everypath.py for the trees, fsck for the store's consistency, the
Guard (nothing outside the test's directory changed), and the reference tools where they
have an answer.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from everypath import assert_agree, describe, run_paths, write_image
from registryfixture import reg, registry_env, skopeo_push  # noqa: F401
from storekit import LAMINA, lamina, seeded_bytes
from tarbuild import Tar


def _fsck(root):
    proc = lamina(root, "fsck", "--format", "json", check=False)
    return json.loads(proc.stdout)["findings"]


def _listed(root):
    """What failed imports left for a later writer to take back."""
    d = root / "lamina" / "rollbacks"
    return os.listdir(d) if d.exists() else []


def _chains(root):
    return sorted(n for n in os.listdir(root / "snapshots") if not n.startswith("."))


# --- a refused import beside another writer ---------------------------------------------------

def _base():
    t = Tar().dir("base")
    for i in range(20):
        t.file(f"base/f{i}", seeded_bytes(f"base-{i}", 3000 + i))
    return t.bytes()


@pytest.mark.parametrize("verb", ["copy", "load"])
def test_a_refused_import_beside_a_good_one_leaves_the_store_as_the_good_one_alone_would(g, verb):
    """A hostile image (a base layer another image shares, a good layer of its own, then a layer
    refused: a hardlink to nothing) copied or loaded while another writer is at work beside it:
    the refusal could not take back what it had stored (that writer might be using it), so it
    left it to gc; fsck warned of its config, manifest and blobs ('not used by any image'), its
    own layer's snapshot and that snapshot's objects.  Now the last writer to finish takes them
    back: the store holds what the good image alone would, fsck is clean, and the good image
    is the tree every path makes of it."""
    base = _base()
    own = Tar().file("own", seeded_bytes("own", 5000)).bytes()
    refused = Tar().file("x", b"x" * 100).hardlink("h", "nothing/there").bytes()
    top = Tar().file("good", b"g" * 5000).bytes()
    bad = write_image(g.dest / "bad", [base, own, refused])
    good = write_image(g.dest / "good", [base, top])
    # the tree of the good image alone (every path agrees on such plain layers: test_every_path.py)
    want = assert_agree(run_paths(g.dest / "paths", [base, top], paths=("dir", "store-copy")),
                        context=describe([base, top]))
    alone = g.dest / "alone"
    lamina(alone, "copy", f"oci:{good}:img", "good:1")

    from lamina.store import Store
    from lamina.transports import copy
    root = g.dest / "store"
    writer = Store(root)
    writer.lease()  # a writer at work (a pull, a copy) from before the refused import to after it
    if verb == "copy":
        args = ("copy", f"oci:{bad}:img", "bad:1")
    else:
        subprocess.run(["skopeo", "copy", "-q", f"oci:{bad}:img", f"docker-archive:{g.dest / 'bad.tar'}:bad:1"],
                       check=True)
        args = ("load", "-i", g.dest / "bad.tar")
    proc = lamina(root, *args, check=False)
    assert proc.returncode == 1 and "layer 3 of 3" in proc.stderr and "'h'" in proc.stderr, proc.stderr
    assert any(f["kind"] == "orphan-blob" for f in _fsck(root)), "the refused import's leftovers are kept" \
        " while the other writer is at work"
    copy(f"oci:{good}:img", "good:1", store=writer)  # shares the base the refused import stored
    writer.close()

    assert _fsck(root) == []
    assert _chains(root) == _chains(alone)
    assert sorted(os.listdir(root / "blobs" / "sha256")) == sorted(os.listdir(alone / "blobs" / "sha256"))
    lamina(root, "unpack", "good:1", g.dest / "unpacked")
    from treecmp import compare, snapshot
    diff = compare(want, snapshot(g.dest / "unpacked"), labels=("every path", "good beside the refused"))
    assert not diff, diff
    assert lamina(root, "images", "-q").stdout.split() == lamina(alone, "images", "-q").stdout.split()
    g.check()


def test_a_refused_import_after_the_other_writer_finished_takes_back_at_once(g):
    """The other order: the writer that was at work finishes first, then the refusal; the refused
    import takes back what it stored itself, and leaves nothing listed for later."""
    base = _base()
    refused = Tar().file("x", b"x" * 100).hardlink("h", "nothing/there").bytes()
    bad = write_image(g.dest / "bad", [base, Tar().file("own", b"o" * 3000).bytes(), refused])
    root = g.dest / "store"
    from lamina.store import Store
    writer = Store(root)
    writer.lease()
    writer.close()
    proc = lamina(root, "copy", f"oci:{bad}:img", "bad:1", check=False)
    assert proc.returncode == 1, proc.stderr
    assert _fsck(root) == [] and _chains(root) == []
    assert _listed(root) == []
    g.check()



@pytest.mark.parametrize("verb", ["copy", "pull"])
def test_a_hostile_import_racing_a_good_pull_of_a_sharing_image(tmp_path, reg, registry_env, verb):  # noqa: F811
    """The same as two processes started together, a few times over (whichever finishes first):
    a good pull of an image and a refused copy or pull of a hostile one sharing its base.  The
    good image is whole, and fsck finds nothing but, for a refused pull, the blobs and snapshots
    it keeps for its rerun (never the shared base's, never an unused object).  With the copy,
    fsck is clean whatever the order (was: the copy's leftovers when the pull outlived it)."""
    base = Tar().dir("base")
    for i in range(120):
        base.file(f"base/f{i}", seeded_bytes(f"race-{i}", 8000 + i))
    base = base.bytes()
    top = Tar().file("good", b"g" * 5000).bytes()
    refused = Tar().file("x", b"x" * 100).hardlink("h", "nothing/there").bytes()
    good = write_image(tmp_path / "good", [base, top])
    bad = write_image(tmp_path / "bad", [base, Tar().file("own", b"o" * 3000).bytes(), refused])
    skopeo_push(f"oci:{good}:img", reg.host, "race/good:1")
    skopeo_push(f"oci:{bad}:img", reg.host, "race/bad:1")
    want = assert_agree(run_paths(tmp_path / "paths", [base, top], paths=("dir", "store-copy")),
                        context=describe([base, top]))
    with open(os.path.join(good, "index.json")) as f:
        (m,) = json.load(f)["manifests"]
    with open(os.path.join(good, "blobs", *m["digest"].split(":"))) as f:
        base_blob = json.load(f)["layers"][0]["digest"]
    from treecmp import compare, snapshot
    for n in range(3):
        root = tmp_path / f"store{n}"
        hostile = ["copy", f"oci:{bad}:img", "bad:1"] if verb == "copy" else ["pull", f"{reg.host}/race/bad:1"]
        procs = [subprocess.Popen([*LAMINA, "--root", str(root), *argv], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for argv in (hostile, ["pull", f"{reg.host}/race/good:1"])]
        (rc_bad, _, err_bad), (rc_good, _, err_good) = [(p.wait(timeout=120), *p.communicate()) for p in procs]
        assert rc_good == 0, err_good
        assert rc_bad == 1 and "'h'" in err_bad, err_bad
        image = json.loads(lamina(root, "inspect", f"{reg.host}/race/good:1").stdout)[0]
        kept = {"orphan-blob", "orphan-snapshot"} if verb == "pull" else set()
        findings = _fsck(root)
        assert [f for f in findings if f["kind"] not in kept] == [], findings
        shared = {image["RootFS"]["Layers"][0], base_blob}  # the base's snapshot and blob
        assert not [f for f in findings if f["subject"] in shared], findings
        lamina(root, "unpack", f"{reg.host}/race/good:1", tmp_path / f"good{n}")
        diff = compare(want, snapshot(tmp_path / f"good{n}"), labels=("every path", f"good, round {n}"))
        assert not diff, diff


@pytest.mark.parametrize("verb", ["gc", "fsck --repair"])
def test_gc_and_fsck_repair_take_what_a_refused_import_left_to_a_writer_that_never_closed(g, verb):
    """A writer at work beside the refusal is killed (it never closes): the leftovers stay
    listed, fsck names them, and gc (or fsck --repair) takes them and the list."""
    base = _base()
    refused = Tar().file("x", b"x" * 100).hardlink("h", "nothing/there").bytes()
    bad = write_image(g.dest / "bad", [base, refused])
    root = g.dest / "store"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from lamina.store import Store; "
                               "s = Store(sys.argv[1]); s.lease(); print('ok', flush=True); time.sleep(600)",
                               root], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        proc = lamina(root, "copy", f"oci:{bad}:img", "bad:1", check=False)
        assert proc.returncode == 1, proc.stderr
    finally:
        holder.kill()
        holder.wait()
    kinds = {f["kind"] for f in _fsck(root)}
    assert {"orphan-blob", "orphan-snapshot"} <= kinds, kinds
    from lamina.store import Store
    if verb == "gc":
        Store(root).gc()
    else:
        lamina(root, "fsck", "--repair")
    assert _fsck(root) == [] and _chains(root) == []
    assert _listed(root) == []
    g.check()


# --- a snapshot two images share through different blobs --------------------------------------

def test_fsck_checks_a_shared_snapshot_after_the_image_that_brought_its_blob_is_removed(g):
    """One layer, two blobs: image a loaded from a docker-archive (the plain tar) and image b
    copied from a layout (gzip) share the layer's snapshot, which names the blob it was made
    from.  After ``rmi a`` that blob is gone and fsck only warned it could not verify the
    snapshot, so a file changed in it went unseen (exit 0) though b's blob was there.  Now fsck
    checks it against b's blob: the change is an error, and --repair puts the layer back."""
    base = Tar().dir("etc").file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n" * 20).file("bin", b"b" * 4000).bytes()
    top = Tar().file("top", b"t").bytes()
    root = g.dest / "store"
    a = write_image(g.dest / "a", [base])
    subprocess.run(["skopeo", "copy", "-q", f"oci:{a}:img", f"docker-archive:{g.dest / 'a.tar'}:a:1"], check=True)
    lamina(root, "load", "-i", g.dest / "a.tar")
    lamina(root, "copy", f"oci:{write_image(g.dest / 'b', [base, top])}:img", "b:1")
    lamina(root, "rmi", "a:1")
    assert _fsck(root) == []
    want = assert_agree(run_paths(g.dest / "paths", [base, top], paths=("dir", "store-copy")),
                        context=describe([base, top]))

    (chain,) = [c for c in _chains(root) if (root / "snapshots" / c / "fs" / "etc").is_dir()]
    victim = root / "snapshots" / chain / "fs" / "etc" / "passwd"
    st = os.lstat(victim)
    data = victim.read_bytes()
    os.unlink(victim)  # a new inode: the store's object stays as it was (unused now: a warning)
    victim.write_bytes(data.replace(b"root:x:0:0", b"toor:x:0:0"))
    os.chmod(victim, st.st_mode & 0o7777)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = lamina(root, "fsck", "--format", "json", check=False)
    found = json.loads(proc.stdout)["findings"]
    errors = [f for f in found if f["severity"] == "error"]
    assert proc.returncode == 1 and [f["kind"] for f in errors] == ["bad-snapshot"], found
    assert "etc/passwd" in errors[0]["message"], found

    lamina(root, "fsck", "--repair")
    assert _fsck(root) == []
    lamina(root, "unpack", "b:1", g.dest / "b-after")
    from treecmp import compare, snapshot
    diff = compare(want, snapshot(g.dest / "b-after"), labels=("every path", "b after fsck --repair"))
    assert not diff, diff
    g.check()


# --- removing what a hostile image stored -------------------------------------------------------

def _trap_layer(g, depth):
    """At every level of a tree ``depth`` deep: symlinks to the sentinel outside (absolute and by
    enough ``..`` to leave the root), to /etc and to /; a directory of mode 0 holding a file of
    mode 0 and a subdirectory; a read-only directory with a file; a fifo and a device node."""
    t = Tar()

    def at(path, **records):  # names past the ustar fields: PAX records
        return t.pax({"path": path, **records})
    path = ""
    for i in range(depth):
        path = f"{path}d{i}/"
        at(path.rstrip("/")).dir("x")
        for name, target in (("abs", str(g.sentinel)), ("up", "../" * (i + 8) + os.path.relpath(g.sentinel, "/")),
                             ("etc", "/etc"), ("root", "/")):
            at(path + name, linkpath=target).symlink("x", "x")
        at(path + "closed").dir("x", mode=0)
        at(path + "closed/f").file("x", b"c" * 100, mode=0)
        at(path + "closed/sub").dir("x", mode=0)
        at(path + "ro").dir("x", mode=0o555)
        at(path + "ro/f").file("x", b"r" * 50, mode=0o444)
        at(path + "fifo").fifo("x")
        at(path + "null").chardev("x", 1, 3)
    return t.bytes()


def test_removing_a_hostile_images_tree_follows_no_symlink_and_leaves_the_other_image(g):
    """An image whose tree holds, at each of 40 levels, symlinks out of the root (to the sentinel
    beside it, to /etc, to /), closed and read-only directories, a fifo and a device, stored
    beside an image of the same files that shares its objects: unpack --link, mount, save, rmi,
    prune, gc and fsck --repair remove every name of it by fds and never follow a symlink;
    nothing outside changes, the other image keeps its tree and fsck is clean."""
    raw = _trap_layer(g, 40)
    tree = assert_agree(run_paths(g.dest / "paths", [raw], paths=("dir", "store-copy", "store-link", "store-mount")),
                        context=describe([raw]))
    etc_before = os.lstat("/etc")
    root = g.dest / "store"
    lamina(root, "copy", f"oci:{write_image(g.dest / 'hostile', [raw])}:img", "hostile:1")
    other = Tar().file("other-only", b"o").bytes()
    lamina(root, "copy", f"oci:{write_image(g.dest / 'other', [raw, other])}:img", "other:1")
    lamina(root, "unpack", "other:1", g.dest / "other-before")
    from treecmp import compare, snapshot
    before = snapshot(g.dest / "other-before")
    lamina(root, "unpack", "--link", "hostile:1", g.dest / "linked")
    mnt = g.dest / "mnt"
    lamina(root, "mount", "hostile:1", mnt)
    lamina(root, "umount", mnt)
    lamina(root, "save", "hostile:1", "-o", g.dest / "saved.tar")
    lamina(root, "rmi", "hostile:1")
    lamina(root, "image", "prune", "-f")
    from lamina.store import Store
    Store(root).gc()
    lamina(root, "fsck", "--repair")
    assert _fsck(root) == []
    lamina(root, "unpack", "other:1", g.dest / "other-after")
    diff = compare(before, snapshot(g.dest / "other-after"), labels=("other before", "other after"))
    assert not diff, diff
    lamina(root, "rmi", "other:1")
    Store(root).gc()
    assert _fsck(root) == [] and _chains(root) == []
    import dataclasses
    linked = dataclasses.replace(snapshot(g.dest / "linked"), links=tree.links)  # it shares objects' inodes
    diff = compare(tree, linked, labels=("every path", "unpack --link, after rmi"))
    assert not diff, diff
    after = os.lstat("/etc")
    assert (after.st_mode, after.st_mtime_ns, after.st_nlink) == (etc_before.st_mode, etc_before.st_mtime_ns,
                                                                  etc_before.st_nlink)
    g.check()


@pytest.mark.parametrize("verb", ["rmi", "prune"])
def test_removing_a_hostile_image_beside_a_writer_is_finished_by_that_writer(g, verb):
    """rmi (or image prune -a) of a hostile image while another writer is at work (a copy of an
    image sharing its base) untags it but cannot collect its layers (the writer may be naming
    them): they stayed until the next prune, and fsck warned of each.  The last writer to
    finish collects them now; the image sharing the base keeps it."""
    raw = _trap_layer(g, 8)
    own = Tar().file("own", seeded_bytes("own", 4000)).bytes()
    top = Tar().file("good", b"g" * 5000).bytes()
    want = assert_agree(run_paths(g.dest / "paths", [raw, top], paths=("dir", "store-copy")),
                        context=describe([raw, top]))
    root = g.dest / "store"
    lamina(root, "copy", f"oci:{write_image(g.dest / 'hostile', [raw, own])}:img", "hostile:1")
    from lamina.store import Store
    from lamina.transports import copy
    writer = Store(root)
    writer.lease()
    if verb == "rmi":
        proc = lamina(root, "rmi", "hostile:1")
    else:
        proc = lamina(root, "image", "prune", "-a", "-f")
    assert "another lamina process is writing" in proc.stderr, proc.stderr
    copy(f"oci:{write_image(g.dest / 'good', [raw, top])}:img", "good:1", store=writer)
    writer.close()
    assert _fsck(root) == [] and _listed(root) == []
    assert len(_chains(root)) == 2
    lamina(root, "unpack", "good:1", g.dest / "good-tree")
    from treecmp import compare, snapshot
    diff = compare(want, snapshot(g.dest / "good-tree"), labels=("every path", "good after the rmi beside it"))
    assert not diff, diff
    g.check()


# --- an image whose config names a layer the store holds, over a blob of other content ----------

@pytest.mark.parametrize("verb", ["copy", "load", "pull"])
def test_a_layer_blob_that_is_not_its_diffid_is_refused_when_the_store_holds_that_layer(
        tmp_path, reg, registry_env, verb):  # noqa: F811
    """An image whose config gives the diffID of a layer the store already holds (a popular base)
    over a blob of other content: into an empty store it is refused (the extraction checks the
    diffID), but where the snapshot existed nothing read the blob, so the image was named,
    unpacked as the base, passed fsck, and handed its own blob to every reader of the store's
    layout (umoci refuses it: "diffid mismatch").  Now refused the same way, naming the layer,
    whatever the store holds, and the store is left as it was."""
    import ocibuild as ob
    from storekit import fingerprint
    base = Tar().dir("etc").file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n").bytes()
    other = Tar().dir("etc").file("etc/passwd", b"root::0:0::/root:/bin/sh\n").bytes()
    lay = ob.Layout(tmp_path / "liar")
    blob = ob.gz(other)
    lay.blob(blob)
    config = lay.json_blob({"architecture": "amd64", "os": "linux",
                            "rootfs": {"type": "layers", "diff_ids": [ob.sha256(base)]}}, ob.OCI_CONFIG)
    lay.add(lay.json_blob({"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST, "config": config,
                           "layers": [ob.desc(ob.OCI_LAYER_GZIP, blob)]}, ob.OCI_MANIFEST), "liar:1")
    if verb == "copy":
        argv = ["copy", f"oci:{lay.root}:liar:1", "liar:1"]
    elif verb == "load":
        subprocess.run(["skopeo", "copy", "-q", f"oci:{lay.root}:liar:1",
                        f"docker-archive:{tmp_path / 'liar.tar'}:liar:1"], check=True)
        argv = ["load", "-i", tmp_path / "liar.tar"]
    else:
        skopeo_push(f"oci:{lay.root}:liar:1", reg.host, "liar:1")
        argv = ["pull", f"{reg.host}/liar:1"]
    answers = []
    for holds_the_base in (False, True):
        root = tmp_path / f"store-{holds_the_base}"
        if holds_the_base:
            lamina(root, "copy", f"oci:{write_image(tmp_path / 'base', [base])}:img", "base:1")
        before = fingerprint(root) if holds_the_base else None
        proc = lamina(root, *argv, check=False)
        assert proc.returncode == 1, proc.stderr
        answers.append(proc.stderr.strip().splitlines()[-1].split(": ", 1)[1].replace(str(tmp_path), "T"))
        # (skopeo's docker-archive names the plain layer by the diffID it claims: a blob digest mismatch)
        assert "digest mismatch" in answers[-1] and "layer 1 of 1" in answers[-1], proc.stderr
        kept = {"orphan-blob", "orphan-snapshot"} if verb == "pull" else set()  # a pull keeps for its rerun
        assert [f for f in _fsck(root) if f["kind"] not in kept] == []
        if holds_the_base:
            if verb != "pull":
                assert fingerprint(root) == before
            lamina(root, "unpack", "base:1", tmp_path / "base-after")
            assert (tmp_path / "base-after" / "etc" / "passwd").read_bytes() == b"root:x:0:0::/root:/bin/sh\n"
            assert lamina(root, "images", "-q").stdout.split() == [
                lamina(root, "images", "-q", "base:1").stdout.strip()]
    assert answers[0] == answers[1], answers


def test_fsck_finds_an_image_whose_layer_blob_is_not_the_layer_its_snapshot_holds(tmp_path):
    """Such an image named by an older lamina (its blob never read, the snapshot the base's):
    fsck said nothing.  It now checks the diffID of every layer blob whose snapshot was made
    from another blob, and names the image and the layer."""
    import ocibuild as ob
    from lamina.store import Store
    base = Tar().dir("etc").file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n").bytes()
    other = Tar().dir("etc").file("etc/passwd", b"root::0:0::/root:/bin/sh\n").bytes()
    top = Tar().file("top", b"t").bytes()
    root = tmp_path / "store"
    lamina(root, "copy", f"oci:{write_image(tmp_path / 'base', [base, top])}:img", "base:1")
    store = Store(root)
    # what an import that did not read the blob left: the liar's blobs, and its name
    blobs = [ob.gz(base), ob.gz(other)]  # the second: other content under the diffID of top
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [ob.sha256(base), ob.sha256(top)]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST,
                           "config": {"mediaType": ob.OCI_CONFIG, "digest": ob.sha256(config), "size": len(config)},
                           "layers": [ob.desc(ob.OCI_LAYER_GZIP, b) for b in blobs]}).encode()
    for data in blobs + [config, manifest]:
        store.put_blob(data)
    # add_image now checks the blob itself (as copy, load and pull do): the older lamina's
    # index entry is written as it wrote it
    from lamina.store.index import make_entry
    from lamina.store.store import name_of
    with store.index.update() as entries:
        entries.append(make_entry(ob.OCI_MANIFEST, ob.sha256(manifest), len(manifest), name_of("liar:1")))
    store.close()
    found = _fsck(root)
    errors = [f for f in found if f["severity"] == "error"]
    assert [f["kind"] for f in errors] == ["broken-image"], found
    assert "liar:1" in errors[0]["message"] and f"layer 2 ({ob.sha256(blobs[1])})" in errors[0]["message"], errors
    assert "diffID (uncompressed tar): digest mismatch" in errors[0]["message"], errors
    lamina(root, "rmi", "liar:1")
    assert _fsck(root) == []
