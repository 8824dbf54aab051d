"""Differential fuzzer of the unprivileged paths: random layer stacks unpacked as nobody.

The stacks of test_fuzz_paths.py (odd modes, owners, xattrs and times, read-only, sticky and
setgid directories, symlinks out of the root and at the host, hardlinks, sparse files,
devices, fifos, whiteouts and opaque markers) go, as user nobody, through every path
nobody has: ``unpack`` (dir), ``unpack --format overlay`` (mounted afterwards by root
with overlayfs ``userxattr``, as lamina's own mount of a rootless store does), a store
of nobody's own (copy, then flatten by copy and by --link, and the same image rebuilt
on an empty bottom layer copied into it: files named by links to the store's objects
as they extract; half the stores hold fz.neighbours()' image of the same files with other
metadata first), fsck of that store, rmi + prune (nothing may be left), a compact
store (keep-blobs false) that must save the image back, and root's ``lamina mount`` of
the image in another store of nobody's (overlayfs reading its user.overlay.* markers); one
stack in four (LAMINA_FUZZ_REGISTRY=1: all) is also pushed to a loopback registry and read by
nobody from there: ``unpack docker://`` in both formats (the overlay one mounted as above) and
``pull`` into a store of nobody's, materialized.  And ``apply`` of the layers one after another
onto the flat unpack of the lower half (in place, as everypath's apply path; the first stack
of each six) or with --atomic onto what the layers below left (everypath's apply-atomic; the
fourth): read-only directories of a layer below that an upper layer writes in, made by another
run of lamina.

All paths must give the same tree, or all fail with a lamina error; nothing outside the
work directory (a sentinel and a host directory the layers aim at, both writable by
nobody) may change.  What nobody cannot do is the same on every path, whatever lamina
decides: files are nobody's (owners are not compared), only user.* xattrs and ACLs exist,
device nodes cannot be made.  Directory times compare with the made-now normalization of
test_fuzz_paths.py.

Root's dir unpack is the reference where it applies: the rootless tree must be root's,
but for ownership, setuid/setgid (stripped), the owner's read (and search) added,
and (stacks with device nodes are not compared) device nodes.

Several stacks go to one nobody process (start-up would dominate).  Seeded and bounded
for CI (LAMINA_FUZZ_EXAMPLES counts stacks, default 24: CI's run lasts well under a
minute; LAMINA_FUZZ_BATCH stacks per nobody process, default 6); LAMINA_FUZZ_SEED=N
explores other stacks, LAMINA_FUZZ_SHRINK=0 skips shrinking (slow: a process per
attempt) in long runs, e.g.:

    LAMINA_FUZZ_EXAMPLES=3000 LAMINA_FUZZ_SEED=7 LAMINA_FUZZ_SHRINK=0 python -m pytest tests/test_fuzz_rootless.py
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import textwrap
import time

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

import test_fuzz_paths as fz
from conftest import require_root, require_tool
from everypath import (EMPTY_LAYER, _push_layout, _repos, assert_agree, describe, layout_layers, overlay_mount,
                       shared_registry, write_image)
from layerkit import run_as_nobody, world_tmpdir
from test_rootless_paths import COMPACT_SAVE, _chmod_tree, _preload, mount_rootless_layers
from treecmp import Snapshot, compare, snapshot

BATCH = int(os.environ.get("LAMINA_FUZZ_BATCH", "6"))
# CI: 4 batches of 6 stacks; LAMINA_FUZZ_EXAMPLES counts stacks, as in test_fuzz_paths.py
EXAMPLES = max(1, int(os.environ.get("LAMINA_FUZZ_EXAMPLES", "24")) // BATCH)
SEED = fz.SEED
REGISTRY = os.environ.get("LAMINA_FUZZ_REGISTRY") == "1"
SETTINGS = settings(fz.SETTINGS, max_examples=EXAMPLES)
if os.environ.get("LAMINA_FUZZ_SHRINK") == "0":
    # long runs: a failing batch is reported as drawn (the message names its failing stack),
    # not shrunk one nobody process per attempt
    from hypothesis import Phase
    SETTINGS = settings(SETTINGS, phases=[Phase.explicit, Phase.reuse, Phase.generate])


def ops(host):
    """test_fuzz_paths.py's entries, with the modes that matter without root besides its own:
    files and directories that shut their owner out (0000, 0200; 0100, 0300, 0000), which
    nobody's paths open up (CONFORMANCE.md), and read-only directories a later layer writes in."""
    return st.one_of(
        st.tuples(st.just("file"), fz.names, st.sampled_from(fz.CONTENTS),
                  st.sampled_from([0o644, 0o600, 0o4755, 0o000, 0o200, 0o2711]), fz.owners, fz.meta),
        st.tuples(st.just("dir"), fz.names,
                  st.sampled_from([0o755, 0o700, 0o555, 0o1777, 0o2775, 0o500, 0o000, 0o100, 0o300]),
                  fz.owners, fz.dir_meta),
        fz.ops(host))


