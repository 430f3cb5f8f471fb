"""`interlock serve`: compile the config, then run the gateway on Hypercorn until a signal.

One function owns the server's life (`serve_async`): compile (exit 1 with diagnostics if the
config is broken), prepare the snapshot, bind, print where it listens and which version it
serves, then wait for SIGTERM/SIGINT and drain in-flight requests for up to the configured grace
period before closing upstream clients and flushing the access log.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from compiler import CompileResult, compile_config
from compiler.diagnostics import render_text
from runtime.app import Gateway, create_app
from runtime.snapshot import SnapshotError, prepare_snapshot


def report(result: CompileResult) -> None:
    for diagnostic in result.diagnostics:
        sys.stderr.write(render_text(diagnostic, dict(result.sources)) + "\n")


def hypercorn_config(binds: Sequence[str], drain_timeout_s: float) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = list(binds)
    config.graceful_timeout = drain_timeout_s
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    config.keep_alive_timeout = 75
    config.h11_max_incomplete_size = 256 * 1024  # NOTE: our own 431 check answers in API shape
    return config


def serve(config_path: str, *, binds: Sequence[str] | None, workers: int, watch: bool) -> int:
    """Run until stopped; 0 after a clean shutdown, 1 if the config cannot be served."""
    if workers != 1:
        sys.stderr.write("interlock: --workers > 1 is not supported yet\n")
        return 2
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return asyncio.run(serve_async(config_path, binds=binds))
    return uvloop.run(serve_async(config_path, binds=binds))


async def serve_async(config_path: str, *, binds: Sequence[str] | None) -> int:
    result = compile_config(config_path)
    report(result)
    if result.table is None:
        sys.stderr.write(f"interlock: {config_path} is invalid; not starting\n")
        return 1
    try:
        snapshot = prepare_snapshot(result.table)
    except SnapshotError as exc:
        sys.stderr.write(f"interlock: cannot serve {config_path}: {exc}\n")
        return 1
    table = result.table
    gateway = Gateway(snapshot)
    listen = list(binds or table.server.listen)
    config = hypercorn_config(listen, table.server.drain_timeout_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stderr.write(
        f"interlock: serving {config_path} (version {table.short_version}) on "
        + ", ".join(f"http://{b}" for b in listen)
        + "\n"
    )
    try:
        await hypercorn_serve(create_app(gateway), config, shutdown_trigger=stop.wait)
    finally:
        await gateway.state.pool.aclose()
        gateway.access_log.flush()
    return 0
