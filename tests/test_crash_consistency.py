"""A layer refused half-way, or the process killed (SIGKILL) at a chosen point of a layer's
extraction and commit: the store stays consistent.

After each refusal or kill: ``lamina fsck`` finds no error (it re-extracts every snapshot and
compares), no snapshot dir under its final name lacks what a complete one has, a named image
unpacks, nothing was written outside the work directory, and the same command with a good
image then succeeds and gives the right tree (``fsck --repair`` then leaves no finding at all).

Refusals run through ``lamina copy oci:…`` (the store), ``lamina unpack oci:…`` (no store) and
``lamina pull`` from a docker-registry on loopback; each refused layer comes after a layer the
store already holds and after some good entries of its own, so the refusal lands mid-layer.
Kills are exact: a wrapper runs the CLI in a real child process and sends itself SIGKILL when
the named function is entered or left (or once the extraction has written N entries).
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import ocibuild as ob
from storekit import LAMINA, fingerprint, lamina, seeded_bytes
from tarbuild import Tar
from treecmp import compare, snapshot

# --- the images -------------------------------------------------------------------------------

def _base():
    t = Tar().dir("etc").file("etc/os-release", b"ID=crash-test\n").dir("usr").dir("usr/share")
    for i in range(400):
        t.file(f"usr/share/f{i}", b"%d\n" % (i % 37) * 50)   # duplicates for the dedup pass
    return t.symlink("lib", "usr/share").bytes()


def _good_top():
    t = Tar().dir("app").file("app/run", b"#!/bin/sh\necho ok\n", mode=0o755).hardlink("app/run2", "app/run")
    t.whiteout("usr/share/f7").file("lib/through-link", b"via the symlink\n")
    for i in range(1500):
        t.file(f"app/d{i % 20}/g{i}", seeded_bytes(f"g{i % 300}", 700))
    return t.bytes()


def _prefix():
    """Good entries the refused layer writes before its bad one."""
    t = Tar().dir("app")
    for i in range(200):
        t.file(f"app/early{i}", b"early %d\n" % i)
    return t


HOSTILE_ENTRIES = {
    # re-rooted to /etc/shadow, which no layer has: never a link to the host's file
    "hardlink-out-of-root": lambda: _prefix().hardlink("app/shadow", "../../../../../../etc/shadow").bytes(),
    "char-device-0-0": lambda: _prefix().chardev("app/wh", 0, 0).bytes(),
    "whiteout-of-dotdot": lambda: _prefix().file("app/.wh..", b"").bytes(),
    "hardlink-to-a-directory": lambda: _prefix().hardlink("app/dirlink", "usr/share").bytes(),
}
BLOB_FAULTS = ("truncated-gzip", "blob-digest-mismatch", "wrong-diffid")
KINDS = tuple(HOSTILE_ENTRIES) + BLOB_FAULTS


def _layer_blob(lay, raw, fault=None):
    """(descriptor, diffID) of ``raw`` gzipped into the layout, with ``fault`` applied."""
    blob = gzip.compress(raw, 6, mtime=0)
    diff_id = ob.sha256(raw)
    if fault == "truncated-gzip":        # a consistent descriptor: the inflate finds the cut
        blob = blob[:len(blob) * 2 // 3]
    d = ob.desc(ob.OCI_LAYER_GZIP, blob)
    if fault == "blob-digest-mismatch":  # the bytes are not the ones the manifest names
        blob = blob[:100] + bytes([blob[100] ^ 1]) + blob[101:]
    if fault == "wrong-diffid":
        diff_id = ob.sha256(raw + b"\0")
    with open(lay.path(d["digest"]), "wb") as f:
        f.write(blob)
    return d, diff_id


def _image(lay, tars, ref, fault=None):
    descs, ids = [], []
    for k, raw in enumerate(tars):
        d, i = _layer_blob(lay, raw, fault if k == len(tars) - 1 else None)
        descs.append(d)
        ids.append(i)
    cdesc = lay.json_blob({"architecture": "amd64", "os": "linux", "config": {},
                           "rootfs": {"type": "layers", "diff_ids": ids}}, ob.OCI_CONFIG)
    m = lay.json_blob({"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST, "config": cdesc, "layers": descs},
                      ob.OCI_MANIFEST)
    lay.add(m, ref)
    return {"manifest": m, "layers": descs}


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """base (one layer), good (base + a good top), and per kind bad-KIND (base + a refused top)."""
    lay = ob.Layout(tmp_path_factory.mktemp("crash") / "layout")
    images = {"base": _image(lay, [_base()], "base"), "good": _image(lay, [_base(), _good_top()], "good")}
    for kind in KINDS:
        if kind in BLOB_FAULTS:  # a top of its own, so its blob is not good's
            top = _prefix().file("app/fault", kind.encode()).bytes()
        else:
            top = HOSTILE_ENTRIES[kind]()
        images[kind] = _image(lay, [_base(), top], f"bad-{kind}", fault=kind if kind in BLOB_FAULTS else None)
    return lay, images


@pytest.fixture(scope="module")
def expected(layout, tmp_path_factory):
    """The good image's tree, as a plain ``lamina unpack oci:`` gives it."""
    lay, _ = layout
    dest = tmp_path_factory.mktemp("expected") / "tree"
    subprocess.run([*LAMINA, "unpack", f"oci:{lay.root}:good", dest], check=True, capture_output=True)
    return snapshot(dest, include_root=False)


