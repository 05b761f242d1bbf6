"""Which version of each adapter is served: the record, the versions kept to roll back to, and the promotion log.

`<adapters>/NAME` is the working copy that `enclave tune train --name NAME` writes. A promotion copies it to
`<adapters>/.served/NAME/vN` and records vN as served in `<adapters>/served.json` (written whole, under a lock
across processes), keeping the versions it replaced so that a rollback can restore them. Every promotion, refusal
and rollback is one line of `<adapters>/promotions.jsonl` with its figures, who and when. A name without a record
is served from its working copy, as before its first promotion.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from enclave.core.errors import InvalidRequest, NotFound
from enclave.core.files import atomic_path, atomic_write, file_lock

SERVED_DIR = ".served"
RECORD_FILE = "served.json"
LOG_FILE = "promotions.jsonl"
LOCK_FILE = ".served.lock"
KEEP = 5  # versions kept per name: the served one and up to four to roll back to
MAX_LOG_LINE = 1_000_000  # a longer line in the log is not ours: skipped when reading
_VERSION = re.compile(r"^v(\d{1,9})$")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ServedRecord:
    """served.json, the kept versions under .served/ and promotions.jsonl, all under one adapters folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / RECORD_FILE
        self.log_path = self.root / LOG_FILE

    # -- reading ------------------------------------------------------------------------------------
    def signature(self) -> str | None:
        """A digest of the record, to notice a rewrite cheaply (a tiny file); None without one."""
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except FileNotFoundError:
            return None

    def read(self) -> dict[str, dict[str, Any]]:
        """{name: {"version", "since", "by", "previous": [older versions, newest first]}}; {} without a record."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"{self.path} is corrupt: {exc}") from exc
        served = data.get("served") if isinstance(data, dict) else None
        if not isinstance(served, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("version"), str) for e in served.values()
        ):
            raise InvalidRequest(f"{self.path} is corrupt: expected {{'served': {{name: {{'version': ...}}}}}}")
        return served

    def version_folder(self, name: str, version: str) -> Path:
        return self.root / SERVED_DIR / name / version

    def served_folder(self, name: str, record: dict[str, dict[str, Any]] | None = None) -> Path | None:
        """The folder of the version served under `name`, or None when `name` has no record."""
        entry = (self.read() if record is None else record).get(name)
        return self.version_folder(name, entry["version"]) if entry else None

    def history(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every logged promotion, refusal and rollback (of `name`), oldest first; a torn line is skipped."""
        out: list[dict[str, Any]] = []
        try:
            f = self.log_path.open("rb")
        except FileNotFoundError:
            return out
        with f:
            for raw in f:
                if len(raw) > MAX_LOG_LINE:
                    continue
                try:
                    event = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(event, dict) and (name is None or event.get("name") == name):
                    out.append(event)
        return out

    # -- writing ------------------------------------------------------------------------------------
    def _write(self, record: dict[str, dict[str, Any]]) -> None:
        atomic_write(self.path, json.dumps({"served": record}, indent=2, sort_keys=True) + "\n", fsync=True)

    def _append(self, event: dict[str, Any]) -> None:
        with self.log_path.open("a") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _lock(self) -> Any:
        self.root.mkdir(parents=True, exist_ok=True)
        return file_lock(self.root / LOCK_FILE)

    def _next_version(self, name: str) -> str:
        folder = self.root / SERVED_DIR / name
        numbers = (
            [int(m.group(1)) for p in folder.iterdir() if (m := _VERSION.match(p.name))] if folder.is_dir() else []
        )
        return f"v{max(numbers, default=0) + 1}"

    def log(self, event: dict[str, Any]) -> dict[str, Any]:
        """Append one event (a refusal, say) to the log, stamped with the time."""
        event = {"at": now(), **event}
        with self._lock():
            self._append(event)
        return event

    def promote(self, name: str, source: Path, event: dict[str, Any], expect: str | None = "any") -> dict[str, Any]:
        """Copy the adapter folder `source` in as the next version of `name` and serve it; the version it replaces
        is kept for rollback. `event` (who, figures, forced) goes into the log line, returned. With `expect` (the
        version compared against, None for none) it refuses if another promotion changed what is served since."""
        with self._lock():
            record = self.read()
            old = record.get(name)
            current = old["version"] if old else None
            if expect != "any" and current != expect:
                raise InvalidRequest(
                    f"adapter '{name}' serves {current or 'its working copy'} now, not {expect or 'its working copy'} "
                    "as when the comparison started: compare again"
                )
            version = self._next_version(name)
            with atomic_path(self.version_folder(name, version), directory=True) as tmp:
                shutil.copytree(source, tmp, dirs_exist_ok=True, copy_function=shutil.copyfile)
            previous = ([old["version"], *old.get("previous", [])] if old else [])[: KEEP - 1]
            record[name] = {"version": version, "since": now(), "by": event.get("by"), "previous": previous}
            self._write(record)
            self._prune(name, {version, *previous})
            logged = {
                "at": record[name]["since"],
                **event,
                "action": "promote",
                "name": name,
                "version": version,
                "replaced": old["version"] if old else None,
            }
            self._append(logged)
        return logged

    def rollback(self, name: str, event: dict[str, Any]) -> dict[str, Any]:
        """Serve the version that the served one replaced again; the log line is returned."""
        with self._lock():
            record = self.read()
            entry = record.get(name)
            if entry is None:
                raise NotFound(f"adapter '{name}' has never been promoted: nothing to roll back")
            previous = list(entry.get("previous", []))
            if not previous:
                raise InvalidRequest(f"adapter '{name}' serves {entry['version']}, its first promotion: no earlier one")
            back = previous.pop(0)
            if not self.version_folder(name, back).is_dir():
                raise InvalidRequest(f"adapter '{name}': version {back} is missing from {self.root / SERVED_DIR}")
            record[name] = {"version": back, "since": now(), "by": event.get("by"), "previous": previous}
            self._write(record)
            logged = {
                "at": record[name]["since"],
                **event,
                "action": "rollback",
                "name": name,
                "version": back,
                "replaced": entry["version"],
            }
            self._append(logged)
        return logged

    def _prune(self, name: str, keep: set[str]) -> None:
        folder = self.root / SERVED_DIR / name
        for path in folder.iterdir():
            if _VERSION.match(path.name) and path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)
