"""The engine's header parser gives what http.client's gives, on clean and on hostile header blocks."""

from __future__ import annotations

import http.client
import io
import random
from typing import TYPE_CHECKING
from unittest import mock

import pytest

from include.harvest.fetch import fetch_batch
from include.harvest.httpheaders import HTTPResponse, parse_headers
from include.harvest.models import Status
from include.harvest.settings import FetchSettings
from include.harvest.storage import ContentAddressedStore

if TYPE_CHECKING:
    from tests.include.conftest import HostileServer

NGINX = (
    b"Server: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 01:12:05 GMT\r\nContent-Type: image/jpeg\r\n"
    b"Content-Length: 53211\r\nLast-Modified: Thu, 26 Nov 2026 01:10:05 GMT\r\n"
    b'Connection: keep-alive\r\nETag: "6512bd43-cfdb"\r\nAccept-Ranges: bytes\r\n\r\n'
)

BLOCKS = {
    "nginx": NGINX,
    "no headers": b"\r\n",
    "end of stream, no blank line": b"Content-Type: image/png\r\n",
    "LF line ends": b"Content-Type: image/png\nContent-Length: 3\n\n",
    "repeated header": b"X-Robots-Tag: index\r\nX-Robots-Tag: noai\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
    "folded value": b"X-Robots-Tag: index,\r\n  noai\r\n\tnoimageai\r\nContent-Length: 3\r\n\r\n",
    "first line folded": b"  folded: first\r\nContent-Length: 3\r\n\r\n",
    "empty value and spaces": b"X-Empty:\r\nX-Spaces:   padded value   \r\nX-Tab:\tx\r\n\r\n",
    "no name": b": nameless\r\nContent-Length: 3\r\n\r\n",
    "line without colon ends the headers": b"Content-Type: image/png\r\ngarbage here\r\nX-Robots-Tag: noai\r\n\r\n",
    "space in the name": b"Content Type: image/png\r\nContent-Length: 3\r\n\r\n",
    "space before the colon": b"Content-Length : 3\r\nX-A: 1\r\n\r\n",
    "bare CR splits a line": b"X-A: one\rX-Robots-Tag: noai\r\nContent-Length: 3\r\n\r\n",
    "CR CR LF": b"X-A: one\r\r\nX-B: two\r\n\r\n",
    "CR at the end of the block": b"X-A: one\r",
    "envelope line first": b"From somebody\r\nX-A: 1\r\n\r\n",
    "envelope line inside": b"X-A: 1\r\nFrom somebody\r\nX-B: 2\r\n\r\n",
    "envelope line last": b"X-A: 1\r\nFrom somebody\r\n\r\n",
    "folded after a nameless line": b": x\r\n continued\r\nX-A: 1\r\n\r\n",
    "latin-1 bytes": b"X-Name: caf\xe9 \xff\r\nContent-Disposition: inline; filename=\xe9t\xe9.jpg\r\n\r\n",
    "colon in the value": b"Location: http://example.com:8080/a?b=c:d\r\n\r\n",
    "control characters": b"X-A: a\x00b\x0bc\x0cd\x1ce\x85f\r\n\r\n",
}


def both(raw: bytes) -> tuple[http.client.HTTPMessage, http.client.HTTPMessage]:
    return parse_headers(io.BytesIO(raw)), http.client.parse_headers(io.BytesIO(raw))


def assert_same(raw: bytes) -> None:
    ours, stdlib = both(raw)
    assert ours.items() == stdlib.items(), raw
    # urllib3 logs "Failed to parse headers" when there are defects or unparsed data: the same ones.
    assert sorted(type(d).__name__ for d in ours.defects) == sorted(
        type(d).__name__ for d in stdlib.defects
    ), raw
    assert (ours.get_payload() or "") == (stdlib.get_payload() or ""), raw  # None or "": nothing left
    for name in ("content-length", "transfer-encoding", "x-robots-tag", "connection"):
        assert ours.get(name) == stdlib.get(name), (name, raw)
        assert ours.get_all(name) == stdlib.get_all(name), (name, raw)


@pytest.mark.parametrize("raw", BLOCKS.values(), ids=BLOCKS.keys())
def test_same_headers_as_the_stdlib(raw: bytes) -> None:
    assert_same(raw)


def test_the_nginx_block_is_read_in_full() -> None:
    ours = parse_headers(io.BytesIO(NGINX))
    assert ours["content-length"] == "53211"
    assert ours["ETag"] == '"6512bd43-cfdb"'
    assert len(ours.items()) == 8


def test_same_headers_as_the_stdlib_on_random_blocks() -> None:
    """Blocks built from the pieces hostile servers use, in random order: 3,000 of them, seeded."""
    pieces = [
        b"Content-Length: 3", b"X-Robots-Tag: noai", b"Content-Type: image/png", b"ETag: \"x\"",
        b"  folded", b"\tfolded", b": nameless", b"no colon", b"From x", b"A:", b"B:  ", b"C :d",
        b"X-L: caf\xe9", b"X-Cr: a\rb", b"", b"X-Long: " + b"v" * 300, b"Dup: 1", b"Dup: 2",
        b"\x85:x", b"\x7f:y", b"X\x00:z", b"From", b"::", b" ", b"F rom: x",
    ]  # fmt: skip
    ends = [b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r"]
    rng = random.Random(20261126)
    for _ in range(3000):
        raw = b"".join(rng.choice(pieces) + rng.choice(ends) for _ in range(rng.randint(0, 8)))
        assert_same(raw + rng.choice([b"\r\n", b""]))


def test_the_stdlib_limits_hold() -> None:
    too_many = b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n"
    with pytest.raises(http.client.HTTPException, match="more than 100 headers"):
        parse_headers(io.BytesIO(too_many))
    with pytest.raises(http.client.LineTooLong):
        parse_headers(io.BytesIO(b"X-Long: " + b"v" * 70_000 + b"\r\n\r\n"))


def test_the_response_keeps_the_stdlib_body_rules() -> None:
    """Status line, Content-Length, chunked and keep-alive are still http.client's code."""

    class FakeSocket:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def makefile(self, mode: str) -> io.BytesIO:
            return io.BytesIO(self.data)

    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    response = HTTPResponse(FakeSocket(chunked))  # type: ignore[arg-type]
    response.begin()
    assert (response.status, response.chunked, response.read()) == (200, True, b"abc")

    sized = b"HTTP/1.0 404 Not Found\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\nnope"
    response = HTTPResponse(FakeSocket(sized))  # type: ignore[arg-type]
    response.begin()
    assert (response.status, response.reason, response.length, response.will_close) == (
        404,
        "Not Found",
        4,
        False,
    )
    assert response.read() == b"nope"


def test_the_engine_reads_headers_with_it(
    hostile_server: HostileServer, fast_settings: FetchSettings, store: ContentAddressedStore
) -> None:
    calls: list[object] = []

    def spy(fp: io.BufferedIOBase) -> http.client.HTTPMessage:
        calls.append(fp)
        return parse_headers(fp)  # type: ignore[arg-type]

    with mock.patch.dict(HTTPResponse.begin.__globals__, parse_headers=spy):
        [ok, noai] = fetch_batch(
            [hostile_server.url("/ok.png"), hostile_server.url("/noai.png")], fast_settings, store=store
        )
    assert (ok.status, ok.width, ok.height) == (Status.OK, 64, 48)
    assert noai.status == Status.BLOCKED
    assert len(calls) == 3  # robots.txt (a 404 here), then the two images
