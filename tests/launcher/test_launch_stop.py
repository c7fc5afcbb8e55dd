"""A stopped launch marks its agents offline at once (not idle until the broker gives up on them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker_harness import BrokerProcess
from tests.clis import InstalledClis

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "home").start()
    try:
        yield process
    finally:
        process.stop()


def agents(broker: BrokerProcess) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "aiswarm_server", "agents", "--json"],
        env={**os.environ, "AISWARM_HOME": str(broker.home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {agent["name"]: agent["status"] for agent in json.loads(done.stdout)}


def test_a_stopped_launch_shows_its_agents_offline_at_once(
    broker: BrokerProcess, tmp_path: Path, clis: InstalledClis
) -> None:
    # Per-task mode with no tasks: the agents register and wait on the broker without starting a CLI (the real CLI
    # is on PATH and a model endpoint is named, never called, so the launch's preflight passes).
    launch = subprocess.Popen(
        [sys.executable, "-m", "aiswarm_server", "launch", "--agents", "2", "--cli", "qwen", "--no-ui",
         "--url", broker.url, "--dir", str(tmp_path), "--model-endpoint", "http://127.0.0.1:9"],
        env={**os.environ, "AISWARM_HOME": str(broker.home), "PATH": clis.path_env()},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while agents(broker) != {"qwen-1": "idle", "qwen-2": "idle"}:
            assert launch.poll() is None, launch.communicate()[1]
            assert time.monotonic() < deadline, "the launch's agents never came up"
            time.sleep(0.2)
        launch.send_signal(signal.SIGINT)
        assert launch.wait(60) == 0
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.wait()
    assert agents(broker) == {"qwen-1": "offline", "qwen-2": "offline"}
