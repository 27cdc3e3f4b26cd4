"""The three ways users run Harvest — schedule, manual trigger, backfill — on the real stack, and
the results staying exactly right however often a date is run."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from tests.e2e.conftest import ImageSite, RunningStack

pytestmark = pytest.mark.e2e


def downloads(stack: RunningStack, run_key: str) -> dict[str, tuple[str, str | None]]:
    with stack.results_db() as conn, conn.cursor() as cur:
        cur.execute("SELECT url, status, sha256 FROM harvest.downloads WHERE run_key = %s", (run_key,))
        return {url: (status, sha) for url, status, sha in cur.fetchall()}


def run_summary(stack: RunningStack, run_key: str) -> dict:
    with stack.results_db() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT outcome, urls_total, status_counts, reason FROM harvest.runs WHERE run_key = %s",
            (run_key,),
        )
        outcome, total, counts, reason = cur.fetchone()
    return {"outcome": outcome, "urls_total": total, "counts": counts, "reason": reason}


def wait_for_runs(stack: RunningStack, predicate, count: int, timeout: float = 600) -> list[dict]:
    """Wait until ``count`` runs match ``predicate`` and all of them have finished successfully."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in stack.api.runs("harvest") if predicate(r)]
        if len(runs) >= count and all(r["state"] in ("success", "failed") for r in runs):
            failed = [r["dag_run_id"] for r in runs if r["state"] != "success"]
            assert not failed, [stack.api.describe_failures("harvest", run_id) for run_id in failed]
            return runs
        time.sleep(2)
    raise TimeoutError(f"runs not finished: {[(r['dag_run_id'], r['state']) for r in runs]}")


