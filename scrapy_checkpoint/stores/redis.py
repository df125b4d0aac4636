"""The Redis store: one hash per record, one key per URL set, one Lua script call per batch."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

try:
    import redis
except ImportError as exc:
    raise ImportError("RedisCheckpointStore needs redis-py: pip install 'scrapy-checkpoint[redis]'") from exc

from pydantic import ValidationError
from redis.backoff import NoBackoff
from redis.retry import Retry

from .._redact import redact_uri
from ..exceptions import CheckpointError, CorruptCheckpointError, StoreUnavailable
from ..models import RUN_HISTORY, Batch, Checkpoint, QuerySession, UserQuery, expiry, utcnow
from .base import CheckpointStore, StatusFilter, statuses

if TYPE_CHECKING:
    from ..settings import CheckpointSettings

logger = logging.getLogger(__name__)

_Q = TypeVar("_Q", UserQuery, QuerySession)
_T = TypeVar("_T")

#: The keys of one checkpoint, ``{prefix}:cp:{id}:{kind}``, in the order _APPLY takes them.
_KINDS = ("record", "requests", "pending", "start", "processed", "items", "workers")
_PAGE = 1000
#: Set members per SSCAN round trip: a resume reads every processed fingerprint.
_SCAN_COUNT = 10_000
#: How long a store call waits for a Redis that is loading its dataset into memory (after a
#: restart, say), in CHECKPOINT_STORE_TIMEOUTs: one that answers LOADING is up and will serve,
#: and a large dump takes more than a store timeout to load.
LOADING_TIMEOUTS = 12
#: Seconds between two tries of a command Redis answered LOADING.
_LOADING_POLL = 0.1

# Shared by both scripts. Every check comes before the first write, because Redis does not
# roll a script back when it fails half way: a corrupt key must leave the batch unapplied.
_LUA_HELPERS = """
local function check_types(types)
  for i, key in ipairs(KEYS) do
    local found = redis.call('TYPE', key).ok
    if found ~= 'none' and found ~= types[i] then
      return redis.error_reply('CORRUPT ' .. key .. ' is a ' .. found .. ', not a ' .. types[i])
    end
  end
end

-- An index outlives the longest TTL given to any of its checkpoints. *left*: its PTTL
-- before the entry was added (after, a new index would read as persistent).
local function outlive(index, left, ttl)
  if ttl == 0 then
    redis.call('PERSIST', index)
  elseif left == -2 or (left >= 0 and left < ttl) then
    redis.call('PEXPIRE', index, ttl)
  end
end

-- The resumable index is one sorted set whose scores are all 0, so that it sorts by member:
-- '<job> <updated_at in microseconds, 16 digits> <checkpoint id>'. Only active and failed
-- checkpoints are in it.
local function reindex(record, index, job, id, status, stamp, ttl)
  local old = redis.call('HGET', record, '_indexed')
  if old then redis.call('ZREM', index, old) end
  if status == 'completed' then
    redis.call('HDEL', record, '_indexed')
    return
  end
  local member = job .. ' ' .. stamp .. ' ' .. id
  local left = redis.call('PTTL', index)
  redis.call('ZADD', index, 0, member)
  redis.call('HSET', record, '_indexed', member)
  outlive(index, left, ttl)
end

-- The index of every checkpoint, whatever its status, scored by when its keys expire (ms
-- since the epoch, +inf for never), so that the entries of expired checkpoints go by score.
local function index_all(index, id, expires_ms, ttl)
  local left = redis.call('PTTL', index)
  redis.call('ZADD', index, expires_ms or '+inf', id)
  outlive(index, left, ttl)
end
"""

# KEYS: record, resumable index, index of all. ARGV[1]: JSON {id, job, status, stamp, ttl (ms,
# 0 = never), expires_ms (absent for never), now_ms}; then field, value... of the record.
_CREATE = _LUA_HELPERS + """
local err = check_types({'hash', 'zset', 'zset'})
if err then return err end
local h = cjson.decode(ARGV[1])
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if h.ttl > 0 then redis.call('PEXPIRE', KEYS[1], h.ttl) end
reindex(KEYS[1], KEYS[2], h.job, h.id, h.status, h.stamp, h.ttl)
-- Once per crawl, not per batch: the entries of checkpoints that expired since.
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', h.now_ms)
index_all(KEYS[3], h.id, h.expires_ms, h.ttl)
return 1
"""

# KEYS: the checkpoint's keys in _KINDS order, then the two indexes. ARGV[1]: JSON header (see
# RedisCheckpointStore.apply); then fingerprint, request, start ('1'/'0') per discovered
# request, one fingerprint per processed request, one JSON [type, fields] per item.
# Returns 1 when applied, 0 for a batch already applied, -1 when the record is missing.
# A batch of one of several workers sharing the checkpoint names its writer: its seq, feeds
# and spider state are that writer's own fields ('seq:<writer>', ...), and 'seq' counts the
# batches of all.
_APPLY = _LUA_HELPERS + """
local record, requests, pending, start, processed, items, workers, index, all = unpack(KEYS)
local err = check_types({'hash', 'hash', 'zset', 'set', 'set', 'list', 'hash', 'zset', 'zset'})
if err then return err end
if redis.call('EXISTS', record) == 0 then return -1 end
local h = cjson.decode(ARGV[1])
local own = h.writer and (':' .. h.writer) or ''
local counters = {'seq' .. own, 'urls_discovered', 'urls_processed', 'items_scraped', 'pipeline_step'}
for name in pairs(h.item_counts) do table.insert(counters, 'type:' .. name) end
local values = redis.call('HMGET', record, unpack(counters))
if h.writer and not values[1] then values[1] = '0' end  -- the writer's first batch
for i, value in ipairs(values) do
  if (value and not string.match(value, '^%d+$')) or (not value and i <= 5) then
    return redis.error_reply('CORRUPT ' .. record .. ' field ' .. counters[i] .. ' is not a count')
  end
