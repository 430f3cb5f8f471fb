"""Load config text into plain data plus a map of where every value came from.

`load_config(path)` reads one file, or every ``*.yaml|*.yml|*.json`` of a directory, with
ruamel.yaml (duplicate keys are errors), converts it to plain dicts/lists/scalars, substitutes
``${VAR}`` / ``${VAR:-default}`` from the environment, and merges several files. Every value keeps
its `Span`::

    doc = load_config("examples/quickstart.yaml")
    doc.data["upstreams"]["demo"]["kind"]            -> "mock"
    doc.span(("upstreams", "demo", "kind"))          -> Span("examples/quickstart.yaml", 9, 11, ...)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError

from compiler.diagnostics import CompileError, Diagnostic, Span

PathKey = tuple[str | int, ...]

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
# Sections whose entries are merged by name across files; a name defined twice is an error.
NAMED_MAPS: tuple[PathKey, ...] = (
    ("upstreams",),
    ("models",),
    ("policies", "headers"),
    ("policies", "transforms"),
    ("limits", "policies"),
    ("cache", "policies"),
)
CONCATENATED_LISTS: tuple[PathKey, ...] = (("routes",),)
_ENV_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def format_path(path: PathKey) -> str:
    """``("routes", 1, "match", "x-cfx-stage") -> "$.routes[1].match['x-cfx-stage']"``."""
    out = ["$"]
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _IDENT_RE.match(part):
            out.append(f".{part}")
        else:
            out.append("['" + part.replace("'", "\\'") + "']")
    return "".join(out)


@dataclass
class Document:
    """Plain config data with the source position of every value and key."""

    data: dict[str, Any]
    sources: dict[str, str]  # file name -> text, for rendering carets
    digest: str  # sha256 of file names, bytes and substituted variables
    values: dict[PathKey, tuple[str, int, int]] = field(default_factory=dict)
    keys: dict[PathKey, tuple[str, int, int]] = field(default_factory=dict)
    substituted: set[PathKey] = field(default_factory=set)  # strings that came from ${...}

    def span(self, path: PathKey) -> Span:
        """Span of the value at `path`, or of its nearest located ancestor."""
        return self._lookup(self.values, path)

    def key_span(self, path: PathKey) -> Span:
        """Span of the key that holds the value at `path` (falls back to the value)."""
        if path in self.keys:
            return self._lookup(self.keys, path)
        return self.span(path)

    def _lookup(self, table: dict[PathKey, tuple[str, int, int]], path: PathKey) -> Span:
        probe = path
        while probe not in table and probe:
            probe = probe[:-1]
        file, line, col = table.get(probe, (next(iter(self.sources), "<config>"), 1, 1))
        return Span(file, line, col, format_path(path))


def load_config(path: str | Path) -> Document:
    """Load a config file or directory; raise `CompileError` on unreadable or malformed input."""
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
        if not files:
            raise _error("file.unreadable", f"no *.yaml, *.yml or *.json files in {root}", str(root))
    else:
        files = [root]
    texts: list[tuple[str, str]] = []
    for file in files:
        try:
            texts.append((str(file), file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise _error("file.unreadable", f"cannot read config: {exc}", str(file)) from exc
    return load_texts(texts)


def load_texts(texts: list[tuple[str, str]], env: Mapping[str, str] | None = None) -> Document:
    """Load and merge already-read `(name, text)` pairs; `env` defaults to `os.environ`."""
    environ = os.environ if env is None else env
    merged = Document(data={}, sources=dict(texts), digest="")
    diagnostics: list[Diagnostic] = []
    used_vars: dict[str, str] = {}
    for name, text in texts:
        part = _parse_one(name, text, diagnostics)
        if part is None:
            continue
        _substitute(part, environ, used_vars, diagnostics)
        _merge(merged, part, diagnostics)
    if any(d.is_error for d in diagnostics):
        raise CompileError(tuple(diagnostics))
    digest = hashlib.sha256()
    for name, text in texts:
        digest.update(f"{len(name)}:{name}{len(text)}:".encode())
        digest.update(text.encode())
    for var in sorted(used_vars):
        digest.update(f"${var}={used_vars[var]}\0".encode())
    merged.digest = digest.hexdigest()
    return merged


def _error(code: str, message: str, file: str, line: int = 1, col: int = 1) -> CompileError:
    return CompileError((Diagnostic(code, message, Span(file, line, col)),))


def _parse_one(name: str, text: str, diagnostics: list[Diagnostic]) -> Document | None:
    yaml = YAML(typ="rt", pure=True)
    yaml.allow_duplicate_keys = False
    yaml.preserve_quotes = True  # lets spans point inside quoted strings
    try:
        node = yaml.load(text)
    except DuplicateKeyError as exc:
        mark = exc.problem_mark
        key = (exc.problem or "").split('"')[1] if '"' in (exc.problem or "") else "a key"
        diagnostics.append(
            Diagnostic(
                "yaml.duplicate_key",
                f"duplicate key '{key}' in this mapping",
                Span(name, mark.line + 1, mark.column + 1),
                hint="each key may appear once; merge the two entries",
            )
        )
        return None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        diagnostics.append(Diagnostic("yaml.syntax", problem, Span(name, line, col)))
        return None
    doc = Document(data={}, sources={name: text}, digest="")
    if node is None:
        node = CommentedMap()
    if not isinstance(node, CommentedMap):
        diagnostics.append(
            Diagnostic("schema.type", "the config must be a mapping at top level", Span(name, 1, 1))
        )
        return None
    doc.values[()] = (name, 1, 1)
    doc.data = _plain(node, (), name, doc)
    return doc


def _plain(node: Any, path: PathKey, file: str, doc: Document) -> Any:
    """Convert ruamel nodes to plain Python, recording value and key positions."""
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key in node:
            child = (*path, str(key))
            kline, kcol = node.lc.key(key)
            vline, vcol = node.lc.value(key)
            doc.keys[child] = (file, kline + 1, kcol + 1)
            value = node[key]
            if isinstance(value, str) and _is_quoted(value):
                vcol += 1  # point inside the quotes, at the first character of the string
            doc.values[child] = (file, vline + 1, vcol + 1)
            out[str(key)] = _plain(value, child, file, doc)
        return out
    if isinstance(node, CommentedSeq):
        items: list[Any] = []
        for index, value in enumerate(node):
            child = (*path, index)
            line, col = node.lc.item(index)
            if isinstance(value, str) and _is_quoted(value):
                col += 1
            doc.values[child] = (file, line + 1, col + 1)
            items.append(_plain(value, child, file, doc))
        return items
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, dt.datetime | dt.date):
        return _iso(node)
    return node


def _is_quoted(value: str) -> bool:
    style = getattr(value, "style", None)
    return style in ("'", '"')


def _iso(value: dt.date) -> str:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None and getattr(value, "_yaml", {}).get("tz") in ("Z", "z"):
            value = value.replace(tzinfo=dt.UTC)
        text = value.isoformat()
        return text.replace("+00:00", "Z")
    return value.isoformat()


def _substitute(
    doc: Document, env: Mapping[str, str], used: dict[str, str], diagnostics: list[Diagnostic]
) -> None:
    """Replace ``${VAR}`` in every string value in place; record unset variables as errors."""

    def visit(value: Any, path: PathKey) -> Any:
        if isinstance(value, dict):
            return {k: visit(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [visit(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return replace(value, path)
        return value

    def replace(text: str, path: PathKey) -> str:
        def one(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            var, default = match.group(1), match.group(2)
            found = env.get(var)
            if found:
                used[var] = found
                return found
            if default is not None:
                used[var] = ""
                return default
            diagnostics.append(
                Diagnostic(
                    "env.unset",
                    f"environment variable {var} is not set and has no default",
                    doc.span(path).shifted(match.start()),
                    hint=f"set {var}, write ${{{var}:-default}}, or use a secret {{env: {var}}}",
                )
            )
            return ""

        if _ENV_RE.search(text):
            doc.substituted.add(path)
        return _ENV_RE.sub(one, text)

    doc.data = visit(doc.data, ())


def _merge(into: Document, part: Document, diagnostics: list[Diagnostic]) -> None:
    """Merge one file's document into the accumulated one (see module docstring for the rules)."""
    if not into.data:
        into.data = part.data
        into.values.update(part.values)
        into.keys.update(part.keys)
        into.substituted |= part.substituted
        return
    moves: dict[PathKey, PathKey] = {}  # part path prefix -> merged path prefix
    for section, value in part.data.items():
        top = (section,)
        if section == "version":
            continue
        if top in CONCATENATED_LISTS and isinstance(value, list):
            existing = into.data.setdefault(section, [])
            if isinstance(existing, list):
                for index in range(len(value)):
                    moves[(section, index)] = (section, len(existing) + index)
                existing.extend(value)
                continue
        if _merge_named(into, part, top, value, diagnostics, moves):
            continue
        if section in into.data:
            diagnostics.append(
                Diagnostic(
                    "merge.conflict",
                    f"section '{section}' is already set in {into.key_span(top).file}",
                    part.key_span(top),
                    hint="set each section in one file only; named maps and routes may be split",
                )
            )
            continue
        into.data[section] = value
        moves[top] = top
    _copy_positions(into, part, moves)


