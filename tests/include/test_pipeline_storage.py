"""The pipeline's use of storage: the preflight before a run reads anything, and the work folder's
end after the reduce. On S3 (a real S3-protocol server, moto on loopback) and on local folders."""

from __future__ import annotations

import logging
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest

from include.harvest import pipeline
from include.harvest.errors import StorageUnavailable
from include.harvest.models import Result, Status
from include.harvest.results import IncompleteRun, stage_results
from include.harvest.settings import FetchSettings
from include.harvest.workfiles import RunWorkspace, read_items
from tests.s3 import MotoServer

pytest_plugins = ["tests.include.db_fixtures"]

DAY = datetime(2026, 5, 4, tzinfo=UTC)
RUN_ID = "scheduled__2026-05-04T00:00:00+00:00"
RUN_FOLDER = "scheduled__2026-05-04T00_00_00_00_00"
URLS = [f"https://img.example.com/{n}.jpg" for n in range(5)]


def context() -> pipeline.RunContext:
    return pipeline.RunContext(dag_run_id=RUN_ID, run_type="scheduled", logical_date=DAY, run_after=DAY)


def no_db() -> None:
    raise AssertionError("this step must not need the results DB")


def read_sources(*, storage_uri: str, work_uri: str, list_base_uri: str, urls: str | None = None) -> dict:
    return pipeline.read_sources(
        context(),
        urls=urls,
        source=None,
        list_base_uri=list_base_uri,
        work_uri=work_uri,
        connect=no_db,
        settings=FetchSettings(),
        storage_uri=storage_uri,
    )


def test_a_run_whose_storage_bucket_is_missing_stops_before_reading_naming_the_uri(
    s3_server: MotoServer, s3_bucket: str, tmp_path: Path
):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "2026-05-04.txt").write_text("\n".join(URLS))
    storage_uri = "s3://harvest-missing-bucket/images"

    with pytest.raises(StorageUnavailable) as caught:
        read_sources(
            storage_uri=storage_uri,
            work_uri=f"s3://{s3_bucket}/work",
            list_base_uri=(tmp_path / "lists").as_uri(),
        )

    assert str(caught.value).startswith(
        f"HARVEST_STORAGE_URI={storage_uri}: bucket 'harvest-missing-bucket' does not exist: "
    )
    assert s3_server.list_keys(s3_bucket) == []  # nothing was read or written


def test_a_missing_list_bucket_is_an_error_not_a_day_without_a_list(
    s3_server: MotoServer, s3_bucket: str, tmp_path: Path
):
    # s3fs reports a missing bucket as a missing file: without the preflight this run would be
    # recorded as outcome=no_source ("no list today") and skipped, hiding the typo.
    with pytest.raises(
        StorageUnavailable,
        match=r"^HARVEST_URL_LIST_URI=s3://harvest-lsts/daily: bucket 'harvest-lsts' does not exist",
    ):
        read_sources(
            storage_uri=(tmp_path / "storage").as_uri(),
            work_uri=(tmp_path / "work").as_uri(),
            list_base_uri="s3://harvest-lsts/daily",
        )


def test_a_source_list_in_a_missing_bucket_is_an_error_naming_it(s3_server: MotoServer, tmp_path: Path):
    source = "s3://harvest-no-such-lists/2026-05-04.txt"
    with pytest.raises(
        StorageUnavailable, match=rf"^source={source}: bucket 'harvest-no-such-lists' does not exist"
    ):
        pipeline.read_sources(
            context(),
            urls=None,
            source=source,
            list_base_uri=(tmp_path / "lists").as_uri(),
            work_uri=(tmp_path / "work").as_uri(),
            connect=no_db,
            settings=FetchSettings(),
            storage_uri=(tmp_path / "storage").as_uri(),
            list_roots=["s3://harvest-no-such-lists"],  # allowed (HARVEST_LIST_ROOTS), but missing
        )


def test_a_run_reads_its_list_from_s3_and_writes_its_work_files_there(s3_server: MotoServer, s3_bucket: str):
    s3_server.put(s3_bucket, "lists/2026-05-04.txt", "\n".join(URLS).encode())

    manifest = read_sources(
        storage_uri=f"s3://{s3_bucket}/images",
        work_uri=f"s3://{s3_bucket}/work",
        list_base_uri=f"s3://{s3_bucket}/lists",
    )

    assert (manifest["outcome"], manifest["urls"]) == ("recorded", 5)
    assert [item.url for item in read_items(manifest["items_uri"])] == URLS
    assert s3_server.list_keys(s3_bucket, "work/") == [
        f"work/{RUN_FOLDER}/items.jsonl.gz",
        f"work/{RUN_FOLDER}/rejected.jsonl.gz",
    ]


# -- the work folder after the reduce ---------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def work_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return (tmp_path / "work").as_uri()
    return f"s3://{request.getfixturevalue('s3_bucket')}/work"


