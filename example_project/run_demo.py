"""Crash a checkpointed crawl with SIGKILL, resume it, and count what was lost or repeated.

Usage::

    python example_project/run_demo.py --products 3000 --kills 1 [--workdir DIR]

Starts the demo shop, crawls it with its items going to ``items.jsonl`` through Scrapy's own
feed export (``-o``), SIGKILLs the crawl each time another ``products / (kills + 1)``
items are in that file, resumes with ``CHECKPOINT_RESUME=1`` until
a run ends on its own, then prints a summary and a ``DEMO_SUMMARY_JSON {...}`` line.
Extra Scrapy settings for every run go as ``-s NAME=VALUE`` (e.g. ``-s ADDONS={}`` for a
baseline without checkpoints). Exits 1 when products were lost or a run failed or timed
out, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import demo_support

#: Files and folders a demo run creates in its workdir.
_OUTPUTS = ("items.jsonl", "shop.log", "checkpoints", "crawl-1.log")
_SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _at_least(kind: type, minimum: float, *, strict: bool = False) -> Any:
    """An argparse type: *kind* parsed from the text, >= *minimum* (> when *strict*)."""

    def parse(text: str) -> Any:
        value = kind(text)
        if not (value > minimum if strict else value >= minimum):
            raise argparse.ArgumentTypeError(
                f"must be {'>' if strict else '>='} {minimum}, got {text}"
            )
        return value

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value" errors
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=_at_least(int, 1), default=3000)
    parser.add_argument("--kills", type=_at_least(int, 0), default=1)
    parser.add_argument("--workdir", help="empty or new directory (default: a fresh temp dir)")
    parser.add_argument("--per-page", type=_at_least(int, 1), default=20)
    parser.add_argument("--categories", type=_at_least(int, 1), default=5)
    parser.add_argument(
        "--latency", type=_at_least(float, 0), default=0.005, help="shop sleep per request (s)"
    )
    parser.add_argument(
        "--timeout",
        type=_at_least(float, 0, strict=True),
        default=demo_support.DEFAULT_TIMEOUT,
        help="seconds a run may take before it is killed as hung",
    )
    parser.add_argument("--signal", choices=sorted(_SIGNALS), default="KILL")
    parser.add_argument(
        "-s", "--set", dest="settings", type=_setting, action="append", default=[],
        metavar="NAME=VALUE", help="extra Scrapy setting for every run (repeatable)",
    )  # fmt: skip
    return parser.parse_args(argv)


def kill_points(products: int, kills: int) -> list[int]:
    """Item counts at which to kill: evenly spread, the k-th at (k+1)/(kills+1) of the catalog."""
    return [max(1, round(products * (k + 1) / (kills + 1))) for k in range(kills)]


def _log_stats(log_path: Path) -> dict[str, Any]:
    text = log_path.read_text(encoding="utf-8", errors="replace")
    # Exit code 0 does not mean the crawl finished: a SIGINT/SIGTERM from outside also
    # ends it cleanly, with reason "shutdown". Only "finished" means nothing was left.
    reasons = re.findall(r"Spider closed \((\w+)\)", text)
    return {
        "finish_reason": reasons[-1] if reasons else None,
        "errors": text.count("] ERROR: ") + text.count("] CRITICAL: "),
        "tracebacks": text.count("Traceback (most recent call last)"),
        "deprecation_warnings": text.count("ScrapyDeprecationWarning"),
    }


def _tail(path: Path, lines: int = 25) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return "\n".join("    | " + line for line in text)


def run_crawls(
    args: argparse.Namespace, url: str, workdir: Path
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the crawl, killing and resuming it; return one record per run and the problems."""
    items_file = workdir / "items.jsonl"
    settings = {"CHECKPOINT_DIR": str(workdir / "checkpoints"), **dict(args.settings)}
    points = kill_points(args.products, args.kills)
    runs: list[dict[str, Any]] = []
    problems: list[str] = []
    for number in range(1, len(points) + 2):
        resume = number > 1
        kill_at = points[number - 1] if number <= len(points) else None
        run_settings = {**settings, "CHECKPOINT_RESUME": "1"} if resume else settings
        plan = f"kill with SIG{args.signal} at {kill_at} items" if kill_at else "run to the end"
        print(f"run {number} ({'resume' if resume else 'fresh'}): {plan} ...", flush=True)
        record: dict[str, Any] = {"run": number, "resume": resume, "kill_at": kill_at}
        started = time.monotonic()
        try:
            rc, killed, log_path = demo_support.run_crawl(
                demo_support.PROJECT_DIR, url, items_file, run_settings,
                kill_when_items=kill_at, signal=_SIGNALS[args.signal],
                log_path=workdir / f"crawl-{number}.log", timeout=args.timeout,
            )  # fmt: skip
        except demo_support.CrawlTimeout as exc:
            record.update(outcome="timeout", returncode=None, killed=True, log=str(exc.log_path))
            record.update(seconds=round(time.monotonic() - started, 2))
            record.update(items_on_disk=demo_support.count_lines(items_file))
            record.update(_log_stats(exc.log_path))
            runs.append(record)
            problems.append(f"run {number} timed out: {exc}")
            print(f"  TIMED OUT, killed. Last log lines:\n{_tail(exc.log_path)}")
            break
        record.update(returncode=rc, killed=killed, log=str(log_path))
        record.update(seconds=round(time.monotonic() - started, 2))
        record.update(items_on_disk=demo_support.count_lines(items_file))
        record.update(_log_stats(log_path))
        if killed:
            record["outcome"] = f"SIG{args.signal} at {record['items_on_disk']} items"
        elif rc == 0:
            record["outcome"] = f"exited 0 ({record['finish_reason']})"
        else:
            record["outcome"] = f"exited {rc}"
        runs.append(record)
        print(
            f"  {record['outcome']} after {record['seconds']:.1f} s;"
            f" {record['items_on_disk']} item lines on disk; log {log_path}",
            flush=True,
        )
        if record["deprecation_warnings"]:
            problems.append(f"run {number} logged ScrapyDeprecationWarning; see {log_path}")
        if killed:
            continue
        if rc != 0 or record["finish_reason"] != "finished":
            why = f"exit code {rc}, finish reason {record['finish_reason']}"
            if rc < 0:
                why += f" (killed by signal {-rc}, not sent by this demo)"
            problems.append(f"run {number} did not finish the crawl ({why}); see {log_path}")
            print(f"  Crawl did not finish ({why}). Last log lines:\n{_tail(log_path)}")
        elif kill_at is not None:
            print(f"  The crawl ended before reaching {kill_at} items; no kill this run.")
        break
    return runs, problems


