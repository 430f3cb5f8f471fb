"""`interlock serve` as a process: startup refusals, reload triggers (SIGHUP, POST /admin/reload,
file changes in a directory config or behind a Kubernetes `..data` symlink), admin and metrics,
graceful shutdown on SIGTERM/SIGINT, and `--workers`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.process import (
    ADMIN,
    ADMIN_HASH,
    REPO,
    UPSTREAM_KEY_ENV,
    Interlock,
    admin_config,
    free_port,
    metric,
)
from tests.test_reload import chat
from tests.upstreams import MockUpstream, SlowStream

ADMIN_SECTION = f"""admin:
  enabled: true
  key_hash: "{ADMIN_HASH}"
"""


def mock_config(reply: str = "one", *, drain_s: float = 10, extra: str = "") -> str:
    """A mock-only config: model `chat` answers `reply`; `stream` streams 20 chunks 100 ms apart;
    `wait` answers after 1.5 s."""
    return f"""version: 1
server:
  drain_timeout_s: {drain_s}
upstreams:
  demo:
    kind: mock
    mock: {{reply: "{reply}"}}
  slowchunks:
    kind: mock
    mock: {{reply: "{"word " * 20}", stream_chunks: 20, chunk_delay_ms: 100}}
  slowreply:
    kind: mock
    mock: {{reply: "late", latency_ms: 1500}}
models:
  chat: {{targets: [{{upstream: demo}}]}}
  stream: {{targets: [{{upstream: slowchunks}}]}}
  wait: {{targets: [{{upstream: slowreply}}]}}
{extra}{ADMIN_SECTION}"""


def position(text: str, needle: str) -> tuple[int, int]:
    """1-based (line, column) of the first `needle` in `text`."""
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number, line.index(needle) + 1
    raise AssertionError(f"{needle!r} not in the text")


def run_serve(config: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `interlock serve` to its exit; (exit code, stderr)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "serve",
            str(config),
            "--bind",
            f"127.0.0.1:{free_port()}",
            *args,
        ],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stderr


@pytest.fixture
def fresh() -> Iterator[httpx.Client]:
    """A client without keep-alive: every request opens a new connection (so with several
    workers, any of them may answer)."""
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=5) as client:
        yield client


def version_of(client: httpx.Client, url: str, model: str = "chat") -> str:
    """The config version that answers a request on a new connection."""
    response = client.post(url + "/v1/chat/completions", json=chat(model))
    assert response.status_code == 200, response.text
    return response.headers["x-interlock-config-version"]


def fresh_admin_config(client: httpx.Client, url: str) -> dict[str, Any]:
    """GET /admin/config on a new connection."""
    response = client.get(url + "/admin/config", headers=ADMIN)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `check` until it holds; returns the seconds it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"not within {timeout} s: {what}"
        time.sleep(0.01)
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# Startup refusals.


@pytest.mark.parametrize("workers", [1, 2])
def test_invalid_config_at_startup_exits_1_with_located_diagnostics(
    tmp_path: Path, workers: int
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(mock_config().replace("upstream: demo", "upstream: dmeo"), encoding="utf-8")
    code, stderr = run_serve(config, "--workers", str(workers))
    assert code == 1, stderr
    line, col = position(config.read_text(), "dmeo")
    assert re.search(
        rf"^{re.escape(str(config))}:{line}:{col}: error ref.unknown_upstream: "
        r"unknown upstream 'dmeo'",
        stderr,
        re.M,
    ), stderr
    assert "did you mean 'demo'?" in stderr
    assert f"interlock: {config} is invalid; not starting" in stderr


def test_unset_secret_or_variable_at_startup_exits_1(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "INTERLOCK_TEST_UNSET"}
    secret = tmp_path / "secret.yaml"
    secret.write_text(
        """version: 1
upstreams:
  openai:
    kind: openai
    base_url: https://api.openai.com/v1
    api_key: {env: INTERLOCK_TEST_UNSET}
models:
  m: {targets: [{upstream: openai}]}
