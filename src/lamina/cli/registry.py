"""``lamina pull`` / ``push`` / ``login`` / ``logout`` / ``manifest inspect``: the registry verbs."""
from __future__ import annotations

import json
import sys

from .output import add_format_option, check_format, document, emit, wants_text


def _add_common(p):
    p.add_argument("--insecure", action="store_true",
                   help="allow plain HTTP and skip TLS verification for this registry")


def register(sub):
    p = sub.add_parser("pull", help="pull an image from a registry into the store")
    p.add_argument("ref", metavar="NAME[:TAG|@DIGEST]")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="platform of a multi-platform image "
                   "(default: this machine's)")
    p.add_argument("-a", "--all-tags", action="store_true",
                   help="pull every tagged image of the repository (like docker pull -a)")
    p.add_argument("--all-platforms", action="store_true",
                   help="keep every platform of a multi-platform image under the tag (the chosen one is "
                   "extracted; save as oci-archive and push keep them all)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image reference")
    add_format_option(p, example="{{.image_id}}")
    p.add_argument("--max-concurrent-downloads", type=int, metavar="N", default=None,
                   help="layers downloaded at once (default 3, or $LAMINA_MAX_CONCURRENT_DOWNLOADS)")
    _add_common(p)
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("push", help="push an image from the store to a registry")
    p.add_argument("ref", metavar="NAME[:TAG]")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the pushed digest")
    add_format_option(p, example="{{.digest}}")
    p.add_argument("--chunk-size", type=int, metavar="BYTES", default=None,
                   help="upload blobs larger than this in chunks of this size (default 64 MiB)")
    _add_common(p)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("login", help="log in to a registry")
    p.add_argument("server", nargs="?", default=None, metavar="SERVER")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password", help="password (prefer --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--authfile", metavar="PATH",
                   help="credentials file to write (default: docker's config.json or its credential helper)")
    _add_common(p)
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("logout", help="remove the stored credentials of a registry")
    p.add_argument("server", nargs="?", default=None, metavar="SERVER")
    p.add_argument("--authfile", metavar="PATH")
    p.set_defaults(func=cmd_logout)

    p = sub.add_parser("manifest", help="registry manifests")
    msub = p.add_subparsers(dest="manifest_command", metavar="COMMAND")
    msub.required = True
    q = msub.add_parser("inspect", help="print the raw manifest or index a registry serves")
    q.add_argument("ref", metavar="NAME[:TAG|@DIGEST]")
    _add_common(q)
    q.set_defaults(func=cmd_manifest_inspect)


def _insecure(args, ref):
    if not getattr(args, "insecure", False):
        return ()
    from ..reference import Reference
    return (Reference.parse(ref).domain,)


def _store(args):
    from ..store import Store
    return Store(getattr(args, "root", None))


def cmd_pull(args):
    from ..registry.progress import reporter_for
    from ..registry.pull import pull
    from ..trace import event
    event("imported")
    if args.all_tags:
        return _pull_all_tags(args)
    mode = _start(args)
    # closed, not left to the exit: a writer's close takes back what an import refused beside it left
    with _store(args) as store:
        result = pull(args.ref, store=store, platform=args.platform, all_platforms=args.all_platforms,
                      concurrency=args.max_concurrent_downloads, reporter=reporter_for(mode),
                      insecure=_insecure(args, args.ref))
    return _finish(args, result, result.reference)


def _pull_all_tags(args):
    from ..errors import InvalidReferenceError
    from ..reference import Reference
    from ..registry import list_tags
    from ..registry.progress import reporter_for
    from ..registry.pull import pull
    check_format(args)
    given = Reference.parse(args.ref, default_tag=False)
    if given.tag is not None or given.digest is not None:
        raise InvalidReferenceError(f"{args.ref}: tag can't be used with --all-tags/-a")
    tags = list_tags(given, insecure=_insecure(args, args.ref))
    if not tags:
        raise InvalidReferenceError(f"{given.familiar()}: the repository has no tags")
    mode = _mode(args)
    results = []
    with _store(args) as store:
        for tag in tags:
            ref = f"{given.name}:{tag}"
            results.append(pull(ref, store=store, platform=args.platform, all_platforms=args.all_platforms,
                                concurrency=args.max_concurrent_downloads, reporter=reporter_for(mode),
                                insecure=_insecure(args, args.ref)))
            if args.format == "json":  # one document per line (JSON lines), each as pull --format json's
                print(json.dumps(document(results[-1].to_dict())), flush=True)
            elif not wants_text(args):
                emit(args, results[-1].to_dict())
    if wants_text(args) and args.quiet:
        print(given.name)
    return 0


