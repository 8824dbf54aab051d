"""Differential fuzzer aimed at top-down skipping (the flat dir unpack of small upper layers).

``unpack`` of a flat rootfs scans the upper layers that are small beside the ones below
(unpacker.SCAN_FRACTION), then skips the entries of the lower layers that they hide.  Small
stacks (2 to 4 layers) around a few names hide what the lower layers wrote in every way there
is: whiteouts (``./`` forms, through symlinks of the layer's own and of lower ones), opaque
markers (``.`` too), replacement by a file, directory, symlink, hardlink, fifo or device node;
lower layers hold hardlinks to hidden and unhidden names and chains of them, names hidden at
one level and made again at another, directories only implied, the same path listed twice in
a layer; now and then SCAN_MAX_PATHS is tiny, so some layers overflow and are not scanned.
Entries carry owners, modes, times and xattrs.  The bottom layer is padded with
incompressible bytes so that the real SCAN_FRACTION rule scans the upper ones too.

The top-down unpack (everypath's ``dir-topdown``) must give the plain ``dir`` unpack's tree
(directory times and the root included) or the same error (class and message, the work dirs
aside); one stack in eight also goes through ``unpack docker://`` (``registry-unpack``, top-down
by the real rule).  test_top_down_skipping_agrees_without_root does the same as user nobody.

Seeded and bounded for CI (LAMINA_FUZZ_EXAMPLES: default 100 stacks, 48 as nobody: some 10 s);
LAMINA_FUZZ_SEED=N explores other stacks, LAMINA_FUZZ_SHRINK=0 reports a failure as drawn, e.g.

    LAMINA_FUZZ_EXAMPLES=5000 LAMINA_FUZZ_SEED=41000 python -m pytest tests/test_fuzz_topdown.py
"""
from __future__ import annotations

import json
import os
import random
import shutil

from hypothesis import given, seed, settings
from hypothesis import strategies as st

import test_fuzz_paths as fz
from test_fuzz_paths import host  # noqa: F401  (the fixture)
from everypath import describe, made_now, run_paths, write_image
from layerkit import run_as_nobody, world_tmpdir
from tarbuild import Tar
from treecmp import Snapshot, compare, snapshot

SEED = fz.SEED
SETTINGS = settings(fz.SETTINGS, max_examples=fz.EXAMPLES)

NAMES = ["a", "b", "b/a", "b/c", "b/a/x", "l", "l/a", "l/b", "d", "d/e", "d/e/f", "h", "t", "t/a"]
LINK_TARGETS = ["a", "b", ".", "/b", "../b", "d", "d/e", "l", "x", "b/a", "/", "t"]
DIRS = ["b", "b/a", "d", "d/e", "l", "t", "."]
OWNERS = [(0, 0), (0, 0), (1000, 1000), (0, 5)]
TIMES = [1_550_000_000, 1_600_000_000, 1_700_000_123]
XATTRS = [(), (), (("user.k", "1"),), (("user.k", "2"), ("trusted.t", "x"))]
LONG = "/" + "x" * 256  # longer than NAME_MAX: fails its entry, written
PAD = random.Random(41).randbytes(24_000)  # incompressible: the upper layers stay small beside it


def _form(draw, path):
    """``path`` as a layer may spell it: ``./`` in front now and then."""
    return "./" + path if path != "." and draw(fz.one_in(5)) else path


@st.composite
def entry(draw, written):
    kind = draw(st.sampled_from(["file", "file", "dir", "dir", "symlink", "symlink", "hardlink", "hardlink",
                                 "hardlink", "whiteout", "whiteout", "opaque", "fifo", "node"]))
    pool = NAMES + written if written and draw(st.booleans()) else NAMES
    path = draw(st.sampled_from(pool)) if not draw(fz.one_in(40)) else draw(st.sampled_from(["b", "d/e", "t"])) + LONG
    meta = {"uid": 0, "gid": 0}
    meta["uid"], meta["gid"] = draw(st.sampled_from(OWNERS))
    meta["mtime"] = draw(st.sampled_from(TIMES))
    xattrs = draw(st.sampled_from(XATTRS))
    if kind == "file":
        # (modes that shut the owner out matter without root: nobody's paths open them up)
        op = ("file", path, draw(st.sampled_from([b"", b"1", b"22"])),
              draw(st.sampled_from([0o644, 0o600, 0o4755, 0o000, 0o200])))
    elif kind == "dir":
        op = ("dir", draw(st.sampled_from(DIRS + [path])),
              draw(st.sampled_from([0o755, 0o700, 0o1777, 0o2750, 0o555, 0o000, 0o300])))
    elif kind == "symlink":
        op = ("symlink", path, draw(st.sampled_from(LINK_TARGETS)))
    elif kind == "hardlink":
        # mostly to a name written before (a chain when that one was a link), else any name
        target = draw(st.sampled_from(written)) if written and not draw(fz.one_in(4)) else draw(st.sampled_from(NAMES))
        op = ("hardlink", path, _form(draw, target))
    elif kind == "whiteout":
        op = ("whiteout", draw(st.sampled_from(written + NAMES) if written else st.sampled_from(NAMES)))
        if written and draw(fz.one_in(3)):  # through a name written before: a symlink, or a link to one
            op = ("whiteout", draw(st.sampled_from(written)) + "/" + draw(st.sampled_from(["a", "b", "x"])))
    elif kind == "opaque":
        op = ("opaque", draw(st.sampled_from(DIRS + written[-2:])))
    elif kind == "fifo":
        op = ("fifo", path)
    else:
        op = ("node", path, draw(st.sampled_from([(b"3", 1, 3), (b"4", 7, 0)])))
    op = (op[0], _form(draw, op[1])) + op[2:]
    return op, meta, xattrs if kind in ("file", "dir", "symlink", "fifo") else ()