""",
        encoding="utf-8",
    )
    code, stderr = run_serve(secret, env=env)
    assert code == 1, stderr
    assert (
        f"interlock: cannot serve {secret}: upstream 'openai' api_key: environment variable "
        "INTERLOCK_TEST_UNSET is not set"
    ) in stderr, stderr

    substituted = tmp_path / "substituted.yaml"
    substituted.write_text(mock_config(reply="${INTERLOCK_TEST_UNSET}"), encoding="utf-8")
    code, stderr = run_serve(substituted, env=env)
    assert code == 1, stderr
    line, col = position(substituted.read_text(), "${")
    assert re.search(
        rf"^{re.escape(str(substituted))}:{line}:{col}: error env.unset: ", stderr, re.M
    ), stderr


# ---------------------------------------------------------------------------------------------
# Reload triggers, admin API and metrics.


def test_sighup_admin_reload_config_and_metrics(
    tmp_path: Path, interlock: Callable[..., Interlock], fresh: httpx.Client
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(mock_config("one"), encoding="utf-8")
    server = interlock(config, args=("--no-watch",))
    url = server.url

    # -- GET /admin/config: its shape, and the admin key guards it -------------------------------
    state = admin_config(url)
    assert set(state) == {
        "version",
        "short_version",
        "loaded_at",
        "sources",
        "reloads",
        "last_reload",
    }
    v0 = state["version"]
    assert re.fullmatch(r"[0-9a-f]{64}", v0) and state["short_version"] == v0[:12]
    assert state["sources"] == [str(config)]
    assert state["reloads"] == {"attempts": 0, "successes": 0, "rejections": 0}
    assert state["last_reload"] is None
    assert abs(state["loaded_at"] - time.time()) < 60
    assert version_of(fresh, url) == v0[:12]
    for method, path in (("GET", "/admin/config"), ("POST", "/admin/reload")):
        for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
            refused = httpx.request(method, url + path, headers=headers)
            assert refused.status_code == 401, (method, path, headers)
            assert refused.json()["error"]["code"] == "invalid_api_key"
    assert (
        httpx.get(
            url + "/admin/config", headers={"x-api-key": ADMIN["authorization"][7:]}
        ).status_code
        == 200
    )

    # -- /metrics: counters at 0 and the live version --------------------------------------------
    def metrics() -> str:
        return httpx.get(url + "/metrics").text

    text = metrics()
    for name in ("attempts", "success", "rejected"):
        assert metric(text, f"interlock_reload_{name}_total") == 0
    assert metric(text, f'interlock_config_info{{version="{v0}"}}') == 1

    # -- POST /admin/reload with unchanged bytes: nothing to do, nothing counted ----------------
    skipped = httpx.post(url + "/admin/reload", headers=ADMIN)
    assert skipped.status_code == 200
    assert skipped.json() | {"at": 0} == {
        "trigger": "admin",
        "ok": True,
        "skipped": True,
        "at": 0,
        "version": v0,
        "error": None,
        "changes": {},
        "diagnostics": [],
    }
    assert metric(metrics(), "interlock_reload_attempts_total") == 0

    # -- SIGHUP reloads a changed file (the server does not watch) -------------------------------
    config.write_text(mock_config("two"), encoding="utf-8")
    mark = len(server.log)
    server.signal(signal.SIGHUP)
    found = server.wait_log(
        r"^interlock: reload \(sighup\) ok: version (\w+) changes (.+)$", start=mark
    )
    state = admin_config(url)
    v1 = state["version"]
    assert found.group(1) == v1[:12] != v0[:12]
    assert "upstreams changed: demo" in found.group(2)
    assert state["reloads"] == {"attempts": 1, "successes": 1, "rejections": 0}
    assert state["last_reload"]["trigger"] == "sighup" and state["last_reload"]["ok"]
    assert state["last_reload"]["changes"]["upstreams"] == {"changed": ["demo"]}
    assert version_of(fresh, url) == v1[:12]
    text = metrics()
    assert metric(text, "interlock_reload_success_total") == 1
    assert metric(text, f'interlock_config_info{{version="{v1}"}}') == 1
    assert f'version="{v0}"' not in text

    # -- POST /admin/reload with a broken file: 422, located diagnostics, the old table serves --
    broken = mock_config("two").replace("upstream: demo", "upstream: dmeo")
    config.write_text(broken, encoding="utf-8")
    where = position(broken, "dmeo")
    rejected = httpx.post(url + "/admin/reload", headers=ADMIN)
    assert rejected.status_code == 422
    body = rejected.json()
    assert body["ok"] is False and body["version"] == v1 and body["trigger"] == "admin"
    (diagnostic,) = body["diagnostics"]
    assert diagnostic["code"] == "ref.unknown_upstream" and diagnostic["file"] == str(config)
    assert (diagnostic["line"], diagnostic["col"]) == where
    assert admin_config(url)["last_reload"] == body
    assert version_of(fresh, url) == v1[:12]
    server.wait_log(
        rf"REJECTED; still serving version {v1[:12]}\n"
        rf"{re.escape(str(config))}:{where[0]}:{where[1]}: error ref.unknown_upstream",
        start=mark,
    )
    text = metrics()
    assert metric(text, "interlock_reload_rejected_total") == 1
    assert metric(text, "interlock_reload_attempts_total") == 2

    # -- the same broken bytes are not compiled again -------------------------------------------
    again = httpx.post(url + "/admin/reload", headers=ADMIN).json()
    assert again["skipped"] and again["version"] == v1
    assert admin_config(url)["reloads"] == {"attempts": 2, "successes": 1, "rejections": 1}

    # -- a reload can turn the admin API off -----------------------------------------------------
    config.write_text(
        mock_config("three").replace("enabled: true", "enabled: false"), encoding="utf-8"
    )
    assert httpx.post(url + "/admin/reload", headers=ADMIN).status_code == 200
    assert httpx.get(url + "/admin/config", headers=ADMIN).status_code == 404
    assert metric(metrics(), "interlock_reload_success_total") == 2


def test_directory_config_reloads_when_one_file_changes(
    tmp_path: Path, interlock: Callable[..., Interlock], fresh: httpx.Client
) -> None:
    directory = tmp_path / "conf.d"
    directory.mkdir()
    base, routes = directory / "10-base.yaml", directory / "20-routes.yaml"
    base.write_text(mock_config("base"), encoding="utf-8")
    route = "version: 1\nroutes:\n  - name: all\n    match: {{}}\n    action: {{model: {}}}\n"
    routes.write_text(route.format("chat"), encoding="utf-8")
    server = interlock(directory)
    state = admin_config(server.url)
    assert state["sources"] == [str(base), str(routes)]
    before = state["version"][:12]
    assert version_of(fresh, server.url, "anything") == before

    routes.write_text(route.format("wait"), encoding="utf-8")  # the route now serves `wait`
    wait_until(lambda: admin_config(server.url)["version"][:12] != before, 2.0, "reload")
    state = admin_config(server.url)
    assert state["last_reload"]["changes"] == {"routes": {"changed": ["all"]}}
    response = httpx.post(server.url + "/v1/chat/completions", json=chat("anything"), timeout=5)
    assert response.json()["choices"][0]["message"]["content"] == "late"

    (directory / "README.txt").write_text("not config", encoding="utf-8")  # not a config file
    extra = directory / "30-more.yaml"  # a new file joins the config
    extra.write_text(
        "version: 1\nmodels:\n  more: {targets: [{upstream: demo}]}\n", encoding="utf-8"
    )
    wait_until(
        lambda: admin_config(server.url)["sources"] == [str(base), str(routes), str(extra)],
        2.0,
        "new file loaded",
    )
    assert admin_config(server.url)["last_reload"]["changes"] == {"models": {"added": ["more"]}}
    assert "reload (watch) ok" in server.log or "reload (poll) ok" in server.log

    extra.write_text(
        "version: 1\nmodels:\n  chat: {targets: [{upstream: demo}]}\n", encoding="utf-8"
    )  # `chat` is already defined in 10-base.yaml
    wait_until(lambda: admin_config(server.url)["last_reload"]["ok"] is False, 2.0, "rejection")
    diagnostics = admin_config(server.url)["last_reload"]["diagnostics"]
    assert [(d["code"], d["file"], d["line"]) for d in diagnostics] == [
        ("name.duplicate", str(extra), 3)
    ]


def test_kubernetes_configmap_symlink_swap_reloads(
    tmp_path: Path, interlock: Callable[..., Interlock]
) -> None:
    """A ConfigMap volume: ``config.yaml -> ..data/config.yaml``, ``..data -> ..<timestamp>``;
    an update writes a new timestamped directory and renames a new ``..data`` link over the old
    one (the file itself is never written)."""
    mount = tmp_path / "configmap"
    (mount / "..2026_01_01_00_00_00.1").mkdir(parents=True)
    (mount / "..2026_01_01_00_00_00.1" / "config.yaml").write_text(mock_config("first"))
    (mount / "..data").symlink_to("..2026_01_01_00_00_00.1")
    (mount / "config.yaml").symlink_to("..data/config.yaml")
    server = interlock(mount / "config.yaml")
    before = admin_config(server.url)["version"]

    fresh = mount / "..2026_01_01_00_01_00.2"
    fresh.mkdir()
    (fresh / "config.yaml").write_text(mock_config("second"))
    (mount / "..data_tmp").symlink_to(fresh.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    shutil.rmtree(mount / "..2026_01_01_00_00_00.1")
    took = wait_until(lambda: admin_config(server.url)["version"] != before, 2.0, "swap seen")
    response = httpx.post(server.url + "/v1/chat/completions", json=chat("chat"), timeout=5)
    assert response.json()["choices"][0]["message"]["content"] == "second"
    assert admin_config(server.url)["last_reload"]["ok"]
    print(f"\nconfigmap swap live after {took * 1000:.0f} ms")


# ---------------------------------------------------------------------------------------------
# Graceful shutdown.


@dataclass
class StreamRead:
    events: list[str] = field(default_factory=list)
    first_event: threading.Event = field(default_factory=threading.Event)
    ended_at: float = 0.0
    error: str = ""
    version: str = ""


def read_stream(url: str, model: str, out: StreamRead) -> None:
    try:
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json=chat(model, stream=True), timeout=30
        ) as response:
            out.version = response.headers.get("x-interlock-config-version", "")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    out.events.append(line[6:])
                    out.first_event.set()
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        out.ended_at = time.monotonic()
        out.first_event.set()


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True


def test_sigterm_drains_in_flight_requests_and_streams_then_exits_0(
    tmp_path: Path, interlock: Callable[..., Interlock]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(mock_config(drain_s=10), encoding="utf-8")
    server = interlock(config)
    stream = StreamRead()
    reader = threading.Thread(target=read_stream, args=(server.url, "stream", stream))
    reader.start()
    answer: list[httpx.Response] = []
    waiter = threading.Thread(
        target=lambda: answer.append(
            httpx.post(server.url + "/v1/chat/completions", json=chat("wait"), timeout=30)
        )
    )
    waiter.start()
    try:
        assert stream.first_event.wait(10), stream
        wait_until(
            lambda: (
                metric(httpx.get(server.url + "/metrics").text, "interlock_in_flight_requests") == 2
            ),
            5,
            "both in flight",
        )
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        # new connections are refused while the stream is still being served
        wait_until(lambda: refused(server.port), 1.0, "listener closed")
        assert not stream.ended_at, "the stream ended before the listener closed"
    finally:
        reader.join(15)
        waiter.join(15)
    code = server.wait(10)
    exited = time.monotonic()
    assert code == 0, server.log
    assert not stream.error, stream
    assert stream.events[-1] == "[DONE]" and len(stream.events) == 20 + 2, stream.events
    text = "".join(
        json.loads(e)["choices"][0]["delta"].get("content") or "" for e in stream.events[:-1]
    )
    assert text == "word " * 20
    assert stream.ended_at - signalled > 1.0  # it really was drained, not finished already
    assert exited - stream.ended_at < 3.0  # and the process did not wait out drain_timeout_s
    (response,) = answer
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "late"
    log = server.log
    assert log.rstrip().endswith("interlock: stopped")
    statuses = [json.loads(line)["status"] for line in log.splitlines() if line.startswith("{")]
    assert statuses == [200, 200]  # the access log was flushed before exit


def test_sigint_with_a_stream_longer_than_the_grace_period_exits_after_it(
    tmp_path: Path,
    interlock: Callable[..., Interlock],
    make_upstream: Callable[..., MockUpstream],
) -> None:
    upstream = make_upstream()
    upstream.script("/v1/chat/completions", SlowStream(events=100, interval_s=0.1))  # 10 s
    config = tmp_path / "config.yaml"
    config.write_text(
        mock_config(
            drain_s=1,
            extra="""  long:
    targets: [{upstream: remote}]
