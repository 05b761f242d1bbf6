"""A small Compound File Binary writer (MS-CFB version 3) for tests: the .msg files olefile cannot write.

A tree is a dict: a name maps to bytes (a stream) or to a dict (a storage). Streams under 4096 bytes go in the
mini stream (64-byte mini sectors, chained by the MiniFAT), larger ones in 512-byte sectors chained by the FAT.
Siblings form a balanced binary tree ordered as the format orders names (length, then upper case), all black.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SECTOR, MINI, CUTOFF = 512, 64, 4096
FREE, END, FATSECT, NOSTREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF


@dataclass
class _Entry:
    name: str
    kind: int  # 1 storage, 2 stream, 5 root
    data: bytes = b""
    children: list[int] = field(default_factory=list)
    left: int = NOSTREAM
    right: int = NOSTREAM
    child: int = NOSTREAM
    start: int = END


def _flatten(tree: dict[str, object], entries: list[_Entry], parent: _Entry) -> None:
    for name, value in tree.items():
        entries.append(_Entry(name, 1 if isinstance(value, dict) else 2, value if isinstance(value, bytes) else b""))
        parent.children.append(len(entries) - 1)
        if isinstance(value, dict):
            _flatten(value, entries, entries[-1])


def _link(entries: list[_Entry], ids: list[int]) -> int:
    """The root of a balanced tree over ids (sorted as CFB sorts names); left/right set on the way."""
    if not ids:
        return NOSTREAM
    mid = len(ids) // 2
    node = entries[ids[mid]]
    node.left, node.right = _link(entries, ids[:mid]), _link(entries, ids[mid + 1 :])
    return ids[mid]


def _chain(fat: list[int], start: int, count: int) -> int:
    for i in range(count):
        fat[start + i] = start + i + 1 if i < count - 1 else END
    return start if count else END


def _sectors(n: int, size: int) -> int:
    return -(-n // size)


def write_cfb(tree: dict[str, object]) -> bytes:
    root = _Entry("Root Entry", 5)
    entries = [root]
    _flatten(tree, entries, root)
    for e in entries:
        e.child = _link(entries, sorted(e.children, key=lambda i: (len(entries[i].name), entries[i].name.upper())))
    small = [e for e in entries if e.kind == 2 and 0 < len(e.data) < CUTOFF]
    big = [e for e in entries if e.kind == 2 and len(e.data) >= CUTOFF]
    minifat: list[int] = []
    ministream = b""
    for e in small:
        e.start, n = len(minifat), _sectors(len(e.data), MINI)
        minifat.extend(range(e.start + 1, e.start + n))
        minifat.append(END)
        ministream += e.data.ljust(n * MINI, b"\0")
    n_dir = _sectors(len(entries), SECTOR // 128)
    n_minifat = _sectors(len(minifat), SECTOR // 4)
    n_mini = _sectors(len(ministream), SECTOR)
    n_data = n_dir + n_minifat + n_mini + sum(_sectors(len(e.data), SECTOR) for e in big)
    n_fat = 1
    while n_fat * (SECTOR // 4) < n_fat + n_data:
        n_fat += 1
    assert n_fat <= 109, "a test file this large needs DIFAT sectors"
    fat = [FREE] * (n_fat * SECTOR // 4)
    fat[:n_fat] = [FATSECT] * n_fat
    at = n_fat
    dir_start = _chain(fat, at, n_dir)
    at += n_dir
    minifat_start = _chain(fat, at, n_minifat)
    at += n_minifat
    root.start, root.data = _chain(fat, at, n_mini), ministream
    at += n_mini
    body = b""
    for e in big:
        n = _sectors(len(e.data), SECTOR)
        e.start = _chain(fat, at, n)
        at += n
        body += e.data.ljust(n * SECTOR, b"\0")
    directory = b"".join(_dir_entry(e) for e in entries).ljust(n_dir * SECTOR, b"\0")
    for i in range(len(entries), n_dir * 4):  # unused slots: empty entries with no siblings
        off = i * 128 + 68
        directory = directory[:off] + struct.pack("<III", NOSTREAM, NOSTREAM, NOSTREAM) + directory[off + 12 :]
    header = struct.pack(
        "<8s16sHHHHH6sIIIIIIIII",
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"\0" * 16, 0x3E, 3, 0xFFFE, 9, 6, b"\0" * 6,
        0, n_fat, dir_start, 0, CUTOFF, minifat_start if n_minifat else END, n_minifat, END, 0,
    )  # fmt: skip
    header += struct.pack("<109I", *range(n_fat), *[FREE] * (109 - n_fat))
    minifat_bytes = struct.pack(f"<{len(minifat)}I", *minifat).ljust(n_minifat * SECTOR, b"\xff")
    fat_bytes = struct.pack(f"<{len(fat)}I", *fat)
    return header + fat_bytes + directory + minifat_bytes + ministream.ljust(n_mini * SECTOR, b"\0") + body


def _dir_entry(e: _Entry) -> bytes:
    name = e.name.encode("utf-16-le") + b"\0\0"
    assert len(name) <= 64, e.name
    size = len(e.data) if e.kind != 1 else 0
    start = e.start if size else (END if e.kind != 1 else 0)
    return struct.pack(
        "<64sHBBIII16sIQQIQ", name, len(name), e.kind, 1, e.left, e.right, e.child, b"\0" * 16, 0, 0, 0, start, size
    )
