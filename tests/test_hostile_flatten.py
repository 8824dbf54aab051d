"""Hostile images aimed at the flatten, materialize, mount and store paths, through every path.

An attacker who knows lamina's store lays layers out as snapshots/<chainID>/fs under one root
can aim a layer's names at the store's own files through a lower layer's symlink, give a
config the diffID of a layer the store holds over a blob of other content, or repeat and
reorder diffIDs; CPython's tarfile filter tests (CVE-2025-4517 and its kin) climb out through
symlink chains longer than PATH_MAX and hardlinks through them.  Each image runs through every
path of everypath.py: one tree or one kind of lamina error everywhere, nothing written outside
the work directory, and the store checking clean (fsck) after it, or after ``copy`` refused it.
"""
from __future__ import annotations

import os
import struct

import pytest

from everypath import assert_agree, describe, run_paths
from tarbuild import Tar

CAP = struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0)  # v2 vfs_cap_data: cap_net_bind_service


def _raw(tars):
    return [t if isinstance(t, (bytes, tuple)) else t.bytes() for t in tars]


def _store_clean(root):
    """The store at ``root`` has no error fsck finds."""
    from lamina.store import Store
    store = Store(root)
    report = store.fsck()
    assert report.ok, [f"{f.kind} {f.subject}: {f.message}" for f in report.errors]
    return store


def agree(g, tars, **kw):
    raws = _raw(tars)
    results = run_paths(g.dest, raws, **kw)
    tree = assert_agree(results, context=describe([r for r in raws if isinstance(r, bytes)]))
    _store_clean(g.dest / "store")
    g.check()
    return tree


def refused_everywhere(g, tars, error, *words, **kw):
    """Every path refuses the image with ``error`` saying each of ``words``, and so does
    ``copy`` into a store, which is left checking clean with no image named.  (The store paths
    of run_paths name the image before its snapshots are made, as the Store API has it, so
    their store keeps a broken image: it is the verbs' store that must be clean.)"""
    from lamina import errors
    from lamina.store import Store
    from lamina.transports import copy
    raws = _raw(tars)
    results = run_paths(g.dest, raws, **kw)
    for path, r in results.items():
        assert isinstance(r, getattr(errors, error)), f"{path}: {r!r}"
        assert all(w in str(r) for w in words), f"{path}: {r}"
    store = Store(g.dest / "verb-store")
    with pytest.raises(getattr(errors, error)):
        copy(f"oci:{g.dest / 'layout'}:img", "x:1", store=store)
    assert list(_store_clean(g.dest / "verb-store").images()) == []
    g.check()
    return results


def _pax(t, kind, name, target=None, data=b"", **kw):
    """An entry whose name (and link target) only a PAX record can carry."""
    t.pax([("path", name)] + ([("linkpath", target)] if target is not None else []))
    return {"dir": lambda: t.dir("x", **kw), "symlink": lambda: t.symlink("x", "y", **kw),
            "hardlink": lambda: t.hardlink("x", "y", **kw), "file": lambda: t.file("x", data, **kw)}[kind]()


# --- a config naming a layer the store holds, over a blob of other content, by the Store API ------

