"""Feeds exactly once: real `scrapy crawl` subprocesses writing Scrapy's FEEDS (-o, -O, FEEDS),
SIGKILLed when the shop has served a random number of product pages, and resumed.

Each test names its own feeds; every file is parsed whole and strictly. Reproduce a run's kill points with
``CHECKPOINT_TEST_SEED=<seed>`` (printed by every test, and in every kill failure).
"""

from __future__ import annotations

import gzip
import json
import marshal
import pickle
import random
import re
import signal
from collections import Counter
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import demo_support
import pytest

from tests.test_e2e import SEED, open_store, only_checkpoint, store_settings  # noqa: F401 (a fixture)

pytestmark = pytest.mark.e2e

PRODUCTS = 300
BATCH_ITEMS = 50
SKUS = frozenset(f"SKU-{n:06d}" for n in range(1, PRODUCTS + 1))
#: The Product fields, in the order CsvItemExporter writes its header.
FIELDS = ["sku", "name", "price", "category", "url"]
#: Format -> file extension (Scrapy infers the format from it).
FORMATS = {"json": "json", "jsonlines": "jsonl", "csv": "csv", "xml": "xml", "marshal": "marshal",
           "pickle": "pickle"}
CRAWL_TIMEOUT = 120
#: Kill points are product pages served in all, counted from the shop's log: the first kill
#: after at least FIRST_KILL, each next one at least KILL_GAP later, the last one at least
#: END_MARGIN before the end (a crawl must still be running when its point is reached).
FIRST_KILL, KILL_GAP, END_MARGIN = 20, 50, 60
JUNK = b"JUNK left by an earlier run, not a feed \x00\xff\n" * 50


# The shop, and kills on its state


class Shop:
    """The demo shop of one test, and how many product pages it has served so far."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log
        self._offset = 0
        self._products = 0

    def product_pages(self) -> int:
        """Product pages served so far, read incrementally (whole lines only)."""
        try:
            with self.log.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        whole = data[: data.rfind(b"\n") + 1]
        self._offset += len(whole)
        self._products += sum(1 for line in whole.splitlines() if line.startswith(b"/product/"))
        return self._products

    def served(self, pages: int) -> Callable[[], bool]:
        return lambda: self.product_pages() >= pages

    def served_anything(self) -> bool:
        return self.log.exists() and self.log.stat().st_size > 0


@pytest.fixture
def shop(tmp_path):
    """A shop of PRODUCTS products (5 categories of 3 listing pages), with its own log."""
    log = tmp_path / "shop.log"
    with demo_support.running_shop(log, products=PRODUCTS, per_page=20, categories=5, latency=0.002) as url:
        yield Shop(url, log)


@pytest.fixture
def rng(request):
    """A random generator for this test's kill points: the session SEED and the test's id."""
    return random.Random(f"{SEED}:{request.node.nodeid}")


def kill_points(rng: random.Random, kills: int) -> list[int]:
    """*kills* cumulative product-page counts, increasing, at least KILL_GAP apart."""
    top = PRODUCTS - END_MARGIN - KILL_GAP * (kills - 1)
    return [p + KILL_GAP * i for i, p in enumerate(sorted(rng.sample(range(FIRST_KILL, top), kills)))]


# Crawls


class Run(NamedTuple):
    code: int
    killed: bool
    log: Path

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self) -> str:
        return f"{self.log}:\n{self.text[-3000:]}"


def crawl(shop: Shop, tmp_path: Path, args: Sequence[str] = (), *, resume: bool = False,
          extra: dict[str, Any] | None = None, env: dict[str, str] | None = None,
          kill_at: int | None = None, kill_when: Callable[[], bool] | None = None,
          sig: int = signal.SIGKILL) -> Run:
    settings = {
        "CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "CHECKPOINT_FLUSH_INTERVAL": 0.5,
        "CHECKPOINT_BATCH_SIZE": 100,
        "CONCURRENT_REQUESTS": 16,
        **(extra or {}),
    }
    if resume:
        settings["CHECKPOINT_RESUME"] = True
    code, killed, log = demo_support.run_crawl(
        None, shop.url, None, settings, env=env, signal=sig, log_path=demo_support.next_log_path(tmp_path),
        kill_when=kill_when if kill_at is None else shop.served(kill_at), args=args, timeout=CRAWL_TIMEOUT,
    )
    return Run(code, killed, log)


def assert_killed(run: Run, point: int) -> None:
    assert run.killed and run.code == -signal.SIGKILL, (
        f"the run was not SIGKILLed at {point} product pages (seed {SEED}; killed={run.killed}, "
        f"exit code {run.code}): {run.tail()}")


def assert_finished(run: Run, resumed: bool = True) -> None:
    text = run.text
    assert (run.code, run.killed) == (0, False), run.tail()
    assert "'finish_reason': 'finished'" in text, run.tail()
    assert "saved as completed (finished)" in text, run.tail()
    if resumed:
        assert "Resuming checkpoint" in text, run.tail()


def kill_and_resume(shop: Shop, tmp_path: Path, rng: random.Random, args: Sequence[str], kills: int = 2,
                    after_kill: Callable[[int, Run], None] | None = None, **kwargs: Any) -> list[Run]:
    """A new crawl SIGKILLed *kills* times at random product-page counts, then resumed to the
    end; *after_kill(n, run)* looks at the state each kill left."""
    points = kill_points(rng, kills)
    print(f"seed {SEED}, kill points {points} (product pages served)")
    runs = []
    for n, point in enumerate(points):
        run = crawl(shop, tmp_path, args, resume=n > 0, kill_at=point, **kwargs)
        assert_killed(run, point)
        runs.append(run)
        if after_kill is not None:
            after_kill(n, run)
    runs.append(crawl(shop, tmp_path, args, resume=True, **kwargs))
    assert_finished(runs[-1])
    return runs


def checkpoint_id(run: Run) -> str:
    return re.search(r"Checkpoint (\S+) started in", run.text).group(1)


def saved_feeds(tmp_path: Path) -> list[dict[str, Any]]:
    """The feed states the (SQLite) checkpoint holds."""
    store = open_store(tmp_path)
    try:
        return only_checkpoint(store).pipeline_data.outputs
    finally:
        store.close()


# Reading feeds, strictly


def parse_feed(data: bytes, fmt: str) -> list[dict[str, Any]]:
    """Every item of a whole feed file (demo_support.parse_feed), whose CSV header is the
    Product's fields."""
    items = demo_support.parse_feed(data, fmt)
    if fmt == "csv" and items:
        assert list(items[0]) == FIELDS, f"CSV header {list(items[0])}"
    return items


