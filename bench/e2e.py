"""The end-to-end benchmark: Harvest against the raw limit, img2dataset and the plain Celery chord.

In one invocation, over the same N URLs and the same CPU budget (Harvest's worker slots, one per
core by default, × 32 fetch threads per batch), five contenders:

1. **raw**: a urllib3 thread pool over as many processes as Harvest has worker slots, that only GETs
   and writes bytes (:mod:`bench.raw`); the machine's practical limit;
2. **img2dataset**: the usual tool for image URL lists, a pinned version in its own virtualenv
   (:mod:`bench.img2dataset`), processes × threads = Harvest's worker slots × fetch threads,
   ``files`` output, no resizing nor re-encoding;
3. **chord**: the original design, one Celery task per URL in a chord whose callback inserts the
   rows into Postgres (:mod:`bench.chord`);
4. **engine**: Harvest's own batches (``fetch_batch``) without Airflow, with the settings of
   Harvest's tasks, in as many processes as Harvest has worker slots (:mod:`bench.engine`): the
   ceiling of Harvest on the machine. When it alone is slower than a target needs, the target is out
   of reach with today's work per URL, whatever the orchestration, and the report says so;
5. **harvest**: the real ``harvest`` DAG on a real local stack (api-server, scheduler,
   dag-processor, triggerer, Celery worker) that this command starts with its own databases, Redis
   database numbers (8 and 9), ports and folders; timed from the trigger to the run's end, then
   every row in ``harvest.downloads`` and every stored file is checked.

Two scenarios:

- **loopback** (default): one local nginx serving N distinct synthetic JPEG/PNG files (10–150 KB,
  :mod:`bench.imageset`); all URLs on one host, so Harvest runs with ``per_host_concurrency=64``.
  Targets: harvest/raw ≥ 0.8, harvest ≥ 1.5 × img2dataset (the issue sets them at 100,000 URLs).
- **web** (``--web``): :class:`bench.web.SyntheticWeb`, 200 loopback hosts with latency, bandwidth
  limits, 80% HTTPS under a bench CA, a Zipf skew and trouble (404, 429, 503, redirects, resets,
  60 s stalls). Harvest keeps its defaults (8 requests per host, robots.txt checked) and gets
  ``HARVEST_CA_BUNDLE`` and ``HARVEST_ALLOW_HOSTS=127.0.0.0/8``. Targets: harvest ≥ 1.5 ×
  img2dataset's URLs/s, or, where the politeness floor (:meth:`SyntheticWeb.politeness_floor` at 8
  per host) is slower than that, within 10% of the floor; never above 8 in flight on any host; every
  fetchable URL fetched. The server's counters are reset before each contender.

For each contender: URLs/s, the fetchable URLs it fetched (and anything it "fetched" that is not
fetchable), the peak per-host concurrency the server saw (web: the largest of every host's peak,
counted by nginx itself, and how many hosts went over 8; loopback: open connections from nginx's
stub_status, polled), CPU seconds of its processes (Harvest: every program of the stack), peak RSS of
its process tree (Harvest: the whole stack), and the server's CPU. Then a targets block, each target
with its ratio from this run, PASS or MISS, and for a miss the reasons measured in this run (where
Harvest's time went) and what would reach it. Harvest's own timeline follows (run start latency,
gaps between tasks, batch tasks, reduce). Writes ``bench/results/e2e-<N>.json`` (web:
``e2e-web-<N>.json``) with the commit id, settings, every contender's figures and the targets, and a
``.png`` chart. Everything it starts is stopped by pid; the databases it created are dropped.

    python -m bench.e2e --quick                 # loopback, 2,000 URLs
    python -m bench.e2e                         # loopback, 20,000 URLs
    python -m bench.e2e --web --urls 2000       # the synthetic web, a quick proof
    python -m bench.e2e --web                   # the synthetic web, 20,000 URLs on 200 hosts
    make bench ARGS="--web"
    python -m bench.e2e --sweep                 # and Harvest over batch sizes 250..4000
    python -m bench.e2e --sweep-threads         # and Harvest over fetch threads per batch 4..32
    python -m bench.e2e --urls 100000 --only harvest
    python -m bench.e2e --web --only img2dataset harvest
    python -m bench.e2e --only harvest --profile            # py-spy the worker (pip install py-spy first)
    python -m bench.e2e --only harvest --worker-concurrency 2 --tag wc2
    python -m bench.e2e --only harvest --tag idle01 \\
        --airflow-env AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME=0.1
    python -m bench.e2e --only chord --chord-client urlretrieve --tag urlretrieve

A partial run (``--only``, ``--tag``) writes ``e2e-[web-]<N>-<contenders>[-<tag>].json`` so it never
replaces the figures of a full run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.imageset import BENCH_TMP, ImageSet, ImageSpec, build_imageset

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = RESULTS_DIR.parents[1]
# Redis database numbers of the benchmark: away from `make run` (0, 1) and the e2e tests (12, 13).
BROKER_DB, COORDINATION_DB = 8, 9
DEFAULT_URLS = 20_000
QUICK_URLS = 2_000
CONTENDERS = ("raw", "img2dataset", "chord", "engine", "harvest")
SWEEP_BATCH_SIZES = (250, 500, 1000, 2000, 4000)
# Fetch threads per batch task (the DAG's `concurrency` param, 32 by default). Raw picks its best
# thread count on this machine; this shows what the same choice does for Harvest.
SWEEP_THREADS = (4, 8, 16, 32)
HARVEST_THREADS = 32  # the DAG's default fetch threads per batch task (HARVEST_CONCURRENCY)
# All loopback URLs are on one host; Harvest's default of 8 requests in flight per host (across
# workers) is politeness for the open web, not a limit to measure against a local nginx.
BENCH_PER_HOST_CONCURRENCY = 64
RAW_THREADS = (4, 16)
# On the synthetic web Harvest keeps its default politeness: this many requests in flight per host.
WEB_PER_HOST_LIMIT = 8
# Harvest's HTTP client: 4 attempts (HARVEST_MAX_ATTEMPTS), 10 s of silence each (HARVEST_READ_TIMEOUT).
HARVEST_MAX_ATTEMPTS, HARVEST_READ_TIMEOUT = 4, 10.0
# Targets of the issue (§3).
TARGET_OVER_RAW = 0.8  # loopback: harvest/raw
TARGET_OVER_IMG2DATASET = 1.5  # both scenarios: harvest/img2dataset URLs/s
TARGET_FLOOR_MARGIN = 1.10  # web, where the politeness floor binds: harvest within 10% of it
# Loopback: the worker's peak memory over a long list, against a short one run just before on the
# same stack ("flat": within what a run of the same list varies by, a few percent).
MEMORY_BASELINE_URLS = 2_000
TARGET_MEMORY_GROWTH = 1.05
# The chord on the web: the same concurrency budget as Harvest, and a time limit for the full list.
CHORD_WEB_MAX_SECONDS = 300


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


# ---- memory sampling ----------------------------------------------------------------------------
class RssSampler:
    """Samples the summed RSS of a process and all its descendants until :meth:`stop`, leaving out
    the subtrees of ``exclude`` (a server the measuring process started, say)."""

    def __init__(self, pid: int, interval: float = 0.2, *, exclude: tuple[int, ...] = ()) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.exclude = exclude
        self.interval = interval
        self.peak_total = 0
        self.peak_single = 0
        self.peak_processes = 0
        self.peak_by_title: dict[str, int] = {}  # process title (Airflow names task processes) → peak
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def sample(self) -> int:
        import psutil

        total = 0
        count = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        skip: set[int] = set()
        for pid in self.exclude:
            try:
                skip |= {pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))}
            except psutil.NoSuchProcess:
                continue
        for proc in procs:
            if proc.pid in skip:
                continue
            try:
                rss = proc.memory_info().rss
                title = " ".join(proc.cmdline())
            except psutil.NoSuchProcess:
                continue
            total += rss
            count += 1
            self.peak_single = max(self.peak_single, rss)
            self.peak_by_title[title] = max(self.peak_by_title.get(title, 0), rss)
        self.peak_total = max(self.peak_total, total)
        self.peak_processes = max(self.peak_processes, count)
        self.samples += 1
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak_total

    def figures(self) -> dict[str, int]:
        return {
            "peak_rss_bytes": self.peak_total,
            "peak_single_process_rss_bytes": self.peak_single,
            "peak_processes": self.peak_processes,
            "samples": self.samples,
        }

    def peak_by_task(self, tis: list[dict[str, Any]]) -> dict[str, int]:
        """The peak of each task's processes (``task_id`` → bytes), from the titles Airflow gives a
        task instance's process (``airflow worker -- <ti id>``); ``other`` for the rest (Celery's
        own processes, the supervisors that start the tasks)."""
        task_of = {ti["id"]: ti["task_id"] for ti in tis if ti.get("id")}
        peaks: dict[str, int] = {}
        for title, rss in self.peak_by_title.items():
            ti_id = title.partition("airflow worker -- ")[2].strip()
            task = task_of.get(ti_id, "other")
            peaks[task] = max(peaks.get(task, 0), rss)
        return dict(sorted(peaks.items(), key=lambda kv: -kv[1]))


# ---- profiling -------------------------------------------------------------------------------------
class Profiler:
    """py-spy sampling the worker tree (its task processes included) while a run is going.

    py-spy is a profiling tool, not a dependency: ``pip install py-spy`` into the venv to use
    ``--profile``. The raw (collapsed) stacks are kept; :meth:`summary` gives the functions where
    the sampled time went, inclusive (on the stack) and self (at the top), in % of samples.
    """

    def __init__(self, pid: int, path: Path, rate: int = 97) -> None:
        import subprocess
        import sys

        binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not os.access(binary, os.X_OK):
            raise RuntimeError(
                "--profile needs py-spy: .venv/bin/pip install py-spy (not a project dependency)"
            )
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(pid),
                "--subprocesses",
                "--nonblocking",
                "--format",
                "raw",
                "--rate",
                str(rate),
                "--output",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def summary(self, top: int = 25) -> dict[str, Any]:
        inclusive: dict[str, int] = {}
        own: dict[str, int] = {}
        total = 0
        if not self.path.exists():
            return {"error": "py-spy wrote no output"}
        for line in self.path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [
                f.split(" (", 1)[0] + " (" + f.split(" (", 1)[1].split(":")[0] + ")" if " (" in f else f
                for f in stack.split(";")
            ]
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + count
            own[frames[-1]] = own.get(frames[-1], 0) + count

        def ranked(table: dict[str, int]) -> list[tuple[str, float]]:
            return [
                (name, round(100 * n / total, 1))
                for name, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]
            ]

        return {
            "samples": total,
            "raw_stacks": str(self.path),
            "inclusive_pct": ranked(inclusive),
            "self_pct": ranked(own),
        }


# ---- the Harvest stack ---------------------------------------------------------------------------
@dataclass
class HarvestBench:
    """A private Harvest stack (like the e2e tests'), started and stopped by the benchmark."""

    worker_concurrency: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="harvest-bench-stack-")))

    def __post_init__(self) -> None:
        from scripts.stack import Stack

        self.data = self.base / "data"
        for name in ("url_lists", "storage", "work"):
            (self.data / name).mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if self.worker_concurrency:
            kwargs["worker_concurrency"] = self.worker_concurrency
        self.stack = Stack.isolated(
            "harvest_bench",
            home=self.base / "airflow-home",
            data=self.data,
            broker_db=BROKER_DB,
            coordination_db=COORDINATION_DB,
            extra_env=dict(self.extra_env),
            **kwargs,
        )
        self.api: Any = None

    def _flush_redis(self) -> None:
        import redis

        for db in (BROKER_DB, COORDINATION_DB):
            redis.Redis.from_url(f"{self.stack.redis_server}/{db}").flushdb()

    def start(self) -> None:
        from scripts.airflow_api import AirflowAPI

        self._flush_redis()
        started = time.monotonic()
        self.stack.setup()
        self.stack.start()
        self.stack.wait_healthy(timeout=300)
        self.api = AirflowAPI(self.stack.api_url, "admin", self.stack.admin_password())
        self.api.wait_for_dag("harvest", timeout=180)
        self._wait_idle()
        print(f"harvest: stack healthy in {time.monotonic() - started:.0f}s ({self.stack.home})", flush=True)

    def _wait_idle(self, timeout: float = 180) -> None:
        """Unpausing schedules today's run (no list: recorded as no_source); let it finish first."""
        deadline = time.monotonic() + timeout
        time.sleep(3)
        while time.monotonic() < deadline:
            if all(r["state"] in ("success", "failed") for r in self.api.runs("harvest")):
                return
            time.sleep(1)
        raise TimeoutError("the scheduled run of the fresh stack did not finish")

    def stop(self) -> None:
        try:
            self.stack.stop()
        finally:
            try:
                self.stack.drop_databases()
            finally:
                self._flush_redis()
                shutil.rmtree(self.base, ignore_errors=True)

    def worker_pid(self) -> int:
        import psutil

        supervisor = self.stack.running_pid()
        if supervisor is None:
            raise RuntimeError("the stack is not running")
        for child in psutil.Process(supervisor).children():
            if "celery" in " ".join(child.cmdline()) and "worker" in " ".join(child.cmdline()):
                return int(child.pid)
        raise RuntimeError("no celery worker process under the stack's supervisord")

    def stack_pids(self) -> list[int]:
        import psutil

        supervisor = self.stack.running_pid()
        return (
            [supervisor, *(p.pid for p in psutil.Process(supervisor).children(recursive=True))]
            if supervisor
            else []
        )

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each program of the stack (its exited children included)."""
        import psutil

        names = {
            "api_server": "api-server",
            "api-server": "api-server",
            "scheduler": "scheduler",
            "dag-processor": "dag-processor",
            "triggerer": "triggerer",
            "celery": "worker",
        }
        supervisor = self.stack.running_pid()
        totals: dict[str, float] = {}
        if supervisor is None:
            return totals
        for child in psutil.Process(supervisor).children():
            try:
                cmd = " ".join(child.cmdline())
                name = next((v for k, v in names.items() if k in cmd), "other")
                seconds = 0.0
                for proc in (child, *child.children(recursive=True)):
                    t = proc.cpu_times()
                    seconds += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                continue
            totals[name] = totals.get(name, 0.0) + seconds
        return totals

    def run(
        self,
        urls: list[str],
        *,
        expected: Mapping[str, ImageSpec],
        batch_size: int | None,
        label: str,
        timeout: float,
        profile: Path | None = None,
        threads: int | None = None,
        per_host_concurrency: int | None = BENCH_PER_HOST_CONCURRENCY,
    ) -> dict[str, Any]:
        """Trigger one run over ``urls``, wait for success, verify every row and file; return figures.

        ``expected`` maps every URL that must end ``ok`` to the image it must be stored as (the
        loopback set: all of them; the synthetic web: its ``fetchable`` ones). ``per_host_concurrency``
        None leaves the DAG's default (8, HARVEST_PER_HOST_CONCURRENCY).
        """
        # Each run writes every blob: an earlier run's files would make storing free.
        storage = self.data / "storage"
        shutil.rmtree(storage, ignore_errors=True)
        storage.mkdir()
        list_file = self.data / "url_lists" / f"bench-{len(urls)}.txt"
        if not list_file.exists():
            list_file.write_text("\n".join(urls) + "\n")
        conf: dict[str, Any] = {"source": list_file.as_uri(), "force": True}
        if per_host_concurrency:
            conf["per_host_concurrency"] = per_host_concurrency
        if batch_size:
            conf["batch_size"] = batch_size
        if threads:
            conf["concurrency"] = threads
        run_id = f"bench_{label}_{uuid.uuid4().hex[:6]}"
        sampler = RssSampler(self.worker_pid())
        idle_rss = sampler.sample()
        supervisor = self.stack.running_pid()
        assert supervisor is not None
        stack_sampler = RssSampler(supervisor)  # every program of the stack, the worker included
        profiler = Profiler(self.worker_pid(), profile) if profile else None
        load_before = os.getloadavg()[0]
        cpu_before = self.cpu_seconds()
        triggered = time.time()
        response = self.api.trigger("harvest", conf, run_id=run_id)
        if response.status_code >= 300:
            sampler.stop()
            stack_sampler.stop()
            raise RuntimeError(f"trigger refused: {response.status_code} {response.text}")
        try:
            run = self.api.wait_for_run("harvest", run_id, timeout=timeout)
        finally:
            sampler.stop()
            stack_sampler.stop()
            if profiler:
                profiler.stop()
        seen_done = time.time()
        cpu_after = self.cpu_seconds()
        ended = _ts(run.get("end_date")) or seen_done
        seconds = ended - triggered
        tis = self.task_instances(run_id)
        cpu = {k: round(cpu_after.get(k, 0.0) - v, 2) for k, v in cpu_before.items()}
        figures: dict[str, Any] = {
            "name": "harvest",
            "label": label,
            "run_id": run_id,
            "urls": len(urls),
            "batch_size": batch_size,
            "threads": threads,
            "conf": conf,
            "worker_concurrency": self.stack.worker_concurrency,
            "airflow_env": dict(self.extra_env),
            # CPU seconds each program used during the run (2 cores = 2 CPU-seconds per second)
            "cpu_seconds": cpu,
            "cpu_s": round(sum(cpu.values()), 2),
            "seconds": round(seconds, 3),
            "urls_per_s": round(len(urls) / seconds, 1),
            "load_avg_1m_before": round(load_before, 2),
            "worker_idle_rss_bytes": idle_rss,
            # the worker's tree (peak_rss_bytes, peak_processes...) and the whole stack's
            **sampler.figures(),
            "peak_rss_by_task_bytes": sampler.peak_by_task(tis),
            "worker_peak_rss_bytes": sampler.peak_total,
            "stack_peak_rss_bytes": stack_sampler.peak_total,
            "timeline": timeline(triggered, run, tis),
            "batches": self.batch_summaries(run_id),
            "verify": self.verify(expected, urls, run_id),
            "rows": self.row_figures(expected, run_id, triggered),
        }
        t, b = figures["timeline"], figures["batches"]
        outside = [
            t[k]
            for k in (
                "run_start_latency_s",
                "gap_read_to_plan_s",
                "gap_plan_to_first_batch_s",
                "gap_last_batch_to_record_s",
                "gap_record_to_run_end_s",
            )
            if t.get(k) is not None
        ]
        figures["airflow_share"] = {
            # wall time in which no task of the run was running: scheduling, dispatch, process start
            "between_tasks_s": round(sum(outside), 3),
            "between_tasks_pct": round(100 * sum(outside) / seconds, 1),
            # inside the batch task instances, time not spent in pipeline.download (start, parse, XCom)
            "in_batch_tasks_s": round(t["batch_task_seconds_sum"] - b["download_seconds_sum"], 3),
            "in_batch_tasks_per_task_s": round(
                (t["batch_task_seconds_sum"] - b["download_seconds_sum"]) / max(1, t["batch_count"]), 3
            ),
            "download_phase_urls_per_s": round(len(urls) / t["batches_wall_s"], 1)
            if t.get("batches_wall_s")
            else None,
        }
        if profiler:
            figures["profile"] = profiler.summary()
        return figures

    def by_expectation(self, run_id: str, expected: Mapping[str, str]) -> dict[str, dict[str, int]]:
        """Per outcome the web expects (``fetched``, ``http_404``, ``reset``, ``stall``), the statuses
        (with the HTTP status, if any) Harvest recorded."""
        import psycopg2

        with psycopg2.connect(self.stack.results_url) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT url, status, http_status FROM harvest.downloads WHERE run_key = %s", (run_id,)
            )
            rows = cur.fetchall()
        conn.close()
        table: dict[str, dict[str, int]] = {}
        for url, status, http_status in rows:
            key = f"{status} {http_status}" if http_status and status != "ok" else status
            cell = table.setdefault(expected.get(url, "not in the list"), {})
            cell[key] = cell.get(key, 0) + 1
        return table

    def row_figures(self, expected: Mapping[str, ImageSpec], run_id: str, triggered: float) -> dict[str, Any]:
        """What ``harvest.downloads`` says about the run's time: when the URLs ended (seconds from the
        trigger), by status, the longest URL, and the URLs that should have been fetched and were not
        (status, HTTP status, attempts, error)."""
        import psycopg2

        with psycopg2.connect(self.stack.results_url) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT url, status, http_status, attempts, elapsed_ms, error, fetched_at"
                " FROM harvest.downloads WHERE run_key = %s",
                (run_id,),
            )
            rows = cur.fetchall()
        conn.close()
        ends: dict[str, list[float]] = {}
        held: dict[str, float] = {}
        longest: dict[str, Any] = {}
        failed: list[dict[str, Any]] = []
        ok_ends: list[float] = []
        for url, status, http_status, attempts, elapsed_ms, error, fetched_at in rows:
            end = fetched_at.timestamp() - triggered if fetched_at is not None else None
            if end is not None:
                ends.setdefault(status, []).append(end)
                if status == "ok":
                    ok_ends.append(end)
            held[status] = held.get(status, 0.0) + (elapsed_ms or 0) / 1000
            if elapsed_ms is not None and elapsed_ms > longest.get("elapsed_ms", -1):
                longest = {"url": url, "status": status, "attempts": attempts, "elapsed_ms": elapsed_ms}
            if url in expected and status != "ok":
                failed.append(
                    {
                        "url": url,
                        "status": status,
                        "http_status": http_status,
                        "attempts": attempts,
                        "elapsed_ms": elapsed_ms,
                        "error": error,
                    }
                )
        ok_ends.sort()
        by_error: dict[str, int] = {}
        for f in failed:
            key = f"{f['status']} {f['http_status'] or ''}: {(f['error'] or '')[:120]}"
            by_error[key] = by_error.get(key, 0) + 1
        return {
            "end_s_by_status": {
                k: {"first": round(min(v), 2), "last": round(max(v), 2), "count": len(v)}
                for k, v in ends.items()
            },
            # when 50%, 99% and all of the fetched URLs were done, from the trigger
            "ok_done_s": {
                q: round(ok_ends[min(len(ok_ends) - 1, int(f * len(ok_ends)))], 2)
                for q, f in (("p50", 0.5), ("p99", 0.99), ("all", 1.0))
            }
            if ok_ends
            else {},
            "longest_url": longest,
            # seconds each URL held a fetch thread (elapsed_ms: slot waits, attempts, back-off), summed
            "thread_seconds_by_status": {k: round(v, 1) for k, v in held.items()},
            "fetchable_not_ok": len(failed),
            "fetchable_not_ok_by_error": dict(sorted(by_error.items(), key=lambda kv: -kv[1])),
            "fetchable_not_ok_examples": failed[:10],
        }

    def task_instances(self, run_id: str) -> list[dict[str, Any]]:
        """All of the run's task instances: the API returns at most 100 per page."""
        found: list[dict[str, Any]] = []
        while True:
            page = self.api.get(f"/dags/harvest/dagRuns/{run_id}/taskInstances", limit=100, offset=len(found))
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    def batch_summaries(self, run_id: str) -> dict[str, Any]:
        """What the batch tasks returned (counts, seconds inside ``pipeline.download``)."""
        import psycopg2

        with psycopg2.connect(self.stack.metadata_url) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT value FROM xcom WHERE run_id = %s AND task_id = 'download_batch' AND key = 'return_value'",
                (run_id,),
            )
            values = [v if isinstance(v, dict) else json.loads(v) for (v,) in cur.fetchall()]
        conn.close()
        seconds = [float(v.get("seconds", 0)) for v in values if isinstance(v, dict)]
        return {
            "count": len(values),
            "download_seconds_sum": round(sum(seconds), 3),
            "download_seconds_max": round(max(seconds), 3) if seconds else None,
            "download_seconds_min": round(min(seconds), 3) if seconds else None,
            "download_seconds_each": sorted(round(x, 1) for x in seconds),
        }

    def verify(self, expected: Mapping[str, ImageSpec], urls: list[str], run_id: str) -> dict[str, Any]:
        """Every URL has one row; every ``expected`` URL is ``ok`` with its image's SHA-256, and that
        blob is stored; no other URL is ``ok``."""
        import psycopg2

        sizes = {spec.sha256: spec.size for spec in expected.values()}
        with psycopg2.connect(self.stack.results_url) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT url, status, sha256, storage_uri FROM harvest.downloads WHERE run_key = %s", (run_id,)
            )
            rows = cur.fetchall()
            cur.execute("SELECT urls_total, status_counts FROM harvest.runs WHERE run_key = %s", (run_id,))
            summary = cur.fetchone()
        conn.close()
        statuses: dict[str, int] = {}
        wrong_hash = missing_file = ok_expected = ok_unexpected = 0
        ok_urls: list[str] = []
        for url, status, sha256, uri in rows:
            statuses[status] = statuses.get(status, 0) + 1
            if status != "ok":
                continue
            ok_urls.append(url)
            spec = expected.get(url)
            if spec is None:
                ok_unexpected += 1
                continue
            ok_expected += 1
            if (sha256 or "").strip() != spec.sha256:
                wrong_hash += 1
            path = uri[len("file://") :] if uri and uri.startswith("file://") else None
            try:
                if path is None or os.stat(path).st_size != sizes.get((sha256 or "").strip()):
                    missing_file += 1
            except OSError:
                missing_file += 1
        seen = {row[0] for row in rows}
        missing_rows = sum(1 for url in urls if url not in seen)
        return {
            "rows": len(rows),
            "statuses": statuses,
            "missing_rows": missing_rows,
            "expected_ok": len(expected),
            "ok_expected": ok_expected,
            "ok_unexpected": ok_unexpected,
            "wrong_sha256": wrong_hash,
            "missing_or_wrong_files": missing_file,
            "run_summary_urls": summary[0] if summary else None,
            "ok_urls": ok_urls,
            "passed": ok_expected == len(expected)
            and not (ok_unexpected or missing_rows or wrong_hash or missing_file),
        }


