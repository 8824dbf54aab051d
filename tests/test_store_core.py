"""The store's own API: ingest (verify, resume), names in index.json, resolve, snapshots, gc, holds."""
import json
import os
import threading

import pytest

import ocibuild as ob
from lamina import transports
from lamina.errors import (AmbiguousImageError, BlobNotFoundError, DigestMismatchError, ImageError,
                           ImageNotFoundError, InvalidDigestError, InvalidReferenceError, StoreError)
from lamina.reference import Reference
from lamina.store import Store
from storekit import du, fingerprint, shared_base_layouts

DATA = b"some blob content\n" * 1000
DIGEST = ob.sha256(DATA)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        yield s


def test_new_store_is_an_oci_layout(tmp_path):
    s = Store(tmp_path / "s")
    assert not (tmp_path / "s").exists() and s.images() == []  # only writers create the store
    s.put_blob(DATA, DIGEST)
    assert json.loads((s.root / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    assert json.loads((s.root / "index.json").read_text())["manifests"] == []
    assert (s.root / "blobs" / "sha256").is_dir()


def test_store_refuses_a_non_empty_foreign_directory(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "precious.txt").write_text("mine")
    store = Store(tmp_path / "x")
    with pytest.raises(StoreError, match="not a lamina store"):
        store.images()
    with pytest.raises(StoreError, match="not an OCI image layout"):
        store.put_blob(DATA, DIGEST)
    assert os.listdir(tmp_path / "x") == ["precious.txt"]


def test_a_reader_racing_the_stores_creation_sees_an_empty_store(tmp_path, monkeypatch):
    # The reader finds neither index.json nor oci-layout, then lists the root after the
    # creating process has finished: every name there is the store's own (CI caught this
    # with eight processes loading one image into a new store at once).
    s = Store(tmp_path / "s")
    s.put_blob(DATA, DIGEST)
    real_exists = type(s.root).exists
    monkeypatch.setattr(type(s.root), "exists",
                        lambda p: False if p.name == "oci-layout" else real_exists(p))
    (s.root / "index.json").unlink()
    assert s.images() == []
    (s.root / "precious.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a lamina store"):
        s.images()


def test_default_root_follows_lamina_root(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMINA_ROOT", str(tmp_path / "envroot"))
    assert Store().root == tmp_path / "envroot"


# --- ingest -------------------------------------------------------------------------

def test_ingest_commits_only_verified_content(store):
    with store.ingest(DIGEST, len(DATA)) as w:
        assert not w.exists and w.offset == 0
        w.write(DATA[:10])
        assert not store.has_blob(DIGEST)  # nothing visible before commit
        w.write(DATA[10:])
        w.commit()
    assert store.blob_path(DIGEST).read_bytes() == DATA
    assert os.listdir(store.root / "ingest") == []
    with store.ingest(DIGEST) as w:
        assert w.exists


def test_interrupted_ingest_resumes_at_the_offset(store):
    with pytest.raises(RuntimeError):
        with store.ingest(DIGEST, len(DATA)) as w:
            w.write(DATA[:1234])
            raise RuntimeError("connection reset")
    assert not store.has_blob(DIGEST)
    with store.ingest(DIGEST, len(DATA)) as w:
        assert w.offset == 1234
        w.write(DATA[1234:])
        w.commit()
    assert store.blob_path(DIGEST).read_bytes() == DATA


def test_digest_mismatch_discards_the_partial(store):
    wrong = ob.sha256(b"other")
    with pytest.raises(DigestMismatchError, match=wrong):
        with store.ingest(wrong) as w:
            w.write(DATA)
            w.commit()
    assert not store.has_blob(wrong)
    assert os.listdir(store.root / "ingest") == []


def test_size_is_enforced(store):
    with pytest.raises(ImageError, match="more data than the expected 5 bytes"):
        with store.ingest(DIGEST, 5) as w:
            w.write(DATA)
    with pytest.raises(ImageError, match=f"blob {DIGEST}: got 3 bytes, expected {len(DATA)}"):
        with store.ingest(DIGEST, len(DATA)) as w:
            w.write(DATA[:3])
            w.commit()
    assert not store.has_blob(DIGEST)


@pytest.mark.parametrize("bad", ["sha256:../../x", "sha256:" + "A" * 64, "md5:abc", "../etc/passwd", ""])
def test_bad_digests_never_become_paths(store, bad):
    for call in (lambda: store.ingest(bad), lambda: store.blob_path(bad), lambda: store.has_blob(bad),
                 lambda: store.put_blob(b"x", bad), lambda: store.ensure_snapshot(bad, DIGEST)):
        with pytest.raises(InvalidDigestError):
            call()
    assert fingerprint(store.root)["blobs"] == []


def test_concurrent_ingests_of_one_digest_write_it_once(store):
    started = threading.Barrier(4)
    results = []

    def worker():
        started.wait()
        try:
            with store.ingest(DIGEST, len(DATA)) as w:
                if w.exists:
                    results.append("exists")
                    return
                w.write(DATA)
                w.commit()
                results.append("wrote")
        except Exception as e:  # shown in the assertion, not lost in the thread
            results.append(f"error: {e!r}")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["exists"] * 3 + ["wrote"]


def test_put_blob_checks_the_digest(store):
    assert store.put_blob(b"{}") == ob.sha256(b"{}")
    with pytest.raises(DigestMismatchError):
        store.put_blob(b"{}", ob.sha256(b"[]"))


# --- images and names ------------------------------------------------------------------

@pytest.fixture
def two_images(tmp_path, store):
    lay, a, b = shared_base_layouts(tmp_path / "src", base_size=64 << 10)
    transports.copy(f"oci:{lay.root}:a:1", "a:1", store=store)
    transports.copy(f"oci:{lay.root}:b:1", "b:1", store=store)
    return store, a["digest"], b["digest"]


def test_names_are_full_references_in_index_json(two_images):
    store, a, b = two_images
    names = {e["annotations"]["org.opencontainers.image.ref.name"]: e["digest"]
             for e in json.loads((store.root / "index.json").read_text())["manifests"]}
    assert names == {"docker.io/library/a:1": a, "docker.io/library/b:1": b}


def test_resolve_by_every_docker_form(two_images):
    store, a, _ = two_images
    image = store.resolve("a:1")
    assert image.manifest_digest == a
    for form in ("docker.io/library/a:1", "index.docker.io/library/a:1", image.config_digest,
                 image.config_digest[7:], image.config_digest[7:19], a, Reference.parse("a:1")):
        assert store.resolve(form).manifest_digest == a, form
    with pytest.raises(ImageNotFoundError, match="no such image: a:2"):
        store.resolve("a:2")
    with pytest.raises(InvalidDigestError):
        store.resolve("sha256:../../x")
    with pytest.raises(InvalidReferenceError, match="invalid reference format"):
        store.resolve("A:1")


def test_ambiguous_id_prefix_is_refused(two_images):
    store, _, _ = two_images
    ids = [i.config_digest[7:] for i in store.images()]
    common = os.path.commonprefix(ids)
    if common:
        with pytest.raises(AmbiguousImageError):
            store.resolve(common)
    else:
        with pytest.raises(ImageNotFoundError):
            store.resolve("".join(sorted(set("0123456789abcdef") - {ids[0][0], ids[1][0]}))[0])


def test_retag_leaves_the_old_image_dangling_with_its_repo_digest(two_images):
    store, a, b = two_images
    repo_digest = "sha256:" + "e" * 64
    store.add_image(a, "app:latest", repo_digest=repo_digest)
    assert store.resolve("app").repo_digests == [f"docker.io/library/app@{repo_digest}"]
    store.add_image(b, "app:latest")  # the tag moves, like a newer docker pull
    old = store.image(a)
    assert [str(r) for r in old.refs] == ["docker.io/library/a:1"]
    assert f"docker.io/library/app@{repo_digest}" in old.repo_digests
    assert store.resolve(f"app@{repo_digest}").manifest_digest == a
    assert store.untag("a:1") is False  # the repo digest still names it
    assert store.resolve(f"app@{repo_digest}").dangling


def test_name_at_digest_finds_the_image_only_under_that_repository_as_docker_does(two_images):
    """docker resolves REPO@DIGEST under that repository's names only (its containerd image
    service: "busybox@sha256:abcdef... shouldn't match asdf@sha256:abcdef..."; its reference
    store holds the names the image was pulled or tagged by), and a bare digest wherever the
    image is.  So does lamina: only push takes REPO@DIGEST for the content alone (6790cf5),
    as skopeo copy to docker://HOST/new@sha256:X does."""
    store, a, _ = two_images
    repo_digest = "sha256:" + "e" * 64
    store.add_image(a, "app:latest", repo_digest=repo_digest)
    assert store.resolve(f"app@{repo_digest}").manifest_digest == a
    assert store.resolve(f"a@{a}").manifest_digest == a   # a tagged image of that repository, by manifest
    assert store.resolve(a).manifest_digest == a
    for elsewhere in (f"other@{repo_digest}", f"other@{a}"):
        with pytest.raises(ImageNotFoundError):
            store.resolve(elsewhere)
    assert store.image_by_digest(repo_digest).manifest_digest == a   # what push falls back to


def test_untag_last_name_removes_the_image_and_gc_keeps_shared_layers(two_images):
    store, a, b = two_images
    image_a, image_b = store.image(a), store.image(b)
    assert store.untag("a:1") is True
    with pytest.raises(ImageNotFoundError):
        store.resolve("a:1")
    result = store.gc()
    removed = {d for d, _ in result.blobs}
    assert removed == {a, image_a.config_digest, image_a.layers[1].digest}
    assert image_a.layers[0].digest == image_b.layers[0].digest and store.has_blob(image_b.layers[0].digest)
    assert {c for c, _ in result.snapshots} == {image_a.chain_ids[1]}
    assert all(store.snapshot_info(c) for c in image_b.chain_ids)
    assert result.reclaimed > 0


def test_dangling_image_without_name_survives_gc(two_images):
    store, a, _ = two_images
    store.add_image(a, "x:1")
    store.add_image(store.image(a).manifest_digest)  # already named: no unnamed entry added
    assert len([i for i in store.images() if i.manifest_digest == a]) == 1
    store.remove_image(a)
    store.add_image(a)  # unnamed: docker's <none>:<none>
    assert store.image(a).dangling
    store.gc()
    assert store.has_blob(a)


def test_add_image_refuses_missing_layers(tmp_path, store):
    lay = ob.Layout(tmp_path / "l")
    m = lay.image([{"f": b"1"}])
    doc = lay.read_json(m["digest"])
    store.put_blob(ob.dumps(doc), m["digest"])
    store.put_blob(open(lay.path(doc["config"]["digest"]), "rb").read(), doc["config"]["digest"])
    with pytest.raises(BlobNotFoundError, match=doc["layers"][0]["digest"]):
        store.add_image(m["digest"], "x:1")
    assert fingerprint(store.root)["index"] == []


def test_holds_protect_content_from_gc(two_images):
    store, a, _ = two_images
    image = store.image(a)
    store.hold("mount-1", image)
    store.remove_image(image)
    store.gc()
    assert all(store.has_blob(d) for d in image.blobs)
    assert store.release("mount-1")
    store.gc()
    assert not store.has_blob(a)


# --- snapshots ----------------------------------------------------------------------

def test_snapshots_are_shared_and_extracted_once(tmp_path, store, monkeypatch):
    from lamina.store import snapshots
    calls = []
    real = snapshots._extract

    def counted(*a, **kw):  # completed extractions (a NeedsLowers attempt is redone over the lowers)
        stats = real(*a, **kw)
        calls.append(a[2])
        return stats
    monkeypatch.setattr(snapshots, "_extract", counted)
    lay, a, b = shared_base_layouts(tmp_path / "src", base_size=64 << 10)
    transports.copy(f"oci:{lay.root}:a:1", "a:1", store=store)
    transports.copy(f"oci:{lay.root}:b:1", "b:1", store=store)
    image_a, image_b = store.resolve("a:1"), store.resolve("b:1")
    assert len(calls) == 3  # base once, a's top, b's top
    dirs_a, dirs_b = store.snapshots_for(image_a), store.snapshots_for(image_b)
    assert dirs_a[0] == dirs_b[0] and len(calls) == 3
    assert (dirs_a[1] / "a.txt").read_bytes() == b"image a\n"
    assert os.stat(dirs_b[1] / "etc").st_rdev == 0 and os.path.exists(dirs_b[1] / "etc")  # overlay whiteout
    info = store.snapshot_info(image_a.chain_ids[0])
    assert info.diff_id == image_a.diff_ids[0] and info.size > 64 << 10 and info.digest == image_a.layers[0].digest


def test_two_images_sharing_a_base_use_base_plus_deltas(tmp_path):
    base = 8 << 20
    lay, _, _ = shared_base_layouts(tmp_path / "src", base_size=base)
    one, two = Store(tmp_path / "one"), Store(tmp_path / "two")
    transports.copy(f"oci:{lay.root}:a:1", "a:1", store=one)
    transports.copy(f"oci:{lay.root}:a:1", "a:1", store=two)
    transports.copy(f"oci:{lay.root}:b:1", "b:1", store=two)
    single, both = du(one.root), du(two.root)
    # One image holds the base twice (blob + snapshot); the second image adds only its delta.
    assert single > 2 * base
    assert both - single < base // 10, (single, both)


def test_load_gzipped_docker_save_with_a_repeated_layer(tmp_path):
    info = ob.legacy_docker_save(tmp_path / "a.tar.gz", [{"a": b"1"}, {"b": b"2"}], repo_tags=("x/gz:1",),
                                 gzip_it=True, duplicate_last=True)
    store = Store(tmp_path / "root")
    [loaded] = transports.load(tmp_path / "a.tar.gz", store=store)
    image = store.resolve("x/gz:1")
    assert loaded.image.manifest_digest == image.manifest_digest
    assert image.config_digest == info["config_digest"] and image.diff_ids == info["diff_ids"]
    assert image.layers[0].digest == image.layers[2].digest == info["diff_ids"][0]  # stored uncompressed
    assert len(store.snapshots_for(image)) == 3 and store.fsck().clean


def test_a_broken_image_is_named_and_the_others_stay_usable(two_images):
    store, a, b = two_images
    os.unlink(store.blob_path(store.image(a).config_digest))
    with pytest.raises(StoreError, match="image docker.io/library/a:1 is broken: .*run lamina fsck"):
        store.images()
    assert [i.manifest_digest for i in store.images(skip_broken=True)] == [b]
    assert store.resolve(store.image(b).config_digest[7:19]).manifest_digest == b
    assert store.untag("a:1") is True


def test_snapshot_disk_usage_agrees_with_gnu_du(tmp_path):
    """A snapshot's size and inode count (meta.json, system df) are measured by a native walk:
    GNU du is the oracle (blocks of every entry once, hardlinks once, symlinks not followed,
    the root included), on a tree with nested dirs, hardlinks, a symlink to a big file outside,
    a sparse file and an empty dir."""
    import subprocess
    from lamina.store.fsutil import disk_usage
    root = tmp_path / "tree"
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty").mkdir()
    for i in range(50):
        (root / "a" / f"f{i}").write_bytes(os.urandom(i * 1000))
    (root / "a" / "b" / "big").write_bytes(os.urandom(300_000))
    os.link(root / "a" / "b" / "big", root / "a" / "b" / "c" / "big-again")
    os.link(root / "a" / "b" / "big", root / "big-third")
    outside = tmp_path / "outside"
    outside.write_bytes(os.urandom(500_000))
    os.symlink(outside, root / "a" / "link-out")
    with open(root / "sparse", "wb") as f:
        f.truncate(10 << 20)
        f.write(b"x")
    # written back first: while ext4 allocates a delayed block, a stat can miss it (one block short)
    os.sync()
    size = int(subprocess.run(["du", "-sB1", str(root)], capture_output=True, text=True, check=True)
               .stdout.split()[0])
    inodes = int(subprocess.run(["du", "-s", "--inodes", str(root)], capture_output=True, text=True, check=True)
                 .stdout.split()[0])
    assert disk_usage(root) == (size, inodes)


@pytest.mark.parametrize("held", [2, 7, 64, 65536])
def test_inodes_with_several_names_are_counted_once_however_many_spill(tmp_path, held):
    """In the store every file of a fresh snapshot has a second name, so the walk's record of
    inodes to count once is spilled to sorted runs in a temp file past ``held`` records and
    merged (a million-file layer held 24 MiB, doubled by realloc, before).  Names of one inode
    land in different runs (the links are made far apart in the walk's order), some inodes
    have names outside the tree too, and the temp file goes to the spill dir given, gone at
    the end.  GNU du is the oracle, as above."""
    import subprocess
    from lamina._objects import tree_usage
    root, outside, spill = tmp_path / "tree", tmp_path / "outside", tmp_path / "spill"
    for d in (root, outside, spill):
        d.mkdir()
    for i in range(40):
        (root / f"d{i % 7}").mkdir(exist_ok=True)
    files = []
    for i in range(600):
        f = root / f"d{i % 7}" / f"f{i}"
        f.write_bytes(os.urandom(i * 37 % 9000))
        files.append(f)
    for i, f in enumerate(files):
        if i % 3 == 0:
            os.link(f, root / f"d{(i + 3) % 7}" / f"again{i}")     # a second name in another dir
        if i % 5 == 0:
            os.link(f, outside / f"out{i}")                         # a name outside the tree
        if i % 11 == 0:
            os.link(f, root / f"third{i}")
    # written back first: while ext4 allocates a delayed block, a stat can miss it (one block short)
    os.sync()
    size = int(subprocess.run(["du", "-sB1", str(root)], capture_output=True, text=True, check=True)
               .stdout.split()[0])
    inodes = int(subprocess.run(["du", "-s", "--inodes", str(root)], capture_output=True, text=True, check=True)
                 .stdout.split()[0])
    fd, sfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY), os.open(spill, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert tree_usage(fd, sfd, held) == (size, inodes)
        assert tree_usage(fd, -1, held) == (size, inodes)  # no spill dir: $TMPDIR
    finally:
        os.close(fd)
        os.close(sfd)
    assert os.listdir(spill) == []
