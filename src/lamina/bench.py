"""Extraction benchmarks: how fast an image (or one layer) unpacks here, per stage and per
layer, next to the other tools on PATH, and how the cost grows with the layer (synthetic mode).

``run(source)`` and ``run_synthetic(kind, sizes)`` return one JSON-ready dict (the document
``lamina bench --format json`` prints); ``write_report(doc, dir)`` turns it into bench.json and
a self-contained index.html (with SVG charts when matplotlib is installed: ``lamina[plot]``).

The source is anything ``unpack`` reads: an image in the store (measured from the store's
blobs, as the store extracts them into snapshots), ``docker://REF`` (fetched from the registry
in every run), ``oci:``, ``oci-archive:``, ``docker-archive:``; or a single layer file.

lamina runs in this process, through the same ``unpack`` / ``apply_layer`` the user calls; the
other tools run as child processes.  Every tool gets a fresh destination per run, removed
outside the timing, the runs are interleaved (lamina, tar, ..., lamina, tar, ...) so that a
noisy neighbour hurts every tool alike, and each tool's tree is counted so that a tool that
silently did nothing cannot look fast.

What the pipeline does not report itself is measured from outside it: the layer blobs are
opened through a Recorder (when each layer was open, on which thread, and every read from
it), process and main-thread CPU from getrusage, each core's busy share from /proc/stat.  A
pipeline whose ApplyStats carry ``timeline`` and ``cpu`` has those shown as well.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

from . import __version__, compression
from .bench_choices import SYNTHETIC_KINDS, TOOLS
from .errors import LaminaError, layer_of
from .layer import COARSE_STAGES, STAGES as PIPELINE_STAGES, apply_layer
from .oci import open_source
from .oci.image import LayerRef, ResolvedImage, Source
from .oci.source import parse_source
from .unpacker import unpack

DEFAULT_SIZES = (1000, 10000, 100000)
DEFAULT_HUGE_MIB = (8, 32, 128)  # huge-files sizes are MiB per file
# What each tool checks and does, printed with the comparison: the plain tar extractors
# are a lower bound for "just write the bytes", not the same work as lamina's.
VERIFIES = {
    "lamina": "verifies blob digests and diffIDs, applies whiteouts",
    "tar": "no digest checks; whiteouts left as .wh. files",
    "pigz": "no digest checks; whiteouts left as .wh. files (gzip layers only)",
    "bsdtar": "no digest checks; whiteouts left as .wh. files",
    "umoci": "verifies blob digests, applies whiteouts (needs an OCI layout)",
}
# Tools that apply whiteouts leave lamina's tree; the others leave every name of every layer.
APPLIES_WHITEOUTS = {"lamina", "umoci"}


class BenchError(LaminaError):
    """A benchmark that cannot run as asked (a tool missing, a source it cannot measure)."""


# --- the target filesystem ----------------------------------------------------

def default_target_parent():
    """tmpfs when there is one: file creation on a VM's disk can cost ~1 ms and hide the rest."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def filesystem_of(path):
    """{"mount_point", "fstype", "mount_source"} of the mount holding ``path`` (/proc/self/mountinfo)."""
    path = os.path.realpath(path)
    best = {"mount_point": "", "fstype": "unknown", "mount_source": ""}
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return best
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        point = fields[4].encode().decode("unicode_escape")  # mountinfo octal-escapes spaces
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best["mount_point"]):
            best = {"mount_point": point, "fstype": tail[0], "mount_source": tail[1]}
    return best


# --- measuring one call in this process ------------------------------------------

def _reset_peak_rss():
    """Linux lets a process reset its own high-water mark, so each run reports its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def core_ticks():
    """[(busy, total)] clock ticks of each core since boot (/proc/stat), or [] where unreadable.
    System-wide: a neighbour's work counts too, which is why the report says so."""
    ticks = []
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3:4].isdigit():
                    v = [int(x) for x in line.split()[1:9]]  # user nice system idle iowait irq softirq steal
                    idle = v[3] + v[4]
                    ticks.append((sum(v) - idle, sum(v)))
    except (OSError, ValueError, IndexError):
        return []
    return ticks


# /proc/stat counts in clock ticks (10 ms): fewer than this many per core say nothing.
MIN_CORE_TICKS = 5


def cores_busy_between(before, after):
    """Each core's busy fraction between two core_ticks() readings; None for a core that saw
    too few ticks to tell (a run shorter than about 50 ms)."""
    return [round((b1 - b0) / (t1 - t0), 3) if t1 - t0 >= MIN_CORE_TICKS else None
            for (b0, t0), (b1, t1) in zip(before, after)]


def measure(call):
    """Run ``call()``; (its result, {wall, cpu_user, cpu_system, cpu_main_thread, cores_busy,
    per_core_busy, peak_rss_bytes, peak_rss_scope})."""
    scope = "run" if _reset_peak_rss() else "process"
    s0, th0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_THREAD)
    c0 = core_ticks()
    t0 = time.perf_counter()
    result = call()
    wall = time.perf_counter() - t0
    c1 = core_ticks()
    s1, th1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_THREAD)
    user, system = s1.ru_utime - s0.ru_utime, s1.ru_stime - s0.ru_stime
    main = (th1.ru_utime - th0.ru_utime) + (th1.ru_stime - th0.ru_stime)
    return result, {
        "wall": round(wall, 6), "cpu_user": round(user, 6), "cpu_system": round(system, 6),
        "cpu_main_thread": round(main, 6), "cores_busy": round((user + system) / wall, 3) if wall else 0.0,
        "per_core_busy": cores_busy_between(c0, c1),
        "peak_rss_bytes": _peak_rss_bytes(), "peak_rss_scope": scope,
    }


# --- the timeline: which thread did what, when ------------------------------------------------

# Reads of one blob closer together than this are one bar: a layer of 400 MB is read in
# hundreds of chunks, and the gaps between them say nothing at the scale of a chart.
COALESCE_GAP = 0.001


class Recorder:
    """What the benchmark sees of the pipeline from outside it: when each layer blob was open
    and on which thread, and the reads the pipeline made from it (which thread, when).  Rows
    are [thread, stage, layer, start, end], seconds from the start of the run."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.rows = []
        self._lock = threading.Lock()

    def add(self, thread, stage, layer, start, end):
        with self._lock:
            self.rows.append([thread, stage, layer, start - self.t0, end - self.t0])

    def wrap(self, raw, layer):
        return _TimedBlob(raw, self, layer)


class _TimedBlob:
    """A layer blob's file object that tells the Recorder when it was open and each read."""

    def __init__(self, raw, recorder, layer):
        self._raw, self._rec, self._layer = raw, recorder, layer
        self._thread = threading.current_thread().name
        self._opened = time.perf_counter()
        self._closed = False

    def read(self, n=-1):
        t = time.perf_counter()
        data = self._raw.read(n)
        self._rec.add(threading.current_thread().name, "read", self._layer, t, time.perf_counter())
        return data

    def readinto(self, buf):
        t = time.perf_counter()
        n = self._raw.readinto(buf)
        self._rec.add(threading.current_thread().name, "read", self._layer, t, time.perf_counter())
        return n

    def close(self):
        if not self._closed:
            self._closed = True
            self._rec.add(self._thread, "layer", self._layer, self._opened, time.perf_counter())
        self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name):  # seek, tell, fileno...: the blob's own
        return getattr(self._raw, name)


