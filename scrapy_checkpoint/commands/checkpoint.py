"""``scrapy checkpoint``: list, show, delete, prune, export and count the checkpoints of a store."""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

from scrapy.exceptions import UsageError
from scrapy.utils.conf import feed_complete_default_values_from_settings, feed_process_params_from_cli
from scrapy.utils.misc import load_object
from w3lib.url import file_uri_to_path

from ..analytics import CheckpointStats, group_stats
from ..exceptions import CorruptCheckpointError
from ..models import Checkpoint, CheckpointStatus, QuerySession, UserQuery, live_workers, utcnow
from ._cli import (
    USAGE_ERROR,
    Failure,
    StoreCommand,
    count,
    log_warnings_to_stderr,
    parse_duration,
    table,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable, Iterator

    from ..stores import CheckpointStore

SUBCOMMANDS = ("list", "show", "delete", "prune", "export", "stats", "queries")
#: Each option's flag, and the subcommands that take it.
OPTIONS: dict[str, tuple[str, frozenset[str]]] = {
    "spider": ("--spider", frozenset({"list", "prune", "stats"})),
    "site": ("--site", frozenset({"list", "prune", "stats"})),
    "job": ("--job", frozenset({"list", "prune", "stats"})),
    "status": ("--status", frozenset({"list", "prune"})),
    "older_than": ("--older-than", frozenset({"prune"})),
    "dry_run": ("--dry-run", frozenset({"prune"})),
    "json": ("--json", frozenset({"list", "show", "delete", "prune", "stats", "queries"})),
    "user": ("--user", frozenset({"queries"})),
    "output": ("-o", frozenset({"export"})),
    "overwrite_output": ("-O", frozenset({"export"})),
}
#: Pagination entries ``show`` prints before "... and N more" (--json has them all).
SHOWN_LISTINGS = 20
def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _when(moment: datetime | None) -> str:
    """A time for people: UTC, to the second."""
    return "never" if moment is None else _utc(moment).strftime("%Y-%m-%d %H:%M:%S")


def _pending(checkpoint: Checkpoint) -> int:
    data = checkpoint.pipeline_data
    return max(data.urls_discovered - data.urls_processed, 0)


def _outcomes(checkpoint: Checkpoint, alive: dict[int, bool]) -> list[str]:
    last = len(checkpoint.runs) - 1
    return [run.outcome(last=i == last, alive=alive.get(run.number)) for i, run in enumerate(checkpoint.runs)]


def document(checkpoint: Checkpoint, workers: dict[str, dict[str, Any]] | None = None,
             timeout: float = 0.0) -> dict[str, Any]:
    """A checkpoint for --json: every field of the record, plus ``urls_pending``, each run's
    ``outcome`` and, for one shared by scrapy-redis workers, the ``workers``."""
    doc = {**checkpoint.model_dump(mode="json"), "urls_pending": _pending(checkpoint)}
    workers = workers or {}
    alive = live_workers(workers, timeout)
    for run, outcome in zip(doc["runs"], _outcomes(checkpoint, _alive_runs(workers, alive))):
        run["outcome"] = outcome
    if workers:
        doc["workers"] = [{"worker": name, **info, "alive": alive[name]} for name, info in sorted(workers.items())]
    return doc


def _alive_runs(workers: dict[str, dict[str, Any]], alive: dict[str, bool]) -> dict[int, bool]:
    return {info["run"]: alive[name] for name, info in workers.items() if info.get("run")}


LIST_HEADERS = ("ID", "SPIDER", "SITE", "JOB", "STATUS", "DISCOVERED", "PROCESSED", "PENDING", "ITEMS",
                "UPDATED (UTC)", "EXPIRES (UTC)")


def checkpoint_table(checkpoints: Iterable[Checkpoint]) -> str:
    rows = [
        (c.checkpoint_id, c.spider, c.site_domain, c.job_type, c.status.value,
         c.pipeline_data.urls_discovered, c.pipeline_data.urls_processed, _pending(c),
         c.pipeline_data.extraction_results.items_scraped, _when(c.updated_at), _when(c.expires_at))
        for c in checkpoints
    ]
    return table(LIST_HEADERS, rows, right=range(5, 9))


def _short_size(size: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def _size(size: int | None) -> str:
    if size is None:
        return "unknown"
    short = _short_size(size)
    return short if short.endswith("bytes") else f"{short} ({size} bytes)"


def show_lines(checkpoint: Checkpoint, store: str, size: int | None,
               workers: dict[str, dict[str, Any]] | None = None, timeout: float = 0.0) -> list[str]:
    """``show`` for people: one field a line, lists indented below their field."""
    data = checkpoint.pipeline_data
    results = data.extraction_results
    status = checkpoint.status.value
    workers = workers or {}
    alive = live_workers(workers, timeout)
    if checkpoint.resumable and workers:
        status += (f" ({sum(alive.values())} of {count(len(workers), 'worker')} alive; with none, start "
                   f"workers with: scrapy crawl {checkpoint.spider} -s CHECKPOINT_RESUME=1)")
    elif checkpoint.resumable:
        status += f" (resume: scrapy crawl {checkpoint.spider} -s CHECKPOINT_ID={checkpoint.checkpoint_id})"
    by_type = ", ".join(f"{name} {count}" for name, count in sorted(results.by_type.items()))
    fields: list[tuple[str, Any]] = [
        ("Checkpoint", checkpoint.checkpoint_id),
        ("Store", store),
        ("Spider", checkpoint.spider),
        ("Site", checkpoint.site_domain),
        ("Job type", checkpoint.job_type),
        ("Status", status),
        ("Pipeline step", checkpoint.pipeline_step),
        ("Batches", checkpoint.seq),
        ("Created", f"{_when(checkpoint.created_at)} UTC"),
        ("Updated", f"{_when(checkpoint.updated_at)} UTC"),
        ("Expires", "never" if checkpoint.expires_at is None else f"{_when(checkpoint.expires_at)} UTC"),
        ("Size in store", _size(size)),
        ("URLs", f"{data.urls_discovered} discovered, {data.urls_processed} processed, "
                 f"{_pending(checkpoint)} pending"),
        ("Items", f"{results.items_scraped}" + (f" ({by_type})" if by_type else "")),
        ("Current page", "none" if data.current_page is None else data.current_page),
        ("Pagination", count(len(data.pagination_state), "listing") if data.pagination_state else "none"),
    ]
    width = max(len(name) for name, _ in fields) + 2
    lines = [f"{name:<{width}}{value}" for name, value in fields]
    if data.pagination_state:
        listings = sorted(data.pagination_state.items())
        lines += table(("  LISTING", "LAST PAGE"),
                       [(f"  {url}", page) for url, page in listings[:SHOWN_LISTINGS]], right=[1]).splitlines()
        if len(listings) > SHOWN_LISTINGS:
            lines.append(f"  ... and {len(listings) - SHOWN_LISTINGS} more (--json shows them all)")
    lines.append(f"{'Spider state':<{width}}{json.dumps(data.state, sort_keys=True, default=str)}")
    lines.append(f"{'Outputs':<{width}}" + (count(len(data.outputs), "feed") if data.outputs else "none"))
    if data.outputs:
        lines += table(
            ("  FEED", "ITEMS", "BYTES", "BATCH", *(("WORKER",) if workers else ())),
            [(f"  {o.get('feed', o.get('uri', '?'))}", o.get("items", "?"), o.get("length", "?"),
              o.get("batch_id", "?"), *((o.get("worker", "-"),) if workers else ())) for o in data.outputs],
            right=[1, 2, 3],
        ).splitlines()
    if workers:
        lines.append(f"{'Workers':<{width}}{count(len(workers), 'worker')}, {sum(alive.values())} alive")
        lines += table(
            ("  WORKER", "RUN", "STATUS", "LAST SEEN", "LEASES"),
            [(f"  {name}", info.get("run", "-"),
              info.get("status", "?") if alive[name] or info.get("status") != "running" else "gone",
              f"{info.get('age', 0):.0f} s ago", info.get("leases", "-"))
             for name, info in sorted(workers.items())],
            right=[1, 4],
        ).splitlines()
    lines.append(f"{'Runs':<{width}}" + (count(len(checkpoint.runs), "run") if checkpoint.runs else "none"))
    if checkpoint.runs:
        lines += run_table(checkpoint, _alive_runs(workers, alive)).splitlines()
    return lines


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def run_table(checkpoint: Checkpoint, alive: dict[int, bool] | None = None) -> str:
    """Its runs, oldest first: how each began (resumed from which batch, with how much
    pending, how fast) and ended, and what it did. *alive*: whether the worker of each run
    (by number) sharing the checkpoint is."""
    rows = [
        (f"  {run.number}", _when(run.started_at), _when(run.ended_at if run.ended_at else run.updated_at),
         outcome, run.pages, run.items,
         "-" if run.resumed_from_seq is None else run.resumed_from_seq,
         "-" if run.pending_at_resume is None else run.pending_at_resume,
         _seconds(run.resume_seconds), f"{run.host}:{run.pid}")
        for run, outcome in zip(checkpoint.runs, _outcomes(checkpoint, alive or {}))
    ]
    text = table(("  RUN", "STARTED (UTC)", "ENDED/LAST SEEN", "OUTCOME", "PAGES", "ITEMS", "FROM BATCH",
                  "PENDING", "RESUME S", "HOST:PID"), rows, right=[4, 5, 6, 7, 8])
    refusals = [f"  run {run.number} refused: {run.refused}" for run in checkpoint.runs if run.refused]
    return "\n".join([text, *refusals])


STATS_HEADERS = ("SITE", "JOB", "CHECKPOINTS", "ACTIVE", "COMPLETED", "FAILED", "RUNS", "KILLED",
                 "RECOVERIES", "REFUSED", "SUCCESS", "RESUME S", "DOWN S", "STORAGE")


def stats_table(groups: dict[tuple[str, str], CheckpointStats], total: CheckpointStats) -> str:
    def row(site: str, job: str, s: CheckpointStats) -> tuple[Any, ...]:
        rate, doc = s.success_rate, s.document()
        storage = _short_size(s.storage_bytes) + (" + unknown" if s.storage_unknown else "")
        return (site, job, s.checkpoints, s.active, s.completed, s.failed, s.runs, s.killed, s.recoveries,
                s.refused, "-" if rate is None else f"{rate:.0%}", _seconds(doc["resume_seconds_median"]),
                _seconds(doc["downtime_seconds_median"]), storage)

    rows = [row(site, job, s) for (site, job), s in groups.items()]
    if len(groups) > 1:
        rows.append(row("(all)", "", total))
    return table(STATS_HEADERS, rows, right=range(2, 14))


QUERY_HEADERS = ("QUERY ID", "ASKED (UTC)", "QUERY", "SESSION", "STATUS", "SITES", "RESULTS", "SECONDS")


def query_table(found: Iterable[tuple[UserQuery, list[QuerySession]]]) -> str:
    """Past queries, newest first, one row per session (a query without one: a row of dashes)."""
    rows = []
    for query, sessions in found:
        for session in sessions or [None]:
            results = {} if session is None else session.results
            rows.append((
                query.query_id, _when(query.created_at), query.raw_query,
                "-" if session is None else session.session_id,
                "-" if session is None else session.status.value,
                "-" if session is None else ", ".join(session.sites_searched),
                results.get("returned", "-"), results.get("response_seconds", "-"),
            ))
    return table(QUERY_HEADERS, rows, right=[6, 7])


class Command(StoreCommand):
    """``scrapy checkpoint list|show|delete|prune|export|stats|queries``, on the store the settings select."""

    requires_project = False
    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}

    def syntax(self) -> str:
        return "list|show|delete|prune|export|stats|queries [ID ...] [options]"

    def short_desc(self) -> str:
        return "List, show, delete, prune, export or count checkpoints; list past queries"

    def long_desc(self) -> str:
        return (
            "Work on the checkpoints of the store the project's settings select (-s overrides "
            "them; CHECKPOINT_ENABLED need not be on). "
            "list [--spider S] [--site D] [--job J] [--status S ...]: newest first. "
            "show ID: one checkpoint, every field, and its runs. "
            "delete ID [ID ...]: a checkpoint and everything stored with it. "
            "prune [--older-than DURATION] [--status S ...] [--spider S] [--site D] [--job J] [--dry-run]: "
            "delete the checkpoints selected. "
            "export ID -o FILE: its stored items (CHECKPOINT_STORE_ITEMS), in the format of "
            "FILE's extension, as scrapy crawl -o writes them. "
            "stats [--spider S] [--site D] [--job J]: per site and job type, checkpoints by status, "
            "runs, killed runs, recoveries and their success rate, median resume time and "
            "downtime, storage used. "
            "queries [--user USER]: past scrapy query questions, newest first, and their sessions. "
            "Exit status: 0 done, 1 an unknown id or a store that failed, 2 a bad command line."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        group = parser.add_argument_group("Checkpoint Options")
        group.add_argument("--spider", metavar="NAME", help="list, prune, stats: only checkpoints of this spider")
        group.add_argument("--site", metavar="DOMAIN",
                           help="list, prune, stats: only checkpoints of this site domain")
        group.add_argument("--job", metavar="TYPE", help="list, prune, stats: only checkpoints of this job type")
        group.add_argument(
            "--status", action="extend", nargs="+", metavar="STATUS",
            help="list, prune: only checkpoints of these statuses (active, completed, failed)",
        )
        group.add_argument(
            "--older-than", metavar="DURATION",
            help="prune: only checkpoints last updated longer ago than DURATION (30d, 12h, 90m, 45s)",
        )
        group.add_argument("--dry-run", action="store_true", help="prune: print what would go, delete nothing")
        group.add_argument("--json", action="store_true",
                           help="list, show, delete, prune, stats, queries: print one JSON document, no table")
        group.add_argument("--user", metavar="USER",
                           help="queries: only the queries of this user (hashed with CHECKPOINT_QUERY_SECRET)")
        group.add_argument(
            "-o", "--output", metavar="FILE", action="append",
            help="export: append the items to FILE (format from its extension, or FILE:FORMAT; - for stdout)",
        )
        group.add_argument("-O", "--overwrite-output", metavar="FILE", action="append",
                           help="export: write the items to FILE, replacing it")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        log_warnings_to_stderr()
        try:
            subcommand, ids = self._check_command_line(args, opts)
            with ExitStack() as stack:
                store = self._open_store(stack)
                getattr(self, f"_{subcommand}")(store, ids, opts)
        except Failure as failure:
            print(failure, file=sys.stderr)
            self.exitcode = failure.exitcode

    # -- the command line ------------------------------------------------------------------

    def _check_command_line(self, args: list[str], opts: argparse.Namespace) -> tuple[str, list[str]]:
        if not args:
            raise Failure(f"Missing subcommand: scrapy checkpoint {self.syntax()}", USAGE_ERROR)
        subcommand, ids = args[0], args[1:]
        if subcommand not in SUBCOMMANDS:
            raise Failure(f"Unknown subcommand {subcommand!r}: use one of {', '.join(SUBCOMMANDS)}.", USAGE_ERROR)
        for arg in ids:
            if arg.startswith("-"):
                raise Failure(f"Unknown option {arg!r} (scrapy checkpoint -h lists them).", USAGE_ERROR)
        for dest, (flag, subcommands) in OPTIONS.items():
            if getattr(opts, dest) not in (None, False, []) and subcommand not in subcommands:
                raise Failure(f"{flag} is an option of {' and '.join(sorted(subcommands))}, "
                               f"not of {subcommand}.", USAGE_ERROR)
        wanted = {"list": (0, 0), "prune": (0, 0), "stats": (0, 0), "queries": (0, 0), "show": (1, 1), "export": (1, 1),
                  "delete": (1, None)}
        least, most = wanted[subcommand]
        if len(ids) < least or (most is not None and len(ids) > most):
            what = {0: "no checkpoint id", 1: "one checkpoint id"}[most] if most is not None else "checkpoint ids"
            raise Failure(f"scrapy checkpoint {subcommand} takes {what}, not {len(ids)}.", USAGE_ERROR)
        valid = [s.value for s in CheckpointStatus]
        for status in opts.status or ():
            if status not in valid:
                raise Failure(f"--status ({status!r}) must be one of {', '.join(valid)}.", USAGE_ERROR)
        opts.age = None
        if opts.older_than is not None:
            try:
                opts.age = parse_duration(opts.older_than)
            except ValueError:
                raise Failure(
                    f"--older-than ({opts.older_than!r}) must be a duration: a number and d, h, m or s, "
                    "as in 30d, 12h, 90m, 45s.", USAGE_ERROR,
                ) from None
        if subcommand == "prune" and not any((opts.age is not None, opts.status, opts.spider, opts.site, opts.job)):
            raise Failure("prune needs --older-than, --status, --spider, --site or --job to select "
                           "what it deletes.", USAGE_ERROR)
        if subcommand == "export" and len((opts.output or []) + (opts.overwrite_output or [])) != 1:
            raise Failure("export needs one -o FILE (append) or -O FILE (overwrite).", USAGE_ERROR)
        return subcommand, ids

    def _get(self, store: CheckpointStore | None, checkpoint_id: str) -> Checkpoint:
        try:
            with self._store_errors():
                checkpoint = None if store is None else store.get(checkpoint_id)
        except Failure as failure:
            if isinstance(failure.__context__, CorruptCheckpointError):
                raise Failure(f"{failure} (scrapy checkpoint delete {checkpoint_id} removes it)") from None
            raise
        if checkpoint is None:
            raise Failure(f"No checkpoint {checkpoint_id} in {self._where}.")
        return checkpoint

    def _select(self, store: CheckpointStore | None, opts: argparse.Namespace) -> list[Checkpoint]:
        if store is None:
            return []
        with self._store_errors():
            return list(store.list_checkpoints(opts.spider, opts.site, opts.job, opts.status))

    # -- subcommands -----------------------------------------------------------------------

    def _list(self, store: CheckpointStore | None, ids: list[str], opts: argparse.Namespace) -> None:
        checkpoints = self._select(store, opts)
        if opts.json:
            _print_json([document(c) for c in checkpoints])
        elif checkpoints:
            print(checkpoint_table(checkpoints))
        else:
            print(f"No checkpoints in {self._where}{_selection(opts)}.", file=sys.stderr)

    def _show(self, store: CheckpointStore | None, ids: list[str], opts: argparse.Namespace) -> None:
        checkpoint = self._get(store, ids[0])
        assert store is not None
        with self._store_errors():
            size = store.stored_bytes(checkpoint.checkpoint_id)
            workers = store.workers(checkpoint.checkpoint_id) if store.shared else {}
        if opts.json:
            _print_json({**document(checkpoint, workers, self._lease_timeout), "stored_bytes": size,
                         "store": self._where})
        else:
            print("\n".join(show_lines(checkpoint, self._where, size, workers, self._lease_timeout)))

    def _stats(self, store: CheckpointStore | None, ids: list[str], opts: argparse.Namespace) -> None:
        sized = []
        for checkpoint in self._select(store, opts):
            assert store is not None
            with self._store_errors():
                size = store.stored_bytes(checkpoint.checkpoint_id)
                alive = None
                if store.shared and checkpoint.resumable:  # its workers' runs may go on
                    workers = store.workers(checkpoint.checkpoint_id)
                    alive = _alive_runs(workers, live_workers(workers, self._lease_timeout))
                sized.append((checkpoint, size, alive))
        groups, total = group_stats(sized)
        if opts.json:
            _print_json({
                "store": self._where,
                "groups": [{"site_domain": site, "job_type": job, **s.document()}
                           for (site, job), s in groups.items()],
                "total": total.document(),
            })
        elif groups:
            print(stats_table(groups, total))
        else:
            print(f"No checkpoints in {self._where}{_selection(opts)}.", file=sys.stderr)

    def _queries(self, store: CheckpointStore | None, ids: list[str], opts: argparse.Namespace) -> None:
        user = None
        if opts.user is not None:
            from ..settings import query_secret

            assert self.settings is not None
            try:
                from ..queries.privacy import user_key

                user = user_key(opts.user, query_secret(self.settings) or "")
            except ImportError as exc:
                raise Failure(str(exc)) from None
            except ValueError as exc:
                raise Failure(str(exc), USAGE_ERROR) from None
        found = []
        if store is not None:
            with self._store_errors():
                for query in store.list_user_queries(user):
                    found.append((query, list(store.list_query_sessions(query.query_id))))
        if opts.json:
            _print_json([{**query.model_dump(mode="json"), "sessions": [s.model_dump(mode="json") for s in sessions]}
                         for query, sessions in found])
        elif found:
            print(query_table(found))
        else:
            print(f"No queries in {self._where}{' of that user' if user else ''}.", file=sys.stderr)

    def _delete(self, store: CheckpointStore | None, ids: list[str], opts: argparse.Namespace) -> None:
        deleted, missing = [], []
        for checkpoint_id in dict.fromkeys(ids):
            with self._store_errors():
                found = store is not None and store.delete(checkpoint_id)
            (deleted if found else missing).append(checkpoint_id)
        if opts.json:
            _print_json({"deleted": deleted, "not_found": missing})
        else:
            for checkpoint_id in deleted:
                print(f"Deleted checkpoint {checkpoint_id}.")
        if missing:
            raise Failure("\n".join(f"No checkpoint {i} in {self._where}." for i in missing))

    def _prune(self, store: CheckpointStore | None, ids: list[str], opts: argparse.Namespace) -> None:
        cutoff = None if opts.age is None else utcnow() - opts.age
        selected = [c for c in self._select(store, opts) if cutoff is None or _utc(c.updated_at) < cutoff]
        pruned = []
        for checkpoint in selected:
            if not opts.dry_run:
                assert store is not None
                with self._store_errors():
                    if not store.delete(checkpoint.checkpoint_id):
                        continue  # gone meanwhile (expired, or another prune)
            pruned.append(checkpoint)
        if opts.json:
            _print_json({"dry_run": opts.dry_run, "checkpoints": [document(c) for c in pruned]})
            return
        if not pruned:
            print(f"No checkpoints to prune in {self._where}{_selection(opts)}.", file=sys.stderr)
            return
        verb = "Would delete" if opts.dry_run else "Deleted"
        note = " (dry run: nothing deleted)" if opts.dry_run else ""
        print(f"{verb} {count(len(pruned), 'checkpoint')} from {self._where}{note}:")
        print(checkpoint_table(pruned))

    def _export(self, store: CheckpointStore | None, ids: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        # The FEEDS of the project are not ours to write.
        settings = self.settings.copy()
        settings.set("FEEDS", {}, priority="cmdline")
        try:
            feeds = feed_process_params_from_cli(settings, opts.output or [],
                                                 overwrite_output=opts.overwrite_output or [])
        except UsageError as exc:
            raise Failure(str(exc), USAGE_ERROR) from None
        ((uri, options),) = feeds.items()
        feed = feed_complete_default_values_from_settings(options, self.settings)
        exporter_class = load_object(self.settings.getwithbase("FEED_EXPORTERS")[feed["format"]])
        checkpoint = self._get(store, ids[0])
        assert store is not None
        items = self._guarded(store.items(checkpoint.checkpoint_id))
        first = next(items, None)
        scraped = checkpoint.pipeline_data.extraction_results.items_scraped
        if first is None and scraped:
            raise Failure(f"Checkpoint {checkpoint.checkpoint_id} holds none of the {scraped} items its "
                           "crawl scraped: it ran without CHECKPOINT_STORE_ITEMS = True.")
        path = _output_path(uri)
        with _open_output(path, overwrite=bool(feed.get("overwrite"))) as file:
            exporter = exporter_class(file, fields_to_export=feed["fields"], encoding=feed["encoding"],
                                      indent=feed["indent"], **feed["item_export_kwargs"])
            exporter.start_exporting()
            count = 0
            for _, item in itertools.chain([first] if first is not None else [], items):
                exporter.export_item(item)
                count += 1
            exporter.finish_exporting()
        where = "standard output" if path is None else path
        print(f"Exported {count} items of checkpoint {checkpoint.checkpoint_id} to {where} ({feed['format']}).",
              file=sys.stderr if path is None else sys.stdout)


def _output_path(uri: str) -> Path | None:
    """The file an export URI names; None for standard output."""
    if uri == "stdout:":
        return None
    if uri.startswith("file://"):
        return Path(file_uri_to_path(uri))
    if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]+://", uri):
        raise Failure(f"export writes a local file or standard output (-o -:FORMAT), not {uri}.", USAGE_ERROR)
    return Path(uri)


@contextmanager
def _open_output(path: Path | None, overwrite: bool) -> Iterator[IO[bytes]]:
    """Standard output; *path* appended to; or *path* replaced once the export is whole, so
    that a failed export leaves the old file as it was."""
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = path.with_name(f".{path.name}.export-{os.getpid()}") if overwrite else path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # as Scrapy's FileFeedStorage does
        with target.open("wb" if overwrite else "ab") as file:
            yield file
        if overwrite:
            os.replace(target, path)
    except OSError as exc:
        raise Failure(f"Cannot write {path}: {exc.strerror or exc}.") from None
    finally:
        if overwrite:
            target.unlink(missing_ok=True)


def _selection(opts: argparse.Namespace) -> str:
    """The filters of a list or prune, for a message: `` matching --spider products``."""
    given = [f"{flag} {' '.join(value) if isinstance(value, list) else value}"
             for dest, flag in (("spider", "--spider"), ("site", "--site"), ("job", "--job"),
                                ("status", "--status"), ("older_than", "--older-than"))
             if (value := getattr(opts, dest))]
    return f" matching {' '.join(given)}" if given else ""


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")
