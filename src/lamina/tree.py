"""Removing a tree whatever a layer left in it.

Used by unpack (a failed staging dir), the store (snapshots, mounts) and
materialize.  The work is done by the native core: directory fds all the
way down, never following a symlink, read-only directories opened up as it
goes, iterative (any depth, two fds open).
"""
from ._extract import clear_dir, remove_tree

__all__ = ["clear_dir", "remove_tree"]
