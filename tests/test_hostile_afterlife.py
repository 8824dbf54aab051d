"""Hostile images and the store's life afterwards: what rmi, gc and fsck do with what an image
stored.

Oracles: every path of everypath.py for the trees, fsck for the store's consistency, the
Guard (nothing outside the test's directory changed), and the reference tools where they
have an answer.
"""
from __future__ import annotations

import json
import os
import subprocess

from everypath import assert_agree, describe, run_paths, write_image
from storekit import lamina
from tarbuild import Tar


def _fsck(root):
    proc = lamina(root, "fsck", "--format", "json", check=False)
    return json.loads(proc.stdout)["findings"]


def _chains(root):
    return sorted(n for n in os.listdir(root / "snapshots") if not n.startswith("."))


# --- a snapshot two images share through different blobs --------------------------------------

def test_fsck_checks_a_shared_snapshot_after_the_image_that_brought_its_blob_is_removed(g):
    """One layer, two blobs: image a loaded from a docker-archive (the plain tar) and image b
    copied from a layout (gzip) share the layer's snapshot, which names the blob it was made
    from.  After ``rmi a`` that blob is gone and fsck only warned it could not verify the
    snapshot, so a file changed in it went unseen (exit 0) though b's blob was there.  Now fsck
    checks it against b's blob: the change is an error, and --repair puts the layer back."""
    base = Tar().dir("etc").file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n" * 20).file("bin", b"b" * 4000).bytes()
    top = Tar().file("top", b"t").bytes()
    root = g.dest / "store"
    a = write_image(g.dest / "a", [base])
    subprocess.run(["skopeo", "copy", "-q", f"oci:{a}:img", f"docker-archive:{g.dest / 'a.tar'}:a:1"], check=True)
    lamina(root, "load", "-i", g.dest / "a.tar")
    lamina(root, "copy", f"oci:{write_image(g.dest / 'b', [base, top])}:img", "b:1")
    lamina(root, "rmi", "a:1")
    assert _fsck(root) == []
    want = assert_agree(run_paths(g.dest / "paths", [base, top], paths=("dir", "store-copy")),
                        context=describe([base, top]))

    (chain,) = [c for c in _chains(root) if (root / "snapshots" / c / "fs" / "etc").is_dir()]
    victim = root / "snapshots" / chain / "fs" / "etc" / "passwd"
    st = os.lstat(victim)
    data = victim.read_bytes()
    os.unlink(victim)  # a new inode: the store's object stays as it was (unused now: a warning)
    victim.write_bytes(data.replace(b"root:x:0:0", b"toor:x:0:0"))
    os.chmod(victim, st.st_mode & 0o7777)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = lamina(root, "fsck", "--format", "json", check=False)
    found = json.loads(proc.stdout)["findings"]
    errors = [f for f in found if f["severity"] == "error"]
    assert proc.returncode == 1 and [f["kind"] for f in errors] == ["bad-snapshot"], found
    assert "etc/passwd" in errors[0]["message"], found

    lamina(root, "fsck", "--repair")
    assert _fsck(root) == []
    lamina(root, "unpack", "b:1", g.dest / "b-after")
    from treecmp import compare, snapshot
    diff = compare(want, snapshot(g.dest / "b-after"), labels=("every path", "b after fsck --repair"))
    assert not diff, diff
    g.check()
