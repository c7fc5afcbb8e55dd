"""The servers the benchmark measures, each a real subprocess on loopback that the benchmark always stops.

``BenchBroker`` is ``python -m aiswarm_server serve`` in a throw-away home; ``NoopServer`` is a tiny MCPServer
with one ``ping`` tool served by the same uvicorn configuration (the no-op floor). Both pick a free port and
write it to a port file, as ``tests/broker_harness.py`` does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

import psutil

from aiswarm_server.home import ADMIN_TOKEN_FILE, PRIMARY_TOKEN_FILE

HOST = "127.0.0.1"


def child_environment(home: Path | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for every subprocess the benchmark starts.

    With ``PYTHONDONTWRITEBYTECODE`` set (as in this sandbox) each new interpreter recompiles the whole SDK,
    ~20 s on a busy 2-core machine; a bytecode cache outside the source tree keeps start-up short without
    writing into the virtualenv.
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env.setdefault("PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "aiswarm-bench-pycache"))
    if home is not None:
        env["AISWARM_HOME"] = str(home)
    return {**env, **(extra or {})}


class ServedProcess:
    """A server subprocess that announces its port in a file; ``with`` it to be sure it is stopped."""

    name = "server"

    def __init__(self, home: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.env = env or {}
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = home / f"{self.name}.log"

    def command(self, port_file: Path) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Self:
        self.home.mkdir(parents=True, exist_ok=True)
        port_file = self.home / f"{self.name}.port"
        port_file.unlink(missing_ok=True)
        env = child_environment(self.home, self.env)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(port_file), stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = port_file.read_text() if port_file.exists() else ""
            if text:
                self.port = int(text)
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.process.returncode}: {self.log_tail()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start within {timeout} s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def open_fds(self) -> int:
        return int(psutil.Process(self.pid).num_fds())

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BenchBroker(ServedProcess):
    """The real broker, ``python -m aiswarm_server serve --port 0``, in its own home."""

    name = "broker"

    def command(self, port_file: Path) -> list[str]:
        return [sys.executable, "-m", "aiswarm_server", "serve", "--port", "0", "--port-file", str(port_file)]

    @property
    def admin_token(self) -> str:
        return (self.home / ADMIN_TOKEN_FILE).read_text().strip()

    @property
    def primary_token(self) -> str:
        return (self.home / PRIMARY_TOKEN_FILE).read_text().strip()


class NoopServer(ServedProcess):
    """``python -m aiswarm_server.bench.noop_server``: the floor."""

    name = "noop"

    def command(self, port_file: Path) -> list[str]:
        return [sys.executable, "-m", "aiswarm_server.bench.noop_server", "--port-file", str(port_file)]
