"""The results database: recording a run (the reduce) and reading what earlier runs fetched.

Everything goes through a connection the caller opens (in the DAG, from the ``harvest_db`` Airflow
connection): psycopg2 or psycopg 3, since Airflow's ``PostgresHook`` hands out psycopg 3 connections
when psycopg 3 and SQLAlchemy 2 are installed. Rows are expected as tuples (the default cursor).
The schema comes from :mod:`include.harvest.migrations`.

:func:`record_run` is idempotent per run key: however often a run (or a backfill of its date) is
recorded, ``harvest.downloads`` ends with exactly one row per URL of the latest recording, and
``harvest.runs`` with one summary row.
"""

from __future__ import annotations

import io
import json
import logging
import operator
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from include.harvest.models import Result, Status

__all__ = [
    "COPY_CHUNK_ROWS",
    "DOWNLOAD_COLUMNS",
    "STAGE_CHUNK_ROWS",
    "BatchStaging",
    "Column",
    "IncompleteRun",
    "RunInfo",
    "RunSummary",
    "load_previous",
    "load_recorded_run",
    "record_run",
    "record_staged_run",
    "stage_results",
]

log = logging.getLogger(__name__)

# Results are copied to Postgres this many at a time: memory stays at one chunk of text however
# many results the run has, and each COPY round trip is large enough to be cheap.
COPY_CHUNK_ROWS = 5_000
# A running batch stages its results this many at a time (one connection and COPY each): a chunk
# of text is what the task holds of them, so it is kept small next to the rest of the task.
STAGE_CHUNK_ROWS = 1_000


@dataclass(frozen=True, slots=True)
class Column:
    """A column of ``harvest.downloads`` that holds a field of :class:`Result`."""

    name: str  # in harvest.downloads
    incoming_type: (
        str  # in the COPY staging table (the real table's type and constraints are the migration's)
    )
    field: str  # the Result attribute it holds
    to_copy: Callable[[Any], Any] | None = None  # Result value -> COPY value, when not the value itself
    previous: bool = False  # read back by load_previous for conditional requests


def _meta_json(meta: dict[str, Any] | None) -> str | None:
    return json.dumps(meta, ensure_ascii=False, default=str) if meta else None


# The columns of harvest.downloads that come from a Result, in COPY order: the only list of them.
# The staging table, the COPY, the upsert and load_previous derive from it, so a new column is an
# entry here, a field of Result and a migration (test_results checks all three agree).
# (run_key, dag_run_id and recorded_at describe the recording, not the Result: they are in the SQL.)
DOWNLOAD_COLUMNS: tuple[Column, ...] = (
    Column("url", "text NOT NULL", "url", previous=True),
    Column("status", "text NOT NULL", "status"),
    Column("http_status", "integer", "http_status", previous=True),
    Column("final_url", "text", "final_url", previous=True),
    Column("content_type", "text", "content_type", previous=True),
    Column("bytes", "bigint", "bytes", previous=True),
    Column("sha256", "text", "sha256", previous=True),
    Column("width", "integer", "width", previous=True),
    Column("height", "integer", "height", previous=True),
    Column("storage_uri", "text", "storage_uri", previous=True),
    Column("attempts", "integer NOT NULL", "attempts"),
    Column("elapsed_ms", "integer NOT NULL", "elapsed_ms"),
    Column("error", "text", "error"),
    Column("etag", "text", "etag", previous=True),
    Column("last_modified", "text", "last_modified", previous=True),
    Column("fetched_at", "timestamptz", "fetched_at", previous=True),
    Column("source_line", "integer", "line"),
    Column("meta", "jsonb", "meta", to_copy=_meta_json),
)
_NAMES = [column.name for column in DOWNLOAD_COLUMNS]
# One C call per result for the plain fields; the few converted ones are patched in by index.
_RESULT_VALUES = operator.attrgetter(*(column.field for column in DOWNLOAD_COLUMNS))
_CONVERTED = [(i, column.to_copy) for i, column in enumerate(DOWNLOAD_COLUMNS) if column.to_copy is not None]
_PREVIOUS = [column for column in DOWNLOAD_COLUMNS if column.previous]

