"""What pull and unpack docker:// print: per-layer lines in manifest order, each layer going
Downloading -> Extracting -> Pull complete, rates that fall when a transfer stalls, lines that fit
a narrow terminal without cutting or wrapping a layer id."""
import io
import re
import threading

import pytest

import ocibuild
from registryfixture import fast_random, lamina_cli, reg, registry_env, skopeo_push  # noqa: F401

from lamina.registry import pull
from lamina.registry.progress import RATE_WINDOW, LayerProgress, PlainReporter, Reporter, RichReporter
from lamina.registry.source import RegistrySource
from lamina.store import Store
from lamina.unpacker import unpack

MiB = 1 << 20
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def image(reg, tmp_path_factory):  # noqa: F811
    """order:1 = a 4 MiB bottom layer and two tiny ones above (they finish first)."""
    lay = ocibuild.Layout(tmp_path_factory.mktemp("lay") / "oci")
    m = lay.image([{"big.bin": fast_random(4 * MiB, 2)}, {"a": b"a"}, {"b": b"b"}], compress=False)
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "order:1", extra=("--preserve-digests",))
    return [d["digest"] for d in lay.read_json(m["digest"])["layers"]]


def test_plain_lines_come_in_manifest_order():
    out = io.StringIO()
    r = PlainReporter(out)
    a, b, c = ("sha256:" + x * 64 for x in "abc")
    for d in (a, b, c):
        r.layer(d, 10)
    r.state(c, "Pull complete")
    r.state(a, "Extracting")
    assert out.getvalue() == ""          # c waits for a and b
    r.state(a, "Pull complete")
    assert out.getvalue() == "aaaaaaaaaaaa: Pull complete\n"
    r.state(b, "Already exists")
    assert out.getvalue().splitlines() == ["aaaaaaaaaaaa: Pull complete", "bbbbbbbbbbbb: Already exists",
                                           "cccccccccccc: Pull complete"]


def test_cli_pull_not_a_terminal_one_clean_line_per_layer(reg, image, registry_env):  # noqa: F811
    out = lamina_cli("pull", f"{reg.host}/order:1", root=registry_env / "root").stdout
    lines = out.splitlines()
    assert "\x1b" not in out and "\r" not in out
    assert lines[1:4] == [f"{d[7:19]}: Pull complete" for d in image]
    assert lines[4].startswith("Digest: sha256:")


def test_rate_falls_to_zero_when_the_transfer_stalls():
    layer = LayerProgress("sha256:" + "d" * 64, 100 * MiB, now=0.0)
    layer.set_status("Downloading", 0.0)
    for i in range(1, 11):
        layer.set_done(i * MiB, i / 10)        # 10 MB/s for one second
    assert layer.rate(1.0) == pytest.approx(10 * MiB, rel=0.05)
    assert layer.rate(1.0 + RATE_WINDOW + 0.1) == 0   # nothing came since: not the last rate, frozen
    layer.set_status("Extracting", 5.0)
    assert layer.rate(5.5) is None
    assert layer.render(80, 6.5).split() == ["dddddddddddd:", "Extracting", "1.5s"]


def test_extracting_shows_the_bytes_the_extraction_read_with_a_rate_that_falls_when_it_stalls():
    MB = 1000 * 1000
    layer = LayerProgress("sha256:" + "f" * 64, 100 * MB, now=0.0)
    layer.set_status("Downloading", 0.0)
    layer.set_done(80 * MB, 1.0)
    layer.set_extracted(30 * MB, 1.0)       # extraction trails the download: the line shows the download
    assert "Downloading" in layer.render(100, 1.0) and "80MB/100MB" in layer.render(100, 1.0)
    layer.set_done(100 * MB, 2.0)
    layer.set_status("Extracting", 2.0)
    for i in range(1, 21):
        layer.set_extracted((30 + i) * MB, 1.0 + i / 10)   # 10 MB/s for two seconds
    text = layer.render(100, 3.0)
    assert text.split()[:2] == ["ffffffffffff:", "Extracting"], text
    assert "[" in text and "50MB/100MB" in text and "10MB/s" in text, text
    assert layer.rate(3.0) == pytest.approx(10 * MB, rel=0.05)
    assert layer.rate(3.0 + RATE_WINDOW + 0.1) == 0   # stalled (waiting for the layers below): 0, not frozen
    assert len(layer.render(30, 3.0)) <= 30 and layer.render(30, 3.0).startswith("ffffffffffff:")


