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

The work is lamina.images (the API); this module only formats what it returns.

Where docker has nothing to say, lamina says something useful instead:
  * ``{{.SharedSize}}`` / ``{{.UniqueSize}}`` are computed (docker prints N/A outside
    ``system df -v``), ``{{.Containers}}`` counts the mounts and bundles using the image;
  * ``history`` of an image whose config has no history shows one <missing> row per
    layer (docker shows none).
Mounts (``lamina mount``) and bundles (``lamina unpack --bundle``) play the part of
containers: they keep their image "in use" (rmi needs -f, prune -a skips it).
"""
from __future__ import annotations

import json
import os
import re
import sys
import time

from . import path_arg
from .output import add_format_option, human_size, shown_path

# --- docker's units ------------------------------------------------------------------

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
    # the year as Go writes it, 4 digits at least (glibc's %Y writes year 500 as "500")
    return (f"{lt.tm_year:04d}" + time.strftime("-%m-%d %H:%M:%S", lt)
            + f" {sign}{off // 3600:02d}{off % 3600 // 60:02d} {zone}")


def rfc3339_utc(ts):
    if ts is None:
        return ""
    t = time.gmtime(ts)
    return f"{t.tm_year:04d}" + time.strftime("-%m-%dT%H:%M:%SZ", t)  # 4 digits, as go_local_time


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


def _err(msg):
    from . import one_line  # a template's error quotes the image's values, as others quote names
    print(f"lamina: error: {one_line(str(msg))}", file=sys.stderr)


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


def image_row(summary, repo, tag, digest, *, trunc, now=None):
    """docker's imageContext over an api.ImageSummary."""
    from .gotemplate import GoStruct
    ts, size, shared = summary.created, summary.size, summary.shared_size
    methods = {
        "ID": lambda: truncate_id(summary.id) if trunc else summary.id,
        "Repository": lambda: repo,
        "Tag": lambda: tag,
        "Digest": lambda: digest,
        "CreatedSince": lambda: since(ts, now),
        "CreatedAt": lambda: go_local_time(ts),
        "Size": lambda: human_size(size, 3),
        "VirtualSize": lambda: human_size(size),
        "SharedSize": lambda: human_size(shared),
        "UniqueSize": lambda: human_size(size - shared),
        "Containers": lambda: str(summary.containers),
    }
    return GoStruct("image", methods=methods, pointer=True, json_methods=True)


def image_rows(summary, *, trunc, need_digest, show_digest_rows, now=None):
    """docker's imageFormat/imageFormatTaggedAndDigest for one api.ImageSummary."""
    from ..errors import InvalidReferenceError
    from ..reference import Reference
    repo_tags, repo_digests = {}, {}
    for name in summary.repo_tags:
        ref = Reference.parse(name)
        repo_tags.setdefault(ref.familiar_name, []).append(ref.tag)
    for rd in summary.repo_digests:
        try:
            r = Reference.parse(rd, default_tag=False)
        except InvalidReferenceError:
            continue
        if r.digest:
            repo_digests.setdefault(r.familiar_name, []).append(r.digest)
    kw = dict(trunc=trunc, now=now)
    rows = []
    if not repo_tags and not repo_digests:
        return [image_row(summary, "<none>", "<none>", "<none>", **kw)]
    for repo in sorted(repo_tags):
        digests = repo_digests.pop(repo, [])
        if not need_digest:
            digests = []
        for tag in sorted(repo_tags[repo]):
            if not digests:
                rows.append(image_row(summary, repo, tag, "<none>", **kw))
            for d in digests:
                rows.append(image_row(summary, repo, tag, d, **kw))
    for repo in sorted(repo_digests):
        if show_digest_rows:
            for d in repo_digests[repo]:
                rows.append(image_row(summary, repo, "<none>", d, **kw))
        else:
            rows.append(image_row(summary, repo, "<none>", "", **kw))
    return rows


_GLOB = re.compile(r"\[[^]]*\]|[*?]")


def _check_reference_pattern(pattern):
    """A name no image can have is a typo, not an empty match: say so as docker does
    ("invalid reference format"); the glob parts (*, ?, [..]) stand for any valid name."""
    from ..errors import InvalidReferenceError
    from ..reference import Reference
    try:
        Reference.parse(_GLOB.sub("x", pattern), default_tag=False)
    except InvalidReferenceError:
        raise InvalidReferenceError(f"invalid reference format: {pattern!r} (a repository is lowercase letters, "
                                    "digits and . _ - /, with an optional :TAG; * and ? match any)") from None


