"""The end-to-end benchmark: Harvest against the raw limit and against the plain Celery chord.

In one invocation, over the same N URLs served by a local nginx (synthetic JPEG/PNG, 10–150 KB,
all distinct, see :mod:`bench.imageset`):

1. **raw**: a urllib3 thread pool over 2 processes that only GETs and writes bytes (:mod:`bench.raw`);
   the best of a few thread counts is the machine's practical limit;
2. **chord**: the original design, one Celery task per URL in a chord whose callback inserts the
   rows into Postgres (:mod:`bench.chord`);
3. **harvest**: the real ``harvest`` DAG on a real local stack (api-server, scheduler,
   dag-processor, triggerer, Celery worker) that this command starts with its own databases, Redis
   database numbers (8 and 9), ports and folders; timed from the trigger to the run's end, then
   every row in ``harvest.downloads`` and every stored file is checked against the image set.

It prints URLs/s for each, the ratios harvest/raw and harvest/chord, where a Harvest run's time
goes (Airflow's share: queued → running summed over the batch tasks, run start latency, gaps
between tasks), the peak RSS of the worker process trees, and writes ``bench/results/e2e-<N>.json``
and ``bench/results/e2e-<N>.png``. Everything it starts is stopped by pid; the databases it
created are dropped.

    python -m bench.e2e --quick                 # 2,000 URLs
    python -m bench.e2e                         # 20,000 URLs
    python -m bench.e2e --sweep                 # and Harvest over batch sizes 250..4000
    python -m bench.e2e --sweep-threads         # and Harvest over fetch threads per batch 4..32
    python -m bench.e2e --urls 100000 --only harvest
    python -m bench.e2e --only harvest --profile            # py-spy the worker (pip install py-spy first)
    python -m bench.e2e --only harvest --worker-concurrency 2 --tag wc2
    python -m bench.e2e --only harvest --tag idle01 \
        --airflow-env AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME=0.1
    python -m bench.e2e --only chord --chord-client urlretrieve --tag urlretrieve

A partial run (``--only``, ``--tag``) writes ``e2e-<N>-<contenders>[-<tag>].json`` so it never replaces
the figures of a full run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.imageset import BENCH_TMP, ImageSet, build_imageset
from bench.nginx import Nginx

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Redis database numbers of the benchmark: away from `make run` (0, 1) and the e2e tests (12, 13).
BROKER_DB, COORDINATION_DB = 8, 9
DEFAULT_URLS = 20_000
QUICK_URLS = 2_000
SWEEP_BATCH_SIZES = (250, 500, 1000, 2000, 4000)
# Fetch threads per batch task (the DAG's `concurrency` param, 32 by default). Raw picks its best
# thread count on this machine; this shows what the same choice does for Harvest.
SWEEP_THREADS = (4, 8, 16, 32)
# All benchmark URLs are on one host; Harvest's default of 8 requests in flight per host (across
# workers) is politeness for the open web, not a limit to measure against a local nginx.
BENCH_PER_HOST_CONCURRENCY = 64
RAW_THREADS = (4, 16)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


# ---- memory sampling ----------------------------------------------------------------------------
class RssSampler:
    """Samples the summed RSS of a process and all its descendants until :meth:`stop`."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_total = 0
        self.peak_single = 0
        self.peak_processes = 0
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
        for proc in procs:
            try:
                rss = proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            total += rss
            count += 1
            self.peak_single = max(self.peak_single, rss)
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
        images: ImageSet,
        urls: list[str],
        *,
        batch_size: int | None,
        label: str,
        timeout: float,
        profile: Path | None = None,
        threads: int | None = None,
    ) -> dict[str, Any]:
        """Trigger one run over ``urls``, wait for success, verify every row and file; return figures."""
        # Each run writes every blob: an earlier run's files would make storing free.
        storage = self.data / "storage"
        shutil.rmtree(storage, ignore_errors=True)
        storage.mkdir()
        list_file = self.data / "url_lists" / f"bench-{len(urls)}.txt"
        if not list_file.exists():
            list_file.write_text("\n".join(urls) + "\n")
        conf: dict[str, Any] = {
            "source": list_file.as_uri(),
            "per_host_concurrency": BENCH_PER_HOST_CONCURRENCY,
            "force": True,
        }
        if batch_size:
            conf["batch_size"] = batch_size
        if threads:
            conf["concurrency"] = threads
        run_id = f"bench_{label}_{uuid.uuid4().hex[:6]}"
        sampler = RssSampler(self.worker_pid())
        idle_rss = sampler.sample()
        profiler = Profiler(self.worker_pid(), profile) if profile else None
        load_before = os.getloadavg()[0]
        cpu_before = self.cpu_seconds()
        triggered = time.time()
        response = self.api.trigger("harvest", conf, run_id=run_id)
        if response.status_code >= 300:
            sampler.stop()
            raise RuntimeError(f"trigger refused: {response.status_code} {response.text}")
        try:
            run = self.api.wait_for_run("harvest", run_id, timeout=timeout)
        finally:
            sampler.stop()
            if profiler:
                profiler.stop()
        seen_done = time.time()
        cpu_after = self.cpu_seconds()
        ended = _ts(run.get("end_date")) or seen_done
        seconds = ended - triggered
        tis = self.task_instances(run_id)
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
            "cpu_seconds": {k: round(cpu_after.get(k, 0.0) - v, 2) for k, v in cpu_before.items()},
            "seconds": round(seconds, 3),
            "urls_per_s": round(len(urls) / seconds, 1),
            "load_avg_1m_before": round(load_before, 2),
            "worker_idle_rss_bytes": idle_rss,
            **sampler.figures(),
            "timeline": timeline(triggered, run, tis),
            "batches": self.batch_summaries(run_id),
            "verify": self.verify(images, urls, run_id),
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
        }

    def verify(self, images: ImageSet, urls: list[str], run_id: str) -> dict[str, Any]:
        """Every URL has an ``ok`` row with the served file's SHA-256, and that blob is stored."""
        import psycopg2

        expected = {url: spec.sha256 for url, spec in zip(urls, images, strict=True)}
        sizes = {spec.sha256: spec.size for spec in images}
        with psycopg2.connect(self.stack.results_url) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT url, status, sha256, storage_uri FROM harvest.downloads WHERE run_key = %s", (run_id,)
            )
            rows = cur.fetchall()
            cur.execute("SELECT urls_total, status_counts FROM harvest.runs WHERE run_key = %s", (run_id,))
            summary = cur.fetchone()
        conn.close()
        statuses: dict[str, int] = {}
        wrong_hash = missing_file = 0
        for url, status, sha256, uri in rows:
            statuses[status] = statuses.get(status, 0) + 1
            if status != "ok":
                continue
            if (sha256 or "").strip() != expected.get(url):
                wrong_hash += 1
            path = uri[len("file://") :] if uri and uri.startswith("file://") else None
            try:
                if path is None or os.stat(path).st_size != sizes.get(sha256.strip()):
                    missing_file += 1
            except OSError:
                missing_file += 1
        seen = {row[0] for row in rows}
        missing_rows = sum(1 for url in expected if url not in seen)
        ok = statuses.get("ok", 0)
        return {
            "rows": len(rows),
            "statuses": statuses,
            "missing_rows": missing_rows,
            "wrong_sha256": wrong_hash,
            "missing_or_wrong_files": missing_file,
            "run_summary_urls": summary[0] if summary else None,
            "passed": ok == len(urls) and not (missing_rows or wrong_hash or missing_file),
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


# ---- output ------------------------------------------------------------------------------------
def _mb(value: int | None) -> str:
    return f"{value / 2**20:.0f} MiB" if value else "-"


def ratios(report: dict[str, Any]) -> dict[str, float | None]:
    rates = {name: (report.get(name) or {}).get("urls_per_s") for name in ("raw", "chord", "harvest")}
    h = rates["harvest"]
    figures = {
        "harvest_over_raw": round(h / rates["raw"], 3) if h and rates["raw"] else None,
        "harvest_over_chord": round(h / rates["chord"], 2) if h and rates["chord"] else None,
    }
    if report.get("thread_sweep"):
        # Like raw, which keeps its best thread count: Harvest with its best `concurrency` param.
        best = max(s["urls_per_s"] for s in report["thread_sweep"])
        figures["best_threads_harvest_over_raw"] = round(best / rates["raw"], 3) if rates["raw"] else None
        figures["best_threads_harvest_over_chord"] = (
            round(best / rates["chord"], 2) if rates["chord"] else None
        )
    return figures


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"Harvest end-to-end benchmark · {report['urls']} URLs ({report['imageset']}) · {report['started_at']}",
        f"machine: {report['machine']['cpus']} CPUs, load avg at start {report['machine']['load_avg_at_start']}",
        "",
        f"{'':10}{'URLs/s':>10}{'seconds':>10}{'ok':>9}{'peak RSS':>12}  notes",
    ]
    for name in ("raw", "chord", "harvest"):
        r = report.get(name)
        if not r:
            continue
        if name == "raw":
            note = f"{r['processes']} processes × {r['threads_per_process']} threads (best of {len(report['raw_all'])})"
        elif name == "chord":
            note = f"one task per URL, prefork, {r.get('client', 'pooled')} client; submit {r['submit_seconds']}s"
        else:
            v = r["verify"]
            note = (
                f"{r['timeline']['batch_count']} batches, worker_concurrency {r['worker_concurrency']}, "
                f"per_host_concurrency {BENCH_PER_HOST_CONCURRENCY}; verified rows+files: "
                f"{'yes' if v['passed'] else 'NO ' + json.dumps(v['statuses'])}"
            )
        lines.append(
            f"{name:10}{r['urls_per_s']:>10.0f}{r['seconds']:>10.1f}{r['ok'] if 'ok' in r else r['verify']['statuses'].get('ok', 0):>9}"
            f"{_mb(r.get('peak_rss_bytes')):>12}  {note}"
        )
    rat = report["ratios"]
    lines += [
        "",
        f"harvest/raw   = {rat['harvest_over_raw']}   (target ≥ 0.8)",
        f"harvest/chord = {rat['harvest_over_chord']}   (target ≥ 10)",
    ]
    h = report.get("harvest")
    if h:
        t = h["timeline"]
        b = h["batches"]
        a = h["airflow_share"]
        lines += [
            "",
            "where a Harvest run's time goes (s):",
            f"  run start latency (trigger → read_sources running) {t['run_start_latency_s']}",
            f"  read_sources {t['read_sources_s']} · gap {t['gap_read_to_plan_s']} · plan_batches {t['plan_batches_s']}"
            f" · gap {t['gap_plan_to_first_batch_s']}",
            f"  batches wall {t['batches_wall_s']} ({t['batch_count']} tasks, mean task {t['batch_task_seconds_mean']},"
            f" of which fetch+store {b['download_seconds_sum']} summed vs {t['batch_task_seconds_sum']} task seconds)",
            f"  gap {t['gap_last_batch_to_record_s']} · record_results {t['record_results_s']}"
            f" · record → run end {t['gap_record_to_run_end_s']}",
            f"  Airflow's share: {a['between_tasks_s']}s ({a['between_tasks_pct']}%) with no task running"
            f" (start latency + 4 gaps + run finish); {a['in_batch_tasks_per_task_s']}s per batch task outside"
            f" pipeline.download; download phase {a['download_phase_urls_per_s']} URLs/s",
            f"  batch queued → running summed {t['batch_queued_to_start_sum_s']} (max {t['batch_queued_to_start_max_s']};"
            f" includes waiting for a free worker slot); scheduled → queued summed {t['batch_scheduled_to_queued_sum_s']}",
            f"  CPU seconds during the run: {h.get('cpu_seconds')}",
            f"  worker tree: idle {_mb(h['worker_idle_rss_bytes'])}, peak {_mb(h['peak_rss_bytes'])}"
            f" ({h['peak_processes']} processes), largest process {_mb(h['peak_single_process_rss_bytes'])}",
        ]
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
            f"  best: {best['threads']} threads, harvest/raw = {rat.get('best_threads_harvest_over_raw')}, "
            f"harvest/chord = {rat.get('best_threads_harvest_over_chord')}"
        )
    return "\n".join(lines)


