"""Same content, same answers, whatever the format: `python -m bench.formats`.

The corpus is the Python 3.11 library reference from Debian's `python3.11-doc` (HTML no one here wrote). A spread
of its module pages, their main text only (Sphinx's sidebars dropped, as the HTML reader drops them), is converted
by LibreOffice (Debian, headless) to DOCX, ODT and PDF, and the PDFs are rendered to page images and bound into
image-only PDFs: the scanned copy. Each format goes into its own collection; the question of a page is its
one-line synopsis (an attribute of the page, not its text, as in bench.retrieval), and hit@5 is whether the page
is among the first five documents the hybrid search returns. Each format is compared with the HTML original
question by question (paired bootstrap interval); the scanned copy with the HTML of the same pages.

Tables: rows of the reference's tables with short cells become questions ("In the struct module's table, what
is the C Type for Format `h`?"); the pages go in as DOCX (LibreOffice) and their tables as XLSX (one sheet per
table, named by its section), and the pipeline answers each question from each; right = the answer holds the
cell's text. Reading speed is pages per second from bytes to chunks (embedding, the same for every format, is
timed apart), pages counted as LibreOffice lays the document out in its PDF.

Prints a table and writes bench/results/formats.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.answers import spread
from bench.machine import cpu_model
from enclave.core.settings import Settings, offline_environment
from enclave.core.stats import bootstrap_mean, wilson

ROOT = Path(__file__).resolve().parents[1]
DOCS = Path("/usr/share/doc/python3.11/html/library")
OUT = ROOT / "bench" / "results" / "formats.json"
CONVERTED = ("docx", "odt", "pdf")
FILTERS = {"docx": "docx:MS Word 2007 XML", "odt": "odt", "pdf": "pdf"}  # LibreOffice's export filter per suffix
MAIN = '//div[@role="main"] | //div[contains(concat(" ", normalize-space(@class), " "), " body ")]'


# -- the corpus --------------------------------------------------------------------------------------
def clean_html(src: Path, dst: Path) -> None:
    """The page's title and main text only: what every format is made from."""
    import lxml.html

    doc = lxml.html.parse(str(src)).getroot()
    title = doc.findtext(".//title") or src.stem
    main = doc.xpath(MAIN)
    body = main[0] if main else doc.find("body")
    for el in body.xpath('.//a[@class="headerlink"]'):
        el.drop_tree()
    for el in body.xpath(".//*[@title]"):  # the synopsis, which is the question, is in an h1's title
        del el.attrib["title"]
    inner = lxml.html.tostring(body, encoding="unicode")
    dst.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body>{inner}</body></html>",
        encoding="utf-8",
    )


def convert(files: list[Path], fmt: str, outdir: Path) -> None:
    """LibreOffice, headless, in one process per batch; files already converted are kept. A profile of its own (a
    LibreOffice already running would take the job and return at once), and a second try: the first start of a
    new profile may exit without converting."""
    outdir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(2):
        todo = [f for f in files if not (outdir / f"{f.stem}.{fmt}").exists()]
        for i in range(0, len(todo), 40):
            subprocess.run(
                [
                    "soffice",
                    f"-env:UserInstallation=file://{outdir.parent / '.lo-profile'}",
                    "--headless",
                    "--norestore",
                    "--convert-to",
                    FILTERS.get(fmt, fmt),
                    "--outdir",
                    str(outdir),
                    *map(str, todo[i : i + 40]),
                ],
                check=True,
                capture_output=True,
                timeout=1800,
            )
    missing = [f.name for f in files if not (outdir / f"{f.stem}.{fmt}").exists()]
    if missing:
        raise SystemExit(f"LibreOffice did not convert {len(missing)} files to {fmt}: {missing[:5]}")


def scan(pdf: Path, out: Path, dpi: int = 150) -> int:
    """The PDF as a scanner would give it back: each page a grey JPEG-compressed image, no text layer."""
    import io

    import pypdfium2 as pdfium
    from PIL import Image

    images = []
    doc = pdfium.PdfDocument(str(pdf))
    try:
        for page in doc:
            img = page.render(scale=dpi / 72).to_pil().convert("L")
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=70)
            images.append(Image.open(io.BytesIO(buf.getvalue())))
    finally:
        doc.close()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], resolution=dpi)
    return len(images)


def pdf_pages(pdf: Path) -> int:
    from pypdf import PdfReader

    return len(PdfReader(str(pdf)).pages)


