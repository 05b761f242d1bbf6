"""Books and rich text: EPUB chapters in spine order by the HTML reader, and RTF by striprtf."""

from __future__ import annotations

import posixpath
import re
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from enclave.knowledge.loaders.base import Document, LoadError, ReadContext, ReadLimits, Section
from enclave.knowledge.loaders.containers import container, damaged, member_of, what_it_is
from enclave.knowledge.loaders.web import _first_line_title, decode, html_document

# --- EPUB ----------------------------------------------------------------------------------------------------------

_OPF = "{http://www.idpf.org/2007/opf}"
_DC = "{http://purl.org/dc/elements/1.1/}"
_CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_XHTML_TYPES = ("application/xhtml+xml", "text/html")


def read_epub(name: str, data: bytes, ctx: ReadContext) -> Document:
    with container(name, data, ctx.limits, "EPUB") as zf, damaged(name, "EPUB"):
        opf_path = _epub_rootfile(name, zf, ctx.limits)
        opf = _xml(name, member_of(name, zf, opf_path, ctx.limits), opf_path)
        items = _epub_spine(name, opf, posixpath.dirname(opf_path), set(zf.namelist()))
        _epub_refuse_drm(name, zf, ctx.limits, items)
        sections: list[Section] = []
        for i, path in enumerate(items, start=1):
            ctx.progress(f"chapter {i}/{len(items)}")
            chapter = html_document(path, decode(f"{name}: {path}", member_of(name, zf, path, ctx.limits)), ctx.limits)
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
    rootfile = _xml(name, member_of(name, zf, member, limits), member).find(f".//{_CONTAINER}rootfile")
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
    tree = _xml(name, member_of(name, zf, member, limits), member)
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
        raise LoadError(f"{name}: not an RTF file: its content is {what_it_is(data)} (no {{\\rtf header)")
    ctx.progress("reading RTF")
    # Pictures and embedded objects are long runs of hex digits: dropped first, in C, as striprtf scans them slowly.
    text = rtf_to_text(_RTF_HEX_RUN.sub("", decode(name, data)), errors="ignore")
    text = re.sub(r"\n{3,}", "\n\n", text.replace("\r\n", "\n")).strip()
    return Document(_first_line_title(text, name), "rtf", [Section(text)])
