"""Records that start with an object key, taken in any order and read back grouped by key, in
bounded memory (issue 14: peak RSS <= 64 MiB whatever the store holds).

``system df`` asks, of every object of the store, which images' snapshots use it.  A set of each
snapshot's 40-byte keys, their union per image and a Counter over all of them took ~75 B a key
several times over: 92 MiB for one image of 300k files.  Object keys start with a blake3, so they
are uniform: records go to one of 256 partitions by a key byte, held in memory while there are at
most ``held`` records in all, and past that appended to one unnamed temp file in chunks (each
partition keeps the offsets of its chunks).  Each partition is then read back alone and sorted;
one still over ``held`` records (a store of more than ~256 x held keys) is partitioned again on
the next key byte.  The small case, nothing spilled, is the same code with no file.
"""
from __future__ import annotations

import array
import os
import tempfile

FANOUT = 256   # partitions: one key byte


class KeyGroups:
    """``add_all(keys, payload)``, then ``groups()``: (key, set of payloads) of each distinct key,
    in key order.  Keys are ``key_bytes`` long, payloads ``payload_bytes``.  ``scratch_dir``: where
    the temp file goes (the store, on its disk: a temp dir may be a tmpfs, i.e. memory); the
    system's temp dir if it cannot be written there (a read-only store)."""

    # Records held in memory (LAMINA_DF_KEYS_HELD to change it; the tests force the spilled
    # path with a few): 2.9 MiB of 44-byte records, ~9 MiB while a partition of that many is sorted.
    HELD = 1 << 16

    def __init__(self, key_bytes, payload_bytes, scratch_dir=None, held=None, depth=0):
        self.key_bytes = key_bytes
        self.size = key_bytes + payload_bytes
        self.scratch_dir = scratch_dir
        self.held = max(1, held or int(os.environ.get("LAMINA_DF_KEYS_HELD") or self.HELD))
        self.depth = depth
        self.parts = [bytearray() for _ in range(FANOUT)]
        self.counts = [0] * FANOUT      # records of each partition, held and spilled
        self.buffered = 0               # records held in self.parts
        self.file = None                # the temp file, once spilled
        self.end = 0
        self.chunks = None              # per partition: array of (offset, length) of its chunks
        self.chunk = max(1, self.held // FANOUT) * self.size

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add_all(self, keys, payload):
        """One record (key + payload) for each key of ``keys``."""
        parts, counts, d = self.parts, self.counts, self.depth
        for key in keys:
            p = key[d]
            buf = parts[p]
            buf += key
            buf += payload
            counts[p] += 1
            self.buffered += 1
            if self.file is None:
                if self.buffered > self.held:
                    self._flush_all()
            elif len(buf) >= self.chunk:
                self._flush(p)

    def _add_records(self, data):
        """Records already made (a partition's, read back), into this finer partitioning."""
        size = self.size
        for i in range(0, len(data), size):
            self.add_all((data[i:i + self.key_bytes],), data[i + self.key_bytes:i + size])

    def _scratch(self):
        if self.scratch_dir is not None:
            try:
                return tempfile.TemporaryFile(dir=self.scratch_dir, buffering=0)
            except OSError:
                pass
        return tempfile.TemporaryFile(buffering=0)

    def _flush(self, p):
        buf = self.parts[p]
        if not buf:
            return
        if self.file is None:
            self.file = self._scratch()
            self.chunks = [array.array("q") for _ in range(FANOUT)]
        view = memoryview(buf)
        done = 0
        while done < len(buf):
            done += os.pwrite(self.file.fileno(), view[done:], self.end + done)
        view.release()
        self.chunks[p].extend((self.end, len(buf)))
        self.end += len(buf)
        self.buffered -= len(buf) // self.size
        self.parts[p] = bytearray()

    def _flush_all(self):
        for p in range(FANOUT):
            self._flush(p)
        if self.file is None:  # nothing held: the next record still finds a file to go to
            self.file = self._scratch()
            self.chunks = [array.array("q") for _ in range(FANOUT)]

    def _pieces(self, p):
        """The bytes of partition ``p``: its spilled chunks, then what is held of it."""
        if self.chunks is not None:
            offsets = self.chunks[p]
            for i in range(0, len(offsets), 2):
                data = os.pread(self.file.fileno(), offsets[i + 1], offsets[i])
                if len(data) != offsets[i + 1]:
                    raise OSError(f"temp file of object keys: short read at {offsets[i]}")
                yield data
        if self.parts[p]:
            yield bytes(self.parts[p])

    def groups(self):
        """(key, {payload, ...}) of each distinct key, in key order."""
        k = self.key_bytes
        for p in range(FANOUT):
            if self.counts[p] <= self.held:
                data = b"".join(self._pieces(p))
                self.parts[p] = bytearray()
                records = [data[i:i + self.size] for i in range(0, len(data), self.size)]
                del data
                records.sort()
                yield from _grouped(records, k)
                continue
            if self._one_key(p):
                # only copies of one key (files of an older snapshot's list sharing an object):
                # no key byte would split them, and their payloads are few (one per snapshot)
                key, payloads = None, set()
                for data in self._pieces(p):
                    key = data[:k]
                    payloads.update(data[i + k:i + self.size] for i in range(0, len(data), self.size))
                self.parts[p] = bytearray()
                yield key, payloads
                continue
            # too many for memory: partition it again on the next key byte, holding nothing here
            self._flush_all()
            with KeyGroups(k, self.size - k, self.scratch_dir, self.held, self.depth + 1) as finer:
                for data in self._pieces(p):
                    finer._add_records(data)
                yield from finer.groups()

    def _one_key(self, p):
        first = None
        for data in self._pieces(p):
            for i in range(0, len(data), self.size):
                key = data[i:i + self.key_bytes]
                if first is None:
                    first = key
                elif key != first:
                    return False
        return True


def _grouped(records, k):
    key, payloads = None, None
    for r in records:
        if r[:k] != key:
            if key is not None:
                yield key, payloads
            key, payloads = r[:k], set()
        payloads.add(r[k:])
    if key is not None:
        yield key, payloads
