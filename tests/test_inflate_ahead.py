"""A flat unpack inflates each layer ahead, while the one below it is written (inflate_ahead).

The layers are still written strictly in order; what these tests check is that each one's
stage 1 really started early (on the core the layer below leaves idle), that the tree is the
one a plain unpack writes, and that a failure anywhere leaves no stage running and no blob open.
"""
import dataclasses
import importlib
import os
import threading
import time

import pytest

import lamina
import lamina.layer
import ocibuild as ob
from layerkit import zst
from lamina.errors import DigestMismatchError, LaminaError
from lamina.oci.image import Source
from lamina.oci.layout import open_layout_dir
from treecmp import assert_same, snapshot

unpack_mod = importlib.import_module("lamina.unpacker")


class Recorded(Source):
    """A layout's image whose layer opens are recorded: by which thread, and whether each
    file opened was closed.  ``fail_open``: layer index -> the error its open raises."""

    def __init__(self, root, fail_open=None):
        self.source = open_layout_dir(root, "latest")
        self.description = self.source.description
        self.opens = {}          # layer index -> [thread names]
        self.files = []
        self.fail_open = fail_open or {}
        self.lock = threading.Lock()
        self.opened = threading.Condition(self.lock)

    def resolve(self, platform=None):
        image = self.source.resolve(platform)
        image.layers = [dataclasses.replace(layer, _opener=self._opener(layer)) for layer in image.layers]
        return image

    def _opener(self, layer):
        def opener():
            with self.lock:
                self.opens.setdefault(layer.index, []).append(threading.current_thread().name)
                self.opened.notify_all()
            if layer.index in self.fail_open:
                raise self.fail_open[layer.index]
            f = layer.open()
            with self.lock:
                self.files.append(f)
            return f
        return opener

    def wait_opened(self, index, timeout=20):
        with self.lock:
            return self.opened.wait_for(lambda: index in self.opens, timeout)

    def close(self):
        self.source.close()


def _image(tmp_path, layers):
    lay = ob.Layout(tmp_path / "img")
    lay.add(lay.image_of_tars(layers), "latest")
    return lay.root


def _layers():
    """Four layers: gzip, zstd, plain and a small top one that deletes below (so it is scanned)."""
    big = {f"d/f{i}": os.urandom(40_000) for i in range(60)}
    return [ob.tar_bytes({"d": None, **big}),
            ob.Shipped(zst(ob.tar_bytes({"e/g": b"zstd layer" * 1000})), ob.tar_bytes({"e/g": b"zstd layer" * 1000}),
                       ob.OCI_LAYER_ZSTD),
            ob.Shipped(ob.tar_bytes({"p": b"plain" * 3000}), ob.tar_bytes({"p": b"plain" * 3000}), ob.OCI_LAYER),
            ob.tar_bytes({"d/.wh.f1": b"", "d/.wh.f2": b"", "top": b"t"})]


def _live_stage_threads(wait=5.0):
    deadline = time.monotonic() + wait
    while True:
        live = [t.name for t in threading.enumerate() if t.name in ("lamina-inflate", "lamina-ahead")]
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.02)


def test_each_layer_starts_inflating_while_the_one_below_is_written(tmp_path, monkeypatch):
    root = _image(tmp_path, _layers())
    source = Recorded(root)
    real_apply, real_scan = lamina.layer.apply_layer, lamina.layer.scan_layer
    scans, applies = [], []

    def scan_layer(*a, **kw):
        # the bottom layer is opened (and inflating) while the upper layers are scanned
        scans.append(source.wait_opened(0))
        return real_scan(*a, **kw)

    def apply_layer(blob, *a, **kw):
        index = len(applies)
        ahead = isinstance(blob, lamina.layer.StartedLayer) and blob.inflating
        stats = real_apply(blob, *a, **kw)
        # the layer above was opened before this one's apply returned: at its stage's end
        above = source.wait_opened(index + 1, timeout=10) if index < 3 else True
        applies.append((ahead, above))
        return stats

    monkeypatch.setattr(lamina.layer, "apply_layer", apply_layer)
    monkeypatch.setattr(lamina.layer, "scan_layer", scan_layer)
    stats = lamina.unpack(source, tmp_path / "ahead")
    assert scans and all(scans)   # the three upper layers are small: scanned top-down
    assert applies == [(True, True)] * 4
    # every apply's blob was opened once, on an ahead thread (a scan's on the caller's)
    assert {i: [n for n in names if n != "MainThread"] for i, names in source.opens.items()} == \
        {i: ["lamina-ahead"] for i in range(4)}
    assert [layer.pipeline for layer in stats.layers] == ["native"] * 4
    assert all(f.closed for f in source.files)
    monkeypatch.undo()
    lamina.unpack(f"oci:{root}", tmp_path / "plain")
    assert_same(snapshot(tmp_path / "ahead"), snapshot(tmp_path / "plain"))
    assert not os.path.exists(tmp_path / "ahead" / "d" / "f1") and os.path.exists(tmp_path / "ahead" / "d" / "f3")


def test_the_python_pipeline_opens_each_layer_in_turn_and_writes_the_same_tree(tmp_path, monkeypatch):
    root = _image(tmp_path, _layers())
    lamina.unpack(f"oci:{root}", tmp_path / "native")
    monkeypatch.setenv("LAMINA_PIPELINE", "python")
    source = Recorded(root)
    stats = lamina.unpack(source, tmp_path / "python")
    assert [layer.pipeline for layer in stats.layers] == ["python"] * 4
    assert sorted(source.opens) == [0, 1, 2, 3] and all(f.closed for f in source.files)
    assert_same(snapshot(tmp_path / "python"), snapshot(tmp_path / "native"))


