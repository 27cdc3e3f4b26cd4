"""Connected TCP sockets whose timeouts the kernel keeps, so a read or a write is one system call.

A Python socket with a timeout is non-blocking underneath, and CPython calls ``poll()`` before
every ``recv`` and ``send`` to wait for it. Each of those system calls releases the GIL, and in a
process where tens of fetch threads take turns on it, each release hands the GIL to another thread:
the polls made up a third of the engine's thread switches against a fast server (``bench.engine``).

:class:`KernelTimeoutSocket` is a blocking socket instead, with ``SO_RCVTIMEO`` and ``SO_SNDTIMEO``
set: a ``recv`` goes straight to the kernel, which gives up after the same timeout and returns
EAGAIN; that is raised as the ``TimeoutError`` a Python timeout raises, so http.client and urllib3
see no difference. ``settimeout`` keeps its meaning (the timeout of the calls that follow) and is
applied to each direction the first time a call in that direction runs under a new value: urllib3
sets the connect timeout before every request and the read timeout before every response, and
at a system call per change, that would give back much of what the polls cost.

Plain TCP only. The ssl module retries a blocking read that returns EAGAIN, so a TLS socket on top
of this one would never time out; TLS connections keep Python's own timeouts.
"""

from __future__ import annotations

import math
import socket
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["KernelTimeoutSocket"]


class KernelTimeoutSocket(socket.socket):
    """A connected, blocking TCP socket whose timeouts are kept by the kernel (see the module doc)."""

    __slots__ = ("_timeout", "_receive_timeout", "_send_timeout")

    _timeout: float | None
    _receive_timeout: float | None  # what SO_RCVTIMEO holds
    _send_timeout: float | None  # what SO_SNDTIMEO holds

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        super().settimeout(None)  # blocking: no poll() before each call
        self._timeout = self._receive_timeout = self._send_timeout = None  # None: no timeout

    @classmethod
    def adopt(cls, sock: socket.socket) -> KernelTimeoutSocket:
        """Take over the connected ``sock``, its timeout included; ``sock`` must not be used again."""
        timeout = sock.gettimeout()
        adopted = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        adopted.settimeout(timeout)
        return adopted

    def settimeout(self, value: float | None) -> None:
        if value is not None and value <= 0:
            # Zero means non-blocking to Python; nothing here needs it, and the kernel has no such timeout.
            raise ValueError(f"a kernel-kept timeout must be positive or None, not {value!r}")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._receiving()
        with _EAGAIN_IS_TIMEOUT:
            return super().recv(bufsize, flags)

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        self._receiving()
        with _EAGAIN_IS_TIMEOUT:
            return super().recv_into(buffer, nbytes, flags)

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        self._sending()
        with _EAGAIN_IS_TIMEOUT:
            return super().send(data, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        self._sending()
        with _EAGAIN_IS_TIMEOUT:
            super().sendall(data, flags)

    def _receiving(self) -> None:
        """Bring SO_RCVTIMEO up to the timeout (a system call, only when the timeout changed)."""
        if self._receive_timeout != self._timeout:
            self.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self._timeout))
            self._receive_timeout = self._timeout

    def _sending(self) -> None:
        """Bring SO_SNDTIMEO up to the timeout (a system call, only when the timeout changed)."""
        if self._send_timeout != self._timeout:
            self.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(self._timeout))
            self._send_timeout = self._timeout


class _EagainIsTimeout:
    """Raises the ``TimeoutError`` of a Python timeout where the kernel's timeout ran out.

    (A blocking call whose SO_RCVTIMEO or SO_SNDTIMEO passes fails with EAGAIN, which Python
    raises as ``BlockingIOError``, and which ``socket.SocketIO`` would turn into a quiet "no data".)
    """

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is BlockingIOError:
            raise TimeoutError("timed out") from None


_EAGAIN_IS_TIMEOUT = _EagainIsTimeout()


def _timeval(seconds: float | None) -> bytes:
    """A ``struct timeval``; all zero means no timeout to the kernel, so a timeout is rounded up."""
    microseconds = 0 if seconds is None else max(1, math.ceil(seconds * 1_000_000))
    return _TIMEVAL.pack(*divmod(microseconds, 1_000_000))


_TIMEVAL = struct.Struct("@ll")  # struct timeval { time_t tv_sec; suseconds_t tv_usec; } on Linux
