"""Interleaved A/B of a cold ``lamina.unpack`` between two installations of lamina.

    python3 bench/unpack_ab.py [-n 9] [--image SOURCE] NAME=PYTHON [NAME=PYTHON ...]

Each run is a fresh child process of each PYTHON (a venv's interpreter, e.g. one built
from main and one from a branch), in turn, so that the machine's drift hits both alike:
an untimed warm-up unpack, then one timed unpack of SOURCE (default: the corpus image of
``bench/corpus.py``) into a fresh directory on /dev/shm.  Prints the median and minimum
wall time, the median process CPU time and the median CPU time of the main thread (the
caller's, which parses and writes: the critical path when the machine has spare cores) of
the timed unpack (start-up not included).  With ``--tar`` the last is the CPU time of the
slowest extracting thread.

``--tar FILE`` (an uncompressed layer tar, e.g. ``gzip -dc`` of a layer blob) times the
extractor alone instead: ``lamina._extract.Extractor`` fed FILE in 1 MiB reads, no inflate and
no hashing -- the parse + write stage, whose CPU time moves least with the machine's load.
Given several times, the tars are extracted at once, one thread each, as a pull or a store copy
extracts its layers.  ``--spin python`` adds a pure-Python thread counting loop turns meanwhile;
``--spin reader`` a thread reading /dev/zero in 64 KiB ``readinto`` calls (the GIL released in
each read, needed between them: a stand-in for a pull's HTTP reader).  With ``--spin`` it also
prints that thread's median turns per second: how much the extractors let other Python run.
``--lower FILE`` extracts a layer tar first, untimed, below each ``--tar`` (into its dir, or
with ``--format overlay`` as its lower layer dir): whiteouts and opaque markers then hide
something.  ``--format overlay`` unpacks an image (or extracts the tars) in the overlay format.
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
source, dest, fmt = sys.argv[1], sys.argv[2], sys.argv[3]
lamina.unpack(source, dest, format=fmt)
shutil.rmtree(dest)
r0, t0, m0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), time.thread_time()
lamina.unpack(source, dest, format=fmt)
wall, m1, r1 = time.perf_counter() - t0, time.thread_time(), resource.getrusage(resource.RUSAGE_SELF)
shutil.rmtree(dest)
print(json.dumps([wall, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 0, m1 - m0]))
'''

CHILD_TAR = r'''
import json, os, resource, shutil, sys, threading, time
from lamina._extract import Extractor
spin, dest, fmt, lower, tars = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]

thread_cpu = []

def extract(tar, d, lowers=None, make=True):
    c0 = time.thread_time()
    if make:
        os.mkdir(d)
    buf = bytearray(1 << 20)
    e = Extractor(d, format=fmt, lowers=lowers) if fmt == "overlay" else Extractor(d)
    with open(tar, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            e.feed(memoryview(buf)[:n])
    e.finish()
    e.close()
    thread_cpu.append(time.thread_time() - c0)

def run():
    os.mkdir(dest)
    turns, stop = [0], []
    def spinner():
        while not stop:
            turns[0] += 1
    def reader():
        b = bytearray(65536)
        with open("/dev/zero", "rb", buffering=0) as f:
            while not stop:
                f.readinto(b)
                turns[0] += 1
    args = [(t, f"{dest}/{i}") for i, t in enumerate(tars)]
    if lower != "-":  # untimed: the layer below each, its own dir (overlay) or the dir itself
        for i, (t, d) in enumerate(args):
            if fmt == "overlay":
                extract(lower, f"{dest}/lower{i}", [])
                os.mkdir(d)
                args[i] = (t, d, [f"{dest}/lower{i}"], False)
            else:
                extract(lower, d)
                args[i] = (t, d, None, False)
    threads = [threading.Thread(target=extract, args=a) for a in args]
    s = threading.Thread(target=spinner if spin == "python" else reader) if spin != "-" else None
    del thread_cpu[:]  # not the untimed lower layers'
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for t in ([s] if s else []) + threads:
        t.start()
    for t in threads:
        t.join()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    stop.append(1)
    if s:
        s.join()
    shutil.rmtree(dest)
    return [wall, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, turns[0], max(thread_cpu)]

run()  # warm-up
print(json.dumps(run()))
'''


def main():
    cache = os.environ.get("LAMINA_BENCH_CACHE", "/var/tmp/lamina-bench")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=9, help="runs per installation (default 9)")
    ap.add_argument("--image", default=f"oci:{cache}/image:bench")
    ap.add_argument("--tar", metavar="FILE", action="append",
                    help="time the extractor alone on this uncompressed layer tar (several: in parallel threads)")
    ap.add_argument("--spin", choices=("python", "reader"), help="with --tar: a Python thread beside the extractors")
    ap.add_argument("--format", choices=("dir", "overlay"), default="dir", help="the on-disk format (default dir)")
    ap.add_argument("--lower", metavar="FILE",
                    help="with --tar: a layer tar extracted first, untimed, below each (overlay: as its lower dir)")
    ap.add_argument("installs", nargs="+", metavar="NAME=PYTHON")
    args = ap.parse_args()
    installs = [spec.split("=", 1) for spec in args.installs]
    results = {name: [] for name, _ in installs}
    for _ in range(args.n):
        for name, python in installs:
            dest = f"/dev/shm/lamina-unpack-ab-{os.getpid()}"
            if args.tar:
                argv = [CHILD_TAR, args.spin or "-", dest, args.format,
                        os.path.abspath(args.lower) if args.lower else "-", *map(os.path.abspath, args.tar)]
            else:
                argv = [CHILD, args.image, dest, args.format]
            out = subprocess.run([python, "-c", *argv], capture_output=True, text=True,
                                 cwd="/tmp")  # not the checkout: each PYTHON imports its own lamina
            if out.returncode:
                sys.exit(f"{name}: {out.stderr.strip()}")
            results[name].append(json.loads(out.stdout.splitlines()[-1]))
    for name, runs in results.items():
        walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
        mains = [r[3] for r in runs if len(r) > 3]
        line = (f"{name:12s} wall median {statistics.median(walls):.3f} s  min {min(walls):.3f} s  "
                f"CPU median {statistics.median(cpus):.3f} s")
        if mains:
            line += f"  {'main' if not args.tar else 'extractor'}-thread CPU median {statistics.median(mains):.3f} s"
        line += f"  ({len(runs)} runs)"
        if args.spin:
            line += f"  {args.spin} thread turns/s {statistics.median(r[2] / r[0] for r in runs):,.0f}"
        print(line)


if __name__ == "__main__":
    main()