class _TimedSource(Source):
    """An unpack source whose layers are opened through a Recorder."""

    def __init__(self, inner, recorder):
        self.inner, self.recorder = inner, recorder
        self.description = getattr(inner, "description", "?")

    def resolve(self, platform=None):
        image = self.inner.resolve(platform)
        layers = [dataclasses.replace(layer, _opener=functools.partial(self._open, layer)) for layer in image.layers]
        return dataclasses.replace(image, layers=layers)

    def _open(self, layer):
        return self.recorder.wrap(layer.open(), layer.index)

    def close(self):
        self.inner.close()


def timeline(recorded, layers):
    """The run's timeline rows [thread, stage, layer, start, end], sorted by start.

    ``recorded``: the Recorder's rows.  A layer blob opened more than once was read ahead
    first (top-down skipping scans small upper layers before the layers below are written):
    its earlier opens are the "scan" stage, the last one "apply".  ``layers``: the runs's
    ApplyStats dicts; a pipeline that reports its own ``timeline`` ([thread, stage, start,
    end] from the layer's start) has those rows placed at the layer's apply."""
    opens = {}
    for row in recorded:
        if row[1] == "layer":
            opens.setdefault(row[2], []).append(row)
    rows, applied_at = [], {}
    for index, spans in opens.items():
        spans.sort(key=lambda r: r[3])
        for span in spans[:-1]:
            rows.append([span[0], "scan", index, span[3], span[4]])
        rows.append([spans[-1][0], "apply", index, spans[-1][3], spans[-1][4]])
        applied_at[index] = spans[-1][3]
    reads = sorted((r for r in recorded if r[1] == "read"), key=lambda r: (r[0], r[2], r[3]))
    for r in reads:
        last = rows[-1] if rows else None
        if last and last[:3] == r[:3] and r[3] - last[4] < COALESCE_GAP:
            last[4] = max(last[4], r[4])
        else:
            rows.append(list(r))
    for i, layer in enumerate(layers):
        for thread, stage, start, end in layer.get("timeline") or ():
            at = applied_at.get(i, 0.0)
            rows.append([thread, stage, i, at + start, at + end])
    rows.sort(key=lambda r: (r[3], r[0]))
    return [[t, s, i, round(a, 6), round(b, 6)] for t, s, i, a, b in rows]


def stage_cpu(layers):
    """{stage: CPU seconds} summed over the layers, from the pipeline's own ``cpu`` figures;
    None when the pipeline does not report them."""
    if not layers or not all(isinstance(layer.get("cpu"), dict) for layer in layers):
        return None
    total = {}
    for layer in layers:
        for stage, secs in layer["cpu"].items():
            total[stage] = total.get(stage, 0.0) + secs
    return {k: round(v, 6) for k, v in total.items()}


# --- what is measured: an image (a file, a layout, the store, a registry) or one layer --------

REGISTRY_PREFIX = "docker://"


class StoreImageSource(Source):
    """An image of the lamina store as an unpack source: its layers read from the store's
    blobs, the bytes a store unpack extracts into its snapshots."""

    def __init__(self, store, ref):
        self.store, self.ref = store, ref
        self.description = ref

    def resolve(self, platform=None):
        image = self.store.resolve(self.ref)
        layers = []
        for i, (desc, diff_id) in enumerate(zip(image.layers, image.diff_ids)):
            if not self.store.has_blob(desc.digest):
                raise BenchError(f"{self.ref}: {layer_of(i, len(image.layers))} ({desc.digest}) has no blob in "
                                 f"the store {self.store.root} (keep-blobs false); measure the image it "
                                 "rebuilds: lamina save -o FILE "
                                 f"{self.ref}, then lamina bench docker-archive:FILE")
            layers.append(LayerRef(i, diff_id, desc.digest, desc.size, desc.media_type,
                                   functools.partial(self.store.open_blob, desc.digest)))
        return ResolvedImage(config=image.config, config_digest=image.config_digest, layers=layers,
                             manifest_digest=image.manifest_digest, manifest=image.manifest,
                             platform=image.platform, ref=self.ref)


def source_kind(source, root=None):
    """"layer" (a layer file), "image" (oci:, docker-archive:, oci-archive:, a path),
    "registry" (docker://REF) or "store" (an image in the store at ``root``)."""
    if source.startswith(REGISTRY_PREFIX):
        return "registry"
    if _is_layer_file(source):
        return "layer"
    transport, path, _ = parse_source(source)
    if transport is not None:
        if not os.path.exists(path):
            raise BenchError(f"{source}: no such image file or layout")
        return "image"
    from .images import is_store_source
    if is_store_source(source, root):  # as for unpack: a name the store has wins over a path
        return "store"
    if os.path.exists(path):
        return "image"
    raise BenchError(f"{source}: no such image, file or layout; lamina bench measures an image in the store "
                     "(NAME[:TAG], ID), docker://REF, oci:PATH[:REF], oci-archive:PATH[:REF], "
                     "docker-archive:PATH[:REF] or a layer file")


class Subject:
    """The thing benchmarked: lamina's way to unpack it, and its layers as files for other tools."""

    def __init__(self, source, workdir, *, root=None, insecure=False):
        self.source = source
        self.kind = source_kind(source, root)
        self.insecure = insecure
        self.layer_file = None
        self.layout = None  # (dir, ref) for umoci, when the source is an OCI layout
        self.layers = []    # [{"index", "path", "digest", "diff_id", "media_type", "compression"}]
        self.dedup = None   # a store image: does the store share files across snapshots (blake3)?
        if self.kind == "layer":
            self.layer_file = os.path.abspath(source)
            with open(source, "rb") as f:
                kind = compression.sniff(f)[1]
            self.layers = [{"index": 0, "path": self.layer_file, "digest": None, "diff_id": None,
                            "media_type": None, "compression": kind}]
            return
        if self.kind == "store":
            from .store import Store
            self.store = Store(root)
            self.dedup = bool(self.store.config()["dedup"])
        transport, path, ref = parse_source(source) if self.kind == "image" else (None, None, None)
        on_disk = self.kind == "image" and (transport == "oci" or (transport is None and os.path.isdir(path)))
        with self.open() as src:
            image = src.resolve(None)
            if on_disk:
                self.layout = (os.path.abspath(path), ref or image.ref)
            for layer in image.layers:
                blob = None
                if on_disk and layer.digest:
                    blob = os.path.join(path, "blobs", *layer.digest.split(":", 1))
                elif self.kind == "store":
                    blob = str(self.store.blob_path(layer.digest))
                if blob is None or not os.path.isfile(blob):  # inside an archive, or in a registry
                    blob = os.path.join(workdir, f"layer-{layer.index}")
                    with layer.open() as f, open(blob, "wb") as out:
                        shutil.copyfileobj(f, out, 1 << 20)
                with open(blob, "rb") as f:
                    # (not the magic alone: a tar whose first name starts with gzip's is a tar,
                    # as lamina's unpack, GNU tar and containerd read it, unless its type says gzip)
                    kind = compression.sniff(f, layer.media_type)[1]
                self.layers.append({"index": layer.index, "path": blob, "digest": layer.digest,
                                    "diff_id": layer.diff_id, "media_type": layer.media_type, "compression": kind})

    def open(self):
        """A fresh unpack source for one run (a registry source fetches every layer again)."""
        if self.kind == "store":
            return StoreImageSource(self.store, self.source)
        if self.kind == "registry":
            from .reference import Reference
            from .registry.source import RegistrySource
            ref = self.source[len(REGISTRY_PREFIX):]
            return RegistrySource(ref, insecure=(Reference.parse(ref).domain,) if self.insecure else ())
        return open_source(self.source)

    def run_lamina(self, dest, format, recorder):
        """Unpack into ``dest``; a dict of stats (ApplyStats per layer, stage seconds)."""
        if self.kind == "layer":
            with recorder.wrap(open(self.layer_file, "rb", buffering=0), 0) as f:
                stats = apply_layer(f, dest, format=format, name=f"layer {self.layer_file}")
            return {"layers": [stats.to_dict()], "seconds": {"layers": stats.seconds["total"],
                                                             "total": stats.seconds["total"]}}
        with _TimedSource(self.open(), recorder) as src:
            stats = unpack(src, dest, format=format)
        return {"layers": [layer.to_dict() for layer in stats.layers], "seconds": dict(stats.seconds)}