# "Fetched" for latency percentiles: a request was made. Rejected, skipped and guard-blocked URLs
# take no network time and would drag the percentiles towards zero.
_FETCHED = "(attempts > 0 OR status NOT IN ('rejected', 'blocked', 'skipped'))"


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Which DAG run is being recorded. ``run_key`` is the logical date, or the run id without one."""

    run_key: str
    dag_run_id: str
    run_type: str | None
    logical_date: datetime | None
    source: str
    started_at: datetime | None


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What :func:`record_run` wrote to ``harvest.runs`` (plus rows removed from an earlier recording)."""

    run_key: str
    source: str
    outcome: str
    reason: str | None
    counts: dict[str, int]
    urls_total: int
    bytes_total: int
    batches: int
    started_at: datetime | None
    finished_at: datetime
    duration_s: float | None
    urls_per_s: float | None
    p50_ms: int | None
    p95_ms: int | None
    stale_rows_removed: int = 0
    objects_added: int = 0

    def format(self) -> str:
        """A short table for the task log."""
        lines = [f"run {self.run_key} · {self.outcome} · {self.source}"]
        width = max([len(status) for status in self.counts] + [10])
        if self.reason:
            lines.append(f"  {'reason':<{width}}  {self.reason}")
        for status in sorted(self.counts, key=lambda s: (-self.counts[s], s)):
            lines.append(f"  {status:<{width}}  {self.counts[status]:>8}")
        lines.append(
            f"  {'total':<{width}}  {self.urls_total:>8} urls · {_human_bytes(self.bytes_total)} · "
            f"{self.batches} batches"
        )
        timing = [f"{self.duration_s:.1f} s" if self.duration_s is not None else "duration unknown"]
        if self.urls_per_s is not None:
            timing.append(f"{self.urls_per_s:.1f} urls/s")
        if self.p50_ms is not None:
            timing.append(f"p50 {self.p50_ms} ms · p95 {self.p95_ms} ms")
        lines.append(f"  {'time':<{width}}  " + " · ".join(timing))
        if self.stale_rows_removed:
            lines.append(f"  removed {self.stale_rows_removed} rows of an earlier recording not in this run")
        return "\n".join(lines)


class IncompleteRun(RuntimeError):
    """The results of a run do not cover every URL of its source."""


def record_run(
    conn: Any,
    run: RunInfo,
    results: Iterable[Result],
    *,
    batches: int,
    outcome: str = "recorded",
    reason: str | None = None,
    expected_urls: int | None = None,
) -> RunSummary:
    """Write a run's results and summary in one transaction, replacing any earlier recording of it.

    With ``expected_urls``, a run whose results cover a different number of URLs (a batch's results
    missing) raises :class:`IncompleteRun` and writes nothing: a run is recorded whole or not at all.

    ``results`` is consumed once, :data:`COPY_CHUNK_ROWS` at a time, into a temporary table; then
    ``harvest.downloads`` gets the latest outcome per URL (a URL seen twice, e.g. from a retried
    batch, keeps its last result), rows of this run key absent from ``results`` are deleted,
    ``harvest.objects`` gains the new blobs and ``harvest.runs`` the summary. Nothing is visible to
    other sessions until the final commit; on any error nothing is written.

    The connection's own transaction is used and committed: pass a connection with no pending
    work of its own.
    """
    return _record(
        conn,
        run,
        lambda cur: _copy_results(cur, results),
        batches=batches,
        outcome=outcome,
        reason=reason,
        expected_urls=expected_urls,
    )


def _record(
    conn: Any,
    run: RunInfo,
    load: Callable[[Any], int],
    *,
    batches: int,
    outcome: str,
    reason: str | None,
    expected_urls: int | None,
    after: Callable[[Any], None] | None = None,
) -> RunSummary:
    """One transaction: ``load`` fills ``harvest_incoming``, then the run is written from it."""
    with _transaction(conn), conn.cursor() as cur:
        # Two recordings of the same run key (a retry racing its original) take turns; different
        # run keys (a backfill's runs) proceed in parallel.
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"harvest.run:{run.run_key}",))
        loaded = load(cur)
        summary = _write(cur, run, batches=batches, outcome=outcome, reason=reason)
        if expected_urls is not None and summary.urls_total != expected_urls:
            raise IncompleteRun(
                f"recorded {summary.urls_total} results but the source had {expected_urls} URLs: "
                "a batch's results are missing; nothing was written. Clear the failed batches and this task."
            )
        if after is not None:
            after(cur)
    log.info(
        "recorded run %s: %d results received, %d urls kept, %d stale rows removed, %d new objects",
        run.run_key,
        loaded,
        summary.urls_total,
        summary.stale_rows_removed,
        summary.objects_added,
    )
    return summary


