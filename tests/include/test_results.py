from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from include.harvest.models import Result, Status
from include.harvest.results import (
    COPY_CHUNK_ROWS,
    BatchStaging,
    IncompleteRun,
    RunInfo,
    load_previous,
    record_run,
    record_staged_run,
    stage_results,
)

pytest_plugins = ["tests.include.db_fixtures"]

SHA_A = "a" * 64
SHA_B = "b" * 64
STARTED = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)


def run_info(
    run_key: str = "2026-01-05", dag_run_id: str = "scheduled__2026-01-05", **changes: Any
) -> RunInfo:
    values: dict[str, Any] = {
        "run_key": run_key,
        "dag_run_id": dag_run_id,
        "run_type": "scheduled",
        "logical_date": datetime(2026, 1, 5, tzinfo=UTC),
        "source": "file:///lists/2026-01-05.txt",
        "started_at": datetime.now(UTC) - timedelta(seconds=10),
    }
    values.update(changes)
    return RunInfo(**values)


def ok(
    url: str, sha: str = SHA_A, *, elapsed_ms: int = 100, etag: str | None = None, **changes: Any
) -> Result:
    values: dict[str, Any] = {
        "url": url,
        "status": Status.OK,
        "http_status": 200,
        "final_url": url,
        "content_type": "image/jpeg",
        "bytes": 1000,
        "sha256": sha,
        "width": 10,
        "height": 20,
        "storage_uri": f"file:///store/{sha[:2]}/{sha[2:4]}/{sha}.jpg",
        "attempts": 1,
        "elapsed_ms": elapsed_ms,
        "etag": etag,
        "last_modified": "Mon, 05 Jan 2026 00:00:00 GMT",
        "fetched_at": "2026-01-05T06:00:01+00:00",
    }
    values.update(changes)
    return Result(**values)


def failed(
    url: str, status: Status = Status.HTTP_ERROR, *, elapsed_ms: int = 50, attempts: int = 1
) -> Result:
    return Result(
        url=url,
        status=status,
        error=f"{status}: see details",
        http_status=404,
        attempts=attempts,
        elapsed_ms=elapsed_ms,
    )


