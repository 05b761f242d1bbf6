"""PDF tables (records, or Markdown), scanned PDFs and images through Tesseract, the errors around them: real files."""

from __future__ import annotations

import io
import logging
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.pdfgen import canvas
from reportlab.platypus import Paragraph, SimpleDocTemplate, Table, TableStyle

from enclave.knowledge.chunking import chunk_document
from enclave.knowledge.loaders import LoadError, ReadContext, ReadLimits, load

NEED_OCR = "scanned pages need OCR: install tesseract-ocr (apt) or enable ingest.ocr"
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


@pytest.fixture
def tesseract() -> None:
    if shutil.which("tesseract") is None:
        pytest.skip("tesseract is not installed here: `make ocr` installs it (Debian's tesseract-ocr)")


def ctx(progress: list[str] | None = None, **limits: object) -> ReadContext:
    seen = progress if progress is not None else []
    return ReadContext(ReadLimits(**limits), seen.append)  # type: ignore[arg-type]


# ---- files made here ------------------------------------------------------------------------------------------


def table_pdf(rows: int = 2) -> bytes:
    styles = getSampleStyleSheet()
    data = [["Region", "Revenue", "Owner"], ["North", "1200", "Alice"], ["South", "950", "Bob"]]
    data += [[f"Zone {k}", str(100 + k), f"Person {k}"] for k in range(rows - 2)]
    table = Table(data)
    table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.black)]))
    out = io.BytesIO()
    story = [
        Paragraph("Quarterly results", styles["Heading1"]),
        Paragraph("The introduction explains how revenue is counted.", styles["BodyText"]),
        table,
        Paragraph("Closing remarks follow the table.", styles["BodyText"]),
    ]
    SimpleDocTemplate(out, pagesize=A4).build(story)
    return out.getvalue()


def text_pdf(pages: list[str], box: bool = False) -> bytes:
    out = io.BytesIO()
    c = canvas.Canvas(out, pagesize=A4)
    for text in pages:
        c.drawString(72, 760, text)
        if box:
            c.rect(60, 740, 450, 40)
        c.showPage()
    c.save()
    return out.getvalue()


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.truetype(str(DEJAVU), size) if DEJAVU.exists() else ImageFont.load_default(size=size)


