"""The pipeline steps, run in-process over real files and a real Postgres (no Airflow needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest

from include.harvest import pipeline
from include.harvest.models import Result, Status
from include.harvest.results import IncompleteRun
from include.harvest.settings import FetchSettings
from include.harvest.workfiles import read_items, write_results

pytest_plugins = ["tests.include.db_fixtures"]

DAY = datetime(2026, 5, 4, tzinfo=UTC)


def context(run_id: str = "scheduled__2026-05-04T00:00:00+00:00") -> pipeline.RunContext:
    return pipeline.RunContext(dag_run_id=run_id, run_type="scheduled", logical_date=DAY, run_after=DAY)


def no_db() -> None:
    raise AssertionError("this step must not need the results DB")


def read(tmp_path: Path, **kwargs) -> dict:
    return pipeline.read_sources(
        context(),
        urls=kwargs.get("urls"),
        source=kwargs.get("source"),
        list_base_uri=(tmp_path / "lists").as_uri(),
        work_uri=(tmp_path / "work").as_uri(),
        connect=no_db,
        settings=FetchSettings(),
    )


def test_a_100000_line_list_is_planned_within_max_map_length_with_every_url_once(tmp_path: Path):
    (tmp_path / "lists").mkdir()
    urls = [f"https://img{n % 97}.example.com/photo/{n}.jpg" for n in range(100_000)]
    (tmp_path / "lists" / "2026-05-04.txt").write_text("\n".join(urls) + "\n")

    manifest = read(tmp_path)
    batches = pipeline.plan(
        manifest,
        work_uri=(tmp_path / "work").as_uri(),
        dag_run_id=context().dag_run_id,
        batch_size=None,
        max_batches=1024,
    )

    assert manifest["urls"] == 100_000 and manifest["outcome"] == "recorded"
    assert len(batches) <= 1024
    planned = [item.url for batch in batches for item in read_items(batch["uri"])]
    assert planned == urls  # each URL exactly once, in list order
    assert batches[0]["label"].startswith(f"batch 1/{len(batches)} · ")


def test_a_missing_list_is_a_recorded_outcome_naming_the_paths(tmp_path: Path):
    manifest = read(tmp_path)
    assert manifest["outcome"] == "no_source"
    assert manifest["urls"] == 0
    assert "2026-05-04.txt" in manifest["reason"] and "2026-05-04.csv" in manifest["reason"]


def test_manual_urls_take_precedence_and_bad_lines_are_rejected_not_raised(tmp_path: Path):
    manifest = read(tmp_path, urls="https://a.example.com/1.jpg\njavascript:alert(1)\n", source="table")
    assert (manifest["urls"], manifest["rejected"]) == (1, 1)


def test_a_run_with_a_batch_result_missing_records_nothing(tmp_path: Path, harvest_db_dsn: str):
    manifest = read(tmp_path, urls="\n".join(f"https://a.example.com/{n}.jpg" for n in range(3)))
    results_uri = (tmp_path / "work" / "partial.jsonl.gz").as_uri()
    write_results(results_uri, [Result(url="https://a.example.com/0.jpg", status=Status.OK)])

    with pytest.raises(IncompleteRun, match="recorded 1 results but the source had 3 URLs"):
        pipeline.record(
            context(),
            manifest,
            [{"index": 0, "results_uri": results_uri}],
            connect=lambda: psycopg2.connect(harvest_db_dsn),
        )

    with psycopg2.connect(harvest_db_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM harvest.downloads), (SELECT count(*) FROM harvest.runs)")
        assert cur.fetchone() == (0, 0)
