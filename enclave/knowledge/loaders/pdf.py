"""PDF: each page's text layer (pdfium), its ruled tables as Markdown tables (pdfplumber), scanned pages by OCR."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclave.knowledge.loaders import ocr
from enclave.knowledge.loaders.base import Document, LoadError, ReadContext, ReadLimits, Section, rows_to_sections

if TYPE_CHECKING:
    import pypdfium2

log = logging.getLogger(__name__)

# pdfium is not thread-safe: one call into it at a time in this process, whichever document it is for.
_PDFIUM = threading.Lock()
# A page whose text layer has fewer characters than this, and something drawn on it, is read by OCR.
MIN_TEXT = 20
# Distinct ruling positions (rounded to 2 pt) a page needs, across and down, before pdfplumber looks for tables:
# three of each make at least a 2×2 grid. Boxes around examples and title rules have two.
MIN_RULES = 3
# Titles that PDF writers put in when they were given none.
_NO_TITLE = {"", "untitled", "(anonymous)", "anonymous"}


@dataclass
class _Page:
    number: int
    text: str
    ruled: bool  # drawn lines enough for a table: worth pdfplumber's time
    drawn: bool  # an image or a path: a page with no text and nothing drawn is blank, not scanned

    @property
    def scanned(self) -> bool:
        return self.drawn and len(self.text.strip()) < MIN_TEXT


def read_pdf(name: str, data: bytes, ctx: ReadContext) -> Document:
    pdf = _open(name, data, ctx)
    try:
        pages = []
        for i in range(len(pdf)):
            ctx.progress(f"reading page {i + 1}/{len(pdf)}")
            pages.append(_read_page(pdf, i))
        title = _title(pdf) or Path(name).stem.replace("_", " ").replace("-", " ")
        by_page = {p.number: [Section(p.text, page=p.number)] for p in pages}
        by_page.update(_tables(name, data, [p for p in pages if p.ruled and not p.scanned], ctx))
        readable = any(p.text for p in pages if not p.scanned)
        scanned, ocr_pages = _scanned(name, pdf, [p for p in pages if p.scanned], readable, ctx)
        by_page.update(scanned)
    finally:
        with _PDFIUM:
            pdf.close()
    return Document(title, "pdf", [s for number in sorted(by_page) for s in by_page[number]], ocr_pages=ocr_pages)


def _open(name: str, data: bytes, ctx: ReadContext) -> pypdfium2.PdfDocument:
    import pypdfium2
    import pypdfium2.raw as pdfium_c

    reasons = {
        pdfium_c.FPDF_ERR_PASSWORD: "the PDF is password-protected",
        pdfium_c.FPDF_ERR_SECURITY: "the PDF is encrypted with an unsupported method",
        pdfium_c.FPDF_ERR_FORMAT: "not a valid PDF (corrupt or truncated)",
        pdfium_c.FPDF_ERR_FILE: "not a valid PDF (corrupt or truncated)",
    }
    try:
        with _PDFIUM:
            pdf = pypdfium2.PdfDocument(data)
            count = len(pdf)
    except pypdfium2.PdfiumError as exc:
        raise LoadError(f"{name}: {reasons.get(exc.err_code or -1, f'could not be opened: {exc}')}") from exc
    if count > ctx.limits.max_pages:
        with _PDFIUM:
            pdf.close()
        raise LoadError(f"{name}: {count} pages, over the limit of {ctx.limits.max_pages} (ingest.max_pages)")
    return pdf


def _title(pdf: pypdfium2.PdfDocument) -> str:
    with _PDFIUM:
        title = str(pdf.get_metadata_dict().get("Title") or "").strip()
    return "" if title.lower() in _NO_TITLE else title


def _read_page(pdf: pypdfium2.PdfDocument, index: int) -> _Page:
    with _PDFIUM:
        page = pdf[index]
        try:
            textpage = page.get_textpage()
            text = textpage.get_text_range()
            textpage.close()
            ruled, drawn = _drawing(page)
        finally:
            page.close()
    return _Page(index + 1, _clean(text), ruled, drawn)


def _clean(text: str) -> str:
    """pdfium's text: CRLF lines, U+FFFE where a word was hyphenated at a line's end."""
    return text.replace("\ufffe\r\n", "").replace("\ufffe", "").replace("\r\n", "\n").replace("\r", "\n").strip()


def _drawing(page: pypdfium2.PdfPage) -> tuple[bool, bool]:
    """(ruled, drawn): whether the page's paths rule enough rows and columns for a table, and whether anything
    but text is drawn on it. Reads only the objects' bounds, in C, so a text page costs next to nothing."""
    import pypdfium2.raw as pdfium_c

    xs: set[int] = set()
    ys: set[int] = set()
    drawn = False
    for obj in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_PATH, pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=4):
        drawn = True
        if obj.type != pdfium_c.FPDF_PAGEOBJ_PATH:
            continue
        left, bottom, right, top = obj.get_bounds()
        wide, tall = right - left >= 15, top - bottom >= 10
        if wide and tall and pdfium_c.FPDFPath_CountSegments(obj.raw) > 8:
            return True, True  # a whole grid drawn as one path
        if wide:
            ys.update({round(bottom / 2), round(top / 2)} if tall else {round((bottom + top) / 4)})
        if tall:
            xs.update({round(left / 2), round(right / 2)} if wide else {round((left + right) / 4)})
        if len(xs) >= MIN_RULES and len(ys) >= MIN_RULES:
            return True, True
    return False, drawn


