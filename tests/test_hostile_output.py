"""Names from a layer and text from a registry never make lines of lamina's output.

A layer's entry names are arbitrary bytes (newlines, escape sequences, bytes that
are not UTF-8), and a registry's error body says what it likes.  lamina quotes
them in what it prints, so ``lamina: error: ...`` stays one line and a line that
starts ``lamina:`` or an escape sequence for the terminal cannot be forged.
"""
import contextlib
import http.server
import json
import os
import socketserver
import subprocess
import sys
import threading

import pytest

from everypath import write_image
from layerkit import run_as_nobody, world_tmpdir
from registryfixture import registry_env  # noqa: F401  (fixture)
from tarbuild import Tar

FORGED = b"lamina: error: forged\x1b[2J\x1b[31m"
LAMINA = [sys.executable, "-m", "lamina"]


def _cli(*args, env=None):
    return subprocess.run(LAMINA + [str(a) for a in args], capture_output=True, env=env, timeout=300)


def _assert_not_forged(out, context):
    lines = out.split(b"\n")
    assert not [ln for ln in lines if ln.startswith(b"lamina: error: forged")], \
        f"{context}: a name from the layer made a line of its own:\n{out.decode('utf-8', 'replace')}"
    assert b"\x1b" not in out, f"{context}: an escape sequence from the layer reached the terminal"


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_skipped_entry_names_are_quoted_in_every_output(tmp_path, locale):
    """As root an entry of an unknown type is extracted as a file and reported in
    ``skipped``.  On 2dfdebc its name was printed as it was: the newline in it forged
    a ``lamina: error:`` line on stdout, and its escape sequences reached the terminal."""
    name = b"odd\xff\n" + FORGED
    t = Tar().file("ok", b"1").entry(name, b"data", type=b"Y")
    layout = write_image(tmp_path / "layout", [t.bytes()])
    env = {**os.environ, "LC_ALL": locale, "LANG": locale}
    for fmt in ("dir", "overlay"):
        r = _cli("unpack", "--format", fmt, f"oci:{layout}:img", tmp_path / f"{fmt}-{locale}", env=env)
        assert r.returncode == 0, r.stderr
        _assert_not_forged(r.stdout + r.stderr, f"unpack --format {fmt}")
        assert b"skipped: 'odd\\xff\\nlamina: error: forged\\x1b[2J" in r.stdout, r.stdout
    r = _cli("unpack", "--json", f"oci:{layout}:img", tmp_path / f"json-{locale}", env=env)
    assert r.returncode == 0, r.stderr
    skipped = json.loads(r.stdout)["layers"][0]["skipped"]
    assert len(skipped) == 1 and "\n" not in skipped[0] and "\x1b" not in skipped[0], skipped
    assert "odd\\xff\\nlamina: error: forged" in skipped[0]


def test_a_device_skipped_without_root_is_named_quoted(tmp_path):
    """The same for the node an unprivileged extraction cannot make."""
    base = world_tmpdir()
    try:
        t = Tar().chardev(b"dev/null\n" + FORGED, 1, 3)
        path = os.path.join(base, "layer.tar")
        with open(path, "wb") as f:
            f.write(t.bytes())
        dest = os.path.join(base, "dest")
        os.mkdir(dest)
        os.chown(dest, 65534, 65534)
        r = run_as_nobody("st = lamina.apply_layer(sys.argv[1], sys.argv[2])\n"
                          "print(json.dumps(st.skipped))\n", path, dest)
        assert r.returncode == 0, r.stderr
        skipped = json.loads(r.stdout.strip().splitlines()[-1])
        assert len(skipped) == 1 and "\n" not in skipped[0] and "\x1b" not in skipped[0], skipped
        assert skipped[0].startswith("'dev/null\\nlamina: error: forged"), skipped
    finally:
        subprocess.run(["rm", "-rf", base])


class _OneAnswer(http.server.BaseHTTPRequestHandler):
    """A registry that answers /v2/ and, to every other request, ``answer()``: (status,
    content type, body)."""

    def do_GET(self):
        status, ctype, body = (200, "application/json", b"{}") if self.path.rstrip("/") == "/v2" else self.answer()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *a):
        pass


