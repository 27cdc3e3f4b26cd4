"""What the Harvest page in the Airflow UI shows: queries on the results DB and their view models.

Plain Python on a connection the caller opens (the plugin opens it from the ``harvest_db``
Connection; psycopg2 and psycopg 3 both work, rows as tuples). Nothing here renders HTML: the
plugin's templates do, with the numbers and labels prepared here and the charts of
:mod:`include.harvest.charts`.

Every query reads one run key (primary key prefix of ``harvest.downloads``), the failed rows of
one run key (partial index ``downloads_failed`` of migration 0002) or the newest runs
(``runs_finished_at``), so its cost grows with the run shown, never with the table. Measured on a
100,000-URL run inside a 1,000,000-row table: see the README.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from include.harvest.models import TERMINAL_OK, Status
from include.harvest.results import _FETCHED as FETCHED_SQL  # one definition of "a request was made"

__all__ = [
    "DEFAULT_RECENT_RUNS",
    "FAILED_PAGE_SIZE",
    "FAILED_STATUSES",
    "STATUS_ORDER",
    "FailedPage",
    "FailedUrl",
    "HostFailures",
    "HostLatency",
    "HostReport",
    "RunRow",
    "failed_urls",
    "failed_urls_csv",
    "failed_urls_text",
    "find_run",
    "format_bytes",
    "format_duration",
    "host_report",
    "iter_failed_urls",
    "make_read_only",
    "recent_runs",
]

DEFAULT_RECENT_RUNS = 30
MAX_RECENT_RUNS = 500
FAILED_PAGE_SIZE = 50
DEFAULT_HOSTS = 10
# A report query that takes longer than this is cancelled: the API server's threads are shared.
STATEMENT_TIMEOUT_MS = 15_000

STATUS_ORDER: tuple[str, ...] = tuple(str(status) for status in Status)
FAILED_STATUSES: tuple[str, ...] = tuple(str(s) for s in Status if s not in TERMINAL_OK)

# The host[:port] of a stored URL (normalised by include.harvest.urls; rejected lines may be
# anything): after "://", before the path, query or fragment, without user info. NULL when the
# text has no authority.
# split_part rather than a regular expression: 3x faster over a 100,000-URL run (120 vs 410 ms).
_HOST_SQL = (
    "nullif(split_part(split_part(split_part(split_part(split_part(url, '://', 2), '/', 1),"
    " '?', 1), '#', 1), '@', -1), '')"
)
# Spelled out (not a parameter) so the planner can match the partial index downloads_failed.
_FAILED_SQL = "status NOT IN ('ok', 'not_modified')"
NO_HOST = "(not a URL)"

_RUN_COLUMNS = """
    run_key, dag_run_id, run_type, logical_date, source, outcome, reason, urls_total, status_counts,
    bytes_total, batches, started_at, finished_at, duration_s, urls_per_s, p50_ms, p95_ms
