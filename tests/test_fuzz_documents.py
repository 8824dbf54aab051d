"""Mutation fuzzer on an image's JSON documents: index.json, an image index, a manifest, a
config, and docker's manifest.json.

test_fuzz_mutate.py changes tar headers; here one document of a small image is changed at the
JSON level: a field dropped, a list entry or a key written twice (the duplicate key in the text,
with another value first), a value given another type (null, a number where a string goes, a
string where a number goes, a list, an object, a number past 64 bits, a float), a number
spelled otherwise (``122.0``, ``1e0``, ``0122``), or a field added that changes what the
document is or how a blob is fetched (``manifests`` in a manifest, ``urls`` or ``data`` in a
descriptor, a subject, another media type).  The documents above the changed one are then
rewritten to name its new digest and size, so that the change reaches the readers' logic
instead of their digest check.  The images: one manifest named in index.json, or an index
(linux/amd64 and linux/arm64) named there; OCI or Docker media types; a layer gzipped or plain;
one manifest in three also as docker >= 25 saves it (the layout and a manifest.json).

Every mutant is read by ``unpack oci:`` (dir and overlay), ``unpack oci-archive:``, ``copy``
into a store then materialize() (a docker >= 25 archive: ``unpack oci-archive:``, ``unpack
docker-archive:``, ``copy`` and ``load``), one in eight (LAMINA_FUZZ_REGISTRY=1: all) also
pushed to a registry (tests/registryfixture.py), pulled, unpacked from it (``unpack docker://``
into a directory and in the overlay format, mounted) and, on an amd64 machine, unpacked by the
CLI with no ``--platform`` (as ``unpack oci:`` is too), and must give:

* the linux/amd64 image's tree, or a LaminaError of one line (never another exception);
* the same answer on every path: the tree everywhere or an error everywhere (docker's readers
  of manifest.json and the OCI ones of index.json each among themselves when one of those two
  is the changed one; the paths that ask for no platform among themselves, since with
  ``--platform`` a manifest's config must say that platform, as docker's pull holds it to);
* a store that ``fsck`` finds clean, whichever way the copy went;
* where the store took it, ``inspect``, ``images`` and ``save`` (both formats) that work, and a
  ``history`` that works or refuses in one line (as docker's does a history the layers do not
  match).

Seeded and bounded for CI (LAMINA_FUZZ_EXAMPLES: default 100, which here is 30 mutants, some
10 s); LAMINA_FUZZ_SEED=N explores others, LAMINA_FUZZ_SHRINK=0 reports a failing mutant as drawn:

    LAMINA_FUZZ_EXAMPLES=3000 LAMINA_FUZZ_SEED=7 LAMINA_FUZZ_REGISTRY=1 python -m pytest tests/test_fuzz_documents.py
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import tarfile
import tempfile

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

import ocibuild as ob
import test_fuzz_paths as fz
from conftest import require_root
from everypath import overlay_mount
from storekit import assert_fsck_clean
from treecmp import compare, snapshot

SETTINGS = settings(fz.SETTINGS, max_examples=max(1, fz.EXAMPLES * 3 // 10))
REGISTRY = os.environ.get("LAMINA_FUZZ_REGISTRY") == "1"
TAG = "img"

# a value of another type, or one a reader must be careful with
ODD_VALUES = [None, 0, -1, 1.5, 2 ** 64, "", "x", "0", [], {}, True, ["x"], {"x": 1}]


def _layer(files, plain):
    raw = ob.tar_bytes(files)
    return (raw, ob.OCI_LAYER) if plain else (ob.gz(raw), ob.OCI_LAYER_GZIP), ob.sha256(raw)


def build_image(kind, docker, plain):
    """(documents, blobs, top): the image's JSON documents by digest (as objects), its layer
    blobs by digest, and index.json's object.  ``kind``: "manifest" (named in index.json) or
    "index" (an index of linux/amd64 and linux/arm64 named there)."""
    docs, blobs = {}, {}

    def add_doc(obj, media_type, **extra):
        data = ob.dumps(obj)
        docs[ob.sha256(data)] = obj
        return ob.desc(media_type, data, **extra)

    def image(arch, content):
        descs, ids = [], []
        for files, p in (({"etc": None, "etc/a": b"A" * 10}, False), ({"etc/b": content}, plain)):
            (blob, mt), diff_id = _layer(files, p)
            if docker:
                mt = ob.DOCKER_LAYER_GZIP if mt == ob.OCI_LAYER_GZIP else "application/vnd.docker.image.rootfs.diff.tar"
            blobs[ob.sha256(blob)] = blob
            descs.append(ob.desc(mt, blob))
            ids.append(diff_id)
        config = {"architecture": arch, "os": "linux", "config": {"Env": ["PATH=/bin"], "Labels": {"a": "b"}},
                  "rootfs": {"type": "layers", "diff_ids": ids},
                  "history": [{"created_by": "one"}, {"created_by": "two"}]}
        cdesc = add_doc(config, ob.DOCKER_CONFIG if docker else ob.OCI_CONFIG)
        mt = ob.DOCKER_MANIFEST if docker else ob.OCI_MANIFEST
        return add_doc({"schemaVersion": 2, "mediaType": mt, "config": cdesc, "layers": descs,
                        "annotations": {"org.example": "x"}}, mt)

    amd64 = image("amd64", b"amd64\n")
    if kind == "index":
        arm64 = image("arm64", b"arm64\n")
        mt = ob.DOCKER_LIST if docker else ob.OCI_INDEX
        top_desc = add_doc({"schemaVersion": 2, "mediaType": mt, "manifests": [
            ob.with_platform(amd64, "linux", "amd64"), ob.with_platform(arm64, "linux", "arm64")]}, mt)
    else:
        top_desc = amd64
    top_desc = dict(top_desc, annotations={"org.opencontainers.image.ref.name": TAG})
    top = {"schemaVersion": 2, "mediaType": ob.OCI_INDEX, "manifests": [top_desc]}
    return docs, blobs, top


def _places(obj, path=()):
    """Every (path, value) in a JSON object, the root aside."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        return
    for k, v in items:
        yield path + (k,), v
        yield from _places(v, path + (k,))