@contextlib.contextmanager
def _serving(handler):
    """The host:port of a loopback server of ``handler`` for the block."""
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


class _Hostile(_OneAnswer):
    def answer(self):
        return 404, "application/json", json.dumps({"errors": [{
            "code": "MANIFEST_UNKNOWN", "message": "no\n" + FORGED.decode() + "\r\nlamina: error: more"}]}).encode()


def test_a_registrys_error_text_stays_on_the_error_line(tmp_path, registry_env):  # noqa: F811
    """A registry's JSON error message goes into lamina's error; on 2dfdebc its newlines
    and escape sequences went to stderr as they were."""
    with _serving(_Hostile) as host:
        r = _cli("--root", tmp_path / "store", "pull", "--insecure", f"{host}/x/y:1")
    assert r.returncode != 0
    err = r.stderr.rstrip(b"\n")
    assert err.count(b"\n") == 0 and err.startswith(b"lamina: error: "), err
    _assert_not_forged(r.stdout + r.stderr, "pull")
    assert b"\\nlamina: error: forged\\x1b[2J" in err, err


def test_a_changed_file_with_a_hostile_name_is_named_on_one_line(tmp_path):
    """A compact store rebuilds a layer from its snapshot; a file changed behind lamina's
    back is named in save's error and in fsck's findings.  That name is the layer's: on
    2dfdebc its newline forged lines of both outputs."""
    name = b"d/x\n" + FORGED
    layout = write_image(tmp_path / "layout", [Tar().dir("d").file(name, b"payload\n" * 100).bytes()])
    root = tmp_path / "store"
    assert _cli("--root", root, "config", "set", "keep-blobs", "false").returncode == 0
    r = _cli("--root", root, "copy", f"oci:{layout}:img", "img:1")
    assert r.returncode == 0, r.stderr
    victims = [os.path.join(d, f) for d, _, fs in os.walk(root / "snapshots") for f in fs
               if os.fsencode(f).startswith(b"x\n")]
    assert len(victims) == 1, victims
    with open(victims[0], "r+b") as f:
        f.write(b"Z")
    r = _cli("--root", root, "save", "img:1", "-o", tmp_path / "saved.tar")
    assert r.returncode != 0
    err = r.stderr.rstrip(b"\n")
    assert err.count(b"\n") == 0 and b"xxh3" in err and b"'d/x\\nlamina: error: forged\\x1b[2J" in err, err
    _assert_not_forged(r.stdout + r.stderr, "save")
    r = _cli("--root", root, "fsck")
    assert r.returncode != 0 and b"d/x\\nlamina: error: forged" in r.stdout, r.stdout
    _assert_not_forged(r.stdout + r.stderr, "fsck")


def test_fsck_names_a_changed_file_whose_name_is_no_utf8_as_every_message_does(tmp_path):
    """fsck compares a snapshot with its layer extracted again and names the first file that
    differs: a name that is not UTF-8 reached the terminal as its raw bytes (``bad\xffname``
    with a real 0xff), where every other message and fsck's own JSON write ``\\xff``."""
    layout = write_image(tmp_path / "layout", [Tar().file(b"bad\xffname\n\x1b[2J", b"x" * 10).bytes()])
    root = tmp_path / "store"
    assert _cli("--root", root, "config", "set", "dedup", "false").returncode == 0
    assert _cli("--root", root, "copy", f"oci:{layout}:img", "img:1").returncode == 0
    victims = [os.path.join(os.fsencode(d), f) for d, _, fs in os.walk(os.fsencode(root / "snapshots"))
               for f in fs if f.startswith(b"bad")]
    assert len(victims) == 1, victims
    os.chmod(victims[0], 0o600)
    text = _cli("--root", root, "fsck")
    js = _cli("--root", root, "fsck", "--json")
    assert text.returncode == js.returncode == 1
    text.stdout.decode("utf-8")  # UTF-8 throughout
    finding = text.stdout.splitlines()[0]
    assert finding.endswith(b": 'bad\\xffname\\n\\x1b[2J': mode 600 != 644"), text.stdout
    message = json.loads(js.stdout)["findings"][0]["message"]
    assert "'bad\\xffname\\n\\x1b[2J': mode 600 != 644" in message, message
    _assert_not_forged(text.stdout + text.stderr, "fsck")


