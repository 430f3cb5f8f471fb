"""Transform pipelines: compiled edits of request and response bodies.

A pipeline is a tuple of steps per direction; each step is a frozen value with everything
compiled (regexes, JSONPaths, frozen values), so running one is a walk over the decoded body,
editing it in place::

    pipeline = compile_transform_pipeline("scrub", {"request": [
        {"op": "regex_replace", "pattern": "sk-[A-Za-z0-9]{20,}", "replacement": "[REDACTED]"},
        {"op": "drop", "path": "$.metadata"},
    ]})
    body = {"messages": [{"role": "user", "content": "key sk-abcdefghijklmnopqrstu"}]}
    apply_request_steps(pipeline.request, body, "openai.chat")   # -> True
    body["messages"][0]["content"]                                  # -> "key [REDACTED]"

``target: text`` means the message text of each API (see `request_text`, `response_text`,
`stream_text`); ``paths`` means the string values those JSONPaths select.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

from compiler.diagnostics import Diagnostic, Span
from compiler.jsonpath import (
    JsonPathCompileError,
    JsonPathPlan,
    compile_jsonpath,
    freeze_value,
    require_singular,
)

__all__ = [
    "REGEX_FLAGS",
    "AddStep",
    "DropStep",
    "RegexReplaceStep",
    "SetStep",
    "SpanAt",
    "Step",
    "TextRewriter",
    "TransformPipeline",
    "apply_request_steps",
    "apply_response_steps",
    "apply_stream_steps",
    "check_transform_pipeline",
    "compile_step",
    "compile_transform_pipeline",
    "request_text",
    "response_text",
    "stream_text",
]

REGEX_FLAGS: Final = {
    "ignorecase": re.IGNORECASE,
    "multiline": re.MULTILINE,
    "dotall": re.DOTALL,
    "verbose": re.VERBOSE,
}

Body = dict[str, Any]
TextRewriter = Callable[[Body, Callable[[str], str]], int]
"""Applies a string function to an API's text fields in place; returns how many changed."""

SpanAt = Callable[[str, int], Span]
"""Where character `offset` of the string at a JSON-path suffix (``"request[0].pattern"``) is."""


# --- steps ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegexReplaceStep:
    """Replace `pattern` by `replacement` (Python `re` syntax: ``\\1``, ``\\g<name>``) in the
    API's text (`target_text`) and in the strings `paths` select."""

    pattern: re.Pattern[str]
    replacement: str
    flags: tuple[str, ...] = ()
    target_text: bool = True
    paths: tuple[JsonPathPlan, ...] = ()
    stream_safe: bool = False
    op: Literal["regex_replace"] = field(default="regex_replace", init=False)

    def rewrite(self, text: str) -> str:
        """``text`` with every match replaced; the same object when nothing changed."""
        new = self.pattern.sub(self.replacement, text)
        return text if new == text else new

    def rewrite_value(self, value: Any) -> Any:
        return self.rewrite(value) if isinstance(value, str) else value

    def apply(self, body: Body, text: TextRewriter) -> bool:
        changed = text(body, self.rewrite) if self.target_text else 0
        for plan in self.paths:
            changed += plan.map_values(body, self.rewrite_value)
        return changed > 0


@dataclass(frozen=True, slots=True)
class DropStep:
    """Remove every node `path` selects."""

    path: JsonPathPlan
    stream_safe: bool = True
    op: Literal["drop"] = field(default="drop", init=False)

    def apply(self, body: Body, text: TextRewriter) -> bool:
        return self.path.drop(body) > 0


@dataclass(frozen=True, slots=True)
class SetStep:
    """Overwrite what `path` selects with `value` (frozen), or create the singular path."""

    path: JsonPathPlan
    value: Any
    stream_safe: bool = True
    op: Literal["set"] = field(default="set", init=False)

    def apply(self, body: Body, text: TextRewriter) -> bool:
        # NOTE: an overwrite with an equal value still counts as a change (conservative).
        return self.path.set(body, self.value) > 0


@dataclass(frozen=True, slots=True)
class AddStep:
    """Append `value` (frozen) to the array at `path`, or create it as ``[value]``."""

    path: JsonPathPlan
    value: Any
    stream_safe: bool = True
    op: Literal["add"] = field(default="add", init=False)

    def apply(self, body: Body, text: TextRewriter) -> bool:
        return self.path.add(body, self.value) > 0


Step = RegexReplaceStep | DropStep | SetStep | AddStep


@dataclass(frozen=True, slots=True)
class TransformPipeline:
    name: str
    request: tuple[Step, ...] = ()
    response: tuple[Step, ...] = ()


# --- compiling --------------------------------------------------------------------------------


