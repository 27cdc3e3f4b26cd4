"""The total-deadline reaper (connections.DeadlineReaper): stuck requests are cut, finished ones
cost no memory once they are most of its heap."""

from __future__ import annotations

import time

from include.harvest.connections import DeadlineReaper

# Deadlines far from now: the reaper's own thread (started by watch) expires nothing meanwhile.
T = time.monotonic() + 10_000


class FakeSocket:
    def __init__(self, name: str) -> None:
        self.name = name


def test_a_request_past_its_deadline_is_handed_over_and_one_not_due_is_kept() -> None:
    reaper = DeadlineReaper()
    stuck, waiting, done = FakeSocket("stuck"), FakeSocket("waiting"), FakeSocket("done")
    reaper.watch(T + 10, stuck)
    reaper.watch(T + 30, waiting)
    reaper.cancel(reaper.watch(T + 5, done))  # finished before its deadline: nothing to shut down

    assert reaper.expire(now=T + 20) == [stuck]
    assert reaper.expire(now=T + 25) == []
    assert reaper.expire(now=T + 31) == [waiting]


def test_finished_requests_are_dropped_from_the_heap_once_they_are_most_of_it() -> None:
    reaper = DeadlineReaper()
    in_flight = [FakeSocket(f"live-{n}") for n in range(10)]
    for n, sock in enumerate(in_flight):
        reaper.watch(T + 100 + n, sock)
    for n in range(50_000):  # a minute of requests at ~800/s, each finished long before its deadline
        reaper.cancel(reaper.watch(T + 60 + n / 1000, FakeSocket("finished")))

    assert reaper.expire(now=T) == []

    assert len(reaper) == len(in_flight)  # memory follows the requests in flight, not the rate
    assert reaper.expire(now=T + 200) == in_flight  # the live ones still expire, in deadline order
