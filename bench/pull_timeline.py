#!/usr/bin/env python3
"""Where the time of one ``lamina pull`` goes: a timeline through a shared link (LAMINA_TRACE).

Starts the loopback registry and link proxy of bench/pull.py, pushes the bench image, then runs
``lamina --root STORE pull -q REF`` (or ``lamina unpack docker://REF DEST`` with --direct, or
``lamina unpack REF DEST`` after the pull with --flat) with ``LAMINA_TRACE`` set, and prints each
run's events in seconds from the spawn of the process, beside the pure transfer time of the blobs
at that rate (bytes / rate: the line a pull at link speed ends on).

    sudo python bench/pull_timeline.py --link 40 -n 3
    sudo python bench/pull_timeline.py --link 40 --python /path/to/other-venv/bin/python
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from children import Scratch, clean, lamina_cli, run_child  # noqa: E402
from pull import CACHE, LoopbackRegistry, _layout_blobs, cli_of  # noqa: E402


def traced(argv, env_extra=None):
    """(wall seconds, [(t from spawn, thread, event, fields)]) of one traced child."""
    fd, path = tempfile.mkstemp(prefix="lamina-trace-")
    os.close(fd)
    env = dict(os.environ, LAMINA_TRACE=path, **(env_extra or {}))
    t0 = time.monotonic()
    r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if r.returncode:
        sys.exit(f"{' '.join(argv)}: exited {r.returncode}: {r.stderr.strip()[-500:]}")
    events = []
    with open(path) as f:
        for line in f:
            t, thread, what, *fields = line.split()
            events.append((float(t) - t0, thread, what, " ".join(fields)))
    os.unlink(path)
    return wall, events


def show(wall, events, transfer):
    for t, thread, what, fields in events:
        print(f"  {t:7.3f}  {thread[:22]:<22} {what:<18} {fields}")
    print(f"  {wall:7.3f}  (exit)   transfer {transfer:.3f} s -> {wall / transfer:.3f}x")


def key_of(what, fields):
    """A name for an event that is the same across runs (digest and chain kept, urls shortened)."""
    parts = dict(f.split("=", 1) for f in fields.split() if "=" in f)
    if what.startswith("http"):
        url = parts.get("url", "")
        tail = url.rsplit("/", 2)[-2:]
        return f"{what} {parts.get('method', '')} {'/'.join(tail)[:40]}"
    extra = " ".join(f"{k}={v}" for k, v in parts.items() if k in ("digest", "chain", "layer"))
    return f"{what} {extra}".strip()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--link", type=float, default=40, help="MB/s of the shared link (0: unlimited)")
    ap.add_argument("-n", "--reps", type=int, default=3)
    ap.add_argument("--python", help="the lamina of this interpreter (another venv)")
    ap.add_argument("--direct", action="store_true", help="time lamina unpack docker://REF DEST instead")
    ap.add_argument("--flat", action="store_true", help="also time lamina unpack REF DEST after the pull")
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="extra environment for lamina")
    ap.add_argument("--image", default=f"oci:{CACHE}/image:bench")
    ap.add_argument("--dest-dir", metavar="DIR")
    args = ap.parse_args(argv)
    from linkproxy import LinkProxy

    lamina = cli_of(args.python) if args.python else lamina_cli()
    env_extra = dict(kv.split("=", 1) for kv in args.env)
    blobs, total = _layout_blobs(args.image)
    transfer = total / (args.link * 1e6) if args.link else float("nan")
    per_key = collections.defaultdict(list)
    walls = []
    with Scratch(args.dest_dir) as scratch:
        reg = LoopbackRegistry(scratch.path)
        proxy = None
        try:
            run_child(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", args.image,
                       f"docker://{reg.host}/bench:latest"])
            proxy = LinkProxy(reg.host, args.link * 1e6) if args.link else None
            ref = f"{(proxy or reg).host}/bench:latest"
            store, dest = os.path.join(scratch.path, "store"), os.path.join(scratch.path, "dest")
            for rep in range(args.reps + 1):
                clean(store)
                clean(dest)
                if args.direct:
                    cmd = lamina + ["unpack", f"docker://{ref}", dest]
                else:
                    cmd = lamina + ["--root", store, "pull", "-q", ref]
                wall, events = traced(cmd, env_extra)
                print(f"{'warm-up' if not rep else f'run {rep}'}: {' '.join(cmd[1:])}")
                show(wall, events, transfer)
                if args.flat and not args.direct:
                    fwall, fevents = traced(lamina + ["--root", store, "unpack", ref, dest], env_extra)
                    print(f"  + unpack REF: {fwall:.3f} s  (pull + unpack {wall + fwall:.3f} s, "
                          f"{(wall + fwall) / transfer:.3f}x)")
                if rep:
                    walls.append(wall)
                    seen = set()
                    for t, _, what, fields in events:
                        k = key_of(what, fields)
                        if k not in seen:
                            seen.add(k)
                            per_key[k].append(t)
        finally:
            if proxy:
                proxy.stop()
            reg.stop()
    print(f"\nmedians over {args.reps} runs (first occurrence of each event), transfer {transfer:.3f} s")
    for k, ts in sorted(per_key.items(), key=lambda kv: statistics.median(kv[1])):
        print(f"  {statistics.median(ts):7.3f}  {k}")
    print(f"  {statistics.median(walls):7.3f}  exit ({statistics.median(walls) / transfer:.3f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
