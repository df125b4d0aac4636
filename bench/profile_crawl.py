"""Where a checkpointed crawl spends its CPU: py-spy samples of one overhead-benchmark crawl.

Runs one contender of ``bench/overhead.py`` (same shop, same settings) under
``py-spy record --format raw`` and prints the share of all samples of the crawl process
that fall in scrapy-checkpoint's code, attributed to its innermost frame on the stack, and
split by the library that frame called into (pymongo, bson, redis...; sqlite3 is C, so
its time shows as the calling frame's own). Needs
py-spy (``pip install py-spy``; it may need ptrace rights). Last line: ``BENCH_JSON {...}``.

    python bench/profile_crawl.py --contender mongodb --products 3000
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead  # noqa: E402
from _services import mongo_server, redis_server  # noqa: E402

demo_support = overhead.demo_support
PROJECT = "scrapy_checkpoint"
#: "function (path:line)" in py-spy's raw format
FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^():]*)(?::\d+)?\)$")
DELEGATED = ("scrapy/core/", "scrapy/utils/defer")
LIBRARIES = ("pymongo", "bson", "redis", "pydantic", "json", "pickle", "scrapy", "twisted")


def _library(path: str) -> str:
    parts = Path(path).parts
    for name in LIBRARIES:
        if name in parts or f"{name}.py" in parts:
            return name
    return Path(path).stem


def summarize(raw: str) -> dict:
    """Samples per innermost scrapy-checkpoint frame, and what that frame was calling.

    A sample is the project's when one of its frames is on the stack and no frame below the
    innermost one hands control back to Scrapy (the spider's own output, iterated through
    the project's wrappers, is not the project's cost)."""
    total, ours = 0, 0
    by_frame: Counter[str] = Counter()
    by_callee: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [FRAME.match(f) for f in stack.split(";")]
        project = [i for i, m in enumerate(frames) if m and f"/{PROJECT}/" in f"/{m['path']}"]
        # Below a wrapper of the callback's output (track_output, the middlewares) run
        # Scrapy's other middlewares and the spider: their samples are not ours.
        if not project or any(m and m["path"].startswith(DELEGATED) for m in frames[project[-1] + 1:]):
            continue
        ours += samples
        inner = project[-1]
        match = frames[inner]
        by_frame[f"{Path(match['path']).stem}.{match['function']}"] += samples
        below = frames[inner + 1] if inner + 1 < len(frames) else None
        by_callee[_library(below["path"]) if below else "(its own code, or C it calls)"] += samples
    share = {k: round(100 * v / total, 2) for k, v in by_frame.most_common()}
    callees = {k: round(100 * v / total, 2) for k, v in by_callee.most_common()}
    return {"samples": total, "project_pct": round(100 * ours / total, 2) if total else 0,
            "frames_pct": share, "callees_pct": callees}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contender", default="sqlite")
    parser.add_argument("--products", type=int, default=3000)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw output here")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    raw_path = args.raw or workdir / "profile.txt"
    shop, url = demo_support.start_shop(products=args.products, latency=0.0)
    try:
        with redis_server(workdir) as redis_url, mongo_server(workdir) as mongo_uri:
            table = overhead.contenders(redis_url, mongo_uri)
            if args.contender not in table:
                parser.error(f"--contender must be one of {', '.join(table)} here")
            command, _, items = overhead.crawl_command(url, args.contender, table[args.contender], workdir, 0)
            subprocess.run(  # py-spy's raw format: one "frame;frame;... count" line per stack
                [py_spy, "record", "--nonblocking", "--rate", str(args.rate), "--format", "raw",
                 "--output", str(raw_path), "--", *command],
                cwd=demo_support.PROJECT_DIR, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            scraped = demo_support.count_lines(items)
        report = summarize(raw_path.read_text())
    finally:
        demo_support.stop_shop(shop)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{args.contender}: {scraped} of {args.products} products, {report['samples']:,} samples, "
          f"{report['project_pct']:.2f} % with scrapy-checkpoint code on the stack")
    print(f"\n{'innermost scrapy-checkpoint frame':<56}{'% of samples':>13}")
    for frame, pct in list(report["frames_pct"].items())[:args.top]:
        print(f"{frame:<56}{pct:>13.2f}")
    print(f"\n{'called from there into':<56}{'% of samples':>13}")
    for callee, pct in report["callees_pct"].items():
        print(f"{callee:<56}{pct:>13.2f}")
    print("BENCH_JSON " + json.dumps({"bench": "profile_crawl", "contender": args.contender,
                                      "products": args.products, **report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
