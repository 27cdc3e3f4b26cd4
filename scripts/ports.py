"""Free TCP ports on loopback for the servers the stacks, tests and benchmarks start.

A port from ``bind(("127.0.0.1", 0))`` comes from the kernel's ephemeral range, the range it also
draws from for every other ``bind(0)`` and for the local end of every outgoing connection. A server
that binds its port only after a minute of start-up (the api-server) can find that port taken by
then, and a stack that asks four times may even be handed the same port twice. So the ports here
are drawn at random from below the ephemeral range, where the kernel never hands one out on its
own, and never twice in one process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port"]

# Below this are the well-known ports of the services a machine like this runs.
LOWEST_PORT = 20000
# Linux's default when /proc does not say.
DEFAULT_EPHEMERAL = (32768, 60999)

_handed_out: set[int] = set()
_random = random.SystemRandom()  # two processes must not walk the same sequence


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    """The kernel's ephemeral port range, first and last port included."""
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return low, high


def _pool(ephemeral: tuple[int, int]) -> range:
    low, high = ephemeral
    if low - LOWEST_PORT >= 1000:
        return range(LOWEST_PORT, low)
    return range(high + 1, 65536)  # an ephemeral range that starts low leaves the top free


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing holds now and that no ``bind(0)`` or connection will take."""
    pool = _pool(ephemeral_range())
    for _ in range(200):
        port = _random.choice(pool)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise OSError(f"no free TCP port on 127.0.0.1 between {pool.start} and {pool.stop - 1}")
