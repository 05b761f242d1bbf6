"""Shared fixtures: real Enclave servers in subprocesses on free ports, over real sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclave.core.settings import default_model_cache

ROOT = Path(__file__).resolve().parents[1]
# The one model cache that `make setup` filled (settings.default_model_cache) is shared by every test server.
MODEL_CACHE = Path(os.environ.get("ENCLAVE_TEST_MODEL_CACHE") or default_model_cache())
# The suite's fast model: SmolLM2-135M answers in a third of the default's time, and most tests check what the
# service does with an answer, not the answer. Tests of answer quality and of the second architecture name the
# default (settings.DEFAULT_BASE_MODEL) or Qwen2 themselves.
FAST_BASE = "smollm2-135m-instruct"
os.environ["ENCLAVE_MODELS__BASE"] = FAST_BASE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`enclave serve` in a subprocess with its own data dir; stop() sends SIGTERM like Kubernetes."""

    def __init__(
        self, data_dir: Path, env: dict[str, str] | None = None, log_name: str = "server", command: str = "serve"
    ) -> None:
        self.command = command
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/chat/ws"
        self.env = {
            **os.environ,
            "ENCLAVE_DATA_DIR": str(data_dir),
            "ENCLAVE_MODELS__CACHE_DIR": str(MODEL_CACHE),
            "ENCLAVE_MODELS__MAX_TOKENS": "24",
            "ENCLAVE_MODELS__TEMPERATURE": "0",
            "ENCLAVE_RAG__INGEST_SAMPLES": "false",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.log_path = data_dir / f"{log_name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start_process(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "enclave.cli.main", self.command, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start(self, timeout: float = 300) -> Server:
        """Starts the process and waits until it is ready; a load error or an early exit fails at once."""
        self.start_process()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(self.url + ("/readyz" if self.command == "serve" else "/health"), timeout=2)
                if r.status_code == 200:
                    return self
                if self.command == "serve" and r.json().get("error"):
                    raise RuntimeError(f"server failed to load: {r.json()['error']}")
            time.sleep(0.3)
        raise RuntimeError(f"server not ready in {timeout}s: {self.log_path.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def log(self) -> str:
        return self.log_path.read_text()

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=120, **kw)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real server with the real small model (answers capped at 24 tokens, greedy)."""
    server = Server(tmp_path_factory.mktemp("live"), log_name="live").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The same service on the deterministic echo backend, for fast transport edge cases."""
    server = Server(
        tmp_path_factory.mktemp("echo"),
        env={"ENCLAVE_MODELS__BACKEND": "echo", "ENCLAVE_MODELS__ECHO_TOKENS_PER_SECOND": "200"},
        log_name="echo",
    ).start()
    yield server
    server.stop()


@pytest.fixture(params=["echo", "live"])
def server(request: pytest.FixtureRequest) -> Server:
    """Runs a test against both backends: the contract holds for each."""
    return request.getfixturevalue(f"{request.param}_server")  # type: ignore[no-any-return]
