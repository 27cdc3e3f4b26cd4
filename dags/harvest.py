"""
# Harvest: download the day's image URLs on Celery workers

Reads a list of image URLs, spreads the downloads over the Celery workers in **batches** (one mapped
task instance per batch, not per URL), and records every URL's outcome in Postgres in one
transaction — the Celery *chord* of `download_image(url)` tasks with a collecting callback, grown up.

```
read_sources ─► plan_batches ─► download_batch × N (mapped, on workers) ─► record_results
```

## Where the URLs come from
| how the run starts | what it reads |
|---|---|
| the daily schedule, a backfill | `HARVEST_URL_LIST_URI/<YYYY-MM-DD>.txt` (or `.csv`, `.txt.gz`, `.csv.gz`) for the run's logical date |
| *Trigger* with **URLs** filled in | exactly those URLs |
| *Trigger* with **Source** | `table` (`harvest.url_sources` for the date), `file` (the day's list), an `https://…` list, or a list file under `HARVEST_URL_LIST_URI` or a folder of `HARVEST_LIST_ROOTS` (any other file is refused at trigger time) |

A day without a list file is not a failure: the run records `outcome = no_source` with the paths it
looked at in `harvest.runs`, and `record_results` ends *skipped* (no Asset event). A list given as
**Source** that does not exist fails the run, naming it.

## What it writes
- `harvest.downloads`: one row per (run key, URL) with status, HTTP status, sha256, size, dimensions,
  attempts, latency and an error text a person can act on. A run of a date's list (schedule,
  backfill, or a trigger without URLs/source) is keyed by the date (`YYYY-MM-DD`); a run given its
  own URLs or list by its logical date, or its run id. Re-running replaces the run key's rows:
  never duplicates.
- `harvest.objects`: one row per stored blob, stored once by SHA-256 under `HARVEST_STORAGE_URI`.
- `harvest.runs`: the run summary (counts per status, bytes, duration, throughput, p50/p95).
- Asset `harvest://results/downloads` is updated when a run recorded its results.

To read them in the UI: **Harvest** in the navigation bar (recent runs, charts), and the **Harvest**
tab of a run (failing hosts, failed URLs with their errors, CSV download).

## Politeness
Before fetching from a host, its robots.txt is read (RFC 9309, for Harvest's user agent) and what it
disallows ends `blocked` with the rule in the error; its `Crawl-delay` is honoured by every worker.
At most `HARVEST_PER_HOST_CONCURRENCY` requests are in flight to one host; `Retry-After` pauses the
host for all workers. `HARVEST_RESPECT_ROBOTS_TXT=false` turns the robots.txt check off, for your
own servers only. Set `HARVEST_USER_AGENT` with a contact address.

## Statuses
`ok`, `not_modified`, `rejected`, `blocked`, `http_error`, `timeout`, `connection_error`,
`too_large`, `too_many_redirects`, `invalid_content`, `skipped`, `internal_error` — see the README.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

from include.harvest.listroots import configured_roots, source_pattern

HARVEST_RESULTS = Asset(name="harvest_downloads", uri="harvest://results/downloads")

# Beyond this many mapped task instances Airflow refuses to expand ([core] max_map_length).
MAX_BATCHES = 1024

# The folders a list file given as `source` may come from: HARVEST_URL_LIST_URI and HARVEST_LIST_ROOTS,
# read from the environment (no network) when the file is parsed. The api-server validates a trigger
# against the serialized Params, so a source outside them is refused before a run exists.
LIST_ROOTS = configured_roots()

PARAMS = {
    "urls": Param(
        None,
        type=["null", "string"],
        title="URLs",
        description="One URL per line. When given, exactly these are downloaded instead of the day's list.",
        format="multiline",
    ),
    "source": Param(
        None,
        type=["null", "string"],
        title="Source",
        description=(
            "Where the URL list comes from: 'file' (the list for the run's date, the default), "
            "'table' (harvest.url_sources for the date), an https:// list, or the URI of a list file "
            f"under {' or '.join(f'{root}/' for root in LIST_ROOTS)} (the operator allows more "
            "folders with HARVEST_LIST_ROOTS)."
        ),
        pattern=source_pattern(LIST_ROOTS),
    ),
    "batch_size": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        maximum=100_000,
        title="Batch size",
        description=(
            "URLs per mapped task. Empty: sized from the list and the worker slots (one batch per "
            "slot, 500 to 50,000 URLs each; grown so a run stays within 1024 batches)."
        ),
    ),
    "concurrency": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        maximum=256,
        title="Concurrency per batch",
        description="Parallel downloads inside one batch task. Empty: HARVEST_CONCURRENCY or 32.",
    ),
    "per_host_concurrency": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        maximum=64,
        title="Concurrency per host",
        description="Requests in flight to one host across all workers. Empty: HARVEST_PER_HOST_CONCURRENCY or 8.",
    ),
    "max_mb": Param(
        None,
        type=["null", "number"],
        exclusiveMinimum=0,
        maximum=2048,
        title="Largest file (MiB)",
        description="Bodies larger than this are recorded as too_large. Empty: HARVEST_MAX_BYTES or 20 MiB.",
    ),
    "accept_any_content": Param(
        False,
        type="boolean",
        title="Accept any content",
        description="Store files that are not images too (their type is still sniffed from the bytes).",
    ),
    "force": Param(
        False,
        type="boolean",
        title="Force re-download",
        description="Ignore ETag / Last-Modified from earlier runs and download everything again.",
    ),
}


def _run_context() -> Any:
    from include.harvest.pipeline import RunContext

    dag_run = get_current_context()["dag_run"]
    return RunContext(
        dag_run_id=dag_run.run_id,
        # The enum's value ("scheduled", "manual", "backfill"): str() of the SDK's enum is its name.
        run_type=getattr(dag_run.run_type, "value", str(dag_run.run_type)),
        logical_date=dag_run.logical_date,
        run_after=dag_run.run_after,
        started_at=dag_run.start_date,
    )


def _fetch_settings(params: dict[str, Any]) -> Any:
    from include.harvest.settings import FetchSettings

    max_mb = params.get("max_mb")
    return FetchSettings.from_env(
        concurrency=params.get("concurrency"),
        per_host_concurrency=params.get("per_host_concurrency"),
        max_bytes=int(max_mb * 1024 * 1024) if max_mb else None,
        accept_any_content=params.get("accept_any_content") or None,
    )


@dag(
    dag_id="harvest",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=4,
    tags=["harvest", "images"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
    params=PARAMS,
    doc_md=__doc__,
)
def harvest() -> None:
    @task
    def read_sources(params: dict[str, Any]) -> dict[str, Any]:
        """Read the run's URL list, normalise and de-duplicate it; invalid lines become rejected rows."""
        from include.harvest import hooks, pipeline

        uris = hooks.deployment_uris()
        with hooks.fail_fast_on_permanent_storage_errors(), hooks.fail_fast_on_refused_sources():
            return pipeline.read_sources(
                _run_context(),
                urls=params.get("urls"),
                source=params.get("source"),
                list_base_uri=uris["url_list_uri"],
                work_uri=uris["work_uri"],
                connect=hooks.results_db_connection,
                settings=_fetch_settings(params),
                storage_uri=uris["storage_uri"],
                list_roots=configured_roots(),
            )

    @task
    def plan_batches(manifest: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        """Split the URLs into batches, one mapped download task each."""
        from include.harvest import hooks, pipeline

        return pipeline.plan(
            manifest,
            work_uri=hooks.deployment_uris()["work_uri"],
            dag_run_id=get_current_context()["dag_run"].run_id,
            batch_size=params.get("batch_size"),
            max_batches=MAX_BATCHES,
            worker_slots=hooks.worker_slots(),
        )

    @task(map_index_template="{{ batch_label }}", retry_delay=timedelta(seconds=10))
    def download_batch(batch: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """Fetch, validate and store one batch of URLs; every URL ends as exactly one result."""
        from include.harvest import hooks, pipeline

        get_current_context()["batch_label"] = batch["label"]
        return pipeline.download(
            batch,
            settings=_fetch_settings(params),
            storage_uri=hooks.deployment_uris()["storage_uri"],
            connect=hooks.results_db_connection,
            use_previous=not params.get("force"),
        )

    # none_failed: an empty list skips the mapped task, and the run must still be recorded.
    @task(trigger_rule="none_failed", outlets=[HARVEST_RESULTS])
    def record_results(manifest: dict[str, Any], batches: list[dict[str, Any]]) -> dict[str, Any]:
        """The reduce: write every URL's outcome and the run summary to Postgres in one transaction."""
        from airflow.sdk.exceptions import AirflowSkipException

        from include.harvest import hooks, pipeline

        summary = pipeline.record(
            _run_context(),
            manifest,
            batches or [],
            connect=hooks.results_db_connection,
            keep_work_files=hooks.keep_work_files(),
        )
        print(summary.format())
        if manifest["outcome"] == "no_source":
            # Recorded in harvest.runs; skipping emits no Asset event for a day without data.
            raise AirflowSkipException(manifest["reason"])
        return {"urls": summary.urls_total, "counts": summary.counts, "bytes": summary.bytes_total}

    manifest = read_sources()
    batches = download_batch.expand(batch=plan_batches(manifest))
    record_results(manifest, batches)


harvest()
