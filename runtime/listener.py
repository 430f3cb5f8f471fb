"""Accept connections, cap them, and end them in order: Interlock's `worker_serve`.

Hypercorn's `worker_serve` (hypercorn/asyncio/run.py) is replaced for three reasons: it closes
idle and freshly accepted connections before it closes the listeners (so a request can be
accepted and then dropped), it has no connection cap, and at the drain deadline it leaves the
remaining requests to be cancelled by the event loop's teardown (tracebacks, no error event).
Here, on `stop`:

1. the listeners stop taking new connections (a socket filter drops SYNs, so a client is either
   refused at connect or served), the connections the kernel already completed are accepted,
   and only then are the listening sockets closed;
2. keep-alive connections close after their current response (``Connection: close``);
3. in-flight requests and streams get until `server.drain_timeout_s`;
4. then `end_requests()` ends each one in its API's shape (an error event in a stream), they get
   `END_GRACE_S` to write it, and whatever is left is cancelled and awaited;
5. the ASGI lifespan shuts down (the ledger is flushed).

    listener = Listener(app, config, sockets, settings=lambda: table.server, end_requests=f)
    await listener.serve(stop_event)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import resource
import socket
import struct
import sys
from collections.abc import Callable, Sequence

from hypercorn.asyncio.lifespan import Lifespan
from hypercorn.asyncio.statsd import StatsdLogger
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig
from hypercorn.typing import AppWrapper, LifespanState

from compiler.table import ServerSettings
from runtime.connections import GatewayConnection, refuse
from runtime.redaction import Redactor

log = logging.getLogger("interlock.server")

END_GRACE_S = 1.0  # after the drain deadline: time for each request to write its error event
ACCEPT_QUEUE_WAIT_S = 0.5  # upper bound on accepting what the kernel queued before the stop
FD_RESERVE = 64  # fds kept for listeners, upstream pools, config reads, logs and stores
REGISTER_S = 0.01  # for connections accepted just before the listener closed to register
MAX_REFUSING = 64  # connections being answered 503 at once; past this they are closed unread

_SO_ATTACH_FILTER = 26  # Linux <asm-generic/socket.h>
_BPF_RET_K = 0x06  # classic BPF `ret #k`; k = 0 drops the packet
_TCPI_UNACKED = 24  # offset of tcpi_unacked, the accept queue's length on a listening socket


def default_max_connections() -> int:
    """Half of what the open-file limit leaves after a reserve (a proxied request holds a client
    and an upstream socket): 20,000 fds -> 9,968 connections, 256 -> 96."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, (soft - FD_RESERVE) // 2)


class Listener:
    """Serves `app` on `sockets` until `serve`'s stop event is set; see the module docstring."""

    def __init__(
        self,
        app: AppWrapper,
        config: HypercornConfig,
        sockets: Sequence[socket.socket],
        *,
        settings: Callable[[], ServerSettings],
        end_requests: Callable[[], None],
        redactor: Callable[[], Redactor] = lambda: Redactor(()),
    ) -> None:
        self.app = app
        self.config = config
        self.sockets = list(sockets)
        self.settings = settings
        self.end_requests = end_requests
        self.redactor = redactor  # NOTE: the live snapshot's, for what reaches a log line
        self.context = WorkerContext(None)
        self.state: LifespanState = {}
        self.connections: set[asyncio.Task[None]] = set()
        self.refusing = 0
        self.default_cap = default_max_connections()

    def max_connections(self) -> int:
        return self.settings().max_connections or self.default_cap

    def keep_alive_s(self) -> float:
        return self.settings().keep_alive_timeout_s

    async def serve(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self.config.set_statsd_logger_class(StatsdLogger)
        lifespan = Lifespan(self.app, self.config, loop, self.state)
        lifespan_task = loop.create_task(lifespan.handle_lifespan())
        await lifespan.wait_for_startup()
        if lifespan_task.done() and lifespan_task.exception() is not None:
            raise lifespan_task.exception()  # type: ignore[misc]
        # NOTE: our own handles on the listening sockets: the event loop may take over (uvloop
        # duplicates) the ones it is given, and the filter and queue length are read from these
        controls = [sock.dup() for sock in self.sockets]
        servers = [
            await asyncio.start_server(self._accept, sock=sock, backlog=self.config.backlog)
            for sock in self.sockets
        ]
        try:
            await stop.wait()
        finally:
            deadline = loop.time() + self.settings().drain_timeout_s
            await _stop_accepting(servers, controls)
            await self.context.terminated.set()
            await self._drain(deadline)
            await lifespan.wait_for_shutdown()
            lifespan_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lifespan_task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limit = self.max_connections()
        if len(self.connections) >= limit:
            if self.refusing >= MAX_REFUSING:
                writer.transport.abort()
                return
            self.refusing += 1
            try:
                await refuse(reader, writer, limit)
            finally:
                self.refusing -= 1
            return
        task = asyncio.current_task()
        assert task is not None  # NOTE: asyncio runs a connection callback in its own task
        self.connections.add(task)
        try:
            connection = GatewayConnection(
                self.app,
                asyncio.get_running_loop(),
                self.config,
                self.context,
                self.state,
                reader,
                writer,
                keep_alive_s=self.keep_alive_s,
            )
            await connection.run()
        finally:
            self.connections.discard(task)

    async def _drain(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        # NOTE: a connection accepted in the listener's last moments registers when its task
        # first runs; give those a turn of the loop, then wait for every registered one
        await asyncio.sleep(REGISTER_S)
        while (pending := set(self.connections)) and loop.time() < deadline:
            await asyncio.wait(pending, timeout=deadline - loop.time())
        if not pending:
            return
        self.end_requests()
        _done, pending = await asyncio.wait(pending, timeout=END_GRACE_S)
        for task in pending:  # NOTE: a client too slow to take even the error event
            task.cancel()
        if pending:
            done, _stuck = await asyncio.wait(pending, timeout=END_GRACE_S)
            for task in done:  # NOTE: retrieved, so the loop's teardown prints nothing
                exc = None if task.cancelled() else task.exception()
                if exc is not None:
                    log.warning("connection ended with %s", self.redactor().text(repr(exc)))


async def _stop_accepting(
    servers: Sequence[asyncio.Server], controls: Sequence[socket.socket]
) -> None:
    loop = asyncio.get_running_loop()
    filtered = all([_drop_new_connections(sock) for sock in controls])
    if filtered:
        # NOTE: connections the kernel completed before the filter wait in the accept queue;
        # closing the listener would reset them, so the loop accepts them first
        until = loop.time() + ACCEPT_QUEUE_WAIT_S
        while any(_accept_queue(sock) for sock in controls) and loop.time() < until:  # noqa: ASYNC110
            await asyncio.sleep(0.001)  # NOTE: the kernel has no event for "queue empty"
        await asyncio.sleep(0)  # NOTE: let the loop hand the last accepted ones to `_accept`
    for server in servers:
        server.close()
    for sock in controls:
        sock.close()


def _drop_new_connections(sock: socket.socket) -> bool:
    """Attach a socket filter that drops every packet to the listening socket: new SYNs go
    unanswered (the client retries, then finds the port closed) and no connection joins the
    accept queue. Linux only; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    program = ctypes.create_string_buffer(struct.pack("HBBI", _BPF_RET_K, 0, 0, 0))
    fprog = struct.pack("HL", 1, ctypes.addressof(program))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True


def _accept_queue(sock: socket.socket) -> int:
    """How many completed connections wait to be accepted (tcpi_unacked of a listener)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return 0
    return int(struct.unpack_from("I", info, _TCPI_UNACKED)[0])
