"""Hostile inputs for the store's newer paths: the compact store's tar-split sidecars.

Oracles: the layer's own bytes (a rebuilt tar must be bit-exact, its sha256 the diffID), the
kernel (strace shows which names are opened), every path of everypath.py for the tree, and
the Guard (nothing outside the test's directory changed).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import subprocess
import sys
import tarfile

import lz4.frame
import pytest

from conftest import require_tool
from everypath import assert_agree, describe, run_paths, write_image
from storekit import LAMINA, lamina
from tarbuild import Tar, header

MAGIC = b"LAMINA-TARSPLIT/1\n"


def _compact_copy(g, raw, name="store"):
    """The image of the one layer ``raw`` copied into a new compact store; its root."""
    layout = write_image(g.dest / f"layout-{name}", [raw])
    root = g.dest / name
    lamina(root, "config", "set", "keep-blobs", "false")
    r = lamina(root, "copy", f"oci:{layout}:img", "x:1", check=False)
    assert r.returncode == 0, r.stderr
    return root


def _saved_layer(root, out):
    lamina(root, "save", "x:1", "-o", out)
    with tarfile.open(out) as t:
        (layer,) = json.load(t.extractfile("manifest.json"))[0]["Layers"]
        return t.extractfile(layer).read()


def _snapshot_dir(root):
    (chain,) = [d for d in os.listdir(root / "snapshots") if not d.startswith(".")]
    return root / "snapshots" / chain


# --- a layer that replaces a file by a device node of the same name -----------------------

def test_the_compact_store_never_opens_a_device_node_a_file_was_replaced_by(g):
    """The sidecar's builder looked for each file's payload in the snapshot by opening the name
    (O_RDONLY, no O_NOCTTY) and only then asked what it was: a layer writing ``w`` and then a
    character device ``w`` made lamina open that device, running its driver's open (10:130 is a
    watchdog, armed by it; a tty becomes the controlling terminal).  1:3 (/dev/null) stands in."""
    require_tool("strace")
    t = Tar().file("a", b"A" * 5000).file("w", b"W" * 600).chardev("w", 1, 3).file("z", b"Z" * 700)
    raw = t.bytes()
    tree = assert_agree(run_paths(g.dest / "paths", [raw]), context=describe([raw]))
    assert tree.entries["w"].type == "chr"
    layout = write_image(g.dest / "layout", [raw])
    root = g.dest / "store"
    lamina(root, "config", "set", "keep-blobs", "false")
    trace = g.dest / "strace.out"
    proc = subprocess.run(["strace", "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(trace),
                           sys.executable, "-m", "lamina", "--root", str(root), "copy", f"oci:{layout}:img", "x:1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # an O_PATH open pins the name without opening the file (no driver's open runs): the mode of
    # the node the layer made is set through one (extract._chmod_at), which is what it is for
    opened = [line for line in trace.read_text().splitlines()
              if '"w"' in line and "O_CREAT" not in line and "O_PATH" not in line]
    assert opened == [], opened
    assert _saved_layer(root, g.dest / "x.tar") == raw
    g.check()


# --- a tampered sidecar fails clearly, naming the layer, reading nothing outside ----------

def _records(body):
    i, out = len(MAGIC), []
    while i < len(body):
        kind = body[i:i + 1]
        i += 1
        n, = struct.unpack(">Q", body[i:i + 8])
        i += 8
        if kind == b"R":
            out.append([kind, body[i:i + n]])
            i += n
        elif kind == b"F":
            size, xxh = struct.unpack(">QQ", body[i + n:i + n + 16])
            out.append([kind, body[i:i + n], size, xxh])
            i += n + 16
        else:
            out.append([kind, n])
    return out


def _encode(records):
    out = bytearray(MAGIC)
    for r in records:
        if r[0] == b"R":
            out += b"R" + struct.pack(">Q", len(r[1])) + r[1]
        elif r[0] == b"F":
            out += b"F" + struct.pack(">Q", len(r[1])) + r[1] + struct.pack(">QQ", r[2], r[3])
        elif r[0] == b"E":
            out += b"E" + struct.pack(">Q", r[1])
        else:
            out += r[1]  # bytes as they are
    return lz4.frame.compress(bytes(out))


def _retarget(records, path):
    return [[b"F", path] + r[2:] if r[0] == b"F" and r[1] == b"a" else r for r in records]


TAMPER = {
    # the F record of "a" pointed at a file outside the snapshot holding a's very bytes: only a
    # refusal of the path can fail the rebuild (it read that file and came out bit-exact)
    "dotdot-path": lambda rs, outside, sc: _encode(_retarget(rs, b"../" * 40 + outside.lstrip(b"/"))),
    "absolute-path": lambda rs, outside, sc: _encode(_retarget(rs, outside)),
    "dot-path": lambda rs, outside, sc: _encode(_retarget(rs, b"./a")),
    "truncated": lambda rs, outside, sc: sc[:len(sc) // 2],
    "empty": lambda rs, outside, sc: b"",
    "byte-flipped": lambda rs, outside, sc: sc[:len(sc) // 2] + bytes([sc[len(sc) // 2] ^ 0xFF]) + sc[len(sc) // 2 + 1:],
    "not-lz4": lambda rs, outside, sc: b"not an lz4 frame\n" * 8,
    "raw-record-of-an-exabyte": lambda rs, outside, sc: _encode([[b"X", b"R" + struct.pack(">Q", 1 << 62)]]),
    "path-of-an-exabyte": lambda rs, outside, sc: _encode([[b"X", b"F" + struct.pack(">Q", 1 << 62)]]),
    "end-record-count-off": lambda rs, outside, sc: _encode([r if r[0] != b"E" else [b"E", r[1] + 512] for r in rs]),
    "no-end-record": lambda rs, outside, sc: _encode([r for r in rs if r[0] != b"E"]),
    "records-after-the-end": lambda rs, outside, sc: _encode(rs + [[b"R", bytes(512)]]),
}


@pytest.mark.parametrize("tamper", list(TAMPER))
def test_a_tampered_sidecar_fails_save_and_fsck_clearly(g, tamper):
    """Before: a path with '..' in an F record was followed out of the snapshot (save succeeded,
    reading a file outside the store); a cut or empty sidecar was an EOFError traceback (fsck
    died of it too); a record length of 2^62 was a MemoryError traceback; records after the end
    record were ignored."""
    a = b"A" * 5000
    raw = Tar().file("a", a).file("z", b"Z" * 700).bytes()
    root = _compact_copy(g, raw)
    sdir = _snapshot_dir(root)
    sidecar = sdir / "tarsplit.lz4"
    good = sidecar.read_bytes()
    assert _saved_layer(root, g.dest / "good.tar") == raw
    outside = g.dest / "outside"
    outside.write_bytes(a)
    records = _records(lz4.frame.decompress(good))
    assert [r[1] for r in records if r[0] == b"F"] == [b"a", b"z"]
    sidecar.write_bytes(TAMPER[tamper](records, os.fsencode(outside), good))
    out = g.dest / "x.tar"
    proc = lamina(root, "save", "x:1", "-o", out, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("lamina: error: layer sha256:") and proc.stderr.count("\n") == 1, proc.stderr
    assert "sidecar" in proc.stderr, proc.stderr
    assert not out.exists()
    fsck = lamina(root, "fsck", "--json", check=False)
    assert fsck.returncode == 1 and "Traceback" not in fsck.stderr, fsck.stderr
    findings = json.loads(fsck.stdout)["findings"]
    assert any(f["kind"] == "bad-sidecar" and f["subject"].endswith(sdir.name) for f in findings), findings
    g.check()


@pytest.mark.parametrize("kind", ["symlink-to-a-good-copy", "fifo", "directory"])
def test_a_sidecar_that_is_no_regular_file_is_refused_not_followed_or_waited_on(g, kind):
    """lamina writes the sidecar as a regular file.  A symlink put in its place was followed (to
    a copy outside the store, save succeeded from it), a FIFO made save and fsck wait forever."""
    raw = Tar().file("a", b"A" * 5000).file("z", b"Z" * 700).bytes()
    root = _compact_copy(g, raw)
    sidecar = _snapshot_dir(root) / "tarsplit.lz4"
    copy = g.dest / "copy.lz4"
    copy.write_bytes(sidecar.read_bytes())
    sidecar.unlink()
    if kind == "fifo":
        os.mkfifo(sidecar)
    elif kind == "directory":
        sidecar.mkdir()
    else:
        sidecar.symlink_to(copy)
    out = g.dest / "x.tar"
    proc = lamina(root, "save", "x:1", "-o", out, check=False, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("lamina: error: layer sha256:") and "tarsplit.lz4" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and not out.exists(), proc.stderr
    fsck = lamina(root, "fsck", "--json", check=False, timeout=120)
    assert any(f["kind"] == "bad-sidecar" for f in json.loads(fsck.stdout)["findings"]), fsck.stdout
    g.check()


SNAPSHOT_TAMPER = {
    # what the sidecar names as a file is a symlink to a file outside with the very bytes
    "file-now-a-symlink-out": lambda fs, outside: (os.unlink(fs / "d" / "a"), os.symlink(outside, fs / "d" / "a")),
    # its directory is a symlink to a directory outside holding a file of that name and bytes
    "dir-now-a-symlink-out": lambda fs, outside: (os.rename(fs / "d", fs / "d.old"),
                                                  os.symlink(os.path.dirname(outside), fs / "d")),
    "file-now-a-fifo": lambda fs, outside: (os.unlink(fs / "d" / "a"), os.mkfifo(fs / "d" / "a")),
    "file-now-a-device": lambda fs, outside: (os.unlink(fs / "d" / "a"),
                                              os.mknod(fs / "d" / "a", 0o600 | 0o020000, os.makedev(1, 3))),
    "file-gone": lambda fs, outside: os.unlink(fs / "d" / "a"),
}


@pytest.mark.parametrize("tamper", list(SNAPSHOT_TAMPER))
def test_a_compact_snapshot_changed_behind_lamina_fails_save_naming_the_entry(g, tamper):
    """The sidecar's files are read through O_NOFOLLOW directory fds from the snapshot root and
    must be regular files: a name turned into a symlink (the file's bytes outside), a directory
    turned into one, a FIFO (never waited on), a device (never opened) or nothing at all fails
    save and fsck naming the layer and the entry.  Holds today (a regression guard)."""
    a = b"A" * 5000
    raw = Tar().dir("d").file("d/a", a).file("z", b"Z" * 700).bytes()
    root = _compact_copy(g, raw)
    sdir = _snapshot_dir(root)
    outside = g.dest / "elsewhere" / "a"
    outside.parent.mkdir()
    outside.write_bytes(a)
    SNAPSHOT_TAMPER[tamper](sdir / "fs", os.fspath(outside))
    out = g.dest / "x.tar"
    proc = lamina(root, "save", "x:1", "-o", out, check=False, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("lamina: error: layer sha256:") and "'d/a'" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert not out.exists()
    fsck = lamina(root, "fsck", "--json", check=False, timeout=120)
    findings = json.loads(fsck.stdout)["findings"]
    assert any(f["kind"] == "bad-sidecar" and "d/a" in f["message"] for f in findings), findings
    g.check()


# --- hostile layers a compact store must rebuild bit-exact ---------------------------------

def _raw_entry(name, data, *, padding=None, **kw):
    """An entry whose padding is given (``None``: zeros, as every writer pads)."""
    block = header(name, size=len(data), **kw) + data
    fill = -len(data) % 512
    return block + (bytes(fill) if padding is None else (padding * fill)[:fill])


def _rebuild_cases():
    base = lambda: Tar().file("a", b"A" * 700)  # noqa: E731
    long_value = "v" * 70000
    longname = "l/" + "n" * 150 + "/" + "o" * 200
    return {
        "the-same-name-three-times": base().file("d", b"1" * 900).file("d", b"2" * 1500).file("d", b"3" * 10).bytes(),
        "a-hardlink-to-a-file-rewritten-later": base().file("f", b"old" * 400).hardlink("h", "f")
                                                      .file("f", b"new" * 300).bytes(),
        "a-file-replaced-by-a-symlink-to-a-host-file": base().file("p", b"P" * 600).symlink("p", "/etc/passwd").bytes(),
        "a-file-below-a-dir-replaced-by-a-symlink": base().dir("d").file("d/f", b"F" * 800).symlink("d", "/etc")
                                                          .file("z", b"Z" * 10).bytes(),
        "a-file-replaced-by-a-dir": base().file("q", b"Q" * 800).dir("q").file("q/r", b"R" * 700).bytes(),
        "pax-odd-keys-and-a-long-value": base().pax({"LAMINA.odd key": "x=y=z", "comment": long_value,
                                                     "SCHILY.xattr.user.big": "b" * 3000})
                                               .file("x", b"X" * 2000).bytes(),
        "gnu-long-names-and-links": base().gnu_longname(longname).file("ignored", b"L" * 900)
                                          .gnu_longlink(longname).gnu_longname("l/" + "m" * 250)
                                          .hardlink("ignored2", "ignored").bytes(),
        "non-zero-padding": base().raw(_raw_entry("junkpad", b"J" * 10, padding=b"\xde\xad")).file("z", b"Z").bytes(),
        "trailing-garbage-after-the-end": base().bytes() + b"garbage after the end blocks" * 100,
        "end-of-many-zero-blocks": base().bytes(end=False) + bytes(512 * 37),
        "a-dot-dot-name-rerooted": base().file("../../../rerooted", b"R" * 3000).file("/abs", b"S" * 1200).bytes(),
        "a-pax-path-over-a-different-header-name": base().pax({"path": "real"}).file("decoy", b"D" * 2000)
                                                         .file("decoy", b"E" * 2000).bytes(),
        "an-empty-pax-path-keeps-the-header-name": base().pax({"path": ""}).file("hdr", b"H" * 1000).bytes(),
        # a key twice in one PAX header: the last value (Go's map, the extractor's and the sidecar's)
        "a-pax-size-twice-the-last-wins": base().pax([("size", "0"), ("size", "600")])
                                                .file("s", b"S" * 600, size=0).file("c", b"C" * 100).bytes(),
        "a-pax-path-twice-the-last-wins": base().pax([("path", "p1"), ("path", "p2")]).file("n", b"N" * 600).bytes(),
        "a-gnu-long-name-twice-the-last-wins": base().gnu_longname("l1").gnu_longname("l2").file("n", b"N" * 600)
                                                     .bytes(),
        "a-contiguous-file-type-7": base().entry("seven", b"7" * 900, type=b"7").bytes(),
        "a-pax-path-naming-a-directory": base().pax({"path": "dirlike/"}).file("x", b"").file("c", b"C" * 100).bytes(),
    }


@pytest.mark.parametrize("case", list(_rebuild_cases()))
def test_hostile_layers_come_back_bit_exact_from_a_compact_store(g, case):
    """Each layer every path extracts alike must come back from snapshot + sidecar byte for byte
    (its sha256 the diffID), fsck clean; nothing outside the test's directory touched."""
    raw = _rebuild_cases()[case]
    results = run_paths(g.dest / "paths", [raw])
    tree = assert_agree(results, context=describe([raw]))
    if tree is None:
        pytest.fail(f"every path refused the layer: {next(iter(results.values()))!r}")
    root = _compact_copy(g, raw)
    rebuilt = _saved_layer(root, g.dest / "x.tar")
    assert hashlib.sha256(rebuilt).hexdigest() == hashlib.sha256(raw).hexdigest()
    fsck = lamina(root, "fsck", "--json", check=False)
    report = json.loads(fsck.stdout)
    assert report["findings"] == [] and report["checked"]["sidecars"] == 1, report
    g.check()


# --- file-level dedup: an object never takes metadata or content from another image --------

CAP = (b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12))  # vfs_cap_data v2: cap_net_bind_service


