"""Running the app under uvicorn with a graceful drain on SIGTERM.

uvicorn closes WebSockets (1012) as soon as it begins to shut down, so the drain has to come
before that: readiness turns false and new work is refused at once, open streams get up to
`server.drain_seconds` to finish, and only then does uvicorn stop. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from types import FrameType

import uvicorn
from fastapi import FastAPI

from enclave.core.settings import Settings

log = logging.getLogger("enclave")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_seconds: float) -> None:
        super().__init__(config)
        self.enclave_app = app
        self.drain_seconds = drain_seconds
        self.drain_started = False
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = getattr(self.enclave_app.state, "enclave", None)
        if self.drain_started or state is None or self.loop is None:
            super().handle_exit(sig, frame)
            return
        self.drain_started = True
        log.info("signal %s: draining open streams for up to %.0f s", sig, self.drain_seconds)
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._drain(sig, frame)))  # type: ignore[union-attr]

    async def _drain(self, sig: int, frame: FrameType | None) -> None:
        await self.enclave_app.state.enclave.drain(self.drain_seconds)
        super().handle_exit(sig, frame)


# Probes hit these every few seconds; their access lines would bury what the log has to say.
PROBE_PATHS = ("/healthz", "/readyz", "/metrics")


def _not_a_probe(record: logging.LogRecord) -> bool:
    args = record.args if isinstance(record.args, tuple) else ()
    return not (len(args) >= 3 and str(args[2]).split("?")[0] in PROBE_PATHS)


def configure_logging(level: str) -> None:
    """One line per event, timestamped; what a person needs at start (model, engine, weights, embedder,
    collections) and nothing of the libraries' own chatter."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # transformers sets its own loggers' level when first imported (its notes on tokenizer defaults are warnings).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for noisy in ("sentence_transformers", "httpx", "chromadb"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("uvicorn.access").addFilter(_not_a_probe)


def run(app: FastAPI, settings: Settings, host: str, port: int, log_level: str) -> None:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        ws_max_size=settings.limits.max_ws_frame_bytes,
        timeout_graceful_shutdown=5,
    )
    DrainingServer(config, app, settings.server.drain_seconds).run()