# --- the checks -------------------------------------------------------------------------------

def one_error_line(proc, *needles):
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("lamina: error: ") and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


def fsck_errors(root):
    proc = lamina(root, "fsck", "--json", check=False)
    report = json.loads(proc.stdout)
    return [f for f in report["findings"] if f["severity"] == "error"], report


def assert_consistent(root, tmp_path, expected, *, named=("base:1",)):
    """No fsck error; every snapshot under its final name complete; the named images unpack."""
    errors, _ = fsck_errors(root)
    assert errors == [], errors
    sdir = os.path.join(root, "snapshots")
    for n in os.listdir(sdir) if os.path.isdir(sdir) else ():
        if n.startswith((".", "locks")) or len(n) != 64:
            continue
        assert os.path.isfile(os.path.join(sdir, n, "meta.json")) and os.path.isdir(os.path.join(sdir, n, "fs")), \
            f"snapshot {n} looks committed but is incomplete: {os.listdir(os.path.join(sdir, n))}"
    listed = lamina(root, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    for name in listed:
        dest = tmp_path / f"check-{name.replace('/', '_').replace(':', '_')}-{len(os.listdir(tmp_path))}"
        lamina(root, "unpack", name, dest)
        if name.endswith("good:1"):
            assert not compare(expected, snapshot(dest, include_root=False), labels=("expected", name))
    for name in named:
        assert any(l.endswith(name) for l in listed), (name, listed)


def rerun_good(root, tmp_path, expected, source):
    """The good image now loads; it unpacks to the expected tree; --repair leaves no finding."""
    if source.startswith("docker://"):
        name = source[len("docker://"):]
        lamina(root, "pull", name)
    else:
        name = "good:1"
        lamina(root, "copy", source, name)
    dest = tmp_path / "good-tree"
    lamina(root, "unpack", name, dest)
    diff = compare(expected, snapshot(dest, include_root=False), labels=("expected", "after the rerun"))
    assert not diff, diff
    lamina(root, "fsck", "--repair")
    errors, report = fsck_errors(root)
    assert report["ok"] and report["findings"] == [], report["findings"]


# --- refused layers ---------------------------------------------------------------------------

def _needles(kind, images):
    top = images[kind]["layers"][-1]["digest"]
    return {"hardlink-out-of-root": ["app/shadow"], "char-device-0-0": ["app/wh"],
            "whiteout-of-dotdot": ["app/.wh.."], "hardlink-to-a-directory": ["app/dirlink"],
            "truncated-gzip": [top], "blob-digest-mismatch": [top], "wrong-diffid": [top]}[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_a_layer_refused_by_copy_leaves_the_store_as_it_was(layout, expected, tmp_path, kind):
    lay, images = layout
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{lay.root}:base", "base:1")
    before = fingerprint(root)
    proc = lamina(root, "copy", f"oci:{lay.root}:bad-{kind}", f"bad-{kind}:1", check=False)
    one_error_line(proc, *_needles(kind, images))
    assert fingerprint(root) == before, "the refused image left something behind"
    assert not os.path.lexists("/etc/shadow.lamina") and os.listdir(tmp_path) == ["root"]
    assert_consistent(root, tmp_path, expected)
    rerun_good(root, tmp_path, expected, f"oci:{lay.root}:good")


@pytest.mark.parametrize("kind", KINDS)
def test_a_layer_refused_by_unpack_leaves_no_dest(layout, expected, tmp_path, kind):
    lay, images = layout
    dest = tmp_path / "work" / "rootfs"
    dest.parent.mkdir()
    proc = subprocess.run([*LAMINA, "unpack", f"oci:{lay.root}:bad-{kind}", dest], capture_output=True, text=True)
    one_error_line(proc, *_needles(kind, images))
    assert os.listdir(dest.parent) == [], "a refused unpack left its staging behind"
    subprocess.run([*LAMINA, "unpack", f"oci:{lay.root}:good", dest], check=True, capture_output=True)
    assert not compare(expected, snapshot(dest, include_root=False), labels=("expected", "unpack"))


@pytest.fixture(scope="module")
def pushed(layout):
    """The layout's images in a docker-registry on loopback (blobs exactly as in the layout)."""
    from registryfixture import Registry, skopeo_push
    lay, _ = layout
    r = Registry(os.path.join(os.path.dirname(lay.root), "registry"))
    try:
        for ref in ["base", "good"] + [f"bad-{k}" for k in KINDS if k != "blob-digest-mismatch"]:
            skopeo_push(f"oci:{lay.root}:{ref}", r.host, f"crash:{ref}", extra=("--preserve-digests",))
        yield r
    finally:
        r.stop()


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "blob-digest-mismatch"])  # skopeo will not push one
def test_a_layer_refused_by_pull_leaves_the_store_consistent(layout, expected, pushed, tmp_path, kind, monkeypatch):
    lay, images = layout
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    root = tmp_path / "root"
    lamina(root, "pull", f"{pushed.host}/crash:base")
    before = fingerprint(root)
    proc = lamina(root, "pull", f"{pushed.host}/crash:bad-{kind}", check=False)
    one_error_line(proc, *_needles(kind, images))
    after = fingerprint(root)
    # a blob that verified may stay (a later pull need not fetch it again); no snapshot, no name
    assert after["index"] == before["index"] and after["snapshots"] == before["snapshots"], (before, after)
    manifest = images[kind]["manifest"]["digest"]
    verified = {images[kind]["layers"][-1]["digest"], lay.read_json(manifest)["config"]["digest"], manifest}
    assert set(after["blobs"]) - set(before["blobs"]) <= {d[7:] for d in verified}
    assert_consistent(root, tmp_path, expected, named=(f"{pushed.host}/crash:base",))
    rerun_good(root, tmp_path, expected, f"docker://{pushed.host}/crash:good")


