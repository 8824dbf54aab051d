"""Differential fuzzer of the outer archives: ``docker-archive:``, ``oci-archive:`` and ``load``.

test_fuzz_documents.py changes the JSON inside an archive; here the archive itself is drawn:
a ``docker save`` (legacy: ``<id>/layer.tar``, ``<hex>.json``, ``manifest.json``,
``repositories``), an OCI layout (``oci-layout``, ``index.json``, ``blobs/sha256/*``) or both
at once (docker >= 25's save, read by either side) of one image, beside a decoy image's members, written by Python's tarfile (ustar, GNU, PAX), GNU tar
(gnu, oldgnu, ustar, posix, v7) or bsdtar (ustar, pax, gnutar, v7), gzipped or zstd'd now and
then, with its members:

* in any order (the top document first, last or anywhere), spelled ``./x`` or not, with
  directory entries for their parents (before or after them) or without;
* written twice (the same bytes again, or the decoy's: another manifest.json, index.json,
  config or layer under the same name; the tools appending with ``-r``);
* moved to another name and linked there, by a symlink (relative or absolute) or a hardlink
  (the tools store the first name they meet as the data, the next as the link).

Two references read each archive: skopeo (``skopeo copy ARCHIVE oci:``: Go's reader by member
name for ``docker-archive:``, an extraction for ``oci-archive:``) and an extraction (GNU tar
``-x`` as docker's ``load`` extracts the archive, the result packed again plainly and read by
skopeo).  lamina's ``unpack`` of the archive and its ``load`` into a store (then materialized)
must:

* agree with each other (the same tree, or both a one-line LaminaError);
* give, when they read a tree, the tree of every reference that reads one (the decoy is never
  read where the references read the image, and vice versa);
* read the archive when both references read it alike and no member name is written twice
  (a name written twice is refused on purpose: tests/CONFORMANCE.md);
* leave a store that ``fsck`` finds clean.

Seeded and bounded for CI (LAMINA_FUZZ_EXAMPLES: default 100, which here is 8 archives, some
10 s); LAMINA_FUZZ_SEED=N explores others, LAMINA_FUZZ_SHRINK=0 reports a failing archive as
drawn:

    LAMINA_FUZZ_EXAMPLES=3000 LAMINA_FUZZ_SEED=7 LAMINA_FUZZ_SHRINK=0 python -m pytest tests/test_fuzz_archives.py
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import posixpath
import shutil
import subprocess
import tarfile
import tempfile

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

import ocibuild as ob
import test_fuzz_paths as fz
from conftest import require_root, require_tool
from storekit import assert_fsck_clean
from treecmp import compare, snapshot

SETTINGS = settings(fz.SETTINGS, max_examples=max(1, fz.EXAMPLES * 8 // 100))
TAG = "img"
DATA = "data"   # where a linked member's bytes go

# other spellings of a member's name ("slash": a file's, a name a tool reads as a directory's
# when its type is ``\\0`` and Go as a file's named with a slash)
SPELLINGS = {"dot": lambda n: "./" + n, "absolute": lambda n: "/" + n, "double": lambda n: n.replace("/", "//"),
             "dot-inside": lambda n: n.replace("/", "/./"), "slash": lambda n: n + "/",
             "climb": lambda n: "x/../" + n}
WRITERS = ([("tarfile", f) for f in ("ustar", "gnu", "pax")]
           + [("gnutar", f) for f in ("gnu", "oldgnu", "ustar", "posix", "v7")]
           + [("bsdtar", f) for f in ("ustar", "pax", "gnutar", "v7tar")])


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    kind: str          # "file", "dir", "symlink", "hardlink"
    data: bytes = b""  # a file's bytes
    link: str = ""     # a link's target


def _layer(who, shared):
    files = {"etc": None, "etc/base": b"base\n"} if shared else {"who": who, "etc": None, "etc/" + who.decode(): who}
    return ob.tar_bytes(files)


def docker_image(who, tag, spell=lambda n: n):
    """{name: bytes} of a legacy ``docker save`` of one image (a base layer every image shares,
    one of its own), and its manifest.json (naming its members as ``spell`` spells them)."""
    members, names, ids = {}, [], []
    for layer in (_layer(who, True), _layer(who, False)):
        lid = hashlib.sha256(b"v1 " + layer).hexdigest()
        members[f"{lid}/VERSION"] = b"1.0"
        members[f"{lid}/json"] = json.dumps({"id": lid}).encode()
        members[f"{lid}/layer.tar"] = layer
        names.append(f"{lid}/layer.tar")
        ids.append(ob.sha256(layer))
    config = ob.dumps({"architecture": "amd64", "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": ids}})
    cname = ob.sha256(config)[7:] + ".json"
    members[cname] = config
    members["repositories"] = json.dumps({tag.split(":")[0]: {tag.split(":")[1]: names[-1].split("/")[0]}}).encode()
    return members, json.dumps([{"Config": spell(cname), "RepoTags": [tag], "Layers": list(map(spell, names))}]).encode()


def oci_image(who):
    """{name: bytes} of an OCI layout's blobs of one image (layers gzipped), and index.json."""
    members, descs = {}, []

    def blob(data):
        members["blobs/sha256/" + ob.sha256(data)[7:]] = data
    layers = [_layer(who, True), _layer(who, False)]
    for layer in layers:
        gz = ob.gz(layer)
        blob(gz)
        descs.append(ob.desc(ob.OCI_LAYER_GZIP, gz))
    config = ob.dumps({"architecture": "amd64", "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": [ob.sha256(x) for x in layers]}})
    blob(config)
    manifest = ob.dumps({"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST,
                         "config": ob.desc(ob.OCI_CONFIG, config), "layers": descs})
    blob(manifest)
    members["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    index = ob.dumps({"schemaVersion": 2, "mediaType": ob.OCI_INDEX, "manifests": [
        ob.desc(ob.OCI_MANIFEST, manifest, annotations={"org.opencontainers.image.ref.name": TAG})]})
    return members, index


