"""Older major releases of the official SDKs as clients of a served Interlock, over loopback.

The dev venv holds the current ``openai`` and ``anthropic`` releases; an older major cannot sit
beside them, so each pinned release (``[tool.interlock.old-sdks]`` in ``pyproject.toml``) is
installed once with ``pip install --target`` into its own cache folder
(``$INTERLOCK_SDKS_CACHE``, default ``~/.cache/interlock-sdks/<name>-<version>``) and a small
client script runs in a subprocess with that folder first on ``PYTHONPATH``. The script prints
what it saw as JSON; the assertions are here.

    openai 1.x      chat (plain, streamed), models.retrieve (and its 404), responses (plain,
                    streamed), each to an OpenAI and a translated Anthropic upstream
    anthropic 0.x   messages (plain, streamed with get_final_message), models.retrieve, each
                    to an Anthropic and a translated OpenAI upstream

The old anthropic release takes a stream's input tokens from ``message_start`` only, so a
translated stream must report them there. Without pip or the index the module skips with the
reason; under ``CI=true`` it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.served import ServedGateway, two_protocol_config
from tests.upstreams import MockUpstream

_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_INSTALL_TIMEOUT_S = 300
_RUN_TIMEOUT_S = 60
MODELS = ("to-openai", "to-anthropic")


def pinned() -> dict[str, str]:
    """The older releases the tests run, from ``pyproject.toml``: ``{"openai": "1.109.1", ...}``."""
    with _PYPROJECT.open("rb") as f:
        table = tomllib.load(f)["tool"]["interlock"]["old-sdks"]
    return {str(name): str(version) for name, version in table.items()}


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def _unavailable(reason: str) -> None:
    if _under_ci():
        pytest.fail(f"the older SDK releases are required under CI: {reason}")
    pytest.skip(reason)


def _cache_dir() -> Path:
    explicit = os.environ.get("INTERLOCK_SDKS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "interlock-sdks"


def _install(name: str) -> Path:
    """``pip install --target`` the pinned release of `name` (with its dependencies) once; its
    folder. NOTE: installed beside the folder and renamed into place, so a failed or interrupted
    install never leaves a half-filled folder that later runs would trust."""
    version = pinned()[name]
    folder = _cache_dir() / f"{name}-{version}"
    if (folder / name / "__init__.py").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-{version}-", dir=folder.parent))
    try:
        done = subprocess.run(
            [
                sys.executable,
                *("-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
                *("--target", str(staging), f"{name}=={version}"),
            ],
            capture_output=True,
            text=True,
            timeout=_INSTALL_TIMEOUT_S,
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            _unavailable(f"pip install {name}=={version} failed: {' / '.join(tail)}")
        try:
            staging.replace(folder)
        except OSError:  # NOTE: another run put it in place first
            if not (folder / name / "__init__.py").is_file():
                raise
    except subprocess.TimeoutExpired:
        _unavailable(f"pip install {name}=={version} timed out")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def run_client(name: str, script: str, gw: ServedGateway) -> dict[str, Any]:
    """Run `script` with the old release of `name` importable; what it printed, decoded."""
    folder = _install(name)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": str(folder),
        "GATEWAY_URL": gw.url,
        "NO_PROXY": "127.0.0.1",
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=_RUN_TIMEOUT_S,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen: dict[str, Any] = json.loads(done.stdout)
    assert seen["version"] == pinned()[name]  # NOTE: the old release, not the venv's
    return seen


OPENAI_CLIENT = """
import json, os
import openai

client = openai.OpenAI(base_url=os.environ["GATEWAY_URL"] + "/v1", api_key="k", max_retries=0)
ask = [{"role": "user", "content": "hi"}]
seen = {"version": openai.__version__, "has_responses": hasattr(client, "responses")}
for model in ("to-openai", "to-anthropic"):
    reply = client.chat.completions.create(model=model, messages=ask)
    chunks = list(client.chat.completions.create(
        model=model, messages=ask, stream=True, stream_options={"include_usage": True}))
    seen[model] = {
        "chat": reply.choices[0].message.content,
        "chat_usage": reply.usage.prompt_tokens,
        "stream": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
        "stream_usage": chunks[-1].usage.prompt_tokens,
        "model": client.models.retrieve(model).id,
    }
    if seen["has_responses"]:
        answer = client.responses.create(model=model, input="hi", max_output_tokens=32)
        events = list(client.responses.create(model=model, input="hi", stream=True))
        seen[model].update({
            "responses": answer.output_text,
            "responses_usage": answer.usage.input_tokens,
            "responses_events": [e.type for e in events],
            "responses_stream": "".join(
                e.delta for e in events if e.type == "response.output_text.delta"),
            "responses_stream_usage": events[-1].response.usage.input_tokens,
        })
try:
    client.models.retrieve("no-such-model")
except openai.NotFoundError as exc:
    seen["missing"] = exc.status_code
print(json.dumps(seen))
"""

ANTHROPIC_CLIENT = """
import json, os
import anthropic

client = anthropic.Anthropic(base_url=os.environ["GATEWAY_URL"], api_key="k", max_retries=0)
ask = [{"role": "user", "content": "hi"}]
seen = {"version": anthropic.__version__}
for model in ("to-openai", "to-anthropic"):
    reply = client.messages.create(model=model, max_tokens=32, messages=ask)
    with client.messages.stream(model=model, max_tokens=32, messages=ask) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    events = list(client.messages.create(model=model, max_tokens=32, messages=ask, stream=True))
    seen[model] = {
        "text": "".join(b.text for b in reply.content if b.type == "text"),
        "input_tokens": reply.usage.input_tokens,
        "stream": text,
        "final_input_tokens": final.usage.input_tokens,
        "final_output_tokens": final.usage.output_tokens,
        "events": [e.type for e in events],
        "model": client.models.retrieve(model).id,
    }
try:
    client.models.retrieve("no-such-model")
except anthropic.NotFoundError as exc:
    seen["missing"] = exc.status_code
print(json.dumps(seen))
"""


@pytest.fixture
def gw(served: Callable[[str], ServedGateway], upstream_reset: MockUpstream) -> ServedGateway:
    return served(two_protocol_config(upstream_reset))


def test_openai_previous_major(gw: ServedGateway) -> None:
    seen = run_client("openai", OPENAI_CLIENT, gw)

    assert seen["has_responses"] and seen["missing"] == 404
    for model in MODELS:
        got = seen[model]
        assert got["chat"] and got["stream"] == got["chat"], model
        assert got["chat_usage"] > 0 and got["stream_usage"] > 0, model
        assert got["model"] == model
        assert got["responses"] and got["responses_stream"] == got["responses"], model
        assert got["responses_usage"] > 0 and got["responses_stream_usage"] > 0, model
        events = got["responses_events"]
        assert events[0] == "response.created" and events[-1] == "response.completed", model
        assert "response.output_text.done" in events, model


def test_anthropic_previous_major(gw: ServedGateway) -> None:
    seen = run_client("anthropic", ANTHROPIC_CLIENT, gw)

    assert seen["missing"] == 404
    for model in MODELS:
        got = seen[model]
        assert got["text"] and got["stream"] == got["text"], model
        assert got["input_tokens"] > 0, model
        # NOTE: this release reads input tokens from message_start alone
        assert got["final_input_tokens"] > 0 and got["final_output_tokens"] > 0, model
        assert got["events"][0] == "message_start" and got["events"][-1] == "message_stop"
        assert got["model"] == model
