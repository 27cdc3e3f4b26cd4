"""Regenerate the bundled demo images in ``data/demo/site/`` (committed; run only to change them).

Deterministic: the same seed gives the same bytes, so the demo's sha256s are stable.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

SITE = Path(__file__).resolve().parents[1] / "data" / "demo" / "site"
FORMATS = [("jpg", "JPEG"), ("png", "PNG"), ("gif", "GIF"), ("webp", "WEBP")]


def make_image(rng: random.Random, width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(20, width), y0 + rng.randrange(20, height)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    return image


def main() -> None:
    rng = random.Random(2026)
    images = SITE / "images"
    images.mkdir(parents=True, exist_ok=True)
    for index in range(24):
        extension, pil_format = FORMATS[index % len(FORMATS)]
        width, height = rng.choice([(320, 240), (640, 480), (400, 400), (800, 600), (240, 320)])
        make_image(rng, width, height).save(images / f"photo-{index:02d}.{extension}", pil_format)
    # Not everything on the web is what its name says: an HTML page behind a .jpg name.
    (SITE / "images" / "not-really.jpg").write_text("<!doctype html><html><body>Moved!</body></html>\n")


if __name__ == "__main__":
    main()
