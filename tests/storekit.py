"""Helpers for the store tests: small images, CLI runs, and a fingerprint of a store's content."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import ocibuild as ob

LAMINA = [sys.executable, "-m", "lamina"]


def lamina(root, *args, check=True, **kw):
    """Run the lamina CLI against a store; returns the CompletedProcess."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    proc = subprocess.run([*LAMINA, "--root", os.fspath(root), *map(str, args)], **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"lamina {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def seeded_bytes(seed, size):
    """Incompressible but reproducible bytes (so gzip cannot shrink a 'big' layer)."""
    out, counter = bytearray(), 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest() * 1
        counter += 1
    return bytes(out[:size])


def shared_base_layouts(root, base_size=4 << 20):
    """One OCI layout with two images that share a big base layer: ``a:1`` and ``b:1``."""
    lay = ob.Layout(root)
    base = {"base": None, "base/big.bin": seeded_bytes("base", base_size), "etc": None,
            "etc/os-release": b"ID=lamina-test\n"}
    a = lay.image([base, {"a.txt": b"image a\n"}])
    b = lay.image([base, {"b.txt": b"image b\n", ".wh.etc": b""}])
    lay.add(a, "a:1")
    lay.add(b, "b:1")
    return lay, a, b


def fingerprint(root):
    """What a store holds, for 'unchanged' assertions: index.json entries, blob names,
    snapshot names, ingest files.  Lock files are excluded (taking a lock creates them)."""
    root = os.fspath(root)

    def names(sub):
        path = os.path.join(root, sub)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    with open(os.path.join(root, "index.json")) as f:
        index = json.load(f)["manifests"]
    return {"index": index, "blobs": names("blobs/sha256"), "snapshots": names("snapshots"),
            "ingest": names("ingest")}


def du(path):
    """Bytes on disk under path, hardlinks once (like du -s --bytes of allocated blocks)."""
    out = subprocess.run(["du", "-s", "-B1", os.fspath(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def assert_fsck_clean(store, what):
    """The ``Store``'s fsck finds nothing; else fail with ``what`` and every finding."""
    report = store.fsck()
    assert list(report.findings) == [], f"{what}: " + "; ".join(
        f"{f.severity}: {f.subject}: {f.message}" for f in report.findings)


def three_images(parent):
    """An OCI layout under ``parent`` with a and b sharing their base layer (whose files dedup
    shares among themselves), and c over the same base layer shipped as another blob
    (uncompressed): (layout, {ref: treecmp snapshot of ``lamina unpack oci:`` of it})."""
    from treecmp import snapshot
    lay = ob.Layout(parent / "layout")
    base = {"etc": None, "etc/os-release": b"ID=crash\n", "usr": None}
    for i in range(30):
        base[f"usr/f{i}"] = b"%d\n" % (i % 5) * 40
    lay.add(lay.image([base, {"a.txt": b"image a\n", "a2.txt": b"0\n" * 40}]), "a")
    lay.add(lay.image([base, {"b.txt": b"image b\n", ".wh.etc": b""}]), "b")
    lay.image_of_tars([ob.Encoded(ob.tar_bytes(base), "plain"), ob.tar_bytes({"c.txt": b"image c\n"})], "c")
    trees = {}
    for ref in "abc":
        dest = parent / f"tree-{ref}"
        subprocess.run([*LAMINA, "unpack", f"oci:{lay.root}:{ref}", dest], check=True, capture_output=True)
        trees[ref] = snapshot(dest)
    return lay, trees


def pushed_three(lay, parent, repo):
    """A registry under ``parent`` serving ``three_images`` as repo:a, repo:b and repo:c (a
    generator, for a fixture to yield from)."""
    from registryfixture import Registry, skopeo_push
    r = Registry(parent)
    try:
        for ref in "abc":
            skopeo_push(f"oci:{lay.root}:{ref}", r.host, f"{repo}:{ref}", extra=("--preserve-digests",))
        yield r
    finally:
        r.stop()
