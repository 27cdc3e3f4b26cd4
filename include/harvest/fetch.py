"""The download engine: many URLs in, exactly one :class:`Result` per URL out, in input order.

For each URL, in order: the URL is checked (:mod:`.guard`), its host resolved once and the address
checked, a per-host slot taken (:mod:`.hostlimits`, shared through Redis when configured), the
request sent over a pooled keep-alive urllib3 connection *to the checked address*, redirects
followed by hand (every hop checked again), the body streamed with a size cap and a total deadline
while hashing, the bytes sniffed and verified (:mod:`.content`) and stored by SHA-256
(:mod:`.storage`). Transient failures are retried with exponential back-off and full jitter,
honouring Retry-After. Any failure becomes the URL's result; it never fails the batch.

Failures of the storage itself (disk full, bucket unreachable) are not a URL's fault: they raise,
so the task fails and is retried as a whole (storage writes are idempotent).
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import functools
import hashlib
import heapq
import io
import itertools
import logging
import queue
import random
import re
import socket
import tempfile
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO

import urllib3
import urllib3.connection
import urllib3.response
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationParseError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from include.harvest.content import inspect_content
from include.harvest.errors import (
    Blocked,
    ConnectionFailed,
    DownloadError,
    HttpError,
    Rejected,
    RetryableError,
    RetryableHttpStatus,
    Timeout,
    TlsFailed,
    TooLarge,
    TooManyRedirects,
    describe_bytes,
)
from include.harvest.guard import AddressGuard, Target, parse_target
from include.harvest.hostlimits import HostLimits, host_limits_for
from include.harvest.httpheaders import HTTPResponse
from include.harvest.models import Result, Status
from include.harvest.settings import FetchSettings
from include.harvest.sockets import KernelTimeoutSocket
from include.harvest.storage import ContentAddressedStore

__all__ = ["fetch_batch", "fetch_bytes"]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
SUCCESS_STATUSES = frozenset({200, 203})
ROBOTS_DIRECTIVES = frozenset({"noai", "noimageai", "none"})
_DIRECTIVES_WITH_VALUE = frozenset(
    {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
)
_CRAWLER_NAME = re.compile(r"[a-z0-9_*-]+")
# Below malloc's mmap threshold (128 KiB): a bigger read buffer costs an mmap/munmap per read.
READ_CHUNK = 64 * 1024
SPOOL_IN_MEMORY = 4 * 1024 * 1024  # bodies up to this size never touch the local disk
REDIRECT_DRAIN_LIMIT = 64 * 1024  # a small redirect body is read so the connection can be reused
IMAGE_ACCEPT = "image/avif,image/webp,image/png,image/jpeg,image/gif,image/*;q=0.8,*/*;q=0.5"

_module_log = logging.getLogger(__name__)


def fetch_batch(
    urls: Sequence[str],
    settings: FetchSettings,
    *,
    store: ContentAddressedStore,
    previous: Mapping[str, Result] | None = None,
    log: logging.Logger | None = None,
    limits: HostLimits | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Fetch, verify and store every URL; return one :class:`Result` per URL, in input order.

    ``previous`` maps a URL to its last result, for conditional requests (ETag / Last-Modified).
    ``limits`` replaces the per-host limits built from ``settings`` (tests, custom coordination).
    ``on_result`` is called with each result as soon as its URL is finished, once per *unique* URL
    (a URL listed twice is fetched and reported once), from the fetch threads, concurrently: it must
    be thread-safe and cheap (it delays that thread's next URL). Checkpoints use it
    (:mod:`.checkpoints`). If it raises, the batch stops and the error is raised, like a storage
    failure.
    """
    log = log or _module_log
    started = time.monotonic()
    deadline = started + settings.batch_deadline if settings.batch_deadline else None
    unique = list(dict.fromkeys(urls))  # a URL listed twice is fetched once and reported twice
    fetcher = _Fetcher(settings, limits=limits or host_limits_for(settings), log=log)
    results: dict[str, Result] = {}
    if len(unique) < len(urls):
        log.info("%d duplicate URLs in this batch: each is fetched once", len(urls) - len(unique))
    try:
        if unique:
            _run_all(fetcher, unique, store, previous or {}, deadline, results, log, started, on_result)
    finally:
        fetcher.close()
    ordered: list[Result] = []
    seen: set[str] = set()
    for url in urls:
        # A duplicate gets its own copy: callers may annotate results (line numbers, meta).
        ordered.append(dataclasses.replace(results[url]) if url in seen else results[url])
        seen.add(url)
    return ordered


