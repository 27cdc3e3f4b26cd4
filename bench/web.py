"""A synthetic "realistic web" on this machine: many hosts, latency, bandwidth limits, TLS and trouble.

One nginx (Debian's, with ``libnginx-mod-http-lua``, installed with apt-get when missing, as
:mod:`bench.nginx` installs nginx) listens once per host on distinct loopback addresses
(``127.0.1.1``, ``127.0.1.2``, ...; no DNS: URLs use IP literals) and serves the images of
:mod:`bench.imageset`. Everything is drawn from ``seed``, so the same arguments give the same web:

- **hosts** (200 by default) hold the URLs with a Zipf skew (``skew=1``: a few big hosts, a long tail);
  URL paths are distinct (``/img/000123.jpg``), many may serve the same image file (``images=``);
- **latency**: each host waits its own time before the first byte of every response (lognormal,
  median 80 ms, clipped to 500 ms); the first request on a new connection waits one more round
  trip (two on HTTPS), the cost of the TCP and TLS handshakes that loopback does not have;
- **bandwidth**: each host has its own per-connection rate (nginx ``limit_rate``; lognormal around
  2 MB/s, within 8x either way);
- **HTTPS** on 80% of the hosts, with one ECDSA certificate whose subjectAltName lists every host
  address, signed by a fresh bench CA: give contenders :attr:`SyntheticWeb.ca_bundle`
  (``ca_certs=`` for urllib3, ``cafile=`` for ``ssl.create_default_context``) or the variables of
  :meth:`SyntheticWeb.client_env` (``SSL_CERT_FILE`` for the stdlib, ``REQUESTS_CA_BUNDLE``...);
- **trouble**, exact shares of the URLs (rounded), each URL at most one kind:

  ============================  ======  ===============================================  ==========
  kind                          share   what the host does                               expected
  ============================  ======  ===============================================  ==========
  ``not_found``                 2%      404                                              ``http_404``
  ``too_many_requests``         1%      429 + ``Retry-After: 1`` the first time, then 200  ``fetched``
  ``unavailable``               1%      503 (no Retry-After) the first time, then 200     ``fetched``
  ``redirect``                  1%      302 to ``/r/<same name>`` on another host (200)   ``fetched``
  ``reset``                     0.5%    closes the connection without a response,         ``reset``
                                        every time (nginx ``444``): never fetchable
  ``stall``                     0.2%    sends nothing for 60 s, then closes, every time:  ``stall``
                                        a client must time out; never fetchable
  ============================  ======  ===============================================  ==========

  :attr:`SyntheticWeb.expected` maps every URL to its expected outcome (what a client that
  follows redirects and retries a 429/503 once, after Retry-After or a second, ends with),
  :attr:`SyntheticWeb.fetchable` is the set of ``fetched`` ones, :attr:`SyntheticWeb.images` the
  image each of them must end as (sha256, size);
- **what each host saw**, counted by the server itself (Lua, in shared memory):
  :meth:`SyntheticWeb.host_stats` gives per host ``requests``, ``peak_concurrency`` (requests in
  flight at once, from the request line to the last byte), ``connections`` (new TCP connections),
  ``sent_429``, ``sent_503``, ``bytes``, ``busy_ms`` (the requests' time from the request line to
  the last byte, summed: ``busy_ms / 1000 / limit`` is how long a client held to ``limit`` requests
  at once must have spent on that host) and ``status_<code>`` counts; :meth:`SyntheticWeb.reset_stats`
  zeroes them and re-arms the first-time 429/503s for the next contender;
- **its own cost**: :meth:`SyntheticWeb.cpu_seconds` (master + worker, from /proc); one worker
  process is enough and keeps it low.

No Python runs on the serving path: per-host settings and the troubled paths are a Lua table
loaded at startup, image bytes are symlinks to the image set served by nginx itself.

    with SyntheticWeb(2000) as web:
        pool = urllib3.PoolManager(ca_certs=str(web.ca_bundle))
        ...                                      # fetch web.urls, compare with web.expected
        print(web.host_stats(), web.cpu_seconds(), web.politeness_floor(8))

    python -m bench.web --urls 2000 --check     # fetch every URL once with urllib3, compare, report
    python -m bench.web --urls 2000 --serve     # start it and wait (prints where the URL list is)
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import ipaddress
import json
import math
import os
import random
import signal
import socket
import statistics
import threading
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.imageset import DEFAULT_SEED as IMAGESET_SEED
from bench.imageset import ImageSet, ImageSpec, build_imageset
from bench.nginx import Nginx, NginxError, ensure_nginx_module
from scripts.ports import free_port

__all__ = [
    "DEFAULT_SEED",
    "DEFAULT_TROUBLE",
    "OUTCOMES",
    "Host",
    "SyntheticWeb",
    "check_web",
]

DEFAULT_SEED = 20260301
DEFAULT_HOSTS = 200
FIRST_ADDRESS = "127.0.1.1"
# Shares of the URLs that misbehave, by kind; the rest are plain 200s.
DEFAULT_TROUBLE: dict[str, float] = {
    "not_found": 0.02,
    "too_many_requests": 0.01,
    "unavailable": 0.01,
    "redirect": 0.01,
    "reset": 0.005,
    "stall": 0.002,
}
# What a well-behaved client ends with, per kind of trouble (None: no trouble).
OUTCOMES: dict[str | None, str] = {
    None: "fetched",
    "not_found": "http_404",
    "too_many_requests": "fetched",
    "unavailable": "fetched",
    "redirect": "fetched",
    "reset": "reset",
    "stall": "stall",
}
# How the Lua side names each kind (a short code in the table it loads).
_LUA_KIND = {"too_many_requests": "429", "unavailable": "503", "reset": "reset", "stall": "stall"}
LUA_MODULE = ("ngx_http_lua_module", "libnginx-mod-http-lua")
NDK_MODULE = ("ndk_http_module", "libnginx-mod-http-ndk")  # the lua module's own dependency
MIN_LATENCY_S = 0.005
BANDWIDTH_SIGMA = 0.7  # lognormal sigma of the per-host rate: most hosts within 2x of the median
BANDWIDTH_SPREAD = 8  # and none further than 8x
WORKER_CONNECTIONS = 10_000
# nginx checks its timers every 10 ms instead of waking for each: measured on the 2-core box at
# 4,000 URLs, 374 instead of 454 us of server CPU per request. A sleep then ends on the first tick
# after it is due (0-10 ms late), so the Lua table holds each latency minus half a tick.
TIMER_RESOLUTION_MS = 10

# --- the Lua that runs inside nginx -------------------------------------------------------------
# Stats keys are "<field>|<host address>" in the shared dict web_stats; web_inflight holds the
# requests in flight per host (never reset: it is a live count), web_seen the first-time troubles.
_ACCESS_LUA = """\
-- access phase of every host: count, wait the host's latency, then misbehave if this path should.
local web = require "harvestweb"
local addr = ngx.var.server_addr
local host = web.hosts[addr]
if host == nil then return ngx.exit(421) end
local stats = ngx.shared.web_stats
local n = ngx.shared.web_inflight:incr(addr, 1, 0)
ngx.ctx.host = addr
stats:incr("requests|" .. addr, 1, 0)
local peak = "peak_concurrency|" .. addr
if n > (stats:get(peak) or 0) then stats:set(peak, n) end
local delay = host[1]
if ngx.var.connection_requests == "1" then
  stats:incr("connections|" .. addr, 1, 0)
  delay = delay + host[2]
