"""Running the broker from the shell and waiting on a task: serve, stop, submit --wait across a restart."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import socket
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from aiswarm_server.broker_client import BrokerClient
from tests.broker_harness import BrokerProcess
from tests.cli.conftest import AISWARM, WIDE, aiswarm
from tests.reliability.swarm import START_TIMEOUT

LINE_TIMEOUT = 60.0


@pytest.fixture
def submit_and_wait() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``aiswarm submit TITLE -p ... --wait``; any still running at the end of the test is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(home: Path, title: str, *extra: str) -> subprocess.Popen[str]:
        env = {**os.environ, **WIDE, "AISWARM_HOME": str(home)}
        process = subprocess.Popen(
            [AISWARM, "submit", title, "-p", "do it", "--wait", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def first_line(stream: IO[str]) -> str:
    """The next line of a child's output, or a failure after a generous deadline (never a hang)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    return lines.get(timeout=LINE_TIMEOUT)


def submitted_id(process: subprocess.Popen[str]) -> int:
    assert process.stderr is not None
    line = first_line(process.stderr)
    match = re.search(r"submitted task #(\d+); waiting", line)
    assert match, line
    return int(match.group(1))


async def work_on(broker: BrokerProcess, agent: str, task_id: int, *, success: bool) -> None:
    """A worker (a real MCP client with its own token) claims the task and reports on it."""
    async with BrokerClient(broker.url, broker.admin_token) as admin:
        token = (await admin.issue_agent_token(agent)).token
    async with BrokerClient(broker.url, token) as worker:
        await worker.register_agent(cli="test")
        claim = await worker.claim_task(task_id)
        assert claim.claimed and claim.fence_token is not None, claim.message
        await worker.report_task_completion(
            task_id,
            claim.fence_token,
            success=success,
            result="done" if success else None,
            error=None if success else "cannot be done",
            retryable=False,
        )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "home").start(START_TIMEOUT)
    yield process
    process.stop()


def test_submit_wait_exits_1_when_the_task_failed(
    broker: BrokerProcess, submit_and_wait: Callable[..., subprocess.Popen[str]]
) -> None:
    process = submit_and_wait(broker.home, "doomed")
    task_id = submitted_id(process)
    asyncio.run(work_on(broker, "failer-1", task_id, success=False))
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, err
    assert f"Task #{task_id} failed: cannot be done" in out


def test_submit_wait_survives_a_broker_restart_and_shows_the_attempts(
    broker: BrokerProcess, submit_and_wait: Callable[..., subprocess.Popen[str]]
) -> None:
    process = submit_and_wait(broker.home, "outlives its broker", "--json")
    task_id = submitted_id(process)
    broker.stop()
    restarted = BrokerProcess(broker.home).start(START_TIMEOUT)
    try:
        asyncio.run(work_on(restarted, "finisher-1", task_id, success=True))
        out, err = process.communicate(timeout=120)
    finally:
        restarted.stop()
    assert process.returncode == 0, err
    task = json.loads(out)
    assert task["id"] == task_id and task["status"] == "completed" and task["result"] == "done"
    assert [a["agent"] for a in task["attempts"]] == ["finisher-1"]
    assert "Retrying until it is back" in err and "reconnected" in err


def test_serve_names_its_url_and_stop_ends_it_gracefully(broker: BrokerProcess) -> None:
    assert broker.log_path is not None
    assert f"serving {broker.url}" in broker.log_path.read_text()
    ran = aiswarm("stop", "--home", str(broker.home))
    assert ran.code == 0, ran.err
    # uvicorn re-raises the SIGTERM once it has shut down gracefully (answered waits, withdrew broker.json)
    assert broker.process is not None and broker.process.wait(30) in (0, -15)
    assert not (broker.home / "broker.json").exists()
    again = aiswarm("stop", "--home", str(broker.home))
    assert again.code == 1 and "nothing to stop" in again.err and len(again.err_lines) == 1


def test_a_taken_port_fails_the_start_in_one_line_and_leaves_no_database(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = aiswarm("serve", "--home", str(home), "--port", str(port))
    assert ran.code == 1
    assert ran.err_lines[-1].startswith(f"error: cannot listen on 127.0.0.1:{port}"), ran.err
    assert not list(home.glob("aiswarm.db*"))


def test_the_database_files_are_private(broker: BrokerProcess) -> None:
    assert aiswarm("submit", "private", "-p", "y", home=broker.home).code == 0
    files = list(broker.home.glob("aiswarm.db*"))
    assert {f.name for f in files} >= {"aiswarm.db", "aiswarm.db-wal", "aiswarm.db-shm"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