def stage_results(conn: Any, dag_run_id: str, batch: int, results: Iterable[Result]) -> int:
    """Stage ``results`` as one whole attempt of a batch: they replace what the batch staged before.

    One transaction. The download task stages while it runs instead (:class:`BatchStaging`); this
    is the same outcome at once, for results already in hand.
    """
    attempt = _new_attempt()
    with _transaction(conn), conn.cursor() as cur:
        total = _copy_staged(cur, dag_run_id, batch, attempt, _copy_lines(results))
        _make_attempt_the_batchs(cur, dag_run_id, batch, attempt, total)
    return total


class BatchStaging:
    """One attempt at a batch, staging its results in ``harvest.staged_results`` as they finish.

    Results are COPYed in committed chunks of :data:`STAGE_CHUNK_ROWS` under this attempt's id, so
    the task holds one chunk, not the batch's results: worker memory does not grow with the batch
    size. They count once :meth:`finish` has checked that every URL of the batch has one, and made
    this attempt the batch's staged results in one short transaction that deletes what any other
    attempt of the batch staged. So a retried batch leaves one attempt's results, never a mix; an
    attempt that dies midway leaves rows nothing reads, deleted when the batch ends again or when
    the run's staged rows go with its recording. Of two attempts running at once (a worker thought
    lost that still runs), the first to end wins; the other then fails on ending, changing nothing.
    No transaction stays open while URLs download, so a worker lost with its connection holds no
    lock that a retry would wait on.

    The batch's URLs are announced with :meth:`expect` as they are read (the constructor's
    ``urls`` are the first), each numbered by its place in the batch, and forgotten once answered:
    the task holds the URLs in flight, not the batch's.

    :meth:`add` is thread-safe (the engine's threads call it as each URL finishes); ``connect``
    opens a new connection, one per chunk, closed after it.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        dag_run_id: str,
        batch: int,
        urls: Iterable[str] = (),
        *,
        chunk_rows: int = STAGE_CHUNK_ROWS,
    ) -> None:
        self.dag_run_id = dag_run_id
        self.batch = batch
        self.attempt = _new_attempt()
        self.counts: dict[str, int] = {}
        self.ok_bytes = 0
        self._connect = connect
        self._chunk_rows = chunk_rows
        self._unanswered: dict[str, int] = {}  # URL -> its place in the batch
        self._expected = 0
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.expect(urls)

    def expect(self, urls: Iterable[str]) -> None:
        """Announce more URLs of the batch, in the batch's order; each must come once."""
        with self._lock:
            for url in urls:
                if url in self._unanswered:
                    raise ValueError(f"{url} is listed twice in batch {self.batch}")
                self._unanswered[url] = self._expected
                self._expected += 1

    def add(self, result: Result) -> None:
        """Stage the result of one URL of the batch (one per URL)."""
        with self._lock:
            seq = self._unanswered.pop(result.url, None)
            if seq is None:
                raise ValueError(
                    f"{result.url} is not a URL of batch {self.batch} waiting for a result: "
                    "not in the batch, or answered already"
                )
            status = str(result.status)
            self.counts[status] = self.counts.get(status, 0) + 1
            if result.status == Status.OK:
                self.ok_bytes += result.bytes or 0
        line = _copy_line(seq, result)  # outside the lock: the other threads add meanwhile
        with self._lock:
            self._lines.append(line)
            if len(self._lines) < self._chunk_rows:
                return
            chunk, self._lines = self._lines, []
        self._copy(chunk)  # outside the lock: the other threads keep adding meanwhile

    def finish(self) -> int:
        """Stage what is left and make this attempt the batch's results; return the URLs staged.

        Raise :class:`RuntimeError`, and stage nothing more, if a URL of the batch has no result.
        """
        with self._lock:
            chunk, self._lines = self._lines, []
            missing = list(self._unanswered)
        if missing:  # the engine's contract is one result per URL: a silent drop would lose URLs
            raise RuntimeError(
                f"no result for {len(missing)} URLs of batch {self.batch}, such as {missing[0]}"
            )
        expected = self._expected
        with closing(self._connect()) as conn, _transaction(conn), conn.cursor() as cur:
            _copy_staged(cur, self.dag_run_id, self.batch, self.attempt, iter(chunk))
            _make_attempt_the_batchs(cur, self.dag_run_id, self.batch, self.attempt, expected)
            cur.execute(
                "SELECT count(*) FROM harvest.staged_results WHERE dag_run_id = %s AND batch = %s AND attempt = %s",
                (self.dag_run_id, self.batch, self.attempt),
            )
            (kept,) = cur.fetchone()
            if kept != expected:  # rolled back: the batch keeps the attempt that ended first
                raise RuntimeError(
                    f"another attempt of batch {self.batch} ended while this one ran (a worker thought "
                    f"lost, still running?) and replaced its results: {kept} of {expected} are left. "
                    "The batch's results are the other attempt's; nothing of this one was kept."
                )
        return expected

    def _copy(self, chunk: list[str]) -> None:
        with closing(self._connect()) as conn, _transaction(conn), conn.cursor() as cur:
            _copy_staged(cur, self.dag_run_id, self.batch, self.attempt, iter(chunk))


