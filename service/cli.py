"""The `enclave` command: serve, ask, chat, warmup — and the knowledge base and tuning commands."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import typer

from service.settings import Settings, offline_environment

app = typer.Typer(help="Enclave: on-prem streaming chat.", no_args_is_help=True, add_completion=False)


def _settings() -> Settings:
    offline_environment()
    return Settings()


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to bind (default: server.host)."),
    port: int = typer.Option(None, help="Port to bind (default: server.port)."),
    log_level: str = typer.Option("info"),
) -> None:
    """Serve the chat API and page."""
    from service.app import create_app
    from service.server import run

    settings = _settings()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(create_app(settings), settings, host or settings.server.host, port or settings.server.port, log_level)


@app.command()
def warmup() -> None:
    """Convert the base model into the model cache and load the embedder, so starts are fast."""
    from service.backends.local import load_model

    settings = _settings()
    _, _, path = load_model(settings)
    typer.echo(f"model cache: {path}")
    try:
        from ingest.embedder import Embedder
    except ImportError:
        return
    Embedder.from_settings(settings).embed(["warm up"])
    typer.echo("embedder: ok")


async def _remote_events(url: str, body: dict[str, Any], api_key: str | None) -> AsyncIterator[dict[str, Any]]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with (
        httpx.AsyncClient(timeout=None) as client,
        client.stream("POST", url.rstrip("/") + "/v1/chat/stream", json=body, headers=headers) as resp,
    ):
        if resp.status_code != 200:
            err = json.loads(await resp.aread()).get("error", {})
            yield {"type": "error", "code": err.get("code", "internal"), "message": err.get("message", "")}
            return
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                yield json.loads(line[6:])


class _Local:
    """The pipeline in this process, for `ask` and `chat` without a server."""

    def __init__(self) -> None:
        from service.app import State

        self.state = State(_settings())

    async def start(self) -> None:
        await self.state.load()
        if not self.state.ready:
            raise typer.Exit(f"could not load: {self.state.load_error}")  # type: ignore[arg-type]

    async def events(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        from service.auth import ANONYMOUS
        from service.chat.schema import ChatRequest

        async for event in self.state.pipeline.run(ChatRequest(**body), ANONYMOUS):
            yield event.model_dump(mode="json")


async def _print_answer(events: AsyncIterator[dict[str, Any]], out: Callable[[str], None]) -> dict[str, Any]:
    sources: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    async for ev in events:
        kind = ev["type"]
        if kind == "route":
            out(f"[route: {ev['route']}{' ' + ev['adapter'] if ev.get('adapter') else ''} — {ev['reason']}]\n")
        elif kind == "sources":
            sources = ev["sources"]
        elif kind == "token":
            out(ev["text"])
        elif kind == "moderation":
            out(f"\n[moderation {ev['stage']}: {ev['action']} {', '.join(ev['categories'])}]")
        elif kind in ("done", "error"):
            final = ev
    out("\n")
    for i, s in enumerate(sources, 1):
        out(f"  [{i}] {s['title']} — {s['uri']} (score {s['score']:.3f})\n")
    if final.get("type") == "error":
        out(f"error ({final['code']}): {final['message']}\n")
    return final


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@app.command()
def ask(
    question: str = typer.Argument(..., help="The question."),
    url: str = typer.Option(None, envvar="ENCLAVE_URL", help="Ask a running server instead of loading here."),
    api_key: str = typer.Option(None, envvar="ENCLAVE_API_KEY"),
    route: str = typer.Option("auto", help="auto, rag, adapter or base."),
    collection: str = typer.Option(None),
    adapter: str = typer.Option(None),
    max_tokens: int = typer.Option(None),
) -> None:
    """Print a streamed answer and its sources."""
    body = {
        k: v
        for k, v in {
            "message": question,
            "route": route,
            "collection": collection,
            "adapter": adapter,
            "max_tokens": max_tokens,
        }.items()
        if v is not None
    }

    async def main() -> dict[str, Any]:
        if url:
            return await _print_answer(_remote_events(url, body, api_key), _out)
        local = _Local()
        await local.start()
        try:
            return await _print_answer(local.events(body), _out)
        finally:
            local.state.close()

    final = asyncio.run(main())
    raise typer.Exit(0 if final.get("type") == "done" else 1)


@app.command()
def chat(
    url: str = typer.Option(None, envvar="ENCLAVE_URL", help="Chat with a running server."),
    api_key: str = typer.Option(None, envvar="ENCLAVE_API_KEY"),
) -> None:
    """Interactive terminal chat (empty line or Ctrl-D to quit)."""

    async def main() -> None:
        local = None if url else _Local()
        if local:
            await local.start()
        conversation: str | None = None
        try:
            while True:
                try:
                    line = await asyncio.to_thread(input, "you> ")
                except EOFError:
                    break
                if not line.strip():
                    break
                body: dict[str, Any] = {"message": line}
                if conversation:
                    body["conversation_id"] = conversation
                events = local.events(body) if local else _remote_events(url, body, api_key)
                _out("enclave> ")
                final = await _print_answer(events, _out)
                conversation = final.get("conversation_id") or conversation
        finally:
            if local:
                local.state.close()

    asyncio.run(main())


def _register_optional() -> None:
    """Commands of the other parts, when their packages are importable."""
    try:
        from ingest.cli import ingest_command, kb_app
    except ImportError:
        pass
    else:
        app.command("ingest")(ingest_command)
        app.add_typer(kb_app, name="kb", help="List and delete knowledge-base documents.")
    try:
        from adapters.cli import model_server_cmd, tune_app
    except ImportError:
        pass
    else:
        app.add_typer(tune_app, name="tune", help="Datasets, LoRA training and evaluation.")
        app.command("model-server")(model_server_cmd)


_register_optional()

if __name__ == "__main__":
    app()
