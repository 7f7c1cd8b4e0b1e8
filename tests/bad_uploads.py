"""A catalogue of awkward uploads: each either must be refused with a clear message or must
be accepted (and normalised). Shared by the API tests and the product-save tests."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Upload:
    """One kind of upload, how to make it, and what must happen to it."""

    kind: str
    filename: str
    make: Callable[[Path], bytes]  # gets a real photo's path
    refused: str | None  # regex of the message, or None when it must be accepted


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _photo(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares a huge canvas (its pixels are never there)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _animated_gif(path: Path) -> bytes:
    first = _photo(path).resize((120, 120))
    frames = [first, first.transpose(Image.Transpose.FLIP_LEFT_RIGHT), Image.new("RGB", (120, 120))]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _exif_rotated(path: Path) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(_photo(path).rotate(90, expand=True), "JPEG", exif=exif)


def _sixteen_bit(path: Path) -> bytes:
    grey = np.asarray(_photo(path).convert("L"), dtype=np.uint16) * 257
    return _save(Image.fromarray(grey), "PNG")


def _transparent_palette(path: Path) -> bytes:
    image = _photo(path).resize((200, 200)).convert("P", palette=Image.Palette.ADAPTIVE)
    return _save(image, "PNG", transparency=0)


UPLOADS = [
    Upload("zero bytes", "empty.jpg", lambda p: b"", r"empty"),
    Upload("truncated JPEG", "cut.jpg", lambda p: p.read_bytes()[:3000], r"truncated or corrupt"),
    Upload("PNG decompression bomb", "bomb.png", lambda p: _png_header_only(11_000, 11_000),
           r"megapixels|too many pixels"),
    Upload("30,000 px side, small file", "wide.png", lambda p: _png_header_only(30_000, 64),
           r"no side may exceed"),
    Upload("text renamed .jpg", "notes.jpg", lambda p: b"shopping list: milk, eggs\n" * 20,
           r"not an image"),
    Upload("SVG", "logo.svg", lambda p: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" '
           b'height="10"><rect width="10" height="10"/></svg>', r"SVG"),
    Upload("HTML", "page.jpg", lambda p: b"<!DOCTYPE html><html><body>hi</body></html>",
           r"HTML page"),
    Upload("PDF", "doc.pdf", lambda p: b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF",
           r"PDF document"),
    Upload("ZIP / office document", "doc.docx", lambda p: b"PK\x03\x04" + b"\x00" * 100,
           r"ZIP archive"),
    Upload("1x1 pixel", "dot.png", lambda p: _save(Image.new("RGB", (1, 1), "red"), "PNG"),
           r"at least 16 pixels"),
    Upload("over the size limit", "huge.jpg",
           lambda p: _save(_photo(p), "JPEG") + b"\x00" * (4 * 1024 * 1024), r"larger than"),
    Upload("animated GIF", "anim.gif", _animated_gif, None),
    Upload("CMYK JPEG", "cmyk.jpg", lambda p: _save(_photo(p).convert("CMYK"), "JPEG"), None),
    Upload("16-bit PNG", "deep.png", _sixteen_bit, None),
    Upload("EXIF-rotated JPEG", "rotated.jpg", _exif_rotated, None),
    Upload("grayscale JPEG", "grey.jpg", lambda p: _save(_photo(p).convert("L"), "JPEG"), None),
    Upload("palette PNG with transparency", "palette.png", _transparent_palette, None),
    Upload("WebP", "photo.webp", lambda p: _save(_photo(p), "WEBP"), None),
]
