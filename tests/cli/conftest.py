"""The ``aiswarm`` console script, run as a user runs it: a subprocess of the installed entry point."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

AISWARM = str(Path(sys.executable).parent / "aiswarm")
WIDE = {"COLUMNS": "250", "TERM": "dumb", "NO_COLOR": "1"}


@dataclass
class Ran:
    """What one command printed and how it exited."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def aiswarm(*args: str, home: Path | None = None, stdin: str = "", env: dict[str, str] | None = None) -> Ran:
    """Run ``aiswarm ARGS`` to completion (generous timeout: the machine is shared)."""
    full = {**os.environ, **WIDE, **(env or {})}
    full.pop("AISWARM_TOKEN", None)
    if home is not None:
        full["AISWARM_HOME"] = str(home)
    done = subprocess.run(
        [AISWARM, *args], input=stdin, capture_output=True, text=True, env=full, timeout=120, check=False
    )
    return Ran(done.returncode, done.stdout, done.stderr)


def closed_port() -> int:
    """A loopback port nothing listens on (just released by the OS)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