"""


@dataclass(frozen=True, slots=True)
class RunRow:
    """One row of ``harvest.runs``: what the latest run of a run key recorded."""

    run_key: str
    dag_run_id: str
    run_type: str | None
    logical_date: datetime | None
    source: str
    outcome: str
    reason: str | None
    urls_total: int
    counts: dict[str, int]
    bytes_total: int
    batches: int
    started_at: datetime | None
    finished_at: datetime
    duration_s: float | None
    urls_per_s: float | None
    p50_ms: int | None
    p95_ms: int | None

    @property
    def failed(self) -> int:
        """URLs that ended in any status but ``ok`` and ``not_modified``."""
        return sum(n for status, n in self.counts.items() if status in FAILED_STATUSES)

    @property
    def failure_rate(self) -> float | None:
        """Failed URLs as a share of all URLs (0..1), None for a run without URLs."""
        return self.failed / self.urls_total if self.urls_total else None

    @property
    def statuses(self) -> list[tuple[str, int]]:
        """(status, count) for every status present, in the documented order."""
        return sorted(
            ((s, n) for s, n in self.counts.items() if n),
            key=lambda item: _status_rank(item[0]),
        )

    @property
    def run_type_label(self) -> str:
        """``scheduled``, ``manual``, ``backfill`` or ``asset``, however the run type was written
        (Airflow's enum value, or its ``DagRunType.MANUAL`` string form)."""
        value = (self.run_type or "").strip().lower().removeprefix("dagruntype.")
        return {"asset_triggered": "asset", "": "unknown"}.get(value, value)

    @property
    def duration_label(self) -> str:
        return format_duration(self.duration_s)

    @property
    def bytes_label(self) -> str:
        return format_bytes(self.bytes_total)

    @property
    def rate_label(self) -> str:
        return "–" if self.urls_per_s is None else f"{self.urls_per_s:,.1f}"


@dataclass(frozen=True, slots=True)
class HostFailures:
    """A host with failed URLs in a run: how many of its URLs failed, and the commonest failure."""

    host: str
    failures: int
    urls: int
    status: str  # the commonest failing status of this host
    sample_error: str | None  # the commonest error text of that status
    sample_url: str  # a URL that failed with it


@dataclass(frozen=True, slots=True)
class HostLatency:
    """Latency of the requests a run made to one host (only URLs that were fetched)."""

    host: str
    fetched: int
    p50_ms: int
    p95_ms: int
    max_ms: int


@dataclass(frozen=True, slots=True)
class HostReport:
    failing: list[HostFailures]  # most failed URLs first
    slowest: list[HostLatency]  # highest p95 first


@dataclass(frozen=True, slots=True)
class FailedUrl:
    url: str
    status: str
    http_status: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class FailedPage:
    """One page of a run's failed URLs, ordered by status then URL."""

    items: list[FailedUrl]
    page: int
    per_page: int
    total: int
    status: str | None  # the status filter, if any

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def first_index(self) -> int:
        """1-based position of the first item on this page (0 when empty)."""
        return (self.page - 1) * self.per_page + 1 if self.items else 0


def make_read_only(conn: Any, *, statement_timeout_ms: int = STATEMENT_TIMEOUT_MS) -> None:
    """Make the session read-only with a statement timeout: the report never writes, never hangs."""
    with conn.cursor() as cur:
        cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        cur.execute("SELECT set_config('statement_timeout', %s, false)", (str(int(statement_timeout_ms)),))
    conn.commit()


def recent_runs(conn: Any, *, limit: int = DEFAULT_RECENT_RUNS) -> list[RunRow]:
    """The ``limit`` most recently finished runs, newest first (index ``runs_finished_at``)."""
    limit = max(1, min(int(limit), MAX_RECENT_RUNS))
    return _runs(conn, "ORDER BY finished_at DESC, run_key LIMIT %s", (limit,))


def find_run(conn: Any, dag_run_id: str) -> RunRow | None:
    """The run that the DAG run ``dag_run_id`` recorded (index ``runs_dag_run_id``), if it did.

    None when that DAG run has not recorded yet, or when a later run of the same run key (a date
    run again) has replaced its recording.
    """
    found = _runs(conn, "WHERE dag_run_id = %s ORDER BY finished_at DESC LIMIT 1", (dag_run_id,))
    return found[0] if found else None


def _runs(conn: Any, clause: str, params: tuple[Any, ...]) -> list[RunRow]:
    """``harvest.runs`` rows selected by ``clause``, as view models; the read ends its transaction."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT {_RUN_COLUMNS} FROM harvest.runs {clause}", params)
        rows = cur.fetchall()
    conn.commit()
    return [_run_row(row) for row in rows]


def host_report(conn: Any, run_key: str, *, limit: int = DEFAULT_HOSTS) -> HostReport:
    """The hosts of a run with the most failed URLs, and those with the slowest requests.

    One pass over the run's rows groups them by host; the commonest failure of each failing host
    then comes from the run's failed rows only (index ``downloads_failed``).
    """
    hosts_sql = f"""
    WITH rows AS (
        SELECT coalesce({_HOST_SQL}, %(no_host)s) AS host, status, elapsed_ms, {FETCHED_SQL} AS fetched
        FROM harvest.downloads
        WHERE run_key = %(run_key)s
    ), hosts AS (
        SELECT host, count(*) AS urls,
            count(*) FILTER (WHERE {_FAILED_SQL}) AS failures,
            count(*) FILTER (WHERE fetched) AS fetched,
            round(percentile_cont(0.5) WITHIN GROUP (ORDER BY elapsed_ms) FILTER (WHERE fetched)) AS p50,
            round(percentile_cont(0.95) WITHIN GROUP (ORDER BY elapsed_ms) FILTER (WHERE fetched)) AS p95,
            max(elapsed_ms) FILTER (WHERE fetched) AS max_ms
        FROM rows GROUP BY host
    ), failing AS (
        SELECT 'failing' AS kind, * FROM hosts WHERE failures > 0
        ORDER BY failures DESC, host LIMIT %(limit)s
    ), slowest AS (
        SELECT 'slowest' AS kind, * FROM hosts WHERE fetched > 0
        ORDER BY p95 DESC, max_ms DESC, host LIMIT %(limit)s
    )
    SELECT * FROM failing UNION ALL SELECT * FROM slowest
    """
    samples_sql = f"""
    WITH failed AS (
        SELECT coalesce({_HOST_SQL}, %(no_host)s) AS host, status, error, url
        FROM harvest.downloads
        WHERE run_key = %(run_key)s AND {_FAILED_SQL}
    ), per_error AS (
        SELECT host, status, error, count(*) AS n, min(url) AS sample_url
        FROM failed WHERE host = ANY(%(hosts)s) GROUP BY host, status, error
    )
    SELECT DISTINCT ON (host) host, status, error, sample_url
    FROM per_error ORDER BY host, n DESC, status, error
    """
    params: dict[str, Any] = {"run_key": run_key, "limit": max(1, int(limit)), "no_host": NO_HOST}
    with conn.cursor() as cur:
        cur.execute(hosts_sql, params)
        rows = cur.fetchall()
        failing_rows = [r for r in rows if r[0] == "failing"]
        samples: dict[str, tuple[str, str | None, str]] = {}
        if failing_rows:
            cur.execute(samples_sql, {**params, "hosts": [r[1] for r in failing_rows]})
            samples = {host: (status, error, url) for host, status, error, url in cur.fetchall()}
    conn.commit()
    failing = []
    for _, host, urls, failures, *_rest in failing_rows:
        status, error, url = samples[host]
        failing.append(
            HostFailures(
                host=host,
                failures=int(failures),
                urls=int(urls),
                status=status,
                sample_error=error,
                sample_url=url,
            )
        )
    slowest = [
        HostLatency(host=host, fetched=int(fetched), p50_ms=int(p50), p95_ms=int(p95), max_ms=int(max_ms))
        for kind, host, _urls, _failures, fetched, p50, p95, max_ms in rows
        if kind == "slowest"
    ]
    return HostReport(failing=failing, slowest=slowest)


def failed_urls(
    conn: Any,
    run_key: str,
    *,
    page: int = 1,
    per_page: int = FAILED_PAGE_SIZE,
    status: str | None = None,
) -> FailedPage:
    """One page of a run's failed URLs with their error texts (index ``downloads_failed``).

    ``status`` narrows the list to one failing status; an unknown or non-failing status gives an
    empty page rather than an error.
    """
    per_page = max(1, min(int(per_page), 1000))
    page = max(1, int(page))
    if status is not None and status not in FAILED_STATUSES:
        return FailedPage(items=[], page=1, per_page=per_page, total=0, status=status)
    where, params = _failed_filter(run_key, status)
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM harvest.downloads WHERE {where}", params)
        (total,) = cur.fetchone()
        pages = max(1, math.ceil(total / per_page))
        page = min(page, pages)
        cur.execute(
            f"""SELECT url, status, http_status, error FROM harvest.downloads WHERE {where}
            ORDER BY status, url LIMIT %(limit)s OFFSET %(offset)s""",
            {**params, "limit": per_page, "offset": (page - 1) * per_page},
        )
        rows = cur.fetchall()
    conn.commit()
    items = [FailedUrl(url=u, status=s, http_status=h, error=e) for u, s, h, e in rows]
    return FailedPage(items=items, page=page, per_page=per_page, total=int(total), status=status)


def iter_failed_urls(conn: Any, run_key: str, *, status: str | None = None) -> Iterator[FailedUrl]:
    """Every failed URL of a run, streamed from a server-side cursor (memory stays flat)."""
    if status is not None and status not in FAILED_STATUSES:
        return
    where, params = _failed_filter(run_key, status)
    with conn.cursor(name="harvest_failed_urls") as cur:
        cur.itersize = 5000
        cur.execute(
            f"SELECT url, status, http_status, error FROM harvest.downloads WHERE {where} ORDER BY status, url",
            params,
        )
        for url, st, http_status, error in cur:
            yield FailedUrl(url=url, status=st, http_status=http_status, error=error)
    conn.commit()


def failed_urls_csv(rows: Iterable[FailedUrl]) -> Iterator[str]:
    """CSV with a header (``url,status,http_status,error``): a Harvest list file as it is
    (its ``url`` column is read, the others kept as metadata)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["url", "status", "http_status", "error"])
    for row in rows:
        writer.writerow([row.url, row.status, "" if row.http_status is None else row.http_status, row.error])
        if buffer.tell() > 64_000:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def failed_urls_text(rows: Iterable[FailedUrl]) -> Iterator[str]:
    """One URL per line, to paste into the **URLs** field of the DAG's trigger form.

    A stored URL containing whitespace (only possible for a ``rejected`` line) would be split
    by that field: it is left out, with a comment line saying so.
    """
    skipped = 0
    for row in rows:
        if any(ch.isspace() for ch in row.url) or row.url.startswith("#"):
            skipped += 1
            continue
        yield row.url + "\n"
    if skipped:
        yield f"# {skipped} rejected line(s) containing spaces left out: see the CSV download\n"


