"""The compiler is pure: compiling a config imports no server, client or runtime module.

Run in a fresh interpreter, so that what other tests imported does not count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("starlette", "hypercorn", "httpx", "watchfiles", "uvloop", "anyio", "runtime")

PROBE = """
import json, sys
import compiler
result = compiler.compile_config("examples/quickstart.yaml")
from compiler.dump import dump_table
dump_table(result.table)
print(json.dumps({"ok": result.ok, "modules": sorted(sys.modules)}))
"""


def test_compiling_imports_no_runtime_module() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["ok"]
    leaked = [
        name
        for name in report["modules"]
        if any(name == root or name.startswith(root + ".") for root in FORBIDDEN)
    ]
    assert leaked == []
