"""Generation backends behind one seam; `build_backend` is the only place that chooses."""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING

from enclave.core.errors import BackendUnavailable
from enclave.core.protocols import GenerationBackend, LocalBackend
from enclave.core.settings import Settings

if TYPE_CHECKING:
    from enclave.engine.llamacpp import LlamaCppBackend
    from enclave.engine.transformers_engine import TransformersBackend

log = logging.getLogger(__name__)


def build_backend(settings: Settings) -> GenerationBackend:
    kind = settings.models.backend
    backend: GenerationBackend  # each branch's class must satisfy the protocol: mypy checks it here
    if kind == "local":
        local: LocalBackend = build_local_backend(settings)
        backend = local
    elif kind == "echo":
        from enclave.engine.echo import EchoBackend

        backend = EchoBackend(settings)
    elif kind == "tgi":
        try:
            from enclave.engine.tgi import TGIBackend
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("the tgi backend needs: pip install 'enclave[tgi]'") from exc
        backend = TGIBackend(settings)
    elif kind == "openai":
        try:
            from enclave.engine.openai_compat import OpenAIBackend
        except ImportError as exc:  # pragma: no cover
            raise RuntimeError("the openai backend needs: pip install 'enclave[openai]'") from exc
        backend = OpenAIBackend(settings)
    else:
        raise ValueError(f"unknown models.backend {kind!r}")
    return backend


def build_local_backend(settings: Settings) -> LlamaCppBackend | TransformersBackend:
    """The in-process backend: llama.cpp when installed (or asked for), transformers otherwise.

    Either is a `LocalBackend` (what the model server needs); the concrete union also gives the tools that
    drive an engine directly (adapter evaluation, the inference benchmark) its synchronous `load`.
    """
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
