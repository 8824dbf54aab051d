"""``lamina bench``: how fast an image unpacks here, per stage, next to the other tools."""
from __future__ import annotations

import sys

from ..bench_choices import SYNTHETIC_KINDS, TOOLS
from ..errors import LaminaError
from .output import add_format_option, check_format, emit, shown_path


def cmd_bench(args):
    from ..bench import parse_sizes, run, run_synthetic, write_report
    check_format(args)
    fmt = "overlay" if args.overlay else "dir"
    compare = [t for t in (args.compare or "").split(",") if t]
    progress = (lambda msg: print(f"bench: {msg}", file=sys.stderr)) if args.verbose else None
    if args.synthetic:
        if args.source:
            raise LaminaError("give either SOURCE or --synthetic KIND, not both")
        sizes = parse_sizes(args.sizes) if args.sizes else None
        doc = run_synthetic(args.synthetic, sizes, format=fmt, runs=args.runs, compare=compare,
                            target=args.target, progress=progress)
    elif args.source:
        doc = run(args.source, format=fmt, runs=args.runs, compare=compare, target=args.target, progress=progress,
                  root=getattr(args, "root", None), insecure=args.insecure)
    else:
        raise LaminaError("nothing to measure: give SOURCE or --synthetic KIND")
    written = write_report(doc, args.report) if args.report else []
    emit(args, doc, lambda: _print(doc, written))


def _print(doc, written):
    from ..bench import report_tables
    target = doc["target"]
    print(f"lamina bench {doc.get('source') or doc.get('synthetic')}: format {doc['format']}, {doc['runs']} run(s), "
          f"target {target.get('path', '')} on {target['fstype']} ({target['mount_source']})")
    for title, rows in report_tables(doc):
        print(f"\n{title}:")
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  " + "  ".join(str(c).rjust(w) for c, w in zip(row, widths)).rstrip())
    if written:
        print()
    for path in written:
        print(f"wrote {shown_path(path)}")


def register(sub):
    b = sub.add_parser("bench", help="measure unpacking an image or layer here, per stage, next to other tools")
    b.add_argument("source", metavar="SOURCE", nargs="?",
                   help="an image in the store (NAME[:TAG], ID), docker://REF, oci:PATH[:REF], oci-archive:PATH[:REF], "
                   "docker-archive:PATH[:REF], or a layer file")
    b.add_argument("--overlay", action="store_true", help="measure the overlay format (one dir per layer)")
    b.add_argument("--runs", type=int, default=3, metavar="N", help="timed runs per tool; medians are reported "
                   "(default 3)")
    b.add_argument("--compare", metavar="TOOLS", help=f"also run these tools, interleaved: {','.join(TOOLS)}")
    b.add_argument("--target", metavar="DIR", help="unpack under DIR (default: a fresh dir under /dev/shm)")
    b.add_argument("--synthetic", metavar="KIND", choices=SYNTHETIC_KINDS,
                   help=f"generated layers probing one dimension: {', '.join(SYNTHETIC_KINDS)}")
    b.add_argument("--sizes", metavar="N,N,...", help="synthetic sizes: entries (MiB per file for huge-files), "
                   "like 1k,10k,100k (default 1k,10k,100k; huge-files 8,32,128)")
    b.add_argument("--report", metavar="DIR", help="write bench.json and index.html (charts with lamina[plot])")
    b.add_argument("--insecure", action="store_true",
                   help="docker://: allow plain HTTP and skip TLS verification for this registry")
    b.add_argument("-v", "--verbose", action="store_true", help="say what runs, on stderr")
    add_format_option(b)
    b.set_defaults(func=cmd_bench)