def _is_layer_file(source):
    """A file that is not an image archive: a layer blob (gzip, zstd or plain tar)."""
    if not isinstance(source, str) or not os.path.isfile(source):
        return False
    try:
        with open_source(source) as src:
            src.resolve(None)
        return False
    except LaminaError:
        return True


# --- the store's file-level dedup: the blake3 stage ---------------------------------------

def dedup_pass(tree_parent, format, scratch_store):
    """Run the store's dedup (store/objects.py: blake3 of every regular file, then links to
    shared objects) over what one run unpacked, as a pull into a store with ``dedup true``
    does to each new snapshot.  ``tree_parent/fs`` is the run's tree; the objects go to a fresh
    ``scratch_store`` on the same filesystem.  {seconds, blake3, files, bytes, linked, layers}:
    per layer for the overlay format (one snapshot per layer, as in the store), else one tree."""
    from .store import objects
    from .store.paths import Paths
    paths = Paths(scratch_store)
    os.makedirs(scratch_store)
    snapshots = [(None, tree_parent)]
    if format == "overlay":  # each layer dir becomes a snapshot dir's fs/, as in the store
        layers_dir = os.path.join(tree_parent, "fs", "layers")
        snapshots = []
        for name in sorted(os.listdir(layers_dir), key=int):
            snap = os.path.join(scratch_store, "snapshots", name)
            os.makedirs(snap)
            os.rename(os.path.join(layers_dir, name), os.path.join(snap, "fs"))
            snapshots.append((int(name), snap))
    per_layer = []
    for index, snap in snapshots:
        st = objects.dedup_snapshot(paths, snap)
        per_layer.append({"index": index, "seconds": round(st.seconds, 6), "blake3": round(st.hash_seconds, 6),
                          "files": st.files, "bytes": st.bytes, "linked": st.linked})
    return {**{k: round(sum(p[k] for p in per_layer), 6) for k in ("seconds", "blake3", "files", "bytes", "linked")},
            "layers": per_layer if format == "overlay" else []}


# --- the other tools ---------------------------------------------------------------

def tool_commands(tool, subject, dest):
    """The argv lists that unpack ``subject`` into ``dest`` with ``tool``, run in order, or a
    string saying why the tool cannot run on it."""
    exe = shutil.which(tool)
    if exe is None:
        return f"{tool} is not on PATH"
    if tool == "umoci":
        if subject.layout is None or not subject.layout[1]:
            return "umoci unpacks OCI layouts with a tag only (oci:PATH:TAG)"
        argv = [exe, "raw", "unpack", "--image", f"{subject.layout[0]}:{subject.layout[1]}", dest]
        return [argv if os.geteuid() == 0 else argv[:3] + ["--rootless"] + argv[3:]]
    if tool == "pigz":
        if any(layer["compression"] != "gzip" for layer in subject.layers):
            return "pigz inflates gzip layers only"
        tar = shutil.which("tar")
        if tar is None:
            return "pigz needs tar on PATH"
        return [[tar, "--numeric-owner", "-I", exe, "-xf", layer["path"], "-C", dest] for layer in subject.layers]
    if tool == "tar":
        return [[exe, "--numeric-owner", "-xf", layer["path"], "-C", dest] for layer in subject.layers]
    if tool == "bsdtar":
        return [[exe, "--numeric-owner", "-xf", layer["path"], "-C", dest] for layer in subject.layers]
    raise BenchError(f"unknown tool {tool!r} (known: {', '.join(TOOLS)})")


# A child forked from this process starts with our memory counted in its peak RSS (Linux keeps
# the pre-exec high-water mark), so a tool's peak is read by GNU time, a small process, instead.
GNU_TIME = "/usr/bin/time"


def run_tool(commands, dest):
    """Run the commands one after another; {wall, cpu, peak_rss_bytes (None without GNU time)}."""
    os.makedirs(dest, exist_ok=True)
    wall = cpu = 0.0
    rss = None
    timed = os.access(GNU_TIME, os.X_OK)
    with tempfile.NamedTemporaryFile(prefix="lamina-bench-rss-") as rss_file:
        for argv in commands:
            full = [GNU_TIME, "-f", "%M", "-o", rss_file.name, "--", *argv] if timed else argv
            t0 = time.perf_counter()
            proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            stderr = proc.stderr.read()
            _, status, usage = os.wait4(proc.pid, 0)
            wall += time.perf_counter() - t0
            proc.stderr.close()
            proc.returncode = os.waitstatus_to_exitcode(status)
            cpu += usage.ru_utime + usage.ru_stime
            if proc.returncode != 0:
                tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
                raise BenchError(f"{os.path.basename(argv[0])} exited {proc.returncode}: {tail[0]}")
            if timed:
                with open(rss_file.name) as f:
                    rss = max(rss or 0, int(f.read().split()[-1]) * 1024)
    return {"wall": round(wall, 6), "cpu": round(cpu, 6), "peak_rss_bytes": rss}


def count_entries(path):
    """Every name under ``path`` (dirs, files, links, devices), not counting ``path`` itself."""
    n = 0
    for _, dirs, files in os.walk(path):
        n += len(dirs) + len(files)
    return n


def tar_names(layer_paths):
    """The distinct paths a plain tar extractor leaves for these layers (their implied parents
    included): what ``tar -x`` of each layer in turn must produce."""
    names = set()
    for blob in layer_paths:
        with open(blob, "rb") as raw:
            kind = compression.sniff(raw)[1]
            raw.seek(0)
            stream = compression.open_decompressed(raw, kind, blob)
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                for member in tf:
                    parts = [p for p in member.name.split("/") if p not in ("", ".")]
                    for i in range(1, len(parts) + 1):
                        names.add("/".join(parts[:i]))
    return names


def count_tar_names(layer_paths):
    """len(tar_names(layer_paths)), counted in a child process: tarfile keeps a TarInfo per
    member until the end, and the ~40 MiB a 66k-entry layer leaves in this process once freed
    (RSS that malloc does not give back) would count in every later lamina run's peak RSS,
    measured in this process from where it stands (it made a small-files run report 77 MB
    for 54)."""
    code = "import sys; from lamina.bench import tar_names; print(len(tar_names(sys.argv[1:])))"
    out = subprocess.run([sys.executable, "-c", code, *layer_paths], capture_output=True, text=True)
    if out.returncode:
        why = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        raise BenchError(f"cannot list the names in the layers: {why}")
    return int(out.stdout)


def _remove(path):
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)


# --- the benchmark -----------------------------------------------------------------

def run(source, *, format="dir", runs=3, compare=(), target=None, progress=None, root=None, insecure=False):
    """Benchmark unpacking ``source``: anything ``unpack`` accepts (an image in the store at
    ``root``, docker://REF, oci:, oci-archive:, docker-archive:) or a layer file."""
    if runs < 1:
        raise BenchError("--runs must be at least 1")
    for tool in compare:
        if tool not in TOOLS:
            raise BenchError(f"unknown tool {tool!r} for --compare (known: {', '.join(TOOLS)})")
    with _Workspace(target) as ws:
        subject = Subject(source, ws.scratch, root=root, insecure=insecure)
        doc = _bench_subject(subject, ws, format=format, runs=runs, compare=compare, progress=progress)
    doc.update(kind=subject.kind, source=str(source))
    return doc


