"""Spreadsheets (XLSX, XLS, ODS, CSV/TSV), streamed sheet by sheet into Markdown tables under each sheet's header row.

Every format comes down to rows of cells, formatted as a person reads them (integers as integers, floats to ten
significant digits, dates ISO), fed to one _Sheet: it drops empty rows and columns, counts rows against
`ingest.max_rows` while the file is still being read, and cuts the table with base.rows_to_sections. ODS is read
with a streaming XML parse of content.xml (odfpy would build the whole document tree in memory first).
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from enclave.knowledge.loaders.base import (
    Document,
    LoadError,
    ReadContext,
    ReadLimits,
    Section,
    open_zip,
    rows_to_sections,
)
from enclave.knowledge.loaders.containers import OLE_MAGIC

_SEP = "\x1f"  # joins a stored row's cells; str.split() reads it as whitespace, so no cell keeps one
_BATCH = 2000  # stored rows turned into sections at a time
_MAX_COLUMNS = 16_384  # the widest sheet Excel and LibreOffice make; cells beyond it are not read


def cell_text(value: Any) -> str:
    """A cell's value as a person reads it: 3, 2.5, 0.3 (not 0.30000000000000004), 2024-07-01, TRUE."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | Decimal):
        return _number(float(value))
    if isinstance(value, dt.datetime):
        if value.time() == dt.time():
            return value.date().isoformat()
        return value.isoformat(sep=" ", timespec="seconds" if value.second else "minutes")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value).strip()


