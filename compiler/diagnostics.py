"""Located diagnostics: what the compiler says about a config, and where.

A `Diagnostic` has a stable dotted code (``ref.unknown_upstream``), a message, a `Span`
(file, 1-based line and column, JSON path) and an optional hint. `render_text` shows the source
line with a caret under the column::

    examples/bad.yaml:12:15: error ref.unknown_upstream: unknown upstream 'opnai'
       12 |     upstream: opnai
          |               ^ did you mean 'openai'?
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum


class Severity(str, Enum):  # noqa: UP042 - str() stays "Severity.ERROR"
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Span:
    """Where a value sits: ``file:line:col`` (1-based) and its JSON path (``$.routes[1].match``)."""

    file: str
    line: int
    col: int
    path: str = "$"

    def shifted(self, offset: int) -> Span:
        """The same span moved `offset` columns right, e.g. to point inside a pattern."""
        return Span(self.file, self.line, self.col + offset, self.path)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    message: str
    span: Span
    severity: Severity = Severity.ERROR
    hint: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "message": self.message,
            "file": self.span.file,
            "line": self.span.line,
            "col": self.span.col,
            "path": self.span.path,
            "hint": self.hint,
        }


@dataclass(frozen=True)
class CompileError(Exception):
    """Raised by `compile_config` when a config has at least one error; carries all diagnostics."""

    diagnostics: tuple[Diagnostic, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        errors = [d for d in self.diagnostics if d.is_error]
        first = errors[0] if errors else None
        head = f"{len(errors)} error(s) in config"
        return f"{head}; first: {first.span}: {first.code}: {first.message}" if first else head


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A hint naming the closest candidate, or None.

    ``did_you_mean("opnai", ["openai"]) -> "did you mean 'openai'?"``
    """
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def sort_diagnostics(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    return sorted(diagnostics, key=lambda d: (d.span.file, d.span.line, d.span.col, d.code))


def render_text(diagnostic: Diagnostic, sources: dict[str, str] | None = None) -> str:
    """One diagnostic as text, with the source line and a caret when the source is known."""
    d = diagnostic
    head = f"{d.span}: {d.severity.value} {d.code}: {d.message}"
    lines = (sources or {}).get(d.span.file, "").splitlines()
    if not 1 <= d.span.line <= len(lines):
        return head + (f"\n  hint: {d.hint}" if d.hint else "") + f"\n  at {d.span.path}"
    number = str(d.span.line)
    pad = " " * len(number)
    source = lines[d.span.line - 1]
    # NOTE: keep the line's tabs so the caret lines up under the column however tabs render.
    indent = "".join("\t" if c == "\t" else " " for c in source[: max(d.span.col - 1, 0)])
    caret = indent + "^" + (f" {d.hint}" if d.hint else "")
    return f"{head}\n  {number} | {source}\n  {pad} | {caret}\n  {pad} = at {d.span.path}"


def render_github(diagnostic: Diagnostic) -> str:
    """A GitHub Actions workflow command: ``::error file=f,line=1,col=2,title=code::message``."""
    d = diagnostic
    message = d.message + (f" ({d.hint})" if d.hint else "")
    message = _escape_data(message)
    level = "error" if d.is_error else "warning"
    file = _escape_data(d.span.file).replace(":", "%3A").replace(",", "%2C")
    return f"::{level} file={file},line={d.span.line},col={d.span.col},title={d.code}::{message}"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def render_json(diagnostics: Sequence[Diagnostic]) -> str:
    return json.dumps([d.as_dict() for d in diagnostics], indent=2, ensure_ascii=False)