def _merge_named(
    into: Document,
    part: Document,
    top: PathKey,
    value: Any,
    diagnostics: list[Diagnostic],
    moves: dict[PathKey, PathKey],
) -> bool:
    """Merge a section containing named maps; return False when it is not such a section."""
    named = [p for p in NAMED_MAPS if p[0] == top[0]]
    if not named or not isinstance(value, dict):
        return False
    target = into.data.setdefault(top[0], {})
    if not isinstance(target, dict):
        return False
    for key, inner in value.items():
        path = (*top, key)
        if path in named and isinstance(inner, dict):
            bucket = target.setdefault(key, {})
            for name, entry in inner.items():
                entry_path = (*path, name)
                if name in bucket:
                    diagnostics.append(
                        Diagnostic(
                            "name.duplicate",
                            f"'{name}' is already defined at {into.key_span(entry_path)}",
                            part.key_span(entry_path),
                        )
                    )
                    continue
                bucket[name] = entry
                moves[entry_path] = entry_path
            moves.setdefault(path, path)
        elif key in target:
            diagnostics.append(
                Diagnostic(
                    "merge.conflict",
                    f"'{format_path(path)[2:]}' is already set in {into.key_span(path).file}",
                    part.key_span(path),
                )
            )
        else:
            target[key] = inner
            moves[path] = path
    return True


def _copy_positions(into: Document, part: Document, moves: dict[PathKey, PathKey]) -> None:
    for source, target in ((part.values, into.values), (part.keys, into.keys)):
        for path, pos in source.items():
            for prefix, new in moves.items():
                if path[: len(prefix)] == prefix:
                    target.setdefault((*new, *path[len(prefix) :]), pos)
                    break
    for path in part.substituted:
        for prefix, new in moves.items():
            if path[: len(prefix)] == prefix:
                into.substituted.add((*new, *path[len(prefix) :]))
                break
