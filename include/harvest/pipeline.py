"""The four steps of a Harvest run, as plain functions the DAG's tasks call.

    read_sources ──► plan ──► download (one call per batch, on any worker) ──► record

Each step takes and returns small JSON-friendly dicts (they travel through XCom) that point at the
run's working files (:mod:`include.harvest.workfiles`); no step holds a batch's results in memory.
Each batch stages its results in Postgres while it runs, so the reduce finalises in SQL (with the
few lines rejected while reading, from their file). Each step is a transaction in Airflow's
sense: running it again for the same run gives the same files and the same rows.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, nullcontext
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from include.harvest import planning, results, sources
from include.harvest.models import Result, UrlItem
from include.harvest.objectstore import check_access
from include.harvest.settings import FetchSettings
from include.harvest.workfiles import (
    RunWorkspace,
    exists,
    iter_items,
    open_items,
    open_results,
    read_results,
    write_items,
    write_results,
)

__all__ = ["MAX_LIST_BYTES", "RunContext", "download", "plan", "read_sources", "record"]

log = logging.getLogger(__name__)

# A batch task reads its batch from its file this many URLs at a time: one query for their earlier
# copies, one check of the checkpoint, as the fetch threads need more.
STAGE_READ_CHUNK = 1000
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

    def run_key(self, *, reads_dated_list: bool) -> str:
        """What the run's rows are keyed by in ``harvest.downloads`` and ``harvest.runs``.

        A run that reads the list *of a date* (the schedule, a backfill, a manual run without URLs
        or a list of its own) is keyed by that date, ``YYYY-MM-DD``: every run of a date replaces
        the same rows, so a date re-run by hand while its backfill runs still ends with one row
        per URL. A run given its own URLs or list is keyed by its logical date, or its run id
        when it has none.
        """
        if reads_dated_list:
            return self.list_date.isoformat()
        return self.logical_date.isoformat() if self.logical_date else self.dag_run_id

    @property
    def list_date(self) -> date:
        return (self.logical_date or self.run_after).date()

    def workspace_for(self, work_uri: str) -> RunWorkspace:
        return RunWorkspace(work_uri, self.dag_run_id)


def _reads_dated_list(urls: str | list[str] | None, source: str | None) -> bool:
    """Whether the run reads the list for its date under ``HARVEST_URL_LIST_URI``."""
    return not urls and source in (None, "", "file")


def _is_object_store_uri(uri: str) -> bool:
    return uri.split("://", 1)[0] not in ("file", "http", "https", uri)


def _reads_list_of_its_date(urls: str | list[str] | None, source: str | None) -> bool:
    """Whether the run reads its date's list, from the list folder or ``harvest.url_sources``."""
    return _reads_dated_list(urls, source) or (not urls and source == "table")


