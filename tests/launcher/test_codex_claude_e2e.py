"""codex and Claude Code as workers, end to end: ``aiswarm launch`` with the real binaries, a real broker and
the scripted model speaking the OpenAI Responses API (codex) and the Anthropic Messages API (Claude Code).

One broker and one scripted model serve the module; each test starts its own launcher with one agent of one
CLI, so which CLI did a task is never left to chance. Tasks are written in the scripted model's task grammar,
so the files each CLI writes are checked byte for byte.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.models import Task
from launcher.scripted_model import ScriptedModelServer
from tests.broker_harness import BrokerProcess
from tests.clis import InstalledClis

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

T = TypeVar("T")
TASK_WAIT = 240.0


@dataclass
class World:
    """The broker and scripted model the module shares, and the environment launchers run in."""

    broker: BrokerProcess
    model: ScriptedModelServer
    root: Path
    env: dict[str, str]

    def call(self, action: Callable[[BrokerClient], Awaitable[T]], token: str | None = None) -> T:
        async def run() -> T:
            async with BrokerClient(self.broker.url, token or self.broker.admin_token) as client:
                return await action(client)

        return asyncio.run(run())


@dataclass
class Worker:
    """One ``aiswarm launch --cli <cli> --agents 1`` and its working directory."""

    world: World
    cli: str
    launcher: subprocess.Popen[bytes]
    workdir: Path
    log: Path

    @property
    def agent(self) -> str:
        return f"{self.cli}-1"

    @property
    def agent_log(self) -> Path:
        return self.world.broker.home / "logs" / f"{self.agent}.log"

    def submit(self, prompt: str, title: str) -> int:
        spec = {"title": title, "prompt": prompt, "working_dir": str(self.workdir)}
        reply = self.world.call(lambda b: b.submit_tasks([spec]), token=self.world.broker.primary_token)
        return reply.tasks[0].id

    def wait_done(self, task_id: int) -> Task:
        deadline = time.monotonic() + TASK_WAIT
        while time.monotonic() < deadline:
            reply = self.world.call(lambda b: b.wait_for_tasks([task_id], mode="all", timeout_seconds=20))
            if reply.done:
                return self.world.call(lambda b: b.get_task(task_id)).task
            if self.launcher.poll() is not None:
                raise AssertionError(f"launcher exited {self.launcher.returncode}:\n{self.tail()}")
        raise AssertionError(f"task {task_id} not done in {TASK_WAIT:.0f}s:\n{self.tail()}")

    def wait_parked(self) -> None:
        poll(
            lambda: self.world.call(lambda b: b.broker_status()).parked_waits >= 1,
            120,
            f"{self.agent} parked",
        )

    def tail(self) -> str:
        parts = [self.log.read_text(errors="replace")[-3000:]]
        if self.agent_log.exists():
            parts.append(f"--- {self.agent}\n" + self.agent_log.read_text(errors="replace")[-4000:])
        return "\n".join(parts)


def poll(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def started_by(home: Path) -> list[psutil.Process]:
    """Live processes whose environment or command line mentions the aiswarm home (the agents' CLIs)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(str(home) in v for v in proc.environ().values()) or str(home) in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def world(clis: InstalledClis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("codex-claude")
    user_home = root / "user"
    user_home.mkdir()
    broker = BrokerProcess(root / "home", {"AISWARM_LEASE_SECONDS": "120"}).start()
    model = ScriptedModelServer().start()
    env = {
        **os.environ,
        "PATH": clis.path_env(),
        "HOME": str(user_home),  # no user logins are carried into the agents' homes
        "AISWARM_HOME": str(broker.home),
        "NO_COLOR": "1",
    }
    env.pop("AISWARM_TOKEN", None)
    try:
        yield World(broker, model, root, env)
    finally:
        model.stop()
        broker.stop()


@pytest.fixture(params=["codex", "claude"])
def worker(request: pytest.FixtureRequest, world: World) -> Iterator[Worker]:
    cli: str = request.param
    workdir = world.root / f"work-{cli}"
    workdir.mkdir(exist_ok=True)
    log = world.root / f"launcher-{cli}-{request.node.name}.log"
    with open(log, "wb") as out:
        launcher = subprocess.Popen(
            [
                *(sys.executable, "-m", "aiswarm_server", "launch", "--agents", "1", "--cli", cli),
                *("--url", world.broker.url, "--model-endpoint", world.model.url, "--dir", str(workdir)),
                *("--cool-down", "3", "--grace", "5", "--no-ui"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=world.env,
        )
    running = Worker(world, cli, launcher, workdir, log)
    try:
        yield running
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)
            try:
                launcher.wait(60)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
        broker_pid = world.broker.process.pid if world.broker.process else None
        for proc in started_by(world.broker.home / "agents" / running.agent):
            if proc.pid != broker_pid:
                proc.kill()


BLOCK = 'line one\n  it\'s "quoted" $HOME `not run` \\n 100%\nlast line'


def test_real_cli_does_tasks_through_aiswarm_launch_and_reports_its_usage(worker: Worker) -> None:
    """Three tasks: a fenced block with quotes, $ and backticks; progress then a one-line file; an overwrite."""
    worker.wait_parked()
    worker.world.model.reset_stats()
    written = worker.submit(f"WRITE out/{worker.cli}.txt\n```\n{BLOCK}\n```\n", "block")
    created = worker.submit(
        "PROGRESS halfway\nCreate the file out/one.txt containing exactly: one line", "create"
    )
    tasks = [worker.wait_done(written), worker.wait_done(created)]

    assert [t.status.value for t in tasks] == ["completed", "completed"], worker.tail()
    assert [t.attempts[-1].agent for t in tasks] == [worker.agent, worker.agent]
    assert (worker.workdir / "out" / f"{worker.cli}.txt").read_text() == BLOCK + "\n"
    assert (worker.workdir / "out" / "one.txt").read_text() == "one line"
    assert tasks[0].result == f"Wrote out/{worker.cli}.txt"
    replaced = worker.wait_done(
        worker.submit(f"Create the file out/{worker.cli}.txt containing exactly: new", "again")
    )
    assert replaced.status.value == "completed", worker.tail()
    assert (worker.workdir / "out" / f"{worker.cli}.txt").read_text() == "new"
    stats = worker.world.model.stats()["clis"][worker.cli]
    # One write each; Claude Code may refuse to overwrite a file it has not read (then Read and Write again).
    assert stats.get("work") in (3, 5) if worker.cli == "claude" else stats.get("work") == 3, stats
    assert stats.get("coordination") == 7 and "rejected" not in stats, stats
    usages = poll(
        lambda: (
            (found := re.findall(r'usage: \{.*"total_tokens": (\d+)', worker.agent_log.read_text()))[2:]
            and found
        ),
        60,  # the report reaches the broker before the CLI has exited
        "every run's usage in the agent log",
    )
    assert all(int(total) > 0 for total in usages), worker.tail()


@pytest.mark.parametrize(("status", "outcome"), [(401, "auth_failure"), (429, "rate_limited")])
def test_a_refused_model_request_is_classified_and_the_task_is_done_on_the_next_run(
    worker: Worker, status: int, outcome: str
) -> None:
    worker.wait_parked()
    worker.world.model.reset_stats()
    # Three attempts per run (model_max_attempts): exactly one run meets the fault.
    worker.world.model.inject_fault(status=status, agent=worker.agent, count=3, message=f"injected {status}")
    task_id = worker.submit("Create the file again.txt containing exactly: second run", f"after {status}")
    task = worker.wait_done(task_id)

    assert task.status.value == "completed", worker.tail()
    assert (worker.workdir / "again.txt").read_text() == "second run"
    log = worker.agent_log.read_text()
    assert f"run ended: {outcome}" in log, worker.tail()
    assert worker.world.model.stats()["agents"][worker.agent]["rejected"] == 3
