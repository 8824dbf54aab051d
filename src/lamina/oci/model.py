"""Parsed, validated image documents: descriptors, indexes, manifests, configs.

Everything here works on bytes already read (and digest-checked) by a blob
store; the parsers only check structure and say which blob was wrong.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from dataclasses import dataclass, field
from typing import Optional

from .. import digest as _digest
from .. import mediatypes as mt
from ..errors import ArtifactError, ImageError, PlatformNotFoundError, UnsupportedMediaTypeError
from ..limits import DEFAULT_LIMITS, check_layer_count
from ..platform import Platform
from ..timefmt import go_reads_time

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
# buildkit puts provenance/SBOM manifests in image indexes with platform unknown/unknown.
ANNOTATION_DOCKER_REFERENCE_TYPE = "vnd.docker.reference.type"


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Optional[Platform] = None
    annotations: dict = field(default_factory=dict, hash=False, compare=False)
    urls: tuple = ()
    # image-spec 1.1's embedded content ("data"), verified against digest and size as parsed: a
    # reader takes it instead of fetching the blob (containerd's fetcher does the same)
    data: Optional[bytes] = field(default=None, hash=False, compare=False, repr=False)

    @property
    def ref_names(self):
        """Names this descriptor is known by in an index (OCI ref name, containerd image name)."""
        return [self.annotations[k] for k in (ANNOTATION_REF_NAME, ANNOTATION_CONTAINERD_NAME)
                if isinstance(self.annotations.get(k), str)]

    @property
    def is_attestation(self):
        if self.annotations.get(ANNOTATION_DOCKER_REFERENCE_TYPE) == "attestation-manifest":
            return True
        return self.platform is not None and self.platform.os == "unknown" and self.platform.architecture == "unknown"


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: list


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: list


@dataclass(frozen=True)
class Config:
    raw: dict
    diff_ids: list
    platform: Optional[Platform]


EMPTY_DIGEST = _digest.sha256_bytes(b"")
# Descriptor sizes are int64 in the image-spec (Go's encoding/json refuses anything larger).
MAX_SIZE = (1 << 63) - 1
# RFC 6838 type/subtype, which the image-spec requires of every mediaType and artifactType.
_MEDIA_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")

# The fields of each document lamina reads.  Go's encoding/json matches object keys to struct
# fields case-insensitively, so a "MediaType" or "LAYERS" key is the real field to containerd and
# docker but an unknown extra to lamina: refused, so both sides read the same document.
DESCRIPTOR_FIELDS = ("mediaType", "digest", "size", "urls", "annotations", "data", "platform", "artifactType")
MANIFEST_FIELDS = ("schemaVersion", "mediaType", "artifactType", "config", "layers", "subject", "annotations",
                   "manifests")
PLATFORM_FIELDS = ("architecture", "os", "os.version", "os.features", "variant", "features")
CONFIG_FIELDS = ("rootfs", "os", "architecture", "variant", "os.version", "os.features", "created", "author",
                 "config", "history", "parent", "comment", "docker_version")
ROOTFS_FIELDS = ("type", "diff_ids")
EXEC_FIELDS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels",
               "StopSignal", "ArgsEscaped", "Healthcheck", "OnBuild", "Shell")
HISTORY_FIELDS = ("created", "author", "created_by", "comment", "empty_layer")
# docker's HealthConfig (inspect shows it; docker runs it)
HEALTHCHECK_FIELDS = ("Test", "Interval", "Timeout", "StartPeriod", "StartInterval", "Retries")


class _Refused(ValueError):
    pass


def _unique_keys(pairs):
    # Duplicate keys are a parser differential (Go keeps the last, others the first): refuse them.
    doc = dict(pairs)   # (in C: a config's history can hold 100,000s of objects)
    if len(doc) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"duplicate key {key!r}")
            seen.add(key)
    return doc


def _no_constant(name):
    raise _Refused(f"{name} is not JSON")


# A \uD800-\uDFFF escape: a lone one is a surrogate Python keeps in the str (and writes out
# escaped again), Go reads as U+FFFD and Rust's serde refuses.
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(doc):
    """The place ("manifests[0].annotations") of a string or key holding a lone surrogate, or None
    (a walk of every string: done once one is known to be there)."""
    stack = [(doc, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if _SURROGATE_RE.search(value):
                return where or "the document"
        elif isinstance(value, dict):
            for k, v in value.items():
                place = f"{where}.{k}" if where else k
                if _SURROGATE_RE.search(k):
                    return f"a key of {where or 'the document'}"
                stack.append((v, place))
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(value))
    return None


def _holds_surrogate(doc):
    # json's C encoder writes the whole document at once; only a surrogate fails its encoding
    try:
        json.dumps(doc, ensure_ascii=False, check_circular=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except RecursionError:
        return _lone_surrogate(doc) is not None
    return False


def decode_json(data, what):
    """Decode a JSON document strictly: UTF-8 only (no BOM), no duplicate keys, no NaN/Infinity,
    no lone surrogates (\\ud800 without its pair)."""
    try:
        text = bytes(data).decode("utf-8") if isinstance(data, (bytes, bytearray, memoryview)) else data
        doc = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        if _SURROGATE_ESCAPE_RE.search(text) and _holds_surrogate(doc):
            where = _lone_surrogate(doc)
            raise _Refused(f"a lone surrogate escape in {ascii(where)[1:-1]} (Go readers read it as U+FFFD, "
                           "others keep or refuse it)")
        return doc
    except UnicodeDecodeError as e:
        raise ImageError(f"{what}: invalid JSON: not UTF-8 ({e.reason} at byte {e.start})") from None
    except ValueError as e:
        raise ImageError(f"{what}: invalid JSON: {e}") from None
    except RecursionError:
        raise ImageError(f"{what}: invalid JSON: nested too deeply") from None


def load_json(data, what):
    """Decode a JSON object (strictly, see decode_json), naming ``what`` if it is not one."""
    doc = decode_json(data, what)
    if not isinstance(doc, dict):
        raise ImageError(f"{what}: expected a JSON object, got {type(doc).__name__}")
    return doc


@functools.lru_cache(maxsize=None)
def _folded_fields(fields):
    return frozenset(fields), {f.casefold(): f for f in fields}


def check_field_spelling(obj, fields, what):
    """Refuse keys that only differ in case from a field lamina reads (see MANIFEST_FIELDS)."""
    exact, folded = _folded_fields(fields)
    for key in obj:
        if key in exact:
            continue   # the common case, without a casefold per key (a history of 100,000 steps)
        field_name = folded.get(key.casefold())
        if field_name is not None and key != field_name:
            raise ImageError(f"{what}: key {key!r} is not {field_name!r} (keys are case-sensitive here,"
                             f" but Go readers would take it as {field_name!r})")


def _string_map(value, what, name):
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ImageError(f"{what}: {name} must be a map of strings")
    return value


def _media_type(value, what, name="mediaType"):
    if not isinstance(value, str) or not _MEDIA_TYPE_RE.fullmatch(value):
        raise ImageError(f"{what}: invalid {name} {value!r}")
    return value


def parse_descriptor(obj, what):
    if not isinstance(obj, dict):
        raise ImageError(f"{what}: descriptor is not a JSON object")
    check_field_spelling(obj, DESCRIPTOR_FIELDS, what)
    media_type = obj.get("mediaType")
    if media_type is None or media_type == "":
        raise ImageError(f"{what}: descriptor has no mediaType")
    _media_type(media_type, what)
    digest = _digest.validate(obj.get("digest"), what)
    what = f"{what} ({digest})"
    size = obj.get("size")
    # bool is an int subclass; a size of true is still malformed.
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
        raise ImageError(f"{what}: invalid size {size!r} (expected an integer from 0 to 2^63-1)")
    if size == 0 and digest != EMPTY_DIGEST:
        # no content of 0 bytes has this digest: said now, the read would only find "no data"
        # (unpack docker:// sniffed the compression of nothing and blamed the media type)
        raise ImageError(f"{what}: size 0, but that is not the digest of 0 bytes")
    platform = None
    if obj.get("platform") is not None:
        p = obj["platform"]
        if isinstance(p, dict):
            check_field_spelling(p, PLATFORM_FIELDS, f"{what} platform")
            _check_types(p, _PLATFORM_TYPES, f"{what} platform")
        why = None
        try:
            platform = Platform.from_dict(p, strict=True) if isinstance(p, dict) else None
        except ValueError as e:
            platform, why = None, str(e)
        if platform is None:
            if why is not None and not why.startswith("platform needs"):
                # the value may be long or hostile: the reason names it, cut and quoted
                raise ImageError(f"{what}: invalid platform: {why}")
            raise ImageError(f"{what}: invalid platform {p!r}")
    annotations = _string_map(obj.get("annotations"), what, "annotations")
    urls = obj.get("urls")
    if urls is not None and not (isinstance(urls, list) and all(isinstance(u, str) for u in urls)):
        raise ImageError(f"{what}: urls must be a list of strings")
    if obj.get("artifactType") is not None:
        _media_type(obj["artifactType"], what, "artifactType")
    data = _check_embedded_data(obj["data"], digest, size, what) if obj.get("data") is not None else None
    return Descriptor(media_type, digest, size, platform, annotations, tuple(urls or ()), data)


def _check_embedded_data(data, digest, size, what):
    # image-spec 1.1: embedded content MUST be verified against the digest and size before use;
    # and a descriptor that lies about its own bytes is not a valid one, used or not.
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else None
    except binascii.Error:
        raw = None
    if raw is None:
        raise ImageError(f"{what}: data is not base64")
    if len(raw) != size:
        raise ImageError(f"{what}: data is {len(raw)} bytes but the descriptor says {size}")
    actual = _digest.sha256_bytes(raw)
    if actual != digest:
        raise ImageError(f"{what}: data has digest {actual}")
    return raw


def document_media_type(doc, declared, what):
    """The media type of a manifest-or-index document, checked against its descriptor.

    Refuses schema1 with a clear message, and any document whose kind is ambiguous: a manifest
    that also carries ``manifests`` or an index that carries ``config``/``layers`` reads as a
    different image to different clients (CVE-2021-41190).  ``declared`` is the media type the
    document was announced with (descriptor or Content-Type; None for index.json).
    """
    if mt.is_schema1(declared, doc):
        raise UnsupportedMediaTypeError(f"{what}: {mt.SCHEMA1_MESSAGE}")
    check_field_spelling(doc, MANIFEST_FIELDS, what)
    version = doc.get("schemaVersion")
    if version != 2 or isinstance(version, (bool, float)):
        raise ImageError(f"{what}: unsupported schemaVersion {version!r} (expected 2)")
    inner = doc.get("mediaType")
    if inner is not None:
        _media_type(inner, what)
    if inner and declared and inner != declared:
        # image-spec: the descriptor and the content must agree, or the blob was swapped.
        raise ImageError(f"{what}: descriptor says {declared} but the document says {inner}")
    media_type = inner or declared
    is_index_shaped = "manifests" in doc
    is_manifest_shaped = "config" in doc or "layers" in doc
    if is_index_shaped and is_manifest_shaped:
        raise ImageError(f"{what}: carries both 'manifests' and 'config'/'layers': ambiguous between an index"
                         " and a manifest (CVE-2021-41190)")
    if not media_type:
        # OCI allows omitting mediaType; guess from the shape like containerd does.
        if is_index_shaped:
            media_type = mt.OCI_INDEX
        elif is_manifest_shaped:
            media_type = mt.OCI_MANIFEST
        else:
            raise ImageError(f"{what}: neither an image index nor a manifest")
    if media_type not in mt.INDEX_TYPES and media_type not in mt.MANIFEST_TYPES:
        raise UnsupportedMediaTypeError(f"{what}: unsupported media type {media_type!r}")
    if mt.is_manifest(media_type) and is_index_shaped:
        raise ImageError(f"{what}: a {media_type} that carries 'manifests' is ambiguous (CVE-2021-41190)")
    if mt.is_index(media_type) and is_manifest_shaped:
        raise ImageError(f"{what}: a {media_type} that carries 'config'/'layers' is ambiguous (CVE-2021-41190)")
    # Fields every reader of either kind may look at; they must be well-formed whatever lamina uses.
    if doc.get("artifactType") is not None:
        _media_type(doc["artifactType"], what, "artifactType")
    if doc.get("subject") is not None:
        parse_descriptor(doc["subject"], f"{what} subject")
    _string_map(doc.get("annotations"), what, "annotations")
    return media_type


def _go_list(doc, key):
    """``doc[key]``, a JSON ``null`` read as the empty list Go reads it as (Go writes an empty
    slice as null: BuildKit's export of an image of no layers has "layers": null and
    "diff_ids": null); a missing key stays None."""
    value = doc.get(key)
    return [] if value is None and key in doc else value


def parse_index(doc, media_type, what):
    manifests = _go_list(doc, "manifests")
    if not isinstance(manifests, list):
        raise ImageError(f"{what}: 'manifests' must be a list")
    return Index(media_type, [parse_descriptor(d, f"{what} manifests[{i}]") for i, d in enumerate(manifests)])


def index_entries(descs, open_index, platform_of, max_depth, what, depth=0):
    """(descriptor, platform) of each image an index offers, attestations left out and nested
    indexes without a platform walked into (``open_index(desc)`` parses one).

    Each digest is walked once (and each manifest listed once per platform): an index may list
    the same child index thousands of times, and walking every listing would cost that number
    to the power of the nesting depth, in memory and, from a registry, in requests."""
    out, seen = [], set()

    def walk(descs, depth):
        if depth > max_depth:
            raise ImageError(f"{what}: image indexes nested deeper than {max_depth}")
        for d in descs:
            key = (d.digest, d.platform)
            if d.is_attestation or key in seen:
                continue
            seen.add(key)
            if mt.is_index(d.media_type) and d.platform is None:
                walk(open_index(d).manifests, depth + 1)
            elif mt.is_index(d.media_type) or mt.is_manifest(d.media_type):
                platform = platform_of(d)
                if platform is not None and not (platform.os and platform.architecture):
                    platform = None   # a config of empty os and architecture (cosign's signatures) runs on none
                out.append((d, platform))
            elif d.media_type in mt.SCHEMA1_TYPES and d.platform is not None:
                # a Docker manifest list may name a schema1 manifest: kept, so that choosing its
                # platform says what it is rather than that the publisher built nothing for it
                out.append((d, d.platform))
            # Anything else in an index (artifacts, signatures) is not a runnable image: skip it.

    walk(descs, depth)
    return out


def choose_platform(descs, want, open_index, platform_of, max_depth, what, depth=0):
    """(descriptor, platform) of the manifest among ``descs`` (an index's) for ``want`` (a
    Platform, or None: this machine's native platform, with its compatible fallbacks), walking
    nested indexes.  The registry and the layouts choose with this one rule, so that one index
    gets one answer."""
    entries = index_entries(descs, open_index, platform_of, max_depth, what, depth)
    native = Platform.native() if want is None else None
    wanted = [want] if want is not None else native.compatible()
    for w in wanted:
        schema1 = None
        for d, p in entries:
            if p == w:
                if d.media_type in mt.SCHEMA1_TYPES:
                    schema1 = schema1 or d   # a schema2 image of the platform listed beside it wins
                    continue
                if mt.is_index(d.media_type):
                    # inside, by the same rule (containerd's one matcher at every level): the
                    # label says what the index is for, not which of its levels this CPU takes
                    return choose_platform(open_index(d).manifests, want, open_index, platform_of,
                                           max_depth, what, depth + 1)
                return d, p
        if schema1 is not None:
            raise UnsupportedMediaTypeError(f"{what}: manifest {schema1.digest} for {w}: {mt.SCHEMA1_MESSAGE}")
    # An index of one manifest that names no platform (an artifact, a config without one): that
    # manifest, which then says what it is ("an artifact of type ...") better than "available: none".
    unplatformed = [d for d, p in entries if p is None and mt.is_manifest(d.media_type)]
    if want is None and len(entries) == 1 and unplatformed:
        return unplatformed[0], None
    available = sorted({str(p) for _, p in entries if p is not None})
    raise PlatformNotFoundError(str(want or native), available)


def parse_manifest(doc, media_type, what, limits=DEFAULT_LIMITS):
    """``limits``: None for a manifest already in the store (gc must still see every blob of it)."""
    config = parse_descriptor(doc.get("config"), f"{what} config")
    if not mt.is_config(config.media_type, media_type):
        # Artifacts (Helm charts, signatures, SBOMs) use image manifests with other config types.
        # image-spec 1.1 names an artifact's type in artifactType when its config is the empty
        # descriptor: that type says what the user pulled, the empty config's says nothing.
        kind = doc.get("artifactType")
        if kind is not None:
            _media_type(kind, what, "artifactType")
            raise ArtifactError(f"{what}: an artifact of type {kind!r} (config media type "
                                f"{config.media_type!r}), not a container image")
        raise ArtifactError(
            f"{what}: config media type {config.media_type!r} is not a container image config"
            " (is this an artifact?)")
    layers = _go_list(doc, "layers")
    if not isinstance(layers, list):
        raise ImageError(f"{what}: 'layers' must be a list")
    if limits is not None:
        check_layer_count(len(layers), what, limits)
    parsed, first = [], {}
    for i, obj in enumerate(layers):
        desc = parse_descriptor(obj, f"{what} layers[{i}]")
        if desc.media_type not in mt.LAYER_TYPES:
            raise UnsupportedMediaTypeError(
                f"{what} layers[{i}] ({desc.digest}): unsupported layer media type {desc.media_type!r}")
        j = first.setdefault(desc.digest, i)
        if parsed[j:j + 1] and parsed[j].size != desc.size:
            # one blob, two sizes: at most one is true.  A pull fetches a blob once however often
            # it is listed, and checked the first listing's size only (the image was taken)
            raise ImageError(f"{what} layers[{i}] ({desc.digest}): size {desc.size}, but layers[{j}] lists "
                             f"the same blob with size {parsed[j].size}")
        parsed.append(desc)
    return Manifest(media_type, config, parsed)


def parse_config(data, what, layer_count):
    """Parse an image config and check rootfs.diff_ids against the manifest's layer count."""
    doc = load_json(data, what)
    check_field_spelling(doc, CONFIG_FIELDS, what)
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict):
        raise ImageError(f"{what}: missing rootfs")
    check_field_spelling(rootfs, ROOTFS_FIELDS, f"{what} rootfs")
    if rootfs.get("type") != "layers":
        raise ImageError(f"{what}: unsupported rootfs.type {rootfs.get('type')!r} (expected 'layers')")
    diff_ids = _go_list(rootfs, "diff_ids")
    if not isinstance(diff_ids, list):
        raise ImageError(f"{what}: rootfs.diff_ids must be a list")
    diff_ids = [_digest.validate(d, f"{what} rootfs.diff_ids[{i}]") for i, d in enumerate(diff_ids)]
    if len(diff_ids) != layer_count:
        raise ImageError(
            f"{what}: rootfs.diff_ids has {len(diff_ids)} entries but the image has {layer_count} layers")
    _check_config_types(doc, what)
    platform = None
    if isinstance(doc.get("os"), str) and isinstance(doc.get("architecture"), str):
        try:
            platform = Platform.from_dict(doc)
        except ValueError:
            platform = None
    return Config(doc, diff_ids, platform)


