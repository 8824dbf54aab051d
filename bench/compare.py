#!/usr/bin/env python3
"""Side-by-side: lamina vs umoci / GNU tar / pigz / tarfile+isal on the bench image.

Every tool runs as a child process (so its peak RSS can be read from
os.wait4's rusage) and unpacks the image built by bench/corpus.py into a
destination on tmpfs.  The destination is removed between runs, outside the
timing.  The layer blobs stay in the page cache (one untimed warm-up run of
every tool reads them first).

    sudo python bench/compare.py                  # 5 repetitions, table on stdout
    sudo python bench/compare.py -n 3 --json out.json
    sudo python bench/compare.py --tools lamina-cli,umoci

What is timed:
  * external commands (lamina CLI, umoci, tar, pigz): wall time from spawn to
    exit of the child (tar/pigz: the sum over one child per layer, in order);
  * python children (lamina API, tarfile+isal): the time of the call itself,
    measured inside the child (interpreter start-up and imports excluded).
The tar/pigz/tarfile baselines only extract: they neither verify digests nor
apply whiteouts (the .wh.* files are left as plain files), so they are a lower
bound for "just write the bytes", not equivalent work.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import corpus  # noqa: E402
from lamina.bench import count_entries  # noqa: E402

LAMINA_API_CHILD = r"""
import json, sys, time
import lamina
src, dest = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
st = lamina.unpack(src, dest)
dt = time.perf_counter() - t0
try:
    d = st.to_dict()
except Exception:
    d = {}
print(json.dumps({"seconds": dt, "stats": d}, default=str))
"""

TARFILE_CHILD = r"""
import json, sys, tarfile, time
from isal import igzip
dest, blobs = sys.argv[1], sys.argv[2:]
kw = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
t0 = time.perf_counter()
for blob in blobs:
    with igzip.open(blob, "rb") as f:
        with tarfile.open(fileobj=f, mode="r|", bufsize=1 << 20) as tf:
            tf.extractall(dest, numeric_owner=True, **kw)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt}))