def test_a_config_naming_a_held_layer_over_another_blob_is_refused_through_the_store_api(g):
    """copy, load and pull check a layer blob whose snapshot the store holds already (made from
    another blob) against its diffID before they name the image; the Store API they are built
    on did not: ingest, put_blob, add_image and snapshots_for named the image and handed it the
    held layer's tree without its own blob ever being read (store-copy, -link and -mount gave
    the base's tree where every other path refuses).  add_image now checks first, so every
    caller does."""
    from lamina import errors
    from lamina.store import Store
    from lamina.store.materialize import materialize
    from ocibuild import OCI_LAYER_GZIP, Shipped, gz, sha256
    from everypath import write_image
    from storekit import fingerprint
    from verbkit import load_layout
    base = Tar().dir("etc").file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n").bytes()
    other = Tar().dir("etc").file("etc/passwd", b"root::0:0::/root:/bin/sh\n").bytes()
    liar = [Shipped(gz(other), base, OCI_LAYER_GZIP)]  # its blob is `other`, its config says `base`
    for first in (True, False):
        results = run_paths(g.dest / f"neighbour-{'first' if first else 'after'}", liar, neighbour=[base],
                            neighbour_first=first)
        for path, r in results.items():
            assert isinstance(r, errors.DigestMismatchError) and "diffID" in str(r), f"{path}: {r!r}"

    root = g.dest / "store"
    store = Store(root)
    load_layout(store, write_image(g.dest / "base", [base]), "img", "base:1")
    before = fingerprint(root)
    with pytest.raises(errors.DigestMismatchError) as info:
        load_layout(store, write_image(g.dest / "liar", liar), "img", "liar:1")
    # named by its place, as the verbs name it (it was "layer sha256:…: diffID …")
    assert str(info.value).startswith(f"layer 1 of 1 ({sha256(gz(other))}): diffID"), str(info.value)
    store = Store(root)
    after = fingerprint(root)
    # the liar's blobs were put before add_image refused it: left for gc, never named
    assert after["index"] == before["index"] and after["snapshots"] == before["snapshots"]
    with pytest.raises(errors.LaminaError):
        store.resolve("liar:1")
    _store_clean(root)
    materialize(store, "base:1", g.dest / "base-tree")
    assert (g.dest / "base-tree" / "etc" / "passwd").read_bytes() == b"root:x:0:0::/root:/bin/sh\n"


# --- the store's own files named through a lower layer's symlink ----------------------------------
# A snapshot's tree is ROOT/snapshots/<chainID>/fs: from it, '..' is the snapshot's directory (its
# meta.json), '../../..' the store root with index.json, oci-layout and lamina/config.json.

@pytest.mark.parametrize("target,lands", [("../../..", ""), ("/../../..", ""), ("..", ""),
                                          ("../../../lamina", "lamina/")])
def test_the_stores_own_files_named_through_a_lower_symlink_stay_in_the_image(g, target, lands):
    payload = b"PWNED"
    low = Tar().symlink("s", target).file("index.json", b"mine").dir("lamina")
    up = (Tar().file("s/index.json", payload).file("s/oci-layout", payload).file("s/config.json", payload)
          .file("s/meta.json", payload).hardlink("h-index", "s/index.json"))
    tree = agree(g, [low, up])
    # every '..' stops at the image's root: the names land there (or in its lamina/)
    for name in ("index.json", "oci-layout", "config.json", "meta.json"):
        assert (g.dest / "dir" / (lands + name)).read_bytes() == payload, name
    assert tree["h-index"].size == len(payload)
    from lamina.store import Store
    store = Store(g.dest / "store")
    # img:2 is store-relink's rebuild of the image
    assert sorted(n for img in store.images() for n in img.names) == ["docker.io/library/img:1",
                                                                       "docker.io/library/img:2"]
    for dirpath, _, files in os.walk(g.dest / "store"):
        if "/snapshots/" not in dirpath + "/" and "/objects/" not in dirpath + "/":
            for f in files:
                with open(os.path.join(dirpath, f), "rb") as fh:
                    assert fh.read() != payload, os.path.join(dirpath, f)


def test_a_lower_symlink_to_a_store_directory_the_image_lacks_is_dangling(g):
    refused_everywhere(g, [Tar().symlink("s", "../../../snapshots"), Tar().file("s/x/fs/f", b"x")],
                       "ExtractError", "entry 's/x/fs/f'", "dangling symlink")


# --- CPython's tarfile filter tests (3.12+, CVE-2025-4517 and its kin) ----------------------------

