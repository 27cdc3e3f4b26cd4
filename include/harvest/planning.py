"""Cutting a run's URLs into batches: one mapped Airflow task instance per batch.

A task instance costs about 0.3-0.5 s of scheduling and process start, and one URL about 1 ms from a
fast server, so batches hold hundreds to thousands of URLs: orchestration stays a small share of
the run. Airflow refuses to map over more than ``[core] max_map_length`` items (1024 by default),
so a large list gets larger batches rather than more of them.

Sizing rule, for ``n`` URLs:

1. start from ``batch_size`` if given; else, knowing the deployment's ``worker_slots`` (Celery task
   slots over all workers), size for one batch per slot in each wave, ``ceil(n / (slots × waves))``,
   with :data:`WAVES` waves or as many more as keep batches within :data:`MAX_AUTO_BATCH`, and at
   least :data:`MIN_AUTO_BATCH`: every slot is busy in every wave, and few task life cycles (and
   batch ends) are paid; else :data:`DEFAULT_BATCH_SIZE`;
2. if ``ceil(n / size)`` batches would exceed ``max_batches``, grow the size to
   ``ceil(n / max_batches)`` (logged as a warning when it overrides an explicit ``batch_size``);
3. split into ``ceil(n / size)`` contiguous batches whose lengths differ by at most one, so the last
   batch is not a straggler of a few URLs: no batch is longer than the size chosen.

The list order is kept: concatenating the batches gives the input back. Within a batch's file,
:class:`HostSpread` spreads each host's URLs evenly, because its task reads the file a window at
a time.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Iterable, Iterator

from include.harvest.frontier import host_key
from include.harvest.models import UrlItem

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_BATCHES",
    "MAX_AUTO_BATCH",
    "MIN_AUTO_BATCH",
    "WAVES",
    "HostSpread",
    "batch_lengths",
    "choose_batch_size",
    "describe_batch",
]

log = logging.getLogger(__name__)

# Measured with `python -m bench.e2e --sweep` (2 CPUs, 20,000 URLs, 4 worker slots): 250 -> 457,
# 500 -> 721, 1000 -> 778, 2000 -> 826, 4000 -> 751 URLs/s. Each task instance costs 0.4-0.6 s
# outside the fetch, so small batches lose; from 1000 up the curve is flat, and 1000 keeps
# progress and retries fine-grained.
DEFAULT_BATCH_SIZE = 1000
# Automatic sizing (worker slots known). One wave: each slot gets one batch, so each pays the end of
# a batch (threads idle while its last URLs, often a stalled server's, finish) once. On the
# realistic web (bench/README.md, 20,000 URLs, 2 slots) one wave ran at 158 and 171 URLs/s against
# 148-152 for two waves; on loopback the two were the same (404 and 406 URLs/s). A batch's threads
# balance hosts among themselves (frontier.py), which a second wave used to do coarsely. The bounds
# keep a tiny list from being cut into pieces that cost more to schedule than to fetch, and a huge
# one from batches so long that a retry (or a lost worker) repeats hours of work. A batch's size
# does not set its task's memory: the task reads its file a window at a time (frontier.py) and
# stages its results as they finish. Each batch task costs seconds of CPU outside the fetch
# (process start, imports, the batch's end): 100,000 URLs on 2 slots, in one hour
# (bench/README.md), ran at 863 URLs/s in 10 batches of 10,000, 1,046 in 4 of 25,000 and 1,217 in
# 2 of 50,000.
WAVES = 1
MIN_AUTO_BATCH = 500
MAX_AUTO_BATCH = 50_000
# Airflow's default [core] max_map_length.
DEFAULT_MAX_BATCHES = 1024


def choose_batch_size(
    count: int,
    *,
    batch_size: int | None = None,
    max_batches: int = DEFAULT_MAX_BATCHES,
    worker_slots: int | None = None,
) -> int:
    """The largest batch length :func:`plan_batches` will use for ``count`` URLs."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_batches < 1:
        raise ValueError(f"max_batches must be at least 1, got {max_batches}")
    if worker_slots is not None and worker_slots < 1:
        raise ValueError(f"worker_slots must be at least 1, got {worker_slots}")
    size = batch_size or _automatic_size(count, worker_slots)
    if count > size * max_batches:
        grown = math.ceil(count / max_batches)
        if batch_size is not None:
            log.warning(
                "batch_size %d would make %d batches for %d urls, over max_batches %d: using batches of %d",
                batch_size,
                math.ceil(count / batch_size),
                count,
                max_batches,
                grown,
            )
        size = grown
    return size


def _automatic_size(count: int, worker_slots: int | None) -> int:
    if worker_slots is None:
        return DEFAULT_BATCH_SIZE
    # As many waves as MAX_AUTO_BATCH needs, each slot one batch a wave, so no wave is half empty.
    waves = max(WAVES, math.ceil(count / (worker_slots * MAX_AUTO_BATCH)))
    return max(MIN_AUTO_BATCH, math.ceil(count / (worker_slots * waves)))


