#!/usr/bin/env python3
"""Build (once) and cache a realistic multi-layer OCI image for benchmarks.

The image lives OUTSIDE the repository, in $LAMINA_BENCH_CACHE
(default /var/tmp/lamina-bench):

    CACHE/image        OCI layout, tag "bench", gzip layers (made by umoci)
    CACHE/image-zstd   the same image with every layer recompressed with zstd
                       (media type application/vnd.oci.image.layer.v1.tar+zstd,
                       same config, same diff_ids)
    CACHE/corpus.json  the summary printed at the end

Layers (like a typical Dockerfile):
  1. `debootstrap --variant=minbase bookworm` rootfs
  2. `apt-get install --no-install-recommends python3 perl git ...` in a chroot
  3. more packages (tzdata, vim-tiny, ...) then `rm -rf /usr/share/doc
     /usr/share/man /var/lib/apt/lists/* ...` (-> whiteouts), a user, app files

Needs root, debootstrap, umoci, zstd and Debian's package mirror (read from the
machine's apt sources, never hard-coded).  Idempotent: a finished image is
reused; a finished intermediate step (base rootfs, each layer) too.

    python bench/corpus.py            # build if needed, print the summary
    python bench/corpus.py --rebuild  # throw the image away and build again
    python bench/corpus.py --base-rootfs DIR   # copy DIR (a finished debootstrap
                                               # minbase bookworm) instead of running debootstrap
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

DEFAULT_CACHE = "/var/tmp/lamina-bench"
TAG = "bench"
SUITE = "bookworm"

# Layer 2: a language-runtime layer (python3 + perl + libs).  Like many real
# Dockerfiles it forgets `apt-get clean`: the downloaded .debs stay in the layer
# (incompressible bytes) and layer 3 deletes them again (file whiteouts).
LAYER2_PACKAGES = ["python3", "perl", "ca-certificates", "curl", "libxml2", "openssl"]
# Layer 3: a few more tools, then the usual cleanup (-> whiteouts).
LAYER3_PACKAGES = ["less", "procps", "iproute2", "vim-tiny", "netbase"]
LAYER3_DELETE = [
    "/usr/share/doc",
    "/usr/share/man",
    "/usr/share/info",
    "/var/lib/apt/lists",
    "/var/cache/apt",
    "/var/cache/debconf/templates.dat-old",
    "/usr/share/locale",
]

MT_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def cache_dir() -> str:
    return os.environ.get("LAMINA_BENCH_CACHE", DEFAULT_CACHE)


def log(msg: str) -> None:
    print(f"[corpus {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*cmd, **kw):
    cmd = [str(c) for c in cmd]
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kw)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        sys.exit(f"corpus: {tool} is required (apt-get install {tool})")
    return path


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (never hard-coded)."""
    srcs = "/etc/apt/sources.list.d/debian.sources"
    if os.path.exists(srcs):
        with open(srcs) as f:
            for line in f:
                m = re.match(r"\s*URIs:\s*(\S+)", line)
                if m and "security" not in m.group(1):
                    return m.group(1)
    lists = ["/etc/apt/sources.list"]
    if os.path.isdir("/etc/apt/sources.list.d"):
        lists += [os.path.join("/etc/apt/sources.list.d", n)
                  for n in sorted(os.listdir("/etc/apt/sources.list.d")) if n.endswith(".list")]
    for path in lists:
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", line)
                if m and "security" not in m.group(1):
                    return m.group(1)
    sys.exit("corpus: cannot find a Debian mirror in the apt sources")


def rmtree(path: str) -> None:
    if os.path.lexists(path):
        sh("rm", "-rf", "--one-file-system", path)


# --------------------------------------------------------------------------
# chroot helpers


