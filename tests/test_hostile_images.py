"""Hostile images around the tar reader: indexes, configs, layouts, archives and registries
built to make lamina hang, exhaust memory, crash or name the wrong content.

Each case goes through every way an image reaches lamina that reads the document at fault:
``unpack`` of a layout (dir and overlay), ``load`` into a store, and for registries ``pull``
and ``unpack docker://`` (tests/registryfixture.py: a real docker-registry on loopback).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import ocibuild as ob
import treecmp
from conftest import require_tool
from registryfixture import FaultProxy, lamina_cli, reg, registry_env  # noqa: F401
from test_documents import _push_blob, _push_manifest

def cli(*args, root=None, timeout=120, limit_memory=False):
    """The lamina CLI in a child; ``limit_memory``: at most 1 GiB of address space, so a
    document that makes lamina build a huge structure fails with MemoryError, not the machine."""
    cmd = [sys.executable, "-m", "lamina"] + (["--root", str(root)] if root else []) + [str(a) for a in args]
    if limit_memory:
        cmd = ["prlimit", f"--as={1 << 30}", "--"] + cmd
    env = {k: v for k, v in os.environ.items() if k != "LAMINA_ROOT"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def one_line_error(proc):
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


# --------------------------------------------------------------------------------------------
# an index listing one child index thousands of times


def _fan_out_layout(root, fan=2000):
    """index.json -> index (fan x) -> index (fan x) -> index -> one amd64 manifest: fan**2 listings
    of the one image, a few hundred KiB of JSON.  Walked listing by listing (as lamina did, before
    every digest was walked once) that is 4 million paths, each a list entry."""
    lay = ob.Layout(root)
    m = ob.with_platform(lay.image([{"hello": b"fan\n"}]), "linux", "amd64")
    inner = lay.index([m])
    mid = lay.index([inner] * fan)
    top = lay.index([mid] * fan)
    outer = lay.index([top] * fan)
    lay.add(outer, "latest", **{"io.containerd.image.name": "fan:1"})
    return lay


@pytest.mark.parametrize("how", ["unpack", "unpack --overlay", "load"])
def test_an_index_listing_a_child_many_times_is_walked_once(tmp_path, how):
    lay = _fan_out_layout(tmp_path / "fan")
    if how == "load":
        proc = cli("load", "--platform", "linux/amd64", "-i", lay.root, root=tmp_path / "store", limit_memory=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        proc = cli("unpack", "fan:1", tmp_path / "out", root=tmp_path / "store")
    else:
        args = how.split() + [f"oci:{lay.root}", tmp_path / "out", "--platform", "linux/amd64"]
        proc = cli(*args, limit_memory=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hello = tmp_path / "out" / ("layers/0/hello" if "overlay" in how else "hello")
    assert hello.read_bytes() == b"fan\n"


def _push_image(host, repo, tag, layer_blobs, diff_ids):
    """Push gzip layer blobs (each once, however often listed) and an OCI manifest listing them."""
    for blob in dict.fromkeys(layer_blobs):
        _push_blob(host, repo, blob)
    config = ob.dumps({"architecture": "amd64", "os": "linux",
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    _push_blob(host, repo, config)
    manifest = ob.dumps({"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST,
                         "config": ob.desc(ob.OCI_CONFIG, config),
                         "layers": [ob.desc(ob.OCI_LAYER_GZIP, b) for b in layer_blobs]})
    status, body = _push_manifest(host, repo, tag, manifest, ob.OCI_MANIFEST)
    assert status == 201, body
    return manifest


def _push_index(host, repo, tag, manifests):
    data = ob.dumps({"schemaVersion": 2, "mediaType": ob.OCI_INDEX, "manifests": manifests})
    status, body = _push_manifest(host, repo, tag or ob.sha256(data), data, ob.OCI_INDEX)
    assert status == 201, body
    return ob.desc(ob.OCI_INDEX, data)


def test_a_registry_index_listing_a_child_many_times_fetches_it_once(reg, registry_env, tmp_path):  # noqa: F811
    """Each child index listed ten times, two levels deep: lamina fetched 10 + 10**2 documents
    (a registry serving bigger indexes kept it fetching for hours); each digest once now."""
    import lamina
    raw = ob.tar_bytes({"hello": b"fan\n"})
    manifest = _push_image(reg.host, "fan", "image", [ob.gz(raw)], [ob.sha256(raw)])
    inner = _push_index(reg.host, "fan", None,
                        [ob.with_platform(ob.desc(ob.OCI_MANIFEST, manifest), "linux", "amd64")])
    mid = _push_index(reg.host, "fan", None, [inner] * 10)
    _push_index(reg.host, "fan", "t", [mid] * 10)
    proxy = FaultProxy(reg.host)
    try:
        result = lamina.pull(f"{proxy.host}/fan:t", store=tmp_path / "store", platform="linux/amd64")
        assert result.manifest_digest == ob.sha256(manifest)
        # the tag, the two nested indexes and the manifest
        assert len(proxy.requests_for("/manifests/", "GET")) == 4, proxy.requests_for("/manifests/")
        proxy.seen.clear()
        proc = lamina_cli("unpack", "--platform", "linux/amd64", f"docker://{proxy.host}/fan:t", tmp_path / "out")
        assert (tmp_path / "out" / "hello").read_bytes() == b"fan\n", proc.stdout
        assert len(proxy.requests_for("/manifests/", "GET")) == 4, proxy.requests_for("/manifests/")
    finally:
        proxy.stop()


# --------------------------------------------------------------------------------------------
# one blob listed as several layers


def test_one_blob_listed_as_several_upper_layers_unpacks_from_a_registry(reg, registry_env, tmp_path):  # noqa: F811
    """A big bottom layer and one small blob listed twice above it (a whiteout of the bottom's
    file and a file).  ``unpack docker://`` reads small upper layers ahead into spool files,
    which were named by digest: the second listing failed with FileExistsError.  The tree must
    be umoci's of the same layers, on the registry path and on every local one."""
    from everypath import assert_agree, run_paths, umoci_tree
    big = ob.tar_bytes({"big": bytes(range(256)) * 2048, "keep": b"kept\n"})
    small = ob.tar_bytes({".wh.big": b"", "small": b"small\n"})
    tars = [big, small, small]
    expected = umoci_tree(tmp_path / "umoci", tars)
    assert not isinstance(expected, Exception), expected
    assert sorted(expected.paths()) == ["keep", "small"]
    local = assert_agree(run_paths(tmp_path / "paths", tars), context="repeated layer")
    assert not treecmp.compare(expected, local, labels=("umoci", "lamina"))
    _push_image(reg.host, "repeat", "t", [ob.gz(t) for t in tars], [ob.sha256(t) for t in tars])
    out = tmp_path / "out"
    lamina_cli("unpack", f"docker://{reg.host}/repeat:t", out)
    diff = treecmp.compare(expected, treecmp.snapshot(out), labels=("umoci", "docker://"))
    assert not diff, diff
    lamina_cli("unpack", "--overlay", f"docker://{reg.host}/repeat:t", tmp_path / "over")
    assert sorted(os.listdir(tmp_path / "over" / "layers")) == ["0", "1", "2"]
    lamina_cli("pull", f"{reg.host}/repeat:t", root=tmp_path / "store")
    lamina_cli("unpack", f"{reg.host}/repeat:t", tmp_path / "from-store", root=tmp_path / "store")
    diff = treecmp.compare(expected, treecmp.snapshot(tmp_path / "from-store"), labels=("umoci", "pull"))
    assert not diff, diff


# --------------------------------------------------------------------------------------------
# a layer descriptor saying size 0 for a blob that is not empty


