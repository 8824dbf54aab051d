"""Bad input a new user types on the first day: each is one `lamina: error:` line that
names what they gave and what to do, and nothing is written where it should not be."""
import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time

import pytest

from conftest import require_root
from lamina.cli.store import FSCK_SHOWN_PER_KIND
from lamina.errors import InvalidReferenceError
from lamina.platform import Platform
from storekit import LAMINA, lamina
from test_store_badinput import fails

SAMPLE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "sample", "image"))


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    lamina(root, "copy", f"oci:{SAMPLE}:latest", "s:1")
    return root


@pytest.fixture
def docker_archive(store, tmp_path):
    path = tmp_path / "s.tar"
    lamina(store, "save", "-o", path, "s:1")
    return path


@pytest.mark.parametrize("argv", [
    ["unpack", f"oci:{SAMPLE}", ""], ["unpack", "", "out"], ["apply", "layer.tar", ""],
    ["load", "-i", ""], ["save", "-o", "", "s:1"], ["copy", f"oci:{SAMPLE}", ""], ["mount", "s:1", ""],
    ["umount", ""],
], ids=lambda a: " ".join(a[:2]))
def test_an_empty_path_is_refused_not_taken_for_the_cwd(tmp_path, store, argv):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run([*LAMINA, "--root", str(store), *argv], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("an empty path names nothing (use . for the current "
                                                         "directory)"), proc.stderr
    assert os.listdir(cwd) == []  # `unpack IMG ""` once filled the current directory


def test_apply_and_mount_onto_a_file(tmp_path, store):
    target = tmp_path / "file"
    target.write_bytes(b"keep me\n")
    layer = next(p for p in (tmp_path / "store" / "blobs" / "sha256").iterdir() if p.stat().st_size > 1000)
    msg = fails(store, "apply", layer, target, match="exists and is not a directory")
    assert msg == f"lamina: error: destination {target} exists and is not a directory"
    msg = fails(store, "mount", "s:1", target, match="exists and is not a directory")
    assert msg == f"lamina: error: mount target {target} exists and is not a directory"
    assert target.read_bytes() == b"keep me\n"


@pytest.mark.parametrize("spelling", ["link", "link/"])
def test_apply_apply_atomic_and_unpack_all_refuse_a_dest_that_is_a_symlink(tmp_path, store, spelling):
    """apply wrote through a DEST symlink into its target (as `tar -x -C link` does) where
    apply --atomic and unpack refused it: the same DEST was a directory to one verb and not to
    the others.  All three refuse it now, and nothing lands in the target (CONFORMANCE.md)."""
    target = tmp_path / "target"
    target.mkdir()
    os.symlink("target", tmp_path / "link")
    dest = str(tmp_path / spelling)
    layer = next(p for p in (store / "blobs" / "sha256").iterdir() if p.stat().st_size > 1000)
    # the reference: GNU tar follows the link (lamina's choice differs on purpose)
    gnu = tmp_path / "gnu-target"
    gnu.mkdir()
    os.symlink("gnu-target", tmp_path / "gnu-link")
    subprocess.run(["tar", "-xzf", layer, "-C", tmp_path / "gnu-link"], check=True)
    assert os.listdir(gnu)
    for argv in (["apply", layer, dest], ["apply", "--atomic", layer, dest], ["unpack", f"oci:{SAMPLE}", dest]):
        msg = fails(store, *argv, match="exists and is not a directory")
        assert str(tmp_path / "link") in msg and "partly applied" not in msg, (argv, msg)
        assert os.listdir(target) == [] and os.readlink(tmp_path / "link") == "target", argv
    from lamina import apply_layer
    from lamina.errors import ExtractError
    with pytest.raises(ExtractError, match="a symlink"):
        apply_layer(str(layer), dest)
    assert os.listdir(target) == []


@pytest.mark.parametrize("verb", [["mount", "{src}", "{tmp}/mnt"], ["inspect", "{src}"], ["history", "{src}"],
                                  ["tag", "{src}", "t:1"], ["rmi", "{src}"]], ids=lambda v: v[0])
def test_store_verbs_given_an_image_outside_the_store(tmp_path, store, verb):
    for src, how in ((f"oci:{SAMPLE}", f"lamina copy oci:{SAMPLE} NAME"),
                     ("docker://example.invalid/app:1", "lamina pull example.invalid/app:1")):
        argv = [a.format(src=src, tmp=tmp_path) for a in verb]
        msg = fails(store, *argv, match="is not an image in the store")
        assert msg == f"lamina: error: {src} is not an image in the store; bring it in first: {how}", msg
    assert not (tmp_path / "mnt").exists()


def test_a_store_image_named_like_a_transport_still_resolves(store):
    lamina(store, "tag", "s:1", "oci:1")
    assert lamina(store, "inspect", "--format", "{{.RepoTags}}", "oci:1").stdout.strip() == "[s:1 oci:1]"


def test_a_lone_platform_word_must_be_an_os_or_an_architecture(store, tmp_path):
    msg = fails(store, "unpack", "--platform", "bogus", f"oci:{SAMPLE}", tmp_path / "out",
                match="invalid platform 'bogus'")
    assert "not a known operating system or architecture" in msg
    assert not (tmp_path / "out").exists()
    with pytest.raises(InvalidReferenceError):
        Platform.parse("amd46")
    assert str(Platform.parse("aarch64")) == "linux/arm64/v8" and str(Platform.parse("s390x")) == "linux/s390x"


def test_archive_kinds_mixed_up(tmp_path, store, docker_archive):
    msg = fails(store, "unpack", f"oci-archive:{docker_archive}", tmp_path / "a", match="is a docker-archive")
    assert msg.endswith(f"not an oci-archive: use docker-archive:{docker_archive}"), msg
    msg = fails(store, "copy", f"oci-archive:{docker_archive}", "x:1", match="is a docker-archive")
    msg = fails(store, "unpack", f"oci:{docker_archive}", tmp_path / "b", match="is a file")
    assert msg.endswith(f"use oci-archive:{docker_archive} or docker-archive:{docker_archive}"), msg
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_legacy_docker_archive_says_it_has_no_manifest(tmp_path, store, docker_archive):
    out = lamina(store, "unpack", f"docker-archive:{docker_archive}", tmp_path / "out").stdout
    assert "manifest: none (legacy docker archive)\n" in out, out


def test_prune_prompt_without_an_answer(store):
    proc = subprocess.run([*LAMINA, "--root", str(store), "image", "prune", "-a"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.endswith("[y/N] \n"), repr(proc.stdout)
    assert "69f1fa1fadb5" in lamina(store, "images").stdout  # no answer is no


def test_copy_of_a_bare_path_names_the_transports(tmp_path, store, docker_archive):
    msg = fails(store, "copy", SAMPLE, "x:1", match="is a path, not an image name")
    assert f"(oci:{SAMPLE})" in msg, msg
    msg = fails(store, "copy", "s:1", str(tmp_path / "out.tar"), match="is a path, not an image name")
    assert f"(docker-archive:{tmp_path / 'out.tar'} or oci-archive:{tmp_path / 'out.tar'})" in msg, msg
    assert not (tmp_path / "out.tar").exists()


# --- the next ten, second pass (and the leftovers of the first) ---------------------------------

def _store_layer(store):
    return max((store / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("verb", [
    ["inspect", "{ref}"], ["image", "inspect", "{ref}"], ["history", "{ref}"], ["image", "history", "{ref}"],
    ["tag", "{ref}", "t:1"], ["image", "tag", "{ref}", "t:1"], ["rmi", "{ref}"], ["image", "rm", "{ref}"],
    ["save", "-o", "{tmp}/out.tar", "{ref}"], ["copy", "{ref}", "oci:{tmp}/layout"], ["unpack", "{ref}", "{tmp}/d"],
    ["unpack", "--bundle", "{ref}", "{tmp}/d"], ["unpack", "--link", "{ref}", "{tmp}/d"],
    ["mount", "{ref}", "{tmp}/mnt"], ["push", "{ref}"],
], ids=lambda v: " ".join(a for a in v if "{" not in a and a != "t:1"))
def test_every_verb_says_no_such_image_in_the_same_words(tmp_path, store, verb):
    """Once "No such image: nosuch:latest" (rmi, inspect), "no such image: nosuch" (the others) and
    "no such image: docker.io/library/nosuch:latest" (push)."""
    for ref, shown in (("nosuch", "nosuch:latest"), ("docker.io/library/nosuch:2", "nosuch:2"),
                       ("127.0.0.1:5999/team/app", "127.0.0.1:5999/team/app:latest"), ("abcdef0", "abcdef0")):
        if ref == "abcdef0" and verb[0] == "push":
            continue  # push takes a name, never an ID: that is abcdef0:latest
        argv = [a.format(ref=ref, tmp=tmp_path) for a in verb]
        proc = lamina(store, *argv, check=False)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.splitlines()[-1] == f"lamina: error: no such image: {shown}", proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["store"]  # nothing was made for the image that is not there


def test_fsck_names_images_as_images_shows_them(store):
    config = json.loads(lamina(store, "inspect", "s:1").stdout)[0]["Id"]
    lamina(store, "tag", "s:1", "registry.example:5000/team/app:2")
    (store / "blobs" / "sha256" / config.split(":")[1]).unlink()
    proc = lamina(store, "fsck", check=False)
    assert proc.returncode == 1
    assert "image s:1, registry.example:5000/team/app:2 (sha256:" in proc.stdout, proc.stdout
    assert "docker.io/library" not in proc.stdout


def _interrupt_while_reading(argv, fifo, data):
    """Run ``argv``, which reads the FIFO ``fifo``; give it ``data``, and press Ctrl-C while it
    waits for more (as a slow disk or network would keep it waiting)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while True:  # the open succeeds once lamina opened the FIFO to read it
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as e:
            if e.errno != errno.ENXIO or proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"lamina never read {fifo}: {proc.communicate()[1]}") from None
            time.sleep(0.02)
    try:
        os.set_blocking(fd, True)
        os.write(fd, data)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        time.sleep(1)  # the writer stays a while: lamina must stop without its EOF (see the test below)
    finally:
        os.close(fd)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


@pytest.mark.parametrize("argv", [["save", "--format", "oci-archive", "-o", "{tmp}/out.tar", "s:1"],
                                  ["copy", "s:1", "oci-archive:{tmp}/out.tar"]], ids=["save", "copy"])
def test_ctrl_c_while_writing_an_archive_prints_no_traceback(tmp_path, store, argv):
    """tarfile, left to the garbage collector, wrote its end blocks into the closed output and
    Python printed "Exception ignored in: <function _Stream.__del__ ...> Traceback ...".

    The archive is written slowly (strace holds each write back 0.2 s; a store blob that is a
    FIFO, which this test once used, is now refused as not a regular file), and Ctrl-C comes once
    the archive has begun."""
    from conftest import require_tool
    require_tool("strace")
    proc = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=write",
                             "-e", "inject=write:delay_enter=200000", "--", *LAMINA, "--root", str(store),
                             *[a.format(tmp=tmp_path) for a in argv]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not [n for n in os.listdir(tmp_path) if n != "store"]:  # the archive has begun
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no archive was begun: {proc.communicate()[1]}")
        time.sleep(0.005)
    tracee = int(open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()[0])
    os.kill(tracee, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "lamina: interrupted\n", err
    assert sorted(os.listdir(tmp_path)) == ["store"]


def test_ctrl_c_during_apply_says_dest_is_partly_applied(tmp_path):
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(40):
            info = tarfile.TarInfo(f"f{i}")
            info.size = 4096
            tar.addfile(info, io.BytesIO(bytes(4096)))
    fifo, dest = tmp_path / "layer.tar", tmp_path / "dest"
    os.mkfifo(fifo)
    dest.mkdir()
    (dest / "mine").write_text("kept\n")
    rc, _, err = _interrupt_while_reading([*LAMINA, "apply", str(fifo), str(dest)], fifo,
                                          layer.getvalue()[:10 * 4608])
    assert rc == 130, err
    assert err == (f"lamina: interrupted; {dest} is now partly applied (apply works in place, like tar -x: the "
                   "entries before the failure were written); --atomic applies all or nothing\n"), err
    assert (dest / "mine").read_text() == "kept\n" and not (dest / "f39").exists()


def test_prune_in_the_api_after_a_read_reclaims(tmp_path):
    """The README's example printed `reclaimed 0`: the lease the Store took to list images was
    taken for another writer's, so prune said busy and left every layer."""
    from lamina import images as I
    from lamina.store import Store
    from lamina.transports import copy
    store = Store(tmp_path / "store")
    try:
        copy(f"oci:{SAMPLE}:latest", "s:1", store=store)
        assert [row.repo_tags for row in I.ls(store, {})] == [["s:1"]]
        result = I.prune(store, all=True)
        assert not result.busy and result.reclaimed > 0 and len(result.snapshots) == 3, result
        assert os.listdir(tmp_path / "store" / "snapshots") == []
    finally:
        store.close()


@pytest.fixture
def read_only_fs(tmp_path):
    """A read-only filesystem holding one empty directory, ``empty``."""
    require_root()
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(ro)], check=True)
    try:
        (ro / "empty").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_apply_onto_a_read_only_dest_says_so_and_not_partly_applied(store, read_only_fs):
    layer = _store_layer(store)
    msg = fails(store, "apply", layer, read_only_fs, match="cannot write")
    assert msg == f"lamina: error: cannot write {read_only_fs}: Read-only file system", msg
    dest = read_only_fs / "empty"
    msg = fails(store, "apply", "--atomic", layer, dest, match="cannot write")
    assert msg == (f"lamina: error: cannot write {read_only_fs}: Read-only file system (--atomic stages a copy "
                   f"of {dest} beside it)"), msg  # not cp's words about .empty.lamina-staging-XXXX


def test_fsck_shows_a_few_of_each_kind_and_says_how_to_clean_up(store):
    """What an interrupted prune leaves (the snapshots gone, their file objects not yet) once
    took a line per object: thousands of lines for a real image."""
    lamina(store, "rmi", "--no-prune", "s:1")
    for snapshot in (store / "snapshots").iterdir():
        shutil.rmtree(snapshot)
    doc = json.loads(lamina(store, "fsck", "--format", "json").stdout)
    unused = [f for f in doc["findings"] if f["kind"] == "unused-object"]
    assert len(unused) > FSCK_SHOWN_PER_KIND + 1
    proc = lamina(store, "fsck")
    lines = [line for line in proc.stdout.splitlines() if "not used by any snapshot" in line]
    assert len(lines) == FSCK_SHOWN_PER_KIND, proc.stdout
    assert (f"warning: {len(unused) - FSCK_SHOWN_PER_KIND} more unused-object findings like these; lamina fsck "
            "--format json lists every one\n") in proc.stdout, proc.stdout
    assert proc.stderr == ("unused content (what a failed pull keeps for its rerun to reuse, or an interrupted rmi "
                           "or prune leaves): lamina image prune removes it\n")
    lamina(store, "image", "prune", "-f")
    assert lamina(store, "fsck").stdout.endswith(": 0 errors, 0 warnings\n")


def _help_example(*verb):
    text = subprocess.run([*LAMINA, *verb, "--help"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"e\.g\.\s+'(\{\{.*?\}\})'", re.sub(r"\s+", " ", text))
    assert found, text
    return found.group(1)


@pytest.mark.parametrize("verb", [["apply", "{layer}", "{tmp}/a"], ["unpack", f"oci:{SAMPLE}", "{tmp}/u"],
                                  ["copy", "s:1", "oci:{tmp}/l"], ["load", "-i", "{tmp}/s.tar"], ["fsck"],
                                  ["rmi", "s:1"], ["image", "prune", "-a", "-f"]], ids=lambda v: " ".join(v[:2]))
def test_the_format_example_in_each_help_is_a_field_of_that_verb(tmp_path, store, verb):
    """Every verb's help once offered '{{.manifest_digest}}', which fsck, apply, rmi, prune and
    load do not have: the example printed <no value>."""
    lamina(store, "save", "-o", tmp_path / "s.tar", "s:1")
    example = _help_example(*verb[:2] if verb[0] == "image" else verb[:1])
    argv = [a.format(tmp=tmp_path, layer=_store_layer(store)) for a in verb]
    out = lamina(store, *argv, "--format", example).stdout
    assert out.strip() and "<no value>" not in out, (example, out)


def test_config_get_never_sets_and_set_needs_a_value(store):
    proc = lamina(store, "config", "get", "dedup", "false", check=False)
    assert proc.returncode == 2 and "to change a setting, use config set KEY VALUE" in proc.stderr, proc.stderr
    proc = lamina(store, "config", "set", "dedup", check=False)
    assert proc.returncode == 2 and proc.stderr.endswith("lamina config: error: config set needs KEY and VALUE\n")
    assert lamina(store, "config", "get", "dedup").stdout == "true\n"  # `config get dedup false` once set it


@pytest.mark.parametrize("argv", [["fsck", "extra"], ["image", "prune", "extra"], ["system", "df", "x"]],
                         ids=lambda a: " ".join(a))
def test_a_stray_argument_shows_the_usage_of_that_verb(store, argv):
    proc = lamina(store, *argv, check=False)
    verb = " ".join(argv[:-1])
    assert proc.returncode == 2 and proc.stderr.startswith(f"usage: lamina {verb} "), proc.stderr
    assert proc.stderr.endswith(f"lamina {verb}: error: unrecognized arguments: {argv[-1]}\n"), proc.stderr


@pytest.mark.parametrize("argv", [["--root", "", "images"], ["images", "--root", ""]], ids=["global", "verb"])
def test_an_empty_root_is_refused_not_taken_for_the_cwd(tmp_path, argv):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "notes.txt").write_text("mine\n")
    proc = subprocess.run([*LAMINA, *argv], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.endswith("argument --root: an empty path names nothing (use . for the current directory)\n")


@pytest.mark.parametrize("argv", [["save", "-o", "{out}", "s:1"], ["copy", "s:1", "oci-archive:{out}"]],
                         ids=["save", "copy"])
def test_a_full_disk_names_the_archive(tmp_path, store, argv):
    """It said "lamina: error: No space left on device", and nothing more."""
    require_root()
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(small)], check=True)
    try:
        out = small / "s.tar"
        msg = fails(store, *[a.format(out=out) for a in argv], match="No space left on device")
        assert msg == f"lamina: error: {out}: No space left on device", msg
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_unpack_of_what_is_neither_a_path_nor_an_image_name(tmp_path, store):
    """`unpack Debian:12 DEST` once said only "Debian:12: no such file or directory"."""
    msg = fails(store, "unpack", "Debian:12", tmp_path / "out", match="no such file or directory")
    assert msg == ("lamina: error: Debian:12: no such file or directory, and not an image name: invalid reference "
                   "format: repository name (library/Debian) must be lowercase"), msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "gzip"])
