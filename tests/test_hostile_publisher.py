"""Hostile images one level above the tar bytes: what an image's publisher writes in its
manifest and config (a blob listed twice, sizes, diffIDs, media types, no layers at all) and
what a registry answers around the blobs (resume ranges, redirects, 401s).

Each case runs through every way the image reaches lamina that reads the part at fault:
``unpack oci:`` (dir and overlay), ``copy`` into a store and what is made from it (``unpack
REF``, ``unpack --link``, ``mount``), ``pull`` and ``unpack docker://`` from a real
docker-registry on loopback (tests/registryfixture.py), and the store is checked with fsck after
every refusal.
"""
from __future__ import annotations

import bz2
import lzma
import os
import subprocess

import pytest

import ocibuild as ob
import treecmp
from everypath import PATHS, assert_agree, run_paths, umoci_tree
from layerkit import zst
from registryfixture import FaultProxy, reg, registry_env  # noqa: F401
from test_documents import _push_blob, _push_manifest
from test_hostile_images import cli, one_line_error as refused

from lamina.store import Store
from lamina.store.fsck import check

A = ob.tar_bytes({"a": b"A\n", "d/": None, "d/x": b"x\n"})
B = ob.tar_bytes({"b": b"B\n"})


def no_fsck_errors(root):
    if os.path.exists(root):
        report = check(Store(root))
        assert report.errors == [], report.findings


