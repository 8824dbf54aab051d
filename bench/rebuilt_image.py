"""The rebuilt-image scenario (issue 9): what a monthly rebuild on a refreshed base costs the store.

Image "a" is a 3-layer image of a root filesystem; image "b" is the same rootfs with a few
files changed in every layer, repacked, so every layer digest and chainID differs while
~99% of the files are byte-identical.  For each store mode it copies a then b into a fresh
store (``lamina copy oci:… NAME``: ingest + extraction + dedup, the store side of a pull)
and reports:

  * store growth (du, hardlinks once) after a and for b;
  * copy time of a (dedup on vs off: what blake3 + linking costs);
  * in compact mode: sidecar bytes per tar entry, rebuild MB/s, ``save`` time vs a store with blobs.

    python3 bench/rebuilt_image.py [--rootfs DIR] [--changes 5] [--work DIR] [--json FILE]

The rootfs defaults to the corpus' debootstrap tree (``$LAMINA_BENCH_CACHE/rootfs-base``, see
corpus.py) when it is there, else a synthetic tree (``--synthetic``: 12k files, Debian-like sizes,
10% duplicated content).  Run as root (the rootfs has root-owned and setuid files).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

CACHE = os.environ.get("LAMINA_BENCH_CACHE", "/var/tmp/lamina-bench")
# How the rootfs is split into layers: the first prefix that matches decides.
SPLIT = [("usr/lib/", 0), ("lib", 0), ("usr/share/", 1), ("usr/", 1)]


def layer_of(rel):
    for prefix, n in SPLIT:
        if rel.startswith(prefix):
            return n
    return 2


def synthetic_rootfs(dest, files=12000, seed=9):
    rnd = random.Random(seed)
    pool = [rnd.randbytes(rnd.choice([200, 1500, 6000, 30000])) for _ in range(files // 10)]
    for i in range(files):
        top = rnd.choice(["usr/lib/x86_64-linux-gnu", "usr/share/doc", "usr/share/locale", "usr/bin", "etc", "var/lib"])
        d = os.path.join(dest, top, f"pkg{i % 400}")
        os.makedirs(d, exist_ok=True)
        data = rnd.choice(pool) if rnd.random() < 0.1 else rnd.randbytes(int(rnd.lognormvariate(8, 1.6)) % 2_000_000)
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(data)
        os.utime(os.path.join(d, f"f{i}"), (1_700_000_000, 1_700_000_000))


def members(rootfs):
    """(layer, rel path) of every entry, sorted (a deterministic tar)."""
    out = []
    for top, dirs, files in os.walk(rootfs):
        dirs.sort()
        for n in sorted(dirs + files):
            rel = os.path.relpath(os.path.join(top, n), rootfs)
            out.append((layer_of(rel + ("/" if n in dirs else "")), rel))
    return out


def write_tar(rootfs, rels, changed):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in rels:
            info = tar.gettarinfo(os.path.join(rootfs, rel), arcname=rel)
            if info.isreg():
                with open(os.path.join(rootfs, rel), "rb") as f:
                    data = f.read()
                if rel in changed:
                    data += b"\n# rebuilt: security update\n"
                    info.mtime += 86400
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def build_layout(rootfs, layout, changes, seed=1):
    """Images "a" and "b" (``changes`` changed regular files per layer) in one OCI layout."""
    from isal import igzip
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    by_layer = [[], [], []]
    for n, rel in members(rootfs):
        by_layer[n].append(rel)
    rnd = random.Random(seed)
    changed = set()
    for rels in by_layer:
        regular = [r for r in rels if os.path.isfile(os.path.join(rootfs, r)) and not os.path.islink(os.path.join(rootfs, r))]
        changed |= set(rnd.sample(regular, min(changes, len(regular))))

    def blob(data):
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(layout, "blobs", "sha256", d), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + d, "size": len(data)}

    index, info = [], {}
    for ref, ch in (("a", set()), ("b", changed)):
        layers, diff_ids, entries = [], [], 0
        for rels in by_layer:
            raw = write_tar(rootfs, rels, ch)
            diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
            layers.append(dict(blob(igzip.compress(raw, 2, mtime=0)), mediaType="application/vnd.oci.image.layer.v1.tar+gzip"))
            entries += len(rels)
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": dict(blob(config), mediaType="application/vnd.oci.image.config.v1+json"),
                               "layers": layers}).encode()
        index.append(dict(blob(manifest), mediaType="application/vnd.oci.image.manifest.v1+json",
                          annotations={"org.opencontainers.image.ref.name": ref}))
        info[ref] = {"gzip": sum(l["size"] for l in layers), "entries": entries, "diff_ids": diff_ids}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": index}, f)
    return info, len(changed)


def du(path):
    return int(subprocess.run(["du", "-s", "-B1", path], capture_output=True, text=True, check=True).stdout.split()[0])


def lamina(root, *args):
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lamina", "--root", root, *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t


def run_mode(work, layout, name, settings):
    root = os.path.join(work, f"store-{name}")
    shutil.rmtree(root, ignore_errors=True)
    lamina(root, "config", "set", "dedup", settings.get("dedup", "true"))  # creates the store (`images` does not)
    for k, v in settings.items():
        lamina(root, "config", "set", k, v)
    empty = du(root)
    subprocess.run(["sync"], check=True)
    t_a = lamina(root, "copy", f"oci:{layout}:a", "a:1")
    after_a = du(root)
    t_b = lamina(root, "copy", f"oci:{layout}:b", "b:1")
    after_b = du(root)
    out = {"mode": name, "store_a_MB": (after_a - empty) / 1e6, "growth_b_MB": (after_b - after_a) / 1e6,
           "copy_a_s": t_a, "copy_b_s": t_b}
    save = os.path.join(work, f"save-{name}.tar")
    out["save_a_s"] = lamina(root, "save", "a:1", "-o", save)
    os.unlink(save)
    if settings.get("keep-blobs") == "false":
        out.update(sidecar_stats(root))
    if settings.get("dedup") == "false":
        out.update(dedup_pass_seconds(root))
    return out


def dedup_pass_seconds(root):
    """The dedup pass alone, on the snapshots of a then b (extracted with dedup off)."""
    from lamina.store import Store
    store = Store(root)
    store.set_config("dedup", "true")
    out = {}
    for ref in ("a", "b"):
        t = time.perf_counter()
        hashing = 0.0
        for chain in store.resolve(f"{ref}:1").chain_ids:
            stats = store.dedup(chain)
            hashing += stats.hash_seconds if stats else 0.0
        out[f"dedup_pass_{ref}_s"] = time.perf_counter() - t
        out[f"blake3_{ref}_s"] = hashing
    store.close()
    return out


def sidecar_stats(root):
    from lamina.store import Store
    store = Store(root)
    image = store.resolve("a:1")
    side = entries = tar = 0
    t = time.perf_counter()
    for layer, diff_id, chain in zip(image.layers, image.diff_ids, image.chain_ids):
        info = store.snapshot_info(chain)
        side += os.path.getsize(os.path.join(store.paths.snapshot(chain), "tarsplit.lz4"))
        entries += info.entries
        tar += info.tar_bytes
        with store.layer_reader(layer, diff_id, chain) as f:
            while f.read(1 << 20):
                pass
    secs = time.perf_counter() - t
    return {"sidecar_bytes_per_entry": side / entries, "rebuild_MB_s": tar / 1e6 / secs, "tar_MB": tar / 1e6}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rootfs", help="root filesystem to build the images from")
    p.add_argument("--synthetic", action="store_true", help="use a synthetic rootfs")
    p.add_argument("--changes", type=int, default=5, help="changed files per layer in the rebuild")
    p.add_argument("--work", default=None, help="work directory (default: a temp dir under /var/tmp)")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="lamina-rebuilt-", dir="/var/tmp")
    rootfs = args.rootfs or os.path.join(CACHE, "rootfs-base")
    if args.synthetic or not os.path.isdir(rootfs):
        rootfs = os.path.join(work, "rootfs")
        if not os.path.isdir(rootfs):
            synthetic_rootfs(rootfs)
    layout = os.path.join(work, "layout")
    shutil.rmtree(layout, ignore_errors=True)
    info, nchanged = build_layout(rootfs, layout, args.changes)
    print(f"rootfs {rootfs}: {info['a']['entries']} entries, gzip {info['a']['gzip'] / 1e6:.1f} MB; "
          f"rebuild b changes {nchanged} files, b's new blobs {info['b']['gzip'] / 1e6:.1f} MB")
    modes = [("no-dedup", {"dedup": "false"}), ("default", {}), ("compact", {"keep-blobs": "false"})]
    rows = [run_mode(work, layout, name, s) for name, s in modes]
    print(f"{'mode':10} {'store a MB':>10} {'+b MB':>8} {'copy a s':>9} {'copy b s':>9} {'save a s':>9}")
    for r in rows:
        print(f"{r['mode']:10} {r['store_a_MB']:10.1f} {r['growth_b_MB']:8.1f} {r['copy_a_s']:9.2f} "
              f"{r['copy_b_s']:9.2f} {r['save_a_s']:9.2f}")
    r = rows[0]
    print(f"dedup pass alone (in-process): a {r['dedup_pass_a_s']:.2f} s (blake3 {r['blake3_a_s']:.2f} s), "
          f"b {r['dedup_pass_b_s']:.2f} s (blake3 {r['blake3_b_s']:.2f} s)")
    c = rows[-1]
    print(f"compact: sidecar {c['sidecar_bytes_per_entry']:.0f} B/entry, rebuild {c['rebuild_MB_s']:.0f} MB/s "
          f"({c['tar_MB']:.0f} MB of tar)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": info, "changed": nchanged, "rows": rows}, f, indent=2)
    if not args.work:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
