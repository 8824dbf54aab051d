"""``--format json`` is valid UTF-8 JSON whatever the bytes of the paths and names it reports.

A DEST, a layout or an archive path, an entry name of a layer need not be UTF-8;
Python reads such bytes as lone surrogates (``os.fsdecode``), which UTF-8 output
cannot carry and strict JSON readers refuse even escaped (``"\\udcff"``).  The
documented escaping (README, Output): each byte that is not UTF-8 is written as
the four characters ``\\xNN``, as lamina's messages write it.  An image config that
escapes a lone surrogate itself is handled the same way by the docker-shaped verbs.
"""
import codecs
import json
import os
import subprocess
import sys

import pytest

import ocibuild as ob
from everypath import write_image
from tarbuild import Tar

LAMINA = [sys.executable, "-m", "lamina"]


def _cli(*args):
    return subprocess.run(LAMINA + [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args],
                          capture_output=True, timeout=300, env={**os.environ, "LC_ALL": "C.UTF-8"})


def _lone_surrogates(v, found):
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            found.append(v)
    elif isinstance(v, dict):
        for k, x in v.items():
            _lone_surrogates(k, found)
            _lone_surrogates(x, found)
    elif isinstance(v, list):
        for x in v:
            _lone_surrogates(x, found)
    return found


def _json(*args, lines=False):
    """The JSON a verb prints: strict UTF-8, parsed, with no lone surrogate in any string."""
    r = _cli(*args)
    assert r.returncode == 0, r.stderr.decode("utf-8", "replace")
    text = r.stdout.decode("utf-8")  # strict: raises on bytes that are not UTF-8
    docs = [json.loads(ln) for ln in text.splitlines() if ln.strip()] if lines else [json.loads(text)]
    bad = _lone_surrogates(docs, [])
    assert not bad, f"lamina {args[:3]}: lone surrogates in the JSON: {bad[:3]}"
    return docs if lines else docs[0]


def shown(path):
    """How the JSON writes a path (README, Output): quoted, its bytes that are not UTF-8 as
    \\xNN, when it is not UTF-8."""
    b = os.fsencode(path)
    try:
        b.decode("utf-8")
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return '"' + b.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace") + '"'


def decoded(s):
    """The bytes a string of lamina's JSON stands for, read the way the README tells a tool to."""
    return codecs.escape_decode(s[1:-1].encode())[0] if s.startswith('"') else s.encode()


@pytest.fixture
def odd(tmp_path):
    d = os.path.join(os.fsencode(tmp_path), b"odd\xff\xfe")
    os.mkdir(d)
    return d


NAME = b"d/f\xff"


def _layer():
    # an unknown entry type: extracted as a file and reported in "skipped" by its name
    return Tar().dir("d").file(NAME, b"x").entry(b"u\xfe", b"data", type=b"Y").bytes()


def test_lamina_verbs_report_odd_paths_as_utf8(odd):
    layout = os.fsdecode(odd + b"/layout")
    write_image(layout, [_layer()])
    root = odd + b"/store"
    doc = _json("unpack", "--format", "json", f"oci:{layout}:img", odd + b"/dir")
    assert doc["dest"] == shown(odd + b"/dir") and doc["source"] == shown(b"oci:" + os.fsencode(layout) + b":img")
    assert decoded(doc["dest"]) == odd + b"/dir" and decoded(doc["source"]) == b"oci:" + os.fsencode(layout) + b":img"
    assert "'u\\xfe'" in doc["layers"][0]["skipped"][0]
    doc = _json("unpack", "--overlay", "--format", "json", f"oci:{layout}:img", odd + b"/ovl")
    assert doc["layer_dirs"] == [shown(odd + b"/ovl/layers/0")]
    with open(odd + b"/ovl/mount-options", "rb") as f:  # the path's own bytes, for mount -o
        assert f.read() == b"lowerdir=" + odd + b"/ovl/layers/0:" + odd + b"/ovl/empty\n"  # (one layer: + empty)
    doc = _json("--root", root, "copy", "--format", "json", f"oci:{layout}:img", "img:1")
    assert doc["source"] == shown(b"oci:" + os.fsencode(layout) + b":img")
    doc = _json("--root", root, "unpack", "--format", "json", "img:1", odd + b"/from-store")
    assert doc["dest"] == shown(odd + b"/from-store")
    doc = _json("--root", root, "fsck", "--format", "json")
    assert doc["ok"]
    assert _cli("--root", root, "save", "img:1", "-o", odd + b"/saved.tar").returncode == 0
    doc = _json("--root", odd + b"/store2", "load", "--format", "json", "-i", odd + b"/saved.tar")
    assert doc["images"]
    with open(odd + b"/layer.tar", "wb") as f:
        f.write(_layer())
    os.mkdir(odd + b"/applied")
    doc = _json("apply", "--format", "json", odd + b"/layer.tar", odd + b"/applied")
    assert "'u\\xfe'" in doc["skipped"][0]


