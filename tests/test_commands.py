"""End to end: `scrapy checkpoint` subprocesses in the demo project, on what real crawls stored."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import dataclass

import demo_support
import pytest

from scrapy_checkpoint.commands.checkpoint import LIST_HEADERS

from .redis_server import free_port
from .test_e2e import checkpoint_id_of, crawl, open_any_store, store_settings  # noqa: F401 (a fixture)

pytestmark = pytest.mark.e2e


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def json(self):
        # stderr may hold a store's warnings (the hybrid store's, on a copy behind the other).
        assert self.returncode == 0, self
        return json.loads(self.stdout)  # the whole of stdout: one document

    def failure(self) -> str:
        """The one line a failure prints on stderr (nothing on stdout, no traceback)."""
        assert self.returncode != 0 and self.stdout == "", self
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self.stderr
        return lines[0]


def scrapy_checkpoint(tmp_path, *args, extra=None) -> Run:
    """``scrapy checkpoint ARGS`` in the demo project, on the store the crawls of *tmp_path* used."""
    settings = {"CHECKPOINT_DIR": str(tmp_path / "checkpoints"), **(extra or {})}
    command = [sys.executable, "-m", "scrapy", "checkpoint", *args]
    for name, value in settings.items():
        command += ["-s", demo_support.setting_arg(name, value)]
    done = subprocess.run(command, cwd=demo_support.PROJECT_DIR, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def small_shop(tmp_path_factory):
    """The demo shop with 120 products (the end-to-end `shop` has 600): here crawls only
    need to finish, or be killed, and the file runs four of each. Yields (url, products)."""
    log = tmp_path_factory.mktemp("shop") / "shop.log"
    process, url = demo_support.start_shop(products=120, per_page=20, categories=3, latency=0.002, log=log)
    try:
        yield url, 120
    finally:
        demo_support.stop_shop(process)


def held(tmp_path, store_settings, *checkpoint_ids):
    """What the store holds of each checkpoint: (its --json document, pending requests,
    processed fingerprints, stored items), read through the store API."""
    store = open_any_store(tmp_path, store_settings)
    try:
        found = {}
        for checkpoint_id in checkpoint_ids:
            record = store.get(checkpoint_id)
            if record is None:
                found[checkpoint_id] = None
                continue
            pending, cursor = 0, None
            while True:
                page, after = store.pending_requests(checkpoint_id, cursor, 1000)
                pending += len(page)
                if after == cursor:
                    break
                cursor = after
            processed = sum(1 for _ in store.processed_fingerprints(checkpoint_id))
            items = [item for _, item in store.items(checkpoint_id)]
            document = {**record.model_dump(mode="json"), "urls_pending": pending}
            found[checkpoint_id] = document, pending, processed, items
        return found
    finally:
        store.close()


def test_list_show_delete(tmp_path, small_shop, store_settings):
    """On every store: a completed checkpoint and an active one (a killed crawl), listed
    newest first with what the store holds; shown; deleted, after which a resume starts anew."""
    url, products = small_shop
    items_file = tmp_path / "items.jsonl"
    code, _, log = crawl(url, tmp_path, extra=dict(store_settings))
    assert code == 0, log.read_text()[-3000:]
    completed = checkpoint_id_of(log)
    _, killed, log = crawl(url, tmp_path, kill_when_items=demo_support.count_lines(items_file) + products // 3,
                           extra=dict(store_settings))
    assert killed
    active = checkpoint_id_of(log)
    store = held(tmp_path, store_settings, completed, active)

    listed = scrapy_checkpoint(tmp_path, "list", "--json", extra=store_settings).json()
    assert [d["checkpoint_id"] for d in listed] == [active, completed]
    assert [d["status"] for d in listed] == ["active", "completed"]
    for document in listed:
        expected, pending, processed, _ = store[document["checkpoint_id"]]
        assert document == expected
        assert document["urls_pending"] == pending
        assert document["pipeline_data"]["urls_processed"] == processed > 0
    assert store[active][1] > 0 and store[completed][1] == 0
    assert listed[1]["pipeline_data"]["extraction_results"]["items_scraped"] == products

    shown = scrapy_checkpoint(tmp_path, "show", active, "--json", extra=store_settings).json()
    assert shown.pop("store")
    size = shown.pop("stored_bytes")
    assert size is None or size > 0
    assert shown == store[active][0]

    deleted = scrapy_checkpoint(tmp_path, "delete", active, "no-such-id", extra=store_settings)
    assert (deleted.returncode, deleted.stdout) == (1, f"Deleted checkpoint {active}.\n")
    (line,) = deleted.stderr.splitlines()
    assert line.startswith("No checkpoint no-such-id in "), line
    assert scrapy_checkpoint(tmp_path, "list", "--json", extra=store_settings).json() == listed[1:]
    assert held(tmp_path, store_settings, active, completed) == {active: None, completed: store[completed]}
    _, _, log = crawl(url, tmp_path, resume=True, kill_when_items=demo_support.count_lines(items_file) + 1,
                      extra=dict(store_settings))
    text = log.read_text()
    assert "No resumable checkpoint" in text, text[-3000:]
    assert checkpoint_id_of(log) not in (active, completed)


def test_show_export_prune(tmp_path, small_shop):
    """A completed crawl with its items stored and a killed one without: show for people;
    export with Scrapy's exporters, in the format of the file's extension (or after a colon,
    - for standard output); prune --dry-run deletes nothing, prune what its filters select.
    The project may have checkpoints off: the command reads their store all the same."""
    url, products = small_shop
    items_file = tmp_path / "items.jsonl"
    code, _, log = crawl(url, tmp_path, extra={"CHECKPOINT_STORE_ITEMS": True})
    assert code == 0, log.read_text()[-3000:]
    completed = checkpoint_id_of(log)
    _, killed, log = crawl(url, tmp_path, kill_when_items=demo_support.count_lines(items_file) + products // 3)
    assert killed
    active = checkpoint_id_of(log)
    store = held(tmp_path, {}, completed, active)
    stored = store[completed][3]
    assert len({item["sku"] for item in stored}) == products
    off = {"CHECKPOINT_ENABLED": False}

    def row(checkpoint_id):
        """The words of a checkpoint's row in the table: times in UTC, to the second."""
        document = store[checkpoint_id][0]
        data = document["pipeline_data"]
        counts = (data["urls_discovered"], data["urls_processed"], document["urls_pending"],
                  data["extraction_results"]["items_scraped"])
        return [checkpoint_id, "products", "products", "product_catalog", document["status"],
                *map(str, counts), *document["updated_at"][:19].split("T"), *document["expires_at"][:19].split("T")]

    table = scrapy_checkpoint(tmp_path, "list", extra=off)
    assert table.returncode == 0 and table.stderr == ""
    header, *rows = table.stdout.splitlines()
    assert header.split() == " ".join(LIST_HEADERS).split()
    assert [line.split() for line in rows] == [row(active), row(completed)]

    shown = scrapy_checkpoint(tmp_path, "show", active, extra=off)
    assert shown.returncode == 0 and shown.stderr == ""
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["Checkpoint", active]
    assert f"Status         active (resume: scrapy crawl products -s CHECKPOINT_ID={active})" in lines
    data = store[active][0]["pipeline_data"]
    urls = f"{data['urls_discovered']} discovered, {data['urls_processed']} processed, {store[active][1]} pending"
    assert f"URLs           {urls}" in lines

    out = tmp_path / "export" / "items.json"
    done = scrapy_checkpoint(tmp_path, "export", completed, "-O", str(out))
    assert done.stdout == f"Exported {products} items of checkpoint {completed} to {out} (json).\n", done
    assert json.loads(out.read_text()) == stored
    done = scrapy_checkpoint(tmp_path, "export", completed, "-o", str(tmp_path / "items.csv"))
    assert done.returncode == 0, done
    with open(tmp_path / "items.csv", newline="") as f:
        assert [row["sku"] for row in csv.DictReader(f)] == [item["sku"] for item in stored]
    done = scrapy_checkpoint(tmp_path, "export", completed, "-o", "-:jsonlines")
    assert [json.loads(line) for line in done.stdout.splitlines()] == stored
    assert done.stderr.startswith(f"Exported {products} items")
    line = scrapy_checkpoint(tmp_path, "export", active, "-o", str(tmp_path / "none.json")).failure()
    assert active in line and "CHECKPOINT_STORE_ITEMS" in line
    assert not (tmp_path / "none.json").exists()

    dry = scrapy_checkpoint(tmp_path, "prune", "--older-than", "0s", "--dry-run", "--json").json()
    assert dry["dry_run"] is True
    assert [d["checkpoint_id"] for d in dry["checkpoints"]] == [active, completed]
    assert held(tmp_path, {}, completed, active) == store
    nothing = scrapy_checkpoint(tmp_path, "prune", "--older-than", "1h")
    assert (nothing.returncode, nothing.stdout) == (0, "")
    pruned = scrapy_checkpoint(tmp_path, "prune", "--status", "completed", "failed")
    assert pruned.returncode == 0
    assert pruned.stdout.startswith("Deleted 1 checkpoint from sqlite:") and completed in pruned.stdout
    listed = scrapy_checkpoint(tmp_path, "list", "--status", "active", "completed", "--json", extra=off).json()
    assert [d["checkpoint_id"] for d in listed] == [active]
    assert held(tmp_path, {}, completed, active) == {completed: None, active: store[active]}


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["show", "no-such-id"], 1, ["No checkpoint no-such-id in sqlite:"]),
        (["prune", "--older-than", "3 weeks"], 2, ["--older-than", "'3 weeks'"]),
        (["list", "--status", "lost"], 2, ["--status", "'lost'"]),
        (["list", "--older-than", "1d"], 2, ["--older-than", "prune"]),
        (["prune"], 2, ["--older-than", "--status"]),
        (["export", "x", "-o", "items.weird"], 2, ["'weird'"]),
        (["frob"], 2, ["'frob'"]),
    ],
    ids=["unknown-id", "bad-duration", "bad-status", "misplaced-option", "prune-unfiltered",
         "bad-format", "bad-subcommand"],
)
def test_command_line_errors(tmp_path, args, status, words):
    run = scrapy_checkpoint(tmp_path, *args)
    line = run.failure()
    assert run.returncode == status
    assert all(word in line for word in words), line
    assert not (tmp_path / "checkpoints").exists()  # looking creates nothing


@pytest.mark.parametrize("store", ["redis", "mongodb"])
def test_unreachable_store_is_one_line_without_password(tmp_path, store):
    port = free_port()
    extra = {"CHECKPOINT_STORE_TIMEOUT": 0.5}
    if store == "redis":
        extra["CHECKPOINT_REDIS_URL"] = f"redis://scraper:s3cret@127.0.0.1:{port}/0"
        where = f"redis://scraper:***@127.0.0.1:{port}/0"
    else:
        extra["CHECKPOINT_MONGO_URI"] = f"mongodb://scraper:s3cret@127.0.0.1:{port}/"
        where = f"mongodb://scraper:***@127.0.0.1:{port}/"
    run = scrapy_checkpoint(tmp_path, "list", extra=extra)
    line = run.failure()
    assert run.returncode == 1
    assert where in line and "unavailable" in line, line
    assert "s3cret" not in line
