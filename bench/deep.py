"""Deep trees: lamina vs GNU tar vs bsdtar on entries under long directory chains.

The case of the safety issue: N entries, each under its own D-deep chain of
directories the archive does not list (implicit), extracted into tmpfs, so
the cost measured is the extractor's path handling, not the disk.

    python bench/deep.py [--entries 200] [--depth 500] [--runs 5] [--dir /dev/shm]

Prints the median wall time of each tool and lamina's ratio to GNU tar.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time


def build(entries, depth):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as t:
        for i in range(entries):
            info = tarfile.TarInfo("/".join([f"e{i}"] + ["d"] * (depth - 1) + ["f"]))
            info.size = 1
            t.addfile(info, io.BytesIO(b"x"))
    return out.getvalue()


def timed(cmd, dest):
    os.makedirs(dest)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=dest)
    took = time.perf_counter() - t
    shutil.rmtree(dest)
    return took


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=200)
    p.add_argument("--depth", type=int, default=500)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--dir", default="/dev/shm")
    a = p.parse_args()
    work = tempfile.mkdtemp(dir=a.dir, prefix="lamina-deep-")
    try:
        tar = os.path.join(work, "deep.tar")
        with open(tar, "wb") as f:
            f.write(build(a.entries, a.depth))
        dest = os.path.join(work, "out")
        tools = {
            "lamina": [sys.executable, "-m", "lamina", "apply", tar, "."],
            "gnu-tar": ["tar", "-xf", tar],
            "bsdtar": ["bsdtar", "-xf", tar],
        }
        times = {k: [] for k in tools}
        for _ in range(a.runs):
            for name, cmd in tools.items():  # interleaved, so noise hits every tool alike
                times[name].append(timed(cmd, dest))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{a.entries} entries x {a.depth} levels, {a.runs} runs on {a.dir} (median seconds)")
        for k, v in med.items():
            print(f"  {k:8s} {v:7.3f}s  ({v / med['gnu-tar']:.2f}x GNU tar)")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
