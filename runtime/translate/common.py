"""Small helpers shared by the translators: data URLs, tool arguments, text of content, ids, and
`OpenAIChunkStream`, the base of the stream translators that emit OpenAI chunks.

All functions take and return plain JSON values. Example::

    >>> parse_data_url("data:image/png;base64,iVBO")
    ('image/png', 'iVBO')
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from runtime.translate import TranslationError

__all__ = [
    "OpenAIChunkStream",
    "chat_chunk",
    "dump_arguments",
    "embeddings_as_base64",
    "narrow_allowed_tools",
    "new_id",
    "now",
    "one_choice",
    "parse_arguments",
    "parse_data_url",
    "single_prompt",
    "text_of",
    "usage_chunk",
]


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:<media>[;params][;base64],<data>`` -> (media type, base64 data), None if not one.

    A percent-encoded (non-base64) payload is re-encoded as base64. Example:
    ``parse_data_url("data:text/plain,hi")`` -> ``("text/plain", "aGk=")``.
    """
    if not url.startswith("data:"):
        return None
    head, sep, payload = url[5:].partition(",")
    if not sep:
        return None
    params = head.split(";")
    media_type = params[0].strip() or "text/plain"
    if "base64" in (p.strip().lower() for p in params[1:]):
        return media_type, payload
    return media_type, base64.b64encode(unquote_to_bytes(payload)).decode("ascii")


def parse_arguments(raw: object) -> dict[str, Any]:
    """Tool-call arguments (a JSON string from OpenAI) -> the object Anthropic and Ollama expect.

    NOTE: models sometimes emit truncated or non-object arguments that clients echo back in the
    history; those become ``{}`` so the conversation can go on instead of failing upstream.
    Example: ``parse_arguments('{"city": "Paris"}')`` -> ``{"city": "Paris"}``.
    """
    if isinstance(raw, Mapping):
        return dict(raw)
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def dump_arguments(value: object) -> str:
    """Tool input object -> OpenAI's arguments string.

    Example: ``dump_arguments({"a": 1})`` -> ``'{"a": 1}'``.
    """
    if isinstance(value, str):
        return value
    return json.dumps(value if value is not None else {}, ensure_ascii=False)


def text_of(content: object) -> str:
    """The concatenated text of a string or of a list of text parts/blocks; other parts ignored.

    Example: ``text_of([{"type": "text", "text": "a"}, {"type": "image_url"}])`` -> ``"a"``.
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts: list[str] = []
    for part in content:
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type", "text")
        value = part.get("refusal") if kind == "refusal" else part.get("text")
        if kind in ("text", "refusal") and isinstance(value, str):
            texts.append(value)
    return "".join(texts)


def new_id(prefix: str) -> str:
    """A fresh random id for a body that came without one: ``new_id("msg_")`` -> ``"msg_3f.."``."""
    return prefix + uuid.uuid4().hex


def now() -> int:
    """Unix seconds, for the ``created`` field when the caller did not pass one."""
    return int(time.time())


def single_prompt(body: Mapping[str, Any]) -> str:
    """The prompt of a legacy completions body, which must be one string (or a list of one).

    Batches and token-id prompts have no counterpart upstream and raise `TranslationError`.
    Example: ``single_prompt({"prompt": ["Hi"]})`` -> ``"Hi"``.
    """
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if isinstance(prompt, str):
        return prompt
    raise TranslationError("prompt must be a single string for this upstream", param="prompt")


def one_choice(body: Mapping[str, Any]) -> None:
    """Refuse ``n`` above 1 for an upstream that gives one answer per request: the client would
    otherwise get one choice where it asked for several. ``one_choice({"n": 2})`` raises
    `TranslationError` naming ``n``."""
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        raise TranslationError(
            "this upstream gives one answer per request: n must be 1", param="n", droppable=True
        )


def chat_chunk(
    chunk_id: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    *,
    include_usage: bool = False,
) -> dict[str, Any]:
    """One OpenAI ``chat.completion.chunk`` with a single choice.

    Example: ``chat_chunk("c1", 0, "m", {"content": "Hi"})`` -> ``{"id": "c1", "object":
    "chat.completion.chunk", "created": 0, "model": "m", "choices": [{"index": 0, "delta":
    {"content": "Hi"}, "logprobs": None, "finish_reason": None}]}``.
    """
    chunk: dict[str, Any] = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if include_usage:
        # NOTE: with include_usage, OpenAI sends "usage": null on every chunk but the last.
        chunk["usage"] = None
    return chunk


def usage_chunk(
    chunk_id: str,
    created: int,
    model: str,
    usage: dict[str, Any],
    *,
    object: str = "chat.completion.chunk",
) -> dict[str, Any]:
    """The final ``include_usage`` chunk: empty ``choices`` and the whole request's usage."""
    return {
        "id": chunk_id,
        "object": object,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }


