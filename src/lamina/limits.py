"""Bounds on what one layer (or one image) may ask of us.

The defaults sit far above anything real images contain (the largest public
images have a few hundred thousand entries and paths under 1 KiB) and far
below what would hurt the machine, so hostile archives fail fast and clearly.
"""
from dataclasses import dataclass

from .errors import ImageError

# A manifest or image index, read into memory whichever way it comes (registry, layout,
# archive): distribution's limit (docker-registry refuses to store a larger one) and
# containers/image's (skopeo's) for reading one; it also bounds an index's entries (some
# 30,000 of the smallest descriptors).
MAX_MANIFEST_SIZE = 4 << 20
# An image config: twice containers/image's 4 MiB, the limit lamina's pull has always had.
MAX_CONFIG_SIZE = 8 << 20

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
    # Layers in one image.  Overlayfs stacks at most 500 lower directories (OVL_MAX_STACK) and
    # docker refuses more than 125 ("max depth exceeded"); every layer costs a snapshot, a chain
    # walk and an fd at mount, so thousands of them only slow a load down (2,000: 42 s).
    max_layers: int = 500


DEFAULT_LIMITS = Limits()


def check_layer_count(count, what, limits=None):
    """Refuse an image of more layers than ``limits`` allow, before anything of it is fetched."""
    cap = (limits or DEFAULT_LIMITS).max_layers
    if count > cap:
        raise ImageError(f"{what}: {count} layers, more than the {cap} an image may have (Limits.max_layers;"
                         " docker allows 125, overlayfs stacks 500)")


# fds a process holds besides one per layer of an image: stdio, the store's, the extraction
# pipeline's, a fan-out of object directories (FanOut keeps at most 1/64 of the limit)
FD_RESERVE = 64


def open_file_budget(held, what, how, parallel=1, reserve=FD_RESERVE):
    """How many of ``parallel`` jobs, each holding ``held`` fds at once (an overlay-format layer:
    one per layer below it; a flatten: one per layer), fit under the open-file limit: at least
    1, or an ImageError naming the limit before anything is written.  500 layers under ``ulimit
    -n 256`` failed half-way with "Too many open files", after extracting a hundred layers.
    ``reserve``: the fds needed besides those."""
    import resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return parallel
    need = held + reserve
    if soft < need:
        raise ImageError(f"{what}: {how} holds {held} directories open at once, and the open-file limit is "
                         f"{soft} (ulimit -n; {need} needed)")
    return max(1, min(parallel, soft // need))


def make_room_for_fds(held, what, how):
    """Room under the open-file limit for ``held`` more fds kept open at once (besides
    FD_RESERVE): the soft limit is raised as far as needed, up to the hard one, as the CLI
    raises its own at start (an API caller keeps its own soft limit, often 1024), or else an
    ImageError names the limit before anything is written."""
    import os
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return
    need = len(os.listdir("/proc/self/fd")) + held + FD_RESERVE
    if need <= soft:
        return
    if hard != resource.RLIM_INFINITY and need > hard:
        raise ImageError(f"{what}: {how} holds {held} files open at once, and the open-file limit is "
                         f"{hard} (ulimit -Hn; {need} needed)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
