"""The service's state: everything the app's lifespan builds and the transports reach — settings, store,
backend, knowledge base, adapter registry, pipeline — and how it loads, drains and closes."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from enclave.adapters.registry import AdapterRegistry
from enclave.api.auth import Authenticator
from enclave.chat.conversations import SqlConversationStore
from enclave.chat.feedback import FeedbackService
from enclave.chat.limits import KeyLimits
from enclave.chat.metrics import Metrics
from enclave.chat.pipeline import ChatPipeline
from enclave.core.protocols import GenerationBackend
from enclave.core.settings import Settings
from enclave.engine.build import build_backend

if TYPE_CHECKING:  # imported when first opened: the store brings Chroma and the embedder
    from enclave.knowledge.inbox import Inbox
    from enclave.knowledge.store import KnowledgeBase

log = logging.getLogger("enclave")


class State:
    """Everything the lifespan builds; transports reach it through request.app.state.enclave."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.auth = Authenticator(settings.auth)
        self.store = SqlConversationStore(settings.database_url)
        self.backend: GenerationBackend = build_backend(settings)
        self.kb: KnowledgeBase | None = None  # set once loaded
        self.inbox: Inbox | None = None  # uploads waiting to be ingested; set with the knowledge base
        self.registry: AdapterRegistry | None = None  # set once loaded
        self._follow: asyncio.Task[None] | None = None  # swaps in adapters promoted by another process
        self.pipeline = ChatPipeline(settings, self.backend, self.store, self.metrics)
        if self.auth.enabled:
            self.pipeline.key_limits = KeyLimits(settings.limits, settings.storage.redis_url)
        self.feedback = FeedbackService(self.store, self.metrics, settings.limits, settings.storage.redis_url)
        self.ready = False
        self.draining = False
        self.load_error: str | None = None
        self._loaded: set[str] = set()
        self.started = time.time()

    async def load(self, retry: bool = False) -> None:
        """Load the model and the knowledge base; /readyz turns true when both are up.

        With `retry` (the server) a failure is retried with backoff until it works or the process drains:
        a Chroma server or model server that is not up yet must not leave a pod unready for ever. Each
        part is loaded once; a retry resumes where the last attempt failed.
        """
        delay = 1.0
        while True:
            try:
                await self._load_parts()
            except Exception as exc:  # readiness stays false and says why
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.exception("enclave failed to load%s", f"; retrying in {delay:.0f} s" if retry else "")
                if not retry or self.draining:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self.load_error = None
            self.ready = not self.draining
            log.info("enclave ready: %s", await asyncio.to_thread(self.summary))
            return

    def summary(self) -> str:
        """What a person starting Enclave needs to know, in one line: the model and how it runs, the
        embedder, the collections, the adapters and whether moderation is on."""
        m = self.settings.models
        status = self.backend.engine_status
        engine = self.backend.name
        if engine == "local":
            engine = "llama.cpp" if status is not None else "transformers"
        parts = [f"model {m.name or m.gguf_file or m.base} on {engine}"]
        if status and status.get("format"):
            failed = len(status.get("problems") or [])
            lone = "; a lone answer on the shipped weights" if status.get("solo") else ""
            parts[0] += f" ({status['format']} weights{lone}" + (
                f"; {failed} formats failed their check)" if failed else ")"
            )
        if self.kb is not None:
            parts.append(f"embedder {self.kb.embedding_runtime}")
            parts.append("reranker " + ("on" if self.kb.reranker is not None else "off"))
            names = sorted(self.kb.collection_names())
            # Documents are counted from every chunk's metadata: only for the collections the line shows.
            listed = ", ".join(f"{n} ({len(self.kb.list_documents(n))} documents)" for n in names[:5])
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            parts.append(f"collections {listed}{more}" if names else "no collections yet (enclave ingest DIR)")
        if self.registry is not None:
            parts.append(f"adapters {len(self.backend.list_adapters())} loaded")
        parts.append("moderation " + ("on" if self.settings.moderation.enabled else "off"))
        return "; ".join(parts)

    async def _load_parts(self) -> None:
        if "backend" not in self._loaded:
            await self.backend.aload()
            self._loaded.add("backend")
        registry = self.registry if self.registry is not None else await self._open_registry()
        if self.kb is None:
            kb = self.kb = await asyncio.to_thread(self._open_kb)
            self.pipeline.retriever = kb.retriever()
            self.pipeline.collections = kb.collection_names
            self.pipeline.embed = kb.embedder.embed
            self.inbox = await asyncio.to_thread(self._open_inbox, kb)
        if self.settings.moderation.enabled and self.pipeline.moderator is None:
            from enclave.moderation import build_moderator

            # After the knowledge base: the embedding classifier reads the vectors of its embedder.
            self.pipeline.moderator = await asyncio.to_thread(
                build_moderator, self.settings.moderation, self.backend, self.pipeline.embed
            )
        self.pipeline.domains = registry.domains
        self.pipeline.taught = registry.taught

    async def _open_registry(self) -> AdapterRegistry:
        # A backend that loads adapters in this process hosts them; the others serve their server's own.
        host = self.backend if self.backend.loads_adapters else None
        registry = self.registry = AdapterRegistry(self.settings.adapters_path, host, self.backend.base_sha256)
        if host is not None and self.settings.adapters.autoload:
            for problem in await registry.load_all():
                log.warning("adapter skipped: %s", problem)
        self._follow = asyncio.create_task(registry.follow())
        return registry

    def _open_kb(self) -> KnowledgeBase:
        from enclave.knowledge.store import KnowledgeBase

        kb = KnowledgeBase.from_settings(self.settings)
        kb.warm_reranker()
        if self.settings.rag.ingest_samples:
            from enclave.knowledge.samples import ensure_samples

            ensure_samples(kb, self.settings.rag.default_collection)
        return kb

    def _open_inbox(self, kb: KnowledgeBase) -> Inbox:
        from enclave.knowledge.inbox import Inbox

        inbox = Inbox(self.settings.data_path / "inbox", kb)
        if waiting := inbox.resume():
            log.info("ingesting %d uploaded files left from the last run", waiting)
        inbox.start()
        return inbox

    async def drain(self, timeout: float) -> None:
        """Readiness off, new work refused, open streams given `timeout` seconds to finish."""
        self.ready = False
        self.draining = True
        self.pipeline.admission.closed = True
        deadline = time.monotonic() + timeout
        while self.pipeline.admission.admitted > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    def close(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
        if self.inbox is not None:
            self.inbox.stop()
        self.backend.close()
        self.store.close()
