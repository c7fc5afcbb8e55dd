"""The MCP surface through a real ``aiswarm serve`` on loopback, with both protocol generations."""

from __future__ import annotations

import os
import stat
import sys

import httpx
import httpx2
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import INVALID_PARAMS

from aiswarm_server.broker_client import BrokerCallError, BrokerClient, Mode
from aiswarm_server.replies import TaskReply
from tests.broker_harness import BrokerProcess

pytestmark = pytest.mark.anyio

MODES: list[Mode] = ["2026-07-28", "legacy"]
WORKER_TOOLS = [
    "ask_primary",
    "claim_task",
    "get_agent_status",
    "register_agent",
    "report_progress",
    "report_task_completion",
    "update_heartbeat",
    "wait_for_next_event",
]
PRIMARY_TOOLS = [
    "answer_question",
    "cancel_task",
    "get_task",
    "list_agents",
    "list_tasks",
    "merge_task",
    "submit_task",
    "submit_tasks",
    "wait_for_tasks",
]


async def agent_token(broker: BrokerProcess, name: str) -> str:
    async with BrokerClient(broker.url, broker.admin_token) as admin:
        return (await admin.issue_agent_token(name)).token


@pytest.mark.parametrize("mode", MODES)
async def test_each_role_sees_only_its_tools(live_broker: BrokerProcess, mode: Mode) -> None:
    token = await agent_token(live_broker, "qwen-1")
    async with BrokerClient(live_broker.url, token, mode=mode) as worker:
        assert await worker.list_tool_names() == WORKER_TOOLS
    async with BrokerClient(live_broker.url, live_broker.primary_token, mode=mode) as primary:
        assert await primary.list_tool_names() == PRIMARY_TOOLS
    async with BrokerClient(live_broker.url, live_broker.admin_token, mode=mode) as admin:
        names = await admin.list_tool_names()
        assert set(PRIMARY_TOOLS) < set(names) and "issue_agent_token" in names and "claim_task" not in names


@pytest.mark.parametrize("mode", MODES)
async def test_worker_and_primary_round_trip(live_broker: BrokerProcess, mode: Mode) -> None:
    token = await agent_token(live_broker, "gemini-1")
    async with (
        BrokerClient(live_broker.url, live_broker.primary_token, mode=mode) as primary,
        BrokerClient(live_broker.url, token, mode=mode) as worker,
    ):
        registered = await worker.register_agent(cli="gemini", persona="tester", capabilities=["python"])
        assert registered.agent.name == "gemini-1"
        submitted = await primary.submit_tasks(
            [
                {"key": "a", "title": "write a", "prompt": "write a.txt", "persona": "tester"},
                {"title": "check a", "prompt": "read a.txt", "depends_on": ["a"]},
            ]
        )
        first, second = (t.id for t in submitted.tasks)
        event = await worker.wait_for_next_event(registered.cursor, 5)
        assert [(e.kind, e.task_id) for e in event.events] == [("task_available", first)]
        claim = await worker.claim_task(first)
        assert claim.claimed and claim.task is not None and claim.task.prompt == "write a.txt"
        await worker.report_progress(first, claim.fence_token or 0, "half")
        done = await worker.report_task_completion(
            first, claim.fence_token or 0, success=True, result="wrote a.txt", data={"files": ["a.txt"]}
        )
        assert done.status == "completed"
        waited = await primary.wait_for_tasks([first], "all", 5)
        assert (
            waited.done
            and waited.tasks[0].result == "wrote a.txt"
            and waited.tasks[0].data == {"files": ["a.txt"]}
        )
        nxt = await worker.wait_for_next_event(event.cursor, 5)
        assert nxt.events[0].task_id == second
        with pytest.raises(BrokerCallError, match="never claimed by you"):
            await worker.report_task_completion(second, 1, success=True)
        cancelled = await primary.cancel_task(second, "not needed")
        assert cancelled.task.status == "cancelled"


@pytest.mark.parametrize("mode", MODES)
async def test_bad_arguments_get_a_tool_error_the_model_can_act_on(
    live_broker: BrokerProcess, mode: Mode
) -> None:
    async with BrokerClient(live_broker.url, live_broker.primary_token, mode=mode) as primary:
        before = len((await primary.list_tasks(limit=500)).tasks)
        with pytest.raises(BrokerCallError, match="task_id"):
            await primary.call("get_task", TaskReply, task_id="seven")
        with pytest.raises(BrokerCallError, match="does not exist"):
            await primary.get_task(123456)
        with pytest.raises(BrokerCallError, match="title"):
            await primary.submit_task("", "x")
        assert len((await primary.list_tasks(limit=500)).tasks) == before


async def test_requests_without_a_valid_token_get_401(live_broker: BrokerProcess) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with httpx.AsyncClient() as http:
        missing = await http.post(live_broker.url, json=body, headers=headers)
        wrong = await http.post(
            live_broker.url, json=body, headers={**headers, "Authorization": "Bearer nope"}
        )
        foreign = await http.post(
            live_broker.url,
            json=body,
            headers={
                **headers,
                "Authorization": f"Bearer {live_broker.primary_token}",
                "Host": "evil.example:80",
            },
        )
        health = await http.get(live_broker.base + "/health")
    assert missing.status_code == wrong.status_code == 401
    assert "primary.token" in missing.json()["error"]
    assert foreign.status_code in (400, 403, 421)
    assert health.json()["status"] == "ok"


def test_token_files_are_private(live_broker: BrokerProcess) -> None:
    for name in ("admin.token", "primary.token"):
        mode = stat.S_IMODE(os.stat(live_broker.home / name).st_mode)
        assert mode == 0o600, oct(mode)


async def test_stdio_bridge_serves_the_primary_tools(live_broker: BrokerProcess) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "aiswarm_server", "mcp", "--no-start"],
        env={**os.environ, "AISWARM_HOME": str(live_broker.home)},
    )
    async with Client(params, mode="legacy") as client:
        names = sorted(t.name for t in (await client.list_tools()).tools)
        assert names == PRIMARY_TOOLS
        result = await client.call_tool("submit_task", {"title": "via stdio", "prompt": "hello"})
        assert not result.is_error
        task_id = result.structured_content["tasks"][0]["id"]  # type: ignore[index]
        got = await client.call_tool("get_task", {"task_id": task_id})
        assert got.structured_content["task"]["title"] == "via stdio"  # type: ignore[index]
        refused = await client.call_tool("get_task", {"task_id": 99999})
        assert refused.is_error


@pytest.mark.parametrize("mode", MODES)
async def test_only_tools_are_declared_and_an_unknown_prompt_is_invalid_params(
    live_broker: BrokerProcess, mode: Mode
) -> None:
    assert live_broker.log_path is not None
    logged = len(live_broker.log_path.read_text().splitlines())
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {live_broker.primary_token}"}) as http,
        Client(streamable_http_client(live_broker.url, http_client=http), mode=mode) as client,
    ):
        if mode == "legacy":
            capabilities = client.server_capabilities
            assert capabilities is not None and capabilities.tools is not None
            assert capabilities.prompts is None and capabilities.resources is None
        for _ in range(3):
            with pytest.raises(MCPError) as unknown:
                await client.get_prompt("nosuch")
            assert unknown.value.code == INVALID_PARAMS and "nosuch" in unknown.value.error.message
        with pytest.raises(MCPError) as missing:
            await client.read_resource("file:///etc/passwd")
        assert missing.value.code == INVALID_PARAMS
        assert (await client.list_prompts()).prompts == []
    assert len(live_broker.log_path.read_text().splitlines()) - logged <= 3
