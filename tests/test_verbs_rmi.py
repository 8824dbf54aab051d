"""lamina rmi / image prune / system df: shared layers live until the last image using them goes.

Checked on disk (blobs/ and snapshots/), against du for the sizes.
"""
from __future__ import annotations

import json
import os
import re

import pytest

from verbkit import base_and_app_store, du_bytes, fails, lamina, lamina_subprocess, ok


@pytest.fixture
def store(tmp_path):
    return base_and_app_store(tmp_path)


def _on_disk(store):
    blobs = {"sha256:" + n for n in os.listdir(store.paths.blobs)}
    snaps = {"sha256:" + n for n in os.listdir(store.paths.snapshots)}
    return blobs, snaps


def _content(image):
    return set(image.blobs), set(image.chain_ids)


def test_rmi_keeps_shared_layers_until_the_last_image(store):
    base, app = store.resolve("base:1.0"), store.resolve("app:v2")
    assert base.chain_ids[0] == app.chain_ids[0], "the two images share their first layer"
    shared_blob = base.layers[0].digest
    out = ok(store.root, "rmi", "app:v2")
    lines = out.splitlines()
    assert lines[0] == "Untagged: app:v2"
    assert lines[1] == f"Deleted: {app.config_digest}"
    assert f"Deleted: {app.chain_ids[1]}" in lines, "docker lists the removed layers"
    blobs, snaps = _on_disk(store)
    assert snaps == {base.chain_ids[0]} and shared_blob in blobs
    assert blobs == set(base.blobs)
    assert not (set(app.blobs) - set(base.blobs)) & blobs
    # the survivor is intact: it still unpacks
    ok(store.root, "unpack", "base:1.0", store.root.parent / "dest")
    out, err = fails(store.root, "rmi", "base")
    assert "no such image: base:latest" in err, "a bare name means :latest"
    out = ok(store.root, "rmi", "base:1.0")
    assert out.splitlines()[:2] == ["Untagged: base:1.0", f"Deleted: {base.config_digest}"]
    assert _on_disk(store) == (set(), set())
    assert json.loads((store.root / "index.json").read_text())["manifests"] == []


def test_rmi_by_id_digest_and_force(store):
    app = store.resolve("app:v2")
    ok(store.root, "tag", "app:v2", "app:also")
    # same repository: removing by ID untags both without -f (docker's rule)
    out = ok(store.root, "rmi", app.config_digest[7:17])
    assert sorted(out.splitlines()[:2]) == ["Untagged: app:also", "Untagged: app:v2"]
    assert f"Deleted: {app.config_digest}" in out
    base = store.resolve("base:1.0")
    ok(store.root, "tag", "base:1.0", "other/repo:x")
    out, err = fails(store.root, "rmi", base.config_digest[7:19])
    assert "must be forced" in err and "multiple repositories" in err
    assert store.resolve("base:1.0")  # nothing removed
    # one name only: by name removes only that name
    out = ok(store.root, "rmi", "other/repo:x")
    assert out.strip() == "Untagged: other/repo:x"
    ok(store.root, "tag", "base:1.0", "other/repo:x")
    out = ok(store.root, "rmi", "-f", base.config_digest)
    assert "Untagged: base:1.0" in out and "Untagged: other/repo:x" in out and f"Deleted: {base.config_digest}" in out
    assert _on_disk(store) == (set(), set())


def test_rmi_by_manifest_digest_and_errors(store):
    app = store.resolve("app:v2")
    out = ok(store.root, "rmi", app.manifest_digest)
    assert "Untagged: app:v2" in out
    rc, out, err = lamina(store.root, "rmi", "nosuch", "base:1.0")
    assert rc == 1 and "no such image: nosuch:latest" in err and "Untagged: base:1.0" in out, \
        "docker goes on with the other arguments and fails at the end"


def test_image_prune_dangling_and_all(store, tmp_path):
    base, app = store.resolve("base:1.0"), store.resolve("app:v2")
    # moving a tag away leaves a dangling image
    ok(store.root, "tag", "base:1.0", "app:v2")
    assert store.resolve(app.manifest_digest).refs == []
    out = ok(store.root, "image", "prune", "-f")
    assert out.startswith("Deleted Images:\ndeleted: " + app.config_digest)
    reclaimed = re.search(r"Total reclaimed space: (\S+)$", out.strip()).group(1)
    assert reclaimed != "0B"
    blobs, snaps = _on_disk(store)
    assert snaps == set(base.chain_ids) and blobs == set(base.blobs)
    assert ok(store.root, "image", "prune", "-f").strip() == "Total reclaimed space: 0B"
    out = ok(store.root, "image", "prune", "-a", "-f")
    assert "untagged: base:1.0" in out and "untagged: app:v2" in out
    assert _on_disk(store) == (set(), set())