def batch_lengths(
    count: int,
    *,
    batch_size: int | None = None,
    max_batches: int = DEFAULT_MAX_BATCHES,
    worker_slots: int | None = None,
) -> list[int]:
    """The lengths of the at most ``max_batches`` contiguous, balanced batches of ``count`` URLs
    (see the module doc): batch ``i`` holds the list's next ``lengths[i]`` URLs.

    No URLs give ``[]`` (the mapped task is then skipped).
    """
    size = choose_batch_size(count, batch_size=batch_size, max_batches=max_batches, worker_slots=worker_slots)
    if count == 0:
        return []
    batches = math.ceil(count / size)
    base, extra = divmod(count, batches)  # the first `extra` batches get one more URL
    log.info("planned %d urls into %d batches of up to %d", count, batches, base + (1 if extra else 0))
    return [base + (1 if index < extra else 0) for index in range(batches)]


def describe_batch(urls: int, hosts: int) -> str:
    """A short label for the UI, e.g. ``500 urls · 2 hosts``."""
    urls_word = "url" if urls == 1 else "urls"
    hosts_word = "host" if hosts == 1 else "hosts"
    return f"{urls} {urls_word} · {hosts} {hosts_word}"


class HostSpread:
    """One batch's URLs with each host's spread evenly over it; a host's own keep their order.

    A batch task reads its file a window at a time (:class:`.Frontier`), and shares its fetch
    threads among the hosts of the window. Spread, every window holds the batch's mix of hosts: a
    list sorted by host does not leave the task fetching one host at a time, at its per-host limit.

    Spreading reorders the whole batch, so the URLs go through a private SQLite database, which
    sorts them in a few MiB of memory and a temporary file: planning a batch of 50,000 URLs costs
    the memory of one of 1,000. Iterate it, then :meth:`close` it (or use ``with``).
    """

    def __init__(self, items: Iterable[UrlItem]) -> None:
        self._db = sqlite3.connect("")  # "": private, on disk only once it outgrows the cache
        self._db.executescript(
            """
            CREATE TABLE batch (seq INTEGER PRIMARY KEY, host TEXT NOT NULL, url TEXT NOT NULL, line INTEGER, meta TEXT);
            CREATE TABLE hosts (host TEXT PRIMARY KEY, n INTEGER NOT NULL, turn REAL NOT NULL) WITHOUT ROWID;
            CREATE TABLE spread (place INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
            """
        )
        self._db.executemany(
            "INSERT INTO batch VALUES (?, ?, ?, ?, ?)",
            (
                # URLs are ASCII once normalised; meta is JSON, whose ASCII escapes keep a CSV cell's
                # undecodable bytes (lone surrogates) storable
                (
                    seq,
                    host_key(item.url),
                    item.url,
                    item.line,
                    None if item.meta is None else json.dumps(item.meta),
                )
                for seq, item in enumerate(items)
            ),
        )
        # Host h's k-th of n URLs goes at (k + offset_h) / n, hosts numbered in order of first
        # appearance. The offsets follow the golden ratio, which spreads them evenly over [0, 1)
        # for any number of hosts: the many hosts of a URL or two are spread over the batch too,
        # instead of meeting in its middle. Each step is its own statement, and the order is kept as
        # `spread`'s row ids, so SQLite never sorts the URLs themselves: what it holds in memory
        # stays under a few MiB for any batch (measured: 4 MiB at 50,000 and at 200,000 URLs).
        self._db.execute(
            "INSERT INTO hosts SELECT host, COUNT(*), (ROW_NUMBER() OVER (ORDER BY MIN(seq)) - 1) * ? "
            "FROM batch GROUP BY host",
            (_GOLDEN,),
        )
        self._db.execute(
            """
            INSERT INTO spread (seq)
            SELECT seq FROM (
                SELECT seq, host, ROW_NUMBER() OVER (PARTITION BY host ORDER BY seq) - 1 AS k FROM batch
            ) JOIN hosts USING (host)
            ORDER BY (k + turn - CAST(turn AS INTEGER)) / n, seq
            """
        )
        self.urls: int = self._db.execute("SELECT COUNT(*) FROM batch").fetchone()[0]
        self.hosts: int = self._db.execute("SELECT COUNT(*) FROM hosts").fetchone()[0]

    def __iter__(self) -> Iterator[UrlItem]:
        rows = self._db.execute("SELECT url, line, meta FROM spread JOIN batch USING (seq) ORDER BY place")
        for url, line, meta in rows:
            yield UrlItem(url=url, line=line, meta=None if meta is None else json.loads(meta))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> HostSpread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_GOLDEN = (math.sqrt(5) - 1) / 2