end
local status, job = unpack(redis.call('HMGET', record, 'status', '_job'))
if not (status and job) then
  return redis.error_reply('CORRUPT ' .. record .. ' has no status or job')
end
if h.seq <= tonumber(values[1]) then return 0 end

local position, found, done, argi = tonumber(values[2]), 0, 0, 2
for _ = 1, h.discovered do
  local fp = ARGV[argi]
  if redis.call('SISMEMBER', processed, fp) == 0 and redis.call('HSETNX', requests, fp, ARGV[argi + 1]) == 1 then
    found = found + 1
    redis.call('ZADD', pending, position + found, fp)
    if ARGV[argi + 2] == '1' then redis.call('SADD', start, fp) end
  end
  argi = argi + 3
end
for _ = 1, h.processed do
  local fp = ARGV[argi]
  if redis.call('SADD', processed, fp) == 1 then
    done = done + 1
    -- Processed without a record (it could not be serialized): it was discovered too.
    if redis.call('ZREM', pending, fp) == 0 then found = found + 1 end
    redis.call('HDEL', requests, fp)
    redis.call('SREM', start, fp)
  end
  argi = argi + 1
end
for _ = 1, h.items do
  redis.call('RPUSH', items, ARGV[argi])
  argi = argi + 1
end

redis.call('HINCRBY', record, 'urls_discovered', found)
redis.call('HINCRBY', record, 'urls_processed', done)
local scraped = 0
for name, count in pairs(h.item_counts) do
  redis.call('HINCRBY', record, 'type:' .. name, count)
  scraped = scraped + count
end
redis.call('HINCRBY', record, 'items_scraped', scraped)
for key, page in pairs(h.pagination) do redis.call('HSET', record, 'page:' .. key, page) end
if h.current_page then redis.call('HSET', record, 'current_page', h.current_page) end
if h.state then redis.call('HSET', record, 'state' .. own, h.state) end
if h.outputs then redis.call('HSET', record, 'outputs' .. own, h.outputs) end
for _, writer in ipairs(h.took_over or {}) do redis.call('HDEL', record, 'outputs:' .. writer) end
if h.run then redis.call('HSET', record, 'run:' .. h.run_number, h.run) end
if h.run_forgotten then redis.call('HDEL', record, 'run:' .. h.run_forgotten) end
if h.pipeline_step > tonumber(values[5]) then redis.call('HSET', record, 'pipeline_step', h.pipeline_step) end
status = h.status or status
redis.call('HSET', record, 'status', status, 'seq' .. own, h.seq, 'updated_at', h.updated_at)
if h.writer then redis.call('HINCRBY', record, 'seq', 1) end
if h.expires_at then
  redis.call('HSET', record, 'expires_at', h.expires_at)
else
  redis.call('HDEL', record, 'expires_at')
end
for i = 1, 7 do
  if h.ttl == 0 then redis.call('PERSIST', KEYS[i]) else redis.call('PEXPIRE', KEYS[i], h.ttl) end
end
reindex(record, index, job, h.id, status, h.stamp, h.ttl)
index_all(all, h.id, h.expires_ms, h.ttl)
return 1
"""

# KEYS: the checkpoint's keys in _KINDS order, then the two indexes. ARGV[1]: its id.
# Returns how many of its keys there were. A record of the wrong type goes too: deleting is
# how a corrupt checkpoint is got rid of. UNLINK, never DEL: Redis hands a large key to its
# background thread to free (whatever lazyfree-lazy-user-del says), so the script holds the
# server for a fraction of a millisecond even at 10M URLs; a DEL would free them in the
# script (some 150 ms for 200,000 processed URLs), stalling every crawl on the server.
# tests/test_redis_scale.py checks that the keys go to the background thread; BENCHMARKS.md
# has the figures.
_DELETE = """
for i = 8, 9 do
  local found = redis.call('TYPE', KEYS[i]).ok
  if found ~= 'none' and found ~= 'zset' then
    return redis.error_reply('CORRUPT ' .. KEYS[i] .. ' is a ' .. found .. ', not a zset')
  end
end
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  local member = redis.call('HGET', KEYS[1], '_indexed')
  if member then redis.call('ZREM', KEYS[8], member) end
end
redis.call('ZREM', KEYS[9], ARGV[1])
return redis.call('UNLINK', unpack(KEYS, 1, 7))
"""


# Workers sharing a checkpoint (scrapy-redis): '{prefix}:crawl:<job>' names the checkpoint the
# live workers of a job write to, and expires unless one of them renews it.
#
# KEYS: that pointer. ARGV: record key prefix ('{prefix}:cp:'), a new checkpoint id, the id
# of one to take over ('' for none), how long the pointer lives (ms). Returns {id, how}: how
# is 'joined' (live workers write to it; its record may not be created yet), 'taken' (the
# one given, which no live worker writes to) or 'created' (the new id: the caller creates it).
_CLAIM = """
local pointer, prefix, new, take, live = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local current = redis.call('GET', pointer)
if current then
  local status = redis.call('HGET', prefix .. current .. ':record', 'status')
  if not status or status == 'active' or status == 'failed' then return {current, 'joined'} end
end
if take ~= '' then
  redis.call('SET', pointer, take, 'PX', live)
  return {take, 'taken'}
