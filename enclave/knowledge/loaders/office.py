"""Office documents: DOCX, PPTX, ODT, ODP, EPUB and RTF as Sections under their headings, slides and chapters."""

from __future__ import annotations

import codecs
import contextlib
import functools
import io
import posixpath
import re
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from enclave.knowledge.loaders.base import (
    Document,
    LoadError,
    ReadContext,
    ReadLimits,
    Section,
    open_zip,
    read_member,
    rows_to_sections,
)
from enclave.knowledge.loaders.web import _first_line_title, decode, html_document

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# Streams that mark a binary Office 97-2003 file (.doc, .ppt, .xls) rather than an encrypted OOXML package.
_LEGACY_STREAMS = {"WordDocument": ".doc", "PowerPoint Document": ".ppt", "Workbook": ".xls", "Book": ".xls"}
_MAX_REPEAT = 64  # an ODF cell or row "repeated" more often than this is padding, not content
_PATH_SEP = " › "
# The content type of the main part python-docx and python-pptx open (a .docm or .dotx is refused by python-docx).
_DOCX_MAIN = re.compile(rb"wordprocessingml\.document\.main\+xml")
_PPTX_MAIN = re.compile(rb"(presentationml|powerpoint)\.(presentation|slideshow|template)(\.macroEnabled)?\.main\+xml")


# --- what the bytes are --------------------------------------------------------------------------------------------


def _what_it_is(data: bytes) -> str:
    """A few words on what some bytes look like, for an error message."""
    if data.startswith(b"%PDF"):
        return "a PDF"
    if data.startswith(b"{\\rtf"):
        return "an RTF document"
    if data.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8")):
        return "an image"
    head = data[:4096]
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut at the end is not an error
    except UnicodeDecodeError:
        return "binary data"
    return "binary data" if b"\x00" in head else "plain text"


def _a(what: str) -> str:
    return f"an {what}" if what[0] in "AEIOU" else f"a {what}"


def _refuse_ole(name: str, data: bytes, what: str) -> None:
    """An OLE compound file named like an OOXML one: Office's encrypted package, or an old binary file renamed."""
    if not data.startswith(_OLE_MAGIC):
        return
    import olefile

    streams: set[str] = set()
    try:
        with olefile.OleFileIO(io.BytesIO(data)) as ole:
            streams = {"/".join(entry) for entry in ole.listdir()}
    except Exception:  # a damaged directory: only the header is known, and Office writes it for encrypted packages
        streams = set()
    legacy = next((ext for stream, ext in _LEGACY_STREAMS.items() if stream in streams), None)
    if legacy and "EncryptedPackage" not in streams:
        raise LoadError(
            f"{name}: an older binary Office file ({legacy}), not {what}: save it as {what} and add it again"
        )
    raise LoadError(
        f"{name}: the {what} file is encrypted or password-protected (an encrypted Office package, not a zip); "
        "remove the password and add it again"
    )


def _container(name: str, data: bytes, limits: ReadLimits, what: str) -> zipfile.ZipFile:
    """The zip inside an office file, checked for emptiness, encryption, damage and zip bombs before any reading."""
    if not data or data.isspace():
        raise LoadError(f"{name}: the file is empty")
    _refuse_ole(name, data, what)
    if not data.startswith(b"PK"):
        raise LoadError(f"{name}: not {_a(what)} file: its content is {_what_it_is(data)}, not a zip container")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise LoadError(f"{name}: the {what} file is truncated or damaged (its zip directory is missing)")
    return open_zip(name, data, limits, what)


@contextlib.contextmanager
def _damaged(name: str, what: str) -> Iterator[None]:
    """A member that does not inflate or fails its checksum, found while the library reads it: the file is damaged."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise LoadError(f"{name}: the {what} file is damaged ({exc})") from exc


def _member(name: str, zf: zipfile.ZipFile, member: str, limits: ReadLimits) -> bytes:
    """A member of the file's zip, within the limits; an error names the file as well as the member."""
    try:
        return read_member(zf, member, limits)
    except LoadError as exc:
        raise LoadError(f"{name}: {exc}") from exc