def _number(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    r = float(f"{x:.10g}")
    if r.is_integer() and abs(r) < 1e15:
        return str(int(r))
    if 1e-5 <= abs(r) < 1e15:
        return repr(r)  # the shortest form of the rounded number, never an exponent in this range
    return f"{r:.10g}"


class _Sheet:
    """One sheet's rows, stored compactly until its columns are known, then cut into sections."""

    def __init__(self, file: str, title: str, budget: _Budget) -> None:
        self.file, self.title, self.budget = file, title, budget
        self.rows: list[str] = []
        self.used: set[int] = set()

    def add(self, cells: Sequence[str], times: int = 1) -> None:
        end = len(cells)
        while end and not cells[end - 1]:
            end -= 1
        if not end or times < 1:
            return
        joined = _SEP.join(c.replace(_SEP, " ") for c in cells[:end])
        self.budget.take(times, len(joined) * times)
        self.used.update(i for i in range(end) if cells[i])
        self.rows.extend([joined] * times)  # the same string object repeated costs a reference each

    def sections(self, limits: ReadLimits) -> list[Section]:
        if not self.rows:
            return []
        keep = sorted(self.used)
        header = self._cells(self.rows[0], keep)
        if len(self.rows) == 1:
            return [Section(" | ".join(c for c in header if c), self.title)]
        out: list[Section] = []
        carry: list[list[str]] = []
        for start in range(1, len(self.rows), _BATCH):
            batch = carry + [self._cells(r, keep) for r in self.rows[start : start + _BATCH]]
            pieces = rows_to_sections(batch, header, self.title, limits)
            # The last piece may be cut short by the batch's end: its rows go round again with the next batch.
            # A piece is the header line, the rule and one line per row (cells never hold a newline there).
            last = pieces.pop()
            carry = batch[len(batch) - (last.text.count("\n") - 1) :]
            out.extend(pieces)
        out.extend(rows_to_sections(carry, header, self.title, limits))
        self.rows = []
        return out

    @staticmethod
    def _cells(row: str, keep: list[int]) -> list[str]:
        cells = row.split(_SEP)
        return [cells[i] if i < len(cells) else "" for i in keep]


class _Budget:
    """What the whole file may hold: rows (ingest.max_rows) and, for repeated cells, text."""

    def __init__(self, file: str, ctx: ReadContext) -> None:
        self.file, self.limits = file, ctx.limits
        self.rows = 0
        self.chars = 0

    def take(self, rows: int, chars: int) -> None:
        self.rows += rows
        self.chars += chars
        if self.rows > self.limits.max_rows:
            raise LoadError(f"{self.file}: more than {self.limits.max_rows:,} rows, the limit (ingest.max_rows)")
        if self.chars > self.limits.max_unpacked_bytes:
            raise LoadError(
                f"{self.file}: its cells hold more than {self.limits.max_unpacked_bytes:,} characters, over the "
                "limit (ingest.max_unpacked_bytes)"
            )


Rows = Iterable[tuple[Sequence[str], int]]  # formatted cells, and how many times the row stands (ODS repeats rows)


def _document(name: str, kind: str, sheets: Iterable[tuple[str, Rows]], count: int, ctx: ReadContext) -> Document:
    """Sheets given as (title, rows), read one after the other into one Document."""
    budget = _Budget(name, ctx)
    sections: list[Section] = []
    for i, (title, rows) in enumerate(sheets, start=1):
        ctx.progress(f"sheet {title} ({i}/{count})")
        sheet = _Sheet(name, title, budget)
        for cells, times in rows:
            sheet.add(cells, times)
        sections.extend(sheet.sections(ctx.limits))
    return Document(Path(name).stem, kind, sections)


# --- XLSX ---------------------------------------------------------------------------------------------------------


def read_xlsx(name: str, data: bytes, ctx: ReadContext) -> Document:
    if data.startswith(OLE_MAGIC):
        raise LoadError(f"{name}: an OLE file, not a zip: the workbook is password-protected, or an old .xls renamed")
    open_zip(name, data, ctx.limits, "XLSX").close()
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        archive, sheets = _xlsx_sheets(data)
    except (InvalidFileException, KeyError, OSError, ValueError) as exc:
        raise LoadError(f"{name}: not a valid XLSX workbook ({exc})") from exc
    with archive:
        return _document(name, "xlsx", ((ws.title, _xlsx_rows(ws)) for ws in sheets), len(sheets), ctx)


def _xlsx_sheets(data: bytes) -> tuple[Any, list[Any]]:
    """openpyxl's read-only workbook, opened as load_workbook(read_only=True, data_only=True) opens it, but with
    sheets that are not parsed through once at opening to find their size when the file does not state it (as
    streaming writers leave it out): that first pass cost as much as reading the sheet, and came before any row
    could be counted against the limit."""
    from openpyxl.reader.excel import ExcelReader
    from openpyxl.styles.stylesheet import apply_stylesheet
    from openpyxl.worksheet._read_only import ReadOnlyWorksheet

    class UnsizedSheet(ReadOnlyWorksheet):  # type: ignore[misc]
        def _get_size(self) -> None:
            pass  # rows are read as the cells give them, never padded to a stated size (A1:XFD1048576)

    reader = ExcelReader(io.BytesIO(data), read_only=True, keep_vba=False, data_only=True, keep_links=False)
    try:
        reader.read_manifest()
        reader.read_strings()
        reader.read_workbook()
        apply_stylesheet(reader.archive, reader.wb)  # the number formats that make a number a date
        sheets = [
            UnsizedSheet(reader.wb, sheet.name, rel.target, reader.shared_strings)
            for sheet, rel in reader.parser.find_sheets()
            if rel.target in reader.valid_files and "chartsheet" not in rel.Type
        ]
    except BaseException:
        reader.archive.close()
        raise
    return reader.archive, sheets


def _xlsx_rows(ws: Any) -> Iterator[tuple[list[str], int]]:
    for row in ws.iter_rows(values_only=True):
        yield [cell_text(v) for v in row[:_MAX_COLUMNS]], 1


# --- XLS ----------------------------------------------------------------------------------------------------------


def read_xls(name: str, data: bytes, ctx: ReadContext) -> Document:
    if data.startswith(b"PK\x03\x04"):  # a workbook saved as .xlsx and named .xls, as often happens
        return read_xlsx(name, data, ctx)
    import xlrd

    try:
        book = xlrd.open_workbook(file_contents=data, on_demand=True, ragged_rows=True, logfile=io.StringIO())
    except (xlrd.XLRDError, xlrd.compdoc.CompDocError) as exc:
        raise LoadError(f"{name}: not a readable XLS workbook ({exc})") from exc
    try:
        n = book.nsheets
        return _document(name, "xls", ((book.sheet_names()[i], _xls_rows(book, i)) for i in range(n)), n, ctx)
    finally:
        book.release_resources()


def _xls_rows(book: Any, index: int) -> Iterator[tuple[list[str], int]]:
    import xlrd

    sheet = book.sheet_by_index(index)
    try:
        for r in range(sheet.nrows):
            yield [_xls_cell(book, xlrd, c) for c in sheet.row(r)[:_MAX_COLUMNS]], 1
    finally:
        book.unload_sheet(index)


def _xls_cell(book: Any, xlrd: Any, cell: Any) -> str:
    if cell.ctype == xlrd.XL_CELL_DATE:
        try:
            return cell_text(xlrd.xldate.xldate_as_datetime(cell.value, book.datemode))
        except (ValueError, OverflowError, xlrd.xldate.XLDateError):
            return cell_text(cell.value)
    if cell.ctype == xlrd.XL_CELL_BOOLEAN:
        return cell_text(bool(cell.value))
    if cell.ctype == xlrd.XL_CELL_ERROR:
        return str(xlrd.error_text_from_code.get(cell.value, ""))
    return cell_text(cell.value if cell.ctype != xlrd.XL_CELL_BLANK else None)


# --- ODS ----------------------------------------------------------------------------------------------------------

_TABLE = "urn:oasis:names:tc:opendocument:xmlns:table:1.0"
_OFFICE = "urn:oasis:names:tc:opendocument:xmlns:office:1.0"
_TEXT = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
_T_TABLE, _T_ROW = f"{{{_TABLE}}}table", f"{{{_TABLE}}}table-row"
_T_CELLS = (f"{{{_TABLE}}}table-cell", f"{{{_TABLE}}}covered-table-cell")
_P, _S, _TAB, _BR = f"{{{_TEXT}}}p", f"{{{_TEXT}}}s", f"{{{_TEXT}}}tab", f"{{{_TEXT}}}line-break"
_SKIP = (f"{{{_OFFICE}}}annotation", f"{{{_TEXT}}}note")
_DURATION = re.compile(r"^-?PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?$")


def read_ods(name: str, data: bytes, ctx: ReadContext) -> Document:
    zf = open_zip(name, data, ctx.limits, "ODS")
    with zf:
        members = set(zf.namelist())
        if "content.xml" not in members:
            raise LoadError(f"{name}: not an ODS file (no content.xml)")
        if "META-INF/manifest.xml" in members and b"encryption-data" in zf.read("META-INF/manifest.xml"):
            raise LoadError(f"{name}: the ODS file is encrypted or password-protected")
        with zf.open("content.xml") as f:
            count = _count_tables(f)
        with zf.open("content.xml") as f:
            try:
                return _document(name, "ods", _ods_sheets(f), count, ctx)
            except ET.ParseError as exc:
                raise LoadError(f"{name}: the ODS content is not well-formed XML ({exc})") from exc


def _count_tables(f: IO[bytes]) -> int:
    """How many sheets, for progress: a scan of the bytes, far cheaper than the parse that follows."""
    pattern, tail, count = re.compile(rb"<table:table[\s>]"), b"", 0
    while chunk := f.read(1 << 20):
        buf = tail + chunk
        count += len(pattern.findall(buf))
        tail = buf[-14:]
        count -= len(pattern.findall(tail))  # counted now, and again with the next chunk
    return count


def _ods_sheets(f: IO[bytes]) -> Iterator[tuple[str, Rows]]:
    """(sheet name, rows) as the parse reaches them; each row is dropped from the tree once read."""
    events = ET.iterparse(f, events=("start", "end"))
    for event, el in events:
        if event == "start" and el.tag == _T_TABLE:
            yield el.get(f"{{{_TABLE}}}name", ""), _ods_rows(events, el)


def _ods_rows(events: Iterator[tuple[str, Any]], table: Any) -> Rows:
    """Rows until the sheet's end, each with the times it is repeated (number-rows-repeated); empty rows,
    however many they claim, are passed over."""
    parents = [table]
    for event, el in events:
        if event == "start":
            parents.append(el)
            continue
        parents.pop()
        if not parents:  # the sheet's own end
            table.clear()
            return
        if el.tag == _T_ROW:
            cells = _ods_row(el)
            times = int(el.get(f"{{{_TABLE}}}number-rows-repeated", "1") or 1)
            parents[-1].remove(el)
            if any(cells):
                yield cells, times


def _ods_row(row: Any) -> list[str]:
    """A row's cells; a run of empty ones (number-columns-repeated) is made only when a filled cell follows it,
    so a row claiming a million trailing empties costs nothing."""
    cells: list[str] = []
    pending = 0
    for cell in row:
        if cell.tag not in _T_CELLS:
            continue
        times = max(int(cell.get(f"{{{_TABLE}}}number-columns-repeated", "1") or 1), 1)
        value = _ods_value(cell)
        if not value:
            pending += times
            continue
        room = _MAX_COLUMNS - len(cells) - pending
        if room <= 0:
            break
        cells.extend([""] * pending)
        cells.extend([value] * min(times, room))
        pending = 0
    return cells


def _ods_value(cell: Any) -> str:
    kind = cell.get(f"{{{_OFFICE}}}value-type", "")
    value = cell.get(f"{{{_OFFICE}}}value")
    if kind == "float" and value is not None:
        return _number(float(value))
    if kind == "percentage" and value is not None:
        return _number(float(value) * 100) + "%"
    if kind == "date":
        return _ods_date(cell.get(f"{{{_OFFICE}}}date-value", ""))
    if kind == "time":
        return _ods_time(cell.get(f"{{{_OFFICE}}}time-value", ""))
    if kind == "boolean":
        return "TRUE" if cell.get(f"{{{_OFFICE}}}boolean-value") == "true" else "FALSE"
    shown = "\n".join(_p_text(p) for p in cell.findall(_P)).strip()  # its own paragraphs, not a comment's
    if not shown and kind == "currency" and value is not None:
        return _number(float(value))
    return shown or cell.get(f"{{{_OFFICE}}}string-value", "").strip()


def _ods_date(value: str) -> str:
    try:
        return cell_text(dt.datetime.fromisoformat(value))
    except ValueError:
        return value


def _ods_time(value: str) -> str:
    m = _DURATION.match(value)
    if not m:
        return value
    h, mi, s = int(m.group(1) or 0), int(m.group(2) or 0), float(m.group(3) or 0)
    return f"{h:02d}:{mi:02d}" + (f":{s:02.0f}" if round(s) else "")


def _p_text(el: Any) -> str:
    """A paragraph's text with its spaces (text:s), tabs and line breaks, without notes or comments."""
    out = [el.text or ""]
    for child in el:
        if child.tag == _S:
            out.append(" " * int(child.get(f"{{{_TEXT}}}c", "1") or 1))
        elif child.tag == _TAB:
            out.append("\t")
        elif child.tag == _BR:
            out.append("\n")
        elif child.tag not in _SKIP:
            out.append(_p_text(child))
        out.append(child.tail or "")
    return "".join(out)


# --- CSV / TSV ----------------------------------------------------------------------------------------------------


def read_csv(name: str, data: bytes, ctx: ReadContext) -> Document:
    text = _decode(name, data)
    delimiter = "\t" if Path(name).suffix.lower() == ".tsv" else _delimiter(text[:65536], len(text) > 65536)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = (([c.strip() for c in row], 1) for row in reader)
        return _document(name, "csv", [(Path(name).stem, rows)], 1, ctx)
    except csv.Error as exc:
        raise LoadError(f"{name}: not a readable CSV file (line {reader.line_num}: {exc})") from exc


def _delimiter(sample: str, cut: bool) -> str:
    """The delimiter that splits the most rows of the sample into the same number (> 1) of fields; quoted fields
    and their line breaks are read as csv reads them (csv.Sniffer guesses wrong on those)."""
    best, score = ",", (0, 0)
    for candidate in ",;\t|":
        try:
            rows = [r for r in csv.reader(io.StringIO(sample, newline=""), delimiter=candidate) if any(r)]
        except csv.Error:
            continue
        widths = Counter(len(r) for r in (rows[:-1] if cut else rows) if len(r) > 1)
        if widths:
            width, count = widths.most_common(1)[0]
            if (count, width) > score:
                best, score = candidate, (count, width)
    return best


def _decode(name: str, data: bytes) -> str:
    """UTF-8 (with or without its BOM), UTF-16 with a BOM (Excel's "Unicode text"), else Latin-1."""
    if data.startswith(codecs.BOM_UTF8):
        return data[3:].decode("utf-8", errors="replace")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    if b"\x00" in data[:4096]:
        raise LoadError(f"{name}: binary data, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
