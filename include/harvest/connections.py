"""Sending one HTTP request to a checked address: pooled keep-alive connections, timeouts, the total
deadline, and urllib3's errors turned into :class:`~include.harvest.errors.DownloadError` s.

:class:`Connections` keeps one urllib3 pool per (scheme, address, port, host name) and sends a GET
*to the address the guard checked* while speaking TLS (SNI, certificate) for the real name. Socket
timeouts bound each read, not a whole exchange, so :class:`DeadlineReaper` shuts down a socket whose
request outlived its total deadline, whichever way it is stuck.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping

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

from include.harvest.errors import ConnectionFailed, Rejected, Timeout, TlsFailed
from include.harvest.settings import FetchSettings
from include.harvest.sockets import KernelTimeoutSocket
from include.harvest.urls import Target

__all__ = ["Connections", "DeadlineReaper", "reaper", "reason"]


class DeadlineReaper:
    """Shuts down sockets whose request outlived its total deadline.

    Socket timeouts bound each read, not a whole exchange: a server dripping its status line and
    headers a byte at a time would never trip them. One daemon thread checks the watched sockets
    twice a second; a request costs a heap push under an uncontended lock, and a flag.

    A finished request's entry stays in the heap, emptied, until its deadline would have come (a
    heap cannot drop an entry from the middle). At hundreds of requests a second and deadlines of a
    minute that is tens of thousands of entries; so when most of the heap is finished requests, the
    thread rebuilds it from the live ones: memory follows the requests in flight, not the rate.
    """

    PRECISION = 0.5  # seconds: deadlines are tens of seconds, no need to wake for each one
    COMPACT_ABOVE = 1024  # entries; below this the finished ones cost nothing worth a rebuild

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, list[object]]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, sock: object) -> list[object]:
        entry: list[object] = [sock]  # emptied by cancel(): nothing to shut down any more
        with self._lock:
            heapq.heappush(self._heap, (deadline, next(self._order), entry))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="harvest-deadlines", daemon=True)
                self._thread.start()
        return entry

    @staticmethod
    def cancel(entry: list[object]) -> None:
        entry.clear()

    def __len__(self) -> int:
        """Entries in the heap, finished requests' included."""
        return len(self._heap)

    def _run(self) -> None:
        while True:
            time.sleep(self.PRECISION)
            for sock in self.expire(time.monotonic()):
                with contextlib.suppress(OSError, AttributeError):
                    sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]

    def expire(self, now: float) -> list[object]:
        """Take the sockets whose deadline is past out of the heap (and drop finished entries when
        they are most of it); return the sockets to shut down."""
        expired: list[object] = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                expired.extend(heapq.heappop(self._heap)[2])
            if len(self._heap) > self.COMPACT_ABOVE:
                live = [item for item in self._heap if item[2]]
                if len(live) * 2 < len(self._heap):
                    heapq.heapify(live)
                    self._heap = live
        return expired


reaper = DeadlineReaper()
_request_deadline = threading.local()  # the total deadline of the request this thread is sending


def _response_within_deadline(
    sock: object, get_response: Callable[[], urllib3.response.HTTPResponse]
) -> urllib3.response.HTTPResponse:
    deadline = getattr(_request_deadline, "value", None)
    if deadline is None or sock is None:
        return get_response()
    entry = reaper.watch(deadline, sock)
    try:
        return get_response()
    finally:
        reaper.cancel(entry)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    """An urllib3 connection whose wait for the response headers ends at the total deadline, and
    whose socket has its timeouts kept by the kernel (:mod:`.sockets`: a read is one system call,
    not a poll and a read)."""

    def _new_conn(self) -> socket.socket:
        return KernelTimeoutSocket.adopt(super()._new_conn())

    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        return _response_within_deadline(self.sock, super().getresponse)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    """The HTTPS twin of :class:`_WatchedHTTPConnection`, with Python's own socket timeouts (TLS
    cannot run over a :class:`~include.harvest.sockets.KernelTimeoutSocket`)."""

    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        return _response_within_deadline(self.sock, super().getresponse)


class Connections:
    """The keep-alive connection pools of one batch, and the step that sends one request."""

    def __init__(self, settings: FetchSettings, headers: Mapping[str, str]) -> None:
        self.settings = settings
        self.headers = dict(headers)
        self._manager = urllib3.PoolManager(
            num_pools=max(64, settings.concurrency * 2),
            maxsize=max(settings.per_host_concurrency, 1),
            block=False,
            ca_certs=settings.ca_bundle,  # None: the system's trust store
        )
        self._pools: dict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = {}
        # The common case (a fresh attempt) uses the same Timeout: build it once.
        self._full_timeout = urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout)
        self._full_timeout_needs = max(settings.connect_timeout, settings.read_timeout)

    def close(self) -> None:
        self._manager.clear()

    def _pool(self, target: Target, address: str) -> urllib3.HTTPConnectionPool:
        key = (target.scheme, address, target.port, target.host)
        pool = self._pools.get(key)
        if pool is None or pool.pool is None:  # not seen yet, or closed when the manager evicted it
            pool_kwargs = {}
            if target.scheme == "https":
                # Connect to the checked address, but speak TLS (SNI, certificate) for the real name.
                pool_kwargs = {"server_hostname": target.host, "assert_hostname": target.host}
            pool = self._manager.connection_from_host(
                address, target.port, target.scheme, pool_kwargs=pool_kwargs
            )
            # Our connection classes: the wait for response headers ends at the total deadline.
            pool.ConnectionCls = (
                _WatchedHTTPSConnection if target.scheme == "https" else _WatchedHTTPConnection
            )
            self._pools[key] = pool
        return pool

    def send(
        self, target: Target, address: str, extra_headers: Mapping[str, str], deadline: float
    ) -> urllib3.BaseHTTPResponse:
        """GET ``target`` from ``address``; the response's body is left unread."""
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
            raise ConnectionFailed(f"could not connect to {where}: {reason(exc)}") from exc
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
                f"TLS with {where} failed (handshake or certificate check): {reason(exc)}"
            ) from exc
        except LocationParseError as exc:
            raise Rejected(f"URL cannot be requested: {exc}") from exc
        except (ProtocolError, HTTPError, OSError) as exc:
            if time.monotonic() >= deadline:  # the reaper cut a response that was too slow to start
                raise Timeout(
                    f"{where} had not sent its response headers after {settings.total_timeout:g}s "
                    "(HARVEST_TOTAL_TIMEOUT)"
                ) from exc
            raise ConnectionFailed(f"connection to {where} failed before a response: {reason(exc)}") from exc
        finally:
            _request_deadline.value = None


def reason(exc: BaseException) -> str:
    """The human part of a urllib3/socket error message."""
    cause = getattr(exc, "reason", None) or exc
    if isinstance(cause, ProtocolError) and cause.args and isinstance(cause.args[0], str):
        return cause.args[0]  # ("Connection broken: ...", <the same error>): the text is enough
    # urllib3 prefixes messages with the connection's repr and a stock phrase; the cause follows.
    text = _URLLIB3_PREFIX.sub("", str(cause))
    return text.replace("Failed to establish a new connection: ", "")


_URLLIB3_PREFIX = re.compile(r"^(<[^>]*>|\w+\(host=[^)]*\)): ")
