import os
from collections import namedtuple

import pytest

import ocibuild as ob
from conftest import X86_LEVEL_FLAGS
from lamina import mediatypes as mt
from lamina.errors import InvalidReferenceError, PlatformNotFoundError, UnsupportedMediaTypeError
from lamina.oci.layout import open_layout_dir
from lamina.platform import Platform, machine_to_arch


@pytest.mark.parametrize("spec, expected", [
    ("linux/amd64", "linux/amd64"),
    ("linux/x86_64", "linux/amd64"),
    ("linux/amd64/v1", "linux/amd64"),
    ("linux/amd64/v3", "linux/amd64/v3"),
    ("linux/arm64", "linux/arm64/v8"),
    ("linux/aarch64", "linux/arm64/v8"),
    ("linux/arm64/v8", "linux/arm64/v8"),
    ("linux/arm64/8", "linux/arm64/v8"),
    ("linux/arm", "linux/arm/v7"),
    ("linux/arm/7", "linux/arm/v7"),
    ("linux/arm/v6", "linux/arm/v6"),
    ("linux/armhf", "linux/arm/v7"),
    ("linux/armel", "linux/arm/v6"),
    ("linux/i386", "linux/386"),
    ("Linux/AMD64", "linux/amd64"),
    ("linux/s390x", "linux/s390x"),
    ("windows/amd64", "windows/amd64"),
    ("arm64", "linux/arm64/v8"),
])
def test_parse_and_normalize(spec, expected):
    assert str(Platform.parse(spec)) == expected


def test_lone_os_takes_host_arch():
    assert Platform.parse("linux") == Platform.host()


@pytest.mark.parametrize("bad", ["", "linux/", "/amd64", "linux/amd64/v8/x", "linux amd64", "linux/am:d64", None, 3])
def test_parse_rejects_malformed(bad):
    with pytest.raises(InvalidReferenceError):
        Platform.parse(bad)


@pytest.mark.parametrize("bad, why", [
    ("linux/../x", "architecture '..' is dots alone"),
    ("linux/.", "architecture '.' is dots alone"),
    ("..", "os or architecture '..' is dots alone"),
    ("linux//amd64", "empty architecture"),
    ("/amd64", "empty os"),
    ("linux/amd64/", "empty variant"),
    ("a" * 300 + "/amd64", "os of 300 characters (at most 64)"),
    ("linux/amd64/" + "v" * 300, "variant of 300 characters (at most 64)"),
    ("linux/\u00e4md64", "architecture '\u00e4md64' has characters other than"),
    ("linux/amd\u0660", "architecture 'amd\u0660' has characters other than"),   # a digit to str.isdigit
    ("linux/amd64\x1b[2J", "architecture 'amd64\\x1b[2J' has characters other than"),
])
def test_parse_says_which_part_is_wrong(bad, why):
    """--platform linux/../x, a part of 300 characters and a NUL or escape sequence were taken as
    they came (only a few shapes were refused, with "expected os/arch[/variant]" alone): each is
    refused naming the part and why, and a long value is cut in the message."""
    with pytest.raises(InvalidReferenceError) as e:
        Platform.parse(bad)
    assert why in str(e.value), str(e.value)
    assert len(str(e.value)) < 300, str(e.value)


def test_equality_after_normalization():
    assert Platform("linux", "arm64") == Platform("linux", "aarch64", "v8")
    assert Platform("linux", "arm") == Platform("linux", "arm", "v7")
    assert Platform("linux", "arm") != Platform("linux", "arm", "v6")
    assert Platform("linux", "amd64") != Platform("linux", "arm64")
    assert Platform.parse("linux/arm64").matches("linux/aarch64/v8")
    assert not Platform.parse("linux/arm/v7").matches("linux/arm/v6")
    assert Platform.from_dict({"os": "linux", "architecture": "arm64"}) == Platform("linux", "arm64", "v8")
    with pytest.raises(ValueError):
        Platform.from_dict({"os": "linux"})


@pytest.mark.parametrize("machine, expected", [
    ("x86_64", "linux/amd64"), ("aarch64", "linux/arm64/v8"), ("armv7l", "linux/arm/v7"),
    ("armv6l", "linux/arm/v6"), ("i686", "linux/386"), ("ppc64le", "linux/ppc64le"), ("s390x", "linux/s390x"),
    ("riscv64", "linux/riscv64"),
])
def test_host_from_uname(monkeypatch, machine, expected):
    Uname = namedtuple("Uname", "sysname nodename release version machine")
    monkeypatch.setattr(os, "uname", lambda: Uname("Linux", "h", "6", "#1", machine))
    assert str(Platform.host()) == expected
    assert machine_to_arch(machine) == (Platform.host().architecture, Platform.host().variant)


