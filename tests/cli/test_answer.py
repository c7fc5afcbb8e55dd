"""Answering a worker's question from the shell: `aiswarm tasks` / `aiswarm task N` show it, `aiswarm answer` answers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiswarm_server.broker_client import BrokerClient
from tests.broker_harness import BrokerProcess
from tests.cli.conftest import aiswarm
from tests.reliability.swarm import START_TIMEOUT


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "home").start(START_TIMEOUT)
    yield process
    process.stop()


async def ask(broker: BrokerProcess, question: str) -> int:
    """A worker (a real MCP client with its own token) claims a new task and asks about it without waiting."""
    async with BrokerClient(broker.url, broker.admin_token) as admin:
        task_id = (await admin.submit_task("pick a format", "ask which format")).tasks[0].id
        token = (await admin.issue_agent_token("cli-asker")).token
    async with BrokerClient(broker.url, token) as worker:
        claim = await worker.claim_task(task_id)
        assert claim.fence_token is not None
        await worker.ask_primary(
            task_id, claim.fence_token, question, options=["json", "yaml"], wait_seconds=0
        )
    return task_id


def test_the_question_is_shown_and_answered_from_the_shell(broker: BrokerProcess) -> None:
    task_id = asyncio.run(ask(broker, "JSON or YAML?"))

    listed = aiswarm("tasks", home=broker.home)
    assert listed.code == 0 and "claimed (asks)" in listed.out and "asks: JSON or YAML?" in listed.out
    shown = aiswarm("task", str(task_id), home=broker.home)
    assert shown.code == 0, shown.err
    assert "(cli-asker, open): JSON or YAML? [options: json | yaml]" in shown.out
    assert f'aiswarm answer {task_id} "..."' in shown.out

    answered = aiswarm("answer", str(task_id), "yaml", home=broker.home)
    assert answered.code == 0, answered.err
    assert f"answered question #1 of task #{task_id} (cli-asker): JSON or YAML?" in answered.out
    assert "answer (local admin): yaml" in aiswarm("task", str(task_id), home=broker.home).out

    again = aiswarm("answer", str(task_id), "json", home=broker.home)
    assert again.code != 0 and len(again.err_lines) == 1 and "was answered already" in again.err
