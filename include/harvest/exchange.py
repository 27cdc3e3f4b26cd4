"""One URL over HTTP: attempts, each a request and its redirect hops, until an answer is final.

For every hop the host is resolved once and the address checked (:mod:`.guard`), a per-host slot
taken (:mod:`.hostlimits`), the request sent to *that* address (:mod:`.connections`) and the
answer judged (:mod:`.answers`); a redirect's target is checked like the first URL. A transient
failure is retried after a back-off (:func:`.answers.retry_delay`).
"""

from __future__ import annotations

import logging
import random
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

import urllib3

from include.harvest.answers import REDIRECT_STATUSES, judge, retry_delay
from include.harvest.bodies import Body, finish, read_body
from include.harvest.connections import Connections
from include.harvest.errors import (
    HttpError,
    Rejected,
    RetryableError,
    RetryableHttpStatus,
    Timeout,
    TooManyRedirects,
)
from include.harvest.guard import AddressGuard, parse_target
from include.harvest.hostlimits import HostLimits
from include.harvest.robots import RobotsPolicy
from include.harvest.settings import FetchSettings
from include.harvest.urls import Target

__all__ = ["Exchange", "Fetched", "Trace"]

IMAGE_ACCEPT = "image/avif,image/webp,image/png,image/jpeg,image/gif,image/*;q=0.8,*/*;q=0.5"


@dataclass
class Fetched:
    """A completed exchange: the final response's status and type, and its body if any."""

    http_status: int
    content_type: str | None
    body: Body | None = None


@dataclass
class Trace:
    """What is known about a URL so far, kept when an attempt fails half-way."""

    url: str
    final_url: str | None = None
    http_status: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    attempts: int = 0


class Exchange:
    """The HTTP side of a batch: guard, per-host limits and connection pools, shared by its threads."""

    def __init__(
        self,
        settings: FetchSettings,
        *,
        limits: HostLimits,
        log: logging.Logger,
        robots: RobotsPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.limits = limits
        self.log = log
        self.robots = robots  # None: robots.txt is not asked (off, or this exchange fetches it)
        self.guard = AddressGuard(enabled=settings.block_private_addresses, allow_hosts=settings.allow_hosts)
        self.connections = Connections(
            settings,
            {
                "User-Agent": settings.user_agent,
                "Accept": "*/*" if settings.accept_any_content else IMAGE_ACCEPT,
                # Compressed bodies would make the size cap count the wrong bytes and invite zip bombs.
                "Accept-Encoding": "identity",
            },
        )
        rng = random.Random()
        self._jitter = lambda ceiling: rng.uniform(0, ceiling)  # one C call: safe across threads

    def close(self) -> None:
        self.connections.close()
        self.limits.flush()

    def download(
        self, target: Target, extra_headers: Mapping[str, str], trace: Trace, *, batch_deadline: float | None
    ) -> Fetched:
        """Run attempts until one succeeds, a permanent error occurs, or retries are exhausted."""
        while True:
            trace.attempts += 1
            try:
                return self._attempt(target, extra_headers, trace, batch_deadline)
            except RetryableError as exc:
                delay = retry_delay(
                    exc, trace.attempts, self.settings, batch_deadline=batch_deadline, jitter=self._jitter
                )
                if delay is None:
                    raise
                self.log.debug(
                    "%s: attempt %d failed (%s); retrying in %.2fs", trace.url, trace.attempts, exc, delay
                )
                time.sleep(delay)

    def _attempt(
        self, target: Target, extra_headers: Mapping[str, str], trace: Trace, batch_deadline: float | None
    ) -> Fetched:
        """One attempt: the request and every redirect hop, under one total deadline."""
        settings = self.settings
        visited = {target.url}
        deadline: float | None = None
        for _hop in range(settings.max_redirects + 1):
            trace.final_url = target.url
            address = self.guard.resolve(target)
            # Every hop's origin is asked, once per origin and TTL (cached): a redirect to another
            # host is governed by that host's robots.txt.
            crawl_delay = self.robots.check(target).crawl_delay if self.robots is not None else None
            # Waiting for a slot (or for a pause another worker set) is bounded too.
            wait_limit = time.monotonic() + settings.retry_after_cap + settings.total_timeout
            if batch_deadline is not None and batch_deadline < wait_limit:
                wait_limit = batch_deadline
            lease = self.limits.acquire(target.host, deadline=wait_limit, crawl_delay=crawl_delay)
            if lease is None:
                busy = (
                    f"one request every {crawl_delay:g} s (its robots.txt Crawl-delay)"
                    if crawl_delay
                    else f"HARVEST_PER_HOST_CONCURRENCY={settings.per_host_concurrency} requests"
                )
                raise Timeout(
                    f"no request slot for {target.host} in time: the host is paused (Retry-After) or busy "
                    f"with {busy}" + (" until the batch deadline" if wait_limit == batch_deadline else "")
                )
            try:
                # The clock starts once a slot is held: waiting politely is not the server's fault.
                deadline = deadline or time.monotonic() + settings.total_timeout
                response = self.connections.send(target, address, extra_headers, deadline)
                read_to_end = False
                try:
                    location = self._judge(response, target, trace)
                    if location is None:
                        body = (
                            read_body(response, target, settings, deadline)
                            if response.status != 304
                            else None
                        )
                        read_to_end = True
                        return Fetched(response.status, response.headers.get("Content-Type"), body)
                finally:
                    finish(
                        response, read_to_end=read_to_end, is_redirect=response.status in REDIRECT_STATUSES
                    )
            finally:
                self.limits.release(lease)
            target = self._redirect_target(target, location, trace, visited)
        raise TooManyRedirects(
            f"more than {settings.max_redirects} redirects (HARVEST_MAX_REDIRECTS); the last one went to "
            f"{target.url}",
            http_status=trace.http_status,
        )

    def _judge(self, response: urllib3.BaseHTTPResponse, target: Target, trace: Trace) -> str | None:
        """Record the status line and validators, then :func:`.answers.judge` the answer."""
        headers = response.headers
        trace.http_status = response.status
        trace.etag = headers.get("ETag")
        trace.last_modified = headers.get("Last-Modified")
        try:
            return judge(response, self.settings)
        except RetryableHttpStatus as exc:
            if exc.retry_after is not None and exc.retry_after <= self.settings.retry_after_cap:
                # Tell every worker (through Redis when configured) to leave this host alone a while.
                self.limits.pause(target.host, exc.retry_after)
            raise

    @staticmethod
    def _redirect_target(target: Target, location: str, trace: Trace, visited: set[str]) -> Target:
        """The checked target of a redirect, never one already visited in this attempt."""
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
        return next_target
