"""What a source resolves to: an image's config and its layers, ready to apply."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from ..platform import Platform


@dataclass
class LayerRef:
    """One layer of a resolved image, bottom first.

    ``digest`` is the blob digest when the source knows it (OCI layouts,
    newer docker save); legacy docker-archive layers are only known by their
    ``diff_id``, which apply_layer verifies.  ``progress``: apply_layer's, for a
    source that shows how far each layer's extraction is (a registry's pull display).
    """
    index: int
    diff_id: str
    digest: Optional[str]
    size: Optional[int]
    media_type: Optional[str]
    _opener: Callable = field(repr=False)
    progress: Optional[Callable] = field(default=None, repr=False, compare=False)

    def open(self):
        """A fresh binary file object of the layer blob (independent of other opens)."""
        return self._opener()


@dataclass
class ResolvedImage:
    config: dict
    config_digest: str
    layers: list
    manifest_digest: str = ""          # "" for legacy docker-archive (no manifest blob)
    manifest: Optional[dict] = None
    platform: Optional[Platform] = None
    ref: Optional[str] = None

    @property
    def diff_ids(self):
        return [layer.diff_id for layer in self.layers]


class Source:
    """An image source (layout directory, archive). Use as a context manager."""

    description = "?"

    def resolve(self, platform=None):
        """Pick the image for ``platform`` (a Platform, a string, or None for the host)."""
        raise NotImplementedError

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
