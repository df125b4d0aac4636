"""Switch parts of scrapy-checkpoint off in a crawl, to measure what each part costs.

Python imports ``sitecustomize`` at start-up from the first directory of ``sys.path`` that
has one. ``bench/overhead.py --ablate PARTS`` puts this folder on ``PYTHONPATH`` and PARTS in
``CHECKPOINT_BENCH_ABLATE``: every crawl it starts then runs with those parts off
(comma-separated):

- ``store``: the store's ``apply`` does nothing (the flushes still run, in their thread);
- ``serializer``: requests are recorded with an empty body instead of being pickled;
- ``spider_middleware``: no ``process_spider_output`` / ``process_spider_exception`` (no
  request is ever marked processed);
- ``passthrough``: ``process_spider_output`` passes the output through and tracks nothing:
  the cost of the async middleware layer Scrapy builds around it;
- ``item_pipeline``: no ``CheckpointItemPipeline`` (``NotConfigured``): the extension hears
  ``item_scraped``, as in a crawl configured by hand without the pipeline;
- ``signal:<name>``: the extension does not connect to that signal (``signal:item_scraped``);
- ``signals``: nor to any of request_scheduled, request_dropped, item_scraped, item_dropped,
  item_error.

    .venv/bin/python bench/overhead.py --instructions 300,1000 --contenders off,sqlite --ablate store

Never use it for anything but measuring: a crawl with a part off is not checkpointed.
"""

import os

_ABLATE = {part.strip() for part in os.environ.get("CHECKPOINT_BENCH_ABLATE", "").split(",") if part.strip()}

if _ABLATE:
    from scrapy import signals
    from scrapy.signalmanager import SignalManager

    from scrapy_checkpoint import extension, middlewares

    _RECORDING = ("request_scheduled", "request_dropped", "item_scraped", "item_dropped", "item_error")

    if "store" in _ABLATE:
        import importlib

        from scrapy_checkpoint.stores.base import CheckpointStore

        def _no_apply(self, checkpoint_id, batch, ttl):
            return None

        for _name in ("sqlite", "redis", "mongodb", "hybrid"):
            _module = importlib.import_module(f"scrapy_checkpoint.stores.{_name}")
            for _cls in vars(_module).values():
                if isinstance(_cls, type) and issubclass(_cls, CheckpointStore) and _cls is not CheckpointStore:
                    _cls.apply = _no_apply

    if "serializer" in _ABLATE:
        extension.RequestSerializer.dumps = lambda self, request: b""

    if "spider_middleware" in _ABLATE:
        del middlewares.CheckpointSpiderMiddleware.process_spider_output
        del middlewares.CheckpointSpiderMiddleware.process_spider_exception

    if "item_pipeline" in _ABLATE:
        from scrapy.exceptions import NotConfigured

        from scrapy_checkpoint import pipelines

        def _not_configured(self, crawler):
            raise NotConfigured

        pipelines.CheckpointItemPipeline.__init__ = _not_configured

    if "passthrough" in _ABLATE:
        async def _passthrough(self, response, result):
            async for element in result:
                yield element

        middlewares.CheckpointSpiderMiddleware.process_spider_output = _passthrough

    _skipped = {getattr(signals, p.split(":", 1)[1]) for p in _ABLATE if p.startswith("signal:")}
    if "signals" in _ABLATE:
        _skipped |= {getattr(signals, name) for name in _RECORDING}
    if _skipped:
        _connect = SignalManager.connect

        def _connect_unless_skipped(self, receiver, signal, **kwargs):
            owner = getattr(receiver, "__self__", None)
            if signal in _skipped and isinstance(owner, extension.CheckpointExtension):
                return None
            return _connect(self, receiver, signal, **kwargs)

        SignalManager.connect = _connect_unless_skipped
        _disconnect = SignalManager.disconnect

        def _disconnect_unless_skipped(self, receiver, signal, **kwargs):
            owner = getattr(receiver, "__self__", None)
            if signal in _skipped and isinstance(owner, extension.CheckpointExtension):
                return None
            return _disconnect(self, receiver, signal, **kwargs)

        SignalManager.disconnect = _disconnect_unless_skipped