def compile_transform_pipeline(name: str, spec: Mapping[str, Any]) -> TransformPipeline:
    """Lower a pipeline that `check_transform_pipeline` found no errors in."""
    return TransformPipeline(
        name=str(name),
        request=tuple(compile_step(step) for step in spec.get("request") or ()),
        response=tuple(compile_step(step) for step in spec.get("response") or ()),
    )


def compile_step(spec: Mapping[str, Any]) -> Step:
    """``compile_step({"op": "drop", "path": "$.metadata"}) -> DropStep(path=<$.metadata>)``."""
    op = spec["op"]
    if op == "regex_replace":
        flags = tuple(str(f) for f in spec.get("flags", ()))
        paths = tuple(compile_jsonpath(p) for p in spec.get("paths", ()))
        return RegexReplaceStep(
            pattern=re.compile(str(spec["pattern"]), _flag_bits(flags)),
            replacement=str(spec.get("replacement", "")),
            flags=flags,
            target_text=spec.get("target") == "text" or not paths,
            paths=paths,
            stream_safe=bool(spec.get("stream_safe", False)),
        )
    path = compile_jsonpath(spec["path"])
    stream_safe = bool(spec.get("stream_safe", True))
    if op == "drop":
        return DropStep(path, stream_safe)
    if op == "set":
        return SetStep(path, freeze_value(spec["value"]), stream_safe)
    if op == "add":
        return AddStep(path, freeze_value(spec["value"]), stream_safe)
    raise ValueError(f"unknown transform op {op!r}")


def _flag_bits(flags: Sequence[str]) -> int:
    bits = 0
    for name in flags:
        if name not in REGEX_FLAGS:
            raise ValueError(f"unknown regex flag {name!r}")
        bits |= REGEX_FLAGS[name]
    return bits


# --- checks -----------------------------------------------------------------------------------


def check_transform_pipeline(
    name: str,
    spec: Mapping[str, Any],
    span_for: Callable[[str], Span],
    *,
    span_at: SpanAt | None = None,
) -> list[Diagnostic]:
    """Every problem in pipeline `name`: ``regex.invalid``, ``jsonpath.invalid`` (both located
    at the offending character), ``jsonpath.unsupported`` and ``schema.type`` (a value that is
    not JSON). `span_for` maps a JSON-path suffix (``"request[0].pattern"``) to its Span.

    Inside-the-string positions default to ``span_for(suffix).shifted(offset)``, which is exact
    when `span_for` points at the first character of the string's content (inside the quotes of
    a quoted scalar) and the string has no escapes; pass `span_at` to map offsets otherwise.
    """

    def at(suffix: str, offset: int) -> Span:
        return span_at(suffix, offset) if span_at else span_for(suffix).shifted(offset)

    out: list[Diagnostic] = []
    for direction in ("request", "response"):
        for i, step in enumerate(spec.get(direction) or ()):
            out.extend(_check_step(step, f"{direction}[{i}]", span_for, at))
    return out


def _check_step(
    spec: Mapping[str, Any], base: str, span_for: Callable[[str], Span], at: SpanAt
) -> list[Diagnostic]:
    op = spec.get("op")
    if op == "regex_replace":
        out = _check_regex(spec, base, at)
        for j, path in enumerate(spec.get("paths", ())):
            plan, problems = _check_path(path, f"{base}.paths[{j}]", at)
            out.extend(problems)
        return out
    if "path" not in spec:
        return []
    plan, out = _check_path(spec["path"], f"{base}.path", at)
    if plan is not None:
        reason = require_singular(plan) if op in ("set", "add") else None
        if op == "drop" and plan.singular and not plan.segments:
            reason = "drop cannot remove the whole document '$'"
        if reason:
            out.append(Diagnostic("jsonpath.unsupported", reason, span_for(f"{base}.path")))
    if op in ("set", "add") and "value" in spec:
        try:
            freeze_value(spec["value"])
        except TypeError as exc:
            message = f"{op} value is not JSON ({exc})"
            out.append(Diagnostic("schema.type", message, span_for(f"{base}.value")))
    return out


def _check_regex(spec: Mapping[str, Any], base: str, at: SpanAt) -> list[Diagnostic]:
    bits = 0
    for flag in spec.get("flags", ()):
        bits |= REGEX_FLAGS.get(str(flag), 0)  # NOTE: unknown flags are the schema's to report
    try:
        pattern = re.compile(str(spec.get("pattern", "")), bits)
    except re.error as exc:
        message = f"invalid regular expression: {exc.msg}"
        return [Diagnostic("regex.invalid", message, at(f"{base}.pattern", exc.pos or 0))]
    replacement = str(spec.get("replacement", ""))
    try:
        # NOTE: `sub` parses the template (group references included) even on an empty string.
        pattern.sub(replacement, "")
    except re.error as exc:
        message = f"invalid replacement: {exc.msg}"
        return [Diagnostic("regex.invalid", message, at(f"{base}.replacement", exc.pos or 0))]
    except IndexError as exc:  # an unknown \g<name>
        message = f"invalid replacement: {exc}"
        offset = max(replacement.find("\\g<"), 0)
        return [Diagnostic("regex.invalid", message, at(f"{base}.replacement", offset))]
    return []


