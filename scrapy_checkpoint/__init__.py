"""Crash-safe checkpoint and resume for Scrapy crawls."""

from typing import Any

from .addon import Addon
from .exceptions import CheckpointError, CheckpointNotFound, CorruptCheckpointError, StoreUnavailable
from .extension import CheckpointExtension, SpiderCheckpoint
from .middlewares import CheckpointDownloaderMiddleware, CheckpointSpiderMiddleware
from .models import Checkpoint, CheckpointStatus, ExtractionResults, PipelineData
from .outputs import CheckpointFeedExporter, item_key
from .pipelines import CheckpointItemPipeline
from .stores import CheckpointStore, SQLiteCheckpointStore

__all__ = [
    "Addon",
    "Checkpoint",
    "CheckpointDownloaderMiddleware",
    "CheckpointError",
    "CheckpointExtension",
    "CheckpointFeedExporter",
    "CheckpointItemPipeline",
    "CheckpointNotFound",
    "CheckpointSpiderMiddleware",
    "CheckpointStatus",
    "CheckpointStore",
    "CorruptCheckpointError",
    "ExtractionResults",
    "PipelineData",
    "SQLiteCheckpointStore",
    "SpiderCheckpoint",
    "StoreUnavailable",
    "item_key",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: it needs pymongo, an optional dependency.
    if name == "CheckpointMongoDBPipeline":
        from .outputs.mongodb import CheckpointMongoDBPipeline

        return CheckpointMongoDBPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