end
ngx.on_abort(function() ngx.exit(499) end)
if delay > 0 then ngx.sleep(delay) end
if web.limit > 0 and n > web.limit then
  stats:incr("sent_429|" .. addr, 1, 0)
  stats:incr("over_limit|" .. addr, 1, 0)
  ngx.header["Retry-After"] = web.retry_after
  return ngx.exit(429)
end
local uri = ngx.var.uri
local kind = web.trouble[uri]
if kind == nil then return end
if kind == "429" then
  if ngx.shared.web_seen:add(uri, true) then
    stats:incr("sent_429|" .. addr, 1, 0)
    ngx.header["Retry-After"] = web.retry_after
    return ngx.exit(429)
  end
elseif kind == "503" then
  if ngx.shared.web_seen:add(uri, true) then
    stats:incr("sent_503|" .. addr, 1, 0)
    return ngx.exit(503)
  end
elseif kind == "reset" then
  stats:incr("resets|" .. addr, 1, 0)
  return ngx.exit(444)
elseif kind == "stall" then
  stats:incr("stalls|" .. addr, 1, 0)
  ngx.sleep(web.stall)
  return ngx.exit(444)
else
  stats:incr("redirects|" .. addr, 1, 0)
  return ngx.redirect(kind, 302)
end
"""
_LOG_LUA = """\
-- log phase (after the last byte, or the abort): the request is no longer in flight.
local addr = ngx.ctx.host
if addr == nil then return end
ngx.shared.web_inflight:incr(addr, -1, 0)
local stats = ngx.shared.web_stats
stats:incr("status_" .. ngx.status .. "|" .. addr, 1, 0)
local sent = tonumber(ngx.var.body_bytes_sent) or 0
if sent > 0 then stats:incr("bytes|" .. addr, sent, 0) end
-- slot time: from the request line to the last byte (or the abort), summed per host, in ms
ngx.update_time()
local busy = math.floor((ngx.now() - ngx.req.start_time()) * 1000 + 0.5)
if busy > 0 then stats:incr("busy_ms|" .. addr, busy, 0) end
"""
_STATS_LUA = """\
local out = {}
for _, key in ipairs(ngx.shared.web_stats:get_keys(0)) do
  local value = ngx.shared.web_stats:get(key)
  if value ~= nil then out[#out + 1] = key .. "\\t" .. value end
end
for _, addr in ipairs(ngx.shared.web_inflight:get_keys(0)) do
  out[#out + 1] = "in_flight|" .. addr .. "\\t" .. (ngx.shared.web_inflight:get(addr) or 0)
end
out[#out + 1] = ""
ngx.header["Content-Type"] = "text/plain"
ngx.print(table.concat(out, "\\n"))
"""
_RESET_LUA = """\
local stats, inflight = ngx.shared.web_stats, ngx.shared.web_inflight
stats:flush_all()
stats:flush_expired()
ngx.shared.web_seen:flush_all()
ngx.shared.web_seen:flush_expired()
-- requests still in flight (a stall a client gave up on and nginx has not noticed yet) stay counted
for _, addr in ipairs(inflight:get_keys(0)) do
  local n = inflight:get(addr) or 0
  if n > 0 then stats:set("peak_concurrency|" .. addr, n) end
end
ngx.print("reset\\n")
"""


@dataclass(frozen=True)
class Host:
    """One simulated host: where it listens and how it behaves."""

    address: str
    scheme: str  # "https" or "http"
    port: int
    latency: float  # seconds before the first byte of every response
    connect_delay: float  # seconds more on the first request of a new connection (handshakes)
    bandwidth: int | None  # bytes/s per connection (None: unlimited)

    @property
    def origin(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return f"{self.scheme}://{self.address}" + ("" if self.port == default else f":{self.port}")


def _addresses(first: str, count: int) -> list[str]:
    """``count`` loopback addresses from ``first`` on, skipping the .0 and .255 of each /24."""
    address = ipaddress.IPv4Address(first)
    found: list[str] = []
    while len(found) < count:
        if not address.is_loopback:
            raise ValueError(f"{count} hosts from {first} leave 127.0.0.0/8")
        if address.packed[3] not in (0, 255):
            found.append(str(address))
        address += 1
    return found


def _bindable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx does: TIME_WAIT is no obstacle
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def _choose_ports(addresses: list[str], port: int | None) -> tuple[int, int]:
    """(HTTP port, HTTPS port): the standard ones when we may bind them, else one free port for all."""
    if port is not None:
        return port, port
    if os.geteuid() == 0 and all(_bindable(a, 80) and _bindable(a, 443) for a in addresses):
        return 80, 443
    for _ in range(20):
        candidate = free_port()
        if all(_bindable(a, candidate) for a in addresses):
            return candidate, candidate
    raise NginxError("no port is free on every host address")


def _spread(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder), at least 1 each if possible."""
    floor = 1 if total >= len(weights) else 0
    rest = total - floor * len(weights)
    scale = rest / sum(weights)
    raw = [w * scale for w in weights]
    counts = [floor + int(r) for r in raw]
    by_remainder = sorted(range(len(weights)), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _lua_string(value: str) -> str:
    return json.dumps(value)  # ASCII paths and URLs: a JSON string is a Lua string


def _write_certificates(folder: Path, addresses: list[str]) -> tuple[Path, Path, Path]:
    """A fresh CA and one ECDSA server certificate for every address: (ca.pem, server.pem, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    valid = {"not_valid_before": now - timedelta(hours=1), "not_valid_after": now + timedelta(days=30)}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Harvest bench CA")])
    usage = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"])
        .not_valid_after(valid["not_valid_after"])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(**{**usage, "digital_signature": True, "key_cert_sign": True, "crl_sign": True}),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "harvest bench web")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"])
        .not_valid_after(valid["not_valid_after"])
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address(a)) for a in addresses]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**{**usage, "digital_signature": True}), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


class _WebServer(Nginx):
    """The nginx of a :class:`SyntheticWeb`; its own ``base_url`` is the status server."""

    # Stalled requests hang on purpose for a minute: stop at once instead of letting them finish.
    stop_signal = signal.SIGTERM

    def __init__(self, web: SyntheticWeb, *, worker_processes: int):
        super().__init__(web.imageset.root, worker_processes=worker_processes)
        self.web = web

    def prepare(self, prefix: Path) -> None:
        self.web._write_files(prefix)

    def config(self, prefix: Path) -> str:
        return self.web._config(prefix, status_port=self.port, worker_processes=self.worker_processes)


class SyntheticWeb:
    """A seeded web of ``hosts`` loopback hosts serving ``urls`` URLs, some of them in trouble."""

    def __init__(
        self,
        urls: int,
        *,
        hosts: int = DEFAULT_HOSTS,
        https_share: float = 0.8,
        seed: int = DEFAULT_SEED,
        skew: float = 1.0,
        latency_median_ms: float = 80,
        latency_max_ms: float = 500,
        latency_sigma: float = 0.8,
        connect_cost: bool = True,
        bandwidth: int | None = 2_000_000,
        trouble: Mapping[str, float] | None = None,
        retry_after: int = 1,
        stall_seconds: float = 60,
        host_limit: int | None = None,
        images: int | None = None,
        image_seed: int = IMAGESET_SEED,
        first_address: str = FIRST_ADDRESS,
        port: int | None = None,
        worker_processes: int = 1,
        log: bool = True,
    ):
        """Draw the web (hosts, URLs, trouble) and build the image set; :meth:`start` serves it.

        ``bandwidth`` is the median per-connection rate in bytes/s; ``host_limit``, if set, makes
        every host answer 429 (``Retry-After``) to requests beyond that many in flight at once;
        ``images`` distinct image files back the URLs (default: one per URL); ``port`` None means
        80/443 when root may bind them, else one free port for every host.
        """
        if urls < 1 or hosts < 1:
            raise ValueError("a web needs at least one URL and one host")
        shares = dict(DEFAULT_TROUBLE if trouble is None else trouble)
        unknown = set(shares) - set(DEFAULT_TROUBLE)
        if unknown:
            raise ValueError(f"unknown kinds of trouble {sorted(unknown)}; known: {sorted(DEFAULT_TROUBLE)}")
        if sum(shares.values()) > 1:
            raise ValueError("the shares of trouble add up to more than 1")
        self.seed = seed
        self.retry_after = retry_after
        self.stall_seconds = stall_seconds
        self.host_limit = host_limit
        self.worker_processes = worker_processes
        rng = random.Random(f"harvest-web:{seed}")

        # Hosts: addresses, schemes, latency, bandwidth.
        addresses = _addresses(first_address, hosts)
        http_port, https_port = _choose_ports(addresses, port)
        secure = set(rng.sample(range(hosts), round(hosts * https_share)))
        self.hosts: list[Host] = []
        for i, address in enumerate(addresses):
            latency = rng.lognormvariate(math.log(latency_median_ms / 1000), latency_sigma)
            latency = min(max(latency, MIN_LATENCY_S), latency_max_ms / 1000)
            rate: int | None = None
            if bandwidth is not None:
                drawn = rng.lognormvariate(math.log(bandwidth), BANDWIDTH_SIGMA)
                rate = round(min(max(drawn, bandwidth / BANDWIDTH_SPREAD), bandwidth * BANDWIDTH_SPREAD))
            https = i in secure
            connect_delay = latency * (2 if https else 1) if connect_cost else 0.0
            self.hosts.append(
                Host(
                    address=address,
                    scheme="https" if https else "http",
                    port=https_port if https else http_port,
                    latency=round(latency, 4),
                    connect_delay=round(connect_delay, 4),
                    bandwidth=rate,
                )
            )
        self._host_by_address = {h.address: h for h in self.hosts}

        # URLs per host: Zipf weights over a random ranking of the hosts, in a shuffled list.
        ranks = list(range(1, hosts + 1))
        rng.shuffle(ranks)
        counts = _spread(urls, [1 / r**skew for r in ranks])
        owners = [i for i, n in enumerate(counts) for _ in range(n)]
        rng.shuffle(owners)

        self.imageset: ImageSet = build_imageset(images or urls, seed=image_seed, log=log)
        specs = self.imageset.specs
        width = max(6, len(str(urls - 1)))
        self.urls: list[str] = []
        self.images: dict[str, ImageSpec] = {}  # fetchable URL -> the image it must end as
        self._files: list[tuple[str, str, ImageSpec]] = []  # (host address, path, image) served
        paths: list[str] = []
        for k, owner in enumerate(owners):
            spec = specs[k % len(specs)]
            name = f"{k:0{width}d}{Path(spec.path).suffix}"
            paths.append(f"/img/{name}")
            self.urls.append(f"{self.hosts[owner].origin}/img/{name}")

        # Trouble: exact counts, distinct URLs, in a fixed order of kinds.
        wanted = {kind: round(share * urls) for kind, share in shares.items() if share > 0}
        chosen = rng.sample(range(urls), sum(wanted.values()))
        self.trouble: dict[str, str] = {}  # URL -> kind, for the URLs in trouble
        self.redirects: dict[str, str] = {}  # URL -> where it redirects
        self._lua_trouble: dict[str, str] = {}  # path -> Lua code (or redirect target)
        start = 0
        kind_of: dict[int, str] = {}
        for kind in DEFAULT_TROUBLE:
            for k in chosen[start : start + wanted.get(kind, 0)]:
                kind_of[k] = kind
            start += wanted.get(kind, 0)
        for k, url in enumerate(self.urls):
            what = kind_of.get(k)
            home = self.hosts[owners[k]]
            spec = specs[k % len(specs)]
            path = paths[k]
            if what is not None:
                self.trouble[url] = what
            if what == "redirect":
                others = [i for i in range(hosts) if i != owners[k]] or [owners[k]]
                target = self.hosts[rng.choice(others)]
                target_path = "/r/" + path.rsplit("/", 1)[1]
                self.redirects[url] = f"{target.origin}{target_path}"
                self._lua_trouble[path] = self.redirects[url]
                self._files.append((target.address, target_path, spec))
            elif what in _LUA_KIND:
                self._lua_trouble[path] = _LUA_KIND[what]
            if what not in ("not_found", "reset", "stall", "redirect"):
                self._files.append((home.address, path, spec))
            if OUTCOMES[what] == "fetched":
                self.images[url] = spec
        self.expected: dict[str, str] = {url: OUTCOMES[self.trouble.get(url)] for url in self.urls}
        self.fetchable: set[str] = {url for url, outcome in self.expected.items() if outcome == "fetched"}
        self._server: _WebServer | None = None

    # --- plan ------------------------------------------------------------------------------------
    def host_of(self, url: str) -> Host:
        """The host a URL (or a redirect target) is on."""
        return self._host_by_address[url.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0]]

    def requests_needed(self) -> Counter[str]:
        """Per host address, the requests a client that retries 429/503 once must make."""
        needed: Counter[str] = Counter()
        for url in self.urls:
            needed[self.host_of(url).address] += 1
            kind = self.trouble.get(url)
            if kind in ("too_many_requests", "unavailable"):
                needed[self.host_of(url).address] += 1
            elif kind == "redirect":
                needed[self.host_of(self.redirects[url]).address] += 1
        return needed

    def politeness_floor(self, per_host_limit: int) -> float:
        """Seconds no polite client can beat: max over hosts of requests x latency / per-host limit.

        Requests are those of :meth:`requests_needed`; connection setup, transfer time and
        Retry-After waits are left out, so the real floor is higher.
        """
        needed = self.requests_needed()
        return max(needed[h.address] * h.latency / per_host_limit for h in self.hosts)

    def slot_seconds_needed(self) -> dict[str, float]:
        """Per host address, the seconds of server time the requests of :meth:`requests_needed` take
        at the least: each request's latency, plus the body at the host's rate for the ones answered
        200. New connections' handshake delays are left out (how many a client opens is its choice),
        and so is a stall's time (how long a client waits on one is its choice too)."""
        busy: dict[str, float] = dict.fromkeys((h.address for h in self.hosts), 0.0)
        for url in self.urls:
            home = self.host_of(url)
            kind = self.trouble.get(url)
            busy[home.address] += home.latency
            spec = self.images.get(url)
            if kind in ("too_many_requests", "unavailable"):
                busy[home.address] += home.latency  # the retry
            served = self.host_of(self.redirects[url]) if kind == "redirect" else home
            if kind == "redirect":
                busy[served.address] += served.latency
            if spec is not None and served.bandwidth:
                busy[served.address] += spec.size / served.bandwidth
        return dict(busy)

    def transfer_floor(self, per_host_limit: int) -> tuple[float, str]:
        """(seconds, host address): :meth:`politeness_floor` with the bodies' transfer time at each
        host's rate and the handshakes of ``per_host_limit`` connections added. Still a floor: a
        client's own time between two requests on a slot and any Retry-After wait are left out."""
        busy = self.slot_seconds_needed()
        best = (0.0, "")
        for h in self.hosts:
            seconds = (busy.get(h.address, 0.0) + per_host_limit * h.connect_delay) / per_host_limit
            best = max(best, (seconds, h.address))
        return best

    def summary(self) -> str:
        per_host = Counter(self.host_of(u).address for u in self.urls)
        top = per_host.most_common(10)
        latencies = sorted(h.latency * 1000 for h in self.hosts)
        rates = sorted(h.bandwidth for h in self.hosts if h.bandwidth)
        kinds = Counter(self.trouble.values())
        return "\n".join(
            [
                f"{len(self.urls)} URLs on {len(self.hosts)} hosts "
                f"({sum(h.scheme == 'https' for h in self.hosts)} HTTPS), seed {self.seed}; "
                f"{len(self.imageset)} images ({self.imageset.total_bytes / 1e6:.0f} MB)",
                f"  biggest host {top[0][1]} URLs ({top[0][1] / len(self.urls):.0%}), top 10 "
                f"{sum(n for _, n in top) / len(self.urls):.0%}, smallest {min(per_host.values())}",
                f"  latency ms: median {statistics.median(latencies):.0f}, "
                f"p90 {latencies[int(0.9 * (len(latencies) - 1))]:.0f}, max {latencies[-1]:.0f}",
                (
                    f"  bandwidth per connection: median {statistics.median(rates) / 1e6:.1f} MB/s, "
                    f"min {rates[0] / 1e6:.2f}, max {rates[-1] / 1e6:.1f}"
                    if rates
                    else "  bandwidth: unlimited"
                ),
                "  trouble: " + ", ".join(f"{k} {kinds.get(k, 0)}" for k in DEFAULT_TROUBLE),
                f"  expected: {dict(Counter(self.expected.values()))}",
            ]
        )

    # --- files and config ------------------------------------------------------------------------
    def _write_files(self, prefix: Path) -> None:
        www = prefix / "www"
        for host in self.hosts:
            for folder in ("img", "r"):
                (www / host.address / folder).mkdir(parents=True, exist_ok=True)
        root = self.imageset.root
        for address, path, spec in self._files:
            os.symlink(root / spec.path, www / address / path.lstrip("/"))
        _write_certificates(prefix / "tls", [h.address for h in self.hosts])
        lua = prefix / "lua"
        lua.mkdir()
        tick = TIMER_RESOLUTION_MS / 2000  # half a tick, in seconds: the mean lateness of a sleep
        host_rows = "\n".join(
            f"    [{_lua_string(h.address)}] = {{{max(0.0, round(h.latency - tick, 4))}, {h.connect_delay}}},"
            for h in self.hosts
        )
        trouble_rows = "\n".join(
            f"    [{_lua_string(path)}] = {_lua_string(code)}," for path, code in self._lua_trouble.items()
        )
        (lua / "harvestweb.lua").write_text(
            "-- Generated by bench/web.py: per-host {latency, extra delay on a new connection} in seconds,\n"
            "-- and the paths in trouble (429, 503, reset, stall, or the URL a path redirects to).\n"
            "return {\n"
            f"  hosts = {{\n{host_rows}\n  }},\n"
            f"  trouble = {{\n{trouble_rows}\n  }},\n"
            f"  retry_after = {_lua_string(str(self.retry_after))},\n"
            f"  stall = {self.stall_seconds},\n"
            f"  limit = {self.host_limit or 0},\n"
            "}\n"
        )
        for name, code in (
            ("access", _ACCESS_LUA),
            ("log", _LOG_LUA),
            ("stats", _STATS_LUA),
            ("reset", _RESET_LUA),
        ):
            (lua / f"{name}.lua").write_text(code)
        (prefix / "urls.txt").write_text("".join(u + "\n" for u in self.urls))

    def _config(self, prefix: Path, *, status_port: int, worker_processes: int) -> str:
        ndk = ensure_nginx_module(*NDK_MODULE)
        lua_module = ensure_nginx_module(*LUA_MODULE)
        user = "user root;" if os.geteuid() == 0 else ""  # root: any image folder is readable
        temp = "\n".join(
            f"    {name}_temp_path {prefix / 'tmp' / name};" for name in ("client_body", "proxy", "fastcgi")
        )
        lua, tls = prefix / "lua", prefix / "tls"
        seen_mb = max(4, len(self._lua_trouble) // 20_000 + 4)
        servers = []
        for h in self.hosts:
            ssl = " ssl" if h.scheme == "https" else ""
            rate = f"\n        limit_rate {h.bandwidth};" if h.bandwidth else ""
            servers.append(
                f"""    server {{
        listen {h.address}:{h.port}{ssl} backlog=4096;
        root {prefix / "www" / h.address};{rate}
        access_by_lua_file {lua / "access.lua"};
        location / {{ }}
    }}"""
            )
        return f"""# Generated by bench/web.py: the synthetic web, one server per host.
load_module {ndk};
load_module {lua_module};
{user}
worker_processes {worker_processes};
timer_resolution {TIMER_RESOLUTION_MS}ms;
worker_rlimit_nofile {2 * WORKER_CONNECTIONS};
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{
    worker_connections {WORKER_CONNECTIONS};
}}
http {{
    access_log off;
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000;
    # limit_rate lets a response go out in one write when the socket takes it (all of an image, on
    # loopback) and only waits between writes: 16 KB writes make the per-connection rate hold.
    sendfile_max_chunk 16k;
    types {{
        image/jpeg jpg jpeg;
        image/png png;
        text/plain txt;
    }}
    default_type application/octet-stream;
{temp}
    lua_package_path "{lua}/?.lua;;";
    lua_shared_dict web_stats 8m;
    lua_shared_dict web_inflight 1m;
    lua_shared_dict web_seen {seen_mb}m;
    lua_check_client_abort on;
    lua_socket_log_errors off;
    init_by_lua_block {{ require "harvestweb" }}
    log_by_lua_file {lua / "log.lua"};
    ssl_certificate {tls / "server.pem"};
    ssl_certificate_key {tls / "server.key"};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:web_tls:10m;
    ssl_session_timeout 1h;
    server {{
        listen 127.0.0.1:{status_port};
        location = /stats {{ content_by_lua_file {lua / "stats.lua"}; }}
        location = /reset {{ content_by_lua_file {lua / "reset.lua"}; }}
        location / {{ return 200 "harvest synthetic web: /stats, /reset\\n"; }}
    }}
{chr(10).join(servers)}
}}
"""

    # --- running ---------------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> SyntheticWeb:
        if self._server is None:
            server = _WebServer(self, worker_processes=self.worker_processes)
            server.start(timeout)
            self._server = server
        return self

    def stop(self) -> None:
        """Stop nginx by its pid (SIGTERM: stalled requests are dropped) and remove its folder."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> SyntheticWeb:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _running(self) -> _WebServer:
        if self._server is None or self._server.prefix is None:
            raise RuntimeError("the synthetic web is not running: call start() first")
        return self._server

    @property
    def pid(self) -> int | None:
        return self._server.pid if self._server else None

    @property
    def ca_bundle(self) -> Path:
        """PEM file of the bench CA (exists while the web runs)."""
        prefix = self._running().prefix
        assert prefix is not None
        return prefix / "tls" / "ca.pem"

    @property
    def urls_file(self) -> Path:
        """The URL list, one a line (exists while the web runs)."""
        prefix = self._running().prefix
        assert prefix is not None
        return prefix / "urls.txt"

    @property
    def status_url(self) -> str:
        return self._running().base_url

    def client_env(self) -> dict[str, str]:
        """Environment variables that make common HTTP clients trust the bench CA (and only it)."""
        bundle = str(self.ca_bundle)
        return {"SSL_CERT_FILE": bundle, "REQUESTS_CA_BUNDLE": bundle, "CURL_CA_BUNDLE": bundle}

    def _status(self, path: str, method: str = "GET") -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(f"{self.status_url}{path}", method=method)
        with opener.open(request, timeout=10) as response:
            return str(response.read().decode())

    def host_stats(self) -> dict[str, dict[str, int]]:
        """Per host address, what it saw since start or :meth:`reset_stats` (only hosts asked).

        Fields: ``requests``, ``peak_concurrency``, ``in_flight``, ``connections``, ``sent_429``,
        ``sent_503``, ``over_limit``, ``redirects``, ``resets``, ``stalls``, ``bytes``, ``busy_ms``,
        ``status_<code>``.
        """
        stats: dict[str, dict[str, int]] = {}
        for line in self._status("/stats").splitlines():
            key, _, value = line.partition("\t")
            field, _, address = key.partition("|")
            if not address:
                continue
            stats.setdefault(address, {})[field] = int(float(value))
        for host in stats.values():
            for field in (
                "requests",
                "peak_concurrency",
                "in_flight",
                "connections",
                "sent_429",
                "sent_503",
                "busy_ms",
            ):
                host.setdefault(field, 0)
        return {a: s for a, s in stats.items() if s["requests"] or s["in_flight"]}

    def totals(self) -> dict[str, int]:
        """Sums over hosts of :meth:`host_stats`, and the largest ``peak_concurrency``."""
        total: Counter[str] = Counter()
        peak = 0
        for host in self.host_stats().values():
            peak = max(peak, host["peak_concurrency"])
            total.update({k: v for k, v in host.items() if k not in ("peak_concurrency",)})
        return {**dict(total), "peak_concurrency": peak}

    def reset_stats(self) -> None:
        """Zero the counters and re-arm the first-time 429s and 503s (call it between contenders)."""
        self._status("/reset", method="POST")

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) used by nginx, master and worker, since it started."""
        return self._running().cpu_seconds()


# --- the self-check: one polite urllib3 client ---------------------------------------------------
def check_web(
    web: SyntheticWeb,
    *,
    threads: int = 64,
    per_host: int = 8,
    connect_timeout: float = 5,
    read_timeout: float = 5,
    log: bool = True,
) -> dict[str, Any]:
    """GET every URL once with urllib3 (trusting the bench CA), at most ``per_host`` in flight per
    host, following redirects and retrying a 429/503 once; compare the outcomes with ``expected``."""
    import urllib3

    pool = urllib3.PoolManager(
        num_pools=len(web.hosts) + 8,
        maxsize=per_host,
        ca_certs=str(web.ca_bundle),
        cert_reqs="CERT_REQUIRED",
        retries=False,
    )
    timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
    # A tiny polite scheduler: per-host queues, a host is "ready" while it has work and free slots.
    lock = threading.Condition()
    pending: dict[str, deque[tuple[str, str, int, int]]] = {h.address: deque() for h in web.hosts}
    in_flight: Counter[str] = Counter()
    ready: deque[str] = deque()
    queued: set[str] = set()
    delayed: list[tuple[float, int, tuple[str, str, int, int]]] = []
    outcome: dict[str, str] = {}
    remaining = len(web.urls)
    tie = 0

    def make_ready(address: str) -> None:
        if address not in queued and pending[address] and in_flight[address] < per_host:
            queued.add(address)
            ready.append(address)
            lock.notify()

    def push(job: tuple[str, str, int, int]) -> None:  # (original URL, URL to get, attempt, hops)
        address = web.host_of(job[1]).address
        pending[address].append(job)
        make_ready(address)

    with lock:
        for url in web.urls:
            pending[web.host_of(url).address].append((url, url, 0, 0))
        for host in web.hosts:
            make_ready(host.address)

    def take() -> tuple[str, tuple[str, str, int, int]] | None:
        with lock:
            while True:
                if remaining == 0:
                    return None
                now = time.monotonic()
                while delayed and delayed[0][0] <= now:
                    push(heapq.heappop(delayed)[2])
                if ready:
                    address = ready.popleft()
                    queued.discard(address)
                    job = pending[address].popleft()
                    in_flight[address] += 1
                    make_ready(address)
                    return address, job
                lock.wait(timeout=max(0.01, delayed[0][0] - now) if delayed else 0.5)

    def finish(address: str, original: str, result: str | None, retry: tuple[float, tuple] | None) -> None:
        nonlocal remaining, tie
        with lock:
            in_flight[address] -= 1
            if result is not None:
                outcome[original] = result
                remaining -= 1
                if remaining == 0:
                    lock.notify_all()
            elif retry is not None:
                tie += 1
                heapq.heappush(delayed, (retry[0], tie, retry[1]))
                lock.notify()
            make_ready(address)

    def get(job: tuple[str, str, int, int]) -> tuple[str | None, tuple[float, tuple] | None]:
        original, url, attempt, hops = job
        try:
            response = pool.request("GET", url, timeout=timeout, redirect=False)
        except urllib3.exceptions.ReadTimeoutError:
            return "stall", None
        except urllib3.exceptions.ProtocolError:
            return "reset", None
        except urllib3.exceptions.HTTPError as exc:
            return type(exc).__name__, None
        status = response.status
        if status == 200:
            spec = web.images.get(original)
            good = spec is not None and hashlib.sha256(response.data).hexdigest() == spec.sha256
            return ("fetched" if good else "wrong_bytes"), None
        if status in (301, 302, 303, 307, 308) and response.headers.get("Location") and hops < 3:
            target = response.headers["Location"]
            with lock:
                push((original, target, attempt, hops + 1))  # a new job on the target host
            return None, None
        if status in (429, 503) and attempt == 0:
            wait = float(response.headers.get("Retry-After") or 1)
            return None, (time.monotonic() + wait, (original, url, attempt + 1, hops))
        return f"http_{status}", None

    def worker() -> None:
        while (taken := take()) is not None:
            address, job = taken
            result, retry = get(job)
            finish(address, job[0], result, retry)

    server_cpu0, client_cpu0 = web.cpu_seconds(), time.process_time()
    started = time.perf_counter()
    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    seconds = time.perf_counter() - started
    server_cpu, client_cpu = web.cpu_seconds() - server_cpu0, time.process_time() - client_cpu0
    pool.clear()

    stats = web.host_stats()
    peaks = sorted(((s["peak_concurrency"], a) for a, s in stats.items()), reverse=True)
    mismatches = {u: (outcome.get(u), e) for u, e in web.expected.items() if outcome.get(u) != e}
    totals = Counter[str]()
    for s in stats.values():
        totals.update(s)
    return {
        "urls": len(web.urls),
        "seconds": round(seconds, 2),
        "urls_per_s": round(len(web.urls) / seconds, 1),
        "threads": threads,
        "per_host": per_host,
        "got": dict(Counter(outcome.values())),
        "expected": dict(Counter(web.expected.values())),
        "mismatches": len(mismatches),
        "mismatch_examples": dict(list(mismatches.items())[:10]),
        "server_cpu_s": round(server_cpu, 2),
        "client_cpu_s": round(client_cpu, 2),
        "server_cpu_share": round(server_cpu / (server_cpu + client_cpu), 3)
        if server_cpu + client_cpu
        else 0,
        "server_requests": totals["requests"],
        "server_connections": totals["connections"],
        "sent_429": totals["sent_429"],
        "sent_503": totals["sent_503"],
        "peak_per_host": peaks[0][0] if peaks else 0,
        "peak_host": peaks[0][1] if peaks else None,
        "politeness_floor_s": round(web.politeness_floor(per_host), 2),
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--urls", type=int, default=2000)
    parser.add_argument("--hosts", type=int, default=DEFAULT_HOSTS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--https-share", type=float, default=0.8)
    parser.add_argument("--bandwidth", type=int, default=2_000_000, help="median bytes/s per connection")
    parser.add_argument("--latency-median-ms", type=float, default=80)
    parser.add_argument("--check", action="store_true", help="fetch every URL once and compare")
    parser.add_argument("--serve", action="store_true", help="start it and wait for Ctrl-C")
    parser.add_argument("--threads", type=int, default=64, help="--check: client threads")
    parser.add_argument("--per-host", type=int, default=8, help="--check: requests in flight per host")
    parser.add_argument("--read-timeout", type=float, default=5, help="--check: seconds")
    args = parser.parse_args(argv)
    web = SyntheticWeb(
        args.urls,
        hosts=args.hosts,
        seed=args.seed,
        https_share=args.https_share,
        bandwidth=args.bandwidth or None,
        latency_median_ms=args.latency_median_ms,
    )
    print(web.summary(), flush=True)
    if not (args.check or args.serve):
        return 0
    with web:
        print(f"serving (nginx pid {web.pid}); CA {web.ca_bundle}; URLs {web.urls_file}", flush=True)
        if args.serve:
            print(f"status: {web.status_url}/stats; Ctrl-C stops it", flush=True)
            signal.signal(signal.SIGTERM, _interrupt)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                return 0
        result = check_web(web, threads=args.threads, per_host=args.per_host, read_timeout=args.read_timeout)
    print(
        f"check: {result['urls']} URLs in {result['seconds']}s ({result['urls_per_s']} URLs/s), "
        f"{result['threads']} threads, at most {result['per_host']} per host"
    )
    print(f"  got      {dict(sorted(result['got'].items()))}")
    print(f"  expected {dict(sorted(result['expected'].items()))}")
    print(f"  mismatches: {result['mismatches']} {result['mismatch_examples'] or ''}")
    print(
        f"  CPU: server {result['server_cpu_s']}s, client {result['client_cpu_s']}s "
        f"(server share {result['server_cpu_share']:.1%})"
    )
    print(
        f"  server saw {result['server_requests']} requests on {result['server_connections']} new "
        f"connections, sent {result['sent_429']} 429s and {result['sent_503']} 503s; peak per host "
        f"{result['peak_per_host']} (on {result['peak_host']})"
    )
    print(f"  politeness floor at {result['per_host']} per host: {result['politeness_floor_s']}s")
    ok = result["mismatches"] == 0 and result["peak_per_host"] <= args.per_host
    print("check passed" if ok else "check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
