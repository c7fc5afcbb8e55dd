"""Session mode keeps per-task mode's guarantees: the task's directory and the task's deadline.

A real broker process, the real qwen-code (which refuses to write outside its workspace), the scripted model and
the supervisor in this process, in session mode: the CLI loops on ``wait_for_next_event`` itself.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.models import MergeState, Task
from launcher.agents import AgentPlan
from launcher.scripted_model import ScriptedModelServer
from launcher.supervisor import AgentState, LaunchConfig, Supervisor
from tests.broker_harness import BrokerProcess
from tests.clis import InstalledClis

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "home").start()
    try:
        yield process
    finally:
        process.stop()


def test_a_session_worker_does_a_task_outside_its_directory_there_and_is_stopped_at_the_tasks_deadline(
    broker: BrokerProcess, clis: InstalledClis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", clis.path_env())
    model = ScriptedModelServer().start()
    user_home, launch_dir, elsewhere = tmp_path / "user", tmp_path / "launch", tmp_path / "elsewhere"
    for directory in (user_home, launch_dir, elsewhere):
        directory.mkdir()
    config = LaunchConfig(
        agents=[AgentPlan("qwen-1", "qwen")],
        broker_url=broker.url,
        admin_token=broker.admin_token,
        home=broker.home,
        workdir=launch_dir,
        mode="session",
        endpoint_url=model.url,
        task_timeout=10,
        base_env={**os.environ, "HOME": str(user_home)},
    )

    async def finished(primary: BrokerClient, task_id: int) -> Task:
        async with asyncio.timeout(300):
            while not (await primary.wait_for_tasks([task_id], timeout_seconds=30)).done:
                pass
        return (await primary.get_task(task_id)).task

    async def scenario() -> tuple[Task, Task]:
        supervisor = Supervisor(config)
        run = asyncio.create_task(supervisor.run())
        try:
            async with BrokerClient(broker.url, broker.primary_token) as primary:
                async with asyncio.timeout(120):
                    while supervisor.views["qwen-1"].state is not AgentState.RUNNING:  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                reply = await primary.submit_task(
                    "elsewhere", "WRITE out.txt\n```\nwritten elsewhere\n```\n", working_dir=str(elsewhere)
                )
                moved = await finished(primary, reply.tasks[0].id)
                # every model answer now takes 15 s: the session holds the task past its 10 s deadline
                fault = model.inject_fault(status=None, delay_seconds=15, agent="qwen-1")
                slow = (
                    await primary.submit_task(
                        "slow", "WRITE slow.txt\n```\nfinally\n```\n", working_dir=str(launch_dir)
                    )
                ).tasks[0]
                async with asyncio.timeout(240):
                    while not (await primary.get_task(slow.id)).task.failures:  # noqa: ASYNC110
                        await asyncio.sleep(0.2)
                model.clear_faults(fault_id=fault)
                late = await finished(primary, slow.id)
                return moved, late
        finally:
            supervisor.stop()
            await asyncio.wait_for(run, 60)

    try:
        moved, late = asyncio.run(scenario())
    finally:
        model.stop()
    log = (broker.home / "logs" / "qwen-1.log").read_text(errors="replace")
    assert moved.status.value == "completed", log[-3000:]
    assert [(a.agent, a.outcome.value) for a in moved.attempts] == [("qwen-1", "completed")]
    assert (elsewhere / "out.txt").read_text() == "written elsewhere\n"
    assert f"is in {elsewhere}: running it there" in log
    assert late.status.value == "completed", log[-3000:]
    first = late.attempts[0]
    assert first.outcome.value == "failed" and "deadline passed" in (first.error or ""), late.attempts
    assert (launch_dir / "slow.txt").read_text() == "finally\n"


def test_a_session_worker_runs_a_task_of_a_git_checkout_in_its_own_worktree_and_it_is_merged(
    broker: BrokerProcess, clis: InstalledClis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", clis.path_env())
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-global-gitconfig"))
    model = ScriptedModelServer().start()
    user_home, repo = tmp_path / "user", tmp_path / "project"
    for directory in (user_home, repo):
        directory.mkdir()
    for args in (
        ["init", "-q", "-b", "main"],
        ["config", "user.name", "The User"],
        ["config", "user.email", "user@example.test"],
    ):
        subprocess.run(["git", *args], cwd=repo, check=True)
    (repo / "README").write_text("the project\n")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "initial"], cwd=repo, check=True)
    config = LaunchConfig(
        agents=[AgentPlan("qwen-1", "qwen")],
        broker_url=broker.url,
        admin_token=broker.admin_token,
        home=broker.home,
        workdir=repo,
        mode="session",
        endpoint_url=model.url,
        isolation="worktree",
        base_env={**os.environ, "HOME": str(user_home)},
    )

    async def scenario() -> Task:
        supervisor = Supervisor(config)
        run = asyncio.create_task(supervisor.run())
        try:
            async with BrokerClient(broker.url, broker.primary_token) as primary:
                reply = await primary.submit_task(
                    "isolated", "WRITE out.txt\n```\nwritten in a worktree\n```\n", working_dir=str(repo)
                )
                task_id = reply.tasks[0].id
                async with asyncio.timeout(300):
                    while not (await primary.wait_for_tasks([task_id], timeout_seconds=30)).done:
                        pass
                return (await primary.get_task(task_id)).task
        finally:
            supervisor.stop()
            await asyncio.wait_for(run, 60)

    try:
        task = asyncio.run(scenario())
    finally:
        model.stop()
    log = (broker.home / "logs" / "qwen-1.log").read_text(errors="replace")
    assert task.status.value == "completed" and task.merge_state is MergeState.MERGED, log[-3000:]
    assert task.workspace and task.workspace.startswith(str(broker.home / "worktrees")), task.workspace
    assert f"is in {repo}: running it there" in log
    assert [(a.agent, a.outcome.value) for a in task.attempts] == [("qwen-1", "completed")]
    assert (repo / "out.txt").read_text() == "written in a worktree\n"
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True)
    assert status.stdout == ""
    committed = subprocess.run(["git", "log", "-1", "--format=%s"], cwd=repo, capture_output=True, text=True)
    assert committed.stdout.strip() == f"aiswarm task {task.id}: isolated"
