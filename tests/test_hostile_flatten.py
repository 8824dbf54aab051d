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

import pytest

from conftest import require_root
from everypath import run_paths
from layerkit import Guard
from tarbuild import Tar


@pytest.fixture
def g(tmp_path):
    require_root()
    guard = Guard(tmp_path)
    yield guard
    guard.check()


def _store_clean(root):
    """The store at ``root`` has no error fsck finds."""
    from lamina.store import Store
    store = Store(root)
    report = store.fsck()
    assert report.ok, [f"{f.kind} {f.subject}: {f.message}" for f in report.errors]
    return store


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
    from storekit import fingerprint
    from everypath import write_image
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
    assert f"layer {sha256(gz(other))}: diffID" in str(info.value), str(info.value)
    store = Store(root)
    after = fingerprint(root)
    # the liar's blobs were put before add_image refused it: left for gc, never named
    assert after["index"] == before["index"] and after["snapshots"] == before["snapshots"]
    with pytest.raises(errors.LaminaError):
        store.resolve("liar:1")
    _store_clean(root)
    materialize(store, "base:1", g.dest / "base-tree")
    assert (g.dest / "base-tree" / "etc" / "passwd").read_bytes() == b"root:x:0:0::/root:/bin/sh\n"
