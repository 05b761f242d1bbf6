"""Reading a Chroma collection whole: every row, a page at a time."""

from __future__ import annotations

from typing import Any

# Rows per `get` when reading a whole collection: one `get` of ~100k rows overflows SQLite's bound variables.
PAGE = 5_000


def get_all(col: Any, include: list[str], page: int = PAGE) -> dict[str, list[Any]]:
    """Every row of a Chroma collection (ids plus `include`), read a page at a time, in storage order."""
    out: dict[str, list[Any]] = {"ids": [], **{k: [] for k in include}}
    offset = 0
    while True:
        got = col.get(include=include, limit=page, offset=offset)
        for key in out:
            out[key] += list(got[key]) if got[key] is not None else []  # embeddings come as an array
        if len(got["ids"]) < page:
            return out
        offset += page
