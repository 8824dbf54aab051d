"""A store mounted read-only serves every read, writers say why they cannot write,
and no command creates a store as a side effect (only writers do)."""
import os
import subprocess

import pytest

import ocibuild as ob
from storekit import fingerprint, lamina
from registryfixture import reg, registry_env, skopeo_push  # noqa: F401
from test_store_badinput import fails


@pytest.fixture
def ro_root(tmp_path):
    """(read-only bind mount of a store holding app:1 with its snapshots, the writable original)."""
    rw = tmp_path / "rw"
    lay = ob.Layout(tmp_path / "lay")
    lay.add(lay.image([{"a": b"first\n"}, {"b": b"second\n"}]), "app:1")
    lamina(rw, "copy", f"oci:{lay.root}:app:1", "app:1")
    lamina(rw, "unpack", "app:1", str(tmp_path / "warm"))  # extracts the snapshots
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(rw), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        yield ro, rw
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_readers_work_on_a_read_only_store(ro_root, runtime_dir, tmp_path):
    ro, rw = ro_root
    before = fingerprint(rw)
    assert "app" in lamina(ro, "images").stdout
    assert '"Id"' in lamina(ro, "inspect", "app:1").stdout
    assert lamina(ro, "history", "app:1").stdout.count("\n") >= 3
    lamina(ro, "unpack", "app:1", str(tmp_path / "out"))
    assert (tmp_path / "out" / "a").read_bytes() == b"first\n"
    assert (tmp_path / "out" / "b").read_bytes() == b"second\n"
    lamina(ro, "unpack", "--bundle", "app:1", str(tmp_path / "bundle"))
    assert (tmp_path / "bundle" / "rootfs" / "a").read_bytes() == b"first\n"
    assert fingerprint(rw) == before


def test_writers_say_the_store_is_read_only(ro_root, tmp_path):
    ro, rw = ro_root
    before = fingerprint(rw)
    for verb in (["rmi", "app:1"], ["tag", "app:1", "app:2"], ["image", "prune", "-af"]):
        fails(ro, *verb, match="read-only")
    assert fingerprint(rw) == before


def test_reads_do_not_create_the_store(tmp_path):
    root = tmp_path / "nothing-here"
    for verb in (["images"], ["fsck"], ["system", "df"], ["image", "prune", "-f"]):
        lamina(root, *verb)
        assert not root.exists(), verb


def test_messages_name_the_users_path_not_our_staging(ro_root, tmp_path):
    ro, rw = ro_root
    sample = os.path.join(os.path.dirname(__file__), "..", "sample", "image")
    msg = fails(ro, "unpack", f"oci:{sample}", str(ro / "rootfs"), match="Read-only file system")
    assert msg == f"lamina: error: cannot write {ro / 'rootfs'}: Read-only file system", msg
    # a DEST inside the store it unpacks from is refused as such, through the read-only bind
    # mount of the writable store too (it was let through to the Read-only error above)
    for root in (ro, rw):
        msg = fails(root, "unpack", "app:1", str(ro / "rootfs"), match="inside the store")
        assert str(ro / "rootfs") in msg, msg


def test_load_from_stdin_speaks_of_stdin(tmp_path):
    root = tmp_path / "s"
    proc = lamina(root, "load", check=False, input="")
    assert proc.returncode == 1 and "stdin was empty" in proc.stderr, proc.stderr
    proc = lamina(root, "load", check=False, input="not an archive\n")
    assert proc.returncode == 1 and "the archive on stdin: " in proc.stderr and "ingest" not in proc.stderr


def test_a_store_root_that_is_a_file_is_named_as_such(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for verb in (["images"], ["copy", f"oci:{os.path.join(os.path.dirname(__file__), '..', 'sample', 'image')}",
                              "s:1"]):
        fails(f, *verb, match=f"store root {f} is not a directory")


@pytest.fixture
def runtime_dir(tmp_path, monkeypatch):
    """A private XDG_RUNTIME_DIR for the commands this test runs: where a read-only store's
    mount records go."""
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    return d


def _is_mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == os.fspath(path) for line in f)


