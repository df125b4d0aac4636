"""Middlewares that tell the checkpoint extension when a request's work is done."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from scrapy import Request
from scrapy.exceptions import NotConfigured
from scrapy.utils.spider import iterate_spider_output

from .extension import CheckpointExtension, track_output

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from twisted.python.failure import Failure


def _extension(crawler: Crawler) -> CheckpointExtension:
    extension = crawler.get_extension(CheckpointExtension)
    if extension is None or extension.misconfigured:
        raise NotConfigured
    return extension


class CheckpointSpiderMiddleware:
    """Marks a response's request processed once its callback's output is consumed; on
    resume, drops start requests whose work is recorded already.

    Place it outermost (the lowest order): it must see what reaches the engine.
    """

    def __init__(self, crawler: Crawler) -> None:
        self.extension = _extension(crawler)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CheckpointSpiderMiddleware:
        return cls(crawler)

    async def process_start(self, start: AsyncIterator[Any]) -> AsyncIterator[Any]:
        extension = self.extension
        async for element in start:
            if isinstance(element, Request):
                if extension.loading and not await extension.processed_loaded():
                    return  # the crawl is closing
                if extension.skip_start_request(element):
                    continue
            yield element

    async def process_spider_output(
        self, response: Response, result: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        async for element in track_output(self.extension, response, response.request, result):
            yield element

    def process_spider_exception(self, response: Response, exception: Exception) -> None:
        # An exception before the callback ran (process_spider_input) ends the work too.
        self.extension.work_failed(response, response.request)


class CheckpointDownloaderMiddleware:
    """Marks a request processed when its download failed for good (after retries).

    Place it outermost (the lowest order), so that RetryMiddleware decides first.
    """

    def __init__(self, crawler: Crawler) -> None:
        self.extension = _extension(crawler)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CheckpointDownloaderMiddleware:
        return cls(crawler)

    def process_exception(self, request: Request, exception: Exception) -> None:
        errback = request.errback
        if errback is None:
            self.extension.processed(request)
            return
        extension = self.extension

        def tracked_errback(failure: Failure) -> Any:
            # The request was saved when scheduled; wrapping its errback now changes
            # nothing stored, and the errback's output is tracked like a callback's.
            try:
                output = errback(failure)
            except Exception:
                extension.processed(request)
                raise
            if output is None or isinstance(output, type(failure)):
                extension.processed(request)
                return output
            return track_output(extension, failure, request, iterate_spider_output(output))

        request.errback = tracked_errback