def read_feed(path: Path, fmt: str) -> list[dict[str, Any]]:
    data = path.read_bytes()
    try:
        return parse_feed(data, fmt)
    except Exception as exc:
        raise AssertionError(f"{path} ({fmt}, {len(data)} bytes) is not a whole feed (seed {SEED}): "
                             f"{type(exc).__name__}: {exc}") from exc


def exactly_once(items: list[dict[str, Any]], expected: frozenset[str] | set[str] = SKUS) -> str | None:
    """None if *items* hold every expected sku once and nothing else; else what is wrong."""
    counts = Counter(item["sku"] for item in items)
    lost = sorted(expected - counts.keys())
    duplicates = sorted(sku for sku, n in counts.items() if n > 1)
    unexpected = sorted(counts.keys() - expected)
    if lost or duplicates or unexpected:
        return (f"{len(items)} items: {len(lost)} lost {lost[:5]}, {len(duplicates)} duplicated "
                f"{duplicates[:5]}, {len(unexpected)} unexpected {unexpected[:5]}")
    return None


def assert_exactly_once(path: Path, fmt: str, expected: frozenset[str] | set[str] = SKUS) -> None:
    problem = exactly_once(read_feed(path, fmt), expected)
    assert problem is None, f"{path} (seed {SEED}): {problem}"


def jsonlines_of(skus: list[str]) -> bytes:
    return b"".join(json.dumps({"sku": sku, "name": "kept", "price": 1.0, "category": "Old",
                                "url": "http://old.example/"}).encode() + b"\n" for sku in skus)


OLD_SKUS = [f"OLD-{n:03d}" for n in range(1, 8)]