class Chroot:
    """Mount /proc (and /dev/pts none needed) inside a rootfs, unmount after."""

    def __init__(self, root: str):
        self.root = root
        self.mounted = []

    def __enter__(self):
        proc = os.path.join(self.root, "proc")
        os.makedirs(proc, exist_ok=True)
        sh("mount", "-t", "proc", "proc", proc)
        self.mounted.append(proc)
        # name resolution for apt; restored to empty before packing
        shutil.copyfile("/etc/resolv.conf", os.path.join(self.root, "etc/resolv.conf"))
        prc = os.path.join(self.root, "usr/sbin/policy-rc.d")
        with open(prc, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(prc, 0o755)
        return self

    def run(self, *cmd, check=True):
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND": "noninteractive",
            "LANG": "C.UTF-8",
            "HOME": "/root",
        }
        cmd = ["chroot", self.root] + [str(c) for c in cmd]
        log("$ " + " ".join(cmd))
        return subprocess.run(cmd, env=env, check=check)

    def __exit__(self, *exc):
        for m in reversed(self.mounted):
            subprocess.run(["umount", "-l", m], check=False)
        self.mounted.clear()
        for p in ("usr/sbin/policy-rc.d",):
            try:
                os.unlink(os.path.join(self.root, p))
            except FileNotFoundError:
                pass
        with open(os.path.join(self.root, "etc/resolv.conf"), "w"):
            pass


def apt_install(ch: Chroot, packages, clean: bool = True) -> None:
    """apt-get install in the chroot (the base's package lists first, update if stale)."""
    args = ["apt-get", "install", "-y", "--no-install-recommends"] + list(packages)
    if ch.run(*args, check=False).returncode != 0:
        ch.run("apt-get", "update")
        ch.run(*args)
    if clean:
        ch.run("apt-get", "clean")


# --------------------------------------------------------------------------
# steps


def build_base_rootfs(cache: str, base_from: str | None) -> str:
    root = os.path.join(cache, "rootfs-base")
    done = root + ".done"
    if os.path.exists(done):
        log(f"reusing base rootfs {root}")
        return root
    rmtree(root)
    if base_from:
        log(f"copying base rootfs from {base_from}")
        sh("cp", "-a", base_from, root)
    else:
        need("debootstrap")
        mirror = debian_mirror()
        debs = os.path.join(cache, "debootstrap-debs")  # keeps the .debs for a rebuild
        os.makedirs(debs, exist_ok=True)
        sh("debootstrap", "--variant=minbase", f"--cache-dir={debs}", SUITE, root, mirror)
    # a base image does not ship the .debs debootstrap used, nor the host's resolver
    arch = os.path.join(root, "var/cache/apt/archives")
    if os.path.isdir(arch):
        for name in os.listdir(arch):
            if name.endswith(".deb"):
                os.unlink(os.path.join(arch, name))
    with open(os.path.join(root, "etc/resolv.conf"), "w"):
        pass
    open(done, "w").close()
    return root


def umoci_layer(image: str, bundle: str, created_by: str, mutate) -> None:
    """unpack the current image:TAG into a fresh bundle, mutate(rootfs), repack."""
    rmtree(bundle)
    sh("umoci", "unpack", "--image", f"{image}:{TAG}", bundle)
    rootfs = os.path.join(bundle, "rootfs")
    mutate(rootfs)
    sh("umoci", "repack", "--history.created_by", created_by, "--image", f"{image}:{TAG}", bundle)
    rmtree(bundle)


def build_gzip_image(cache: str, base: str) -> str:
    image = os.path.join(cache, "image")
    done = image + ".done"
    if os.path.exists(done):
        log(f"reusing {image}")
        return image
    need("umoci")
    work = image + ".build"
    rmtree(work)
    rmtree(image)
    bundle = os.path.join(cache, "bundle")
    sh("umoci", "init", "--layout", work)
    sh("umoci", "new", "--image", f"{work}:{TAG}")

    def layer1(rootfs):
        # copy the debootstrap tree (keeps hardlinks, xattrs, owners, modes)
        for name in os.listdir(base):
            sh("cp", "-a", os.path.join(base, name), rootfs)

    def layer2(rootfs):
        with Chroot(rootfs) as ch:
            apt_install(ch, LAYER2_PACKAGES, clean=False)

    def layer3(rootfs):
        with Chroot(rootfs) as ch:
            apt_install(ch, LAYER3_PACKAGES)
            ch.run("useradd", "--create-home", "--uid", "1000", "--shell", "/bin/bash", "app")
        for p in LAYER3_DELETE:  # -> whiteouts (whole dirs and single files)
            rmtree(rootfs + p)
        for p in ("/var/lib/apt/lists/partial", "/var/cache/apt/archives/partial"):
            os.makedirs(rootfs + p, exist_ok=True)
        # some app files: a config, a small python package, a file replacing a dir
        app = os.path.join(rootfs, "opt/app")
        os.makedirs(os.path.join(app, "pkg"), exist_ok=True)
        for i in range(200):
            with open(os.path.join(app, "pkg", f"mod{i:03d}.py"), "w") as f:
                f.write(f"# module {i}\n" + "".join(f"def f{j}(x):\n    return x + {j}\n" for j in range(i % 40)))
        with open(os.path.join(rootfs, "etc/app.conf"), "w") as f:
            f.write("workers = 4\nlisten = 0.0.0.0:8080\n")
        os.chown(os.path.join(app, "pkg"), 1000, 1000)
        motd = os.path.join(rootfs, "etc/motd")
        with open(motd, "w") as f:
            f.write("lamina bench image\n")

    umoci_layer(work, bundle, f"debootstrap --variant=minbase {SUITE}", layer1)
    umoci_layer(work, bundle, "apt-get install -y --no-install-recommends " + " ".join(LAYER2_PACKAGES), layer2)
    umoci_layer(work, bundle, "apt-get install " + " ".join(LAYER3_PACKAGES) + " && rm -rf docs/man/lists && add app",
                layer3)
    sh("umoci", "gc", "--layout", work)
    os.rename(work, image)
    open(done, "w").close()
    return image


