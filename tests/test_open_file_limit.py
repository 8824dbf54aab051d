"""An image of hundreds of layers under a low open-file limit (``ulimit -n``).

Extracting a layer in overlay format holds one fd per layer below it (its union view), and
merging an image's snapshots (unpack from the store, --link) two per layer: 500 layers, within
Limits.max_layers, need more than 500 open files.  Under ``ulimit -n 256`` ``unpack --format
overlay``, ``copy`` and ``load`` failed after extracting a hundred layers or more, and an unpack
from the store at once, all with "Too many open files" and no word of the limit.  Now each
checks the limit before it writes anything and names it; under a limit that fits one layer's
fds but not several layers' side by side, the layers extract fewer at a time.  A flat unpack
(one layer applied after another) and a mount (the kernel holds the layers) need no such fds.
"""
import os
import resource

import pytest

import ocibuild as ob
from registryfixture import reg, registry_env, skopeo_push  # noqa: F401
from storekit import lamina

LAYERS = 250


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    lay = ob.Layout(tmp_path_factory.mktemp("many") / "layout")
    lay.add(lay.image([{f"f{i:03d}": b"%d\n" % i} for i in range(LAYERS)]), "many")
    return lay.root


def _limited(n):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))   # soft and hard: the CLI raises soft to hard
    return set_limit


def _names(tree):
    return sorted(os.listdir(tree))


def test_an_overlay_unpack_names_the_open_file_limit_before_it_writes(tmp_path, layout):
    dest = tmp_path / "dest"
    proc = lamina(tmp_path / "unused", "unpack", "--format", "overlay", f"oci:{layout}:many", dest, check=False,
                  preexec_fn=_limited(256))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"lamina: error: {LAYERS} layers: "), proc.stderr
    assert "the open-file limit is 256 (ulimit -n" in proc.stderr, proc.stderr
    assert not dest.exists() and os.listdir(tmp_path) == [], os.listdir(tmp_path)
    # a flat unpack applies one layer after another: the same limit is enough
    lamina(tmp_path / "unused", "unpack", f"oci:{layout}:many", dest, preexec_fn=_limited(256))
    assert _names(dest) == [f"f{i:03d}" for i in range(LAYERS)]


@pytest.mark.parametrize("verb", ["copy", "load"])
def test_a_store_import_names_the_open_file_limit_and_stores_nothing(tmp_path, layout, verb):
    import json
    root = tmp_path / "root"
    args = ("copy", f"oci:{layout}:many", "many:1") if verb == "copy" else ("load", "-i", layout)
    proc = lamina(root, *args, check=False, preexec_fn=_limited(256))
    last = proc.stderr.strip().splitlines()[-1]   # after the blobs' progress lines
    assert proc.returncode == 1 and "Too many open files" not in proc.stderr, proc.stderr[-2000:]
    assert "the open-file limit is 256 (ulimit -n" in last and f"{LAYERS} layers" in last, last
    assert lamina(root, "images", "-q").stdout == ""
    assert json.loads(lamina(root, "fsck", "--format", "json").stdout)["findings"] == []


def test_a_limit_for_one_layer_at_a_time_extracts_them_one_at_a_time(tmp_path, layout):
    """Enough for the top layer's fds, not for two layers side by side: the import goes on
    with fewer layers at once (it failed at some layer, as the layers below it finished).
    The merge of the snapshots holds two fds per layer (a directory and its listing)."""
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{layout}:many", "many:1", preexec_fn=_limited(LAYERS + 100))
    lamina(root, "unpack", "many:1", tmp_path / "flat", preexec_fn=_limited(2 * LAYERS + 100))
    assert _names(tmp_path / "flat") == [f"f{i:03d}" for i in range(LAYERS)]


