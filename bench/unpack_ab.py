"""Interleaved A/B of a cold ``lamina.unpack`` between two installations of lamina.

    python3 bench/unpack_ab.py [-n 9] [--image SOURCE] NAME=PYTHON [NAME=PYTHON ...]

Each run is a fresh child process of each PYTHON (a venv's interpreter, e.g. one built
from main and one from a branch), in turn, so that the machine's drift hits both alike:
an untimed warm-up unpack, then one timed unpack of SOURCE (default: the corpus image of
``bench/corpus.py``) into a fresh directory on /dev/shm.  Prints the median and minimum
wall time and the median process CPU time of the timed unpack (start-up not included).

``--tar FILE`` (an uncompressed layer tar, e.g. ``gzip -dc`` of a layer blob) times the
extractor alone instead: ``lamina._extract.Extractor`` fed FILE in 1 MiB reads, on one thread,
no inflate and no hashing -- the parse + write stage, whose CPU time moves least with the
machine's load.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r'''
import json, os, resource, shutil, sys, time
import lamina
source, dest = sys.argv[1], sys.argv[2]
lamina.unpack(source, dest)
shutil.rmtree(dest)
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
lamina.unpack(source, dest)
wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
shutil.rmtree(dest)
print(json.dumps([wall, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime]))
'''

CHILD_TAR = r'''
import json, os, resource, shutil, sys, time
from lamina._extract import Extractor
tar, dest = sys.argv[1], sys.argv[2]
buf = bytearray(1 << 20)
def extract():
    os.mkdir(dest)
    e = Extractor(dest)
    with open(tar, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            e.feed(memoryview(buf)[:n])
    e.finish()
    e.close()
extract()
shutil.rmtree(dest)
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
extract()
wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
shutil.rmtree(dest)
print(json.dumps([wall, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime]))
'''


def main():
    cache = os.environ.get("LAMINA_BENCH_CACHE", "/var/tmp/lamina-bench")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=9, help="runs per installation (default 9)")
    ap.add_argument("--image", default=f"oci:{cache}/image:bench")
    ap.add_argument("--tar", metavar="FILE", help="time the extractor alone on this uncompressed layer tar")
    ap.add_argument("installs", nargs="+", metavar="NAME=PYTHON")
    args = ap.parse_args()
    installs = [spec.split("=", 1) for spec in args.installs]
    results = {name: [] for name, _ in installs}
    for _ in range(args.n):
        for name, python in installs:
            dest = f"/dev/shm/lamina-unpack-ab-{os.getpid()}"
            child, source = (CHILD_TAR, os.path.abspath(args.tar)) if args.tar else (CHILD, args.image)
            out = subprocess.run([python, "-c", child, source, dest], capture_output=True, text=True,
                                 cwd="/tmp")  # not the checkout: each PYTHON imports its own lamina
            if out.returncode:
                sys.exit(f"{name}: {out.stderr.strip()}")
            results[name].append(json.loads(out.stdout.splitlines()[-1]))
    for name, runs in results.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        print(f"{name:12s} wall median {statistics.median(walls):.3f} s  min {min(walls):.3f} s  "
              f"CPU median {statistics.median(cpus):.3f} s  ({len(runs)} runs)")


if __name__ == "__main__":
    main()
