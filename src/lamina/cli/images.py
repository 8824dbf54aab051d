"""The docker image verbs over lamina's store, with docker's columns, flags and habits.

    lamina images [REPO[:TAG]]        lamina inspect REF...        lamina history REF
    lamina tag SRC TARGET             lamina rmi REF...            lamina image prune [-a] [-f]
    lamina image ls|inspect|history|tag|rm|prune                   lamina system df [-v]
    lamina mount [REF TARGET [--rw]]  lamina umount TARGET

Output formats follow the docker CLI: tables through Go's tabwriter (minwidth
10, padding 3), sizes with go-units (decimal, 3 significant digits in tables),
"2 weeks ago" durations, 12-hex truncated IDs, ``--format`` Go templates
(cli/gotemplate.py) with ``table``, ``json`` and docker's template functions,
``inspect`` falling back to the raw JSON when a template fails on the typed view.

Where docker has nothing to say, lamina says something useful instead:
  * SIZE (and inspect's Size) is what the image takes in the store: its blobs plus its
    extracted snapshots, on disk (st_blocks), so that ``system df`` agrees with ``du``;
  * ``{{.SharedSize}}`` / ``{{.UniqueSize}}`` are computed (docker prints N/A outside
    ``system df -v``), ``{{.Containers}}`` counts the mounts and bundles using the image;
  * ``history`` of an image whose config has no history shows one <missing> row per
    layer (docker shows none).
Mounts (``lamina mount``) and bundles (``lamina unpack --bundle``) play the part of
containers: they keep their image "in use" (rmi needs -f, prune -a skips it).
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
import time

# --- docker's units ------------------------------------------------------------------

_DECIMAL = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def human_size(size, precision=4):
    """go-units HumanSizeWithPrecision: decimal units, %.{precision}g."""
    size = float(size)
    i = 0
    while size >= 1000.0 and i < len(_DECIMAL) - 1:
        size /= 1000.0
        i += 1
    return f"{_go_g(size, precision)}{_DECIMAL[i]}"


def _go_g(value, precision):
    # Go's %.*g: like C's, which Python's 'g' matches (no '#' flag: trailing zeros removed)
    return f"{value:.{precision}g}"


def human_duration(seconds):
    """go-units HumanDuration."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(_round_half_away(seconds / 3600))
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def _round_half_away(x):
    # time.Duration.Round(time.Hour): halfway values round away from zero
    return int(x + 0.5) if x >= 0 else -int(-x + 0.5)


def since(ts, now=None):
    if ts is None:
        return ""
    now = time.time() if now is None else now
    return human_duration(now - ts) + " ago"


def go_local_time(ts):
    """Go's time.Unix(ts, 0).String() in the local zone: 2006-01-02 15:04:05 -0700 MST."""
    if ts is None:
        return ""
    lt = time.localtime(ts)
    off = lt.tm_gmtoff or 0
    sign = "-" if off < 0 else "+"
    off = abs(off)
    zone = lt.tm_zone or ""
    if off == 0 and zone in ("", "GMT", "UTC"):
        zone = "UTC"
    return time.strftime("%Y-%m-%d %H:%M:%S", lt) + f" {sign}{off // 3600:02d}{off % 3600 // 60:02d} {zone}"