def fetch_bytes(url: str, settings: FetchSettings, *, max_bytes: int) -> bytes:
    """Download ``url`` into memory (guard, timeouts, redirects and retries apply); no content check.

    Raise the matching :class:`~include.harvest.errors.DownloadError` when it cannot be fetched.
    """
    settings = settings.replace(max_bytes=max_bytes)
    fetcher = _Fetcher(settings, limits=host_limits_for(settings), log=_module_log)
    try:
        trace = _Trace(url)
        fetched = fetcher.download(parse_target(url), {}, trace, batch_deadline=None)
        if fetched.body is None:
            raise HttpError(
                f"server answered {fetched.http_status} without a body", http_status=trace.http_status
            )
        fetched.body.file.seek(0)
        return fetched.body.file.read()
    finally:
        fetcher.close()


def _run_all(
    fetcher: _Fetcher,
    urls: list[str],
    store: ContentAddressedStore,
    previous: Mapping[str, Result],
    deadline: float | None,
    results: dict[str, Result],
    log: logging.Logger,
    started: float,
    on_result: Callable[[Result], None] | None = None,
) -> None:
    """``concurrency`` threads pull URLs from one queue and file their results; this thread only
    wakes up to report progress.

    One long-lived task per thread rather than one future per URL: waiting on tens of thousands of
    futures (or waking up for each result) costs more GIL time than the downloads themselves.
    """
    workers = max(1, min(fetcher.settings.concurrency, len(urls)))
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    for url in _interleave_hosts(urls):
        todo.put(url)
    stop = threading.Event()
    all_done = threading.Event()
    errors: list[BaseException] = []
    running = [workers]
    running_lock = threading.Lock()

    def work() -> None:
        try:
            while not stop.is_set():
                try:
                    url = todo.get_nowait()
                except queue.Empty:
                    return
                result = fetcher.fetch_one(url, store, previous.get(url), deadline)
                results[url] = result
                if on_result is not None:
                    on_result(result)
        except BaseException as exc:  # storage failure: the batch stops and the error is raised
            errors.append(exc)
            stop.set()
        finally:
            with running_lock:
                running[0] -= 1
                if not running[0]:
                    all_done.set()

    interval = fetcher.settings.progress_interval
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="harvest-fetch") as executor:
        for _ in range(workers):
            executor.submit(work)
        while not all_done.wait(timeout=interval):
            _log_progress(log, results, len(urls), started)
    if errors:
        raise errors[0]
    _log_progress(log, results, len(urls), started, final=True)


def _log_progress(
    log: logging.Logger, results: dict[str, Result], total: int, started: float, *, final: bool = False
) -> None:
    elapsed = max(time.monotonic() - started, 1e-9)
    done = len(results)
    failures: dict[str, int] = defaultdict(int)
    for result in results.copy().values():  # dict.copy is atomic: workers keep adding meanwhile
        if not result.ok:
            failures[str(result.status)] += 1
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


def _interleave_hosts(urls: list[str]) -> list[str]:
    """Round-robin over hosts so one slow or paused host does not hold every thread at once."""
    by_host: dict[str, list[str]] = defaultdict(list)
    for url in urls:
        # A rough host (authority) is enough to group by, and far cheaper than parsing every URL.
        by_host[url.partition("://")[2].partition("/")[0].lower()].append(url)
    if len(by_host) == 1:
        return urls
    queues = list(by_host.values())
    ordered: list[str] = []
    for i in range(max(len(q) for q in queues)):
        ordered.extend(q[i] for q in queues if i < len(q))
    return ordered


def _now_iso() -> str:
    """Now, as ``datetime.now(UTC).isoformat(timespec="milliseconds")`` writes it, in half the time
    (every result of every thread asks for it)."""
    now = time.time()
    second = int(now)
    return f"{_utc_second(second)}.{int((now - second) * 1000):03d}+00:00"


