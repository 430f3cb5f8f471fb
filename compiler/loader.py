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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

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

    def span_at(self, path: PathKey, offset: int) -> Span:
        """Span of character `offset` of the string value at `path`, through quotes, escapes,
        folded lines and block scalars: for ``k: "a\\tb("`` offset 3 is the ``(`` at column
        9, not 8. Falls back to ``span(path).shifted(offset)`` when the source does not decode
        to the value (e.g. after ``${VAR}`` substitution)."""
        base = self.span(path)
        value = self._value(path)
        located = self.values.get(path)
        if isinstance(value, str) and located is not None and located[0] in self.sources:
            lines = _LINE_BREAK.split(self.sources[located[0]])
            found = scalar_position(lines, located[1] - 1, located[2] - 1, value, offset)
            if found is not None:
                return Span(base.file, found[0] + 1, found[1] + 1, base.path)
        return base.shifted(offset)

    def _value(self, path: PathKey) -> Any:
        node: Any = self.data
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return None
        return node

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


# --- positions inside a scalar ---------------------------------------------------------------

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_ESCAPES = {
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "t": "\t",
    "\t": "\t",
    "n": "\n",
    "v": "\v",
    "f": "\f",
    "r": "\r",
    "e": "\x1b",
    " ": " ",
    '"': '"',
    "/": "/",
    "\\": "\\",
    "N": "\x85",
    "_": "\xa0",
    "L": "\u2028",
    "P": "\u2029",
}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_Char = tuple[str, int, int]  # a decoded character and its 0-based source line and column


def scalar_position(
    lines: list[str], line: int, col: int, value: str, offset: int
) -> tuple[int, int] | None:
    """0-based source (line, col) of character `offset` of the scalar whose content starts at
    (`line`, `col`) and decodes to `value`; None when the source does not decode to `value`.

    ``scalar_position(['k: "a\\tb("'], 0, 4, "a\tb(", 3) -> (0, 8)``; an offset at the end
    of the value points just after its last character.
    """
    if not 0 <= line < len(lines) or not 0 <= col <= len(lines[line]):
        return None
    decoded: list[_Char] = []
    for char in _scalar_chars(lines, line, col):
        if len(decoded) == len(value):
            break
        decoded.append(char)
    if "".join(c for c, _, _ in decoded) != value:
        return None
    if not decoded:
        return line, col
    if offset < len(decoded):
        return decoded[max(offset, 0)][1:]
    return decoded[-1][1], decoded[-1][2] + 1


def _scalar_chars(lines: list[str], line: int, col: int) -> Iterator[_Char]:
    text = lines[line]
    if col > 0 and text[col - 1] in "\"'":
        return _flow_chars(lines, line, col, text[col - 1])
    if text[col : col + 1] in ("|", ">"):
        return _block_chars(lines, line, folded=text[col] == ">")
    return _flow_chars(lines, line, col, None)


def _flow_chars(lines: list[str], line: int, col: int, quote: str | None) -> Iterator[_Char]:
    """Characters of a plain (`quote` None) or quoted flow scalar, folding line breaks."""
    pending: list[_Char] = []  # unescaped blanks that a line break would strip
    while line < len(lines):
        text = lines[line]
        if col >= len(text):  # a line break inside the scalar folds to a space or newlines
            pending.clear()
            line, col, breaks = _next_content(lines, line + 1)
            yield from (("\n", line, col) for _ in range(breaks))
            if not breaks:
                yield " ", line, col
            continue
        char = text[col]
        if char == quote:
            if quote == "'" and text[col + 1 : col + 2] == "'":
                yield from pending
                pending.clear()
                yield "'", line, col
                col += 2
                continue
            yield from pending  # blanks before the closing quote are part of the string
            return
        if quote == '"' and char == "\\":
            yield from pending
            pending.clear()
            escaped = text[col + 1 : col + 2]
            if not escaped:  # an escaped line break joins the lines without a space
                line, col, _ = _next_content(lines, line + 1)
                continue
            width = _HEX_ESCAPES.get(escaped)
            if width is not None:
                digits = text[col + 2 : col + 2 + width]
                if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    return
                yield chr(int(digits, 16)), line, col
                col += 2 + width
                continue
            if escaped not in _ESCAPES:
                return
            yield _ESCAPES[escaped], line, col
            col += 2
            continue
        if char in " \t":
            pending.append((char, line, col))
        else:
            yield from pending
            pending.clear()
            yield char, line, col
        col += 1


def _next_content(lines: list[str], line: int) -> tuple[int, int, int]:
    """From `line` on, the first line with content: (line, column of its content, blank lines)."""
    blanks = 0
    while line < len(lines) and not lines[line].strip(" \t"):
        blanks += 1
        line += 1
    if line >= len(lines):
        return line, 0, blanks
    text = lines[line]
    return line, len(text) - len(text.lstrip(" \t")), blanks


