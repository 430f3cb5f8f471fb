"""A real `interlock serve` subprocess for reload and lifecycle tests, and its fixture.

server = interlock(config_path, args=("--workers", "2"))   # started and ready
admin_config(server.url)["version"]
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
ADMIN_KEY = "il-admin-test-key"
_SALT = "0123456789abcdef"
ADMIN_HASH = f"sha256:{_SALT}:{hashlib.sha256((_SALT + ADMIN_KEY).encode()).hexdigest()}"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
UPSTREAM_KEY_ENV = "INTERLOCK_TEST_UPSTREAM_KEY"


# ---------------------------------------------------------------------------------------------
# A served Interlock in a subprocess (also used by tests/test_lifecycle.py).


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Interlock:
    """``interlock serve CONFIG`` on a free loopback port; stderr goes to a file (`log`)."""

    def __init__(
        self,
        config: Path,
        log_path: Path,
        *,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log: TextIO = log_path.open("w", encoding="utf-8")
        environ = {**os.environ, UPSTREAM_KEY_ENV: "sk-test", **(env or {})}
        self.proc = subprocess.Popen(
            [
                *prefix,  # e.g. ("prlimit", "--nofile=256"), which execs the server in place
                sys.executable,
                "-m",
                "runtime.cli",
                "serve",
                str(config),
                "--bind",
                f"127.0.0.1:{self.port}",
                *args,
            ],
            cwd=REPO,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def wait_ready(self, timeout: float = 20.0) -> Interlock:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"interlock exited {self.proc.returncode}:\n{self.log}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.02)
        raise AssertionError(f"interlock did not become ready in {timeout} s:\n{self.log}")

    def wait_log(self, pattern: str, timeout: float = 5.0, start: int = 0) -> re.Match[str]:
        """The first match of `pattern` in the log after offset `start`, polling until it shows."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.compile(pattern, re.MULTILINE).search(self.log, start)
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pattern!r}:\n{self.log}")
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit; idempotent."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            return self.proc.returncode
        finally:
            self._log.close()


@pytest.fixture
def interlock(tmp_path: Path) -> Iterator[Callable[..., Interlock]]:
    """``interlock(config_path, args=(...), env={...}, ready=True)`` -> a started server."""
    started: list[Interlock] = []

    def start(config: Path, *, ready: bool = True, **kwargs: Any) -> Interlock:
        server = Interlock(config, tmp_path / f"interlock-{len(started)}.log", **kwargs)
        started.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in started:
        server.stop()


def admin_config(url: str) -> dict[str, Any]:
    response = httpx.get(url + "/admin/config", headers=ADMIN, timeout=5)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} missing from /metrics"
    return float(found.group(1))