def wait_for_backfills_to_complete(stack: RunningStack, timeout: float = 120) -> None:
    """Airflow allows one running backfill per DAG; it is complete a scheduler loop after its runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        backfills = stack.api.get("/backfills", dag_id="harvest")["backfills"]
        if all(b["completed_at"] for b in backfills):
            return
        time.sleep(1)
    raise TimeoutError(f"backfills still running: {backfills}")


def test_scheduled_run_downloads_that_days_list(harvest_stack: RunningStack):
    (run,) = wait_for_runs(harvest_stack, lambda r: r["run_type"] == "scheduled", 1)
    logical_date = datetime.fromisoformat(run["logical_date"])
    assert logical_date.date() == datetime.now(UTC).date()

    rows = downloads(harvest_stack, logical_date.date().isoformat())  # a date's runs are keyed by the date
    assert rows == {url: ("ok", sha) for url, sha in harvest_stack.scheduled_urls.items()}


def test_backfill_records_each_days_list_and_is_idempotent(
    harvest_stack: RunningStack, image_site: ImageSite
):
    days = ["2026-03-01", "2026-03-02", "2026-03-03"]
    expected = {}
    for n, day in enumerate(days):
        expected[day] = image_site.add_images(f"backfill-{day}", 4 + n, seed=100 + n)
        listing = "url\n" + "\n".join(expected[day]) + "\n"  # one day as CSV: both formats are lists
        suffix = "csv" if n == 1 else "txt"
        body = listing if suffix == "csv" else "\n".join(expected[day]) + "\n"
        (harvest_stack.url_lists / f"{day}.{suffix}").write_text(body)

    def is_backfill(run: dict) -> bool:
        return run["run_type"] == "backfill" and run["logical_date"][:10] in days

    harvest_stack.stack.run_airflow(
        "backfill", "create", "--dag-id", "harvest", "--from-date", days[0], "--to-date", days[-1]
    )
    runs = wait_for_runs(harvest_stack, is_backfill, 3)
    first = {}
    for run in runs:
        day = run["logical_date"][:10]
        first[day] = downloads(harvest_stack, day)
        assert first[day] == {url: ("ok", sha) for url, sha in expected[day].items()}

    # Backfilling the same dates again re-runs them and leaves exactly the same rows.
    wait_for_backfills_to_complete(harvest_stack)
    before = {r["dag_run_id"]: r["end_date"] for r in runs}
    harvest_stack.stack.run_airflow(
        "backfill",
        "create",
        "--dag-id",
        "harvest",
        "--from-date",
        days[0],
        "--to-date",
        days[-1],
        "--reprocess-behavior",
        "completed",
    )
    rerun = wait_for_runs(
        harvest_stack, lambda r: is_backfill(r) and r["end_date"] != before.get(r["dag_run_id"]), 3
    )
    for run in rerun:
        day = run["logical_date"][:10]
        again = downloads(harvest_stack, day)
        # Same URLs, same content; the server's validators let the re-run skip the bodies (304).
        assert {url: sha for url, (_, sha) in again.items()} == expected[day]
        assert {status for status, _ in again.values()} <= {"ok", "not_modified"}


def test_manual_trigger_with_invalid_conf_is_refused_and_creates_no_run(harvest_stack: RunningStack):
    before = len(harvest_stack.api.runs("harvest"))
    for conf in ({"batch_size": "lots"}, {"batch_size": 0}, {"source": "not a uri"}, {"concurrency": 100000}):
        response = harvest_stack.api.trigger("harvest", conf)
        assert response.status_code == 400, (conf, response.status_code, response.text)
    assert len(harvest_stack.api.runs("harvest")) == before


def test_a_source_outside_the_list_folders_is_refused_at_trigger_and_creates_no_run(
    harvest_stack: RunningStack,
):
    before = len(harvest_stack.api.runs("harvest"))
    url_lists = harvest_stack.url_lists.as_uri()
    for source in (
        "file:///etc/passwd",
        "file:///proc/self/environ",
        f"{url_lists}/../../../../etc/passwd",
        (harvest_stack.data / "elsewhere.txt").as_uri(),
    ):
        response = harvest_stack.api.trigger("harvest", {"source": source})
        assert response.status_code == 400, (source, response.status_code, response.text)
        assert "source" in response.text
    assert len(harvest_stack.api.runs("harvest")) == before


def test_an_explicit_source_that_does_not_exist_fails_the_run_naming_it(harvest_stack: RunningStack):
    missing = f"{harvest_stack.url_lists.as_uri()}/no-such-list.txt"
    api = harvest_stack.api
    response = api.trigger("harvest", {"source": missing})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    api.wait_for_run("harvest", run_id, expect="failed")

    (read,) = [ti for ti in api.task_instances("harvest", run_id) if ti["task_id"] == "read_sources"]
    assert (read["state"], read["try_number"]) == ("failed", 1)  # no retries: waiting cannot fix it
    log = api.request(
        "GET",
        f"/dags/harvest/dagRuns/{run_id}/taskInstances/read_sources/logs/1",
        params={"full_content": True},
    )
    assert log.status_code == 200, log.text
    assert f"the list given as source does not exist: {missing}" in log.text
    with harvest_stack.results_db() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM harvest.runs WHERE dag_run_id = %s", (run_id,))
        assert cur.fetchone() == (0,)  # not recorded as a day without data


def test_record_results_run_twice_leaves_no_duplicates(harvest_stack: RunningStack, image_site: ImageSite):
    expected = image_site.add_images("retry", 5, seed=7)
    api = harvest_stack.api
    run_id = api.trigger("harvest", {"urls": "\n".join(expected)}).json()["dag_run_id"]
    api.wait_for_run("harvest", run_id)
    first = downloads(harvest_stack, run_id)

    response = api.request(
        "POST",
        "/dags/harvest/clearTaskInstances",
        json={"dry_run": False, "dag_run_id": run_id, "task_ids": ["record_results"], "only_failed": False},
    )
    assert response.status_code == 200, response.text
    api.wait_for_run("harvest", run_id)
    tries = [
        ti["try_number"] for ti in api.task_instances("harvest", run_id) if ti["task_id"] == "record_results"
    ]
    assert tries == [2]  # it really ran a second time
    assert downloads(harvest_stack, run_id) == first == {url: ("ok", sha) for url, sha in expected.items()}


def test_empty_list_succeeds_with_zero_downloads_and_a_summary(harvest_stack: RunningStack):
    empty = harvest_stack.url_lists / "empty.txt"  # an explicit list must be in an allowed folder
    empty.write_text("# nothing today\n\n")
    api = harvest_stack.api
    run_id = api.trigger("harvest", {"source": empty.as_uri()}).json()["dag_run_id"]
    api.wait_for_run("harvest", run_id)
    assert downloads(harvest_stack, run_id) == {}
    assert run_summary(harvest_stack, run_id)["urls_total"] == 0
    assert run_summary(harvest_stack, run_id)["outcome"] == "recorded"


def test_day_without_a_list_is_recorded_not_crashed(harvest_stack: RunningStack):
    api = harvest_stack.api
    response = api.trigger("harvest", {}, logical_date="2026-02-10T00:00:00Z")
    run_id = response.json()["dag_run_id"]
    api.wait_for_run("harvest", run_id)
    summary = run_summary(harvest_stack, "2026-02-10")
    assert summary["outcome"] == "no_source"
    assert "2026-02-10" in summary["reason"]
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances("harvest", run_id)}
    assert states["record_results"] == "skipped"


def asset_events(stack: RunningStack, run_id: str) -> list[dict]:
    events = stack.api.get("/assets/events", source_dag_id="harvest", source_run_id=run_id)["asset_events"]
    return [e for e in events if e["uri"] == "harvest://results/downloads"]


def test_table_source_reads_url_sources_for_the_date(harvest_stack: RunningStack, image_site: ImageSite):
    expected = image_site.add_images("table", 3, seed=300)
    with harvest_stack.results_db() as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO harvest.url_sources (list_date, url, meta) VALUES ('2026-04-01', %s, '{\"team\": \"a\"}')",
            [(url,) for url in expected],
        )
    api = harvest_stack.api
    run_id = api.trigger("harvest", {"source": "table"}, logical_date="2026-04-01T00:00:00Z").json()[
        "dag_run_id"
    ]
    api.wait_for_run("harvest", run_id)

    rows = downloads(harvest_stack, "2026-04-01")
    assert rows == {url: ("ok", sha) for url, sha in expected.items()}
    assert len(asset_events(harvest_stack, run_id)) == 1  # recorded: downstream DAGs are told


def test_remote_list_with_bad_lines_records_every_line(harvest_stack: RunningStack, image_site: ImageSite):
    expected = image_site.add_images("remote", 3, seed=400)
    listing = [
        "# served over HTTP",
        *expected,
        "not a url",
        "ftp://example.com/x.jpg",
        f"{image_site.base_url}/gone.png",
    ]
    (image_site.root / "remote-list.txt").write_text("\n".join(listing) + "\n")
    api = harvest_stack.api
    run_id = api.trigger("harvest", {"source": f"{image_site.base_url}/remote-list.txt"}).json()["dag_run_id"]
    api.wait_for_run("harvest", run_id)

    with harvest_stack.results_db() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT url, status, source_line, error FROM harvest.downloads WHERE run_key = %s", (run_id,)
        )
        rows = {url: (status, line, error) for url, status, line, error in cur.fetchall()}
    assert {url: rows[url][0] for url in expected} == dict.fromkeys(expected, "ok")
    rejected = {line: error for status, line, error in rows.values() if status == "rejected"}
    assert set(rejected) == {5, 6}  # each bad line answered, by its line number
    assert "ftp" in rejected[6]
    assert rows[f"{image_site.base_url}/gone.png"][0] == "http_error"
    assert len(rows) == 6


def test_no_asset_event_for_a_day_without_data(harvest_stack: RunningStack):
    api = harvest_stack.api
    run_id = api.trigger("harvest", {}, logical_date="2026-02-11T00:00:00Z").json()["dag_run_id"]
    api.wait_for_run("harvest", run_id)
    assert asset_events(harvest_stack, run_id) == []