def _get(obj, path):
    for k in path:
        obj = obj[k]
    return obj


class Spelled:
    """A number as JSON may spell it otherwise (``122.0``, ``1.22e2``, ``0122``): Go refuses a
    fraction or exponent for an integer field, Python's int() of a float does not."""

    def __init__(self, text):
        self.text = text


# fields a descriptor may gain: some change how a reader must fetch it (``urls``: a foreign
# layer; ``data``: the bytes embedded, here another blob's)
DESCRIPTOR_EXTRAS = [("urls", ["http://example.invalid/blob"]), ("data", base64.b64encode(b"other bytes").decode()),
                     ("data", "not base64!"), ("artifactType", "application/x.example"),
                     ("platform", {"os": "linux", "architecture": "arm64"}), ("annotations", {"a": 1}),
                     ("mediaType", "application/vnd.oci.image.layer.v1.tar+zstd"),
                     ("mediaType", "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
                     ("mediaType", "application/vnd.oci.image.manifest.v1+json; charset=utf-8")]


# fields a document may gain: an index's in a manifest and a manifest's in an index (the
# ambiguous documents OCI 1.1 warns of), a subject, a config in an index
DOCUMENT_EXTRAS = [("manifests", []), ("layers", []),
                   ("config", {"mediaType": ob.OCI_CONFIG, "digest": "sha256:" + "0" * 64, "size": 2}),
                   ("subject", {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "digest": "sha256:" + "1" * 64, "size": 3}),
                   ("schemaVersion", 1), ("mediaType", "application/vnd.docker.distribution.manifest.v1+json")]


# fields a manifest.json entry may gain (docker's LayerSources, Parent; a key of another case)
ARCHIVE_EXTRAS = [("LayerSources", {}), ("Parent", "sha256:" + "2" * 64), ("config", "x.json"),
                  ("repoTags", ["other/img:2"]), ("RepoTags", ["other/img:2", "fz/img:1"])]
MANIFEST_JSON = "manifest.json"  # the target naming the archive's manifest.json


def manifest_json(docs, top):
    """docker's manifest.json of the layout's one image: its config and layers by blob path."""
    manifest = docs[top["manifests"][0]["digest"]]
    path = lambda d: "blobs/sha256/" + d.split(":", 1)[1]  # noqa: E731
    return [{"Config": path(manifest["config"]["digest"]), "RepoTags": ["fz/img:1"],
             "Layers": [path(l["digest"]) for l in manifest["layers"]]}]


class DuplicateKey:
    """A key written twice: first with ``first``, then with the object's own value (Python's
    json and Go's both take the last; a reader that takes the first reads another document)."""

    def __init__(self, key, first, last):
        self.key, self.first, self.last = key, first, last


def _encode(obj):
    """JSON text of ``obj``, a DuplicateKey within written as two keys, a Spelled number as spelled."""
    if isinstance(obj, dict):
        parts = []
        for k, v in obj.items():
            if isinstance(v, DuplicateKey):
                parts.append(json.dumps(k) + ":" + _encode(v.first))
                parts.append(json.dumps(k) + ":" + _encode(v.last))
            else:
                parts.append(json.dumps(k) + ":" + _encode(v))
        return "{" + ",".join(parts) + "}"
    if isinstance(obj, list):
        return "[" + ",".join(_encode(v) for v in obj) + "]"
    if isinstance(obj, Spelled):
        return obj.text
    return json.dumps(obj)


@st.composite
def mutants(draw):
    kind = draw(st.sampled_from(["manifest", "index"]))
    docker = draw(fz.one_in(3))
    plain = draw(fz.one_in(3))
    docs, blobs, top = build_image(kind, docker, plain)
    hybrid = kind == "manifest" and draw(fz.one_in(3))
    if hybrid:  # docker >= 25's save: the layout and manifest.json in one archive
        docs[MANIFEST_JSON] = manifest_json(docs, top)
    # which document: index.json (None), manifest.json or one of the blobs, by digest
    target = draw(st.sampled_from([None] + sorted(docs)))
    obj = json.loads(json.dumps(top if target is None else docs[target]))
    places = list(_places(obj))
    op = draw(st.sampled_from(["drop", "retype", "retype", "twice", "add", "spell"]))
    if op == "add":
        dicts = [(p, v) for p, v in [((), obj)] + places if isinstance(v, dict)]
        where, d = draw(st.sampled_from(dicts))
        extras = DESCRIPTOR_EXTRAS if "digest" in d else ARCHIVE_EXTRAS if "Config" in d else DOCUMENT_EXTRAS
        key, value = draw(st.sampled_from(extras))
        d[key] = value
        return kind, docker, plain, target, (op, where + (key,)), obj, (docs, blobs, top)
    if op == "spell":
        numbers = [(p, v) for p, v in places if type(v) is int]
        if not numbers:
            op = "drop"
        else:
            path, value = draw(st.sampled_from(numbers))
            text = draw(st.sampled_from([f"{value}.0", f"{value}e0", f"0{value}", f"{value}.5", f"-{value}"]))
            _get(obj, path[:-1])[path[-1]] = Spelled(text)
            return kind, docker, plain, target, (op + " " + text, path), obj, (docs, blobs, top)
    path, value = draw(st.sampled_from(places))
    parent = _get(obj, path[:-1])
    key = path[-1]
    if op == "drop":
        del parent[key]
    elif op == "retype":
        parent[key] = draw(st.sampled_from([v for v in ODD_VALUES if v != value or type(v) is not type(value)]))
    elif isinstance(parent, list):
        parent.insert(key, json.loads(json.dumps(value)))
    else:
        parent[key] = DuplicateKey(key, draw(st.sampled_from(ODD_VALUES)), value)
    return kind, docker, plain, target, (op, path), obj, (docs, blobs, top)


def write_mutant(layout, docs, blobs, top, target, mutated):
    """The layout of the image with document ``target`` (None: index.json; MANIFEST_JSON: the
    archive's manifest.json) replaced by ``mutated``, every document above it rewritten to name
    it by its new digest and size (manifest.json its config by its new path)."""
    lay = ob.Layout(layout)
    for data in blobs.values():
        lay.blob(data)
    listed = docs.get(MANIFEST_JSON)
    docs = {d: o for d, o in docs.items() if d != MANIFEST_JSON}
    texts = {d: ob.dumps(o) for d, o in docs.items()}
    renamed, renamed_digest = {}, {}
    if target in docs:
        renamed[target] = _encode(mutated).encode()
        del texts[target]

    def fix(o):
        # a descriptor naming a rewritten document names its new bytes (the mutation's own
        # field aside: a descriptor the mutation changed no longer names the old digest)
        if isinstance(o, dict):
            d = o.get("digest")
            if isinstance(d, str) and d in renamed_digest:
                o = dict(o, digest=renamed_digest[d][0], size=renamed_digest[d][1])
            return {k: fix(v) for k, v in o.items()}
        if isinstance(o, list):
            return [fix(v) for v in o]
        return o

    while renamed:
        old, data = renamed.popitem()
        renamed_digest[old] = (ob.sha256(data), len(data))
        lay.blob(data)
        # the documents that name it (a manifest names its config, an index its manifests)
        for d in list(texts):
            if old in texts[d].decode():
                renamed[d] = ob.dumps(fix(docs[d]))
                del texts[d]
    for data in texts.values():
        lay.blob(data)
    with open(os.path.join(layout, "index.json"), "w") as f:
        f.write(_encode(mutated if target is None else fix(top)))
    if listed is not None:
        text = _encode(mutated) if target == MANIFEST_JSON else json.dumps(listed)
        for old, (new, _) in renamed_digest.items():
            text = text.replace(old.split(":", 1)[1], new.split(":", 1)[1])
        with open(os.path.join(layout, MANIFEST_JSON), "w") as f:
            f.write(text)
    return layout


def _attempt(fn):
    import lamina.errors
    try:
        return fn()
    except lamina.errors.LaminaError as e:
        return e


def read_every_way(work, layout):
    """{path: Snapshot or LaminaError} of the layout's image ``TAG`` (linux/amd64); a layout
    with a manifest.json (docker >= 25's save) is read as the archive it is, by both its readers
    and ``load``."""
    import lamina
    from lamina.store import Store
    from lamina.store import materialize as mat
    from lamina.transports import copy, load
    os.makedirs(work)
    archive = os.path.join(work, "image.tar")
    with tarfile.open(archive, "w") as t:
        for name in sorted(os.listdir(layout)):
            t.add(os.path.join(layout, name), name)
    hybrid = os.path.exists(os.path.join(layout, MANIFEST_JSON))
    src = f"oci-archive:{archive}:{TAG}" if hybrid else f"oci:{layout}:{TAG}"

    def unpacked(spec, name, **kw):
        return lambda: snapshot(lamina.unpack(spec, os.path.join(work, name), platform="linux/amd64", **kw).dest)
    out = {"dir": _attempt(unpacked(src, "dir"))}
    if machine_is_amd64():
        # no platform asked for: linux/amd64 is this machine's, but a manifest's config is then
        # not held to it (as docker pull without --platform): a side of its own (NO_PLATFORM)
        out["dir-no-platform"] = _attempt(lambda: snapshot(lamina.unpack(src, os.path.join(work, "dir-any")).dest))
    if hybrid:
        out["docker-archive"] = _attempt(unpacked(f"docker-archive:{archive}", "docker-archive"))
    else:
        def overlay():
            stats = lamina.unpack(src, os.path.join(work, "ovl"), format="overlay", platform="linux/amd64")
            with overlay_mount(stats.layer_dirs, os.path.join(work, "ovl-mnt")) as mnt:
                return snapshot(mnt)
        out["overlay-mount"] = _attempt(overlay)
        out["oci-archive"] = _attempt(unpacked(f"oci-archive:{archive}:{TAG}", "archive"))
    store = Store(os.path.join(work, "store"))
    try:
        def stored():
            copy(src, "fz/img:1", store=store, platform="linux/amd64")
            dest = os.path.join(work, "store-copy")
            mat.materialize(store, "fz/img:1", dest)
            return snapshot(dest)
        out["store-copy"] = _attempt(stored)
        if hybrid:
            def loaded():
                images = load(archive, store=store, platform="linux/amd64")
                assert len(images) == 1, images
                dest = os.path.join(work, "store-load")
                mat.materialize(store, images[0].image, dest)
                return snapshot(dest)
            out["load"] = _attempt(loaded)
        assert_fsck_clean(store, "fsck after the copy")
    finally:
        store.close()
    return out


def _push_mutant(host, repo, layout):
    """Every blob of the layout into the registry as it is, the manifests index.json's entry
    leads to by digest, the entry's document as tag 1 (under the media type the entry gives);
    False when the registry refuses one (its own checks are not lamina's)."""
    from test_documents import _push_blob, _push_manifest
    for name in sorted(os.listdir(os.path.join(layout, "blobs", "sha256"))):
        with open(os.path.join(layout, "blobs", "sha256", name), "rb") as f:
            _push_blob(host, repo, f.read())

    def document(desc):
        with open(os.path.join(layout, "blobs", "sha256", desc["digest"].split(":", 1)[1]), "rb") as f:
            return f.read()
    try:
        with open(os.path.join(layout, "index.json")) as f:
            top = json.load(f)["manifests"][0]
        data = document(top)
        children = json.loads(data).get("manifests") or []
        pushes = [(c["digest"], document(c), c["mediaType"]) for c in children] + [("1", data, top["mediaType"])]
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError):
        return False  # (a mutant no registry client could push)
    return all(isinstance(mt, str) and _push_manifest(host, repo, ref, body, mt)[0] == 201
               for ref, body, mt in pushes)


