"""``lamina apply`` and ``lamina unpack``: layers and images onto directories."""
from __future__ import annotations

import os
import sys

from ..errors import ExtractError, LaminaError, layer_of
from ..trace import event
from . import path_arg
from .output import add_format_option, check_format, emit, human_size, shown_path

FORMATS = ("dir", "overlay")


def disk_format(args):
    """dir or overlay: --overlay, or the older spelling --format dir|overlay."""
    return "overlay" if args.overlay or args.format == "overlay" else "dir"


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


def _partly_applied(dest):
    return (f"{dest} is now partly applied (apply works in place, like tar -x: the entries before the failure "
            "were written); --atomic applies all or nothing")


def cmd_apply(args):
    from ..atomic import apply_layer_atomic, why_unwritable
    from ..errors import LaminaError
    from ..layer import apply_layer, check_not_symlink
    check_format(args)
    fmt = disk_format(args)
    apply = apply_layer_atomic if args.atomic else apply_layer
    if not os.path.exists(args.layer):  # before DEST is made; say which argument, as load -i does
        raise LaminaError(f"layer {args.layer}: no such file")
    if os.path.isdir(args.layer):
        raise LaminaError(f"layer {args.layer}: is a directory (apply takes one layer blob; unpack takes an image)")
    existed = os.path.lexists(args.dest)
    check_not_symlink(args.dest)  # before the error path below, which would call it partly applied
    if existed and not os.path.isdir(args.dest):
        raise ExtractError(f"destination {args.dest} exists and is not a directory")
    reason = why_unwritable(args.dest) if existed and not args.atomic else None
    if reason:  # else the first entry fails, and the error would say DEST is partly applied
        raise ExtractError(f"cannot write {args.dest}: {reason}")
    try:
        stats = apply(args.layer, args.dest, format=fmt, diff_id=args.diff_id, digest=args.digest,
                      media_type=args.media_type)
    except (KeyboardInterrupt, LaminaError, OSError) as e:
        if args.atomic or not os.path.isdir(args.dest):
            raise
        if not existed and not os.listdir(args.dest):
            os.rmdir(args.dest)  # nothing was written: leave no trace of a DEST the user never had
            raise
        if isinstance(e, KeyboardInterrupt):  # Ctrl-C leaves DEST as a failure does: say so
            raise KeyboardInterrupt(_partly_applied(args.dest)) from None
        if not isinstance(e, LaminaError):
            raise
        e.args = (f"{e}; {_partly_applied(args.dest)}",)
        raise
    emit(args, stats.to_dict(), lambda: _print_layer(stats, f"applied {shown_path(args.layer)} onto {shown_path(args.dest)} ({fmt})",
                                                       sys.stdout))


def _registry_source(args):
    """``docker://REF``: the image streams from the registry, nothing is kept in the store."""
    from ..registry.progress import reporter_for
    from ..registry.source import PREFIX, RegistrySource
    from .registry import _insecure
    event("imported")   # the registry stack: the timeline's share of start-up before any request
    ref = args.source[len(PREFIX):]
    return RegistrySource(ref, insecure=_insecure(args, ref), reporter=reporter_for("json" if args.format == "json" else "auto"))


def _is_store_source(args):
    from ..images import is_store_source
    return is_store_source(args.source, args.root)


def cmd_unpack(args):
    if args.source.startswith("docker://"):
        if args.bundle or args.link:
            raise LaminaError("--bundle and --link unpack images from the store; pull the image first")
        check_format(args)
        with _registry_source(args) as source:
            try:
                # Resolving starts the first blobs downloading: they arrive while the unpacker
                # is imported (a loopback registry answers faster than that import takes).
                source.resolve(args.platform)
                from ..unpacker import unpack
                event("imported-unpacker")
                stats = unpack(source, args.dest, platform=args.platform, format=disk_format(args))
                source.finished(source.image)
            finally:
                source.reporter.close()
    elif args.bundle or args.link or _is_store_source(args):
        from .images import _closing, unpack_from_store
        return _closing(unpack_from_store)(args)  # a bare image reference: materialize from the store's snapshots
    else:
        from ..images import check_path_source
        from ..unpacker import unpack
        check_format(args)
        check_path_source(args.source)
        stats = unpack(args.source, args.dest, platform=args.platform, format=disk_format(args))
    emit(args, stats.to_dict(), lambda: _print_unpack(args, stats))