@st.composite
def topdown_stacks(draw):
    """2 to 4 layers of 1 to 6 entries (a layer now and then lists an entry twice)."""
    layers, written = [], []
    for _ in range(draw(st.integers(2, 4))):
        layer = []
        for _ in range(draw(st.integers(1, 6))):
            e = draw(entry(written))
            layer.append(e)
            if draw(fz.one_in(8)):  # the same path again, maybe as something else
                again = draw(entry(written))
                layer.append(((again[0][0], e[0][1]) + again[0][2:] if again[0][0] not in ("whiteout", "opaque")
                              else e[0], again[1], again[2]))
            if e[0][0] in ("file", "symlink", "hardlink", "fifo", "node"):
                written.append(e[0][1].removeprefix("./"))
        layers.append(layer)
    return layers


def build(layers):
    tars = []
    for li, layer in enumerate(layers):
        t = Tar()
        if li == 0:
            t.file("pad", PAD)
        for (op, meta, xattrs) in layer:
            kind, path = op[0], op[1]
            if kind in ("whiteout", "opaque"):
                d, _, base = path.rstrip("/").rpartition("/") if kind == "whiteout" else (path.rstrip("/"), "", "")
                kind, path, op = "file", (d + "/" if d else "") + (".wh." + base if base else ".wh..wh..opq"), \
                    ("file", None, b"", 0o644)
                meta = {"uid": 0, "gid": 0, "mtime": meta["mtime"]}
            records = {f"SCHILY.xattr.{k}": v for k, v in xattrs}
            if len(path) > 99:  # (a component no filesystem takes: in a PAX record)
                records["path"], path = path, "long-name"
            if kind == "hardlink" and len(op[2]) > 99:
                records["linkpath"], op = op[2], op[:2] + ("long-target",)
            if records:
                t.pax(records)
            if kind == "file":
                t.file(path, op[2], mode=op[3], **meta)
            elif kind == "dir":
                t.dir(path, mode=op[2], **meta)
            elif kind == "symlink":
                t.symlink(path, op[2], **meta)
            elif kind == "hardlink":
                t.hardlink(path, op[2], mode=0o644, **meta)
            elif kind == "fifo":
                t.fifo(path, mode=0o640, **meta)
            elif kind == "node":
                t.entry(path, b"", type=op[2][0], devmajor=op[2][1], devminor=op[2][2], mode=0o600, **meta)
        tars.append(t.bytes())
    return tars


def _error_text(e, work):
    return f"{type(e).__name__}: " + str(e).replace(os.path.join(work, "registry"), "WORK") \
        .replace(os.fspath(work), "WORK").replace("dir-topdown", "DEST") \
        .replace("registry-unpack", "DEST").replace("/dir", "/DEST")


def agree(results, work, context):
    """The same tree everywhere, or the same error (class and message) everywhere."""
    names = list(results)
    ref = results[names[0]]
    for n in names[1:]:
        other = results[n]
        if isinstance(ref, Exception) or isinstance(other, Exception):
            texts = [_error_text(r, work) if isinstance(r, Exception) else "a tree" for r in (ref, other)]
            assert texts[0] == texts[1], f"{context}\n{names[0]}: {texts[0]}\n{n}: {texts[1]}"
            continue
        diff = compare(ref, other, labels=(names[0], n))
        assert not diff, f"{context}: {names[0]} and {n} differ:\n{diff}"


