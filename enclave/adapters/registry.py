"""The adapter registry: adapters on disk with their metadata, loaded into the serving model by name.

An adapter folder holds peft's files (adapter_config.json, adapter_model.safetensors) and
`enclave.json` (base model and its hash, dataset hash, hyperparameters, final loss, eval scores).
Loads and unloads take a lock per name; a bad adapter is refused and the server keeps what it had.
A name with a served record (`enclave adapters promote`, served.py) is loaded from its served version, not its
working copy; `follow` reloads a name in the running server when another process promotes or rolls it back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any, Protocol

from enclave.adapters.served import ServedRecord
from enclave.chat.taught import Taught, read_taught
from enclave.core.errors import InvalidRequest, NotFound
from enclave.core.files import atomic_write

META_FILE = "enclave.json"
DOMAIN_FILE = "domain.npy"  # embeddings of the training questions: the router's picture of the domain
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FOLLOW_SECONDS = 2.0  # how often a server looks for a promotion or rollback made by another process

log = logging.getLogger("enclave.adapters")


class AdapterHost(Protocol):
    """What the registry needs of a backend that loads adapters in this process: a `GenerationBackend` with
    `loads_adapters` set (the app passes None for the others), or a test's fake."""

    def list_adapters(self) -> list[str]: ...
    async def add_adapter(self, name: str, path: Path) -> None: ...
    async def remove_adapter(self, name: str) -> None: ...


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidRequest(f"invalid adapter name {name!r}: letters, digits, '.', '_' and '-', at most 64")
    return name


def read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except FileNotFoundError as exc:
        raise InvalidRequest(f"adapter '{folder.name}' has no {META_FILE}: not an Enclave adapter") from exc
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"adapter '{folder.name}' has a corrupt {META_FILE}: {exc.msg}") from exc
    if not isinstance(meta, dict):
        raise InvalidRequest(f"adapter '{folder.name}': {META_FILE} is not an object")
    return meta


def read_domain(folder: Path) -> Any:
    """The adapter's domain as an (n, dim) float32 array, or None if it recorded none (older adapters)."""
    import numpy as np

    path = folder / DOMAIN_FILE
    if not path.is_file():
        return None
    try:
        vecs = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return vecs if vecs.ndim == 2 and len(vecs) else None


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    atomic_write(folder / META_FILE, json.dumps(meta, indent=2, sort_keys=True))


