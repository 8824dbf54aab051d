#!/usr/bin/env python3
"""Side-by-side on the bench image: ``lamina bench`` against umoci / GNU tar / pigz / bsdtar.

The measuring is the command's (lamina.bench): interleaved runs, medians, per-stage and
per-layer figures, each tool's tree checked.  This script only builds the corpus image once
(bench/corpus.py) and runs the command on it, and on its zstd twin with --zstd.

    python bench/compare.py                           # the corpus image, 5 runs, every tool found
    python bench/compare.py -n 3 --json out.json --report report/
    python bench/compare.py --image oci:sample/image:latest -n 1 --tools tar   # any SOURCE, no corpus

The tar / pigz / bsdtar baselines only extract: they neither verify digests nor apply
whiteouts (the .wh.* files are left as plain files), a lower bound for "just write the bytes".
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TOOLS = "tar,pigz,bsdtar,umoci"


def lamina_bench(source, args, report):
    """Run ``lamina bench SOURCE`` (its tables go to our stdout); its JSON document."""
    cmd = [sys.executable, "-m", "lamina", "bench", source, "--runs", str(args.reps), "--report", report]
    if args.tools:
        cmd += ["--compare", args.tools]
    if args.target:
        cmd += ["--target", args.target]
    if args.overlay:
        cmd.append("--overlay")
    print(f"$ lamina bench {' '.join(cmd[4:])}", flush=True)
    subprocess.run(cmd, check=True)
    with open(os.path.join(report, "bench.json")) as f:
        return json.load(f)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--reps", type=int, default=5, help="timed runs per tool (default 5)")
    ap.add_argument("--tools", default=DEFAULT_TOOLS, help=f"--compare of lamina bench (default {DEFAULT_TOOLS}; "
                    "'' for lamina alone)")
    ap.add_argument("--image", metavar="SOURCE", help="measure this instead of the corpus image (anything "
                    "lamina bench takes)")
    ap.add_argument("--zstd", action="store_true", help="also the corpus image recompressed with zstd")
    ap.add_argument("--overlay", action="store_true", help="the overlay format (one dir per layer)")
    ap.add_argument("--target", metavar="DIR", help="unpack under DIR (default: a fresh dir under /dev/shm)")
    ap.add_argument("--json", metavar="FILE", help="also write the documents as JSON ({label: document})")
    ap.add_argument("--report", metavar="DIR", help="keep the HTML reports here (one subdir per image)")
    args = ap.parse_args(argv)

    if args.image:
        images = {"image": args.image}
    else:
        sys.path.insert(0, HERE)
        import corpus
        summary = corpus.ensure()
        images = {"gzip": summary["image"]}
        if args.zstd:
            images["zstd"] = summary["image_zstd"]
    docs = {}
    with tempfile.TemporaryDirectory(prefix="lamina-compare-") as tmp:
        for label, source in images.items():
            report = os.path.join(args.report or tmp, label)
            docs[label] = lamina_bench(source, args, report)
            print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(docs, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
