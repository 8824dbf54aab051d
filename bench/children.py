"""Running benchmark children: wall time, CPU and peak RSS of a command, a scratch tmpfs for
destinations.  Used by bench/pull.py (lamina bench measures unpacking in-process; a pull is
timed as the child processes a user runs)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time


class ChildError(Exception):
    pass


GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run_child(argv, cwd=None):
    """Run argv; return (wall seconds, peak RSS KiB, cpu seconds, stdout).

    Output goes to temp files (not pipes) so that we can reap the child
    ourselves with os.wait4 and get its rusage, which on Linux also covers the
    children it waited for (e.g. tar's gzip).  ru_maxrss of a child forked from
    this Python process would never read below this process's own RSS (the
    kernel counts the pre-exec memory), so when GNU time exists the command runs
    under `/usr/bin/time -f %M`, a small process whose floor is ~2 MB, and its
    figure is the one reported.
    """
    argv = [str(a) for a in argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix="lamina-rss-") as rssf:
        full = [GNU_TIME, "-f", "%M", "-o", rssf.name, "--"] + argv if GNU_TIME else argv
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        rss = ru.ru_maxrss
        if GNU_TIME:
            try:
                with open(rssf.name) as f:
                    rss = int(f.read().strip().splitlines()[-1])
            except (ValueError, IndexError, OSError):
                pass
    if proc.returncode != 0:
        cmd = " ".join(a if len(a) < 80 else a[:40] + "..." for a in argv)
        tail = "\n".join(stderr.strip().splitlines()[-5:]) or stdout.strip()[-500:]
        raise ChildError(f"exited {proc.returncode}: {tail}  [command: {cmd}]")
    return wall, rss, ru.ru_utime + ru.ru_stime, stdout


def lamina_cli():
    """The lamina console script of this interpreter (not a pyenv/asdf shim, which adds ~0.1 s of
    bash per call), else ``python -m lamina``."""
    exe = os.path.join(os.path.dirname(sys.executable), "lamina")
    if os.access(exe, os.X_OK):
        return [exe]
    return [sys.executable, "-m", "lamina"]


class Scratch:
    """A fresh tmpfs mounted on a temp dir (root), else a dir under /dev/shm."""

    def __init__(self, where=None, size="12g"):
        self.where, self.size, self.mounted, self.path = where, size, False, None

    def __enter__(self):
        if self.where:
            os.makedirs(self.where, exist_ok=True)
            self.path = tempfile.mkdtemp(prefix="lamina-cmp-", dir=self.where)
            return self
        self.path = tempfile.mkdtemp(prefix="lamina-cmp-")
        if os.geteuid() == 0:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "lamina-bench",
                                self.path], capture_output=True, text=True)
            if r.returncode == 0:
                self.mounted = True
                return self
            print(f"compare: cannot mount tmpfs ({r.stderr.strip()}); using /dev/shm", file=sys.stderr)
        os.rmdir(self.path)
        self.path = tempfile.mkdtemp(prefix="lamina-cmp-", dir="/dev/shm")
        return self

    def __exit__(self, *exc):
        if self.mounted:
            subprocess.run(["umount", self.path], check=False)
        shutil.rmtree(self.path, ignore_errors=True)


def clean(path):
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)
    # lamina's staging siblings, if a run died half way
    parent, base = os.path.split(path)
    for name in os.listdir(parent):
        if name.startswith(base + ".lamina-tmp"):
            subprocess.run(["rm", "-rf", "--one-file-system", os.path.join(parent, name)], check=False)

