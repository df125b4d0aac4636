"""``scrapy query "QUERY"``: a shopping query answered by the project's spiders, as one resumable session."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from contextlib import ExitStack
from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar

from scrapy.settings import SETTINGS_PRIORITIES
from scrapy.utils.conf import build_component_list
from scrapy.utils.misc import load_object
from twisted.internet.defer import Deferred

from ..extension import checkpoint_identity
from ..metrics import push_query_answer
from ..models import CheckpointStatus, QuerySession, QuerySessionStatus, UserQuery, utcnow
from ..stores.base import query_ttl
from ._cli import USAGE_ERROR, Failure, StoreCommand, log_warnings_to_stderr, parse_duration, table

if TYPE_CHECKING:
    import argparse

    from scrapy import Spider
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

    from ..models import ParsedIntent
    from ..queries import QueryResult, Vocabulary
    from ..queries.session import ItemSource, SiteAnswer
    from ..stores import CheckpointStore

#: Results printed when --limit is not given.
DEFAULT_LIMIT = 20
#: Items read to learn the sites' words before a query is parsed.
VOCABULARY_ITEMS = 10_000


class Command(StoreCommand):
    """Parse the query, record it and its session, crawl the sites that cannot answer from a
    fresh checkpoint (each crawl checkpointed, resumable), and print the matching products."""

    requires_project = True
    # Every crawl is checkpointed, stores its items (the answer is read from them) and goes
    # on with an unfinished checkpoint of the same query; -s overrides each.
    default_settings: ClassVar[dict[str, Any]] = {
        "CHECKPOINT_ENABLED": True,
        "CHECKPOINT_STORE_ITEMS": True,
        "CHECKPOINT_RESUME": True,
    }

    def syntax(self) -> str:
        return '"QUERY" [--spider NAME ...] [--user USER] [--max-age DURATION] [--limit N] [--json] | --resume SESSION_ID'

    def short_desc(self) -> str:
        return "Answer a shopping query from the project's spiders, as one resumable session"

    def long_desc(self) -> str:
        return (
            'Parse QUERY ("cheapest red dress under $50"), record it (user_queries) and its session '
            "(query_sessions) in the checkpoint store, run the spiders (--spider, else every spider "
            "with checkpoint_enabled) in this process, each as a checkpointed crawl that sees the "
            "parsed intent (spider attribute query_intent), and print the products that match, "
            "ordered as asked. --max-age DURATION (30d, 12h, 90m, 45s): a site whose completed "
            "checkpoint of this query, or of a whole crawl of it, is newer answers from its stored "
            "items without a crawl. --resume SESSION_ID: finish a session that was killed. "
            "--user USER is stored as a keyed hash (CHECKPOINT_QUERY_SECRET). The crawls log "
            "warnings only (-L INFO for more). "
            "Exit status: 0 answered, 1 a site or the store failed, 2 a bad command line or a query "
            "that says nothing to search for."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        group = parser.add_argument_group("Query Options")
        group.add_argument("--spider", action="append", metavar="NAME",
                           help="a spider to ask (repeat for several); default: every checkpoint_enabled one")
        group.add_argument("--user", metavar="USER", help="who asks (stored as a keyed hash)")
        group.add_argument("--max-age", metavar="DURATION",
                           help="answer from a site's stored items when its checkpoint is newer than this")
        group.add_argument("--limit", type=int, default=DEFAULT_LIMIT, metavar="N",
                           help=f"results at most (default {DEFAULT_LIMIT})")
        group.add_argument("--json", action="store_true", help="print one JSON document, no table")
        group.add_argument("--resume", metavar="SESSION_ID", help="finish this session")

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        assert self.settings is not None
        # The answer is for people: the crawls log warnings only, unless -L or -s asks.
        if self.settings.getpriority("LOG_LEVEL") < SETTINGS_PRIORITIES["cmdline"]:
            self.settings.set("LOG_LEVEL", "WARNING", priority="cmdline")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        log_warnings_to_stderr()
        started = time.perf_counter()
        try:
            self._check_command_line(args, opts)
            with ExitStack() as stack:
                store = self._open_store(stack, create=True)
                assert store is not None
                self._source = self._item_source(store, stack)
                self._answer(store, " ".join(args), opts, started)
        except Failure as failure:
            print(failure, file=sys.stderr)
            self.exitcode = failure.exitcode

    def _check_command_line(self, args: list[str], opts: argparse.Namespace) -> None:
        text = " ".join(args).strip()
        if opts.resume and text:
            raise Failure("--resume takes no query: the session has it.", USAGE_ERROR)
        if not opts.resume and not text:
            raise Failure(f"Missing query: scrapy query {self.syntax()}", USAGE_ERROR)
        if opts.limit < 1:
            raise Failure(f"--limit ({opts.limit}) must be 1 or more.", USAGE_ERROR)
        opts.age = None
        if opts.max_age is not None:
            try:
                opts.age = parse_duration(opts.max_age)
            except ValueError:
                raise Failure(f"--max-age ({opts.max_age!r}) must be a duration: a number and d, h, m or s, "
                              "as in 30d, 12h, 90m, 45s.", USAGE_ERROR) from None
        assert self.crawler_process is not None
        known = self.crawler_process.spider_loader.list()
        for name in opts.spider or ():
            if name not in known:
                raise Failure(f"--spider ({name!r}): no spider of that name in this project "
                              f"(scrapy list shows them).", USAGE_ERROR)

    # -- the session -----------------------------------------------------------------------

    def _answer(self, store: CheckpointStore, text: str, opts: argparse.Namespace, started: float) -> None:
        try:  # not at the top: `scrapy` loads every command, and the rest need no query extra
            from ..queries import FieldMap, aggregate, prefilter
            from ..queries.session import SiteAnswer, job_type_of
        except ImportError as exc:
            raise Failure(str(exc)) from None
        settings = self.checkpoint_settings
        if opts.resume:
            session, query = self._resumed(store, opts.resume)
            spiders = self._spiders(opts.spider or session.results.get("spiders"))
        else:
            spiders = self._spiders(opts.spider)
            session, query = self._asked(store, spiders, text, opts)
        if not spiders:
            raise Failure("No spider to ask: none in this project has checkpoint_enabled (or name some "
                          "with --spider).", USAGE_ERROR)
        intent = query.parsed_intent
        answers = {name: SiteAnswer(name, checkpoint_identity(cls)[1]) for name, cls in spiders.items()}
        session.sites_searched = sorted({answer.site for answer in answers.values()})
        session.results = {**session.results, "spiders": sorted(spiders)}
        session.status = QuerySessionStatus.RUNNING
        with self._store_errors():
            if not opts.resume:
                store.save_user_query(query, settings.ttl)
            store.save_query_session(session, settings.ttl)

        job = job_type_of(intent)
        to_crawl = []
        for name, cls in spiders.items():
            fresh = self._fresh(store, cls, job, opts, session)
            if fresh is None:
                to_crawl.append(name)
            else:
                answers[name].checkpoint_id, answers[name].outcome = fresh.checkpoint_id, "reused"
        self._crawl({name: spiders[name] for name in to_crawl}, intent, job, answers)

        with self._store_errors():
            # Only the items whose stored text can match are read: for a selective query, few.
            contains = prefilter(intent, FieldMap(settings.query_fields))
            sources = [(answers[name].site, self._items(answers[name], contains)) for name in sorted(answers)]
            results = aggregate(intent, sources, fields=FieldMap(settings.query_fields), limit=opts.limit)
        failed = [a for a in answers.values() if a.outcome.startswith("failed")]
        session.checkpoint_ids = sorted({a.checkpoint_id for a in answers.values() if a.checkpoint_id})
        session.status = QuerySessionStatus.FAILED if failed else QuerySessionStatus.COMPLETED
        session.completed_at = session.updated_at = utcnow()
        seconds = time.perf_counter() - started
        session.results = {
            "spiders": sorted(spiders),
            "sites": [a.document() for a in sorted(answers.values(), key=lambda a: a.spider)],
            "returned": len(results),
            "response_seconds": round(seconds, 3),
        }
        with self._store_errors():
            # Kept as long as an archived checkpoint once answered; until then, as an active one.
            ttl = query_ttl(settings, session.status)
            store.save_user_query(query, ttl)
            store.save_query_session(session, ttl)
        if settings.prometheus_pushgateway:
            kinds = Counter("reused" if a.outcome == "reused" else "failed" if a.outcome.startswith("failed")
                            else "crawled" for a in answers.values())
            push_query_answer(settings.prometheus_pushgateway, seconds, session.status.value, len(results), kinds)
        self._print(query, session, results, opts)
        for answer in failed:
            print(f"{answer.site} ({answer.spider}) {answer.outcome}; finish the session with: "
                  f"scrapy query --resume {session.session_id}", file=sys.stderr)
        if failed:
            self.exitcode = 1

    def _item_source(self, store: CheckpointStore, stack: ExitStack) -> ItemSource:
        """Where the crawls' items are read back: the checkpoints (CHECKPOINT_STORE_ITEMS, on
        unless the project turns it off), else the collection CheckpointMongoDBPipeline fills."""
        from ..queries.session import ItemSource, MongoDBPipelineItems
        from ..settings import MongoItemsSettings

        assert self.settings is not None
        if self.checkpoint_settings.store_items:
            return ItemSource(store)
        if not _writes_items_to_mongodb(self.settings):
            raise Failure("scrapy query reads the crawls' items back, but CHECKPOINT_STORE_ITEMS is off and "
                          "ITEM_PIPELINES has no scrapy_checkpoint.CheckpointMongoDBPipeline: turn either on.",
                          USAGE_ERROR)
        with self._store_errors():
            source = MongoDBPipelineItems(MongoItemsSettings.from_settings(self.settings))
        stack.callback(source.close)
        return source

    def _asked(self, store: CheckpointStore, spiders: dict[str, type[Spider]], text: str,
               opts: argparse.Namespace) -> tuple[QuerySession, UserQuery]:
        """A new query, parsed with the words of the sites' items the store holds, and its session."""
        from ..queries import QueryError, mask_query, parse_query, user_key

        try:
            intent = parse_query(text, self._vocabulary(store, spiders))
        except QueryError as exc:
            raise Failure(str(exc), USAGE_ERROR) from None
        user = None
        if opts.user is not None:
            try:
                user = user_key(opts.user, self.checkpoint_settings.query_secret or "")
            except ValueError as exc:
                raise Failure(str(exc), USAGE_ERROR) from None
        # E-mail addresses and phone numbers in the text are not stored.
        query = UserQuery(raw_query=mask_query(text), user_id=user, parsed_intent=intent)
        return QuerySession(query_id=query.query_id, status=QuerySessionStatus.RUNNING), query

    def _vocabulary(self, store: CheckpointStore, spiders: dict[str, type[Spider]]) -> Vocabulary:
        """The brands, product types, materials and colours of the items of each spider's
        completed checkpoints, newest first (VOCABULARY_ITEMS at most, shared among the sites):
        the parser knows the sites' own words ("ridgeline jeans": a brand, not a keyword)."""
        from ..queries import FieldMap, vocabulary_from_items

        per_site = VOCABULARY_ITEMS // max(len(spiders), 1)
        items: list[dict[str, Any]] = []
        with self._store_errors():
            for spidercls in spiders.values():
                name, site, _ = checkpoint_identity(spidercls)
                completed = store.list_checkpoints(name, site, None, CheckpointStatus.COMPLETED)
                found = (item for checkpoint in completed for item in self._source.items(checkpoint.checkpoint_id))
                items += islice(found, per_site)
        return vocabulary_from_items(items, FieldMap(self.checkpoint_settings.query_fields))

    def _resumed(self, store: CheckpointStore, session_id: str) -> tuple[QuerySession, UserQuery]:
        with self._store_errors():
            session = store.get_query_session(session_id)
            query = None if session is None else store.get_user_query(session.query_id)
        if session is None or query is None:
            raise Failure(f"No query session {session_id} in {self._where}.")
        return session, query

    def _spiders(self, names: list[str] | None) -> dict[str, type[Spider]]:
        assert self.crawler_process is not None
        loader = self.crawler_process.spider_loader
        if names:
            return {name: loader.load(name) for name in names if name in loader.list()}
        classes = {name: loader.load(name) for name in loader.list()}
        return {name: cls for name, cls in classes.items() if getattr(cls, "checkpoint_enabled", False)}

    def _fresh(self, store: CheckpointStore, spidercls: type[Spider], job: str, opts: argparse.Namespace,
               session: QuerySession) -> Any:
        """A checkpoint that answers for the spider's site without a crawl: one of this
        session finished before it was killed, or (--max-age) a recent one of this query or
        of a whole crawl of the site."""
        from ..queries.session import answering_checkpoint

        with self._store_errors():
            if opts.resume:
                found = answering_checkpoint(store, self._source, spidercls, {job}, session.created_at)
                if found is not None:
                    return found
            if opts.age is not None:
                own_job = checkpoint_identity(spidercls)[2]
                return answering_checkpoint(store, self._source, spidercls, {job, own_job}, utcnow() - opts.age)
        return None

    def _crawl(self, spiders: dict[str, type[Spider]], intent: ParsedIntent, job: str,
               answers: dict[str, SiteAnswer]) -> None:
        """Crawl *spiders* at once in this process; each answer gets its checkpoint and outcome."""
        assert self.crawler_process is not None
        if not spiders:
            return
        crawlers: dict[str, Crawler] = {}
        for name, cls in spiders.items():
            crawler = crawlers[name] = self.crawler_process.create_crawler(cls)
            handle = self.crawler_process.crawl(crawler, query_intent=intent, checkpoint_job_type=job)
            _when_done(handle, lambda error, name=name: self._crawled(answers[name], crawlers[name], error))
        self.crawler_process.start()

    @staticmethod
    def _crawled(answer: SiteAnswer, crawler: Crawler, error: BaseException | None) -> None:
        try:
            stats = crawler.stats
        except RuntimeError:  # the crawl failed to start (its spider refused its arguments)
            stats = None
        answer.checkpoint_id = stats.get_value("checkpoint/id") if stats else None
        reason = stats.get_value("finish_reason") if stats else None
        if error is not None:
            answer.outcome = f"failed: {type(error).__name__}: {error}"
        elif reason != "finished":
            answer.outcome = f"failed: the crawl closed with {reason!r}"
        else:
            answer.outcome = "finished"

    def _items(self, answer: SiteAnswer, contains: list[tuple[str, ...]]) -> Any:
        if answer.checkpoint_id is None:
            return []
        items = list(self._source.items(answer.checkpoint_id, contains))
        answer.items = len(items)
        return items

    # -- output ----------------------------------------------------------------------------

    def _print(self, query: UserQuery, session: QuerySession, results: list[QueryResult],
               opts: argparse.Namespace) -> None:
        if opts.json:
            print(json.dumps({
                "session_id": session.session_id,
                "query_id": query.query_id,
                "query": query.raw_query,
                "parsed_intent": query.parsed_intent.model_dump(mode="json"),
                "sites_searched": session.sites_searched,
                "checkpoint_ids": session.checkpoint_ids,
                "sites": session.results["sites"],
                "response_seconds": session.results["response_seconds"],
                "results": [result.model_dump(mode="json") for result in results],
            }))
            return
        if not results:
            print(f"No product matches {query.raw_query!r} on {', '.join(session.sites_searched)}.")
        else:
            print(table(
                ("#", "PRICE", "CURRENCY", "SITE", "TITLE", "URL"),
                [(n, "-" if r.price is None else f"{r.price:.2f}", r.currency or "-", r.site, r.title, r.url)
                 for n, r in enumerate(results, 1)],
                right=[0, 1],
            ))
        print(f"Session {session.session_id}: {len(results)} results from {len(session.sites_searched)} "
              f"sites in {session.results['response_seconds']:.2f} s", file=sys.stderr)


def _writes_items_to_mongodb(settings: BaseSettings) -> bool:
    """Whether ITEM_PIPELINES has CheckpointMongoDBPipeline (or a subclass) on."""
    try:
        from ..outputs.mongodb import CheckpointMongoDBPipeline
    except ImportError:  # without pymongo it cannot be on
        return False
    for path in build_component_list(settings.getwithbase("ITEM_PIPELINES")):
        component = load_object(path) if isinstance(path, str) else path
        if isinstance(component, type) and issubclass(component, CheckpointMongoDBPipeline):
            return True
    return False


def _when_done(handle: Any, done: Any) -> None:
    """Call done(error or None) once a crawl started by CrawlerProcess.crawl ends: a
    Deferred (CrawlerProcess) or an asyncio task (AsyncCrawlerProcess)."""
    if isinstance(handle, Deferred):
        handle.addCallbacks(lambda _: done(None), lambda failure: done(failure.value))
    elif isinstance(handle, asyncio.Future):
        handle.add_done_callback(lambda task: done(None if task.cancelled() else task.exception()))