""",
        ).replace(
            "upstreams:\n",
            f"""upstreams:
  remote:
    kind: openai
    base_url: {upstream.url}/v1
    api_key: {{env: {UPSTREAM_KEY_ENV}}}
""",
        ),
        encoding="utf-8",
    )
    server = interlock(config)
    stream = StreamRead()
    reader = threading.Thread(target=read_stream, args=(server.url, "long", stream))
    reader.start()
    try:
        assert stream.first_event.wait(10), stream
        signalled = time.monotonic()
        server.signal(signal.SIGINT)
        code = server.wait(1 + 4)
        took = time.monotonic() - signalled
    finally:
        reader.join(15)
    assert code == 0, server.log
    assert 0.9 < took < 1 + 2.5, took  # the grace period, and not much more
    assert "[DONE]" not in stream.events and len(stream.events) < 50  # cut at the deadline
    assert not stream.error, stream  # ended properly, with an error event (tests/test_shutdown.py)
    assert json.loads(stream.events[-1])["error"]["code"] == "shutting_down"
    assert upstream.wait_cancelled(1, timeout=5)  # the upstream connection was closed
    assert server.log.rstrip().endswith("interlock: stopped")
    assert "Traceback" not in server.log


# ---------------------------------------------------------------------------------------------
# --workers


def test_workers_all_serve_and_reload_to_the_same_version(
    tmp_path: Path, interlock: Callable[..., Interlock], fresh: httpx.Client
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(mock_config("one"), encoding="utf-8")
    server = interlock(config, args=("--workers", "2"))
    workers: set[float] = set()  # each worker's Reloader has its own `loaded_at`

    def both_seen() -> bool:
        workers.add(fresh_admin_config(fresh, server.url)["loaded_at"])
        return len(workers) >= 2

    wait_until(both_seen, 20, "two workers answering")
    assert len(workers) == 2
    before = admin_config(server.url)["version"]

    temp = tmp_path / ".config.yaml.tmp"  # a rename-save
    temp.write_text(mock_config("two"), encoding="utf-8")
    os.replace(temp, config)
    written = time.monotonic()
    streak: list[str] = []

    def all_new() -> bool:
        version = version_of(fresh, server.url)
        streak.append(version)
        return (
            len(streak) >= 20
            and len(set(streak[-20:]) - {before[:12]}) == 1
            and (before[:12] not in streak[-20:])
        )

    took = wait_until(all_new, 2.0, "all workers on the new version")
    new = streak[-1]
    assert new != before[:12]
    reloaded: dict[float, str] = {}

    def both_reloaded() -> bool:
        state = fresh_admin_config(fresh, server.url)
        assert state["version"][:12] == new
        reloaded[state["loaded_at"]] = state["last_reload"]["version"]
        return len(reloaded) >= 2

    wait_until(both_reloaded, 5, "both workers report the reload")
    print(
        f"\nboth workers on {new} {took * 1000:.0f} ms after the save"
        f" ({time.monotonic() - written:.2f} s incl. checks)"
    )
    assert server.stop() == 0
    assert refused(server.port)
    assert server.log.count("interlock: stopped") == 2
    assert len(re.findall(rf"reload \((watch|poll)\) ok: version {new}", server.log)) == 2
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler installed for `signum` (Linux /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
    return bool(mask >> (signum - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_sighup_while_workers_start_does_not_kill_them(
    tmp_path: Path, interlock: Callable[..., Interlock], fresh: httpx.Client
) -> None:
    """The supervisor forwards SIGHUP as soon as it has started its workers; a worker still
    importing must not die of it (SIGHUP's default action ends a process)."""
    config = tmp_path / "config.yaml"
    config.write_text(mock_config("one"), encoding="utf-8")
    server = interlock(config, args=("--workers", "2"), ready=False)
    wait_until(
        lambda: server.proc.poll() is not None or catches(server.proc.pid, signal.SIGHUP),
        20,
        "the supervisor forwards signals",
    )
    server.signal(signal.SIGHUP)  # the workers are still importing: not serving yet
    assert "serving" not in server.log
    server.wait_ready()
    workers: set[float] = set()

    def both_seen() -> bool:
        workers.add(fresh_admin_config(fresh, server.url)["loaded_at"])
        return len(workers) >= 2

    wait_until(both_seen, 20, "two workers answering")
    assert server.stop() == 0


def spawned_workers(parent: int) -> list[int]:
    """Pids of `parent`'s multiprocessing workers (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_sigterm_while_workers_start_stops_them_all_and_exits_0(
    tmp_path: Path, interlock: Callable[..., Interlock]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(mock_config("one"), encoding="utf-8")
    server = interlock(config, args=("--workers", "2"), ready=False)
    pid = server.proc.pid
    wait_until(
        lambda: (
            server.proc.poll() is not None
            or (catches(pid, signal.SIGTERM) and len(spawned_workers(pid)) == 2)
        ),
        20,
        "workers started",
    )
    workers = spawned_workers(pid)
    server.signal(signal.SIGTERM)  # the workers are still importing
    assert server.wait(15) == 0, server.log
    assert "serving" not in server.log
    assert not [p for p in workers if Path(f"/proc/{p}").exists()]