# --- SIGKILL at chosen points -----------------------------------------------------------------

KILLER = textwrap.dedent("""
    import importlib, os, signal, sys, threading, time
    spec, argv = sys.argv[1], sys.argv[2:]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if spec.startswith("entries:"):
        # once a layer being extracted (a temp snapshot) holds N entries; or, with a third
        # field, once a staging dir "DEST<that>*" beside DEST (argv's last) does
        n, root = int(spec.split(":")[1]), argv[argv.index("--root") + 1]
        staging = spec.split(":")[2] if spec.count(":") > 1 else None
        snaps = os.path.join(root, "snapshots") if staging is None else os.path.dirname(argv[-1])
        prefix = os.path.basename(argv[-1]) + staging if staging else None

        def watch():
            while True:
                try:
                    for t in os.listdir(snaps):
                        if (t.startswith(prefix) if prefix else t.startswith(".tmp-") or len(t) == 64):
                            top = os.path.join(snaps, t) if prefix else os.path.join(snaps, t, "fs")
                            count = sum(len(d) + len(f) for _, d, f in os.walk(top))
                            if count >= n:
                                die()
                except OSError:
                    pass
                time.sleep(0.001)
        threading.Thread(target=watch, daemon=True).start()
    else:
        # module:attr.path:before|after[:nth call]
        mod, attr, when, *nth = spec.split(":")
        nth = int(nth[0]) if nth else 1
        owner = importlib.import_module(mod)
        *path, name = attr.split(".")
        for p in path:
            owner = getattr(owner, p)
        real = getattr(owner, name)
        calls = [0]

        def wrapper(*a, **kw):
            calls[0] += 1
            if when == "before" and calls[0] == nth:
                die()
            result = real(*a, **kw)
            if when == "after" and calls[0] == nth:
                die()
            return result
        setattr(owner, name, wrapper)
    from lamina.cli import main
    sys.exit(main(argv))
""")