def _layers_and_config(layers, diff_ids, config_extra=None):
    """(config bytes, layer descriptors) for [{blob, media_type?, delta?}] (delta: added to the
    descriptor's size)."""
    config = ob.dumps({"architecture": "amd64", "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}, **(config_extra or {})})
    descs = []
    for x in layers:
        d = ob.desc(x.get("media_type", ob.OCI_LAYER_GZIP), x["blob"])
        d["size"] += x.get("delta", 0)
        descs.append(d)
    return config, descs


def layout_image(root, layers, diff_ids, *, config_delta=0):
    lay = ob.Layout(root)
    config, descs = _layers_and_config(layers, diff_ids)
    for x in layers:
        lay.blob(x["blob"])
    lay.blob(config)
    cdesc = ob.desc(ob.OCI_CONFIG, config)
    cdesc["size"] += config_delta
    manifest = ob.dumps({"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST, "config": cdesc, "layers": descs})
    lay.blob(manifest)
    lay.add(ob.desc(ob.OCI_MANIFEST, manifest), "img")
    return lay.root


def push_image(host, repo, tag, layers, diff_ids, *, config_delta=0):
    """Push the blobs (each once) and a manifest listing ``layers``, whatever its descriptors say
    (docker-registry checks that the blobs exist, not their sizes)."""
    config, descs = _layers_and_config(layers, diff_ids)
    for blob in dict.fromkeys(x["blob"] for x in layers):
        _push_blob(host, repo, blob)
    _push_blob(host, repo, config)
    cdesc = ob.desc(ob.OCI_CONFIG, config)
    cdesc["size"] += config_delta
    manifest = ob.dumps({"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST, "config": cdesc, "layers": descs})
    status, body = _push_manifest(host, repo, tag, manifest, ob.OCI_MANIFEST)
    assert status == 201, body
    return manifest


def every_way_refuses(tmp_path, host, ref, layout, expect):
    """Each way in refuses the image with one line holding every string of ``expect``; no
    destination is left and the stores' fsck finds no error."""
    store = tmp_path / "store"
    ways = {
        "unpack oci:": (["unpack", f"oci:{layout}:img", tmp_path / "dir"], None),
        "unpack --format overlay oci:": (["unpack", "--format", "overlay", f"oci:{layout}:img", tmp_path / "ovl"], None),
        "copy oci:": (["copy", f"oci:{layout}:img", "img:1"], store),
        "pull": (["pull", f"{host}/{ref}"], store),
        "unpack docker://": (["unpack", f"docker://{host}/{ref}", tmp_path / "reg"], None),
    }
    for way, (args, root) in ways.items():
        line = refused(cli(*args, root=root))
        for s in expect:
            assert s in line, (way, line)
    for d in ("dir", "ovl", "reg"):
        assert not (tmp_path / d).exists(), d
    no_fsck_errors(store)
    if store.exists():
        assert Store(store).index.read() == [], "a refused image was named"


# --------------------------------------------------------------------------------------------
# one blob, two sizes


@pytest.mark.parametrize("liar", [0, 1])
def test_one_blob_listed_with_two_sizes_is_refused_from_the_manifest(reg, registry_env, tmp_path, liar):  # noqa: F811
    """A blob listed twice, one of its descriptors giving another size.  A pull fetches a blob
    once however often it is listed and checked the first listing's size only: with the lie in
    the second, ``pull`` stored and named the image that ``unpack docker://`` and the layouts
    refused.  At most one of the sizes is true: the manifest is refused as it is read."""
    gz = ob.gz(A)
    layers = [dict(blob=gz), dict(blob=gz)]
    layers[liar]["delta"] = 7
    ids = [ob.sha256(A)] * 2
    layout = layout_image(tmp_path / "layout", layers, ids)
    push_image(reg.host, "twosizes", f"t{liar}", layers, ids)
    every_way_refuses(tmp_path, reg.host, f"twosizes:t{liar}", layout,
                      ["layers[1]", ob.sha256(gz), "lists the same blob with size"])


# --------------------------------------------------------------------------------------------
# a descriptor lying about the size of a blob the store holds


@pytest.mark.parametrize("what", ["layer", "config"])
@pytest.mark.parametrize("delta", [5, -5])
def test_a_descriptor_lying_about_the_size_of_a_blob_the_store_holds_is_refused(reg, registry_env, tmp_path,  # noqa: F811
                                                                                 what, delta):
    """The blob in the store was verified against its digest, so a descriptor giving it another
    size lies.  Into an empty store the pull refused such an image ("registry sent 95 bytes, the
    manifest says 100"); into one holding the blob already ("Already exists") it stored and
    named it, and ``push`` or ``save`` would then hand the lie on.  Refused both ways now."""
    gz = ob.gz(A)
    ids = [ob.sha256(A)]
    push_image(reg.host, "liar", "good", [dict(blob=gz)], ids)
    layer = dict(blob=gz, delta=delta if what == "layer" else 0)
    push_image(reg.host, "liar", f"{what}{delta}", [layer], ids, config_delta=delta if what == "config" else 0)
    store = tmp_path / "store"
    good = cli("pull", f"{reg.host}/liar:good", root=store)
    assert good.returncode == 0, good.stderr
    line = refused(cli("pull", f"{reg.host}/liar:{what}{delta}", root=store))
    assert "the descriptor says" in line and "bytes, but the blob of that digest is" in line, line
    from lamina.store.index import entry_name
    names = [entry_name(e) for e in Store(store).index.read()]
    assert not any(f"{what}{delta}" in str(n) for n in names), names
    no_fsck_errors(store)
    # the same image into an empty store, and without a store, is refused too
    for args, root in ((["pull", f"{reg.host}/liar:{what}{delta}"], tmp_path / "empty"),
                       (["unpack", f"docker://{reg.host}/liar:{what}{delta}", tmp_path / "out"], None)):
        refused(cli(*args, root=root))
    assert not (tmp_path / "out").exists()
    no_fsck_errors(tmp_path / "empty")


def test_platforms_listing_one_blob_with_two_sizes_are_refused_by_pull_all_platforms(reg, registry_env, tmp_path):  # noqa: F811
    """``pull --all-platforms`` fetches each blob once for every platform's manifest: when the
    arm64 manifest gave the amd64 image's layer another size, that size was never compared and
    the store kept a manifest that lies about its layer.  Refused now, storing nothing named."""
    gz = ob.gz(A)
    ids = [ob.sha256(A)]
    good = push_image(reg.host, "plat2", "amd64", [dict(blob=gz)], ids)
    liar = push_image(reg.host, "plat2", "arm64", [dict(blob=gz, delta=3)], ids)
    index = ob.dumps({"schemaVersion": 2, "mediaType": ob.OCI_INDEX, "manifests": [
        ob.with_platform(ob.desc(ob.OCI_MANIFEST, good), "linux", "amd64"),
        ob.with_platform(ob.desc(ob.OCI_MANIFEST, liar), "linux", "arm64")]})
    status, body = _push_manifest(reg.host, "plat2", "t", index, ob.OCI_INDEX)
    assert status == 201, body
    store = tmp_path / "store"
    line = refused(cli("pull", "--all-platforms", "--platform", "linux/amd64", f"{reg.host}/plat2:t", root=store))
    assert ob.sha256(gz) in line and f"size {len(gz)}" in line and f"size {len(gz) + 3}" in line, line
    assert Store(store).index.read() == []
    no_fsck_errors(store)


def test_fsck_finds_an_image_whose_manifest_lies_about_a_blob_it_holds(tmp_path):
    """What an older pull stored (a layer or config descriptor of another size than the blob the
    store held already) is an image fsck calls broken, naming the blob and both sizes; before,
    fsck found nothing."""
    from lamina.store.index import make_entry
    gz = ob.gz(A)
    layout = layout_image(tmp_path / "layout", [dict(blob=gz)], [ob.sha256(A)])
    store = tmp_path / "store"
    assert cli("copy", f"oci:{layout}:img", "x:1", root=store).returncode == 0
    lay = ob.Layout.existing(layout)
    manifest = lay.read_json(lay.entries[0]["digest"])
    manifest["layers"][0]["size"] += 4
    data = ob.dumps(manifest)
    s = Store(store)
    s.put_blob(data, ob.sha256(data))
    s.index.write(s.index.read() + [make_entry(ob.OCI_MANIFEST, ob.sha256(data), len(data), "docker.io/x/liar:1")])
    report = check(Store(store))
    lies = [f for f in report.errors if ob.sha256(gz) in str(f)]
    assert len(lies) == 1 and f"is {len(gz) + 4} bytes, but it is {len(gz)}" in str(lies[0]), report.findings
    assert "x/liar:1" in str(lies[0]) and len(report.errors) == 1, report.findings


# --------------------------------------------------------------------------------------------
# a diffID that does not match, on a blob the image lists twice


def test_a_diffid_mismatch_of_a_blob_listed_twice_names_the_listing_at_fault(reg, registry_env, tmp_path):  # noqa: F811
    """Layers [A, A] with diffIDs [diffID(A), diffID(B)]: the second listing is wrong.  The store
    names a snapshot's error by the layer's blob digest, and ``copy`` took the first layer of that
    digest ("layer 1 of 2", the good one), ``pull`` named no place at all; ``unpack`` said
    "layer 2 of 2".  Every way names the second now."""
    gz = ob.gz(A)
    layers, ids = [dict(blob=gz), dict(blob=gz)], [ob.sha256(A), ob.sha256(B)]
    layout = layout_image(tmp_path / "layout", layers, ids)
    push_image(reg.host, "twice", "t", layers, ids)
    every_way_refuses(tmp_path, reg.host, "twice:t", layout,
                      ["layer 2 of 2", ob.sha256(gz), "diffID", f"expected {ob.sha256(B)}"])


# --------------------------------------------------------------------------------------------
# guards: what held when tried (round 7), kept so that it keeps holding


@pytest.mark.parametrize("order", ["A W A", "W A W", "A W B A"])
def test_one_blob_listed_again_above_a_whiteout_of_it_agrees_with_umoci_on_every_path(tmp_path, order):
    """The same blob (one digest, one diffID) listed twice with a layer between that whites out
    and hides (opaque) what it made: the second listing makes it again on every path, as umoci."""
    w = ob.tar_bytes({".wh.a": b"", "d/.wh..wh..opq": b"", "d/y": b"y\n"})
    tars = [{"A": A, "W": w, "B": B}[k] for k in order.split()]
    expected = umoci_tree(tmp_path / "umoci", tars)
    assert not isinstance(expected, Exception), expected
    got = assert_agree(run_paths(tmp_path / "paths", tars), context=order)
    assert got is not None
    assert not treecmp.compare(expected, got, labels=("umoci", "lamina"))
    assert ("a" in got) == order.endswith("A")


def test_an_image_of_no_layers_is_an_empty_tree_on_every_path(reg, registry_env, tmp_path):  # noqa: F811
    """``layers: []`` (and no diffIDs): docker builds such an image (``FROM scratch`` and a
    label).  Every path makes an empty root, the store's mount (no snapshot at all) included."""
    # (everypath mounts the overlay format under two empty lowers; below it is mounted with the
    # options lamina writes for it)
    got = assert_agree(run_paths(tmp_path / "paths", [], PATHS), context="no layers")
    assert got is not None and list(got.paths()) == []
    import lamina
    layout = layout_image(tmp_path / "layout", [], [])
    stats = lamina.unpack(f"oci:{layout}:img", tmp_path / "ovl", format="overlay")
    assert stats.layer_dirs == []
    options = (tmp_path / "ovl" / "mount-options").read_text().strip()
    (tmp_path / "mnt").mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, tmp_path / "mnt"], check=True)
    try:
        assert os.listdir(tmp_path / "mnt") == []
    finally:
        subprocess.run(["umount", tmp_path / "mnt"], check=True)
    push_image(reg.host, "nolayers", "t", [], [])
    store = tmp_path / "store"
    pulled = cli("pull", f"{reg.host}/nolayers:t", root=store)
    assert pulled.returncode == 0, pulled.stderr
    out = cli("unpack", f"{reg.host}/nolayers:t", tmp_path / "from-store", root=store)
    assert out.returncode == 0 and os.listdir(tmp_path / "from-store") == [], out.stderr
    out = cli("unpack", f"docker://{reg.host}/nolayers:t", tmp_path / "reg")
    assert out.returncode == 0 and os.listdir(tmp_path / "reg") == [], out.stderr
    assert check(Store(store)).findings == []


MEDIA_LIES = {
    "zstd under gzip": (lambda t: zst(t), ob.OCI_LAYER_GZIP, "announces gzip but the content is zstd"),
    "gzip under zstd": (lambda t: ob.gz(t), "application/vnd.oci.image.layer.v1.tar+zstd",
                        "announces zstd but the content is gzip"),
    "tar under gzip": (lambda t: t, ob.DOCKER_LAYER_GZIP, "announces gzip but the content is not compressed"),
    "gzip under tar": (lambda t: ob.gz(t), ob.OCI_LAYER, "announces none but the content is gzip"),
    # docker's DecompressStream reads these two as well, whatever the media type; no layer is either
    "xz under gzip": (lambda t: lzma.compress(t), ob.OCI_LAYER_GZIP, "announces gzip but the content is xz-compressed"),
    "bzip2 under tar": (lambda t: bz2.compress(t), ob.OCI_LAYER, "bzip2-compressed, which a layer never is"),
}


@pytest.mark.parametrize("case", sorted(MEDIA_LIES))
def test_a_layer_whose_bytes_are_not_its_media_types_is_refused_on_every_path(reg, registry_env, tmp_path, case):  # noqa: F811
    """Bytes of another compression than the descriptor's media type: umoci refuses all four
    ("gzip: invalid header", "blob is not correct mediatype"), docker and containerd sniff the
    compression of a compressed type; lamina refuses them by name on every path
    (tests/CONFORMANCE.md)."""
    make, media_type, message = MEDIA_LIES[case]
    blob = make(A)
    results = run_paths(tmp_path / "paths", [ob.Shipped(blob, A, media_type)])
    for path, r in results.items():
        assert isinstance(r, Exception) and message in str(r), (path, r)
    layout = layout_image(tmp_path / "layout", [dict(blob=blob, media_type=media_type)], [ob.sha256(A)])
    repo = "mt" + case.replace(" ", "")
    push_image(reg.host, repo, "t", [dict(blob=blob, media_type=media_type)], [ob.sha256(A)])
    every_way_refuses(tmp_path, reg.host, f"{repo}:t", layout, [message, ob.sha256(blob)])


# a plain tar whose first member is named with gzip's or zstd's magic bytes
MAGIC_NAMES = {"gzip": b"\x1f\x8b\x08-named-like-gzip", "zstd": b"\x28\xb5\x2f\xfd-named-like-zstd"}


@pytest.mark.parametrize("magic", sorted(MAGIC_NAMES))
def test_a_plain_tar_named_with_a_compressions_magic_is_read_as_its_media_type_says(tmp_path, magic):
    """A tar's first bytes are its first member's name: a name that starts with gzip's (or
    zstd's) magic made lamina refuse the layer ("media type ...tar announces none but the
    content is gzip"), where GNU tar, bsdtar, umoci and containerd (which pick the reader by
    a plain ``tar`` media type) read it.  A valid first tar header under a ``tar`` media type
    is a tar, on every path and when the image is saved again."""
    from conftest import require_tool
    from tarbuild import Tar
    require_tool("umoci")
    name = MAGIC_NAMES[magic]
    raw = Tar().file(name, b"x").file("ok", b"y").bytes()
    gnu = subprocess.run(["tar", "--quoting-style=literal", "-tf", "-"], input=raw, capture_output=True, check=True).stdout
    assert gnu.split(b"\n")[:2] == [name, b"ok"]
    layer = ob.Shipped(raw, raw, ob.OCI_LAYER)
    results = run_paths(tmp_path / "paths", [layer])
    results["umoci"] = umoci_tree(tmp_path / "paths", [layer])
    tree = assert_agree(results)
    assert tree is not None and {os.fsdecode(name), "ok"} <= set(tree.entries), results
    # saved from the store (its layer blob read back as the tar it is) and loaded again
    root, saved = tmp_path / "paths" / "store", tmp_path / "saved.tar"
    for args in (("--root", root, "save", "img:1", "-o", saved), ("--root", tmp_path / "again", "load", "-i", saved),
                 ("--root", tmp_path / "again", "unpack", "img:1", tmp_path / "again-out")):
        r = cli(*args)
        assert r.returncode == 0, (args, r.stderr)
    assert (tmp_path / "again-out" / os.fsdecode(name)).read_bytes() == b"x"
    for store in (root, tmp_path / "again"):
        assert check(Store(store)).findings == []


def _gzip_spelling_a_tar_header(payload):
    """A gzip stream of ``payload`` whose header's FEXTRA field makes its first 512 bytes a
    valid tar header too: GNU tar reads a tar of one file (and then garbage), gzip ``payload``."""
    import struct
    import zlib
    from tarbuild import header
    extra_len = 600
    block = bytearray(b"\x1f\x8b\x08\x04" + bytes(6) + struct.pack("<H", extra_len))
    block += bytes(512 - len(block))
    tar = header("ignored")  # mode, sizes, magic, checksum taken from a real header's fields
    block[100:512] = tar[100:512]
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = raw.compress(payload) + raw.flush()
    return (bytes(block) + bytes(12 + extra_len - 512) + body
            + struct.pack("<II", zlib.crc32(payload), len(payload) & 0xFFFFFFFF))


def test_bytes_both_a_tar_header_and_a_gzip_stream_stay_gzip_under_a_tar_media_type(tmp_path):
    """The other side of the rule above: a first block that is a tar header and also a gzip
    header its decoder reads would be two trees (docker's sniffed gzip, GNU tar's tar), so
    such a blob under a ``tar`` media type is refused as the gzip it decodes as."""
    import gzip
    import lamina
    from lamina.compression import _is_tar_header
    blob = _gzip_spelling_a_tar_header(A)
    assert _is_tar_header(blob[:512]) and gzip.decompress(blob) == A
    path = tmp_path / "layer"
    path.write_bytes(blob)
    with pytest.raises(lamina.errors.CompressionError, match="announces none but the content is gzip"):
        lamina.apply_layer(path, tmp_path / "out", media_type=ob.OCI_LAYER)
    # with no media type to go by, it is the gzip it decodes as, as docker's sniffing reads it
    lamina.apply_layer(path, tmp_path / "sniffed")
    assert (tmp_path / "sniffed" / "d" / "x").read_bytes() == b"x\n"


# --------------------------------------------------------------------------------------------
# a registry's answers around a blob


@pytest.fixture
def big_image(reg):  # noqa: F811
    """A layer of 1 MiB of random bytes (stored, not compressed: a cut at 256 KiB is a resume)."""
    from registryfixture import fast_random
    raw = ob.tar_bytes({"big": fast_random(1 << 20, 7)})
    push_image(reg.host, "ranges", "t", [dict(blob=raw, media_type=ob.OCI_LAYER)], [ob.sha256(raw)])
    return raw


@pytest.fixture
def proxy(reg):  # noqa: F811
    p = FaultProxy(reg.host)
    yield p
    p.stop()


@pytest.mark.parametrize("answer", ["starts before", "starts after", "right range, other bytes"])
def test_a_resumed_blob_the_registry_answers_wrongly_is_refused_and_not_stored(proxy, big_image, registry_env, answer):  # noqa: F811
    """The first GET is cut at 256 KiB; the resume (``Range: bytes=262144-``) is answered with a
    206 whose Content-Range starts elsewhere, or the right range of other bytes.  The first two
    are refused as they arrive, naming the blob and the range; the third by the blob's digest,
    after the one fresh download a mismatch earns (answered the same).  Nothing is stored."""
    digest, size, cut = ob.sha256(big_image), len(big_image), 256 << 10
    start = {"starts before": cut - 512, "starts after": cut + 512}.get(answer, cut)
    body = big_image[start:] if answer != "right range, other bytes" else bytes(size - cut)
    proxy.add("cut", method="GET", path=f"/blobs/{digest}", after=cut, times=1)
    proxy.add("respond", method="GET", path=f"/blobs/{digest}", code=206, body=body, times=None,
              headers={"Content-Range": f"bytes {start}-{size - 1}/{size}"})
    store = registry_env / "root"
    line = refused(cli("pull", f"{proxy.host}/ranges:t", root=store))
    assert digest in line, line
    if answer == "right range, other bytes":
        # the fresh download asks from byte 0 and is answered from 262144: refused by its range
        assert "digest mismatch" in line or f"asked for bytes from 0, got Content-Range 'bytes {cut}-" in line, line
    else:
        assert f"asked for bytes from {cut}, got Content-Range 'bytes {start}-" in line, line
    assert not Store(store).has_blob(digest)
    no_fsck_errors(store)


@pytest.mark.parametrize("fault", ["not found", "other bytes", "server error"])
def test_a_pull_names_the_layer_whose_blob_the_registry_fails(reg, proxy, registry_env, fault):  # noqa: F811
    """The registry fails the second layer's blob: a 404, the blob's length of other bytes, a
    500 (after the retries).  The download names the blob by its digest alone ("blob sha256:…
    not found in REPO"), and only a full disk's error was given the layer's place: every such
    error says "layer 2 of 2" now, as unpack and a refused extraction say it."""
    low, high = ob.tar_bytes({"a": b"A\n"}), ob.tar_bytes({"b": bytes(range(256)) * 16})
    layers = [dict(blob=low, media_type=ob.OCI_LAYER), dict(blob=high, media_type=ob.OCI_LAYER)]
    push_image(reg.host, "placed", "t", layers, [ob.sha256(low), ob.sha256(high)])
    path = f"/blobs/{ob.sha256(high)}"
    if fault == "not found":
        proxy.add("status", method="GET", path=path, code=404, times=None)
    elif fault == "server error":
        proxy.add("status", method="GET", path=path, code=500, times=None)
    else:
        proxy.add("corrupt", method="GET", path=path, offset=1024, times=None)  # inside the file's data
    store = registry_env / "root"
    line = refused(cli("pull", f"{proxy.host}/placed:t", root=store, timeout=300))
    assert "layer 2 of 2: " in line and ob.sha256(high) in line, line
    no_fsck_errors(store)
    line = refused(cli("unpack", f"docker://{proxy.host}/placed:t", registry_env / "dest", timeout=300))
    assert "layer 2 of 2" in line and ob.sha256(high) in line, line


def test_a_redirect_loop_is_a_clear_error(proxy, big_image, registry_env):  # noqa: F811
    """Every blob GET redirected back to itself: stopped after 10 hops, naming the URL."""
    proxy.add("redirect", method="GET", path="/blobs/", to=f"http://{proxy.host}", times=None)
    store = registry_env / "root"
    line = refused(cli("pull", f"{proxy.host}/ranges:t", root=store, timeout=60))
    assert "more than 10 redirects" in line and "/blobs/" in line, line
    no_fsck_errors(store)


def test_a_401_on_every_blob_request_is_a_clear_error(proxy, big_image, registry_env):  # noqa: F811
    """The manifest is served, then every blob GET answers 401 Basic: one error asking for a
    login, not a retry loop."""
    proxy.add("respond", path="/blobs/", code=401, times=None, headers={"WWW-Authenticate": 'Basic realm="x"'})
    store = registry_env / "root"
    line = refused(cli("pull", f"{proxy.host}/ranges:t", root=store, timeout=60))
    assert "authentication required" in line and proxy.host in line, line
    assert len(proxy.requests_for("/blobs/", "GET")) <= 4, proxy.requests_for("/blobs/")
    no_fsck_errors(store)


# --------------------------------------------------------------------------------------------
# an error listing what an image offers, when it offers thousands


def _many_platforms_layout(root, n):
    """An index of ``n`` images (one shared layer and config), linux/arm64/v0 .. v{n-1}."""
    lay = ob.Layout(root)
    gz = ob.gz(A)
    lay.blob(gz)
    config = lay.json_blob({"architecture": "arm64", "os": "linux", "config": {},
                            "rootfs": {"type": "layers", "diff_ids": [ob.sha256(A)]}}, ob.OCI_CONFIG)
    manifests = []
    for i in range(n):
        data = ob.dumps({"schemaVersion": 2, "mediaType": ob.OCI_MANIFEST, "config": config,
                         "layers": [ob.desc(ob.OCI_LAYER_GZIP, gz)], "annotations": {"n": str(i)}})
        manifests.append((data, ob.with_platform(ob.desc(ob.OCI_MANIFEST, data), "linux", "arm64", f"v{i}")))
        lay.blob(data)
    return lay, config, gz, manifests


def test_an_error_listing_thousands_of_choices_stays_a_short_line(reg, registry_env, tmp_path):  # noqa: F811
    """"no image for platform ...; available: ..." listed every platform of the index, "no image
    named ...; available: ..." every name of the layout or archive: an index of 3,000 platforms
    made a line of 50 KB, a 4 MiB one of some 400 KB (docker and skopeo name none of them).
    The first 20 are listed now, and how many more there are."""
    n = 3000
    lay, config, gz, manifests = _many_platforms_layout(tmp_path / "plats", n)
    lay.add(lay.index([d for _, d in manifests]), "img")
    line = refused(cli("unpack", "--platform", "linux/s390x", f"oci:{lay.root}:img", tmp_path / "out"))
    assert "linux/arm64/v0" in line and f"and {n - 20} more" in line and len(line) < 2000, line[:300]
    names = ob.Layout(tmp_path / "names")
    d = names.image([{"a": b"a"}])
    for i in range(n):
        names.entries.append(dict(d, annotations={"org.opencontainers.image.ref.name": f"v{i}"}))
    names.write_index()
    line = refused(cli("unpack", f"oci:{names.root}:nope", tmp_path / "out"))
    assert f"and {n - 20} more" in line and len(line) < 2000, line[:300]
    archive = tmp_path / "many-tags.tar"
    ob.legacy_docker_save(archive, [{"a": b"a"}], repo_tags=[f"example/app:{i}" for i in range(n)])
    line = refused(cli("unpack", f"docker-archive:{archive}:example/app:nope", tmp_path / "out"))
    assert f"and {n - 20} more" in line and len(line) < 2000, line[:300]
    # a registry's index (fewer: each manifest is pushed)
    few = 60
    with open(lay.path(config["digest"]), "rb") as f:
        config_bytes = f.read()
    for blob in (gz, config_bytes):
        _push_blob(reg.host, "plats", blob)
    for data, _ in manifests[:few]:
        status, body = _push_manifest(reg.host, "plats", ob.sha256(data), data, ob.OCI_MANIFEST)
        assert status == 201, body
    index = ob.dumps({"schemaVersion": 2, "mediaType": ob.OCI_INDEX, "manifests": [d for _, d in manifests[:few]]})
    status, body = _push_manifest(reg.host, "plats", "t", index, ob.OCI_INDEX)
    assert status == 201, body
    for args, root in ((["pull", "--platform", "linux/s390x", f"{reg.host}/plats:t"], tmp_path / "store"),
                       (["unpack", "--platform", "linux/s390x", f"docker://{reg.host}/plats:t", tmp_path / "out"], None)):
        line = refused(cli(*args, root=root))
        assert f"and {few - 20} more" in line and len(line) < 2000, line[:300]
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# a layout's oci-layout version


@pytest.mark.parametrize("version, accepted", [('"1.0.0"', True), ('"1.1.0"', True), ('"1.0.0-rc1"', True),
                                               ('"2.0.0"', False), ('"0.9"', False), ('""', False),
                                               ("null", False), ("1", False)])
def test_a_layout_version_of_another_major_is_refused_on_every_way_in(tmp_path, version, accepted):
    """``imageLayoutVersion``: lamina reads a layout of major version 1 and refuses any other
    (or a version that is no string), in a directory and in an oci-archive, for unpack, copy
    and load alike; umoci takes exactly "1.0.0" and skopeo does not look (tests/CONFORMANCE.md)."""
    lay = ob.Layout(tmp_path / "lay")
    lay.add(lay.image([{"a": b"a\n"}]), "img", **{"io.containerd.image.name": "docker.io/x/app:1"})
    (tmp_path / "lay" / "oci-layout").write_text('{"imageLayoutVersion": %s}' % version)
    archive = tmp_path / "a.tar"
    subprocess.run(["tar", "-C", lay.root, "-cf", archive, "."], check=True)
    runs = {"unpack oci:": cli("unpack", f"oci:{lay.root}:img", tmp_path / "d1"),
            "unpack oci-archive:": cli("unpack", f"oci-archive:{archive}:img", tmp_path / "d2"),
            "copy": cli("copy", f"oci:{lay.root}:img", "x:1", root=tmp_path / "s1"),
            "load": cli("load", "-i", archive, root=tmp_path / "s2")}
    for way, proc in runs.items():
        if accepted:
            assert proc.returncode == 0, (way, proc.stderr)
        else:
            line = refused(proc)
            assert "unsupported imageLayoutVersion" in line, (way, line)
    if not accepted:
        assert not (tmp_path / "d1").exists() and not (tmp_path / "d2").exists()
        for root in ("s1", "s2"):
            no_fsck_errors(tmp_path / root)
