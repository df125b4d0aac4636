"""CPU and wall-time overhead of checkpointing on a CPU-bound crawl of the demo shop.

Runs the contenders interleaved (round-robin, in a new random order each round) against
one shop with no latency, and prints per contender the median crawler CPU time (user +
system, of the `scrapy crawl` process alone) and wall time, and their ratios to the plain
crawl. Last line: ``BENCH_JSON {...}``.

CPU time on a shared machine is noisy: a few percent from run to run, more than the
overhead measured. ``--instructions`` counts instead the instructions each crawl process
runs, under valgrind's callgrind, once per contender at two sizes of the shop: a count
that hardly depends on what else the machine does (so runs go two at a time; timers that
run per second of wall time still move it about 0.5 %), and whose
difference between the sizes is the cost per product page, without start-up costs. A crawl
runs some 40 times slower under callgrind, so the extension's flush timer
(``CHECKPOINT_FLUSH_INTERVAL``, 2 s) is stretched by ``--slowdown`` for those runs: batches
then hold as many events as at full speed, and a flush's fixed cost weighs as much.

    python bench/overhead.py --rounds 7 --products 3000
    python bench/overhead.py --contenders off,sqlite,jobdir
    python bench/overhead.py --instructions 300,1000 --contenders off,sqlite,sqlite-signal
    python bench/overhead.py --instructions 300,1000
    python bench/overhead.py --instructions 300,1000 --contenders off,sqlite --ablate store
"""

from __future__ import annotations

import argparse
import re
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "example_project"))
sys.path.insert(0, str(ROOT / "bench"))

import demo_support  # noqa: E402
from scrapy.settings import Settings  # noqa: E402

from scrapy_checkpoint.settings import CheckpointSettings  # noqa: E402
from _services import mongo_server, redis_server  # noqa: E402

COMMON = {
    "CONCURRENT_REQUESTS": 32,
    "CONCURRENT_REQUESTS_PER_DOMAIN": 32,
    "LOG_LEVEL": "WARNING",
    "CHECKPOINT_ENABLED": False,
}


#: Scrapy's feed exporter in place of the add-on's CheckpointFeedExporter.
PLAIN_FEED = {"scrapy_checkpoint.CheckpointFeedExporter": None, "scrapy.extensions.feedexport.FeedExporter": 0}


def contenders(redis_url: str | None, mongo_uri: str | None) -> dict[str, dict]:
    """Settings per contender; ``{state}`` and ``{run}`` are fresh for every run."""
    out = {
        "off": {},
        "sqlite": {"CHECKPOINT_ENABLED": True},
        # The same crawl with Scrapy's own FeedExporter writing the feed: what the
        # exactly-once feed handling costs is "sqlite" against this.
        "sqlite-plainfeed": {"CHECKPOINT_ENABLED": True, "EXTENSIONS": PLAIN_FEED},
        "jobdir": {"JOBDIR": "{state}"},
    }
    mongo = {"CHECKPOINT_MONGO_URI": mongo_uri, "CHECKPOINT_MONGO_DATABASE": "bench_{run}"}
    if mongo_uri:
        out["mongodb"] = {"CHECKPOINT_ENABLED": True, **mongo}
    if redis_url and mongo_uri:
        out["hybrid"] = {"CHECKPOINT_ENABLED": True, "CHECKPOINT_REDIS_URL": redis_url, **mongo}
    if redis_url:
        out["redis"] = {"CHECKPOINT_ENABLED": True, "CHECKPOINT_REDIS_URL": redis_url}
    if redis_url and importlib.util.find_spec("scrapy_redis") is None:
        print("scrapy-redis is not installed (pip install -e '.[bench]'): skipping it", file=sys.stderr)
    elif redis_url:
        out["scrapy-redis"] = {
            "SCHEDULER": "scrapy_redis.scheduler.Scheduler",
            "DUPEFILTER_CLASS": "scrapy_redis.dupefilter.RFPDupeFilter",
            "SCHEDULER_PERSIST": True,
            "REDIS_URL": redis_url,
        }
    return out


#: Asked for as ``<store>-signal`` (``sqlite-signal``): that store's crawl without the add-on's
#: CheckpointItemPipeline, as configured by hand without it: the extension learns which items
#: are scraped from Scrapy's item_scraped signal.
NO_ITEM_PIPELINE = {"ITEM_PIPELINES": {"scrapy_checkpoint.CheckpointItemPipeline": None}}


