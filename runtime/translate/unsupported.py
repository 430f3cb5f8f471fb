"""Request fields a target protocol has no counterpart for, and when they are refused.

A field is refused (`TranslationError`, droppable, so a route with ``drop_unsupported`` removes
it instead) only when its value asks the target for something: ``logprobs: false``,
``frequency_penalty: 0`` or ``tool_choice: "auto"`` ask nothing and are dropped, since the answer
is the same without them. Fields that never change the answer (``seed``, ``metadata``,
``service_tier``, ...) are not listed here: the translators leave them out, and the README's
"Across protocols" table says why. Example::

    >>> check_request({"logprobs": True}, CHAT_TO_ANTHROPIC)
    Traceback (most recent call last):
    runtime.translate.TranslationError: this upstream has no log probabilities: remove logprobs...

`refuse_unsupported` wraps a request translator so that the check runs first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from runtime.translate import TranslationError

__all__ = [
    "CHAT_TO_ANTHROPIC",
    "CHAT_TO_GIGACHAT",
    "CHAT_TO_OLLAMA",
    "COMPLETIONS_TO_ANTHROPIC",
    "COMPLETIONS_TO_OLLAMA",
    "EMBEDDINGS_TO_GIGACHAT",
    "MESSAGES_TO_CHAT",
    "RESPONSES_TO_CHAT",
    "Unsupported",
    "check_request",
    "refuse_unsupported",
    "translate_dropping",
]

Body = dict[str, Any]


def _unset(value: object) -> bool:
    return value is None or value is False or value == 0 or value == "" or value in ([], {})


def _none(value: object) -> bool:
    return value is None


def _allowed(value: object) -> bool:
    return value is None or value is True


def _one_of(*idle: object) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        return _unset(value) or value in idle

    return check


def _chooses_nothing(choice: object) -> bool:
    """``auto``, ``none``, or ``allowed_tools`` in ``auto`` mode (the translator offers only
    the allowed tools)."""
    if isinstance(choice, Mapping) and choice.get("type") == "allowed_tools":
        spec = choice.get("allowed_tools")
        return isinstance(spec, Mapping) and spec.get("mode", "auto") == "auto"
    return _unset(choice) or choice in ("auto", "none")


def _function_tool(tool: object) -> bool:
    return isinstance(tool, Mapping) and tool.get("type", "function") == "function"


def _client_tool(tool: object) -> bool:
    """An Anthropic tool the caller runs (it has an ``input_schema``), not a server tool."""
    return isinstance(tool, Mapping) and isinstance(tool.get("input_schema"), Mapping)


@dataclass(frozen=True, slots=True)
class Unsupported:
    """`param` has no counterpart upstream (`lacks` says what is missing); values for which
    `idle` is true ask nothing of the target. With `each`, every element of the list is
    checked and the refusal names it (``tools[1]``)."""

    param: str
    lacks: str
    idle: Callable[[object], bool] = _unset
    each: bool = False


def check_request(body: Mapping[str, Any], rules: tuple[Unsupported, ...]) -> None:
    """Raise a droppable `TranslationError` for the first field of `body` that asks the target
    for something it lacks."""
    for rule in rules:
        value = body.get(rule.param)
        if rule.each and isinstance(value, list):
            for i, item in enumerate(value):
                if not rule.idle(item):
                    _refuse(rule, f"{rule.param}[{i}]")
        elif value is not None and not rule.each and not rule.idle(value):
            _refuse(rule, rule.param)


def _refuse(rule: Unsupported, param: str) -> None:
    raise TranslationError(
        f"this upstream has {rule.lacks}: remove {param}, or route with drop_unsupported: true",
        param=param,
        droppable=True,
    )


def refuse_unsupported(
    rules: tuple[Unsupported, ...], translate: Callable[[Body], Body]
) -> Callable[[Body], Body]:
    """`translate`, after `check_request` with `rules`."""

    def run(body: Body) -> Body:
        check_request(body, rules)
        return translate(body)

    return run


_PARAM = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\]|\.([A-Za-z_][A-Za-z0-9_]*))?")


def translate_dropping(
    translate: Callable[[Body], Body], body: Mapping[str, Any]
) -> tuple[Body, tuple[str, ...]]:
    """`translate` the body, removing each parameter it refuses as droppable (a top-level field,
    one element of a top-level list, or one key of a top-level object: ``text.verbosity``) and
    translating again. Returns the translation and the removed parameters as the client named
    them. A refusal that is not droppable is raised.

    Example: with `translate` refusing ``top_k`` and then ``tools[1]``, ``{"top_k": 5, "tools":
    [a, b, c]}`` is translated as ``{"tools": [a, c]}`` and ``("top_k", "tools[1]")`` returned.
    """
    current = dict(body)
    dropped: list[str] = []
    origins: dict[str, list[int]] = {}  # a list field -> the client's indices still in it
    while True:
        try:
            return translate(current), tuple(dropped)
        except TranslationError as exc:
            match = _PARAM.fullmatch(exc.param or "")
            if not exc.droppable or match is None or match[1] not in current:
                raise
            name = match[1]
            if match[3] is not None:
                current[name] = _without(current[name], match[3], exc)
                dropped.append(f"{name}.{match[3]}")
                continue
            if match[2] is None:
                del current[name]
                dropped.append(name)
                continue
            items, i = current[name], int(match[2])
            if not isinstance(items, list) or i >= len(items):
                raise
            origin = origins.setdefault(name, list(range(len(items))))
            dropped.append(f"{name}[{origin.pop(i)}]")
            current[name] = items[:i] + items[i + 1 :]


def _without(value: object, key: str, refusal: TranslationError) -> dict[str, Any]:
    """A copy of the object `value` without `key` (the client's body is left alone)."""
    if not isinstance(value, Mapping) or key not in value:
        raise refusal
    return {k: v for k, v in value.items() if k != key}


_PENALTIES = (
    Unsupported("frequency_penalty", "no frequency penalty"),
    Unsupported("presence_penalty", "no presence penalty"),
)
_LOGIT_BIAS = Unsupported("logit_bias", "no logit bias")

# what only OpenAI's chat completions can do
_OPENAI_CHAT_ONLY = (
    _LOGIT_BIAS,
    Unsupported("logprobs", "no log probabilities"),
    Unsupported("top_logprobs", "no log probabilities"),
    Unsupported("audio", "no audio output", _none),
    Unsupported("modalities", "no audio output", _one_of(["text"])),
    Unsupported("web_search_options", "no OpenAI web search", _none),
    Unsupported("verbosity", "no verbosity setting", _one_of("medium")),
    Unsupported("functions", "no legacy functions (send them as tools)"),
    Unsupported("function_call", "no legacy functions (send tool_choice)", _one_of("auto", "none")),
    Unsupported("tools", "only function tools", _function_tool, each=True),
)

CHAT_TO_ANTHROPIC = (*_OPENAI_CHAT_ONLY, *_PENALTIES)
CHAT_TO_OLLAMA = (
    *_OPENAI_CHAT_ONLY,
    Unsupported("tool_choice", "no tool_choice (the model decides)", _chooses_nothing),
    Unsupported("parallel_tool_calls", "no way to forbid parallel tool calls", _allowed),
)
CHAT_TO_GIGACHAT = (
    *_OPENAI_CHAT_ONLY,
    *_PENALTIES,
    Unsupported("stop", "no stop sequences"),
)

_COMPLETIONS_ONLY = (
    _LOGIT_BIAS,
    Unsupported("logprobs", "no log probabilities", _none),
    Unsupported("echo", "no echo of the prompt"),
    Unsupported("best_of", "no best_of sampling", _one_of(1)),
)
COMPLETIONS_TO_ANTHROPIC = (
    *_COMPLETIONS_ONLY,
    *_PENALTIES,
    Unsupported("suffix", "no suffix (fill-in-the-middle)"),
)
COMPLETIONS_TO_OLLAMA = _COMPLETIONS_ONLY

EMBEDDINGS_TO_GIGACHAT = (Unsupported("dimensions", "no dimensions setting", _none),)

# what only Anthropic's messages API can do
MESSAGES_TO_CHAT = (
    Unsupported("container", "no Anthropic code-execution container", _none),
    Unsupported("mcp_servers", "no Anthropic MCP connector"),
    Unsupported("context_management", "no Anthropic context management", _none),
    Unsupported("inference_geo", "no inference region to honour", _none),
    Unsupported("tools", "no Anthropic server tools", _client_tool, each=True),
)

_LOGPROBS_INCLUDE = "message.output_text.logprobs"

# what only OpenAI's own Responses service can do, for every other upstream (the request goes on
# as chat, whose rules above then apply to what it becomes)
RESPONSES_TO_CHAT = (
    Unsupported("prompt", "no stored prompt templates (OpenAI keeps them)", _none),
    Unsupported(
        "include",
        "no log probabilities in Responses answers",
        lambda item: item != _LOGPROBS_INCLUDE,
        each=True,
    ),
)