# -- tables ------------------------------------------------------------------------------------------
def page_tables(html: Path) -> list[tuple[str, list[str], list[list[str]]]]:
    """(section heading, header, rows) of each table with a header row in a page."""
    import lxml.html

    doc = lxml.html.parse(str(html)).getroot()
    out = []
    for t in doc.iter("table"):
        if t.find("thead") is None:
            continue  # no header row: the first row is data
        rows = [
            [" ".join(c.text_content().replace("¶", "").split()) for c in tr.iter("th", "td")] for tr in t.iter("tr")
        ]
        rows = [r for r in rows if any(r)]
        if len(rows) < 3 or len(rows[0]) < 2 or max(len(h) for h in rows[0]) > 30:
            continue
        heading = ""
        for h in t.itersiblings(preceding=True):
            if h.tag in ("h2", "h3", "h4"):
                heading = h.text_content()
                break
        if not heading:
            for anc in t.iterancestors("section", "div"):
                h = anc.find(".//h2") if anc.find(".//h2") is not None else anc.find(".//h1")
                if h is not None:
                    heading = h.text_content()
                    break
        out.append((heading.replace("¶", "").strip() or html.stem, rows[0], rows[1:]))
    return out


def table_questions(pages: list[Path], per_table: int = 2) -> list[dict[str, Any]]:
    """Questions whose answer is one short cell, its row named by the first column's (unique) key."""
    out = []
    for page in pages:
        module = page.stem
        for t, (heading, header, rows) in enumerate(page_tables(page)):
            keys = [r[0] for r in rows if r]
            picked = 0
            for r in rows:
                if picked >= per_table or len(r) != len(header) or not r[0] or keys.count(r[0]) > 1:
                    continue
                for j in range(1, len(header)):
                    cell = r[j]
                    if not (3 <= len(cell) <= 40) or not header[j] or cell == r[0] or cell.lower() in {"none", "yes"}:
                        continue
                    if sum(row[j] == cell for row in rows if len(row) > j) > 1:
                        continue  # the column repeats it: the row would not matter
                    out.append(
                        {
                            "id": f"{module}:{t}:{r[0]}:{j}",
                            "module": module,
                            # As a person asks: the module and the row, not where the table sits in the page.
                            "question": f"In {module}, what is the {header[j]} of {header[0]} `{r[0]}`?",
                            "table": heading,
                            "cell": cell,
                        }
                    )
                    picked += 1
                    break
    return out


def write_xlsx(html: Path, out: Path) -> int:
    """The page's tables as a workbook: one sheet per table, named by its section (Excel's 31 characters)."""
    from openpyxl import Workbook

    wb = Workbook()
    wb.remove(wb.active)
    used: set[str] = set()
    tables = page_tables(html)
    for i, (heading, header, rows) in enumerate(tables):
        name = re.sub(r"[\[\]:*?/\\]", " ", heading)[:28].strip() or f"Table {i + 1}"
        while name in used:
            name = f"{name[:25]} {i + 1}"
        used.add(name)
        ws = wb.create_sheet(name)
        ws.append(header)
        for r in rows:
            ws.append(r)
    if tables:
        wb.save(out)
    return len(tables)


def right(answer: str, cell: str) -> bool:
    """The answer holds the cell's text (quotes, case and spacing aside; not inside a longer token: "0 - north" is
    not in "90 - north"); a cell of several words may come back reworded in order, so there every word of it must
    be in the answer."""

    def norm(text: str) -> str:
        return " ".join(re.sub(r"[`'\"“”‘’]", "", text).lower().split()).rstrip(".")

    a, c = norm(answer), norm(cell)
    if re.search(rf"(?<![\w.-]){re.escape(c)}(?![\w-])", a):
        return True
    words = re.findall(r"\w+", c)
    return len(words) > 3 and all(re.search(rf"\b{re.escape(w)}\b", a) for w in words)


def outcome(got: dict[str, Any], cell: str) -> str:
    """right, declined or wrong. A decline quotes the closest passages, which may hold the cell: never right."""
    if got.get("documents") == "declined" or got.get("quoted_instead"):
        return "declined"
    return "right" if right(got["answer"], cell) else "wrong"


# -- measuring ---------------------------------------------------------------------------------------
def ingest(kb: Any, collection: str, files: list[Path], console: Console, label: str) -> dict[str, Any]:
    """Each file ingested once; reading to chunks timed up to the store's "embedding" stage, the rest apart."""
    from enclave.knowledge.store import IngestReport

    read_s = embed_s = 0.0
    report = IngestReport()
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stage]}"),
        console=console,
    ) as bar:
        task = bar.add_task(label, total=len(files), stage="")
        for f in files:
            data = f.read_bytes()
            marks: dict[str, float] = {}

            def tell(stage: str, marks: dict[str, float] = marks) -> None:
                bar.update(task, stage=stage)
                if stage.startswith("embedding"):
                    marks["embed"] = time.perf_counter()

            t0 = time.perf_counter()
            kb.ingest_bytes(str(f), data, collection, report, progress=tell)
            t1 = time.perf_counter()
            read_s += marks.get("embed", t1) - t0
            embed_s += t1 - marks.get("embed", t1)
            bar.advance(task)
    return {"read_s": read_s, "embed_s": embed_s, "errors": report.skipped}


