"""lamina fsck: finds damage and debris, and --repair fixes what can be fixed."""
import json
import os
import subprocess
import sys

import pytest

import ocibuild as ob
from lamina.store import Store
from registryfixture import reg, registry_env  # noqa: F401
from storekit import lamina
from treecmp import assert_same, snapshot


@pytest.fixture
def loaded(tmp_path):
    lay = ob.Layout(tmp_path / "src")
    m = lay.image([{"etc": None, "etc/conf": b"original\n", "bin": None, "bin/tool": b"\x7fELF" * 100},
                   {"etc/extra": b"top\n"}])
    lay.add(m, "app:1")
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{lay.root}:app:1", "app:1")
    return root, lay, Store(root).resolve("app:1")


def fsck(root, *args):
    proc = lamina(root, "fsck", "--json", *args, check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == (0 if report["ok"] else 1)
    return report


def kinds(report):
    return sorted((f["severity"], f["kind"], f["repaired"]) for f in report["findings"])


def test_clean_store(loaded):
    root, _, image = loaded
    report = fsck(root)
    assert report["ok"] and report["findings"] == []
    assert report["checked"] == {"blobs": 4, "images": 1, "snapshots": 2, "objects": 3}  # 3 files, all distinct
    out = lamina(root, "fsck").stdout
    assert out.strip() == "checked 4 blobs, 1 image, 2 snapshots: 0 errors, 0 warnings"


def test_corrupt_blob_is_found_removed_and_reloadable(loaded):
    root, lay, image = loaded
    blob = Store(root).blob_path(image.layers[1].digest)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.write(b"\0\0\0\0")
    report = fsck(root)
    assert kinds(report) == [("error", "broken-image", False), ("error", "corrupt-blob", False),
                             ("warning", "unverifiable-snapshot", False)]
    assert all(image.layers[1].digest in f["message"] for f in report["findings"])
    report = fsck(root, "--repair")
    assert not report["ok"]
    assert kinds(report) == [("error", "corrupt-blob", True), ("error", "missing-blob", False),
                             ("warning", "unverifiable-snapshot", False)]
    assert not blob.exists()  # never left in blobs/ under a name it does not hash to
    lamina(root, "copy", f"oci:{lay.root}:app:1", "app:1")
    assert fsck(root)["findings"] == []


def test_tampered_snapshot_is_re_extracted(loaded, tmp_path):
    root, _, image = loaded
    with Store(root) as store:  # closed: fsck --repair waits for every open writer
        fs = store.snapshots_for(image)[0]
    pristine = snapshot(fs)
    (fs / "etc" / "conf").write_bytes(b"tampered\n")
    os.chmod(fs / "bin" / "tool", 0o4755)
    report = fsck(root)
    # the snapshot's files are store objects (dedup): changing them changes the objects too
    assert kinds(report) == [("error", "bad-object", False)] * 2 + [("error", "bad-snapshot", False)]
    snap = next(f for f in report["findings"] if f["kind"] == "bad-snapshot")
    assert "etc/conf" in snap["message"] or "bin/tool" in snap["message"]
    objs = [f["message"] for f in report["findings"] if f["kind"] == "bad-object"]
    assert any("etc/conf" in m for m in objs) and any("bin/tool" in m for m in objs)
    assert kinds(fsck(root, "--repair")) == [("error", "bad-object", True)] * 2 + [("error", "bad-snapshot", True)]
    assert_same(pristine, snapshot(fs), labels=("original", "repaired"))
    assert fsck(root)["findings"] == []


def test_incomplete_snapshot_is_dropped_and_rebuilt(loaded):
    root, _, image = loaded
    store = Store(root)
    os.unlink(store.paths.snapshot(image.chain_ids[1]) / "meta.json")
    assert kinds(fsck(root)) == [("error", "bad-snapshot", False)]
    # removing the snapshot leaves its file object (etc/extra) unused: collected too
    assert kinds(fsck(root, "--repair")) == [("error", "bad-snapshot", True), ("warning", "unused-object", True)]
    assert (store.snapshots_for(image)[1] / "etc" / "extra").read_bytes() == b"top\n"
    store.close()
    assert fsck(root)["findings"] == []


def test_orphans_are_warnings_and_repair_collects_them(loaded):
    root, _, image = loaded
    Store(root).remove_image(image)
    report = fsck(root)
    assert report["ok"]
    assert kinds(report) == [("warning", "orphan-blob", False)] * 4 + [("warning", "orphan-snapshot", False)] * 2
    fsck(root, "--repair")
    assert os.listdir(root / "blobs" / "sha256") == [] and os.listdir(root / "snapshots") == []
    assert fsck(root)["findings"] == []


def test_debris_of_killed_processes(loaded):
    root, _, image = loaded
    store = Store(root)
    hexid = "ab" * 32
    (store.paths.ingest / f"{hexid}.partial").write_bytes(b"half a blob")
    (store.paths.locks / f"blob-{hexid}.lock").touch()
    (store.paths.snapshots / f".tmp-{hexid}-123-abcd").mkdir()
    (store.paths.snapshots / f".tmp-{hexid}-123-abcd" / "fs").mkdir()
    (root / "index.json.tmp-99-abcdef").write_text("{")
    (store.paths.blobs / "not-a-digest").write_text("?")
    report = fsck(root)
    assert report["ok"]
    assert kinds(report) == sorted([("warning", k, False) for k in
                                    ("stale-partial", "stale-lock", "stale-temp", "stale-temp", "stray-blob")])
    fsck(root, "--repair")
    assert fsck(root)["findings"] == []
    assert os.listdir(store.paths.ingest) == [] and not (root / "index.json.tmp-99-abcdef").exists()


def test_the_spool_of_a_load_from_a_pipe_killed_midway_is_named_and_swept(loaded, tmp_path):
    """``lamina load`` from a pipe spools the archive in ingest/ first: killed midway, it left
    ingest/load-*.tmp, which fsck called 'not an ingest file', a name no user can place."""
    import time
    root, _, _ = loaded
    archive = tmp_path / "app.tar"
    lamina(root, "save", "app:1", "-o", archive)
    other = tmp_path / "other"
    child = subprocess.Popen([sys.executable, "-m", "lamina", "--root", str(other), "load"], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        child.stdin.write(archive.read_bytes()[:4096])
        child.stdin.flush()
        # (its spool stays empty: the load reads the pipe a MiB at a time)
        spooled = lambda: os.listdir(other / "ingest") if (other / "ingest").is_dir() else []
        deadline = time.monotonic() + 60
        while not spooled():
            assert time.monotonic() < deadline and child.poll() is None, "the load never spooled"
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait()
        child.stdin.close()
    report = fsck(other)
    assert [(f["kind"], f["message"]) for f in report["findings"]] == \
        [("stray-ingest", f"ingest/{spooled()[0]}: the archive a load from stdin spooled, left when it was killed")]
    fsck(other, "--repair")
    assert os.listdir(other / "ingest") == []
    with open(archive, "rb") as f:
        lamina(other, "load", stdin=f)
    assert fsck(other)["findings"] == []


def test_partial_being_written_is_not_debris(loaded):
    root, _, _ = loaded
    store = Store(root)
    data = b"in flight"
    with store.ingest(ob.sha256(data), len(data)) as w:
        w.write(data[:3])
        assert fsck(root)["findings"] == []  # its lock is held: someone is writing it
        w.write(data[3:])
        w.commit()
    store.close()


def test_repair_waits_for_writers_and_says_so(loaded):
    import subprocess
    import sys
    root, _, _ = loaded
    writer = Store(root)
    writer.put_blob(b"an import in progress")  # holds the lease
    proc = subprocess.Popen([sys.executable, "-m", "lamina", "--root", str(root), "fsck", "--repair"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()  # printed before it blocks; we only read once it is there
    assert "waiting for other lamina processes" in first
    writer.close()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "1 warning, 1 repaired" in out  # the blob was never named: orphan


def test_unreadable_index_is_rebuilt_with_unnamed_images(loaded):
    root, _, image = loaded
    (root / "index.json").write_text("{ not json")
    report = fsck(root)
    assert kinds(report) == [("error", "index", False)]
    report = fsck(root, "--repair")
    assert report["ok"]
    assert any(n.startswith("index.json.corrupt-") for n in os.listdir(root))
    rebuilt = Store(root).image(image.manifest_digest)
    assert rebuilt.dangling and rebuilt.config_digest == image.config_digest
    lamina(root, "fsck", "--repair")  # the corrupt copy stays for the user; nothing else to do
    assert fsck(root)["ok"]


def _bytes_read():
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def test_a_sparse_file_is_checked_without_reading_its_holes(tmp_path):
    """fsck compares each snapshot with a fresh extraction of its layer: a 64 GiB sparse file (a
    high uid's lastlog) is compared by its data regions, not by 64 GiB of zeros read twice; a
    byte changed inside it, or written into one of its holes, is still found."""
    from everypath import write_image
    from tarbuild import Tar
    from tarvectors import archive, sparse_pax_10
    big = 64 << 30
    layer = archive(Tar().dir("var").bytes(end=False),
                    sparse_pax_10("var/lastlog", big, [(0, b"head" * 1024), (big - 4096, b"tail" * 1024)]))
    layout = write_image(tmp_path / "src", [layer])
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{layout}:img", "app:1")
    store = Store(root)
    before = _bytes_read()
    assert store.fsck().findings == []
    assert _bytes_read() - before < 64 << 20
    fs = store.snapshots_for(store.resolve("app:1"))[0]
    for at, data in ((1, b"X"), (big // 2, b"Y")):  # inside the data, then inside a hole
        with open(fs / "var" / "lastlog", "r+b") as f:
            f.seek(at)
            f.write(data)
        report = store.fsck()
        assert [f.kind for f in report.findings] == ["bad-snapshot"], report.findings
        assert "var/lastlog" in report.findings[0].message
        store.fsck(repair=True)
        assert store.fsck().findings == []


def test_findings_past_those_held_spill_and_read_back_in_order(tmp_path):
    """An interrupted prune leaves a finding per object: all but the newest HELD go to a temp
    file; every one is read back, in order, with its repair mark and its non-UTF-8 bytes."""
    import io

    from lamina.cli.output import document, write_json_streamed
    from lamina.store.fsck import Finding, Findings, FsckReport
    report = FsckReport(Findings(str(tmp_path)))
    want = []
    for i in range(2 * Findings.HELD + 3):
        args = ("error" if i % 7 == 0 else "warning", f"kind-{i % 3}", f"s{i}", f"bad-\udcff {i}\nline")
        f = report.add(*args)
        f.repaired = i % 5 == 0   # a repair marks the finding just added
        want.append(Finding(*args, repaired=i % 5 == 0))
    assert report.findings.file is not None and len(report.findings.held) <= Findings.HELD
    assert len(report.findings) == len(want) and report.findings == want
    assert report.errors == [f for f in want if f.severity == "error" and not f.repaired] and not report.ok
    report.findings.keep(lambda f: f.kind != "kind-0")
    want = [f for f in want if f.kind != "kind-0"]
    assert list(report.findings) == want
    # the CLI's streamed document is, byte for byte, what json.dump writes of the whole one
    one = FsckReport()
    one.add("warning", "k", "s", "m")
    for r in (report, one, FsckReport()):
        streamed, whole = io.StringIO(), io.StringIO()
        write_json_streamed(r.to_dict(findings=False), "findings", r.iter_dicts(), streamed)
        json.dump(document(r.to_dict()), whole, indent=2)
        assert streamed.getvalue() == whole.getvalue() + "\n"


def test_a_changed_object_names_a_few_of_the_files_using_it(tmp_path):
    """An object of a common file is used by thousands of names: its finding was one line
    naming every one (held until the end of the check); it names five and counts the rest."""
    lay = ob.Layout(tmp_path / "src")
    m = lay.image([{"d": None, **{f"d/same-{i}": b"same body\n" for i in range(8)}}])
    lay.add(m, "app:1")
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{lay.root}:app:1", "app:1")
    with Store(root) as store:
        fs = store.snapshots_for(store.resolve("app:1"))[0]
    with open(fs / "d" / "same-3", "r+b") as f:   # the object's inode: every name changes
        f.write(b"S")
    report = fsck(root)
    (bad,) = [f["message"] for f in report["findings"] if f["kind"] == "bad-object"]
    assert bad.count("d/same-") == 5 and bad.endswith(" and 3 more name(s)"), bad


# --- a refused image leaves nothing fsck calls damage -------------------------------------------


def _refused_stack(tmp_path, order):
    """An image of a good layer (naming its root, so that it extracts without the layers below)
    and a refused one, big enough that the good one's dedup pass runs while it extracts."""
    from tarbuild import Tar
    good = ob.tar_bytes({".": None, **{f"f{i}": b"good %d\n" % i for i in range(50)}})
    t = Tar()
    for i in range(5000):
        t.file(f"b{i}", b"bad %d\n" % i * 100)
    bad = t.symlink("s", "nowhere").file("s/f", b"x").bytes()
    lay = ob.Layout(tmp_path / "lay")
    lay.image_of_tars([good, bad] if order == "over" else [bad, good], ref="refused:1")
    return lay


@pytest.mark.parametrize("order", ["over", "under"])
@pytest.mark.parametrize("verb", ["copy", "load", "pull", "api"])
def test_fsck_is_clean_straight_after_a_refused_image(tmp_path, reg, registry_env, verb, order):  # noqa: F811
    """A refused layer under a good one: the good one extracts beside it (it names its root, so it
    needs nothing from below) and its dedup pass makes objects, then its staging snapshot is
    dropped when the layer below is refused.  Those objects stayed: fsck warned 'object ...: not
    used by any snapshot' (unused-object, 50 of them) until gc.  Now the refusal collects them:
    copy and load leave fsck clean, and a pull only what it keeps for its rerun (its blobs, and
    the snapshots it committed).  With the refused layer over the good one nothing was left.
    The Store API's ``snapshots_for`` (``api``: tests/verbkit.load_layout) left them too."""
    from registryfixture import skopeo_push
    from conftest import require_tool
    lay = _refused_stack(tmp_path, order)
    root = tmp_path / "root"
    trace = tmp_path / "trace"
    if verb == "copy":
        argv = ["copy", f"oci:{lay.root}:refused:1", "refused:1"]
    elif verb == "load":
        archive = tmp_path / "refused.tar"
        subprocess.run([require_tool("skopeo"), "copy", "-q", f"oci:{lay.root}:refused:1",
                        f"docker-archive:{archive}:refused:1"], check=True)
        argv = ["load", "-i", str(archive)]
    elif verb == "pull":
        skopeo_push(f"oci:{lay.root}:refused:1", reg.host, "refused:1")
        argv = ["pull", f"{reg.host}/refused:1"]
    if verb == "api":
        code = ("import sys\nfrom lamina.store import Store\nfrom verbkit import load_layout\n"
                "try:\n    load_layout(Store(sys.argv[1]), sys.argv[2], 'refused:1', 'refused:1')\n"
                "except Exception as e:\n    sys.exit(f'lamina: error: {e}')\n")
        proc = subprocess.run([sys.executable, "-c", code, str(root), str(lay.root)], capture_output=True,
                              text=True, env={**os.environ, "LAMINA_TRACE": str(trace),
                                              "PYTHONPATH": os.path.dirname(os.path.abspath(__file__))})
    else:
        proc = lamina(root, *argv, check=False, env={**os.environ, "LAMINA_TRACE": str(trace)})
    assert proc.returncode == 1 and "'s' goes through a dangling symlink" in proc.stderr, proc.stderr
    if order == "under":
        # the case this is about happened: the good layer's dedup pass ran before the refusal
        assert " dedup chain=" in trace.read_text(), trace.read_text()
    report = fsck(root)
    kept = {"orphan-blob", "orphan-snapshot"} if verb == "pull" else set()
    assert [f for f in report["findings"] if f["kind"] not in kept] == [], report["findings"]


def test_a_hardlink_to_a_lower_file_with_identical_neighbours_is_checked_as_extracted(tmp_path):
    """Identical files in one directory share an object inode once the store's dedup ran; a
    later layer's hardlink to one of them copies it up and links the names the layer below
    has on its inode, save those that share it through dedup.  fsck's extraction of the layer
    did not know those names: it linked every identical neighbour too, called the snapshot bad
    ("d/f1: missing from the snapshot"), and --repair put its tree in, making d/f1 (and all its
    like) one inode with d/f0 and the link in the image (an unpack, a mount)."""
    from everypath import write_image
    from tarbuild import Tar
    names = [f"d/f{i}" for i in range(6)]
    base = Tar()
    for n in names:
        base.file(n, b"same bytes\n")
    top = Tar().hardlink("y", "d/f0")
    layout = write_image(tmp_path / "layout", [base.bytes(), top.bytes()])
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{layout}:img", "img:1")

    def groups(tag):
        dest = tmp_path / f"unpacked-{tag}"
        lamina(root, "unpack", "img:1", dest)
        inodes = {}
        for n in names + ["y"]:
            inodes.setdefault(os.lstat(dest / n).st_ino, set()).add(n)
        return sorted(sorted(g) for g in inodes.values())

    want = [["d/f0", "y"]] + [[n] for n in names[1:]]
    assert groups("before") == want
    report = fsck(root)
    assert report["ok"] and report["findings"] == [], report["findings"]
    report = fsck(root, "--repair")
    assert report["ok"] and report["findings"] == [], report["findings"]
    assert groups("after") == want
    # and damage is still found: a neighbour made a hardlink of the link behind lamina's back
    snaps = [p for p in (root / "snapshots").iterdir() if not p.name.startswith(".")]
    top_fs = next(p / "fs" for p in snaps if json.load(open(p / "meta.json")).get("parent"))
    os.link(top_fs / "y", top_fs / "d" / "f3")
    report = fsck(root)
    assert [f["kind"] for f in report["findings"]] == ["bad-snapshot"] and "d/f3" in report["findings"][0]["message"]


def test_a_snapshot_whose_blob_went_is_checked_from_another_blob_of_its_layer(tmp_path):
    """Two images hold one layer by two blobs (plain and gzipped).  Once the image whose blob the
    snapshot was extracted from is removed, gc takes that blob; fsck then warned it could not
    verify the snapshot ("its layer blob ... is missing"), though the other image's blob is the
    same layer.  It checks the snapshot from that blob now (found by test_fuzz_store.py)."""
    lay = ob.Layout(tmp_path / "src")
    files = {"etc": None, "etc/conf": b"original\n"}
    lay.add(lay.image([files], compress=False, config_extra={"config": {"Labels": {"by": "plain"}}}), "p:1")
    lay.add(lay.image([files], config_extra={"config": {"Labels": {"by": "gzip"}}}), "g:1")
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{lay.root}:p:1", "p:1")
    lamina(root, "copy", f"oci:{lay.root}:g:1", "g:1")
    plain, gz = Store(root).resolve("p:1"), Store(root).resolve("g:1")
    assert plain.chain_ids == gz.chain_ids and plain.layers[0].digest != gz.layers[0].digest
    lamina(root, "rmi", "p:1")
    assert not Store(root).has_blob(plain.layers[0].digest)
    assert fsck(root)["findings"] == []
    # and it is checked indeed: a change is found, and repaired from the gzipped blob
    fs = Store(root).snapshot_dir(gz.chain_ids[0])
    os.chmod(fs / "etc", 0o700)   # (a directory: no file object changes with it)
    report = fsck(root)
    assert kinds(report) == [("error", "bad-snapshot", False)] and "etc" in report["findings"][0]["message"]
    # (the fresh extraction's files are its own: the old ones' objects go as unused)
    assert ("error", "bad-snapshot", True) in kinds(fsck(root, "--repair"))
    assert os.stat(fs / "etc").st_mode & 0o777 == 0o755
    assert Store(root).snapshot_info(gz.chain_ids[0]).digest == gz.layers[0].digest
    assert fsck(root)["findings"] == []


@pytest.mark.parametrize("keep_blobs", ["true", "false"])
def test_a_changed_lower_snapshot_is_blamed_alone_and_repaired_before_the_layers_above(tmp_path, keep_blobs):
    """The layer above implies directory d, which its snapshot holds copied up with the metadata
    of the d below (overlay format).  d's mode changed in the lower snapshot: fsck extracted the
    upper layer again over that changed lower, blamed the good upper snapshot too, and --repair
    replaced it with one carrying the changed mode (the image's d became 0700 for good, and fsck
    still failed).  Lowers are checked first: a difference above a bad snapshot leaves the upper
    unverified (a warning naming the one below), and --repair checks it over the repaired one."""
    from tarbuild import Tar
    bottom, top = Tar(), Tar()
    bottom.dir("d", mode=0o755).file("d/a", b"a\n")
    top.file("d/f", b"f\n")
    lay = ob.Layout(tmp_path / "src")
    lay.image_of_tars([bottom.bytes(), top.bytes()], "app:1")
    root = tmp_path / "root"
    lamina(root, "config", "set", "keep-blobs", keep_blobs)
    lamina(root, "config", "set", "dedup", "false")
    lamina(root, "copy", f"oci:{lay.root}:app:1", "app:1")
    lamina(root, "unpack", "app:1", tmp_path / "before")
    with Store(root) as store:
        image = store.resolve("app:1")
        lower, upper = (store.snapshot_dir(c) for c in image.chain_ids)
    assert os.path.isdir(upper / "d")  # (copied up: else this tests nothing)
    os.chmod(lower / "d", 0o700)
    report = fsck(root)
    assert [(f["severity"], f["kind"], f["subject"]) for f in report["findings"]] == \
        [("error", "bad-snapshot", image.chain_ids[0]), ("warning", "unverifiable-snapshot", image.chain_ids[1])]
    assert image.chain_ids[0] in report["findings"][1]["message"]
    report = fsck(root, "--repair")
    assert [(f["kind"], f["repaired"]) for f in report["findings"]] == [("bad-snapshot", True)]
    assert fsck(root)["findings"] == []
    lamina(root, "unpack", "app:1", tmp_path / "after")
    assert_same(snapshot(tmp_path / "before"), snapshot(tmp_path / "after"), labels=("stored", "repaired"))


def test_a_symlink_whose_mtime_changed_in_a_snapshot_is_found_and_repaired(tmp_path):
    """A symlink's mtime is the layer's on every path (the extractor sets it without following
    the link, dedup and copy-ups never touch it), but fsck compared mtimes of regular files
    only: a symlink's changed behind lamina's back went on into unpack and mount unseen."""
    from everypath import write_image
    from tarbuild import Tar
    base = Tar().dir("etc").file("etc/conf", b"x\n").symlink("etc/ln", "conf")
    layout = write_image(tmp_path / "layout", [base.bytes()])
    root = tmp_path / "root"
    lamina(root, "copy", f"oci:{layout}:img", "img:1")
    assert fsck(root)["findings"] == []
    with Store(root) as store:
        fs = store.snapshots_for(store.resolve("img:1"))[0]
    want = os.lstat(fs / "etc" / "ln").st_mtime_ns
    os.utime(fs / "etc" / "ln", ns=(want + 10**9, want + 10**9), follow_symlinks=False)
    report = fsck(root)
    assert kinds(report) == [("error", "bad-snapshot", False)]
    assert report["findings"][0]["message"].endswith("'etc/ln': mtime differs"), report["findings"]
    # (the snapshot put back is a fresh extraction: etc/conf's object is no longer used)
    assert kinds(fsck(root, "--repair")) == [("error", "bad-snapshot", True), ("warning", "unused-object", True)]
    assert os.lstat(fs / "etc" / "ln").st_mtime_ns == want
    assert fsck(root)["findings"] == []
