"""Per-host politeness: how many requests may be in flight to one host, and when a host is paused.

With ``settings.redis_url`` set, both hold across every process and machine sharing that Redis:

- ``<prefix>:slots:<host>`` is a sorted set of leases (member = lease id, score = expiry in Redis
  server time). Acquiring drops expired leases and adds one if fewer than the limit are held, in
  one Lua script, so a worker killed mid-request frees its slot when the lease expires.
- ``<prefix>:pause:<host>`` exists while the host is paused (a 429/503 with Retry-After); its TTL
  is the pause. Every acquire checks it first, so every worker waits it out before sending.

To keep Redis off the per-request path, a process reuses a granted lease for its next requests to
the same host for up to a second (see :class:`RedisHostLimits`); the limit still holds globally.

A host whose robots.txt sets a Crawl-delay of ``d`` seconds (``acquire(..., crawl_delay=d)``) gets
one request in flight at a time, and releasing it pauses the host for ``d`` seconds (the same pause
as above, so every worker waits it out): consecutive requests start at least ``d`` seconds apart.
Such a lease is never kept for reuse, which would skip the pause.

Without Redis, :class:`LocalHostLimits` applies the same rules inside this process only.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from include.harvest.settings import FetchSettings

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "HostLimits",
    "Lease",
    "LocalHostLimits",
    "RedisHostLimits",
    "host_limits_for",
    "redis_client",
    "slot",
]

DEFAULT_KEY_PREFIX = "harvest"
# Slack on top of the longest attempt before an unreleased lease is considered leaked.
LEASE_MARGIN_SECONDS = 5.0
# After a Redis failure, how long the process relies on its own limits before trying Redis again.
REDIS_RETRY_SECONDS = 30.0

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Lease:
    """One held request slot for ``host``; releasing it pauses the host for ``crawl_delay``, if set."""

    host: str
    token: str
    crawl_delay: float | None = None


class HostLimits(Protocol):
    """What the fetcher needs: slots per host and pauses per host."""

    def acquire(
        self, host: str, *, deadline: float | None = None, crawl_delay: float | None = None
    ) -> Lease | None:
        """Wait for a slot (and for any pause to end); None if ``deadline`` (monotonic) came first.

        With a ``crawl_delay`` (seconds, from the host's robots.txt) the slot is the host's only one,
        and its release pauses the host for that long.
        """
        ...

    def release(self, lease: Lease) -> None: ...

    def has_room(self, host: str) -> bool:
        """A hint, at once and without asking Redis: would a request to ``host`` get a slot now?

        False while this process knows the host is paused, or holds every slot of it, or already has
        a thread waiting for one. The batch uses it to hand a thread another host's URL rather than
        a wait (:mod:`.frontier`); a wrong hint costs a wait, never a slot over the limit.
        """
        ...

    def pause(self, host: str, seconds: float) -> None:
        """Hold every request to ``host`` for ``seconds`` (never shortens a longer pause)."""
        ...

    def paused_for(self, host: str) -> float:
        """Seconds left in the host's pause, 0 when it is not paused."""
        ...

    def flush(self) -> None:
        """Hand back whatever this process keeps for reuse (called at the end of a batch)."""
        ...


@contextmanager
def slot(
    limits: HostLimits, host: str, *, deadline: float | None = None, crawl_delay: float | None = None
) -> Iterator[Lease | None]:
    """Hold a slot for ``host`` for the duration of the block; yields None if the deadline passed."""
    lease = limits.acquire(host, deadline=deadline, crawl_delay=crawl_delay)
    try:
        yield lease
    finally:
        if lease is not None:
            limits.release(lease)


@dataclass(slots=True)
class _LocalHost:
    """A host's slots in use and the threads waiting for one (they wait on ``slot_freed``)."""

    slot_freed: threading.Condition
    in_use: int = 0
    waiting: int = 0
    waiting_for_sole_slot: int = 0  # of ``waiting``: threads with a Crawl-delay (limit 1)


class LocalHostLimits:
    """Slots and pauses for the threads of this process.

    Each host has its own condition and a release wakes one thread waiting for that host. (Waking
    every waiter at every release cost 16% of the throughput with 32 threads on a host limited to
    8, and 30% with 4, against a fast server.)
    """

    def __init__(self, per_host: int) -> None:
        if per_host < 1:
            raise ValueError(f"per-host concurrency must be at least 1, got {per_host}")
        self.per_host = per_host
        self._lock = threading.Lock()
        self._hosts: dict[str, _LocalHost] = {}  # hosts with a slot in use or a thread waiting
        self._paused_until: dict[str, float] = {}

    def acquire(
        self, host: str, *, deadline: float | None = None, crawl_delay: float | None = None
    ) -> Lease | None:
        delay = crawl_delay if crawl_delay and crawl_delay > 0 else None
        limit = 1 if delay else self.per_host
        with self._lock:
            state = self._hosts.get(host)
            if state is None:
                state = self._hosts[host] = _LocalHost(threading.Condition(self._lock))
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    if state.waiting and state.in_use < self.per_host:
                        state.slot_freed.notify()  # a release may have woken this thread: pass it on
                    self._forget_if_idle(host, state)
                    return None
                wait = deadline - now if deadline is not None else None
                pause_left = self._paused_until.get(host, 0.0) - now
                timeout: float | None
                if pause_left > 0:
                    timeout = pause_left if wait is None else min(wait, pause_left)
                elif state.in_use < limit:
                    state.in_use += 1
                    return Lease(host, "", delay)
                else:
                    timeout = wait
                state.waiting += 1
                state.waiting_for_sole_slot += 1 if delay else 0
                try:
                    state.slot_freed.wait(timeout)
                finally:
                    state.waiting -= 1
                    state.waiting_for_sole_slot -= 1 if delay else 0

    def release(self, lease: Lease) -> None:
        with self._lock:
            if lease.crawl_delay:
                self._pause_locked(lease.host, lease.crawl_delay)
            state = self._hosts[lease.host]
            state.in_use -= 1
            if state.waiting_for_sole_slot:
                # A thread with a Crawl-delay cannot use a slot while another is in use: woken alone,
                # it would swallow the wake-up that a thread without one (same host, other robots.txt
                # or none) needs. Crawl-delayed hosts are slow by definition: waking all costs nothing.
                state.slot_freed.notify_all()
            elif state.waiting:
                state.slot_freed.notify()
            else:
                self._forget_if_idle(lease.host, state)

    def has_room(self, host: str) -> bool:
        # Without the lock: a hint may be a moment stale, and every pick of the frontier asks, while
        # every request of every thread takes this lock twice already (single dict reads are atomic).
        if self._paused_until.get(host, 0.0) > time.monotonic():
            return False
        state = self._hosts.get(host)
        return state is None or (not state.waiting and state.in_use < self.per_host)

    def _forget_if_idle(self, host: str, state: _LocalHost) -> None:
        # Called with the lock held: a batch of millions of hosts must not keep one entry each.
        if not state.in_use and not state.waiting:
            del self._hosts[host]

    def pause(self, host: str, seconds: float) -> None:
        with self._lock:
            self._pause_locked(host, seconds)

    def _pause_locked(self, host: str, seconds: float) -> None:
        until = time.monotonic() + seconds
        self._paused_until[host] = max(until, self._paused_until.get(host, 0.0))

    def paused_for(self, host: str) -> float:
        with self._lock:
            return max(0.0, self._paused_until.get(host, 0.0) - time.monotonic())

    def flush(self) -> None:
        pass  # nothing is kept beyond a release


# KEYS: slots zset, pause key. ARGV: limit, lease id, lease ttl (ms).
# Returns 1 when a slot was granted, 0 when all are taken, -ms when the host is paused.
_ACQUIRE_SCRIPT = """
local pause_ms = redis.call('PTTL', KEYS[2])
if pause_ms > 0 then return -pause_ms end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
  return 1
end
return 0
"""

# KEYS: pause key. ARGV: pause (ms). Only ever lengthens the pause.
_PAUSE_SCRIPT = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"""


@dataclass(slots=True)
class _HeldLease:
    """A lease this process holds in Redis, free to be handed to another of its threads."""

    host: str
    token: str
    taken_at: float  # time.monotonic() when Redis granted it
    uses: int = 0


class RedisHostLimits:
    """Slots and pauses shared by every worker using the same Redis (and key prefix).

    A Redis round trip per request would cost more than the request itself on a fast server, so a
    process keeps a slot it was granted and hands it to its next request to the same host, for at
    most ``REUSE_SECONDS`` and ``MAX_REUSES`` requests; then it goes back to Redis, where other
    workers compete for it. Threads beyond the slots this process holds wait for one of them to be
    released here, rather than asking Redis for a slot it cannot grant. Pauses are read from Redis
    at most every ``PAUSE_CHECK_SECONDS`` per host (and at once when this process sets one). The
    limit itself always holds: a reused slot is still one of the ``per_host`` leases in Redis.
    """

    REUSE_SECONDS = 1.0
    MAX_REUSES = 32
    PAUSE_CHECK_SECONDS = 0.25
    SWEEP_SECONDS = 0.2

    def __init__(
        self,
        client: Any,
        *,
        per_host: int,
        lease_seconds: float,
        prefix: str = DEFAULT_KEY_PREFIX,
    ) -> None:
        if per_host < 1:
            raise ValueError(f"per-host concurrency must be at least 1, got {per_host}")
        from redis.exceptions import RedisError  # here: importing redis is slow, and optional

        self._errors: tuple[type[Exception], ...] = (RedisError, OSError)
        self.client = client
        self.per_host = per_host
        # A reused lease must outlive its last use by a whole attempt.
        self.lease_ms = max(1000, int((lease_seconds + self.REUSE_SECONDS) * 1000))
        self.prefix = prefix
        self._acquire = client.register_script(_ACQUIRE_SCRIPT)
        self._pause = client.register_script(_PAUSE_SCRIPT)
        self._lock = threading.Lock()
        self._idle: dict[str, list[_HeldLease]] = {}
        self._in_use: dict[str, _HeldLease] = {}
        self._held: dict[str, int] = {}  # host -> leases held (in use or idle) or being asked for
        self._released: dict[str, threading.Condition] = {}  # host -> threads waiting for one of ours
        self._waiting: dict[str, int] = {}  # host -> threads of this process waiting for a slot
        self._sweeping = False
        self._pause_seen: dict[str, tuple[float, float]] = {}  # host -> (checked at, paused until)
        # If Redis goes away mid-batch, keep fetching politely with this process's own limits.
        self._fallback = LocalHostLimits(per_host)
        self._redis_down_until = 0.0

    def _redis_failed(self, exc: Exception) -> None:
        if time.monotonic() >= self._redis_down_until:
            log.warning(
                "Redis unavailable (%s): per-host limits hold for this process only for the next %.0fs",
                exc,
                REDIS_RETRY_SECONDS,
            )
        # Each failing call costs connect timeouts: stop asking for a while.
        self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS

    def _redis_up(self) -> bool:
        return time.monotonic() >= self._redis_down_until

    def slots_key(self, host: str) -> str:
        return f"{self.prefix}:slots:{host}"

    def pause_key(self, host: str) -> str:
        return f"{self.prefix}:pause:{host}"

    def acquire(
        self, host: str, *, deadline: float | None = None, crawl_delay: float | None = None
    ) -> Lease | None:
        delay = crawl_delay if crawl_delay and crawl_delay > 0 else None
        limit = 1 if delay else self.per_host
        busy_wait = 0.005
        while True:
            if not self._redis_up():
                return self._fallback.acquire(host, deadline=deadline, crawl_delay=delay)
            if delay:
                # A slot kept for reuse counts against the sole slot in Redis, and reusing it would
                # skip the pause: hand any back (another thread may have just released one).
                self._give_back(self._take_idle(host))
            now = time.monotonic()
            with self._lock:
                seen = self._pause_seen.get(host)
                reusable = not delay and bool(self._idle.get(host))
                # Redis cannot grant more than `limit` leases, and this process holds them all.
                holding_all = self._held.get(host, 0) >= limit
            recent = seen is not None and now - seen[0] < self.PAUSE_CHECK_SECONDS
            if recent:
                assert seen is not None
                wait = seen[1] - now
            elif reusable or holding_all:
                # About to skip Redis for this request: look at the pause key first.
                wait = self._pause_left(host, now)
                if not self._redis_up():
                    return self._fallback.acquire(host, deadline=deadline, crawl_delay=delay)
            else:
                wait = 0.0  # the acquire script checks the pause itself
            if wait <= 0:
                lease = self._reuse(host, now) if reusable else None
                if lease is not None:
                    return lease
                if holding_all or not self._claim(host, limit):
                    holding_all = True
                    wait = self.REUSE_SECONDS  # or until one of ours is released, which wakes us
                else:
                    try:
                        answer = self._ask_redis(host, limit, delay)
                    except self._errors as exc:
                        self._redis_failed(exc)
                        return self._fallback.acquire(host, deadline=deadline, crawl_delay=delay)
                    if isinstance(answer, Lease):
                        return answer
                    now = time.monotonic()
                    if answer < 0:
                        wait = -answer / 1000
                        with self._lock:
                            self._pause_seen[host] = (now, now + wait)
                    else:
                        # All slots taken elsewhere: poll with growing, jittered sleeps so waiting
                        # workers do not hammer Redis in lock-step.
                        wait = random.uniform(busy_wait / 2, busy_wait)
                        busy_wait = min(busy_wait * 2, 0.2)
            if deadline is not None and now >= deadline:
                return None
            timeout = wait if deadline is None else max(0.0, min(wait, deadline - now))
            self._wait_for_release(host, timeout, holding_all=holding_all, limit=limit)

    def _ask_redis(self, host: str, limit: int, crawl_delay: float | None) -> Lease | int:
        """Run the acquire script for the slot claimed for ``host`` (see :meth:`_claim`): the lease,
        or the script's refusal (0: all ``limit`` slots are taken; negative: the host's pause, in ms).

        A refused or failed ask gives the claim up; a Redis error is raised.
        """
        token = uuid.uuid4().hex
        try:
            granted = int(
                self._acquire(
                    keys=[self.slots_key(host), self.pause_key(host)],
                    args=[limit, token, self.lease_ms],
                )
            )
        except BaseException:
            self._count_out([host])
            raise
        if granted != 1:
            self._count_out([host])
            return granted
        now = time.monotonic()
        with self._lock:
            self._in_use[token] = _HeldLease(host, token, now, uses=1)
            self._pause_seen[host] = (now, 0.0)
        return Lease(host, token, crawl_delay)

    def _wait_for_release(self, host: str, timeout: float, *, holding_all: bool, limit: int) -> None:
        """Sleep up to ``timeout``, or until another thread of this process releases a slot for
        ``host``: threads beyond the slots this process holds wait here, not polling Redis."""
        with self._lock:
            if self._idle.get(host) or (holding_all and self._held.get(host, 0) < limit):
                return  # released between the look and now
            released = self._released.get(host)
            if released is None:
                released = self._released[host] = threading.Condition(self._lock)
            self._waiting[host] = self._waiting.get(host, 0) + 1
            try:
                released.wait(timeout)
            finally:
                left = self._waiting[host] - 1
                if left:
                    self._waiting[host] = left
                else:
                    del self._waiting[host]

    def has_room(self, host: str) -> bool:
        if not self._redis_up():
            return self._fallback.has_room(host)
        # Without the lock, as in LocalHostLimits.has_room: single dict reads, a hint.
        seen = self._pause_seen.get(host)
        if seen is not None and seen[1] > time.monotonic():
            return False
        if self._waiting.get(host):
            return False
        return bool(self._idle.get(host)) or self._held.get(host, 0) < self.per_host

    def _pause_left(self, host: str, now: float) -> float:
        """Seconds the host is still paused, from a recent look at Redis (or a fresh one)."""
        with self._lock:
            seen = self._pause_seen.get(host)
        if seen is None or now - seen[0] >= self.PAUSE_CHECK_SECONDS:
            try:
                remaining = int(self.client.pttl(self.pause_key(host)))
            except self._errors as exc:
                self._redis_failed(exc)
                return self._fallback.paused_for(host)
            seen = (now, now + remaining / 1000 if remaining > 0 else 0.0)
            with self._lock:
                self._pause_seen[host] = seen
        return seen[1] - now

    def _take_idle(self, host: str) -> list[_HeldLease]:
        """Every slot this process keeps for reuse for ``host``, no longer kept (to give back)."""
        with self._lock:
            return self._idle.pop(host, [])

    def _reuse(self, host: str, now: float) -> Lease | None:
        stale: list[_HeldLease] = []
        lease = None
        with self._lock:
            idle = self._idle.get(host)
            while idle:
                held = idle.pop()
                if now - held.taken_at < self.REUSE_SECONDS and held.uses < self.MAX_REUSES:
                    held.uses += 1
                    self._in_use[held.token] = held
                    lease = Lease(host, held.token)
                    break
                stale.append(held)  # too old: back to Redis, where other workers compete for it
        self._give_back(stale)
        return lease

    def release(self, lease: Lease) -> None:
        if not lease.token:  # a slot of the local fallback
            self._fallback.release(lease)
            return
        if lease.crawl_delay:
            # Paused before the slot is freed in Redis: a worker granted the freed slot would
            # otherwise send its request without waiting the Crawl-delay.
            self.pause(lease.host, lease.crawl_delay)
        now = time.monotonic()
        start_sweeper = False
        with self._lock:
            held = self._in_use.pop(lease.token, None)
            if held is None:
                return  # released twice: nothing left to give back
            keep = (
                not lease.crawl_delay
                and now - held.taken_at < self.REUSE_SECONDS
                and held.uses < self.MAX_REUSES
                and self._pause_seen.get(lease.host, (0.0, 0.0))[1] <= now
            )
            if keep:
                self._idle.setdefault(lease.host, []).append(held)
                start_sweeper = not self._sweeping
                self._sweeping = True
                released = self._released.get(lease.host)
                if released is not None:
                    released.notify()  # a thread waiting for one of ours takes it
        if start_sweeper:
            self._start_sweeper()
        if not keep:
            self._give_back([held])

    def _give_back(self, leases: list[_HeldLease]) -> None:
        """Return ``leases`` to Redis, then count them out of what this process holds.

        In that order: a thread woken because this process holds fewer slots asks Redis for one at
        once, and must find it free there.
        """
        if leases:
            self._release_in_redis(leases)
            self._count_out([held.host for held in leases])

    def _claim(self, host: str, limit: int) -> bool:
        """Count a slot about to be asked for as held, unless this process has them all.

        Redis never grants more than ``limit``: when this process holds (or is asking for) that
        many, its other threads wait for one of those instead of asking Redis in vain.
        """
        with self._lock:
            held = self._held.get(host, 0)
            if held >= limit:
                return False
            self._held[host] = held + 1
            return True

    def _count_out(self, hosts: list[str]) -> None:
        """One slot less held for each of ``hosts`` (given back, or refused by Redis)."""
        with self._lock:
            for host in hosts:
                left = self._held[host] - 1
                if left:
                    self._held[host] = left
                else:
                    del self._held[host]
                released = self._released.get(host)
                if released is not None:
                    released.notify()  # a thread waiting for one of ours may ask Redis now

    def flush(self) -> None:
        """Give every idle slot back to Redis (the end of a batch: other workers may use them)."""
        with self._lock:
            idle = [held for leases in self._idle.values() for held in leases]
            self._idle.clear()
        self._give_back(idle)

    def _start_sweeper(self) -> None:
        # An idle slot must not sit in this process when it has no more requests for the host: a
        # daemon thread hands stale ones back while any exist. Started outside the lock: starting
        # a thread waits for it, and a thread waiting with the lock held makes every other thread
        # queue on the lock, a convoy that then feeds itself (the lock's next owner waits for
        # the GIL while holding it).
        threading.Thread(target=self._sweep, name="harvest-lease-sweeper", daemon=True).start()

    def _sweep(self) -> None:
        while True:
            time.sleep(self.SWEEP_SECONDS)
            now = time.monotonic()
            with self._lock:
                stale: list[_HeldLease] = []
                for host, leases in list(self._idle.items()):
                    fresh = [h for h in leases if now - h.taken_at < self.REUSE_SECONDS]
                    stale += [h for h in leases if now - h.taken_at >= self.REUSE_SECONDS]
                    if fresh:
                        self._idle[host] = fresh
                    else:
                        del self._idle[host]
                done = not self._idle
                if done:
                    self._sweeping = False
            self._give_back(stale)
            if done:
                return

    def _release_in_redis(self, leases: list[_HeldLease]) -> None:
        if not leases or not self._redis_up():
            return  # (leases expire on their own)
        try:
            if len(leases) == 1:
                self.client.zrem(self.slots_key(leases[0].host), leases[0].token)
            else:
                pipe = self.client.pipeline(transaction=False)
                for held in leases:
                    pipe.zrem(self.slots_key(held.host), held.token)
                pipe.execute()
        except self._errors as exc:
            self._redis_failed(exc)

    def pause(self, host: str, seconds: float) -> None:
        if seconds <= 0:
            return
        self._fallback.pause(host, seconds)
        now = time.monotonic()
        with self._lock:
            seen = self._pause_seen.get(host, (now, 0.0))
            self._pause_seen[host] = (now, max(seen[1], now + seconds))
        if not self._redis_up():
            return
        try:
            self._pause(keys=[self.pause_key(host)], args=[max(1, int(seconds * 1000))])
        except self._errors as exc:
            self._redis_failed(exc)

    def paused_for(self, host: str) -> float:
        if not self._redis_up():
            return self._fallback.paused_for(host)
        try:
            remaining = int(self.client.pttl(self.pause_key(host)))
        except self._errors as exc:
            self._redis_failed(exc)
            return self._fallback.paused_for(host)
        return remaining / 1000 if remaining > 0 else 0.0


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def redis_client(url: str) -> Any:
    """One client (and connection pool) per Redis URL per process (also robots.txt's cache)."""
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            import redis  # imported here: the engine works without Redis installed

            client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
            _clients[url] = client
        return client


def host_limits_for(settings: FetchSettings, *, prefix: str = DEFAULT_KEY_PREFIX) -> HostLimits:
    """Redis-coordinated limits when ``settings.redis_url`` is set, else limits for this process."""
    if not settings.redis_url:
        return LocalHostLimits(settings.per_host_concurrency)
    return RedisHostLimits(
        redis_client(settings.redis_url),
        per_host=settings.per_host_concurrency,
        lease_seconds=settings.connect_timeout + settings.total_timeout + LEASE_MARGIN_SECONDS,
        prefix=prefix,
    )