def read_json(path):
    with open(path) as f:
        return json.load(f)


def blob_path(layout: str, digest: str) -> str:
    algo, hexd = digest.split(":", 1)
    return os.path.join(layout, "blobs", algo, hexd)


def write_blob(layout: str, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blob_path(layout, digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return digest, len(data)


def manifest_of(layout: str, ref: str = TAG):
    index = read_json(os.path.join(layout, "index.json"))
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref:
            return m, read_json(blob_path(layout, m["digest"]))
    raise SystemExit(f"corpus: no ref {ref!r} in {layout}")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return "sha256:" + h.hexdigest()


def build_zstd_image_and_summary(cache: str, image: str) -> dict:
    """Recompress each gzip layer with zstd into CACHE/image-zstd; count entries."""
    out = os.path.join(cache, "image-zstd")
    summary_path = os.path.join(cache, "corpus.json")
    if os.path.exists(out + ".done") and os.path.exists(summary_path):
        log(f"reusing {out}")
        return read_json(summary_path)
    need("zstd")
    work = out + ".build"
    rmtree(work)
    rmtree(out)
    os.makedirs(os.path.join(work, "blobs", "sha256"))
    with open(os.path.join(work, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    desc, manifest = manifest_of(image)
    config = read_json(blob_path(image, manifest["config"]["digest"]))
    diff_ids = config["rootfs"]["diff_ids"]
    shutil.copy2(blob_path(image, manifest["config"]["digest"]), blob_path(work, manifest["config"]["digest"]))
    layers_out, layer_stats = [], []
    tmp_tar = os.path.join(cache, "layer.tar.tmp")
    for i, layer in enumerate(manifest["layers"]):
        gz = blob_path(image, layer["digest"])
        log(f"layer {i}: inflating {layer['digest'][:19]} ...")
        with gzip.open(gz, "rb") as src, open(tmp_tar, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tar_size = os.path.getsize(tmp_tar)
        diff_id = sha256_file(tmp_tar)
        if diff_id != diff_ids[i]:
            raise SystemExit(f"corpus: layer {i} diff_id {diff_id} != config {diff_ids[i]}")
        entries = whiteouts = opaque = files = dirs = links = hardlinks = 0
        with tarfile.open(tmp_tar, "r:") as tf:
            for m in tf:
                entries += 1
                base = os.path.basename(m.name.rstrip("/"))
                if base == ".wh..wh..opq":
                    opaque += 1
                elif base.startswith(".wh."):
                    whiteouts += 1
                elif m.isdir():
                    dirs += 1
                elif m.issym():
                    links += 1
                elif m.islnk():
                    hardlinks += 1
                elif m.isreg():
                    files += 1
        zst = tmp_tar + ".zst"
        sh("zstd", "-q", "-f", "-3", "-T0", tmp_tar, "-o", zst)
        zdigest = sha256_file(zst)
        zsize = os.path.getsize(zst)
        os.rename(zst, blob_path(work, zdigest))
        os.unlink(tmp_tar)
        layers_out.append({"mediaType": MT_ZSTD, "digest": zdigest, "size": zsize})
        layer_stats.append({
            "index": i, "gzip_digest": layer["digest"], "gzip_bytes": layer["size"],
            "zstd_digest": zdigest, "zstd_bytes": zsize, "diff_id": diff_id, "tar_bytes": tar_size,
            "entries": entries, "files": files, "dirs": dirs, "symlinks": links, "hardlinks": hardlinks,
            "whiteouts": whiteouts, "opaque_whiteouts": opaque,
        })
    new_manifest = dict(manifest)
    new_manifest["layers"] = layers_out
    mdata = json.dumps(new_manifest, separators=(",", ":")).encode()
    mdigest, msize = write_blob(work, mdata)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MT_MANIFEST, "digest": mdigest, "size": msize,
            "annotations": {"org.opencontainers.image.ref.name": TAG},
            **({"platform": desc["platform"]} if "platform" in desc else {}),
        }],
    }
    with open(os.path.join(work, "index.json"), "w") as f:
        json.dump(index, f)
    os.rename(work, out)
    open(out + ".done", "w").close()
    summary = {
        "cache": cache,
        "image": f"oci:{image}:{TAG}",
        "image_zstd": f"oci:{out}:{TAG}",
        "manifest_digest": desc["digest"],
        "zstd_manifest_digest": mdigest,
        "layers": layer_stats,
        "gzip_bytes": sum(s["gzip_bytes"] for s in layer_stats),
        "zstd_bytes": sum(s["zstd_bytes"] for s in layer_stats),
        "tar_bytes": sum(s["tar_bytes"] for s in layer_stats),
        "entries": sum(s["entries"] for s in layer_stats),
        "whiteouts": sum(s["whiteouts"] + s["opaque_whiteouts"] for s in layer_stats),
    }
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def print_summary(s: dict) -> None:
    mb = 1e6
    print(f"image      {s['image']}")
    print(f"image-zstd {s['image_zstd']}")
    print(f"{'layer':>5} {'gzip MB':>9} {'zstd MB':>9} {'tar MB':>9} {'entries':>8} {'files':>7} "
          f"{'dirs':>6} {'symlnk':>6} {'hardlnk':>7} {'whiteout':>8}")
    for L in s["layers"]:
        print(f"{L['index']:>5} {L['gzip_bytes']/mb:9.1f} {L['zstd_bytes']/mb:9.1f} {L['tar_bytes']/mb:9.1f} "
              f"{L['entries']:>8} {L['files']:>7} {L['dirs']:>6} {L['symlinks']:>6} {L['hardlinks']:>7} "
              f"{L['whiteouts'] + L['opaque_whiteouts']:>8}")
    print(f"{'total':>5} {s['gzip_bytes']/mb:9.1f} {s['zstd_bytes']/mb:9.1f} {s['tar_bytes']/mb:9.1f} "
          f"{s['entries']:>8}")


def ensure(rebuild: bool = False, base_from: str | None = None, quiet: bool = False) -> dict:
    """Build what is missing and return the summary dict (used by compare.py)."""
    cache = cache_dir()
    summary_path = os.path.join(cache, "corpus.json")
    done = all(os.path.exists(os.path.join(cache, p)) for p in ("image.done", "image-zstd.done", "corpus.json"))
    if done and not rebuild:
        return read_json(summary_path)
    if os.geteuid() != 0:
        sys.exit("corpus: building the image needs root (debootstrap, chroot, umoci as root)")
    os.makedirs(cache, exist_ok=True)
    if rebuild:
        for p in ("image", "image.done", "image-zstd", "image-zstd.done", "corpus.json"):
            rmtree(os.path.join(cache, p))
    t0 = time.time()
    base = build_base_rootfs(cache, base_from)
    image = build_gzip_image(cache, base)
    summary = build_zstd_image_and_summary(cache, image)
    log(f"built in {time.time() - t0:.0f}s")
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rebuild", action="store_true", help="rebuild the images (keeps the base rootfs and .deb cache)")
    ap.add_argument("--base-rootfs", metavar="DIR",
                    help="copy this finished debootstrap minbase rootfs instead of running debootstrap")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    s = ensure(args.rebuild, args.base_rootfs)
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        print_summary(s)


if __name__ == "__main__":
    main()
