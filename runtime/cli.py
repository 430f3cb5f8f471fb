"""The `interlock` command.

    interlock validate FILE...   [--format text|json|github] [--strict]
                                 exit 0 ok, 1 invalid (or warned, with --strict), 2 usage
    interlock dump FILE          the compiled table, deterministic and secret-free
    interlock schema             the JSON Schema of the config language
    interlock hash-key [KEY]     a new API key (or KEY) and the `hash:` line to put in the config
    interlock serve CONFIG [--log-level debug|info|warning|error]   run the gateway
    interlock usage report CONFIG [--since DAY] [--until DAY] [--group-by FIELD...]
                                 [--format table|json|csv]   the ledger, read from its store
    interlock usage prune CONFIG delete ledger records past `usage.retention_days`
    interlock orgs create|list CONFIG ...      organizations    } managed keys, straight on
    interlock projects create|list CONFIG ...  projects         } the config's auth.store
    interlock keys create|list|revoke CONFIG ...  API keys      } (runtime/keys_cli.py)
    interlock explain CONFIG REQUEST.json [--header K:V] [--key-id ID] [--json]
                                 where a request would go (route, model, targets, headers, body)
    interlock diff OLD NEW [--json] [--requests FILE]   semantic diff; exit 1 when they differ
    interlock test CONFIG TESTS.yaml [--junit FILE] [--min-coverage PCT]   route tests
                                 (runtime/ops_cli.py; none of them needs a server or a secret)

Only `serve` imports the server; the other commands need nothing but the compiler.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from compiler import CompileResult, compile_config
from compiler.diagnostics import render_github, render_json, render_text
from compiler.dump import dump_table
from compiler.schema import schema_text
from runtime.keys_cli import add_parsers as add_key_parsers
from runtime.ops_cli import add_parsers as add_ops_parsers


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interlock", description="Declarative LLM gateway.")
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check config files; exit 1 if any is invalid")
    validate.add_argument("paths", nargs="+", metavar="FILE", help="config file or directory")
    validate.add_argument("--format", choices=("text", "json", "github"), default="text")
    validate.add_argument("--strict", action="store_true", help="warnings fail too")
    validate.set_defaults(run=_validate)

    dump = sub.add_parser("dump", help="print the compiled route table")
    dump.add_argument("path", metavar="FILE")
    dump.set_defaults(run=_dump)

    schema = sub.add_parser("schema", help="print the config JSON Schema")
    schema.set_defaults(run=lambda _args: _print(schema_text()))

    hash_key = sub.add_parser("hash-key", help="make an API key and its config hash")
    hash_key.add_argument("key", nargs="?", help="hash this key instead of making one")
    hash_key.set_defaults(run=_hash_key)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("config", metavar="CONFIG", help="config file or directory")
    serve.add_argument("--bind", action="append", help="host:port (repeatable); overrides config")
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--no-watch", action="store_true", help="do not reload on file changes")
    serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="threshold of the server's own log lines, not the access log (default: warning,"
        " or $INTERLOCK_LOG_LEVEL)",
    )
    serve.set_defaults(run=_serve)

    usage = sub.add_parser("usage", help="read the usage ledger (no server needed)")
    usage_sub = usage.add_subparsers(dest="usage_command", required=True)
    report = usage_sub.add_parser("report", help="requests, tokens and cost, grouped")
    report.add_argument("config", metavar="CONFIG", help="config file or directory")
    report.add_argument("--since", type=_day, help="first day, YYYY-MM-DD (UTC)")
    report.add_argument("--until", type=_day, help="last day, YYYY-MM-DD (UTC)")
    report.add_argument(
        "--group-by",
        nargs="+",
        default=["model"],
        choices=("key", "project", "org", "model", "upstream", "day", "month"),
        help="fields to group by (default: model); rows are also split by currency",
    )
    report.add_argument("--format", choices=("table", "json", "csv"), default="table")
    report.set_defaults(run=_usage)
    prune = usage_sub.add_parser("prune", help="delete records past usage.retention_days")
    prune.add_argument("config", metavar="CONFIG", help="config file or directory")
    prune.set_defaults(run=_usage)
    add_key_parsers(sub)
    add_ops_parsers(sub)
    return parser


def _day(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {text!r}") from None


def _print(text: str) -> int:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _validate(args: argparse.Namespace) -> int:
    failed = False
    results: list[tuple[str, CompileResult]] = [(p, compile_config(p)) for p in args.paths]
    all_diagnostics = [d for _, r in results for d in r.diagnostics]
    if args.format == "json":
        _print(render_json(all_diagnostics))
    for path, result in results:
        fails = not result.ok or (args.strict and bool(result.warnings))
        failed = failed or fails
        if args.format == "github":
            for diagnostic in result.diagnostics:
                _print(render_github(diagnostic))
        elif args.format == "text":
            sources = _sources(result)
            for diagnostic in result.diagnostics:
                _print(render_text(diagnostic, sources))
            state = "invalid" if fails else "ok"
            counts = f"{len(result.errors)} error(s), {len(result.warnings)} warning(s)"
            version = f", version {result.table.short_version}" if result.table else ""
            sys.stderr.write(f"{path}: {state} ({counts}{version})\n")
    return 1 if failed else 0


def _dump(args: argparse.Namespace) -> int:
    result = compile_config(args.path)
    if result.table is None:
        sources = _sources(result)
        for diagnostic in result.diagnostics:
            sys.stderr.write(render_text(diagnostic, sources) + "\n")
        return 1
    return _print(dump_table(result.table))


def _sources(result: CompileResult) -> dict[str, str]:
    """The texts to show under diagnostics; when loading failed (a YAML syntax error, say) the
    result has none, so the files the diagnostics name are read again."""
    sources = dict(result.sources)
    for file in {d.span.file for d in result.diagnostics} - set(sources):
        try:
            sources[file] = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
    return sources


def _hash_key(args: argparse.Namespace) -> int:
    key = args.key or "il-" + secrets.token_urlsafe(32)
    salt = secrets.token_hex(8)
    digest = hashlib.sha256((salt + key).encode()).hexdigest()
    if not args.key:
        _print(f"key:  {key}    (shown once; give it to the client)")
    return _print(f'hash: "sha256:{salt}:{digest}"')


def _usage(args: argparse.Namespace) -> int:
    result = compile_config(args.config)
    if result.table is None:
        sources = _sources(result)
        for diagnostic in result.errors:
            sys.stderr.write(render_text(diagnostic, sources) + "\n")
        return 1
    from runtime.usage_report import print_report, prune_ledger  # NOTE: drivers on demand

    if args.usage_command == "prune":
        return prune_ledger(result.table)
    return print_report(
        result.table,
        since=args.since,
        until=args.until,
        group_by=args.group_by,
        fmt=args.format,
    )


def _serve(args: argparse.Namespace) -> int:
    # NOTE: a SIGHUP while the server is still importing must not kill it (reloads come later)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if args.log_level:
        os.environ["INTERLOCK_LOG_LEVEL"] = args.log_level  # NOTE: spawned workers inherit it
    from runtime.server import serve  # NOTE: only `serve` pays for importing the server

    return serve(args.config, binds=args.bind, workers=args.workers, watch=not args.no_watch)


if __name__ == "__main__":
    raise SystemExit(main())
