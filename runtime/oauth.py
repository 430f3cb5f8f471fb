"""OAuth client-credentials tokens for GigaChat-style upstreams, cached, refreshed before expiry.

One ``TokenSource`` per upstream (keyed by the upstream's ``state_id``, so it outlives a reload
that keeps the upstream). ``token()`` returns the cached access token and refreshes it once it is
within ``refresh_margin_s`` of expiring; concurrent callers share one refresh request. The request
GigaChat expects::

    POST <token_url>
    Authorization: Basic <base64(client_id:client_secret)>
    RqUID: <uuid4>
    Content-Type: application/x-www-form-urlencoded
    Accept: application/json

    scope=GIGACHAT_API_PERS

    -> 200 {"access_token": "eyJ...", "expires_at": 1706026848841}   # epoch milliseconds

``expires_in`` (seconds from now, RFC 6749) is accepted as well. Failures raise ``OAuthError``,
whose message never contains the credentials or a token.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx

from compiler.table import OAuthSettings, SecretRef

__all__ = ["OAuthError", "TokenSource", "basic_credentials"]

# NOTE: after a failed refresh, a still-valid token keeps being served and the refresh is not
# retried for this long, so a failing token endpoint is not hit once per request.
RETRY_HOLDOFF_S: Final = 5.0
_DETAIL_CHARS: Final = 200


class OAuthError(Exception):
    """A token could not be obtained. ``status`` is the token endpoint's HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def basic_credentials(client_id: str, client_secret: str) -> str:
    """The Basic credentials string for a client id and secret.

    Example: ``basic_credentials("id", "secret")`` -> ``"aWQ6c2VjcmV0"``.
    """
    return base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    expires_at: float  # epoch seconds
    refresh_at: float  # epoch seconds