# The config fields lamina acts on (inspect, history, images, bundles) and the JSON type each has
# in the image-spec.  Go readers (containerd, umoci) refuse a config whose field has another type;
# lamina would otherwise act on it in its own way (an Entrypoint "sh" run as "s" "h", a User 0 that
# is no user name, a "config" list that no verb can read).
# _SET: Go's map[string]struct{}, each value an object (its keys ignored) or null
_STRING, _STRINGS, _STRING_MAP, _SET, _BOOL = "a string", "a list of strings", "a map of strings", \
    "an object of objects", "a boolean"
# a string Go's time.Time reads: one it does not fails the whole config in docker, containerd,
# umoci and skopeo ("parsing time"), where lamina showed the image as created at no known time
_TIME = "an RFC 3339 time"
_CONFIG_TYPES = {"created": _TIME, "author": _STRING, "os": _STRING, "architecture": _STRING,
                 "variant": _STRING, "os.version": _STRING, "os.features": _STRINGS}
# lamina does not match on these, but Go's unmarshalling of the whole index fails on another type
_PLATFORM_TYPES = {"os.version": _STRING, "os.features": _STRINGS}
_EXEC_TYPES = {"User": _STRING, "WorkingDir": _STRING, "StopSignal": _STRING, "Env": _STRINGS,
               "Entrypoint": _STRINGS, "Cmd": _STRINGS, "Labels": _STRING_MAP, "ExposedPorts": _SET,
               "Volumes": _SET, "ArgsEscaped": _BOOL}