def test_an_unpack_from_the_store_names_the_limit_and_a_mount_needs_none(tmp_path, layout):
    from conftest import require_root
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{layout}:many", "many:1")
    for extra in ((), ("--link",)):
        dest = tmp_path / f"dest{len(extra)}"
        proc = lamina(root, "unpack", *extra, "many:1", dest, check=False, preexec_fn=_limited(256))
        assert proc.returncode == 1 and "the open-file limit is 256 (ulimit -n" in proc.stderr, proc.stderr
        assert not dest.exists()
    require_root()
    mnt = tmp_path / "mnt"
    lamina(root, "mount", "many:1", mnt, preexec_fn=_limited(256))
    try:
        assert _names(mnt) == [f"f{i:03d}" for i in range(LAYERS)]
    finally:
        lamina(root, "umount", mnt)


DEEP_LAYERS, DEPTH = 100, 24


def _deep_layer(i):
    """Layer ``i`` of the deep image: every directory of one path DEPTH deep (its mode and time
    this layer's), a file at its bottom and one half-way, a directory beside the path's fourth;
    now and then a whiteout of a lower layer's file, or a directory made opaque."""
    import io
    import tarfile
    dirs = [f"d{j:02d}" for j in range(DEPTH)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name, data=None, mode=0o644):
            info = tarfile.TarInfo(name)
            info.mtime = ob.MTIME + i * 100 + name.count("/")
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        for j in range(DEPTH):
            add("/".join(dirs[:j + 1]), mode=0o700 | (i % 8) << 3 | (j % 8))
            if j == 2:  # listed after d03: the walk comes back for it
                add("/".join(dirs[:j + 1]) + "/zside", mode=0o750)
                add("/".join(dirs[:j + 1]) + f"/zside/s{i:03d}", b"side %d\n" % i)
            if j == DEPTH // 2:
                add("/".join(dirs[:j + 1]) + f"/half{i:03d}", b"half %d\n" % i)
                if i == 40:
                    add("/".join(dirs[:j + 1]) + "/.wh..wh..opq", b"")  # hides layers 0-39 below here
        add("/".join(dirs) + f"/f{i:03d}", b"%d\n" % i)
        if i % 10 == 5:
            add("/".join(dirs) + f"/.wh.f{i - 1:03d}", b"")
    return buf.getvalue()


@pytest.fixture(scope="module")
def deep_store(tmp_path_factory):
    """A store holding an image of DEEP_LAYERS layers sharing one path DEPTH deep, and the
    layout it came from."""
    base = tmp_path_factory.mktemp("deep")
    lay = ob.Layout(base / "layout")
    lay.image_of_tars([_deep_layer(i) for i in range(DEEP_LAYERS)], "deep")
    lamina(base / "root", "copy", f"oci:{lay.root}:deep", "deep:1")
    return base / "root", lay.root