KILL_POINTS = [
    # the second blob (the top layer's) half ingested: its commit never happens
    ("ingest-commit", "lamina.store.ingest:IngestWriter.commit:before:2", False),
    # the native extractor writing the top layer's entries
    ("mid-extraction", "entries:300", False),
    ("mid-extraction-late", "entries:1100", False),
    # extracted and verified, before meta.json and the dedup pass
    ("after-extract", "lamina.store.snapshots:_extract:after:1", False),
    # in the dedup pass: a few files already swapped for objects
    ("mid-dedup", "lamina.store.objects:_Pass.swap:after:5", False),
    # the snapshot renamed into place, its directory not yet synced, no name yet
    ("after-rename", "lamina.store.snapshots:fsync_dir:before:1", False),
    # every snapshot committed, the name not yet written
    ("before-name", "lamina.store.index:IndexFile.write:before:1", False),
    # compact store: the sidecar proven and written, the blob not yet dropped
    ("compact-after-sidecar", "lamina.store.sidecar:build:after:1", True),
    ("compact-before-blob-drop", "lamina.store.store:Store._mark_compact:before:1", True),
]


@pytest.mark.parametrize("point,spec,compact", KILL_POINTS, ids=[p[0] for p in KILL_POINTS])
def test_sigkill_during_a_layers_extraction_or_commit(layout, expected, tmp_path, point, spec, compact):
    lay, images = layout
    root = tmp_path / "root"
    if compact:
        lamina(root, "config", "set", "keep-blobs", "false")
    else:
        lamina(root, "copy", f"oci:{lay.root}:base", "base:1")   # the top layer then goes over it
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    source = f"oci:{lay.root}:good"
    proc = subprocess.run([sys.executable, script, spec, "--root", root, "copy", source, "good:1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, \
        f"{point}: the kill point was never reached (exit {proc.returncode}):\n{proc.stderr}"
    # no snapshot of a layer that did not finish, and nothing named that is not whole
    assert_consistent(root, tmp_path, expected, named=() if compact else ("base:1",))
    if point in ("ingest-commit", "mid-extraction", "mid-extraction-late", "after-extract", "mid-dedup"):
        listed = lamina(root, "images", "-q").stdout.split()
        assert len(listed) == (0 if compact else 1), listed   # good:1 not named
    rerun_good(root, tmp_path, expected, source)
    if compact:
        assert lamina(root, "fsck").returncode == 0
        blobs = os.listdir(os.path.join(root, "blobs", "sha256"))
        assert not any(d["digest"][7:] in blobs for d in images["good"]["layers"]), "compact: layer blobs dropped"


UNPACK_KILL_POINTS = [
    ("mid-flatten", "entries:800:.lamina-tmp-", False),
    ("mid-flatten-link", "entries:800:.lamina-tmp-", True),
    ("flattened-not-moved", "lamina.store.flatten:flatten:after:1", False),
    ("flattened-not-moved-link", "lamina.store.flatten:flatten:after:1", True),
]


@pytest.mark.parametrize("point,spec,link", UNPACK_KILL_POINTS, ids=[p[0] for p in UNPACK_KILL_POINTS])
def test_sigkill_during_an_unpack_from_the_store(layout, expected, tmp_path, point, spec, link):
    """``lamina unpack good:1 DEST`` (copy or --link) killed while flattening, or once the
    staging tree is complete but not yet moved: DEST does not exist (never half a rootfs), the
    store is unchanged and fsck finds no error (a --link staging tree holds names of the
    store's objects: they still hash to their names), and the same unpack then succeeds and
    removes the killed one's staging dir (nothing else would: its names of store objects
    would keep them from gc for ever)."""
    lay, _ = layout
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{lay.root}:good", "good:1")
    before = fingerprint(root)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    dest = tmp_path / "out" / "rootfs"
    dest.parent.mkdir()
    extra = ["--link"] if link else []
    assert extra or "--link" not in spec
    proc = subprocess.run([sys.executable, script, spec, "--root", root, "unpack", *extra, "good:1", dest],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, \
        f"{point}: the kill point was never reached (exit {proc.returncode}):\n{proc.stderr}"
    assert not os.path.lexists(dest), "a killed unpack left DEST looking complete"
    leftovers = os.listdir(dest.parent)
    assert all(n.startswith("rootfs.lamina-tmp-") for n in leftovers), leftovers
    assert fingerprint(root) == before
    assert_consistent(root, tmp_path, expected, named=("good:1",))
    lamina(root, "unpack", *extra, "good:1", dest)
    assert os.listdir(dest.parent) == ["rootfs"], "the killed unpack's staging dir is still there"
    got = snapshot(dest, include_root=False)
    if link:   # --link hands out the store's inodes, which dedup shares: hardlink groups are not the image's
        got = dataclasses.replace(got, links=expected.links)
    diff = compare(expected, got, labels=("expected", "unpack after the kill"))
    assert not diff, diff
    errors, _ = fsck_errors(root)
    assert errors == [], errors


def test_an_unpack_removes_killed_staging_dirs_but_not_a_running_ones(layout, tmp_path):
    """A DEST.lamina-tmp-* dir lamina marked and nobody holds locked is a killed unpack's: the next
    unpack to DEST removes it.  One whose lock is held belongs to an unpack still running: it
    stays.  One of that name lamina did not mark (someone else's) stays: the sweep went by the
    name alone and removed it."""
    import fcntl
    lay, _ = layout
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{lay.root}:good", "good:1")
    out = tmp_path / "out"
    killed, running = out / "rootfs.lamina-tmp-killed1", out / "rootfs.lamina-tmp-running"
    # named so by someone else (lamina made no mark on it): not lamina's to remove
    foreign = out / "rootfs.lamina-tmp-0123abcd"
    for d in (killed, running, foreign):
        (d / "etc").mkdir(parents=True)
        (d / "etc" / "f").write_bytes(b"x")
    for d in (killed, running):   # as lamina marks its own (unpacker._MARK: inode number, name's token)
        os.setxattr(d, "user.lamina.staging", f"{os.stat(d).st_ino} {d.name.rsplit('-', 1)[1]}".encode())
    other = out / "other.lamina-tmp-killed2"  # another DEST's: not this unpack's business
    other.mkdir()
    fd = os.open(running, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        lamina(root, "unpack", "good:1", out / "rootfs")
        assert sorted(os.listdir(out)) == ["other.lamina-tmp-killed2", "rootfs", "rootfs.lamina-tmp-0123abcd",
                                           "rootfs.lamina-tmp-running"]
        assert (running / "etc" / "f").read_bytes() == b"x" and (foreign / "etc" / "f").read_bytes() == b"x"
        assert "user.lamina.staging" not in os.listxattr(out / "rootfs")
    finally:
        os.close(fd)


RMI_KILL_POINTS = [
    # the first unreferenced snapshot renamed to its trash name, not yet removed
    ("snapshot-in-trash", "lamina.store.snapshots:remove_tree:before:1"),
    # halfway through removing that snapshot's tree
    ("snapshot-half-removed", "lamina.store.snapshots:remove_tree:after:1"),
    # the snapshots gone, the objects only they used not yet collected
    ("before-object-gc", "lamina.store.objects:collect:before:1"),
]


@pytest.mark.parametrize("point,spec", RMI_KILL_POINTS, ids=[p[0] for p in RMI_KILL_POINTS])
def test_sigkill_during_rmi_then_fsck_and_reload(layout, expected, tmp_path, point, spec):
    """``lamina rmi good:1`` (its top layer and the objects only that layer used go) killed
    while it removes them: base:1 (sharing the bottom layer) still unpacks, fsck finds no
    error, --repair takes the rest, and good:1 loads again."""
    lay, _ = layout
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{lay.root}:base", "base:1")
    lamina(root, "copy", f"oci:{lay.root}:good", "good:1")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, script, spec, "--root", root, "rmi", "good:1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, \
        f"{point}: the kill point was never reached (exit {proc.returncode}):\n{proc.stderr}"
    assert_consistent(root, tmp_path, expected, named=("base:1",))
    rerun_good(root, tmp_path, expected, f"oci:{lay.root}:good")


@pytest.mark.parametrize("point, after", [
    ("os:rename:after:1", "old"),                        # the staging dir just named
    ("lamina._objects:renameat2:before:1", "old"),       # the layer staged, DEST not exchanged yet
    ("lamina._objects:renameat2:after:1", "new"),        # exchanged: the old tree at the staging name
])
def test_sigkill_while_apply_atomic_replaces_dest_leaves_the_old_tree_or_the_new(tmp_path, point, after):
    """``apply --atomic`` put its staged copy in DEST's place by two renames, DEST to a side
    name and the copy onto DEST: between them there was no DEST, and a kill there left none,
    where its help promises the old tree or the new one.  DEST is exchanged with the copy in one
    renameat2(RENAME_EXCHANGE) now.  Whatever a kill leaves beside DEST (a staging dir, or the
    old tree at its name) is unpack's killed staging: the next apply or unpack to DEST sweeps it."""
    dest = tmp_path / "dest"
    first, second, third = tmp_path / "first.tar", tmp_path / "second.tar", tmp_path / "third.tar"
    first.write_bytes(Tar().file("a", b"old\n").bytes())
    second.write_bytes(Tar().file("a", b"new\n").file("b", b"new\n").bytes())
    third.write_bytes(Tar().file("c", b"third\n").bytes())
    subprocess.run([*LAMINA, "apply", first, dest], check=True, capture_output=True)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, script, point, "apply", "--atomic", second, dest],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"{point} was never reached (exit {proc.returncode}): {proc.stderr}"
    assert dest.is_dir() and not dest.is_symlink(), f"no DEST after {point}"
    tree = {n: (dest / n).read_bytes() for n in os.listdir(dest)}
    assert tree == ({"a": b"old\n"} if after == "old" else {"a": b"new\n", "b": b"new\n"}), tree
    rerun = subprocess.run([*LAMINA, "apply", "--atomic", third, dest], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(os.listdir(dest)) == sorted([*tree, "c"]), os.listdir(dest)
    assert not [n for n in os.listdir(tmp_path) if ".lamina-" in n], os.listdir(tmp_path)
    assert "user.lamina.staging" not in os.listxattr(dest)   # the staging dir's mark (unpacker._MARK)


def test_an_unpack_sweeps_only_the_newborn_dirs_lamina_marked(layout, tmp_path):
    """A DEST.lamina-new-* dir is an unpack's staging dir before it is named (made, locked, marked,
    renamed): an empty one nobody holds, that lamina marked, is a killed unpack's and goes.  The
    sweep removed any empty one of that name, someone else's too (the rmdir of an empty dir:
    yet not lamina's to remove, a mount point for instance)."""
    lay, _ = layout
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{lay.root}:good", "good:1")
    out = tmp_path / "out"
    killed, foreign = out / "rootfs.lamina-new-0a1b2c3d", out / "rootfs.lamina-new-mine"
    for d in (killed, foreign):
        d.mkdir(parents=True)
    os.setxattr(killed, "user.lamina.staging", f"{os.stat(killed).st_ino} 0a1b2c3d".encode())   # as lamina marks
    lamina(root, "unpack", "good:1", out / "rootfs")
    assert sorted(os.listdir(out)) == ["rootfs", "rootfs.lamina-new-mine"]


def test_a_mark_a_kill_left_on_dest_never_gets_dest_swept(layout, tmp_path):
    """Killed between the rename of its staging dir onto DEST and the removal of the staging
    dir's mark (SIGKILL at that fremovexattr), an unpack leaves DEST whole, with the mark on its
    root.  The mark held the inode number alone, which DEST keeps: a DEST named like another
    DEST's staging dir (rootfs.lamina-tmp-v2) was then swept, whole, by the next unpack to
    rootfs.  The mark names the staging dir's token now, which DEST's name does not hold."""
    from conftest import require_tool
    require_tool("strace")
    lay, _ = layout
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{lay.root}:good", "good:1")
    out = tmp_path / "out"
    dest = out / "rootfs.lamina-tmp-v2"
    proc = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fremovexattr", "-e",
                           "inject=fremovexattr:signal=SIGKILL:when=1", "--", *LAMINA, "--root", str(root),
                           "unpack", "good:1", str(dest)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert os.listdir(out) == [dest.name], os.listdir(out)
    assert "user.lamina.staging" in os.listxattr(dest), "killed before the rename: a broken test"
    whole = snapshot(dest)
    lamina(root, "unpack", "good:1", out / "rootfs")
    assert sorted(os.listdir(out)) == ["rootfs", "rootfs.lamina-tmp-v2"]
    assert not compare(whole, snapshot(dest))
