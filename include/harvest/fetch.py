"""The download engine's front door: many URLs in, exactly one :class:`Result` per URL out, in input
order.

A batch runs ``concurrency`` threads that take URLs from a :class:`~include.harvest.frontier.Frontier`
(a URL of a host with a free slot, hosts served in proportion to their URLs left); each URL goes
through :class:`~include.harvest.downloader.Downloader` (one URL start to finish), which uses
:mod:`.exchange` (attempts, redirects, retries over HTTP), :mod:`.connections` (pools, timeouts,
the total deadline), :mod:`.bodies` (reading within the caps), :mod:`.answers` (what a status
means), :mod:`.guard` (SSRF), :mod:`.hostlimits` (per-host politeness), :mod:`.content` (is it an
image) and :mod:`.storage` (the blob by SHA-256). Any failure becomes the URL's result; it never
fails the batch.

Failures of the storage itself (disk full, bucket unreachable) are not a URL's fault: they raise,
so the task fails and is retried as a whole (storage writes are idempotent).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from include.harvest.downloader import Downloader
from include.harvest.errors import HttpError
from include.harvest.exchange import Exchange, Trace
from include.harvest.frontier import Frontier
from include.harvest.guard import parse_target
from include.harvest.hostlimits import HostLimits, host_limits_for
from include.harvest.models import Result, UrlItem
from include.harvest.settings import FetchSettings
from include.harvest.storage import ContentAddressedStore

__all__ = ["fetch_batch", "fetch_bytes", "fetch_each"]

_module_log = logging.getLogger(__name__)


def fetch_batch(
    items: Sequence[UrlItem | str],
    settings: FetchSettings,
    *,
    store: ContentAddressedStore,
    previous: Mapping[str, Result] | None = None,
    log: logging.Logger | None = None,
    limits: HostLimits | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Fetch, verify and store every URL; return one :class:`Result` per item, in input order.

    An item is a :class:`UrlItem` (its line and CSV metadata travel into its result) or a bare URL.
    A URL listed twice is fetched once, and each listing gets its result with its own line and
    meta. The other arguments are those of :func:`fetch_each`. The results are held until the end:
    a caller that passes them on as they finish (the download task) uses :func:`fetch_each`.
    """
    listed = [UrlItem(item) if isinstance(item, str) else item for item in items]
    unique: dict[str, UrlItem] = {}
    for item in listed:
        unique.setdefault(item.url, item)
    if len(unique) < len(listed):
        (log or _module_log).info(
            "%d duplicate URLs in this batch: each is fetched once", len(listed) - len(unique)
        )
    results: dict[str, Result] = {}

    def keep(result: Result) -> None:
        results[result.url] = result
        if on_result is not None:
            on_result(result)

    fetch_each(
        unique.values(),
        settings,
        store=store,
        previous=previous,
        log=log,
        limits=limits,
        on_result=keep,
        total=len(unique),
    )
    ordered: list[Result] = []
    for item in listed:
        result = results[item.url]  # reported with the URL's first listing's line and meta
        if unique[item.url] is not item:  # a URL listed again: a copy, with this listing's line and meta
            result = dataclasses.replace(result, line=item.line, meta=item.meta)
        ordered.append(result)
    return ordered


def fetch_each(
    items: Iterable[UrlItem],
    settings: FetchSettings,
    *,
    store: ContentAddressedStore,
    on_result: Callable[[Result], None],
    total: int,
    previous: Mapping[str, Result] | None = None,
    log: logging.Logger | None = None,
    limits: HostLimits | None = None,
) -> None:
    """Fetch, verify and store every URL of ``items``, handing each :class:`Result` to ``on_result``
    as soon as its URL is finished; keep none of them.

    ``items`` is read as the fetch threads need more URLs (:class:`.Frontier` holds a window of
    them), so it can stream a batch of any size from its file; its URLs must be distinct
    (:func:`fetch_batch` drops repeats first). ``total`` is how many it holds, for the progress lines.
    ``on_result`` is called once per URL, from the fetch threads, concurrently: it must be
    thread-safe and cheap (it delays that thread's next URL). If it (or reading ``items``) raises,
    the batch stops and the error is raised, like a storage failure.
    ``previous`` maps a URL to its last result, for conditional requests (ETag / Last-Modified);
    it is read when the URL's fetch starts, so a caller streaming ``items`` may fill it as they are
    read. ``items`` is read to its end even when ``total`` is 0. ``limits`` replaces the per-host
    limits built from ``settings`` (tests, custom coordination).
    """
    log = log or _module_log
    started = time.monotonic()
    deadline = started + settings.batch_deadline if settings.batch_deadline else None
    downloader = Downloader(settings, limits=limits or host_limits_for(settings), log=log)
    try:
        _run_all(
            downloader,
            items,
            total,
            store,
            {} if previous is None else previous,
            deadline,
            log,
            started,
            on_result,
        )
    finally:
        downloader.close()


