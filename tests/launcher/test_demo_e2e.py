"""`aiswarm demo`, the README's main command, runs to completion with the real CLIs and cleans up after itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.clis import InstalledClis

pytestmark = pytest.mark.e2e


def test_demo_runs_every_task_offline_and_leaves_nothing_behind(clis: InstalledClis, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": clis.path_env(),
        "AISWARM_HOME": str(
            tmp_path / "user-home"
        ),  # where first-use installs would go; the CLIs come from PATH
        "TMPDIR": str(tmp_path),
        "COLUMNS": "200",
    }
    done = subprocess.run(
        [sys.executable, "-m", "aiswarm_server", "demo", "--no-install", "--keep", str(tmp_path / "kept")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "every task done" in output
    for number in range(1, 5):
        assert f"#{number} " in output and "completed" in output
    kept = tmp_path / "kept" / "sample"
    assert (kept / "greeting.py").read_text().startswith("def greet(name: str) -> str:")
    assert "NOTES.md: the notes" in (kept / "SUMMARY.md").read_text()
    assert (tmp_path / "kept" / "logs").is_dir()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith("aiswarm-demo-")]
    assert leftovers == [], "the demo's temporary home and sample folder are removed"
    mine = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if any(str(tmp_path) in part for part in (p.info["cmdline"] or []))
    ]
    assert mine == [], f"processes left running: {mine}"
