"""HTML (main text under its headings), Markdown (under its headings) and plain text."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from enclave.knowledge.loaders.base import Document, LoadError, ReadContext, ReadLimits, Section, rows_to_sections


def read_text(name: str, data: bytes, ctx: ReadContext) -> Document:
    text = decode(name, data)
    return Document(_first_line_title(text, name), "text", [Section(text.strip())])


def read_markdown(name: str, data: bytes, ctx: ReadContext) -> Document:
    return _markdown(name, decode(name, data))


def read_html(name: str, data: bytes, ctx: ReadContext) -> Document:
    return html_document(name, decode(name, data), ctx.limits)


def decode(name: str, data: bytes) -> str:
    if b"\x00" in data[:4096]:
        raise LoadError(f"{name}: binary data, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _first_line_title(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip().lstrip("#").strip()[:120]
    return Path(name).stem


_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _markdown(name: str, text: str) -> Document:
    title, sections = "", []
    heading, buf = "", list[str]()
    in_code = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        m = None if in_code else _HEADING.match(line)
        if m:
            if buf:
                sections.append(Section("\n".join(buf).strip(), heading))
            heading, buf = m.group(2), []
            if not title and len(m.group(1)) == 1:
                title = heading
            continue
        buf.append(line)
    if buf:
        sections.append(Section("\n".join(buf).strip(), heading))
    return Document(title or Path(name).stem, "markdown", sections)


_DROP = ["script", "style", "nav", "header", "footer", "aside", "noscript", "form", "svg", "iframe", "template"]
# Chrome of generated sites (Sphinx's sidebars and link bars, ARIA navigation) that no tag name gives away.
_DROP_XPATH = '//*[@role="navigation"]' + "".join(
    f' | //*[contains(concat(" ", normalize-space(@class), " "), " {c} ")]'
    for c in ("sphinxsidebar", "related", "footer")
)
_BLOCKS = ("h1", "h2", "h3", "h4", "p", "li", "pre", "dt", "dd", "table", "blockquote")
_CONTAINERS = {"li", "dd", "td", "blockquote"}
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


def _text_of(el: Any) -> str:
    """An element's text, each piece stripped, joined by single spaces (comments are not text)."""
    return " ".join(piece for piece in (t.strip() for t in el.itertext()) if piece)


def html_document(name: str, text: str, limits: ReadLimits | None = None) -> Document:
    """libxml2's HTML parser (lxml) builds the tree in C: a tenth of the time BeautifulSoup's pure-Python tree
    builder took on the Python library reference, where parsing was a sixth of all ingestion time. A table is
    written as a table (base.rows_to_sections), in pieces of its own, not as one line per cell."""
    import lxml.html

    text = _XML_DECLARATION.sub("", text, count=1)  # lxml refuses a str that declares its own encoding
    if not text.strip():
        return Document(Path(name).stem, "html", [])
    doc = lxml.html.document_fromstring(text)
    title_el = doc.find(".//title")
    title = " ".join(_text_of(title_el).split()) if title_el is not None else ""
    for el in [*doc.iter(*_DROP), *doc.xpath(_DROP_XPATH)]:
        if el.getparent() is not None:  # not already gone with an ancestor
            el.drop_tree()  # its tail (the text after it) stays
    root = next(iter(doc.iter("main")), None)
    if root is None:
        root = next(iter(doc.xpath('//*[@role="main"]')), None)
    if root is None:
        root = doc.find("body")
    if root is None:
        root = doc
    sections: list[Section] = []
    heading, buf = "", list[str]()
    for el in root.iterdescendants(*_BLOCKS):
        above = {a.tag for a in el.iterancestors()}
        if "table" in above:
            continue  # its table carries it
        if el.tag in ("p", "pre") and above & _CONTAINERS:
            continue  # its parent item already carries this text
        if el.tag == "table":
            pieces = _table(el, heading, limits or ReadLimits())
            if pieces and buf:
                sections.append(Section("\n".join(buf), heading))
                buf = []
            sections += pieces
            continue
        txt = _text_of(el).replace("¶", "").strip()
        if not txt:
            continue
        if el.tag in ("h1", "h2", "h3", "h4"):
            if buf:
                sections.append(Section("\n".join(buf), heading))
            heading, buf = txt, []
            title = title or txt
        else:
            buf.append(txt)
    if buf:
        sections.append(Section("\n".join(buf), heading))
    return Document(title or Path(name).stem, "html", sections)


def _table(el: Any, heading: str, limits: ReadLimits) -> list[Section]:
    """A table of at least two rows and two columns, its first row the header; a layout table (one row or one
    column) is its cells' text."""
    rows = [
        [_text_of(c).replace("¶", "").strip() for c in tr if c.tag in ("th", "td")]
        for tr in el.iter("tr")
        if next(tr.iterancestors("table"), None) is el  # not a nested table's rows
    ]
    rows = [r for r in rows if any(r)]
    if len(rows) < 2 or max(len(r) for r in rows) < 2:
        lines = [" ".join(c for c in r if c) for r in rows]
        return [Section("\n".join(lines), heading)] if lines else []
    return rows_to_sections(rows[1:], rows[0], heading, limits)
