"""The ``lamina`` command.

Each module here registers its verbs on the shared parser and prints; the
work itself lives in the API.  Errors become one line on stderr.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from .. import errors

# Modules that contribute verbs, in help order.  Each has register(subparsers).
_VERB_MODULES = ("layers", "images", "store", "registry")


def build_parser():
    import importlib
    p = argparse.ArgumentParser(prog="lamina", description="Fast, safe OCI/Docker image layer store and unpacker.")
    p.add_argument("--root", metavar="DIR", help="store directory (default: $LAMINA_ROOT, /var/lib/lamina as root, "
                   "else $XDG_DATA_HOME/lamina)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _VERB_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            continue
        module.register(sub)
    _accept_root_anywhere(sub)
    return p


def _accept_root_anywhere(subparsers):
    """``lamina images --root DIR`` as well as ``lamina --root DIR images``."""
    for parser in set(subparsers.choices.values()):
        if not any("--root" in a.option_strings for a in parser._actions):
            parser.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS,
                                help="store directory (same as the global --root)")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_root_anywhere(action)


def _raise_fd_limit():
    # flattening a deep image keeps a few fds open per directory level
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def _on_sigint(signum, frame):
    # worker threads never see KeyboardInterrupt: tell running extractions to
    # stop at their next chunk, then interrupt the main thread as usual
    from ..layer import cancelled
    cancelled.set()
    raise KeyboardInterrupt


def main(argv=None):
    args = build_parser().parse_args(argv)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    _raise_fd_limit()
    try:
        rc = args.func(args)
    except errors.LaminaError as e:
        print(f"lamina: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # stdout closed early (lamina images | head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("lamina: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"lamina: error: {e}", file=sys.stderr)
        return 1
    return rc or 0