def _tables(name: str, data: bytes, pages: list[_Page], ctx: ReadContext) -> dict[int, list[Section]]:
    """The ruled pages that hold real tables, as their text around each table and the tables as Markdown."""
    if not pages:
        return {}
    import pdfplumber

    out: dict[int, list[Section]] = {}
    carry: tuple[int, list[str]] | None = None  # (page, header) of a table that ran to the foot of its page
    with pdfplumber.open(io.BytesIO(data)) as doc:
        for p in pages:
            ctx.progress(f"reading tables on page {p.number}")
            page = doc.pages[p.number - 1]
            header = carry[1] if carry and carry[0] == p.number - 1 else None
            try:
                found = _page_tables(page, p.number, ctx.limits, header)
            except Exception as exc:  # a table is a bonus: the page keeps pdfium's text
                log.warning("%s: page %d: tables not read (%s: %s)", name, p.number, type(exc).__name__, exc)
                found = None
            finally:
                page.close()
            carry = (p.number, found[1]) if found and found[1] else None
            if found:
                out[p.number] = found[0]
    return out


def _page_tables(
    page: Any, number: int, limits: ReadLimits, header_above: list[str] | None
) -> tuple[list[Section], list[str] | None] | None:
    """The page top to bottom: the text between its tables, and each table (first row the header), with the
    header of the table that runs on to the next page; None when pdfplumber finds no table of at least two rows
    and two columns. A table at the head of the page goes on with the one that ended the page before
    (`header_above`), when it has as many columns and does not repeat that header itself."""
    tables = []
    for table in page.find_tables():
        rows = [[" ".join((c or "").split()) for c in row] for row in table.extract()]
        rows = [r for r in rows if any(r)]
        if len(rows) >= 2 and max(len(r) for r in rows) >= 2:
            tables.append((table.bbox, rows))
    if not tables:
        return None
    tables.sort(key=lambda t: t[0][1])
    boxes = [bbox for bbox, _ in tables]
    out: list[Section] = []
    above = 0.0
    for k, (bbox, rows) in enumerate(tables):
        band = _text_band(page, boxes, above, bbox[1], number)
        width = max(len(r) for r in rows)
        if k == 0 and _footer(band) and header_above and len(header_above) == width and rows[0] != header_above:
            rows = [header_above, *rows]
        out += band + rows_to_sections(rows[1:], rows[0], "", limits, number)
        above = bbox[3]
    tail = _text_band(page, boxes, above, float(page.height) + 1, number)
    return out + tail, (tables[-1][1][0] if _footer(tail) else None)


def _footer(band: list[Section]) -> bool:
    """No text, or as little as a running header or a page number: a table next to it reaches the page's edge."""
    return sum(len(s.text) for s in band) < MIN_TEXT


def _text_band(page: Any, boxes: list[tuple[float, ...]], top: float, bottom: float, number: int) -> list[Section]:
    """The page's text between two heights, leaving out what lies inside a table."""

    def outside(obj: dict[str, Any]) -> bool:
        x, y = (obj["x0"] + obj["x1"]) / 2, (obj["top"] + obj["bottom"]) / 2
        return top <= y < bottom and not any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in boxes)

    text = page.filter(outside).extract_text().strip()
    return [Section(text, page=number)] if text else []


def _scanned(
    name: str, pdf: pypdfium2.PdfDocument, pages: list[_Page], readable: bool, ctx: ReadContext
) -> tuple[dict[int, list[Section]], int]:
    """The pages without a text layer, read by OCR, and how many OCR gave text to. Where OCR cannot run or fails,
    they are kept as they are and named in a warning, unless the document has no other text (`readable`): then a
    LoadError says why."""
    if not pages:
        return {}, 0
    why = ocr.unavailable(ctx)
    numbers = ", ".join(str(p.number) for p in pages)
    if why:
        if not readable:
            raise LoadError(f"{name}: no page has a text layer and {why}: scanned pages need OCR: {ocr.NEED_OCR}")
        log.warning("%s: pages %s have no text layer and were not read: %s (%s)", name, numbers, why, ocr.NEED_OCR)
        return {}, 0
    result = ocr.read_pages(name, _renders(pdf, pages, ctx.limits.ocr_dpi), len(pages), ctx)
    if result.failed:
        if not readable and not any(result.texts.values()):
            raise LoadError(f"{name}: OCR read no page: {result.failures()}")
        log.warning("%s: pages not read by OCR: %s", name, result.failures())
    out, read = {}, 0
    for p in pages:
        text = result.texts.get(p.number, "")
        read += len(text) > len(p.text)
        out[p.number] = [Section(text if len(text) > len(p.text) else p.text, page=p.number)]
    return out, read


def _renders(pdf: pypdfium2.PdfDocument, pages: list[_Page], dpi: int) -> Iterator[tuple[int, bytes, int | None]]:
    """Each page rendered in grey when the OCR pool asks for it, one at a time, never the whole document."""
    for p in pages:
        with _PDFIUM:
            page = pdf[p.number - 1]
            try:
                width, height = page.get_size()
                scale = min(dpi / 72, (ocr.MAX_PIXELS / max(width * height, 1.0)) ** 0.5)
                bitmap = page.render(scale=scale, grayscale=True)
                pgm = ocr.to_pgm(bitmap.to_pil())  # the image shares the bitmap's memory: encode before closing
                bitmap.close()
            finally:
                page.close()
        yield p.number, pgm, round(scale * 72)
