"""Images (PNG, JPEG, TIFF, BMP, GIF, WebP): their text read by OCR; each frame of a multi-page TIFF is a page."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from enclave.knowledge.loaders import ocr
from enclave.knowledge.loaders.base import Document, LoadError, ReadContext, Section

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


def read_image(name: str, data: bytes, ctx: ReadContext) -> Document:
    why = ocr.unavailable(ctx)
    if why:
        raise LoadError(f"{name}: {why}: an image's text needs OCR: {ocr.NEED_OCR}")
    image = _open(name, data)
    # Only TIFF's frames are pages; an animated GIF's or WebP's are moments of one picture: its first is read.
    frames = getattr(image, "n_frames", 1) if image.format == "TIFF" else 1
    if frames > ctx.limits.max_pages:
        raise LoadError(f"{name}: {frames} pages, over the limit of {ctx.limits.max_pages} (ingest.max_pages)")
    result = ocr.read_pages(name, _frames(name, image, frames), frames, ctx)
    if result.failed:
        if not any(result.texts.values()):
            raise LoadError(f"{name}: OCR read nothing: {result.failures()}")
        log.warning("%s: pages not read by OCR: %s", name, result.failures())
    sections = [Section(result.texts[k], page=k if frames > 1 else None) for k in sorted(result.texts)]
    read = sum(1 for text in result.texts.values() if text)
    return Document(Path(name).stem.replace("_", " ").replace("-", " "), "image", sections, ocr_pages=read)


def _open(name: str, data: bytes) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise LoadError(f"{name}: too many pixels to read ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise LoadError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from exc


def _frames(name: str, image: Image.Image, frames: int) -> Iterator[tuple[int, bytes, int | None]]:
    """Each frame decoded when the OCR pool asks for it, so a long TIFF is never in memory whole."""
    from PIL import Image

    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # Pillow checks the first frame when opening; this, every frame
    for k in range(frames):
        try:
            image.seek(k)
            if limit and image.width * image.height > limit:
                raise LoadError(f"{name}: page {k + 1} is {image.width}×{image.height} pixels, too many to read")
            pgm = ocr.to_pgm(image)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise LoadError(f"{name}: page {k + 1} is not a readable image ({type(exc).__name__}: {exc})") from exc
        yield k + 1, pgm, _dpi(image)


def _dpi(image: Image.Image) -> int | None:
    """The resolution the image says it was scanned at, when it says one Tesseract can use; else Tesseract
    estimates it from the size of the letters."""
    dpi = image.info.get("dpi")
    try:
        value = round(float(dpi[0])) if dpi else 0
    except (TypeError, ValueError, IndexError):
        return None
    return value if 70 <= value <= 2400 else None
