"""Free ports for the servers stacks, tests and benchmarks start (scripts/ports.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from scripts import ports


def test_ports_are_outside_the_ephemeral_range_distinct_and_bindable():
    low, high = ports.ephemeral_range()
    handed = [ports.free_port() for _ in range(200)]

    assert len(set(handed)) == len(handed)
    assert not [port for port in handed if low <= port <= high]
    for port in handed[:20]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_something_listens_on_is_never_handed_out(monkeypatch: pytest.MonkeyPatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        picks = iter([taken, taken, 24242])
        monkeypatch.setattr(ports._random, "choice", lambda pool: next(picks))

        assert ports.free_port() == 24242


@pytest.mark.parametrize(
    ("proc_text", "pool_start", "pool_stop"),
    [
        ("32768\t60999\n", 20000, 32768),  # Linux's default: below it
        ("1024\t60999\n", 61000, 65536),  # a range that starts low: above it
        ("not numbers", 20000, 32768),  # unreadable: Linux's default
    ],
)
def test_the_pool_avoids_the_kernels_ephemeral_range(
    tmp_path: Path, proc_text: str, pool_start: int, pool_stop: int
):
    path = tmp_path / "ip_local_port_range"
    path.write_text(proc_text)

    pool = ports._pool(ports.ephemeral_range(path))

    assert (pool.start, pool.stop) == (pool_start, pool_stop)