def _block_chars(lines: list[str], header: int, *, folded: bool) -> Iterator[_Char]:
    """Characters of a ``|`` or ``>`` block scalar whose indicator is on line `header`."""
    first, indent, _ = _next_content(lines, header + 1)
    if first >= len(lines) or indent == 0:
        return
    yield from (("\n", blank, 0) for blank in range(header + 1, first))
    previous = first, False  # the last content line, and whether it was more indented
    for line in range(first, len(lines) + 1):
        text = lines[line] if line < len(lines) else ""
        if line < len(lines) and not text.strip(" \t"):
            continue
        if len(text) - len(text.lstrip(" ")) < indent:  # the end; clip or keep line breaks
            at = previous[0], len(lines[previous[0]])
            yield from (("\n", *at) for _ in range(line - previous[0]))
            return
        more = text[indent] in " \t"
        if line > first:
            blanks = line - previous[0] - 1
            at = previous[0], len(lines[previous[0]])
            if folded and not more and not previous[1]:
                yield from ((("\n", *at) for _ in range(blanks)) if blanks else [(" ", *at)])
            else:
                yield from (("\n", *at) for _ in range(blanks + 1))
        yield from ((char, line, indent + i) for i, char in enumerate(text[indent:]))
        previous = line, more


def load_config(path: str | Path) -> Document:
    """Load a config file or directory; raise `CompileError` on unreadable or malformed input."""
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
        if not files:
            raise _error(
                "file.unreadable", f"no *.yaml, *.yml or *.json files in {root}", str(root)
            )
    else:
        files = [root]
    texts: list[tuple[str, str]] = []
    for file in files:
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise _error("file.unreadable", f"cannot read config: {exc}", str(file)) from exc
        try:
            texts.append((str(file), raw.decode("utf-8")))
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            start = raw.rfind(b"\n", 0, exc.start) + 1
            col = len(raw[start : exc.start].decode("utf-8", errors="replace")) + 1
            message = f"the file is not UTF-8: byte 0x{raw[exc.start]:02x} cannot be decoded"
            raise _error("file.unreadable", message, str(file), line, col) from exc
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
        if len(texts) > 1 and "version" not in part.data:
            diagnostics.append(
                Diagnostic(
                    "schema.required",
                    "missing required key 'version'",
                    Span(name, 1, 1),
                    hint="every file of a config directory starts with `version: 1`",
                )
            )
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
    # PERF: composing nodes with the safe (non-round-trip) parser and reading each node's start
    # mark is about twice as fast as a round-trip load, and keeps every position we need.
    yaml = YAML(typ="safe", pure=True)
    try:
        node = yaml.compose(text)
        if node is not None and not isinstance(node, MappingNode):
            diagnostics.append(
                Diagnostic(
                    "schema.type", "the config must be a mapping at top level", Span(name, 1, 1)
                )
            )
            return None
        doc = Document(data={}, sources={name: text}, digest="")
        doc.values[()] = (name, 1, 1)
        walk = _NodeWalk(name, doc, yaml.constructor, budget=100_000 + 20 * len(text))
        doc.data = walk.plain(node, ()) if node is not None else {}
    except MarkedYAMLError as exc:
        diagnostics.append(_syntax_error(name, exc))
        return None
    diagnostics.extend(walk.problems)
    return None if walk.problems else doc


def _syntax_error(name: str, exc: MarkedYAMLError) -> Diagnostic:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = exc.problem or exc.context or "invalid YAML"
    hint = None
    context = exc.context_mark
    if exc.context and context is not None and mark is not None and context.line != mark.line:
        hint = f"{exc.context} at line {context.line + 1}, column {context.column + 1}"
    return Diagnostic("yaml.syntax", problem, Span(name, line, col), hint=hint)


