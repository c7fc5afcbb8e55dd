"""The warm pool end to end: ``aiswarm launch`` with one gemini agent keeps its next gemini started ahead of work.

One swarm (a broker process, the scripted model, ``aiswarm launch --cli gemini --warm-pool``) is shared by the tests
of this module, which run in order: the last one stops the launcher with SIGINT and looks for anything left behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.models import Task
from launcher.scripted_model import ScriptedModelServer
from tests.broker_harness import BrokerProcess
from tests.clis import InstalledClis
from tests.launcher.conftest import poll, started_by

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

AGENT = "gemini-1"


@dataclass
class WarmSwarm:
    """The broker, the scripted model and the launcher of one gemini agent with its warm pool."""

    broker: BrokerProcess
    model: ScriptedModelServer
    launcher: subprocess.Popen[bytes]
    home: Path
    workdir: Path
    launcher_log: Path

    def submit(self, path: str, content: str) -> int:
        """Submit one task writing ``content`` to ``path`` in the launch directory; its id."""
        spec = {
            "title": f"write {path}",
            "prompt": f"WRITE {path}\n```\n{content}\n```\n",
            "working_dir": str(self.workdir),
        }

        async def run() -> int:
            async with BrokerClient(self.broker.url, self.broker.primary_token) as client:
                return (await client.submit_tasks([spec])).tasks[0].id

        return asyncio.run(run())

    def task(self, task_id: int) -> Task:
        """The task as the broker has it now."""

        async def run() -> Task:
            async with BrokerClient(self.broker.url, self.broker.admin_token) as client:
                return (await client.get_task(task_id)).task

        return asyncio.run(run())

    def agent_log(self) -> str:
        """The agent's log so far."""
        path = self.home / "logs" / f"{AGENT}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def gemini_processes(self) -> list[psutil.Process]:
        """The launcher's children running the agent's gemini (warm or working)."""
        root = str(self.home / "agents" / AGENT)
        found: list[psutil.Process] = []
        for child in psutil.Process(self.launcher.pid).children():
            try:
                if root in child.environ().values():
                    found.append(child)
            except psutil.Error:
                continue
        return found

    def tail(self) -> str:
        """The end of the launcher's output and of the agent's log."""
        return self.launcher_log.read_text(errors="replace")[-3000:] + "\n---\n" + self.agent_log()[-4000:]


@pytest.fixture(scope="module")
def swarm(clis: InstalledClis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WarmSwarm]:
    """``aiswarm launch --agents 1 --cli gemini --warm-pool`` against a broker and the scripted model."""
    root = tmp_path_factory.mktemp("warm")
    home, workdir, user_home = root / "home", root / "work", root / "user"
    for d in (workdir, user_home):
        d.mkdir()
    broker = BrokerProcess(home, {"AISWARM_LEASE_SECONDS": "120"}).start()
    model = ScriptedModelServer().start()
    env = {
        **os.environ,
        "PATH": clis.path_env(),
        "HOME": str(user_home),
        "AISWARM_HOME": str(home),
        "NO_COLOR": "1",
    }
    env.pop("AISWARM_TOKEN", None)
    launcher_log = root / "launcher.log"
    with open(launcher_log, "wb") as out:
        launcher = subprocess.Popen(
            [
                *(sys.executable, "-m", "aiswarm_server", "launch", "--agents", "1", "--cli", "gemini"),
                *("--url", broker.url, "--model-endpoint", model.url, "--dir", str(workdir)),
                *("--warm-pool", "--grace", "5", "--no-ui"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    swarm = WarmSwarm(broker, model, launcher, home, workdir, launcher_log)
    try:
        yield swarm
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        broker_pid = broker.process.pid if broker.process else None
        for proc in started_by(home):
            if proc.pid != broker_pid:
                proc.kill()
        model.stop()
        broker.stop()


def test_a_warm_gemini_waits_without_model_requests_then_takes_a_task_and_completes_it(
    swarm: WarmSwarm,
) -> None:
    [warm] = poll(swarm.gemini_processes, 120, "the warm gemini to start")
    assert swarm.model.stats()["total"] == 0, "a warm CLI must not ask the model anything before its task"
    task_id = swarm.submit("warm/first.txt", "from a warm gemini")
    task = poll(
        lambda: (t := swarm.task(task_id)).status.value in ("completed", "failed", "dead") and t,
        300,
        "the task",
    )
    assert task.status.value == "completed", swarm.tail()
    assert (swarm.workdir / "warm/first.txt").read_text() == "from a warm gemini\n"
    assert f"starting gemini in {swarm.workdir} (warm)" in swarm.agent_log(), swarm.tail()
    assert task.attempts[-1].agent == AGENT
    # the warm gemini ran the task: it exits once it has given its final answer (after its report)
    poll(
        lambda: not warm.is_running() or warm.status() == psutil.STATUS_ZOMBIE, 120, "the warm gemini to exit"
    )


def test_after_a_task_the_next_gemini_is_warm_again_and_serves_the_next_task(swarm: WarmSwarm) -> None:
    poll(swarm.gemini_processes, 120, "the next warm gemini")
    task_id = swarm.submit("warm/second.txt", "again warm")
    task = poll(
        lambda: (t := swarm.task(task_id)).status.value in ("completed", "failed", "dead") and t,
        300,
        "the task",
    )
    assert task.status.value == "completed", swarm.tail()
    assert swarm.agent_log().count(" (warm)") >= 2, swarm.tail()


def test_launch_exit_leaves_no_cli_process_behind(swarm: WarmSwarm) -> None:
    poll(swarm.gemini_processes, 120, "a warm gemini before the stop")
    swarm.launcher.send_signal(signal.SIGINT)
    swarm.launcher.wait(60)
    broker_pid = swarm.broker.process.pid if swarm.broker.process else None
    left = poll(
        lambda: not [p for p in started_by(swarm.home) if p.pid != broker_pid],
        30,
        "every CLI process to be gone",
        every=0.5,
    )
    assert left
