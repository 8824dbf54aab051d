"""Copies out of a compact store (``keep-blobs false``: every layer is rebuilt from its snapshot
and sidecar) killed (SIGKILL) or failed (EIO, ENOSPC) at a chosen system call, by strace's fault
injection: ``save``, ``copy REF docker-archive:``/``oci-archive:``, ``copy REF oci:DIR`` and
``push`` to a real docker-registry (whose rebuilt gzip layers go to $TMPDIR).

After each: the store's fsck finds nothing, the output never looks complete half-way, the same
command run again succeeds and leaves nothing beside its output (a killed save's partial archive
was left beside it for ever; a copy into a new directory killed before its oci-layout was in
place left a directory every later copy refused), and an error names the file that failed.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import require_tool
from registryfixture import Registry, registry_env  # noqa: F401 (a fixture)
from storekit import LAMINA, lamina, three_images
from treecmp import compare, snapshot


@pytest.fixture(scope="module")
def compact(tmp_path_factory):
    """(a compact store holding a:1, its reference tree): the template each test copies."""
    parent = tmp_path_factory.mktemp("copyout-crash")
    lay, trees = three_images(parent)
    root = parent / "template"
    lamina(root, "config", "set", "keep-blobs", "false")
    lamina(root, "copy", f"oci:{lay.root}:a", "a:1")
    layer_blobs = [b for b in lay.read_json(lay.entries[0]["digest"])["layers"]]
    assert not any((root / "blobs" / "sha256" / b["digest"][7:]).exists() for b in layer_blobs), \
        "the store keeps its layer blobs: nothing is rebuilt"
    return root, trees["a"]


@pytest.fixture
def store(compact, tmp_path):
    template, tree = compact
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", template, root], check=True)
    out = tmp_path / "out"
    out.mkdir()
    return root, out, tree


def _argv(how, out):
    return {"save": ["save", "a:1", "-o", out / "a.tar"],
            "docker-archive": ["copy", "a:1", f"docker-archive:{out / 'a.tar'}"],
            "oci-archive": ["copy", "a:1", f"oci-archive:{out / 'a.tar'}:a"],
            "oci": ["copy", "a:1", f"oci:{out / 'lay'}:a"]}[how]


def _run(root, argv, *strace_args, env=None):
    cmd = [*LAMINA, "--root", str(root), *map(str, argv)]
    if strace_args:
        require_tool("strace")
        cmd = ["strace", "-f", "-qq", *strace_args, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _nth(root, argv, call, fragment, tmp, last=False):
    """N of the command's first (``last``: last) ``call`` whose arguments (fds shown as paths)
    hold ``fragment``, counted on a copy of the store, its output then removed (so the real run
    starts from the same state)."""
    counting = tmp / "counting"
    subprocess.run(["cp", "-a", root, counting], check=True)
    trace = tmp / "count.strace"
    proc = _run(counting, argv, "-y", "-o", trace, "-e", f"trace={call}")
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(counting)
    out = tmp / "out"
    for name in os.listdir(out):
        (shutil.rmtree if (out / name).is_dir() else os.unlink)(out / name)
    calls = [line.split(None, 1)[-1] for line in open(trace, errors="replace")]
    found = [i for i, line in enumerate((c for c in calls if c.startswith(call + "(")), 1) if fragment in line]
    assert found, f"no {call} on {fragment}"
    return found[-1] if last else found[0]


def _inject(root, argv, call, fragment, action, tmp, last=False):
    n = _nth(root, argv, call, fragment, tmp, last)
    return _run(root, argv, "-o", "/dev/null", "-e", f"trace={call}", "-e", f"inject={call}:{action}:when={n}")


def _fsck_clean(root, what):
    report = json.loads(lamina(root, "fsck", "--json", check=False).stdout)
    assert report["findings"] == [], f"{what}: {report['findings']}"


def _loads_to(archive, tree, tmp):
    """The archive loads into a fresh store and its image unpacks to ``tree``."""
    other = tmp / "loaded"
    lamina(other, "load", "-i", archive)
    name = lamina(other, "images", "-q").stdout.split()[0]   # (an oci-archive's "a" names no repository)
    lamina(other, "unpack", name, tmp / "loaded-tree")
    diff = compare(tree, snapshot(tmp / "loaded-tree"), labels=("reference", "loaded"))
    assert not diff, diff


def _layout_unpacks_to(layout, tree, tmp):
    dest = tmp / "layout-tree"
    subprocess.run([*LAMINA, "unpack", f"oci:{layout}:a", dest], check=True, capture_output=True)
    diff = compare(tree, snapshot(dest), labels=("reference", "copied layout"))
    assert not diff, diff


@pytest.mark.parametrize("how", ["save", "docker-archive", "oci-archive"])
def test_an_archive_killed_half_written_is_swept_by_the_next_one(store, tmp_path, how):
    """Killed at its first write of the archive, a save left OUT.tmp-PID-RANDOM, a partial
    archive as big as the image, beside OUT: the rerun wrote OUT and left it there for ever."""
    root, out, tree = store
    argv = _argv(how, out)
    proc = _inject(root, argv, "write", "/out/a.tar.tmp-", "signal=SIGKILL", tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = os.listdir(out)
    assert len(left) == 1 and left[0].startswith("a.tar.tmp-"), left   # never at OUT's name half-way
    _fsck_clean(root, "after the kill")
    again = _run(root, argv)
    assert again.returncode == 0, again.stderr
    assert os.listdir(out) == ["a.tar"], "the killed save's partial archive is still beside it"
    _fsck_clean(root, "after the rerun")
    _loads_to(out / "a.tar", tree, tmp_path)


def test_an_archive_still_being_written_is_left_to_its_writer(store, tmp_path):
    """The other side of the sweep: a save to OUT that is still running (its fsync of the
    archive held 3 s by strace) keeps its temp file while another save to OUT runs, and both
    succeed; a file of the user's named like a temp file, never marked by lamina, stays."""
    root, out, tree = store
    argv = _argv("save", out)
    n = _nth(root, argv, "fsync", "/out/a.tar.tmp-", tmp_path)
    users = out / "a.tar.tmp-1-0123abcd"
    users.write_bytes(b"the user's own\n")
    slow = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync",
                             "-e", f"inject=fsync:delay_enter=3000000:when={n}", "--",
                             *LAMINA, "--root", str(root), *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not [x for x in os.listdir(out) if x.startswith("a.tar.tmp-") and x != users.name]:
            assert slow.poll() is None and time.monotonic() < deadline, "the slow save never started its archive"
            time.sleep(0.05)
        other = _run(root, argv)
        assert other.returncode == 0, other.stderr
        _, err = slow.communicate(timeout=120)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait()
    assert slow.returncode == 0, f"the save whose archive was still being written failed:\n{err}"
    assert sorted(os.listdir(out)) == ["a.tar", users.name]
    assert users.read_bytes() == b"the user's own\n"
    _loads_to(out / "a.tar", tree, tmp_path)