@pytest.mark.parametrize("changed", [b"a\xff", b"a\\xff"])
def test_fsck_names_a_byte_and_its_four_character_escape_apart(tmp_path, changed):
    """fsck's comparison wrote the changed file's path as it was, so the file a + byte 0xff
    and the file a\\xff (four characters) were both 'a\\xff: mode 600 != 644' once the
    message was made one line.  It quotes the path as every message quotes a name."""
    layout = write_image(tmp_path / "layout", [Tar().file(b"a\xff", b"x" * 10).file(b"a\\xff", b"y" * 10).bytes()])
    root = tmp_path / "store"
    assert _cli("--root", root, "config", "set", "dedup", "false").returncode == 0
    assert _cli("--root", root, "copy", f"oci:{layout}:img", "img:1").returncode == 0
    victims = [os.path.join(os.fsencode(d), f) for d, _, fs in os.walk(os.fsencode(root / "snapshots"))
               for f in fs if f == changed]
    assert len(victims) == 1, victims
    os.chmod(victims[0], 0o600)
    text = _cli("--root", root, "fsck")
    assert text.returncode == 1
    shown = {b"a\xff": b"'a\\xff'", b"a\\xff": b"'a\\\\xff'"}[changed]
    assert text.stdout.splitlines()[0].endswith(b": " + shown + b": mode 600 != 644"), text.stdout


def test_mount_and_umount_write_a_target_that_is_no_utf8_as_the_listing_does(tmp_path):
    """``lamina mount REF TARGET`` and ``umount TARGET`` print the target; a byte of it that is
    not UTF-8 went out raw, where its JSON writes ``\\xff``.  The lines and the listing write it
    as lamina.quoting does (output.shown_path): quoted, so that the four characters ``\\xff``
    of another target, printed as they are, read apart from it."""
    from conftest import require_root
    require_root()
    layout = write_image(tmp_path / "layout", [Tar().file("f", b"x").bytes()])
    root = tmp_path / "store"
    assert _cli("--root", root, "copy", f"oci:{layout}:img", "img:1").returncode == 0
    target = os.fsdecode(os.fsencode(tmp_path) + b"/mnt\xff")
    shown = b"'" + os.fsencode(tmp_path) + b"/mnt\\xff'\n"
    mounted = _cli("--root", root, "mount", "img:1", target)
    try:
        listing = _cli("--root", root, "mount")
    finally:
        unmounted = _cli("--root", root, "umount", target)
    assert mounted.returncode == unmounted.returncode == 0, mounted.stderr + unmounted.stderr
    assert mounted.stdout == shown and unmounted.stdout == shown, (mounted.stdout, unmounted.stdout)
    assert shown.rstrip(b"\n") in listing.stdout, listing.stdout


def test_a_template_error_quoting_an_image_field_stays_on_the_error_line(tmp_path):
    """inspect's per-image errors (a template that fails on a value, an unknown ref) went to
    stderr as they were, not through the one-line rule of every other error: a template
    ranging over the image's Author printed that Author in its error, whose newline forged a
    ``lamina: error:`` line and whose escape sequences reached the terminal."""
    import ocibuild as ob
    lay = ob.Layout(tmp_path / "lay")
    lay.add(lay.image([{"a": b"x"}], config_extra={"author": "x\n" + FORGED.decode()}), "1")
    root = tmp_path / "store"
    assert _cli("--root", root, "copy", f"oci:{lay.root}:1", "evil:1").returncode == 0
    r = _cli("--root", root, "inspect", "--format", "{{range .Author}}{{end}}", "evil:1")
    assert r.returncode == 1
    err = r.stderr.rstrip(b"\n")
    assert err.count(b"\n") == 0 and err.startswith(b"lamina: error: template: ") and b"\\x1b[2J" in err, err
    _assert_not_forged(r.stdout + r.stderr, "inspect")


