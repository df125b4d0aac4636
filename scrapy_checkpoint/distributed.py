"""scrapy-redis workers that lose nothing when one dies: its queues lease what they hand out.

scrapy-redis removes a request from the shared queue when a worker pops it, so a worker that
is killed loses every request it had popped and not finished. The queues here pop and lease
in one Lua script: the request moves from the queue into a lease with a deadline, the worker
renews its leases while it lives (a heartbeat), and acknowledges each one once the request
is processed and recorded in its checkpoint. A lease past its deadline (its worker died, or
is cut off) goes back to the queue, where another worker pops it.

The add-on puts these queues in place of scrapy-redis's own (``SCHEDULER_QUEUE_CLASS``)
when ``SCHEDULER`` is scrapy-redis's; nothing else changes in how scrapy-redis is set up.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import uuid
from typing import TYPE_CHECKING, Any

from scrapy.utils.asyncio import create_looping_call, run_in_thread
from scrapy.utils.defer import deferred_from_coro

try:
    import redis
    from scrapy_redis import queue as redis_queues
    from scrapy_redis.dupefilter import RFPDupeFilter
except ImportError as exc:
    raise ImportError("Leased scrapy-redis queues need scrapy-redis: pip install scrapy-redis") from exc

from .extension import LEASE_META, CheckpointExtension
from .models import utcnow

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from scrapy import Request, Spider

    from .models import Checkpoint
    from .stores import CheckpointStore

logger = logging.getLogger(__name__)

#: Expired leases a pop returns to the queue at most, so that one pop stays short.
RECLAIM_PER_POP = 100
#: Pending requests read from the checkpoint at a time by CheckpointWorker.requeue_lost.
REQUEUE_PAGE = 1000
#: What Redis being down (or restarting) raises: waited out, never a lost request.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)

# Shared: now in ms from the server's clock (every worker compares deadlines on one clock),
# and the return of expired leases to the queue.
_LUA_HELPERS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function push_back(kind, queue, data, score)
  if kind == 'priority' then
    redis.call('ZADD', queue, score or 0, data)
  elseif kind == 'fifo' then
    redis.call('RPUSH', queue, data)  -- the end RPOP takes next
  else
    redis.call('LPUSH', queue, data)  -- the end LPOP takes next
  end
end

local function reclaim(kind, queue, deadlines, leased, scores, now, limit)
  local expired = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, limit)
  for _, token in ipairs(expired) do
    local data = redis.call('HGET', leased, token)
    if data then push_back(kind, queue, data, redis.call('HGET', scores, token)) end
    redis.call('ZREM', deadlines, token)
    redis.call('HDEL', leased, token)
    redis.call('HDEL', scores, token)
  end
  return #expired
end
"""

# KEYS: queue, deadlines (zset token -> deadline ms), leased (hash token -> request),
# scores (hash token -> priority score). ARGV: kind, worker id, lease ms, reclaim limit, the
# worker's number for the lease (its own count: one kept in Redis would start again after
# Redis restarted empty, and a new lease would take the token of one the worker still holds).
# Returns {reclaimed, token, request} or {reclaimed} when the queue is empty.
_POP = _LUA_HELPERS + """
local queue, deadlines, leased, scores = unpack(KEYS)
local kind, worker, lease, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local reclaimed = reclaim(kind, queue, deadlines, leased, scores, now, limit)
local data, score
if kind == 'priority' then
  local first = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
  if #first == 0 then return {reclaimed} end
  data, score = first[1], first[2]
  redis.call('ZREM', queue, data)
elseif kind == 'fifo' then
  data = redis.call('RPOP', queue)
else
  data = redis.call('LPOP', queue)
end
if not data then return {reclaimed} end
local token = worker .. '/' .. ARGV[5]
redis.call('ZADD', deadlines, now + lease, token)
redis.call('HSET', leased, token, data)
if score then redis.call('HSET', scores, token, score) end
return {reclaimed, token, data}
"""

# KEYS: queue, seen (the dupefilter's set). ARGV: kind, request, priority score, fingerprint
# ('' for a request not filtered). Marks the request seen and queues it in one step, so that
# no kill can leave it seen and not queued; returns 0 (nothing queued) when it was seen already.
_PUSH = """
local kind, data, score, fingerprint = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if fingerprint ~= '' and redis.call('SADD', KEYS[2], fingerprint) == 0 then return 0 end
if kind == 'priority' then
  redis.call('ZADD', KEYS[1], score, data)
else
  redis.call('LPUSH', KEYS[1], data)  -- as scrapy-redis's FIFO and LIFO queues push
end
return 1
"""

