"""The output gate: holds back a window of streamed pieces until the moderator has passed them.

A piece leaves the gate only after the text that contains it, plus `window` pieces after it,
was checked; a span marked for redaction is replaced before release, and a block releases
nothing more. Without a moderator the gate passes pieces straight through.
"""

from __future__ import annotations

from service.protocols import Moderator, Verdict

REDACTED = "[redacted]"


class OutputGate:
    def __init__(self, moderator: Moderator | None, window: int) -> None:
        self.moderator = moderator
        self.window = max(1, window)
        self.raw = ""
        self.released = 0  # index into raw up to which text has left the gate
        self.pending: list[int] = []  # lengths of the pieces still held back
        self.verdict = Verdict()
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
        return self._release(len(self.raw) - keep)

    async def finish(self) -> list[str]:
        if self.moderator is None or self.blocked:
            return []
        if not await self._check():
            return []
        self.pending = []
        return self._release(len(self.raw))

    async def _check(self) -> bool:
        assert self.moderator is not None
        self.verdict = await self.moderator.check(self.raw, "output")
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