class _Workspace:
    """A fresh directory for the destinations (on the target filesystem) and one for copies of
    blobs that are not files already; both removed at the end."""

    def __init__(self, target):
        self.parent = os.path.abspath(target) if target else default_target_parent()

    def __enter__(self):
        os.makedirs(self.parent, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix="lamina-bench-", dir=self.parent)
        self.scratch = tempfile.mkdtemp(prefix="lamina-bench-blobs-")
        self.n = 0
        return self

    def fresh(self, label):
        self.n += 1
        return os.path.join(self.dir, f"{self.n}-{label}")

    def __exit__(self, *exc):
        _remove(self.dir)
        shutil.rmtree(self.scratch, ignore_errors=True)


def _lamina_run(subject, ws, format, dedup):
    """One timed unpack (and, for a store image with dedup on, the dedup pass after it, timed
    on its own): the run's record."""
    run_dir = ws.fresh("lamina")
    os.mkdir(run_dir)
    recorder = Recorder()
    stats, m = measure(lambda: subject.run_lamina(os.path.join(run_dir, "fs"), format, recorder))
    record = {**m, **stats, "timeline": timeline(recorder.rows, stats["layers"]),
              "cpu_stages": stage_cpu(stats["layers"])}
    if dedup:
        record["dedup"], dm = measure(lambda: dedup_pass(run_dir, format, ws.fresh("store")))
        record["dedup"]["wall"] = dm["wall"]
    _remove(run_dir)
    return record


def _bench_subject(subject, ws, *, format, runs, compare, progress):
    say = progress or (lambda msg: None)
    # Untimed warm-up: reads every blob into the page cache, and its flat tree is the
    # reference for the tools that apply whiteouts.
    dest = ws.fresh("warmup")
    subject.run_lamina(dest, "dir", Recorder())
    expected = {"lamina-tree": count_entries(dest)}
    _remove(dest)
    plans = {}
    for tool in compare:
        plan = tool_commands(tool, subject, ws.fresh(tool))
        plans[tool] = plan
        if not isinstance(plan, str) and tool not in APPLIES_WHITEOUTS and "tar-names" not in expected:
            expected["tar-names"] = count_tar_names([layer["path"] for layer in subject.layers])

    lamina_runs = []
    tool_runs = {tool: [] for tool in compare}
    tool_checks = {}
    for i in range(runs):
        lamina_runs.append(_lamina_run(subject, ws, format, subject.dedup))
        say(f"run {i + 1}/{runs}: lamina {lamina_runs[-1]['wall']:.3f}s")
        for tool in compare:
            if isinstance(plans[tool], str):
                continue
            dest = ws.fresh(tool)
            try:
                r = run_tool(tool_commands(tool, subject, dest), dest)
            except BenchError as e:
                plans[tool] = str(e)
                _remove(dest)
                continue
            if tool not in tool_checks:  # its tree, once: the comparison really ran
                want = expected["lamina-tree" if tool in APPLIES_WHITEOUTS else "tar-names"]
                got = count_entries(dest)
                tool_checks[tool] = {"entries": got, "expected_entries": want, "tree_ok": got == want}
            tool_runs[tool].append(r)
            _remove(dest)
            say(f"run {i + 1}/{runs}: {tool} {r['wall']:.3f}s")

    median = _median_run(lamina_runs)
    doc = {
        "lamina_version": __version__,
        "format": format,
        "runs": runs,
        "target": {"path": ws.parent, **filesystem_of(ws.dir)},
        "host": {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]},
        "stages": stages_doc(),
        "lamina": {"runs": lamina_runs, "median": median, "verifies": VERIFIES["lamina"],
                   "entries_in_tree": expected["lamina-tree"],
                   # the timeline of the run whose wall time is the median: a real run, not a mix
                   "timeline": min(lamina_runs, key=lambda r: abs(r["wall"] - median["wall"]))["timeline"],
                   "dedup": _dedup_summary(subject, lamina_runs)},
        "layers": _layer_table(lamina_runs),
        "compare": [],
    }
    base = doc["lamina"]["median"]["wall"]
    for tool in compare:
        entry = {"tool": tool, "verifies": VERIFIES[tool]}
        if isinstance(plans[tool], str):
            entry["error"] = plans[tool]
        else:
            walls = [r["wall"] for r in tool_runs[tool]]
            med = statistics.median(walls)
            entry.update(walls=walls, median_wall=round(med, 6),
                         median_cpu=round(statistics.median(r["cpu"] for r in tool_runs[tool]), 6),
                         peak_rss_bytes=max((r["peak_rss_bytes"] or 0 for r in tool_runs[tool]), default=0) or None,
                         ratio_to_lamina=round(med / base, 3) if base else None, **tool_checks[tool])
        doc["compare"].append(entry)
    return doc


def _dedup_summary(subject, runs):
    """The blake3 stage: medians of the dedup passes, or why there is none ("n/a")."""
    if subject.kind != "store":
        return {"ran": False, "why": "n/a: the source is not an image in the store (dedup runs on store snapshots)"}
    if not subject.dedup:
        return {"ran": False, "why": "n/a: the store's dedup is off (lamina config set dedup true)"}
    passes = [r["dedup"] for r in runs]
    out = {"ran": True, **{k: round(statistics.median(p[k] for p in passes), 6) for k in ("wall", "seconds", "blake3")}}
    out.update(files=passes[0]["files"], bytes=passes[0]["bytes"], linked=passes[0]["linked"])
    return out


