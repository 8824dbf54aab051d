"""File-level sharing in the store (store/objects.py): a rebuilt image shares its unchanged files.

Oracles: the real CLI in subprocesses (copy, fsck, image prune, system df, config, unpack),
inode numbers on disk, the PyPI ``blake3`` package for the native hash, and fsck's own
comparison of every snapshot with a fresh extraction of its layer.
"""
from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import blake3
import pytest

import ocibuild
from tarbuild import tarfile_bytes, ti
from verbkit import lamina_subprocess

MTIME = ocibuild.MTIME


def _files(n, seed, size=20_000):
    return {f"usr/share/pkg{seed}/f{i:03d}": (f"{seed}:{i}:".encode() * (size // 8))[:size] for i in range(n)}


def _layer(files, extra=()):
    """A tar of regular files (sorted), then ``extra`` (TarInfo, data) members."""
    members = [(ti(name), data) for name, data in sorted(files.items())]
    return tarfile_bytes(members + list(extra))


def _special_members(mtime=MTIME):
    """A layer hardlink pair, a setuid binary and a file with an xattr, all with shareable content."""
    suid = ti("usr/bin/su", mode=0o4755, mtime=mtime)
    pair = ti("usr/bin/pair-a", mtime=mtime)
    link = ti("usr/bin/pair-b", tarfile.LNKTYPE, linkname="usr/bin/pair-a")
    xattr = ti("usr/bin/capped", mtime=mtime, pax_headers={"SCHILY.xattr.user.note": "hello"})
    return [(suid, b"setuid body" * 100), (pair, b"pair body" * 100), (link, None), (xattr, b"xattr body" * 100)]


BASE = _files(40, "base")
APP = _files(30, "app")


def build_images(layout_dir):
    """Image "a" and its rebuild "b": every layer changed in one file, so every digest differs.

    b also has one file whose content is unchanged but whose mtime moved (a rebuild touched it).
    """
    lay = ocibuild.Layout(layout_dir)
    base_b = dict(BASE, **{"usr/share/pkgbase/f000": b"patched security fix"})
    app_b = dict(APP, **{"usr/share/pkgapp/f000": b"new app build"})
    layers = {
        "a": [_layer(BASE, _special_members()), _layer(APP)],
        "b": [_layer(base_b, _special_members()),
              _layer(app_b, [(ti("usr/share/touched", mtime=MTIME + 60), APP["usr/share/pkgapp/f001"])])],
    }
    for ref, tars in layers.items():
        lay.image_of_tars(tars, ref)
    return lay


def _chains(root, ref):
    out = lamina_subprocess(root, "inspect", ref).stdout
    diff_ids = json.loads(out)[0]["RootFS"]["Layers"]
    from lamina.store.image import chain_ids
    return chain_ids(diff_ids)


def _fs(root, chain):
    return os.path.join(root, "snapshots", chain.split(":")[1], "fs")


def _ino(root, chain, rel):
    return os.lstat(os.path.join(_fs(root, chain), rel)).st_ino


def _fsck_clean(root):
    proc = lamina_subprocess(root, "fsck", "--json", check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["findings"] == [], report["findings"]
    return report


@pytest.fixture
def images(tmp_path):
    build_images(tmp_path / "layout")
    return tmp_path / "layout"


def _copy(root, layout, ref):
    lamina_subprocess(root, "copy", f"oci:{layout}:{ref}", f"{ref}:1")


def _store_with_a_and_b(tmp_path, images):
    """A store holding image a and its rebuild b; (root, a's chainIDs)."""
    root = tmp_path / "root"
    _copy(root, images, "a")
    _copy(root, images, "b")
    return root, _chains(root, "a:1")


def test_native_blake3_matches_the_reference(tmp_path):
    from lamina import _objects
    for n in (0, 1, 1024, 1025, 64 << 10, (1 << 20) + 3, 3 << 20):
        data = os.urandom(n)
        path = tmp_path / "f"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.lseek(fd, 7, os.SEEK_SET)  # hash_fd reads from offset 0 whatever the fd's offset
            assert _objects.hash_fd(fd) == (blake3.blake3(data).hexdigest(), n)
        finally:
            os.close(fd)
        assert _objects.hash_bytes(data) == blake3.blake3(data).hexdigest()


def test_extractor_hashes_each_file_as_it_writes_it(tmp_path):
    """hash_files_into: every regular file written gets a second name <blake3>-<n> (-x<n>: xattrs)."""
    from lamina.layer import apply_layer
    from tarvectors import archive, sparse_pax_10
    big = os.urandom((3 << 20) + 5)  # spans many feed() chunks
    raw = tarfile_bytes([
        (ti("big"), big), (ti("empty"), b""), (ti("dir/small"), b"small"),
        (ti("noted", pax_headers={"SCHILY.xattr.user.note": "hi"}), b"with an xattr"),
        (ti("replaced"), b"first version"), (ti("replaced"), b"second version"),
        (ti("twin", tarfile.LNKTYPE, linkname="dir/small"), None)])
    raw = raw[:-1024] + archive(sparse_pax_10("sparse", 1 << 20, [(500_000, b"z" * 100)]))
    dest, hashed = tmp_path / "fs", tmp_path / "hashed"
    stats = apply_layer(io.BytesIO(raw), os.fspath(dest), format="overlay", hash_files_into=os.fspath(hashed))
    assert stats.entries == 8
    held = {}
    for e in os.scandir(hashed):
        digest, _, seq = e.name.partition("-")
        held.setdefault(e.inode(), []).append((digest, seq))
    want = {"big": big, "empty": b"", "dir/small": b"small", "noted": b"with an xattr", "replaced": b"second version"}
    for rel, data in want.items():
        (digest, seq), = held.pop(os.lstat(dest / rel).st_ino)
        assert digest == blake3.blake3(data).hexdigest(), rel
        assert seq.startswith("x") == (rel == "noted"), (rel, seq)
    # the replaced first version: still named, so no later file can take its inode number
    [(digest, _)], = held.values()
    assert digest == blake3.blake3(b"first version").hexdigest()
    assert os.lstat(dest / "dir/small").st_nlink == 3  # small, its layer hardlink twin, its hashed name
    assert os.lstat(dest / "sparse").st_nlink == 1  # sparse files are hashed by the dedup pass instead


def _thread_names():
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:
            pass  # a thread that just ended
    return names


def test_the_extractor_hashes_large_writes_on_a_second_thread(tmp_path):
    """A large file's data is hashed by the extractor's hash thread while the extractor writes it
    (on two cores the hash no longer adds to the write on the copy's critical path, issue 9); the
    thread ends with the layer, and the names in hash_files_into are the files' blake3 as before.
    On main the extractor hashed inline: there was no such thread."""
    from lamina._extract import Extractor
    big, other = os.urandom((3 << 20) + 5), os.urandom(200_000)
    raw = tarfile_bytes([(ti("big"), big), (ti("small"), b"small"), (ti("other"), other)])
    dest, hashed = tmp_path / "fs", tmp_path / "hashed"
    dest.mkdir()
    hashed.mkdir()
    ex = Extractor(os.fspath(dest), format="overlay", hash_files_into=os.fspath(hashed))
    try:
        ex.feed(raw[:1 << 20])  # the header and the first MiB of big
        assert "lamina-blake3" in _thread_names()
        for off in range(1 << 20, len(raw), 1 << 20):
            ex.feed(raw[off:off + (1 << 20)])
        ex.finish()
        assert "lamina-blake3" not in _thread_names()
    finally:
        ex.close()
    names = {e.inode(): e.name.partition("-")[0] for e in os.scandir(hashed)}
    for rel, data in (("big", big), ("small", b"small"), ("other", other)):
        assert names[os.lstat(dest / rel).st_ino] == blake3.blake3(data).hexdigest(), rel


def test_dedup_uses_the_extractors_hashes_and_never_trusts_a_reused_name(tmp_path):
    """A copy-up (not hashed while written) that ends up alone at a path the layer wrote before is
    hashed by the pass itself: its object is named after its own content."""
    lay = ocibuild.Layout(tmp_path / "layout")
    lower = tarfile_bytes([(ti("lower"), b"content below")])
    upper = tarfile_bytes([
        (ti("p"), b"content above"),
        (ti("p", tarfile.LNKTYPE, linkname="lower"), None),  # p: the copied-up lower file
        (ti("lower"), b"lower replaced"),                      # p is now alone on the copy-up inode
        (ti("plain"), b"plain file")])
    lay.image_of_tars([lower, upper], "up")
    root = tmp_path / "root"
    _copy(root, tmp_path / "layout", "up")
    chain = _chains(root, "up:1")[1]
    sdir = os.path.dirname(_fs(root, chain))
    assert not os.path.exists(os.path.join(sdir, "hashed")), "the pass removes the extractor's names"
    from lamina.store.objects import read_file_list
    entries = {e.path: e for e in read_file_list(sdir)}
    for rel, data in (("p", b"content below"), ("lower", b"lower replaced"), ("plain", b"plain file")):
        with open(os.path.join(_fs(root, chain), rel), "rb") as f:
            assert f.read() == data
        assert entries[rel].blake3 == blake3.blake3(data).hexdigest(), rel
        assert entries[rel].object.startswith(entries[rel].blake3), rel
    _fsck_clean(root)


def test_native_object_names_match_the_python_metadata_key(tmp_path):
    """New objects are named natively in the common case; fsck recomputes every name from the
    inode in Python (metadata_key): odd modes, owners and mtimes (negative, sub-second) must agree."""
    members = [(ti(f"m/{i}", mode=mode, uid=uid, gid=gid, mtime=mtime), b"body %d" % i)
               for i, (mode, uid, gid, mtime) in enumerate([
                   (0o644, 0, 0, MTIME), (0o4755, 0, 0, MTIME), (0o2711, 1000, 50, 1), (0o1777, 65534, 65534, 0),
                   (0o600, 123456, 7, -86400), (0o755, 0, 0, 2_000_000_000)])]
    members.append((ti("m/subsecond", pax_headers={"mtime": "1700000000.123456789"}), b"subsecond"))
    lay = ocibuild.Layout(tmp_path / "layout")
    lay.image_of_tars([tarfile_bytes(members)], "odd")
    root = tmp_path / "root"
    _copy(root, tmp_path / "layout", "odd")
    from lamina.store.objects import read_file_list
    sdir = os.path.dirname(_fs(root, _chains(root, "odd:1")[0]))
    assert all(e.object is not None for e in read_file_list(sdir))
    assert _fsck_clean(root)["checked"]["objects"] == len(members)


def _objects_named_by_python_keys(tmp_path, members, tag):
    """Copy a one-layer image of ``members`` into a fresh store and check that each file's
    object is named by its blake3 and lamina.store.objects.metadata_key of its inode (the
    Python spelling fsck checks against): (store root, the snapshot's fs dir)."""
    from lamina.store.objects import metadata_key, read_file_list
    lay = ocibuild.Layout(tmp_path / "layout")
    lay.image_of_tars([tarfile_bytes(members)], tag)
    root = tmp_path / "root"
    _copy(root, tmp_path / "layout", tag)
    fs = _fs(root, _chains(root, f"{tag}:1")[0])
    entries = {e.path: e for e in read_file_list(os.path.dirname(fs))}
    for member, data in members:
        st = os.lstat(os.path.join(fs, member.name))
        assert entries[member.name].object == f"{blake3.blake3(data).hexdigest()}.{metadata_key(st, [])}", member.name
    return root, fs


def test_object_names_of_times_past_64_bit_nanoseconds_match_the_python_metadata_key(tmp_path):
    """A time after 2262 (or before 1678) is more nanoseconds than 64 bits hold: ext4 keeps one to
    2446, and clamps a later one there.  The native pass wrapped such a time, so it named the
    object after a key no one else computes: fsck reported every such file's object as changed
    behind lamina, and --repair dropped its name, to no end.  (Found by the differential fuzzer,
    seed 20400.)"""
    members = [(ti("far/" + name, pax_headers={"mtime": mtime}), b"far %d" % i)
               for i, (name, mtime) in enumerate([("2286", "10000000000"), ("2286-ns", "10000000000.000000001"),
                                                  ("clamped", "9223372036854775807"), ("2261", "9200000000"),
                                                  # the key's other spellings: below zero, whole or not
                                                  ("1969", "-1.5"), ("1969-ns", "-0.000000001"),
                                                  ("1969-s", "-1"), ("epoch-ns", "0.000000007")])]
    root, fs = _objects_named_by_python_keys(tmp_path, members, "far")
    assert os.lstat(os.path.join(fs, "far/2286")).st_mtime_ns == 10**19  # past 2**63: what the test is about
    _fsck_clean(root)


def test_native_metadata_keys_follow_every_change_of_mode_owner_and_mtime(tmp_path):
    """The native pass reuses a directory's last metadata key while mode, uid, gid and mtime stay
    the same: a change of any one of them, alone, between neighbours must give the file its own
    key (a cache that compares too little names an object after another file's metadata)."""
    from lamina.store.objects import metadata_key
    # each directory: two files that differ in one field only, so they are neighbours in any listing order
    changes = {"mode": dict(mode=0o600), "uid": dict(uid=7), "gid": dict(gid=8), "mtime": dict(mtime=MTIME + 1)}
    members = [(ti(f"{field}/{n}", **kw), b"%s %s" % (field.encode(), n.encode()))
               for field, change in changes.items() for n, kw in (("a", {}), ("b", change))]
    root, fs = _objects_named_by_python_keys(tmp_path, members, "keys")
    assert len({metadata_key(os.lstat(os.path.join(fs, m.name)), []) for m, _ in members}) == 5  # a + 4 others
    _fsck_clean(root)


def test_native_new_objects_and_claim_report_each_file(tmp_path):
    """new_objects (the pass's batch, without the GIL): a file alone with its hashed/ name gets its
    object name; a hardlinked one, a name whose inode changed and a missing name get None; with
    claim the hold is renamed, and an existing object is left alone (claim_objects: EEXIST)."""
    from lamina import _objects
    from lamina.store.objects import metadata_key
    fs, hashed, objs = tmp_path / "fs", tmp_path / "hashed", tmp_path / "blake3"
    for d in (fs, hashed, objs):
        d.mkdir()
    names, holds, digests = ["alone", "linked", "swapped", "gone", "exists"], [], []
    for n in names:
        (fs / n).write_bytes(n.encode())
        digests.append(blake3.blake3(n.encode()).hexdigest())
        holds.append(f"{digests[-1]}-{len(holds)}")
        os.link(fs / n, hashed / holds[-1])
    inos = [os.lstat(fs / n).st_ino for n in names]
    os.link(fs / "linked", tmp_path / "layer-hardlink")
    os.rename(fs / "swapped", tmp_path / "old")
    (fs / "swapped").write_bytes(b"swapped")
    os.unlink(fs / "gone")
    want = {n: f"{d}.{metadata_key(os.lstat(fs / n), [])}" for n, d in zip(names, digests) if (fs / n).exists()}
    os.makedirs(objs / want["exists"][:2], exist_ok=True)
    (objs / want["exists"][:2] / want["exists"]).write_bytes(b"made by another pass")
    dfd, hfd, bfd = (os.open(d, os.O_RDONLY | os.O_DIRECTORY) for d in (fs, hashed, objs))
    fan = _objects.FanOut(bfd)
    try:
        looked_up = _objects.new_objects(dfd, names, inos, hfd, holds, fan, False)
        assert looked_up == [(want["alone"], 5), None, None, None, None]
        assert sorted(os.listdir(hashed)) == sorted(holds), "looking up renames nothing"
        assert _objects.claim_objects(hfd, [holds[0], holds[4]], [want["alone"], want["exists"]], fan) == \
            [0, errno.EEXIST]
        assert os.lstat(objs / want["alone"][:2] / want["alone"]).st_ino == inos[0]
        os.rename(objs / want["alone"][:2] / want["alone"], hashed / holds[0])
        assert _objects.new_objects(dfd, names, inos, hfd, holds, fan, True)[0] == (want["alone"], 5)
        assert not (hashed / holds[0]).exists() and (objs / want["alone"][:2] / want["alone"]).exists()
        with pytest.raises(ValueError):
            fan.get("zz" + want["alone"][2:])
    finally:
        fan.close()
        for fd in (dfd, hfd, bfd):
            os.close(fd)


def test_the_pass_lists_every_regular_file_whatever_its_name(tmp_path):
    """The pass lists directories natively (DirScan): dot files, names like '..x', a name that is
    not UTF-8 and deep directories are shared and listed; symlinks, fifos and directories are not
    files; and the file list names each path as os.fsdecode would."""
    body = b"shared body" * 50
    names = [".hidden", "..x", "...", "d/e/f/deep", "caf\udce9", "d/plain"]
    members = [(ti(n), body) for n in names]
    members += [(ti("link", tarfile.SYMTYPE, linkname="d/plain"), None), (ti("fifo", tarfile.FIFOTYPE), None)]
    lay = ocibuild.Layout(tmp_path / "layout")
    lay.image_of_tars([tarfile_bytes(members, fmt=tarfile.GNU_FORMAT)], "names")
    root = tmp_path / "root"
    _copy(root, tmp_path / "layout", "names")
    from lamina.store.objects import read_file_list
    fs = _fs(root, _chains(root, "names:1")[0])
    entries = {e.path: e for e in read_file_list(os.path.dirname(fs))}
    assert set(entries) == set(names)
    assert os.path.exists(os.path.join(os.fsencode(fs), b"caf\xe9"))
    assert len({e.object for e in entries.values()}) == 1 and None not in {e.object for e in entries.values()}
    assert len({os.lstat(os.path.join(fs, n)).st_ino for n in names}) == 1
    _fsck_clean(root)


def test_the_file_list_is_what_json_dumps_writes_whatever_the_names(tmp_path):
    """The pass writes most rows natively (DirScan.take): the document must be byte for byte
    json.dumps' (ensure_ascii), rows in walk order, whatever a name holds (quotes, backslashes,
    control characters, DEL, non-ASCII, not UTF-8), and a duplicate within the layer keeps its
    place among the rows natively written around it."""
    import lz4.frame
    from lamina.store.objects import FILES_LIST, read_file_list
    odd = ['q"uote', "back\\slash", "new\nline", "tab\there", "del\x7f", "caf\u00e9", "bad\udcff", "emoji\U0001F600",
           "ctl\x01", "plain"]
    members = []
    for d in ("d", 'we"ird\\dir', "caf\u00e9"):
        members.append((ti(d + "/", tarfile.DIRTYPE), None))
        for i, n in enumerate(odd):
            members.append((ti(f"{d}/{n}"), f"{d} {i}".encode() * 10))
            members.append((ti(f"{d}/{n}-2"), f"{d} {i}".encode() * 10))   # a duplicate within the layer
    lay = ocibuild.Layout(tmp_path / "layout")
    lay.image_of_tars([tarfile_bytes(members, fmt=tarfile.GNU_FORMAT)], "odd")
    root = tmp_path / "root"
    _copy(root, tmp_path / "layout", "odd")
    fs = _fs(root, _chains(root, "odd:1")[0])
    sdir = os.path.dirname(fs)
    entries = read_file_list(sdir)
    with open(os.path.join(sdir, FILES_LIST), "rb") as f:
        raw = lz4.frame.decompress(f.read())
    assert raw == json.dumps({"version": 1, "files": [[e.path, e.blake3, e.size, e.object] for e in entries]}).encode()
    # one directory after the other, each in its listing's order, duplicates (swapped for the
    # inode planned first) in their places
    listed = [f"{d}/{n}" for d in os.listdir(fs) for n in os.listdir(os.path.join(fs, d))]
    assert sorted(listed) == sorted(m.name for m, body in members if body is not None)
    by_dir = {}
    for p in listed:
        by_dir.setdefault(os.path.dirname(p), []).append(p)
    assert [e.path for e in entries] == [p for d in dict.fromkeys(os.path.dirname(e.path) for e in entries)
                                         for p in by_dir[d]]
    assert len({e.object for e in entries}) == len(entries) // 2
    for e in entries:
        twin = e.path[:-2] if e.path.endswith("-2") else e.path + "-2"
        assert os.lstat(os.path.join(fs, e.path)).st_ino == os.lstat(os.path.join(fs, twin)).st_ino
    _fsck_clean(root)


def test_a_deferred_pass_writes_its_lists_before_the_sync(tmp_path):
    """In a pull the snapshot is a temp dir whose lists get no fsync of their own: they must be
    written before the sync that makes the snapshot durable (and already be complete then)."""
    from lamina.store.objects import FILES_LIST, OBJECTS_LIST, dedup_snapshot, read_file_list, snapshot_objects
    from lamina.store.paths import Paths
    paths = Paths(tmp_path / "root")
    paths.create()
    sdir = tmp_path / "root" / "snapshots" / ".tmp-lists"
    os.makedirs(sdir / "fs" / "d")
    for rel, body in (("d/a", b"one"), ("d/b", b"one"), ("c", b"two")):
        (sdir / "fs" / rel).write_bytes(body * 100)
        os.utime(sdir / "fs" / rel, ns=(MTIME * 10**9, MTIME * 10**9))
    at_sync = {}

    def sync():
        at_sync["files"] = {e.path: e.object for e in read_file_list(sdir)}
        at_sync["objects"] = snapshot_objects(sdir)
        assert (sdir / OBJECTS_LIST).exists() and (sdir / FILES_LIST).exists()

    stats = dedup_snapshot(paths, sdir, reflink=False, sync=sync)
    assert stats.new_objects == 2 and stats.linked == 1
    after = {e.path: e.object for e in read_file_list(sdir)}
    assert at_sync["files"] == after and set(after) == {"d/a", "d/b", "c"}
    assert at_sync["objects"] == set(after.values()) == snapshot_objects(sdir)
    assert os.lstat(sdir / "fs" / "d" / "a").st_ino == os.lstat(sdir / "fs" / "d" / "b").st_ino


def _objects_by_inode(root):
    out = {}
    top = os.path.join(root, "objects", "blake3")
    for fan in os.listdir(top):
        for name in os.listdir(os.path.join(top, fan)):
            out[os.lstat(os.path.join(top, fan, name)).st_ino] = name
    return out


def test_a_file_the_store_has_is_linked_to_its_object_not_written(tmp_path, images):
    """link_objects: a file whose payload and inode metadata the store has an object for is named
    by a link to that object as it extracts; anything that differs (mode, owner, mtime, xattrs)
    is written as usual; a hardlink entry naming a linked file gives it a private copy first;
    a later entry replacing a linked name never touches the object."""
    from lamina.layer import apply_layer
    root = tmp_path / "root"
    _copy(root, images, "a")
    objects = _objects_by_inode(root)
    body = BASE["usr/share/pkgbase/f001"]
    big = os.urandom((2 << 20) + 7)  # spans feed() chunks: hashed while written instead
    lay = ocibuild.Layout(tmp_path / "big")
    lay.image_of_tars([_layer({"big": big})], "big")
    _copy(root, tmp_path / "big", "big")
    objects = _objects_by_inode(root)
    raw = tarfile_bytes([
        (ti("same"), body),
        (ti("twice"), body),
        (ti("other-mode", mode=0o600), body),
        (ti("other-mtime", mtime=ti("x").mtime + 1), body),
        (ti("other-owner", uid=1000), body),
        (ti("with-xattr", pax_headers={"SCHILY.xattr.user.note": "x"}), body),
        (ti("replaced"), BASE["usr/share/pkgbase/f002"]),
        (ti("replaced"), b"another version"),
        (ti("pair"), BASE["usr/share/pkgbase/f003"]),
        (ti("pair-twin", tarfile.LNKTYPE, linkname="pair"), None),
        (ti("su", mode=0o4755, mtime=MTIME), b"setuid body" * 100),
        (ti("big"), big)])
    dest, hashed = tmp_path / "fs", tmp_path / "hashed"
    apply_layer(io.BytesIO(raw), os.fspath(dest), format="overlay", hash_files_into=os.fspath(hashed),
                link_objects=os.path.join(root, "objects", "blake3"))

    def obj(rel):
        return objects.get(os.lstat(dest / rel).st_ino)

    key = obj("same")
    assert key is not None and key.startswith(blake3.blake3(body).hexdigest())
    assert obj("twice") == key
    assert obj("su") is not None and os.lstat(dest / "su").st_mode & 0o7777 == 0o4755
    for rel in ("other-mode", "other-mtime", "other-owner", "with-xattr", "replaced", "big"):
        assert obj(rel) is None, rel
        assert (dest / rel).read_bytes() == (b"another version" if rel == "replaced" else big if rel == "big" else body)
    # the image's hardlink pair: a private inode of its own, the object untouched
    pa, pb = os.lstat(dest / "pair"), os.lstat(dest / "pair-twin")
    assert pa.st_ino == pb.st_ino and pa.st_nlink == 2 and obj("pair") is None
    assert (dest / "pair").read_bytes() == BASE["usr/share/pkgbase/f003"] and pa.st_mtime == ti("x").mtime
    assert not any(n.startswith(".lamina-private") for n in os.listdir(dest))
    # one -o name per object linked (same, twice: one object), and the objects still hash to their names
    linked = sorted(n for n in os.listdir(hashed) if n[65] == "o")
    assert len(linked) == 4, linked  # body, f002 (replaced later), f003 (privatized later), su
    assert f"{key[:64]}-o{key[65:]}-{len(body)}" in linked
    _fsck_clean(root)


# A layer that needs the layers below waits for their commits (their objects claimed), not only
# for their trees to be final: how a copy ran before upper layers went on over uncommitted trees.
_AFTER_COMMITS = ("from lamina import lowers\n"
                  "final_trees = lowers.LayersBelow.final_trees\n"
                  "def after_commits(self, i, chains):\n"
                  "    self.wait(i)\n"
                  "    return final_trees(self, i, chains)\n"
                  "lowers.LayersBelow.final_trees = after_commits\n")


def _copy_with_pass_stats(root, layout, ref, prelude=""):
    """``lamina copy oci:LAYOUT:REF REF:1`` in a child process (``prelude``: Python code run in it
    first); the DedupStats of each layer's pass."""
    proc = subprocess.run(
        [sys.executable, "-c", "import json, os, sys\n" + prelude +
         "from lamina.store import objects\n"
         "orig = objects.dedup_snapshot\n"
         "def wrapped(*a, **k):\n"
         "    st = orig(*a, **k)\n"
         "    os.write(2, json.dumps(st.to_dict()).encode() + b'\\n')  # one write: passes end in parallel\n"
         "    return st\n"
         "objects.dedup_snapshot = wrapped\n"
         "from lamina.cli import main\n"
         f"main(['--root', {str(root)!r}, 'copy', 'oci:{layout}:{ref}', '{ref}:1'])\n"],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]


def test_a_rebuilt_image_is_extracted_by_links(tmp_path, images):
    """Copying b into a store holding a: b's unchanged files are links made by the extractor
    (the pass finds them done), and b unpacks exactly as from a store that never saw a."""
    from lamina.store import objects as store_objects
    seen = []
    root = tmp_path / "root"
    _copy(root, images, "a")
    passes = _copy_with_pass_stats(root, images, "b")
    assert len(passes) == 2
    # every unchanged plain file of b was linked, none of them hashed and swapped by the pass
    assert sum(p["linked"] for p in passes) >= len(BASE) - 1 + len(APP) - 1
    assert sum(p["prehashed"] for p in passes) <= 6, passes  # the changed files, the pair, the xattr file
    _fsck_clean(root)
    fresh = tmp_path / "fresh"
    _copy(fresh, images, "b")
    from treecmp import compare, snapshot
    lamina_subprocess(root, "unpack", "b:1", str(tmp_path / "from-shared"))
    lamina_subprocess(fresh, "unpack", "b:1", str(tmp_path / "from-fresh"))
    diff = compare(snapshot(tmp_path / "from-fresh"), snapshot(tmp_path / "from-shared"))
    assert not diff, diff


def test_rebuilt_image_shares_its_unchanged_files(tmp_path, images):
    root, a = _store_with_a_and_b(tmp_path, images)
    b = _chains(root, "b:1")
    assert set(a).isdisjoint(b), "the rebuild must change every chainID for this test to mean anything"
    for rel in list(BASE)[1:]:
        assert _ino(root, a[0], rel) == _ino(root, b[0], rel), rel
    for rel in list(APP)[1:]:
        assert _ino(root, a[1], rel) == _ino(root, b[1], rel), rel
    # changed content: own inode
    assert _ino(root, a[0], "usr/share/pkgbase/f000") != _ino(root, b[0], "usr/share/pkgbase/f000")
    # same content, other mtime: not hardlinked, and it keeps its own mtime
    touched = os.lstat(os.path.join(_fs(root, b[1]), "usr/share/touched"))
    assert touched.st_ino != _ino(root, a[1], "usr/share/pkgapp/f001")
    assert touched.st_mtime == MTIME + 60
    # setuid and xattr files are shared with identical metadata
    for rel in ("usr/bin/su", "usr/bin/capped"):
        assert _ino(root, a[0], rel) == _ino(root, b[0], rel), rel
    su = os.lstat(os.path.join(_fs(root, b[0]), "usr/bin/su"))
    assert su.st_mode & 0o7777 == 0o4755
    assert os.getxattr(os.path.join(_fs(root, b[0]), "usr/bin/capped"), "user.note") == b"hello"
    # a hardlink of the layer stays a private pair (never an object)
    pa, pb = (os.lstat(os.path.join(_fs(root, b[0]), f"usr/bin/pair-{x}")) for x in "ab")
    assert pa.st_ino == pb.st_ino and pa.st_nlink == 2
    assert pa.st_ino != _ino(root, a[0], "usr/bin/pair-a")
    # fsck re-extracts every layer and compares: the shared snapshots read exactly as extracted
    report = _fsck_clean(root)
    assert report["checked"]["objects"] > 0

    from lamina.store import Store
    store = Store(root)
    digest = blake3.blake3(BASE["usr/share/pkgbase/f005"]).hexdigest()
    found = sorted((img.refs[0].familiar(), e.path) for img, _, e in store.find_files(blake3=digest))
    assert found == [("a:1", "usr/share/pkgbase/f005"), ("b:1", "usr/share/pkgbase/f005")]
    assert {img.refs[0].familiar() for img, _, _ in store.find_files(path="/usr/share/touched")} == {"b:1"}


def test_system_df_shows_what_sharing_saves(tmp_path, images):
    root, _ = _store_with_a_and_b(tmp_path, images)
    out = lamina_subprocess(root, "system", "df").stdout
    files_row = next(line for line in out.splitlines() if line.startswith("Files"))
    total, active = files_row.split()[1:3]
    # 40 + 30 unchanged-or-changed files, su, capped, the touched variant, and the 2 changed files
    assert int(total) == 40 + 30 + 2 + 1 + 2 and int(active) == 39 + 29 + 2
    verbose = lamina_subprocess(root, "system", "df", "-v").stdout
    assert "sharing saves" in verbose and "sharing saves 0B" not in verbose
    from lamina.store import Store
    usage = Store(root).file_usage()
    # b's shared files cost nothing more: saved is about one copy of each shared 20 kB file
    assert usage.saved >= (39 + 29) * 20_000


def test_system_df_per_image_shared_and_unique_sizes_count_shared_files(tmp_path, images):
    """a and its rebuild b share no layer, but all their unchanged files: docker's SHARED SIZE /
    UNIQUE SIZE columns count those files (each shared inode once, at its size on disk)."""
    root, a = _store_with_a_and_b(tmp_path, images)
    b = _chains(root, "b:1")
    shared_inodes = {}
    for ca, cb in zip(a, b):
        for dirpath, _, names in os.walk(_fs(root, ca)):
            for n in names:
                rel = os.path.relpath(os.path.join(dirpath, n), _fs(root, ca))
                sa = os.lstat(os.path.join(dirpath, n))
                try:
                    sb = os.lstat(os.path.join(_fs(root, cb), rel))
                except FileNotFoundError:
                    continue
                if sa.st_ino == sb.st_ino:
                    shared_inodes[sa.st_ino] = sa.st_blocks * 512
    assert len(shared_inodes) == 39 + 29 + 2  # unchanged files, su and capped
    expected = sum(shared_inodes.values())

    from lamina import images as api
    from lamina.store import Store
    du = api.disk_usage(Store(root))
    rows = {s.repo_tags[0]: s for s in du.images}
    for ref in ("a:1", "b:1"):
        assert rows[ref].shared_size == expected, ref
        assert rows[ref].unique_size == rows[ref].size - expected > 0, ref
    verbose = lamina_subprocess(root, "system", "df", "-v").stdout.splitlines()
    header = next(line for line in verbose if line.startswith("REPOSITORY"))
    row = next(line for line in verbose if line.startswith("a "))
    shared_col = header.index("SHARED SIZE")
    from lamina.cli.images import human_size
    assert row[shared_col:].split()[0] == human_size(expected)
    # df reads each snapshot's objects list, not its file list: the same sizes without the file
    # lists; and a snapshot of an older lamina (file list only) gives the same sizes too
    sdirs = [os.path.dirname(_fs(root, c)) for c in a + b]
    for sdir in sdirs:
        os.rename(os.path.join(sdir, "files.lz4"), os.path.join(sdir, "files.lz4.away"))
    assert {s.repo_tags[0]: s.shared_size for s in api.disk_usage(Store(root)).images} == {"a:1": expected,
                                                                                          "b:1": expected}
    for sdir in sdirs:
        os.rename(os.path.join(sdir, "files.lz4.away"), os.path.join(sdir, "files.lz4"))
        os.unlink(os.path.join(sdir, "objects.lz4"))
    assert {s.repo_tags[0]: s.shared_size for s in api.disk_usage(Store(root)).images} == {"a:1": expected,
                                                                                          "b:1": expected}
    # without b, a shares nothing any more: all of it is unique
    lamina_subprocess(root, "rmi", "b:1")
    rows = {s.repo_tags[0]: s for s in api.disk_usage(Store(root)).images}
    assert rows["a:1"].shared_size == 0 and rows["a:1"].unique_size == rows["a:1"].size


def test_dedup_can_be_switched_off(tmp_path, images):
    root = tmp_path / "root"
    lamina_subprocess(root, "config", "set", "dedup", "false")
    assert lamina_subprocess(root, "config", "get", "dedup").stdout.strip() == "false"
    _copy(root, images, "a")
    _copy(root, images, "b")
    a, b = _chains(root, "a:1"), _chains(root, "b:1")
    assert _ino(root, a[0], "usr/share/pkgbase/f005") != _ino(root, b[0], "usr/share/pkgbase/f005")
    assert not os.path.exists(root / "objects" / "blake3") or not any(os.scandir(root / "objects" / "blake3"))
    proc = lamina_subprocess(root, "config", "set", "dedup", "maybe", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("lamina: error: setting dedup: 'maybe' is not a boolean")


def test_gc_removes_objects_no_snapshot_uses(tmp_path, images):
    root, a = _store_with_a_and_b(tmp_path, images)
    shared = os.path.join(_fs(root, a[0]), "usr/share/pkgbase/f005")
    only_a = os.path.join(_fs(root, a[0]), "usr/share/pkgbase/f000")
    ino_only_a = os.lstat(only_a).st_ino
    lamina_subprocess(root, "rmi", "a:1")
    lamina_subprocess(root, "image", "prune", "-f")
    assert not os.path.exists(shared)
    names = {e.name for d in os.scandir(root / "objects" / "blake3") for e in os.scandir(d.path)}
    inodes = {os.lstat(os.path.join(root, "objects", "blake3", n[:2], n)).st_ino for n in names}
    assert ino_only_a not in inodes, "the object only a used must be gone"
    assert blake3.blake3(BASE["usr/share/pkgbase/f005"]).hexdigest() in {n.split(".")[0] for n in names}
    _fsck_clean(root)
    lamina_subprocess(root, "rmi", "b:1")
    lamina_subprocess(root, "image", "prune", "-a", "-f")
    assert [d for d in os.scandir(root / "objects" / "blake3") if any(os.scandir(d.path))] == []


def test_a_file_is_never_linked_to_an_object_of_other_xattrs_whatever_its_name_says(tmp_path, images):
    """An object's name covers its xattrs through 64 bits of blake3 only: an image could look for
    xattrs (a security.capability) whose key is another image's file without any, and every image
    with that file would then get them.  Both ways a file is linked to an existing object (the
    extractor's link, the pass) compare the object's own xattrs.  The object gets an xattr behind
    lamina's back here: mode, owner and mtime (its name) unchanged, as such a collision leaves it."""
    from lamina.store import Store
    rel = "usr/share/pkgbase/f005"
    for way in ("extractor", "pass"):
        root = tmp_path / way
        _copy(root, images, "a")
        obj = os.path.join(_fs(root, _chains(root, "a:1")[0]), rel)
        os.setxattr(obj, "trusted.injected", b"by another image")
        if way == "pass":  # b extracted without dedup, then shared by the pass
            lamina_subprocess(root, "config", "set", "dedup", "false")
        _copy(root, images, "b")
        b = _chains(root, "b:1")[0]
        if way == "pass":
            lamina_subprocess(root, "config", "set", "dedup", "true")
            stats = Store(root).dedup(b)
            assert stats is not None and stats.files > 0
        mine = os.path.join(_fs(root, b), rel)
        assert os.lstat(mine).st_ino != os.lstat(obj).st_ino, way
        assert "trusted.injected" not in os.listxattr(mine), way
        assert open(mine, "rb").read() == BASE[rel]
        # the files of b whose objects were left alone are still shared
        other = "usr/share/pkgbase/f006"
        assert _ino(root, b, other) == _ino(root, _chains(root, "a:1")[0], other), way
    # the extractor's link itself (a copy may leave it to the pass, as above)
    from lamina.layer import apply_layer
    raw = tarfile_bytes([(ti("forged"), BASE[rel]), (ti("fine"), BASE["usr/share/pkgbase/f006"])])
    dest = tmp_path / "fs"
    apply_layer(io.BytesIO(raw), os.fspath(dest), format="overlay", hash_files_into=os.fspath(tmp_path / "hashed"),
                link_objects=os.path.join(tmp_path / "extractor", "objects", "blake3"))
    objects = _objects_by_inode(tmp_path / "extractor")
    assert os.lstat(dest / "forged").st_ino not in objects and os.listxattr(dest / "forged") == []
    assert os.lstat(dest / "fine").st_ino in objects


def test_fsck_catches_an_object_changed_behind_lamina(tmp_path, images):
    root, a = _store_with_a_and_b(tmp_path, images)
    victim = os.path.join(_fs(root, a[0]), "usr/share/pkgbase/f007")
    st = os.lstat(victim)
    with open(victim, "r+b") as f:  # what a user writing through `unpack --link` would do
        f.write(b"X")
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = lamina_subprocess(root, "fsck", "--json", check=False)
    assert proc.returncode == 1
    kinds = {(f["kind"], f["severity"]) for f in json.loads(proc.stdout)["findings"]}
    assert ("bad-object", "error") in kinds
    digest = blake3.blake3(BASE["usr/share/pkgbase/f007"]).hexdigest()
    assert any(f["kind"] == "bad-object" and f["subject"].startswith(digest)
               for f in json.loads(proc.stdout)["findings"])
    lamina_subprocess(root, "fsck", "--repair", check=False)
    _fsck_clean(root)
    for ref in ("a:1", "b:1"):
        chain = _chains(root, ref)[0]
        with open(os.path.join(_fs(root, chain), "usr/share/pkgbase/f007"), "rb") as f:
            assert f.read() == BASE["usr/share/pkgbase/f007"], ref


def _big_layout(layout_dir, files=3000):
    lay = ocibuild.Layout(layout_dir)
    raw = _layer({f"d{i % 50}/f{i}": (b"%d" % (i % 700)) * 300 for i in range(files)})
    blob = lay.blob(raw)
    cdesc = lay.json_blob({"architecture": "amd64", "os": "linux", "config": {},
                           "rootfs": {"type": "layers", "diff_ids": [ocibuild.sha256(raw)]}}, ocibuild.OCI_CONFIG)
    lay.add(lay.json_blob({"schemaVersion": 2, "mediaType": ocibuild.OCI_MANIFEST, "config": cdesc,
                           "layers": [ocibuild.desc(ocibuild.OCI_LAYER, raw)]}, ocibuild.OCI_MANIFEST), "big")
    return blob


@pytest.mark.parametrize("hashed_while_extracting", [False, True])
def test_kill_9_during_dedup_then_fsck_clean_and_rerun(tmp_path, hashed_while_extracting):
    """Kill the dedup pass at many points; fsck finds no error and a rerun finishes the job.

    Either dedup is switched on after the snapshot was made (the pass reads and hashes every
    file, in the committed snapshot), or it was on all along (the pass takes the extractor's
    hashes from ``hashed/`` and runs in the snapshot's temp dir, before it is synced)."""
    root = tmp_path / "root"
    _big_layout(tmp_path / "layout")
    if hashed_while_extracting:
        lamina_subprocess(root, "images")  # creates the store
        chain = _chains_of_layout(tmp_path / "layout", "big")[0]
        command = ["copy", f"oci:{tmp_path / 'layout'}:big", "big:1"]
    else:
        lamina_subprocess(root, "config", "set", "dedup", "false")
        _copy(root, tmp_path / "layout", "big")
        lamina_subprocess(root, "config", "set", "dedup", "true")
        chain = _chains(root, "big:1")[0]
        command = ["unpack", "big:1"]
    sdir = os.path.dirname(_fs(root, chain))
    objects = root / "objects" / "blake3"

    def mid_pass():
        if hashed_while_extracting:  # the pass has begun (objects/stage) in a temp snapshot not committed
            snapshots = os.path.dirname(sdir)
            temps = os.path.isdir(snapshots) and [e for e in os.scandir(snapshots) if e.name.startswith(".tmp-" + chain[7:])]
            return bool(temps) and not os.path.exists(sdir) and os.path.isdir(root / "objects" / "stage")
        return (os.path.isdir(os.path.join(sdir, "fs")) and not os.path.exists(os.path.join(sdir, "files.lz4"))
                and os.path.isdir(objects) and any(os.scandir(objects)))

    def far_enough(attempt, since):
        """Kill later each attempt: after more objects, or (in a temp snapshot, which makes its
        objects only at the end) after more time."""
        if hashed_while_extracting:
            return time.monotonic() - since > 0.004 * attempt
        return sum(1 for d in os.scandir(objects) for _ in os.scandir(d.path)) > 20 * attempt

    killed_mid_pass = 0
    for attempt in range(8):
        if killed_mid_pass >= 3 or os.path.exists(os.path.join(sdir, "files.lz4")):
            break
        extra = [] if hashed_while_extracting else [str(tmp_path / f"dest-{attempt}")]
        proc = subprocess.Popen([sys.executable, "-m", "lamina", "--root", str(root), *command, *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # watch the store and kill once the pass is under way (later each attempt)
        since = None
        while proc.poll() is None:
            if mid_pass():
                since = since or time.monotonic()
                if far_enough(attempt, since):
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.0005)
        proc.wait()
        if mid_pass():
            killed_mid_pass += 1
            report = json.loads(lamina_subprocess(root, "fsck", "--json", check=False).stdout)
            assert report["ok"], [f for f in report["findings"] if f["severity"] == "error"]
    assert killed_mid_pass, "no kill landed inside the dedup pass; the test proves nothing"
    lamina_subprocess(root, "fsck", "--repair")
    if hashed_while_extracting:
        lamina_subprocess(root, *command)
    lamina_subprocess(root, "unpack", "big:1", str(tmp_path / "final"))
    assert os.path.exists(os.path.join(sdir, "files.lz4"))
    assert not os.path.exists(os.path.join(sdir, "hashed"))
    _fsck_clean(root)
    # 700 distinct contents: the rerun shared every duplicate
    fs = _fs(root, chain)
    inodes = {os.lstat(os.path.join(fs, f"d{i % 50}", f"f{i}")).st_ino for i in range(3000)}
    assert len(inodes) == 700


def test_kill_9_while_a_rebuilt_image_extracts_by_links_then_fsck_clean_and_rerun(tmp_path):
    """The store holds "big"; "big2" is the same layer over an empty one (a new chainID), so its
    files are named by links to big's objects as they extract.  Killed at several points of that
    extraction, the store stays consistent (fsck: no errors, every object still hashes to its
    name) and a rerun finishes with every file on big's objects."""
    root = tmp_path / "root"
    lay = ocibuild.Layout(tmp_path / "layout")
    _big_layout(tmp_path / "layout")
    _copy(root, tmp_path / "layout", "big")
    raw = _layer({f"d{i % 50}/f{i}": (b"%d" % (i % 700)) * 300 for i in range(3000)})
    lay.image_of_tars([bytes(1024), raw], "big2")
    big = _chains(root, "big:1")[0]
    big2 = _chains_of_layout(tmp_path / "layout", "big2")[1]
    snapshots = root / "snapshots"
    temp = ".tmp-" + big2[7:]
    kills = 0
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-m", "lamina", "--root", str(root), "copy",
                                 f"oci:{tmp_path / 'layout'}:big2", "big2:1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        since = None
        while proc.poll() is None:
            if any(e.name.startswith(temp) for e in os.scandir(snapshots)):
                since = since or time.monotonic()
                if time.monotonic() - since > 0.003 * attempt:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.0005)
        if proc.wait() == -signal.SIGKILL:
            kills += 1
            report = json.loads(lamina_subprocess(root, "fsck", "--json", check=False).stdout)
            assert report["ok"], [f for f in report["findings"] if f["severity"] == "error"]
        if (snapshots / big2[7:]).exists():
            break
    assert kills, "no kill landed during the extraction; the test proves nothing"
    lamina_subprocess(root, "fsck", "--repair")
    _copy(root, tmp_path / "layout", "big2")
    _fsck_clean(root)
    for i in (0, 1, 699, 2999):
        rel = f"d{i % 50}/f{i}"
        assert _ino(root, big, rel) == _ino(root, big2, rel), rel
    assert not any(n.startswith(".lamina-private") for d in os.listdir(_fs(root, big2))
                   for n in os.listdir(os.path.join(_fs(root, big2), d)))


def test_fsck_removes_hashed_names_left_beside_a_file_list(tmp_path, images):
    root = tmp_path / "root"
    _copy(root, images, "a")
    chain = _chains(root, "a:1")[0]
    sdir = os.path.dirname(_fs(root, chain))
    os.mkdir(os.path.join(sdir, "hashed"))  # as if the pass had died between its last two steps
    os.link(os.path.join(_fs(root, chain), "usr/share/pkgbase/f001"), os.path.join(sdir, "hashed", "x" * 64 + "-0"))
    report = json.loads(lamina_subprocess(root, "fsck", "--json", check=False).stdout)
    assert [(f["kind"], f["subject"]) for f in report["findings"]] == [("stale-hashed", chain)]
    lamina_subprocess(root, "fsck", "--repair")
    assert not os.path.exists(os.path.join(sdir, "hashed"))
    _fsck_clean(root)


def _chains_of_layout(layout, ref):
    """ChainIDs of an image in an OCI layout, read from its config (the store has not seen it yet)."""
    from lamina.store.image import chain_ids
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref)
    blob = lambda d: json.loads((layout / "blobs" / "sha256" / d.split(":")[1]).read_text())  # noqa: E731
    return chain_ids(blob(blob(desc["digest"])["config"]["digest"])["rootfs"]["diff_ids"])


def test_parallel_pulls_share_files(tmp_path, images):
    root = tmp_path / "root"
    lamina_subprocess(root, "images")  # create the store once
    procs = [subprocess.Popen([sys.executable, "-m", "lamina", "--root", str(root), "copy",
                               f"oci:{images}:{ref}", f"{ref}:1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for ref in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    a, b = _chains(root, "a:1"), _chains(root, "b:1")
    for rel in list(BASE)[1:]:
        assert _ino(root, a[0], rel) == _ino(root, b[0], rel), rel
    _fsck_clean(root)


def test_unpack_does_not_hardlink_files_that_only_share_an_object(tmp_path):
    lay = ocibuild.Layout(tmp_path / "layout")
    raw = tarfile_bytes([(ti("x"), b"same bytes" * 50), (ti("y"), b"same bytes" * 50),
                         (ti("pair-a"), b"pair" * 50), (ti("pair-b", tarfile.LNKTYPE, linkname="pair-a"), None)])
    lay.blob(raw)
    cdesc = lay.json_blob({"architecture": "amd64", "os": "linux", "config": {},
                           "rootfs": {"type": "layers", "diff_ids": [ocibuild.sha256(raw)]}}, ocibuild.OCI_CONFIG)
    lay.add(lay.json_blob({"schemaVersion": 2, "mediaType": ocibuild.OCI_MANIFEST, "config": cdesc,
                           "layers": [ocibuild.desc(ocibuild.OCI_LAYER, raw)]}, ocibuild.OCI_MANIFEST), "twins")
    root = tmp_path / "root"
    _copy(root, tmp_path / "layout", "twins")
    fs = _fs(root, _chains(root, "twins:1")[0])
    assert os.lstat(os.path.join(fs, "x")).st_ino == os.lstat(os.path.join(fs, "y")).st_ino  # one object
    from lamina.store.objects import singletons
    assert singletons(os.path.dirname(fs)) == {"x", "y"}
    dest = tmp_path / "dest"
    lamina_subprocess(root, "unpack", "twins:1", str(dest))
    assert os.lstat(dest / "pair-a").st_ino == os.lstat(dest / "pair-b").st_ino  # the image's own hardlink
    assert os.lstat(dest / "x").st_ino != os.lstat(dest / "y").st_ino, "x and y are not hardlinked in the image"


@pytest.fixture
def xfs_dir(tmp_path):
    """A fresh XFS (reflinks on by default) on a loop device, unmounted afterwards."""
    from conftest import require_root, require_tool, run
    require_root()
    require_tool("mkfs.xfs")
    img, mnt = tmp_path / "xfs.img", tmp_path / "xfs"
    with open(img, "wb") as f:
        f.truncate(300 << 20)
    run("mkfs.xfs", "-q", img)
    mnt.mkdir()
    run("mount", "-o", "loop", img, mnt)
    try:
        yield mnt
    finally:
        run("umount", mnt)


def test_same_content_other_metadata_is_reflinked_where_the_filesystem_can(tmp_path, xfs_dir):
    from conftest import run
    big = os.urandom(2 << 20)
    lay = ocibuild.Layout(tmp_path / "layout")
    for ref, mtime in (("a", MTIME), ("b", MTIME + 60)):
        raw = tarfile_bytes([(ti("data/big", mtime=mtime), big), (ti("data/small", mtime=mtime), b"x" * 100)])
        lay.blob(raw)
        cdesc = lay.json_blob({"architecture": "amd64", "os": "linux", "config": {},
                               "rootfs": {"type": "layers", "diff_ids": [ocibuild.sha256(raw)]}}, ocibuild.OCI_CONFIG)
        lay.add(lay.json_blob({"schemaVersion": 2, "mediaType": ocibuild.OCI_MANIFEST, "config": cdesc,
                               "layers": [ocibuild.desc(ocibuild.OCI_LAYER, raw)]}, ocibuild.OCI_MANIFEST), ref)
    root = xfs_dir / "root"
    _copy(root, tmp_path / "layout", "a")
    _copy(root, tmp_path / "layout", "b")
    a, b = _chains(root, "a:1")[0], _chains(root, "b:1")[0]
    fa, fb = (os.path.join(_fs(root, c), "data/big") for c in (a, b))
    sa, sb = os.lstat(fa), os.lstat(fb)
    assert sa.st_ino != sb.st_ino and sb.st_mtime == MTIME + 60  # other metadata: never hardlinked
    with open(fb, "rb") as f:
        assert f.read() == big
    extents = run("filefrag", "-v", fb).stdout
    assert "shared" in extents, f"b's copy should share a's blocks (FICLONE):\n{extents}"
    _fsck_clean(root)


def test_an_object_made_by_another_pass_between_plan_and_claim_is_shared(tmp_path):
    """A snapshot being extracted names its new objects only after its sync; a parallel pull may
    make the same object in between.  Its files (the planned inode and a duplicate swapped to it)
    then become names of that object, not a private pair the file list calls shared."""
    from lamina.store.objects import dedup_snapshot, metadata_key, object_path, read_file_list
    from lamina.store.paths import Paths
    paths = Paths(tmp_path / "root")
    paths.create()
    sdir = tmp_path / "root" / "snapshots" / ".tmp-test"
    os.makedirs(sdir / "fs" / "d")
    for rel in ("d/x", "y"):
        (sdir / "fs" / rel).write_bytes(b"same bytes" * 100)
        os.utime(sdir / "fs" / rel, ns=(MTIME * 10**9, MTIME * 10**9))
    other = tmp_path / "other"
    other.write_bytes(b"same bytes" * 100)
    os.utime(other, ns=(MTIME * 10**9, MTIME * 10**9))
    os.chmod(other, os.lstat(sdir / "fs" / "y").st_mode & 0o7777)
    name = f"{blake3.blake3(b'same bytes' * 100).hexdigest()}.{metadata_key(os.lstat(other), [])}"
    synced = []

    def sync():  # "another pass" makes the object now
        assert os.lstat(sdir / "fs" / "d" / "x").st_ino == os.lstat(sdir / "fs" / "y").st_ino  # planned, shared
        assert not object_path(paths, name).exists()
        os.makedirs(object_path(paths, name).parent, exist_ok=True)
        os.link(other, object_path(paths, name))
        synced.append(True)

    stats = dedup_snapshot(paths, sdir, reflink=False, sync=sync)
    assert synced and stats.new_objects == 0
    obj = os.lstat(object_path(paths, name)).st_ino
    assert os.lstat(sdir / "fs" / "d" / "x").st_ino == obj and os.lstat(sdir / "fs" / "y").st_ino == obj
    assert {e.path: e.object for e in read_file_list(sdir)} == {"d/x": name, "y": name}
    assert not (sdir / "hashed").exists()


def test_duplicates_within_one_pull_share_an_object_right_after_the_copy(tmp_path):
    """One cold copy, nothing in the store before it: a file repeated in the same layer and in a
    later layer is, as soon as the copy returns, a name of the object's inode (the pass ran before
    the snapshot was committed); a copy whose inode metadata differs (mtime, mode, owner, an
    xattr) keeps an inode of its own, since a hardlink would give it the object's metadata."""
    from lamina.store.objects import metadata_key, object_path, read_file_list
    from lamina.store.paths import Paths
    body = b"repeated body" * 300
    lay = ocibuild.Layout(tmp_path / "layout")
    lower = tarfile_bytes([(ti("a/one"), body), (ti("a/two"), body), (ti("a/later-mtime", mtime=MTIME + 1), body),
                           (ti("a/other-mode", mode=0o600), body)])
    upper = tarfile_bytes([(ti("b/three"), body), (ti("b/other-owner", uid=1000, gid=1000), body),
                           (ti("b/xattr", pax_headers={"SCHILY.xattr.user.note": "x"}), body)])
    lay.image_of_tars([lower, upper], "dups")
    root = tmp_path / "root"
    _copy(root, tmp_path / "layout", "dups")
    low, up = _chains(root, "dups:1")
    names = {e.path: e.object for e in read_file_list(os.path.dirname(_fs(root, low)))}
    names.update({e.path: e.object for e in read_file_list(os.path.dirname(_fs(root, up)))})
    st = os.lstat(os.path.join(_fs(root, low), "a/one"))
    obj = f"{blake3.blake3(body).hexdigest()}.{metadata_key(st, [])}"
    ost = os.lstat(object_path(Paths(root), obj))
    shared = [(low, "a/one"), (low, "a/two"), (up, "b/three")]
    for chain, rel in shared:
        assert os.lstat(os.path.join(_fs(root, chain), rel)).st_ino == ost.st_ino, rel
        assert names[rel] == obj, rel
    assert ost.st_nlink == 1 + len(shared)  # the object's own name and the three snapshot names
    for chain, rel in [(low, "a/later-mtime"), (low, "a/other-mode"), (up, "b/other-owner"), (up, "b/xattr")]:
        st = os.lstat(os.path.join(_fs(root, chain), rel))
        assert st.st_ino != ost.st_ino, rel
        assert names[rel] not in (None, obj), rel  # an object of its own metadata
        assert os.lstat(object_path(Paths(root), names[rel])).st_ino == st.st_ino, rel
    assert not any(os.path.exists(os.path.join(os.path.dirname(_fs(root, c)), "hashed")) for c in (low, up))
    _fsck_clean(root)


def test_upper_layers_of_a_first_image_link_the_files_of_the_layers_below(tmp_path):
    """A fresh store, one image whose upper layer repeats files of the layer below (same bytes and
    metadata, other names).  The upper layer waits for the one below at its first entry (a
    whiteout: the layers below decide whether it is made; a directory it implies would not
    wait, see test_implied_dirs_early.py) and then names each repeated file by a link to the object
    the layer below made, as it extracts: the pass finds them done, none written and swapped.
    It used to write all of them: objects/ did not exist yet when the upper layer started.
    The upper layer is held here until the layer below has committed: a copy now hands it the
    tree below before that layer's new objects are claimed (after its sync), and files it
    meets before then are written and swapped by its pass (before its own sync)."""
    lay = ocibuild.Layout(tmp_path / "layout")
    again = {name.replace("pkgbase", "again"): data for name, data in BASE.items()}
    upper = tarfile_bytes([(ti("usr/.wh.nothing-below"), b"")]
                          + [(ti(name), data) for name, data in sorted(again.items())])
    lay.image_of_tars([_layer(BASE), upper], "dup")
    root = tmp_path / "root"
    passes = _copy_with_pass_stats(root, lay.root, "dup", prelude=_AFTER_COMMITS)
    assert len(passes) == 2
    upper = max(passes, key=lambda p: p["linked"])
    assert upper["files"] == len(again) and upper["linked"] == len(again), passes
    assert upper["prehashed"] == 0, passes  # none hashed by the extractor and swapped by the pass
    a, b = _chains(root, "dup:1")
    for name in BASE:
        assert _ino(root, a, name) == _ino(root, b, name.replace("pkgbase", "again")), name
    _fsck_clean(root)


def _many_files_tar(n, dirs=100):
    """``n`` small files of distinct contents (each its own object) over ``dirs`` directories."""
    from tarbuild import header, pad
    out = bytearray()
    for d in range(dirs):
        out += header(f"usr/share/some-package-{d:03d}/", type=b"5", mode=0o755)
        for i in range(n // dirs):
            data = b"%d:%d\n" % (d, i)
            out += header(f"usr/share/some-package-{d:03d}/a-module-file-name-{i:05d}.py", size=len(data)) + pad(data)
    return bytes(out + bytes(1024))


def test_the_pass_keeps_its_file_list_on_disk(tmp_path):
    """Issue 14 (peak RSS <= 64 MiB whatever the layer size): the dedup pass of a copy writes each
    file's row of the snapshot's lists to a temp file as it goes, rather than holding a FileEntry
    per file and then the whole JSON document (~1.25 KB a file, 50 MB over these 40k files;
    then ~0.43 KB: the extractor's names in hashed/ and the objects planned for after the sync,
    now bounded too: test_store_dedup_spill.py).  Peak RSS (VmHWM of the CLI) of a 41k-file layer's copy against a
    1k-file one's; the lists it wrote are those of every file."""
    from verbkit import peak_rss_kib
    peaks = {}
    for n in (1000, 41000):
        lay = ocibuild.Layout(tmp_path / f"oci{n}")
        lay.image_of_tars([_many_files_tar(n)], ref="1")
        root = tmp_path / f"store{n}"
        peaks[n] = peak_rss_kib(["--root", str(root), "copy", f"oci:{lay.root}:1", f"many:{n}"], tmp_path)
    growth = (peaks[41000] - peaks[1000]) / 1024
    assert growth < 32, f"peak RSS grew {growth:.1f} MiB over 40k more files ({peaks})"
    from lamina.store.objects import read_file_list, snapshot_objects
    (snap,) = [p.parent for p in (root / "snapshots").glob("*/fs")]
    files = read_file_list(snap)
    assert len(files) == 41000 and len({f.path for f in files}) == 41000
    assert len(snapshot_objects(snap)) == 41000 == len({f.object for f in files})
    assert sorted(snapshot_objects(snap)) == sorted({f.object for f in files})



def _copy_holding_the_first_sync(root, layout, ref, monkeypatch):
    """Copy ``ref`` in this process, the first layer to sync (the bottom one) waiting before it
    until a layer above has gone on over an uncommitted tree below it (snapshots._open_lowers
    with a tree that is not committed yet); returns whether that happened.  The layer above is
    then writing (snapshots._WRITERS), so the bottom layer's sync waits for it.  The copy runs
    in a thread: a deadlock fails the test instead of hanging it."""
    import threading
    from lamina.store import Store, snapshots
    from lamina.transports import copy as lamina_copy
    resumed = threading.Event()
    real_open, real_idle = snapshots._open_lowers, snapshots._WRITERS.wait_idle
    first = []

    def open_lowers(paths, lowers, opened):
        if any(fs is not None for _, fs in lowers):
            resumed.set()
        return real_open(paths, lowers, opened)

    def wait_idle():
        if not first:
            first.append(True)
            resumed.wait(20)
        real_idle()

    monkeypatch.setattr(snapshots, "_open_lowers", open_lowers)
    monkeypatch.setattr(snapshots._WRITERS, "wait_idle", wait_idle)
    failed = []

    def copy():
        try:
            with Store(root) as store:
                lamina_copy(f"oci:{layout}:{ref}", f"{ref}:1", store=store)
        except BaseException as e:
            failed.append(e)

    t = threading.Thread(target=copy, daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "the copy deadlocked"
    assert not failed, failed
    return resumed.is_set()


def test_an_upper_layer_goes_on_over_the_tree_below_before_its_commit(tmp_path, monkeypatch):
    """A copy (snapshots.ensure_all) hands a layer's tree to the layers above once the swaps of
    its dedup pass are done, as a pull does: the rest of that pass (sync, claim of its new
    objects, commit) then runs beside their extraction instead of before it (issue 9: an upper
    layer's pass waited for the lower layers').  Before, the layer above waited for the bottom
    layer's commit, so it never went on over its uncommitted tree.  The tree it goes on over
    is final: the bottom layer swaps a duplicate in ``a/`` (its rename moves the directory's
    mtime for a moment), and the layer above copies ``a/`` up with the layer's mtime; fsck
    compares every snapshot with a fresh extraction."""
    body = b"twice in the bottom layer" * 200
    lay = ocibuild.Layout(tmp_path / "layout")
    bottom = tarfile_bytes([(ti("a/", tarfile.DIRTYPE, mode=0o755), None), (ti("a/one"), body), (ti("a/two"), body)]
                           + [(ti(f"a/f{i}"), b"%d" % i * 100) for i in range(50)])
    upper = tarfile_bytes([(ti("a/three"), b"upper file")])  # a/ implied: needs the layer below
    lay.image_of_tars([bottom, upper], "early")
    root = tmp_path / "root"
    assert _copy_holding_the_first_sync(root, tmp_path / "layout", "early", monkeypatch), \
        "the layer above did not go on over the bottom layer's tree before its commit"
    low, up = _chains(root, "early:1")
    assert _ino(root, low, "a/one") == _ino(root, low, "a/two")
    assert os.lstat(os.path.join(_fs(root, up), "a")).st_mtime_ns == os.lstat(os.path.join(_fs(root, low), "a")).st_mtime_ns
    _fsck_clean(root)


def test_a_hardlink_to_a_lower_file_while_that_layer_finishes_its_pass(tmp_path, monkeypatch):
    """The layer above copies up a lower file with other names (a hardlink group of the layer
    below) and asks which of its names share an inode only by dedup (snapshots.dedup_shared):
    that waits for the lower layer's commit, whose sync waits for this process's writers to be
    idle, so the asking layer must not count as writing meanwhile (a deadlock, now that the
    layers above go on before the commits below them)."""
    lay = ocibuild.Layout(tmp_path / "layout")
    bottom = tarfile_bytes([(ti("d/pair-a"), b"pair body" * 100),
                            (ti("d/pair-b", tarfile.LNKTYPE, linkname="d/pair-a"), None)]
                           + [(ti(f"d/f{i}"), b"%d" % i * 100) for i in range(50)])
    upper = tarfile_bytes([(ti("e/link", tarfile.LNKTYPE, linkname="d/pair-a"), None)])
    lay.image_of_tars([bottom, upper], "links")
    root = tmp_path / "root"
    assert _copy_holding_the_first_sync(root, tmp_path / "layout", "links", monkeypatch)
    low, up = _chains(root, "links:1")
    ups = {n: os.lstat(os.path.join(_fs(root, up), n)).st_ino for n in ("d/pair-a", "d/pair-b", "e/link")}
    assert len(set(ups.values())) == 1, ups  # copied up as one inode, as the layer's hardlinks
    _fsck_clean(root)
