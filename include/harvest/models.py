"""The records Harvest passes between its parts.

A :class:`Result` is the outcome of one URL. It is small (never the bytes), JSON-friendly through
:meth:`Result.to_record`, and is what a batch task hands to the reduce and what becomes one row of
``harvest.downloads``.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["Result", "Status", "TERMINAL_OK", "UrlItem"]


class Status(enum.StrEnum):
    """Every outcome a URL can have. Each non-ok status comes with an error text."""

    OK = "ok"  # fetched, validated and stored
    NOT_MODIFIED = "not_modified"  # 304 to a conditional request: the stored blob is still current
    REJECTED = "rejected"  # the URL itself is unusable (syntax, scheme, control characters)
    BLOCKED = "blocked"  # refused by the address guard (SSRF) or an X-Robots-Tag directive
    HTTP_ERROR = "http_error"  # the server answered with a non-success status
    TIMEOUT = "timeout"  # connect, read or total deadline exceeded
    CONNECTION_ERROR = "connection_error"  # DNS failure, refused, reset, TLS failure
    TOO_LARGE = "too_large"  # body over the size cap (declared or counted)
    TOO_MANY_REDIRECTS = "too_many_redirects"  # redirect chain longer than the cap, or a loop
    INVALID_CONTENT = "invalid_content"  # not an acceptable image: wrong type, truncated, bomb
    SKIPPED = "skipped"  # not attempted: the batch deadline (HARVEST_BATCH_DEADLINE) had passed
    INTERNAL_ERROR = "internal_error"  # a bug in Harvest, not the server's fault: the error names it


TERMINAL_OK = frozenset({Status.OK, Status.NOT_MODIFIED})


@dataclass(frozen=True, slots=True)
class UrlItem:
    """A URL to fetch, with where it came from (line in the list) and any extra CSV columns."""

    url: str
    line: int | None = None
    meta: dict[str, Any] | None = None


@dataclass(slots=True)
class Result:
    """The outcome of one URL: exactly one per URL in a batch."""

    url: str
    status: Status
    error: str | None = None
    http_status: int | None = None
    final_url: str | None = None
    content_type: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    storage_uri: str | None = None
    attempts: int = 0
    elapsed_ms: int = 0
    etag: str | None = None
    last_modified: str | None = None
    fetched_at: str | None = None  # ISO 8601, UTC
    line: int | None = None  # line number in the source list, when known
    meta: dict[str, Any] | None = None  # extra columns carried from a CSV source

    @property
    def ok(self) -> bool:
        return self.status in TERMINAL_OK

    def to_record(self) -> dict[str, Any]:
        """A plain dict fit for JSON (XCom, result files)."""
        record = dataclasses.asdict(self)
        record["status"] = str(self.status)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Result:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in record.items() if k in fields}
        values["status"] = Status(values["status"])
        return cls(**values)
