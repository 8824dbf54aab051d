"""``lamina pull`` extracts each layer from its bytes as they arrive (store/streaming.py).

A FaultProxy in front of a real docker-registry holds a blob half-sent, so the test can look
at the store mid-transfer: the snapshot is being written already, yet nothing looks complete.
"""
import contextlib
import importlib
import os
import re
import stat
import threading
import time

import pytest

import ocibuild
import treecmp
from registryfixture import FaultProxy, fast_random, kill9_when, reg, registry_env, skopeo_push  # noqa: F401

from lamina import errors
from lamina.registry import pull
from lamina.registry.progress import Reporter
from lamina.store import Store

pull_module = importlib.import_module("lamina.registry.pull")   # lamina.registry.pull is also the function

MiB = 1 << 20
BIG = 6 * MiB


@pytest.fixture(scope="module")
def image(reg, tmp_path_factory):  # noqa: F811
    """stream:1 = a gzip base layer + an uncompressed 6 MiB layer of random bytes."""
    lay = ocibuild.Layout(tmp_path_factory.mktemp("lay") / "oci")
    m = lay.image([{"etc/": None, "etc/os-release": b"ID=stream\n"}, {"etc/big.bin": fast_random(BIG, 5)}],
                  compress=False)
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "stream:1", extra=("--preserve-digests",))
    layers = lay.read_json(m["digest"])["layers"]
    return {"manifest": m["digest"], "big": layers[1], "base": layers[0]}


@pytest.fixture
def proxy(reg):  # noqa: F811
    p = FaultProxy(reg.host)
    yield p
    p.stop()


def _tmp_snapshots(root):
    return sorted((root / "snapshots").glob(".tmp-*"))


@contextlib.contextmanager
def _pull_held_at(proxy, store, blob, held, ref="stream:1"):
    """Pull stream:1 on a thread while ``blob`` stops after ``held`` bytes; the body of the with
    block looks at the store mid-transfer, then the rest comes (with Range) and the pull must work."""
    proxy.add("hang", path=f"/blobs/{blob['digest']}", after=held)
    failure = []

    def run():
        try:
            pull(f"{proxy.host}/{ref}", store=store)
        except BaseException as e:  # reported below
            failure.append(e)

    t = threading.Thread(target=run)
    t.start()
    try:
        assert proxy.hang_reached.wait(60), "the pull never reached the blob"
        yield
    finally:
        proxy.release_hang.set()   # the proxy then cuts the connection: the rest comes with Range
        t.join(60)
    assert not failure, failure


def _wait_for(found, failure, timeout=30):
    deadline = time.monotonic() + timeout
    while not found():
        assert time.monotonic() < deadline, failure
        time.sleep(0.02)


def test_snapshot_is_written_while_the_blob_downloads(proxy, image, registry_env):  # noqa: F811
    big = image["big"]
    held = 3 * MiB
    root = registry_env / "root"
    store = Store(root)
    with _pull_held_at(proxy, store, big, held):
        # The extractor is writing big.bin from the 3 MiB that arrived; the download is not over.
        _wait_for(lambda: [p for p in (s / "fs" / "etc" / "big.bin" for s in _tmp_snapshots(root))
                           if p.exists() and p.stat().st_size >= 2 * MiB],
                  "nothing was extracted before the download finished")
        assert not store.has_blob(big["digest"])
        assert store.snapshots() == [] or all(s.digest != big["digest"] for s in store.snapshots())
    img = store.resolve(f"{proxy.host}/stream:1")
    assert (store.snapshots_for(img)[1] / "etc" / "big.bin").read_bytes() == fast_random(BIG, 5)
    assert proxy.bytes_for(big["digest"]) == big["size"]   # resumed, not restarted
    gets = proxy.requests_for(f"/blobs/{big['digest']}", "GET")
    assert gets[-1][2]["Range"] == f"bytes={held}-"
    assert _tmp_snapshots(root) == []


