"""The four steps of a Harvest run, as plain functions the DAG's tasks call.

    read_sources ──► plan ──► download (one call per batch, on any worker) ──► record

Each step takes and returns small JSON-friendly dicts (they travel through XCom) that point at the
run's working files (:mod:`include.harvest.workfiles`); no step holds more than one batch of results
in memory. Each step is a transaction in Airflow's sense: running it again for the same run gives
the same files and the same rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from include.harvest import planning, results, sources
from include.harvest.models import Result, Status
from include.harvest.settings import FetchSettings
from include.harvest.workfiles import RunWorkspace, read_items, read_results, write_items, write_results

__all__ = ["MAX_LIST_BYTES", "RunContext", "download", "plan", "read_sources", "record"]

log = logging.getLogger(__name__)

# A remote URL list is read whole into memory before parsing; bound it.
MAX_LIST_BYTES = 512 * 1024 * 1024

Connect = Callable[[], Any]  # returns a DB-API connection to the results DB


@dataclass(frozen=True, slots=True)
class RunContext:
    """What a step needs to know about the DAG run it works for."""

    dag_run_id: str
    run_type: str | None
    logical_date: datetime | None
    run_after: datetime
    started_at: datetime | None = None

    @property
    def run_key(self) -> str:
        """Scheduled and backfill runs are keyed by date, so re-running a date replaces its rows."""
        return self.logical_date.isoformat() if self.logical_date else self.dag_run_id

    @property
    def list_date(self) -> date:
        return (self.logical_date or self.run_after).date()

    def workspace_for(self, work_uri: str) -> RunWorkspace:
        return RunWorkspace(work_uri, self.dag_run_id)


def _read_source(
    ctx: RunContext,
    *,
    urls: str | list[str] | None,
    source: str | None,
    list_base_uri: str,
    connect: Connect,
    settings: FetchSettings,
) -> sources.SourceRead:
    if urls:
        return sources.parse_manual(urls)
    if source in (None, "", "file"):
        return sources.read_list_for_date(list_base_uri, ctx.list_date)
    if source == "table":
        with closing(connect()) as conn:
            return sources.read_table(conn, ctx.list_date)
    assert source is not None
    if source.startswith(("http://", "https://")):
        from include.harvest.fetch import fetch_bytes

        return sources.read_remote_list(
            source, lambda url: fetch_bytes(url, settings, max_bytes=MAX_LIST_BYTES)
        )
    return sources.read_list(source)


def read_sources(
    ctx: RunContext,
    *,
    urls: str | list[str] | None,
    source: str | None,
    list_base_uri: str,
    work_uri: str,
    connect: Connect,
    settings: FetchSettings,
) -> dict[str, Any]:
    """Read, normalise and de-duplicate the run's URLs into the workspace; return the manifest.

    A missing list file for the date is not an error of the pipeline: the manifest says
    ``outcome = "no_source"`` with the paths looked at, and the reduce records that reason.
    """
    workspace = ctx.workspace_for(work_uri)
    manifest: dict[str, Any] = {
        "run_key": ctx.run_key,
        "list_date": ctx.list_date.isoformat(),
        "items_uri": workspace.items_uri,
        "rejected_uri": workspace.rejected_uri,
    }
    try:
        read = _read_source(
            ctx, urls=urls, source=source, list_base_uri=list_base_uri, connect=connect, settings=settings
        )
    except sources.SourceNotFound as exc:
        log.warning("No URL list for %s: %s", ctx.list_date, exc)
        write_items(workspace.items_uri, [])
        write_results(workspace.rejected_uri, [])
        return {
            **manifest,
            "source": f"list for {ctx.list_date} under {list_base_uri}",
            "urls": 0,
            "rejected": 0,
            "duplicates": 0,
            "outcome": "no_source",
            "reason": str(exc),
        }
    write_items(workspace.items_uri, read.items)
    write_results(workspace.rejected_uri, read.rejected)
    log.info(
        "Read %d URLs from %s (%d rejected, %d duplicates dropped)",
        len(read.items),
        read.origin,
        len(read.rejected),
        read.duplicates,
    )
    return {
        **manifest,
        "source": read.origin,
        "urls": len(read.items),
        "rejected": len(read.rejected),
        "duplicates": read.duplicates,
        "outcome": "recorded",
        "reason": None,
    }


def plan(
    manifest: Mapping[str, Any], *, work_uri: str, dag_run_id: str, batch_size: int | None, max_batches: int
) -> list[dict[str, Any]]:
    """Split the run's URLs into batch files; return one small descriptor per batch."""
    workspace = RunWorkspace(work_uri, dag_run_id)
    batches = planning.plan_batches(
        read_items(manifest["items_uri"]), batch_size=batch_size, max_batches=max_batches
    )
    planned = []
    for index, batch in enumerate(batches):
        uri = workspace.batch_uri(index)
        write_items(uri, batch)
        planned.append(
            {
                "index": index,
                "uri": uri,
                "results_uri": workspace.results_uri(index),
                "urls": len(batch),
                "label": f"batch {index + 1}/{len(batches)} · {planning.describe_batch(batch)}",
            }
        )
    log.info("Planned %d URLs into %d batches", manifest["urls"], len(planned))
    return planned


