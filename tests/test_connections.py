"""Client connections of a real `interlock serve`: a peer's close frees the fd at once, the
keep-alive timeout, the connection cap, parser rejections in the OpenAI error shape (raw
sockets), and a reload poll that waits out EMFILE instead of flapping."""

from __future__ import annotations

import asyncio
import errno
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from compiler import compile_texts
from runtime.app import Gateway
from runtime.reload import Reloader
from runtime.snapshot import prepare_snapshot
from tests.process import Interlock
from tests.test_reload import chat

BODY = json.dumps(chat("chat")).encode()


def config_text(server: str = "") -> str:
    return f"""version: 1
server:
  drain_timeout_s: 1
{server}upstreams:
  demo:
    kind: mock
    mock: {{reply: "pong"}}
models:
  chat: {{targets: [{{upstream: demo}}]}}
"""


def start(
    interlock: Callable[..., Interlock], tmp_path: Path, server: str = "", **kwargs: object
) -> Interlock:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(server), encoding="utf-8")
    return interlock(config, **kwargs)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def ask(conn: http.client.HTTPConnection) -> http.client.HTTPResponse:
    conn.request("POST", "/v1/chat/completions", BODY, {"content-type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response


def raw_exchange(port: int, request: bytes, timeout: float = 5) -> bytes:
    """Send `request` and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def split(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


# ---------------------------------------------------------------------------------------------
# fds and keep-alive


def test_churning_clients_under_256_fds_never_fail_and_fds_return_at_once(
    tmp_path: Path, interlock: Callable[..., Interlock]
) -> None:
    server = start(interlock, tmp_path, prefix=("prlimit", "--nofile=256"))
    pid = server.proc.pid
    warm = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    assert ask(warm).status == 200
    warm.close()
    time.sleep(0.2)
    baseline = open_fds(pid)
    failures: list[str] = []
    served = [0]

    def churn() -> None:
        # NOTE: each connection asks once and leaves; 20 x 25 = 500 connections, twice the fd
        # limit, inside the 5 s keep-alive timeout: only freeing fds on the client's FIN keeps up
        for _ in range(25):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            try:
                status = ask(conn).status
                if status != 200:
                    failures.append(str(status))
                else:
                    served[0] += 1
            except OSError as exc:
                failures.append(repr(exc))
            finally:
                conn.close()

    clients = [threading.Thread(target=churn) for _ in range(20)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(60)
    closed = time.monotonic()
    assert not failures, failures[:5]
    assert served[0] == 500
    while open_fds(pid) > baseline:
        assert time.monotonic() - closed < 1.0, f"{open_fds(pid)} fds open, baseline {baseline}"
        time.sleep(0.02)
    assert "Traceback" not in server.log


def test_idle_connection_is_closed_after_the_keep_alive_timeout(
    tmp_path: Path, interlock: Callable[..., Interlock]
) -> None:
    server = start(interlock, tmp_path, "  keep_alive_timeout_s: 0.3\n")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    assert ask(conn).status == 200
    sock = conn.sock
    assert sock is not None
    began = time.monotonic()
    assert sock.recv(1) == b""  # the server closed the idle connection
    assert 0.2 < time.monotonic() - began < 2.0
    conn.close()


def test_connections_past_the_cap_get_503_and_the_cap_frees_up(
    tmp_path: Path, interlock: Callable[..., Interlock]
) -> None:
    server = start(interlock, tmp_path, "  max_connections: 3\n")
    held = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=5) for _ in range(3)]
    for conn in held:
        assert ask(conn).status == 200  # three idle keep-alive connections
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
        b"content-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(BODY) + BODY
    )
    status, headers, body = split(raw_exchange(server.port, request))
    assert status == 503
    assert headers["connection"] == "close" and headers["retry-after"] == "1"
    error = json.loads(body)["error"]
    assert error["code"] == "too_many_connections" and "limit (3)" in error["message"]
    for conn in held:  # the held ones still work
        assert ask(conn).status == 200
    held.pop().close()
    deadline = time.monotonic() + 2
    while True:
        status, _, _ = split(raw_exchange(server.port, request))
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert status == 200
    for conn in held:
        conn.close()


# ---------------------------------------------------------------------------------------------
# Rejections made by the HTTP parser, below the app

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\n"


REJECTIONS = {  # name: (request, status, code)
    "bad-length": (HEAD + b"host: x\r\ncontent-length: abc\r\n\r\n", 400, "invalid_content_length"),
    "two-lengths": (HEAD + b"host: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n", 400, None),
    "no-host": (HEAD + b"content-length: 2\r\n\r\n{}", 400, "invalid_host"),
    "two-hosts": (HEAD + b"host: a\r\nhost: b\r\ncontent-length: 2\r\n\r\n{}", 400, "invalid_host"),
    "te-gzip": (
        HEAD + b"host: x\r\ntransfer-encoding: gzip\r\n\r\n",
        400,
        "unsupported_transfer_encoding",
    ),
    # NOTE: never completed, so it is the parser's limit (256 KiB) that refuses it, not the app's
    "huge-head": (HEAD + b"host: x\r\nx-big: " + b"a" * 320_000, 431, "headers_too_large"),
    "garbage": (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_http_request"),
}


def test_parser_rejections_answer_json_in_the_openai_shape(
    tmp_path: Path, interlock: Callable[..., Interlock]
) -> None:
    server = start(interlock, tmp_path)
    for name, (request, status, code) in REJECTIONS.items():
        got, headers, body = split(raw_exchange(server.port, request))
        assert got == status, name
        assert headers["content-type"] == "application/json", name
        assert headers["connection"] == "close", name
        assert int(headers["content-length"]) == len(body), name
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}, name
        assert error["type"] == "invalid_request_error", name
        assert code is None or error["code"] == code, (name, error)
        assert b"aaaa" not in body and b"abc" not in body  # SECURITY: never echoes the request
    assert "Traceback" not in server.log


# ---------------------------------------------------------------------------------------------
# The reload poll when the process is out of file handles


def test_reload_waits_out_emfile_without_rejecting_or_flapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(), encoding="utf-8")
    result = compile_texts([(str(config), config.read_text(encoding="utf-8"))])
    assert result.table is not None
    gateway = Gateway(prepare_snapshot(result.table))
    reloader = Reloader(gateway, config, loaded=result)
    version = gateway.snapshot.table.version

    def out_of_files(self: Path, *args: object, **kwargs: object) -> str:
        raise OSError(errno.EMFILE, "Too many open files")

    async def scenario() -> None:
        with monkeypatch.context() as patch:
            patch.setattr(Path, "read_text", out_of_files)
            for _ in range(5):  # the 1 s poll, five times over
                assert not (await reloader.reload("poll")).ok
        again = await reloader.reload("poll")
        assert again.ok and again.skipped  # the bytes did not change: nothing to reload
        with monkeypatch.context() as patch:  # a later episode is reported again, once
            patch.setattr(Path, "read_text", out_of_files)
            for _ in range(3):
                await reloader.reload("watch")

    asyncio.run(scenario())
    err = capsys.readouterr().err
    assert err.count("deferred") == 2 and "Too many open files (EMFILE)" in err
    assert "REJECTED" not in err and " ok: " not in err
    assert (reloader.attempts, reloader.rejections) == (0, 0)
    assert reloader.last is not None and reloader.last.skipped  # never a deferred one
    assert gateway.snapshot.table.version == version


def test_server_headers_are_hypercorns_own_rebuilt_each_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from email.utils import formatdate

    import hypercorn.config
    from hypercorn.config import Config

    from runtime.connections import _server_headers

    config, clock = Config(), [1_800_000_000.2]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    monkeypatch.setattr(hypercorn.config, "time", lambda: clock[0])
    first = _server_headers(config)
    assert first == config.response_headers("h11")
    assert dict(first)[b"date"] == formatdate(1_800_000_000, usegmt=True).encode()
    clock[0] += 0.7  # the same second: the same list
    assert _server_headers(config) is first
    clock[0] += 0.4  # the next second: a new date
    assert dict(_server_headers(config))[b"date"] == formatdate(1_800_000_001, usegmt=True).encode()
    other = Config()
    other.include_server_header = False
    assert b"server" not in dict(_server_headers(other))  # another config: its own headers