"""


# --------------------------------------------------------------------------
# running children


class ChildError(Exception):
    pass


GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run_child(argv, cwd=None):
    """Run argv; return (wall seconds, peak RSS KiB, cpu seconds, stdout).

    Output goes to temp files (not pipes) so that we can reap the child
    ourselves with os.wait4 and get its rusage, which on Linux also covers the
    children it waited for (e.g. tar's gzip).  ru_maxrss of a child forked from
    this Python process would never read below this process's own RSS (the
    kernel counts the pre-exec memory), so when GNU time exists the command runs
    under `/usr/bin/time -f %M`, a small process whose floor is ~2 MB, and its
    figure is the one reported.
    """
    argv = [str(a) for a in argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix="lamina-rss-") as rssf:
        full = [GNU_TIME, "-f", "%M", "-o", rssf.name, "--"] + argv if GNU_TIME else argv
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        rss = ru.ru_maxrss
        if GNU_TIME:
            try:
                with open(rssf.name) as f:
                    rss = int(f.read().strip().splitlines()[-1])
            except (ValueError, IndexError, OSError):
                pass
    if proc.returncode != 0:
        cmd = " ".join(a if len(a) < 80 else a[:40] + "..." for a in argv)
        tail = "\n".join(stderr.strip().splitlines()[-5:]) or stdout.strip()[-500:]
        raise ChildError(f"exited {proc.returncode}: {tail}  [command: {cmd}]")
    return wall, rss, ru.ru_utime + ru.ru_stime, stdout


def last_json(stdout):
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    try:
        return json.loads(stdout)
    except ValueError:
        return None


def lamina_cli():
    """The lamina console script of this interpreter (not a pyenv/asdf shim, which adds ~0.1 s of
    bash per call), else ``python -m lamina``."""
    exe = os.path.join(os.path.dirname(sys.executable), "lamina")
    if os.access(exe, os.X_OK):
        return [exe]
    return [sys.executable, "-m", "lamina"]


# --------------------------------------------------------------------------
# the tools


class Tool:
    """name; run(dest) -> dict(seconds, wall, rss_kib, cpu, stats)."""

    def __init__(self, name, label, run, is_lamina=False, image="gzip"):
        self.name, self.label, self.run, self.is_lamina, self.image = name, label, run, is_lamina, image


def make_tools(summary, layers_gz, layers_zst):
    img = summary["image"]            # oci:PATH:bench
    img_zst = summary["image_zstd"]
    umoci_img = img[len("oci:"):]     # PATH:bench

    def external(argv_fn, parse_stats=False):
        def run(dest):
            wall, rss, cpu, out = run_child(argv_fn(dest))
            stats = last_json(out) if parse_stats else None
            return {"seconds": wall, "wall": wall, "rss_kib": rss, "cpu": cpu, "stats": stats}
        return run

    def per_layer(argv_fn, blobs):
        def run(dest):
            os.makedirs(dest, exist_ok=True)
            total = cpu = 0.0
            rss = 0
            for blob in blobs:
                wall, r, c, _ = run_child(argv_fn(blob, dest))
                total += wall
                cpu += c
                rss = max(rss, r)
            return {"seconds": total, "wall": total, "rss_kib": rss, "cpu": cpu, "stats": None}
        return run

    def python_child(code, args_fn):
        def run(dest):
            wall, rss, cpu, out = run_child([sys.executable, "-c", code] + args_fn(dest))
            res = last_json(out) or {}
            return {"seconds": res.get("seconds", wall), "wall": wall, "rss_kib": rss, "cpu": cpu,
                    "stats": res.get("stats")}
        return run

    tar = shutil.which("tar") or "tar"
    tools = [
        Tool("lamina-cli", "lamina unpack (CLI, gzip)",
             external(lambda d: lamina_cli() + ["unpack", img, d, "--json"], parse_stats=True), is_lamina=True),
        Tool("lamina-api", "lamina.unpack() (Python API, gzip)",
             python_child(LAMINA_API_CHILD, lambda d: [img, d]), is_lamina=True),
        Tool("lamina-zstd", "lamina unpack (CLI, zstd image)",
             external(lambda d: lamina_cli() + ["unpack", img_zst, d, "--json"], parse_stats=True),
             is_lamina=True, image="zstd"),
        Tool("lamina-overlay", "lamina unpack --format overlay (CLI, gzip)",
             external(lambda d: lamina_cli() + ["unpack", img, d, "--format", "overlay", "--json"],
                      parse_stats=True), is_lamina=True),
        Tool("umoci", "umoci raw unpack",
             external(lambda d: ["umoci", "raw", "unpack", "--image", umoci_img, d])),
        Tool("tar-gzip", "GNU tar -xzf, per layer",
             per_layer(lambda b, d: [tar, "--numeric-owner", "-xzf", b, "-C", d], layers_gz)),
        Tool("tar-pigz", "GNU tar -I pigz -xf, per layer",
             per_layer(lambda b, d: [tar, "--numeric-owner", "-I", "pigz", "-xf", b, "-C", d], layers_gz)),
        Tool("tar-zstd", "GNU tar -I zstd -xf, per layer (zstd image)",
             per_layer(lambda b, d: [tar, "--numeric-owner", "-I", "zstd", "-xf", b, "-C", d], layers_zst),
             image="zstd"),
        Tool("tarfile-isal", "python tarfile 'r|' over isal.igzip, per layer",
             python_child(TARFILE_CHILD, lambda d: [d] + layers_gz)),
    ]
    return tools


DEFAULT_TOOLS = "lamina-cli,lamina-api,lamina-zstd,umoci,tar-gzip,tar-pigz,tarfile-isal"


# --------------------------------------------------------------------------
# destination on tmpfs


class Scratch:
    """A fresh tmpfs mounted on a temp dir (root), else a dir under /dev/shm."""

    def __init__(self, where=None, size="12g"):
        self.where, self.size, self.mounted, self.path = where, size, False, None

    def __enter__(self):
        if self.where:
            os.makedirs(self.where, exist_ok=True)
            self.path = tempfile.mkdtemp(prefix="lamina-cmp-", dir=self.where)
            return self
        self.path = tempfile.mkdtemp(prefix="lamina-cmp-")
        if os.geteuid() == 0:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "lamina-bench",
                                self.path], capture_output=True, text=True)
            if r.returncode == 0:
                self.mounted = True
                return self
            print(f"compare: cannot mount tmpfs ({r.stderr.strip()}); using /dev/shm", file=sys.stderr)
        os.rmdir(self.path)
        self.path = tempfile.mkdtemp(prefix="lamina-cmp-", dir="/dev/shm")
        return self

    def __exit__(self, *exc):
        if self.mounted:
            subprocess.run(["umount", self.path], check=False)
        shutil.rmtree(self.path, ignore_errors=True)


def clean(path):
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)
    # lamina's staging siblings, if a run died half way
    parent, base = os.path.split(path)
    for name in os.listdir(parent):
        if name.startswith(base + ".lamina-tmp"):
            subprocess.run(["rm", "-rf", "--one-file-system", os.path.join(parent, name)], check=False)


def warm(paths):
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 22):
                pass


# --------------------------------------------------------------------------
# stats helpers


def stage_seconds(stats):
    """Flatten lamina's UnpackStats dict into {stage: seconds}."""
    out = {}
    if not isinstance(stats, dict):
        return out
    for k, v in (stats.get("seconds") or {}).items():
        if isinstance(v, (int, float)):
            out[k] = out.get(k, 0.0) + v
    for layer in stats.get("layers") or []:
        if isinstance(layer, dict):
            for k, v in (layer.get("seconds") or {}).items():
                if isinstance(v, (int, float)):
                    key = "layers." + k
                    out[key] = out.get(key, 0.0) + v
    return out