def _ooxml(name: str, data: bytes, limits: ReadLimits, what: str, main: re.Pattern[bytes]) -> None:
    """An Office Open XML package whose main part is the kind its name says (`main` in [Content_Types].xml)."""
    with _container(name, data, limits, what) as zf, _damaged(name, what):
        if "[Content_Types].xml" not in zf.namelist():
            raise LoadError(f"{name}: a zip, but not {_a(what)} file (no [Content_Types].xml)")
        if not main.search(_member(name, zf, "[Content_Types].xml", limits)):
            raise LoadError(f"{name}: an Office file, but not {_a(what)} file (its main part is of another kind)")


# --- sections under a heading path ---------------------------------------------------------------------------------


class _Body:
    """Sections built as blocks come in document order: a heading starts one, a table becomes Markdown ones."""

    def __init__(self, section_chars: int) -> None:
        self.section_chars = section_chars
        self.sections: list[Section] = []
        self.path: list[tuple[int, str]] = []
        self.first_heading = ""
        self.buf: list[str] = []

    @property
    def heading(self) -> str:
        return _PATH_SEP.join(text for _, text in self.path)

    def start(self, level: int, text: str) -> None:
        """Level 0 is the document's title; a heading replaces those of its level and below it."""
        self.flush()
        self.path = [(lv, t) for lv, t in self.path if 0 < lv < level] + [(level, text)]
        self.first_heading = self.first_heading or text

    def add(self, text: str) -> None:
        if text.strip():
            self.buf.append(text.strip())

    def table(self, rows: list[list[str]]) -> None:
        rows = [r for r in rows if any(c.strip() for c in r)]
        if len(rows) == 1:  # a one-row table has no header to repeat: a line of text
            self.add(" | ".join(c for c in rows[0] if c.strip()))
        elif rows:
            self.flush()
            self.sections += rows_to_sections(rows[1:], rows[0], self.heading, self.section_chars)

    def flush(self) -> None:
        if self.buf:
            self.sections.append(Section("\n".join(self.buf), self.heading))
            self.buf = []

    def done(self) -> list[Section]:
        self.flush()
        return self.sections


# --- DOCX ----------------------------------------------------------------------------------------------------------

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_HEADING_STYLE = re.compile(r"heading\s*(\d)", re.IGNORECASE)


def read_docx(name: str, data: bytes, ctx: ReadContext) -> Document:
    _ooxml(name, data, ctx.limits, "DOCX", _DOCX_MAIN)
    ctx.progress("reading DOCX")
    with _damaged(name, "DOCX"):
        return _docx_document(name, data, ctx)


def _docx_document(name: str, data: bytes, ctx: ReadContext) -> Document:
    import docx
    from docx.text.paragraph import Paragraph

    doc = docx.Document(io.BytesIO(data))
    body = _Body(ctx.limits.section_chars)
    styles: dict[str, tuple[int | None, bool]] = {}
    for kind, el in _docx_blocks(doc.element.body):
        if kind == "tbl":
            body.table(_docx_rows(el))
            continue
        para = Paragraph(el, doc)
        style_id = el.style or ""
        if style_id not in styles:
            styles[style_id] = _docx_style(para.style)
        (level, numbered), text = styles[style_id], _docx_text(el)
        if level is not None and text:
            body.start(level, text)
        elif text:
            body.add(f"- {text}" if numbered or _docx_numbered(el) else text)
    sections = body.done()
    title = (doc.core_properties.title or "").strip() or body.first_heading or Path(name).stem
    return Document(title, "docx", sections)


def _docx_blocks(parent: Any) -> Iterator[tuple[str, Any]]:
    """The body's paragraphs and tables in document order, also those inside content controls (w:sdt)."""
    for child in parent.iterchildren():
        if child.tag == f"{_W}p":
            yield "p", child
        elif child.tag == f"{_W}tbl":
            yield "tbl", child
        elif child.tag == f"{_W}sdt":
            for content in child.iterchildren(f"{_W}sdtContent"):
                yield from _docx_blocks(content)


def _docx_style(style: Any) -> tuple[int | None, bool]:
    """A paragraph style's heading level (0 for Title, n for Heading n, also for a style based on one; None for
    body text) and whether it numbers its paragraphs (List Bullet and the like)."""
    numbered = False
    for _ in range(5):
        if style is None:
            break
        numbered = numbered or _docx_numbered(style.element)
        outline = _docx_outline_level(style.element)
        if outline is not None:
            return outline, numbered
        style_name = (style.name or "").strip()
        if style_name.lower() == "title":
            return 0, numbered
        m = _HEADING_STYLE.fullmatch(style_name)
        if m:
            return int(m.group(1)), numbered
        style = style.base_style
    return None, numbered