def test_a_finished_layer_is_deduplicated_while_a_later_one_downloads(proxy, image, registry_env):  # noqa: F811
    """The dedup pass of a streamed layer runs once its snapshot is committed, not after the whole
    pull: the base layer's file list (written by the pass) is there while the big blob is held."""
    big = image["big"]
    root = registry_env / "root"
    store = Store(root)

    def lists():   # written by the dedup pass of a committed snapshot
        return list((root / "snapshots").glob("[0-9a-f]*/files.lz4"))

    with _pull_held_at(proxy, store, big, 3 * MiB):
        _wait_for(lists, "the base layer was not deduplicated during the download")
        assert not store.has_blob(big["digest"])
    assert len(lists()) == 2


def test_streamed_snapshots_equal_extract_after_download(reg, image, registry_env, monkeypatch):  # noqa: F811
    ref = f"{reg.host}/stream:1"
    streamed = Store(registry_env / "streamed")
    pull(ref, store=streamed)
    monkeypatch.setenv("LAMINA_PULL_STREAM", "0")
    plain = Store(registry_env / "plain")
    pull(ref, store=plain)
    a = streamed.snapshots_for(streamed.resolve(ref))
    b = plain.snapshots_for(plain.resolve(ref))
    for i, (x, y) in enumerate(zip(a, b)):
        treecmp.assert_same(treecmp.snapshot(y), treecmp.snapshot(x), labels=("after download", "streamed"),
                            context=f"layer {i}")
    assert [(s.chain_id, s.entries, s.tar_bytes) for s in streamed.snapshots()] == \
           [(s.chain_id, s.entries, s.tar_bytes) for s in plain.snapshots()]


def test_corrupt_blob_leaves_no_snapshot_and_no_blob(proxy, image, registry_env):  # noqa: F811
    big = image["big"]
    proxy.add("corrupt", path=f"/blobs/{big['digest']}", offset=BIG // 2, times=None)
    root = registry_env / "root"
    store = Store(root)
    with pytest.raises(errors.DigestMismatchError) as e:
        pull(f"{proxy.host}/stream:1", store=store)
    assert e.value.expected == big["digest"]   # the blob's digest, not a confusing diffID error
    assert len(proxy.requests_for(f"/blobs/{big['digest']}", "GET")) == 2   # one fresh retry
    assert not store.has_blob(big["digest"])
    assert all(s.digest != big["digest"] for s in store.snapshots())
    assert _tmp_snapshots(root) == []


def test_wrong_diffid_keeps_the_good_blob_but_no_snapshot(reg, registry_env, tmp_path):  # noqa: F811
    lay = ocibuild.Layout(tmp_path / "oci")
    m = lay.image([{"f": b"content"}], diff_ids=["sha256:" + "1" * 64])
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "baddiff:1", extra=("--preserve-digests",))
    layer = lay.read_json(m["digest"])["layers"][0]
    root = registry_env / "root"
    store = Store(root)
    with pytest.raises(errors.DigestMismatchError, match="diffID") as e:
        pull(f"{reg.host}/baddiff:1", store=store)
    assert e.value.expected == "sha256:" + "1" * 64
    assert store.has_blob(layer["digest"])   # the blob verified: a later pull need not fetch it again
    assert store.snapshots() == [] and _tmp_snapshots(root) == []