def registry_ways(work, layout):
    """{path: Snapshot or LaminaError} of the mutant pushed to a registry, pulled and unpacked
    from it; {} when the registry refuses it."""
    import lamina
    from lamina.registry.source import RegistrySource
    from lamina.store import Store
    from lamina.store import materialize as mat
    from everypath import _registry_client, shared_registry
    reg = shared_registry()
    repo = f"docs{next(_pushed)}-{os.getpid()}"
    if not _push_mutant(reg.host, repo, layout):
        return {}
    ref, client = f"{reg.host}/{repo}:1", _registry_client(reg.host)
    out = {}

    def pulled():
        store = Store(os.path.join(work, "store-pulled"))
        try:
            lamina.pull(ref, store=store, platform="linux/amd64", client=client)
            mat.materialize(store, ref, os.path.join(work, "registry-pull"))
            return snapshot(os.path.join(work, "registry-pull"))
        finally:
            store.close()
    out["registry-pull"] = _attempt(pulled)
    out["registry-unpack"] = _attempt(lambda: snapshot(lamina.unpack(
        RegistrySource(ref, client=client), os.path.join(work, "registry-unpack"), platform="linux/amd64").dest))

    def overlay():
        stats = lamina.unpack(RegistrySource(ref, client=client), os.path.join(work, "registry-ovl"),
                              format="overlay", platform="linux/amd64")
        with overlay_mount(stats.layer_dirs, os.path.join(work, "registry-ovl-mnt")) as mnt:
            return snapshot(mnt)
    out["registry-overlay"] = _attempt(overlay)
    if machine_is_amd64():  # (the CLI's ``unpack docker://`` with no --platform: the machine's own)
        out["registry-cli-no-platform"] = cli_attempt("unpack", f"docker://{ref}", os.path.join(work, "registry-cli"))
    return out


