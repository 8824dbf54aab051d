"""Waiting for the layers below.

Overlay-format layers extract all at once; one that meets an entry needing
the finished layers below it (a path through a lower symlink, a whiteout in a
directory the layer does not have, a hardlink to a lower file) waits for them
there (see ``lowers_provider`` in lamina._extract); an implied directory and a
whiteout in a directory of the layer's own do not (``early_dirs``).  unpack, the store's snapshots and
pull all start their layers bottom-up, so a layer only ever waits for ones
that are running or done.
"""
from __future__ import annotations

import threading

from .errors import Cancelled, Interrupted, layer_of


class LayersBelow:
    """``finished(i, ok)`` as each of ``n`` layers ends (whether or not it worked);
    ``wait(i)`` blocks until every layer below ``i`` has ended and says whether all
    of them worked.  Ctrl-C (or ``cancel``, an Event) stops the wait.

    ``tree(i, fs)``: layer ``i``'s tree is final (extracted, blob and diffID verified) in
    ``fs``, though not committed yet (its dedup pass, sync and rename are still to come);
    ``wait_trees(i)`` blocks until every layer below ``i`` is that far (or has ended), and
    ``tree_of(j)`` is that dir, or None once it ended or if it never said."""

    def __init__(self, n, cancel=None):
        self._done = [threading.Event() for _ in range(n)]
        self._tree = [threading.Event() for _ in range(n)]
        self._trees = [None] * n
        self._failed = set()
        self._cancel = cancel

    def tree(self, i, fs):
        self._trees[i] = fs
        self._tree[i].set()

    def tree_of(self, j):
        return None if self._done[j].is_set() else self._trees[j]

    def finished(self, i, ok=True):
        if not ok:
            self._failed.add(i)
        self._done[i].set()
        self._tree[i].set()

    def wait(self, i):
        return self._wait(i, self._done)

    def wait_trees(self, i):
        return self._wait(i, self._tree)

    def final_trees(self, i, chains):
        """A ``wait_lowers`` for layer ``i`` (see snapshots.ensure) that goes on over the layers
        below once their trees are final, not committed: False if one of them failed, else
        ``[(chainID, tree dir or None)]`` bottom first (``chains``: every layer's chainID)."""
        if not self.wait_trees(i):
            return False
        return [(chains[j], self.tree_of(j)) for j in range(i)]

    def _wait(self, i, events):
        from ._extract import cancelled
        for j in range(i):
            while not events[j].wait(0.2):
                if cancelled.is_set():
                    raise Interrupted(f"{layer_of(i, len(self._done))}: interrupted while waiting for the layers below")
                if self._cancel is not None and self._cancel.is_set():
                    raise Cancelled(f"{layer_of(i, len(self._done))}: stopped, another layer failed")
        return not any(j < i for j in self._failed)
