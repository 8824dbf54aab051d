"""Reading images from OCI image layouts and docker/OCI archives."""
from .image import LayerRef, ResolvedImage, Source
from .source import open_source, parse_source

__all__ = ["LayerRef", "ResolvedImage", "Source", "open_source", "parse_source"]
