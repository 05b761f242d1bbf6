"""Generation backends behind one seam; `build_backend` is the only place that chooses."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from enclave.core.errors import BackendUnavailable
from enclave.core.protocols import GenerationBackend
from enclave.core.settings import Settings

log = logging.getLogger(__name__)


def build_backend(settings: Settings) -> GenerationBackend:
    kind = settings.models.backend
    if kind == "local":
        return build_local_backend(settings)  # type: ignore[no-any-return]
    if kind == "echo":
        from enclave.engine.echo import EchoBackend

        return EchoBackend(settings)
    if kind == "tgi":
        try:
            from enclave.engine.tgi import TGIBackend
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("the tgi backend needs: pip install 'enclave[tgi]'") from exc
        return TGIBackend(settings)
    if kind == "openai":
        try:
            from enclave.engine.openai_compat import OpenAIBackend
        except ImportError as exc:  # pragma: no cover
            raise RuntimeError("the openai backend needs: pip install 'enclave[openai]'") from exc
        return OpenAIBackend(settings)
    raise ValueError(f"unknown models.backend {kind!r}")


def build_local_backend(settings: Settings) -> Any:
    """The in-process backend: llama.cpp when installed (or asked for), transformers otherwise."""
    engine = settings.models.engine
    if engine == "auto":
        engine = "llama_cpp" if importlib.util.find_spec("llama_cpp") is not None else "transformers"
        if engine == "transformers":
            log.warning(
                "llama-cpp-python is not installed: generating with transformers, one request at a time "
                "(pip install 'enclave[fast]' for continuous batching)"
            )
    if engine == "llama_cpp":
        if importlib.util.find_spec("llama_cpp") is None:
            raise BackendUnavailable("models.engine=llama_cpp needs llama-cpp-python: pip install 'enclave[fast]'")
        from enclave.engine.llamacpp import LlamaCppBackend

        return LlamaCppBackend(settings)
    from enclave.engine.transformers_engine import TransformersBackend

    return TransformersBackend(settings)