def _docx_outline_level(style_el: Any) -> int | None:
    """A style's outline level (w:outlineLvl 0..8 is Heading 1..9, 9 is body text), if it sets one."""
    ppr = style_el.pPr
    lvl = ppr.find(f"{_W}outlineLvl") if ppr is not None else None
    value = lvl.get(f"{_W}val", "") if lvl is not None else ""
    return int(value) + 1 if value.isdigit() and int(value) < 9 else None


def _docx_numbered(el: Any) -> bool:
    """A paragraph or a style with numbering (w:pPr/w:numPr): a list item."""
    ppr = el.pPr
    return ppr is not None and ppr.numPr is not None


def _docx_rows(tbl: Any) -> list[list[str]]:
    """A table's rows of cell texts; a merged cell's text once (the cells it covers are empty, columns stay aligned)."""
    rows = []
    for tr in tbl.iterchildren(f"{_W}tr"):
        cells: list[str] = []
        for tc in tr.iterchildren(f"{_W}tc"):
            tcpr = tc.tcPr
            span = tcpr.grid_span if tcpr is not None else 1
            continued = tcpr is not None and tcpr.vMerge == "continue"
            text = "" if continued else " ".join(_docx_cell_paragraphs(tc))
            cells += [text, *[""] * (min(span, _MAX_REPEAT) - 1)]
        rows.append(cells)
    return rows


def _docx_cell_paragraphs(tc: Any) -> Iterator[str]:
    for p in tc.iter(f"{_W}p"):
        text = _docx_text(p)
        if text:
            yield text


@functools.cache
def _docx_runs() -> Any:
    """A paragraph's runs, also those in tracked insertions, fields, content controls and smart tags; not the
    runs of its text boxes (paragraphs of their own, in a drawing and again in its VML fallback) nor moved-away text."""
    from lxml import etree

    mc = "http://schemas.openxmlformats.org/markup-compatibility/2006"
    where = "not(ancestor::w:txbxContent) and not(ancestor::mc:Fallback) and not(ancestor::w:moveFrom)"
    return etree.XPath(f".//w:r[{where}]", namespaces={"w": _W[1:-1], "mc": mc})


def _docx_text(p: Any) -> str:
    """A paragraph's text as Word shows it with changes accepted (a deleted run's w:delText is not text)."""
    return "".join(r.text for r in _docx_runs()(p)).strip()


# --- PPTX ----------------------------------------------------------------------------------------------------------


def read_pptx(name: str, data: bytes, ctx: ReadContext) -> Document:
    _ooxml(name, data, ctx.limits, "PPTX", _PPTX_MAIN)
    with _damaged(name, "PPTX"):
        return _pptx_document(name, data, ctx)


def _pptx_document(name: str, data: bytes, ctx: ReadContext) -> Document:
    from pptx import Presentation

    prs = Presentation(io.BytesIO(data))
    _check_slides(name, len(prs.slides), ctx.limits)
    sections, first_title, slides = [], "", list(prs.slides)
    for i, slide in enumerate(slides, start=1):
        ctx.progress(f"slide {i}/{len(slides)}")
        title_shape = slide.shapes.title
        title = " ".join(title_shape.text_frame.text.split()) if title_shape is not None else ""
        first_title = first_title or title
        heading = f"Slide {i}: {title}" if title else f"Slide {i}"
        parts = list(_pptx_shapes(slide.shapes, title_shape, heading, ctx.limits.section_chars))
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            notes = _pptx_text(slide.notes_slide.notes_text_frame.text)
            parts += [f"Notes: {notes}"] if notes else []
        sections.append(Section("\n\n".join(parts) or title, heading, page=i))
    title = (prs.core_properties.title or "").strip() or first_title or Path(name).stem
    return Document(title, "pptx", sections)


def _check_slides(name: str, count: int, limits: ReadLimits) -> None:
    if count > limits.max_pages:
        raise LoadError(f"{name}: {count} slides, over the limit of {limits.max_pages} (ingest.max_pages)")