def _median_run(runs):
    """The median of every number over the runs (each field on its own)."""
    med = {k: round(statistics.median(r[k] for r in runs), 6)
           for k in ("wall", "cpu_user", "cpu_system", "cpu_main_thread", "cores_busy")}
    med["cpu"] = round(med["cpu_user"] + med["cpu_system"], 6)
    med["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in runs)
    cores = [r["per_core_busy"] for r in runs if r["per_core_busy"]]
    med["per_core_busy"] = [_median_of([c[i] for c in cores]) for i in range(len(cores[0]))] if cores else []
    first = runs[0]
    med["entries"] = sum(layer["entries"] for layer in first["layers"])
    med["bytes"] = sum(layer["bytes"] for layer in first["layers"])
    med["compressed_bytes"] = sum(layer["compressed_bytes"] for layer in first["layers"])
    med["seconds"] = {k: round(statistics.median(r["seconds"].get(k, 0.0) for r in runs), 6)
                      for k in first["seconds"]}
    cpu_stages = [r["cpu_stages"] for r in runs if r["cpu_stages"]]
    med["cpu_stages"] = {k: _median_of([c.get(k, 0.0) for c in cpu_stages]) for k in cpu_stages[0]} \
        if len(cpu_stages) == len(runs) else None
    wall = med["wall"]
    med["mb_per_s"] = round(med["bytes"] / wall / 1e6, 2) if wall else None
    med["compressed_mb_per_s"] = round(med["compressed_bytes"] / wall / 1e6, 2) if wall else None
    med["entries_per_s"] = round(med["entries"] / wall, 1) if wall else None
    return med


def _median_of(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 6) if values else None


# The stages apply_layer reports (ApplyStats.seconds and .cpu, lamina.layer.STAGES): read
# and inflate on the inflate thread; the blob's sha256 and the tar's (the diffID) on
# whichever thread would otherwise wait; parse and write (the extractor) on the caller's,
# with its waits for the next chunk.  The coarse "hash" and "extract" (sums of their parts)
# stay in the JSON for its readers; the tables and charts show the parts.
STAGES = PIPELINE_STAGES + tuple(COARSE_STAGES) + ("total",)
STAGE_LABELS = {"hash_blob": "blob sha256", "hash_tar": "diffID sha256"}
# One colour per stage in every chart (the timeline, the stage shares, the CPU bars), the
# same from one report to the next; stages of an older pipeline get the palette's next ones.
STAGE_COLORS = {"read": "#1f77b4", "inflate": "#ff7f0e", "hash_blob": "#2ca02c", "hash_tar": "#98df8a",
                "parse": "#9467bd", "write": "#d62728", "wait": "#c7c7c7", "hash": "#17becf",
                "extract": "#e377c2", "apply": "#aec7e8", "scan": "#ffbb78", "blake3": "#8c564b"}


def stages_doc():
    """What the stage names of the JSON mean (its "stages" field)."""
    return {"parts": list(PIPELINE_STAGES), "sums": {k: list(v) for k, v in COARSE_STAGES.items()},
            "labels": {s: STAGE_LABELS.get(s, s) for s in PIPELINE_STAGES},
            "parse_write_cpu": "the extractor times its writes; the caller thread's CPU over each chunk it "
                               "is fed is shared between parse and write in the proportion of their wall times",
            "plain_tar": "a plain (uncompressed) tar is hashed once, as hash_tar: its digest is its diffID"}


def stage_label(stage, kind=None):
    """What the tables and charts call a stage ("fetch" for the reads of a registry source)."""
    if stage == "read" and kind == "registry":
        return "fetch"
    return STAGE_LABELS.get(stage, stage)


def _shown_stages(stages):
    """The stages to show of ``stages`` (names a pipeline reported): the disjoint ones, in
    pipeline order, then any other that is not a sum of them."""
    coarse = set(COARSE_STAGES) if any(p in stages for parts in COARSE_STAGES.values() for p in parts) else set()
    return [s for s in PIPELINE_STAGES if s in stages] + [s for s in stages if s not in PIPELINE_STAGES
                                                          and s not in coarse and s != "total"]


_MORE_COLORS = ("#bcbd22", "#7f7f7f", "#dbdb8d", "#9edae5", "#c49c94", "#f7b6d2")


def _stage_colors(stages):
    """STAGE_COLORS, and one of _MORE_COLORS for each other stage of ``stages``."""
    extra = [s for s in stages if s not in STAGE_COLORS]
    return {**STAGE_COLORS, **{s: _MORE_COLORS[i % len(_MORE_COLORS)] for i, s in enumerate(extra)}}


def _layer_table(runs):
    """Per layer: the median of each stage over the runs, its throughputs, and its blake3
    seconds where the dedup pass ran per layer (overlay format; else None)."""
    table = []
    for i, first in enumerate(runs[0]["layers"]):
        seconds = {s: round(statistics.median(r["layers"][i]["seconds"].get(s, 0.0) for r in runs), 6)
                   for s in STAGES}
        total = seconds["total"]
        dedup = [layer for r in runs for layer in (r.get("dedup") or {}).get("layers", ()) if layer["index"] == i]
        table.append({
            "index": i, "digest": first["digest"], "diff_id": first["diff_id"],
            "compression": first["compression"], "entries": first["entries"], "bytes": first["bytes"],
            "compressed_bytes": first["compressed_bytes"], "whiteouts": first["whiteouts"],
            "hidden": first["hidden"], "nogil_entries": first.get("nogil_entries"), "seconds": seconds,
            "blake3": _median_of([d["blake3"] for d in dedup]) if dedup else None,
            "cpu": {k: _median_of([(r["layers"][i].get("cpu") or {}).get(k, 0.0) for r in runs])
                    for k in dict.fromkeys(k for r in runs for k in r["layers"][i]["cpu"])}
            if isinstance(first.get("cpu"), dict) else None,
            "mb_per_s": round(first["bytes"] / total / 1e6, 2) if total else None,
            "compressed_mb_per_s": round(first["compressed_bytes"] / total / 1e6, 2) if total else None,
            "entries_per_s": round(first["entries"] / total, 1) if total else None,
        })
    return table


# --- synthetic layers: one dimension at growing sizes ----------------------------------

def parse_sizes(text):
    """"1k,10k,200k" -> [1000, 10000, 200000]."""
    sizes = []
    for part in filter(None, (p.strip().lower() for p in text.split(","))):
        mult = {"k": 1000, "m": 1000 ** 2}.get(part[-1], 1)
        try:
            n = int(float(part[:-1] if mult > 1 else part) * mult)
        except ValueError:
            raise BenchError(f"--sizes: {part!r} is not a count (like 1000, 10k, 1M)") from None
        if n < 1:
            raise BenchError(f"--sizes: {part!r} must be at least 1")
        sizes.append(n)
    if not sizes:
        raise BenchError("--sizes: no size given")
    return sizes


SMALL_FILE = 512          # bytes in each small file
FILES_PER_DIR = 1000
CHAIN_DEPTH = 100         # deep: directories per chain
HUGE_FILES = 2            # huge-files: the size is MiB per file, in this many files


def _entry(name, type=tarfile.REGTYPE, size=0, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = type, size, linkname
    info.mode = 0o755 if type == tarfile.DIRTYPE else 0o644
    info.mtime = 1700000000
    return info


def synthetic_layers(kind, size):
    """The tar streams (bytes, bottom first) of a synthetic image probing ``kind`` at ``size``:
    entries in the top layer (small-files, deep, whiteouts, hardlinks) or MiB per file (huge-files)."""
    if kind not in SYNTHETIC_KINDS:
        raise BenchError(f"unknown synthetic kind {kind!r} (known: {', '.join(SYNTHETIC_KINDS)})")
    if kind == "whiteouts":
        return _whiteout_pair(size)
    if kind == "hardlinks" and size < 4:
        raise BenchError("hardlinks: sizes must be at least 4 entries (a directory, files, links to them)")
    build = {"small-files": lambda tf: _small_files(tf, size),
             "huge-files": lambda tf: _huge_files(tf, size),
             "deep": lambda tf: _deep(tf, size),
             "hardlinks": lambda tf: _hardlinks(tf, size)}[kind]
    return [_tar(build)]


def _tar(build):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        build(tf)
    return buf.getvalue()


def _small_files(tf, n):
    """``n`` entries: directories of FILES_PER_DIR files each (the directories count).
    Returns the names of the files."""
    files = []
    made = d = 0
    while made < n:
        dname = f"d{d:05d}"
        tf.addfile(_entry(dname, tarfile.DIRTYPE))
        made += 1
        for i in range(min(FILES_PER_DIR, n - made)):
            files.append(f"{dname}/f{i:05d}")
            _add_file(tf, files[-1])
            made += 1
        d += 1
    return files


_PAYLOAD = (b"lamina synthetic file\n" * (SMALL_FILE // 22 + 1))[:SMALL_FILE]


def _add_file(tf, name):
    tf.addfile(_entry(name, size=len(_PAYLOAD)), io.BytesIO(_PAYLOAD))


def _whiteout_pair(n):
    """A lower layer of ``n`` files (in directories), an upper one of ``n`` whiteouts deleting them."""
    names = [f"d{i // FILES_PER_DIR:05d}/f{i % FILES_PER_DIR:05d}" for i in range(n)]

    def lower(tf):
        for i, name in enumerate(names):
            if i % FILES_PER_DIR == 0:
                tf.addfile(_entry(os.path.dirname(name), tarfile.DIRTYPE))
            _add_file(tf, name)

    def upper(tf):
        for name in names:
            tf.addfile(_entry(f"{os.path.dirname(name)}/.wh.{os.path.basename(name)}"), io.BytesIO(b""))
    return [_tar(lower), _tar(upper)]


def _huge_files(tf, mib):
    # base64 of random bytes: compresses about like real binaries, so inflate does real work
    import base64
    block = base64.b64encode(os.urandom(3 << 18))  # 1 MiB
    for i in range(HUGE_FILES):
        tf.addfile(_entry(f"huge{i}", size=mib * len(block)), _Repeat(block, mib))


class _Repeat(io.RawIOBase):
    def __init__(self, block, times):
        self.block, self.left, self.pos = block, times, 0

    def readable(self):
        return True

    def read(self, n=-1):
        if not self.left:
            return b""
        out = self.block[self.pos:self.pos + (n if n >= 0 else len(self.block))]
        self.pos += len(out)
        if self.pos == len(self.block):
            self.pos, self.left = 0, self.left - 1
        return out


def _deep(tf, n):
    """Chains of CHAIN_DEPTH nested directories with a file at the bottom, ``n`` entries."""
    made = c = 0
    while made < n:
        path = f"c{c:05d}"
        for depth in range(min(CHAIN_DEPTH, n - made)):
            if depth:
                path += f"/d{depth:03d}"
            tf.addfile(_entry(path, tarfile.DIRTYPE))
            made += 1
        if made < n:
            tf.addfile(_entry(path + "/leaf", size=4), io.BytesIO(b"leaf"))
            made += 1
        c += 1


def _hardlinks(tf, n):
    """Half files (in directories, which count), half hardlinks to them: ``n`` entries."""
    names = _small_files(tf, n - n // 2)
    for i in range(n // 2):
        target = names[i % len(names)]
        tf.addfile(_entry(f"{target}.link{i // len(names)}", tarfile.LNKTYPE, linkname=target))


def write_layout(path, tars, tag="bench"):
    """An OCI image layout at ``path`` holding one image with these tar layers (gzip level 1)."""
    blobs = os.path.join(path, "blobs", "sha256")
    os.makedirs(blobs)

    def put(data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
               **put(gzip.compress(t, compresslevel=1, mtime=0))} for t in tars]
    config = {"architecture": _host_arch(), "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **put(json.dumps(config).encode())}, "layers": layers}
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                **put(json.dumps(manifest).encode()),
                                                "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return f"oci:{path}:{tag}"


def _host_arch():
    from .platform import Platform
    return Platform.host().architecture


def run_synthetic(kind, sizes=None, *, format="dir", runs=3, compare=(), target=None, progress=None):
    """Benchmark ``kind`` layers at each size: cost per entry and per byte, to see the curve."""
    say = progress or (lambda msg: None)
    if kind not in SYNTHETIC_KINDS:
        raise BenchError(f"unknown synthetic kind {kind!r} (known: {', '.join(SYNTHETIC_KINDS)})")
    sizes = sizes or (DEFAULT_HUGE_MIB if kind == "huge-files" else DEFAULT_SIZES)
    points = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="lamina-bench-synthetic-") as tmp:
            say(f"{kind} {size}: generating")
            source = write_layout(os.path.join(tmp, "image"), synthetic_layers(kind, size))
            doc = run(source, format=format, runs=runs, compare=compare, target=target, progress=progress)
        med = doc["lamina"]["median"]
        layers_wall = med["seconds"].get("layers", med["wall"])
        points.append({
            "size": size, "entries": med["entries"], "bytes": med["bytes"],
            "compressed_bytes": med["compressed_bytes"], "wall": med["wall"], "cpu": med["cpu"],
            "peak_rss_bytes": med["peak_rss_bytes"],
            "us_per_entry": round(layers_wall / med["entries"] * 1e6, 3) if med["entries"] else None,
            # CPU per entry: on a loaded machine the wall time waits for a core, the CPU time does not
            "cpu_us_per_entry": round(med["cpu"] / med["entries"] * 1e6, 3) if med["entries"] else None,
            "ns_per_byte": round(layers_wall / med["bytes"] * 1e9, 3) if med["bytes"] else None,
            # where the cost per entry goes: each stage's median (wall, CPU) over the layers
            "stage_us_per_entry": _per_entry(doc["layers"], "seconds", med["entries"]),
            "stage_cpu_us_per_entry": _per_entry(doc["layers"], "cpu", med["entries"]),
            "entries_in_tree": doc["lamina"]["entries_in_tree"],
            "compare": doc["compare"], "target": doc["target"],
        })
    return {"kind": "synthetic", "synthetic": kind, "lamina_version": __version__, "format": format,
            "runs": runs, "target": points[0]["target"] if points else filesystem_of(target or default_target_parent()),
            "host": {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]},
            "stages": stages_doc(),
            "points": points}


def _per_entry(layers, field, entries):
    """{stage: µs per entry} of the layers' ``field`` ("seconds" or "cpu"), the disjoint
    stages only; None when the pipeline does not report them."""
    if not entries or not all(isinstance(layer.get(field), dict) for layer in layers):
        return None
    stages = _shown_stages([s for layer in layers for s in layer[field]])
    return {s: round(sum(layer[field].get(s, 0.0) for layer in layers) / entries * 1e6, 3) for s in stages}


# --- the report: JSON, and an HTML page with charts ---------------------------------------

def write_report(doc, directory):
    """bench.json and index.html in ``directory``; the page embeds SVG charts when matplotlib
    is installed (``pip install lamina[plot]``), else tables only.  Returns the files written."""
    import html
    os.makedirs(directory, exist_ok=True)
    json_path = os.path.join(directory, "bench.json")
    with open(json_path, "w") as f:
        json.dump({"version": 1, **doc}, f, indent=2)
    charts = _charts(doc)
    esc = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>lamina bench</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>",
             f"<h1>lamina bench: {esc(str(doc.get('source') or doc.get('synthetic')))}</h1>",
             f"<p>lamina {esc(doc['lamina_version'])}, format {esc(doc['format'])}, {doc['runs']} run(s), "
             f"target {esc(doc['target'].get('path', ''))} ({esc(doc['target']['fstype'])})</p>"]
    for title, rows in report_tables(doc):
        parts.append(f"<h2>{esc(title)}</h2><table>")
        parts.append("<tr>" + "".join(f"<th>{esc(str(c))}</th>" for c in rows[0]) + "</tr>")
        for row in rows[1:]:
            parts.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    if charts is None:
        parts.append("<p>No charts: matplotlib is not installed (pip install lamina[plot]).</p>")
    for title, svg in charts or ():
        parts.append(f"<h2>{esc(title)}</h2><figure class='chart'>{svg}</figure>")
    parts.append("</body></html>")
    html_path = os.path.join(directory, "index.html")
    with open(html_path, "w") as f:
        f.write("\n".join(parts))
    return [json_path, html_path]


def _fmt(x, digits=3):
    return "" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def report_tables(doc):
    """[(title, [header, row, ...])]: what the text output and the HTML page show."""
    tables = []
    if doc.get("kind") == "synthetic":
        rows = [["size", "entries", "MB", "wall s", "cpu s", "µs/entry", "cpu µs/entry", "ns/byte", "peak RSS MB"]]
        for p in doc["points"]:
            rows.append([p["size"], p["entries"], _fmt(p["bytes"] / 1e6, 1), _fmt(p["wall"]), _fmt(p["cpu"]),
                         _fmt(p["us_per_entry"], 2), _fmt(p["cpu_us_per_entry"], 2), _fmt(p["ns_per_byte"], 2),
                         _fmt(p["peak_rss_bytes"] / 1e6, 1)])
        tables.append((f"synthetic {doc['synthetic']}: cost per entry and per byte", rows))
        for field, what in (("stage_us_per_entry", "wall"), ("stage_cpu_us_per_entry", "thread CPU")):
            if all(p.get(field) for p in doc["points"]):
                shown = _shown_stages([s for p in doc["points"] for s in p[field]])
                rows = [["size", "entries"] + [f"{stage_label(s)} µs" for s in shown]]
                rows += [[p["size"], p["entries"]] + [_fmt(p[field].get(s, 0.0), 3) for s in shown]
                         for p in doc["points"]]
                tables.append((f"synthetic {doc['synthetic']}: {what} µs per entry in each stage (median; summed "
                               "over the pipeline's threads, which overlap: wait is mostly stage 1 waiting for "
                               "room in the ring)", rows))
        compare = [(p["size"], c) for p in doc["points"] for c in p["compare"]]
    else:
        blake3_na = "n/a" if not doc["lamina"]["dedup"]["ran"] else "-"  # "-": dir format, one tree
        kind = doc.get("kind")
        shown = _shown_stages([s for layer in doc["layers"] for s in layer["seconds"]])
        rows = [["layer", "comp", "entries", "MB", "comp MB"] + [f"{stage_label(s, kind)} ms" for s in shown]
                + ["total ms", "blake3 ms", "MB/s", "comp MB/s", "entries/s"]]
        for layer in doc["layers"]:
            rows.append([layer["index"], layer["compression"], layer["entries"], _fmt(layer["bytes"] / 1e6, 2),
                         _fmt(layer["compressed_bytes"] / 1e6, 2)]
                        + [_stage_cell(layer, s, layer["seconds"].get(s, 0.0)) for s in shown]
                        + [_fmt(layer["seconds"]["total"] * 1e3, 1),
                           blake3_na if layer.get("blake3") is None else _fmt(layer["blake3"] * 1e3, 1),
                           _fmt(layer["mb_per_s"], 1), _fmt(layer["compressed_mb_per_s"], 1),
                           _fmt(layer["entries_per_s"], 0)])
        tables.append((f"per layer (median wall milliseconds per stage; {stage_label('read', kind)}, inflate on one thread, "
                       "parse and write on the caller's, blob and diffID sha256 on whichever "
                       "waits; wait is both threads'; blake3 is the store's dedup pass, after the unpack)", rows))
        if all(isinstance(layer.get("cpu"), dict) for layer in doc["layers"]):
            shown = _shown_stages([s for layer in doc["layers"] for key in ("seconds", "cpu") for s in layer[key]])
            rows = [["layer", "comp"] + [f"{stage_label(s, kind)} ms" for s in shown] + ["busy ms"]]
            for layer in doc["layers"]:
                rows.append([layer["index"], layer["compression"]]
                            + [_stage_cell(layer, s, layer["cpu"].get(s, 0.0)) for s in shown]
                            + [_fmt(sum(layer["cpu"].get(s, 0.0) for s in shown if s != "wait") * 1e3, 1)])
            tables.append(("per layer, CPU (median thread CPU milliseconds per stage; parse and write share the "
                           "caller thread's CPU of each chunk in the proportion of their wall times in it)", rows))
        med = doc["lamina"]["median"]
        tables.append(("whole unpack (median)", [
            ["wall s", "cpu s", "main thread cpu s", "cores busy", "peak RSS MB", "MB/s", "comp MB/s", "entries/s"]
            + [f"{k} s" for k in med["seconds"]],
            [_fmt(med["wall"]), _fmt(med["cpu"]), _fmt(med["cpu_main_thread"]), _fmt(med["cores_busy"], 2),
             _fmt(med["peak_rss_bytes"] / 1e6, 1), _fmt(med["mb_per_s"], 1), _fmt(med["compressed_mb_per_s"], 1),
             _fmt(med["entries_per_s"], 0)] + [_fmt(v) for v in med["seconds"].values()]]))
        tables.append(_cpu_table(med, doc["format"]))
        dedup = doc["lamina"]["dedup"]
        if dedup["ran"]:
            tables.append(("store dedup after the unpack (median; blake3 = reading and hashing every file)", [
                ["blake3 s", "dedup pass s", "files", "MB", "linked"],
                [_fmt(dedup["blake3"]), _fmt(dedup["seconds"]), dedup["files"], _fmt(dedup["bytes"] / 1e6, 1),
                 dedup["linked"]]]))
        else:
            tables.append(("store dedup (blake3 stage)", [["blake3 s"], [dedup["why"]]]))
        compare = [(None, c) for c in doc["compare"]]
    if compare:
        rows = [(["size"] if doc.get("kind") == "synthetic" else [])
                + ["tool", "median s", "x lamina", "cpu s", "peak RSS MB", "tree entries", "tree ok", "what it checks"]]
        for size, c in compare:
            lead = [size] if doc.get("kind") == "synthetic" else []
            if "error" in c:
                rows.append(lead + [c["tool"], "", "", "", "", "", "", f"not run: {c['error']}"])
            else:
                rows.append(lead + [c["tool"], _fmt(c["median_wall"]), _fmt(c["ratio_to_lamina"], 2),
                                    _fmt(c["median_cpu"]),
                                    _fmt(c["peak_rss_bytes"] / 1e6, 1) if c["peak_rss_bytes"] else "?",
                                    f"{c['entries']}/{c['expected_entries']}",
                                    "yes" if c["tree_ok"] else "NO", c["verifies"]])
        tables.append(("comparison (ratio = tool time / lamina time; >1: lamina is faster)", rows))
    return tables


def _stage_cell(layer, stage, seconds):
    """A stage's milliseconds in a per-layer table: a plain tar is hashed once, as the diffID
    (its digest is the same sha256), so its blob sha256 is that one."""
    if stage == "hash_blob" and layer["compression"] == "none" and not seconds:
        return "= diffID"
    return _fmt(seconds * 1e3, 1)


def _cpu_table(med, format):
    """CPU seconds per stage (when the pipeline reports them), else per thread as far as the
    process can tell; and each core's busy share during the run."""
    rows = [["what", "cpu s or busy"]]
    if med.get("cpu_stages"):
        rows += [[f"stage {stage_label(k)}", _fmt(med["cpu_stages"][k])] for k in _shown_stages(med["cpu_stages"])]
        note = "per stage, from the pipeline"
    else:
        note = "per stage: n/a (this lamina's pipeline does not report stage CPU); per thread instead"
        # dir: the caller's thread parses and writes; overlay: layers run on a pool, it waits
        main, other = (("main thread (parse, write)", "other threads (read, inflate, hash)") if format == "dir"
                       else ("main thread (waits for the layers)", "other threads (every stage, layers in parallel)"))
        rows += [[main, _fmt(med["cpu_main_thread"])],
                 [other, _fmt(max(med["cpu"] - med["cpu_main_thread"], 0.0))]]
    rows += [["process user", _fmt(med["cpu_user"])], ["process system", _fmt(med["cpu_system"])]]
    for i, busy in enumerate(med.get("per_core_busy") or ()):
        rows.append([f"core {i} busy (whole machine)", "run too short" if busy is None else f"{busy * 100:.0f}%"])
    return (f"CPU (median; {note})", rows)


def _charts(doc):
    """[(title, svg text)], or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        return None
    charts = []

    def svg(fig):
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight")
        plt.close(fig)
        text = buf.getvalue()
        return text[text.index("<svg"):]  # drop the XML prolog: the page inlines it

    if doc.get("kind") == "synthetic":
        pts = doc["points"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([p["entries"] for p in pts], [p["us_per_entry"] for p in pts], marker="o", label="lamina")
        ax.plot([p["entries"] for p in pts], [p["cpu_us_per_entry"] for p in pts], marker="o", linestyle="--",
                label="lamina, CPU")
        for tool in dict.fromkeys(c["tool"] for p in pts for c in p["compare"] if "error" not in c):
            ran = [(p["entries"], c["median_wall"], c["median_cpu"]) for p in pts for c in p["compare"]
                   if c["tool"] == tool and "error" not in c]
            line, = ax.plot([n for n, _, _ in ran], [w / n * 1e6 for n, w, _ in ran], marker="s", label=tool)
            ax.plot([n for n, _, _ in ran], [c / n * 1e6 for n, _, c in ran], marker="s", linestyle="--",
                    color=line.get_color(), label=f"{tool}, CPU")
        ax.set_xscale("log")
        ax.set_xlabel("entries in the layer")
        ax.set_ylabel("µs per entry (wall; dashed: CPU)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
        ax.set_title(f"{doc['synthetic']}: cost per entry")
        charts.append(("scaling: cost per entry", svg(fig)))
        if all(p.get("stage_cpu_us_per_entry") for p in pts):
            charts.append(("scaling: CPU per entry in each stage", svg(_scaling_shares_figure(plt, doc))))
        return charts
    charts.append(("timeline: which thread did what, when", svg(_timeline_figure(plt, doc))))
    charts.append(("stage shares per layer: seconds and CPU", svg(_shares_figure(plt, doc))))
    charts.append(("CPU: seconds per stage, and how busy each core was", svg(_cpu_figure(plt, doc))))
    ran = [c for c in doc["compare"] if "error" not in c]
    if ran:
        fig, ax = plt.subplots(figsize=(6, 0.8 + 0.4 * len(ran)))
        names = ["lamina"] + [c["tool"] for c in ran]
        ax.barh(names, [doc["lamina"]["median"]["wall"]] + [c["median_wall"] for c in ran])
        ax.set_xlabel("median wall seconds")
        charts.append(("comparison", svg(fig)))
    return charts


def _scaling_shares_figure(plt, doc):
    """One stacked bar per size: the thread CPU µs per entry of each stage (waits left out)."""
    pts = doc["points"]
    shown = [s for s in _shown_stages([s for p in pts for s in p["stage_cpu_us_per_entry"]]) if s != "wait"]
    colors = _stage_colors(shown)
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.4 * len(pts)))
    for y, p in enumerate(pts):
        left = 0.0
        for stage in shown:
            v = p["stage_cpu_us_per_entry"].get(stage, 0.0)
            ax.barh(y, v, left=left, color=colors[stage], label=stage_label(stage) if y == 0 else None)
            left += v
    ax.set_yticks(range(len(pts)), [f"{p['entries']} entries" for p in pts])
    ax.invert_yaxis()
    ax.set_xlabel("thread CPU µs per entry")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def _shares_figure(plt, doc):
    """Two stacked bars per layer: the wall seconds of each stage (the threads overlap, so the
    bar can pass the layer's wall time, the black tick) and the CPU seconds of each."""
    kind = doc.get("kind")
    layers = doc["layers"]
    with_cpu = all(isinstance(layer.get("cpu"), dict) for layer in layers)
    bars = [("seconds", "seconds")] + ([("CPU", "cpu")] if with_cpu else [])
    shown = [s for s in _shown_stages([s for layer in layers for _, f in bars for s in layer[f]]) if s != "wait"]
    colors = _stage_colors(shown)
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.45 * len(bars) * len(layers)))
    labels, seen = [], set()
    for layer in layers:
        for what, field in bars:
            y = len(labels)
            labels.append(f"layer {layer['index']} {what}")
            left = 0.0
            for stage in shown:
                v = layer[field].get(stage, 0.0)
                if v <= 0:
                    continue
                ax.barh(y, v, left=left, color=colors[stage],
                        label=None if stage in seen else stage_label(stage, kind))
                seen.add(stage)
                left += v
        ax.plot([layer["seconds"]["total"]] * 2, [len(labels) - len(bars) - 0.4, len(labels) - 0.6],
                color="black", label=None if "total" in seen else "layer wall time")
        seen.add("total")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (wall, summed over the threads; CPU)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def _timeline_figure(plt, doc):
    """One row per thread: when it read, inflated, hashed, parsed, wrote (what the pipeline
    reports: its stages alternate chunk by chunk, so each stretch of work is drawn as one
    piece per stage, as long as the stage's share of it), and a row of the layer blobs each
    thread had open (scan, then apply)."""
    rows = doc["lamina"]["timeline"]
    kind = doc.get("kind")
    names = []
    for thread, stage, *_ in rows:
        name = f"{thread}: layers" if stage in ("apply", "scan") else thread
        if name not in names:
            names.append(name)
    order = ("apply", "scan") + PIPELINE_STAGES + tuple(COARSE_STAGES)
    stages = [s for s in order if any(r[1] == s for r in rows)] + list(dict.fromkeys(
        r[1] for r in rows if r[1] not in order))
    colors = _stage_colors(stages)
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.45 * max(len(names), 1)))
    for thread, stage, layer, start, end in rows:
        y = names.index(f"{thread}: layers" if stage in ("apply", "scan") else thread)
        span = stage in ("apply", "scan")  # one bar per layer, outlined so that neighbours stay apart
        ax.broken_barh([(start, max(end - start, 1e-5))], (y - 0.38, 0.76), facecolor=colors[stage],
                       edgecolor="black" if span else "none", linewidth=0.6 if span else 0)
        if span:
            ax.text(start, y, f" {stage} {layer}", va="center", fontsize="x-small")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds from the start of the run")
    ax.set_xlim(left=0)
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color=colors[s], label=stage_label(s, kind)) for s in stages], fontsize="small",
              loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def _cpu_figure(plt, doc):
    med = doc["lamina"]["median"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 2.8), gridspec_kw={"width_ratios": [3, 2]})
    if med.get("cpu_stages"):
        stages = _shown_stages(med["cpu_stages"])
        names = [stage_label(k, doc.get("kind")) for k in stages]
        values = [med["cpu_stages"][k] for k in stages]
        left.set_title("CPU seconds per stage", fontsize="medium")
    else:
        stages = [None, None]
        names = ["main thread", "other threads"]
        values = [med["cpu_main_thread"], max(med["cpu"] - med["cpu_main_thread"], 0.0)]
        left.set_title("CPU seconds per thread (no stage CPU reported)", fontsize="medium")
    if doc["lamina"]["dedup"]["ran"]:
        stages.append("blake3")
        names.append("blake3 (dedup pass, one thread)")
        values.append(doc["lamina"]["dedup"]["blake3"])
    colors = _stage_colors([s for s in stages if s])
    left.barh(names, values, color=[colors[s] if s else "#1f77b4" for s in stages])
    left.invert_yaxis()
    left.set_xlabel("CPU seconds")
    cores = med.get("per_core_busy") or []
    right.bar([str(i) for i in range(len(cores))], [(c or 0) * 100 for c in cores])
    right.set_ylim(0, 100)
    right.set_xlabel("core")
    right.set_ylabel("% busy (whole machine)")
    right.set_title("cores during the run", fontsize="medium")
    fig.tight_layout()
    return fig
