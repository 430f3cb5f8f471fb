"""Zero-downtime hot reload, proven over a real `interlock serve` subprocess under load.

`test_reload_under_load` rewrites the served config file 50 times (valid changes alternating with
broken edits; direct writes, split writes and rename-saves) while non-streaming request loops and
long slow streams run through the gateway, then checks every response against the timeline of
live versions. What it proves, and how:

* The server publishes a table with one assignment and takes `loaded_at = time.time()` right
  after it with no `await` in between, so no request handler runs between the two: `loaded_at` of
  a version (read from GET /admin/config) is, for requests, the instant it went live. A handler
  reads the live table at some instant inside [request sent, response headers received] (client
  wall clock, the same clock). So a response tagged version k is correct iff
  ``loaded_at[k] <= headers_at`` and ``sent_at < loaded_at[k + 1]``: k was live at its start, or
  a swap landed while it was being set up and k is the next version. Both sides are checked.
* Each version's content (route target, forced upstream header, mock reply) is checked against
  the response body and against what the upstream received for that request id: a request did
  all its work on the table whose version it carries, streams included.
* Each edit is waited for until its final bytes are the server's state: a valid edit until
  GET /admin/config serves its (predicted) version, a broken one until `last_reload` holds its
  (predicted) diagnostics. The reload counters' deltas then are exact: a valid edit is one success,
  a broken one at least one rejection; extra rejections are intermediate states (a file observed
  truncated or half-written) and only direct writes may have them, never a rename-save.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from compiler import compile_texts
from runtime.app import Gateway
from runtime.reload import Reloader
from runtime.snapshot import prepare_snapshot
from tests.process import (
    ADMIN,
    ADMIN_HASH,
    UPSTREAM_KEY_ENV,
    Interlock,
    admin_config,
    metric,
)
from tests.upstreams import MockUpstream, SlowStream, Status


def chat(model: str, text: str = "hi", *, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


# ---------------------------------------------------------------------------------------------
# The config under edit.


@dataclass(frozen=True)
class State:
    """What a valid config says; every valid edit changes exactly one field (and `serial`)."""

    serial: int
    route_model: str  # the route `r-http` serves chat-a or chat-b
    tag: str  # the value the header policy forces on upstream requests
    reply: str  # the mock upstream's reply
    read_s: int  # the slow upstream's read timeout: a change gives it a new connection pool

    @property
    def target(self) -> str:
        return {"chat-a": "a-model", "chat-b": "b-model"}[self.route_model]


STREAM_EVENTS = 40
STREAM_INTERVAL_S = 0.1  # streams last 4 s


def render(state: State, fast: str, slow: str, broken: str | None = None) -> str:
    """The config text. `version: 1` is last, without a newline, so a file read half-written is
    never a valid config (it always lacks `version`); `broken` is yaml | upstream | regex."""
    regex = '\n      headers: {x-never: {regex: "([a-"}}' if broken == "regex" else ""
    bad_upstream = "fastt" if broken == "upstream" else "fast"
    chunks = "4: 5" if broken == "yaml" else "4"
    return f"""# edit {state.serial}
server:
  drain_timeout_s: 10
upstreams:
  fast:
    kind: openai
    base_url: {fast}/v1
    api_key: {{env: {UPSTREAM_KEY_ENV}}}
    headers: [tag]
  slow:
    kind: openai
    base_url: {slow}/v1
    api_key: {{env: {UPSTREAM_KEY_ENV}}}
    timeouts: {{read_s: {state.read_s}}}
    headers: [tag]
  demo:
    kind: mock
    mock:
      reply: "{state.reply}"
      stream_chunks: {chunks}
models:
  chat-a:
    targets: [{{upstream: {bad_upstream}, model: a-model}}]
  chat-b:
    targets: [{{upstream: fast, model: b-model}}]
  chat-slow:
    targets: [{{upstream: slow, model: slow-model}}]
  chat-mock:
    targets: [{{upstream: demo, model: mock-model}}]
