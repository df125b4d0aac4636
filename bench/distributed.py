"""Leased scrapy-redis workers: throughput, the cost of a lease, reclaim of a dead worker's leases.

Real ``scrapy crawl products`` workers (subprocesses, each with its own ``-o`` feed and log)
share one scrapy-redis queue in one ``redis-server`` on a free port, against the demo shop,
which this script serves on 127.0.0.1 and which records when each request arrives. Three
parts (``--parts``):

- ``throughput``: one CPU-bound crawl (no latency) by 1, 2 and 3 workers (``--workers``)
  with checkpoints in Redis (the add-on's leased queue), and by one worker of plain
  scrapy-redis (no add-on), interleaved in a new random order each round. Per configuration,
  medians over the rounds: wall seconds from the start of the workers until the last one
  exited, crawl seconds until the shop served its last page, products per crawl second,
  each worker's CPU seconds (user + system of the worker process, all its threads, from
  ``os.wait4``'s rusage at its exit), CPU milliseconds per product page (all workers), and
  redis-server's CPU (``INFO cpu``). Every run is checked: each product exactly once over
  the union of the feeds, every worker exited 0.
- ``commands``: one more 1-worker crawl per contender, untimed, with ``MONITOR`` on the
  server: round trips per request (a client command; a MULTI..EXEC block counts once),
  split by what sent them (each Lua script by name: lease pop, push, ack, renew, the
  store's batch), and the commands those scripts ran. A count, not a time: noise-free.
- ``reclaim``: ``--reclaim-workers`` workers (a shop with ``--reclaim-latency``) with a
  short ``CHECKPOINT_LEASE_TIMEOUT`` (each of ``--lease-timeouts``); once the shop served
  ``--reclaim-at`` of the product pages, at a random moment within the next two flush
  intervals (or heartbeats), one worker is SIGSTOPped at a moment it holds leases (the
  tokens in ``<spider>:requests:lease:deadlines`` that carry its pid), the URLs it holds are
  read from ``:lease:requests``, and it is SIGKILLed. Per URL, seconds from the stop: to its
  lease's deadline (set by its last renewal: a heartbeat, or the flush's confirm), to the
  token leaving the deadlines (a pop by another worker put it back: polled every 20 ms), and
  to the URL's next arrival at the shop. The survivors finish the crawl; the dead worker's
  feed counts up to the length the checkpoint saved for it. Duplicates are printed, not
  failed on: a worker killed between a save and the release of its leases has those pages
  done again (a known gap, see README).

``--instructions SMALL,LARGE`` counts instead, under valgrind's callgrind, the instructions
of a one-worker crawl of each of ``--contenders`` at two shop sizes (two runs at a time):
their difference per product page, as in ``bench/overhead.py``. With the four contenders
(``checkpoint`` and ``scrapy`` run Scrapy's own scheduler, with and without checkpoints) it
also prints the leases' own cost: (leased - checkpoint) - (plain - scrapy).

A worker still running after ``--crawl-timeout`` is killed after its Python stacks are
dumped (py-spy, when installed) beside its log; failed runs are kept, and their directory
printed. Last line: ``BENCH_JSON {...}``; exits 1 if a run failed, lost a product, or (in
the throughput part) scraped one twice.

    python bench/distributed.py                       # about 5 minutes on a quiet machine
    python bench/distributed.py --products 3000 --repeat 5 --workers 1,2,3
    python bench/distributed.py --parts reclaim --lease-timeouts 2,5 --repeat 5
    python bench/distributed.py --instructions 300,1000 --contenders plain,leased,checkpoint,scrapy
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "example_project"))
sys.path.insert(0, str(ROOT / "bench"))

import _services  # noqa: E402
import demo_support  # noqa: E402

SPIDER = demo_support.SPIDER_NAME
QUEUE_KEY = f"{SPIDER}:requests"
DEADLINES_KEY = f"{QUEUE_KEY}:lease:deadlines"
LEASED_KEY = f"{QUEUE_KEY}:lease:requests"

COMMON = {
    "CONCURRENT_REQUESTS": 32,
    "CONCURRENT_REQUESTS_PER_DOMAIN": 32,
    # INFO: the stats dump at the end (and the checkpoint id, which reading a dead worker's
    # feed needs); nothing is logged per request at this level.
    "LOG_LEVEL": "INFO",
}
SCRAPY_REDIS = {
    "SCHEDULER": "scrapy_redis.scheduler.Scheduler",
    "DUPEFILTER_CLASS": "scrapy_redis.dupefilter.RFPDupeFilter",
    "SCHEDULER_PERSIST": True,
    "REDIS_URL": "{redis}",
}
#: No add-on: Scrapy's own feed exporter (and scrapy-redis's own queue and dupefilter).
NO_ADDON = {"ADDONS": {}, "CHECKPOINT_ENABLED": False}
CHECKPOINTS = {"CHECKPOINT_ENABLED": True, "CHECKPOINT_REDIS_URL": "{redis}"}
CONTENDERS = {
    # Plain scrapy-redis, without scrapy-checkpoint.
    "plain": {**SCRAPY_REDIS, **NO_ADDON},
    # scrapy-redis with checkpoints in Redis: the add-on leases what the queue pops.
    "leased": {**SCRAPY_REDIS, **CHECKPOINTS},
    # For --instructions only, to tell the leases from the rest: Scrapy's own scheduler,
    # with checkpoints in Redis, and without.
    "checkpoint": CHECKPOINTS,
    "scrapy": NO_ADDON,
}

_STAT = re.compile(r"'([\w/.-]+)': (\d+),?$")
#: A line of MONITOR: time, [db client], then the command name and its first argument.
_MONITOR = re.compile(rb'^\+?[\d.]+ \[\d+ ([^\]]*)\] "([^"]*)"(?: "([^"]*)")?')


# Workers


class Worker:
    """One ``scrapy crawl`` worker; a thread reaps it with ``os.wait4`` (its own rusage)."""

    def __init__(self, command: list[str], log: Path, items: Path, wrapper: tuple[str, ...] = ()) -> None:
        self.log_path, self.items = log, items
        with open(log, "wb") as out:
            self.process = subprocess.Popen([*wrapper, *command], cwd=demo_support.PROJECT_DIR,
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.pid = self.process.pid
        self.started = time.time()
        self.ended: float | None = None
        self.exit_code: int | None = None
        self.cpu: float | None = None
        self._done = threading.Event()
        threading.Thread(target=self._reap, name=f"reap-{self.pid}", daemon=True).start()

    def _reap(self) -> None:
        _, status, usage = os.wait4(self.pid, 0)
        self.ended = time.time()
        self.exit_code = self.process.returncode = os.waitstatus_to_exitcode(status)
        self.cpu = usage.ru_utime + usage.ru_stime
        self._done.set()

    def running(self) -> bool:
        return not self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def signal(self, signum: int) -> None:
        if self.running():  # reaped: the pid may be another process's by now
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        for line in self.log().splitlines():
            match = _STAT.search(line.strip())
            if match:
                stats[match[1]] = int(match[2])
            elif "'finish_reason':" in line:
                stats["finish_reason"] = line.split(":", 1)[1].strip(" ',}")
        return stats


class Crawl:
    """Workers of one crawl, in *directory*: ``worker-<n>.log`` and ``items-<n>.jsonl``."""

    def __init__(self, directory: Path, url: str, settings: dict[str, Any], wrapper: tuple[str, ...] = ()) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.url, self.settings, self.wrapper = directory, url, settings, wrapper
        self.workers: list[Worker] = []

    def start(self, count: int) -> None:
        for _ in range(count):
            n = len(self.workers)
            items = self.directory / f"items-{n}.jsonl"
            command = demo_support.crawl_command(self.url, items, self.settings)
            self.workers.append(Worker(command, self.directory / f"worker-{n}.log", items, self.wrapper))

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for n, worker in enumerate(self.workers):
            if not worker.wait(max(0.0, deadline - time.monotonic())):
                stacks = self.dump_stacks()
                self.stop()
                raise RuntimeError(f"worker {n} still running after {timeout:g} s, killed; stacks in "
                                   f"{stacks}:\n{worker.log()[-3000:]}")

    def dump_stacks(self) -> Path | None:
        """The Python stacks of the workers still running (py-spy), to see where they hang."""
        py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
        if py_spy is None:
            return None
        out = self.directory / "stacks.txt"
        with open(out, "w") as f:
            for n, worker in enumerate(self.workers):
                if worker.running():
                    f.write(f"== worker {n} (pid {worker.pid})\n")
                    f.flush()
                    subprocess.run([py_spy, "dump", "--locals", "--pid", str(worker.pid)], stdout=f,
                                   stderr=subprocess.STDOUT, timeout=60, check=False)
        return out

    def stop(self) -> None:
        for worker in self.workers:
            if worker.running():
                worker.kill()

    def check_exits(self, skip: frozenset[int] | set[int] = frozenset()) -> None:
        for n, worker in enumerate(self.workers):
            if n not in skip and worker.exit_code != 0:
                raise RuntimeError(f"worker {n} exited with {worker.exit_code}:\n{worker.log()[-3000:]}")

    def summary(self, products: int, saved: dict[int, int] | None = None) -> dict[str, int]:
        """Products lost and duplicated over the union of the feeds; *saved*: worker -> the
        bytes of its feed its checkpoint saved (a killed worker's tail was not saved)."""
        merged = self.directory / "all.jsonl"
        with open(merged, "wb") as out:
            for n, worker in enumerate(self.workers):
                data = worker.items.read_bytes() if worker.items.exists() else b""
                if saved is not None and n in saved:
                    data = data[:saved[n]]
                out.write(data)
        summary = demo_support.summarize(merged, self.directory / "no-shop-log", products)
        return {k: summary[k] for k in ("scraped", "lost", "duplicates", "malformed_lines")}


def worker_settings(contender: str, redis_url: str, concurrency: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    settings = {**COMMON, "CONCURRENT_REQUESTS": concurrency, "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency,
                **{k: v.format(redis=redis_url) if isinstance(v, str) else v for k, v in CONTENDERS[contender].items()}}
    return {**settings, **(extra or {})}


# Redis


class Redis:
    """The benchmark's own client of the shared server."""

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self.client = redis.Redis.from_url(url)

    def reset(self) -> None:
        """An empty server with zeroed statistics, for the next run."""
        self.client.flushall()
        self.client.config_resetstat()

    def cpu(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def commandstats(self) -> dict[str, int]:
        return {name.removeprefix("cmdstat_"): int(v["calls"])
                for name, v in self.client.info("commandstats").items()}


def script_names() -> dict[str, str]:
    """sha1 -> name of every Lua script the leased queues and the Redis store register."""
    from scrapy_checkpoint import distributed
    from scrapy_checkpoint.stores import redis as redis_store

    names = {}
    for module, prefix in ((distributed, "lease"), (redis_store, "store")):
        for name, value in vars(module).items():
            if isinstance(value, str) and "redis.call" in value:
                names[hashlib.sha1(value.encode()).hexdigest()] = f"{prefix} {name.strip('_').lower()}"
    return names


class Monitor:
    """Every command the server runs, from ``MONITOR``, counted: round trips by what sent them,
    and the commands Lua scripts ran."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 6379))
        self.sock.sendall(b"MONITOR\r\n")
        self.stream = self.sock.makefile("rb")
        if self.stream.readline().strip() != b"+OK":
            raise RuntimeError("MONITOR refused")
        self.scripts = script_names()
        self.round_trips: Counter[str] = Counter()
        self.in_scripts: Counter[str] = Counter()
        self.sentinel = f"bench-monitor-end-{os.getpid()}".encode()
        self._me: set[bytes] = set()
        self._thread = threading.Thread(target=self._read, name="bench-monitor", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        in_multi: set[bytes] = set()
        for line in self.stream:
            match = _MONITOR.match(line)
            if not match:
                continue
            client, command, first = match[1], match[2].upper(), match[3]
            if command == b"ECHO" and first == self.sentinel:
                return
            if client == b"lua":
                self.in_scripts[command.decode()] += 1
            elif command == b"MULTI":
                in_multi.add(client)
                self.round_trips["MULTI..EXEC"] += 1
            elif client in in_multi:
                if command in (b"EXEC", b"DISCARD"):
                    in_multi.discard(client)
            elif command == b"EVALSHA":
                self.round_trips[self.scripts.get((first or b"").decode(), "EVALSHA (other)")] += 1
            else:
                self.round_trips[command.decode()] += 1

    def stop(self, client: Any) -> dict[str, dict[str, int]]:
        client.echo(self.sentinel)
        self._thread.join(30)
        self.sock.close()
        # The benchmark's own commands (FLUSHALL, INFO...) ran before the crawl or after it.
        for own in ("ECHO", "INFO", "FLUSHALL", "CONFIG", "HELLO", "CLIENT"):
            self.round_trips.pop(own, None)
        return {"round_trips": dict(self.round_trips), "in_scripts": dict(self.in_scripts)}


# Throughput and CPU


def throughput_run(contender: str, count: int, url: str, shop: _services.RecordingShop, redis: Redis,
                   directory: Path, args: argparse.Namespace, monitor: bool = False) -> dict[str, Any]:
    """One crawl of the whole shop by *count* workers of *contender*."""
    redis.reset()
    shop.take()
    watcher = Monitor(redis.url) if monitor else None
    cpu_before = redis.cpu()
    crawl = Crawl(directory, url, worker_settings(contender, redis.url, args.concurrency))
    started = time.time()
    try:
        crawl.start(count)
        crawl.wait(args.crawl_timeout)
    finally:
        crawl.stop()
    redis_cpu = redis.cpu() - cpu_before
    commandstats = redis.commandstats()
    commands = watcher.stop(redis.client) if watcher else None
    arrivals = shop.take()
    crawl.check_exits()
    summary = crawl.summary(args.products)
    paths = Counter(p for _, p in arrivals)
    stats = [w.stats() for w in crawl.workers]
    run = {
        "contender": contender, "workers": count,
        "wall_s": max(w.ended for w in crawl.workers) - started,
        "crawl_s": max(t for t, _ in arrivals) - started if arrivals else None,
        "first_page_s": min(t for t, _ in arrivals) - started if arrivals else None,
        "worker_cpu_s": [w.cpu for w in crawl.workers],
        "worker_wall_s": [w.ended - w.started for w in crawl.workers],
        "worker_items": [demo_support.count_lines(w.items) for w in crawl.workers],
        "redis_cpu_s": redis_cpu,
        "downloads": len(arrivals), "extra_downloads": sum(n - 1 for n in paths.values() if n > 1),
        "finish_reasons": [s.get("finish_reason") for s in stats],
        "leases": {k: sum(s.get(f"checkpoint/leases/{k}", 0) for s in stats) for k in ("granted", "reclaimed", "lost")},
        "commandstats": commandstats,
        **summary,
    }
    if commands is not None:
        run["commands"] = commands
    if not (run["lost"] or run["duplicates"] or run["malformed_lines"]):  # kept otherwise, to look into
        shutil.rmtree(directory, ignore_errors=True)
    return run


def throughput(args: argparse.Namespace, redis: Redis, workdir: Path, rng: random.Random,
               rounds: int) -> dict[str, Any]:
    configs = [("plain", n) for n in args.plain_workers] + [("leased", n) for n in args.workers]
    runs: dict[str, list[dict[str, Any]]] = {label(*c): [] for c in configs}
    errors: list[str] = []
    with _services.recording_shop(args.products, 0.0) as (shop, url):
        for round_ in range(rounds):
            order = list(configs)
            rng.shuffle(order)
            for contender, count in order:
                try:
                    run = throughput_run(contender, count, url, shop, redis, workdir / f"tp-{contender}-{count}-{round_}", args)
                except Exception as exc:  # noqa: BLE001 - reported, the others go on
                    errors.append(f"{label(contender, count)} round {round_ + 1}: {type(exc).__name__}: {exc}")
                    print(f"FAILED: {errors[-1][:3000]}", file=sys.stderr)
                    continue
                runs[label(contender, count)].append(run)
                if run["lost"] or run["duplicates"] or run["malformed_lines"]:
                    errors.append(f"{label(contender, count)} round {round_ + 1}: {run['lost']} lost, "
                                  f"{run['duplicates']} duplicates, {run['malformed_lines']} malformed lines")
            print(f"throughput round {round_ + 1}/{rounds} done", file=sys.stderr)
        commands = {}
        if "commands" in args.parts:
            for contender in ("plain", "leased"):
                try:
                    run = throughput_run(contender, 1, url, shop, redis, workdir / f"cmd-{contender}", args, monitor=True)
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"commands {contender}: {type(exc).__name__}: {exc}")
                    print(f"FAILED: {errors[-1][:3000]}", file=sys.stderr)
                    continue
                commands[contender] = {"downloads": run["downloads"], "lost": run["lost"],
                                       "duplicates": run["duplicates"], **run["commands"]}
            print("commands run done", file=sys.stderr)
    return {"runs": runs, "commands": commands, "errors": errors}


def label(contender: str, count: int) -> str:
    return f"{contender}-{count}"


def summarize_throughput(result: dict[str, Any], products: int) -> dict[str, Any]:
    report = {}
    for name, runs in result["runs"].items():
        if not runs:
            continue
        cpus = [c for r in runs for c in r["worker_cpu_s"]]
        totals = [sum(r["worker_cpu_s"]) for r in runs]
        report[name] = {
            "runs": len(runs),
            "wall_s": med(r["wall_s"] for r in runs),
            "crawl_s": med(r["crawl_s"] for r in runs),
            "products_per_s": med(products / r["crawl_s"] for r in runs),
            "worker_cpu_s": med(cpus), "worker_cpu_min": min(cpus), "worker_cpu_max": max(cpus),
            "cpu_s": med(totals),
            "cpu_ms_per_product": med(1e3 * t / products for t in totals),
            "redis_cpu_s": med(r["redis_cpu_s"] for r in runs),
            "lost": sum(r["lost"] for r in runs), "duplicates": sum(r["duplicates"] for r in runs),
            "extra_downloads": sum(r["extra_downloads"] for r in runs),
            "leases_lost": sum(r["leases"]["lost"] for r in runs),
            "items_share": [round(med(sorted(r["worker_items"], reverse=True)[i] / products for r in runs), 3)
                            for i in range(runs[0]["workers"])],
        }
    return report


def print_throughput(report: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nOne CPU-bound crawl of {args.products:,} products (no latency, {args.concurrency} requests at once "
          f"per worker), {args.repeat} interleaved rounds (medians; lost/dup: summed over the rounds)")
    print(f"{'config':<10}{'workers':>8}{'wall s':>9}{'crawl s':>9}{'products/s':>12}{'speed-up':>10}"
          f"{'cpu s/worker':>20}{'cpu s all':>11}{'cpu ms/product':>16}{'redis cpu s':>13}{'lost':>6}{'dup':>6}"
          f"{'  items share':<14}")
    base = report.get("leased-1")
    for name, row in report.items():
        contender, count = name.rsplit("-", 1)
        speedup = f"{base['crawl_s'] / row['crawl_s']:.2f}x" if base and contender == "leased" else "-"
        spread = f"{row['worker_cpu_s']:.2f} [{row['worker_cpu_min']:.2f}-{row['worker_cpu_max']:.2f}]"
        print(f"{contender:<10}{count:>8}{row['wall_s']:>9.2f}{row['crawl_s']:>9.2f}{row['products_per_s']:>12.0f}"
              f"{speedup:>10}{spread:>20}{row['cpu_s']:>11.2f}{row['cpu_ms_per_product']:>16.3f}"
              f"{row['redis_cpu_s']:>13.2f}{row['lost']:>6}{row['duplicates']:>6}  "
              + "/".join(f"{s:.2f}" for s in row["items_share"]))
    plain, leased = report.get("plain-1"), report.get("leased-1")
    if plain and leased:
        print(f"lease cost, one worker: cpu {leased['cpu_s']:.2f} s against {plain['cpu_s']:.2f} s plain "
              f"scrapy-redis: ratio {leased['cpu_s'] / plain['cpu_s']:.3f}; redis-server cpu "
              f"{leased['redis_cpu_s']:.2f} against {plain['redis_cpu_s']:.2f} s")
    print("wall s: start of the workers to the last one's exit; crawl s: to the last page served; "
          "cpu: user+sys of each worker process (os.wait4 rusage at its exit); items share: each "
          "worker's share of the items, largest first")


def print_commands(commands: dict[str, Any]) -> None:
    if not commands:
        return
    print("\nRedis commands per downloaded request, one worker (MONITOR; MULTI..EXEC counts as one round trip)")
    for contender, entry in commands.items():
        downloads = entry["downloads"] or 1
        trips = entry["round_trips"]
        total = sum(trips.values())
        detail = ", ".join(f"{k} {v / downloads:.3f}" for k, v in sorted(trips.items(), key=lambda kv: -kv[1]))
        inner = sum(entry["in_scripts"].values())
        inner_detail = ", ".join(f"{k} {v / downloads:.2f}" for k, v in
                                 sorted(entry["in_scripts"].items(), key=lambda kv: -kv[1])[:8])
        print(f"{contender:<8} {entry['downloads']:,} requests: {total / downloads:.3f} round trips a request "
              f"({detail})")
        if inner:
            print(f"{'':<8} commands run in scripts: {inner / downloads:.2f} a request ({inner_detail}...)")
    print("lease pop/push/ack/renew, store ...: EVALSHA of that Lua script (renew: the heartbeats and the "
          "flush's confirm of what it records); MULTI..EXEC: scrapy-redis's pop")


# Reclaim latency


def held_urls(redis: Redis, pid: int) -> dict[str, tuple[float, str]]:
    """token -> (deadline, epoch seconds; URL) of the leases worker *pid* holds."""
    mark = f":{pid}:".encode()
    tokens = [(t, s) for t, s in redis.client.zrange(DEADLINES_KEY, 0, -1, withscores=True) if mark in t]
    if not tokens:
        return {}
    data = redis.client.hmget(LEASED_KEY, [t for t, _ in tokens])
    out = {}
    for (token, score), raw in zip(tokens, data):
        if raw is not None:
            out[token.decode()] = (score / 1e3, pickle.loads(raw)["url"])
    return out


def shop_path(url: str) -> str:
    """The path the shop records for *url* (the start URL has none: the shop sees "/")."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def saved_length(redis_url: str, log: str) -> int:
    """Bytes of a killed worker's feed that the checkpoint saved: a checkpoint of its own, or
    its entry in the one the workers share."""
    from scrapy_checkpoint.stores.redis import RedisCheckpointStore

    found = re.search(r"Checkpoint (\S+) started in \S+(?: by worker (\S+);)?", log)
    if found:
        checkpoint_id, worker = found.groups()
    else:
        found = re.search(r"Worker (\S+) (?:joined|took over) checkpoint (\S+) ", log)
        if found is None:
            return 0  # it never opened a checkpoint, so saved nothing
        worker, checkpoint_id = found.groups()
    store = RedisCheckpointStore(redis_url)
    store.open()
    try:
        checkpoint = store.get(checkpoint_id)
    finally:
        store.close()
    outputs = checkpoint.pipeline_data.outputs if checkpoint is not None else []
    mine = [entry for entry in outputs if entry.get("worker") in (None, worker)]
    return int(mine[0]["length"]) if mine else 0


def reclaim_run(timeout: float, url: str, shop: _services.RecordingShop, redis: Redis, directory: Path,
                args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    redis.reset()
    shop.take()
    settings = worker_settings("leased", redis.url, args.reclaim_concurrency, {"CHECKPOINT_LEASE_TIMEOUT": timeout})
    crawl = Crawl(directory, url, settings)
    try:
        crawl.start(args.reclaim_workers)
        started = time.time()
        patience = time.monotonic() + args.crawl_timeout
        # Under way: --reclaim-at of the product pages served. Not counted from the feeds: a
        # leased page's items reach its feed in the flush that records it, and a kill timed by
        # them would land next to a flush. Then a random moment within the next two flush
        # intervals and heartbeats, and the victim: a worker holding leases.
        while sum(1 for _, p in shop.since(0) if p.startswith("/product/")) < args.reclaim_products * args.reclaim_at:
            if not all(w.running() for w in crawl.workers) or time.monotonic() > patience:
                raise RuntimeError("the crawl did not get under way")
            time.sleep(0.02)
        from scrapy_checkpoint.settings import DEFAULTS

        time.sleep(rng.uniform(0.0, 2 * max(DEFAULTS["CHECKPOINT_FLUSH_INTERVAL"], timeout / 3)))
        busy = [n for n, w in enumerate(crawl.workers) if w.running() and held_urls(redis, w.pid)]
        if not busy:
            raise RuntimeError("no worker holds a lease")
        victim = rng.choice(busy)
        worker = crawl.workers[victim]
        while True:
            worker.signal(signal.SIGSTOP)
            stopped = time.time()
            held = held_urls(redis, worker.pid)
            if held:
                break
            worker.signal(signal.SIGCONT)
            if not worker.running() or time.monotonic() > patience:
                raise RuntimeError(f"worker {victim} held no lease")
            time.sleep(0.01)
        queue_at_stop = redis.client.zcard(QUEUE_KEY)
        worker.kill()
        mark = len(shop.arrivals)
        paths = {shop_path(u): token for token, (_, u) in held.items()}
        reclaimed: dict[str, float] = {}
        again: dict[str, float] = {}
        queue_at_expiry = None
        last_deadline = max(d for d, _ in held.values())
        give_up = time.monotonic() + timeout + 60
        while len(again) < len(paths) and time.monotonic() < give_up:
            now = time.time()
            pending = [t for t in held if t not in reclaimed]
            if pending:
                pipe = redis.client.pipeline(transaction=False)
                for token in pending:
                    pipe.zscore(DEADLINES_KEY, token)
                for token, score in zip(pending, pipe.execute()):
                    if score is None:
                        reclaimed[token] = now
            if queue_at_expiry is None and now >= last_deadline:
                queue_at_expiry = redis.client.zcard(QUEUE_KEY)
            survivors_running = any(w.running() for n, w in enumerate(crawl.workers) if n != victim)
            for t, path in shop.since(mark):
                mark += 1
                # Not before the lease expired: a request the victim sent just before its stop
                # may reach the shop late.
                if path in paths and path not in again and t >= held[paths[path]][0] - 0.005:
                    again[path] = t
            if not survivors_running:
                break
            time.sleep(0.02)
        for n, w in enumerate(crawl.workers):
            if n != victim:
                w.wait(max(1.0, patience - time.monotonic()))
    finally:
        crawl.stop()
    crawl.check_exits(skip={victim})
    summary = crawl.summary(args.reclaim_products, saved={victim: saved_length(redis.url, worker.log())})
    per_url = []
    for token, (deadline, full_url) in held.items():
        path = shop_path(full_url)
        per_url.append({
            "path": path, "token": token, "deadline_s": deadline - stopped,
            "reclaimed_s": reclaimed[token] - stopped if token in reclaimed else None,
            "again_s": again[path] - stopped if path in again else None,
        })
    survivors = [w.stats() for n, w in enumerate(crawl.workers) if n != victim]
    never_again = sum(1 for u in per_url if u["again_s"] is None)
    for entry in per_url:
        if entry["again_s"] is None:  # every time the shop served it, from the stop
            entry["served_s"] = [round(t - stopped, 3) for t, p in shop.since(0) if p == entry["path"]]
    if not (summary["lost"] or never_again):  # kept otherwise, to look into
        shutil.rmtree(directory, ignore_errors=True)
    return {
        "lease_timeout": timeout, "workers": args.reclaim_workers, "stopped_at_s": stopped - started,
        "held": len(held), "queue_at_stop": queue_at_stop, "queue_at_expiry": queue_at_expiry,
        "never_again": never_again, "urls": per_url,
        "never_again_urls": [u for u in per_url if u["again_s"] is None],
        "survivor_leases": {k: sum(s.get(f"checkpoint/leases/{k}", 0) for s in survivors)
                            for k in ("granted", "reclaimed", "lost")},
        **summary,
    }


def reclaim(args: argparse.Namespace, redis: Redis, workdir: Path, rng: random.Random) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {str(t): [] for t in args.lease_timeouts}
    errors: list[str] = []
    with _services.recording_shop(args.reclaim_products, args.reclaim_latency) as (shop, url):
        for round_ in range(args.repeat):
            order = list(args.lease_timeouts)
            rng.shuffle(order)
            for timeout in order:
                try:
                    run = reclaim_run(timeout, url, shop, redis, workdir / f"rc-{timeout}-{round_}", args, rng)
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"reclaim {timeout:g} s round {round_ + 1}: {type(exc).__name__}: {exc}")
                    print(f"FAILED: {errors[-1][:3000]}", file=sys.stderr)
                    continue
                runs[str(timeout)].append(run)
                if run["lost"] or run["never_again"]:
                    errors.append(f"reclaim {timeout:g} s round {round_ + 1}: {run['lost']} lost, "
                                  f"{run['never_again']} held URLs never downloaded again")
            print(f"reclaim round {round_ + 1}/{args.repeat} done", file=sys.stderr)
    return {"runs": runs, "errors": errors}


def summarize_reclaim(result: dict[str, Any]) -> dict[str, Any]:
    report = {}
    for timeout, runs in result["runs"].items():
        if not runs:
            continue
        urls = [u for r in runs for u in r["urls"]]

        def stat(key: str, urls: list[dict[str, Any]] = urls) -> dict[str, float | None]:
            values = [u[key] for u in urls if u[key] is not None]
            return {"median": med(values), "max": max(values) if values else None}

        after = [u["again_s"] - u["deadline_s"] for u in urls if u["again_s"] is not None]
        report[timeout] = {
            "runs": len(runs), "held": [r["held"] for r in runs],
            "deadline_s": stat("deadline_s"), "reclaimed_s": stat("reclaimed_s"), "again_s": stat("again_s"),
            "again_after_deadline_s": {"median": med(after), "max": max(after) if after else None},
            "run_max_again_s": [max((u["again_s"] for u in r["urls"] if u["again_s"] is not None), default=None)
                                for r in runs],
            "queue_at_expiry": [r["queue_at_expiry"] for r in runs],
            "lost": sum(r["lost"] for r in runs), "duplicates": sum(r["duplicates"] for r in runs),
            "never_again": sum(r["never_again"] for r in runs),
            "survivor_leases_lost": sum(r["survivor_leases"]["lost"] for r in runs),
        }
    return report


def print_reclaim(report: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nReclaim: {args.reclaim_workers} workers, {args.reclaim_products:,} products "
          f"({args.reclaim_latency * 1e3:g} ms a page, {args.reclaim_concurrency} requests at once per worker); "
          f"one SIGSTOPped while holding leases, then SIGKILLed; {args.repeat} runs per timeout, every held URL pooled")
    print("seconds from the stop, median / max over the URLs it held:")
    print(f"{'lease timeout':>13}{'runs':>6}{'held':>22}{'deadline':>16}{'reclaimed':>16}{'downloaded again':>18}"
          f"{'again - deadline':>18}{'lost':>6}{'dup':>6}{'live lost':>11}  queue at expiry")

    def pair(d: dict[str, float | None]) -> str:
        return "-" if d["median"] is None else f"{d['median']:.2f} / {d['max']:.2f}"

    for timeout, row in report.items():
        print(f"{float(timeout):>12g}s{row['runs']:>6}{'/'.join(map(str, row['held'])):>22}{pair(row['deadline_s']):>16}"
              f"{pair(row['reclaimed_s']):>16}{pair(row['again_s']):>18}{pair(row['again_after_deadline_s']):>18}"
              f"{row['lost']:>6}{row['duplicates']:>6}{row['survivor_leases_lost']:>11}  "
              + "/".join("-" if q is None else str(q) for q in row["queue_at_expiry"]))
    print("held: leases of the stopped worker, per run; deadline: when they expired (the last heartbeat, every "
          "timeout/3, set it); reclaimed: the token left the deadlines (a pop put it back); live lost: leases "
          "the surviving workers lost (expired before their heartbeat); queue at expiry: requests in the "
          "queue when the last of them expired, per run (0: the survivors were idle, and pop only at "
          "Scrapy's 5 s idle heartbeat)")


# Instructions


def count_instructions(contender: str, products: int, url: str, directory: Path, args: argparse.Namespace) -> int:
    """Instructions of a one-worker crawl under callgrind (all its threads), on its own redis-server."""
    from scrapy.settings import Settings

    from scrapy_checkpoint.settings import CheckpointSettings

    defaults = CheckpointSettings.from_settings(Settings({"CHECKPOINT_ENABLED": True}))
    directory.mkdir(parents=True)
    with _services.redis_server(directory) as redis_url:
        if redis_url is None:
            raise RuntimeError("no redis-server")
        # A crawl runs some 40 times slower under callgrind: timers stretched alike.
        extra = {"CHECKPOINT_FLUSH_INTERVAL": defaults.flush_interval * args.slowdown,
                 "CHECKPOINT_LEASE_TIMEOUT": defaults.lease_timeout * args.slowdown} if CONTENDERS[contender].get("CHECKPOINT_ENABLED") else {}
        crawl = Crawl(directory / "crawl", url, worker_settings(contender, redis_url, args.concurrency, extra),
                      wrapper=("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"))
        try:
            crawl.start(1)
            crawl.wait(args.crawl_timeout * 10)
        finally:
            crawl.stop()
        crawl.check_exits()
        summary = crawl.summary(products)
        if summary["lost"] or summary["duplicates"]:
            raise RuntimeError(f"{contender} under callgrind: {summary}")
        collected = re.findall(r"Collected : (\d+)", crawl.workers[0].log())
        if not collected:
            raise RuntimeError(f"callgrind printed no count:\n{crawl.workers[0].log()[-3000:]}")
        return int(collected[-1])


def instructions(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    small, large = args.instructions
    with contextlib.ExitStack() as stack:
        urls = {n: stack.enter_context(_services.recording_shop(n, 0.0))[1] for n in (small, large)}
        jobs = [(c, n) for c in args.contenders for n in (small, large)]
        with ThreadPoolExecutor(args.jobs) as pool:
            counts = list(pool.map(lambda job: count_instructions(
                job[0], job[1], urls[job[1]], workdir / f"ir-{job[0]}-{job[1]}", args), jobs))
    by: dict[str, dict[int, int]] = {}
    for (contender, n), count in zip(jobs, counts):
        by.setdefault(contender, {})[n] = count
    report = {c: {"instructions": {str(n): v for n, v in counts.items()},
                  "per_product": round((counts[large] - counts[small]) / (large - small))} for c, counts in by.items()}
    base = report[args.contenders[0]]["per_product"]
    for entry in report.values():
        entry["per_product_ratio"] = round(entry["per_product"] / base, 4)
    print(f"\nInstructions of the one-worker crawl (callgrind), shops of {small} and {large} products")
    print(f"{'contender':<10}{'Ginstr ' + str(small):>14}{'Ginstr ' + str(large):>14}{'per product':>13}{'ratio':>8}")
    for contender, entry in report.items():
        i = entry["instructions"]
        print(f"{contender:<10}{i[str(small)] / 1e9:>14.3f}{i[str(large)] / 1e9:>14.3f}"
              f"{entry['per_product'] / 1e6:>12.2f}M{entry['per_product_ratio']:>8.4f}")
    print(f"ratio: per product, to {args.contenders[0]}")
    if {"plain", "leased", "checkpoint", "scrapy"} <= set(report):
        per = {c: report[c]["per_product"] for c in report}
        # What scrapy-redis with leases adds over the checkpointed crawl on Scrapy's scheduler,
        # minus what plain scrapy-redis adds over plain Scrapy: the leases' own cost.
        leases = (per["leased"] - per["checkpoint"]) - (per["plain"] - per["scrapy"])
        report["lease_cost_per_product"] = {"instructions": leases, "ratio_to_plain": round(leases / per["plain"], 4)}
        print(f"the leases' own cost, (leased - checkpoint) - (plain - scrapy): {leases / 1e6:.2f}M instructions "
              f"a product page, {100 * leases / per['plain']:.1f} % of plain scrapy-redis's")
    return report


# Main


def med(values: Any) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _numbers(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        return [kind(v) for v in text.split(",") if v]
    return parse


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def source_state() -> dict[str, Any]:
    """The commit and whether the product code had uncommitted changes (others edit it)."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout.rstrip()
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": git("status", "--porcelain", "--", "scrapy_checkpoint").splitlines(),
            "distributed_py_sha1": hashlib.sha1((ROOT / "scrapy_checkpoint" / "distributed.py").read_bytes()).hexdigest()[:12]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=_numbers(str), default=["throughput", "commands", "reclaim"],
                        help="comma-separated subset of throughput,commands,reclaim")
    parser.add_argument("--products", type=int, default=1200, help="products of the throughput crawl")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every configuration")
    parser.add_argument("--workers", type=_numbers(int), default=[1, 2, 3],
                        help="worker counts of the leased crawls (throughput)")
    parser.add_argument("--plain-workers", type=_numbers(int), default=[1],
                        help="worker counts of plain scrapy-redis crawls (throughput)")
    parser.add_argument("--concurrency", type=int, default=32, help="CONCURRENT_REQUESTS of each worker (throughput)")
    parser.add_argument("--lease-timeouts", type=_numbers(float), default=[2.0, 5.0],
                        help="CHECKPOINT_LEASE_TIMEOUT values of the reclaim runs")
    parser.add_argument("--reclaim-workers", type=int, default=3)
    parser.add_argument("--reclaim-products", type=int, default=1200)
    parser.add_argument("--reclaim-at", type=float, default=0.1,
                        help="share of the product pages served before a worker is killed (reclaim)")
    parser.add_argument("--reclaim-latency", type=float, default=0.02, help="seconds a page (reclaim)")
    parser.add_argument("--reclaim-concurrency", type=int, default=8, help="CONCURRENT_REQUESTS (reclaim)")
    parser.add_argument("--instructions", type=_numbers(int), metavar="SMALL,LARGE",
                        help="count instructions under callgrind at these two shop sizes instead")
    parser.add_argument("--contenders", type=_numbers(str), default=["plain", "leased"],
                        help="with --instructions, a subset of plain,leased,checkpoint,scrapy (the first "
                             "is the reference; all four also give the leases' own cost)")
    parser.add_argument("--jobs", type=int, default=2, help="callgrind runs at once (--instructions)")
    parser.add_argument("--slowdown", type=float, default=40.0,
                        help="CHECKPOINT_FLUSH_INTERVAL and CHECKPOINT_LEASE_TIMEOUT multiplier under callgrind")
    parser.add_argument("--crawl-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if unknown := set(args.parts) - {"throughput", "commands", "reclaim"}:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if args.instructions is not None:
        if len(args.instructions) != 2 or len(set(args.instructions)) != 2 or min(args.instructions) < 1:
            parser.error("--instructions takes two different shop sizes, e.g. 300,1000")
        args.instructions = sorted(args.instructions)
        if shutil.which("valgrind") is None:
            parser.error("--instructions needs valgrind (apt install valgrind)")
    if unknown := set(args.contenders) - set(CONTENDERS):
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    if args.reclaim_workers < 2:
        parser.error("--reclaim-workers must be at least 2: one is killed")
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    summary: dict[str, Any] = {"bench": "distributed", "source": source_state(), "cpus": os.cpu_count()}
    errors: list[str] = []
    try:
        if args.instructions:
            summary.update(mode="instructions", sizes=args.instructions, slowdown=args.slowdown,
                           results=instructions(args, workdir))
        else:
            summary.update(mode="time", products=args.products, repeat=args.repeat, concurrency=args.concurrency)
            (workdir / "redis").mkdir()
            with _services.redis_server(workdir / "redis") as redis_url:
                if redis_url is None:
                    print("no redis-server: nothing to measure", file=sys.stderr)
                    return 1
                redis = Redis(redis_url)
                if "throughput" in args.parts or "commands" in args.parts:
                    result = throughput(args, redis, workdir, rng, args.repeat if "throughput" in args.parts else 0)
                    errors += result["errors"]
                    report = summarize_throughput(result, args.products)
                    if report:
                        print_throughput(report, args)
                    print_commands(result["commands"])
                    summary["throughput"] = {"results": report, "commands": result["commands"],
                                             "runs": {k: [{x: y for x, y in r.items() if x != "commandstats"} for r in v]
                                                      for k, v in result["runs"].items()},
                                             "commandstats": {k: [r["commandstats"] for r in v]
                                                              for k, v in result["runs"].items()}}
                if "reclaim" in args.parts:
                    result = reclaim(args, redis, workdir, rng)
                    errors += result["errors"]
                    report = summarize_reclaim(result)
                    if report:
                        print_reclaim(report, args)
                    summary["reclaim"] = {"workers": args.reclaim_workers, "products": args.reclaim_products,
                                          "latency": args.reclaim_latency, "concurrency": args.reclaim_concurrency,
                                          "results": report,
                                          "runs": {k: [{x: y for x, y in r.items() if x != "urls"} for r in v]
                                                   for k, v in result["runs"].items()}}
    finally:
        if errors:  # the failed runs' logs, feeds and stacks
            print(f"failed runs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    for error in errors:
        print(f"ERROR: {error.splitlines()[0]}")
    summary["errors"] = errors
    # Others commit while it runs: what the last workers ran.
    summary["source_at_end"] = source_state()
    print("BENCH_JSON " + json.dumps(_round(summary)))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
