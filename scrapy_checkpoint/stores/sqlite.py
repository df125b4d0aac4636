"""The embedded default store: one SQLite file per project, from the standard library."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from ..exceptions import CheckpointError, CorruptCheckpointError
from ..models import POSITION_BITS, RESUMABLE, Batch, Checkpoint, QuerySession, UserQuery, utcnow
from .base import CheckpointStore, StatusFilter, statuses

if TYPE_CHECKING:
    from ..settings import CheckpointSettings

logger = logging.getLogger(__name__)

_Q = TypeVar("_Q", UserQuery, QuerySession)

FILENAME = "checkpoints.sqlite3"
#: PRAGMA user_version of the layout below (the store's ``layout``); a file of another
#: version is refused, not mangled.
SCHEMA_VERSION = 3
#: WAL size that wakes the checkpointing thread. Each checkpoint copies every page the WAL
#: holds, so rarer ones copy a page rewritten by many batches once instead of many times.
WAL_CHECKPOINT_BYTES = 16 * 1024 * 1024
#: WAL size past which apply() checkpoints it itself, and empties it: a writer that never
#: pauses (large batches back to back) leaves the checkpointing thread no moment when the
#: whole WAL is copied back, so the WAL is never restarted and grows without end (24 GB,
#: building a 10M-URL checkpoint in 20,000-URL batches).
WAL_LIMIT_BYTES = 16 * WAL_CHECKPOINT_BYTES
#: Page cache of the connection that reads every processed fingerprint on resume.
SCAN_CACHE_KIB = 2048
#: Stored items read at a time by items().
ITEMS_PAGE = 1000
#: The first bits of a WAL header's magic number; its last bit gives the checksums' byte order.
WAL_MAGIC = 0x377F0682
#: Rows a delete removes per transaction: a crawl writing the same file waits behind one
#: chunk (a few milliseconds), never behind a whole checkpoint of millions of URLs.
DELETE_CHUNK = 2000
#: After each chunk a delete pauses this many times as long as the chunk took (at least
#: DELETE_PAUSE_MIN seconds), so that a writer polling for the lock finds it free.
DELETE_PAUSE_RATIO = 2.0
DELETE_PAUSE_MIN = 0.005
#: The status column of a checkpoint being deleted. Its id column becomes
#: ``deleting:<key>``: no lookup finds it, and its key is not reused while rows remain.
DELETING = "deleting"

# Rows refer to their checkpoint by its integer key: a 36-character UUID repeated in every
# row and index entry would make up much of a large file.
#
# Nothing a batch writes is keyed by fingerprint: fingerprints are random, so at ten million
# URLs each one written would dirty a page of its own (one random B-tree page per event made a
# flush three times slower at 10M than at 0). Pending requests are kept by their position
# (discovery order) and processed fingerprints by the order they were processed in: a batch
# appends to both, and a processed request's record is deleted by the position the extension
# saved in its meta (RECORD_META), near the others of its time. The extension, not the store,
# keeps a URL from being recorded twice (the scheduler's dupefilter, the processed set of a
# resume); a twin left by a resume is superseded when restored (Batch.superseded). Requests
# migrated from layout 2 have no position in their meta: ``legacy`` rows, found by fingerprint.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY,
    checkpoint_id TEXT NOT NULL UNIQUE,
    spider TEXT NOT NULL,
    site_domain TEXT NOT NULL,
    job_type TEXT NOT NULL,
    status TEXT NOT NULL,
    seq INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    expires_at TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS checkpoints_job
    ON checkpoints (spider, site_domain, job_type, status, updated_at);
CREATE TABLE IF NOT EXISTS pending (
    checkpoint INTEGER NOT NULL,
    position INTEGER NOT NULL,
    fingerprint BLOB NOT NULL,
    url TEXT NOT NULL,
    request BLOB NOT NULL,
    start INTEGER NOT NULL DEFAULT 0,
    legacy INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (checkpoint, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_legacy ON pending (checkpoint, fingerprint) WHERE legacy = 1;
CREATE TABLE IF NOT EXISTS processed (
    checkpoint INTEGER NOT NULL,
    position INTEGER NOT NULL,
    fingerprint BLOB NOT NULL,
    PRIMARY KEY (checkpoint, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    checkpoint INTEGER NOT NULL,
    item_type TEXT NOT NULL,
    item TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_checkpoint ON items (checkpoint);
"""

