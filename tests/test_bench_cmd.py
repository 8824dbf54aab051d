"""``lamina bench``: its output is data, so it is tested like data: the JSON document, stage
times that add up to the measured total, comparisons whose trees were checked, synthetic
layers of the sizes asked for, and the report files."""
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from conftest import require_tool
from lamina import bench

SAMPLE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "sample", "image"))
SAMPLE_SRC = f"oci:{SAMPLE}:latest"
# the disjoint stages, in the order the tables show them, and the coarse ones kept as their sums
PARTS = ["read", "inflate", "hash_blob", "hash_tar", "parse", "write", "wait"]
SUMS = {"hash": ["hash_blob", "hash_tar"], "extract": ["parse", "write"]}
STAGES = set(PARTS) | set(SUMS) | {"total"}


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "lamina", "bench", *map(str, args)], capture_output=True,
                          text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def sample_layers():
    """The sample image's layer blobs, bottom first, from its manifest."""
    index = json.load(open(os.path.join(SAMPLE, "index.json")))
    blobs = os.path.join(SAMPLE, "blobs", "sha256")
    manifest = json.load(open(os.path.join(blobs, index["manifests"][0]["digest"][7:])))
    return [(os.path.join(blobs, layer["digest"][7:]), layer) for layer in manifest["layers"]]


