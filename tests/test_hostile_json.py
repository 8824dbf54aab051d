"""Hostile images, round 2: JSON that Go's encoding/json (containerd, docker, skopeo, umoci) reads
otherwise than Python's json, and archives that hold two readings of one image.

Go fills a struct field from any key equal to its name up to case (``"user"`` is ``User``, the
last of ``"Layers"`` and ``"layers"`` wins), and reads a lone surrogate escape (``"\\ud800"``) as
U+FFFD where Python keeps it.  Each case goes through every way the document at fault enters:
``unpack`` of a layout (dir and overlay), of an oci-archive, ``load``, ``copy``, and for registry
documents ``pull`` and ``unpack docker://`` (tests/registryfixture.py: a real docker-registry on
loopback).  skopeo shows Go's reading where it reads the document.
"""
from __future__ import annotations

import json
import os
import subprocess
import tarfile

import pytest

import ocibuild as ob
from conftest import require_tool
from registryfixture import FaultProxy, reg, registry_env  # noqa: F401
from storekit import fingerprint, lamina
from test_documents import _push_blob, _push_manifest
from test_hostile_inputs import _unchanged
from test_store_badinput import fails, root  # noqa: F401  (the store fixture holding keep:1)


def _tar_of_dir(src, path):
    with tarfile.open(path, "w") as tar:
        for name in sorted(os.listdir(src)):
            tar.add(os.path.join(src, name), name)
    return path


def _push_layout(host, repo, lay, top):
    """Every blob of the layout into the registry as it is, the manifests under ``top`` by digest,
    ``top`` as tag 1."""
    blobs = os.path.join(lay.root, "blobs", "sha256")
    for name in sorted(os.listdir(blobs)):
        with open(os.path.join(blobs, name), "rb") as f:
            _push_blob(host, repo, f.read())
    if top["mediaType"] == ob.OCI_INDEX:
        for child in lay.read_json(top["digest"])["manifests"]:
            with open(lay.path(child["digest"]), "rb") as f:
                status, body = _push_manifest(host, repo, child["digest"], f.read(), child["mediaType"])
            assert status == 201, body
    with open(lay.path(top["digest"]), "rb") as f:
        status, body = _push_manifest(host, repo, "1", f.read(), top["mediaType"])
    assert status == 201, body


def _refused_on_every_way_in(root, tmp_path, lay, match, registry=None):  # noqa: F811
    """``lay`` (one image, named latest) refused with an error holding ``match`` by each way an
    image enters lamina, nothing written, the store as it was."""
    archive = _tar_of_dir(lay.root, tmp_path / "image.tar")
    before = fingerprint(root)
    ways = [("unpack", f"oci:{lay.root}", tmp_path / "out"),
            ("unpack", "--overlay", f"oci:{lay.root}", tmp_path / "out"),
            ("unpack", f"oci-archive:{archive}", tmp_path / "out"),
            ("load", "-i", lay.root),
            ("load", "-i", archive),
            ("copy", f"oci:{lay.root}:latest", "bad:1"),
            ("copy", f"oci:{lay.root}:latest", f"oci:{tmp_path / 'copy'}:bad")]
    if registry is not None:
        ways += [("pull", registry), ("unpack", f"docker://{registry}", tmp_path / "out")]
    for args in ways:
        fails(root, *args, match=match)
        assert not (tmp_path / "out").exists() and not (tmp_path / "copy" / "index.json").exists(), args
    _unchanged(root, before)


