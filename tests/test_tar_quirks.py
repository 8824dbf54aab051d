"""Header quirks of other writers and readers, through every path (everypath.py) and
against GNU tar and bsdtar (tarvectors.extract_with): fields a format does not have (a v7
header's device numbers), star's shorter name prefix, a checksum in base-256, and the
type flags bsdtar reads otherwise than GNU tar (Solaris ACL 'A', multivolume 'M').
What lamina chose where the readers disagree is in CONFORMANCE.md.
"""
from __future__ import annotations

import pytest

from layerkit import write
from tarbuild import Tar, header, pad
from tarvectors import extract_with, sparse_old_gnu
from test_hostile_more import agree, refused_everywhere
from treecmp import compare, snapshot


def _with_checksum(blk):
    blk = bytearray(blk)
    blk[148:156] = b" " * 8
    blk[148:156] = b"%06o\0 " % sum(blk)
    return bytes(blk)


def as_references(g, layer):
    """lamina's tree on every path, which must be GNU tar's and bsdtar's."""
    raw = layer if isinstance(layer, bytes) else layer.bytes()
    tree, _ = agree(g, [raw], umoci=False)
    tarpath = write(g.dest / "ref.tar", raw)
    for tool in ("gnu", "bsd"):
        extract_with(tool, tarpath, g.dest / tool)
        diff = compare(snapshot(g.dest / tool), tree, labels=(tool, "lamina"))
        assert not diff, diff
    return tree


def references_refuse(g, raw):
    """GNU tar and bsdtar both fail on ``raw``."""
    tarpath = write(g.dest / "ref.tar", raw)
    for tool in ("gnu", "bsd"):
        rc, err = extract_with(tool, tarpath, g.dest / tool, check=False)
        assert rc != 0, f"{tool} read it: {err}"


class Raw:
    """Prebuilt bytes where refused_everywhere wants a Tar."""

    def __init__(self, data):
        self.data = data

    def bytes(self):
        return self.data


def test_a_header_checksum_in_base256_is_refused(g):
    """GNU tar, bsdtar and Go read the checksum field in octal only and refuse the archive;
    lamina read it as a number like any other field and extracted the entry."""
    blk = bytearray(header("f", size=1))
    blk[148:156] = b" " * 8
    blk[148:156] = b"\x80" + sum(blk).to_bytes(7, "big")
    raw = bytes(blk) + pad(b"x") + bytes(1024)
    references_refuse(g, raw)
    refused_everywhere(g, [Raw(raw)], "InvalidArchiveError", "checksum in base-256")