def crawl_command(url: str, name: str, extra: dict, workdir: Path, run: int) -> tuple[list[str], Path, Path]:
    """The ``scrapy crawl`` command of one run, with its state directory and items file."""
    state = workdir / f"{name}-{run}"
    settings = {**COMMON, "CHECKPOINT_DIR": str(state), **extra}
    settings = {k: (v.format(state=state, run=f"{name}_{run}".replace("-", "_")) if isinstance(v, str) else v)
                for k, v in settings.items()}
    items = workdir / f"items-{name}-{run}.jsonl"
    command = demo_support.crawl_command(url, items, settings)
    if name == "scrapy-redis":
        # A persisting scheduler keeps its queue and dupefilter keys: give each run its own.
        command += ["-s", f"SCHEDULER_QUEUE_KEY=bench{run}:requests",
                    "-s", f"SCHEDULER_DUPEFILTER_KEY=bench{run}:dupefilter"]
    return command, state, items


def run_once(url: str, name: str, extra: dict, workdir: Path, run: int, products: int,
             wrapper: tuple[str, ...] = ()) -> tuple[float, float, str]:
    """One crawl, under *wrapper* if any; returns (cpu seconds of the crawler process,
    wall seconds, its stderr)."""
    command, state, items = crawl_command(url, name, extra, workdir, run)
    log = workdir / f"stderr-{name}-{run}.txt"
    started = time.perf_counter()
    with open(log, "wb") as err:
        process = subprocess.Popen([*wrapper, *command], cwd=demo_support.PROJECT_DIR,
                                   stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)  # rusage: the CPU time of that process alone
    wall = time.perf_counter() - started
    stderr = log.read_text(errors="replace")
    log.unlink()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{name} crawl failed:\n{stderr[-3000:]}")
    lines = demo_support.count_lines(items)
    if lines < products:
        raise RuntimeError(f"{name} crawl scraped {lines} of {products} products:\n{stderr[-3000:]}")
    shutil.rmtree(state, ignore_errors=True)
    items.unlink()
    return usage.ru_utime + usage.ru_stime, wall, stderr


def count_instructions(url: str, name: str, extra: dict, workdir: Path, run: int, products: int) -> int:
    """Instructions the crawl process ran, counted by callgrind (all its threads)."""
    valgrind = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")
    _, _, stderr = run_once(url, name, extra, workdir, run, products, valgrind)
    collected = re.findall(r"Collected : (\d+)", stderr)
    if not collected:
        raise RuntimeError(f"callgrind printed no count for {name}:\n{stderr[-3000:]}")
    return int(collected[-1])


def instructions(table: dict[str, dict], sizes: list[int], workdir: Path, jobs: int,
                 slowdown: float) -> dict[str, dict]:
    """Per contender: instructions at each shop size, their ratio to the plain crawl, and
    the ratio of the per-product cost (the difference between the two sizes)."""
    interval = CheckpointSettings.from_settings(Settings({"CHECKPOINT_ENABLED": True})).flush_interval
    table = {name: {**extra, "CHECKPOINT_FLUSH_INTERVAL": interval * slowdown} if extra.get("CHECKPOINT_ENABLED")
             else extra for name, extra in table.items()}
    shops = {n: demo_support.start_shop(products=n, latency=0.0) for n in sizes}
    try:
        runs = [(name, n) for name in table for n in sizes]
        with ThreadPoolExecutor(jobs) as pool:  # run numbers from 1000: apart from timed runs' state
            counts = list(pool.map(
                lambda number, name, n: count_instructions(shops[n][1], name, table[name], workdir, number, n),
                range(1000, 1000 + len(runs)), *zip(*runs)))
    finally:
        for shop, _ in shops.values():
            demo_support.stop_shop(shop)
    by_name: dict[str, dict[int, int]] = {}
    for (name, n), count in zip(runs, counts):
        by_name.setdefault(name, {})[n] = count
    small, large = min(sizes), max(sizes)
    off = by_name.get("off")
    report = {}
    for name, count in by_name.items():
        per_product = (count[large] - count[small]) / (large - small)
        entry: dict[str, Any] = {"instructions": {str(n): c for n, c in count.items()},
                                 "per_product": round(per_product)}
        if off:
            entry["ratio"] = {str(n): round(count[n] / off[n], 4) for n in sizes}
            entry["per_product_ratio"] = round(per_product / ((off[large] - off[small]) / (large - small)), 4)
        report[name] = entry
    return report


