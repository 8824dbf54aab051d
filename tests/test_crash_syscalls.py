"""The store's verbs killed (SIGKILL) or failed (EIO, ENOSPC) at the Nth call of a syscall,
by strace's fault injection: no kill point chosen by hand, every commit-relevant call in turn.

For each command (copy and pull over a store already holding a layer of the image, into a
default and a compact store; rmi, image prune -a, tag; unpack and unpack --link, one that
compacts the store on its way): strace counts the calls of each syscall the command makes once
it reaches the work directory (Python's own start-up opens are not the store's), then the
command runs again under ``strace -f -e inject=CALL:signal=SIGKILL:when=N``.  After the kill:
``lamina fsck`` finds no error, or ``fsck --repair`` leaves none; DEST does not exist after an
unpack killed; the same command run again succeeds; every image the store names unpacks to the
tree a plain ``lamina unpack oci:`` gives; ``fsck --repair`` then leaves no finding at all
(nothing leaked).  An injected error instead: one ``lamina: error:`` line, then the same.

The default run kills each command at a few calls; LAMINA_CRASH_DEEP=1 goes over every N up
to 50 calls past the first one in the work directory, then every 7th, of every syscall.
"""
from __future__ import annotations

import collections
import dataclasses
import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess

import pytest

from conftest import require_tool
from registryfixture import registry_env  # noqa: F401 (a fixture)
from storekit import LAMINA, lamina, pushed_three, three_images
from treecmp import compare, snapshot

DEEP = os.environ.get("LAMINA_CRASH_DEEP") == "1"
CALLS = ("renameat2", "renameat", "rename", "linkat", "link", "unlinkat", "unlink", "rmdir", "fsync",
         "fdatasync", "syncfs", "ftruncate", "write", "pwrite64", "openat", "mkdir", "mkdirat")


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """a:1 and b:1 sharing their base layer (whose files dedup shares among themselves); c:1
    over the same base layer shipped as another blob (uncompressed)."""
    return three_images(tmp_path_factory.mktemp("crashsys"))


@pytest.fixture(scope="module")
def pushed(layout, tmp_path_factory):
    yield from pushed_three(layout[0], tmp_path_factory.mktemp("crashsys-reg"), "crash")


# What the cases of this module share, so that each store is made, and each command counted,
# once (the default run stays short): {setup's label: a template store it made} and
# {(case name, argv): (the work dir it ran in, the lines of its strace of every CALLS)}
_TEMPLATES = {}
_TRACES = {}


