"""Exceptions raised by scrapy-checkpoint."""

from __future__ import annotations


class CheckpointError(Exception):
    """Base class of scrapy-checkpoint's errors."""


class CheckpointNotFound(CheckpointError):
    """CHECKPOINT_ID names a checkpoint the store does not hold."""


class CorruptCheckpointError(CheckpointError):
    """A stored record cannot be read or fails validation; it is never used silently."""

    def __init__(self, checkpoint_id: str, where: str, reason: str) -> None:
        self.checkpoint_id = checkpoint_id
        self.where = where
        self.reason = reason
        super().__init__(
            f"Checkpoint {checkpoint_id} in {where} is unreadable and will not be resumed: {reason}"
        )


class StoreUnavailable(CheckpointError):
    """A store could not be reached (connection refused, timeout)."""


class StoreLayoutError(CheckpointError):
    """A store holds data of a layout this version cannot read (another version of the package
    wrote it); it is refused at open, left as it is."""

    def __init__(self, where: str, found: object, layout: int, advice: str) -> None:
        self.where = where
        self.found = found
        self.layout = layout
        shown = found if isinstance(found, int) else repr(found)
        super().__init__(
            f"{where} holds checkpoints of another scrapy-checkpoint version (layout {shown}; this "
            f"one reads layout {layout}), left as they are. {advice}, or use the scrapy-checkpoint "
            "version that wrote them."
        )
