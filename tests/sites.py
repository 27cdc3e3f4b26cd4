"""An image web site on loopback for end-to-end tests: generated images over real HTTP.

It counts the requests each path received (so a test can prove a URL was *not* fetched again)
and can answer slowly (so a fault can be injected while a batch is still downloading).
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

__all__ = ["ImageSite", "serve_images"]


class ImageSite:
    """A folder of generated images served over HTTP on 127.0.0.1."""

    def __init__(self, root: Path, base_url: str) -> None:
        self.root = root
        self.base_url = base_url
        self.requests: Counter[str] = Counter()  # path -> GET requests received
        self._slow: dict[str, float] = {}  # name prefix -> seconds before each answer
        self._lock = threading.Lock()

    def add_images(self, prefix: str, count: int, *, seed: int, delay: float = 0.0) -> dict[str, str]:
        """Write ``count`` distinct images; return {url: sha256 of the served bytes}.

        With ``delay``, every request for these images waits that long before it is answered.
        """
        rng = random.Random(seed)
        expected = {}
        if delay:
            self._slow[f"/{prefix}-"] = delay
        for index in range(count):
            fmt, ext = [("JPEG", "jpg"), ("PNG", "png")][index % 2]
            size = (rng.randrange(40, 200), rng.randrange(40, 200))
            image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
            image.putpixel((0, 0), (index % 256, seed % 256, 7))  # distinct even at equal colours
            buffer = io.BytesIO()
            image.save(buffer, fmt)
            name = f"{prefix}-{index:04d}.{ext}"
            (self.root / name).write_bytes(buffer.getvalue())
            expected[f"{self.base_url}/{name}"] = hashlib.sha256(buffer.getvalue()).hexdigest()
        return expected

    def requests_for(self, url: str) -> int:
        return self.requests[url.removeprefix(self.base_url)]

    def _received(self, path: str) -> float:
        with self._lock:
            self.requests[path] += 1
        return next((d for prefix, d in self._slow.items() if path.startswith(prefix)), 0.0)


class _Handler(SimpleHTTPRequestHandler):
    site: ImageSite

    def __init__(self, *args: object, site: ImageSite, **kwargs: object) -> None:
        self.site = site
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if delay := self.site._received(self.path):
            time.sleep(delay)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


@contextmanager
def serve_images(root: Path) -> Iterator[ImageSite]:
    """Serve ``root`` on a free loopback port for the duration of the block."""
    holder: list[ImageSite] = []
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: _Handler(*a, site=holder[0], directory=str(root))
    )
    server.daemon_threads = True
    holder.append(ImageSite(root, f"http://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
