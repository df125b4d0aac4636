"""A MongoDB store: one document per checkpoint, per URL and per item, crash-safe without transactions."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from pydantic import BaseModel, ValidationError

from .._redact import redact_uri
from ..exceptions import CorruptCheckpointError, StoreUnavailable
from ..models import RESUMABLE, RUN_HISTORY, Batch, Checkpoint, QuerySession, UserQuery, expiry, utcnow
from .base import CheckpointStore, StatusFilter, statuses

try:
    import bson
    from pymongo import ASCENDING, DESCENDING, IndexModel, MongoClient, ReturnDocument
    from pymongo.errors import (
        CollectionInvalid,
        ConfigurationError,
        ConnectionFailure,
        ExecutionTimeout,
        PyMongoError,
        WriteConcernError,
        WriteError,
    )
except ImportError as exc:
    raise ImportError(
        "MongoDBCheckpointStore needs pymongo: pip install 'scrapy-checkpoint[mongodb]'"
    ) from exc

if TYPE_CHECKING:
    from pymongo.database import Database

    from ..settings import CheckpointSettings

logger = logging.getLogger(__name__)

_M = TypeVar("_M", bound=BaseModel)

CHECKPOINTS = "checkpoints"
URLS = "checkpoint_urls"
ITEMS = "checkpoint_items"
JOURNAL = "checkpoint_journal"
USER_QUERIES = "user_queries"
QUERY_SESSIONS = "query_sessions"
LAYOUT = "checkpoint_layout"
#: The _id of the one document of LAYOUT.
_LAYOUT_ID = "layout"

# Discovery position: the batch seq in the high bits, the index in the batch in the low ones.
_POS_BITS = 32
# A batch grows while a slow flush runs (up to CHECKPOINT_BUFFER_LIMIT events): its journal
# entry is split into parts well below the 16 MB document limit.
_PART_BYTES = 8 * 1024 * 1024
_LISTS = ("discovered", "processed", "items")
# Upserts per bulk_write, so that each call ends well within CHECKPOINT_STORE_TIMEOUT.
_BULK_SIZE = 1000
# URL documents per query of a resume's reads: a server that builds a whole result before
# answering (the nx-27017 stand-in, about 10,000 documents a second) answers each page well
# within CHECKPOINT_STORE_TIMEOUT, whatever the size of the checkpoint.
_PAGE = 5000


def _int(minimum: int | None = 0, maximum: int | None = None, null: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"bsonType": ["int", "long", "null"] if null else ["int", "long"]}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    properties = {**required, **(optional or {})}
    return {"bsonType": "object", "required": list(required), "properties": properties, **extra}


_STR = {"bsonType": "string"}
_NAME = {"bsonType": "string", "minLength": 1}
_DATE = {"bsonType": "date"}
_BOOL = {"bsonType": "bool"}
_BIN = {"bsonType": "binData"}
_DICT = {"bsonType": "object"}
_COUNTS = {"bsonType": "object", "additionalProperties": _int()}
_ID = {"_id": {"bsonType": "objectId"}}

# Mirrors of the pydantic models (extra="forbid" becomes additionalProperties: false).
_CHECKPOINT = _object(
    {
        "checkpoint_id": _NAME,
        "spider": _NAME,
        "site_domain": _NAME,
        "job_type": _NAME,
        "pipeline_step": _int(0, 4),
        "pipeline_data": _object(
            {
                "urls_discovered": _int(),
                "urls_processed": _int(),
                "current_page": _int(null=True),
                "pagination_state": _COUNTS,
                "extraction_results": _object(
                    {"items_scraped": _int(), "by_type": _COUNTS}, additionalProperties=False
                ),
                "state": _DICT,
            },
            {"outputs": {"bsonType": "array", "items": _DICT}},
            additionalProperties=False,
        ),
        "status": {"enum": ["active", "completed", "failed"]},
        "seq": _int(),
        "created_at": _DATE,
        "updated_at": _DATE,
        "expires_at": {"bsonType": ["date", "null"]},
    },
    # Runs by number: a batch sets its run's entry, never the whole history. Workers sharing
    # the checkpoint (scrapy-redis): each one's seq, and its feeds and spider state, by
    # worker; and the journal slots their batches took.
    {**_ID, "runs": {"bsonType": "object", "additionalProperties": _DICT},
     "seqs": _COUNTS,
     "writers": {"bsonType": "object", "additionalProperties": {
         "bsonType": "object", "additionalProperties": False,
         "properties": {"state": _DICT, "outputs": {"bsonType": "array", "items": _DICT}}}},
     "slots": _int()},
    additionalProperties=False,
)
_URL = _object(
    {
        "checkpoint_id": _NAME,
        "fingerprint": _BIN,
        "processed": _BOOL,
        "start": _BOOL,
        "pos": _int(),
    },
    {"_id": _STR, "url": _STR, "request": _BIN},
    additionalProperties=False,
)
_ITEM = _object(
    {"checkpoint_id": _NAME, "seq": _int(1), "index": _int(), "item_type": _STR, "item": _DICT},
    _ID,
    additionalProperties=False,
)
# Part 0 of an entry is its header (it commits the batch); parts 1.. hold only list chunks.
_JOURNAL = _object(
    {
        "checkpoint_id": _NAME,
        "seq": _int(1),
        "part": _int(),
        "discovered": {"bsonType": "array", "items": _object(
            {"fingerprint": _BIN, "url": _STR, "request": _BIN, "start": _BOOL}, additionalProperties=False
        )},
        "processed": {"bsonType": "array", "items": _BIN},
        "items": {"bsonType": "array", "items": _object(
            {"item_type": _STR, "item": _DICT}, additionalProperties=False
        )},
    },
    {
        **_ID,
        "parts": _int(1),
        "new_urls": _int(),
        "new_processed": _int(),
        "item_counts": _COUNTS,
        "pagination": _COUNTS,
        "current_page": _int(null=True),
        "pipeline_step": _int(0, 4),
        "state": {"bsonType": ["object", "null"]},
        "outputs": {"bsonType": ["array", "null"]},
        "run": {"bsonType": ["object", "null"]},
        "writer": _STR,
        "batch_seq": _int(1),
        "took_over": {"bsonType": "array", "items": _STR},
        "status": {"enum": ["active", "completed", "failed", None]},
        "updated_at": _DATE,
        "expires_at": {"bsonType": ["date", "null"]},
    },
    additionalProperties=False,
)
_USER_QUERY = _object(
    {
        "query_id": _NAME,
        "user_id": {"bsonType": ["string", "null"]},
        "raw_query": _NAME,
        "parsed_intent": _object(
            {
                "product_type": {"bsonType": ["string", "null"]},
                "attributes": _DICT,
                "price_range": _object(
                    {"min": {"bsonType": ["double", "int", "long", "null"], "minimum": 0},
                     "max": {"bsonType": ["double", "int", "long", "null"], "minimum": 0}},
                    {"currency": {"bsonType": ["string", "null"], "pattern": "^[A-Z]{3}$"}},
                    additionalProperties=False,
                ),
            },
            # Optional: queries stored before these fields existed stay valid.
            {"order": {"enum": ["price_asc", "price_desc", "newest", "rating", "popular", None]},
             "keywords": {"bsonType": "array", "items": _STR}},
            additionalProperties=False,
        ),
        "created_at": _DATE,
    },
    # Optional: queries stored before it existed stay valid.
    {**_ID, "expires_at": {"bsonType": ["date", "null"]}},
    additionalProperties=False,
)
_QUERY_SESSION = _object(
    {
        "session_id": _NAME,
        "query_id": _NAME,
        "checkpoint_ids": {"bsonType": "array", "items": _STR},
        "sites_searched": {"bsonType": "array", "items": _STR},
        "results": _DICT,
        "status": {"enum": ["pending", "running", "completed", "failed"]},
        "created_at": _DATE,
        "updated_at": _DATE,
    },
    # Optional: sessions stored before they existed stay valid.
    {**_ID, "completed_at": {"bsonType": ["date", "null"]}, "expires_at": {"bsonType": ["date", "null"]}},
    additionalProperties=False,
)

# The layout of the database's checkpoints (MongoDBCheckpointStore.layout): one document.
_LAYOUT = _object({"_id": {"enum": [_LAYOUT_ID]}, "layout": _int(1)}, additionalProperties=False)

SCHEMAS: dict[str, dict[str, Any]] = {
    CHECKPOINTS: _CHECKPOINT,
    URLS: _URL,
    ITEMS: _ITEM,
    JOURNAL: _JOURNAL,
    USER_QUERIES: _USER_QUERY,
    QUERY_SESSIONS: _QUERY_SESSION,
    LAYOUT: _LAYOUT,
}

INDEXES: dict[str, list[IndexModel]] = {
    CHECKPOINTS: [
        IndexModel([("checkpoint_id", ASCENDING)], name="checkpoint_id", unique=True),
        IndexModel(
            [("site_domain", ASCENDING), ("job_type", ASCENDING), ("spider", ASCENDING),
             ("status", ASCENDING), ("updated_at", DESCENDING)],
            name="resumable",
        ),
        IndexModel([("expires_at", ASCENDING)], name="expires_at_ttl", expireAfterSeconds=0),
    ],
    URLS: [
        IndexModel([("checkpoint_id", ASCENDING), ("fingerprint", ASCENDING)],
                   name="checkpoint_fingerprint", unique=True),
        IndexModel([("checkpoint_id", ASCENDING), ("processed", ASCENDING), ("pos", ASCENDING)],
                   name="pending"),
    ],
    ITEMS: [
        IndexModel([("checkpoint_id", ASCENDING), ("seq", ASCENDING), ("index", ASCENDING)],
                   name="checkpoint_seq_index", unique=True),
    ],
    JOURNAL: [
        IndexModel([("checkpoint_id", ASCENDING), ("seq", ASCENDING), ("part", ASCENDING)],
                   name="checkpoint_seq_part", unique=True),
    ],
    # Lists run newest first, of everyone or of one user (of one query); expired documents
    # go like checkpoints (a null expires_at never does).
    USER_QUERIES: [
        IndexModel([("query_id", ASCENDING)], name="query_id", unique=True),
        IndexModel([("created_at", DESCENDING)], name="created_at"),
        IndexModel([("user_id", ASCENDING), ("created_at", DESCENDING)], name="user_created_at"),
        IndexModel([("expires_at", ASCENDING)], name="expires_at_ttl", expireAfterSeconds=0),
    ],
    QUERY_SESSIONS: [
        IndexModel([("session_id", ASCENDING)], name="session_id", unique=True),
        IndexModel([("query_id", ASCENDING)], name="query_id"),
        IndexModel([("created_at", DESCENDING)], name="created_at"),
        IndexModel([("query_id", ASCENDING), ("created_at", DESCENDING)], name="query_created_at"),
        IndexModel([("expires_at", ASCENDING)], name="expires_at_ttl", expireAfterSeconds=0),
    ],
}


def _encode_key(key: str) -> str:
    """A key that is safe in an update path: URLs and host names hold dots, which MongoDB
    reads as nesting."""
    return key.replace("%", "%25").replace(".", "%2E").replace("$", "%24")


def _encode_keys(counts: Mapping[str, Any]) -> dict[str, Any]:
    return {_encode_key(k): v for k, v in counts.items()}


def _decode_keys(counts: Any) -> Any:
    return {unquote(k): v for k, v in counts.items()} if isinstance(counts, dict) else counts


def _utc(value: Any) -> Any:
    """A stored date, timezone-aware. The client returns aware dates (tz_aware=True), but a
    date the nx-27017 stand-in stored from a $set comes back as a naive string; both are UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value  # left for validation to report
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _runs(runs: Any) -> Any:
    """The stored runs, a document by run number, as the record's list, oldest first."""
    if not isinstance(runs, dict):
        return runs  # left for validation to report
    return [
        {k: _utc(v) if k.endswith("_at") else v for k, v in run.items()} if isinstance(run, dict) else run
        for _, run in sorted(runs.items(), key=lambda entry: (len(entry[0]), entry[0]))
    ]