def median_dict(dicts):
    keys = []
    for d in dicts:
        for k in d:
            if k not in keys:
                keys.append(k)
    return {k: statistics.median([d[k] for d in dicts if k in d]) for k in keys}


def layout_blobs(layout_ref):
    path = layout_ref[len("oci:"):].rsplit(":", 1)[0]
    _, manifest = corpus.manifest_of(path)
    return [corpus.blob_path(path, layer["digest"]) for layer in manifest["layers"]]


# --------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--reps", type=int, default=5, help="timed repetitions per tool (default 5)")
    ap.add_argument("--tools", default=DEFAULT_TOOLS,
                    help=f"comma-separated subset (default {DEFAULT_TOOLS}; also: lamina-overlay, tar-zstd, all)")
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    ap.add_argument("--dest-dir", metavar="DIR",
                    help="put destinations under DIR instead of a fresh tmpfs mount")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run of each tool")
    args = ap.parse_args(argv)

    summary = corpus.ensure()
    layers_gz = layout_blobs(summary["image"])
    layers_zst = layout_blobs(summary["image_zstd"])
    tools = make_tools(summary, layers_gz, layers_zst)
    if args.tools != "all":
        wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
        unknown = set(wanted) - {t.name for t in tools}
        if unknown:
            ap.error(f"unknown tools: {', '.join(sorted(unknown))}; known: {', '.join(t.name for t in tools)}")
        tools = [t for t in tools if t.name in wanted]
        tools.sort(key=lambda t: wanted.index(t.name))

    tar_bytes, entries = summary["tar_bytes"], summary["entries"]
    print(f"image: {summary['image']}  {len(layers_gz)} layers, gzip {summary['gzip_bytes']/1e6:.1f} MB, "
          f"zstd {summary['zstd_bytes']/1e6:.1f} MB, tar {tar_bytes/1e6:.1f} MB, {entries} entries")
    warm(layers_gz + layers_zst)

    results = {}
    with Scratch(args.dest_dir) as scratch:
        print(f"destinations under {scratch.path} ({'tmpfs mount' if scratch.mounted else 'existing dir'}), "
              f"{args.reps} reps\n", flush=True)
        for tool in tools:
            dest = os.path.join(scratch.path, tool.name)
            res = {"label": tool.label, "runs": [], "error": None}
            results[tool.name] = res
            reps = ([None] if not args.no_warmup else []) + list(range(args.reps))
            for rep in reps:
                clean(dest)
                try:
                    r = tool.run(dest)
                except ChildError as e:
                    res["error"] = str(e)
                    print(f"  {tool.name}: FAILED: {e}", flush=True)
                    break
                except Exception as e:  # noqa: BLE001 - a broken tool must not stop the others
                    res["error"] = f"{type(e).__name__}: {e}"
                    print(f"  {tool.name}: FAILED: {res['error']}", flush=True)
                    break
                if rep is None:
                    res["dest_entries"] = count_entries(dest)
                    print(f"  {tool.name}: warm-up {r['seconds']:.2f}s, {res['dest_entries']} entries in dest",
                          flush=True)
                else:
                    res["runs"].append(r)
                    print(f"  {tool.name}: run {rep + 1}/{args.reps} {r['seconds']:.2f}s "
                          f"(rss {r['rss_kib']/1024:.0f} MB)", flush=True)
            clean(dest)
            if res["runs"]:
                secs = [r["seconds"] for r in res["runs"]]
                res["median"] = statistics.median(secs)
                res["min"] = min(secs)
                res["max"] = max(secs)
                res["cpu_median"] = statistics.median(r["cpu"] for r in res["runs"])
                res["rss_mib"] = max(r["rss_kib"] for r in res["runs"]) / 1024
                res["mb_per_s"] = tar_bytes / 1e6 / res["median"]
                res["entries_per_s"] = entries / res["median"]
                stages = [stage_seconds(r["stats"]) for r in res["runs"] if r.get("stats")]
                if stages:
                    res["stages"] = median_dict(stages)
                st = next((r["stats"] for r in res["runs"] if isinstance(r.get("stats"), dict)), None)
                if st:
                    res["lamina_entries"] = st.get("entries")
                    res["lamina_bytes"] = st.get("bytes")
            for r in res["runs"]:
                r.pop("stats", None)  # keep the JSON small; stages carry the useful part

    base = results.get("lamina-cli", {}).get("median") or results.get("lamina-api", {}).get("median")
    base_name = "lamina-cli" if results.get("lamina-cli", {}).get("median") else "lamina-api"
    print_table(results, tools, base, base_name)

    if args.json:
        doc = {"corpus": summary, "reps": args.reps, "baseline": base_name if base else None,
               "results": results, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "host": {"nproc": os.cpu_count(), "python": sys.version.split()[0], "kernel": os.uname().release}}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"\nwrote {args.json}")


