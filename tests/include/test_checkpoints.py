"""Checkpoints of a running batch: parts written while it runs, read back whole, reused only when stored."""

from __future__ import annotations

import gzip
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from include.harvest import checkpoints
from include.harvest.checkpoints import BatchCheckpoint, discard_checkpoint, load_checkpoint, reusable_results
from include.harvest.fetch import fetch_batch
from include.harvest.models import Result, Status
from include.harvest.settings import FetchSettings
from include.harvest.storage import ContentAddressedStore
from include.harvest.workfiles import read_results, write_results

if TYPE_CHECKING:  # fixtures' types; the fixtures themselves come from conftest.py
    from tests.include.conftest import HostileServer


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Wait for a background thread's effect: ``condition()`` checked until true or ``timeout``."""
    give_up = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > give_up:
            return False
        pause.wait(0.005)
    return True


def parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jsonl.gz")) if folder.exists() else []


def unique_urls(server: HostileServer, *paths: str) -> list[str]:
    """URLs no other test requests (a query string makes a distinct URL), so hits can be counted."""
    token = uuid.uuid4().hex[:8]
    return [server.url(f"{path}?t={token}") for path in paths]


def test_parts_are_written_while_the_batch_runs_and_read_back_whole(
    tmp_path: Path, hostile_server: HostileServer, fast_settings: FetchSettings, store: ContentAddressedStore
) -> None:
    urls = unique_urls(hostile_server, "/ok.png", "/ok.jpg", "/ok.gif", "/ok.webp", "/status/404")
    folder = tmp_path / "partial" / "00000"
    checkpoint = BatchCheckpoint(folder.as_uri(), interval=3600, flush_every=2)
    finished: list[Result] = []
    parts_seen_mid_batch: list[int] = []

    def on_result(result: Result) -> None:
        checkpoint.add(result)
        finished.append(result)
        if len(finished) == 2:
            # The batch waits here, its third URL not started: the background thread must write
            # the first two results by itself (flush_every), while the batch runs.
            assert eventually(lambda: len(parts(folder)) == 1)
            parts_seen_mid_batch.append(len(load_checkpoint(folder.as_uri())))

    one_at_a_time = fast_settings.replace(concurrency=1)
    with checkpoint:
        returned = fetch_batch(urls, one_at_a_time, store=store, on_result=on_result)

    assert parts_seen_mid_batch == [2]
    assert len(parts(folder)) >= 2  # more parts after the first, the last one written on exit
    loaded = load_checkpoint(folder.as_uri())
    assert {url: r.to_record() for url, r in loaded.items()} == {r.url: r.to_record() for r in returned}
    assert loaded[urls[0]].status == Status.OK and loaded[urls[-1]].status == Status.HTTP_ERROR


def test_the_background_thread_writes_every_interval(tmp_path: Path) -> None:
    folder = tmp_path / "partial"
    with BatchCheckpoint(folder.as_uri(), interval=0.02) as checkpoint:
        checkpoint.add(Result(url="https://a.example.com/1.jpg", status=Status.TIMEOUT, error="slow"))
        assert eventually(lambda: len(parts(folder)) == 1)  # no flush call, no N reached: the timer
        assert checkpoint.results_written == 1
    assert len(parts(folder)) == 1  # nothing new since: no empty part on exit


def test_each_flush_writes_only_new_results_and_the_latest_attempt_wins(tmp_path: Path) -> None:
    uri = (tmp_path / "partial").as_uri()
    first = BatchCheckpoint(uri)  # an attempt that was killed: never closed
    first.add(Result(url="https://a.example.com/1.jpg", status=Status.TIMEOUT, error="slow"))
    first.add(Result(url="https://a.example.com/2.jpg", status=Status.OK, sha256="b" * 64))
    assert first.flush() == 2
    assert first.flush() == 0  # nothing new: no part
    second = BatchCheckpoint(uri)  # the retry
    second.add(Result(url="https://a.example.com/1.jpg", status=Status.OK, sha256="a" * 64))
    assert second.flush() == 1

    loaded = load_checkpoint(uri)

    assert len(parts(tmp_path / "partial")) == 2
    assert {url: r.status for url, r in loaded.items()} == {
        "https://a.example.com/1.jpg": Status.OK,  # the retry's result, not the killed attempt's
        "https://a.example.com/2.jpg": Status.OK,
    }


def test_a_checkpointed_result_reads_back_as_it_was_written_to_the_results_file(tmp_path: Path) -> None:
    every_field = Result(
        url="https://a.example.com/1.jpg", status=Status.OK, error=None, http_status=200,
        final_url="https://b.example.com/1.jpg", content_type="image/jpeg", bytes=1234, sha256="a" * 64,
        width=8, height=6, storage_uri="file:///s/aa/aa/" + "a" * 64 + ".jpg", attempts=2, elapsed_ms=31,
        etag='"v1"', last_modified="Mon, 02 Nov 2026 10:00:00 GMT", fetched_at="2026-05-04T00:00:00.000+00:00",
        line=7, meta={"caption": "a cat", "tags": ["x"]},
    )  # fmt: skip
    checkpoint = BatchCheckpoint((tmp_path / "partial").as_uri())
    checkpoint.add(every_field)
    checkpoint.flush()
    results_uri = (tmp_path / "results.jsonl.gz").as_uri()
    write_results(results_uri, [every_field])

    [from_checkpoint] = load_checkpoint((tmp_path / "partial").as_uri()).values()

    assert from_checkpoint == every_field == next(read_results([results_uri]))


