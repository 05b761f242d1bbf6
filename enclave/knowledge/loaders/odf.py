"""OpenDocument text and slides: ODT and ODP by odfpy, as Sections under headings and slides."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from enclave.knowledge.loaders.base import Document, LoadError, ReadContext, ReadLimits, Section
from enclave.knowledge.loaders.containers import a_or_an, container, damaged, member_of
from enclave.knowledge.loaders.outline import HEADING_STYLE, MAX_REPEAT, Body, check_slides

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
    body = Body(ctx.limits)
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
    check_slides(name, len(pages), ctx.limits)
    sections, first_title = [], ""
    for i, page in enumerate(pages, start=1):
        ctx.progress(f"slide {i}/{len(pages)}")
        title, parts, notes = _odp_page(page, ctx.limits)
        first_title = first_title or title
        label = title or _odf_unescape(str(page.getAttrNS(_DRAW, "name") or ""))
        heading = f"Slide {i}: {label}" if label and not _ODP_DEFAULT_NAME.fullmatch(label) else f"Slide {i}"
        parts += [f"Notes: {notes}"] if notes else []
        sections.append(Section("\n\n".join(parts) or title, heading, page=i))
    return Document(_odf_title(doc) or first_title or Path(name).stem, "odp", sections)


def _odf(name: str, data: bytes, ctx: ReadContext, what: str) -> Any:
    """The ODF document parsed by odfpy, once its zip is checked: the right kind, not encrypted, not a bomb."""
    from odf.opendocument import load

    with container(name, data, ctx.limits, what) as zf, damaged(name, what):
        names = set(zf.namelist())
        if not {"content.xml", "META-INF/manifest.xml"} <= names:
            raise LoadError(f"{name}: a zip, but not {a_or_an(what)} file (no content.xml or manifest)")
        raw = member_of(name, zf, "mimetype", ctx.limits) if "mimetype" in names else b""
        mime = raw.decode("ascii", "replace").strip()
        if mime and not mime.startswith(_ODF_MIME[what]):
            raise LoadError(f"{name}: not {a_or_an(what)} file (its content is '{mime}')")
        if b"encryption-data" in member_of(name, zf, "META-INF/manifest.xml", ctx.limits):
            raise LoadError(f"{name}: the {what} file is encrypted or password-protected")
    ctx.progress(f"reading {what}")
    with damaged(name, what):
        return load(io.BytesIO(data))


def _is(node: Any, qname: tuple[str, str]) -> bool:
    return bool(node.nodeType == node.ELEMENT_NODE and node.qname == qname)


def _odf_body(name: str, doc: Any, what: str) -> Any:
    """office:text or office:presentation (odfpy's doc.text is a whitespace node when content.xml is indented)."""
    local = "text" if what == "ODT" else "presentation"
    found = [el for el in doc.body.childNodes if _is(el, (_OFFICE, local))]
    if not found:
        raise LoadError(f"{name}: not {a_or_an(what)} file (it has no office:{local} body)")
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
            m = HEADING_STYLE.fullmatch(label)
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
    """A table's rows of cell texts: a merged (covered) cell empty, a repeated cell or row at most MAX_REPEAT times."""
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
    return min(int(value), MAX_REPEAT) if value and str(value).isdigit() else 1


def _odf_descendants(el: Any, qname: tuple[str, str], stop: tuple[str, str]) -> Iterator[Any]:
    """Elements named qname under el, not looking inside a nested `stop` element (a table in a cell)."""
    for child in el.childNodes:
        if child.nodeType != child.ELEMENT_NODE or child.qname == stop:
            continue
        if child.qname == qname:
            yield child
        else:
            yield from _odf_descendants(child, qname, stop)


def _odp_page(page: Any, limits: ReadLimits) -> tuple[str, list[str], str]:
    """A slide's title, its shapes' text in reading order (tables as Markdown), and its speaker notes."""
    title, parts, notes = "", [], ""
    for el in sorted(_odp_shapes(page), key=_odp_position):
        if el.qname == (_PRES, "notes"):
            notes = "\n".join(v for k, _, v in _odf_blocks(el) if k != "table" and v)
        elif str(el.getAttrNS(_PRES, "class") or "") == "title" and not title:
            title = _odf_text(el)
        else:
            body = Body(limits)
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
