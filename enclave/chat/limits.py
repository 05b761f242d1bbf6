"""Per-key limits: requests per minute and concurrent streams, in this process or shared through Redis.

With `storage.redis_url` set, every replica counts in the same Redis, so a key gets its limit across the
whole deployment, not per pod. Beyond a limit the answer is `overloaded` at once: HTTP 429 with
Retry-After, WebSocket close 1013. If Redis cannot be reached the limits fail open (the request goes on,
a warning is logged and counted): a broken cache must not take the chat down.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from enclave.core.errors import Overloaded
from enclave.core.settings import LimitsSettings

log = logging.getLogger(__name__)

Release = Callable[[], None]

# Atomically, for one key's sorted set of (member, score): drop the members scored ARGV[1] or less; if fewer than
# ARGV[2] remain, add ARGV[4] with score ARGV[3], keep the set ARGV[5] seconds, and return -1; else return the
# lowest remaining score. Requests per minute: scored by arrival, dropped after 60 s (a sliding window, as in
# one process; the lowest score gives Retry-After). Streams: scored by expiry, so a replica that dies holding a
# slot frees it after the TTL.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return -1
"""


class KeyLimits:
    def __init__(
        self,
        settings: LimitsSettings,
        redis_url: str | None = None,
        stream_ttl_s: float = 600,
        scope: str = "requests",
    ) -> None:
        self.scope = scope  # what is counted, e.g. "requests" (chats) or "ratings": its own budget per key
        self.rpm = settings.requests_per_minute
        self.max_streams = settings.max_streams_per_key
        self.stream_ttl_s = stream_ttl_s  # a replica that dies holding a slot frees it after this long
        self._hits: dict[str, deque[float]] = {}
        self._streams: dict[str, int] = {}
        self._redis: Any = None
        self.redis_errors = 0
        self._tasks: set[Any] = set()  # slot releases in flight (a task nobody holds may vanish)
        if redis_url and (self.rpm or self.max_streams):
            import redis.asyncio as aioredis

            self._redis = aioredis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
            self._take = self._redis.register_script(_TAKE)

    @property
    def shared(self) -> bool:
        return self._redis is not None

    async def acquire(self, who: str) -> Release:
        """Count a request for `who` and take a stream slot; raise Overloaded beyond the limits."""
        if not (self.rpm or self.max_streams):
            return _noop
        if self._redis is not None:
            try:
                return await self._acquire_redis(who)
            except Overloaded:
                raise
            except Exception as exc:  # fail open: limits are protection, not a dependency of the answer
                self.redis_errors += 1
                log.warning("rate limits: redis unavailable (%s); not enforcing this request", exc)
                return _noop
        return self._acquire_local(who)

    def _acquire_local(self, who: str) -> Release:
        now = time.monotonic()
        if self.rpm:
            hits = self._hits.setdefault(who, deque())
            while hits and hits[0] <= now - 60:
                hits.popleft()
            if len(hits) >= self.rpm:
                raise Overloaded(
                    f"rate limit: {self.rpm} {self.scope} per minute for this key", retry_after=60 - (now - hits[0])
                )
        if self.max_streams and self._streams.get(who, 0) >= self.max_streams:
            raise Overloaded(f"this key already has {self.max_streams} answers streaming", retry_after=2)
        if self.rpm:
            self._hits[who].append(now)
        if not self.max_streams:
            return _noop
        self._streams[who] = self._streams.get(who, 0) + 1
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self._streams[who] -= 1

        return release

    async def _acquire_redis(self, who: str) -> Release:
        r = self._redis
        now = time.time()
        if self.rpm:
            oldest = await self._take(
                keys=[f"enclave:{self.scope}:{who}"], args=[now - 60, self.rpm, now, uuid.uuid4().hex, 61]
            )
            if float(oldest) >= 0:
                raise Overloaded(
                    f"rate limit: {self.rpm} {self.scope} per minute for this key",
                    retry_after=max(0.0, 60 - (now - float(oldest))),
                )
        if not self.max_streams:
            return _noop
        key = f"enclave:streams:{who}"
        member = uuid.uuid4().hex
        taken = await self._take(
            keys=[key], args=[now, self.max_streams, now + self.stream_ttl_s, member, int(self.stream_ttl_s) + 60]
        )
        if float(taken) >= 0:
            raise Overloaded(f"this key already has {self.max_streams} answers streaming", retry_after=2)
        done = False

        def release() -> None:
            nonlocal done
            if done:
                return
            done = True
            import asyncio

            async def drop() -> None:
                try:
                    await r.zrem(key, member)
                except Exception as exc:  # the slot expires on its own
                    log.warning("rate limits: could not free a stream slot in redis: %s", exc)

            try:
                task = asyncio.get_running_loop().create_task(drop())
            except RuntimeError:
                return
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return release

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


def _noop() -> None:
    return None
