"""The pipeline steps, run in-process over real files and a real Postgres (no Airflow needed)."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import logging
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2
import pytest

from include.harvest import frontier, pipeline
from include.harvest.checkpoints import BatchCheckpoint
from include.harvest.fetch import fetch_batch
from include.harvest.models import Result, Status, UrlItem
from include.harvest.results import DOWNLOAD_COLUMNS, BatchStaging, IncompleteRun, stage_results
from include.harvest.settings import FetchSettings
from include.harvest.sources import SourceFormatError, SourceNotAllowed, SourceNotFound
from include.harvest.storage import ContentAddressedStore
from include.harvest.workfiles import read_items

if TYPE_CHECKING:  # fixtures' types; the fixtures themselves come from conftest.py
    from tests.include.conftest import HostileServer, Images

pytest_plugins = ["tests.include.db_fixtures"]

DAY = datetime(2026, 5, 4, tzinfo=UTC)


def context(run_id: str = "scheduled__2026-05-04T00:00:00+00:00") -> pipeline.RunContext:
    return pipeline.RunContext(dag_run_id=run_id, run_type="scheduled", logical_date=DAY, run_after=DAY)


def no_db() -> None:
    raise AssertionError("this step must not need the results DB")


def db(dsn: str) -> Callable[[], Any]:
    return lambda: psycopg2.connect(dsn)


def read(tmp_path: Path, **kwargs) -> dict:
    return pipeline.read_sources(
        context(),
        urls=kwargs.get("urls"),
        source=kwargs.get("source"),
        list_base_uri=(tmp_path / "lists").as_uri(),
        work_uri=(tmp_path / "work").as_uri(),
        connect=kwargs.get("connect", no_db),
        settings=FetchSettings(),
        list_roots=kwargs.get("list_roots", ()),
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
    start = 0
    for batch in batches:  # each URL exactly once: the batches are the list's slices, in order
        planned = [item.url for item in read_items(batch["uri"])]
        assert sorted(planned) == sorted(urls[start : start + batch["urls"]])
        start += batch["urls"]
    assert start == len(urls)
    assert batches[0]["label"].startswith(f"batch 1/{len(batches)} · ")


# Run in a fresh interpreter so the peak (VmHWM) is this work's, not the test session's.
_READ_AND_PLAN = """
import sys
from datetime import UTC, datetime
from pathlib import Path

from include.harvest import pipeline
from include.harvest.settings import FetchSettings

def peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))

day = datetime(2026, 5, 4, tzinfo=UTC)
root = Path(sys.argv[1])
for count in (2_000, 100_000):
    lists = root / f"lists-{count}"
    lists.mkdir()
    with open(lists / "2026-05-04.txt", "w") as out:
        for n in range(count):
            out.write(f"https://img{n % 997}.example.com/photo/{n}.jpg\\n")
    run_id = f"scheduled__{count}"
    context = pipeline.RunContext(dag_run_id=run_id, run_type="scheduled", logical_date=day, run_after=day)
    manifest = pipeline.read_sources(
        context, urls=None, source=None, list_base_uri=lists.as_uri(), work_uri=(root / "work").as_uri(),
        connect=None, settings=FetchSettings(),
    )
    batches = pipeline.plan(
        manifest, work_uri=(root / "work").as_uri(), dag_run_id=run_id, batch_size=None, max_batches=1024,
        worker_slots=2,
    )
    assert sum(batch["urls"] for batch in batches) == count == manifest["urls"]
    print(count, max(batch["urls"] for batch in batches), peak_kib())