class Case:
    """A command over a store prepared by ``setup``; ``names`` maps each image name the store
    may hold to its reference tree ('a' or 'b')."""

    def __init__(self, work, lay, trees, setup, argv, names, dest=None, name=None, stdin=None):
        self.work, self.lay, self.trees = work, lay, trees
        self.setup, self.argv, self.names, self.dest, self.name = setup, argv, names, dest, name
        self.stdin = stdin   # a file the command reads on its stdin (through a pipe)
        self.root = work / "root"
        self.template = work / "template"

    def prepare(self):
        made = _TEMPLATES.get(self.setup.label)
        if made is None:
            self.setup(self.root)
            _TEMPLATES[self.setup.label] = self.template
            subprocess.run(["cp", "-a", self.root, self.template], check=True)  # overlay whiteouts: cp, not copytree
        else:
            subprocess.run(["cp", "-a", made, self.template], check=True)
            subprocess.run(["cp", "-a", self.template, self.root], check=True)

    def reset(self):
        shutil.rmtree(self.root)
        subprocess.run(["cp", "-a", self.template, self.root], check=True)
        if self.dest is not None and os.path.lexists(self.dest):
            shutil.rmtree(self.dest)

    def run(self, *strace_args, timeout=300):
        cmd = [*LAMINA, "--root", str(self.root), *map(str, self.argv)]
        if strace_args:
            # (not --seccomp-bpf: strace 6.1 injects nothing with it, and the kills passed unmade)
            cmd = ["strace", "-f", "-qq", *strace_args, "--", *cmd]
        if self.stdin is None:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        # a pipe, not the file: what `cat ARCHIVE | lamina load` gives, which load spools
        with subprocess.Popen(["cat", self.stdin], stdout=subprocess.PIPE) as cat:
            proc = subprocess.run(cmd, stdin=cat.stdout, capture_output=True, text=True, timeout=timeout)
            cat.stdout.close()
        return proc

    def traced(self):
        """The command's calls of CALLS as strace shows them (fds as paths, pids dropped), in
        order, the work directory named as this case's own."""
        key = (self.name, tuple(map(str, self.argv)))
        if key not in _TRACES:
            require_tool("strace")
            trace = self.work / "count.strace"
            self.run("-y", "-o", trace, "-e", "trace=" + ",".join(CALLS))
            self.reset()
            _TRACES[key] = (str(self.work), [line.split(None, 1)[-1] for line in open(trace, errors="replace")])
        work, lines = _TRACES[key]
        return [line.replace(work, str(self.work)) for line in lines]

    def calls(self):
        """{syscall: (calls before the first one that named the work directory, calls from it on)}."""
        seen, started = collections.defaultdict(list), {}
        for rest in self.traced():
            name = rest.split("(", 1)[0]
            if name not in CALLS:
                continue
            if str(self.work) in rest and name not in started:
                started[name] = len(seen[name])
            seen[name].append(rest)
        return {n: (started[n], len(seen[n]) - started[n]) for n in started}

    def nth_call(self, call, fragment):
        """N of the command's first ``call`` whose arguments (fds shown as paths) hold ``fragment``."""
        lines = [rest for rest in self.traced() if rest.startswith(call + "(")]
        return next(i for i, line in enumerate(lines, 1) if fragment in line)

    def check(self, what):
        """After a kill or an error: the store is consistent, the command runs again, every
        image unpacks to its tree, and nothing is left over."""
        if self.dest is not None and os.path.lexists(self.dest):   # killed past its commit: whole
            got = snapshot(self.dest)
            if "--link" in self.argv:   # the store's inodes, which dedup shares: not the image's hardlink groups
                got = dataclasses.replace(got, links=self.trees["a"].links)
            diff = compare(self.trees["a"], got, labels=("reference", f"DEST {what}"))
            assert not diff, diff
            shutil.rmtree(self.dest)
        errors = fsck_errors(self.root)
        if errors:
            lamina(self.root, "fsck", "--repair", check=False)
            assert fsck_errors(self.root) == [], f"{what}: fsck --repair left errors (before: {errors})"
        again = self.run()
        if self.dest is not None:   # the rerun swept what the stopped unpack left beside DEST
            assert os.listdir(self.dest.parent) == [self.dest.name] or again.returncode, \
                f"{what}: left beside DEST: {os.listdir(self.dest.parent)}"
            shutil.rmtree(self.dest)
        gone = self.argv[0] == "rmi" and "no such image" in again.stderr   # the kill came after the untag
        assert again.returncode == 0 or gone, f"{what}: the command run again failed:\n{again.stderr}"
        listed = lamina(self.root, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        for name in listed:
            assert name in self.names, (what, name, listed)
            out = self.work / "check-tree"
            lamina(self.root, "unpack", name, out)
            diff = compare(self.trees[self.names[name]], snapshot(out), labels=("reference", f"{name} {what}"))
            shutil.rmtree(out)
            assert not diff, diff
        lamina(self.root, "fsck", "--repair", check=False)
        report = json.loads(lamina(self.root, "fsck", "--json", check=False).stdout)
        assert report["findings"] == [], f"{what}: {report['findings']}"


def fsck_errors(root):
    proc = lamina(root, "fsck", "--json", check=False)
    return [f for f in json.loads(proc.stdout)["findings"] if f["severity"] == "error"]


def sample(n_calls):
    """The Ns to inject at (1-based, counted from the first call in the work directory)."""
    if DEEP:
        return [n for n in range(1, n_calls + 1) if n <= 50 or n % 7 == 0]
    return [(n_calls + 1) // 2] if n_calls else []


# The default run: one kill per command, halfway through the first of these it makes (a store
# commits by renames, makes durable by fsyncs; unpack puts the staging dir on DEST by renameat2)
DEFAULT_CALLS = ("rename", "renameat2", "fsync", "unlinkat")


def _injected_calls(calls, default):
    """The syscalls to inject at: all of them (deep), else the first of ``default`` the command makes."""
    if DEEP:
        return CALLS
    return [next((c for c in default if calls.get(c, (0, 0))[1]), default[0])]


def _cases(layout, tmp_path, name, reg=None):
    lay, trees = layout
    src = f"oci:{lay.root}"

    def copied(*refs, compact=False):
        def setup(root):
            if compact:
                lamina(root, "config", "set", "keep-blobs", "false")
            for ref in refs:
                lamina(root, "copy", f"{src}:{ref}", f"{ref}:1")
        setup.label = f"copied {' '.join(refs)}" + (" compact" if compact else "")
        return setup

    def pulled(*refs, compact=False):
        def setup(root):
            if compact:
                lamina(root, "config", "set", "keep-blobs", "false")
            for ref in refs:
                lamina(root, "pull", f"{reg.host}/crash:{ref}")
        setup.label = f"pulled {' '.join(refs)}" + (" compact" if compact else "")
        return setup

    def empty(root):
        root.mkdir()
    empty.label = "empty"

    def compacted_after(setup):
        def then_compact(root):
            setup(root)
            lamina(root, "config", "set", "keep-blobs", "false")
        then_compact.label = setup.label + ", then keep-blobs false"
        return then_compact

    dest = tmp_path / "out" / "dest"
    names = {"a:1": "a", "b:1": "b", "c:1": "a"}
    if reg is not None:
        names = {f"{reg.host}/crash:{ref}": ref for ref in "abc"}
    cases = {
        "copy": (copied("a"), ["copy", f"{src}:b", "b:1"]),
        "copy-compact": (copied("a", compact=True), ["copy", f"{src}:b", "b:1"]),
        "rmi": (copied("a", "b"), ["rmi", "a:1"]),
        "prune": (copied("a", "b"), ["image", "prune", "-a", "-f"]),
        "tag": (copied("a", "b"), ["tag", "a:1", "c:1"]),
        "unpack": (copied("a", "b"), ["unpack", "a:1", dest]),
        "unpack-link": (copied("a", "b"), ["unpack", "--link", "a:1", dest]),
        # keep-blobs false set on a store holding images: the next use compacts the image
        "unpack-compacting": (compacted_after(copied("a", "b")), ["unpack", "a:1", dest]),
        "pull": (pulled("a"), ["pull", f"{reg.host}/crash:b"] if reg else None),
        # no store: the layers stream from the registry straight into DEST's staging dir
        "unpack-docker": (empty, ["unpack", f"docker://{reg.host}/crash:a", dest] if reg else None),
        "pull-compact": (pulled("a", compact=True), ["pull", f"{reg.host}/crash:b"] if reg else None),
        # the base layer held compact, from another blob than the one this image names
        "pull-compact-other-blob": (pulled("a", compact=True), ["pull", f"{reg.host}/crash:c"] if reg else None),
    }
    stdin = None
    if name == "load-pipe":
        stdin = _saved_b(lay)
        cases[name] = (copied("a"), ["load"])
    setup, argv = cases[name]
    return Case(tmp_path, lay, trees, setup, argv, names, dest=dest if argv[0] == "unpack" else None, name=name,
                stdin=stdin)


def _saved_b(lay):
    """A docker-archive of b:1 (made once, beside the layout)."""
    archive = pathlib.Path(lay.root).parent / "b.tar"
    if not archive.exists():
        store = archive.parent / "save-store"
        lamina(store, "copy", f"oci:{lay.root}:b", "b:1")
        lamina(store, "save", "b:1", "-o", archive)
    return archive


STORE_CASES = ["copy", "copy-compact", "rmi", "prune", "tag", "unpack", "unpack-link", "unpack-compacting",
               "load-pipe"]
PULL_CASES = ["pull", "pull-compact", "unpack-docker"]
if not DEEP:  # the default run stays short: the commands whose commits the others' share
    STORE_CASES = ["copy-compact", "rmi", "unpack-link", "unpack-compacting"]
    PULL_CASES = ["pull-compact", "unpack-docker"]


def _each_injection(case, default, action):
    """Run the case with strace's inject ``action`` at each sampled call in turn; yields
    (the process, the injected call as strace shows it or None, what was done)."""
    require_tool("strace")
    case.prepare()
    calls = case.calls()
    trace = case.work / "inject.strace"
    ran = 0
    for name in _injected_calls(calls, default):
        skip, count = calls.get(name, (0, 0))
        for n in sample(count):
            case.reset()
            proc = case.run("-o", trace, "-y", "-e", f"trace={name}", "-e", f"inject={name}:{action}:when={n + skip}")
            injected = next((line.strip() for line in open(trace, errors="replace") if "(INJECTED)" in line), None)
            yield proc, injected, f"{' '.join(map(str, case.argv[:2]))}, {action} at {name} #{n + skip}"
            ran += 1
    assert ran, f"no call to inject at: {dict(calls)}"


def _check_or_keep(case, what, injected):
    """case.check(what), and on a failure the store as the kill left it copied aside, with a
    first line naming the kill point and what fsck said (a deep run's report may be cut)."""
    lines = [line.strip() for line in open(case.work / "inject.strace", errors="replace") if "(" in line]
    injected = injected or (lines[-1] if lines else None)   # a kill shows no "(INJECTED)"
    if injected:
        what = f"{what}: {injected}"
    kept = case.work / "killed-store"
    if os.path.lexists(kept):
        shutil.rmtree(kept)
    subprocess.run(["cp", "-a", case.root, kept], check=True)
    try:
        case.check(what)
    except AssertionError as e:
        fsck = lamina(kept, "fsck", check=False)
        raise AssertionError(f"killed at {what}\nfsck right after the kill (exit {fsck.returncode}):\n"
                             f"{fsck.stdout}{fsck.stderr}\nthe store as killed: {kept}\n{e}") from None


def _kill_everywhere(case):
    runs = killed = 0
    for proc, injected, what in _each_injection(case, DEFAULT_CALLS, "signal=SIGKILL"):
        assert proc.returncode in (0, -signal.SIGKILL), f"{what}: exit {proc.returncode}\n{proc.stderr}"
        _check_or_keep(case, what, injected)
        runs += 1
        killed += proc.returncode == -signal.SIGKILL
    # An injection strace never made exits 0 too (a count that went stale, an option that
    # turned injection off): a run where that is the rule proves nothing.
    assert killed * 2 >= runs, f"only {killed} of {runs} injections killed the process"
    print(f"{' '.join(map(str, case.argv[:2]))}: {killed} kills of {runs} injections, each checked")


@pytest.mark.parametrize("name", STORE_CASES)
def test_sigkill_at_each_syscall(layout, tmp_path, name):
    _kill_everywhere(_cases(layout, tmp_path, name))


@pytest.mark.parametrize("name", PULL_CASES)
def test_sigkill_at_each_syscall_of_a_pull(layout, pushed, tmp_path, name, registry_env):
    _kill_everywhere(_cases(layout, tmp_path, name, reg=pushed))


# The default run: one error per command, halfway through its fsyncs (or renames)
DEFAULT_FAILING_CALLS = ("fsync", "rename", "renameat2")


def _fail_everywhere(case, err):
    """Each call that names the work directory fails with ``err`` in turn."""
    for proc, injected, what in _each_injection(case, DEFAULT_FAILING_CALLS, f"error={err}"):
        if not injected or str(case.work) not in injected:
            continue   # not a call on the store or DEST (progress on stderr, a module opened)
        what = f"{what}: {injected}"
        assert proc.returncode in (0, 1), f"{what}: exit {proc.returncode}\n{proc.stderr}"
        if proc.returncode:
            lines = proc.stderr.strip().splitlines()
            assert "Traceback" not in proc.stderr and lines[-1].startswith("lamina: error: "), \
                f"{what}:\n{proc.stderr}"
            assert lines[-1] != f"lamina: error: {os.strerror(getattr(errno, err))}", \
                f"{what}: the error does not say what failed"
        case.check(what)


@pytest.mark.parametrize("err", ["EIO", "ENOSPC"] if DEEP else ["ENOSPC"])
@pytest.mark.parametrize("name", STORE_CASES)
def test_an_error_at_each_syscall(layout, tmp_path, name, err):
    _fail_everywhere(_cases(layout, tmp_path, name), err)


@pytest.mark.parametrize("err", ["EIO", "ENOSPC"] if DEEP else ["ENOSPC"])
@pytest.mark.parametrize("name", PULL_CASES if DEEP else ["unpack-docker"])
def test_an_error_at_each_syscall_of_a_pull(layout, pushed, tmp_path, name, err, registry_env):
    _fail_everywhere(_cases(layout, tmp_path, name, reg=pushed), err)


def _fail_first(case, call, fragment, err):
    """Run the case with the first ``call`` on a file whose name holds ``fragment`` failing with
    ``err``: (the process, its one error line)."""
    case.prepare()
    n = case.nth_call(call, fragment)
    proc = case.run("-o", "/dev/null", "-e", f"trace={call}", "-e", f"inject={call}:error={err}:when={n}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("lamina: error: "), proc.stderr
    return proc, line


@pytest.mark.parametrize("err", ["EIO", "ENOSPC"])
def test_a_blob_whose_sync_fails_is_named_and_the_copy_runs_again(layout, tmp_path, err):
    """The fsync(2) of a blob's ingest file before its rename into blobs/ failed: the error was
    the bare 'Input/output error', naming neither the blob nor the store."""
    case = _cases(layout, tmp_path, "copy")
    _, line = _fail_first(case, "fsync", "/ingest/", err)
    assert "blob sha256:" in line and str(case.root) in line and os.strerror(getattr(errno, err)) in line, line
    case.check(f"fsync of a blob failing with {err}")


def test_a_sidecar_whose_sync_fails_is_named_and_the_unpack_runs_again(layout, tmp_path):
    """An unpack compacting the image (keep-blobs false set since it was stored): the fsync(2)
    of the layer's new tarsplit.lz4 failed, and the error was the bare 'Input/output error'."""
    case = _cases(layout, tmp_path, "unpack-compacting")
    _, line = _fail_first(case, "fsync", "tarsplit.lz4", "EIO")
    assert "tarsplit.lz4" in line and "Input/output error" in line, line
    case.check("fsync of a sidecar failing with EIO")



def test_a_pull_fetching_a_blob_whose_snapshot_exists_waits_for_its_spooler(layout, pushed, tmp_path, registry_env):
    """A compact store pulling an image over a layer it holds as a snapshot made from another
    blob of that layer (uncompressed here), dropped: the image's blob is fetched, to be checked
    against the diffID, through the extraction's tee, whose spooler thread downloads
    ahead; the extraction finds the snapshot there and the pull read the rest of the stream
    itself, racing that thread.  When the spooler had read the whole blob but not yet written it
    (here: every write(2) made slow by strace), the pull committed an empty ingest and failed:
    'blob sha256:…: got 0 bytes, expected 524'."""
    require_tool("strace")
    case = _cases(layout, tmp_path, "pull-compact-other-blob", reg=pushed)
    case.prepare()
    proc = case.run("-o", "/dev/null", "-e", "trace=write", "-e", "inject=write:delay_enter=50000")
    assert proc.returncode == 0, proc.stderr
    lay = layout[0]
    entry = next(e for e in lay.entries if e["annotations"]["org.opencontainers.image.ref.name"] == "c")
    base = lay.read_json(entry["digest"])["layers"][0]["digest"]
    assert f"{base[7:19]}: Pull complete" in proc.stdout, proc.stdout   # fetched, not "Already exists"
    case.check("a pull with slow writes")


def test_an_unpack_killed_before_it_names_its_staging_dir_leaves_nothing_behind(layout, tmp_path):
    """The staging dir of an unpack is made as DEST.lamina-new-*, locked, then renamed to
    DEST.lamina-tmp-*, which the next unpack to DEST sweeps when nobody holds it.  Killed before
    that rename (SIGKILL at it), the newborn dir stayed beside DEST for ever: no unpack swept it."""
    case = _cases(layout, tmp_path, "unpack")
    case.prepare()
    n = case.nth_call("renameat", ".lamina-new-")
    proc = case.run("-o", "/dev/null", "-e", "trace=renameat", "-e", f"inject=renameat:signal=SIGKILL:when={n}")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [x for x in os.listdir(case.dest.parent) if ".lamina-new-" in x], os.listdir(case.dest.parent)
    case.check("killed at the rename of its newborn staging dir")


def test_a_lock_file_that_cannot_be_removed_is_still_unlocked(layout, tmp_path):
    """FileLock.release(unlink=True) raised when unlink(2) of the lock file failed (EIO) before it
    closed the fd: the process kept the snapshot's flock and, compacting the image next, waited
    for that lock on a new fd for ever (a copy into a compact store hung)."""
    case = _cases(layout, tmp_path, "copy-compact")
    case.prepare()
    n = case.nth_call("unlink", "locks/snapshot-")
    try:
        proc = case.run("-o", "/dev/null", "-e", "trace=unlink", "-e", f"inject=unlink:error=EIO:when={n}",
                        timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the copy waited for a lock it holds itself")
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode:
        assert "locks/snapshot-" in proc.stderr.strip().splitlines()[-1], proc.stderr
    case.check("the unlink of a snapshot lock failing with EIO")


def test_a_directory_whose_sync_fails_is_named(layout, tmp_path):
    """fsync(2) of a directory after a rename into it (here the store's root, once the oci-layout
    file says the store is compact) failed with the bare 'Input/output error'."""
    case = _cases(layout, tmp_path, "unpack-compacting")
    _, line = _fail_first(case, "fsync", f"{case.root}>", "EIO")
    assert str(case.root) in line and "Input/output error" in line, line
    case.check("fsync of the store's root failing with EIO")


def test_a_progress_line_that_cannot_be_written_does_not_fail_the_copy(layout, tmp_path):
    """stderr carries only progress ('Copying blob ...'): write(2) of such a line failing (EIO:
    a terminal gone, a full log disk) raised out of the copy's reporter and failed the copy, its
    blobs stored and the image not named."""
    case = _cases(layout, tmp_path, "copy")
    case.prepare()
    n = case.nth_call("write", "Copying blob")
    proc = case.run("-o", "/dev/null", "-e", "trace=write", "-e", f"inject=write:error=EIO:when={n}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("\n"), proc.stderr   # that line was lost (its newline, written apart, was not)
    assert "b:1" in lamina(case.root, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    case.check("a progress line failing with EIO")


def test_the_json_a_copy_prints_is_its_product_and_a_failed_write_fails_it(layout, tmp_path):
    """The other side of the rule above: --format json on stdout is what the caller asked for,
    and a copy that could not write it must not say it succeeded."""
    case = _cases(layout, tmp_path, "copy")
    case.argv = [*case.argv, "--format", "json"]
    _, line = _fail_first(case, "write", "write(1<", "EIO")   # its first write to stdout
    assert "Input/output error" in line, line
    case.argv = case.argv[:-2]
    case.check("the JSON on stdout failing with EIO")


def test_a_blob_lock_that_cannot_be_removed_does_not_fail_the_copy(layout, tmp_path):
    """unlink(2) of a blob's lock file failing (EIO) once the blob committed raised out of the
    ingest and failed the copy: the lock file is only a leftover, which fsck sweeps."""
    case = _cases(layout, tmp_path, "copy")
    case.prepare()
    n = case.nth_call("unlink", "locks/blob-")
    proc = case.run("-o", "/dev/null", "-e", "trace=unlink", "-e", f"inject=unlink:error=EIO:when={n}")
    assert proc.returncode == 0, proc.stderr
    assert any(n.startswith("blob-") for n in os.listdir(case.root / "locks")), "no lock file left: nothing injected"
    case.check("the unlink of a blob lock failing with EIO")


@pytest.mark.parametrize("err", ["EIO", "ENOSPC"])
def test_a_blob_whose_download_cannot_restart_is_named(layout, tmp_path, err):
    """ftruncate(2) of a blob's ingest file, emptied to start the blob again from byte 0, failed:
    the error was the bare 'No space left on device' (found by the deep run of the injections)."""
    case = _cases(layout, tmp_path, "copy")
    _, line = _fail_first(case, "ftruncate", "/ingest/", err)
    assert "blob sha256:" in line and str(case.root) in line and os.strerror(getattr(errno, err)) in line, line
    case.check(f"ftruncate of a blob's ingest file failing with {err}")


@pytest.mark.parametrize("err", ["EIO"] + (["ENOSPC"] if DEEP else []))   # (ENOSPC: test_store_full_fs too)
def test_a_load_from_a_pipe_whose_spool_cannot_be_written_names_it(layout, tmp_path, err):
    """write(2) of the archive ``lamina load`` spools from stdin failing with EIO: the error was
    the bare 'Input/output error' (found by the deep run of the injections); ENOSPC was named."""
    case = _cases(layout, tmp_path, "load-pipe")
    _, line = _fail_first(case, "write", "/ingest/load-", err)
    assert "the archive on stdin" in line and str(case.root) in line and os.strerror(getattr(errno, err)) in line, line
    case.check(f"write of the spool failing with {err}")

