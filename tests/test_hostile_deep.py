"""Trees deeper than PATH_MAX that an image builds through its own symlinks, on every path.

A layer's entry names are bounded (Limits.max_path, max_depth), but nothing bounds where they
lead: ``s1 -> a/a/.../a`` (400 levels), then ``s1/a/.../a`` and ``s2 -> s1/a/.../a``, and so
on, resolve thousands of levels down, past PATH_MAX, in a layer of a few KiB.  The kernel's
own resolution (a flat unpack, the overlay mount) goes there; every path lamina resolves by
itself must too, in time linear in the depth, and the store's lifecycle must hold.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import require_root, require_tool, resolvers, use_resolver
from everypath import PATHS, assert_agree, describe, run_paths, write_image
from layerkit import overlay_layers
from storekit import lamina
from tarbuild import Tar

LEVELS = 400   # directories per link of the chain: 800 bytes of path
UPS = 1300     # ".." in one symlink target (3,900 bytes)


@pytest.fixture(autouse=True)
def _no_deep_leftovers(tmp_path):
    """The trees these tests make go thousands of levels down; pytest removes old temporary
    directories with shutil.rmtree, which recurses, so a later session ended in a RecursionError
    (its exit status 1, every test passed).  lamina's own removal has no depth limit; set up
    before ``g``, this runs after its check."""
    yield
    from lamina.tree import clear_dir
    clear_dir(tmp_path)


def _pax(t, kind, name, target=None, data=b""):
    records = {"path": name}
    if target is not None:
        records["linkpath"] = target
    t.pax(records)
    if kind == "file":
        return t.file("x", data)
    return t.symlink("x", "y") if kind == "symlink" else t.hardlink("x", "y")


def deep_chain(links, levels=LEVELS):
    """A layer whose symlinks ``s1`` ... ``s<links>`` each lead ``levels`` directories below
    the one before: ``s<links>`` is ``links * levels`` levels (twice as many bytes) down.
    Returns (the Tar, the name of the deepest link)."""
    seg = "/".join(["a"] * levels)
    t = Tar()
    for i in range(1, links + 1):
        base = (f"s{i - 1}/" if i > 1 else "") + seg
        _pax(t, "file", base + "/f", data=b"level %d" % i)
        _pax(t, "symlink", f"s{i}", base)
    return t, f"s{links}"


@pytest.mark.parametrize("resolver", resolvers())
def test_an_image_deeper_than_path_max_through_its_own_symlinks_agrees_on_every_path(g, resolver, monkeypatch):
    """4,800 bytes of path below the root.  The overlay format (unpack --format overlay and
    every store snapshot) copied a lower directory up by resolving its whole path from the
    lower layer's root, which failed with ENAMETOOLONG ("cannot open 'a/a/a/...': File name
    too long", 4 KB of message) where a flat unpack and the mount show the file; the store's
    copy then linked a hardlink group's second name by its first name's path (ENAMETOOLONG
    again).  Both resolve one directory at a time now.  Entries through a symlink of 1,300
    ".." down there took 16 s each in the overlay format (see the test below).  Then fsck, save
    of a compact store, rmi and prune find and remove it all."""
    use_resolver(resolver, monkeypatch)
    base, deep = deep_chain(6)
    for kind, name, data in (("file", "top", b"top"), ("file", "gone", b"gone"), ("file", "d/x", b"dx"),
                             ("file", "linked", b"linked")):
        _pax(base, kind, f"{deep}/{name}", data=data)
    _pax(base, "symlink", f"{deep}/up", "/".join([".."] * UPS))   # 1,300 levels back up
    top = Tar()
    for i in range(5):
        _pax(top, "file", f"{deep}/up/e{i}", data=b"e")
    _pax(top, "file", f"{deep}/upper", data=b"up")             # copies the chain up from below
    _pax(top, "hardlink", f"{deep}/hl", f"{deep}/linked")      # a lower file copied up, linked deep
    _pax(top, "hardlink", "toplink", f"{deep}/top")            # ... and near the root
    _pax(top, "file", f"{deep}/.wh.gone")
    _pax(top, "file", f"{deep}/d/.wh..wh..opq")
    _pax(top, "file", f"{deep}/d/new", data=b"new")
    raws = [base.bytes(), top.bytes()]
    paths = PATHS if resolver == "openat2" else ("dir", "overlay-mount", "store-copy")
    results = run_paths(g.dest, raws, paths)
    tree = assert_agree(results, context=describe(raws))
    g.check()
    physical = "/".join(["a"] * (6 * LEVELS))
    assert len(physical) > 4096
    for i in range(5):
        assert tree.entries["/".join(["a"] * (6 * LEVELS - UPS)) + f"/e{i}"].type == "file"
    for name, want in (("upper", "up"), ("hl", "linked"), ("d/new", "new"), ("top", "top")):
        e = tree.entries[f"{physical}/{name}"]
        assert e.type == "file" and e.size == len(want), (name, e)
    assert f"{physical}/gone" not in tree.entries and f"{physical}/d/x" not in tree.entries
    assert frozenset({f"{physical}/hl", f"{physical}/linked"}) in tree.links
    assert frozenset({"toplink", f"{physical}/top"}) in tree.links
    if resolver != "openat2":
        return
    root = g.dest / "store"
    r = lamina(root, "fsck", "--json", check=False)
    assert r.returncode == 0 and json.loads(r.stdout)["findings"] == [], r.stdout + r.stderr
    lamina(root, "config", "set", "keep-blobs", "false")
    lamina(root, "unpack", "img:1", g.dest / "again")           # compacts the image: sidecars, no blobs
    # img:2 (the store-relink path) lists the same two blobs over an empty layer: they are
    # dropped only with a sidecar at each of the four places the store extracted them
    assert len(list(root.glob("snapshots/*/tarsplit.lz4"))) == 4
    lamina(root, "save", "img:1", "-o", g.dest / "saved.tar")   # rebuilt from snapshot + sidecar
    r = lamina(root, "fsck", "--json", check=False)              # which rebuilds every compact layer too
    assert r.returncode == 0 and json.loads(r.stdout)["checked"]["sidecars"] == 4, r.stdout + r.stderr
    for ref in ("img:1", "img:2"):
        lamina(root, "rmi", ref)
    lamina(root, "image", "prune", "-a", "-f")
    r = lamina(root, "fsck", "--json", check=False)
    assert r.returncode == 0 and json.loads(r.stdout)["findings"] == [], r.stdout + r.stderr
    left = [n for n in os.listdir(root / "snapshots") if not n.startswith(".")]
    assert left == [], left
    g.check()


def _traced_apply(strace, calls, tmp_path, top, lowers):
    """(how many of the syscalls ``calls`` it made, its dir): the layer ``top`` applied in the
    overlay format over ``lowers`` in a child traced by strace."""
    top_p, dest, trace = tmp_path / "top.tar", tmp_path / "top", tmp_path / "trace"
    top_p.write_bytes(top.bytes())
    dest.mkdir()
    script = ("import sys, lamina; lamina.apply_layer(sys.argv[1], sys.argv[2], format='overlay', "
              "lower_dirs=sys.argv[3:])")
    subprocess.run([strace, "-f", "-qq", "-e", f"trace={calls}", "-o", trace, sys.executable, "-c",
                    script, top_p, dest, *lowers], check=True, cwd="/")
    return sum(1 for line in open(trace) if "(" in line), dest


def test_copying_up_from_a_deep_lower_layer_opens_each_directory_a_few_times(tmp_path):
    """A hardlink to a lower file makes the overlay format look for the file's other names in
    that layer (a flat unpack keeps them one inode), walking the whole lower tree: each
    directory was opened by its path from the layer's root, one openat per component, so a
    chain 1,200 levels deep cost 720k opens (the whole load of the image above, 7 s).  Counted
    in syscalls."""
    require_root()
    strace = require_tool("strace")
    base, deep = deep_chain(3)
    _pax(base, "file", f"{deep}/linked", data=b"linked")
    _pax(base, "hardlink", f"{deep}/other", f"{deep}/linked")
    lowers = overlay_layers(tmp_path, [base])
    top = Tar()
    _pax(top, "hardlink", "hl", f"{deep}/linked")
    _pax(top, "file", f"{deep}/up", data=b"up")
    opens, dest = _traced_apply(strace, "openat,openat2", tmp_path, top, lowers)
    depth = 3 * LEVELS
    assert opens < 30 * depth, f"{opens} opens for a chain {depth} deep"  # 17k; was 740k
    # the layer's own copy: the chain of directories, the file and its lower names on one inode
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        top_link = os.stat("hl", dir_fd=fd, follow_symlinks=False)
        for c in ["a"] * depth:
            nfd = os.open(c, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        names = sorted(os.listdir(fd))
        inodes = {os.stat(n, dir_fd=fd, follow_symlinks=False).st_ino for n in ("linked", "other")}
    finally:
        os.close(fd)
    assert names == ["linked", "other", "up"], names
    assert inodes == {top_link.st_ino}, (inodes, top_link.st_ino)


def test_a_symlink_of_many_dotdots_deep_down_costs_no_walk_per_dotdot(tmp_path):
    """The overlay format resolves a path through the layers below itself; each ".." walked the
    whole path again from every layer's root, so a symlink ``../../..`` (1,300 of them) at the
    bottom of a 2,400-level chain cost 16 s per entry through it (20 entries: 322 s, where a flat
    unpack took 1 s).  ".." now goes up through the directory fds the walk holds.  Counted in
    syscalls (the O_NOFOLLOW walk of the resolver, ``_walk_in_root``, went the same way)."""
    require_root()
    strace = require_tool("strace")
    base, deep = deep_chain(3)
    ups = 400
    _pax(base, "symlink", f"{deep}/up", "/".join([".."] * ups))
    lowers = overlay_layers(tmp_path, [base])
    top = Tar()
    for i in range(3):
        _pax(top, "file", f"{deep}/up/e{i}", data=b"e")
    calls, dest = _traced_apply(strace, "openat,newfstatat", tmp_path, top, lowers)
    depth = 3 * LEVELS
    assert calls < 40 * depth, f"{calls} opens and stats for 3 entries through {ups} '..' at depth {depth}"
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for c in ["a"] * (depth - ups):
            nfd = os.open(c, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        names = sorted(os.listdir(fd))
    finally:
        os.close(fd)
    assert names == ["e0", "e1", "e2"], names  # the layer copies up only what it writes in


def _limited_to(fds):
    """A preexec_fn: at most ``fds`` open files, hard limit too (the CLI raises its soft limit to
    the hard one)."""
    import resource
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (fds, fds))


def test_a_store_holds_and_checks_a_tree_deeper_than_its_open_file_limit(tmp_path):
    """1,200 directory levels (through the image's own symlinks; LAMINA_DEEP_LINKS=6: 2,400)
    under a limit of 256 open files.  A flat unpack and the overlay format hold a few fds
    whatever the depth; the store did not: measuring a snapshot's size (tree_usage) and its
    dedup pass each kept a directory open per level ("layer 1 of 2: storing its snapshot
    failed: Too many open files"), and so did the look for a lower file's other names when the
    upper layer hardlinks it (_multiply_linked: in the store a lower file shares its inode with
    the store's object), so fsck of a store filled without the limit called the layer bad
    ("does not extract: Too many open files") and said to run --repair.  Each now keeps a few
    levels open and opens the ones above again through ".." on the way back up."""
    require_root()
    links = int(os.environ.get("LAMINA_DEEP_LINKS", "3"))   # 3: 1,200 levels (about 30 s)
    base, deep = deep_chain(links)
    _pax(base, "file", f"{deep}/linked", data=b"linked")
    top = Tar()
    _pax(top, "hardlink", f"{deep}/hl", f"{deep}/linked")     # looks for linked's other names below
    _pax(top, "file", f"{deep}/upper", data=b"up")
    layout = write_image(tmp_path / "layout", [base.bytes(), top.bytes()])
    limited = _limited_to(256)
    for root, limit in ((tmp_path / "limited", limited), (tmp_path / "unlimited", None)):
        r = lamina(root, "copy", f"oci:{layout}:img", "img:1", check=False, preexec_fn=limit)
        assert r.returncode == 0, r.stderr[-2000:]
        r = lamina(root, "fsck", "--json", check=False, preexec_fn=limited)
        assert r.returncode == 0 and json.loads(r.stdout)["findings"] == [], (r.stdout + r.stderr)[-2000:]
    # under a limit too low for the layer's extraction, fsck cannot check it: it says so, and
    # calls nothing bad (it said "error: ... does not extract: Too many open files", exit 1)
    r = lamina(tmp_path / "limited", "fsck", "--json", check=False, preexec_fn=_limited_to(32))
    findings = json.loads(r.stdout)["findings"] if r.stdout.startswith("{") else r.stdout + r.stderr
    assert r.returncode == 0 and [(f["severity"], f["kind"]) for f in findings] == \
        [("warning", "unverifiable-snapshot")], findings
    assert "raise the open-file limit" in findings[0]["message"], findings
    r = lamina(tmp_path / "limited", "unpack", "img:1", tmp_path / "rootfs", check=False, preexec_fn=limited)
    assert r.returncode == 0, r.stderr[-2000:]
    physical = "/".join(["a"] * (links * LEVELS))
    fd = os.open(tmp_path / "rootfs", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for c in physical.split("/"):
            nfd = os.open(c, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        hl, linked = (os.stat(n, dir_fd=fd, follow_symlinks=False) for n in ("hl", "linked"))
    finally:
        os.close(fd)
    assert (hl.st_ino, hl.st_nlink) == (linked.st_ino, 2)


def test_the_size_of_a_tree_deeper_than_the_open_file_limit_is_dus(tmp_path):
    """tree_usage (each snapshot's size and inodes in its meta.json) closes the directories
    above the deepest few and opens them again through ".." on the way back up, where their
    listings go on: a comb 300 levels deep (at each level a file, a hardlinked pair, a side
    directory listed before or after the way down) measured under a limit of 40 open files is
    what GNU du says (every entry counted once, nothing twice after a listing went on)."""
    du = require_tool("du")
    root = tmp_path / "comb"
    d = root
    d.mkdir()
    for level in range(300):
        (d / f"side{level % 7}").mkdir()
        (d / f"side{level % 7}" / "f").write_bytes(b"s" * (level % 5000))
        (d / "file").write_bytes(b"x" * (4096 * (level % 3) + 1))
        os.link(d / "file", d / "twin")
        (d / "z").mkdir()
        d = d / "z"
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40));"
            "from lamina.store.fsutil import disk_usage; print(*disk_usage(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", code, root], check=True, capture_output=True, text=True, cwd="/")
    size, inodes = map(int, out.stdout.split())
    want_size = int(subprocess.run([du, "-sB1", root], check=True, capture_output=True, text=True).stdout.split()[0])
    want_inodes = int(subprocess.run([du, "-s", "--inodes", root], check=True, capture_output=True,
                                     text=True).stdout.split()[0])
    assert (size, inodes) == (want_size, want_inodes)


def test_a_bundles_passwd_deeper_than_the_open_file_limit_is_read(tmp_path):
    """A bundle resolves its config's User in the rootfs' /etc/passwd, walking it inside the
    root one directory fd at a time; every directory on the way stayed open (for ".."), so an
    /etc that is a symlink 1,200 levels down (and a ".." back up on the way) failed
    under a limit of 256 open files ("cannot read the image's /etc/passwd ...: Too many open
    files") where umoci and runc read it."""
    root = tmp_path / "rootfs"
    d = root
    d.mkdir()
    for _ in range(1200):   # (os.makedirs recurses per level)
        d = d / "a"
        d.mkdir()
    (d / "b").mkdir()
    (d / "b" / "passwd").write_text("web:x:33:33::/srv:/bin/sh\n")
    os.symlink("/".join(["a"] * 1200) + "/b/../b", root / "etc")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256));"
            "from lamina.store.bundles import _read_in_root; sys.stdout.write(_read_in_root(sys.argv[1], "
            "'etc/passwd').decode())")
    r = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0 and r.stdout == "web:x:33:33::/srv:/bin/sh\n", r.stderr[-1000:]