def _pptx_shapes(shapes: Any, title_shape: Any, heading: str, section_chars: int) -> Iterator[str]:
    """The text of shapes in reading order (top to bottom, then left to right), groups opened, tables as Markdown."""
    from pptx.shapes.group import GroupShape

    for shape in sorted(shapes, key=lambda s: (s.top or 0, s.left or 0)):
        if title_shape is not None and shape.shape_id == title_shape.shape_id:
            continue  # the slide's title is its heading
        if isinstance(shape, GroupShape):
            yield from _pptx_shapes(shape.shapes, None, heading, section_chars)
        elif getattr(shape, "has_table", False):
            rows = [[_pptx_text(c.text) if not c.is_spanned else "" for c in row.cells] for row in shape.table.rows]
            rows = [r for r in rows if any(r)]
            if len(rows) == 1:
                yield " | ".join(c for c in rows[0] if c)
            elif rows:
                yield from (s.text for s in rows_to_sections(rows[1:], rows[0], heading, section_chars))
        elif shape.has_text_frame and shape.text_frame.text.strip():
            yield _pptx_text(shape.text_frame.text)


def _pptx_text(text: str) -> str:
    """python-pptx's text with its line breaks (a vertical tab) as newlines."""
    return text.replace("\v", "\n").strip()


# --- ODT, ODP ------------------------------------------------------------------------------------------------------

_OFFICE = "urn:oasis:names:tc:opendocument:xmlns:office:1.0"
_TEXT = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
_TABLE = "urn:oasis:names:tc:opendocument:xmlns:table:1.0"
_STYLE = "urn:oasis:names:tc:opendocument:xmlns:style:1.0"
_DRAW = "urn:oasis:names:tc:opendocument:xmlns:drawing:1.0"
_PRES = "urn:oasis:names:tc:opendocument:xmlns:presentation:1.0"
_SVG = "urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0"
# Not body text: declarations, tracked (deleted) changes, and generated indexes that repeat the headings.
_ODF_SKIP = {
    (_TEXT, name)
    for name in (
        "tracked-changes", "sequence-decls", "variable-decls", "user-field-decls", "table-of-content",
        "alphabetical-index", "illustration-index", "object-index", "user-index", "table-index", "bibliography",
    )
}  # fmt: skip
_ODF_SPACE = re.compile(r"[ \t\r\n]+")
_ODF_ESCAPE = re.compile(r"_([0-9A-Fa-f]{2})_")  # odfpy writes a page named "Summary page" as Summary_20_page
_ODP_DEFAULT_NAME = re.compile(r"page\d+")  # LibreOffice's name for a slide nobody named
_ODF_MIME = {"ODT": "application/vnd.oasis.opendocument.text", "ODP": "application/vnd.oasis.opendocument.presentation"}


def read_odt(name: str, data: bytes, ctx: ReadContext) -> Document:
    doc = _odf(name, data, ctx, "ODT")
    body = _Body(ctx.limits.section_chars)
    for kind, level, value in _odf_blocks(_odf_body(name, doc, "ODT"), _odf_heading_styles(doc)):
        if kind == "h" and value:
            body.start(level, value)
        elif kind == "table":
            body.table(value)
        else:
            body.add(value)
    sections = body.done()
    return Document(_odf_title(doc) or body.first_heading or Path(name).stem, "odt", sections)


def read_odp(name: str, data: bytes, ctx: ReadContext) -> Document:
    doc = _odf(name, data, ctx, "ODP")
    pages = [p for p in _odf_body(name, doc, "ODP").childNodes if _is(p, (_DRAW, "page"))]
    _check_slides(name, len(pages), ctx.limits)
    sections, first_title = [], ""
    for i, page in enumerate(pages, start=1):
        ctx.progress(f"slide {i}/{len(pages)}")
        title, parts, notes = _odp_page(page, ctx.limits.section_chars)
        first_title = first_title or title
        label = title or _odf_unescape(str(page.getAttrNS(_DRAW, "name") or ""))
        heading = f"Slide {i}: {label}" if label and not _ODP_DEFAULT_NAME.fullmatch(label) else f"Slide {i}"
        parts += [f"Notes: {notes}"] if notes else []
        sections.append(Section("\n\n".join(parts) or title, heading, page=i))
    return Document(_odf_title(doc) or first_title or Path(name).stem, "odp", sections)


