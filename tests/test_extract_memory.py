"""What the extractor keeps per entry until its layer ends (issue 14: peak RSS <= 64 MiB
whatever the layer size).

The dir format remembers what the layer wrote (so that its whiteouts and opaque markers spare
it) and which directories need their mode and times fixed up at the end: that grows with the
layer's entries and was most of a 66k-entry layer's peak RSS.  The old extractor kept every
entry's path in a set, and its name in its directory's set besides (~250 B a file); now a
file is its name in the extraction's name stores, which spill to a temp file past a budget.  Counted two ways, no timing:
``Extractor.retained()`` (what each structure holds, by sys.getsizeof), and the peak RSS
(VmHWM) of a child process extracting a generated layer of 100k empty files, with a bound
halfway between the old extractor's growth (23 MiB) and the new one's (6.4 MiB).
"""
import json
import os
import sys
import tempfile

from conftest import run
from lamina._extract import Extractor
from tarbuild import header

DIRS, PER_DIR = 20, 1000


def _layer(dirs, per_dir):
    out = bytearray()
    for d in range(dirs):
        out += header(f"usr/share/some-package-{d:04d}/", type=b"5", mode=0o755)
        for f in range(per_dir):
            out += header(f"usr/share/some-package-{d:04d}/a-module-file-name-{f:06d}.py", size=0)
    return bytes(out + bytes(1024))


def _scratch(tmp_path):
    """tmpfs when there is one: 100k files on a busy disk take half a minute."""
    return tempfile.TemporaryDirectory(dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else tmp_path)


