"""A short smoke run of the project's own benchmarks (bench/), so they cannot rot: the scripts
that measure through ``lamina bench``, and the pytest-benchmark micro benches run once each
(``--benchmark-disable``: every bench body and its result checks, no timing rounds)."""
import json
import os
import re
import subprocess
import sys

from conftest import require_tool

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SAMPLE_SRC = f"oci:{REPO}/sample/image:latest"


def script(name, *args, cwd=None):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", name), *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_compare_runs_lamina_bench(tmp_path):
    require_tool("tar")
    require_tool("umoci")
    out = script("compare.py", "--image", SAMPLE_SRC, "-n", "1", "--tools", "tar,umoci", "--json",
                 tmp_path / "all.json", "--report", tmp_path / "report")
    assert f"$ lamina bench {SAMPLE_SRC} --runs 1" in out and "comparison" in out
    doc = json.load(open(tmp_path / "all.json"))["image"]
    assert doc == json.load(open(tmp_path / "report" / "image" / "bench.json"))
    assert [c["tool"] for c in doc["compare"]] == ["tar", "umoci"] and all(c["tree_ok"] for c in doc["compare"])


def test_deep_runs_lamina_bench(tmp_path):
    require_tool("tar")
    require_tool("bsdtar")
    out = script("deep.py", "--entries", "20", "--depth", "40", "--runs", "1", "--dir", tmp_path)
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\s+(tar|bsdtar)\s+\S+\s+\S+\s+\S+\s+\S+\s+(\S+)", out, re.M)}
    # 20 leaves, each at the end of its own chain of 40 directories: 820 names in every tool's tree
    assert rows == {"tar": "820/820", "bsdtar": "820/820"}, out
    assert os.listdir(tmp_path) == []


def test_early_whiteout_times_both_images(tmp_path):
    """Its two images copy into a store and unpack in the overlay format, and each mode prints
    its wall time and the two spans it reads from LAMINA_TRACE; the scratch output is gone."""
    out = script("early_whiteout.py", "-n", "200", "-r", "1", "--modes", "copy,overlay", "--work", tmp_path)
    rows = re.findall(r"^(copy|overlay)\s+n=200 (wall|waited for lowers|upper's end after lower's)\s+plain\s+\S+ s"
                      r"\s+whiteout\s+\S+ s", out, re.M)
    assert len(rows) == 6, out
    assert not os.path.exists(tmp_path / "out"), os.listdir(tmp_path)


def test_micro_benches_run_once_each(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--benchmark-disable",
                           os.path.join(REPO, "bench", "test_micro.py")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"\d+ passed", summary) and "skipped" not in summary, summary
    assert int(summary.split()[0]) >= 10


def test_dedup_cost_measures_runs_pass_pull_and_inline(tmp_path):
    require_tool("docker-registry")
    require_tool("skopeo")
    out = script("dedup_cost.py", "--image", SAMPLE_SRC, "--runs", "1", "--work", tmp_path / "work",
                 "--pull-rates", "0,50", "--json", tmp_path / "cost.json")
    doc = json.load(open(tmp_path / "cost.json"))
    for mode in ("on", "off"):
        r = doc["runs"][mode]
        assert 0 < r["copy_wall"] < r["both_wall"] and 0 < r["copy_cpu"] < r["both_cpu"], r
    layers = doc["pass"]["layers"]
    # the pass sees each layer's final files; the tars may hold more (a path written twice)
    assert layers and 0 < sum(lay["files"] for lay in layers) <= doc["inline"]["files"]
    for lay in layers:  # the phases add up to the pass
        parts = lay["plan_seconds"] + lay["sync_seconds"] + lay["claim_seconds"] + lay["finish_seconds"]
        assert abs(parts - lay["seconds"]) < 1e-6, lay
    assert doc["inline"]["blake3"] > 0 and doc["inline"]["hashed"] > 0
    assert set(doc["pull"]) == {"0", "50"}, doc["pull"].keys()
    for rate, rows in doc["pull"].items():
        for mode in ("on", "off"):
            r = rows[mode]
            assert len(r["raw"]) == 1 and 0 < r["pull_wall"] < r["both_wall"] and 0 < r["pull_cpu"] < r["both_cpu"], r
    assert re.search(r"^ +50 MB/s pull: off .* dedup costs [-+]\d", out, re.M), out
    assert "dedup costs" in out and not os.path.exists(tmp_path / "work" / "on")
    assert not os.path.exists(tmp_path / "work" / "pull")


def test_rebuilt_ab_times_the_rebuilt_copy_for_each_build(tmp_path):
    """rebuilt_ab.py on a tiny tree (one file per layer of rebuilt_image's split), one round."""
    rootfs = tmp_path / "rootfs"
    for rel in ("usr/lib/libx.so", "usr/share/doc/y", "etc/z", "etc/w"):
        (rootfs / rel).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / rel).write_bytes(rel.encode() * 100)
    out = script("rebuilt_ab.py", f"one={sys.executable}", f"two={sys.executable}", "-n", "1", "--work",
                 tmp_path / "work", "--rootfs", rootfs, "--changes", "1", "--settle", "0")
    for name in ("one", "two"):
        assert re.search(rf"^{name}: copy b median \d+\.\d+ s wall, \d+\.\d+ CPU-s over 1 runs$", out, re.M), out


def test_smallfiles_builds_a_padded_layer_and_runs_lamina_bench(tmp_path):
    require_tool("tar")
    root = tmp_path / "rootfs"
    for rel in ("usr/share/a/b", "usr/share/c", "usr/lib/python3.11/json", "usr/lib/other"):
        os.makedirs(root / rel)
    for i in range(5):
        (root / "usr/share/a/b" / f"f{i}").write_bytes(b"x" * i)
        (root / "usr/lib/python3.11/json" / f"m{i}.py").write_text(f"# {i}\n")
    (root / "usr/lib/other/not-taken").write_text("no\n")
    os.symlink("../a/b/f1", root / "usr/share/c/link")
    os.link(root / "usr/share/a/b/f2", root / "usr/share/c/hard")
    args = ["--rootfs", root, "--cache", tmp_path / "cache", "--entries", 50, "-n", 1, "--tools", "tar",
            "--target", tmp_path, "--json", tmp_path / "doc.json"]
    out = script("smallfiles.py", *args)
    # 18 entries per copy (usr/share and usr/lib/python3.11 with their contents): copies 0, 1, 2 (cut at 50)
    assert "50 entries (3 copies of usr/share, usr/lib/python3*)" in out, out
    doc = json.load(open(tmp_path / "doc.json"))
    assert [lay["entries"] for lay in doc["layers"]] == [50] and doc["layers"][0]["entries_per_s"] > 0
    assert [c["tool"] for c in doc["compare"]] == ["tar"] and all(c["tree_ok"] for c in doc["compare"]), doc["compare"]
    again = script("smallfiles.py", *args[:6], "--build-only")  # same trees, same entries: same bytes
    assert out.splitlines()[0] == again.splitlines()[0], (out, again)