def rows(conn: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    # commit, not `with conn:` - psycopg 3 closes the connection at the end of that block
    with conn.cursor() as cur:
        cur.execute(sql, params or None)
        found = [tuple(row) for row in cur.fetchall()]
    conn.commit()
    return found


def downloads(conn: Any, run_key: str = "2026-01-05") -> list[tuple[Any, ...]]:
    return rows(
        conn, "SELECT url, status, sha256 FROM harvest.downloads WHERE run_key = %s ORDER BY url", run_key
    )


def test_record_run_writes_downloads_objects_and_summary(harvest_conn: Any) -> None:
    results = [
        ok("https://example.com/a.jpg", SHA_A, elapsed_ms=100, meta={"caption": "cat"}, line=1),
        ok("https://example.com/b.jpg", SHA_B, elapsed_ms=300),
        failed("https://example.com/c.jpg", elapsed_ms=200),
        Result(url="not a url", status=Status.REJECTED, error="line 4: contains whitespace", line=4),
    ]

    summary = record_run(harvest_conn, run_info(), iter(results), batches=2)

    assert downloads(harvest_conn) == [
        ("https://example.com/a.jpg", "ok", SHA_A),
        ("https://example.com/b.jpg", "ok", SHA_B),
        ("https://example.com/c.jpg", "http_error", None),
        ("not a url", "rejected", None),
    ]
    [(line, meta, dag_run_id)] = rows(
        harvest_conn,
        "SELECT source_line, meta, dag_run_id FROM harvest.downloads WHERE url = 'https://example.com/a.jpg'",
    )
    assert (line, meta, dag_run_id) == (1, {"caption": "cat"}, "scheduled__2026-01-05")
    assert rows(harvest_conn, "SELECT sha256, bytes, content_type FROM harvest.objects ORDER BY sha256") == [
        (SHA_A, 1000, "image/jpeg"),
        (SHA_B, 1000, "image/jpeg"),
    ]

    [run] = rows(
        harvest_conn,
        "SELECT run_key, dag_run_id, outcome, source, urls_total, status_counts, bytes_total, batches,"
        " p50_ms, p95_ms, duration_s, urls_per_s, finished_at >= started_at FROM harvest.runs",
    )
    # latency over the three fetched URLs (100, 200, 300 ms); the rejected line took no time
    assert run[:10] == (
        "2026-01-05",
        "scheduled__2026-01-05",
        "recorded",
        "file:///lists/2026-01-05.txt",
        4,
        {"ok": 2, "http_error": 1, "rejected": 1},
        2000,
        2,
        200,
        290,
    )
    assert 10 <= run[10] < 60 and run[11] == pytest.approx(4 / run[10]) and run[12] is True

    assert summary.counts == {"ok": 2, "http_error": 1, "rejected": 1}
    assert (summary.urls_total, summary.bytes_total, summary.p50_ms, summary.p95_ms) == (4, 2000, 200, 290)
    assert summary.objects_added == 2
    text = summary.format()
    assert "2026-01-05" in text and "ok" in text and "p50 200 ms · p95 290 ms" in text and "2 batches" in text


def test_recording_the_same_results_twice_leaves_the_same_rows(harvest_conn: Any) -> None:
    results = [ok("https://example.com/a.jpg"), failed("https://example.com/b.jpg")]

    record_run(harvest_conn, run_info(), results, batches=1)
    first = rows(harvest_conn, "SELECT * FROM harvest.downloads ORDER BY url")
    second_summary = record_run(harvest_conn, run_info(), results, batches=1)
    second = rows(harvest_conn, "SELECT * FROM harvest.downloads ORDER BY url")

    def without_recorded_at(table: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return [row[:-1] for row in table]  # recorded_at is the last column

    assert without_recorded_at(second) == without_recorded_at(first)
    assert len(second) == 2
    assert rows(harvest_conn, "SELECT count(*) FROM harvest.runs") == [(1,)]
    assert rows(harvest_conn, "SELECT count(*) FROM harvest.objects") == [(1,)]
    assert second_summary.stale_rows_removed == 0 and second_summary.objects_added == 0


def test_rerun_with_fewer_urls_leaves_only_those_and_keeps_other_run_keys(harvest_conn: Any) -> None:
    record_run(harvest_conn, run_info("2026-01-04"), [ok("https://example.com/old-day.jpg")], batches=1)
    record_run(
        harvest_conn,
        run_info(),
        [
            ok("https://example.com/a.jpg"),
            ok("https://example.com/b.jpg"),
            failed("https://example.com/c.jpg"),
        ],
        batches=1,
    )

    summary = record_run(
        harvest_conn,
        run_info(dag_run_id="manual__retry"),
        [failed("https://example.com/a.jpg", Status.TIMEOUT)],
        batches=1,
    )

    assert downloads(harvest_conn) == [("https://example.com/a.jpg", "timeout", None)]
    assert downloads(harvest_conn, "2026-01-04") == [("https://example.com/old-day.jpg", "ok", SHA_A)]
    assert summary.stale_rows_removed == 2
    [(dag_run_id, counts, total)] = rows(
        harvest_conn,
        "SELECT dag_run_id, status_counts, urls_total FROM harvest.runs WHERE run_key = '2026-01-05'",
    )
    assert (dag_run_id, counts, total) == ("manual__retry", {"timeout": 1}, 1)
    # the blob stays: objects are shared across runs and never deleted by a re-run
    assert rows(harvest_conn, "SELECT count(*) FROM harvest.objects") == [(1,)]


def test_duplicate_urls_in_the_results_keep_the_last(harvest_conn: Any) -> None:
    url = "https://example.com/a.jpg"
    results = [failed(url, Status.TIMEOUT), ok("https://example.com/b.jpg", SHA_B), ok(url, SHA_A)]

    summary = record_run(harvest_conn, run_info(), results, batches=2)

    assert downloads(harvest_conn) == [(url, "ok", SHA_A), ("https://example.com/b.jpg", "ok", SHA_B)]
    assert summary.urls_total == 2 and summary.counts == {"ok": 2}


def test_same_blob_at_two_urls_is_one_object(harvest_conn: Any) -> None:
    record_run(
        harvest_conn,
        run_info(),
        [ok("https://example.com/a.jpg", SHA_A), ok("https://mirror.example.org/a.jpg", SHA_A)],
        batches=1,
    )
    record_run(harvest_conn, run_info("2026-01-06"), [ok("https://example.com/again.jpg", SHA_A)], batches=1)

    assert rows(harvest_conn, "SELECT sha256 FROM harvest.objects") == [(SHA_A,)]
    assert rows(harvest_conn, "SELECT count(*) FROM harvest.downloads WHERE sha256 = %s", SHA_A) == [(3,)]


def test_text_that_needs_escaping_survives_the_copy(harvest_conn: Any) -> None:
    awkward = "tab\there, newline\nthere, backslash \\N, NUL \x00, surrogate \udcff, ümlaut"
    record_run(
        harvest_conn,
        run_info(),
        [Result(url="https://example.com/x", status=Status.HTTP_ERROR, error=awkward, meta={"k": "a\tb\\c"})],
        batches=1,
    )

    [(error, meta)] = rows(harvest_conn, "SELECT error, meta FROM harvest.downloads")
    assert error == "tab\there, newline\nthere, backslash \\N, NUL \ufffd, surrogate \\udcff, ümlaut"
    assert meta == {"k": "a\tb\\c"}


def test_empty_run_and_no_source_outcome_write_a_summary(harvest_conn: Any) -> None:
    record_run(harvest_conn, run_info(), [ok("https://example.com/a.jpg")], batches=1)

    summary = record_run(
        harvest_conn,
        run_info(started_at=None),
        [],
        batches=0,
        outcome="no_source",
        reason="no list for 2026-01-05",
    )

    assert downloads(harvest_conn) == []
    [run] = rows(
        harvest_conn,
        "SELECT outcome, reason, urls_total, status_counts, bytes_total, batches, p50_ms, duration_s"
        " FROM harvest.runs",
    )
    assert run == ("no_source", "no list for 2026-01-05", 0, {}, 0, 0, None, None)
    assert summary.urls_total == 0 and summary.counts == {}
    assert "no_source" in summary.format() and "no list for 2026-01-05" in summary.format()


def test_results_are_streamed_in_chunks_not_materialised(harvest_conn: Any) -> None:
    count = COPY_CHUNK_ROWS * 2 + 17
    consumed = 0

    def generate() -> Iterator[Result]:
        nonlocal consumed
        for i in range(count):
            consumed += 1
            yield failed(f"https://example.com/{i}.jpg", elapsed_ms=i)

    summary = record_run(harvest_conn, run_info(), generate(), batches=11)

    assert consumed == count
    assert summary.urls_total == count
    assert rows(harvest_conn, "SELECT count(*) FROM harvest.downloads") == [(count,)]


def test_a_failed_recording_writes_nothing(harvest_conn: Any) -> None:
    record_run(harvest_conn, run_info(), [ok("https://example.com/a.jpg")], batches=1)

    def broken() -> Iterator[Result]:
        yield ok("https://example.com/b.jpg")
        raise RuntimeError("batch results unreadable")

    with pytest.raises(RuntimeError, match="unreadable"):
        record_run(harvest_conn, run_info(), broken(), batches=1)

    assert downloads(harvest_conn) == [("https://example.com/a.jpg", "ok", SHA_A)]
    # the connection is usable afterwards
    record_run(harvest_conn, run_info(), [ok("https://example.com/c.jpg")], batches=1)
    assert downloads(harvest_conn) == [("https://example.com/c.jpg", "ok", SHA_A)]


def test_load_previous_returns_the_newest_ok_validators(harvest_conn: Any) -> None:
    url = "https://example.com/a.jpg"
    record_run(
        harvest_conn,
        run_info("2026-01-03"),
        [ok(url, SHA_A, etag='"v1"', fetched_at="2026-01-03T06:00:00+00:00")],
        batches=1,
    )
    record_run(
        harvest_conn,
        run_info("2026-01-04"),
        [ok(url, SHA_B, etag='"v2"', fetched_at="2026-01-04T06:00:00+00:00", width=640, height=480)],
        batches=1,
    )
    # a newer failure does not hide the last good copy
    record_run(
        harvest_conn,
        run_info("2026-01-05"),
        [failed(url), failed("https://example.com/never-ok.jpg")],
        batches=1,
    )

    previous = load_previous(
        harvest_conn, [url, "https://example.com/never-ok.jpg", "https://example.com/unknown"]
    )

    assert set(previous) == {url}
    got = previous[url]
    assert (got.status, got.etag, got.sha256, got.width, got.height) == (Status.OK, '"v2"', SHA_B, 640, 480)
    assert got.storage_uri == f"file:///store/bb/bb/{SHA_B}.jpg"
    assert (got.last_modified, got.content_type, got.bytes) == (
        "Mon, 05 Jan 2026 00:00:00 GMT",
        "image/jpeg",
        1000,
    )
    assert got.fetched_at is not None and got.fetched_at.startswith("2026-01-04T06:00:00")
    assert load_previous(harvest_conn, []) == {}


def test_load_previous_keeps_validators_through_not_modified_rows(harvest_conn: Any) -> None:
    url = "https://example.com/a.jpg"
    record_run(harvest_conn, run_info("2026-01-03"), [ok(url, SHA_A, etag='"v1"')], batches=1)
    # re-running the same date answers 304: the row becomes not_modified but keeps what it confirmed
    confirmed = ok(url, SHA_A, etag='"v1"')
    confirmed.status = Status.NOT_MODIFIED
    record_run(harvest_conn, run_info("2026-01-03"), [confirmed], batches=1)
    assert downloads(harvest_conn, "2026-01-03") == [(url, "not_modified", SHA_A)]

    previous = load_previous(harvest_conn, [url])

    assert (previous[url].etag, previous[url].sha256) == ('"v1"', SHA_A)


def test_autocommit_connections_are_left_as_found(harvest_conn: Any) -> None:
    harvest_conn.autocommit = True

    record_run(harvest_conn, run_info(), [ok("https://example.com/a.jpg")], batches=1)

    assert harvest_conn.autocommit is True
    assert downloads(harvest_conn) == [("https://example.com/a.jpg", "ok", SHA_A)]


def test_the_longest_accepted_url_fits_the_downloads_key(harvest_conn: Any) -> None:
    import secrets

    from include.harvest.urls import MAX_URL_LENGTH, normalize_url

    prefix = "https://example.com/"
    url = normalize_url(
        prefix + secrets.token_hex(MAX_URL_LENGTH)[: MAX_URL_LENGTH - len(prefix)]
    )  # incompressible

    record_run(
        harvest_conn, run_info(run_key="manual__2026-01-05T06:00:00.123456+00:00"), [ok(url)], batches=1
    )

    assert rows(harvest_conn, "SELECT length(url) FROM harvest.downloads") == [(MAX_URL_LENGTH,)]


def test_the_declared_columns_are_the_tables_and_the_results(harvest_conn: Any) -> None:
    # harvest.downloads' Result columns are declared once (DOWNLOAD_COLUMNS); the staging table, COPY,
    # upsert and load_previous derive from it. A column added by a migration, or a field added to
    # Result, without its entry there fails here instead of being silently dropped.
    from dataclasses import fields

    from include.harvest.results import DOWNLOAD_COLUMNS

    table = rows(
        harvest_conn,
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'harvest' AND table_name = 'downloads' ORDER BY ordinal_position",
    )
    recording = ["run_key", "dag_run_id", "recorded_at"]  # about the recording, not the Result
    assert [name for (name,) in table if name not in recording] == [c.name for c in DOWNLOAD_COLUMNS]
    staging = rows(
        harvest_conn,
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'harvest' AND table_name = 'staged_results' ORDER BY ordinal_position",
    )
    about_the_batch = ["dag_run_id", "batch", "seq", "staged_at", "attempt"]
    assert [name for (name,) in staging if name not in about_the_batch] == [c.name for c in DOWNLOAD_COLUMNS]
    assert sorted(c.field for c in DOWNLOAD_COLUMNS) == sorted(f.name for f in fields(Result))


def test_every_result_field_reaches_its_column_and_load_previous(harvest_conn: Any) -> None:
    from include.harvest.results import DOWNLOAD_COLUMNS

    result = ok(
        "https://example.com/all.jpg",
        etag='"v1"',
        error="kept\twith a tab",
        attempts=3,
        line=7,
        meta={"caption": "ä"},
        status=Status.OK,
    )
    record_run(harvest_conn, run_info(), [result], batches=1)
    names = ", ".join(c.name for c in DOWNLOAD_COLUMNS)
    [row] = rows(harvest_conn, f"SELECT {names} FROM harvest.downloads")
    stored = dict(zip([c.field for c in DOWNLOAD_COLUMNS], row, strict=True))
    stored["fetched_at"] = stored["fetched_at"].isoformat()
    assert stored == {c.field: getattr(result, c.field) for c in DOWNLOAD_COLUMNS}

    previous = load_previous(harvest_conn, [result.url])[result.url]
    for column in DOWNLOAD_COLUMNS:
        if column.previous:
            assert getattr(previous, column.field) == getattr(result, column.field), column.name


# -- staged as each batch ends, recorded in SQL ------------------------------------------------------


def test_a_batch_staged_again_replaces_its_rows_and_the_reduce_moves_them_whole(harvest_conn: Any) -> None:
    run = run_info()
    first_try = [failed("https://a.example.com/1.jpg", Status.TIMEOUT), ok("https://a.example.com/2.jpg")]
    retried = [
        ok("https://a.example.com/1.jpg", SHA_B, line=1, meta={"k": "v"}),
        ok("https://a.example.com/2.jpg"),
    ]
    stage_results(harvest_conn, run.dag_run_id, 0, first_try)
    stage_results(harvest_conn, run.dag_run_id, 0, retried)  # the retry of batch 0
    stage_results(harvest_conn, run.dag_run_id, 1, [failed("https://b.example.com/3.jpg")])
    stage_results(harvest_conn, "another_run", 0, [ok("https://c.example.com/4.jpg")])  # not this run's
    rejected = [Result(url="not a url", status=Status.REJECTED, error="line 9: not a URL", line=9)]

    summary = record_staged_run(harvest_conn, run, rejected, batches=2, expected_urls=4)

    assert summary.counts == {"ok": 2, "http_error": 1, "rejected": 1}
    recorded = rows(
        harvest_conn, "SELECT url, status, sha256, source_line, meta FROM harvest.downloads ORDER BY url"
    )
    assert recorded == [
        ("https://a.example.com/1.jpg", "ok", SHA_B, 1, {"k": "v"}),
        ("https://a.example.com/2.jpg", "ok", SHA_A, None, None),
        ("https://b.example.com/3.jpg", "http_error", None, None, None),
        ("not a url", "rejected", None, 9, None),
    ]
    staged = rows(harvest_conn, "SELECT dag_run_id, count(*) FROM harvest.staged_results GROUP BY 1")
    assert staged == [("another_run", 1)]  # this run's staged rows went with the recording


def test_a_batch_left_from_an_earlier_plan_is_not_recorded(harvest_conn: Any) -> None:
    """A run cleared and planned again into fewer batches: the old plan's extra batch is ignored."""
    run = run_info()
    stage_results(harvest_conn, run.dag_run_id, 0, [ok("https://a.example.com/1.jpg")])
    stage_results(harvest_conn, run.dag_run_id, 1, [ok("https://stale.example.com/9.jpg")])

    summary = record_staged_run(harvest_conn, run, batches=1, expected_urls=1)

    assert summary.urls_total == 1
    assert rows(harvest_conn, "SELECT url FROM harvest.downloads") == [("https://a.example.com/1.jpg",)]


def test_an_incomplete_staged_run_records_nothing_and_keeps_what_was_staged(harvest_conn: Any) -> None:
    run = run_info()
    stage_results(harvest_conn, run.dag_run_id, 0, [ok("https://a.example.com/1.jpg")])

    with pytest.raises(IncompleteRun, match="recorded 1 results but the source had 2 URLs"):
        record_staged_run(harvest_conn, run, batches=2, expected_urls=2)

    assert rows(harvest_conn, "SELECT count(*) FROM harvest.downloads") == [(0,)]
    assert rows(harvest_conn, "SELECT count(*) FROM harvest.staged_results") == [(1,)]


# -- staged while the batch runs, one attempt at a time ----------------------------------------------


@pytest.fixture(params=["psycopg2", "psycopg"])
def connect(request: pytest.FixtureRequest, harvest_db_dsn: str) -> Any:
    """Opens a new connection to a migrated, empty harvest database, with one driver or the other."""
    if request.param == "psycopg":
        psycopg = pytest.importorskip("psycopg")
        return lambda: psycopg.connect(harvest_db_dsn)
    import psycopg2

    return lambda: psycopg2.connect(harvest_db_dsn)


def query(connect: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(connect()) as conn:
        return rows(conn, sql, *params)


BATCH_URLS = [f"https://a.example.com/{n}.jpg" for n in range(5)]


def test_a_running_batch_commits_its_results_a_chunk_at_a_time_and_they_count_once_it_ends(
    connect: Any,
) -> None:
    run = run_info()
    staging = BatchStaging(connect, run.dag_run_id, 0, BATCH_URLS[:3], chunk_rows=2)
    staging.expect(BATCH_URLS[3:])  # the rest of the batch, read later from its file
    for url in reversed(BATCH_URLS):  # in the order they finish, not the batch's
        staging.add(ok(url) if url != BATCH_URLS[1] else failed(url))

    # Two chunks are in Postgres already (what the task holds is the fifth result, not five); but
    # the batch has not ended, so a reduce now finds it missing.
    assert query(connect, "SELECT count(*) FROM harvest.staged_results") == [(4,)]
    with closing(connect()) as conn, pytest.raises(IncompleteRun):
        record_staged_run(conn, run, batches=1, expected_urls=5)

    assert staging.finish() == 5
    assert (staging.counts, staging.ok_bytes) == ({"ok": 4, "http_error": 1}, 4000)
    with closing(connect()) as conn:
        summary = record_staged_run(conn, run, batches=1, expected_urls=5)
    assert summary.counts == {"ok": 4, "http_error": 1}
    assert query(connect, "SELECT count(*) FROM harvest.staged_results") == [(0,)]
    assert query(connect, "SELECT count(*) FROM harvest.staged_batches") == [(0,)]


def test_a_retried_batch_keeps_one_attempt_whole_the_first_to_end(connect: Any) -> None:
    """A killed attempt's chunks are never read; of two attempts running at once, the first to end
    counts and the other fails on ending, changing nothing."""
    run = run_info()
    killed = BatchStaging(connect, run.dag_run_id, 0, BATCH_URLS, chunk_rows=2)
    for url in BATCH_URLS[:4]:
        killed.add(failed(url, Status.TIMEOUT))  # two chunks committed, then the worker died
    zombie = BatchStaging(connect, run.dag_run_id, 0, BATCH_URLS, chunk_rows=2)  # thought lost, still running
    retry = BatchStaging(connect, run.dag_run_id, 0, BATCH_URLS, chunk_rows=2)
    for url in BATCH_URLS:
        zombie.add(failed(url))
        retry.add(ok(url))

    retry.finish()
    assert query(connect, "SELECT DISTINCT attempt FROM harvest.staged_results") == [(retry.attempt,)]
    with pytest.raises(RuntimeError, match="another attempt of batch 0 ended while this one ran"):
        zombie.finish()

    with closing(connect()) as conn:
        summary = record_staged_run(conn, run, batches=1, expected_urls=5)
    assert summary.counts == {"ok": 5}


def test_a_batch_missing_a_result_does_not_end_and_a_stray_or_repeated_result_is_refused(
    connect: Any,
) -> None:
    staging = BatchStaging(connect, "manual__x", 0, BATCH_URLS)
    for url in BATCH_URLS[:4]:
        staging.add(ok(url))

    # The task forgets a URL once answered (it holds the URLs in flight, not the batch's), so a
    # repeated result and a stray one get the same answer.
    for stray in (BATCH_URLS[0], "https://elsewhere.example.com/9.jpg"):
        with pytest.raises(ValueError, match="is not a URL of batch 0 waiting for a result"):
            staging.add(ok(stray))
    with pytest.raises(ValueError, match="is listed twice in batch 0"):
        staging.expect([BATCH_URLS[4]])
    with pytest.raises(
        RuntimeError, match=r"no result for 1 URLs of batch 0, such as https://a\.example\.com/4\.jpg"
    ):
        staging.finish()
    assert query(connect, "SELECT count(*) FROM harvest.staged_batches") == [(0,)]