def _check_path(path: Any, suffix: str, at: SpanAt) -> tuple[JsonPathPlan | None, list[Diagnostic]]:
    try:
        return compile_jsonpath(str(path)), []
    except JsonPathCompileError as exc:
        message = f"invalid JSONPath: {exc.message}"
        return None, [Diagnostic("jsonpath.invalid", message, at(suffix, exc.offset))]


# --- running ----------------------------------------------------------------------------------


def apply_request_steps(steps: Sequence[Step], body: Body, api: str) -> bool:
    """Run `steps` on a decoded request body of `api` in place; True when anything changed."""
    return _apply(steps, body, request_text(api), stream_only=False)


def apply_response_steps(steps: Sequence[Step], body: Body, api: str) -> bool:
    """Run `steps` on a decoded (non-streamed) response body of `api` in place."""
    return _apply(steps, body, response_text(api), stream_only=False)


def apply_stream_steps(steps: Sequence[Step], event: Body, api: str) -> bool:
    """Run the `stream_safe` steps on one decoded stream chunk (OpenAI) or event (Anthropic)."""
    return _apply(steps, event, stream_text(api), stream_only=True)


def _apply(steps: Sequence[Step], body: Body, text: TextRewriter, *, stream_only: bool) -> bool:
    changed = False
    for step in steps:
        if step.stream_safe or not stream_only:
            changed = step.apply(body, text) or changed
    return changed


def request_text(api: str) -> TextRewriter:
    """The text of a request: OpenAI chat ``messages[*].content`` (string or ``text`` parts),
    completions ``prompt``, embeddings ``input`` (string or list of strings), Anthropic
    ``system`` and ``messages[*].content`` (string or ``text`` blocks; never tool inputs),
    Responses ``instructions`` and ``input`` (a string, or the text parts of message items and
    function call outputs)."""
    return _REQUEST_TEXT[api]


def response_text(api: str) -> TextRewriter:
    """The generated text of a response: OpenAI chat ``choices[*].message.content``,
    completions ``choices[*].text``, Anthropic ``content[*].text`` of ``text`` blocks, Responses
    ``output[*].content[*].text`` of ``output_text`` parts."""
    return _RESPONSE_TEXT[api]


def stream_text(api: str) -> TextRewriter:
    """The text of one stream chunk: OpenAI ``choices[*].delta.content`` / ``choices[*].text``,
    Anthropic ``delta.text`` of a ``content_block_delta`` (and a text block's start), Responses
    ``delta`` of ``response.output_text.delta`` (and the text the later events repeat)."""
    return _STREAM_TEXT[api]


def _sub_key(obj: Any, key: str, fn: Callable[[str], str]) -> int:
    """Rewrite ``obj[key]`` when `obj` is an object holding a string there."""
    if isinstance(obj, dict):
        old = obj.get(key)
        if isinstance(old, str):
            new = fn(old)
            if new != old:
                obj[key] = new
                return 1
    return 0


def _sub_strings(obj: Any, key: str, fn: Callable[[str], str]) -> int:
    """``obj[key]`` as a string or a list of strings (token arrays are left alone)."""
    if not isinstance(obj, dict):
        return 0
    value = obj.get(key)
    if not isinstance(value, list):
        return _sub_key(obj, key, fn)
    changed = 0
    for i, old in enumerate(value):
        if isinstance(old, str):
            new = fn(old)
            if new != old:
                value[i] = new
                changed += 1
    return changed


def _sub_content(obj: Any, key: str, fn: Callable[[str], str]) -> int:
    """``obj[key]`` as a string or a list of blocks, of which only ``text`` blocks are text."""
    if not isinstance(obj, dict):
        return 0
    value = obj.get(key)
    if isinstance(value, str):
        return _sub_key(obj, key, fn)
    return _sub_blocks(value, fn)


def _sub_blocks(blocks: Any, fn: Callable[[str], str]) -> int:
    if not isinstance(blocks, list):
        return 0
    return sum(
        _sub_key(block, "text", fn)
        for block in blocks
        if isinstance(block, dict) and block.get("type") == "text"
    )


def _items(obj: Any, key: str) -> list[Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, list) else []


def _chat_request(body: Body, fn: Callable[[str], str]) -> int:
    return sum(_sub_content(m, "content", fn) for m in _items(body, "messages"))


def _anthropic_request(body: Body, fn: Callable[[str], str]) -> int:
    return _sub_content(body, "system", fn) + _chat_request(body, fn)