@pytest.mark.parametrize("link", [False, True], ids=["copy", "link"])
def test_a_deep_tree_of_many_layers_merges_under_a_limit_that_fits_its_root(tmp_path, deep_store, link):
    """Each directory of the merge holds an fd per layer that has it: the path 24 deep in 100
    layers asked for 2,400 at its bottom, and a limit the root's check let through (256)
    failed at the second level with "'d00': cannot open: Too many open files".  The merge
    gives the fds of the levels above up and opens them again coming back: the same tree as a
    plain unpack of the layout (layer after layer), each directory's mode and time its topmost
    layer's, the whiteouts and the opaque directory applied."""
    from treecmp import snapshot
    root, layout = deep_store
    extra = ("--link",) if link else ()
    lamina(root, "unpack", *extra, "deep:1", tmp_path / "merged", preexec_fn=_limited(2 * DEEP_LAYERS + 56))
    lamina(tmp_path / "unused", "unpack", f"oci:{layout}:deep", tmp_path / "plain")
    merged, plain = (snapshot(tmp_path / t, dir_mtime=True) for t in ("merged", "plain"))
    assert merged.entries == plain.entries
    bottom = tmp_path / "merged" / "/".join(f"d{j:02d}" for j in range(DEPTH))
    # layer 40 made d12 opaque: nothing of layers 0-39 below it
    assert sorted(os.listdir(bottom)) == [f"f{i:03d}" for i in range(40, DEEP_LAYERS) if i % 10 != 4]
    half = bottom.parents[DEPTH - DEPTH // 2 - 2]
    assert sorted(n for n in os.listdir(half) if n.startswith("half")) == \
        [f"half{i:03d}" for i in range(40, DEEP_LAYERS)]
    assert len(os.listdir(tmp_path / "merged" / "d00" / "d01" / "d02" / "zside")) == DEEP_LAYERS


PULL_LAYERS = 120


@pytest.fixture(scope="module")
def pushed(reg, tmp_path_factory):  # noqa: F811
    """An image of PULL_LAYERS tiny layers in the loopback registry (pushed by skopeo)."""
    lay = ob.Layout(tmp_path_factory.mktemp("pull") / "layout")
    lay.add(lay.image([{f"f{i:03d}": b"%d\n" % i} for i in range(PULL_LAYERS)]), "many")
    skopeo_push(f"oci:{lay.root}:many", reg.host, "many:1")
    return f"{reg.host}/many:1"


def test_a_pull_names_the_limit_before_it_writes_or_extracts_fewer_layers_at_once(pushed, registry_env, tmp_path):  # noqa: F811
    """A pull extracts layers on its workers and, as their blobs arrive, on its fetch threads,
    each over an fd per layer below it.  Under a limit one layer's fds fit in (120 layers, ulimit
    -n 200) the pull passed the check of the workers alone, and three fetch threads extracting
    side by side failed at some layer with "cannot open lower layer …: Too many open files";
    under one they did not fit in (170) it failed clearly, but after storing the config, an
    orphan blob for fsck.  Now the first extracts one layer at a time, after the download, and
    the second stores nothing."""
    import json
    root = tmp_path / "root"
    proc = lamina(root, "pull", pushed, check=False, preexec_fn=_limited(PULL_LAYERS + 50))
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Too many open files" not in proc.stderr, proc.stderr[-2000:]
    assert last == (f"lamina: error: {PULL_LAYERS} layers: the top layer's snapshot, extracted over the layers below "
                    f"it, holds {PULL_LAYERS - 1} directories open at once, and the open-file limit is "
                    f"{PULL_LAYERS + 50} (ulimit -n; {PULL_LAYERS + 63} needed)"), last
    assert lamina(root, "images", "-q").stdout == ""
    assert json.loads(lamina(root, "fsck", "--format", "json").stdout)["findings"] == []
    blobs = root / "blobs" / "sha256"
    assert not blobs.exists() or os.listdir(blobs) == []

    proc = lamina(root, "pull", pushed, check=False, preexec_fn=_limited(PULL_LAYERS + 80))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(lamina(root, "fsck", "--format", "json").stdout)["findings"] == []
    lamina(root, "unpack", pushed, tmp_path / "dest")
    assert _names(tmp_path / "dest") == [f"f{i:03d}" for i in range(PULL_LAYERS)]


_HOGGED_FLATTEN = r"""
import os, resource, sys
from lamina.errors import MaterializeError
from lamina.store import flatten as F
layers, out, limit = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
budget, hog = F._walk_fd_budget, []


def counted_then_taken(free):
    def walk_fd_budget():
        # counted, then another thread of the process takes all but ``free`` of the rest
        n = budget()
        while True:
            try:
                hog.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                break
        for _ in range(free):
            os.close(hog.pop())
        return n
    return walk_fd_budget


for free in range(2 * len(layers) + 12):
    F._walk_fd_budget = counted_then_taken(free)
    dest = os.path.join(out, str(free))
    os.mkdir(dest)
    try:
        F.flatten(layers, dest, workers=0)
        got = sorted(os.listdir(os.path.join(dest, "a")))
        print(free, "ok", len(got), flush=True)
    except MaterializeError as e:
        print(free, "error", str(e).replace("\n", " "), flush=True)
    finally:
        while hog:
            os.close(hog.pop())
"""


def test_a_flatten_short_of_fds_taken_by_another_thread_fails_never_drops_a_layer(tmp_path):
    """flatten() budgets its walk by the fds open when it starts; a Python API user merging two
    images on two threads under a low limit has the other thread take fds meanwhile.  A lower
    layer's directory it then could not open (EMFILE) ended that directory's merge as a
    non-directory below would: a tree missing the lower layers' files, and no error.  Now a
    walk short of fds fails, naming the directory; when it succeeds, the tree is whole."""
    import subprocess
    import sys
    n = 6
    layers = []
    for i in range(n):
        d = tmp_path / "layers" / str(i)
        (d / "a").mkdir(parents=True)
        (d / "a" / f"f{i}").write_bytes(b"%d\n" % i)
        layers.append(str(d))
    out = tmp_path / "out"
    out.mkdir()
    limit = 2 * n + 100
    proc = subprocess.run([sys.executable, "-c", _HOGGED_FLATTEN, ",".join(layers), str(out), str(limit)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln.split(" ", 2) for ln in proc.stdout.splitlines()]
    assert len(lines) == 2 * n + 12, proc.stdout
    for free, how, what in lines:
        if how == "ok":
            assert what == str(n), f"{free} fds free: a tree of {what} of the {n} layers' files\n{proc.stdout}"
        else:
            assert what.endswith(f": Too many open files (the open-file limit is {limit}, ulimit -n; other "
                                 "threads of this process may hold fds too)"), what
    assert [how for _, how, _ in lines][-1] == "ok", proc.stdout  # enough fds: the merge is whole
    assert "error" in [how for _, how, _ in lines], proc.stdout  # and some counts were short of fds


def test_a_lower_layers_directory_the_merge_cannot_open_is_an_error_not_left_out():
    """The same swallowed failure, made without fds: as user nobody, a lower layer's ``a`` shut
    (mode 0000) under the top layer's ``a``.  The merge left the lower ``a`` out and gave a tree
    of the top layer's file alone; it fails naming ``a`` now (overlayfs fails there too: its
    readdir of a merged directory reads every lower one)."""
    import shutil
    from conftest import require_root
    from layerkit import run_as_nobody, world_tmpdir
    require_root()
    base = world_tmpdir()
    try:
        for i in range(2):
            os.makedirs(os.path.join(base, "layers", str(i), "a"))
            with open(os.path.join(base, "layers", str(i), "a", f"f{i}"), "w") as f:
                f.write(f"{i}\n")
        os.mkdir(os.path.join(base, "dest"))
        for top, _, files in os.walk(base):
            for p in [top] + [os.path.join(top, n) for n in files]:
                os.chown(p, 65534, 65534)
        os.chmod(os.path.join(base, "layers", "0", "a"), 0)
        r = run_as_nobody(
            "from lamina.store.flatten import flatten\n"
            "from lamina.errors import MaterializeError\n"
            "try:\n"
            "    flatten([sys.argv[1] + '/layers/0', sys.argv[1] + '/layers/1'], sys.argv[1] + '/dest', workers=0)\n"
            "    print('ok', sorted(os.listdir(sys.argv[1] + '/dest/a')))\n"
            "except MaterializeError as e:\n"
            "    print('error', e)\n", base, preload=("lamina.store.flatten",))
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout == "error 'a': cannot open: Permission denied\n", r.stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_pull_of_an_image_the_store_holds_whole_needs_no_fds_for_its_layers(pushed, registry_env, tmp_path):  # noqa: F811
    """The pull checked the limit against the top layer's fds before it knew which layers the
    store lacked: pulled once, the image was refused again under ``ulimit -n 170`` ("holds 119
    directories open at once"), with nothing to extract.  Now only what is missing counts."""
    import json
    root = tmp_path / "root"
    lamina(root, "pull", pushed)
    proc = lamina(root, "pull", pushed, check=False, preexec_fn=_limited(PULL_LAYERS + 50))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"Status: Image is up to date for {pushed}" in proc.stdout, proc.stdout[-2000:]
    assert json.loads(lamina(root, "fsck", "--format", "json").stdout)["findings"] == []
