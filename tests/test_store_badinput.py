"""Bad input is refused with one clear line, and the store is left exactly as it was."""
import gzip
import json
import os

import pytest

import ocibuild as ob
from storekit import fingerprint, lamina

from lamina import errors


@pytest.fixture
def root(tmp_path):
    """A store that already holds one image, so 'unchanged' means something."""
    root = tmp_path / "root"
    lay = ob.Layout(tmp_path / "good")
    lay.add(lay.image([{"keep": b"existing image\n"}]), "keep:1")
    lamina(root, "copy", f"oci:{lay.root}:keep:1", "keep:1")
    return root


def fails(root, *args, match, **kw):
    """The command exits 1 with one `lamina: error:` line (last on stderr) containing ``match``."""
    proc = lamina(root, *args, check=False, **kw)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [l for l in lines if l.startswith("lamina: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in proc.stderr, proc.stderr
    assert match in errors[0], errors[0]
    return errors[0]


def two_layer_archive(path, **kw):
    return ob.legacy_docker_save(path, [{"one": b"first layer\n" * 100}, {"two": b"second layer\n" * 100}],
                                 repo_tags=("bad/app:1",), **kw)


def flip_byte(path, needle):
    data = bytearray(open(path, "rb").read())
    i = data.index(needle)
    data[i] ^= 0x01
    open(path, "wb").write(bytes(data))


def test_truncated_archive(root, tmp_path):
    archive = tmp_path / "cut.tar"
    two_layer_archive(archive)
    data = open(archive, "rb").read()
    open(archive, "wb").write(data[:len(data) // 2])
    before = fingerprint(root)
    fails(root, "load", "-i", archive, match=str(archive))
    assert fingerprint(root) == before


@pytest.mark.parametrize("how", ["a-tar-named-like-gzip", "a-broken-deflate-block"])
def test_an_archive_that_gzip_cannot_inflate_is_a_one_line_error(root, tmp_path, how):
    """An archive starting with gzip's magic whose deflate data is bad made ISA-L's reader raise
    IsalError (no OSError) through load and unpack docker-archive: a traceback.  A plain tar whose
    first member's name starts with that magic does it too (docker's load and skopeo go by the
    magic as lamina does for an archive, and refuse it as well)."""
    from tarbuild import Tar
    archive = tmp_path / "odd.tar"
    if how == "a-tar-named-like-gzip":
        archive.write_bytes(Tar().file(b"\x1f\x8b\x08\xe0-not-gzip", b"x" * 100).file("b", b"y").bytes())
    else:   # a gzip member header, then a deflate block of the reserved type 3
        archive.write_bytes(b"\x1f\x8b\x08\0\0\0\0\0\0\xff" + b"\x07" + bytes(600))
    before = fingerprint(root)
    fails(root, "load", "-i", archive, match=f"{archive}: not a readable tar archive")
    fails(root, "unpack", f"docker-archive:{archive}", tmp_path / "dest", match=f"{archive}: not a readable tar archive")
    assert fingerprint(root) == before


def test_corrupt_second_layer_leaves_no_first_layer_behind(root, tmp_path):
    archive = tmp_path / "flip.tar"
    info = two_layer_archive(archive)
    flip_byte(archive, b"second layer")
    before = fingerprint(root)
    line = fails(root, "load", "-i", archive, match="digest mismatch")
    assert info["diff_ids"][1] in line
    assert fingerprint(root) == before  # layer one was ingested, then rolled back


def test_wrong_diff_id_in_config_is_caught_at_extraction(root, tmp_path):
    lay = ob.Layout(tmp_path / "lay")
    real = ob.sha256(ob.tar_bytes({"f": b"x"}))
    lie = ob.sha256(b"something else")
    m = lay.image([{"f": b"x"}], diff_ids=[lie])
    lay.add(m, "liar:1")
    before = fingerprint(root)
    line = fails(root, "copy", f"oci:{lay.root}:liar:1", "liar:1", match="diffID")
    assert lie in line and real in line
    assert fingerprint(root) == before


@pytest.mark.parametrize("keep_blobs", ["true", "false"])
def test_a_diff_id_naming_a_layer_the_store_holds_is_checked_against_the_blob(root, tmp_path, keep_blobs):
    """A config whose diffID is that of a layer the store holds a snapshot of, for a blob of
    other content: the snapshot is there, so nothing was extracted and the lie went unseen; the
    image was stored and named, its tree the other layer's, and save handed the lie on (or
    failed with "digest mismatch" later).  unpack oci: of the same layout refuses it.  Now the
    blob is checked against the diffID whenever it is not the one the snapshot came from
    (found by test_fuzz_store.py)."""
    lamina(root, "config", "set", "keep-blobs", keep_blobs)
    lay = ob.Layout(tmp_path / "lay")
    real = ob.tar_bytes({"f": b"real\n"})
    lay.add(lay.image([{"f": b"real\n"}]), "real:1")
    m = lay.image([{"f": b"a lie\n"}], diff_ids=[ob.sha256(real)])
    lay.add(m, "liar:1")
    lamina(root, "copy", f"oci:{lay.root}:real:1", "real:1")
    before = fingerprint(root)
    line = fails(root, "copy", f"oci:{lay.root}:liar:1", "liar:1", match="diffID")
    layer = lay.read_json(m["digest"])["layers"][0]["digest"]
    assert ob.sha256(real) in line and ob.sha256(ob.tar_bytes({"f": b"a lie\n"})) in line and layer in line
    assert fingerprint(root) == before
    # the same layer under another blob (uncompressed, as save writes it) is the layer: taken
    plain = ob.Layout(tmp_path / "plain")
    plain.add(plain.image([{"f": b"real\n"}], compress=False), "plain:1")
    lamina(root, "copy", f"oci:{plain.root}:plain:1", "plain:1")
    assert "0 errors, 0 warnings" in lamina(root, "fsck").stdout


def test_missing_blob(root, tmp_path):
    lay = ob.Layout(tmp_path / "lay")
    m = lay.image([{"f": b"gone"}])
    lay.add(m, "hole:1")
    layer = lay.read_json(m["digest"])["layers"][0]["digest"]
    os.unlink(lay.path(layer))
    before = fingerprint(root)
    fails(root, "copy", f"oci:{lay.root}:hole:1", "hole:1", match=f"blob {layer} not found")
    assert fingerprint(root) == before


def test_unknown_refs(root, tmp_path):
    before = fingerprint(root)
    fails(root, "save", "nope:1", "-o", tmp_path / "out.tar", match="no such image: nope:1")
    assert not os.path.exists(tmp_path / "out.tar")
    fails(root, "copy", "nope:1", f"oci:{tmp_path}/out", match="no such image: nope:1")
    fails(root, "copy", f"oci:{tmp_path}/missing:x", "x:1", match="no such")
    lay = ob.Layout(tmp_path / "lay")
    lay.add(lay.image([{"f": b"1"}]), "one")
    fails(root, "copy", f"oci:{lay.root}:two", "x:1", match="no image named 'two'; available: one")
    assert fingerprint(root) == before


@pytest.mark.parametrize("args, match", [
    (("save", "sha256:../../x", "-o", "/dev/null"), "invalid digest 'sha256:../../x'"),
    (("copy", "keep:1", "Bad/Name:1"), "invalid reference format"),
    (("copy", "keep:1", "x@sha256:" + "a" * 64), "name a copied image by tag"),
    (("copy", "keep:1", "docker://example.invalid/x:1"), "use lamina pull / lamina push"),
    (("copy", "keep:1", "dir:/tmp/x"), "unsupported transport"),
])
def test_bad_names(root, args, match):
    before = fingerprint(root)
    fails(root, *args, match=match)
    assert fingerprint(root) == before


def test_digest_in_a_layout_that_escapes(root, tmp_path):
    lay = ob.Layout(tmp_path / "lay")
    lay.add({"mediaType": ob.OCI_MANIFEST, "digest": "sha256:../../../etc/passwd", "size": 10}, "evil")
    before = fingerprint(root)
    fails(root, "copy", f"oci:{lay.root}:evil", "x:1", match="invalid digest")
    assert fingerprint(root) == before


@pytest.mark.parametrize("content", [b"", b"not a tar at all" * 100, gzip.compress(b"garbage" * 1000)])
def test_not_an_archive(root, tmp_path, content):
    path = tmp_path / "junk.tar"
    path.write_bytes(content)
    before = fingerprint(root)
    fails(root, "load", "-i", path, match=str(path))
    assert fingerprint(root) == before


def test_load_from_stdin_and_refusals(root, tmp_path):
    archive = tmp_path / "ok.tar"
    two_layer_archive(archive)
    with open(archive, "rb") as f:
        out = lamina(root, "load", stdin=f).stdout
    assert out.strip() == "Loaded image: bad/app:1"
    assert os.listdir(root / "ingest") == []  # the stdin spool is gone
    fails(root, "load", "-i", tmp_path / "absent.tar", match="no such file")


def test_store_root_that_is_not_a_store(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data").write_text("precious")
    fails(foreign, "fsck", match="not a lamina store")
    fails(foreign, "images", match="not a lamina store")
    assert os.listdir(foreign) == ["data"]


@pytest.mark.parametrize("verb", ["umount", "image prune"])
def test_a_record_naming_another_kind_never_sends_lamina_out_of_its_records(root, tmp_path, verb):
    """A mount or bundle record is a file in the store (ROOT/lamina/mounts/KEY.json), which whoever
    owns the store can write, also when root mounts or prunes that user's store.  Its "kind" made
    the directory that umount removes (<kind>s/KEY) and the record file that a dead bundle's prune
    unlinks: "kind": "../../victim" removed tmp_path/victims/KEY, a tree outside the store.  A
    record is now only read as the kind its directory holds."""
    from lamina.store.inuse import key_for
    target = tmp_path / "mnt"
    target.mkdir()
    kind = "mount" if verb == "umount" else "bundle"
    key = key_for(kind, os.path.realpath(target))
    victim = tmp_path / "victims" / key
    victim.mkdir(parents=True)
    (victim / "precious").write_bytes(b"not lamina's\n")
    (tmp_path / "victims" / f"{key}.json").write_bytes(b"{}")
    records = root / "lamina" / f"{kind}s"
    records.mkdir(parents=True, exist_ok=True)
    forged = {"kind": os.path.relpath(tmp_path / "victim", root / "lamina"), "key": key, "path": str(target),
              "manifest_digest": "sha256:" + "0" * 64, "image_id": "sha256:" + "0" * 64, "names": []}
    (records / f"{key}.json").write_text(json.dumps(forged))
    if verb == "umount":
        fails(root, "umount", target, match="is not a lamina mount")
    else:
        lamina(root, "image", "prune", "-f")
    assert (victim / "precious").read_bytes() == b"not lamina's\n"
    assert (tmp_path / "victims" / f"{key}.json").exists()


def test_a_destination_layout_whose_index_is_nested_deep_is_refused_by_name(root, tmp_path):
    """copy into an existing OCI layout reads its index.json to add the image; one nested 60,000
    arrays deep raised RecursionError out of json.load, which no except clause took: a traceback."""
    lay = tmp_path / "out"
    lay.mkdir()
    (lay / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (lay / "index.json").write_bytes(b"[" * 60_000)
    fails(root, "copy", "keep:1", f"oci:{lay}:x", match=f"{lay}/index.json: not a valid image index")
    assert (lay / "index.json").read_bytes() == b"[" * 60_000


@pytest.mark.parametrize("where,args,match", [
    ("index.json", ("images",), "index.json: invalid JSON"),
    ("snapshots/*/meta.json", ("unpack", "keep:1", "{tmp}/dest"), "unreadable meta.json"),
    ("lamina/mounts/mount-0.json", ("mount",), None),
])
def test_store_files_nested_deep_are_clear_errors(root, tmp_path, where, args, match):
    """The store's own JSON files are only as trustworthy as whoever can write the store: one
    nested 60,000 arrays deep raised RecursionError out of json.load, a traceback.  Now the
    file is named as unreadable (a record is skipped, as an unreadable one always was)."""
    import glob
    paths = glob.glob(os.path.join(root, where))
    path = paths[0] if paths else os.path.join(root, where)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"[" * 60_000)
    args = [a.format(tmp=tmp_path) for a in args]
    if match is None:
        proc = lamina(root, *args)
        assert "Traceback" not in proc.stderr
    else:
        fails(root, *args, match=match)


def test_a_record_naming_another_path_never_unmounts_it(root, tmp_path):
    """A mount record's path is what umount unmounts: a record written into the store under
    the key of one target (mnt) but naming another lamina mount (real) made ``lamina umount
    mnt`` unmount real.  A record's path must be the one its key was made from."""
    from conftest import require_root
    from lamina.store.inuse import key_for
    from lamina.store.mounts import is_mountpoint
    require_root()
    real, target = tmp_path / "real", tmp_path / "mnt"
    target.mkdir()
    lamina(root, "mount", "keep:1", real)
    try:
        key = key_for("mount", os.path.realpath(target))
        forged = {"kind": "mount", "key": key, "path": str(real), "manifest_digest": "sha256:" + "0" * 64,
                  "image_id": "sha256:" + "0" * 64, "names": []}
        (root / "lamina" / "mounts" / f"{key}.json").write_text(json.dumps(forged))
        fails(root, "umount", target, match="is not a lamina mount")
        assert is_mountpoint(str(real))
    finally:
        lamina(root, "umount", real, check=False)


def test_a_layer_blob_checked_against_a_held_snapshot_is_hashed_once(tmp_path, monkeypatch):
    """The check above decompresses and hashes the blob whenever an image naming it is copied
    in: every copy of an image whose layer came as another blob (save's uncompressed tars over
    a registry's gzip) paid a full read of that layer.  A blob is immutable by its digest, so
    its diffID, once hashed, is recorded: the second image over that blob is not hashed again,
    and the record says nothing of another diffID (a config naming another held layer over
    that blob is still hashed, and refused)."""
    from lamina.store import Store, snapshots
    from lamina.transports import copy
    hashed = []
    real_check = snapshots.check_diff_id

    def counting(blob, digest, diff_id, media_type):
        hashed.append((digest, diff_id))
        return real_check(blob, digest, diff_id, media_type)

    monkeypatch.setattr(snapshots, "check_diff_id", counting)
    store = Store(tmp_path / "root")
    lay = ob.Layout(tmp_path / "lay")
    a, b = {"f": b"layer a\n" * 1000}, {"g": b"layer b\n"}
    lay.add(lay.image([a]), "a:1")
    lay.add(lay.image([b]), "b:1")
    for i in (1, 2):  # the same uncompressed blob of layer a, two images (two configs)
        lay.add(lay.image([a], compress=False, config_extra={"config": {"Env": [f"N={i}"]}}), f"plain:{i}")
    plain_blob = ob.sha256(ob.tar_bytes(a))
    liar = lay.image([a], compress=False, diff_ids=[ob.sha256(ob.tar_bytes(b))])
    lay.add(liar, "liar:1")
    copy(f"oci:{lay.root}:a:1", "a:1", store=store)
    copy(f"oci:{lay.root}:b:1", "b:1", store=store)
    assert hashed == []
    copy(f"oci:{lay.root}:plain:1", "plain:1", store=store)
    assert hashed == [(plain_blob, ob.sha256(ob.tar_bytes(a)))]
    copy(f"oci:{lay.root}:plain:2", "plain:2", store=store)
    assert len(hashed) == 1, hashed
    with pytest.raises(errors.DigestMismatchError, match="diffID"):
        copy(f"oci:{lay.root}:liar:1", "liar:1", store=store)
    assert len(hashed) == 2
    # once more: the refusal recorded nothing
    with pytest.raises(errors.DigestMismatchError, match="diffID"):
        copy(f"oci:{lay.root}:liar:1", "liar:1", store=store)
    assert len(hashed) == 3
    assert "0 errors, 0 warnings" in lamina(tmp_path / "root", "fsck").stdout
    # gc forgets the record once its blob is gone (it would pile up), and only then
    record = store.paths.verified / plain_blob.split(":")[1]
    assert record.is_file()
    lamina(tmp_path / "root", "rmi", "plain:1")
    lamina(tmp_path / "root", "image", "prune")
    assert record.is_file() and store.paths.blob(plain_blob).is_file()
    lamina(tmp_path / "root", "rmi", "plain:2")
    lamina(tmp_path / "root", "image", "prune")
    assert not store.paths.blob(plain_blob).exists() and not record.exists()
    assert "0 errors, 0 warnings" in lamina(tmp_path / "root", "fsck").stdout
