"""End to end: `scrapy checkpoint` subprocesses in the demo project, on what real crawls stored."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from dataclasses import dataclass

import demo_support
import pytest

from scrapy_checkpoint.commands.checkpoint import LIST_HEADERS, STATS_HEADERS, document

from .server_process import free_port
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
    with demo_support.running_shop(log, products=120, per_page=20, categories=3, latency=0.002) as url:
        yield url, 120


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
            found[checkpoint_id] = {**document(record), "urls_pending": pending}, pending, processed, items
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


def test_run_history_and_stats(tmp_path, small_shop, store_settings):
    """On every store: a checkpoint killed, resumed and killed, refused a resume (its feed was
    cut short), then resumed to the end; and one crawled in one go. Each run is recorded as
    it ended; `stats` counts them per site and job type; the resumed runs log their progress."""
    url, products = small_shop
    items_file = tmp_path / "items.jsonl"
    extra = dict(store_settings, CHECKPOINT_LOG_INTERVAL=0.2)
    _, killed, log = crawl(url, tmp_path, kill_when_items=products // 4, extra=extra)
    assert killed
    checkpoint_id = checkpoint_id_of(log)
    store = open_any_store(tmp_path, store_settings)
    try:
        def saved():
            # Killed once this run is in the history, with part of the feed saved: a run killed
            # before its first flush is not, and a refusal needs a saved length to cut below.
            checkpoint = store.get(checkpoint_id)
            return checkpoint.runs[-1].number == 2 and checkpoint.pipeline_data.outputs[0]["length"] > 0

        _, killed, log = crawl(url, tmp_path, resume=True, kill_when=saved, extra=extra)
        saved = store.get(checkpoint_id).pipeline_data.outputs[0]["length"]
    finally:
        store.close()
    assert killed
    kept = items_file.read_bytes()
    items_file.write_bytes(kept[: saved // 2])
    code, _, log = crawl(url, tmp_path, resume=True, extra=extra)
    assert code == 1 and "'finish_reason': 'checkpoint_error'" in log.read_text()
    items_file.write_bytes(kept)
    code, _, log = crawl(url, tmp_path, resume=True, extra=extra)
    assert code == 0, log.read_text()[-3000:]
    text = log.read_text()
    progress = re.findall(rf"Checkpoint {checkpoint_id}: (\d+) requests, (\d+) processed .*?, (\d+) pending, "
                          rf"(\d+) items; .*; store up", text)
    assert progress, text[-3000:]
    assert [int(p[1]) for p in progress] == sorted(int(p[1]) for p in progress)  # processed only grows
    code, _, log = crawl(url, tmp_path, extra=extra)
    assert code == 0, log.read_text()[-3000:]
    one_go = checkpoint_id_of(log)

    shown = scrapy_checkpoint(tmp_path, "show", checkpoint_id, "--json", extra=store_settings).json()
    runs = shown["runs"]
    assert [r["number"] for r in runs] == [1, 2, 3, 4]
    assert [r["outcome"] for r in runs] == ["killed", "killed", "checkpoint_error", "finished"]
    assert [r["resumed"] for r in runs] == [False, True, True, True]
    assert [r["status"] for r in runs] == [None, None, None, "completed"]
    assert runs[2]["refused"] and "items.jsonl" in runs[2]["refused"]
    assert [r["refused"] for r in (runs[0], runs[1], runs[3])] == [None, None, None]
    assert runs[1]["resumed_from_seq"] <= runs[2]["resumed_from_seq"] == runs[3]["resumed_from_seq"] - 1
    assert all(r["pending_at_resume"] > 0 for r in runs[1:])
    assert runs[1]["resume_seconds"] >= 0 and runs[3]["resume_seconds"] >= 0 and runs[2]["resume_seconds"] is None
    for earlier, later in zip(runs, runs[1:]):
        assert earlier["updated_at"] <= later["started_at"]
    # A run's counts are those of its saved batches, whose counts the record sums.
    data = shown["pipeline_data"]
    assert sum(r["items"] for r in runs) == data["extraction_results"]["items_scraped"] == products
    assert sum(r["pages"] for r in runs) == data["urls_processed"]
    assert runs[2]["pages"] == runs[2]["items"] == 0

    table = scrapy_checkpoint(tmp_path, "show", checkpoint_id, extra=store_settings)
    lines = table.stdout.splitlines()
    assert "Runs           4 runs" in lines, table.stdout
    (refusal,) = [line for line in lines if line.startswith("  run 3 refused: ")]

    stats = scrapy_checkpoint(tmp_path, "stats", "--json", extra=store_settings).json()
    (group,) = stats["groups"]
    assert (group["site_domain"], group["job_type"]) == ("products", "product_catalog")
    expected = {"checkpoints": 2, "active": 0, "completed": 2, "failed": 0, "runs": 5, "killed": 2,
                "recoveries": 3, "refused": 1, "completed_after_recovery": 1}
    assert {k: group[k] for k in expected} == expected
    assert group["recovery_success_rate"] == pytest.approx(2 / 3)
    assert group["resume_seconds_median"] >= 0 and group["downtime_seconds_median"] >= 0
    assert group["storage_bytes"] > 0 or group["storage_unknown"] == 2
    assert stats["total"] == {k: v for k, v in group.items() if k not in ("site_domain", "job_type")}
    assert one_go != checkpoint_id

    table = scrapy_checkpoint(tmp_path, "stats", extra=store_settings)
    header, row = table.stdout.splitlines()
    assert header.split() == " ".join(STATS_HEADERS).split()
    assert row.split()[:11] == ["products", "product_catalog", "2", "0", "2", "0", "5", "2", "3", "1", "67%"]
    nothing = scrapy_checkpoint(tmp_path, "stats", "--site", "elsewhere.example", extra=store_settings)
    assert (nothing.returncode, nothing.stdout) == (0, "")
    assert "No checkpoints in " in nothing.stderr and "--site elsewhere.example" in nothing.stderr
