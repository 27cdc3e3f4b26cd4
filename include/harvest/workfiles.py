"""A run's working files in shared storage: the URL list, each batch's URLs and its checkpoints.

Tasks on different Celery workers share no disk, and the metadata DB must not carry a 100,000-URL
run through XCom. So every list travels as a gzipped JSON-lines file under ``HARVEST_WORK_URI``
(``file://`` for one machine, ``s3://`` or any fsspec URI for several), and XCom carries only its URI
and a few counts. A file appears under its name only once it is complete, so a failed or retried
task never leaves a half-written file for the next task to read (see :func:`write_jsonl`). The
run's folder is removed once its results are recorded (:meth:`RunWorkspace.remove`).

Layout, one folder per DAG run::

    <work_uri>/<dag_run_id>/items.jsonl.gz          normalised URLs from the source
    <work_uri>/<dag_run_id>/rejected.jsonl.gz       results for lines that were not valid URLs
    <work_uri>/<dag_run_id>/batches/00003.jsonl.gz  the URLs of batch 3
    <work_uri>/<dag_run_id>/partial/00003/          checkpoints of batch 3 while it runs (.checkpoints)

Batch results do not come back here: each batch stages them in Postgres while it runs
(:class:`include.harvest.results.BatchStaging`).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from include.harvest.models import Result, UrlItem

__all__ = [
    "RunWorkspace",
    "exists",
    "iter_items",
    "read_items",
    "read_results",
    "write_items",
    "write_results",
]


def _safe_name(text: str) -> str:
    # Run ids carry ':' and '+' (manual__2026-01-01T00:00:00+00:00): keep paths portable.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def write_jsonl(uri: str, records: Iterable[dict[str, Any]]) -> int:
    """Write records as gzipped JSON lines to ``uri`` atomically; return how many were written.

    If ``records`` raises halfway (or the write fails), nothing appears under ``uri`` and nothing
    is left behind: an earlier file of that name stays as it was.
    """
    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        return _write_local(path, records)
    return _write_object(fs, path, records)


def _write_local(path: str, records: Iterable[dict[str, Any]]) -> int:
    # A hidden name in the same folder, then rename(): atomic, on one filesystem. (fsspec's own
    # uncommitted local files start in the system temp folder, and moving one to another
    # filesystem is a copy that readers can see half-done.)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.{os.path.basename(path)}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as raw:
            count = _write_lines(raw, records)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return count


def _write_object(fs: Any, path: str, records: Iterable[dict[str, Any]]) -> int:
    # Object stores have no rename (s3fs's mv is a copy and a delete), and a buffered file opened
    # with autocommit uploads on close even when closed by an exception. Uncommitted, the upload
    # (a multipart upload on S3) is invisible until commit() completes it; discard() aborts it.
    # No makedirs: object stores have no folders, and s3fs's would create a missing bucket.
    raw = fs.open(path, "wb", autocommit=False)
    try:
        count = _write_lines(raw, records)
        raw.close()
        raw.commit()
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            if not raw.closed:
                raw.close()  # sends what is buffered as a part of the upload that will be aborted
            raw.discard()
        raise
    return count


def _write_lines(raw: IO[bytes], records: Iterable[dict[str, Any]]) -> int:
    count = 0
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as out:
        for record in records:
            out.write(json.dumps(record, separators=(",", ":")).encode())
            out.write(b"\n")
            count += 1
    return count


def _iter_jsonl(uri: str) -> Iterator[dict[str, Any]]:
    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def write_items(uri: str, items: Iterable[UrlItem]) -> int:
    return write_jsonl(uri, ({"url": i.url, "line": i.line, "meta": i.meta} for i in items))


def write_results(uri: str, results: Iterable[Result]) -> int:
    return write_jsonl(uri, (r.to_record() for r in results))


def exists(uri: str) -> bool:
    fs, path = fsspec.core.url_to_fs(uri)
    return bool(fs.exists(path))


def read_items(uri: str) -> list[UrlItem]:
    return list(iter_items(uri))


def iter_items(uri: str) -> Iterator[UrlItem]:
    """The items of a work file, read as they are asked for (a batch task streams its batch)."""
    for record in _iter_jsonl(uri):
        yield UrlItem(url=record["url"], line=record.get("line"), meta=record.get("meta"))


def read_results(uris: Iterable[str]) -> Iterator[Result]:
    """Stream results file after file: one file's lines in memory at a time, never all of them."""
    for uri in uris:
        for record in _iter_jsonl(uri):
            yield Result.from_record(record)


class RunWorkspace:
    """The folder of one DAG run's working files."""

    def __init__(self, work_uri: str, dag_run_id: str) -> None:
        self.root = f"{work_uri.rstrip('/')}/{_safe_name(dag_run_id)}"

    def remove(self) -> bool:
        """Delete the run's folder and everything in it; return whether there was anything to delete."""
        fs, path = fsspec.core.url_to_fs(self.root)
        fs.invalidate_cache(path)  # s3fs lists what to delete from its cache when it has a listing
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            return False
        return True

    @property
    def items_uri(self) -> str:
        return f"{self.root}/items.jsonl.gz"

    @property
    def rejected_uri(self) -> str:
        return f"{self.root}/rejected.jsonl.gz"

    def batch_uri(self, index: int) -> str:
        return f"{self.root}/batches/{index:05d}.jsonl.gz"

    def partial_uri(self, index: int) -> str:
        """The folder of batch ``index``'s checkpoint parts; gone once its results are staged."""
        return f"{self.root}/partial/{index:05d}"
