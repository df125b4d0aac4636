"""Shopping queries: response time of ``scrapy query``, and aggregation over many stored items.

Two parts (``--parts``):

- ``response``: the two demo fashion shops (``example_project/fashion_shop.py``, northwind in
  US dollars and lumiere in euros, ``--products`` each, as subprocesses on 127.0.0.1) and
  ``scrapy query QUERY --json --spider northwind --spider lumiere`` as a subprocess in the
  demo project, for each of ``--queries``: once with a fresh ``CHECKPOINT_DIR`` (both sites
  crawled: "crawled"), then once more in that directory with ``--max-age 1h`` (both sites
  answered from the first run's stored items, no request: "stored"). Queries in a new random
  order each round. Per run: wall seconds from the start of the process to the first byte of
  its JSON on stdout (``PYTHONUNBUFFERED=1``, as a terminal would show it: the printed
  results), the command's own ``response_seconds`` (from its ``run()``, after Scrapy's start-up,
  to the aggregated results), CPU seconds of the process (user + system, all its threads,
  from ``os.wait4``). Start-up is the first minus the second. A round also times ``scrapy
  list`` in the project: what any command of the project pays before it does anything.
  Every run is checked: both sites ``finished`` (crawled) or ``reused`` (stored), and the
  stored run returns the crawled run's results.
- ``aggregate``: an embedded SQLite store filled the way a crawl fills it, through the store
  API (``create``, then ``apply`` of batches of ``CHECKPOINT_BATCH_SIZE`` events: each product
  page discovered, processed and its item, the last batch completing the checkpoint): one
  checkpoint per shop, ``--items`` items in all, the items the spiders yield for the shops'
  catalogs. Then, per query and round, on a store opened afresh (SQLite's cache cold, as in a
  new command; the file in the OS cache): ``answering_checkpoint`` for both sites (what
  ``--max-age`` runs to find them), reading every item back
  (``SQLiteCheckpointStore.items``, the fields of each) and ``aggregate(...)``, each timed (wall and CPU of this
  process); then, on a store opened afresh again, the path the command takes: only the items
  the query's ``prefilter`` lets through (``ItemSource.items`` with it: the store's
  ``matching_items``) and ``aggregate(...)`` of them, checked to give the same results. Last, ``scrapy query QUERY --max-age 1h --json`` against that store, whole.

Medians over ``--repeat`` rounds. Last line: ``BENCH_JSON {...}``; exits 1 if a run failed.

    python bench/query.py                                   # about 3 minutes on a quiet machine
    python bench/query.py --products 3000 --items 100000 --repeat 5
    python bench/query.py --parts aggregate --items 100000 --repeat 7
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "example_project"))
sys.path.insert(0, str(ROOT / "bench"))

import demo_support
from distributed import _numbers, _round, med, source_state
from fashion_shop import Catalog

from scrapy_checkpoint.models import (
    Batch,
    Checkpoint,
    CheckpointStatus,
    DiscoveredRequest,
)
from scrapy_checkpoint.queries import (
    FieldMap,
    aggregate,
    parse_query,
    prefilter,
    session,
)
from scrapy_checkpoint.settings import DEFAULTS
from scrapy_checkpoint.stores import SQLiteCheckpointStore
from scrapy_checkpoint.stores.sqlite import FILENAME

#: Spider name: its checkpoint_site_domain (example_project/shop/spiders/fashion.py).
SITES = {"northwind": "northwind.test", "lumiere": "lumiere.test"}
#: Selective (the shops' search narrows the crawl to red dresses), broad (every dress), and
#: one the spiders cannot narrow (a material: the whole catalog is crawled).
QUERIES = ["cheapest red dress under $50", "dress", "linen"]
LIMIT = 20


# Commands


class Command:
    """One ``python -m scrapy ...`` in the demo project: its wall time to the first byte of
    stdout and to its exit, its CPU (``os.wait4``), its stdout and stderr."""

    def __init__(self, argv: list[str], env: dict[str, str], timeout: float) -> None:
        with tempfile.TemporaryFile() as err:
            self._run(argv, env, timeout, err)

    def _run(self, argv: list[str], env: dict[str, str], timeout: float, err: Any) -> None:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "scrapy", *argv], cwd=demo_support.PROJECT_DIR,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
        assert process.stdout is not None
        first: list[float] = []
        chunks: list[bytes] = []

        def read() -> None:
            assert process.stdout is not None
            while chunk := process.stdout.read1(65536):
                if not first:
                    first.append(time.perf_counter())
                chunks.append(chunk)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        self.exit_s = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        reader.join(5)
        process.stdout.close()
        err.seek(0)
        self.stderr = err.read().decode(errors="replace")
        self.returncode = process.returncode
        self.stdout = b"".join(chunks).decode(errors="replace")
        self.output_s = first[0] - started if first else None
        self.cpu_s = usage.ru_utime + usage.ru_stime
        self.argv = argv

    def document(self) -> dict[str, Any]:
        if self.returncode != 0:
            raise RuntimeError(f"scrapy {' '.join(self.argv)} exited {self.returncode}:\n{self.stderr[-3000:]}")
        return json.loads(self.stdout)


def query_argv(text: str, directory: Path, *extra: str) -> list[str]:
    argv = ["query", text, "--json", "--limit", str(LIMIT), *extra]
    for name in SITES:
        argv += ["--spider", name]
    return argv + ["-s", f"CHECKPOINT_DIR={directory}"]


def answer(document: dict[str, Any]) -> list[tuple[str, str, float]]:
    return [(r["site"], r["sku"], r["price"]) for r in document["results"]]


def timed_query(text: str, directory: Path, env: dict[str, str], args: argparse.Namespace,
                *extra: str, outcome: str) -> dict[str, Any]:
    command = Command(query_argv(text, directory, *extra), env, args.timeout)
    document = command.document()
    outcomes = {s["spider"]: s["outcome"] for s in document["sites"]}
    if set(outcomes.values()) != {outcome}:
        raise RuntimeError(f"{text!r}: sites {outcomes}, expected {outcome}: {command.stderr[-2000:]}")
    return {
        "output_s": command.output_s, "exit_s": command.exit_s, "cpu_s": command.cpu_s,
        "response_s": document["response_seconds"],
        "startup_s": None if command.output_s is None else command.output_s - document["response_seconds"],
        "items": sum(s["items"] for s in document["sites"]), "results": answer(document),
    }


def response(args: argparse.Namespace, workdir: Path, rng: random.Random) -> dict[str, Any]:
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {q: {"crawled": [], "stored": []} for q in args.queries}
    startup: list[dict[str, float]] = []
    errors: list[str] = []
    with contextlib.ExitStack() as stack:
        env = {demo_support.FASHION_URL_VARIABLES[name]: stack.enter_context(demo_support.running_fashion_shop(
            name, workdir / f"{name}.log", products=args.products, latency=args.latency)) for name in SITES}
        for round_ in range(args.repeat):
            listed = Command(["list"], env, args.timeout)
            if listed.returncode == 0:
                startup.append({"output_s": listed.output_s, "exit_s": listed.exit_s, "cpu_s": listed.cpu_s})
            order = list(args.queries)
            rng.shuffle(order)
            for text in order:
                directory = workdir / f"round-{round_}-{args.queries.index(text)}"
                try:
                    crawled = timed_query(text, directory, env, args, outcome="finished")
                    stored = timed_query(text, directory, env, args, "--max-age", "1h", outcome="reused")
                    if stored["results"] != crawled["results"]:
                        raise RuntimeError(f"{text!r}: the stored answer differs from the crawled one")
                except (RuntimeError, ValueError) as exc:
                    errors.append(f"round {round_ + 1}, {text!r}: {exc}")
                    continue
                runs[text]["crawled"].append(crawled)
                runs[text]["stored"].append(stored)
                shutil.rmtree(directory, ignore_errors=True)
            print(f"response round {round_ + 1}/{args.repeat} done", file=sys.stderr)
    return {"runs": runs, "startup": startup, "errors": errors}


KEYS = ("output_s", "response_s", "startup_s", "cpu_s", "exit_s")


def summarize_response(result: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {"scrapy list": {k: med(r[k] for r in result["startup"])
                                              for k in ("output_s", "exit_s", "cpu_s")}}
    for text, modes in result["runs"].items():
        for mode, runs in modes.items():
            if runs:
                report[f"{text} | {mode}"] = {
                    "runs": len(runs), **{k: med(r[k] for r in runs) for k in KEYS},
                    "output_s_all": [round(r["output_s"], 3) for r in runs],
                    "items": med(r["items"] for r in runs), "results": len(runs[0]["results"]),
                }
    return report


def print_response(report: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nResponse time of `scrapy query --json`, two shops of {args.products:,} products "
          f"({args.latency * 1e3:g} ms a page); medians of {args.repeat} rounds, seconds")
    print(f"{'query':<32}{'answer':>9}{'to output':>11}{'command':>9}{'start-up':>10}{'cpu':>7}"
          f"{'items':>8}{'results':>9}")
    for key, row in report.items():
        if key == "scrapy list":
            continue
        text, mode = key.split(" | ")
        print(f"{text:<32}{mode:>9}{row['output_s']:>11.2f}{row['response_s']:>9.2f}{row['startup_s']:>10.2f}"
              f"{row['cpu_s']:>7.2f}{row['items']:>8.0f}{row['results']:>9}")
    row = report["scrapy list"]
    if row["output_s"] is not None:
        print(f"{'scrapy list (start-up alone)':<41}{row['output_s']:>11.2f}{'':>19}{row['cpu_s']:>7.2f}")
    print("to output: process start to the first byte of the printed results; command: the command's "
          "response_seconds (run() to the results); start-up: the difference (interpreter, Scrapy, "
          "project); cpu: user + system of the process; items: stored items read for the answer")


# Aggregation over a filled store


def shop_items(products: int) -> dict[str, list[dict[str, Any]]]:
    """The items the shops' spiders yield for their catalogs, *products* in all."""
    per_shop = {name: products // len(SITES) + (i < products % len(SITES)) for i, name in enumerate(SITES)}
    items = {}
    for name, count in per_shop.items():
        # The spider's fields, in its order: the catalog's and the page's URL last.
        base = f"http://127.0.0.1:8000/{name}"
        items[name] = [{**p, "url": f"{base}/product/{p['sku']}"} for p in Catalog(name, count).products]
    return items


def fill(store: SQLiteCheckpointStore, spider: str, items: list[dict[str, Any]], batch_size: int) -> str:
    """One completed checkpoint holding *items*, applied as a crawl flushes them: per product
    page, its request discovered (with its pickled body), then processed with its item."""
    checkpoint = Checkpoint.new(ttl=DEFAULTS["CHECKPOINT_TTL"], spider=spider, site_domain=SITES[spider],
                                job_type="catalog")
    store.create(checkpoint)
    ttl = DEFAULTS["CHECKPOINT_TTL"]
    per_batch = max(1, batch_size // 3)  # three events a product page
    for seq, start in enumerate(range(0, len(items), per_batch), 1):
        chunk = items[start:start + per_batch]
        discovered = []
        for item in chunk:
            url = item["url"]
            data = pickle.dumps({"url": url, "callback": "parse_product", "method": "GET", "headers": {},
                                 "meta": {"depth": 2}, "priority": 0, "dont_filter": False}, protocol=5)
            discovered.append(DiscoveredRequest(_fingerprint(url), url, data, False))
        last = start + per_batch >= len(items)
        store.apply(checkpoint.checkpoint_id, Batch(
            seq=seq, discovered=discovered, processed=[d.fingerprint for d in discovered],
            items=[("FashionProduct", dict(item)) for item in chunk], item_counts={"FashionProduct": len(chunk)},
            status=CheckpointStatus.COMPLETED if last else None), ttl)
    return checkpoint.checkpoint_id


def _fingerprint(url: str) -> bytes:
    return hashlib.sha1(url.encode()).digest()


class Clock:
    """Wall and CPU seconds (this process, all threads) of a block."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu


def aggregation(args: argparse.Namespace, workdir: Path, rng: random.Random) -> dict[str, Any]:
    directory = workdir / "store"
    path = directory / FILENAME
    items = shop_items(args.items)
    store = SQLiteCheckpointStore(path)
    store.open()
    fill_clock = Clock()
    try:
        with fill_clock():
            ids = {name: fill(store, name, items[name], args.batch_size) for name in SITES}
    finally:
        store.close()
    del items
    size = sum(p.stat().st_size for p in directory.iterdir())
    print(f"filled {args.items:,} items in {fill_clock.wall:.1f} s ({size / 1e6:.0f} MB on disk)", file=sys.stderr)
    from shop.spiders.fashion import LumiereSpider, NorthwindSpider

    classes = {"northwind": NorthwindSpider, "lumiere": LumiereSpider}
    runs: dict[str, list[dict[str, Any]]] = {q: [] for q in args.queries}
    errors: list[str] = []
    for round_ in range(args.repeat):
        order = list(args.queries)
        rng.shuffle(order)
        for text in order:
            intent = parse_query(text)
            find, read, agg, pre_read, pre_agg = Clock(), Clock(), Clock(), Clock(), Clock()
            store = SQLiteCheckpointStore(path)
            store.open()
            try:
                with find():
                    found = {name: session.answering_checkpoint(store, session.ItemSource(store), cls, {"catalog"},
                                                                _an_hour_ago())
                             for name, cls in classes.items()}
                if {n: c and c.checkpoint_id for n, c in found.items()} != ids:
                    errors.append(f"{text!r}: answering_checkpoint found {found}, not {ids}")
                with read():
                    sources = [(SITES[name], [fields for _, fields in store.items(ids[name])])
                               for name in sorted(SITES)]
                with agg():
                    results = aggregate(intent, sources, fields=FieldMap(), limit=LIMIT)
            finally:
                store.close()
            count = sum(len(s) for _, s in sources)
            if count != args.items:
                errors.append(f"{text!r}: read {count} items, not {args.items}")
            del sources
            store = SQLiteCheckpointStore(path)
            store.open()
            try:
                with pre_read():  # what the command does: scrapy query's _items
                    contains = prefilter(intent, FieldMap())
                    source = session.ItemSource(store)
                    sources = [(SITES[name], list(source.items(ids[name], contains))) for name in sorted(SITES)]
                with pre_agg():
                    filtered = aggregate(intent, sources, fields=FieldMap(), limit=LIMIT)
            finally:
                store.close()
            if filtered != results:
                errors.append(f"{text!r}: the prefiltered items gave other results than all items")
            kept = sum(len(s) for _, s in sources)
            del sources
            runs[text].append({"find_s": find.wall, "find_cpu_s": find.cpu, "read_s": read.wall,
                               "read_cpu_s": read.cpu, "aggregate_s": agg.wall, "aggregate_cpu_s": agg.cpu,
                               "pre_read_s": pre_read.wall, "pre_read_cpu_s": pre_read.cpu,
                               "pre_aggregate_s": pre_agg.wall, "pre_aggregate_cpu_s": pre_agg.cpu,
                               "pre_items": kept, "results": len(results)})
        print(f"aggregate round {round_ + 1}/{args.repeat} done", file=sys.stderr)
    command: dict[str, Any] = {}
    if args.command_rounds:
        env = {variable: "http://127.0.0.1:9" for variable in demo_support.FASHION_URL_VARIABLES.values()}
        for text in args.queries:
            timings = []
            for _ in range(args.command_rounds):
                try:
                    timings.append(timed_query(text, directory, env, args, "--max-age", "1h", outcome="reused"))
                except (RuntimeError, ValueError) as exc:
                    errors.append(f"command {text!r} on the filled store: {exc}")
            if timings:
                command[text] = {k: med(t[k] for t in timings) for k in KEYS}
    return {"fill_s": fill_clock.wall, "fill_cpu_s": fill_clock.cpu, "bytes": size, "runs": runs,
            "command": command, "errors": errors}


def _an_hour_ago() -> Any:
    from datetime import timedelta

    from scrapy_checkpoint.models import utcnow

    return utcnow() - timedelta(hours=1)


AGG_KEYS = ("find_s", "find_cpu_s", "read_s", "read_cpu_s", "aggregate_s", "aggregate_cpu_s", "pre_read_s",
            "pre_read_cpu_s", "pre_aggregate_s", "pre_aggregate_cpu_s", "pre_items")


def summarize_aggregation(result: dict[str, Any]) -> dict[str, Any]:
    report = {}
    for text, runs in result["runs"].items():
        if runs:
            row = {k: med(r[k] for r in runs) for k in AGG_KEYS}
            row["read_aggregate_s"] = med(r["read_s"] + r["aggregate_s"] for r in runs)
            row["read_aggregate_min_s"] = min(r["read_s"] + r["aggregate_s"] for r in runs)
            row["read_aggregate_max_s"] = max(r["read_s"] + r["aggregate_s"] for r in runs)
            row["read_aggregate_cpu_s"] = med(r["read_cpu_s"] + r["aggregate_cpu_s"] for r in runs)
            row["pre_read_aggregate_s"] = med(r["pre_read_s"] + r["pre_aggregate_s"] for r in runs)
            row["pre_read_aggregate_cpu_s"] = med(r["pre_read_cpu_s"] + r["pre_aggregate_cpu_s"] for r in runs)
            row["pre_read_aggregate_min_cpu_s"] = min(r["pre_read_cpu_s"] + r["pre_aggregate_cpu_s"] for r in runs)
            row["results"] = runs[0]["results"]
            row["runs"] = len(runs)
            row["command"] = result["command"].get(text)
            report[text] = row
    return report


def print_aggregation(report: dict[str, Any], result: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nAggregation over {args.items:,} stored items (embedded SQLite store, two checkpoints, "
          f"{result['bytes'] / 1e6:.0f} MB; filled in {result['fill_s']:.1f} s); medians of {args.repeat} "
          "rounds, seconds (wall / CPU)")
    print(f"{'query':<32}{'find':>13}{'read':>13}{'aggregate':>13}{'read+agg':>13}{'min-max':>13}{'results':>9}"
          f"{'command':>9}{'to output':>11}")
    for text, row in report.items():
        command = row["command"] or {}
        print(f"{text:<32}{row['find_s']:>6.3f}/{row['find_cpu_s']:<6.3f}{row['read_s']:>6.3f}/{row['read_cpu_s']:<6.3f}"
              f"{row['aggregate_s']:>6.3f}/{row['aggregate_cpu_s']:<6.3f}"
              f"{row['read_aggregate_s']:>6.3f}/{row['read_aggregate_cpu_s']:<6.3f}"
              f"{row['read_aggregate_min_s']:>6.2f}-{row['read_aggregate_max_s']:<6.2f}{row['results']:>9}"
              + (f"{command['response_s']:>9.2f}{command['output_s']:>11.2f}" if command else ""))
    print(f"\n{'prefiltered (the command)':<32}{'items read':>11}{'read':>13}{'aggregate':>13}{'read+agg':>13}"
          f"{'fastest CPU':>12}")
    for text, row in report.items():
        print(f"{text:<32}{row['pre_items']:>11,.0f}{row['pre_read_s']:>6.3f}/{row['pre_read_cpu_s']:<6.3f}"
              f"{row['pre_aggregate_s']:>6.3f}/{row['pre_aggregate_cpu_s']:<6.3f}"
              f"{row['pre_read_aggregate_s']:>6.3f}/{row['pre_read_aggregate_cpu_s']:<6.3f}"
              f"{row['pre_read_aggregate_min_cpu_s']:>12.3f}")
    print("find: answering_checkpoint for both sites (--max-age); read: every item back (store.items); "
          "aggregate: aggregate(...); prefiltered: ItemSource.items with the query's prefilter (matching_items), as "
          "the command reads; min-max: the fastest and slowest rounds' read+agg (wall); command / to output: "
          f"`scrapy query --max-age 1h` on this store (median of {args.command_rounds}), its response_seconds "
          "and the wall time to its printed results")


# Main


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=_numbers(str), default=["response", "aggregate"],
                        help="comma-separated subset of response,aggregate")
    parser.add_argument("--products", type=int, default=3000, help="products of each shop (response)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds a page of the shops (response)")
    parser.add_argument("--items", type=int, default=100_000, help="stored items, over both shops (aggregate)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["CHECKPOINT_BATCH_SIZE"],
                        help="events a batch when filling the store (aggregate)")
    parser.add_argument("--queries", type=lambda s: [q.strip() for q in s.split(";") if q.strip()],
                        default=QUERIES, help="semicolon-separated queries")
    parser.add_argument("--repeat", type=int, default=3, help="rounds")
    parser.add_argument("--command-rounds", type=int, default=1,
                        help="runs of the whole command on the filled store, per query (aggregate; 0: none)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a command may run")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if unknown := set(args.parts) - {"response", "aggregate"}:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="bench-query-"))
    summary: dict[str, Any] = {"bench": "query", "source": source_state(), "cpus": os.cpu_count(),
                               "load_at_start": load(), "queries": args.queries, "repeat": args.repeat}
    errors: list[str] = []
    try:
        if "response" in args.parts:
            result = response(args, workdir, rng)
            errors += result["errors"]
            report = summarize_response(result)
            print_response(report, args)
            summary["response"] = {"products": args.products, "latency": args.latency, "results": report}
        if "aggregate" in args.parts:
            result = aggregation(args, workdir, rng)
            errors += result["errors"]
            report = summarize_aggregation(result)
            print_aggregation(report, result, args)
            summary["aggregate"] = {"items": args.items, "fill_s": result["fill_s"], "bytes": result["bytes"],
                                    "results": report, "runs": result["runs"]}
    finally:
        if errors:
            print(f"failed runs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    summary["load_at_end"] = load()
    # Others commit while it runs: what the last commands ran.
    summary["source_at_end"] = source_state()
    print(f"load average (1, 5, 15 min): {summary['load_at_start']} at the start, {summary['load_at_end']} "
          f"at the end, {os.cpu_count()} CPUs")
    for error in errors:
        print(f"ERROR: {error.splitlines()[0]}")
    summary["errors"] = errors
    print("BENCH_JSON " + json.dumps(_round(summary)))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
