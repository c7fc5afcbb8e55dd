"""Per-task workers run in the task's ``working_dir``, not in the directory the launcher started in.

A real broker process, the real opencode and qwen-code binaries, the scripted model (tracing every request)
and the supervisor in this process. The launch directory and each task's directory differ; each CLI states its
working directory to the model (opencode ``Working directory: X``, qwen ``I'm currently working in the
directory: X``), and that is where a model resolves relative paths, so both the files and the stated
directories are checked. opencode takes its directory from ``PWD``: without the launcher setting it, the CLI
inherits this process's ``PWD`` and states the wrong one.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiswarm_server.broker_client import BrokerClient
from launcher.agents import AgentPlan
from launcher.personas import Persona
from launcher.scripted_model import ScriptedModelServer
from launcher.scripted_model.app import TRACE_ENV
from launcher.supervisor import AgentState, LaunchConfig, Supervisor
from tests.broker_harness import BrokerProcess
from tests.clis import InstalledClis

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

STATED_DIR = {
    "opencode": "Working directory: {}",
    "qwen": "I'm currently working in the directory: {}",
}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "home").start()
    try:
        yield process
    finally:
        process.stop()


def request_texts(trace: Path, agent: str) -> str:
    """Everything ``agent``'s CLI sent the model (system prompts and messages), as one string."""
    texts: list[str] = []
    for line in trace.read_text().splitlines():
        entry = json.loads(line)
        if entry["headers"].get("x-aiswarm-agent") == agent:
            texts.append(json.dumps(entry["body"]))
    return "\n".join(texts)


def test_opencode_and_qwen_workers_write_into_the_task_working_dir_not_the_launch_dir(
    broker: BrokerProcess, clis: InstalledClis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = tmp_path / "model-trace.jsonl"
    monkeypatch.setenv(TRACE_ENV, str(trace))
    monkeypatch.setenv("PATH", clis.path_env())
    model = ScriptedModelServer().start()
    user_home, launch_dir = tmp_path / "user", tmp_path / "launch"
    task_dirs = {cli: tmp_path / f"task-{cli}" for cli in STATED_DIR}
    for directory in (user_home, launch_dir, *task_dirs.values()):
        directory.mkdir()
    plans = [
        AgentPlan(
            f"{cli}-1",
            cli,
            Persona(name=f"{cli}-worker", description=cli, instructions="Work.", capabilities=[cli]),
        )
        for cli in STATED_DIR
    ]
    config = LaunchConfig(
        agents=plans,
        broker_url=broker.url,
        admin_token=broker.admin_token,
        home=broker.home,
        workdir=launch_dir,
        endpoint_url=model.url,
        task_timeout=240,
        base_env={**os.environ, "HOME": str(user_home)},
    )

    async def scenario() -> dict[str, str]:
        supervisor = Supervisor(config)
        run = asyncio.create_task(supervisor.run())
        try:
            async with BrokerClient(broker.url, broker.primary_token) as primary:
                async with asyncio.timeout(120):
                    while any(v.state is not AgentState.IDLE for v in supervisor.views.values()):  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                ids: dict[str, int] = {}
                for cli, directory in task_dirs.items():
                    reply = await primary.submit_task(
                        f"write in {cli}'s dir",
                        f"WRITE out/{cli}.txt\n```\nwritten by {cli}\n```\n",
                        working_dir=str(directory),
                        capabilities=[cli],
                    )
                    ids[cli] = reply.tasks[0].id
                async with asyncio.timeout(400):
                    while not (
                        await primary.wait_for_tasks(list(ids.values()), mode="all", timeout_seconds=60)
                    ).done:
                        pass
                return {cli: (await primary.get_task(i)).task.status.value for cli, i in ids.items()}
        finally:
            supervisor.stop()
            await asyncio.wait_for(run, 60)

    try:
        statuses = asyncio.run(scenario())
    finally:
        model.stop()
    logs = {
        cli: (broker.home / "logs" / f"{cli}-1.log").read_text(errors="replace")[-2000:] for cli in STATED_DIR
    }
    assert statuses == {cli: "completed" for cli in STATED_DIR}, logs
    for cli, directory in task_dirs.items():
        assert (directory / "out" / f"{cli}.txt").read_text() == f"written by {cli}\n"
        stated = STATED_DIR[cli].format(directory)
        assert stated in request_texts(trace, f"{cli}-1"), f"{cli} did not state {directory} as its directory"
    assert not (launch_dir / "out").exists()