@functools.lru_cache(maxsize=1)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


class _Body:
    """A response body: received whole (``data``), or being received with :meth:`write`, in memory
    and moved to a temporary file past ``SPOOL_IN_MEMORY`` bytes; hashed and counted as it arrives."""

    def __init__(self, data: bytes = b"") -> None:
        # A plain BytesIO, not SpooledTemporaryFile: Pillow and storage read it many times in small
        # pieces, and the wrapper's Python-level methods showed up in profiles. It shares ``data``
        # (no copy), and one sha256 call over a whole body lets other threads run meanwhile.
        self.file: IO[bytes] = io.BytesIO(data)
        self.hasher = hashlib.sha256(data)
        self.size = len(data)

    def write(self, chunk: bytes) -> None:
        if self.size + len(chunk) > SPOOL_IN_MEMORY and isinstance(self.file, io.BytesIO):
            on_disk = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
            on_disk.write(self.file.getbuffer())
            self.file = on_disk
        self.file.write(chunk)
        self.hasher.update(chunk)
        self.size += len(chunk)

    def close(self) -> None:
        self.file.close()


@dataclass
class _Fetched:
    """A completed exchange: the final response's status and validators, and its body if any."""

    http_status: int
    content_type: str | None
    body: _Body | None = None


@dataclass
class _Trace:
    """What is known about a URL so far, kept when an attempt fails half-way."""

    url: str
    final_url: str | None = None
    http_status: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    attempts: int = 0


class _DeadlineReaper:
    """Shuts down sockets whose request outlived its total deadline while waiting for headers.

    Socket timeouts bound each read, not a whole exchange: a server dripping its status line and
    headers a byte at a time would never trip them. One daemon thread checks the watched sockets
    twice a second; a request costs a heap push and a flag.
    """

    PRECISION = 0.5  # seconds: deadlines are tens of seconds, no need to wake for each one

    def __init__(self) -> None:
        # No lock on the request path: heappush, heappop and next() are single calls into C, atomic
        # under the GIL, and every request of every thread passes here twice.
        self._heap: list[tuple[float, int, list[object]]] = []
        self._order = itertools.count()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, sock: object) -> list[object]:
        entry: list[object] = [sock]  # emptied by cancel(): nothing to shut down any more
        heapq.heappush(self._heap, (deadline, next(self._order), entry))
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="harvest-deadlines", daemon=True)
                    self._thread.start()
        return entry

    @staticmethod
    def cancel(entry: list[object]) -> None:
        entry.clear()

    def _run(self) -> None:
        while True:
            time.sleep(self.PRECISION)
            now = time.monotonic()
            expired: list[object] = []
            # A push between the look at heap[0] and the pop can only bring an earlier deadline to
            # the top, which is then due as well.
            while self._heap and self._heap[0][0] <= now:
                expired.extend(heapq.heappop(self._heap)[2])
            for sock in expired:
                with contextlib.suppress(OSError, AttributeError):
                    sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]


_reaper = _DeadlineReaper()
_request_deadline = threading.local()  # the total deadline of the request this thread is sending


def _response_within_deadline(
    sock: object, get_response: Callable[[], urllib3.response.HTTPResponse]
) -> urllib3.response.HTTPResponse:
    deadline = getattr(_request_deadline, "value", None)
    if deadline is None or sock is None:
        return get_response()
    entry = _reaper.watch(deadline, sock)
    try:
        return get_response()
    finally:
        _reaper.cancel(entry)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    """An urllib3 connection whose wait for the response headers ends at the total deadline, whose
    socket has its timeouts kept by the kernel (:mod:`.sockets`: a read is one system call, not a
    poll and a read), and whose response parses its headers without the email package
    (:mod:`.httpheaders`)."""

    response_class = HTTPResponse

    def _new_conn(self) -> socket.socket:
        return KernelTimeoutSocket.adopt(super()._new_conn())

    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        return _response_within_deadline(self.sock, super().getresponse)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    """The HTTPS twin of :class:`_WatchedHTTPConnection`, with Python's own socket timeouts (TLS
    cannot run over a :class:`~include.harvest.sockets.KernelTimeoutSocket`)."""

    response_class = HTTPResponse

    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        return _response_within_deadline(self.sock, super().getresponse)


