"""Helpers to start the demo shops, run (and kill) crawls of them, and count the damage.

Used by ``run_demo.py``, the end-to-end tests and the benchmarks. Crawls write their items
with Scrapy's own feed export (``-o``), as a user's would. Stdlib only, so importing this
module never imports Scrapy: every crawl runs in its own ``scrapy crawl`` subprocess,
which is what lets a crawl be SIGKILLed like a real crash.
"""

from __future__ import annotations

import csv
import io
import json
import marshal
import os
import pickle
import selectors
import signal as _signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

PROJECT_DIR = Path(__file__).resolve().parent
DEMO_SHOP = PROJECT_DIR / "demo_shop.py"
URL_PREFIX = "DEMO_SHOP_URL="
SPIDER_NAME = "products"
FASHION_SHOP = PROJECT_DIR / "fashion_shop.py"
FASHION_URL_PREFIX = "FASHION_SHOP_URL="
#: The environment variable each fashion shop's spider reads its URL from.
FASHION_URL_VARIABLES = {"northwind": "NORTHWIND_URL", "lumiere": "LUMIERE_URL"}

#: Seconds a single crawl may run before it is killed and reported as hung.
DEFAULT_TIMEOUT = 300.0
#: Seconds between two looks at the items file while waiting for the kill point.
POLL_INTERVAL = 0.05


class CrawlTimeout(TimeoutError):
    """A crawl ran past its timeout; it has been SIGKILLed."""

    def __init__(self, timeout: float, log_path: Path) -> None:
        super().__init__(f"crawl still running after {timeout:g} s, killed; log: {log_path}")
        self.timeout = timeout
        self.log_path = log_path


def start_shop(
    products: int = 3000,
    per_page: int = 20,
    categories: int = 5,
    latency: float = 0.0,
    log: str | os.PathLike[str] | None = None,
    *,
    port: int = 0,
    startup_timeout: float = 10.0,
) -> tuple[subprocess.Popen[str], str]:
    """Start ``demo_shop.py`` as a subprocess; return it and the URL it serves on.

    Stop it with :func:`stop_shop`.
    """
    command = [
        sys.executable,
        str(DEMO_SHOP),
        f"--port={port}",
        f"--products={products}",
        f"--per-page={per_page}",
        f"--categories={categories}",
        f"--latency={latency}",
    ]
    if log is not None:
        command.append(f"--log={os.fspath(log)}")
    return _start_server(command, URL_PREFIX, "demo shop", startup_timeout)


def _start_server(
    command: list[str], prefix: str, what: str, startup_timeout: float
) -> tuple[subprocess.Popen[str], str]:
    """Start a shop's *command*; return the process and the URL it prints after *prefix*."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    # A shop that fails to bind or crashes must not hang the caller on readline().
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        ready = selector.select(startup_timeout)
    line = process.stdout.readline().strip() if ready else ""
    if not line.startswith(prefix):
        stop_shop(process)
        raise RuntimeError(
            f"{what} did not print its URL within {startup_timeout:g} s"
            f" (exit code {process.returncode}, first line {line!r})"
        )
    return process, line[len(prefix) :]


def stop_shop(process: subprocess.Popen[Any], timeout: float = 5.0) -> int:
    """Stop a shop started by :func:`start_shop` (SIGTERM, then SIGKILL); return its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
    return process.returncode


@contextmanager
def running_shop(log: str | os.PathLike[str], **options: Any) -> Iterator[str]:
    """A shop (:func:`start_shop` with *options*, logging to *log*) for the length of a
    ``with`` block; yields its URL."""
    process, url = start_shop(log=log, **options)
    try:
        yield url
    finally:
        stop_shop(process)