def _url_id(checkpoint_id: str, fingerprint: bytes) -> str:
    # A deterministic _id makes every URL upsert a primary-key lookup that cannot race into
    # a duplicate insert.
    return f"{checkpoint_id}/{fingerprint.hex()}"


def _split(lists: dict[str, list[Any]]) -> list[dict[str, list[Any]]]:
    """The lists cut into parts of at most about _PART_BYTES, each list kept in order."""
    if _size_bound(lists) <= _PART_BYTES:  # nearly every batch: no need to measure each value
        return [lists]
    parts = [{name: [] for name in lists}]
    size = 0
    for name, values in lists.items():
        for value in values:
            length = len(bson.encode({"v": value}))
            if size and size + length > _PART_BYTES:
                parts.append({name: [] for name in lists})
                size = 0
            parts[-1][name].append(value)
            size += length
    return parts


def _size_bound(lists: dict[str, list[Any]]) -> int:
    """More than the BSON size of the journal lists: bytes are stored as they are, a URL
    takes at most 4 bytes a character, and every value has less than 128 bytes of framing."""
    size = 128 * sum(len(values) for values in lists.values())
    size += sum(len(r["request"]) + 4 * len(r["url"]) for r in lists["discovered"])
    size += sum(len(fp) for fp in lists["processed"])
    return size + sum(len(bson.encode({"v": item})) for item in lists["items"])


