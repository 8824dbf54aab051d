"""Differential fuzzer of round trips: random stacks through a registry and an archive and back.

test_fuzz_paths.py's stacks (PAX and GNU names, sparse files, device nodes, hardlinks, xattrs,
whiteouts and opaque markers ...), where lamina takes them, go

    copy into a store (keeping blobs, or compact: keep-blobs false, each layer rebuilt from its
    snapshot and tar-split sidecar when it leaves) -> push to a loopback docker-registry ->
    pull into a second store (compact or not) -> push from it to another repository ->
    pull into a third -> save as a docker-archive or an oci-archive -> skopeo copy of that
    archive to a docker-archive -> load of skopeo's archive into a fourth store

and each image on the way must hold the stack's layers (every layer blob read back by skopeo,
from the second repository and from lamina's archive, hashes to the stack's diffID) and give the
stack's tree (the third and fourth stores' flatten, and the unpack of skopeo's OCI copy of the
second repository, are the dir unpack of the stack's own layout).

Seeded and bounded for CI (LAMINA_FUZZ_EXAMPLES: default 100, which here is 4 stacks, some
10 s); LAMINA_FUZZ_SEED=N explores others, LAMINA_FUZZ_SHRINK=0 reports a failing stack as drawn:

    LAMINA_FUZZ_EXAMPLES=2500 LAMINA_FUZZ_SEED=7 LAMINA_FUZZ_SHRINK=0 python -m pytest tests/test_fuzz_roundtrip.py
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import time

from hypothesis import given, seed, settings
from hypothesis import strategies as st

import test_fuzz_paths as fz
from conftest import require_tool
from everypath import TAG, _registry_client, _repos, assert_agree, describe, made_now, shared_registry, write_image
from test_fuzz_paths import host  # noqa: F401  (the fixture)
from test_fuzz_store import archive_diff_ids, layout_diff_ids
from treecmp import snapshot

SETTINGS = settings(fz.SETTINGS, max_examples=max(1, fz.EXAMPLES // 25))


def _store(path, compact):
    from lamina.store import Store
    store = Store(path)
    if compact:
        store.set_config("keep-blobs", "false")
    return store


def _skopeo(*args):
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"skopeo {' '.join(args)}: {proc.stderr}"


@seed(20261206 + fz.SEED)
@SETTINGS
@given(data=st.data())
def test_a_stack_comes_back_whole_through_push_pull_save_and_skopeo(host, data):  # noqa: F811
    import lamina
    import lamina.errors
    from lamina.registry import push
    from lamina.store.materialize import materialize
    from lamina.transports import copy, save

    require_tool("skopeo")
    layers = data.draw(fz.deep_stacks(str(host), layers=fz.DEEP_LAYERS_LIGHT) if data.draw(fz.deep_light()) else
                       fz.held_stacks(str(host)) if data.draw(fz.chance(fz.HELD_SHARE)) else fz.stacks(str(host)))
    raw = fz.build(layers)
    # (gzip and plain only: skopeo's docker-archive holds no zstd layer, docker's has none)
    tars = fz.build(layers, data.draw(fz.encodings(len(layers), fz.UMOCI_ENCODINGS)))
    compact = data.draw(st.lists(st.booleans(), min_size=4, max_size=4))
    archive = data.draw(st.sampled_from(["docker-archive", "oci-archive"]))
    fz._count_case()
    box = fz.Sandbox(host)
    work = box.guard.dest
    since = int(time.time()) - 1

    def tree(path):
        return made_now(snapshot(path, include_root=True, dir_mtime=True), since)
    try:
        context = describe(raw) + f"\ncompact stores: {compact}, saved as {archive}"
        layout = write_image(os.path.join(work, "layout"), tars)
        try:
            want = tree(lamina.unpack(f"oci:{layout}:{TAG}", os.path.join(work, "dir")).dest)
        except lamina.errors.LaminaError:
            return  # refused: whether every path refuses it too is test_fuzz_paths.py's
        diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in raw]
        reg = shared_registry()
        client = _registry_client(reg.host)
        repo = f"{reg.host}/roundtrip{next(_repos)}-{os.getpid()}"
        one, two = f"{repo}/one:{TAG}", f"{repo}/two:{TAG}"

        first = _store(os.path.join(work, "s1"), compact[0])
        copy(f"oci:{layout}:{TAG}", "x:1", store=first)
        push(one, store=first, source="x:1", client=client)
        second = _store(os.path.join(work, "s2"), compact[1])
        lamina.pull(one, store=second, client=client)
        push(two, store=second, source=one, client=client)
        third = _store(os.path.join(work, "s3"), compact[2])
        lamina.pull(two, store=third, client=client)
        assert list(third.resolve(two).diff_ids) == diff_ids, f"pushed twice, the diffIDs changed\n{context}"
        materialize(third, two, os.path.join(work, "s3-tree"))
        trees = {"dir": want, "pulled-twice": tree(os.path.join(work, "s3-tree"))}

        skopeo_layout = os.path.join(work, "skopeo-oci")
        _skopeo("copy", "-q", "--src-tls-verify=false", f"docker://{two}", f"oci:{skopeo_layout}:{TAG}")
        ids, hashed = layout_diff_ids(skopeo_layout)
        assert ids == hashed == diff_ids, f"skopeo's copy of the twice-pushed image: layers {hashed}, " \
                                          f"config {ids}\n{context}"
        trees["skopeo-oci"] = tree(lamina.unpack(f"oci:{skopeo_layout}:{TAG}", os.path.join(work, "skopeo-dir")).dest)

        saved, again = os.path.join(work, "saved.tar"), os.path.join(work, "again.tar")
        save([two], saved, store=third, format=archive)
        ids, hashed = archive_diff_ids(saved)
        assert ids == hashed == diff_ids, f"save: layers {hashed}, config {ids}\n{context}"
        _skopeo("copy", "-q", f"{archive}:{saved}", f"docker-archive:{again}:y:1")
        fourth = _store(os.path.join(work, "s4"), compact[3])
        copy(f"docker-archive:{again}", "y:1", store=fourth)
        assert list(fourth.resolve("y:1").diff_ids) == diff_ids, f"loaded from skopeo's archive\n{context}"
        materialize(fourth, "y:1", os.path.join(work, "s4-tree"))
        trees["saved-skopeo-loaded"] = tree(os.path.join(work, "s4-tree"))
        assert_agree(trees, context=context)
        for name, store in (("first", first), ("second", second), ("third", third), ("fourth", fourth)):
            findings = store.fsck().findings
            assert findings == [], f"{context}\nfsck of the {name} store: " + "; ".join(
                f"{f.severity}: {f.subject}: {f.message}" for f in findings)
    finally:
        box.close()
