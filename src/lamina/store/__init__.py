"""The image store: an OCI image layout with resumable verified ingest, named images,
layer snapshots shared by chainID, gc and fsck.  See store.py for the concurrency model."""
from .image import Image, chain_ids
from .paths import default_root
from .snapshots import SnapshotInfo
from .store import Store

__all__ = ["Image", "SnapshotInfo", "Store", "chain_ids", "default_root"]