def timeline(triggered: float, run: dict[str, Any], tis: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a run's wall time goes, from the task instances' timestamps (seconds)."""

    def of(task_id: str) -> list[dict[str, Any]]:
        return [t for t in tis if t["task_id"] == task_id]

    def span(items: list[dict[str, Any]], key: str, pick: Any) -> float | None:
        values = [_ts(t.get(key)) for t in items if t.get(key)]
        return pick(values) if values else None

    read, plan, record = of("read_sources"), of("plan_batches"), of("record_results")
    batches = of("download_batch")
    run_end = _ts(run.get("end_date"))
    queued_waits = [
        _ts(t["start_date"]) - _ts(t["queued_when"])  # type: ignore[operator]
        for t in batches
        if t.get("start_date") and t.get("queued_when")
    ]
    scheduled_waits = [
        _ts(t["queued_when"]) - _ts(t["scheduled_when"])  # type: ignore[operator]
        for t in batches
        if t.get("queued_when") and t.get("scheduled_when")
    ]
    durations = [
        _ts(t["end_date"]) - _ts(t["start_date"])  # type: ignore[operator]
        for t in batches
        if t.get("end_date") and t.get("start_date")
    ]
    marks = {
        "read_start": span(read, "start_date", min),
        "read_end": span(read, "end_date", max),
        "plan_start": span(plan, "start_date", min),
        "plan_end": span(plan, "end_date", max),
        "batches_first_start": span(batches, "start_date", min),
        "batches_last_end": span(batches, "end_date", max),
        "record_start": span(record, "start_date", min),
        "record_end": span(record, "end_date", max),
    }

    def gap(a: float | None, b: float | None) -> float | None:
        return round(b - a, 3) if a is not None and b is not None else None

    return {
        "batch_count": len(batches),
        "run_start_latency_s": gap(triggered, marks["read_start"]),
        "read_sources_s": gap(marks["read_start"], marks["read_end"]),
        "gap_read_to_plan_s": gap(marks["read_end"], marks["plan_start"]),
        "plan_batches_s": gap(marks["plan_start"], marks["plan_end"]),
        "gap_plan_to_first_batch_s": gap(marks["plan_end"], marks["batches_first_start"]),
        "batches_wall_s": gap(marks["batches_first_start"], marks["batches_last_end"]),
        "gap_last_batch_to_record_s": gap(marks["batches_last_end"], marks["record_start"]),
        "record_results_s": gap(marks["record_start"], marks["record_end"]),
        "gap_record_to_run_end_s": gap(marks["record_end"], run_end),
        "batch_queued_to_start_sum_s": round(sum(queued_waits), 3),
        "batch_queued_to_start_max_s": round(max(queued_waits), 3) if queued_waits else None,
        "batch_scheduled_to_queued_sum_s": round(sum(scheduled_waits), 3),
        "batch_task_seconds_sum": round(sum(durations), 3),
        "batch_task_seconds_mean": round(sum(durations) / len(durations), 3) if durations else None,
    }


# ---- measuring the contenders alike -------------------------------------------------------------
def git_commit() -> dict[str, Any]:
    """``git rev-parse HEAD``, with ``-dirty`` when tracked files differ from it (and which)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "changed_files": []}
    return {
        "commit": head + ("-dirty" if changed else ""),
        "changed_files": [line[3:] for line in changed],
    }


