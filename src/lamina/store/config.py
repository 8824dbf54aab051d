"""Store settings (``lamina config``), kept in the store itself: ``ROOT/lamina/config.json``.

    dedup       true   share identical files across snapshots (objects.py)
    keep-blobs  true   false = compact store: drop a layer's compressed blob once its snapshot
                       and its tar sidecar are committed (sidecar.py)
"""
from __future__ import annotations

import json

from ..errors import StoreError
from .fsutil import atomic_write, open_own

DEFAULTS = {"dedup": True, "keep-blobs": True}
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _path(paths):
    return paths.meta / "config.json"


def read(paths):
    """{setting: value} with the defaults filled in."""
    try:
        with open_own(_path(paths)) as f:
            doc = json.load(f)
    except FileNotFoundError:
        doc = {}
    except (OSError, ValueError) as e:
        raise StoreError(f"{_path(paths)}: unreadable store config ({e})") from None
    if not isinstance(doc, dict):
        raise StoreError(f"{_path(paths)}: the store config is not a JSON object")
    return {k: doc.get(k, v) for k, v in DEFAULTS.items()}


def parse_value(key, text):
    if key not in DEFAULTS:
        raise StoreError(f"unknown setting {key!r} (known: {', '.join(sorted(DEFAULTS))})")
    word = str(text).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise StoreError(f"setting {key}: {text!r} is not a boolean (true or false)")


def write(paths, key, text, index_lock):
    """Set one setting (under the index lock: settings change as rarely as names)."""
    from .locks import FileLock
    value = parse_value(key, text)
    with FileLock(index_lock):
        try:
            with open_own(_path(paths)) as f:
                doc = json.load(f)
        except (FileNotFoundError, ValueError):
            doc = {}
        doc[key] = value
        atomic_write(_path(paths), json.dumps(doc, indent=2, sort_keys=True).encode())
    return value