def hybrid_image(who, tag):
    """An OCI layout's blobs of one image with its index.json and a manifest.json naming the
    same blobs, as docker >= 25 saves it ({name: bytes}, without either), and both."""
    members, index = oci_image(who)
    manifest = json.loads(members["blobs/sha256/" + json.loads(index)["manifests"][0]["digest"][7:]])
    entry = {"Config": "blobs/sha256/" + manifest["config"]["digest"][7:], "RepoTags": [tag],
             "Layers": ["blobs/sha256/" + d["digest"][7:] for d in manifest["layers"]]}
    return members, index, json.dumps([entry]).encode()


def _with_b(kind, top_a, top_b):
    """A's top document naming B too (as ``fz/b:1``, ``other``), after A."""
    if kind in ("docker", "hybrid-docker"):
        entry = json.loads(top_b)[0]
        entry["RepoTags"] = ["fz/b:1"]
        return json.dumps(json.loads(top_a) + [entry]).encode()
    index, other = json.loads(top_a), json.loads(top_b)["manifests"][0]
    other["annotations"] = {"org.opencontainers.image.ref.name": "other"}
    index["manifests"].append(other)
    return ob.dumps(index)


@st.composite
def archives(draw):
    """(kind, writer, compression, [Member], what was done): an archive of image A beside
    decoy B's members.  ``kind``: "docker", "oci", or docker >= 25's archive that is both, read
    by its manifest.json ("hybrid-docker") or its index.json ("hybrid-oci")."""
    kind = draw(st.sampled_from(["docker", "oci", "hybrid-docker", "hybrid-oci"]))
    how, notes = None, []
    if kind == "docker":
        how = draw(st.sampled_from([None] * 3 + list(SPELLINGS)))   # manifest.json's names
        (a, top_a), (b, top_b) = docker_image(b"A", "fz/a:1", SPELLINGS.get(how, lambda n: n)), docker_image(b"B", "fz/a:1")
        top = "manifest.json"
        if draw(fz.one_in(4)):   # layer.tar members gzipped (docker's load and skopeo inflate them)
            a = {n: ob.gz(d) if n.endswith("/layer.tar") else d for n, d in a.items()}
            notes.append("layer.tar members gzipped")
    elif kind.startswith("hybrid"):
        (a, index_a, manifest_a), (b, index_b, manifest_b) = hybrid_image(b"A", "fz/a:1"), hybrid_image(b"B", "fz/a:1")
        if kind == "hybrid-docker":   # (the other side's document is a member like any other)
            top, top_a, top_b, a["index.json"], b["index.json"] = "manifest.json", manifest_a, manifest_b, index_a, index_b
        else:
            top, top_a, top_b, a["manifest.json"], b["manifest.json"] = "index.json", index_a, index_b, manifest_a, manifest_b
    else:
        (a, top_a), (b, top_b) = oci_image(b"A"), oci_image(b"B")
        top = "index.json"
    files = dict(a)
    decoys = {n: d for n, d in b.items() if n not in a}
    both = draw(fz.one_in(4))   # the top document names B too, under another name
    if both or draw(st.booleans()):
        files.update(decoys)
    files[top] = _with_b(kind, top_a, top_b) if both else top_a
    if both and kind.startswith("hybrid"):   # (B in the other side's document too: CONFORMANCE.md)
        other = "index.json" if top == "manifest.json" else "manifest.json"
        files[other] = _with_b("hybrid-oci" if other == "index.json" else "docker", files[other], b[other])
    if draw(st.booleans()):
        files["notes.json"] = top_b     # the decoy's top document under another name
    names = draw(st.permutations(sorted(files)))
    if draw(fz.one_in(3)):
        names = [top] + [n for n in names if n != top]
    elif draw(fz.one_in(3)):
        names = [n for n in names if n != top] + [top]
    members = [Member(n, "file", files[n]) for n in names]
    done = ([f"manifest.json names as {how}"] if how else []) + notes
    done += ["B named too"] if both else []
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["twice", "twice-other", "symlink", "hardlink"]))
        i = draw(st.integers(0, len(members) - 1))
        m = members[i]
        if m.kind != "file":
            continue
        if op == "twice":
            members.insert(draw(st.integers(i + 1, len(members))), m)
        elif op == "twice-other":
            other = top_b if m.name == top else b.get(m.name) or next(iter(decoys.values()))
            members.insert(draw(st.integers(0, len(members))), Member(m.name, "file", other))
        else:
            moved = f"{DATA}/{len(done)}"
            if op == "symlink":
                absolute = draw(st.booleans())
                link = "/" + moved if absolute else posixpath.relpath(moved, posixpath.dirname(m.name) or ".")
                members[i] = Member(m.name, "symlink", link=link)
                if draw(fz.one_in(3)):   # through a second symlink
                    hop = f"{DATA}/{len(done)}-hop"
                    members.insert(draw(st.integers(0, len(members))),
                                   Member(hop, "symlink", link=posixpath.basename(moved)))
                    members[i] = Member(m.name, "symlink", link=link.replace(moved, hop))
            else:
                members[i] = Member(m.name, "hardlink", link=moved)
            # the data before the link or after it (a hardlink to a later member is no archive
            # any tool extracts: refused; the tools write no such thing)
            members.insert(draw(st.integers(0, len(members))), Member(moved, "file", m.data))
        done.append(f"{op} {m.name}")
    if draw(st.booleans()):   # the parents' directory entries, each before or after its members
        parents = sorted({posixpath.dirname(m.name) for m in members} - {""})
        for p in parents:
            members.insert(draw(st.integers(0, len(members))), Member(p, "dir"))
        done.append("parents")
    if draw(fz.one_in(3)):
        members = [dataclasses.replace(m, name="./" + m.name) for m in members]
        done.append("./ names")
    elif draw(fz.one_in(3)):   # a few names spelled otherwise, each its own way
        for i, m in enumerate(members):
            how = draw(st.sampled_from([None] * 4 + list(SPELLINGS)))
            if how is not None and (how != "slash" or m.kind == "file"):
                members[i] = dataclasses.replace(m, name=SPELLINGS[how](m.name))
                done.append(f"{m.name} as {how}")
    writer = draw(st.sampled_from(WRITERS))
    compression = draw(st.sampled_from(["none"] * 6 + ["gzip", "zstd"]))
    return kind, writer, compression, members, done