def harvest_slots(worker_concurrency: int | None) -> int:
    """Harvest's Celery worker slots: ``--worker-concurrency`` or the stack's default (one per core)."""
    if worker_concurrency:
        return worker_concurrency
    from scripts.stack import Stack

    default = next(f for f in dataclasses.fields(Stack) if f.name == "worker_concurrency")
    assert default.default_factory is not dataclasses.MISSING
    return int(default.default_factory())


def _settle(web: Any, timeout: float = 20) -> int:
    """Wait until no request is in flight on the web (a stall a client gave up on ends server-side
    when nginx notices the abort); return how many still are after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = sum(s.get("in_flight", 0) for s in web.host_stats().values())
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def server_view(
    stats: Mapping[str, Mapping[str, int]],
    limit: int | None,
    server_cpu: float,
    client_cpu: float | None,
    web: Any = None,
) -> dict[str, Any]:
    """What the synthetic web's hosts saw during one contender (from :meth:`SyntheticWeb.host_stats`);
    with ``web``, what the busiest host's requests would take at the least (latency, handshake,
    transfer at its rate) to compare with what they took."""
    peaks = sorted(((s["peak_concurrency"], a) for a, s in stats.items()), reverse=True)
    busiest = max(stats.items(), key=lambda kv: kv[1].get("busy_ms", 0), default=None)

    def total(key: str) -> int:
        return sum(s.get(key, 0) for s in stats.values())

    host: dict[str, Any] = {}
    if web is not None and busiest is not None:
        h = web.host_of(f"http://{busiest[0]}/")
        needed = web.requests_needed()[h.address]
        host = {
            "busiest_host_latency_ms": round(h.latency * 1000, 1),
            "busiest_host_handshake_ms": round(h.connect_delay * 1000, 1),
            "busiest_host_connections": busiest[1].get("connections", 0),
            # latency + body at the host's rate, per request a polite client needs, on average
            "busiest_host_least_ms_per_request": round(
                1000 * web.slot_seconds_needed().get(h.address, 0.0) / max(1, needed), 1
            ),
        }
    return {
        **host,
        "peak_per_host": peaks[0][0] if peaks else None,
        "peak_host": peaks[0][1] if peaks else None,
        "hosts_over_limit": sum(1 for p, _ in peaks if limit and p > limit),
        "limit": limit,
        "hosts_seen": len(stats),
        "requests": total("requests"),
        "connections": total("connections"),
        "sent_429": total("sent_429"),
        "sent_503": total("sent_503"),
        # every host's requests' time from request line to last byte (or abort), summed
        "busy_s": round(total("busy_ms") / 1000, 1),
        "busiest_host": busiest[0] if busiest else None,
        "busiest_host_requests": busiest[1].get("requests", 0) if busiest else None,
        "busiest_host_peak": busiest[1].get("peak_concurrency", 0) if busiest else None,
        # its requests' time from request line to last byte, summed: "slot-seconds"
        "busiest_host_busy_s": round(busiest[1].get("busy_ms", 0) / 1000, 2) if busiest else None,
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_share": round(server_cpu / (server_cpu + client_cpu), 3) if client_cpu else None,
    }


def measure_web(web: Any, limit: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one contender on a freshly reset web; add what the server saw (``figures["server"]``)."""
    left = _settle(web)
    web.reset_stats()
    server_before = web.cpu_seconds()
    figures = run()
    server_cpu = web.cpu_seconds() - server_before
    figures["server"] = server_view(web.host_stats(), limit, server_cpu, figures.get("cpu_s"), web)
    figures["server"]["in_flight_before_reset"] = left
    return figures


