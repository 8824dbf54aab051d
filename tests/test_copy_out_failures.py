"""A copy or save out of the store that fails part-way (a layer blob corrupted in the store after
the first layer was written) leaves the user's destination as it was.

skopeo, for reference, leaves the blobs it copied before the bad one in an ``oci:`` directory
(and nothing of a ``docker-archive:`` file); lamina leaves nothing: an existing layout keeps its
blobs and its index.json byte for byte, a new directory is not created, an empty one stays empty.
"""
from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

import ocibuild as ob
from conftest import require_tool
from storekit import lamina


def _tree(path):
    """Every path under ``path`` with its bytes (None for a directory); None if it does not exist."""
    if not os.path.lexists(path):
        return None
    out = {}
    for top, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(top, d), path)] = None
        for f in files:
            with open(os.path.join(top, f), "rb") as fh:
                out[os.path.relpath(os.path.join(top, f), path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture
def broken(tmp_path):
    """(store root, tmp dir, bad layer digest, source layout): ``two:1`` in the store with its
    second layer blob changed by one byte; the source layout keeps a good copy."""
    lay = ob.Layout(tmp_path / "src")
    m = lay.image([{"first": b"1" * 50000}, {"second": b"2" * 50000}])
    lay.add(m, ref="two")
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{lay.root}:two", "two:1")
    bad = lay.read_json(m["digest"])["layers"][1]["digest"]
    blob = root / "blobs" / "sha256" / bad.split(":", 1)[1]
    assert blob.is_file(), "the store keeps its layer blobs there"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    return root, tmp_path, bad, lay


def _fails_naming(proc, digest):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and digest in lines[0], proc.stderr


@pytest.mark.parametrize("dest", ["new", "new-parent/sub", "empty", "existing"])
def test_a_failed_copy_to_an_oci_dir_leaves_it_as_it_was(broken, dest):
    root, tmp, bad, _ = broken
    target = tmp / "out" / dest
    (tmp / "out").mkdir()
    if dest == "empty":
        target.mkdir()
    elif dest == "existing":
        other = ob.Layout(target)
        other.add(other.image([{"other": b"o" * 1000}]), ref="other")
    before = _tree(target)
    _fails_naming(lamina(root, "copy", "two:1", f"oci:{target}:two", check=False), bad)
    assert _tree(target) == before
    assert os.listdir(tmp / "out") == ([] if before is None else [dest])


@pytest.mark.parametrize("how", ["oci-archive", "docker-archive", "save"])
def test_a_failed_copy_to_an_archive_leaves_no_file(broken, how):
    root, tmp, bad, _ = broken
    out = tmp / "out"
    out.mkdir()
    args = ["save", "-o", out / "a.tar", "two:1"] if how == "save" else ["copy", "two:1", f"{how}:{out / 'a.tar'}"]
    _fails_naming(lamina(root, *args, check=False), bad)
    assert os.listdir(out) == []


def test_skopeo_leaves_what_it_copied_before_the_bad_blob(broken):
    """The reference: what lamina does better than (an earlier blob stays in skopeo's copy)."""
    skopeo = require_tool("skopeo")
    _, tmp, bad, lay = broken
    with open(lay.path(bad), "r+b") as f:
        at = os.fstat(f.fileno()).st_size // 2
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 1]))
    proc = subprocess.run([skopeo, "copy", f"oci:{lay.root}:two", f"oci:{tmp / 'sk'}:two"], capture_output=True)
    assert proc.returncode != 0
    assert os.listdir(tmp / "sk" / "blobs" / "sha256"), "skopeo now cleans up: lamina's docstring is stale"
