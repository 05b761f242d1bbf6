"""API-key authentication: keys are kept only as SHA-256 digests and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from service.errors import Unauthorized
from service.protocols import Principal
from service.settings import AuthSettings

ANONYMOUS = Principal()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        keys = [k.strip() for k in settings.api_keys.split(",") if k.strip()]
        if settings.api_keys_file:
            lines = Path(settings.api_keys_file).read_text().splitlines()
            keys += [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
        self._digests = [_digest(k) for k in keys]
        self.origins = {o.strip() for o in settings.allowed_origins.split(",") if o.strip()}

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def principal(self, key: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        if not key:
            raise Unauthorized("an API key is required (Authorization: Bearer <key>)")
        d = _digest(key)
        for i, known in enumerate(self._digests):
            if hmac.compare_digest(d, known):
                return Principal(name=f"key-{i + 1}")
        raise Unauthorized("the API key is not valid")

    @staticmethod
    def bearer(header: str | None) -> str | None:
        if header and header.lower().startswith("bearer "):
            return header[7:].strip() or None
        return None