def measure_loopback(server: Any, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one contender against the loopback nginx, polling its open connections (one host: the
    per-host concurrency) and counting its CPU."""
    from bench.img2dataset import ConnectionProbe

    probe = ConnectionProbe(server.base_url)
    server_before = server.cpu_seconds()
    with probe.watch():
        figures = run()
    server_cpu = server.cpu_seconds() - server_before
    seen = probe.figures()
    client_cpu = figures.get("cpu_s")
    figures["server"] = {
        "peak_per_host": seen["peak_connections"],
        "peak_in_flight": seen["peak_in_flight"],
        "probe_samples": seen["probe_samples"],
        "hosts_over_limit": None,
        "limit": None,
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_share": round(server_cpu / (server_cpu + client_cpu), 3) if client_cpu else None,
    }
    return figures


def outcome(figures: dict[str, Any], fetched_urls: list[str] | set[str], fetchable: set[str]) -> None:
    """Fetched against fetchable: how many fetchable URLs it fetched, and what else it "fetched"."""
    fetched = set(fetched_urls)
    figures["fetchable"] = len(fetchable)
    figures["fetched_fetchable"] = len(fetched & fetchable)
    figures["fetched_not_fetchable"] = len(fetched - fetchable)
    figures["missed_examples"] = sorted(fetchable - fetched)[:5]


def attempt(report: dict[str, Any], name: str, run: Callable[[], dict[str, Any]]) -> None:
    """Run one contender; a failure is recorded (and printed) instead of ending the benchmark."""
    try:
        figures = run()
    except Exception as exc:  # noqa: BLE001 - the others still run; the error is in the report
        import traceback

        traceback.print_exc()
        figures = {"name": name, "error": f"{type(exc).__name__}: {str(exc)[:2000]}"}
    report["contenders"][name] = figures
    if "error" in figures:
        print(f"{name}: FAILED {figures['error'][:300]}", flush=True)
    else:
        print(
            f"{name}: {figures['urls_per_s']:.0f} URLs/s, {figures['seconds']:.1f}s, fetched "
            f"{figures['fetched_fetchable']}/{figures['fetchable']}, peak per host "
            f"{figures['server']['peak_per_host']}, CPU {figures.get('cpu_s')}s",
            flush=True,
        )


def run_raw_contender(
    urls: list[str], fetchable: set[str], *, processes: int, threads: int, ca_certs: str | None = None
) -> dict[str, Any]:
    from bench.raw import run_raw

    web = ca_certs is not None
    figures = run_raw(urls, processes=processes, threads=threads, ca_certs=ca_certs, web=web, keep_urls=True)
    outcome(figures, figures.pop("fetched_urls"), fetchable)
    figures["notes"] = f"{processes} processes × {threads} threads, urllib3 keep-alive, no per-host limit" + (
        "; follows redirects, retries a 429/503 once, 10 s read timeout" if web else ""
    )
    return figures


def run_engine_contender(
    urls: list[str],
    fetchable: set[str],
    *,
    processes: int,
    threads: int,
    per_host: int,
    harvest_env: Mapping[str, str],
) -> dict[str, Any]:
    """Harvest's engine alone, with the settings of Harvest's batch tasks (their environment and
    Params), in as many processes as Harvest has worker slots: the ceiling of Harvest on this machine."""
    import redis

    from bench.engine import run_engine_processes
    from include.harvest.settings import FetchSettings
    from scripts.stack import DEFAULT_REDIS_SERVER, setting

    redis_server = setting("HARVEST_REDIS_SERVER", DEFAULT_REDIS_SERVER)  # the Redis the stack uses
    environ = {"HARVEST_REDIS_URL": f"{redis_server}/{COORDINATION_DB}", **harvest_env}
    # No robots.txt answers or host slots left by an earlier contender or run.
    redis.Redis.from_url(environ["HARVEST_REDIS_URL"]).flushdb()
    settings = FetchSettings.from_env(environ=environ, concurrency=threads, per_host_concurrency=per_host)
    figures = run_engine_processes(urls, settings, processes=processes)
    outcome(figures, figures.pop("fetched_urls"), fetchable)
    figures["notes"] = (
        f"Harvest's engine without Airflow: fetch_batch in {processes} processes × {threads} threads, "
        f"per_host_concurrency {per_host}, host slots and robots.txt through Redis; statuses {figures['statuses']}"
    )
    return figures


def run_img2dataset_contender(
    urls: list[str],
    fetchable: set[str],
    expected: Mapping[str, ImageSpec],
    root: Path,
    *,
    processes: int,
    threads: int,
    ca_bundle: Path | None = None,
) -> dict[str, Any]:
    from bench.img2dataset import run_img2dataset, verify_files

    out = Path(tempfile.mkdtemp(prefix="harvest-bench-img2dataset-", dir=BENCH_TMP))
    try:
        figures = run_img2dataset(urls, out, processes=processes, threads=threads, ca_bundle=ca_bundle)
        stored = {u: path for u, path in figures["files"].items() if u in expected}
        figures["verify"] = verify_files({"files": stored}, root, dict(expected))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    del figures["files"]
    figures["errors"] = dict(figures["errors"])
    figures["peak_rss_bytes"] = int(figures["peak_rss_mb"] * 2**20)
    outcome(figures, figures.pop("fetched_urls"), fetchable)
    v = figures["verify"]
    figures["notes"] = (
        f"{figures['version']}, {processes} processes × {threads} threads, files, no resize nor re-encoding, "
        f"{figures['retries']} retries, {figures['shards']} shards; files matching the image: "
        f"{v['sha256_match']}/{v['files']}"
    )
    return figures


def run_chord_contender(
    urls: list[str],
    fetchable: set[str],
    *,
    client: str,
    timeout: float,
    web: Any = None,
    slots: int = 2,
    threads: int = HARVEST_THREADS,
) -> dict[str, Any]:
    from bench.chord import run_chord

    kwargs: dict[str, Any] = {}
    if web is not None:
        kwargs = {"pool": "threads", "workers": slots, "concurrency": threads, "ca_bundle": web.ca_bundle}
    figures = run_chord(
        urls,
        broker_db=BROKER_DB,
        backend_db=COORDINATION_DB,
        timeout=timeout,
        sampler=lambda pid: _ChordSampler(pid),
        client=client,
        keep_urls=True,
        **kwargs,
    )
    outcome(figures, figures.pop("fetched_urls"), fetchable)
    figures["notes"] = (
        f"one task per URL, {figures['worker']}, {client} client"
        + (
            f" (the same concurrency as Harvest's {slots} slots × {threads} threads: a prefork pool of "
            f"{os.cpu_count()} would have {os.cpu_count()} requests in flight)"
            if web is not None
            else ""
        )
        + f"; no retries; submit {figures['submit_seconds']}s"
    )
    return figures


def harvest_contender(figures: dict[str, Any], fetchable: set[str], per_host: int) -> dict[str, Any]:
    """Harvest's figures in the contenders' terms (the ok rows as its fetched URLs, the stack's RSS)."""
    ok_urls = figures["verify"].pop("ok_urls")
    outcome(figures, ok_urls, fetchable)
    figures["peak_rss_bytes"] = figures["stack_peak_rss_bytes"]
    v = figures["verify"]
    figures["notes"] = (
        f"{figures['timeline']['batch_count']} batches on {figures['worker_concurrency']} worker slots × "
        f"{figures['threads'] or HARVEST_THREADS} threads, per_host_concurrency {per_host}; rows+files verified: "
        + ("yes" if v["passed"] else "NO")
    )
    return figures


class _ChordSampler:
    """Adapter for :func:`bench.chord.run_chord`: keeps the full figures around."""

    def __init__(self, pid: int) -> None:
        self.sampler = RssSampler(pid)

    def stop(self) -> int:
        return self.sampler.stop()


# ---- targets -------------------------------------------------------------------------------------
def _ok(figures: dict[str, Any] | None) -> bool:
    return bool(figures) and "error" not in (figures or {})


def _fetch_settings(harvest: dict[str, Any]) -> Any:
    from include.harvest.settings import FetchSettings

    return FetchSettings.from_env(environ=harvest.get("airflow_env") or {})


def harvest_time_reasons(report: dict[str, Any], budget_s: float) -> tuple[list[str], list[str]]:
    """Why Harvest took longer than ``budget_s``, from this run's own figures, and what would reach it."""
    c = report["contenders"]
    h = c["harvest"]
    n, wall, cores = report["urls"], h["seconds"], report["machine"]["cpus"] or 1
    t, a = h["timeline"], h["airflow_share"]
    get = lambda key: float(t.get(key) or 0)  # noqa: E731
    serial = a["between_tasks_s"] + get("read_sources_s") + get("plan_batches_s") + get("record_results_s")
    reasons = [
        f"time: {wall:.1f}s against a budget of {budget_s:.1f}s. Serial steps {serial:.1f}s (no task running "
        f"{a['between_tasks_s']}s: run start latency + gaps between tasks + run finish; read_sources "
        f"{t['read_sources_s']}s, plan_batches {t['plan_batches_s']}s, record_results {t['record_results_s']}s); "
        f"download batches {t['batches_wall_s']}s wall ({t['batch_count']} batch tasks on "
        f"{h['worker_concurrency']} slots, {a['in_batch_tasks_s']} task-seconds of them outside "
        f"pipeline.download: task start, XCom, staging)"
    ]
    reach: list[str] = []
    if serial >= budget_s:
        reach.append(f"the serial steps alone ({serial:.1f}s) exceed the {budget_s:.1f}s budget")
    cpu = float(h["cpu_s"])
    per_url_ms = 1000 * cpu / n
    cpu_floor = cpu / cores
    others = ", ".join(
        f"{k} {1000 * float(c[k]['cpu_s']) / c[k]['urls']:.2f}"
        for k in ("raw", "img2dataset", "chord", "engine")
        if _ok(c.get(k)) and c[k].get("cpu_s") is not None
    )
    reasons.append(
        f"CPU: {cpu:.1f} CPU-s over the stack's programs ({h['cpu_seconds']}) = {cpu / (cores * wall):.0%} of "
        f"{cores} cores × {wall:.1f}s, {per_url_ms:.2f} ms per URL (others: {others or 'not run'}); "
        f"at 100% of {cores} cores that CPU alone takes {cpu_floor:.1f}s"
    )
    if cpu_floor > budget_s:
        reach.append(
            f"CPU per URL down from {per_url_ms:.2f} ms to ≤ {1000 * budget_s * cores / n:.2f} ms on {cores} cores, "
            f"or ≥ {math.ceil(cpu / budget_s)} cores at today's CPU per URL (CPU-bound: {cpu_floor:.1f}s > "
            f"{budget_s:.1f}s)"
        )
    engine = c.get("engine")
    if _ok(engine):
        assert engine is not None
        e_cpu = float(engine["cpu_s"])
        e_ms = 1000 * e_cpu / n
        e_server = float(engine["server"].get("server_cpu_s") or 0)
        e_busy = (e_cpu + e_server) / (cores * engine["seconds"])
        reasons.append(
            f"ceiling: Harvest's engine alone (the same work per URL and settings in {engine['processes']} "
            f"processes × {engine['threads_per_process']} threads, no Airflow) did {engine['urls_per_s']:.0f} URLs/s "
            f"in {engine['seconds']:.1f}s, {e_ms:.2f} ms of CPU per URL, {e_busy:.0%} of {cores} cores with the "
            f"server's {e_server:.1f} CPU-s; around it Airflow (task life cycles, list reading and planning, "
            f"checkpoints, staging and recording in Postgres, the scheduler) cost {wall - engine['seconds']:.1f}s "
            f"and {cpu - e_cpu:.1f} CPU-s more"
        )
        if engine["seconds"] > budget_s:
            reach.append(
                f"out of reach on {cores} cores with today's work per URL: the engine alone, with no orchestration "
                f"at all, took {engine['seconds']:.1f}s > {budget_s:.1f}s ({engine['urls_per_s']:.0f} < "
                f"{n / budget_s:.0f} URLs/s needed, at {e_busy:.0%} of the cores). It takes the engine's CPU per URL "
                f"from {e_ms:.2f} ms to ≤ {e_ms * budget_s / engine['seconds']:.2f} ms (address guard, host slots and "
                f"robots.txt through Redis, Pillow's header check, SHA-256, the content-addressed store) before any "
                f"orchestration, or ≥ {math.ceil(cores * engine['seconds'] / budget_s)} cores"
            )
    web = report.get("web")
    if web:
        limit = web["per_host_limit"]
        s = h["server"]
        busy = float(s["busiest_host_busy_s"] or 0)
        at_limit = busy / limit
        per_request = 1000 * busy / max(1, s["busiest_host_requests"])
        reasons.append(
            f"politeness: the busiest host {s['busiest_host']} served Harvest {s['busiest_host_requests']} "
            f"requests on {s.get('busiest_host_connections')} new connections for {busy:.1f} slot-seconds "
            f"(request line to last byte, summed by nginx) = {at_limit:.1f}s at {limit} in flight, "
            f"{per_request:.0f} ms per request against {s.get('busiest_host_least_ms_per_request')} ms of latency "
            f"({s.get('busiest_host_latency_ms')} ms) + transfer at its rate; each new connection waits "
            f"{s.get('busiest_host_handshake_ms')} ms more (handshakes). The floor from latency alone is "
            f"{web['politeness_floor_s']}s, with transfer and {limit} handshakes {web['transfer_floor_s']}s "
            f"({web['transfer_floor_host']})"
        )
        others = ", ".join(
            f"{k} {c[k]['server']['requests']}/{c[k]['server']['connections']}"
            for k in ("raw", "img2dataset", "chord", "engine")
            if _ok(c.get(k))
        )
        reasons.append(
            f"connections: Harvest made {s['requests']} requests on {s['connections']} new connections "
            f"(requests/connections of the others: {others or 'not run'}); each batch task is a new "
            f"process whose pools start empty, and robots.txt is asked once per host"
        )
        floor_tx = web["transfer_floor_s"]
        i2d = c.get("img2dataset")
        seen = (
            f" (img2dataset had up to {i2d['server']['peak_per_host']} in flight on one host)"
            if _ok(i2d)
            else ""
        )
        if floor_tx > budget_s:
            reach.append(
                f"politeness: the busiest host alone needs ≥ {floor_tx:.1f}s at {limit} per host (latency + "
                f"transfer at its rate), over the {budget_s:.1f}s budget: only ≥ {math.ceil(limit * floor_tx / budget_s)} "
                f"requests in flight on that host would fit{seen}, which the politeness rule forbids: out of reach "
                f"at {limit} per host"
            )
        elif at_limit > budget_s:
            reach.append(
                f"politeness: at {limit} per host the busiest host needs ≥ {floor_tx:.1f}s, within the budget, but "
                f"Harvest's requests there took {per_request:.0f} ms each against ≥ "
                f"{s.get('busiest_host_least_ms_per_request')} ms: {at_limit:.1f}s. Fewer new connections (each "
                f"waits {s.get('busiest_host_handshake_ms')} ms more) would bring it toward {floor_tx:.1f}s"
            )
        rows = h["rows"]
        longest = rows.get("longest_url") or {}
        longest_s = (longest.get("elapsed_ms") or 0) / 1000
        ends = rows.get("end_s_by_status", {})
        last_any = max((v["last"] for v in ends.values()), default=None)
        settings = _fetch_settings(h)
        each = h["batches"].get("download_seconds_each") or []
        waves = math.ceil(h["timeline"]["batch_count"] / max(1, h["worker_concurrency"]))
        timeouts = ends.get("timeout")
        reasons.append(
            f"batches: {h['timeline']['batch_count']} on {h['worker_concurrency']} slots = {waves} wave(s); "
            f"seconds inside pipeline.download per batch {each}"
            + (
                f"; {timeouts['count']} URLs timed out, ending between {timeouts['first']}s and {timeouts['last']}s"
                if timeouts
                else ""
            )
        )
        held_by = rows.get("thread_seconds_by_status") or {}
        held = sum(held_by.values())
        threads = h["threads"] or HARVEST_THREADS
        capacity = h["worker_concurrency"] * threads * float(h["timeline"]["batches_wall_s"] or 0)
        served = float(s.get("busy_s") or 0)
        lanes = h["worker_concurrency"] * threads
        reasons.append(
            f"fetch threads: {h['worker_concurrency']} slots × {threads} threads × {h['timeline']['batches_wall_s']}s "
            f"of batches = {capacity:.0f} thread-seconds; URLs held a thread {held:.0f}s "
            f"({', '.join(f'{k} {v:.0f}' for k, v in held_by.items())}), the hosts were busy {served:.0f}s on "
            f"Harvest's requests: {held - served:.0f} thread-seconds went to waiting for a host's slot, back-off "
            f"and the client's own work, {capacity - held:.0f} to threads with no URL left while their batch "
            f"finished its last ones"
        )
        tail_bound = waves * longest_s
        if max(served / max(1, lanes), tail_bound) < budget_s < held / max(1, lanes):
            reach.append(
                f"fetch threads: the hosts' own time on Harvest's requests over {lanes} threads "
                f"({served:.0f}s / {lanes} = {served / lanes:.1f}s) and the stall tails ({waves} wave(s) × "
                f"{longest_s:.1f}s = {tail_bound:.1f}s) each fit in the {budget_s:.1f}s budget, the URLs' thread time "
                f"({held:.0f}s / {lanes} = {held / lanes:.1f}s) does not: its {held - served:.0f} thread-seconds "
                f"off the servers are the excess (handshakes, back-off and Retry-After waits held in a thread, "
                f"the client's own work). More threads per batch, or retries that wait without holding a "
                f"thread, attack that part; whether both bounds are met at once is for a run to show"
            )
        reasons.append(
            f"tail: the last fetched URL ended {rows.get('ok_done_s', {}).get('all')}s after the trigger "
            f"(99% by {rows.get('ok_done_s', {}).get('p99')}s), the last URL of any status at {last_any}s, the run "
            f"at {wall:.1f}s; the slowest URL ({longest.get('status')}, {longest.get('attempts')} attempts) took "
            f"{longest_s:.1f}s ({settings.max_attempts} attempts × {settings.read_timeout:g}s read timeout "
            f"+ back-off on a stalled server), and a batch task ends only with its slowest URL"
        )
        if longest_s * waves > budget_s:
            reach.append(
                f"stalls: a stalled URL holds its batch {longest_s:.1f}s and each of the {waves} wave(s) waits for "
                f"its own ({waves} × {longest_s:.1f}s = {waves * longest_s:.1f}s against {budget_s:.1f}s): one wave "
                f"(batch_size ≥ URLs ÷ slots) pays it once; HARVEST_MAX_ATTEMPTS × HARVEST_READ_TIMEOUT "
                f"(now {settings.max_attempts} × {settings.read_timeout:g}s) under "
                f"{budget_s / max(1, waves):.0f}s per wave fits the budget"
            )
    return reasons, reach


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets (§3) for this scenario, each with its measured ratio and PASS/MISS."""
    c = report["contenders"]
    h, i2d, raw = c.get("harvest"), c.get("img2dataset"), c.get("raw")
    n = report["urls"]
    found: list[dict[str, Any]] = []

    def add(
        name: str, measured: str, passed: bool | None, *, time_budget_s: float | None = None, **extra: Any
    ) -> dict[str, Any]:
        """One target; a missed time target (``time_budget_s``) carries where Harvest's time went."""
        item = {
            "target": name,
            "measured": measured,
            "status": {True: "PASS", False: "MISS", None: "n/a"}[passed],
        }
        item.update(extra)
        if passed is False and time_budget_s is not None:
            item["reasons"], item["would_reach"] = harvest_time_reasons(report, time_budget_s)
        found.append(item)
        return item

    web = report.get("web")
    if _ok(h) and _ok(i2d):
        assert h is not None and i2d is not None
        ratio = round(h["urls_per_s"] / i2d["urls_per_s"], 3)
        budget = n / (TARGET_OVER_IMG2DATASET * i2d["urls_per_s"])
        add(
            f"harvest ≥ {TARGET_OVER_IMG2DATASET} × img2dataset URLs/s",
            f"{h['urls_per_s']:.0f} / {i2d['urls_per_s']:.0f} = {ratio} (needs {TARGET_OVER_IMG2DATASET * i2d['urls_per_s']:.0f} "
            f"URLs/s: {budget:.1f}s for {n} URLs; harvest took {h['seconds']:.1f}s)",
            ratio >= TARGET_OVER_IMG2DATASET,
            time_budget_s=budget,
            ratio=ratio,
            budget_s=round(budget, 2),
        )
        if web:
            floor = web["politeness_floor_s"]
            applies = floor > budget
            limit_s = TARGET_FLOOR_MARGIN * floor
            over = round(h["seconds"] / floor, 3)
            add(
                f"where the politeness floor is slower than {TARGET_OVER_IMG2DATASET} × img2dataset: harvest "
                f"within {TARGET_FLOOR_MARGIN - 1:.0%} of it",
                f"floor {floor:.1f}s ({'slower' if applies else 'faster'} than the {budget:.1f}s of "
                f"{TARGET_OVER_IMG2DATASET} × img2dataset: {'applies' if applies else 'does not apply'}); harvest "
                f"{h['seconds']:.1f}s = {over} × floor (needs ≤ {TARGET_FLOOR_MARGIN})",
                (h["seconds"] <= limit_s) if applies else None,
                time_budget_s=limit_s,
                ratio=over,
                applies=applies,
                budget_s=round(limit_s, 2),
            )
    if not web and _ok(h) and _ok(raw):
        assert h is not None and raw is not None
        ratio = round(h["urls_per_s"] / raw["urls_per_s"], 3)
        budget = n / (TARGET_OVER_RAW * raw["urls_per_s"])
        add(
            f"harvest/raw ≥ {TARGET_OVER_RAW}",
            f"{h['urls_per_s']:.0f} / {raw['urls_per_s']:.0f} = {ratio} (needs {TARGET_OVER_RAW * raw['urls_per_s']:.0f} "
            f"URLs/s: {budget:.1f}s; harvest took {h['seconds']:.1f}s)",
            ratio >= TARGET_OVER_RAW,
            time_budget_s=budget,
            ratio=ratio,
            budget_s=round(budget, 2),
        )
    if web and _ok(h):
        assert h is not None
        s = h["server"]
        add(
            f"harvest never above {web['per_host_limit']} in flight on any host",
            f"peak {s['peak_per_host']} (on {s['peak_host']}), {s['hosts_over_limit']} of {s['hosts_seen']} hosts over",
            s["hosts_over_limit"] == 0,
            ratio=s["peak_per_host"],
        )
    baseline = report.get("memory_baseline")
    if baseline and baseline["verified"] and _ok(h):
        assert h is not None
        found.append(memory_target(baseline, h, n))
    if _ok(h):
        assert h is not None
        missed = h["fetchable"] - h["fetched_fetchable"]
        item = add(
            "every fetchable URL fetched (and nothing else)",
            f"{h['fetched_fetchable']}/{h['fetchable']} fetched, {h['fetched_not_fetchable']} not fetchable marked ok",
            missed == 0 and h["fetched_not_fetchable"] == 0 and h["verify"]["passed"],
            ratio=round(h["fetched_fetchable"] / max(1, h["fetchable"]), 4),
        )
        if item["status"] == "MISS":
            item["reasons"] = [
                f"{count} × {error}" for error, count in h["rows"]["fetchable_not_ok_by_error"].items()
            ][:15]
    return found


def memory_target(baseline: dict[str, Any], h: dict[str, Any], n: int) -> dict[str, Any]:
    """Worker memory flat from the short run to the long one, measured on the worker's largest process.

    The worker tree's sum depends on how many batch tasks happen to run at the sampled moment (a
    short list's two batches of 1,000 may not overlap), so the target compares the tree's largest
    process, whichever task it runs: each task process could grow with the list, the batch tasks
    with their batch's length and read_sources, plan_batches and record_results with the list's.
    The tree's figures and each task's peak are printed beside it.
    """
    base, peak = baseline["peak_single_process_rss_bytes"], h["peak_single_process_rss_bytes"]
    growth = round(peak / base, 3)
    batch_long = n / max(1, h["batches"]["count"])
    batch_short = baseline["urls"] / max(1, baseline["batches"])
    base_by_task = baseline.get("peak_rss_by_task_bytes", {})
    by_task = h.get("peak_rss_by_task_bytes", {})
    item: dict[str, Any] = {
        "target": f"worker memory flat from {baseline['urls']:,} to {n:,} URLs (the worker's largest process, "
        f"≤ {TARGET_MEMORY_GROWTH} ×)",
        "measured": f"{_mb(base)} → {_mb(peak)} = {growth} × with batches of {batch_short:,.0f} → "
        f"{batch_long:,.0f} URLs (worker tree {_mb(baseline['worker_peak_rss_bytes'])} → "
        f"{_mb(h['worker_peak_rss_bytes'])}, {baseline['batches']} → {h['batches']['count']} batches; "
        f"each task's largest process: "
        + ", ".join(f"{task} {_mb(base_by_task.get(task))} → {_mb(rss)}" for task, rss in by_task.items())
        + ")",
        "status": "PASS" if growth <= TARGET_MEMORY_GROWTH else "MISS",
        "ratio": growth,
    }
    if item["status"] == "MISS":
        grown = {task: rss - base_by_task[task] for task, rss in by_task.items() if base_by_task.get(task)}
        task = max(grown, key=lambda t: grown[t]) if grown else None
        item["reasons"] = [
            f"the largest process grew {_mb(peak - base)}"
            + (f"; the task that grew most is {task} (+{_mb(grown[task])})" if task else "")
            + ". A task that holds its list or batch grows with it: see bench/README.md for what each holds"
        ]
    return item


# ---- output ------------------------------------------------------------------------------------
def _mb(value: int | float | None) -> str:
    return f"{value / 2**20:.0f} MiB" if value else "-"


def _by_task(peaks: Mapping[str, int]) -> str:
    return ", ".join(f"{task} {_mb(rss)}" for task, rss in peaks.items()) or "-"


def ratios(report: dict[str, Any]) -> dict[str, float | None]:
    c = report["contenders"]
    rates = {name: (c.get(name) or {}).get("urls_per_s") for name in CONTENDERS}
    h = rates["harvest"]
    figures: dict[str, float | None] = {
        f"harvest_over_{name}": round(h / rates[name], 3) if h and rates[name] else None
        for name in ("raw", "img2dataset", "chord", "engine")
    }
    figures["engine_over_raw"] = (
        round(rates["engine"] / rates["raw"], 3) if rates["engine"] and rates["raw"] else None
    )
    figures["img2dataset_over_raw"] = (
        round(rates["img2dataset"] / rates["raw"], 3) if rates["img2dataset"] and rates["raw"] else None
    )
    if report.get("thread_sweep") and rates["raw"]:
        # Like raw, which keeps its best thread count: Harvest with its best `concurrency` param.
        best = max(s["urls_per_s"] for s in report["thread_sweep"])
        figures["best_threads_harvest_over_raw"] = round(best / rates["raw"], 3)
    return figures


def format_table(report: dict[str, Any]) -> str:
    web = report.get("web")
    where = (
        f"synthetic web, {web['hosts']} hosts (seed {web['seed']})"
        if web
        else f"loopback nginx ({report['imageset']})"
    )
    m = report["machine"]
    lines = [
        f"Harvest end-to-end benchmark · {report['urls']} URLs · {where} · commit {report['commit']} · {report['started_at']}",
        f"machine: {m['cpus']} CPUs, load avg at start {m['load_avg_at_start']}, at end {m.get('load_avg_at_end')}",
        "",
        f"{'':12}{'URLs/s':>8}{'seconds':>9}{'fetched/fetchable':>19}{'+other':>7}{'peak/host':>10}"
        + (f"{'hosts>' + str(web['per_host_limit']):>9}{'reqs/conns':>12}" if web else "")
        + f"{'CPU s':>8}{'peak RSS':>10}{'srv CPU':>9}  notes",
    ]
    for name in CONTENDERS:
        r = report["contenders"].get(name)
        if not r:
            continue
        if "error" in r:
            lines.append(f"{name:12}FAILED: {r['error'][:200]}")
            continue
        s = r["server"]
        fetched = f"{r['fetched_fetchable']}/{r['fetchable']}"
        conns = f"{s.get('requests')}/{s.get('connections')}"
        web_columns = f"{s['hosts_over_limit']:>9}{conns:>12}" if web else ""
        share = f"{s['server_cpu_s']:.0f}s" + (
            f" {s['server_cpu_share']:.0%}" if s.get("server_cpu_share") else ""
        )
        lines.append(
            f"{name:12}{r['urls_per_s']:>8.0f}{r['seconds']:>9.1f}{fetched:>19}{r['fetched_not_fetchable']:>7}"
            f"{s['peak_per_host'] if s['peak_per_host'] is not None else '-':>10}{web_columns}"
            f"{r.get('cpu_s') if r.get('cpu_s') is not None else '-':>8}{_mb(r.get('peak_rss_bytes')):>10}"
            f"{share:>9}  {r.get('notes', '')}"
        )
    lines.append(
        "  fetched/fetchable: fetchable URLs it fetched; +other: URLs it fetched that are not fetchable; "
        + (
            "peak/host: the largest per-host peak of requests in flight, counted by nginx; "
            f"hosts>{web['per_host_limit']}: hosts where it went over Harvest's limit; "
            "reqs/conns: requests and new connections the hosts saw; "
            if web
            else "peak/host: open connections nginx saw (stub_status, polled every 20 ms; one host); "
        )
        + "CPU s: the contender's processes (harvest: every program of its stack); peak RSS: its process tree "
        "(harvest: the whole stack); srv CPU: nginx, and its share of server + contender CPU"
    )
    rat = report["ratios"]
    lines.append(
        "  ratios: " + ", ".join(f"{k.replace('_over_', '/')} {v}" for k, v in rat.items() if v is not None)
    )
    if web:
        lines += [
            "",
            f"politeness floor at {web['per_host_limit']} per host (web.politeness_floor): {web['politeness_floor_s']}s "
            f"({web['floor_host']}: {web['floor_host_requests']} requests × {web['floor_host_latency_ms']} ms ÷ "
            f"{web['per_host_limit']}); with each body's transfer at the host's rate and the handshakes: "
            f"{web['transfer_floor_s']}s ({web['transfer_floor_host']})",
        ]
        h = report["contenders"].get("harvest")
        if _ok(h):
            assert h is not None
            lines.append(
                f"harvest: {h['seconds']:.1f}s = {h['seconds'] / web['politeness_floor_s']:.2f} × the floor, "
                f"{h['seconds'] / web['transfer_floor_s']:.2f} × the floor with transfer"
            )
    lines += ["", f"targets ({'web' if web else 'loopback'}, {report['urls']} URLs, this run's figures):"]
    if not web:
        lines.append("  (the issue sets the loopback targets at 100,000 URLs)")
    for t in report["targets"]:
        lines.append(f"  [{t['status']}] {t['target']}: {t['measured']}")
        for reason in t.get("reasons", []):
            lines.append(f"         why: {reason}")
        for step in t.get("would_reach", []):
            lines.append(f"         would reach it: {step}")
    if not report["targets"]:
        lines.append("  (none: a target needs harvest and the contender it is measured against)")
    h = report["contenders"].get("harvest")
    if _ok(h):
        assert h is not None
        t = h["timeline"]
        b = h["batches"]
        a = h["airflow_share"]
        v = h["verify"]
        lines += [
            "",
            "where a Harvest run's time goes (s):",
            f"  run start latency (trigger → read_sources running) {t['run_start_latency_s']}",
            f"  read_sources {t['read_sources_s']} · gap {t['gap_read_to_plan_s']} · plan_batches {t['plan_batches_s']}"
            f" · gap {t['gap_plan_to_first_batch_s']}",
            f"  batches wall {t['batches_wall_s']} ({t['batch_count']} tasks, mean task {t['batch_task_seconds_mean']},"
            f" of which fetch+store {b['download_seconds_sum']} summed vs {t['batch_task_seconds_sum']} task seconds;"
            f" slowest batch's download {b['download_seconds_max']})",
            f"  gap {t['gap_last_batch_to_record_s']} · record_results {t['record_results_s']}"
            f" · record → run end {t['gap_record_to_run_end_s']}",
            f"  Airflow's share: {a['between_tasks_s']}s ({a['between_tasks_pct']}%) with no task running"
            f" (start latency + 4 gaps + run finish); {a['in_batch_tasks_per_task_s']}s per batch task outside"
            f" pipeline.download; download phase {a['download_phase_urls_per_s']} URLs/s",
            f"  batch queued → running summed {t['batch_queued_to_start_sum_s']} (max {t['batch_queued_to_start_max_s']};"
            f" includes waiting for a free worker slot); scheduled → queued summed {t['batch_scheduled_to_queued_sum_s']}",
            f"  CPU seconds during the run: {h.get('cpu_seconds')}",
            f"  worker tree: idle {_mb(h['worker_idle_rss_bytes'])}, peak {_mb(h['worker_peak_rss_bytes'])}"
            f" ({h['peak_processes']} processes), largest process {_mb(h['peak_single_process_rss_bytes'])};"
            f" whole stack peak {_mb(h['stack_peak_rss_bytes'])}",
            f"  largest process of each task: {_by_task(h.get('peak_rss_by_task_bytes', {}))}",
            f"  rows: {v['statuses']}; URLs ended (s from trigger): "
            + ", ".join(f"{k} {x['first']}–{x['last']}" for k, x in h["rows"]["end_s_by_status"].items()),
        ]
        if h["rows"]["fetchable_not_ok"]:
            lines.append(f"  fetchable URLs not ok: {h['rows']['fetchable_not_ok']}:")
            lines += [f"    {n} × {e}" for e, n in list(h["rows"]["fetchable_not_ok_by_error"].items())[:10]]
        if web:
            lines.append(f"  outcomes by the web's expectation: {h.get('by_expectation')}")
    sweep = report.get("sweep")
    if sweep:
        lines += [
            "",
            "batch-size sweep (harvest):",
            f"  {'batch':>6}{'batches':>9}{'URLs/s':>9}{'seconds':>9}"
            f"{'queued→run Σ':>14}{'peak RSS':>11}  ok",
        ]
        for s in sweep:
            lines.append(
                f"  {s['batch_size']:>6}{s['timeline']['batch_count']:>9}{s['urls_per_s']:>9.0f}{s['seconds']:>9.1f}"
                f"{s['timeline']['batch_queued_to_start_sum_s']:>14.1f}{_mb(s['peak_rss_bytes']):>11}"
                f"  {'yes' if s['verify']['passed'] else 'NO'}"
            )
    thread_sweep = report.get("thread_sweep")
    if thread_sweep:
        lines += [
            "",
            "fetch-threads sweep (harvest, default batch size):",
            f"  {'threads':>7}{'URLs/s':>9}{'seconds':>9}{'worker CPU s':>14}{'peak RSS':>11}  ok",
        ]
        for s in thread_sweep:
            lines.append(
                f"  {s['threads']:>7}{s['urls_per_s']:>9.0f}{s['seconds']:>9.1f}"
                f"{s['cpu_seconds'].get('worker', 0):>14.1f}{_mb(s['peak_rss_bytes']):>11}"
                f"  {'yes' if s['verify']['passed'] else 'NO'}"
            )
        best = max(thread_sweep, key=lambda s: s["urls_per_s"])
        lines.append(
            f"  best: {best['threads']} threads, harvest/raw = {rat.get('best_threads_harvest_over_raw')}"
        )
    return "\n".join(lines)


def draw_chart(report: dict[str, Any], path: Path) -> None:
    """A bar chart with Pillow (no plotting library needed): URLs/s per contender (on the web, with
    the rates the politeness floor and the 1.5 × img2dataset target stand for), then the sweeps."""
    from PIL import Image, ImageDraw, ImageFont

    def font(size: int) -> Any:
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow without FreeType: the fixed bitmap font
            return ImageFont.load_default()

    title_font, label_font, small_font = font(22), font(16), font(13)
    contenders = report["contenders"]
    rows = [(n, contenders[n]) for n in CONTENDERS if _ok(contenders.get(n))]
    sweep = report.get("sweep") or []
    thread_sweep = report.get("thread_sweep") or []
    web = report.get("web")
    n = report["urls"]
    marks: list[tuple[str, float, str]] = []  # (label, URLs/s, colour): vertical lines
    i2d = contenders.get("img2dataset")
    if _ok(i2d):
        assert i2d is not None
        marks.append(
            (
                f"{TARGET_OVER_IMG2DATASET} × img2dataset",
                TARGET_OVER_IMG2DATASET * i2d["urls_per_s"],
                "#6a1b9a",
            )
        )
    if web:
        marks.append((f"floor at {web['per_host_limit']}/host", n / web["politeness_floor_s"], "#ef6c00"))
        marks.append(("floor + transfer", n / web["transfer_floor_s"], "#8d6e63"))
    elif _ok(contenders.get("raw")):
        marks.append(
            (f"{TARGET_OVER_RAW} × raw", TARGET_OVER_RAW * contenders["raw"]["urls_per_s"], "#455a64")
        )
    width = 1000
    bar_h, gap = 40, 16
    top = 80
    phases = _phases(contenders.get("harvest") if _ok(contenders.get("harvest")) else None)
    height = top + len(rows) * (bar_h + gap) + 40 + 20 * len(marks) + 40
    height += len(sweep) * (bar_h - 8 + gap) + 70 if sweep else 0
    height += len(thread_sweep) * (bar_h - 8 + gap) + 70 if thread_sweep else 0
    height += 120 if phases else 0
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    where = f"a synthetic web of {web['hosts']} hosts" if web else "a local nginx"
    d.text((20, 14), f"Harvest benchmark: {n:,} URLs from {where}", fill="black", font=title_font)
    summary = " - ".join(f"[{t['status']}] {t['target'][:60]}" for t in report["targets"][:3])
    d.text(
        (20, 42),
        f"commit {report['commit'][:12]} - {report['machine']['cpus']} CPUs - {report['started_at'][:10]}",
        fill="#444",
        font=small_font,
    )
    d.text((20, 58), _ascii(summary)[:150], fill="#444", font=small_font)
    colors = {
        "raw": "#8c8c8c",
        "img2dataset": "#1565c0",
        "harvest": "#2e7d32",
        "chord": "#c62828",
        "engine": "#81c784",
    }
    left, right = 120, width - 330
    peak = max([r["urls_per_s"] for _, r in rows] + [v for _, v, _ in marks] + [1])
    peak = max([peak] + [s["urls_per_s"] for s in sweep + thread_sweep])
    y = top
    bars_top = y
    for name, r in rows:
        value = r["urls_per_s"]
        w = int((right - left) * value / peak)
        d.text((20, y + 4), name, fill="black", font=label_font)
        d.rectangle([left, y, left + max(w, 2), y + bar_h], fill=colors[name])
        s = r["server"]
        caption = f"{value:,.0f} URLs/s, {r['seconds']:.0f}s"
        detail = (
            f"fetched {r['fetched_fetchable']}/{r['fetchable']}, peak/host {s['peak_per_host']}, "
            f"CPU {r.get('cpu_s')}s"
        )
        d.text((left + max(w, 2) + 8, y + 2), caption, fill="black", font=label_font)
        d.text((left + max(w, 2) + 8, y + 22), detail, fill="#444", font=small_font)
        y += bar_h + gap
    bars_bottom = y - gap
    for _label, value, colour in marks:
        x = left + int((right - left) * value / peak)
        for yy in range(bars_top - 6, bars_bottom + 6, 8):
            d.line([x, yy, x, yy + 4], fill=colour, width=2)
    for label, value, colour in marks:
        d.line([20, y + 8, 40, y + 8], fill=colour, width=2)
        d.text((46, y), _ascii(f"{label}: {value:,.0f} URLs/s (dashed line)"), fill=colour, font=small_font)
        y += 20
    d.text(
        (left, y + 4),
        "URLs per second, higher is better; harvest = trigger to run success, rows and files verified",
        fill="#666",
        font=small_font,
    )
    y += 40
    sections = [
        (
            "Harvest by batch size (URLs/s)",
            [
                (
                    f"{s['batch_size']:,}",
                    s["urls_per_s"],
                    f"{s['urls_per_s']:,.0f} ({s['timeline']['batch_count']} batches)",
                    False,
                )
                for s in sweep
            ],
        ),
        (
            "Harvest by fetch threads per batch (URLs/s)",
            [
                (
                    str(s["threads"]),
                    s["urls_per_s"],
                    f"{s['urls_per_s']:,.0f}",
                    s["threads"] == HARVEST_THREADS,
                )
                for s in thread_sweep
            ],
        ),
    ]
    for title, bars in sections:
        if not bars:
            continue
        d.text((20, y), title, fill="black", font=label_font)
        y += 30
        for label, value, caption, is_default in bars:
            w = max(int((right - left) * value / peak), 2)
            d.text((20, y + 5), label, fill="black", font=label_font)
            d.rectangle([left, y, left + w, y + bar_h - 8], fill="#2e7d32" if is_default else "#81c784")
            d.text((left + w + 8, y + 5), caption, fill="black", font=small_font)
            y += bar_h - 8 + gap
        y += 20
    if phases:
        total = sum(v for _, v, _ in phases) or 1
        d.text((20, y), f"Where the Harvest run's {total:.1f} s go", fill="black", font=label_font)
        y += 28
        x = 20
        span = width - 40
        for _name, value, color in phases:
            w = int(span * value / total)
            d.rectangle([x, y, x + max(w, 1), y + bar_h], fill=color)
            if w > 60:
                d.text((x + 4, y + 12), f"{value:.1f}s", fill="white", font=small_font)
            x += w
        y += bar_h + 8
        x = 20
        for name, _value, color in phases:
            d.rectangle([x, y + 3, x + 10, y + 13], fill=color)
            d.text((x + 14, y), name, fill="black", font=small_font)
            x += 16 + int(d.textlength(name, font=small_font)) + 18
    img.save(path)


def _ascii(text: str) -> str:
    """Pillow's default font has no ≥ nor ×."""
    return text.replace("≥", ">=").replace("≤", "<=").replace("×", "x").replace("÷", "/")


def _phases(harvest: dict[str, Any] | None) -> list[tuple[str, float, str]]:
    """A run's wall time split into orchestration (Airflow) and work, for the chart."""
    if not harvest:
        return []
    t = harvest["timeline"]
    get = lambda key: float(t.get(key) or 0)  # noqa: E731
    orchestration = (
        get("run_start_latency_s")
        + get("gap_read_to_plan_s")
        + get("gap_plan_to_first_batch_s")
        + get("gap_last_batch_to_record_s")
        + get("gap_record_to_run_end_s")
    )
    return [
        ("Airflow: start latency + gaps between tasks", orchestration, "#c62828"),
        ("read_sources + plan_batches", get("read_sources_s") + get("plan_batches_s"), "#f9a825"),
        ("download batches (wall)", get("batches_wall_s"), "#2e7d32"),
        ("record_results", get("record_results_s"), "#1565c0"),
    ]


# ---- the invocation ----------------------------------------------------------------------------
@contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """SIGTERM (a timeout, a CI cancel) unwinds like Ctrl-C, so every `finally` stops what it started."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _warm_page_cache(images: ImageSet) -> None:
    """Read every file once so no contender pays for cold disk reads the others do not."""
    for spec in images:
        with open(images.root / spec.path, "rb") as f:
            while f.read(1 << 20):
                pass


def _base_report(args: argparse.Namespace, scenario: str, count: int) -> dict[str, Any]:
    return {
        "benchmark": "harvest e2e",
        "scenario": scenario,
        **git_commit(),
        "started_at": _now(),
        "urls": count,
        "only": args.only,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "contenders": {},
    }


def _stack_env(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the benchmark gives Harvest's stack: ``env``, then ``--airflow-env``."""
    return {**(env or {}), **dict(item.split("=", 1) for item in args.airflow_env)}


def _harvest_task_env(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str]:
    """The ``HARVEST_*`` variables Harvest's batch tasks see in this benchmark (for the engine alone)."""
    return {k: v for k, v in _stack_env(args, env).items() if k.startswith("HARVEST_")}


def _harvest_bench(args: argparse.Namespace, env: dict[str, str] | None = None) -> HarvestBench:
    return HarvestBench(worker_concurrency=args.worker_concurrency, extra_env=_stack_env(args, env))


def run(args: argparse.Namespace) -> dict[str, Any]:
    report = run_web(args) if args.web else run_loopback(args)
    report["ratios"] = ratios(report)
    report["targets"] = targets(report)
    report["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["finished_at"] = _now()
    return report


def run_loopback(args: argparse.Namespace) -> dict[str, Any]:
    from bench.img2dataset import ensure_img2dataset, start_status_server
    from bench.raw import run_raw

    count = QUICK_URLS if args.quick else args.urls
    only = set(args.only or CONTENDERS)
    slots = harvest_slots(args.worker_concurrency)
    threads = args.threads or HARVEST_THREADS
    if "img2dataset" in only:
        ensure_img2dataset()
    images = build_imageset(count)
    _warm_page_cache(images)
    report = _base_report(args, "loopback", count)
    report["imageset"] = images.summary()
    report["settings"] = {
        "per_host_concurrency": BENCH_PER_HOST_CONCURRENCY,
        "harvest_worker_slots": slots,
        "harvest_threads_per_batch": threads,
        "batch_size": args.batch_size or "automatic (from the list and the worker slots)",
        "raw": f"{slots} processes, best of {list(RAW_THREADS)} threads each",
        "img2dataset": f"{slots} processes × {threads} threads (Harvest's slots × fetch threads)",
        "chord": f"celery prefork, default concurrency, {args.chord_client} client",
        "airflow_env": args.airflow_env,
        "note": "all URLs are on one host (the local nginx), so the run passes per_host_concurrency="
        f"{BENCH_PER_HOST_CONCURRENCY} instead of the default 8; force=true so nothing is skipped as not_modified",
    }
    timeout = max(600, count / 20)
    server = start_status_server(images.root)
    try:
        urls = images.urls(server.base_url)
        fetchable = set(urls)
        expected = dict(zip(urls, images.specs, strict=True))
        print(f"nginx {server.base_url} (pid {server.pid}) serving {images.summary()}", flush=True)
        if "raw" in only:

            def raw_best() -> dict[str, Any]:
                # warm-up: connections, nginx's file cache
                run_raw(urls[:500], processes=slots, threads=RAW_THREADS[0])
                tries = []
                for t in RAW_THREADS:

                    def one(t: int = t) -> dict[str, Any]:
                        return run_raw_contender(urls, fetchable, processes=slots, threads=t)

                    tries.append(measure_loopback(server, one))
                best = max(tries, key=lambda r: r["urls_per_s"])
                best["tries"] = [
                    {k: r[k] for k in ("threads_per_process", "urls_per_s", "cpu_s")} for r in tries
                ]
                best["notes"] += f" (best of {[t['threads_per_process'] for t in best['tries']]} threads)"
                return best

            attempt(report, "raw", raw_best)
        if "img2dataset" in only:
            attempt(
                report,
                "img2dataset",
                lambda: measure_loopback(
                    server,
                    lambda: run_img2dataset_contender(
                        urls, fetchable, expected, images.root, processes=slots, threads=threads
                    ),
                ),
            )
        if "chord" in only:
            attempt(
                report,
                "chord",
                lambda: measure_loopback(
                    server,
                    lambda: run_chord_contender(urls, fetchable, client=args.chord_client, timeout=timeout),
                ),
            )
        if "engine" in only:
            attempt(
                report,
                "engine",
                lambda: measure_loopback(
                    server,
                    lambda: run_engine_contender(
                        urls,
                        fetchable,
                        processes=slots,
                        threads=threads,
                        per_host=BENCH_PER_HOST_CONCURRENCY,
                        harvest_env=_harvest_task_env(args, {"HARVEST_ALLOW_HOSTS": "127.0.0.1"}),
                    ),
                ),
            )
        if "harvest" in only:
            bench = _harvest_bench(args)
            try:
                bench.start()
                if count > MEMORY_BASELINE_URLS:
                    report["memory_baseline"] = memory_baseline(bench, urls, expected, args, timeout)
                profile = RESULTS_DIR.parent / "tmp" / f"profile-{count}.txt" if args.profile else None
                attempt(
                    report,
                    "harvest",
                    lambda: harvest_contender(
                        measure_loopback(
                            server,
                            lambda: bench.run(
                                urls,
                                expected=expected,
                                batch_size=args.batch_size,
                                threads=args.threads,
                                label="main",
                                timeout=timeout,
                                profile=profile,
                            ),
                        ),
                        fetchable,
                        BENCH_PER_HOST_CONCURRENCY,
                    ),
                )
                if args.sweep:
                    report["sweep"] = []
                    for size in args.sweep_sizes:
                        if size > count:
                            continue
                        figures = bench.run(
                            urls, expected=expected, batch_size=size, label=f"b{size}", timeout=timeout
                        )
                        figures["verify"].pop("ok_urls", None)
                        report["sweep"].append(figures)
                        print(f"harvest batch_size={size}: {figures['urls_per_s']:.0f} URLs/s", flush=True)
                if args.sweep_threads:
                    report["thread_sweep"] = []
                    for threads_ in SWEEP_THREADS:
                        figures = bench.run(
                            urls,
                            expected=expected,
                            batch_size=None,
                            threads=threads_,
                            label=f"t{threads_}",
                            timeout=timeout,
                        )
                        figures["verify"].pop("ok_urls", None)
                        report["thread_sweep"].append(figures)
                        print(f"harvest threads={threads_}: {figures['urls_per_s']:.0f} URLs/s", flush=True)
            finally:
                bench.stop()
    finally:
        server.stop()
    return report


def memory_baseline(
    bench: HarvestBench,
    urls: list[str],
    expected: Mapping[str, ImageSpec],
    args: argparse.Namespace,
    timeout: float,
) -> dict[str, Any]:
    """A Harvest run of the list's first :data:`MEMORY_BASELINE_URLS` URLs, the reference of the
    memory target: the worker's peak over the whole list must stay within
    :data:`TARGET_MEMORY_GROWTH` of it."""
    short = urls[:MEMORY_BASELINE_URLS]
    figures = bench.run(
        short,
        expected={url: expected[url] for url in short if url in expected},
        batch_size=args.batch_size,
        threads=args.threads,
        label="memory",
        timeout=timeout,
    )
    print(
        f"harvest, {MEMORY_BASELINE_URLS} URLs (memory baseline): worker tree peak "
        f"{_mb(figures['worker_peak_rss_bytes'])}, largest process {_mb(figures['peak_single_process_rss_bytes'])}",
        flush=True,
    )
    return {
        "urls": MEMORY_BASELINE_URLS,
        "verified": figures["verify"]["passed"],
        "urls_per_s": figures["urls_per_s"],
        "batches": figures["batches"]["count"],
        "worker_peak_rss_bytes": figures["worker_peak_rss_bytes"],
        "peak_single_process_rss_bytes": figures["peak_single_process_rss_bytes"],
        "peak_rss_by_task_bytes": figures["peak_rss_by_task_bytes"],
    }


def run_web(args: argparse.Namespace) -> dict[str, Any]:
    from bench.img2dataset import ensure_img2dataset
    from bench.web import SyntheticWeb

    count = QUICK_URLS if args.quick else args.urls
    only = set(args.only or CONTENDERS)
    slots = harvest_slots(args.worker_concurrency)
    threads = args.threads or HARVEST_THREADS
    limit = WEB_PER_HOST_LIMIT
    if "img2dataset" in only:
        ensure_img2dataset()
    web = SyntheticWeb(count, hosts=args.hosts, seed=args.seed)
    print(web.summary(), flush=True)
    report = _base_report(args, "web", count)
    report["imageset"] = f"{len(web.imageset)} images ({web.imageset.total_bytes / 1e6:.0f} MB)"
    needed = web.requests_needed()
    floor = web.politeness_floor(limit)
    floor_host = max(web.hosts, key=lambda h: needed[h.address] * h.latency)
    transfer_floor, transfer_host = web.transfer_floor(limit)
    chord_urls = min(count, args.chord_web_urls or count)
    report["web"] = {
        "hosts": len(web.hosts),
        "seed": web.seed,
        "summary": web.summary(),
        "per_host_limit": limit,
        "fetchable": len(web.fetchable),
        "expected": {k: sum(1 for v in web.expected.values() if v == k) for k in set(web.expected.values())},
        "politeness_floor_s": round(floor, 2),
        "floor_host": floor_host.address,
        "floor_host_requests": needed[floor_host.address],
        "floor_host_latency_ms": round(floor_host.latency * 1000, 1),
        "transfer_floor_s": round(transfer_floor, 2),
        "transfer_floor_host": transfer_host,
    }
    report["settings"] = {
        "harvest_worker_slots": slots,
        "harvest_threads_per_batch": threads,
        "harvest_per_host_concurrency": f"{limit} (the DAG's default: not passed)",
        "harvest_robots_txt": "checked (the default; the web answers 404)",
        "harvest_env": {"HARVEST_CA_BUNDLE": "<the bench CA>", "HARVEST_ALLOW_HOSTS": "127.0.0.0/8"},
        "batch_size": args.batch_size or "automatic (from the list and the worker slots)",
        "raw": f"{slots} processes × {threads} threads, follows redirects, one retry of a 429/503, timeouts 5/10 s",
        "img2dataset": f"{slots} processes × {threads} threads, timeout 10 s, 3 retries",
        "chord": f"{slots} celery workers × threads pool of {threads}, {args.chord_client} client, timeouts 5/10 s"
        + (f", on the first {chord_urls} URLs (scaled by URLs/s)" if chord_urls < count else ""),
        "airflow_env": args.airflow_env,
    }
    with web:
        _warm_page_cache(web.imageset)
        urls, fetchable = web.urls, web.fetchable
        ca = web.ca_bundle
        web_env = {"HARVEST_CA_BUNDLE": str(ca), "HARVEST_ALLOW_HOSTS": "127.0.0.0/8"}
        print(f"synthetic web up (nginx pid {web.pid}); CA {ca}", flush=True)
        if "raw" in only:
            attempt(
                report,
                "raw",
                lambda: measure_web(
                    web,
                    limit,
                    lambda: run_raw_contender(
                        urls, fetchable, processes=slots, threads=threads, ca_certs=str(ca)
                    ),
                ),
            )
        if "img2dataset" in only:
            attempt(
                report,
                "img2dataset",
                lambda: measure_web(
                    web,
                    limit,
                    lambda: run_img2dataset_contender(
                        urls,
                        fetchable,
                        web.images,
                        web.imageset.root,
                        processes=slots,
                        threads=threads,
                        ca_bundle=ca,
                    ),
                ),
            )
        if "chord" in only:
            subset = urls[:chord_urls]

            def chord_on_web() -> dict[str, Any]:
                figures = measure_web(
                    web,
                    limit,
                    lambda: run_chord_contender(
                        subset,
                        fetchable & set(subset),
                        client=args.chord_client,
                        timeout=CHORD_WEB_MAX_SECONDS * 3,
                        web=web,
                        slots=slots,
                        threads=threads,
                    ),
                )
                if chord_urls < count:
                    figures["measured_seconds"] = figures["seconds"]
                    figures["seconds"] = round(count / figures["urls_per_s"], 1)
                    figures["notes"] += (
                        f"; run on the first {chord_urls} of the {count} URLs (the list is shuffled), "
                        f"seconds scaled from {figures['measured_seconds']}s by its URLs/s"
                    )
                return figures

            attempt(report, "chord", chord_on_web)
        if "engine" in only:
            attempt(
                report,
                "engine",
                lambda: measure_web(
                    web,
                    limit,
                    lambda: run_engine_contender(
                        urls,
                        fetchable,
                        processes=slots,
                        threads=threads,
                        per_host=limit,
                        harvest_env=_harvest_task_env(args, web_env),
                    ),
                ),
            )
        if "harvest" in only:
            bench = _harvest_bench(args, web_env)
            try:
                bench.start()

                def harvest_on_web() -> dict[str, Any]:
                    figures = measure_web(
                        web,
                        limit,
                        lambda: bench.run(
                            urls,
                            expected=web.images,
                            per_host_concurrency=None,
                            batch_size=args.batch_size,
                            threads=args.threads,
                            label="web",
                            timeout=max(900, count / 10),
                        ),
                    )
                    figures["by_expectation"] = bench.by_expectation(figures["run_id"], web.expected)
                    return harvest_contender(figures, fetchable, limit)

                attempt(report, "harvest", harvest_on_web)
            finally:
                bench.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--urls", type=int, default=DEFAULT_URLS, help=f"how many URLs (default {DEFAULT_URLS:,})"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_URLS:,} URLs")
    parser.add_argument(
        "--web", action="store_true", help="the synthetic web (bench.web) instead of one loopback nginx"
    )
    parser.add_argument("--hosts", type=int, default=200, help="--web: how many hosts (default 200)")
    parser.add_argument("--seed", type=int, default=None, help="--web: the web's seed (default: bench.web's)")
    parser.add_argument(
        "--chord-web-urls",
        type=int,
        default=None,
        help="--web: run the chord on the first N URLs only and scale its time (default: all)",
    )
    parser.add_argument("--sweep", action="store_true", help="also run Harvest over several batch sizes")
    parser.add_argument("--sweep-sizes", type=int, nargs="+", default=list(SWEEP_BATCH_SIZES))
    parser.add_argument(
        "--batch-size", type=int, default=None, help="batch size of the main Harvest run (default: the DAG's)"
    )
    parser.add_argument(
        "--worker-concurrency", type=int, default=None, help="Celery worker slots (default: the stack's)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="fetch threads per batch of the main Harvest run (default: the DAG's, 32); "
        "img2dataset, and raw and the chord on the web, get as many per process",
    )
    parser.add_argument(
        "--sweep-threads",
        action="store_true",
        help="also run Harvest with 4, 8, 16 and 32 fetch threads per batch",
    )
    parser.add_argument(
        "--airflow-env",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the stack, e.g. AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME=0.2",
    )
    parser.add_argument(
        "--chord-client",
        choices=["pooled", "urlretrieve"],
        default="pooled",
        help="the chord's HTTP client: pooled keep-alive urllib3 (default) or the seed's urllib.request",
    )
    parser.add_argument("--only", nargs="+", choices=CONTENDERS, help="run only these contenders")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the worker during the main Harvest run"
    )
    parser.add_argument("--tag", default="", help="appended to the output file names (experiments)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the JSON and PNG go")
    args = parser.parse_args(argv)
    if args.seed is None:
        from bench.web import DEFAULT_SEED

        args.seed = DEFAULT_SEED
    if args.web and (args.sweep or args.sweep_threads or args.profile):
        parser.error("--sweep, --sweep-threads and --profile are for the loopback scenario")
    BENCH_TMP.mkdir(parents=True, exist_ok=True)
    with _terminate_cleanly():
        report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    # A partial run (--only) must not replace the figures of a full one.
    partial = args.only and set(args.only) != set(CONTENDERS)
    stem = f"e2e-{report['urls']}" if not args.web else f"e2e-web-{report['urls']}"
    if args.web and (args.hosts != 200 or report["web"]["seed"] != _default_web_seed()):
        stem += f"-h{args.hosts}-s{report['web']['seed']}"
    if partial:
        stem += "-" + "-".join(n for n in CONTENDERS if n in args.only)
    if args.tag:
        stem += f"-{args.tag}"
    json_path, png_path = args.out / f"{stem}.json", args.out / f"{stem}.png"
    report["table"] = format_table(report)
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    draw_chart(report, png_path)
    print()
    print(report["table"])
    print(f"\nwrote {json_path} and {png_path}")
    return 0


def _default_web_seed() -> int:
    from bench.web import DEFAULT_SEED

    return DEFAULT_SEED


if __name__ == "__main__":
    raise SystemExit(main())
