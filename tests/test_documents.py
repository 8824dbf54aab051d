"""Image documents (index.json, indexes, manifests, configs, descriptors) read the way tests/DOCUMENTS.md says.

Three levels: the parser itself (lamina.oci.model, every rule with a minimal document), `lamina load`
of OCI layouts built byte by byte (tests/ocibuild.py), and `lamina pull` from the real loopback
docker-registry, with documents PUT there as raw bytes (skopeo would rewrite them).
"""
import base64
import http.client
import json
import os
import re
import subprocess

import pytest

import ocibuild as ob
from conftest import require_tool, run
from registryfixture import FaultProxy, lamina_cli, reg, registry_env  # noqa: F401
from storekit import lamina

from lamina import errors
from lamina.oci import model
from lamina.registry import pull
from lamina.store import Store

DIGEST = "sha256:" + "a" * 64
CONFIG_DESC = {"mediaType": ob.OCI_CONFIG, "digest": DIGEST, "size": 2}
LAYER_DESC = {"mediaType": ob.OCI_LAYER_GZIP, "digest": "sha256:" + "b" * 64, "size": 10}


def manifest_doc(**extra):
    doc = {"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST, "config": dict(CONFIG_DESC), "layers": [dict(LAYER_DESC)]}
    doc.update(extra)
    return doc


def index_doc(**extra):
    doc = {"schemaVersion": 2, "mediaType": ob.OCI_INDEX,
           "manifests": [{"mediaType": ob.OCI_MANIFEST, "digest": DIGEST, "size": 300}]}
    doc.update(extra)
    return doc


def read_document(data, declared):
    """What a layout or pull does with a document's bytes: decode, classify, parse."""
    doc = model.load_json(data, "manifest X")
    media_type = model.document_media_type(doc, declared, "manifest X")
    if media_type in (ob.OCI_INDEX, ob.DOCKER_LIST):
        return model.parse_index(doc, media_type, "manifest X")
    return model.parse_manifest(doc, media_type, "manifest X")


def refused(data, declared=ob.OCI_MANIFEST, match=None):
    with pytest.raises(errors.LaminaError, match=match) as e:
        read_document(data if isinstance(data, bytes) else json.dumps(data).encode(), declared)
    assert "manifest X" in str(e.value)
    return str(e.value)


# ---------------------------------------------------------------------------------------------
# the parser: kinds (CVE-2021-41190)


def test_manifest_carrying_manifests_is_refused():
    doc = manifest_doc(manifests=index_doc()["manifests"])
    refused(doc, match="carries both 'manifests' and 'config'/'layers'")
    # Without config/layers but still a manifest by its mediaType: the index-shaped half is refused too.
    doc = {"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST, "manifests": index_doc()["manifests"]}
    refused(doc, declared=None, match="CVE-2021-41190")


@pytest.mark.parametrize("field", ["config", "layers"])
@pytest.mark.parametrize("kind", [ob.OCI_INDEX, ob.DOCKER_LIST])
def test_index_carrying_config_or_layers_is_refused(field, kind):
    extra = {"config": CONFIG_DESC} if field == "config" else {"layers": [LAYER_DESC]}
    doc = index_doc(mediaType=kind, **extra)
    doc.pop("manifests") if field == "config" else None
    refused(doc, declared=kind, match="ambiguous")


def test_index_json_carrying_layers_is_refused():
    doc = index_doc(layers=[LAYER_DESC])
    with pytest.raises(errors.ImageError, match="CVE-2021-41190"):
        model.document_media_type(doc, None, "index.json")


@pytest.mark.parametrize("declared, doc", [
    (ob.OCI_MANIFEST, manifest_doc(mediaType=ob.DOCKER_MANIFEST)),      # swapped for another manifest kind
    (ob.DOCKER_MANIFEST, manifest_doc()),
    (ob.OCI_INDEX, manifest_doc()),                                     # index descriptor, manifest content
    (ob.OCI_MANIFEST, index_doc()),
])
def test_descriptor_media_type_must_match_the_document(declared, doc):
    refused(doc, declared=declared, match="descriptor says .* but the document says")


@pytest.mark.parametrize("declared, doc", [
    (ob.OCI_INDEX, {k: v for k, v in manifest_doc().items() if k != "mediaType"}),
    (ob.OCI_MANIFEST, {k: v for k, v in index_doc().items() if k != "mediaType"}),
])
def test_document_without_media_type_must_have_the_announced_shape(declared, doc):
    refused(doc, declared=declared, match="ambiguous")


def test_unlabelled_documents_are_classified_by_shape():
    bare_manifest = {k: v for k, v in manifest_doc().items() if k != "mediaType"}
    assert read_document(json.dumps(bare_manifest).encode(), None).media_type == ob.OCI_MANIFEST
    bare_index = {k: v for k, v in index_doc().items() if k != "mediaType"}
    assert read_document(json.dumps(bare_index).encode(), None).media_type == ob.OCI_INDEX


# ---------------------------------------------------------------------------------------------
# the parser: JSON


@pytest.mark.parametrize("data, match", [
    (b'{"schemaVersion": 2, "schemaVersion": 2, "config": {}, "layers": []}', "duplicate key 'schemaVersion'"),
    (json.dumps(manifest_doc()).replace('"size": 2', '"size": 2, "size": 3').encode(), "duplicate key 'size'"),
    (b'\xef\xbb\xbf' + json.dumps(manifest_doc()).encode(), "invalid JSON"),                 # UTF-8 BOM
    (json.dumps(manifest_doc()).encode("utf-16"), "not UTF-8"),
    (json.dumps(manifest_doc()).encode().replace(b"linux", b"lin\xffux") + b'{"x": "\xff"}', "invalid JSON"),
    (json.dumps(manifest_doc()).replace('"size": 2', '"size": NaN').encode(), "NaN is not JSON"),
    (json.dumps(manifest_doc()).replace('"size": 2', '"size": Infinity').encode(), "Infinity is not JSON"),
    (b'{"a": ' * 100_000 + b'1' + b'}' * 100_000, "nested too deeply|invalid JSON"),
    (b'[]', "expected a JSON object"),
])
def test_json_is_read_strictly(data, match):
    refused(data, match=match)


@pytest.mark.parametrize("where, key, field", [
    ("top", "MediaType", "mediaType"),
    ("top", "LAYERS", "layers"),
    ("top", "Manifests", "manifests"),
    ("config", "Digest", "digest"),
    ("layer", "sIZE", "size"),
])
def test_keys_that_go_would_fold_onto_a_field_are_refused(where, key, field):
    doc = manifest_doc()
    target = {"top": doc, "config": doc["config"], "layer": doc["layers"][0]}[where]
    target[key] = target.get(field, [])
    refused(doc, match=f"key '{key}' is not '{field}'")


def test_config_keys_are_read_strictly():
    good = {"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": [DIGEST]}}
    assert model.parse_config(json.dumps(good).encode(), "config C", 1).diff_ids == [DIGEST]
    for bad in (json.dumps(good).replace('"os": "linux"', '"os": "linux", "os": "windows"'),
                json.dumps(dict(good, Architecture="arm64")),
                json.dumps(dict(good, rootfs={"type": "layers", "diff_ids": [DIGEST], "Diff_IDs": []}))):
        with pytest.raises(errors.ImageError, match="config C"):
            model.parse_config(bad.encode(), "config C", 1)


def test_unknown_fields_subject_and_artifact_type_are_tolerated():
    subject = {"mediaType": ob.OCI_MANIFEST, "digest": "sha256:" + "c" * 64, "size": 123}
    doc = manifest_doc(subject=subject, artifactType="application/vnd.example.thing",
                       annotations={"org.example": "x"}, **{"x-vendor-extension": {"anything": [1, 2]}})
    doc["layers"][0]["x-extra"] = True
    doc["config"]["artifactType"] = "application/vnd.example.other"
    m = read_document(json.dumps(doc).encode(), ob.OCI_MANIFEST)
    assert [d.digest for d in m.layers] == [LAYER_DESC["digest"]]
    idx = read_document(json.dumps(index_doc(subject=subject, artifactType="application/x.y")).encode(), ob.OCI_INDEX)
    assert [d.digest for d in idx.manifests] == [DIGEST]


@pytest.mark.parametrize("extra, match", [
    ({"subject": {"mediaType": ob.OCI_MANIFEST, "digest": "sha256:1234", "size": 1}}, "subject: invalid digest"),
    ({"subject": {"mediaType": ob.OCI_MANIFEST, "digest": DIGEST, "size": -1}}, "subject .*invalid size"),
    ({"subject": "sha256:" + "c" * 64}, "subject: descriptor is not a JSON object"),
    ({"artifactType": 7}, "invalid artifactType"),
    ({"artifactType": "not a media type"}, "invalid artifactType"),
    ({"annotations": {"a": 1}}, "annotations must be a map of strings"),
    ({"annotations": ["a"]}, "annotations must be a map of strings"),
    ({"mediaType": "application/vnd.oci.image.manifest.v1+json; charset=utf-8"}, "invalid mediaType"),
    ({"schemaVersion": 2.0}, "unsupported schemaVersion"),
    ({"schemaVersion": True}, "unsupported schemaVersion"),
    ({"schemaVersion": "2"}, "unsupported schemaVersion"),
])
def test_optional_fields_must_be_well_formed(extra, match):
    refused(manifest_doc(**extra), match=match)


# ---------------------------------------------------------------------------------------------
# the parser: descriptors


@pytest.mark.parametrize("size", [-1, 1.0, 2.5, True, "10", None, 1 << 63, 10 ** 30])
def test_descriptor_size_must_be_an_int64(size):
    d = dict(LAYER_DESC, size=size)
    message = refused(manifest_doc(layers=[d]), match="invalid size")
    assert LAYER_DESC["digest"] in message


def test_largest_int64_size_is_a_valid_descriptor():
    d = model.parse_descriptor(dict(LAYER_DESC, size=(1 << 63) - 1), "layer")
    assert d.size == (1 << 63) - 1


@pytest.mark.parametrize("digest, match", [
    ("sha256:" + "A" * 64, "invalid digest"),                 # the encoding is lowercase hex
    ("sha256:" + "a" * 63, "invalid digest"),
    ("sha256:" + "a" * 65, "invalid digest"),
    ("sha512:" + "a" * 128, "unsupported digest algorithm 'sha512'"),
    ("SHA256:" + "a" * 64, "invalid digest"),
    ("a" * 64, "invalid digest"),
    ("sha256:" + "a" * 62 + "/.", "invalid digest"),
    (123, "expected a digest string"),
])
def test_descriptor_digest_rules(digest, match):
    refused(manifest_doc(layers=[dict(LAYER_DESC, digest=digest)]), match=match)


@pytest.mark.parametrize("field, value, match", [
    ("mediaType", "", "no mediaType"),
    ("mediaType", 5, "invalid mediaType"),
    ("mediaType", "tar", "invalid mediaType"),
    ("urls", "http://127.0.0.1/x", "urls must be a list of strings"),
    ("urls", [1], "urls must be a list of strings"),
    ("platform", {"os": "linux"}, "invalid platform"),
    ("annotations", {"k": None}, "annotations must be a map of strings"),
])
def test_descriptor_fields(field, value, match):
    refused(manifest_doc(layers=[dict(LAYER_DESC, **{field: value})]), match=match)


def test_null_where_a_list_is_due_is_the_empty_list_as_go_reads_it():
    """Go writes an empty slice as null and reads null back as one: BuildKit's export of an image
    of no layers says "layers": null, "diff_ids": null (containers/common's libimage testdata,
    test_tar_corpora.py), and docker, containerd, skopeo and podman load it.  lamina refused
    it ("'layers' must be a list").  A missing key is still refused: no writer leaves it out."""
    assert read_document(json.dumps(manifest_doc(layers=None)).encode(), ob.OCI_MANIFEST).layers == []
    assert read_document(json.dumps(index_doc(manifests=None)).encode(), ob.OCI_INDEX).manifests == []
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": None}}
    assert model.parse_config(json.dumps(config).encode(), "config X", 0).diff_ids == []
    without = manifest_doc()
    del without["layers"]
    refused(without, match="'layers' must be a list")
    with pytest.raises(errors.ImageError, match="diff_ids must be a list"):
        model.parse_config(json.dumps(dict(config, rootfs={"type": "layers"})).encode(), "config X", 0)
    with pytest.raises(errors.ImageError, match="has 0 entries but the image has 1 layers"):
        model.parse_config(json.dumps(config).encode(), "config X", 1)


def test_embedded_data_is_checked_against_digest_and_size():
    payload = b"{}"
    good = {"mediaType": ob.OCI_CONFIG, "digest": ob.sha256(payload), "size": 2,
            "data": base64.b64encode(payload).decode()}
    assert model.parse_descriptor(good, "config").size == 2
    for bad, match in ((dict(good, data="!!not base64"), "data is not base64"),
                       (dict(good, data=base64.b64encode(b"{ }").decode()), "data is 3 bytes"),
                       (dict(good, data=base64.b64encode(b"[]").decode()), "data has digest")):
        with pytest.raises(errors.ImageError, match=match):
            model.parse_descriptor(bad, "config")


# ---------------------------------------------------------------------------------------------
# lamina load: OCI layouts on disk


def _layout(tmp_path, **manifest_changes):
    """A one-image layout; manifest_changes edit the manifest JSON before it is stored."""
    lay = ob.Layout(tmp_path / "layout")
    mdesc = lay.image([{"hello.txt": b"hi\n"}])
    doc = lay.read_json(mdesc["digest"])
    doc.update(manifest_changes)
    return lay, doc


def _store_manifest(lay, data, media_type=ob.OCI_MANIFEST, **desc_changes):
    lay.blob(data)
    d = dict(ob.desc(media_type, data), **desc_changes)
    lay.add(d, "latest")
    return d


def _load_fails(tmp_path, lay, match):
    proc = lamina(tmp_path / "root", "load", "-i", lay.root, check=False)
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.startswith("lamina: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert match in proc.stderr, proc.stderr
    images = lamina(tmp_path / "root", "images", "-q", check=False)
    assert images.stdout.strip() == ""
    return proc.stderr


def test_load_accepts_unknown_fields_subject_and_artifact_type(tmp_path):
    lay, doc = _layout(tmp_path, subject={"mediaType": ob.OCI_MANIFEST, "digest": DIGEST, "size": 9},
                       annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
                       **{"x-unknown": [1, {"nested": True}]})
    data = json.dumps(doc, indent=1).encode()
    d = _store_manifest(lay, data)
    lamina(tmp_path / "root", "load", "-i", lay.root)
    assert [image.manifest_digest for image in Store(tmp_path / "root").images()] == [d["digest"]]
    # The manifest is kept byte for byte (its digest is the image's identity).
    with Store(tmp_path / "root").open_blob(d["digest"]) as f:
        assert f.read() == data


def test_load_refuses_a_manifest_carrying_manifests(tmp_path):
    lay, doc = _layout(tmp_path, manifests=[{"mediaType": ob.OCI_MANIFEST, "digest": DIGEST, "size": 9}])
    d = _store_manifest(lay, ob.dumps(doc))
    err = _load_fails(tmp_path, lay, "CVE-2021-41190")
    assert d["digest"] in err


def test_load_refuses_an_index_carrying_layers(tmp_path):
    lay, doc = _layout(tmp_path)
    mdesc = lay.json_blob(doc, ob.OCI_MANIFEST)
    index = {"schemaVersion": 2, "mediaType": ob.OCI_INDEX, "manifests": [ob.with_platform(mdesc, "linux", "amd64")],
             "layers": doc["layers"]}
    d = _store_manifest(lay, ob.dumps(index), ob.OCI_INDEX)
    err = _load_fails(tmp_path, lay, "CVE-2021-41190")
    assert d["digest"] in err


def test_load_refuses_a_descriptor_that_disagrees_with_its_document(tmp_path):
    # index.json says Docker manifest, the blob is an OCI manifest (mediaType inside says so).
    lay, doc = _layout(tmp_path)
    d = _store_manifest(lay, ob.dumps(doc), ob.DOCKER_MANIFEST)
    err = _load_fails(tmp_path, lay, f"descriptor says {ob.DOCKER_MANIFEST} but the document says {ob.OCI_MANIFEST}")
    assert d["digest"] in err


def test_load_refuses_an_index_entry_naming_a_manifest_as_an_index(tmp_path):
    lay, doc = _layout(tmp_path)
    doc.pop("mediaType")
    d = _store_manifest(lay, ob.dumps(doc), ob.OCI_INDEX)
    err = _load_fails(tmp_path, lay, "ambiguous")
    assert d["digest"] in err


@pytest.mark.parametrize("delta", [-1, 1])
def test_load_checks_the_manifest_size(tmp_path, delta):
    lay, doc = _layout(tmp_path)
    data = ob.dumps(doc)
    d = _store_manifest(lay, data, size=len(data) + delta)
    err = _load_fails(tmp_path, lay, f"blob is {len(data)} bytes but its descriptor says {len(data) + delta}")
    assert d["digest"] in err


def test_load_checks_the_layer_size(tmp_path):
    lay, doc = _layout(tmp_path)
    doc["layers"][0]["size"] += 1
    _store_manifest(lay, ob.dumps(doc))
    _load_fails(tmp_path, lay, f"{doc['layers'][0]['digest']}): blob is {doc['layers'][0]['size'] - 1} bytes")


def _archive_of(lay, path):
    """An archive (a tar) of the layout ``lay``, as docker >= 25 and skopeo's oci-archive write it."""
    import os
    import tarfile
    with tarfile.open(path, "w") as t:
        for n in os.listdir(lay.root):
            t.add(os.path.join(lay.root, n), n)
    return path


def test_load_of_several_images_names_the_image_whose_layer_size_is_wrong(tmp_path):
    """Each image of an archive has its "layer 1 of 1": the error said that alone, and left the
    reader to find which of the archive's images it was."""
    lay = ob.Layout(tmp_path / "layout")
    lay.add(lay.image([{"a": b"A\n"}]), None, **{"io.containerd.image.name": "example.com/a:1"})
    doc = lay.read_json(lay.image([{"b": b"B\n"}])["digest"])
    doc["layers"][0]["size"] += 1
    data = ob.dumps(doc)
    lay.blob(data)
    lay.add(ob.desc(ob.OCI_MANIFEST, data), None, **{"io.containerd.image.name": "example.com/b:1"})
    archive = _archive_of(lay, tmp_path / "two.tar")
    proc = lamina(tmp_path / "root", "load", "-i", archive, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"lamina: error: {archive}: image example.com/b:1 layer 1 of 1 "
                                  f"({doc['layers'][0]['digest']}): blob is"), proc.stderr
    assert lamina(tmp_path / "root", "images", "-q").stdout.strip() == ""


@pytest.mark.parametrize("several", [False, True], ids=["one", "two"])
@pytest.mark.parametrize("form", ["layout", "oci-archive", "docker-archive"])
def test_a_missing_layer_blob_is_named_after_the_archive_as_its_other_errors(tmp_path, form, several):
    """The layer blob of image example.com/b:1 is not in the layout or archive.  Alone there, it
    was "image example.com/b:1 layer 1 of 1: blob sha256:… not found in ARCHIVE" (a classic
    docker save: "l1/layer.tar not found in ARCHIVE", no layer at all), where every other error
    of the archive's images, and this one beside another image, is led by "ARCHIVE: ".  Now
    all are, and unpack and copy of the one image say the same."""
    images = [("example.com/a:1", {"a": b"A\n"})] if several else []
    images.append(("example.com/b:1", {"b": b"B\n"}))
    if form == "docker-archive":
        members, entries = {}, []
        for k, (tag, files) in enumerate(images):
            raw = ob.tar_bytes(files)
            config = ob.dumps({"architecture": "amd64", "os": "linux",
                               "rootfs": {"type": "layers", "diff_ids": [ob.sha256(raw)]}})
            config_name = ob.sha256(config).split(":")[1] + ".json"
            members[config_name] = config
            if tag == "example.com/a:1":
                members[f"l{k}/layer.tar"] = raw
            entries.append({"Config": config_name, "RepoTags": [tag], "Layers": [f"l{k}/layer.tar"]})
        members["manifest.json"] = json.dumps(entries).encode()
        source = tmp_path / "legacy.tar"
        source.write_bytes(ob.tar_of(members))
        missing = f"member l{len(images) - 1}/layer.tar"
        ref = f"docker-archive:{source}" + (":example.com/b:1" if several else "")
    else:
        lay = ob.Layout(tmp_path / "layout")
        for tag, files in images:
            m = lay.add(lay.image([files]), None, **{"io.containerd.image.name": tag})
        layer = lay.read_json(m["digest"])["layers"][0]["digest"]
        os.unlink(lay.path(layer))
        source = lay.root if form == "layout" else _archive_of(lay, tmp_path / "b.tar")
        missing = f"blob {layer}"
        ref = f"{'oci' if form == 'layout' else 'oci-archive'}:{source}:example.com/b:1"
    want = f"lamina: error: {source}: image example.com/b:1 layer 1 of 1: {missing} not found in it\n"
    for args in (("load", "-i", source), ("copy", ref, "b:1"), ("unpack", ref, tmp_path / "dest")):
        proc = lamina(tmp_path / "root", *args, check=False)
        assert proc.returncode == 1 and proc.stderr == want, (args, proc.stderr)
    assert lamina(tmp_path / "root", "images", "-q").stdout.strip() == ""


def test_load_of_several_legacy_images_names_the_image_whose_layer_is_corrupt(tmp_path):
    """The same in a classic ``docker save`` archive of two images: a layer.tar that is a
    gzip stream cut short, in the second image."""
    good, bad = ob.tar_bytes({"a": b"A\n"}), ob.tar_bytes({"b": b"B\n" * 5000})
    members, entries = {}, []
    for k, (raw, blob, tag) in enumerate([(good, good, "example.com/a:1"), (bad, ob.gz(bad)[:-40], "example.com/b:1")]):
        config = ob.dumps({"architecture": "amd64", "os": "linux",
                           "rootfs": {"type": "layers", "diff_ids": [ob.sha256(raw)]}})
        config_name = ob.sha256(config).split(":")[1] + ".json"
        members[config_name], members[f"l{k}/layer.tar"] = config, blob
        entries.append({"Config": config_name, "RepoTags": [tag], "Layers": [f"l{k}/layer.tar"]})
    members["manifest.json"] = json.dumps(entries).encode()
    archive = tmp_path / "legacy.tar"
    archive.write_bytes(ob.tar_of(members))
    proc = lamina(tmp_path / "root", "load", "-i", archive, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"lamina: error: {archive}: image example.com/b:1 layer 1 of 1: "), proc.stderr
    assert lamina(tmp_path / "root", "images", "-q").stdout.strip() == ""


@pytest.mark.parametrize("form", ["layout", "oci-archive", "docker-archive"])
def test_load_of_several_images_names_the_image_whose_config_is_refused(tmp_path, form):
    """The second of two images has a config that is not JSON.  Its layers' errors say
    "ARCHIVE: image NAME layer 1 of 1", but a manifest's or config's said "config sha256:…:
    invalid JSON" (a legacy archive "config ID.json: …") alone: a digest the user never
    typed, in an archive of many images.  skopeo names the config by digest too, but copies
    one image the user named; docker load has no such list to point into.  Now the image is
    named as its layers are, the digest kept."""
    bad = b"{not json"
    if form == "docker-archive":
        good = ob.tar_bytes({"a": b"A\n"})
        config = ob.dumps({"architecture": "amd64", "os": "linux",
                           "rootfs": {"type": "layers", "diff_ids": [ob.sha256(good)]}})
        names = [ob.sha256(c).split(":")[1] + ".json" for c in (config, bad)]
        members = {names[0]: config, names[1]: bad, "l/layer.tar": good}
        members["manifest.json"] = json.dumps([{"Config": n, "RepoTags": [t], "Layers": ["l/layer.tar"]}
                                               for n, t in zip(names, ["example.com/a:1", "example.com/b:1"])]).encode()
        source = tmp_path / "legacy.tar"
        source.write_bytes(ob.tar_of(members))
        what = f"config {names[1]}"
    else:
        lay = ob.Layout(tmp_path / "layout")
        lay.add(lay.image([{"a": b"A\n"}]), None, **{"io.containerd.image.name": "example.com/a:1"})
        doc = lay.read_json(lay.image([{"b": b"B\n"}])["digest"])
        lay.blob(bad)
        doc["config"] = ob.desc(ob.OCI_CONFIG, bad)
        data = ob.dumps(doc)
        lay.blob(data)
        lay.add(ob.desc(ob.OCI_MANIFEST, data), None, **{"io.containerd.image.name": "example.com/b:1"})
        source = lay.root if form == "layout" else _archive_of(lay, tmp_path / "two.tar")
        what = f"config {ob.sha256(bad)}"
    proc = lamina(tmp_path / "root", "load", "-i", source, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"lamina: error: {source}: image example.com/b:1: {what}: invalid JSON"), \
        proc.stderr
    assert lamina(tmp_path / "root", "images", "-q").stdout.strip() == ""


def test_load_refuses_duplicate_keys(tmp_path):
    lay, doc = _layout(tmp_path)
    text = json.dumps(doc)
    data = text.replace('"schemaVersion": 2', '"schemaVersion": 2, "layers": []', 1).encode()
    d = _store_manifest(lay, data)
    err = _load_fails(tmp_path, lay, "duplicate key 'layers'")
    assert d["digest"] in err


def test_load_refuses_a_config_with_duplicate_keys(tmp_path):
    lay, doc = _layout(tmp_path)
    config = lay.read_json(doc["config"]["digest"])
    raw = json.dumps(config).replace('"os": "linux"', '"os": "linux", "os": "windows"').encode()
    doc["config"] = ob.desc(ob.OCI_CONFIG, raw)
    lay.blob(raw)
    _store_manifest(lay, ob.dumps(doc))
    err = _load_fails(tmp_path, lay, "duplicate key 'os'")
    assert doc["config"]["digest"] in err


# Go's time.Time reads `created` (the config's and each history step's): docker, containerd,
# umoci and skopeo refuse the whole config when it does not parse.  Go before 1.20 (umoci 0.4.7
# here) also takes a one-digit hour, a comma before the fraction and any zone's numbers.
# {time: what inspect shows (docker: Go's RFC3339Nano; "": no Python datetime holds it)}
GO_TIMES = {"2020-01-01T00:00:00Z": "2020-01-01T00:00:00Z",
            "2020-02-29T23:59:59.123456789012+05:30": "2020-02-29T23:59:59.123456789+05:30",
            "0000-01-01T00:00:00Z": "", "2020-01-01T00:00:00-00:00": "2020-01-01T00:00:00Z",
            "2020-01-01T0:00:00Z": "2020-01-01T00:00:00Z", "2020-01-01T00:00:00,5Z": "2020-01-01T00:00:00.5Z",
            "2020-01-01T00:00:00+99:99": ""}
NOT_GO_TIMES = ["yesterday", "", "2020-13-01T00:00:00Z", "2019-02-29T00:00:00Z", "2020-01-01T24:00:00Z",
                "2020-01-01T00:00:60Z", "2020-01-01 00:00:00Z", "2020-01-01t00:00:00Z", "2020-01-01T00:00:00z",
                "2020-01-01T00:00:00+0500", "2020-01-01T00:00:00.Z", " 2020-01-01T00:00:00Z",
                "10000-01-01T00:00:00Z", "\u0662\u0660\u0662\u0660-01-01T00:00:00Z", "2020-01-01T00:00:00\uff3a"]


@pytest.mark.parametrize("where", ["config", "history"])
@pytest.mark.parametrize("created", list(GO_TIMES) + NOT_GO_TIMES)
def test_a_created_time_is_read_as_go_reads_it(tmp_path, created, where):
    """A ``created`` no Go reads ('yesterday', month 13, a lower-case z) was taken, the image
    shown as made at no known time, then handed on by save and push to tools that refuse it."""
    require_tool("umoci")
    extra = {"created": created} if where == "config" else \
        {"history": [{"created": created, "created_by": "step"}]}
    lay = ob.Layout(tmp_path / "lay")
    lay.add(lay.image([{"a": b"1"}], config_extra=extra), "img")
    umoci = subprocess.run(["umoci", "unpack", "--image", f"{lay.root}:img", tmp_path / "bundle"],
                           capture_output=True, text=True)
    assert (umoci.returncode == 0) == (created in GO_TIMES), umoci.stderr
    proc = lamina(tmp_path / "store", "copy", f"oci:{lay.root}:img", "img:1", check=False)
    if created in GO_TIMES:
        assert proc.returncode == 0, proc.stderr
        run("skopeo", "inspect", "--config", f"oci:{lay.root}:img")
        if where == "config":
            shown = lamina(tmp_path / "store", "inspect", "--format", "{{.Created}}", "img:1").stdout
            assert shown == GO_TIMES[created] + "\n"
    else:
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        step = "" if where == "config" else " history[0]"
        assert f"{step}: created must be an RFC 3339 time, not {json.dumps(created)}" in proc.stderr, proc.stderr
        assert not os.path.exists(tmp_path / "store" / "index.json") or \
            json.load(open(tmp_path / "store" / "index.json"))["manifests"] == []


def test_load_refuses_a_negative_size(tmp_path):
    lay, doc = _layout(tmp_path)
    doc["layers"][0]["size"] = -1
    _store_manifest(lay, ob.dumps(doc))
    _load_fails(tmp_path, lay, f"({doc['layers'][0]['digest']}): invalid size -1")


# ---------------------------------------------------------------------------------------------
# lamina pull: the real registry


def _push_blob(host, repo, data):
    digest = ob.sha256(data)
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.request("POST", f"/v2/{repo}/blobs/uploads/")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 202, resp.status
    location = resp.getheader("Location")
    sep = "&" if "?" in location else "?"
    path = location.split(host, 1)[-1] + f"{sep}digest={digest}"
    conn.request("PUT", path, body=data, headers={"Content-Type": "application/octet-stream"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 201, resp.status
    return digest


def _push_manifest(host, repo, ref, data, media_type):
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.request("PUT", f"/v2/{repo}/manifests/{ref}", body=data, headers={"Content-Type": media_type})
    resp = conn.getresponse()
    body = resp.read()
    return resp.status, body


@pytest.fixture(scope="module")
def pushed(reg, tmp_path_factory):
    """One small image's blobs in the registry, plus its manifest as an OCI and as a Docker document."""
    lay = ob.Layout(tmp_path_factory.mktemp("docs"))
    mdesc = lay.image([{"hello.txt": b"hi\n"}])
    doc = lay.read_json(mdesc["digest"])
    for d in [doc["config"], *doc["layers"]]:
        with open(lay.path(d["digest"]), "rb") as f:
            _push_blob(reg.host, "docs", f.read())
    return doc


def test_pull_tolerates_unknown_fields_subject_and_artifact_type(reg, pushed, registry_env):  # noqa: F811
    doc = dict(pushed, subject={"mediaType": ob.OCI_MANIFEST, "digest": DIGEST, "size": 9},
               **{"x-unknown": {"a": 1}})
    data = json.dumps(doc, indent=2).encode()
    status, body = _push_manifest(reg.host, "docs", "extras", data, ob.OCI_MANIFEST)
    assert status == 201, body
    result = pull(f"{reg.host}/docs:extras", store=registry_env / "root")
    assert result.manifest_digest == ob.sha256(data)


@pytest.mark.parametrize("artifact_type, config_type", [
    ("application/spdx+json", "application/vnd.oci.empty.v1+json"),   # image-spec 1.1's artifact form
    (None, "application/vnd.cncf.helm.config.v1+json"),                 # a Helm chart: its own config type
])
def test_an_artifact_is_refused_naming_its_type(reg, pushed, registry_env, tmp_path, artifact_type,  # noqa: F811
                                                config_type):
    """A tag whose manifest is an OCI artifact.  An SBOM's config is the empty descriptor and its
    type is in artifactType: lamina named only the config's type, "application/vnd.oci.empty.v1+json
    is not a container image config (is this an artifact?)", which says nothing of what was
    pulled.  Now the artifactType is named; without one the config's type still is.  The same
    from a registry and from a layout, and nothing is stored."""
    lay = ob.Layout(tmp_path / "lay")
    config = lay.json_blob({}, config_type)
    body = lay.json_blob({"spdxVersion": "SPDX-2.3"}, artifact_type or "application/vnd.cncf.helm.chart.content.v1.tar+gzip")
    doc = {"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST, "config": config, "layers": [body]}
    if artifact_type:
        doc["artifactType"] = artifact_type
    m = lay.json_blob(doc, ob.OCI_MANIFEST)
    lay.add(m, "art")
    for d in (config, body):
        with open(lay.path(d["digest"]), "rb") as f:
            _push_blob(reg.host, "docs", f.read())
    with open(lay.path(m["digest"]), "rb") as f:
        status, answer = _push_manifest(reg.host, "docs", "artifact", f.read(), ob.OCI_MANIFEST)
    assert status == 201, answer
    root = registry_env / "root"
    for argv in (("pull", f"{reg.host}/docs:artifact"), ("unpack", f"oci:{lay.root}:art", tmp_path / "out")):
        p = lamina_cli(*argv, root=root, check=False)
        line = p.stderr.strip()
        assert p.returncode == 1 and "\n" not in line and m["digest"] in line, p.stderr
        if artifact_type:
            assert f"an artifact of type '{artifact_type}'" in line and "not a container image" in line, line
        else:
            assert f"config media type '{config_type}' is not a container image config" in line, line
    assert Store(root).images() == []


@pytest.mark.parametrize("manifest_type", [ob.DOCKER_MANIFEST, ob.OCI_MANIFEST])
def test_docker_1_10s_octet_stream_config_is_an_image_config_in_a_docker_manifest(
        reg, registry_env, tmp_path, manifest_type):  # noqa: F811
    """docker 1.10 pushed schema2 manifests whose config is typed ``application/octet-stream``
    (docker/distribution#1622), and Docker Hub still serves them: containerd reads that type as
    the Docker config's, skopeo reads the image, image-spec's backwards compatibility tests call
    such a manifest valid.  lamina refused it as an artifact on every way in.  In an OCI
    manifest the type stays an artifact's (no OCI writer ever used it for an image config)."""
    lay = ob.Layout(tmp_path / "lay")
    docker = manifest_type == ob.DOCKER_MANIFEST
    doc = lay.read_json(lay.image([{"old/hello.txt": b"from 2016\n"}], docker=docker)["digest"])
    doc["config"]["mediaType"] = "application/octet-stream"
    m = lay.json_blob(doc, manifest_type)
    lay.add(m, "legacy")
    for d in [doc["config"], *doc["layers"]]:
        with open(lay.path(d["digest"]), "rb") as f:
            _push_blob(reg.host, "legacy", f.read())
    with open(lay.path(m["digest"]), "rb") as f:
        status, answer = _push_manifest(reg.host, "legacy", "v1", f.read(), manifest_type)
    assert status == 201, answer
    if docker:
        # skopeo reads the image, config and all (its oci: transport takes OCI manifests only)
        require_tool("skopeo")
        config = run("skopeo", "inspect", "--tls-verify=false", "--config", f"docker://{reg.host}/legacy:v1").stdout
        assert json.loads(config)["rootfs"]["diff_ids"] == lay.read_json(doc["config"]["digest"])["rootfs"]["diff_ids"]
    root = registry_env / "root"
    ways = [("pull", f"{reg.host}/legacy:v1"), ("unpack", f"docker://{reg.host}/legacy:v1", tmp_path / "direct"),
            ("unpack", f"oci:{lay.root}:legacy", tmp_path / "layout"), ("load", "-i", lay.root)]
    for argv in ways:
        p = lamina_cli(*argv, root=root, check=False)
        if docker:
            assert p.returncode == 0, (argv, p.stderr)
        else:
            assert p.returncode == 1 and "'application/octet-stream' is not a container image config" in p.stderr, \
                (argv, p.stderr)
    if docker:
        for out in ("direct", "layout"):
            with open(tmp_path / out / "old" / "hello.txt", "rb") as f:
                assert f.read() == b"from 2016\n"
        p = lamina_cli("unpack", f"{reg.host}/legacy:v1", tmp_path / "stored", root=root)
        with open(tmp_path / "stored" / "old" / "hello.txt", "rb") as f:
            assert f.read() == b"from 2016\n"
        assert lamina_cli("fsck", root=root).returncode == 0
    else:
        assert Store(root).images() == []


def test_an_index_of_one_artifact_is_refused_as_that_artifact_on_every_way_in(reg, registry_env, tmp_path):  # noqa: F811
    """A tag naming an index that lists one artifact and no image (an SBOM pushed with
    ``skopeo copy --all``).  The registry path chose the one unplatformed entry and named the
    artifact; the layout path said "no image for platform linux/amd64; available: none".  Both
    choose with one rule now (model.choose_platform), so unpack, load and pull say the same."""
    from registryfixture import skopeo_push
    lay = ob.Layout(tmp_path / "lay")
    empty = lay.json_blob({}, "application/vnd.oci.empty.v1+json")
    body = lay.json_blob({"spdxVersion": "SPDX-2.3"}, "application/spdx+json")
    sbom = lay.json_blob({"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST, "artifactType": "application/spdx+json",
                          "config": empty, "layers": [body]}, ob.OCI_MANIFEST, artifactType="application/spdx+json")
    lay.add(lay.index([sbom]), "idx", **{"io.containerd.image.name": "example.com/sbom:idx"})
    skopeo_push(f"oci:{lay.root}:idx", reg.host, "arts:idx", all_images=True)
    root = registry_env / "root"
    for argv in (("pull", f"{reg.host}/arts:idx"), ("unpack", f"oci:{lay.root}:idx", tmp_path / "out"),
                 ("load", "-i", lay.root)):
        p = lamina_cli(*argv, root=root, check=False)
        line = p.stderr.strip()
        assert p.returncode == 1 and "\n" not in line, p.stderr
        assert sbom["digest"] in line and "an artifact of type 'application/spdx+json'" in line, (argv[0], line)
    # with a platform asked for, there is none to give, on both paths
    for argv in (("pull", "--platform", "linux/amd64", f"{reg.host}/arts:idx"),
                 ("unpack", "--platform", "linux/amd64", f"oci:{lay.root}:idx", tmp_path / "out")):
        p = lamina_cli(*argv, root=root, check=False)
        assert p.returncode == 1 and "no image for platform linux/amd64" in p.stderr, p.stderr
    assert Store(root).images() == []


def test_pull_refuses_an_index_whose_descriptor_disagrees_with_the_manifest(reg, pushed, registry_env):  # noqa: F811
    docker = dict(pushed, mediaType=ob.DOCKER_MANIFEST,
                  config=dict(pushed["config"], mediaType=ob.DOCKER_CONFIG),
                  layers=[dict(ld, mediaType=ob.DOCKER_LAYER_GZIP) for ld in pushed["layers"]])
    data = ob.dumps(docker)
    status, body = _push_manifest(reg.host, "docs", ob.sha256(data), data, ob.DOCKER_MANIFEST)
    assert status == 201, body
    # The index names the Docker manifest as an OCI one: what a swapped blob would look like.
    index = {"schemaVersion": 2, "mediaType": ob.OCI_INDEX,
             "manifests": [ob.with_platform(ob.desc(ob.OCI_MANIFEST, data), "linux", "amd64")]}
    status, body = _push_manifest(reg.host, "docs", "swapped", ob.dumps(index), ob.OCI_INDEX)
    assert status == 201, body
    proc = lamina_cli("pull", "--platform", "linux/amd64", f"{reg.host}/docs:swapped",
                      root=registry_env / "root", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"lamina: error: manifest {ob.sha256(data)}: descriptor says {ob.OCI_MANIFEST} but the document says"
        f" {ob.DOCKER_MANIFEST}")


@pytest.mark.parametrize("kind", ["manifest-with-manifests", "index-with-layers"])
def test_pull_refuses_ambiguous_documents(reg, pushed, registry_env, kind):  # noqa: F811
    """The registry itself refuses to store these (distribution >= 2.7.2), so a proxy serves them."""
    if kind == "manifest-with-manifests":
        doc = dict(pushed, manifests=[{"mediaType": ob.OCI_MANIFEST, "digest": DIGEST, "size": 9}])
        content_type = ob.OCI_MANIFEST
    else:
        doc = {"schemaVersion": 2, "mediaType": ob.OCI_INDEX, "layers": pushed["layers"],
               "manifests": [ob.with_platform(ob.desc(ob.OCI_MANIFEST, ob.dumps(pushed)), "linux", "amd64")]}
        content_type = ob.OCI_INDEX
    data = ob.dumps(doc)
    status, _ = _push_manifest(reg.host, "docs", "ambiguous", data, content_type)
    assert status == 400    # the registry's own CVE-2021-41190 check
    proxy = FaultProxy(reg.host)
    try:
        proxy.add("respond", path="/manifests/ambiguous", times=None, body=data,
                  headers={"Content-Type": content_type, "Docker-Content-Digest": ob.sha256(data)})
        with pytest.raises(errors.ImageError, match="CVE-2021-41190") as e:
            pull(f"{proxy.host}/docs:ambiguous", store=registry_env / "root")
        assert "docs:ambiguous" in str(e.value)
    finally:
        proxy.stop()


def test_pull_refuses_content_type_disagreeing_with_the_document(reg, pushed, registry_env):  # noqa: F811
    data = ob.dumps(pushed)
    proxy = FaultProxy(reg.host)
    try:
        proxy.add("respond", path="/manifests/liar", times=None, body=data,
                  headers={"Content-Type": ob.OCI_INDEX})
        with pytest.raises(errors.ImageError, match=re.escape(f"descriptor says {ob.OCI_INDEX} but the document says")):
            pull(f"{proxy.host}/docs:liar", store=registry_env / "root")
        # A generic Content-Type says nothing: the document's own mediaType decides.
        proxy.clear()
        proxy.add("respond", path="/manifests/generic", times=None, body=data,
                  headers={"Content-Type": "application/json"})
        assert pull(f"{proxy.host}/docs:generic", store=registry_env / "root").manifest_digest == ob.sha256(data)
    finally:
        proxy.stop()


def test_pull_refuses_duplicate_keys(reg, pushed, registry_env):  # noqa: F811
    data = json.dumps(pushed).replace('"schemaVersion": 2', '"schemaVersion": 2, "schemaVersion": 2').encode()
    status, body = _push_manifest(reg.host, "docs", "dupkeys", data, ob.OCI_MANIFEST)
    assert status == 201, body     # the registry's Go decoder keeps the last key; lamina refuses the document
    with pytest.raises(errors.ImageError, match="duplicate key 'schemaVersion'") as e:
        pull(f"{reg.host}/docs:dupkeys", store=registry_env / "root")
    assert "docs:dupkeys" in str(e.value)


# ---------------------------------------------------------------------------------------------
# The image-spec's own schema tests: the documents of its Go package's schema/*_test.go (Debian's
# golang-github-opencontainers-image-spec-dev, 1.1.0-rc2, fetched by ci/fetch-corpora.sh), each
# marked valid or invalid by the spec's JSON schemas, and the spec's examples, all valid.  lamina reads each as the schemas do, but
# for the cases below, where it differs on purpose (DOCUMENTS.md says why).

SPEC_CASE_FILES = ("manifest_test.go", "imageindex_test.go", "config_test.go", "descriptor_test.go",
                   "backwards_compatibility_test.go")
SPEC_DIFFERENCES = {
    # the schema's minItems: 1; the spec's prose (1.1) says SHOULD, buildkit writes such manifests
    # for FROM scratch images with no files, and docker, containerd and skopeo read them
    ("manifest_test.go", "expected failure: empty layer, expected at least one"): "accepted",
    # an Env entry without '=': read (docker keeps it); a bundle refuses it (CONFORMANCE.md)
    ("config_test.go", "expected failure: Env is invalid"): "accepted",
    # urls are never fetched (DOCUMENTS.md), so their syntax is not checked
    ("descriptor_test.go", "expected failure: urls does not match format (invalide url characters)"): "accepted",
}


def _spec_cases(schema_dir):
    """(file, comment, kind, text, invalid) of every case of the schema tests: a Go struct
    literal holding the document as a raw string, then ``fail: true|false``."""
    cases = []
    for name in SPEC_CASE_FILES:
        with open(os.path.join(schema_dir, name), encoding="utf-8") as f:
            src = f.read()
        start = 0
        for m in re.finditer(r"\bfail:\s*(true|false)", src):
            chunk = src[start:m.start()]
            start = m.end()
            docs = list(re.finditer(r"(\w+):\s*`([^`]*)`", chunk))
            assert docs, f"{name}: no document before {m.group(0)!r} at {m.start()}"
            doc = docs[-1]
            comments = re.findall(r"//\s*(.*)", chunk[:doc.start()])
            cases.append((name, comments[-1].strip() if comments else "", doc.group(1), doc.group(2),
                          m.group(1) == "true"))
    # the spec's own examples, which its spec_test.go validates: each is valid
    kinds = {"manifest.v1": "manifest", "index.v1": "imageIndex", "config.v1": "config", "descriptor.v1": "descriptor"}
    for name in ("manifest.md", "image-index.md", "config.md", "descriptor.md", "image-layout.md"):
        with open(os.path.join(schema_dir, "..", name), encoding="utf-8") as f:
            src = f.read()
        for m in re.finditer(r"```json,title=([^&\n]*)&mediatype=application/vnd\.oci\.(?:image\.)?(\w+\.v1)%2Bjson\n(.*?)```",
                             src, re.S):
            if m.group(2) in kinds:
                cases.append((name, m.group(1).replace("%20", " "), kinds[m.group(2)], m.group(3), False))
    return cases


def _read_spec_document(kind, text):
    data = text.encode()
    if kind == "descriptor":
        return model.parse_descriptor(model.load_json(data, "descriptor"), "descriptor")
    if kind == "config":
        try:
            count = len(json.loads(data)["rootfs"]["diff_ids"])
        except (ValueError, KeyError, TypeError):
            count = 0
        return model.parse_config(data, "config", count)
    doc = model.load_json(data, kind)
    media_type = model.document_media_type(doc, None, kind)
    if kind == "manifest":
        return model.parse_manifest(doc, media_type, kind)
    assert kind == "imageIndex", kind
    return model.parse_index(doc, media_type, kind)


def test_the_image_spec_schema_tests_documents_are_read_as_the_schemas_say():
    import corpora
    cases = _spec_cases(corpora.require_corpus("imagespec"))
    assert len(cases) >= 55, len(cases)  # the Go files and the examples still parse here
    wrong, differs = [], set()
    for name, comment, kind, text, invalid in cases:
        try:
            _read_spec_document(kind, text)
            refused = None
        except errors.LaminaError as e:
            refused = str(e)
        if (name, comment) in SPEC_DIFFERENCES:
            differs.add((name, comment))
            if (refused is None) != (SPEC_DIFFERENCES[name, comment] == "accepted"):
                wrong.append(f"{name} '{comment}': documented as {SPEC_DIFFERENCES[name, comment]}, "
                             f"got {refused or 'accepted'}")
        elif (refused is not None) != invalid:
            wrong.append(f"{name} '{comment}': the schema says {'invalid' if invalid else 'valid'}, "
                         f"lamina {'refused: ' + refused if refused else 'accepted it'}")
    assert differs == set(SPEC_DIFFERENCES), set(SPEC_DIFFERENCES) - differs
    assert not wrong, "\n".join(wrong)
