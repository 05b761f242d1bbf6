"""A table passage shows the model its header and the rows the question names, not its first 700 characters.

Ingestion writes a table's rows as records ("Type code: 'b'; C Type: signed char", one per line) or as
Markdown rows under their header. A question about one cell names its row by a value ("Type code `'b'`");
the small model, handed ten rows, takes the wrong one, and a passage cut at 700 characters may not even
hold the row. So when a passage is mostly table rows, the prompt gets its heading lines, the header, and
the few rows whose cells hold the question's values; citations and checks still use the whole passage.
"""

from __future__ import annotations

import re

# A record: "Key: value" pairs joined by "; " (keys short, as column names are).
_PAIR = re.compile(r"^\s*([^:;|]{1,60}):\s(.*)$")
_SPAN = re.compile(r"`([^`]+)`|\"([^\"]+)\"|“([^”]+)”")
_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.()\[\]-]*")
# The question's frame, not the row it names.
_FRAME = frozenset(
    "a an and are as at be by can do does for from how in is it its of on or that the this to was what when "
    "where which who whom whose why with value values row rows column columns table".split()
)


def _record_pairs(line: str) -> list[tuple[str, str]] | None:
    """A record line's (column, cell) pairs, or None when some part of it is not "Key: value"."""
    pairs = []
    for part in line.split("; "):
        m = _PAIR.match(part)
        if m is None:
            return None
        pairs.append((m.group(1).strip(), m.group(2).strip()))
    return pairs


def _markdown_cells(line: str) -> list[str] | None:
    s = line.strip()
    if not (s.startswith("|") and s.endswith("|")) or set(s) <= set("|-: "):
        return None
    return [c.strip() for c in s.strip("|").split("|")]


def _norm(text: str) -> str:
    return text.strip().strip("`").strip()


def _quoted(question: str) -> list[str]:
    """The values a question quotes (in backticks or quotation marks)."""
    return [_norm(next(g for g in m.groups() if g)) for m in _SPAN.finditer(question)]


def _score(cells: list[str], spans: list[str], words: set[str]) -> float:
    """A cell that is a value the question quotes counts most (as written, then in any case), one that holds
    it less, then the question's other words found in the cells."""
    values = [_norm(c) for c in cells]
    lower = [v.lower() for v in values]
    score = 0.0
    for span in spans:
        if span in values:
            score += 5
        elif span.lower() in lower:
            score += 3
        elif any(span.lower() in v for v in lower):
            score += 2
    in_cells = {w.lower() for v in cells for w in _WORD.findall(v)}
    return score + len(words & in_cells)


def focus(question: str, text: str, keep: int = 3) -> str:
    """`text` with only the (at most `keep`) table rows that best match `question`, best first, under its
    heading and header; `text` itself when it is not mostly table rows or no row holds what the question names."""
    lines = text.strip().splitlines()
    rows: list[tuple[int, list[str]]] = []
    for i, line in enumerate(lines):
        if "|" in line:
            cells = _markdown_cells(line)
        else:
            pairs = _record_pairs(line)
            cells = None if pairs is None else [cell for _, cell in pairs]
        if cells is not None and len(cells) >= 2:
            rows.append((i, cells))
    if len(rows) <= keep or len(rows) < len(lines) / 2:
        return text
    header_at = rows[0][0] if lines[rows[0][0]].lstrip().startswith("|") else -1  # a Markdown header row
    rows = [r for r in rows if r[0] != header_at]
    spans = _quoted(question)
    words = {w.lower() for w in _WORD.findall(_SPAN.sub(" ", question))} - _FRAME
    scored = sorted(((_score(cells, spans, words), i) for i, cells in rows), key=lambda x: (-x[0], x[1]))
    top = scored[0][0] if scored else 0
    if top <= 0:
        return text
    # The rows that match about as well as the best one (a value in another case, a second word less), best first.
    best = [i for s, i in scored[:keep] if s >= 0.75 * top]
    first_row = min(i for i, _ in rows) if header_at < 0 else header_at
    header = {header_at, header_at + 1} if header_at >= 0 else set()  # a Markdown header and its |---| line
    head = [line for i, line in enumerate(lines) if i < first_row or i in header]
    return "\n".join([*head, *(lines[i] for i in best)])


def _rows_with_keys(lines: list[str]) -> list[dict[str, str]]:
    """Each table row as {column: cell}: records name their columns, Markdown rows take their header's."""
    out: list[dict[str, str]] = []
    header: list[str] | None = None
    for line in lines:
        if "|" in line:
            cells = _markdown_cells(line)
            if cells is None:
                continue
            if header is None:
                header = cells
            elif len(cells) == len(header):
                out.append(dict(zip(header, cells, strict=True)))
            continue
        pairs = _record_pairs(line)
        if pairs is not None and len(pairs) >= 2:
            out.append(dict(pairs))
    return out


def named_cell(question: str, text: str) -> tuple[str, str] | None:
    """(column, cell) a question asks of a table row it names ("the C Type of Type code `'b'`"): the one row
    with a cell equal to a value the question quotes, and the column the question names (its longest column
    name found in the question, other than the one it quotes a value of); None when not exactly that."""
    spans = set(_quoted(question)) - {""}
    if not spans:
        return None
    asked = question.lower()
    found: list[tuple[str, str]] = []
    for row in _rows_with_keys(text.strip().splitlines()):
        if not spans & {_norm(v) for v in row.values()}:
            continue
        columns = [k for k, v in row.items() if _norm(v) not in spans and k and k.lower() in asked]
        if columns:  # the row holds the value, and a column the question names
            column = max(columns, key=len)
            found.append((column, row[column]))
    return found[0] if len(found) == 1 else None


def says_cell(sentence: str, cell: str) -> bool:
    """Whether a sentence gives the cell's text (quotes, backticks, case and spacing aside)."""

    def norm(s: str) -> str:
        return " ".join(re.sub(r"[`'\"“”‘’]", "", s).lower().split()).rstrip(".")

    c = norm(cell)
    # Not inside a longer token ("0 - north" is not in "90 - north"); a qualified name may end with it.
    return bool(c) and re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", norm(sentence)) is not None


_PIECE = re.compile(r"(?<=[.!?])\s+|\n+")


def window(question: str, text: str, chars: int) -> str:
    """Of a passage longer than `chars`, the run of its sentences (or lines) that fits in `chars` and holds most of
    the question's words: its beginning unless a later run holds more of them, then that run after "… "."""
    text = text.strip()
    if len(text) <= chars:
        return text
    words = {w.lower() for w in _WORD.findall(question)} - _FRAME
    pieces = [p for p in _PIECE.split(text) if p.strip()]
    best_start, best_score = 0, -1
    for start in range(len(pieces)):
        held: set[str] = set()
        size = 0
        for piece in pieces[start:]:
            if size and size + 1 + len(piece) > chars:
                break
            size += len(piece) + (1 if size else 0)
            held |= {w.lower() for w in _WORD.findall(piece)}
        score = len(words & held)
        if score > best_score:
            best_start, best_score = start, score
    if best_start == 0:
        return text[:chars]
    return ("… " + " ".join(pieces[best_start:]))[:chars]