def test_a_part_that_could_not_be_written_goes_into_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    uri = (tmp_path / "partial").as_uri()
    write = checkpoints.write_jsonl

    def unreachable(*_: object) -> int:
        raise OSError("bucket unreachable")

    checkpoint = BatchCheckpoint(uri)
    checkpoint.add(Result(url="https://a.example.com/1.jpg", status=Status.OK))
    monkeypatch.setattr(checkpoints, "write_jsonl", unreachable)
    with caplog.at_level(logging.WARNING):
        checkpoint.close()  # a storage hiccup never fails the batch
    assert "not written (1 results kept for the next one): bucket unreachable" in caplog.text
    monkeypatch.setattr(checkpoints, "write_jsonl", write)
    checkpoint.add(Result(url="https://a.example.com/2.jpg", status=Status.OK))

    assert checkpoint.flush() == 2
    assert sorted(load_checkpoint(uri)) == ["https://a.example.com/1.jpg", "https://a.example.com/2.jpg"]


def test_no_folder_is_no_checkpoint_and_unreadable_files_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "partial"
    assert load_checkpoint(folder.as_uri()) == {}
    checkpoint = BatchCheckpoint(folder.as_uri())
    checkpoint.add(Result(url="https://a.example.com/1.jpg", status=Status.OK))
    checkpoint.flush()
    (folder / "20000101T000000000000Z-broken-00000.jsonl.gz").write_bytes(gzip.compress(b"{not json\n"))
    (folder / ".0123abcd.tmp").write_bytes(b"half a part, its writer killed")

    with caplog.at_level(logging.WARNING):
        loaded = load_checkpoint(folder.as_uri())

    assert list(loaded) == ["https://a.example.com/1.jpg"]
    assert "broken-00000.jsonl.gz unreadable, skipped" in caplog.text
    assert ".tmp" not in caplog.text  # a part being written is no part yet: not even tried

    discard_checkpoint(folder.as_uri())
    assert not folder.exists()
    discard_checkpoint(folder.as_uri())  # already gone: nothing to do, no error


def test_only_results_whose_blob_is_in_the_store_are_reusable(tmp_path: Path) -> None:
    store = ContentAddressedStore((tmp_path / "storage").as_uri())
    elsewhere = ContentAddressedStore((tmp_path / "old-storage").as_uri())
    kept_sha, kept_uri = store.put_bytes(b"kept", "png")
    gone_sha, gone_uri = store.put_bytes(b"gone", "jpg")
    Path(gone_uri.removeprefix("file://")).unlink()
    moved_sha, moved_uri = elsewhere.put_bytes(b"moved", "png")
    store.put_bytes(b"moved", "png")  # the same bytes in the current store, at another URI
    earlier = {
        r.url: r
        for r in [
            Result(url="u:kept", status=Status.OK, sha256=kept_sha, storage_uri=kept_uri),
            Result(url="u:not-modified", status=Status.NOT_MODIFIED, sha256=kept_sha, storage_uri=kept_uri),
            Result(url="u:gone", status=Status.OK, sha256=gone_sha, storage_uri=gone_uri),
            Result(url="u:moved", status=Status.OK, sha256=moved_sha, storage_uri=moved_uri),
            Result(url="u:failed", status=Status.HTTP_ERROR, error="404"),
            Result(url="u:other-batch", status=Status.OK, sha256=kept_sha, storage_uri=kept_uri),
        ]
    }

    reusable = reusable_results(
        earlier, ["u:kept", "u:not-modified", "u:gone", "u:moved", "u:failed", "u:new"], store
    )

    assert sorted(reusable) == ["u:kept", "u:not-modified"]


def test_on_result_is_called_once_per_unique_url_with_the_returned_outcome(
    hostile_server: HostileServer, fast_settings: FetchSettings, store: ContentAddressedStore
) -> None:
    ok_png, ok_jpg, missing = unique_urls(hostile_server, "/ok.png", "/ok.jpg", "/status/404")
    calls: list[Result] = []

    returned = fetch_batch(
        [ok_png, ok_jpg, ok_png, missing, ok_png], fast_settings, store=store, on_result=calls.append
    )

    assert sorted(r.url for r in calls) == sorted([ok_png, ok_jpg, missing])
    by_url = {r.url: r for r in calls}
    assert [by_url[r.url].to_record() for r in returned] == [r.to_record() for r in returned]


def test_checkpoints_round_trip_on_s3(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/work/run/partial/00000"
    first, second = BatchCheckpoint(uri), BatchCheckpoint(uri)
    first.add(Result(url="https://a.example.com/1.jpg", status=Status.TIMEOUT, error="slow"))
    first.flush()
    assert list(load_checkpoint(uri)) == ["https://a.example.com/1.jpg"]  # s3fs now has a listing cached
    second.add(Result(url="https://a.example.com/1.jpg", status=Status.OK, sha256="a" * 64))
    second.add(Result(url="https://a.example.com/2.jpg", status=Status.OK, sha256="b" * 64))
    second.flush()

    loaded = load_checkpoint(uri)

    assert {url: r.status for url, r in loaded.items()} == {
        "https://a.example.com/1.jpg": Status.OK,
        "https://a.example.com/2.jpg": Status.OK,
    }
    discard_checkpoint(uri)
    assert load_checkpoint(uri) == {}