_HISTORY_TYPES = {"created": _TIME, "author": _STRING, "created_by": _STRING, "comment": _STRING,
                  "empty_layer": _BOOL}


def _has_type(value, kind):
    if kind == _STRING:
        return isinstance(value, str)
    if kind == _TIME:
        return isinstance(value, str) and go_reads_time(value)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _STRINGS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == _STRING_MAP:
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    return isinstance(value, dict) and all(v is None or isinstance(v, dict) for v in value.values())


def _check_types(obj, types, what):
    for key, kind in types.items():
        value = obj.get(key)
        if kind in (_STRINGS, _STRING_MAP):
            _nulls_as_empty(value)
        if value is not None and not _has_type(value, kind):
            if kind == _TIME and not isinstance(value, str):
                kind = _STRING
            raise ImageError(f"{what}: {key} must be {kind}, not {json.dumps(value)[:60]}")


def _nulls_as_empty(value):
    """A null in a list or map of strings is "" to Go's encoding/json (docker, containerd, umoci
    read ``"Cmd": [null]`` as an argument "" and ``"Labels": {"a": null}`` as a label ""): read
    the same, every verb shows and runs what they do."""
    if isinstance(value, list):
        value[:] = ["" if v is None else v for v in value]
    elif isinstance(value, dict):
        for k, v in value.items():
            if v is None:
                value[k] = ""


