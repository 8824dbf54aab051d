"""``lamina load``, ``lamina save``, ``lamina copy``, ``lamina fsck``: images in and out of the store."""
from __future__ import annotations

import json
import sys

from ..errors import InvalidReferenceError
from . import one_line, path_arg
from .output import add_format_option, check_format, emit, wants_text, write_json_streamed


def _store(args):
    from ..store import Store
    return Store(args.root)


def _short(digest):
    return digest.split(":", 1)[-1][:12]


def _reporter(args):
    if getattr(args, "quiet", False):
        return None

    def report(kind, digest, what):
        if kind == "blob":
            status = "Already exists" if what == "exists" else "Loaded"
            print(f"{_short(digest)}: {status}", file=sys.stderr)
    return report


def cmd_load(args):
    with _store(args) as store:
        _load(args, store)


def _load(args, store):
    from ..transports import load, load_stream
    check_format(args)
    if args.input is None:
        if sys.stdin.isatty():
            raise InvalidReferenceError("requested load from stdin, but stdin is a terminal; use -i FILE")
        loaded = load_stream(sys.stdin.buffer, store=store, platform=args.platform, report=_reporter(args))
    else:
        loaded = load(args.input, store=store, platform=args.platform, report=_reporter(args))
    doc = {"images": [{"id": item.image.config_digest, "manifest_digest": item.image.manifest_digest,
                       "names": [ref.familiar() for ref in item.names]} for item in loaded]}
    emit(args, doc, lambda: _print_loaded(loaded))


def _print_loaded(loaded):
    for item in loaded:
        if item.names:
            for ref in item.names:
                print(f"Loaded image: {ref.familiar()}")
        else:
            print(f"Loaded image ID: {item.image.config_digest}")


def cmd_save(args):
    from ..transports import save
    output, fmt = args.output, args.format
    if output and output.startswith(("docker-archive:", "oci-archive:")):
        fmt, _, output = output.partition(":")
    if output in (None, "-"):
        if sys.stdout.isatty():
            raise InvalidReferenceError("cowardly refusing to write an archive to a terminal; use -o FILE"
                                        " or redirect stdout")
        output = None
    with _store(args) as store:
        save(args.images, output, store=store, format=fmt)


def cmd_copy(args):
    from dataclasses import asdict

    from ..transports import copy, is_stdout, parse
    check_format(args)
    dest = parse(args.destination)
    # the archive is stdout's whole stream (docker save prints nothing beside it; skopeo's report
    # on stdout corrupts it unless -q): the report goes where the progress goes
    out = sys.stderr if dest.transport in ("docker-archive", "oci-archive") and is_stdout(dest.path) else sys.stdout
    store = _store(args) if _needs_store(args) else None
    try:
        result = copy(args.source, args.destination, store=store, platform=args.platform,
                      report=_copy_reporter(args))
    finally:
        if store is not None:
            store.close()
    if not args.quiet:
        print("Writing manifest to image destination", file=sys.stderr)
    emit(args, asdict(result), (lambda: print(result.manifest_digest, file=out)) if not args.quiet else None, out=out)


def _needs_store(args):
    from ..transports import parse
    return any(parse(s).transport == "store" for s in (args.source, args.destination))


def _copy_reporter(args):
    if args.quiet:
        return None

    def report(kind, digest, what):
        if kind == "blob":
            print(f"Copying blob {_short(digest)} " + ("skipped: already exists" if what == "exists" else "done"),
                  file=sys.stderr)
    return report


def _count(n, noun):
    return f"{n} {noun}" + ("" if n == 1 else "s")


def cmd_fsck(args):
    with _store(args) as store:
        return _fsck(args, store)


def _fsck(args, store):
    check_format(args)
    report = store.fsck(repair=args.repair, waiting=lambda: print(
        "lamina fsck: waiting for other lamina processes writing to the store to finish...", file=sys.stderr))
    if wants_text(args):
        _print_fsck(args, report)
    elif args.format == "json":
        write_json_streamed(report.to_dict(findings=False), "findings", report.iter_dicts())
    else:
        emit(args, report.to_dict())  # a template may read any finding: the whole document
    return 0 if report.ok else 1


# Findings of one kind shown in full; a store an interrupted prune left holds thousands of unused
# objects, and a screen of them hides everything else (--format json lists every one).
FSCK_SHOWN_PER_KIND = 5
_UNUSED_KINDS = ("orphan-blob", "orphan-snapshot", "unused-object")


