"""The benchmark's verdicts (bench/e2e.py): a missed target says why, and says "out of reach" only
when this run measured it so.

These read a committed report (the 100,000-URL loopback run) and change one contender's figures, so
they check the reasoning, not a machine's speed.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from bench import e2e

REPORT = Path(__file__).resolve().parents[1] / "bench" / "results" / "e2e-100000.json"


@pytest.fixture
def report() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(REPORT.read_text())
    return loaded


def _engine(report: dict[str, Any], urls_per_s: float, cpu_ms_per_url: float) -> dict[str, Any]:
    n = report["urls"]
    return {
        "name": "engine",
        "urls": n,
        "ok": n,
        "seconds": round(n / urls_per_s, 3),
        "urls_per_s": urls_per_s,
        "processes": 2,
        "threads_per_process": 32,
        "cpu_s": n * cpu_ms_per_url / 1000,
        "fetchable": n,
        "fetched_fetchable": n,
        "fetched_not_fetchable": 0,
        "server": {"peak_per_host": 64, "server_cpu_s": 10.0},
    }


def _raw_target(report: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in e2e.targets(report) if t["target"].startswith("harvest/raw"))


def test_an_engine_alone_slower_than_the_budget_makes_the_target_out_of_reach(report: dict[str, Any]) -> None:
    raw_rate = report["contenders"]["raw"]["urls_per_s"]
    report["contenders"]["engine"] = _engine(report, urls_per_s=0.6 * raw_rate, cpu_ms_per_url=2.0)

    target = _raw_target(report)

    assert target["status"] == "MISS"
    out_of_reach = [line for line in target["would_reach"] if line.startswith("out of reach")]
    assert len(out_of_reach) == 1
    # What would reach it: the engine's CPU per URL cut in the ratio of its time to the budget.
    needed_ms = 2.0 * 0.6 / e2e.TARGET_OVER_RAW
    assert f"from 2.00 ms to ≤ {needed_ms:.2f} ms" in out_of_reach[0]
    assert any(line.startswith("ceiling: Harvest's engine alone") for line in target["reasons"])


def test_an_engine_alone_within_the_budget_leaves_the_miss_to_orchestration(report: dict[str, Any]) -> None:
    raw_rate = report["contenders"]["raw"]["urls_per_s"]
    report["contenders"]["engine"] = _engine(report, urls_per_s=0.9 * raw_rate, cpu_ms_per_url=1.4)

    target = _raw_target(report)

    assert target["status"] == "MISS"
    assert not any(line.startswith("out of reach") for line in target["would_reach"])
    ceiling = next(line for line in target["reasons"] if line.startswith("ceiling:"))
    harvest = report["contenders"]["harvest"]
    extra_s = harvest["seconds"] - report["urls"] / (0.9 * raw_rate)
    assert f"cost {extra_s:.1f}s" in ceiling


def test_without_the_engine_contender_no_ceiling_is_claimed(report: dict[str, Any]) -> None:
    without = copy.deepcopy(report)
    without["contenders"].pop("engine", None)

    target = _raw_target(without)

    assert target["status"] == "MISS"
    assert not any(
        line.startswith(("out of reach", "ceiling")) for line in target["would_reach"] + target["reasons"]
    )


def _memory_baseline() -> dict[str, Any]:
    return {
        "urls": 2000,
        "verified": True,
        "urls_per_s": 200.0,
        "batches": 2,
        "worker_peak_rss_bytes": 1183 * 2**20,
        "peak_single_process_rss_bytes": 200 * 2**20,
    }


@pytest.mark.parametrize(("peak_mib", "status"), [(208, "PASS"), (236, "MISS")])
def test_the_memory_target_compares_the_workers_largest_process_with_the_short_run_before_it(
    report: dict[str, Any], peak_mib: int, status: str
) -> None:
    report["memory_baseline"] = _memory_baseline()
    report["contenders"]["harvest"]["peak_single_process_rss_bytes"] = peak_mib * 2**20

    [target] = [t for t in e2e.targets(report) if t["target"].startswith("worker memory flat")]

    assert target["status"] == status
    assert target["ratio"] == round(peak_mib / 200, 3)
    assert target["target"].startswith("worker memory flat from 2,000 to 100,000 URLs")


def test_a_missed_memory_target_names_the_task_that_grew_most(report: dict[str, Any]) -> None:
    report["memory_baseline"] = {
        **_memory_baseline(),
        "peak_rss_by_task_bytes": {"download_batch": 200 * 2**20, "plan_batches": 185 * 2**20},
    }
    harvest = report["contenders"]["harvest"]
    harvest["peak_single_process_rss_bytes"] = 236 * 2**20
    harvest["peak_rss_by_task_bytes"] = {"plan_batches": 236 * 2**20, "download_batch": 206 * 2**20}

    [target] = [t for t in e2e.targets(report) if t["target"].startswith("worker memory flat")]

    assert target["status"] == "MISS"
    assert "plan_batches 185 MiB → 236 MiB" in target["measured"]
    assert "download_batch 200 MiB → 206 MiB" in target["measured"]
    assert "the task that grew most is plan_batches (+51 MiB)" in target["reasons"][0]


def test_no_memory_target_without_a_verified_baseline(report: dict[str, Any]) -> None:
    report.pop("memory_baseline", None)
    assert not [t for t in e2e.targets(report) if t["target"].startswith("worker memory")]
    report["memory_baseline"] = {"urls": 2000, "verified": False}
    assert not [t for t in e2e.targets(report) if t["target"].startswith("worker memory")]


def test_each_tasks_peak_is_told_by_the_title_airflow_gives_its_process() -> None:
    sampler = e2e.RssSampler(os.getpid())
    sampler.stop()
    sampler.peak_by_title = {
        "airflow worker -- 0190-a": 190,
        "airflow worker -- 0190-b": 205,
        "airflow worker -- 0190-c": 198,
        "airflow supervisor: 0190-b": 170,
        "[celeryd: worker@vm:MainProcess]": 175,
    }
    tis = [
        {"id": "0190-a", "task_id": "read_sources"},
        {"id": "0190-b", "task_id": "download_batch"},
        {"id": "0190-c", "task_id": "download_batch"},
    ]

    assert sampler.peak_by_task(tis) == {"download_batch": 205, "read_sources": 190, "other": 175}