def test_an_images_own_text_drives_no_terminal(tmp_path):
    """An image config's strings are anyone's: a history step, a label, the os/architecture.
    On afc3e91 `history` printed a step's escape sequences as they were and its newline made a
    line of the table of its own, `inspect --format` printed a label's escapes, and `unpack oci:`
    printed the config's architecture (newline, escapes) in its first line."""
    import ocibuild as ob
    evil = FORGED.decode()
    lay = ob.Layout(tmp_path / "lay")
    lay.add(lay.image([{"a": b"x"}], arch="amd64\n" + evil, config_extra={
        "history": [{"created_by": "RUN x\n" + evil, "comment": "c\r" + evil}],
        "config": {"Labels": {"l": "v" + evil}}}), "1")
    r = _cli("unpack", f"oci:{lay.root}:1", tmp_path / "dest")
    assert r.returncode == 0, r.stderr
    _assert_not_forged(r.stdout + r.stderr, "unpack")
    assert b"(linux/amd64\\nlamina: error: forged\\x1b[2j\\x1b[31m)" in r.stdout, r.stdout  # arch lowercased
    root = tmp_path / "store"
    assert _cli("--root", root, "copy", f"oci:{lay.root}:1", "evil:1").returncode == 0
    for args in (["history", "evil:1"], ["history", "--no-trunc", "evil:1"]):
        r = _cli("--root", root, *args)
        assert r.returncode == 0, r.stderr
        _assert_not_forged(r.stdout + r.stderr, " ".join(args))
        assert r.stdout.count(b"\n") == 2, r.stdout   # the header and the one step
    r = _cli("--root", root, "history", "--no-trunc", "--format", "{{.CreatedBy}}|{{.Comment}}", "evil:1")
    assert r.stdout == b"RUN x\nlamina: error: forged\\x1b[2J\\x1b[31m|c\\rlamina: error: forged\\x1b[2J\\x1b[31m\n"
    r = _cli("--root", root, "inspect", "--format", "{{.Config.Labels.l}}", "evil:1")
    assert r.returncode == 0 and r.stdout == b"vlamina: error: forged\\x1b[2J\\x1b[31m\n", r.stdout


def test_an_images_bidi_controls_are_written_as_escapes(tmp_path):
    """U+202E (right-to-left override) and its kin in an image's strings reorder what the
    terminal shows ("Trojan Source"): a label "exe\\u202etxt.sh" reads as "exehs.txt".  On
    829116e `inspect --format`, `history` and `unpack`'s first line printed them raw."""
    import ocibuild as ob
    lay = ob.Layout(tmp_path / "lay")
    lay.add(lay.image([{"a": b"x"}], arch="amd\u202e64", config_extra={
        "history": [{"created_by": "RUN \u2066x\u2069 \u200f"}],
        "config": {"Labels": {"l": "exe\u202etxt.sh\u061c"}}}), "1")
    r = _cli("unpack", f"oci:{lay.root}:1", tmp_path / "dest")
    assert r.returncode == 0, r.stderr
    assert b"(linux/amd\\u202e64)" in r.stdout, r.stdout
    root = tmp_path / "store"
    assert _cli("--root", root, "copy", f"oci:{lay.root}:1", "bidi:1").returncode == 0
    r = _cli("--root", root, "inspect", "--format", "{{.Config.Labels.l}}", "bidi:1")
    assert r.returncode == 0 and r.stdout == b"exe\\u202etxt.sh\\u061c\n", r.stdout
    r = _cli("--root", root, "history", "--no-trunc", "--format", "{{.CreatedBy}}", "bidi:1")
    assert r.returncode == 0 and r.stdout == b"RUN \\u2066x\\u2069 \\u200f\n", r.stdout
    for out in (r.stdout, r.stderr):
        assert not any(0x202a <= ord(c) <= 0x202e or 0x2066 <= ord(c) <= 0x2069 for c in out.decode()), out