def fetch_bytes(url: str, settings: FetchSettings, *, max_bytes: int) -> bytes:
    """Download ``url`` into memory (guard, timeouts, redirects and retries apply); no content check.

    Raise the matching :class:`~include.harvest.errors.DownloadError` when it cannot be fetched.
    """
    settings = settings.replace(max_bytes=max_bytes)
    exchange = Exchange(settings, limits=host_limits_for(settings), log=_module_log)
    try:
        trace = Trace(url)
        fetched = exchange.download(parse_target(url), {}, trace, batch_deadline=None)
        if fetched.body is None:
            raise HttpError(
                f"server answered {fetched.http_status} without a body", http_status=trace.http_status
            )
        return fetched.body.read_all()
    finally:
        exchange.close()


def _run_all(
    downloader: Downloader,
    items: Iterable[UrlItem],
    total: int,
    store: ContentAddressedStore,
    previous: Mapping[str, Result],
    deadline: float | None,
    log: logging.Logger,
    started: float,
    on_result: Callable[[Result], None],
) -> None:
    """``concurrency`` threads take URLs from the frontier and file their results; this thread only
    wakes up to report progress.

    One long-lived task per thread rather than one future per URL: waiting on tens of thousands of
    futures (or waking up for each result) costs more GIL time than the downloads themselves.
    """
    workers = max(1, min(downloader.settings.concurrency, total))
    frontier = Frontier(
        items, downloader.exchange.limits, per_host=downloader.settings.per_host_concurrency, threads=workers
    )
    stop = threading.Event()
    all_done = threading.Event()
    errors: list[BaseException] = []
    running = [workers]
    running_lock = threading.Lock()
    tally = _Tally()

    def work() -> None:
        try:
            while not stop.is_set():
                item = frontier.take()
                if item is None:
                    return
                try:
                    result = downloader.fetch_one(item, store, previous.get(item.url), deadline)
                finally:
                    frontier.done(item)
                tally.add(result)
                on_result(result)
        except BaseException as exc:  # storage failure: the batch stops and the error is raised
            errors.append(exc)
            stop.set()
        finally:
            with running_lock:
                running[0] -= 1
                if not running[0]:
                    all_done.set()

    interval = downloader.settings.progress_interval
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="harvest-fetch") as executor:
        for _ in range(workers):
            executor.submit(work)
        while not all_done.wait(timeout=interval):
            _log_progress(log, tally, total, started)
    if errors:
        raise errors[0]
    _log_progress(log, tally, total, started, final=True)


class _Tally:
    """URLs finished so far, and failures by status, for the progress lines."""

    def __init__(self) -> None:
        self.done = 0
        self.failures: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def add(self, result: Result) -> None:
        with self._lock:
            self.done += 1
            if not result.ok:
                self.failures[str(result.status)] += 1

    def read(self) -> tuple[int, dict[str, int]]:
        with self._lock:
            return self.done, dict(self.failures)


def _log_progress(
    log: logging.Logger, tally: _Tally, total: int, started: float, *, final: bool = False
) -> None:
    elapsed = max(time.monotonic() - started, 1e-9)
    done, failures = tally.read()
    failed = sum(failures.values())
    detail = ", ".join(f"{status}={count}" for status, count in sorted(failures.items())) or "none"
    log.info(
        "%s %d/%d URLs in %.1fs (%.1f URLs/s); failures: %d (%s)",
        "fetched" if final else "fetching:",
        done,
        total,
        elapsed,
        done / elapsed,
        failed,
        detail,
    )