class TokenSource:
    """A cached, single-flight OAuth client-credentials token.

    `credentials` is the already-resolved base64 ``client_id:client_secret``; `clock` returns epoch
    seconds (the endpoint's ``expires_at`` is absolute). Example::

        source = TokenSource(url, basic_credentials(cid, secret), "GIGACHAT_API_PERS", client)
        headers["authorization"] = f"Bearer {await source.token()}"
    """

    __slots__ = (
        "_cached",
        "_client",
        "_clock",
        "_credentials",
        "_inflight",
        "_last_error",
        "_retry_at",
        "on_token",
        "refresh_margin_s",
        "scope",
        "timeout_s",
        "token_url",
    )

    def __init__(
        self,
        token_url: str,
        credentials: str,
        scope: str,
        client: httpx.AsyncClient,
        *,
        refresh_margin_s: float = 60.0,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        on_token: Callable[[str], None] | None = None,
    ) -> None:
        self.token_url = token_url
        # SECURITY: told every token fetched (before it is used), so a redactor can mask it
        self.on_token = on_token
        self.scope = scope
        self.refresh_margin_s = refresh_margin_s
        self.timeout_s = timeout_s
        self._credentials = credentials
        self._client = client
        self._clock = clock
        self._cached: _Token | None = None
        self._inflight: asyncio.Task[_Token] | None = None
        self._retry_at = -math.inf
        self._last_error: str | None = None

    @classmethod
    def from_settings(
        cls,
        settings: OAuthSettings,
        resolve: Callable[[SecretRef], str],
        client: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
    ) -> TokenSource:
        """Build from compiled settings, resolving secrets with `resolve`: ``credentials`` if set,
        else ``client_id`` + ``client_secret``. Raises OAuthError when neither is usable."""
        if settings.credentials is not None:
            credentials = resolve(settings.credentials)
        elif settings.client_id is not None and settings.client_secret is not None:
            credentials = basic_credentials(settings.client_id, resolve(settings.client_secret))
        else:
            raise OAuthError("oauth needs credentials, or client_id and client_secret")
        return cls(
            settings.token_url,
            credentials,
            settings.scope,
            client,
            refresh_margin_s=settings.refresh_margin_s,
            clock=clock,
        )

    async def token(self) -> str:
        """The current access token, refreshed first if it expires within the margin.

        Concurrent callers await the same refresh; a caller's cancellation does not cancel it.
        If the refresh fails while the cached token is still valid, that token is returned.
        """
        now = self._clock()
        cached = self._cached
        if cached is not None and (
            now < cached.refresh_at or (now < self._retry_at and now < cached.expires_at)
        ):
            return cached.value
        task = self._inflight
        if task is None:
            task = asyncio.get_running_loop().create_task(self._refresh())
            task.add_done_callback(self._refresh_done)
            self._inflight = task
        try:
            return (await asyncio.shield(task)).value
        except OAuthError:
            cached = self._cached
            if cached is not None and self._clock() < cached.expires_at:
                return cached.value
            raise

    def follow(self, on_token: Callable[[str], None]) -> None:
        """Tell `on_token` every token fetched from now on, and the cached one at once (a table
        swapped in after the fetch has a redactor that must learn it too). Cheap when `on_token`
        is already the one told (the same bound method compares equal)."""
        if on_token == self.on_token:
            return
        self.on_token = on_token
        if self._cached is not None:
            on_token(self._cached.value)

    def invalidate(self, token: str | None = None) -> None:
        """Force the next ``token()`` to refresh (after the upstream answered 401). With `token`,
        only if that is still the cached one, so a stale 401 does not discard a fresh token."""
        cached = self._cached
        if cached is not None and (token is None or cached.value == token):
            self._cached = None
        self._retry_at = -math.inf

    def _refresh_done(self, task: asyncio.Task[_Token]) -> None:
        if self._inflight is task:
            self._inflight = None
        if task.cancelled():
            return
        error = task.exception()  # NOTE: marks it retrieved even if every waiter went away
        if error is None:
            self._cached = task.result()
            self._last_error = None
        else:
            self._retry_at = self._clock() + RETRY_HOLDOFF_S
            self._last_error = str(error)

    def status(self) -> tuple[str, float | None, str | None]:
        """``(state, expires_at, last_error)`` for health reports; never the token. `state` is
        ``valid``, ``expiring`` (within the refresh margin), ``expired`` (refreshed on next use),
        ``failed`` (no usable token and the last refresh failed) or ``none`` (never fetched).
        Example: ``("valid", 1.7e9, None)``."""
        cached, now = self._cached, self._clock()
        if cached is not None and now < cached.expires_at:
            state = "valid" if now < cached.refresh_at else "expiring"
            return state, cached.expires_at, self._last_error
        if self._last_error is not None:
            return "failed", cached.expires_at if cached else None, self._last_error
        if cached is not None:
            return "expired", cached.expires_at, None  # NOTE: the next request refreshes it
        return "none", None, None

    async def _refresh(self) -> _Token:
        try:
            response = await self._client.post(
                self.token_url,
                headers={
                    "Authorization": f"Basic {self._credentials}",
                    "RqUID": str(uuid.uuid4()),
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Accept": "application/json",
                },
                data={"scope": self.scope},
                timeout=self.timeout_s,
            )
        except httpx.HTTPError as exc:
            # SECURITY: httpx messages carry the URL, never the request headers.
            raise OAuthError(f"token request to {self.token_url} failed: {exc!r}") from exc
        if response.status_code != 200:
            detail = self._scrub(response.text[:_DETAIL_CHARS])
            raise OAuthError(
                f"token endpoint {self.token_url} answered {response.status_code}: {detail}",
                status=response.status_code,
            )
        return self._parse(response)

    def _parse(self, response: httpx.Response) -> _Token:
        try:
            body: Any = response.json()
        except ValueError:
            raise OAuthError(f"token endpoint {self.token_url} answered non-JSON") from None
        if not isinstance(body, dict):
            raise OAuthError(f"token endpoint {self.token_url} answered no JSON object")
        value = body.get("access_token")
        if not isinstance(value, str) or not value:
            raise OAuthError(f"token endpoint {self.token_url} answered no access_token")
        now = self._clock()
        expires_at = _expiry(body, now)
        if expires_at is None:
            raise OAuthError(f"token endpoint {self.token_url} answered no usable expiry")
        if self.on_token is not None:
            self.on_token(value)
        if expires_at <= now:
            raise OAuthError(
                f"token endpoint {self.token_url} answered an expired token"
                " (expires_at must be epoch milliseconds)"
            )
        # NOTE: a token shorter-lived than twice the margin is refreshed at half its life.
        margin = min(self.refresh_margin_s, max(expires_at - now, 0.0) / 2)
        return _Token(value, expires_at, expires_at - margin)

    def _scrub(self, text: str) -> str:
        secrets = [self._credentials]
        if self._cached is not None:
            secrets.append(self._cached.value)
        with contextlib.suppress(ValueError):
            secrets.extend(base64.b64decode(self._credentials).decode().split(":", 1))
        for secret in secrets:
            if secret:
                text = text.replace(secret, "***")
        return text


def _expiry(body: dict[str, Any], now: float) -> float | None:
    """Absolute expiry in epoch seconds from ``expires_at`` (epoch ms) or ``expires_in`` (s)."""
    expires_at = _number(body.get("expires_at"))
    if expires_at is not None:
        return expires_at / 1000.0
    expires_in = _number(body.get("expires_in"))
    if expires_in is not None:
        return now + expires_in
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