def test_a_byte_that_is_no_utf8_and_its_escape_read_apart(tmp_path):
    """A DEST holding the byte 0xff and one holding the four characters \\xff were both
    written "...\\\\xff" (JSON): a tool could not say which was meant, nor get the bytes
    back.  Now each string reads back as the exact bytes, as the README says."""
    layout = write_image(tmp_path / "layout", [Tar().file("f", b"x").bytes()])
    dests = [os.fsencode(tmp_path) + n for n in (b"/a\xff", b"/a\\xff", b"/\"a", b"/a\\\xff\"")]
    docs = [_json("unpack", "--format", "json", f"oci:{layout}:img", d) for d in dests]
    assert [decoded(doc["dest"]) for doc in docs] == dests
    assert len({doc["dest"] for doc in docs}) == len(dests)
    assert docs[1]["dest"] == os.fsdecode(dests[1])  # UTF-8 that starts with no '"': the text itself


def test_a_template_prints_an_odd_path_as_utf8(odd):
    layout = os.fsdecode(odd + b"/layout")
    write_image(layout, [_layer()])
    r = _cli("unpack", "--format", "{{.dest}}", f"oci:{layout}:img", odd + b"/dir")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode("utf-8") == shown(odd + b"/dir") + "\n"


def test_fsck_findings_name_odd_files_as_utf8(tmp_path):
    """A compact store's file changed behind lamina's back: fsck's finding names it."""
    layout = write_image(tmp_path / "layout", [_layer()])
    root = tmp_path / "store"
    assert _cli("--root", root, "config", "set", "keep-blobs", "false").returncode == 0
    assert _cli("--root", root, "copy", f"oci:{layout}:img", "img:1").returncode == 0
    victims = [os.path.join(d, f) for d, _, fs in os.walk(os.fsencode(root / "snapshots")) for f in fs
               if f == b"f\xff"]
    assert len(victims) == 1, victims
    with open(victims[0], "r+b") as f:
        f.write(b"Z")
    r = _cli("--root", root, "fsck", "--format", "json")
    text = r.stdout.decode("utf-8")
    doc = json.loads(text)
    assert not _lone_surrogates(doc, []), doc
    assert any("'d/f\\xff'" in f["message"] for f in doc["findings"]), doc["findings"]


def test_a_configs_lone_surrogate_never_reaches_the_docker_verbs(tmp_path):
    """A config may escape a lone surrogate ("\\ud800" is valid JSON text).  inspect and history
    used to print it as the characters \\ud800; since 7e85f28 such a config is refused where it
    enters (Go readers read U+FFFD: test_hostile_json.py), naming the place, and the store
    holds nothing of it for the verbs to print."""
    lay = ob.Layout(tmp_path / "layout")
    lay.add(lay.image([{"a": b"x"}], config_extra={
        "config": {"Env": ["X=\udcff\ud800"]},
        "history": [{"created_by": "sh -c \udcff"}]}), "img")
    root = tmp_path / "store"
    r = _cli("--root", root, "copy", f"oci:{lay.root}:img", "img:1")
    assert r.returncode == 1 and b"lone surrogate" in r.stderr, r.stderr
    r.stderr.decode("utf-8")  # the error itself is UTF-8
    r = _cli("--root", root, "inspect", "img:1")
    assert r.returncode == 1 and b"img:1" in r.stderr, r.stderr
