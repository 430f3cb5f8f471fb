"""The usage ledger end to end, over loopback: the official SDKs call a served Interlock in front
of the mock upstreams; after shutdown the store holds one exact record per request.

Also: the client sees exactly the stream it asked for, abandoned streams are recorded with what
was relayed, prompts are kept only when asked, metrics and `GET /admin/usage`, and the
`interlock usage report` / `prune` commands against the store a real `interlock serve` wrote.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from runtime.state.ledger import UsageRecord
from runtime.state.ledger_stores import open_ledger_store
from tests.process import ADMIN, ADMIN_HASH, REPO, Interlock
from tests.served import ServedGateway
from tests.tcp_proxy import TcpProxy
from tests.upstreams import MockUpstream

CLIENT_KEY = "il-ledger-test-client-key"
_SALT = "fedcba9876543210"
CLIENT_HASH = f"sha256:{_SALT}:{hashlib.sha256((_SALT + CLIENT_KEY).encode()).hexdigest()}"
PRICE_IN, PRICE_OUT = 2.0, 8.0  # per million tokens


def config(up: MockUpstream, db: Path, extra: str = "") -> str:
    pricing = f"{{input_per_mtok: {PRICE_IN}, output_per_mtok: {PRICE_OUT}, currency: EUR}}"
    return f"""
version: 1
upstreams:
  openai: {{kind: openai, base_url: "{up.base_url("openai")}", api_key: {{env: IL_LEDGER_KEY}}}}
  anthropic: {{kind: anthropic, base_url: "{up.url}", api_key: {{env: IL_LEDGER_KEY}}}}
  mock: {{kind: mock, mock: {{stream_chunks: 6, chunk_delay_ms: 30}}}}
models:
  to-openai: {{targets: [{{upstream: openai, model: up-openai}}], pricing: {pricing}}}
  to-anthropic: {{targets: [{{upstream: anthropic, model: up-anthropic}}], pricing: {pricing}}}
  slow-mock: {{targets: [{{upstream: mock}}]}}
auth:
  required: true
  keys:
    - {{id: team-a, hash: "{CLIENT_HASH}", org: acme, project: web}}