@seed(20261241 + SEED)
@SETTINGS
@given(data=st.data())
def test_top_down_skipping_agrees_with_the_plain_unpack(host, data, monkeypatch):
    import time

    from lamina import unpacker
    layers = data.draw(topdown_stacks())
    registry = data.draw(fz.one_in(8))
    cap = data.draw(st.sampled_from([None] * 3 + [0, 1, 2, 3]))
    tars = build(layers)
    fz._count_case()
    box = fz.Sandbox(host)
    since = int(time.time()) - 1
    try:
        with monkeypatch.context() as m:
            if cap is not None:  # some layers overflow: their whiteouts apply as they are written
                m.setattr(unpacker, "SCAN_MAX_PATHS", cap)
            if registry:  # top-down by the real rule (the padding): before the plain way is forced
                results = run_paths(os.path.join(box.guard.dest, "registry"), tars, paths=("registry-unpack",),
                                    dir_mtime=True, root=True)
            else:
                results = {}
            # the padded stacks go top-down by the real rule: the plain way, forced, is the reference
            m.setattr(unpacker, "SCAN_FRACTION", 0.0)
            results = run_paths(box.guard.dest, tars, paths=("dir", "dir-topdown"), dir_mtime=True,
                                root=True) | results
            results = {p: made_now(t, since) for p, t in results.items()}
        agree(results, box.guard.dest, describe(tars) + f"\nSCAN_MAX_PATHS={cap}")
    finally:
        box.close()


ROOTLESS = r"""
import time, traceback
from lamina import unpacker
out = []
for case in json.loads(sys.argv[1]):
    res = {"since": time.time()}
    for name, fraction in (("dir", 0.0), ("dir-topdown", float("inf"))):
        unpacker.SCAN_FRACTION = fraction
        unpacker.SCAN_MAX_PATHS = case["cap"] if case["cap"] is not None else 1 << 16
        try:
            lamina.unpack(case["src"], os.path.join(case["work"], name))
            res[name] = "ok"
        except lamina.errors.LaminaError as e:
            res[name] = f"{type(e).__name__}: " + str(e).replace(os.path.join(case["work"], name), "DEST")
        except BaseException as e:
            res[name] = "crash: " + "".join(traceback.format_exception(e))[-3000:]
    out.append(res)
print(json.dumps(out))
"""

BATCH = 8


@seed(20261242 + SEED)
@settings(SETTINGS, max_examples=max(1, fz.EXAMPLES // 4 // BATCH * 2))
@given(data=st.data())
def test_top_down_skipping_agrees_without_root(data):
    """The same as user nobody (the rootless skip paths: no devices, no owners, modes opened
    up to the owner), several stacks to one nobody process."""
    batch = [(build(data.draw(topdown_stacks())), data.draw(st.sampled_from([None] * 3 + [0, 1, 2])))
             for _ in range(BATCH)]
    base = world_tmpdir()
    try:
        cases = []
        for i, (tars, cap) in enumerate(batch):
            layout = write_image(os.path.join(base, f"layout{i}"), tars)
            work = os.path.join(base, f"work{i}")
            os.mkdir(work)
            os.chown(work, 65534, 65534)
            cases.append({"src": f"oci:{layout}:img", "work": work, "cap": cap})
        proc = run_as_nobody(ROOTLESS, json.dumps(cases), timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        outs = json.loads(proc.stdout.strip().splitlines()[-1])
        for (tars, cap), case, res in zip(batch, cases, outs):
            context = describe(tars) + f"\nas nobody, SCAN_MAX_PATHS={cap}"
            assert res["dir"] == res["dir-topdown"], f"{context}\ndir: {res['dir']}\ndir-topdown: {res['dir-topdown']}"
            assert "crash" not in res["dir"], context + "\n" + res["dir"]
            if res["dir"] == "ok":
                trees = {n: made_now(snapshot(os.path.join(case["work"], n), include_root=True, dir_mtime=True),
                                     int(res["since"]) - 1) for n in ("dir", "dir-topdown")}
                diff = compare(trees["dir"], trees["dir-topdown"], labels=("dir", "dir-topdown"))
                assert not diff, f"{context}: dir and dir-topdown differ:\n{diff}"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_padding_makes_the_real_rule_scan_the_upper_layers(tmp_path):
    """The stacks really exercise skipping by the real SCAN_FRACTION (registry-unpack's): with
    the bottom layer padded, three small layers above it are all scanned and hide lower entries."""
    import lamina
    meta = {"uid": 0, "gid": 0, "mtime": 1}
    tars = build([[(("dir", "b", 0o755), meta, ()), (("file", "b/x", b"1", 0o644), meta, ()),
                   (("file", "a", b"1", 0o644), meta, ())],
                  [(("file", "./a", b"2", 0o644), meta, ()), (("file", "d/e/f", b"2", 0o644), meta, ())],
                  [(("whiteout", "./d"), meta, ()), (("opaque", "b"), meta, ())],
                  [(("symlink", "a", "b"), meta, ())]])
    layout = write_image(tmp_path / "layout", tars)
    stats = lamina.unpack(f"oci:{layout}:img", tmp_path / "out")
    assert [layer.hidden for layer in stats.layers] == [2, 2, 0, 0], [layer.hidden for layer in stats.layers]
