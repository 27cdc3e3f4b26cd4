"""Per-host slots and pauses, in-process and across processes through Redis (DB 13, own prefix)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from include.harvest import hostlimits
from include.harvest.fetch import fetch_batch
from include.harvest.hostlimits import HostLimits, LocalHostLimits, RedisHostLimits, slot
from include.harvest.models import Status
from include.harvest.settings import FetchSettings
from include.harvest.storage import ContentAddressedStore
from tests.include.conftest import REDIS_TEST_URL

if TYPE_CHECKING:
    from tests.include.conftest import HostileServer

REDIS_URL = REDIS_TEST_URL  # the database of the redis_client fixture (tests/include/conftest.py)
REPO_ROOT = Path(__file__).resolve().parents[2]
# Longest wait for something another thread or process does; passing it means a failure (or a
# hang caught), never a normal outcome, so a busy machine only makes a test slower.
DEADLINE_SECONDS = 20.0


def wait_until(condition: Callable[[], object], what: str, *, poll: float = 0.005) -> None:
    """Poll ``condition`` until it holds; fail the test after :data:`DEADLINE_SECONDS`."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {DEADLINE_SECONDS}s for {what}")
        time.sleep(poll)


def shared(
    redis_client: Any, prefix: str, *, per_host: int = 2, lease_seconds: float = 10
) -> RedisHostLimits:
    return RedisHostLimits(redis_client, per_host=per_host, lease_seconds=lease_seconds, prefix=prefix)


def peak_concurrency(
    limits: HostLimits, host: str, workers: int, *, cap: int, requests: int = 1, hold: float = 0.05
) -> int:
    """The most slots held at once while ``workers`` threads each make ``requests`` requests.

    A thread keeps its slot until ``cap`` slots are held (or as many as there are threads still
    working), so a correct limiter reaches its cap however slow the machine; then it keeps it up to
    ``hold`` seconds more, or until a slot over the cap is granted, which a limiter that lets too
    many in does in that time. (``hold`` only decides how sure the test is to see such a bug.)
    """
    in_flight, peak, working = 0, 0, workers
    changed = threading.Condition()

    def cap_filled() -> bool:
        return in_flight >= min(cap, working)

    def over_cap() -> bool:
        return in_flight > cap

    def work() -> None:
        nonlocal in_flight, peak, working
        for _ in range(requests):
            with slot(limits, host), changed:
                in_flight += 1
                peak = max(peak, in_flight)
                changed.notify_all()
                changed.wait_for(cap_filled, timeout=DEADLINE_SECONDS)
                changed.wait_for(over_cap, timeout=hold)
                in_flight -= 1
        with changed:
            working -= 1
            changed.notify_all()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return peak


def test_local_slots_cap_requests_per_host() -> None:
    assert peak_concurrency(LocalHostLimits(per_host=2), "example.com", workers=8, cap=2) == 2


