"""Ablation: does each engine part that exists for speed still earn its place on these benchmarks?

    .venv/bin/python -m bench.ablation                              # loopback 20,000 + web 10,000, 3 rounds
    .venv/bin/python -m bench.ablation --scenario web --urls 5000 --rounds 5

Variants, each applied by monkeypatching inside this process (and undone after its run):

- ``all``: the engine as shipped;
- ``-sockets``: plain-HTTP connections keep urllib3's socket (Python timeouts, a ``poll`` before each
  call) instead of :class:`include.harvest.sockets.KernelTimeoutSocket`;
- ``-lease-cache``: :class:`~include.harvest.hostlimits.RedisHostLimits` keeps no lease for reuse
  (``MAX_REUSES = 0``): every request asks Redis for a slot and gives it back there. (Not
  ``REUSE_SECONDS = 0``: that is also how long a thread waits for a slot its process holds, so it
  would spin.)

Two more parts were measured this way and removed, because they gained nothing beyond the noise
(``bench/README.md`` has the table): a fast response-header parser (``include/harvest/httpheaders.py``)
and a per-second cache of the ``fetched_at`` timestamp.

Every run checks that its variant took effect, from counters that every variant pays for alike:
the class of each plain-HTTP socket, and the leases Redis granted against the responses. A patch that did nothing stops the benchmark.

Scenarios: ``loopback`` (the :mod:`bench.engine` setup: one nginx on 127.0.0.1, distinct JPEGs,
32 threads, per-host limit 64 as in the e2e benchmark) and ``web`` (:class:`bench.web.SyntheticWeb`:
200 hosts with latency, bandwidth limits, 80% HTTPS and trouble; 64 threads, per-host limit 8).
Both coordinate per-host slots through Redis under a key prefix of their own. Rounds run every
variant once, in an order rotated from round to round, each from an empty store on tmpfs; the
outcome of every URL must be the same in every run of a scenario.

Measured per run: wall seconds, URLs/s, CPU seconds of this process (``getrusage``, user + system)
per URL, context switches per URL. Per variant: medians, and each round's ratio to the ``all`` run
of the same round. Noise is the spread of ``all`` over the rounds, (max - min) / median. A part
**gains** if removing it costs more than the noise, in the same direction, in every round: URLs/s
below ``1 - noise`` or CPU per URL above ``1 + noise`` of that round's ``all``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
import urllib3.connection

from bench.engine import jpegs
from bench.imageset import build_imageset
from bench.nginx import Nginx
from include.harvest import connections
from include.harvest.fetch import fetch_batch
from include.harvest.guard import parse_target
from include.harvest.hostlimits import (
    DEFAULT_KEY_PREFIX,
    LEASE_MARGIN_SECONDS,
    Lease,
    RedisHostLimits,
    redis_client,
)
from include.harvest.robots import _origin as robots_origin
from include.harvest.settings import FetchSettings
from include.harvest.sockets import KernelTimeoutSocket
from include.harvest.storage import ContentAddressedStore

REPO = Path(__file__).resolve().parents[1]
STORE_ROOT = Path("/dev/shm/harvest-ablation")
VARIANTS = ("all", "-sockets", "-lease-cache")
PARTS = {
    "-sockets": "include/harvest/sockets.py",
    "-lease-cache": "RedisHostLimits lease reuse",
}
SCENARIOS = ("loopback", "web")
DEFAULT_URLS = {"loopback": 20_000, "web": 10_000}
# What SyntheticWeb expects a client to end with, as Harvest statuses (a sanity check, reported).
WEB_EXPECTED_STATUS = {
    "fetched": "ok",
    "http_404": "http_error",
    "reset": "connection_error",
    "stall": "timeout",
}


# --- counters every variant pays for alike ---------------------------------------------------------
class Counts:
    """Counters safe to bump from many threads: ``next()`` on an ``itertools.count`` is one C call."""

    def __init__(self) -> None:
        self._counters: dict[str, itertools.count[int]] = {}

    def add(self, key: str) -> None:
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters.setdefault(key, itertools.count())
        next(counter)

    def snapshot(self) -> dict[str, int]:
        # Reading a count means taking the next value: read once, at the end of a run.
        return {key: next(counter) for key, counter in sorted(self._counters.items())}


@dataclass
class Probe:
    """What one run saw: socket classes and Redis grants."""

    counts: Counts = field(default_factory=Counts)

    def result(self) -> dict[str, int]:
        return self.counts.snapshot()


@contextlib.contextmanager
def _patched(owner: object, name: str, value: object) -> Iterator[None]:
    original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def variant(name: str, probe: Probe) -> Iterator[None]:
    """Apply ``name`` (one of :data:`VARIANTS`) and the probes, for the duration of the block."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {VARIANTS}")
    counts = probe.counts
    within_deadline = connections._response_within_deadline
    ask_redis = RedisHostLimits._ask_redis

    def probed_response(sock: Any, get_response: Callable[[], Any]) -> Any:
        response = within_deadline(sock, get_response)
        counts.add("responses")
        counts.add(f"socket:{type(sock).__name__}")
        return response

    def probed_ask(self: RedisHostLimits, host: str, limit: int, crawl_delay: float | None) -> Lease | int:
        answer = ask_redis(self, host, limit, crawl_delay)
        if isinstance(answer, Lease):
            counts.add("redis_grants")
        return answer

    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(connections, "_response_within_deadline", probed_response))
        stack.enter_context(_patched(RedisHostLimits, "_ask_redis", probed_ask))
        if name == "-sockets":
            stack.enter_context(
                _patched(
                    connections._WatchedHTTPConnection,
                    "_new_conn",
                    urllib3.connection.HTTPConnection._new_conn,
                )
            )
        elif name == "-lease-cache":
            stack.enter_context(_patched(RedisHostLimits, "MAX_REUSES", 0))
        yield


