#!/usr/bin/env python3
"""Pull + unpack from a loopback registry: lamina vs skopeo copy + umoci raw unpack.

The bench image built by bench/corpus.py (oci:$LAMINA_BENCH_CACHE/image:bench, default
/var/tmp/lamina-bench) is pushed with skopeo to a docker-registry (distribution, Debian's
/usr/bin/docker-registry) started on 127.0.0.1 with its storage on the scratch tmpfs.  Then,
interleaved, each timed repetition runs in a fresh directory:

  lamina          lamina --root STORE pull REF
                  -> verified blobs + one overlay-format snapshot per layer (the unpacked,
                     mountable image: mount -t overlay ... lowerdir=snapshots)
  lamina+flat     the same, then lamina unpack REF DEST from the store (flat rootfs), when
                  the CLI supports store references
  skopeo+umoci    skopeo copy docker://REF oci:DIR:bench  then  umoci raw unpack --image DIR:bench ROOTFS
                  (the two wall times added; skopeo verifies digests, umoci the diffIDs)

Wall time of each child process from spawn to exit (CLI start-up included), medians over the
repetitions after one untimed warm-up of each; the registry's blob files stay in the page
cache.  Everything lands on a fresh tmpfs (root) or under --dest-dir.

    sudo python bench/pull.py                 # 5 repetitions, table on stdout
    sudo python bench/pull.py -n 3 --json out.json

Link-limited mode (--link RATES): the registry is reached through bench/linkproxy.py, a loopback
reverse proxy whose blob bodies share one token bucket of RATE MB/s (10^6 bytes), as a real link
would be shared by concurrent downloads; 0 means unlimited (the registry directly).  For each rate
and repetition, in a fresh directory:

  transfer        the blob bytes (layers + config) / RATE; for unlimited, measured
  measured        the blobs fetched 3 at a time by this process through the same proxy and
                  thrown away (what the proxy really delivers on this machine)
  pull            lamina pull REF
  pull+unpack     that, then lamina unpack REF DEST from the store (flat rootfs)
  unpack docker   lamina unpack docker://REF DEST (nothing kept)
  skopeo+umoci    skopeo copy docker://REF oci:DIR then umoci raw unpack

each reported as the median wall time over the repetitions and as a ratio to the transfer time,
with the peak RSS (max over the repetitions); then each one's median CPU seconds (user + system
of the process and its children: what an A/B on a loaded machine can compare) and, unlimited,
its wall time as a ratio to skopeo+umoci's (the issue's unlimited targets).  --baseline PYTHON also runs the three lamina
rows with another installation's lamina (e.g. the main branch's venv), interleaved with these
in every repetition, as "base pull" etc.

    sudo python bench/pull.py --link 20,40,100,0 -n 3
    sudo python bench/pull.py --link 40 -n 5 --baseline /path/to/main-venv/bin/python
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from children import ChildError, Scratch, clean, lamina_cli, run_child  # noqa: E402

CACHE = os.environ.get("LAMINA_BENCH_CACHE", "/var/tmp/lamina-bench")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackRegistry:
    def __init__(self, workdir):
        exe = shutil.which("docker-registry")
        if exe is None:
            sys.exit("bench/pull.py: docker-registry is not installed (apt-get install docker-registry)")
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        storage = os.path.join(workdir, "registry-data")
        cfg = os.path.join(workdir, "registry.yml")
        with open(cfg, "w") as f:
            f.write("\n".join([
                "version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: true",
                "storage:", "  filesystem:", f"    rootdirectory: {storage}",
                "http:", f"  addr: {self.host}", "  secret: lamina-bench", ""]))
        self.log = open(os.path.join(workdir, "registry.log"), "wb")
        self.proc = subprocess.Popen([exe, "serve", cfg], stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit("bench/pull.py: docker-registry did not start")
                time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def _layout_blobs(image):
    """(layout dir, total bytes of the layer and config blobs) of oci:DIR:TAG."""
    layout, tag = image[len("oci:"):].rsplit(":", 1)
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    with open(os.path.join(layout, "blobs", *desc["digest"].split(":"))) as f:
        manifest = json.load(f)
    blobs = manifest["layers"] + [manifest["config"]]
    return blobs, sum(b["size"] for b in blobs)


def measure_transfer(host, repo, blobs, concurrency=3):
    """Seconds to fetch every blob (``concurrency`` at a time) and throw the bytes away."""
    from concurrent.futures import ThreadPoolExecutor

    import urllib3
    pool = urllib3.HTTPConnectionPool(*host.split(":"), maxsize=concurrency)

    def get(b):
        r = pool.request("GET", f"/v2/{repo}/blobs/{b['digest']}", preload_content=False)
        n = sum(len(c) for c in r.stream(1 << 20))
        r.release_conn()
        assert n == b["size"], (b, n)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(get, blobs))
    return time.perf_counter() - t0


LAMINA_TOOLS = ("pull", "pull+unpack", "unpack docker")


def cli_of(python):
    """The lamina console script next to ``python`` (a venv's), else ``python -m lamina``."""
    exe = os.path.join(os.path.dirname(python), "lamina")
    return [exe] if os.access(exe, os.X_OK) else [python, "-m", "lamina"]


def lamina_rows(lamina, ref, paths, prefix=""):
    """{row: (wall, peak RSS KiB, CPU seconds)} of pull, pull + unpack REF and unpack docker://, each
    from scratch."""
    w_pull, r_pull, c_pull, _ = run_child(lamina + ["--root", paths["store"], "pull", "-q", ref])
    w_flat, r_flat, c_flat, _ = run_child(lamina + ["--root", paths["store"], "unpack", ref, paths["flat"]])
    clean(paths["store"])
    clean(paths["flat"])
    w_direct, r_direct, c_direct, _ = run_child(lamina + ["unpack", "--json", f"docker://{ref}", paths["direct"]])
    clean(paths["direct"])
    return {prefix + "pull": (w_pull, r_pull, c_pull),
            prefix + "pull+unpack": (w_pull + w_flat, max(r_pull, r_flat), c_pull + c_flat),
            prefix + "unpack docker": (w_direct, r_direct, c_direct)}


def link_main(args):
    from linkproxy import LinkProxy
    rates = [float(r) for r in args.link.split(",")]
    blobs, total = _layout_blobs(args.image)
    print(f"{args.image}: {len(blobs)} blobs, {total / 1e6:.1f} MB; rates {rates} MB/s (0 = unlimited), "
          f"{args.reps} reps + 1 warm-up per rate", flush=True)
    lamina = lamina_cli()
    base = cli_of(args.baseline) if args.baseline else None
    tools = LAMINA_TOOLS + (tuple("base " + k for k in LAMINA_TOOLS) if base else ()) + ("skopeo+umoci",)
    table = {}
    with Scratch(args.dest_dir) as scratch:
        reg = LoopbackRegistry(scratch.path)
        try:
            run_child(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", args.image,
                       f"docker://{reg.host}/bench:latest"])
            for rate in rates:
                proxy = LinkProxy(reg.host, rate * 1e6) if rate else None
                host = proxy.host if proxy else reg.host
                ref = f"{host}/bench:latest"
                runs = {k: [] for k in ("transfer", "measured") + tools}
                cpu = {k: [] for k in tools}
                rss = {k: 0 for k in tools}
                for rep in range(args.reps + 1):
                    paths = {k: os.path.join(scratch.path, k) for k in ("store", "flat", "direct", "oci", "rootfs")}
                    for p in paths.values():
                        clean(p)
                    measured = measure_transfer(host, "bench", blobs)
                    transfer = total / (rate * 1e6) if rate else measured
                    rows = {}
                    # this lamina and the baseline take turns going first
                    order = [(lamina, ""), (base, "base ")] if base else [(lamina, "")]
                    for cli, prefix in (order if rep % 2 else order[::-1]):
                        rows.update(lamina_rows(cli, ref, paths, prefix))
                    w_sk, r_sk, c_sk, _ = run_child(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                                     f"docker://{ref}", f"oci:{paths['oci']}:bench"])
                    w_um, r_um, c_um, _ = run_child(["umoci", "raw", "unpack", "--image", f"{paths['oci']}:bench",
                                                     paths["rootfs"]])
                    for p in (paths["oci"], paths["rootfs"]):
                        clean(p)
                    rows["skopeo+umoci"] = (w_sk + w_um, max(r_sk, r_um), c_sk + c_um)
                    row = {"transfer": transfer, "measured": measured, **{k: rows[k][0] for k in tools}}
                    label = f"run {rep}/{args.reps}" if rep else "warm-up"
                    print(f"  {rate or 'unlimited'} MB/s {label}: " +
                          ", ".join(f"{k} {v:.2f}s" for k, v in row.items()), flush=True)
                    if rep:
                        for k, v in row.items():
                            runs[k].append(v)
                        for k in tools:
                            rss[k] = max(rss[k], rows[k][1])
                            cpu[k].append(rows[k][2])
                if proxy:
                    proxy.stop()
                table[rate] = {"runs": runs, "median": {k: statistics.median(v) for k, v in runs.items()},
                               "peak_rss_kib": rss, "cpu_seconds": cpu,
                               "median_cpu_seconds": {k: statistics.median(v) for k, v in cpu.items()}}
        finally:
            reg.stop()

    print(f"\nmedians over {args.reps} runs (shared 2-core machine: noisy); ratio = wall / transfer time")
    print("transfer = blob bytes / rate (unlimited: measured); measured = this process fetching the blobs "
          "3 at a time through the same proxy")
    print(f"{'link':>10} {'transfer':>9} {'measured':>9} " + " ".join(f"{k:>21}" for k in tools))
    for rate, t in table.items():
        med = t["median"]
        cells = " ".join(f"{med[k]:>7.2f}s {med[k] / med['transfer']:>5.2f}x {t['peak_rss_kib'][k] // 1024:>3}MiB"
                         for k in tools)
        print(f"{(f'{rate:g} MB/s' if rate else 'unlimited'):>10} {med['transfer']:>8.2f}s {med['measured']:>8.2f}s "
              f"{cells}")
    # Other processes' load moves every wall time of a CPU-bound run; what the processes
    # themselves burned (user + system, children included) is what an A/B can compare then.
    # Unlimited, the targets are ratios to skopeo + umoci, not to the transfer.
    print("\nCPU seconds (user + system), medians; unlimited: wall / skopeo+umoci wall in brackets")
    print(f"{'link':>10} " + " ".join(f"{k:>21}" for k in tools))
    for rate, t in table.items():
        med, mcpu = t["median"], t["median_cpu_seconds"]
        cells = " ".join(f"{mcpu[k]:>9.2f} CPU-s" + (f" [{med[k] / med['skopeo+umoci']:.2f}x]" if not rate else " " * 8)
                         for k in tools)
        print(f"{(f'{rate:g} MB/s' if rate else 'unlimited'):>10} {cells}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"image": args.image, "bytes": total, "reps": args.reps,
                       "rates": {str(k): v for k, v in table.items()}}, f, indent=2)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--reps", type=int, default=5, help="timed repetitions per tool (default 5)")
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    ap.add_argument("--dest-dir", metavar="DIR", help="work under DIR instead of a fresh tmpfs mount")
    ap.add_argument("--image", default=f"oci:{CACHE}/image:bench", help="OCI layout image to push and pull")
    ap.add_argument("--no-flat", action="store_true", help="skip the lamina pull + flat unpack variant")
    ap.add_argument("--baseline", metavar="PYTHON", help="link-limited mode: also run the lamina rows with "
                    "the lamina of this interpreter (another venv), interleaved")
    ap.add_argument("--link", metavar="RATES", help="link-limited mode: comma-separated MB/s, 0 = unlimited "
                    "(e.g. 20,40,100,0)")
    args = ap.parse_args(argv)

    layout = args.image[len("oci:"):].rsplit(":", 1)[0] if args.image.startswith("oci:") else None
    if not layout or not os.path.isdir(layout):
        sys.exit(f"bench/pull.py: {args.image} not found; build it with: sudo python bench/corpus.py")
    for tool in ("skopeo", "umoci"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/pull.py: {tool} is not installed")
    if args.link:
        return link_main(args)

    results = {"lamina": [], "lamina+flat": [], "skopeo": [], "umoci": [], "skopeo+umoci": []}
    with Scratch(args.dest_dir) as scratch:
        print(f"work dir {scratch.path} ({'tmpfs mount' if scratch.mounted else 'existing dir'}), "
              f"{args.reps} reps", flush=True)
        reg = LoopbackRegistry(scratch.path)
        try:
            ref = f"{reg.host}/bench:latest"
            run_child(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", args.image, f"docker://{ref}"])
            print(f"pushed {args.image} to {ref}", flush=True)
            lamina = lamina_cli()
            flat_ok = not args.no_flat

            def one(rep, timed):
                nonlocal flat_ok
                store = os.path.join(scratch.path, "store")
                oci = os.path.join(scratch.path, "oci")
                rootfs = os.path.join(scratch.path, "rootfs")
                flat = os.path.join(scratch.path, "flat")
                for p in (store, oci, rootfs, flat):
                    clean(p)
                wall, rss, cpu, _ = run_child(lamina + ["--root", store, "pull", "-q", ref])
                flat_wall = None
                if flat_ok:
                    try:
                        flat_wall, _, _, _ = run_child(lamina + ["--root", store, "unpack", ref, flat])
                    except ChildError as e:
                        print(f"  lamina+flat: skipped ({e})", flush=True)
                        flat_ok = False
                for p in (store, flat):
                    clean(p)
                s_wall, s_rss, _, _ = run_child(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                                 f"docker://{ref}", f"oci:{oci}:bench"])
                u_wall, u_rss, _, _ = run_child(["umoci", "raw", "unpack", "--image", f"{oci}:bench", rootfs])
                for p in (oci, rootfs):
                    clean(p)
                label = f"run {rep}/{args.reps}" if timed else "warm-up"
                line = f"  {label}: lamina {wall:.2f}s (rss {rss // 1024} MB)"
                if flat_wall is not None:
                    line += f", +flat {flat_wall:.2f}s"
                line += f" | skopeo {s_wall:.2f}s + umoci {u_wall:.2f}s = {s_wall + u_wall:.2f}s"
                print(line, flush=True)
                if timed:
                    results["lamina"].append(wall)
                    if flat_wall is not None:
                        results["lamina+flat"].append(wall + flat_wall)
                    results["skopeo"].append(s_wall)
                    results["umoci"].append(u_wall)
                    results["skopeo+umoci"].append(s_wall + u_wall)

            one(0, False)
            for rep in range(1, args.reps + 1):
                one(rep, True)
        finally:
            reg.stop()

    med = {k: statistics.median(v) for k, v in results.items() if v}
    base = med["skopeo+umoci"]
    print()
    print(f"{'tool':<14} {'median s':>9} {'vs skopeo+umoci':>16}")
    for k in ("lamina", "lamina+flat", "skopeo", "umoci", "skopeo+umoci"):
        if k in med:
            print(f"{k:<14} {med[k]:>9.2f} {med[k] / base:>15.2f}x")
    print(f"\nratio lamina pull / (skopeo copy + umoci raw unpack) = {med['lamina'] / base:.2f} (target <= 0.30)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"image": args.image, "reps": args.reps, "runs": results, "median": med,
                       "ratio": med["lamina"] / base}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
