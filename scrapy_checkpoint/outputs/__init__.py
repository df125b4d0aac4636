"""What a crawl keeps, exactly once across kills: feeds, and keys for item pipelines."""

from .feeds import CheckpointFeedExporter
from .keys import item_key

__all__ = ["CheckpointFeedExporter", "item_key"]