def _realpath_limit(flag):
    """test_realpath_limit_attack: a chain of symlinks to directories of long names whose
    expansion passes PATH_MAX, a link back up by as many '..', then names through it."""
    steps, comp = "abcdefghijklmnop", "d" * 237
    t, path = Tar(), ""
    for s in steps:
        _pax(t, "dir", os.path.join(path, comp), mode=0o777)
        _pax(t, "symlink", os.path.join(path, s), comp)
        path = os.path.join(path, comp)
    link = os.path.join(*steps, "l" * 254)
    _pax(t, "symlink", link, os.path.join(*[".."] * len(steps)))
    _pax(t, "symlink", "escape", os.path.join(link, ".."))
    if flag:
        t.hardlink("flaglink", "escape/flag").file("flaglink", b"overwrite")
    return t.file("escape/newfile", b"new")


CPYTHON = {
    # every name through the chain lands in the root: newfile beside the lower's flag, which the
    # hardlink names and the file of its name then replaces (the flag keeps its bytes)
    "realpath-limit": ([Tar().file("flag", b"orig"), _realpath_limit(True)],
                       {"flag": b"orig", "flaglink": b"overwrite", "newfile": b"new"}),
    "realpath-limit-no-flag": ([_realpath_limit(False)], {"newfile": b"new"}),
    "parent-symlink": ([Tar().symlink("current", ".").symlink("current/parent", "..").file("parent/evil", b"e")],
                       {"evil": b"e"}),
    "parent-symlink2": ([Tar().symlink("current", ".").symlink("current/parent", "..")
                         .symlink("parent/up", "..").file("parent/up/evil", b"e")], {"evil": b"e"}),
    "deep-symlink": ([Tar().dir("a/b/c").symlink("a/b/c/up", "../../../../../..").symlink("a/b/c/up2", "../../..")
                      .file("a/b/c/up/evil", b"e").file("a/b/c/up2/evil2", b"e2")], {"evil": b"e", "evil2": b"e2"}),
    "exfiltration-via-hardlink": ([Tar().file("etc/passwd", b"inside").hardlink("link", "../../../../etc/passwd")
                                   .file("link", b"overwrite")], {"etc/passwd": b"inside", "link": b"overwrite"}),
    "sneaky-hardlink-then-write": ([Tar().file("etc/passwd", b"in").symlink("a", ".").symlink("a/b", "..")
                                    .hardlink("boom", "a/b/etc/passwd").file("boom", b"over")],
                                   {"etc/passwd": b"in", "boom": b"over"}),
    "link-fallback-normalizes": ([Tar().dir("dir").file("target", b"t").hardlink("dir/link", "dir/../target")],
                                 {"dir/link": b"t"}),
}


@pytest.mark.parametrize("case", sorted(CPYTHON))
def test_cpython_filter_attacks_stay_in_the_root(g, case):
    tars, files = CPYTHON[case]
    tree = agree(g, tars)
    for name, data in files.items():
        assert tree[name].type == "file" and (g.dest / "dir" / name).read_bytes() == data, (name, tree[name])


@pytest.mark.parametrize("tars", [
    [Tar().symlink("a", ".").symlink("a/b", "..").hardlink("boom", "a/b/../../../../etc/passwd")],
    [Tar().file("t", b"t").symlink("s", "../../../etc").hardlink("s/passwd2", "t")],
], ids=["sneaky-hardlink", "hardlink-named-through-a-dangling-symlink"])
def test_cpython_filter_attacks_that_name_nothing_are_refused(g, tars):
    refused_everywhere(g, tars, "LaminaError", "entry '")


# --- long chains and loops ------------------------------------------------------------------------

def test_a_hardlink_chain_ten_thousand_long_is_one_file_everywhere(g):
    """Each hardlink names the one before it; one layer holds the file and the chain, or the
    chain sits over the file in a layer below (store-relink and the top-down scan follow the
    chain through the layers)."""
    chain = Tar()
    for i in range(1, 10_000):
        chain.hardlink(f"h{i}", f"h{i - 1}")
    tree = agree(g, [Tar().file("h0", b"data"), chain])
    assert len(tree.entries) == 10_000 and len({e.sha256 for e in tree.entries.values()}) == 1
    assert any(len(group) == 10_000 for group in tree.links), "the chain is one inode"


