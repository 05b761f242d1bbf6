"""Tesseract OCR: page images to text through `tesseract` processes, a few at once, each within a timeout."""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from enclave.knowledge.loaders.base import LoadError, ReadContext

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

NEED_OCR = "install tesseract-ocr (apt) or enable ingest.ocr"
# Larger page images are scaled down before OCR: about A0 at 200 dpi, or A4 at 600 dpi, in 8-bit grey (40 MB).
MAX_PIXELS = 40_000_000
# Tesseract's OpenMP threads fight each other when several tesseract processes run at once: one thread each.
_ENV = {**os.environ, "OMP_THREAD_LIMIT": "1"}


@dataclass
class OcrResult:
    """What OCR read, by page number, and the pages it could not read with the reason."""

    texts: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)

    def failures(self) -> str:
        return "; ".join(f"page {p}: {why}" for p, why in sorted(self.failed.items()))


class _OcrFailed(Exception):
    pass


def unavailable(ctx: ReadContext) -> str | None:
    """Why OCR cannot run here (off, or no tesseract), or None when it can."""
    if not ctx.limits.ocr:
        return "OCR is off (ingest.ocr)"
    if shutil.which("tesseract") is None:
        return "tesseract is not installed"
    return None


def debian_package(language: str) -> str:
    """Debian's package holding a Tesseract language: chi_sim → tesseract-ocr-chi-sim."""
    return "tesseract-ocr-" + language.lower().replace("_", "-").replace("/", "-")


def languages(ctx: ReadContext) -> list[str]:
    return [lang.strip() for lang in ctx.limits.ocr_languages.split("+") if lang.strip()] or ["eng"]


def check_languages(name: str, ctx: ReadContext) -> None:
    """LoadError naming each language in ingest.ocr_languages that Tesseract has no data for, and its package."""
    try:
        proc = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True, timeout=30, env=_ENV)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LoadError(f"{name}: could not run tesseract --list-langs: {exc}") from exc
    listed = (proc.stdout + "\n" + proc.stderr).splitlines()
    have = {line.strip() for line in listed if line.strip() and not line.startswith("List of")}
    missing = [lang for lang in languages(ctx) if lang not in have]
    if missing:
        packages = " ".join(debian_package(lang) for lang in missing)
        raise LoadError(
            f"{name}: Tesseract has no language data for {', '.join(repr(m) for m in missing)}"
            f" (ingest.ocr_languages): install {packages} (apt)"
        )


def to_pgm(image: Image.Image) -> bytes:
    """The image as 8-bit grey PGM, the cheapest format to hand Tesseract (no compression), scaled down if huge."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    elif image.mode.startswith("I"):  # 16-bit grey: to 0..255, not clipped
        image = image.convert("I").point(lambda v: v / 256)
    grey = image.convert("L")
    pixels = grey.width * grey.height
    if pixels > MAX_PIXELS:
        factor = (MAX_PIXELS / pixels) ** 0.5
        grey = grey.resize((max(1, int(grey.width * factor)), max(1, int(grey.height * factor))))
    out = io.BytesIO()
    grey.save(out, format="PPM")
    return out.getvalue()


def _tesseract(pgm: bytes, langs: str, dpi: int | None, timeout: float) -> str:
    """One page through one tesseract process; subprocess.run kills it when the timeout passes."""
    cmd = ["tesseract", "stdin", "stdout", "-l", langs, "--psm", "3"]
    if dpi:
        cmd += ["--dpi", str(dpi)]
    proc = subprocess.run(cmd, input=pgm, capture_output=True, timeout=timeout, env=_ENV)
    if proc.returncode != 0:
        last = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise _OcrFailed(f"tesseract failed: {last[0]}")
    return proc.stdout.decode("utf-8", "replace").replace("\f", "").strip()


def read_pages(name: str, pages: Iterable[tuple[int, bytes, int | None]], total: int, ctx: ReadContext) -> OcrResult:
    """OCR of (page number, PGM, dpi) pages through ocr_workers tesseract processes. Pages are taken from the
    iterable only as a worker comes free, so at most ocr_workers + 1 page images are held at once."""
    check_languages(name, ctx)
    workers = ctx.limits.ocr_workers or os.cpu_count() or 1
    langs, timeout = "+".join(languages(ctx)), ctx.limits.ocr_timeout_s
    result = OcrResult()
    running: dict[Future[str], int] = {}
    with ThreadPoolExecutor(workers, thread_name_prefix="ocr") as pool:
        for page, pgm, dpi in pages:
            _collect(running, workers - 1, result, total, ctx)
            running[pool.submit(_tesseract, pgm, langs, dpi, timeout)] = page
        _collect(running, 0, result, total, ctx)
    return result


def _collect(running: dict[Future[str], int], keep: int, result: OcrResult, total: int, ctx: ReadContext) -> None:
    """Wait until at most `keep` pages are still being read, recording each finished page."""
    while len(running) > keep:
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            page = running.pop(future)
            try:
                result.texts[page] = future.result()
            except subprocess.TimeoutExpired:
                result.failed[page] = f"OCR took over {ctx.limits.ocr_timeout_s:g} s (ingest.ocr_timeout_s)"
            except (_OcrFailed, OSError) as exc:
                result.failed[page] = str(exc)
            ctx.progress(f"OCR page {len(result.texts) + len(result.failed)}/{total}")
