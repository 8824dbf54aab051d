"""What pull and push print: docker's lines, rich bars on a terminal, nothing, or JSON.

Reporters receive events from worker threads; each implementation is
thread-safe.  ``Reporter`` is the silent base class (API use, ``-q``,
``--format json``).
"""
from __future__ import annotations

import collections
import sys
import threading
import time


def short_id(digest):
    return digest.split(":", 1)[-1][:12]


class Reporter:
    """Silent; subclasses print."""

    def line(self, text):
        pass

    def layer(self, digest, size):
        """A layer that will be fetched (or found), before any transfer starts."""

    def state(self, digest, status):
        """Docker's states: Waiting, Downloading, Retrying, Verifying Checksum, Download complete,
        Extracting, Pull complete, Already exists, Pushing, Pushed, Layer already exists, Mounted from X, Skipped foreign layer."""

    def progress(self, digest, done, total):
        """Bytes of the blob downloaded (or pushed)."""

    def extracted(self, digest, done, total):
        """Bytes of the blob the extraction has read (it may trail the download or follow it)."""

    def extraction(self, digest, size):
        """apply_layer's ``progress`` for the blob ``digest``: reports to extracted()."""
        return lambda done: self.extracted(digest, done, size)

    def close(self):
        pass


FINAL = ("Pull complete", "Already exists", "Pushed", "Layer already exists", "Skipped foreign layer")


def is_final(status):
    return status in FINAL or status.startswith("Mounted from ")


class PlainReporter(Reporter):
    """Not a terminal: one line per layer once it is done, in manifest order (as listed by layer())."""

    FINAL = FINAL

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self._lock = threading.Lock()
        self._order = []       # digests in manifest order
        self._done = {}        # digest -> final status, not printed yet
        self._printed = 0

    def line(self, text):
        with self._lock:
            print(text, file=self.out, flush=True)

    def layer(self, digest, size):
        with self._lock:
            if digest not in self._order:
                self._order.append(digest)

    def state(self, digest, status):
        if not is_final(status):
            return
        with self._lock:
            if digest not in self._order:   # never announced: nothing to keep in order with
                print(f"{short_id(digest)}: {status}", file=self.out, flush=True)
                return
            self._done[digest] = status
            while self._printed < len(self._order) and self._order[self._printed] in self._done:
                d = self._order[self._printed]
                print(f"{short_id(d)}: {self._done.pop(d)}", file=self.out, flush=True)
                self._printed += 1


RATE_WINDOW = 2.0      # seconds of samples a transfer rate is computed over
_BAR = 24


class _Counter:
    """Bytes done so far, and their rate over the last RATE_WINDOW seconds only, so that a
    stalled transfer shows its rate falling to 0 instead of the last value, frozen.  The rate
    counts from its first sample on: a transfer from when it starts (``start``), an extraction
    from its first report, so that neither is averaged over the wait before it (a download
    queued behind others; an extraction waiting for its download or the layers below)."""

    def __init__(self):
        self.done = 0
        self._samples = collections.deque()

    def start(self, now):
        if not self._samples:
            self._samples.append((now, self.done))

    def set(self, done, now):
        self.done = done
        if not self._samples or now - self._samples[-1][0] >= 0.05:
            self._samples.append((now, done))

    def rate(self, now):
        """Bytes per second (None before there is anything to say)."""
        samples = self._samples
        if not samples:
            return None
        while len(samples) > 1 and samples[1][0] <= now - RATE_WINDOW:
            samples.popleft()
        t0, d0 = samples[0]
        if now - t0 < 0.2:
            return None
        return max(self.done - d0, 0) / (now - t0)