def tar_listing(blobs):
    """Every path ``tar -t`` lists in these layers, with their parents: what tar -x leaves."""
    names = set()
    for blob in blobs:
        out = subprocess.run(["tar", "-tf", blob], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            parts = [p for p in line.split("/") if p not in ("", ".")]
            names.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def test_json_document_of_the_sample_image(tmp_path):
    doc = json.loads(cli(SAMPLE_SRC, "--runs", "2", "--format", "json").stdout)
    # version 1: the stages were split by adding fields; "hash" and "extract" are still there
    assert doc["version"] == 1 and doc["kind"] == "image" and doc["runs"] == 2
    assert doc["stages"]["parts"] == PARTS and doc["stages"]["sums"] == SUMS
    assert doc["stages"]["labels"]["hash_blob"] == "blob sha256" and "proportion" in doc["stages"]["parse_write_cpu"]
    assert doc["target"]["fstype"] == bench.filesystem_of(bench.default_target_parent())["fstype"]
    if os.path.isdir("/dev/shm"):
        assert doc["target"]["fstype"] == "tmpfs"
    layers = sample_layers()
    assert len(doc["layers"]) == len(layers) and len(doc["lamina"]["runs"]) == 2
    for row, (blob, desc) in zip(doc["layers"], layers):
        assert row["digest"] == desc["digest"]
        assert row["compressed_bytes"] == os.path.getsize(blob) == desc["size"]
        assert set(row["seconds"]) == STAGES and row["seconds"]["total"] > 0
        assert row["entries_per_s"] == pytest.approx(row["entries"] / row["seconds"]["total"], rel=0.01)
        # the sample's layers are gzip, of a few hundred bytes: each split stage is reported (a
        # sha256 of 300 bytes may round to 0 µs), and writing a file takes some microseconds
        assert set(PARTS) - {"wait"} <= set(row["cpu"]), row["cpu"]
        assert row["seconds"]["write"] > 0 and row["cpu"]["write"] > 0, row
    for run in doc["lamina"]["runs"]:  # medians are taken per stage; within one run, the sums hold
        for layer in run["layers"]:
            for coarse, parts in SUMS.items():
                for d in (layer["seconds"], layer["cpu"]):
                    assert d[coarse] == pytest.approx(sum(d.get(p, 0.0) for p in parts), abs=2e-6)
    med = doc["lamina"]["median"]
    assert med["entries"] == sum(r["entries"] for r in doc["layers"])
    assert med["peak_rss_bytes"] > 1 << 20 and med["cpu"] > 0 and med["wall"] > 0
    # the tree the unpack left, counted independently
    subprocess.run([sys.executable, "-m", "lamina", "unpack", SAMPLE_SRC, tmp_path / "rootfs"], check=True,
                   capture_output=True)
    assert doc["lamina"]["entries_in_tree"] == sum(len(d) + len(f) for _, d, f in os.walk(tmp_path / "rootfs"))


def test_a_layer_file_is_measured_alone():
    blob, desc = sample_layers()[0]
    doc = json.loads(cli(blob, "--runs", "1", "--format", "json").stdout)
    assert doc["kind"] == "layer" and len(doc["layers"]) == 1
    assert doc["layers"][0]["compressed_bytes"] == desc["size"]
    assert doc["lamina"]["entries_in_tree"] == len(tar_listing([blob]))


def test_stages_add_up_to_the_measured_time(tmp_path):
    source = bench.write_layout(str(tmp_path / "img"), bench.synthetic_layers("small-files", 3000))
    doc = bench.run(source, runs=1, target=str(tmp_path))
    run = doc["lamina"]["runs"][0]
    for layer in run["layers"]:
        s = layer["seconds"]
        # the caller's thread parses, writes or waits for the next chunk: little else
        assert s["parse"] + s["write"] <= s["total"] * 1.01 + 0.001
        assert s["parse"] + s["write"] + s["wait"] >= s["total"] * 0.6 - 0.02, s
        assert s["read"] + s["inflate"] + s["hash_blob"] <= s["total"] * 1.01 + 0.001
        assert s["write"] > 0 and s["parse"] > 0
    sec = run["seconds"]
    assert sum(layer["seconds"]["total"] for layer in run["layers"]) <= sec["layers"] * 1.01 + 0.001
    assert sec["resolve"] + sec["layers"] + sec["commit"] == pytest.approx(sec["total"], rel=0.1, abs=0.01)
    assert sec["total"] <= run["wall"] * 1.01 + 0.001 and run["wall"] - sec["total"] < 0.05 + 0.1 * run["wall"]
    assert run["cpu_main_thread"] <= run["cpu_user"] + run["cpu_system"] + 0.01


def test_stage_cpu_adds_up_to_the_process_cpu(tmp_path):
    """Each pipeline thread's CPU, per stage (CLOCK_THREAD_CPUTIME_ID), is part of the
    process's CPU: never more, and most of it once the layers are big enough to matter."""
    source = bench.write_layout(str(tmp_path / "img"), bench.synthetic_layers("huge-files", 4))
    doc = bench.run(source, runs=1, target=str(tmp_path))
    run = doc["lamina"]["runs"][0]
    process = run["cpu_user"] + run["cpu_system"]
    stages = run["cpu_stages"]
    busy = sum(v for k, v in stages.items() if k in PARTS and k != "wait")  # the parts, not their sums
    for stage in ("inflate", "hash_blob", "hash_tar", "parse", "write"):
        assert stages[stage] > 0, stages
    assert stages["hash"] == pytest.approx(stages["hash_blob"] + stages["hash_tar"], abs=1e-5)
    assert stages["extract"] == pytest.approx(stages["parse"] + stages["write"], abs=1e-5)
    assert busy <= process * 1.05 + 0.02, (busy, process)
    assert busy >= process * 0.5, (busy, process)


def test_comparison_really_ran_gnu_tar_and_umoci():
    require_tool("tar")
    require_tool("umoci")
    doc = json.loads(cli(SAMPLE_SRC, "--runs", "2", "--compare", "tar,umoci", "--format", "json").stdout)
    by_tool = {c["tool"]: c for c in doc["compare"]}
    tar = by_tool["tar"]
    assert "error" not in tar, tar
    assert len(tar["walls"]) == 2 and all(w > 0 for w in tar["walls"])
    # .wh. files stay as plain files for tar: its tree holds every name of every layer
    assert tar["entries"] == tar["expected_entries"] == len(tar_listing([b for b, _ in sample_layers()]))
    assert tar["tree_ok"] and tar["ratio_to_lamina"] == pytest.approx(
        tar["median_wall"] / doc["lamina"]["median"]["wall"], rel=0.01)
    # tar's own peak, not the Python process's that started it (which a forked child inherits)
    assert 0 < tar["peak_rss_bytes"] < doc["lamina"]["median"]["peak_rss_bytes"]
    umoci = by_tool["umoci"]
    assert "error" not in umoci, umoci
    # umoci applies the whiteouts: its tree is lamina's, smaller than tar's
    assert umoci["entries"] == umoci["expected_entries"] == doc["lamina"]["entries_in_tree"] < tar["entries"]


def test_a_tool_that_cannot_run_says_why(tmp_path):
    blob, _ = sample_layers()[0]
    doc = json.loads(cli(blob, "--runs", "1", "--compare", "umoci", "--format", "json").stdout)
    assert "OCI layout" in doc["compare"][0]["error"]
    proc = cli(SAMPLE_SRC, "--compare", "cpio", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("lamina: error: unknown tool 'cpio'")
    proc = cli(f"oci:{tmp_path}/nothing:latest", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith(f"lamina: error: oci:{tmp_path}/nothing:latest: no such")
    proc = cli("--root", tmp_path / "store", "debian:12", check=False)  # an image reference: the store's
    assert proc.returncode == 1 and proc.stderr == "lamina: error: no such image: debian:12\n"
    proc = cli("./nothing.tar", check=False)  # a path: not the store's
    assert proc.returncode == 1 and proc.stderr.startswith("lamina: error: ./nothing.tar: no such image, file or")


def _tar_members(data):
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getmembers()


@pytest.mark.parametrize("kind", ["small-files", "deep", "hardlinks"])
def test_synthetic_layers_have_the_entries_asked_for(kind):
    for n in (4, 999, 2500):
        (layer,) = bench.synthetic_layers(kind, n)
        members = _tar_members(layer)
        assert len(members) == n
        assert len({m.name for m in members}) == n  # distinct: a tree of n entries
    if kind == "hardlinks":
        assert sum(m.islnk() for m in _tar_members(bench.synthetic_layers(kind, 2000)[0])) >= 900
    if kind == "deep":
        assert max(m.name.count("/") for m in _tar_members(bench.synthetic_layers(kind, 500)[0])) >= 99


def test_synthetic_whiteouts_delete_every_lower_file(tmp_path):
    lower, upper = bench.synthetic_layers("whiteouts", 1500)
    assert len(_tar_members(upper)) == 1500
    assert all(os.path.basename(m.name).startswith(".wh.") for m in _tar_members(upper))
    files = {m.name for m in _tar_members(lower) if m.isfile()}
    assert {m.name.replace(".wh.", "") for m in _tar_members(upper)} == files


def test_synthetic_huge_files_are_the_size_asked_for():
    (layer,) = bench.synthetic_layers("huge-files", 3)
    members = _tar_members(layer)
    assert [m.size for m in members] == [3 << 20] * bench.HUGE_FILES


def test_synthetic_scaling_run_reports_each_size(tmp_path):
    doc = json.loads(cli("--synthetic", "small-files", "--sizes", "50,1.2k", "--runs", "1", "--compare", "tar",
                         "--format", "json", "--target", tmp_path).stdout)
    assert doc["kind"] == "synthetic" and [p["size"] for p in doc["points"]] == [50, 1200]
    for p in doc["points"]:
        assert p["entries"] == p["entries_in_tree"] == p["size"]
        assert p["us_per_entry"] > 0 and p["ns_per_byte"] > 0
        assert p["cpu_us_per_entry"] == pytest.approx(p["cpu"] / p["entries"] * 1e6, rel=0.01, abs=0.01)
        assert p["compare"][0]["tree_ok"] and p["compare"][0]["entries"] == p["size"]
    assert os.listdir(tmp_path) == []  # every destination removed


def test_bad_sizes_are_one_line_errors():
    proc = cli("--synthetic", "small-files", "--sizes", "10,lots", check=False)
    assert proc.returncode == 1 and proc.stderr == "lamina: error: --sizes: 'lots' is not a count (like 1000, 10k, 1M)\n"
    proc = cli("--synthetic", "hardlinks", "--sizes", "2", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("lamina: error: hardlinks: sizes must be at least 4")
    proc = cli(SAMPLE_SRC, "--synthetic", "deep", check=False)
    assert proc.returncode == 1 and proc.stderr == "lamina: error: give either SOURCE or --synthetic KIND, not both\n"


def test_report_files(tmp_path):
    out = tmp_path / "report"
    text = cli(SAMPLE_SRC, "--runs", "1", "--compare", "tar", "--report", out).stdout
    assert f"wrote {out}/index.html" in text and "per layer" in text
    doc = json.load(open(out / "bench.json"))
    assert doc["version"] == 1 and len(doc["layers"]) == len(sample_layers())
    page = (out / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and "tar" in page
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "<svg" not in page and "matplotlib is not installed" in page
    else:
        assert page.count("<svg") == 4  # timeline, stage shares, CPU, the comparison
        # self-contained: nothing fetched from elsewhere
        assert not any(ref in page for ref in ('src="http', "href='http", 'href="http', "<link", "<script"))


def _chart(page, title):
    """The SVG of the chart titled ``title`` in a report page (up to the next heading)."""
    at = page.index(f"<h2>{title}</h2>")
    end = page.find("<h2>", at + 1)
    return page[at:end if end >= 0 else len(page)]


def test_split_stages_in_tables_and_charts(tmp_path):
    """blob sha256, diffID sha256, parse and write: a column each in the per-layer tables (wall
    and CPU), a row each in the CPU table, a colour each in the timeline and the stage shares;
    the scaling table has their cost per entry."""
    source = bench.write_layout(str(tmp_path / "img"), bench.synthetic_layers("small-files", 2000))
    doc = bench.run(source, runs=1, target=str(tmp_path))
    tables = dict(bench.report_tables(doc))
    wall = next(rows for title, rows in tables.items() if title.startswith("per layer (median wall"))
    cpu = next(rows for title, rows in tables.items() if title.startswith("per layer, CPU"))
    for rows in (wall, cpu):
        header = rows[0]
        stages = ["read ms", "inflate ms", "blob sha256 ms", "diffID sha256 ms", "parse ms", "write ms", "wait ms"]
        assert [h for h in header if h in stages] == stages
        assert "hash ms" not in header and "extract ms" not in header  # the sums are for the JSON's readers
        row = dict(zip(header, rows[1]))
        assert float(row["write ms"]) > 0 and float(row["parse ms"]) > 0, row
    cpu_rows = next(rows for title, rows in tables.items() if title.startswith("CPU (median; per stage"))
    assert [r[0] for r in cpu_rows if r[0].startswith("stage ")] == [
        "stage read", "stage inflate", "stage blob sha256", "stage diffID sha256", "stage parse", "stage write",
        "stage wait"]
    pytest.importorskip("matplotlib")
    bench.write_report(doc, tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    for title in ("timeline: which thread did what, when", "stage shares per layer: seconds and CPU"):
        svg = _chart(page, title)
        for stage in ("inflate", "hash_tar", "parse", "write"):  # drawn, in the stage's own colour
            assert f"fill: {bench.STAGE_COLORS[stage]}" in svg, (title, stage)
        for label in ("blob sha256", "diffID sha256", "parse", "write"):  # and named in the legend
            assert f"<!-- {label} -->" in svg, (title, label)
    # the timeline's pieces: the caller's thread parsed and wrote, stage 1 inflated, and
    # the blob's hash went to whichever of them had time
    rows = doc["lamina"]["timeline"]
    assert {r[1] for r in rows if r[0] == "MainThread"} >= {"parse", "write"}
    assert "inflate" in {r[1] for r in rows if r[0] == "lamina-inflate"}
    assert "hash_blob" in {r[1] for r in rows if r[0] in ("MainThread", "lamina-inflate")}


def test_a_plain_tar_layer_hashes_once_in_the_report(tmp_path):
    (tar,) = bench.synthetic_layers("small-files", 500)
    layer = tmp_path / "layer.tar"
    layer.write_bytes(tar)
    doc = bench.run(str(layer), runs=1, target=str(tmp_path))
    (row,) = doc["layers"]
    import hashlib
    assert row["compression"] == "none"
    assert row["digest"] == row["diff_id"] == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert row["seconds"]["hash_blob"] == 0 and row["seconds"]["hash_tar"] > 0  # one sha256, the diffID's
    assert "hash_blob" not in row["cpu"] and row["cpu"]["hash_tar"] > 0
    tables = dict(bench.report_tables(doc))
    for title, rows in tables.items():
        if title.startswith("per layer"):
            assert dict(zip(rows[0], rows[1]))["blob sha256 ms"] == "= diffID"


def test_a_tar_whose_first_name_starts_with_gzips_magic_is_measured_as_a_tar(tmp_path):
    """bench took a layer's compression from its first 8 bytes: a plain tar whose first member's
    name begins with gzip's magic (and flag bits gzip refuses) was measured as gzip, where
    lamina's unpack, GNU tar, bsdtar and containerd read a tar (compression.sniff), and its
    gzip decoders failed.  It reads the layer as unpack does now."""
    from tarbuild import Tar
    tar = Tar().file(b"\x1f\x8b\x08\xe0-not-gzip", b"x" * 100).file("b", b"y").bytes()
    layer = tmp_path / "layer.tar"
    layer.write_bytes(tar)
    doc = bench.run(str(layer), runs=1, target=str(tmp_path))
    (row,) = doc["layers"]
    assert row["compression"] == "none"
    assert len(bench.tar_names([str(layer)])) == 2   # what `tar -x` leaves, read as a tar too


def test_scaling_points_have_a_cost_per_entry_per_stage(tmp_path):
    doc = bench.run_synthetic("small-files", [300, 3000], runs=1, target=str(tmp_path))
    for p in doc["points"]:
        for field in ("stage_us_per_entry", "stage_cpu_us_per_entry"):
            per = p[field]
            assert list(per)[:7] == PARTS and per["write"] > 0 and per["parse"] > 0, per
        # the stages of the caller's thread fit in the layer's time per entry
        assert per["parse"] + per["write"] <= p["us_per_entry"] * 1.01 + 0.01
    titles = [title for title, _ in bench.report_tables(doc)]
    assert any(t.startswith("synthetic small-files: wall µs per entry in each stage (median") for t in titles)
    assert any(t.startswith("synthetic small-files: thread CPU µs per entry in each stage (median") for t in titles)
    pytest.importorskip("matplotlib")
    bench.write_report(doc, tmp_path / "report")
    svg = _chart((tmp_path / "report" / "index.html").read_text(), "scaling: CPU per entry in each stage")
    for stage in ("inflate", "hash_tar", "parse", "write"):
        assert f"fill: {bench.STAGE_COLORS[stage]}" in svg, stage


# --- an image in the store: its layers from the store's blobs, and the blake3 stage -------------

def _tree(root):
    """relative path -> (type, size) of everything under root: to see that bench left it alone."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(d, name))
            out[os.path.relpath(os.path.join(d, name), root)] = (st.st_mode, st.st_size, st.st_nlink)
    return out


def _regular_files(root):
    return sum(1 for d, _, files in os.walk(root) for f in files if os.path.isfile(os.path.join(d, f))
               and not os.path.islink(os.path.join(d, f)))


def test_store_image_with_dedup_has_a_blake3_stage(tmp_path):
    root = tmp_path / "store"
    subprocess.run([sys.executable, "-m", "lamina", "--root", root, "copy", SAMPLE_SRC, "sample:1"], check=True,
                   capture_output=True)
    before = _tree(root)
    doc = json.loads(cli("--root", root, "sample:1", "--runs", "2", "--compare", "tar", "--format", "json").stdout)
    assert doc["kind"] == "store" and doc["source"] == "sample:1"
    layers = sample_layers()
    assert [r["digest"] for r in doc["layers"]] == [d["digest"] for _, d in layers]
    assert [r["compressed_bytes"] for r in doc["layers"]] == [d["size"] for _, d in layers]
    tar = doc["compare"][0]
    assert tar["tree_ok"] and tar["entries"] == len(tar_listing([b for b, _ in layers]))
    dedup = doc["lamina"]["dedup"]
    subprocess.run([sys.executable, "-m", "lamina", "unpack", SAMPLE_SRC, tmp_path / "rootfs"], check=True,
                   capture_output=True)
    assert dedup["ran"] and dedup["files"] == _regular_files(tmp_path / "rootfs") > 0
    assert 0 < dedup["blake3"] <= dedup["seconds"] <= dedup["wall"] * 1.01 + 0.001
    assert all(run["dedup"]["blake3"] > 0 for run in doc["lamina"]["runs"])
    assert _tree(root) == before  # measured in a scratch store: the real one is untouched
    # overlay format: one snapshot per layer, as in the store, so blake3 per layer
    doc = json.loads(cli("--root", root, "sample:1", "--runs", "1", "--overlay", "--format", "json").stdout)
    assert all(layer["blake3"] is not None and layer["blake3"] >= 0 for layer in doc["layers"])
    per_layer = doc["lamina"]["runs"][0]["dedup"]["layers"]
    assert [p["index"] for p in per_layer] == list(range(len(layers)))
    assert sum(p["files"] for p in per_layer) == doc["lamina"]["dedup"]["files"]
    # dedup off: no blake3 stage, and the report says why
    subprocess.run([sys.executable, "-m", "lamina", "--root", root, "config", "set", "dedup", "false"], check=True,
                   capture_output=True)
    text = cli("--root", root, "sample:1", "--runs", "1").stdout
    assert "n/a: the store's dedup is off" in text
    doc = json.loads(cli("--root", root, "sample:1", "--runs", "1", "--format", "json").stdout)
    assert not doc["lamina"]["dedup"]["ran"] and all(layer["blake3"] is None for layer in doc["layers"])
    doc = json.loads(cli(SAMPLE_SRC, "--runs", "1", "--format", "json").stdout)
    assert doc["lamina"]["dedup"]["why"].startswith("n/a: the source is not an image in the store")


# --- docker://REF: fetched from a real registry on loopback, every run ---------------------------

def test_registry_image_is_fetched_every_run(tmp_path, monkeypatch):
    from registryfixture import FaultProxy, Registry, skopeo_push
    require_tool("skopeo")
    require_tool("docker-registry")
    monkeypatch.setenv("HOME", str(tmp_path))  # no registry config or credentials of this machine
    monkeypatch.setenv("LAMINA_REGISTRIES_CONFIG", "")
    reg = Registry(tmp_path / "reg")
    proxy = FaultProxy(reg.host)  # counts the blob bytes the registry served
    try:
        skopeo_push(SAMPLE_SRC, reg.host, "sample:1", extra=("--preserve-digests",))
        doc = json.loads(cli(f"docker://{proxy.host}/sample:1", "--runs", "2", "--compare", "tar",
                             "--format", "json").stdout)
        layers = sample_layers()
        assert doc["kind"] == "registry"
        assert [r["digest"] for r in doc["layers"]] == [d["digest"] for _, d in layers]
        assert doc["compare"][0]["tree_ok"]
        # each layer crossed the link for the files the other tools read, the warm-up and both runs
        for _, desc in layers:
            assert proxy.bytes_for(desc["digest"]) >= 4 * desc["size"]
    finally:
        proxy.stop()
        reg.stop()


# --- a pipeline that reports its own timeline and stage CPU (issue 14's ApplyStats fields) -------

def test_pipeline_timeline_and_stage_cpu_are_rendered(tmp_path, monkeypatch):
    """ApplyStats with ``timeline`` ([thread, stage, start, end] from the layer's start) and
    ``cpu`` ({stage: seconds}): the timeline places them at the layer's apply, the CPU table
    sums them over the layers, and the report shows both."""
    import dataclasses
    from lamina.stats import ApplyStats

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["timeline"] = [["lamina-inflate", "inflate", 0.0, 0.002], ["lamina-write", "write", 0.001, 0.003]]
        d["cpu"] = {"inflate": 0.002, "write": 0.0015}
        return d
    monkeypatch.setattr(ApplyStats, "to_dict", to_dict)
    doc = bench.run(SAMPLE_SRC, runs=1, target=str(tmp_path))
    n = len(sample_layers())
    run = doc["lamina"]["runs"][0]
    assert run["cpu_stages"] == {"inflate": pytest.approx(0.002 * n), "write": pytest.approx(0.0015 * n)}
    assert doc["lamina"]["median"]["cpu_stages"] == run["cpu_stages"]
    applied = {row[2]: row[3] for row in run["timeline"] if row[1] == "apply"}
    assert sorted(applied) == list(range(n))
    for i, start in applied.items():
        (write,) = [row for row in run["timeline"] if row[1] == "write" and row[2] == i]
        assert write[0] == "lamina-write" and write[3] == pytest.approx(start + 0.001, abs=2e-6)
    assert doc["layers"][0]["cpu"] == {"inflate": 0.002, "write": 0.0015}
    tables = dict(bench.report_tables(doc))
    cpu = next(rows for title, rows in tables.items() if title.startswith("CPU (median; per stage, from the pipeline"))
    (write,) = [row for row in cpu if row[0] == "stage write"]
    assert float(write[1]) == pytest.approx(0.0015 * n, abs=0.001)
    bench.write_report(doc, tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    assert "lamina-write" in page and "stage inflate" in page


def test_timeline_marks_scans_and_coalesces_reads():
    rec = [["MainThread", "layer", 2, 0.0, 0.1], ["MainThread", "layer", 0, 0.2, 0.5],
           ["MainThread", "layer", 2, 0.6, 0.7],
           ["lamina-inflate", "read", 0, 0.21, 0.22], ["lamina-inflate", "read", 0, 0.2205, 0.23],
           ["lamina-inflate", "read", 0, 0.3, 0.31]]
    rows = bench.timeline(rec, [{}, {}, {}])
    assert ["MainThread", "scan", 2, 0.0, 0.1] in rows and ["MainThread", "apply", 2, 0.6, 0.7] in rows
    assert ["MainThread", "apply", 0, 0.2, 0.5] in rows
    reads = [r for r in rows if r[1] == "read"]
    assert reads == [["lamina-inflate", "read", 0, 0.21, 0.23], ["lamina-inflate", "read", 0, 0.3, 0.31]]
    assert [r[3] for r in rows] == sorted(r[3] for r in rows)


def test_cpu_table_names_what_each_thread_did():
    med = {"cpu": 1.0, "cpu_user": 0.8, "cpu_system": 0.2, "cpu_main_thread": 0.25, "per_core_busy": [0.5, None]}
    title, rows = bench._cpu_table(med, "dir")
    assert "per stage: n/a" in title
    assert rows[1:3] == [["main thread (parse, write)", "0.250"], ["other threads (read, inflate, hash)", "0.750"]]
    assert rows[-2:] == [["core 0 busy (whole machine)", "50%"], ["core 1 busy (whole machine)", "run too short"]]
    _, rows = bench._cpu_table(med, "overlay")  # layers on a pool: the caller only waits
    assert rows[1][0] == "main thread (waits for the layers)"
    _, rows = bench._cpu_table({**med, "cpu_stages": {"inflate": 0.5, "write": 0.3}}, "dir")
    assert rows[1:3] == [["stage inflate", "0.500"], ["stage write", "0.300"]]


def test_per_core_busy_comes_from_proc_stat():
    before = bench.core_ticks()
    assert len(before) == os.cpu_count()
    busy = [(b + 1000, t + 1000) for b, t in before]  # every tick busy
    idle = [(b, t + 1000) for b, t in before]
    assert bench.cores_busy_between(before, busy) == [1.0] * len(before)
    assert bench.cores_busy_between(before, idle) == [0.0] * len(before)
    assert bench.cores_busy_between(before, before) == [None] * len(before)  # too short to tell