def rfc3339_utc(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts is not None else ""


def truncate_id(image_id):
    """docker's stringid.TruncateID: drop the algorithm, keep 12 hex."""
    if ":" in image_id:
        image_id = image_id.split(":", 1)[1]
    return image_id[:12]


def ellipsis(s, width):
    """docker's formatter.Ellipsis (display width, …)."""
    from .gotemplate import char_width
    if width <= 0:
        return ""
    if width == 1:
        return s[:1]
    total = sum(char_width(c) for c in s)
    if total <= width:
        return s
    out, w = [], 0
    for c in s:
        cw = char_width(c)
        if w + cw > width - 1:
            break
        out.append(c)
        w += cw
    return "".join(out) + "…"


def created_ts(image):
    from .gotemplate import parse_rfc3339
    parsed = parse_rfc3339((image.config or {}).get("created"))
    return parsed[0] if parsed else None


def _err(msg):
    print(f"lamina: error: {msg}", file=sys.stderr)


class _StoreArg:
    """The store of this command, closed when the command returns (drops the gc lease it may hold)."""
    current = []


def _open_store(args):
    from ..store import Store
    store = Store(args.root)
    _StoreArg.current.append(store)
    return store


def _closing(func):
    import functools

    @functools.wraps(func)
    def run(args):
        mark = len(_StoreArg.current)
        try:
            return func(args)
        finally:
            while len(_StoreArg.current) > mark:
                _StoreArg.current.pop().close()
    return run


def _familiar(name):
    from ..errors import InvalidReferenceError
    from ..reference import Reference
    try:
        return Reference.parse(name, default_tag=False).familiar()
    except InvalidReferenceError:
        return name


# --- sizes and usage ---------------------------------------------------------------------

class Usage:
    """Disk usage of images in the store: blobs (st_blocks) and snapshots (their du at extraction)."""

    def __init__(self, store, images=None):
        self.store = store
        self.images = store.images() if images is None else images
        self._blob = {}
        self._snap = {}
        self.parts = {}  # manifest digest -> {("blob", d) | ("snapshot", chain)}
        counts = {}
        for img in self.images:
            parts = {("blob", d) for d in img.blobs}
            parts |= {("snapshot", c) for c in img.chain_ids if self.snapshot_size(c) is not None}
            self.parts[img.manifest_digest] = parts
            for p in parts:
                counts[p] = counts.get(p, 0) + 1
        self.counts = counts

    def blob_size(self, digest):
        if digest not in self._blob:
            try:
                self._blob[digest] = os.stat(self.store.blob_path(digest)).st_blocks * 512
            except OSError:
                self._blob[digest] = 0
        return self._blob[digest]

    def snapshot_size(self, chain):
        """Bytes on disk of the snapshot, None if it was not extracted."""
        if chain not in self._snap:
            info = None
            try:
                info = self.store.snapshot_info(chain)
            except Exception:  # noqa: BLE001 - a broken snapshot counts as absent here; fsck reports it
                info = None
            self._snap[chain] = info.size if info is not None else None
        return self._snap[chain]

    def part_size(self, part):
        kind, key = part
        return self.blob_size(key) if kind == "blob" else (self.snapshot_size(key) or 0)

    def size(self, image):
        return sum(self.part_size(p) for p in self.parts.get(image.manifest_digest, ()))

    def shared(self, image):
        return sum(self.part_size(p) for p in self.parts.get(image.manifest_digest, ()) if self.counts[p] > 1)

    def total(self, images=None):
        parts = set()
        for img in (self.images if images is None else images):
            parts |= self.parts.get(img.manifest_digest, set())
        return sum(self.part_size(p) for p in parts)


def _in_use(store):
    """{manifest digest: [records]} of mounts and bundles."""
    from ..store.materialize import in_use
    out = {}
    for rec in in_use(store):
        out.setdefault(rec["manifest_digest"], []).append(rec)
    return out


# --- image rows (docker's imageContext) ---------------------------------------------------------

IMAGE_HEADERS = {
    "ID": "IMAGE ID", "Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST", "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT", "Size": "SIZE", "Containers": "CONTAINERS", "VirtualSize": "SIZE",
    "SharedSize": "SHARED SIZE", "UniqueSize": "UNIQUE SIZE",
}
DEFAULT_IMAGE_TABLE = ("table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{if .CreatedSince }}{{.CreatedSince}}{{else}}N/A{{end}}"
                       "\t{{.Size}}")
DEFAULT_IMAGE_TABLE_DIGEST = ("table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{if .CreatedSince }}"
                              "{{.CreatedSince}}{{else}}N/A{{end}}\t{{.Size}}")


def image_row(image, repo, tag, digest, *, trunc, size, shared, containers, now=None):
    from .gotemplate import GoStruct
    ts = created_ts(image)
    methods = {
        "ID": lambda: truncate_id(image.config_digest) if trunc else image.config_digest,
        "Repository": lambda: repo,
        "Tag": lambda: tag,
        "Digest": lambda: digest,
        "CreatedSince": lambda: since(ts, now),
        "CreatedAt": lambda: go_local_time(ts),
        "Size": lambda: human_size(size, 3),
        "VirtualSize": lambda: human_size(size),
        "SharedSize": lambda: "N/A" if shared is None else human_size(shared),
        "UniqueSize": lambda: "N/A" if shared is None else human_size(size - shared),
        "Containers": lambda: "N/A" if containers is None else str(containers),
    }
    return GoStruct("image", methods=methods, pointer=True, json_methods=True)


def _split_repo_tag(ref):
    return ref.familiar_name, ref.tag


def image_rows(image, *, trunc, need_digest, show_digest_rows, size, shared, containers, now=None, names=None):
    """docker's imageFormat/imageFormatTaggedAndDigest for one image.

    ``names``: (refs, repo digests) to show instead of all of the image's (a reference filter
    shows only the names that match, like the daemon)."""
    from ..errors import InvalidReferenceError
    from ..reference import Reference
    refs, rds = names if names is not None else (image.refs, image.repo_digests)
    repo_tags, repo_digests = {}, {}
    for ref in refs:
        repo_tags.setdefault(ref.familiar_name, []).append(ref.tag)
    for rd in rds:
        try:
            r = Reference.parse(rd, default_tag=False)
        except InvalidReferenceError:
            continue
        if r.digest:
            repo_digests.setdefault(r.familiar_name, []).append(r.digest)
    kw = dict(trunc=trunc, size=size, shared=shared, containers=containers, now=now)
    rows = []
    if not repo_tags and not repo_digests:
        return [image_row(image, "<none>", "<none>", "<none>", **kw)]
    for repo in sorted(repo_tags):
        digests = repo_digests.pop(repo, [])
        if not need_digest:
            digests = []
        for tag in sorted(repo_tags[repo]):
            if not digests:
                rows.append(image_row(image, repo, tag, "<none>", **kw))
            for d in digests:
                rows.append(image_row(image, repo, tag, d, **kw))
    for repo in sorted(repo_digests):
        if show_digest_rows:
            for d in repo_digests[repo]:
                rows.append(image_row(image, repo, "<none>", d, **kw))
        else:
            rows.append(image_row(image, repo, "<none>", "", **kw))
    return rows


def parse_filters(values, allowed):
    """docker's --filter key=value (repeatable) -> {key: [values]}; unknown keys are an error."""
    from ..errors import LaminaError
    out = {}
    for v in values or []:
        key, sep, val = v.partition("=")
        key = key.strip().lower()
        if not sep:
            raise LaminaError(f"bad format of filter (expected name=value): {v}")
        if key not in allowed:
            raise LaminaError(f"invalid filter '{key}'")
        out.setdefault(key, []).append(val)
    return out


def _bool_filter(vals, name):
    from ..errors import LaminaError
    out = set()
    for v in vals:
        lv = v.lower()
        if lv in ("true", "1"):
            out.add(True)
        elif lv in ("false", "0"):
            out.add(False)
        else:
            raise LaminaError(f"invalid filter '{name}={v}': expected true or false")
    if len(out) > 1:
        raise LaminaError(f"conflicting {name} filters")
    return out.pop()


def _path_match(pattern, text):
    """Go's path.Match: '*' and '?' do not cross '/'."""
    rx = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            rx += "[^/]*"
        elif c == "?":
            rx += "[^/]"
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                return False
            body = pattern[i + 1:j]
            if body.startswith("^"):
                body = "!" + body[1:]
            rx += fnmatch.translate("[" + body + "]")[4:-3]
            i = j
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            rx += re.escape(pattern[i])
        else:
            rx += re.escape(c)
        i += 1
    return re.fullmatch(rx, text) is not None


def _ref_match(pattern, ref):
    return _path_match(pattern, ref.familiar()) or _path_match(pattern, ref.familiar_name)


def matching_names(patterns, image):
    """(tags, repo digests) of the image that docker's reference filter (FamiliarMatch) keeps."""
    from ..errors import InvalidReferenceError
    from ..reference import Reference
    refs = [r for r in image.refs if any(_ref_match(p, r) for p in patterns)]
    rds = []
    for rd in image.repo_digests:
        try:
            r = Reference.parse(rd, default_tag=False)
        except InvalidReferenceError:
            continue
        if any(_ref_match(p, r) for p in patterns):
            rds.append(rd)
    return refs, rds


def reference_matches(pattern, image):
    refs, rds = matching_names([pattern], image)
    return bool(refs or rds)


def _label_match(image, spec):
    labels = ((image.config or {}).get("config") or {}).get("Labels") or {}
    key, sep, val = spec.partition("=")
    if key.endswith("!"):
        return labels.get(key[:-1]) != val
    if not sep:
        return key in labels
    return labels.get(key) == val


def _filter_images(store, images, filters):
    from ..errors import LaminaError
    out = list(images)
    if "dangling" in filters:
        want = _bool_filter(filters["dangling"], "dangling")
        out = [i for i in out if (not i.refs) == want]
    if "reference" in filters:
        pats = filters["reference"]
        out = [i for i in out if any(matching_names(pats, i))]
    if "label" in filters:
        out = [i for i in out if all(_label_match(i, spec) for spec in filters["label"])]
    for key in ("before", "since"):
        for v in filters.get(key, []):
            try:
                ref_img = store.resolve(v)
            except LaminaError as e:
                raise LaminaError(f"invalid filter '{key}={v}': {e}") from None
            t0 = created_ts(ref_img)
            if t0 is None:
                continue
            if key == "before":
                out = [i for i in out if (created_ts(i) or 0) < t0]
            else:
                out = [i for i in out if (created_ts(i) or 0) > t0]
    for v in filters.get("until", []):
        limit = _parse_until(v)
        out = [i for i in out if (created_ts(i) or 0) < limit]
    return out


def _sort_images(images):
    # newest first, like the daemon; images without a creation time last
    return sorted(images, key=lambda i: -(created_ts(i) or float("-inf")))


def cmd_images(args):
    from .gotemplate import render_rows
    store = _open_store(args)
    filters = parse_filters(args.filter, ("dangling", "reference", "label", "before", "since", "until"))
    if args.repository:
        filters.setdefault("reference", []).append(args.repository)
    images = _sort_images(_filter_images(store, store.images(), filters))
    usage = Usage(store)
    use = _in_use(store)
    fmt = args.format or "table"
    if fmt == "table":  # docker's NewImageFormat: -q and --digests only shape the default table
        fmt = "{{.ID}}" if args.quiet else DEFAULT_IMAGE_TABLE_DIGEST if args.digests else DEFAULT_IMAGE_TABLE
    elif fmt.startswith("table") and args.digests and "{{.Digest}}" not in fmt:
        fmt += "\t{{.Digest}}"
    need_digest = args.digests or "{{.Digest}}" in fmt
    now = time.time()
    rows = []
    for img in images:
        names = matching_names(filters["reference"], img) if "reference" in filters else None
        rows += image_rows(img, trunc=not args.no_trunc, need_digest=need_digest, show_digest_rows=args.digests,
                           size=usage.size(img), shared=usage.shared(img),
                           containers=len(use.get(img.manifest_digest, [])), now=now, names=names)
    sys.stdout.write(render_rows(fmt, rows, IMAGE_HEADERS))


# --- inspect (docker's InspectResponse) ---------------------------------------------------------------

def _strs(v):
    from .gotemplate import NilSlice
    return [x for x in v if isinstance(x, str)] if isinstance(v, list) else NilSlice()


def _config_struct(cfg):
    """DockerOCIImageConfig: ocispec.ImageConfig + Healthcheck/OnBuild/Shell, every field omitempty."""
    from .gotemplate import EMPTY, GoMap, GoStruct, NilMap
    if not isinstance(cfg, dict):
        cfg = {}

    def strset(v):
        if not isinstance(v, dict):
            return NilMap(zero=EMPTY)
        return GoMap({k: EMPTY for k in v}, zero=EMPTY)

    labels = cfg.get("Labels")
    labels = GoMap({k: v for k, v in labels.items() if isinstance(v, str)}, zero="") if isinstance(labels, dict) \
        else NilMap(zero="")
    image_config = GoStruct("v1.ImageConfig", [
        ("User", cfg.get("User") or "", "User", True),
        ("ExposedPorts", strset(cfg.get("ExposedPorts")), "ExposedPorts", True),
        ("Env", _strs(cfg.get("Env")), "Env", True),
        ("Entrypoint", _strs(cfg.get("Entrypoint")), "Entrypoint", True),
        ("Cmd", _strs(cfg.get("Cmd")), "Cmd", True),
        ("Volumes", strset(cfg.get("Volumes")), "Volumes", True),
        ("WorkingDir", cfg.get("WorkingDir") or "", "WorkingDir", True),
        ("Labels", labels, "Labels", True),
        ("StopSignal", cfg.get("StopSignal") or "", "StopSignal", True),
        ("ArgsEscaped", bool(cfg.get("ArgsEscaped")), "ArgsEscaped", True),
    ])
    hc = cfg.get("Healthcheck")
    health = None
    if isinstance(hc, dict):
        health = GoStruct("v1.HealthcheckConfig", [
            ("Test", _strs(hc.get("Test")), "Test", True),
            ("Interval", int(hc.get("Interval") or 0), "Interval", True),
            ("Timeout", int(hc.get("Timeout") or 0), "Timeout", True),
            ("StartPeriod", int(hc.get("StartPeriod") or 0), "StartPeriod", True),
            ("StartInterval", int(hc.get("StartInterval") or 0), "StartInterval", True),
            ("Retries", int(hc.get("Retries") or 0), "Retries", True),
        ], pointer=True)
    ext = GoStruct("v1.DockerOCIImageConfigExt", [
        ("Healthcheck", health, "Healthcheck", True),
        ("OnBuild", _strs(cfg.get("OnBuild")), "OnBuild", True),
        ("Shell", _strs(cfg.get("Shell")), "Shell", True),
    ])
    return GoStruct("*v1.DockerOCIImageConfig", [], pointer=True, embedded=[image_config, ext])


def inspect_struct(store, image, usage):
    """(typed GoStruct, raw JSON dict) of docker's image inspect for one image."""
    from .gotemplate import GoMap, GoStruct, GoTime
    c = image.config or {}
    repo_tags = [r.familiar() for r in image.refs]
    repo_digests = [_familiar(rd) for rd in image.repo_digests]
    created = c.get("created")
    gt = GoTime.parse(created) if isinstance(created, str) else None
    created_s = gt.rfc3339() if gt else ""
    snapshot_dirs = [str(store.paths.snapshot(ch) / "fs") for ch in image.chain_ids]
    graph = GoStruct("*storage.DriverData", [
        ("Data", GoMap({"LowerDir": ":".join(reversed(snapshot_dirs))}, zero="") if snapshot_dirs else None,
         "Data", False),
        ("Name", "overlay", "Name", False),
    ], pointer=True)
    rootfs = GoStruct("image.RootFS", [
        ("Type", (c.get("rootfs") or {}).get("type") or "layers", "Type", True),
        ("Layers", list(image.diff_ids), "Layers", True),
    ])
    metadata = GoStruct("image.Metadata", [("LastTagTime", GoTime(None), "LastTagTime", False)])
    descriptor = GoStruct("*v1.Descriptor", [
        ("MediaType", image.media_type, "mediaType", False),
        ("Digest", image.manifest_digest, "digest", False),
        ("Size", image.manifest_size, "size", False),
    ], pointer=True)
    fields = [
        ("ID", image.config_digest, "Id", False),
        ("RepoTags", repo_tags, "RepoTags", False),
        ("RepoDigests", repo_digests, "RepoDigests", False),
        ("Parent", c.get("parent") or "", "Parent", True),
        ("Comment", c.get("comment") or "", "Comment", True),
        ("Created", created_s, "Created", True),
        ("DockerVersion", c.get("docker_version") or "", "DockerVersion", True),
        ("Author", c.get("author") or "", "Author", True),
        ("Config", _config_struct(c.get("config")), "Config", False),
        ("Architecture", c.get("architecture") or "", "Architecture", False),
        ("Variant", c.get("variant") or "", "Variant", True),
        ("Os", c.get("os") or "", "Os", False),
        ("OsVersion", c.get("os.version") or "", "OsVersion", True),
        ("Size", usage.size(image), "Size", False),
        ("GraphDriver", graph, "GraphDriver", True),
        ("RootFS", rootfs, "RootFS", False),
        ("Metadata", metadata, "Metadata", False),
        ("Descriptor", descriptor, "Descriptor", True),
    ]
    typed = GoStruct("image.InspectResponse", fields, pointer=True)
    raw = typed.to_json()
    if not (isinstance(c.get("config"), dict)):
        raw["Config"] = None if c.get("config") is None else raw["Config"]
    return typed, raw


def cmd_inspect(args):
    from ..errors import LaminaError
    from .gotemplate import TemplateError, go_json, parse
    store = _open_store(args)
    tmpl = None
    fmt = args.format
    if fmt and fmt != "json":
        tmpl = parse(fmt)  # a parse error is reported before anything is printed (docker: exit 64)
    usage = None
    results, errors = [], []
    for ref in args.refs:
        try:
            image = store.resolve(ref)
        except LaminaError as e:
            errors.append(_no_such(ref, e))
            continue
        if usage is None:
            usage = Usage(store)
        results.append(inspect_struct(store, image, usage))
    out = sys.stdout
    if tmpl is None:
        raws = [raw for _, raw in results]
        if fmt == "json":
            out.write(go_json(raws) + "\n")
        else:
            out.write(go_json(raws, indent=4) + "\n")
    else:
        buf = []
        for typed, raw in results:
            try:
                buf.append(tmpl.execute(typed) + "\n")
            except TemplateError:
                try:
                    buf.append(tmpl.execute(_raw_for_template(raw), missingkey_error=True) + "\n")
                except TemplateError as e:
                    errors.append(str(e))
        out.write("".join(buf) if buf else "\n")
    out.flush()
    for e in errors:
        _err(e)
    return 1 if errors else 0


def _raw_for_template(raw):
    """docker decodes the raw JSON with UseNumber: numbers print as written (json.Number is a string)."""
    if isinstance(raw, dict):
        return {k: _raw_for_template(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_raw_for_template(v) for v in raw]
    if isinstance(raw, bool) or raw is None:
        return raw
    if isinstance(raw, (int, float)):
        return json.dumps(raw)
    return raw


def _no_such(ref, exc):
    """docker's "No such image: nginx:latest" (the name as docker normalizes it)."""
    from ..errors import AmbiguousImageError, InvalidReferenceError
    from ..reference import Reference
    if isinstance(exc, (AmbiguousImageError, InvalidReferenceError)):
        return str(exc)
    shown = ref
    if not re.fullmatch(r"(sha256:)?[0-9a-f]{1,64}", ref):
        try:
            shown = Reference.parse(ref).familiar()
        except InvalidReferenceError:
            pass
    return f"No such image: {shown}"


# --- history -------------------------------------------------------------------------------------------

HISTORY_HEADERS = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "CreatedBy": "CREATED BY",
                   "Size": "SIZE", "Comment": "COMMENT"}
DEFAULT_HISTORY_TABLE = "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
NONHUMAN_HISTORY_TABLE = "table {{.ID}}\t{{.CreatedAt}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"


def history_items(store, image, usage):
    """[{id, created, created_by, size, comment}] newest first, as the daemon's ImageHistory."""
    from .gotemplate import parse_rfc3339
    sizes = []
    for chain, layer in zip(image.chain_ids, image.layers):
        s = usage.snapshot_size(chain)
        sizes.append(s if s is not None else layer.size)
    hist = (image.config or {}).get("history")
    items = []
    if isinstance(hist, list) and hist:
        for h in hist:
            if not isinstance(h, dict):
                continue
            size = 0
            if not h.get("empty_layer"):
                size = sizes.pop(0) if sizes else 0
            parsed = parse_rfc3339(h.get("created"))
            items.insert(0, {"created": parsed[0] if parsed else 0, "created_by": str(h.get("created_by") or ""),
                             "comment": str(h.get("comment") or ""), "size": size})
    else:
        # no history in the config: one row per layer (docker would show none at all)
        ts = created_ts(image) or 0
        for s in sizes:
            items.insert(0, {"created": ts, "created_by": "", "comment": "", "size": s})
    for i, it in enumerate(items):
        it["id"] = image.config_digest if i == 0 else "<missing>"
    return items


def history_row(item, *, trunc, human, now=None):
    from .gotemplate import GoStruct
    created = item["created"]

    def created_at():
        return rfc3339_utc(created)
    methods = {
        "ID": lambda: (truncate_id(item["id"]) if trunc and item["id"] != "<missing>" else item["id"]),
        "CreatedAt": created_at,
        "CreatedSince": lambda: (since(created, now) if human else created_at()),
        "CreatedBy": lambda: (ellipsis(item["created_by"].replace("\t", " "), 45) if trunc
                              else item["created_by"].replace("\t", " ")),
        "Size": lambda: human_size(item["size"], 3) if human else str(item["size"]),
        "Comment": lambda: item["comment"],
    }
    return GoStruct("history", methods=methods, pointer=True, json_methods=True)


def cmd_history(args):
    from .gotemplate import render_rows
    store = _open_store(args)
    image = store.resolve(args.ref)
    items = history_items(store, image, Usage(store, [image]))
    fmt = args.format or "table"
    if fmt == "table":
        fmt = "{{.ID}}" if args.quiet else DEFAULT_HISTORY_TABLE if args.human else NONHUMAN_HISTORY_TABLE
    now = time.time()
    rows = [history_row(it, trunc=not args.no_trunc, human=args.human, now=now) for it in items]
    sys.stdout.write(render_rows(fmt, rows, HISTORY_HEADERS))


# --- tag / rmi / prune ------------------------------------------------------------------------------

def cmd_tag(args):
    from ..errors import InvalidReferenceError
    from ..reference import Reference
    store = _open_store(args)
    image = store.resolve(args.source)
    target = Reference.parse(args.target)
    if target.digest:
        raise InvalidReferenceError(f"refusing to create a tag with a digest reference: {args.target}")
    store.add_image(image.manifest_digest, target)


def _use_text(recs):
    parts = []
    for r in recs:
        parts.append(("mount " if r["kind"] == "mount" else "bundle ") + r["path"])
    return ", ".join(parts)


def _gc(store, out, quiet_busy=False):
    """Run the store's gc unless another process is writing; print docker's Deleted: lines for snapshots."""
    from ..store.locks import is_locked
    if is_locked(store.paths.gc_lock):
        if not quiet_busy:
            print("note: another lamina process is writing to the store; unused layers are removed by the next "
                  "`lamina image prune`", file=sys.stderr)
        return None
    result = store.gc()
    for chain, _ in result.snapshots:
        out.append(f"Deleted: {chain}")
    return result


def cmd_rmi(args):
    from ..errors import LaminaError
    store = _open_store(args)
    failures = 0
    removed_any = False
    for ref in args.refs:
        try:
            lines, removed = _rmi_one(store, ref, args.force)
        except LaminaError as e:
            _err(e)
            failures += 1
            continue
        for line in lines:
            print(line)
        removed_any = removed_any or removed
    if removed_any and not args.no_prune:
        lines = []
        _gc(store, lines)
        for line in lines:
            print(line)
    return 1 if failures else 0


def _is_id_like(store, ref):
    if ref.startswith("sha256:"):
        return True
    return re.fullmatch(r"[0-9a-f]{1,64}", ref) is not None


def _rmi_one(store, ref, force):
    """docker's ImageDelete: returns (lines to print, whether an image left the index)."""
    from ..errors import ImageNotFoundError, InvalidReferenceError, LaminaError
    from ..reference import Reference
    from ..store.store import name_of
    try:
        image = store.resolve(ref)
    except ImageNotFoundError as e:
        raise LaminaError(_no_such(ref, e)) from None
    use = _in_use(store).get(image.manifest_digest, [])
    lines = []
    parsed = None
    by_id = False
    try:
        parsed = Reference.parse(ref, default_tag=False)
    except InvalidReferenceError:
        by_id = True
    if parsed is not None:
        # a name that is also a hex prefix of the ID: docker prefers the name when it exists
        wanted = name_of(Reference.parse(ref))
        if wanted not in image.names and _is_id_like(store, ref):
            by_id = True
    if ref.startswith("sha256:") or re.fullmatch(r"[0-9a-f]{64}", ref):
        by_id = True
    if not by_id:
        full = Reference.parse(ref)
        name = name_of(full)
        others = [n for n in image.names if n != name]
        if use and not others and not force:
            raise LaminaError(f'conflict: unable to remove repository reference "{ref}" (must force) - image '
                              f"{truncate_id(image.config_digest)} is in use by {_use_text(use)}")
        gone = store.untag(full)
        lines.append(f"Untagged: {full.familiar()}")
        if gone:
            if use:
                return lines, False  # held: the content stays until the mount/bundle goes
            lines.append(f"Deleted: {image.config_digest}")
        return lines, gone
    # by ID (or manifest digest)
    repos = {Reference.parse(n, default_tag=False).name for n in image.names if _parses(n)}
    if len(repos) > 1 and not force:
        raise LaminaError(f"conflict: unable to delete {truncate_id(image.config_digest)} (must be forced) - image is "
                          f"referenced in multiple repositories")
    if use and not force:
        raise LaminaError(f"conflict: unable to delete {truncate_id(image.config_digest)} (must be forced) - image is "
                          f"in use by {_use_text(use)}")
    names = store.remove_image(image)
    for n in names:
        lines.append(f"Untagged: {_familiar(n)}")
    if use:
        return lines, False
    lines.append(f"Deleted: {image.config_digest}")
    return lines, True


def _parses(name):
    from ..errors import InvalidReferenceError
    from ..reference import Reference
    try:
        Reference.parse(name, default_tag=False)
        return True
    except InvalidReferenceError:
        return False


def _confirm(message, force):
    if force:
        return True
    sys.stdout.write(message + "\nAre you sure you want to continue? [y/N] ")
    sys.stdout.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _parse_until(value):
    """docker's until filter: a Go duration (10m, 1h30m), a unix timestamp or an RFC 3339 time -> unix seconds."""
    from ..errors import LaminaError
    from .gotemplate import parse_rfc3339
    m = re.fullmatch(r"((?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+)", value)
    if m:
        units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
        total = sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", value))
        return time.time() - total
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parsed = parse_rfc3339(value) or parse_rfc3339(value + "T00:00:00Z")
    if parsed:
        return parsed[0]
    raise LaminaError(f"invalid filter 'until={value}': expected a duration (24h), a timestamp or a date")


def cmd_image_prune(args):
    store = _open_store(args)
    filters = parse_filters(args.filter, ("until", "label", "label!"))
    msg = ("WARNING! This will remove all images without at least one container associated to them."
           if args.all else "WARNING! This will remove all dangling images.")
    if not _confirm(msg, args.force):
        return 0
    use = _in_use(store)
    images = store.images()
    victims = [i for i in images if i.manifest_digest not in use and (args.all or not i.refs)]
    for v in filters.get("until", []):
        limit = _parse_until(v)
        victims = [i for i in victims if (created_ts(i) or 0) < limit]
    for spec in filters.get("label", []):
        victims = [i for i in victims if _label_match(i, spec)]
    for spec in filters.get("label!", []):
        victims = [i for i in victims if not _label_match(i, spec)]
    lines = []
    for image in victims:
        names = store.remove_image(image)
        for n in names:
            lines.append(f"untagged: {_familiar(n)}")
        lines.append(f"deleted: {image.config_digest}")
    from ..store.locks import is_locked
    reclaimed = 0
    if is_locked(store.paths.gc_lock):
        print("note: another lamina process is writing to the store; run the prune again when it is done to "
              "reclaim the space", file=sys.stderr)
    else:
        result = store.gc()
        reclaimed = result.reclaimed
        for chain, _ in result.snapshots:
            lines.append(f"deleted: {chain}")
    if lines:
        print("Deleted Images:")
        for line in lines:
            print(line)
        print()
    print(f"Total reclaimed space: {human_size(reclaimed)}")


# --- system df -------------------------------------------------------------------------------------------

DF_HEADERS = {"Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE", "Reclaimable": "RECLAIMABLE"}
DEFAULT_DF_TABLE = "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}"


def _du(path):
    from ..store.fsutil import disk_usage
    try:
        return disk_usage(path)[0]
    except (FileNotFoundError, NotADirectoryError):
        return 0


def disk_usage_report(store):
    """Everything `system df` prints, in bytes (the CLI formats it)."""
    from ..store import snapshots as _snaps
    from ..store.gc import unreferenced
    images = store.images()
    usage = Usage(store, images)
    use = _in_use(store)
    active = [i for i in images if i.manifest_digest in use]
    total = usage.total()
    reclaimable = total - usage.total(active)
    mounts = [r for recs in use.values() for r in recs if r["kind"] == "mount"]
    mounts_size = sum(_du(r["upper"]) for r in mounts if r.get("upper"))
    blobs, chains = unreferenced(store)
    garbage = sum(usage.blob_size(d) for d in blobs)
    for c in chains:
        info = None
        try:
            info = store.snapshot_info(c)
        except Exception:  # noqa: BLE001 - a broken snapshot: measure it
            info = None
        garbage += info.size if info is not None else _du(store.paths.snapshot(c))
    partials = 0
    try:
        for n in os.listdir(store.paths.ingest):
            try:
                partials += os.stat(os.path.join(store.paths.ingest, n)).st_blocks * 512
            except OSError:
                pass
    except FileNotFoundError:
        pass
    snapshots = []
    users = {}
    for img in images:
        for c in img.chain_ids:
            users.setdefault(c, []).append(img)
    for c in _snaps.list_chain_ids(store.paths):
        size = usage.snapshot_size(c)
        if size is None:
            continue
        imgs = users.get(c, [])
        snapshots.append({"chain_id": c, "size": size, "images": len(imgs),
                          "in_use": any(i.manifest_digest in use for i in imgs)})
    return {
        "images": images, "usage": usage, "use": use, "active": active, "total": total,
        "reclaimable": reclaimable, "mounts": mounts, "mounts_size": mounts_size,
        "unreferenced": {"blobs": len(blobs), "snapshots": len(chains), "partials": partials, "size": garbage + partials},
        "snapshots": snapshots,
    }


def _df_row(kind, total, active, size, reclaimable):
    from .gotemplate import GoStruct

    def recl():
        if size > 0:
            return f"{human_size(reclaimable)} ({reclaimable * 100 // size}%)"
        return human_size(reclaimable)
    methods = {"Type": lambda: kind, "TotalCount": lambda: str(total), "Active": lambda: str(active),
               "Size": lambda: human_size(size), "Reclaimable": recl}
    return GoStruct("diskUsage", methods=methods, pointer=True, json_methods=True)


def cmd_system_df(args):
    from .gotemplate import render_rows
    store = _open_store(args)
    rep = disk_usage_report(store)
    mounted = [m for m in rep["mounts"] if m.get("mounted")]
    stale = [m for m in rep["mounts"] if not m.get("mounted")]
    un = rep["unreferenced"]
    files = store.file_usage()
    rows = [
        _df_row("Images", len(rep["images"]), len(rep["active"]), rep["total"], rep["reclaimable"]),
        _df_row("Mounts", len(rep["mounts"]), len(mounted), rep["mounts_size"],
                sum(_du(m["upper"]) for m in stale if m.get("upper"))),
        _df_row("Unreferenced", un["blobs"] + un["snapshots"], 0, un["size"], un["size"]),
        # file objects (store/objects.py): TOTAL objects, ACTIVE = shared by several names
        _df_row("Files", files.objects, files.shared_objects, files.size, files.unused),
    ]
    if not args.verbose:
        fmt = args.format or "table"
        if fmt == "table":
            fmt = DEFAULT_DF_TABLE
        sys.stdout.write(render_rows(fmt, rows, DF_HEADERS))
        return 0
    # verbose: one table per kind, like docker system df -v
    usage, use = rep["usage"], rep["use"]
    now = time.time()
    img_rows = []
    for img in _sort_images(rep["images"]):
        repo = tag = "<none>"
        if img.refs:
            repo, tag = img.refs[0].familiar_name, img.refs[0].tag
        img_rows.append(image_row(img, repo, tag, "", trunc=True, size=usage.size(img), shared=usage.shared(img),
                                  containers=len(use.get(img.manifest_digest, [])), now=now))
    hdr = dict(IMAGE_HEADERS, Containers="IN USE")
    from .gotemplate import GoStruct
    snap_rows = []
    for s in sorted(rep["snapshots"], key=lambda s: -s["size"]):
        snap_rows.append(GoStruct("snapshot", methods={
            "ID": lambda s=s: truncate_id(s["chain_id"]), "Size": lambda s=s: human_size(s["size"]),
            "Images": lambda s=s: str(s["images"]), "InUse": lambda s=s: "yes" if s["in_use"] else "no"}))
    m_rows = []
    for m in rep["mounts"]:
        m_rows.append(GoStruct("mount", methods={
            "Target": lambda m=m: m["path"], "Image": lambda m=m: (m.get("names") or [truncate_id(m["image_id"])])[0],
            "Mode": lambda m=m: "rw" if m.get("rw") else "ro",
            "Size": lambda m=m: human_size(_du(m["upper"])) if m.get("upper") else "0B",
            "Mounted": lambda m=m: "yes" if m.get("mounted") else "no"}))
    out = sys.stdout
    if args.format and args.format != "table":
        from .gotemplate import parse, prepare_format
        _, text = prepare_format(args.format)
        ctx = GoStruct("diskUsage", [("Images", img_rows), ("Snapshots", snap_rows), ("Mounts", m_rows)])
        out.write(parse(text).execute(ctx))
        return 0
    out.write("Images space usage:\n\n")
    out.write(render_rows("table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}\t{{.SharedSize}}"
                          "\t{{.UniqueSize}}\t{{.Containers}}", img_rows, hdr))
    out.write("\nSnapshots space usage:\n\n")
    out.write(render_rows("table {{.ID}}\t{{.Size}}\t{{.Images}}\t{{.InUse}}", snap_rows,
                          {"ID": "CHAIN ID", "Size": "SIZE", "Images": "IMAGES", "InUse": "IN USE"}))
    out.write("\nMounts space usage:\n\n")
    out.write(render_rows("table {{.Target}}\t{{.Image}}\t{{.Mode}}\t{{.Size}}\t{{.Mounted}}", m_rows,
                          {"Target": "TARGET", "Image": "IMAGE", "Mode": "MODE", "Size": "SIZE", "Mounted": "MOUNTED"}))
    out.write(f"\nFile objects: {files.objects} ({files.shared_objects} shared), {human_size(files.size)} on disk "
              f"for {human_size(files.logical)} of snapshot files: sharing saves {human_size(files.saved)}\n")
    out.write(f"\nUnreferenced content: {human_size(un['size'])} ({un['blobs']} blobs, {un['snapshots']} snapshots, "
              f"{human_size(un['partials'])} partial downloads; removed by `lamina image prune`)\n")
    return 0


# --- mount / umount ------------------------------------------------------------------------------------

def cmd_mount(args):
    from ..errors import LaminaError
    from ..store import materialize as M
    store = _open_store(args)
    if args.ref is None:
        from .gotemplate import GoStruct, render_rows
        rows = []
        for m in M.mounts(store):
            rows.append(GoStruct("mount", methods={
                "Target": lambda m=m: m["path"],
                "Image": lambda m=m: (m.get("names") or [truncate_id(m["image_id"])])[0],
                "ID": lambda m=m: truncate_id(m["image_id"]),
                "Mode": lambda m=m: "rw" if m.get("rw") else "ro",
                "Mounted": lambda m=m: "yes" if m.get("mounted") else "no (run lamina umount to clean up)"}))
        fmt = args.format or "table {{.Target}}\t{{.Image}}\t{{.ID}}\t{{.Mode}}\t{{.Mounted}}"
        sys.stdout.write(render_rows(fmt, rows, {"Target": "TARGET", "Image": "IMAGE", "ID": "IMAGE ID",
                                                 "Mode": "MODE", "Mounted": "MOUNTED"}))
        return 0
    if args.target is None:
        raise LaminaError("mount needs REF and TARGET (or nothing, to list the mounts)")
    record = M.mount(store, args.ref, args.target, rw=args.rw)
    print(record["path"])
    return 0


def cmd_umount(args):
    from ..store import materialize as M
    store = _open_store(args)
    failures = 0
    from ..errors import LaminaError
    for t in args.targets:
        try:
            M.umount(store, t, lazy=args.lazy)
        except LaminaError as e:
            _err(e)
            failures += 1
            continue
        print(os.path.abspath(t))
    return 1 if failures else 0


# --- registration ----------------------------------------------------------------------------------------

def _images_parser(p):
    p.add_argument("repository", nargs="?", metavar="REPOSITORY[:TAG]")
    p.add_argument("-a", "--all", action="store_true", help="show all images (lamina has no intermediate images)")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-f", "--filter", action="append", metavar="FILTER",
                   help="filter output: dangling=true|false, reference=PATTERN, label=KEY[=VALUE], before=IMAGE, "
                        "since=IMAGE, until=DURATION|TIME")
    p.add_argument("--format", metavar="FORMAT", help="'table', 'table TEMPLATE', 'json' or a Go template")
    p.set_defaults(func=_closing(cmd_images))