def _plain_history_step(step):
    """Only fields lamina reads, each null or of its type: what the checks below would pass,
    decided by the step's own keys (a config's history can hold 100,000s of steps)."""
    for key, value in step.items():
        kind = _HISTORY_TYPES.get(key)
        if kind is None or (value is not None and not _has_type(value, kind)):
            return False   # (the full checks say what is wrong, or take a key of another spelling)
    return True


def _check_config_types(doc, what):
    _check_types(doc, _CONFIG_TYPES, what)
    execution = doc.get("config")
    if execution is not None:
        if not isinstance(execution, dict):
            raise ImageError(f"{what}: config must be an object, not {json.dumps(execution)[:60]}")
        check_field_spelling(execution, EXEC_FIELDS, f"{what} config")
        _check_types(execution, _EXEC_TYPES, f"{what} config")
        health = execution.get("Healthcheck")
        if isinstance(health, dict):   # its values' types are docker's concern (see cli.images._go_int)
            check_field_spelling(health, HEALTHCHECK_FIELDS, f"{what} config Healthcheck")
    history = doc.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise ImageError(f"{what}: history must be a list, not {json.dumps(history)[:60]}")
        for i, step in enumerate(history):
            if type(step) is dict and _plain_history_step(step):
                continue   # the common case, checked without a message made per step
            if not isinstance(step, dict):
                raise ImageError(f"{what}: history[{i}] must be an object, not {json.dumps(step)[:60]}")
            check_field_spelling(step, HISTORY_FIELDS, f"{what} history[{i}]")
            _check_types(step, _HISTORY_TYPES, f"{what} history[{i}]")