def stacks(host):
    """test_fuzz_paths.py's stacks of these entries, one in ten (LAMINA_FUZZ_DEEP) a deep one
    (fz.deep_stacks: 9 or 10 layers whose entries lie under what the layers below wrote, implied
    directories with metadata of their own, hardlinks through many layers), which nobody's
    paths copy up, open up and link to objects as root's do; one in eight of the rest directories
    listed again by upper layers (fz.redeclare_stacks: other modes, owners and xattrs, or none),
    whose metadata nobody's chmod, xattrs and overlay copy-ups must take as root's do."""
    def shallow(held):
        return fz.held_stacks(host) if held else fz.one_in(8).flatmap(
            lambda again: fz.redeclare_stacks() if again else fz.stacks(host, ops=ops, layers=4, entries=6))
    return fz.deep_light().flatmap(lambda deep: fz.deep_stacks(host, ops=ops, layers=fz.DEEP_LAYERS_LIGHT)
                                   if deep else fz.chance(fz.HELD_SHARE).flatmap(shallow))

SCRIPT = r"""
import time, traceback
import lamina.images
from lamina.cli import main as cli
from lamina.store import Store
from lamina.store.fsck import check
from lamina.store.materialize import materialize
from lamina.transports import copy, save
results = []
for case in json.loads(sys.argv[1]):
    work, src, rebuilt = case["work"], case["src"], case["rebuilt"]
    out = {"since": time.time()}
    def attempt(name, fn):
        try:
            r = fn()
            out[name] = "ok"
            return r
        except lamina.errors.LaminaError as e:
            out[name] = "error: " + str(e)
        except BaseException as e:  # a crash: named, and the other cases still run
            out[name] = "crash: " + "".join(traceback.format_exception(e))[-3000:]
    attempt("dir", lambda: lamina.unpack(src, os.path.join(work, "dir")))
    st = attempt("overlay", lambda: lamina.unpack(src, os.path.join(work, "overlay"), format="overlay"))
    if st is not None:
        out["layer_dirs"] = [os.fspath(d) for d in st.layer_dirs]
    store = Store(os.path.join(work, "store"))
    if case["neighbour"]:
        attempt("neighbour", lambda: copy(case["neighbour"], "nb:1", store=store))
    attempt("copy", lambda: copy(src, "img:1", store=store))
    if out["copy"] == "ok":
        attempt("store-copy", lambda: materialize(store, "img:1", os.path.join(work, "store-copy")))
        attempt("store-link", lambda: materialize(store, "img:1", os.path.join(work, "store-link"), link=True))
        attempt("store-relink", lambda: (copy(rebuilt, "img:2", store=store),
                                         materialize(store, "img:2", os.path.join(work, "store-relink"))))
        # a store of its own that root mounts afterwards (this one is emptied below)
        attempt("mounted-store", lambda: copy(src, "img:1", store=Store(os.path.join(work, "mounted-store"))))
        try:
            out["fsck"] = [f"{f.severity}: {f.subject}: {f.message}" for f in check(store).findings]
        except BaseException as e:
            out["fsck"] = [f"raised {type(e).__name__}: {e}"]
        try:
            for ref in ("img:1", "img:2", "nb:1"):
                try:
                    lamina.images.remove(store, ref)
                except lamina.errors.NoSuchImageError:
                    pass
            lamina.images.prune(store, all=True)
            left = sorted(os.listdir(os.path.join(work, "store", "snapshots")))
            objs = os.path.join(work, "store", "objects", "blake3")
            if os.path.isdir(objs):
                # an object still linked from elsewhere (the --link flatten's tree) is in use
                left += [f"object {n}" for d in os.listdir(objs) for n in os.listdir(os.path.join(objs, d))
                         if os.lstat(os.path.join(objs, d, n)).st_nlink == 1]
            out["left"] = left
        except BaseException as e:
            out["left"] = [f"raised {type(e).__name__}: {e}"]
    def applied(atomic):  # (everypath's apply paths, as nobody)
        dest = os.path.join(work, "apply-atomic" if atomic else "apply")
        blobs, below = case["blobs"], 0
        if not atomic:
            below = len(blobs) // 2
            lamina.unpack(case["lower"], dest) if below else os.mkdir(dest)
        for k, (blob, digest, diff_id) in enumerate(blobs[below:], below):
            (lamina.apply_layer_atomic if atomic else lamina.apply_layer)(
                blob, dest, digest=digest, diff_id=diff_id, name=f"layer {k + 1} of {len(blobs)}")
    if case["apply"] == "apply":
        attempt("apply", lambda: applied(False))
    elif case["apply"] == "apply-atomic":
        attempt("apply-atomic", lambda: applied(True))
    if case["registry"]:
        from lamina.registry.client import RegistryClient
        from lamina.registry.source import RegistrySource
        ref = case["registry"]
        def client():
            return RegistryClient(insecure=(ref.split("/")[0],), credentials={})
        attempt("registry-unpack", lambda: lamina.unpack(RegistrySource(ref, client=client()),
                                                         os.path.join(work, "registry-unpack")))
        st = attempt("registry-overlay", lambda: lamina.unpack(RegistrySource(ref, client=client()),
                                                               os.path.join(work, "registry-overlay"), format="overlay"))
        if st is not None:
            out["registry_layer_dirs"] = [os.fspath(d) for d in st.layer_dirs]
        pulled = Store(os.path.join(work, "store-pulled"))
        attempt("registry-pull", lambda: (lamina.pull(ref, store=pulled, client=client()),
                                          materialize(pulled, ref, os.path.join(work, "registry-pull"))))
""" + textwrap.indent(COMPACT_SAVE, "    ") + """    results.append(out)
print(json.dumps(results))
"""

