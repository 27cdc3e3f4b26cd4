"""One URL start to finish: the download (:mod:`.exchange`), the content check (:mod:`.content`),
the blob (:mod:`.storage`), and the :class:`~include.harvest.models.Result` that records it.

Whatever happens to the URL becomes its result; only a failure of the storage itself raises (it is
not the URL's fault, and the batch task is retried as a whole).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from include.harvest.content import inspect_content
from include.harvest.errors import DownloadError, HttpError
from include.harvest.exchange import Exchange, Fetched, Trace
from include.harvest.guard import parse_target
from include.harvest.hostlimits import HostLimits
from include.harvest.models import Result, Status, UrlItem
from include.harvest.robots import MAX_ROBOTS_BYTES, RobotsFile, RobotsPolicy
from include.harvest.settings import FetchSettings
from include.harvest.storage import ContentAddressedStore

__all__ = ["Downloader"]


class Downloader:
    """Turns URLs into results for one batch; its methods are called from many threads at once."""

    def __init__(self, settings: FetchSettings, *, limits: HostLimits, log: logging.Logger) -> None:
        self.settings = settings
        self.log = log
        self._robots_exchange: Exchange | None = None
        robots: RobotsPolicy | None = None
        if settings.respect_robots_txt:
            self._robots_exchange = Exchange(_robots_settings(settings), limits=limits, log=log)
            robots = RobotsPolicy(settings, self._fetch_robots)
        self.exchange = Exchange(settings, limits=limits, log=log, robots=robots)
        self._bugs_logged: set[type[BaseException]] = set()  # exception types whose traceback is logged
        self._bugs_lock = threading.Lock()

    def close(self) -> None:
        self.exchange.close()
        if self._robots_exchange is not None:
            self._robots_exchange.close()

    def _fetch_robots(self, url: str) -> RobotsFile:
        """GET a robots.txt through the guarded client (guard, timeouts, redirects, retries, host
        slots). A status other than success raises, with its ``http_status``, which the policy reads."""
        assert self._robots_exchange is not None
        fetched = self._robots_exchange.download(parse_target(url), {}, Trace(url), batch_deadline=None)
        if fetched.body is None:  # not asked conditionally: only a 304 comes without a body
            return RobotsFile(fetched.http_status)
        return RobotsFile(fetched.http_status, fetched.body.read_all())

    def fetch_one(
        self,
        item: UrlItem,
        store: ContentAddressedStore,
        previous: Result | None,
        batch_deadline: float | None,
    ) -> Result:
        """The result of ``item``'s URL, carrying the item's line and metadata."""
        outcome = _Outcome(item, time.monotonic())
        if batch_deadline is not None and outcome.started >= batch_deadline:
            return outcome.result(
                Status.SKIPPED,
                error=f"not started before the batch deadline of {self.settings.batch_deadline:g}s "
                "(HARVEST_BATCH_DEADLINE): it will be fetched by the next run",
            )
        fetched: Fetched | None = None
        try:
            target = parse_target(item.url)
            conditional = self._conditional_headers(previous)
            fetched = self.exchange.download(
                target, conditional, outcome.trace, batch_deadline=batch_deadline
            )
            if fetched.http_status == 304:
                if previous is None:
                    raise HttpError("server answered 304 Not Modified to a request that was not conditional")
                return outcome.not_modified(previous)
            return self._store(fetched, store, outcome)
        except DownloadError as exc:
            self.log.debug("%s: %s: %s", item.url, exc.status, exc)
            return outcome.result(exc.status, error=str(exc))
        except OSError:
            raise  # storage failure: not this URL's fault (see module docstring)
        except Exception as exc:  # a bug must not cost the other URLs of the batch their results
            self._log_bug(item.url, exc)
            return outcome.result(
                Status.INTERNAL_ERROR,
                error=f"internal error ({type(exc).__name__}: {exc}); this is a bug in Harvest, "
                "please report it with the task log",
            )
        finally:
            if fetched is not None and fetched.body is not None:
                fetched.body.close()

    def _store(self, fetched: Fetched, store: ContentAddressedStore, outcome: _Outcome) -> Result:
        """Check that the body is an acceptable image, then store it by its SHA-256."""
        body = fetched.body
        assert body is not None
        info = inspect_content(
            body.file,
            body.size,
            max_pixels=self.settings.max_pixels,
            accept_any_content=self.settings.accept_any_content,
            allow_svg=self.settings.allow_svg,
            declared_type=fetched.content_type,
        )
        sha256 = body.hasher.hexdigest()
        return outcome.result(
            Status.OK,
            content_type=info.content_type,
            bytes=body.size,
            sha256=sha256,
            width=info.width,
            height=info.height,
            storage_uri=store.put(body.file, sha256, info.extension),
        )

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


def _robots_settings(settings: FetchSettings) -> FetchSettings:
    """How a robots.txt is fetched: any content type, no X-Robots-Tag check, a larger cap than the
    500 KiB that are read (a longer file is cut by the policy, a far longer one is not a robots.txt)."""
    return settings.replace(
        max_bytes=ROBOTS_FETCH_CAP,
        accept_any_content=True,
        respect_robots_tag=False,
        conditional_requests=False,
    )


# A robots.txt body larger than this makes the host unreachable for robots.txt purposes (blocked).
ROBOTS_FETCH_CAP = 2 * MAX_ROBOTS_BYTES


class _Outcome:
    """Builds the one :class:`Result` of an item from what its trace knows."""

    def __init__(self, item: UrlItem, started: float) -> None:
        self.item = item
        self.started = started
        self.trace = Trace(item.url)

    def result(self, status: Status, **fields: object) -> Result:
        trace = self.trace
        return Result(
            url=self.item.url,
            status=status,
            http_status=trace.http_status,
            final_url=trace.final_url,
            attempts=trace.attempts,
            elapsed_ms=int((time.monotonic() - self.started) * 1000),
            etag=trace.etag,
            last_modified=trace.last_modified,
            fetched_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            line=self.item.line,
            meta=self.item.meta,
            **fields,  # type: ignore[arg-type]
        )

    def not_modified(self, previous: Result) -> Result:
        """A 304: the stored copy is current; its blob and validators are carried over."""
        self.trace.etag = self.trace.etag or previous.etag
        self.trace.last_modified = self.trace.last_modified or previous.last_modified
        return self.result(
            Status.NOT_MODIFIED,
            content_type=previous.content_type,
            bytes=previous.bytes,
            sha256=previous.sha256,
            width=previous.width,
            height=previous.height,
            storage_uri=previous.storage_uri,
        )
