"""One hostile entry name reads the same in every message that names it.

The extractor's errors, the flattener's notes on what it did not copy (and its
errors) and the rebuild of a layer from its sidecar each name entries of a layer.
They used to quote them with three copies of the same code; one that drifted
would show one name two ways (or let a newline through).  Here one name with a
newline, an escape sequence, bytes that are not UTF-8 and well past 255 bytes
goes through each of them, and each message must hold exactly
``lamina.quoting.quote_name`` of it.
"""
import errno
import os
import socket
import subprocess

import pytest

import lamina
from everypath import write_image
from lamina.errors import LaminaError
from lamina.quoting import quote_name
from tarbuild import Tar

# three directory levels, so that the whole name is long but every component fits NAME_MAX
SEG = b"seg\n\x1b[2J\xff\xfe" + b"y" * 150
HOSTILE = b"d/" + SEG + b"/" + SEG + b"/" + SEG + b"/leaf\n\x1b]0;title\x07\xc3("


def _with_pax_path(tar, name, make):
    """``make(tar, short)`` writes an entry whose real name ``name`` is in a PAX path record."""
    tar.pax({"path": name})
    return make(tar, b"placeholder")


def _dirs_of(name):
    parts = name.split(b"/")[:-1]
    return [b"/".join(parts[:i + 1]) for i in range(len(parts))]


def _tar_with_file(name, data):
    t = Tar()
    for d in _dirs_of(name):
        _with_pax_path(t, d, lambda t, s: t.dir(s))
    return _with_pax_path(t, name, lambda t, s: t.file(s, data))


def test_the_rendering():
    shown = quote_name(HOSTILE)
    assert "\n" not in shown and "\x1b" not in shown and "\x07" not in shown
    assert shown.startswith("'d/seg\\n\\x1b[2J\\xff\\xfe") and shown.endswith("\\x07\\xc3('")
    assert quote_name(bytearray(HOSTILE)) == shown


# names that read the same if a byte that is not UTF-8, a C1 control or a backslash of the
# name's own is written like another of them
LOOKALIKES = [b"\xff", b"\\xff", b"\\\xff", b"\xc2\x85", b"\\x85", b"\x85", b"\xc2\xad", b"\\u00ad",
              b"\xed\xb3\xbf", b"\\udcff", b"a\nb\x1b[2J", b"a\\nb", b"\xc3(", b"\xf0\x9f\x98"]

_GO_QUOTE = """package main

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"os"
)

func main() {
	s := bufio.NewScanner(os.Stdin)
	for s.Scan() {
		b, _ := hex.DecodeString(s.Text())
		fmt.Printf("%q\\n", string(b))
	}
}
"""


def test_lookalike_names_read_apart_as_gos_quote_writes_them(tmp_path):
    """The byte 0xff and the four characters \\xff of a name were both shown '\\\\xff' (the
    name was decoded with backslashreplace, then repr doubled the backslash), and U+0085
    and the byte 0x85 both '\\x85': a message could not say which file it meant.  Each
    lookalike now reads as Go's strconv.Quote (%q, as docker's, umoci's and skopeo's
    messages quote) writes it, but for the quote marks."""
    from conftest import require_tool
    require_tool("go")
    (tmp_path / "main.go").write_text(_GO_QUOTE)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GO111MODULE": "off", "GOPROXY": "off",
           "GOCACHE": str(tmp_path / "gocache"), "GOPATH": str(tmp_path / "gopath"), "CGO_ENABLED": "0"}
    go = subprocess.run(["go", "run", "main.go"], cwd=tmp_path, env=env, check=True, capture_output=True,
                        text=True, input="".join(n.hex() + "\n" for n in LOOKALIKES)).stdout.splitlines()
    ours = [quote_name(n) for n in LOOKALIKES]
    assert [q[1:-1] for q in ours] == [g[1:-1] for g in go]
    assert len(set(ours)) == len(LOOKALIKES), ours
    assert quote_name(os.fsdecode(b"\xff")) == quote_name(b"\xff")  # a name os.fsdecode'd reads the same


def test_the_extractor_quotes_it(tmp_path):
    t = Tar().dir("d")
    for d in _dirs_of(HOSTILE)[1:]:
        _with_pax_path(t, d, lambda t, s: t.dir(s))
    _with_pax_path(t, HOSTILE, lambda t, s: t.hardlink(s, "d"))
    layer = tmp_path / "layer.tar"
    layer.write_bytes(t.bytes())
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(LaminaError) as e:
        lamina.apply_layer(str(layer), str(dest))
    assert str(e.value).endswith(f": entry {quote_name(HOSTILE)}: hardlink target 'd' is a directory"), str(e.value)