def hits(kb: Any, collection: str, qs: list[dict[str, Any]]) -> dict[str, bool]:
    from enclave.core.protocols import Principal

    who = Principal(name="bench")
    out = {}
    for q in qs:
        docs: list[str] = []
        for c in kb.search(q["query"], collection, who, k=30):
            stem = Path(c.uri).stem
            if stem not in docs:
                docs.append(stem)
        out[q["module"]] = q["stem"] in docs[:5]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=80, help="Module pages in every format.")
    ap.add_argument("--scanned", type=int, default=25, help="Of those, pages also scanned (OCR is the slow part).")
    ap.add_argument("--tables", type=int, default=30, help="Table questions answered (0: none, no model loaded).")
    ap.add_argument("--tables-only", action="store_true", help="Only the table questions (formats kept from --out).")
    ap.add_argument("--table-style", choices=("records", "markdown"), default="records", help="ingest.table_style")
    ap.add_argument("--table-formats", default="html,docx,xlsx", help="Which copies the table questions are asked of.")
    ap.add_argument("--data", type=Path, default=ROOT / ".cache" / "bench-formats")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    offline_environment()
    console = Console(width=max(140, Console().width))
    if shutil.which("soffice") is None:
        raise SystemExit("LibreOffice is needed: apt-get install libreoffice-writer-nogui libreoffice-calc-nogui")
    previous = json.loads(args.out.read_text()) if args.tables_only and args.out.exists() else {}
    formats = previous.get("formats", {}) if args.tables_only else measure_formats(args, console)
    tables = answer_tables(args, console) if args.tables else {}
    result = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "command": "python -m bench.formats " + " ".join(argv or []),
        "formats": formats,
        "tables": tables,
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print_table(result, console)
    return result


def measure_formats(args: argparse.Namespace, console: Console) -> dict[str, dict[str, Any]]:
    """Every format ingested into its own collection: hit@5 per format, paired with the HTML, and reading speed."""
    from bench.retrieval import questions

    qs = spread([{**q, "stem": Path(q["uri"]).stem} for q in questions(DOCS)], args.pages)
    src = args.data / "src"
    src.mkdir(parents=True, exist_ok=True)
    html = []
    for q in qs:
        dst = src / f"{q['stem']}.html"
        if not dst.exists():
            clean_html(Path(q["uri"]), dst)
        html.append(dst)
    console.print(f"converting {len(html)} pages with LibreOffice to {', '.join(CONVERTED)} (cached after once)")
    for fmt in CONVERTED:
        convert(html, fmt, args.data / fmt)
    pages = {f.stem: pdf_pages(args.data / "pdf" / f"{f.stem}.pdf") for f in html}
    scanned_qs = spread(qs, args.scanned)
    (args.data / "scanned").mkdir(exist_ok=True)
    for q in scanned_qs:
        out = args.data / "scanned" / f"{q['stem']}.pdf"
        if not out.exists():
            scan(args.data / "pdf" / out.name, out)

    settings = Settings(data_dir=str(args.data / f"kb-{int(time.time())}"))
    from enclave.knowledge.store import KnowledgeBase

    kb = KnowledgeBase.from_settings(settings)
    formats: dict[str, dict[str, Any]] = {}
    sets = {
        "html": (html, qs),
        **{f: ([args.data / f / f"{h.stem}.{f}" for h in html], qs) for f in CONVERTED},
        "html (scanned pages)": ([src / f"{q['stem']}.html" for q in scanned_qs], scanned_qs),
        "scanned pdf": ([args.data / "scanned" / f"{q['stem']}.pdf" for q in scanned_qs], scanned_qs),
    }
    for name, (files, asked) in sets.items():
        collection = "f-" + re.sub(r"[^a-z]+", "-", name).strip("-")
        timing = ingest(kb, collection, files, console, name)
        n_pages = sum(pages[f.stem] for f in files)
        got = hits(kb, collection, asked)
        formats[name] = {
            "questions": len(asked),
            "hit5": sum(got.values()) / len(got),
            "per_question": got,
            "hit5_ci": wilson(sum(got.values()), len(got)),
            "pages": n_pages,
            "pages_per_s": n_pages / timing["read_s"],
            "errors": timing["errors"],
            "embed_s": timing["embed_s"],
            "read_s": timing["read_s"],
        }
    for name, base in [*((f, "html") for f in CONVERTED), ("scanned pdf", "html (scanned pages)")]:
        a, b = formats[name]["per_question"], formats[base]["per_question"]
        mean, lo, hi = bootstrap_mean([float(a[m]) - float(b[m]) for m in a])
        formats[name]["vs_html"] = {"against": base, "diff": mean, "ci": [lo, hi]}
    return formats


