"""InflateAhead: a flat unpack's layers, each inflating while the one below it is finished.

The dir format writes its layers one after another (each one's whiteouts delete what the
ones below wrote), and on gzip, inflating is the slower of a layer's two stages.  So the
core that inflated a layer would idle while the caller's thread writes that layer's last
chunks, and before the bottom layer, while the small upper layers are scanned.  Here the
bottom layer's stage 1 starts before that scan, and each next layer's stage is made when the
layer below's turn comes (its blob opened and its head read on a short-lived thread, so that a
registry slow to send it never holds up the layer being written) and starts reading the moment
the stage below has read its whole blob (a _pipeline.Gate, opened without the GIL).  What it
inflates meanwhile waits in its ring: one layer ahead of the one being written, at most.
Layers are still written strictly in order, by the caller's thread.  Whatever opening a layer
raised is raised when its turn comes, as if it had been opened then.
"""
from __future__ import annotations

import contextlib
import threading

from . import _pipeline, trace
from .layer import ABANDON_READER_AFTER, StartedLayer

_TAKEN = object()   # the layer's turn came: it is opened as usual from now on


class InflateAhead:
    def __init__(self, layers):
        self._layers = layers
        self._consumer = threading.current_thread().name
        # gate i opens when layer i has inflated (its stage ended) or, without a stage of
        # ours, was written: layer i + 1's stage starts reading then
        self._gates = [_pipeline.Gate() for _ in layers]
        self._cond = threading.Condition()
        self._state = {}      # index -> None (opening), (file, StartedLayer, error), or _TAKEN
        self._threads = []
        self._closed = False

    def start(self, i):
        """Open layer ``i`` and make its stage 1, unless that happened or its turn came."""
        if i >= len(self._layers):
            return
        with self._cond:
            if self._closed or i in self._state:
                return
            self._state[i] = None
            thread = threading.Thread(target=self._open, args=(i,), name="lamina-ahead", daemon=True)
            self._threads.append(thread)
        thread.start()

    def _open(self, i):
        layer, f, started, error = self._layers[i], None, None, None
        try:
            f = layer.open()
            started = StartedLayer(f, media_type=layer.media_type, consumer=self._consumer,
                                   waits=self._gates[i - 1] if i else None, opens=self._gates[i])
            trace.event("inflate-ahead", layer=i)
        except BaseException as e:  # raised when the layer's turn comes
            error = e
        with self._cond:
            keep = not self._closed
            if keep:
                self._state[i] = (f, started, error)
                self._cond.notify_all()
        if not keep:
            _discard(f, started)

    @contextlib.contextmanager
    def opened(self, i):
        """Layer ``i``'s blob for apply_layer: its StartedLayer, or a file opened now.  The
        layer above is started meanwhile."""
        with self._cond:
            while i in self._state and self._state[i] is None:
                self._cond.wait()
            taken = self._state.get(i, _TAKEN)
            self._state[i] = _TAKEN
        if taken is _TAKEN:
            self.start(i + 1)
            with self._layers[i].open() as f:
                yield f
        else:
            f, started, error = taken
            try:
                if error is not None:
                    raise error
                self.start(i + 1)
                yield started
            finally:
                _discard(f, started)
        self._gates[i].open()   # a layer whose stage was not ours: the one above starts now

    def close(self):
        """Stop every stage made and not taken (idempotent)."""
        with self._cond:
            self._closed = True
            left = [s for s in self._state.values() if s is not None and s is not _TAKEN]
            self._state = {i: _TAKEN for i in self._state}
            threads, self._threads = self._threads, []
        for f, started, _ in left:
            _discard(f, started)
        for thread in threads:   # one still opening discards what it opens
            thread.join(ABANDON_READER_AFTER)


def _discard(f, started):
    if started is not None:
        started.close()
    if f is not None:
        f.close()
