"""Office Open XML files: DOCX by python-docx and PPTX by python-pptx, as Sections under headings and slides."""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from enclave.knowledge.loaders.base import Document, LoadError, ReadContext, ReadLimits, Section, rows_to_sections
from enclave.knowledge.loaders.containers import a_or_an, container, damaged, member_of
from enclave.knowledge.loaders.outline import HEADING_STYLE, MAX_REPEAT, Body, check_slides

# The content type of the main part python-docx and python-pptx open (a .docm or .dotx is refused by python-docx).
_DOCX_MAIN = re.compile(rb"wordprocessingml\.document\.main\+xml")
_PPTX_MAIN = re.compile(rb"(presentationml|powerpoint)\.(presentation|slideshow|template)(\.macroEnabled)?\.main\+xml")


def _ooxml(name: str, data: bytes, limits: ReadLimits, what: str, main: re.Pattern[bytes]) -> None:
    """An Office Open XML package whose main part is the kind its name says (`main` in [Content_Types].xml)."""
    with container(name, data, limits, what) as zf, damaged(name, what):
        if "[Content_Types].xml" not in zf.namelist():
            raise LoadError(f"{name}: a zip, but not {a_or_an(what)} file (no [Content_Types].xml)")
        if not main.search(member_of(name, zf, "[Content_Types].xml", limits)):
            raise LoadError(f"{name}: an Office file, but not {a_or_an(what)} file (its main part is of another kind)")


# --- DOCX ----------------------------------------------------------------------------------------------------------

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def read_docx(name: str, data: bytes, ctx: ReadContext) -> Document:
    _ooxml(name, data, ctx.limits, "DOCX", _DOCX_MAIN)
    ctx.progress("reading DOCX")
    with damaged(name, "DOCX"):
        return _docx_document(name, data, ctx)


def _docx_document(name: str, data: bytes, ctx: ReadContext) -> Document:
    import docx
    from docx.text.paragraph import Paragraph

    doc = docx.Document(io.BytesIO(data))
    body = Body(ctx.limits)
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
        m = HEADING_STYLE.fullmatch(style_name)
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
            cells += [text, *[""] * (min(span, MAX_REPEAT) - 1)]
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
    with damaged(name, "PPTX"):
        return _pptx_document(name, data, ctx)


def _pptx_document(name: str, data: bytes, ctx: ReadContext) -> Document:
    from pptx import Presentation

    prs = Presentation(io.BytesIO(data))
    check_slides(name, len(prs.slides), ctx.limits)
    sections, first_title, slides = [], "", list(prs.slides)
    for i, slide in enumerate(slides, start=1):
        ctx.progress(f"slide {i}/{len(slides)}")
        title_shape = slide.shapes.title
        title = " ".join(title_shape.text_frame.text.split()) if title_shape is not None else ""
        first_title = first_title or title
        heading = f"Slide {i}: {title}" if title else f"Slide {i}"
        parts = list(_pptx_shapes(slide.shapes, title_shape, heading, ctx.limits))
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            notes = _pptx_text(slide.notes_slide.notes_text_frame.text)
            parts += [f"Notes: {notes}"] if notes else []
        sections.append(Section("\n\n".join(parts) or title, heading, page=i))
    title = (prs.core_properties.title or "").strip() or first_title or Path(name).stem
    return Document(title, "pptx", sections)


def _pptx_shapes(shapes: Any, title_shape: Any, heading: str, limits: ReadLimits) -> Iterator[str]:
    """The text of shapes in reading order (top to bottom, then left to right), groups opened, tables as Markdown."""
    from pptx.shapes.group import GroupShape

    for shape in sorted(shapes, key=lambda s: (s.top or 0, s.left or 0)):
        if title_shape is not None and shape.shape_id == title_shape.shape_id:
            continue  # the slide's title is its heading
        if isinstance(shape, GroupShape):
            yield from _pptx_shapes(shape.shapes, None, heading, limits)
        elif getattr(shape, "has_table", False):
            rows = [[_pptx_text(c.text) if not c.is_spanned else "" for c in row.cells] for row in shape.table.rows]
            rows = [r for r in rows if any(r)]
            if len(rows) == 1:
                yield " | ".join(c for c in rows[0] if c)
            elif rows:
                yield from (s.text for s in rows_to_sections(rows[1:], rows[0], heading, limits))
        elif shape.has_text_frame and shape.text_frame.text.strip():
            yield _pptx_text(shape.text_frame.text)


def _pptx_text(text: str) -> str:
    """python-pptx's text with its line breaks (a vertical tab) as newlines."""
    return text.replace("\v", "\n").strip()
