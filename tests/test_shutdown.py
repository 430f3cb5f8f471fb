"""SIGTERM on a real `interlock serve`: streams longer than the drain grace end with their API's
error event (and 503 in the access log, no traceback), and no connection is accepted and then
dropped: each attempt around the signal is refused at connect or fully answered."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.process import Interlock
from tests.test_reload import chat

WORDS = 40


def config_text(drain_s: float) -> str:
    """`chat` answers at once; `late` after 1 s; `slow` streams 40 chunks 100 ms apart (4 s)."""
    return f"""version: 1
server:
  drain_timeout_s: {drain_s}
upstreams:
  demo:
    kind: mock
    mock: {{reply: "pong"}}
  slowreply:
    kind: mock
    mock: {{reply: "late", latency_ms: 1000}}
  slowchunks:
    kind: mock
    mock: {{reply: "{"word " * WORDS}", stream_chunks: {WORDS}, chunk_delay_ms: 100}}
models:
  chat: {{targets: [{{upstream: demo}}]}}
  slow: {{targets: [{{upstream: slowchunks}}]}}
  late: {{targets: [{{upstream: slowreply}}]}}
"""


def start(interlock: Callable[..., Interlock], tmp_path: Path, drain_s: float) -> Interlock:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(drain_s), encoding="utf-8")
    return interlock(config)


STREAMS: dict[str, tuple[str, dict[str, Any]]] = {
    "openai.chat": ("/v1/chat/completions", chat("slow", stream=True)),
    "anthropic.messages": (
        "/v1/messages",
        {
            "model": "slow",
            "max_tokens": 100,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
    ),
    "openai.responses": ("/v1/responses", {"model": "slow", "input": "hi", "stream": True}),
}


@dataclass
class Stream:
    """One client stream: the SSE events it read, as (event name, data)."""

    events: list[tuple[str, str]] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    status: int = 0


def read_stream(url: str, path: str, body: dict[str, Any], out: Stream) -> None:
    name = ""
    try:
        headers = {"anthropic-version": "2023-06-01"}
        with httpx.stream("POST", url + path, json=body, headers=headers, timeout=30) as response:
            out.status = response.status_code
            for line in response.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    out.events.append((name, line[6:]))
                    name = ""
                    out.started.set()
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        out.started.set()


def test_streams_past_the_grace_end_with_their_error_event(
    tmp_path: Path, interlock: Callable[..., Interlock]
) -> None:
    server = start(interlock, tmp_path, drain_s=0.5)
    streams = {api: Stream() for api in STREAMS}
    readers = [
        threading.Thread(target=read_stream, args=(server.url, path, body, streams[api]))
        for api, (path, body) in STREAMS.items()
    ]
    for reader in readers:
        reader.start()
    try:
        for api, stream in streams.items():
            assert stream.started.wait(10) and stream.status == 200, (api, stream)
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.wait(10)
        took = time.monotonic() - signalled
    finally:
        for reader in readers:
            reader.join(15)
    assert code == 0, server.log
    assert 0.4 < took < 0.5 + 2.5, took  # the grace, the error events, and not much more
    for api, stream in streams.items():
        assert not stream.error, (api, stream.error)  # a complete chunked response
        assert len(stream.events) < WORDS, api  # cut short, not finished
    name, data = streams["openai.chat"].events[-1]
    assert json.loads(data)["error"]["message"] == "server shutting down"
    assert json.loads(data)["error"]["code"] == "shutting_down"
    name, data = streams["anthropic.messages"].events[-1]
    assert name == "error"
    assert json.loads(data) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "server shutting down"},
    }
    *before, (name, data) = streams["openai.responses"].events
    error = json.loads(data)
    assert name == "error" and error["type"] == "error"
    assert error["code"] == "shutting_down" and error["message"] == "server shutting down"
    assert error["sequence_number"] == json.loads(before[-1][1])["sequence_number"] + 1
    log = server.log
    assert "Traceback" not in log and "CancelledError" not in log, log
    statuses = [json.loads(line)["status"] for line in log.splitlines() if line.startswith("{")]
    assert sorted(statuses) == [503, 503, 503], log
    assert log.rstrip().endswith("interlock: stopped")


# ---------------------------------------------------------------------------------------------
# Accepted, then dropped?

REQUEST = json.dumps(chat("chat")).encode()
RAW = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
    b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(REQUEST) + REQUEST
)


def attempt(port: int) -> str:
    """refused | answered | dropped (connected, then no complete HTTP response)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    except OSError:  # NOTE: refused, or no SYN-ACK while the listener stops: not accepted
        return "refused"
    data = b""
    try:
        with sock:
            sock.sendall(RAW)
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        pass
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and len(body) == int(value):
            return "answered"
    return "dropped"


@pytest.mark.parametrize("streaming", [True, False], ids=["stream-in-flight", "short-drain"])
def test_no_connection_is_accepted_and_then_dropped_after_sigterm(
    tmp_path: Path, interlock: Callable[..., Interlock], streaming: bool
) -> None:
    server = start(interlock, tmp_path, drain_s=3)
    # NOTE: a stream in flight keeps the process draining long after the listener closed;
    # without it the process exits as soon as the 1 s request below is answered
    keep = Stream()
    holder = threading.Thread(target=read_stream, args=(server.url, *STREAMS["openai.chat"], keep))
    if streaming:
        holder.start()
        assert keep.started.wait(10)
    late: list[httpx.Response] = []
    client = httpx.Client(timeout=10)  # keep-alive
    asker = threading.Thread(
        target=lambda: late.append(
            client.post(server.url + "/v1/chat/completions", json=chat("late"))
        )
    )
    signalled: list[float] = []
    results: list[tuple[float, str]] = []
    lock = threading.Lock()

    def hammer() -> None:
        while True:
            began = time.monotonic()
            outcome = attempt(server.port)
            with lock:
                results.append((began, outcome))
                after = [r for r in results if signalled and r[0] >= signalled[0]]
                if len(after) >= 1000:
                    return

    hammers = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in hammers:
        thread.start()
    try:
        deadline = time.monotonic() + 20
        while len(results) < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        asker.start()
        time.sleep(0.3)  # NOTE: the 1 s request is in flight when the signal comes
        with lock:
            signalled.append(time.monotonic())
        server.signal(signal.SIGTERM)
    finally:
        for thread in hammers:
            thread.join(60)
        if streaming:
            holder.join(15)
        asker.join(15)
        client.close()
    (response,) = late  # finished inside the drain, telling the client not to reuse the connection
    assert response.status_code == 200 and response.headers["connection"] == "close"
    before = [outcome for began, outcome in results if began < signalled[0]]
    after = [outcome for began, outcome in results if began >= signalled[0]]
    assert len(before) >= 200 and set(before) == {"answered"}
    assert len(after) >= 1000
    assert after.count("dropped") == 0, {o: after.count(o) for o in set(after)}
    assert "refused" in after  # the listener did close
    assert server.wait(10) == 0
    assert "Traceback" not in server.log
