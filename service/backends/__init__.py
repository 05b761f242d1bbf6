"""Generation backends behind one seam; `build_backend` is the only place that chooses."""

from __future__ import annotations

from service.protocols import GenerationBackend
from service.settings import Settings


def build_backend(settings: Settings) -> GenerationBackend:
    kind = settings.models.backend
    if kind == "local":
        from service.backends.local import build_local_backend

        return build_local_backend(settings)  # type: ignore[no-any-return]
    if kind == "echo":
        from service.backends.echo import EchoBackend

        return EchoBackend(settings)
    if kind == "tgi":
        try:
            from service.backends.tgi import TGIBackend
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("the tgi backend needs: pip install 'enclave[tgi]'") from exc
        return TGIBackend(settings)
    if kind == "openai":
        try:
            from service.backends.openai_compat import OpenAIBackend
        except ImportError as exc:  # pragma: no cover
            raise RuntimeError("the openai backend needs: pip install 'enclave[openai]'") from exc
        return OpenAIBackend(settings)
    raise ValueError(f"unknown models.backend {kind!r}")
