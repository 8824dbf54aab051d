"""Does an early whiteout in an upper layer stall its extraction until the layers below end?

    python3 bench/early_whiteout.py [-n 3000] [-r 5] [--work DIR] [--modes copy,overlay,pull] [--rate MB/s]

Builds one OCI layout (in DIR, default a tmpfs dir under /dev/shm) holding two images of
two gzip layers of ``n`` small files each, and times, interleaved, a cold store ``copy``
(oci: -> a fresh store, the layers extracted side by side as snapshots) and an ``unpack
--format overlay`` of each:

- ``plain``: the upper layer lists var/lib/apt/lists/ and then its ``n`` files;
- ``whiteout``: the same, with 3 whiteouts of the lower layer's var/lib/apt/lists/* right
  after that directory (what ``RUN rm -rf /var/lib/apt/lists/*`` leaves above the layer that
  ran ``apt-get update``).

Both images give trees of the same size, so the times should match: an upper layer that
waits at its whiteout for the whole lower layer (extraction, and in the store its dedup
pass) runs after it instead of beside it.  Prints the median of ``-r`` runs per image and
mode, with two numbers that do not depend on how busy the machine's cores are (read from
LAMINA_TRACE): the seconds layers spent waiting for the layers below, and from the end of
the first layer's extraction to the end of the last's (the upper's tail).  ``pull`` pushes both images to a loopback docker-registry
(skopeo) and pulls them into a fresh store through bench/linkproxy.py at ``--rate`` MB/s (0:
unlimited), where each layer extracts as its blob arrives.  A flat ``unpack`` (dir format) applies its layers one
after the other anyway, so it has no such overlap to lose and is not timed here.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
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

APT_LISTS = ["deb.debian.org_debian_dists_bookworm_InRelease",
             "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4",
             "deb.debian.org_debian_dists_bookworm-updates_InRelease"]


def _add(tf, name, kind=tarfile.REGTYPE, data=b""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mtime, ti.size = kind, 1_600_000_000, len(data)
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    tf.addfile(ti, io.BytesIO(data) if data else None)


def _tar(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            _add(tf, *e)
    return buf.getvalue()


def _files(top, n, tag):
    out = [(d, tarfile.DIRTYPE) for d in ("usr", "usr/share", top)]
    for d in range(n // 100 or 1):
        out.append((f"{top}/pkg-{d:03d}", tarfile.DIRTYPE))
        for i in range(min(100, n)):
            out.append((f"{top}/pkg-{d:03d}/module-{i:03d}.py", tarfile.REGTYPE, b"%s %d %d\n" % (tag, d, i)))
    return out


def build(layout, n):
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')

    def blob(data):
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(layout, "blobs", "sha256", d), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + d, "size": len(data)}

    apt = [(d, tarfile.DIRTYPE) for d in ("var", "var/lib", "var/lib/apt", "var/lib/apt/lists")]
    lower = _tar(apt + [(f"var/lib/apt/lists/{x}", tarfile.REGTYPE, b"list\n") for x in APT_LISTS]
                 + _files("usr/share/lower", n, b"lower"))
    images = {}
    for ref, whiteouts in (("plain", []), ("whiteout", [(f"var/lib/apt/lists/.wh.{x}",) for x in APT_LISTS])):
        upper = _tar(apt + whiteouts + _files("usr/share/upper", n, b"upper"))
        layers, diff_ids = [], []
        for raw in (lower, upper):
            diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
            layers.append(dict(blob(gzip.compress(raw, 1, mtime=0)),
                               mediaType="application/vnd.oci.image.layer.v1.tar+gzip"))
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": dict(blob(config), mediaType="application/vnd.oci.image.config.v1+json"),
                               "layers": layers}).encode()
        images[ref] = dict(blob(manifest), mediaType="application/vnd.oci.image.manifest.v1+json",
                           annotations={"org.opencontainers.image.ref.name": ref})
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": list(images.values())}, f)


def run(work, layout, mode, ref, host=None):
    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    if mode == "pull":
        cmd = ["--root", out, "pull", "-q", f"{host}/early:{ref}"]
    elif mode == "copy":
        cmd = ["--root", out, "copy", "-q", f"oci:{layout}:{ref}", f"{ref}:1"]
    else:
        cmd = ["unpack", "--format", "overlay", f"oci:{layout}:{ref}", out]
    trace = os.path.join(work, "trace")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(trace)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lamina", *cmd], check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, LAMINA_TRACE=trace))
    took = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    return (took, *_spans(trace))


def _spans(trace):
    """(seconds the layers spent waiting for the layers below, seconds from the first layer's
    extraction end to the last's) from a LAMINA_TRACE timeline: the wall time depends on how
    many cores are free, these do not."""
    waited, since, ends = 0.0, {}, []
    with open(trace) as f:
        for line in f:
            t, thread, what, *_ = line.split() + [""]
            t = float(t)
            if what == "wait-lowers":
                since[thread] = t
            elif what == "wait-lowers-done" and thread in since:
                waited += t - since.pop(thread)
            elif what in ("extracted", "applied"):
                ends.append(t)
    return waited, (max(ends) - min(ends)) if ends else 0.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3000, help="files per layer (default 3000)")
    ap.add_argument("-r", "--runs", type=int, default=5)
    ap.add_argument("--work", help="scratch dir (default: a new dir under /dev/shm)")
    ap.add_argument("--modes", default="copy,overlay,pull")
    ap.add_argument("--rate", type=float, default=20, help="pull: the link's MB/s (default 20; 0 unlimited)")
    args = ap.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="lamina-early-wh-", dir="/dev/shm")
    layout = os.path.join(work, "layout")
    modes = args.modes.split(",")
    reg = proxy = host = None
    try:
        build(layout, args.n)
        if "pull" in modes:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from linkproxy import LinkProxy
            from pull import LoopbackRegistry
            reg = LoopbackRegistry(work)
            for ref in ("plain", "whiteout"):
                subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{ref}",
                                f"docker://{reg.host}/early:{ref}"], check=True)
            proxy = LinkProxy(reg.host, args.rate * 1e6) if args.rate else None
            host = proxy.host if proxy else reg.host
        times = {}
        for _ in range(args.runs):
            for mode in modes:
                for ref in ("plain", "whiteout"):
                    times.setdefault((mode, ref), []).append(run(work, layout, mode, ref, host))
        for mode in modes:
            for k, what in enumerate(("wall", "waited for lowers", "upper's end after lower's")):
                p, w = (statistics.median(x[k] for x in times[(mode, r)]) for r in ("plain", "whiteout"))
                print(f"{mode:8} n={args.n} {what:26} plain {p:6.3f} s  whiteout {w:6.3f} s  "
                      f"(runs: plain {' '.join(f'{x[k]:.3f}' for x in times[(mode, 'plain')])}; "
                      f"whiteout {' '.join(f'{x[k]:.3f}' for x in times[(mode, 'whiteout')])})")
    finally:
        if proxy is not None:
            proxy.stop()
        if reg is not None:
            reg.stop()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
