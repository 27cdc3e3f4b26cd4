"""What a downloaded body really is: sniffed from its bytes, then verified with Pillow.

Headers and URL extensions lie (HTML error pages served as ``image/jpeg`` are common), so the type
comes from magic numbers. Images are opened with Pillow, which reads only the header: the pixel
count is checked against ``max_pixels`` *before* anything is decoded (decompression bombs are never
decoded). Truncation is checked the cheap way first (the format's end marker or declared length);
only when that is inconclusive is the image decoded, at reduced scale for JPEG.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import IO

from PIL import Image, UnidentifiedImageError

from include.harvest.errors import InvalidContent

__all__ = ["ContentInfo", "Sniffed", "inspect_content", "sniff"]

HEAD_BYTES = 2048  # enough for every magic number and for text sniffing
TAIL_BYTES = 64  # where end markers (JPEG EOI, PNG IEND, GIF trailer) are looked for


@dataclass(frozen=True, slots=True)
class Sniffed:
    """The type found in the first bytes: MIME type, canonical extension, and Pillow format."""

    mime: str
    extension: str
    pillow_format: str | None = None  # None: not a raster image Pillow should verify


@dataclass(frozen=True, slots=True)
class ContentInfo:
    """What was accepted: sniffed type, extension for storage, and the image's size when known."""

    content_type: str
    extension: str
    width: int | None = None
    height: int | None = None


JPEG = Sniffed("image/jpeg", "jpg", "JPEG")
PNG = Sniffed("image/png", "png", "PNG")
GIF = Sniffed("image/gif", "gif", "GIF")
WEBP = Sniffed("image/webp", "webp", "WEBP")
BMP = Sniffed("image/bmp", "bmp", "BMP")
TIFF = Sniffed("image/tiff", "tiff", "TIFF")
ICO = Sniffed("image/x-icon", "ico", "ICO")
AVIF = Sniffed("image/avif", "avif", "AVIF")
HEIC = Sniffed("image/heic", "heic", None)  # no HEIF decoder in the stack: recognised, not verified
SVG = Sniffed("image/svg+xml", "svg")
HTML = Sniffed("text/html", "html")
PDF = Sniffed("application/pdf", "pdf")
TEXT = Sniffed("text/plain", "txt")
BINARY = Sniffed("application/octet-stream", "bin")

_HTML_STARTS = tuple(
    f"<{tag}".encode()
    for tag in (
        "!doctype html", "html", "head", "body", "script", "iframe", "h1", "div", "font", "table",
        "a", "style", "title", "b", "br", "p", "!--",
    )
)  # fmt: skip
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIC_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


def sniff(head: bytes) -> Sniffed:
    """The type of a body from its first bytes (see ``HEAD_BYTES``), never from headers or URL."""
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return TIFF
    if (
        head[:2] == b"BM"
        and len(head) >= 18
        and struct.unpack_from("<I", head, 14)[0] in (12, 40, 52, 56, 64, 108, 124)
    ):
        return BMP
    if head[4:8] == b"ftyp":
        brands = {head[i : i + 4] for i in range(8, min(len(head), struct.unpack_from(">I", head)[0]), 4)}
        if brands & _AVIF_BRANDS:
            return AVIF
        if brands & _HEIC_BRANDS:
            return HEIC
    if head[:4] == b"\x00\x00\x01\x00" and len(head) > 6 and head[4] | head[5]:
        return ICO
    if head.startswith(b"%PDF-"):
        return PDF
    return _sniff_text(head)


def _sniff_text(head: bytes) -> Sniffed:
    if b"\x00" in head:
        return BINARY
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if text.startswith(b"<svg") or (
        text.startswith((b"<?xml", b"<!doctype svg", b"<!--")) and b"<svg" in text
    ):
        return SVG
    for start in _HTML_STARTS:
        if text.startswith(start) and text[len(start) : len(start) + 1] in (b" ", b">", b"\t", b"\n", b"\r"):
            return HTML
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sample is still text.
        if exc.start < len(head) - 3:
            return BINARY
    return TEXT


def inspect_content(
    stream: IO[bytes],
    size: int,
    *,
    max_pixels: int,
    accept_any_content: bool = False,
    allow_svg: bool = False,
    declared_type: str | None = None,
) -> ContentInfo:
    """Sniff and verify a complete body held in ``stream`` (seekable, ``size`` bytes long).

    Raise :class:`InvalidContent` when it is not an acceptable image (or, with
    ``accept_any_content``, when it claims to be an image but is broken).
    """
    stream.seek(0)
    head = stream.read(HEAD_BYTES)
    kind = sniff(head)
    declared = f" (declared {declared_type})" if declared_type else ""
    if size == 0:
        raise InvalidContent(f"server sent an empty body{declared}")
    if kind is SVG:
        if allow_svg or accept_any_content:
            return ContentInfo(kind.mime, kind.extension)
        raise InvalidContent(
            f"server sent an SVG image{declared}: SVG can carry scripts and is refused unless "
            "HARVEST_ALLOW_SVG=true"
        )
    if kind.pillow_format is None:
        if accept_any_content:
            return ContentInfo(kind.mime, kind.extension)
        what = (
            "an HEIC image, which cannot be verified here" if kind is HEIC else f"{kind.mime}, not an image"
        )
        raise InvalidContent(
            f"server sent {what}{declared}; set HARVEST_ACCEPT_ANY_CONTENT=true to keep non-images"
        )
    _check_declared_pixels(head, kind, max_pixels)
    width, height = _verify_image(stream, size, kind, max_pixels=max_pixels)
    return ContentInfo(kind.mime, kind.extension, width, height)