TREE_PATHS = ("dir", "overlay-mount", "store-copy", "store-link", "store-relink", "store-mount")
REGISTRY_PATHS = ("registry-unpack", "registry-overlay", "registry-pull")


def mount_rootless_store(root, mnt):
    """Root's ``lamina mount`` of img:1 of the store nobody filled (its markers user.overlay.*,
    which lamina's mount reads with ``userxattr``): the tree, or the error as nobody's are."""
    import lamina.errors
    from lamina.store import Store
    from lamina.store import mounts
    store = Store(root)
    try:
        mounts.mount(store, "img:1", mnt)
    except lamina.errors.LaminaError as e:
        return "error: " + str(e)
    try:
        return snapshot(mnt, dir_mtime=True, xattr_filter=lambda n: not n.startswith("user.overlay."))
    finally:
        mounts.umount(store, mnt)


def _as_nobody_would(tree):
    """Root's tree with what only root may do taken out: owners (everything is nobody's),
    setuid/setgid (stripped, from directories too), the owner's read, and search on directories (added,
    CONFORMANCE.md), xattrs outside user.* and the owner's ACLs (trusted.*, security.capability)."""
    def fix(e):
        mode = e.mode & ~0o6000  # from every type (a fifo's too)
        if e.type == "file":
            mode |= 0o400
        elif e.type == "dir":
            mode |= 0o500
        xattrs = tuple((k, fz.acl_in_step(v, mode) if k == "system.posix_acl_access" else v) for k, v in e.xattrs
                       if k.startswith("user.") or k.startswith("system.posix_acl_"))
        return dataclasses.replace(e, uid=0, gid=0, mode=mode, xattrs=xattrs)
    return dataclasses.replace(tree, entries={p: fix(e) for p, e in tree.entries.items()})