end
redis.call('SET', pointer, new, 'PX', live)
return {new, 'created'}
"""

# KEYS: the pointer, the checkpoint's workers hash. ARGV: checkpoint id, worker, its JSON
# info, pointer life (ms), the checkpoint's TTL (ms, 0 = none). A live worker keeps the
# pointer on its checkpoint (sets it again if it lapsed, leaves it if another checkpoint took
# it); its info gets the server's clock as 'seen_ms'.
_BEAT = """
local pointer, workers = KEYS[1], KEYS[2]
local id, worker, info, live, ttl = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local current = redis.call('GET', pointer)
if not current or current == id then redis.call('SET', pointer, id, 'PX', live) end
local t = redis.call('TIME')
info.seen_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', workers, worker, cjson.encode(info))
if ttl > 0 then redis.call('PEXPIRE', workers, ttl) end
return current == false or current == id
"""

# KEYS: the record. Returns the number of the next run: one more than any so far, unique
# among workers that begin their runs at once.
_NEXT_RUN = """
if redis.call('HEXISTS', KEYS[1], 'runs_next') == 0 then
  local last = 0
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    local n = tonumber(string.match(field, '^run:(%d+)$'))
    if n and n > last then last = n end
  end
  redis.call('HSET', KEYS[1], 'runs_next', last)
end
return redis.call('HINCRBY', KEYS[1], 'runs_next', 1)
"""


# `scrapy query`'s documents: a user query or a query session, one JSON string each, in an
# index of all of its kind (a sorted set by created_at) and in its owner's (the user's queries,
# the query's sessions), and in the index of all of its kind by expiry, which drops the
# entries of expired documents from the first at each save (a user's or a query's index drops
# them when read, and expires with the last of its documents).
#
# KEYS: the document, the index of all, the index by expiry, the owner's index (none for a
# query without a user). ARGV: the JSON document, its id, created_at (ms), expires_at (ms,
# '+inf' for never), ttl (ms, 0 = never), now (ms), the document's owner field, then the
# owner's index key around the owner's value (prefix, suffix): a save that changes the owner
# (a query re-saved with another user) takes the entry out of the old owner's index.
_SAVE_QUERY_DOCUMENT = _LUA_HELPERS + """
local document, all, by_expiry, owned = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local json, id, created, expires, ttl, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local owner_field, owner_prefix, owner_suffix = ARGV[7], ARGV[8], ARGV[9]
local old = redis.call('GET', document)
if old then
  local ok, decoded = pcall(cjson.decode, old)
  local was = ok and type(decoded) == 'table' and decoded[owner_field]
  if type(was) == 'string' then
    local index = owner_prefix .. was .. owner_suffix
    if index ~= owned then redis.call('ZREM', index, id) end
  end
end
if ttl > 0 then
  redis.call('SET', document, json, 'PX', ttl)
else
  redis.call('SET', document, json)