def test_ctrl_c_while_the_layer_stalls_ends_apply_at_once(tmp_path, compress):
    """The native reader thread sat in read(2) of the FIFO, and apply waited for it
    until the writer wrote more or went away: Ctrl-C did nothing."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w:gz" if compress else "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(40):
            info = tarfile.TarInfo(f"f{i}")
            info.size = 4096
            tar.addfile(info, io.BytesIO(os.urandom(4096)))
    fifo, dest = tmp_path / "layer", tmp_path / "dest"
    os.mkfifo(fifo)
    proc = subprocess.Popen([*LAMINA, "apply", str(fifo), str(dest)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    fd = os.open(fifo, os.O_WRONLY)  # the writer stays, and stalls: it is closed only at the end
    try:
        os.write(fd, layer.getvalue()[:len(layer.getvalue()) // 3])
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        t = time.monotonic()
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"apply went on for 10 s after Ctrl-C: {proc.communicate()[1]}") from None
        waited = time.monotonic() - t
    finally:
        os.close(fd)
    # stage 1 fills a whole ring buffer before the extractor sees a chunk: nothing was written
    assert proc.returncode == 130 and err == "lamina: interrupted\n", err
    assert not dest.exists()
    assert waited < 2, f"Ctrl-C took {waited:.1f} s"


@pytest.mark.parametrize("argv", [["images", "BAD NAME"], ["images", "Upper:1"], ["images", "-f", "reference=a b"]],
                         ids=lambda a: a[-1])
def test_images_of_a_name_no_image_can_have_is_an_error(store, argv):
    """It printed an empty table and exited 0, as if the name were only absent; docker says
    "invalid reference format"."""
    r = lamina(store, *argv, check=False)
    assert r.returncode == 1 and r.stdout == "", r
    assert r.stderr.startswith(f"lamina: error: invalid reference format: {argv[-1].removeprefix('reference=')!r}"), r.stderr


@pytest.mark.parametrize("pattern", ["busy*", "s:[23]", "nothere/at-all:v1.0"])
def test_images_of_a_valid_name_or_pattern_with_no_match_is_an_empty_table(store, pattern):
    r = lamina(store, "images", pattern)
    assert r.stdout.split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]


def test_apply_of_a_missing_or_directory_layer_names_the_argument(tmp_path):
    """It said "/nonexist: No such file or directory", not which of the two paths was missing."""
    dest = tmp_path / "dest"
    r = subprocess.run([*LAMINA, "apply", str(tmp_path / "nonexist"), str(dest)], capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (1, f"lamina: error: layer {tmp_path / 'nonexist'}: no such file\n"), r.stderr
    r = subprocess.run([*LAMINA, "apply", str(tmp_path), str(dest)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith(f"lamina: error: layer {tmp_path}: is a directory"), r.stderr
    assert not dest.exists()


def test_mount_list_as_json_is_a_document_even_when_empty(store, tmp_path):
    """With no mounts it printed nothing at all: not JSON a tool could read."""
    assert json.loads(lamina(store, "mount", "--format", "json").stdout) == {"version": 1, "mounts": []}
    require_root()
    mnt = tmp_path / "mnt"
    lamina(store, "mount", "s:1", mnt)
    try:
        doc = json.loads(lamina(store, "mount", "--format", "json").stdout)
    finally:
        lamina(store, "umount", mnt)
    image_id = json.loads(lamina(store, "inspect", "s:1").stdout)[0]["Id"]
    assert doc == {"version": 1, "mounts": [{"target": str(mnt), "image_id": image_id, "names": ["s:1"],
                                             "rw": False, "suid": False, "mounted": True}]}


@pytest.mark.parametrize("argv", [["login"], ["login", "127.0.0.1:5999"], ["login", "-u", "me"]],
                         ids=lambda a: " ".join(a))
def test_login_that_cannot_prompt_says_what_to_type(tmp_path, argv):
    """It said "no username given (use --username)": not that SERVER defaults to docker.io (as in
    docker), nor that the password then has to come on stdin."""
    r = subprocess.run([*LAMINA, *argv, "--authfile", str(tmp_path / "auth.json")], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    server = argv[1] if len(argv) == 2 else None
    host = server or "docker.io"
    assert r.returncode == 1 and r.stderr.startswith(f"lamina: error: login to {host}"), r.stderr
    assert ("(no SERVER: docker.io, as in docker)" in r.stderr) == (server is None), r.stderr
    assert r.stderr.rstrip().endswith(
        f'type echo "$PASSWORD" | lamina login{" " + server if server else ""} -u USERNAME --password-stdin'), r.stderr
    assert not (tmp_path / "auth.json").exists()


def test_a_podman_save_loads_under_its_localhost_name_as_docker_load_names_it(tmp_path, store):
    """podman save writes a docker-archive (containers/image's, as skopeo's) whose RepoTags
    name a local image localhost/NAME:TAG.  lamina, as docker load, names it so: localhost is
    a registry host to docker's reference grammar, and the short name app:1 is
    docker.io/library/app:1, which the store does not hold (podman also finds a short name
    under localhost/: tests/CONFORMANCE.md)."""
    from conftest import require_tool
    require_tool("skopeo")
    archive = tmp_path / "podman.tar"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{SAMPLE}:latest", f"docker-archive:{archive}:localhost/app:1"],
                   check=True, capture_output=True)
    with tarfile.open(archive) as tar:
        assert json.load(tar.extractfile("manifest.json"))[0]["RepoTags"] == ["localhost/app:1"]
    root = tmp_path / "podman-store"
    out = lamina(root, "load", "--format", "json", "-i", archive).stdout
    assert [n for i in json.loads(out)["images"] for n in i["names"]] == ["localhost/app:1"], out
    rows = [json.loads(line) for line in lamina(root, "images", "--format", "json").stdout.splitlines()]
    assert [(r["Repository"], r["Tag"]) for r in rows] == [("localhost/app", "1")]
    lamina(root, "inspect", "localhost/app:1")
    fails(root, "inspect", "app:1", match="app:1")