def _odf(name: str, data: bytes, ctx: ReadContext, what: str) -> Any:
    """The ODF document parsed by odfpy, once its zip is checked: the right kind, not encrypted, not a bomb."""
    from odf.opendocument import load

    with _container(name, data, ctx.limits, what) as zf, _damaged(name, what):
        names = set(zf.namelist())
        if not {"content.xml", "META-INF/manifest.xml"} <= names:
            raise LoadError(f"{name}: a zip, but not {_a(what)} file (no content.xml or manifest)")
        raw = _member(name, zf, "mimetype", ctx.limits) if "mimetype" in names else b""
        mime = raw.decode("ascii", "replace").strip()
        if mime and not mime.startswith(_ODF_MIME[what]):
            raise LoadError(f"{name}: not {_a(what)} file (its content is '{mime}')")
        if b"encryption-data" in _member(name, zf, "META-INF/manifest.xml", ctx.limits):
            raise LoadError(f"{name}: the {what} file is encrypted or password-protected")
    ctx.progress(f"reading {what}")
    with _damaged(name, what):
        return load(io.BytesIO(data))


def _is(node: Any, qname: tuple[str, str]) -> bool:
    return bool(node.nodeType == node.ELEMENT_NODE and node.qname == qname)


def _odf_body(name: str, doc: Any, what: str) -> Any:
    """office:text or office:presentation (odfpy's doc.text is a whitespace node when content.xml is indented)."""
    local = "text" if what == "ODT" else "presentation"
    found = [el for el in doc.body.childNodes if _is(el, (_OFFICE, local))]
    if not found:
        raise LoadError(f"{name}: not {_a(what)} file (it has no office:{local} body)")
    return found[0]


def _odf_title(doc: Any) -> str:
    from odf import dc, teletype

    titles = doc.meta.getElementsByType(dc.Title)
    return str(teletype.extractText(titles[0])).strip() if titles else ""


def _odf_text(el: Any) -> str:
    """An element's text with its spaces, tabs and line breaks (a run of spaces capped: a count is not trusted)."""
    out: list[str] = []
    _odf_collect(el, out)
    return "".join(out).strip()


def _odf_collect(el: Any, out: list[str]) -> None:
    for child in el.childNodes:
        if child.nodeType == child.TEXT_NODE:  # ODF collapses white space; text:s, tab, line-break are explicit
            out.append(_ODF_SPACE.sub(" ", str(child.data)))
        elif child.nodeType != child.ELEMENT_NODE or child.qname == (_OFFICE, "annotation"):
            continue
        elif child.qname == (_TEXT, "s"):
            out.append(" " * _odf_repeat(child.getAttrNS(_TEXT, "c")))
        elif child.qname == (_TEXT, "tab"):
            out.append("\t")
        elif child.qname == (_TEXT, "line-break"):
            out.append("\n")
        else:
            if child.qname in ((_TEXT, "p"), (_TEXT, "h")) and out and not out[-1].endswith(("\n", " ")):
                out.append("\n")  # paragraphs inside a cell or a frame stay apart
            _odf_collect(child, out)


def _odf_blocks(parent: Any, headings: dict[str, int] | None = None) -> Iterator[tuple[str, int, Any]]:
    """Headings ("h", level, text), paragraphs and list items ("p", 0, text), tables ("table", 0, rows) in order.
    A paragraph whose style is in `headings` (style name -> level) is a heading too."""
    headings = headings or {}
    for el in parent.childNodes:
        if el.nodeType != el.ELEMENT_NODE or el.qname in _ODF_SKIP:
            continue
        if el.qname == (_TEXT, "h"):
            outline = str(el.getAttrNS(_TEXT, "outline-level") or "")
            yield "h", int(outline) if outline.isdigit() else 1, _odf_text(el)
        elif el.qname == (_TEXT, "p"):
            level_of_style = headings.get(str(el.getAttrNS(_TEXT, "style-name") or ""))
            yield ("p", 0, _odf_text(el)) if level_of_style is None else ("h", level_of_style, _odf_text(el))
        elif el.qname == (_TABLE, "table"):
            yield "table", 0, _odf_rows(el)
        elif el.qname == (_TEXT, "list-item"):
            for kind, level, value in _odf_blocks(el, headings):
                yield ("p", 0, _bullet(value)) if kind == "p" else (kind, level, value)
        else:  # sections, lists, frames, text boxes, groups: their blocks in order
            yield from _odf_blocks(el, headings)


