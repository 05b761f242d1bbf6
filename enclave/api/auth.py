"""API-key authentication: keys are kept only as SHA-256 digests and compared in constant time.

Two ways to give keys, which add up:

- `auth.api_keys`: comma-separated keys, each an admin that may read every collection (one operator);
- `auth.api_keys_file`: a file (a mounted Secret). Either one key per line (admins, as above), or a YAML
  list of principals, each with its key as plain text or, better, only its digest:

      - name: hr-bot
        key_sha256: 9f86d08...      # `enclave auth new-key` prints a key and this line
        collections: [hr]           # which collections it may read; omitted: all
        admin: false                # admin: ingest and manage adapters

Document access is decided by the principal alone, never by the request body.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from typing import Any

import yaml

from enclave.core.errors import Unauthorized
from enclave.core.protocols import Principal
from enclave.core.settings import AuthSettings

ANONYMOUS = Principal()
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeysFileError(ValueError):
    pass


def _principals_from_file(path: Path, first: int = 1) -> list[tuple[bytes, Principal]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise KeysFileError(f"auth.api_keys_file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if not isinstance(data, list):  # one key per line
        keys = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        return [(digest(k), Principal(name=f"key-{first + i}")) for i, k in enumerate(keys)]
    out = []
    for i, entry in enumerate(data):
        where = f"auth.api_keys_file {path}, entry {i + 1}"
        if not isinstance(entry, dict):
            raise KeysFileError(f"{where}: expected a mapping with name and key or key_sha256")
        out.append((_entry_digest(entry, where), _entry_principal(entry, where, i)))
    names = [p.name for _, p in out]
    if len(set(names)) != len(names):
        raise KeysFileError(f"auth.api_keys_file {path}: principal names must be unique")
    return out


def _entry_digest(entry: dict[str, Any], where: str) -> bytes:
    if isinstance(entry.get("key_sha256"), str):
        hexd = entry["key_sha256"].strip().lower()
        if not _HEX64.match(hexd):
            raise KeysFileError(f"{where}: key_sha256 must be 64 hex digits")
        return bytes.fromhex(hexd)
    if isinstance(entry.get("key"), str) and entry["key"].strip():
        return digest(entry["key"].strip())
    raise KeysFileError(f"{where}: needs key or key_sha256")


def _entry_principal(entry: dict[str, Any], where: str, i: int) -> Principal:
    collections = entry.get("collections")
    if collections is not None and (
        not isinstance(collections, list) or not all(isinstance(c, str) and c for c in collections)
    ):
        raise KeysFileError(f"{where}: collections must be a list of collection names")
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise KeysFileError(f"{where}: admin must be true or false")
    name = entry.get("name") or f"file-key-{i + 1}"
    return Principal(
        name=str(name), collections=frozenset(collections) if collections is not None else None, admin=admin
    )


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        keys = [k.strip() for k in settings.api_keys.split(",") if k.strip()]
        self._known: list[tuple[bytes, Principal]] = [
            (digest(k), Principal(name=f"key-{i + 1}")) for i, k in enumerate(keys)
        ]
        if settings.api_keys_file:
            self._known += _principals_from_file(Path(settings.api_keys_file), first=len(keys) + 1)
        self.origins = {o.strip() for o in settings.allowed_origins.split(",") if o.strip()}

    @property
    def enabled(self) -> bool:
        return bool(self._known)

    def principal(self, key: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        if not key:
            raise Unauthorized("an API key is required (Authorization: Bearer <key>)")
        d = digest(key)
        found = None
        for known, who in self._known:  # compare against every key: the time does not tell which matched
            if hmac.compare_digest(d, known) and found is None:
                found = who
        if found is None:
            raise Unauthorized("the API key is not valid")
        return found

    @staticmethod
    def bearer(header: str | None) -> str | None:
        if header and header.lower().startswith("bearer "):
            return header[7:].strip() or None
        return None
