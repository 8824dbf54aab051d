#!/usr/bin/env python3
"""Many small files: a one-layer image of the bench image's /usr/share and /usr/lib/python3*.

Issue 14's small-files case ("a layer of ~66k mostly small files, e.g. a tar of /usr/share +
/usr/lib/python3"), built reproducibly from the corpus image of ``bench/corpus.py``:

1. the corpus image is unpacked (``lamina unpack``) into CACHE/smallfiles.build/rootfs;
2. its ``usr/share`` and ``usr/lib/python3*`` are walked in name order and written to a tar
   (PAX format, headers only where a name needs one, integer mtimes, numeric owners, no
   user or group names).  The bench image's cleanup removed /usr/share/{doc,man,info,locale},
   so those trees hold far fewer than 66k entries: the tar repeats them under ``pad1/``,
   ``pad2/``, ... (the same walk, the prefix on names and hardlink targets; symlink targets
   unchanged), and the last copy stops at exactly ``--entries`` entries;
3. the tar is gzipped (level 6, no name, mtime 0) into a one-layer OCI layout,
   CACHE/smallfiles, tag ``smallfiles`` (config with the diff_id, so umoci can unpack it).

Same corpus image, same ``--entries``: same bytes.  Then ``lamina bench`` runs on it:

    python bench/smallfiles.py [-n 5] [--tools tar,pigz,bsdtar,umoci] [--entries 66000]
                               [--target DIR] [--json FILE] [--report DIR] [--build-only]
                               [--rootfs DIR --cache DIR]   # the trees of DIR instead (a smoke run)

Prints the layer's make-up (entries, files, dirs, symlinks, hardlinks, sizes) before the
bench; ``lamina bench`` reports entries/s.  The same fairness notes as compare.py apply.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile

from lamina.digest import sha256_file

HERE = os.path.dirname(os.path.abspath(__file__))
TAG = "smallfiles"
DEFAULT_TOOLS = "tar,pigz,bsdtar,umoci"
DEFAULT_ENTRIES = 66000
TREES = ("usr/share", "usr/lib/python3*")
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
VERSION = 1  # of the recipe: a change makes ensure() rebuild


def log(msg):
    print(f"[smallfiles] {msg}", file=sys.stderr, flush=True)


def rootfs_trees(rootfs):
    """The top trees of the layer, in name order (python3 and python3.11 both, when present)."""
    out = []
    for pattern in TREES:
        parent, _, leaf = pattern.rpartition("/")
        if leaf.endswith("*"):
            if not os.path.isdir(os.path.join(rootfs, parent)):
                continue
            names = sorted(n for n in os.listdir(os.path.join(rootfs, parent)) if n.startswith(leaf[:-1]))
        else:
            names = [leaf]
        out += [f"{parent}/{n}" for n in names if os.path.lexists(os.path.join(rootfs, parent, n))]
    return out


def walk(rootfs, top):
    """Relative paths of ``top`` and everything below it, parents first, siblings in byte order."""
    yield top
    path = os.path.join(rootfs, top)
    if os.path.isdir(path) and not os.path.islink(path):
        for name in sorted(os.listdir(path), key=os.fsencode):
            yield from walk(rootfs, f"{top}/{name}")


def build_tar(rootfs, out, entries):
    """Write the tar of the trees (padded with prefixed copies) to ``out``; its make-up."""
    counts = collections.Counter()
    trees = rootfs_trees(rootfs)
    if not trees:
        raise SystemExit(f"smallfiles: none of {', '.join(TREES)} in {rootfs}")
    n = 0
    copy = 0
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        while n < entries:
            prefix = f"pad{copy}/" if copy else ""
            first_of_inode = {}
            added = 0
            for top in trees:
                for rel in walk(rootfs, top):
                    if n >= entries:
                        break
                    path = os.path.join(rootfs, rel)
                    st = os.lstat(path)
                    info = tarfile.TarInfo(prefix + rel)
                    info.mode = stat.S_IMODE(st.st_mode)
                    info.uid, info.gid = st.st_uid, st.st_gid
                    info.uname = info.gname = ""
                    info.mtime = int(st.st_mtime)
                    data = None
                    if stat.S_ISDIR(st.st_mode):
                        info.type = tarfile.DIRTYPE
                        counts["dirs"] += 1
                    elif stat.S_ISLNK(st.st_mode):
                        info.type = tarfile.SYMTYPE
                        info.linkname = os.readlink(path)
                        counts["symlinks"] += 1
                    elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and (st.st_dev, st.st_ino) in first_of_inode:
                        info.type = tarfile.LNKTYPE
                        info.linkname = first_of_inode[st.st_dev, st.st_ino]
                        counts["hardlinks"] += 1
                    elif stat.S_ISREG(st.st_mode):
                        if st.st_nlink > 1:
                            first_of_inode[st.st_dev, st.st_ino] = info.name
                        info.size = st.st_size
                        counts["files"] += 1
                        counts["file_bytes"] += st.st_size
                        if st.st_size <= 4096:
                            counts["files_4k_or_less"] += 1
                        with open(path, "rb") as f:
                            data = io.BytesIO(f.read())
                    else:
                        continue  # no devices or fifos in these trees; none invented
                    tf.addfile(info, data)
                    n += 1
                    added += 1
            if not added:
                break
            copy += 1
    counts["entries"] = n
    counts["copies"] = copy
    return dict(counts)


def write_blob(layout, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest[7:]), "wb") as f:
        f.write(data)
    return {"digest": digest, "size": len(data)}


def build(cache, image, entries, rootfs=None):
    """CACHE/smallfiles (OCI layout, tag smallfiles) from ``image`` (or the
    directory ``rootfs``); its summary."""
    out = os.path.join(cache, "smallfiles")
    work = out + ".build"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(work, "blobs", "sha256"))
    unpacked = rootfs is None
    if unpacked:
        rootfs = os.path.join(work, "rootfs")
        log(f"unpacking {image} into {rootfs}")
        subprocess.run([sys.executable, "-m", "lamina", "unpack", image, rootfs], check=True)
    tar = os.path.join(work, "layer.tar")
    log(f"writing {tar} ({entries} entries)")
    with open(tar, "wb") as f:
        summary = build_tar(rootfs, f, entries)
    summary["tar_bytes"] = os.path.getsize(tar)
    summary["diff_id"] = sha256_file(tar)
    log("gzip -6")
    gz = tar + ".gz"
    with open(tar, "rb") as src, open(gz, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=raw, mtime=0) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.unlink(tar)
    layer = {"mediaType": MT_LAYER, "digest": sha256_file(gz), "size": os.path.getsize(gz)}
    os.rename(gz, os.path.join(work, "blobs", "sha256", layer["digest"][7:]))
    if unpacked:
        shutil.rmtree(rootfs)
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [summary["diff_id"]]},
              "history": [{"created_by": f"bench/smallfiles.py --entries {entries}"}]}
    cdesc = write_blob(work, json.dumps(config, separators=(",", ":")).encode())
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": {"mediaType": MT_CONFIG, **cdesc},
                "layers": [layer]}
    mdesc = write_blob(work, json.dumps(manifest, separators=(",", ":")).encode())
    with open(os.path.join(work, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(work, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [{"mediaType": MT_MANIFEST, **mdesc,
                                  "annotations": {"org.opencontainers.image.ref.name": TAG}}]}, f)
    summary.update(version=VERSION, source=image, requested_entries=entries, image=f"oci:{out}:{TAG}",
                   layer=os.path.join(out, "blobs", "sha256", layer["digest"][7:]),
                   gzip_bytes=layer["size"], layer_digest=layer["digest"])
    with open(os.path.join(work, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    os.rename(work, out)
    return summary


def ensure(entries=DEFAULT_ENTRIES, rebuild=False, rootfs=None, cache=None):
    """Build what is missing (the corpus image included, unless the trees come
    from ``rootfs``) and return the summary."""
    if rootfs is not None:
        image = "dir:" + os.path.abspath(rootfs)
        rebuild = True  # a directory has no digest to tell it changed
    else:
        sys.path.insert(0, HERE)
        import corpus
        image = corpus.ensure(quiet=True)["image"]
    if cache is None:
        sys.path.insert(0, HERE)
        import corpus
        cache = corpus.cache_dir()
    path = os.path.join(cache, "smallfiles", "summary.json")
    if not rebuild and os.path.exists(path):
        with open(path) as f:
            summary = json.load(f)
        if (summary.get("version"), summary.get("source"), summary.get("requested_entries")) == (VERSION, image, entries):
            return summary
    return build(cache, image, entries, rootfs)


def print_summary(s):
    print(f"image {s['image']}  (layer {s['layer']})")
    print(f"{s['entries']} entries ({s['copies']} copies of {', '.join(TREES)}): {s.get('files', 0)} files "
          f"({s.get('files_4k_or_less', 0)} of at most 4 KiB, {s.get('file_bytes', 0) / 1e6:.1f} MB), "
          f"{s.get('dirs', 0)} dirs, {s.get('symlinks', 0)} symlinks, {s.get('hardlinks', 0)} hardlinks; "
          f"tar {s['tar_bytes'] / 1e6:.1f} MB, gzip {s['gzip_bytes'] / 1e6:.1f} MB", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--reps", type=int, default=5, help="timed runs per tool (default 5)")
    ap.add_argument("--tools", default=DEFAULT_TOOLS, help=f"--compare of lamina bench (default {DEFAULT_TOOLS}; "
                    "'' for lamina alone)")
    ap.add_argument("--entries", type=int, default=DEFAULT_ENTRIES, help=f"entries in the layer (default {DEFAULT_ENTRIES})")
    ap.add_argument("--rebuild", action="store_true", help="build the layer again")
    ap.add_argument("--build-only", action="store_true", help="build (if needed) and print the summary, no bench")
    ap.add_argument("--target", metavar="DIR", help="unpack under DIR (default: a fresh dir under /dev/shm)")
    ap.add_argument("--rootfs", metavar="DIR", help="take the trees from DIR, not from the corpus image")
    ap.add_argument("--cache", metavar="DIR", help="build under DIR (default: the corpus cache)")
    ap.add_argument("--json", metavar="FILE", help="also write lamina bench's document here")
    ap.add_argument("--report", metavar="DIR", help="keep lamina bench's HTML report here")
    args = ap.parse_args(argv)
    summary = ensure(args.entries, args.rebuild, args.rootfs, args.cache)
    print_summary(summary)
    if args.build_only:
        return 0
    with tempfile.TemporaryDirectory(prefix="lamina-smallfiles-") as tmp:
        report = args.report or tmp
        cmd = [sys.executable, "-m", "lamina", "bench", summary["image"], "--runs", str(args.reps), "--report", report]
        if args.tools:
            cmd += ["--compare", args.tools]
        if args.target:
            cmd += ["--target", args.target]
        print(f"$ lamina bench {' '.join(cmd[4:])}", flush=True)
        subprocess.run(cmd, check=True)
        if args.json:
            shutil.copy(os.path.join(report, "bench.json"), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