def _chat_response(body: Body, fn: Callable[[str], str]) -> int:
    return sum(
        _sub_content(c.get("message"), "content", fn)
        for c in _items(body, "choices")
        if isinstance(c, dict)
    )


def _completion_choices(body: Body, fn: Callable[[str], str]) -> int:
    return sum(_sub_key(c, "text", fn) for c in _items(body, "choices"))


def _anthropic_response(body: Body, fn: Callable[[str], str]) -> int:
    return _sub_blocks(body.get("content"), fn)


def _chat_chunk(event: Body, fn: Callable[[str], str]) -> int:
    return sum(
        _sub_key(c.get("delta"), "content", fn)
        for c in _items(event, "choices")
        if isinstance(c, dict)
    )


def _anthropic_event(event: Body, fn: Callable[[str], str]) -> int:
    kind = event.get("type")
    if kind == "content_block_delta":
        delta = event.get("delta")
        if isinstance(delta, dict) and delta.get("type", "text_delta") == "text_delta":
            return _sub_key(delta, "text", fn)
    elif kind == "content_block_start":
        block = event.get("content_block")
        if isinstance(block, dict) and block.get("type") == "text":
            return _sub_key(block, "text", fn)
    return 0


def _no_text(body: Body, fn: Callable[[str], str]) -> int:
    return 0


_RESPONSES_TEXT_PARTS = frozenset({"input_text", "output_text"})


def _sub_parts(obj: Any, key: str, fn: Callable[[str], str]) -> int:
    """``obj[key]`` as a string or a list of Responses parts (``input_text``, ``output_text``)."""
    if not isinstance(obj, dict):
        return 0
    value = obj.get(key)
    if isinstance(value, str):
        return _sub_key(obj, key, fn)
    parts = value if isinstance(value, list) else ()
    return sum(
        _sub_key(part, "text", fn)
        for part in parts
        if isinstance(part, dict) and part.get("type") in _RESPONSES_TEXT_PARTS
    )


def _responses_request(body: Body, fn: Callable[[str], str]) -> int:
    changed = _sub_key(body, "instructions", fn)
    if isinstance(body.get("input"), str):
        return changed + _sub_key(body, "input", fn)
    for item in _items(body, "input"):
        if isinstance(item, dict) and item.get("type") == "function_call_output":
            changed += _sub_parts(item, "output", fn)
        elif isinstance(item, dict) and item.get("type", "message") == "message":
            changed += _sub_parts(item, "content", fn)
    return changed


def _responses_output(output: Any, fn: Callable[[str], str]) -> int:
    items = output if isinstance(output, list) else ()
    return sum(_sub_parts(item, "content", fn) for item in items if isinstance(item, dict))


def _responses_response(body: Body, fn: Callable[[str], str]) -> int:
    return _responses_output(body.get("output"), fn)


def _responses_event(event: Body, fn: Callable[[str], str]) -> int:
    """Every place a Responses stream repeats the text: deltas, the ``.done`` events, the
    finished items and the final response, so they stay consistent with each other."""
    kind = event.get("type")
    if kind == "response.output_text.delta":
        return _sub_key(event, "delta", fn)
    if kind == "response.output_text.done":
        return _sub_key(event, "text", fn)
    if kind in ("response.content_part.added", "response.content_part.done"):
        part = event.get("part")
        return _sub_parts({"content": [part]}, "content", fn)
    if kind in ("response.output_item.added", "response.output_item.done"):
        return _responses_output([event.get("item")], fn)
    response = event.get("response")
    return _responses_output(response.get("output"), fn) if isinstance(response, dict) else 0


_REQUEST_TEXT: Final[Mapping[str, TextRewriter]] = MappingProxyType(
    {
        "openai.chat": _chat_request,
        "openai.completions": lambda body, fn: _sub_strings(body, "prompt", fn),
        "openai.embeddings": lambda body, fn: _sub_strings(body, "input", fn),
        "openai.responses": _responses_request,
        "anthropic.messages": _anthropic_request,
        "anthropic.count_tokens": _anthropic_request,
    }
)
_RESPONSE_TEXT: Final[Mapping[str, TextRewriter]] = MappingProxyType(
    {
        "openai.chat": _chat_response,
        "openai.completions": _completion_choices,
        "openai.embeddings": _no_text,
        "openai.responses": _responses_response,
        "anthropic.messages": _anthropic_response,
        "anthropic.count_tokens": _no_text,
    }
)
_STREAM_TEXT: Final[Mapping[str, TextRewriter]] = MappingProxyType(
    {
        "openai.chat": _chat_chunk,
        "openai.completions": _completion_choices,
        "openai.embeddings": _no_text,
        "openai.responses": _responses_event,
        "anthropic.messages": _anthropic_event,
        "anthropic.count_tokens": _no_text,
    }
)