def _parent_fd(top, name):
    """Makes the directories of ``name`` below ``top``, each through its parent's fd; the
    last one's fd."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for part in name.split(b"/")[:-1]:
        os.mkdir(part, dir_fd=fd)
        nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        os.close(fd)
        fd = nfd
    return fd


def _layer_dir_with_socket(top, name):
    """An overlay-format layer directory (as a snapshot's fs/) holding a socket at ``name``."""
    os.mkdir(top)
    fd = _parent_fd(top, name)
    try:
        # bind() takes a path: reach the directory by its fd through /proc, with a short name,
        # then give the socket its hostile name by rename
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(f"/proc/self/fd/{fd}/s")
        os.rename(b"s", os.path.basename(name), src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


def test_the_flattener_quotes_it(tmp_path):
    from lamina.store.flatten import flatten
    layer = tmp_path / "snap" / "fs"
    os.mkdir(tmp_path / "snap")
    _layer_dir_with_socket(layer, HOSTILE)
    dest = tmp_path / "dest"
    dest.mkdir()
    st = flatten([layer], dest)
    assert st.skipped == [f"{quote_name(HOSTILE)}: socket not materialized"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs: needs root")
def test_the_flatteners_errors_quote_it(tmp_path):
    """A file the destination has no room for fails the flatten; its name is the layer's."""
    from lamina.errors import MaterializeError
    from lamina.store.flatten import flatten
    layer = tmp_path / "snap" / "fs"
    os.makedirs(layer)
    fd = _parent_fd(layer, HOSTILE)
    try:
        ffd = os.open(os.path.basename(HOSTILE), os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(ffd, os.urandom(1 << 20) * 4)
        os.close(ffd)
    finally:
        os.close(fd)
    dest = tmp_path / "small"
    dest.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dest], check=True)
    try:
        try:
            flatten([layer], dest, workers=0)
            message = None
        except MaterializeError as e:
            message = str(e)  # not the exception: its traceback holds the flattener's fds on dest
    finally:
        subprocess.run(["umount", dest], check=True)
    assert message is not None, "4 MiB flattened into a 1 MiB tmpfs"
    assert message.startswith(f"{quote_name(HOSTILE)}: cannot "), message
    assert message.endswith(os.strerror(errno.ENOSPC)), message


def test_the_sidecar_rebuild_quotes_it(tmp_path):
    from lamina.cli import main as cli
    from lamina.store import Store
    from lamina.transports import copy, save
    layout = write_image(tmp_path / "layout", [_tar_with_file(HOSTILE, b"payload\n" * 100).bytes()])
    root = tmp_path / "store"
    assert cli(["--root", str(root), "config", "set", "keep-blobs", "false"]) == 0
    store = Store(root)
    copy(f"oci:{layout}:img", "img:1", store=store)
    base = os.path.basename(HOSTILE)
    victims = [(d, f) for d, _, fs in os.walk(os.fsencode(root / "snapshots")) for f in fs if f == base]
    assert len(victims) == 1, victims
    fd = os.open(victims[0][0], os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.unlink(base, dir_fd=fd)
    finally:
        os.close(fd)
    with pytest.raises(LaminaError) as e:
        save(["img:1"], str(tmp_path / "saved.tar"), store=store)
    assert f"entry {quote_name(HOSTILE)} is missing from the snapshot" in str(e.value), str(e.value)


def test_paths_in_plain_lines_read_apart_as_quote_name_writes_them(tmp_path):
    """mount and umount print TARGET, apply "onto DEST", unpack "into DEST": a byte that is not
    UTF-8 came out raw (apply, unpack) or as ``\\xff`` with no backslash of the path escaped
    (mount, umount), so the dir holding the byte 0xff and the one holding the four characters
    ``\\xff`` printed alike.  A path that reads back as itself is printed as it is; any other
    is quote_name's rendering, as a name from a layer is."""
    from storekit import LAMINA, lamina
    layer = tmp_path / "layer.tar"
    layer.write_bytes(_tar_with_file(b"f", b"x").bytes())
    layout = write_image(tmp_path / "layout", [layer.read_bytes()])
    root = tmp_path / "store"
    lamina(root, "copy", f"oci:{layout}:img", "x:1")
    base = os.fsencode(tmp_path)
    byte, chars, plain = base + b"/d\xff", base + b"/d\\xff", base + b"/plain"
    assert quote_name(os.fsdecode(byte)) == "'" + os.fsdecode(base) + "/d\\xff'"

    def shown(path):
        return quote_name(os.fsdecode(path)) if b"\xff" in path else os.fsdecode(path)

    def run(*args):
        proc = subprocess.run([*LAMINA, "--root", os.fsencode(root), *args], capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.decode("utf-8")   # never a raw byte

    for dest in (byte, chars, plain):
        applied, unpacked = dest + b"-applied", dest + b"-unpacked"
        assert run(b"apply", os.fsencode(layer), applied).startswith(f"applied {layer} onto {shown(applied)} (")
        out = run(b"unpack", b"x:1", unpacked)
        assert f" into {shown(unpacked)} (" in out, out
        os.mkdir(dest)
        assert run(b"mount", b"x:1", dest) == shown(dest) + "\n"
        assert run(b"umount", dest) == shown(dest) + "\n"
