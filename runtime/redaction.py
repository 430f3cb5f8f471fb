"""Masking secrets in anything that leaves the gateway: upstream bytes echoed to a client, logged
bodies and headers, error messages.

One `Redactor` per snapshot knows the exact values the snapshot resolved (upstream keys, OAuth
credentials, forced header secrets, store URLs and their passwords), the config's
``observability.redact`` patterns, and the generic credential shapes (``sk-…``, ``Bearer …``,
``"api_key": "…"``). OAuth access tokens are learned as they are fetched.

    redactor = Redactor(["s3cr3t-value"], patterns=())
    redactor.text("upstream said: key s3cr3t-value revoked")  -> "upstream said: key *** revoked"
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from compiler.table import RouteTable, SecretRef
from runtime.translate.errors import redact_secrets

MASK = "***"
# NOTE: shorter values would mask ordinary words ("test", "none"); real secrets are longer.
MIN_SECRET_LENGTH = 6


class Redactor:
    """Replaces every known secret value and every `patterns` match with ``***``.

    Exact values are matched longest first, so a value that contains another is masked whole.
    """

    __slots__ = ("_exact", "_patterns", "_values")

    def __init__(self, values: Iterable[str], patterns: tuple[re.Pattern[str], ...] = ()) -> None:
        self._values: set[str] = set()
        self._patterns = patterns
        self._exact: re.Pattern[str] | None = None
        for value in values:
            self._values.update(_forms(value))
        self._compile()

    def learn(self, value: str) -> None:
        """Add a secret met at run time (an OAuth access token)."""
        forms = _forms(value) - self._values
        if forms:
            self._values |= forms
            self._compile()

    def text(self, text: str) -> str:
        if self._exact is not None:
            text = self._exact.sub(MASK, text)
        for pattern in self._patterns:
            text = pattern.sub(MASK, text)
        return redact_secrets(text)

    def bytes(self, data: bytes) -> bytes:
        return self.text(data.decode("utf-8", "replace")).encode()

    def _compile(self) -> None:
        ordered = sorted(self._values, key=len, reverse=True)
        self._exact = re.compile("|".join(map(re.escape, ordered))) if ordered else None


def _forms(value: str) -> set[str]:
    """The value and the parts of it that are secrets on their own: the token of
    ``Bearer <token>``, the password of a URL, both halves of base64 ``id:secret``."""
    value = value.strip()
    forms = {value}
    scheme, _, rest = value.partition(" ")
    if scheme.lower() in ("bearer", "basic") and rest:
        forms.add(rest.strip())
    if "://" in value:
        with contextlib.suppress(ValueError):
            password = urlsplit(value).password
            if password:
                forms |= {password, unquote(password)}
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        decoded = base64.b64decode(value, validate=True).decode()
        if ":" in decoded:
            forms |= set(decoded.split(":", 1))
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


def build_redactor(table: RouteTable, resolve: Callable[[SecretRef, str], str]) -> Redactor:
    """The redactor of `table`: every secret reference in it resolved with `resolve` (one that
    cannot be resolved is skipped; serving it fails elsewhere), plus ``observability.redact``."""
    values = []
    for ref in _secret_refs(table):
        with contextlib.suppress(Exception):
            values.append(resolve(ref, "redaction"))
    return Redactor(values, table.observability.redact)


def _secret_refs(node: Any) -> Iterator[SecretRef]:
    if isinstance(node, SecretRef):
        yield node
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            yield from _secret_refs(getattr(node, f.name))
    elif isinstance(node, Mapping):
        for item in node.values():
            yield from _secret_refs(item)
    elif isinstance(node, (tuple, list, frozenset)):
        for item in node:
            yield from _secret_refs(item)
