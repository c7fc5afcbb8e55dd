"""Tool arguments through a real broker: strictly typed, checked against what exists, described truthfully."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aiswarm_server.broker_client import BrokerCallError, BrokerClient
from aiswarm_server.config import BrokerSettings
from aiswarm_server.models import Role, TaskStatus
from aiswarm_server.replies import AgentsReply, ClaimReply, SubmitReply, TaskReply, TasksReply, WaitTasksReply
from aiswarm_server.tools import BrokerRef, build_servers
from tests.broker_harness import BrokerProcess

pytestmark = pytest.mark.anyio


async def test_a_boolean_is_refused_wherever_an_integer_is_expected(live_broker: BrokerProcess) -> None:
    async with BrokerClient(live_broker.url, live_broker.admin_token) as admin:
        first = (await admin.submit_task("bool target", "p")).tasks[0].id
        calls: list[tuple[str, type[Any], dict[str, Any]]] = [
            ("cancel_task", TaskReply, {"task_id": True}),
            ("get_task", TaskReply, {"task_id": True}),
            ("wait_for_tasks", WaitTasksReply, {"task_ids": [True], "timeout_seconds": 0}),
            ("wait_for_tasks", WaitTasksReply, {"task_ids": [first], "timeout_seconds": False}),
            ("list_tasks", TasksReply, {"limit": True}),
            ("submit_task", SubmitReply, {"title": "t", "prompt": "p", "priority": True}),
            ("submit_task", SubmitReply, {"title": "t", "prompt": "p", "depends_on": [True]}),
            ("submit_task", SubmitReply, {"title": "t", "prompt": "p", "max_attempts": True}),
            ("submit_tasks", SubmitReply, {"tasks": [{"title": "t", "prompt": "p", "depends_on": [True]}]}),
            (
                "submit_tasks",
                SubmitReply,
                {"tasks": [{"title": "t", "prompt": "p", "timeout_seconds": True}]},
            ),
            ("release_task", AgentsReply, {"agent": "nobody", "task_id": True}),
        ]
        before = len((await admin.list_tasks(limit=500)).tasks)
        for tool, reply, arguments in calls:
            with pytest.raises(BrokerCallError, match="valid integer") as refused:
                await admin.call(tool, reply, **arguments)
            said = str(refused.value)
            assert "\n" not in said and "errors.pydantic.dev" not in said and "(got " in said, said
        assert len((await admin.list_tasks(limit=500)).tasks) == before
        assert (await admin.get_task(first)).task.status is not TaskStatus.CANCELLED
        token = (await admin.issue_agent_token("bool-worker")).token
    async with BrokerClient(live_broker.url, token) as worker:
        with pytest.raises(BrokerCallError, match="valid integer"):
            await worker.call("claim_task", ClaimReply, task_id=True)
        with pytest.raises(BrokerCallError, match="valid number"):
            await worker.call(
                "report_progress", ClaimReply, task_id=first, fence_token=1, message="m", percent=True
            )


async def test_an_unknown_persona_or_missing_directory_is_refused_by_submit(
    live_broker: BrokerProcess, tmp_path: Path
) -> None:
    async with BrokerClient(live_broker.url, live_broker.primary_token) as primary:
        before = len((await primary.list_tasks(limit=500)).tasks)
        with pytest.raises(
            BrokerCallError, match=r"persona 'nosuch' is unknown: known personas are .*reviewer"
        ):
            await primary.submit_task("t", "p", persona="nosuch")
        with pytest.raises(BrokerCallError, match="persona 'nosuch' is unknown"):
            await primary.submit_tasks([{"title": "t", "prompt": "p", "persona": "nosuch"}])
        with pytest.raises(BrokerCallError, match="is not an existing directory"):
            await primary.submit_task("t", "p", working_dir=str(tmp_path / "absent"))
        assert len((await primary.list_tasks(limit=500)).tasks) == before
        accepted = await primary.submit_task("t", "p", persona="reviewer", working_dir=str(tmp_path))
        assert accepted.tasks[0].persona == "reviewer"


async def test_a_persona_a_registered_agent_declared_is_accepted(live_broker: BrokerProcess) -> None:
    async with BrokerClient(live_broker.url, live_broker.admin_token) as admin:
        token = (await admin.issue_agent_token("custom-1")).token
    async with BrokerClient(live_broker.url, token) as worker:
        await worker.register_agent(cli="qwen", persona="translator")
    async with BrokerClient(live_broker.url, live_broker.primary_token) as primary:
        assert (await primary.submit_task("t", "p", persona="translator")).tasks[0].persona == "translator"


async def test_tool_descriptions_name_the_brokers_own_defaults() -> None:
    settings = BrokerSettings(default_max_attempts=7, default_task_timeout_seconds=99)
    primary = build_servers(BrokerRef(), settings)[Role.PRIMARY]
    tools = {tool.name: tool for tool in await primary.list_tools()}
    single = tools["submit_task"].input_schema["properties"]
    batch = tools["submit_tasks"].input_schema["$defs"]["TaskRequest"]["properties"]
    for schema in (single, batch):
        assert "(default 7)" in schema["max_attempts"]["description"]
        assert "(default 99)" in schema["timeout_seconds"]["description"]