# A statement of the update command, with more than its BSON size (see _size_bound).
_Upsert = tuple[dict[str, Any], int]


def _upsert(query: dict[str, Any], update: dict[str, Any], size: int) -> _Upsert:
    return {"q": query, "u": update, "upsert": True}, size


def _url_updates(checkpoint_id: str, seq: int, discovered: list[dict[str, Any]],
                 processed: list[bytes]) -> list[_Upsert]:
    """Upserts of a batch's URLs, in order (a URL can be discovered and processed in one batch)."""
    base = seq << _POS_BITS
    updates = [
        _upsert(
            {"_id": _url_id(checkpoint_id, r["fingerprint"])},
            {"$setOnInsert": {"checkpoint_id": checkpoint_id, "fingerprint": r["fingerprint"],
                              "url": r["url"], "request": r["request"],
                              "processed": False, "start": r["start"], "pos": base + i}},
            512 + len(r["request"]) + 4 * len(r["url"]),
        )
        for i, r in enumerate(discovered)
    ]
    # A request processed without a record (it could not be serialized) still has to be
    # known as processed, so that a resume does not redo it. A processed URL keeps only its
    # fingerprint, flags and position: its request is never sent again, and its URL is not
    # read back. After the discovered upserts, so that a URL discovered and processed in one
    # batch loses its body too; $unset of an absent field is a no-op, so a replay is too.
    updates += [
        _upsert(
            {"_id": _url_id(checkpoint_id, fp)},
            {"$set": {"processed": True}, "$unset": {"request": "", "url": ""},
             "$setOnInsert": {"checkpoint_id": checkpoint_id, "fingerprint": fp, "start": False,
                              "pos": base + len(discovered) + i}},
            512,
        )
        for i, fp in enumerate(processed)
    ]
    return updates


def _applied(record: dict[str, Any], writer: str | None) -> int:
    """The seq of the last batch of *writer* (None: of the one writer) the record holds."""
    if writer is None:
        return record["seq"]
    return record.get("seqs", {}).get(writer, 0)


