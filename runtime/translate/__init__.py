"""Pure protocol translation between the OpenAI, Anthropic, Ollama and GigaChat HTTP APIs.

Everything here works on JSON-decoded bodies (plain dicts) and never does I/O:

- `runtime.translate.anthropic`: OpenAI chat/completions <-> Anthropic messages (requests,
  responses), plus token estimation for ``count_tokens``.
- `runtime.translate.anthropic_stream`: the streaming translators, also importable from
  `runtime.translate.anthropic`.
- `runtime.translate.ollama`: OpenAI chat/completions/embeddings <-> Ollama's native API.
- `runtime.translate.gigachat`: OpenAI chat/embeddings <-> GigaChat (functions, not tools).
- `runtime.translate.responses`: the Responses API <-> OpenAI chat (requests, whole answers);
  `runtime.translate.responses_stream`: chat chunks -> Responses stream events.
- `runtime.translate.errors`: error bodies of each API and converters between them.
- `runtime.translate.common`: helpers shared by the above (data URLs, tool arguments, chunks).

A request that cannot be expressed for the target API raises `TranslationError`; the caller answers
it as a client error (HTTP 400, ``invalid_request_error``), naming `param`.
"""

from __future__ import annotations

__all__ = ["TranslationError"]


class TranslationError(ValueError):
    """A request that the target API cannot express, e.g. an http image URL for Ollama.

    ``param`` is the offending JSON path in the client's body (``messages[2].content[0]``).
    ``droppable``: the request would still make sense without ``param`` (a top-level field, or
    one element of a top-level list such as ``tools[1]``), so a route with ``drop_unsupported``
    may remove it and translate again instead of refusing.
    """

    def __init__(self, message: str, *, param: str | None = None, droppable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.droppable = droppable
