"""Files to Documents: which reader reads which format (READERS), and `load`, which reads any of them within limits.

Readers are imported when a file of theirs comes, so a format's library costs nothing until it is needed.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from enclave.knowledge.loaders.base import (
    Attachment,
    Document,
    LoadError,
    ReadContext,
    ReadLimits,
    Section,
)

__all__ = [
    "LIBRARIES",
    "READERS",
    "Attachment",
    "Document",
    "LoadError",
    "ReadContext",
    "ReadLimits",
    "Section",
    "formats",
    "kind_of",
    "load",
]

# suffix -> (kind, "module:function") under enclave.knowledge.loaders
READERS: dict[str, tuple[str, str]] = {
    ".pdf": ("pdf", "pdf:read_pdf"),
    ".html": ("html", "web:read_html"),
    ".htm": ("html", "web:read_html"),
    ".xhtml": ("html", "web:read_html"),
    ".md": ("markdown", "web:read_markdown"),
    ".markdown": ("markdown", "web:read_markdown"),
    ".txt": ("text", "web:read_text"),
    ".text": ("text", "web:read_text"),
    ".rst": ("text", "web:read_text"),
    ".docx": ("docx", "ooxml:read_docx"),
    ".pptx": ("pptx", "ooxml:read_pptx"),
    ".odt": ("odt", "odf:read_odt"),
    ".odp": ("odp", "odf:read_odp"),
    ".epub": ("epub", "books:read_epub"),
    ".rtf": ("rtf", "books:read_rtf"),
    ".xlsx": ("xlsx", "sheets:read_xlsx"),
    ".xlsm": ("xlsx", "sheets:read_xlsx"),
    ".xls": ("xls", "sheets:read_xls"),
    ".ods": ("ods", "sheets:read_ods"),
    ".csv": ("csv", "sheets:read_csv"),
    ".tsv": ("csv", "sheets:read_csv"),
    ".eml": ("email", "mail:read_eml"),
    ".msg": ("email", "mail:read_msg"),
    ".png": ("image", "images:read_image"),
    ".jpg": ("image", "images:read_image"),
    ".jpeg": ("image", "images:read_image"),
    ".tif": ("image", "images:read_image"),
    ".tiff": ("image", "images:read_image"),
    ".bmp": ("image", "images:read_image"),
    ".gif": ("image", "images:read_image"),
    ".webp": ("image", "images:read_image"),
}


# kind -> what reads it (library, licence): `enclave formats` and the README's table of formats.
LIBRARIES: dict[str, str] = {
    "pdf": "pypdfium2 (PDFium; Apache-2.0/BSD): text; pdfplumber (MIT): ruled tables; Tesseract: scanned pages",
    "html": "lxml (libxml2's HTML parser; BSD): main text under its headings",
    "markdown": "Enclave: sections under their headings",
    "text": "Enclave",
    "docx": "python-docx (MIT): headings, tables in place, tracked insertions",
    "pptx": "python-pptx (MIT): a section per slide with its notes",
    "odt": "odfpy (Apache-2.0)",
    "odp": "odfpy (Apache-2.0): a section per slide with its notes",
    "epub": "Enclave: zip + OPF spine order, each chapter by the HTML reader (no AGPL ebooklib)",
    "rtf": "striprtf (BSD)",
    "xlsx": "openpyxl (MIT), streamed read-only: a sheet per section",
    "xls": "xlrd (BSD)",
    "ods": "Enclave: content.xml streamed (repeats never expanded)",
    "csv": "the standard library's csv",
    "email": "the standard library's email (EML); olefile (BSD) for Outlook MSG; attachments as documents",
    "image": "Pillow (HPND) decodes, Tesseract (Apache-2.0; Debian's tesseract-ocr) reads",
}


def formats() -> list[dict[str, str]]:
    """Every suffix Enclave reads, with its kind and what reads it."""
    return [
        {"suffix": suffix, "kind": kind, "reader": where, "library": LIBRARIES[kind]}
        for suffix, (kind, where) in READERS.items()
    ]


def kind_of(name: str) -> str | None:
    entry = READERS.get(Path(name).suffix.lower())
    return entry[0] if entry else None


def load(name: str, data: bytes, ctx: ReadContext | None = None) -> Document:
    """The file read by its format's reader, or LoadError naming the file and why (never another exception)."""
    ctx = ctx or ReadContext()
    entry = READERS.get(Path(name).suffix.lower())
    if entry is None:
        raise LoadError(f"{name}: unsupported file type '{Path(name).suffix or '(none)'}'")
    kind, where = entry
    if len(data) > ctx.limits.max_bytes:
        raise LoadError(f"{name}: {len(data):,} bytes, over the limit of {ctx.limits.max_bytes:,} (ingest.max_bytes)")
    module, function = where.split(":")
    try:
        reader = getattr(importlib.import_module(f"{__name__}.{module}"), function)
        doc: Document = reader(name, data, ctx)
    except LoadError:
        raise
    except MemoryError as exc:
        raise LoadError(f"{name}: too large to read as {kind} in memory") from exc
    except Exception as exc:  # a corrupt file of any kind: name it, never crash the run
        raise LoadError(f"{name}: could not be read as {kind}: {type(exc).__name__}: {exc}") from exc
    if "#" in name:  # an attachment, "mail.eml#report.pdf": a title made of its name is "report", not "mail.eml#report"
        head = Path(name.rsplit("#", 1)[0]).name
        if doc.title.replace("_", " ").replace("-", " ").startswith(head.replace("_", " ").replace("-", " ") + "#"):
            doc.title = doc.title[len(head) + 1 :]
    doc.sections = [s for s in doc.sections if s.text.strip()]
    if not doc.sections and not doc.attachments:
        raise LoadError(f"{name}: no text found")
    return doc