def answer_tables(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """The pipeline answers table-cell questions from the DOCX and XLSX copies of the pages holding the tables."""
    from bench.answers import Runner

    all_pages = sorted(DOCS.glob("*.html"))
    qs = spread(table_questions([p for p in all_pages if p.stat().st_size < 400_000]), args.tables)
    modules = sorted({q["module"] for q in qs})
    src, docx, xlsx = args.data / "tables-src", args.data / "tables-docx", args.data / "tables-xlsx"
    for d in (src, xlsx):
        d.mkdir(parents=True, exist_ok=True)
    for m in modules:
        if not (src / f"{m}.html").exists():
            clean_html(DOCS / f"{m}.html", src / f"{m}.html")
        if not (xlsx / f"{m}.xlsx").exists():
            write_xlsx(src / f"{m}.html", xlsx / f"{m}.xlsx")
    convert([src / f"{m}.html" for m in modules], "docx", docx)
    settings = Settings(data_dir=str(args.data / f"tables-{int(time.time())}"))
    settings.rag.ingest_samples = False
    settings.ingest.table_style = args.table_style
    runner = Runner(settings)

    async def run() -> dict[str, Any]:
        await runner.start()
        out: dict[str, Any] = {}
        copies = {"html": (src, "html"), "docx": (docx, "docx"), "xlsx": (xlsx, "xlsx")}
        for fmt in args.table_formats.split(","):
            folder, suffix = copies[fmt]
            collection = f"t-{fmt}"
            for m in modules:
                runner.kb.ingest_bytes(
                    str(folder / f"{m}.{suffix}"), (folder / f"{m}.{suffix}").read_bytes(), collection
                )
            rows = []
            with Progress(
                TextColumn(f"[bold]tables {fmt}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as bar:
                task = bar.add_task(fmt, total=len(qs))
                for q in qs:
                    got = await runner.ask(q, collection, 120)
                    passages = runner.passages(collection, [str(x["id"]) for x in got["sources"]])
                    rows.append(
                        {
                            "id": q["id"],
                            "question": q["question"],
                            "cell": q["cell"],
                            "answer": got["answer"],
                            "outcome": outcome(got, q["cell"]),
                            # whether a passage put before the model holds the cell: reading vs finding
                            "retrieved": any(right(p, q["cell"]) for p in passages),
                        }
                    )
                    bar.advance(task)
            n = len(rows)
            out[fmt] = {"n": n, "table_style": args.table_style, "rows": rows}
            for what in ("right", "declined", "wrong"):
                k = sum(r["outcome"] == what for r in rows)
                out[fmt][what] = k / n
                out[fmt][f"{what}_ci"] = wilson(k, n)
            out[fmt]["retrieved"] = sum(r["retrieved"] for r in rows) / n
        return out

    return asyncio.run(run())


def print_table(result: dict[str, Any], console: Console) -> None:
    t = Table(title=f"Formats — {result['machine']['cpu']}, {result['machine']['cores']} cores")
    for c in ("format", "questions", "hit@5 (95% CI)", "vs HTML (paired 95% CI)", "pages/s to chunks", "errors"):
        t.add_column(c)
    for name, f in result["formats"].items():
        vs = f.get("vs_html")
        t.add_row(
            name,
            str(f["questions"]),
            f"{f['hit5']:.3f} ({f['hit5_ci'][0]:.2f}–{f['hit5_ci'][1]:.2f})",
            f"{vs['diff']:+.3f} ({vs['ci'][0]:+.2f}…{vs['ci'][1]:+.2f})" if vs else "—",
            f"{f['pages_per_s']:.1f}",
            str(len(f["errors"])),
        )
    console.print(t)
    for fmt, r in result.get("tables", {}).items():
        console.print(
            f"table cells from {fmt} ({r['table_style']}): right {r['right']:.2f} ({r['right_ci'][0]:.2f}–"
            f"{r['right_ci'][1]:.2f}), declined {r['declined']:.2f}, wrong {r['wrong']:.2f}; the cell was in the "
            f"passages {r['retrieved']:.2f}; n={r['n']}"
        )


if __name__ == "__main__":
    main()