class LayerProgress:
    """One layer's line: status, and while bytes move (Downloading, Pushing, Extracting) a bar,
    the bytes and their recent rate; Extracting counts the blob's bytes the extraction has
    read, as docker does, which trail the download when both run at once."""

    def __init__(self, digest, size, now):
        self.digest, self.short, self.size = digest, short_id(digest), size
        self.status, self.since = "Waiting", now
        self._transfer, self._extract = _Counter(), _Counter()

    @property
    def done(self):
        return self._transfer.done

    def set_status(self, status, now):
        if status != self.status:
            self.status, self.since = status, now
        if status in ("Downloading", "Pushing"):
            self._transfer.start(now)

    def set_done(self, done, now):
        self._transfer.set(done, now)

    def set_extracted(self, done, now):
        self._extract.set(done, now)

    def _counter(self):
        """The counter the status shows, if it shows one."""
        if self.status in ("Downloading", "Pushing"):
            return self._transfer
        if self.status == "Extracting" and self._extract.done:
            return self._extract
        return None

    def rate(self, now):
        """Bytes per second of what the status shows (None before there is anything to say)."""
        counter = self._counter()
        return counter.rate(now) if counter is not None else None

    def render(self, width, now):
        """The line, at most ``width`` columns; the short id is never cut (the tail is dropped first)."""
        from ..cli.output import human_size
        head = f"{self.short}: {self.status}"
        counter = self._counter()
        if is_final(self.status) or self.status == "Waiting":
            pieces = []
        elif counter is not None and self.size:
            frac = min(counter.done / self.size, 1.0)
            fill = int(frac * _BAR)
            bar = "[" + "=" * fill + (">" if fill < _BAR else "") + " " * max(_BAR - fill - 1, 0) + "]"
            sizes = f"{human_size(counter.done, 3)}/{human_size(self.size, 3)}"
            rate = counter.rate(now)
            speed = f"{human_size(rate, 3)}/s" if rate is not None else ""
            pieces = [[bar, sizes, speed], [sizes, speed], [sizes]]
        else:   # Extracting before its first bytes, Verifying Checksum, Retrying...: how long it has been at it
            pieces = [[f"{now - self.since:.1f}s"]]
        for extra in pieces:
            for h in (f"{head:<32}", head):   # aligned columns if they fit, else just the facts
                text = "  ".join([h] + [p for p in extra if p]).rstrip()
                if len(text) <= width:
                    return text
        if len(head) <= width:
            return head
        return head[:max(width, len(self.short) + 1)]


class RichReporter(Reporter):
    """A terminal: one live line per layer in manifest order, redrawn several times a second."""

    def __init__(self, out=None, console=None, clock=time.monotonic):
        from rich.console import Console
        self.console = console or Console(file=out or sys.stdout)
        self._clock = clock
        self._layers = {}      # digest -> LayerProgress, in manifest order
        self._lock = threading.Lock()
        self._live = None

    def __rich_console__(self, console, options):
        from rich.text import Text
        now = self._clock()
        with self._lock:
            layers = list(self._layers.values())
        for layer in layers:
            yield Text(layer.render(options.max_width, now), no_wrap=True, overflow="crop")

    def _start(self):
        if self._live is None:
            from rich.live import Live
            self._live = Live(self, console=self.console, refresh_per_second=8, transient=False)
            self._live.start()

    def line(self, text):
        with self._lock:
            live, self._live = self._live, None
        if live is not None:
            live.stop()   # the layer lines stay where they are; what follows goes below them
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def layer(self, digest, size):
        with self._lock:
            if digest not in self._layers:
                self._layers[digest] = LayerProgress(digest, size, self._clock())
        self._start()

    def state(self, digest, status):
        with self._lock:
            layer = self._layers.get(digest)
            if layer is not None:
                layer.set_status(status, self._clock())
        if layer is None and is_final(status):
            self.console.print(f"{short_id(digest)}: {status}", highlight=False, markup=False)

    def progress(self, digest, done, total):
        layer = self._layers.get(digest)
        if layer is not None:
            layer.set_done(done, self._clock())

    def extracted(self, digest, done, total):
        layer = self._layers.get(digest)
        if layer is not None:
            layer.set_extracted(done, self._clock())

    def close(self):
        with self._lock:
            live, self._live = self._live, None
        if live is not None:
            live.stop()


def reporter_for(mode, out=None):
    """"plain", "quiet"/"json" (silent) or "auto" (rich on a terminal, plain otherwise)."""
    out = out or sys.stdout
    if mode in ("quiet", "json"):
        return Reporter()
    if mode == "auto" and getattr(out, "isatty", lambda: False)():
        try:
            return RichReporter(out)
        except ImportError:
            pass
    return PlainReporter(out)
