"""Office readers on real files built here with python-docx, python-pptx, odfpy, zipfile and by hand (RTF)."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest

from enclave.knowledge.chunking import chunk_document
from enclave.knowledge.loaders import READERS, Document, LoadError, ReadContext, ReadLimits, load
from enclave.knowledge.loaders.books import read_epub, read_rtf
from enclave.knowledge.loaders.odf import read_odp, read_odt
from enclave.knowledge.loaders.ooxml import read_docx, read_pptx

CTX = ReadContext()
MARKDOWN = ReadContext(ReadLimits(table_style="markdown"))  # the tests that check a Markdown table exactly
OLE_HEADER = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504


def headings(doc: Document) -> list[str]:
    return [s.heading for s in doc.sections]


# --- DOCX ----------------------------------------------------------------------------------------------------------


def make_docx(rows: int = 2, core_title: str = "") -> bytes:
    import docx

    d = docx.Document()
    d.core_properties.title = core_title
    d.add_heading("Quarterly Report", 0)
    d.add_paragraph("Written before any chapter.")
    d.add_heading("Staff", 1)
    d.add_paragraph("The team is listed below.")
    table = d.add_table(rows=rows + 1, cols=3)
    for cell, text in zip(table.rows[0].cells, ["Name", "Role", "Office"], strict=True):
        cell.text = text
    for r in range(1, rows + 1):
        for cell, text in zip(table.rows[r].cells, [f"Person {r}", f"Role {r}", f"Office {r}"], strict=True):
            cell.text = text
    d.add_paragraph("Written after the table.")
    d.add_heading("Budget", 2)
    d.add_paragraph("Travel is capped.", style="List Bullet")
    d.add_heading("Hiring", 1)
    d.add_paragraph("Two openings.")
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def test_docx_headings_tables_and_order() -> None:
    doc = read_docx("report.docx", make_docx(), MARKDOWN)
    assert doc.title == "Quarterly Report" and doc.kind == "docx"
    assert headings(doc) == ["Quarterly Report", "Staff", "Staff", "Staff", "Staff › Budget", "Hiring"]
    texts = [s.text for s in doc.sections]
    assert texts[0] == "Written before any chapter."
    assert texts[1] == "The team is listed below."  # the table comes after it, where it stands in the body
    assert texts[2].splitlines()[:3] == [
        "| Name | Role | Office |",
        "|---|---|---|",
        "| Person 1 | Role 1 | Office 1 |",
    ]
    assert texts[3] == "Written after the table."
    assert texts[4] == "- Travel is capped."
    assert read_docx("report.docx", make_docx(core_title="Q3 in Numbers"), CTX).title == "Q3 in Numbers"


def test_docx_table_cell_chunked_with_its_row_and_column_names() -> None:
    doc = read_docx("staff.docx", make_docx(rows=60), CTX)  # records, the default
    chunks = chunk_document(doc, chunk_size=800, chunk_overlap=100)
    with_rows = [(text, meta) for text, meta in chunks if "Name: Person " in text]
    assert len(with_rows) > 2  # a long table is cut into several pieces
    for text, meta in with_rows:  # each chunk is its section's heading, then the columns, then whole rows
        assert text.startswith("Staff\nColumns: Name | Role | Office\n\nName: Person ") and meta["section"] == "Staff"
    ((text, _),) = [(t, m) for t, m in with_rows if "Name: Person 42;" in t]
    assert "Name: Person 42; Role: Role 42; Office: Office 42" in text.splitlines()
    assert sum(t.count("Name: Person ") for t, _ in with_rows) == 60  # every row once


def test_docx_table_in_markdown_is_chunked_under_its_header_row() -> None:
    doc = read_docx("staff.docx", make_docx(rows=60), MARKDOWN)
    chunks = chunk_document(doc, chunk_size=800, chunk_overlap=100)
    with_rows = [(text, meta) for text, meta in chunks if "| Person " in text]
    assert len(with_rows) > 2
    for text, meta in with_rows:
        assert "| Name | Role | Office |" in text and meta["section"] == "Staff"
    ((text, _),) = [(t, m) for t, m in with_rows if "| Person 42 |" in t]
    assert text.index("| Name | Role | Office |") < text.index("| Person 42 | Role 42 | Office 42 |")


def test_docx_merged_cells_once_and_columns_aligned() -> None:
    import docx

    d = docx.Document()
    t = d.add_table(rows=3, cols=3)
    for r, row in enumerate([["A", "B", "C"], ["wide", "", "x"], ["y", "tall", "z"]]):
        for c, text in enumerate(row):
            t.cell(r, c).text = text
    t.cell(1, 0).merge(t.cell(1, 1))  # across two columns
    t.cell(0, 2).merge(t.cell(2, 2))  # down three rows
    buf = io.BytesIO()
    d.save(buf)
    (section,) = read_docx("merged.docx", buf.getvalue(), MARKDOWN).sections
    lines = section.text.splitlines()
    assert lines[0].startswith("| A | B | C")
    assert lines[2] == "| wide |  |  |" and lines[3] == "| y | tall |  |"
    assert section.text.count("wide") == 1
    (records,) = read_docx("merged.docx", buf.getvalue(), CTX).sections
    assert records.text.startswith("Columns: A | B | C")
    assert records.text.split("\n")[1:] == ["", "A: wide", "A: y; B: tall"]  # empty cells left out


def test_docx_tracked_changes_read_as_accepted() -> None:
    import docx
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls

    d = docx.Document()
    p = d.add_paragraph("The limit is ")
    who = 'w:id="{}" w:author="Ann" w:date="2024-01-01T00:00:00Z"'
    p._p.append(parse_xml(f"<w:del {nsdecls('w')} {who.format(1)}><w:r><w:delText>ten</w:delText></w:r></w:del>"))
    p._p.append(parse_xml(f"<w:ins {nsdecls('w')} {who.format(2)}><w:r><w:t>twelve</w:t></w:r></w:ins>"))
    p.add_run(" requests.")
    buf = io.BytesIO()
    d.save(buf)
    assert read_docx("limits.docx", buf.getvalue(), CTX).text == "The limit is twelve requests."


# --- PPTX ----------------------------------------------------------------------------------------------------------


def make_pptx(extra_slides: int = 0) -> bytes:
    from pptx import Presentation
    from pptx.util import Inches

    prs = Presentation()
    s1 = prs.slides.add_slide(prs.slide_layouts[1])  # title and content
    s1.shapes.title.text = "Roadmap"
    s1.placeholders[1].text = "Ship the office loaders"
    s1.notes_slide.notes_text_frame.text = "Mention the deadline"
    s2 = prs.slides.add_slide(prs.slide_layouts[6])  # blank: no title
    s2.shapes.add_textbox(Inches(1), Inches(5), Inches(4), Inches(1)).text_frame.text = "lower text"
    s2.shapes.add_textbox(Inches(1), Inches(1), Inches(4), Inches(1)).text_frame.text = "upper text"
    group = s2.shapes.add_group_shape()
    group.shapes.add_textbox(Inches(5), Inches(3), Inches(2), Inches(1)).text_frame.text = "grouped text"
    table = s2.shapes.add_table(2, 2, Inches(1), Inches(6), Inches(4), Inches(1)).table
    for (r, c), text in {(0, 0): "Metric", (0, 1): "Value", (1, 0): "Uptime", (1, 1): "99.9%"}.items():
        table.cell(r, c).text = text
    for i in range(extra_slides + 1):
        prs.slides.add_slide(prs.slide_layouts[5]).shapes.title.text = f"Closing {i}"  # title only
    buf = io.BytesIO()
    prs.save(buf)
    return buf.getvalue()


def test_pptx_slides_titles_reading_order_tables_and_notes() -> None:
    stages: list[str] = []
    doc = read_pptx("deck.pptx", make_pptx(), ReadContext(MARKDOWN.limits, stages.append))
    assert doc.title == "Roadmap" and doc.kind == "pptx"
    assert [(s.heading, s.page) for s in doc.sections] == [
        ("Slide 1: Roadmap", 1),
        ("Slide 2", 2),
        ("Slide 3: Closing 0", 3),
    ]
    one, two, three = (s.text for s in doc.sections)
    assert one == "Ship the office loaders\n\nNotes: Mention the deadline"
    assert two.index("upper text") < two.index("grouped text") < two.index("lower text") < two.index("| Metric |")
    assert "| Metric | Value |\n|---|---|\n| Uptime | 99.9% |" in two
    assert three == "Closing 0"  # a slide with only its title still says something
    assert stages == ["slide 1/3", "slide 2/3", "slide 3/3"]
    records = read_pptx("deck.pptx", make_pptx(), CTX)  # the default
    chunks = chunk_document(records, chunk_size=800, chunk_overlap=100)
    ((chunk, meta),) = [(t, m) for t, m in chunks if "99.9%" in t]
    assert meta == {"section": "Slide 2", "page": 2}
    assert chunk.endswith("\n\nColumns: Metric | Value\n\nMetric: Uptime; Value: 99.9%")


def test_pptx_over_the_slide_limit() -> None:
    with pytest.raises(LoadError, match=r"deck\.pptx: 5 slides, over the limit of 4"):
        read_pptx("deck.pptx", make_pptx(extra_slides=2), ReadContext(limits=ReadLimits(max_pages=4)))


# --- ODT, ODP ------------------------------------------------------------------------------------------------------


def make_odt() -> bytes:
    from odf import dc
    from odf.opendocument import OpenDocumentText
    from odf.style import Style
    from odf.table import CoveredTableCell, Table, TableCell, TableColumn, TableRow
    from odf.text import H, List, ListItem, P, S

    doc = OpenDocumentText()
    doc.meta.addElement(dc.Title(text="Handbook"))
    doc.text.addElement(H(outlinelevel=1, text="Chapter One"))
    doc.text.addElement(P(text="Opening words."))
    doc.text.addElement(H(outlinelevel=2, text="Details"))
    items = List()
    for entry in ("first item", "second item"):
        item = ListItem()
        item.addElement(P(text=entry))
        items.addElement(item)
    doc.text.addElement(items)
    table = Table(name="Prices")
    table.addElement(TableColumn(numbercolumnsrepeated=2))
    rows: list[list[str | None]] = [["Product", "Price"], ["Tea", "3 EUR"], ["Merged", None]]
    for cells in rows:
        row = TableRow()
        for text in cells:
            if text is None:
                row.addElement(CoveredTableCell())
                continue
            cell = TableCell(valuetype="string", numbercolumnsspanned=2 if text == "Merged" else 1)
            cell.addElement(P(text=text))
            row.addElement(cell)
        table.addElement(row)
    doc.text.addElement(table)
    doc.text.addElement(H(outlinelevel=1, text="Chapter Two"))
    # LibreOffice writes a heading that opens a page as text:p in an automatic style derived from Heading 1.
    derived = Style(name="P1", family="paragraph", parentstylename="Heading 1")
    doc.automaticstyles.addElement(derived)
    doc.text.addElement(P(stylename=derived, text="Appendix"))
    hostile = P(text="spaced")
    hostile.addElement(S(c=2_000_000_000))  # a space count to exhaust memory, were it believed
    hostile.addText("out")
    doc.text.addElement(hostile)
    buf = io.BytesIO()
    doc.save(buf)
    return buf.getvalue()


def test_odt_headings_lists_tables() -> None:
    doc = read_odt("handbook.odt", make_odt(), MARKDOWN)
    assert doc.title == "Handbook" and doc.kind == "odt"
    assert headings(doc) == ["Chapter One", "Chapter One › Details", "Chapter One › Details", "Appendix"]
    assert doc.sections[0].text == "Opening words."
    assert doc.sections[1].text == "- first item\n- second item"
    assert doc.sections[2].text == "| Product | Price |\n|---|---|\n| Tea | 3 EUR |\n| Merged |  |"
    assert doc.sections[3].text.startswith("spaced ") and doc.sections[3].text.endswith(" out")
    assert len(doc.sections[3].text) < 100
    records = read_odt("handbook.odt", make_odt(), CTX)  # the default
    assert records.sections[2].text == "Columns: Product | Price\n\nProduct: Tea; Price: 3 EUR\nProduct: Merged"
    chunks = chunk_document(records, chunk_size=800, chunk_overlap=100)
    ((chunk, meta),) = [(t, m) for t, m in chunks if "3 EUR" in t]
    assert meta["section"] == "Chapter One › Details" and "Product: Tea; Price: 3 EUR" in chunk.splitlines()


def test_odt_with_indented_xml() -> None:
    """Some writers indent content.xml: whitespace between elements is not text and hides no body."""
    from lxml import etree

    source = zipfile.ZipFile(io.BytesIO(make_odt()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "content.xml":
                data = etree.tostring(etree.fromstring(data), pretty_print=True)
                assert b"<office:body>\n" in data
            out.writestr(info, data)
    doc = read_odt("indented.odt", buf.getvalue(), CTX)
    assert headings(doc) == ["Chapter One", "Chapter One › Details", "Chapter One › Details", "Appendix"]
    assert doc.sections[1].text == "- first item\n- second item"


def make_odp() -> bytes:
    from odf import draw, presentation, style
    from odf.namespaces import PRESENTATIONNS
    from odf.opendocument import OpenDocumentPresentation
    from odf.text import P

    doc = OpenDocumentPresentation()
    layout = style.PageLayout(name="layout")
    doc.automaticstyles.addElement(layout)
    master = style.MasterPage(name="Default", pagelayoutname=layout)
    doc.masterstyles.addElement(master)

    def frame(parent: object, text: str, y: str, cls: str | None = None) -> None:
        f = draw.Frame(width="20cm", height="2cm", x="1cm", y=y)
        if cls:
            f.setAttrNS(PRESENTATIONNS, "class", cls)
        box = draw.TextBox()
        box.addElement(P(text=text))
        f.addElement(box)
        parent.addElement(f)  # type: ignore[attr-defined]

    first = draw.Page(name="page1", masterpagename=master)
    frame(first, "below", "12cm")
    frame(first, "Welcome", "1cm", "title")
    frame(first, "above", "40mm")
    notes = presentation.Notes()
    frame(notes, "Say hello", "2cm", "notes")
    first.addElement(notes)
    second = draw.Page(name="Summary page", masterpagename=master)
    frame(second, "All done", "5cm")
    doc.presentation.addElement(first)
    doc.presentation.addElement(second)
    buf = io.BytesIO()
    doc.save(buf)
    return buf.getvalue()


def test_odp_pages_titles_and_notes() -> None:
    stages: list[str] = []
    doc = read_odp("talk.odp", make_odp(), ReadContext(progress=stages.append))
    assert doc.title == "Welcome" and doc.kind == "odp"
    assert [(s.heading, s.page) for s in doc.sections] == [("Slide 1: Welcome", 1), ("Slide 2: Summary page", 2)]
    assert doc.sections[0].text == "above\n\nbelow\n\nNotes: Say hello"
    assert doc.sections[1].text == "All done"
    assert stages[-2:] == ["slide 1/2", "slide 2/2"]


def test_odf_of_the_other_kind_is_refused() -> None:
    with pytest.raises(LoadError, match=r"talk\.odt: not an ODT file \(its content is .*presentation"):
        read_odt("talk.odt", make_odp(), CTX)


# --- EPUB ----------------------------------------------------------------------------------------------------------

CONTAINER = """<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
  <rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles>
