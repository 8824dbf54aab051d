"""Differential fuzzer: random layer stacks through every path must agree.

Random stacks of files and dirs (some owned by others, setuid, setgid or sticky,
some with xattrs: user.*, trusted.*, security.capability (v2, v3), an access ACL; some with PAX
times at the extremes; the root among the dirs), symlinks (relative, absolute, pointing out of
the root and at the host; owned by others too), hardlinks (same layer and lower layers,
to whiteout and opaque names), sparse files (every GNU sparse format), device nodes, fifos,
whiteouts and opaque markers (as entries of any type) and dir/file/symlink replacements go through every
path of everypath.py (names and links in the header, in PAX records or in GNU long
name headers; components of 255 bytes, whose whiteouts no filesystem could name, and
names with a space, a newline or a byte that is no UTF-8).  Entries take names written
before (replacements of every type by every other, entries written through symlinks);
layers may be empty or hold nothing but whiteouts and opaque markers; directories may
carry a default ACL, symlinks, fifos, nodes and hardlinks PAX times and xattrs; files may
be of exactly one block or 1 MiB + 1 bytes, sparse files end in data, in a hole, hold
nothing but a hole or a map of 30 regions.  All must give the same tree (or all fail),
umoci must agree where it accepts the image, and nothing outside the work dir may change.
One stack in eight has one of its layers again on top (the same blob twice in the image).
A third of the stores also hold a neighbour: the same stack with every file's metadata
changed in one respect (mode, group, a nanosecond of its time, an xattr's value, a
capability, an ACL), taken before or after the stack's image, which file-level dedup must
never merge with it; a third must check clean (fsck) after every path.  A compact store (keep-blobs false) must
give back every layer of both images byte for byte, and a copy of the stack's image to an
OCI layout every diffID, and check clean; and with one of its snapshots changed behind its back
(tamper(): a file's bytes, mode, owner, time or xattrs, a symlink, a name added or removed) fsck
must say so, a copy must fail naming the layer or give it back bit-exact, and fsck --repair must
leave the image's tree or an error.  And the docker-archive a compact store saves of the stack,
unpacked, is one more path (everypath's compact-save: every saved layer its diffID) of
rewrite_stacks()' and redeclare_stacks()', and of a third of test_lamina_paths_agree's and
link_stacks()'.  And ``lamina apply`` of the stack's layers one after another onto an existing
DEST (everypath's apply: the flat unpack of the lower half, the rest applied in place;
apply-link: the same onto a store's --link unpack of the lower half, after which the store must
check clean) and with --atomic (apply-atomic: each layer onto a cp -a copy of what the ones
below left, exchanged) are one more path each of one in ten of the stacks of
test_lamina_paths_agree, link_stacks(), rewrite_stacks() and redeclare_stacks()
(LAMINA_FUZZ_APPLY=N: one in N; 1: all three of every stack; 0: none).

One stack in five (LAMINA_FUZZ_DEEP: the share, 1 for nothing else) is a deep one
(deep_stacks()): 8 to 12 small layers whose entries lie mostly under what the layers below
wrote (directories with xattrs and ACLs, symlinks to them, opaque directories, whiteouts), so
that layers imply directories (made early by the store and the overlay format) that an entry
later in the layer may name, replace or hide, hardlinks reach lower files through 8 or more
layers below, and the upper layers are small beside the ones below (the dir unpack goes top-down).
One in ten of the compact store's stacks and of test_fuzz_rootless.py's is a deep one too (of 9 or
10 layers, without a neighbour: deep_light()).  link_stacks() puts hardlinks across layers beside
whiteouts and opaque markers of their targets, for the top-down dir unpack above all.
One stack in eight of the rest (LAMINA_FUZZ_HELD: the share) holds held whiteouts
(held_stacks(): a layer that lists a directory, whites out names in it, then links to lower
files, makes the names again, marks the directory opaque ...).  A layer in eight ships other
than as one gzip member (encodings(): plain, gzip members, zstd frames cut inside entries
behind skippable frames), and a few owners come in PAX records past 2^21.  And one stack is
written two or three ways (test_one_stack_in_every_tar_spelling_gives_one_tree: every name in
the header, a PAX record (with every field of the header too), a GNU long name or each its own
way; ustar, GNU or v7 headers or each entry its own; ended by two zero blocks, one, none, a
record of them, bytes that are no tar or an entry after a lone zero block, as GNU tar and
bsdtar stop there): one tree, and each layer back bit-exact from a compact store.
rewrite_stacks() rewrites a few names in place layer after layer through every type in a drawn
order, with whiteouts and opaque markers between, for the kernel's overlay mount to judge; and
redeclare_stacks() lists directories again in upper layers with other metadata (or none), opaque,
whited out and listed anew, replaced and made directories again, for the overlay mount and umoci.

Seeded and bounded in CI (LAMINA_FUZZ_EXAMPLES, default 100 per test; stacks(), deep_stacks(),
held_stacks() and link_stacks() leave out what every path would refuse but in one stack in eight,
so some 95, 87, 95 and 97 in 100 of their stacks are taken, where 37, 39, 57 and 72 were when
drawn blind);
run more on demand, e.g.:

    LAMINA_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz_paths.py

and LAMINA_FUZZ_SEED=N to explore other stacks than CI's
(LAMINA_FUZZ_PROGRESS=FILE counts the cases run in FILE, for long runs; LAMINA_FUZZ_REGISTRY=1
puts every stack of test_lamina_paths_agree through the registry's paths, not one in four).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import shutil
import stat
import struct
import tempfile
import time

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from conftest import require_root, require_tool
from everypath import EMPTY_LAYER, MADE_NOW, PATHS, assert_agree, describe, made_now, run_paths, umoci_tree
from layerkit import Guard
from ocibuild import ENCODINGS, Encoded
from tarbuild import MTIME, Tar
from tarvectors import SPARSE_BUILDERS

EXAMPLES = int(os.environ.get("LAMINA_FUZZ_EXAMPLES", "100"))
SEED = int(os.environ.get("LAMINA_FUZZ_SEED", "0"))
PROGRESS = os.environ.get("LAMINA_FUZZ_PROGRESS")
# the registry's paths on every stack of test_lamina_paths_agree (else one in four)
REGISTRY = os.environ.get("LAMINA_FUZZ_REGISTRY") == "1"


# ``lamina apply`` layer after layer onto an existing DEST, in place (onto a flat unpack or a store's
# --link one) and --atomic (everypath's apply paths): each on one stack in APPLY_SHARE (1: all three
# on every stack; 0: none).  Beside the seven paths of a stack without the registry's (19 s for 25
# stacks), apply costs 1.8 s, apply-link 5.4 s (a store, and its fsck) and apply-atomic 3.5 s
APPLY_PATHS = ("apply", "apply-link", "apply-atomic")
APPLY_SHARE = int(os.environ.get("LAMINA_FUZZ_APPLY", "10"))


def apply_paths(data):
    if APPLY_SHARE <= 1:
        return APPLY_PATHS if APPLY_SHARE else ()
    k = data.draw(st.integers(0, APPLY_SHARE - 1))
    return APPLY_PATHS[k:k + 1]


def _count_case():
    if PROGRESS:
        with open(PROGRESS, "a") as f:
            f.write(".")
NAMES = ["a", "b", "c"]
# a component of NAME_MAX bytes: its name needs a PAX or GNU carrier, its whiteout (.wh. + 255
# bytes) is longer than any name a filesystem holds, and three of them pass 255 bytes of path
LONG = "l" * 255
# names every tool spells otherwise somewhere: a space, a newline (one line per name in listings
# and in the tar-split sidecar), a byte that is no UTF-8 (a PAX path record, an xattr of the store,
# JSON), a name that is a whiteout prefix but not one
ODD = ["s p", "n\nl", "x\udcff", ".wh"]
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=False, database=None,
                    suppress_health_check=list(HealthCheck))
if os.environ.get("LAMINA_FUZZ_SHRINK") == "0":  # (a failing stack reported as drawn)
    SETTINGS = settings(SETTINGS, phases=[Phase.explicit, Phase.reuse, Phase.generate])

short_paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
paths = st.lists(st.sampled_from(NAMES * 6 + [LONG] + ODD), min_size=1, max_size=3).map("/".join)
# how an entry spells its name: tar writers differ, and a name must mean one path however spelled
SPELLINGS = [lambda p: p, lambda p: "./" + p, lambda p: "/" + p, lambda p: p.replace("/", "//"),
             lambda p: "b/../" + p, lambda p: "../" + p, lambda p: p + "/.", lambda p: p.replace("/", "/./"),
             lambda p: p + "/../" + p.rpartition("/")[2], lambda p: "./" + p.replace("/", "/c/../")]
names = st.tuples(paths, st.sampled_from(range(len(SPELLINGS))), st.integers(0, 3)).map(
    lambda t: SPELLINGS[t[1]](t[0]) if t[2] == 0 else t[0])  # mostly plain


def symlink_targets(host):
    return st.one_of(paths, paths.map(lambda p: "/" + p), paths.map(lambda p: "../../" + p),
                     st.sampled_from([".", "..", "/", host, host + "/sub", "../" * 6 + host.lstrip("/")]))


# Mostly root's; other owners make every path chown, and a chown that follows a symlink (or
# lands on an inherited or copied-up dir) shows as a disagreement or a changed host dir.
owners = st.sampled_from([(0, 0), (0, 0), (1000, 1000), (0, 42)])
# v2 vfs_cap_data: cap_net_bind_service permitted and effective (a chown or a write clears it)
CAPABILITY = struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0)
# an access ACL (user::rw- user:1000:r-- group::r-- mask::r-- other::r--): the kernel keeps its
# mask and the mode's group bits in step, so which of chmod and setxattr came last shows
ACL = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in
                                      [(1, 6, 0xFFFFFFFF), (2, 4, 1000), (4, 4, 0xFFFFFFFF),
                                       (0x10, 4, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)])

# the same ACL but user:1000:rw- (the mask, r--, leaves it r--): a value of the same length that
# means the same permissions, which only the bytes tell apart
ACL_RW = ACL[:4 + 8 + 2] + struct.pack("<H", 6) + ACL[4 + 8 + 4:]


def acl_in_step(acl, mode):
    """An access ACL (xattr form) as the kernel keeps it on a file of ``mode``: the owner's, the
    mask's (the group's, without a mask) and the others' permissions are the mode's."""
    out = bytearray(acl)
    tags = [struct.unpack_from("<H", acl, off)[0] for off in range(4, len(acl), 8)]
    bits = {1: mode >> 6, 0x20: mode, (0x10 if 0x10 in tags else 4): mode >> 3}
    for off, tag in zip(range(4, len(acl), 8), tags):
        if tag in bits:
            struct.pack_into("<H", out, off + 2, bits[tag] & 7)
    return bytes(out)


# v3 vfs_cap_data (a namespaced file capability, its root's uid last): root in the initial
# namespace writing one of rootid 0 stores it as v2, the kernel's conversion, on every path alike;
# one of rootid 1000 stays v3
CAPABILITY_V3_ROOT = struct.pack("<6I", 0x03000001, 1 << 10, 0, 0, 0, 0)
CAPABILITY_V3_USER = struct.pack("<6I", 0x03000001, 1 << 10, 0, 0, 0, 1000)
XATTRS = [("user.fuzz", b"1"), ("user.fuzz", b"22"), ("user.other", b""), ("trusted.fuzz", b"t"),
          ("security.capability", CAPABILITY), ("system.posix_acl_access", ACL)]
XATTRS += [("security.capability", CAPABILITY_V3_ROOT), ("security.capability", CAPABILITY_V3_USER)]
# times a 12-byte octal field cannot hold or does not spell: the epoch, before it (with a fraction),
# nanoseconds, after 2038 and after 2106
MTIMES = ["0", "-1.5", "1600000000.123456789", "4102444800", "8589934592",
          # and the ends: a nanosecond before a second, the year 1, the end of int64 (past what
          # any filesystem keeps: the kernel clamps it, the same on every path or refused by all)
          "0.999999999", "-62135596800", "9223372036854775807", "-9223372036854775807.5"]
# a default ACL (user::rwx user:1234:rwx group::r-x mask::rwx other::r-x): every inode made
# under its directory would take an access ACL of it, which no entry of the image names
DEFAULT_ACL = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in
                                              [(1, 7, 0xFFFFFFFF), (2, 7, 1234), (4, 5, 0xFFFFFFFF),
                                               (0x10, 7, 0xFFFFFFFF), (0x20, 5, 0xFFFFFFFF)])

# A file's or directory's PAX records besides its name: mostly none.  An xattr must survive every
# copy (flatten, copy-up) and every chown and chmod after it, and one a later listing of the
# name leaves out is gone; a time must be the same on every path.
def _meta(xattrs):
    return st.tuples(st.lists(st.sampled_from(xattrs), max_size=2, unique_by=lambda x: x[0]),
                     st.sampled_from([None] * 6 + MTIMES), st.integers(0, 2), st.sampled_from([()] * 10 + PAX_OWNERS)).map(
        lambda t: () if t[2] else tuple([("SCHILY.xattr." + k, v) for k, v in t[0]] + ([("mtime", t[1])] if t[1] else [])
                                        + list(t[3])))


# an owner in PAX records (the header's own a decoy): past the 2^21 that 7 octal digits hold,
# and past 2^24, as writers put them when the header cannot hold them (or always, as Go may)
PAX_OWNERS = [(("uid", "2097152"),), (("gid", "16777216"),), (("uid", "4000000000"), ("gid", "2097153"))]


meta = _meta(XATTRS)


def _with_libarchive(records):
    """Now and then an xattr in libarchive's form (bsdtar writes it beside the SCHILY one):
    alone, set under its name, or with a SCHILY twin of the same value, set once."""
    return st.tuples(st.just(records), st.sampled_from([()] * 10 + [
        (("LIBARCHIVE.xattr.user.lib", "MQ=="),),
        (("SCHILY.xattr.user.lib", b"1"), ("LIBARCHIVE.xattr.user.lib", "MQ==")),
        (("LIBARCHIVE.xattr.user.%C3%A9", "Mg=="),),
        # overlayfs's own, in libarchive's form: dropped as the SCHILY ones are
        (("LIBARCHIVE.xattr.trusted.overlay.whiteout", ""),)])).map(lambda t: t[0] + t[1])


# overlayfs's own xattrs, as a layer may carry them: meaningless on every path (dropped), where
# kept they would make a directory opaque, a file a whiteout or a redirect in an overlay mount, or
# (user.overlay.*) in nobody's (umoci sets them: the paths' stacks alone draw them)
OVERLAY_XATTRS = [("trusted.overlay.opaque", b"y"), ("user.overlay.opaque", b"y"), ("trusted.overlay.whiteout", b""),
                  ("user.overlay.redirect", b"/a"), ("trusted.overlay.overlay.opaque", b"y"),
                  # since Linux 6.7 a directory marked "x" makes each empty file in it marked a whiteout
                  # (an xwhiteout), and a metacopy file takes its data from the layer below
                  ("trusted.overlay.opaque", b"x"), ("user.overlay.whiteout", b""), ("trusted.overlay.metacopy", b"")]
# a file's, in the paths' stacks (umoci reads the SCHILY records alone: CONFORMANCE.md)
file_meta = _meta(XATTRS + OVERLAY_XATTRS).flatmap(_with_libarchive)
# a directory's: a default ACL too (umoci's reading of one differs on purpose: CONFORMANCE.md)
dir_meta = _meta(XATTRS + OVERLAY_XATTRS + [("system.posix_acl_default", DEFAULT_ACL)])
# a symlink's, a fifo's, a device node's: times, and the xattrs such inodes take or refuse
# (user.* and ACLs on a symlink: skipped by lamina, on every path; umoci refuses the layer)
special_meta = _meta([x for x in XATTRS if x[0] != "security.capability"])


# A file's data: mostly a byte or two (shared by files of differing metadata, which the store's
# dedup must keep apart); now and then exactly one block (no padding after it), rarely 1 MiB + 1
# (past every 1 MiB buffer and chunk of the readers, copies and hashes by one byte; one in 14
# doubled CI's run of the fuzzers)
CONTENTS = [b"", b"1", b"22"] * 12 + [b"5" * 512] * 3 + [b"6" * (1 << 20) + b"+"]
# A sparse file's (size, data segments): data then a trailing hole; a file that ends in data; one
# of nothing but a hole; a map of many regions (an old GNU header holds 4, its extension blocks 21)
SPARSE_LAYOUTS = [(16384, [(0, b"s" * 5), (8192, b"t" * 3)]), (16384, [(16381, b"end")]), (8192, []),
                  (65536, [(k * 2048, b"%02d" % k) for k in range(30)])]


def ops(host, dir_meta=dir_meta, meta=file_meta):
    return st.one_of(
        st.tuples(st.just("file"), names, st.sampled_from(CONTENTS), st.sampled_from([0o644, 0o600, 0o4755]),
                  owners, meta),
        # now and then the root: its mode, owner, xattrs and time are the last listing's
        st.tuples(st.just("dir"), st.tuples(names, st.sampled_from([None] * 6 + [".", "./", "/"])).map(lambda t: t[1] or t[0]),
                  st.sampled_from([0o755, 0o700, 0o555, 0o1777, 0o2775]), owners, dir_meta),
        # a symlink's owner is lchown's: a chown that follows the link changes its target (or the host's)
        st.tuples(st.just("symlink"), names, symlink_targets(host), owners, special_meta),
        # a hardlink's own mode, owner, xattrs and time mean nothing (the target's are the inode's),
        # on every path and to umoci
        # (stacks() points most at an entry written before them; now and then one names a whiteout or
        # an opaque marker: there is no such file on any path)
        st.tuples(st.just("hardlink"), names, st.tuples(names, st.sampled_from([None] * 8 + ["whiteout", "opaque"])).map(
            lambda t: _marker_name(t[1], t[0]) if t[1] else t[0]),
                  owners, st.sampled_from([0o644, 0o644, 0o600, 0o4755]), meta),
        st.tuples(st.just("fifo"), names, owners, st.sampled_from([0o644, 0o600, 0o2755]), special_meta),
        # a file with holes, in each GNU sparse format (umoci reads the PAX ones; it refuses type S)
        st.tuples(st.just("sparse"), short_paths, st.sampled_from(sorted(SPARSE_BUILDERS)),
                  st.sampled_from([0, 0, 0, 1, 2, 3])),
        st.tuples(st.just("node"), names, st.sampled_from([(b"3", 1, 3), (b"4", 7, 0)]), owners, special_meta),
        # a marker is its name, whatever the entry's type (mostly a file): its link, if any, means nothing
        st.tuples(st.just("whiteout"), names, marker_types, names),
        st.tuples(st.just("opaque"), names, marker_types, names),
    )


marker_types = st.sampled_from([b"0", b"0", b"0", b"0", b"5", b"1", b"2", b"6"])


def _marker_name(kind, path):
    """The entry name of a whiteout of ``path`` or of an opaque marker in ``path`` (as
    tarbuild.Tar writes them)."""
    if kind == "whiteout":
        d, _, base = path.rpartition("/")
        return (d + "/" if d else "") + ".wh." + base
    d = path.rstrip("/")
    return (d + "/" if d else "") + ".wh..wh..opq"


# Where the header's name and link come from: the header itself (mostly), a PAX record
# (path, linkpath) or a GNU long name / long link header; the header's own fields then hold
# a decoy that must be ignored.
carriers = st.sampled_from(["", "", "", "", "pax", "gnu"])
DECOY = "decoy/x"
# Directory times compare too: a listed directory keeps the time of the last listing (or the
# lower one's when a layer only writes into it); one no entry names has the time it was made
# (now), on every path.  Times that recent compare as everypath.MADE_NOW: paths run seconds apart.
DIR_MTIME = 1_550_000_000


def one_in(n):
    # (st.integers() leans to its ends: 0 of integers(0, 11) came in far more than one draw in twelve)
    return st.sampled_from([False] * (n - 1) + [True])


class Model:
    """What a stack has made so far, as the extractor resolves names (normalized lexically, ".."
    never above the root; a parent's symlinks followed inside the root, an entry's own last
    component not): enough to tell whether an entry would be refused, for stacks() to leave it
    out.  Approximate where it need not be exact: a whiteout or opaque marker hides what this
    layer wrote too (a valid stack then only loses a few draws)."""

    def __init__(self):
        self.nodes = {}  # normalized path: "dir", "file" (any non-directory) or ("symlink", target)

    @staticmethod
    def norm(path):
        out = []
        for c in path.split("/"):
            if c == "..":
                out = out[:-1]
            elif c not in ("", "."):
                out.append(c)
        return "/".join(out)

    def resolve(self, path, create=False, depth=0):
        """The real directory ``path`` names, or the refusal: "notdir", "dangling" (a symlink
        to nothing on the way), "loop"; "missing" for a missing component (made when
        ``create``)."""
        parts, done = self.norm(path).split("/") if self.norm(path) else [], ""
        for i, c in enumerate(parts):
            here = done + "/" + c if done else c
            node = self.nodes.get(here)
            if node is None:
                if not create:
                    return "missing"
                self.nodes[here] = "dir"
            elif node == "file":
                return "notdir"
            elif node != "dir":
                if depth > 40:
                    return "loop"
                target = node[1] if node[1].startswith("/") else done + "/" + node[1]
                real = self.resolve(target, False, depth + 1)
                if real == "missing":
                    return "dangling"
                if real in ("notdir", "dangling", "loop"):
                    return real
                return self.resolve("/".join([real] + parts[i + 1:]), create, depth + 1) if real else \
                    self.resolve("/".join(parts[i + 1:]) or ".", create, depth + 1)
            done = here
        return done

    def _place(self, path, create=False):
        """(real parent, base) of the entry ``path``, or the refusal."""
        path = self.norm(path)
        parent, _, base = path.rpartition("/")
        return (self.resolve(parent, create) if parent else ""), base

    def refused(self, op):
        """Why the extractor refuses ``op`` here (None: it takes it)."""
        kind, path = op[0], op[1]
        if not self.norm(path):
            return None if kind == "dir" else "root"
        real, base = self._place(path)
        if kind == "whiteout" and op[1].rpartition("/")[2] in ("", ".", ".."):
            return "whiteout"  # ".wh." of nothing, of "." or of "..": no entry's whiteout
        if kind in ("whiteout", "opaque"):
            return "loop" if real == "loop" else None
        if real in ("notdir", "dangling", "loop"):
            return real
        if kind == "hardlink":
            target = self.norm(op[2])
            if not target or ".wh." in target or target.startswith(self.norm(path) + "/"):
                return "target"
            treal, tbase = self._place(target)
            if treal in ("notdir", "dangling", "loop", "missing"):
                return "target"
            node = self.nodes.get(treal + "/" + tbase if treal else tbase)
            return "target" if node in (None, "dir") else None
        return None

    def apply(self, op):
        kind, path = op[0], op[1]
        if not self.norm(path):
            return
        if kind == "opaque":
            real = self.resolve(path)
            if real not in ("notdir", "dangling", "loop", "missing"):
                self._drop(real, keep=True)
            return
        real, base = self._place(path, create=kind != "whiteout")
        if real in ("notdir", "dangling", "loop", "missing"):
            return
        at = real + "/" + base if real else base
        if kind == "whiteout":
            self._drop(at)
        elif kind == "dir":
            if self.nodes.get(at) != "dir":
                self._drop(at)
                self.nodes[at] = "dir"
        else:
            self._drop(at)
            self.nodes[at] = ("symlink", op[2]) if kind == "symlink" else "file"

    def _drop(self, at, keep=False):
        for k in [k for k in self.nodes if k.startswith(at + "/") or (k == at and not keep)]:
            del self.nodes[k]

    def files(self):
        return sorted(k for k, v in self.nodes.items() if v != "dir")


def admitted(draw, model, op):
    """``op`` as the extractor takes it after what ``model`` holds (a hardlink to nothing aimed
    at a file there instead), applied to ``model``; None where it would be refused."""
    if op[0] == "hardlink" and model.refused(op) == "target" and model.files():
        op = op[:2] + (draw(st.sampled_from(model.files())),) + op[3:]
    if model.refused(op):
        return None
    model.apply(op)
    return op


def leave_out_refused(draw, stack):
    """``stack`` less the entries the extractor would refuse (admitted()), but for one stack in
    eight, which every path must refuse alike where it does."""
    if draw(one_in(8)):
        return stack
    model = Model()
    return [[(op, carrier) for op, carrier in ((admitted(draw, model, op), carrier) for op, carrier in layer)
             if op is not None] for layer in stack]


@st.composite
def stacks(draw, host, ops=ops, layers=5, entries=7):
    """Up to ``layers`` layers of up to ``entries`` entries of ``ops``.  Three hardlinks in four
    name an entry written before them (in their layer or below), and three entries in four
    under a file (a fifo, a node ...) written before are left out: drawn blind, nearly every
    stack was refused for one or the other.

    Drawn blind, the names of two entries rarely meet either: one entry in four takes the name
    of one written before (a file replaced by a dir, a fifo by a file, a hardlinked file
    whited out, an opaque directory made anew as a symlink), now and then a name under a
    symlink written before (written through: it points at a directory, a file, nothing or out
    of the root), and a symlink in four points at a directory written before.  A layer may
    be empty (an empty tar), or hold whiteouts of and opaque markers in what lower layers
    wrote, and nothing else.

    What the extractor would refuse (an entry under a file, through a dangling symlink or a
    loop of them, a hardlink to nothing or to a directory) is left out as Model tells it, a
    hardlink aimed at a file there instead, but in one stack in eight, drawn as it comes."""
    drawn = draw(st.lists(st.lists(st.tuples(ops(host), carriers), min_size=1, max_size=entries),
                          min_size=1, max_size=layers))
    written, files, dirs, symlinks, hardlinks, stack = [], set(), [], [], [], []
    # one stack in eight as drawn, refusals and all (every path must refuse it alike); the rest
    # leave out what the extractor would refuse (Model) and aim a hardlink that would name
    # nothing at a file there: drawn blind, two stacks in three were refused, and each refusal
    # ended its stack at that entry
    model = None if draw(one_in(8)) else Model()
    for layer in drawn:
        stack.append([])
        if draw(one_in(12)):
            continue
        if written and draw(one_in(8)):
            layer = [((draw(st.sampled_from(["whiteout", "whiteout", "opaque"])), draw(st.sampled_from(written + dirs)),
                       draw(marker_types), "a"), "") for _ in layer]
        for op, carrier in layer:
            kind, path = op[0], op[1]
            if kind != "sparse" and written + dirs and draw(one_in(4)):
                path = draw(st.sampled_from(written + dirs))
                op = (kind, path) + op[2:]
            elif kind != "sparse" and symlinks and draw(one_in(8)):
                path = draw(st.sampled_from(symlinks)) + "/" + draw(st.sampled_from(NAMES + ODD))
                op = (kind, path) + op[2:]
            if kind == "symlink" and dirs and draw(one_in(4)):
                op = op[:2] + (draw(st.sampled_from(["", "/"])) + draw(st.sampled_from(dirs)).strip("/"),) + op[3:]
            if any(path.startswith(f + "/") for f in files) and draw(st.integers(0, 3)):
                continue
            if kind == "hardlink" and written and ".wh." not in op[2] and draw(st.integers(0, 3)):
                # one in three a hardlink written before, if any: chains across layers
                op = op[:2] + (draw(st.sampled_from(hardlinks if hardlinks and draw(one_in(3)) else written)),) + op[3:]
            if model is not None:
                op = admitted(draw, model, op)
                if op is None:
                    continue
            if kind not in ("dir", "whiteout", "opaque"):
                written.append(path)
            elif kind == "dir" and path.strip("./"):
                dirs.append(path)
            if kind == "symlink":
                symlinks.append(path)
            elif kind == "hardlink":
                hardlinks.append(path)
            if kind in ("dir", "symlink", "whiteout"):
                files.discard(path)
            elif kind != "opaque":
                files.add(path)
            stack[-1].append((op, carrier))
    return stack


# Deep stacks (deep_stacks()): one stack in DEEP_SHARE of test_lamina_paths_agree's and
# test_lamina_agrees_with_umoci's (LAMINA_FUZZ_DEEP=1 for nothing but them)
DEEP_SHARE = float(os.environ.get("LAMINA_FUZZ_DEEP", "0.2"))
# ... and of the costlier fuzzers' (test_fuzz_rootless.py's nobody processes, the compact store's
# rebuilds, where a deep stack costs several shallow ones): one in ten, of 9 or 10 layers and with
# no neighbour image, which keeps their CI time near what it was without them
DEEP_SHARE_LIGHT = float(os.environ.get("LAMINA_FUZZ_DEEP", "0.1"))
DEEP_LAYERS_LIGHT = (9, 10)


def chance(p):
    """True one draw in 1 / ``p`` (st.floats(0, 1) < p leans to 0: it came out below 0.05 in
    nearly three draws in ten, below 0.2 in a third)."""
    if p <= 0 or p >= 1:
        return st.just(p >= 1)
    return one_in(max(1, round(1 / p)))


# held_stacks(): one stack in HELD_SHARE of the rest (LAMINA_FUZZ_HELD)
HELD_SHARE = float(os.environ.get("LAMINA_FUZZ_HELD", "0.125"))


def deep_light():
    return chance(DEEP_SHARE_LIGHT)
deep_names = st.lists(st.sampled_from(NAMES), min_size=1, max_size=4).map("/".join)
# a directory of the bottom layers that an upper layer implies: half of them with xattrs (an ACL,
# a default ACL ...) besides an owner and a mode of their own, which the implied copy must take
def _rich_meta(xattrs):
    return st.lists(st.sampled_from(xattrs), min_size=1, max_size=3, unique_by=lambda x: x[0]).map(
        lambda xs: tuple(("SCHILY.xattr." + k, v) for k, v in xs))


rich_dir_meta = _rich_meta(XATTRS + OVERLAY_XATTRS + [("system.posix_acl_default", DEFAULT_ACL)])


@st.composite
def deep_stacks(draw, host, ops=ops, dir_meta=rich_dir_meta, layers=(8, 12)):
    """8 to 12 small layers (from the 9th up, the layers below are many enough for the
    extractor's cache of lower directories, _below_dir), most of whose entries lie under what
    a layer below wrote: under a directory (with its own metadata), a file, a symlink, a
    whiteout, an opaque directory, a few levels down, so that a layer implies directories
    (a/b/c/f with no a/ nor a/b/ entry: made early in the overlay format and the store, before
    the layers below are known), some of which an entry later in the same layer names, replaces,
    whites out or makes opaque; hardlinks mostly to files written layers below, through those
    implied directories; and the upper layers small beside the ones below (the dir unpack takes
    them top-down)."""
    count = draw(st.integers(*layers))
    written, dirs, files = [], [], []  # by the layers below (and this one, as it goes)
    made = {}  # path: what the last entry there made ("dir", "file" ...)
    stack = []
    for li in range(count):
        layer = []
        size = draw(st.integers(3, 8)) if li < 2 else draw(st.sampled_from([0, 1, 1, 2, 2, 3]))
        for _ in range(size):
            op, carrier = draw(ops(host)), draw(carriers)
            kind = op[0]
            if kind == "sparse":
                layer.append((op, carrier))
                made[op[1]] = "file"
                continue
            if li < 2 and kind not in ("dir", "file", "symlink") and not draw(one_in(3)):
                continue  # the bottom layers: mostly the directories, files and symlinks the rest go under
            where = draw(st.sampled_from(["new", "under", "under", "under", "same"]))
            # mostly under a directory or a symlink to one (the implied directory is then elsewhere:
            # made early, it moves); one under a file (refused by every path) ends the stack
            pool = draw(st.sampled_from(["dirs"] * 3 + ["links"] * 2 + ["any"]))
            pool = {"dirs": dirs, "links": [p for p, v in made.items() if v == "symlink-dir"]}.get(pool) or written + dirs
            base = draw(st.sampled_from(pool)) if pool else ""
            if where == "under" and base:
                path = base + "/" + draw(deep_names)
            elif where == "same" and base:
                path = base
            else:
                path = draw(deep_names)
            parts = path.split("/")
            if any(made.get("/".join(parts[:k])) not in (None, "dir", "symlink-dir") for k in range(1, len(parts))) \
                    and not draw(one_in(8)):
                continue  # under a file: refused by every path, which ends the stack (mostly left out)
            if kind == "dir" and li < 2 and draw(st.booleans()):
                op = ("dir", path, op[2], op[3], draw(dir_meta))
            else:
                op = (kind, path) + op[2:]
            files = [f for f in files if made.get(f) in ("file", "hardlink")]
            if kind == "hardlink" and files and not draw(one_in(8)):
                op = op[:2] + (draw(st.sampled_from(files)),) + op[3:]
            elif kind == "hardlink" and not draw(one_in(8)):
                op = ("file", path, b"1", op[4], op[3], op[5])
            if kind == "symlink" and dirs and not draw(one_in(4)):
                # at a directory, by its absolute or its relative name
                up = draw(st.sampled_from(["/", "../" * (len(parts) - 1)]))
                op = op[:2] + (up + draw(st.sampled_from(dirs)),) + op[3:]
            layer.append((op, carrier))
            implied = path.split("/")[:-1]
            if li and len(implied) > 1 and draw(one_in(3)):
                # later in the layer, an entry at a directory the entry above implied
                at = "/".join(implied[:draw(st.integers(1, len(implied)))])
                then = draw(st.sampled_from(["dir", "dir", "file", "symlink", "whiteout", "opaque", "inside"]))
                if then == "dir":
                    extra = ("dir", at, draw(st.sampled_from([0o755, 0o700, 0o2775])), draw(owners), draw(dir_meta))
                elif then == "file":
                    extra = ("file", at, b"1", 0o644, (0, 0), ())
                elif then == "symlink":
                    extra = ("symlink", at, draw(st.sampled_from(dirs + [".", "/", host]) if dirs else st.just(".")),
                             (0, 0), ())
                elif then == "inside":
                    extra = ("file", at + "/" + draw(st.sampled_from(NAMES)), b"22", 0o600, draw(owners), ())
                else:
                    extra = (then, at, draw(marker_types), "a")
                layer.append((extra, ""))
            for op, _ in layer[-2:]:
                if op[0] == "dir":
                    dirs.append(op[1].strip("/"))
                elif op[0] in ("file", "hardlink", "symlink", "fifo", "node"):
                    written.append(op[1])
                    if op[0] in ("file", "hardlink"):
                        files.append(op[1])
                if op[0] in ("dir", "file", "hardlink", "symlink", "fifo", "node"):
                    made[op[1].strip("/")] = op[0] + ("-dir" if op[0] == "symlink" and op[2].lstrip("./") in dirs else "")
                elif op[0] == "whiteout":
                    made = {k: v for k, v in made.items() if k != op[1] and not k.startswith(op[1] + "/")}
        stack.append(layer)
    return leave_out_refused(draw, stack)


# Held whiteouts (held_stacks()): a layer that lists a directory and then whites out names in
# it (``a/`` then ``a/.wh.x``) before anything else needs the layers below holds the whiteouts
# until those are known (the store and the overlay format extract layers side by side), then
# applies them in layer order at the first entry that touches their names or needs the layers
# below, or at the layer's end
HELD_DIRS = ["a", "a/d", "b"]
HELD_NAMES = ["x", "y", "d", "s", "l" * 255]


@st.composite
def held_stacks(draw, host, dir_meta=rich_dir_meta, meta=file_meta):
    """A bottom layer of directories (with xattrs, ACLs, owners of their own: copied up by
    what the upper layers write under them), files, hardlinks and symlinks under HELD_DIRS; up
    to two small layers over it (files replaced, whiteouts, a directory made a symlink); then one
    or two held layers: each lists a directory, whites out 1 to 3 names in it (some there below,
    some not), then writes what touches them: a hardlink to a lower file (the whited-out one
    too: refused by every path), the whited-out name made again (a file, a directory with a
    file in it, a symlink), an opaque marker in the directory, a whiteout of the directory, a
    file in its place, a file under a directory only implied, a symlink to it and entries
    through that, or a whiteout of the same name again."""
    files, stack = [], []  # files: the names a hardlink may aim at (written below)

    def path_in(d):
        return d + "/" + draw(st.sampled_from(HELD_NAMES))

    bottom = []
    for d in HELD_DIRS:
        if draw(st.integers(0, 3)):
            bottom.append(("dir", d, draw(st.sampled_from([0o755, 0o700, 0o2775, 0o1777])), draw(owners),
                           draw(dir_meta) if draw(st.booleans()) else ()))
    for _ in range(draw(st.integers(2, 7))):
        p = path_in(draw(st.sampled_from(HELD_DIRS)))
        kind = draw(st.sampled_from(["file", "file", "file", "hardlink", "symlink", "dir"]))
        if kind == "hardlink" and files:
            bottom.append(("hardlink", p, draw(st.sampled_from(files)), (0, 0), 0o644, ()))
        elif kind == "symlink":
            bottom.append(("symlink", p, draw(st.sampled_from(["../b", "/a/d", ".", "x", "/", host])), (0, 0), ()))
        elif kind == "dir":
            bottom.append(("dir", p, 0o755, draw(owners), draw(dir_meta) if draw(one_in(3)) else ()))
        else:
            bottom.append(("file", p, draw(st.sampled_from([b"1", b"22", b""])), draw(st.sampled_from([0o644, 0o600, 0o4755])),
                           draw(owners), draw(meta)))
        if bottom[-1][0] in ("file", "hardlink"):
            files.append(p)
    stack.append(bottom)
    for _ in range(draw(st.integers(0, 2))):
        middle = []
        for _ in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["file", "whiteout", "symlink-dir", "dir"]))
            if kind == "file":
                p = path_in(draw(st.sampled_from(HELD_DIRS)))
                middle.append(("file", p, b"m", 0o644, (0, 0), ()))
                files.append(p)
            elif kind == "whiteout":
                middle.append(("whiteout", draw(st.sampled_from(files + HELD_DIRS)), b"0", "a"))
            elif kind == "symlink-dir":  # a directory the held layer lists made a symlink below it
                middle.append(("symlink", draw(st.sampled_from(HELD_DIRS)), draw(st.sampled_from(["b", "/b", "."])),
                               (0, 0), ()))
            else:
                middle.append(("dir", draw(st.sampled_from(HELD_DIRS)), 0o750, (0, 42), ()))
        stack.append(middle)
    for _ in range(draw(st.integers(1, 2))):
        d = draw(st.sampled_from(HELD_DIRS + ["l"]))
        layer = []
        if draw(one_in(4)):
            # first an entry under a lower directory the layer does not list (made early: its
            # metadata comes once the layers below are known), or under a lower symlink there
            # (the directory made early moves: the layer is read again, waiting)
            layer.append(("file", path_in(draw(st.sampled_from(HELD_DIRS))) + draw(st.sampled_from(["", "/n"])),
                          b"p", 0o644, (0, 0), ()))
        if draw(st.integers(0, 5)):  # (else: not listed, the whiteouts wait)
            layer.append(("dir", d, 0o755, (0, 0), draw(dir_meta) if draw(one_in(4)) else ()))
        held = [path_in(d) for _ in range(draw(st.integers(1, 3)))]
        layer += [("whiteout", p, draw(marker_types), "a") for p in held]
        for _ in range(draw(st.integers(0, 5))):
            then = draw(st.sampled_from(["link", "link", "again", "again", "again-dir", "again-symlink", "opaque",
                                         "whiteout-dir", "file-at-dir", "implied", "inside", "through", "twice",
                                         "elsewhere", "another-dir", "below-symlink"]))
            name = draw(st.sampled_from(held))
            if then == "link" and files:
                layer.append(("hardlink", draw(st.sampled_from(["h", path_in(d)])), draw(st.sampled_from(files)),
                              (0, 0), 0o644, ()))
            elif then == "again":
                layer.append(("file", name, b"up", 0o600, draw(owners), draw(meta)))
            elif then == "again-dir":
                layer += [("dir", name, 0o700, (0, 0), ()), ("file", name + "/f", b"f", 0o644, (0, 0), ())]
            elif then == "again-symlink":
                layer.append(("symlink", name, draw(st.sampled_from(["/b", "..", "nowhere"])), (0, 0), ()))
            elif then == "opaque":
                layer.append(("opaque", d, draw(marker_types), "a"))
            elif then == "whiteout-dir":
                layer.append(("whiteout", d, b"0", "a"))
            elif then == "file-at-dir":
                layer.append(("file", d, b"now a file", 0o644, (0, 0), ()))
            elif then == "implied":
                layer.append(("file", draw(st.sampled_from(["m/y/f", d + "/n/f", "b/d/f"])), b"i", 0o644, (0, 0), ()))
            elif then == "inside":
                layer.append(("file", path_in(d), b"in", 0o644, (0, 0), ()))
            elif then == "through":
                leaf = name.rpartition("/")[2]
                layer += [("symlink", "t", "/" + d, (0, 0), ()),
                          ("whiteout", "t/" + leaf, b"0", "a") if draw(st.booleans()) else
                          ("file", "t/" + leaf, b"t", 0o644, (0, 0), ())]
            elif then == "twice":
                layer.append(("whiteout", name, b"0", "a"))
            elif then == "another-dir":  # a second run of held whiteouts, in another directory
                other = draw(st.sampled_from(HELD_DIRS))
                layer += [("dir", other, 0o755, (0, 0), ()), ("whiteout", path_in(other), b"0", "a")]
            elif then == "below-symlink":  # under a name that may be a symlink below
                layer.append(("file", path_in(draw(st.sampled_from(HELD_DIRS))) + "/" + draw(st.sampled_from(HELD_NAMES[:4])),
                              b"q", 0o644, (0, 0), ()))
            else:
                layer.append(("file", "e/" + draw(st.sampled_from(NAMES)), b"e", 0o644, (0, 0), ()))
        stack.append(layer)
    return leave_out_refused(draw, [[(op, draw(carriers) if op[0] not in ("whiteout", "opaque") else "") for op in layer]
                                    for layer in stack])


def _altered(op, how):
    """A file entry ``op`` with one piece of its metadata changed, by ``how``: its permission
    bits, its group, its time by a nanosecond (or its PAX time dropped), an xattr's value (of
    the same length), a capability (added or taken off), an access ACL (added, or one named
    user's permissions changed: the same length, the same mask)."""
    kind, path, data, mode, owner, records = op
    records = dict(records)
    if how == "mode":
        mode = {0o644: 0o600, 0o600: 0o644}.get(mode, mode & 0o777)
    elif how == "group":
        owner = (owner[0], 42 if owner[1] != 42 else 0)
    elif how == "mtime":
        if "mtime" in records:
            del records["mtime"]
        else:
            records["mtime"] = "1600000000.000000001"  # tarbuild's header time and a nanosecond
    elif how == "capability":
        if records.pop("SCHILY.xattr.security.capability", None) is None:
            records["SCHILY.xattr.security.capability"] = CAPABILITY
    elif how == "acl":
        records["SCHILY.xattr.system.posix_acl_access"] = ACL_RW if records.get(
            "SCHILY.xattr.system.posix_acl_access") == ACL else ACL
    else:
        records["SCHILY.xattr.user.fuzz"] = b"2" if records.get("SCHILY.xattr.user.fuzz") != b"2" else b"1"
    return (kind, path, data, mode, owner, tuple(records.items()))


@st.composite
def neighbours(draw, layers):
    """``layers`` with every file entry's metadata changed in one respect (the data, every other
    entry and every name as they are): an image a store holds beside the stack's, whose files
    the dedup pass and the extractor's links to objects must never take for the stack's."""
    return [[((_altered(op, draw(st.sampled_from(["mode", "group", "mtime", "xattr", "capability", "acl"])))
               if op[0] == "file" else op),
              carrier) for op, carrier in layer] for layer in layers]


def _carry(t, op, carrier, mtime=MTIME):
    """Write the records that carry ``op``'s name (and link) by ``carrier``, and its other PAX
    records (in the same header: of two consecutive PAX headers only the last counts); returns
    the op with the decoys the header then holds.  A name or link the header cannot hold goes
    in a PAX record.  "pax-full" also repeats in records what the header says (``mtime``: its
    time), as writers that put every field in PAX do."""
    kind = op[0]
    if kind in ("whiteout", "opaque"):  # (kind, path, type, link): written by its name
        kind, op = "marker", ("marker", _marker_name(kind, op[1]), op[3], op[2])
    records = dict(op[-1]) if kind in ("file", "dir", "symlink", "fifo", "node", "hardlink") else {}
    # (a sparse entry's size is its map's, in records of its own: a size record would lie)
    if carrier == "pax-full" and kind == "sparse":
        carrier = "pax"
    elif carrier == "pax-full":
        carrier = "pax"
        owner = {"file": 4, "dir": 3, "symlink": 3, "hardlink": 3, "fifo": 2, "node": 3}.get(kind)
        uid, gid = op[owner] if owner else (0, 0)
        # (a record the op has already, an owner past the header's reach, stays as it is)
        for key, value in (("uid", str(uid)), ("gid", str(gid)), ("mtime", f"{mtime}.000000000"),
                           ("size", str(len(op[2])) if kind == "file" else "0"), ("hdrcharset", "BINARY")):
            records.setdefault(key, value)
    link = kind in ("symlink", "hardlink") or (kind == "marker" and op[3] in (b"1", b"2"))
    if not carrier and any(len(n.encode("utf-8", "surrogateescape")) > 100 for n in (op[1:3] if link else op[1:2])):
        carrier = "pax"
    # an old GNU sparse entry's name can be carried like a file's (the PAX sparse formats carry
    # their map in a PAX header of their own)
    if not carrier or (kind == "sparse" and op[2] != "oldgnu-S"):
        if records:
            t.pax(records)
        return op
    if carrier == "pax":
        records["path"] = op[1]
        if link:
            records["linkpath"] = op[2]
        t.pax(records)
    else:
        if records:
            t.pax(records)
        if link:
            t.gnu_longlink(op[2])
        t.gnu_longname(op[1] + ("/" if kind == "dir" else ""))
    return (kind, DECOY, DECOY) + op[3:] if link else (kind, DECOY) + op[2:]


# what umoci 0.4.7 reads: it refuses a zstd layer by its media type
UMOCI_ENCODINGS = ("plain", "gzip-members")


def encodings(count, others=ENCODINGS[1:]):
    """How each of ``count`` layers ships: mostly one gzip member; a layer in eight one of
    ``others`` (ocibuild.Encoded: plain, gzip members or zstd frames cut anywhere, skippable
    frames)."""
    return st.lists(st.tuples(st.sampled_from(["gzip"] * 7 + ["other"]), st.sampled_from(others),
                              st.lists(st.integers(1, 999), max_size=4)).map(
        lambda t: ("gzip", ()) if t[0] == "gzip" else t[1:]), min_size=count, max_size=count)


def build(layers, encoded=None, spelled=None):
    """The layer tars of ``layers`` (``encoded``: encodings()'s draw, how each ships;
    ``spelled``: tar_spellings()'s draw, how each layer's headers are written and how it ends)."""
    tars = _build(layers, spelled)
    return [Encoded(t, how, cuts) for t, (how, cuts) in zip(tars, encoded)] if encoded else tars


def _build(layers, spelled=None):
    tars = []
    for li, layer in enumerate(layers):
        t = Tar()
        fmt, ending = spelled[li] if spelled else ("ustar", "two")
        for oi, (op, carrier) in enumerate(layer):
            mtime = DIR_MTIME + 100 * li + oi  # each listing its own: which one a directory keeps shows
            op = _carry(t, op, carrier, mtime if op[0] == "dir" else MTIME)
            kind, path = op[0], op[1]
            # a v7 header has no device numbers (nor uname, gname, prefix): a node stays ustar
            kw = {"fmt": ("ustar", "gnu", "v7")[oi % 3] if fmt == "mixed" else fmt}
            kw["fmt"] = "ustar" if kw["fmt"] == "v7" and kind == "node" else kw["fmt"]
            if kind == "file":
                t.file(path, op[2], mode=op[3], uid=op[4][0], gid=op[4][1], **kw)
            elif kind == "dir":
                t.dir(path, mode=op[2], uid=op[3][0], gid=op[3][1], mtime=mtime, **kw)
            elif kind == "symlink":
                t.symlink(path, op[2], uid=op[3][0], gid=op[3][1], **kw)
            elif kind == "hardlink":
                t.hardlink(path, op[2], uid=op[3][0], gid=op[3][1], mode=op[4], **kw)
            elif kind == "fifo":
                t.fifo(path, uid=op[2][0], gid=op[2][1], mode=op[3], **kw)
            elif kind == "sparse":
                t.raw(SPARSE_BUILDERS[op[2]](path, *SPARSE_LAYOUTS[op[3]]))
            elif kind == "node":
                t.entry(path, b"", type=op[2][0], devmajor=op[2][1], devminor=op[2][2], uid=op[3][0], gid=op[3][1], **kw)
            else:  # a whiteout or opaque marker, by its name
                t.entry(path, b"", type=op[3], linkname=op[2] if op[3] in (b"1", b"2") else "", **kw)
        tars.append(t.bytes(end=False) + ENDINGS[ending](t.buf.tell()))
    return tars


# How a layer's tar may end: every reader stops at the first zero block, so one alone, none at
# all (the stream ends at a header's place), a record's worth of them (GNU tar's blocking
# factor) or bytes that are no tar after them must all give the layer's entries, and a compact
# store must give back every byte of it (its diffID hashes them all)
ENDINGS = {
    "two": lambda at: bytes(1024),
    "one": lambda at: bytes(512),
    "none": lambda at: b"",
    "record": lambda at: bytes(1024 + (-(at + 1024)) % 10240),
    "garbage": lambda at: bytes(1024) + b"no tar \xff\x00 at all\n" * 40,
    # an entry after a lone zero block: no reader goes on to it
    "lone": lambda at: bytes(512) + Tar().file("after-the-end", b"x").bytes(end=False) + b"\x01",
}


class Sandbox:
    """A fresh tmp dir with a Guard (sentinel outside the work dir) per example;
    the host directory the layers aim at is checked as well."""

    def __init__(self, host):
        self.host = host
        self.host_before = fingerprint(host)
        # two private levels above the case: the Guard watches them for strays
        self.base = pathlib.Path(tempfile.mkdtemp(prefix="lamina-fuzz-"))
        top = self.base / "up" / "case"
        top.mkdir(parents=True)
        self.guard = Guard(top)

    def close(self):
        self.guard.check()
        assert fingerprint(self.host) == self.host_before, "the host directory the layers point at was changed"
        shutil.rmtree(self.base)


@pytest.fixture(scope="module")
def host():
    """An existing host directory that layers aim symlinks at (outside every
    work dir); checked after each example besides the Guard's own sentinel."""
    require_root()
    require_tool("umoci")
    d = pathlib.Path(tempfile.mkdtemp(prefix="lamina-fuzz-host-", dir="/var/tmp"))
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_bytes(b"host\n")
    os.chmod(d / "sub", 0o750)
    yield d
    shutil.rmtree(d)


def fingerprint(d):
    """Every name under ``d`` with its mode, owner, time and link count: a host directory
    the layers point at must come out of a run the same."""
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        for n in sorted(dirnames + filenames) + ["."]:
            st_ = os.lstat(os.path.join(dirpath, n))
            out.append((dirpath, n, st_.st_mode, st_.st_uid, st_.st_gid, st_.st_mtime_ns, st_.st_nlink))
    return sorted(out)


@seed(20261203 + SEED)
@SETTINGS
@given(data=st.data())
def test_lamina_paths_agree(host, data):
    """Every path gives the same tree; a third of the stores take an image of the same files
    with other metadata (neighbours()) before or after the stack's, which dedup must keep apart;
    and a third check clean (fsck) after every path has used them.  The registry's three paths
    take one stack in four (LAMINA_FUZZ_REGISTRY=1: all) and compact-save one in three: each
    cost more than the dir, overlay and store paths together, which every stack takes."""
    from lamina.store import Store
    layers = data.draw(deep_stacks(str(host)) if data.draw(chance(DEEP_SHARE)) else
                       held_stacks(str(host)) if data.draw(chance(HELD_SHARE)) else stacks(str(host)))
    encoded = data.draw(encodings(len(layers)))
    if data.draw(one_in(8)):
        # one layer again on top, shipped as the same blob: one blob at two positions of one image
        # (its entries written over what they wrote, its whiteouts of what it made)
        k = data.draw(st.integers(0, len(layers) - 1))
        layers, encoded = layers + [layers[k]], encoded + [encoded[k]]
    tars = build(layers, encoded)
    # (a third each: a neighbour's load and fsck, which extracts every layer again to compare,
    # each cost more than the six paths of the stack)
    neighbour = build(data.draw(neighbours(layers))) if data.draw(one_in(3)) else None
    first = data.draw(st.booleans())
    check = data.draw(one_in(3))
    registry = REGISTRY or data.draw(one_in(4))
    paths = tuple(p for p in PATHS if registry or not p.startswith("registry-"))
    paths += ("compact-save",) if data.draw(one_in(3)) else ()
    paths += apply_paths(data)
    _count_case()
    box = Sandbox(host)
    since = int(time.time()) - 1
    try:
        results = {p: made_now(t, since) for p, t in run_paths(box.guard.dest, tars, paths,
                                                               dir_mtime=True, root=True, neighbour=neighbour,
                                                               neighbour_first=first).items()}
        context = describe(tars) + (f"\nneighbour image {'before' if first else 'after'} it:\n" + describe(neighbour)
                                    if neighbour else "")
        assert_agree(results, context=context)
        if check and os.path.isdir(os.path.join(box.guard.dest, "store", "snapshots")):
            report = Store(os.path.join(box.guard.dest, "store")).fsck()
            # (a refused image's dropped staging snapshots leave no objects: the refusal collects
            # them, test_store_fsck.py::test_fsck_is_clean_straight_after_a_refused_image)
            findings = report.findings
            assert findings == [], f"{context}\nfsck after every path: " + "; ".join(
                f"{f.severity}: {f.subject}: {f.message}" for f in findings)
    finally:
        box.close()


def _as_references(tree):
    """umoci makes a directory that no entry names with mkdir under its parent and sets a
    setgid parent's mode at once, so such a directory inherits the bit and the group (2755,
    the parent's gid).  GNU tar and bsdtar set directory modes at the end (0755, their own
    group) and lamina makes implied directories 0755 and its own on every path (CONFORMANCE.md).
    2755 is no mode the stacks draw: it marks exactly those directories."""
    if isinstance(tree, Exception):
        return tree
    entries = {p: (dataclasses.replace(e, mode=0o755, gid=0) if e.type == "dir" and e.mode == 0o2755 else e)
               for p, e in tree.entries.items()}
    return dataclasses.replace(tree, entries=entries)


def _blind_to_deliberate(tree):
    """``tree`` without two readings in which lamina differs from umoci on purpose
    (CONFORMANCE.md), for both trees: an xattr of no value (umoci sets the xattrs of Go's
    ``Header.Xattrs``, which leaves it out; docker, containerd, GNU tar and bsdtar set it,
    as lamina does), and the permission bits of an entry with an access ACL (umoci sets the
    ACL after the mode, which the ACL then rewrites; lamina keeps the header's mode, as
    docker and containerd: the ACL's value then differs too)."""
    if isinstance(tree, Exception):
        return tree

    def blind(e):
        xattrs = dict(x for x in e.xattrs if x[1])
        if "system.posix_acl_access" not in xattrs:
            return dataclasses.replace(e, xattrs=tuple(sorted(xattrs.items())))
        xattrs["system.posix_acl_access"] = b"(in step with the mode)"
        return dataclasses.replace(e, mode=e.mode & ~0o777, xattrs=tuple(sorted(xattrs.items())))
    return dataclasses.replace(tree, entries={p: blind(e) for p, e in tree.entries.items()})


@functools.lru_cache(maxsize=None)
def _time_range(d):
    """The first and last second a file under ``d`` can hold: the kernel clamps a time past
    them (ext4: 1901 and 2446)."""
    probe = os.path.join(d, ".time-probe")
    open(probe, "w").close()
    try:
        ends = []
        for t in (-(1 << 40), 1 << 40):  # seconds: 35,000 years either way
            os.utime(probe, (t, t))
            ends.append(os.lstat(probe).st_mtime_ns // 1_000_000_000)
        return tuple(ends)
    finally:
        os.unlink(probe)


def _blind_to_clamped(umoci, lamina, ends):
    """Both trees with the times of the entries whose header time the filesystem clamped (the
    time lamina's tree holds is one of ``ends``) taken out where umoci's differs: umoci sets a
    time as Go's nanoseconds since the epoch, which wrap before 1678 and after 2262, and leaves
    the time of the extraction for the year 1 (Go's zero time; CONFORMANCE.md)."""
    if isinstance(umoci, Exception) or isinstance(lamina, Exception):
        return umoci, lamina
    blind = {p for p, e in lamina.entries.items() if e.mtime in ends and p in umoci.entries
             and umoci.entries[p].mtime != e.mtime}

    def out(tree):
        return dataclasses.replace(tree, entries={p: (dataclasses.replace(e, mtime=None) if p in blind else e)
                                                  for p, e in tree.entries.items()})
    return out(umoci), out(lamina)


@seed(20261204 + SEED)
@SETTINGS
@given(data=st.data())
def test_lamina_agrees_with_umoci(host, data):
    """Where umoci accepts a stack, lamina's dir unpack gives umoci's tree.

    Deliberate differences are taken out (_as_references, _blind_to_deliberate)."""
    ops_ = functools.partial(ops, dir_meta=meta, meta=meta)
    layers = data.draw(deep_stacks(str(host), ops=ops_, dir_meta=_rich_meta(XATTRS))
                       if data.draw(chance(DEEP_SHARE)) else
                       held_stacks(str(host), dir_meta=_rich_meta(XATTRS), meta=meta) if data.draw(chance(HELD_SHARE)) else
                       stacks(str(host), ops=ops_))
    tars = build(layers, data.draw(encodings(len(layers), UMOCI_ENCODINGS)))
    _count_case()
    box = Sandbox(host)
    try:
        # (no default ACLs: umoci gives what they give to the directories no entry names,
        # lamina nothing; CONFORMANCE.md)
        # (directory times not compared: umoci leaves a listed directory the time of the
        # run once an entry makes an implied directory in it; CONFORMANCE.md)
        results = run_paths(box.guard.dest, tars, paths=("dir",))
        oracle, mine = _blind_to_clamped(_blind_to_deliberate(_as_references(umoci_tree(box.guard.dest, tars))),
                                         _blind_to_deliberate(results["dir"]), _time_range(os.path.dirname(box.base)))
        if not isinstance(oracle, Exception) and not isinstance(mine, Exception):
            assert_agree({"umoci": oracle, "lamina": mine}, context=describe(tars))
    finally:
        box.close()


def _layout_layers(layout):
    """The uncompressed layers of the one image of the OCI layout ``layout``, bottom first."""
    import gzip
    import json

    import zstandard

    def blob(digest):
        with open(os.path.join(layout, "blobs", *digest.split(":")), "rb") as f:
            return f.read()
    with open(os.path.join(layout, "index.json")) as f:
        manifest = json.loads(blob(json.load(f)["manifests"][0]["digest"]))
    out = []
    for desc in manifest["layers"]:
        data = blob(desc["digest"])
        if desc["mediaType"].endswith("gzip"):
            data = gzip.decompress(data)
        elif desc["mediaType"].endswith("zstd"):
            data = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(data)
        out.append(data)
    return out


@seed(20261205 + SEED)
# (half: test_lamina_paths_agree's compact-save rebuilds every layer of a third of its stacks too)
@settings(SETTINGS, max_examples=max(1, EXAMPLES // 2))
@given(data=st.data())
def test_a_compact_store_gives_back_every_layer_bit_exact(host, data):
    """Where a compact store (keep-blobs false) accepts a stack, each layer it rebuilds from
    the snapshot and its tar-split sidecar is the layer, byte for byte: the stacks' PAX and
    GNU records, sparse maps, hardlinks and device nodes all go through the sidecar's reader.
    Half the time the store holds an image of the same files with other metadata first
    (neighbours()): its layers must come back as they were too, neither image's files taken for
    the other's.  A copy to an OCI layout gives every layer back (its diffID), and fsck, which
    rebuilds every compact layer, finds nothing."""
    import hashlib

    import lamina.errors
    from everypath import TAG, write_image
    from lamina.store import Store
    from lamina.transports import copy
    # (one in ten a deep stack: its layers imply directories and hardlink files many layers
    # below, which the sidecar must name as the extractor did)
    deep = data.draw(deep_light())
    layers = data.draw(deep_stacks(str(host), layers=DEEP_LAYERS_LIGHT) if deep else
                       held_stacks(str(host)) if data.draw(chance(HELD_SHARE)) else stacks(str(host)))
    tars = build(layers, data.draw(encodings(len(layers))))
    neighbour = build(data.draw(neighbours(layers))) if not deep and data.draw(one_in(2)) else None
    _count_case()
    box = Sandbox(host)
    try:
        context = describe(tars) + ("\nneighbour image first:\n" + describe(neighbour) if neighbour else "")
        store = Store(os.path.join(box.guard.dest, "store"))
        store.set_config("keep-blobs", "false")
        images = [("x:1", tars)]
        if neighbour is not None:
            try:
                copy(f"oci:{write_image(os.path.join(box.guard.dest, 'neighbour'), neighbour)}:{TAG}", "n:1",
                     store=store)
                images.insert(0, ("n:1", neighbour))
            except lamina.errors.LaminaError:
                pass
        layout = write_image(os.path.join(box.guard.dest, "layout"), tars)
        try:
            copy(f"oci:{layout}:{TAG}", "x:1", store=store)
        except lamina.errors.LaminaError:
            return  # refused: whether every path refuses it too is test_lamina_paths_agree's
        for ref, layer_tars in images:
            image = store.resolve(ref)
            for i, tar in enumerate(layer_tars):
                assert not store.has_blob(image.layers[i].digest), "the compact store kept a blob"
                with store.layer_reader(image.layers[i], image.diff_ids[i], image.chain_ids[i]) as f:
                    rebuilt = f.read()
                assert rebuilt == tar, (f"{ref} layer {i} rebuilt {len(rebuilt)} bytes of {len(tar)}, first "
                                        f"difference at {next((k for k, (a, b) in enumerate(zip(rebuilt, tar)) if a != b), None)}\n"
                                        + context)
        out = os.path.join(box.guard.dest, "out")
        copy("x:1", f"oci:{out}:{TAG}", store=store)
        copied = _layout_layers(out)
        image = store.resolve("x:1")
        assert ["sha256:" + hashlib.sha256(t).hexdigest() for t in copied] == list(image.diff_ids), \
            f"the copy to an OCI layout changed a layer's diffID\n{context}"
        report = store.fsck()
        assert list(report.findings) == [], f"{context}\nfsck of the compact store: " + "; ".join(
            f"{f.severity}: {f.subject}: {f.message}" for f in report.findings)
    finally:
        box.close()


# test_one_stack_in_every_tar_spelling_gives_one_tree: how each spelling carries the names and
# links of the stack's entries (None: as stacks() drew it, per entry; "": in the header, PAX
# where it cannot hold them), each layer's headers written ustar, GNU, v7 or mixed (tar_spellings())
CARRIER_SPELLINGS = {"as-drawn": None, "headers": "", "pax": "pax", "pax-full": "pax-full", "gnu": "gnu"}
SPELLING_PATHS = ("dir", "overlay-mount", "store-copy", "store-mount")


def respelled(layers, carrier):
    return layers if carrier is None else [[(op, carrier) for op, _ in layer] for layer in layers]


def tar_spellings(count):
    """Each of ``count`` layers' header format (``mixed``: ustar, GNU and v7 in turn) and ENDINGS."""
    return st.lists(st.tuples(st.sampled_from(["ustar", "ustar", "gnu", "v7", "mixed"]), st.sampled_from(list(ENDINGS))),
                    min_size=count, max_size=count)


@seed(20261209 + SEED)
@settings(SETTINGS, max_examples=max(1, EXAMPLES // 8))  # (an eighth: two or three images of four paths each)
@given(data=st.data())
def test_one_stack_in_every_tar_spelling_gives_one_tree(host, data):
    """One stack written two or three ways (every name in the header, a PAX record or a GNU long
    name, or each entry its own way; headers ustar, GNU, v7 or mixed; the layer ended by two zero
    blocks, one, none, a record of them, or followed by bytes that are no tar or by an entry
    after a lone zero block) is one tree on every path, or refused by every spelling; and a
    compact store holding them all gives each layer back byte for byte and checks clean."""
    import hashlib

    import lamina.errors
    from everypath import TAG, write_image
    from lamina.store import Store
    from lamina.transports import copy
    layers = data.draw(stacks(str(host)))
    names = data.draw(st.lists(st.sampled_from(list(CARRIER_SPELLINGS)), min_size=2, max_size=3, unique=True))
    images = {n: build(respelled(layers, CARRIER_SPELLINGS[n]), data.draw(encodings(len(layers))),
                       data.draw(tar_spellings(len(layers)))) for n in names}
    paths = SPELLING_PATHS + (("registry-pull",) if data.draw(one_in(6)) else ())
    _count_case()
    box = Sandbox(host)
    since = int(time.time()) - 1
    try:
        context = "\n".join(f"{n}:\n{describe(tars)}" for n, tars in images.items())
        trees = {}
        for i, (n, tars) in enumerate(images.items()):
            work = os.path.join(box.guard.dest, f"spelling{i}")
            os.mkdir(work)
            results = {p: made_now(t, since) for p, t in run_paths(work, tars, paths, dir_mtime=True, root=True).items()}
            trees[n] = assert_agree(results, context=f"{n}\n{context}") or results["dir"]
        assert_agree(trees, context=context)
        # (the entries come in one order however spelled: the same one is refused, for one reason)
        assert len({type(t) for t in trees.values()}) == 1, f"{trees}\n{context}"
        store = Store(os.path.join(box.guard.dest, "compact"))
        store.set_config("keep-blobs", "false")
        for i, (n, tars) in enumerate(images.items()):
            try:
                copy(f"oci:{write_image(os.path.join(box.guard.dest, f'layout{i}'), tars)}:{TAG}", f"s{i}:1",
                     store=store)
            except lamina.errors.LaminaError:
                continue  # (every path refused it, above)
            image = store.resolve(f"s{i}:1")
            for li, tar in enumerate(tars):
                with store.layer_reader(image.layers[li], image.diff_ids[li], image.chain_ids[li]) as f:
                    rebuilt = f.read()
                assert "sha256:" + hashlib.sha256(rebuilt).hexdigest() == image.diff_ids[li] and rebuilt == tar, (
                    f"{n} layer {li} rebuilt {len(rebuilt)} bytes of {len(tar)}, first difference at "
                    f"{next((k for k, (a, b) in enumerate(zip(rebuilt, tar)) if a != b), min(len(rebuilt), len(tar)))}"
                    f"\n{context}")
        report = store.fsck()
        assert list(report.findings) == [], f"{context}\nfsck of the compact store: " + "; ".join(
            f"{f.severity}: {f.subject}: {f.message}" for f in report.findings)
    finally:
        box.close()


# rewrite_stacks(): the types a name goes through, a layer at a time, in the drawn order
REWRITE_TYPES = ["file", "dir", "symlink", "hardlink", "fifo", "node"]
REWRITE_NAMES = ["r", "d/r", "d/s"]


def _rewritten(kind, path, li, target):
    owner = (0, 0) if li % 2 else (1000, 1000)  # (an owner each layer changes: the chown shows)
    if kind == "file":
        return ("file", path, b"layer %d\n" % li, 0o644 if li % 2 else 0o600, owner, ())
    if kind == "dir":
        return ("dir", path, 0o755 if li % 2 else 0o700, owner, ())
    if kind == "symlink":
        return ("symlink", path, target, owner, ())
    if kind == "hardlink":
        return ("hardlink", path, target, owner, 0o644, ())
    if kind == "fifo":
        return ("fifo", path, owner, 0o644, ())
    return ("node", path, (b"3", 1, 3), owner, ())


@st.composite
def rewrite_stacks(draw):
    """3 to 8 layers, each rewriting some of a few names in place as the next type of a drawn
    cycle (file -> dir -> symlink -> hardlink -> fifo -> node -> file, in some order), a
    directory's child written now and then, with whiteouts of the names and opaque markers in
    their directory (and in a name while it is a directory) between and before the rewrites."""
    cycle = draw(st.permutations(REWRITE_TYPES))
    at = {n: draw(st.integers(0, len(cycle) - 1)) for n in REWRITE_NAMES}
    # the hardlinks' target: a file of the bottom layer no rewrite touches
    stack = [[(("dir", "d", 0o755, (0, 0), ()), ""), (("file", "base", b"base\n", 0o644, (0, 0), ()), "")]]
    for li in range(1, draw(st.integers(3, 8))):
        layer = []
        for n in draw(st.lists(st.sampled_from(REWRITE_NAMES), min_size=1, max_size=4)):
            how = draw(st.sampled_from(["next"] * 4 + ["whiteout", "opaque", "opaque-self", "child"]))
            if how == "whiteout":
                layer.append((("whiteout", n, b"0", "a"), ""))
            elif how == "opaque":
                layer.append((("opaque", n.rpartition("/")[0] or ".", b"0", "a"), ""))
            elif how in ("opaque-self", "child") and cycle[at[n]] == "dir":
                layer.append(((("opaque", n, b"0", "a") if how == "opaque-self" else
                              _rewritten("file", n + "/c", li, "")), ""))
            else:
                at[n] = (at[n] + 1) % len(cycle)
                kind = cycle[at[n]]
                target = draw(st.sampled_from(["base", "r", "d/r"] if kind == "hardlink" else ["base", "d", "../r", "/d/s"]))
                layer.append((_rewritten(kind, n, li, target), draw(st.sampled_from(["", "", "pax", "gnu"]))))
        stack.append(layer)
    return stack


REWRITE_PATHS = ("dir", "dir-topdown", "overlay-mount", "store-copy", "store-link", "store-mount", "store-relink",
                 "compact-save")


@seed(20261210 + SEED)
@settings(SETTINGS, max_examples=max(1, EXAMPLES // 8))  # (an eighth: seven paths per stack)
@given(data=st.data())
def test_names_rewritten_type_by_type_agree_with_the_overlay_mount(host, data):
    """rewrite_stacks() on every path but the registry's (one in six that too): the kernel's
    overlay mount of lamina's layer dirs, the flat unpacks and the store's trees are one tree,
    or every path refuses."""
    tars = build(data.draw(rewrite_stacks()))
    paths = REWRITE_PATHS + (("registry-pull",) if data.draw(one_in(6)) else ()) + apply_paths(data)
    _count_case()
    box = Sandbox(host)
    since = int(time.time()) - 1
    try:
        results = {p: made_now(t, since) for p, t in run_paths(box.guard.dest, tars, paths, dir_mtime=True, root=True).items()}
        assert_agree(results, context=describe(tars))
    finally:
        box.close()


# What a snapshot of a compact store may suffer behind lamina's back (tamper()): the sidecar reads
# the payloads of files alone, so most of these leave the layer rebuilding bit-exact
# the sidecar reads (file, or a directory on the way to one) replaced by a symlink to the host
TAMPERS = ["content", "mode", "owner", "mtime", "xattr-add", "xattr-change", "symlink", "extra", "remove",
           "to-host"]


def tamper(fs, pick, how, host, dirs_only=False):
    """Change one entry of the snapshot tree ``fs`` (the ``pick``-th of a walk; ``dirs_only``: of
    its directories) in the way ``how`` (TAMPERS) or the nearest that applies to its type; returns
    what was done."""
    entries = [fs]
    for dirpath, dirnames, filenames in os.walk(fs):
        entries += [os.path.join(dirpath, n) for n in sorted(dirnames) + ([] if dirs_only else sorted(filenames))]
    # (among the entries the change applies to, if any: hypothesis leans to pick 0, the root)
    fits = {"content": stat.S_ISREG, "mtime": stat.S_ISREG, "symlink": stat.S_ISLNK,
            "to-host": lambda mode: True}.get(how)
    fit = [e for e in entries[1:] if fits(os.lstat(e).st_mode)] if fits else entries
    p = (fit or entries)[pick % len(fit or entries)]
    st_ = os.lstat(p)
    rel = os.path.relpath(p, fs)
    if how == "content" and stat.S_ISREG(st_.st_mode):
        with open(p, "r+b") as f:
            first = f.read(1)
            f.seek(0)
            f.write(b"#" if first != b"#" else b"$")
        os.utime(p, ns=(st_.st_atime_ns, st_.st_mtime_ns))
        return f"{rel}: first byte changed"
    if how == "mtime" and stat.S_ISREG(st_.st_mode):
        os.utime(p, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000_000))
        return f"{rel}: mtime a second later"
    if how == "owner":
        os.lchown(p, st_.st_uid + 1, st_.st_gid)
        return f"{rel}: owner {st_.st_uid + 1}"
    if how in ("xattr-add", "xattr-change"):
        names = os.listxattr(p, follow_symlinks=False)
        if how == "xattr-change" and names:
            value = os.getxattr(p, names[0], follow_symlinks=False)
            try:
                os.setxattr(p, names[0], value + b"x", follow_symlinks=False)
                return f"{rel}: xattr {names[0]} now {value + b'x'!r}"
            except OSError:  # (a value the kernel parses: an ACL, a capability)
                pass
        # (no user.* xattr on a symlink or a device node)
        name = "user.tampered" if stat.S_ISREG(st_.st_mode) or stat.S_ISDIR(st_.st_mode) else "trusted.tampered"
        os.setxattr(p, name, b"1", follow_symlinks=False)
        return f"{rel}: xattr {name} added"
    if how == "symlink" and stat.S_ISLNK(st_.st_mode):
        target = os.readlink(p)
        os.unlink(p)
        os.symlink(target + "x", p)
        os.lchown(p, st_.st_uid, st_.st_gid)
        return f"{rel}: symlink now to {target + 'x'!r}"
    if how == "extra" or (how == "remove" and p == fs):
        d = p if stat.S_ISDIR(st_.st_mode) else os.path.dirname(p)
        with open(os.path.join(d, "planted-by-fuzz"), "wb") as f:
            f.write(b"planted\n")
        return f"{os.path.relpath(d, fs)}/planted-by-fuzz: added"
    if how == "to-host" and p != fs:
        # (the file the host directory holds, or the directory: the same names below it)
        target = os.path.join(host, "sub") if stat.S_ISDIR(st_.st_mode) else os.path.join(host, "sub", "f")
        shutil.rmtree(p) if stat.S_ISDIR(st_.st_mode) else os.unlink(p)
        os.symlink(target, p)
        return f"{rel}: now a symlink to {target}"
    if how == "remove":
        if stat.S_ISDIR(st_.st_mode):
            shutil.rmtree(p)
        else:
            os.unlink(p)
        return f"{rel}: removed"
    if stat.S_ISLNK(st_.st_mode):
        return tamper(fs, pick, "symlink", host)
    os.chmod(p, stat.S_IMODE(st_.st_mode) ^ 0o010)
    return f"{rel}: mode {stat.S_IMODE(st_.st_mode) ^ 0o010:o}"


@seed(20261206 + SEED)
@settings(SETTINGS, max_examples=max(1, EXAMPLES // 5))  # (a fifth: CI's run some 10 s)
@given(data=st.data())
def test_a_compact_store_catches_a_snapshot_changed_behind_its_back(host, data):
    """A snapshot of a compact store (dedup on or off; one store in four keeps its blobs) changed
    behind lamina's back, in a file's bytes, mode, owner, time or xattrs, a symlink's target, a
    name added or removed, a file or directory made a symlink to the host (which nothing may
    change): fsck reports an error; a copy of the image to an OCI layout either fails naming the
    layer or gives every layer back bit-exact (never a layer that is not its diffID); and fsck
    --repair either leaves the store clean with the image's tree as it was stored, or still
    reports an error."""
    import hashlib

    import lamina.errors
    from everypath import TAG, write_image
    from lamina.store import Store
    from lamina.store import materialize as mat
    from lamina.transports import copy
    from treecmp import compare, snapshot
    layers = data.draw(stacks(str(host), layers=3, entries=5))
    tars = build(layers)
    dedup = data.draw(st.booleans())
    # (one store in four keeps its blobs: fsck extracts them to compare, --repair from them)
    compact = not data.draw(one_in(4))
    # half the stores also hold the stack rebuilt on an empty layer (every chainID new): with dedup
    # its files are links to the same objects, which a change through the tampered snapshot reaches
    refs = ["x:1", "y:1"] if data.draw(st.booleans()) else ["x:1"]
    which, pick, how = data.draw(st.integers(0, 7)), data.draw(st.integers(0, 1 << 16)), data.draw(st.sampled_from(TAMPERS))
    # (one in three a directory of a lower layer: the layers above copy it up, link into it)
    dirs_only = data.draw(one_in(3))
    _count_case()
    box = Sandbox(host)
    try:
        context = describe(tars)
        store = Store(os.path.join(box.guard.dest, "store"))
        store.set_config("keep-blobs", "false" if compact else "true")
        store.set_config("dedup", "true" if dedup else "false")
        try:
            copy(f"oci:{write_image(os.path.join(box.guard.dest, 'layout'), tars)}:{TAG}", "x:1", store=store)
            if "y:1" in refs:
                copy(f"oci:{write_image(os.path.join(box.guard.dest, 'layout-y'), [EMPTY_LAYER] + tars)}:{TAG}", "y:1",
                     store=store)
        except lamina.errors.LaminaError:
            return  # refused: test_lamina_paths_agree's
        image = store.resolve("x:1")
        mat.materialize(store, "x:1", os.path.join(box.guard.dest, "before"))
        stored = snapshot(os.path.join(box.guard.dest, "before"))
        context += f"\nimages {refs}"
        chain = image.chain_ids[0 if dirs_only else which % len(image.chain_ids)]
        done = tamper(os.fspath(store.snapshot_dir(chain)), pick, how, str(host), dirs_only)
        context += f"\ncompact {compact}, dedup {dedup}; layer {image.chain_ids.index(chain)}'s snapshot: {done}"
        store.close()
        store = Store(os.path.join(box.guard.dest, "store"))
        report = store.fsck()
        assert any(f.severity == "error" for f in report.findings), f"{context}\nfsck saw nothing: {report.findings}"
        for ref in refs:
            out = os.path.join(box.guard.dest, "out-" + ref.replace(":", "-"))
            img = store.resolve(ref)
            try:
                copy(ref, f"oci:{out}:{TAG}", store=store)
            except lamina.errors.LaminaError as e:
                assert "\n" not in str(e) and any(d in str(e) for d in [*img.diff_ids, *(x.digest for x in img.layers)]), \
                    f"{context}\nthe copy of {ref}: its error names no layer: {e}"
            else:
                copied = ["sha256:" + hashlib.sha256(t).hexdigest() for t in _layout_layers(out)]
                assert copied == list(img.diff_ids), f"{context}\nthe copy of {ref} gave a layer that is not its diffID"
        store.close()
        report = Store(os.path.join(box.guard.dest, "store")).fsck(repair=True)
        report = Store(os.path.join(box.guard.dest, "store")).fsck()
        if not report.findings:
            for ref in refs:
                dest = os.path.join(box.guard.dest, f"after-{ref}")
                mat.materialize(Store(os.path.join(box.guard.dest, "store")), ref, dest)
                diff = compare(stored, snapshot(dest), labels=("stored", f"{ref} repaired"))
                assert not diff, f"{context}\nfsck --repair left it clean but not the image's tree:\n{diff}"
        else:
            # (a layer rebuilt from the changed files themselves cannot be put back; a blob can)
            assert compact and any(f.severity == "error" for f in report.findings), \
                f"{context}\nafter fsck --repair: {report.findings}"
    finally:
        box.close()


# Hardlinks across layers beside whiteouts and opaque markers (link_stacks()): the top-down dir
# unpack skips what an upper layer hides, so a hardlink to a skipped file, a whiteout of a link's
# target (or of the link), an opaque directory over a link's target and a name linked again after
# it was hidden must all give what the bottom-up paths give
LINK_NAMES = ["a", "b", "d/a", "d/b", "d/e/a", "d/e/b", "e"]
# now and then a file's xattrs (as umoci reads them: no empty value, no ACL): a link to a lower
# file copies it up in the overlay format, and the copy must keep them
LINK_XATTRS = [()] * 5 + [(("SCHILY.xattr.user.fuzz", b"1"),), (("SCHILY.xattr.trusted.fuzz", b"t"),),
                          (("SCHILY.xattr.security.capability", CAPABILITY),),
                          (("SCHILY.xattr.security.capability", CAPABILITY_V3_USER), ("SCHILY.xattr.user.fuzz", b"22"))]


@st.composite
def link_stacks(draw, host):
    """2 to 6 layers of 1 to 5 entries: files (some with xattrs), hardlinks (mostly to a file,
    a device node or a link written before, in this layer or any below), whiteouts of and opaque
    markers in what was written, directories, symlinks to directories, files written anew over
    links' targets.

    What the extractor would refuse (an entry under what a fifo or a file replaced, a hardlink
    to nothing) is left out as Model tells it, a hardlink aimed at a file there instead, but in
    one stack in eight, drawn blind (every path must refuse it alike): drawn blind, 28 stacks in
    100 were refused, 16 of them for an entry under a directory a fifo had taken."""
    stack, written, dirs = [], [], {"d", "d/e"}
    live = {}  # the files (and links) a later entry can still link to: path -> layer
    model = None if draw(one_in(8)) else Model()
    for li in range(draw(st.integers(2, 6))):
        layer = []
        for _ in range(draw(st.integers(1, 5))):
            # (now and then a fifo, mostly over a directory: it takes what is in it, which the
            # top-down unpack skipping the fifo must not leave for a later link to find)
            kind = draw(st.sampled_from(["file", "file", "hardlink", "hardlink", "hardlink", "whiteout",
                                         "whiteout", "opaque", "dir", "symlink"] * 3 + ["fifo", "node"]))
            path = draw(st.sampled_from(LINK_NAMES + written if written and draw(st.booleans()) else LINK_NAMES))
            if kind == "file":
                op = ("file", path, draw(st.sampled_from([b"1", b"22", b""])), draw(st.sampled_from([0o644, 0o600])),
                      (0, 0), draw(st.sampled_from(LINK_XATTRS)))
            elif kind == "node":  # a character or block device: linked to as a file is
                op = ("node", path, draw(st.sampled_from([(b"3", 1, 3), (b"4", 7, 0)])), (0, 0), ())
            elif kind == "hardlink":
                # mostly a file there is (else one a whiteout or an opaque marker hid, or nothing)
                if not live and not draw(one_in(8)):
                    kind = "file"  # (nothing to link to: a link would fail every path)
                # (else one written before: a symlink too, whose links are symlinks)
                pool = sorted(live) if live and not draw(one_in(8)) else written
                target = draw(st.sampled_from(pool)) if pool and not draw(one_in(16)) else draw(st.sampled_from(LINK_NAMES))
                op = ("hardlink", path, target, (0, 0), 0o644, ())
                if kind == "file":
                    op = ("file", path, b"1", 0o644, (0, 0), ())
            elif kind == "whiteout":
                op = ("whiteout", draw(st.sampled_from(written + sorted(dirs)) if written else st.sampled_from(sorted(dirs))),
                      draw(marker_types), "a")
                if written and draw(one_in(6)):  # through a symlink or a hardlink to one, if it is one
                    op = ("whiteout", draw(st.sampled_from(written)) + "/" + draw(st.sampled_from(["a", "b", "e"])),
                          op[2], "a")
            elif kind == "opaque":
                op = ("opaque", draw(st.sampled_from(sorted(dirs) + ["."] + written[:1] + written[-1:])), draw(marker_types), "a")
            elif kind == "dir":
                op = ("dir", draw(st.sampled_from(sorted(dirs) + [path])), 0o755, (0, 0), ())
            elif kind == "fifo":
                op = ("fifo", draw(st.sampled_from(sorted(dirs))) if not draw(one_in(3)) else path, (0, 0), 0o644, ())
            else:
                op = ("symlink", path, draw(st.sampled_from(sorted(dirs) + ["/d", "."])), (0, 0), ())
            if model is not None:
                op = admitted(draw, model, op)
                if op is None:
                    continue
            at = op[1].strip("./")
            if op[0] in ("file", "hardlink", "symlink", "fifo", "node"):
                written.append(op[1])
            elif op[0] == "dir":
                dirs.add(op[1])
            if op[0] in ("whiteout", "file", "hardlink", "symlink", "fifo", "node") and model is not None:
                # (a directory replaced or whited out: names under it would be refused, mostly;
                # one drawn again makes it a directory again)
                dirs -= {d for d in dirs if d.strip("./") == at or d.startswith(at + "/")}
                dirs = dirs or {"d"}
            if op[0] in ("whiteout", "dir", "symlink", "fifo", "node"):
                live = {k: v for k, v in live.items() if k != at and not k.startswith(at + "/")}
            elif op[0] == "opaque":
                live = {k: v for k, v in live.items() if v == li or not (k.startswith(at + "/") or not at)}
            if op[0] in ("file", "hardlink", "node") and (op[0] != "hardlink" or op[2] in live):
                live[at] = li
            layer.append((op, draw(carriers)))
        stack.append(layer)
    return stack


@seed(20261207 + SEED)
@settings(SETTINGS, max_examples=max(1, EXAMPLES // 2))  # (half: four paths and umoci per stack)
@given(data=st.data())
def test_hardlinks_whiteouts_and_opaque_dirs_across_layers_agree(host, data):
    """link_stacks() through the dir unpack bottom-up and top-down, the overlay mount and the
    store's copy: the same tree (or an error everywhere), and umoci's where it accepts."""
    layers = data.draw(link_stacks(str(host)))
    tars = build(layers, data.draw(encodings(len(layers), UMOCI_ENCODINGS)))
    # (compact-save one stack in three: it costs the other four paths together)
    paths = ("dir", "dir-topdown", "overlay-mount", "store-copy") + (("compact-save",) if data.draw(one_in(3)) else ())
    paths += apply_paths(data)
    _count_case()
    box = Sandbox(host)
    try:
        results = run_paths(box.guard.dest, tars, paths=paths)
        ref = assert_agree(results, context=describe(tars))
        if ref is not None:
            oracle = umoci_tree(box.guard.dest, tars)
            if not isinstance(oracle, Exception):
                assert_agree({"umoci": _as_references(oracle), "lamina": ref}, context=describe(tars))
    finally:
        box.close()


# Small stacks around hidden names (hidden_stacks()): the top-down dir unpack skips what an upper
# layer hides but never a symlink (nor a hardlink to one), so a layer may write under a name it
# skipped, through a symlink to it, a directory a symlink in it made, a link into it ...; the
# written layer decides.  Cheap (two dir unpacks of a few entries): many stacks for the time.
HIDDEN_NAMES = ["b", "b/a", "b/c", "b/a/x", "l", "l/a", "h", "t", "t/a"]


@st.composite
def hidden_ops(draw):
    kind = draw(st.sampled_from(["symlink", "symlink", "fifo", "file", "dir", "hardlink", "whiteout", "opaque"]))
    path = draw(st.sampled_from(HIDDEN_NAMES))
    if kind == "symlink":
        return ("symlink", path, draw(st.sampled_from(["a", "b", "/t", ".", "x", "t"])), (0, 0), ())
    if kind == "fifo":
        return ("fifo", path, (0, 0), 0o644, ())
    if kind == "file":
        return ("file", path, b"1", 0o644, (0, 0), ())
    if kind == "dir":
        return ("dir", path, 0o755, (0, 0), ())
    if kind == "hardlink":
        return ("hardlink", path, draw(st.sampled_from(HIDDEN_NAMES)), (0, 0), 0o644, ())
    return (kind, path if kind == "whiteout" else draw(st.sampled_from(["b", "t", "l"])), b"0", "a")


hidden_stacks = st.lists(st.lists(hidden_ops().map(lambda op: (op, "")), min_size=1, max_size=7), min_size=2, max_size=4)


@seed(20261208 + SEED)
@settings(SETTINGS, max_examples=max(1, EXAMPLES // 4))
@given(data=st.data())
def test_top_down_skipping_agrees_on_small_stacks_around_hidden_names(host, data):
    """hidden_stacks() through the dir unpack bottom-up and top-down: the same tree, or an
    error both ways (what a skipped entry would have done, written, the skipping must do)."""
    tars = build(data.draw(hidden_stacks))
    _count_case()
    box = Sandbox(host)
    try:
        assert_agree(run_paths(box.guard.dest, tars, paths=("dir", "dir-topdown")), context=describe(tars))
    finally:
        box.close()


# Directories declared again (redeclare_stacks()): a directory a lower layer listed with its own
# mode, owner, time and xattrs, listed again by an upper layer with others (or none: the lower
# one's xattrs must go, as the upper directory hides them in an overlay mount), made opaque before
# or after it is listed, whited out and listed anew in one layer, replaced by a file or a symlink
# and made a directory again, or only written into (the lower listing's metadata kept)
REDECLARED = [".", "a", "a/b", "o"]


def _redeclared_dir(draw, d, xattrs):
    return ("dir", d, draw(st.sampled_from([0o755, 0o700, 0o2775, 0o1777, 0o555, 0o750])), draw(owners),
            # (none: the lower listing's xattrs must go; a few; or a PAX time, an owner past 2^21)
            draw(st.one_of(st.just(()), _rich_meta(xattrs), _meta(xattrs))))


@st.composite
def redeclare_stacks(draw, xattrs=XATTRS + OVERLAY_XATTRS + [("system.posix_acl_default", DEFAULT_ACL)]):
    """A bottom layer listing REDECLARED (each with metadata of its own, xattrs one in two) and a
    file or two in them; then 1 to 4 layers of 1 to 4 of: a directory listed again (other mode,
    owner, xattrs or none), an opaque marker in it before or after its listing or alone, a
    whiteout of it and a listing anew (in the layer's order, either way), a file or symlink in its
    place (a later listing makes it a directory again), a file or a new directory in it."""
    bottom = [_redeclared_dir(draw, d, xattrs) if draw(one_in(2)) else
              ("dir", d, 0o755, (0, 0), draw(_rich_meta(xattrs))) for d in REDECLARED]
    bottom += [("file", draw(st.sampled_from(REDECLARED[1:])) + "/" + n, b"1", 0o644, (0, 0), ())
               for n in draw(st.lists(st.sampled_from(["f", "g"]), min_size=1, max_size=2, unique=True))]
    stack = [bottom]
    for li in range(draw(st.integers(1, 4))):
        layer = []
        for _ in range(draw(st.integers(1, 4))):
            d = draw(st.sampled_from(REDECLARED))
            how = draw(st.sampled_from(["again"] * 3 + ["opaque-then-again", "again-then-opaque", "opaque",
                                                        "whiteout-then-again", "again-then-whiteout", "replace",
                                                        "inside", "child-dir"]))
            if d == "." and how in ("whiteout-then-again", "again-then-whiteout", "replace"):
                how = "again"
            again = _redeclared_dir(draw, d, xattrs)
            marker = (("opaque" if "opaque" in how else "whiteout"), d, draw(marker_types), "a")
            if how == "again":
                layer.append(again)
            elif how == "opaque":
                layer.append(marker)
            elif how in ("opaque-then-again", "whiteout-then-again"):
                layer += [marker, again]
            elif how in ("again-then-opaque", "again-then-whiteout"):
                layer += [again, marker]
            elif how == "replace":
                target = draw(st.sampled_from(["a", "/o", "."]))
                layer.append(draw(st.sampled_from([("file", d, b"now a file", 0o600, (0, 0), ()),
                                                   ("symlink", d, target, (0, 0), ())])))
            elif how == "inside":
                layer.append(("file", (d + "/" if d != "." else "") + draw(st.sampled_from(["f", "h"])), b"22", 0o600,
                              draw(owners), ()))
            else:
                layer.append(_redeclared_dir(draw, (d + "/" if d != "." else "") + "n", xattrs))
        stack.append(layer)
    return leave_out_refused(draw, [[(op, "" if op[0] in ("whiteout", "opaque") else draw(carriers))
                                     for op in layer] for layer in stack])


REDECLARE_PATHS = ("dir", "dir-topdown", "overlay-mount", "store-copy", "store-mount", "compact-save")


@seed(20261211 + SEED)
@settings(SETTINGS, max_examples=max(1, EXAMPLES // 6))  # (a sixth: six paths, and umoci, per stack)
@given(data=st.data())
def test_directories_declared_again_agree_with_the_overlay_mount_and_umoci(host, data):
    """redeclare_stacks(): the kernel's overlay mount of lamina's layer dirs, the flat unpacks,
    the store's trees and a compact store's saved archive give each directory the metadata of its
    last listing (mode, owner, time, xattrs: none of a lower listing's), or of the lower one where
    an upper layer only writes in it; and umoci's unpack is that tree, where the stack holds no
    default ACL nor overlay xattrs (deliberate differences: CONFORMANCE.md)."""
    for_umoci = data.draw(st.booleans())
    layers = data.draw(redeclare_stacks(XATTRS) if for_umoci else redeclare_stacks())
    tars = build(layers, data.draw(encodings(len(layers), UMOCI_ENCODINGS)))
    paths = REDECLARE_PATHS + apply_paths(data)
    _count_case()
    box = Sandbox(host)
    since = int(time.time()) - 1
    try:
        results = {p: made_now(t, since) for p, t in
                   run_paths(box.guard.dest, tars, paths, dir_mtime=True, root=True).items()}
        ref = assert_agree(results, context=describe(tars))
        if for_umoci and ref is not None:
            oracle = umoci_tree(box.guard.dest, tars, dir_mtime=True, root=True)
            oracle, mine = _blind_to_clamped(_blind_to_deliberate(_as_references(made_now(oracle, since))),
                                             _blind_to_deliberate(ref), _time_range(os.path.dirname(box.base)))
            if not isinstance(oracle, Exception):
                # (umoci leaves some listed directories the time of its run: a layer's whiteout of
                # a directory it lists itself, an implied directory made in one; CONFORMANCE.md)
                mine = dataclasses.replace(mine, entries={
                    p: (dataclasses.replace(e, mtime=MADE_NOW) if e.type == "dir" and p in oracle.entries
                        and oracle.entries[p].mtime == MADE_NOW else e) for p, e in mine.entries.items()})
                assert_agree({"umoci": oracle, "lamina": mine}, context=describe(tars))
    finally:
        box.close()