def test_a_release_wakes_one_waiting_thread_not_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """16 threads take turns on one slot: each turn wakes one waiter, not the whole queue."""
    waits = itertools.count()

    class CountingCondition(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            next(waits)
            return super().wait(timeout)

    monkeypatch.setattr(hostlimits.threading, "Condition", CountingCondition)
    limits = LocalHostLimits(per_host=1)
    turns_per_thread = 20
    turns = 0

    def work() -> None:
        nonlocal turns
        for _ in range(turns_per_thread):
            with slot(limits, "example.com", deadline=time.monotonic() + 30) as lease:
                assert lease is not None
                turns += 1
                # Work done holding the slot (not a wait for another thread), so that the others
                # queue for it. A busy machine only queues fewer of them: a weaker test, never a
                # false failure (the bound is twice the one wait per turn of a correct limiter).
                time.sleep(0.0005)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert turns == 16 * turns_per_thread
    # Waking every waiter at each release gives about 16 waits per turn; one waiter, about one.
    assert next(waits) <= 2 * turns


def test_local_limits_forget_idle_hosts() -> None:
    limits = LocalHostLimits(per_host=2)
    for number in range(1000):
        with slot(limits, f"host-{number}.example"):
            pass
    assert not limits._hosts  # a long batch over many hosts keeps no entry per host


def test_local_pause_holds_one_host_only() -> None:
    limits = LocalHostLimits(per_host=4)
    limits.pause("paused.example", 60)
    # Had the pause held every host, this would give up at its deadline (inside the pause).
    assert limits.paused_for("other.example") == 0
    assert limits.acquire("other.example", deadline=time.monotonic() + DEADLINE_SECONDS) is not None
    assert limits.acquire("paused.example", deadline=time.monotonic() + 0.1) is None
    before_pause = time.monotonic()
    limits.pause("brief.example", 0.3)
    with slot(limits, "brief.example"):
        assert time.monotonic() - before_pause >= 0.3  # a lower bound: a slow machine only adds


def test_local_acquire_gives_up_at_the_deadline() -> None:
    limits = LocalHostLimits(per_host=1)
    held = limits.acquire("example.com")
    assert held is not None
    assert limits.acquire("example.com", deadline=time.monotonic() + 0.1) is None
    limits.release(held)
    assert limits.acquire("example.com", deadline=time.monotonic() + 0.1) is not None


def test_redis_slots_hold_across_instances(redis_client: Any, prefix: str) -> None:
    worker_a, worker_b = shared(redis_client, prefix), shared(redis_client, prefix)
    leases = [worker_a.acquire("example.com"), worker_a.acquire("example.com")]
    assert None not in leases
    assert worker_b.acquire("example.com", deadline=time.monotonic() + 0.2) is None
    worker_a.release(leases[0])  # type: ignore[arg-type]
    # worker A may keep a released slot for its own next request, but never longer than ~1 s idle.
    assert worker_b.acquire("example.com", deadline=time.monotonic() + 2.0) is not None
    assert peak_concurrency(shared(redis_client, prefix, per_host=3), "other.example", workers=9, cap=3) == 3


def test_the_lease_sweeper_is_started_outside_the_lock(
    redis_client: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting a thread waits for it; doing that with the lock held queued every fetch thread on
    the lock, a convoy that then fed itself (16,000 contended acquisitions per 10,000 URLs)."""
    limits = shared(redis_client, prefix)
    lock_held_at_start: list[bool] = []
    start = threading.Thread.start

    def spy(thread: threading.Thread) -> None:
        if thread.name == "harvest-lease-sweeper":
            lock_held_at_start.append(limits._lock.locked())
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", spy)
    lease = limits.acquire("example.com")
    assert lease is not None
    limits.release(lease)  # kept for reuse: the sweeper starts to give it back once stale
    assert lock_held_at_start == [False]
    limits.flush()


def test_threads_beyond_the_slots_held_wait_for_one_instead_of_asking_redis(
    redis_client: Any, prefix: str
) -> None:
    """8 threads, 2 slots, one worker: the 6 others wait for a release in this process. Asking
    Redis for a slot this process already holds all of is a round trip that can only say no
    (and it cost 8-20% of the throughput on one fast host with 32 threads and 8 slots)."""
    limits = shared(redis_client, prefix, per_host=2)
    answers: list[int] = []
    ask = limits._acquire

    def counting_ask(**kwargs: Any) -> Any:
        answer = ask(**kwargs)
        answers.append(int(answer))
        return answer

    limits._acquire = counting_ask  # type: ignore[method-assign]
    assert peak_concurrency(limits, "example.com", workers=8, cap=2, requests=25, hold=0.002) == 2
    limits.flush()
    assert answers and all(answer == 1 for answer in answers), answers  # never asked in vain
    assert len(answers) <= 8 * 25 / 2  # and leases were handed between threads, not re-asked each time


def test_a_killed_workers_slot_expires(redis_client: Any, prefix: str) -> None:
    crashed = shared(redis_client, prefix, per_host=1, lease_seconds=1)
    assert crashed.acquire("example.com") is not None  # never released: the worker "died"
    started = time.monotonic()
    survivor = shared(redis_client, prefix, per_host=1, lease_seconds=1)
    # Granted at all proves the lease expired (a slot held for ever would never be granted); the
    # deadline is generous, so a busy machine cannot fail it. Not at once: the lease was held.
    assert survivor.acquire("example.com", deadline=started + DEADLINE_SECONDS) is not None
    assert time.monotonic() - started > 0.5  # lease of 1 s (+ up to the 1 s reuse window)


def test_redis_pause_is_seen_by_every_instance(redis_client: Any, prefix: str) -> None:
    worker_a, worker_b = shared(redis_client, prefix), shared(redis_client, prefix)
    worker_a.pause("example.com", 60)  # long: what is read below cannot depend on the machine's speed
    assert redis_client.pttl(f"{prefix}:pause:example.com") > 0
    assert 30 < worker_b.paused_for("example.com") <= 60
    worker_a.pause("example.com", 0.1)  # a shorter pause never cuts a longer one
    assert worker_b.paused_for("example.com") > 30
    assert worker_b.paused_for("other.example") == 0
    before_pause = time.monotonic()
    worker_a.pause("brief.example", 0.5)
    with slot(worker_b, "brief.example"):
        # Lower bounds only (Redis keeps the TTL in ms): a slow machine can only add to them.
        assert time.monotonic() - before_pause >= 0.45


SECOND_WORKER = textwrap.dedent(
    """
    import sys
    import redis
    from include.harvest.fetch import fetch_batch
    from include.harvest.hostlimits import RedisHostLimits
    from include.harvest.settings import FetchSettings
    from include.harvest.storage import ContentAddressedStore

    url, prefix, storage, redis_url = sys.argv[1:5]
    settings = FetchSettings(allow_hosts=("127.0.0.1",), redis_url=redis_url, total_timeout=5)
    limits = RedisHostLimits(redis.Redis.from_url(redis_url), per_host=4, lease_seconds=10, prefix=prefix)
    print("ready", flush=True)
    sys.stdin.readline()  # "go": the host has just been paused
    paused_for = limits.paused_for("127.0.0.1")
    [result] = fetch_batch([url], settings, store=ContentAddressedStore(storage), limits=limits)
    print(result.status, result.attempts, paused_for > 0)
    """
)


def test_a_429_pauses_the_host_for_a_second_worker_process(
    redis_client: Any, prefix: str, hostile_server: HostileServer, tmp_path: Path
) -> None:
    settings = FetchSettings(
        allow_hosts=("127.0.0.1",), redis_url=REDIS_URL, total_timeout=5, backoff_base=0.05, retry_after_cap=5
    )
    store = ContentAddressedStore(f"file://{tmp_path}")
    # The second worker starts first and waits, imports done, so that it is told to go at once.
    second = subprocess.Popen(
        [sys.executable, "-c", SECOND_WORKER, hostile_server.url("/second-worker.png"), prefix,
         str(tmp_path), REDIS_URL],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    stuck = threading.Timer(DEADLINE_SECONDS, second.kill)  # readline() below has no timeout
    stuck.start()
    try:
        assert second.stdout is not None and second.stderr is not None
        assert second.stdout.readline() == "ready\n", second.stderr.read()
    except BaseException:
        second.kill()
        raise
    finally:
        stuck.cancel()
    first: list[Any] = []
    worker_one = threading.Thread(
        target=lambda: first.extend(
            fetch_batch(
                [hostile_server.url("/throttled-shared.png"), hostile_server.url("/ok.jpg")],
                settings,
                store=store,
                limits=shared(redis_client, prefix, per_host=4),
            )
        )
    )
    worker_one.start()
    try:
        # The 429 (Retry-After: 2) has reached worker one and paused the host in Redis.
        wait_until(lambda: redis_client.pttl(f"{prefix}:pause:127.0.0.1") > 0, "the pause in Redis")
    except BaseException:
        second.kill()
        raise
    throttled_at = hostile_server.hits("/throttled-shared.png")[0].at
    out, err = second.communicate("go\n", timeout=DEADLINE_SECONDS + 10)
    worker_one.join(timeout=DEADLINE_SECONDS)

    assert second.returncode == 0, err
    # "True": the second worker found the host paused when it was told to go (were the machine
    # so slow that the pause was over by then, this test could not prove anything, and says so).
    assert out.split() == ["ok", "1", "True"], out
    second_hit = hostile_server.hits("/second-worker.png")[0].at
    assert second_hit >= throttled_at + 1.9  # ...and sent nothing until the pause was over
    assert [(r.status, r.attempts) for r in first] == [(Status.OK, 2), (Status.OK, 1)]
    retry = hostile_server.hits("/throttled-shared.png")[1].at
    assert retry - throttled_at >= 1.9
    assert redis_client.zcard(f"{prefix}:slots:127.0.0.1") == 0  # every slot handed back at the end


def test_limits_fall_back_to_this_process_when_redis_is_down(refused_url: str) -> None:
    redis = pytest.importorskip("redis")
    port = int(refused_url.split(":")[2].split("/")[0])
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    unreachable = redis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    limits = RedisHostLimits(unreachable, per_host=2, lease_seconds=5, prefix="harvest-test-down")
    assert limits.paused_for("example.com") == 0  # finds Redis down, and stops asking for a while
    assert peak_concurrency(limits, "example.com", workers=6, cap=2) == 2
    limits.pause("example.com", 0.5)
    assert limits.paused_for("example.com") > 0.3


def crawl_delayed_starts(
    workers: list[HostLimits], host: str, *, threads_per_worker: int, requests: int, crawl_delay: float
) -> tuple[list[float], int]:
    """When each request started (monotonic, once its slot was granted) while the threads of
    ``workers`` each make ``requests`` requests to ``host`` with ``crawl_delay``, and the most in
    flight at once. Each request keeps its slot a little while, or until a second one is granted
    (which a limiter letting two in at once does in that time)."""
    starts: list[float] = []
    in_flight, peak = 0, 0
    changed = threading.Condition()

    def crowded() -> bool:
        return in_flight > 1

    def work(limits: HostLimits) -> None:
        nonlocal in_flight, peak
        for _ in range(requests):
            with slot(limits, host, crawl_delay=crawl_delay) as lease, changed:
                assert lease is not None
                starts.append(time.monotonic())
                in_flight += 1
                peak = max(peak, in_flight)
                changed.notify_all()
                changed.wait_for(crowded, timeout=0.02)
                in_flight -= 1

    threads = [
        threading.Thread(target=work, args=(limits,)) for limits in workers for _ in range(threads_per_worker)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(starts), peak


def test_local_crawl_delay_spaces_the_requests_to_a_host() -> None:
    limits = LocalHostLimits(per_host=8)
    starts, peak = crawl_delayed_starts(
        [limits], "slow.example", threads_per_worker=4, requests=2, crawl_delay=0.1
    )
    assert peak == 1
    assert len(starts) == 8
    # Lower bounds only: a busy machine can only space them more.
    assert min(later - earlier for earlier, later in itertools.pairwise(starts)) >= 0.1
    assert (
        limits.acquire("fast.example", deadline=time.monotonic() + DEADLINE_SECONDS) is not None
    )  # unaffected


def test_redis_crawl_delay_spaces_the_requests_of_every_worker(redis_client: Any, prefix: str) -> None:
    workers: list[HostLimits] = [
        shared(redis_client, prefix, per_host=4),
        shared(redis_client, prefix, per_host=4),
    ]
    starts, peak = crawl_delayed_starts(
        workers, "slow.example", threads_per_worker=3, requests=2, crawl_delay=0.1
    )
    assert peak == 1
    assert len(starts) == 12
    # Redis keeps the pause in whole milliseconds: a millisecond of slack, and no upper bound.
    assert min(later - earlier for earlier, later in itertools.pairwise(starts)) >= 0.1 - 0.002
    assert redis_client.zcard(f"{prefix}:slots:slow.example") == 0


def test_a_slot_kept_for_reuse_never_skips_a_crawl_delay(redis_client: Any, prefix: str) -> None:
    limits = shared(redis_client, prefix, per_host=4)
    slots_key = f"{prefix}:slots:example.com"
    with slot(limits, "example.com"):  # without a Crawl-delay: the slot is kept for reuse when released
        pass
    assert limits._idle.get("example.com")
    with slot(limits, "example.com", crawl_delay=0.3) as first:
        assert first is not None
        assert redis_client.zcard(slots_key) == 1  # the kept slot was handed back, not reused
        released_at = time.monotonic()
    with slot(limits, "example.com", crawl_delay=0.3) as second:
        assert second is not None and second.token != first.token
        assert time.monotonic() - released_at >= 0.3 - 0.002
    assert not limits._idle.get("example.com")
    assert redis_client.zcard(slots_key) == 0
    assert 0 < limits.paused_for("example.com") <= 0.3  # the last release paused the host too


def test_a_thread_with_a_crawl_delay_does_not_swallow_a_wake_up() -> None:
    """Two slots in use, a thread with a Crawl-delay (it needs both free) waiting first, one
    without (it needs one) second: a release must let the second one in, not wake only the first."""
    limits = LocalHostLimits(per_host=2)
    held = [limits.acquire("example.com"), limits.acquire("example.com")]
    granted: dict[str, Any] = {}

    def take(name: str, crawl_delay: float | None) -> None:
        deadline = time.monotonic() + DEADLINE_SECONDS
        granted[name] = limits.acquire("example.com", deadline=deadline, crawl_delay=crawl_delay)

    delayed = threading.Thread(target=take, args=("delayed", 0.1))
    delayed.start()
    wait_until(lambda: limits._hosts["example.com"].waiting == 1, "the thread with a Crawl-delay to wait")
    plain = threading.Thread(target=take, args=("plain", None))
    plain.start()
    wait_until(lambda: limits._hosts["example.com"].waiting == 2, "the thread without one to wait")
    limits.release(held[0])  # type: ignore[arg-type]
    plain.join()
    assert granted["plain"] is not None
    limits.release(granted["plain"])
    limits.release(held[1])  # type: ignore[arg-type]
    delayed.join()
    assert granted["delayed"] is not None
    limits.release(granted["delayed"])


def test_local_has_room_until_the_host_is_full_or_paused() -> None:
    limits = LocalHostLimits(per_host=2)
    assert limits.has_room("a.example")
    first = limits.acquire("a.example")
    assert limits.has_room("a.example")
    second = limits.acquire("a.example")
    assert not limits.has_room("a.example"), "both slots are in use"
    assert limits.has_room("b.example"), "one full host says nothing of another"
    assert first is not None and second is not None
    limits.release(first)
    assert limits.has_room("a.example")
    limits.pause("b.example", 30)
    assert not limits.has_room("b.example"), "a paused host has no room however many slots are free"


def test_redis_has_room_is_false_while_a_thread_waits_for_a_slot_held_elsewhere(
    redis_client: Any, prefix: str
) -> None:
    here = shared(redis_client, prefix, per_host=1)
    elsewhere = shared(redis_client, prefix, per_host=1)  # another worker process
    held = elsewhere.acquire("busy.example")
    assert held is not None
    assert here.has_room("busy.example"), "this process cannot know yet: it has not asked Redis"
    got: list[object] = []
    waiter = threading.Thread(
        target=lambda: got.append(here.acquire("busy.example", deadline=time.monotonic() + DEADLINE_SECONDS))
    )
    waiter.start()
    try:
        wait_until(lambda: not here.has_room("busy.example"), "the waiting thread to mark the host busy")
        assert here.has_room("free.example")
    finally:
        elsewhere.release(held)
        waiter.join(DEADLINE_SECONDS)
    assert got and got[0] is not None, "the waiting thread got the slot once it was released"


def test_redis_has_room_is_false_while_the_host_is_paused(redis_client: Any, prefix: str) -> None:
    limits = shared(redis_client, prefix)
    limits.pause("slow.example", 30)
    assert not limits.has_room("slow.example")
    assert limits.has_room("other.example")
