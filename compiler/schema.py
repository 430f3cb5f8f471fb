"""JSON Schema validation of a loaded `Document`, with every error located in the source.

The schema ships inside the package (`compiler/schema/interlock.schema.json`, the same file as
`schemas/interlock.schema.json`). Each jsonschema error becomes a `Diagnostic` with code
``schema.<keyword>``; an unknown key is reported at the key itself with a did-you-mean hint::

    validate_schema(doc) -> [Diagnostic("schema.additionalProperties",
                              "unknown key 'base_ur'", Span(f, 5, 5, "$.upstreams.openai"),
                              hint="did you mean 'base_url'?")]
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from compiler.diagnostics import Diagnostic, did_you_mean
from compiler.loader import Document, PathKey


@cache
def schema_text() -> str:
    return (resources.files("compiler") / "schema" / "interlock.schema.json").read_text("utf-8")


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_text()))


def validate_schema(
    doc: Document, validator: Draft202012Validator | None = None
) -> list[Diagnostic]:
    """All schema violations of `doc`, located; empty when the document is valid. `validator`:
    another schema than the config's (the route tests file of `interlock test`)."""
    out: list[Diagnostic] = []
    seen: set[tuple[str, str, str]] = set()
    for error in (validator or _validator()).iter_errors(doc.data):
        for diagnostic in _diagnose(_specific(error), doc):
            key = (diagnostic.code, diagnostic.span.path, diagnostic.message)
            if key not in seen:
                seen.add(key)
                out.append(diagnostic)
    return out


def _specific(error: ValidationError) -> ValidationError:
    """For anyOf/oneOf, the branch error that says the most about this instance."""
    while error.context:
        typed = [e for e in error.context if e.validator != "type" or len(e.path) > 0]
        error = best_match(typed or error.context)
    return error


def _diagnose(error: ValidationError, doc: Document) -> list[Diagnostic]:
    path: PathKey = tuple(error.absolute_path)
    keyword = str(error.validator)
    code = f"schema.{keyword}"
    if keyword == "additionalProperties" and isinstance(error.instance, dict):
        return _unknown_keys(error, doc, path)
    if keyword == "required" and isinstance(error.instance, dict):
        missing = _quoted(error.message) or "a property"
        return [Diagnostic(code, f"missing required key '{missing}'", doc.key_span(path))]
    if keyword == "enum":
        allowed: Any = error.validator_value
        choices = [str(c) for c in allowed]
        closest = did_you_mean(str(error.instance), choices) or "one of: " + ", ".join(choices)
        message = f"{error.instance!r} is not allowed here"
        return [Diagnostic(code, message, doc.span(path), hint=closest)]
    hint = _format_hint(error) if keyword == "pattern" else None
    if "propertyNames" in error.relative_schema_path and isinstance(error.instance, str):
        # NOTE: a bad key is reported at the key, not at the mapping that holds it.
        message = f"invalid key: {_message(error)}"
        return [Diagnostic(code, message, doc.key_span((*path, error.instance)), hint=hint)]
    if keyword == "const":
        expected = json.dumps(error.validator_value)
        message = f"{_short(error.instance)} is not allowed here; expected {expected}"
        return [Diagnostic(code, message, doc.span(path))]
    if keyword in ("false", "not") and path:
        return [Diagnostic(code, f"'{path[-1]}' is not allowed here", doc.key_span(path))]
    return [Diagnostic(code, _message(error), doc.span(path), hint=hint)]


def _format_hint(error: ValidationError) -> str | None:
    """What a `pattern` stands for, from the schema's own description and examples."""
    schema: Any = error.schema if isinstance(error.schema, dict) else {}
    described = str(schema.get("description", "")).strip()
    examples = [str(e) for e in schema.get("examples", ())[:3]]
    if examples:
        described += (" " if described else "") + "e.g. " + ", ".join(examples)
    return described or None


def _unknown_keys(error: ValidationError, doc: Document, path: PathKey) -> list[Diagnostic]:
    schema = error.schema if isinstance(error.schema, dict) else {}
    known = set(schema.get("properties", {}))
    patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
    out = []
    instance: Any = error.instance
    for key in instance:
        if key in known or any(p.search(key) for p in patterns):
            continue
        out.append(
            Diagnostic(
                "schema.additionalProperties",
                f"unknown key '{key}'",
                doc.key_span((*path, key)),
                hint=did_you_mean(key, known) or _allowed(known),
            )
        )
    return out


def _allowed(known: set[str]) -> str | None:
    return "allowed keys: " + ", ".join(sorted(known)) if known else None


def _quoted(message: str) -> str | None:
    found = re.match(r"^'([^']*)'", message)
    return found.group(1) if found else None


def _message(error: ValidationError) -> str:
    instance: Any = error.instance
    if error.validator == "pattern":
        return f"{_short(instance)} does not match the expected format"
    text = error.message
    if len(text) > 160:  # jsonschema repeats whole sub-documents; keep the message readable
        text = f"{_short(instance)} fails '{error.validator}': {error.validator_value!r}"[:160]
    return text


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
