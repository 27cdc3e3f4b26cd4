"""Per-host politeness: how many requests may be in flight to one host, and when a host is paused.

With ``settings.redis_url`` set, both hold across every process and machine sharing that Redis:

- ``<prefix>:slots:<host>`` is a sorted set of leases (member = lease id, score = expiry in Redis
  server time). Acquiring drops expired leases and adds one if fewer than the limit are held, in
  one Lua script, so a worker killed mid-request frees its slot when the lease expires.
- ``<prefix>:pause:<host>`` exists while the host is paused (a 429/503 with Retry-After); its TTL
  is the pause. Every acquire checks it first, so every worker waits it out before sending.

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
    """One held request slot for ``host``."""

    host: str
    token: str


class HostLimits(Protocol):
    """What the fetcher needs: slots per host and pauses per host."""

    def acquire(self, host: str, *, deadline: float | None = None) -> Lease | None:
        """Wait for a slot (and for any pause to end); None if ``deadline`` (monotonic) came first."""
        ...

    def release(self, lease: Lease) -> None: ...

    def pause(self, host: str, seconds: float) -> None:
        """Hold every request to ``host`` for ``seconds`` (never shortens a longer pause)."""
        ...

    def paused_for(self, host: str) -> float:
        """Seconds left in the host's pause, 0 when it is not paused."""
        ...


@contextmanager
def slot(limits: HostLimits, host: str, *, deadline: float | None = None) -> Iterator[Lease | None]:
    """Hold a slot for ``host`` for the duration of the block; yields None if the deadline passed."""
    lease = limits.acquire(host, deadline=deadline)
    try:
        yield lease
    finally:
        if lease is not None:
            limits.release(lease)


class LocalHostLimits:
    """Slots and pauses for the threads of this process."""

    def __init__(self, per_host: int) -> None:
        if per_host < 1:
            raise ValueError(f"per-host concurrency must be at least 1, got {per_host}")
        self.per_host = per_host
        self._condition = threading.Condition()
        self._in_use: dict[str, int] = {}
        self._paused_until: dict[str, float] = {}

    def acquire(self, host: str, *, deadline: float | None = None) -> Lease | None:
        with self._condition:
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return None
                wait = deadline - now if deadline is not None else None
                pause_left = self._paused_until.get(host, 0.0) - now
                if pause_left > 0:
                    self._condition.wait(pause_left if wait is None else min(wait, pause_left))
                elif self._in_use.get(host, 0) < self.per_host:
                    self._in_use[host] = self._in_use.get(host, 0) + 1
                    return Lease(host, "")
                else:
                    self._condition.wait(wait)

    def release(self, lease: Lease) -> None:
        with self._condition:
            self._in_use[lease.host] -= 1
            if not self._in_use[lease.host]:
                del self._in_use[lease.host]
            self._condition.notify_all()

    def pause(self, host: str, seconds: float) -> None:
        with self._condition:
            until = time.monotonic() + seconds
            self._paused_until[host] = max(until, self._paused_until.get(host, 0.0))

    def paused_for(self, host: str) -> float:
        with self._condition:
            return max(0.0, self._paused_until.get(host, 0.0) - time.monotonic())


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


class RedisHostLimits:
    """Slots and pauses shared by every worker using the same Redis (and key prefix)."""

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
        self.client = client
        self.per_host = per_host
        self.lease_ms = max(1000, int(lease_seconds * 1000))
        self.prefix = prefix
        self._acquire = client.register_script(_ACQUIRE_SCRIPT)
        self._pause = client.register_script(_PAUSE_SCRIPT)
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

    def acquire(self, host: str, *, deadline: float | None = None) -> Lease | None:
        token = uuid.uuid4().hex
        keys = [self.slots_key(host), self.pause_key(host)]
        busy_wait = 0.005
        while True:
            if not self._redis_up():
                return self._fallback.acquire(host, deadline=deadline)
            try:
                granted = int(self._acquire(keys=keys, args=[self.per_host, token, self.lease_ms]))
            except _REDIS_ERRORS as exc:
                self._redis_failed(exc)
                return self._fallback.acquire(host, deadline=deadline)
            if granted == 1:
                return Lease(host, token)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            if granted < 0:
                wait = -granted / 1000
            else:
                # All slots taken elsewhere: poll with growing, jittered sleeps so waiting
                # workers do not hammer Redis in lock-step.
                wait = random.uniform(busy_wait / 2, busy_wait)
                busy_wait = min(busy_wait * 2, 0.2)
            time.sleep(wait if deadline is None else max(0.0, min(wait, deadline - now)))

    def release(self, lease: Lease) -> None:
        if not lease.token:  # a slot of the local fallback
            self._fallback.release(lease)
            return
        if not self._redis_up():
            return  # the lease expires on its own
        try:
            self.client.zrem(self.slots_key(lease.host), lease.token)
        except _REDIS_ERRORS as exc:
            self._redis_failed(exc)  # the lease expires on its own

    def pause(self, host: str, seconds: float) -> None:
        if seconds <= 0:
            return
        self._fallback.pause(host, seconds)
        if not self._redis_up():
            return
        try:
            self._pause(keys=[self.pause_key(host)], args=[max(1, int(seconds * 1000))])
        except _REDIS_ERRORS as exc:
            self._redis_failed(exc)

    def paused_for(self, host: str) -> float:
        if not self._redis_up():
            return self._fallback.paused_for(host)
        try:
            remaining = int(self.client.pttl(self.pause_key(host)))
        except _REDIS_ERRORS as exc:
            self._redis_failed(exc)
            return self._fallback.paused_for(host)
        return remaining / 1000 if remaining > 0 else 0.0


try:
    from redis.exceptions import RedisError

    _REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)
except ImportError:  # the engine works without the redis client when redis_url is unset
    _REDIS_ERRORS = (OSError,)

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def _redis_client(url: str) -> Any:
    """One client (and connection pool) per Redis URL per process."""
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
        _redis_client(settings.redis_url),
        per_host=settings.per_host_concurrency,
        lease_seconds=settings.connect_timeout + settings.total_timeout + LEASE_MARGIN_SECONDS,
        prefix=prefix,
    )
