"""InflateAhead: a flat unpack's layers, each inflating while the one below it is finished.

The dir format writes its layers one after another (each one's whiteouts delete what the
ones below wrote), and on gzip, inflating is the slower of a layer's two stages.  So the
core that inflated a layer would idle while the caller's thread writes that layer's last
chunks, and before the bottom layer, while the small upper layers are scanned.  Here the
bottom layer's stage 1 starts before that scan, and each next layer's when the one below
it has read its whole blob (``layer.StartedLayer``): what it inflates meanwhile waits in its
ring.  Layers are still written strictly in order, by the caller's thread.

Opening a layer and reading its head happen on a short-lived thread, so that a registry
slow to send the next blob never holds up the layer being written; whatever they raise is
raised when that layer's turn comes, as if it had been opened then.
"""
from __future__ import annotations

import contextlib
import threading

from . import trace
from .layer import ABANDON_READER_AFTER, StartedLayer

_TAKEN = object()   # the layer's turn came: it is opened as usual from now on


class InflateAhead:
    def __init__(self, layers):
        self._layers = layers
        self._consumer = threading.current_thread().name
        self._cond = threading.Condition()
        self._state = {}      # index -> None (opening), (file, StartedLayer, error), or _TAKEN
        self._inflated = set()  # layers whose stage ended before their turn came
        self._threads = []
        self._closed = False

    def start(self, i):
        """Open layer ``i`` and start its stage 1, unless that happened or its turn came (any thread)."""
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
                                   then=lambda: self._ended(i))
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

    def _ended(self, i):
        """Layer ``i``'s stage read its whole blob: the next one starts, if ``i``'s turn came
        (one layer ahead of the one being written at most: small layers inflate in no time)."""
        with self._cond:
            if self._state.get(i) is not _TAKEN:
                self._inflated.add(i)
                return
        self.start(i + 1)

    @contextlib.contextmanager
    def opened(self, i):
        """Layer ``i``'s blob for apply_layer: its StartedLayer, or a file opened now."""
        with self._cond:
            while i in self._state and self._state[i] is None:
                self._cond.wait()
            taken = self._state.get(i, _TAKEN)
            self._state[i] = _TAKEN
            inflated = i in self._inflated
        if inflated:
            self.start(i + 1)
        if taken is _TAKEN:
            with self._layers[i].open() as f:
                yield f
        else:
            f, started, error = taken
            try:
                if error is not None:
                    raise error
                yield started
            finally:
                _discard(f, started)
        # the next one's start, if this one's stage did not start it (it was not started ahead)
        self.start(i + 1)

    def close(self):
        """Stop every stage started and not taken (idempotent)."""
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
