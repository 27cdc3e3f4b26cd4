"""A run's working files, on a local folder and on S3 (a real S3-protocol server, moto on loopback)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from include.harvest.models import Result, Status, UrlItem
from include.harvest.workfiles import RunWorkspace, read_items, read_results, write_items, write_results
from tests.s3 import MotoServer


@dataclass
class WorkBase:
    """Where work files go in a test, and how to see everything there, temporary files included."""

    uri: str
    everything: Callable[[], list[str]]  # every file or object under uri, relative to it
    unfinished_uploads: Callable[[], list[str]]  # S3 multipart uploads begun and not ended


@pytest.fixture(params=["local", "s3"])
def work(request: pytest.FixtureRequest, tmp_path: Path) -> WorkBase:
    if request.param == "local":
        root = tmp_path / "work"
        return WorkBase(
            root.as_uri(),
            lambda: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()),
            lambda: [],
        )
    s3: MotoServer = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return WorkBase(
        f"s3://{bucket}/work",
        lambda: [key.removeprefix("work/") for key in s3.list_keys(bucket, "work/")],
        lambda: s3.multipart_uploads(bucket),
    )


def items(count: int) -> Iterator[UrlItem]:
    for n in range(count):
        yield UrlItem(url=f"https://img.example.com/{n}.jpg", line=n + 1, meta={"n": n})


def test_items_and_results_come_back_as_written(work: WorkBase):
    workspace = RunWorkspace(work.uri, "manual__2026-05-04T00:00:00+00:00")
    assert write_items(workspace.batch_uri(3), items(2500)) == 2500
    results = [Result(url="https://a.example.com/1.png", status=Status.OK, bytes=10, sha256="ab" * 32)]
    write_results(workspace.rejected_uri, results)

    assert read_items(workspace.batch_uri(3)) == list(items(2500))
    assert [r.to_record() for r in read_results([workspace.rejected_uri])] == [results[0].to_record()]
    assert work.everything() == [
        "manual__2026-05-04T00_00_00_00_00/batches/00003.jsonl.gz",
        "manual__2026-05-04T00_00_00_00_00/rejected.jsonl.gz",
    ]


class SourceBroke(Exception):
    pass


def breaks_after(count: int) -> Iterator[dict[str, Any]]:
    """Records that fail halfway, like a source read that dies or a worker error mid-write."""
    for n in range(count):
        yield {"url": f"https://img.example.com/{n}.jpg", "line": n, "meta": None, "pad": "x" * 200}
    raise SourceBroke("the source broke halfway")


def test_a_write_that_fails_halfway_leaves_no_file_and_no_temporary(work: WorkBase):
    from include.harvest.workfiles import write_jsonl

    workspace = RunWorkspace(work.uri, "run-1")
    with pytest.raises(SourceBroke):
        write_jsonl(workspace.items_uri, breaks_after(20_000))
    assert work.everything() == []  # nothing under the final name, nothing under any other
    assert work.unfinished_uploads() == []


def test_a_failed_rewrite_leaves_the_earlier_file_whole(work: WorkBase):
    from include.harvest.workfiles import write_jsonl

    workspace = RunWorkspace(work.uri, "run-1")
    write_items(workspace.items_uri, items(3))
    with pytest.raises(SourceBroke):
        write_jsonl(workspace.items_uri, breaks_after(1000))  # a retried task failing again
    assert read_items(workspace.items_uri) == list(items(3))
    assert work.everything() == ["run-1/items.jsonl.gz"]


def test_remove_deletes_the_run_folder_and_nothing_beside_it(work: WorkBase):
    run, neighbour = RunWorkspace(work.uri, "run-1"), RunWorkspace(work.uri, "run-10")
    for workspace in (run, neighbour):
        write_items(workspace.items_uri, items(2))
        write_items(workspace.batch_uri(0), items(2))
        write_results(workspace.rejected_uri, [])

    assert run.remove() is True

    assert work.everything() == [
        "run-10/batches/00000.jsonl.gz",
        "run-10/items.jsonl.gz",
        "run-10/rejected.jsonl.gz",
    ]


def test_removing_a_missing_folder_is_fine(work: WorkBase):
    assert RunWorkspace(work.uri, "never-ran").remove() is False
