"""What the store's file dedup costs a cold copy (issue 9: ≤ 5% of wall time on 2 cores).

Three measurements, on a scratch dir (tmpfs by default, so the disk does not set the pace):

1. ``runs``: cold ``lamina copy IMAGE bench:1`` into a fresh store (``LAMINA_ROOT``), then
   ``lamina unpack bench:1 DEST``, with ``dedup`` on and off (``lamina config set dedup``),
   interleaved (on/off, then off/on, ...) so that load drifts hit both alike; wall and CPU
   (user + system of the children) medians, for the copy alone and for copy + unpack.
2. ``pass``: one more copy with dedup on, run in a child process that wraps
   ``objects.dedup_snapshot`` and sums its ``DedupStats`` phases over the layers: plan (the
   walk that swaps duplicates and plans new objects), sync (including the wait for the other
   layers' writers), claim (the renames into objects/ after the sync), finish (the extractor's
   leftover names and the file list).  Wall seconds, per layer thread.
3. ``pull``: what the issue names first, a cold ``lamina pull REF`` + ``lamina unpack REF DEST``
   from a loopback docker-registry (bench/pull.py's), dedup on vs off, interleaved; once per
   ``--pull-rates`` entry in MB/s: 0 is the registry directly (CPU-bound: dedup's CPU shows in
   the wall), a rate goes through bench/linkproxy.py's shared link (what a real pull meets).
4. ``inline``: the ``Extractor`` alone (one thread, CPU seconds) on the image's uncompressed
   layers held in memory, with and without ``hash_files_into``; and blake3 alone over the same
   files' bytes in memory.  With minus without is what the writer pays inline; minus blake3,
   what naming each file in ``hashed/`` costs (flistxattr + linkat).

    python3 bench/dedup_cost.py [--image oci:DIR:TAG] [--runs 5] [--work /dev/shm/lamina-dedup-cost]
                                [--only runs,pass,pull,inline] [--pull-rates 0,40]
                                [--json FILE]

Run as root (the image has root-owned files).  Uses the ``lamina`` of the running interpreter.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

CACHE = os.environ.get("LAMINA_BENCH_CACHE", "/var/tmp/lamina-bench")
LAMINA = [sys.executable, "-m", "lamina"]


def timed(cmd, env):
    """(wall s, CPU s of the child) of one command; its output is dropped (shown if it fails)."""
    with tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}\n{err.read().decode(errors='replace')}")
    return wall, ru.ru_utime + ru.ru_stime


def cold_run(work, image, dedup):
    """One cold copy + unpack into a fresh store; {"copy": (wall, cpu), "unpack": (wall, cpu)}."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = dict(os.environ, LAMINA_ROOT=os.path.join(work, "store"))
    subprocess.run(LAMINA + ["config", "set", "dedup", "true" if dedup else "false"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    os.sync()
    out = {"copy": timed(LAMINA + ["copy", image, "bench:1"], env=env),
           "unpack": timed(LAMINA + ["unpack", "bench:1", os.path.join(work, "dest")], env=env)}
    shutil.rmtree(work, ignore_errors=True)
    return out


def runs(work, image, n):
    res = {"off": [], "on": []}
    for k in range(n):
        for mode in (("on", "off") if k % 2 == 0 else ("off", "on")):
            r = cold_run(os.path.join(work, mode), image, mode == "on")
            res[mode].append(r)
            print(f"  run {k} dedup {mode:3}: copy {r['copy'][0]:.2f} s wall {r['copy'][1]:.2f} CPU-s, "
                  f"+ unpack {r['copy'][0] + r['unpack'][0]:.2f} / {r['copy'][1] + r['unpack'][1]:.2f}  "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    out = {}
    for mode, rs in res.items():
        out[mode] = {
            "copy_wall": statistics.median(r["copy"][0] for r in rs),
            "copy_cpu": statistics.median(r["copy"][1] for r in rs),
            "both_wall": statistics.median(r["copy"][0] + r["unpack"][0] for r in rs),
            "both_cpu": statistics.median(r["copy"][1] + r["unpack"][1] for r in rs),
            "raw": rs,
        }
    return out


_PASS_CHILD = r"""
import json, sys, time
from lamina.store import objects
totals, layers = {}, []
orig = objects.dedup_snapshot
def wrapped(*a, **k):
    st = orig(*a, **k)
    layers.append({k: v for k, v in st.to_dict().items() if k in ("files", "seconds", "plan_seconds",
                   "sync_seconds", "claim_seconds", "finish_seconds", "new_objects", "linked")})
    return st
objects.dedup_snapshot = wrapped
from lamina.cli import main
t = time.perf_counter()
try:
    main(["copy", sys.argv[1], "bench:1"])
except SystemExit as e:
    if e.code:
        raise
json.dump({"wall": time.perf_counter() - t, "layers": layers}, sys.stderr)
"""


def pass_phases(work, image):
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = dict(os.environ, LAMINA_ROOT=os.path.join(work, "store"))
    p = subprocess.run([sys.executable, "-c", _PASS_CHILD, image], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, check=True)
    shutil.rmtree(work, ignore_errors=True)
    doc = json.loads(p.stderr.decode().strip().splitlines()[-1])
    for lay in doc["layers"]:  # in the order the passes finished; a lamina before the split has no phases
        phases = " + ".join(f"{k} {lay[f'{k}_seconds']:.3f}" for k in ("plan", "sync", "claim", "finish")
                            if f"{k}_seconds" in lay)
        print(f"  layer pass: {lay['files']} files, {lay['seconds']:.3f} s" + (f" = {phases}" if phases else ""))
    return doc


def pull_runs(work, image, n, rates):
    """{"RATE": {"on"|"off": {"pull_wall", "pull_cpu", "both_wall", "both_cpu", "raw"}}}: cold pulls
    (+ unpack) through a loopback registry, directly (rate 0) or through a shared link of ``rate`` MB/s."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from linkproxy import LinkProxy
    from pull import LoopbackRegistry
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    reg = LoopbackRegistry(work)
    out = {}
    try:
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", image,
                        f"docker://{reg.host}/bench:latest"], check=True)
        for rate in rates:
            proxy = LinkProxy(reg.host, rate * 1e6) if rate else None
            ref = f"{proxy.host if proxy else reg.host}/bench:latest"
            res = {"off": [], "on": []}
            try:
                for k in range(n + 1):  # run 0: a warm-up of each, not counted
                    for mode in (("on", "off") if k % 2 == 0 else ("off", "on")):
                        run = os.path.join(work, "run")
                        shutil.rmtree(run, ignore_errors=True)
                        os.makedirs(run)
                        env = dict(os.environ, LAMINA_ROOT=os.path.join(run, "store"))
                        subprocess.run(LAMINA + ["config", "set", "dedup", "true" if mode == "on" else "false"],
                                       env=env, check=True, stdout=subprocess.DEVNULL)
                        os.sync()
                        r = {"pull": timed(LAMINA + ["pull", "-q", ref], env),
                             "unpack": timed(LAMINA + ["unpack", ref, os.path.join(run, "dest")], env)}
                        shutil.rmtree(run, ignore_errors=True)
                        print(f"  {rate or 'unlimited'} MB/s {'warm-up' if k == 0 else f'run {k}'} dedup {mode:3}: "
                              f"pull {r['pull'][0]:.2f} s wall {r['pull'][1]:.2f} CPU-s, + unpack "
                              f"{r['pull'][0] + r['unpack'][0]:.2f} / {r['pull'][1] + r['unpack'][1]:.2f}  "
                              f"(load {os.getloadavg()[0]:.1f})", flush=True)
                        if k:
                            res[mode].append(r)
            finally:
                if proxy:
                    proxy.stop()
            out[f"{rate:g}"] = {mode: {"pull_wall": statistics.median(r["pull"][0] for r in rs),
                                "pull_cpu": statistics.median(r["pull"][1] for r in rs),
                                "both_wall": statistics.median(r["pull"][0] + r["unpack"][0] for r in rs),
                                "both_cpu": statistics.median(r["pull"][1] + r["unpack"][1] for r in rs),
                                "raw": rs} for mode, rs in res.items()}
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


def report_costs(rows, label_of):
    """One line per (what, label): off and on medians, and what dedup adds in wall and CPU."""
    for what, label in label_of:
        off_w, on_w = rows["off"][f"{what}_wall"], rows["on"][f"{what}_wall"]
        off_c, on_c = rows["off"][f"{what}_cpu"], rows["on"][f"{what}_cpu"]
        print(f"{label:>20}: off {off_w:.2f} s / {off_c:.2f} CPU-s, on {on_w:.2f} s / {on_c:.2f} CPU-s: "
              f"dedup costs {100 * (on_w / off_w - 1):+.1f}% wall, {100 * (on_c / off_c - 1):+.1f}% CPU")


def layer_tars(image):
    """The image's uncompressed layers (bytes), bottom first, read from its OCI layout."""
    if not image.startswith("oci:"):
        raise SystemExit("--only inline needs an oci:DIR:TAG image")
    layout, _, tag = image[4:].rpartition(":")

    def read(*parts):
        with open(os.path.join(layout, *parts), "rb") as f:
            return f.read()

    def blob(digest):
        return read("blobs", *digest.split(":"))

    index = json.loads(read("index.json"))
    desc = next(m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    manifest = json.loads(blob(desc["digest"]))
    out = []
    for layer in manifest["layers"]:
        data = blob(layer["digest"])
        if layer["mediaType"].endswith("gzip"):
            data = gzip.decompress(data)
        elif layer["mediaType"].endswith("zstd"):
            data = subprocess.run(["zstd", "-dc"], input=data, stdout=subprocess.PIPE, check=True).stdout
        out.append(data)
    return out


def extract_cpu(tar, dest, hashed):
    """Thread CPU seconds of one Extractor run of ``tar`` (bytes) into ``dest``, fed 1 MiB at a time."""
    from lamina._extract import Extractor
    os.makedirs(dest)
    if hashed:
        os.makedirs(hashed)
    mv = memoryview(tar)
    t = time.thread_time()
    ex = Extractor(dest, format="overlay", hash_files_into=hashed)
    try:
        for off in range(0, len(mv), 1 << 20):
            ex.feed(mv[off:off + (1 << 20)])
        ex.finish()
    finally:
        ex.close()
    return time.thread_time() - t


def file_payloads(tar):
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return [t.extractfile(m).read() for m in t.getmembers() if m.isreg()]


def inline(work, image, n):
    from lamina import _objects
    tars = layer_tars(image)
    payloads = [p for tar in tars for p in file_payloads(tar)]
    res = {"plain": [], "hashed": [], "blake3": []}
    for k in range(n):
        for mode in ("plain", "hashed"):
            shutil.rmtree(work, ignore_errors=True)
            cpu = 0.0
            for i, tar in enumerate(tars):
                d = os.path.join(work, str(i))
                cpu += extract_cpu(tar, os.path.join(d, "fs"), os.path.join(d, "hashed") if mode == "hashed" else None)
            res[mode].append(cpu)
        t = time.thread_time()
        for p in payloads:
            _objects.hash_bytes(p)
        res["blake3"].append(time.thread_time() - t)
        print(f"  run {k}: extract {res['plain'][-1]:.3f} CPU-s, with hash_files_into {res['hashed'][-1]:.3f}, "
              f"blake3 of the {len(payloads)} files in memory {res['blake3'][-1]:.3f}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    med["files"], med["file_bytes"] = len(payloads), sum(map(len, payloads))
    med["holds"] = med["hashed"] - med["plain"] - med["blake3"]
    return med


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default=f"oci:{CACHE}/image:bench")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", default="/dev/shm/lamina-dedup-cost")
    ap.add_argument("--only", default="runs,pass,pull,inline", help="comma-separated: runs, pass, pull, inline")
    ap.add_argument("--pull-rates", default="0,40", metavar="RATES",
                    help="pull: comma-separated MB/s of the shared link, 0 = the registry directly (default 0,40)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    report = {"image": args.image, "runs": args.runs}
    if "runs" in parts:
        print(f"cold copy (+ unpack), dedup on vs off, {args.runs} interleaved runs:")
        r = report["runs"] = runs(args.work, args.image, args.runs)
        report_costs(r, (("copy", "copy"), ("both", "copy + unpack")))
    if "pass" in parts:
        print("the dedup pass of a cold copy, per layer (wall, in each layer's thread):")
        report["pass"] = pass_phases(os.path.join(args.work, "pass"), args.image)
    if "pull" in parts:
        rates = [float(x) for x in args.pull_rates.split(",")]
        print(f"cold pull (+ unpack) from a loopback registry, dedup on vs off, {args.runs} interleaved runs:")
        r = report["pull"] = pull_runs(os.path.join(args.work, "pull"), args.image, args.runs, rates)
        for rate, rows in r.items():
            link = f"{rate} MB/s" if float(rate) else "unlimited"
            report_costs(rows, (("pull", f"{link} pull"), ("both", f"{link} + unpack")))
    if "inline" in parts:
        print(f"the extractor alone (CPU-s of its thread), {args.runs} runs:")
        m = report["inline"] = inline(os.path.join(args.work, "inline"), args.image, args.runs)
        print(f"medians: extract {m['plain']:.3f} CPU-s, with hash_files_into {m['hashed']:.3f} "
              f"(+{m['hashed'] - m['plain']:.3f}: blake3 {m['blake3']:.3f} over {m['files']} files / "
              f"{m['file_bytes'] / 1e6:.0f} MB, naming them in hashed/ {m['holds']:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