def _new_attempt() -> str:
    # Sorts by time, for a person reading the table; unique by the random part.
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"


def _copy_staged(cur: Any, dag_run_id: str, batch: int, attempt: str, lines: Iterator[str]) -> int:
    """COPY result lines (:func:`_copy_line`) into ``harvest.staged_results`` under ``attempt``."""
    prefix = f"{_copy_field(dag_run_id)}\t{batch}\t{_copy_field(attempt)}\t"
    copy_sql = (
        f"COPY harvest.staged_results (dag_run_id, batch, attempt, seq, {', '.join(_NAMES)}) FROM STDIN"
    )
    rows = (prefix + line for line in lines)
    total = 0
    while chunk := list(islice(rows, COPY_CHUNK_ROWS)):
        _copy_in(cur, copy_sql, "".join(chunk))
        total += len(chunk)
    return total


def _make_attempt_the_batchs(cur: Any, dag_run_id: str, batch: int, attempt: str, urls: int) -> None:
    # Two attempts ending at once take turns: the upsert locks the batch's row until commit.
    cur.execute(
        "INSERT INTO harvest.staged_batches (dag_run_id, batch, attempt, urls) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (dag_run_id, batch) DO UPDATE"
        " SET attempt = EXCLUDED.attempt, urls = EXCLUDED.urls, staged_at = now()",
        (dag_run_id, batch, attempt, urls),
    )
    cur.execute(
        "DELETE FROM harvest.staged_results WHERE dag_run_id = %s AND batch = %s AND attempt <> %s",
        (dag_run_id, batch, attempt),
    )


def record_staged_run(
    conn: Any,
    run: RunInfo,
    unstaged: Iterable[Result] = (),
    *,
    batches: int,
    outcome: str = "recorded",
    reason: str | None = None,
    expected_urls: int | None = None,
) -> RunSummary:
    """:func:`record_run` of the results ``run`` staged (:class:`BatchStaging`,
    :func:`stage_results`), plus ``unstaged`` ones (the lines rejected while reading the list), in
    SQL but for those few.

    Only each batch's finished attempt counts (``harvest.staged_batches``), and only batches
    ``0..batches-1``: a run planned again with fewer batches leaves no stray rows
    in the recording. The run's staged rows are deleted in the same transaction that writes
    ``harvest.downloads``: recorded and unstaged together, or neither.
    """

    def load(cur: Any) -> int:
        loaded = _copy_results(cur, unstaged, analyse=False)
        cur.execute(_INSERT_STAGED, {"dag_run_id": run.dag_run_id, "batches": batches, "after": loaded})
        cur.execute("ANALYZE harvest_incoming")
        return loaded + int(cur.rowcount)

    return _record(
        conn,
        run,
        load,
        batches=batches,
        outcome=outcome,
        reason=reason,
        expected_urls=expected_urls,
        after=lambda cur: _delete_staged(cur, run.dag_run_id),
    )


