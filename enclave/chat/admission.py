"""Explicit backpressure: a bounded number of generations at once and a bounded queue behind them.

`enter()` answers at once — a ticket, or Overloaded when the queue is full — so HTTP can say 429
before any stream starts; the ticket then waits for a slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

from enclave.core.errors import Overloaded


class Admission:
    def __init__(self, concurrent: int, queue: int) -> None:
        self.capacity = concurrent + queue
        self.slots = asyncio.Semaphore(concurrent)
        self.admitted = 0
        self.closed = False

    def enter(self) -> Ticket:
        if self.closed:
            raise Overloaded("the server is shutting down", retry_after=5)
        if self.admitted >= self.capacity:
            raise Overloaded("too many requests in flight, retry shortly", retry_after=2)
        self.admitted += 1
        return Ticket(self)


class Ticket:
    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.holding = False
        self.released = False
        self.on_release: Callable[[], None] | None = None  # frees the caller's per-key stream slot

    async def __aenter__(self) -> Ticket:
        await self.admission.slots.acquire()
        self.holding = True
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def release(self) -> None:
        if self.holding:
            self.admission.slots.release()
            self.holding = False
        if not self.released:
            self.admission.admitted -= 1
            self.released = True
            if self.on_release is not None:
                self.on_release()
