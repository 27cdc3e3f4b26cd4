"""Services a test starts (and restarts) itself, apart from the machine's own: a private
``redis-server`` on a free port. Stopped by its pid, never by name."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from scripts.ports import free_port

__all__ = ["RedisServer"]


class RedisServer:
    """A ``redis-server`` of the test's own, with its append-only file in ``directory``.

    Persistence is on, as a production broker's should be: a restart keeps the queued messages.
    """

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian package redis-server)")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--save", "",
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not start; see {self.directory / 'redis.log'}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM by pid: redis-server flushes its append-only file and exits."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None

    def restart(self, down_for: float = 1.0) -> None:
        self.stop()
        time.sleep(down_for)  # the outage itself, not a synchronisation
        self.start()
