"""The ``aiswarm`` command's start-up: wall and CPU time of whole processes, as a user runs them.

Each command runs once to warm the bytecode cache (``child_environment``), then ``runs`` times; the CPU time is the
child's user + system time. ``status`` talks to the live benchmark broker, so it includes one tool call.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiswarm_server.bench.processes import child_environment
from aiswarm_server.bench.stats import summarize

COMMANDS = (("--version",), ("status", "--help"), ("status",))


def measure_cli_start(home: Path, runs: int) -> dict[str, Any]:
    """Per command (``"status --help"``...): wall and CPU summaries (ms) of ``runs`` runs against ``home``'s broker."""
    aiswarm = str(Path(sys.executable).parent / "aiswarm")
    env = child_environment(home, {"COLUMNS": "120", "TERM": "dumb", "NO_COLOR": "1"})
    measured: dict[str, Any] = {"runs": runs}
    for command in COMMANDS:
        walls: list[float] = []
        cpus: list[float] = []
        for attempt in range(runs + 1):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            done = subprocess.run(
                [aiswarm, *command], env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False
            )
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if done.returncode != 0:
                return {**measured, "error": f"aiswarm {' '.join(command)}: {done.stderr.decode()[-300:]}"}
            if attempt:  # the first run fills the bytecode cache
                walls.append(wall)
                cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        measured[" ".join(command)] = {"wall": summarize(walls), "cpu": summarize(cpus)}
    return measured