def test_killed_pull_restarts_the_extraction_cleanly(proxy, image, registry_env):  # noqa: F811
    """kill -9 mid-blob leaves a partial blob and a half-written snapshot dir; the next pull resumes
    the download with Range, replays the partial into a fresh extraction and removes the debris."""
    import subprocess
    import sys
    big = image["big"]
    held = 3 * MiB
    proxy.add("hang", path=f"/blobs/{big['digest']}", after=held)
    root = registry_env / "root"
    ref = f"{proxy.host}/stream:1"
    child = subprocess.Popen([sys.executable, "-m", "lamina", "--root", str(root), "pull", ref],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = root / "ingest" / f"{big['digest'][7:]}.partial"

    def extracting_with_all_held_bytes_saved():
        # the proxy has *sent* the held bytes; the kill comes once the pull has saved them all
        # (else the resume would rightly start earlier) and its extraction is under way
        return (partial.exists() and partial.stat().st_size == held
                and any((p / "fs" / "etc" / "big.bin").exists() for p in _tmp_snapshots(root)))

    kill9_when(proxy, child, extracting_with_all_held_bytes_saved, "no extraction in progress")
    debris = _tmp_snapshots(root)
    assert debris and partial.stat().st_size == held
    proxy.clear()
    store = Store(root)
    pull(ref, store=store)
    assert proxy.requests_for(f"/blobs/{big['digest']}", "GET")[-1][2]["Range"] == f"bytes={held}-"
    assert proxy.bytes_for(big["digest"]) == big["size"]
    img = store.resolve(ref)
    assert (store.snapshots_for(img)[1] / "etc" / "big.bin").read_bytes() == fast_random(BIG, 5)
    assert _tmp_snapshots(root) == []


def test_a_layer_waiting_for_the_layers_below_keeps_downloading(reg, proxy, registry_env, tmp_path):  # noqa: F811
    """The top layer's etc/huge.bin needs etc/ from the base layer, whose blob the proxy holds:
    the extraction waits, the download does not (the link would idle, then carry the rest later).
    The proxy's write of the 32 MiB body completes only once the client read nearly all of it
    (socket buffers hold a few MiB); a paused download stops at the extractor's buffers."""
    huge = 32 * MiB
    lay = ocibuild.Layout(tmp_path / "oci")
    m = lay.image([{"etc/": None, "etc/os-release": b"ID=wait\n"}, {"etc/huge.bin": fast_random(huge, 9)}],
                  compress=False)
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "wait:1", extra=("--preserve-digests",))
    base, top = lay.read_json(m["digest"])["layers"]
    root = registry_env / "root"
    store = Store(root)
    with _pull_held_at(proxy, store, base, 1024, ref="wait:1"):
        _wait_for(lambda: proxy.bytes_for(top["digest"]) == top["size"],
                  "the top layer's download paused while its extraction waited for the base layer")
        assert store.snapshots() == []   # nothing committed: the base is still held
    img = store.resolve(f"{proxy.host}/wait:1")
    assert (store.snapshots_for(img)[1] / "etc" / "huge.bin").read_bytes() == fast_random(huge, 9)
    assert proxy.bytes_for(top["digest"]) == top["size"]   # downloaded once
    assert _tmp_snapshots(root) == []


def test_an_upper_layer_with_an_early_whiteout_extracts_while_the_layer_below_downloads(reg, proxy, registry_env,
                                                                                      tmp_path):  # noqa: F811
    """``rm -rf`` of a file of the layer below, early in the upper layer (etc/ then
    etc/.wh.os-release): whether the whiteout is made depends on the layers below alone, so the
    upper layer holds it and writes the rest of its entries while the base's blob is held after
    1 KiB.  It waited at the whiteout for the base's tree, so nothing after it was written before
    the base had all arrived.  Once the base is there the whiteout is made (os-release is gone
    from the image) and the whiteout of a name no layer has is not."""
    lay = ocibuild.Layout(tmp_path / "oci")
    upper = {"etc/": None, "etc/.wh.os-release": b"", "etc/.wh.not-below": b""}
    upper.update({f"etc/f{i:03d}": b"%d\n" % i for i in range(100)})
    upper["etc/late.bin"] = fast_random(MiB, 21)
    m = lay.image([{"etc/": None, "etc/os-release": b"ID=wh\n", "etc/big.bin": fast_random(BIG, 22)}, upper],
                  compress=False)
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "wh:1", extra=("--preserve-digests",))
    base = lay.read_json(m["digest"])["layers"][0]
    diff_ids = lay.read_json(lay.read_json(m["digest"])["config"]["digest"])["rootfs"]["diff_ids"]
    upper_chain = pull_module.chain_ids(diff_ids)[1]
    root = registry_env / "root"
    store = Store(root)
    with _pull_held_at(proxy, store, base, 1024, ref="wh:1"):
        _wait_for(lambda: _late_written(root, upper_chain),
                  "the upper layer stopped at its whiteout until the base layer had arrived")
        assert store.snapshots() == []   # nothing committed: the base is still held
        assert proxy.bytes_for(base["digest"]) < base["size"]
    img = store.resolve(f"{proxy.host}/wh:1")
    fs = store.snapshots_for(img)[1] / "etc"
    st = os.lstat(fs / "os-release")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert not os.path.lexists(fs / "not-below")
    assert (fs / "late.bin").read_bytes() == fast_random(MiB, 21)
    assert _tmp_snapshots(root) == []