# `scrapy query`'s documents. Tables added to a layout, never changed: a file of the layout
# made before them gains them when opened, and older versions of the package ignore them.
# Times are UTC ISO strings of one width, so that they sort as text.
_QUERY_SCHEMA = """
CREATE TABLE IF NOT EXISTS user_queries (
    id INTEGER PRIMARY KEY,
    query_id TEXT NOT NULL UNIQUE,
    user_id TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS user_queries_created ON user_queries (created_at);
CREATE INDEX IF NOT EXISTS user_queries_user ON user_queries (user_id, created_at);
CREATE TABLE IF NOT EXISTS query_sessions (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL UNIQUE,
    query_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS query_sessions_created ON query_sessions (created_at);
CREATE INDEX IF NOT EXISTS query_sessions_query ON query_sessions (query_id, created_at);
"""

#: Each kind of query document: its table and its id column.
_QUERY_TABLES: dict[type, tuple[str, str]] = {
    UserQuery: ("user_queries", "query_id"),
    QuerySession: ("query_sessions", "session_id"),
}


def _moment(value: datetime) -> str:
    """A time as a column: UTC, to the microsecond, always as wide (a naive one is UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _wal_checksum(order: str, data: bytes, s0: int = 0, s1: int = 0) -> tuple[int, int]:
    """SQLite's WAL checksum of *data*, carried on from (s0, s1)."""
    words = iter(struct.unpack(f"{order}{len(data) // 4}I", data))
    for a, b in zip(words, words):
        s0 = (s0 + a + s1) & 0xFFFFFFFF
        s1 = (s1 + b + s0) & 0xFFFFFFFF
    return s0, s1