class _Fetcher:
    """Shared state of one batch: settings, guard, limits and the connection pools."""

    def __init__(self, settings: FetchSettings, *, limits: HostLimits, log: logging.Logger) -> None:
        self.settings = settings
        self.limits = limits
        self.log = log
        self.guard = AddressGuard(enabled=settings.block_private_addresses, allow_hosts=settings.allow_hosts)
        self.pools = urllib3.PoolManager(
            num_pools=max(64, settings.concurrency * 2),
            maxsize=max(settings.per_host_concurrency, 1),
            block=False,
        )
        self.headers = {
            "User-Agent": settings.user_agent,
            "Accept": "*/*" if settings.accept_any_content else IMAGE_ACCEPT,
            # Compressed bodies would make the size cap count the wrong bytes and invite zip bombs.
            "Accept-Encoding": "identity",
        }
        # The common case (a fresh attempt) uses the same Timeout: build it once.
        self._full_timeout = urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout)
        self._full_timeout_needs = max(settings.connect_timeout, settings.read_timeout)
        self._pools_by_target: dict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = {}
        self._random = random.Random()
        self._random_lock = threading.Lock()
        self._bugs_logged: set[type[BaseException]] = set()  # exception types whose traceback is logged
        self._bugs_lock = threading.Lock()

    def close(self) -> None:
        self.pools.clear()
        self.limits.flush()

    # -- one URL, start to finish -------------------------------------------------------------

    def fetch_one(
        self,
        url: str,
        store: ContentAddressedStore,
        previous: Result | None,
        batch_deadline: float | None,
    ) -> Result:
        started = time.monotonic()
        trace = _Trace(url)
        if batch_deadline is not None and started >= batch_deadline:
            return self._result(
                trace,
                started,
                Status.SKIPPED,
                error=f"not started before the batch deadline of {self.settings.batch_deadline:g}s "
                "(HARVEST_BATCH_DEADLINE): it will be fetched by the next run",
            )
        fetched: _Fetched | None = None
        try:
            target = parse_target(url)
            conditional = self._conditional_headers(previous)
            fetched = self.download(target, conditional, trace, batch_deadline=batch_deadline)
            if fetched.http_status == 304:
                if previous is None:
                    raise HttpError("server answered 304 Not Modified to a request that was not conditional")
                return self._not_modified(trace, started, previous)
            assert fetched.body is not None
            body = fetched.body
            info = inspect_content(
                body.file,
                body.size,
                max_pixels=self.settings.max_pixels,
                accept_any_content=self.settings.accept_any_content,
                allow_svg=self.settings.allow_svg,
                declared_type=fetched.content_type,
            )
            sha256 = body.hasher.hexdigest()
            uri = store.put(body.file, sha256, info.extension)
            return self._result(
                trace,
                started,
                Status.OK,
                content_type=info.content_type,
                size=body.size,
                sha256=sha256,
                width=info.width,
                height=info.height,
                storage_uri=uri,
            )
        except DownloadError as exc:
            self.log.debug("%s: %s: %s", url, exc.status, exc)
            return self._result(trace, started, exc.status, error=str(exc))
        except OSError:
            raise  # storage failure: not this URL's fault (see module docstring)
        except Exception as exc:  # a bug must not cost the other URLs of the batch their results
            self._log_bug(url, exc)
            return self._result(
                trace,
                started,
                Status.INTERNAL_ERROR,
                error=f"internal error ({type(exc).__name__}: {exc}); this is a bug in Harvest, "
                "please report it with the task log",
            )
        finally:
            if fetched is not None and fetched.body is not None:
                fetched.body.close()

    def _log_bug(self, url: str, exc: Exception) -> None:
        """The traceback of a bug once per exception type and batch; its other URLs at debug level
        (they are counted in the progress lines and each has its own error text)."""
        kind = type(exc)
        with self._bugs_lock:
            first = kind not in self._bugs_logged
            self._bugs_logged.add(kind)
        if first:
            self.log.error(
                "internal error fetching %s (a bug in Harvest, please report it; further %s in this "
                "batch are recorded as internal_error without a traceback)",
                url,
                kind.__name__,
                exc_info=exc,
            )
        else:
            self.log.debug("%s: internal error: %s: %s", url, kind.__name__, exc)

    def _conditional_headers(self, previous: Result | None) -> dict[str, str]:
        if (
            not self.settings.conditional_requests
            or previous is None
            or not previous.ok
            or not previous.sha256
        ):
            return {}
        headers: dict[str, str] = {}
        if previous.etag:
            headers["If-None-Match"] = previous.etag
        if previous.last_modified:
            headers["If-Modified-Since"] = previous.last_modified
        return headers

    def _not_modified(self, trace: _Trace, started: float, previous: Result) -> Result:
        trace.etag = trace.etag or previous.etag
        trace.last_modified = trace.last_modified or previous.last_modified
        return self._result(
            trace,
            started,
            Status.NOT_MODIFIED,
            content_type=previous.content_type,
            size=previous.bytes,
            sha256=previous.sha256,
            width=previous.width,
            height=previous.height,
            storage_uri=previous.storage_uri,
        )

    def _result(
        self,
        trace: _Trace,
        started: float,
        status: Status,
        *,
        error: str | None = None,
        content_type: str | None = None,
        size: int | None = None,
        sha256: str | None = None,
        width: int | None = None,
        height: int | None = None,
        storage_uri: str | None = None,
    ) -> Result:
        return Result(
            url=trace.url,
            status=status,
            error=error,
            http_status=trace.http_status,
            final_url=trace.final_url,
            content_type=content_type,
            bytes=size,
            sha256=sha256,
            width=width,
            height=height,
            storage_uri=storage_uri,
            attempts=trace.attempts,
            elapsed_ms=int((time.monotonic() - started) * 1000),
            etag=trace.etag,
            last_modified=trace.last_modified,
            fetched_at=_now_iso(),
        )

    # -- attempts and retries ------------------------------------------------------------------

    def download(
        self, target: Target, extra_headers: Mapping[str, str], trace: _Trace, *, batch_deadline: float | None
    ) -> _Fetched:
        """Run attempts until one succeeds, a permanent error occurs, or retries are exhausted."""
        settings = self.settings
        while True:
            trace.attempts += 1
            try:
                return self._attempt(target, extra_headers, trace, batch_deadline)
            except RetryableError as exc:
                delay = self._backoff(trace.attempts)
                retry_after = exc.retry_after if isinstance(exc, RetryableHttpStatus) else None
                if trace.attempts >= settings.max_attempts:
                    exc.message += f" (gave up after {trace.attempts} attempts, HARVEST_MAX_ATTEMPTS)"
                    raise
                if retry_after is not None:
                    if retry_after > settings.retry_after_cap:
                        exc.message += (
                            f"; that is longer than the {settings.retry_after_cap:g}s cap "
                            "(HARVEST_RETRY_AFTER_CAP): not waiting"
                        )
                        raise
                    delay = max(delay, retry_after)
                if batch_deadline is not None and time.monotonic() + delay >= batch_deadline:
                    exc.message += " (not retried: the batch deadline, HARVEST_BATCH_DEADLINE, comes first)"
                    raise
                self.log.debug(
                    "%s: attempt %d failed (%s); retrying in %.2fs", trace.url, trace.attempts, exc, delay
                )
                time.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (attempt - 1))
        with self._random_lock:
            return self._random.uniform(0, ceiling)  # "full jitter": retries of many URLs spread out

    def _attempt(
        self, target: Target, extra_headers: Mapping[str, str], trace: _Trace, batch_deadline: float | None
    ) -> _Fetched:
        """One attempt: the request and every redirect hop, under one total deadline."""
        settings = self.settings
        visited = {target.url}
        deadline: float | None = None
        for _hop in range(settings.max_redirects + 1):
            trace.final_url = target.url
            address = self.guard.resolve(target)
            # Waiting for a slot (or for a pause another worker set) is bounded too.
            wait_limit = time.monotonic() + settings.retry_after_cap + settings.total_timeout
            if batch_deadline is not None and batch_deadline < wait_limit:
                wait_limit = batch_deadline
            lease = self.limits.acquire(target.host, deadline=wait_limit)
            if lease is None:
                raise Timeout(
                    f"no request slot for {target.host} in time: the host is paused (Retry-After) or busy "
                    f"with HARVEST_PER_HOST_CONCURRENCY={settings.per_host_concurrency} requests"
                    + (" until the batch deadline" if wait_limit == batch_deadline else "")
                )
            try:
                # The clock starts once a slot is held: waiting politely is not the server's fault.
                deadline = deadline or time.monotonic() + settings.total_timeout
                response = self._send(target, address, extra_headers, deadline)
                read_to_end = False
                try:
                    location = self._check_response(response, target, trace)
                    if location is None:
                        body = self._read_body(response, target, deadline) if response.status != 304 else None
                        read_to_end = True
                        return _Fetched(response.status, response.headers.get("Content-Type"), body)
                finally:
                    _finish(response, read_to_end=read_to_end)
            finally:
                self.limits.release(lease)
            try:
                joined = urllib.parse.urljoin(target.url, location)
            except ValueError as exc:  # e.g. "http://[::1/x": urljoin itself cannot split it
                raise HttpError(
                    f"server redirected to an unusable Location {location!r}: {exc}",
                    http_status=trace.http_status,
                ) from exc
            try:
                next_target = parse_target(joined)
            except Rejected as exc:
                raise Rejected(f"redirect from {target.url} to {location!r}: {exc}") from exc
            if next_target.url in visited:
                raise TooManyRedirects(
                    f"redirect loop: {target.url} redirects back to {next_target.url}, already visited",
                    http_status=trace.http_status,
                )
            visited.add(next_target.url)
            target = next_target
        raise TooManyRedirects(
            f"more than {settings.max_redirects} redirects (HARVEST_MAX_REDIRECTS); the last one went to "
            f"{target.url}",
            http_status=trace.http_status,
        )

    def _pool(self, target: Target, address: str) -> urllib3.HTTPConnectionPool:
        key = (target.scheme, address, target.port, target.host)
        pool = self._pools_by_target.get(key)
        if pool is None or pool.pool is None:  # not seen yet, or closed when the manager evicted it
            pool_kwargs = {}
            if target.scheme == "https":
                # Connect to the checked address, but speak TLS (SNI, certificate) for the real name.
                pool_kwargs = {"server_hostname": target.host, "assert_hostname": target.host}
            pool = self.pools.connection_from_host(
                address, target.port, target.scheme, pool_kwargs=pool_kwargs
            )
            # Our connection classes: the wait for response headers ends at the total deadline.
            pool.ConnectionCls = (
                _WatchedHTTPSConnection if target.scheme == "https" else _WatchedHTTPConnection
            )
            self._pools_by_target[key] = pool
        return pool

    def _send(
        self, target: Target, address: str, extra_headers: Mapping[str, str], deadline: float
    ) -> urllib3.BaseHTTPResponse:
        settings = self.settings
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"total deadline of {settings.total_timeout:g}s (HARVEST_TOTAL_TIMEOUT) passed")
        pool = self._pool(target, address)
        headers = {**self.headers, **extra_headers, "Host": target.host_header}
        if remaining >= self._full_timeout_needs:
            timeout = self._full_timeout
        else:
            timeout = urllib3.Timeout(
                connect=min(settings.connect_timeout, remaining), read=min(settings.read_timeout, remaining)
            )
        where = f"{target.host}:{target.port}" if target.host == address else f"{target.host} ({address})"
        _request_deadline.value = deadline
        try:
            return pool.urlopen(
                "GET",
                target.request_target,
                headers=headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                release_conn=False,
                timeout=timeout,
            )
        except NewConnectionError as exc:
            raise ConnectionFailed(f"could not connect to {where}: {_reason(exc)}") from exc
        except ConnectTimeoutError as exc:
            raise Timeout(
                f"no connection to {where} within {timeout.connect_timeout}s (HARVEST_CONNECT_TIMEOUT)"
            ) from exc
        except ReadTimeoutError as exc:
            raise Timeout(
                f"{where} accepted the connection but sent no response within {timeout.read_timeout}s "
                "(HARVEST_READ_TIMEOUT)"
            ) from exc
        except SSLError as exc:
            raise TlsFailed(
                f"TLS with {where} failed (handshake or certificate check): {_reason(exc)}"
            ) from exc
        except LocationParseError as exc:
            raise Rejected(f"URL cannot be requested: {exc}") from exc
        except (ProtocolError, HTTPError, OSError) as exc:
            if time.monotonic() >= deadline:  # the reaper cut a response that was too slow to start
                raise Timeout(
                    f"{where} had not sent its response headers after {settings.total_timeout:g}s "
                    "(HARVEST_TOTAL_TIMEOUT)"
                ) from exc
            raise ConnectionFailed(f"connection to {where} failed before a response: {_reason(exc)}") from exc
        finally:
            _request_deadline.value = None

    def _check_response(
        self, response: urllib3.BaseHTTPResponse, target: Target, trace: _Trace
    ) -> str | None:
        """Record the status line; return the Location of a redirect, None for a final answer."""
        status = response.status
        headers = response.headers
        trace.http_status = status
        trace.etag = headers.get("ETag")
        trace.last_modified = headers.get("Last-Modified")
        if status in REDIRECT_STATUSES:
            location = headers.get("Location")
            if not location:
                raise HttpError(
                    f"server answered {status} redirect without a Location header", http_status=status
                )
            return location
        if status in RETRYABLE_STATUSES:
            retry_after = _parse_retry_after(headers.get("Retry-After"))
            if retry_after is not None and retry_after <= self.settings.retry_after_cap:
                # Tell every worker (through Redis when configured) to leave this host alone a while.
                self.limits.pause(target.host, retry_after)
            waited = f", Retry-After {retry_after:.0f}s" if retry_after is not None else ""
            raise RetryableHttpStatus(
                f"server answered {status} {response.reason or ''}".rstrip() + waited,
                http_status=status,
                retry_after=retry_after,
            )
        if status == 304:
            return None
        if status not in SUCCESS_STATUSES:
            raise HttpError(f"server answered {status} {response.reason or ''}".rstrip(), http_status=status)
        if self.settings.respect_robots_tag:
            directive = _robots_block(headers.getlist("X-Robots-Tag"))
            if directive:
                raise Blocked(
                    f"server sent X-Robots-Tag: {directive}, which forbids using its images for AI; "
                    "not downloaded (HARVEST_RESPECT_ROBOTS_TAG=false turns the check off, only with permission)",
                    http_status=status,
                )
        declared = headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.settings.max_bytes:
            raise TooLarge(
                f"server declared {declared} bytes (Content-Length), over the "
                f"{describe_bytes(self.settings.max_bytes)} cap (HARVEST_MAX_BYTES)",
                http_status=status,
            )
        return None

    def _read_body(self, response: urllib3.BaseHTTPResponse, target: Target, deadline: float) -> _Body:
        """The body, within the size cap and the total deadline.

        Socket timeouts bound each read, not the whole body: the reaper shuts the socket down when
        the deadline passes, whichever way the body is read.
        """
        sock = getattr(getattr(response, "connection", None), "sock", None)
        # Identity was asked for: skip urllib3's decoder layer unless the server compressed anyway
        # (then the cap counts the decoded bytes).
        decode = response.headers.get("Content-Encoding", "identity").strip().lower() != "identity"
        declared = response.headers.get("Content-Length")
        expected = int(declared) if declared and declared.isdigit() and not decode else -1
        entry = _reaper.watch(deadline, sock) if sock is not None else None
        try:
            if 0 <= expected <= SPOOL_IN_MEMORY:
                return self._read_declared(response, target, expected, deadline)
            return self._read_streamed(response, target, expected, decode, deadline)
        finally:
            if entry is not None:
                _reaper.cancel(entry)

    def _read_declared(
        self, response: urllib3.BaseHTTPResponse, target: Target, expected: int, deadline: float
    ) -> _Body:
        """The common case: a declared length, already checked against the cap, read in one call.

        (Without an amount, http.client reads straight into one bytes object, in C; with one, it
        adds a buffer and a copy.)
        """
        try:
            data = response.read(decode_content=False)
        except (ProtocolError, HTTPError, OSError) as exc:
            raise self._body_failure(exc, target, deadline, received=None) from exc
        if len(data) != expected:
            short = ProtocolError(f"the server sent {len(data)} of the {expected} bytes it declared")
            raise self._body_failure(short, target, deadline, received=len(data))
        return _Body(data)

    def _read_streamed(
        self, response: urllib3.BaseHTTPResponse, target: Target, expected: int, decode: bool, deadline: float
    ) -> _Body:
        """No length, a large one, or a compressed body: chunk by chunk, counting against the cap."""
        settings = self.settings
        body = _Body()
        try:
            while True:
                if time.monotonic() >= deadline:  # a body that never ends, arriving quickly
                    raise self._body_failure(None, target, deadline, received=body.size)
                try:
                    chunk = response.read1(READ_CHUNK, decode_content=decode)
                except (ProtocolError, HTTPError, OSError) as exc:
                    raise self._body_failure(exc, target, deadline, received=body.size) from exc
                if not chunk:
                    return body
                if body.size + len(chunk) > settings.max_bytes:
                    raise TooLarge(
                        f"server sent more than {settings.max_bytes} bytes, over the "
                        f"{describe_bytes(settings.max_bytes)} cap (HARVEST_MAX_BYTES); stopped reading",
                        http_status=response.status,
                    )
                body.write(chunk)
                if body.size == expected:  # stop once it has arrived, without asking for the end
                    return body
        except BaseException:
            body.close()
            raise

    def _body_failure(
        self, exc: Exception | None, target: Target, deadline: float, *, received: int | None
    ) -> DownloadError:
        """What a read that failed (or the deadline) means for the URL, in words a person can act on."""
        settings = self.settings
        got = f" after {received} bytes" if received is not None else ""
        if time.monotonic() >= deadline - 0.01:  # the deadline passed, or the reaper cut the socket
            return Timeout(
                f"body not complete after {settings.total_timeout:g}s (HARVEST_TOTAL_TIMEOUT){got}: "
                f"{target.host} is sending too slowly or endlessly"
            )
        if isinstance(exc, ReadTimeoutError):
            return Timeout(
                f"{target.host} stopped sending the body for {settings.read_timeout:g}s "
                f"(HARVEST_READ_TIMEOUT){got}"
            )
        assert exc is not None  # without an error, only the deadline leads here
        return ConnectionFailed(f"connection to {target.host} broke during the body{got}: {_reason(exc)}")


