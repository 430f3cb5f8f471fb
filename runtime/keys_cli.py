"""`interlock orgs|projects|keys ...`: the managed keys of a config's ``auth.store``, straight on
the store, no server needed (so a bootstrap script can run them before the first `serve`)::

    interlock orgs create gateway.yaml --id acme --name "ACME Corp"
    interlock projects create gateway.yaml --id acme-web --org acme --limits plan-pro
    interlock keys create gateway.yaml --project acme-web --name "web (prod)" --format json
    {"id": "key-1a2b3c4d", "key": "il-1a2b3c4d-…", "prefix": "1a2b3c4d", ...}

The same checks as the admin API (`runtime/tenancy.py`), against the config's table; changes are
audited as ``cli:<user>``. A serving process sees them within its poll interval (500 ms). The
runtime modules are imported only when a command runs: `interlock validate` stays light.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from compiler.table import RouteTable
    from runtime.state.keystore import KeyStore
    from runtime.tenancy import Tenancy

_ORG_COLUMNS = ("id", "name", "created")
_PROJECT_COLUMNS = ("id", "org", "name", "limits", "created")
_KEY_COLUMNS = (
    "id",
    "name",
    "prefix",
    "project",
    "org",
    "status",
    "models",
    "limits",
    "expires",
    "last_used",
)
_PAGE = 10_000

Operation = Callable[["Tenancy", argparse.Namespace], Awaitable[str]]


def run(args: argparse.Namespace) -> int:
    """Compile `args.config` (exit 1 with the errors when it is broken), then `run_command`."""
    from compiler import compile_config
    from compiler.diagnostics import render_text

    result = compile_config(args.config)
    if result.table is None:
        for diagnostic in result.errors:
            sys.stderr.write(render_text(diagnostic, dict(result.sources)) + "\n")
        return 1
    return run_command(result.table, args)


def run_command(table: RouteTable, args: argparse.Namespace) -> int:
    """Run ``interlock <args.command> <args.action>`` on the key store of `table`; 0 or 1."""
    from runtime.keys import store_for_target
    from runtime.snapshot import SnapshotError, key_store_target
    from runtime.tenancy import Tenancy, TenancyError

    operation = _OPERATIONS[(args.command, args.action)]
    try:
        target = key_store_target(table)
    except SnapshotError as exc:
        return _fail(str(exc))
    if target is None:
        return _fail("the config has no auth.store, so there are no managed keys")
    store = store_for_target(target)
    try:
        output = asyncio.run(_with_store(store, Tenancy(store, table, _actor()), args, operation))
    except TenancyError as exc:
        return _fail(exc.message)
    except Exception as exc:  # NOTE: a store that is down: one line, no traceback
        return _fail(f"cannot use the key store: {type(exc).__name__}: {exc}")
    sys.stdout.write(output)
    return 0


async def _with_store(
    store: KeyStore, tenancy: Tenancy, args: argparse.Namespace, operation: Operation
) -> str:
    await store.open()
    try:
        return await operation(tenancy, args)
    finally:
        await store.close()


def _fail(message: str) -> int:
    sys.stderr.write(f"interlock: {message}\n")
    return 1


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # NOTE: no user name in some containers
        return "cli"


# --- the operations


async def _orgs_create(tenancy: Tenancy, args: argparse.Namespace) -> str:
    from runtime.tenancy import OrgInput

    org = await tenancy.create_org(OrgInput(id=args.id, name=args.name))
    return _render(org, _ORG_COLUMNS, args.format)


async def _orgs_list(tenancy: Tenancy, args: argparse.Namespace) -> str:
    return _render_rows(await tenancy.list_orgs(), _ORG_COLUMNS, args.format)


async def _projects_create(tenancy: Tenancy, args: argparse.Namespace) -> str:
    from runtime.tenancy import ProjectInput

    data = ProjectInput(id=args.id, org=args.org, name=args.name, limits=args.limits or [])
    return _render(await tenancy.create_project(data), _PROJECT_COLUMNS, args.format)


async def _projects_list(tenancy: Tenancy, args: argparse.Namespace) -> str:
    rows = await tenancy.list_projects(args.org)
    return _render_rows(rows, _PROJECT_COLUMNS, args.format)


async def _keys_create(tenancy: Tenancy, args: argparse.Namespace) -> str:
    from runtime.tenancy import KeyInput

    data = KeyInput(
        project=args.project,
        name=args.name,
        id=args.id,
        models=args.models,
        expires=args.expires,
        limits=args.limits or [],
        tags=dict(args.tag or []),
    )
    created = await tenancy.create_key(data)
    if args.format == "json":
        return _json(created)
    return (
        f"key:     {created['key']}    (shown once; give it to the client)\n"
        f"id:      {created['id']}\n"
        f"project: {created['project']} (org {created['org']})\n"
    )


async def _keys_list(tenancy: Tenancy, args: argparse.Namespace) -> str:
    rows: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = await tenancy.list_keys(project=args.project, org=args.org, after=after, limit=_PAGE)
        rows += page["data"]
        after = page["next"]
        if after is None:
            break
    return _render_rows(rows, _KEY_COLUMNS, args.format)


async def _keys_revoke(tenancy: Tenancy, args: argparse.Namespace) -> str:
    key = await tenancy.revoke_key(args.id)
    if args.format == "json":
        return _json(key)
    return f"revoked {key['id']} (prefix {key['prefix']}) at {key['revoked']}\n"


_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("orgs", "create"): _orgs_create,
    ("orgs", "list"): _orgs_list,
    ("projects", "create"): _projects_create,
    ("projects", "list"): _projects_list,
    ("keys", "create"): _keys_create,
    ("keys", "list"): _keys_list,
    ("keys", "revoke"): _keys_revoke,
}


# --- output


def _json(data: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(data)).decode() + "\n"


def _render(row: dict[str, Any], columns: Sequence[str], fmt: str) -> str:
    if fmt == "json":
        return _json(row)
    width = max(len(c) for c in columns) + 1
    return "".join(f"{(c + ':').ljust(width)} {_cell(row.get(c))}\n" for c in columns)


def _render_rows(rows: list[dict[str, Any]], columns: Sequence[str], fmt: str) -> str:
    if fmt == "json":
        return _json(rows)
    if not rows:
        return "none\n"
    cells = [list(columns), *([_cell(row.get(c)) for c in columns] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in cells
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


# --- argparse


def add_parsers(sub: Any) -> None:
    """Add ``orgs``, ``projects`` and ``keys`` to the `interlock` parser's subcommands."""
    orgs = sub.add_parser("orgs", help="organizations of the managed keys (auth.store)")
    orgs_sub = orgs.add_subparsers(dest="action", required=True)
    create = _command(orgs_sub, "create", "add an organization")
    create.add_argument("--id", required=True, help="the org's id (what match.key.org tests)")
    create.add_argument("--name", help="a human-readable name (default: the id)")
    _command(orgs_sub, "list", "list the organizations")

    projects = sub.add_parser("projects", help="projects of the managed keys (auth.store)")
    projects_sub = projects.add_subparsers(dest="action", required=True)
    create = _command(projects_sub, "create", "add a project to an organization")
    create.add_argument("--id", required=True, help="the project's id (limit scope project)")
    create.add_argument("--org", required=True, help="the organization it belongs to")
    create.add_argument("--name", help="a human-readable name (default: the id)")
    create.add_argument("--limits", nargs="+", metavar="POLICY", help="limits for all its keys")
    listing = _command(projects_sub, "list", "list the projects")
    listing.add_argument("--org", help="only this organization's")

    keys = sub.add_parser("keys", help="managed API keys (auth.store)")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    create = _command(keys_sub, "create", "make a key (printed once) for a project")
    create.add_argument("--project", required=True)
    create.add_argument("--name", required=True, help="a human-readable name")
    create.add_argument("--id", help="the key's id (default: key-<prefix>)")
    create.add_argument("--models", nargs="+", metavar="GLOB", help="models it may use")
    create.add_argument("--expires", metavar="TIME", help="2027-01-31 or 2027-01-31T12:00:00Z")
    create.add_argument("--limits", nargs="+", metavar="POLICY", help="limit policies")
    create.add_argument("--tag", action="append", type=_tag, metavar="NAME=VALUE")
    listing = _command(keys_sub, "list", "list the keys (never the keys themselves)")
    listing.add_argument("--project", help="only this project's")
    listing.add_argument("--org", help="only this organization's")
    revoke = _command(keys_sub, "revoke", "revoke a key (refused on every server within 1 s)")
    revoke.add_argument("id", metavar="ID")


def _command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help)
    parser.add_argument("config", metavar="CONFIG", help="config file or directory")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(run=run)
    return parser


def _tag(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a tag is NAME=VALUE, not {text!r}")
    return name, value
