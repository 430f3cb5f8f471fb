"""The access log: one JSON line per request, at the configured destination, without secrets."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.served import ServedGateway

CONFIG = """
version: 1
upstreams:
  demo: {kind: mock}
models:
  demo-chat: {targets: [{upstream: demo}]}
observability:
  access_log: {enabled: true, format: json, destination: "%s"}
"""


def test_lines_go_to_the_configured_file_without_secrets(
    served: Callable[[str], ServedGateway], tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    gw = served(CONFIG % log)
    for rid in ("rid-1", "rid-2"):
        reply = httpx.post(
            gw.url + "/v1/chat/completions",
            headers={"authorization": "Bearer sk-secret-value", "x-request-id": rid},
            json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert reply.status_code == 200
    deadline = time.monotonic() + 5
    while (
        time.monotonic() < deadline
        and len(log.read_text().splitlines() if log.exists() else []) < 2
    ):
        time.sleep(0.05)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["request_id"] for line in lines] == ["rid-1", "rid-2"]
    assert {line["status"] for line in lines} == {200}
    assert lines[0]["model"] == "demo-chat" and lines[0]["upstream"] == "demo"
    assert lines[0]["version"] == gw.version
    assert "sk-secret-value" not in log.read_text()