def _finish(response: urllib3.BaseHTTPResponse, *, read_to_end: bool) -> None:
    """Give the connection back for reuse if the response was read to its end, else drop it."""
    try:
        if not read_to_end and response.status in REDIRECT_STATUSES:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) <= REDIRECT_DRAIN_LIMIT:
                response.drain_conn()  # small and bounded: worth it to keep the connection
                read_to_end = True
        if not read_to_end:
            response.close()  # unread body (error, cap, deadline): this connection cannot be reused
    except (HTTPError, OSError):
        response.close()
    response.release_conn()


def _reason(exc: BaseException) -> str:
    """The human part of a urllib3/socket error message."""
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, ProtocolError) and reason.args and isinstance(reason.args[0], str):
        return reason.args[0]  # ("Connection broken: ...", <the same error>): the text is enough
    text = str(reason)
    # urllib3 prefixes messages with the connection's repr and a stock phrase; the cause follows.
    text = _URLLIB3_PREFIX.sub("", text)
    return text.replace("Failed to establish a new connection: ", "")


_URLLIB3_PREFIX = re.compile(r"^(<[^>]*>|\w+\(host=[^)]*\)): ")


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now: either delay-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _robots_block(values: list[str]) -> str | None:
    """The X-Robots-Tag value that forbids AI use to every crawler (or to Harvest), if any."""
    for value in values:
        text = value.strip().lower()
        head, sep, rest = text.partition(":")
        head = head.strip()
        if sep and _CRAWLER_NAME.fullmatch(head) and head not in _DIRECTIVES_WITH_VALUE:
            if head not in ("harvest", "*"):
                continue  # "googlebot: noai" speaks to another crawler
            text = rest
        if {part.strip() for part in text.split(",")} & ROBOTS_DIRECTIVES:
            return value.strip()
    return None
