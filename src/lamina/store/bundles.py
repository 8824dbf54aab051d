"""OCI runtime bundles: ``lamina unpack --bundle REF DIR`` writes DIR/rootfs and DIR/config.json.

config.json follows the image-spec's conversion rules (conversion.md) on top of
the runtime-spec example configuration, as ``umoci unpack`` does; the image's
User is resolved in the rootfs' own /etc/passwd and /etc/group, read without
ever leaving the rootfs.
"""
from __future__ import annotations

import json
import os
import posixpath
import re
import stat

from ..errors import ImageError
from ..quoting import quote_name
from .flatten import _is_root, flatten
from .inuse import record_use
from .flatten import check_link
from .fsutil import open_parent_again
from .materialize import _check_platform, _snapshots, _staged, check_outside_store

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# directories the /etc/passwd walk keeps open for ".."; above them it opens ".." again: an image's
# symlinks lead thousands of levels down, past the open-file limit
_OPEN_LEVELS = 16
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_ACCOUNTS_FILE = 16 << 20   # an /etc/passwd or /etc/group; real ones are a few KiB

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def _default_spec(rootless):
    """The runtime-spec example configuration (what ``runc spec`` and umoci start from)."""
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] + ([] if rootless else ["gid=5"])},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    ]
    if rootless:
        mounts.append({"destination": "/sys", "type": "none", "source": "/sys",
                       "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
    else:
        mounts += [
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ]
    namespaces = [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    linux = {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": namespaces,
        "maskedPaths": ["/proc/kcore", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                        "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
        "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    }
    if rootless:
        # like `runc spec --rootless`: a user namespace mapping root to the caller, no network namespace,
        # no cgroup device rules (an unprivileged runtime cannot set them)
        namespaces[:] = [n for n in namespaces if n["type"] != "network"] + [{"type": "user"}]
        linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
        del linux["resources"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [f"PATH={DEFAULT_PATH}", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: list(_CAPS) for k in ("bounding", "effective", "inheritable", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs"},
        "hostname": "lamina",
        "mounts": mounts,
        "linux": linux,
    }


def _read_in_root(root, relpath, limit=_MAX_ACCOUNTS_FILE):
    """Read a file of the rootfs, resolving symlinks inside ``root`` (never outside); None if absent."""
    try:
        return _read_in_root_fd(root, relpath, limit)
    except OSError as e:
        # e.g. a symlink on the way whose target has a 300-byte name: the system names only that
        raise ImageError(f"cannot read the image's /{relpath} for its config's User: "
                         f"{e.strerror or e} ({quote_name(os.fsencode(e.filename or ''))})") from None


def _read_in_root_fd(root, relpath, limit):
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        parts = [p for p in relpath.split("/") if p not in ("", ".")]
        hops = 0
        stack = []           # fds of the directories walked, root first (not including root_fd)
        ids = []             # their (dev, ino): of the ones closed (-1) for depth, to open them again
        cur = root_fd
        try:
            while parts:
                name = parts.pop(0)
                if name == "..":
                    if stack:
                        below = stack.pop()
                        ids.pop()
                        if stack and stack[-1] < 0:
                            stack[-1] = open_parent_again(below, ids[-1], "a directory on the way moved")
                        os.close(below)
                    cur = stack[-1] if stack else root_fd
                    continue
                try:
                    st = os.stat(name, dir_fd=cur, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    return None
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > 40:
                        return None
                    target = os.readlink(name, dir_fd=cur)
                    if target.startswith("/"):
                        while stack:
                            fd = stack.pop()
                            if fd >= 0:
                                os.close(fd)
                        ids.clear()
                        cur = root_fd
                    parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                    continue
                if parts:
                    if not stat.S_ISDIR(st.st_mode):
                        return None
                    fd = os.open(name, _DIR_FLAGS, dir_fd=cur)
                    stack.append(fd)
                    ids.append((st.st_dev, st.st_ino))
                    if len(stack) > _OPEN_LEVELS and stack[-_OPEN_LEVELS - 1] >= 0:
                        os.close(stack[-_OPEN_LEVELS - 1])
                        stack[-_OPEN_LEVELS - 1] = -1
                    cur = fd
                    continue
                if not stat.S_ISREG(st.st_mode):
                    return None
                fd = os.open(name, _READ_FLAGS, dir_fd=cur)
                try:
                    return _read_whole(fd, relpath, limit)
                finally:
                    os.close(fd)
            return None
        finally:
            for fd in stack:
                if fd >= 0:
                    os.close(fd)
    finally:
        os.close(root_fd)


def _read_whole(fd, relpath, limit):
    # all of it, as moby's scanner reads it (an entry past the first MiB was dropped unseen); a
    # file past ``limit`` (a sparse 4 GiB one) is refused rather than read
    if os.fstat(fd).st_size > limit:
        raise ImageError(f"cannot read the image's /{relpath} for its config's User: it is larger than "
                         f"{limit >> 20} MiB")
    data = bytearray()
    while chunk := os.read(fd, limit + 1 - len(data)):
        data += chunk
    return bytes(data)


# The longest /etc/passwd line moby's bufio.Scanner takes, "\n" excluded: a longer one fails the
# lookup ("token too long").  /etc/group lines (member lists) are read whole, as umoci reads them.
_LONGEST_PASSWD_LINE = (64 << 10) - 1

# What Go's bytes.TrimSpace trims (unicode.IsSpace); Python's strip() also takes \x1c-\x1f.
_GO_SPACE = " \t\n\v\f\r\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
            "\u2028\u2029\u202f\u205f\u3000"


def _parse_colon_file(data, fields, *, comments, relpath, user):
    """The lines of an /etc/passwd or /etc/group as moby/sys/user reads them (docker, umoci, runc):
    split at "\n" only and trimmed of Unicode spaces, each cut at ":" into ``fields`` fields (the
    missing ones empty).  Python's splitlines() also splits at \r, \x1c-\x1e, NEL and U+2028: a
    line "web:x:1000:1000:\x1cweb:x:0:0::/:/bin/sh" was user web as uid 0 for lamina and as
    uid 1000 for every Go reader.  Only /etc/group has comments in moby's reading."""
    out = []
    if data is None:
        return out
    for number, raw in enumerate(data.split(b"\n"), 1):
        if len(raw) > _LONGEST_PASSWD_LINE and relpath == "etc/passwd":
            raise ImageError(f"image config User {user!r}: line {number} of the image's /{relpath} is longer "
                             f"than {_LONGEST_PASSWD_LINE} bytes")
        # bytes that are not UTF-8 stay distinct (never a space, never equal to a config's name)
        line = raw.decode("utf-8", "surrogateescape").strip(_GO_SPACE)
        if not line or (comments and line.startswith("#")):
            continue
        parts = line.split(":")
        out.append((parts + [""] * fields)[:fields])
    return out


def _accounts(rootfs, relpath, user):
    """The entries of the rootfs' etc/passwd or etc/group (``relpath``) for the config's ``user``."""
    passwd = relpath == "etc/passwd"
    return _parse_colon_file(_read_in_root(rootfs, relpath), 7 if passwd else 4, comments=not passwd,
                             relpath=relpath, user=user)


def _text(field):
    """A field of the image's files as text for config.json (JSON holds no stray bytes; Go's
    encoder writes U+FFFD for each, where Python's decoder makes one of a cut sequence: \xe2\x80)."""
    return re.sub("[\udc80-\udcff]", "\ufffd", field)


# uids and gids as moby/sys/user reads them: strconv.Atoi (an optional sign, ASCII digits; Python's
# isdigit() and int() take every script's, and int() refuses past 4,300 digits with a ValueError)
# and its range.
_NUMBER = re.compile(r"[+-]?[0-9]+")
_MAX_ID = (1 << 31) - 1


def _atoi(text):
    """The id ``text`` (Atoi's syntax) is, None if out of range.  Leading zeros are only zeros to
    Atoi ("00000000001000" is 1000), and int() refuses a string of 4,300 of them."""
    digits = text.lstrip("+-").lstrip("0") or "0"
    if len(digits) > 10:
        return None
    value = -int(digits) if text.startswith("-") else int(digits)
    return value if 0 <= value <= _MAX_ID else None


def _file_id(field):
    """A uid/gid field of the image's /etc/passwd or /etc/group, None if not one."""
    return _atoi(field) if _NUMBER.fullmatch(field) else None


def _matched_uid(field):
    """A passwd line's uid as GetExecUser compares it with a User that is a number: Atoi's error
    ignored, so a word or an empty field is 0 and a line of such a uid before root's is uid 0's
    (only its gid, home and groups follow: the uid is the User's)."""
    return _file_id(field) if _NUMBER.fullmatch(field) else 0


def _given_id(text, user):
    """The number the config's User gives (Atoi's syntax)."""
    value = _atoi(text)
    if value is None:
        raise ImageError(f"image config User {user[:80]!r}: uids and gids must be in range 0-{_MAX_ID}")
    return value


def resolve_user(user, rootfs):
    """(OCI process user {uid, gid[, additionalGids]}, home dir) for an image config's User.

    ``user``, ``uid``, ``user:group``, ``uid:gid``, like docker and umoci (moby/sys/user's
    GetExecUser): names are looked up in the rootfs' /etc/passwd and /etc/group (read without
    ever leaving the rootfs), the first entry matching; a numeric uid also picks up its passwd
    entry (primary group, home); supplementary groups are every /etc/group line listing the
    user, in file order, unless a group is given; an unknown name is an error, the home
    defaults to "/".  The User is taken as it is written (" web " is no user, as for Go).
    """
    user = user or ""
    name, _, group = user.partition(":")
    passwd = _accounts(rootfs, "etc/passwd", user)
    uid, gid, home, username = 0, 0, "/", None
    entry = None
    if name == "" or _NUMBER.fullmatch(name):
        uid = _given_id(name, user) if name else 0
        entry = next((p for p in passwd if _matched_uid(p[2]) == uid), None)
    else:
        entry = next((p for p in passwd if p[0] == name), None)
        if entry is None:
            raise ImageError(f"image config User {user!r}: no user {name!r} in the image's /etc/passwd")
        uid = _file_id(entry[2])
        if uid is None:
            raise ImageError(f"image config User {user!r}: the image's /etc/passwd gives {name!r} the uid "
                             f"{_text(entry[2])[:80]!r}, not a number from 0 to {_MAX_ID}")
    if entry is not None:
        username = entry[0]
        if (file_gid := _file_id(entry[3])) is not None:
            gid = file_gid
        elif not group:
            # Go's parser reads a gid it cannot parse as 0 (umoci, docker, runc: the root group);
            # refused as such a uid is, rather than meaning the root group silently
            raise ImageError(f"image config User {user!r}: the image's /etc/passwd gives {entry[0]!r} the gid "
                             f"{_text(entry[3])[:80]!r}, not a number from 0 to {_MAX_ID}")
        home = _text(entry[5]) or "/"
    if group:
        if _NUMBER.fullmatch(group):
            gid = _given_id(group, user)
        else:
            groups = _accounts(rootfs, "etc/group", user)
            g = next((g for g in groups if g[0] == group and _file_id(g[2]) is not None), None)
            if g is None:
                raise ImageError(f"image config User {user!r}: no group {group!r} in the image's /etc/group")
            gid = _file_id(g[2])
    out = {"uid": uid, "gid": gid}
    if not group and username:
        # as GetExecUser: a group listed twice, or the primary group listed, stays in the list
        extra = [gid_ for g in _accounts(rootfs, "etc/group", user)
                 if g[3] and username in g[3].split(",") and (gid_ := _file_id(g[2])) is not None]
        if extra:
            out["additionalGids"] = extra
    return out, home


def _check_process_strings(cfg):
    """A NUL cannot reach execve (nor a passwd lookup): an Env, Entrypoint, Cmd, WorkingDir or User
    holding one is refused by name rather than written into config.json for the runtime to fail on."""
    for key in ("Env", "Entrypoint", "Cmd", "WorkingDir", "User"):
        value = cfg.get(key)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and "\0" in item:
                raise ImageError(f"image config {key} {quote_name(item)}: holds a NUL byte, which no process "
                                 "can be given")


def _check_linux(image):
    """The runtime config is Linux's (namespaces, mounts, capabilities): no runtime runs a windows
    or freebsd image from it (umoci: "unsupported OS")."""
    os_name = (image.config or {}).get("os")
    if os_name != "linux":
        raise ImageError(f"image config os {quote_name(os_name or '')}: a bundle's config.json is for Linux; "
                         "unpack the image without --bundle for its files")


def runtime_config(image, rootfs, *, rootless=None):
    """config.json for an OCI runtime bundle from an image config (image-spec conversion.md)."""
    if rootless is None:
        rootless = not _is_root()
    _check_linux(image)
    spec = _default_spec(rootless)
    cfg = (image.config or {}).get("config") or {}
    proc = spec["process"]
    proc["user"], home = resolve_user(cfg.get("User"), rootfs)
    if rootless:
        # one id mapped: setgroups(2) is denied in the user namespace, and runc fails on any
        # additional gid (umoci --rootless drops them too)
        proc["user"].pop("additionalGids", None)
    _check_process_strings(cfg)
    env = list(proc["env"])
    for item in cfg.get("Env") or []:
        if not isinstance(item, str):
            continue
        key, eq, _ = item.partition("=")
        if not eq or not key:
            # runc refuses such a process ("invalid environment variable": no '=', or an empty
            # name): say so now, as umoci does
            raise ImageError(f"image config Env {quote_name(item)}: an environment variable must be "
                             "NAME=VALUE")
        for i, e in enumerate(env):
            if e.split("=", 1)[0] == key:
                env[i] = item
                break
        else:
            env.append(item)
    if not any(e.startswith("HOME=") for e in env):
        if "\0" in home:
            raise ImageError(f"image config User {cfg.get('User')!r}: the image's /etc/passwd gives it the home "
                             f"{quote_name(home)}, which holds a NUL byte no process can be given")
        env.append(f"HOME={home}")  # docker and umoci give the process its user's home
    proc["env"] = env
    args = list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])
    if args:
        proc["args"] = [a for a in args if isinstance(a, str)]
    # The runtime-spec wants an absolute cwd (runc refuses "app" or "../../x"): made absolute and
    # clean inside the container's root, as docker does (filepath.Join("/", WorkingDir)).
    proc["cwd"] = "/" + posixpath.normpath("/" + (cfg.get("WorkingDir") or "")).lstrip("/")
    for vol in sorted(cfg.get("Volumes") or {}):
        spec["mounts"].append({"destination": vol, "type": "tmpfs", "source": "none",
                               "options": ["rw", "nosuid", "nodev", "noexec", "relatime"]})
    annotations = {}
    c = image.config or {}
    annotations["org.opencontainers.image.os"] = c.get("os", "")
    annotations["org.opencontainers.image.architecture"] = c.get("architecture", "")
    if c.get("variant"):
        annotations["org.opencontainers.image.variant"] = c["variant"]
    if c.get("os.version"):
        annotations["org.opencontainers.image.os.version"] = c["os.version"]
    annotations["org.opencontainers.image.author"] = c.get("author", "") or ""
    if c.get("created"):
        annotations["org.opencontainers.image.created"] = c["created"]
    ports = cfg.get("ExposedPorts") if isinstance(cfg.get("ExposedPorts"), dict) else {}
    annotations["org.opencontainers.image.exposedPorts"] = ",".join(sorted(ports))
    annotations["org.opencontainers.image.stopSignal"] = cfg.get("StopSignal") or ""
    # image-spec conversion.md: a label of the same key MUST take precedence over what the config's
    # own fields give (umoci lets the fields win)
    labels = cfg.get("Labels") or {}
    if isinstance(labels, dict):
        annotations.update({k: v for k, v in labels.items() if isinstance(v, str)})
    spec["annotations"] = dict(sorted(annotations.items()))
    # keep the key order of runc/umoci: annotations before linux
    linux = spec.pop("linux")
    spec["linux"] = linux
    return spec


def make_bundle(store, ref, bundle, *, link=False, platform=None):
    """``lamina unpack --bundle REF DIR``: DIR/config.json + DIR/rootfs. Returns (Image, FlattenStats, config)."""
    image = ref if hasattr(ref, "chain_ids") else store.resolve(ref)
    _check_platform(image, platform)
    _check_linux(image)  # before the rootfs is made
    bundle = os.path.abspath(os.fsdecode(bundle))
    check_outside_store(store, bundle, "bundle directory")
    layer_dirs, t_extract, extracted = _snapshots(store, image)
    if link:
        check_link(layer_dirs, bundle)

    def fill(staging):
        rootfs = os.path.join(staging, "rootfs")
        os.mkdir(rootfs, 0o700)
        stats = flatten(layer_dirs, rootfs, link=link)
        spec = runtime_config(image, rootfs)
        data = (json.dumps(spec, indent="\t") + "\n").encode()
        fd = os.open(os.path.join(staging, "config.json"), _CREATE_FLAGS, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return stats, spec

    stats, spec = _staged(bundle, fill)
    stats.dest = bundle
    stats.extract_seconds, stats.extracted = t_extract, extracted
    record_use(store, "bundle", bundle, image, {"link": link})
    return image, stats, spec