def check_effect(name: str, seen: dict[str, int], results: int) -> None:
    """Raise if the counters show that ``name`` was not in effect (or a part was off elsewhere)."""
    responses = seen.get("responses", 0)
    kernel = seen.get(f"socket:{KernelTimeoutSocket.__name__}", 0)
    plain = seen.get("socket:socket", 0)
    grants = seen.get("redis_grants", 0)
    problems = []
    if not responses:
        problems.append("no response was seen")
    if (name == "-sockets") != (plain > 0) or (name == "-sockets") == (kernel > 0):
        problems.append(f"plain-HTTP sockets: {kernel} kernel-timeout, {plain} plain")
    if name == "-lease-cache" and grants < responses:
        problems.append(f"lease cache still on: {grants} Redis grants for {responses} responses")
    if name != "-lease-cache" and not 0 < grants < responses:
        problems.append(f"lease cache not in use: {grants} Redis grants for {responses} responses")
    if problems:
        raise RuntimeError(f"variant {name} not in effect as expected: {'; '.join(problems)} ({seen})")


# --- one run ---------------------------------------------------------------------------------------
@dataclass
class Scenario:
    name: str
    urls: list[str]
    settings: FetchSettings
    redis_url: str
    prefix: str
    expected: dict[str, str] | None = None  # URL -> expected Harvest status (web only)
    reset: Callable[[], None] | None = None  # between runs (web: re-arm the 429/503s)
    server_cpu: Callable[[], float] | None = None
    reference: dict[str, str] | None = None  # the first run's status per URL