def test_a_layer_descriptor_of_size_0_for_content_is_refused_by_name(reg, registry_env, tmp_path):  # noqa: F811
    """No 0-byte content has another digest than sha256 of nothing.  ``unpack docker://``
    printed "Pull complete" and then blamed the media type ("announces gzip but the content
    is none"); every way in now names the blob and its size before reading anything."""
    raw = ob.tar_bytes({"hello": b"zero\n"})
    blob = ob.gz(raw)
    _push_blob(reg.host, "zero", blob)
    config = ob.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [ob.sha256(raw)]}})
    _push_blob(reg.host, "zero", config)
    layer = dict(ob.desc(ob.OCI_LAYER_GZIP, blob), size=0)
    manifest = ob.dumps({"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST,
                         "config": ob.desc(ob.OCI_CONFIG, config), "layers": [layer]})
    status, body = _push_manifest(reg.host, "zero", "t", manifest, ob.OCI_MANIFEST)
    assert status == 201, body
    lay = ob.Layout(tmp_path / "layout")
    lay.blob(blob)
    lay.blob(config)
    lay.blob(manifest)
    lay.add(ob.desc(ob.OCI_MANIFEST, manifest), "latest")
    for args, root in ((["pull", f"{reg.host}/zero:t"], tmp_path / "store"),
                       (["unpack", f"docker://{reg.host}/zero:t", tmp_path / "out"], None),
                       (["unpack", f"oci:{lay.root}:latest", tmp_path / "out2"], None)):
        line = one_line_error(cli(*args, root=root))
        assert ob.sha256(blob) in line and "size 0" in line, (args, line)
        assert "Pull complete" not in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


# --------------------------------------------------------------------------------------------
# a layout's index.json or oci-layout that is not a regular file


def _socket_at(path):
    """A Unix socket file at ``path``, bound through its directory's fd (a socket's path is at
    most 107 bytes); the file stays after the socket is closed."""
    import socket
    dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(f"/proc/self/fd/{dfd}/{os.path.basename(path)}")
    finally:
        os.close(dfd)