routes:
  - name: r-http
    match:
      model: http{regex}
    action: {{model: {state.route_model}}}
  - name: r-slow
    match: {{model: slow}}
    action: {{model: chat-slow}}
  - name: r-mock
    match: {{model: mock}}
    action: {{model: chat-mock}}
policies:
  headers:
    tag:
      request:
        force: {{x-edit: "{state.tag}"}}
admin:
  enabled: true
  key_hash: "{ADMIN_HASH}"
version: 1"""


def expected_version(path: Path, text: str) -> str:
    result = compile_texts([(str(path), text)])
    assert result.table is not None, [str(d.span) + " " + d.message for d in result.errors]
    return result.table.version


def expected_errors(path: Path, text: str) -> list[tuple[str, str, int, int]]:
    result = compile_texts([(str(path), text)])
    assert result.table is None
    return [(d.code, d.span.file, d.span.line, d.span.col) for d in result.errors]


def write_file(path: Path, text: str, mode: str, split_at: int) -> None:
    """Save like an editor: `direct` (truncate + write), `split` (truncate, write the first
    `split_at` characters, pause past the watch debounce, write the rest) or `rename` (write a
    temporary file in the same directory, then `os.replace` it over the config)."""
    if mode == "rename":
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temp, path)
        return
    with path.open("w", encoding="utf-8") as out:
        if mode == "split":
            out.write(text[:split_at])
            out.flush()
            time.sleep(0.1)  # NOTE: longer than the 50 ms debounce step: the half is reloaded
            text = text[split_at:]
        out.write(text)


def split_point(text: str, before: str | None = None) -> int:
    """A line boundary near the middle of `text`, and before where it differs from `before`
    (a broken edit's half never holds its mistake)."""
    middle = text.rfind("\n", 0, len(text) // 2) + 1
    if before is None:
        return middle
    differs = next(i for i, (a, b) in enumerate(zip(text, before, strict=False)) if a != b)
    return min(middle, text.rfind("\n", 0, differs) + 1)


# ---------------------------------------------------------------------------------------------
# Load: what each request saw.


@dataclass
class Seen:
    kind: str  # http | mock | stream
    request_id: str
    sent_at: float  # wall clock, before the request is sent
    headers_at: float = 0.0  # wall clock, response headers received
    ended_at: float = 0.0
    status: int = 0
    version: str = ""
    model_header: str = ""
    text: str = ""
    events: list[str] = field(default_factory=list)
    error: str = ""


async def request_loop(
    client: httpx.AsyncClient, kind: str, stop: asyncio.Event, seen: list[Seen]
) -> None:
    while not stop.is_set():
        rid = uuid.uuid4().hex
        body = chat(
            kind if kind != "stream" else "slow", f"ping {rid[:6]}", stream=kind == "stream"
        )
        entry = Seen(kind, rid, time.time())
        seen.append(entry)
        try:
            async with client.stream(
                "POST", "/v1/chat/completions", json=body, headers={"x-request-id": rid}
            ) as response:
                entry.headers_at = time.time()
                entry.status = response.status_code
                entry.version = response.headers.get("x-interlock-config-version", "")
                entry.model_header = response.headers.get("x-interlock-model", "")
                if kind == "stream":
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            entry.events.append(line[6:])
                    deltas = [
                        json.loads(e)["choices"][0]["delta"].get("content") or ""
                        for e in entry.events
                        if e != "[DONE]"
                    ]
                    entry.text = "".join(deltas)
                else:
                    data = json.loads(await response.aread())
                    entry.text = data["choices"][0]["message"]["content"]
        except Exception as exc:  # counted as a failed request
            entry.error = f"{type(exc).__name__}: {exc}"
        entry.ended_at = time.time()
        await asyncio.sleep(0.005 if kind != "stream" else 0)


# ---------------------------------------------------------------------------------------------
# The proof.


@dataclass
class Live:
    """One published version: its state, and when it went live (server wall clock)."""

    version: str
    state: State
    loaded_at: float


@dataclass
class EditOutcome:
    index: int
    valid: bool
    mode: str
    visible_s: float  # write finished -> the server's state is this edit's final bytes
    transient_rejections: int


VALID_KINDS = ("route", "tag", "reply")
BROKEN_KINDS = ("yaml", "upstream", "regex")
MODES = ("direct", "split", "rename")
EDITS = 50


def next_state(state: State, kind: str, serial: int) -> State:
    if kind == "route":
        return replace(
            state,
            serial=serial,
            read_s=121 - state.read_s,
            route_model="chat-b" if state.route_model == "chat-a" else "chat-a",
        )
    if kind == "tag":
        return replace(state, serial=serial, tag=f"tag-{serial}")
    return replace(state, serial=serial, reply=f"reply number {serial}")


def test_reload_under_load(
    tmp_path: Path,
    interlock: Callable[..., Interlock],
    make_upstream: Callable[..., MockUpstream],
) -> None:
    fast, slow = make_upstream(), make_upstream()
    slow.script(
        "/v1/chat/completions", *[SlowStream(STREAM_EVENTS, STREAM_INTERVAL_S) for _ in range(200)]
    )
    config = tmp_path / "config.yaml"
    state = State(0, "chat-a", "tag-0", "reply number 0", 60)
    config.write_text(render(state, fast.url, slow.url), encoding="utf-8")
    server = interlock(config)
    first = admin_config(server.url)
    timeline = [Live(first["version"], state, first["loaded_at"])]
    assert first["version"] == expected_version(config, config.read_text(encoding="utf-8"))

    seen: list[Seen] = []
    outcomes: list[EditOutcome] = []

    async def edits() -> None:
        nonlocal state
        async with httpx.AsyncClient(base_url=server.url, headers=ADMIN, timeout=5) as admin:
            before = (await admin.get("/admin/config")).json()
            await asyncio.sleep(1.0)  # the streams are under way before the first edit
            for index in range(EDITS):
                valid, mode = index % 2 == 0, MODES[index % len(MODES)]
                if valid:
                    new = next_state(state, VALID_KINDS[index // 2 % 3], index + 1)
                    text = render(new, fast.url, slow.url)
                    split = split_point(text)
                else:
                    new = state
                    text = render(state, fast.url, slow.url, BROKEN_KINDS[index // 2 % 3])
                    split = split_point(text, render(state, fast.url, slow.url))
                await asyncio.to_thread(write_file, config, text, mode, split)
                written = time.monotonic()
                after = await settle(admin, text, valid, written)
                visible_s = time.monotonic() - written
                counts, previous = after["reloads"], before["reloads"]
                rejected = counts["rejections"] - previous["rejections"]
                assert counts["successes"] - previous["successes"] == (1 if valid else 0), index
                assert counts["attempts"] - previous["attempts"] == rejected + valid, index
                transient = rejected - (0 if valid else 1)
                assert transient >= 0, index
                if mode == "rename":  # NOTE: an atomic save is never seen half-written
                    assert transient == 0, (index, after["last_reload"])
                if valid:
                    assert after["version"] not in {live.version for live in timeline}
                    timeline.append(Live(after["version"], new, after["loaded_at"]))
                    state = new
                else:
                    assert after["version"] == timeline[-1].version  # the old one keeps serving
                    assert after["loaded_at"] == timeline[-1].loaded_at
                metrics = (await admin.get("/metrics")).text
                assert metric(metrics, "interlock_reload_success_total") == counts["successes"]
                assert metric(metrics, "interlock_reload_rejected_total") == counts["rejections"]
                assert metric(metrics, "interlock_reload_attempts_total") == counts["attempts"]
                assert f'interlock_config_info{{version="{after["version"]}"}} 1.0' in metrics
                outcomes.append(EditOutcome(index, valid, mode, visible_s, transient))
                before = after
                await asyncio.sleep(0.1)  # let every loop see this version

    async def settle(
        admin: httpx.AsyncClient, text: str, valid: bool, written: float
    ) -> dict[str, Any]:
        """Poll GET /admin/config until the server's state is this edit's final bytes."""
        want_version = expected_version(config, text) if valid else None
        want_errors = None if valid else expected_errors(config, text)
        while True:
            data: dict[str, Any] = (await admin.get("/admin/config")).json()
            last = data["last_reload"] or {}
            if valid and data["version"] == want_version:
                assert last["ok"] and last["version"] == want_version and last["changes"]
                return data
            if not valid and last.get("ok") is False:
                got = [
                    (d["code"], d["file"], d["line"], d["col"])
                    for d in last["diagnostics"]
                    if d["severity"] == "error"
                ]
                if got == want_errors:
                    return data
            assert time.monotonic() - written < 2.0, (
                f"edit not live within 2 s: want {want_version or want_errors}, have {data}"
            )
            await asyncio.sleep(0.01)

    async def run() -> None:
        stop = asyncio.Event()
        limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            loops = [
                request_loop(client, kind, stop, seen)
                for kind in ("http", "http", "mock", "mock", "stream", "stream", "stream")
            ]
            tasks = [asyncio.ensure_future(loop) for loop in loops]
            try:
                await edits()
            finally:
                stop.set()
                await asyncio.gather(*tasks)

    started = time.monotonic()
    asyncio.run(run())
    duration = time.monotonic() - started

    # -- no failed request, no cut stream ------------------------------------------------------
    failed = [s for s in seen if s.error or s.status != 200]
    assert not failed, failed[:5]
    streams = [s for s in seen if s.kind == "stream"]
    ticks = "".join(f"tick{i} " for i in range(STREAM_EVENTS))
    for stream in streams:
        assert stream.events[-1] == "[DONE]", stream
        assert stream.text == ticks, stream

    # -- every response carries a version that was live when it started ------------------------
    index_of = {live.version[:12]: i for i, live in enumerate(timeline)}
    swapped_in_setup = 0
    spanned_swaps = []
    for entry in seen:
        assert entry.version in index_of, entry
        k = index_of[entry.version]
        went_live = timeline[k].loaded_at
        superseded = timeline[k + 1].loaded_at if k + 1 < len(timeline) else float("inf")
        assert went_live <= entry.headers_at, ("served a version not yet live", entry)
        assert entry.sent_at < superseded, ("served a version already replaced", entry)
        swapped_in_setup += went_live > entry.sent_at
        spanned_swaps.append(
            sum(entry.headers_at < live.loaded_at < entry.ended_at for live in timeline)
        )

    # -- ... and did all its work on that version's table --------------------------------------
    # NOTE: first value: the gateway sends x-request-id twice through a passthrough header
    # policy (test_request_id_reaches_upstream_once)
    upstream_saw = {
        r.headers.get("x-request-id", "").split(",")[0]: r for r in fast.requests + slow.requests
    }
    for entry in seen:
        config_of = timeline[index_of[entry.version]].state
        if entry.kind == "mock":
            assert entry.text == config_of.reply, entry
            continue
        record = upstream_saw[entry.request_id]
        assert record.headers.get("x-edit") == config_of.tag, (entry, dict(record.headers))
        if entry.kind == "http":
            assert entry.model_header == config_of.target == record.body["model"], entry
            assert entry.text.startswith("echo: ping"), entry
    assert len(upstream_saw) == sum(s.kind != "mock" for s in seen)

    # -- the reload log says what changed and which version is live ----------------------------
    log = server.log
    for live in timeline[1:]:
        assert re.search(
            rf"reload \((watch|poll)\) ok: version {live.version[:12]} changes "
            r"\S",
            log,
        ), live.version
    rejected_lines = re.findall(r"REJECTED; still serving version (\w+)", log)
    assert len(rejected_lines) == sum(not o.valid for o in outcomes) + sum(
        o.transient_rejections for o in outcomes
    )
    for code in ("yaml.syntax", "ref.unknown_upstream", "regex.invalid"):
        assert re.search(rf"^{re.escape(str(config))}:\d+:\d+: error {code}:", log, re.M), code

    # -- what was exercised ---------------------------------------------------------------------
    visible = sorted(o.visible_s for o in outcomes)
    long_streams = [s for s in streams if s.ended_at - s.headers_at >= 3.5]
    summary: dict[str, Any] = {
        "seconds": round(duration, 1),
        "requests": len(seen),
        "streams": len(streams),
        "streams_across_swaps": sum(
            1 for s, n in zip(seen, spanned_swaps, strict=True) if s.kind == "stream" and n
        ),
        "max_swaps_during_one_stream": max(spanned_swaps),
        "versions": len(timeline),
        "rejected_edits": sum(not o.valid for o in outcomes),
        "transient_rejections": {
            m: sum(o.transient_rejections for o in outcomes if o.mode == m) for m in MODES
        },
        "requests_swapped_during_setup": swapped_in_setup,
        "edit_visible_p50_ms": round(visible[len(visible) // 2] * 1000),
        "edit_visible_max_ms": round(visible[-1] * 1000),
    }
    print("\nreload under load:", json.dumps(summary))
    assert len(timeline) == EDITS // 2 + 1
    assert len(long_streams) >= 6 and summary["streams_across_swaps"] >= 6, summary
    assert sum(s.kind == "http" for s in seen) >= 200 and sum(s.kind == "mock" for s in seen) >= 200
    # NOTE: split writes pause past the debounce, so their half is (almost always) reloaded
    assert summary["transient_rejections"]["split"] >= 1, summary


# ---------------------------------------------------------------------------------------------
# In-process: what a swap keeps.


BREAKER_CONFIG = """version: 1
upstreams:
  keep:
    kind: openai
    base_url: {url}/v1
    api_key: {{env: {env}}}
    circuit_breaker: {{failure_threshold: 2, cooldown_s: {cooldown}}}
  change:
    kind: openai
    base_url: {url}/v1
    api_key: {{env: {env}}}
    timeouts: {{read_s: {read_s}}}
  demo:
    kind: mock
    mock: {{reply: "{reply}"}}
models:
  kept: {{targets: [{{upstream: keep, model: k}}]}}
  changed: {{targets: [{{upstream: change, model: c}}]}}
  mock: {{targets: [{{upstream: demo}}]}}
"""


def test_swap_keeps_unchanged_pools_and_breakers(
    tmp_path: Path, make_upstream: Callable[..., MockUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload reuses the connection pool of an upstream whose connection settings did not
    change, closes the replaced one, and keeps a breaker whose definition did not change
    (open stays open); a changed breaker definition starts closed."""
    monkeypatch.setenv(UPSTREAM_KEY_ENV, "sk-test")
    upstream = make_upstream()
    config = tmp_path / "config.yaml"

    def write(**values: Any) -> None:
        settings = {
            "url": upstream.url,
            "env": UPSTREAM_KEY_ENV,
            "cooldown": 60,
            "read_s": 59,
            "reply": "one",
            **values,
        }
        config.write_text(BREAKER_CONFIG.format(**settings), encoding="utf-8")

    async def scenario() -> None:
        from runtime.app import create_app

        write()
        result = compile_texts([(str(config), config.read_text(encoding="utf-8"))])
        assert result.table is not None
        gateway = Gateway(prepare_snapshot(result.table))
        reloader = Reloader(gateway, config, loaded=result)
        transport = httpx.ASGITransport(app=create_app(gateway))
        pool = gateway.state.pool

        def client_of(name: str) -> aiohttp.ClientSession:
            return pool.session_for(gateway.snapshot.table.upstreams[name])[1]

        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:

            async def ask(model: str) -> httpx.Response:
                return await client.post(
                    "/v1/chat/completions",
                    json=chat(model),
                    headers={"x-request-id": uuid.uuid4().hex},
                )

            assert (await ask("changed")).status_code == 200
            upstream.script("/v1/chat/completions", Status(500), Status(500))
            assert [(await ask("kept")).status_code for _ in range(2)] == [502, 502]
            refused = await ask("kept")  # the breaker is open: the upstream is not called
            assert refused.status_code == 503, refused.text
            calls = len(upstream.requests)
            kept_client, changed_client = client_of("keep"), client_of("change")

            write(read_s=61, reply="two")  # `change` gets a new pool; `keep` is untouched
            outcome = await reloader.reload("test")
            assert outcome.ok and outcome.changes["upstreams"] == {"changed": ["change", "demo"]}
            assert client_of("keep") is kept_client  # the same pool, its connections kept
            assert client_of("change") is not changed_client
            await asyncio.sleep(0)  # the retired client closes in a task
            await asyncio.sleep(0.01)
            assert changed_client.closed and not kept_client.closed
            assert (await ask("kept")).status_code == 503  # still open after the swap
            assert len(upstream.requests) == calls
            assert (await ask("changed")).status_code == 200
            assert (await ask("mock")).json()["choices"][0]["message"]["content"] == "two"

            write(read_s=61, reply="two", cooldown=30)  # the breaker's definition changed
            assert (await reloader.reload("test")).ok
            assert client_of("keep") is kept_client  # a breaker is not a connection setting
            assert (await ask("kept")).status_code == 200  # a fresh, closed breaker
        await pool.aclose()

    asyncio.run(scenario())


def test_request_id_reaches_upstream_once(
    upstream_reset: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.app import create_app

    monkeypatch.setenv(UPSTREAM_KEY_ENV, "sk-test")
    result = compile_texts(
        [
            (
                "config.yaml",
                f"""version: 1
upstreams:
  up:
    kind: openai
    base_url: {upstream_reset.url}/v1
    api_key: {{env: {UPSTREAM_KEY_ENV}}}
    headers: [tag]
models:
  m: {{targets: [{{upstream: up}}]}}
policies:
  headers:
    tag: {{request: {{force: {{x-edit: one}}}}}}
""",
            )
        ]
    )
    assert result.table is not None

    async def call() -> int:
        gateway = Gateway(prepare_snapshot(result.table))  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            response = await client.post(
                "/v1/chat/completions", json=chat("m"), headers={"x-request-id": "rid-1"}
            )
        await gateway.state.pool.aclose()
        return response.status_code

    assert asyncio.run(call()) == 200
    assert upstream_reset.last_request().headers["x-request-id"] == "rid-1"


def test_reloader_keeps_the_digest_of_the_bytes_it_compiled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save that lands between a compile and the hashing of the file is still loaded, and a
    reload never compiles the same bytes twice."""
    import runtime.reload as reload_module
    from compiler import compile_config

    config = tmp_path / "config.yaml"

    def text(reply: str) -> str:
        return (
            f'version: 1\nupstreams:\n  demo: {{kind: mock, mock: {{reply: "{reply}"}}}}\n'
            "models:\n  m: {targets: [{upstream: demo}]}\n"
        )

    async def scenario() -> None:
        config.write_text(text("one"), encoding="utf-8")
        result = compile_config(config)  # the server compiles at startup ...
        assert result.table is not None
        config.write_text(text("two"), encoding="utf-8")  # ... a save lands ...
        gateway = Gateway(prepare_snapshot(result.table))
        reloader = Reloader(gateway, config, loaded=result)  # ... then it starts watching
        first = await reloader.reload("poll")
        assert first.ok and not first.skipped
        assert first.version == expected_version(config, text("two"))

        real = reload_module.source_digest

        def racing(path: Path) -> str | None:  # a save right after the reloader looked
            digest = real(path)
            config.write_text(text("four"), encoding="utf-8")
            return digest

        config.write_text(text("three"), encoding="utf-8")
        monkeypatch.setattr(reload_module, "source_digest", racing)
        second = await reloader.reload("watch")
        monkeypatch.setattr(reload_module, "source_digest", real)
        assert second.ok and second.version == expected_version(config, text("four"))
        third = await reloader.reload("poll")
        assert third.skipped  # "four" is what was compiled: nothing left to do
        assert (reloader.attempts, reloader.successes) == (2, 2)
        await gateway.state.pool.aclose()

    asyncio.run(scenario())
