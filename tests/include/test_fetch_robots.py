"""robots.txt through the real engine: real sockets, a real server that serves its own robots.txt.

The parser and the cache are tested on their own in ``test_robots.py``; here, what a user sees:
which URLs are downloaded, which end ``blocked`` and with what text, how often robots.txt is asked,
how slowly a host with a Crawl-delay is fetched, and that the address guard covers robots.txt too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from include.harvest.fetch import fetch_batch
from include.harvest.models import Status
from include.harvest.settings import FetchSettings
from include.harvest.storage import ContentAddressedStore
from tests.include.conftest import Images


@dataclass
class Site:
    """One origin: its robots.txt answer, and what it was asked, when, and how many at once."""

    port: int = 0
    robots_status: int = 404
    robots_body: bytes = b""
    robots_location: str | None = None
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location
    requests: list[tuple[str, float]] = field(default_factory=list)  # (path, monotonic start)
    in_flight: int = 0
    peak_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def asked(self, path: str) -> int:
        with self.lock:
            return sum(1 for seen, _ in self.requests if seen == path)

    def image_starts(self) -> list[float]:
        with self.lock:
            return [start for path, start in self.requests if path != "/robots.txt"]


def _handler(site: Site, png: bytes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            with site.lock:
                site.requests.append((self.path, time.monotonic()))
                site.in_flight += 1
                site.peak_in_flight = max(site.peak_in_flight, site.in_flight)
            try:
                self._answer()
            finally:
                with site.lock:
                    site.in_flight -= 1

        def _answer(self) -> None:
            if self.path == "/robots.txt" and site.robots_location:
                self._send(302, b"", Location=site.robots_location)
            elif self.path == "/robots.txt":
                self._send(site.robots_status, site.robots_body, content_type="text/plain")
            elif self.path in site.redirects:
                self._send(302, b"", Location=site.redirects[self.path])
            else:
                time.sleep(0.02)  # long enough for requests to overlap if they were allowed to
                self._send(200, png, content_type="image/png")

        def _send(self, status: int, body: bytes, content_type: str = "text/plain", **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def sites(images: Images) -> Iterator[Callable[[], Site]]:
    """A factory of sites, each its own server on 127.0.0.1 (its own port, so its own origin)."""
    servers: list[ThreadingHTTPServer] = []

    def start() -> Site:
        site = Site()
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(site, images.png))
        server.daemon_threads = True
        site.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return site

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


ROBOTS = b"""# a site that speaks to crawlers in general, and to Harvest in particular
User-agent: *
Disallow: /private/

