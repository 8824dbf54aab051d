"""Image layers written by other container tools, made on this machine by the real tools.

buildah (containers/storage) commits layers its own way: the overlay driver's diff turns an
upper directory into a layer (a removed name becomes ``.wh.NAME``, a directory removed and made
again carries ``trusted.overlay.opaque`` and becomes ``.wh..wh..opq``), the vfs driver's
"naive" diff compares two trees instead (a whiteout per removed name, never an opaque dir).
The same three steps are committed with both drivers:

    base    ``buildah copy`` of a tree of edge cases into ``buildah from scratch``
    top     the base mounted (``buildah mount``) and changed as a ``RUN`` would change it: files and
            directories removed, a directory removed and made again, a file made a directory and a
            directory a file, a mode changed on one name of a hardlinked pair, a hardlink made to a
            lower file, a symlink replaced by a file
    added   ``buildah add`` of a GNU tar (buildah extracts it) and ``buildah copy --chown --chmod``

(``buildah run`` would make the same upper directory through a runtime; the mount is what it
runs in.)  Each driver's image is written by every tool that writes images:

    buildah-DRIVER/oci              buildah push oci:DIR (gzip)
    buildah-DRIVER/oci-zstd         buildah push --compression-format zstd oci:DIR
    buildah-DRIVER/docker-archive   buildah push docker-archive:FILE
    buildah-DRIVER/oci-archive      buildah push oci-archive:FILE
    podman/docker-archive           podman save --format docker-archive -m of three images (two tags
                                    of top, and base: their layers shared); ``:REF`` picks one
    podman/oci-archive              podman save --format oci-archive
    skopeo/zstd, skopeo/zstd-chunked, skopeo/gzip-1, skopeo/gzip-9
                                    skopeo copy of buildah-overlay/oci with --dest-compress-format
                                    (zstd:chunked: containers/storage's skippable frames of a TOC and
                                    a footer after the tar's frames) and --dest-compress-level
    umoci/insert                    umoci insert --whiteout, --opaque and a plain insert, then
                                    umoci raw add-layer of a GNU tar and umoci repack of names
                                    removed, over buildah-overlay/oci
    buildah-run/oci                 buildah run --isolation chroot over mmdebstrap/tar (a RUN's
                                    whiteouts, opaque dir, hardlink to a lower file, new setuid)
    mmdebstrap/tar                  mmdebstrap --format=tar (its own tar writer) of a few Debian
                                    packages, as the only layer of an image (ci/fetch-corpora.sh
                                    makes it, with the network: it is cached)

``build(root)`` writes them all under root and returns {name: image name lamina reads}.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

from conftest import require_tool

CACHE = os.environ.get("LAMINA_CORPORA", "/var/cache/lamina-corpora")
MMDEBSTRAP_TAR = os.path.join(CACHE, "mmdebstrap", "rootfs.tar")
DRIVERS = ("overlay", "vfs")
TOOLS = ("buildah", "podman", "skopeo", "umoci", "tar", "zstd")
# an image's three names in podman/docker-archive: two tags of top (the same layers) and base
PODMAN_TAGS = ("localhost/top:latest", "localhost/top:second", "localhost/base:latest")


def _run(*argv, cwd=None):
    proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, errors="backslashreplace")
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr}")
    return proc.stdout.strip()


def _write(path, data, mode=0o644, uid=0, gid=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _edge_tree(src):
    """The tree ``buildah copy`` puts in the base layer."""
    _write(f"{src}/etc/old.conf", b"old\n")
    _write(f"{src}/etc/keep.conf", b"keep\n")
    os.setxattr(f"{src}/etc/keep.conf", "user.lamina", b"kept")
    _write(f"{src}/etc/keep2", b"two\n")
    _write(f"{src}/usr/share/doc/a/f", b"doc\n")
    _write(f"{src}/opt/app/lower", b"lower\n")
    os.symlink("../etc/old.conf", f"{src}/opt/link")
    _write(f"{src}/bin/hard1", b"#!/bin/sh\necho hard\n", 0o755)
    os.link(f"{src}/bin/hard1", f"{src}/bin/hard2")
    _write(f"{src}/srv/setuid", b"suid\n", 0o4755)
    _write(f"{src}/srv/sticky/f", b"in sticky\n")
    os.chmod(f"{src}/srv/sticky", 0o1777)
    _write(f"{src}/home/user/file", b"mine\n", 0o640, 1000, 1000)
    os.chown(f"{src}/home/user", 1000, 1000)
    _write(f"{src}/d/" + "n" * 150, b"a long name\n")
    _write(f"{src}/u/caf\u00e9", b"latin\n")
    os.makedirs(f"{src}/empty")
    for dirpath, dirnames, filenames in os.walk(src):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (1700000000, 1700000000), follow_symlinks=False)


def _top_changes(m):
    """What a RUN step does to the mounted base (m: the container's root)."""
    os.unlink(f"{m}/etc/old.conf")
    shutil.rmtree(f"{m}/usr/share/doc")
    shutil.rmtree(f"{m}/opt/app")
    _write(f"{m}/opt/app/new", b"new\n")
    os.unlink(f"{m}/etc/keep.conf")
    _write(f"{m}/etc/keep.conf/in", b"a file made a directory\n")
    shutil.rmtree(f"{m}/srv/sticky")
    _write(f"{m}/srv/sticky", b"a directory made a file\n")
    os.chmod(f"{m}/bin/hard1", 0o700)
    os.link(f"{m}/etc/keep2", f"{m}/etc/keep2-link")
    os.unlink(f"{m}/opt/link")
    _write(f"{m}/opt/link", b"no longer a link\n")


def _added_tar(work):
    """A GNU tar ``buildah add`` extracts: a symlink, a hardlink, a long name."""
    t = f"{work}/add-src"
    _write(f"{t}/x/data", b"added\n")
    os.link(f"{t}/x/data", f"{t}/x/data-link")
    os.symlink("data", f"{t}/x/sym")
    _write(f"{t}/x/" + "l" * 120, b"long\n")
    _run("tar", "--format=gnu", "--owner=0", "--group=0", "--mtime=@1700000000", "-C", t, "-cf", f"{work}/add.tar", "x")
    return f"{work}/add.tar"


_RUNROOTS = {}


def _storage(root, driver):
    # podman refuses a runroot of more than 50 characters: one short directory per storage
    if (root, driver) not in _RUNROOTS:
        _RUNROOTS[root, driver] = tempfile.mkdtemp(prefix=f"lamina-{driver}-", dir="/tmp")
    return ["--root", f"{root}/storage-{driver}", "--runroot", _RUNROOTS[root, driver], "--storage-driver", driver]


def _buildah(root, driver):
    return ["buildah", *_storage(root, driver)]


def _build_driver(root, driver, work):
    b = _buildah(root, driver)
    src = f"{work}/src-{driver}"
    _edge_tree(src)
    c = _run(*b, "from", "scratch")
    _run(*b, "copy", c, src + "/", "/")
    _run(*b, "commit", "-q", c, "base")
    c = _run(*b, "from", "localhost/base")
    m = _run(*b, "mount", c)
    try:
        _top_changes(m)
    finally:
        _run(*b, "umount", c)
    _run(*b, "commit", "-q", c, "middle")
    c = _run(*b, "from", "localhost/middle")
    _run(*b, "add", c, _added_tar(f"{work}/{driver}"), "/added/")
    _write(f"{work}/{driver}/owned", b"owned\n")
    _run(*b, "copy", "--chown", "1000:1000", "--chmod", "0600", c, f"{work}/{driver}/owned", "/srv/owned")
    _run(*b, "commit", "-q", c, "top")
    _run(*b, "tag", "localhost/top", "localhost/top:second")
    out = {}
    d = f"{root}/buildah-{driver}"
    os.makedirs(d)
    _run(*b, "push", "-q", "localhost/top", f"oci:{d}/oci:top")
    out[f"buildah-{driver}/oci"] = f"oci:{d}/oci:top"
    _run(*b, "push", "-q", "--compression-format", "zstd", "localhost/top", f"oci:{d}/oci-zstd:top")
    out[f"buildah-{driver}/oci-zstd"] = f"oci:{d}/oci-zstd:top"
    _run(*b, "push", "-q", "localhost/top", f"docker-archive:{d}/docker.tar:localhost/top:latest")
    out[f"buildah-{driver}/docker-archive"] = f"docker-archive:{d}/docker.tar"
    _run(*b, "push", "-q", "localhost/top", f"oci-archive:{d}/oci.tar:top")
    out[f"buildah-{driver}/oci-archive"] = f"oci-archive:{d}/oci.tar"
    return out


def _podman(root):
    p = ["podman", *_storage(root, "overlay")]
    d = f"{root}/podman"
    os.makedirs(d)
    _run(*p, "save", "-q", "--format", "docker-archive", "-m", "-o", f"{d}/docker.tar", *PODMAN_TAGS)
    _run(*p, "save", "-q", "--format", "oci-archive", "-o", f"{d}/oci.tar", "localhost/top:latest")
    out = {f"podman/docker-archive:{t}": f"docker-archive:{d}/docker.tar:{t}" for t in PODMAN_TAGS}
    out["podman/oci-archive"] = f"oci-archive:{d}/oci.tar"
    return out


def _skopeo(root):
    src = f"oci:{root}/buildah-overlay/oci:top"
    os.makedirs(f"{root}/skopeo")
    out = {}
    for name, args in (("zstd", ["--dest-compress-format", "zstd"]),
                       ("zstd-chunked", ["--dest-compress-format", "zstd:chunked"]),
                       ("gzip-1", ["--dest-compress-format", "gzip", "--dest-compress-level", "1"]),
                       ("gzip-9", ["--dest-compress-format", "gzip", "--dest-compress-level", "9"])):
        _run("skopeo", "copy", "-q", *args, src, f"oci:{root}/skopeo/{name}:top")
        out[f"skopeo/{name}"] = f"oci:{root}/skopeo/{name}:top"
    return out


def _umoci(root, work):
    lay = f"{root}/umoci/layout"
    os.makedirs(os.path.dirname(lay))
    shutil.copytree(f"{root}/buildah-overlay/oci", lay, symlinks=True)
    image = f"{lay}:top"
    _run("umoci", "insert", "--image", image, "--whiteout", "/bin/hard2")
    _run("umoci", "insert", "--image", image, "--whiteout", "/added/x")
    _write(f"{work}/umoci-opq/only", b"only this\n")
    _run("umoci", "insert", "--image", image, "--opaque", f"{work}/umoci-opq", "/srv")
    _write(f"{work}/umoci-ins/f", b"inserted\n", 0o600)
    _run("umoci", "insert", "--image", image, f"{work}/umoci-ins", "/etc/keep.conf")
    # a layer umoci takes as it is: GNU tar's, with a whiteout and an opaque marker of its own
    t = f"{work}/raw-layer"
    _write(f"{t}/opt/.wh.link", b"")
    _write(f"{t}/home/user/.wh..wh..opq", b"")
    _write(f"{t}/home/user/again", b"again\n")
    _run("tar", "--format=gnu", "--owner=0", "--group=0", "--mtime=@1700000000", "-C", t, "-cf", f"{work}/raw.tar",
         "opt", "home")
    _run("umoci", "raw", "add-layer", "--image", image, f"{work}/raw.tar")
    # umoci repack: its diff of a bundle against the mtree of its unpack (a whiteout per removed name)
    bundle = f"{work}/umoci-bundle"
    _run("umoci", "unpack", "--image", image, bundle)
    os.unlink(f"{bundle}/rootfs/etc/keep2")
    shutil.rmtree(f"{bundle}/rootfs/u")
    _write(f"{bundle}/rootfs/etc/keep2-link", b"a hardlinked name rewritten\n")
    _run("umoci", "repack", "--image", image, bundle)
    return {"umoci/insert": f"oci:{image}"}


def _mmdebstrap(root):
    """mmdebstrap's rootfs tar (cached by ci/fetch-corpora.sh) as the layer of an image skopeo
    writes (skopeo copy of a ``tarball:``: the layer as mmdebstrap wrote it, gzipped)."""
    if not os.path.exists(MMDEBSTRAP_TAR):
        raise AssertionError(f"{MMDEBSTRAP_TAR} is missing: run ci/fetch-corpora.sh")
    d = f"{root}/mmdebstrap"
    _run("skopeo", "copy", "-q", f"tarball:{MMDEBSTRAP_TAR}", f"oci:{d}:rootfs")
    return {"mmdebstrap/tar": f"oci:{d}:rootfs"}


def _buildah_run(root):
    """A RUN step for real: ``buildah run --isolation chroot`` (no runtime) of mmdebstrap's busybox
    over the mmdebstrap image, committed through the overlay driver (buildah adds /etc/hosts
    and /run of its own)."""
    b = _buildah(root, "overlay")
    c = _run(*b, "from", "-q", f"oci:{root}/mmdebstrap:rootfs")
    _run(*b, "run", "--isolation", "chroot", c, "--", "/bin/busybox", "sh", "-c",
         "b=/bin/busybox; $b rm -rf /usr/share/doc && $b rm /etc/os-release && $b rm -rf /usr/share/man"
         " && $b mkdir /usr/share/man && echo made > /usr/share/man/x && $b ln /bin/busybox /bin/bb2"
         " && $b rm /bin/mount && $b mkdir /bin/mount && $b chmod 4700 /bin/umount")
    _run(*b, "commit", "-q", c, "run")
    _run(*b, "push", "-q", "localhost/run", f"oci:{root}/buildah-run:run")
    return {"buildah-run/oci": f"oci:{root}/buildah-run:run"}


def build(root):
    """Every image of this module under ``root`` (made once): {name: image name for lamina}."""
    for tool in TOOLS:
        require_tool(tool)
    done = os.path.join(root, "images.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    work = os.path.join(root, "work")
    os.makedirs(work, exist_ok=True)
    out = {}
    try:
        for driver in DRIVERS:
            out.update(_build_driver(root, driver, work))
        out.update(_podman(root))
        out.update(_skopeo(root))
        out.update(_umoci(root, work))
        out.update(_mmdebstrap(root))
        out.update(_buildah_run(root))
    finally:
        for driver in DRIVERS:
            # the storage's mounts and its containers go; the images it wrote out stay
            subprocess.run([*_buildah(root, driver), "rm", "-a"], capture_output=True)
            shutil.rmtree(_RUNROOTS.pop((root, driver)), ignore_errors=True)
    with open(done, "w") as f:
        json.dump(out, f)
    return out


def layer_tars(layout, ref):
    """The uncompressed layer tars of an OCI layout's image ``ref``, bottom first (zstd or gzip)."""
    import gzip
    with open(os.path.join(layout, "index.json")) as f:
        desc = next(m for m in json.load(f)["manifests"]
                    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref)

    def blob(digest):
        with open(os.path.join(layout, "blobs", *digest.split(":", 1)), "rb") as f:
            return f.read()
    out = []
    for layer in json.loads(blob(desc["digest"]))["layers"]:
        data = blob(layer["digest"])
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        elif data[:4] == b"\x28\xb5\x2f\xfd":
            # (every frame: zstd:chunked writes one per file, and skippable ones after them)
            data = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=True).stdout
        out.append(data)
    return out