end
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', by_expiry, '-inf', '(' .. now)) do
  redis.call('ZREM', all, gone)
end
redis.call('ZREMRANGEBYSCORE', by_expiry, '-inf', '(' .. now)
local indexes = {{all, created}, {by_expiry, expires}}
if owned then table.insert(indexes, {owned, created}) end
for _, entry in ipairs(indexes) do
  local left = redis.call('PTTL', entry[1])
  redis.call('ZADD', entry[1], entry[2], id)
  outlive(entry[1], left, ttl)
end
return 1
"""

# KEYS: the user query, the query's sessions index, the indexes of all queries, by expiry, of
# all sessions, by expiry. ARGV: the query id, the user index key around the user (prefix,
# suffix), the session key around its id (prefix, suffix). Returns how many documents went.
_DELETE_USER_QUERY = """
local query, sessions, queries, queries_expiry, all_sessions, sessions_expiry = unpack(KEYS)
local id, user_prefix, user_suffix, session_prefix, session_suffix = unpack(ARGV)
local deleted = 0
local old = redis.call('GET', query)
if old then
  local ok, decoded = pcall(cjson.decode, old)
  local user = ok and type(decoded) == 'table' and decoded.user_id
  if type(user) == 'string' then redis.call('ZREM', user_prefix .. user .. user_suffix, id) end
  deleted = redis.call('DEL', query)
end
redis.call('ZREM', queries, id)
redis.call('ZREM', queries_expiry, id)
for _, session in ipairs(redis.call('ZRANGE', sessions, 0, -1)) do
  deleted = deleted + redis.call('DEL', session_prefix .. session .. session_suffix)
  redis.call('ZREM', all_sessions, session)
  redis.call('ZREM', sessions_expiry, session)
end
redis.call('DEL', sessions)
return deleted
"""


def _ttl_ms(ttl: float) -> int:
    """Milliseconds for PEXPIRE; 0 means persist, so a tiny positive TTL rounds up to 1."""
    return max(1, round(ttl * 1000)) if ttl > 0 else 0


_last_stamp = 0
_stamp_lock = threading.Lock()


def _stamp() -> str:
    """Microseconds since the epoch in 16 digits, which sort as text in time order; strictly
    increasing within the process, so that records written in one tick still sort."""
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(time.time_ns() // 1000, _last_stamp + 1)
        return f"{_last_stamp:016d}"


def _epoch_ms(moment: datetime | None) -> str | None:
    """Milliseconds since the epoch, as a sorted-set score."""
    return None if moment is None else str(round(moment.timestamp() * 1000))


def _job(spider: str, site_domain: str, job_type: str) -> str:
    return json.dumps([spider, site_domain, job_type], separators=(",", ":"))


def _record_fields(checkpoint: Checkpoint) -> dict[str, Any]:
    """The record as hash fields: counters stay fields so that a batch increments them."""
    data = checkpoint.pipeline_data
    results = data.extraction_results
    fields: dict[str, Any] = {
        "checkpoint_id": checkpoint.checkpoint_id,
        "spider": checkpoint.spider,
        "site_domain": checkpoint.site_domain,
        "job_type": checkpoint.job_type,
        "pipeline_step": checkpoint.pipeline_step,
        "status": checkpoint.status.value,
        "seq": checkpoint.seq,
        "created_at": checkpoint.created_at.isoformat(),
        "updated_at": checkpoint.updated_at.isoformat(),
        "urls_discovered": data.urls_discovered,
        "urls_processed": data.urls_processed,
        "items_scraped": results.items_scraped,
        "state": json.dumps(data.state, default=str),
        "outputs": json.dumps(data.outputs),
        "_job": _job(checkpoint.spider, checkpoint.site_domain, checkpoint.job_type),
    }
    if checkpoint.expires_at is not None:
        fields["expires_at"] = checkpoint.expires_at.isoformat()
    if data.current_page is not None:
        fields["current_page"] = data.current_page
    fields.update((f"type:{name}", count) for name, count in results.by_type.items())
    fields.update((f"page:{key}", page) for key, page in data.pagination_state.items())
    fields.update((f"run:{run.number}", run.model_dump_json()) for run in checkpoint.runs)
    return fields


class _Loading(Exception):
    """Redis answered LOADING: out of redis-py's retries, which would count it, into the wait."""


class _LoadingRetry(Retry):
    """The retry policy of the store's client. It retries what redis-py retries without one;
    a command, pipeline or script Redis answers LOADING goes again until Redis has loaded its
    dataset, ``loading_timeout`` seconds at most (then its BusyLoadingError goes up). Every call
    to Redis goes through it, so that the store waits in one place. It blocks the calling
    thread: the extension calls the store from worker threads, never from the reactor's."""

    def __init__(self, store: RedisCheckpointStore, retries: int) -> None:
        super().__init__(NoBackoff(), retries)
        self._store = store

    def __deepcopy__(self, memo: dict[int, Any]) -> _LoadingRetry:
        # redis-py copies the policy into each connection: all of them wait for the one store.
        twin = _LoadingRetry(self._store, self._retries)
        twin._supported_errors = self._supported_errors
        return twin

    def call_with_retry(self, do: Callable[[], _T], fail: Callable[..., Any], *args: Any, **kwargs: Any) -> _T:
        def failed(error: Exception, *more: Any) -> None:
            if not isinstance(error, redis.BusyLoadingError):
                return fail(error, *more)
            try:
                fail(error, *more)  # closes the connection: a pipeline leaves replies unread on it
            except redis.BusyLoadingError:
                pass  # redis-py 5 raises it again, as any error the connection is not set to retry
            raise _Loading from error

        started = None
        try:
            while True:
                try:
                    return super().call_with_retry(do, failed, *args, **kwargs)
                except _Loading as exc:
                    error = exc.__cause__
                if started is None:
                    started = time.monotonic()
                if not self._store._wait_for_loading(started):
                    raise error
        finally:
            if started is not None:
                self._store._done_waiting()


class RedisCheckpointStore(CheckpointStore):
    """Checkpoints in Redis, every key under ``CHECKPOINT_REDIS_PREFIX:``.

    Per checkpoint, ``{prefix}:cp:{id}:`` followed by ``record`` (hash: the record, with its
    counters as fields), ``requests`` (hash: fingerprint to serialized request, pending
    requests only), ``pending`` (sorted set: fingerprints by discovery position), ``start``
    (set: pending start requests), ``processed`` (set) and ``items`` (list of JSON). All of
    them expire together, ``ttl`` seconds after the last batch. ``{prefix}:resumable`` indexes
    the active and failed checkpoints so that resuming never scans the keyspace, and
    ``{prefix}:checkpoints`` all of them (for listing), by when they expire. ``{prefix}:layout``
    (string, kept for ever) is the layout of what is under the prefix.

    A batch is one EVALSHA: Redis runs the script alone, so other clients see all of the
    batch or none of it.

    A Redis loading its dataset (LOADING, after a restart) is waited for, ``loading_timeout``
    seconds at most; then it is unavailable (StoreUnavailable), as one that does not answer.
    """

    name = "redis"

    def __init__(self, url: str, prefix: str = "checkpoint", timeout: float = 5.0) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self._index = f"{prefix}:resumable"
        self._all = f"{prefix}:checkpoints"
        self._layout_key = f"{prefix}:layout"
        self._client: redis.Redis | None = None
        self.loading_timeout = timeout * LOADING_TIMEOUTS
        #: Whether a call waits for a loading Redis, and said so.
        self._loading_logged = False
        self._loading_lock = threading.Lock()

    @classmethod
    def from_checkpoint_settings(cls, settings: CheckpointSettings) -> RedisCheckpointStore:
        return cls(settings.redis_url, settings.redis_prefix, settings.store_timeout)

    def describe(self) -> str:
        return redact_uri(self.url)

    def _layout_advice(self) -> str:
        return f"Set CHECKPOINT_REDIS_PREFIX (now {self.prefix!r}) to another prefix"

    def _connect(self) -> redis.Redis:
        try:
            client = redis.Redis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
            )
        except ValueError:
            # from None: urllib's message may quote part of a mangled password.
            raise ValueError(
                f"CHECKPOINT_REDIS_URL ({self.describe()}) must be a redis:// or rediss:// URL."
            ) from None
        # Without a policy, redis-py retries once when the URL asks it to (retry_on_timeout,
        # retry_on_error), else never: so does this one.
        options = client.connection_pool.connection_kwargs
        retries = 1 if options.get("retry_on_timeout") or options.get("retry_on_error") else 0
        client.set_retry(_LoadingRetry(self, retries))
        try:
            with self._errors():
                client.ping()
        except BaseException:
            client.close()
            raise
        return client

    def _layout_found(self, client: redis.Redis) -> tuple[Any, bool]:
        """The prefix's layout marker (None when it has none) and whether anything is under
        it: the indexes every checkpoint and query document is in, never a scan."""
        pipe = client.pipeline(transaction=False)
        pipe.get(self._layout_key)
        pipe.exists(self._index, self._all, f"{self.prefix}:queries", f"{self.prefix}:sessions")
        marker, indexes = pipe.execute(raise_on_error=False)
        if isinstance(marker, redis.ResponseError):  # not a string
            marker = f"a {client.type(self._layout_key).decode()} key"
        elif isinstance(marker, bytes):
            marker = int(marker) if marker.isdigit() else marker.decode(errors="replace")
        return marker, bool(indexes)

    def check_layout(self) -> None:
        client = self._client or self._connect()
        try:
            with self._errors():
                self._layout_steps(*self._layout_found(client))
        finally:
            if client is not self._client:
                client.close()

    def open(self) -> None:
        if self._client is not None:
            return
        client = self._connect()
        try:
            with self._errors():
                self._settle_layout(*self._layout_found(client), client,
                                    lambda layout: client.set(self._layout_key, layout))
        except BaseException:
            client.close()
            raise
        self._create = client.register_script(_CREATE)
        self._apply = client.register_script(_APPLY)
        self._delete = client.register_script(_DELETE)
        self._claim = client.register_script(_CLAIM)
        self._beat = client.register_script(_BEAT)
        self._next_run = client.register_script(_NEXT_RUN)
        self._save_query_document = client.register_script(_SAVE_QUERY_DOCUMENT)
        self._delete_user_query = client.register_script(_DELETE_USER_QUERY)
        self._client = client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            raise RuntimeError(f"{self.describe()} is not open")
        return self._client

    def _wait_for_loading(self, started: float) -> bool:
        """A call that met LOADING, waiting since *started*: False once it has waited
        ``loading_timeout``; else it waits a little, to try again (True). The first to wait
        says so."""
        left = started + self.loading_timeout - time.monotonic()
        if left <= 0:
            return False
        with self._loading_lock:
            first, self._loading_logged = not self._loading_logged, True
        if first:
            logger.info(
                "Redis at %(store)s is loading its dataset into memory: checkpoint store calls wait "
                "for it, %(timeout)g s at most (%(n)d x CHECKPOINT_STORE_TIMEOUT)",
                {"store": self.describe(), "timeout": self.loading_timeout, "n": LOADING_TIMEOUTS},
            )
        time.sleep(min(_LOADING_POLL, left))
        return True

    def _done_waiting(self) -> None:
        """A call that waited for a loading Redis got through, or gave up: the next to wait
        says so again (a call that gave up ends a wait of ``loading_timeout``)."""
        with self._loading_lock:
            self._loading_logged = False

    @contextmanager
    def _errors(self, checkpoint_id: str | None = None) -> Iterator[None]:
        """redis-py's errors as the store's: unreachable, or a checkpoint that is corrupt."""
        try:
            yield
        except (redis.AuthenticationError, redis.exceptions.AuthenticationWrongNumberOfArgsError) as exc:
            # A ConnectionError to redis-py, but no outage: waiting for it would never end.
            raise CheckpointError(
                f"Redis at {self.describe()} refused the login ({type(exc).__name__}: {exc}); "
                "check the user and password in CHECKPOINT_REDIS_URL."
            ) from exc
        except redis.BusyLoadingError as exc:  # past loading_timeout
            waited = (f" after {self.loading_timeout:g} s ({LOADING_TIMEOUTS} x CHECKPOINT_STORE_TIMEOUT)"
                      if self.loading_timeout else "")
            raise StoreUnavailable(
                f"Redis at {self.describe()} is still loading its dataset into memory{waited}"
            ) from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis at {self.describe()} is unavailable: {exc}") from exc
        except redis.ResponseError as exc:
            if checkpoint_id is None or not str(exc).startswith(("WRONGTYPE", "CORRUPT")):
                raise
            raise CorruptCheckpointError(checkpoint_id, self.describe(), str(exc)) from exc

    def _key(self, checkpoint_id: str, kind: str) -> str:
        return f"{self.prefix}:cp:{checkpoint_id}:{kind}"

    def _keys(self, checkpoint_id: str) -> list[str]:
        """The checkpoint's keys in _KINDS order, then the two indexes: what _APPLY and
        _DELETE take."""
        return [self._key(checkpoint_id, kind) for kind in _KINDS] + [self._index, self._all]

    def _read_record(self, checkpoint_id: str, raw: dict[bytes, bytes]) -> Checkpoint:
        try:
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            state = json.loads(fields.get("state", "null"))
            outputs = json.loads(fields.get("outputs", "[]"))
            # Those of the workers sharing it: each feed tagged with its worker, the spider
            # states merged (a key several workers set keeps one of their values).
            for name in sorted(fields):
                kind, _, writer = name.partition(":")
                if kind == "outputs" and writer:
                    outputs += [{**entry, "worker": writer} for entry in json.loads(fields[name])]
                elif kind == "state" and writer:
                    state = {**(state or {}), **json.loads(fields[name])}
            runs = [json.loads(v) for _, v in sorted(
                (int(k[4:]), v) for k, v in fields.items() if k.startswith("run:"))]
        except ValueError as exc:  # not UTF-8, not JSON, or a run field not numbered
            raise CorruptCheckpointError(checkpoint_id, self.describe(), str(exc)) from exc

        def prefixed(prefix: str) -> dict[str, str]:
            return {k[len(prefix):]: v for k, v in fields.items() if k.startswith(prefix)}

        record: dict[str, Any] = {
            name: fields.get(name)
            for name in ("checkpoint_id", "spider", "site_domain", "job_type", "pipeline_step",
                         "status", "seq", "created_at", "updated_at", "expires_at")
        }
        record["runs"] = runs
        record["pipeline_data"] = {
            "urls_discovered": fields.get("urls_discovered"),
            "urls_processed": fields.get("urls_processed"),
            "current_page": fields.get("current_page"),
            "pagination_state": prefixed("page:"),
            "extraction_results": {"items_scraped": fields.get("items_scraped"), "by_type": prefixed("type:")},
            "state": state,
            "outputs": outputs,
        }
        return Checkpoint.parse(record, checkpoint_id=checkpoint_id, where=self.describe())

    def create(self, checkpoint: Checkpoint) -> None:
        now = utcnow()
        if checkpoint.expires_at is None:
            ttl = 0.0
        else:
            ttl = max((checkpoint.expires_at - now).total_seconds(), 0.001)
        header = {
            "id": checkpoint.checkpoint_id,
            "job": _job(checkpoint.spider, checkpoint.site_domain, checkpoint.job_type),
            "status": checkpoint.status.value,
            "stamp": _stamp(),
            "ttl": _ttl_ms(ttl),
            "expires_ms": _epoch_ms(now + timedelta(seconds=ttl)) if ttl else None,
            "now_ms": _epoch_ms(now),
        }
        args: list[Any] = [json.dumps({k: v for k, v in header.items() if v is not None})]
        for field, value in _record_fields(checkpoint).items():
            args += (field, value)
        keys = [self._key(checkpoint.checkpoint_id, "record"), self._index, self._all]
        with self._errors(checkpoint.checkpoint_id):
            self._create(keys=keys, args=args)

    def get(self, checkpoint_id: str) -> Checkpoint | None:
        with self._errors(checkpoint_id):
            raw = self.client.hgetall(self._key(checkpoint_id, "record"))
        return self._read_record(checkpoint_id, raw) if raw else None

    def find_resumable(self, spider: str, site_domain: str, job_type: str) -> Checkpoint | None:
        job = _job(spider, site_domain, job_type).encode()
        with self._errors():
            members = self.client.zrevrangebylex(self._index, b"(" + job + b"!", b"[" + job + b" ")
        for member in members:
            checkpoint_id = member[len(job) + 18:].decode()  # after ' <16-digit stamp> '
            checkpoint = self.get(checkpoint_id)
            if checkpoint is None:  # expired: its record went, its index entry stayed
                with self._errors():
                    self.client.zrem(self._index, member)
            elif checkpoint.resumable:
                return checkpoint
        return None

    def apply(self, checkpoint_id: str, batch: Batch, ttl: float) -> None:
        now = utcnow()
        expires_at = expiry(now, ttl)
        header = {
            "id": checkpoint_id,
            "seq": batch.seq,
            "ttl": _ttl_ms(ttl),
            "stamp": _stamp(),
            "updated_at": now.isoformat(),
            "expires_at": expires_at.isoformat() if expires_at else None,
            "expires_ms": _epoch_ms(expires_at),
            "status": batch.status.value if batch.status else None,
            "pipeline_step": batch.pipeline_step,
            "current_page": batch.current_page,
            "state": None if batch.state is None else json.dumps(batch.state, default=str),
            "outputs": None if batch.outputs is None else json.dumps(batch.outputs),
            "writer": batch.writer,
            "took_over": batch.took_over or None,
            "run": None if batch.run is None else batch.run.model_dump_json(),
            "run_number": None if batch.run is None else batch.run.number,
            "run_forgotten": None if batch.run is None or batch.run.number <= RUN_HISTORY
            else batch.run.number - RUN_HISTORY,
            "item_counts": batch.item_counts,
            "pagination": batch.pagination,
            "discovered": len(batch.discovered),
            "processed": len(batch.processed),
            "items": len(batch.items),
        }
        # None becomes a missing key, nil in Lua (cjson would make it a truthy cjson.null).
        args: list[Any] = [json.dumps({k: v for k, v in header.items() if v is not None})]
        for request in batch.discovered:
            args += (request.fingerprint, request.data, int(request.start))
        args += batch.processed
        args += (json.dumps([item_type, item], default=str) for item_type, item in batch.items)
        with self._errors(checkpoint_id):
            applied = self._apply(keys=self._keys(checkpoint_id), args=args)
        if applied < 0:
            raise KeyError(f"checkpoint {checkpoint_id} is not in {self.describe()}")

    # Workers sharing a checkpoint (scrapy-redis)

    #: It can be shared by several workers (claim, beat, next_run, workers).
    shared = True

    def _pointer(self, spider: str, site_domain: str, job_type: str) -> str:
        return f"{self.prefix}:crawl:{_job(spider, site_domain, job_type)}"

    def claim(self, spider: str, site_domain: str, job_type: str, new_id: str, take: str | None,
              live: float) -> tuple[str, str]:
        """The checkpoint this worker of the job writes to: the one live workers write to
        ('joined'), else *take* ('taken'), else *new_id* ('created'); live workers renew the
        claim within *live* seconds (:meth:`beat`)."""
        with self._errors():
            found, how = self._claim(
                keys=[self._pointer(spider, site_domain, job_type)],
                args=[f"{self.prefix}:cp:", new_id, take or "", _ttl_ms(live)],
            )
        return found.decode(), how.decode()

    def beat(self, checkpoint: Checkpoint, worker: str, info: dict[str, Any], live: float, ttl: float) -> bool:
        """*worker* of *checkpoint* is alive (*info*: what ``scrapy checkpoint show`` lists);
        False when another checkpoint of the job has taken the claim."""
        pointer = self._pointer(checkpoint.spider, checkpoint.site_domain, checkpoint.job_type)
        with self._errors(checkpoint.checkpoint_id):
            return bool(self._beat(
                keys=[pointer, self._key(checkpoint.checkpoint_id, "workers")],
                args=[checkpoint.checkpoint_id, worker, json.dumps(info), _ttl_ms(live), _ttl_ms(ttl)],
            ))

    def next_run(self, checkpoint_id: str) -> int:
        with self._errors(checkpoint_id):
            return int(self._next_run(keys=[self._key(checkpoint_id, "record")]))

    def workers(self, checkpoint_id: str) -> dict[str, dict[str, Any]]:
        """The workers that wrote to the checkpoint, each with its last info and ``age``:
        seconds since it was last seen, on the Redis server's clock."""
        with self._errors(checkpoint_id):
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(self._key(checkpoint_id, "workers"))
            pipe.time()
            raw, (seconds, micros) = pipe.execute()
        now_ms = seconds * 1000 + micros // 1000
        found = {}
        for worker, value in raw.items():
            info = json.loads(value)
            info["age"] = max(now_ms - info.get("seen_ms", 0), 0) / 1000
            found[worker.decode()] = info
        return found

    def processed_fingerprints(self, checkpoint_id: str) -> Iterator[bytes]:
        yield from self._scan(checkpoint_id, "processed")

    def pending_start_fingerprints(self, checkpoint_id: str) -> Iterator[bytes]:
        yield from self._scan(checkpoint_id, "start")

    def _scan(self, checkpoint_id: str, kind: str) -> Iterator[bytes]:
        with self._errors(checkpoint_id):
            yield from self.client.sscan_iter(self._key(checkpoint_id, kind), count=_SCAN_COUNT)

    def pending_requests(
        self, checkpoint_id: str, after: Any, limit: int
    ) -> tuple[list[bytes], Any]:
        low = "-inf" if after is None else f"({after}"
        with self._errors(checkpoint_id):
            page = self.client.zrangebyscore(
                self._key(checkpoint_id, "pending"), low, "+inf", start=0, num=limit, withscores=True
            )
            requests = self.client.hmget(
                self._key(checkpoint_id, "requests"), [fp for fp, _ in page]
            ) if page else []
        # A request processed between the two calls has no record any more.
        return [r for r in requests if r is not None], (int(page[-1][1]) if page else after)

    def items(self, checkpoint_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        key = self._key(checkpoint_id, "items")
        for start in itertools.count(0, _PAGE):
            with self._errors(checkpoint_id):
                chunk = self.client.lrange(key, start, start + _PAGE - 1)
            for raw in chunk:
                item_type, item = json.loads(raw)
                yield item_type, item
            if len(chunk) < _PAGE:
                return

    def list_checkpoints(
        self,
        spider: str | None = None,
        site_domain: str | None = None,
        job_type: str | None = None,
        status: StatusFilter = None,
    ) -> Iterator[Checkpoint]:
        wanted = statuses(status)
        fixed = {"spider": spider, "site_domain": site_domain, "job_type": job_type}
        with self._errors():
            # Entries of expired checkpoints stay until the next create() removes them.
            ids = [i.decode() for i in self.client.zrangebyscore(self._all, f"({_epoch_ms(utcnow())}", "+inf")]
        # First the few fields the filters need, then the matching records whole.
        heads = ("status", *fixed)
        matched = []
        for checkpoint_id, row in zip(ids, self._pipelined(ids, lambda pipe, key: pipe.hmget(key, heads))):
            if isinstance(row, redis.ResponseError):
                matched.append(checkpoint_id)  # not a hash: read, and reported, below
                continue
            values = [None if v is None else v.decode(errors="replace") for v in row]
            if values[0] is None:
                continue  # expired meanwhile
            if (wanted is None or values[0] in wanted) and all(
                want is None or value == want for want, value in zip(fixed.values(), values[1:])
            ):
                matched.append(checkpoint_id)
        found = []
        for checkpoint_id, raw in zip(matched, self._pipelined(matched, lambda pipe, key: pipe.hgetall(key))):
            try:
                if isinstance(raw, redis.ResponseError):
                    raise CorruptCheckpointError(checkpoint_id, self.describe(), str(raw))
                if raw:
                    found.append(self._read_record(checkpoint_id, raw))
            except CorruptCheckpointError as exc:
                logger.warning("Left out of the list: %(error)s", {"error": exc})
        found.sort(key=lambda checkpoint: checkpoint.updated_at, reverse=True)
        yield from found

    def _pipelined(self, ids: list[str], command: Callable[[Any, str], Any]) -> Iterator[Any]:
        """*command* on the record of each checkpoint, _PAGE per round trip; a reply that is an
        error comes back as the exception."""
        for start in range(0, len(ids), _PAGE):
            with self._errors():
                pipe = self.client.pipeline(transaction=False)
                for checkpoint_id in ids[start:start + _PAGE]:
                    command(pipe, self._key(checkpoint_id, "record"))
                yield from pipe.execute(raise_on_error=False)

    def delete(self, checkpoint_id: str) -> bool:
        with self._errors():
            return self._delete(keys=self._keys(checkpoint_id), args=[checkpoint_id]) > 0

    def stored_bytes(self, checkpoint_id: str) -> int | None:
        """What MEMORY USAGE estimates for the checkpoint's keys (it samples large ones)."""
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            for kind in _KINDS:
                pipe.memory_usage(self._key(checkpoint_id, kind))
            try:
                sizes = pipe.execute()
            except redis.ResponseError:  # MEMORY disabled, as some hosted Redis do
                return None
        # None for a key that does not exist: the record, or a set that is empty now.
        return sum(size or 0 for size in sizes) if sizes[0] is not None else None

    # -- user queries and query sessions ---------------------------------------------------
    #
    # ``{prefix}:query:{id}`` and ``{prefix}:session:{id}`` (JSON); ``{prefix}:queries`` and
    # ``{prefix}:sessions`` index them all by created_at, ``{prefix}:user-queries:{user id}``
    # a user's queries, ``{prefix}:query-sessions:{query id}`` a query's sessions;
    # ``{prefix}:queries:expiry`` and ``{prefix}:sessions:expiry`` by when they expire.

    def _query_key(self, query_id: str) -> str:
        return f"{self.prefix}:query:{query_id}"

    def _session_key(self, session_id: str) -> str:
        return f"{self.prefix}:session:{session_id}"

    def _save_query_record(self, record: UserQuery | QuerySession, ttl: float) -> None:
        if isinstance(record, UserQuery):
            document_id, kind, plural, owner, owner_id = record.query_id, "query", "queries", "user", record.user_id
        else:
            document_id, kind, plural, owner, owner_id = (
                record.session_id, "session", "sessions", "query", record.query_id)
        owner_index = f"{self.prefix}:{owner}-{plural}:"  # + the owner's id: a user's queries, a query's sessions
        keys = [f"{self.prefix}:{kind}:{document_id}", f"{self.prefix}:{plural}", f"{self.prefix}:{plural}:expiry"]
        if owner_id is not None:
            keys.append(owner_index + owner_id)
        with self._errors():
            self._save_query_document(keys=keys, args=[
                record.model_dump_json(), document_id, _epoch_ms(record.created_at),
                _epoch_ms(record.expires_at) or "+inf", _ttl_ms(ttl), _epoch_ms(utcnow()),
                f"{owner}_id", owner_index, "",
            ])

    def get_user_query(self, query_id: str) -> UserQuery | None:
        with self._errors():
            raw = self.client.get(self._query_key(query_id))
        return None if raw is None else UserQuery.model_validate_json(raw)

    def get_query_session(self, session_id: str) -> QuerySession | None:
        with self._errors():
            raw = self.client.get(self._session_key(session_id))
        return None if raw is None else QuerySession.model_validate_json(raw)

    def list_user_queries(self, user_id: str | None = None, limit: int | None = None) -> Iterator[UserQuery]:
        if user_id is None:
            return iter(self._indexed(UserQuery, f"{self.prefix}:queries", self._query_key, limit))
        return iter(self._indexed(UserQuery, f"{self.prefix}:user-queries:{user_id}", self._query_key, limit,
                                  lambda query: query.user_id == user_id))

    def list_query_sessions(self, query_id: str | None = None) -> Iterator[QuerySession]:
        if query_id is None:
            return iter(self._indexed(QuerySession, f"{self.prefix}:sessions", self._session_key))
        return iter(self._indexed(QuerySession, f"{self.prefix}:query-sessions:{query_id}", self._session_key,
                                  None, lambda session: session.query_id == query_id))

    def _indexed(self, model: type[_Q], index: str, key: Callable[[str], str], limit: int | None = None,
                 wanted: Callable[[_Q], bool] | None = None) -> list[_Q]:
        """The documents of *index* (that are *wanted*), newest first, *limit* at most, a page
        per round trip. Entries whose document expired go from the index as they are met."""
        found: list[_Q] = []
        start = 0
        while limit is None or len(found) < limit:
            with self._errors():
                ids = [i.decode() for i in self.client.zrevrange(index, start, start + _PAGE - 1)]
                raws = self.client.mget([key(i) for i in ids]) if ids else []
            gone = [i for i, raw in zip(ids, raws) if raw is None]
            if gone:
                with self._errors():
                    self.client.zrem(index, *gone)
            for document_id, raw in zip(ids, raws):
                if raw is None:
                    continue
                try:
                    document = model.model_validate_json(raw)
                except ValidationError as exc:
                    logger.warning("Left out of the list: %(kind)s %(id)s in %(where)s is unreadable: %(error)s",
                                   {"kind": model.__name__, "id": document_id, "where": self.describe(), "error": exc})
                    continue
                if wanted is None or wanted(document):
                    found.append(document)
            if len(ids) < _PAGE:
                break
            start += _PAGE - len(gone)  # the entries removed moved the later ones up
        # Scores are milliseconds: the documents of one sort by their full created_at.
        found.sort(key=lambda document: document.created_at, reverse=True)
        return found if limit is None else found[:max(limit, 0)]

    def delete_user_query(self, query_id: str) -> bool:
        p = self.prefix
        with self._errors():
            return self._delete_user_query(
                keys=[self._query_key(query_id), f"{p}:query-sessions:{query_id}", f"{p}:queries",
                      f"{p}:queries:expiry", f"{p}:sessions", f"{p}:sessions:expiry"],
                args=[query_id, f"{p}:user-queries:", "", f"{p}:session:", ""],
            ) > 0