def _tarfile_write(path, members, fmt):
    fmt = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}[fmt]
    with tarfile.open(path, "w", format=fmt) as t:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.mtime = ob.MTIME
            if m.kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif m.kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if m.kind == "symlink" else tarfile.LNKTYPE
                info.linkname = m.link
            else:
                info.size, info.mode = len(m.data), 0o644
            t.addfile(info, io.BytesIO(m.data) if m.kind == "file" else None)


def _key(name):
    """The member a name names (leading ``/`` and ``./``, ``..`` and doubled slashes resolved)."""
    return posixpath.normpath("/" + name).lstrip("/")


def _tool_write(path, members, tool, fmt, work):
    """The members written by GNU tar or bsdtar in their order: staged in a directory (a name
    that comes again starts another directory, appended with ``-r``), named one by one."""
    if any(m.name.endswith("/") and m.kind == "file" for m in members):
        return "a file named with a slash cannot be staged"
    # (the tools read an absolute name from the host, whatever -C says: staged there, it would
    # write the host's root)
    if any(posixpath.isabs(m.name) or ".." in m.name.split("/") for m in members):
        return "an absolute or climbing name is no file a tool could be given"
    data = {_key(m.name): m.data for m in members if m.kind == "file"}
    links = {_key(m.name): _key(m.link) for m in members if m.kind == "hardlink"}
    runs, seen = [[]], set()
    for m in members:
        key = _key(m.name)
        if key in seen:
            runs.append([])
            seen = set()
        if m.kind == "hardlink" and _key(m.link) not in seen:
            # (a tool stores the first name of an inode it meets as the data: a link to a
            # member not staged before it is a file of its own here)
            target = _key(m.link)
            for _ in range(len(members)):
                target = links.get(target, target)
            if target not in data:
                return "a hardlink to nothing the tools could stage"
            m = Member(m.name, "file", data[target])
        runs[-1].append(m)
        seen.add(key)
    for n, run in enumerate(runs):
        stage = os.path.join(work, f"stage{n}")
        os.makedirs(stage)
        for m in run:
            where = os.path.join(stage, m.name)
            assert os.path.realpath(where).startswith(os.path.realpath(stage) + "/"), where
            os.makedirs(os.path.dirname(where), exist_ok=True)
            if m.kind == "dir":
                os.makedirs(where, exist_ok=True)
            elif m.kind == "symlink":
                os.symlink(m.link, where)
            elif m.kind == "hardlink":
                os.link(os.path.join(stage, m.link), where)
            else:
                with open(where, "wb") as f:
                    f.write(m.data)
        listing = os.path.join(work, f"list{n}")
        with open(listing, "w") as f:
            f.writelines(m.name + "\n" for m in run)
        mode = "-cf" if n == 0 else "-rf"
        if tool == "gnutar":
            cmd = ["tar", mode, path, f"--format={fmt}", "--no-recursion", "-C", stage, "-T", listing]
        else:
            cmd = ["bsdtar", mode, path, "--format", fmt, "-n", "-C", stage, "-T", listing]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return proc.stderr.strip()   # (a format that cannot hold a name: v7 and a long one)
    return None