def scan(lines: list[str], mode: str = "L") -> Image.Image:
    """A page as a scanner would give it: only pixels, dark text on a light ground."""
    image = Image.new(mode, (1400, 130 + 70 * len(lines)), "white" if mode != "RGBA" else (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for k, line in enumerate(lines):
        draw.text((70, 70 + 70 * k), line, fill="black", font=font(36))
    return image


def scanned_pdf(*pages: list[str]) -> bytes:
    images = [scan(lines) for lines in pages]
    out = io.BytesIO()
    images[0].save(out, format="PDF", save_all=True, append_images=images[1:], resolution=200)
    return out.getvalue()


def mixed_pdf() -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for part in (text_pdf(["The text page says the cluster has three nodes."]), scanned_pdf(SCAN_2)):
        for page in PdfReader(io.BytesIO(part)).pages:
            writer.add_page(page)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


SCAN_1 = ["Backups are kept for ninety days.", "The retention policy covers invoices."]
SCAN_2 = ["Firewall rules are reviewed monthly.", "Every change needs an approval."]


def words(text: str) -> str:
    return " ".join(text.lower().split())


# ---- tables ---------------------------------------------------------------------------------------------------


def test_a_ruled_table_becomes_a_markdown_table_and_the_text_around_it_stays_text() -> None:
    doc = load("results.pdf", table_pdf(), ctx(table_style="markdown"))
    texts = [s.text for s in doc.sections]
    table = next(t for t in texts if t.startswith("| Region | Revenue | Owner |"))
    assert table.splitlines()[1] == "|---|---|---|"
    assert "| North | 1200 | Alice |" in table.splitlines()
    assert doc.text.count("Alice") == 1 and doc.text.count("Region") == 1  # the table's text is not repeated
    intro, closing = (
        texts.index(next(t for t in texts if "introduction" in t)),
        texts.index(next(t for t in texts if "Closing remarks" in t)),
    )
    assert intro < texts.index(table) < closing  # the page read top to bottom
    assert all(s.page == 1 for s in doc.sections)
    chunk = next(text for text, _ in chunk_document(doc, 800, 0) if "Alice" in text)
    assert chunk.index("| Region | Revenue | Owner |") < chunk.index("| North | 1200 | Alice |")
    records = load("results.pdf", table_pdf(), ctx())  # the default
    assert "Columns: Region | Revenue | Owner\n\nRegion: North; Revenue: 1200; Owner: Alice" in records.text


def test_every_chunk_of_a_long_table_starts_with_its_columns_on_the_next_page_too() -> None:
    doc = load("long.pdf", table_pdf(rows=60), ctx())  # records, the default; the header is not repeated on page 2
    pieces = [(text, meta["page"]) for text, meta in chunk_document(doc, 800, 0) if "Region: Zone " in text]
    chunks = [text for text, _ in pieces]
    assert {page for _, page in pieces} == {1, 2} and len(chunks) >= 3
    assert all(text.startswith("Columns: Region | Revenue | Owner\n\nRegion: ") for text in chunks)
    assert sum(text.count("Region: Zone ") for text in chunks) == 58
    (chunk,) = [text for text in chunks if "Zone 42;" in text]
    assert "Region: Zone 42; Revenue: 142; Owner: Person 42" in chunk.splitlines()


def test_a_long_markdown_table_is_chunked_under_its_header_on_the_next_page_too() -> None:
    doc = load("long.pdf", table_pdf(rows=60), ctx(table_style="markdown"))
    pieces = [(text, meta["page"]) for text, meta in chunk_document(doc, 800, 0) if "| Zone " in text]
    chunks = [text for text, _ in pieces]
    assert {page for _, page in pieces} == {1, 2} and len(chunks) >= 3
    assert all(text.startswith("| Region | Revenue | Owner |\n|---|---|---|") for text in chunks)
    assert sum(text.count("| Zone ") for text in chunks) == 58


def test_a_boxed_paragraph_is_text_not_a_table() -> None:
    doc = load("boxed.pdf", text_pdf(["A note inside a frame, not a table."], box=True), ctx())
    assert doc.text == "A note inside a frame, not a table." and "|" not in doc.text


# ---- scanned PDFs ---------------------------------------------------------------------------------------------


def test_a_scanned_pdf_is_read_by_ocr_page_by_page(tesseract: None) -> None:
    progress: list[str] = []
    doc = load("scan.pdf", scanned_pdf(SCAN_1, SCAN_2), ctx(progress))
    assert [s.page for s in doc.sections] == [1, 2]
    first, second = words(doc.sections[0].text), words(doc.sections[1].text)
    for word in ("backups", "ninety", "retention", "invoices"):
        assert word in first
    for word in ("firewall", "reviewed", "monthly", "approval"):
        assert word in second
    assert [p for p in progress if p.startswith("OCR")] == ["OCR page 1/2", "OCR page 2/2"]
    assert doc.ocr_pages == 2


def test_a_mixed_pdf_keeps_its_text_page_and_reads_its_scanned_one(tesseract: None) -> None:
    progress: list[str] = []
    doc = load("mixed.pdf", mixed_pdf(), ctx(progress, ocr_workers=1))
    assert [s.page for s in doc.sections] == [1, 2]
    assert doc.sections[0].text == "The text page says the cluster has three nodes."
    assert "firewall" in words(doc.sections[1].text) and "approval" in words(doc.sections[1].text)
    assert [p for p in progress if p.startswith("OCR")] == ["OCR page 1/1"]  # the text page is not OCR'd
    assert doc.ocr_pages == 1


def test_with_ocr_off_a_scanned_pdf_is_a_clear_error() -> None:
    with pytest.raises(LoadError, match="scan.pdf: .*OCR is off.*" + re.escape(NEED_OCR)):
        load("scan.pdf", scanned_pdf(SCAN_1), ctx(ocr=False))


def test_with_ocr_off_a_mixed_pdf_keeps_its_text_and_warns_of_the_page_it_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        doc = load("mixed.pdf", mixed_pdf(), ctx(ocr=False))
    assert [s.page for s in doc.sections] == [1]
    assert "three nodes" in doc.text
    assert any("mixed.pdf: pages 2 have no text layer" in r.getMessage() for r in caplog.records)


def test_without_tesseract_a_scanned_pdf_or_an_image_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no tesseract on it
    with pytest.raises(LoadError, match="scan.pdf: .*tesseract is not installed.*" + re.escape(NEED_OCR)):
        load("scan.pdf", scanned_pdf(SCAN_1), ctx())
    png = io.BytesIO()
    scan(SCAN_1).save(png, format="PNG")
    with pytest.raises(LoadError, match=r"note.png: tesseract is not installed.*install tesseract-ocr"):
        load("note.png", png.getvalue(), ctx())


def test_a_language_without_its_data_is_named_with_its_debian_package(tesseract: None) -> None:
    with pytest.raises(LoadError, match=r"scan.pdf: Tesseract has no language data for 'xyz'.*tesseract-ocr-xyz"):
        load("scan.pdf", scanned_pdf(SCAN_1), ctx(ocr_languages="eng+xyz"))


def test_a_page_over_the_ocr_timeout_is_stopped_and_said(tesseract: None) -> None:
    with pytest.raises(LoadError, match=r"scan.pdf: OCR read no page: page 1: OCR took over 0.01 s"):
        load("scan.pdf", scanned_pdf(SCAN_1), ctx(ocr_timeout_s=0.01))


# ---- images ---------------------------------------------------------------------------------------------------


def test_a_png_is_read_by_ocr(tesseract: None) -> None:
    out = io.BytesIO()
    scan(SCAN_1).save(out, format="PNG")
    doc = load("note.png", out.getvalue(), ctx())
    assert doc.kind == "image" and doc.title == "note"
    assert "ninety" in words(doc.text) and "invoices" in words(doc.text)


def test_a_transparent_png_is_read_on_white(tesseract: None) -> None:
    out = io.BytesIO()
    scan(SCAN_2, mode="RGBA").save(out, format="PNG")
    assert "firewall" in words(load("clear.png", out.getvalue(), ctx()).text)


def test_each_frame_of_a_tiff_is_a_page(tesseract: None) -> None:
    out = io.BytesIO()
    scan(SCAN_1).save(out, format="TIFF", save_all=True, append_images=[scan(SCAN_2)], dpi=(200, 200))
    progress: list[str] = []
    doc = load("fax.tiff", out.getvalue(), ctx(progress))
    assert [s.page for s in doc.sections] == [1, 2]
    assert "retention" in words(doc.sections[0].text) and "firewall" in words(doc.sections[1].text)
    assert sorted(p for p in progress if p.startswith("OCR")) == ["OCR page 1/2", "OCR page 2/2"]


def test_a_tiff_of_more_pages_than_allowed_is_refused() -> None:
    out = io.BytesIO()
    scan(["one"]).save(out, format="TIFF", save_all=True, append_images=[scan(["two"]), scan(["three"])])
    with pytest.raises(LoadError, match=r"fax.tif: 3 pages, over the limit of 2"):
        load("fax.tif", out.getvalue(), ctx(max_pages=2))


def test_an_image_with_ocr_off_or_broken_bytes_is_a_clear_error() -> None:
    with pytest.raises(LoadError, match=r"photo.jpg: OCR is off"):
        load("photo.jpg", b"\xff\xd8\xff\xe0 not really", ctx(ocr=False))
    with pytest.raises(LoadError, match=r"photo.jpg: not a readable image"):
        load("photo.jpg", b"\xff\xd8\xff\xe0 not really", ctx())


# ---- bad PDFs -------------------------------------------------------------------------------------------------


def encrypted(data: bytes, user: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user, owner_password="owner-secret", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_a_password_protected_pdf_is_refused() -> None:
    with pytest.raises(LoadError, match=r"locked.pdf: the PDF is password-protected"):
        load("locked.pdf", encrypted(text_pdf(["Secret plans."]), user="hunter2"), ctx())


def test_a_pdf_encrypted_only_against_editing_is_read() -> None:
    doc = load("owner.pdf", encrypted(text_pdf(["Readable by anyone."]), user=""), ctx())
    assert doc.text == "Readable by anyone."


@pytest.mark.parametrize("data", [b"%PDF-1.7\n1 0 obj garbage", b"\x00\x01 not a pdf at all", b""])
def test_corrupt_bytes_are_not_a_pdf(data: bytes) -> None:
    with pytest.raises(LoadError, match=r"broken.pdf: not a valid PDF"):
        load("broken.pdf", data, ctx())


def test_a_pdf_of_more_pages_than_allowed_is_refused() -> None:
    with pytest.raises(LoadError, match=r"long.pdf: 3 pages, over the limit of 2 \(ingest.max_pages\)"):
        load("long.pdf", text_pdf(["one", "two", "three"]), ctx(max_pages=2))


def test_a_blank_page_is_not_sent_to_ocr(tesseract: None) -> None:
    progress: list[str] = []
    doc = load("gap.pdf", text_pdf(["Before the blank page, enough words here.", "", "After it."]), ctx(progress))
    assert [s.page for s in doc.sections] == [1, 3]
    assert not [p for p in progress if p.startswith("OCR")]


def test_pdfs_read_in_several_threads_at_once_read_as_they_do_alone() -> None:
    files = {"a.pdf": table_pdf(), "b.pdf": table_pdf(rows=60), "c.pdf": text_pdf(["One page of words here.", "Two."])}
    alone = {name: load(name, data, ctx()).text for name, data in files.items()}
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda name: (name, load(name, files[name], ctx()).text), list(files) * 4))
    assert len(together) == 12 and all(text == alone[name] for name, text in together)
