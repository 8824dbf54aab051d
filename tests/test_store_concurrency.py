"""Many processes at once, and processes killed at random points: the store stays consistent."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import ocibuild as ob
from lamina.store import Store
from lamina.store import snapshots as _snapshots
from storekit import LAMINA, lamina, seeded_bytes

# Each worker counts the real work it does (blob commits, layer extractions) in a shared
# append-only file, then runs the CLI.  All workers start together when `go` appears.
WORKER = textwrap.dedent("""
    import os, sys, time
    counter, go, mode, root, arg = sys.argv[1:6]

    def log(kind, what):
        fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{kind} {what}\\n".encode())
        os.close(fd)

    from lamina.store import ingest, snapshots
    real_extract, real_commit = snapshots._extract, ingest.IngestWriter.commit

    def extract(blob, fs, digest, *rest, **kw):
        # logged once it succeeded: an attempt that stopped early for the layers
        # below it (NeedsLowers, extracted again over them) did not do the work
        stats = real_extract(blob, fs, digest, *rest, **kw)
        log("extract", digest)
        return stats

    def commit(self):
        if not self.exists:
            log("commit", self.digest)
        return real_commit(self)

    snapshots._extract, ingest.IngestWriter.commit = extract, commit
    while not os.path.exists(go):
        time.sleep(0.002)
    if mode == "load":
        from lamina.cli import main
        sys.exit(main(["--root", root, "load", "-q", "-i", arg]))
    from lamina.store import Store
    store = Store(root)
    dirs = store.snapshots_for(store.resolve(arg))
    assert all(os.path.isdir(d) for d in dirs)
""")


def _archive(path, layers=3, size=1 << 20):
    ob.legacy_docker_save(path, [{f"layer{i}": None, f"layer{i}/data.bin": seeded_bytes(f"l{i}", size)}
                                 for i in range(layers)], repo_tags=("race/app:1",))
    return path


def _run_together(tmp_path, mode, root, arg, n=8):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    counter, go = tmp_path / "counter", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, script, counter, go, mode, root, arg],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    go.touch()
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    for rc, out, err in results:
        assert rc == 0, err
    lines = counter.read_text().split("\n") if counter.exists() else []
    return [tuple(l.split()) for l in lines if l], results


def test_eight_processes_load_one_image_and_do_the_work_once(tmp_path):
    archive = _archive(tmp_path / "app.tar")
    root = tmp_path / "root"
    work, results = _run_together(tmp_path, "load", root, archive)
    assert all(out.strip() == "Loaded image: race/app:1" for _, out, _ in results)
    store = Store(root)
    image = store.resolve("race/app:1")
    commits = sorted(d for kind, d in work if kind == "commit")
    extracts = sorted(d for kind, d in work if kind == "extract")
    assert commits == sorted(set(image.blobs)), "every blob written exactly once"
    assert extracts == sorted(layer.digest for layer in image.layers), "every layer extracted exactly once"
    assert len(store.index.read()) == 1
    report = store.fsck()
    assert report.clean, [str(f) for f in report.findings]


def test_eight_processes_unpack_one_image_and_extract_each_layer_once(tmp_path):
    root = tmp_path / "root"
    lamina(root, "load", "-i", _archive(tmp_path / "app.tar", layers=4, size=256 << 10))
    store = Store(root)
    image = store.resolve("race/app:1")
    for chain in image.chain_ids:
        _snapshots.remove(store.paths, chain)
    work, _ = _run_together(tmp_path, "unpack", root, "race/app:1")
    assert sorted(d for kind, d in work if kind == "extract") == sorted(l.digest for l in image.layers)
    assert sorted(s.chain_id for s in store.snapshots()) == sorted(image.chain_ids)
    assert store.fsck().clean


def test_kill_9_at_random_points_then_fsck_and_rerun(tmp_path):
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    archive = tmp_path / "big.tar"
    # gzip-compressed layers in an OCI archive: ingest, inflate and extract all take a while.
    lay = ob.Layout(tmp_path / "src")
    m = lay.image([{f"d{i}": None, f"d{i}/blob": seeded_bytes(f"k{i}", 8 << 20)} for i in range(3)])
    lay.add(m, "docker.io/kill/me:1")
    lamina(tmp_path / "scratch", "copy", f"oci:{lay.root}:docker.io/kill/me:1", f"oci-archive:{archive}:docker.io/kill/me:1")
    root = tmp_path / "root"
    t0 = time.monotonic()
    lamina(tmp_path / "calibrate", "load", "-i", archive)
    full = time.monotonic() - t0  # only to spread the kill points over a whole load

    for i in range(8):
        proc = subprocess.Popen([*LAMINA, "--root", root, "load", "-i", archive],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(0, full)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check = lamina(root, "fsck", check=False)
        assert check.returncode == 0, f"seed {seed}, kill {i} after {delay:.3f}s:\n{check.stdout}{check.stderr}"
        assert "error:" not in check.stdout, f"seed {seed}:\n{check.stdout}"
        with Store(root) as store:
            if any(e for e in store.index.read()):  # that load finished: start over so the next kill hits work
                store.remove_image(m["digest"])
                store.gc()

    repair = lamina(root, "fsck", "--repair", check=False)
    assert repair.returncode == 0, f"seed {seed}:\n{repair.stdout}"
    assert lamina(root, "fsck").stdout.splitlines()[:-1] == [], "nothing left after --repair"
    assert lamina(root, "load", "-i", archive).stdout.strip() == "Loaded image: kill/me:1"
    report = Store(root).fsck()
    assert report.clean, (seed, [str(f) for f in report.findings])
    image = Store(root).resolve("kill/me:1")
    assert image.manifest_digest == m["digest"]
    assert (Store(root).snapshots_for(image)[2] / "d2" / "blob").read_bytes() == seeded_bytes("k2", 8 << 20)


def _blocked_on(path, pid):
    """True once process ``pid`` waits for a flock on ``path`` (a "->" line in /proc/locks)."""
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "->" in fields and fields[fields.index("->") + 4] == str(pid) \
                    and fields[fields.index("->") + 5].rsplit(":", 1)[-1] == str(ino):
                return True
    return False


def test_gc_waits_for_an_import_in_progress(tmp_path):
    """A blob ingested but not yet named is never collected: gc waits for the writer's lease."""
    root = tmp_path / "root"
    writer = Store(root)
    digest = writer.put_blob(b"not yet named")  # takes the shared lease
    proc = subprocess.Popen([sys.executable, "-c", "from lamina.store import Store; "
                             f"print(len(Store({str(root)!r}).gc().blobs))"], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _blocked_on(writer.paths.gc_lock, proc.pid):
        assert proc.poll() is None, "gc finished without waiting for the writer"
        assert time.monotonic() < deadline, "gc never blocked on the lease"
        time.sleep(0.01)
    assert writer.has_blob(digest)
    writer.close()
    out, _ = proc.communicate(timeout=60)
    assert out.strip() == "1" and not writer.has_blob(digest)