# KEYS: deadlines, leased, scores. ARGV: tokens. Returns the tokens that were no longer
# leased (expired and handed to another worker): their work is not this worker's to record.
_ACK = """
local lost = {}
for _, token in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[1], token) == 1 then
    redis.call('HDEL', KEYS[2], token)
    redis.call('HDEL', KEYS[3], token)
  else
    table.insert(lost, token)
  end
end
return lost
"""

# KEYS: deadlines. ARGV: lease ms, then tokens. Pushes back the deadline of each token still
# leased (XX: one that expired is not leased again); returns those that were not.
_RENEW = _LUA_HELPERS + """
local deadline = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""


def worker_id() -> str:
    """This process, among the workers: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LeaseMixin:
    """What makes a scrapy-redis queue lease what it pops. Its keys sit beside the queue's
    own: ``<queue key>:lease:deadlines``, ``:lease:requests``, ``:lease:scores``.
    """

    #: How the queue pops: 'priority' (sorted set), 'fifo' (RPOP) or 'lifo' (LPOP).
    kind: str
    server: Any
    key: str
    spider: Spider

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.worker = worker_id()
        self._numbers = itertools.count(1)
        self.lease_keys = [f"{self.key}:lease:{name}" for name in ("deadlines", "requests", "scores")]
        self._push = self.server.register_script(_PUSH)
        self._pop = self.server.register_script(_POP)
        self._ack = self.server.register_script(_ACK)
        self._renew = self.server.register_script(_RENEW)
        self._lock = threading.Lock()
        #: Tokens this worker holds (popped, not acknowledged).
        self.held: set[str] = set()
        self.lease_ms = 60_000
        #: Told of lease events (granted, reclaimed, lost) with their count, and of a heartbeat
        #: that failed (the next one tries again); set by the extension.
        self.counted: Callable[[str, int], None] = lambda event, count: None
        self.renew_failed: Callable[[Exception], None] = lambda exc: None
        #: Told when Redis is unreachable to a push or a pop (set by the extension).
        self.unreachable: Callable[[Exception], None] = lambda exc: None
        self._heartbeat: _Heartbeat | None = None
        #: Requests a callback yielded while Redis was unreachable, oldest first: pushed by
        #: push_pending() before the lease of the page that yielded them is released.
        self.unpushed: list[Request] = []
        #: The scheduler's dupefilter once it opens, if it leaves the mark of a request seen
        #: to this queue's push (:class:`LeasedRFPDupeFilter`).
        self.dupefilter: LeasedRFPDupeFilter | None = None
        extension = self.spider.crawler.get_extension(CheckpointExtension)
        #: Leases are only taken when a checkpoint acknowledges them: without one (checkpoints
        #: off, a spider not opted in) the queue is scrapy-redis's own.
        self.leasing = extension is not None and not extension.misconfigured
        if self.leasing:
            extension.use_leases(self)
            if extension.store.shared:
                extension.worker = CheckpointWorker(extension.store, self)

    def push(self, request: Request) -> None:
        if self.dupefilter is None:
            return super().push(request)  # type: ignore[misc]
        with self._lock:
            if self.unpushed:  # after those waiting, in order
                self.unpushed.append(request)
                return None
        try:
            self._push_one(request)
        except UNREACHABLE as exc:
            # Scrapy would drop the request: kept, and pushed once Redis is back.
            with self._lock:
                self.unpushed.append(request)
            self.unreachable(exc)
        return None

    def _push_one(self, request: Request) -> bool:
        """Mark *request* seen and queue it, unless it was seen already; whether it was queued."""
        assert self.dupefilter is not None
        fingerprint = "" if request.dont_filter else self.dupefilter.fingerprint_of(request)
        queued = self._push(
            keys=[self.key, self.dupefilter.key],
            args=[self.kind, self._encode_request(request), -request.priority, fingerprint],  # type: ignore[attr-defined]
        )
        if not queued:
            # Another worker queued it since the dupefilter looked (the scheduler has counted
            # it as queued already).
            self.dupefilter.log(request, self.spider)
        return bool(queued)

    def push_pending(self) -> None:
        """Push the requests held back while Redis was unreachable, in order; raises while
        it still is. Blocking: call it from a worker thread."""
        while True:
            with self._lock:
                if not self.unpushed:
                    return
                request = self.unpushed[0]
            self._push_one(request)
            with self._lock:
                self.unpushed.pop(0)

    def __len__(self) -> int:
        if not self.leasing:
            return super().__len__()  # type: ignore[misc]
        try:
            return super().__len__()  # type: ignore[misc]
        except UNREACHABLE as exc:
            self.unreachable(exc)
            return 0  # the idle check keeps the worker open meanwhile

    def pop(self, timeout: int = 0) -> Request | None:
        if not self.leasing:
            return super().pop(timeout)  # type: ignore[misc]
        # Never blocks: a blocking pop could not lease in the same script.
        try:
            reclaimed, *leased = self._pop(
                keys=[self.key, *self.lease_keys],
                args=[self.kind, self.worker, self.lease_ms, RECLAIM_PER_POP, next(self._numbers)],
            )
        except UNREACHABLE as exc:
            self.unreachable(exc)
            return None  # the idle check keeps the worker open meanwhile
        if reclaimed:
            self.counted("reclaimed", reclaimed)
        if not leased:
            return None
        token, data = _text(leased[0]), leased[1]
        request = self._decode_request(data)  # type: ignore[attr-defined]
        request.meta[LEASE_META] = token
        with self._lock:
            self.held.add(token)
        self.counted("granted", 1)
        return request

    def ack(self, tokens: Iterable[str]) -> list[str]:
        """Release these leases, their work done and saved; return those lost meanwhile
        (expired, and back in the queue). Blocking: call it from a worker thread."""
        tokens = list(tokens)
        if not tokens:
            return []
        # Not held from now on: a heartbeat running meanwhile must not take a lease released
        # here for one lost.
        with self._lock:
            self.held.difference_update(tokens)
        try:
            return [_text(t) for t in self._ack(keys=self.lease_keys, args=tokens)]
        except BaseException:
            with self._lock:
                self.held.update(tokens)  # still leased: renewed until the retried release
            raise

    def renew(self) -> list[str]:
        """Push back the deadline of every lease this worker holds; return those it lost
        (they expired first). Blocking: call it from a worker thread."""
        with self._lock:
            tokens = list(self.held)
        if not tokens:
            return []
        lost = [_text(t) for t in self._renew(keys=self.lease_keys[:1], args=[self.lease_ms, *tokens])]
        with self._lock:
            lost = [t for t in lost if t in self.held]  # not those released meanwhile
            self.held.difference_update(lost)
        return lost

    def confirm(self, tokens: list[str]) -> list[str]:
        """Push back the deadline of these leases, whose work is about to be recorded;
        return those this worker lost (expired first): their work is another worker's now.
        Blocking: call it from a worker thread."""
        lost = [_text(t) for t in self._renew(keys=self.lease_keys[:1], args=[self.lease_ms, *tokens])]
        with self._lock:
            self.held.difference_update(lost)
        return lost

    def start_heartbeat(self, interval: float) -> None:
        """Renew this worker's leases every *interval* seconds, in a thread, until
        :meth:`stop_heartbeat`."""
        self._heartbeat = _Heartbeat(self.renew, self._renewed, lambda exc: self.renew_failed(exc))
        self._heartbeat.start(interval, now=False)

    def stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def _renewed(self, lost: list[str]) -> None:
        if lost:
            self.counted("lost", len(lost))

    def outstanding(self) -> int:
        """Leases of every worker, expired ones included: the next pop returns those to the
        queue, so a crawl is not over while there are any."""
        return int(self.server.zcard(self.lease_keys[0]))

    def clear(self) -> None:
        super().clear()  # type: ignore[misc]
        self.server.delete(*self.lease_keys)