def _print_fsck(args, report):
    # one pass over the findings (they may be a stream of hundreds of thousands): the first
    # FSCK_SHOWN_PER_KIND of each group are kept, the rest only counted
    groups = {}
    errors = warnings = repaired = 0
    unused = False
    for f in report.findings:
        group = groups.setdefault((f.severity, f.kind, f.repaired), [0, []])
        group[0] += 1
        if len(group[1]) < FSCK_SHOWN_PER_KIND:
            group[1].append(f)
        errors += f.severity == "error"
        warnings += f.severity != "error"
        repaired += f.repaired
        unused = unused or f.kind in _UNUSED_KINDS
    for (severity, kind, was_repaired), (count, shown) in groups.items():
        for f in shown:
            print(one_line(str(f)))  # a finding may name a file of a snapshot: the layer's bytes
        if count > FSCK_SHOWN_PER_KIND:
            print(f"{severity}: {count - FSCK_SHOWN_PER_KIND} more {kind} findings like these"
                  + (" (repaired)" if was_repaired else "") + "; lamina fsck --format json lists every one")
    c = report.checked
    summary = (f"checked {_count(c.get('blobs', 0), 'blob')}, {_count(c.get('images', 0), 'image')}, "
               f"{_count(c.get('snapshots', 0), 'snapshot')}: ")
    summary += f"{_count(errors, 'error')}, {_count(warnings, 'warning')}" + (
        f", {repaired} repaired" if args.repair else "")
    print(summary)
    if not report.ok and not args.repair:
        print("run lamina fsck --repair to fix what can be fixed", file=sys.stderr)
    elif not args.repair and unused:
        # a failed pull keeps what it verified (fsck cannot tell that from debris): say both
        print("unused content (what a failed pull keeps for its rerun to reuse, or an interrupted rmi or prune "
              "leaves): lamina image prune removes it", file=sys.stderr)


def cmd_config(args):
    # `config set dedup` once printed the value, and `config get dedup false` set it
    if args.action == "set" and args.value is None:
        args._parser.error("config set needs KEY and VALUE")
    if args.action != "set" and args.value is not None:
        args._parser.error(f"unexpected VALUE {args.value!r}: to change a setting, use config set KEY VALUE")
    with _store(args) as store:
        if args.key is None:
            for key, value in sorted(store.config().items()):
                print(f"{key}\t{json.dumps(value)}")
        elif args.value is None:
            print(json.dumps(store.config_value(args.key)))
        else:
            store.set_config(args.key, args.value)
    return 0


def register(sub):
    p = sub.add_parser("load", help="load images from a docker-archive or oci-archive tar (like docker load)")
    p.add_argument("-i", "--input", metavar="FILE", type=path_arg, help="archive to read (default: stdin)")
    p.add_argument("-q", "--quiet", action="store_true", help="only print the loaded image names")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="the platform a multi-platform image is tagged as and extracted for "
                        "(every platform the archive holds is kept)")
    add_format_option(p, example="{{range .images}}{{.id}} {{end}}")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("save", help="save images to a tar archive (like docker save)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output", metavar="FILE", type=path_arg, help="write to FILE (default: stdout)")
    # save writes an archive, not a report: its --format names the archive's (as skopeo's does)
    p.add_argument("--format", choices=("docker-archive", "oci-archive"), default="docker-archive",
                   help="archive format (default: docker-archive, what docker load reads)")
    p.set_defaults(func=cmd_save)

    p = sub.add_parser("copy", help="copy an image between oci:, docker-archive:, oci-archive: and the store")
    p.add_argument("source", metavar="SOURCE", type=path_arg, help="oci:PATH[:REF], docker-archive:PATH[:REF], "
                   "oci-archive:PATH[:REF] or an image in the store")
    p.add_argument("destination", metavar="DEST", type=path_arg, help="same forms; a plain name means the store")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="platform to copy from a multi-platform source")
    p.add_argument("-q", "--quiet", action="store_true", help="no output but errors")
    add_format_option(p, example="{{.manifest_digest}}")
    p.set_defaults(func=cmd_copy)

    p = sub.add_parser("fsck", help="check the store: blob digests, snapshots against their layers, leftovers")
    p.add_argument("--repair", action="store_true", help="fix what can be fixed (waits for other lamina writers)")
    add_format_option(p, example="{{.ok}}")
    p.set_defaults(func=cmd_fsck)

    p = sub.add_parser("config", help="show or change the store's settings (dedup, keep-blobs)")
    p.add_argument("action", nargs="?", choices=("get", "set"), help="without: list every setting")
    p.add_argument("key", nargs="?", metavar="KEY")
    p.add_argument("value", nargs="?", metavar="VALUE")
    p.set_defaults(func=cmd_config)
