"""Settings of the download engine, with named defaults.

The DAG builds a :class:`FetchSettings` from its Params and the deployment's environment
(:func:`FetchSettings.from_env`); the library never reads Airflow configuration itself.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_USER_AGENT",
    "FetchSettings",
]

# Site owners read this to know who is fetching: deployments set HARVEST_USER_AGENT with a contact.
DEFAULT_USER_AGENT = "Harvest/0.1 (image harvester; contact: set HARVEST_USER_AGENT)"


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchSettings:
    """How one batch fetches its URLs. Every limit has a sane default."""

    # time
    connect_timeout: float = 5.0  # seconds to open a connection
    read_timeout: float = 10.0  # seconds of silence allowed between two reads
    total_timeout: float = 30.0  # seconds for one attempt, whatever the server does
    batch_deadline: float | None = None  # seconds for the whole batch; URLs left are `skipped`

    # concurrency
    concurrency: int = 32  # threads fetching inside one batch task
    per_host_concurrency: int = 8  # requests in flight to one host, across all workers

    # size and shape
    max_bytes: int = 20 * 1024 * 1024  # body cap, declared or counted
    max_redirects: int = 5
    max_pixels: int = 50_000_000  # larger images are refused as decompression bombs
    accept_any_content: bool = False  # store non-images too (still sniffed and typed)
    allow_svg: bool = False  # SVG can carry scripts: off unless asked

    # retries
    max_attempts: int = 4  # first try included
    # Tries for a URL that timed out (connect, read or total), within max_attempts: a server that
    # stalled twice is left for the next run rather than holding a fetch thread, and its batch, for
    # max_attempts × the read timeout (on the benchmark's web, 43 s per stalled URL with 4 tries).
    timeout_attempts: int = 2
    backoff_base: float = 0.5  # seconds; doubled per attempt, with full jitter
    backoff_max: float = 10.0
    retry_after_cap: float = 60.0  # longest Retry-After honoured; beyond it, give up

    # politeness and safety
    user_agent: str = DEFAULT_USER_AGENT
    respect_robots_tag: bool = True  # X-Robots-Tag noai / noimageai / none => blocked
    # robots.txt (RFC 9309) for our user agent: a URL it disallows is `blocked`. Turn it off only
    # for your own servers.
    respect_robots_txt: bool = True
    robots_cache_ttl: float = 86400.0  # seconds a host's robots.txt is reused (RFC 9309: at most 24 h)
    # Longest Crawl-delay honoured (seconds). A host asking for more has its URLs `blocked` (the error
    # names the delay and this setting) rather than holding a fetch thread for that long per URL.
    max_crawl_delay: float = 30.0
    block_private_addresses: bool = True  # the SSRF guard
    allow_hosts: tuple[str, ...] = ()  # hosts or CIDRs the guard lets through (tests, demo)
    # PEM file of the certificate authorities HTTPS servers are checked against, instead of the
    # system's (a corporate TLS proxy, an internal CA); None = the system's trust store.
    ca_bundle: str | None = None

    # incremental
    conditional_requests: bool = True  # send If-None-Match / If-Modified-Since when known

    # coordination across workers (per-host slots and pauses); None = this process only
    redis_url: str | None = None

    progress_interval: float = 5.0  # seconds between progress lines in the task log

    def replace(self, **changes: Any) -> FetchSettings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> FetchSettings:
        """Settings from ``HARVEST_*`` environment variables, then ``overrides`` (Params).

        An empty variable (``HARVEST_BATCH_DEADLINE=``, as .env files and compose's ``${X:-}``
        write) means the default; a value that cannot be read raises ``ValueError`` naming the
        variable. An override of None (a Param left empty) keeps the environment's value.
        """
        env = os.environ if environ is None else environ
        types = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"HARVEST_{f.name.upper()}")
            if raw is None or not raw.strip():
                continue
            values[f.name] = _parse(f.name, raw, types[f.name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("allow_hosts"), list | str):
            values["allow_hosts"] = _split(values["allow_hosts"])
        return cls(**values)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _split(raw: str | list[str]) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    return tuple(item.strip() for item in items if item.strip())


def _parse(name: str, raw: str, annotation: Any) -> Any:
    """``HARVEST_<NAME>=raw`` (not empty) as the type ``annotation``; ``X | None`` is read as ``X``.

    Also the parser of the deployment switches outside :class:`FetchSettings` (``hooks.py``).
    """
    variable = f"HARVEST_{name.upper()}"
    raw = raw.strip()
    kinds = [t for t in typing.get_args(annotation) if t is not type(None)] or [annotation]
    kind = typing.get_origin(kinds[0]) or kinds[0]
    if kind is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError(f"{variable}={raw!r} is not a boolean (use true or false)")
    if kind is int:
        try:
            return int(raw)
        except ValueError as exc:
            raise ValueError(f"{variable}={raw!r} is not a whole number") from exc
    if kind is float:
        try:
            number = float(raw)
        except ValueError as exc:
            raise ValueError(f"{variable}={raw!r} is not a number (seconds, such as 2.5)") from exc
        if not math.isfinite(number):
            raise ValueError(f"{variable}={raw!r} is not a finite number")
        return number
    if kind is tuple:
        return _split(raw)
    if kind is str:
        return raw
    raise TypeError(f"{variable}: no parser for settings of type {annotation!r}")  # a new field's type
