"""Reading a response body within the size cap and the total deadline, hashing it as it arrives,
and handing the connection back for reuse when that is safe."""

from __future__ import annotations

import hashlib
import io
import tempfile
import time
from typing import IO

import urllib3
from urllib3.exceptions import HTTPError, ProtocolError, ReadTimeoutError

from include.harvest.connections import reaper, reason
from include.harvest.errors import ConnectionFailed, DownloadError, Timeout, TooLarge, describe_bytes
from include.harvest.settings import FetchSettings
from include.harvest.urls import Target

__all__ = ["Body", "finish", "read_body"]

# Below malloc's mmap threshold (128 KiB): a bigger read buffer costs an mmap/munmap per read.
READ_CHUNK = 64 * 1024
SPOOL_IN_MEMORY = 4 * 1024 * 1024  # bodies up to this size never touch the local disk
REDIRECT_DRAIN_LIMIT = 64 * 1024  # a small redirect body is read so the connection can be reused


class Body:
    """A response body: received whole (``data``), or being received with :meth:`write`, in memory
    and moved to a temporary file past ``SPOOL_IN_MEMORY`` bytes; hashed and counted as it arrives."""

    def __init__(self, data: bytes = b"") -> None:
        # A plain BytesIO, not SpooledTemporaryFile: Pillow and storage read it many times in small
        # pieces, and the wrapper's Python-level methods showed up in profiles. It shares ``data``
        # (no copy), and one sha256 call over a whole body lets other threads run meanwhile.
        self.file: IO[bytes] = io.BytesIO(data)
        self.hasher = hashlib.sha256(data)
        self.size = len(data)

    def write(self, chunk: bytes) -> None:
        if self.size + len(chunk) > SPOOL_IN_MEMORY and isinstance(self.file, io.BytesIO):
            on_disk = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
            on_disk.write(self.file.getbuffer())
            self.file = on_disk
        self.file.write(chunk)
        self.hasher.update(chunk)
        self.size += len(chunk)

    def read_all(self) -> bytes:
        """The whole body as bytes, then closed (small answers: a URL list, a robots.txt)."""
        try:
            self.file.seek(0)
            return self.file.read()
        finally:
            self.close()

    def close(self) -> None:
        self.file.close()


def read_body(
    response: urllib3.BaseHTTPResponse, target: Target, settings: FetchSettings, deadline: float
) -> Body:
    """The body, within the size cap and the total deadline.

    Socket timeouts bound each read, not the whole body: the reaper shuts the socket down when the
    deadline passes, whichever way the body is read.
    """
    sock = getattr(getattr(response, "connection", None), "sock", None)
    # Identity was asked for: skip urllib3's decoder layer unless the server compressed anyway (then
    # the cap counts the decoded bytes).
    decode = response.headers.get("Content-Encoding", "identity").strip().lower() != "identity"
    declared = response.headers.get("Content-Length")
    expected = int(declared) if declared and declared.isdigit() and not decode else -1
    entry = reaper.watch(deadline, sock) if sock is not None else None
    try:
        if 0 <= expected <= SPOOL_IN_MEMORY:
            return _read_declared(response, target, settings, expected, deadline)
        return _read_streamed(response, target, settings, expected, decode, deadline)
    finally:
        if entry is not None:
            reaper.cancel(entry)


def _read_declared(
    response: urllib3.BaseHTTPResponse,
    target: Target,
    settings: FetchSettings,
    expected: int,
    deadline: float,
) -> Body:
    """The common case: a declared length, already checked against the cap, read in one call.

    (Without an amount, http.client reads straight into one bytes object, in C; with one, it adds a
    buffer and a copy.)
    """
    try:
        data = response.read(decode_content=False)
    except (ProtocolError, HTTPError, OSError) as exc:
        raise _failure(exc, target, settings, deadline, received=None) from exc
    if len(data) != expected:
        short = ProtocolError(f"the server sent {len(data)} of the {expected} bytes it declared")
        raise _failure(short, target, settings, deadline, received=len(data))
    return Body(data)


def _read_streamed(
    response: urllib3.BaseHTTPResponse,
    target: Target,
    settings: FetchSettings,
    expected: int,
    decode: bool,
    deadline: float,
) -> Body:
    """No length, a large one, or a compressed body: chunk by chunk, counting against the cap."""
    body = Body()
    try:
        while True:
            if time.monotonic() >= deadline:  # a body that never ends, arriving quickly
                raise _failure(None, target, settings, deadline, received=body.size)
            try:
                chunk = response.read1(READ_CHUNK, decode_content=decode)
            except (ProtocolError, HTTPError, OSError) as exc:
                raise _failure(exc, target, settings, deadline, received=body.size) from exc
            if not chunk:
                return body
            if body.size + len(chunk) > settings.max_bytes:
                raise TooLarge(
                    f"server sent more than {settings.max_bytes} bytes, over the "
                    f"{describe_bytes(settings.max_bytes)} cap (HARVEST_MAX_BYTES); stopped reading",
                    http_status=response.status,
                )
            body.write(chunk)
            if body.size == expected:  # stop once it has arrived, without asking for the end
                return body
    except BaseException:
        body.close()
        raise


def _failure(
    exc: Exception | None, target: Target, settings: FetchSettings, deadline: float, *, received: int | None
) -> DownloadError:
    """What a read that failed (or the deadline) means for the URL, in words a person can act on."""
    got = f" after {received} bytes" if received is not None else ""
    if time.monotonic() >= deadline - 0.01:  # the deadline passed, or the reaper cut the socket
        return Timeout(
            f"body not complete after {settings.total_timeout:g}s (HARVEST_TOTAL_TIMEOUT){got}: "
            f"{target.host} is sending too slowly or endlessly"
        )
    if isinstance(exc, ReadTimeoutError):
        return Timeout(
            f"{target.host} stopped sending the body for {settings.read_timeout:g}s (HARVEST_READ_TIMEOUT){got}"
        )
    assert exc is not None  # without an error, only the deadline leads here
    return ConnectionFailed(f"connection to {target.host} broke during the body{got}: {reason(exc)}")


def finish(response: urllib3.BaseHTTPResponse, *, read_to_end: bool, is_redirect: bool) -> None:
    """Give the connection back for reuse if the response was read to its end, else drop it."""
    try:
        if not read_to_end and is_redirect:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) <= REDIRECT_DRAIN_LIMIT:
                response.drain_conn()  # small and bounded: worth it to keep the connection
                read_to_end = True
        if not read_to_end:
            response.close()  # unread body (error, cap, deadline): this connection cannot be reused
    except (HTTPError, OSError):
        response.close()
    response.release_conn()
