"""Deep trees: lamina vs GNU tar vs bsdtar on entries under long directory chains.

The case of the safety issue: N entries, each under its own D-deep chain of
directories the archive does not list (implicit), extracted into tmpfs, so
the cost measured is the extractor's path handling, not the disk.  The layer is
written to a file and measured by ``lamina bench LAYER --compare tar,bsdtar``.

    python bench/deep.py [--entries 200] [--depth 500] [--runs 5] [--dir /dev/shm]
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile


def build(entries, depth):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as t:
        for i in range(entries):
            info = tarfile.TarInfo("/".join([f"e{i}"] + ["d"] * (depth - 1) + ["f"]))
            info.size = 1
            t.addfile(info, io.BytesIO(b"x"))
    return out.getvalue()


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
        print(f"{a.entries} entries x {a.depth} levels, {a.runs} runs on {a.dir}", flush=True)
        subprocess.run([sys.executable, "-m", "lamina", "bench", tar, "--runs", str(a.runs),
                        "--compare", "tar,bsdtar", "--target", work], check=True)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
