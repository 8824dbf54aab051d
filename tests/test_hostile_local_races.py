"""Another local user racing lamina in a directory that user can write.

An image's directory of mode 0777 is writable by every local user once its layer's fixups set
that mode, so while the layers above it are written over it (the dir format: one tree for all
layers) anybody may swap an entry lamina has just made for a symlink.  A call that acts on an
entry by its name and follows a symlink there (fchmodat(2) without AT_SYMLINK_NOFOLLOW) then
changes a file of the host.  strace holds the call back, so that the swap lands in the window
every time rather than once in a million runs.

Only the dir format has such a window: an overlay layer, a store snapshot and a flatten make
their directories 0700 (at most 0755) until their entries are written (see extract.pyx's
_mkdir and flatten.pyx's _dir), which test_every_path.py's trees show as they end.
"""
from __future__ import annotations

import glob
import os
import signal
import stat
import subprocess
import time

from conftest import require_tool
from everypath import write_image
from storekit import LAMINA
from tarbuild import Tar


def _swap_when_made(pattern, victim, proc, deadline=60):
    """Once ``pattern`` names a FIFO, put a symlink to ``victim`` in its place (as a local user
    could in a 0777 directory); True if it did before ``proc`` ended."""
    end = time.monotonic() + deadline
    while proc.poll() is None and time.monotonic() < end:
        for p in glob.glob(pattern):
            try:
                if stat.S_ISFIFO(os.lstat(p).st_mode):
                    os.unlink(p)
                    os.symlink(victim, p)
                    return True
            except FileNotFoundError:
                pass
        time.sleep(0.001)
    return False


def test_a_node_swapped_for_a_symlink_before_its_chmod_leaves_the_host_file_alone(tmp_path):
    """The dir format made a FIFO or device node with mknodat, then set its mode with
    fchmodat(pfd, name, mode, 0), which follows a symlink: in a 0777 directory of a lower
    layer, a user who swapped the node for a link to /etc/shadow between the two had lamina
    (root) chmod /etc/shadow to the node's mode (here 0666)."""
    require_tool("strace")
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    victim.chmod(0o600)
    layout = write_image(tmp_path / "img", [Tar().dir("pub", mode=0o777).bytes(),
                                            Tar().fifo("pub/p", mode=0o666).bytes()])
    dest = tmp_path / "dest"
    proc = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fchmodat",
                             "-e", "inject=fchmodat:delay_enter=300000", "--",
                             *LAMINA, "unpack", f"oci:{layout}:img", str(dest)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        swapped = _swap_when_made(f"{dest}.lamina-tmp-*/pub/p", victim, proc)
    finally:
        _, err = proc.communicate(timeout=120)
    assert swapped, f"the FIFO was never seen: {err}"
    # the chmod, held back, reaches the FIFO lamina made (pinned before the swap), never the link
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600, "lamina chmod'ed the host file through the symlink"
    assert proc.returncode == 0, err

