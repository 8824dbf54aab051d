"""``lamina unpack --bundle``'s config.json against ``umoci unpack``'s, for the same image.

Each case is one image config (and the /etc/passwd, /etc/group its rootfs holds).  umoci
resolves the User with moby/sys/user, as docker and runc do, so where the two disagree on
the process (its user, groups, environment, arguments), lamina is wrong, but for the few
differences listed in DIFFERENT, each with its reason (the bundle rows of tests/CONFORMANCE.md).
"""
from __future__ import annotations

import json
import subprocess

import pytest

import ocibuild as ob
from conftest import require_root, require_tool
from verbkit import lamina

PASSWD = (b"root:x:0:0:root:/root:/bin/sh\nweb:x:33:44:web:/srv:/bin/sh\n"
          b"emptyhome:x:51:51:::/bin/sh\n")
GROUP = b"root:x:0:\nwww:x:44:web\nextra:x:99:web,other\nmore:x:100:root\nagain:x:99:web\n"
CREATED = "2020-01-01T00:00:00Z"


def _bundles(tmp_path, config, *, top=None, passwd=PASSWD, group=GROUP):
    """(umoci's config.json or its error line, lamina's config.json or its error line)."""
    require_root()
    require_tool("umoci")
    files = {"etc": None, "etc/passwd": passwd, "etc/group": group, "srv": None}
    extra = {"config": config, "created": CREATED}
    extra.update(top or {})
    extra = {k: v for k, v in extra.items() if v is not None}
    lay = ob.Layout(tmp_path / "lay")
    lay.add(lay.image([files], config_extra=extra), "img")
    umoci = subprocess.run(["umoci", "unpack", "--image", f"{lay.root}:img", tmp_path / "umoci"],
                           capture_output=True, text=True)
    theirs = json.loads((tmp_path / "umoci/config.json").read_text()) if umoci.returncode == 0 else \
        umoci.stderr.strip().splitlines()[-1]
    store = tmp_path / "store"
    rc, _, err = lamina(store, "copy", f"oci:{lay.root}:img", "img")
    assert rc == 0, err
    rc, _, err = lamina(store, "unpack", "--bundle", "img", tmp_path / "lamina")
    ours = json.loads((tmp_path / "lamina/config.json").read_text()) if rc == 0 else err.strip()
    return theirs, ours


def _runtime_view(spec):
    """What the image's config decides in config.json."""
    proc = spec["process"]
    return {"user": proc["user"], "env": proc["env"], "args": proc["args"], "cwd": proc["cwd"],
            "terminal": proc["terminal"], "root": spec["root"], "annotations": spec["annotations"], "mounts": sorted(m["destination"] for m in spec["mounts"])}


def _umoci_seen_by_lamina(theirs):
    """umoci's view with the one difference every case shares: lamina gives a user without a
    home (no passwd entry, an empty home field) HOME=/, which runc sets anyway (its default
    user's home) when the process has none; umoci leaves HOME out."""
    view = _runtime_view(theirs)
    if not any(e.startswith("HOME=") for e in view["env"]):
        view["env"] = view["env"] + ["HOME=/"]
    view["user"].setdefault("additionalGids", [])
    return view