class OpenAIChunkStream:
    """What the stream translators that emit OpenAI chunks share: the fields every chunk repeats
    (id, created, model), whether the client asked for usage, and whether the stream has started
    (role chunk sent) or is done (nothing more is sent).

    A subclass adds ``feed``; `finish` owes nothing unless overridden. Example:
    ``OpenAIChunkStream("m", include_usage=False, created=0, chunk_id="c1")._start()`` ->
    ``[{"id": "c1", ..., "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
    "logprobs": None, "finish_reason": None}]}]``, and ``[]`` when called again.
    """

    __slots__ = ("_chunk_id", "_created", "_done", "_include_usage", "_model", "_started")

    def __init__(self, model: str, *, include_usage: bool, created: int, chunk_id: str) -> None:
        self._model = model
        self._include_usage = include_usage
        self._created = created
        self._chunk_id = chunk_id
        self._started = False
        self._done = False

    def finish(self) -> list[dict[str, Any]]:
        """End of the upstream stream; nothing more is owed."""
        self._done = True
        return []

    def _start(self) -> list[dict[str, Any]]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return chat_chunk(
            self._chunk_id,
            self._created,
            self._model,
            delta,
            finish_reason,
            include_usage=self._include_usage,
        )

    def _usage_chunk(
        self, usage: dict[str, Any], *, object: str = "chat.completion.chunk"
    ) -> dict[str, Any]:
        return usage_chunk(self._chunk_id, self._created, self._model, usage, object=object)


def text_embedding_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model`` and ``input`` of an OpenAI embeddings body whose input is text (a string or
    a list of strings); token-id input cannot be sent to a text-only API and raises
    `TranslationError`. ``{"model": "e", "input": ["a"], "user": "u"}`` ->
    ``{"model": "e", "input": ["a"]}``.
    """
    value = body.get("input")
    texts = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not (isinstance(value, str) or texts):
        raise TranslationError("input must be a string or a list of strings", param="input")
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    out["input"] = value
    return out


def embeddings_as_base64(resp: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI embeddings list with each float vector as OpenAI sends it for
    ``encoding_format: base64``: little-endian float32 bytes, base64-encoded (in place).

    Example: ``{"data": [{"embedding": [0.5], ...}], ...}`` -> ``{"data": [{"embedding":
    "AAAAPw==", ...}], ...}``.
    """
    items = resp.get("data")
    for item in items if isinstance(items, list) else ():
        vector = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(vector, list):
            try:
                packed = struct.pack(f"<{len(vector)}f", *vector)
            except struct.error:
                raise ValueError("an embedding that is not a list of numbers") from None
            item["embedding"] = base64.b64encode(packed).decode("ascii")
    return resp


def narrow_allowed_tools(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """A chat body whose ``tool_choice`` is ``allowed_tools``, for a protocol without it: only
    the allowed tools are offered and ``tool_choice`` is the mode. Other bodies are returned as
    they are. Example: ``{"tools": [f, g], "tool_choice": {"type": "allowed_tools",
    "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name":
    "g"}}]}}}`` -> ``{"tools": [g], "tool_choice": "required"}``. Without a ``tools`` list the
    allowed set is not narrowed.
    """
    choice = body.get("tool_choice")
    if not isinstance(choice, Mapping) or choice.get("type") != "allowed_tools":
        return body
    spec = choice.get("allowed_tools")
    spec = spec if isinstance(spec, Mapping) else {}
    mode = spec.get("mode") if spec.get("mode") in ("auto", "required") else "auto"
    out = {**body, "tool_choice": mode}
    allowed, tools = spec.get("tools"), body.get("tools")
    if isinstance(allowed, list) and isinstance(tools, list):
        names = {_function_name(tool) for tool in allowed} - {None}
        out["tools"] = [tool for tool in tools if _function_name(tool) in names]
    return out


def _function_name(tool: object) -> str | None:
    function = tool.get("function") if isinstance(tool, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    return name if isinstance(name, str) else None