def forget_redis_state(scenario: Scenario) -> None:
    """Delete this benchmark's keys only: its slot and pause keys, and the robots.txt cache entries
    of its own origins (the robots cache has no prefix of ours, so its keys are named one by one)."""
    client = redis_client(scenario.redis_url)
    keys = list(client.scan_iter(match=f"{scenario.prefix}:*", count=1000))
    origins = {robots_origin(parse_target(url)) for url in scenario.urls}
    keys += [f"{DEFAULT_KEY_PREFIX}:robots:{origin}" for origin in origins]  # RobotsPolicy.cache_key
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run_once(
    scenario: Scenario, name: str, round_number: int, urls: list[str] | None = None
) -> dict[str, Any]:
    """Fetch the scenario's URLs (or ``urls``) once with variant ``name``; return what was measured."""
    urls = scenario.urls if urls is None else urls
    store_dir = STORE_ROOT / f"{scenario.name}-{name}-{round_number}"
    shutil.rmtree(store_dir, ignore_errors=True)
    store_dir.mkdir(parents=True)
    forget_redis_state(scenario)
    if scenario.reset:
        scenario.reset()
    os.sync()
    gc.collect()
    client = redis_client(scenario.redis_url)
    settings = scenario.settings
    limits = RedisHostLimits(
        client,
        per_host=settings.per_host_concurrency,
        lease_seconds=settings.connect_timeout + settings.total_timeout + LEASE_MARGIN_SECONDS,
        prefix=scenario.prefix,
    )
    probe = Probe()
    load = os.getloadavg()[0]
    redis_cpu = _redis_cpu(client)
    server_cpu = scenario.server_cpu() if scenario.server_cpu else 0.0
    with variant(name, probe):
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        results = fetch_batch(
            urls, settings, store=ContentAddressedStore(f"file://{store_dir}"), limits=limits
        )
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    load_end = os.getloadavg()[0]
    server_cpu = (scenario.server_cpu() - server_cpu) if scenario.server_cpu else 0.0
    redis_cpu = _redis_cpu(client) - redis_cpu
    shutil.rmtree(store_dir, ignore_errors=True)
    seen = probe.result()
    check_effect(name, seen, len(results))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    switches = (after.ru_nvcsw - before.ru_nvcsw) + (after.ru_nivcsw - before.ru_nivcsw)
    statuses = {r.url: str(r.status) for r in results}
    return {
        "scenario": scenario.name,
        "round": round_number,
        "variant": name,
        "urls": len(urls),
        "seconds": round(seconds, 3),
        "urls_per_s": round(len(urls) / seconds, 1),
        "cpu_s": round(cpu, 3),
        "cpu_us_per_url": round(cpu / len(urls) * 1e6, 1),
        "switches_per_url": round(switches / len(urls), 2),
        "redis_cpu_s": round(redis_cpu, 3),  # Redis is shared: other clients count here too
        "server_cpu_s": round(server_cpu, 3),
        "load_1min": round(load, 2),  # at the start of the run (this benchmark's own threads count too)
        "load_1min_end": round(load_end, 2),
        "statuses": dict(sorted(Counter(statuses.values()).items())),
        "probe": seen,
        "_per_url": statuses,
    }


# --- rounds and summary ----------------------------------------------------------------------------
def warm_page_cache(files: list[Path]) -> None:
    """Read every image once, so that no run pays for the disk reads of the first pass (nginx serves
    them from the page cache in every run)."""
    for path in files:
        with open(path, "rb") as file:
            while file.read(1 << 20):
                pass


