"""Bad input a new user types on the first day: each is one `lamina: error:` line that
names what they gave and what to do, and nothing is written where it should not be."""
import os
import subprocess
import sys

import pytest

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