class _Heartbeat:
    """Calls the blocking *call* every few seconds in a thread, never two at once (a slow one
    makes the next wait), and hands its result to *done* on the reactor; *failed* is told of
    an exception, and the next call tries again."""

    def __init__(self, call: Callable[[], Any], done: Callable[[Any], None],
                 failed: Callable[[Exception], None]) -> None:
        self.call, self.done, self.failed = call, done, failed
        self._loop: Any = None
        self._running: Any = None

    def start(self, interval: float, now: bool) -> None:
        self._loop = create_looping_call(self._soon)
        self._loop.start(interval, now=now)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def _soon(self) -> None:
        if self._running is None:
            self._running = deferred_from_coro(self._off_the_reactor())

    async def _off_the_reactor(self) -> None:
        try:
            result = await run_in_thread(self.call)
        except Exception as exc:
            self.failed(exc)
        else:
            self.done(result)
        finally:
            self._running = None


class CheckpointWorker:
    """This process among the workers of a crawl that share one checkpoint (a store that can
    share one: Redis). Every third of ``CHECKPOINT_LEASE_TIMEOUT`` it tells the store it is
    alive, with the leases it holds, which keeps the job's claim on the checkpoint (workers
    that start meanwhile join it) and is what ``scrapy checkpoint show`` lists.
    """

    def __init__(self, store: CheckpointStore, queue: LeaseMixin) -> None:
        self.store: Any = store
        self.queue = queue
        #: The queue's worker id: its leases' tokens start with it.
        self.name = queue.worker
        self.started_at = utcnow().isoformat()
        self.checkpoint: Checkpoint | None = None
        self.run = 0
        #: Told of a heartbeat that failed (the next one tries again); set by the extension.
        self.beat_failed: Callable[[Exception], None] = lambda exc: None
        self._heartbeat: _Heartbeat | None = None

    def info(self, status: str) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "run": self.run, "started_at": self.started_at,
                "leases": len(self.queue.held), "status": status}

    def beat(self, live: float, ttl: float, status: str = "running") -> bool:
        """Blocking: call it from a worker thread."""
        assert self.checkpoint is not None
        return self.store.beat(self.checkpoint, self.name, self.info(status), live, ttl)

    def start(self, checkpoint: Checkpoint, run: int, live: float, ttl: float) -> None:
        """Say this worker is alive every third of *live* seconds, from now."""
        self.checkpoint, self.run = checkpoint, run
        self._heartbeat = _Heartbeat(lambda: self.beat(live, ttl), lambda _: None,
                                     lambda exc: self.beat_failed(exc))
        self._heartbeat.start(live / 3, now=True)

    def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def requeue_lost(self, rebuild: Callable[[bytes], Request | None]) -> tuple[int, int]:
        """Queue the requests the checkpoint holds pending that scrapy-redis's dupefilter has
        not seen: the queue lost them (Redis restarted empty), or they never reached it (the
        crawl's queue was elsewhere). Call it once the queue is empty and no lease is out:
        then every discovery and processed mark is saved. Returns how many were queued, and
        how many were left out as seen. Blocking: call it from a worker thread."""
        assert self.checkpoint is not None and self.queue.dupefilter is not None
        queued = seen = 0
        after = None
        while True:
            page, after = self.store.pending_requests(self.checkpoint.checkpoint_id, after, REQUEUE_PAGE)
            if not page:
                return queued, seen
            for data in page:
                request = rebuild(data)
                if request is None:
                    continue
                if self.queue._push_one(request):
                    queued += 1
                else:
                    seen += 1


