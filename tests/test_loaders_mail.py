"""Mail readers on real files: EML made with the stdlib email package, Outlook MSG made by tests/cfb_writer.py."""

from __future__ import annotations

import datetime as dt
import email
import email.utils
import io
import struct
from email import policy
from email.message import EmailMessage

import olefile
import pytest
from reportlab.pdfgen import canvas

from enclave.knowledge.loaders import LoadError, ReadContext, load
from enclave.knowledge.loaders.mail import read_eml, read_msg
from tests.cfb_writer import write_cfb

SENT = dt.datetime(2024, 7, 1, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
HEADER = """From: Alice Example <alice@example.com>
To: Bob <bob@example.com>, carol@example.com
Cc: Dan <dan@example.com>
Date: 2024-07-01 09:30+02:00
Subject: Q3 budget — final"""


def pdf_bytes(text: str) -> bytes:
    buf = io.BytesIO()
    page = canvas.Canvas(buf)
    page.drawString(72, 720, text)
    page.save()
    return buf.getvalue()


def budget_eml() -> bytes:
    """Plain and HTML alternatives, a PDF, and a forwarded message (message/rfc822)."""
    msg = EmailMessage()
    msg["From"] = "Alice Example <alice@example.com>"
    msg["To"] = "Bob <bob@example.com>, carol@example.com"
    msg["Cc"] = "Dan <dan@example.com>"
    msg["Date"] = email.utils.format_datetime(SENT)
    msg["Subject"] = "Q3 budget — final"  # not ASCII: sent RFC 2047-encoded
    msg.set_content("Hi Bob,\n\nthe Q3 budget is attached; toner is 0.3 of it.\n")
    msg.add_alternative("<html><body><p>Hi Bob, the <b>Q3</b> budget (HTML part).</p></body></html>", subtype="html")
    msg.add_attachment(
        pdf_bytes("Budget Q3: paper 3, ink 2.5"), maintype="application", subtype="pdf", filename="Budget Q3.pdf"
    )
    fwd = EmailMessage()
    fwd["From"] = "Supplier <sales@example.net>"
    fwd["To"] = "Alice Example <alice@example.com>"
    fwd["Subject"] = "Re: toner"
    fwd.set_content("Toner arrives Friday.\n")
    msg.add_attachment(fwd)
    return msg.as_bytes()


def test_eml_header_body_and_attachments() -> None:
    data = budget_eml()
    assert b"=?utf-8?" in data  # the subject really travels encoded
    doc = load("budget.eml", data)
    assert (doc.title, doc.kind) == ("Q3 budget — final", "email")
    assert [(s.heading, s.text) for s in doc.sections] == [
        ("Q3 budget — final", HEADER),
        ("Q3 budget — final", "Hi Bob,\n\nthe Q3 budget is attached; toner is 0.3 of it."),
    ]  # the plain body is preferred: the HTML alternative is neither read nor attached
    assert [a.name for a in doc.attachments] == ["Budget Q3.pdf", "Re: toner.eml"]
    pdf = load(f"budget.eml#{doc.attachments[0].name}", doc.attachments[0].data)
    assert "Budget Q3: paper 3, ink 2.5" in pdf.text
    forwarded = load(f"budget.eml#{doc.attachments[1].name}", doc.attachments[1].data)
    assert forwarded.title == "Re: toner"
    assert forwarded.sections[0].text.startswith("From: Supplier <sales@example.net>\nTo: Alice Example")
    assert forwarded.sections[1].text == "Toner arrives Friday."


def test_eml_html_only_body_is_read_by_the_html_reader() -> None:
    msg = EmailMessage()
    msg["From"] = "news@example.com"
    msg["Subject"] = "Newsletter"
    msg.set_content(
        "<html><head><style>p{color:red}</style></head><body><nav>Home | About</nav><p>Intro line.</p>"
        "<h2>Toner prices</h2><p>Toner is cheaper in July.</p></body></html>",
        subtype="html",
    )
    # Images the HTML shows (multipart/related) are part of the body, not attachments: one marked inline, one
    # only named (Content-Type's name) and referred to by its Content-ID.
    png = b"\x89PNG\r\n\x1a\n" + bytes(40)
    msg.add_related(png, "image", "png", cid="<logo@x>", filename="logo.png", disposition="inline")
    msg.add_related(png, "image", "png", cid="<chart@x>", params={"name": "chart.png"})
    del list(msg.iter_parts())[2]["Content-Disposition"]
    assert msg.get_content_type() == "multipart/related"
    assert [p.get_filename() for p in msg.iter_parts()] == [None, "logo.png", "chart.png"]
    doc = read_eml("news.eml", msg.as_bytes(), ReadContext())
    assert [(s.heading, s.text) for s in doc.sections] == [
        ("Newsletter", "From: news@example.com\nSubject: Newsletter"),
        ("Newsletter", "Intro line."),
        ("Toner prices", "Toner is cheaper in July."),
    ]
    assert doc.attachments == []


def test_eml_attachments_with_one_name_are_kept_apart() -> None:
    msg = EmailMessage()
    msg["Subject"] = "Two reports"
    msg.set_content("Both attached.")
    for text in ("first", "second"):
        msg.add_attachment(text.encode(), maintype="text", subtype="plain", filename="dir/report.txt")
    msg.add_attachment(b"no name given", maintype="text", subtype="plain", disposition="attachment")
    doc = load("two.eml", msg.as_bytes())
    assert [(a.name, a.data) for a in doc.attachments] == [
        ("dir report.txt", b"first"),
        ("dir report (2).txt", b"second"),
        ("attachment-3.txt", b"no name given"),
    ]


def test_not_a_mail_is_refused_with_the_reason() -> None:
    with pytest.raises(LoadError, match=r"junk\.eml: not an e-mail message"):
        load("junk.eml", b"\x89PNG\r\n\x1a\nnothing like a mail at all")


# --- MSG ----------------------------------------------------------------------------------------------------------


def utf16(text: str) -> bytes:
    return text.encode("utf-16-le")


def filetime(when: dt.datetime) -> int:
    return int((when - dt.datetime(1601, 1, 1, tzinfo=dt.UTC)).total_seconds() * 10_000_000)


def properties(header: int, *entries: tuple[int, int, bytes]) -> bytes:
    """A __properties_version1.0 stream: its header, then (id, type, 8-byte value) entries of 16 bytes."""
    return bytes(header) + b"".join(struct.pack("<II", pid << 16 | ptype, 6) + value for pid, ptype, value in entries)


BODY = "Hi Bob,\r\n\r\nthe Q3 budget is attached.\r\n" + "Line of the long Outlook body.\r\n" * 80
PDF = pdf_bytes("Budget Q3: paper 3, ink 2.5")


def budget_msg() -> bytes:
    """An Outlook message: Unicode properties, a long body (in normal sectors, the rest in the mini stream), a PDF
    and a text attachment, an attached Outlook message, a recipient and the named-property storage."""
    return write_cfb(
        {
            "__properties_version1.0": properties(32, (0x0039, 0x0040, struct.pack("<Q", filetime(SENT)))),
            "__substg1.0_0037001F": utf16("Q3 budget — final"),
            "__substg1.0_0C1A001F": utf16("Alice Example"),
            "__substg1.0_0C1F001F": utf16("/O=EXAMPLE/OU=EXCHANGE/CN=RECIPIENTS/CN=ALICE"),
            "__substg1.0_5D01001F": utf16("alice@example.com"),
            "__substg1.0_0E04001F": utf16("Bob; Carol"),
            "__substg1.0_0E03001F": utf16("Dan"),
            "__substg1.0_1000001F": utf16(BODY),
            "__nameid_version1.0": {"__substg1.0_00020102": b""},
            "__recip_version1.0_#00000000": {"__substg1.0_3001001F": utf16("Bob")},
            "__attach_version1.0_#00000000": {
                "__properties_version1.0": properties(8, (0x3705, 0x0003, struct.pack("<Q", 1))),
                "__substg1.0_3704001F": utf16("BUDGET~1.PDF"),
                "__substg1.0_3707001F": utf16("Budget Q3.pdf"),
                "__substg1.0_37010102": PDF,
            },
            "__attach_version1.0_#00000001": {
                "__substg1.0_3704001F": utf16("notes.txt"),
                "__substg1.0_37010102": b"Toner arrives Friday.",
            },
            "__attach_version1.0_#00000002": {
                "__substg1.0_3001001F": utf16("Re: toner"),
                "__substg1.0_3701000D": {"__substg1.0_0037001F": utf16("Re: toner")},
            },
        }
    )


def test_msg_header_body_and_attachments() -> None:
    data = budget_msg()
    ole = olefile.OleFileIO(data, raise_defects=olefile.DEFECT_INCORRECT)  # the writer's file is a clean one
    assert ole.get_size("__substg1.0_1000001F") >= 4096 and ole.exists(
        "__attach_version1.0_#00000002/__substg1.0_3701000D"
    )
    ole.close()
    doc = load("budget.msg", data)
    assert (doc.title, doc.kind) == ("Q3 budget — final", "email")
    assert [(s.heading, s.text) for s in doc.sections] == [
        (
            "Q3 budget — final",
            HEADER.replace("To: Bob <bob@example.com>, carol@example.com", "To: Bob; Carol")
            .replace("Cc: Dan <dan@example.com>", "Cc: Dan")
            .replace("09:30+02:00", "07:30+00:00"),
        ),
        ("Q3 budget — final", BODY.replace("\r\n", "\n").strip()),
        ("Q3 budget — final", "Attached Outlook message not read: Re: toner (embedded .msg messages are not opened)"),
    ]
    assert [(a.name, a.data) for a in doc.attachments] == [
        ("Budget Q3.pdf", PDF),
        ("notes.txt", b"Toner arrives Friday."),
    ]
    assert "Budget Q3: paper 3, ink 2.5" in load("budget.msg#Budget Q3.pdf", PDF).text


def test_msg_with_8_bit_properties_and_only_an_html_body() -> None:
    html = "<html><body><p>Caf\xe9 order: 3 cups.</p><h2>Delivery</h2><p>Friday.</p></body></html>"
    data = write_cfb(
        {
            "__properties_version1.0": properties(32),
            "__substg1.0_0037001E": "Caf\xe9 order".encode("cp1252"),
            "__substg1.0_0C1F001E": b"chef@example.com",
            "__substg1.0_10130102": html.encode("cp1252"),
        }
    )
    doc = read_msg("order.msg", data, ReadContext())
    assert [(s.heading, s.text) for s in doc.sections] == [
        ("Café order", "From: chef@example.com\nSubject: Café order"),
        ("Café order", "Café order: 3 cups."),
        ("Delivery", "Friday."),
    ]
    assert doc.title == "Café order" and doc.attachments == []


def test_msg_that_is_not_an_ole_file_is_refused_with_the_reason() -> None:
    with pytest.raises(LoadError, match=r"mail\.msg: not an Outlook \.msg file \(not an OLE compound file\)"):
        load("mail.msg", budget_eml())
    broken = budget_msg()[:1536]  # the header promises sectors that are not there
    with pytest.raises(LoadError, match=r"mail\.msg: "):
        load("mail.msg", broken)


def test_eml_round_trip_through_the_stdlib_parser_keeps_the_forwarded_message() -> None:
    doc = load("budget.eml", budget_eml())
    inner = email.message_from_bytes(doc.attachments[1].data, policy=policy.default)
    assert inner["Subject"] == "Re: toner" and inner.get_content().strip() == "Toner arrives Friday."