SAME = {
    "no User": ({}, {}),
    "User a name": ({"User": "web"}, {}),
    "User a uid with a passwd entry": ({"User": "33"}, {}),
    "User name:group": ({"User": "web:extra"}, {}),
    "User uid:gid": ({"User": "33:99"}, {}),
    "User uid unknown": ({"User": "1234"}, {}),
    "User name with an empty group": ({"User": "web:"}, {}),
    "User an empty name and a group": ({"User": ":extra"}, {}),
    "User a home left empty": ({"User": "emptyhome"}, {}),
    # Atoi's syntax: a sign is a number
    "User +5": ({"User": "+5"}, {}),
    "User web:+5": ({"User": "web:+5"}, {}),
    "passwd uid +33": ({"User": "web"}, {"passwd": b"web:x:+33:44::/srv:/bin/sh\n"}),
    # moby/sys/user splits the files at \n only: \r, \x1c, NEL inside a line are the line's
    # (lamina's splitlines() made a second line of what follows them: user web as uid 0)
    "passwd \\x1c in a field": ({"User": "web"}, {"passwd": b"web:x:1000:1000:a\x1cweb:x:0:0::/:/bin/sh\n"}),
    "passwd NEL in a field": ({"User": "web"}, {"passwd": "web:x:1000:1000:a\u0085web:x:0:0::/:/bin/sh\n".encode()}),
    "passwd \\r in a field": ({"User": "web"}, {"passwd": b"web:x:1000:1000:a\rweb:x:0:0::/:/bin/sh\n"}),
    "passwd CRLF lines": ({"User": "web"}, {"passwd": b"web:x:1000:1000::/h:/bin/sh\r\n"}),
    "passwd line indented, trailing spaces": ({"User": "web"}, {"passwd": b"  web:x:1000:1000::/h \n"}),
    "passwd line of four fields": ({"User": "web"}, {"passwd": b"web:x:1000:1000\n"}),
    "passwd # is a name, not a comment": ({"User": "#web"}, {"passwd": b"#web:x:1000:1000::/h:/bin/sh\n"}),
    "group # comments a line": ({"User": "web"}, {"group": b"#g:x:7:web\ng:x:8:web\n"}),
    "group line indented": ({"User": "web"}, {"group": b"  g:x:77:web\n"}),
    "group member after a space is another name": ({"User": "web"}, {"group": b"g:x:77:a, web\nh:x:78:web\n"}),
    "group line of three fields": ({"User": "web:g"}, {"group": b"g:x:77\n"}),
    # the whole file counts (lamina read its first MiB and dropped the rest unseen)
    "passwd entry past the first MiB": ({"User": "web"}, {"passwd": b"#\n" * (1 << 20) + b"web:x:33:44::/srv:/bin/sh\n"}),
    "group line past the first MiB": ({"User": "web"}, {"group": b"#\n" * (1 << 20) + b"g:x:77:web\n"}),
    "group line past 1 MiB": ({"User": "web"}, {"group": b"g:x:77:" + b"x," * (1 << 19) + b"web\n"}),
    # leading zeros are only zeros to Atoi (lamina: "uids and gids must be in range", or no id)
    "User of leading zeros": ({"User": "0000000000033:+000000000044"}, {}),
    "passwd uid of leading zeros": ({"User": "web"}, {"passwd": b"web:x:00000000000033:000000000044::/srv:/bin/sh\n"}),
    # Go matches a User of a number with each line's uid read by Atoi, its error ignored: a word
    # or an empty uid is 0, and such a line before root's is uid 0's (its gid, home and name;
    # lamina passed it by and took root's gid 0)
    "User 0 over a line whose uid is a word": ({"User": "0"}, {"passwd": b"daemon:x:word:7::/srv:/bin/sh\n"
                                                                       b"root:x:0:0::/root:/bin/sh\n"}),
    "no User over a line whose uid is empty": ({}, {"passwd": b"daemon:x::7::/srv:/bin/sh\nroot:x:0:0::/root:/bin/sh\n",
                                                    "group": b"g:x:8:daemon\nr:x:9:root\n"}),
    # Go's encoder writes a U+FFFD for each byte that is no UTF-8 (Python's decoder one for \xe2\x80)
    "passwd home with stray bytes": ({"User": "web"}, {"passwd": b"web:x:33:44::/srv/\xe2\x80x\xff:/bin/sh\n"}),
    "Env merged, PATH replaced, duplicates": ({"Env": ["PATH=/x", "A=1", "A=2", "B=="]}, {}),
    "Entrypoint and Cmd": ({"Entrypoint": ["/e", "a"], "Cmd": ["c"]}, {}),
    "Cmd alone": ({"Cmd": ["c"]}, {}),
    "Entrypoint and Cmd empty": ({"Entrypoint": [], "Cmd": []}, {}),
    "WorkingDir": ({"WorkingDir": "/srv"}, {}),
    "StopSignal, ports, volumes": ({"StopSignal": "SIGQUIT", "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
                                    "Volumes": {"/data": {}, "/a": {}}}, {}),
    "Labels": ({"Labels": {"a": "b", "org.opencontainers.image.title": "t"}}, {}),
    "every field null": ({k: None for k in ("User", "Env", "Entrypoint", "Cmd", "WorkingDir", "Labels",
                                            "ExposedPorts", "Volumes", "StopSignal")}, {}),
    # Go reads a JSON null into a string as "": a label, an argument of ""
    "null in Labels, Entrypoint and Cmd": ({"Labels": {"a": None, "b": "c"}, "Entrypoint": ["/e", None],
                                            "Cmd": [None, "c"]}, {}),
    "author, created with a zone and nanoseconds": ({}, {"top": {"author": "me <m@x>",
                                                                 "created": "2020-01-02T03:04:05.123456789+02:00"}}),
}


