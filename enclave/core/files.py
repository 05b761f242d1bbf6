"""Files that readers never see half-written (write beside, then rename) and an advisory lock across processes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path


def temp_sibling(final: Path) -> Path:
    """A hidden name beside `final`, unique to this process and thread (never mkstemp: its 0600 mode would
    survive the rename and hide the file from a server running as another user)."""
    return final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.{secrets.token_hex(3)}.tmp")


@contextlib.contextmanager
def atomic_path(final: Path, *, directory: bool = False, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `final` to fill (a file, or with `directory` a folder it creates);
    when the block ends without an error it takes `final`'s place in one rename, and it is removed otherwise.

    A folder already at `final` is replaced when `overwrite`; without it the first writer wins and this
    one's copy is dropped (two processes converting the same model at once)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if directory and final.exists():
            if not overwrite:
                return
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: str | bytes, *, fsync: bool = False) -> None:
    """Write `data` to `path` whole: a reader sees the old file or the new one, never a part."""
    with atomic_path(Path(path)) as tmp, tmp.open("wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if missing) for the block: one process at a time."""
    with open(path, "a") as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
