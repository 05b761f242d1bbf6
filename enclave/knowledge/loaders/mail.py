"""E-mail (EML with the stdlib, Outlook MSG with olefile): the header lines, the body, and each attachment to ingest.

A mail becomes a first section of From/To/Cc/Date/Subject under the subject, then its body (plain text, else its
HTML read by web.html_document); every attached file, and every attached message as `<subject>.eml`, is handed
back as an Attachment, which the store ingests as a document of its own.
"""

from __future__ import annotations

import datetime as dt
import email
import mimetypes
import re
import struct
from email import policy
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

from enclave.knowledge.loaders.base import Attachment, Document, LoadError, ReadContext, Section
from enclave.knowledge.loaders.web import html_document

_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\#]+")  # an attachment's name ends its URI, `<uri>#<name>`


def _header_section(fields: list[tuple[str, str]], subject: str) -> Section:
    lines = [f"{label}: {' '.join(value.split())}" for label, value in fields if value and value.strip()]
    return Section("\n".join(lines), subject)


def _body_sections(name: str, plain: str, html: str, subject: str) -> list[Section]:
    """The plain body as one section, else the HTML's sections (those before any heading under the subject)."""
    if plain.strip():
        return [Section(plain.replace("\r\n", "\n").strip(), subject)]
    if html.strip():
        return [Section(s.text, s.heading or subject, s.page) for s in html_document(name, html).sections]
    return []


def _safe_name(raw: str, fallback: str) -> str:
    cleaned = " ".join(_UNSAFE_NAME.sub(" ", raw).split())[:120]
    return cleaned or fallback


def _unique(attachments: list[Attachment], name: str, data: bytes) -> None:
    """Appended under a name no earlier attachment has: report.pdf, report (2).pdf…"""
    taken = {a.name for a in attachments}
    stem, suffix, n, candidate = Path(name).stem, Path(name).suffix, 2, name
    while candidate in taken:
        candidate, n = f"{stem} ({n}){suffix}", n + 1
    attachments.append(Attachment(candidate, data))


def _iso(when: dt.datetime | None) -> str:
    if when is None:
        return ""
    return when.isoformat(sep=" ", timespec="minutes")


# --- EML ----------------------------------------------------------------------------------------------------------


def read_eml(name: str, data: bytes, ctx: ReadContext) -> Document:
    msg = email.message_from_bytes(data, policy=policy.default)
    if not isinstance(msg, EmailMessage) or not any(msg.get(h) for h in ("From", "To", "Subject", "Date")):
        raise LoadError(f"{name}: not an e-mail message (no From, To, Subject or Date header)")
    subject = _header(msg, "Subject")
    date = msg.get("Date")
    when = getattr(date, "datetime", None)
    fields = [(h, _header(msg, h)) for h in ("From", "To", "Cc")]
    fields += [("Date", _iso(when) if when else _header(msg, "Date")), ("Subject", subject)]
    body = msg.get_body(preferencelist=("plain", "html"))
    plain = _text_of(body) if body is not None and body.get_content_type() == "text/plain" else ""
    html = _text_of(body) if body is not None and body.get_content_type() == "text/html" else ""
    sections = [_header_section(fields, subject), *_body_sections(name, plain, html, subject)]
    attachments: list[Attachment] = []
    for n, part in enumerate((p for p in _leaves(msg) if p is not body and _is_attachment(p)), start=1):
        _unique(attachments, *_eml_attachment(part, n))
    return Document(subject or Path(name).stem, "email", sections, attachments)


def _header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except (ValueError, TypeError, IndexError):  # a header too broken for the parser's structured form
        value = msg.get_all(name, [""])[0] if hasattr(msg, "get_all") else ""
    return " ".join(str(value or "").split())