@pytest.mark.parametrize("name", SAME)
def test_bundle_config_is_umocis(tmp_path, name):
    config, kw = SAME[name]
    theirs, ours = _bundles(tmp_path, config, **kw)
    assert isinstance(theirs, dict), theirs
    assert isinstance(ours, dict), ours
    mine = _runtime_view(ours)
    mine["user"].setdefault("additionalGids", [])
    assert mine == _umoci_seen_by_lamina(theirs)


def test_supplementary_groups_are_every_line_listing_the_user(tmp_path):
    """GetExecUser lists each /etc/group line naming the user, in file order: the primary group
    and a gid on two lines included (lamina left out the second 99)."""
    theirs, ours = _bundles(tmp_path, {"User": "web"})
    assert ours["process"]["user"] == theirs["process"]["user"] == {"uid": 33, "gid": 44,
                                                                    "additionalGids": [44, 99, 99]}


def test_a_passwd_line_is_cut_at_newlines_only(tmp_path):
    """The image says web is uid 1000; docker, runc and umoci run it as 1000.  lamina split the
    line at the \\x1c inside it and found a second 'web' entry of uid 0: the bundle ran as root."""
    passwd = b"web:x:1000:1000:a\x1cweb:x:0:0::/:/bin/sh\n"
    theirs, ours = _bundles(tmp_path, {"User": "web"}, passwd=passwd)
    assert theirs["process"]["user"]["uid"] == ours["process"]["user"]["uid"] == 1000


def test_a_passwd_line_longer_than_moby_reads_is_refused_naming_it(tmp_path):
    """An /etc/passwd line of 64 KiB or more fails moby's lookup ("token too long"), so umoci makes
    no bundle; lamina read the first MiB of the file and went on with what it found there.  (A
    long /etc/group line is read whole, by umoci as by lamina: "group line past 1 MiB".)"""
    line = b"root:x:0:0:" + b"g" * (64 << 10) + b":/root:/bin/sh\n"
    theirs, ours = _bundles(tmp_path, {"User": "web"}, passwd=line + PASSWD)
    assert isinstance(theirs, str) and "token too long" in theirs, theirs
    assert ours == ("lamina: error: image config User 'web': line 1 of the image's /etc/passwd is longer than "
                    "65535 bytes"), ours
    assert not (tmp_path / "lamina").exists()


def test_a_home_holding_a_nul_is_refused(tmp_path):
    """The image's /etc/passwd gives web the home "/srv<NUL>x": umoci writes HOME with the NUL
    and runc's execve fails on it; lamina refuses it by name, as an Env holding one.  The image's
    own HOME, when it sets one, is what the process gets."""
    passwd = b"web:x:33:44::/srv\0x:/bin/sh\n"
    theirs, ours = _bundles(tmp_path, {"User": "web"}, passwd=passwd)
    assert "HOME=/srv\0x" in theirs["process"]["env"]
    assert ours == ("lamina: error: image config User 'web': the image's /etc/passwd gives it the home "
                    "'/srv\\x00x', which holds a NUL byte no process can be given"), ours
    _, ours = _bundles(tmp_path / "own", {"User": "web", "Env": ["HOME=/h"]}, passwd=passwd)
    assert "HOME=/h" in ours["process"]["env"]


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "symlink-to-a-fifo", "symlink-loop"])
def test_a_passwd_that_is_no_file_is_never_opened(tmp_path, kind):
    """/etc/passwd a FIFO (umoci waits on it forever), a device node (1:5: through the rootfs,
    umoci reads the host's /dev/zero), a directory, a link to a FIFO, a link loop: lamina opens
    none of them, and takes the image as having no passwd: a named User is "no user", a
    numeric one runs as that number.  (A regression guard for the reading of the file.)"""
    from everypath import write_image
    from tarbuild import Tar
    t = Tar().dir("etc")
    {"fifo": lambda: t.fifo("etc/passwd"), "device": lambda: t.chardev("etc/passwd", 1, 5),
     "directory": lambda: t.dir("etc/passwd"), "symlink-to-a-fifo": lambda: t.fifo("etc/p").symlink("etc/passwd", "p"),
     "symlink-loop": lambda: t.symlink("etc/passwd", "passwd")}[kind]()
    from lamina.store.bundles import runtime_config
    rootfs = tmp_path / "rootfs"
    rc, _, err = lamina(tmp_path / "store", "unpack", f"oci:{write_image(tmp_path / 'lay', [t.bytes()])}:img", rootfs)
    assert rc == 0, err

    class Image:
        pass
    image = Image()
    for user, expect in (("app", "image config User 'app': no user 'app' in the image's /etc/passwd"),
                         ("1000", {"uid": 1000, "gid": 0})):
        image.config = {"os": "linux", "architecture": "amd64", "config": {"User": user}}
        try:
            got = runtime_config(image, rootfs, rootless=False)["process"]["user"]
        except Exception as e:   # noqa: BLE001 (the message is the assertion)
            got = str(e)
        assert got == expect, (user, got)