User-agent: Harvest
Disallow: /no-harvest/
Allow: /no-harvest/ok/
"""


def test_robots_txt_blocks_what_it_disallows_for_harvest_and_is_asked_once(
    sites: Callable[[], Site], fast_settings: FetchSettings, store: ContentAddressedStore
) -> None:
    site = sites()
    site.robots_status, site.robots_body = 200, ROBOTS
    disallowed = [site.url(f"/no-harvest/{n}.png") for n in range(5)]
    allowed = [site.url("/no-harvest/ok/a.png"), site.url("/private/b.png"), site.url("/c.png")]

    results = fetch_batch(disallowed + allowed, fast_settings.replace(concurrency=8), store=store)

    by_url = {r.url: r for r in results}
    for url in disallowed:
        assert by_url[url].status is Status.BLOCKED
        assert by_url[url].error is not None
        assert f"robots.txt of http://127.0.0.1:{site.port} disallows /no-harvest/" in by_url[url].error
        assert 'rule "Disallow: /no-harvest/", group "Harvest"' in by_url[url].error
        assert "HARVEST_RESPECT_ROBOTS_TXT=false" in by_url[url].error
        assert site.asked(url.split(str(site.port), 1)[1]) == 0  # never requested
    # Harvest's own group applies, not "*": /private/ is not disallowed for Harvest.
    assert [by_url[url].status for url in allowed] == [Status.OK] * 3
    assert site.asked("/robots.txt") == 1  # eight URLs on eight threads, one robots.txt request


def test_the_check_can_be_turned_off_for_your_own_servers(
    sites: Callable[[], Site], fast_settings: FetchSettings, store: ContentAddressedStore
) -> None:
    site = sites()
    site.robots_status, site.robots_body = 200, ROBOTS
    settings = FetchSettings.from_env(
        {"HARVEST_RESPECT_ROBOTS_TXT": "false"}, allow_hosts=fast_settings.allow_hosts
    )

    [result] = fetch_batch([site.url("/no-harvest/x.png")], settings, store=store)

    assert result.status is Status.OK
    assert site.asked("/robots.txt") == 0


@pytest.mark.parametrize(
    ("status", "expected", "error"),
    [
        (404, Status.OK, None),  # no robots.txt: everything is allowed
        (403, Status.OK, None),  # RFC 9309: any 4xx is "unavailable", not a refusal
        (
            503,
            Status.BLOCKED,
            "answered 503, so RFC 9309 says to assume that everything on the host is disallowed",
        ),
    ],
)
def test_what_the_robots_txt_status_means(
    sites: Callable[[], Site],
    fast_settings: FetchSettings,
    store: ContentAddressedStore,
    status: int,
    expected: Status,
    error: str | None,
) -> None:
    site = sites()
    site.robots_status = status

    results = fetch_batch([site.url("/a.png"), site.url("/b.png")], fast_settings, store=store)

    assert [r.status for r in results] == [expected, expected]
    if error:
        assert all(r.error and error in r.error for r in results), results[0].error
        assert site.image_starts() == []


def test_a_crawl_delay_spaces_the_requests_and_allows_one_at_a_time(
    sites: Callable[[], Site], fast_settings: FetchSettings, store: ContentAddressedStore
) -> None:
    site = sites()
    site.robots_status, site.robots_body = 200, b"User-agent: *\nCrawl-delay: 0.3\n"
    urls = [site.url(f"/slow/{n}.png") for n in range(4)]

    results = fetch_batch(urls, fast_settings.replace(concurrency=4), store=store)

    assert [r.status for r in results] == [Status.OK] * 4
    starts = sorted(site.image_starts())
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    # A lower bound only: a busy machine may make the gaps longer, never shorter.
    assert len(starts) == 4 and min(gaps) >= 0.3 - 0.02, gaps
    assert site.peak_in_flight == 1


def test_a_crawl_delay_over_the_cap_blocks_the_host_with_the_setting_named(
    sites: Callable[[], Site], fast_settings: FetchSettings, store: ContentAddressedStore
) -> None:
    site = sites()
    site.robots_status, site.robots_body = 200, b"User-agent: *\nCrawl-delay: 3600\n"

    [result] = fetch_batch([site.url("/a.png")], fast_settings, store=store)

    assert result.status is Status.BLOCKED
    assert result.error and "wait 3600 s between requests" in result.error
    assert "HARVEST_MAX_CRAWL_DELAY=30 s" in result.error


def test_a_redirect_is_governed_by_the_robots_txt_of_the_host_it_leads_to(
    sites: Callable[[], Site], fast_settings: FetchSettings, store: ContentAddressedStore
) -> None:
    first, second = sites(), sites()
    second.robots_status, second.robots_body = 200, b"User-agent: *\nDisallow: /private/\n"
    first.redirects["/moved.png"] = second.url("/private/x.png")

    [result] = fetch_batch([first.url("/moved.png")], fast_settings, store=store)

    assert result.status is Status.BLOCKED
    assert (
        result.error
        and f"robots.txt of http://127.0.0.1:{second.port} disallows /private/x.png" in result.error
    )
    assert first.asked("/robots.txt") == 1 and second.asked("/robots.txt") == 1
    assert second.asked("/private/x.png") == 0


def test_the_address_guard_covers_robots_txt_too(
    sites: Callable[[], Site], fast_settings: FetchSettings, store: ContentAddressedStore
) -> None:
    """A robots.txt that redirects to a private address is not followed there (the loopback-only
    tripwire of conftest would fail the test if a connection were even tried)."""
    site = sites()
    site.robots_location = "http://intranet.harvest.test/robots.txt"

    [result] = fetch_batch([site.url("/a.png")], fast_settings, store=store)

    assert result.status is Status.BLOCKED
    assert result.error and f"robots.txt of http://127.0.0.1:{site.port} could not be fetched" in result.error
    assert "resolves to 10.0.0.1, which is a private address" in result.error
    assert site.image_starts() == []


def test_a_host_that_does_not_answer_is_a_connection_error_not_a_refusal(
    refused_url: str, fast_settings: FetchSettings, store: ContentAddressedStore
) -> None:
    [result] = fetch_batch([refused_url], fast_settings, store=store)

    assert result.status is Status.CONNECTION_ERROR
    assert result.error and "robots.txt of http://127.0.0.1:" in result.error
    assert "could not connect" in result.error and "the host did not answer" in result.error
