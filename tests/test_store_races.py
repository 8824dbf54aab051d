"""Commands racing each other over one store, some of them killed (SIGKILL) midway: copies of
images that share a layer and files (dedup objects, the file index), rmi and image prune (their
gc), unpack --link or a mount of an image being removed, keep-blobs false set during a copy, two fsck
--repair at once.

Each command succeeds or fails with one ``lamina: error:`` line (no traceback); afterwards fsck
(with --repair for what the kills left) is clean, every image the store names unpacks to its tree,
the copies run again, and once every image is removed nothing is left that gc does not sweep.

The default run is short: one round of each, seed 4545, so that CI draws the same commands each
time (their timing still differs).  LAMINA_RACE_ROUNDS=N runs N rounds, LAMINA_RACE_SEED=S another
seed (``random`` draws one; a failure names its seed).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest

from registryfixture import registry_env  # noqa: F401 (a fixture)
from storekit import LAMINA, lamina, pushed_three, three_images
from treecmp import compare, snapshot

ROUNDS = int(os.environ.get("LAMINA_RACE_ROUNDS", "1"))
_SEED = os.environ.get("LAMINA_RACE_SEED", "4545")
SEED = int.from_bytes(os.urandom(4), "big") if _SEED == "random" else int(_SEED)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """storekit.three_images: a and b over one base layer, c over it shipped as another blob."""
    return three_images(tmp_path_factory.mktemp("races"))


@pytest.fixture(scope="module")
def pushed(layout, tmp_path_factory):
    yield from pushed_three(layout[0], tmp_path_factory.mktemp("races-reg"), "race")


def _commands(fetch, names, out, rng):
    """One round's commands: [(argv, kill after this many seconds or None)]."""
    cmds = [(fetch(ref), None) for ref in "abc"]
    cmds.append((fetch(rng.choice("abc"), killed=True), rng.uniform(0.2, 1.5)))
    cmds += [(["rmi", names["a"]], None), (["image", "prune", "-a", "-f"], None),
             (["unpack", "--link", names["a"], out / "link"], None), (["unpack", names["b"], out / "plain"], None),
             (["mount", names["a"], out / "mnt"], None),
             (["fsck", "--repair"], None), (["fsck", "--repair"], None),
             (["config", "set", "keep-blobs", rng.choice(["false", "true"])], None)]
    rng.shuffle(cmds)
    return cmds


def _one_error_line(argv, proc):
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and lines and lines[-1].startswith("lamina: error: "), \
        f"{argv}: exit {proc.returncode}\n{proc.stderr}"
    return lines[-1]