def print_table(results, tools, base, base_name):
    print()
    hdr = (f"{'tool':<46} {'median s':>8} {'min s':>7} {'x lamina':>8} {'MB/s':>7} {'entries/s':>9} "
           f"{'cpu s':>6} {'RSS MB':>7}")
    print(hdr)
    print("-" * len(hdr))
    for tool in tools:
        res = results.get(tool.name)
        if res is None:
            continue
        if "median" not in res:
            print(f"{tool.label:<46} {'FAILED':>8}  {(res.get('error') or '').splitlines()[0][:100]}")
            continue
        ratio = f"{res['median'] / base:8.2f}" if base else f"{'-':>8}"
        print(f"{tool.label:<46} {res['median']:8.2f} {res['min']:7.2f} {ratio} {res['mb_per_s']:7.0f} "
              f"{res['entries_per_s']:9.0f} {res['cpu_median']:6.2f} {res['rss_mib']:7.0f}")
    if base:
        print(f"(x lamina = median / median of {base_name}; MB/s and entries/s over the uncompressed tar bytes "
              f"and entries of all layers)")
    for tool in tools:
        res = results.get(tool.name) or {}
        if res.get("stages"):
            parts = ", ".join(f"{k} {v:.2f}" for k, v in res["stages"].items())
            print(f"{tool.name} stages (median s): {parts}")
    for tool in tools:
        res = results.get(tool.name) or {}
        if "dest_entries" in res:
            print(f"{tool.name}: {res['dest_entries']} entries in dest after unpack", end="")
            if res.get("lamina_entries") is not None:
                print(f" (lamina stats: {res['lamina_entries']} tar entries, {res['lamina_bytes']} bytes)", end="")
            print()


if __name__ == "__main__":
    main()