def _variant_cases():
    """Image B's file: image A's bytes with one piece of inode metadata changed."""
    data = b"shared bytes\n" * 400
    return data, {
        "setuid-root": lambda t: t.file("bin/f", data, mode=0o4755),
        "owner": lambda t: t.file("bin/f", data, uid=1000, gid=1000),
        "mtime-one-ns-later": lambda t: t.pax({"mtime": "1600000000.000000001"}).file("bin/f", data),
        "user-xattr": lambda t: t.pax({"SCHILY.xattr.user.k": "v"}).file("bin/f", data),
        "file-capability": lambda t: t.pax({"SCHILY.xattr.security.capability": CAP}).file("bin/f", data),
        "access-acl": lambda t: t.pax({"SCHILY.xattr.system.posix_acl_access":
                                        (b"\x02\x00\x00\x00" + b"\x01\x00\x06\x00\xff\xff\xff\xff"
                                         + b"\x02\x00\x07\x00\xe8\x03\x00\x00" + b"\x04\x00\x04\x00\xff\xff\xff\xff"
                                         + b"\x10\x00\x07\x00\xff\xff\xff\xff"
                                         + b"\x20\x00\x04\x00\xff\xff\xff\xff")}).file("bin/f", data),
    }


@pytest.mark.parametrize("variant", list(_variant_cases()[1]))
def test_an_object_of_image_a_never_changes_whatever_image_b_does_with_the_same_bytes(g, variant):
    """Two images, one file's bytes, inode metadata differing in one point: they must never share
    an inode (B would show A's mode, owner, time or xattrs, or give them to A), and loading,
    unpacking with --link, mounting and removing B leaves every name of A's file as it was.
    B's file is what every path of everypath.py makes of B's layer."""
    from treecmp import compare, snapshot
    data, variants = _variant_cases()
    layer_a = Tar().dir("bin").file("bin/f", data).file("a-only", b"a").bytes()
    layer_b = variants[variant](Tar().dir("bin")).file("b-only", b"b").bytes()
    tree_b = assert_agree(run_paths(g.dest / "paths", [layer_b]), context=describe([layer_b]))
    root = g.dest / "store"
    for ref, raw in (("a", layer_a), ("b", layer_b)):
        lamina(root, "copy", f"oci:{write_image(g.dest / f'layout-{ref}', [raw])}:img", f"{ref}:1")
    lamina(root, "unpack", "a:1", g.dest / "a-before")
    before = snapshot(g.dest / "a-before")
    (chain_a,) = [c for c in os.listdir(root / "snapshots") if (root / "snapshots" / c / "fs" / "a-only").exists()]
    (chain_b,) = [c for c in os.listdir(root / "snapshots") if (root / "snapshots" / c / "fs" / "b-only").exists()]
    ino_a = os.lstat(root / "snapshots" / chain_a / "fs" / "bin" / "f")
    ino_b = os.lstat(root / "snapshots" / chain_b / "fs" / "bin" / "f")
    assert (ino_a.st_dev, ino_a.st_ino) != (ino_b.st_dev, ino_b.st_ino), "A and B share an inode"

    lamina(root, "unpack", "--link", "b:1", g.dest / "b-link")
    got_b = snapshot(g.dest / "b-link")
    diff = compare(tree_b, got_b, labels=("every path", "unpack --link b"))
    assert not diff, diff
    mnt = g.dest / "b-mnt"
    lamina(root, "mount", "b:1", mnt)
    try:
        assert (mnt / "bin" / "f").read_bytes() == data
    finally:
        lamina(root, "umount", mnt)
    lamina(root, "rmi", "b:1")
    lamina(root, "image", "prune", "-f")
    lamina(root, "unpack", "a:1", g.dest / "a-after")
    diff = compare(before, snapshot(g.dest / "a-after"), labels=("a before b", "a after b"))
    assert not diff, diff
    st = os.lstat(root / "snapshots" / chain_a / "fs" / "bin" / "f")
    assert (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) == (
        ino_a.st_mode, ino_a.st_uid, ino_a.st_gid, ino_a.st_mtime_ns)
    assert os.listxattr(root / "snapshots" / chain_a / "fs" / "bin" / "f", follow_symlinks=False) == []
    fsck = lamina(root, "fsck", "--json", check=False)
    assert json.loads(fsck.stdout)["findings"] == [], fsck.stdout
    g.check()


