"""The CLI's one output convention (--format json|TEMPLATE, --json alias, a versioned JSON
document), --version, shell completion and the help texts a new user reads first."""
import json
import os
import subprocess
import sys

import pytest

import ocibuild as ob
from storekit import lamina

SAMPLE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "sample", "image"))


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "lamina", *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("out")
    lay = ob.Layout(str(base / "lay"))
    lay.add(lay.image([{"a": b"one\n"}, {"b": b"two\n"}]), "app:1")
    root = base / "store"
    lamina(root, "copy", f"oci:{lay.root}:app:1", "app:1")
    blobs = base / "lay" / "blobs" / "sha256"
    index = json.loads((base / "lay" / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    layer = blobs / manifest["layers"][0]["digest"][7:]
    return {"root": root, "layout": lay.root, "layer": layer}


def _own_verbs(s, tmp):
    """lamina's own verbs: (args, a key their JSON document has)."""
    return {
        "apply": (["apply", s["layer"], tmp / "applied"], "diff_id"),
        "unpack-layout": (["unpack", f"oci:{s['layout']}:app:1", tmp / "from-layout"], "manifest_digest"),
        "unpack-store": (["--root", s["root"], "unpack", "app:1", tmp / "from-store"], "manifest_digest"),
        "fsck": (["--root", s["root"], "fsck"], "findings"),
    }


@pytest.mark.parametrize("verb", ["apply", "unpack-layout", "unpack-store", "fsck"])
def test_json_document_is_versioned_and_json_is_an_alias(store, tmp_path, verb):
    args, key = _own_verbs(store, tmp_path)[verb]
    docs = []
    for i, spelling in enumerate((["--format", "json"], ["--json"])):
        run_args = [a if not str(a).startswith(str(tmp_path)) else f"{a}-{i}" for a in args]
        docs.append(json.loads(cli(*run_args, *spelling).stdout))
    for doc in docs:
        assert doc["version"] == 1 and key in doc, doc
    assert docs[0].keys() == docs[1].keys()


@pytest.mark.parametrize("verb", ["apply", "unpack-layout", "unpack-store", "fsck"])
def test_format_template_renders_the_document(store, tmp_path, verb):
    args, key = _own_verbs(store, tmp_path)[verb]
    doc = json.loads(cli(*[f"{a}-j" if str(a).startswith(str(tmp_path)) else a for a in args],
                         "--format", "json").stdout)
    out = cli(*args, "--format", "{{.version}} {{json ." + key + "}}").stdout.strip()
    assert out == f"1 {json.dumps(doc[key], separators=(',', ':'))}"


def test_bad_template_fails_before_any_work(store, tmp_path):
    proc = cli("apply", store["layer"], tmp_path / "never", "--format", "{{.nope", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert not (tmp_path / "never").exists()


def test_overlay_is_a_flag_and_the_old_spelling_still_works(store, tmp_path):
    for i, spelling in enumerate((["--overlay"], ["--format", "overlay"])):
        dest = tmp_path / str(i)
        out = cli("unpack", f"oci:{store['layout']}:app:1", dest, *spelling).stdout
        assert "overlay: mount -t overlay" in out
        assert len(os.listdir(dest)) == 2  # one dir per layer, not a merged rootfs


def test_unpack_counts_its_layers_from_one_as_copy_and_load_do(store, tmp_path):
    """unpack's lines named the layers "layer 1/2", "layer 2/2" where every error of copy, load
    and unpack says "layer 1 of 2": one spelling, so a line and an error about a layer agree."""
    out = cli("unpack", f"oci:{store['layout']}:app:1", tmp_path / "d").stdout
    labels = [line.split(":")[0] for line in out.splitlines() if line.startswith("layer ")]
    assert labels == ["layer 1 of 2", "layer 2 of 2"], out


def test_version():
    import lamina
    assert cli("--version").stdout.strip() == f"lamina version {lamina.__version__}"


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_know_every_verb(shell, tmp_path):
    script = cli("completion", shell).stdout
    for verb in ("unpack", "images", "pull", "image", "system", "completion"):
        assert verb in script
    if shell == "bash":
        path = tmp_path / "lamina.bash"
        path.write_text(script)
        # the script defines its completion function once sourced by bash
        check = subprocess.run(["bash", "-c", f"source {path} && complete -p lamina"],
                               capture_output=True, text=True)
        assert check.returncode == 0 and "lamina" in check.stdout, check.stderr


def test_help_texts():
    assert "oci-archive:" in cli("unpack", "--help").stdout
    assert "--root" not in cli("apply", "--help").stdout  # apply works on files, not on the store


def _failing_layer(path):
    """A tar whose first file is whole and whose second is cut short: apply fails half-way."""
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in (("first", b"1" * 4096), ("second", b"2" * 65536)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue()[:512 + 4096 + 512 + 1000])
    return path


def _tree(root):
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_uid,
                                             open(p, "rb").read() if os.path.isfile(p) else None)
    return out


def test_apply_failure_says_dest_is_partly_applied(tmp_path):
    layer, dest = _failing_layer(tmp_path / "bad.tar"), tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    proc = cli("apply", layer, dest, check=False)
    assert proc.returncode == 1 and f"{dest} is now partly applied" in proc.stderr, proc.stderr
    assert "--atomic" in proc.stderr and "Traceback" not in proc.stderr
    assert (dest / "first").read_bytes() == b"1" * 4096  # in place, like tar: the first file is there


def test_apply_atomic_leaves_dest_untouched_on_failure(tmp_path):
    layer, dest = _failing_layer(tmp_path / "bad.tar"), tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    os.symlink("keep", dest / "link")
    os.chown(dest / "keep", 1234, 5678)
    before = _tree(dest)
    proc = cli("apply", "--atomic", layer, dest, check=False)
    assert proc.returncode == 1 and "partly applied" not in proc.stderr, proc.stderr
    assert _tree(dest) == before
    assert sorted(os.listdir(tmp_path)) == ["bad.tar", "dest"]  # no staging left behind


def test_apply_atomic_applies_like_apply(store, tmp_path):
    for name, extra in (("plain", []), ("atomic", ["--atomic"])):
        dest = tmp_path / name
        dest.mkdir()
        (dest / "keep").write_text("mine")
        os.chown(dest / "keep", 1234, 5678)
        cli("apply", *extra, store["layer"], dest)
    assert _tree(tmp_path / "plain") == _tree(tmp_path / "atomic")
    assert (tmp_path / "atomic" / "a").read_bytes() == b"one\n"
    assert not [n for n in os.listdir(tmp_path) if "lamina" in n]


def test_store_verbs_json(store, tmp_path):
    root = tmp_path / "s"
    archive = tmp_path / "app.tar"
    copied = json.loads(cli("--root", root, "copy", f"oci:{store['layout']}:app:1", "app:1", "--json").stdout)
    assert copied["version"] == 1 and copied["names"] == ["docker.io/library/app:1"]
    cli("--root", root, "save", "-o", archive, "app:1")
    loaded = json.loads(cli("--root", tmp_path / "s2", "load", "-i", archive, "--format", "json").stdout)
    assert loaded["version"] == 1 and loaded["images"][0]["names"] == ["app:1"]
    assert loaded["images"][0]["id"] == copied["config_digest"]
    cli("--root", root, "tag", "app:1", "app:2")
    rmi = json.loads(cli("--root", root, "rmi", "app:2", "--format", "json").stdout)
    assert rmi == {"version": 1, "untagged": ["app:2"], "deleted": [], "snapshots": [], "reclaimed": 0,
                   "busy": False}
    rmi = json.loads(cli("--root", root, "rmi", "app:1", "--json").stdout)
    assert rmi["deleted"] == [copied["config_digest"]] and len(rmi["snapshots"]) == 2 and rmi["reclaimed"] > 0
    pruned = cli("--root", tmp_path / "s2", "image", "prune", "-a", "-f", "--format", "{{len .deleted}}")
    assert pruned.stdout.strip() == "1"


def test_apply_of_a_non_layer_leaves_no_new_dest(tmp_path):
    """Nothing was written: no DEST appears and nothing claims it is partly applied."""
    junk = tmp_path / "notes.txt"
    junk.write_text("not a tar archive\n" * 100)
    for layer in (junk, tmp_path / "no-such-layer.tar"):
        proc = cli("apply", layer, tmp_path / "new", check=False)
        assert proc.returncode == 1 and "partly applied" not in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / "new").exists()


def test_login_with_empty_stdin_says_so(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lamina", "login", "127.0.0.1:9", "-u", "me", "--password-stdin"],
                          input="", capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DOCKER_CONFIG": str(tmp_path)})
    assert proc.returncode == 1 and "stdin was empty" in proc.stderr, proc.stderr


def test_unpack_of_an_image_without_layers_says_what_it_did(tmp_path):
    """An image of no layers (a config-only image, as `FROM scratch` with only ENV gives) unpacks
    to an empty rootfs; its summary read "0B via  in 0.000s", an empty copy method."""
    lay = ob.Layout(str(tmp_path / "lay"))
    lay.add(lay.image([]), "latest")
    root = tmp_path / "store"
    lamina(root, "copy", f"oci:{lay.root}:latest", "empty:1")
    out = lamina(root, "unpack", "empty:1", tmp_path / "out").stdout
    done = [line for line in out.splitlines() if line.startswith("done:")]
    assert done and " via " not in done[0] and "  " not in done[0], out
    assert os.listdir(tmp_path / "out") == []