# strict JSON carries these raw in its strings (and \r between its tokens): the C1 controls
# (U+009B is CSI, U+009D OSC: a window title, a clipboard), DEL, and the bidi overrides
_RAW_IN_JSON = "\u009b2J\u009d0;pwned\u009c\u007f exe\u202etxt.sh"


class _RawManifest(_OneAnswer):
    MANIFEST = ('{"schemaVersion": 2,\r"mediaType": "application/vnd.oci.image.manifest.v1+json",\r'
                '"config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2, '
                '"digest": "sha256:' + "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a" + '"},'
                '\r"layers": [], "annotations": {"note": "' + _RAW_IN_JSON + '"}}').encode()

    def answer(self):
        return 200, "application/vnd.oci.image.manifest.v1+json", self.MANIFEST


def test_a_registrys_manifest_drives_no_terminal_through_manifest_inspect(tmp_path, registry_env):  # noqa: F811
    """``manifest inspect`` wrote the registry's bytes as they came: valid JSON, but JSON
    leaves the C1 controls, DEL and the bidi overrides raw in a string, and a \\r between
    tokens sends the cursor back over the line.  Now written as JSON escapes (\\r dropped):
    the same document, in the bytes served whenever it holds none of them."""
    with _serving(_RawManifest) as host:
        r = _cli("manifest", "inspect", "--insecure", f"{host}/x/y:1")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode("utf-8")
    drives = [c for c in out if c == "\r" or 0x7f <= ord(c) <= 0x9f or 0x202a <= ord(c) <= 0x202e]
    assert not drives, (drives, out)
    assert json.loads(out) == json.loads(_RawManifest.MANIFEST), "the same document"


def test_json_of_an_images_text_stays_json_and_drives_no_terminal(tmp_path):
    """An image's strings may hold what JSON leaves raw (C1 controls, DEL, bidi overrides).
    On 96c4711 `inspect` printed them raw to the terminal, and the outputs whose values pass
    the template's escaping (`history --format json`, `{{json .Config}}`) wrote them as
    ``\\x9b``, which is no JSON escape: docker's one-object-per-row output no JSON reader
    could read.  Each is a \\u escape now: valid JSON, the image's own value."""
    import ocibuild as ob
    lay = ob.Layout(tmp_path / "lay")
    lay.add(lay.image([{"a": b"x"}], config_extra={
        "author": "au" + _RAW_IN_JSON, "history": [{"created_by": "RUN " + _RAW_IN_JSON, "comment": _RAW_IN_JSON}],
        "config": {"Labels": {"l" + _RAW_IN_JSON: "v" + _RAW_IN_JSON}, "Env": ["A=" + _RAW_IN_JSON]}}), "1")
    root = tmp_path / "store"
    assert _cli("--root", root, "copy", f"oci:{lay.root}:1", "c1:1").returncode == 0
    outputs = {}
    for args in (["inspect", "c1:1"], ["inspect", "--format", "json", "c1:1"],
                 ["inspect", "--format", "{{json .Config}}", "c1:1"], ["inspect", "--format", "{{json .Author}}", "c1:1"],
                 ["history", "--format", "json", "c1:1"], ["history", "--format", "{{json .}}", "c1:1"]):
        r = _cli("--root", root, *args)
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode("utf-8")
        drives = [c for c in out if 0x7f <= ord(c) <= 0x9f or 0x202a <= ord(c) <= 0x202e]
        assert not drives, (args, drives, out)
        outputs[" ".join(args[:-1])] = json.loads(out)
    config = outputs["inspect"][0]["Config"]
    assert config["Labels"] == {"l" + _RAW_IN_JSON: "v" + _RAW_IN_JSON} and config["Env"][-1] == "A=" + _RAW_IN_JSON
    assert outputs["inspect --format json"] == outputs["inspect"]
    assert outputs["inspect --format {{json .Config}}"] == config
    assert outputs["inspect --format {{json .Author}}"] == "au" + _RAW_IN_JSON
    assert outputs["history --format json"]["CreatedBy"] == "RUN " + _RAW_IN_JSON
    assert outputs["history --format {{json .}}"] == outputs["history --format json"]