@pytest.mark.parametrize("size", [3000, 6 << 20], ids=["held-whole", "bigger-than-a-chunk"])
def test_a_file_changed_through_unpack_link_gives_its_bytes_to_no_other_image(g, size):
    """A file of ``unpack --link`` is a store object: written in place with its mtime put back
    (rsync --inplace -t does that), the object's name still says the old bytes.  An image loaded
    afterwards with the same file linked its file to that object (the extractor's link for a
    payload it holds whole, the dedup pass for a bigger one) and silently got the new bytes.
    Now both compare the object's bytes first; fsck still names the changed object."""
    data = hashlib.sha256(b"seed").digest() * (size // 32)
    layer_a = Tar().file("f", data).file("a-only", b"a").bytes()
    layer_b = Tar().file("f", data).file("b-only", b"b").bytes()
    root = g.dest / "store"
    lamina(root, "copy", f"oci:{write_image(g.dest / 'layout-a', [layer_a])}:img", "a:1")
    lamina(root, "unpack", "--link", "a:1", g.dest / "a-link")
    victim = g.dest / "a-link" / "f"
    st = os.lstat(victim)
    assert st.st_nlink > 1, "unpack --link hands out the store's inode"
    with open(victim, "r+b") as f:
        f.write(b"CHANGED BEHIND LAMINA'S BACK")
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))

    lamina(root, "copy", f"oci:{write_image(g.dest / 'layout-b', [layer_b])}:img", "b:1")
    lamina(root, "unpack", "b:1", g.dest / "b")
    assert (g.dest / "b" / "f").read_bytes() == data, "image b got the bytes written into image a's object"
    lamina(root, "unpack", "--link", "b:1", g.dest / "b-link")
    assert (g.dest / "b-link" / "f").read_bytes() == data
    assert os.lstat(g.dest / "b-link" / "f").st_ino != st.st_ino
    mnt = g.dest / "b-mnt"
    lamina(root, "mount", "b:1", mnt)
    try:
        assert (mnt / "f").read_bytes() == data
    finally:
        lamina(root, "umount", mnt)
    tree_b = assert_agree(run_paths(g.dest / "paths", [layer_b]), context=describe([layer_b]))
    from treecmp import compare, snapshot
    diff = compare(tree_b, snapshot(g.dest / "b"), labels=("every path", "b after a's object changed"))
    assert not diff, diff
    fsck = lamina(root, "fsck", "--json", check=False)
    findings = json.loads(fsck.stdout)["findings"]
    assert fsck.returncode == 1 and any(f["kind"] == "bad-object" for f in findings), findings
    assert all("b-only" not in f["message"] for f in findings), findings
    g.check()