"""


def test_reading_and_planning_a_list_take_the_memory_of_a_short_one(tmp_path: Path):
    """The worker's tasks before the downloads hold no list: 100,000 URLs (batches of 50,000) peak
    within a few MiB of 2,000 (batches of 1,000). Holding them took 25 MiB more."""
    done = subprocess.run(
        [sys.executable, "-c", _READ_AND_PLAN, str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (short, short_batch, short_peak), (long, long_batch, long_peak) = (
        map(int, line.split()) for line in done.stdout.splitlines()
    )
    assert (short, short_batch, long, long_batch) == (2_000, 1_000, 100_000, 50_000)
    assert long_peak - short_peak < 12 * 1024, f"peak grew {(long_peak - short_peak) / 1024:.1f} MiB"


def test_a_plan_refuses_a_list_file_that_does_not_hold_the_urls_read_sources_counted(tmp_path: Path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "2026-05-04.txt").write_text(
        "".join(f"https://a.example/{n}.jpg\n" for n in range(30))
    )
    manifest = read(tmp_path)
    run = {"work_uri": (tmp_path / "work").as_uri(), "dag_run_id": context().dag_run_id, "max_batches": 1024}

    with pytest.raises(
        RuntimeError, match=r"holds only 30 URLs where read_sources counted 31.*Clear the whole run"
    ):
        pipeline.plan({**manifest, "urls": 31}, batch_size=10, **run)
    with pytest.raises(RuntimeError, match=r"holds more URLs where read_sources counted 29"):
        pipeline.plan({**manifest, "urls": 29}, batch_size=10, **run)
    assert sum(batch["urls"] for batch in pipeline.plan(manifest, batch_size=10, **run)) == 30


def test_a_list_that_breaks_halfway_leaves_no_work_files(tmp_path: Path):
    """read_sources writes as it reads: a list that fails midway must not leave half a list to plan."""
    (tmp_path / "lists").mkdir()
    whole = gzip.compress(
        "".join(f"https://a.example/{n}.jpg\nnot a url {n}\n" for n in range(50_000)).encode()
    )
    (tmp_path / "lists" / "2026-05-04.txt.gz").write_bytes(whole[: len(whole) // 2])

    with pytest.raises(SourceFormatError, match="not a complete gzip file"):
        read(tmp_path)

    work = tmp_path / "work"
    assert not work.exists() or [path for path in work.rglob("*") if path.is_file()] == []


def test_a_missing_list_is_a_recorded_outcome_naming_the_paths(tmp_path: Path):
    manifest = read(tmp_path)
    assert manifest["outcome"] == "no_source"
    assert manifest["urls"] == 0
    assert "2026-05-04.txt" in manifest["reason"] and "2026-05-04.csv" in manifest["reason"]


def test_every_run_of_a_dates_list_shares_the_dates_run_key(tmp_path: Path):
    # The schedule, a backfill, a manual re-run at noon, or without a logical date at all: one key.
    noon = datetime(2026, 5, 4, 12, tzinfo=UTC)
    contexts = [
        context(),
        pipeline.RunContext(dag_run_id="manual__noon", run_type="manual", logical_date=noon, run_after=noon),
        pipeline.RunContext(dag_run_id="manual__none", run_type="manual", logical_date=None, run_after=noon),
    ]
    for ctx in contexts:
        assert ctx.run_key(reads_dated_list=True) == "2026-05-04"
    assert read(tmp_path)["run_key"] == "2026-05-04"


def test_a_run_given_its_own_urls_is_keyed_by_its_logical_date_or_run_id(tmp_path: Path):
    assert read(tmp_path, urls="https://a.example.com/1.jpg")["run_key"] == DAY.isoformat()
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "own.txt").write_text("https://a.example.com/1.jpg\n")
    assert read(tmp_path, source=(tmp_path / "lists" / "own.txt").as_uri())["run_key"] == DAY.isoformat()
    undated = pipeline.RunContext(dag_run_id="manual__x", run_type="manual", logical_date=None, run_after=DAY)
    assert undated.run_key(reads_dated_list=False) == "manual__x"


def test_a_list_outside_the_allowed_roots_is_refused_before_anything_is_read(tmp_path: Path):
    secret = tmp_path / "secret" / "passwords.txt"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")

    for source in (
        "file:///etc/passwd",
        secret.as_uri(),
        f"{(tmp_path / 'lists').as_uri()}/../secret/passwords.txt",
    ):
        with pytest.raises(SourceNotAllowed, match="HARVEST_LIST_ROOTS"):
            read(tmp_path, source=source)
    assert not (tmp_path / "work").exists()  # refused before the run wrote anything

    # An operator allows the folder: the same list is read.
    manifest = read(tmp_path, source=secret.as_uri(), list_roots=[secret.parent.as_uri()])
    assert (manifest["source"], manifest["rejected"]) == (secret.as_uri(), 1)


def test_an_explicit_source_that_does_not_exist_fails_naming_it(tmp_path: Path):
    (tmp_path / "lists").mkdir()
    missing = f"{(tmp_path / 'lists').as_uri()}/typo.txt"

    with pytest.raises(SourceNotFound, match=f"the list given as source does not exist: {missing}"):
        read(tmp_path, source=missing)
    # Only the list of the run's date may be missing: that is recorded as no_source.
    assert read(tmp_path, source="file")["outcome"] == "no_source"


def test_a_date_without_rows_in_the_table_records_the_table_as_its_source(
    tmp_path: Path, harvest_db_dsn: str
):
    manifest = read(tmp_path, source="table", connect=lambda: psycopg2.connect(harvest_db_dsn))

    assert manifest["outcome"] == "no_source"
    assert manifest["source"] == "harvest.url_sources (list_date = 2026-05-04)"
    assert manifest["run_key"] == "2026-05-04"


def test_manual_urls_take_precedence_and_bad_lines_are_rejected_not_raised(tmp_path: Path):
    manifest = read(tmp_path, urls="https://a.example.com/1.jpg\njavascript:alert(1)\n", source="table")
    assert (manifest["urls"], manifest["rejected"]) == (1, 1)


def test_a_run_with_a_batch_result_missing_records_nothing(tmp_path: Path, harvest_db_dsn: str):
    manifest = read(tmp_path, urls="\n".join(f"https://a.example.com/{n}.jpg" for n in range(3)))
    with closing(psycopg2.connect(harvest_db_dsn)) as conn:
        stage_results(
            conn, context().dag_run_id, 0, [Result(url="https://a.example.com/0.jpg", status=Status.OK)]
        )

    with pytest.raises(IncompleteRun, match="recorded 1 results but the source had 3 URLs"):
        pipeline.record(context(), manifest, [{"index": 0}], connect=lambda: psycopg2.connect(harvest_db_dsn))

    with psycopg2.connect(harvest_db_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM harvest.downloads), (SELECT count(*) FROM harvest.runs),"
            " (SELECT count(*) FROM harvest.staged_results)"
        )
        assert cur.fetchone() == (0, 0, 1)  # nothing recorded, and the staged batch kept for a retry


def staged(dsn: str, batch: dict) -> list[Result]:
    """What ``download`` staged for ``batch`` (its attempt that ended), in batch order."""
    names = [column.name for column in DOWNLOAD_COLUMNS]
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT {', '.join(names)} FROM harvest.staged_results"
            " JOIN harvest.staged_batches USING (dag_run_id, batch, attempt)"
            " WHERE dag_run_id = %s AND batch = %s ORDER BY seq",
            (batch["dag_run_id"], batch["index"]),
        )
        rows = cur.fetchall()
    fields = [column.field for column in DOWNLOAD_COLUMNS]
    return [Result(**{**dict(zip(fields, row, strict=True)), "status": Status(row[1])}) for row in rows]


def test_a_batch_task_holds_a_window_of_its_batch_not_the_batch(
    tmp_path: Path,
    harvest_db_dsn: str,
    hostile_server: HostileServer,
    fast_settings: FetchSettings,
    monkeypatch: pytest.MonkeyPatch,
):
    """Worker memory that does not grow with the batch: the URLs read from the batch file and not
    answered yet are at most a window, the chunk being read and those in flight."""
    monkeypatch.setattr(frontier, "WINDOW", 40)
    monkeypatch.setattr(pipeline, "STAGE_READ_CHUNK", 10)
    token = uuid.uuid4().hex[:8]
    urls = [hostile_server.url(f"/ok.png?t={token}&n={n}") for n in range(300)]
    batch = plan_one_batch(tmp_path, urls)
    read = answered = most_held = 0
    lock = threading.Lock()
    real_iter_items, real_add = pipeline.iter_items, BatchStaging.add

    def counted_items(uri: str) -> Iterator[UrlItem]:
        nonlocal read, most_held
        for item in real_iter_items(uri):
            with lock:
                read += 1
                most_held = max(most_held, read - answered)
            yield item

    def counted_add(self: BatchStaging, result: Result) -> None:
        nonlocal answered
        real_add(self, result)
        with lock:
            answered += 1

    monkeypatch.setattr(pipeline, "iter_items", counted_items)
    monkeypatch.setattr(BatchStaging, "add", counted_add)

    summary = pipeline.download(
        batch, settings=fast_settings, storage_uri=(tmp_path / "storage").as_uri(), connect=db(harvest_db_dsn)
    )

    assert summary["urls"] == 300 and summary["counts"] == {"ok": 300}
    assert sorted(result.url for result in staged(harvest_db_dsn, batch)) == sorted(urls)
    assert most_held <= 40 + 10 + fast_settings.concurrency


# -- a batch retried after its worker was killed ------------------------------------------------


def plan_one_batch(tmp_path: Path, urls: list[str]) -> dict:
    [batch] = pipeline.plan(
        read(tmp_path, urls="\n".join(urls)),
        work_uri=(tmp_path / "work").as_uri(),
        dag_run_id=context().dag_run_id,
        batch_size=None,
        max_batches=1,
    )
    return batch


def unique_urls(server: HostileServer, *paths: str) -> list[str]:
    """URLs no other test requests (a query string makes a distinct URL), so hits can be counted."""
    token = uuid.uuid4().hex[:8]
    return [server.url(f"{path}?t={token}") for path in paths]


def hits(server: HostileServer, urls: list[str]) -> list[int]:
    return [len(server.hits(url.split(str(server.port), 1)[1])) for url in urls]


def killed_attempt(
    batch: dict, settings: FetchSettings, storage_uri: str, *, checkpointed: list[str], after: list[str]
) -> None:
    """What an attempt killed mid-batch leaves: the blobs of every URL it fetched, and checkpoint
    parts of those it fetched before its last flush. No results file, no final flush."""
    store = ContentAddressedStore(storage_uri)
    items = {item.url: item for item in read_items(batch["uri"])}  # as download passes them
    checkpoint = BatchCheckpoint(batch["partial_uri"])  # as download makes it; then SIGKILL, no close
    fetch_batch([items[url] for url in checkpointed], settings, store=store, on_result=checkpoint.add)
    checkpoint.flush()
    # Killed before the next flush:
    fetch_batch([items[url] for url in after], settings, store=store, on_result=checkpoint.add)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_retry_after_a_killed_attempt_fetches_only_the_urls_not_yet_stored(
    tmp_path: Path,
    harvest_db_dsn: str,
    hostile_server: HostileServer,
    fast_settings: FetchSettings,
    images: Images,
    caplog: pytest.LogCaptureFixture,
):
    png, jpg, missing, gif, webp = urls = unique_urls(
        hostile_server, "/ok.png", "/ok.jpg", "/status/404", "/ok.gif", "/ok.webp"
    )
    batch = plan_one_batch(tmp_path, urls)
    storage_uri = (tmp_path / "storage").as_uri()
    killed_attempt(batch, fast_settings, storage_uri, checkpointed=[png, jpg, missing], after=[gif])
    assert hits(hostile_server, urls) == [1, 1, 1, 1, 0]

    with caplog.at_level(logging.INFO, logger="include.harvest.pipeline"):
        summary = pipeline.download(
            batch,
            settings=fast_settings,
            storage_uri=storage_uri,
            connect=db(harvest_db_dsn),
            use_previous=False,
        )

    # Stored and checkpointed: not again. The 404 is asked again; the GIF was stored after the last
    # checkpoint, so nothing says it was: fetched again too.
    assert hits(hostile_server, urls) == [1, 1, 2, 2, 1]
    assert "resuming: 2 URLs already stored by an earlier attempt, 3 to fetch" in caplog.text
    written = staged(harvest_db_dsn, batch)
    assert [r.url for r in written] == urls  # one result per URL, in batch order
    assert [r.status for r in written] == [Status.OK, Status.OK, Status.HTTP_ERROR, Status.OK, Status.OK]
    assert [r.sha256 for r in written] == [
        sha256_of(images.png), sha256_of(images.jpeg), None, sha256_of(images.gif), sha256_of(images.webp)
    ]  # fmt: skip
    assert [r.line for r in written] == [1, 2, 3, 4, 5]
    assert (summary["urls"], summary["reused"], summary["counts"]) == (5, 2, {"ok": 4, "http_error": 1})
    assert not Path(batch["partial_uri"].removeprefix("file://")).exists()  # done: checkpoints deleted


def test_a_checkpoint_naming_urls_of_another_plan_reuses_only_this_batchs(
    tmp_path: Path, harvest_db_dsn: str, hostile_server: HostileServer, fast_settings: FetchSettings
):
    """A run cleared and planned again (not recorded) may find its batch's old checkpoint naming
    URLs now in another batch: those are not staged here, nor counted as reused."""
    png, jpg, elsewhere = unique_urls(hostile_server, "/ok.png", "/ok.jpg", "/ok.gif")
    batch = plan_one_batch(tmp_path, [png, jpg])
    storage_uri = (tmp_path / "storage").as_uri()
    checkpoint = BatchCheckpoint(batch["partial_uri"])  # the old plan's attempt, killed after a flush
    fetch_batch(
        [png, elsewhere], fast_settings, store=ContentAddressedStore(storage_uri), on_result=checkpoint.add
    )
    checkpoint.flush()

    summary = pipeline.download(
        batch, settings=fast_settings, storage_uri=storage_uri, connect=db(harvest_db_dsn), use_previous=False
    )

    assert summary["reused"] == 1 and summary["urls"] == 2
    assert [result.url for result in staged(harvest_db_dsn, batch)] == [png, jpg]
    assert hits(hostile_server, [png, jpg, elsewhere]) == [1, 1, 1]


def test_a_checkpointed_result_whose_blob_is_gone_is_fetched_again(
    tmp_path: Path,
    harvest_db_dsn: str,
    hostile_server: HostileServer,
    fast_settings: FetchSettings,
    images: Images,
):
    png, jpg = urls = unique_urls(hostile_server, "/ok.png", "/ok.jpg")
    batch = plan_one_batch(tmp_path, urls)
    storage_uri = (tmp_path / "storage").as_uri()
    killed_attempt(batch, fast_settings, storage_uri, checkpointed=urls, after=[])
    store = ContentAddressedStore(storage_uri)
    blob = Path(store.path_for(sha256_of(images.jpeg), "jpg"))
    blob.unlink()  # lost (store cleaned, or the attempt wrote to another store)

    pipeline.download(
        batch, settings=fast_settings, storage_uri=storage_uri, connect=db(harvest_db_dsn), use_previous=False
    )

    assert hits(hostile_server, urls) == [1, 2]
    assert [r.sha256 for r in staged(harvest_db_dsn, batch)] == [
        sha256_of(images.png),
        sha256_of(images.jpeg),
    ]
    assert blob.read_bytes() == images.jpeg


def test_an_attempt_that_failed_mid_batch_is_resumed_from_its_last_checkpoint(
    tmp_path: Path,
    harvest_db_dsn: str,
    hostile_server: HostileServer,
    fast_settings: FetchSettings,
    monkeypatch: pytest.MonkeyPatch,
):
    urls = unique_urls(hostile_server, "/ok.png", "/ok.jpg", "/ok.gif", "/ok.webp", "/same-a.png")
    batch = plan_one_batch(tmp_path, urls)
    storage_uri = (tmp_path / "storage").as_uri()
    one_at_a_time = fast_settings.replace(concurrency=1)
    put = ContentAddressedStore.put
    puts = itertools.count(1)

    def disk_full_at_the_third_blob(self: ContentAddressedStore, *args: Any) -> str:
        if next(puts) == 3:
            raise OSError(28, "No space left on device")
        return put(self, *args)

    monkeypatch.setattr(ContentAddressedStore, "put", disk_full_at_the_third_blob)
    with pytest.raises(OSError, match="No space left"):  # the task fails; Airflow retries it
        pipeline.download(
            batch,
            settings=one_at_a_time,
            storage_uri=storage_uri,
            connect=db(harvest_db_dsn),
            use_previous=False,
        )
    assert staged(harvest_db_dsn, batch) == []  # a failed attempt stages nothing

    summary = pipeline.download(
        batch, settings=one_at_a_time, storage_uri=storage_uri, connect=db(harvest_db_dsn), use_previous=False
    )

    assert hits(hostile_server, urls) == [1, 1, 2, 1, 1]  # the failed attempt stopped at the third
    assert summary["reused"] == 2
    assert [(r.url, r.status) for r in staged(harvest_db_dsn, batch)] == [(u, Status.OK) for u in urls]


def test_a_retry_after_the_results_were_staged_replaces_them_with_the_same_rows(
    tmp_path: Path, harvest_db_dsn: str, hostile_server: HostileServer, fast_settings: FetchSettings
):
    urls = unique_urls(hostile_server, "/ok.png", "/status/404", "/ok.gif")
    batch = plan_one_batch(tmp_path, urls)
    storage_uri = (tmp_path / "storage").as_uri()

    def attempt() -> list[tuple]:
        pipeline.download(
            batch,
            settings=fast_settings,
            storage_uri=storage_uri,
            connect=db(harvest_db_dsn),
            use_previous=False,
        )
        return [(r.url, r.status, r.sha256, r.storage_uri, r.line) for r in staged(harvest_db_dsn, batch)]

    first, second = attempt(), attempt()

    assert second == first
    assert [row[0] for row in second] == urls


# -- conditional requests only for copies the current store holds --------------------------------


def run_once(
    run_id: str, urls: list[str], *, tmp_path: Path, settings: FetchSettings, storage_uri: str, dsn: str
) -> list[tuple[str, str, str | None, str | None]]:
    """One whole run of ``urls`` (read, plan, download, record); its rows as (url, status, sha256, uri)."""
    ctx = pipeline.RunContext(dag_run_id=run_id, run_type="manual", logical_date=None, run_after=DAY)
    work_uri = (tmp_path / "work").as_uri()

    def connect() -> Any:
        return psycopg2.connect(dsn)

    manifest = pipeline.read_sources(
        ctx,
        urls="\n".join(urls),
        source=None,
        list_base_uri=(tmp_path / "lists").as_uri(),
        work_uri=work_uri,
        connect=no_db,
        settings=settings,
    )
    batches = pipeline.plan(manifest, work_uri=work_uri, dag_run_id=run_id, batch_size=None, max_batches=1)
    summaries = [
        pipeline.download(batch, settings=settings, storage_uri=storage_uri, connect=connect)
        for batch in batches
    ]
    pipeline.record(ctx, manifest, summaries, connect=connect)
    with closing(connect()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT url, status, sha256, storage_uri FROM harvest.downloads WHERE run_key = %s ORDER BY url",
            (run_id,),
        )
        return cur.fetchall()


def blob_sha256(storage_uri: str) -> str:
    return sha256_of(Path(storage_uri.removeprefix("file://")).read_bytes())


@pytest.mark.parametrize("store_change", ["cleared", "moved"])
def test_a_url_whose_stored_copy_is_not_in_the_current_store_is_downloaded_in_full(
    tmp_path: Path,
    hostile_server: HostileServer,
    fast_settings: FetchSettings,
    harvest_db_dsn: str,
    images: Images,
    store_change: str,
):
    # /etag.jpg answers 304 to its ETag; /ok.png has no validators (always a full GET).
    urls = sorted(unique_urls(hostile_server, "/etag.jpg", "/ok.png"))
    etag_url = next(url for url in urls if "/etag.jpg" in url)
    etag_path = etag_url.split(str(hostile_server.port), 1)[1]
    first_store = tmp_path / "storage"
    run = {"tmp_path": tmp_path, "settings": fast_settings, "dsn": harvest_db_dsn}
    first = run_once("manual__first", urls, storage_uri=first_store.as_uri(), **run)
    assert [status for _, status, _, _ in first] == ["ok", "ok"]

    if store_change == "cleared":  # `make clean`, or a checkout sharing another one's database
        shutil.rmtree(first_store)
        second_store = first_store
    else:  # HARVEST_STORAGE_URI moved (to S3, another disk); the old store is still there
        second_store = tmp_path / "moved-storage"
    second = run_once("manual__second", urls, storage_uri=second_store.as_uri(), **run)

    assert [status for _, status, _, _ in second] == ["ok", "ok"]
    expected = {etag_url: sha256_of(images.etag_jpeg)}
    for url, _, sha256, storage_uri in second:
        assert storage_uri.startswith(second_store.as_uri() + "/")
        assert blob_sha256(storage_uri) == sha256
        assert expected.get(url, sha256) == sha256
    [_, refetch] = hostile_server.hits(etag_path)
    assert "If-None-Match" not in refetch.headers  # a full GET, not a conditional one
    assert "If-Modified-Since" not in refetch.headers

    # With the copy in the store again, the next run asks conditionally and keeps it.
    third = run_once("manual__third", urls, storage_uri=second_store.as_uri(), **run)
    assert dict((url, status) for url, status, _, _ in third)[etag_url] == "not_modified"
    assert hostile_server.hits(etag_path)[-1].headers.get("If-None-Match") == '"v1"'
    for _, _, sha256, storage_uri in third:
        assert blob_sha256(storage_uri) == sha256
