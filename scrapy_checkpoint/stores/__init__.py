"""Checkpoint stores. Only the embedded one is imported here: Redis and MongoDB are optional."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import CheckpointStore
from .sqlite import SQLiteCheckpointStore

if TYPE_CHECKING:
    from ..settings import CheckpointSettings

__all__ = ["CheckpointStore", "SQLiteCheckpointStore", "store_class"]


def store_class(settings: CheckpointSettings) -> type[CheckpointStore]:
    """The store the settings ask for: Redis, MongoDB, both, or the embedded default."""
    if settings.redis_url and settings.mongo_uri:
        from .hybrid import HybridCheckpointStore

        return HybridCheckpointStore
    if settings.redis_url:
        from .redis import RedisCheckpointStore

        return RedisCheckpointStore
    if settings.mongo_uri:
        from .mongodb import MongoDBCheckpointStore

        return MongoDBCheckpointStore
    return SQLiteCheckpointStore
