"""OpenAI chat completion chunks -> the Responses API's stream events, in the documented order::

    response.created, response.in_progress                     (first chunk)
    response.output_item.added (message), response.content_part.added,
        response.output_text.delta ...                         (text)
    response.output_text.done, response.content_part.done,
        response.output_item.done                              (text ends: a tool call or the end)
    response.output_item.added (function_call),
        response.function_call_arguments.delta ...             (each tool call)
    response.function_call_arguments.done, response.output_item.done   (end)
    response.completed | response.incomplete                   (end, with the whole response)
    error                                                      (an upstream error chunk; last)

Every event carries ``sequence_number`` (0, 1, 2, ...); item ids and the final ``response``
equal what `runtime.translate.responses.chat_to_response` makes of the same answer whole.
Example: ``feed({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "Hi"}}]})``
-> ``[("response.created", ...), ("response.in_progress", ...), ("response.output_item.added",
...), ("response.content_part.added", ...), ("response.output_text.delta", {..., "delta":
"Hi"})]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.translate.common import now
from runtime.translate.errors import to_openai_error
from runtime.translate.responses import (
    chat_usage_to_responses,
    function_call_item,
    message_item,
    output_text_part,
    response_base,
    response_object,
)

__all__ = ["ChatToResponsesStream", "responses_error_event"]

Event = tuple[str, dict[str, Any]]


def responses_error_event(error: Mapping[str, Any], sequence: int) -> dict[str, Any]:
    """A Responses ``error`` event from an OpenAI error body's ``error`` object."""
    return {
        "type": "error",
        "code": error.get("code") or error.get("type"),
        "message": error.get("message") or "upstream error",
        "param": error.get("param"),
        "sequence_number": sequence,
    }


class ChatToResponsesStream:
    """One chat stream (decoded chunks, without ``[DONE]``) -> Responses events.

    Tool-call items stay open until the end, so a late argument delta still lands in its own
    item; the text item closes when a tool call starts (text after that opens a new one).
    """

    __slots__ = (
        "_args",
        "_base",
        "_created",
        "_done",
        "_finish_reason",
        "_last_call_id",
        "_last_key",
        "_model",
        "_output",
        "_seq",
        "_text",
        "_text_index",
        "_tools",
        "_usage",
    )

    def __init__(self, model: str) -> None:
        self._model = model
        self._base: str | None = None
        self._created = 0
        self._seq = 0
        self._done = False
        self._output: list[dict[str, Any]] = []
        self._text_index: int | None = None
        self._text: list[str] = []
        self._tools: dict[int, int] = {}  # chat tool-call index -> output index
        self._args: dict[int, list[str]] = {}  # output index -> argument pieces
        self._last_key: int | None = None
        self._last_call_id: str | None = None
        self._finish_reason: str | None = None
        self._usage: Mapping[str, Any] | None = None

    @property
    def sequence(self) -> int:
        """The sequence number the next event gets."""
        return self._seq

    def feed(self, chunk: Mapping[str, Any]) -> list[Event]:
        """Translate one chat chunk."""
        if self._done:
            return []
        if chunk.get("error"):
            self._done = True
            error = to_openai_error(chunk)["error"]
            return [("error", responses_error_event(error, self._next()))]
        out = self._start(chunk)
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self._usage = usage
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            for key in ("content", "refusal"):
                text = delta.get(key)
                if isinstance(text, str) and text:
                    out.extend(self._text_delta(text))
            for call in delta.get("tool_calls") or ():
                if isinstance(call, Mapping):
                    out.extend(self._tool_delta(call))
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return out

    def finish(self) -> list[Event]:
        """End of the chat stream: close every item, then ``response.completed`` (or
        ``response.incomplete`` after ``finish_reason`` ``length`` / ``content_filter``)."""
        if self._done:
            return []
        self._done = True
        out = self._start({})
        out.extend(self._close_text())
        for index in sorted(self._args):
            out.extend(self._close_tool(index))
        response = self._response(None)
        name = f"response.{response['status']}"
        out.append(self._event(name, response=response))
        return out

    # --- events -------------------------------------------------------------------------

    def _next(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq

    def _event(self, kind: str, /, **fields: Any) -> Event:
        return (kind, {"type": kind, "sequence_number": self._next(), **fields})

    def _start(self, chunk: Mapping[str, Any]) -> list[Event]:
        if self._base is not None:
            return []
        self._base = response_base(chunk.get("id"))
        created = chunk.get("created")
        self._created = created if isinstance(created, int) else now()
        response = self._response("in_progress")
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
        ]

    def _response(self, status: str | None) -> dict[str, Any]:
        base = self._base or ""
        usage = chat_usage_to_responses(self._usage) if self._usage is not None else None
        return response_object(
            base,
            model=self._model,
            created=self._created,
            output=[] if status == "in_progress" else list(self._output),
            usage=None if status == "in_progress" else usage,
            finish_reason=self._finish_reason,
            status=status,
        )

    def _text_delta(self, text: str) -> list[Event]:
        out: list[Event] = []
        index = self._text_index
        if index is None:
            index = self._text_index = len(self._output)
            item = message_item(self._base or "", index, "", status="in_progress")
            self._output.append(item)
            self._text = []
            out.append(self._event("response.output_item.added", output_index=index, item=item))
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=output_text_part(""),
                )
            )
        self._text.append(text)
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=self._output[index]["id"],
                output_index=index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def _close_text(self) -> list[Event]:
        index = self._text_index
        if index is None:
            return []
        self._text_index = None
        text = "".join(self._text)
        item = self._output[index] = message_item(self._base or "", index, text)
        ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
        return [
            self._event("response.output_text.done", **ids, text=text, logprobs=[]),
            self._event("response.content_part.done", **ids, part=output_text_part(text)),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _tool_delta(self, call: Mapping[str, Any]) -> list[Event]:
        key = call.get("index")
        call_id = call.get("id")
        if not isinstance(key, int):
            # NOTE: some OpenAI-compatible servers omit the index; a new id means a new call.
            fresh = self._last_key is None or (
                call_id is not None and call_id != self._last_call_id
            )
            key = len(self._tools) if fresh or self._last_key is None else self._last_key
        self._last_key = key
        if isinstance(call_id, str):
            self._last_call_id = call_id
        function = call.get("function") or {}
        out: list[Event] = []
        index = self._tools.get(key)
        if index is None:
            out.extend(self._close_text())
            index = self._tools[key] = len(self._output)
            item = function_call_item(
                self._base or "",
                index,
                call_id if isinstance(call_id, str) else "",
                function.get("name") or "",
                "",
                status="in_progress",
            )
            self._output.append(item)
            self._args[index] = []
            out.append(self._event("response.output_item.added", output_index=index, item=item))
        elif function.get("name") and not self._output[index]["name"]:
            self._output[index]["name"] = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self._args[index].append(arguments)
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=self._output[index]["id"],
                    output_index=index,
                    delta=arguments,
                )
            )
        return out

    def _close_tool(self, index: int) -> list[Event]:
        opened = self._output[index]
        arguments = "".join(self._args[index])
        item = self._output[index] = function_call_item(
            self._base or "", index, opened["call_id"], opened["name"], arguments
        )
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=arguments,
            ),
            self._event("response.output_item.done", output_index=index, item=item),
        ]