def _is_remote_list(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _check_source_allowed(
    urls: str | list[str] | None, source: str | None, *, list_base_uri: str, list_roots: Sequence[str]
) -> None:
    """Refuse an explicit list file outside the URL-list base and ``HARVEST_LIST_ROOTS``.

    The ``source`` Param's pattern refuses it at trigger time already; this covers the paths that
    skip that check (``dag.test()``, a Param default) and the ones a pattern cannot see (symlinks).
    """
    if urls or _reads_list_of_its_date(urls, source) or source is None or _is_remote_list(source):
        return
    from include.harvest.listroots import URL_LIST_SETTING, normalise_root

    roots = [normalise_root(list_base_uri, setting=URL_LIST_SETTING), *list_roots]
    sources.check_source_allowed(source, roots)


def _looked_for(ctx: RunContext, source: str | None, list_base_uri: str) -> str:
    """What a run that found no list of its date records as its source."""
    if source == "table":
        return f"harvest.url_sources (list_date = {ctx.list_date.isoformat()})"
    return f"list for {ctx.list_date} under {list_base_uri}"


def _read_source(
    ctx: RunContext,
    *,
    urls: str | list[str] | None,
    source: str | None,
    list_base_uri: str,
    connect: Connect,
    settings: FetchSettings,
    sink: sources.Sink,
) -> sources.SourceRead:
    if urls:
        return sources.parse_manual(urls, sink=sink)
    if _reads_dated_list(urls, source):
        return sources.read_list_for_date(list_base_uri, ctx.list_date, sink=sink)
    if source == "table":
        with closing(connect()) as conn:
            return sources.read_table(conn, ctx.list_date, sink=sink)
    assert source is not None
    if _is_remote_list(source):
        from include.harvest.fetch import fetch_bytes

        return sources.read_remote_list(
            source, lambda url: fetch_bytes(url, settings, max_bytes=MAX_LIST_BYTES), sink=sink
        )
    return sources.read_list(source, sink=sink)


def read_sources(
    ctx: RunContext,
    *,
    urls: str | list[str] | None,
    source: str | None,
    list_base_uri: str,
    work_uri: str,
    connect: Connect,
    settings: FetchSettings,
    storage_uri: str | None = None,
    list_roots: Sequence[str] = (),
) -> dict[str, Any]:
    """Read, normalise and de-duplicate the run's URLs into the workspace; return the manifest.

    The URLs and the rejected lines are written to the run's work files as they are read, and the
    files appear only once the whole list is read: the task holds none of the list (:mod:`.sources`).

    An explicit list file (``source``) must lie under ``list_base_uri`` or one of ``list_roots``
    (``HARVEST_LIST_ROOTS``), or :class:`~.sources.SourceNotAllowed` is raised before anything is
    touched.

    First, before anything is read, the run's URIs are checked (:func:`.objectstore.check_access`):
    storage (``storage_uri``, when given) and work files must be writable, and the list folder
    readable when the run reads the date's list. A missing bucket, refused credentials or an
    unreachable endpoint stop the run here with a :class:`~.errors.StorageUnavailable` naming the
    URI and what to fix, not after the downloads.

    A missing list for the date (in the list folder or ``harvest.url_sources``) is not an error of
    the pipeline: the manifest says ``outcome = "no_source"`` with the paths looked at, and the
    reduce records that reason. A list given explicitly that does not exist is an error: it raises
    :class:`~.sources.SourceNotFound` naming it.
    """
    _check_source_allowed(urls, source, list_base_uri=list_base_uri, list_roots=list_roots)
    if storage_uri is not None:
        check_access(storage_uri, setting="HARVEST_STORAGE_URI", write=True)
    check_access(work_uri, setting="HARVEST_WORK_URI", write=True)
    if _reads_dated_list(urls, source):
        check_access(list_base_uri, setting="HARVEST_URL_LIST_URI", write=False)
    elif not urls and source and _is_object_store_uri(source):
        check_access(source, setting="source", write=False)  # a list in a bucket: the bucket exists
    workspace = ctx.workspace_for(work_uri)
    manifest: dict[str, Any] = {
        "run_key": ctx.run_key(reads_dated_list=_reads_list_of_its_date(urls, source)),
        "list_date": ctx.list_date.isoformat(),
        "work_uri": work_uri,  # where the reduce finds the run's folder to delete
        "items_uri": workspace.items_uri,
        "rejected_uri": workspace.rejected_uri,
    }
    try:
        # Straight into the work files as the list is read: the task holds none of it.
        with open_items(workspace.items_uri) as items, open_results(workspace.rejected_uri) as rejected:
            read = _read_source(
                ctx,
                urls=urls,
                source=source,
                list_base_uri=list_base_uri,
                connect=connect,
                settings=settings,
                sink=sources.Sink(items=items, rejected=rejected),
            )
    except sources.SourceNotFound as exc:
        if not _reads_list_of_its_date(urls, source):
            raise sources.SourceNotFound(
                f"the list given as source does not exist: {source}. Check the URI, or leave source "
                "empty to read the list of the run's date",
                exc.candidates,
            ) from exc
        log.warning("No URL list for %s: %s", ctx.list_date, exc)
        write_items(workspace.items_uri, [])
        write_results(workspace.rejected_uri, [])
        return {
            **manifest,
            "source": _looked_for(ctx, source, list_base_uri),
            "urls": 0,
            "rejected": 0,
            "duplicates": 0,
            "outcome": "no_source",
            "reason": str(exc),
        }
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
    manifest: Mapping[str, Any],
    *,
    work_uri: str,
    dag_run_id: str,
    batch_size: int | None,
    max_batches: int,
    worker_slots: int | None = None,
) -> list[dict[str, Any]]:
    """Split the run's URLs into batch files; return one small descriptor per batch.

    Without ``batch_size``, batches are sized from the list's length and ``worker_slots``
    (:func:`.planning.choose_batch_size`).
    """
    workspace = RunWorkspace(work_uri, dag_run_id)
    lengths = planning.batch_lengths(
        manifest["urls"], batch_size=batch_size, max_batches=max_batches, worker_slots=worker_slots
    )
    # One batch in hand at a time, and that one in SQLite (HostSpread): the task holds no list.
    items = iter_items(manifest["items_uri"])
    planned = []
    for index, length in enumerate(lengths):
        uri = workspace.batch_uri(index)
        with planning.HostSpread(itertools.islice(items, length)) as batch:
            if batch.urls < length:
                raise RuntimeError(_list_mismatch(manifest, sum(lengths[:index]) + batch.urls))
            write_items(uri, batch)
        planned.append(
            {
                "index": index,
                "uri": uri,
                "dag_run_id": dag_run_id,
                "partial_uri": workspace.partial_uri(index),
                "urls": batch.urls,
                "label": f"batch {index + 1}/{len(lengths)} · {planning.describe_batch(batch.urls, batch.hosts)}",
            }
        )
    if next(items, None) is not None:
        raise RuntimeError(_list_mismatch(manifest, None))
    log.info("Planned %d URLs into %d batches", manifest["urls"], len(planned))
    return planned