def _record_update(header: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The atomic update that folds a journal entry into its checkpoint record, and the
    query it is conditioned on (the record lacks the batch)."""
    checkpoint_id, writer = header["checkpoint_id"], header.get("writer")
    counts = header["item_counts"]
    inc = {f"pipeline_data.extraction_results.by_type.{k}": n for k, n in counts.items()}
    inc["pipeline_data.extraction_results.items_scraped"] = sum(counts.values())
    inc["pipeline_data.urls_discovered"] = header["new_urls"]
    inc["pipeline_data.urls_processed"] = header["new_processed"]
    fields = {f"pipeline_data.pagination_state.{k}": n for k, n in header["pagination"].items()}
    fields.update(updated_at=header["updated_at"], expires_at=header["expires_at"])
    unset = {}
    batch_seq = header.get("batch_seq", header["seq"])
    if writer is None:
        query = {"checkpoint_id": checkpoint_id, "seq": {"$lt": batch_seq}}
        fields["seq"] = batch_seq
        own = "pipeline_data."
    else:
        # One of several workers: its own seq, feeds and state; 'seq' counts the batches of all.
        # (Its seq exists: the batch's slot was taken with it.)
        own, seq = f"writers.{writer}.", f"seqs.{writer}"
        query = {"checkpoint_id": checkpoint_id, seq: {"$lt": batch_seq}}
        fields[seq] = batch_seq
        inc["seq"] = 1
        unset.update((f"writers.{dead}.outputs", "") for dead in header.get("took_over", ()))
    for name, path in (("current_page", "pipeline_data.current_page"), ("state", f"{own}state"),
                       ("outputs", f"{own}outputs"), ("status", "status")):
        if header.get(name) is not None:
            fields[path] = header[name]
    update = {"$inc": inc, "$max": {"pipeline_step": header["pipeline_step"]}, "$set": fields}
    run = header.get("run")
    if run is not None:
        fields[f"runs.{run['number']}"] = run
        if run["number"] > RUN_HISTORY:
            unset[f"runs.{run['number'] - RUN_HISTORY}"] = ""
    if unset:
        update["$unset"] = unset
    return query, update


def connect(uri: str, timeout: float) -> MongoClient:
    """A client of *uri* whose every wait (server selection, connection, reply) ends after
    *timeout* seconds, and whose dates are timezone-aware."""
    ms = int(timeout * 1000)
    return MongoClient(uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms,
                       tz_aware=True, appname="scrapy-checkpoint")


class MongoDBCheckpointStore(CheckpointStore):
    """Checkpoints in the ``CHECKPOINT_MONGO_DATABASE`` database of ``CHECKPOINT_MONGO_URI``.

    Needs no transactions (a standalone server has none). A batch is first written to
    ``checkpoint_journal``, its header document last: that single-document insert commits it.
    It is then applied with idempotent upserts and a record update conditioned on ``seq``,
    and its journal entry deleted. Opening and every read first replay the committed entries
    a killed process left, so a batch is all or nothing. ``checkpoint_layout`` holds one
    document, the layout of the database's checkpoints.
    """

    name = "mongodb"

    def __init__(self, uri: str, database: str, timeout: float = 5.0) -> None:
        self.uri = uri
        self.database = database
        self.timeout = timeout
        self._lock = threading.Lock()
        self._client: MongoClient | None = None
        self._db: Database | None = None

    @classmethod
    def from_checkpoint_settings(cls, settings: CheckpointSettings) -> MongoDBCheckpointStore:
        if not settings.mongo_uri:
            raise ValueError("CHECKPOINT_MONGO_URI must be set to use the MongoDB store.")
        return cls(settings.mongo_uri, settings.mongo_database, settings.store_timeout)

    def describe(self) -> str:
        return f"{redact_uri(self.uri)} (database {self.database})"

    def _where(self, collection: str) -> str:
        return f"{self.describe()}, collection {collection}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (ConnectionFailure, ExecutionTimeout) as exc:
            raise StoreUnavailable(
                f"MongoDB store {self.describe()} is unavailable ({type(exc).__name__}): {exc}"
            ) from exc

    # -- lifecycle -------------------------------------------------------------------------

    def _layout_advice(self) -> str:
        return f"Set CHECKPOINT_MONGO_DATABASE (now {self.database!r}) to another database"

    def _connect(self) -> MongoClient:
        try:
            return connect(self.uri, self.timeout)
        except ConfigurationError as exc:
            raise ValueError(
                f"CHECKPOINT_MONGO_URI ({redact_uri(self.uri)}) is not a valid MongoDB URI: {exc}"
            ) from None

    def _layout_found(self, db: Database) -> tuple[Any, bool]:
        """The database's layout marker (None when it has none) and whether it holds any of
        the store's collections (a version before the marker made them)."""
        db.command("ping")
        doc = db[LAYOUT].find_one({"_id": _LAYOUT_ID})
        marker = None if doc is None else doc.get("layout", "none")
        return marker, bool(set(db.list_collection_names()) & (SCHEMAS.keys() - {LAYOUT}))

    def check_layout(self) -> None:
        client = self._client or self._connect()
        try:
            with self._errors():
                self._layout_steps(*self._layout_found(client[self.database]))
        finally:
            if client is not self._client:
                client.close()

    def _stamp(self, db: Database, layout: int) -> None:
        db[LAYOUT].replace_one({"_id": _LAYOUT_ID}, {"_id": _LAYOUT_ID, "layout": layout}, upsert=True)

    def open(self) -> None:
        with self._lock:
            if self._client is not None:
                return
            client = self._connect()
            try:
                with self._errors():
                    db = client[self.database]
                    # Before anything is written: a database refused is left as it is.
                    self._settle_layout(*self._layout_found(db), db, lambda layout: self._stamp(db, layout))
                    self._create_schema(db)
            except BaseException:
                client.close()
                raise
            self._client, self._db = client, db
        with self._errors():
            self._purge()
            self._purge_queries()
            self._recover()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = self._db = None

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RuntimeError(f"{self.describe()} is not open")
        return self._db

    def _create_schema(self, db: Database) -> None:
        """Create collections with validators (or update them) and indexes; idempotent."""
        existing = {c["name"]: c.get("options", {}) for c in db.list_collections()}
        for name, schema in SCHEMAS.items():
            options = {"validator": {"$jsonSchema": schema}, "validationLevel": "strict",
                       "validationAction": "error"}
            if name not in existing:
                try:
                    db.create_collection(name, **options)
                    continue
                except CollectionInvalid:  # created meanwhile by another process
                    pass
            elif all(existing[name].get(k) == v for k, v in options.items()):
                continue
            db.command("collMod", name, **options)
        for name, indexes in INDEXES.items():
            db[name].create_indexes(indexes)

    def _purge(self) -> None:
        """Delete expired checkpoints, and the URLs, items and journal entries of checkpoints
        that are gone (the TTL monitor deletes only ``checkpoints`` documents)."""
        db = self.db
        now = utcnow()
        try:
            expired = [d["checkpoint_id"] for d in db[CHECKPOINTS].find(
                {"expires_at": {"$lt": now}}, {"checkpoint_id": 1})]
            # Children first: a record is always written before its first child.
            owners = {cid for name in (URLS, ITEMS, JOURNAL) for cid in db[name].distinct("checkpoint_id")}
            live = set(db[CHECKPOINTS].distinct("checkpoint_id", {"checkpoint_id": {"$in": sorted(owners)}}))
            dead = sorted(owners - live) + expired
            for name in (URLS, ITEMS, JOURNAL) if dead else ():
                db[name].delete_many({"checkpoint_id": {"$in": dead}})
            if expired:
                db[CHECKPOINTS].delete_many({"checkpoint_id": {"$in": expired}, "expires_at": {"$lt": now}})
        except PyMongoError as exc:
            # Housekeeping only: a large deletion may outlast CHECKPOINT_STORE_TIMEOUT; the
            # server goes on with it, and the next open() with the rest.
            logger.warning("Could not purge expired checkpoints from %(store)s: %(error)r",
                           {"store": self.describe(), "error": exc})

    # -- checkpoint records ----------------------------------------------------------------

    def _to_document(self, checkpoint: Checkpoint) -> dict[str, Any]:
        doc = checkpoint.model_dump()
        data = doc["pipeline_data"]
        data["pagination_state"] = _encode_keys(data["pagination_state"])
        results = data["extraction_results"]
        results["by_type"] = _encode_keys(results["by_type"])
        doc["runs"] = {str(run["number"]): run for run in doc["runs"]}
        return doc

    def _from_document(self, doc: dict[str, Any]) -> Checkpoint:
        doc.pop("_id", None)
        checkpoint_id = str(doc.get("checkpoint_id"))
        for name in ("created_at", "updated_at", "expires_at"):
            if name in doc:
                doc[name] = _utc(doc[name])
        if "runs" in doc:
            doc["runs"] = _runs(doc["runs"])
        data = doc.get("pipeline_data")
        writers = doc.pop("writers", {})
        doc.pop("slots", None)
        doc.pop("seqs", None)
        if isinstance(data, dict):
            self._merge_writers(data, writers, checkpoint_id)
            data["pagination_state"] = _decode_keys(data.get("pagination_state", {}))
            results = data.get("extraction_results")
            if isinstance(results, dict):
                results["by_type"] = _decode_keys(results.get("by_type", {}))
        return Checkpoint.parse(doc, checkpoint_id=checkpoint_id, where=self._where(CHECKPOINTS))

    def _merge_writers(self, data: dict[str, Any], writers: Any, checkpoint_id: str) -> None:
        """Into the record's data, those of the workers sharing it: each feed tagged with its
        worker, the spider states merged (a key several workers set keeps one of their values)."""
        try:
            outputs, state = list(data.get("outputs") or []), dict(data.get("state") or {})
            for name in sorted(writers):
                outputs += [{**entry, "worker": unquote(name)} for entry in writers[name].get("outputs", [])]
                state.update(writers[name].get("state", {}))
        except (AttributeError, TypeError) as exc:  # a validator would have refused it
            raise CorruptCheckpointError(checkpoint_id, self._where(CHECKPOINTS),
                                         f"its writers field is malformed ({exc})") from exc
        if writers:
            data["outputs"], data["state"] = outputs, state

    def create(self, checkpoint: Checkpoint) -> None:
        with self._errors():
            self.db[CHECKPOINTS].replace_one(
                {"checkpoint_id": checkpoint.checkpoint_id}, self._to_document(checkpoint), upsert=True
            )

    def get(self, checkpoint_id: str) -> Checkpoint | None:
        with self._errors():
            self._recover(checkpoint_id)
            doc = self.db[CHECKPOINTS].find_one({"checkpoint_id": checkpoint_id})
        return None if doc is None else self._from_document(doc)

    def find_resumable(self, spider: str, site_domain: str, job_type: str) -> Checkpoint | None:
        with self._errors():
            self._recover()
            doc = self.db[CHECKPOINTS].find_one(
                {"site_domain": site_domain, "job_type": job_type, "spider": spider,
                 "status": {"$in": [s.value for s in RESUMABLE]}},
                sort=[("updated_at", DESCENDING), ("_id", DESCENDING)],
            )
        return None if doc is None else self._from_document(doc)

    def list_checkpoints(
        self,
        spider: str | None = None,
        site_domain: str | None = None,
        job_type: str | None = None,
        status: StatusFilter = None,
    ) -> Iterator[Checkpoint]:
        query: dict[str, Any] = {
            name: value for name, value in
            (("site_domain", site_domain), ("job_type", job_type), ("spider", spider)) if value is not None
        }
        wanted = statuses(status)
        if wanted is not None:
            query["status"] = {"$in": list(wanted)}
        found = []
        with self._errors():
            self._recover()
            with self.db[CHECKPOINTS].find(query, sort=[("_id", DESCENDING)]) as cursor:
                for doc in cursor:
                    try:
                        found.append(self._from_document(doc))
                    except CorruptCheckpointError as exc:
                        logger.warning("Left out of the list: %(error)s", {"error": exc})
        # Sorted here rather than by the server: there is one document per checkpoint, and
        # the nx-27017 stand-in keeps a $set date as a string, which BSON sorts apart from dates.
        found.sort(key=lambda checkpoint: checkpoint.updated_at, reverse=True)
        yield from found

    def delete(self, checkpoint_id: str) -> bool:
        """The record first: a kill before the rest leaves orphans, which open() purges."""
        with self._errors():
            deleted = self.db[CHECKPOINTS].delete_many({"checkpoint_id": checkpoint_id}).deleted_count
            for name in (URLS, ITEMS, JOURNAL):
                deleted += self.db[name].delete_many({"checkpoint_id": checkpoint_id}).deleted_count
        return deleted > 0

    # -- batches ---------------------------------------------------------------------------

    def apply(self, checkpoint_id: str, batch: Batch, ttl: float) -> None:
        writer = None if batch.writer is None else _encode_key(batch.writer)
        with self._errors():
            self._recover(checkpoint_id)
            record = self._record_seqs(checkpoint_id)
            if record is None:
                raise KeyError(f"checkpoint {checkpoint_id} is not in {self.describe()}")
            if batch.seq <= _applied(record, writer):
                return  # already applied (a retried flush)
            slot = None if writer is None and "slots" not in record else self._slot(checkpoint_id, record, writer)
            header = self._journal(checkpoint_id, batch, ttl, slot)
            self.db[JOURNAL].insert_one(header)  # the commit point: from here on the batch is applied
            self._replay(header, record)

    def _record_seqs(self, checkpoint_id: str) -> dict[str, Any] | None:
        """What says which batches the record holds: its seq, its slots, its writers' seqs."""
        return self.db[CHECKPOINTS].find_one({"checkpoint_id": checkpoint_id}, {"seq": 1, "slots": 1, "seqs": 1})

    def _slot(self, checkpoint_id: str, record: dict[str, Any], writer: str | None) -> int:
        """The seq a batch of one of several workers sharing the checkpoint is journaled,
        and its items and URL positions are keyed, under: each worker numbers its batches
        from 1, so the record hands out slots. The writer's seq is 0 from its first slot on,
        so that the record update of its batch can be conditioned on it."""
        checkpoints = self.db[CHECKPOINTS]
        if "slots" not in record:  # after the batches of a crawl that wrote it alone
            checkpoints.update_one({"checkpoint_id": checkpoint_id, "slots": {"$exists": False}},
                                   {"$set": {"slots": record["seq"]}})
        found = checkpoints.find_one_and_update(
            {"checkpoint_id": checkpoint_id},
            {"$inc": {"slots": 1, **({} if writer is None else {f"seqs.{writer}": 0})}}, {"slots": 1},
            return_document=ReturnDocument.AFTER)
        if found is None:
            raise KeyError(f"checkpoint {checkpoint_id} is not in {self.describe()}")
        return found["slots"]

    def _journal(self, checkpoint_id: str, batch: Batch, ttl: float, slot: int | None = None) -> dict[str, Any]:
        """Write the parts of the batch's journal entry after the first; return its header.
        *slot*: the seq it is journaled under, when not its own.

        The URL counts are taken before anything of the batch is written, so that replaying
        a half-applied batch counts each URL exactly once. (Two workers sharing the checkpoint
        whose batches are applied at the same moment may both count a URL they both hold.)
        """
        processed = {_url_id(checkpoint_id, fp) for fp in batch.processed}
        keys = {_url_id(checkpoint_id, r.fingerprint) for r in batch.discovered} | processed
        known = {d["_id"]: bool(d["processed"]) for d in self.db[URLS].find(
            {"_id": {"$in": sorted(keys)}}, {"processed": 1})}
        parts = _split({
            "discovered": [{"fingerprint": r.fingerprint, "url": r.url, "request": r.data,
                            "start": r.start} for r in batch.discovered],
            "processed": batch.processed,
            "items": [{"item_type": t, "item": json.loads(json.dumps(i, default=str))}
                      for t, i in batch.items],
        })
        key = {"checkpoint_id": checkpoint_id, "seq": batch.seq if slot is None else slot}
        if len(parts) > 1:
            # Parts left by a flush of this seq killed before its commit are dropped first.
            self.db[JOURNAL].delete_many({**key, "part": {"$gte": 1}})
            self.db[JOURNAL].insert_many([{**key, "part": n, **part} for n, part in enumerate(parts[1:], 1)])
        now = utcnow()
        return {
            **key, "part": 0, **parts[0], "parts": len(parts),
            "new_urls": len(keys - known.keys()),
            "new_processed": sum(not known.get(k, False) for k in processed),
            "item_counts": _encode_keys(batch.item_counts),
            "pagination": _encode_keys(batch.pagination),
            "current_page": batch.current_page,
            "pipeline_step": batch.pipeline_step,
            "state": batch.state,
            "outputs": batch.outputs,
            "run": None if batch.run is None else batch.run.model_dump(),
            "status": batch.status,
            "updated_at": now,
            "expires_at": expiry(now, ttl),
        } | ({} if slot is None else {"batch_seq": batch.seq}) | ({} if batch.writer is None else {
            "writer": _encode_key(batch.writer), "took_over": [_encode_key(w) for w in batch.took_over]})

    def _replay(self, header: dict[str, Any], record: dict[str, Any] | None = None) -> None:
        """Apply a committed journal entry; every step is idempotent, so it may run any number
        of times, and at once in several processes. *record*: the record's seqs, when the
        caller has just read them."""
        db = self.db
        checkpoint_id, seq, writer = header["checkpoint_id"], header["seq"], header.get("writer")
        key = {"checkpoint_id": checkpoint_id, "seq": seq}
        if record is None:
            record = self._record_seqs(checkpoint_id)
        if record is not None and _applied(record, writer) < header.get("batch_seq", seq):
            entry = {name: list(header[name]) for name in _LISTS}
            parts = [] if header["parts"] == 1 else list(
                db[JOURNAL].find({**key, "part": {"$gte": 1, "$lt": header["parts"]}}).sort("part"))
            if len(parts) != header["parts"] - 1:
                raise CorruptCheckpointError(checkpoint_id, self._where(JOURNAL),
                                             f"the entry of batch {seq} misses parts")
            for part in parts:
                for name in _LISTS:
                    entry[name] += part[name]
            self._bulk(URLS, _url_updates(checkpoint_id, seq, entry["discovered"], entry["processed"]))
            self._bulk(ITEMS, [
                _upsert({**key, "index": i}, {"$setOnInsert": {"item_type": it["item_type"], "item": it["item"]}},
                        512 + len(bson.encode(it)))
                for i, it in enumerate(entry["items"])
            ])
            db[CHECKPOINTS].update_one(*_record_update(header))
        db[JOURNAL].delete_many(key)

    def _bulk(self, collection: str, upserts: list[_Upsert]) -> None:
        """Run *upserts* in order, as update commands of at most _BULK_SIZE statements and
        about _PART_BYTES, so that each ends well within CHECKPOINT_STORE_TIMEOUT and under
        the 16 MB limit. The command itself, not ``bulk_write``: building an ``UpdateOne``
        and validating it cost more client CPU than encoding it. Unlike ``bulk_write`` it is
        not retried after a network error: the journal replays the batch, and every
        statement is idempotent."""
        chunk: list[dict[str, Any]] = []
        size = 0
        for statement, length in upserts:
            if chunk and (len(chunk) == _BULK_SIZE or size + length > _PART_BYTES):
                self._update(collection, chunk)
                chunk, size = [], 0
            chunk.append(statement)
            size += length
        if chunk:
            self._update(collection, chunk)

    def _update(self, collection: str, statements: list[dict[str, Any]]) -> None:
        reply = self.db.command("update", collection, updates=statements, ordered=True)
        if reply.get("writeErrors"):  # ordered: the first error stopped the command
            error = reply["writeErrors"][0]
            raise WriteError(f"{self._where(collection)}: {error.get('errmsg')}", error.get("code"), error)
        if reply.get("writeConcernError"):
            error = reply["writeConcernError"]
            raise WriteConcernError(f"{self._where(collection)}: {error.get('errmsg')}", error.get("code"), error)

    def _recover(self, checkpoint_id: str | None = None) -> None:
        """Finish the batches a killed process committed to the journal, oldest first."""
        query: dict[str, Any] = {"part": 0}
        if checkpoint_id is not None:
            query["checkpoint_id"] = checkpoint_id
        for header in self.db[JOURNAL].find(query).sort([("checkpoint_id", ASCENDING), ("seq", ASCENDING)]):
            logger.info("Replaying batch %(seq)d of checkpoint %(id)s from the journal",
                        {"seq": header["seq"], "id": header["checkpoint_id"]})
            self._replay(header)

    # -- URLs and items --------------------------------------------------------------------

    def processed_fingerprints(self, checkpoint_id: str) -> Iterator[bytes]:
        """In ascending order (what ``FingerprintSet`` packs fastest), a page at a time by
        ``_id`` range: ``_id`` is ``<checkpoint_id>/<fingerprint hex>``, so the primary key
        holds them in that order. The range is given as ``min``/``max`` with the ``_id``
        index as hint, rather than ``$gt``/``$lt``, which the nx-27017 stand-in evaluates in
        Python over the whole collection; and ``processed`` is the only filter, so that no
        other index can be chosen (the stand-in's SQLite would then sort every processed
        URL for each page)."""
        with self._errors():
            self._recover(checkpoint_id)
        low, high = f"{checkpoint_id}/", f"{checkpoint_id}0"  # "0" follows "/"
        limit = _PAGE
        while True:
            with self._errors():
                docs = list(
                    self.db[URLS].find({"processed": True}, {"fingerprint": 1})
                    .min([("_id", low)]).max([("_id", high)]).hint([("_id", ASCENDING)])
                    .sort("_id", ASCENDING).limit(limit)
                )
            for doc in docs:
                if doc["_id"] != low:  # min is inclusive: the last one of the page before
                    yield self._field(doc, "fingerprint", bytes, checkpoint_id, URLS)
            if len(docs) < limit:
                return
            low, limit = docs[-1]["_id"], _PAGE + 1

    def pending_start_fingerprints(self, checkpoint_id: str) -> Iterator[bytes]:
        """Paged by position in the ``pending`` index (in no order of fingerprint)."""
        after = None
        while True:
            docs = self._pending(checkpoint_id, after, _PAGE, {"start": {"$eq": True}}, {"fingerprint": 1})
            for doc in docs:
                yield self._field(doc, "fingerprint", bytes, checkpoint_id, URLS)
            if len(docs) < _PAGE:
                return
            after = docs[-1]["pos"]

    def pending_requests(
        self, checkpoint_id: str, after: Any, limit: int
    ) -> tuple[list[bytes], Any]:
        docs = self._pending(checkpoint_id, after, limit, {}, {"request": 1})
        requests = [self._field(d, "request", bytes, checkpoint_id, URLS)
                    for d in docs if d.get("request") is not None]
        return requests, (docs[-1]["pos"] if docs else after)

    def _pending(self, checkpoint_id: str, after: Any, limit: int, where: dict[str, Any],
                 fields: dict[str, int]) -> list[dict[str, Any]]:
        """Up to *limit* unprocessed URL documents after position *after*, in discovery
        order, by the ``pending`` index. Each condition is an ``$eq``: the stand-in reads a
        bare value as "equal to, or an array holding", which no index can answer, and would
        scan the collection for every page."""
        with self._errors():
            self._recover(checkpoint_id)
            return list(
                self.db[URLS]
                .find({"checkpoint_id": {"$eq": checkpoint_id}, "processed": {"$eq": False}, **where,
                       "pos": {"$gt": -1 if after is None else after}}, {**fields, "pos": 1})
                .sort("pos", ASCENDING)
                .limit(limit)
            )

    def items(self, checkpoint_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._errors():
            self._recover(checkpoint_id)
            with self.db[ITEMS].find({"checkpoint_id": checkpoint_id}).sort(
                [("seq", ASCENDING), ("index", ASCENDING)]
            ) as cursor:
                for doc in cursor:
                    yield (self._field(doc, "item_type", str, checkpoint_id, ITEMS),
                           self._field(doc, "item", dict, checkpoint_id, ITEMS))

    def _field(self, doc: dict[str, Any], name: str, kind: type, checkpoint_id: str, collection: str) -> Any:
        value = doc.get(name)
        if not isinstance(value, kind):
            raise CorruptCheckpointError(
                checkpoint_id, self._where(collection),
                f"{name} of document {doc.get('_id')} is a {type(value).__name__}, not a {kind.__name__}",
            )
        return value

    # -- user queries and query sessions ---------------------------------------------------

    def _purge_queries(self) -> None:
        """Delete expired query documents now: the TTL monitor runs once a minute (and the
        nx-27017 stand-in has none)."""
        now = utcnow()
        try:
            for name in (USER_QUERIES, QUERY_SESSIONS):
                self.db[name].delete_many({"expires_at": {"$lt": now}})
        except PyMongoError as exc:
            logger.warning("Could not purge expired queries from %(store)s: %(error)r",
                           {"store": self.describe(), "error": exc})

    def get_user_query(self, query_id: str) -> UserQuery | None:
        return self._load(USER_QUERIES, UserQuery, "query_id", query_id)

    def get_query_session(self, session_id: str) -> QuerySession | None:
        return self._load(QUERY_SESSIONS, QuerySession, "session_id", session_id)

    def list_user_queries(self, user_id: str | None = None, limit: int | None = None) -> Iterator[UserQuery]:
        return self._list(USER_QUERIES, UserQuery, {} if user_id is None else {"user_id": user_id}, limit)

    def list_query_sessions(self, query_id: str | None = None) -> Iterator[QuerySession]:
        return self._list(QUERY_SESSIONS, QuerySession, {} if query_id is None else {"query_id": query_id})

    def delete_user_query(self, query_id: str) -> bool:
        """The sessions first: a kill between the two leaves the query, which a second
        delete removes."""
        with self._errors():
            deleted = self.db[QUERY_SESSIONS].delete_many({"query_id": query_id}).deleted_count
            deleted += self.db[USER_QUERIES].delete_many({"query_id": query_id}).deleted_count
        return deleted > 0

    def _save_query_record(self, record: UserQuery | QuerySession, ttl: float) -> None:
        # The TTL index deletes it from its expires_at.
        collection, key = (USER_QUERIES, "query_id") if isinstance(record, UserQuery) else (QUERY_SESSIONS, "session_id")
        with self._errors():
            self.db[collection].replace_one({key: getattr(record, key)}, record.model_dump(), upsert=True)

    @staticmethod
    def _unexpired(query: dict[str, Any]) -> dict[str, Any]:
        # A missing expires_at (a document stored before it existed) matches None too. In an
        # $and: nx-27017 ORs an $or with the fields beside it.
        return {"$and": [query, {"$or": [{"expires_at": None}, {"expires_at": {"$gte": utcnow()}}]}]}

    def _load(self, collection: str, model: type[_M], key: str, value: str) -> _M | None:
        with self._errors():
            doc = self.db[collection].find_one(self._unexpired({key: value}), {"_id": 0})
        return None if doc is None else model.model_validate(self._dates(doc))

    def _list(self, collection: str, model: type[_M], query: dict[str, Any],
              limit: int | None = None) -> Iterator[_M]:
        """The unexpired documents that match, newest first, read whole before the first is
        returned; one that cannot be read is logged and left out."""
        if limit is not None and limit <= 0:
            return iter([])
        found = []
        with self._errors():
            cursor = self.db[collection].find(self._unexpired(query), {"_id": 0},
                                              sort=[("created_at", DESCENDING), ("_id", DESCENDING)],
                                              limit=limit or 0)
            with cursor:
                for doc in cursor:
                    try:
                        found.append(model.model_validate(self._dates(doc)))
                    except ValidationError as exc:
                        logger.warning("Left out of the list: %(kind)s in %(where)s is unreadable: %(error)s",
                                       {"kind": model.__name__, "where": self._where(collection), "error": exc})
        return iter(found)

    @staticmethod
    def _dates(doc: dict[str, Any]) -> dict[str, Any]:
        return {k: _utc(v) if k.endswith("_at") else v for k, v in doc.items()}
