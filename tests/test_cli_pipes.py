"""Every verb whose stdout is closed by its reader (lamina save | head -c 1000) ends quietly:
no traceback, no error line, exit status 141 (what a shell shows for a tool killed by
SIGPIPE) or 0 when it had written everything before the reader left."""
import os
import shlex
import signal
import stat
import subprocess
import sys

import pytest

import ocibuild as ob
from registryfixture import reg, registry_env  # noqa: F401
from storekit import lamina

SAMPLE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "sample", "image"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with an image big enough that no pipe buffer swallows its archive."""
    base = tmp_path_factory.mktemp("pipes")
    lay = ob.Layout(str(base / "lay"))
    lay.add(lay.image([{"big": os.urandom(3 << 20)}, {"small": b"x\n" * 1000}]), "big:1")
    root = base / "store"
    lamina(root, "copy", f"oci:{lay.root}:big:1", "big:1")
    archive = base / "big.tar"
    lamina(root, "save", "-o", str(archive), "big:1")
    blobs = base / "lay" / "blobs" / "sha256"
    layer = max(blobs.iterdir(), key=lambda p: p.stat().st_size)
    return {"root": root, "archive": archive, "layer": layer, "base": base}


def _verbs(w, tmp):
    return {
        "help": ["--help"],
        "version": ["--version"],
        "images": ["images"],
        "images-json": ["images", "--format", "json"],
        "image-ls": ["image", "ls", "-a"],
        "inspect": ["inspect", "big:1"],
        "history": ["history", "--no-trunc", "big:1"],
        "system-df": ["system", "df", "-v"],
        "save": ["save", "big:1"],
        "save-oci": ["save", "--format", "oci-archive", "big:1"],
        "copy-stdout": ["copy", "big:1", "docker-archive:/dev/stdout"],
        "load": ["load", "-i", str(w["archive"])],
        "fsck": ["fsck"],
        "fsck-json": ["fsck", "--format", "json"],
        "unpack": ["unpack", "big:1", str(tmp / "rootfs")],
        "unpack-json": ["unpack", "--format", "json", "big:1", str(tmp / "rootfs-json")],
        "apply": ["apply", str(w["layer"]), str(tmp / "applied")],
        "tag": ["tag", "big:1", "big:2"],
        "rmi": ["rmi", "big:2"],
        "prune": ["image", "prune", "-f"],
        "mount-list": ["mount"],
        "mount": ["mount", "big:1", str(tmp / "mnt")],
        "logout": ["logout", "127.0.0.1:9"],
        "completion": ["completion", "bash"],
    }


def _closed_stdout(root, args, sigpipe_default):
    """Run lamina with a stdout pipe whose reader is gone before lamina writes."""
    r, w = os.pipe()
    os.close(r)
    preexec = (lambda: signal.signal(signal.SIGPIPE, signal.SIG_DFL)) if sigpipe_default else None
    try:
        proc = subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), *args], stdout=w,
                              stderr=subprocess.PIPE, text=True, timeout=120, preexec_fn=preexec)
    finally:
        os.close(w)
    return proc


@pytest.mark.parametrize("sigpipe_default", [False, True], ids=["sigpipe-ignored", "sigpipe-default"])
@pytest.mark.parametrize("verb", list(_verbs({"archive": "", "layer": ""}, __import__("pathlib").Path("/"))))
def test_verb_with_stdout_closed_early(world, tmp_path, verb, sigpipe_default, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))  # logout: not the machine's credentials
    args = _verbs(world, tmp_path)[verb]
    if verb == "rmi":
        lamina(world["root"], "tag", "big:1", "big:2")
    proc = _closed_stdout(world["root"], args, sigpipe_default)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert "Broken pipe" not in proc.stderr and "lamina: error" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 141), (proc.returncode, proc.stderr)
    if verb == "mount" and (tmp_path / "mnt").exists():
        subprocess.run([sys.executable, "-m", "lamina", "--root", str(world["root"]), "umount", str(tmp_path / "mnt")],
                       capture_output=True, timeout=60)


def test_save_into_head_reports_nothing(world):
    """The case from the issue: the archive is cut short by head, lamina ends with 141 and says nothing."""
    proc = subprocess.run(f"{sys.executable} -m lamina --root {world['root']} save big:1 | head -c 1000 "
                          "> /dev/null; echo \"rc=${PIPESTATUS[0]}\"",
                          shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert proc.stderr == "" and proc.stdout.strip() == "rc=141", proc


@pytest.mark.parametrize("verb", ["pull", "push", "manifest"])
def test_registry_verbs_with_stdout_closed_early(world, reg, registry_env, verb):  # noqa: F811
    root = world["base"] / f"store-{verb}"
    lamina(root, "copy", f"oci:{SAMPLE}", "sample:1")
    ref = f"{reg.host}/pipes/sample:1"
    lamina(root, "tag", "sample:1", ref)
    if verb != "push":
        lamina(root, "push", ref)
    proc = _closed_stdout(root, ["manifest", "inspect", ref] if verb == "manifest" else [verb, ref], False)
    assert "Traceback" not in proc.stderr and "lamina: error" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 141), (proc.returncode, proc.stderr)


@pytest.mark.parametrize("argv", [["save", "-o", "{out}", "big:1"], ["save", "--format", "oci-archive", "-o", "{out}", "big:1"],
                                  ["copy", "big:1", "docker-archive:{out}"], ["copy", "big:1", "oci-archive:{out}"]],
                         ids=["save", "save-oci", "copy-docker", "copy-oci"])
def test_an_output_that_is_a_device_a_fifo_or_dev_stdout_is_written_through(world, tmp_path, argv):
    """A temp file renamed over the output replaced a device node with the archive: run on a real
    machine, ``save -o /dev/null`` made /dev/null a regular file for every program after, and
    ``copy … docker-archive:/dev/stdout`` (in this file's verbs) did the same to /dev/stdout.  A
    device is written to (1:3, a null device of our own), a FIFO gives its reader the archive,
    and /dev/stdout is this process's pipe: each stays what it was."""
    root = world["root"]
    cmd = [sys.executable, "-m", "lamina", "--root", str(root)]
    expected = lamina(root, *[a.format(out=tmp_path / "ref.tar") for a in argv]).returncode == 0 and \
        (tmp_path / "ref.tar").read_bytes()
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    lamina(root, *[a.format(out=null) for a in argv])
    assert stat.S_ISCHR(os.lstat(null).st_mode), "the device was replaced"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen([*cmd, *[a.format(out=fifo) for a in argv]], stderr=subprocess.PIPE)
    with open(fifo, "rb") as f:
        got = f.read()
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and got == expected
    before = os.readlink("/dev/stdout")
    try:
        for out in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"):
            proc = subprocess.run([*cmd, *[a.format(out=out) for a in argv]], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, timeout=120)
            # the whole stream is the archive: copy's digest line after it was junk to a reader
            assert proc.returncode == 0 and proc.stdout == expected, (out, proc.stdout[len(expected):], proc.stderr)
    finally:
        if not os.path.islink("/dev/stdout"):   # the machine's, put back whatever happened
            os.unlink("/dev/stdout")
            os.symlink(before, "/dev/stdout")
            pytest.fail("/dev/stdout was replaced by a regular file")
    assert sorted(os.listdir(tmp_path)) == ["fifo", "null", "ref.tar"]


@pytest.mark.parametrize("fmt", [None, "json", "{{.manifest_digest}}"])
@pytest.mark.parametrize("transport", ["docker-archive", "oci-archive"])
def test_copy_to_stdout_puts_its_report_on_stderr(world, tmp_path, transport, fmt):
    """With the archive on stdout, copy's report (the digest, or the document --format asks for)
    goes to stderr, where its progress already goes: docker save prints nothing beside its
    archive, and skopeo's own report on stdout corrupts the stream unless -q is given.  Into a
    file, the report stays on stdout."""
    root = world["root"]
    fmt_args = ["--format", fmt] if fmt else []
    into_file = lamina(root, "copy", *fmt_args, "big:1", f"{transport}:{tmp_path / 'ref.tar'}")
    report = into_file.stdout.replace(str(tmp_path / "ref.tar"), "/dev/stdout")   # a json document names it
    assert report.strip(), into_file
    proc = subprocess.run(f"{sys.executable} -m lamina --root {root} copy {' '.join(shlex.quote(a) for a in fmt_args)} "
                          f"big:1 {transport}:/dev/stdout | cat", shell=True, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (tmp_path / "ref.tar").read_bytes()
    assert proc.stderr.decode().endswith(report), (proc.stderr, report)
