"""One client request as the pipeline sees it: raw bytes, the few fields routing needs, and the
full decoded body only when something asks for it.

msgspec decodes the body into a small per-API `*Head` Struct (`runtime.heads`: the fields the
gateway reads, with their types and ranges) and ignores everything else; `body()` decodes the
whole JSON lazily, once. A body nobody changed is forwarded as the original bytes::

    ctx = RequestContext.parse("openai.chat", b'{"model":"m","messages":[{}]}', headers, "rid")
    ctx.model -> "m";  ctx.body()["messages"] -> [{}]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from compiler.matcher import message_text
from compiler.table import ApiKey
from runtime.errors import GatewayError
from runtime.heads import DECODERS, Head, check_head
from runtime.metering import Trace

if TYPE_CHECKING:
    from runtime.exchange import Exchange

_decode_any = msgspec.json.Decoder().decode


def _reports_usage(api: str, head: Head) -> bool:
    if api == "openai.responses":
        return True
    options = getattr(head, "stream_options", None)
    return bool(options and getattr(options, "include_usage", None))


class RequestContext:
    """Per-request state; it is the `compiler.matcher.MatchInput` the route table matches."""

    __slots__ = (
        "_body",
        "_texts",
        "api",
        "api_key",
        "attempts",
        "client_ip",
        "exchange",
        "head",
        "headers",
        "include_usage",
        "query",
        "raw",
        "request_id",
        "requested",
        "route_name",
        "stream",
        "stream_error",
        "trace",
        "upstream",
        "upstream_model",
    )

    def __init__(
        self, api: str, raw: bytes, head: Head, headers: Mapping[str, str], request_id: str
    ) -> None:
        self.api = api
        self.raw = raw
        self.head = head
        self.stream = bool(getattr(head, "stream", False))  # PERF: read ~5 times a request
        # NOTE: whether the client's stream reports usage (a Responses stream always does)
        self.include_usage = self.stream and _reports_usage(api, head)
        self.headers = headers
        self.request_id = request_id
        self.api_key: ApiKey | None = None
        self.client_ip: str | None = None
        self.trace: Trace | None = None  # set when the request is metered (the ledger is on)
        self.query = b""  # the client's query string (the Anthropic SDK's beta client: beta=true)
        # NOTE: who served it, as the pipeline learns it; the access line and the ledger read it
        self.route_name: str | None = None
        self.requested: str | None = None  # the model name asked for (after the route's action)
        self.upstream: str | None = None  # the last upstream tried
        self.upstream_model: str | None = None
        self.attempts = 0  # upstream calls made (retries and fallbacks included)
        self.stream_error: str | None = None  # a failure after the response started
        self.exchange: Exchange | None = None  # headers and bodies to log, when any are logged
        self._body: dict[str, Any] | None = None
        self._texts: dict[str, str] | None = None

    @classmethod
    def parse(
        cls, api: str, raw: bytes, headers: Mapping[str, str], request_id: str
    ) -> RequestContext:
        """Decode the routing fields of `raw`; a malformed or ill-typed body is a 400."""
        try:
            head = DECODERS[api].decode(raw)
        except msgspec.ValidationError as exc:
            raise GatewayError(400, f"invalid request body: {exc}", param=_param(exc)) from None
        except _UNREADABLE as exc:
            raise _unreadable(exc) from None
        check_head(head)
        return cls(api, raw, head, headers, request_id)

    # --- MatchInput -----------------------------------------------------------------------

    @property
    def model(self) -> str | None:
        return self.head.model

    @property
    def key(self) -> Mapping[str, str] | None:
        key = self.api_key
        if key is None:
            return None
        attrs = {"id": key.id, "name": key.name, "org": key.org, "project": key.project}
        return {k: v for k, v in attrs.items() if v is not None}

    @property
    def key_tags(self) -> Mapping[str, str]:
        return self.api_key.tags if self.api_key is not None else {}

    def body(self) -> dict[str, Any]:
        """The whole decoded body (decoded on first use; callers may mutate it)."""
        if self._body is None:
            try:
                decoded = _decode_any(self.raw)
            except _UNREADABLE as exc:  # NOTE: the head decode skips what it does not route on
                raise _unreadable(exc) from None
            self._body = decoded if isinstance(decoded, dict) else {}
        return self._body

    @property
    def body_decoded(self) -> bool:
        return self._body is not None

    def text(self, scope: str) -> str:
        if self._texts is None:
            self._texts = {}
        found = self._texts.get(scope)
        if found is None:
            found = self._texts[scope] = message_text(self.api, self.body(), scope)
        return found

    def prompt_chars(self) -> int:
        return len(self.text("all"))


# NOTE: msgspec raises UnicodeDecodeError for invalid UTF-8 in a string and RecursionError for
# JSON nested deeper than the interpreter's recursion limit.
_UNREADABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def _unreadable(exc: BaseException) -> GatewayError:
    """The 400 for a body that does not decode at all (`exc` is one of `_UNREADABLE`)."""
    if isinstance(exc, UnicodeDecodeError):
        return GatewayError(400, "request body is not valid UTF-8")
    if isinstance(exc, RecursionError):
        return GatewayError(400, "request body is nested too deeply")
    if isinstance(exc, msgspec.ValidationError):  # a number out of range, in an unrouted field
        return GatewayError(400, f"invalid request body: {exc}")
    return GatewayError(400, f"request body is not valid JSON: {exc}")


def _param(exc: msgspec.ValidationError) -> str | None:
    """The top-level parameter a validation error is about: ``... - at `$.tools[0].name` `` ->
    ``tools``; ``Object missing required field `max_tokens` `` -> ``max_tokens``."""
    text = str(exc)
    marker = "at `$."
    if marker in text:
        return text.split(marker, 1)[1].rstrip("`").split("[")[0].split(".")[0] or None
    missing = "missing required field `"
    if missing in text:
        return text.split(missing, 1)[1].split("`", 1)[0] or None
    return None