@pytest.mark.parametrize("tars,where", [
    ([Tar().symlink("loop", "loop").file("f", b"x").hardlink("h", "loop/f")], "'loop'"),
    ([Tar().symlink("a", "b").symlink("b", "a"), Tar().hardlink("h", "a/x")], "'a'"),
], ids=["self-loop-same-layer", "two-link-loop-below"])
def test_a_symlink_loop_reached_by_a_later_hardlink_is_refused_naming_it(g, tars, where):
    refused_everywhere(g, tars, "ExtractError", "entry 'h'", f"too many levels of symlinks in {where}")


def test_a_hardlink_to_a_symlink_loop_itself_is_a_link_to_the_symlink(g):
    tree = agree(g, [Tar().symlink("loop", "loop").hardlink("h", "loop")])
    assert tree["h"].type == "symlink" and tree["h"].target == "loop"


# --- xattrs on symlinks and devices ---------------------------------------------------------------

def _nodes(records):
    return (Tar().pax(records).symlink("s", "d").pax(records).chardev("c", 1, 3).pax(records).blockdev("b", 7, 0)
            .pax(records).fifo("p").pax(records).symlink("d/l", "../e"))


def test_overlay_xattrs_on_symlinks_and_devices_mean_nothing(g):
    """trusted.overlay.* (and user.overlay.*) on a symlink, a device or a fifo could make an
    overlay mount read it as a whiteout, a redirect or a metacopy: dropped on every path, on
    the nodes and on what later hardlinks to them make."""
    x = [(f"SCHILY.xattr.{k}", v) for k, v in [
        ("trusted.overlay.opaque", b"y"), ("trusted.overlay.redirect", b"/e"), ("trusted.overlay.whiteout", b""),
        ("trusted.overlay.metacopy", b""), ("trusted.overlay.origin", b"\x00\xfb\x01"),
        ("trusted.overlay.overlay.opaque", b"y"), ("user.overlay.opaque", b"y")]]
    tree = agree(g, [Tar().dir("d").file("d/f", b"f").file("e", b"E"), _nodes(x),
                     Tar().hardlink("hs", "s").hardlink("hc", "c")])
    assert {"d/f", "e", "s", "c", "b", "p", "d/l", "hs", "hc"} <= set(tree.entries)
    assert not any("overlay" in k for e in tree.entries.values() for k, _ in e.xattrs), tree


def test_a_capability_on_symlinks_and_devices_agrees(g):
    cap = [("SCHILY.xattr.security.capability", CAP)]
    tree = agree(g, [Tar().dir("d").file("e", b"E"), _nodes(cap), Tar().hardlink("hs", "s").hardlink("hc", "c")])
    has = {p for p, e in tree.entries.items() if ("security.capability", CAP) in tuple(e.xattrs)}
    assert {"c", "b", "hc"} <= has and not {"d", "e"} & has, has


# --- the root directory listed shut or owned by another user --------------------------------------

@pytest.mark.parametrize("mode,uid", [(0o000, 0), (0o000, 1234), (0o100, 65534), (0o1777, 1234)])
def test_the_root_listed_shut_or_of_another_owner_then_written_under(g, mode, uid):
    import test_rootless_paths as rootless
    low = Tar().dir("./", mode=mode, uid=uid, gid=uid).file("f", b"f").dir("d", mode=0o000, uid=uid).file("d/g", b"g")
    up = Tar().dir(".", mode=mode, uid=uid, gid=uid).file("h", b"h").whiteout("f").file("d/i", b"i")
    tree = agree(g, [low, up], root=True)
    assert sorted(p for p in tree.entries if p != ".") == ["d", "d/g", "d/i", "h"]
    root = tree.entries["."]
    assert (root.mode, root.uid, root.gid) == (mode, uid, uid), root
    trees, out = rootless.run_rootless([low.bytes(), up.bytes()])
    assert sorted(rootless.assert_all_agree(trees, out).paths()) == ["d", "d/g", "d/i", "h"]


# --- names at the kernel's limits -----------------------------------------------------------------

