"""Interlock's config compiler: YAML text in, an immutable `RouteTable` or located diagnostics out.

Pure: it imports nothing from `runtime`, starlette, hypercorn, httpx or watchfiles, so
`interlock validate` runs anywhere the package is installed::

    result = compile_config("examples/quickstart.yaml")
    result.ok, result.table.short_version, [str(d.span) for d in result.diagnostics]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from compiler.diagnostics import CompileError, Diagnostic, Severity, Span, sort_diagnostics
from compiler.loader import Document, load_config, load_texts
from compiler.lower import lower_config
from compiler.schema import validate_schema
from compiler.table import RouteTable

__all__ = [
    "CompileError",
    "CompileResult",
    "Diagnostic",
    "RouteTable",
    "Severity",
    "Span",
    "compile_config",
    "compile_document",
    "compile_texts",
]


@dataclass(frozen=True)
class CompileResult:
    """The table (None when there was any error), every diagnostic, and the source texts."""

    table: RouteTable | None
    diagnostics: tuple[Diagnostic, ...]
    sources: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return self.table is not None

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.is_error)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if not d.is_error)


def compile_config(path: str | Path) -> CompileResult:
    """Compile a config file or directory (see `compiler.loader.load_config`)."""
    try:
        doc = load_config(path)
    except CompileError as exc:
        return CompileResult(None, tuple(sort_diagnostics(exc.diagnostics)), {})
    return compile_document(doc)


def compile_texts(
    texts: list[tuple[str, str]], env: Mapping[str, str] | None = None
) -> CompileResult:
    """Compile `(file name, text)` pairs, e.g. ``compile_texts([("a.yaml", "version: 1")])``."""
    sources = dict(texts)
    try:
        doc = load_texts(texts, env)
    except CompileError as exc:
        return CompileResult(None, tuple(sort_diagnostics(exc.diagnostics)), sources)
    return compile_document(doc)


def compile_document(doc: Document) -> CompileResult:
    """Schema check, then (only if the schema holds) semantic checks and lowering."""
    problems = validate_schema(doc)
    if problems:
        return CompileResult(None, tuple(sort_diagnostics(problems)), doc.sources)
    table, diagnostics = lower_config(doc)
    return CompileResult(table, tuple(sort_diagnostics(diagnostics)), doc.sources)
