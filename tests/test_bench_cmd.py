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
STAGES = {"read", "inflate", "hash", "extract", "wait", "total"}


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
    assert doc["version"] == 1 and doc["kind"] == "image" and doc["runs"] == 2
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
        # the caller's thread either extracts or waits for the next chunk: little else
        assert s["extract"] + s["wait"] <= s["total"] * 1.01 + 0.001
        assert s["extract"] + s["wait"] >= s["total"] * 0.6 - 0.02, s
        assert s["read"] + s["inflate"] <= s["total"] * 1.01 + 0.001
    sec = run["seconds"]
    assert sum(layer["seconds"]["total"] for layer in run["layers"]) <= sec["layers"] * 1.01 + 0.001
    assert sec["resolve"] + sec["layers"] + sec["commit"] == pytest.approx(sec["total"], rel=0.1, abs=0.01)
    assert sec["total"] <= run["wall"] * 1.01 + 0.001 and run["wall"] - sec["total"] < 0.05 + 0.1 * run["wall"]
    assert run["cpu_main_thread"] <= run["cpu_user"] + run["cpu_system"] + 0.01


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
    proc = cli("debian:12", check=False)  # a store or registry reference: say how to measure it
    assert proc.returncode == 1 and "lamina save -o FILE REF" in proc.stderr and proc.stderr.count("\n") == 1


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
        assert page.count("<svg") == 2  # stage shares and the comparison
        # self-contained: nothing fetched from elsewhere
        assert not any(ref in page for ref in ('src="http', "href='http", 'href="http', "<link", "<script"))
