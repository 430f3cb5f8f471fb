"""Managed keys end to end, over loopback, with real `interlock serve` processes on SQLite and
PostgreSQL stores: organizations, projects and keys made through the admin API and through the
CLI while the server runs, used with both official SDKs, listed without secrets, revoked (and
refused within a second, on every process), a restart, a store without plaintext keys, the admin
API's answers to bad requests, and a config whose key ids clash with the store's. In-process
checks of LiveKeys and the shared validation: tests/test_live_keys.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from runtime.cli import main as interlock_cli
from runtime.state.ledger_stores import open_ledger_store
from tests.process import ADMIN, ADMIN_HASH, REPO, Interlock
from tests.served import ServedGateway

OPS_KEY = "il-ops-service-key-in-git"
_SALT = "0f1e2d3c4b5a6978"
OPS_HASH = f"sha256:{_SALT}:{hashlib.sha256((_SALT + OPS_KEY).encode()).hexdigest()}"
PG_ENV = "IL_TEST_KEYS_URL"
HI: list[Any] = [{"role": "user", "content": "hi"}]


def config(store: str, ledger: Path, *, git_ids: tuple[str, ...] = ("ops",)) -> str:
    keys = "\n".join(
        f'    - {{id: {key_id}, hash: "{OPS_HASH}", org: platform, project: ops}}'
        for key_id in git_ids
    )
    return f"""
version: 1
upstreams: {{mock: {{kind: mock, mock: {{stream_chunks: 3}}}}}}
models:
  gpt-4o-mini: {{targets: [{{upstream: mock}}]}}
  claude-haiku: {{targets: [{{upstream: mock}}]}}
routes:
  - name: acme-traffic
    match: {{key: {{org: acme}}}}
    action: {{params: {{default: {{max_tokens: 64}}}}}}
auth:
  required: true
  keys:
{keys}
  store: {store}
admin: {{enabled: true, key_hash: "{ADMIN_HASH}"}}
limits:
  policies:
    plan-pro: {{scope: project, rpm: 1000}}
    tiny: {{scope: project, rpm: 2}}
usage:
  store: {{kind: sqlite, path: "{ledger}"}}