def test_host_is_this_machine():
    expected = {"x86_64": "linux/amd64", "aarch64": "linux/arm64/v8"}.get(os.uname().machine)
    if expected is None:
        pytest.skip(f"no expectation for {os.uname().machine}")
    assert str(Platform.host()) == expected


def test_compatible_order_follows_containerd():
    # containerd's platformVector: arm64/vN runs arm/vN and what arm/vN runs (lamina left out
    # arm/v8, and gave arm64/v9 nothing but itself)
    assert [str(p) for p in Platform.parse("linux/arm64").compatible()] == [
        "linux/arm64/v8", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
    assert [str(p) for p in Platform.parse("linux/arm64/v9").compatible()] == [
        "linux/arm64/v9", "linux/arm/v9", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
    assert [str(p) for p in Platform.parse("linux/arm/v7").compatible()] == [
        "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
    assert [str(p) for p in Platform.parse("linux/amd64/v3").compatible()] == [
        "linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386"]
    assert [str(p) for p in Platform.parse("linux/s390x").compatible()] == ["linux/s390x"]


@pytest.mark.parametrize("flags, expected", [
    (X86_LEVEL_FLAGS["v1"], "linux/amd64"),
    (X86_LEVEL_FLAGS["v2"], "linux/amd64/v2"),
    (X86_LEVEL_FLAGS["v3"], "linux/amd64/v3"),
    (X86_LEVEL_FLAGS["v4"], "linux/amd64/v4"),
    (X86_LEVEL_FLAGS["v3"].replace(" abm", ""), "linux/amd64/v2"),           # no LZCNT: not v3
    (X86_LEVEL_FLAGS["v2"] + " avx512f avx512bw avx512cd avx512dq avx512vl", "linux/amd64/v2"),  # levels build up
    (X86_LEVEL_FLAGS["v4"].replace(" avx512vl", ""), "linux/amd64/v3"),
    (None, "linux/amd64"),
])
def test_the_native_platform_of_an_x86_64_machine_has_its_cpus_level(x86_cpu, flags, expected):
    """docker matches an index against this machine's x86-64 level (go-archvariant: moby#43434, and
    moby#52773 for its containerd image store); lamina took every x86_64 machine for amd64/v1."""
    x86_cpu(flags)
    assert str(Platform.native()) == expected
    # --platform linux and the host (containerd's DefaultSpec) stay amd64: a lone os asks for no level
    assert Platform.host() == Platform.parse("linux") == Platform("linux", "amd64")


def _levels_layout(root, variants):
    lay = ob.Layout(root)
    entries = []
    for variant in variants:
        m = lay.image([{"level": (variant or "v1").encode()}], arch="amd64", variant=variant)
        entries.append(ob.with_platform(m, "linux", "amd64", variant))
    lay.add(lay.index(entries), "latest")
    return str(root)


def _chosen_level(root, platform=None):
    return str(open_layout_dir(root).resolve(platform).platform)


@pytest.mark.parametrize("cpu, variants, expected", [
    ("v3", [None, "v2", "v3", "v4"], "linux/amd64/v3"),   # the best level the CPU runs, wherever listed
    ("v3", ["v4", "v3", None], "linux/amd64/v3"),
    ("v4", [None, "v2"], "linux/amd64/v2"),
    ("v4", [None, "v4"], "linux/amd64/v4"),
    ("v1", ["v4", "v3", None], "linux/amd64"),
    ("v2", ["v3"], None),                                  # a level above the CPU's is never run
    ("v4", ["v3"], "linux/amd64/v3"),                      # an index of one level (moby#52751)
])
def test_an_index_of_amd64_levels_is_matched_by_the_cpus_level(tmp_path, x86_cpu, cpu, variants, expected):
    """As docker picks (moby#52751: a v3-only image on a v4 machine was "no matching manifest"):
    the highest level the CPU runs, then the levels below, then plain amd64 and 386; --platform
    names one exactly."""
    x86_cpu(X86_LEVEL_FLAGS[cpu])
    root = _levels_layout(tmp_path / "layout", variants)
    if expected is None:
        with pytest.raises(PlatformNotFoundError) as e:
            _chosen_level(root)
        assert "no image for platform linux/amd64/v2; available: linux/amd64/v3" in str(e.value)
    else:
        assert _chosen_level(root) == expected
    if None in variants:
        assert _chosen_level(root, "linux/amd64") == "linux/amd64"


def test_a_store_image_chosen_at_the_cpus_level_is_unpacked_for_plain_amd64(tmp_path, x86_cpu):
    """A copy without --platform keeps the CPU's level (amd64/v3) and not the plain build beside
    it, so ``unpack --platform linux/amd64 NAME`` (and mount, bundle) must take that image, as it
    did when the store held plain amd64; a level asked for by name stays exact."""
    from lamina.errors import ImageError
    from lamina.store import Store
    from lamina.store.materialize import materialize
    from lamina.transports import copy
    x86_cpu(X86_LEVEL_FLAGS["v3"])
    root = _levels_layout(tmp_path / "layout", [None, "v3"])
    store = Store(tmp_path / "store")
    copy(f"oci:{root}:latest", "img:1", store=store)
    assert str(store.resolve("img:1").platform) == "linux/amd64/v3"
    for asked in ("linux/amd64", "linux/amd64/v3", "linux"):
        dest = tmp_path / asked.replace("/", "-")
        materialize(store, "img:1", dest, platform=asked)
        assert (dest / "level").read_bytes() == b"v3"
    for asked in ("linux/amd64/v2", "linux/arm64", "linux/386"):
        with pytest.raises(ImageError, match="is linux/amd64/v3, not "):
            materialize(store, "img:1", tmp_path / "no", platform=asked)
    store.close()


def test_an_index_nested_under_a_platform_is_matched_by_the_same_levels(tmp_path, x86_cpu):
    """An index entry labelled linux/amd64 that is itself an index of linux/amd64 and
    linux/amd64/v3: containerd's images.Manifest applies its one matcher at every level, so a v3
    CPU gets the v3 image inside; lamina chose inside by the label's platform alone (plain amd64).
    --platform stays exact at every level."""
    x86_cpu(X86_LEVEL_FLAGS["v3"])
    lay = ob.Layout(tmp_path / "layout")
    v1 = lay.image([{"level": b"v1"}])
    v3 = lay.image([{"level": b"v3"}], variant="v3")
    inner = lay.index([ob.with_platform(v1, "linux", "amd64"), ob.with_platform(v3, "linux", "amd64", "v3")])
    lay.add(lay.index([ob.with_platform(inner, "linux", "amd64")]), "latest")
    assert open_layout_dir(lay.root).resolve().manifest_digest == v3["digest"]
    assert open_layout_dir(lay.root).resolve("linux/amd64").manifest_digest == v1["digest"]


@pytest.mark.parametrize("media_type, compression", [
    (mt.OCI_LAYER, "none"), (mt.OCI_LAYER_GZIP, "gzip"), (mt.OCI_LAYER_ZSTD, "zstd"),
    (mt.OCI_LAYER_NONDISTRIBUTABLE_GZIP, "gzip"), (mt.OCI_LAYER_NONDISTRIBUTABLE_ZSTD, "zstd"),
    (mt.DOCKER_LAYER_GZIP, "gzip"), (mt.DOCKER_LAYER_FOREIGN_GZIP, "gzip"), (mt.DOCKER_LAYER, "none"),
    (mt.DOCKER_LAYER_ZSTD, "zstd"),
])
def test_layer_compression(media_type, compression):
    assert mt.layer_compression(media_type) == compression


@pytest.mark.parametrize("bad", [
    mt.OCI_MANIFEST, mt.OCI_CONFIG, "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
    "application/octet-stream", "", None,
])
def test_layer_compression_refuses_non_layers(bad):
    with pytest.raises(UnsupportedMediaTypeError):
        mt.layer_compression(bad)


def test_schema1_detection():
    assert mt.is_schema1(mt.DOCKER_SCHEMA1_SIGNED_MANIFEST)
    assert mt.is_schema1(None, {"schemaVersion": 1, "fsLayers": []})
    assert not mt.is_schema1(mt.OCI_MANIFEST, {"schemaVersion": 2})
    assert mt.is_index(mt.DOCKER_MANIFEST_LIST) and mt.is_manifest(mt.DOCKER_MANIFEST)