def _odf_heading_styles(doc: Any) -> dict[str, int]:
    """Paragraph styles that make a heading, with its level: Title (0), Heading n, or a style derived from one (as
    LibreOffice writes a heading that opens a page: text:p in an automatic style whose parent is Heading_20_1)."""
    parents: dict[str, str] = {}
    for holder in (doc.styles, doc.automaticstyles):
        for el in holder.childNodes:
            if _is(el, (_STYLE, "style")):
                parents[str(el.getAttrNS(_STYLE, "name"))] = str(el.getAttrNS(_STYLE, "parent-style-name") or "")
    out = {}
    for style in {*parents, "Title"}:
        name = style
        for _ in range(5):
            label = _odf_unescape(name)
            m = _HEADING_STYLE.fullmatch(label)
            if label.lower() == "title" or m:
                out[style] = int(m.group(1)) if m else 0
                break
            name = parents.get(name, "")
    return out


def _odf_unescape(name: str) -> str:
    """A name as ODF writes it ("Heading_20_1") as people read it ("Heading 1")."""
    return _ODF_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), name)


def _bullet(text: str) -> str:
    return f"  {text}" if text.startswith("- ") or text.startswith("  ") else f"- {text}"


def _odf_rows(table: Any) -> list[list[str]]:
    """A table's rows of cell texts: a merged (covered) cell empty, a repeated cell or row at most _MAX_REPEAT times."""
    rows: list[list[str]] = []
    for tr in _odf_descendants(table, (_TABLE, "table-row"), stop=(_TABLE, "table")):
        cells: list[str] = []
        for tc in tr.childNodes:
            if not (_is(tc, (_TABLE, "table-cell")) or _is(tc, (_TABLE, "covered-table-cell"))):
                continue
            text = _odf_text(tc) if _is(tc, (_TABLE, "table-cell")) else ""
            cells += [text] * _odf_repeat(tc.getAttrNS(_TABLE, "number-columns-repeated"))
        while cells and not cells[-1]:
            cells.pop()
        rows += [cells] * _odf_repeat(tr.getAttrNS(_TABLE, "number-rows-repeated")) if cells else []
    return rows


def _odf_repeat(value: Any) -> int:
    return min(int(value), _MAX_REPEAT) if value and str(value).isdigit() else 1


def _odf_descendants(el: Any, qname: tuple[str, str], stop: tuple[str, str]) -> Iterator[Any]:
    """Elements named qname under el, not looking inside a nested `stop` element (a table in a cell)."""
    for child in el.childNodes:
        if child.nodeType != child.ELEMENT_NODE or child.qname == stop:
            continue
        if child.qname == qname:
            yield child
        else:
            yield from _odf_descendants(child, qname, stop)


def _odp_page(page: Any, section_chars: int) -> tuple[str, list[str], str]:
    """A slide's title, its shapes' text in reading order (tables as Markdown), and its speaker notes."""
    title, parts, notes = "", [], ""
    for el in sorted(_odp_shapes(page), key=_odp_position):
        if el.qname == (_PRES, "notes"):
            notes = "\n".join(v for k, _, v in _odf_blocks(el) if k != "table" and v)
        elif str(el.getAttrNS(_PRES, "class") or "") == "title" and not title:
            title = _odf_text(el)
        else:
            body = _Body(section_chars)
            for kind, _, value in _odf_blocks(el):
                if kind == "table":
                    body.table(value)
                else:
                    body.add(value)
            parts += [s.text for s in body.done()]
    return title, parts, notes


def _odp_shapes(parent: Any) -> Iterator[Any]:
    """A slide's shapes (groups opened) and its notes."""
    for el in parent.childNodes:
        if el.nodeType != el.ELEMENT_NODE or el.qname[0] not in (_DRAW, _PRES):
            continue
        if el.qname == (_DRAW, "g"):
            yield from _odp_shapes(el)
        else:
            yield el


_LENGTH = re.compile(r"(-?\d*\.?\d+)\s*(cm|mm|in|pt|pc|px)?")
_CM = {"cm": 1.0, "mm": 0.1, "in": 2.54, "pt": 2.54 / 72, "pc": 2.54 / 6, "px": 2.54 / 96, None: 1.0}


def _odp_position(el: Any) -> tuple[float, float]:
    """(top, left) in cm, for reading order; notes and shapes without a position last."""

    def cm(attr: str) -> float:
        m = _LENGTH.match(str(el.getAttrNS(_SVG, attr) or ""))
        return float(m.group(1)) * _CM[m.group(2)] if m else 1e9

    return cm("y"), cm("x")


# --- EPUB ----------------------------------------------------------------------------------------------------------

_OPF = "{http://www.idpf.org/2007/opf}"
_DC = "{http://purl.org/dc/elements/1.1/}"
_CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_XHTML_TYPES = ("application/xhtml+xml", "text/html")