def files_under(uri: str) -> list[str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    fs.invalidate_cache()
    return sorted(fs.find(path)) if fs.exists(path) else []


def run_until_the_reduce(
    work_uri: str, tmp_path: Path, dsn: str, *, results_for: int = len(URLS)
) -> tuple[dict, list]:
    """read_sources and plan as the DAG runs them, then batch results staged as download stages them."""
    manifest = read_sources(
        storage_uri=(tmp_path / "storage").as_uri(),
        work_uri=work_uri,
        list_base_uri=(tmp_path / "lists").as_uri(),
        urls="\n".join(URLS),
    )
    batches = pipeline.plan(manifest, work_uri=work_uri, dag_run_id=RUN_ID, batch_size=2, max_batches=10)
    summaries = []
    done = 0
    for batch in batches:
        items = read_items(batch["uri"])[: max(0, results_for - done)]
        done += len(items)
        with closing(psycopg2.connect(dsn)) as conn:
            stage_results(
                conn,
                batch["dag_run_id"],
                batch["index"],
                [Result(url=i.url, status=Status.HTTP_ERROR, http_status=404) for i in items],
            )
        summaries.append({"index": batch["index"]})
    return manifest, summaries


def staged_rows(dsn: str) -> int:
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM harvest.staged_results")
        return int(cur.fetchone()[0])


def test_the_work_folder_is_deleted_once_the_results_are_recorded(
    work_uri: str, tmp_path: Path, harvest_db_dsn: str, caplog: pytest.LogCaptureFixture
):
    manifest, summaries = run_until_the_reduce(work_uri, tmp_path, harvest_db_dsn)
    assert len(files_under(f"{work_uri}/{RUN_FOLDER}")) == 5  # items, rejected, 3 batches

    with caplog.at_level(logging.INFO, logger="include.harvest.pipeline"):
        summary = pipeline.record(
            context(), manifest, summaries, connect=lambda: psycopg2.connect(harvest_db_dsn)
        )

    assert summary.urls_total == len(URLS)
    assert files_under(work_uri) == []
    assert staged_rows(harvest_db_dsn) == 0  # moved into harvest.downloads in the same transaction
    assert f"Deleted the run's work files at {work_uri}/{RUN_FOLDER}" in caplog.text


def test_keep_work_files_keeps_them(
    work_uri: str, tmp_path: Path, harvest_db_dsn: str, caplog: pytest.LogCaptureFixture
):
    manifest, summaries = run_until_the_reduce(work_uri, tmp_path, harvest_db_dsn)
    with caplog.at_level(logging.INFO, logger="include.harvest.pipeline"):
        pipeline.record(
            context(),
            manifest,
            summaries,
            connect=lambda: psycopg2.connect(harvest_db_dsn),
            keep_work_files=True,
        )
    assert len(files_under(f"{work_uri}/{RUN_FOLDER}")) == 5
    assert f"Kept the run's work files at {work_uri}/{RUN_FOLDER} (HARVEST_KEEP_WORK_FILES)" in caplog.text


def test_a_failed_reduce_keeps_the_work_folder_for_the_retry(
    work_uri: str, tmp_path: Path, harvest_db_dsn: str
):
    manifest, summaries = run_until_the_reduce(
        work_uri, tmp_path, harvest_db_dsn, results_for=3
    )  # 2 URLs unanswered
    with pytest.raises(IncompleteRun):
        pipeline.record(context(), manifest, summaries, connect=lambda: psycopg2.connect(harvest_db_dsn))
    assert len(files_under(f"{work_uri}/{RUN_FOLDER}")) == 5
    assert staged_rows(harvest_db_dsn) == 3  # kept too: a retry of the failed batches adds theirs


def test_recording_a_run_again_after_its_work_files_were_deleted_keeps_its_rows(
    work_uri: str, tmp_path: Path, harvest_db_dsn: str
):
    # A person clears record_results of a finished run: its files are gone, its rows are there.
    manifest, summaries = run_until_the_reduce(work_uri, tmp_path, harvest_db_dsn)
    connect = lambda: psycopg2.connect(harvest_db_dsn)  # noqa: E731
    first = pipeline.record(context(), manifest, summaries, connect=connect)
    again = pipeline.record(context(), manifest, summaries, connect=connect)
    assert (again.urls_total, again.counts, again.run_key) == (first.urls_total, first.counts, first.run_key)
    with psycopg2.connect(harvest_db_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM harvest.downloads WHERE run_key = %s", (manifest["run_key"],))
        assert cur.fetchone() == (len(URLS),)


def test_a_run_whose_files_are_gone_and_never_recorded_says_to_clear_the_whole_run(
    work_uri: str, tmp_path: Path, harvest_db_dsn: str
):
    manifest, summaries = run_until_the_reduce(work_uri, tmp_path, harvest_db_dsn)
    RunWorkspace(work_uri, RUN_ID).remove()
    with pytest.raises(FileNotFoundError, match=r"clear the whole run \(from read_sources\)"):
        pipeline.record(context(), manifest, summaries, connect=lambda: psycopg2.connect(harvest_db_dsn))
    with pytest.raises(FileNotFoundError, match=r"clear the whole run \(from read_sources\)"):
        pipeline.download(
            {"index": 0, "uri": RunWorkspace(work_uri, RUN_ID).batch_uri(0), "dag_run_id": RUN_ID},
            settings=FetchSettings(),
            storage_uri=(tmp_path / "storage").as_uri(),
            connect=lambda: psycopg2.connect(harvest_db_dsn),
        )