def _declared_size(head: bytes, kind: Sniffed) -> tuple[int, int] | None:
    """Width and height read straight from the header, for formats where that is a fixed offset."""
    try:
        if kind is PNG and head[12:16] == b"IHDR":
            return struct.unpack_from(">II", head, 16)
        if kind is GIF:
            return struct.unpack_from("<HH", head, 6)
        if kind is BMP:
            width, height = struct.unpack_from("<ii", head, 18)
            return abs(width), abs(height)
        if kind is WEBP and head[12:16] == b"VP8X":
            return (int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1)
    except struct.error:
        return None
    return None


def _pixel_error(kind: Sniffed, width: int, height: int, max_pixels: int) -> InvalidContent:
    return InvalidContent(
        f"{kind.mime} declares {width} x {height} = {width * height:,} pixels, over the "
        f"{max_pixels:,} pixel cap (HARVEST_MAX_PIXELS): refused as a possible decompression bomb"
    )


def _check_declared_pixels(head: bytes, kind: Sniffed, max_pixels: int) -> None:
    # Before Pillow: it refuses giant images itself, but with its own (global) limit and message.
    declared = _declared_size(head, kind)
    if declared is not None and declared[0] * declared[1] > max_pixels:
        raise _pixel_error(kind, declared[0], declared[1], max_pixels)


def _verify_image(stream: IO[bytes], size: int, kind: Sniffed, *, max_pixels: int) -> tuple[int, int]:
    assert kind.pillow_format is not None
    stream.seek(0)
    try:
        image = Image.open(stream, formats=[kind.pillow_format])
    except Image.DecompressionBombError as exc:
        raise InvalidContent(
            f"{kind.mime} refused as a possible decompression bomb (over the HARVEST_MAX_PIXELS cap of "
            f"{max_pixels:,} pixels and Pillow's own limit): {exc}"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as exc:
        raise InvalidContent(f"body starts like {kind.mime} but is not a readable image: {exc}") from exc
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InvalidContent(f"{kind.mime} declares an empty size {width} x {height}")
        if width * height > max_pixels:
            raise _pixel_error(kind, width, height, max_pixels)
        if not _looks_complete(stream, size, kind):
            # Inconclusive end marker: decode (the pixel count is already bounded) to find out.
            try:
                if kind is JPEG:
                    image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
            except (OSError, SyntaxError, ValueError, struct.error) as exc:
                raise InvalidContent(
                    f"{kind.mime} is truncated or corrupt after {size} bytes ({exc}): the server or a proxy "
                    "cut the body; retry later or check the source"
                ) from exc
    return width, height


def _looks_complete(stream: IO[bytes], size: int, kind: Sniffed) -> bool:
    """True when the format's end marker or declared length shows the body is whole."""
    if kind is WEBP or kind is BMP:
        stream.seek(0)
        header = stream.read(8)
        declared = struct.unpack_from("<I", header, 4 if kind is WEBP else 2)[0] + (8 if kind is WEBP else 0)
        return declared <= size if declared else False
    stream.seek(max(0, size - TAIL_BYTES))
    tail = stream.read(TAIL_BYTES)
    if kind is JPEG:
        return b"\xff\xd9" in tail
    if kind is PNG:
        return b"IEND\xaeB`\x82" in tail
    if kind is GIF:
        return tail.rstrip(b"\x00\r\n ").endswith(b";")
    if kind is AVIF:
        return _boxes_fill(stream, size)
    return False  # TIFF, ICO: no cheap marker; decoding decides


def _boxes_fill(stream: IO[bytes], size: int) -> bool:
    """True when the top-level ISO-BMFF boxes (AVIF, HEIC) add up to exactly ``size`` bytes."""
    offset = 0
    for _ in range(1000):  # a real file has a handful of top-level boxes
        if offset == size:
            return True
        stream.seek(offset)
        header = stream.read(16)
        if len(header) < 8:
            return False
        box_size = struct.unpack_from(">I", header)[0]
        if box_size == 1 and len(header) == 16:
            box_size = struct.unpack_from(">Q", header, 8)[0]
        elif box_size == 0:
            return True  # "extends to the end of the file"
        if box_size < 8:
            return False
        offset += box_size
    return False
