"""The add-on: one line in ADDONS wires every checkpoint component."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.extensions.feedexport import FeedExporter
from scrapy.utils.misc import load_object

from .extension import CheckpointExtension
from .middlewares import CheckpointDownloaderMiddleware, CheckpointSpiderMiddleware
from .outputs import CheckpointFeedExporter
from .pipelines import CheckpointItemPipeline
from .settings import object_path, shares_a_scheduler

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

#: Outermost positions: the extension must see what reaches the engine, and failures
#: only after RetryMiddleware (550) has given up.
SPIDER_MIDDLEWARE_ORDER = 10
DOWNLOADER_MIDDLEWARE_ORDER = 10
#: Last, after the 0 to 1000 Scrapy's documentation suggests: an item that reaches it has
#: passed every item pipeline.
ITEM_PIPELINE_ORDER = 10_000


class Addon:
    """Enable with ``ADDONS = {"scrapy_checkpoint.Addon": 100}``; the components stay
    inactive (``NotConfigured``) until ``CHECKPOINT_ENABLED`` or ``ENABLE_CHECKPOINTS=true``
    and a spider with ``checkpoint_enabled = True``."""

    def update_settings(self, settings: BaseSettings) -> None:
        for name, component, order in (
            ("EXTENSIONS", CheckpointExtension, 0),
            ("SPIDER_MIDDLEWARES", CheckpointSpiderMiddleware, SPIDER_MIDDLEWARE_ORDER),
            ("DOWNLOADER_MIDDLEWARES", CheckpointDownloaderMiddleware, DOWNLOADER_MIDDLEWARE_ORDER),
            ("ITEM_PIPELINES", CheckpointItemPipeline, ITEM_PIPELINE_ORDER),
        ):
            settings.setdefault_in_component_priority_dict(name, component, order)
        # Feeds in step with the checkpoint; without checkpoints it is Scrapy's exporter.
        extensions = settings.getdict("EXTENSIONS")
        if not any(load_object(key) is FeedExporter for key in extensions):
            extensions[FeedExporter] = None
            extensions[CheckpointFeedExporter] = 0
            settings.set("EXTENSIONS", extensions, settings.getpriority("EXTENSIONS") or 0)
        if shares_a_scheduler(settings):
            # Workers of scrapy-redis lease what they pop, so that a dead one loses nothing.
            from .distributed import LEASED_QUEUES, REDIS_DUPEFILTER, LeasedRFPDupeFilter

            queue = object_path(settings.get("SCHEDULER_QUEUE_CLASS") or "scrapy_redis.queue.PriorityQueue")
            leased = LEASED_QUEUES.get(queue)
            if leased is not None:
                # At the priority the queue was chosen with: a project's choice is the usual case.
                settings.set("SCHEDULER_QUEUE_CLASS", object_path(leased),
                             settings.getpriority("SCHEDULER_QUEUE_CLASS") or "addon")
            # And its dupefilter leaves the mark of a request seen to the queue's push.
            if object_path(settings.get("DUPEFILTER_CLASS")) == REDIS_DUPEFILTER:
                settings.set("DUPEFILTER_CLASS", object_path(LeasedRFPDupeFilter),
                             settings.getpriority("DUPEFILTER_CLASS") or "addon")