# the paths that ask for no platform: where the others name linux/amd64, a manifest whose config
# says another platform (or none: "architecture": "") is refused by them and taken by these
NO_PLATFORM = "no-platform"


def machine_is_amd64():
    from lamina.platform import Platform
    host = Platform.host()
    return (host.os, host.architecture) == ("linux", "amd64")


class CliError(Exception):
    """The CLI's refusal: its stderr (``lamina: error: ...``)."""


def cli_attempt(*args):
    """A Snapshot of the CLI's DEST (its last argument), or a CliError of its stderr: an exit
    other than 0 or 1, or a traceback, fails the test."""
    from registryfixture import lamina_cli
    proc = lamina_cli(*args, check=False)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, \
        f"lamina {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
    if proc.returncode:
        return CliError(proc.stderr.strip().removeprefix("lamina: error: "))
    return snapshot(args[-1])


_pushed = __import__("itertools").count()


@pytest.fixture(scope="module")
def needs():
    require_root()


@seed(20261243 + fz.SEED)
@SETTINGS
@given(case=mutants(), registry=st.just(True) if REGISTRY else fz.one_in(8))
def test_a_changed_document_is_read_alike_or_refused_in_one_line(needs, case, registry):
    from verbkit import lamina as cli
    kind, docker, plain, target, (op, path), mutated, (docs, blobs, top) = case
    fz._count_case()
    work = tempfile.mkdtemp(prefix="lamina-fuzz-docs-", dir="/var/tmp")
    try:
        whole = read_every_way(os.path.join(work, "whole"), write_mutant(
            os.path.join(work, "whole-layout"), docs, blobs, top, None, top))
        assert not any(isinstance(r, Exception) for r in whole.values()), whole
        whole = whole["dir"]
        layout = write_mutant(os.path.join(work, "layout"), docs, blobs, top, target, mutated)
        context = (f"{kind} ({'docker' if docker else 'oci'}{', plain layer' if plain else ''}"
                   f"{', in an archive with manifest.json' if MANIFEST_JSON in docs else ''}): "
                   f"{op} {'/'.join(map(str, path))} of {'index.json' if target is None else target}")
        results = read_every_way(os.path.join(work, "mutant"), layout)
        if registry and target not in (None, MANIFEST_JSON):  # (the registry has no index.json)
            results.update(registry_ways(os.path.join(work, "mutant"), layout))
        for name, r in results.items():
            if isinstance(r, Exception):
                assert "\n" not in str(r).strip() and str(r).strip(), f"{context}: {name}: not one line: {r!r}"
        # docker's readers of an archive with both (docker-archive:, load) read manifest.json,
        # the OCI ones index.json: with one of those two changed, each side agrees within itself
        sides = [results]
        if MANIFEST_JSON in docs and target in (None, MANIFEST_JSON):
            sides = [{k: v for k, v in results.items() if (k in ("docker-archive", "load")) == docker_side}
                     for docker_side in (False, True)]
        sides = [part for side in sides for part in ({k: v for k, v in side.items() if (NO_PLATFORM in k) == alone}
                                                     for alone in (False, True)) if part]
        for side in sides:
            failed = sorted(k for k, v in side.items() if isinstance(v, Exception))
            assert not failed or len(failed) == len(side), (f"{context}: {failed} refused "
                                                            f"({[str(side[k]) for k in failed]}) but the others read it")
        failed = sorted(k for k, v in results.items() if isinstance(v, Exception))
        for name, r in results.items():
            if not isinstance(r, Exception):
                diff = compare(whole, r, labels=("the image", name))
                assert not diff, f"{context}: {name} read another image:\n{diff}"
        if "store-copy" not in failed:  # the store's verbs show and save the image it took
            root = os.path.join(work, "mutant", "store")
            for verb in (["inspect", "fz/img:1"], ["history", "--no-trunc", "fz/img:1"], ["images"],
                         ["save", "-o", os.path.join(work, "saved.tar"), "fz/img:1"],
                         ["save", "--format", "oci-archive", "-o", os.path.join(work, "oci.tar"), "fz/img:1"]):
                rc, out, err = cli(root, *verb)
                # (history may refuse a config whose history the layers do not match, as docker's does)
                assert (rc == 0 or (verb[0] == "history" and rc == 1 and err.startswith("lamina: error: ")
                                    and len(err.strip().splitlines()) == 1)) and "Traceback" not in err, \
                    f"{context}: lamina {' '.join(verb)} exited {rc}:\n{err}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
