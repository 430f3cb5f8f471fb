"""A real Interlock served by Hypercorn on a loopback socket, in a background thread.

    with ServedGateway(config_yaml) as gw:
        OpenAI(base_url=gw.url + "/v1", api_key="k").chat.completions.create(...)
        gw.swap(other_yaml)   # publish a new table the way a reload does

The `served` fixture factory starts one per call and stops them all at the end of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config

from compiler import compile_texts
from runtime.app import Gateway, create_app
from runtime.snapshot import prepare_snapshot


def two_protocol_config(up: Any, **more: Any) -> str:
    """A config (JSON) with `oai` (kind openai) and `ant` (kind anthropic) on the loopback mock
    upstream `up`, models ``to-openai`` -> ``gpt-up`` and ``to-anthropic`` -> ``claude-up``;
    `more` adds models (``models={...}``) or other top-level sections."""
    models = {
        "to-openai": {"targets": [{"upstream": "oai", "model": "gpt-up"}]},
        "to-anthropic": {"targets": [{"upstream": "ant", "model": "claude-up"}]},
        **more.pop("models", {}),
    }
    upstreams = {
        "oai": {"kind": "openai", "base_url": up.base_url("openai"), "api_key": "k"},
        "ant": {"kind": "anthropic", "base_url": up.url, "api_key": "k"},
    }
    return json.dumps({"version": 1, "upstreams": upstreams, "models": models, **more})


def compile_yaml(text: str, name: str = "config.yaml") -> Any:
    result = compile_texts([(name, text)])
    if result.table is None:
        raise AssertionError(
            "test config does not compile: "
            + "; ".join(f"{d.span}: {d.code}: {d.message}" for d in result.errors)
        )
    return result.table


class ServedGateway:
    def __init__(self, config_text: str) -> None:
        self.gateway = Gateway(prepare_snapshot(compile_yaml(config_text)))
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._fd = self._sock.detach()  # NOTE: Hypercorn owns and closes the listening socket
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        config = Config()
        config.bind = [f"fd://{self._fd}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 5
        config.h11_max_incomplete_size = 256 * 1024  # as `interlock serve` sets it
        self._loop.call_soon(self._ready.set)
        try:
            await serve(create_app(self.gateway), config, shutdown_trigger=self._stop.wait)
        finally:
            self.gateway.access_log.close()
            await self.gateway.state.pool.aclose()

    def start(self) -> ServedGateway:
        self._thread.start()
        self._ready.wait(10)
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        for _ in range(200):
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            threading.Event().wait(0.01)
        raise RuntimeError("served gateway did not start")

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the server's event loop and return its result."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def swap(self, config_text: str) -> str:
        """Compile and publish a new table; returns its short version."""
        snapshot = prepare_snapshot(compile_yaml(config_text))
        self.call(lambda: self.gateway.swap(snapshot))
        return snapshot.version

    @property
    def version(self) -> str:
        return self.gateway.snapshot.version

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> ServedGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def served() -> Iterator[Callable[[str], ServedGateway]]:
    started: list[ServedGateway] = []

    def start(config_text: str) -> ServedGateway:
        gateway = ServedGateway(config_text).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()