def _print_unpack(args, stats):
    out = sys.stdout
    from . import one_line  # the platform is the image config's os/architecture: any string
    print(f"unpacking {shown_path(args.source)} ({one_line(str(stats.platform))}) into {shown_path(args.dest)} "
          f"({disk_format(args)})", file=out)
    # a legacy docker archive has no manifest (its layers are known by their diffIDs only)
    print(f"manifest: {stats.manifest_digest or 'none (legacy docker archive)'}", file=out)
    print(f"config:   {stats.config_digest}", file=out)
    for i, layer in enumerate(stats.layers):
        _print_layer(layer, layer_of(i, len(stats.layers)), out)
    total = stats.seconds.get("total", sum(layer.seconds.get("total", 0.0) for layer in stats.layers))
    rate = stats.bytes / total / 1e6 if total else 0.0
    print(f"done: {len(stats.layers)} layers, {stats.entries} entries, {human_size(stats.bytes, 3)} in {total:.3f}s"
          f" ({rate:.0f} MB/s), all digests verified", file=out)
    if stats.mount_options:
        print(f"overlay: mount -t overlay overlay -o {stats.mount_options} TARGET", file=out)


def register(sub):
    a = sub.add_parser("apply", help="apply one layer blob (gzip, zstd or tar) onto a directory")
    a.add_argument("layer", metavar="LAYER_FILE", type=path_arg)
    a.add_argument("dest", metavar="DEST", type=path_arg)
    a.add_argument("--overlay", action="store_true",
                   help="write overlayfs whiteouts (character devices, opaque xattrs) instead of deleting")
    a.add_argument("--diff-id", metavar="sha256:HEX", help="expected sha256 of the uncompressed tar")
    a.add_argument("--digest", metavar="sha256:HEX", help="expected sha256 of the blob as given")
    a.add_argument("--media-type", help="the layer's media type; must agree with the content")
    a.add_argument("--atomic", action="store_true", help="apply to a copy of DEST and rename it into place only "
                   "if the whole layer applies and verifies (without it, a failure leaves DEST partly applied)")
    add_format_option(a, example="{{.diff_id}}", text_values=FORMATS)
    a.set_defaults(func=cmd_apply, _no_store=True)

    u = sub.add_parser("unpack", help="unpack an image into a root filesystem (or overlay layer dirs)")
    u.add_argument("source", metavar="SOURCE", type=path_arg, help="an image in the store (NAME[:TAG], ID), oci:PATH[:REF], "
                   "oci-archive:PATH[:REF], docker-archive:PATH[:REF], or docker://REF (straight from a "
                   "registry, nothing kept)")
    u.add_argument("dest", metavar="DEST", type=path_arg)
    u.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="platform to pick from a multi-arch index")
    u.add_argument("--overlay", action="store_true", help="oci:/archive sources: one overlayfs layer dir per "
                   "layer (DEST/layers/N) and the mount options, instead of one merged rootfs")
    add_format_option(u, example="{{.manifest_digest}}", text_values=FORMATS)
    u.add_argument("--bundle", action="store_true", help="store images: write an OCI runtime bundle "
                   "(DEST/config.json + DEST/rootfs)")
    u.add_argument("--link", action="store_true", help="store images: hardlink files from the store's snapshots "
                   "instead of copying (read-only use: writing to a file changes the store)")
    u.add_argument("--insecure", action="store_true",
                   help="docker://: allow plain HTTP and skip TLS verification for this registry")
    u.set_defaults(func=cmd_unpack)
