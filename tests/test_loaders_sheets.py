"""Spreadsheet readers on real files made by openpyxl, LibreOffice and odfpy: sheets as tables under their headers."""

from __future__ import annotations

import codecs
import datetime as dt
import io
import shutil
import subprocess
import time
import tracemalloc
import zipfile
from pathlib import Path

import openpyxl
import pytest
from odf.office import Annotation
from odf.opendocument import OpenDocumentSpreadsheet
from odf.table import Table, TableCell, TableRow
from odf.text import P, S

from enclave.knowledge.chunking import chunk_document
from enclave.knowledge.loaders import LoadError, ReadContext, ReadLimits, load
from enclave.knowledge.loaders.sheets import cell_text

MARKDOWN = ReadLimits(table_style="markdown")  # the tests that check a Markdown table exactly

Q3 = """| Item | Amount | Ordered | Total |
|---|---|---|---|
| Paper | 3 | 2024-07-01 |  |
| Ink | 2.5 | 2024-07-01 13:45 |  |
| Toner | 0.3 |  |  |"""
Q3_RECORDS = """Columns: Item | Amount | Ordered | Total

Item: Paper; Amount: 3; Ordered: 2024-07-01
Item: Ink; Amount: 2.5; Ordered: 2024-07-01 13:45
Item: Toner; Amount: 0.3"""


