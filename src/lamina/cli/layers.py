"""``lamina apply`` and ``lamina unpack``: layers and images onto directories."""
from __future__ import annotations

import json
import sys

from ..errors import LaminaError
from .images import human_size  # the verbs print sizes one way, docker's

FORMATS = ("dir", "overlay")


def _print_layer(stats, label: str, out):
    secs = stats.seconds.get("total", 0.0)
    print(f"{label}: {stats.entries} entries, {human_size(stats.bytes, 3)} ({stats.compression} {human_size(stats.compressed_bytes, 3)}),"
          f" {secs:.3f}s", file=out)
    print(f"  digest:  {stats.digest}", file=out)
    print(f"  diffID:  {stats.diff_id}", file=out)
    if stats.whiteouts:
        print(f"  whiteouts: {stats.whiteouts}", file=out)
    for s in stats.skipped:
        print(f"  skipped: {s}", file=out)


def cmd_apply(args):
    from ..layer import apply_layer
    stats = apply_layer(args.layer, args.dest, format=args.format, diff_id=args.diff_id, digest=args.digest,
                        media_type=args.media_type)
    if args.json:
        json.dump(stats.to_dict(), sys.stdout, indent=2)
        print()
    else:
        _print_layer(stats, f"applied {args.layer} onto {args.dest} ({args.format})", sys.stdout)


def _registry_source(args):
    """``docker://REF``: the image streams from the registry, nothing is kept in the store."""
    from ..registry.progress import reporter_for
    from ..registry.source import PREFIX, RegistrySource
    from .registry import _insecure
    ref = args.source[len(PREFIX):]
    return RegistrySource(ref, insecure=_insecure(args, ref), reporter=reporter_for("json" if args.json else "auto"))


def cmd_unpack(args):
    from .images import _closing, is_store_source, unpack_from_store
    from ..unpacker import unpack
    if args.source.startswith("docker://"):
        if args.bundle or args.link:
            raise LaminaError("--bundle and --link unpack images from the store; pull the image first")
        with _registry_source(args) as source:
            try:
                stats = unpack(source, args.dest, platform=args.platform, format=args.format)
                source.finished(source.image)
            finally:
                source.reporter.close()
    elif args.bundle or args.link or is_store_source(args.source, args.root):
        return _closing(unpack_from_store)(args)  # a bare image reference: materialize from the store's snapshots
    else:
        stats = unpack(args.source, args.dest, platform=args.platform, format=args.format)
    if args.json:
        json.dump(stats.to_dict(), sys.stdout, indent=2)
        print()
        return
    out = sys.stdout
    print(f"unpacking {args.source} ({stats.platform}) into {args.dest} ({args.format})", file=out)
    print(f"manifest: {stats.manifest_digest}", file=out)
    print(f"config:   {stats.config_digest}", file=out)
    for i, layer in enumerate(stats.layers):
        _print_layer(layer, f"layer {i + 1}/{len(stats.layers)}", out)
    total = stats.seconds.get("total", sum(layer.seconds.get("total", 0.0) for layer in stats.layers))
    rate = stats.bytes / total / 1e6 if total else 0.0
    print(f"done: {len(stats.layers)} layers, {stats.entries} entries, {human_size(stats.bytes, 3)} in {total:.3f}s"
          f" ({rate:.0f} MB/s), all digests verified", file=out)
    if stats.mount_options:
        print(f"overlay: mount -t overlay overlay -o {stats.mount_options} TARGET", file=out)


def register(sub):
    a = sub.add_parser("apply", help="apply one layer blob (gzip, zstd or tar) onto a directory")
    a.add_argument("layer", metavar="LAYER_FILE")
    a.add_argument("dest", metavar="DEST")
    a.add_argument("--format", choices=FORMATS, default="dir",
                   help="dir: apply whiteouts by deleting; overlay: write overlayfs whiteouts (default: dir)")
    a.add_argument("--diff-id", metavar="sha256:HEX", help="expected sha256 of the uncompressed tar")
    a.add_argument("--digest", metavar="sha256:HEX", help="expected sha256 of the blob as given")
    a.add_argument("--media-type", help="the layer's media type; must agree with the content")
    a.add_argument("--json", action="store_true", help="print stats as JSON")
    a.set_defaults(func=cmd_apply)

    u = sub.add_parser("unpack", help="unpack an image into a root filesystem (or overlay layer dirs)")
    u.add_argument("source", metavar="SOURCE", help="oci:PATH[:REF], docker-archive:PATH, an image in the store, "
                   "or docker://REF (straight from a registry, nothing kept)")
    u.add_argument("dest", metavar="DEST")
    u.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="platform to pick from a multi-arch index")
    u.add_argument("--format", choices=FORMATS, default="dir")
    u.add_argument("--json", action="store_true", help="print stats as JSON")
    u.add_argument("--bundle", action="store_true", help="store images: write an OCI runtime bundle "
                   "(DEST/config.json + DEST/rootfs)")
    u.add_argument("--link", action="store_true", help="store images: hardlink files from the store's snapshots "
                   "instead of copying (read-only use: writing to a file changes the store)")
    u.add_argument("--insecure", action="store_true",
                   help="docker://: allow plain HTTP and skip TLS verification for this registry")
    u.set_defaults(func=cmd_unpack)