def print_summary(summary: dict[str, Any]) -> None:
    rows = [
        ("Run", "Mode", "Outcome", "Items on disk", "Seconds", "Errors logged"),
        *(
            (
                str(r["run"]),
                "resume" if r["resume"] else "fresh",
                r["outcome"],
                str(r["items_on_disk"]),
                f"{r['seconds']:.1f}",
                str(r["errors"]),
            )
            for r in summary["run_details"]
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print()
    twice = f"{summary['pages_downloaded_twice']} ({summary['extra_downloads']} extra downloads)"
    table = [
        ("Products expected", summary["expected"]),
        ("Products scraped", summary["scraped"]),
        ("Products lost", summary["lost"]),
        ("Duplicate items", summary["duplicates"]),
        ("Pages downloaded", summary["downloads"]),
        ("Pages downloaded twice", twice),
        ("Kills", summary["kills"]),
        ("Runs", summary["runs"]),
    ]
    width = max(len(label) for label, _ in table)
    for label, value in table:
        print(f"{label.ljust(width)}  {value}")
    for problem in summary["problems"]:
        print(f"PROBLEM: {problem}")
    print(f"Result: {'OK' if summary['ok'] else 'FAILED'} (workdir {summary['workdir']})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir:
        workdir = Path(args.workdir).resolve()
        # Appending to a previous run's items, or resuming its checkpoint, would make
        # the counts meaningless; refuse rather than delete anything.
        reused = [name for name in _OUTPUTS if (workdir / name).exists()]
        if reused:
            print(
                f"--workdir {workdir} already holds a demo run ({', '.join(reused)});"
                " remove it or pass another directory.",
                file=sys.stderr,
            )
            return 2
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="checkpoint-demo-"))
    print(
        f"Demo: {args.products} products, {args.kills} kill(s), workdir {workdir}", flush=True
    )
    shop, url = demo_support.start_shop(
        products=args.products,
        per_page=args.per_page,
        categories=args.categories,
        latency=args.latency,
        log=workdir / "shop.log",
    )
    try:
        print(f"Shop at {url}", flush=True)
        runs, problems = run_crawls(args, url, workdir)
    finally:
        demo_support.stop_shop(shop)
    counts = demo_support.summarize(workdir / "items.jsonl", workdir / "shop.log", args.products)
    final = runs[-1]
    finished = not final["killed"] and final["finish_reason"] == "finished"
    if not finished and not any(p.startswith(f"run {final['run']} ") for p in problems):
        problems.append("no run finished the crawl")
    if counts["lost"]:
        problems.append(f"{counts['lost']} products lost")
    summary: dict[str, Any] = {
        **counts,
        "kills": sum(1 for r in runs if r["killed"] and r["outcome"] != "timeout"),
        "runs": len(runs),
        "ok": not problems,
        "problems": problems,
        "workdir": str(workdir),
        "run_details": runs,
    }
    print_summary(summary)
    print("DEMO_SUMMARY_JSON " + json.dumps(summary, sort_keys=True), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
