"""What pull and push print: docker's lines, rich bars on a terminal, nothing, or JSON.

Reporters receive events from worker threads; each implementation is
thread-safe.  ``Reporter`` is the silent base class (API use, ``-q``,
``--format json``).
"""
from __future__ import annotations

import sys
import threading


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


class PlainReporter(Reporter):
    """docker's non-terminal output: one line per finished layer."""

    FINAL = ("Pull complete", "Already exists", "Pushed", "Layer already exists")

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self._lock = threading.Lock()

    def line(self, text):
        with self._lock:
            print(text, file=self.out, flush=True)

    def state(self, digest, status):
        if status in self.FINAL or status.startswith("Mounted from "):
            self.line(f"{short_id(digest)}: {status}")


class RichReporter(Reporter):
    """Live per-layer bars (rich) on a terminal; the final lines stay once it stops."""

    def __init__(self, out=None, console=None):
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
        self.console = console or Console(file=out or sys.stdout)
        self._progress = Progress(
            TextColumn("{task.fields[short]}:"), TextColumn("{task.fields[status]:<18}"),
            BarColumn(bar_width=40), DownloadColumn(), TransferSpeedColumn(),
            console=self.console, transient=True)
        self._tasks = {}
        self._lock = threading.Lock()
        self._started = False

    def _start(self):
        if not self._started:
            self._progress.start()
            self._started = True

    def line(self, text):
        with self._lock:
            self.console.print(text, highlight=False, markup=False)

    def layer(self, digest, size):
        with self._lock:
            self._start()
            if digest not in self._tasks:
                self._tasks[digest] = self._progress.add_task(
                    "", total=size or None, short=short_id(digest), status="Waiting")

    def state(self, digest, status):
        with self._lock:
            task = self._tasks.get(digest)
            final = status in PlainReporter.FINAL or status.startswith("Mounted from ")
            if task is not None:
                if final:
                    self._progress.update(task, status=status, visible=False)
                else:
                    self._progress.update(task, status=status)
            if final:
                self._progress.console.print(f"{short_id(digest)}: {status}", highlight=False, markup=False)
            if self._started:
                self._progress.refresh()   # the live table is rebuilt on refresh only

    def progress(self, digest, done, total):
        task = self._tasks.get(digest)
        if task is not None:
            self._progress.update(task, completed=done, total=total or None)

    def close(self):
        with self._lock:
            if self._started:
                self._progress.stop()
                self._started = False


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
