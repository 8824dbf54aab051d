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
    max_extended: int = 4 * MiB        # all extended headers (and a sparse map) of one entry
    max_global_headers: int = 1024     # PAX 'g' headers per layer (read past, never applied)
    max_sparse_entries: int = 65536    # regions in one GNU sparse map
    max_sparse_size: int = 4 << 40     # real size of one sparse file (holes cost no disk)
    max_path: int = 4096               # bytes in a normalized path (PATH_MAX)
    max_depth: int = 512               # directory levels in a path
    max_trailing: int = 16 * MiB       # bytes after the end-of-archive marker


DEFAULT_LIMITS = Limits()
