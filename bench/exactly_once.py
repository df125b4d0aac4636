"""Outputs exactly once across SIGKILLs, at full size: the outputs issue's acceptance matrix.

Every case crawls its own demo shop (``--products``, 10 ms a page, 32 requests at once),
SIGKILLs the crawl ``--kills`` times when the shop has served a random number of product
pages (drawn from ``--seed``), resumes it with ``CHECKPOINT_RESUME=1`` until it completes,
then reads what the user keeps, whole: the feed file(s), or the MongoDB collection of
``CheckpointMongoDBPipeline``. It prints, per case, products lost, duplicate items, whether
each file parsed as one document, and the kill points; the last line is ``BENCH_JSON {...}``.

    python bench/exactly_once.py                                    # every case, 3,000 products, 5 kills
    python bench/exactly_once.py --cases json-O-sqlite,ftp-sqlite --kills 2
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "example_project"))
sys.path.insert(0, str(ROOT / "bench"))

import demo_support  # noqa: E402
from _services import mongo_server, redis_server  # noqa: E402

from tests.ftp_server import FTPServer  # noqa: E402

FORMATS = {"jsonlines": "jsonl", "json": "json", "csv": "csv", "xml": "xml"}
BATCH_ITEMS = 500


def cases(stores: dict[str, dict[str, Any]], mongodb: bool) -> dict[str, dict[str, Any]]:
    """Case name -> how it writes its output: command-line args, settings, where to read it."""
    out: dict[str, dict[str, Any]] = {}
    for store in stores:
        for fmt, ext in FORMATS.items():
            for flag in ("-o", "-O"):
                out[f"{fmt}{flag}-{store}"] = {"store": store, "args": [flag, f"{{dir}}/items.{ext}"],
                                              "read": ("file", f"items.{ext}", fmt)}
        out[f"batch-{store}"] = {"store": store, "args": ["-o", "{dir}/items-%(batch_id)d.jsonl"],
                                 "settings": {"FEED_EXPORT_BATCH_ITEM_COUNT": BATCH_ITEMS},
                                 "read": ("batches", "items-*.jsonl", "jsonlines")}
        path = f"ftp-{store}/items.jsonl"
        out[f"ftp-{store}"] = {"store": store, "ftp": path, "read": ("ftp", path, "jsonlines")}
    if mongodb:
        out["mongodb-pipeline-sqlite"] = {"store": "sqlite", "pipeline": True, "read": ("mongodb",)}
    return out


class Shop:
    """A demo shop and the product pages it has served, from its log."""

    def __init__(self, products: int, log: Path) -> None:
        self.log = log
        self.process, self.url = demo_support.start_shop(products=products, latency=0.01, log=log)

    def product_pages(self) -> int:
        try:
            return sum(1 for line in self.log.open("rb") if line.startswith(b"/product/"))
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        demo_support.stop_shop(self.process)


def read_output(case: dict[str, Any], workdir: Path, ftp: FTPServer | None, mongo: Any) -> tuple[list[dict], str]:
    """The items the user keeps, and '' if every file parsed whole (else what did not)."""
    kind, *where = case["read"]
    if kind == "mongodb":
        return [doc["item"] for doc in mongo.find()], ""
    if kind == "file":
        paths, fmt = [workdir / where[0]], where[1]
    elif kind == "batches":
        paths, fmt = sorted(workdir.glob(where[0])), where[1]
    else:
        assert ftp is not None
        paths, fmt = [ftp.root / where[0]], where[1]
    items: list[dict] = []
    broken = []
    for path in paths:
        try:
            items += demo_support.parse_feed(path.read_bytes(), fmt)
        except (OSError, ValueError) as exc:
            broken.append(f"{path.name}: {exc}")
    return items, "; ".join(broken)


def run_case(name: str, case: dict[str, Any], args: argparse.Namespace, base: Path, stores: dict[str, dict],
             ftp: FTPServer, mongo_uri: str | None, rng: random.Random) -> dict[str, Any]:
    workdir = base / name
    workdir.mkdir()
    shop = Shop(args.products, workdir / "shop.log")
    settings: dict[str, Any] = {
        "CHECKPOINT_DIR": str(workdir / "checkpoints"), "CONCURRENT_REQUESTS": 32,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 32, **stores[case["store"]], **case.get("settings", {}),
    }
    if case["store"] == "redis":
        settings["CHECKPOINT_REDIS_PREFIX"] = f"bench-{name}"
    cli = [a.format(dir=workdir) for a in case.get("args", [])]
    mongo = None
    if case.get("ftp"):
        settings["FEEDS"] = {ftp.url(case["ftp"]): {"format": "jsonlines"}}
    if case.get("pipeline"):
        from pymongo import MongoClient

        database = f"bench_{name.replace('-', '_')}"
        settings.update(ITEM_PIPELINES={"scrapy_checkpoint.CheckpointMongoDBPipeline": 400},
                        CHECKPOINT_MONGO_ITEMS_URI=mongo_uri, CHECKPOINT_MONGO_ITEMS_DATABASE=database)
        client = MongoClient(mongo_uri)
        mongo = client[database]["items"]
        cli = ["-o", f"{workdir}/items.jsonl"]
    points = sorted(rng.sample(range(100, args.products - 300), args.kills))
    started = time.monotonic()
    runs = []
    try:
        for n in range(args.kills + 4):
            point = points[n] if n < len(points) else None
            extra = {**settings, "CHECKPOINT_RESUME": n > 0}
            code, killed, log = demo_support.run_crawl(
                None, shop.url, None, extra, log_path=workdir / f"crawl-{n + 1}.log", args=cli, timeout=600,
                kill_when=None if point is None else (lambda p=point: shop.product_pages() >= p),
            )
            runs.append("killed" if killed else code)
            if point is None and code == 0 and "saved as completed" in log.read_text(errors="replace"):
                break
        served = shop.product_pages()
    finally:
        shop.stop()
    items, broken = read_output(case, workdir, ftp, mongo)
    if mongo is not None:
        mongo.database.client.close()
    skus = Counter(item["sku"] for item in items)
    return {
        "kills": sum(r == "killed" for r in runs), "kill_points": points, "runs": len(runs),
        "completed": runs[-1] == 0, "items": len(items), "lost": args.products - len(skus),
        "duplicates": len(items) - len(skus), "whole": not broken, "broken": broken,
        "product_pages_served": served, "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cases", help="comma-separated subset (default: every case)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="exactly-once-") as tmp:
        base = Path(tmp)
        with redis_server(base) as redis_url, mongo_server(base) as mongo_uri:
            stores: dict[str, dict] = {"sqlite": {}}
            if redis_url:
                stores["redis"] = {"CHECKPOINT_REDIS_URL": redis_url}
            table = cases(stores, mongodb=mongo_uri is not None)
            if args.cases:
                table = {k: table[k] for k in args.cases.split(",")}
            ftp_dir = base / "ftp"
            ftp_dir.mkdir()
            ftp = FTPServer(ftp_dir)
            ftp.start()
            results = {}
            try:
                for name, case in table.items():
                    results[name] = result = run_case(name, case, args, base, stores, ftp, mongo_uri, rng)
                    print(f"{name:<26} kills {result['kills']}  lost {result['lost']:>4}  duplicates "
                          f"{result['duplicates']:>4}  whole {'yes' if result['whole'] else 'NO ' + str(result['broken'])}"
                          f"  completed {'yes' if result['completed'] else 'NO'}  {result['seconds']} s"
                          f"  (kill points {result['kill_points']})", flush=True)
            finally:
                ftp.stop()
    print("BENCH_JSON " + json.dumps({"products": args.products, "kills": args.kills, "seed": args.seed,
                                      "cases": results}))


if __name__ == "__main__":
    main()