class AdapterRegistry:
    def __init__(self, root: Path, host: AdapterHost | None, base_sha256: str | None) -> None:
        self.root = root
        self.host = host
        self.base_sha256 = base_sha256
        self.served = ServedRecord(root)
        self._locks: dict[str, asyncio.Lock] = {}
        self._domains: dict[str, Any] = {}
        self._taught: dict[str, Taught | None] = {}
        self._record: dict[str, dict[str, Any]] = {}
        self._signature: str | None = None
        self._read_record()
        self._seen = {name: entry["version"] for name, entry in self._record.items()}

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _read_record(self) -> bool:
        """Re-read served.json if it changed; True if it did. A corrupt one is logged and the last good one kept."""
        signature = self.served.signature()
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            self._record = self.served.read()
        except InvalidRequest as exc:
            log.error("%s; serving the adapters as before", exc.message)
            return False
        return True

    def folder(self, name: str) -> Path:
        """`name`'s working copy: what `enclave tune train --name` writes, and `tune eval` and a promotion read."""
        return self.root / check_name(name)

    def serving_folder(self, name: str) -> Path:
        """Where `name` is served from: its served version once promoted, else its working copy."""
        self._read_record()
        return self.served.served_folder(check_name(name), self._record) or self.root / name

    def names(self) -> list[str]:
        """Adapter folders on disk (hidden ones, such as .served and checkpoints, are not adapters) and served names."""
        self._read_record()
        on_disk = (
            {p.name for p in self.root.iterdir() if p.is_dir() and NAME_RE.match(p.name)}
            if self.root.is_dir()
            else set()
        )
        return sorted(on_disk | set(self._record))

    def available(self) -> list[dict[str, Any]]:
        """Every adapter on disk with its metadata, whether it is loaded, and which version is served."""
        loaded = set(self.host.list_adapters()) if self.host else set()
        out = []
        for name in self.names():
            folder = self.serving_folder(name)
            try:
                meta = read_meta(folder)
                problem = None
            except InvalidRequest as exc:
                meta, problem = {}, exc.message
            out.append(
                {
                    "name": name,
                    "loaded": name in loaded,
                    "base_model": meta.get("base_model"),
                    "rank": meta.get("hyperparameters", {}).get("rank"),
                    "final_loss": meta.get("final_loss"),
                    "eval": meta.get("eval"),
                    "created_at": meta.get("created_at"),
                    "served": self._record.get(name),
                    "problem": problem,
                }
            )
        return out

    def validate(self, name: str) -> Path:
        folder = self.folder(name)
        if not folder.is_dir():
            raise NotFound(f"unknown adapter '{name}'")
        return self.check(folder, name)

    def check(self, folder: Path, name: str) -> Path:
        """`folder` is a complete adapter for this base model (`name` labels the errors)."""
        meta = read_meta(folder)
        if self.base_sha256 and meta.get("base_model_sha256") != self.base_sha256:
            raise InvalidRequest(
                f"adapter '{name}' was trained for another base model "
                f"({meta.get('base_model', '?')}, sha256 {str(meta.get('base_model_sha256'))[:12]}…)"
            )
        for needed in ("adapter_config.json", "adapter_model.safetensors"):
            if not (folder / needed).is_file():
                raise InvalidRequest(f"adapter '{name}' is incomplete: {needed} is missing")
        try:
            json.loads((folder / "adapter_config.json").read_text())
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"adapter '{name}' is corrupt: adapter_config.json: {exc.msg}") from exc
        return folder

    def _forget(self, name: str) -> None:
        """Drop what was read of `name`'s folder (its domain, its pairs): a new version is being loaded."""
        self._domains.pop(name, None)
        self._taught.pop(name, None)

    def taught(self, name: str) -> Taught | None:
        """What the served version of `name` was taught (None for an adapter that recorded nothing), read once per
        load."""
        if name not in self._taught:
            try:
                self._taught[name] = read_taught(self.serving_folder(name))
            except (InvalidRequest, OSError):
                self._taught[name] = None
        return self._taught[name]

    def domains(self) -> dict[str, Any]:
        """Domain embeddings (one row per training question) of the loaded adapters that recorded one."""
        out = {}
        loaded = self.host.list_adapters() if self.host else [a["name"] for a in self.available()]
        for name in loaded:
            if name not in self._domains:  # read once per load, not per request
                try:
                    self._domains[name] = read_domain(self.serving_folder(name))
                except InvalidRequest:
                    self._domains[name] = None
            vecs = self._domains[name]
            if vecs is not None:
                out[name] = vecs
        return out

    async def load(self, name: str) -> dict[str, Any]:
        if self.host is None:
            raise InvalidRequest("this backend serves its adapters itself; load them on the model server")
        async with self._lock(name):
            folder = self.serving_folder(name)
            if not folder.is_dir():
                raise NotFound(f"unknown adapter '{name}'")
            self.check(folder, name)
            self._forget(name)
            try:
                await self.host.add_adapter(name, folder)
            except Exception as exc:
                raise InvalidRequest(f"adapter '{name}' could not be loaded: {type(exc).__name__}: {exc}") from exc
        return next(a for a in self.available() if a["name"] == name)

    async def unload(self, name: str) -> None:
        if self.host is None:
            raise InvalidRequest("this backend serves its adapters itself")
        async with self._lock(check_name(name)):
            if name not in self.host.list_adapters():
                raise NotFound(f"adapter '{name}' is not loaded")
            await self.host.remove_adapter(name)

    async def load_all(self) -> list[str]:
        """Load every valid adapter on disk (at start-up); skip, and report, the rest."""
        problems = []
        for entry in self.available():
            if entry["loaded"]:
                continue
            try:
                await self.load(entry["name"])
            except (InvalidRequest, NotFound) as exc:
                problems.append(f"{entry['name']}: {exc.message}")
        return problems

    async def refresh(self) -> list[str]:
        """Swap in the served version of every name promoted or rolled back since the last look (by any process);
        the names swapped. A version that cannot be loaded is logged, and the one loaded before keeps serving."""
        self._read_record()  # another caller may have read the new record already: compare versions, not reads
        changed = [n for n, e in self._record.items() if self._seen.get(n) != e["version"]]
        swapped = []
        for name in changed:
            self._seen[name] = self._record[name]["version"]
            self._forget(name)
            if self.host is None:  # a model server behind this backend follows the record itself
                continue
            try:
                await self.load(name)
            except (InvalidRequest, NotFound) as exc:
                log.error("adapter '%s' %s not swapped in: %s", name, self._seen[name], exc.message)
                continue
            log.info("adapter '%s' now serves %s", name, self._seen[name])
            swapped.append(name)
        return swapped

    async def follow(self, every: float = FOLLOW_SECONDS) -> None:
        """Run `refresh` every `every` seconds until cancelled: promotions reach a running server."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.refresh()
            except Exception:  # never let the watcher die: the next look may work
                log.exception("looking for adapter promotions failed")
