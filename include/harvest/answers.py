"""The policy: what a server's answer means for a URL, and whether a failed attempt is tried again.

:func:`judge` reads a response's status line and headers (never the body) and says: follow this
redirect, read the body, or fail with the :class:`~include.harvest.errors.DownloadError` that names
the status a person will see. :func:`retry_delay` decides, after a transient failure, how long to
wait before the next attempt, or that there is none.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

import urllib3

from include.harvest.errors import (
    Blocked,
    HttpError,
    RetryableError,
    RetryableHttpStatus,
    Timeout,
    TooLarge,
    describe_bytes,
)
from include.harvest.settings import FetchSettings

__all__ = [
    "REDIRECT_STATUSES",
    "RETRYABLE_STATUSES",
    "SUCCESS_STATUSES",
    "judge",
    "parse_retry_after",
    "retry_delay",
    "robots_tag_block",
]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
SUCCESS_STATUSES = frozenset({200, 203})
ROBOTS_DIRECTIVES = frozenset({"noai", "noimageai", "none"})
_DIRECTIVES_WITH_VALUE = frozenset(
    {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
)
_CRAWLER_NAME = re.compile(r"[a-z0-9_*-]+")


def judge(response: urllib3.BaseHTTPResponse, settings: FetchSettings) -> str | None:
    """The ``Location`` of a redirect, None for an answer whose body (or 304) is the result.

    Raises :class:`RetryableHttpStatus` (with the Retry-After it asked for) for a transient status,
    and a permanent error for any other failure: a non-success status, an X-Robots-Tag that forbids
    AI use, a declared length over the cap.
    """
    status = response.status
    headers = response.headers
    if status in REDIRECT_STATUSES:
        location = headers.get("Location")
        if not location:
            raise HttpError(
                f"server answered {status} redirect without a Location header", http_status=status
            )
        return location
    if status in RETRYABLE_STATUSES:
        retry_after = parse_retry_after(headers.get("Retry-After"))
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
    if settings.respect_robots_tag:
        directive = robots_tag_block(headers.getlist("X-Robots-Tag"))
        if directive:
            raise Blocked(
                f"server sent X-Robots-Tag: {directive}, which forbids using its images for AI; "
                "not downloaded (HARVEST_RESPECT_ROBOTS_TAG=false turns the check off, only with permission)",
                http_status=status,
            )
    declared = headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > settings.max_bytes:
        raise TooLarge(
            f"server declared {declared} bytes (Content-Length), over the "
            f"{describe_bytes(settings.max_bytes)} cap (HARVEST_MAX_BYTES)",
            http_status=status,
        )
    return None


def retry_delay(
    exc: RetryableError,
    attempts: int,
    settings: FetchSettings,
    *,
    batch_deadline: float | None,
    jitter: Callable[[float], float],
) -> float | None:
    """Seconds to wait before attempt ``attempts + 1``, or None (the reason added to ``exc``).

    Exponential back-off with "full jitter" (``jitter(ceiling)`` draws in [0, ceiling]) so retries
    of many URLs spread out, never shorter than a Retry-After within the cap.
    """
    if attempts >= settings.max_attempts:
        exc.message += f" (gave up after {attempts} attempts, HARVEST_MAX_ATTEMPTS)"
        return None
    if isinstance(exc, Timeout) and attempts >= settings.timeout_attempts:
        exc.message += f" (gave up after {attempts} attempts that timed out, HARVEST_TIMEOUT_ATTEMPTS)"
        return None
    delay = jitter(min(settings.backoff_max, settings.backoff_base * 2 ** (attempts - 1)))
    retry_after = exc.retry_after if isinstance(exc, RetryableHttpStatus) else None
    if retry_after is not None:
        if retry_after > settings.retry_after_cap:
            exc.message += f"; that is longer than the {settings.retry_after_cap:g}s cap (HARVEST_RETRY_AFTER_CAP): not waiting"
            return None
        delay = max(delay, retry_after)
    if batch_deadline is not None and time.monotonic() + delay >= batch_deadline:
        exc.message += " (not retried: the batch deadline, HARVEST_BATCH_DEADLINE, comes first)"
        return None
    return delay


def parse_retry_after(value: str | None) -> float | None:
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


def robots_tag_block(values: list[str]) -> str | None:
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
