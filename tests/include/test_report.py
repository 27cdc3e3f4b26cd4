"""The Harvest page's queries, on runs written by the real reduce (record_run) into a real Postgres."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.harvest import report
from include.harvest.models import Result, Status
from include.harvest.results import RunInfo, record_run
from include.harvest.sources import parse_manual, read_list

pytest_plugins = ["tests.include.db_fixtures"]


def run_info(run_key: str, dag_run_id: str, run_type: str = "scheduled", **changes: Any) -> RunInfo:
    values: dict[str, Any] = {
        "run_key": run_key,
        "dag_run_id": dag_run_id,
        "run_type": run_type,
        "logical_date": None,
        "source": "urls param",
        "started_at": datetime.now(UTC) - timedelta(seconds=20),
    }
    values.update(changes)
    return RunInfo(**values)


def ok(url: str, elapsed_ms: int = 100) -> Result:
    sha = f"{abs(hash(url)):064d}"[:64]
    return Result(
        url=url,
        status=Status.OK,
        http_status=200,
        bytes=2_000,
        sha256=sha,
        storage_uri=f"file:///s/{sha}.jpg",
        content_type="image/jpeg",
        attempts=1,
        elapsed_ms=elapsed_ms,
    )


def failed(
    url: str, status: Status, error: str, elapsed_ms: int = 50, http_status: int | None = None
) -> Result:
    attempts = 0 if status in (Status.REJECTED, Status.BLOCKED, Status.SKIPPED) else 1
    return Result(
        url=url, status=status, error=error, http_status=http_status, attempts=attempts, elapsed_ms=elapsed_ms
    )


# One run over three hosts: a.example fails most (4 of 6), b.example:8080 is slow, one rejected line.
RUN_RESULTS = [
    ok("https://a.example/1.jpg", 10),
    ok("https://a.example/2.jpg", 12),
    failed("https://a.example/3.jpg", Status.HTTP_ERROR, "server answered 404 Not Found", http_status=404),
    failed("https://a.example/4.jpg", Status.HTTP_ERROR, "server answered 404 Not Found", http_status=404),
    failed("https://a.example/5.jpg", Status.HTTP_ERROR, "server answered 410 Gone", http_status=410),
    failed("https://a.example/6.jpg", Status.TIMEOUT, "read timed out after 10 s", 10_000),
    ok("http://user:pw@b.example:8080/1.png", 900),
    ok("http://b.example:8080/2.png?size=large", 1_100),
    failed("http://b.example:8080/3.png", Status.CONNECTION_ERROR, "connection reset by peer", 1_500),
    ok("https://c.example/1.gif", 30),
    failed("ftp://c.example/x.gif", Status.REJECTED, "line 11: scheme 'ftp' is not supported"),
    failed("not a url at all", Status.REJECTED, "line 12: contains whitespace"),
]


@pytest.fixture
def recorded(harvest_conn: Any) -> Any:
    """Three runs, oldest first: a small scheduled one, a backfill, and the manual RUN_RESULTS."""
    record_run(
        harvest_conn,
        run_info("2026-03-01", "scheduled__2026-03-01"),
        [ok("https://a.example/x.jpg")],
        batches=1,
    )
    record_run(
        harvest_conn,
        run_info("2026-03-02", "backfill__2026-03-02", "backfill"),
        [ok("https://a.example/y.jpg"), failed("https://a.example/z.jpg", Status.TIMEOUT, "timed out")],
        batches=1,
    )
    record_run(harvest_conn, run_info("manual__1", "manual__1", "manual"), RUN_RESULTS, batches=2)
    return harvest_conn


def test_recent_runs_are_newest_first_with_their_counts(recorded: Any) -> None:
    runs = report.recent_runs(recorded)

    assert [(r.run_key, r.run_type_label) for r in runs] == [
        ("manual__1", "manual"),
        ("2026-03-02", "backfill"),
        ("2026-03-01", "scheduled"),
    ]
    latest = runs[0]
    assert latest.urls_total == 12
    assert latest.counts == {"ok": 5, "http_error": 3, "timeout": 1, "connection_error": 1, "rejected": 2}
    assert latest.statuses == [
        ("ok", 5),
        ("rejected", 2),
        ("http_error", 3),
        ("timeout", 1),
        ("connection_error", 1),
    ]  # in the documented order of statuses
    assert latest.failed == 7
    assert latest.failure_rate == pytest.approx(7 / 12)
    assert latest.finished_at.tzinfo is not None and latest.finished_at.utcoffset() == timedelta(0)
    assert [r.run_key for r in report.recent_runs(recorded, limit=1)] == ["manual__1"]


def test_find_run_by_dag_run_id_and_a_replaced_recording_is_gone(recorded: Any) -> None:
    run = report.find_run(recorded, "backfill__2026-03-02")
    assert run is not None and (run.run_key, run.counts) == ("2026-03-02", {"ok": 1, "timeout": 1})
    assert report.find_run(recorded, "manual__nope") is None

    # The same date run again by hand: the backfill's recording is replaced.
    record_run(recorded, run_info("2026-03-02", "manual__again"), [ok("https://a.example/y.jpg")], batches=1)
    assert report.find_run(recorded, "backfill__2026-03-02") is None
    again = report.find_run(recorded, "manual__again")
    assert again is not None and again.counts == {"ok": 1}


def test_host_report_names_the_failing_and_the_slow_hosts(recorded: Any) -> None:
    hosts = report.host_report(recorded, "manual__1")

    assert [(h.host, h.failures, h.urls, h.status, h.sample_error) for h in hosts.failing] == [
        ("a.example", 4, 6, "http_error", "server answered 404 Not Found"),
        ("(not a URL)", 1, 1, "rejected", "line 12: contains whitespace"),
        ("b.example:8080", 1, 3, "connection_error", "connection reset by peer"),
        ("c.example", 1, 2, "rejected", "line 11: scheme 'ftp' is not supported"),
    ]
    assert hosts.failing[0].sample_url == "https://a.example/3.jpg"
    # Latency counts fetched URLs only: the rejected lines of c.example took no network time.
    assert [(h.host, h.fetched, h.max_ms) for h in hosts.slowest] == [
        ("a.example", 6, 10_000),
        ("b.example:8080", 3, 1_500),
        ("c.example", 1, 30),
    ]
    assert hosts.slowest[1].p50_ms == 1_100
    assert [h.host for h in report.host_report(recorded, "manual__1", limit=1).failing] == ["a.example"]


def test_a_run_without_failures_has_no_failing_hosts(recorded: Any) -> None:
    hosts = report.host_report(recorded, "2026-03-01")
    assert hosts.failing == []
    assert [h.host for h in hosts.slowest] == ["a.example"]


def test_failed_urls_are_paged_by_status_then_url(recorded: Any) -> None:
    first = report.failed_urls(recorded, "manual__1", per_page=3)
    assert (first.total, first.pages, first.page, first.first_index) == (7, 3, 1, 1)
    assert [(f.status, f.url) for f in first.items] == [
        ("connection_error", "http://b.example:8080/3.png"),
        ("http_error", "https://a.example/3.jpg"),
        ("http_error", "https://a.example/4.jpg"),
    ]
    last = report.failed_urls(recorded, "manual__1", page=99, per_page=3)  # past the end: the last page
    assert (last.page, last.first_index, [f.url for f in last.items]) == (3, 7, ["https://a.example/6.jpg"])
    assert last.items[0].error == "read timed out after 10 s"

    timeouts = report.failed_urls(recorded, "manual__1", status="timeout")
    assert [(f.url, f.error) for f in timeouts.items] == [
        ("https://a.example/6.jpg", "read timed out after 10 s")
    ]
    assert report.failed_urls(recorded, "manual__1", status="ok").total == 0  # not a failure
    assert report.failed_urls(recorded, "2026-03-01").items == []


def test_the_failed_url_csv_is_a_harvest_list_file_and_the_text_fits_the_trigger_form(
    recorded: Any, tmp_path: Path
) -> None:
    expected = sorted(f.url for f in report.failed_urls(recorded, "manual__1").items)

    text_csv = "".join(report.failed_urls_csv(report.iter_failed_urls(recorded, "manual__1")))
    rows = list(csv.DictReader(io.StringIO(text_csv)))
    assert sorted(r["url"] for r in rows) == expected
    assert {r["url"]: (r["status"], r["http_status"], r["error"]) for r in rows}[
        "https://a.example/5.jpg"
    ] == (
        "http_error",
        "410",
        "server answered 410 Gone",
    )
    listing = tmp_path / "retry.csv"
    listing.write_text(text_csv)
    read = read_list(str(listing))
    # The list reader reads the URL column; the rejected lines are rejected again, as before.
    assert sorted([item.url for item in read.items] + [r.url for r in read.rejected]) == expected

    text = "".join(report.failed_urls_text(report.iter_failed_urls(recorded, "manual__1")))
    pasted = parse_manual(text)
    assert sorted([item.url for item in pasted.items] + [r.url for r in pasted.rejected]) == sorted(
        u for u in expected if u != "not a url at all"
    )
    assert text.endswith("# 1 rejected line(s) containing spaces left out: see the CSV download\n")


def test_the_csv_of_a_large_run_streams_in_chunks(harvest_conn: Any) -> None:
    results = [
        failed(f"https://big.example/{i:05d}.jpg", Status.HTTP_ERROR, "server answered 500", http_status=500)
        for i in range(3_000)
    ]
    record_run(harvest_conn, run_info("big", "manual__big", "manual"), results, batches=3)

    chunks = list(report.failed_urls_csv(report.iter_failed_urls(harvest_conn, "big")))

    assert len(chunks) > 1
    assert "".join(chunks).count("\n") == 3_001


def test_report_sessions_are_read_only(harvest_conn: Any) -> None:
    report.make_read_only(harvest_conn)
    with pytest.raises(Exception, match="read-only transaction"), harvest_conn.cursor() as cur:
        cur.execute("DELETE FROM harvest.runs")
    harvest_conn.rollback()


def test_failed_url_queries_can_use_the_partial_index(harvest_db_dsn: str) -> None:
    """The failed-URL predicate is written so that the planner matches downloads_failed (migration 0002)."""
    import psycopg2

    conn = psycopg2.connect(harvest_db_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET enable_seqscan = off")
            where, params = report._failed_filter("2026-01-01", None)
            cur.execute(
                f"EXPLAIN SELECT url FROM harvest.downloads WHERE {where} ORDER BY status, url", params
            )
            plan = "\n".join(row[0] for row in cur.fetchall())
    finally:
        conn.close()
    assert "downloads_failed" in plan, plan


@pytest.mark.parametrize(
    ("stored", "shown"),
    [("scheduled", "scheduled"), ("DagRunType.MANUAL", "manual"), ("backfill", "backfill"),
     ("asset_triggered", "asset"), (None, "unknown")],
)  # fmt: skip
def test_run_type_labels(stored: str | None, shown: str) -> None:
    run = report.RunRow(
        run_key="k", dag_run_id="d", run_type=stored, logical_date=None, source="s", outcome="recorded",
        reason=None, urls_total=0, counts={}, bytes_total=0, batches=0, started_at=None,
        finished_at=datetime.now(UTC), duration_s=None, urls_per_s=None, p50_ms=None, p95_ms=None,
    )  # fmt: skip
    assert run.run_type_label == shown


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (None, "–"),
        (0, "0 B"),
        (999, "999 B"),
        (1_000, "1.0 kB"),
        (4_100_000_000, "4.1 GB"),
        (2 * 10**15, "2000.0 TB"),
    ],
)
def test_format_bytes(size: int | None, shown: str) -> None:
    assert report.format_bytes(size) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "–"),
        (0.25, "250 ms"),
        (5.06, "5.1 s"),
        (180, "3 min 00 s"),
        (245.4, "4 min 05 s"),
        (7380, "2 h 03 min"),
    ],
)
def test_format_duration(seconds: float | None, shown: str) -> None:
    assert report.format_duration(seconds) == shown