</container>"""

OPF = """<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">
  <metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>The  Field Guide</dc:title></metadata>
  <manifest>
    <item id="c2" href="text/second.xhtml" media-type="application/xhtml+xml"/>
    <item id="css" href="style.css" media-type="text/css"/>
    <item id="c1" href="text/chapter%20one.xhtml" media-type="application/xhtml+xml"/>
    <item id="c3" href="text/third.xhtml" media-type="application/xhtml+xml"/>
  </manifest>
  <spine><itemref idref="c1"/><itemref idref="c2"/><itemref idref="c3"/></spine>
</package>"""


def xhtml(title: str, body: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml">'
        f"<head><title>{title}</title></head><body>{body}</body></html>"
    )


def make_epub(encryption: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        zf.writestr("META-INF/container.xml", CONTAINER)
        zf.writestr("OEBPS/content.opf", OPF)
        zf.writestr("OEBPS/style.css", "body { margin: 0 }")
        zf.writestr("OEBPS/text/second.xhtml", xhtml("Two", "<h1>Tracks</h1><p>Fox prints are oval.</p>"))
        zf.writestr(
            "OEBPS/text/chapter one.xhtml",
            xhtml("One", "<h1>Birds</h1><p>Robins sing.</p><h2>Owls</h2><p>Owls hoot.</p>"),
        )
        zf.writestr("OEBPS/text/third.xhtml", xhtml("Appendix", "<p>No heading here.</p>"))
        if encryption:
            zf.writestr("META-INF/encryption.xml", encryption)
    return buf.getvalue()


def test_epub_spine_order_sections_and_title() -> None:
    doc = read_epub("guide.epub", make_epub(), CTX)
    assert doc.title == "The Field Guide" and doc.kind == "epub"
    assert [(s.heading, s.text) for s in doc.sections] == [
        ("Birds", "Robins sing."),
        ("Owls", "Owls hoot."),
        ("Tracks", "Fox prints are oval."),
        ("Appendix", "No heading here."),  # a chapter without headings is under its own title
    ]


def test_epub_with_encrypted_chapters_is_refused() -> None:
    drm = (
        '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
        'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData><enc:CipherData>'
        '<enc:CipherReference URI="OEBPS/text/second.xhtml"/></enc:CipherData></enc:EncryptedData></encryption>'
    )
    with pytest.raises(LoadError, match=r"guide\.epub: the EPUB is DRM-protected"):
        read_epub("guide.epub", make_epub(encryption=drm), CTX)


# --- RTF -----------------------------------------------------------------------------------------------------------

RTF = rb"""{\rtf1\ansi\ansicpg1252\deff0{\fonttbl{\f0\froman Times New Roman;}}
{\info{\title Ignored}}\f0\fs24 {\b Meeting Notes}\par
The budget is approved.\par
Caf\'e9 opens at nine.\par
}"""


def test_rtf_text_and_title() -> None:
    doc = read_rtf("notes.rtf", RTF, CTX)
    assert doc.title == "Meeting Notes" and doc.kind == "rtf"
    assert doc.text.splitlines() == ["Meeting Notes", "The budget is approved.", "Café opens at nine."]
    picture = b"{\\pict\\pngblip\\picw10\\pich10 " + b"89504e470d0a1a0a\r\n" * 20_000 + b"}"
    with_picture = RTF.replace(b"The budget", picture + b"The budget")
    assert read_rtf("notes.rtf", with_picture, CTX).text == doc.text


# --- refused files -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A DOCX-like zip whose document.xml is 600 MB of zeros, written in pieces (a few hundred KB packed)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.docx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("[Content_Types].xml", '<Types><Override ContentType="wordprocessingml"/></Types>')
        with zf.open("word/document.xml", "w") as member:
            zeros = bytes(1 << 20)
            for _ in range(600):
                member.write(zeros)
    return path.read_bytes()


def test_zip_bomb_is_refused_before_inflating(zip_bomb: bytes) -> None:
    assert len(zip_bomb) < 5_000_000
    with pytest.raises(LoadError, match=r"bomb\.docx: unpacks to 629,145,\d+ bytes, over the limit"):
        load("bomb.docx", zip_bomb)
    roomy = ReadContext(limits=ReadLimits(max_unpacked_bytes=2_000_000_000))
    with pytest.raises(LoadError, match=r"bomb\.docx: unpacks to \d+× its size: refused as a zip bomb"):
        load("bomb.docx", zip_bomb, roomy)


@pytest.mark.parametrize("name", ["secret.docx", "secret.pptx"])
def test_encrypted_office_file_is_refused(name: str) -> None:
    with pytest.raises(LoadError, match=rf"{name}: the (DOCX|PPTX) file is encrypted or password-protected"):
        load(name, OLE_HEADER)


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("notes.docx", b"just some notes, not a document\n", "not a DOCX file: its content is plain text"),
        ("scan.pptx", b"%PDF-1.7\n...", "not a PPTX file: its content is a PDF"),
        ("letter.odt", b"{\\rtf1 hello}", "not an ODT file: its content is an RTF document"),
        ("book.epub", b"\x00\x01\x02\xff" * 10, "not an EPUB file: its content is binary data"),
        ("memo.rtf", b"<html><body>memo</body></html>", r"not an RTF file: its content is plain text"),
        ("empty.docx", b"", "the file is empty"),
        ("empty.rtf", b"  \n", "the file is empty"),
    ],
)
def test_wrong_or_empty_content_is_refused(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(LoadError, match=rf"{name}: {reason}"):
        load(name, data)


def test_truncated_and_misnamed_containers_are_refused() -> None:
    docx_data, pptx_data = make_docx(), make_pptx()
    with pytest.raises(LoadError, match=r"cut\.docx: the DOCX file is truncated or damaged"):
        load("cut.docx", docx_data[: len(docx_data) // 2])
    info = zipfile.ZipFile(io.BytesIO(docx_data)).getinfo("word/document.xml")
    name_len, extra_len = struct.unpack("<HH", docx_data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2  # amid its deflated data
    garbled = docx_data[:start] + b"\xff" * 16 + docx_data[start + 16 :]  # the directory intact, the data not
    with pytest.raises(LoadError, match=r"garbled\.docx: the DOCX file is damaged \("):
        load("garbled.docx", garbled)
    with pytest.raises(LoadError, match=r"deck\.docx: an Office file, but not a DOCX file"):
        load("deck.docx", pptx_data)
    with pytest.raises(LoadError, match=r"report\.epub: a zip, but not an EPUB file"):
        load("report.epub", docx_data)


def test_documents_without_text_are_refused() -> None:
    import docx
    from pptx import Presentation

    empty_docx, empty_pptx = io.BytesIO(), io.BytesIO()
    docx.Document().save(empty_docx)
    Presentation().save(empty_pptx)
    for name, data in [("blank.docx", empty_docx.getvalue()), ("blank.pptx", empty_pptx.getvalue())]:
        with pytest.raises(LoadError, match=rf"{name}: no text found"):
            load(name, data)


def test_load_dispatches_every_office_suffix() -> None:
    files = {
        ".docx": (make_docx(), "ooxml:read_docx"),
        ".pptx": (make_pptx(), "ooxml:read_pptx"),
        ".odt": (make_odt(), "odf:read_odt"),
        ".odp": (make_odp(), "odf:read_odp"),
        ".epub": (make_epub(), "books:read_epub"),
        ".rtf": (RTF, "books:read_rtf"),
    }
    for suffix, (data, reader) in files.items():
        doc = load(f"File{suffix.upper()}", data)
        assert doc.kind == READERS[suffix][0] == suffix[1:]
        assert READERS[suffix][1] == reader and doc.sections


# --- LibreOffice's own files (when it is installed) ----------------------------------------------------------------


def soffice_convert(tmp_path: Path, source: Path, target: str) -> bytes:
    profile = tmp_path / "profile"
    subprocess.run(
        ["soffice", f"-env:UserInstallation=file://{profile}", "--headless", "--convert-to", target,
         "--outdir", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    return (tmp_path / f"{source.stem}.{target.split(':')[0]}").read_bytes()


@pytest.mark.skipif(shutil.which("soffice") is None, reason="LibreOffice (soffice) is not installed")
def test_libreoffice_files_of_a_web_page(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text(
        "<html><head><title>Runbook</title></head><body><h1>Restarting</h1><p>Drain the node first.</p>"
        "<h2>Checks</h2><table><tr><th>Probe</th><th>Expect</th></tr><tr><td>/healthz</td><td>200</td></tr></table>"
        "</body></html>"
    )
    tables = [
        (MARKDOWN, "| Probe | Expect |\n|---|---|\n| /healthz | 200 |"),
        (CTX, "Columns: Probe | Expect\n\nProbe: /healthz; Expect: 200"),
    ]
    for suffix, target in [("docx", "docx:MS Word 2007 XML"), ("odt", "odt:writer8")]:
        data = soffice_convert(tmp_path, page, target)
        for ctx, table in tables:
            doc = load(f"page.{suffix}", data, ctx)
            assert doc.title == "Runbook"
            assert [(s.heading, s.text) for s in doc.sections] == [
                ("Restarting", "Drain the node first."),
                ("Restarting › Checks", table),
            ]
    legacy = soffice_convert(tmp_path, page, "doc:MS Word 97")
    with pytest.raises(LoadError, match=r"page\.docx: an older binary Office file \(\.doc\), not DOCX"):
        load("page.docx", legacy)