_RECORD = {"sku": "SKU-999999", "name": "torn", "price": 1.0, "category": "Torn", "url": "http://torn/"}
#: Half a record of each format: what a kill leaves past the saved length when the exporter's
#: buffer reached the disk after the last flush.
TORN = {
    "json": b',{"sku": "SKU-99',
    "jsonlines": b'{"sku": "SKU-99',
    "csv": b"SKU-999999,Torn Lamp,",
    "xml": b"<item><sku>SKU-99",
    "marshal": marshal.dumps(_RECORD)[:20],
    "pickle": pickle.dumps(_RECORD, protocol=4)[:20],
}


# 1. Every format, -o and -O


@pytest.mark.parametrize("option", ["-o", "-O"])
def test_every_format_exactly_once_across_kills(tmp_path, shop, rng, option):
    """Six feeds at once, one per format, all -o or all -O (Scrapy refuses a mix): each
    whole and exactly once after 2 SIGKILLs and a resume."""
    paths = {fmt: tmp_path / f"items.{ext}" for fmt, ext in FORMATS.items()}
    if option == "-O":
        for path in paths.values():
            path.write_bytes(JUNK)  # emptied when the new checkpoint starts
    else:
        paths["jsonlines"].write_bytes(jsonlines_of(OLD_SKUS))  # kept: -o appends
    args = [arg for path in paths.values() for arg in (option, str(path))]

    def tear(n: int, run: Run) -> None:
        if n == 0:  # the first kill left half a record in every feed
            for fmt, path in paths.items():
                with path.open("ab") as f:
                    f.write(TORN[fmt])

    runs = kill_and_resume(shop, tmp_path, rng, args, after_kill=tear)
    for path in paths.values():
        assert f"Feed {path}: {path} cut back from" in runs[1].text, f"{path} not cut back: {runs[1].tail()}"
    problems = {}
    for fmt, path in paths.items():
        expected = SKUS
        if option == "-o" and fmt == "jsonlines":
            expected = SKUS | set(OLD_SKUS)
            assert path.read_bytes().startswith(jsonlines_of(OLD_SKUS)), "the lines -o appended to are gone"
        try:
            problems[fmt] = exactly_once(read_feed(path, fmt), expected)
        except AssertionError as exc:
            problems[fmt] = str(exc)
        assert b"JUNK" not in path.read_bytes()
    failed = {fmt: problem for fmt, problem in problems.items() if problem}
    assert not failed, f"seed {SEED}: {failed}"


# 2. Every store


def test_jsonlines_on_every_store(tmp_path, shop, rng, store_settings):
    path = tmp_path / "items.jsonl"
    kill_and_resume(shop, tmp_path, rng, ["-o", str(path)], extra=dict(store_settings))
    assert_exactly_once(path, "jsonlines")


# 3. Batch feeds


def batch_files(directory: Path, pattern: str) -> dict[int, Path]:
    files = {}
    for path in directory.iterdir():
        match = re.fullmatch(pattern, path.name)
        if match:
            files[int(match.group(1))] = path
    return files


def assert_batches(files: dict[int, Path], fmt: str) -> None:
    """Batch ids 1..N, BATCH_ITEMS items in each but the last (1..BATCH_ITEMS), every file
    whole, the union exactly once: what Scrapy writes without kills."""
    assert sorted(files) == list(range(1, len(files) + 1)), f"batch ids {sorted(files)}"
    sizes = {}
    everything = []
    for batch_id, path in sorted(files.items()):
        items = read_feed(path, fmt)
        sizes[batch_id] = len(items)
        everything += items
    last = max(files)
    assert all(n == BATCH_ITEMS for batch_id, n in sizes.items() if batch_id != last), sizes
    assert 1 <= sizes[last] <= BATCH_ITEMS, f"the last batch is empty or too big: {sizes}"
    problem = exactly_once(everything)
    assert problem is None, f"seed {SEED}: {problem} (batch sizes {sizes})"