# --- the store's own directories replaced by symlinks behind lamina ---

@pytest.mark.parametrize("victim", ["snapshots", "blobs/sha256", "objects/blake3/XX", "snapshots/CHAIN",
                                    "snapshots/CHAIN/fs", "lamina/verified"])
def test_a_store_directory_replaced_by_a_symlink_never_leads_a_removal_outside(g, victim):
    """gc, fsck --repair, rmi and prune list the store's directories and remove by name what
    they find there.  With ``snapshots``, ``blobs/sha256`` or an ``objects/blake3/XX`` moved
    away and a symlink to a directory outside put in its place, fsck --repair removed what
    the outside directory held ('not a snapshot', 'not a blob', 'not an object'), and a
    snapshot's ``fs`` as a symlink was mounted as the image's layer.  Each is refused now,
    naming the symlink (a snapshot that is a symlink is a bad snapshot, whose link fsck
    --repair removes), and nothing outside the store changes.  ``lamina/verified`` (records
    of layer blobs hashed once) was left out of that check: gc unlinked every 64-hex name in
    the directory it pointed to whose blob the store lacks, fsck --repair every ``.tmp-`` name."""
    from lamina import images
    from lamina.errors import LaminaError
    from lamina.store import Store
    from lamina.store.mounts import mount, umount
    from treecmp import snapshot
    layout = write_image(g.dest / "layout", [Tar().dir("d").file("d/f", b"f" * 100).bytes(),
                                             Tar().file("g", b"g").bytes()])
    root = g.dest / "store"
    lamina(root, "copy", f"oci:{layout}:img", "x:1")
    outside = g.dest / "outside"
    for rel, data in (("fs/sub/precious", b"p"), ("meta.json", b"{}"), ("precious", b"p"),
                      ("ab" * 32, b"looks like a blob"), ("stage", b""), ("x.tmp-1", b"temp?")):
        os.makedirs(os.path.dirname(outside / rel), exist_ok=True)
        (outside / rel).write_bytes(data)
    before = snapshot(outside, include_root=True, dir_mtime=True)
    chain = sorted(n for n in os.listdir(root / "snapshots") if not n.startswith("."))[0]
    fanout = sorted(os.listdir(root / "objects" / "blake3"))
    fanout = [n for n in fanout if len(n) == 2][0]
    path = root / victim.replace("CHAIN", chain).replace("XX", fanout)
    os.makedirs(path, exist_ok=True)   # lamina/verified: made by the first layer blob hashed again
    os.rename(path, g.dest / "moved-away")
    os.symlink(outside, path)
    store = Store(root)
    outcomes = {}
    for what, call in (("fsck", lambda: store.fsck()), ("mount", lambda: mount(store, "x:1", g.dest / "mnt")),
                       ("fsck --repair", lambda: store.fsck(repair=True)), ("gc", lambda: store.gc()),
                       ("rmi", lambda: images.remove(store, "x:1")), ("prune", lambda: images.prune(store, all=True))):
        try:
            outcomes[what] = call()
        except LaminaError as e:
            outcomes[what] = e
        if os.path.ismount(g.dest / "mnt"):
            umount(store, g.dest / "mnt")
            # the mount reads snapshots only: the objects their files are linked to are not
            # reached through objects/ (so a symlink there, or in place of lamina/verified,
            # is not on its way)
            assert victim in ("objects/blake3/XX", "lamina/verified"), f"{what}: the image was mounted through the symlink"
        assert snapshot(outside, include_root=True, dir_mtime=True) == before, f"{what} changed {outside}"
    if victim.startswith("snapshots/CHAIN"):
        # a bad snapshot: fsck says so, --repair removes the link (not what it leads to), and
        # the image is whole again (its layer extracted anew) or removed
        assert any(f.kind == "bad-snapshot" and "symlink" in f.message for f in outcomes["fsck"].findings)
        assert not os.path.islink(path)
    else:
        for what, r in outcomes.items():
            if what == "mount" and not isinstance(r, LaminaError):
                continue  # objects/, lamina/verified: harmless (above)
            # mount, rmi, prune of an image whose blobs are out of reach: "not in the store"
            named = "is a symlink" in str(r) and victim.split("/")[0] in str(r)
            assert isinstance(r, LaminaError) and (named or what in ("mount", "rmi", "prune")), f"{what}: {r!r}"
        assert [e["annotations"]["org.opencontainers.image.ref.name"] for e in
                json.load(open(root / "index.json"))["manifests"]] == ["docker.io/library/x:1"]