def _inspect_parser(p):
    p.add_argument("refs", nargs="+", metavar="IMAGE")
    p.add_argument("-f", "--format", metavar="FORMAT", help="'json' or a Go template, e.g. '{{.Config.Env}}'")
    p.add_argument("--type", choices=("image",), help="only images exist in lamina")
    p.set_defaults(func=_closing(cmd_inspect))


def _history_parser(p):
    p.add_argument("ref", metavar="IMAGE")
    p.add_argument("-H", "--human", type=_parse_bool, nargs="?", const=True, default=True, metavar="BOOL",
                   help="print sizes and dates in human readable format (default true)")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    p.add_argument("--format", metavar="FORMAT", help="'table', 'table TEMPLATE', 'json' or a Go template")
    p.set_defaults(func=_closing(cmd_history))


def _parse_bool(v):
    import argparse
    lv = str(v).lower()
    if lv in ("1", "t", "true", "yes"):
        return True
    if lv in ("0", "f", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {v!r}")


def _tag_parser(p):
    p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")
    p.set_defaults(func=_closing(cmd_tag))


def _rmi_parser(p):
    p.add_argument("refs", nargs="+", metavar="IMAGE")
    p.add_argument("-f", "--force", action="store_true", help="remove an image referenced by several repositories "
                   "or in use (its content stays until the mount or bundle goes)")
    p.add_argument("--no-prune", action="store_true", help="do not delete unused layers now (image prune does)")
    p.set_defaults(func=_closing(cmd_rmi))


def _prune_parser(p):
    p.add_argument("-a", "--all", action="store_true", help="remove all images not in use, not just dangling ones")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.add_argument("--filter", action="append", metavar="FILTER", help="until=DURATION|TIME, label=KEY[=VALUE]")
    p.set_defaults(func=_closing(cmd_image_prune))


def register(sub):
    _images_parser(sub.add_parser("images", help="list images in the store"))
    _inspect_parser(sub.add_parser("inspect", help="display detailed information on images"))
    _history_parser(sub.add_parser("history", help="show the history of an image"))
    _tag_parser(sub.add_parser("tag", help="create a tag TARGET_IMAGE that refers to SOURCE_IMAGE"))
    _rmi_parser(sub.add_parser("rmi", help="remove images (their unused layers go with the last image)"))

    img = sub.add_parser("image", help="manage images (ls, inspect, history, tag, rm, prune)")
    isub = img.add_subparsers(dest="image_command", metavar="COMMAND")
    isub.required = True
    _images_parser(isub.add_parser("ls", aliases=["list"], help="list images"))
    _inspect_parser(isub.add_parser("inspect", help="display detailed information on images"))
    _history_parser(isub.add_parser("history", help="show the history of an image"))
    _tag_parser(isub.add_parser("tag", help="create a tag"))
    _rmi_parser(isub.add_parser("rm", aliases=["remove"], help="remove images"))
    _prune_parser(isub.add_parser("prune", help="remove unused images"))

    system = sub.add_parser("system", help="store-wide information")
    ssub = system.add_subparsers(dest="system_command", metavar="COMMAND")
    ssub.required = True
    df = ssub.add_parser("df", help="show the store's disk usage")
    df.add_argument("-v", "--verbose", action="store_true", help="show per-image, per-snapshot and per-mount usage")
    df.add_argument("--format", metavar="FORMAT", help="'table', 'table TEMPLATE', 'json' or a Go template")
    df.set_defaults(func=_closing(cmd_system_df))

    m = sub.add_parser("mount", help="mount an image with overlayfs (read-only unless --rw); no arguments: list mounts")
    m.add_argument("ref", nargs="?", metavar="IMAGE")
    m.add_argument("target", nargs="?", metavar="TARGET")
    m.add_argument("--rw", action="store_true", help="writable: changes go to an upper dir that umount removes")
    m.add_argument("--format", metavar="FORMAT", help="template for the listing")
    m.set_defaults(func=_closing(cmd_mount))

    u = sub.add_parser("umount", aliases=["unmount"], help="unmount an image mounted by lamina mount and clean up")
    u.add_argument("targets", nargs="+", metavar="TARGET")
    u.add_argument("-l", "--lazy", action="store_true", help="detach now even if busy (MNT_DETACH)")
    u.set_defaults(func=_closing(cmd_umount))


# --- lamina unpack from the store (called by cli/layers.py) ---------------------------------------------

_TRANSPORTS = ("oci:", "docker-archive:", "oci-archive:")


def is_store_source(source, root=None):
    """True if ``lamina unpack SOURCE`` means an image in the store rather than a layout or archive path."""
    from ..errors import InvalidReferenceError
    from ..reference import Reference
    if source.startswith(_TRANSPORTS):
        return False
    if source in (".", "..") or source.startswith(("/", "./", "../", "~")):
        return False
    id_like = re.fullmatch(r"(sha256:)?[0-9a-f]{1,64}", source) is not None
    try:
        Reference.parse(source)
        is_ref = True
    except InvalidReferenceError:
        is_ref = False
    if not (is_ref or id_like):
        return False
    if not os.path.exists(source):
        return True
    # both a path and a valid reference: the store wins if it has that image
    from ..store.paths import default_root
    store_root = root or default_root()
    if not os.path.exists(os.path.join(store_root, "index.json")):
        return False
    from ..errors import LaminaError
    from ..store import Store
    try:
        Store(store_root).resolve(source)
        return True
    except LaminaError:
        return False


def unpack_from_store(args):
    from ..errors import LaminaError
    from ..store import materialize as M
    if args.format != "dir":
        raise LaminaError("--format overlay is for oci:/docker-archive: sources; an image in the store already has "
                          "its layers as snapshots: use `lamina mount IMAGE TARGET`")
    if args.source.startswith(_TRANSPORTS):
        raise LaminaError("--bundle and --link unpack images from the store; import the image first "
                          f"(lamina copy {args.source} NAME) or drop the option")
    store = _open_store(args)
    image = store.resolve(args.source)
    t0 = time.perf_counter()
    if args.bundle:
        image, stats, _spec = M.make_bundle(store, image, args.dest, link=args.link, platform=args.platform)
    else:
        image, stats = M.materialize(store, image, args.dest, link=args.link, platform=args.platform)
    total = time.perf_counter() - t0
    name = image.refs[0].familiar() if image.refs else truncate_id(image.config_digest)
    if args.json:
        d = stats.to_dict()
        d.update({"source": args.source, "image": name, "manifest_digest": image.manifest_digest,
                  "config_digest": image.config_digest, "bundle": bool(args.bundle), "total_seconds": round(total, 6)})
        json.dump(d, sys.stdout, indent=2)
        print()
        return 0
    what = "bundle" if args.bundle else "rootfs"
    print(f"unpacked {name} ({truncate_id(image.config_digest)}) from the store into {stats.dest} ({what}, "
          f"{'hardlinked' if args.link else 'copied'})")
    if stats.extracted:
        print(f"extracted {stats.extracted} missing snapshot(s) in {stats.extract_seconds:.3f}s")
    print(f"done: {stats.entries} entries ({stats.files} files, {stats.dirs} dirs, {stats.symlinks} symlinks), "
          f"{human_size(stats.bytes)} via {stats.method} in {stats.seconds:.3f}s")
    for s in stats.skipped:
        print(f"  skipped: {s}")
    if args.link:
        print("note: the files are the store's own (hardlinks): do not modify them in place")
    return 0
