"""codex and Claude Code as workers, end to end: ``aiswarm launch`` with the real binaries, a real broker and
the scripted model speaking the OpenAI Responses API (codex) and the Anthropic Messages API (Claude Code).

One broker and one scripted model serve the module; each test starts its own launcher with one agent of one
CLI, so which CLI did a task is never left to chance. Tasks are written in the scripted model's task grammar,
so the files each CLI writes are checked byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aiswarm_server.models import Task
from launcher.scripted_model import ScriptedModelServer
from tests.broker_harness import BrokerProcess
from tests.launcher.conftest import LaunchedSwarm, LaunchSwarm, poll

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TASK_WAIT = 240.0


@dataclass
class World:
    """The broker and scripted model the module shares."""

    broker: BrokerProcess
    model: ScriptedModelServer


@dataclass
class Worker:
    """One ``aiswarm launch --cli <cli> --agents 1`` against the module's broker and model."""

    world: World
    cli: str
    swarm: LaunchedSwarm

    @property
    def agent(self) -> str:
        return f"{self.cli}-1"

    @property
    def workdir(self) -> Path:
        return self.swarm.workdir

    @property
    def agent_log(self) -> Path:
        return self.swarm.agent_log(self.agent)

    def submit(self, prompt: str, title: str) -> int:
        return self.swarm.submit_specs([{"title": title, "prompt": prompt}])[0]

    def wait_done(self, task_id: int) -> Task:
        return self.swarm.wait_done([task_id], TASK_WAIT)[0]

    def wait_parked(self) -> None:
        self.swarm.wait_parked()

    def tail(self) -> str:
        return self.swarm.tail()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    broker = BrokerProcess(tmp_path_factory.mktemp("codex-claude") / "home", {"AISWARM_LEASE_SECONDS": "120"})
    model = ScriptedModelServer().start()
    try:
        yield World(broker.start(), model)
    finally:
        model.stop()
        broker.stop()


@pytest.fixture(params=["codex", "claude"])
def worker(request: pytest.FixtureRequest, world: World, launch_swarm: LaunchSwarm) -> Iterator[Worker]:
    cli: str = request.param
    swarm = launch_swarm(
        cli=cli,
        agents=(f"{cli}-1",),
        args=("--cool-down", "3"),
        broker=world.broker,
        model=world.model,
        name=f"launch-{cli}",
    )
    try:
        yield Worker(world, cli, swarm)
    finally:
        swarm.stop()  # the next test's launcher is the only one running this CLI


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
    assert [t.result for t in tasks] == [
        f"Wrote out/{worker.cli}.txt",
        "Wrote out/one.txt",
    ]  # the final answers
    replaced = worker.wait_done(
        worker.submit(f"Create the file out/{worker.cli}.txt containing exactly: new", "again")
    )
    assert replaced.status.value == "completed", worker.tail()
    assert (worker.workdir / "out" / f"{worker.cli}.txt").read_text() == "new"
    stats = worker.world.model.stats()["clis"][worker.cli]
    # One write each; Claude Code may refuse to overwrite a file it has not read (then Read and Write again).
    assert stats.get("work") in (3, 5) if worker.cli == "claude" else stats.get("work") == 3, stats
    # The one broker call is the PROGRESS the second task asks for: the tasks are in the prompts.
    assert stats.get("coordination") == 1 and "rejected" not in stats, stats
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
