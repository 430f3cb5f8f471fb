"""API key checks. Keys exist only as salted hashes (``sha256:<salt>:<hex>``, see
`interlock hash-key`); a presented key is hashed with each distinct salt and looked up, and the
result is memoised by the key's unsalted digest (in memory only) so a known key costs one blake2s::

    ring = KeyRing(table.auth.keys)
    ring.lookup("il-abc…")  -> ApiKey(id="web-prod", ...) or None

Managed keys (``auth.store``) are looked up in the gateway's `LiveKeys` (runtime/keys.py): by
prefix, one sha256, no memo needed. The gateway attaches them to a ring as `live` before it
publishes the ring's snapshot.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from compiler.table import ApiKey, AuthSettings
from runtime.errors import GatewayError

if TYPE_CHECKING:
    from runtime.keys import LiveKeys

_MEMO_LIMIT = 10_000


def parse_hash(text: str) -> tuple[str, str]:
    """``"sha256:salt:hex" -> ("salt", "hex")``."""
    _, salt, digest = text.split(":", 2)
    return salt, digest.lower()


def verify_hash(presented: str, stored: str) -> bool:
    salt, digest = parse_hash(stored)
    candidate = hashlib.sha256((salt + presented).encode()).hexdigest()
    return hmac.compare_digest(candidate, digest)


class KeyRing:
    """The keys of one table, indexed by salt and digest."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._by_salt: dict[str, dict[str, ApiKey]] = {}
        self._expiry: dict[str, dt.datetime] = {}
        for key in settings.keys:
            salt, digest = parse_hash(key.hash)
            self._by_salt.setdefault(salt, {})[digest] = key
            if key.expires:
                self._expiry[key.id] = _parse_time(key.expires)
        self._memo: dict[bytes, ApiKey | None] = {}
        self.live: LiveKeys | None = None  # the managed keys, when `settings.store` is set

    def lookup(self, presented: str) -> ApiKey | None:
        """The key `presented` is, or None. Expiry is checked by `authenticate`."""
        # PERF: blake2s is CPython's own; sha256 goes through OpenSSL 3's provider lookup
        # (~2x the instructions, and more under load, when that code is out of the cache)
        memo_key = hashlib.blake2s(presented.encode()).digest()
        if memo_key in self._memo:
            return self._memo[memo_key]
        found = None
        for salt, digests in self._by_salt.items():
            candidate = hashlib.sha256((salt + presented).encode()).hexdigest()
            key = digests.get(candidate)
            if key is not None and hmac.compare_digest(parse_hash(key.hash)[1], candidate):
                found = key
                break
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[memo_key] = found
        return found

    def authenticate(self, headers: Mapping[str, str]) -> ApiKey | None:
        """The caller's key from its headers (a key of the table, or a managed key of `live`);
        raises 401 when a key is required or wrong, or has expired."""
        presented = presented_key(headers, self.settings.accept)
        if presented is None:
            if self.settings.required:
                raise GatewayError(401, "missing API key", code="invalid_api_key")
            return None
        live = self.live
        if live is not None:
            entry = live.lookup(presented)
            if entry is not None:
                now = time.time()
                if entry.expires_at is not None and now >= entry.expires_at:
                    raise GatewayError(401, "API key has expired", code="invalid_api_key")
                live.touch(entry.key.id, now)
                return entry.key
        key = self.lookup(presented)
        if key is None:
            if self.settings.required or self.settings.keys or self.settings.store is not None:
                raise GatewayError(401, "invalid API key", code="invalid_api_key")
            return None
        expires = self._expiry.get(key.id)
        if expires is not None and dt.datetime.now(dt.UTC) >= expires:
            raise GatewayError(401, "API key has expired", code="invalid_api_key")
        return key


def presented_key(headers: Mapping[str, str], accept: Sequence[str]) -> str | None:
    if "bearer" in accept:
        value = headers.get("authorization")
        if value is not None and value[:7].lower() == "bearer ":
            token = value[7:].strip()
            if token:
                return token
    if "x-api-key" in accept:
        value = headers.get("x-api-key")
        if value:
            return value.strip()
    return None


def check_model_allowed(key: ApiKey | None, model: str) -> None:
    if (
        key is not None
        and key.models_pattern is not None
        and not key.models_pattern.fullmatch(model)
    ):
        raise GatewayError(
            403, f"this API key may not use model '{model}'", code="model_not_allowed"
        )


def _parse_time(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