def _delete_staged(cur: Any, dag_run_id: str) -> None:
    for table in ("staged_results", "staged_batches"):
        cur.execute(f"DELETE FROM harvest.{table} WHERE dag_run_id = %s", (dag_run_id,))


_INSERT_STAGED = f"""
INSERT INTO harvest_incoming (seq, {", ".join(_NAMES)})
SELECT %(after)s + row_number() OVER (ORDER BY batch, seq), {", ".join(_NAMES)}
FROM harvest.staged_results JOIN harvest.staged_batches USING (dag_run_id, batch, attempt)
WHERE dag_run_id = %(dag_run_id)s AND batch < %(batches)s
"""


def _copy_results(cur: Any, results: Iterable[Result], *, analyse: bool = True) -> int:
    cur.execute(_CREATE_INCOMING)
    copy_sql = f"COPY harvest_incoming (seq, {', '.join(_NAMES)}) FROM STDIN"
    total = 0
    rows = _copy_lines(results)
    while chunk := list(islice(rows, COPY_CHUNK_ROWS)):
        _copy_in(cur, copy_sql, "".join(chunk))
        total += len(chunk)
    if analyse:
        # Temp tables have no statistics until analysed; the joins below need them for a sane plan.
        cur.execute("ANALYZE harvest_incoming")
    return total


@contextmanager
def _transaction(conn: Any) -> Iterator[None]:
    """One transaction, committed on success and rolled back on any error, for both drivers.

    (``with conn:`` differs between them: psycopg 3 closes the connection at the end of the block.)
    """
    autocommit = conn.autocommit
    if autocommit:
        conn.autocommit = False
    try:
        yield
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        if autocommit:
            conn.autocommit = True


def _copy_in(cur: Any, sql: str, data: str) -> None:
    if hasattr(cur, "copy_expert"):  # psycopg2
        from psycopg2.extensions import encodings

        # Bytes in the connection's encoding, as psycopg2 would send the text: a StringIO of the
        # chunk would hold it at 4 bytes a character, the largest allocation of a batch task.
        cur.copy_expert(sql, io.BytesIO(data.encode(encodings[cur.connection.encoding])))
    else:  # psycopg 3
        with cur.copy(sql) as copy:
            copy.write(data)


def _copy_lines(results: Iterable[Result]) -> Iterator[str]:
    for seq, result in enumerate(results):
        yield _copy_line(seq, result)


def _copy_line(seq: int, result: Result) -> str:
    """``seq`` and the columns of ``result``, as one line of COPY text."""
    if not isinstance(result, Result):
        raise TypeError(f"record_run expects Result objects, got {type(result).__name__}")
    values = list(_RESULT_VALUES(result))
    for index, convert in _CONVERTED:
        values[index] = convert(values[index])
    return f"{seq}\t" + "\t".join(_copy_field(value) for value in values) + "\n"


_COPY_ESCAPES = re.compile(r"[\\\t\n\r\x00]")
_COPY_ESCAPE_MAP = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\x00": "\ufffd"}


def _copy_field(value: Any) -> str:
    """One field in COPY text format: NULL as ``\\N``, backslash/tab/newline escaped."""
    if value is None:
        return "\\N"
    text = value if isinstance(value, str) else str(value)
    if not text.isascii():
        # Lone surrogates cannot be sent to Postgres; keep them visible as escapes instead.
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    # NUL cannot be stored in Postgres text; it is replaced rather than failing the whole run.
    return _COPY_ESCAPES.sub(lambda m: _COPY_ESCAPE_MAP[m.group()], text)


_CREATE_INCOMING = (
    "CREATE TEMP TABLE harvest_incoming (\n    seq bigint NOT NULL,\n"
    + "".join(f"    {column.name} {column.incoming_type},\n" for column in DOWNLOAD_COLUMNS)
    + ") ON COMMIT DROP"
).replace(",\n)", "\n)")

_WRITE_SQL = """
-- The latest result per URL: a retried batch may have sent a URL twice.
CREATE TEMP TABLE harvest_latest ON COMMIT DROP AS
SELECT DISTINCT ON (url) * FROM harvest_incoming ORDER BY url, seq DESC;
CREATE UNIQUE INDEX ON harvest_latest (url);
ANALYZE harvest_latest;
"""