@pytest.mark.parametrize("lock", ["index.lock", "gc.lock", "blob"])
def test_a_lock_file_replaced_by_a_symlink_is_never_followed(g, lock):
    """Every lock file was opened with O_CREAT, following a symlink: a ``locks/index.lock``,
    ``gc.lock`` or ``blob-<hex>.lock`` planted as a symlink made a copy into the store create
    (as root) the file it named outside the store, or open a device there read-write (opening
    /dev/watchdog arms it).  A lock that is a symlink is refused now, naming it; fsck reports it
    and --repair removes the link (never what it points to), after which the store works."""
    layout = write_image(g.dest / "layout", [Tar().file("a", b"a").bytes()])
    second = write_image(g.dest / "layout2", [Tar().file("b", b"b" * 3000).bytes()])
    root = g.dest / "store"
    lamina(root, "copy", f"oci:{layout}:img", "x:1")
    outside = g.dest / "outside"
    outside.mkdir()
    names = ([f"blob-{n}.lock" for n in os.listdir(os.path.join(second, "blobs", "sha256"))] if lock == "blob"
             else [lock])
    for n in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root / "locks" / n)
        os.symlink(outside / f"made-{n}", root / "locks" / n)
    proc = lamina(root, "copy", f"oci:{second}:img", "y:1", check=False)
    assert os.listdir(outside) == [], proc.stderr
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("lamina: error: ") and "is a symlink" in line and "locks/" in line, proc.stderr
    fsck = lamina(root, "fsck", "--json", check=False)
    assert os.listdir(outside) == [], fsck.stderr
    assert any("symlink" in f["message"] and f["subject"].endswith(".lock")
               for f in json.loads(fsck.stdout)["findings"]), fsck.stdout + fsck.stderr
    lamina(root, "fsck", "--repair", check=False)
    assert os.listdir(outside) == []
    assert not any(os.path.islink(root / "locks" / n) for n in names)
    lamina(root, "copy", f"oci:{second}:img", "y:1")
    assert os.listdir(outside) == []
    lamina(root, "fsck")