@pytest.mark.parametrize("name", ["index.json", "oci-layout", "layer", "config"])
@pytest.mark.parametrize("kind", ["fifo", "socket", "/dev/zero"])
def test_layout_files_that_are_not_regular_files_are_refused(tmp_path, name, kind):
    """A FIFO there made every reader of the layout wait forever for a writer (blobs were
    already opened non-blocking); /dev/zero was read up to the document limit first; a socket
    cannot be opened at all, and was refused with open(2)'s words, "No such device or address",
    which say nothing of a socket.  Each is refused saying what it is, naming the file."""
    lay = ob.Layout(tmp_path / "lay")
    m = lay.add(lay.image([{"a": b"x"}]), "latest")
    doc = lay.read_json(m["digest"])
    digest = {"layer": doc["layers"][0]["digest"], "config": doc["config"]["digest"]}.get(name)
    path = lay.path(digest) if digest else os.path.join(lay.root, name)
    os.unlink(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        _socket_at(path)
    else:
        os.symlink(kind, path)
    for args, root in ((["unpack", f"oci:{lay.root}", tmp_path / "out"], None),
                       (["load", "-i", lay.root], tmp_path / "store")):
        line = one_line_error(cli(*args, root=root, timeout=60))
        what = {"fifo": "is not a regular file (a FIFO)", "socket": "is not a regular file (a socket)"}.get(
            kind, "is a symlink: lamina does not follow symlinks inside a layout")
        if digest:
            assert line.endswith(f"blob {digest} in {lay.root} {what}"), line
        else:
            assert line == f"lamina: error: {path} {what}", line
        assert not (tmp_path / "out").exists()
    assert cli("images", "-q", root=tmp_path / "store").stdout == ""


# --------------------------------------------------------------------------------------------
# a name with a digest, given to other content


def _legacy_archive(path, repo_tags):
    layer = ob.tar_bytes({"a": b"x"})
    config = ob.dumps({"architecture": "amd64", "os": "linux",
                       "rootfs": {"type": "layers", "diff_ids": [ob.sha256(layer)]}})
    manifest = [{"Config": f"{ob.sha256(config)[7:]}.json", "RepoTags": repo_tags, "Layers": ["l/layer.tar"]}]
    members = {"manifest.json": json.dumps(manifest).encode(), f"{ob.sha256(config)[7:]}.json": config,
               "l/layer.tar": layer}
    with open(path, "wb") as f:
        f.write(ob.tar_of(members))
    return path


@pytest.mark.parametrize("tag", [5, None, ["a:1"], {"a": 1}])
def test_load_names_a_repo_tag_that_is_not_a_string(tmp_path, tag):
    """``RepoTags: [5]`` was refused as an "empty reference", which sends one looking for an
    empty string that is not there."""
    store = tmp_path / "store"
    line = one_line_error(cli("load", "-i", _legacy_archive(tmp_path / "a.tar", ["ok:1", tag]), root=store))
    assert f"RepoTags {tag!r}" in line and "is not a string" in line, line
    assert cli("images", "-q", root=store).stdout == ""


PINNED = "docker.io/library/debian@sha256:" + "ab" * 32


@pytest.mark.parametrize("source", ["docker-archive", "oci-layout"])
def test_load_refuses_a_name_whose_digest_is_not_the_image(tmp_path, source):
    """``RepoTags: ["debian@sha256:<debian's digest>"]`` (or containerd's name annotation) named
    the archive's own image by debian's digest: ``unpack debian@sha256:…`` then gave it.  docker
    load refuses any RepoTag with a digest; lamina refuses one that is not the image's."""
    if source == "docker-archive":
        path = _legacy_archive(tmp_path / "a.tar", ["ok:1", PINNED])
    else:
        lay = ob.Layout(tmp_path / "lay")
        lay.add(lay.image([{"a": b"x"}]), "latest", **{"io.containerd.image.name": PINNED})
        path = lay.root
    store = tmp_path / "store"
    line = one_line_error(cli("load", "-i", path, root=store))
    assert PINNED in line and "must name this image" in line, line
    assert cli("images", "-q", "--no-trunc", root=store).stdout == ""
    proc = cli("inspect", PINNED, root=store)
    assert proc.returncode == 1 and "no such image" in proc.stderr
    fsck = cli("fsck", root=store)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_load_keeps_a_name_whose_digest_is_the_image(tmp_path):
    """containerd names an image pulled by digest NAME@DIGEST and exports it so: that one is true."""
    lay = ob.Layout(tmp_path / "lay")
    m = lay.image([{"a": b"x"}])
    name = f"docker.io/library/pinned@{m['digest']}"
    lay.add(m, "latest", **{"io.containerd.image.name": name})
    proc = cli("load", "-i", lay.root, root=tmp_path / "store")
    assert proc.returncode == 0, proc.stderr
    proc = cli("inspect", "--format", "{{.RepoDigests}}", f"pinned@{m['digest']}", root=tmp_path / "store")
    assert proc.stdout.strip() == f"[pinned@{m['digest']}]", proc.stdout + proc.stderr


# Go before 1.20 reads the first two zones (umoci 0.4.7 does); no Python time zone holds 24 hours or
# more (inspect's traceback)
@pytest.mark.parametrize("created", ["2020-01-01T00:00:00+99:99", "2020-01-01T00:00:00+24:00",
                                     # in years 10000 and 0 once in UTC (inspect's traceback)
                                     "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"])
def test_a_created_time_no_python_datetime_holds_is_no_time(tmp_path, created):
    """A ``created`` some Go reads but no Python datetime holds: ``images`` shows such an image as
    created at no known time.  (Python's \\d matches every script's digits, and int() reads them:
    ``created`` in Arabic-Indic digits was 2020 to lamina and no time at all to Go; such times are
    now refused as the config is read, ``test_documents.py``.)"""
    from lamina import images as I
    from lamina.store import Store
    lay = ob.Layout(tmp_path / "lay")
    lay.add(lay.image([{"a": b"x"}], config_extra={"created": created}), "latest")
    assert cli("load", "-i", lay.root, root=tmp_path / "store").returncode == 0
    store = Store(tmp_path / "store")
    [row] = I.ls(store)
    [image] = [I.inspect(store, row.id).image]
    assert I.created_ts(image) is None, created
    until = one_line_error(cli("images", "--filter", f"until={created}", root=tmp_path / "store"))
    assert "until" in until, until
    shown = cli("inspect", "--format", "{{.Created}}", row.id, root=tmp_path / "store")
    assert shown.returncode == 0 and shown.stdout == "\n", shown.stdout + shown.stderr


# --------------------------------------------------------------------------------------------
# config fields of another JSON type than the image-spec's


BAD_CONFIGS = [
    ({"config": ["x"]}, "config must be an object"),
    ({"config": {"Entrypoint": "sh"}}, " config: Entrypoint must be a list of strings"),
    ({"config": {"Env": "PATH=/bin"}}, " config: Env must be a list of strings"),
    ({"config": {"User": 1000}}, " config: User must be a string"),
    ({"config": {"Labels": {"a": 1}}}, " config: Labels must be a map of strings"),
    ({"history": {"created_by": "x"}}, "history must be a list"),
    ({"history": [1]}, "history[0] must be an object"),
    ({"history": [{"empty_layer": "false"}]}, "history[0]: empty_layer must be a boolean"),
    ({"created": 1700000000}, "created must be a string"),
    ({"config": {"ArgsEscaped": "false"}}, " config: ArgsEscaped must be a boolean"),
    # Go's map[string]struct{}: a value that is no object (nor null) fails the unmarshalling
    ({"config": {"Volumes": {"/data": 1}}}, " config: Volumes must be an object of objects"),
    ({"config": {"ExposedPorts": {"80/tcp": "yes"}}}, " config: ExposedPorts must be an object of objects"),
    ({"config": {"Volumes": {"/a": {}, "/b": []}}}, " config: Volumes must be an object of objects"),
]


@pytest.mark.parametrize("extra, message", BAD_CONFIGS)
def test_config_fields_of_another_type_are_refused(tmp_path, extra, message):
    """Go readers (containerd, umoci) refuse these configs; lamina loaded them, then
    ``images`` failed on every image of the store (a "config" list), ``unpack --bundle`` ran an
    Entrypoint "sh" as the program "s" with argument "h", and ``history`` took
    ``"empty_layer": "false"`` as true."""
    require_tool("umoci")
    lay = ob.Layout(tmp_path / "lay")
    m = lay.image([{"a": b"x"}], config_extra=extra)
    lay.add(m, "latest", **{"io.containerd.image.name": "bad:1"})
    config = lay.read_json(m["digest"])["config"]["digest"]
    umoci = subprocess.run(["umoci", "raw", "unpack", "--image", f"{lay.root}:latest", tmp_path / "umoci"],
                           capture_output=True, text=True)
    assert umoci.returncode != 0, "umoci accepts this config"
    for args, root in ((["unpack", f"oci:{lay.root}", tmp_path / "out"], None),
                       (["unpack", "--overlay", f"oci:{lay.root}", tmp_path / "out"], None),
                       (["load", "-i", lay.root], tmp_path / "store")):
        line = one_line_error(cli(*args, root=root))
        assert line.startswith(f"lamina: error: config {config}") and message in line, line
        assert not (tmp_path / "out").exists()
    assert cli("images", "-q", root=tmp_path / "store").stdout == ""


def test_healthcheck_numbers_of_another_type_are_shown_absent_not_a_traceback(tmp_path):
    """A Healthcheck is docker's alone (umoci and containerd ignore it, and unpack such an image);
    inspect read its durations with int(): "Interval": "abc" was a ValueError traceback,
    "Retries": [1] a TypeError one, and 1.5 or true became numbers no Go reader would take."""
    lay = ob.Layout(tmp_path / "lay")
    hc = {"Test": ["CMD", "true"], "Interval": "abc", "Retries": [1], "Timeout": 1.5, "StartPeriod": True,
          "StartInterval": 5_000_000_000}
    lay.add(lay.image([{"a": b"x"}], config_extra={"config": {"Healthcheck": hc}}), "latest",
            **{"io.containerd.image.name": "hc:1"})
    store = tmp_path / "store"
    assert cli("load", "-i", lay.root, root=store).returncode == 0
    p = cli("inspect", "--format", "{{json .Config.Healthcheck}}", "hc:1", root=store)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert json.loads(p.stdout) == {"Test": ["CMD", "true"], "StartInterval": 5_000_000_000}


# --------------------------------------------------------------------------------------------
# names docker's grammar refuses


@pytest.mark.parametrize("bad", ["app:ТЕГ", "app:١", "app:v1\n"])
def test_names_outside_dockers_grammar_are_refused(tmp_path, bad):
    """The tag grammar is Go's ``[\\w][\\w.-]{0,127}``, whose \\w is ASCII; Python's matched any
    Unicode letter or digit, and ``$`` let a final newline through (``app:v1\\n`` became app:v1).
    Such names were loaded from RepoTags and given by ``tag``; skopeo (the same Go grammar) refuses
    them, and an OCI layout's ref.name may not hold them."""
    require_tool("skopeo")
    skopeo = subprocess.run(["skopeo", "inspect", f"docker://127.0.0.1:9/{bad}"], capture_output=True, text=True)
    assert "invalid reference format" in skopeo.stderr, skopeo.stderr
    store = tmp_path / "store"
    line = one_line_error(cli("load", "-i", _legacy_archive(tmp_path / "a.tar", [bad]), root=store))
    assert "RepoTags" in line and "invalid reference format" in line, line
    assert cli("images", "-q", root=store).stdout == ""
    assert cli("load", "-i", _legacy_archive(tmp_path / "b.tar", ["app:1"]), root=store).returncode == 0
    line = one_line_error(cli("tag", "app:1", bad, root=store))
    assert "invalid reference format" in line, line
    assert cli("images", "--format", "{{.Repository}}:{{.Tag}}", root=store).stdout == "app:1\n"


# --------------------------------------------------------------------------------------------
# a registry whose tag list pages forever


def test_a_tag_list_whose_next_page_loops_is_refused(reg, registry_env, tmp_path):  # noqa: F811
    """``pull -a`` follows tags/list's Link: rel="next" pages; a registry linking back to a page
    already read kept lamina requesting it forever (653 requests in 30 s, and counting)."""
    proxy = FaultProxy(reg.host)
    try:
        body = json.dumps({"name": "loop", "tags": ["a"]}).encode()
        proxy.add("respond", path="/tags/list", times=None, body=body,
                  headers={"Content-Type": "application/json", "Link": '</v2/loop/tags/list?n=1&last=a>; rel="next"'})
        line = one_line_error(cli("pull", "-a", f"{proxy.host}/loop", root=tmp_path / "store", timeout=60))
        assert line == (f"lamina: error: tags of {proxy.host}/loop: the registry's next page is page 2 again"
                        f" (http://{proxy.host}/v2/loop/tags/list?n=1&last=a): its pagination loops"), line
        assert len(proxy.requests_for("/tags/list")) == 2
    finally:
        proxy.stop()


_DEEP = b"[" * 60_000  # within the error body limit (64 KiB), far past json's recursion limit


@pytest.mark.parametrize("path,code,body,args,error", [
    ("/manifests/", 404, _DEEP, ("pull", "{h}/deep:1"),
     "lamina: error: manifest for {h}/deep:1 not found: 404 Not Found: " + "[" * 200),
    ("/manifests/", 400, b'{"errors": [{"code": ' + _DEEP, ("pull", "{h}/deep:1"),
     'lamina: error: GET manifest {h}/deep:1: 400 Bad Request: {{"errors": [{{"code": ' + "[" * 179),
    ("/manifests/", 400, json.dumps({"errors": [{"code": [[["X"]]], "message": {"a": 1}}]}).encode(),
     ("pull", "{h}/deep:1"), 'lamina: error: GET manifest {h}/deep:1: 400 Bad Request: {{"errors": [{{"code": '
     '[[["X"]]], "message": {{"a": 1}}}}]}}'),
    ("/tags/list", 200, _DEEP, ("pull", "-a", "{h}/deep"), "lamina: error: tags of {h}/deep: invalid JSON"),
    ("/tags/list", 200, b'{"tags": 5}', ("pull", "-a", "{h}/deep"),
     'lamina: error: tags of {h}/deep: "tags" is a int, not a list'),
    ("/tags/list", 200, b'{"tags": "latest"}', ("pull", "-a", "{h}/deep"),
     'lamina: error: tags of {h}/deep: "tags" is a str, not a list'),
    ("/tags/list", 200, json.dumps({"tags": ["1", "x@sha256:" + "a" * 64]}).encode(), ("pull", "-a", "{h}/deep"),
     "lamina: error: tags of {h}/deep: the registry lists 'x@sha256:" + "a" * 64 + "', which is not a tag"
     " (docker refuses it too)"),
    ("/tags/list", 200, b'{"tags": ["1", "../x\\n"]}', ("pull", "-a", "{h}/deep"),
     "lamina: error: tags of {h}/deep: the registry lists '../x\\n', which is not a tag (docker refuses it too)"),
], ids=["404-deep", "400-deep-code", "400-code-not-text", "tags-deep", "tags-int", "tags-str", "tag-digest",
        "tag-path"])
def test_a_registry_answer_nested_deep_or_of_another_shape_is_a_clear_error(reg, registry_env, tmp_path,  # noqa: F811
                                                                             path, code, body, args, error):
    """A registry's error body, or a tag list, nested 60,000 arrays deep made json.loads raise
    RecursionError, which no except clause took: a traceback.  A tag list whose "tags" was a
    number was a TypeError traceback, and a string gave its letters as tags.  A listed tag
    "x@sha256:..." made ``pull -a`` pull by digest (after tag 1), one with a newline wrote it
    into the error line: every listed tag must be a tag before anything is pulled."""
    proxy = FaultProxy(reg.host)
    try:
        proxy.add("respond", path=path, times=None, code=code, body=body,
                  headers={"Content-Type": "application/json"})
        line = one_line_error(cli(*[a.format(h=proxy.host) for a in args], root=tmp_path / "store", timeout=60))
        assert line == error.format(h=proxy.host), line
    finally:
        proxy.stop()


@pytest.mark.parametrize("lifetime", [b"1" + b"0" * 400, b"1.5"], ids=["400-digits", "fraction"])
def test_a_token_lifetime_gos_int_field_refuses_still_gives_a_usable_token(reg, registry_env, tmp_path, lifetime):  # noqa: F811
    """A token server's expires_in of 400 digits is a valid JSON number: float() of it raised
    OverflowError, a traceback before the first request with the token.  Go's int field refuses
    it, and 1.5; lamina uses the token (see CONFORMANCE.md: the lifetime is only a cache's)."""
    proxy = FaultProxy(reg.host)
    try:
        proxy.add("respond", path="/manifests/", times=1, code=401, headers={
            "WWW-Authenticate": f'Bearer realm="http://{proxy.host}/token",service="s",scope="repository:t:pull"'})
        body = b'{"token": "t", "expires_in": ' + lifetime + b"}"
        proxy.add("respond", path="/token", times=None, body=body, headers={"Content-Type": "application/json"})
        line = one_line_error(cli("pull", f"{proxy.host}/t:1", root=tmp_path / "store", timeout=60))
        assert line.startswith(f"lamina: error: manifest for {proxy.host}/t:1 not found"), line
        assert len(proxy.requests_for("/token")) == 1
    finally:
        proxy.stop()


# --------------------------------------------------------------------------------------------
# one image under thousands of names


def index_replacements(store, *args):
    """Run lamina on ``store``; how many times it replaced the store's index.json (strace)."""
    require_tool("strace")
    trace = store.parent / "strace.txt"
    proc = subprocess.run(["strace", "-f", "-qq", "-e", "trace=rename,renameat,renameat2", "-o", trace,
                           sys.executable, "-m", "lamina", "--root", store, *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return sum(1 for line in trace.read_text().splitlines() if f'"{store}/index.json")' in line)


def test_a_layout_giving_an_image_thousands_of_names_loads_in_one_index_update(tmp_path):
    """Every name was one rewrite of the store's whole index.json, each name of the layout was
    looked up by a scan of index.json, and kept in a list checked by scans: 1000 names took 40 s,
    4000 more than two minutes (a 16 MiB index.json holds 100,000).  The store's index.json is
    now replaced once (counted with strace), whatever the number of names."""
    n = 2000
    lay = ob.Layout(tmp_path / "many")
    m = lay.image([{"a": b"x"}])
    lay.entries = [dict(m, annotations={"org.opencontainers.image.ref.name": f"r{i}",
                                        "io.containerd.image.name": f"many:{i}"}) for i in range(n)]
    lay.write_index()
    store = tmp_path / "store"
    assert index_replacements(store, "load", "-i", lay.root) == 1
    names = cli("images", "--format", "{{.Repository}}:{{.Tag}}", root=store).stdout.split()
    assert sorted(names) == sorted(f"many:{i}" for i in range(n))
    assert cli("unpack", "many:1234", tmp_path / "out", root=store).returncode == 0
    assert (tmp_path / "out" / "a").read_bytes() == b"x"


# --------------------------------------------------------------------------------------------
# an artifact beside the image in an index


@pytest.mark.parametrize("how", ["unpack", "unpack --overlay", "load"])
def test_an_artifact_without_a_platform_beside_the_image_is_skipped(tmp_path, how):
    """image-spec 1.1 puts artifacts (an SBOM with ``artifactType`` and the empty config, whose
    ``subject`` is the image) in the image's index without a platform.  lamina read each
    unplatformed manifest's config for its platform and stopped at the artifact's ("is this an
    artifact?"): the index could not be unpacked at all.  containerd skips it (its empty config
    names no platform); so does lamina's registry path, which only reads descriptor platforms."""
    lay = ob.Layout(tmp_path / "lay")
    image = ob.with_platform(lay.image([{"a": b"x"}]), "linux", "amd64")
    empty = lay.json_blob({}, "application/vnd.oci.empty.v1+json")
    sbom = lay.json_blob({"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST, "artifactType": "application/spdx+json",
                          "config": empty, "layers": [empty], "subject": image}, ob.OCI_MANIFEST,
                         artifactType="application/spdx+json")
    lay.add(lay.index([sbom, image]), "latest", **{"io.containerd.image.name": "with-sbom:1"})
    if how == "load":
        proc = cli("load", "-i", lay.root, root=tmp_path / "store")
        assert proc.returncode == 0, proc.stderr
        proc = cli("unpack", "with-sbom:1", tmp_path / "out", root=tmp_path / "store")
    else:
        proc = cli(*how.split(), "--platform", "linux/amd64", f"oci:{lay.root}", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / ("layers/0/a" if "overlay" in how else "a")).read_bytes() == b"x"
    # named on its own, the artifact is still refused, naming itself
    lay.entries = []
    lay.add(sbom, "sbom")
    line = one_line_error(cli("unpack", f"oci:{lay.root}:sbom", tmp_path / "sbom-out"))
    assert sbom["digest"] in line and "an artifact of type 'application/spdx+json'" in line, line


def test_a_docker_archive_listing_one_image_thousands_of_times_reads_and_stores_it_once(tmp_path):
    """manifest.json entries are read and imported one by one: the same image listed 2000 times
    (under 2000 tags) was read 2000 times (a compressed layer inflated each time to count its
    bytes) and stored with 2000 index updates, each scanning every image stored for one with
    the same config: 400 entries took 10 s, 4000 more than 5 minutes."""
    n = 2000
    layer = ob.tar_bytes({"a": b"x"})
    config = ob.dumps({"architecture": "amd64", "os": "linux",
                       "rootfs": {"type": "layers", "diff_ids": [ob.sha256(layer)]}})
    entry = {"Config": f"{ob.sha256(config)[7:]}.json", "Layers": ["l/layer.tar"]}
    manifest = [dict(entry, RepoTags=[f"many:{i}"]) for i in range(n)]
    archive = tmp_path / "many.tar"
    archive.write_bytes(ob.tar_of({"manifest.json": json.dumps(manifest).encode(),
                                   f"{ob.sha256(config)[7:]}.json": config, "l/layer.tar": ob.gz(layer)}))
    store = tmp_path / "store"
    assert index_replacements(store, "load", "-i", archive) == 1
    names = cli("images", "--format", "{{.Repository}}:{{.Tag}}", root=store).stdout.split()
    assert sorted(names) == sorted(f"many:{i}" for i in range(n))


def test_a_name_two_entries_of_a_docker_archive_give_goes_to_the_last(tmp_path):
    """As docker load, which loads the entries in order: x:1 is the third entry's (image A)."""
    def image(content):
        layer = ob.tar_bytes({"v": content})
        config = ob.dumps({"architecture": "amd64", "os": "linux",
                           "rootfs": {"type": "layers", "diff_ids": [ob.sha256(layer)]}})
        return config, layer
    (ca, la), (cb, lb) = image(b"A"), image(b"B")
    a = {"Config": f"{ob.sha256(ca)[7:]}.json", "Layers": ["a/layer.tar"]}
    b = {"Config": f"{ob.sha256(cb)[7:]}.json", "Layers": ["b/layer.tar"]}
    manifest = [dict(a, RepoTags=["x:1", "x:2"]), dict(b, RepoTags=["x:1", "y:1"]), dict(a, RepoTags=["x:1", "z:1"])]
    archive = tmp_path / "two.tar"
    archive.write_bytes(ob.tar_of({"manifest.json": json.dumps(manifest).encode(), a["Config"]: ca, "a/layer.tar": la,
                                   b["Config"]: cb, "b/layer.tar": lb}))
    store = tmp_path / "store"
    assert cli("load", "-i", archive, root=store).returncode == 0
    rows = cli("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", root=store).stdout.split("\n")
    assert sorted(filter(None, rows)) == sorted([f"x:1 {ob.sha256(ca)}", f"x:2 {ob.sha256(ca)}",
                                                 f"z:1 {ob.sha256(ca)}", f"y:1 {ob.sha256(cb)}"])


# --------------------------------------------------------------------------------------------
# archive headers that say gigabytes (docker-archive, oci-archive, load -i)

import gzip  # noqa: E402
import tarbuild as tb  # noqa: E402

_GZ_ZEROS_1M = gzip.compress(bytes(1 << 20), 1)


def _pax_record(key, value):
    rec = b" %s=%s\n" % (key, value)
    n = len(rec) + 1
    while len(str(n)) + len(rec) != n:
        n += 1
    return str(n).encode() + rec


def _pax(records, name="PaxHeaders/x", type=b"x"):
    body = b"".join(_pax_record(k, v) for k, v in records)
    return tb.header(name, type=type, size=len(body)) + body + bytes(-len(body) % tb.BLOCK)


def _gz_bomb_header(path, type, mib):
    """A gzip (multi-member, as gzip(1) concatenates) archive whose first member is an extended
    header of ``mib`` MiB of zeros: about 1 KiB on disk per MiB it says."""
    with open(path, "wb") as f:
        f.write(gzip.compress(tb.header("PaxHeaders/x", type=type, size=mib << 20), 1))
        for _ in range(mib):
            f.write(_GZ_ZEROS_1M)
        f.write(gzip.compress(bytes(1024), 1))
    return path


def _archive_readers(tmp_path, path):
    """(args, store) for every command that reads an archive's members: unpack of a
    docker-archive and of an oci-archive, load."""
    return [(["unpack", f"docker-archive:{path}", tmp_path / "out"], None),
            (["unpack", f"oci-archive:{path}", tmp_path / "out"], None),
            (["load", "-i", path], tmp_path / "store")]


def _refused_everywhere(tmp_path, path, expect):
    for args, root in _archive_readers(tmp_path, path):
        line = one_line_error(cli(*args, root=root, limit_memory=True))
        assert line == f"lamina: error: {path}: {expect}", line
        assert not (tmp_path / "out").exists()
    assert cli("images", "-q", root=tmp_path / "store").stdout == ""
    fsck = cli("fsck", root=tmp_path / "store")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


@pytest.mark.parametrize("type", [b"x", b"g", b"L", b"K"])
def test_an_archive_header_of_gigabytes_is_refused_before_it_is_read(tmp_path, type):
    """A 2 MiB gzip archive whose first PAX (or GNU long-name) header says 2 GiB: tarfile read
    it into memory whole to index the archive (2 GiB of RSS; under 1 GiB of address space a
    MemoryError).  The extractor's own limit for one header (Limits.max_header) applies."""
    path = _gz_bomb_header(tmp_path / "bomb.tar.gz", type, 2048)
    _refused_everywhere(tmp_path, path, f"an extended header of {2048 << 20} bytes at offset 0 "
                                        f"(limit {1 << 20}): not a docker or OCI archive")


def test_archive_headers_of_a_mib_each_add_up_to_a_limit(tmp_path):
    """Each header under the limit, but 1,500 of them: every member's PAX records were kept
    (tarfile's TarInfo and its pax_headers, once in tarfile's list and once in lamina's index),
    1.5 GiB for a 2 MiB file."""
    comment = _pax_record(b"comment", b"a" * ((1 << 20) - 32))
    comment_gz = gzip.compress(comment + bytes(-len(comment) % tb.BLOCK), 1)
    path = tmp_path / "many.tar.gz"
    with open(path, "wb") as f:
        for i in range(1500):
            f.write(gzip.compress(tb.header(f"PaxHeaders/{i}", type=b"x", size=len(comment)), 1))
            f.write(comment_gz)
            f.write(gzip.compress(tb.header(f"m{i}", size=0), 1))
        f.write(gzip.compress(bytes(1024), 1))
    for args, root in _archive_readers(tmp_path, path):
        line = one_line_error(cli(*args, root=root, limit_memory=True))
        assert line.startswith(f"lamina: error: {path}: more than {64 << 20} bytes of member headers and names"
                               " (at member m"), line
    assert cli("images", "-q", root=tmp_path / "store").stdout == ""


@pytest.mark.parametrize("sparse, expect", [
    # PAX 0.1: a map tarfile reads with int()
    ([(b"GNU.sparse.map", b"a,b"), (b"GNU.sparse.numblocks", b"1")],
     "not a readable tar archive: invalid literal for int() with base 10: 'a'"),
    # PAX 1.0: the map is read from the data, number by number, as long as its count says
    ([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.name", b"x")],
     "member x: a sparse file with a PAX 1.0 map: not a docker or OCI archive"),
])
def test_a_malformed_sparse_map_in_an_archive_is_a_clear_error(tmp_path, sparse, expect):
    """tarfile raised ValueError for these, which lamina let through as a traceback."""
    path = tmp_path / "sparse.tar"
    path.write_bytes(_pax(sparse) + tb.header("x", size=512) + b"99999999\n1\n".ljust(512, b"\0") + bytes(1024))
    _refused_everywhere(tmp_path, path, expect)


def test_a_gnu_sparse_map_continued_for_gigabytes_is_refused(tmp_path):
    """A GNU 'S' member whose map goes on in extension blocks: tarfile kept reading them (21
    regions each) into a list, a few GiB of Python tuples for a few MiB of gzip."""
    hdr = bytearray(tb.header("x", type=b"S", size=0, fmt="gnu"))
    hdr[386:398] = b"%011o\0" % 0    # sp[0].offset
    hdr[398:410] = b"%011o\0" % 512  # sp[0].numbytes
    hdr[482] = 1                      # isextended
    hdr[148:156] = b"        "
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    ext = bytearray(b"".join(b"%011o\0%011o\0" % (i * 1024, 512) for i in range(1, 22)).ljust(512, b"\0"))
    ext[504] = 1
    block_gz = gzip.compress(bytes(ext) * 2048, 1)   # 1 MiB of extension blocks
    path = tmp_path / "sparse.tar.gz"
    with open(path, "wb") as f:
        f.write(gzip.compress(bytes(hdr), 1))
        for _ in range(2048):
            f.write(block_gz)
        f.write(gzip.compress(bytes(1024), 1))
    _refused_everywhere(tmp_path, path, "member x: a sparse file whose map continues past its header: "
                                        "not a docker or OCI archive")


def test_a_legacy_config_is_read_from_its_member_not_searched_for(tmp_path):
    """``Config: "config.json"`` (not named by its digest) after many other .json members of a
    gzipped docker-archive: the config was looked for among every .json member, each read
    inflating the archive from its start, quadratic (6,000 members, 150 KiB: 23 s; 100 times
    as many, days).  manifest.json names the member: it is read once, as resolve hashed it.
    Counted in archive opens (an audit hook in the child), not in time."""
    layer = ob.tar_bytes({"a": b"x"})
    config = ob.dumps({"architecture": "amd64", "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": [ob.sha256(layer)]}})
    members = {f"a{i:04d}.json": b"{}" for i in range(300)}
    members.update({"config.json": config, "l/layer.tar": layer, "manifest.json": json.dumps(
        [{"Config": "config.json", "RepoTags": ["ok:1"], "Layers": ["l/layer.tar"]}]).encode()})
    path = tmp_path / "a.tar.gz"
    path.write_bytes(ob.gz(ob.tar_of(members)))
    code = ("import sys, runpy\n"
            "opens, path = [0], sys.argv[1]\n"
            "def hook(event, args):\n"
            "    if event == 'open' and isinstance(args[0], str) and args[0] == path: opens[0] += 1\n"
            "sys.addaudithook(hook)\n"
            "sys.argv = ['lamina', '--root', sys.argv[2], 'load', '-i', sys.argv[1]]\n"
            "try:\n"
            "    runpy.run_module('lamina', run_name='__main__')\n"
            "finally:\n"
            "    print('opens', opens[0], file=sys.stderr)\n")
    store = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(store)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    opens = int(proc.stderr.split("opens")[-1])
    assert opens <= 10, proc.stderr
    assert cli("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", "--no-trunc", root=store).stdout \
        == f"ok:1 {ob.sha256(config)}\n"


def _read_bytes_of_cli(args):
    """(CompletedProcess, bytes the child read through syscalls: /proc/self/io rchar)."""
    code = ("import sys, runpy\n"
            "sys.argv = ['lamina'] + sys.argv[1:]\n"
            "try:\n"
            "    runpy.run_module('lamina', run_name='__main__')\n"
            "finally:\n"
            "    with open('/proc/self/io') as f:\n"
            "        print('rchar', next(l.split()[1] for l in f if l.startswith('rchar:')), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=600)
    return proc, int(proc.stderr.split("rchar")[-1])


@pytest.mark.parametrize("how", ["unpack", "unpack-overlay", "load"])
def test_layers_listed_many_times_at_the_end_of_a_gzipped_archive_inflate_it_about_once(tmp_path, how):
    """manifest.json lists two layers at the end of a gzipped docker-archive 41 times (A B A B …
    A): each read of a member inflated the archive from its start, 41 times the archive or
    more (a few MiB of gzip saying a GiB made that hours).  Reads start at checkpoints now; the
    duplicates are still extracted each in its place (x is there: the last A wrote it again).
    Counted in bytes the child read (rchar), not in time."""
    add, remove = ob.tar_bytes({"x": b"hello"}), ob.tar_bytes({".wh.x": b""})
    layers = [add, remove] * 20 + [add]
    config = ob.dumps({"architecture": "amd64", "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": [ob.sha256(t) for t in layers]}})
    members = {f"{ob.sha256(config)[7:]}.json": config, "filler": os.urandom(8 << 20), "a/layer.tar": add,
               "b/layer.tar": remove, "manifest.json": json.dumps(
                   [{"Config": f"{ob.sha256(config)[7:]}.json", "RepoTags": ["dup:1"],
                     "Layers": ["a/layer.tar", "b/layer.tar"] * 20 + ["a/layer.tar"]}]).encode()}
    path = tmp_path / "a.tar.gz"
    path.write_bytes(ob.gz(ob.tar_of(members)))
    store, out = tmp_path / "store", tmp_path / "out"
    args = {"unpack": ["unpack", f"docker-archive:{path}", out],
            "unpack-overlay": ["unpack", "--overlay", f"docker-archive:{path}", out],
            "load": ["--root", store, "load", "-i", path]}[how]
    proc, read = _read_bytes_of_cli(args)
    assert proc.returncode == 0, proc.stderr
    # index pass, the reads (the overlay's parallel workers may each start from the top before
    # there is a checkpoint), the interpreter's own files: 2.8 to 4.3 archives; 43 to 80 before
    assert read < 8 * path.stat().st_size, (read, path.stat().st_size)
    if how == "load":
        proc = cli("unpack", "dup:1", out, root=store)
        assert proc.returncode == 0, proc.stderr
    if how == "unpack-overlay":
        assert len(os.listdir(out / "layers")) == 41
        assert (out / "layers" / "40" / "x").read_bytes() == b"hello"
    else:
        assert sorted(os.listdir(out)) == ["x"]


def _legacy_members(tag, content):
    """({member: bytes} of a one-layer legacy image whose file ``who`` holds ``content``, its manifest.json)."""
    layer = ob.tar_bytes({"who": content})
    config = ob.dumps({"architecture": "amd64", "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": [ob.sha256(layer)]}})
    h = ob.sha256(config)[7:]
    manifest = json.dumps([{"Config": f"{h}.json", "RepoTags": [tag], "Layers": [f"{h[:8]}/layer.tar"]}]).encode()
    return {f"{h}.json": config, f"{h[:8]}/layer.tar": layer}, manifest


def _raw_members(members):
    return b"".join(tb.header(n, size=len(d)) + d + bytes(-len(d) % tb.BLOCK) for n, d in members.items())


def test_a_global_header_in_an_archive_renames_no_member(tmp_path):
    """A PAX global header ``path=manifest.json`` between manifest.json (image A) and a member
    holding image B's manifest: tarfile applied it to every later member, so lamina read B's
    manifest where docker and skopeo (Go's archive/tar returns the header as an entry) read
    A's, and its own layer extractor ignores such headers (CONFORMANCE.md)."""
    skopeo, umoci = require_tool("skopeo"), require_tool("umoci")
    a, manifest_a = _legacy_members("seen:1", b"A")
    b, manifest_b = _legacy_members("seen:1", b"B")
    path = tmp_path / "g.tar"
    path.write_bytes(_raw_members({**a, **b, "manifest.json": manifest_a})
                     + _pax([(b"path", b"manifest.json")], name="pax_global_header", type=b"g")
                     + _raw_members({"notes.json": manifest_b}) + bytes(1024))
    subprocess.run([skopeo, "copy", "-q", f"docker-archive:{path}", f"oci:{tmp_path / 'sk'}:x"], check=True)
    subprocess.run([umoci, "unpack", "--image", f"{tmp_path / 'sk'}:x", tmp_path / "bundle"], check=True,
                   capture_output=True)
    assert (tmp_path / "bundle" / "rootfs" / "who").read_bytes() == b"A"
    proc = cli("unpack", f"docker-archive:{path}", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "who").read_bytes() == b"A"
    store = tmp_path / "store"
    assert cli("load", "-i", path, root=store).returncode == 0
    proc = cli("unpack", "seen:1", tmp_path / "out2", root=store)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out2" / "who").read_bytes() == b"A"


def _gnu_longname(name):
    body = name + b"\0"
    return tb.header("././@LongLink", type=b"L", size=len(body)) + body + bytes(-len(body) % tb.BLOCK)


@pytest.mark.parametrize("how", ["gnu-sparse-name", "pax-path-before-a-gnu-long-name", "two-pax-headers",
                                 "two-gnu-long-names"])
def test_a_member_is_named_as_go_names_it_or_the_archive_is_refused(tmp_path, how):
    """Python's tarfile names a member by a PAX ``GNU.sparse.name`` on any member (Go: on a sparse
    one only), by a PAX ``path`` over a GNU long name that follows it (Go: the long name), and by
    the first of two PAX headers or GNU long names in a row (Go, GNU tar, bsdtar and the layer
    extractor: the last): image A's manifest.json renamed away and image B's ``notes.json``
    renamed manifest.json, lamina loaded B where docker and skopeo load A.  Two headers in a row
    are now read as every other reader reads them; a name two kinds of record give differently
    is refused, naming the member, as the layer extractor refuses it."""
    skopeo, umoci = require_tool("skopeo"), require_tool("umoci")
    a, manifest_a = _legacy_members("seen:1", b"A")
    b, manifest_b = _legacy_members("seen:1", b"B")

    def renamed(go_name, tarfile_name, data):
        if how == "gnu-sparse-name":
            return _pax([(b"GNU.sparse.name", tarfile_name)]) + _raw_members({go_name.decode(): data})
        if how == "two-pax-headers":
            return _pax([(b"path", tarfile_name)]) + _pax([(b"path", go_name)]) + _raw_members({"short": data})
        if how == "two-gnu-long-names":
            return _gnu_longname(tarfile_name) + _gnu_longname(go_name) + _raw_members({"short": data})
        return _pax([(b"path", tarfile_name)]) + _gnu_longname(go_name) + _raw_members({"short": data})
    path = tmp_path / "renamed.tar"
    path.write_bytes(_raw_members({**a, **b})
                     + renamed(b"manifest.json", b"hidden.json", manifest_a)
                     + renamed(b"notes.json", b"manifest.json", manifest_b) + bytes(1024))
    subprocess.run([skopeo, "copy", "-q", f"docker-archive:{path}", f"oci:{tmp_path / 'sk'}:x"], check=True)
    subprocess.run([umoci, "unpack", "--image", f"{tmp_path / 'sk'}:x", tmp_path / "bundle"], check=True,
                   capture_output=True)
    assert (tmp_path / "bundle" / "rootfs" / "who").read_bytes() == b"A"
    if how.startswith("two-"):
        proc = cli("unpack", f"docker-archive:{path}", tmp_path / "out")
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "out" / "who").read_bytes() == b"A"
        return
    for proc in (cli("load", "-i", path, root=tmp_path / "store"), cli("unpack", f"docker-archive:{path}", tmp_path / "out")):
        assert proc.returncode == 1, proc.stderr
        assert f"{path}: not a readable tar archive: member " in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize("record", [(b"path", b"notes.json\0x"), (b"linkpath", b"who\0"), (b"uname", b"ro\0ot"),
                                    (b"SCHILY.xattr.user.a\0b", b"v")],
                         ids=["path", "linkpath", "uname", "a-key"])
@pytest.mark.parametrize("type", [b"x", b"g"])
def test_a_pax_record_go_refuses_for_its_nul_makes_the_archive_unreadable(tmp_path, record, type):
    """Go's archive/tar (docker load, skopeo) refuses the whole archive at a PAX path, linkpath,
    uname or gname holding a NUL, or a key holding one; tarfile kept the NUL in the name (a
    member no lookup finds) and lamina loaded an archive they refuse.  As the layer
    extractor refuses such a name, the archive is refused, naming the record.  Go parses a
    global header's records alike, where lamina, which applies none of them, skipped them."""
    skopeo = require_tool("skopeo")
    a, manifest = _legacy_members("nul:1", b"A")
    path = tmp_path / "nul.tar"
    path.write_bytes(_raw_members({**a, "manifest.json": manifest}) + _pax([record], type=type)
                     + _raw_members({"notes.json": b"{}"}) + bytes(1024))
    sk = subprocess.run([skopeo, "copy", "-q", f"docker-archive:{path}", f"oci:{tmp_path / 'sk'}:x"],
                        capture_output=True, text=True)
    assert sk.returncode != 0 and "invalid tar header" in sk.stderr, sk.stderr
    for proc in (cli("load", "-i", path, root=tmp_path / "store"), cli("unpack", f"docker-archive:{path}", tmp_path / "out")):
        assert proc.returncode == 1, proc.stderr
        assert f"{path}: not a readable tar archive" in proc.stderr and "NUL" in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("records", [b"abc", b"99 path=who\n", b"10 path=who\n", b"6 =ab\n", b"12 path=who\n\0\0"],
                         ids=["no-length", "length-past-end", "no-newline", "no-key", "trailing-nuls"])
def test_a_global_header_go_refuses_for_a_malformed_record_makes_the_archive_unreadable(tmp_path, records):
    """A PAX global header is applied to no member, but Go's archive/tar (docker load, skopeo)
    parses its records and refuses the archive at one it cannot read; lamina skipped them."""
    skopeo = require_tool("skopeo")
    a, manifest = _legacy_members("bad:1", b"A")
    path = tmp_path / "bad.tar"
    path.write_bytes(_raw_members({**a, "manifest.json": manifest})
                     + tb.header("pax_global_header", type=b"g", size=len(records)) + records
                     + bytes(-len(records) % tb.BLOCK) + _raw_members({"notes.json": b"{}"}) + bytes(1024))
    sk = subprocess.run([skopeo, "copy", "-q", f"docker-archive:{path}", f"oci:{tmp_path / 'sk'}:x"],
                        capture_output=True, text=True)
    assert sk.returncode != 0 and "invalid tar header" in sk.stderr, sk.stderr
    for proc in (cli("load", "-i", path, root=tmp_path / "store"), cli("unpack", f"docker-archive:{path}", tmp_path / "out")):
        assert proc.returncode == 1, proc.stderr
        assert f"{path}: not a readable tar archive: member 'pax_global_header': malformed PAX record" in proc.stderr, \
            proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("type", [b"x", b"L"])
def test_a_long_run_of_extended_headers_in_an_archive_is_a_clear_error(tmp_path, type):
    """5,000 PAX (or GNU long-name) headers in a row before one member: tarfile recursed once
    per header, a RecursionError traceback."""
    body = b"ab".ljust(tb.BLOCK, b"\0")
    run = (_pax([(b"comment", b"x")]) if type == b"x" else tb.header("././@LongLink", type=b"L", size=2) + body)
    path = tmp_path / "run.tar"
    path.write_bytes(run * 5000 + _raw_members({"manifest.json": b"[]"}) + bytes(1024))
    _refused_everywhere(tmp_path, path, f"more than 32 extended headers for one member at offset {32 * len(run)}: "
                                        "not a docker or OCI archive")


def test_an_archive_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    """``docker-archive:FIFO``, ``oci-archive:FIFO``, ``load -i FIFO``: the archive was opened
    (blocking) to read its magic bytes, waiting forever for a writer; and an archive is read at
    random, so a pipe could never have worked (``lamina load < FILE`` spools one)."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    for args, root in _archive_readers(tmp_path, path):
        line = one_line_error(cli(*args, root=root, timeout=30))
        assert line == f"lamina: error: {path} is not a regular file (a FIFO)", line
    assert not (tmp_path / "out").exists()


def test_an_image_of_many_layers_reads_each_snapshots_metadata_a_few_times(tmp_path):
    """A layout of one 1 KiB blob listed as 150 layers: extracting layer k walked the chain
    below it reading k meta.json files, the square of the layer count in all (11,000 reads
    here; 1,000 layers, 500,000 reads: 44 s of a 60 KiB layout's load, 2,000 layers 105 s).
    A chainID fixes its parent's, so the walk reads each snapshot's once.  Counted in opens
    of meta.json (an audit hook in the child), not in time; the tree is still the image's."""
    n = 150
    lay = ob.Layout(tmp_path / "lay")
    raw = ob.tar_bytes({"x": b"hi"})
    blob = ob.gz(raw)
    lay.blob(blob)
    cdesc = lay.json_blob({"architecture": "amd64", "os": "linux", "config": {},
                           "rootfs": {"type": "layers", "diff_ids": [ob.sha256(raw)] * n}}, ob.OCI_CONFIG)
    lay.add(lay.json_blob({"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST, "config": cdesc,
                           "layers": [ob.desc(ob.OCI_LAYER_GZIP, blob)] * n}, ob.OCI_MANIFEST), "latest",
            **{"io.containerd.image.name": "docker.io/library/many:1"})
    store = tmp_path / "store"
    code = ("import sys, runpy\n"
            "opens = [0]\n"
            "def hook(event, args):\n"
            "    if event == 'open' and isinstance(args[0], str) and args[0].endswith('/meta.json'): opens[0] += 1\n"
            "sys.addaudithook(hook)\n"
            "sys.argv = ['lamina', '--root', sys.argv[2], 'load', '-q', '-i', sys.argv[1]]\n"
            "try:\n"
            "    runpy.run_module('lamina', run_name='__main__')\n"
            "finally:\n"
            "    print('opens', opens[0], file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(lay.root), str(store)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    opens = int(proc.stderr.split("opens")[-1])
    assert opens <= 20 * n, proc.stderr   # 8 a layer; 81 before
    proc = cli("unpack", "many:1", tmp_path / "out", root=store)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(tmp_path / "out") == ["x"]
    assert len(os.listdir(store / "snapshots")) == n
    fsck = cli("fsck", root=store)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


_BIG = "9" * 5000
_PASSWD = (f"root:x:0:0::/root:/bin/sh\nbig:x:{_BIG}:0::/:/bin/sh\n"
           "arab:x:\u0661\u0660\u0660\u0660:0::/:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n").encode()


@pytest.mark.parametrize("user, expect", [
    ("root", {"uid": 0, "gid": 0}),
    ("user", {"uid": 1000, "gid": 1000}),
    ("1000:7", {"uid": 1000, "gid": 7}),
    ("2147483647", {"uid": 2147483647, "gid": 0}),
    ("2147483648", "uids and gids must be in range 0-2147483647"),
    (_BIG, "uids and gids must be in range 0-2147483647"),
    ("0:" + _BIG, "uids and gids must be in range 0-2147483647"),
    ("\u0661\u0660\u0660\u0660", "no user '\u0661\u0660\u0660\u0660' in the image's /etc/passwd"),
    ("big", "the image's /etc/passwd gives 'big' the uid"),
    ("arab", "the image's /etc/passwd gives 'arab' the uid '\u0661\u0660\u0660\u0660', not a number"),
])
def test_a_bundles_user_reads_ids_as_go_does(tmp_path, user, expect):
    """``unpack --bundle``: a uid of 5,000 digits anywhere in the image's /etc/passwd (or in
    the config's User) made int() raise ValueError, a traceback, whatever the User; digits of
    other scripts were numbers (User "١٠٠٠" ran as uid 1000, where moby/sys/user's Atoi finds no
    such number), and uids past 2^31-1 went into config.json.  Now ASCII digits in moby's range."""
    lay = ob.Layout(tmp_path / "lay")
    files = {"etc/": None, "etc/passwd": _PASSWD, "etc/group": b"root:x:0:\n"}
    lay.add(lay.image([files], config_extra={"config": {"User": user, "Cmd": ["/bin/sh"]}}), "latest",
            **{"io.containerd.image.name": "docker.io/library/who:1"})
    store = tmp_path / "store"
    assert cli("load", "-i", lay.root, root=store).returncode == 0
    proc = cli("unpack", "--bundle", "who:1", tmp_path / "b", root=store)
    if isinstance(expect, dict):
        assert proc.returncode == 0, proc.stderr
        with open(tmp_path / "b" / "config.json") as f:
            assert json.load(f)["process"]["user"] == expect
    else:
        line = one_line_error(proc)
        assert line.startswith(f"lamina: error: image config User {user[:80]!r}: ") and expect in line, line
        assert not (tmp_path / "b").exists()
    fsck = cli("fsck", root=store)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_a_bundles_passwd_behind_a_name_too_long_is_named(tmp_path):
    """``unpack --bundle`` reads the image's /etc/passwd through its symlinks, inside the rootfs;
    an etc symlink whose target has a 300-byte name failed with the system's 'File name too
    long' naming only those 300 bytes, not what lamina was reading, nor why."""
    from everypath import write_image
    from tarbuild import Tar
    lay = write_image(tmp_path / "lay", [Tar().pax([("linkpath", "A" * 300 + "/x")]).symlink("etc", "p").bytes()])
    store = tmp_path / "store"
    assert cli("copy", f"oci:{lay}:img", "long:1", root=store).returncode == 0
    line = one_line_error(cli("unpack", "--bundle", "long:1", tmp_path / "b", root=store))
    assert line == ("lamina: error: cannot read the image's /etc/passwd for its config's User: "
                    f"File name too long ('{'A' * 300}')"), line
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------------------------
# an image of more layers than Limits.max_layers


def test_an_image_of_more_layers_than_the_cap_is_refused_before_any_layer_is_read(reg, registry_env,  # noqa: F811
                                                                                     tmp_path):
    """501 layers (one 20-byte blob listed over and over): lamina loaded thousands of layers in
    time worse than linear (2,000: 42 s) and stacked more lowers than overlayfs takes (500).
    Refused from the manifest (or manifest.json) alone, on every source: the layer blob and
    the config are absent from the layout and the archives, and the registry proxy must see
    no blob request, so reading any of them would fail otherwise or show."""
    from lamina.limits import DEFAULT_LIMITS
    n = DEFAULT_LIMITS.max_layers + 1
    raw = ob.tar_bytes({"x": b"hi"})
    blob = ob.gz(raw)
    config = ob.dumps({"architecture": "amd64", "os": "linux",
                       "rootfs": {"type": "layers", "diff_ids": [ob.sha256(raw)] * n}})
    manifest = ob.dumps({"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST, "config": ob.desc(ob.OCI_CONFIG, config),
                         "layers": [ob.desc(ob.OCI_LAYER_GZIP, blob)] * n})
    expect = f"{n} layers, more than the {n - 1} an image may have"

    lay = ob.Layout(tmp_path / "lay")
    lay.blob(manifest)
    lay.add(ob.desc(ob.OCI_MANIFEST, manifest), "latest",
            **{"io.containerd.image.name": "docker.io/library/deep:1"})
    assert sorted(os.listdir(tmp_path / "lay" / "blobs" / "sha256")) == [ob.sha256(manifest).split(":")[1]]
    oci_archive = tmp_path / "oci.tar"
    subprocess.run(["tar", "-C", lay.root, "-cf", oci_archive, "."], check=True)
    docker_archive = tmp_path / "docker.tar"
    with open(docker_archive, "wb") as f:
        f.write(ob.tar_of({"manifest.json": json.dumps([{"Config": "c.json", "RepoTags": ["deep:1"],
                                                          "Layers": ["l/layer.tar"] * n}]).encode()}))

    _push_blob(reg.host, "deep", blob)
    _push_blob(reg.host, "deep", config)
    status, body = _push_manifest(reg.host, "deep", "t", manifest, ob.OCI_MANIFEST)
    assert status == 201, body
    proxy = FaultProxy(reg.host)

    runs = [(["unpack", f"oci:{lay.root}", tmp_path / "out"], None, "manifest"),
            (["unpack", "--overlay", f"oci:{lay.root}", tmp_path / "out"], None, "manifest"),
            (["load", "-i", lay.root], tmp_path / "store", "manifest"),
            (["unpack", f"oci-archive:{oci_archive}", tmp_path / "out"], None, "manifest"),
            (["load", "-i", oci_archive], tmp_path / "store", "manifest"),
            (["unpack", f"docker-archive:{docker_archive}", tmp_path / "out"], None, "image deep:1"),
            (["load", "-i", docker_archive], tmp_path / "store", "image deep:1"),
            (["pull", f"{proxy.host}/deep:t"], tmp_path / "store", "manifest"),
            (["unpack", f"docker://{proxy.host}/deep:t", tmp_path / "out"], None, "manifest")]
    for args, root, names in runs:
        line = one_line_error(cli(*args, root=root))
        assert expect in line and names in line, (args, line)
        assert not (tmp_path / "out").exists()
    assert proxy.requests_for("/blobs/") == [], proxy.seen
    assert cli("images", "-q", root=tmp_path / "store").stdout == ""
    fsck = cli("fsck", root=tmp_path / "store")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_a_created_time_before_year_1000_is_written_with_four_digits(tmp_path):
    """Go writes a year with 4 digits at least (0500-01-02T03:04:05Z); glibc's %Y wrote 500, so
    inspect, history and images gave another time string than docker's for the same image."""
    lay = ob.Layout(tmp_path / "lay")
    lay.add(lay.image([{"a": b"x"}], config_extra={"created": "0500-01-02T03:04:05Z", "history": [
        {"created": "0500-01-02T03:04:05Z", "created_by": "x"}]}), "latest",
        **{"io.containerd.image.name": "old:1"})
    store = tmp_path / "store"
    assert cli("load", "-i", lay.root, root=store).returncode == 0
    env = dict(os.environ, TZ="UTC")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "lamina", "--root", store, *args], capture_output=True,
                              text=True, env=env).stdout
    assert run("inspect", "--format", "{{.Created}}", "old:1") == "0500-01-02T03:04:05Z\n"
    assert run("images", "--format", "{{.CreatedAt}}") == "0500-01-02 03:04:05 +0000 UTC\n"
    assert run("history", "--human=false", "--format", "{{.CreatedAt}}", "old:1") == "0500-01-02T03:04:05Z\n"


@pytest.mark.parametrize("blob", ["other content", "refused entry"])
def test_reloading_a_legacy_archive_names_a_refused_layer_by_its_place(tmp_path, blob):
    """A classic ``docker save`` archive loaded again, its image already stored but the image's
    snapshots gone: load reuses the stored image (as docker load does) and extracts its layers
    again.  A layer refused then (its stored blob another tar: the diffID differs, or an entry
    under a file) was named by its digest alone ("layer sha256:…: …"), where a first load and
    every other path say "ARCHIVE: image NAME layer 2 of 2 (sha256:…): …"."""
    import shutil
    from lamina.errors import LaminaError
    from lamina.store import Store
    from lamina.transports import load
    archive = str(tmp_path / "a.tar")
    ob.legacy_docker_save(archive, [{"a": b"A"}, {"b": b"B"}])
    store = Store(tmp_path / "store")
    image = load(archive, store=store)[0].image
    for chain in image.chain_ids:
        shutil.rmtree(store.paths.snapshot(chain))
    digest = image.layers[1].digest
    path = store.paths.blob(digest)
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(ob.tar_bytes({"c": b"C"}) if blob == "other content" else
                ob.tar_of({"f": b"x", "f/g": b"y"}))
    store.close()
    store = Store(tmp_path / "store")
    with pytest.raises(LaminaError) as e:
        load(archive, store=store)
    # the words a first load's refusal of the layer has (a diffID's error keeps its comma)
    want = (f"{archive}: image example/app:1.0 layer 2 of 2, {digest}: diffID (uncompressed tar): digest mismatch"
            if blob == "other content" else
            f"{archive}: image example/app:1.0 layer 2 of 2 ({digest}): entry 'f/g': a component of 'f' is not a directory")
    assert str(e.value).startswith(want), str(e.value)