def test_check_only_fsck_of_a_read_only_store(ro_root):
    ro, rw = ro_root
    before = fingerprint(rw)
    out = lamina(ro, "fsck").stdout
    assert "1 image" in out and "0 errors" in out, out
    fails(ro, "fsck", "--repair", match="read-only")
    assert fingerprint(rw) == before


@pytest.mark.parametrize("rw_mount", [False, True], ids=["ro", "rw"])
def test_mount_of_a_read_only_store(ro_root, runtime_dir, tmp_path, rw_mount):
    """The store is not written at all: the mount record (and a --rw mount's upper and work
    dirs) live in the runtime dir, listed and unmounted like any other mount."""
    ro, rw = ro_root
    before = fingerprint(rw)
    meta_before = sorted(os.listdir(rw / "lamina")) if (rw / "lamina").is_dir() else []
    mnt = tmp_path / "mnt"
    lamina(ro, "mount", *(["--rw"] if rw_mount else []), "app:1", mnt)
    try:
        assert _is_mounted(mnt)
        assert (mnt / "a").read_bytes() == b"first\n" and (mnt / "b").read_bytes() == b"second\n"
        listing = lamina(ro, "mount").stdout
        assert str(mnt) in listing and "app:1" in listing and ("rw" if rw_mount else "ro") in listing, listing
        records = list(runtime_dir.glob("lamina-stores/*/mounts/*.json"))
        assert len(records) == 1, records
        if rw_mount:
            (mnt / "new").write_bytes(b"written\n")
            assert [p.name for p in runtime_dir.glob("lamina-stores/*/mounts/*/upper/*")] == ["new"]
        else:
            with pytest.raises(OSError):
                (mnt / "new").write_bytes(b"x")
        # the same store seen through its writable path knows the mount too
        assert str(mnt) in lamina(rw, "mount").stdout
    finally:
        lamina(ro, "umount", mnt, check=False)
    assert not _is_mounted(mnt)
    assert list(runtime_dir.glob("lamina-stores/*/mounts/*")) == []
    assert fingerprint(rw) == before
    assert (sorted(os.listdir(rw / "lamina")) if (rw / "lamina").is_dir() else []) == meta_before
    fails(ro, "umount", mnt, match=f"{mnt} is not a lamina mount")


def test_mount_of_a_read_only_store_needs_its_layers_extracted(ro_root, runtime_dir, tmp_path):
    """Extracting is writing: an image whose snapshots are gone (a cold image) cannot be
    mounted from a read-only store, and the error says why."""
    ro, rw = ro_root
    import shutil
    for snap in (rw / "snapshots").iterdir():
        shutil.rmtree(snap)
    msg = fails(ro, "mount", "app:1", tmp_path / "mnt", match="read-only")
    assert "not extracted" in msg, msg
    assert not _is_mounted(tmp_path / "mnt")
    assert list(runtime_dir.glob("lamina-stores/*/mounts/*")) == []


def test_save_and_copy_out_of_a_read_only_store(ro_root, tmp_path):
    """The readers that write outside the store: save and copy to an archive or a layout."""
    ro, rw = ro_root
    before = fingerprint(rw)
    lamina(ro, "save", "-o", tmp_path / "a.tar", "app:1")
    lamina(ro, "copy", "app:1", f"oci-archive:{tmp_path / 'b.tar'}")
    lamina(ro, "copy", "app:1", f"oci:{tmp_path / 'lay'}:app")
    probe = tmp_path / "probe"
    lamina(probe, "load", "-i", tmp_path / "a.tar")
    lamina(probe, "copy", f"oci:{tmp_path / 'lay'}:app", "app:2")
    lamina(probe, "unpack", "app:2", tmp_path / "out")
    assert (tmp_path / "out" / "b").read_bytes() == b"second\n"
    assert fingerprint(rw) == before


