"""Feeds exactly once: Scrapy's FEEDS written in step with the checkpoint.

A page's items reach a feed only once the page is processed, and every flush saves each
feed's length with the processed marks it matches. A resume cuts each file back to that
length and carries on with the exporter's state (no second ``[``, CSV header or
``<items>``): the items of pages that were not saved as processed are written again by the
pages themselves, and nothing else is.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from scrapy import signals
from scrapy.extensions.feedexport import (
    BlockingFeedStorage,
    FeedExporter,
    FeedSlot,
    FileFeedStorage,
    apply_uri_params,
)
from scrapy.utils.defer import ensure_awaitable

from .._redact import redact_uri
from ..exceptions import CheckpointError
from ..settings import checkpoints_on

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: Exporter attributes that carry over from one item to the next (JsonItemExporter's comma,
#: CsvItemExporter's header and columns): saved with the length, set again on resume.
EXPORTER_STATE = ("first_item", "_headers_not_written", "fields_to_export")
#: Bytes before a feed's saved length that a resume compares, to tell another file.
TAIL_BYTES = 32


def _tail(path: Path, length: int) -> str:
    """Hex of the last TAIL_BYTES bytes before *length*; the data is made durable first, so
    that a saved length never runs past what a power cut leaves on disk."""
    if length <= 0:
        return ""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        start = max(0, length - TAIL_BYTES)
        return os.pread(fd, length - start, start).hex()
    finally:
        os.close(fd)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode_fields(fields: Any) -> Any:
    """fields_to_export as JSON: a mapping keeps its order as pairs (its keys may be
    anything a field name can be, dots included, which MongoDB keys cannot)."""
    if fields is None or isinstance(fields, (list, tuple)):
        return None if fields is None else list(fields)
    if hasattr(fields, "items"):
        return {"pairs": [[k, v] for k, v in fields.items()]}
    return list(fields)


def _decode_fields(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v for k, v in value["pairs"]}
    return value


class _FeedFile:
    """What a FeedSlot writes to while the checkpoint runs (its ``storage``): the user's
    local file, or for a storage that uploads at close, a file of the checkpoint's own,
    delivered when the checkpoint completes.

    *length* is where the file starts for this checkpoint: what was there before (``-o``
    appends) or 0 (``-O``, and every new batch file, which is written from empty).
    """

    def __init__(self, path: Path, length: int, fresh: bool) -> None:
        self.path = path
        self.base = length
        self.fresh = fresh
        self.file: IO[bytes] | None = None

    def open(self, spider: Spider | None = None) -> IO[bytes]:
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Appending: after a resume cut the file back, writes go on from there.
            self.file = self.path.open("wb" if self.fresh else "ab")
        return self.file

    def store(self, file: IO[bytes]) -> None:
        file.close()

    def length(self) -> int:
        if self.file is None:
            return self.base
        self.file.flush()
        return self.file.tell()


@dataclass
class _Feed:
    """One FEEDS entry under the checkpoint."""

    template: str
    options: dict[str, Any]
    #: "file" (a local path), "held" (delivered at completion) or "plain" (neither can be
    #: cut back: written as pages complete, at least once).
    kind: str
    slot: FeedSlot
    target: _FeedFile | None = None
    #: Held batch files complete and waiting for delivery: [uri (redacted), path, items].
    finished: list[list[Any]] = field(default_factory=list)
    #: Batch files completed since the last state: made durable with it.
    unsynced: list[str] = field(default_factory=list)

    def _take_unsynced(self) -> list[str]:
        paths, self.unsynced = self.unsynced, []
        return paths

    def state(self) -> dict[str, Any]:
        slot, target = self.slot, self.target
        assert target is not None
        exporter = {}
        if slot.exporter is not None:
            exporter = {name: getattr(slot.exporter, name) for name in EXPORTER_STATE
                        if hasattr(slot.exporter, name)}
            if "fields_to_export" in exporter:
                exporter["fields_to_export"] = _encode_fields(exporter["fields_to_export"])
        return {
            "feed": redact_uri(self.template),
            "uri": redact_uri(slot.uri),
            "batch_id": slot.batch_id,
            "items": slot.itemcount,
            "path": str(target.path),
            "length": target.length(),
            "started": slot._exporting,
            "exporter": exporter,
            "tail": "",
            "finished": [list(entry) for entry in self.finished],
            # Not saved: sync() takes it out before the batch is applied.
            "sync": self._take_unsynced(),
        }


class CheckpointFeedExporter(FeedExporter):
    """Scrapy's feed exports (``FEEDS``, ``-o``, ``-O``), exactly once across kills.

    The add-on puts it in place of Scrapy's ``FeedExporter``. For a crawl without
    checkpoints it is Scrapy's own exporter; with them, the checkpoint extension drives it:
    items arrive when their page is processed, each flush saves every feed's length, and a
    resume cuts each feed back to it.

    - Local files, every format: exactly once. ``-O`` empties the file when a new
      checkpoint starts, never on a resume. Batch feeds continue their numbering.
    - Storages that upload at close (S3, GCS, FTP, any ``BlockingFeedStorage``): the export
      accumulates in ``CHECKPOINT_DIR/feeds/<checkpoint id>/`` and is delivered once, when
      the checkpoint completes.
    - Standard output, custom storages and ``postprocessing`` feeds cannot be cut back:
      they get a page's items once it is processed, and again if it is redone.
    """

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CheckpointFeedExporter:
        exporter = cls(crawler)
        crawler.signals.connect(exporter.spider_opened, signals.spider_opened)
        return exporter

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        #: Whether the checkpoint extension will drive this exporter (same rule as its own).
        self.driven = checkpoints_on(crawler)
        self._feeds: dict[str, _Feed] = {}
        self._directory: Path | None = None
        self._state: list[dict[str, Any]] | None = None
        self._changed = True
        self._closed = False
        self._kinds: dict[str, str] = {}

    # Without checkpoints: Scrapy's exporter as it is.

    def spider_opened(self, spider: Spider) -> None:
        if self.driven:
            from ..extension import CheckpointExtension  # the extension imports this module

            if self.crawler.get_extension(CheckpointExtension) is not None:
                return
            logger.warning(
                "Checkpoints are on but CheckpointExtension is not in EXTENSIONS: feeds are "
                "written as Scrapy writes them, not exactly once."
            )
            self.driven = False
        self.open_spider(spider)
        self.crawler.signals.connect(self.item_scraped, signals.item_scraped)
        self.crawler.signals.connect(self.close_spider, signals.spider_closed)

    # With checkpoints: what the extension calls.

    def initial_state(self, spider: Spider, checkpoint_id: str, directory: Path) -> list[dict[str, Any]]:
        """Open every feed for a new checkpoint; return the state to create it with."""
        self._directory = directory / "feeds" / checkpoint_id
        for template, options in self.feeds.items():
            self._new_feed(spider, template, options)
        state = self.snapshot() or []
        self.sync(state)
        return state

    def resume(self, spider: Spider, checkpoint_id: str, directory: Path, saved: list[dict[str, Any]]) -> None:
        """Reopen every feed where the checkpoint left it; CheckpointError (nothing changed
        on disk) when a feed is not as the checkpoint saved it."""
        self._directory = directory / "feeds" / checkpoint_id
        by_feed = {entry["feed"]: entry for entry in saved}
        # Check every feed before cutting any.
        plans = []
        for template, options in self.feeds.items():
            entry = by_feed.pop(redact_uri(template), None)
            if entry is not None and self._kind(template, options) != "plain":
                plans.append((template, options, entry, self._check(entry)))
            else:
                plans.append((template, options, None, None))
        for entry in by_feed.values():
            logger.warning(
                "Feed %(feed)s of checkpoint %(id)s is no longer in FEEDS: left as it is "
                "(%(path)s, %(items)d items in its last batch)",
                {"feed": entry["feed"], "id": checkpoint_id, "path": entry["path"], "items": entry["items"]},
            )
        for template, options, entry, size in plans:
            if entry is None:
                if self._kind(template, options) != "plain":
                    logger.warning(
                        "Feed %(feed)s is new since checkpoint %(id)s last ran: it gets the items "
                        "of pages processed from now on only",
                        {"feed": redact_uri(template), "id": checkpoint_id},
                    )
                # Appended to even with -O: a resume never empties a file.
                self._new_feed(spider, template, options, resuming=True)
            else:
                self._reopen(spider, template, options, entry, size)
        self._changed = True

    def export(self, items: Any) -> None:
        """Write *items*, the scraped items of one processed page, to every feed."""
        spider = self.crawler.spider
        for item in items:
            FeedExporter.item_scraped(self, item, spider)
        self._changed = True

    def snapshot(self) -> list[dict[str, Any]] | None:
        """Every feed's state now, to save with the processed marks it matches; None once
        closing has begun (what close() writes is never part of a saved length)."""
        if self._closed:
            return None
        if self._changed:
            self._state = [feed.state() for feed in self._feeds.values() if feed.kind != "plain"]
            self._changed = False
        return self._state

    @staticmethod
    def sync(state: list[dict[str, Any]] | None) -> None:
        """Make *state*'s feeds durable up to their lengths and note their tails (in a
        worker thread, before the batch that carries *state* is applied)."""
        for entry in state or ():
            for path in entry.pop("sync", ()):
                _fsync(path)
            if not entry["tail"]:
                entry["tail"] = _tail(Path(entry["path"]), entry["length"])

    async def close(self, completed: bool) -> bool:
        """Close every feed; deliver held ones if *completed*. False when a delivery failed
        (the export stays held, and a resume of the checkpoint delivers it)."""
        self._closed = True
        spider = self.crawler.spider
        delivered = True
        for feed in self._feeds.values():
            if feed.kind == "plain":
                await self._close_slot(feed.slot, spider)
                continue
            self._finish(feed, completed)
            if feed.kind == "held" and completed:
                delivered = await self._deliver(feed) and delivered
        for closing in tuple(self._pending_close_tasks):
            await ensure_awaitable(closing)
        await self.crawler.signals.send_catch_log_async(signals.feed_exporter_closed)
        return delivered

    def discard_held(self) -> None:
        """Remove the held exports of a completed checkpoint: they are delivered."""
        if self._directory is None or not self._directory.exists():
            return
        for path in self._directory.iterdir():
            path.unlink()
        self._directory.rmdir()

    # Feeds

    def _kind(self, template: str, options: dict[str, Any]) -> str:
        kind = self._kinds.get(template)
        if kind is None:
            storage = self.storages.get(urlsplit(template).scheme, self.storages["file"])
            if "postprocessing" in options:
                kind = "plain"
            elif storage is FileFeedStorage:
                kind = "file"
            elif issubclass(storage, BlockingFeedStorage):
                kind = "held"
            else:
                kind = "plain"
            self._kinds[template] = kind
        return kind

    def _held_path(self, template: str, batch_id: int) -> Path:
        assert self._directory is not None
        name = hashlib.sha1(template.encode()).hexdigest()[:12]
        return self._directory / f"{name}-{batch_id}"

    def _new_feed(self, spider: Spider, template: str, options: dict[str, Any], resuming: bool = False) -> None:
        uri = apply_uri_params(template, self._get_uri_params(spider, options["uri_params"]))
        kind = self._kind(template, options)
        if kind == "plain":
            logger.warning(
                "Feed %(feed)s cannot be cut back after a kill (%(why)s): it gets each page's "
                "items once the page is processed, and again if a kill makes the page run twice",
                {"feed": redact_uri(template),
                 "why": "postprocessing" if "postprocessing" in options else "its storage "
                 "cannot be cut back"},
            )
        self._feeds[template] = _Feed(template, options, kind, self._slot(1, uri, options, spider, template))
        if kind == "file":
            fresh = self._batched(options) or (bool(options.get("overwrite")) and not resuming)
            target = self._file_target(uri, options, fresh=fresh)
        elif kind == "held":
            target = _FeedFile(self._held_path(template, 1), 0, fresh=True)
        else:
            return
        self._attach(template, target)

    def _file_target(self, uri: str, options: dict[str, Any], fresh: bool, open_now: bool = True) -> _FeedFile:
        storage = self._get_storage(uri, options)
        assert isinstance(storage, FileFeedStorage)
        path = Path(storage.path)
        try:
            if fresh:
                target = _FeedFile(path, 0, fresh=True)
            else:
                target = _FeedFile(path, path.stat().st_size if path.exists() else 0, fresh=False)
            if open_now:
                target.open()
        except OSError as exc:
            raise CheckpointError(f"Feed {path} cannot be opened for writing: {exc}") from exc
        return target

    @staticmethod
    def _batched(options: dict[str, Any]) -> bool:
        return bool(options.get("batch_item_count"))

    def _attach(self, template: str, target: _FeedFile) -> None:
        feed = self._feeds[template]
        feed.target = target
        feed.slot.storage = target

    def _slot(self, batch_id: int, uri: str, options: dict[str, Any], spider: Spider, template: str) -> FeedSlot:
        slot = FeedExporter._start_new_batch(self, batch_id, uri, options, spider, template)
        self.slots.append(slot)
        return slot

    def _start_new_batch(self, batch_id: int, uri: str, feed_options: dict[str, Any], spider: Spider,
                         uri_template: str) -> FeedSlot:
        # Called by FeedExporter.item_scraped when a batch is full (FEED_EXPORT_BATCH_ITEM_COUNT).
        slot = super()._start_new_batch(batch_id, uri, feed_options, spider, uri_template)
        feed = self._feeds.get(uri_template)
        if not self.driven or feed is None or feed.kind == "plain":
            if feed is not None:
                feed.slot = slot
            return slot
        feed.slot = slot
        if feed.kind == "file":
            # Opened with its first item, as Scrapy does: a batch that gets none leaves no file.
            self._attach(uri_template, self._file_target(uri, feed_options, fresh=True, open_now=False))
        else:
            self._attach(uri_template, _FeedFile(self._held_path(uri_template, batch_id), 0, fresh=True))
        return slot

    def _schedule_slot_close(self, slot: FeedSlot, spider: Spider) -> Any:
        feed = self._feeds.get(slot.uri_template)
        if not self.driven or feed is None or feed.kind == "plain":
            return super()._schedule_slot_close(slot, spider)
        # A full batch: finished now, so that the next snapshot describes the new one only.
        slot.finish_exporting()
        file = slot.storage.file  # type: ignore[attr-defined]
        if feed.kind == "held":
            feed.finished.append([redact_uri(slot.uri), str(slot.storage.path), slot.itemcount])  # type: ignore[attr-defined]
        if file is not None:
            file.close()
            feed.unsynced.append(str(slot.storage.path))  # type: ignore[attr-defined]
        return None

    def _finish(self, feed: _Feed, completed: bool) -> None:
        slot, target = feed.slot, feed.target
        assert target is not None
        # An empty feed is written as Scrapy writes it (FEED_STORE_EMPTY), except a held one
        # that will not be delivered yet.
        empty = slot.store_empty and slot.batch_id == 1 and (completed or feed.kind == "file")
        if slot.itemcount or slot._exporting or empty:
            slot.start_exporting()
            slot.finish_exporting()
        if target.file is not None:
            target.file.close()

    async def _deliver(self, feed: _Feed) -> bool:
        slot = feed.slot
        batches = list(feed.finished)
        if slot.itemcount or (slot.store_empty and slot.batch_id == 1):
            batches.append([redact_uri(slot.uri), str(feed.target.path), slot.itemcount])  # type: ignore[union-attr]
        for uri, path, items in batches:
            real_uri = _unredact(uri, feed.template)
            storage = self._get_storage(real_uri, feed.options)
            message = f"{slot.format} feed ({items} items) in: {uri}"
            try:
                with open(path, "rb") as file:
                    await ensure_awaitable(storage.store(file))
            except Exception as exc:
                logger.error("Error delivering %(message)s: %(error)s; the export stays in %(path)s and "
                             "a resume of the checkpoint delivers it",
                             {"message": message, "error": f"{type(exc).__name__}: {redact_uri(str(exc))}",
                              "path": path})
                self.crawler.stats.inc_value(f"feedexport/failed_count/{type(storage).__name__}")
                return False
            logger.info("Stored %s", message)
            self.crawler.stats.inc_value(f"feedexport/success_count/{type(storage).__name__}")
        return True

    # Resuming

    def _check(self, entry: dict[str, Any]) -> int:
        """The size of the feed's file; CheckpointError if it is not the file the checkpoint
        wrote (shorter than its saved length, or other bytes before it)."""
        path, length = Path(entry["path"]), entry["length"]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            # Never opened (a held feed or a batch before its first item): nothing to check.
            size = 0 if length == 0 else -1
        if size < length:
            found = "is missing" if size < 0 else f"has {size} bytes"
            raise CheckpointError(
                f"Feed {entry['feed']}: {path} {found}, but the checkpoint saved it at {length} "
                f"bytes: it was changed since. Nothing was cut or appended; put the file back, "
                f"or start a new checkpoint (drop CHECKPOINT_RESUME)."
            )
        if entry["tail"] and _tail(path, length) != entry["tail"]:
            raise CheckpointError(
                f"Feed {entry['feed']}: the first {length} bytes of {path} are not those the "
                f"checkpoint saved (it was replaced or rewritten). Nothing was cut or appended; "
                f"put the file back, or start a new checkpoint (drop CHECKPOINT_RESUME)."
            )
        return size

    def _reopen(self, spider: Spider, template: str, options: dict[str, Any], entry: dict[str, Any],
                size: int) -> None:
        path, length = Path(entry["path"]), entry["length"]
        if size > length:
            os.truncate(path, length)
            logger.info("Feed %(feed)s: %(path)s cut back from %(size)d to %(length)d bytes, where "
                        "checkpoint saved it", {"feed": entry["feed"], "path": path, "size": size,
                                                "length": length})
        uri = _unredact(entry["uri"], template)
        slot = self._slot(entry["batch_id"], uri, options, spider, template)
        self._feeds[template] = _Feed(template, options, self._kind(template, options), slot,
                                      finished=[list(e) for e in entry["finished"]])
        target = _FeedFile(path, length, fresh=False)
        self._attach(template, target)
        slot.itemcount = entry["items"]
        if entry["started"]:
            # The exporter writes its opening again ("[", "<items>"): cut it off, then give
            # it the state it had at the saved length.
            slot.start_exporting()
            file = target.open()
            file.flush()
            os.ftruncate(file.fileno(), length)
            file.seek(length)
            assert slot.exporter is not None
            for name, value in entry["exporter"].items():
                setattr(slot.exporter, name, _decode_fields(value) if name == "fields_to_export" else value)


def _unredact(uri: str, template: str) -> str:
    """*uri*, saved with its password hidden, with the password of the FEEDS entry back."""
    parts = urlsplit(template)
    if parts.password is None or ":***@" not in uri:
        return uri
    return uri.replace(":***@", f":{parts.password}@", 1)
