"""Two ``lamina copy ... oci:DIR`` processes writing into one OCI layout at once.

skopeo (containers/image#513), umoci (#146) and go-containerregistry (#849) all lose an image
there: each writer reads index.json, adds its entry and renames its copy into place, so the last
one wins.  lamina holds a lock on the layout while it writes: the second copy waits, then reads
the index.json the first one left.  The lock also covers a failed copy taking back the blobs it
wrote: the other copy, which skipped a blob because it was already there, must not lose it.

Copy A is paused (a real process, stopped in its second blob write) until copy B has either
finished or is seen waiting for the lock in /proc/locks; no timing is relied on.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import ocibuild as ob
from storekit import LAMINA

# Copy A: the lamina CLI, stopped before its second blob until a line comes on stdin.
_PAUSED_COPY = textwrap.dedent("""
    import sys
    import lamina.transports.oci_write as w
    real, calls = w._copy_blob, []
    def paused(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            print("paused", flush=True)
            sys.stdin.readline()
        return real(*args, **kw)
    w._copy_blob = paused
    from lamina.cli import run
    sys.argv = ["lamina", *sys.argv[1:]]
    sys.exit(run())
""")


def _waiting_for_a_lock(pid):
    """True if ``pid`` is blocked in flock (a ``->`` line of /proc/locks names the waiters)."""
    with open("/proc/locks") as f:
        return any("->" in line and line.split("->", 1)[1].split()[3] == str(pid) for line in f)


def _check_layout(root):
    """{ref name: manifest digest} of the layout's index.json, every blob they reach present
    with its digest."""
    with open(os.path.join(root, "index.json"), "rb") as f:
        entries = json.load(f)["manifests"]

    def blob(digest):
        with open(os.path.join(root, "blobs", "sha256", digest.split(":", 1)[1]), "rb") as f:
            data = f.read()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        return data

    for e in entries:
        manifest = json.loads(blob(e["digest"]))
        for d in [manifest["config"], *manifest["layers"]]:
            blob(d["digest"])
    return {e["annotations"]["org.opencontainers.image.ref.name"]: e["digest"] for e in entries}


@pytest.mark.parametrize("first", ["succeeds", "fails"])
def test_two_copies_into_one_layout(tmp_path, first):
    src = ob.Layout(tmp_path / "src")
    shared = {"shared.bin": b"s" * 40000}
    a = src.add(src.image([shared, {"a.txt": b"a" * 30000}]), ref="a")
    b = src.add(src.image([shared, {"b.txt": b"b" * 30000}]), ref="b")
    if first == "fails":
        # a's own layer (its second blob) is corrupt: a fails after writing the shared layer
        path = src.path(src.read_json(a["digest"])["layers"][1]["digest"])
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 1
        with open(path, "wb") as f:
            f.write(data)
    dst = tmp_path / "dst"
    copy_a = subprocess.Popen([sys.executable, "-c", _PAUSED_COPY, "--root", tmp_path / "root-a", "copy",
                               f"oci:{src.root}:a", f"oci:{dst}:a"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert copy_a.stdout.readline() == "paused\n", copy_a.stderr.read()
        copy_b = subprocess.Popen([*LAMINA, "--root", tmp_path / "root-b", "copy", f"oci:{src.root}:b", f"oci:{dst}:b"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # a hang guard only: the copy is tiny, whichever way it goes
        give_up = time.monotonic() + 300
        while copy_b.poll() is None and not _waiting_for_a_lock(copy_b.pid) and time.monotonic() < give_up:
            time.sleep(0.02)
        _, err_a = copy_a.communicate("go\n", timeout=300)
        _, err_b = copy_b.communicate(timeout=300)
    finally:
        copy_a.kill()
    assert copy_b.returncode == 0, err_b
    if first == "fails":
        assert copy_a.returncode != 0 and "sha256:" in err_a, err_a
        assert _check_layout(dst) == {"b": b["digest"]}
    else:
        assert copy_a.returncode == 0, err_a
        assert _check_layout(dst) == {"a": a["digest"], "b": b["digest"]}
