"""Which kernel interface `lamina mount` used, checked against what the machine offers.

Linux >= 6.8 with fsopen/fsconfig takes one `lowerdir+` per layer; without fsopen (old kernels,
seccomp, qemu-user, which answers ENOSYS) lamina falls back to mount(2), whose options fit in one
page.  These tests detect the missing syscall and then test the fallback itself, instead of
failing on a path the machine does not have.
"""
import os
import subprocess

import pytest

import ocibuild as ob
from conftest import fsopen_usable, require_root
from verbkit import load_layout

from lamina.errors import LaminaError
from lamina.store import Store
from lamina.store.mounts import mount, umount


def _kernel_at_least(major, minor):
    release = os.uname().release.split("-")[0].split(".")
    return tuple(int(x) for x in release[:2]) >= (major, minor)


@pytest.fixture
def store(tmp_path):
    require_root()
    lay = ob.Layout(tmp_path / "layout")
    lay.add(lay.image([{"base": b"base\n", "shared": b"base"}, {"top": b"top\n", "shared": b"top"}]), "two")
    layers = [{f"l{i:02d}": b"x", "shared": f"top is {i}".encode()} for i in range(70)]
    lay.add(lay.image(layers), "many")
    # A long store path: 70 snapshot paths then overflow mount(2)'s one page of options.
    store = Store(tmp_path / ("r" * 100) / "root")
    load_layout(store, lay.root, "two", "two")
    load_layout(store, lay.root, "many", "many")
    return store


def _expected_api():
    if not fsopen_usable():
        return "mount"
    return "fsconfig" if _kernel_at_least(6, 8) else "mount"


def test_mount_uses_the_interface_the_kernel_offers(store, tmp_path):
    mnt = tmp_path / "mnt"
    record = mount(store, "two", mnt)
    try:
        assert record["api"] == _expected_api()
        assert (mnt / "shared").read_bytes() == b"top" and sorted(os.listdir(mnt)) == ["base", "shared", "top"]
    finally:
        umount(store, mnt)
    assert not os.path.ismount(mnt)


def test_many_layers(store, tmp_path):
    """With fsconfig: 70 layers mount.  With mount(2) only: a clear error, nothing left mounted."""
    mnt = tmp_path / "mnt"
    if _expected_api() == "fsconfig":
        record = mount(store, "many", mnt)
        try:
            assert record["api"] == "fsconfig"
            assert (mnt / "shared").read_bytes() == b"top is 69" and len(os.listdir(mnt)) == 71
        finally:
            umount(store, mnt)
    else:
        with pytest.raises(LaminaError, match=r"more than mount\(2\) accepts"):
            mount(store, "many", mnt)
        assert not os.path.ismount(mnt)
        assert subprocess.run(["findmnt", str(mnt)], capture_output=True).returncode != 0
