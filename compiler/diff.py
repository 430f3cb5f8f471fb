"""A semantic diff of two compiled `RouteTable`s: what an edit changes, by section and by name.

Items are compared by name (routes, models, upstreams, policies, limit and cache policies) or by
id (API keys); sections of settings (server, auth, usage, observability, admin, the limit and
cache backends) by field. Each change says which fields moved, with their values rendered as
`compiler.dump.to_plain` renders them: secrets as their reference (``{"env": "NAME"}``) and never
their value; an inline secret or a key hash that changed shows as ``"***"``::

    diff = diff_tables(old, new)
    diff.summary() -> {"keys": {"removed": ["agent-ci"]},
                       "routes": {"changed": ["stage-plan"]}}
    render_diff(diff) ->
        keys
          - agent-ci
        routes
          ~ stage-plan: action.model: "cfx-plan" -> "cfx-code"
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from compiler.dump import to_plain
from compiler.table import CompiledTarget, RouteTable, SecretRef

MASK = "***"
_MASKED_FIELDS = frozenset({"hash", "key_hash"})  # NOTE: salted key hashes: changed, not shown
_DERIVED = frozenset({"state_id", "index"})  # follow from the definition or the position

# (section, settings object) pairs compared field by field; (section, named items) by name
_SETTINGS = (
    "server",
    "auth",
    "limit_settings",
    "cache_settings",
    "usage",
    "observability",
    "admin",
)


_MAX_PATHS = 4  # setting paths named per changed upstream in a reload line


@dataclass(frozen=True)
class FieldChange:
    path: str  # dotted, e.g. "action.model"; "" for the item as a whole
    before: Any
    after: Any


@dataclass(frozen=True)
class Change:
    section: str  # routes | models | upstreams | header_policies | transforms | keys | limits ...
    kind: str  # added | removed | changed
    name: str  # the item's name or id; for settings sections, the setting
    fields: tuple[FieldChange, ...] = ()


@dataclass(frozen=True)
class TableDiff:
    changes: tuple[Change, ...]

    @property
    def empty(self) -> bool:
        return not self.changes

    def summary(self) -> dict[str, dict[str, list[str]]]:
        """``{section: {kind: [names]}}``, sections and kinds without changes left out."""
        out: dict[str, dict[str, list[str]]] = {}
        for change in self.changes:
            out.setdefault(change.section, {}).setdefault(change.kind, []).append(change.name)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "changes": [
                {
                    "section": c.section,
                    "kind": c.kind,
                    "name": c.name,
                    "fields": [
                        {"path": f.path, "before": f.before, "after": f.after} for f in c.fields
                    ],
                }
                for c in self.changes
            ],
            "summary": self.summary(),
        }


def diff_tables(old: RouteTable, new: RouteTable) -> TableDiff:
    """Every difference between `old` and `new` that changes behaviour, in section order."""
    changes: list[Change] = []
    for section, before, after in _named_sections(old, new):
        changes += _diff_named(section, before, after)
    changes += _route_order(old, new)
    for section in _SETTINGS:
        changes += _diff_settings(section, _settings(old, section), _settings(new, section))
    return TableDiff(tuple(changes))


def describe_changes(diff: TableDiff) -> str:
    """One line for logs: ``keys removed: agent-ci; upstreams changed: demo (timeouts.read_s)``;
    names, key ids and (for upstreams) the setting paths that changed, never a value."""
    if diff.empty:
        return "(none: only comments, order-neutral or environment changes)"
    grouped: dict[str, dict[str, list[str]]] = {}
    for change in diff.changes:
        names = grouped.setdefault(change.section, {}).setdefault(change.kind, [])
        names.append(_named_change(change))
    parts = []
    for section, kinds in grouped.items():
        parts += [f"{section} {kind}: {', '.join(names)}" for kind, names in kinds.items()]
    return "; ".join(parts)


def _named_change(change: Change) -> str:
    """``demo (timeouts.read_s, retries)`` for a changed upstream, ``(order now: b, a)`` for
    reordered routes; the bare name otherwise."""
    if change.section == "routes" and change.name == "(order)" and change.fields:
        return f"(order now: {', '.join(change.fields[0].after)})"
    paths = [f.path.strip("()") for f in change.fields if f.path]  # "(inline secret)"
    if change.section != "upstreams" or change.kind != "changed" or not paths:
        return change.name
    shown = ", ".join(paths[:_MAX_PATHS])
    more = f", +{len(paths) - _MAX_PATHS} more" if len(paths) > _MAX_PATHS else ""
    return f"{change.name} ({shown}{more})"


def render_diff(diff: TableDiff) -> str:
    """The diff as text, one block per section; empty string when nothing changed."""
    lines: list[str] = []
    section = None
    for change in diff.changes:
        if change.section != section:
            section = change.section
            lines.append(section)
        sign = {"added": "+", "removed": "-"}.get(change.kind, "~")
        if not change.fields or change.kind != "changed":
            lines.append(f"  {sign} {change.name}")
            continue
        if len(change.fields) == 1:
            lines.append(f"  {sign} {change.name}: {_field_text(change.fields[0])}")
            continue
        lines.append(f"  {sign} {change.name}")
        lines += [f"      {_field_text(f)}" for f in change.fields]
    return "\n".join(lines) + ("\n" if lines else "")


def _field_text(field: FieldChange) -> str:
    where = f"{field.path}: " if field.path else ""
    return f"{where}{_short(field.before)} -> {_short(field.after)}"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


# --- sections ------------------------------------------------------------------------------


def _named_sections(
    old: RouteTable, new: RouteTable
) -> Iterator[tuple[str, Mapping[str, Any], Mapping[str, Any]]]:
    yield "routes", {r.name: r for r in old.routes}, {r.name: r for r in new.routes}
    yield "models", old.models, new.models
    yield "upstreams", old.upstreams, new.upstreams
    yield "header_policies", old.header_policies, new.header_policies
    yield "transforms", old.transforms, new.transforms
    yield "keys", {k.id: k for k in old.auth.keys}, {k.id: k for k in new.auth.keys}
    yield "limits", old.limits.policies, new.limits.policies
    yield "cache", old.cache.policies, new.cache.policies


def _settings(table: RouteTable, section: str) -> Any:
    if section == "limit_settings":
        return table.limits
    if section == "cache_settings":
        return table.cache
    return getattr(table, section)


def _settings_fields(section: str) -> frozenset[str]:
    """Fields of a settings section that other sections cover (keys, policies)."""
    if section == "auth":
        return frozenset({"keys"})
    if section in ("limit_settings", "cache_settings"):
        return frozenset({"policies"})
    return frozenset()


def _diff_named(section: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Change]:
    out = [Change(section, "added", name) for name in after if name not in before]
    out += [Change(section, "removed", name) for name in before if name not in after]
    for name in before:
        if name in after:
            fields = _fields(before[name], after[name])
            if fields:
                out.append(Change(section, "changed", name, fields))
    order = {"added": 0, "removed": 1, "changed": 2}
    return sorted(out, key=lambda c: (order[c.kind], c.name))


def _route_order(old: RouteTable, new: RouteTable) -> list[Change]:
    """A change of the order of the routes both tables have (the first match decides)."""
    kept = {r.name for r in old.routes} & {r.name for r in new.routes}
    before = [r.name for r in old.routes if r.name in kept]
    after = [r.name for r in new.routes if r.name in kept]
    if before == after:
        return []
    return [Change("routes", "changed", "(order)", (FieldChange("", before, after),))]


def _diff_settings(section: str, before: Any, after: Any) -> list[Change]:
    if before is None and after is None:
        return []
    if before is None or after is None:
        return [Change(section, "added" if before is None else "removed", section)]
    skip = _settings_fields(section)
    out = []
    for f in dataclasses.fields(before):
        if f.name in skip:
            continue
        fields = _fields(getattr(before, f.name), getattr(after, f.name))
        if fields:
            out.append(Change(section, "changed", f.name, fields))
    return out


# --- fields --------------------------------------------------------------------------------


def _fields(before: Any, after: Any) -> tuple[FieldChange, ...]:
    """The leaves that differ between two compiled values, as dotted paths."""
    out: list[FieldChange] = []
    _walk(_plain(before), _plain(after), "", out)
    if not out and _inline_secrets(before) != _inline_secrets(after):
        out.append(FieldChange("(inline secret)", MASK, MASK))
    return tuple(out)


def _walk(before: Any, after: Any, path: str, out: list[FieldChange]) -> None:
    if before == after:
        return
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            where = f"{path}.{key}" if path else str(key)
            if key in _MASKED_FIELDS:
                if before.get(key) != after.get(key):
                    out.append(FieldChange(where, MASK, MASK))
                continue
            _walk(before.get(key), after.get(key), where, out)
        return
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for index, (one, two) in enumerate(zip(before, after, strict=True)):
            _walk(one, two, f"{path}[{index}]", out)
        return
    out.append(FieldChange(path, before, after))


def _plain(value: Any) -> Any:
    return _strip(to_plain(value))


def _strip(value: Any) -> Any:
    """Drop derived fields; policies and transforms used by an upstream or a route become their
    names (their own changes are reported under `header_policies` and `transforms`)."""
    if isinstance(value, dict):
        return {k: _named(k, v) for k, v in value.items() if k not in _DERIVED}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _named(key: str, value: Any) -> Any:
    if key in ("header_policies", "transforms") and isinstance(value, list):
        return [v["name"] if isinstance(v, dict) and "name" in v else _strip(v) for v in value]
    return _strip(value)


def _inline_secrets(value: Any) -> list[str]:
    """Digests of the inline secrets inside `value`, in order (compared, never shown)."""
    found: list[str] = []
    _collect_secrets(value, found)
    return found


def _collect_secrets(value: Any, found: list[str]) -> None:
    if isinstance(value, SecretRef):
        if value.literal is not None:
            found.append(hashlib.sha256(value.literal.encode()).hexdigest())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            # NOTE: a target names its upstream; the upstream's secrets are the upstream's change
            if not (isinstance(value, CompiledTarget) and f.name == "upstream"):
                _collect_secrets(getattr(value, f.name), found)
    elif isinstance(value, Mapping):
        for item in value.values():
            _collect_secrets(item, found)
    elif isinstance(value, tuple | list):
        for item in value:
            _collect_secrets(item, found)