def download(
    batch: Mapping[str, Any],
    *,
    settings: FetchSettings,
    storage_uri: str,
    connect: Connect,
    use_previous: bool = True,
) -> dict[str, Any]:
    """Fetch one batch and write its results file; return the batch's counts."""
    from include.harvest.fetch import fetch_batch
    from include.harvest.storage import ContentAddressedStore

    started = time.monotonic()
    items = read_items(batch["uri"])
    urls = [item.url for item in items]
    previous: dict[str, Result] = {}
    if use_previous and settings.conditional_requests:
        with closing(connect()) as conn:
            previous = results.load_previous(conn, urls)
    fetched = fetch_batch(
        urls, settings, store=ContentAddressedStore(storage_uri), previous=previous, log=log
    )
    if len(fetched) != len(items):  # the engine's contract; a silent drop would lose URLs
        raise RuntimeError(f"fetch_batch returned {len(fetched)} results for {len(items)} URLs")
    for item, result in zip(items, fetched, strict=True):
        result.line, result.meta = item.line, item.meta
    write_results(batch["results_uri"], fetched)
    counts: dict[str, int] = {}
    for result in fetched:
        counts[str(result.status)] = counts.get(str(result.status), 0) + 1
    seconds = time.monotonic() - started
    summary = {
        "index": batch["index"],
        "results_uri": batch["results_uri"],
        "urls": len(fetched),
        "counts": counts,
        "bytes": sum(r.bytes or 0 for r in fetched if r.status == Status.OK),
        "seconds": round(seconds, 3),
    }
    log.info("%s done in %.1fs: %s", batch.get("label", f"batch {batch['index']}"), seconds, counts)
    return summary


def record(
    ctx: RunContext,
    manifest: Mapping[str, Any],
    batch_summaries: Iterable[Mapping[str, Any] | None],
    *,
    connect: Connect,
) -> results.RunSummary:
    """The reduce: write every URL's outcome and the run summary in one transaction."""
    summaries = sorted((s for s in batch_summaries if s), key=lambda s: s["index"])
    uris = [manifest["rejected_uri"], *(s["results_uri"] for s in summaries)]
    run = results.RunInfo(
        run_key=ctx.run_key,
        dag_run_id=ctx.dag_run_id,
        run_type=ctx.run_type,
        logical_date=ctx.logical_date,
        source=manifest["source"],
        started_at=ctx.started_at,
    )
    with closing(connect()) as conn:
        # Every URL gets exactly one answer, or nothing is recorded and the task fails saying so.
        return results.record_run(
            conn,
            run,
            read_results(uris),
            batches=len(summaries),
            outcome=manifest["outcome"],
            reason=manifest["reason"],
            expected_urls=manifest["urls"] + manifest["rejected"],
        )