@contextmanager
def running_fashion_shop(
    shop: str,
    log: str | os.PathLike[str] | None = None,
    products: int = 300,
    latency: float = 0.0,
    *,
    per_page: int = 24,
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """A fashion shop (``fashion_shop.py --shop SHOP``: ``northwind`` or ``lumiere``) for the
    length of a ``with`` block; yields its URL, which its spider reads from ``-a base_url=``
    or ``FASHION_URL_VARIABLES[shop]``."""
    command = [
        sys.executable,
        str(FASHION_SHOP),
        f"--shop={shop}",
        "--port=0",
        f"--products={products}",
        f"--per-page={per_page}",
        f"--latency={latency}",
    ]
    if log is not None:
        command.append(f"--log={os.fspath(log)}")
    process, url = _start_server(command, FASHION_URL_PREFIX, f"{shop} shop", startup_timeout)
    try:
        yield url
    finally:
        stop_shop(process)


def setting_arg(name: str, value: Any) -> str:
    """Format one ``-s NAME=VALUE`` argument; dicts and lists go as JSON, as Scrapy parses them."""
    if isinstance(value, (dict, list, tuple)):
        value = json.dumps(value)
    return f"{name}={value}"


def crawl_command(
    url: str,
    items_file: str | os.PathLike[str] | None,
    extra_settings: Mapping[str, Any] | None = None,
    *,
    args: Sequence[str] = (),
) -> list[str]:
    """The ``scrapy crawl`` command line for one run of the demo spider: items go to
    *items_file* through Scrapy's own feed export (``-o``, JSON lines), as a user would
    write them; None leaves the feeds to *args* (``-O``, ``-s FEEDS=...``), which go last."""
    command = [
        sys.executable, "-m", "scrapy", "crawl", SPIDER_NAME,
        "-a", f"base_url={url}",
    ]  # fmt: skip
    if items_file is not None:
        command += ["-o", f"{os.fspath(items_file)}:jsonlines"]
    for name, value in (extra_settings or {}).items():
        command += ["-s", setting_arg(name, value)]
    return command + list(args)


def count_lines(path: str | os.PathLike[str]) -> int:
    """Number of complete lines in *path*; 0 if it does not exist yet."""
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
    except FileNotFoundError:
        return 0


class _LineCounter:
    """Counts the lines of a growing file, reading only what was appended since last time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def update(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.lines
        self.offset += len(data)
        self.lines += data.count(b"\n")
        return self.lines


def next_log_path(directory: Path) -> Path:
    """The first free ``crawl-N.log`` in *directory*."""
    n = 1
    while (directory / f"crawl-{n}.log").exists():
        n += 1
    return directory / f"crawl-{n}.log"


def run_crawl(
    project_dir: str | os.PathLike[str] | None,
    url: str,
    items_file: str | os.PathLike[str] | None,
    extra_settings: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    kill_after: float | None = None,
    kill_when_items: int | None = None,
    signal: int = _signal.SIGKILL,
    *,
    log_path: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    kill_when: Callable[[], bool] | None = None,
    args: Sequence[str] = (),
) -> tuple[int, bool, Path]:
    """Run ``scrapy crawl products`` against *url* and wait for it, or kill it.

    The crawl runs in *project_dir* (default: this directory), writes its items to the
    JSON-lines feed *items_file* (None: only the feeds in *args*) with stdout and stderr
    going to *log_path* (default: the next free ``crawl-N.log`` beside *items_file*).
    *env* entries override the inherited environment; *args* are appended to the command
    line. The crawl is sent *signal* once *items_file* holds *kill_when_items* lines
    (counting lines already there), once *kill_when* (called every poll) returns true, or
    *kill_after* seconds after it started, whichever comes first.

    Returns ``(returncode, killed, log_path)``; ``killed`` is true when the crawl was
    still running when the signal was sent. Raises :class:`CrawlTimeout` (after a
    SIGKILL) when the crawl is still running after *timeout* seconds.
    """
    items_path = None if items_file is None else Path(items_file).resolve()
    if log_path is None and items_path is None:
        raise ValueError("run_crawl() needs a log_path when it has no items_file")
    log_file = Path(log_path) if log_path is not None else next_log_path(items_path.parent)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **(env or {})}
    counter = None if items_path is None else _LineCounter(items_path)
    killed = False
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            crawl_command(url, items_path, extra_settings, args=args),
            cwd=project_dir or PROJECT_DIR,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        started = time.monotonic()
        try:
            while process.poll() is None:
                elapsed = time.monotonic() - started
                if elapsed >= timeout:
                    process.kill()
                    process.wait()
                    raise CrawlTimeout(timeout, log_file)
                if not killed and (
                    (counter is not None and kill_when_items is not None and counter.update() >= kill_when_items)
                    or (kill_when is not None and kill_when())
                    or (kill_after is not None and elapsed >= kill_after)
                ):
                    process.send_signal(signal)
                    killed = True
                    # SIGKILL ends it at once; SIGTERM/SIGINT shut down gracefully,
                    # still bounded by the timeout above.
                time.sleep(POLL_INTERVAL)
        finally:
            # Whatever went wrong here (even Ctrl-C), never leave a crawl running.
            if process.poll() is None:
                process.kill()
                process.wait()
    return process.returncode, killed, log_file


def summarize(
    items_file: str | os.PathLike[str],
    shop_log: str | os.PathLike[str],
    expected_products: int,
) -> dict[str, int]:
    """Count what the crawls of a demo run scraped and downloaded.

    - ``scraped``: distinct skus in *items_file*; ``lost``: expected minus scraped;
      ``duplicates``: item lines beyond one per sku.
    - ``downloads``: requests the shop served (lines of *shop_log*);
      ``pages_downloaded_twice``: distinct paths served more than once;
      ``extra_downloads``: serves beyond the first, summed over those paths.
    - ``malformed_lines``: item lines that are not JSON objects with a sku (a torn write).
    """
    skus: list[str] = []
    malformed = 0
    try:
        with open(items_file, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    skus.append(json.loads(line)["sku"])
                except (ValueError, KeyError, TypeError):
                    malformed += 1
    except FileNotFoundError:
        pass
    try:
        with open(shop_log, encoding="utf-8") as f:
            served = Counter(line.rstrip("\n") for line in f if line.strip())
    except FileNotFoundError:
        served = Counter()
    unique = len(set(skus))
    repeated = {path: n for path, n in served.items() if n > 1}
    return {
        "expected": expected_products,
        "scraped": unique,
        "lost": max(0, expected_products - unique),
        "duplicates": len(skus) - unique,
        "item_lines": len(skus) + malformed,
        "malformed_lines": malformed,
        "downloads": sum(served.values()),
        "pages_downloaded_twice": len(repeated),
        "extra_downloads": sum(n - 1 for n in repeated.values()),
    }


#: Scrapy's feed formats, by the file extensions it infers them from.
FEED_FORMATS = {"jsonl": "jsonlines", "jsonlines": "jsonlines", "json": "json", "csv": "csv",
                "xml": "xml", "marshal": "marshal", "pickle": "pickle"}


def parse_feed(data: bytes, fmt: str) -> list[dict[str, Any]]:
    """Every item of a whole feed file of format *fmt*; ValueError if it is not exactly one
    well-formed document (JSON: one array; JSON lines: no torn last line; CSV: one header,
    never repeated, full rows; XML: one ``<items>``; marshal and pickle: whole records)."""
    try:
        if fmt == "json":
            items = json.loads(data)
            if not isinstance(items, list):
                raise ValueError("not one JSON array")
            return items
        if fmt == "jsonlines":
            text = data.decode()
            if text and not text.endswith("\n"):
                raise ValueError(f"torn last line {text[-100:]!r}")
            return [json.loads(line) for line in text.splitlines()]
        if fmt == "csv":
            rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
            if not rows:
                return []
            header, body = rows[0], rows[1:]
            for number, row in enumerate(body, 2):
                if row == header or len(row) != len(header):
                    raise ValueError(f"row {number} is {'the header again' if row == header else row}")
            return [dict(zip(header, row)) for row in body]
        if fmt == "xml":
            root = ElementTree.fromstring(data)
            if root.tag != "items" or any(item.tag != "item" for item in root):
                raise ValueError("not one <items> document of <item> elements")
            return [{field.tag: field.text for field in item} for item in root]
        if fmt in ("marshal", "pickle"):
            load = marshal.load if fmt == "marshal" else pickle.load
            stream, items = io.BytesIO(data), []
            while stream.tell() < len(data):
                items.append(load(stream))
            return items
    except ValueError:
        raise
    except Exception as exc:  # a JSON, XML, marshal or pickle error: a torn or mixed file
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    raise ValueError(f"unknown feed format {fmt!r}")