def cmd_images(args):
    from .. import images as api
    from .gotemplate import render_rows
    store = _open_store(args)
    filters = api.parse_filters(args.filter)
    if args.repository:
        filters.setdefault("reference", []).append(args.repository)
    for pattern in filters.get("reference", []):
        _check_reference_pattern(pattern)
    summaries = api.ls(store, filters)
    fmt = args.format or "table"
    if fmt == "table":  # docker's NewImageFormat: -q and --digests only shape the default table
        fmt = "{{.ID}}" if args.quiet else DEFAULT_IMAGE_TABLE_DIGEST if args.digests else DEFAULT_IMAGE_TABLE
    elif fmt.startswith("table") and args.digests and "{{.Digest}}" not in fmt:
        fmt += "\t{{.Digest}}"
    need_digest = args.digests or "{{.Digest}}" in fmt
    now = time.time()
    rows = []
    for summary in summaries:
        rows += image_rows(summary, trunc=not args.no_trunc, need_digest=need_digest,
                           show_digest_rows=args.digests, now=now)
    sys.stdout.write(render_rows(fmt, rows, IMAGE_HEADERS))


# --- inspect (docker's InspectResponse) ---------------------------------------------------------------

def _strs(v):
    from .gotemplate import NilSlice
    return [x for x in v if isinstance(x, str)] if isinstance(v, list) else NilSlice()


def _go_int(v):
    """A Healthcheck number as docker's int64 fields hold it; anything else (a string, a list, 1.5,
    true: no Go reader takes it, and int() either fails on it or makes one up) as absent.  Only
    docker reads these fields, and only here: an image with such a config still unpacks, as umoci
    and containerd (which ignore them) unpack it."""
    return v if isinstance(v, int) and not isinstance(v, bool) and -(1 << 63) <= v < (1 << 63) else 0


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
            ("Interval", _go_int(hc.get("Interval")), "Interval", True),
            ("Timeout", _go_int(hc.get("Timeout")), "Timeout", True),
            ("StartPeriod", _go_int(hc.get("StartPeriod")), "StartPeriod", True),
            ("StartInterval", _go_int(hc.get("StartInterval")), "StartInterval", True),
            ("Retries", _go_int(hc.get("Retries")), "Retries", True),
        ], pointer=True)
    ext = GoStruct("v1.DockerOCIImageConfigExt", [
        ("Healthcheck", health, "Healthcheck", True),
        ("OnBuild", _strs(cfg.get("OnBuild")), "OnBuild", True),
        ("Shell", _strs(cfg.get("Shell")), "Shell", True),
    ])
    return GoStruct("*v1.DockerOCIImageConfig", [], pointer=True, embedded=[image_config, ext])


def inspect_struct(details):
    """(typed GoStruct, raw JSON dict) of docker's image inspect for one api.ImageDetails."""
    from .. import images as api
    from .gotemplate import GoMap, GoStruct, GoTime
    image = details.image
    c = image.config or {}
    repo_tags = [r.familiar() for r in image.refs]
    repo_digests = [api.familiar(rd) for rd in image.repo_digests]
    created = c.get("created")
    gt = GoTime.parse(created) if isinstance(created, str) else None
    created_s = gt.rfc3339() if gt else ""
    snapshot_dirs = details.snapshot_dirs
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
        ("Size", details.size, "Size", False),
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
    from .. import images as api
    from ..errors import LaminaError
    from .gotemplate import TemplateError, go_json, parse
    store = _open_store(args)
    tmpl = None
    fmt = args.format
    if fmt and fmt != "json":
        tmpl = parse(fmt)  # a parse error is reported before anything is printed (docker: exit 64)
    sizes = None
    results, errors = [], []
    for ref in args.refs:
        try:
            sizes = sizes or api.Sizes(store)
            details = api.inspect(store, ref, sizes=sizes)
        except LaminaError as e:
            errors.append(str(e))
            continue
        results.append(inspect_struct(details))
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


HISTORY_HEADERS = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "CreatedBy": "CREATED BY",
                   "Size": "SIZE", "Comment": "COMMENT"}
DEFAULT_HISTORY_TABLE = "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
NONHUMAN_HISTORY_TABLE = "table {{.ID}}\t{{.CreatedAt}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"