def write_archive(path, members, writer, compression, work):
    """The archive at ``path``; None, or why the writer could not write it."""
    tool, fmt = writer
    if tool == "tarfile":
        try:
            _tarfile_write(path, members, fmt)
        except ValueError as e:
            return str(e)
    else:
        why = _tool_write(path, members, tool, fmt, work)
        if why:
            return why
    if compression != "none":
        with open(path, "rb") as f:
            data = f.read()
        if compression == "gzip":
            data = gzip.compress(data, mtime=0)
        else:
            data = subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout
        with open(path, "wb") as f:
            f.write(data)
    return None


def _tree(path):
    return snapshot(path)


def skopeo_tree(spec, work, name):
    """skopeo's reading of ``spec``: its copy to an OCI layout, that unpacked (a Snapshot), or
    the error skopeo gave (a string)."""
    import lamina
    layout = os.path.join(work, name + "-layout")
    proc = subprocess.run(["skopeo", "copy", "-q", spec, f"oci:{layout}:x"], capture_output=True, text=True)
    if proc.returncode != 0:
        return "skopeo: " + proc.stderr.strip()
    return _tree(lamina.unpack(f"oci:{layout}:x", os.path.join(work, name)).dest)


def extracted_tree(archive, transport, work):
    """The archive as docker's load sees it: extracted (GNU tar), packed again plainly, read by
    skopeo; or why not (a string)."""
    out = os.path.join(work, "extracted")
    os.makedirs(out)
    proc = subprocess.run(["tar", "-xf", archive, "-C", out], capture_output=True, text=True)
    if proc.returncode != 0:
        return "tar -x: " + proc.stderr.strip()
    again = os.path.join(work, "again.tar")
    # (docker's load reads the extracted files through their symlinks: -h follows them)
    proc = subprocess.run(["tar", "-cf", again, "-h", "--hard-dereference", "-C", out, "."], capture_output=True, text=True)
    if proc.returncode != 0:
        return "tar -c: " + proc.stderr.strip()
    return skopeo_tree(f"{transport}:{again}:{_ref(transport)}", work, "again")


def _ref(transport):
    return "fz/a:1" if transport == "docker-archive" else TAG