def test_a_file_costs_its_name_not_its_path(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    ex = Extractor(str(dest))
    ex.feed(_layer(DIRS, PER_DIR))
    kept = ex.retained()
    files = DIRS * PER_DIR
    # directories by path (the 20, usr and usr/share), files by name only
    assert kept["created"][0] == DIRS + 2
    assert kept["created_leaves"][0] == files
    assert kept["created_in"][0] == files
    per_file = sum(size for _, size in kept.values()) / files
    # each file's 30-byte name twice (by its directory's path and inode), and the 20
    # directories' share; the old sets of paths and names took ~250 B a file
    assert per_file < 100, kept
    ex.finish()
    # what only whiteouts read is freed once the layer ends, before the directory fixups run
    after = ex.retained()
    assert after["created"][0] == after["created_leaves"][0] == after["created_in"][0] == 0, after
    assert len(os.listdir(dest / "usr/share/some-package-0007")) == PER_DIR


# a child extracting tars (mode: dir, overlay, flat: the dir format, all in one tree): the growth
# of its peak RSS
# what the children below read their memory with: /proc/self/status, in bytes
VM = r'''
def vm(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
'''

CHILD = VM + r'''
import json, os, sys
from lamina._extract import Extractor

mode, scratch, tars = sys.argv[1], sys.argv[2], sys.argv[3:]
buf = bytearray(1 << 20)
base = vm("VmRSS:")
roots, entries = [], 0
for i, tar in enumerate(tars):
    root = os.path.join(scratch, "0" if mode != "overlay" else str(i))
    os.makedirs(root, exist_ok=True)
    ex = Extractor(root, format="overlay" if mode == "overlay" else "dir",
                   lowers=roots[::-1] if mode == "overlay" and roots else None)
    with open(tar, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            ex.feed(memoryview(buf)[:n])
    ex.finish()
    entries += ex.entries
    roots.append(root)
print(json.dumps({"growth": vm("VmHWM:") - base, "entries": entries}))
'''


def test_peak_rss_of_a_100k_file_layer(tmp_path):
    tar = tmp_path / "layer.tar"
    tar.write_bytes(_layer(100, 1000))
    with _scratch(tmp_path) as scratch:
        out = run(sys.executable, "-c", CHILD, "dir", scratch, str(tar))
    got = json.loads(out.stdout)
    assert got["entries"] == 100 * 1001
    assert got["growth"] < 14 << 20, f"peak RSS grew {got['growth'] / 2**20:.1f} MiB over 100k entries"


REMOVE = VM + r'''
import json, os, sys
from lamina.tree import remove_tree

top = os.path.join(sys.argv[1], "hashed")
os.mkdir(top)
fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
for i in range(int(sys.argv[2])):
    os.close(os.open(f"{i:064x}-{i}", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
os.close(fd)
base = vm("VmHWM:")
remove_tree(top)
print(json.dumps({"growth": vm("VmHWM:") - base, "gone": not os.path.exists(top)}))
'''


def test_peak_rss_of_removing_a_directory_of_200k_names(tmp_path):
    """A failed store copy removes its snapshot's hashed/ (a name per file of the layer, in one
    directory) and tree: the removal listed a directory whole before unlinking, ~130 B a name
    (a failed copy of a 1.6M-file layer peaked at 272 MiB).  Now names are unlinked as they are
    listed: 200k names cost the removal no more than a few MiB (it was ~26 MiB)."""
    with _scratch(tmp_path) as scratch:
        out = run(sys.executable, "-c", REMOVE, scratch, "200000")
    got = json.loads(out.stdout)
    assert got["gone"]
    assert got["growth"] < 4 << 20, f"peak RSS grew {got['growth'] / 2**20:.1f} MiB removing 200k names"


SPILLED = r'''
import json, os, sys
from lamina._extract import Extractor

def tree(root):
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = os.path.isdir(p)
    return out

out = {}
for label, fmt in (("dir", "dir"), ("overlay", "overlay")):
    base = os.path.join(sys.argv[1], label)
    os.mkdir(base)
    roots = []
    for i, path in enumerate(sys.argv[2:]):
        root = os.path.join(base, str(i))
        os.mkdir(root)
        ex = Extractor(base + "/0" if fmt == "dir" else root, format=fmt,
                       lowers=roots[:] if fmt == "overlay" and roots else None)
        with open(path, "rb") as f:
            ex.feed(f.read())
        ex.finish()
        roots.append(root)
    out[label] = tree(base + "/0") if fmt == "dir" else {str(i): tree(r) for i, r in enumerate(roots)}
print(json.dumps(out, sort_keys=True))
'''


def test_names_read_back_from_the_spill_file_decide_as_kept_ones(tmp_path):
    """Beyond a budget (LAMINA_NAMES_HELD, 4 MiB by default) the names of what the layer wrote
    go to a temp file: whiteouts and opaque markers of names the layer wrote itself, read back
    from it, spare them as before, and still remove the layers' below.  The same layers with a
    256-byte budget (a spill every few names) and the default one give the same trees."""
    lower = bytearray()
    upper = bytearray()
    for d in range(6):
        lower += header(f"d{d}/", type=b"5", mode=0o755)
        upper += header(f"d{d}/", type=b"5", mode=0o755)
        for f in range(40):
            lower += header(f"d{d}/low-{f:03d}", size=0)
            upper += header(f"d{d}/up-{f:03d}", size=0)
    for d in range(6):
        for f in range(0, 40, 3):  # its own names stay, the lower ones go
            upper += header(f"d{d}/.wh.up-{f:03d}", size=0)
            upper += header(f"d{d}/.wh.low-{f:03d}", size=0)
    upper += header("d2/.wh..wh..opq", size=0)  # clears d2 of what is below, keeps its own
    upper += header("d4/.wh..wh..opq", size=0)
    tars = []
    for i, data in enumerate((lower, upper)):
        tars.append(tmp_path / f"{i}.tar")
        tars[-1].write_bytes(bytes(data + bytes(1024)))
    got = {}
    for budget in ("256", ""):
        work = tmp_path / f"w{budget or 'default'}"
        work.mkdir()
        env = dict(os.environ, LAMINA_NAMES_HELD=budget)
        got[budget] = json.loads(run(sys.executable, "-c", SPILLED, str(work), *map(str, tars), env=env).stdout)
    assert got["256"] == got[""]
    flat = got[""]["dir"]
    assert flat["d0/up-001"] is False and "d0/low-001" in flat and "d0/low-003" not in flat
    assert "d0/up-000" in flat and "d0/up-003" in flat  # whited out in the layer that wrote them
    assert "d2/up-001" in flat and not any(p.startswith("d2/low") for p in flat)


EVERY_PATH = r'''
import os, pickle, sys
sys.path.insert(0, os.getcwd())
from everypath import run_paths, umoci_tree
raws = pickle.load(open(sys.argv[2], "rb"))
results = run_paths(sys.argv[1], raws, dir_mtime=True, root=True)
results["umoci"] = umoci_tree(sys.argv[1], raws, dir_mtime=True, root=True)
pickle.dump(results, open(sys.argv[3], "wb"))
'''

_LOW, _T = 1_500_000_000, 1_600_000_000


def _fixup_layers():
    """Every kind of directory fixup record, in many directories: listed again with a new mode
    and time, written into unlisted (the lower time stays), whiteouts and an opaque marker in
    unlisted ones, a directory reached through a symlink and by its name, one removed and made
    again at the same path in the layer."""
    from tarbuild import Tar
    low, up = Tar().dir("./", mode=0o755, mtime=_LOW - 1), Tar()
    for d in range(16):
        low.dir(f"d{d:02d}", mode=0o750 + (d % 8), mtime=_LOW + d).dir(f"d{d:02d}/s", mtime=_LOW + 100 + d)
        for f in range(3):
            low.file(f"d{d:02d}/f{f}", b"x").file(f"d{d:02d}/s/g{f}", b"y")
        if d % 2 == 0:
            up.dir(f"d{d:02d}", mode=0o700 + (d % 8), mtime=_T + d).file(f"d{d:02d}/new", b"n")
        else:
            up.file(f"d{d:02d}/s/new", b"n").whiteout(f"d{d:02d}/f1").whiteout(f"d{d:02d}/s/g2")
    up.opaque("d03/s")
    low.dir("t", mtime=_LOW + 500).symlink("l", "t").dir("gone", mtime=_LOW + 600)
    up.file("l/x", b"x").file("t/y", b"y").dir("t", mode=0o711, mtime=_T + 500)
    up.dir("gone", mode=0o701, mtime=_T + 600).dir("gone/in", mtime=_T + 601).file("gone/in/f", b"f")
    up.file("gone", b"now a file").whiteout("gone").dir("gone", mode=0o705, mtime=_T + 602)
    up.dir("gone/in", mode=0o704, mtime=_T + 603)
    return [low.bytes(), up.bytes()]


def test_directory_fixups_spilled_to_disk_give_the_same_trees(tmp_path):
    """Beyond LAMINA_FIXUPS_HELD records (16k by default) the directory fixups (modes and
    times set once the layer is written) go, sorted, to a temp file, and are resolved at the
    end by merging its runs.  With one record held (every record its own run, merged back) the
    trees, directory times and modes included, are those of the default budget, through every
    path, and umoci's."""
    import pickle
    from everypath import assert_agree
    from treecmp import compare
    layers = tmp_path / "layers.pickle"
    layers.write_bytes(pickle.dumps(_fixup_layers()))
    got = {}
    for held in ("1", ""):
        work = tmp_path / f"w{held or 'default'}"
        work.mkdir()
        out = tmp_path / f"out{held}.pickle"
        run(sys.executable, "-c", EVERY_PATH, str(work), str(layers), str(out),
            env=dict(os.environ, LAMINA_FIXUPS_HELD=held), cwd=os.path.dirname(os.path.abspath(__file__)))
        got[held] = pickle.loads(out.read_bytes())
    tree = assert_agree(got[""])
    assert tree is not None and assert_agree(got["1"]) is not None
    for path, spilled in got["1"].items():
        assert not compare(got[""][path], spilled, labels=(path, f"{path} (spilled)"))
    assert (tree.entries["d00"].mode, tree.entries["d00"].mtime) == (0o700, _T)
    assert (tree.entries["d01"].mode, tree.entries["d01"].mtime) == (0o751, _LOW + 1)
    assert tree.entries["d01/s"].mtime == _LOW + 101
    assert (tree.entries["t"].mode, tree.entries["t"].mtime) == (0o711, _T + 500)
    assert (tree.entries["gone"].mode, tree.entries["gone"].mtime) == (0o705, _T + 602)
    assert (tree.entries["gone/in"].mode, tree.entries["gone/in"].mtime) == (0o704, _T + 603)


def _many_dirs(dirs, upper=False):
    """A file in each of ``dirs`` directories; ``upper``: in each, a whiteout of that file and
    a new one (whiteouts look up what the layer wrote)."""
    out = bytearray()
    for d in range(dirs):
        out += header(f"d{d:06d}/", type=b"5", mode=0o755)
        if upper:
            out += header(f"d{d:06d}/.wh.a-module-file-name.py", size=0)
            out += header(f"d{d:06d}/another-module-file-name.py", size=0)
        else:
            out += header(f"d{d:06d}/a-module-file-name.py", size=0)
    return bytes(out + bytes(1024))


def test_peak_rss_of_a_layer_of_many_directories(tmp_path):
    """What the extractor keeps of the names a layer wrote is bounded whatever the number of
    directories they are in, on every path: dir, overlay and flat (two layers in one tree, the
    upper one's whiteouts looking up what it wrote).  One _Names object and a dict entry a
    directory, twice over, grew ~0.6 KB a directory (~18 MiB here); now the names over
    LAMINA_NAMES_HELD bytes are in a temp file, the directories' paths and inodes with them.  Small budgets for the names and the directory fixups, so that the fixed part is
    small beside what grows."""
    dirs = 30_000
    lower, upper = tmp_path / "lower.tar", tmp_path / "upper.tar"
    lower.write_bytes(_many_dirs(dirs))
    upper.write_bytes(_many_dirs(dirs, upper=True))
    env = dict(os.environ, LAMINA_NAMES_HELD=str(1 << 20), LAMINA_FIXUPS_HELD="2048")
    got = {}
    for mode, tars in (("dir", [lower]), ("overlay", [lower, upper]), ("flat", [lower, upper])):
        with _scratch(tmp_path) as scratch:
            out = run(sys.executable, "-c", CHILD, mode, scratch, *map(str, tars), env=env)
        got[mode] = json.loads(out.stdout)["growth"] / 2**20
    # main grew 25, 14 and 25 MiB; this extractor 4, 4 and 5
    assert all(growth < 10 for growth in got.values()), {m: f"{g:.1f} MiB" for m, g in got.items()}