def cmd_push(args):
    from ..registry.progress import reporter_for
    from ..registry.push import push
    mode = _start(args)
    with _store(args) as store:
        result = push(args.ref, store=store, reporter=reporter_for(mode), chunk_size=args.chunk_size,
                      insecure=_insecure(args, args.ref))
    return _finish(args, result, result.digest)


def _start(args):
    """The output mode of pull/push, after docker's "Using default tag" line."""
    from ..reference import Reference
    check_format(args)
    mode = _mode(args)
    given = Reference.parse(args.ref, default_tag=False)
    if mode == "auto" and given.tag is None and given.digest is None:
        print("Using default tag: latest", flush=True)
    return mode


def _mode(args):
    """How the progress shows: docker's lines, none (-q), or none because a document follows."""
    if not wants_text(args):
        return "json"
    return "quiet" if args.quiet else "auto"


def _finish(args, result, quiet_line):
    emit(args, result.to_dict(), (lambda: print(quiet_line)) if args.quiet else None)
    return 0


def _how_to_login(args, host, missing):
    """What to type when login cannot prompt (stdin is no terminal); like docker, no SERVER means docker.io."""
    server = f" {args.server}" if args.server else ""
    default = "" if args.server else f" (no SERVER: {host}, as in docker)"
    return (f"login to {host}{default} needs {missing} and cannot ask for it (stdin is not a terminal): "
            f"type echo \"$PASSWORD\" | lamina login{server} -u USERNAME --password-stdin")


def cmd_login(args):
    from ..errors import AuthenticationError
    from ..registry.login import login, normalize_server
    host = normalize_server(args.server)
    username, password = args.username, args.password
    if args.password_stdin:
        if password:
            raise AuthenticationError("--password and --password-stdin are mutually exclusive")
        if not username:
            raise AuthenticationError("--password-stdin needs --username")
        password = sys.stdin.read().rstrip("\r\n")
        if not password:
            raise AuthenticationError("--password-stdin: stdin was empty (pipe the password in: "
                                      "echo \"$TOKEN\" | lamina login --password-stdin ...)")
    elif password:
        print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", file=sys.stderr)
    if not username:
        if not sys.stdin.isatty():
            raise AuthenticationError(_how_to_login(args, host, "a username"))
        username = input(f"Username for {host}: ").strip()
    if not password:
        if not sys.stdin.isatty():
            raise AuthenticationError(_how_to_login(args, host, "a password"))
        import getpass
        password = getpass.getpass("Password: ")
    _, where = login(args.server, username, password, authfile=args.authfile,
                     insecure=(host,) if args.insecure else ())
    print(f"Login Succeeded (credentials saved in {where})")
    return 0


def cmd_logout(args):
    from ..registry.login import logout
    host, removed = logout(args.server, authfile=args.authfile)
    if removed:
        print(f"Removing login credentials for {host}")
    else:
        print(f"Not logged in to {host}")
    return 0


def _terminal_safe_json(data):
    """A registry's document (strict JSON, read as UTF-8 already) with nothing that drives a
    terminal: JSON leaves DEL, the C1 controls (U+009B is CSI) and the bidi overrides raw in
    its strings, written here as \\u escapes, and a \\r can only be whitespace between its
    tokens, dropped.  The same document; the bytes served whenever it holds none of them."""
    from . import _CONTROLS
    table = {c: f"\\u{c:04x}" for c in _CONTROLS if c >= 0x7f}
    table[0x0d] = None
    text = data.decode("utf-8")
    safe = text.translate(table)
    return data if safe == text else safe.encode("utf-8")


def cmd_manifest_inspect(args):
    from ..registry import inspect_manifest
    mr = inspect_manifest(args.ref, insecure=_insecure(args, args.ref))
    out = sys.stdout.buffer
    data = _terminal_safe_json(mr.data)
    out.write(data)
    if not data.endswith(b"\n"):
        out.write(b"\n")
    out.flush()
    return 0
