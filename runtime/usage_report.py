"""`interlock usage report` and `interlock usage prune`: the ledger read straight from its store,
no server needed. Rows are the store's report rows (see `LedgerStore.report`)::

    interlock usage report gateway.yaml --group-by day model --format json
    [{"day": "2026-12-05", "model": "gpt-4o", "currency": "USD", "requests": 12, ...}]
"""

from __future__ import annotations

import asyncio
import csv
import io
import sys
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from compiler.table import RouteTable
from runtime.snapshot import SnapshotError, ledger_target
from runtime.state.ledger import TOTAL_FIELDS, LedgerStore, day_of
from runtime.state.ledger_stores import open_ledger_store


def store_for(table: RouteTable) -> LedgerStore:
    """The ledger store `table` configures (raises SnapshotError when it has none)."""
    target = ledger_target(table)
    if target is None:
        raise SnapshotError("the config has no `usage` section, so there is no ledger")
    kind, where = target
    if kind == "sqlite":
        return open_ledger_store(kind, path=where)
    return open_ledger_store(kind, url=where)


def print_report(
    table: RouteTable,
    *,
    since: str | None,
    until: str | None,
    group_by: Sequence[str],
    fmt: str,
) -> int:
    async def run(store: LedgerStore) -> list[dict[str, Any]]:
        return await store.report(since=since, until=until, group_by=group_by)

    rows = _with_store(table, run)
    if rows is None:
        return 1
    columns = [*dict.fromkeys(group_by), "currency", *TOTAL_FIELDS]
    sys.stdout.write(format_rows(rows, columns, fmt))
    return 0


def prune_ledger(table: RouteTable) -> int:
    usage = table.usage
    retention = usage.retention_days if usage is not None else 0
    before = day_of(time.time() - retention * 86400)

    async def run(store: LedgerStore) -> int:
        return await store.prune(before)

    pruned = _with_store(table, run)
    if pruned is None:
        return 1
    sys.stdout.write(f"pruned {pruned} record(s) from before {before}; daily totals kept\n")
    return 0


def _with_store(table: RouteTable, run: Any) -> Any:
    try:
        store = store_for(table)
    except SnapshotError as exc:
        sys.stderr.write(f"interlock: {exc}\n")
        return None

    async def main() -> Any:
        await store.open()
        try:
            return await run(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except Exception as exc:  # NOTE: a store that is down: one line, no traceback
        sys.stderr.write(f"interlock: cannot read the usage ledger: {type(exc).__name__}: {exc}\n")
        return None


def format_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str) -> str:
    """Rows as JSON (a list of objects), CSV (with a header) or an aligned text table."""
    if fmt == "json":
        return msgspec.json.format(msgspec.json.encode(list(rows))).decode() + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    if not rows:
        return "no usage recorded in that range\n"
    cells = [list(columns), *([_cell(row.get(c)) for c in columns] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    numeric = len(columns) - len(TOTAL_FIELDS)  # NOTE: totals are right-aligned
    lines = []
    for line in cells:
        padded = [
            v.rjust(w) if i >= numeric else v.ljust(w)
            for i, (v, w) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(padded).rstrip() + "\n")
    return "".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)
