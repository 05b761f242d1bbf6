"""The moderators: per-category policies over the PII detectors and the harm classifier."""

from __future__ import annotations

import logging
import re
from typing import Literal

from service.moderation.classifier import HarmClassifier, injection_pattern
from service.moderation.pii import find_pii
from service.protocols import GenerationBackend, GenerationParams, Message, Verdict
from service.settings import ModerationSettings

log = logging.getLogger(__name__)
Stage = Literal["input", "output", "context"]
REDACTION = "[redacted]"


def redact(text: str, spans: list[tuple[int, int]]) -> str:
    out, pos = [], 0
    for s, e in sorted(spans):
        out.append(text[pos:s])
        out.append(REDACTION)
        pos = e
    out.append(text[pos:])
    return "".join(out)


# About 100 words: several hold-back windows of overlap between consecutive checks of a stream.
OUTPUT_WINDOW_CHARS = 600


class FastModerator:
    """PII and secrets by pattern; harm categories by classifier; prompt injection by both."""

    def __init__(self, settings: ModerationSettings, classifier: HarmClassifier | None = None) -> None:
        self.settings = settings
        self.classifier = classifier or HarmClassifier()

    def categories(self, text: str, stage: Stage) -> list[str]:
        threshold = self.settings.input_threshold if stage == "input" else self.settings.output_threshold
        # A streamed answer is re-checked as it grows: the classifier reads a sliding window of its latest
        # part (earlier windows were checked before), so each check stays fast however long the answer
        # gets; the PII patterns still scan all of it.
        flagged = self.classifier.flag(text[-OUTPUT_WINDOW_CHARS:] if stage == "output" else text, threshold)
        # Injection is about instructions aimed at the model: in input and in retrieved documents,
        # not in the model's own answer (which may well quote such text when asked about it).
        if stage != "output" and "prompt_injection" not in flagged and injection_pattern(text):
            flagged.append("prompt_injection")
        if stage == "output":
            flagged = [c for c in flagged if c != "prompt_injection"]
        return flagged

    async def check(self, text: str, stage: Stage) -> Verdict:
        return self.verdict(text, stage)

    def verdict(self, text: str, stage: Stage) -> Verdict:
        """The same check, synchronously (benchmarks, and code outside the event loop)."""
        policies = self.settings.policies
        blocking = [c for c in self.categories(text, stage) if policies.get(c, "block") == "block"]
        if blocking:
            return Verdict("block", blocking)
        if policies.get("personal_data", "redact") == "allow":
            return Verdict()
        findings = find_pii(text)
        if not findings:
            return Verdict()
        spans = [(f.start, f.end) for f in findings]
        if policies.get("personal_data") == "block":
            return Verdict("block", ["personal_data"], spans)
        kinds = sorted({f.kind for f in findings})
        return Verdict("redact", ["personal_data", *kinds], spans, redact(text, spans))


_GUARD_TEMPLATE = (
    "Task: Check if there is unsafe content in '{role}' messages in conversations according to our safety policy "
    "with the below categories.\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>"
    "\n\n<BEGIN CONVERSATION>\n\n{role}: {text}\n\n<END CONVERSATION>\n\nProvide your safety assessment for "
    "{role} in the above conversation:\n- First line must read 'safe' or 'unsafe'.\n- If unsafe, a second line "
    "must include a comma-separated list of violated categories."
)
GUARD_CATEGORIES = {
    "S1": "violence_weapons",
    "S2": "illegal_activity",
    "S3": "sexual",
    "S4": "sexual",
    "S9": "violence_weapons",
    "S10": "hate_harassment",
    "S11": "self_harm",
    "S12": "sexual",
    "S14": "illegal_activity",
}
_CATEGORY_TEXT = "\n".join(f"{k}: {v.replace('_', ' ')}." for k, v in GUARD_CATEGORIES.items())


def parse_guard(text: str) -> Verdict:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines or lines[0].lower().startswith("safe"):
        return Verdict()
    codes = re.findall(r"S\d+", " ".join(lines[1:]))
    cats = sorted({GUARD_CATEGORIES.get(c, "unsafe") for c in codes}) or ["unsafe"]
    return Verdict("block", cats)


class GuardModelModerator:
    """A Llama-Guard-style model served on-prem through any generation backend (the served base model, one
    of its adapters, or a TGI/OpenAI server's model). Awaited on the event loop: the engine runs it beside
    the chats it serves."""

    def __init__(self, backend: GenerationBackend, model: str) -> None:
        self.backend = backend
        self.model = model

    async def check(self, text: str, stage: Stage) -> Verdict:
        role = "Agent" if stage == "output" else "User"
        prompt = _GUARD_TEMPLATE.format(role=role, categories=_CATEGORY_TEXT, text=text[-4000:])
        adapter = self.model if self.model in self.backend.list_adapters() else None
        out = "".join(
            [
                p
                async for p in self.backend.stream(
                    [Message(role="user", content=prompt)], GenerationParams(max_tokens=12, temperature=0.0), adapter
                )
            ]
        )
        verdict = parse_guard(out)
        # The verdict and its cost, never the text: the log is no place for what users write.
        log.info("guard model %s, %s: %s %s", self.model, stage, verdict.action, ",".join(verdict.categories))
        return verdict


class CompositeModerator:
    """The fast moderator first; the guard model only sees what the fast one let through, and only the
    user's message: the streamed answer is re-checked after every few tokens and retrieved passages are
    checked for injections, both of which a generation per check would make many times slower."""

    GUARDED = ("input",)

    def __init__(self, fast: FastModerator, guard: GuardModelModerator) -> None:
        self.fast = fast
        self.guard = guard

    async def check(self, text: str, stage: Stage) -> Verdict:
        verdict = self.fast.verdict(text, stage)
        if verdict.action == "block" or stage not in self.GUARDED:
            return verdict
        second = await self.guard.check(text, stage)
        return second if second.action == "block" else verdict
