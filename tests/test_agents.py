"""Coding agents as clients: the published Codex and Claude Code CLIs, end to end over loopback.

Each scenario serves an Interlock on loopback (in a thread), points one CLI at it and runs one
non-interactive prompt whose answer calls a tool: the agent runs the tool (a shell command that
writes ``tool-ran.txt``), sends its result back, and prints the final answer.

    codex exec ...   -> POST /v1/responses   (Responses API, streamed)
    claude -p ...    -> POST /v1/messages    (Anthropic Messages, streamed)

The CLIs are installed once with npm into ``$INTERLOCK_AGENTS_CACHE`` (default: the user's cache
dir, ``~/.cache/interlock-agents``) and reused. Without npm or the registry the module skips with
the reason; under ``CI=true`` it fails. Telemetry, update checks and other non-essential traffic
are off (see `_codex_config` and `_claude_env`); only loopback is used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.served import ServedGateway
from tests.upstreams import MockUpstream, Reply

CODEX_VERSION = "0.171.0"
CLAUDE_VERSION = "2.1.197"
MARKER = "interlock-tool-ok"
SHELL = f"echo {MARKER} > tool-ran.txt"
_INSTALL_TIMEOUT_S = 300
_RUN_TIMEOUT_S = 60


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def _unavailable(reason: str) -> None:
    if _under_ci():
        pytest.fail(f"the coding agents are required under CI: {reason}")
    pytest.skip(reason)


def _cache_dir() -> Path:
    explicit = os.environ.get("INTERLOCK_AGENTS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "interlock-agents"


def _npm_install(package: str, version: str, entry: str) -> Path:
    """``npm install package@version`` into its own cache folder (once); the entry's path."""
    prefix = _cache_dir() / f"{package.replace('/', '+')}@{version}"
    path = prefix / "node_modules" / package / entry
    if path.is_file():
        return path
    npm = shutil.which("npm")
    if npm is None:
        _unavailable("npm is not installed")
    prefix.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(prefix),
                f"{package}@{version}",
            ],
            capture_output=True,
            text=True,
            timeout=_INSTALL_TIMEOUT_S,
            env={**os.environ, "NPM_CONFIG_UPDATE_NOTIFIER": "false"},
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"npm install {package}@{version} timed out")
    if done.returncode != 0 or not path.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        _unavailable(f"npm install {package}@{version} failed: {' / '.join(tail)}")
    return path


@dataclass(frozen=True)
class Agents:
    codex: Path  # bin/codex.js, run with node
    claude: Path  # the native binary


@pytest.fixture(scope="module")
def agents() -> Agents:
    if shutil.which("node") is None:
        _unavailable("node is not installed")
    return Agents(
        codex=_npm_install("@openai/codex", CODEX_VERSION, "bin/codex.js"),
        claude=_npm_install("@anthropic-ai/claude-code", CLAUDE_VERSION, "bin/claude.exe"),
    )


# --- running the agents -----------------------------------------------------------------------


def _codex_config(base_url: str) -> str:
    """Codex's ``config.toml``: Interlock as the provider, every non-essential service off."""
    return f"""\
model = "gpt-4o-mini"
model_provider = "interlock"
check_for_update_on_startup = false

[model_providers.interlock]
name = "Interlock"
base_url = "{base_url}/v1"
wire_api = "responses"
env_key = "INTERLOCK_API_KEY"
supports_websockets = false

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"

[history]
persistence = "none"
"""


