"""The hybrid store: every batch to MongoDB (durable) and to Redis (fast, ephemeral)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

try:
    import redis
    from pymongo.errors import PyMongoError
except ImportError as exc:
    raise ImportError(
        "HybridCheckpointStore needs redis-py and pymongo: pip install 'scrapy-checkpoint[redis,mongodb]'"
    ) from exc

from .._redact import scrub, secrets_of
from ..exceptions import CheckpointError, CorruptCheckpointError, StoreLayoutError, StoreUnavailable
from ..models import Batch, Checkpoint, QuerySession, UserQuery
from .base import CheckpointStore, StatusFilter, statuses
from .mongodb import MongoDBCheckpointStore
from .redis import RedisCheckpointStore

if TYPE_CHECKING:
    from ..settings import CheckpointSettings

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_Q = TypeVar("_Q", UserQuery, QuerySession)

#: What makes a store unreachable for now (not wrong): it gets what it missed when it is back.
_UNAVAILABLE = (StoreUnavailable, redis.RedisError, PyMongoError)

# What became of one write to one store.
_LANDED, _MISSED, _SKIPPED = "landed", "missed", "skipped"


@dataclass(eq=False)
class _Side:
    """One of the two stores, and what the hybrid store knows of it."""

    store: CheckpointStore
    label: str
    #: The writes it missed while unreachable, oldest first: (checkpoint id, record to create
    #: or batch to apply, ttl).
    backlog: deque[tuple[str, Checkpoint | Batch, float]] = field(default_factory=deque)
    #: Events in the backlog; CHECKPOINT_BUFFER_LIMIT at most.
    events: int = 0
    #: Checkpoints it gets no more writes of: it lost them, or missed more than it can replay.
    stale: set[str] = field(default_factory=set)
    down: bool = False
    #: While down, it is not tried again before this time.monotonic() value.
    retry_at: float = 0.0
    #: Why it is out of the crawl for good (it answered again holding a layout this version
    #: refuses): it is never asked nor written again. None while it is not.
    refused: str | None = None
    replayed: int = 0


def _weight(entry: Checkpoint | Batch) -> int:
    # At least 1: a batch that only changes the status takes room too.
    return max(len(entry), 1) if isinstance(entry, Batch) else 1


def _ranges(seqs: list[int]) -> str:
    """``[1, 2, 3, 5]`` as ``1-3, 5``."""
    spans: list[list[int]] = []
    for seq in seqs:
        if spans and seq == spans[-1][1] + 1:
            spans[-1][1] = seq
        else:
            spans.append([seq, seq])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _lacking(record: bool, seqs: list[int], shared: int = 0) -> str:
    """``its record and batches 3-5``: what a store lacks of a checkpoint, for a log;
    *shared*: batches of this worker of several sharing it (each numbers its own)."""
    parts = ["its record"] if record else []
    if seqs:
        parts.append(f"batch{'es' if len(seqs) > 1 else ''} {_ranges(seqs)}")
    if shared:
        parts.append(f"{shared} batch{'es' if shared > 1 else ''} of this worker")
    return " and ".join(parts) or "no batch yet"


class HybridCheckpointStore(CheckpointStore):
    """Checkpoints in MongoDB and in Redis at once.

    Every write goes to MongoDB, then to Redis; each applies a batch atomically, and again as
    a no-op. While one of them is unreachable the other goes on alone, and the writes the
    first misses wait in its backlog (CHECKPOINT_BUFFER_LIMIT events at most), replayed in
    order when it answers again. A store that lost a checkpoint, or missed more than its
    backlog holds, is stale for that checkpoint: it gets no more of its writes. A store that
    was down at open() and answers holding a layout this version refuses is left as it is, and
    out of the crawl: the other goes on alone.

    Reads take the record with the higher ``seq`` (Redis on a tie) and serve the URL sets and
    items of that checkpoint from the store that holds it.

    Workers sharing a checkpoint (scrapy-redis) coordinate in Redis: the job's claim, their
    heartbeats and run numbers; their batches go to both stores.
    """

    name = "hybrid"
    shared = True

    def __init__(
        self,
        redis_store: RedisCheckpointStore,
        mongodb_store: MongoDBCheckpointStore,
        buffer_limit: int = 100_000,
        retry_interval: float = 5.0,
    ) -> None:
        self.redis = _Side(redis_store, "Redis")
        # MongoDB holds it all: a Redis loading its dataset is down here, not waited for.
        redis_store.loading_timeout = 0.0
        self._coordinator = redis_store
        self.mongodb = _Side(mongodb_store, "MongoDB")
        self.buffer_limit = buffer_limit
        #: How long a store that failed is left alone, so that a dead one does not cost a
        #: timeout on every flush.
        self.retry_interval = retry_interval
        # Held by every write and by get(): a read never sees a batch in one store only
        # because it is on its way to the other.
        self._lock = threading.RLock()
        self._sources: dict[str, _Side] = {}
        # Checkpoints this worker shares with others: their batches reach one store, then
        # the other, so a copy a little behind is not stale.
        self._shared: set[str] = set()
        self._warned: set[tuple[str, str]] = set()
        self._secrets = secrets_of(redis_store.url) | secrets_of(mongodb_store.uri)

    @classmethod
    def from_checkpoint_settings(cls, settings: CheckpointSettings) -> HybridCheckpointStore:
        return cls(
            RedisCheckpointStore.from_checkpoint_settings(settings),
            MongoDBCheckpointStore.from_checkpoint_settings(settings),
            settings.buffer_limit,
            settings.store_timeout,
        )

    def describe(self) -> str:
        return f"hybrid(redis:{self.redis.store.describe()}, mongodb:{self.mongodb.store.describe()})"

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            # Both layouts before either store writes: one refused leaves the other as it was.
            reachable = []
            for side in (self.mongodb, self.redis):
                try:
                    side.store.check_layout()
                except StoreUnavailable as exc:  # anything else (a refused login) ends the crawl
                    self._down(side, exc)
                else:
                    reachable.append(side)
            opened = 0
            for side in reachable:
                try:
                    side.store.open()
                except StoreUnavailable as exc:
                    self._down(side, exc)
                else:
                    side.retry_at = 0.0  # replay its backlog at the next write
                    side.refused = None  # its layout is this version's now
                    opened += 1
            if not opened:
                raise StoreUnavailable(f"Neither store of {self.describe()} is available")

    def close(self) -> None:
        with self._lock:
            for side in (self.mongodb, self.redis):
                if side.backlog:  # a last try, so that the crawl does not end with it behind
                    side.retry_at = 0.0
                    self._catch_up(side)
                for checkpoint_id in dict.fromkeys(c for c, _, _ in side.backlog if c not in side.stale):
                    self._stale(side, checkpoint_id, "was still unreachable when the store closed",
                                self._missed(side, checkpoint_id))
                side.backlog.clear()
                side.events = 0
            try:
                self.mongodb.store.close()
            finally:
                self.redis.store.close()

    # -- writes ----------------------------------------------------------------------------

    def create(self, checkpoint: Checkpoint) -> None:
        self._write(checkpoint.checkpoint_id, checkpoint, 0.0)

    def apply(self, checkpoint_id: str, batch: Batch, ttl: float) -> None:
        self._write(checkpoint_id, batch, ttl)

    def _write(self, checkpoint_id: str, entry: Checkpoint | Batch, ttl: float) -> None:
        with self._lock:
            outcomes = [(side, self._send(side, checkpoint_id, entry, ttl)) for side in (self.mongodb, self.redis)]
            if all(outcome != _LANDED for _, outcome in outcomes):
                # Nothing is kept: the caller keeps the batch and tries it again.
                if any(outcome == _MISSED for _, outcome in outcomes):
                    raise StoreUnavailable(f"Neither store of {self.describe()} is available")
                raise KeyError(f"checkpoint {checkpoint_id} is in neither store of {self.describe()}")
            for side, outcome in outcomes:
                if outcome == _MISSED:
                    self._keep(side, checkpoint_id, entry, ttl)

    def _send(self, side: _Side, checkpoint_id: str, entry: Checkpoint | Batch, ttl: float) -> str:
        caught_up = not side.down or self._catch_up(side)
        if side.refused or checkpoint_id in side.stale:
            return _SKIPPED
        if not caught_up:
            return _MISSED
        outcome = self._put(side, checkpoint_id, entry, ttl)
        if outcome == _LANDED and side.down:
            self._up(side)
        return outcome

    def _catch_up(self, side: _Side) -> bool:
        """Replay what *side* missed, in order; True once it has all of it."""
        if time.monotonic() < side.retry_at:
            return False
        while side.backlog:
            checkpoint_id, entry, ttl = side.backlog[0]
            if checkpoint_id not in side.stale:
                outcome = self._put(side, checkpoint_id, entry, ttl)
                if outcome == _MISSED or side.refused:  # refused: its backlog is gone
                    return False
                if outcome == _LANDED:
                    side.replayed += 1
                    self._inc("checkpoint/hybrid/replayed")
            side.backlog.popleft()
            side.events -= _weight(entry)
        if side.replayed:
            self._up(side)
        return True

    def _put(self, side: _Side, checkpoint_id: str, entry: Checkpoint | Batch, ttl: float) -> str:
        try:
            self._open(side)
            if isinstance(entry, Batch):
                side.store.apply(checkpoint_id, entry, ttl)
            else:
                side.store.create(entry)
        except _UNAVAILABLE as exc:
            self._down(side, exc)
            return _SKIPPED if side.refused else _MISSED
        except KeyError:
            self._stale(side, checkpoint_id, "no longer holds it (restarted empty, or expired)",
                        self._missed(side, checkpoint_id, entry))
            return _SKIPPED
        except CorruptCheckpointError as exc:
            self._stale(side, checkpoint_id, f"holds a corrupt copy of it ({self._text(exc.reason)})",
                        self._missed(side, checkpoint_id, entry))
            return _SKIPPED
        return _LANDED

    def _keep(self, side: _Side, checkpoint_id: str, entry: Checkpoint | Batch, ttl: float) -> None:
        side.backlog.append((checkpoint_id, entry, ttl))
        side.events += _weight(entry)
        if side.events <= self.buffer_limit:
            return
        self._stale(
            side, checkpoint_id,
            f"missed more than CHECKPOINT_BUFFER_LIMIT ({self.buffer_limit}) events of it while unreachable",
            self._missed(side, checkpoint_id),
        )
        side.backlog = deque(e for e in side.backlog if e[0] != checkpoint_id)
        side.events = sum(_weight(e) for _, e, _ in side.backlog)

    def _missed(self, side: _Side, checkpoint_id: str, entry: Checkpoint | Batch | None = None) -> str:
        """What *side* lacks of a checkpoint: its backlog for it, and *entry*."""
        entries = [e for c, e, _ in side.backlog if c == checkpoint_id]
        if entry is not None and not any(e is entry for e in entries):
            entries.append(entry)
        batches = [e for e in entries if isinstance(e, Batch)]
        return _lacking(any(isinstance(e, Checkpoint) for e in entries),
                        sorted(b.seq for b in batches if b.writer is None), sum(b.writer is not None for b in batches))

    # -- the state of each store -----------------------------------------------------------

    def _open(self, side: _Side) -> None:
        """Connect *side*, down at open() (a no-op once it is connected). One that answers
        holding a layout this version refuses is out of the crawl: StoreUnavailable, then and
        from then on, without asking it again."""
        if side.refused is None:
            try:
                side.store.open()
                return
            except StoreLayoutError as exc:  # open() wrote nothing to it
                self._refuse(side, exc)
        raise StoreUnavailable(f"{side.label} is out of this crawl: {side.refused}")

    def _refuse(self, side: _Side, exc: StoreLayoutError) -> None:
        """*side* answered again holding another version's layout: it gets nothing more, not
        even another try (every flush would meet the same refusal)."""
        with self._lock:
            side.refused = scrub(str(exc), self._secrets)
            side.down = True
            other = self.redis if side is self.mongodb else self.mongodb
            self._inc(f"checkpoint/hybrid/{side.store.name}_refused")
            logger.error(
                "%(label)s answers again but is refused: %(refusal)s It gets nothing more of this crawl, "
                "whose checkpoints go on in %(other)s at %(other_store)s alone%(expiry)s. Until that is "
                "done, a crawl with these settings does not start.",
                {"label": side.label, "refusal": side.refused, "other": other.label,
                 "other_store": other.store.describe(),
                 "expiry": ", which expires them CHECKPOINT_TTL after their last write" if other is self.redis
                 else ""},
            )
            if side is self.mongodb:  # what it missed is in Redis only now: said per checkpoint
                for checkpoint_id in dict.fromkeys(c for c, _, _ in side.backlog if c not in side.stale):
                    self._stale(side, checkpoint_id, "holds another version's layout",
                                self._missed(side, checkpoint_id))
            # Redis's backlog is all in MongoDB: a write that reached neither store is not kept.
            side.backlog.clear()
            side.events = 0

    def _down(self, side: _Side, exc: Exception) -> None:
        with self._lock:
            side.retry_at = time.monotonic() + self.retry_interval
            if side.down:
                return
            side.down = True
            other = self.redis if side is self.mongodb else self.mongodb
            self._inc(f"checkpoint/hybrid/{side.store.name}_unavailable")
            logger.warning(
                "%(label)s at %(store)s is unavailable (%(error)s): checkpoints go on in %(other)s "
                "alone, and what %(label)s misses is replayed when it answers again",
                {"label": side.label, "store": side.store.describe(), "error": self._text(exc.__cause__ or exc),
                 "other": other.label},
            )

    def _up(self, side: _Side) -> None:
        side.down = False
        logger.info("%(label)s at %(store)s answers again (%(replayed)d missed batches replayed)",
                    {"label": side.label, "store": side.store.describe(), "replayed": side.replayed})
        side.replayed = 0

    def _stale(self, side: _Side, checkpoint_id: str, reason: str, missed: str) -> None:
        side.stale.add(checkpoint_id)
        if self._sources.get(checkpoint_id) is side:
            del self._sources[checkpoint_id]
        self._inc(f"checkpoint/hybrid/{side.store.name}_stale")
        if side is self.redis:
            logger.warning(
                "Checkpoint %(id)s: Redis at %(store)s %(reason)s, so it is stale for this checkpoint "
                "and gets no more of its writes; MongoDB at %(mongodb)s holds the checkpoint.",
                {"id": checkpoint_id, "store": side.store.describe(), "reason": reason,
                 "mongodb": self.mongodb.store.describe()},
            )
        else:
            # MongoDB is the durable copy: what it lacks may be lost when Redis expires it.
            logger.error(
                "Checkpoint %(id)s: MongoDB at %(store)s %(reason)s. It lacks %(missed)s, and gets no "
                "later write of this checkpoint: that progress is in Redis at %(redis)s only, which "
                "expires it CHECKPOINT_TTL after its last write.",
                {"id": checkpoint_id, "store": side.store.describe(), "reason": reason, "missed": missed,
                 "redis": self.redis.store.describe()},
            )

    def _text(self, error: BaseException | str) -> str:
        """An error for a log: credentials hidden, and short (pymongo appends its whole
        topology description; the start says what went wrong)."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        text = scrub(text, self._secrets)
        return text if len(text) <= 300 else text[:300] + "..."

    def _inc(self, key: str, count: int = 1) -> None:
        if self.stats is not None:
            self.stats.inc_value(key, count)

    # -- reads -----------------------------------------------------------------------------

    def _read(self, read: Callable[[CheckpointStore], _T]) -> tuple[list[tuple[_Side, _T]], list[CheckpointError]]:
        """*read* from Redis, then MongoDB: the answers, and why the others gave none."""
        answers: list[tuple[_Side, _T]] = []
        errors: list[CheckpointError] = []
        for side in (self.redis, self.mongodb):
            if side.down and time.monotonic() < side.retry_at:
                errors.append(StoreUnavailable(f"{side.label} at {side.store.describe()} is unavailable"))
                continue
            try:
                self._open(side)
                answers.append((side, read(side.store)))
            except _UNAVAILABLE as exc:
                self._down(side, exc)
                errors.append(exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(
                    f"{side.label} at {side.store.describe()} is unavailable: {self._text(exc)}"))
            except CorruptCheckpointError as exc:
                key = (side.label, exc.checkpoint_id)
                if key not in self._warned:
                    self._warned.add(key)
                    self._inc(f"checkpoint/hybrid/{side.store.name}_corrupt")
                    logger.warning(
                        "Ignoring the copy of checkpoint %(id)s in %(label)s (%(where)s): %(reason)s",
                        {"id": exc.checkpoint_id, "label": side.label, "where": exc.where,
                         "reason": self._text(exc.reason)},
                    )
                errors.append(exc)
        return answers, errors

    def _check_none(self, answers: list[tuple[_Side, Any]], errors: list[CheckpointError]) -> None:
        """No store returned a record: raise, unless that is sure to be the answer."""
        if any(side is self.mongodb for side, _ in answers):
            # MongoDB answering "none" is an answer; Redis answering "none" while MongoDB
            # cannot be asked is not: Redis may have lost what MongoDB holds.
            errors = [e for e in errors if not isinstance(e, StoreUnavailable)]
        down = [e for e in errors if isinstance(e, StoreUnavailable)]
        if len(down) == 2:
            raise StoreUnavailable(f"Neither store of {self.describe()} is available")
        if errors:  # a store that may come back before a corrupt copy
            raise down[0] if down else errors[0]

    def get(self, checkpoint_id: str) -> Checkpoint | None:
        with self._lock:
            answers, errors = self._read(lambda store: store.get(checkpoint_id))
            found = [(side, record) for side, record in answers if record is not None]
            if not found:
                self._sources.pop(checkpoint_id, None)
                self._check_none(answers, errors)
                return None
            # max() keeps the first of equals: Redis, read first, wins a tie.
            source, best = max(found, key=lambda answer: answer[1].seq)
            self._sources[checkpoint_id] = source
            for side, record in answers:
                if checkpoint_id in self._shared and record is not None:
                    continue
                if side is not source and (record is None or record.seq < best.seq):
                    self._behind(side, checkpoint_id, record, best)
            return best

    def _behind(self, side: _Side, checkpoint_id: str, record: Checkpoint | None, best: Checkpoint) -> None:
        """*side* has an older copy, or none: stale, unless its backlog holds what it lacks (a
        store must never get a batch after one it missed: it would look current, with gaps)."""
        if checkpoint_id in side.stale or any(c == checkpoint_id for c, _, _ in side.backlog):
            return
        if record is None:
            reason, seqs = "does not hold it", range(1, best.seq + 1)
        else:
            reason = f"holds it only up to batch {record.seq}, the other store up to batch {best.seq}"
            seqs = range(record.seq + 1, best.seq + 1)
        self._stale(side, checkpoint_id, reason, _lacking(record is None, list(seqs)))

    def find_resumable(self, spider: str, site_domain: str, job_type: str) -> Checkpoint | None:
        answers, errors = self._read(lambda store: store.find_resumable(spider, site_domain, job_type))
        # MongoDB's first: it breaks a tie of updated_at (kept to the millisecond) by insertion
        # order, Redis by checkpoint id.
        candidates = dict.fromkeys(record.checkpoint_id for _, record in reversed(answers) if record is not None)
        if not candidates:
            self._check_none(answers, errors)
        # Each store ranks its own copies: the other may hold a candidate further on (even
        # completed). Between two checkpoints, newest means updated_at, as in either store.
        best: Checkpoint | None = None
        for checkpoint_id in candidates:
            record = self.get(checkpoint_id)
            if record is not None and record.resumable and (best is None or record.updated_at > best.updated_at):
                best = record
        return best

    # -- workers sharing a checkpoint: in Redis (see RedisCheckpointStore) -----------------

    def claim(self, spider: str, site_domain: str, job_type: str, new_id: str, take: str | None,
              live: float) -> tuple[str, str]:
        found, how = self._coordinate(lambda store: store.claim(spider, site_domain, job_type, new_id, take, live))
        self._shared.add(found)
        return found, how

    def beat(self, checkpoint: Checkpoint, worker: str, info: dict[str, Any], live: float, ttl: float) -> bool:
        return self._coordinate(lambda store: store.beat(checkpoint, worker, info, live, ttl))

    def next_run(self, checkpoint_id: str) -> int:
        return self._coordinate(lambda store: store.next_run(checkpoint_id))

    def workers(self, checkpoint_id: str) -> dict[str, dict[str, Any]]:
        return self._coordinate(lambda store: store.workers(checkpoint_id))

    def _coordinate(self, call: Callable[[RedisCheckpointStore], _T]) -> _T:
        self._open(self.redis)
        return call(self._coordinator)

    def _source(self, checkpoint_id: str, fresh: bool = False) -> CheckpointStore:
        """The store whose record won the last read (*fresh*: a read now): the URL sets must
        match the record."""
        side = None if fresh else self._sources.get(checkpoint_id)
        if side is None:
            self.get(checkpoint_id)
            side = self._sources.get(checkpoint_id, self.mongodb)
        return side.store

    def processed_fingerprints(self, checkpoint_id: str) -> Iterator[bytes]:
        return self._source(checkpoint_id).processed_fingerprints(checkpoint_id)

    def pending_start_fingerprints(self, checkpoint_id: str) -> Iterator[bytes]:
        return self._source(checkpoint_id).pending_start_fingerprints(checkpoint_id)

    def pending_requests(
        self, checkpoint_id: str, after: Any, limit: int
    ) -> tuple[list[bytes], Any]:
        # The first page is read where the newest record is now: a worker of a shared
        # checkpoint looks for requests its queue lost after Redis restarted empty.
        store = self._source(checkpoint_id, fresh=after is None)
        # A cursor means something only to the store that made it. When the source changed
        # (the old one went stale) paging starts over: the scheduler's dupefilter drops the
        # requests handed out already.
        name, cursor = after if after is not None else (store.name, None)
        page, cursor = store.pending_requests(checkpoint_id, cursor if name == store.name else None, limit)
        return page, (store.name, cursor)

    def items(self, checkpoint_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        return self._source(checkpoint_id).items(checkpoint_id)

    def list_checkpoints(
        self,
        spider: str | None = None,
        site_domain: str | None = None,
        job_type: str | None = None,
        status: StatusFilter = None,
    ) -> Iterator[Checkpoint]:
        wanted = statuses(status)
        # Spider, site and job never change; the status does, so it is filtered only once
        # the newer copy of each checkpoint is known.
        answers, errors = self._read(lambda store: list(store.list_checkpoints(spider, site_domain, job_type)))
        # Without MongoDB the list may lack what Redis lost; without Redis, only the progress
        # of the batches MongoDB missed.
        self._check_none(answers, errors)
        newest: dict[str, Checkpoint] = {}
        for _, checkpoints in answers:  # Redis first: it wins a tie, as in get()
            for checkpoint in checkpoints:
                held = newest.get(checkpoint.checkpoint_id)
                if held is None or checkpoint.seq > held.seq:
                    newest[checkpoint.checkpoint_id] = checkpoint
        found = [c for c in newest.values() if wanted is None or c.status.value in wanted]
        found.sort(key=lambda checkpoint: checkpoint.updated_at, reverse=True)
        yield from found

    def delete(self, checkpoint_id: str) -> bool:
        """From both stores; StoreUnavailable when one cannot be reached, since the copy left
        there would come back (run it again once the store answers)."""
        with self._lock:
            for side in (self.mongodb, self.redis):
                side.backlog = deque(e for e in side.backlog if e[0] != checkpoint_id)
                side.events = sum(_weight(e) for _, e, _ in side.backlog)
                side.stale.discard(checkpoint_id)
            self._sources.pop(checkpoint_id, None)
            return self._delete_from_both(lambda store: store.delete(checkpoint_id), f"Checkpoint {checkpoint_id}")

    def _delete_from_both(self, delete: Callable[[CheckpointStore], bool], what: str) -> bool:
        """*delete* in MongoDB, then Redis; whether either held it. StoreUnavailable naming
        *what* when one cannot be reached (after the other deleted it)."""
        deleted = False
        down: list[str] = []
        for side in (self.mongodb, self.redis):
            try:
                self._open(side)
                deleted = delete(side.store) or deleted
            except _UNAVAILABLE as exc:
                # This version never reads a refused store: a copy left there cannot come back.
                if not side.refused:
                    down.append(f"{side.label} at {side.store.describe()} ({self._text(exc)})")
        if down:
            raise StoreUnavailable(
                f"{what} may still be in {' and '.join(down)}: delete it again once the store answers")
        return deleted

    # -- user queries and query sessions ---------------------------------------------------
    #
    # Simpler than checkpoints: each save goes to MongoDB, then to Redis, and a store that
    # cannot be reached misses it (nothing is replayed). A document held by both is read from
    # the one whose copy is newer (a session's updated_at; MongoDB's on a tie, as it gets
    # every write first), so a copy that missed a save is not used while the other answers.

    def _save_query_record(self, record: UserQuery | QuerySession, ttl: float) -> None:
        """The same record to both: one ``expires_at``."""
        with self._lock:
            saved = False
            for side in (self.mongodb, self.redis):
                if side.refused or (side.down and time.monotonic() < side.retry_at):
                    continue
                try:
                    self._open(side)
                    side.store._save_query_record(record, ttl)
                    saved = True
                except _UNAVAILABLE as exc:
                    self._down(side, exc)
                    logger.warning("%(kind)s %(id)s was not saved to %(label)s at %(store)s, unavailable: %(error)s",
                                   {"kind": type(record).__name__, "id": getattr(record, "session_id", record.query_id),
                                    "label": side.label, "store": side.store.describe(),
                                    "error": self._text(exc.__cause__ or exc)})
            if not saved:
                raise StoreUnavailable(f"Neither store of {self.describe()} is available")

    def get_user_query(self, query_id: str) -> UserQuery | None:
        return self._get_query(lambda store: store.get_user_query(query_id))

    def get_query_session(self, session_id: str) -> QuerySession | None:
        return self._get_query(lambda store: store.get_query_session(session_id))

    def _get_query(self, read: Callable[[CheckpointStore], _Q | None]) -> _Q | None:
        answers, errors = self._read(read)
        found = [(side, document) for side, document in answers if document is not None]
        if not found:
            self._check_none(answers, errors)  # Redis's "none" is sure only with MongoDB's
            return None
        return self._newest([document for _, document in sorted(found, key=self._mongodb_first)])

    def list_user_queries(self, user_id: str | None = None, limit: int | None = None) -> Iterator[UserQuery]:
        found = self._list_queries(lambda store: list(store.list_user_queries(user_id, limit)), "query_id")
        return iter(found if limit is None else found[:max(limit, 0)])

    def list_query_sessions(self, query_id: str | None = None) -> Iterator[QuerySession]:
        return iter(self._list_queries(lambda store: list(store.list_query_sessions(query_id)), "session_id"))

    def _list_queries(self, read: Callable[[CheckpointStore], list[_Q]], key: str) -> list[_Q]:
        """Both stores' lists merged, each document's newer copy, newest first. Like
        list_checkpoints, it needs MongoDB: Redis alone may have lost some."""
        answers, errors = self._read(read)
        self._check_none(answers, errors)
        copies: dict[str, list[_Q]] = {}
        for _, documents in sorted(answers, key=self._mongodb_first):
            for document in documents:
                copies.setdefault(getattr(document, key), []).append(document)
        found = [self._newest(documents) for documents in copies.values()]
        found.sort(key=lambda document: document.created_at, reverse=True)
        return found

    def _mongodb_first(self, answer: tuple[_Side, Any]) -> bool:
        return answer[0] is not self.mongodb

    @staticmethod
    def _newest(copies: list[_Q]) -> _Q:
        """The copy saved last, as far as it tells (the first of equals)."""
        return max(copies, key=lambda document: getattr(document, "updated_at", document.created_at))

    def delete_user_query(self, query_id: str) -> bool:
        """From both stores; StoreUnavailable when one cannot be reached, since the copy left
        there would come back (run it again once the store answers)."""
        with self._lock:
            return self._delete_from_both(lambda store: store.delete_user_query(query_id), f"User query {query_id}")