def test_prune_prompts_like_docker(store):
    proc = lamina_subprocess(store.root, "image", "prune", "-a", input="n\n")
    # lamina has no containers: the prompt speaks of what keeps an image, mounts and bundles
    assert "WARNING! This will remove every image that no mount or bundle uses, tagged or not." in proc.stdout
    assert "Are you sure you want to continue? [y/N]" in proc.stdout
    assert len(store.images()) == 2
    proc = lamina_subprocess(store.root, "image", "prune", "-a", input="y\n")
    assert "Total reclaimed space:" in proc.stdout and store.images() == []


def test_prune_all_keeps_mounted_images(store, tmp_path):
    from conftest import require_root
    require_root()
    mnt = tmp_path / "mnt"
    ok(store.root, "mount", "app:v2", mnt)
    try:
        out = ok(store.root, "image", "prune", "-a", "-f")
        assert "base:1.0" in out and "app:v2" not in out
        assert [str(r) for i in store.images() for r in i.refs] == ["docker.io/library/app:v2"]
        out, err = fails(store.root, "rmi", "app:v2")
        assert "in use by mount" in err and str(mnt) in err
        # -f untags it; the content stays for the mount
        ok(store.root, "rmi", "-f", "app:v2")
        assert store.images() == []
        assert (mnt / "app/main.py").exists()
        app_snaps = set(_on_disk(store)[1])
        assert len(app_snaps) == 2
        from lamina import images as api
        held = api.disk_usage(store).snapshots  # the mount holds them though no image names them
        assert len(held) == 2 and all(s.in_use and s.images == 0 for s in held)
    finally:
        ok(store.root, "umount", mnt)
    ok(store.root, "image", "prune", "-f")
    assert _on_disk(store) == (set(), set())


def test_system_df_agrees_with_du(store, tmp_path):
    base, app = store.resolve("base:1.0"), store.resolve("app:v2")
    from lamina import images as api
    du = api.disk_usage(store)
    snaps = [str(store.snapshot_dir(c)) for c in set(base.chain_ids) | set(app.chain_ids)]
    assert du.images_size == du_bytes(*snaps), "Images SIZE is the du of every snapshot, each once"
    blobs = [str(store.paths.blob(d)) for d in set(base.blobs) | set(app.blobs)]
    assert du.blobs_size == du_bytes(*blobs) and du.blobs == len(blobs)
    sizes = api.Sizes(store)
    # layer sharing: the two images together take less than the sum of their sizes
    assert du.images_size == sizes.size(base) + sizes.size(app) - sizes.shared(app)
    assert sizes.shared(app) == sizes.shared(base) > 0
    assert sizes.shared(app) == du_bytes(str(store.snapshot_dir(base.chain_ids[0])))
    rep = {"total": du.images_size}
    out = ok(store.root, "system", "df")
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    from lamina.cli.images import human_size
    images_row = re.split(r"\s{2,}", lines[1])
    assert images_row[:4] == ["Images", "2", "0", human_size(rep["total"])]
    assert images_row[4] == f"{human_size(rep['total'])} (100%)"
    rows = [json.loads(x) for x in ok(store.root, "system", "df", "--format", "json").splitlines()]
    assert [r["Type"] for r in rows] == ["Images", "Layer blobs", "Mounts", "Unreferenced", "Files"]
    assert sorted(rows[0]) == ["Active", "Reclaimable", "Size", "TotalCount", "Type"]
    verbose = ok(store.root, "system", "df", "-v")
    assert "Images space usage:" in verbose and "SHARED SIZE" in verbose and "UNIQUE SIZE" in verbose
    assert "Snapshots space usage:" in verbose and base.chain_ids[0][7:19] in verbose
    # unreferenced content (a blob nobody names) is counted apart and removed by prune
    stray = store.put_blob(b'{"stray": true}')
    du = api.disk_usage(store)
    assert du.unreferenced_blobs == 1 and du.unreferenced_size == du_bytes(str(store.paths.blob(stray)))
    store.close()
    ok(store.root, "image", "prune", "-f")
    assert not store.has_blob(stray)


def test_sizes_mean_what_dockers_do(store):
    """An image's SIZE is its unpacked layers: the same under every tag, and history adds up to it."""
    from lamina import images as api
    ok(store.root, "tag", "app:v2", "other/app:copy")
    rows = [json.loads(x) for x in ok(store.root, "images", "--format", "json").splitlines()]
    app_sizes = {r["Size"] for r in rows if r["Tag"] in ("v2", "copy")}
    assert len(app_sizes) == 1, rows
    app = store.resolve("app:v2")
    history = api.history(store, "app:v2")
    assert sum(h.size for h in history) == api.inspect(store, "app:v2").size
    assert sum(h.size for h in history) == sum(store.snapshot_info(c).size for c in app.chain_ids)
    inspect = json.loads(ok(store.root, "inspect", "app:v2"))[0]
    assert inspect["Size"] == api.inspect(store, "app:v2").size