@pytest.mark.parametrize("fmt", ["jsonlines", "json"])
def test_batch_feeds_continue_their_numbering(tmp_path, shop, rng, fmt):
    ext = FORMATS[fmt]
    template = str(tmp_path / f"items-%(batch_id)d.{ext}")
    if fmt == "jsonlines":  # the global setting, with -o
        args, extra = ["-o", template], {"FEED_EXPORT_BATCH_ITEM_COUNT": BATCH_ITEMS}
    else:  # the feed option
        args, extra = [], {"FEEDS": {template: {"format": fmt, "batch_item_count": BATCH_ITEMS}}}
    kill_and_resume(shop, tmp_path, rng, args, extra=extra)
    assert_batches(batch_files(tmp_path, rf"items-(\d+)\.{ext}"), fmt)


# 4. Feeds delivered at close (FTP, S3)


@pytest.mark.parametrize("where", ["ftp", "s3", "ftp-batch"])
def test_feeds_delivered_once_at_completion(tmp_path, shop, rng, request, where):
    prefix = tmp_path.name
    env, extra = None, {}
    options: dict[str, Any] = {"format": "jsonlines"}
    if where.startswith("ftp"):
        server = request.getfixturevalue("ftp_server")
        name = "items-%(batch_id)d.jsonl" if where == "ftp-batch" else "items.jsonl"
        url = server.url(f"{prefix}/{name}")
        if where == "ftp-batch":
            options["batch_item_count"] = BATCH_ITEMS

        def uploaded() -> list[str]:
            folder = server.root / prefix
            return sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    else:
        server = request.getfixturevalue("s3_server")
        url = server.url(f"{prefix}/items.jsonl")
        env, extra = server.env, dict(server.settings)

        def uploaded() -> list[str]:
            return [key for key in server.keys() if key.startswith(f"{prefix}/")]
    extra["FEEDS"] = {url: options}
    checkpoints = tmp_path / "checkpoints"
    held: list[Path] = []

    def nothing_uploaded(n: int, run: Run) -> None:
        assert uploaded() == [], f"uploaded before the checkpoint completed (kill {n + 1}, seed {SEED})"
        if n == 0:
            held.append(checkpoints / "feeds" / checkpoint_id(run))
        else:  # by the last kill, pages were processed: their items wait in CHECKPOINT_DIR
            assert held[0].is_dir() and any(held[0].iterdir()), f"nothing held in {held[0]} (seed {SEED})"

    runs = kill_and_resume(shop, tmp_path, rng, [], extra=extra, env=env, after_kill=nothing_uploaded)
    assert not held[0].exists(), f"{held[0]} is still there after its feeds were delivered"
    if where == "ftp":
        assert uploaded() == ["items.jsonl"]
        assert_exactly_once(server.root / prefix / "items.jsonl", "jsonlines")
    elif where == "s3":
        assert uploaded() == [f"{prefix}/items.jsonl"]
        problem = exactly_once(parse_feed(server.get(f"{prefix}/items.jsonl"), "jsonlines"))
        assert problem is None, f"seed {SEED}: {problem}"
    else:
        assert_batches(batch_files(server.root / prefix, r"items-(\d+)\.jsonl"), "jsonlines")
    if where.startswith("ftp"):
        # Never a password in a log line or in the checkpoint store.
        secret = server.password.encode()
        for run in runs:
            assert secret not in run.log.read_bytes(), f"the FTP password is in {run.log}"
        assert "Stored jsonlines feed" in runs[-1].text and ":***@" in runs[-1].text
        stored = [p for p in checkpoints.rglob("*") if p.is_file()]
        assert any(p.name.startswith("checkpoints.sqlite3") for p in stored), stored
        for path in stored:
            assert secret not in path.read_bytes(), f"the FTP password is in {path}"


def test_held_feed_killed_before_its_first_item_resumes(tmp_path, shop, ftp_server):
    """Killed before any item reached the feed: its held file was never created, and the
    checkpoint saved it at 0 bytes. The resume carries on (it used to refuse: "is missing")."""
    prefix = tmp_path.name
    feeds = {"FEEDS": {ftp_server.url(f"{prefix}/items.jsonl"): {"format": "jsonlines"}}}
    # Requests 0.5 s apart: the kill lands after the home page, long before a product page.
    run = crawl(shop, tmp_path, extra={**feeds, "DOWNLOAD_DELAY": 0.5}, kill_when=shop.served_anything)
    assert_killed(run, 0)
    assert shop.product_pages() == 0, "a product page was served before the kill: not the state under test"
    held = tmp_path / "checkpoints" / "feeds" / checkpoint_id(run)
    assert not held.exists() or not any(held.iterdir())
    run = crawl(shop, tmp_path, extra=feeds, resume=True)
    assert_finished(run)
    assert_exactly_once(ftp_server.root / prefix / "items.jsonl", "jsonlines")
    assert not held.exists()