@pytest.mark.parametrize("at", [("rename", "/lay/oci-layout.tmp-"), ("mkdir", "/lay/blobs/sha256\""),
                                ("write", "/lay/blobs/sha256/")], ids=["oci-layout", "blobs-dir", "blob"])
def test_a_copy_to_a_new_layout_killed_early_runs_again(store, tmp_path, at):
    """Killed before its oci-layout file was in place, a copy into a new directory left it
    holding blobs/ or oci-layout.tmp-*, and every later copy into it was refused: 'is not empty
    and is not an OCI image layout'.  Killed writing a blob, it left BLOB.tmp-* in blobs/sha256
    for ever (a partial blob under no digest's name)."""
    root, out, tree = store
    argv = _argv("oci", out)
    call, fragment = at
    proc = _inject(root, argv, call, fragment, "signal=SIGKILL", tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (out / "lay" / "index.json").exists(), "complete before its last step"
    _fsck_clean(root, "after the kill")
    again = _run(root, argv)
    assert again.returncode == 0, again.stderr
    blobs = os.listdir(out / "lay" / "blobs" / "sha256")
    assert not [b for b in blobs if ".tmp-" in b], blobs
    assert sorted(os.listdir(out / "lay")) == ["blobs", "index.json", "oci-layout"]
    _layout_unpacks_to(out / "lay", tree, tmp_path)


@pytest.mark.parametrize("how", ["save", "oci-archive"])
def test_an_archive_whose_write_fails_names_it(store, tmp_path, how):
    """write(2) of the archive failing with EIO: the error was the bare 'Input/output error'
    (a full disk was named, EIO was not); nothing is left beside OUT."""
    root, out, _ = store
    proc = _inject(root, _argv(how, out), "write", "/out/a.tar.tmp-", "error=EIO", tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert str(out / "a.tar") in line and "Input/output error" in line, line
    assert os.listdir(out) == []
    _fsck_clean(root, "after the error")


def test_a_layout_blob_whose_sync_fails_is_named(store, tmp_path):
    """fsync(2) of a blob copied into an oci: layout failing with EIO: the bare 'Input/output
    error'; the new directory is taken back, and the copy runs again."""
    root, out, tree = store
    argv = _argv("oci", out)
    proc = _inject(root, argv, "fsync", "/lay/blobs/sha256/", "error=EIO", tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert f"{out / 'lay' / 'blobs' / 'sha256'}/" in line and "Input/output error" in line, line
    assert os.listdir(out) == []
    assert _run(root, argv).returncode == 0
    _layout_unpacks_to(out / "lay", tree, tmp_path)


def test_a_layout_whose_index_is_written_keeps_its_blobs_when_the_last_sync_fails(store, tmp_path):
    """The fsync(2) of the layout's directory after index.json was renamed into place failing
    (EIO): the failed copy took back its blobs and oci-layout but not index.json, leaving a
    directory whose index named an image without blobs, which every later copy refused as no
    OCI layout.  The index is the commit: the layout stays whole, the error is still said."""
    root, out, tree = store
    argv = _argv("oci", out)
    proc = _inject(root, argv, "fsync", f"{out / 'lay'}>", "error=EIO", tmp_path, last=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(out / "lay") in proc.stderr.strip().splitlines()[-1], proc.stderr
    _layout_unpacks_to(out / "lay", tree, tmp_path)
    again = _run(root, argv)
    assert again.returncode == 0, again.stderr
    _fsck_clean(root, "after the rerun")


@pytest.fixture
def pushing(store, tmp_path, registry_env):
    """(store, argv of a push of a:1 to a fresh registry, an env whose $TMPDIR is a new empty dir)."""
    root, _, _ = store
    reg = Registry(tmp_path / "reg")
    try:
        ref = f"{reg.host}/out:a"
        lamina(root, "tag", "a:1", ref)
        tmpdir = tmp_path / "tmpdir"
        tmpdir.mkdir()
        yield root, ["push", ref], {**os.environ, "TMPDIR": str(tmpdir)}, tmpdir
    finally:
        reg.stop()


def _inject_in_rebuild(root, argv, env, tmpdir, action):
    """The push with its first write of a rebuilt gzip layer in ``tmpdir`` met by ``action``."""
    trace = tmpdir.parent / "push.strace"
    proc = _run(root, argv, "-y", "-o", trace, "-e", "trace=write", env=env)
    assert proc.returncode == 0, proc.stderr
    writes = [line.split(None, 1)[-1] for line in open(trace, errors="replace")]
    writes = [w for w in writes if w.startswith("write(")]
    # (not tempfile's "blat" that tries whether the dir is writable: the layer's own file)
    n = next(i for i, w in enumerate(writes, 1) if f"<{tmpdir}/" in w and '"blat"' not in w)
    return _run(root, argv, "-o", "/dev/null", "-e", "trace=write", "-e", f"inject=write:{action}:when={n}", env=env)


def test_a_push_killed_rebuilding_a_layer_leaves_nothing_in_tmpdir(pushing):
    """Killed while it gzipped a layer rebuilt from the compact store, a push left
    $TMPDIR/lamina-push-*/layer-1.gz (as big as the layer) for ever."""
    root, argv, env, tmpdir = pushing
    proc = _inject_in_rebuild(root, argv, env, tmpdir, "signal=SIGKILL")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert os.listdir(tmpdir) == [], "the killed push left its temp files"
    _fsck_clean(root, "after the kill")
    again = _run(root, argv, env=env)
    assert again.returncode == 0, again.stderr
    assert os.listdir(tmpdir) == []


@pytest.mark.parametrize("err", ["ENOSPC", "EIO"])
def test_a_push_whose_rebuilt_layer_cannot_be_written_names_tmpdir(pushing, err):
    """A full (or failing) $TMPDIR under a push from a compact store said the bare 'No space
    left on device', which reads as the store's disk or the registry's."""
    root, argv, env, tmpdir = pushing
    proc = _inject_in_rebuild(root, argv, env, tmpdir, f"error={err}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert str(tmpdir) in line and os.strerror(getattr(errno, err)) in line, line
    assert os.listdir(tmpdir) == []
    _fsck_clean(root, "after the error")
    assert _run(root, argv, env=env).returncode == 0