REFUSED = {
    "User with spaces": ({"User": " web "}, "unable to find user  web ", "no user ' web '"),
    "User unknown": ({"User": "nosuch"}, "unable to find user nosuch", "no user 'nosuch'"),
    "User hex": ({"User": "0x10"}, "unable to find user 0x10", "no user '0x10'"),
    "Env without =": ({"Env": ["NOEQ"]}, "must contain '='", "Env 'NOEQ': an environment variable must be"),
    "Env with an empty name": ({"Env": ["=x"]}, "must have non-empty name", "Env '=x': an environment variable"),
    # Go reads the null as "", an entry without "="
    "Env null": ({"Env": ["A=1", None]}, "must contain '='", "Env '': an environment variable must be"),
    # a Linux runtime config for another system's image (lamina made one)
    "os windows": ({}, "unsupported OS: windows", "os 'windows': a bundle's config.json is for Linux", {"os": "windows"}),
    "os freebsd": ({}, "unsupported OS: freebsd", "os 'freebsd': a bundle's config.json is for Linux", {"os": "freebsd"}),
}


@pytest.mark.parametrize("name", REFUSED)
def test_bundle_refused_where_umoci_refuses(tmp_path, name):
    config, theirs_says, ours_says, *top = REFUSED[name]
    theirs, ours = _bundles(tmp_path, config, top=top[0] if top else None)
    assert isinstance(theirs, str) and theirs_says in theirs, theirs
    assert isinstance(ours, str) and ours.startswith("lamina: error: image config ") and ours_says in ours, ours
    assert "\n" not in ours and not (tmp_path / "lamina").exists()


# (config, top-level fields, path into config.json, umoci's value, lamina's value)
DIFFERENT = {
    # conversion.md: "an implementation-defined default SHOULD NOT result in an environment
    # variable being removed or changed"; docker keeps it too (runc sets HOME only when absent)
    "HOME of the image kept": ({"User": "web", "Env": ["HOME=/custom"]}, {}, ("process", "env", -1),
                               "HOME=/srv", "HOME=/custom"),
    "HOME=/ for a user without one": ({"User": "1234"}, {}, ("process", "env", -1), "TERM=xterm", "HOME=/"),
    # conversion.md: a label of the same key MUST take precedence
    "a label overrides the os annotation": ({"Labels": {"org.opencontainers.image.os": "plan9"}}, {},
                                            ("annotations", "org.opencontainers.image.os"), "linux", "plan9"),
    "a label overrides the stopSignal annotation": ({"Labels": {"org.opencontainers.image.stopSignal": "9"}}, {},
                                                    ("annotations", "org.opencontainers.image.stopSignal"), "", "9"),
    # conversion.md: variant and os.version MUST be annotations (umoci 0.4.7 predates the rule)
    "variant annotation": ({}, {"variant": "v2"}, ("annotations", "org.opencontainers.image.variant"), None, "v2"),
    "os.version annotation": ({}, {"os.version": "6.1"}, ("annotations", "org.opencontainers.image.os.version"),
                              None, "6.1"),
    # no created: nothing to copy (umoci formats Go's zero time)
    "no created": ({}, {"created": None}, ("annotations", "org.opencontainers.image.created"),
                   "0001-01-01T00:00:00Z", None),
    # runc refuses a relative cwd; docker joins it to / (filepath.Join)
    "WorkingDir relative": ({"WorkingDir": "app/../b/"}, {}, ("process", "cwd"), "app/../b/", "/b"),
}


def _at(spec, path):
    for key in path:
        try:
            spec = spec[key]
        except (KeyError, IndexError):
            return None
    return spec


@pytest.mark.parametrize("name", DIFFERENT)
def test_bundle_config_differs_from_umoci_on_purpose(tmp_path, name):
    config, top, path, umoci_value, lamina_value = DIFFERENT[name]
    theirs, ours = _bundles(tmp_path, config, top=top)
    assert _at(theirs, path) == umoci_value
    assert _at(ours, path) == lamina_value