def test_failed_delivery_is_held_and_delivered_by_a_resume(tmp_path, shop, ftp_server):
    """The FTP server is down when the crawl completes: the checkpoint is failed and keeps the
    export; resumed by id once the server is back, it delivers the export once."""
    prefix = tmp_path.name
    feeds = {"FEEDS": {ftp_server.url(f"{prefix}/items.jsonl"): {"format": "jsonlines"}}}
    ftp_server.stop()
    try:
        run = crawl(shop, tmp_path, extra=feeds)
    finally:
        ftp_server.start()
    text = run.text
    assert run.code == 0 and "Error delivering jsonlines feed (300 items) in: ftp://feeds:***@" in text, run.tail()
    assert "saved as failed (finished)" in text, run.tail()
    cid = checkpoint_id(run)
    held = tmp_path / "checkpoints" / "feeds" / cid
    assert any(held.iterdir())
    assert not (ftp_server.root / prefix).exists()
    run = crawl(shop, tmp_path, extra={**feeds, "CHECKPOINT_ID": cid})
    assert_finished(run)
    assert "Stored jsonlines feed (300 items) in: ftp://feeds:***@" in run.text, run.tail()
    assert_exactly_once(ftp_server.root / prefix / "items.jsonl", "jsonlines")
    assert not held.exists()
    for log in tmp_path.glob("crawl-*.log"):
        assert ftp_server.password.encode() not in log.read_bytes(), f"the FTP password is in {log}"


# 5. Feeds changed between runs, and other bad input