admin: {{enabled: true, key_hash: "{ADMIN_HASH}"}}
usage:
  store: {{kind: sqlite, path: "{db}"}}
{extra}
"""


@pytest.fixture
def serve(
    served: Callable[[str], ServedGateway],
    upstream_reset: MockUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., tuple[ServedGateway, Path]]:
    monkeypatch.setenv("IL_LEDGER_KEY", "sk-upstream")

    def start(extra: str = "") -> tuple[ServedGateway, Path]:
        db = tmp_path / "usage.db"
        return served(config(upstream_reset, db, extra)), db

    return start


def stored(db: Path) -> dict[str, UsageRecord]:
    async def read() -> list[UsageRecord]:
        store = open_ledger_store("sqlite", path=str(db))
        await store.open()
        try:
            return await store.records()
        finally:
            await store.close()

    return {r.request_id: r for r in asyncio.run(read())}


def oai(gw: ServedGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0)


def ant(gw: ServedGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0)


def rid(name: str) -> dict[str, str]:
    return {"x-request-id": name}


MESSAGES: list[Any] = [{"role": "user", "content": "count these five words"}]


def cost(input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * PRICE_IN + output_tokens * PRICE_OUT) / 1_000_000


def test_every_request_is_recorded_with_exact_tokens_and_cost(serve: Any) -> None:
    gw, db = serve()
    expected: dict[str, tuple[int, int]] = {}
    with oai(gw) as client:
        plain = client.chat.completions.create(
            model="to-openai", messages=MESSAGES, extra_headers=rid("oai-json")
        )
        assert plain.usage is not None
        usage = (plain.usage.prompt_tokens, plain.usage.completion_tokens)
        expected["oai-json"] = usage

        chunks = list(
            client.chat.completions.create(
                model="to-openai", messages=MESSAGES, stream=True, extra_headers=rid("oai-stream")
            )
        )
        # NOTE: the client did not ask for usage: it sees no usage chunk and no usage field
        assert all(c.usage is None and c.choices for c in chunks)
        expected["oai-stream"] = usage

        chunks = list(
            client.chat.completions.create(
                model="to-openai",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=rid("oai-stream-usage"),
            )
        )
        assert chunks[-1].usage is not None and chunks[-1].choices == []
        expected["oai-stream-usage"] = (
            chunks[-1].usage.prompt_tokens,
            chunks[-1].usage.completion_tokens,
        )

        twin = client.chat.completions.create(
            model="to-anthropic", messages=MESSAGES, extra_headers=rid("oai-to-ant")
        )
        assert twin.usage is not None
        expected["oai-to-ant"] = (twin.usage.prompt_tokens, twin.usage.completion_tokens)
        chunks = list(
            client.chat.completions.create(
                model="to-anthropic",
                messages=MESSAGES,
                stream=True,
                extra_headers=rid("oai-to-ant-stream"),
            )
        )
        assert all(c.usage is None for c in chunks)
        expected["oai-to-ant-stream"] = expected["oai-to-ant"]

        embedded = client.embeddings.create(
            model="to-openai", input="five words to embed here", extra_headers=rid("embed")
        )
        expected["embed"] = (embedded.usage.prompt_tokens, 0)

        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model="no-such-model", messages=MESSAGES, extra_headers=rid("missing")
            )

    with ant(gw) as client:
        with client.messages.stream(
            model="to-anthropic", max_tokens=64, messages=MESSAGES, extra_headers=rid("ant-raw")
        ) as stream:
            final = stream.get_final_message()
        expected["ant-raw"] = (final.usage.input_tokens, final.usage.output_tokens)
        message = client.messages.create(
            model="to-openai", max_tokens=64, messages=MESSAGES, extra_headers=rid("ant-to-oai")
        )
        expected["ant-to-oai"] = (message.usage.input_tokens, message.usage.output_tokens)
        with client.messages.stream(
            model="to-openai", max_tokens=64, messages=MESSAGES, extra_headers=rid("ant-to-oai-s")
        ) as stream:
            final = stream.get_final_message()
        expected["ant-to-oai-s"] = (final.usage.input_tokens, final.usage.output_tokens)
        assert expected["ant-to-oai-s"] == expected["ant-to-oai"]

    gw.stop()  # NOTE: a clean shutdown flushes the queue
    records = stored(db)
    assert set(records) == {*expected, "missing"}
    for name, (input_tokens, output_tokens) in expected.items():
        found = records[name]
        assert (found.input_tokens, found.output_tokens) == (input_tokens, output_tokens), name
        assert input_tokens > 0 and not found.estimated, name
        assert found.cost == pytest.approx(cost(input_tokens, output_tokens)), name
        assert found.currency == "EUR" and found.status == 200 and found.error is None
        assert (found.key_id, found.org, found.project) == ("team-a", "acme", "web")
        assert found.attempts == 1 and found.latency_ms > 0 and found.ttfb_ms is not None
        assert found.config_version == gw.version and found.prompt is None
    assert records["oai-stream"].stream and not records["oai-json"].stream
    assert records["oai-to-ant"].upstream == "anthropic"
    assert records["oai-to-ant"].upstream_model == "up-anthropic"
    assert records["ant-to-oai"].api == "anthropic.messages"
    missing = records["missing"]
    assert (missing.status, missing.error, missing.input_tokens, missing.cost) == (
        404,
        "model_not_found",
        0,
        0.0,
    )
    assert missing.requested_model == "no-such-model" and missing.model is None


def test_an_abandoned_stream_is_recorded_with_what_was_relayed(serve: Any) -> None:
    gw, db = serve()
    body = {"model": "slow-mock", "stream": True, "messages": MESSAGES}
    headers = {"authorization": f"Bearer {CLIENT_KEY}", **rid("left")}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        seen = b""
        for chunk in r.iter_raw():  # two pieces of text, then the client goes away
            seen += chunk
            if seen.count(b'"content":"') >= 2:
                break
    deadline = time.monotonic() + 5
    while gw.call(lambda: gw.gateway.ledger.depth if gw.gateway.ledger else 0) == 0:
        assert time.monotonic() < deadline, "the abandoned stream was never recorded"
        time.sleep(0.02)
    gw.stop()
    left = stored(db)["left"]
    assert (left.status, left.error) == (499, "client_gone")
    assert left.estimated and left.input_tokens > 0
    assert 0 < left.output_tokens < 10  # the reply is "echo: count these five words"
    assert left.cost == 0.0 and left.currency is None  # slow-mock has no pricing


def test_prompts_are_kept_only_when_asked(serve: Any) -> None:
    gw, db = serve("  log_prompts: true")
    with oai(gw) as client:
        client.chat.completions.create(model="to-openai", messages=MESSAGES, extra_headers=rid("p"))
        list(
            client.chat.completions.create(
                model="to-anthropic", messages=MESSAGES, stream=True, extra_headers=rid("ps")
            )
        )
    gw.stop()
    records = stored(db)
    for name in ("p", "ps"):
        assert "count these five words" in (records[name].prompt or "")
        assert records[name].completion == "echo: count these five words"
        assert CLIENT_KEY not in (records[name].prompt or "")


def test_flush_interval_sets_how_often_records_are_written(
    serve: Any, upstream_reset: MockUpstream
) -> None:
    gw, db = serve("  flush_interval_s: 4")
    assert gw.gateway.ledger is not None and gw.gateway.ledger.flush_s == 4.0
    oai(gw).chat.completions.create(model="to-openai", messages=MESSAGES, extra_headers=rid("f1"))
    sent = time.monotonic()
    time.sleep(0.5)
    assert "f1" not in stored(db)  # NOTE: queued until the next flush, at most 4 s away
    wait_for(lambda: "f1" in stored(db), "the flush", timeout=10)
    assert time.monotonic() - sent > 0.5
    ledger = gw.gateway.ledger
    gw.swap(config(upstream_reset, db, "  flush_interval_s: 0.05"))
    assert gw.gateway.ledger is ledger and ledger.flush_s == 0.05  # same store: kept, retuned


def test_metrics_and_admin_usage(
    upstream_reset: MockUpstream, interlock: Callable[..., Interlock], tmp_path: Path
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(config(upstream_reset, tmp_path / "usage.db"), encoding="utf-8")
    gw = interlock(path, env={"IL_LEDGER_KEY": "sk-upstream"})
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0) as client:
        for _ in range(3):
            client.chat.completions.create(model="to-openai", messages=MESSAGES)
    text = httpx.get(gw.url + "/metrics").text
    labels = 'key="team-a",model="to-openai",upstream="openai"'
    assert f"interlock_usage_requests_total{{{labels}}} 3.0" in text
    assert 'interlock_usage_tokens_total{key="team-a",kind="input"' in text
    assert 'interlock_usage_cost_total{currency="EUR"' in text
    assert CLIENT_KEY not in text and CLIENT_HASH not in text
    deadline = time.monotonic() + 5
    while True:  # NOTE: the writer flushes every 200 ms
        rows = httpx.get(gw.url + "/admin/usage?group_by=key,model", headers=ADMIN).json()
        if (rows and rows[0]["requests"] == 3) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert rows == [
        {
            "key": "team-a",
            "model": "to-openai",
            "currency": "EUR",
            "requests": 3,
            "errors": 0,
            "input_tokens": rows[0]["input_tokens"],
            "output_tokens": rows[0]["output_tokens"],
            "cached_tokens": 0,
            "cost": pytest.approx(cost(rows[0]["input_tokens"], rows[0]["output_tokens"])),
            "cache_hits": 0,
            "cost_saved": 0.0,
        }
    ]
    assert rows[0]["input_tokens"] > 0
    assert "interlock_ledger_written_total 3.0" in httpx.get(gw.url + "/metrics").text
    bad = httpx.get(gw.url + "/admin/usage?group_by=colour", headers=ADMIN)
    assert bad.status_code == 400 and "colour" in bad.json()["error"]["message"]
    assert httpx.get(gw.url + "/admin/usage").status_code == 401


# --- a real `interlock serve`, SIGTERM, and the CLI ------------------------------------------


def mock_config(db: str, extra: str = "") -> str:
    return f"""