def _skopeo_config(ref):
    proc = subprocess.run(["skopeo", "inspect", "--config", ref], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------------------------
# keys Go takes for a field lamina reads


CONFIG_KEYS = [
    # the image's user: lamina's bundle ran as root, docker (and skopeo's reading) as nobody
    ({"config": {"user": "nobody"}}, "config: key 'user' is not 'User'",
     lambda c: c["config"]["User"] == "nobody"),
    # (ob.dumps sorts the keys: "entrypoint" comes last, and Go runs it)
    ({"config": {"Entrypoint": ["/bin/true"], "entrypoint": ["/bin/sh"]}}, "config: key 'entrypoint' is not "
     "'Entrypoint'", lambda c: c["config"]["Entrypoint"] == ["/bin/sh"]),
    ({"Config": {"Env": ["A=1"]}}, "key 'Config' is not 'config'", lambda c: c["config"]["Env"] == ["A=1"]),
    ({"History": [{"created_by": "x"}]}, "key 'History' is not 'history'",
     lambda c: c["history"] == [{"created_by": "x"}]),
    ({"history": [{"Empty_Layer": True}]}, "history[0]: key 'Empty_Layer' is not 'empty_layer'",
     lambda c: c["history"] == [{"empty_layer": True}]),
    ({"OS.Features": ["x"]}, "key 'OS.Features' is not 'os.features'", lambda c: c["os.features"] == ["x"]),
    # U+017F LATIN SMALL LETTER LONG S folds to s in Go's (and Python's) case folding
    ({"config": {"U\u017fer": "nobody"}}, "is not 'User'", lambda c: c["config"]["User"] == "nobody"),
]


@pytest.mark.parametrize("extra, message, go_reads", CONFIG_KEYS,
                         ids=["user", "entrypoint-twice", "Config", "History", "Empty_Layer", "OS.Features",
                              "long-s"])
def test_config_keys_go_takes_for_a_field_are_refused(root, tmp_path, reg, registry_env, extra,  # noqa: F811
                                                      message, go_reads):
    """The config's fields are matched up to case by Go: ``"user": "nobody"`` is the image's
    User to docker and containerd (skopeo inspect --config shows it), and was no User (root) to
    lamina's bundle; of ``Entrypoint`` and ``entrypoint`` Go runs the last.  Refused, naming
    the config and the key, on every way in."""
    require_tool("skopeo")
    lay = ob.Layout(tmp_path / "lay")
    m = lay.image([{"a": b"x"}], config_extra=extra)
    lay.add(m, "latest", **{"io.containerd.image.name": "bad:1"})
    assert go_reads(_skopeo_config(f"oci:{lay.root}:latest"))
    config = lay.read_json(m["digest"])["config"]["digest"]
    _push_layout(reg.host, "keys/config", lay, m)
    _refused_on_every_way_in(root, tmp_path, lay, f"config {config}", registry=f"{reg.host}/keys/config:1")
    for args in (("load", "-i", lay.root), ("pull", f"{reg.host}/keys/config:1")):
        fails(root, *args, match=message)


@pytest.mark.parametrize("health, key, field", [
    ({"Test": ["CMD", "true"], "test": ["CMD", "false"]}, "test", "Test"),   # Go runs the last: false
    ({"test": ["CMD", "false"], "Retries": 3}, "test", "Test"),
    ({"Test": ["CMD", "true"], "RETRIES": 3}, "RETRIES", "Retries"),
], ids=["Test-twice", "test", "RETRIES"])
def test_healthcheck_keys_go_takes_for_a_field_are_refused(root, tmp_path, health, key, field):  # noqa: F811
    """docker reads the config's Healthcheck into its HealthConfig with Go's encoding/json,
    which matches keys up to case (of two that fold alike, the last): lamina's inspect showed
    ``Test`` ["CMD", "true"] and no retries where docker runs ``test`` and retries 3.
    skopeo's config type has no Healthcheck, so Go's rule is the oracle here, as for the keys
    above.  Refused like the config's other keys, naming the config and the key."""
    lay = ob.Layout(tmp_path / "lay")
    m = lay.image([{"a": b"x"}], config_extra={"config": {"Healthcheck": health}})
    lay.add(m, "latest", **{"io.containerd.image.name": "bad:1"})
    config = lay.read_json(m["digest"])["config"]["digest"]
    _refused_on_every_way_in(root, tmp_path, lay, f"config {config} config Healthcheck: key {key!r} is not "
                             f"{field!r}")


def test_a_platform_key_go_takes_for_a_field_is_refused(root, tmp_path, reg, registry_env):  # noqa: F811
    """An index entry's platform ``{"architecture": "amd64", "Architecture": "arm64"}`` is arm64
    to containerd (the last key wins) and was amd64 to lamina: the arm64 image ran on amd64
    hosts.  Refused, naming the index entry."""
    lay = ob.Layout(tmp_path / "lay")
    m = lay.image([{"arch": b"arm64"}], arch="arm64")
    entry = dict(m, platform={"architecture": "amd64", "os": "linux", "Architecture": "arm64"})
    idx = lay.index([entry])
    lay.add(idx, "latest", **{"io.containerd.image.name": "bad:1"})
    _push_layout(reg.host, "keys/platform", lay, idx)
    _refused_on_every_way_in(root, tmp_path, lay, "manifests[0] (" + m["digest"] + ") platform: key "
                             "'Architecture' is not 'architecture'", registry=f"{reg.host}/keys/platform:1")


def test_an_oci_layout_file_with_a_key_go_takes_for_its_version_is_refused(root, tmp_path):  # noqa: F811
    lay = ob.Layout(tmp_path / "lay")
    lay.add(lay.image([{"a": b"x"}]), "latest")
    with open(os.path.join(lay.root, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion": "1.0.0", "ImageLayoutVersion": "2.0.0"}')
    _refused_on_every_way_in(root, tmp_path, lay, "oci-layout: key 'ImageLayoutVersion' is not 'imageLayoutVersion'")


def _legacy_with_entry(tmp_path, **extra):
    """A classic docker save of two images, a and b, and one manifest.json entry: a's, with ``extra``."""
    members, entries = {}, {}
    for name in ("a", "b"):
        raw = ob.tar_bytes({name: name.encode()})
        config = ob.dumps({"architecture": "amd64", "os": "linux",
                           "rootfs": {"type": "layers", "diff_ids": [ob.sha256(raw)]}})
        members[f"{name}/layer.tar"] = raw
        members[f"{ob.sha256(config)[7:]}.json"] = config
        entries[name] = {"Config": f"{ob.sha256(config)[7:]}.json", "RepoTags": [f"{name}:1"],
                         "Layers": [f"{name}/layer.tar"]}
    entry = dict(entries["a"], **{k: v(entries) for k, v in extra.items()})
    members["manifest.json"] = json.dumps([entry]).encode()
    path = tmp_path / "legacy.tar"
    path.write_bytes(ob.tar_of(members))
    return path


@pytest.mark.parametrize("extra, key, field", [
    ({"layers": lambda e: e["b"]["Layers"]}, "layers", "Layers"),
    ({"config": lambda e: e["b"]["Config"]}, "config", "Config"),
    ({"Repotags": lambda e: ["b:1"]}, "Repotags", "RepoTags"),
], ids=["layers", "config", "repotags"])
def test_a_manifest_json_key_go_takes_for_a_field_is_refused(root, tmp_path, extra, key, field):  # noqa: F811
    """docker load and skopeo read manifest.json with Go: an entry's ``"layers"`` after its
    ``"Layers"`` are the layers they load (b's files under a's config), ``"Repotags"`` its tags.
    lamina read the other key.  Refused, naming the entry and the key."""
    require_tool("skopeo")
    path = _legacy_with_entry(tmp_path, **extra)
    shown = subprocess.run(["skopeo", "inspect", f"docker-archive:{path}"], capture_output=True, text=True)
    if key == "layers":   # skopeo reads b's layer (and then fails on a's config's diffID for it)
        assert shown.returncode != 0 or "b" in shown.stdout, shown.stdout
    before = fingerprint(root)
    for args in (("load", "-i", path), ("unpack", f"docker-archive:{path}", tmp_path / "out"),
                 ("copy", f"docker-archive:{path}", "bad:1")):
        fails(root, *args, match=f"manifest.json: entry 0: key '{key}' is not '{field}'")
    assert not (tmp_path / "out").exists()
    _unchanged(root, before)


# --------------------------------------------------------------------------------------------
# lone surrogates


@pytest.mark.parametrize("extra, where", [
    ({"config": {"Env": ["A=\ud800"]}}, "config.Env[0]"),
    ({"config": {"Labels": {"a": "\udc00"}}}, "config.Labels.a"),
    ({"config": {"Labels": {"\udbff": "x"}}}, "a key of config.Labels"),
], ids=["env", "label", "label-key"])
def test_a_lone_surrogate_escape_is_refused_by_place(root, tmp_path, reg, registry_env, extra, where):  # noqa: F811
    """``"A=\\ud800"`` is ``A=\\ufffd`` to Go (skopeo shows it), a str holding a surrogate to
    Python: lamina wrote it escaped into a bundle's config.json (runc then reads U+FFFD) and
    printed it escaped in ``inspect``, so two readers of one config saw two values.  Refused,
    naming the document and where the string is."""
    require_tool("skopeo")
    lay = ob.Layout(tmp_path / "lay")
    m = lay.image([{"a": b"x"}], config_extra=extra)   # json.dumps writes the escape
    lay.add(m, "latest", **{"io.containerd.image.name": "bad:1"})
    assert "\ufffd" in json.dumps(_skopeo_config(f"oci:{lay.root}:latest"), ensure_ascii=False)
    config = lay.read_json(m["digest"])["config"]["digest"]
    _push_layout(reg.host, "surrogate/x", lay, m)
    _refused_on_every_way_in(root, tmp_path, lay, f"config {config}: invalid JSON: a lone surrogate escape in "
                             f"{where}", registry=f"{reg.host}/surrogate/x:1")
    # a pair (U+1F600 escaped as json.dumps writes it) is one character to every reader
    pair = ob.Layout(tmp_path / "pair")
    pair.add(pair.image([{"a": b"x"}], config_extra={"config": {"Labels": {"a": "\U0001f600"}}}), "latest",
             **{"io.containerd.image.name": "ok:1"})
    lamina(root, "load", "-i", pair.root)
    shown = lamina(root, "inspect", "--format", "{{json .Config.Labels}}", "ok:1").stdout
    assert json.loads(shown) == {"a": "\U0001f600"}


# --------------------------------------------------------------------------------------------
# docker >= 25 archives: an OCI layout and a manifest.json


def _docker25(tmp_path, names, entries):
    """A docker >= 25 save of images a and b: index.json gives a name to each of ``names``
    ({image: tag}), manifest.json lists ``entries`` ([(image, [RepoTags])])."""
    lay = ob.Layout(tmp_path / "lay")
    manifests = {}
    for image in ("a", "b"):
        desc = lay.image([{image: image.encode()}], compress=False)
        manifests[image] = desc, lay.read_json(desc["digest"])
    for image, tag in names.items():
        lay.add(manifests[image][0], tag.rpartition(":")[2],
                **{"io.containerd.image.name": f"docker.io/library/{tag}"})
    manifest_json = [{"Config": "blobs/sha256/" + manifests[image][1]["config"]["digest"][7:], "RepoTags": tags,
                      "Layers": ["blobs/sha256/" + d["digest"][7:] for d in manifests[image][1]["layers"]]}
                     for image, tags in entries]
    (tmp_path / "lay" / "manifest.json").write_text(json.dumps(manifest_json))
    return _tar_of_dir(lay.root, tmp_path / "docker25.tar"), {k: v[1]["config"]["digest"] for k, v in manifests.items()}


def test_a_name_manifest_json_and_index_json_give_to_different_images_is_refused(root, tmp_path):  # noqa: F811
    """Both images are in both files, but manifest.json tags b ``app:1`` where index.json names
    a so: docker load (and skopeo's docker-archive:PATH:app:1) give app:1 b's files, lamina's load
    and unpack gave it a's.  Refused, naming the entry and the name."""
    require_tool("skopeo")
    path, configs = _docker25(tmp_path, {"a": "app:1", "b": "app:2"}, [("b", ["app:1"]), ("a", ["app:2"])])
    shown = subprocess.run(["skopeo", "inspect", "--config", f"docker-archive:{path}:app:1"], capture_output=True,
                           text=True)
    assert shown.returncode == 0 and json.loads(shown.stdout)["rootfs"] == json.loads(
        open(ob.Layout.existing(tmp_path / "lay").path(configs["b"])).read())["rootfs"], shown.stderr
    before = fingerprint(root)
    match = "manifest.json: entry 0 (config blobs/sha256/" + configs["b"][7:] + ") is named 'app:1', but " \
            "index.json gives 'app:1' to another image"
    for args in (("load", "-i", path), ("unpack", f"docker-archive:{path}:app:1", tmp_path / "out"),
                 ("copy", f"docker-archive:{path}:app:1", "bad:1"), ("unpack", f"oci-archive:{path}:1",
                                                                      tmp_path / "out")):
        fails(root, *args, match=match)
    assert not (tmp_path / "out").exists()
    _unchanged(root, before)


def test_docker_archive_without_a_name_picks_manifest_json_s_image_or_refuses(root, tmp_path):  # noqa: F811
    """index.json names a ``latest`` and b ``app:2``; manifest.json lists b alone.  skopeo's
    ``docker-archive:PATH`` reads manifest.json's only image, b; lamina's took index.json's
    latest, a.  Refused for docker-archive: (a name picks one image in both files);
    ``oci-archive:PATH`` reads index.json, as skopeo's oci-archive does."""
    require_tool("skopeo")
    path, configs = _docker25(tmp_path, {"a": "app:latest", "b": "app:2"}, [("b", ["app:2"])])
    shown = subprocess.run(["skopeo", "inspect", "--raw", f"docker-archive:{path}"], capture_output=True, text=True)
    assert shown.returncode == 0 and configs["b"] in shown.stdout, shown.stderr
    before = fingerprint(root)
    fails(root, "unpack", f"docker-archive:{path}", tmp_path / "out",
          match="manifest.json: picks config blobs/sha256/" + configs["b"][7:] + " for 'no name', but index.json "
          "picks another image")
    fails(root, "copy", f"docker-archive:{path}", "bad:1", match="but index.json picks another image")
    assert not (tmp_path / "out").exists()
    _unchanged(root, before)
    lamina(root, "unpack", f"docker-archive:{path}:app:2", tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["b"]
    lamina(root, "unpack", f"oci-archive:{path}", tmp_path / "out2")
    assert os.listdir(tmp_path / "out2") == ["a"]



def test_docker_archive_at_n_reads_manifest_json_s_entry_n(root, tmp_path):  # noqa: F811
    """skopeo's ``docker-archive:PATH:@N`` is manifest.json's entry N.  lamina read a docker >= 25
    archive through its layout, whose index.json names no ``@1``: "no image named '@1'".  It now
    reads the layout's manifest of that entry."""
    require_tool("skopeo")
    path, configs = _docker25(tmp_path, {"a": "app:1", "b": "app:2"}, [("a", ["app:1"]), ("b", ["app:2"])])
    shown = subprocess.run(["skopeo", "inspect", "--raw", f"docker-archive:{path}:@1"], capture_output=True,
                           text=True)
    assert shown.returncode == 0 and configs["b"] in shown.stdout, shown.stderr
    lamina(root, "unpack", f"docker-archive:{path}:@1", tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["b"]
    lamina(root, "copy", f"docker-archive:{path}:@0", "picked:1")
    lamina(root, "unpack", "picked:1", tmp_path / "out0")
    assert os.listdir(tmp_path / "out0") == ["a"]
    fails(root, "unpack", f"docker-archive:{path}:@2", tmp_path / "out2", match="no image '@2'")


def test_docker_archive_reads_a_name_only_manifest_json_gives(root, tmp_path):  # noqa: F811
    """manifest.json tags a ``app:1`` and ``extra:1``, index.json names it ``app:1`` alone.
    skopeo's ``docker-archive:PATH:extra:1`` (and docker's load) read manifest.json: a; lamina
    read the layout, whose index.json names no extra:1: "no image named 'extra:1'", though its
    load gave a that name (found by test_fuzz_archives.py).  It now reads the layout's manifest
    of that entry, as for @N; ``oci-archive:`` reads index.json alone, as skopeo's does."""
    require_tool("skopeo")
    path, configs = _docker25(tmp_path, {"a": "app:1", "b": "app:2"}, [("a", ["app:1", "extra:1"]), ("b", ["app:2"])])
    shown = subprocess.run(["skopeo", "inspect", "--config", f"docker-archive:{path}:extra:1"], capture_output=True,
                           text=True)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["rootfs"]["diff_ids"] == json.loads(
        open(ob.Layout.existing(tmp_path / "lay").path(configs["a"])).read())["rootfs"]["diff_ids"]
    lamina(root, "unpack", f"docker-archive:{path}:extra:1", tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["a"]
    lamina(root, "copy", f"docker-archive:{path}:docker.io/library/extra:1", "picked:1")
    assert lamina(root, "inspect", "--format", "{{.Id}}", "picked:1").stdout.strip() == configs["a"]
    fails(root, "unpack", f"oci-archive:{path}:extra:1", tmp_path / "out2", match="no image named 'extra:1'")

def test_load_applies_the_names_only_manifest_json_gives_as_docker_does(root, tmp_path):  # noqa: F811
    """index.json names a ``app:1`` and leaves b unnamed; manifest.json tags a ``app:1`` and
    ``extra:1``, b ``only:1``.  docker's load reads manifest.json alone and gives all three
    (skopeo's docker-archive:PATH:NAME reads the same images by them); lamina's load took
    index.json's names only: app:1, and neither extra:1 nor b at all."""
    require_tool("skopeo")
    path, configs = _docker25(tmp_path, {"a": "app:1"}, [("a", ["app:1", "extra:1"]), ("b", ["only:1"])])
    lay = ob.Layout.existing(tmp_path / "lay")
    unnamed_b = lay.image([{"b": b"b"}], compress=False)   # the same blobs: b's manifest again
    lay.add(unnamed_b)
    os.unlink(path)
    _tar_of_dir(lay.root, path)
    for name, image in (("extra:1", "a"), ("only:1", "b")):
        shown = subprocess.run(["skopeo", "inspect", "--config", f"docker-archive:{path}:{name}"],
                               capture_output=True, text=True)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["rootfs"]["diff_ids"] == json.loads(
            open(lay.path(configs[image])).read())["rootfs"]["diff_ids"]
    lamina(root, "load", "-i", path)
    for name, image in (("app:1", "a"), ("extra:1", "a"), ("only:1", "b")):
        assert lamina(root, "inspect", "--format", "{{.Id}}", name).stdout.strip() == configs[image], name
        lamina(root, "unpack", name, tmp_path / f"out-{name}")
        assert os.listdir(tmp_path / f"out-{name}") == [image]


@pytest.mark.parametrize("index_json", [b"{", b'{"schemaVersion": 2, "manifests": {}}', None],
                         ids=["invalid-json", "manifests-not-a-list", "missing"])
def test_a_docker_archive_whose_index_json_is_broken_loads_by_its_manifest_json(root, tmp_path, index_json):  # noqa: F811
    """A docker >= 25 archive whose index.json is unreadable (or gone) beside a good
    manifest.json: docker's load and skopeo's docker-archive: read manifest.json alone and load
    it; lamina refused it ("index.json: invalid JSON").  docker-archive: and load now read
    manifest.json then; oci-archive: still reads (and refuses) index.json, as skopeo's does."""
    require_tool("skopeo")
    path, configs = _docker25(tmp_path, {"a": "app:1"}, [("a", ["app:1"])])
    lay = tmp_path / "lay"
    if index_json is None:
        os.unlink(lay / "index.json")
    else:
        (lay / "index.json").write_bytes(index_json)
    os.unlink(path)
    _tar_of_dir(lay, path)
    shown = subprocess.run(["skopeo", "inspect", "--config", f"docker-archive:{path}"], capture_output=True,
                           text=True)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["rootfs"] == json.loads((lay / "blobs" / "sha256" / configs["a"][7:])
                                                            .read_bytes())["rootfs"]
    assert subprocess.run(["skopeo", "inspect", f"oci-archive:{path}"], capture_output=True).returncode != 0
    before = fingerprint(root)
    fails(root, "unpack", f"oci-archive:{path}", tmp_path / "oci-out", match="index.json")
    _unchanged(root, before)
    lamina(root, "load", "-i", path)
    assert lamina(root, "inspect", "--format", "{{.Id}}", "app:1").stdout.strip() == configs["a"]
    lamina(root, "unpack", f"docker-archive:{path}", tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["a"]


# --------------------------------------------------------------------------------------------
# a token server's answer


def _bearer_proxy(reg, body, challenge='Bearer realm="{realm}",service="s",scope="repository:t:pull"'):  # noqa: F811
    proxy = FaultProxy(reg.host)
    proxy.add("respond", path="/manifests/", times=1, code=401, headers={
        "WWW-Authenticate": challenge.format(realm=f"http://{proxy.host}/token")})
    proxy.add("respond", path="/token", times=None, body=body, headers={"Content-Type": "application/json"})
    return proxy


@pytest.mark.parametrize("body, sent", [
    (b'{"token": "t1", "access_token": "t2"}', "t2"),
    (b'{"Token": "t3"}', "t3"),
    (b'{"ACCESS_TOKEN": "t4", "token": "t5"}', "t4"),
], ids=["both", "Token", "ACCESS_TOKEN"])
def test_a_token_answer_is_read_as_go_reads_it(root, reg, registry_env, body, sent):  # noqa: F811
    """docker's and containerd's token clients use ``access_token`` over ``token`` and match both
    up to case; lamina sent ``token``, and found no token in ``{"Token": ...}``."""
    proxy = _bearer_proxy(reg, body)
    try:
        fails(root, "pull", f"{proxy.host}/t:1", match=f"manifest for {proxy.host}/t:1 not found")
        sent_auth = [h.get("Authorization") for method, path, h, status in proxy.seen if "/manifests/" in path]
        assert sent_auth[1:] == [f"Bearer {sent}"], sent_auth
    finally:
        proxy.stop()


@pytest.mark.parametrize("token", ["t\r\nX-Injected: 1", "t\u00e9", "t\x00"])
def test_a_token_that_is_no_header_value_is_a_clear_error(root, reg, registry_env, token):  # noqa: F811
    """A token holding CR/LF, a NUL or a non-ASCII letter cannot go in an Authorization header
    (Go's http refuses it): lamina's http.client raised a bare ValueError / UnicodeEncodeError.
    Refused, naming the token server."""
    proxy = _bearer_proxy(reg, json.dumps({"token": token}).encode())
    try:
        fails(root, "pull", f"{proxy.host}/t:1", match=f"{proxy.host}: token server sent a token that is no "
              "HTTP header value")
        assert not [path for method, path, h, status in proxy.seen if "/manifests/" in path][1:]
    finally:
        proxy.stop()


@pytest.mark.parametrize("challenge", [
    'Bearer realm="{realm}",service="s",scope="repository:t:pull", Basic realm="elsewhere"',
    'Basic realm="x", Bearer realm="{realm}",service="s"',
], ids=["bearer-first", "basic-first"])
def test_a_header_of_several_challenges_answers_the_bearer_one(root, reg, registry_env, challenge):  # noqa: F811
    """Several challenges in one WWW-Authenticate (or several header lines, which arrive joined by
    ", "): lamina read one challenge of every parameter, the last realm winning (the Basic one's
    "elsewhere": "invalid token realm"), or answered the first scheme (Basic: "no credentials").
    docker's client answers the Bearer challenge: so does lamina, with its own parameters."""
    proxy = _bearer_proxy(reg, b'{"token": "t9"}', challenge)
    try:
        fails(root, "pull", f"{proxy.host}/t:1", match=f"manifest for {proxy.host}/t:1 not found")
        sent_auth = [h.get("Authorization") for method, path, h, status in proxy.seen if "/manifests/" in path]
        assert sent_auth[1:] == ["Bearer t9"], sent_auth
    finally:
        proxy.stop()


# --------------------------------------------------------------------------------------------
# platform fields lamina does not match on


@pytest.mark.parametrize("field, value, kind", [
    ("os.features", [1], "a list of strings"), ("os.features", "sse4", "a list of strings"),
    ("os.version", 10, "a string"),
], ids=["features-number", "features-string", "version-number"])
def test_platform_fields_of_another_type_are_refused(root, tmp_path, reg, field, value, kind):  # noqa: F811
    """Go unmarshals an index into typed platforms: an ``os.features`` of numbers fails the whole
    index for skopeo and containerd, and docker-registry refuses to store it ("manifest
    invalid").  lamina, which does not match on the field, read the index.  Refused, naming the
    entry and the field."""
    require_tool("skopeo")
    lay = ob.Layout(tmp_path / "lay")
    m = lay.image([{"a": b"x"}])
    idx = lay.index([dict(m, platform={"architecture": "amd64", "os": "linux", field: value})])
    lay.add(idx, "latest", **{"io.containerd.image.name": "bad:1"})
    shown = subprocess.run(["skopeo", "inspect", f"oci:{lay.root}:latest"], capture_output=True, text=True)
    assert shown.returncode != 0 and "cannot unmarshal" in shown.stderr, shown.stdout + shown.stderr
    with open(lay.path(idx["digest"]), "rb") as f:
        status, body = _push_manifest(reg.host, "platform/types", "1", f.read(), ob.OCI_INDEX)
    assert status == 400 and b"MANIFEST_INVALID" in body, body
    _refused_on_every_way_in(root, tmp_path, lay, f"manifests[0] ({m['digest']}) platform: {field} must be {kind}")


@pytest.mark.parametrize("platform, why", [
    ({"architecture": "../x", "os": "linux"}, "architecture '../x' has characters other than"),
    ({"architecture": "..", "os": "linux"}, "architecture '..' is dots alone"),
    ({"architecture": "amd64", "os": ""}, "empty os"),
    ({"architecture": "a" * 300, "os": "linux"}, "architecture of 300 characters (at most 64)"),
    ({"architecture": "amd64\x1b[2J", "os": "linux"}, "architecture 'amd64\\x1b[2J' has characters other than"),
    ({"architecture": "amd64", "os": "linux", "variant": "v\u0661"}, "variant 'v\u0661' has characters other than"),
], ids=["slash-dots", "dots", "empty-os", "300-chars", "escape", "unicode-digit"])
def test_an_index_entry_whose_platform_no_platform_string_spells_is_refused(root, tmp_path, platform, why):  # noqa: F811
    """An index entry's platform of ``../x``, ``..``, an empty os, 300 characters or an escape
    sequence: lamina read it (an escape sequence then went into "available: ..." lists and
    ``images`` columns, a 300-character architecture whole into every message).  skopeo, docker
    and containerd compare the strings and pick another entry; lamina refuses the index, naming
    the entry and the value (CONFORMANCE.md), as it refuses what no ``--platform`` can name."""
    require_tool("skopeo")
    lay = ob.Layout(tmp_path / "lay")
    good = dict(lay.image([{"a": b"x"}]), platform={"architecture": "amd64", "os": "linux"})
    odd = dict(lay.image([{"a": b"y"}]), platform=platform)
    idx = lay.index([good, odd])
    lay.add(idx, "latest", **{"io.containerd.image.name": "bad:1"})
    shown = subprocess.run(["skopeo", "inspect", "--override-arch", "amd64", "--override-os", "linux",
                            f"oci:{lay.root}:latest"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr   # skopeo reads the index and picks linux/amd64
    _refused_on_every_way_in(root, tmp_path, lay, f"manifests[1] ({odd['digest']}): invalid platform: {why}")


@pytest.mark.parametrize("tags", [[5], [None], ["a:1", ["b:1"]]], ids=["number", "null", "list"])
def test_a_manifest_json_repotags_entry_that_is_no_string_is_refused(root, tmp_path, tags):  # noqa: F811
    """Go's docker load and skopeo cannot read an entry whose RepoTags holds a number or a list
    (a []string): skopeo refuses the archive; a null Go reads as "", a name docker load refuses.
    lamina's load refused them, but ``unpack`` without a name read the image, and with one
    (``docker-archive:PATH:a:1``) died of a TypeError matching the name against it.  Refused
    everywhere, naming the entry (found by test_fuzz_documents.py)."""
    require_tool("skopeo")
    path = _legacy_with_entry(tmp_path, RepoTags=lambda e: tags)
    shown = subprocess.run(["skopeo", "inspect", "--raw", f"docker-archive:{path}"], capture_output=True, text=True)
    assert (shown.returncode != 0) == (None not in tags), shown.stdout
    before = fingerprint(root)
    for args in (("load", "-i", path), ("unpack", f"docker-archive:{path}", tmp_path / "out"),
                 ("unpack", f"docker-archive:{path}:a:1", tmp_path / "out"),
                 ("copy", f"docker-archive:{path}:a:1", "bad:1")):
        fails(root, *args, match=f"manifest.json: entry 0: RepoTags {tags[-1]!r} is not a string")
    assert not (tmp_path / "out").exists()
    _unchanged(root, before)
