"""Helpers for the store-verb and materialize tests: images into a store, the CLI in-process, oracles."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap

import ocibuild
from conftest import require_tool, run

NOW_ISO = "2024-01-02T03:04:05Z"


def load_layout(store, layout, ref, name=None):
    """Copy image ``ref`` of an OCI layout into ``store`` through the Store API; tag it ``name``.

    Only the documented API is used (ingest, put_blob, add_image, snapshots_for), so
    these tests do not depend on how lamina load/copy are spelled.
    """
    layout = os.fspath(layout)
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    descs = [m for m in index["manifests"]
             if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == ref]
    assert len(descs) == 1, f"{ref!r} not found once in {layout}"
    desc = descs[0]

    def blob(d):
        return os.path.join(layout, "blobs", "sha256", d.split(":", 1)[1])

    with open(blob(desc["digest"]), "rb") as f:
        manifest_bytes = f.read()
    manifest = json.loads(manifest_bytes)
    for layer in manifest["layers"]:
        with store.ingest(layer["digest"], layer["size"]) as w:
            if not w.exists:
                with open(blob(layer["digest"]), "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        w.write(chunk)
                w.commit()
    with open(blob(manifest["config"]["digest"]), "rb") as f:
        store.put_blob(f.read(), manifest["config"]["digest"])
    store.put_blob(manifest_bytes, desc["digest"])
    image = store.add_image(desc["digest"], name)
    store.snapshots_for(image)
    store.close()
    return store.image(desc["digest"])


def lamina(root, *args, stdin=None):
    """Run the lamina CLI in-process: (exit code, stdout, stderr)."""
    from lamina.cli import main
    out, err = io.StringIO(), io.StringIO()
    old_in = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(["--root", os.fspath(root), *map(str, args)])
            except SystemExit as e:  # argparse errors
                rc = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdin = old_in
    return rc, out.getvalue(), err.getvalue()


def ok(root, *args, stdin=None):
    rc, out, err = lamina(root, *args, stdin=stdin)
    assert rc == 0, f"lamina {' '.join(map(str, args))} exited {rc}:\n{err}\n{out}"
    return out


def fails(root, *args, stdin=None):
    rc, out, err = lamina(root, *args, stdin=stdin)
    assert rc != 0, f"lamina {' '.join(map(str, args))} should have failed:\n{out}"
    assert err.startswith("lamina: error: "), f"errors are one 'lamina: error:' line each, got {err!r}"
    return out, err


def lamina_subprocess(root, *args, input=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "lamina", "--root", os.fspath(root), *map(str, args)],
                          input=input, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"lamina {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def peak_rss_kib(args, cwd):
    """Run ``lamina ARGS`` in a fresh interpreter; return its peak RSS (VmHWM, KiB: read at its exit,
    it starts afresh at exec, unlike the ru_maxrss of a child of this big pytest process)."""
    code = textwrap.dedent(f"""
        import runpy, sys
        sys.argv = ["lamina"] + {list(args)!r}
        try:
            runpy.run_module("lamina", run_name="__main__")
        finally:
            with open("/proc/self/status") as f:
                hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
            print("VmHWM", hwm, file=sys.stderr)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.split("VmHWM")[-1].split()[0])


# --- images --------------------------------------------------------------------------------

def history(created_by, *, empty=False, created=NOW_ISO, comment=None):
    h = {"created": created, "created_by": created_by}
    if empty:
        h["empty_layer"] = True
    if comment:
        h["comment"] = comment
    return h


BASE_FILES = {"etc/": None, "etc/os-release": b"ID=lamina-test\n", "bin/": None, "bin/sh": b"#!fake shell\n" * 100,
              "usr/": None, "usr/share/": None, "usr/share/base.txt": b"base\n" * 1000}
APP_FILES = {"app/": None, "app/main.py": b"print('hello')\n" * 50, "etc/app.conf": b"port=80\n"}
APP_CONFIG = {
    "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "APP_MODE=prod"],
    "Cmd": ["python3", "/app/main.py"],
    "Entrypoint": ["/bin/sh", "-c"],
    "WorkingDir": "/app",
    "User": "1000:1000",
    "ExposedPorts": {"80/tcp": {}, "443/tcp": {}},
    "Volumes": {"/data": {}},
    "Labels": {"org.example.team": "store", "version": "1.2"},
    "StopSignal": "SIGTERM",
}


def base_and_app(layout_dir):
    """Two images in one layout sharing their first layer: "base" (1 layer) and "app" (2 layers).

    app's history has empty_layer entries (ENV/CMD/...) between its two layers.
    """
    lay = ocibuild.Layout(layout_dir)
    base = lay.image([BASE_FILES], config_extra={
        "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "history": [history("/bin/sh -c #(nop) ADD file:0123456789abcdef in / ", created="2024-01-01T00:00:00Z"),
                    history('/bin/sh -c #(nop)  CMD ["/bin/sh"]', empty=True, created="2024-01-01T00:00:00Z")],
    })
    lay.add(base, "base")
    app = lay.image([BASE_FILES, APP_FILES], config_extra={
        "created": "2024-01-02T03:04:05Z",
        "author": "lamina tests",
        "config": APP_CONFIG,
        "history": [
            history("/bin/sh -c #(nop) ADD file:0123456789abcdef in / ", created="2024-01-01T00:00:00Z"),
            history('/bin/sh -c #(nop)  CMD ["/bin/sh"]', empty=True, created="2024-01-01T00:00:00Z"),
            history("/bin/sh -c #(nop)  ENV APP_MODE=prod", empty=True),
            history("/bin/sh -c #(nop) COPY dir:abc in /app \t(tab)", comment="buildkit.dockerfile.v0"),
            history('/bin/sh -c #(nop)  CMD ["python3" "/app/main.py"]', empty=True),
        ],
    })
    lay.add(app, "app")
    return lay


def du_bytes(*paths):
    """GNU du -s -B1 over the paths (each inode once across all of them)."""
    require_tool("du")
    out = run("du", "-s", "-B1", "-c", *paths).stdout.splitlines()
    return int(out[-1].split()[0])


def base_and_app_store(tmp_path, app_ref="app:v2"):
    """A store under tmp_path/root holding base:1.0 and an app image built on it."""
    from lamina.store import Store
    store = Store(tmp_path / "root")
    base_and_app(tmp_path / "layout")
    load_layout(store, tmp_path / "layout", "base", "base:1.0")
    load_layout(store, tmp_path / "layout", "app", app_ref)
    return store