# docker history leaves CREATED empty for a step made before 2000 (a config without `created`
# gives the epoch, which it would call "56 years ago")
HISTORY_EPOCH = 946684800


def history_row(item, *, trunc, human, now=None):
    """docker's historyContext over an api.HistoryItem."""
    from .gotemplate import GoStruct
    item = item.to_dict()
    created = item["created"]

    def created_at():
        return rfc3339_utc(created)
    methods = {
        "ID": lambda: (truncate_id(item["id"]) if trunc and item["id"] != "<missing>" else item["id"]),
        "CreatedAt": created_at,
        "CreatedSince": lambda: ((since(created, now) if created and created > HISTORY_EPOCH else "")
                                 if human else created_at()),
        "CreatedBy": lambda: (ellipsis(item["created_by"].replace("\t", " "), 45) if trunc
                              else item["created_by"].replace("\t", " ")),
        "Size": lambda: human_size(item["size"], 3) if human else str(item["size"]),
        "Comment": lambda: item["comment"],
    }
    return GoStruct("history", methods=methods, pointer=True, json_methods=True)


def cmd_history(args):
    from .. import images as api
    from .gotemplate import write_rows
    store = _open_store(args)
    steps = api.HistorySteps(store, args.ref)
    fmt = args.format or "table"
    if fmt == "table":
        fmt = "{{.ID}}" if args.quiet else DEFAULT_HISTORY_TABLE if args.human else NONHUMAN_HISTORY_TABLE
    now = time.time()
    write_rows(sys.stdout, fmt, lambda: (history_row(it, trunc=not args.no_trunc, human=args.human, now=now)
                                         for it in steps), HISTORY_HEADERS)


# --- tag / rmi / prune ------------------------------------------------------------------------------

def cmd_tag(args):
    from .. import images as api
    api.tag(_open_store(args), args.source, args.target)


def _busy_note(what):
    print(f"note: another lamina process is writing to the store; {what}", file=sys.stderr)


def cmd_rmi(args):
    from .. import images as api
    from ..errors import LaminaError
    from .output import check_format, emit, wants_text
    check_format(args)
    store = _open_store(args)
    failures = 0
    removed = []
    for ref in args.refs:
        try:
            result = api.remove(store, ref, force=args.force, prune=False)
        except LaminaError as e:
            _err(e)
            failures += 1
            continue
        if wants_text(args):
            for name in result.untagged:
                print(f"Untagged: {name}")
            for image_id in result.deleted:
                print(f"Deleted: {image_id}")
        removed.append(result)
    total = api.RemoveResult()
    for r in removed:
        total.untagged += r.untagged
        total.deleted += r.deleted
        total.manifests += r.manifests
    # (not only when an image ID was deleted: a manifest whose ID another one keeps leaves its blob)
    if total.manifests and not args.no_prune:
        api.collect_unused(store, total)
        if total.busy:
            _busy_note("the unused layers are removed when it is done")
    emit(args, total.to_dict(), lambda: _print_deleted(total.snapshots))
    return 1 if failures else 0


def _print_deleted(chains):
    for chain in chains:
        print(f"Deleted: {chain}")


def _confirm(message, force):
    if force:
        return True
    sys.stdout.write(message + "\nAre you sure you want to continue? [y/N] ")
    sys.stdout.flush()
    answer = sys.stdin.readline()
    if not answer.endswith("\n"):
        print()  # stdin ended (no terminal, nothing piped): end the prompt's line, it means no
    return answer.strip().lower() in ("y", "yes")


def cmd_image_prune(args):
    from .. import images as api
    from .output import check_format, emit
    check_format(args)
    store = _open_store(args)
    filters = api.parse_filters(args.filter, api.PRUNE_FILTERS)
    msg = ("WARNING! This will remove every image that no mount or bundle uses, tagged or not."
           if args.all else "WARNING! This will remove all dangling images (images without a name).")
    if not _confirm(msg, args.force):
        return 0
    result = api.prune(store, all=args.all, filters=filters)
    if result.busy:
        _busy_note("the unused layers are removed when it is done")
    emit(args, result.to_dict(), lambda: _print_prune(result))


def _print_prune(result):
    lines = [f"untagged: {n}" for n in result.untagged] + [f"deleted: {i}" for i in result.deleted] + \
        [f"deleted: {c}" for c in result.snapshots]
    if lines:
        print("Deleted Images:")
        for line in lines:
            print(line)
        print()
    print(f"Total reclaimed space: {human_size(result.reclaimed)}")


