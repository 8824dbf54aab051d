"""What apply and unpack report back: plain dataclasses, JSON-ready."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class ApplyStats:
    """One layer applied onto a directory."""
    entries: int = 0              # tar entries processed (incl. whiteouts, dirs, links)
    bytes: int = 0                # uncompressed tar bytes (what the diffID covers)
    compressed_bytes: int = 0     # bytes read from the blob (what the digest covers)
    compression: str = "none"     # "gzip", "zstd" or "none"
    digest: str = ""              # sha256 of the blob as read
    diff_id: str = ""             # sha256 of the uncompressed tar
    whiteouts: int = 0
    hidden: int = 0               # entries skipped: an upper layer hides them (dir format)
    skipped: list = field(default_factory=list)   # entries not applied, with why
    # stage -> seconds: "read", "inflate", "hash_blob", "hash_tar", "parse", "write", "wait"
    # (layer.STAGES, disjoint), their sums "hash" (hash_blob + hash_tar) and "extract"
    # (parse + write) as before the split, and "total"
    seconds: dict = field(default_factory=dict)
    # the same stages -> CPU seconds of the threads doing them (CLOCK_THREAD_CPUTIME_ID)
    cpu: dict = field(default_factory=dict)
    # [thread_name, stage, start_s, end_s] relative to the layer's start: each thread's
    # work spans, laid out as one piece per stage in proportion to its time in the span,
    # and its "wait" spans, adjacent ones coalesced
    timeline: list = field(default_factory=list)
    pipeline: str = ""            # "native" (lamina._pipeline stage 1) or "python" (three threads)
    nogil_entries: int = 0        # entries whose syscalls all ran in one block without the GIL
    hidden_examined: int = 0      # skipped paths that whiteouts looked at (each at most once a layer)

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclass
class UnpackStats:
    """A whole image unpacked into a destination."""
    source: str = ""
    dest: str = ""
    format: str = "dir"
    manifest_digest: str = ""
    config_digest: str = ""
    platform: str = ""
    layers: list = field(default_factory=list)     # ApplyStats, bottom layer first
    layer_dirs: list = field(default_factory=list)  # overlay format: one dir per layer, bottom first
    mount_options: str = ""                         # overlay format: "lowerdir=top:...:bottom"
    seconds: dict = field(default_factory=dict)

    @property
    def entries(self):
        return sum(layer.entries for layer in self.layers)

    @property
    def bytes(self):
        return sum(layer.bytes for layer in self.layers)

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["entries"], d["bytes"] = self.entries, self.bytes
        return d