def test_every_way_in_says_the_store_is_read_only(ro_root, tmp_path, reg, registry_env):
    """copy into the store, load, pull and config set, like rmi and tag."""
    ro, rw = ro_root
    lay = ob.Layout(tmp_path / "lay")
    lay.add(lay.image([{"c": b"third\n"}]), "app:3")
    lamina(tmp_path / "src", "copy", f"oci:{lay.root}:app:3", "app:3")
    lamina(tmp_path / "src", "save", "-o", tmp_path / "c.tar", "app:3")
    skopeo_push(f"oci:{lay.root}:app:3", reg.host, "app:3")
    before = fingerprint(rw)
    for verb in (["copy", f"oci:{lay.root}:app:3", "app:3"], ["load", "-i", tmp_path / "c.tar"],
                 ["pull", f"{reg.host}/app:3"], ["config", "set", "dedup", "false"]):
        fails(ro, *verb, match="is read-only")
    assert fingerprint(rw) == before


def test_pull_into_a_read_only_store_succeeds_up_to_date_and_says_read_only_otherwise(tmp_path, registry_env):  # noqa: F811
    """An up-to-date pull writes nothing, yet it failed ("cannot write: the store ... is
    read-only") after "Already exists"; with the registry down, the pull said only "not
    reachable", and with a name the store does not hold it asked the registry first."""
    from registryfixture import Registry, free_port
    registry = Registry(tmp_path / "reg")
    try:
        lay = ob.Layout(tmp_path / "lay")
        lay.add(lay.image([{"a": b"first\n"}]), "v1")
        lay.add(lay.image([{"a": b"second\n"}]), "v2")
        skopeo_push(f"oci:{lay.root}:v1", registry.host, "app:1")
        skopeo_push(f"oci:{lay.root}:v1", registry.host, "app:2")
        rw, ro = tmp_path / "rw", tmp_path / "ro"
        lamina(rw, "pull", f"{registry.host}/app:1")
        ro.mkdir()
        subprocess.run(["mount", "--bind", str(rw), str(ro)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
            before = fingerprint(rw)
            out = lamina(ro, "pull", f"{registry.host}/app:1").stdout
            assert f"Status: Image is up to date for {registry.host}/app:1" in out, out
            # not in the store: refused before the registry is asked (nothing listens at that port)
            msg = fails(ro, "pull", f"127.0.0.1:{free_port()}/app:1", match="is read-only")
            assert "reachable" not in msg, msg
            fails(ro, "pull", f"{registry.host}/app:2", match="is read-only")
            skopeo_push(f"oci:{lay.root}:v2", registry.host, "app:1")   # a newer app:1
            msg = fails(ro, "pull", f"{registry.host}/app:1", match="is read-only")
            assert msg.startswith(f"lamina: error: cannot pull {registry.host}/app:1 (its manifest is now sha256:"), msg
            registry.stop()
            msg = fails(ro, "pull", f"{registry.host}/app:1", match="is not reachable")
            assert msg.endswith(f"(and the store at {ro} is read-only: a pull there can only find its image up to "
                                "date)"), msg
            assert fingerprint(rw) == before
        finally:
            subprocess.run(["umount", str(ro)], check=True)
    finally:
        registry.stop()


def test_a_read_only_pull_whose_index_changed_but_not_its_manifest_says_what_it_would_write(tmp_path, registry_env):  # noqa: F811
    """app:1's index gained another arm64 image; its amd64 manifest is the one the store holds.
    The pull on the read-only store failed with the lease's "cannot write: the store ... is
    read-only", naming neither the pull nor what it had to write: the new index blob and the
    name's repo digest."""
    from registryfixture import Registry
    registry = Registry(tmp_path / "reg")
    try:
        lay = ob.Layout(tmp_path / "lay")
        amd = dict(lay.image([{"a": b"amd64\n"}]), platform={"architecture": "amd64", "os": "linux"})
        arms = [dict(lay.image([{"a": text}], arch="arm64"), platform={"architecture": "arm64", "os": "linux"})
                for text in (b"arm64\n", b"arm64, rebuilt\n")]
        old, new = lay.index([amd, arms[0]]), lay.index([amd, arms[1]])
        lay.add(old, "old")
        lay.add(new, "new")
        skopeo_push(f"oci:{lay.root}:old", registry.host, "app:1", all_images=True)
        rw, ro = tmp_path / "rw", tmp_path / "ro"
        lamina(rw, "pull", "--platform", "linux/amd64", f"{registry.host}/app:1")
        skopeo_push(f"oci:{lay.root}:new", registry.host, "app:1", all_images=True)
        ro.mkdir()
        subprocess.run(["mount", "--bind", str(rw), str(ro)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
            before = fingerprint(rw)
            msg = fails(ro, "pull", "--platform", "linux/amd64", f"{registry.host}/app:1", match="is read-only")
            assert msg.startswith(f"lamina: error: cannot pull {registry.host}/app:1 (its index is now "
                                  f"{new['digest']}; its linux/amd64 manifest {amd['digest']} is the one the "
                                  "store holds, but the new index and the name's repo digest would be "
                                  "written)"), msg
            assert fingerprint(rw) == before
        finally:
            subprocess.run(["umount", str(ro)], check=True)
        # the writable store takes the same pull, and names the image by the new index
        lamina(rw, "pull", "--platform", "linux/amd64", f"{registry.host}/app:1")
        digests = lamina(rw, "images", "--digests", "--format", "{{.Digest}}").stdout.split()
        assert new["digest"] in digests, digests
    finally:
        registry.stop()


def test_a_read_only_pull_by_the_repo_digest_of_a_tag_is_up_to_date(tmp_path, registry_env):  # noqa: F811
    """app:1 pulled, then app@<its repo digest> on the read-only store: the pull recorded
    name@digest as a name of its own, so the read-only store refused it ("the name ... would be
    written"); it now records nothing new, as docker does, and the read-only store finds the
    image up to date.  A pull by the digest of the platform's manifest, which no tag holds as
    its repo digest, would still write that name: refused, saying so."""
    from registryfixture import Registry
    registry = Registry(tmp_path / "reg")
    try:
        lay = ob.Layout(tmp_path / "lay")
        amd = dict(lay.image([{"a": b"amd64\n"}]), platform={"architecture": "amd64", "os": "linux"})
        arm = dict(lay.image([{"a": b"arm64\n"}], arch="arm64"), platform={"architecture": "arm64", "os": "linux"})
        index = lay.index([amd, arm])
        lay.add(index, "v1")
        skopeo_push(f"oci:{lay.root}:v1", registry.host, "app:1", all_images=True)
        rw, ro = tmp_path / "rw", tmp_path / "ro"
        lamina(rw, "pull", "--platform", "linux/amd64", f"{registry.host}/app:1")
        pinned, by_manifest = f"{registry.host}/app@{index['digest']}", f"{registry.host}/app@{amd['digest']}"
        ro.mkdir()
        subprocess.run(["mount", "--bind", str(rw), str(ro)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
            before = fingerprint(rw)
            out = lamina(ro, "pull", "--platform", "linux/amd64", pinned).stdout
            assert f"Status: Image is up to date for {pinned}" in out, out
            msg = fails(ro, "pull", by_manifest, match="is read-only")
            assert msg.startswith(f"lamina: error: cannot pull {by_manifest} (its manifest {amd['digest']} is the "
                                  f"one the store holds, but the name {by_manifest} would be written): the store "
                                  f"at {ro} is read-only"), msg
            assert fingerprint(rw) == before
            lamina(rw, "pull", by_manifest)
            out = lamina(ro, "pull", by_manifest).stdout
            assert f"Status: Image is up to date for {by_manifest}" in out, out
        finally:
            subprocess.run(["umount", str(ro)], check=True)
    finally:
        registry.stop()
