"""Bounds on what one layer may ask of us.

The defaults sit far above anything real images contain (the largest public
images have a few hundred thousand entries and paths under 1 KiB) and far
below what would hurt the machine, so hostile archives fail fast and clearly.
"""
from dataclasses import dataclass

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_entries: int = 2_000_000       # tar entries per layer
    max_bytes: int = 256 * GiB         # uncompressed bytes per layer
    max_header: int = 1 * MiB          # one PAX / GNU long-name header's data
    max_path: int = 4096               # bytes in a normalized path (PATH_MAX)
    max_depth: int = 512               # directory levels in a path
    max_trailing: int = 16 * MiB       # bytes after the end-of-archive marker


DEFAULT_LIMITS = Limits()