@pytest.mark.parametrize("victim", ["index.json", "lamina/config.json", "lamina/holds/k.json"])
@pytest.mark.parametrize("kind", ["fifo", "zero", "outside"])
def test_a_store_document_replaced_by_a_fifo_or_a_symlink_is_refused_naming_it(g, victim, kind):
    """The store's JSON documents were opened following symlinks and read to their end: a FIFO
    planted as index.json (a store in a world-writable directory) hung every command, a symlink
    to /dev/zero read until memory ran out, one to a file outside was parsed as the store's.
    lamina writes each of them whole by a rename, never as a symlink or anything but a regular
    file: anything else is refused at once, naming it."""
    layout = write_image(g.dest / "layout", [Tar().file("a", b"a").bytes()])
    root = g.dest / "store"
    lamina(root, "copy", f"oci:{layout}:img", "x:1")
    path = root / victim
    os.makedirs(path.parent, exist_ok=True)
    outside = g.dest / "outside.json"
    outside.write_bytes(json.dumps({"schemaVersion": 2, "manifests": [], "keep-blobs": False}).encode())
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    {"fifo": lambda: os.mkfifo(path), "zero": lambda: os.symlink("/dev/zero", path),
     "outside": lambda: os.symlink(outside, path)}[kind]()
    readers = {"index.json": ("images", "copy", "fsck"), "lamina/config.json": ("copy",),
               "lamina/holds/k.json": ("fsck",)}
    for args in (["images"], ["copy", f"oci:{layout}:img", "y:1"], ["fsck"]):
        proc = subprocess.run(["prlimit", f"--as={1 << 30}", "--", *LAMINA, "--root", root, *args],
                              capture_output=True, text=True, timeout=60)
        if args[0] not in readers[victim]:
            continue
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (args, proc.stdout, proc.stderr)
        if args[0] == "fsck":   # a finding: the check goes on
            assert f"error: {root / victim} is " in proc.stdout + proc.stderr, (proc.stdout, proc.stderr)
            continue
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith("lamina: error: ") and victim in line, (args, proc.stderr)