def budget_xlsx() -> bytes:
    """Two sheets; Q3's table starts in column B after an empty row, and its Total column is formulas that no
    application ever calculated (openpyxl writes no cached value)."""
    wb = openpyxl.Workbook()
    q3 = wb.active
    q3.title = "Q3"
    q3.append([])
    q3.append([None, "Item", "Amount", "Ordered", "Total"])
    q3.append([None, "Paper", 3.0000000001, dt.datetime(2024, 7, 1), "=C3*2"])
    q3.append([None, "Ink", 2.5, dt.datetime(2024, 7, 1, 13, 45), "=C4*2"])
    q3.append([])
    q3.append([None, "Toner", 0.1 + 0.2, None, "=C6*2"])
    notes = wb.create_sheet("Notes")
    notes.append(["Remark"])
    notes.append(["Toner | ink are ordered together"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def test_xlsx_sheets_are_tables_under_their_headers_with_readable_values() -> None:
    stages: list[str] = []
    doc = load("Budget.xlsx", budget_xlsx(), ReadContext(MARKDOWN, stages.append))
    assert (doc.title, doc.kind) == ("Budget", "xlsx")
    assert [(s.heading, s.text) for s in doc.sections] == [
        ("Q3", Q3),
        ("Notes", "| Remark |\n|---|\n| Toner \\| ink are ordered together |"),
    ]
    assert stages == ["sheet Q3 (1/2)", "sheet Notes (2/2)"]
    records = load("Budget.xlsx", budget_xlsx())  # the default: empty cells left out
    assert [(s.heading, s.text) for s in records.sections] == [
        ("Q3", Q3_RECORDS),
        ("Notes", "Columns: Remark\n\nRemark: Toner | ink are ordered together"),
    ]


def test_cell_values_read_as_a_person_reads_them() -> None:
    assert [cell_text(v) for v in (3.0000000001, 0.1 + 0.2, 2.0, 7, -1234567.891, 12345678901.5)] == [
        "3",
        "0.3",
        "2",
        "7",
        "-1234567.891",
        "12345678900",
    ]
    assert [cell_text(v) for v in (1e20, 1.5e-7, True, None, "  a  ")] == ["1e+20", "1.5e-07", "TRUE", "", "a"]
    assert cell_text(dt.datetime(2024, 7, 1, 9, 5, 7)) == "2024-07-01 09:05:07"
    assert cell_text(dt.date(2024, 7, 1)) == "2024-07-01"


def test_a_cell_lands_in_one_chunk_on_its_row_with_its_column_and_sheet() -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Inventory"
    ws.append(["Part number", "Description", "Bin"])
    for i in range(500):
        ws.append([f"P-{i:05d}", f"widget model {i}", f"bin {i % 40}"])
    buf = io.BytesIO()
    wb.save(buf)
    doc = load("Stock.xlsx", buf.getvalue(), ReadContext(ReadLimits(section_chars=800)))  # records, the default
    assert len(doc.sections) > 20 and all(len(s.text) <= 800 for s in doc.sections)
    chunks = chunk_document(doc, chunk_size=800, chunk_overlap=100)
    assert len(chunks) == len(doc.sections)  # a piece is a chunk: none is cut again
    assert all(text.startswith("Inventory\nColumns: Part number | Description | Bin\n\n") for text, _ in chunks)
    hits = [(text, meta) for text, meta in chunks if "P-00377" in text]
    assert len(hits) == 1
    text, meta = hits[0]
    assert "Part number: P-00377; Description: widget model 377; Bin: bin 17" in text.splitlines()
    assert meta["section"] == "Inventory"
    body = "\n".join(s.text.split("\n", 2)[2] for s in doc.sections)  # every row once, in order
    assert body.splitlines() == [
        f"Part number: P-{i:05d}; Description: widget model {i}; Bin: bin {i % 40}" for i in range(500)
    ]


def test_records_cut_across_batches_keep_every_row_once_in_order() -> None:
    """More rows than one batch of sheets._BATCH: a piece cut short by a batch's end goes round again, which
    counts on a piece being two preface lines and one line per row, so a cell's line breaks must not survive."""
    lines = ["Key,Note,"]  # an unnamed column
    want = []
    for i in range(4500):
        note = f'"line one\nline two {i}"' if i % 7 == 0 else f"note {i}"
        lines.append(f"K{i},{note},{'x' if i % 3 == 0 else ''}")
        shown = "line one line two" if i % 7 == 0 else "note"
        want.append(f"Key: K{i}; Note: {shown} {i}" + ("; column 3: x" if i % 3 == 0 else ""))
        if i % 500 == 0:
            lines.append(",,")  # an empty row: not a row at all
    doc = load("notes.csv", "\n".join(lines).encode())
    assert len(doc.sections) > 100 and all(len(s.text) <= 800 for s in doc.sections)
    assert all(s.text.startswith("Columns: Key | Note | column 3\n\nKey: K") for s in doc.sections)
    assert [line for s in doc.sections for line in s.text.split("\n")[2:]] == want


@pytest.fixture(scope="module")
def big_xlsx() -> bytes:
    """200,000 rows written the streaming way (no stated size in the sheet, as streaming writers leave it out)."""
    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet("Ledger")
    ws.append(["id", "amount"])
    for i in range(200_000):
        ws.append([i, i * 1.5])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def test_a_200k_row_sheet_over_max_rows_is_refused_quickly_in_little_memory(big_xlsx: bytes) -> None:
    ctx = ReadContext(ReadLimits(max_rows=1000))
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(LoadError, match=r"Ledger\.xlsx: more than 1,000 rows, the limit \(ingest\.max_rows\)"):
            load("Ledger.xlsx", big_xlsx, ctx)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5  # about 0.5 s (2-core EPYC, traced): the rows past 1,001 are never read
    assert peak < 8_000_000  # the file is 1.6 MB; reading streams it instead of holding 200,000 rows


def test_rows_are_counted_across_sheets_of_one_file() -> None:
    wb = openpyxl.Workbook()
    for name in ("A", "B"):
        ws = wb.create_sheet(name)
        for i in range(60):
            ws.append([f"{name}{i}"])
    buf = io.BytesIO()
    wb.save(buf)
    assert len(load("two.xlsx", buf.getvalue(), ReadContext(ReadLimits(max_rows=120))).sections) >= 2
    with pytest.raises(LoadError, match="more than 119 rows"):
        load("two.xlsx", buf.getvalue(), ReadContext(ReadLimits(max_rows=119)))


def test_broken_xlsx_files_are_named_with_the_reason() -> None:
    with pytest.raises(LoadError, match=r"x\.xlsx: not a valid XLSX file \(not a zip container\)"):
        load("x.xlsx", b"PK\x03\x04 this is not really a zip")
    with pytest.raises(LoadError, match="password-protected"):
        load("x.xlsx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("hello.txt", "a zip, but no workbook in it")
    with pytest.raises(LoadError, match=r"x\.xlsx: not a valid XLSX workbook"):
        load("x.xlsx", buf.getvalue())


@pytest.mark.skipif(shutil.which("soffice") is None, reason="LibreOffice (soffice) is needed to write an .xls file")
def test_xls_made_by_libreoffice_reads_like_its_xlsx(tmp_path: Path) -> None:
    (tmp_path / "Budget.xlsx").write_bytes(budget_xlsx())
    subprocess.run(
        [
            "soffice",
            f"-env:UserInstallation=file://{tmp_path}/profile",
            "--headless",
            "--convert-to",
            "xls",
            "--outdir",
            str(tmp_path),
            str(tmp_path / "Budget.xlsx"),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    stages: list[str] = []
    xls = (tmp_path / "Budget.xls").read_bytes()
    doc = load("Budget.xls", xls, ReadContext(MARKDOWN, stages.append))
    assert (doc.title, doc.kind) == ("Budget", "xls")
    assert [s.heading for s in doc.sections] == ["Q3", "Notes"]
    q3 = doc.sections[0].text.splitlines()
    assert q3[0] == "| Item | Amount | Ordered | Total |"  # LibreOffice calculates the formulas as it converts
    assert q3[2:] == [
        "| Paper | 3 | 2024-07-01 | 6 |",
        "| Ink | 2.5 | 2024-07-01 13:45 | 5 |",
        "| Toner | 0.3 |  | 0.6 |",
    ]
    assert doc.sections[1].text.endswith("| Toner \\| ink are ordered together |")
    assert stages == ["sheet Q3 (1/2)", "sheet Notes (2/2)"]
    records = load("Budget.xls", xls).sections[0].text.splitlines()  # the default
    assert records[2:] == [
        "Item: Paper; Amount: 3; Ordered: 2024-07-01; Total: 6",
        "Item: Ink; Amount: 2.5; Ordered: 2024-07-01 13:45; Total: 5",
        "Item: Toner; Amount: 0.3; Total: 0.6",
    ]
    with pytest.raises(LoadError, match=r"x\.xls: not a readable XLS workbook"):
        load("x.xls", b"not a workbook at all" * 30)
    renamed = load("Budget.xls", budget_xlsx())  # an .xlsx named .xls is read as what it is
    assert renamed.sections[0].text == Q3_RECORDS


def ods_cell(text: str = "", **attrs: object) -> TableCell:
    cell = TableCell(**attrs)
    if text:
        cell.addElement(P(text=text))
    return cell


def ods_row(table: Table, *cells: TableCell, **attrs: object) -> None:
    row = TableRow(**attrs)
    for c in cells:
        row.addElement(c)
    table.addElement(row)


def budget_ods() -> bytes:
    """Rows as LibreOffice leaves them: a million trailing empty cells claimed by one element, a million empty
    rows claimed by another, a row repeated, spaces as text:s, a comment on a cell."""
    doc = OpenDocumentSpreadsheet()
    q3 = Table(name="Q3")
    ods_row(
        q3,
        ods_cell(),
        ods_cell("Item", valuetype="string"),
        ods_cell("Amount", valuetype="string"),
        ods_cell("Ordered", valuetype="string"),
        ods_cell(numbercolumnsrepeated=1_000_000),
    )
    spaced = P(text="Blue")
    spaced.addElement(S(c=3))
    spaced.addText("pen")
    pen = TableCell(valuetype="string")
    pen.addElement(spaced)
    comment = Annotation()
    comment.addElement(P(text="a private remark"))
    pen.addElement(comment)
    ods_row(
        q3,
        ods_cell(),
        pen,
        ods_cell("2.50", valuetype="float", value="2.5"),
        ods_cell(valuetype="date", datevalue="2024-07-01T00:00:00"),
        ods_cell(numbercolumnsrepeated=16_000),
    )
    ods_row(q3, ods_cell(numbercolumnsrepeated=1024), numberrowsrepeated=1_048_000)
    ods_row(
        q3,
        ods_cell(),
        ods_cell("Ink", valuetype="string"),
        ods_cell(valuetype="percentage", value="0.25"),
        ods_cell(valuetype="boolean", booleanvalue="true"),
        numberrowsrepeated=2,
    )
    ods_row(
        q3,
        ods_cell(numbercolumnsrepeated=2),
        ods_cell(valuetype="float", value="0.30000000000000004"),
        ods_cell(valuetype="time", timevalue="PT13H45M00S"),
    )
    doc.spreadsheet.addElement(q3)
    notes = Table(name="Notes")
    ods_row(notes, ods_cell("Remark", valuetype="string"))
    ods_row(notes, ods_cell("see Q3", valuetype="string"))
    doc.spreadsheet.addElement(notes)
    buf = io.BytesIO()
    doc.write(buf)
    return buf.getvalue()


def test_ods_sheets_with_huge_repeats_read_quickly_and_exactly() -> None:
    stages: list[str] = []
    start = time.perf_counter()
    doc = load("Budget.ods", budget_ods(), ReadContext(MARKDOWN, stages.append))
    assert time.perf_counter() - start < 2  # 0.03 s: repeated empties are never made
    assert (doc.title, doc.kind) == ("Budget", "ods")
    assert [(s.heading, s.text) for s in doc.sections] == [
        (
            "Q3",
            "| Item | Amount | Ordered |\n|---|---|---|\n| Blue pen | 2.5 | 2024-07-01 |\n| Ink | 25% | TRUE |\n"
            "| Ink | 25% | TRUE |\n|  | 0.3 | 13:45 |",
        ),
        ("Notes", "| Remark |\n|---|\n| see Q3 |"),
    ]
    assert stages == ["sheet Q3 (1/2)", "sheet Notes (2/2)"]
    records = load("Budget.ods", budget_ods())  # the default
    assert records.sections[0].text == (
        "Columns: Item | Amount | Ordered\n\nItem: Blue pen; Amount: 2.5; Ordered: 2024-07-01\n"
        "Item: Ink; Amount: 25%; Ordered: TRUE\nItem: Ink; Amount: 25%; Ordered: TRUE\nAmount: 0.3; Ordered: 13:45"
    )


def test_ods_repeats_that_hold_values_are_capped() -> None:
    doc = OpenDocumentSpreadsheet()
    table = Table(name="Wide")
    ods_row(table, ods_cell("x", valuetype="string", numbercolumnsrepeated=10**9))
    ods_row(table, ods_cell("y", valuetype="string"), numberrowsrepeated=3)
    doc.spreadsheet.addElement(table)
    buf = io.BytesIO()
    doc.write(buf)
    start = time.perf_counter()
    sections = load("wide.ods", buf.getvalue(), ReadContext(MARKDOWN)).sections  # a row this long: a section alone
    assert [s.text.splitlines()[2:] for s in sections] == [["| y |" + "  |" * 16_383]] * 3
    assert sections[0].text.splitlines()[0].count("| x ") == 16_384  # the widest sheet an application makes
    table.addElement(TableRow(numberrowsrepeated=10**9, stylename="filled"))  # a billion rows: refused at once
    table.lastChild.addElement(ods_cell("z", valuetype="string"))
    buf = io.BytesIO()
    doc.write(buf)
    with pytest.raises(LoadError, match=r"tall\.ods: more than 1,000,000 rows, the limit \(ingest\.max_rows\)"):
        load("tall.ods", buf.getvalue())
    assert time.perf_counter() - start < 5


def test_broken_ods_files_are_named_with_the_reason() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet")
    with pytest.raises(LoadError, match=r"x\.ods: not an ODS file \(no content.xml\)"):
        load("x.ods", buf.getvalue())
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr("content.xml", "<office:document-content xmlns:office='urn:x'><unclosed>")
    with pytest.raises(LoadError, match=r"x\.ods: the ODS content is not well-formed XML"):
        load("x.ods", buf.getvalue())


def test_csv_with_bom_and_semicolons_and_tsv_and_latin1() -> None:
    data = codecs.BOM_UTF8 + 'Name;City;Note\r\nZoë;Zürich;\r\n;;\r\nÅsa;Oslo;"two\nlines; quoted"\r\n'.encode()
    doc = load("people.csv", data, ReadContext(MARKDOWN))
    assert (doc.title, doc.kind) == ("people", "csv")
    assert [(s.heading, s.text) for s in doc.sections] == [
        ("people", "| Name | City | Note |\n|---|---|---|\n| Zoë | Zürich |  |\n| Åsa | Oslo | two lines; quoted |")
    ]
    records = load("people.csv", data)  # the default: a cell's line break is a space, empty cells left out
    assert records.sections[0].text == (
        "Columns: Name | City | Note\n\nName: Zoë; City: Zürich\nName: Åsa; City: Oslo; Note: two lines; quoted"
    )
    tsv = load("people.tsv", "Name\tCity\nZoë, Jr.\tZürich\n".encode("latin-1"), ReadContext(MARKDOWN))
    assert tsv.sections[0].text == "| Name | City |\n|---|---|\n| Zoë, Jr. | Zürich |"
    utf16 = load("export.csv", "Name\tCity\r\nZoë\tZürich\r\n".encode("utf-16"))
    assert utf16.sections[0].text.endswith("\nName: Zoë; City: Zürich")


def test_csv_rows_over_the_limit_and_binary_data_are_refused() -> None:
    data = "n\n" + "".join(f"{i}\n" for i in range(50))
    with pytest.raises(LoadError, match=r"n\.csv: more than 40 rows.*ingest\.max_rows"):
        load("n.csv", data.encode(), ReadContext(ReadLimits(max_rows=40)))
    with pytest.raises(LoadError, match=r"b\.csv: binary data"):
        load("b.csv", b"\x00\x01\x02" * 100)