class SQLiteCheckpointStore(CheckpointStore):
    """Checkpoints in ``CHECKPOINT_DIR/checkpoints.sqlite3``.

    WAL journaling and one transaction per batch make every batch all-or-nothing across a
    process kill. ``synchronous=NORMAL`` may lose the last batches on a power cut, but only
    a suffix of them: the database stays a consistent prefix of the crawl, so a power cut
    costs re-downloads, never a lost URL.
    """

    name = "sqlite"
    by_position = True
    #: The file's PRAGMA user_version; a file without it (0) that holds tables is refused.
    layout = SCHEMA_VERSION

    def _from_layout_2(self, db: sqlite3.Connection) -> None:
        """Layout 2 kept a row a request, keyed by fingerprint, processed or not. Its pending
        rows become legacy pending rows (a position in their meta they never had), its
        processed ones the processed log (at negative positions, before every batch's). One
        transaction, the new layout stamped in it: a kill leaves layout 2 whole."""
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(
                "INSERT INTO pending (checkpoint, position, fingerprint, url, request, start, legacy)"
                " SELECT checkpoint, position, fingerprint, COALESCE(url, ''), request, start, 1"
                " FROM requests WHERE processed = 0 AND request IS NOT NULL"
            )
            db.execute(
                "INSERT INTO processed (checkpoint, position, fingerprint)"
                " SELECT checkpoint, -ROW_NUMBER() OVER (PARTITION BY checkpoint ORDER BY fingerprint), fingerprint"
                " FROM requests WHERE processed = 1"
            )
            db.execute("DROP TABLE requests")
            db.execute("PRAGMA user_version = 3")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    migrations = MappingProxyType({2: _from_layout_2})

    def __init__(self, path: str | Path, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._wal = Path(f"{self.path}-wal")
        self._wal_grew = threading.Event()
        self._checkpointer: threading.Thread | None = None
        #: Deletes the rows of checkpoints marked deleting when the store opened.
        self._purger: threading.Thread | None = None

    @classmethod
    def from_checkpoint_settings(cls, settings: CheckpointSettings) -> SQLiteCheckpointStore:
        return cls(settings.directory / FILENAME, settings.store_timeout)

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def _layout_advice(self) -> str:
        return f"Point CHECKPOINT_DIR elsewhere, or move {self.path} away"

    def open(self) -> None:
        with self._lock, self._damage_named():
            if self._db is not None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._check_wal()
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                # Another crawl holding the write lock longer than this is a store outage.
                db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
                # Before the first write (journal_mode is one): a file refused is left as it is.
                version = db.execute("PRAGMA user_version").fetchone()[0]
                tables = db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
                self._settle_layout(version if tables else None, bool(tables), db,
                                    lambda layout: db.execute(f"PRAGMA user_version={int(layout)}"))
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA cache_size=-65536")  # KiB: the unique index stays in memory
                # WAL checkpoints run in a thread of their own (_checkpoint_wal), not in apply();
                # a WAL that was checkpointed shrinks back, so its size tells when to run one.
                db.execute("PRAGMA wal_autocheckpoint=0")
                db.execute(f"PRAGMA journal_size_limit={WAL_CHECKPOINT_BYTES}")
                db.executescript(_SCHEMA + _QUERY_SCHEMA)
            except BaseException:
                db.close()
                raise
            self._db = db
            purge = self._purge_expired()
            self._purge_expired_queries()
            self._checkpointer = threading.Thread(
                target=self._checkpoint_wal, name=f"checkpoint-wal:{self.path.name}", daemon=True
            )
            self._checkpointer.start()
            if purge:
                self._purger = threading.Thread(
                    target=self._purge, args=(purge,), name=f"checkpoint-purge:{self.path.name}", daemon=True
                )
                self._purger.start()

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
        if db is None:
            return
        if self._checkpointer is not None:
            self._wal_grew.set()  # wakes it to see the store closed
            self._checkpointer.join()
            self._checkpointer = None
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # leave a small file behind
        finally:
            db.close()

    def _checkpoint_wal(self) -> None:
        """Copy the WAL back into the database while apply() goes on.

        Random fingerprints touch pages all over the unique index, so every batch adds
        megabytes to the WAL; checkpointing it inside apply() made one flush in a few take
        many times longer than the rest. A PASSIVE checkpoint on a second connection never
        blocks the writer.
        """
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            while self._db is not None:
                self._wal_grew.wait()
                self._wal_grew.clear()
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.OperationalError:
                    pass  # busy: the next wake-up tries again
        finally:
            db.close()

    @contextmanager
    def _damage_named(self) -> Iterator[None]:
        """A damaged file (not a database, a malformed page) named, with what to do about it.
        A locked or busy one is left as it is: that passes."""
        try:
            yield
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(
                f"{self.path} is damaged ({exc}); nothing was written to it. Move it away (a new "
                f"crawl then starts a new file), and to save what it holds try: sqlite3 "
                f"{self.path} .recover | sqlite3 {self.path.with_suffix('.recovered.sqlite3')}"
            ) from exc

    def _check_wal(self) -> None:
        """Say so when SQLite will replay the WAL only in part, and keep a copy of it.

        SQLite stops at the first frame that fails its checksum and drops every later one,
        committed batches included: a resume would start from an older state without a word.
        A torn tail (a power cut) is normal, so only a commit frame after the break whose
        checksum holds from its predecessor's stored one proves committed batches behind it.
        A frame of the WAL's generation that is not a commit frame proves nothing: a rolled
        back transaction leaves such frames behind.
        """
        try:
            with self._wal.open("rb") as f:
                wal = f.read()
                if len(wal) < 32:
                    return
                f.seek(0)
                if f.read(32) != wal[:32]:
                    return  # restarted while read: a live connection has replayed it already
        except FileNotFoundError:
            return
        magic, version, page_size = struct.unpack(">3I", wal[:12])
        if page_size & (page_size - 1) or not 512 <= page_size <= 65536:
            return  # no frame can be found, so none proves anything
        # SQLite ignores the whole WAL if its header fails. Its frames still chain from the
        # stored checksum, so a damaged header is one more frame before the break; a damaged
        # magic number most likely still has its byte-order bit.
        order = ">" if magic & 1 else "<"
        stored = struct.unpack(">2I", wal[24:32])
        broken = (magic & ~1, version) != (WAL_MAGIC, 3007000) or _wal_checksum(order, wal[:24]) != stored
        replayed = 0 if broken else 32  # where SQLite's replay stops
        size = 24 + page_size
        for offset in range(32, len(wal) - size + 1, size):
            head = wal[offset:offset + 24]
            previous, stored = stored, struct.unpack(">2I", head[16:24])
            commit = head[4:8] != bytes(4)
            # Frames of an older generation (other salts) are no part of it. Past the break
            # only a commit frame can prove anything, so only those cost a checksum there.
            valid = head[8:16] == wal[16:24] and (commit or not broken) and _wal_checksum(
                order, head[:8] + wal[offset + 24:offset + size], *previous
            ) == stored
            if valid and commit and not broken:
                replayed = offset + size
            elif valid and commit:
                # The state SQLite replays is an older one, whole and consistent: the crawl goes
                # on from it (after a power cut, the only way to go on), and says so.
                kept = self._wal.with_name(f"{self._wal.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
                kept.write_bytes(wal)
                logger.error(
                    "%(wal)s is damaged (a disk error, or a power cut while it was written): SQLite "
                    "replays it only up to byte %(offset)d and drops the batches committed after it, "
                    "so checkpoints in %(path)s go back to their state before them and their pages are "
                    "done again. The whole WAL is kept as %(kept)s.",
                    {"wal": self._wal, "offset": replayed, "path": self.path, "kept": kept},
                )
                return
            broken = broken or not valid

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"{self.describe()} is not open")
        return self._db

    def _purge_expired(self) -> list[int]:
        """Mark the expired checkpoints deleting, and those whose delete a kill interrupted
        (marked expired at once): the keys whose rows _purge deletes. open() holds the lock."""
        now = utcnow().isoformat()
        with self._transaction() as db:
            expired = db.execute(
                "SELECT id FROM checkpoints WHERE expires_at IS NOT NULL AND expires_at < ?", (now,)
            ).fetchall()
            self._mark_deleting(db, expired)
        return [key for (key,) in expired]

    def _purge(self, keys: list[int]) -> None:
        """Delete the rows of checkpoints marked deleting at open(), in the background: a
        crawl does not wait for millions of rows to go before it starts. The store closed
        first, the next open() goes on."""
        try:
            for key in keys:
                self._delete_marked(key)
        except Exception as exc:
            if self._db is not None:
                logger.warning("Expired checkpoints in %(store)s are left for the next open: %(error)s",
                               {"store": self.describe(), "error": exc})

    @staticmethod
    def _mark_deleting(db: sqlite3.Connection, keys: list[tuple[int]]) -> None:
        """Take these checkpoints out of every lookup, in the caller's transaction, before
        their rows go: one half deleted is never resumed, and the next open() ends the job."""
        db.executemany(
            f"UPDATE checkpoints SET status = '{DELETING}', checkpoint_id = '{DELETING}:' || id,"
            " expires_at = '' WHERE id = ?",
            keys,
        )

    def _delete_marked(self, key: int) -> None:
        """Delete the rows of a checkpoint marked deleting, DELETE_CHUNK at a time, each in a
        transaction of its own (the store's lock held for it alone), then its record."""
        for table, column in (("pending", "position"), ("processed", "position"), ("items", "id")):
            while True:
                started = time.monotonic()
                with self._lock, self._transaction() as db:
                    deleted = db.execute(
                        f"DELETE FROM {table} WHERE checkpoint = ?1 AND {column} IN"
                        f" (SELECT {column} FROM {table} WHERE checkpoint = ?1 ORDER BY {column} LIMIT ?2)",
                        (key, DELETE_CHUNK),
                    ).rowcount
                if self._wal_size() > WAL_CHECKPOINT_BYTES:
                    self._wal_grew.set()
                if deleted < DELETE_CHUNK:
                    break
                time.sleep(max((time.monotonic() - started) * DELETE_PAUSE_RATIO, DELETE_PAUSE_MIN))
        with self._lock, self._transaction() as db:
            db.execute("DELETE FROM checkpoints WHERE id = ?", (key,))

    def _write_record(self, checkpoint: Checkpoint) -> None:
        self.db.execute(
            "INSERT INTO checkpoints (checkpoint_id, spider, site_domain, job_type, status, seq,"
            " updated_at, expires_at, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (checkpoint_id) DO UPDATE SET spider = excluded.spider,"
            " site_domain = excluded.site_domain, job_type = excluded.job_type,"
            " status = excluded.status, seq = excluded.seq, updated_at = excluded.updated_at,"
            " expires_at = excluded.expires_at, record = excluded.record",
            (
                checkpoint.checkpoint_id,
                checkpoint.spider,
                checkpoint.site_domain,
                checkpoint.job_type,
                checkpoint.status.value,
                checkpoint.seq,
                checkpoint.updated_at.isoformat(),
                checkpoint.expires_at.isoformat() if checkpoint.expires_at else None,
                checkpoint.model_dump_json(),
            ),
        )

    def _wal_size(self) -> int:
        try:
            return self._wal.stat().st_size
        except FileNotFoundError:
            return 0

    def _key(self, checkpoint_id: str) -> int:
        """The integer key of a checkpoint (-1, which no row has, for an unknown one)."""
        row = self.db.execute(
            "SELECT id FROM checkpoints WHERE checkpoint_id = ?", (checkpoint_id,)
        ).fetchone()
        return -1 if row is None else row[0]

    def _read_record(self, checkpoint_id: str, record: str) -> Checkpoint:
        return Checkpoint.parse(record, checkpoint_id=checkpoint_id, where=self.describe())

    def create(self, checkpoint: Checkpoint) -> None:
        with self._lock, self._damage_named():
            self._write_record(checkpoint)

    def get(self, checkpoint_id: str) -> Checkpoint | None:
        with self._lock, self._damage_named():
            row = self.db.execute(
                "SELECT record FROM checkpoints WHERE checkpoint_id = ?", (checkpoint_id,)
            ).fetchone()
        return None if row is None else self._read_record(checkpoint_id, row[0])

    def find_resumable(self, spider: str, site_domain: str, job_type: str) -> Checkpoint | None:
        with self._lock, self._damage_named():
            row = self.db.execute(
                "SELECT checkpoint_id, record FROM checkpoints"
                " WHERE spider = ? AND site_domain = ? AND job_type = ? AND status IN (?, ?)"
                " ORDER BY updated_at DESC, id DESC LIMIT 1",
                (spider, site_domain, job_type, *(s.value for s in RESUMABLE)),
            ).fetchone()
        return None if row is None else self._read_record(row[0], row[1])

    def apply(self, checkpoint_id: str, batch: Batch, ttl: float) -> None:
        with self._lock, self._damage_named():
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                self._apply(db, checkpoint_id, batch, ttl)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            wal = self._wal_size()
            if wal > WAL_LIMIT_BYTES:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if wal > WAL_CHECKPOINT_BYTES:
            self._wal_grew.set()

    def _apply(self, db: sqlite3.Connection, checkpoint_id: str, batch: Batch, ttl: float) -> None:
        row = db.execute(
            "SELECT id, record FROM checkpoints WHERE checkpoint_id = ?", (checkpoint_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"checkpoint {checkpoint_id} is not in {self.describe()}")
        key = row[0]
        checkpoint = self._read_record(checkpoint_id, row[1])
        if batch.seq <= checkpoint.seq:
            return  # already applied (a retried flush)
        first = batch.seq << POSITION_BITS  # discovery order: the batch, then the place in it
        db.executemany(
            "INSERT INTO pending (checkpoint, position, fingerprint, url, request, start) VALUES (?, ?, ?, ?, ?, ?)",
            [(key, first + i, r.fingerprint, r.url, r.data, r.start) for i, r in enumerate(batch.discovered)],
        )
        discovered = len(batch.discovered)
        # Where each processed request's record is: as the extension saw it, or in this batch.
        positions = {r.fingerprint: first + i for i, r in enumerate(batch.discovered)}
        positions.update(batch.positions)
        done = list(dict.fromkeys(batch.processed))
        placed = [(key, first + i, fp, positions[fp]) for i, fp in enumerate(done) if fp in positions]
        unplaced = [(key, first + i, fp) for i, fp in enumerate(done) if fp not in positions]
        # Processed once: a request whose record is gone was processed before (a repeat).
        db.executemany(
            "INSERT INTO processed (checkpoint, position, fingerprint) SELECT ?1, ?2, ?3 WHERE EXISTS"
            " (SELECT 1 FROM pending WHERE checkpoint = ?1 AND position = ?4 AND fingerprint = ?3)",
            placed,
        )
        processed = db.executemany(
            "DELETE FROM pending WHERE checkpoint = ?1 AND position = ?4 AND fingerprint = ?3", placed
        ).rowcount
        # One with no record here (it could not be serialized; another worker's, from a shared
        # queue; or migrated, found by fingerprint below) still has to be known as processed,
        # so that a resume does not redo it.
        db.executemany("INSERT INTO processed (checkpoint, position, fingerprint) VALUES (?, ?, ?)", unplaced)
        processed += len(unplaced)
        discovered += len(unplaced)
        superseded = db.executemany(
            "DELETE FROM pending WHERE checkpoint = ? AND position = ? AND fingerprint = ?",
            [(key, position, fp) for position, fp in batch.superseded if position >= 0],
        ).rowcount
        if db.execute("SELECT 1 FROM pending INDEXED BY pending_legacy WHERE checkpoint = ? AND legacy = 1 LIMIT 1",
                      (key,)).fetchone():
            # Records migrated from layout 2, found by fingerprint (counted when discovered).
            legacy = "DELETE FROM pending WHERE checkpoint = ? AND fingerprint = ? AND legacy = 1"
            found = db.executemany(legacy, [(key, fp) for _, _, fp in unplaced]).rowcount
            discovered -= found
            processed += db.executemany(legacy, [(key, fp) for _, _, fp, _ in placed]).rowcount
            superseded += db.executemany(legacy, [(key, fp) for _, fp in batch.superseded]).rowcount
        discovered -= superseded  # counted once more when their twin was
        if batch.items:
            db.executemany(
                "INSERT INTO items (checkpoint, item_type, item) VALUES (?, ?, ?)",
                [(key, t, json.dumps(i, default=str)) for t, i in batch.items],
            )
        batch.apply_to(checkpoint, discovered=discovered, processed=processed, ttl=ttl)
        self._write_record(checkpoint)

    def processed_fingerprints(self, checkpoint_id: str) -> Iterator[bytes]:
        # In the order they were processed, straight along the table: the reader sorts them.
        yield from self._fingerprints("SELECT fingerprint FROM processed WHERE checkpoint = ?", checkpoint_id)

    def pending_start_fingerprints(self, checkpoint_id: str) -> Iterator[bytes]:
        yield from self._fingerprints(
            "SELECT fingerprint FROM pending WHERE checkpoint = ? AND start = 1",
            checkpoint_id,
        )

    def _fingerprints(self, query: str, checkpoint_id: str) -> Iterator[bytes]:
        """Stream the rows a page at a time, never the whole result in memory at once, on a
        read-only connection of their own with a small page cache: read through the writer's
        connection, a resume's scan of every processed URL would fill its cache (64 MB) with
        pages no batch needs. WAL lets it read while batches are written."""
        with self._lock:
            key = self._key(checkpoint_id)
        reader = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        try:
            reader.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            reader.execute(f"PRAGMA cache_size=-{SCAN_CACHE_KIB}")
            cursor = reader.execute(query, (key,))
            while rows := cursor.fetchmany(10_000):
                for (fp,) in rows:
                    yield fp
        finally:
            reader.close()

    def pending_requests(
        self, checkpoint_id: str, after: Any, limit: int
    ) -> tuple[list[bytes], Any]:
        with self._lock:
            rows = self.db.execute(
                "SELECT position, request FROM pending WHERE checkpoint = ? AND position > ? ORDER BY position LIMIT ?",
                (self._key(checkpoint_id), -1 if after is None else after, limit),
            ).fetchall()
        return [r for _, r in rows], (rows[-1][0] if rows else after)

    def items(self, checkpoint_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        return self._items(checkpoint_id, [], [])

    def matching_items(
        self, checkpoint_id: str, contains: Sequence[Sequence[str]]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        # LIKE folds the case of ASCII letters only: a group with another character, or an
        # uppercase letter, is not tested here (its items are kept, never one too few).
        where, params = [], []
        for group in contains:
            if group and all(s and s.isascii() and s == s.lower() for s in group):
                where.append("(" + " OR ".join(["item LIKE ? ESCAPE '\\'"] * len(group)) + ")")
                params += ["%" + re.sub(r"([\\%_])", r"\\\1", s) + "%" for s in group]
        return self._items(checkpoint_id, where, params)

    def _items(self, checkpoint_id: str, where: list[str], params: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        """The checkpoint's items that meet every condition of *where*, by pages of ids:
        neither every row held at once nor the connection held between them (a crawl's
        flush thread shares it), and the first item costs one page."""
        query = ("SELECT id, item_type, item FROM items WHERE checkpoint = ? AND id > ?"
                 + "".join(f" AND {condition}" for condition in where) + " ORDER BY id LIMIT ?")
        last = -1
        while True:
            with self._lock:
                rows = self.db.execute(query, (self._key(checkpoint_id), last, *params, ITEMS_PAGE)).fetchall()
            for _, item_type, item in rows:
                yield item_type, json.loads(item)
            if len(rows) < ITEMS_PAGE:
                return
            last = rows[-1][0]

    def list_checkpoints(
        self,
        spider: str | None = None,
        site_domain: str | None = None,
        job_type: str | None = None,
        status: StatusFilter = None,
    ) -> Iterator[Checkpoint]:
        where: list[str] = [f"status != '{DELETING}'"]  # half deleted: gone
        params: list[str] = []
        for column, value in (("spider", spider), ("site_domain", site_domain), ("job_type", job_type)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        wanted = statuses(status)
        if wanted is not None:
            where.append(f"status IN ({', '.join('?' * len(wanted))})")
            params += wanted
        query = "SELECT checkpoint_id, record FROM checkpoints"
        if where:
            query += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self.db.execute(query + " ORDER BY updated_at DESC, id DESC", params).fetchall()
        for checkpoint_id, record in rows:
            try:
                yield self._read_record(checkpoint_id, record)
            except CorruptCheckpointError as exc:
                logger.warning("Left out of the list: %(error)s", {"error": exc})

    def delete(self, checkpoint_id: str) -> bool:
        # Gone for every reader at once; its rows then go a chunk at a time, so that a crawl
        # on the same file never waits behind millions of them.
        with self._lock, self._transaction() as db:
            key = self._key(checkpoint_id)
            if key >= 0:
                self._mark_deleting(db, [(key,)])
        if key < 0:
            return False
        self._delete_marked(key)
        return True

    def stored_bytes(self, checkpoint_id: str) -> int | None:
        """The bytes of the checkpoint's values (record, requests, processed fingerprints,
        items), without the file's own overhead (pages, indexes)."""
        with self._lock:
            key = self._key(checkpoint_id)
            if key < 0:
                return None
            return self.db.execute(
                "SELECT (SELECT LENGTH(CAST(record AS BLOB)) FROM checkpoints WHERE id = :key)"
                " + (SELECT COALESCE(SUM(LENGTH(fingerprint) + LENGTH(CAST(url AS BLOB)) + LENGTH(request)), 0)"
                "    FROM pending WHERE checkpoint = :key)"
                " + (SELECT COALESCE(SUM(LENGTH(fingerprint)), 0) FROM processed WHERE checkpoint = :key)"
                " + (SELECT COALESCE(SUM(LENGTH(CAST(item AS BLOB))), 0) FROM items WHERE checkpoint = :key)",
                {"key": key},
            ).fetchone()[0]

    # -- user queries and query sessions ---------------------------------------------------

    def _purge_expired_queries(self) -> None:
        now = _moment(utcnow())
        with self._transaction() as db:
            for table, _ in _QUERY_TABLES.values():
                db.execute(f"DELETE FROM {table} WHERE expires_at IS NOT NULL AND expires_at < ?", (now,))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _save_query_record(self, record: UserQuery | QuerySession, ttl: float) -> None:
        table, key = _QUERY_TABLES[type(record)]
        owner = {"user_id": record.user_id} if isinstance(record, UserQuery) else {"query_id": record.query_id}
        columns = {key: getattr(record, key), **owner, "created_at": _moment(record.created_at),
                   "expires_at": None if record.expires_at is None else _moment(record.expires_at),
                   "record": record.model_dump_json()}
        names = ", ".join(columns)
        updates = ", ".join(f"{name} = excluded.{name}" for name in columns if name != key)
        with self._lock, self._damage_named():
            self.db.execute(
                f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"
                f" ON CONFLICT ({key}) DO UPDATE SET {updates}",
                tuple(columns.values()),
            )

    def get_user_query(self, query_id: str) -> UserQuery | None:
        return next(self._query_documents(UserQuery, "query_id = ?", [query_id]), None)

    def get_query_session(self, session_id: str) -> QuerySession | None:
        return next(self._query_documents(QuerySession, "session_id = ?", [session_id]), None)

    def list_user_queries(self, user_id: str | None = None, limit: int | None = None) -> Iterator[UserQuery]:
        where, params = ("user_id = ?", [user_id]) if user_id is not None else ("1", [])
        return self._query_documents(UserQuery, where, params, limit, listed=True)

    def list_query_sessions(self, query_id: str | None = None) -> Iterator[QuerySession]:
        where, params = ("query_id = ?", [query_id]) if query_id is not None else ("1", [])
        return self._query_documents(QuerySession, where, params, listed=True)

    def _query_documents(self, model: type[_Q], where: str, params: list[Any], limit: int | None = None,
                         listed: bool = False) -> Iterator[_Q]:
        """The unexpired documents that match, newest first. Read whole before the first is
        returned: the lock is not held while the caller works. A listed one that cannot be
        read is logged and left out; a single one raises."""
        table, key = _QUERY_TABLES[model]
        query = (f"SELECT {key}, record FROM {table} WHERE {where}"
                 " AND (expires_at IS NULL OR expires_at >= ?) ORDER BY created_at DESC, id DESC")
        params = [*params, _moment(utcnow())]
        if limit is not None:
            query += " LIMIT ?"
            params.append(max(limit, 0))
        with self._lock, self._damage_named():
            rows = self.db.execute(query, params).fetchall()
        return self._parse_query_documents(model, rows, listed)

    def _parse_query_documents(self, model: type[_Q], rows: list[tuple[str, str]], listed: bool) -> Iterator[_Q]:
        for document_id, record in rows:
            try:
                yield model.model_validate_json(record)
            except ValidationError as exc:
                if not listed:
                    raise
                logger.warning("Left out of the list: %(kind)s %(id)s in %(where)s is unreadable: %(error)s",
                               {"kind": model.__name__, "id": document_id, "where": self.describe(), "error": exc})

    def delete_user_query(self, query_id: str) -> bool:
        with self._lock, self._damage_named(), self._transaction() as db:
            deleted = db.execute("DELETE FROM query_sessions WHERE query_id = ?", (query_id,)).rowcount
            deleted += db.execute("DELETE FROM user_queries WHERE query_id = ?", (query_id,)).rowcount
        return deleted > 0
