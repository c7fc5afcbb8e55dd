"""Test harness: a real ``aiswarm serve`` process on a loopback port, and a service with a hand-driven clock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from aiswarm_server.home import ADMIN_TOKEN_FILE, PRIMARY_TOKEN_FILE


class FakeClock:
    """A clock the test moves by hand, so lease expiry needs no sleeping."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class BrokerProcess:
    """``python -m aiswarm_server serve`` on 127.0.0.1, port chosen by the OS."""

    home: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self, timeout: float = 90.0) -> BrokerProcess:
        port_file = self.home / f"port-{time.monotonic_ns()}"
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = self.home / "broker-test.log"
        env = {**os.environ, "AISWARM_HOME": str(self.home), **self.env_overrides}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "aiswarm_server",
                    "serve",
                    "--port",
                    str(self.port),
                    "--port-file",
                    str(port_file),
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text():
                self.port = int(port_file.read_text())
                return self
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"broker exited {self.process.returncode}: {self.log_path.read_text()[-2000:]}"
                )
            time.sleep(0.05)
        raise RuntimeError("broker did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        return (self.home / ADMIN_TOKEN_FILE).read_text().strip()

    @property
    def primary_token(self) -> str:
        return (self.home / PRIMARY_TOKEN_FILE).read_text().strip()

    def health(self) -> bool:
        try:
            return httpx.get(self.base + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
