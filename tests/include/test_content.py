"""Sniffing and verification of bodies: real images generated with Pillow, real broken ones."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from include.harvest.content import inspect_content, sniff
from include.harvest.errors import InvalidContent
from tests.include.conftest import make_image, make_png_bomb

MAX_PIXELS = 50_000_000


def inspect(body: bytes, **options: object) -> tuple[str, str, int | None, int | None]:
    info = inspect_content(
        io.BytesIO(body), len(body), max_pixels=options.pop("max_pixels", MAX_PIXELS), **options
    )  # type: ignore[arg-type]
    return info.content_type, info.extension, info.width, info.height


def encode(fmt: str, size: tuple[int, int], **params: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, fmt, **params)
    return out.getvalue()


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("PNG", ("image/png", "png")),
        ("JPEG", ("image/jpeg", "jpg")),
        ("GIF", ("image/gif", "gif")),
        ("WEBP", ("image/webp", "webp")),
        ("BMP", ("image/bmp", "bmp")),
        ("TIFF", ("image/tiff", "tiff")),
        ("ICO", ("image/x-icon", "ico")),
        ("AVIF", ("image/avif", "avif")),
    ],
)
def test_images_are_recognised_and_measured(fmt: str, expected: tuple[str, str]) -> None:
    body = encode(fmt, (48, 32), **({"sizes": [(48, 32)]} if fmt == "ICO" else {}))
    assert (sniff(body[:2048]).mime, sniff(body[:2048]).extension) == expected
    assert inspect(body) == (*expected, 48, 32)


@pytest.mark.parametrize(
    ("head", "mime"),
    [
        (b"<!DOCTYPE html><html><body>404</body></html>", "text/html"),
        (b"\n  <html lang=en><head>", "text/html"),
        (b"\xef\xbb\xbf<!doctype HTML>\n<p>hi", "text/html"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"),
        (b"<svg width='10'></svg>", "image/svg+xml"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"just some text, utf-8: \xc3\xa9", "text/plain"),
        (b"\x00\x01\x02binary", "application/octet-stream"),
        (b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heic", "image/heic"),
    ],
)
def test_non_raster_bodies_are_recognised(head: bytes, mime: str) -> None:
    assert sniff(head).mime == mime


def test_html_served_as_jpeg_is_invalid_and_says_so() -> None:
    body = b"<!DOCTYPE html><html><body>Not found</body></html>"
    with pytest.raises(InvalidContent, match=r"text/html, not an image \(declared image/jpeg\).*ACCEPT_ANY"):
        inspect_content(io.BytesIO(body), len(body), max_pixels=MAX_PIXELS, declared_type="image/jpeg")


def test_non_images_are_kept_when_any_content_is_accepted() -> None:
    body = b"%PDF-1.4\n..."
    assert inspect(body, accept_any_content=True) == ("application/pdf", "pdf", None, None)


def test_svg_is_refused_unless_allowed() -> None:
    body = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    with pytest.raises(InvalidContent, match="HARVEST_ALLOW_SVG"):
        inspect(body)
    assert inspect(body, allow_svg=True) == ("image/svg+xml", "svg", None, None)


def test_empty_body_is_invalid() -> None:
    with pytest.raises(InvalidContent, match="empty body"):
        inspect(b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "AVIF"])
def test_truncated_images_are_invalid(fmt: str) -> None:
    body = make_image(fmt, (300, 200), seed=9)
    with pytest.raises(InvalidContent, match="truncated|not a readable image"):
        inspect(body[: len(body) * 2 // 3])


def test_jpeg_with_bytes_after_the_end_marker_is_fine() -> None:
    body = make_image("JPEG", (120, 80), seed=3) + b"\x00" * 200  # some cameras/CDNs append padding
    assert inspect(body) == ("image/jpeg", "jpg", 120, 80)


def test_png_declaring_30000_by_30000_is_refused_without_decoding() -> None:
    with pytest.raises(InvalidContent, match=r"30000 x 30000 = 900,000,000 pixels.*decompression bomb"):
        inspect(make_png_bomb(30000, 30000))


def test_pixel_cap_applies_to_formats_read_by_pillow() -> None:
    body = encode("JPEG", (400, 300))
    with pytest.raises(InvalidContent, match=r"400 x 300 = 120,000 pixels, over the 100,000 pixel cap"):
        inspect(body, max_pixels=100_000)


def test_garbage_after_a_magic_number_is_invalid() -> None:
    body = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDX" + b"\x00" * 40
    with pytest.raises(InvalidContent, match="not a readable image"):
        inspect(body)