def timed(table: dict[str, dict], args: argparse.Namespace, workdir: Path) -> dict[str, dict]:
    """Interleaved rounds of every contender: median CPU and wall time, and their ratios."""
    rng = random.Random(args.seed)
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in table}
    shop, url = demo_support.start_shop(products=args.products, latency=0.0)
    try:
        for round_ in range(args.rounds):
            order = list(table)
            rng.shuffle(order)
            for name in order:
                cpu, wall, _ = run_once(url, name, table[name], workdir, round_, args.products)
                results[name].append((cpu, wall))
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        demo_support.stop_shop(shop)
    base_cpu = statistics.median(c for c, _ in results["off"]) if "off" in results else None
    base_wall = statistics.median(w for _, w in results["off"]) if "off" in results else None
    report = {}
    print(f"\nCPU-bound crawl of {args.products} products, {args.rounds} interleaved rounds (medians)")
    print(f"{'contender':<14}{'cpu s':>9}{'wall s':>9}{'cpu ratio':>11}{'wall ratio':>12}")
    for name, runs in results.items():
        cpu = statistics.median(c for c, _ in runs)
        wall = statistics.median(w for _, w in runs)
        cpu_ratio = cpu / base_cpu if base_cpu else None
        wall_ratio = wall / base_wall if base_wall else None
        report[name] = {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
                        "cpu_ratio": cpu_ratio and round(cpu_ratio, 4),
                        "wall_ratio": wall_ratio and round(wall_ratio, 4),
                        "cpu_runs": [round(c, 3) for c, _ in runs]}
        print(f"{name:<14}{cpu:>9.2f}{wall:>9.2f}{cpu_ratio or 0:>11.3f}{wall_ratio or 0:>12.3f}")
    return report


def print_instructions(report: dict[str, dict], sizes: list[int]) -> None:
    small, large = min(sizes), max(sizes)
    print(f"\nInstructions of the crawl process (callgrind), shops of {small} and {large} products")
    print(f"{'contender':<14}{'Ginstr ' + str(small):>14}{'Ginstr ' + str(large):>14}"
          f"{'ratio ' + str(small):>12}{'ratio ' + str(large):>12}{'per product':>13}{'ratio':>8}")
    for name, entry in report.items():
        count, ratio = entry["instructions"], entry.get("ratio", {})
        print(f"{name:<14}{count[str(small)] / 1e9:>14.3f}{count[str(large)] / 1e9:>14.3f}"
              f"{ratio.get(str(small), 0):>12.4f}{ratio.get(str(large), 0):>12.4f}"
              f"{entry['per_product'] / 1e6:>12.2f}M{entry.get('per_product_ratio', 0):>8.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--products", type=int, default=3000)
    parser.add_argument("--contenders", help="comma-separated subset (default: all available)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--instructions", metavar="SMALL,LARGE",
                        help="count instructions under callgrind at these two shop sizes instead of timing")
    parser.add_argument("--jobs", type=int, default=2, help="callgrind runs at once (--instructions)")
    parser.add_argument("--ablate", metavar="PARTS",
                        help="switch these parts of scrapy-checkpoint off in the crawls, to measure them "
                             "(see bench/ablation/sitecustomize.py)")
    parser.add_argument("--slowdown", type=float, default=40.0,
                        help="how much slower a crawl runs under callgrind: CHECKPOINT_FLUSH_INTERVAL is "
                             "multiplied by it (--instructions)")
    args = parser.parse_args(argv)
    sizes = sorted(int(n) for n in args.instructions.split(",")) if args.instructions else []
    if args.instructions and (len(sizes) != 2 or sizes[0] == sizes[1] or sizes[0] < 1):
        parser.error("--instructions takes two different shop sizes, e.g. 300,1000")
    if sizes and shutil.which("valgrind") is None:
        parser.error("--instructions needs valgrind (apt install valgrind)")
    if args.ablate:  # read by bench/ablation/sitecustomize.py in every crawl process
        os.environ["CHECKPOINT_BENCH_ABLATE"] = args.ablate
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "bench" / "ablation"), *filter(None, [os.environ.get("PYTHONPATH")])])
    workdir = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        with redis_server(workdir) as redis_url, mongo_server(workdir) as mongo_uri:
            table = contenders(redis_url, mongo_uri)
            if args.contenders:
                table = {k: table[k] if k in table else {**table[k.removesuffix("-signal")], **NO_ITEM_PIPELINE}
                         for k in args.contenders.split(",")}
            if sizes:
                report = instructions(table, sizes, workdir, args.jobs, args.slowdown)
                print_instructions(report, sizes)
                summary = {"bench": "overhead", "mode": "instructions", "sizes": sizes,
                           "slowdown": args.slowdown, "ablate": args.ablate, "results": report}
            else:
                report = timed(table, args, workdir)
                summary = {"bench": "overhead", "mode": "time", "products": args.products,
                           "rounds": args.rounds, "results": report}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("BENCH_JSON " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