def lamina_trees(archive, transport, work, with_load=True):
    """{way: Snapshot or LaminaError} of lamina's ``unpack`` and ``load``; the store's fsck."""
    import lamina
    from lamina.errors import LaminaError
    from lamina.store import Store
    from lamina.store import materialize as mat
    from lamina.transports import load
    out = {}
    spec = f"{transport}:{archive}:{_ref(transport)}"
    try:
        out["unpack"] = _tree(lamina.unpack(spec, os.path.join(work, "unpack"), platform="linux/amd64").dest)
    except LaminaError as e:
        out["unpack"] = e
    if not with_load:
        return out
    store = Store(os.path.join(work, "store"))
    try:
        try:
            # (an OCI archive's ref.name is no image name to load: A is its manifest)
            a = json.loads(oci_image(b"A")[1])["manifests"][0]["digest"]
            images = [i for i in load(archive, store=store, platform="linux/amd64")
                      if (any(str(n).endswith("/fz/a:1") for n in i.names) if transport == "docker-archive"
                          else i.image.manifest_digest == a)]
            assert len(images) == 1, images
            mat.materialize(store, images[0].image, os.path.join(work, "load"))
            out["load"] = _tree(os.path.join(work, "load"))
        except LaminaError as e:
            out["load"] = e
        assert_fsck_clean(store, "fsck after the load")
    finally:
        store.close()
    return out


@pytest.fixture(scope="module")
def needs():
    require_root()
    for tool in ("skopeo", "tar", "bsdtar", "zstd"):
        require_tool(tool)


def _image_a(work):
    import lamina
    layout = os.path.join(work, "a-layout")
    members, index = oci_image(b"A")
    for name, data in list(members.items()) + [("index.json", index)]:
        os.makedirs(os.path.dirname(os.path.join(layout, name)), exist_ok=True)
        with open(os.path.join(layout, name), "wb") as f:
            f.write(data)
    return _tree(lamina.unpack(f"oci:{layout}:{TAG}", os.path.join(work, "a")).dest)


@seed(20261343 + fz.SEED)
@SETTINGS
@given(case=archives())
def test_an_archive_is_read_as_skopeo_and_docker_read_it_or_refused(needs, case):
    kind, writer, compression, members, done = case
    fz._count_case()
    work = tempfile.mkdtemp(prefix="lamina-fuzz-archives-", dir="/var/tmp")
    try:
        archive = os.path.join(work, "image.tar")
        if write_archive(archive, members, writer, compression, work):
            return
        transport = "oci-archive" if kind.endswith("oci") else "docker-archive"
        context = (f"{kind} archive by {'/'.join(writer)} ({compression}): {', '.join(done) or 'plain'}; "
                   f"members {[(m.name, m.kind, m.link) if m.kind != 'file' else m.name for m in members]}")
        refs = {"skopeo": skopeo_tree(f"{transport}:{archive}:{_ref(transport)}", work, "skopeo"),
                "extracted": extracted_tree(archive, transport, work)}
        # (load reads docker's side of an archive that is both)
        ours = lamina_trees(archive, transport, work, with_load=kind != "hybrid-oci")
        image_a = _image_a(work)
        for name, r in ours.items():
            if isinstance(r, Exception):
                assert "\n" not in str(r).strip() and str(r).strip(), f"{context}: {name}: not one line: {r!r}"
        # (load takes every image: a broken B fails it, not unpack of A)
        assert len(ours) == 1 or "B named too" in done or \
            isinstance(ours["unpack"], Exception) == isinstance(ours["load"], Exception), \
            f"{context}: unpack {ours['unpack']!r} but load {ours['load']!r}"
        read = {k: v for k, v in refs.items() if not isinstance(v, str)}
        for name, r in ours.items():
            if isinstance(r, Exception):
                continue
            # (where neither reference reads it, as an absolute symlink docker's load reads in
            # the archive and skopeo on the host: image A, the one the archive names, or nothing)
            for ref, tree in {**read, "image A": image_a}.items():
                diff = compare(tree, r, labels=(ref, name))
                assert not diff, f"{context}: lamina's {name} read another image than {ref} ({refs}):\n{diff}"
        twice = len({_key(m.name) for m in members if m.kind != "dir"}) < sum(
            m.kind != "dir" for m in members)
        if len(read) == 2 and not compare(read["skopeo"], read["extracted"]) and not twice:
            for name, r in ours.items():
                assert not isinstance(r, Exception), f"{context}: both references read it, lamina's {name}: {r}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