version: 1
upstreams:
  demo: {{kind: mock, mock: {{stream_chunks: 4}}}}
models:
  demo-chat:
    aliases: [gpt-4o-mini, claude-haiku]
    targets: [{{upstream: demo, model: demo-1}}]
    pricing: {{input_per_mtok: 1.0, output_per_mtok: 4.0}}
usage:
  store: {db}
{extra}
"""


def send_mix(url: str, count: int) -> tuple[int, int]:
    """`count` requests of both APIs, streamed and not; returns the tokens the clients saw."""
    seen_in = seen_out = 0
    with (
        openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as o,
        anthropic.Anthropic(base_url=url, api_key="k", max_retries=0) as a,
    ):
        for n in range(count):
            text = [{"role": "user", "content": f"request number {n} " + "word " * (n % 7)}]
            if n % 4 == 0:
                reply = o.chat.completions.create(model="gpt-4o-mini", messages=text)
                assert reply.usage is not None
                seen_in, seen_out = (
                    seen_in + reply.usage.prompt_tokens,
                    seen_out + reply.usage.completion_tokens,
                )
            elif n % 4 == 1:
                chunks = list(
                    o.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=text,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                )
                usage = chunks[-1].usage
                assert usage is not None
                seen_in, seen_out = (
                    seen_in + usage.prompt_tokens,
                    seen_out + usage.completion_tokens,
                )
            elif n % 4 == 2:
                message = a.messages.create(model="claude-haiku", max_tokens=64, messages=text)
                seen_in += message.usage.input_tokens
                seen_out += message.usage.output_tokens
            else:
                with a.messages.stream(model="claude-haiku", max_tokens=64, messages=text) as s:
                    final = s.get_final_message()
                seen_in += final.usage.input_tokens
                seen_out += final.usage.output_tokens
    return seen_in, seen_out


def usage_cli(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", "usage", *args[:1], str(config), *args[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_sigterm_right_after_the_last_response_loses_nothing(
    interlock: Callable[..., Interlock], tmp_path: Path
) -> None:
    db = tmp_path / "ledger.db"
    path = tmp_path / "gateway.yaml"
    path.write_text(mock_config(f'{{kind: sqlite, path: "{db}"}}'), encoding="utf-8")
    server = interlock(path)
    seen_in, seen_out = send_mix(server.url, 40)
    assert server.stop() == 0  # NOTE: SIGTERM at once; the queue is drained before exit

    done = usage_cli(path, "report", "--group-by", "model", "--format", "json")
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    assert row["model"] == "demo-chat" and row["requests"] == 40 and row["errors"] == 0
    assert (row["input_tokens"], row["output_tokens"]) == (seen_in, seen_out)
    assert row["cost"] == pytest.approx((seen_in * 1.0 + seen_out * 4.0) / 1_000_000)
    assert row["currency"] == "USD"

    table = usage_cli(path, "report", "--group-by", "day", "model")
    assert table.returncode == 0 and "demo-chat" in table.stdout and " 40 " in table.stdout
    csv_out = usage_cli(path, "report", "--format", "csv").stdout.splitlines()
    assert csv_out[0].startswith("model,currency,requests,errors,input_tokens")
    assert csv_out[1].startswith("demo-chat,USD,40,0,")


def test_usage_commands_explain_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(mock_config("{kind: sqlite, path: x.db}").split("usage:")[0], encoding="utf-8")
    done = usage_cli(path, "report")
    assert done.returncode == 1 and "no `usage` section" in done.stderr
    assert "Traceback" not in done.stderr
    bad_day = usage_cli(path, "report", "--since", "yesterday")
    assert bad_day.returncode == 2 and "YYYY-MM-DD" in bad_day.stderr


def test_prune_keeps_the_daily_totals(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    path = tmp_path / "gateway.yaml"
    path.write_text(
        mock_config(f'{{kind: sqlite, path: "{db}"}}', "  retention_days: 30"), encoding="utf-8"
    )
    now = time.time()
    old = [
        UsageRecord(
            id=f"old{n}",
            ts=now - 40 * 86400,
            request_id=f"o{n}",
            api="openai.chat",
            status=200,
            model="demo-chat",
            input_tokens=10,
            output_tokens=5,
        )
        for n in range(3)
    ]
    new = UsageRecord(
        id="new", ts=now, request_id="n", api="openai.chat", status=200, model="demo-chat"
    )

    async def write() -> None:
        store = open_ledger_store("sqlite", path=str(db))
        await store.open()
        await store.write([*old, new])
        await store.close()

    asyncio.run(write())
    done = usage_cli(path, "prune")
    assert done.returncode == 0 and "pruned 3 record(s)" in done.stdout
    assert set(stored(db)) == {"n"}
    report = usage_cli(path, "report", "--group-by", "day", "--format", "json")
    rows = json.loads(report.stdout)
    assert [r["requests"] for r in rows] == [3, 1]
    assert rows[0]["input_tokens"] == 30


# --- several processes, and a store that goes away ---------------------------------------------


def read_store(kind: str, where: str) -> list[UsageRecord]:
    async def read() -> list[UsageRecord]:
        store = (
            open_ledger_store("sqlite", path=where)
            if kind == "sqlite"
            else open_ledger_store("postgres", url=where)
        )
        await store.open()
        try:
            return await store.records()
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_serve_processes_writing_one_store_add_up_exactly(
    kind: str, interlock: Callable[..., Interlock], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    where = str(tmp_path / "shared.db") if kind == "sqlite" else request.getfixturevalue("pg_url")
    store = (
        f'{{kind: sqlite, path: "{where}"}}'
        if kind == "sqlite"
        else "{kind: postgres, url: {env: IL_LEDGER_URL}}"
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(mock_config(store), encoding="utf-8")
    env = {"IL_LEDGER_URL": where}
    servers = [interlock(path, env=env), interlock(path, env=env)]
    with ThreadPoolExecutor(2) as pool:
        seen = list(pool.map(lambda s: send_mix(s.url, 30), servers))
    assert [s.stop() for s in servers] == [0, 0]
    records = read_store(kind, where)
    assert len(records) == 60 and len({r.id for r in records}) == 60
    assert {r.config_version for r in records} == {records[0].config_version}
    assert sum(r.input_tokens for r in records) == sum(s[0] for s in seen)
    assert sum(r.output_tokens for r in records) == sum(s[1] for s in seen)
    report = usage_cli(path, "report", "--format", "json", env=env)
    assert report.returncode == 0, report.stderr
    assert [row["requests"] for row in json.loads(report.stdout)] == [60]


def test_a_store_outage_loses_nothing_and_doubles_nothing(
    pg_url: str, served: Callable[[str], ServedGateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = int(pg_url.split("@127.0.0.1:")[1].split("/")[0])
    with TcpProxy(port) as proxy:
        monkeypatch.setenv("IL_LEDGER_URL", pg_url.replace(f":{port}/", f":{proxy.port}/"))
        gw = served(mock_config("{kind: postgres, url: {env: IL_LEDGER_URL}}"))
        ledger = gw.gateway.ledger
        assert ledger is not None

        def ask(n: int) -> None:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            r = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=rid(f"r{n}"))
            assert r.status_code == 200  # NOTE: the store's state never reaches the client

        def stored_count() -> int:
            return len(read_store("postgres", pg_url))

        for n in range(10):
            ask(n)
        wait_for(lambda: stored_count() == 10, "the first records to arrive")
        proxy.down()
        for n in range(10, 40):
            ask(n)
        wait_for(lambda: gw.call(lambda: ledger.write_errors) > 0, "a failed write")
        assert stored_count() == 10 and gw.call(lambda: ledger.depth) == 30
        proxy.up()
        wait_for(lambda: stored_count() == 40, "the queued records after the outage", 40)
        gw.stop()
    records = read_store("postgres", pg_url)
    assert sorted(r.request_id for r in records) == sorted(f"r{n}" for n in range(40))
    assert len({r.id for r in records}) == 40 and ledger.dropped == 0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