@pytest.mark.parametrize("bad", [0, 1, 2])
def test_a_layer_failing_its_digest_stops_the_stage_started_above_it(tmp_path, bad):
    lay = ob.Layout(tmp_path / "img")
    m = lay.add(lay.image_of_tars([ob.tar_bytes({f"l{i}/f{j}": os.urandom(30_000) for j in range(40)})
                                   for i in range(4)]), "latest")
    digest = lay.read_json(m["digest"])["layers"][bad]["digest"]
    with open(lay.path(digest), "r+b") as f:   # a byte of the gzip trailer's CRC: found at the end
        f.seek(-6, os.SEEK_END)
        byte = f.read(1)
        f.seek(-6, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    before = len(os.listdir("/proc/self/fd"))
    source = Recorded(lay.root)
    with pytest.raises(LaminaError, match=f"layer {bad + 1} of 4") as e:
        lamina.unpack(source, tmp_path / "dest")
    assert digest in str(e.value)
    assert not os.path.lexists(tmp_path / "dest")
    assert _live_stage_threads() == []
    assert all(f.closed for f in source.files)
    assert len(os.listdir("/proc/self/fd")) == before
    # at most the layer above the bad one was started (and stopped), none further
    assert max(source.opens) <= bad + 1


def test_a_layer_that_cannot_be_opened_fails_when_its_turn_comes_naming_it(tmp_path):
    root = _image(tmp_path, [ob.tar_bytes({f"l{i}": b"x" * 50_000}) for i in range(4)])
    layers = open_layout_dir(root, "latest").resolve().layers
    digest = layers[2].digest
    source = Recorded(root, fail_open={2: LaminaError(f"blob {digest}: unknown to the registry")})
    with pytest.raises(LaminaError, match=f"layer 3 of 4: blob {digest}: unknown"):
        lamina.unpack(source, tmp_path / "dest")
    assert not os.path.lexists(tmp_path / "dest")
    assert _live_stage_threads() == [] and all(f.closed for f in source.files)
    assert 3 not in source.opens


def test_the_fallback_to_the_plain_pass_leaves_no_stage_of_the_first(tmp_path):
    """The top-down pass fails over to the plain pass (a hardlink to a file an upper layer
    hides): the stages started for the first pass are stopped, the second starts its own."""
    layers = [ob.tar_bytes({"a": b"x" * 10_000, "b": b"y" * 200_000}),
              ob.tar_bytes({"c": ("hardlink", "a"), "big": os.urandom(300_000)}),
              ob.tar_bytes({".wh.a": b""})]
    root = _image(tmp_path, layers)
    source = Recorded(root)
    lamina.unpack(source, tmp_path / "dest")
    lamina.unpack(f"oci:{root}", tmp_path / "plain", format="dir")
    assert_same(snapshot(tmp_path / "dest"), snapshot(tmp_path / "plain"))
    assert os.path.isfile(tmp_path / "dest" / "c") and not os.path.lexists(tmp_path / "dest" / "a")
    assert _live_stage_threads() == [] and all(f.closed for f in source.files)


class _CountingReader:
    def __init__(self, data):
        self.data, self.pos, self.reads = data, 0, 0

    def readinto(self, buf):
        self.reads += 1
        n = min(len(buf), len(self.data) - self.pos)
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n

    def read(self, n=-1):
        out = self.data[self.pos:self.pos + (n if n >= 0 else len(self.data))]
        self.reads += 1
        self.pos += len(out)
        return out


def _stage(blob, waits=None, opens=None):
    from lamina import _pipeline
    raw = _CountingReader(blob[8:])
    stage = _pipeline.Stage1("gzip", fileobj=raw, head=blob[:8], timeline=_pipeline.Timeline("s", "inflate", 0.0),
                             consumer=_pipeline.Timeline("c", "parse", 0.0), waits=waits, opens=opens)
    thread = threading.Thread(target=stage.run, daemon=True)
    thread.start()
    return stage, thread, raw


def test_a_stage_reads_nothing_until_its_gate_opens_then_opens_its_own():
    from lamina import _pipeline
    tar = os.urandom(1 << 20) * 3
    below, own = _pipeline.Gate(), _pipeline.Gate()
    stage, thread, raw = _stage(ob.gz(tar), waits=below, opens=own)
    time.sleep(0.3)
    assert raw.reads == 0 and not own.opened and thread.is_alive()
    below.open()
    chunks = []
    while (chunk := stage.next()) is not None:
        if chunk is not False:
            chunks.append(bytes(chunk))
    stage.close()
    thread.join(10)
    assert b"".join(chunks) == tar and own.opened and raw.reads > 0


def test_a_stage_closed_while_it_waits_for_its_gate_ends_having_read_nothing():
    from lamina import _pipeline
    below, own = _pipeline.Gate(), _pipeline.Gate()
    stage, thread, raw = _stage(ob.gz(b"x" * 100_000), waits=below, opens=own)
    time.sleep(0.1)
    stage.close()
    thread.join(5)
    assert not thread.is_alive() and raw.reads == 0 and not below.opened
