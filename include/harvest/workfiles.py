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
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Generic, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from include.harvest.models import Result, UrlItem

__all__ = [
    "JsonlWriter",
    "RunWorkspace",
    "exists",
    "iter_items",
    "open_items",
    "open_results",
    "read_items",
    "read_results",
    "write_items",
    "write_jsonl",
    "write_results",
]

T = TypeVar("T")


def _safe_name(text: str) -> str:
    # Run ids carry ':' and '+' (manual__2026-01-01T00:00:00+00:00): keep paths portable.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def write_jsonl(uri: str, records: Iterable[dict[str, Any]]) -> int:
    """Write records as gzipped JSON lines to ``uri`` atomically; return how many were written.

    If ``records`` raises halfway (or the write fails), nothing appears under ``uri`` and nothing
    is left behind: an earlier file of that name stays as it was.
    """
    with _open(uri, lambda record: record) as out:
        for record in records:
            out.append(record)
    return len(out)


class JsonlWriter(Generic[T]):
    """Lines of one work file being written: :meth:`append` a record, ``len()`` counts them."""

    def __init__(self, out: gzip.GzipFile, encode: Callable[[T], dict[str, Any]]) -> None:
        self._out = out
        self._encode = encode
        self._count = 0

    def append(self, record: T) -> None:
        self._out.write(json.dumps(self._encode(record), separators=(",", ":")).encode())
        self._out.write(b"\n")
        self._count += 1

    def __len__(self) -> int:
        return self._count


def open_items(uri: str) -> contextlib.AbstractContextManager[JsonlWriter[UrlItem]]:
    """A :class:`JsonlWriter` of URLs whose file appears under ``uri`` when the block ends without
    an error; if the block raises, nothing appears and nothing is left behind (as with
    :func:`write_jsonl`). For a task that writes several work files from one pass over its input
    (``read_sources`` writes the URLs and the rejected lines together) and holds none of them."""
    return _open(uri, _item_record)


def open_results(uri: str) -> contextlib.AbstractContextManager[JsonlWriter[Result]]:
    """:func:`open_items` for results (:func:`read_results` reads them back)."""
    return _open(uri, Result.to_record)


@contextlib.contextmanager
def _open(uri: str, encode: Callable[[T], dict[str, Any]]) -> Iterator[JsonlWriter[T]]:
    fs, path = fsspec.core.url_to_fs(uri)
    opened = _local_file(path) if isinstance(fs, LocalFileSystem) else _object_file(fs, path)
    with opened as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as out:
        yield JsonlWriter(out, encode)


@contextlib.contextmanager
def _local_file(path: str) -> Iterator[IO[bytes]]:
    # A hidden name in the same folder, then rename(): atomic, on one filesystem. (fsspec's own
    # uncommitted local files start in the system temp folder, and moving one to another
    # filesystem is a copy that readers can see half-done.)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.{os.path.basename(path)}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as raw:
            yield raw
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _object_file(fs: Any, path: str) -> Iterator[IO[bytes]]:
    # Object stores have no rename (s3fs's mv is a copy and a delete), and a buffered file opened
    # with autocommit uploads on close even when closed by an exception. Uncommitted, the upload
    # (a multipart upload on S3) is invisible until commit() completes it; discard() aborts it.
    # No makedirs: object stores have no folders, and s3fs's would create a missing bucket.
    raw = fs.open(path, "wb", autocommit=False)
    try:
        yield raw
        raw.close()
        raw.commit()
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            if not raw.closed:
                raw.close()  # sends what is buffered as a part of the upload that will be aborted
            raw.discard()
        raise


def _iter_jsonl(uri: str) -> Iterator[dict[str, Any]]:
    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def write_items(uri: str, items: Iterable[UrlItem]) -> int:
    return write_jsonl(uri, map(_item_record, items))


def _item_record(item: UrlItem) -> dict[str, Any]:
    return {"url": item.url, "line": item.line, "meta": item.meta}


def write_results(uri: str, results: Iterable[Result]) -> int:
    return write_jsonl(uri, map(Result.to_record, results))


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
