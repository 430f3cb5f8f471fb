"""Stand-ins that let `interlock explain` and `interlock test` run the serving code with no
secret: placeholders for every secret of a table, a stand-in credential for a key given by id,
and an OAuth token source that fetches nothing::

    mask_secrets(table).upstreams["openai"].api_key.literal -> "<secret env:OPENAI_API_KEY>"
    with_key(table, "agent-prod") -> (table with a stand-in hash, {"authorization": "Bearer …"})
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import replace
from types import MappingProxyType
from typing import Any, cast

from compiler.table import RouteTable, SecretRef, TlsSettings
from runtime.auth import parse_hash
from runtime.oauth import TokenSource


class ExplainError(Exception):
    """A question explain cannot answer (an unknown path, a key id the config does not have)."""


def secret_placeholder(ref: SecretRef) -> str:
    """What explain shows instead of a secret: ``<secret env:NAME>``, ``<secret file:PATH>``, or
    ``<secret inline>`` for a value written in the config (never the value itself)."""
    if ref.env is not None:
        return f"<secret env:{ref.env}>"
    if ref.file is not None:
        return f"<secret file:{ref.file}>"
    return "<secret inline>"


def mask_secrets(table: RouteTable) -> RouteTable:
    """`table` with every `SecretRef` replaced by a literal placeholder and TLS file names
    dropped, so preparing it reads no environment variable or file (explain and route tests run
    in CI, where neither secrets nor CA bundles exist) and what it builds shows
    only placeholders."""
    masked: RouteTable = _mask(table, {})
    return masked


def _mask(value: Any, memo: dict[int, Any]) -> Any:
    found = memo.get(id(value))
    if found is not None:
        return found
    out = value
    if isinstance(value, SecretRef):
        out = SecretRef(literal=secret_placeholder(value))
    elif isinstance(value, TlsSettings):
        out = TlsSettings(verify=value.verify)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in dataclasses.fields(value):
            if f.init:
                old = getattr(value, f.name)
                new = _mask(old, memo)
                if new is not old:
                    changes[f.name] = new
        out = replace(value, **changes) if changes else value
    elif isinstance(value, tuple):
        items = tuple(_mask(v, memo) for v in value)
        out = items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    elif isinstance(value, MappingProxyType):
        mapped = {k: _mask(v, memo) for k, v in value.items()}
        if any(mapped[k] is not v for k, v in value.items()):
            out = MappingProxyType(mapped)
    memo[id(value)] = out
    return out


def with_key(table: RouteTable, key_id: str) -> tuple[RouteTable, dict[str, str]]:
    """`table` with key `key_id` given a stand-in secret, and the headers presenting it: so the
    real authentication (accepted headers, expiry) runs for a caller holding that key."""
    key = next((k for k in table.auth.keys if k.id == key_id), None)
    if key is None:
        known = ", ".join(k.id for k in table.auth.keys) or "none"
        raise ExplainError(
            f"--key-id {key_id!r}: no such key in auth.keys (keys: {known}); managed keys "
            "in auth.store are not read by explain"
        )
    presented = f"explain-stand-in-{key_id}"
    salt, _ = parse_hash(key.hash)
    digest = hashlib.sha256((salt + presented).encode()).hexdigest()
    keys = tuple(
        replace(k, hash=f"sha256:{salt}:{digest}") if k is key else k for k in table.auth.keys
    )
    auth = replace(table.auth, keys=keys)
    header = (
        {"authorization": f"Bearer {presented}"}
        if "bearer" in auth.accept
        else {"x-api-key": presented}
    )
    return replace(table, auth=auth), header


class StandInToken(TokenSource):
    """An OAuth token source that fetches nothing: its token names where one would come from."""

    def __init__(self, token_url: str) -> None:
        super().__init__(token_url, "", "", cast(Any, None))  # NOTE: no client: never fetches

    async def token(self) -> str:
        return f"<oauth token from {self.token_url}>"
