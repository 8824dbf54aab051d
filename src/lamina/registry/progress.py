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
        Extracting, Pull complete, Already exists, Pushing, Pushed, Layer already exists, Mounted from X."""

    def progress(self, digest, done, total):
        pass

    def close(self):
        pass


FINAL = ("Pull complete", "Already exists", "Pushed", "Layer already exists")


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


class LayerProgress:
    """One layer's line: status, bytes, and a rate over the last RATE_WINDOW seconds only, so a
    stalled transfer shows its rate falling to 0 instead of the last value, frozen."""

    def __init__(self, digest, size, now):
        self.digest, self.short, self.size = digest, short_id(digest), size
        self.status, self.done, self.since = "Waiting", 0, now
        self._samples = collections.deque([(now, 0)])

    def set_status(self, status, now):
        if status != self.status:
            self.status, self.since = status, now

    def set_done(self, done, now):
        self.done = done
        if now - self._samples[-1][0] >= 0.05:
            self._samples.append((now, done))

    def rate(self, now):
        """Bytes per second while downloading (None before there is anything to say)."""
        if self.status not in ("Downloading", "Pushing"):
            return None
        samples = self._samples
        while len(samples) > 1 and samples[1][0] <= now - RATE_WINDOW:
            samples.popleft()
        t0, d0 = samples[0]
        if now - t0 < 0.2:
            return None
        return max(self.done - d0, 0) / (now - t0)

    def render(self, width, now):
        """The line, at most ``width`` columns; the short id is never cut (the tail is dropped first)."""
        from ..cli.output import human_size
        head = f"{self.short}: {self.status}"
        if is_final(self.status) or self.status == "Waiting":
            pieces = []
        elif self.status in ("Downloading", "Pushing") and self.size:
            frac = min(self.done / self.size, 1.0)
            fill = int(frac * _BAR)
            bar = "[" + "=" * fill + (">" if fill < _BAR else "") + " " * max(_BAR - fill - 1, 0) + "]"
            sizes = f"{human_size(self.done, 3)}/{human_size(self.size, 3)}"
            rate = self.rate(now)
            speed = f"{human_size(rate, 3)}/s" if rate is not None else ""
            pieces = [[bar, sizes, speed], [sizes, speed], [sizes]]
        else:   # Extracting, Verifying Checksum, Retrying...: how long it has been at it
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