def _unowned(tree):
    if not isinstance(tree, Snapshot):
        return tree
    return dataclasses.replace(tree, entries={p: dataclasses.replace(e, uid=0, gid=0)
                                              for p, e in tree.entries.items()})


class _Failed(Exception):
    """A path's lamina error, as assert_agree expects errors."""


def run_batch(host, batch, neighbours=None, pushed=None):
    """[(tars, {path: Snapshot or error text}, out)] for each stack of ``batch``, all of it
    run in one nobody process (``neighbours``: per stack, None or the layer tars of an image
    nobody's store takes first; ``pushed``: per stack, whether nobody also reads it from a
    registry); checks that nothing outside the work dirs changed."""
    base = world_tmpdir()
    try:
        sentinel = os.path.join(base, "sentinel")
        os.makedirs(os.path.join(sentinel, "sub"))
        with open(os.path.join(sentinel, "sub", "f"), "w") as f:
            f.write("outside")
        _chmod_tree(sentinel, "a+rwX")
        before = snapshot(sentinel, include_root=True, dir_mtime=True)
        host_before = fz.fingerprint(host)
        cases = []
        for i, tars in enumerate(batch):
            layout = write_image(os.path.join(base, f"layout{i}"), tars)
            rebuilt = write_image(os.path.join(base, f"rebuilt{i}"), [EMPTY_LAYER] + list(tars))
            work = os.path.join(base, f"work{i}")
            os.mkdir(work)
            os.chown(work, 65534, 65534)
            neighbour = (neighbours or [None] * len(batch))[i]
            if neighbour is not None:
                neighbour = f"oci:{write_image(os.path.join(base, f'neighbour{i}'), neighbour)}:img"
            registry = None
            if (pushed or [False] * len(batch))[i]:
                reg = shared_registry()
                repo = f"rootless{next(_repos)}-{os.getpid()}"
                _push_layout(reg.host, repo, layout)
                registry = f"{reg.host}/{repo}:img"
            lower = write_image(os.path.join(base, f"lower{i}"), list(tars[:len(tars) // 2]))
            cases.append({"work": work, "src": f"oci:{layout}:img", "rebuilt": f"oci:{rebuilt}:img",
                          "neighbour": neighbour, "registry": registry, "blobs": layout_layers(layout),
                          "lower": f"oci:{lower}:img",
                          # (a stack in three of a batch: each costs a fifth of the other paths)
                          "apply": {0: "apply", 3: "apply-atomic"}.get(i % 6)})
        _chmod_tree(base, "a+rX")
        proc = run_as_nobody(SCRIPT, json.dumps(cases), preload=_preload(), timeout=60 + 60 * len(batch))
        assert proc.returncode == 0, f"lamina as nobody died:\n{proc.stderr[-3000:]}"
        outs = json.loads(proc.stdout.strip().splitlines()[-1])
        diff = compare(before, snapshot(sentinel, include_root=True, dir_mtime=True), labels=("before", "after"))
        assert not diff, f"outside the work dirs changed:\n{diff}\n" + "\n".join(describe(t) for t in batch)
        assert fz.fingerprint(host) == host_before, "the host directory the layers point at was changed:\n" + \
            "\n".join(describe(t) for t in batch)
        results = []
        for case, tars, out in zip(cases, batch, outs):
            since = int(out["since"]) - 1
            trees = {}
            for p in TREE_PATHS + ((case["apply"],) if case["apply"] else ()) + \
                    (REGISTRY_PATHS if case["registry"] else ()):
                src = {"overlay-mount": "overlay", "store-mount": "mounted-store"}.get(p, p)
                status = out.get(src, out.get("copy"))
                if status != "ok":
                    trees[p] = status
                elif p == "overlay-mount":
                    trees[p] = mount_rootless_layers(out["layer_dirs"], os.path.join(case["work"], "mnt"))
                elif p == "registry-overlay":
                    trees[p] = mount_rootless_layers(out["registry_layer_dirs"], os.path.join(case["work"], "registry-mnt"))
                elif p == "store-mount":
                    trees[p] = mount_rootless_store(os.path.join(case["work"], "mounted-store"),
                                                    os.path.join(case["work"], "store-mnt"))
                else:
                    trees[p] = snapshot(os.path.join(case["work"], p), dir_mtime=True)
                trees[p] = fz.made_now(trees[p], since)
            results.append((tars, trees, out))
        return results
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", base], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def check_case(tars, trees, out):
    context = describe(tars)
    crashes = {k: v for k, v in out.items() if isinstance(v, str) and v.startswith("crash: ")}
    assert not crashes, f"{context}\nnot a lamina error as nobody: {crashes}"
    # every path gives the same tree or a lamina error
    results = {p: (_Failed(v) if isinstance(v, str) else _unowned(v)) for p, v in trees.items()}
    ref = assert_agree(results, context=context)
    if ref is not None:
        assert out.get("compact-save") == "ok", f"{context}\nsave from a compact store: {out.get('compact-save')}"
        assert out["compact-fsck"] == [], f"{context}\nfsck of the compact store: {out['compact-fsck']}"
        assert out["fsck"] == [], f"{context}\nfsck of nobody's store: {out['fsck']}"
        assert out["left"] == [], f"{context}\nrmi + prune left: {out['left']}"
    return ref


@pytest.fixture(scope="module")
def host():
    """A host directory the layers aim symlinks at, writable by nobody: only lamina's care
    keeps it as it is."""
    require_root()
    require_tool("setpriv")
    d = world_tmpdir()
    os.makedirs(os.path.join(d, "sub"))
    with open(os.path.join(d, "sub", "f"), "w") as f:
        f.write("host\n")
    _chmod_tree(d, "a+rwX")
    yield d
    shutil.rmtree(d)


def _root_dir_tree(tars, since_fn):
    """Root's dir unpack of the stack (the reference), made-now normalized."""
    import lamina
    base = world_tmpdir()
    try:
        layout = write_image(os.path.join(base, "layout"), tars)
        since = int(time.time()) - 1
        try:
            lamina.unpack(f"oci:{layout}:img", os.path.join(base, "dir"))
        except lamina.errors.LaminaError as e:
            return _Failed(str(e))
        return fz.made_now(snapshot(os.path.join(base, "dir"), dir_mtime=True), since)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _has_nodes(layers):
    return any(op[0] == "node" for layer in layers for op, _ in layer)


@seed(20261205 + SEED)
@SETTINGS
@given(data=st.data())
def test_rootless_paths_agree(host, data):
    batch = data.draw(st.lists(stacks(host), min_size=BATCH, max_size=BATCH))
    tars = [fz.build(layers, data.draw(fz.encodings(len(layers)))) for layers in batch]
    # half the stores hold a neighbour first (fz.neighbours: the same files, other metadata),
    # which dedup must keep apart; what nobody cannot set (a group, a capability) it cannot
    # (none for a deep stack: its cost is several shallow stacks' already)
    neighbours = [fz.build(data.draw(fz.neighbours(layers))) if len(layers) <= 4 and data.draw(fz.one_in(2)) else None
                  for layers in batch]
    pushed = [REGISTRY or data.draw(fz.one_in(4)) for _ in batch]
    for _ in batch:
        fz._count_case()
    for (t, trees, out), layers in zip(run_batch(host, tars, neighbours, pushed), batch):
        ref = check_case(t, trees, out)
        if _has_nodes(layers):
            continue  # root makes device nodes; nobody makes none, on every path alike
        root = _root_dir_tree(t, None)
        if isinstance(root, _Failed) or ref is None:
            assert isinstance(root, _Failed) == (ref is None), \
                f"{describe(t)}\nroot's unpack: {root!r}; nobody's paths: {'failed' if ref is None else 'ok'}"
            continue
        diff = compare(_as_nobody_would(root), ref, labels=("root", "nobody"))
        assert not diff, f"{describe(t)}\nroot's dir unpack and nobody's differ:\n{diff}"
