from __future__ import annotations

import asyncio
import json
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from compiler.table import OAuthSettings, SecretRef
from runtime.oauth import OAuthError, TokenSource, basic_credentials

TOKEN_URL = "https://auth.example.test/api/v2/oauth"
CLIENT_ID = "client-7f3a"
CLIENT_SECRET = "s3cr3t-value-9b2c"
CREDENTIALS = basic_credentials(CLIENT_ID, CLIENT_SECRET)
START = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Handler = Callable[[httpx.Request], Coroutine[Any, Any, httpx.Response]]


class TokenEndpoint:
    """A scripted token endpoint: issues tok-1, tok-2, ... valid for `lifetime_s` from `clock`."""

    def __init__(self, clock: FakeClock, lifetime_s: float = 1800.0) -> None:
        self.clock = clock
        self.lifetime_s = lifetime_s
        self.requests: list[httpx.Request] = []
        self.gate: asyncio.Event | None = None
        self.fail_with: httpx.Response | Exception | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.fail_with, Exception):
            raise self.fail_with
        if self.fail_with is not None:
            return self.fail_with
        expires_at = int((self.clock.now + self.lifetime_s) * 1000)
        token = f"tok-{len(self.requests)}"
        return httpx.Response(200, json={"access_token": token, "expires_at": expires_at})


def run(
    endpoint: Handler,
    body: Callable[[TokenSource], Awaitable[Any]],
    clock: FakeClock,
    **options: Any,
) -> Any:
    async def main() -> Any:
        transport = httpx.MockTransport(endpoint)
        async with httpx.AsyncClient(transport=transport) as client:
            source = TokenSource(
                TOKEN_URL, CREDENTIALS, "GIGACHAT_API_PERS", client, clock=clock, **options
            )
            return await body(source)

    return asyncio.run(main())


def test_basic_credentials() -> None:
    assert basic_credentials("id", "secret") == "aWQ6c2VjcmV0"


def test_request_shape() -> None:
    clock = FakeClock()
    endpoint = TokenEndpoint(clock)

    async def body(source: TokenSource) -> str:
        return await source.token()

    assert run(endpoint, body, clock) == "tok-1"
    (request,) = endpoint.requests
    assert request.method == "POST"
    assert str(request.url) == TOKEN_URL
    assert request.headers["authorization"] == f"Basic {CREDENTIALS}"
    assert uuid.UUID(request.headers["rquid"]).version == 4
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["accept"] == "application/json"
    assert parse_qs(request.content.decode()) == {"scope": ["GIGACHAT_API_PERS"]}


def test_fifty_concurrent_callers_share_one_refresh() -> None:
    clock = FakeClock()
    endpoint = TokenEndpoint(clock)

    async def body(source: TokenSource) -> list[str]:
        endpoint.gate = asyncio.Event()
        callers = [asyncio.create_task(source.token()) for _ in range(50)]
        await asyncio.sleep(0)
        endpoint.gate.set()
        return await asyncio.gather(*callers)

    assert run(endpoint, body, clock) == ["tok-1"] * 50
    assert len(endpoint.requests) == 1


def test_cached_until_the_margin_then_refreshed_before_expiry() -> None:
    clock = FakeClock()
    endpoint = TokenEndpoint(clock, lifetime_s=1800.0)

    async def body(source: TokenSource) -> list[str]:
        seen = [await source.token()]
        clock.now = START + 1739.0  # 61 s left: still outside the 60 s margin
        seen.append(await source.token())
        clock.now = START + 1741.0  # 59 s left: refresh while the old token is still valid
        seen.append(await source.token())
        seen.append(await source.token())
        return seen

    assert run(endpoint, body, clock, refresh_margin_s=60.0) == ["tok-1", "tok-1", "tok-2", "tok-2"]
    assert len(endpoint.requests) == 2


def test_short_lived_token_refreshes_at_half_life() -> None:
    clock = FakeClock()
    endpoint = TokenEndpoint(clock, lifetime_s=40.0)

    async def body(source: TokenSource) -> list[str]:
        seen = [await source.token()]
        clock.now = START + 19.0
        seen.append(await source.token())
        clock.now = START + 21.0
        seen.append(await source.token())
        return seen

    assert run(endpoint, body, clock, refresh_margin_s=60.0) == ["tok-1", "tok-1", "tok-2"]