def _path_of(total, comp=200):
    parts, n = [], 0
    while n + comp + 1 < total:
        parts.append("p" * comp)
        n += comp + 1
    return "/".join(parts + ["f" * (total - n)])


@pytest.mark.parametrize("total", [4095, 4096])
def test_a_name_of_path_max_bytes_is_extracted_everywhere(g, total):
    t = Tar()
    _pax(t, "file", _path_of(total), data=b"x")
    tree = agree(g, [t])
    assert _path_of(total) in tree.entries


def test_a_name_past_path_max_is_refused_naming_it(g):
    t = Tar()
    _pax(t, "file", _path_of(4097), data=b"x")
    refused_everywhere(g, [t], "LimitExceededError", "entry 'ppppp")


def test_a_component_of_name_max_bytes_is_extracted_everywhere(g):
    t = Tar()
    _pax(t, "file", "d/" + "c" * 255, data=b"x")
    assert "d/" + "c" * 255 in agree(g, [t]).entries


def test_a_component_past_name_max_is_refused_naming_it(g):
    t = Tar()
    _pax(t, "file", "d/" + "c" * 256, data=b"x")
    refused_everywhere(g, [t], "ExtractError", "entry 'd/" + "c" * 256 + "'")


def test_a_symlink_target_past_path_max_is_refused_naming_the_entry(g):
    t = Tar()
    _pax(t, "symlink", "s", "x/" * 2100)
    refused_everywhere(g, [t], "ExtractError", "entry 's'", "File name too long")


def _hardlink_layer(target):
    t = Tar()
    _pax(t, "hardlink", "h", target)
    return t


@pytest.mark.parametrize("target", ["c" * 256, "d/" + "c" * 256, "d/" + "c" * 256 + "/f", "c" * 300 + "/d/f"],
                         ids=["a-name", "a-name-in-a-dir", "a-dir-on-the-way", "a-dir-from-the-root"])
@pytest.mark.parametrize("hidden", [False, True], ids=["written", "hidden-by-an-upper-layer"])
def test_a_hardlink_to_a_name_past_name_max_is_a_target_not_found_everywhere(g, target, hidden):
    """No layer can hold a name longer than NAME_MAX (its entry is refused), so a hardlink to
    one names nothing there, like any other missing target.  The dir format said "hardlink
    failed: File name too long (unpacking into DEST)", as if DEST's filesystem had refused the
    link, and the overlay format "cannot open 'd/ccc…'" for a directory on the way (each the
    other's wording for the other spelling): one image, two kinds of error."""
    layers = [Tar().dir("d").file("d/f", b"x" * 4000), _hardlink_layer(target)]
    if hidden:  # skipped top-down (dir-topdown): its target must still be there
        layers.append(Tar().whiteout("h"))
    refused_everywhere(g, layers, "InvalidArchiveError", f"entry 'h': hardlink target '{target[:20]}",
                       "not found in the layer or below")


@pytest.mark.parametrize("target", ["d", "d/.", "e/../d", "/d/"])
@pytest.mark.parametrize("same_layer", [False, True], ids=["in-a-lower-layer", "in-the-same-layer"])
def test_a_hardlink_to_a_directory_names_its_target_on_every_path(g, target, same_layer):
    """The overlay format's copy-up of a lower directory said "hardlink target is a directory"
    without the target, where the dir format names it: the store paths and the overlay
    format, not the dir format, left the user to find which link of the entry it was."""
    lower = Tar().dir("d").file("d/f", b"x").dir("e")
    link = _hardlink_layer(target)
    layers = [Tar().raw(lower.bytes(end=False)).raw(link.bytes())] if same_layer else [lower, link]
    refused_everywhere(g, layers, "InvalidArchiveError", f"entry 'h': hardlink target '{target}' is a directory")


# --- whiteouts and opaque markers spelled at the root ---------------------------------------------