def test_rootless_bundle_has_no_additional_gids(tmp_path):
    """``umoci unpack --rootless`` drops additionalGids: with one id mapped, setgroups(2) is denied
    and runc refuses them.  lamina's rootless bundle kept them."""
    require_tool("umoci")
    from lamina.store.bundles import runtime_config
    lay = ob.Layout(tmp_path / "lay")
    config = {"os": "linux", "architecture": "amd64", "config": {"User": "web"}}
    files = {"etc": None, "etc/passwd": PASSWD, "etc/group": GROUP}
    lay.add(lay.image([files], config_extra=config), "img")
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{lay.root}:img", tmp_path / "u"], check=True,
                   capture_output=True)
    theirs = json.loads((tmp_path / "u/config.json").read_text())

    class Image:
        pass
    image = Image()
    image.config = config
    ours = runtime_config(image, tmp_path / "u/rootfs", rootless=True)
    assert ours["process"]["user"] == theirs["process"]["user"] == {"uid": 33, "gid": 44}
    assert runtime_config(image, tmp_path / "u/rootfs", rootless=False)["process"]["user"]["additionalGids"] == \
        [44, 99, 99]


# An id of /etc/passwd or /etc/group that is no number: moby/sys/user's parser ignores Atoi's
# error, so a word or an empty field is 0 (root) to umoci, docker and runc, and -5 wraps to
# 4294967291.  (config, files, umoci's user, lamina's user or the end of its error)
IDS_NOT_NUMBERS = {
    "uid a word": ({"User": "web"}, {"passwd": b"web:x:abc:44::/srv:/bin/sh\n"}, {"uid": 0, "gid": 44},
                   "gives 'web' the uid 'abc', not a number from 0 to 2147483647"),
    "uid empty": ({"User": "web"}, {"passwd": b"web:x::44::/srv:/bin/sh\n"}, {"uid": 0, "gid": 44},
                  "gives 'web' the uid '', not a number from 0 to 2147483647"),
    "uid negative": ({"User": "web"}, {"passwd": b"web:x:-5:44::/srv:/bin/sh\n"}, {"uid": 4294967291, "gid": 44},
                     "gives 'web' the uid '-5', not a number from 0 to 2147483647"),
    "primary gid a word": ({"User": "web"}, {"passwd": b"web:x:33:abc::/srv:/bin/sh\n"}, {"uid": 33, "gid": 0},
                           "gives 'web' the gid 'abc', not a number from 0 to 2147483647"),
    "primary gid a word, a group given": ({"User": "web:44"}, {"passwd": b"web:x:33:abc::/srv:/bin/sh\n"},
                                          {"uid": 33, "gid": 44}, {"uid": 33, "gid": 44}),
    "group gid a word": ({"User": "web:staff"}, {"group": b"staff:x:abc:\n"}, {"uid": 33, "gid": 0},
                         "no group 'staff' in the image's /etc/group"),
    "group gid negative": ({"User": "web:staff"}, {"group": b"staff:x:-3:\n"}, {"uid": 33, "gid": 4294967293},
                           "no group 'staff' in the image's /etc/group"),
    # a supplementary group of no number: the root group to umoci; left out (the user runs, in
    # fewer groups, rather than in the root group the file never named)
    "supplementary gid a word": ({"User": "web"}, {"group": b"staff:x:abc:web\n"},
                                 {"uid": 33, "gid": 44, "additionalGids": [0]}, {"uid": 33, "gid": 44}),
}


@pytest.mark.parametrize("name", IDS_NOT_NUMBERS)
def test_an_id_that_is_no_number_never_means_root(tmp_path, name):
    """Where umoci's user or group comes out 0 (or wrapped) from a field that is no number, lamina
    refuses the User (naming the field) or leaves that group out: never uid or gid 0 that the
    image's files do not say.  The primary gid of a word was the root group in lamina too."""
    config, files, umoci_user, ours_expected = IDS_NOT_NUMBERS[name]
    theirs, ours = _bundles(tmp_path, config, **files)
    assert {k: v for k, v in theirs["process"]["user"].items() if k != "additionalGids" or v != [44, 99, 99]} == \
        umoci_user, theirs["process"]["user"]
    if isinstance(ours_expected, dict):
        assert isinstance(ours, dict), ours
        got = {k: v for k, v in ours["process"]["user"].items() if k != "additionalGids" or v != [44, 99, 99]}
        assert got == ours_expected, ours["process"]["user"]
    else:
        assert isinstance(ours, str) and ours.startswith("lamina: error: image config User ") and \
            ours.endswith(ours_expected), ours
        assert not (tmp_path / "lamina").exists()
