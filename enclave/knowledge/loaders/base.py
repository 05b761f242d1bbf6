"""What every reader returns (Document of Sections, Attachments), the limits it reads within, and the checks they share.

A reader is `read_x(name, data, ctx) -> Document`. It raises LoadError naming the file and the reason for any
file it cannot or may not read (corrupt, encrypted, over a limit), so an ingest run reports it and goes on.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field


class LoadError(Exception):
    pass


@dataclass
class Section:
    """A piece of a document that a citation can point to: its heading (a heading, a slide's title, a sheet's
    name) becomes the chunk's section, its page (a PDF page, a slide's number) the chunk's page."""

    text: str
    heading: str = ""
    page: int | None = None


@dataclass
class Attachment:
    """A file inside a file (a mail's attachment): ingested as a document of its own, `<uri>#<name>`."""

    name: str
    data: bytes


@dataclass
class Document:
    title: str
    kind: str
    sections: list[Section] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    ocr_pages: int = 0  # pages whose text came from OCR: the person who uploaded a scan is told it was read

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)


@dataclass(frozen=True)
class ReadLimits:
    """What one file may cost; the operator sets them (settings `ingest`)."""

    max_bytes: int = 200_000_000  # a file larger than this is refused before it is read
    max_pages: int = 2000  # PDF pages, slides
    max_unpacked_bytes: int = 500_000_000  # all members of a zip container (DOCX, XLSX, ODT, EPUB…) together
    max_ratio: int = 200  # unpacked / packed size of a zip container: beyond it, a zip bomb
    max_rows: int = 1_000_000  # spreadsheet rows read per file; beyond it the file is refused
    section_chars: int = 800  # a table is cut into pieces of about this size, each under its header row
    table_style: str = "records"  # "records": "Header: cell; Header: cell" per row, or "markdown" tables
    ocr: bool = True  # read pages without a text layer, and images, with Tesseract
    ocr_languages: str = "eng"  # Tesseract's -l: "eng+deu"
    ocr_dpi: int = 200
    ocr_timeout_s: float = 120.0  # per page
    ocr_workers: int = 0  # 0: one per core
    attachment_depth: int = 2  # a mail in a mail in a mail is not opened


@dataclass
class ReadContext:
    limits: ReadLimits = field(default_factory=ReadLimits)
    # Where the reader is, for a person watching: "OCR page 3/12". Called from the reading thread.
    progress: Callable[[str], None] = field(default=lambda stage: None)


def open_zip(name: str, data: bytes, limits: ReadLimits, what: str) -> zipfile.ZipFile:
    """A zip container (DOCX, PPTX, XLSX, ODF, EPUB) checked before anything is inflated: its members' declared
    sizes in total and against the packed size. A lying header is caught too: read_member stops at the limit."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise LoadError(f"{name}: not a valid {what} file (not a zip container)") from exc
    infos = zf.infolist()
    if any(i.flag_bits & 0x1 for i in infos):
        raise LoadError(f"{name}: the {what} file is encrypted or password-protected")
    unpacked = sum(i.file_size for i in infos)
    if unpacked > limits.max_unpacked_bytes:
        raise LoadError(
            f"{name}: unpacks to {unpacked:,} bytes, over the limit of {limits.max_unpacked_bytes:,} "
            "(ingest.max_unpacked_bytes)"
        )
    if unpacked > 10_000_000 and unpacked > limits.max_ratio * max(len(data), 1):
        raise LoadError(
            f"{name}: unpacks to {unpacked // max(len(data), 1)}× its size: refused as a zip bomb (ingest.max_ratio)"
        )
    return zf


def read_member(zf: zipfile.ZipFile, member: str, limits: ReadLimits) -> bytes:
    """One member, never more than the limit however its header lies."""
    with zf.open(member) as f:
        out = f.read(limits.max_unpacked_bytes + 1)
    if len(out) > limits.max_unpacked_bytes:
        raise LoadError(f"{member}: unpacks beyond the limit of {limits.max_unpacked_bytes:,} bytes")
    return out


def rows_to_sections(
    rows: list[list[str]], header: list[str], heading: str, limits: ReadLimits, page: int | None = None
) -> list[Section]:
    """A table in pieces of about limits.section_chars, each able to stand alone in a chunk. Every piece is two
    lines that say what the columns are, then one line per row (sheets.py relies on that shape):
    - "markdown": a Markdown table under its header row;
    - "records": each row as "Header: cell; Header: cell", so a row read alone still names its columns."""
    width = max([len(header), *(len(r) for r in rows)], default=0)
    if not width:
        return []
    head = [" ".join(h.split()) for h in [*header, *[""] * (width - len(header))]]
    if limits.table_style == "records":
        names = [h or f"column {i + 1}" for i, h in enumerate(head)]
        top = "Columns: " + " | ".join(names) + "\n"

        def line(cells: list[str]) -> str:
            return "; ".join(f"{n}: {' '.join(c.split())}" for n, c in zip(names, cells, strict=False) if c.strip())
    else:
        top = _md_row(head) + "\n" + "|" + "---|" * width

        def line(cells: list[str]) -> str:
            return _md_row([*cells, *[""] * (width - len(cells))])

    out: list[Section] = []
    buf: list[str] = []
    size = len(top)
    for r in rows:
        text = line(r)
        if buf and size + len(text) + 1 > limits.section_chars:
            out.append(Section(top + "\n" + "\n".join(buf), heading, page))
            buf, size = [], len(top)
        buf.append(text)
        size += len(text) + 1
    if buf:
        out.append(Section(top + "\n" + "\n".join(buf), heading, page))
    return out


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(" ".join(c.split()).replace("|", "\\|") for c in cells) + " |"