class _Arrivals(Reporter):
    """Every progress report of every blob, in the order they came (one list for all blobs)."""

    def __init__(self):
        self.events = []
        self._lock = threading.Lock()

    def progress(self, digest, done, total):
        with self._lock:
            self.events.append((digest, done))


@pytest.fixture(scope="module")
def tall(reg, tmp_path_factory):  # noqa: F811
    """turns:1 = three 6 MiB layers of random bytes (uncompressed), each one directory deeper."""
    lay = ocibuild.Layout(tmp_path_factory.mktemp("lay") / "oci")
    m = lay.image([{"a/": None, "a/one.bin": fast_random(BIG, 11)},
                   {"a/b/": None, "a/b/two.bin": fast_random(BIG, 12)},
                   {"a/b/c/": None, "a/b/c/three.bin": fast_random(BIG, 13)}], compress=False)
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "turns:1", extra=("--preserve-digests",))
    return lay.read_json(m["digest"])["layers"]


def test_layers_take_the_link_in_turns_bottom_first(reg, tall, registry_env, monkeypatch):  # noqa: F811
    """Over a shared link, concurrent downloads all end at its end, and every extraction tail
    comes after that (an upper layer even waits for the snapshots below while its bytes pile
    up).  So each blob starts only once the one below it has at most TURN_OVERLAP bytes left:
    the first byte of a layer arrives after the layer below it has nearly all arrived."""
    overlap = 1 * MiB
    monkeypatch.setattr(pull_module, "TURN_OVERLAP", overlap)
    monkeypatch.setattr(pull_module, "TURN_STALL", 600.0)   # no stall on a loaded machine lets one through
    rec = _Arrivals()
    store = Store(registry_env / "root")
    pull(f"{reg.host}/turns:1", store=store, reporter=rec)
    for below, above in zip(tall, tall[1:]):
        first = next(k for k, (d, _) in enumerate(rec.events) if d == above["digest"])
        arrived = max((done for d, done in rec.events[:first] if d == below["digest"]), default=0)
        assert arrived >= below["size"] - overlap, (below["digest"], arrived, below["size"])
    img = store.resolve(f"{reg.host}/turns:1")
    dirs = store.snapshots_for(img)
    assert (dirs[2] / "a" / "b" / "c" / "three.bin").read_bytes() == fast_random(BIG, 13)


def test_a_stalled_blob_lets_the_next_ones_take_the_link(proxy, tall, registry_env, monkeypatch):  # noqa: F811
    """The bottom blob held mid-transfer (a stalled connection): after TURN_STALL seconds without
    a byte the next layers download meanwhile, rather than leave the link idle."""
    monkeypatch.setattr(pull_module, "TURN_OVERLAP", 1 * MiB)
    monkeypatch.setattr(pull_module, "TURN_STALL", 0.2)
    store = Store(registry_env / "root")
    bottom, middle, top = tall
    with _pull_held_at(proxy, store, bottom, 2 * MiB, ref="turns:1"):
        _wait_for(lambda: proxy.bytes_for(middle["digest"]) == middle["size"]
                  and proxy.bytes_for(top["digest"]) == top["size"],
                  "the layers above a stalled blob never downloaded")
    img = store.resolve(f"{proxy.host}/turns:1")
    assert (store.snapshots_for(img)[0] / "a" / "one.bin").read_bytes() == fast_random(BIG, 11)


