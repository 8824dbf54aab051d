"""Peak RSS of big synthetic layers, per path (issue 14: peak RSS <= 64 MiB whatever the layer size).

Generates plain (uncompressed) tar layers of empty files on a scratch directory (tmpfs by
default), wraps them in OCI layouts, and runs each lamina path as a child under GNU time:

  dir       lamina unpack oci:L DEST                     (one layer)
  overlay   lamina unpack --overlay oci:L DEST           (one layer)
  flat      lamina unpack oci:L2 DEST                    (two layers: the upper one, small in bytes but
                                                          with many entries, is scanned first: top-down)
  store     lamina --root R copy oci:L NAME               (ingest + snapshot extraction)

Shapes: ``--files N --dirs D`` (N empty files spread over D directories), ``--deep`` (chains of
``--depth`` directories, one file at the bottom of each).  Prints peak RSS (MiB) per path, and with
``--json FILE`` writes the figures.  Example (what bench/README's table was measured with):

    python bench/rss.py --files 1000000 --dirs 10000 --paths dir,overlay,flat,store
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from children import lamina_cli, run_child  # noqa: E402

BLOCK = 512
MTIME = 1_700_000_000


def _octal(value, width):
    return (b"%0*o" % (width - 1, value)) + b"\0"


def ustar(name, kind=b"0", size=0, mode=0o644):
    """One ustar header for a name of at most 100 bytes."""
    name = name.encode() if isinstance(name, str) else name
    h = bytearray(BLOCK)
    h[0:len(name)] = name
    h[100:108] = _octal(mode, 8)
    h[108:116] = _octal(0, 8)
    h[116:124] = _octal(0, 8)
    h[124:136] = _octal(size, 12)
    h[136:148] = _octal(MTIME, 12)
    h[148:156] = b" " * 8
    h[156:157] = kind
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


class _Blob:
    """A file written through sha256."""

    def __init__(self, path):
        self.f = open(path, "wb")
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.f.write(data)
        self.h.update(data)
        self.size += len(data)

    def close(self):
        self.f.close()
        return "sha256:" + self.h.hexdigest(), self.size


def flat_layer(out, files, dirs, prefix="usr/share/pkg", payload=0, whiteout_every=0, distinct=False):
    """``files`` files over ``dirs`` directories (``payload`` bytes each, or with ``distinct`` a
    few bytes of their own, so that no two share a store object); every ``whiteout_every``-th
    name is a whiteout of the name instead."""
    per = max(1, files // dirs)
    buf = bytearray()
    body = b"x" * payload + bytes(-payload % BLOCK) if payload else b""
    n = 0
    for d in range(dirs):
        buf += ustar(f"{prefix}-{d:06d}/", b"5", mode=0o755)
        for f in range(per):
            if n >= files:
                break
            name = f"{prefix}-{d:06d}/a-module-file-name-{f:06d}.py"
            if whiteout_every and n % whiteout_every == 0:
                buf += ustar(f"{prefix}-{d:06d}/.wh.a-module-file-name-{f:06d}.py")
            elif distinct:
                data = b"%d\n" % n
                buf += ustar(name, size=len(data)) + data + bytes(-len(data) % BLOCK)
            else:
                buf += ustar(name, size=payload) + body
            n += 1
        if len(buf) > 1 << 20:
            out.write(bytes(buf))
            buf.clear()
    out.write(bytes(buf) + bytes(2 * BLOCK))


def deep_layer(out, chains, depth):
    """``chains`` chains of ``depth`` directories each, listed explicitly, one file at each bottom."""
    buf = bytearray()
    for c in range(chains):
        path = f"c{c:06d}"
        buf += ustar(path + "/", b"5", mode=0o755)
        for level in range(1, depth):
            path += f"/d{level}"
            if len(path) > 90:
                break
            buf += ustar(path + "/", b"5", mode=0o755)
        buf += ustar(path + "/f")
        if len(buf) > 1 << 20:
            out.write(bytes(buf))
            buf.clear()
    out.write(bytes(buf) + bytes(2 * BLOCK))


def layout(root, layer_writers):
    """An OCI layout at ``root`` (tag "t") of uncompressed layers, each written by a callable."""
    blobs = os.path.join(root, "blobs", "sha256")
    os.makedirs(blobs)
    descs = []
    for write in layer_writers:
        tmp = os.path.join(blobs, "tmp")
        b = _Blob(tmp)
        write(b)
        digest, size = b.close()
        os.rename(tmp, os.path.join(blobs, digest[7:]))
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size})

    def put(obj):
        data = json.dumps(obj).encode()
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, d), "wb") as f:
            f.write(data)
        return "sha256:" + d, len(data)

    cd, cs = put({"architecture": "amd64", "os": "linux", "config": {},
                  "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descs]}})
    md, ms = put({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
                  "layers": descs})
    with open(os.path.join(root, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
             "annotations": {"org.opencontainers.image.ref.name": "t"}}]}, f)
    return f"oci:{root}:t"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--dirs", type=int, default=1_000)
    ap.add_argument("--deep", action="store_true", help="chains of directories instead of flat dirs")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--distinct", action="store_true", help="files of distinct contents (store objects)")
    ap.add_argument("--paths", default="dir,overlay,flat,store")
    ap.add_argument("--scratch", default="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    ap.add_argument("--json")
    args = ap.parse_args()
    cli = lamina_cli()
    paths = args.paths.split(",")
    results = {}
    work = tempfile.mkdtemp(prefix="lamina-rss-", dir=args.scratch)
    try:
        if args.deep:
            one = layout(os.path.join(work, "one"), [lambda o: deep_layer(o, args.files, args.depth)])
        else:
            one = layout(os.path.join(work, "one"),
                         [lambda o: flat_layer(o, args.files, args.dirs, distinct=args.distinct)])
        for path in paths:
            entries = args.files
            dest = os.path.join(work, "dest")
            argv = cli + ["unpack", one, dest]
            if path == "overlay":
                argv = cli + ["unpack", "--overlay", one, dest]
            elif path == "flat":
                # the lower layer carries the bytes (so that the upper one is scanned first), the upper
                # one as many entries as the lower one: every 4th a whiteout, the rest replacements
                two = os.path.join(work, "two")
                if not os.path.exists(two):
                    layout(two, [lambda o: flat_layer(o, args.files, args.dirs, payload=4 * BLOCK),
                                 lambda o: flat_layer(o, args.files, args.dirs, whiteout_every=4)])
                argv = cli + ["unpack", f"oci:{two}:t", dest]
                entries = 2 * args.files
            elif path == "store":
                argv = cli + ["--root", os.path.join(work, "store"), "copy", one, "rss:t"]
            wall, rss, cpu, _ = run_child(argv)
            results[path] = {"wall": round(wall, 2), "cpu": round(cpu, 2), "peak_rss_mib": round(rss / 1024, 1),
                             "entries": entries}
            print(f"{path:8} {rss / 1024:8.1f} MiB peak  {wall:7.1f} s  {cpu:7.1f} CPU-s  ({entries} entries)",
                  flush=True)
            for d in ("dest", "store"):
                shutil.rmtree(os.path.join(work, d), ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
