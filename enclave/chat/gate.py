"""The output gate: holds back a window of streamed pieces until the moderator has passed them.

A piece leaves the gate only after the text that contains it, plus `window` pieces after it,
was checked; a span marked for redaction is replaced before release, and a block releases
nothing more. Besides the moderator's verdict, an answer that repeats a protected prompt (the system prompt,
Enclave's RAG instructions: enclave.moderation.leaks) is blocked as `prompt_leak`, and one that repeats what an
instruction planted in the passages asks to be said (enclave.moderation.planted) as `planted_instruction`: the
start of such a payload is held back, however many pieces it takes, until it is whole or is not one after all.
Without a moderator the gate passes pieces straight through.
"""

from __future__ import annotations

from enclave.core.protocols import Moderator, Verdict
from enclave.moderation.leaks import LeakCheck
from enclave.moderation.planted import PlantedCheck

REDACTED = "[redacted]"
# A leak is a run of a few words: the answer's tail this long holds any that the latest piece completed.
LEAK_TAIL_CHARS = 2000
# An answer that ends this far into a planted payload ends before it.
PARTIAL_PAYLOAD = 0.5


class OutputGate:
    def __init__(
        self,
        moderator: Moderator | None,
        window: int,
        leaks: LeakCheck | None = None,
        planted: PlantedCheck | None = None,
    ) -> None:
        self.moderator = moderator
        self.leaks = leaks if leaks else None
        self.planted = planted if planted else None
        self.window = max(1, window)
        self.raw = ""
        self.released = 0  # index into raw up to which text has left the gate
        self.pending: list[int] = []  # lengths of the pieces still held back
        self.verdict = Verdict()
        self.since_thorough = self.window - 1  # checks since the last thorough one (the first is thorough)
        self.blocked = False
        self.redacted = False

    async def push(self, piece: str) -> list[str]:
        if self.moderator is None:
            return [piece]
        if self.blocked:
            return []
        self.raw += piece
        self.pending.append(len(piece))
        if len(self.pending) <= self.window:
            return []
        if not await self._check():
            return []
        keep = sum(self.pending[-self.window :])
        self.pending = self.pending[-self.window :]
        cut = len(self.raw) - keep
        if self.planted is not None:  # a payload's first words may be older than the window: never released
            cut = min(cut, self.planted.held_from(self.raw))
        return self._release(cut)

    async def finish(self) -> list[str]:
        if self.moderator is None or self.blocked:
            return []
        if not await self._check(final=True):
            return []
        self.pending = []
        end = len(self.raw)
        if self.planted is not None:  # an answer that stops half-way into a payload ("PELICAN-"): not that half
            end = self.planted.held_from(self.raw, PARTIAL_PAYLOAD)
        return self._release(end)

    async def _check(self, final: bool = False) -> bool:
        assert self.moderator is not None
        if self.leaks is not None and self.leaks.leaked(self.raw[-LEAK_TAIL_CHARS:]):
            self.verdict = Verdict("block", ["prompt_leak"])
            self.blocked = True
            return False
        if self.planted is not None and self.planted.repeated(self.raw) is not None:
            self.verdict = Verdict("block", ["planted_instruction"])
            self.blocked = True
            return False
        # The thorough check (the embedding classifier) at least once per window: every piece released was
        # still held back at the last one, so it was read by it.
        self.since_thorough += 1
        thorough = self.since_thorough >= self.window or final
        if thorough:
            self.since_thorough = 0
        self.verdict = await self.moderator.check(self.raw, "output", thorough)
        if self.verdict.action == "block":
            self.blocked = True
            return False
        return True

    def _release(self, cut: int) -> list[str]:
        spans = sorted(self.verdict.spans) if self.verdict.action == "redact" else []
        for start, end in spans:  # never cut inside a span: hold its start back until it is whole
            if start < cut < end:
                cut = start
        if cut <= self.released:
            return []
        out, pos = [], self.released
        for start, end in spans:
            if end <= pos or start >= cut:
                continue
            out.append(self.raw[pos : max(pos, start)])
            if start >= pos:
                out.append(REDACTED)
                self.redacted = True
            pos = min(end, cut)
        out.append(self.raw[pos:cut])
        self.released = cut
        text = "".join(out)
        return [text] if text else []