def test_an_extraction_that_starts_late_is_not_averaged_over_its_wait():
    MB = 1000 * 1000
    layer = LayerProgress("sha256:" + "9" * 64, 100 * MB, now=0.0)
    layer.set_status("Extracting", 0.0)    # waiting for the layers below: nothing read yet
    assert layer.render(100, 9.0).split() == ["999999999999:", "Extracting", "9.0s"]
    layer.set_extracted(5 * MB, 10.0)
    layer.set_extracted(7 * MB, 10.5)
    assert layer.rate(10.5) == pytest.approx(4 * MB)   # not 7 MB over 10.5 s


@pytest.mark.parametrize("width", [20, 32, 40, 60, 100])
def test_lines_fit_the_terminal_and_keep_the_id_whole(width):
    layer = LayerProgress("sha256:" + "e" * 64, 123_456_789, now=0.0)
    layer.set_status("Downloading", 0.0)
    layer.set_done(50_000_000, 1.0)
    text = layer.render(width, 1.5)
    assert len(text) <= width and text.startswith("eeeeeeeeeeee:")
    if width >= 100:
        assert "[" in text and "MB/s" in text and "50MB/123MB" in text


def test_live_pull_on_a_narrow_terminal(reg, image, registry_env):  # noqa: F811
    from rich.console import Console
    buf = io.StringIO()
    reporter = RichReporter(console=Console(file=buf, force_terminal=True, width=36))
    pull(f"{reg.host}/order:1", store=Store(registry_env / "root"), reporter=reporter)
    lines = [ANSI.sub("", line) for line in re.split(r"\r|\n", buf.getvalue())]
    # Layer lines fit; the summary lines are printed whole (the terminal may wrap them, we never
    # break a digest with a newline of our own).
    summary = ("Digest: ", "Status: ", f"{reg.host}/order:1")
    assert all(len(line) <= 36 for line in lines if not line.startswith(summary)), lines
    assert any(line == f"{reg.host}/order:1" for line in lines)
    final = [line.strip() for line in lines if line.strip()]
    # the last frame: every layer complete, in manifest order, then the summary lines
    want = [f"{d[7:19]}: Pull complete" for d in image]
    i = max(k for k in range(len(final)) if final[k:k + 3] == want)
    assert final[i + 3].startswith("Digest: ")
    for line in final:
        m = re.match(r"([0-9a-f]{6,}):", line)
        assert m is None or len(m.group(1)) in (12, 64) or line.startswith(("Digest", "Status")), line


class _Recorder(Reporter):
    """Every layer's states, in the order they were reported, and its extraction's progress."""

    def __init__(self):
        self.states, self.extract = {}, {}
        self._lock = threading.Lock()

    def state(self, digest, status):
        with self._lock:
            self.states.setdefault(digest, []).append(status)

    def extracted(self, digest, done, total):
        with self._lock:
            self.extract.setdefault(digest, []).append((done, total))


def _check_extract_progress(rec, image, sizes):
    """Each layer's extraction reported its progress: rising, in bytes of the blob, to all of it."""
    for d in image:
        seen = rec.extract.get(d)
        assert seen, (d, rec.extract.keys())
        dones = [done for done, _ in seen]
        assert all(total == sizes[d] for _, total in seen)
        assert dones[-1] == sizes[d], (d, dones[-5:], sizes[d])
        # a layer read twice (the top-down scan, then applied) reports only the applying read
        assert dones == sorted(dones), dones


def _phases(states):
    """The states with repeats and docker's in-between 'Download complete' dropped."""
    out = []
    for s in states:
        if s != "Download complete" and (not out or out[-1] != s):
            out.append(s)
    return out


def test_pull_reports_download_extract_complete_per_layer(reg, image, registry_env):  # noqa: F811
    rec = _Recorder()
    result = pull(f"{reg.host}/order:1", store=Store(registry_env / "root"), reporter=rec)
    assert {d: _phases(rec.states.get(d, [])) for d in image} == \
           {d: ["Downloading", "Extracting", "Pull complete"] for d in image}
    _check_extract_progress(rec, image, {layer.digest: layer.size for layer in result.layers})


def test_unpack_docker_reports_download_extract_complete_per_layer(reg, image, registry_env, tmp_path):  # noqa: F811
    """The top layers are read twice (top-down scan, then applied) and cross the link once: still one
    Downloading, then Extracting, then Pull complete, never back."""
    rec = _Recorder()
    with RegistrySource(f"{reg.host}/order:1", reporter=rec) as source:
        stats = unpack(source, tmp_path / "rootfs")
        source.finished(source.image)
    assert stats.layers[0].entries == 1
    assert {d: _phases(rec.states.get(d, [])) for d in image} == \
           {d: ["Downloading", "Extracting", "Pull complete"] for d in image}
    _check_extract_progress(rec, image, {layer.digest: layer.size for layer in source.image.layers})