_UPSERT_DOWNLOADS = f"""
INSERT INTO harvest.downloads AS d (run_key, {", ".join(_NAMES)}, dag_run_id, recorded_at)
SELECT %(run_key)s, {", ".join(_NAMES)}, %(dag_run_id)s, now()
FROM harvest_latest
ORDER BY url
ON CONFLICT (run_key, url) DO UPDATE SET
    {", ".join(f"{name} = EXCLUDED.{name}" for name in [*_NAMES[1:], "dag_run_id", "recorded_at"])}
"""

_DELETE_STALE = """
DELETE FROM harvest.downloads AS d
WHERE d.run_key = %(run_key)s
  AND NOT EXISTS (SELECT 1 FROM harvest_latest AS l WHERE l.url = d.url)
"""

# Sorted by sha256 so concurrent runs inserting overlapping blobs take row locks in the same
# order and cannot deadlock.
_INSERT_OBJECTS = """
INSERT INTO harvest.objects (sha256, bytes, content_type, width, height, storage_uri)
SELECT DISTINCT ON (sha256) sha256, bytes, coalesce(content_type, 'application/octet-stream'),
    width, height, storage_uri
FROM harvest_latest
WHERE status = 'ok' AND sha256 IS NOT NULL AND bytes IS NOT NULL AND storage_uri IS NOT NULL
ORDER BY sha256, seq DESC
ON CONFLICT (sha256) DO NOTHING
"""

_SUMMARY = f"""
SELECT
    count(*),
    coalesce(sum(bytes) FILTER (WHERE status = 'ok'), 0),
    (SELECT coalesce(jsonb_object_agg(status, n), '{{}}'::jsonb)
       FROM (SELECT status, count(*) AS n FROM harvest_latest GROUP BY status) AS per_status),
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY elapsed_ms) FILTER (WHERE {_FETCHED})),
    round(percentile_cont(0.95) WITHIN GROUP (ORDER BY elapsed_ms) FILTER (WHERE {_FETCHED})),
    clock_timestamp()
FROM harvest_latest
"""

_UPSERT_RUN = """
INSERT INTO harvest.runs (
    run_key, dag_run_id, run_type, logical_date, source, outcome, reason, urls_total, status_counts,
    bytes_total, batches, started_at, finished_at, duration_s, urls_per_s, p50_ms, p95_ms)
VALUES (
    %(run_key)s, %(dag_run_id)s, %(run_type)s, %(logical_date)s, %(source)s, %(outcome)s, %(reason)s,
    %(urls_total)s, %(status_counts)s::jsonb, %(bytes_total)s, %(batches)s, %(started_at)s, %(finished_at)s,
    %(duration_s)s, %(urls_per_s)s, %(p50_ms)s, %(p95_ms)s)
ON CONFLICT (run_key) DO UPDATE SET
    dag_run_id = EXCLUDED.dag_run_id, run_type = EXCLUDED.run_type,
    logical_date = EXCLUDED.logical_date, source = EXCLUDED.source, outcome = EXCLUDED.outcome,
    reason = EXCLUDED.reason, urls_total = EXCLUDED.urls_total,
    status_counts = EXCLUDED.status_counts, bytes_total = EXCLUDED.bytes_total,
    batches = EXCLUDED.batches, started_at = EXCLUDED.started_at,
    finished_at = EXCLUDED.finished_at, duration_s = EXCLUDED.duration_s,
    urls_per_s = EXCLUDED.urls_per_s, p50_ms = EXCLUDED.p50_ms, p95_ms = EXCLUDED.p95_ms
"""