def _list_mismatch(manifest: Mapping[str, Any], found: int | None) -> str:
    held = "more" if found is None else f"only {found:,}"
    return (
        f"{manifest['items_uri']} holds {held} URLs where read_sources counted {manifest['urls']:,}: the "
        "run's work files were changed or partly deleted. Clear the whole run (from read_sources) to "
        "read its list again."
    )


def download(
    batch: Mapping[str, Any],
    *,
    settings: FetchSettings,
    storage_uri: str,
    connect: Connect,
    use_previous: bool = True,
) -> dict[str, Any]:
    """Fetch one batch and stage its results in Postgres; return the batch's counts.

    Finished results are checkpointed while the batch runs (:mod:`.checkpoints`). A retry of an
    attempt that was killed or failed reuses every result of it whose blob is in the store, and
    fetches only the other URLs. A URL is asked conditionally (ETag / Last-Modified of its last
    stored copy) only when that copy's blob is in this store; otherwise it is downloaded in full.
    """
    from include.harvest import checkpoints
    from include.harvest.fetch import fetch_each
    from include.harvest.storage import ContentAddressedStore

    started = time.monotonic()
    if "dag_run_id" not in batch:
        raise RuntimeError(
            "this batch was planned by an earlier version of Harvest, whose reduce read result files: "
            "clear the whole run (from read_sources) to download it again"
        )
    if not exists(batch["uri"]):
        raise FileNotFoundError(
            f"{batch['uri']} is gone: a run's work files are deleted once it is recorded. To download "
            "this run again, clear the whole run (from read_sources), not one of its batches."
        )
    store = ContentAddressedStore(storage_uri)
    # Results an earlier attempt staged (killed before Airflow saved its return value) are not
    # reused: the batch is computed again, from the checkpoints if any are left. Reusing them would
    # also skip the downloads of a whole run that was cleared to fetch again, whose new plan may hold
    # other URLs. Either way this attempt's results replace the batch's staged ones whole, one
    # result per URL, and the reduce upserts: the same rows.
    partial_uri: str | None = batch.get("partial_uri")  # absent from batches planned before checkpoints
    earlier = checkpoints.load_checkpoint(partial_uri, log=log) if partial_uri else {}
    reused = checkpoints.reusable_results(earlier, earlier, store) if earlier else {}
    del earlier
    # Counted over the batch's file: a checkpoint left by another plan of the run (cleared, not
    # recorded) may name other batches' URLs, which are never staged here.
    reused_count = sum(1 for item in iter_items(batch["uri"]) if item.url in reused) if reused else 0
    if reused_count:
        log.info(
            "resuming: %d URLs already stored by an earlier attempt, %d to fetch",
            reused_count,
            batch["urls"] - reused_count,
        )
    conditional = use_previous and settings.conditional_requests
    # Staged while the batch runs, a chunk at a time, so the task never holds the batch's results
    # and the reduce only finalises in SQL.
    staging = results.BatchStaging(connect, batch["dag_run_id"], batch["index"])
    previous: dict[str, Result] = {}  # for the URLs read and not finished yet: see finished()
    tally = {"recorded": 0, "trusted": 0}

    def to_fetch() -> Iterator[UrlItem]:
        """The batch's URLs that need a fetch, read from its file a chunk at a time as the fetch
        threads need more; the others (stored by an earlier attempt) are staged on the way. The
        task holds a window of the batch (:class:`.Frontier`), never the batch: its memory does not
        grow with the batch size."""
        items = iter_items(batch["uri"])
        while chunk := list(itertools.islice(items, STAGE_READ_CHUNK)):
            urls = [item.url for item in chunk]
            staging.expect(urls)  # unique: read_sources dropped duplicates
            fetch = []
            for item in chunk:
                if (result := reused.pop(item.url, None)) is not None:
                    staging.add(result)
                else:
                    fetch.append(item)
            if fetch and conditional:
                fetch_urls = [item.url for item in fetch]
                with closing(connect()) as conn:
                    recorded = results.load_previous(conn, fetch_urls)
                # A 304 only confirms the copy we hold: trust it only if its blob is in this store
                # (not deleted, not in a store the operator moved away from); else download in full.
                trusted = checkpoints.reusable_results(recorded, fetch_urls, store) if recorded else {}
                previous.update(trusted)
                tally["recorded"] += len(recorded)
                tally["trusted"] += len(trusted)
            yield from fetch

    checkpoint = checkpoints.BatchCheckpoint(partial_uri, log=log) if partial_uri else None

    def finished(result: Result) -> None:
        previous.pop(result.url, None)  # read when its fetch started; not needed any more
        if checkpoint is not None:
            checkpoint.add(result)
        staging.add(result)

    with checkpoint or nullcontext():
        fetch_each(
            to_fetch(),
            settings,
            store=store,
            previous=previous,
            log=log,
            on_result=finished,
            total=batch["urls"] - reused_count,
        )
    if tally["trusted"] < tally["recorded"]:
        log.info(
            "%d of %d earlier copies are not in %s: downloaded them in full",
            tally["recorded"] - tally["trusted"],
            tally["recorded"],
            storage_uri,
        )
    staged = staging.finish()  # raises if a URL has no result: a silent drop would lose it
    if partial_uri:
        checkpoints.discard_checkpoint(partial_uri, log=log)
    seconds = time.monotonic() - started
    summary = {
        "index": batch["index"],
        "urls": staged,
        "reused": reused_count,
        "counts": staging.counts,
        "bytes": staging.ok_bytes,
        "seconds": round(seconds, 3),
    }
    log.info("%s done in %.1fs: %s", batch.get("label", f"batch {batch['index']}"), seconds, staging.counts)
    return summary