_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class _NodeWalk:
    """Turns composed YAML nodes into plain dicts/lists/scalars, recording where each key and
    value starts (inside the quotes of a quoted string) and every duplicate key."""

    file: str
    doc: Document
    constructor: Any
    budget: int  # nodes left to visit: aliases must not expand without bound
    problems: list[Diagnostic] = field(default_factory=list)
    active: set[int] = field(default_factory=set)  # ids of the collections being walked

    def plain(self, node: Node, path: PathKey) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise MarkedYAMLError(
                problem="aliases expand to too many values", problem_mark=node.start_mark
            )
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        if id(node) in self.active:
            raise MarkedYAMLError(
                problem="an alias refers to its own ancestor", problem_mark=node.start_mark
            )
        self.active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            return [
                self._child(item, (*path, index), None) for index, item in enumerate(node.value)
            ]
        finally:
            self.active.discard(id(node))

    def _mapping(self, node: MappingNode, path: PathKey) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merged: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.extend(self._merged_pairs(value_node))
                continue
            key = self._key(key_node)
            if key in out:
                self.problems.append(
                    Diagnostic(
                        "yaml.duplicate_key",
                        f"duplicate key '{key}' in this mapping",
                        self._span(key_node, (*path, key)),
                        hint="each key may appear once; merge the two entries",
                    )
                )
                continue
            out[key] = self._child(value_node, (*path, key), key_node)
        for key_node, value_node in merged:  # NOTE: keys written in the mapping win over `<<`
            key = self._key(key_node)
            if key not in out:
                out[key] = self._child(value_node, (*path, key), key_node)
        return out

    def _merged_pairs(self, node: Node) -> list[tuple[Node, Node]]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        pairs: list[tuple[Node, Node]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                raise MarkedYAMLError(
                    problem="`<<` merges only mappings", problem_mark=source.start_mark
                )
            pairs.extend(source.value)
        return pairs

    def _child(self, node: Node, path: PathKey, key_node: Node | None) -> Any:
        if key_node is not None:
            self.doc.keys[path] = self._position(key_node)
            if id(node) in self.active:  # report at the key; the alias has no mark of its own
                raise MarkedYAMLError(
                    problem="an alias refers to its own ancestor", problem_mark=key_node.start_mark
                )
        self.doc.values[path] = self._position(node)
        return self.plain(node, path)

    def _key(self, node: Node) -> str:
        if not isinstance(node, ScalarNode):
            raise MarkedYAMLError(
                problem="a mapping key must be a scalar", problem_mark=node.start_mark
            )
        return str(self._scalar(node))

    def _scalar(self, node: ScalarNode) -> Any:
        if node.tag == _STR_TAG:
            return node.value
        value = self.constructor.construct_object(node, deep=True)
        if isinstance(value, dt.datetime | dt.date):
            return _iso(value)
        return value

    def _position(self, node: Node) -> tuple[str, int, int]:
        mark = node.start_mark
        quoted = isinstance(node, ScalarNode) and node.style in ("'", '"')
        # NOTE: a quoted string's position is inside the quotes, at its first character.
        return self.file, mark.line + 1, mark.column + 1 + quoted

    def _span(self, node: Node, path: PathKey) -> Span:
        mark = node.start_mark
        return Span(self.file, mark.line + 1, mark.column + 1, format_path(path))


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
            if found is not None:  # NOTE: set but empty is not unset (as in the shell)
                used[var] = found
                return found
            diagnostics.append(
                Diagnostic(
                    "env.unset",
                    f"environment variable {var} is not set and has no default",
                    doc.span_at(path, match.start()),
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
            if value != into.data.get("version", value):
                diagnostics.append(
                    Diagnostic(
                        "merge.conflict",
                        f"version {value!r} differs from version {into.data['version']!r}"
                        f" in {into.span(top).file}",
                        part.span(top),
                        hint="every file of a config directory has the same `version`",
                    )
                )
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
    """Merge a section that is (``models``) or contains (``policies``) named maps; return False
    when it is not such a section."""
    named = [p for p in NAMED_MAPS if p[0] == top[0]]
    if not named or not isinstance(value, dict):
        return False
    target = into.data.setdefault(str(top[0]), {})
    if not isinstance(target, dict):
        return False
    if top in named:
        _merge_entries(into, part, top, value, target, diagnostics, moves)
        return True
    for key, inner in value.items():
        path = (*top, key)
        bucket = target.get(key, {}) if path in named else None
        if isinstance(bucket, dict) and isinstance(inner, dict):
            target[key] = bucket
            _merge_entries(into, part, path, inner, bucket, diagnostics, moves)
        elif key in target:
            diagnostics.append(
                Diagnostic(
                    "merge.conflict",
                    f"'{format_path(path)[2:]}' is already set in {into.key_span(path).file}",
                    part.key_span(path),
                    hint="set each section in one file only; named maps and routes may be split",
                )
            )
        else:
            target[key] = inner
            moves[path] = path
    return True


def _merge_entries(
    into: Document,
    part: Document,
    path: PathKey,
    entries: dict[str, Any],
    bucket: dict[str, Any],
    diagnostics: list[Diagnostic],
    moves: dict[PathKey, PathKey],
) -> None:
    """Add the named `entries` of one file to `bucket`; a name defined twice is an error."""
    for name, entry in entries.items():
        entry_path = (*path, name)
        if name in bucket:
            diagnostics.append(
                Diagnostic(
                    "name.duplicate",
                    f"'{name}' is already defined at {into.key_span(entry_path)}",
                    part.key_span(entry_path),
                    hint="names in a named map must be unique across all files",
                )
            )
            continue
        bucket[name] = entry
        moves[entry_path] = entry_path
    moves.setdefault(path, path)


def _copy_positions(into: Document, part: Document, moves: dict[PathKey, PathKey]) -> None:
    """Copy `part`'s positions to where its values moved (``routes[0]`` -> ``routes[7]``)."""

    def moved(path: PathKey) -> PathKey | None:
        # PERF: look up the path's own prefixes instead of scanning every move.
        for length in range(1, len(path) + 1):
            new = moves.get(path[:length])
            if new is not None:
                return (*new, *path[length:])
        return None

    for source, target in ((part.values, into.values), (part.keys, into.keys)):
        for path, pos in source.items():
            new_path = moved(path)
            if new_path is not None:
                target.setdefault(new_path, pos)
    for path in part.substituted:
        new_path = moved(path)
        if new_path is not None:
            into.substituted.add(new_path)