class LeasedRFPDupeFilter(RFPDupeFilter):
    """scrapy-redis's RFPDupeFilter beside a leasing queue: it only looks whether a request
    was seen, and the queue marks it seen in the script that queues it. scrapy-redis marks it
    first and queues it next: a worker killed between the two (or whose page is done again
    after a kill, its links seen already) would leave requests seen and never queued.
    """

    #: The leasing queue that marks what this filter lets through; without one (checkpoints
    #: off) this is scrapy-redis's own filter.
    queue: LeaseMixin | None = None
    #: The request last looked at and its fingerprint: the scheduler pushes it next, and the
    #: push reuses the fingerprint (canonicalizing a URL costs more than the lookup).
    _looked: tuple[Request, str] | None = None

    @classmethod
    def from_spider(cls, spider: Spider) -> LeasedRFPDupeFilter:
        dupefilter = super().from_spider(spider)
        # The scheduler opens its queue before its dupefilter.
        extension = spider.crawler.get_extension(CheckpointExtension)
        queue = extension.leases if extension is not None else None
        if queue is not None:
            dupefilter.queue, queue.dupefilter = queue, dupefilter
        return dupefilter

    def request_seen(self, request: Request) -> bool:
        if self.queue is None:
            return super().request_seen(request)
        fingerprint = self.request_fingerprint(request)
        self._looked = (request, fingerprint)
        try:
            return bool(self.server.sismember(self.key, fingerprint))
        except UNREACHABLE:
            return False  # the push decides, once Redis is back

    def fingerprint_of(self, request: Request) -> str:
        looked = self._looked
        if looked is not None and looked[0] is request:
            return looked[1]
        return self.request_fingerprint(request)


class LeasedPriorityQueue(LeaseMixin, redis_queues.PriorityQueue):
    """scrapy-redis's PriorityQueue, leasing what it pops."""

    kind = "priority"


class LeasedFifoQueue(LeaseMixin, redis_queues.FifoQueue):
    """scrapy-redis's FifoQueue, leasing what it pops."""

    kind = "fifo"


class LeasedLifoQueue(LeaseMixin, redis_queues.LifoQueue):
    """scrapy-redis's LifoQueue, leasing what it pops."""

    kind = "lifo"


#: scrapy-redis's queue classes (and their old names) and their leased variants.
LEASED_QUEUES = {
    "scrapy_redis.queue.PriorityQueue": LeasedPriorityQueue,
    "scrapy_redis.queue.SpiderPriorityQueue": LeasedPriorityQueue,
    "scrapy_redis.queue.FifoQueue": LeasedFifoQueue,
    "scrapy_redis.queue.SpiderQueue": LeasedFifoQueue,
    "scrapy_redis.queue.LifoQueue": LeasedLifoQueue,
    "scrapy_redis.queue.SpiderStack": LeasedLifoQueue,
}
#: scrapy-redis's dupefilter, which marks a request seen apart from queueing it.
REDIS_DUPEFILTER = "scrapy_redis.dupefilter.RFPDupeFilter"