@pytest.mark.parametrize("change", ["shortened", "replaced"])
def test_feed_changed_between_runs_is_refused(tmp_path, shop, rng, change):
    path = tmp_path / "items.jsonl"
    point = rng.randrange(150, PRODUCTS - END_MARGIN)  # late enough for a flush with items
    print(f"seed {SEED}, kill point {point}")
    run = crawl(shop, tmp_path, ["-O", str(path)], kill_at=point)
    assert_killed(run, point)
    (saved,) = saved_feeds(tmp_path)
    length, size = saved["length"], path.stat().st_size
    assert 0 < length <= size, f"nothing saved to cut back to (seed {SEED}): {saved}, file {size} bytes"
    if change == "shortened":
        with path.open("r+b") as f:
            f.truncate(length // 2)
    else:  # another file, larger than the saved length
        path.write_bytes(jsonlines_of([f"OTHER-{n:04d}" for n in range(length // 50 + 10)]))
        assert path.stat().st_size > length
    before = path.read_bytes()
    run = crawl(shop, tmp_path, ["-O", str(path)], resume=True)
    text = run.text
    assert "'finish_reason': 'checkpoint_error'" in text and run.code == 1, run.tail()
    assert f"Feed {path}" in text, run.tail()
    if change == "shortened":
        assert f"has {len(before)} bytes, but the checkpoint saved it at {length} bytes" in text, run.tail()
    else:
        assert f"the first {length} bytes of {path} are not those the checkpoint saved" in text, run.tail()
    assert path.read_bytes() == before, "a refused resume changed the feed"
    assert "Resuming checkpoint" not in text


def test_overwrite_on_resume_empties_nothing(tmp_path, shop, rng):
    """-o, killed, then resumed with -O: the resume does not empty the file."""
    path = tmp_path / "items.jsonl"
    path.write_bytes(jsonlines_of(OLD_SKUS))
    point = rng.randrange(FIRST_KILL, PRODUCTS - END_MARGIN)
    print(f"seed {SEED}, kill point {point}")
    run = crawl(shop, tmp_path, ["-o", str(path)], kill_at=point)
    assert_killed(run, point)
    run = crawl(shop, tmp_path, ["-O", str(path)], resume=True)
    assert_finished(run)
    assert path.read_bytes().startswith(jsonlines_of(OLD_SKUS))
    assert_exactly_once(path, "jsonlines", SKUS | set(OLD_SKUS))


def test_unwritable_feed_fails_at_start(tmp_path, shop):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a regular file\n")
    path = blocker / "items.jsonl"
    run = crawl(shop, tmp_path, ["-o", str(path)])
    text = run.text
    assert "'finish_reason': 'checkpoint_error'" in text and run.code == 1, run.tail()
    assert f"Feed {path} cannot be opened for writing" in text, run.tail()
    assert blocker.read_text() == "a regular file\n"
    assert shop.product_pages() == 0


def test_feed_added_and_removed_between_runs(tmp_path, shop, rng):
    kept, added = tmp_path / "kept.jsonl", tmp_path / "added.jsonl"
    first, second = kill_points(rng, 2)
    print(f"seed {SEED}, kill points {[first, second]}")
    run = crawl(shop, tmp_path, ["-o", str(kept)], kill_at=first)
    assert_killed(run, first)
    # -O on a resume empties nothing, not even a feed the checkpoint has not seen before.
    added.write_bytes(jsonlines_of(OLD_SKUS))
    run = crawl(shop, tmp_path, ["-O", str(kept), "-O", str(added)], resume=True, kill_at=second)
    assert_killed(run, second)
    assert f"Feed {added} is new since checkpoint" in run.text, run.tail()
    added_bytes = added.read_bytes()
    assert added_bytes.startswith(jsonlines_of(OLD_SKUS))
    run = crawl(shop, tmp_path, ["-o", str(kept)], resume=True)
    assert_finished(run)
    assert re.search(rf"Feed {re.escape(str(added))} of checkpoint \S+ is no longer in FEEDS: left as it is",
                     run.text), run.tail()
    assert added.read_bytes() == added_bytes
    assert_exactly_once(kept, "jsonlines")


def test_graceful_stop_leaves_a_whole_json_feed(tmp_path, shop, rng):
    path = tmp_path / "items.json"
    point = rng.randrange(FIRST_KILL, PRODUCTS - END_MARGIN)
    print(f"seed {SEED}, SIGINT at {point}")
    run = crawl(shop, tmp_path, ["-O", str(path)], kill_at=point, sig=signal.SIGINT)
    assert run.killed and "saved as active (shutdown)" in run.text, run.tail()
    items = read_feed(path, "json")  # closed: "]" written
    assert 0 < len(items) < PRODUCTS and len({i["sku"] for i in items}) == len(items), len(items)
    run = crawl(shop, tmp_path, ["-O", str(path)], resume=True)
    assert_finished(run)
    assert f"Feed {path}: {path} cut back from" in run.text, run.tail()  # the "]" of the stop
    assert_exactly_once(path, "json")


def test_postprocessed_feed_is_logged_as_not_exactly_once(tmp_path, shop):
    """A feed that cannot be cut back is said to be at least once, and still written whole."""
    path = tmp_path / "items.jsonl.gz"
    plugin = "scrapy.extensions.postprocessing.GzipPlugin"
    run = crawl(shop, tmp_path, extra={"FEEDS": {str(path): {"format": "jsonlines", "postprocessing": [plugin]}}})
    assert_finished(run, resumed=False)
    assert f"Feed {path} cannot be cut back after a kill (postprocessing)" in run.text, run.tail()
    problem = exactly_once(parse_feed(gzip.decompress(path.read_bytes()), "jsonlines"))
    assert problem is None, problem


# 6. Without checkpoints


def test_without_checkpoints_the_feed_is_scrapys(tmp_path, shop):
    path = tmp_path / "items.json"
    path.write_bytes(JUNK)
    run = crawl(shop, tmp_path, ["-O", str(path)], extra={"CHECKPOINT_ENABLED": False},
                env={"ENABLE_CHECKPOINTS": ""})
    text = run.text
    assert run.code == 0 and "'finish_reason': 'finished'" in text, run.tail()
    assert "Stored json feed (300 items) in:" in text, run.tail()
    assert "checkpoint/flushes" not in text and "Checkpoint " not in text, run.tail()
    assert not (tmp_path / "checkpoints").exists()
    assert_exactly_once(path, "json")