@pytest.fixture(scope="module")
def early(reg, tmp_path_factory):  # noqa: F811
    """early:1 = a base layer with etc/, then a layer whose etc/late.bin needs that etc/ (its
    directory comes from below): the upper layer cannot write it before it has the base's tree."""
    lay = ocibuild.Layout(tmp_path_factory.mktemp("lay") / "oci")
    m = lay.image([{"etc/": None, "etc/os-release": b"ID=early\n"}, {"etc/late.bin": fast_random(MiB, 21)}])
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "early:1", extra=("--preserve-digests",))
    manifest = lay.read_json(m["digest"])
    diff_ids = lay.read_json(manifest["config"]["digest"])["rootfs"]["diff_ids"]
    return {"layers": manifest["layers"], "chains": pull_module.chain_ids(diff_ids)}


def _gate_commit_of(monkeypatch, root, chain, until, then=None):
    """Hold the sync of snapshot ``chain``'s dedup pass (hence its claim and commit; the swaps
    of the pass, before it, may not be held: the tree is handed over after them) until
    ``until()`` is true (a failure after 30 s), then run ``then()`` (which may raise) or the
    real sync."""
    from lamina.store import objects
    real = objects.dedup_snapshot

    def gated(paths, snapshot_dir, *a, sync=None, **kw):
        if sync is not None and os.path.basename(snapshot_dir).startswith(f".tmp-{chain[7:]}-"):
            real_sync = sync

            def sync():
                deadline = time.monotonic() + 30
                while not until():
                    if time.monotonic() > deadline:
                        raise AssertionError("the layer above never went on before this layer's commit")
                    time.sleep(0.02)
                if then is not None:
                    then()
                real_sync()
        return real(paths, snapshot_dir, *a, sync=sync, **kw)

    monkeypatch.setattr(objects, "dedup_snapshot", gated)


def _late_written(root, chain):
    return any(p.exists() and p.stat().st_size == MiB
               for p in (root / "snapshots").glob(f".tmp-{chain[7:]}-*/fs/etc/late.bin"))


def test_an_upper_layer_goes_on_over_a_final_tree_before_its_commit(reg, early, registry_env, monkeypatch):  # noqa: F811
    """A streamed layer hands its tree to the layers above once it is final (diffID and blob
    verified, the swaps of its dedup pass done), before the rest of that pass (sync, claim) and
    its commit: at the end of a pull the top layers no longer wait for the dedup pass of the
    one below them.  Its own commit still comes after theirs."""
    root = registry_env / "root"
    base, upper = early["chains"]
    _gate_commit_of(monkeypatch, root, base, lambda: _late_written(root, upper))
    store = Store(root)
    pull(f"{reg.host}/early:1", store=store)
    img = store.resolve(f"{reg.host}/early:1")
    dirs = store.snapshots_for(img)
    assert (dirs[1] / "etc" / "late.bin").read_bytes() == fast_random(MiB, 21)
    assert (dirs[0] / "etc" / "os-release").read_bytes() == b"ID=early\n"
    assert {s.chain_id for s in store.snapshots()} == {base, upper}
    assert _tmp_snapshots(root) == []


def test_a_lower_failing_after_handing_its_tree_over_commits_nothing_above(reg, early, registry_env,
                                                                            monkeypatch):  # noqa: F811
    """The base fails after the upper layer extracted over its tree: the upper is never committed
    (a snapshot is only ever committed over committed snapshots), and no temp dir is left."""
    import errno
    root = registry_env / "root"
    base, upper = early["chains"]

    def fail():
        raise OSError(errno.EIO, "disk gone")

    _gate_commit_of(monkeypatch, root, base, lambda: _late_written(root, upper), then=fail)
    store = Store(root)
    # named by its layer since 2cec3fc (a store error: never retried as a network one), and its place
    with pytest.raises(errors.StoreError,
                       match=re.escape(f"layer 1 of 2 ({early['layers'][0]['digest']}): storing its snapshot failed: disk gone")):
        pull(f"{reg.host}/early:1", store=store)
    assert store.snapshots() == []
    assert _tmp_snapshots(root) == []


