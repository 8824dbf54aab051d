"""Every way lamina turns an image into a tree, side by side.

    dir            lamina.unpack(oci:..., format="dir")
    dir-topdown    the same with every upper layer scanned first and what it hides never written
    overlay-mount  lamina.unpack(..., format="overlay"), layer dirs mounted with kernel overlayfs
    store-copy     image copied into a store (snapshots), then materialize() (flatten, copy mode)
    store-link     the same, --link mode
    store-mount    the store's overlay mount of the image
    store-relink   the image rebuilt on an empty bottom layer (every chainID new), copied into
                   the store that holds it already, then materialize(): its files are named by
                   links to the store's objects as they extract (the extractor's link_objects)
    compact-save   the image copied into a compact store (keep-blobs false: no blob kept, each
                   layer rebuilt from its snapshot and tar-split sidecar when it leaves), saved as a
                   docker-archive (every layer must hash to its diffID), and that archive unpacked
                   (format dir): the round trip a user makes with ``save`` and ``unpack``.  Not in
                   PATHS (a store, an archive and an unpack per image): the fuzzers name it
    registry-pull  the image pushed to a real docker-registry on loopback, pulled into an empty
                   store (each layer extracted as it downloads, all at once), then materialize()
    registry-unpack  the same image unpacked straight from the registry (``unpack docker://``:
                   upper layers read ahead, nothing kept)
    registry-overlay  the same in the overlay format (``unpack docker:// --format overlay``, with no
                   --platform: each layer's directory written as its blob streams), mounted with
                   kernel overlayfs
    apply          ``lamina apply`` layer after layer (each blob as the layout ships it, its digest
                   and diffID checked) onto an existing DEST: an empty one, or the flat unpack of
                   the image's lower half (the layers above applied in place, as ``tar -x`` would)
    apply-link     the same onto the lower half's ``unpack --link`` from a store (the store's own
                   inodes, read-only objects among them), after which the store must check clean
    apply-atomic   the same with ``--atomic`` for every layer, the first onto no DEST at all (each
                   layer staged on a ``cp -a`` copy of what the ones below left, then exchanged).
                   None of them in PATHS (a layer at a time): the fuzzers name them

Each returns a treecmp.Snapshot, or the error (a LaminaError) it raised.  The
security tests and the differential fuzzer run every image through all of
them and require the same tree (or an error everywhere) and nothing changed
outside the work directory.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import http.client
import itertools
import json
import os
import shutil
import subprocess
import tempfile

import ocibuild as ob
from conftest import require_tool, run
from treecmp import Snapshot, compare, snapshot

# dir-topdown: the dir format with every upper layer scanned first and what it hides skipped
# below (a real unpack does that only for upper layers much smaller than the ones below)
PATHS = ("dir", "dir-topdown", "overlay-mount", "store-copy", "store-link", "store-mount", "store-relink",
         "registry-pull", "registry-unpack", "registry-overlay")
EMPTY_LAYER = bytes(1024)  # a tar of nothing: its end-of-archive blocks
SHARED_INODES = ("store-link", "store-mount", "apply-link")
TAG = "img"


def write_image(layout_dir, layer_tars, tag=TAG):
    """An OCI layout holding one image whose layers are the given raw tars (gzipped)."""
    ob.Layout(layout_dir).image_of_tars(layer_tars, tag)
    return os.fspath(layout_dir)


@contextlib.contextmanager
def overlay_mount(layer_dirs, mnt, *, userxattr=False):
    """Mount layer_dirs (bottom first) read-only with kernel overlayfs at mnt (``userxattr``:
    reading user.overlay.* markers, as an unprivileged user's layers have them)."""
    require_tool("mount")
    os.makedirs(mnt, exist_ok=True)
    # a mount of lowers only wants at least 2 of them: an image of no layers gets 2 empty ones
    bottoms = [os.fspath(mnt) + f"-empty-bottom{i}" for i in range(1 if layer_dirs else 2)]
    for bottom in bottoms:
        os.makedirs(bottom, exist_ok=True)
    lower = ":".join([os.fspath(d) for d in reversed(layer_dirs)] + bottoms)
    run("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower}" + (",userxattr" if userxattr else ""), mnt)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", os.fspath(mnt)], check=True)


def _tree(path, dir_mtime=False, root=False):
    # root: the root directory itself too, its mtime included when dir_mtime
    return snapshot(path, include_root=root, dir_mtime=dir_mtime)


def _attempt(fn):
    import lamina.errors
    try:
        return fn()
    except lamina.errors.LaminaError as e:
        return e


# a directory made during the run (no entry names it, or its time is the extraction's):
# paths run seconds apart, so its time compares as this
MADE_NOW = -1


def made_now(tree, since):
    """``tree``'s directory times from ``since`` on as MADE_NOW; anything else (a path's
    error) as it is."""
    if not isinstance(tree, Snapshot):
        return tree
    return dataclasses.replace(tree, entries={
        p: (dataclasses.replace(e, mtime=MADE_NOW) if e.type == "dir" and e.mtime >= since else e)
        for p, e in tree.entries.items()})


def _unpack_top_down(src, dest):
    import lamina
    import lamina.unpacker
    saved = lamina.unpacker.SCAN_FRACTION
    lamina.unpacker.SCAN_FRACTION = float("inf")
    try:
        return lamina.unpack(src, dest)
    finally:
        lamina.unpacker.SCAN_FRACTION = saved


# --- the registry paths ---------------------------------------------------------------------
# One docker-registry for the whole session (started on first use, stopped by conftest's
# session teardown or at the exit of a process that is not pytest), each image pushed under a
# repository of its own.

_registry = None
_repos = itertools.count()


def shared_registry():
    global _registry
    if _registry is None:
        from registryfixture import Registry
        _registry = Registry(tempfile.mkdtemp(prefix="lamina-everypath-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
        # a script a test runs in a child process (test_extract_memory's) has no session teardown
        atexit.register(stop_shared_registry)
    return _registry


def stop_shared_registry():
    global _registry
    if _registry is not None:
        _registry.stop()
        shutil.rmtree(os.path.dirname(_registry.dir), ignore_errors=True)
        _registry = None


def _push_layout(host, repo, layout):
    """Push the layout's image (its blobs as they are, then its manifest's own bytes) to
    ``host/repo:TAG`` with the distribution API, as a registry client does."""
    with open(os.path.join(layout, "index.json"), "rb") as f:
        mdesc = next(d for d in json.load(f)["manifests"]
                     if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG)

    def blob(digest):
        with open(os.path.join(layout, "blobs", *digest.split(":", 1)), "rb") as f:
            return f.read()

    manifest = blob(mdesc["digest"])
    doc = json.loads(manifest)
    conn = http.client.HTTPConnection(host, timeout=60)
    try:
        for d in dict.fromkeys(x["digest"] for x in [doc["config"], *doc["layers"]]):
            conn.request("POST", f"/v2/{repo}/blobs/uploads/")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 202, (d, resp.status)
            location = resp.getheader("Location").split(host, 1)[-1]
            sep = "&" if "?" in location else "?"
            conn.request("PUT", f"{location}{sep}digest={d}", body=blob(d),
                         headers={"Content-Type": "application/octet-stream"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 201, (d, resp.status)
        conn.request("PUT", f"/v2/{repo}/manifests/{TAG}", body=manifest, headers={"Content-Type": mdesc["mediaType"]})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 201, (resp.status, body)
    finally:
        conn.close()


def _registry_client(host):
    """A client of the loopback registry alone: plain HTTP, no credentials or mirrors of the machine's."""
    from lamina.registry.client import RegistryClient
    return RegistryClient(insecure=(host,), credentials={})


def _registry_paths(work, layout, paths, tree):
    import lamina
    from lamina.registry.source import RegistrySource
    from lamina.store import Store
    from lamina.store import materialize as mat

    out = {}
    reg = shared_registry()
    ref = f"{reg.host}/everypath{next(_repos)}-{os.getpid()}:{TAG}"
    _push_layout(reg.host, ref.split("/", 1)[1].split(":", 1)[0], layout)
    if "registry-pull" in paths:
        def pulled():
            store = Store(os.path.join(work, "store-pulled"))
            lamina.pull(ref, store=store, platform="linux/amd64", client=_registry_client(reg.host))
            dest = os.path.join(work, "registry-pull")
            mat.materialize(store, ref, dest)
            return tree(dest)
        out["registry-pull"] = _attempt(pulled)
    if "registry-unpack" in paths:
        def unpacked():
            source = RegistrySource(ref, client=_registry_client(reg.host))
            return tree(lamina.unpack(source, os.path.join(work, "registry-unpack"), platform="linux/amd64").dest)
        out["registry-unpack"] = _attempt(unpacked)
    if "registry-overlay" in paths:
        def overlay():
            source = RegistrySource(ref, client=_registry_client(reg.host))
            # (no platform asked for, where the other two name linux/amd64: a manifest's image is
            # then taken whatever its config says, the machine's platform or not)
            stats = lamina.unpack(source, os.path.join(work, "registry-ovl"), format="overlay")
            with overlay_mount(stats.layer_dirs, os.path.join(work, "registry-ovl-mnt")) as mnt:
                return tree(mnt)
        out["registry-overlay"] = _attempt(overlay)
    return out


def run_paths(work, layer_tars, paths=PATHS, *, dir_mtime=False, root=False, neighbour=None, neighbour_first=True):
    """{path name: Snapshot or LaminaError} for the image made of ``layer_tars``
    (``dir_mtime``: directory times recorded too; ``root``: the root directory too;
    ``neighbour``: the layer tars of another image the store takes, whatever it makes of them,
    before the image (``neighbour_first``: the image's files then meet its objects in the dedup
    pass and the extractor) or after it, before any tree is made of the image (its files meet
    the image's objects))."""
    import lamina
    from lamina.store import Store
    from lamina.store import materialize as mat, mounts
    from verbkit import load_layout

    work = os.fspath(work)
    tree = functools.partial(_tree, dir_mtime=dir_mtime, root=root)
    layout = write_image(os.path.join(work, "layout"), layer_tars)
    src = f"oci:{layout}:{TAG}"
    out = {}
    if "dir" in paths:
        out["dir"] = _attempt(lambda: tree(lamina.unpack(src, os.path.join(work, "dir")).dest))
    if "dir-topdown" in paths:
        out["dir-topdown"] = _attempt(lambda: tree(_unpack_top_down(src, os.path.join(work, "dir-topdown")).dest))
    if "overlay-mount" in paths:
        def overlay():
            stats = lamina.unpack(src, os.path.join(work, "ovl"), format="overlay")
            with overlay_mount(stats.layer_dirs, os.path.join(work, "ovl-mnt")) as mnt:
                return tree(mnt)
        out["overlay-mount"] = _attempt(overlay)
    store_paths = [p for p in paths if p.startswith("store-")]
    if store_paths:
        store = Store(os.path.join(work, "store"))

        def load_neighbour():
            _attempt(lambda: load_layout(store, write_image(os.path.join(work, "layout-neighbour"), neighbour),
                                         TAG, "neighbour:1"))
        if neighbour is not None and neighbour_first:
            load_neighbour()
        loaded = _attempt(lambda: load_layout(store, layout, TAG, "img:1"))
        if neighbour is not None and not neighbour_first:
            load_neighbour()
        for p in store_paths:
            if isinstance(loaded, Exception):
                out[p] = loaded
                continue
            dest = os.path.join(work, p)
            if p == "store-copy":
                out[p] = _attempt(lambda: (mat.materialize(store, "img:1", dest), tree(dest))[1])
            elif p == "store-link":
                out[p] = _attempt(lambda: (mat.materialize(store, "img:1", dest, link=True), tree(dest))[1])
            elif p == "store-relink":
                def relinked():
                    rebuilt = write_image(os.path.join(work, "layout-rebuilt"), [EMPTY_LAYER] + list(layer_tars))
                    load_layout(store, rebuilt, TAG, "img:2")
                    mat.materialize(store, "img:2", dest)
                    return tree(dest)
                out[p] = _attempt(relinked)
            else:
                def mounted():
                    mounts.mount(store, "img:1", dest)
                    try:
                        return tree(dest)
                    finally:
                        mounts.umount(store, dest)
                out[p] = _attempt(mounted)
    if "compact-save" in paths:
        out["compact-save"] = _attempt(lambda: _compact_saved(work, layout, tree))
    for p in ("apply", "apply-link", "apply-atomic"):
        if p in paths:
            out[p] = _attempt(functools.partial(_applied, work, layout, layer_tars, tree, p))
    if any(p.startswith("registry-") for p in paths):
        out.update(_registry_paths(work, layout, paths, tree))
    return out


def layout_layers(layout):
    """[(blob path, digest, diffID)] of the layout's TAG image, bottom first."""
    with open(os.path.join(layout, "index.json"), "rb") as f:
        mdesc = next(d for d in json.load(f)["manifests"]
                     if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG)

    def doc(digest):
        with open(os.path.join(layout, "blobs", *digest.split(":", 1)), "rb") as f:
            return json.load(f)
    manifest = doc(mdesc["digest"])
    diff_ids = doc(manifest["config"]["digest"])["rootfs"]["diff_ids"]
    return [(os.path.join(layout, "blobs", *d["digest"].split(":", 1)), d["digest"], i)
            for d, i in zip(manifest["layers"], diff_ids)]


def _applied(work, layout, layer_tars, tree, how):
    """apply, apply-link, apply-atomic: the tree ``lamina apply`` leaves after every layer in turn."""
    import lamina
    from lamina.store import Store
    from lamina.store import materialize as mat
    from verbkit import load_layout
    blobs = layout_layers(layout)
    dest = os.path.join(work, how)
    below, store = 0, None
    if how != "apply-atomic":
        # the lower half by a flat unpack (an image of those layers alone) or from a store by
        # --link (the store's own inodes), or DEST made empty
        below = len(blobs) // 2
        if below:
            lower = write_image(os.path.join(work, f"layout-{how}-lower"), list(layer_tars[:below]))
            if how == "apply-link":
                store = Store(os.path.join(work, f"{how}-store"))
                load_layout(store, lower, TAG, "lower:1")
                mat.materialize(store, "lower:1", dest, link=True)
            else:
                lamina.unpack(f"oci:{lower}:{TAG}", dest)
        else:
            os.mkdir(dest)
    for k, (blob, digest, diff_id) in enumerate(blobs[below:], below):
        apply = lamina.apply_layer_atomic if how == "apply-atomic" else lamina.apply_layer
        apply(blob, dest, digest=digest, diff_id=diff_id, name=f"layer {k + 1} of {len(blobs)}")
    if store is not None:
        # (an AssertionError, not the path's refusal: an apply that wrote into the store's
        # objects through DEST is a bug whatever the other paths say)
        findings = [f"{f.severity}: {f.subject}: {f.message}" for f in store.fsck().findings]
        assert not findings, f"apply-link: the layers applied onto a --link unpack changed the store: {findings}"
    return tree(dest)


def _compact_saved(work, layout, tree):
    """compact-save: the tree of the docker-archive a compact store saves of the image."""
    import hashlib
    import io
    import tarfile

    import lamina
    from lamina.store import Store
    from lamina.transports import save
    from verbkit import load_layout

    store = Store(os.path.join(work, "compact"))
    store.set_config("keep-blobs", "false")
    load_layout(store, layout, TAG, "img:1")
    archive = os.path.join(work, "compact-saved.tar")
    save(["img:1"], archive, store=store)
    diff_ids = list(store.resolve("img:1").diff_ids)
    with tarfile.open(archive) as t:
        entry = json.loads(t.extractfile("manifest.json").read())[0]
        hashed = []
        for name in entry["Layers"]:
            data = t.extractfile(name).read()
            if data[:2] == b"\x1f\x8b":
                import gzip
                data = gzip.GzipFile(fileobj=io.BytesIO(data)).read()
            hashed.append("sha256:" + hashlib.sha256(data).hexdigest())
    # (an AssertionError, not a path's refusal: a saved layer that is not its diffID is a bug)
    assert hashed == diff_ids, f"compact-save: the saved layers hash to {hashed}, the image's diffIDs are {diff_ids}"
    return tree(lamina.unpack(f"docker-archive:{archive}", os.path.join(work, "compact-save")).dest)


def umoci_tree(work, layer_tars, *, dir_mtime=False, root=False):
    """umoci raw unpack of the same image: a Snapshot, or the CalledProcessError."""
    require_tool("umoci")
    layout = write_image(os.path.join(work, "umoci-layout"), layer_tars)
    dest = os.path.join(work, "umoci")
    try:
        subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout}:{TAG}", dest],
                       check=True, capture_output=True, text=True, errors="backslashreplace")
    except subprocess.CalledProcessError as e:
        return e
    return _tree(dest, dir_mtime, root)


def assert_agree(results, *, context=""):
    """The same tree from every path, or an error from every path."""
    failed = {k: v for k, v in results.items() if isinstance(v, Exception)}
    if failed and len(failed) != len(results):
        ok = [k for k in results if k not in failed]
        raise AssertionError(f"{context}: {sorted(failed)} failed ({next(iter(failed.values()))!r}) "
                             f"but {ok} succeeded")
    if failed:
        return None
    names = list(results)
    ref = results[names[0]]
    for n in names[1:]:
        other = results[n]
        if n in SHARED_INODES:
            # --link and the store's mount hand out the store's inodes, which file-level
            # dedup shares between identical files: hardlink groups are not the image's there
            other = dataclasses.replace(other, links=ref.links)
        diff = compare(ref, other, labels=(names[0], n))
        assert not diff, f"{context}: {names[0]} and {n} differ:\n{diff}"
    return ref


def _odd_metadata(m):
    if not (m.isreg() or m.isdir()) or ((m.uid, m.gid) == (0, 0) and m.mode in (0o644, 0o755)):
        return ""
    return f" [{m.mode:o} {m.uid}:{m.gid}]"


def describe(layer_tars):
    """The entries of each layer, for failure messages."""
    import io
    import tarfile
    lines = []
    for i, raw in enumerate(layer_tars):
        try:
            with tarfile.open(fileobj=io.BytesIO(raw)) as t:
                names = [f"{m.name}{'/' if m.isdir() else ''}"
                         f"{' -> ' + m.linkname if m.issym() else ''}{' => ' + m.linkname if m.islnk() else ''}"
                         f"{_odd_metadata(m)}" for m in t.getmembers()]
        except Exception as e:  # (a bad PAX number: tarfile's int() raises ValueError, its seek OverflowError)
            names = [f"<unreadable: {e}>"]
        lines.append(f"layer {i}: " + json.dumps(names))
    return "\n".join(lines)