# --- system df -------------------------------------------------------------------------------------------

DF_HEADERS = {"Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE", "Reclaimable": "RECLAIMABLE"}
DEFAULT_DF_TABLE = "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}"


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
    from .. import images as api
    from .gotemplate import render_rows
    store = _open_store(args)
    du = api.disk_usage(store)
    files = store.file_usage()
    mounted = [m for m in du.mounts if m.get("mounted")]
    unreferenced = du.unreferenced_blobs + du.unreferenced_snapshots
    rows = [
        _df_row("Images", len(du.images), du.active, du.images_size, du.images_reclaimable),
        _df_row("Layer blobs", du.blobs, du.blobs, du.blobs_size, 0),
        _df_row("Mounts", len(du.mounts), len(mounted), du.mounts_size, du.mounts_reclaimable),
        _df_row("Unreferenced", unreferenced, 0, du.unreferenced_size, du.unreferenced_size),
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
    from ..reference import Reference
    now = time.time()
    img_rows = []
    for summary in du.images:
        repo = tag = "<none>"
        if summary.repo_tags:
            first = Reference.parse(summary.repo_tags[0])
            repo, tag = first.familiar_name, first.tag
        img_rows.append(image_row(summary, repo, tag, "", trunc=True, now=now))
    hdr = dict(IMAGE_HEADERS, Containers="IN USE")
    from .gotemplate import GoStruct
    snap_rows = []
    for s in sorted(du.snapshots, key=lambda s: -s.size):
        snap_rows.append(GoStruct("snapshot", methods={
            "ID": lambda s=s: truncate_id(s.chain_id), "Size": lambda s=s: human_size(s.size),
            "Images": lambda s=s: str(s.images), "InUse": lambda s=s: "yes" if s.in_use else "no"}))
    m_rows = []
    for m in du.mounts:
        m_rows.append(GoStruct("mount", methods={
            "Target": lambda m=m: m["path"], "Image": lambda m=m: (m.get("names") or [truncate_id(m["image_id"])])[0],
            "Mode": lambda m=m: _mount_mode(m),
            "Size": lambda m=m: human_size(api.directory_usage(m["upper"])) if m.get("upper") else "0B",
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
    out.write(f"\nLayer blobs (compressed, kept for push and save): {human_size(du.blobs_size)} ({du.blobs} blobs)\n")
    out.write(f"\nFile objects: {files.objects} ({files.shared_objects} shared), {human_size(files.size)} on disk "
              f"for {human_size(files.logical)} of snapshot files: sharing saves {human_size(files.saved)}\n")
    out.write(f"\nUnreferenced content: {human_size(du.unreferenced_size)} ({du.unreferenced_blobs} blobs, "
              f"{du.unreferenced_snapshots} snapshots, {human_size(du.partials)} partial downloads; removed by "
              "`lamina image prune`)\n")
    return 0


# --- mount / umount ------------------------------------------------------------------------------------

def _mount_mode(record):
    # suid is the exception worth seeing: the mount hands the image's setuid files to local users
    return ("rw" if record.get("rw") else "ro") + (",suid" if record.get("suid") else "")


def cmd_mount(args):
    from .. import images as api
    from ..errors import LaminaError
    store = _open_store(args)
    if args.ref is None:
        from .gotemplate import GoStruct, render_rows
        records = api.mounts(store)
        if args.format == "json":  # lamina's own document, even with nothing mounted
            from .output import emit
            emit(args, {"mounts": [{"target": m["path"], "image_id": m["image_id"], "names": m.get("names") or [],
                                    "rw": bool(m.get("rw")), "suid": bool(m.get("suid")),
                                    "mounted": bool(m.get("mounted"))} for m in records]})
            return 0
        rows = []
        for m in records:
            rows.append(GoStruct("mount", methods={
                "Target": lambda m=m: shown_path(m["path"]),
                "Image": lambda m=m: (m.get("names") or [truncate_id(m["image_id"])])[0],
                "ID": lambda m=m: truncate_id(m["image_id"]),
                "Mode": lambda m=m: _mount_mode(m),
                "Mounted": lambda m=m: "yes" if m.get("mounted") else "no (run lamina umount to clean up)"}))
        fmt = args.format or "table {{.Target}}\t{{.Image}}\t{{.ID}}\t{{.Mode}}\t{{.Mounted}}"
        sys.stdout.write(render_rows(fmt, rows, {"Target": "TARGET", "Image": "IMAGE", "ID": "IMAGE ID",
                                                 "Mode": "MODE", "Mounted": "MOUNTED"}))
        return 0
    if args.target is None:
        raise LaminaError("mount needs REF and TARGET (or nothing, to list the mounts)")
    record = api.mount(store, args.ref, args.target, rw=args.rw, suid=args.suid)
    print(shown_path(record["path"]))
    return 0


def cmd_umount(args):
    from .. import images as api
    store = _open_store(args)
    failures = 0
    from ..errors import LaminaError
    for t in args.targets:
        try:
            api.umount(store, t, lazy=args.lazy)
        except LaminaError as e:
            _err(e)
            failures += 1
            continue
        print(shown_path(os.path.abspath(t)))
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
    add_format_option(p, example="{{.reclaimed}}")
    p.set_defaults(func=_closing(cmd_rmi))


def _prune_parser(p):
    p.add_argument("-a", "--all", action="store_true", help="remove all images not in use, not just dangling ones")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.add_argument("--filter", action="append", metavar="FILTER", help="until=DURATION|TIME, label=KEY[=VALUE]")
    add_format_option(p, example="{{.reclaimed}}")
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
    m.add_argument("target", nargs="?", metavar="TARGET", type=path_arg)
    m.add_argument("--rw", action="store_true", help="writable: changes go to an upper dir that umount removes")
    m.add_argument("--suid", action="store_true",
                   help="honour the image's set-user-ID/set-group-ID bits and file capabilities (by default the "
                        "mount is nosuid: a hostile image's setuid-root files would give root to anyone who "
                        "can reach TARGET)")
    m.add_argument("--format", metavar="FORMAT", help="template for the listing")
    m.set_defaults(func=_closing(cmd_mount))

    u = sub.add_parser("umount", aliases=["unmount"], help="unmount an image mounted by lamina mount and clean up")
    u.add_argument("targets", nargs="+", metavar="TARGET", type=path_arg)
    u.add_argument("-l", "--lazy", action="store_true", help="detach now even if busy (MNT_DETACH)")
    u.set_defaults(func=_closing(cmd_umount))


# --- lamina unpack from the store (called by cli/layers.py) ---------------------------------------------

def unpack_from_store(args):
    from .. import images as api
    from ..errors import LaminaError
    from .layers import disk_format
    from .output import check_format, emit
    check_format(args)
    if disk_format(args) != "dir":
        raise LaminaError("--overlay is for oci:/docker-archive: sources; an image in the store already has "
                          "its layers as snapshots: use `lamina mount IMAGE TARGET`")
    if args.source.startswith(api.TRANSPORTS):
        raise LaminaError("--bundle and --link unpack images from the store; import the image first "
                          f"(lamina copy {args.source} NAME) or drop the option")
    store = _open_store(args)
    t0 = time.perf_counter()
    image, stats = api.unpack(store, args.source, args.dest, bundle=args.bundle, link=args.link,
                              platform=args.platform)
    total = time.perf_counter() - t0
    name = image.refs[0].familiar() if image.refs else truncate_id(image.config_digest)
    d = stats.to_dict()
    d.update({"source": args.source, "image": name, "manifest_digest": image.manifest_digest,
              "config_digest": image.config_digest, "bundle": bool(args.bundle), "total_seconds": round(total, 6)})
    emit(args, d, lambda: _print_store_unpack(args, image, stats, name))
    return 0


def _print_store_unpack(args, image, stats, name):
    what = "bundle" if args.bundle else "rootfs"
    print(f"unpacked {name} ({truncate_id(image.config_digest)}) from the store into {shown_path(stats.dest)} ({what}, "
          f"{'hardlinked' if args.link else 'copied'})")
    if stats.extracted:
        print(f"extracted {stats.extracted} missing snapshot(s) in {stats.extract_seconds:.3f}s")
    print(f"done: {stats.entries} entries ({stats.files} files, {stats.dirs} dirs, {stats.symlinks} symlinks), "
          f"{human_size(stats.bytes)}{f' via {stats.method}' if stats.method else ''} in {stats.seconds:.3f}s")
    for s in stats.skipped:
        print(f"  skipped: {s}")
    if args.link:
        print("note: the files are the store's own (hardlinks): do not modify them in place")
    return 0