def _text_of(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
    except (LookupError, ValueError):  # an unknown or lying charset
        raw = part.get_payload(decode=True)
        content = raw.decode("latin-1") if isinstance(raw, bytes) else ""
    return content if isinstance(content, str) else ""


def _leaves(part: Message) -> list[Message]:
    """The message's parts that are not containers; an attached message is one part, not opened here."""
    if part.get_content_type() == "message/rfc822" or not part.is_multipart():
        return [part]
    payload = part.get_payload()
    parts = [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []
    return [leaf for p in parts for leaf in _leaves(p)]


def _is_attachment(part: Message) -> bool:
    """An attached message, a part marked attachment, or a named part neither marked inline nor referred to by the
    HTML (by its Content-ID): an image the body shows is not a document of its own."""
    if part.get_content_type() == "message/rfc822":
        return True
    disposition = part.get_content_disposition()
    if disposition == "attachment":
        return True
    return disposition is None and bool(part.get_filename()) and not part.get("Content-ID")


def _eml_attachment(part: Message, n: int) -> tuple[str, bytes]:
    if part.get_content_type() == "message/rfc822":
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if not isinstance(inner, Message):
            return f"message-{n}.eml", b""
        subject = _header(inner, "Subject")
        return _safe_name(subject, f"message-{n}") + ".eml", _message_bytes(inner)
    raw = part.get_payload(decode=True)
    data = raw if isinstance(raw, bytes) else b""
    suffix = mimetypes.guess_extension(part.get_content_type()) or ".bin"
    return _safe_name(part.get_filename() or "", f"attachment-{n}{suffix}"), data


def _message_bytes(msg: Message) -> bytes:
    try:
        return msg.as_bytes(policy=policy.SMTP)
    except (UnicodeError, ValueError, TypeError):  # headers the strict policy will not write again
        return msg.as_bytes(policy=policy.compat32)


# --- MSG ----------------------------------------------------------------------------------------------------------

_ATTACH_PREFIX = "__attach_version1.0_#"
_PROPS = "__properties_version1.0"
_PT_SYSTIME, _PT_LONG = 0x0040, 0x0003
_PR_CLIENT_SUBMIT_TIME, _PR_MESSAGE_DELIVERY_TIME, _PR_MESSAGE_CODEPAGE = 0x0039, 0x0E06, 0x3FFD


def read_msg(name: str, data: bytes, ctx: ReadContext) -> Document:
    import olefile

    if not olefile.isOleFile(data):
        raise LoadError(f"{name}: not an Outlook .msg file (not an OLE compound file)")
    try:
        ole = olefile.OleFileIO(data)
    except OSError as exc:  # olefile's own errors are OSErrors too
        raise LoadError(f"{name}: a corrupt OLE compound file ({exc})") from exc
    try:
        return _msg_document(name, _Msg(ole, ""))
    finally:
        ole.close()


class _Msg:
    """One message's properties inside an OLE file: its __substg1.0_ streams and its fixed-size properties."""

    def __init__(self, ole: Any, prefix: str, header: int = 32) -> None:
        self.ole, self.prefix = ole, prefix
        self.fixed = _fixed_properties(self._stream(_PROPS), header)
        cp = self.fixed.get((_PR_MESSAGE_CODEPAGE, _PT_LONG))
        self.codepage = f"cp{struct.unpack_from('<I', cp)[0]}" if cp else "cp1252"

    def _stream(self, name: str) -> bytes:
        path = self.prefix + name
        if not self.ole.exists(path) or self.ole.get_type(path) != 2:  # 2: a stream
            return b""
        data: bytes = self.ole.openstream(path).read()
        return data

    def text(self, prop: str) -> str:
        """A string property: PT_UNICODE (001F, UTF-16LE), else PT_STRING8 (001E, the message's code page)."""
        wide = self._stream(f"__substg1.0_{prop}001F")
        if wide:
            return wide.decode("utf-16-le", errors="replace").rstrip("\x00")
        narrow = self._stream(f"__substg1.0_{prop}001E")
        try:
            return narrow.decode(self.codepage, errors="replace").rstrip("\x00")
        except LookupError:
            return narrow.decode("cp1252", errors="replace").rstrip("\x00")

    def binary(self, prop: str) -> bytes:
        return self._stream(f"__substg1.0_{prop}0102")

    def time(self, prop: int) -> dt.datetime | None:
        raw = self.fixed.get((prop, _PT_SYSTIME))
        if not raw:
            return None
        ticks = struct.unpack_from("<Q", raw)[0]  # FILETIME: 100 ns since 1601-01-01 UTC
        try:
            return dt.datetime(1601, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ticks // 10)
        except OverflowError:
            return None


def _fixed_properties(stream: bytes, header: int) -> dict[tuple[int, int], bytes]:
    """(property id, type) → its 8-byte value, from a __properties_version1.0 stream (16 bytes per entry)."""
    out: dict[tuple[int, int], bytes] = {}
    for off in range(header, len(stream) - 15, 16):
        tag = struct.unpack_from("<I", stream, off)[0]
        out[(tag >> 16, tag & 0xFFFF)] = stream[off + 8 : off + 16]
    return out


def _msg_document(name: str, msg: _Msg) -> Document:
    subject = msg.text("0037")
    sender, address = msg.text("0C1A"), msg.text("0C1F")
    if "@" not in address:  # an Exchange address (/O=…/CN=…): the SMTP one is kept apart
        address = msg.text("5D01") or address
    sender = f"{sender} <{address}>" if sender and address and address != sender else sender or address
    when = msg.time(_PR_CLIENT_SUBMIT_TIME) or msg.time(_PR_MESSAGE_DELIVERY_TIME)
    fields = [("From", sender), ("To", msg.text("0E04")), ("Cc", msg.text("0E03"))]
    fields += [("Date", _iso(when)), ("Subject", subject)]
    plain = msg.text("1000")
    html = "" if plain.strip() else _decode_html(msg.binary("1013"), msg.codepage)
    sections = [_header_section(fields, subject), *_body_sections(name, plain, html, subject)]
    attachments: list[Attachment] = []
    skipped: list[str] = []
    for n, storage in enumerate(_attachment_storages(msg.ole), start=1):
        _msg_attachment(_Msg(msg.ole, storage + "/", header=8), n, attachments, skipped)
    if skipped:
        sections.append(Section("\n".join(skipped), subject))
    return Document(subject or Path(name).stem, "email", sections, attachments)


def _decode_html(raw: bytes, codepage: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        try:
            return raw.decode(codepage, errors="replace")
        except LookupError:
            return raw.decode("cp1252", errors="replace")


def _attachment_storages(ole: Any) -> list[str]:
    tops = {entry[0] for entry in ole.listdir(streams=False, storages=True)}
    return sorted(t for t in tops if t.startswith(_ATTACH_PREFIX))


def _msg_attachment(att: _Msg, n: int, attachments: list[Attachment], skipped: list[str]) -> None:
    filename = att.text("3707") or att.text("3704") or att.text("3001")
    if att.ole.exists(att.prefix + "__substg1.0_3701000D"):
        label = filename or att.text("3001") or f"message {n}"
        skipped.append(f"Attached Outlook message not read: {label} (embedded .msg messages are not opened)")
        return
    data = att.binary("3701")
    if not data:
        return  # an OLE object or a link, with no file to read
    _unique(attachments, _safe_name(filename, f"attachment-{n}.bin"), data)
