"""Fixtures for the download engine: a hostile HTTP server on 127.0.0.1 and generated images.

The server is real (sockets, threads, HTTP/1.1 keep-alive); each path is a behaviour a crawler
meets on the open web: slow, silent, endless, oversized, lying, redirecting, throttling.

No test here sends a packet off the machine: :class:`LoopbackOnly` is installed for the whole
session and refuses, before the system call, any connect to an address outside 127.0.0.0/8 and
::1, and any name lookup other than loopback names and the test names of :data:`TEST_NAMES`
(resolved here, without DNS). Non-public addresses are tested at the guard's own level
(``test_guard.py``); where the engine must meet one, it is a test name that resolves to it, and
if the guard ever let it through, the connect would be refused here and the test fail.
"""

from __future__ import annotations

import io
import ipaddress
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from include.harvest.settings import FetchSettings
from include.harvest.sockets import KernelTimeoutSocket
from include.harvest.storage import ContentAddressedStore

REDIS_TEST_URL = "redis://127.0.0.1:6379/13"

# X-Robots-Tag values the test server sends, one image each: /robots-tag/<name>.png
ROBOTS_TAG_VALUES = {
    "noai": "noai",
    "noimageai": "noimageai",
    "none": "none",
    "listed": "noindex, noimageai",
    "for-harvest": "harvest: noai",
    "for-everyone": "*: noimageai",
    "for-otherbot": "otherbot: noai",
    "noindex": "noindex, nofollow",
}


# Names the test resolver answers (without DNS) with non-public addresses, for the engine's guard
# to refuse. ``.test`` is reserved (RFC 2606): no real host can answer to these names.
TEST_NAMES = {
    "intranet.harvest.test": "10.0.0.1",
    "metadata.harvest.test": "169.254.169.254",
}
# Names the machine resolves itself (/etc/hosts), to loopback.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class OffLoopbackConnection(OSError):
    """A test code path tried to connect to (or look up) something outside loopback."""


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host.lower().rstrip(".") in LOOPBACK_NAMES
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class LoopbackOnly:
    """Wraps ``socket.socket.connect``/``connect_ex`` (which every Python client ends in: urllib3,
    http.client, ssl, redis, ``socket.create_connection``) and ``socket.getaddrinfo``.

    A destination outside loopback is recorded in :attr:`violations` and refused with
    :class:`OffLoopbackConnection` *before* the real ``connect`` runs, so the kernel never sees it;
    the code under test gets an ``OSError`` as from a refused connection, and the test fails at
    teardown (an engine would otherwise quietly record a ``connection_error``). Unix sockets are
    local and pass. Subprocesses and C libraries (libpq) are not covered.
    """

    def __init__(self) -> None:
        self.violations: list[str] = []
        self._lock = threading.Lock()
        self.real_connect = socket.socket.connect
        self.real_connect_ex = socket.socket.connect_ex
        self.real_getaddrinfo = socket.getaddrinfo

    def _refuse(self, what: str) -> OffLoopbackConnection:
        with self._lock:
            self.violations.append(what)
        return OffLoopbackConnection(f"tests may only reach loopback: refused {what}")

    def check(self, sock: socket.socket, address: Any) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return  # AF_UNIX and other local families
        host = address[0] if isinstance(address, tuple) and address else address
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if not isinstance(host, str) or not _is_loopback(host):
            raise self._refuse(f"a connection to {address!r}")

    def install(self, patch: pytest.MonkeyPatch) -> None:
        wire = self

        def connect(sock: socket.socket, address: Any) -> None:
            wire.check(sock, address)
            wire.real_connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            wire.check(sock, address)
            return wire.real_connect_ex(sock, address)

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            name = host.decode("ascii", "replace") if isinstance(host, bytes) else host
            if name is None or _is_loopback(name):
                return wire.real_getaddrinfo(host, port, *args, **kwargs)
            key = name.lower().rstrip(".")
            if key in TEST_NAMES:
                return wire.real_getaddrinfo(TEST_NAMES[key], port, *args, **kwargs)  # a literal: no DNS
            try:
                ipaddress.ip_address(key.split("%", 1)[0])
            except ValueError:
                raise wire._refuse(f"a DNS lookup of {name!r}") from None
            return wire.real_getaddrinfo(host, port, *args, **kwargs)  # a literal: connect() decides

        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket.socket, "connect_ex", connect_ex)
        patch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(scope="session", autouse=True)
