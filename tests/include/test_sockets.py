"""KernelTimeoutSocket: Python's timeout behaviour, kept by the kernel, with no system call per call."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import closing

import pytest

from include.harvest.sockets import KernelTimeoutSocket, _timeval


@pytest.fixture
def pair() -> Iterator[tuple[KernelTimeoutSocket, socket.socket]]:
    """A connected (client, server side) pair over loopback; the client adopted after connecting."""
    with closing(socket.create_server(("127.0.0.1", 0))) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=2.0)
        server, _ = listener.accept()
    adopted = KernelTimeoutSocket.adopt(client)
    with closing(adopted), closing(server):
        yield adopted, server


def kernel_timeout(sock: socket.socket, option: int) -> float:
    seconds, microseconds = struct.unpack("@ll", sock.getsockopt(socket.SOL_SOCKET, option, 16))
    return seconds + microseconds / 1_000_000


def test_adopted_socket_blocks_and_keeps_the_timeout_it_was_connected_with(
    pair: tuple[KernelTimeoutSocket, socket.socket],
) -> None:
    client, _ = pair
    assert client.gettimeout() == 2.0
    assert client.getblocking()  # to CPython: no poll() before each call
    assert client.fileno() >= 0


def test_silent_peer_raises_timeout_error_after_the_timeout(
    pair: tuple[KernelTimeoutSocket, socket.socket],
) -> None:
    client, _ = pair
    client.settimeout(0.3)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.recv(10)
    # A lower bound, and an upper one loose enough for a busy machine: it catches a timeout not
    # applied (recv() would block for ever) or in the wrong unit (300 s); the value set is checked below.
    assert 0.25 <= time.monotonic() - started < 30
    assert kernel_timeout(client, socket.SO_RCVTIMEO) == pytest.approx(0.3)


def test_buffered_readline_times_out_instead_of_reading_an_empty_line(
    pair: tuple[KernelTimeoutSocket, socket.socket],
) -> None:
    """What http.client relies on: a plain blocking socket would make readline() return b"" on
    EAGAIN, which http.client reports as the server closing the connection."""
    client, server = pair
    client.settimeout(0.2)
    reader = client.makefile("rb")
    server.sendall(b"HTTP/1.1 200 OK\r\n")
    assert reader.readline() == b"HTTP/1.1 200 OK\r\n"
    with pytest.raises(TimeoutError):
        reader.readline()
    reader.close()


def test_data_arriving_before_the_timeout_is_read(pair: tuple[KernelTimeoutSocket, socket.socket]) -> None:
    client, server = pair
    client.settimeout(2.0)
    timer = threading.Timer(0.2, server.sendall, args=(b"late but in time",))
    timer.start()
    buffer = bytearray(64)
    count = client.recv_into(buffer)
    timer.join()
    assert bytes(buffer[:count]) == b"late but in time"


def test_send_to_a_peer_that_never_reads_times_out(pair: tuple[KernelTimeoutSocket, socket.socket]) -> None:
    client, _ = pair
    client.settimeout(0.3)
    with pytest.raises(TimeoutError):
        client.sendall(b"x" * (64 << 20))  # far more than both socket buffers hold
    assert kernel_timeout(client, socket.SO_SNDTIMEO) == pytest.approx(0.3)


def test_a_timeout_is_applied_per_direction_only_when_it_changes(
    pair: tuple[KernelTimeoutSocket, socket.socket], socket_timeouts_set: list[int]
) -> None:
    """urllib3 sets the connect timeout before each request and the read timeout before each
    response: in the steady state of a kept-alive connection that must cost no system call."""
    client, server = pair
    for _ in range(5):
        client.settimeout(5.0)  # urllib3: connect timeout, for sending the request
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        client.settimeout(10.0)  # urllib3: read timeout, for the response
        server.sendall(b"response")
        assert client.recv(64) == b"response"
        assert server.recv(64)
    assert socket_timeouts_set == [socket.SO_SNDTIMEO, socket.SO_RCVTIMEO]
    assert kernel_timeout(client, socket.SO_SNDTIMEO) == 5.0
    assert kernel_timeout(client, socket.SO_RCVTIMEO) == 10.0
    client.settimeout(None)
    server.sendall(b"more")
    assert client.recv(64) == b"more"
    assert kernel_timeout(client, socket.SO_RCVTIMEO) == 0.0  # the kernel's "no timeout"


def test_zero_or_negative_timeouts_are_refused(pair: tuple[KernelTimeoutSocket, socket.socket]) -> None:
    client, _ = pair
    for value in (0, 0.0, -1.0):
        with pytest.raises(ValueError, match="positive or None"):
            client.settimeout(value)
    assert client.gettimeout() == 2.0


@pytest.mark.parametrize(
    ("seconds", "timeval"),
    [(None, (0, 0)), (10, (10, 0)), (2.5, (2, 500_000)), (1e-9, (0, 1)), (5.9999999, (6, 0))],
)
def test_timeval_never_rounds_a_timeout_down_to_none(seconds: float | None, timeval: tuple[int, int]) -> None:
    assert struct.unpack("@ll", _timeval(seconds)) == timeval