def _write(cur: Any, run: RunInfo, *, batches: int, outcome: str, reason: str | None) -> RunSummary:
    keys = {"run_key": run.run_key, "dag_run_id": run.dag_run_id}
    cur.execute(_WRITE_SQL)
    cur.execute(_UPSERT_DOWNLOADS, keys)
    cur.execute(_DELETE_STALE, keys)
    stale = cur.rowcount
    cur.execute(_INSERT_OBJECTS)
    objects_added = cur.rowcount
    cur.execute(_SUMMARY)
    urls_total, bytes_total, counts, p50, p95, finished_at = cur.fetchone()

    duration_s: float | None = None
    urls_per_s: float | None = None
    started_at = run.started_at
    if started_at is not None:
        if started_at.tzinfo is None:  # Airflow's dates are UTC; a naive one is taken as UTC
            started_at = started_at.replace(tzinfo=UTC)
        duration_s = max((finished_at - started_at).total_seconds(), 0.0)
        urls_per_s = urls_total / duration_s if duration_s > 0 else None
    summary = RunSummary(
        run_key=run.run_key,
        source=run.source,
        outcome=outcome,
        reason=reason,
        counts={str(k): int(v) for k, v in counts.items()},
        urls_total=int(urls_total),
        bytes_total=int(bytes_total),
        batches=batches,
        started_at=run.started_at,
        finished_at=finished_at,
        duration_s=duration_s,
        urls_per_s=urls_per_s,
        p50_ms=None if p50 is None else int(p50),
        p95_ms=None if p95 is None else int(p95),
        stale_rows_removed=stale,
        objects_added=objects_added,
    )
    cur.execute(
        _UPSERT_RUN,
        {
            **keys,
            "run_type": run.run_type,
            "logical_date": run.logical_date,
            "source": run.source,
            "outcome": outcome,
            "reason": reason,
            "urls_total": summary.urls_total,
            "status_counts": json.dumps(summary.counts, sort_keys=True),
            "bytes_total": summary.bytes_total,
            "batches": batches,
            "started_at": run.started_at,
            "finished_at": finished_at,
            "duration_s": duration_s,
            "urls_per_s": urls_per_s,
            "p50_ms": summary.p50_ms,
            "p95_ms": summary.p95_ms,
        },
    )
    return summary


def load_recorded_run(conn: Any, run_key: str, *, dag_run_id: str) -> RunSummary | None:
    """The summary ``dag_run_id`` recorded for ``run_key``, if that run's recording is the current one."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT source, outcome, reason, status_counts, urls_total, bytes_total, batches, started_at,"
            " finished_at, duration_s, urls_per_s, p50_ms, p95_ms"
            " FROM harvest.runs WHERE run_key = %s AND dag_run_id = %s",
            (run_key, dag_run_id),
        )
        row = cur.fetchone()
    conn.rollback()  # a read: end the implicit transaction
    if row is None:
        return None
    source, outcome, reason, counts, urls, size, batches, started, finished, duration, rate, p50, p95 = row
    return RunSummary(
        run_key=run_key,
        source=source,
        outcome=outcome,
        reason=reason,
        counts={str(k): int(v) for k, v in counts.items()},
        urls_total=urls,
        bytes_total=size,
        batches=batches,
        started_at=started,
        finished_at=finished,
        duration_s=duration,
        urls_per_s=rate,
        p50_ms=p50,
        p95_ms=p95,
    )


def load_previous(conn: Any, urls: Sequence[str]) -> dict[str, Result]:
    """The newest stored copy of each URL, across all runs, for conditional requests.

    ``not_modified`` rows count too: they carry the validators and blob of the copy they confirmed,
    so a date re-run (which turns its rows into ``not_modified``) keeps the cache warm.

    Each value carries the validators (``etag``, ``last_modified``) and what was stored
    (``sha256``, ``storage_uri``, ``content_type``, ``bytes``, ``width``, ``height``); URLs never
    fetched successfully are absent. One query per call.
    """
    if not urls:
        return {}
    with conn.cursor() as cur:
        cur.execute(_LOAD_PREVIOUS, (list(urls),))
        rows = cur.fetchall()
    previous: dict[str, Result] = {}
    for row in rows:
        values = dict(zip((column.field for column in _PREVIOUS), row, strict=True))
        if values["fetched_at"] is not None:  # timestamptz comes back as a datetime
            values["fetched_at"] = values["fetched_at"].isoformat()
        previous[values["url"]] = Result(status=Status.OK, **values)
    return previous


_LOAD_PREVIOUS = f"""
SELECT DISTINCT ON (url) {", ".join(column.name for column in _PREVIOUS)}
FROM harvest.downloads
WHERE url = ANY(%s) AND status IN ('ok', 'not_modified') AND sha256 IS NOT NULL
ORDER BY url, fetched_at DESC NULLS LAST, recorded_at DESC
"""


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover
