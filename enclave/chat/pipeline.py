"""The chat pipeline: validate → moderate input → route → generate → moderate output → store.

It yields typed ChatEvents and never raises into a transport: every run ends with exactly one
`done` or one `error` event, and the turn is in the store whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any

from enclave.chat import answerability, grounding, rag, scope, structured
from enclave.chat import taught as taught_pairs
from enclave.chat.admission import Admission, Ticket
from enclave.chat.conversations import ConversationStore
from enclave.chat.gate import OutputGate
from enclave.chat.limits import KeyLimits
from enclave.chat.metrics import Metrics
from enclave.chat.rag import rag_prompt_of
from enclave.chat.router import RetrievalSignals, SignalRouter, domain_scores, is_small_talk
from enclave.chat.schema import ChatRequest
from enclave.core.errors import (
    EnclaveError,
    InvalidRequest,
    ModerationBlocked,
    NotFound,
    Overloaded,
    Timeout,
    as_enclave_error,
)
from enclave.core.events import (
    CitationsEvent,
    DoneEvent,
    ErrorEvent,
    ModerationEvent,
    RouteEvent,
    SourcesEvent,
    TaughtRef,
    TokenAlternative,
    TokenEvent,
    TokenLogprobs,
    Usage,
)
from enclave.core.protocols import (
    Chunk,
    Generation,
    GenerationBackend,
    GenerationParams,
    Message,
    Moderator,
    Principal,
    Retriever,
    TokenLogprob,
)
from enclave.core.settings import Settings
from enclave.knowledge.rerank import shipped_margin
from enclave.moderation import sentences
from enclave.moderation.leaks import LeakCheck
from enclave.moderation.planted import PlantedCheck

log = logging.getLogger(__name__)

Event = RouteEvent | SourcesEvent | TokenEvent | CitationsEvent | ModerationEvent | DoneEvent | ErrorEvent

# How often a streaming answer is written to the store, so a crash loses at most this much.
SAVE_EVERY_S = 1.0
# `auto` without a named collection searches at most this many of the caller's collections.
MAX_AUTO_COLLECTIONS = 8
# A declined question whose weighted key terms the passages hold at least this much is about what they cover.
DOCUMENTS_SPEAK_OF = 0.8


class ChatPipeline:
    def __init__(
        self,
        settings: Settings,
        backend: GenerationBackend,
        store: ConversationStore,
        metrics: Metrics,
        retriever: Retriever | None = None,
        moderator: Moderator | None = None,
        collections: Any = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.store = store
        self.metrics = metrics
        self.retriever = retriever
        self.moderator = moderator
        self.collections = collections  # callable -> set of existing collection names, or None
        # adapter name -> (n, dim) embeddings of its training questions; a query scores its nearest one
        self.domains: Callable[[], dict[str, Any]] | None = None
        # adapter name -> what it was taught (chat/taught.py), or None when it recorded nothing
        self.taught: Callable[[str], taught_pairs.Taught | None] | None = None
        self.embed: Callable[[list[str]], list[list[float]]] | None = None
        self.router = SignalRouter(settings.router)
        self.admission = Admission(settings.limits.max_concurrent_generations, settings.limits.max_queue)
        self.key_limits: KeyLimits | None = None  # per-key limits, set by the app when API keys are configured

    # -- checks a transport can make before it starts a stream ------------------------------
    def validate(self, req: ChatRequest) -> None:
        lim = self.settings.limits
        if not req.message or not req.message.strip():
            raise InvalidRequest("message is empty")
        if len(req.message) > lim.max_message_chars:
            raise InvalidRequest(f"message is {len(req.message)} characters; the limit is {lim.max_message_chars}")
        if req.max_tokens is not None and req.max_tokens > lim.max_tokens_cap:
            raise InvalidRequest(f"max_tokens {req.max_tokens} is over the limit of {lim.max_tokens_cap}")
        if req.adapter is not None and req.adapter not in self.backend.list_adapters():
            raise NotFound(f"unknown adapter '{req.adapter}'")
        if not self.backend.constrained:
            what = "a structured answer (schema, response_format, tools)" if req.output_spec() else None
            what = what or ("logit_bias" if req.logit_bias else None)
            what = what or ("logprobs" if req.logprobs is not None else None)
            if what:
                raise InvalidRequest(f"{what} needs the llama.cpp engine; the '{self.backend.name}' backend cannot")
        spec = req.output_spec()
        if req.raw and (spec is not None or req.route == "rag"):
            raise InvalidRequest("a plain completion goes to the model as it is: no documents, schema or tools")
        if spec is not None and spec.kind == "tools":
            names = {t.name for t in spec.tools}
            if not names:
                raise InvalidRequest("tools is empty")
            if spec.tool_choice not in ("auto", "required", *names):
                raise InvalidRequest(f"tool_choice names '{spec.tool_choice}', which is not one of the tools")

    async def admit(self, principal: Principal | None = None) -> Ticket:
        """A place in the generation queue, after the caller's per-key limits; Overloaded at once if not."""
        release = await self.key_limits.acquire(principal.name) if self.key_limits and principal else None
        try:
            ticket = self.admission.enter()
        except Overloaded:
            if release:
                release()
            raise
        ticket.on_release = release
        return ticket

    def params(self, req: ChatRequest) -> GenerationParams:
        m = self.settings.models
        return GenerationParams(
            max_tokens=req.max_tokens or m.max_tokens,
            temperature=m.temperature if req.temperature is None else req.temperature,
            top_p=req.top_p or m.top_p,
            stop=req.stop or [],
            seed=req.seed,
            repetition_penalty=m.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty,
            frequency_penalty=m.frequency_penalty if req.frequency_penalty is None else req.frequency_penalty,
            presence_penalty=m.presence_penalty if req.presence_penalty is None else req.presence_penalty,
            loop_guard=m.loop_guard,
            logit_bias=req.logit_bias or {},
            output=req.output_spec(),
            logprobs=req.logprobs,
        )

    # -- the run ------------------------------------------------------------------------------
    async def run(
        self,
        req: ChatRequest,
        principal: Principal,
        cancel: asyncio.Event | None = None,
        ticket: Ticket | None = None,
    ) -> AsyncIterator[Event]:
        """Stream one answer. `ticket` comes from admit(); without one the run admits itself."""
        cancel = cancel or asyncio.Event()
        turn = _Turn()
        self.metrics.active.inc()
        try:
            try:
                self.validate(req)
                ticket = ticket or await self.admit(principal)
            except EnclaveError as exc:
                yield self._error(exc, turn)
                return
            async with ticket:
                events = self._run(req, principal, cancel, turn)
                try:
                    async for event in events:
                        yield event
                finally:
                    await events.aclose()  # a client that leaves closes the backend's stream now, not at GC
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away: keep what was said, marked as cancelled.
            turn.finish_reason = "cancelled"
            self._save_final(turn, "cancelled")
            raise
        except Exception as exc:
            err = as_enclave_error(exc)
            if err.code == "internal":
                log.exception("chat run failed")
            status = "blocked" if err.code == "moderation_blocked" else "error"
            self._save_final(turn, status, {"code": err.code, "message": err.message})
            yield self._error(err, turn)
        finally:
            self.metrics.active.dec()
            if ticket is not None:
                ticket.release()

    async def _run(
        self, req: ChatRequest, principal: Principal, cancel: asyncio.Event, turn: _Turn
    ) -> AsyncGenerator[Event, None]:
        started = time.perf_counter()
        # 1. Input moderation, before anything else sees the text (or stores personal data).
        message = req.message
        verdict = None
        if self.moderator is not None and self.settings.moderation.enabled and self.settings.moderation.check_input:
            verdict = await self.moderator.check(message, "input")
            if verdict.action == "redact" and verdict.redacted is not None:
                message = verdict.redacted
        blocked = verdict is not None and verdict.action == "block"

        # 2. The conversation, the user's turn, and history the model may see.
        if req.conversation_id:
            conv = await asyncio.to_thread(self.store.get_conversation, req.conversation_id)
            if conv is None or conv.get("principal") not in (principal.name, None):
                raise NotFound(f"unknown conversation '{req.conversation_id}'")
            turn.conversation_id = req.conversation_id
        else:
            title = "Blocked message" if blocked else " ".join(message.split())[:60]
            turn.conversation_id = await asyncio.to_thread(self.store.create_conversation, title, principal.name)
        history = req.history if req.history is not None else await self._history(turn.conversation_id)
        turn.user_id = await asyncio.to_thread(self.store.add_message, turn.conversation_id, "user", message)
        if verdict is not None and verdict.action != "allow":
            yield ModerationEvent(stage="input", action=verdict.action, categories=verdict.categories)
            if blocked:
                turn.moderation = {"stage": "input", "action": "block", "categories": verdict.categories}
                raise ModerationBlocked("the message was blocked by the content policy")

        # 3. Route, and for a document answer whether the documents hold it (before any token is spent).
        signals = await self._signals(req, message, history, principal)
        route = self.router.decide(req, signals, self.backend.list_adapters())
        params = self.params(req)
        rag_cfg = self.settings.rag
        decision = None
        if route.kind == "rag" and rag_cfg.answerability and params.output is None and signals.chunks:
            decision = answerability.decide(
                signals.query or message, signals.chunks, None, rag_cfg.decline_below, rag_cfg.caveat_below
            )
            route.scores["answerable"] = decision.probability
            if decision.outcome != "answer":
                route.reason += f"; {decision.reason}"
        org_unknown = (
            route.kind == "base"
            and req.route == "auto"
            and params.output is None
            and not req.raw
            and not signals.small_talk
            and scope.about_organisation(message)
        )
        if org_unknown:
            route.reason += f"; it asks about the organisation ({scope.reason(message)}) and no document answers it"
        self.metrics.routes.labels(route.kind).inc()
        turn.route, turn.adapter = route.kind, route.adapter
        yield RouteEvent(route=route.kind, adapter=route.adapter, reason=route.reason, scores=route.scores)
        turn.assistant_id = await asyncio.to_thread(
            self.store.add_message,
            turn.conversation_id,
            "assistant",
            "",
            status="incomplete",
            route=route.kind,
            adapter=route.adapter,
            collection=signals.collection if route.kind == "rag" else None,
        )
        # An adapter the router chose answers only what a pair it was taught is about (chat/taught.py): else it would
        # answer the same question about something no one taught it in the same confident words. An adapter the
        # request names is the caller's choice (a style adapter, a test of one): its own answer is given.
        taught = None
        chosen_by_router = req.route == "auto" and not req.adapter
        if (
            route.kind == "adapter"
            and route.adapter
            and chosen_by_router
            and self.taught
            and self.settings.adapters.check_taught
        ):
            taught = self.taught(route.adapter) if params.output is None and not req.raw else None
        about = taught.about(message) if taught else []
        if taught and not about:
            yield self._say(turn, taught_pairs.NOT_TAUGHT)
            turn.taught = "declined"
            yield await self._finish(turn, Generation(finish_reason="stop"))
            return
        if org_unknown:  # never a made-up name, address or password: say so, and where one could look
            readable = sorted(c for c in (self.collections() if self.collections else set()) if principal.may_read(c))
            yield self._say(turn, rag.no_documents_text(readable))
            turn.documents = "declined"
            yield await self._finish(turn, Generation(finish_reason="stop"))
            return

        # 4. The prompt.
        relevant: list[Chunk] = []
        in_prompt: list[Chunk] = []
        planted: PlantedCheck | None = None
        if route.kind == "rag":
            relevant = [
                c for c in signals.chunks if float(c.metadata.get("dense_score", c.score)) >= rag_cfg.score_threshold
            ][: rag_cfg.top_k]
            retrieved = {c.id: c.text for c in relevant}  # as written, before any sentence is cut
            relevant, cut = await self._without_injections(relevant)
            if cut:  # said even when the cut passage then falls outside the margin: an operator wants to know
                yield ModerationEvent(stage="context", action="redact", categories=["prompt_injection"])
            margin = rag_cfg.rerank_margin if rag_cfg.rerank_margin is not None else shipped_margin()
            relevant = rag.within_margin(relevant, margin)
            mod = self.settings.moderation
            if mod.enabled and mod.check_output and mod.policies.get("planted_instruction", "block") == "block":
                # What the passages in the prompt ask the model to say: the answer must not say it (the output gate).
                planted = PlantedCheck([retrieved.get(c.id, c.text) for c in relevant], message, cut)
            in_prompt = relevant
            if planted:
                # What Enclave shows of the passages itself (sources, a decline's quotes, the unverified notice)
                # leaves out the sentences that gave payloads; the prompt keeps them, and the gate reads the answer.
                relevant = [
                    c
                    if (t := planted.without_instructions(c.text)) == c.text
                    else dataclasses.replace(c, text=t, embedding=None)
                    for c in relevant
                ]
            declined = params.output is None and (
                not relevant or (decision is not None and decision.outcome == "decline")
            )
            shown = relevant[:2] if declined else relevant
            turn.sources = [s.model_dump() for s in rag.sources_of(shown)]
            yield SourcesEvent(sources=rag.sources_of(shown))
            if declined:
                async with contextlib.aclosing(
                    self._decline(turn, req, message, signals.collection, shown, params, cancel, decision)
                ) as inner:
                    async for event in inner:
                        yield event
                yield await self._finish(turn, turn.result)
                return
        prompt: list[Message] | str
        protected: list[str] = []  # what the answer must not repeat (the output gate's leak check)
        if req.raw:  # a plain completion: the text goes to the model as it is
            prompt = message
        elif relevant:
            protected = list(rag.INSTRUCTIONS)
            messages = [*history, *rag.rag_messages(message, in_prompt, rag_prompt_of(self.settings))]
            # The RAG system prompt must come first for chat templates that want one system turn.
            messages = [m for m in messages if m.role == "system"] + [m for m in messages if m.role != "system"]
        else:  # no route to the documents, or (for a structured answer) nothing relevant in them
            system = req.system or self.settings.models.system_prompt
            protected = [system]
            messages = [
                Message(role="system", content=system),
                *history,
                Message(role="user", content=message),
            ]
        if not req.raw:
            prompt = structured.with_instructions(messages, params.output)

        # 5. Generate, through the output gate; an answer the documents only partly hold is kept back until checked.
        hold = (decision is not None and decision.outcome == "caveat") or bool(taught)
        result = Generation()
        async with contextlib.aclosing(
            self._generate(turn, prompt, params, route.adapter, protected, cancel, started, result, hold, planted)
        ) as inner:
            async for event in inner:
                yield event
        if taught:
            for event in self._check_taught(turn, taught, message, about, result):
                yield event
        grounded = relevant and (turn.text.strip() or turn.held.strip()) and self.embed is not None
        grounded = grounded and params.output is None
        if grounded and result.finish_reason != "cancelled":
            async with contextlib.aclosing(
                self._ground(turn, signals.query or message, relevant, result, hold)
            ) as inner:
                async for event in inner:
                    yield event
            if turn.documents == "declined":  # the held answer failed its check: the model's words are not shown
                async with contextlib.aclosing(
                    self._decline(turn, req, message, signals.collection, relevant[:2], params, cancel, decision)
                ) as inner:
                    async for event in inner:
                        yield event
                result = turn.result
        elif hold and turn.held:  # cancelled, or nothing to check it with: what was held is not shown unchecked
            turn.held = ""
        if turn.redacted or (turn.citations or {}).get("unverified"):
            result.logprobs = None  # the tokens are no longer the text shown: withheld (see DoneEvent)
        elapsed = time.perf_counter() - started
        if result.completion_tokens and elapsed > 0:
            self.metrics.tokens_per_second.observe(result.completion_tokens / elapsed)
        self.metrics.completion_tokens.inc(result.completion_tokens)
        yield await self._finish(turn, result)

    def _check_taught(
        self, turn: _Turn, taught: taught_pairs.Taught, question: str, about: list[int], result: Generation
    ) -> Iterator[TokenEvent]:
        """A held adapter answer shown only when a pair it was taught backs it; else the closest pair, quoted."""
        text, turn.held = turn.held, ""
        backed = None if result.finish_reason == "cancelled" else taught.backing(question, text, about)
        if backed is not None:
            turn.taught, turn.taught_from = "answered", [taught.pairs[backed].ref()]
            turn.text += text
            yield TokenEvent(text=text)
            return
        if result.finish_reason == "cancelled":
            return
        log.info("an adapter answer no taught pair backs was declined: %r", text[:200])
        closest = taught.pairs[about[0]]
        turn.taught, turn.taught_from = "declined", [closest.ref()]
        result.logprobs = None  # the model's tokens are not the text shown
        yield self._say(turn, taught_pairs.not_backed_text(closest))

    @staticmethod
    def _say(turn: _Turn, text: str) -> TokenEvent:
        """Enclave's own words, not the model's: added to the answer as one piece."""
        turn.text += text
        return TokenEvent(text=text)

    async def _decline(
        self,
        turn: _Turn,
        req: ChatRequest,
        message: str,
        collection: str | None,
        closest: list[Chunk],
        params: GenerationParams,
        cancel: asyncio.Event,
        decision: answerability.Decision | None = None,
    ) -> AsyncGenerator[Event, None]:
        """The documents do not hold the answer: say so, quote the closest passages, suggest; then, for a general
        question and when the operator allows it, the model's own answer behind the general-knowledge label."""
        turn.documents = "declined"
        yield self._say(turn, ("\n\n" if turn.text else "") + rag.decline_text(collection, closest, message))
        turn.result = Generation(finish_reason="stop")
        # The model's own knowledge only for a general question, and not when the documents speak of exactly what
        # it asks (most of its weighted key terms in them): that answer would be the documents' business, and a
        # small model asked about a private product or procedure invents one.
        specific = decision is not None and decision.features.get("text_cover", 0.0) >= DOCUMENTS_SPEAK_OF
        if not self.settings.rag.general_knowledge or specific or scope.about_organisation(message) or cancel.is_set():
            return
        system = req.system or self.settings.models.system_prompt
        prompt = [Message(role="system", content=system), Message(role="user", content=message)]
        turn.general_knowledge = True
        yield self._say(turn, "\n\n" + rag.GENERAL_LABEL + " ")
        async with contextlib.aclosing(
            self._generate(turn, prompt, params, None, [system], cancel, time.perf_counter(), turn.result, False)
        ) as inner:
            async for event in inner:
                yield event

    async def _generate(
        self,
        turn: _Turn,
        prompt: list[Message] | str,
        params: GenerationParams,
        adapter: str | None,
        protected: list[str],
        cancel: asyncio.Event,
        started: float,
        result: Generation,
        hold: bool,
        planted: PlantedCheck | None = None,
    ) -> AsyncGenerator[Event, None]:
        """The model's answer through the output gate, into `turn.text` as it streams (into `turn.held`, and not
        sent, when `hold`); a block raises ModerationBlocked after the moderation event. `planted`: what the
        passages' instructions ask to be said (blocked as planted_instruction)."""
        mod = self.settings.moderation
        gate = OutputGate(
            self.moderator if mod.enabled and mod.check_output else None,
            mod.holdback_tokens,
            LeakCheck(protected) if mod.policies.get("prompt_leak", "block") == "block" else None,
            planted,
        )
        stream = self.backend.stream(prompt, params, adapter=adapter, result=result)
        last_save = time.monotonic()
        first = True
        timeout = self.settings.models.request_timeout_s
        deadline = asyncio.get_running_loop().time() + timeout
        cancelled = asyncio.ensure_future(cancel.wait())  # one waiter for the whole answer, not one per piece
        try:
            while (piece := await _next_piece(stream, cancelled, deadline)) is not None:
                if first:
                    self.metrics.ttft.observe(time.perf_counter() - started)
                    first = False
                for text in await gate.push(piece):
                    if hold:
                        turn.held += text
                        continue
                    turn.text += text
                    yield TokenEvent(text=text)
                if gate.blocked or cancel.is_set():
                    break
                if not hold and turn.assistant_id and time.monotonic() - last_save > SAVE_EVERY_S:
                    last_save = time.monotonic()
                    await asyncio.to_thread(self.store.update_message, turn.assistant_id, content=turn.text)
        except TimeoutError as exc:
            raise Timeout(f"generation took longer than {timeout:g} s") from exc
        finally:
            cancelled.cancel()
            await stream.aclose()  # type: ignore[attr-defined]
        if not gate.blocked:
            for text in await gate.finish():
                if hold:
                    turn.held += text
                else:
                    turn.text += text
                    yield TokenEvent(text=text)
        if gate.blocked:
            v = gate.verdict
            turn.moderation = {"stage": "output", "action": "block", "categories": v.categories}
            yield ModerationEvent(stage="output", action="block", categories=v.categories)
            raise ModerationBlocked("the answer was stopped by the content policy")
        elif gate.redacted:
            turn.redacted = True
            turn.moderation = {"stage": "output", "action": "redact", "categories": gate.verdict.categories}
            yield ModerationEvent(stage="output", action="redact", categories=gate.verdict.categories)
        if cancel.is_set():
            result.finish_reason = "cancelled"

    async def _ground(
        self, turn: _Turn, question: str, passages: list[Chunk], result: Generation, held: bool
    ) -> AsyncGenerator[Event, None]:
        """Checks each sentence of a document answer against the passages and the question. A sentence is verified
        when its passage says it in answer to the question (enclave/chat/answerability.answer_note). A streamed
        answer most of whose sentences are not verified gets the passages quoted after it; a held one (the documents
        answer only in part) is shown, with a caveat, only when every sentence is verified, else declined."""
        assert self.embed is not None
        text = turn.held if held else turn.text
        t0 = time.perf_counter()
        checked = await asyncio.to_thread(
            grounding.ground, text, [c.text for c in passages], self.embed, [c.embedding for c in passages]
        )
        sentences = grounding.citations(checked)
        bodies = [f"{c.title} {c.metadata.get('section') or ''}\n{c.text}" for c in passages]
        weights = answerability.term_weights(question, bodies, answerability.idf_of(passages))
        for s in sentences:
            source = s["source"]
            note = (
                answerability.answer_note(
                    question, str(s["text"]), bodies[int(source) - 1], weights, passages[int(source) - 1].title
                )
                if isinstance(source, int)
                else "no passage says it"
            )
            s["verified"], s["note"] = note is None, note
        self.metrics.grounding_seconds.observe(time.perf_counter() - t0)
        failed = sum(not s["verified"] for s in sentences)
        if held:
            turn.held = ""
            said_no = text.strip().rstrip(".") == rag.DECLINE.rstrip(".")  # the model's own "the documents do not say"
            if failed or said_no or not sentences or result.finish_reason == "repetition":
                log.info("a held answer failed its check and was declined: %r", text[:200])
                turn.documents = "declined"
                return
            turn.documents = "caveat"
            turn.text = text
            yield TokenEvent(text=text)
            yield self._say(turn, "\n\n" + rag.CAVEAT)
            unverified = False
        else:
            unverified = (
                failed / max(len(sentences), 1) > grounding.UNVERIFIED_SHARE or result.finish_reason == "repetition"
            )
            turn.documents = "caveat" if unverified or failed else "answered"
        turn.citations = {"sentences": sentences, "unverified": unverified}
        if unverified:  # the notice first: the citations' spans point into the answer before it
            notice = grounding.quoted_passages([(c.title, c.text) for c in passages])
            turn.text += notice
            yield TokenEvent(text=notice)
        yield CitationsEvent(sentences=sentences, unverified=unverified)  # type: ignore[arg-type]

    async def _without_injections(self, chunks: list[Chunk]) -> tuple[list[Chunk], list[str]]:
        """Retrieved passages as data, not instructions: every sentence that gives the model instructions is cut
        out (the rest of the passage is kept and cited); a passage left with nothing is dropped. Returns the
        passages and the sentences cut."""
        if self.moderator is None or not self.settings.moderation.enabled:
            return chunks, []
        spans = [sentences.sentences(c.text) for c in chunks]
        texts = [c.text[a:b] for c, found in zip(chunks, spans, strict=True) for a, b in found]
        verdicts = iter(await self.moderator.check_many(texts, "context")) if texts else iter(())
        kept: list[Chunk] = []
        cut: list[str] = []
        for c, found in zip(chunks, spans, strict=True):
            bad = [
                (a, b)
                for a, b in found
                if (v := next(verdicts)).action == "block" and "prompt_injection" in v.categories
            ]
            if not bad:
                kept.append(c)
                continue
            cut += [c.text[a:b] for a, b in bad]
            text = sentences.without(c.text, bad)
            log.warning("cut %d sentence(s) of instructions out of retrieved chunk %s", len(bad), c.id)
            if sentences.worth_keeping(text):
                kept.append(dataclasses.replace(c, text=text, embedding=None))  # its stored vector was the whole
        return kept, cut

    async def _history(self, conversation_id: str) -> list[Message]:
        rows = await asyncio.to_thread(self.store.history, conversation_id)
        budget = self.settings.limits.history_tokens
        kept: list[Message] = []
        for row in reversed(rows):
            cost = self.backend.count_tokens(row["content"])
            if cost > budget:
                break
            budget -= cost
            kept.append(Message(role=row["role"], content=row["content"]))
        return kept[::-1]

    async def _signals(
        self, req: ChatRequest, message: str, history: list[Message], principal: Principal
    ) -> RetrievalSignals:
        signals = RetrievalSignals(small_talk=req.route == "auto" and is_small_talk(message))
        # A structured answer (JSON, tool calls) is the model's own: no documents to look up on `auto`.
        auto = (
            req.route == "auto" and not req.adapter and not signals.small_talk and req.output_spec() is None
        ) and not req.raw
        domains = self.domains() if auto and self.domains and self.embed else {}
        if domains and self.embed:
            q = (await asyncio.to_thread(self.embed, [message]))[0]
            signals.adapter_scores = domain_scores(q, domains)
        if req.route == "rag" and self.retriever is None:
            raise InvalidRequest("the knowledge base is not available on this server")
        if self.retriever is None or not (auto or req.route == "rag"):
            return signals
        candidates = [req.collection or self.settings.rag.default_collection]
        if req.collection is None:
            # Without a named collection, search every existing collection the caller may read (the default
            # first) and answer from the best match; `auto` quietly skips what is missing or not readable.
            existing = self.collections() if self.collections else None
            if existing is not None:
                readable = sorted(c for c in existing if principal.may_read(c) and c != candidates[0])
                first = candidates if candidates[0] in existing and principal.may_read(candidates[0]) else []
                candidates = (first + readable)[:MAX_AUTO_COLLECTIONS]
            elif not principal.may_read(candidates[0]):
                candidates = []
            if not candidates:
                if req.route == "rag":
                    raise InvalidRequest("there is no collection you may read; name one with `collection`")
                return signals
        query = message
        if rag.needs_condensing(message, history):
            query = await rag.condense(self.backend, message, history)
        depth = max(self.settings.rag.top_k * 2, 8)
        best: RetrievalSignals | None = None
        for collection in candidates:
            chunks = await asyncio.to_thread(self.retriever.search, query, collection, principal, depth)
            found = RetrievalSignals(collection=collection, chunks=chunks)
            if best is None or found.top > best.top:
                best = found
        assert best is not None
        signals.collection, signals.chunks, signals.query = best.collection, best.chunks, query
        return signals

    async def _finish(self, turn: _Turn, result: Generation) -> DoneEvent:
        usage = Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
        )
        turn.finish_reason = result.finish_reason
        status = "cancelled" if result.finish_reason == "cancelled" else "complete"
        await asyncio.to_thread(self._save_final, turn, status, None, usage.model_dump())
        turn.saved = True
        return DoneEvent(
            conversation_id=turn.conversation_id or "",
            message_id=turn.assistant_id or "",
            finish_reason=result.finish_reason,
            usage=usage,
            logprobs=None if result.logprobs is None else [_logprobs_of(lp) for lp in result.logprobs],
            documents=turn.documents,  # type: ignore[arg-type]
            general_knowledge=turn.general_knowledge,
            taught=turn.taught,  # type: ignore[arg-type]
            taught_from=[TaughtRef(**r) for r in turn.taught_from],
        )

    def _save_final(
        self,
        turn: _Turn,
        status: str,
        error: dict[str, str] | None = None,
        usage: dict[str, int] | None = None,
    ) -> None:
        if turn.saved or turn.conversation_id is None:
            return
        turn.saved = True
        if turn.documents is not None:  # kept with the turn, so a reloaded conversation shows the same
            turn.citations = {
                **(turn.citations or {"sentences": [], "unverified": False}),
                "documents": turn.documents,
                "general_knowledge": turn.general_knowledge,
            }
        if turn.taught is not None:
            turn.citations = {
                **(turn.citations or {"sentences": [], "unverified": False}),
                "taught": turn.taught,
                "taught_from": turn.taught_from,
            }
        fields: dict[str, Any] = {
            "content": turn.text,
            "status": status,
            "sources": turn.sources,
            "citations": turn.citations,
            "finish_reason": turn.finish_reason,
            "moderation": turn.moderation,
            "error": error,
            "usage": usage,
        }
        try:
            if turn.assistant_id is not None:
                self.store.update_message(turn.assistant_id, **fields)
            elif turn.moderation and turn.moderation.get("stage") == "input" and turn.user_id:
                self.store.update_message(turn.user_id, status="blocked", moderation=turn.moderation)
            elif turn.user_id:  # failed before the answer began: record the failure as the answer
                content = fields.pop("content")
                turn.assistant_id = self.store.add_message(
                    turn.conversation_id,
                    "assistant",
                    content,
                    route=turn.route,
                    adapter=turn.adapter,
                    **fields,
                )
        except Exception:  # the store failing must not hide the original outcome
            log.exception("could not save turn")

    def _error(self, exc: EnclaveError, turn: _Turn) -> ErrorEvent:
        self.metrics.errors.labels(exc.code).inc()
        return ErrorEvent(
            code=exc.code,  # type: ignore[arg-type]
            message=exc.message,
            conversation_id=turn.conversation_id,
            message_id=turn.assistant_id,
        )


def _logprobs_of(lp: TokenLogprob) -> TokenLogprobs:
    return TokenLogprobs(
        token=lp.token,
        bytes=list(lp.bytes),
        logprob=lp.logprob,
        top_logprobs=[TokenAlternative(token=t, bytes=list(b), logprob=v) for t, b, v in lp.top],
    )


class _Turn:
    """What one run has produced so far, for the store."""

    def __init__(self) -> None:
        self.conversation_id: str | None = None
        self.user_id: str | None = None
        self.assistant_id: str | None = None
        self.text = ""
        self.route: str | None = None
        self.adapter: str | None = None
        self.sources: list[dict[str, Any]] = []
        self.citations: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.moderation: dict[str, Any] | None = None
        self.saved = False
        self.held = ""  # an answer kept back until its check passes (never sent unless it does)
        self.documents: str | None = None  # answered | caveat | declined, for a document answer
        self.general_knowledge = False
        self.taught: str | None = None  # answered | declined, for an adapter answer checked against its pairs
        self.taught_from: list[dict[str, Any]] = []
        self.redacted = False
        self.result = Generation()  # what generated the text after a decline


async def _next_piece(stream: AsyncIterator[str], cancelled: asyncio.Future[Any], deadline: float) -> str | None:
    """The stream's next piece; None when it ended or `cancelled` (the cancel event's waiter) is done — a
    silent backend (a long prefill, a full queue) is left at once; TimeoutError past `deadline`. The deadline
    covers only this wait, never the caller's own sending of what it got (a timeout scope across a `yield`
    would cancel the caller)."""
    if cancelled.done():
        return None
    fetch = asyncio.ensure_future(anext(stream))
    try:
        async with asyncio.timeout_at(deadline):
            await asyncio.wait({fetch, cancelled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not fetch.done():
            fetch.cancel()  # the backend's stream ends here: CancelledError inside it, as on a disconnect
            await asyncio.wait({fetch})
    if fetch.cancelled():
        return None
    try:
        return fetch.result()
    except StopAsyncIteration:
        return None
