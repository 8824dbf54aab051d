"""The common entry path releases the GIL for its syscalls (issue 14).

Several layers extract in parallel threads beside a Python reader thread, so an
extractor that holds the GIL through each entry's openat/mkdirat/symlinkat/
futimens/close stalls all of them.  Payload writes always released it; this
checks the entries that write no payload (empty files, directories, symlinks),
which the old extractor created with the GIL held from start to end.

How it is observed, without timing: the switch interval is made so long that
the interpreter never forces a switch, so a second thread only runs when the
extracting thread gives the GIL up by itself.  The old code never did during
feed() for such entries, so the second thread's counter could not move at all;
the new one lets go once per entry, and the second thread, waiting on the GIL,
gets it on some of those thousands of chances.
"""
import functools
import sys
import tarfile
import threading
import time

from lamina._extract import Extractor
from tarbuild import tarfile_bytes, ti

ENTRIES = 3000  # directories, each with an empty file and a symlink: 9000 entries


@functools.lru_cache(maxsize=1)  # both tests read the same bytes: built once
def _layer():
    members = []
    for i in range(ENTRIES):
        d = f"d{i:05d}"
        members.append((ti(d, tarfile.DIRTYPE, mode=0o755), None))
        members.append((ti(f"{d}/empty", mode=0o644), b""))
        members.append((ti(f"{d}/link", tarfile.SYMTYPE, linkname="empty"), None))
    return tarfile_bytes(members, fmt=tarfile.USTAR_FORMAT)


def _runs_beside(fn):
    """How many times a pure-Python thread ran while ``fn()`` ran in this thread."""
    count = 0
    stop = False

    def spin():
        nonlocal count
        while not stop:
            count += 1
            time.sleep(0.001)  # gives the GIL up long enough for the main thread to take it back

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)  # no forced switch: only a voluntary release lets spin() run
    t = threading.Thread(target=spin, daemon=True)
    try:
        t.start()
        while count == 0:
            time.sleep(0.001)
        before = count
        fn()
        during = count - before
    finally:
        stop = True
        t.join()
        sys.setswitchinterval(old)
    return during


def test_entries_without_payload_release_the_gil(tmp_path):
    data = _layer()
    root = tmp_path / "root"
    root.mkdir()
    ex = Extractor(str(root))
    try:
        during = _runs_beside(lambda: ex.feed(data))
        stats = ex.finish()
    finally:
        ex.close()
    assert stats["entries"] == 3 * ENTRIES
    assert (root / "d00007" / "link").readlink().as_posix() == "empty"
    assert during > 0, "another thread never ran while 9000 entries were created: their syscalls held the GIL"


def test_entries_without_payload_are_counted_as_gil_free(tmp_path):
    """The stat lamina bench shows: entries whose syscalls all ran in one block without the GIL."""
    root = tmp_path / "root"
    root.mkdir()
    ex = Extractor(str(root))
    try:
        ex.feed(_layer())
        stats = ex.finish()
    finally:
        ex.close()
    assert stats["nogil_entries"] == 3 * ENTRIES