@pytest.mark.parametrize("blob", ["manifest", "config", "layer"])
@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_a_blob_replaced_by_a_fifo_or_a_symlink_is_refused_naming_it(g, blob, kind):
    """A stored blob was opened following symlinks and waiting on a FIFO: a manifest or config
    blob replaced by a FIFO (a store in a world-writable directory) hung images, inspect, unpack
    and fsck, a symlink to /dev/zero read until the size limit.  A blob is written whole by a rename, a regular file: anything else is
    refused at once, naming it, and fsck --repair removes it (never what a link points to)."""
    layout = write_image(g.dest / "layout", [Tar().file("a", b"a").bytes()])
    root = g.dest / "store"
    lamina(root, "copy", f"oci:{layout}:img", "x:1")
    manifest = json.load(open(root / "index.json"))["manifests"][0]["digest"]
    doc = json.load(open(root / "blobs" / "sha256" / manifest[7:]))
    digest = {"manifest": manifest, "config": doc["config"]["digest"], "layer": doc["layers"][0]["digest"]}[blob]
    path = root / "blobs" / "sha256" / digest[7:]
    os.unlink(path)
    os.mkfifo(path) if kind == "fifo" else os.symlink("/dev/zero", path)
    for args in (["images"], ["inspect", "x:1"], ["unpack", "x:1", g.dest / "out"]):
        proc = subprocess.run(["prlimit", f"--as={1 << 30}", "--", *LAMINA, "--root", root, *map(str, args)],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            # no command reads a layer blob whose snapshot the store holds
            assert blob == "layer", (args, proc.stderr)
            continue
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith("lamina: error: ") and digest[7:19] in line, (args, proc.stderr)
    # gc (whose reading of what is reachable is tolerant: an unreadable manifest protects itself)
    gc = subprocess.run([sys.executable, "-c", "import sys; from lamina.store import Store; "
                         "Store(sys.argv[1]).gc(dry_run=True)", root], capture_output=True, text=True, timeout=60)
    assert gc.returncode == 0, gc.stderr
    fsck = subprocess.run([*LAMINA, "--root", root, "fsck", "--repair"], capture_output=True, text=True, timeout=60)
    assert digest[7:] in fsck.stdout + fsck.stderr, fsck.stdout + fsck.stderr
    assert not os.path.lexists(path) or os.path.isfile(path) and not os.path.islink(path)


@pytest.mark.parametrize("verb", ["unpack", "mount"])
@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_layer_blob_replaced_before_its_snapshot_is_made_is_refused_naming_it(g, verb, kind):
    """Making a snapshot (unpack or mount of an image whose snapshot is gone) opened the layer blob
    by its path, following symlinks and waiting on a FIFO, where every other read of a blob refuses
    them: a FIFO hung the command, and a symlink to a file outside the store (its bytes, even) was
    extracted as the store's.  Refused at once, naming the blob, nothing made."""
    layout = write_image(g.dest / "layout", [Tar().file("a", b"a").bytes()])
    root = g.dest / "store"
    lamina(root, "copy", f"oci:{layout}:img", "x:1")
    manifest = json.load(open(root / "index.json"))["manifests"][0]["digest"]
    doc = json.load(open(root / "blobs" / "sha256" / manifest[7:]))
    digest = doc["layers"][0]["digest"]
    for snap in os.listdir(root / "snapshots"):
        subprocess.run(["rm", "-rf", "--", root / "snapshots" / snap], check=True)
    path = root / "blobs" / "sha256" / digest[7:]
    outside = g.dest / "outside.blob"
    os.rename(path, outside)
    os.mkfifo(path) if kind == "fifo" else os.symlink(outside, path)
    target = g.dest / "target"
    proc = subprocess.run([*LAMINA, "--root", root, verb, "x:1", target], capture_output=True, text=True, timeout=30)
    if proc.returncode == 0 and verb == "mount":
        subprocess.run([*LAMINA, "--root", root, "umount", target], capture_output=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("lamina: error: ") and digest[7:] in line, proc.stderr
    assert [n for n in os.listdir(root / "snapshots") if not n.startswith(".")] == []


@pytest.mark.parametrize("kind", ["fifo", "dangling"])
def test_a_shared_layers_other_blob_that_is_no_regular_file_is_refused_not_passed_over(tmp_path, kind):
    """verify_shared hashes a layer blob whose snapshot the store made from another blob (the
    check that the blob is that layer), but passed over it silently where the blob was no regular
    file by is_file(), which follows symlinks: a FIFO or a link to nothing planted there was taken
    for no blob at all, where every read of a blob (fsutil.open_own) refuses it, naming it."""
    from storekit import three_images
    from lamina.errors import StoreError
    from lamina.store import Store
    from lamina.store import snapshots

    lay, _ = three_images(tmp_path)
    root = tmp_path / "store"
    lamina(root, "copy", f"oci:{lay.root}:a", "a:1")
    blobs = os.path.join(lay.root, "blobs", "sha256")
    index = json.load(open(os.path.join(lay.root, "index.json")))
    [entry] = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "c"]
    manifest = json.load(open(os.path.join(blobs, entry["digest"][7:])))
    config = json.load(open(os.path.join(blobs, manifest["config"]["digest"][7:])))
    digest, diff_id = manifest["layers"][0]["digest"], config["rootfs"]["diff_ids"][0]
    path = root / "blobs" / "sha256" / digest[7:]
    assert not os.path.lexists(path)
    os.mkfifo(path) if kind == "fifo" else os.symlink(tmp_path / "nothing", path)
    with pytest.raises(StoreError, match=digest[7:]):
        snapshots.verify_shared(Store(root).paths, [digest], [diff_id], [manifest["layers"][0]["mediaType"]])


# --- a blob's name that holds no regular file -------------------------------------------------

@pytest.mark.parametrize("kind", ["symlink-to-a-good-copy", "dangling-symlink"])
def test_a_symlink_at_a_blobs_name_is_no_blob_and_the_next_copy_puts_the_blob_back(g, kind):
    """fsck calls a symlink at a blob's name "not a blob" (lamina makes none) and open_blob refuses
    it, but Store.has_blob followed it (``is_file()``) and the ingest took any name that existed:
    a copy of the image again said the blob "exists" and kept the symlink, so save kept failing.
    A blob is a regular file now, to has_blob and the ingest alike: the copy writes it back."""
    from lamina.store import Store
    raw = Tar().file("a", b"A" * 5000).file("z", b"Z" * 700).bytes()
    layout = write_image(g.dest / "layout", [raw])
    root = g.dest / "store"
    lamina(root, "copy", f"oci:{layout}:img", "x:1")
    store = Store(root)
    (layer,) = [d.digest for d in store.resolve("x:1").layers]
    blob = store.paths.blob(layer)
    copy = g.dest / "copy"
    copy.write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(copy if kind == "symlink-to-a-good-copy" else g.dest / "gone")
    assert not store.has_blob(layer)
    store.close()
    lamina(root, "copy", f"oci:{layout}:img", "x:1")
    assert not blob.is_symlink() and blob.read_bytes() == copy.read_bytes()
    lamina(root, "save", "x:1", "-o", g.dest / "x.tar")
    fsck = lamina(root, "fsck")
    assert fsck.stdout.endswith(": 0 errors, 0 warnings\n"), fsck.stdout
    g.check()