def draw_chart(report: dict[str, Any], path: Path) -> None:
    """A bar chart with Pillow (no plotting library needed): URLs/s per contender, then the sweep."""
    from PIL import Image, ImageDraw, ImageFont

    def font(size: int) -> Any:
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow without FreeType: the fixed bitmap font
            return ImageFont.load_default()

    title_font, label_font, small_font = font(22), font(16), font(13)
    rows = [(n, report[n]["urls_per_s"]) for n in ("raw", "harvest", "chord") if report.get(n)]
    sweep = report.get("sweep") or []
    thread_sweep = report.get("thread_sweep") or []
    width = 900
    bar_h, gap = 34, 14
    top = 70
    phases = _phases(report.get("harvest"))
    height = top + len(rows) * (bar_h + gap) + 60 + (len(sweep) * (bar_h - 8 + gap) + 70 if sweep else 0)
    height += len(thread_sweep) * (bar_h - 8 + gap) + 70 if thread_sweep else 0
    height += 120 if phases else 0
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    rat = report["ratios"]
    d.text(
        (20, 14),
        f"Harvest benchmark: {report['urls']:,} images from a local nginx",
        fill="black",
        font=title_font,
    )
    d.text(
        (20, 42),
        f"harvest/raw {rat['harvest_over_raw']} (target >= 0.8) - harvest/chord {rat['harvest_over_chord']}"
        f" (target >= 10) - {report['machine']['cpus']} CPUs - {report['started_at'][:10]}",
        fill="#444",
        font=small_font,
    )
    colors = {"raw": "#8c8c8c", "harvest": "#2e7d32", "chord": "#c62828"}
    left, right = 110, width - 150
    peak = max([v for _, v in rows] + [s["urls_per_s"] for s in sweep + thread_sweep] + [1])
    y = top
    for name, value in rows:
        w = int((right - left) * value / peak)
        d.text((20, y + 8), name, fill="black", font=label_font)
        d.rectangle([left, y, left + max(w, 2), y + bar_h], fill=colors[name])
        d.text((left + max(w, 2) + 8, y + 8), f"{value:,.0f} URLs/s", fill="black", font=label_font)
        y += bar_h + gap
    d.text(
        (left, y + 2),
        "URLs per second, higher is better; harvest = trigger to run success, rows and files verified",
        fill="#666",
        font=small_font,
    )
    y += 40
    default_batches = (report.get("harvest") or {}).get("timeline", {}).get("batch_count")
    sections = [
        (
            "Harvest by batch size (URLs/s)",
            [
                (
                    f"{s['batch_size']:,}",
                    s["urls_per_s"],
                    f"{s['urls_per_s']:,.0f} ({s['timeline']['batch_count']} batches)",
                    s["timeline"]["batch_count"] == default_batches,
                )
                for s in sweep
            ],
        ),
        (
            "Harvest by fetch threads per batch (URLs/s)",
            # 32 threads: the DAG's default
            [
                (str(s["threads"]), s["urls_per_s"], f"{s['urls_per_s']:,.0f}", s["threads"] == 32)
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
                d.text((x + 4, y + 9), f"{value:.1f}s", fill="white", font=small_font)
            x += w
        y += bar_h + 8
        x = 20
        for name, _value, color in phases:
            d.rectangle([x, y + 3, x + 10, y + 13], fill=color)
            d.text((x + 14, y), name, fill="black", font=small_font)
            x += 16 + int(d.textlength(name, font=small_font)) + 18
    img.save(path)


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.chord import run_chord
    from bench.raw import run_raw

    count = QUICK_URLS if args.quick else args.urls
    only = set(args.only or ("raw", "chord", "harvest"))
    images = build_imageset(count)
    _warm_page_cache(images)
    report: dict[str, Any] = {
        "benchmark": "harvest e2e",
        "started_at": _now(),
        "urls": count,
        "imageset": images.summary(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "per_host_concurrency": BENCH_PER_HOST_CONCURRENCY,
            "note": "all URLs are on one host (the local nginx), so the run passes per_host_concurrency="
            f"{BENCH_PER_HOST_CONCURRENCY} instead of the default 8; force=true so nothing is skipped as not_modified",
        },
    }
    with Nginx(images.root) as server:
        urls = images.urls(server.base_url)
        print(f"nginx {server.base_url} (pid {server.pid}) serving {images.summary()}", flush=True)
        if "raw" in only:
            run_raw(urls[:500], threads=RAW_THREADS[0])  # warm-up: connections, nginx's file cache
            report["raw_all"] = [run_raw(urls, threads=t) for t in RAW_THREADS]
            report["raw"] = max(report["raw_all"], key=lambda r: r["urls_per_s"])
            print(f"raw: {report['raw']['urls_per_s']:.0f} URLs/s", flush=True)
        if "chord" in only:
            report["chord"] = run_chord(
                urls,
                broker_db=BROKER_DB,
                backend_db=COORDINATION_DB,
                timeout=max(600, count / 20),
                sampler=lambda pid: _ChordSampler(pid),
                client=args.chord_client,
            )
            print(f"chord: {report['chord']['urls_per_s']:.0f} URLs/s", flush=True)
        if "harvest" in only:
            overrides = dict(item.split("=", 1) for item in args.airflow_env)
            bench = HarvestBench(worker_concurrency=args.worker_concurrency, extra_env=overrides)
            try:
                bench.start()
                timeout = max(600, count / 20)
                profile = RESULTS_DIR.parent / "tmp" / f"profile-{count}.txt" if args.profile else None
                report["harvest"] = bench.run(
                    images,
                    urls,
                    batch_size=args.batch_size,
                    threads=args.threads,
                    label="main",
                    timeout=timeout,
                    profile=profile,
                )
                print(f"harvest: {report['harvest']['urls_per_s']:.0f} URLs/s", flush=True)
                if args.sweep:
                    report["sweep"] = []
                    for size in args.sweep_sizes:
                        if size > count:
                            continue
                        figures = bench.run(images, urls, batch_size=size, label=f"b{size}", timeout=timeout)
                        report["sweep"].append(figures)
                        print(f"harvest batch_size={size}: {figures['urls_per_s']:.0f} URLs/s", flush=True)
                if args.sweep_threads:
                    report["thread_sweep"] = []
                    for threads in SWEEP_THREADS:
                        figures = bench.run(
                            images,
                            urls,
                            batch_size=None,
                            threads=threads,
                            label=f"t{threads}",
                            timeout=timeout,
                        )
                        report["thread_sweep"].append(figures)
                        print(f"harvest threads={threads}: {figures['urls_per_s']:.0f} URLs/s", flush=True)
            finally:
                bench.stop()
    report["ratios"] = ratios(report)
    report["finished_at"] = _now()
    return report


class _ChordSampler:
    """Adapter for :func:`bench.chord.run_chord`: keeps the full figures around."""

    def __init__(self, pid: int) -> None:
        self.sampler = RssSampler(pid)

    def stop(self) -> int:
        return self.sampler.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--urls", type=int, default=DEFAULT_URLS, help=f"how many URLs (default {DEFAULT_URLS:,})"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_URLS:,} URLs")
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
        help="fetch threads per batch of the main Harvest run (default: the DAG's)",
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
    parser.add_argument(
        "--only", nargs="+", choices=["raw", "chord", "harvest"], help="run only these contenders"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the worker during the main Harvest run"
    )
    parser.add_argument("--tag", default="", help="appended to the output file names (experiments)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the JSON and PNG go")
    args = parser.parse_args(argv)
    BENCH_TMP.mkdir(parents=True, exist_ok=True)
    with _terminate_cleanly():
        report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    # A partial run (--only) must not replace the figures of a full one.
    ran = [n for n in ("raw", "chord", "harvest") if report.get(n)]
    stem = (
        f"e2e-{report['urls']}"
        + ("" if len(ran) == 3 else "-" + "-".join(ran))
        + (f"-{args.tag}" if args.tag else "")
    )
    json_path, png_path = args.out / f"{stem}.json", args.out / f"{stem}.png"
    report["table"] = format_table(report)
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    draw_chart(report, png_path)
    print()
    print(report["table"])
    print(f"\nwrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