def test_a_failed_pull_has_removed_what_its_other_layers_left_when_it_returns(reg, proxy, registry_env,  # noqa: F811
                                                                             tmp_path):
    """Layer 0 is refused (a whiteout of '.' after a big file, sent slowly); layer 1's blob is
    held; layer 2, extracted meanwhile, waits for both to settle its tree and is stopped when
    layer 0 fails.  Its half-made snapshot is removed before pull() raises, not by a detached
    process afterwards (as for Ctrl-C): a caller that looks at the store, or removes it, right
    after the failure finds nothing still changing."""
    import tarbuild
    refused = tarbuild.Tar()
    refused.file("a/f", fast_random(MiB, 21))
    refused.entry("b/.wh..", b"")
    held = tarbuild.Tar()
    held.file("h", fast_random(MiB, 22))
    upper = tarbuild.Tar()
    upper.file("c", b"upper")
    lay = ocibuild.Layout(tmp_path / "oci")
    m = lay.image_of_tars([refused.bytes(), held.bytes(), upper.bytes()])
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "stopped:1", extra=("--preserve-digests",))
    blobs = lay.read_json(m["digest"])["layers"]
    root = registry_env / "root"
    store = Store(root)
    proxy.add("slow", path=f"/blobs/{blobs[0]['digest']}", chunk=16 << 10, delay=0.01)
    proxy.add("hang", path=f"/blobs/{blobs[1]['digest']}", after=64 << 10)
    failure = []

    def run():
        try:
            pull(f"{proxy.host}/stopped:1", store=store)
        except BaseException as e:
            failure.append(e)

    t = threading.Thread(target=run)
    t.start()
    try:
        assert proxy.hang_reached.wait(60), "the pull never reached layer 1's blob"
        _wait_for(lambda: len(_tmp_snapshots(root)) == 3, "not every layer's extraction started")
        # layer 0 refused, layer 2 stopped: only the held layer 1 is still being made
        _wait_for(lambda: len(_tmp_snapshots(root)) == 1, "layer 0 was not refused")
    finally:
        proxy.release_hang.set()
        t.join(60)
    assert len(failure) == 1 and isinstance(failure[0], errors.InvalidWhiteoutError), failure
    assert sorted(os.listdir(root / "snapshots")) == []
    removers = [pid for pid in os.listdir("/proc") if pid.isdigit() and b"remove_tree" in _cmdline(pid)]
    assert removers == []


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_a_failed_pull_reports_its_cause_not_a_layer_it_stopped():
    """A refused layer stops the others: one waiting for it ends with Cancelled, one over it with
    NeedsLowers (its lowers failed).  The pull raised whichever thread's error it saw first, so a
    refused image sometimes failed with NeedsLowers, an internal exception, not a LaminaError (the
    fuzzer's registry-pull path, seed 20903).  The cause is reported, the lowest layer's of several."""
    from lamina.registry.blobstream import Cancelled as TransferCancelled
    from lamina.registry.pull import _cause
    lower = errors.InvalidWhiteoutError("layer 1 of 3: entry 'b/.wh..'")
    lower.layer_index = 0
    upper = errors.InvalidArchiveError("layer 3 of 3: entry 'x'")
    upper.layer_index = 2
    stopped, over, transfer = errors.Cancelled("layer 2 of 3: stopped"), errors.NeedsLowers("root"), TransferCancelled()
    assert _cause([over, stopped, transfer, upper, lower]) is lower
    assert _cause([over, None, upper]) is upper
    network = errors.RegistryError("blob sha256:…: connection reset")
    assert _cause([stopped, network]) is network
    assert _cause([stopped, over]) is stopped