def test_expires_in_is_accepted() -> None:
    clock = FakeClock()
    calls: list[int] = []

    async def endpoint(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(200, json={"access_token": f"std-{len(calls)}", "expires_in": 300})

    async def body(source: TokenSource) -> list[str]:
        seen = [await source.token()]
        clock.now = START + 239.0
        seen.append(await source.token())
        clock.now = START + 241.0
        seen.append(await source.token())
        return seen

    assert run(endpoint, body, clock) == ["std-1", "std-1", "std-2"]


def test_invalidate_forces_a_refresh_unless_the_token_is_stale() -> None:
    clock = FakeClock()
    endpoint = TokenEndpoint(clock)

    async def body(source: TokenSource) -> list[str]:
        first = await source.token()
        source.invalidate(first)
        second = await source.token()
        source.invalidate(first)  # a late 401 for the old token keeps the new one
        third = await source.token()
        source.invalidate()
        return [first, second, third, await source.token()]

    assert run(endpoint, body, clock) == ["tok-1", "tok-2", "tok-2", "tok-3"]


def test_a_cancelled_caller_does_not_cancel_the_refresh() -> None:
    clock = FakeClock()
    endpoint = TokenEndpoint(clock)

    async def body(source: TokenSource) -> str:
        endpoint.gate = asyncio.Event()
        impatient = asyncio.create_task(source.token())
        patient = asyncio.create_task(source.token())
        await asyncio.sleep(0)
        impatient.cancel()
        await asyncio.sleep(0)
        endpoint.gate.set()
        token = await patient
        assert impatient.cancelled()
        return token

    assert run(endpoint, body, clock) == "tok-1"
    assert len(endpoint.requests) == 1


# --- failures -----------------------------------------------------------------------------------


def assert_no_secrets(error: OAuthError, *tokens: str) -> None:
    rendered = "".join(traceback.format_exception(error)) + repr(error) + str(error)
    for secret in (CREDENTIALS, CLIENT_SECRET, *tokens):
        assert secret not in rendered


def failing(fail_with: httpx.Response | Exception) -> tuple[TokenEndpoint, FakeClock]:
    clock = FakeClock()
    endpoint = TokenEndpoint(clock)
    endpoint.fail_with = fail_with
    return endpoint, clock


async def fetch(source: TokenSource) -> str:
    return await source.token()


def test_error_status_raises_without_leaking_credentials() -> None:
    echo = json.dumps(
        {"message": f"bad header Basic {CREDENTIALS} for {CLIENT_ID}:{CLIENT_SECRET}"}
    )
    endpoint, clock = failing(httpx.Response(401, text=echo))
    with pytest.raises(OAuthError) as caught:
        run(endpoint, fetch, clock)
    assert caught.value.status == 401
    assert "401" in str(caught.value)
    assert "bad header Basic ***" in str(caught.value)
    assert_no_secrets(caught.value)


def test_transport_error_raises_oauth_error() -> None:
    endpoint, clock = failing(httpx.ConnectError("connection refused"))
    with pytest.raises(OAuthError, match="connection refused") as caught:
        run(endpoint, fetch, clock)
    assert caught.value.status is None
    assert_no_secrets(caught.value)


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(200, text="<html>"), "non-JSON"),
        (httpx.Response(200, json=["tok"]), "no JSON object"),
        (httpx.Response(200, json={"expires_at": 1}), "no access_token"),
        (httpx.Response(200, json={"access_token": ""}), "no access_token"),
        (httpx.Response(200, json={"access_token": "leaky-token"}), "no usable expiry"),
        (httpx.Response(200, json={"access_token": "leaky-token", "expires_at": True}), "expiry"),
        (
            httpx.Response(200, json={"access_token": "leaky-token", "expires_at": 1_700_000_000}),
            "expired token",
        ),
    ],
)
def test_malformed_answers(response: httpx.Response, message: str) -> None:
    endpoint, clock = failing(response)
    with pytest.raises(OAuthError, match=message) as caught:
        run(endpoint, fetch, clock)
    assert_no_secrets(caught.value, "leaky-token")


def test_concurrent_callers_share_one_failure() -> None:
    endpoint, clock = failing(httpx.Response(503))

    async def body(source: TokenSource) -> list[object]:
        return await asyncio.gather(*(source.token() for _ in range(20)), return_exceptions=True)

    results = run(endpoint, body, clock)
    assert all(isinstance(r, OAuthError) for r in results)
    assert len(endpoint.requests) == 1


def test_failed_refresh_keeps_serving_a_still_valid_token() -> None:
    clock = FakeClock()
    endpoint = TokenEndpoint(clock, lifetime_s=1800.0)

    async def body(source: TokenSource) -> list[str]:
        seen = [await source.token()]
        endpoint.fail_with = httpx.Response(500)
        clock.now = START + 1750.0  # inside the margin, token valid for 50 s more
        seen.append(await source.token())
        seen.append(await source.token())  # within the hold-off: no new request
        assert len(endpoint.requests) == 2
        clock.now = START + 1756.0  # hold-off over: tries again, succeeds
        endpoint.fail_with = None
        seen.append(await source.token())
        assert len(endpoint.requests) == 3
        endpoint.fail_with = httpx.Response(500)
        clock.now = START + 1756.0 + 1801.0  # tok-3 has expired: the failure surfaces
        with pytest.raises(OAuthError):
            await source.token()
        return seen

    assert run(endpoint, body, clock) == ["tok-1", "tok-1", "tok-1", "tok-3"]


# --- settings -----------------------------------------------------------------------------------


def resolve(ref: SecretRef) -> str:
    return {"CREDS": CREDENTIALS, "SECRET": CLIENT_SECRET}[ref.env or ""]


@pytest.mark.parametrize(
    "settings",
    [
        OAuthSettings(TOKEN_URL, "GIGACHAT_API_PERS", credentials=SecretRef(env="CREDS")),
        OAuthSettings(
            TOKEN_URL,
            "GIGACHAT_API_PERS",
            client_id=CLIENT_ID,
            client_secret=SecretRef(env="SECRET"),
        ),
    ],
)
def test_from_settings(settings: OAuthSettings) -> None:
    clock = FakeClock()
    endpoint = TokenEndpoint(clock)

    async def main() -> str:
        async with httpx.AsyncClient(transport=httpx.MockTransport(endpoint)) as client:
            source = TokenSource.from_settings(settings, resolve, client, clock=clock)
            assert source.refresh_margin_s == settings.refresh_margin_s
            return await source.token()

    assert asyncio.run(main()) == "tok-1"
    assert endpoint.requests[0].headers["authorization"] == f"Basic {CREDENTIALS}"


def test_from_settings_needs_credentials() -> None:
    async def main() -> None:
        async with httpx.AsyncClient() as client:
            TokenSource.from_settings(
                OAuthSettings(TOKEN_URL, "s", client_id=CLIENT_ID), resolve, client
            )

    with pytest.raises(OAuthError, match="client_id and client_secret"):
        asyncio.run(main())
