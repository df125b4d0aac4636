"""What a crawl keeps, exactly once across kills: feeds, and keys for item pipelines."""

from typing import Any

from .feeds import CheckpointFeedExporter
from .keys import item_key

__all__ = ["CheckpointFeedExporter", "item_key"]


def __getattr__(name: str) -> Any:
    # Imported on first use: it needs pymongo, an optional dependency.
    if name == "CheckpointMongoDBPipeline":
        from .mongodb import CheckpointMongoDBPipeline

        return CheckpointMongoDBPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