def read_epub(name: str, data: bytes, ctx: ReadContext) -> Document:
    with _container(name, data, ctx.limits, "EPUB") as zf, _damaged(name, "EPUB"):
        opf_path = _epub_rootfile(name, zf, ctx.limits)
        opf = _xml(name, _member(name, zf, opf_path, ctx.limits), opf_path)
        items = _epub_spine(name, opf, posixpath.dirname(opf_path), set(zf.namelist()))
        _epub_refuse_drm(name, zf, ctx.limits, items)
        sections: list[Section] = []
        for i, path in enumerate(items, start=1):
            ctx.progress(f"chapter {i}/{len(items)}")
            chapter = html_document(path, decode(f"{name}: {path}", _member(name, zf, path, ctx.limits)))
            sections += [Section(s.text, s.heading or chapter.title, s.page) for s in chapter.sections]
    title_el = opf.find(f"{_OPF}metadata//{_DC}title")
    title = " ".join((title_el.text or "").split()) if title_el is not None else ""
    return Document(title or Path(name).stem, "epub", sections)


def _xml(name: str, data: bytes, member: str) -> Any:
    """An XML member parsed without entities or network (a hostile book cannot expand or fetch anything)."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        return etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise LoadError(f"{name}: the EPUB's {member} is not well-formed XML ({exc})") from exc


def _epub_rootfile(name: str, zf: zipfile.ZipFile, limits: ReadLimits) -> str:
    member = "META-INF/container.xml"
    if member not in zf.namelist():
        raise LoadError(f"{name}: a zip, but not an EPUB file (no {member})")
    rootfile = _xml(name, _member(name, zf, member, limits), member).find(f".//{_CONTAINER}rootfile")
    path = rootfile.get("full-path", "") if rootfile is not None else ""
    if not path or path not in zf.namelist():
        raise LoadError(f"{name}: the EPUB names no package document that it holds ({path or 'none'})")
    return str(path)


def _epub_spine(name: str, opf: Any, base: str, members: set[str]) -> list[str]:
    """The zip paths of the book's (X)HTML documents in reading (spine) order."""
    manifest = {}
    for item in opf.iterfind(f"{_OPF}manifest/{_OPF}item"):
        href = unquote((item.get("href") or "").split("#")[0])
        manifest[item.get("id")] = (posixpath.normpath(posixpath.join(base, href)), item.get("media-type", ""))
    paths = []
    for ref in opf.iterfind(f"{_OPF}spine/{_OPF}itemref"):
        path, media_type = manifest.get(ref.get("idref"), ("", ""))
        if media_type in _XHTML_TYPES and path in members and path not in paths:
            paths.append(path)
    if not paths:
        raise LoadError(f"{name}: the EPUB's spine lists no XHTML document that it holds")
    return paths


def _epub_refuse_drm(name: str, zf: zipfile.ZipFile, limits: ReadLimits, items: list[str]) -> None:
    """Refused when a chapter is encrypted (DRM); encrypted (obfuscated) fonts alone do not matter."""
    member = "META-INF/encryption.xml"
    if member not in zf.namelist():
        return
    tree = _xml(name, _member(name, zf, member, limits), member)
    encrypted = {unquote(el.get("URI", "")) for el in tree.iter("{*}CipherReference")}
    if encrypted & set(items):
        raise LoadError(f"{name}: the EPUB is DRM-protected (its chapters are encrypted)")


# --- RTF -----------------------------------------------------------------------------------------------------------

_RTF_HEX_RUN = re.compile(r"[0-9a-fA-F\r\n]{512,}")


def read_rtf(name: str, data: bytes, ctx: ReadContext) -> Document:
    from striprtf.striprtf import rtf_to_text

    if not data or data.isspace():
        raise LoadError(f"{name}: the file is empty")
    if not data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{\\rtf"):
        raise LoadError(f"{name}: not an RTF file: its content is {_what_it_is(data)} (no {{\\rtf header)")
    ctx.progress("reading RTF")
    # Pictures and embedded objects are long runs of hex digits: dropped first, in C, as striprtf scans them slowly.
    text = rtf_to_text(_RTF_HEX_RUN.sub("", decode(name, data)), errors="ignore")
    text = re.sub(r"\n{3,}", "\n\n", text.replace("\r\n", "\n")).strip()
    return Document(_first_line_title(text, name), "rtf", [Section(text)])