def format_bytes(size: int | None) -> str:
    """``1.2 MB``-style sizes (powers of 1000, as the run summary in the task log)."""
    if size is None:
        return "–"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def format_duration(seconds: float | None) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _failed_filter(run_key: str, status: str | None) -> tuple[str, dict[str, Any]]:
    where = f"run_key = %(run_key)s AND {_FAILED_SQL}"
    params: dict[str, Any] = {"run_key": run_key}
    if status is not None:
        where += " AND status = %(status)s"
        params["status"] = status
    return where, params


def _status_rank(status: str) -> int:
    try:
        return STATUS_ORDER.index(status)
    except ValueError:
        return len(STATUS_ORDER)


def _run_row(row: tuple[Any, ...]) -> RunRow:
    (
        run_key,
        dag_run_id,
        run_type,
        logical_date,
        source,
        outcome,
        reason,
        urls_total,
        counts,
        bytes_total,
        batches,
        started_at,
        finished_at,
        duration_s,
        urls_per_s,
        p50,
        p95,
    ) = row
    return RunRow(
        run_key=run_key,
        dag_run_id=dag_run_id,
        run_type=run_type,
        logical_date=_utc(logical_date),
        source=source,
        outcome=outcome,
        reason=reason,
        urls_total=int(urls_total),
        counts=_counts(counts),
        bytes_total=int(bytes_total),
        batches=int(batches),
        started_at=_utc(started_at),
        finished_at=_utc(finished_at),
        duration_s=None if duration_s is None else float(duration_s),
        urls_per_s=None if urls_per_s is None else float(urls_per_s),
        p50_ms=None if p50 is None else int(p50),
        p95_ms=None if p95 is None else int(p95),
    )


def _utc(value: Any) -> Any:
    """Timestamps in UTC, as the Airflow UI shows them, whatever the session's time zone."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def _counts(value: Mapping[str, Any] | str | None) -> dict[str, int]:
    if value is None:
        return {}
    if isinstance(value, str):  # a driver without a jsonb loader
        import json

        value = json.loads(value)
    assert isinstance(value, Mapping)
    return {str(k): int(v) for k, v in value.items()}
