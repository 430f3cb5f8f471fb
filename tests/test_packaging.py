"""A plain (non-editable) install carries the schema and runs `interlock validate`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_wheel_ships_the_schema_and_validates(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("interlock-*.whl")
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    shipped = unpacked / "compiler" / "schema" / "interlock.schema.json"
    assert shipped.read_bytes() == (ROOT / "schemas" / "interlock.schema.json").read_bytes()
    entry_points = next(unpacked.glob("interlock-*.dist-info")) / "entry_points.txt"
    assert "interlock = runtime.cli:main" in entry_points.read_text()
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from runtime.cli import main; sys.exit(main())",
            "validate",
            str(ROOT / "examples" / "quickstart.yaml"),
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "quickstart.yaml: ok" in run.stderr
