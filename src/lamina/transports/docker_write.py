"""Writing ``docker save`` archives (what ``docker load`` and ``skopeo copy docker-archive:`` read).

Layout, as skopeo writes it:
    <diffID hex>.tar          each layer, uncompressed (its sha256 is the diffID; checked as written)
    <config hex>.json         the image config, byte for byte (so the image ID is kept)
    <v1 id>/{VERSION,json,layer.tar -> ../<diffID hex>.tar}   for pre-1.10 readers and `repositories`
    manifest.json             [{"Config", "RepoTags", "Layers"}]  (what docker load reads)
    repositories              {"nginx": {"latest": "<v1 id of the top layer>"}}
"""
from __future__ import annotations

import hashlib
import json

from .. import digest as _digest
from ..errors import layer_of
from .output import add_bytes, add_dir, add_stream, add_symlink, atomic_output, open_uncompressed, stream_tar


def _uncompressed(layer):
    return open_uncompressed(layer.open, f"layer {layer.digest}", layer.media_type)


def _tar_size(layer):
    if layer.tar_size is not None:
        return layer.tar_size
    n = 0
    with _uncompressed(layer) as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                return n
            n += len(chunk)


def _v1_ids(data):
    """Stable legacy layer IDs: the chain of diffIDs, and the config for the top one."""
    ids, parent = [], ""
    for i, layer in enumerate(data.layers):
        seed = f"{parent} {layer.diff_id}"
        if i == len(data.layers) - 1:
            seed += f" {data.config_digest}"
        parent = hashlib.sha256(seed.encode()).hexdigest()
        ids.append(parent)
    return ids


def write_archive(images, fileobj):
    """A docker-archive of [(ImageData, [Reference])] onto a binary stream."""
    with stream_tar(fileobj) as tar:
        manifest, repositories, written = [], {}, set()
        for data, refs in images:
            layer_names = []
            v1_ids = _v1_ids(data)
            for i, (layer, v1) in enumerate(zip(data.layers, v1_ids)):
                name = f"{_digest.hex_of(layer.diff_id)}.tar"
                if name not in written:
                    size = _tar_size(layer)
                    with _uncompressed(layer) as f:
                        add_stream(tar, name, size, f, layer.diff_id, f"{layer_of(i, len(data.layers))} "
                                                                     f"({layer.digest}, diffID {layer.diff_id})")
                    written.add(name)
                if v1 not in written:
                    add_dir(tar, f"{v1}/")
                    add_bytes(tar, f"{v1}/VERSION", b"1.0")
                    legacy = {"id": v1, "created": "1970-01-01T00:00:00Z"}
                    if i:
                        legacy["parent"] = v1_ids[i - 1]
                    add_bytes(tar, f"{v1}/json", json.dumps(legacy).encode())
                    add_symlink(tar, f"{v1}/layer.tar", f"../{name}")
                    written.add(v1)
                layer_names.append(name)
            config_name = f"{_digest.hex_of(data.config_digest)}.json"
            if config_name not in written:
                add_bytes(tar, config_name, data.config)
                written.add(config_name)
            tags = [r.familiar() for r in refs if r.tag and not r.digest]
            manifest.append({"Config": config_name, "RepoTags": tags or None, "Layers": layer_names})
            for r in refs:
                if r.tag and not r.digest and v1_ids:
                    repositories.setdefault(r.familiar_name, {})[r.tag] = v1_ids[-1]
        add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
        if repositories:
            add_bytes(tar, "repositories", json.dumps(repositories).encode())


def write_archive_file(images, path):
    with atomic_output(path) as f:
        write_archive(images, f)