def test_prune_does_not_say_deleted_for_an_image_id_still_listed(store, tmp_path):
    """Two manifests of one image (same config): pruning the dangling one keeps the ID listed,
    so prune must not print it as deleted."""
    from lamina import images as api
    app = store.resolve("app:v2")
    manifest = json.loads(open(store.blob_path(app.manifest_digest), "rb").read())
    manifest["annotations"] = {"note": "another manifest of the same image"}
    other = store.put_blob(json.dumps(manifest).encode())
    store.add_image(other)  # dangling
    store.close()
    out = ok(store.root, "image", "prune", "-f")
    assert f"deleted: {app.config_digest}" not in out
    assert [s.id for s in api.ls(store)].count(app.config_digest) == 1


def _second_manifest(store, ref, name):
    """The image ``ref`` stored once more under another manifest (the same config: one image ID),
    as a copy of it from a compact store or a save of it is when loaded back, named ``name``."""
    image = store.resolve(ref)
    manifest = json.loads(open(store.blob_path(image.manifest_digest), "rb").read())
    manifest["annotations"] = {"note": "another manifest of the same image"}
    other = store.put_blob(json.dumps(manifest).encode())
    store.add_image(other, name)
    store.close()
    return image, other


def test_rmi_by_id_removes_every_manifest_of_the_image(store):
    """An image ID names the image under every manifest the store holds it by (docker keeps one
    image per ID).  rmi by ID removed one manifest's names and left the other's, printed no
    Deleted, and skipped the multiple-repositories check for names of the other manifest
    (found by test_fuzz_store.py)."""
    app, other = _second_manifest(store, "app:v2", "copied/app:v2")
    # names in two repositories, through two manifests: refused without -f, nothing removed
    out, err = fails(store.root, "rmi", app.config_digest[7:19])
    assert "must be forced" in err and "multiple repositories" in err
    assert store.resolve("app:v2") and store.resolve("copied/app:v2")
    out = ok(store.root, "rmi", "-f", app.config_digest[7:19])
    assert "Untagged: app:v2" in out and "Untagged: copied/app:v2" in out
    assert f"Deleted: {app.config_digest}" in out
    assert f"Deleted: {app.chain_ids[1]}" in out
    base = store.resolve("base:1.0")
    assert _on_disk(store) == (set(base.blobs), set(base.chain_ids))
    # one repository through two manifests: removed without -f, as two tags of one manifest are
    _second_manifest(store, "base:1.0", "base:again")
    out = ok(store.root, "rmi", base.config_digest)
    assert sorted(out.splitlines()[:2]) == ["Untagged: base:1.0", "Untagged: base:again"]
    assert _on_disk(store) == (set(), set())


def test_rmi_of_a_manifests_last_name_collects_it_when_the_id_stays(store):
    """rmi of the last name of one manifest of an image held under two: the ID stays listed
    (the other manifest), but the manifest no name keeps is gone, and its blob with it.  The
    CLI collected only when an image ID was deleted, so its manifest blob stayed behind
    ("not used by any image" in fsck; found by test_fuzz_store.py)."""
    app, other = _second_manifest(store, "app:v2", "copied/app:v2")
    out = ok(store.root, "rmi", "copied/app:v2")
    assert out.strip() == "Untagged: copied/app:v2"
    blobs, _ = _on_disk(store)
    assert other not in blobs and app.manifest_digest in blobs
    report = json.loads(ok(store.root, "fsck", "--json"))
    assert report["findings"] == []
    # by manifest digest: that manifest alone
    again, other = _second_manifest(store, "app:v2", "copied/app:v2")
    out = ok(store.root, "rmi", other)
    assert out.strip() == "Untagged: copied/app:v2"
    assert store.resolve("app:v2").manifest_digest == app.manifest_digest
    assert other not in _on_disk(store)[0]