def loopback_only() -> Iterator[LoopbackOnly]:
    """For the whole session: nothing connects or looks up a name outside loopback."""
    wire = LoopbackOnly()
    with pytest.MonkeyPatch.context() as patch:
        wire.install(patch)
        yield wire


@pytest.fixture(autouse=True)
def _fail_on_off_loopback_traffic(loopback_only: LoopbackOnly) -> Iterator[None]:
    loopback_only.violations.clear()
    yield
    if loopback_only.violations:
        found, loopback_only.violations[:] = list(loopback_only.violations), []
        pytest.fail(f"the test tried to leave loopback (refused before any packet): {found}")


def make_image(fmt: str, size: tuple[int, int], *, seed: int = 0, quality: int = 85) -> bytes:
    """A noisy image (so every one is distinct and JPEGs are realistic), encoded as ``fmt``."""
    noise = Image.effect_noise(size, 40 + seed % 50).convert("RGB")
    out = io.BytesIO()
    if fmt == "GIF":
        noise.convert("P").save(out, "GIF")
    elif fmt == "JPEG":
        noise.save(out, "JPEG", quality=quality)
    else:
        noise.save(out, fmt)
    return out.getvalue()


def make_png_bomb(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose header declares ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    pixels = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@dataclass
class Images:
    png: bytes
    jpeg: bytes
    gif: bytes
    webp: bytes
    big_jpeg: bytes
    same: bytes
    etag_jpeg: bytes


@pytest.fixture(scope="session")
def images() -> Images:
    return Images(
        png=make_image("PNG", (64, 48), seed=1),
        jpeg=make_image("JPEG", (80, 60), seed=2),
        gif=make_image("GIF", (32, 16), seed=3),
        webp=make_image("WEBP", (40, 30), seed=4),
        big_jpeg=make_image("JPEG", (400, 300), seed=5, quality=95),
        same=make_image("PNG", (20, 20), seed=6),
        etag_jpeg=make_image("JPEG", (24, 24), seed=7),
    )


@dataclass
class Seen:
    path: str
    at: float  # time.monotonic() when the request line arrived
    headers: dict[str, str]


@dataclass
class HostileServer:
    """The running server: ``url(path)`` builds a URL, ``seen`` lists every request received."""

    port: int
    seen: list[Seen] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    events: list[str] = field(default_factory=list)  # what handlers observed (see note/wait_for)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def hits(self, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path == path]

    def note(self, event: str) -> None:
        """A handler records what it saw of the client (e.g. that it hung up before the body)."""
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def wait_for(self, event: str, timeout: float = 10.0) -> bool:
        """Whether a handler noted ``event`` (waiting for it up to ``timeout`` seconds)."""
        with self.changed:
            return self.changed.wait_for(lambda: event in self.events, timeout=timeout)

    def count(self, key: str) -> int:
        """How many times ``key`` was requested before (0 on the first request)."""
        with self.lock:
            n = self.counters.get(key, 0)
            self.counters[key] = n + 1
            return n


def _handler(server_state: HostileServer, images: Images) -> type[BaseHTTPRequestHandler]:
    routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}

    def route(path: str) -> Callable[[Callable[[BaseHTTPRequestHandler], None]], None]:
        def register(fn: Callable[[BaseHTTPRequestHandler], None]) -> None:
            routes[path] = fn

        return register

    def head(h: BaseHTTPRequestHandler, status: int, ctype: str, **headers: str) -> None:
        """Status line and headers (``Content_Length=...`` becomes ``Content-Length``)."""
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        for name, value in headers.items():
            h.send_header(name.replace("_", "-"), value)
        h.end_headers()

    def send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, **headers: str) -> None:
        head(h, status, ctype, Content_Length=str(len(body)), **headers)
        h.wfile.write(body)

    static = {
        "/ok.png": (images.png, "image/png"),
        "/ok.jpg": (images.jpeg, "image/jpeg"),
        "/ok.gif": (images.gif, "image/gif"),
        "/ok.webp": (images.webp, "image/webp"),
        "/same-a.png": (images.same, "image/png"),
        "/same-b.png": (images.same, "application/octet-stream"),  # type from bytes, not header
        "/html-as.jpg": (b"<!DOCTYPE html><html><body>Not found</body></html>", "image/jpeg"),
        "/truncated.jpg": (images.big_jpeg[: len(images.big_jpeg) * 6 // 10], "image/jpeg"),
        "/bomb.png": (make_png_bomb(30000, 30000), "image/png"),
        "/svg.svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "image/svg+xml"),
    }
    for path, (body, ctype) in static.items():
        route(path)(lambda h, body=body, ctype=ctype: send(h, 200, body, ctype))

    @route("/status/404")
    def not_found(h: BaseHTTPRequestHandler) -> None:
        send(h, 404, b"no such image", "text/plain")

    @route("/flaky.png")
    def flaky(h: BaseHTTPRequestHandler) -> None:
        if server_state.count("flaky") == 0:
            send(h, 500, b"oops", "text/plain")
        else:
            send(h, 200, images.png, "image/png")

    for key in ("throttled", "throttled-shared"):

        @route(f"/{key}.png")
        def throttled(h: BaseHTTPRequestHandler, key: str = key) -> None:
            if server_state.count(key) == 0:
                send(h, 429, b"slow down", "text/plain", Retry_After="1" if key == "throttled" else "2")
            else:
                send(h, 200, images.png, "image/png")

    @route("/throttled-forever.png")
    def throttled_forever(h: BaseHTTPRequestHandler) -> None:
        send(h, 429, b"slow down", "text/plain", Retry_After="3600")

    @route("/unavailable.png")
    def unavailable(h: BaseHTTPRequestHandler) -> None:
        send(h, 503, b"down", "text/plain")

    @route("/silent.png")
    def silent(h: BaseHTTPRequestHandler) -> None:
        server_state.stop.wait(30)  # accepted, request read, never answered

    @route("/drip.jpg")
    def drip(h: BaseHTTPRequestHandler) -> None:
        head(h, 200, "image/jpeg", Content_Length=str(len(images.jpeg)))
        for byte in images.jpeg:
            if server_state.stop.wait(1.0):
                return
            h.wfile.write(bytes([byte]))
            h.wfile.flush()

    @route("/drip-headers.jpg")
    def drip_headers(h: BaseHTTPRequestHandler) -> None:
        # Status line and headers a byte every 0.5 s: each read is quick, the whole never ends.
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Padding: " + b"x" * 200 + b"\r\n\r\n"
        for byte in head:
            if server_state.stop.wait(0.5):
                return
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
        h.close_connection = True

    @route("/endless")
    def endless(h: BaseHTTPRequestHandler) -> None:
        head(h, 200, "image/jpeg", Transfer_Encoding="chunked")
        h.wfile.write(b"400\r\n" + images.jpeg[:1024].ljust(1024, b"\0") + b"\r\n")
        while not server_state.stop.wait(0.01):
            h.wfile.write(b"400\r\n" + b"\0" * 1024 + b"\r\n")
            h.wfile.flush()

    @route("/huge-declared.jpg")
    def huge_declared(h: BaseHTTPRequestHandler) -> None:
        head(h, 200, "image/jpeg", Content_Length=str(30 * 1024 * 1024))
        h.wfile.write(images.jpeg)

    @route("/huge-undeclared.jpg")
    def huge_undeclared(h: BaseHTTPRequestHandler) -> None:
        head(h, 200, "image/jpeg", Connection="close")
        h.close_connection = True
        h.wfile.write(images.big_jpeg)
        for _ in range(64):  # 2 MiB past the image, no length announced
            h.wfile.write(b"\0" * 32768)

    @route("/short-body.jpg")
    def short_body(h: BaseHTTPRequestHandler) -> None:
        head(h, 200, "image/jpeg", Content_Length=str(len(images.jpeg)))
        h.wfile.write(images.jpeg[:1000])
        h.close_connection = True  # hangs up 1000 bytes into the promised body

    @route("/stall-body.jpg")
    def stall_body(h: BaseHTTPRequestHandler) -> None:
        head(h, 200, "image/jpeg", Content_Length=str(len(images.jpeg)))
        h.wfile.write(images.jpeg[:1000])
        h.wfile.flush()
        server_state.stop.wait(30)  # 1000 bytes into the promised body, silence (the line stays open)

    @route("/loop-a")
    def loop_a(h: BaseHTTPRequestHandler) -> None:
        send(h, 302, b"", "text/plain", Location="/loop-b")

    @route("/loop-b")
    def loop_b(h: BaseHTTPRequestHandler) -> None:
        send(h, 301, b"", "text/plain", Location=server_state.url("/loop-a"))

    for n in range(1, 10):

        @route(f"/chain/{n}")
        def chain(h: BaseHTTPRequestHandler, n: int = n) -> None:
            send(h, 302, b"", "text/plain", Location=f"/chain/{n - 1}")

    route("/chain/0")(lambda h: send(h, 200, images.png, "image/png"))

    route("/second-worker.png")(lambda h: send(h, 200, images.png, "image/png"))

    # Redirects to non-public addresses, by test names (TEST_NAMES): the guard must refuse them,
    # and if it did not, LoopbackOnly would refuse the connect (nothing leaves the machine).
    @route("/to-private")
    def to_private(h: BaseHTTPRequestHandler) -> None:
        send(h, 302, b"", "text/plain", Location="http://intranet.harvest.test/secret.png")

    @route("/to-metadata")
    def to_metadata(h: BaseHTTPRequestHandler) -> None:
        send(h, 301, b"", "text/plain", Location="http://metadata.harvest.test/latest/meta-data/")

    @route("/to-loopback-name")
    def to_loopback(h: BaseHTTPRequestHandler) -> None:
        send(h, 307, b"", "text/plain", Location=server_state.url("/ok.png", host="127.0.0.1"))

    @route("/noai.png")
    def noai(h: BaseHTTPRequestHandler) -> None:
        send(h, 200, images.png, "image/png", X_Robots_Tag="noai")

    # One image per X-Robots-Tag value: /robots-tag/<name>.png
    for name, value in ROBOTS_TAG_VALUES.items():
        route(f"/robots-tag/{name}.png")(
            lambda h, value=value: send(h, 200, images.png, "image/png", X_Robots_Tag=value)
        )

    @route("/noai-held-body.png")
    def noai_held_body(h: BaseHTTPRequestHandler) -> None:
        # X-Robots-Tag: noai, then a few bytes of the body; the rest is held back until the client
        # hangs up. A client that waited for the body would end in a timeout, and "held" be noted.
        head(h, 200, "image/png", Content_Length=str(len(images.png)), X_Robots_Tag="noai")
        h.wfile.write(images.png[:100])
        h.wfile.flush()
        h.connection.settimeout(10)
        try:
            hung_up = h.connection.recv(1) == b""  # no request follows: only EOF (or a reset) comes
        except TimeoutError:
            hung_up = False
        except OSError:
            hung_up = True  # reset: the client closed with our unread bytes in its buffer
        server_state.note("noai-held-body: " + ("client hung up before the body" if hung_up else "held"))
        h.close_connection = True

    @route("/to-unparsable")
    def to_unparsable(h: BaseHTTPRequestHandler) -> None:
        send(h, 302, b"", "text/plain", Location="http://[::1/x")  # urljoin raises ValueError

    @route("/etag.jpg")
    def etag(h: BaseHTTPRequestHandler) -> None:
        if h.headers.get("If-None-Match") == '"v1"':
            h.send_response(304)
            h.send_header("ETag", '"v1"')
            h.end_headers()
            return
        send(
            h, 200, images.etag_jpeg, "image/jpeg", ETag='"v1"', Last_Modified="Mon, 02 Nov 2026 10:00:00 GMT"
        )

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - the http.server naming
            with server_state.lock:
                server_state.seen.append(Seen(self.path, time.monotonic(), dict(self.headers.items())))
            handler = routes.get(self.path.split("?", 1)[0])  # a query string makes a distinct URL
            try:
                if handler is None:
                    send(self, 404, b"unknown test path", "text/plain")
                else:
                    handler(self)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # keep the test output readable

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops SYNs under a burst of 32 connects (1 s retransmit)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up on hostile responses is the point of most tests


@pytest.fixture
def redis_client() -> Any:
    """A client of the machine's Redis, test database 13 (the per-host limits and robots.txt tests)."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"no Redis at {REDIS_TEST_URL} ({exc}): these tests need the machine's Redis")
    return client


@pytest.fixture
def prefix(redis_client: Any) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards (nothing else is touched)."""
    name = f"harvest-test-{uuid.uuid4().hex[:10]}"
    yield name
    for key in redis_client.scan_iter(f"{name}:*"):
        redis_client.delete(key)


@pytest.fixture(scope="session")
def hostile_server(images: Images) -> Iterator[HostileServer]:
    state = HostileServer(port=0)
    httpd = _Server(("127.0.0.1", 0), _handler(state, images))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    state.stop.set()
    httpd.shutdown()
    httpd.server_close()


@dataclass
class TlsServer:
    port: int
    cert_file: str  # self-signed for "localhost": trust it with SSL_CERT_FILE
    server_names: list[str | None]  # the SNI name of every TLS handshake


@pytest.fixture(scope="session")
def tls_server(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """The same routes over HTTPS, with a certificate for ``localhost`` only."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment,func-returns-value]
    state = HostileServer(port=0)
    httpd = _Server(("127.0.0.1", 0), _handler(state, images))
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield TlsServer(httpd.server_address[1], str(cert), names)
    state.stop.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def refused_url() -> str:
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing.png"


@pytest.fixture(scope="session")
def fast_settings() -> FetchSettings:
    """Small limits so hostile cases end in seconds; the test server's address is allowed."""
    return FetchSettings(
        connect_timeout=1.0,
        read_timeout=1.5,  # above the 1 s between two dripped bytes: the total deadline must cut the drip
        total_timeout=2.0,
        concurrency=32,
        per_host_concurrency=32,
        max_bytes=1024 * 1024,
        max_attempts=3,
        backoff_base=0.05,
        backoff_max=0.2,
        retry_after_cap=5.0,
        allow_hosts=("127.0.0.1",),
        progress_interval=1.0,
    )


@pytest.fixture
def socket_timeouts_set(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ``SO_RCVTIMEO``/``SO_SNDTIMEO`` options set on kernel-timeout sockets, in order: each
    is a system call that the sockets make only when a timeout changes."""
    options: list[int] = []
    setsockopt = KernelTimeoutSocket.setsockopt

    def spy(sock: KernelTimeoutSocket, level: int, option: int, value: object) -> None:
        options.append(option)
        setsockopt(sock, level, option, value)  # type: ignore[call-overload]

    monkeypatch.setattr(KernelTimeoutSocket, "setsockopt", spy)
    return options


@pytest.fixture
def store(tmp_path: object) -> ContentAddressedStore:
    return ContentAddressedStore(f"file://{tmp_path}/storage")
