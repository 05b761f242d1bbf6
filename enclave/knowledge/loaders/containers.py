"""The checks zip-based office files (DOCX, PPTX, ODT, ODP, EPUB) share: empty, encrypted, legacy, damaged, misnamed."""

from __future__ import annotations

import codecs
import contextlib
import io
import zipfile
import zlib
from collections.abc import Iterator

from enclave.knowledge.loaders.base import LoadError, ReadLimits, open_zip, read_member

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# Streams that mark a binary Office 97-2003 file (.doc, .ppt, .xls) rather than an encrypted OOXML package.
_LEGACY_STREAMS = {"WordDocument": ".doc", "PowerPoint Document": ".ppt", "Workbook": ".xls", "Book": ".xls"}


def what_it_is(data: bytes) -> str:
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


def a_or_an(what: str) -> str:
    return f"an {what}" if what[0] in "AEIOU" else f"a {what}"


def _refuse_ole(name: str, data: bytes, what: str) -> None:
    """An OLE compound file named like an OOXML one: Office's encrypted package, or an old binary file renamed."""
    if not data.startswith(OLE_MAGIC):
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


def container(name: str, data: bytes, limits: ReadLimits, what: str) -> zipfile.ZipFile:
    """The zip inside an office file, checked for emptiness, encryption, damage and zip bombs before any reading."""
    if not data or data.isspace():
        raise LoadError(f"{name}: the file is empty")
    _refuse_ole(name, data, what)
    if not data.startswith(b"PK"):
        raise LoadError(f"{name}: not {a_or_an(what)} file: its content is {what_it_is(data)}, not a zip container")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise LoadError(f"{name}: the {what} file is truncated or damaged (its zip directory is missing)")
    return open_zip(name, data, limits, what)


@contextlib.contextmanager
def damaged(name: str, what: str) -> Iterator[None]:
    """A member that does not inflate or fails its checksum, found while the library reads it: the file is damaged."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise LoadError(f"{name}: the {what} file is damaged ({exc})") from exc


def member_of(name: str, zf: zipfile.ZipFile, member: str, limits: ReadLimits) -> bytes:
    """A member of the file's zip, within the limits; an error names the file as well as the member."""
    try:
        return read_member(zf, member, limits)
    except LoadError as exc:
        raise LoadError(f"{name}: {exc}") from exc