def record(
    ctx: RunContext,
    manifest: Mapping[str, Any],
    batch_summaries: Iterable[Mapping[str, Any] | None],
    *,
    connect: Connect,
    keep_work_files: bool = False,
) -> results.RunSummary:
    """The reduce: write every URL's outcome and the run summary in one transaction.

    Each batch staged its results in Postgres as it ended (:func:`.results.stage_results`); here
    they are moved into ``harvest.downloads`` in SQL, with the run summary, in one transaction. Once
    that has committed, the run's work folder is deleted, unless ``keep_work_files``
    (``HARVEST_KEEP_WORK_FILES``, for debugging). If recording fails, the folder and the staged
    results stay, so that a retry, of this task or of failed batches, finds what it needs.
    """
    if not exists(manifest["rejected_uri"]):
        # The work files are deleted after the commit: this task ran before (a clear or a retry
        # after its commit). The rows are already there; recording is done.
        return _already_recorded(ctx, manifest, connect=connect)
    summaries = [s for s in batch_summaries if s]
    run = results.RunInfo(
        run_key=manifest["run_key"],
        dag_run_id=ctx.dag_run_id,
        run_type=ctx.run_type,
        logical_date=ctx.logical_date,
        source=manifest["source"],
        started_at=ctx.started_at,
    )
    with closing(connect()) as conn:
        # Every URL gets exactly one answer, or nothing is recorded and the task fails saying so.
        summary = results.record_staged_run(
            conn,
            run,
            read_results([manifest["rejected_uri"]]),
            batches=len(summaries),
            outcome=manifest["outcome"],
            reason=manifest["reason"],
            expected_urls=manifest["urls"] + manifest["rejected"],
        )
    _clean_up_work_files(ctx, manifest, keep=keep_work_files)
    return summary


def _already_recorded(
    ctx: RunContext, manifest: Mapping[str, Any], *, connect: Connect
) -> results.RunSummary:
    with closing(connect()) as conn:
        summary = results.load_recorded_run(conn, manifest["run_key"], dag_run_id=ctx.dag_run_id)
    if summary is None:
        raise FileNotFoundError(
            f"{manifest['rejected_uri']} is gone and run {ctx.dag_run_id} is not the one recorded for "
            f"{manifest['run_key']}: its work files were deleted, or another run of the key recorded "
            "since. To record it again, clear the whole run (from read_sources)."
        )
    log.info("Run %s was recorded already and its work files deleted: nothing to do", ctx.dag_run_id)
    return summary


def _clean_up_work_files(ctx: RunContext, manifest: Mapping[str, Any], *, keep: bool) -> None:
    work_uri = manifest.get("work_uri")
    if work_uri is None:  # a manifest written before manifests named their work folder
        log.info("Kept the run's work files: the manifest does not say where they are")
        return
    workspace = ctx.workspace_for(work_uri)
    if keep:
        log.info("Kept the run's work files at %s (HARVEST_KEEP_WORK_FILES)", workspace.root)
        return
    try:
        removed = workspace.remove()
    except Exception as exc:
        # The results are committed: leftover files cost storage, not correctness, so a recorded
        # run is not failed for them.
        log.warning("Could not delete the run's work files at %s: %s", workspace.root, exc)
        return
    if removed:
        log.info("Deleted the run's work files at %s", workspace.root)
    else:
        log.info("No work files to delete at %s (already gone)", workspace.root)
