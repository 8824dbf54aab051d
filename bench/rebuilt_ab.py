"""Copying a rebuilt image into a store that holds the original, interleaved between two installations.

The second half of issue 9's scenario (bench/rebuilt_image.py builds the images): image "b" differs
from "a" in a few files per layer, so every chainID is new and every layer extracts again, but
almost every file already has an object in the store.  Each run makes a fresh store (dedup on),
copies "a" into it untimed, syncs and lets the disk settle, then times ``lamina copy`` of "b"
(wall, and user + system CPU of the child) — for each interpreter in turn, so load drifts hit both.

    python3 bench/rebuilt_ab.py base=/path/to/venv-a/bin/python new=/path/to/venv-b/bin/python
                                [-n 3] [--work /var/tmp/lamina-rebuilt-ab] [--rootfs DIR] [--settle 3]

``--work`` decides the filesystem measured (a disk by default; /dev/shm/... for tmpfs).  On this
project's VM disk, single copies vary 2-4x from run to run: read the medians of several rounds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rebuilt_image  # noqa: E402  (the layout builder)
from dedup_cost import timed  # noqa: E402


def one_run(python, work, layout, settle):
    root = os.path.join(work, "store")
    shutil.rmtree(root, ignore_errors=True)
    os.sync()
    time.sleep(settle)  # freeing the last store's inodes (discard) must not land in this run
    env = dict(os.environ, LAMINA_ROOT=root)
    subprocess.run([python, "-m", "lamina", "config", "set", "dedup", "true"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([python, "-m", "lamina", "copy", f"oci:{layout}:a", "a:1"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.sync()
    time.sleep(settle)
    result = timed([python, "-m", "lamina", "copy", f"oci:{layout}:b", "b:1"], env)
    shutil.rmtree(root, ignore_errors=True)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("builds", nargs=2, metavar="NAME=PYTHON")
    p.add_argument("-n", type=int, default=3, help="rounds (each build once per round)")
    p.add_argument("--work", default="/var/tmp/lamina-rebuilt-ab")
    p.add_argument("--rootfs", default=os.path.join(rebuilt_image.CACHE, "rootfs-base"))
    p.add_argument("--changes", type=int, default=5)
    p.add_argument("--settle", type=float, default=3.0, help="seconds after each sync")
    args = p.parse_args()
    builds = [b.split("=", 1) for b in args.builds]
    layout = os.path.join(args.work, "layout")
    if not os.path.exists(os.path.join(layout, "index.json")):
        os.makedirs(args.work, exist_ok=True)
        rebuilt_image.build_layout(args.rootfs, layout, args.changes)
    res = {name: [] for name, _ in builds}
    for k in range(args.n):
        for name, python in (builds if k % 2 == 0 else builds[::-1]):
            wall, cpu = one_run(python, args.work, layout, args.settle)
            res[name].append((wall, cpu))
            print(f"  round {k} {name}: copy b {wall:.2f} s wall, {cpu:.2f} CPU-s (load {os.getloadavg()[0]:.1f})",
                  flush=True)
    for name, runs in res.items():
        print(f"{name}: copy b median {statistics.median(w for w, _ in runs):.2f} s wall, "
              f"{statistics.median(c for _, c in runs):.2f} CPU-s over {len(runs)} runs")


if __name__ == "__main__":
    main()