ROOT_SPELLINGS = {
    # an opaque marker of the root, however spelled: everything below is hidden
    **{n: "opaque" for n in (".wh..wh..opq", "./.wh..wh..opq", "/.wh..wh..opq", "a/../.wh..wh..opq",
                              "../.wh..wh..opq", ".wh..wh..opq/")},
    # a whiteout of '', '.' or '..'
    **{n: ("InvalidWhiteoutError", "whiteout does not name an entry") for n in (".wh.", ".wh..", ".wh...", "a/.wh..")},
    # a whiteout of a name that is not there: nothing to hide, and not itself written
    ".wh..wh..wh..opq": "nothing",
}


@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
@pytest.mark.parametrize("name", sorted(ROOT_SPELLINGS))
def test_whiteouts_and_markers_spelled_at_the_root(g, name, kind):
    entry = {"file": lambda t: t.file(name, b""), "dir": lambda t: t.dir(name),
             "symlink": lambda t: t.symlink(name, "/")}[kind]
    low = Tar().dir("a").file("a/x", b"x").file("b", b"b")
    expect = ROOT_SPELLINGS[name]
    if isinstance(expect, tuple):
        refused_everywhere(g, [low, entry(Tar()).file("c", b"c")], expect[0], f"entry '{name.rstrip('/')}", expect[1])
        return
    tree = agree(g, [low, entry(Tar()).file("c", b"c")])
    assert sorted(tree.entries) == (["c"] if expect == "opaque" else ["a", "a/x", "b", "c"])


# --- an overlay-format DEST holding symlinks where the layer dirs go ------------------------------

@pytest.mark.parametrize("plant", ["layers", "layers/0", "mount-options"])
def test_an_overlay_dest_holding_a_symlink_where_lamina_writes_is_refused(g, plant):
    import lamina
    from lamina import errors
    from everypath import write_image
    src = f"oci:{write_image(g.dest / 'layout', [Tar().file('a', b'A').bytes(), Tar().file('b', b'B').bytes()])}:img"
    dest = g.dest / "ovl"
    (dest / plant).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(g.sentinel, dest / plant)
    with pytest.raises(errors.ExtractError, match="exists and is not empty"):
        lamina.unpack(src, dest, format="overlay")
    assert os.readlink(dest / plant) == os.fspath(g.sentinel)
    g.check()


# --- diffIDs repeated and reordered over shared blobs ---------------------------------------------

def _diffid_cases():
    import gzip
    from ocibuild import OCI_LAYER, OCI_LAYER_GZIP, Shipped, gz
    a = Tar().file("a", b"A").bytes()
    b = Tar().file("b", b"B").whiteout("a").bytes()
    s = lambda blob, tar, mt=OCI_LAYER_GZIP: Shipped(blob, tar, mt)  # noqa: E731
    return {
        "reordered": ([s(gz(a), b), s(gz(b), a)], None),
        "one-blob-two-diffids": ([s(gz(a), a), s(gz(a), b)], None),
        "two-blobs-one-diffid": ([s(gz(a), a), s(gz(b), a)], None),
        "one-tar-in-three-blobs": ([s(gzip.compress(a, 1, mtime=0), a), s(gzip.compress(a, 9, mtime=0), a),
                                    s(a, a, OCI_LAYER)], ["a"]),
        "a-layer-again-over-its-whiteout": ([a, b, a], ["a", "b"]),
    }


@pytest.mark.parametrize("case", sorted(_diffid_cases()))
def test_diffids_repeated_or_reordered_over_shared_blobs(g, case):
    tars, names = _diffid_cases()[case]
    if names is None:
        results = refused_everywhere(g, tars, "DigestMismatchError", "diffID (uncompressed tar): digest mismatch")
        if case == "reordered":
            # both layers are bad, and every path names the lowest: top-down unpack (which
            # reads the small upper layer ahead) named layer 2, the others layer 1; and the
            # store paths (the Store API) its digest alone
            from ocibuild import sha256
            first, second = (sha256(t.blob) for t in tars)
            for path, r in results.items():
                assert str(r).startswith(f"layer 1 of 2 ({first}): diffID") and second not in str(r), f"{path}: {r}"
    else:
        assert sorted(agree(g, tars).entries) == names