def _break(store, ref):
    """Make ``ref`` an image that no longer reads (its config's ``created`` 'yesterday', as an
    older lamina stored it), behind lamina's back: (its manifest digest, its config digest)."""
    import hashlib
    app = store.resolve(ref)

    def blob(digest):
        with open(os.path.join(store.paths.blobs, digest[7:])) as f:
            return json.load(f)
    manifest, config = blob(app.manifest_digest), blob(app.config_digest)
    config["created"] = "yesterday"

    def put(doc):
        data = json.dumps(doc).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(os.path.join(store.paths.blobs, digest[7:]), "wb") as f:
            f.write(data)
        return digest, len(data)
    manifest["config"]["digest"], manifest["config"]["size"] = put(config)
    digest, size = put(manifest)
    index_path = os.path.join(store.root, "index.json")
    with open(index_path) as f:
        index = json.load(f)
    [entry] = [e for e in index["manifests"] if e["digest"] == app.manifest_digest]
    entry["digest"], entry["size"] = digest, size
    with open(index_path, "w") as f:
        json.dump(index, f)
    return digest, manifest["config"]["digest"]


def test_rmi_of_a_name_whose_image_no_longer_reads_untags_it(store):
    """An image stored before a check lamina now makes (its config's ``created`` 'yesterday',
    which no Go reader takes) no longer reads: ``images`` and ``fsck`` fail on it, and fsck says
    "remove it with lamina rmi", but ``rmi NAME`` read the image first and failed the same way:
    no verb could remove it.  The name goes, as docker untags a name, and gc takes the rest."""
    digest, _ = _break(store, "app:v2")
    _, err = fails(store.root, "images")
    assert "app:v2 is broken" in err and "created must be an RFC 3339 time" in err, err
    assert ok(store.root, "rmi", "app:v2").splitlines()[0] == "Untagged: app:v2"
    assert ok(store.root, "images", "--format", "{{.Repository}}:{{.Tag}}").split() == ["base:1.0"]
    assert not os.path.exists(os.path.join(store.paths.blobs, digest[7:]))
    report = json.loads(ok(store.root, "fsck", "--format", "json"))
    assert report["findings"] == [], report
    _, err = fails(store.root, "rmi", "app:v2")
    assert "app:v2" in err


@pytest.mark.parametrize("by", ["manifest", "id", "short-id", "prefix"])
def test_rmi_by_id_of_an_image_that_no_longer_reads_removes_it(store, by):
    """rmi by ID of such an image failed as the name did before: resolve() skips images that do
    not read, so the ID was "no such image", and a manifest digest (what fsck names a broken image
    by, the only name of one that has none) failed on the config.  The manifests of that ID go,
    read as raw JSON, and gc takes the rest."""
    manifest, config = _break(store, "app:v2")
    ref = {"manifest": manifest, "id": config, "short-id": "sha256:" + config[7:19], "prefix": config[7:19]}[by]
    assert lamina(store.root, "fsck")[0] == 1
    out = ok(store.root, "rmi", ref).splitlines()
    assert out[:2] == ["Untagged: app:v2", f"Deleted: {manifest if by == 'manifest' else config}"], out
    assert ok(store.root, "images", "--format", "{{.Repository}}:{{.Tag}}").split() == ["base:1.0"]
    assert not os.path.exists(os.path.join(store.paths.blobs, manifest[7:]))
    report = json.loads(ok(store.root, "fsck", "--format", "json"))
    assert report["findings"] == [], report
    _, err = fails(store.root, "rmi", ref)
    assert "no such image" in err.lower(), err


def test_prune_removes_the_partial_downloads_system_df_counts_as_reclaimable(store):
    """system df counted every file in ingest/ as "Unreferenced ... removed by lamina image
    prune", but prune left the partials of killed pulls there: only fsck --repair took them.
    Prune now removes the partials and a killed load's spool; df counts just those (a file
    of another name in ingest/ is not lamina's to count or remove)."""
    import hashlib
    from lamina import images as api
    data = os.urandom(300_000)
    partial = store.paths.ingest / f"{hashlib.sha256(data).hexdigest()}.partial"
    partial.write_bytes(data[:200_000])                         # what a killed pull leaves
    spool = store.paths.ingest / "load-k1ll3d.tmp"
    spool.write_bytes(b"\0" * 10_000)                           # what a killed `load <archive` leaves
    stranger = store.paths.ingest / "notes.txt"
    stranger.write_bytes(b"x" * 50_000)
    store.close()
    du = api.disk_usage(store)
    assert du.partials == du_bytes(str(partial), str(spool)) > 0
    assert du.unreferenced_size == du.partials
    rows = [json.loads(x) for x in ok(store.root, "system", "df", "--format", "json").splitlines()]
    from lamina.cli.images import human_size
    assert [r["Reclaimable"] for r in rows if r["Type"] == "Unreferenced"] == [f"{human_size(du.partials)} (100%)"]
    out = ok(store.root, "image", "prune", "-f")
    assert out.strip() == f"Total reclaimed space: {human_size(du.partials)}"
    assert not partial.exists() and not spool.exists() and stranger.exists()
    du = api.disk_usage(store)
    assert du.partials == du.unreferenced_size == 0
    assert len(store.images()) == 2
