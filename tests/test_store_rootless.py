"""A store owned by an unprivileged user: whiteouts and opaque dirs in its
snapshots, and a rootfs made from it equal to the one root makes."""
import json
import os
import shutil

from layerkit import rmtree, run_as_nobody, world_tmpdir
from treecmp import assert_same, snapshot

SAMPLE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "sample", "image"))



def _preload():
    """Everything the child may import lazily: once it is nobody, an interpreter and
    site-packages under /root (mode 0700, as on these machines) cannot be read."""
    import pkgutil

    import lamina
    own = [m.name for m in pkgutil.walk_packages(lamina.__path__, "lamina.") if not m.name.endswith("__main__")]
    lazy_elsewhere = ["concurrent.futures.thread", "isal.igzip", "isal.isal_zlib", "zstandard", "base64",
                      "ctypes.util", "datetime", "functools", "gzip", "ipaddress", "shutil", "tempfile",
                      "urllib.parse", "zlib"]
    return own + lazy_elsewhere

SCRIPT = r"""
from lamina.store import Store
from lamina.store.materialize import materialize
from lamina.transports import copy
store = Store(sys.argv[2])
copy("oci:" + sys.argv[1], "sample:1", store=store)
image = store.resolve("sample:1")
dirs = [str(d) for d in store.snapshots_for(image)]
materialize(store, "sample:1", sys.argv[3])
print(json.dumps({"uid": os.geteuid(), "snapshots": dirs}))
"""


def test_unprivileged_store_import_and_unpack(tmp_path):
    base = world_tmpdir()
    try:
        layout = os.path.join(base, "image")
        shutil.copytree(SAMPLE, layout)
        for d, _, files in os.walk(base):
            os.chown(d, 65534, 65534)
            for f in files:
                os.chown(os.path.join(d, f), 65534, 65534)
        root, dest = os.path.join(base, "store"), os.path.join(base, "rootfs")
        proc = run_as_nobody(SCRIPT, layout, root, dest, preload=_preload())
        assert proc.returncode == 0, f"rootless store failed:\n{proc.stdout}\n{proc.stderr}"
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["uid"] == 65534

        # the sample's second layer has whiteouts and an opaque dir: the
        # snapshots hold them the way rootless overlayfs reads them
        whiteouts, opaque = [], []
        for snap in out["snapshots"]:
            for d, dirs, files in os.walk(snap):
                for name in files:
                    st = os.lstat(os.path.join(d, name))
                    if st.st_rdev == 0 and (st.st_mode & 0o170000) == 0o020000:
                        whiteouts.append(name)
                if "user.overlay.opaque" in os.listxattr(d):
                    opaque.append(d)
        assert whiteouts and opaque, (whiteouts, opaque)

        # same tree as root's flat unpack, but for what only root may do:
        # ownership, and setuid/setgid bits (stripped when unprivileged)
        import lamina
        lamina.unpack(f"oci:{SAMPLE}", tmp_path / "as-root")
        for d, _, files in os.walk(tmp_path / "as-root"):
            for f in files:
                p = os.path.join(d, f)
                mode = os.lstat(p).st_mode
                if mode & 0o6000 and not os.path.islink(p):
                    os.chmod(p, mode & 0o1777)
        assert_same(snapshot(tmp_path / "as-root"), snapshot(dest), ignore=("uid", "gid"),
                    labels=("root", "nobody"))
    finally:
        rmtree(base)