def run_scenario(scenario: Scenario, rounds: int, warmup: list[str]) -> list[dict[str, Any]]:
    run_once(scenario, "all", 0, warmup)  # imports, first connections, caches: untimed
    runs: list[dict[str, Any]] = []
    for round_number in range(1, rounds + 1):
        shift = (round_number - 1) % len(VARIANTS)
        for name in VARIANTS[shift:] + VARIANTS[:shift]:
            run = run_once(scenario, name, round_number)
            per_url = run.pop("_per_url")
            if scenario.reference is None:
                scenario.reference = per_url
            differing = [url for url, status in per_url.items() if scenario.reference.get(url) != status]
            run["outcomes_differ"] = len(differing)
            run["outcomes_differ_examples"] = [
                f"{url}: {scenario.reference.get(url)} -> {per_url[url]}" for url in differing[:5]
            ]
            if scenario.expected is not None:
                run["unexpected"] = sum(scenario.expected[url] != status for url, status in per_url.items())
            runs.append(run)
            print(
                f"{scenario.name} round {round_number} {name:17} {run['urls_per_s']:8.1f} URLs/s "
                f"{run['cpu_us_per_url']:7.1f} us/URL {run['switches_per_url']:6.1f} sw/URL "
                f"({run['seconds']:.1f}s, load {run['load_1min']}-{run['load_1min_end']}) {run['statuses']}"
                + (f" DIFFERENT OUTCOMES: {len(differing)}" if differing else ""),
                flush=True,
            )
    return runs


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: medians, per-round ratios to ``all``, and whether the part gains beyond the noise."""
    by = {(r["variant"], r["round"]): r for r in runs}
    rounds = sorted({r["round"] for r in runs})
    base_rate = [by["all", k]["urls_per_s"] for k in rounds]
    base_cpu = [by["all", k]["cpu_us_per_url"] for k in rounds]
    noise = {"urls_per_s": round(_spread(base_rate), 4), "cpu_us_per_url": round(_spread(base_cpu), 4)}
    variants: dict[str, Any] = {}
    for name in VARIANTS:
        rate = [by[name, k]["urls_per_s"] for k in rounds]
        cpu = [by[name, k]["cpu_us_per_url"] for k in rounds]
        rate_ratios = [v / b for v, b in zip(rate, base_rate, strict=True)]
        cpu_ratios = [v / b for v, b in zip(cpu, base_cpu, strict=True)]
        entry: dict[str, Any] = {
            "urls_per_s": rate,
            "cpu_us_per_url": cpu,
            "switches_per_url": [by[name, k]["switches_per_url"] for k in rounds],
            "median_urls_per_s": round(statistics.median(rate), 1),
            "median_cpu_us_per_url": round(statistics.median(cpu), 1),
            "median_switches_per_url": round(
                statistics.median(by[name, k]["switches_per_url"] for k in rounds), 2
            ),
            "rate_ratios": [round(x, 3) for x in rate_ratios],
            "cpu_ratios": [round(x, 3) for x in cpu_ratios],
            "rate_ratio_median": round(statistics.median(rate_ratios), 3),
            "cpu_ratio_median": round(statistics.median(cpu_ratios), 3),
        }
        if name != "all":
            # One round has no noise to compare with: no verdict.
            enough = len(rounds) >= 2
            entry["gains_rate"] = enough and all(x < 1 - noise["urls_per_s"] for x in rate_ratios)
            entry["gains_cpu"] = enough and all(x > 1 + noise["cpu_us_per_url"] for x in cpu_ratios)
        variants[name] = entry
    return {
        "noise": noise,
        "outcomes_equal": all(r["outcomes_differ"] == 0 for r in runs),
        "variants": variants,
    }


def table(name: str, summary: dict[str, Any]) -> str:
    noise = summary["noise"]
    lines = [
        f"{name}: noise (spread of `all` over the rounds) {noise['urls_per_s']:.1%} in URLs/s, "
        f"{noise['cpu_us_per_url']:.1%} in CPU/URL; outcomes equal in every run: {summary['outcomes_equal']}",
        "",
        "| variant | URLs/s | x all, per round (median) | CPU us/URL | x all, per round (median) "
        "| switches/URL | removing it costs beyond the noise |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant_name, v in summary["variants"].items():
        if variant_name == "all" or len(v["rate_ratios"]) < 2:
            verdict = "-"
        else:
            costs = [m for m, key in (("URLs/s", "gains_rate"), ("CPU", "gains_cpu")) if v[key]]
            verdict = f"**yes** ({', '.join(costs)})" if costs else "no"
        rates = ", ".join(f"{x:.3f}" for x in v["rate_ratios"])
        cpus = ", ".join(f"{x:.3f}" for x in v["cpu_ratios"])
        lines.append(
            f"| `{variant_name}` | {v['median_urls_per_s']:,.0f} | {rates} (**{v['rate_ratio_median']:.3f}**) "
            f"| {v['median_cpu_us_per_url']:,.0f} | {cpus} (**{v['cpu_ratio_median']:.3f}**) "
            f"| {v['median_switches_per_url']:.1f} | {verdict} |"
        )
    return "\n".join(lines)


def verdicts(summaries: dict[str, dict[str, Any]]) -> dict[str, str]:
    out = {}
    for name, part in PARTS.items():
        where = []
        for scenario, s in summaries.items():
            v = s["variants"][name]
            metrics = [m for m, key in (("URLs/s", "gains_rate"), ("CPU/URL", "gains_cpu")) if v[key]]
            if metrics:
                where.append(f"{scenario} ({', '.join(metrics)})")
        if any(len(s["variants"]["all"]["urls_per_s"]) < 2 for s in summaries.values()):
            out[part] = "no verdict: one round gives no measure of the noise"
        elif where:
            out[part] = f"keep: gains on {', '.join(where)}"
        else:
            out[part] = "remove: no gain beyond the noise"
    return out


# --- scenarios -------------------------------------------------------------------------------------
def _settings(**kwargs: Any) -> FetchSettings:
    return FetchSettings(progress_interval=3600, **kwargs)


def loopback(
    args: argparse.Namespace, redis_url: str, prefix: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    specs = jpegs(args.urls or DEFAULT_URLS["loopback"])
    images_dir = build_imageset(0).root
    with Nginx(images_dir, worker_processes=1) as server:
        urls = [f"{server.base_url}/{spec.path}" for spec in specs]
        settings = _settings(
            concurrency=32, per_host_concurrency=64, allow_hosts=("127.0.0.1",), redis_url=redis_url
        )
        scenario = Scenario("loopback", urls, settings, redis_url, prefix, server_cpu=server.cpu_seconds)
        print(f"loopback: {len(urls)} distinct JPEGs from nginx at {server.base_url}", flush=True)
        warm_page_cache([images_dir / spec.path for spec in specs])
        try:
            runs = run_scenario(scenario, args.rounds, urls[:500])
        finally:
            forget_redis_state(scenario)
    return {"urls": len(urls), "concurrency": 32, "per_host_concurrency": 64}, runs


def web(args: argparse.Namespace, redis_url: str, prefix: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from bench.web import SyntheticWeb

    synthetic = SyntheticWeb(args.urls or DEFAULT_URLS["web"])
    print(synthetic.summary(), flush=True)
    with synthetic:
        settings = _settings(
            concurrency=args.web_threads,
            per_host_concurrency=8,
            allow_hosts=("127.0.0.0/8",),
            ca_bundle=str(synthetic.ca_bundle),
            redis_url=redis_url,
        )
        expected = {url: WEB_EXPECTED_STATUS[outcome] for url, outcome in synthetic.expected.items()}
        scenario = Scenario(
            "web",
            synthetic.urls,
            settings,
            redis_url,
            prefix,
            expected=expected,
            reset=synthetic.reset_stats,
            server_cpu=synthetic.cpu_seconds,
        )
        warm_page_cache([synthetic.imageset.root / spec.path for spec in synthetic.imageset.specs])
        warmup = [url for url in synthetic.urls if url in synthetic.fetchable][:300]
        try:
            runs = run_scenario(scenario, args.rounds, warmup)
        finally:
            forget_redis_state(scenario)
        floor = synthetic.politeness_floor(8)
    setup = {
        "urls": len(synthetic.urls),
        "hosts": len(synthetic.hosts),
        "concurrency": args.web_threads,
        "per_host_concurrency": 8,
        "politeness_floor_s": round(floor, 1),
    }
    return setup, runs


# --- main ------------------------------------------------------------------------------------------
def _git(*command: str) -> str:
    done = subprocess.run(["git", *command], cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument(
        "--urls", type=int, default=None, help="URLs per scenario (default 20000 loopback, 10000 web)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--web-threads", type=int, default=64)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "ablation.json"))
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: servers stop, the store goes

    prefix = f"harvest-ablation-{os.getpid()}"
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_start = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at start: {load_start}", flush=True)
    scenarios: dict[str, Any] = {}
    try:
        for name in args.scenario:
            setup, runs = (loopback if name == "loopback" else web)(args, args.redis_url, prefix)
            summary = summarize(runs)
            scenarios[name] = {"setup": setup, "summary": summary, "runs": runs}
            print("\n" + table(name, summary) + "\n", flush=True)
    finally:
        shutil.rmtree(STORE_ROOT, ignore_errors=True)
    summaries = {name: s["summary"] for name, s in scenarios.items()}
    parts = verdicts(summaries)
    for part, verdict in parts.items():
        print(f"{part}: {verdict}")
    load_end = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at end: {load_end}")

    if not args.no_save:
        path = Path(args.output)
        saved: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(path.read_text()).get("scenarios", {})
        for name, entry in scenarios.items():
            saved[name] = {
                "command": "python -m bench.ablation " + " ".join(sys.argv[1:] if argv is None else argv),
                "commit": _git("rev-parse", "HEAD"),
                "uncommitted_engine_changes": _git("status", "--porcelain", "include/harvest").splitlines(),
                "date": started,
                "load_average_start": load_start,
                "load_average_end": load_end,
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "urllib3": urllib3.__version__,
                },
                "rounds": args.rounds,
                "verdicts": verdicts({name: entry["summary"]}),
                **entry,
            }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"scenarios": saved}, indent=2) + "\n")
        print(f"saved {path}")
    return 0 if all(s["outcomes_equal"] for s in summaries.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
