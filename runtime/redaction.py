"""Masking secrets in anything that leaves the gateway: upstream bytes echoed to a client, logged
bodies and headers, error messages.

One `Redactor` per snapshot knows the exact values the snapshot resolved (upstream keys, OAuth
credentials, forced header secrets, store URLs and their passwords), the config's
``observability.redact`` patterns, and the generic credential shapes (``sk-…``, ``Bearer …``,
``"api_key": "…"``). OAuth access tokens are learned as they are fetched.

Only what an upstream says in an error is redacted (a successful answer is the user's content):
error bodies, and in a stream the error events `redact_error_events` finds.

    redactor = Redactor(["s3cr3t-value"], patterns=())
    redactor.text("upstream said: key s3cr3t-value revoked")  -> "upstream said: key *** revoked"
    redact_error_events(b'data: {"error": {"message": "s3cr3t-value"}}\n\n', redactor)
        -> b'data: {"error":{"message":"***"}}\n\n'
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import re
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec

from compiler.table import RouteTable, SecretRef
from runtime.sse import SSEDecoder, encode_event
from runtime.translate.errors import redact_secrets

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

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
        if value in self._values:  # PERF: the same token is reported on every request
            return
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

    def value(self, data: Any) -> Any:
        """Decoded JSON with every string in it (keys too) redacted; numbers and the rest as is.

        Redacting the decoded value, not its bytes, also masks a secret the sender wrote with
        JSON escapes (``"\\u0073k-..."``)."""
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, dict):
            return {self.value(key): self.value(item) for key, item in data.items()}
        if isinstance(data, list):
            return [self.value(item) for item in data]
        return data

    def exception(self, exc: BaseException) -> str:
        """`exc` with its traceback, redacted, for a log line."""
        return self.text("".join(traceback.format_exception(exc)).rstrip())

    def _compile(self) -> None:
        ordered = sorted(self._values, key=len, reverse=True)
        self._exact = re.compile("|".join(map(re.escape, ordered))) if ordered else None


def is_error_payload(data: Any) -> bool:
    """Whether a decoded stream event reports an error: Anthropic's ``{"type": "error", ...}``,
    an OpenAI-style ``{"error": {...}}`` chunk or an Ollama ``{"error": "..."}`` line."""
    return isinstance(data, dict) and (data.get("type") == "error" or bool(data.get("error")))


def reports_error(event: str | None, data: Any) -> bool:
    """Whether an upstream event carries upstream error text (redacted before it is passed on):
    an error event or payload, or a Responses ``response.failed`` (its ``response.error``)."""
    return (
        event == "error"
        or is_error_payload(data)
        or (isinstance(data, dict) and data.get("type") == "response.failed")
    )


def _suspect(block: bytes) -> bool:
    """Whether SSE bytes may hold an error event: the word ``error`` (an ``"error"`` member, an
    ``event: error`` line) or data that is not a JSON object (``[DONE]`` aside). PERF: a healthy
    chunk costs three scans of its bytes (~1 instruction a byte each; a regex costs ~5) and no
    parsing; a chunk that only says "error" in its text is parsed."""
    if b"error" in block:
        return True
    plain = block.count(b"data:") - block.count(b"data: {")  # data lines not holding an object
    if plain == 0 or (plain == 1 and block.endswith(b"data: [DONE]\n\n")):
        return False
    return plain != block.count(b"data: [DONE]")


def redact_error_events(block: bytes, redactor: Redactor) -> bytes:
    """`block` (whole SSE events, ``\\n`` framed) with every error event's strings redacted and
    any data that is not JSON redacted as text (a stream's content is always JSON, so such data is
    the upstream talking); every other event byte for byte as it was."""
    if not _suspect(block):
        return block
    return b"\n\n".join(
        _redact_event(raw, redactor) if raw and _suspect(raw) else raw
        for raw in block.split(b"\n\n")
    )


def _redact_event(raw: bytes, redactor: Redactor) -> bytes:
    events = SSEDecoder().feed(raw + b"\n\n")
    if len(events) != 1 or events[0].data == "[DONE]":
        return raw
    event = events[0]
    try:
        data = _decode(event.data)
    except msgspec.DecodeError:
        return encode_event(redactor.text(event.data), event.event)[:-2]
    if not reports_error(event.event, data):
        return raw
    return encode_event(_encode(redactor.value(data)), event.event)[:-2]


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
