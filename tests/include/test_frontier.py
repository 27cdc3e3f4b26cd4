"""Which URL a fetch thread takes next (:mod:`include.harvest.frontier`), on its own and in a batch
over real sockets: no thread waits for a busy host's slot while another host's URLs wait."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import pytest

from include.harvest.fetch import fetch_batch
from include.harvest.frontier import Frontier, host_key
from include.harvest.hostlimits import Lease, LocalHostLimits
from include.harvest.models import Status, UrlItem
from include.harvest.settings import FetchSettings
from include.harvest.storage import ContentAddressedStore

if TYPE_CHECKING:
    from tests.include.conftest import Images


def items(host: str, count: int) -> list[UrlItem]:
    return [UrlItem(f"https://{host}/img/{n}.jpg") for n in range(count)]


def hosts_of(taken: list[UrlItem | None]) -> list[str]:
    return [host_key(item.url) if item else "-" for item in taken]


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://Images.Example.COM/a.jpg", "images.example.com"),
        ("http://user:pw@example.com:8080/a.jpg", "example.com"),
        ("http://[2001:db8::1]:8443/a.jpg", "2001:db8::1"),
        ("http://127.0.1.92?x=1", "127.0.1.92"),
        ("http://example.com#frag", "example.com"),
    ],
)
def test_host_key_matches_the_host_the_limits_are_kept_for(url: str, host: str) -> None:
    assert host_key(url) == host


def test_the_busiest_host_is_started_first_and_hosts_fill_up_to_their_limit() -> None:
    frontier = Frontier(
        items("small.example", 2) + items("big.example", 5) + items("mid.example", 3),
        LocalHostLimits(per_host=2),
        per_host=2,
        threads=6,
    )
    taken = [frontier.take() for _ in range(6)]
    assert hosts_of(taken) == ["big.example"] * 2 + ["mid.example"] * 2 + ["small.example"] * 2


def test_hosts_get_threads_in_proportion_to_their_urls_left_not_all_up_to_the_limit() -> None:
    # A host with two URLs left is served as fast by one kept-alive connection as by two new ones
    # (each a handshake); the big host gets the rest of the threads, up to its per-host limit.
    small = [f"s{n}.example" for n in range(4)]
    batch = items("big.example", 40) + [item for host in small for item in items(host, 2)]
    frontier = Frontier(batch, LocalHostLimits(per_host=8), per_host=8, threads=12)
    taken = Counter(hosts_of([frontier.take() for _ in range(12)]))
    assert taken == {"big.example": 8, **{host: 1 for host in small}}


def test_a_finished_url_frees_its_hosts_place() -> None:
    frontier = Frontier(
        items("big.example", 3) + items("small.example", 3),
        LocalHostLimits(per_host=1),
        per_host=1,
        threads=2,
    )
    first = frontier.take()
    assert hosts_of([first, frontier.take()]) == ["big.example", "small.example"]
    assert first is not None
    frontier.done(first)
    assert hosts_of([frontier.take()]) == ["big.example"]


def test_a_paused_host_is_passed_over_while_another_has_urls() -> None:
    limits = LocalHostLimits(per_host=8)
    limits.pause("big.example", 60)  # a 429 with Retry-After, say
    frontier = Frontier(items("big.example", 3) + items("small.example", 1), limits, per_host=8, threads=4)
    assert hosts_of([frontier.take()]) == ["small.example"]
    # Nothing else left: the thread takes the paused host's URL and will wait out the pause.
    assert hosts_of([frontier.take()]) == ["big.example"]


def test_a_host_whose_slots_are_held_elsewhere_is_passed_over() -> None:
    limits = LocalHostLimits(per_host=1)
    held = limits.acquire("big.example")  # by a thread of another batch in this process
    assert isinstance(held, Lease)
    frontier = Frontier(items("big.example", 2) + items("small.example", 1), limits, per_host=1, threads=4)
    assert hosts_of([frontier.take()]) == ["small.example"]


def test_a_line_without_a_host_is_handed_out_like_any_other() -> None:
    # Its key is "" (it fails in the fetch, as rejected); an empty key must not read as "no host found".
    frontier = Frontier(
        [UrlItem("not a url"), *items("big.example", 3)], LocalHostLimits(per_host=1), per_host=1, threads=4
    )
    taken = [frontier.take() for _ in range(2)]
    assert sorted(hosts_of(taken)) == ["", "big.example"], "a thread was sent to wait on a busy host"


def test_every_url_is_handed_out_once_then_none() -> None:
    batch = (
        items("a.example", 4) + items("b.example", 3) + [UrlItem("not a url"), UrlItem("https://c.example/x")]
    )
    frontier = Frontier(batch, LocalHostLimits(per_host=1), per_host=1, threads=2)
    taken = []
    while (item := frontier.take()) is not None:
        taken.append(item)  # never done(): the busy hosts' URLs still come out, to wait on
    assert sorted(item.url for item in taken) == sorted(item.url for item in batch)
    assert frontier.take() is None


def test_the_urls_are_read_a_window_at_a_time_as_threads_take_them() -> None:
    """The task holds a window of its batch, not the batch: read again once half is handed out."""
    read = 0

    def source() -> Iterator[UrlItem]:
        nonlocal read
        for n in range(100):
            read += 1
            yield UrlItem(f"https://h{n % 7}.example/{n}.jpg")

    frontier = Frontier(source(), LocalHostLimits(per_host=100), per_host=100, threads=4, window=10)
    assert read == 10  # the first window, before any thread asks
    taken = []
    most_held = 0
    while (item := frontier.take()) is not None:
        taken.append(item)
        frontier.done(item)
        most_held = max(most_held, read - len(taken))
    assert sorted(item.url for item in taken) == sorted(
        f"https://h{n % 7}.example/{n}.jpg" for n in range(100)
    )
    assert most_held <= 10


def test_threads_that_find_the_window_empty_while_one_reads_wait_for_it_and_none_is_lost() -> None:
    """A slow source (a file in an object store): the threads take every URL once, and no thread
    ends while URLs are still to be read."""

    def slow_source() -> Iterator[UrlItem]:
        for n in range(200):
            if n % 8 == 0:
                time.sleep(0.005)
            yield UrlItem(f"https://h{n % 5}.example/{n}.jpg")

    frontier = Frontier(slow_source(), LocalHostLimits(per_host=100), per_host=100, threads=6, window=8)
    taken: list[UrlItem] = []
    ended_at: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        while (item := frontier.take()) is not None:
            with lock:
                taken.append(item)
            frontier.done(item)
        with lock:
            ended_at.append(len(taken))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(taken) == 200 and len({item.url for item in taken}) == 200
    assert min(ended_at) >= 200 - 8 - 6, "a thread ended while the source still had URLs"


def test_an_error_reading_the_urls_is_raised_in_the_thread_that_read_and_the_others_end() -> None:
    def broken_source() -> Iterator[UrlItem]:
        yield from items("a.example", 6)
        raise OSError("the batch file is unreadable")

    frontier = Frontier(broken_source(), LocalHostLimits(per_host=10), per_host=10, threads=2, window=4)
    with pytest.raises(OSError, match="unreadable"):
        while frontier.take() is not None:
            pass
    # The other threads get what was read, then None: none waits for a read that will not come.
    rest = []
    while (item := frontier.take()) is not None:
        rest.append(item)
    assert len(rest) <= 4


class _SlowHosts:
    """One HTTP server per loopback address, each answering after its own delay."""

    def __init__(self, png: bytes, delays: dict[str, float]) -> None:
        self.servers: dict[str, ThreadingHTTPServer] = {}
        for address, delay in delays.items():
            handler = _handler(png, delay)
            server = ThreadingHTTPServer((address, 0), handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self.servers[address] = server

    def urls(self, address: str, count: int) -> list[str]:
        port = self.servers[address].server_address[1]
        return [f"http://{address}:{port}/{n}.png" for n in range(count)]

    def close(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()


def _handler(png: bytes, delay: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

    return Handler


@pytest.fixture
def slow_hosts(images: Images) -> Iterator[_SlowHosts]:
    hosts = _SlowHosts(images.png, {"127.0.0.2": 0.3, "127.0.0.3": 0.03, "127.0.0.4": 0.03})
    yield hosts
    hosts.close()


class _WaitLog(LocalHostLimits):
    """The real limits, noting when each acquire starts and whether it has to wait for a slot."""

    def __init__(self, per_host: int) -> None:
        super().__init__(per_host)
        self.calls: list[tuple[float, str, bool]] = []  # (monotonic, host, had to wait)
        self._calls_lock = threading.Lock()

    def acquire(
        self, host: str, *, deadline: float | None = None, crawl_delay: float | None = None
    ) -> Lease | None:
        waits = not self.has_room(host)
        with self._calls_lock:
            self.calls.append((time.monotonic(), host, waits))
        return super().acquire(host, deadline=deadline, crawl_delay=crawl_delay)


def test_no_thread_waits_for_a_slow_hosts_slot_while_other_hosts_have_urls(
    slow_hosts: _SlowHosts, store: ContentAddressedStore
) -> None:
    # A slow host with few URLs beside two fast hosts with many; 2 requests per host and 6 threads:
    # enough threads to keep every host at its limit and none over. With one queue interleaved by
    # host, the slow host's next URLs come up every third URL and threads queue for its slots
    # within the first 50 ms, while the fast hosts' URLs wait behind them.
    urls = (
        slow_hosts.urls("127.0.0.2", 6) + slow_hosts.urls("127.0.0.3", 30) + slow_hosts.urls("127.0.0.4", 30)
    )
    limits = _WaitLog(per_host=2)
    settings = FetchSettings(
        concurrency=6,
        per_host_concurrency=2,
        respect_robots_txt=False,
        allow_hosts=("127.0.0.0/8",),
        total_timeout=10.0,
    )
    results = fetch_batch(urls, settings, store=store, limits=limits)

    assert [r.status for r in results] == [Status.OK] * len(urls)
    # Once the slow host's last URL has started, 6 threads share the 4 fast slots and the spare ones
    # rightly wait (on a loaded box the fast hosts may still have URLs then). Before that, every thread
    # has a free slot to go to; and a thread never queues on the slow host while fast URLs are left.
    started = limits.calls[0][0]
    last_slow_start = max(at for at, host, _ in limits.calls if host == "127.0.0.2")
    last_fast_start = max(at for at, host, _ in limits.calls if host != "127.0.0.2")
    wrong_waits = [
        (round(at - started, 3), host)
        for at, host, waits in limits.calls
        if waits and (at < last_slow_start - 0.05 or (host == "127.0.0.2" and at < last_fast_start - 0.05))
    ]
    assert not wrong_waits, (
        f"threads waited for a busy host's slot while another host had room: {wrong_waits} (the slow host's "
        f"last URL started {last_slow_start - started:.2f}s in, the fast hosts' {last_fast_start - started:.2f}s)"
    )
