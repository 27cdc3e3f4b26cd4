"""A run's working files in shared storage: the URL list, each batch's URLs and each batch's results.

Tasks on different Celery workers share no disk, and the metadata DB must not carry a 100,000-URL
run through XCom. So every list travels as a gzipped JSON-lines file under ``HARVEST_WORK_URI``
(``file://`` for one machine, ``s3://`` or any fsspec URI for several), and XCom carries only its URI
and a few counts. Files are written under a temporary name and renamed, so a retried task never
leaves a half-written file for the next task to read.

Layout, one folder per DAG run::

    <work_uri>/<dag_run_id>/items.jsonl.gz          normalised URLs from the source
    <work_uri>/<dag_run_id>/rejected.jsonl.gz       results for lines that were not valid URLs
    <work_uri>/<dag_run_id>/batches/00003.jsonl.gz  the URLs of batch 3
    <work_uri>/<dag_run_id>/results/00003.jsonl.gz  the results of batch 3
"""

from __future__ import annotations

import gzip
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec

from include.harvest.models import Result, UrlItem

__all__ = ["RunWorkspace", "read_items", "read_results", "write_items", "write_results"]


def _safe_name(text: str) -> str:
    # Run ids carry ':' and '+' (manual__2026-01-01T00:00:00+00:00): keep paths portable.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def write_jsonl(uri: str, records: Iterable[dict[str, Any]]) -> int:
    """Write records as gzipped JSON lines to ``uri`` atomically; return how many were written."""
    fs, path = fsspec.core.url_to_fs(uri)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
    count = 0
    with fs.open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as out:
        for record in records:
            out.write(json.dumps(record, separators=(",", ":")).encode())
            out.write(b"\n")
            count += 1
    fs.mv(tmp, path)
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


def read_items(uri: str) -> list[UrlItem]:
    return [UrlItem(url=r["url"], line=r.get("line"), meta=r.get("meta")) for r in _iter_jsonl(uri)]


def read_results(uris: Iterable[str]) -> Iterator[Result]:
    """Stream results file after file: one file's lines in memory at a time, never all of them."""
    for uri in uris:
        for record in _iter_jsonl(uri):
            yield Result.from_record(record)


class RunWorkspace:
    """The folder of one DAG run's working files."""

    def __init__(self, work_uri: str, dag_run_id: str) -> None:
        self.root = f"{work_uri.rstrip('/')}/{_safe_name(dag_run_id)}"

    @property
    def items_uri(self) -> str:
        return f"{self.root}/items.jsonl.gz"

    @property
    def rejected_uri(self) -> str:
        return f"{self.root}/rejected.jsonl.gz"

    def batch_uri(self, index: int) -> str:
        return f"{self.root}/batches/{index:05d}.jsonl.gz"

    def results_uri(self, index: int) -> str:
        return f"{self.root}/results/{index:05d}.jsonl.gz"
