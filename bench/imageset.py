"""A deterministic set of distinct synthetic images (JPEG and PNG, 10–150 KB) cached on disk.

Image ``i`` of seed ``s`` is always the same bytes, so a set of N images is the first N of an endless
sequence: asking for more extends the cache, asking for fewer reuses it. Files live under the
git-ignored ``bench/tmp/imageset/seed-<s>/`` in folders of 1,000 (``00012/0012345.jpg``), next to a
``manifest.jsonl`` with one ``{"i", "path", "size", "sha256", "width", "height", "format"}`` per image.

Sizes are log-uniform between 10 and 150 KB (a photo-thumbnail-like spread: many small, some large);
about one in five images is a PNG. Pixels are smoothed random noise, so every file is distinct and
about as hard to compress as a photo.

    python -m bench.imageset --count 20000        # build (or extend) the cache, print a summary
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import random
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_SEED", "ImageSet", "ImageSpec", "build_imageset"]

BENCH_TMP = Path(__file__).resolve().parent / "tmp"
DEFAULT_SEED = 20260101
MIN_BYTES = 10 * 1024
MAX_BYTES = 150 * 1024
PNG_SHARE = 0.2
FILES_PER_FOLDER = 1000
ASPECTS = (1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3)
# Bytes per pixel of smoothed noise, measured with Pillow (JPEG quality 85, PNG default): a first guess
# for the size of the picture; one correction pass then lands within the 10–150 KB range.
BYTES_PER_PIXEL = {"JPEG": 0.37, "PNG": 2.0}
EXTENSIONS = {"JPEG": "jpg", "PNG": "png"}


@dataclass(frozen=True)
class ImageSpec:
    """One generated image: where it is (relative to the set's root) and what it is."""

    i: int
    path: str
    size: int
    sha256: str
    width: int
    height: int
    format: str


def _relpath(i: int, fmt: str) -> str:
    return f"{i // FILES_PER_FOLDER:05d}/{i:07d}.{EXTENSIONS[fmt]}"


def _render(rng: random.Random, fmt: str, pixels: float, aspect: float) -> tuple[bytes, int, int]:
    from PIL import Image

    width = max(16, round(math.sqrt(pixels * aspect)))
    height = max(16, round(width / aspect))
    # Noise at a quarter of the resolution, scaled up: smooth enough to look like a (blurry) photo,
    # random enough that no two images share bytes.
    small = (max(4, width // 4), max(4, height // 4))
    noise = Image.frombytes("RGB", small, rng.randbytes(small[0] * small[1] * 3))
    picture = noise.resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    if fmt == "JPEG":
        picture.save(buf, "JPEG", quality=85)
    else:
        picture.save(buf, "PNG")
    return buf.getvalue(), width, height


def make_image(seed: int, i: int) -> tuple[bytes, ImageSpec]:
    """The bytes and description of image ``i`` of ``seed`` (pure: same inputs, same bytes)."""
    rng = random.Random(f"{seed}:{i}")
    fmt = "PNG" if rng.random() < PNG_SHARE else "JPEG"
    target = math.exp(rng.uniform(math.log(MIN_BYTES * 1.05), math.log(MAX_BYTES * 0.95)))
    aspect = rng.choice(ASPECTS)
    pixels = target / BYTES_PER_PIXEL[fmt]
    data, width, height = _render(rng, fmt, pixels, aspect)
    for _ in range(4):  # correct the size guess; almost always one pass at most
        if MIN_BYTES <= len(data) <= MAX_BYTES and abs(len(data) - target) < 0.25 * target:
            break
        pixels *= target / len(data)
        data, width, height = _render(rng, fmt, pixels, aspect)
    spec = ImageSpec(
        i=i,
        path=_relpath(i, fmt),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        width=width,
        height=height,
        format=fmt,
    )
    return data, spec


def _write_range(args: tuple[int, Path, int, int]) -> list[dict[str, object]]:
    seed, root, start, stop = args
    specs = []
    for i in range(start, stop):
        data, spec = make_image(seed, i)
        target = root / spec.path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        specs.append(spec.__dict__)
    return specs


class ImageSet:
    """The first ``count`` images of ``seed``, on disk under :attr:`root`."""

    def __init__(self, root: Path, specs: list[ImageSpec]):
        self.root = root
        self.specs = specs

    def __len__(self) -> int:
        return len(self.specs)

    def __iter__(self) -> Iterator[ImageSpec]:
        return iter(self.specs)

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self.specs)

    def urls(self, base_url: str) -> list[str]:
        """``base_url/<path>`` for every image, in order (``base_url`` without a trailing slash)."""
        base = base_url.rstrip("/")
        return [f"{base}/{s.path}" for s in self.specs]

    def summary(self) -> str:
        sizes = sorted(s.size for s in self.specs)
        pngs = sum(1 for s in self.specs if s.format == "PNG")
        median = sizes[len(sizes) // 2] if sizes else 0
        return (
            f"{len(self)} images ({pngs} PNG), {self.total_bytes / 1e6:.1f} MB, "
            f"sizes {sizes[0] / 1024:.0f}–{sizes[-1] / 1024:.0f} KB (median {median / 1024:.0f} KB)"
            if sizes
            else "0 images"
        )


def build_imageset(
    count: int,
    *,
    seed: int = DEFAULT_SEED,
    base_dir: Path = BENCH_TMP / "imageset",
    processes: int | None = None,
    log: bool = True,
) -> ImageSet:
    """Return the first ``count`` images of ``seed``, generating only those not cached yet."""
    root = base_dir / f"seed-{seed}"
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "manifest.jsonl"
    cached: list[dict[str, object]] = []
    if manifest.exists():
        with manifest.open() as f:
            for line in f:
                try:
                    cached.append(json.loads(line))
                except ValueError:  # a torn last line from an interrupted build: regenerate from there
                    break
        # Only trust a prefix that is contiguous and still on disk.
        good = 0
        for good, row in enumerate(cached):  # noqa: B007 - the index is the result
            if row["i"] != good or not (root / str(row["path"])).exists():
                break
        else:
            good = len(cached)
        if good < len(cached):
            cached = cached[:good]
            manifest.write_text("".join(json.dumps(r) + "\n" for r in cached))
    if len(cached) < count:
        start = len(cached)
        missing = count - start
        t0 = time.monotonic()
        if log:
            print(f"imageset: generating images {start}..{count - 1} under {root}", flush=True)
        chunk = 500
        jobs = [(seed, root, a, min(a + chunk, count)) for a in range(start, count, chunk)]
        workers = processes or min(os.cpu_count() or 1, 4)
        with ProcessPoolExecutor(max_workers=workers) as pool, manifest.open("a") as out:
            for rows in pool.map(_write_range, jobs):  # in order: the manifest stays contiguous
                out.write("".join(json.dumps(r) + "\n" for r in rows))
                out.flush()
                cached.extend(rows)
        if log:
            print(f"imageset: {missing} images in {time.monotonic() - t0:.1f}s", flush=True)
    specs = [ImageSpec(**r) for r in cached[:count]]  # type: ignore[arg-type]
    return ImageSet(root, specs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    images = build_imageset(args.count, seed=args.seed)
    print(f"{images.root}: {images.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