def _race(root, cmds, rng):
    procs = []
    for argv, kill_after in cmds:
        time.sleep(rng.uniform(0, 0.05))
        procs.append((argv, kill_after, subprocess.Popen([*LAMINA, "--root", root, *map(str, argv)],
                                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                         text=True)))
    t0 = time.monotonic()
    results = []
    for argv, kill_after, proc in sorted(procs, key=lambda p: p[1] or 1e9):
        if kill_after is not None:
            try:
                proc.wait(timeout=max(0, kill_after - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
        results.append((argv, kill_after, subprocess.CompletedProcess(argv, proc.returncode, out, err)))
    return results


def _check_tree(root, name, tree, tmp_path, what):
    out = tmp_path / "check-tree"
    lamina(root, "unpack", name, out)
    diff = compare(tree, snapshot(out), labels=("reference", f"{name} {what}"))
    subprocess.run(["rm", "-rf", out], check=True)
    assert not diff, diff


def test_copies_removals_unpacks_and_repairs_at_once(layout, tmp_path):
    lay, _ = layout

    def fetch(ref, killed=False):
        return ["copy", f"oci:{lay.root}:{ref}", "killed:1" if killed else f"{ref}:1"]
    _race_rounds(layout, tmp_path, fetch, {ref: f"{ref}:1" for ref in "abc"})


def test_pulls_removals_unpacks_and_repairs_at_once(layout, pushed, tmp_path, registry_env):
    def fetch(ref, killed=False):
        return ["pull", f"{pushed.host}/race:{ref}"]
    _race_rounds(layout, tmp_path, fetch, {ref: f"{pushed.host}/race:{ref}" for ref in "abc"})


def _race_rounds(layout, tmp_path, fetch, names):
    """ROUNDS rounds of _commands at once over one store, each followed by the checks."""
    lay, trees = layout
    refs = {name: ref for ref, name in names.items()}
    rng = random.Random(SEED)
    outcomes = collections.Counter()
    root = tmp_path / "root"
    for rnd in range(ROUNDS):
        what = f"seed {SEED}, round {rnd}"
        out = tmp_path / f"out{rnd}"
        out.mkdir()
        try:
            _round(root, fetch, names, refs, trees, out, rng, outcomes, what)
        finally:   # a failed round's mount is not left behind
            if os.path.ismount(out / "mnt"):
                subprocess.run(["umount", out / "mnt"], check=True)
        subprocess.run(["rm", "-rf", out], check=True)
    print(f"seed {SEED}:", *(f"{n} x {cmd}: {how}" for (cmd, how), n in sorted(outcomes.items())), sep="\n")
    # Nothing another image needs was lost, and nothing is left that gc does not sweep
    for ref in "abc":
        _check_tree(root, names[ref], trees[ref], tmp_path, f"seed {SEED}, the end")
    # one ID a name: an image left with two names is listed twice, and a second rmi of it is
    # "no such image", as docker's
    lamina(root, "rmi", "-f", *dict.fromkeys(lamina(root, "images", "-q", "--no-trunc").stdout.split()))
    lamina(root, "image", "prune", "-a", "-f")
    lamina(root, "fsck", "--repair", check=False)
    report = json.loads(lamina(root, "fsck", "--json", check=False).stdout)
    assert report["findings"] == [], (SEED, report["findings"])
    left = [os.path.join(d, f) for top in ("snapshots", "objects", "ingest", "blobs") for d, _, files in os.walk(root / top)
            for f in files]
    assert left == [], (SEED, left)


def _round(root, fetch, names, refs, trees, out, rng, outcomes, what):
    """One round of _race, then its checks."""
    for argv, kill_after, proc in _race(root, _commands(fetch, names, out, rng), rng):
        outcomes[argv[0], "killed" if proc.returncode == -signal.SIGKILL else
                 proc.stderr.strip().splitlines()[-1][:400] if proc.returncode else "ok"] += 1
        if proc.returncode == -signal.SIGKILL and kill_after is not None:
            continue
        if proc.returncode:
            # what a race may refuse: an image removed meanwhile, or in use by a mount; never
            # as if the store had lost what it holds
            line = _one_error_line(argv, proc)
            assert "is not in the store" not in line and "fsck" not in line, (what, argv, line)
        elif argv[0] == "unpack":
            ref = refs[argv[-2]]
            got = snapshot(argv[-1])
            if "--link" in argv:   # the store's inodes, which dedup shares: not the image's links
                got = dataclasses.replace(got, links=trees[ref].links)
            diff = compare(trees[ref], got, labels=("reference", f"{argv} {what}"))
            assert not diff, diff
    mnt = out / "mnt"
    if os.path.ismount(mnt):   # the image's layers stay while it is mounted, whatever rmi and gc did
        got = dataclasses.replace(snapshot(mnt), links=trees["a"].links)   # (the store's inodes, as --link)
        diff = compare(trees["a"], got, labels=("reference", f"mount {what}"))
        lamina(root, "umount", mnt)
        assert not diff, diff
    # After the race: errors only where a kill left something fsck --repair takes back
    fsck = json.loads(lamina(root, "fsck", "--json", check=False).stdout)
    if [f for f in fsck["findings"] if f["severity"] == "error"]:
        lamina(root, "fsck", "--repair", check=False)
    fsck = json.loads(lamina(root, "fsck", "--json", check=False).stdout)
    assert [f for f in fsck["findings"] if f["severity"] == "error"] == [], (what, fsck["findings"])
    listed = lamina(root, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    for name in listed:
        assert name in refs or name == "killed:1", (what, listed)
        if name in refs:   # (not whichever image the killed copy named, if it finished)
            _check_tree(root, name, trees[refs[name]], out, what)
    for ref in "abc":
        proc = lamina(root, *fetch(ref), check=False)
        assert proc.returncode == 0, f"{what}: {fetch(ref)} again: {proc.stderr}"


def _removed_meanwhile(layout, tmp_path, use):
    """An image resolved, then removed by another process (rmi: its gc ran, as nothing held the
    store yet), then used: ``use(store, image)``'s error."""
    from lamina.errors import LaminaError
    from lamina.store import Store
    lay, _ = layout
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{lay.root}:a", "a:1")
    lamina(root, "copy", f"oci:{lay.root}:b", "b:1")   # (its base layer stays: only a's top goes)
    with Store(root) as store:
        image = store.resolve("a:1")
        lamina(root, "rmi", "a:1")
        with pytest.raises(LaminaError) as e:
            use(store, image)
    return str(e.value)


@pytest.mark.parametrize("use", ["snapshots", "unpack", "mount"])
def test_an_image_removed_while_it_is_being_used_says_so(layout, tmp_path, use):
    """unpack, unpack --link and mount resolve the image, then take the store's lease (which gc
    waits for) to extract or read its layers: an rmi or image prune in between removed its blobs
    and snapshots, and the command failed with 'layer 2 of 2 (...): blob is not in the store',
    which says the store lost something (fsck finds nothing wrong)."""
    from lamina.store import materialize, mounts
    uses = {"snapshots": lambda store, image: store.snapshots_for(image),
            "unpack": lambda store, image: materialize.materialize(store, image, tmp_path / "dest", link=True),
            "mount": lambda store, image: mounts.mount(store, image, tmp_path / "mnt")}
    message = _removed_meanwhile(layout, tmp_path, uses[use])
    assert "is not in the store" not in message and "removed" in message and "a:1" in message, message
    assert not os.path.lexists(tmp_path / "dest") and not os.path.ismount(tmp_path / "mnt")
    assert lamina(tmp_path / "root", "fsck").returncode == 0


def test_an_image_removed_while_it_is_being_tagged_says_so(layout, tmp_path, monkeypatch):
    """``lamina tag a:1 c:1`` beside ``lamina rmi a:1`` (or image prune): the tag resolved a:1,
    then the rmi's gc took its blobs before the tag took the lease, and the tag failed with
    'blob sha256:... is not in the store', as if the store had lost its manifest."""
    from lamina import images
    from lamina.errors import LaminaError
    from lamina.store import Store
    lay, _ = layout
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{lay.root}:a", "a:1")
    lamina(root, "copy", f"oci:{lay.root}:b", "b:1")
    wrapped, done = _rmi_once(root, "a:1", Store._take_lease)   # once a:1 is resolved
    monkeypatch.setattr(Store, "_take_lease", wrapped)
    with Store(root) as store, pytest.raises(LaminaError) as e:
        images.tag(store, "a:1", "c:1")
    assert done and done[0].returncode == 0, done
    message = str(e.value)
    assert "is not in the store" not in message and "removed" in message and "a:1" in message, message
    assert "c:" not in lamina(root, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout
    assert lamina(root, "fsck").returncode == 0


def _rmi_once(root, name, real):
    """``real`` wrapped: its first call runs ``lamina rmi name`` in another process first (an rmi
    beside a writer leaves its gc to the writer; with no writer at work, it collects at once)."""
    done, first = [], threading.Lock()   # (a pull's fetch threads call it at once)

    def wrapped(*args, **kw):
        if first.acquire(blocking=False):
            done.append(lamina(root, "rmi", name, check=False))
        return real(*args, **kw)
    return wrapped, done


def test_a_copy_finding_its_image_held_keeps_it_through_an_rmi_beside_it(layout, tmp_path, monkeypatch):
    """A copy of an image the store holds (compact) takes the gc lease before it looks at what the
    store holds (transports._copy): an rmi beside it leaves its gc to the copy, which names the
    image again, and nothing it found held is collected under it (as the pull below did)."""
    from lamina.store import Store, imports
    lay, trees = layout
    root = tmp_path / "root"
    lamina(root, "config", "set", "keep-blobs", "false")
    lamina(root, "copy", f"oci:{lay.root}:c", "c:1")
    hooked, done = _rmi_once(root, "c:1", imports._same_image)
    monkeypatch.setattr(imports, "_same_image", hooked)
    from lamina.transports import copy
    with Store(root) as store:
        copy(f"oci:{lay.root}:c", "c:1", store=store)
    assert done and done[0].returncode == 0, done
    _check_tree(root, "c:1", trees["c"], tmp_path, "after the copy")
    assert json.loads(lamina(root, "fsck", "--json").stdout)["findings"] == []


def test_a_pull_finding_a_layer_held_keeps_it_through_an_rmi_beside_it(layout, pushed, tmp_path, monkeypatch,
                                                                        registry_env):
    """A pull into a compact store found the image's layers held as compact
    snapshots ("Already exists") before it took the gc lease, an rmi collected them, and the
    pull failed with 'layer 1 of 2 (...): blob is not in the store'."""
    from lamina.registry.pull import pull
    from lamina.store import Store
    lay, trees = layout
    root = tmp_path / "root"
    name = f"{pushed.host}/race:c"
    lamina(root, "config", "set", "keep-blobs", "false")
    lamina(root, "pull", name)
    hooked, done = _rmi_once(root, name, Store.holds_compact)
    monkeypatch.setattr(Store, "holds_compact", hooked)
    with Store(root) as store:
        pull(name, store=store)
    assert done and done[0].returncode == 0, done
    _check_tree(root, name, trees["c"], tmp_path, "after the pull")
    assert json.loads(lamina(root, "fsck", "--json").stdout)["findings"] == []


def test_a_repair_beside_an_rmi_leaves_the_new_index_it_is_writing(layout, tmp_path):
    """fsck --repair removes the temp files killed atomic writes left beside index.json; it took
    the one a running rmi (or image prune) had written and was about to rename: an untag changes
    index.json under the index lock, and holds no gc lease for the repair to wait for.  The rmi
    failed with '.../index.json: No such file or directory'."""
    from conftest import require_tool
    require_tool("strace")
    lay, _ = layout
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{lay.root}:a", "a:1")
    lamina(root, "tag", "a:1", "x:1")
    # the rmi's renames held back 3 s each: its new index.json waits under its temp name
    rmi = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=rename",
                            "-e", "inject=rename:delay_enter=3000000", "--", *LAMINA, "--root", root,
                            "rmi", "x:1"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not [n for n in os.listdir(root) if n.startswith("index.json.tmp-")]:
        assert rmi.poll() is None, f"the rmi ended before its index was written: {rmi.stderr.read()}"
        assert time.monotonic() < deadline, "no temp index.json appeared"
        time.sleep(0.01)
    repair = lamina(root, "fsck", "--repair", check=False)
    _, err = rmi.communicate(timeout=120)
    assert rmi.returncode == 0, err
    assert repair.returncode == 0, repair.stdout + repair.stderr
    names = lamina(root, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert names == ["a:1"], names
    assert json.loads(lamina(root, "fsck", "--json").stdout)["findings"] == []


def test_a_repair_beside_an_rmi_leaves_the_deferred_gc_record_it_is_writing(layout, tmp_path):
    """An rmi (or image prune) that finds another writer at work leaves its gc to the last writer,
    in a record it writes to lamina/rollbacks under a temp name.  fsck --repair removed every
    temp there as debris once the writer was gone and it had the gc lock: it took the record
    being written, and the rmi failed ('...json: No such file or directory')."""
    from conftest import require_tool
    from lamina.store.locks import FileLock
    from lamina.store.paths import Paths
    require_tool("strace")
    lay, _ = layout
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{lay.root}:a", "a:1")
    rollbacks = Paths(root).rollbacks
    writer = FileLock(Paths(root).gc_lock, shared=True).acquire()   # a writer at work: the rmi defers its gc
    try:
        rmi = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=rename",
                                "-e", "inject=rename:delay_enter=3000000", "--", *LAMINA, "--root", root,
                                "rmi", "a:1"], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (rollbacks.is_dir() and [n for n in os.listdir(rollbacks) if ".tmp-" in n]):
            assert rmi.poll() is None, f"the rmi ended before its record was written: {rmi.stderr.read()}"
            assert time.monotonic() < deadline, "no temp record appeared in lamina/rollbacks"
            time.sleep(0.01)
    finally:
        writer.release()
    repair = lamina(root, "fsck", "--repair", check=False)
    _, err = rmi.communicate(timeout=120)
    assert rmi.returncode == 0, err
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert lamina(root, "images", "-q").stdout == ""
    lamina(root, "image", "prune", "-f")   # the deferred gc, if the repair left it to the next writer
    assert json.loads(lamina(root, "fsck", "--json").stdout)["findings"] == []



def _a_in_a_store_going_compact(layout, tmp_path):
    """A store holding a:1, then set keep-blobs false (its next use compacts a:1): (store root,
    the blob of a:1's top layer)."""
    from conftest import require_tool
    from lamina.store.paths import Paths
    require_tool("strace")
    lay, _ = layout
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{lay.root}:a", "a:1")
    lamina(root, "config", "set", "keep-blobs", "false")
    manifest = next(e["digest"] for e in lay.entries if e["annotations"]["org.opencontainers.image.ref.name"] == "a")
    return root, Paths(root).blob(lay.read_json(manifest)["layers"][1]["digest"])


def _compact_once_held(proc, trace, held, what):
    """Once the strace log ``trace`` of ``proc`` shows (``held(text)``) that it waits in the call
    held back, an unpack of a:1 compacts it (its blobs go)."""
    root = proc.args[proc.args.index("--root") + 1]
    deadline = time.monotonic() + 120
    while not (trace.exists() and held(trace.read_text())):
        assert proc.poll() is None, f"{what} ended before the call held: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{what} never made the call held"
        time.sleep(0.01)
    lamina(root, "unpack", "a:1", trace.parent / "dest")


def _fsck_beside_a_compaction(layout, tmp_path, hold, held):
    """A check-only fsck of a store holding a:1 and set keep-blobs false, run under strace with
    ``hold`` (its arguments delaying one call, given the blob of a:1's top layer): once ``held(trace
    text, blob)`` says fsck waits there, an unpack of a:1 compacts the image (its blobs go).  A
    writer's lease is held meanwhile, so fsck runs beside it as beside any writer at work (a
    check-only fsck takes no gc lock then).  fsck must find the store good, as it is."""
    from lamina.store.locks import FileLock
    from lamina.store.paths import Paths
    root, blob = _a_in_a_store_going_compact(layout, tmp_path)
    trees = layout[1]
    trace = tmp_path / "fsck.strace"
    writer = FileLock(Paths(root).gc_lock, shared=True).acquire()
    try:
        fsck = subprocess.Popen(["strace", "-f", "-qq", "-o", trace, *hold(blob), "--", *LAMINA, "--root", root,
                                 "fsck"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _compact_once_held(fsck, trace, lambda text: held(text, blob), "fsck")
        assert not blob.exists()
    finally:
        writer.release()
    out, err = fsck.communicate(timeout=120)
    assert fsck.returncode == 0 and " 0 errors" in out, out + err
    assert not compare(trees["a"], snapshot(tmp_path / "dest"))
    assert json.loads(lamina(root, "fsck", "--json").stdout)["findings"] == []


def test_a_check_beside_a_compaction_does_not_call_the_blobs_it_drops_corrupt(layout, tmp_path):
    """fsck listed the blob, which was gone when it came to hash it (its open held back until
    the unpack is done).  It reported 'error: blob sha256:...: content hashes to <unreadable: No
    such file or directory>' and exited 1: a good store called damaged, and --repair advised."""
    _fsck_beside_a_compaction(
        layout, tmp_path, lambda blob: ["-e", "trace=openat", "-P", blob, "-e", "inject=openat:delay_enter=10000000"],
        lambda text, blob: blob.name in text)


def test_a_check_beside_a_compaction_checks_a_snapshot_whose_blob_went_by_its_sidecar(layout, tmp_path):
    """fsck found the layer's blob, then made the dir to extract it again in (that mkdir held back
    until the unpack is done), and the blob was gone when it opened it.  It stopped with 'lamina:
    error: .../blobs/sha256/...: No such file or directory', exit 1, the rest unchecked; the
    layer's sidecar (in place before the blob went) rebuilds it instead."""
    _fsck_beside_a_compaction(
        layout, tmp_path, lambda blob: ["-e", "trace=mkdir,mkdirat", "-e",
                                        "inject=mkdir,mkdirat:delay_enter=10000000:when=1"],
        lambda text, blob: "-fsck-" in text)


def test_a_copy_out_beside_a_compaction_writes_the_image_whole(layout, tmp_path):
    """A store holding a:1, set keep-blobs false: `copy a:1 oci:DIR` chose a:1's blobs (there
    then), and an unpack beside it compacted a:1 (its blobs went) before the copy opened them.
    The copy failed: 'blob sha256:… is not in the store'.  Here the copy's first open of the top
    layer's blob is held back until the unpack is done; the copy must write a whole image whose
    layers unpack to a:1's tree (from the blob it holds open, or rebuilt from the sidecar)."""
    root, blob = _a_in_a_store_going_compact(layout, tmp_path)
    trees = layout[1]
    trace = tmp_path / "copy.strace"
    copy = subprocess.Popen(["strace", "-f", "-qq", "-o", trace, "-e", "trace=openat", "-P", blob,
                             "-e", "inject=openat:delay_enter=10000000:when=1", "--", *LAMINA, "--root", root,
                             "copy", "a:1", f"oci:{tmp_path / 'out'}:a"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _compact_once_held(copy, trace, lambda text: blob.name in text, "the copy")
    assert not blob.exists()
    out, err = copy.communicate(timeout=120)
    assert copy.returncode == 0, out + err
    other = tmp_path / "other"
    lamina(other, "copy", f"oci:{tmp_path / 'out'}:a", "a:1")   # checks every digest and diffID
    lamina(other, "unpack", "a:1", tmp_path / "check")
    assert not compare(trees["a"], snapshot(tmp_path / "check"))
    assert json.loads(lamina(root, "fsck", "--json").stdout)["findings"] == []
