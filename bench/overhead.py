"""CPU and wall-time overhead of checkpointing on a CPU-bound crawl of the demo shop.

Runs the contenders interleaved (round-robin, in a new random order each round) against
one shop with no latency, and prints per contender the median crawler CPU time (user +
system, of the `scrapy crawl` process alone) and wall time, and their ratios to the plain
crawl. Last line: ``BENCH_JSON {...}``.

    python bench/overhead.py --rounds 7 --products 3000
    python bench/overhead.py --contenders off,sqlite,jobdir
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "example_project"))
sys.path.insert(0, str(ROOT / "bench"))

import demo_support  # noqa: E402
from _services import mongo_server, redis_server  # noqa: E402

COMMON = {
    "CONCURRENT_REQUESTS": 32,
    "CONCURRENT_REQUESTS_PER_DOMAIN": 32,
    "LOG_LEVEL": "WARNING",
    "CHECKPOINT_ENABLED": False,
}


def contenders(redis_url: str | None, mongo_uri: str | None) -> dict[str, dict]:
    """Settings per contender; ``{state}`` and ``{run}`` are fresh for every run."""
    out = {
        "off": {},
        "sqlite": {"CHECKPOINT_ENABLED": True},
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


def run_once(url: str, name: str, extra: dict, workdir: Path, run: int, products: int) -> tuple[float, float]:
    """One crawl; returns (cpu seconds of the crawler process, wall seconds)."""
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
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=demo_support.PROJECT_DIR, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{name} crawl failed:\n{stderr[-3000:]}")
    lines = demo_support.count_lines(items)
    if lines < products:
        raise RuntimeError(f"{name} crawl scraped {lines} of {products} products:\n{stderr[-3000:]}")
    shutil.rmtree(state, ignore_errors=True)
    items.unlink()
    return usage.ru_utime + usage.ru_stime, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--products", type=int, default=3000)
    parser.add_argument("--contenders", help="comma-separated subset (default: all available)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    shop, url = demo_support.start_shop(products=args.products, latency=0.0)
    try:
        with redis_server(workdir) as redis_url, mongo_server(workdir) as mongo_uri:
            table = contenders(redis_url, mongo_uri)
            if args.contenders:
                table = {k: table[k] for k in args.contenders.split(",")}
            results: dict[str, list[tuple[float, float]]] = {k: [] for k in table}
            for round_ in range(args.rounds):
                order = list(table)
                rng.shuffle(order)
                for name in order:
                    results[name].append(run_once(url, name, table[name], workdir, round_, args.products))
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        demo_support.stop_shop(shop)
        shutil.rmtree(workdir, ignore_errors=True)
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
    print("BENCH_JSON " + json.dumps({"bench": "overhead", "products": args.products,
                                      "rounds": args.rounds, "results": report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
