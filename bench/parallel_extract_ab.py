"""Interleaved A/B of layers extracted in parallel threads, as a pull or a store copy does.

    python3 bench/parallel_extract_ab.py [-n 9] [--spin python|reader] --tar A.tar [--tar B.tar ...] NAME=PYTHON [NAME=PYTHON ...]

Each run is a fresh child process of each PYTHON in turn: one thread per ``--tar`` (an
uncompressed layer tar, e.g. ``gzip -dc`` of a layer blob), each feeding its own
``lamina._extract.Extractor`` in 1 MiB reads into its own fresh directory on /dev/shm, all
started together; untimed warm-up first.  ``--spin python`` adds a pure-Python thread counting
loop turns meanwhile; ``--spin reader`` a thread that reads /dev/zero in 64 KiB ``readinto``
calls (the GIL released in each read, needed between them: a stand-in for the HTTP reader of a
pull).  Prints the median and minimum wall time, the median process CPU time and, with
``--spin``, the median turns of that thread per second of wall: how much the extractors let
other Python code run.
"""
import argparse
import json
import statistics
import subprocess
import sys

CHILD = r'''
import json, os, resource, shutil, sys, threading, time
from lamina._extract import Extractor
spin, dest, tars = sys.argv[1], sys.argv[2], sys.argv[3:]

def extract(tar, d):
    os.mkdir(d)
    buf = bytearray(1 << 20)
    e = Extractor(d)
    with open(tar, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            e.feed(memoryview(buf)[:n])
    e.finish()
    e.close()

def run():
    os.mkdir(dest)
    turns = [0]
    stop = []
    def spinner():
        while not stop:
            turns[0] += 1
    def reader():
        b = bytearray(65536)
        with open("/dev/zero", "rb", buffering=0) as f:
            while not stop:
                f.readinto(b)
                turns[0] += 1
    threads = [threading.Thread(target=extract, args=(t, f"{dest}/{i}")) for i, t in enumerate(tars)]
    s = threading.Thread(target=spinner if spin == "python" else reader) if spin != "-" else None
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if s:
        s.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    stop.append(1)
    if s:
        s.join()
    shutil.rmtree(dest)
    return wall, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, turns[0]

run()
print(json.dumps(run()))
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=9)
    ap.add_argument("--tar", action="append", required=True)
    ap.add_argument("--spin", choices=("python", "reader"))
    ap.add_argument("pythons", nargs="+", metavar="NAME=PYTHON")
    a = ap.parse_args()
    pys = [p.split("=", 1) for p in a.pythons]
    res = {name: [] for name, _ in pys}
    for i in range(a.n):
        for name, py in pys:
            out = subprocess.run([py, "-c", CHILD, a.spin or "-", f"/dev/shm/parallel-ab-{name}", *a.tar],
                                 check=True, capture_output=True, text=True).stdout
            res[name].append(json.loads(out))
            print(f"run {i} {name}: wall {res[name][-1][0]:.3f}s cpu {res[name][-1][1]:.3f}s", file=sys.stderr)
    for name, rows in res.items():
        walls = [r[0] for r in rows]
        line = (f"{name}: median wall {statistics.median(walls):.3f}s  min {min(walls):.3f}s  "
                f"median cpu {statistics.median(r[1] for r in rows):.3f}s")
        if a.spin:
            line += f"  python turns/s {statistics.median(r[2] / r[0] for r in rows):,.0f}"
        print(line)


if __name__ == "__main__":
    main()