"""


class Setup:
    """A config file on a store of one kind, and the environment its processes need."""

    def __init__(
        self, kind: str, tmp_path: Path, request: pytest.FixtureRequest | None = None
    ) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        if kind == "sqlite":
            self.where = str(tmp_path / "keys.db")
            self.store = f'{{kind: sqlite, path: "{self.where}"}}'
            self.env: dict[str, str] = {}
        else:
            assert request is not None
            self.where = request.getfixturevalue("pg_url")
            self.store = f"{{kind: postgres, url: {{env: {PG_ENV}}}}}"
            self.env = {PG_ENV: self.where}
        self.path = tmp_path / "gateway.yaml"
        self.write()

    def write(self, **options: Any) -> None:
        text = config(self.store, self.tmp_path / "usage.db", **options)
        self.path.write_text(text, encoding="utf-8")

    def cli(self, command: str, action: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runtime.cli", command, action, str(self.path), *args],
            cwd=REPO,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def cli_json(self, command: str, action: str, *args: str) -> Any:
        done = self.cli(command, action, *args, "--format", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(params=["sqlite", "postgres"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    return Setup(request.param, tmp_path, request)


def call(url: str, method: str, path: str, body: Any = None, **options: Any) -> httpx.Response:
    headers = options.pop("headers", ADMIN)
    if isinstance(body, bytes):
        return httpx.request(method, url + path, content=body, headers=headers, timeout=10)
    return httpx.request(method, url + path, json=body, headers=headers, timeout=10)


def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def chat(url: str, key: str, model: str = "gpt-4o-mini") -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": model, "messages": HI},
        timeout=10,
    )


def until(url: str, key: str, status: int, limit_s: float = 1.0) -> float:
    """Seconds until a request with `key` answers `status`; fails after `limit_s`."""
    started = time.monotonic()
    while True:
        got = chat(url, key).status_code
        elapsed = time.monotonic() - started
        if got == status:
            return elapsed
        assert elapsed < limit_s, f"still {got} after {elapsed:.2f} s"
        time.sleep(0.01)


def use_with_both_sdks(url: str, key: str) -> tuple[str | None, str]:
    """A chat through the OpenAI SDK, a streamed message through the Anthropic SDK; returns
    the route the chat took and the streamed text."""
    with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
        assert raw.parse().choices[0].message.content
    with (
        anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as client,
        client.messages.stream(model="claude-haiku", max_tokens=64, messages=HI) as stream,
    ):
        text = "".join(stream.text_stream)
    return raw.headers.get("x-interlock-route"), text


def stored_text(setup: Setup) -> bytes:
    """Everything the key store holds, as bytes: the SQLite files, or every PostgreSQL row."""
    if setup.kind == "sqlite":
        files = [Path(setup.where + suffix) for suffix in ("", "-wal", "-shm")]
        return b"".join(f.read_bytes() for f in files if f.exists())

    async def dump() -> bytes:
        import asyncpg

        conn = await asyncpg.connect(setup.where)
        try:
            out = []
            for table in ("orgs", "projects", "api_keys", "key_audit", "key_changes"):
                rows = await conn.fetch(f"SELECT t::text FROM {table} t")
                out += [row[0] for row in rows]
            return "\n".join(out).encode()
        finally:
            await conn.close()

    return asyncio.run(dump())


# --- the whole life of a key ---------------------------------------------------------------


def test_create_use_list_revoke_restart(setup: Setup, interlock: Callable[..., Interlock]) -> None:
    server = interlock(setup.path, env=setup.env)
    url = server.url
    # through the admin API
    org = created(call(url, "POST", "/admin/orgs", {"id": "acme", "name": "ACME Corp"}))
    assert (org["id"], org["name"]) == ("acme", "ACME Corp")
    assert call(url, "GET", "/admin/orgs").json() == {"data": [org]}
    project = created(
        call(url, "POST", "/admin/projects", {"id": "web", "org": "acme", "limits": ["plan-pro"]})
    )
    assert (project["org"], project["name"], project["limits"]) == ("acme", "web", ["plan-pro"])
    by_api = created(
        call(url, "POST", "/admin/keys", {"project": "web", "name": "web app", "tags": {"t": "1"}})
    )
    keep = created(call(url, "POST", "/admin/keys", {"project": "web", "name": "stays"}))
    # through the CLI, on the store, while the server runs
    setup.cli_json("orgs", "create", "--id", "globex", "--name", "Globex")
    setup.cli_json("projects", "create", "--id", "support", "--org", "globex")
    by_cli = setup.cli_json("keys", "create", "--project", "support", "--name", "support bot")
    assert by_cli["key"].startswith(f"il-{by_cli['prefix']}-") and by_cli["org"] == "globex"
    until(url, by_cli["key"], 200)  # NOTE: made by another process: seen at the next poll

    # both SDKs; a managed key's org is what routes match
    assert use_with_both_sdks(url, by_api["key"]) == ("acme-traffic", "Echo: hi")
    assert use_with_both_sdks(url, by_cli["key"]) == (None, "Echo: hi")
    assert chat(url, OPS_KEY).status_code == 200  # the config's own key beside them
    with openai.OpenAI(base_url=url + "/v1", api_key=keep["key"], max_retries=0) as client:
        assert {m.id for m in client.models.list()} == {"gpt-4o-mini", "claude-haiku"}

    # listings never show a key or its hash
    secrets = [k["key"] for k in (by_api, keep, by_cli)]
    listing = call(url, "GET", "/admin/keys")
    assert listing.status_code == 200
    assert {k["id"]: k["prefix"] for k in listing.json()["data"]} == {
        k["id"]: k["prefix"] for k in (by_api, keep, by_cli)
    }
    assert listing.json()["next"] is None
    cli_listing = setup.cli("keys", "list")
    assert cli_listing.returncode == 0 and by_cli["prefix"] in cli_listing.stdout
    for text in (listing.text, cli_listing.stdout, call(url, "GET", "/admin/audit").text):
        assert "sha256:" not in text
        assert not any(secret in text or secret[12:] in text for secret in secrets)
    assert [k["id"] for k in call(url, "GET", "/admin/keys?org=globex").json()["data"]] == [
        by_cli["id"]
    ]

    # revoke through the API: this process refreshes before it answers
    revoked = call(url, "DELETE", f"/admin/keys/{by_api['id']}")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert chat(url, by_api["key"]).status_code == 401
    # revoke through the CLI: the server polls the store
    done = setup.cli("keys", "revoke", by_cli["id"])
    assert done.returncode == 0 and f"revoked {by_cli['id']}" in done.stdout
    assert until(url, by_cli["key"], 401) < 1.0
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key=by_cli["key"], max_retries=0).models.list()
    assert chat(url, keep["key"]).status_code == 200

    # restart: revoked stays revoked, the rest still work; last use was written at shutdown
    assert server.stop() == 0
    again = interlock(setup.path, env=setup.env)
    for key in (by_api, by_cli):
        assert chat(again.url, key["key"]).status_code == 401
    assert chat(again.url, keep["key"]).status_code == 200
    keys = {k["id"]: k for k in call(again.url, "GET", "/admin/keys").json()["data"]}
    assert keys[keep["id"]]["status"] == "active" and keys[keep["id"]]["last_used"]
    assert keys[by_api["id"]]["status"] == "revoked"
    assert again.stop() == 0

    # the store holds hashes and prefixes, never a key
    dumped = stored_text(setup)
    assert all(k["prefix"].encode() in dumped for k in (by_api, keep, by_cli))
    assert not any(
        secret.encode() in dumped or secret[12:].encode() in dumped for secret in secrets
    )


def test_two_processes_on_one_store_see_each_others_changes_within_a_second(
    setup: Setup, interlock: Callable[..., Interlock]
) -> None:
    one = interlock(setup.path, env=setup.env)
    two = interlock(setup.path, env=setup.env)
    created(call(one.url, "POST", "/admin/orgs", {"id": "acme"}))
    created(call(one.url, "POST", "/admin/projects", {"id": "web", "org": "acme"}))
    key = created(call(one.url, "POST", "/admin/keys", {"project": "web", "name": "k"}))
    assert chat(one.url, key["key"]).status_code == 200
    assert until(two.url, key["key"], 200) < 1.0

    assert call(one.url, "DELETE", f"/admin/keys/{key['id']}").status_code == 200
    assert until(two.url, key["key"], 401) < 1.0  # revoked through one, refused by the other

    other = created(call(two.url, "POST", "/admin/keys", {"project": "web", "name": "other"}))
    until(one.url, other["key"], 200)
    patched = call(one.url, "PATCH", f"/admin/keys/{other['id']}", {"models": ["claude-*"]})
    assert patched.status_code == 200 and patched.json()["models"] == ["claude-*"]
    assert until(two.url, other["key"], 403) < 1.0  # a narrower allowlist, too


# --- the admin API's answers -----------------------------------------------------------------


def serve_with_a_project(path: Path, log: Path) -> Interlock:
    server = Interlock(path, log).wait_ready()
    created(call(server.url, "POST", "/admin/orgs", {"id": "acme"}))
    created(call(server.url, "POST", "/admin/projects", {"id": "web", "org": "acme"}))
    return server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Interlock]:
    server = serve_with_a_project(Setup("sqlite", tmp_path).path, tmp_path / "interlock.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Interlock]:
    """One server for the requests it refuses (which change nothing)."""
    tmp_path = tmp_path_factory.mktemp("refusing")
    server = serve_with_a_project(Setup("sqlite", tmp_path).path, tmp_path / "interlock.log")
    yield server
    server.stop()


def refusal(response: httpx.Response, status: int, param: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    message: str = error["message"]
    return message


def test_the_admin_api_wants_the_admin_key(server: Interlock) -> None:
    key = created(call(server.url, "POST", "/admin/keys", {"project": "web", "name": "k"}))
    for headers in (
        {},
        {"authorization": "Bearer il-admin-wrong"},
        {"x-api-key": "il-admin-wrong"},
        {"authorization": f"Bearer {key['key']}"},  # a client's key is no admin key
        {"authorization": f"Bearer {OPS_KEY}"},
    ):
        for method, path, body in (
            ("POST", "/admin/orgs", {"id": "x"}),
            ("GET", "/admin/orgs", None),
            ("POST", "/admin/projects", {"id": "p", "org": "acme"}),
            ("GET", "/admin/projects", None),
            ("PATCH", "/admin/projects/web", {"limits": []}),
            ("POST", "/admin/keys", {"project": "web", "name": "k"}),
            ("GET", "/admin/keys", None),
            ("GET", f"/admin/keys/{key['id']}", None),
            ("PATCH", f"/admin/keys/{key['id']}", {"name": "x"}),
            ("DELETE", f"/admin/keys/{key['id']}", None),
            ("GET", "/admin/audit", None),
        ):
            response = call(server.url, method, path, body, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.json()["error"]["code"] == "invalid_api_key"  # and nothing else
    assert chat(server.url, key["key"]).status_code == 200  # nothing was revoked


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        (b'{"project": "web", "name": "k"', None, "malformed JSON"),
        (b"not json", None, "malformed JSON"),
        (b'{"project": "web", "name": "k", "colour": "red"}', "colour", "unknown field `colour`"),
        (b'{"project": "web", "name": 42}', "name", "Expected `str`, got `int`"),
        (b'{"project": ["web"], "name": "k"}', "project", "Expected `str`, got `array`"),
        (b'{"project": "web", "name": "k", "expires": 1}', "expires", "got `int`"),
        (b'{"project": "web", "name": "k", "limits": "plan-pro"}', "limits", "got `str`"),
        (b'{"project": "web", "name": "k", "tags": {"a": true}}', "tags", "got `bool`"),
        (b'{"name": "k"}', "project", "missing required field `project`"),
        (b'{"project": "web", "name": "k", "id": "no spaces"}', "id", "is not an id"),
        (b'{"project": "web", "name": "k", "models": []}', "models", "at least one"),
        (b'{"project": "web", "name": "k", "expires": "tomorrow"}', "expires", "not a time"),
        (b'{"project": "web", "name": "k", "expires": "2001-01-01"}', "expires", "in the past"),
    ],
)
def test_bad_requests_get_a_400_naming_the_field(
    refusing: Interlock, body: bytes, param: str | None, says: str
) -> None:
    response = call(refusing.url, "POST", "/admin/keys", body)
    assert says in refusal(response, 400, param)


def test_admin_api_refusals(server: Interlock) -> None:
    url = server.url
    assert "no project 'nope'" in refusal(
        call(url, "POST", "/admin/keys", {"project": "nope", "name": "k"}), 404, "project"
    )
    assert "no org 'initech'" in refusal(
        call(url, "POST", "/admin/projects", {"id": "p", "org": "initech"}), 404, "org"
    )
    assert "unknown limit policy 'plan-gold'" in refusal(
        call(url, "POST", "/admin/keys", {"project": "web", "name": "k", "limits": ["plan-gold"]}),
        422,
        "limits",
    )
    assert "'plan-gold'" in refusal(
        call(url, "PATCH", "/admin/projects/web", {"limits": ["plan-gold"]}), 422, "limits"
    )
    assert "auth.keys" in refusal(
        call(url, "POST", "/admin/keys", {"project": "web", "name": "k", "id": "ops"}), 409, "id"
    )
    assert "exists" in refusal(call(url, "POST", "/admin/orgs", {"id": "acme"}), 409, "id")
    for method in ("GET", "PATCH", "DELETE"):
        body = {"name": "x"} if method == "PATCH" else None
        assert "no key 'nope'" in refusal(call(url, method, "/admin/keys/nope", body), 404, "id")
    assert "integer" in refusal(call(url, "GET", "/admin/keys?limit=many"), 400, "limit")
    key = created(call(url, "POST", "/admin/keys", {"project": "web", "name": "k", "id": "k1"}))
    assert call(url, "DELETE", "/admin/keys/k1").status_code == 200
    assert "revoked" in refusal(call(url, "PATCH", "/admin/keys/k1", {"name": "x"}), 409, "id")
    assert "exists" in refusal(
        call(url, "POST", "/admin/keys", {"project": "web", "name": "k", "id": "k1"}), 409, "id"
    )
    assert chat(url, key["key"]).status_code == 401


def test_changes_through_the_api_apply_at_once(server: Interlock) -> None:
    url = server.url
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).isoformat()
    key = created(
        call(url, "POST", "/admin/keys", {"project": "web", "name": "k", "expires": soon})
    )
    assert chat(url, key["key"]).status_code == 200
    patched = call(url, "PATCH", f"/admin/keys/{key['id']}", {"models": ["claude-*"]})
    assert patched.status_code == 200
    denied = chat(url, key["key"])
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "model_not_allowed"
    assert chat(url, key["key"], model="claude-haiku").status_code == 200
    time.sleep(max(0.0, dt.datetime.fromisoformat(soon).timestamp() - time.time()) + 0.05)
    expired = chat(url, key["key"], model="claude-haiku")
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    assert call(url, "GET", f"/admin/keys/{key['id']}").json()["status"] == "expired"
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    assert call(url, "PATCH", f"/admin/keys/{key['id']}", {"expires": later}).status_code == 200
    assert chat(url, key["key"], model="claude-haiku").status_code == 200
    actions = [e["action"] for e in call(url, "GET", "/admin/audit?limit=3").json()["data"]]
    assert actions == ["key.update", "key.update", "key.create"]


def test_without_a_store_managed_keys_are_off(
    interlock: Callable[..., Interlock], tmp_path: Path
) -> None:
    path = tmp_path / "plain.yaml"
    text = config("{kind: sqlite, path: unused.db}", tmp_path / "usage.db")
    path.write_text(text.replace("  store: {kind: sqlite, path: unused.db}\n", ""), "utf-8")
    server = interlock(path)
    assert "no auth.store" in refusal(call(server.url, "GET", "/admin/keys"), 404)
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "keys", "list", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "no auth.store" in done.stderr


# --- one id, one key -------------------------------------------------------------------------


def test_a_config_key_with_a_managed_key_id_is_refused_at_start_and_reload(
    interlock: Callable[..., Interlock], tmp_path: Path
) -> None:
    setup = Setup("sqlite", tmp_path)
    setup.cli_json("orgs", "create", "--id", "acme")
    setup.cli_json("projects", "create", "--id", "web", "--org", "acme")
    dup = setup.cli_json("keys", "create", "--project", "web", "--name", "dup", "--id", "dup")
    refused = setup.cli("keys", "create", "--project", "web", "--name", "x", "--id", "ops")
    assert refused.returncode == 1 and "auth.keys" in refused.stderr

    setup.write(git_ids=("ops", "dup"))
    starting = interlock(setup.path, ready=False)
    assert starting.wait(20) == 1
    assert "'dup' is also the id of a managed key" in starting.log

    setup.write()
    server = interlock(setup.path, args=("--no-watch",))
    version = call(server.url, "GET", "/admin/config").json()["version"]
    setup.write(git_ids=("ops", "dup"))
    reload = call(server.url, "POST", "/admin/reload")
    assert reload.status_code == 422 and "'dup'" in reload.json()["error"]
    assert call(server.url, "GET", "/admin/config").json()["version"] == version
    assert chat(server.url, dup["key"]).status_code == 200  # the old table keeps serving
    assert chat(server.url, OPS_KEY).status_code == 200


# --- tenancy: routes, limits and the ledger read a managed key as a key from git -------------


def test_managed_keys_carry_their_project_and_org_everywhere(tmp_path: Path) -> None:
    setup = Setup("sqlite", tmp_path)

    def cli(*args: str) -> Any:
        out = io.StringIO()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "stdout", out)
            assert interlock_cli([*args[:2], str(setup.path), *args[2:], "--format", "json"]) == 0
        return json.loads(out.getvalue())

    cli("orgs", "create", "--id", "acme")
    cli("projects", "create", "--id", "small", "--org", "acme", "--limits", "tiny")
    made = [cli("keys", "create", "--project", "small", "--name", n) for n in ("one", "two")]
    first, second = (k["key"] for k in made)
    ids = [k["id"] for k in made]
    with ServedGateway(setup.path.read_text(encoding="utf-8")) as gateway:
        assert [chat(gateway.url, key).status_code for key in (first, first, second)] == [
            200,
            200,
            429,  # the project's policy counts both of its keys together
        ]
        routed = chat(gateway.url, second, model="claude-haiku")
        assert routed.status_code == 429  # NOTE: still the project's two requests a minute
        assert chat(gateway.url, OPS_KEY).status_code == 200  # not in the project
    # NOTE: the gateway has stopped: its ledger is written

    async def report() -> list[dict[str, Any]]:
        store = open_ledger_store("sqlite", path=str(tmp_path / "usage.db"))
        await store.open()
        try:
            return await store.report(since=None, until=None, group_by=["key", "project", "org"])
        finally:
            await store.close()

    rows = {r["key"]: (r["project"], r["org"], r["requests"]) for r in asyncio.run(report())}
    assert rows == {
        ids[0]: ("small", "acme", 2),
        ids[1]: ("small", "acme", 2),
        "ops": ("ops", "platform", 1),
    }