def _base_env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def _claude_env(home: Path, base_url: str) -> dict[str, str]:
    """Claude Code's environment: Interlock as the API, every non-essential service off."""
    return {
        **_base_env(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "unused",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }


@dataclass(frozen=True)
class Run:
    output: str
    tool_ran: bool


def _run(argv: list[str], env: dict[str, str], work: Path) -> Run:
    done = subprocess.run(
        argv,
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_RUN_TIMEOUT_S,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    marker = work / "tool-ran.txt"
    return Run(output, marker.is_file() and marker.read_text().strip() == MARKER)


@pytest.fixture
def run_codex(agents: Agents, tmp_path: Path) -> Callable[[str, str], Run]:
    def run(base_url: str, prompt: str) -> Run:
        home, work = tmp_path / "codex-home", tmp_path / "codex-work"
        (home / ".codex").mkdir(parents=True)
        work.mkdir()
        (home / ".codex" / "config.toml").write_text(_codex_config(base_url))
        env = {**_base_env(home), "CODEX_HOME": str(home / ".codex"), "INTERLOCK_API_KEY": "k"}
        argv = ["node", str(agents.codex), "exec", "--skip-git-repo-check", "--json",
                "--dangerously-bypass-approvals-and-sandbox", prompt]  # fmt: skip
        return _run(argv, env, work)

    return run


@pytest.fixture
def run_claude(agents: Agents, tmp_path: Path) -> Callable[[str, str], Run]:
    def run(base_url: str, prompt: str) -> Run:
        home, work = tmp_path / "claude-home", tmp_path / "claude-work"
        home.mkdir()
        work.mkdir()
        argv = [str(agents.claude), "-p", prompt, "--model", "claude-haiku",
                "--allowedTools", "Bash", "--output-format", "json"]  # fmt: skip
        return _run(argv, _claude_env(home, base_url), work)

    return run


# --- Interlock configs ------------------------------------------------------------------------

_MOCK = f"""\
version: 1
upstreams:
  demo:
    kind: mock
    mock:
      tool_call:
        - {{name: exec_command, arguments: {{cmd: "{SHELL}"}}}}
        - {{name: Bash, arguments: {{command: "{SHELL}", description: Write a marker}}}}
models:
  agent:
    aliases: ["*"]
    targets: [{{upstream: demo, model: demo-1}}]
routes:
  - {{name: all, match: {{}}, action: {{model: agent}}}}
"""


def _through(kind: str, base_url: str, *, drop_unsupported: bool = False) -> str:
    """Interlock in front of a `kind` upstream; `drop_unsupported` drops what it cannot honour
    (Claude Code's ``context_management`` to an OpenAI-compatible server)."""
    drop = str(drop_unsupported).lower()
    return f"""\
version: 1
upstreams:
  provider: {{kind: {kind}, base_url: "{base_url}", api_key: sk-test}}
models:
  agent:
    aliases: ["*"]
    targets: [{{upstream: provider, model: upstream-model}}]
routes:
  - {{name: all, match: {{}}, action: {{model: agent, drop_unsupported: {drop}}}}}
"""


@pytest.fixture
def gateway(served: Callable[[str], ServedGateway]) -> Callable[[str], str]:
    return lambda config: served(config).url


@pytest.fixture
def provider(upstream_reset: MockUpstream) -> Iterator[MockUpstream]:
    yield upstream_reset


# --- Codex ------------------------------------------------------------------------------------


def test_codex_on_the_builtin_mock_runs_a_tool(
    gateway: Callable[[str], str], run_codex: Callable[[str, str], Run]
) -> None:
    run = run_codex(gateway(_MOCK), "run the tool")
    assert run.tool_ran, run.output
    assert "Reconnecting" not in run.output
    assert '"type":"turn.completed"' in run.output.replace(" ", "")


@pytest.mark.parametrize("kind", ["openai-compatible", "anthropic"])
def test_codex_runs_a_tool_through_a_translating_upstream(
    kind: str,
    provider: MockUpstream,
    gateway: Callable[[str], str],
    run_codex: Callable[[str, str], Run],
) -> None:
    protocol = "openai" if kind == "openai-compatible" else "anthropic"
    provider.script(protocol, Reply(tool="exec_command", arguments={"cmd": SHELL}))
    run = run_codex(gateway(_through(kind, provider.base_url(protocol))), "run the tool")
    assert run.tool_ran, run.output
    bodies = [r.body for r in provider.requests_to(protocol)]
    assert len(bodies) == 2, bodies
    assert MARKER not in json.dumps(bodies[0])
    last = json.dumps(bodies[1])
    assert ("tool_result" if protocol == "anthropic" else '"role": "tool"') in last


# --- Claude Code ------------------------------------------------------------------------------


def test_claude_on_the_builtin_mock_runs_a_tool(
    gateway: Callable[[str], str], run_claude: Callable[[str, str], Run]
) -> None:
    run = run_claude(gateway(_MOCK), "run the tool")
    assert run.tool_ran, run.output
    assert json.loads(run.output.strip().splitlines()[-1])["is_error"] is False


@pytest.mark.parametrize("kind", ["anthropic", "openai-compatible"])
def test_claude_runs_a_tool_through_an_upstream(
    kind: str,
    provider: MockUpstream,
    gateway: Callable[[str], str],
    run_claude: Callable[[str, str], Run],
) -> None:
    protocol = "openai" if kind == "openai-compatible" else "anthropic"
    arguments = {"command": SHELL, "description": "Write a marker"}
    provider.script(protocol, Reply(tool="Bash", arguments=arguments))
    config = _through(kind, provider.base_url(protocol), drop_unsupported=protocol == "openai")
    run = run_claude(gateway(config), "run the tool")
    assert run.tool_ran, run.output
    first = provider.requests_to(protocol)[0]
    if protocol == "anthropic":
        assert "beta=true" in first.query, first.query
    else:
        roles = [m["role"] for m in first.body["messages"]]
        assert "user" in roles
        assert roles[-1] in ("system", "developer"), roles  # a mid-conversation system message


# --- the README's promise: both agents on the quickstart config -------------------------------

QUICKSTART = (Path(__file__).parent.parent / "examples" / "quickstart.yaml").read_text()


@pytest.mark.parametrize("agent", ["codex", "claude"])
def test_agents_run_a_tool_on_the_quickstart_config(
    agent: str,
    gateway: Callable[[str], str],
    run_codex: Callable[[str, str], Run],
    run_claude: Callable[[str, str], Run],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # NOTE: the quickstart's ledger file goes in the working directory
    url = gateway(QUICKSTART)
    run = (run_codex if agent == "codex" else run_claude)(url, "say hello")
    work = tmp_path / ("codex-work" if agent == "codex" else "claude-work")
    hello = work / "interlock-hello.txt"
    assert hello.exists(), run.output
    assert hello.read_text().strip() == "hello from interlock"
