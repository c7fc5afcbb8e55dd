"""MCP Tasks (``io.modelcontextprotocol/tasks``) through a real ``aiswarm serve``, in raw JSON-RPC over HTTP.

Raw requests, because the byte-for-byte comparison of what a client that does not declare the extension sees
needs the bytes, and the SDK's client has no way to ask ``subscriptions/listen`` for ``taskIds``. Each request
carries the ``_meta`` envelope and headers the SDK's 2026-07-28 client sends; only the declared client
capabilities differ.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from aiswarm_server import __version__
from aiswarm_server.auth import PRIMARY_TOKEN_FILE
from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.config import BrokerSettings
from aiswarm_server.http_app import BrokerApp, transport_security
from aiswarm_server.mcp_tasks import TASKS_EXTENSION, handle_task_ids, mcp_task_state, task_handle
from aiswarm_server.models import Role, Task, TaskStatus
from aiswarm_server.tools import INSTRUCTIONS, ToolsOnlyServer, _add_primary_tools  # pyright: ignore[reportPrivateUsage]
from tests.broker_harness import BrokerProcess

pytestmark = pytest.mark.anyio

VERSION = "2026-07-28"
WAIT = 60.0


def _meta(declare: bool) -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientInfo": {"name": "tasks-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {"extensions": {TASKS_EXTENSION: {}}}
        if declare
        else {},
    }


class Raw:
    """JSON-RPC requests of the 2026-07-28 generation to one broker under one token."""

    def __init__(self, http: httpx.AsyncClient, url: str, token: str, declare: bool) -> None:
        self.http, self.url, self.token, self.declare = http, url, token, declare
        self.next_id = 0

    def request(
        self, method: str, params: dict[str, Any], name: str | None = None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        self.next_id += 1
        body = {
            "jsonrpc": "2.0",
            "id": self.next_id,
            "method": method,
            "params": {**params, "_meta": _meta(self.declare)},
        }
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": VERSION,
            "Mcp-Method": method,
        }
        if name is not None:
            headers["Mcp-Name"] = name
        return body, headers

    async def send(self, method: str, params: dict[str, Any], name: str | None = None) -> bytes:
        """The response's JSON-RPC message, as the bytes the server sent."""
        body, headers = self.request(method, params, name)
        response = await self.http.post(self.url, json=body, headers=headers)
        # A JSON-RPC error comes with an HTTP error status (400 for invalid params) and the message as the body.
        assert response.status_code == 200 or response.json().get("error"), response.text
        if response.headers["content-type"].startswith("text/event-stream"):
            for line in response.text.splitlines():
                if line.startswith("data:") and '"id"' in line:
                    return line[5:].strip().encode()
            raise AssertionError(response.text)
        return response.content

    async def call(self, method: str, params: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        message = json.loads(await self.send(method, params, name))
        assert "result" in message, message
        return message["result"]

    async def error(self, method: str, params: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        message = json.loads(await self.send(method, params, name))
        assert "error" in message, message
        return message["error"]

    async def tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return await self.call("tools/call", {"name": name, "arguments": arguments}, name)

    async def get(self, handle: str) -> dict[str, Any]:
        return await self.call("tasks/get", {"taskId": handle}, handle)

    async def listen(self, handles: list[str]) -> AsyncGenerator[dict[str, Any]]:
        """The listen stream's notifications, one JSON-RPC message at a time."""
        body, headers = self.request("subscriptions/listen", {"notifications": {"taskIds": handles}})
        async with self.http.stream("POST", self.url, json=body, headers=headers, timeout=None) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    yield json.loads(line[5:])


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def _worker(broker: BrokerProcess, name: str) -> BrokerClient:
    async with BrokerClient(broker.url, broker.admin_token) as admin:
        token = (await admin.issue_agent_token(name)).token
    client = BrokerClient(broker.url, token)
    await client.__aenter__()
    await client.register_agent(cli="test")
    return client


def _task(title: str) -> dict[str, Any]:
    return {"title": title, "prompt": f"Do {title}.", "isolation": "none"}


class _AnyMeta:
    """Equal to any ``_meta`` object (the server's identity stamp)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, dict)


ANY_META: Any = _AnyMeta()


def _scrub(raw: bytes) -> bytes:
    """A reply with its ids and times masked, so replies to two submits compare byte for byte."""
    raw = re.sub(rb'(\\?"(?:id|created_at|updated_at)\\?": ?)\d+(\.\d+)?', rb"\g<1>0", raw)
    return re.sub(rb"#\d+", b"#0", raw)


async def test_a_client_declaring_tasks_submits_polls_hears_of_progress_and_completion_and_cancels(
    live_broker: BrokerProcess, http: httpx.AsyncClient
) -> None:
    primary = Raw(http, live_broker.url, live_broker.primary_token, declare=True)
    discovered = await primary.call("server/discover", {})
    assert discovered["capabilities"]["extensions"] == {TASKS_EXTENSION: {}}

    created = await primary.tool("submit_task", _task("tasks ext one"))
    assert created["resultType"] == "task" and created["status"] == "working", created
    assert created["pollIntervalMs"] > 0 and "ttlMs" in created, created
    handle = created["taskId"]
    (task_id,) = handle_task_ids(live_broker.primary_token, handle) or []
    assert "waits for an agent" in created["statusMessage"], created

    polled = await primary.get(handle)
    assert polled["resultType"] == "complete" and polled["taskId"] == handle and polled["status"] == "working"

    worker = await _worker(live_broker, "tasks-ext-1")
    heard: list[dict[str, Any]] = []
    try:
        with anyio.fail_after(WAIT):
            stream = primary.listen([handle])
            ack = await anext(stream)
            assert ack["method"] == "notifications/subscriptions/acknowledged", ack
            assert ack["params"]["notifications"]["taskIds"] == [handle], ack
            first = await anext(stream)  # the state at subscription time
            assert first["method"] == "notifications/tasks" and first["params"]["status"] == "working", first

            claim = await worker.claim_task(task_id)
            assert claim.claimed and claim.fence_token is not None
            await worker.report_progress(task_id, claim.fence_token, "halfway through")
            async for message in stream:
                heard.append(message["params"])
                if "halfway through" in message["params"]["statusMessage"]:
                    break
            assert "tasks-ext-1" in heard[-1]["statusMessage"], heard

            await worker.report_task_completion(task_id, claim.fence_token, success=True, result="done it")
            async for message in stream:
                heard.append(message["params"])
                if message["params"]["status"] != "working":
                    break
            await stream.aclose()
    finally:
        await worker.__aexit__(None, None, None)
    done = heard[-1]
    assert done["status"] == "completed" and done["taskId"] == handle, done
    assert done["result"]["isError"] is False, done
    assert done["result"]["structuredContent"]["tasks"][0]["result"] == "done it", done
    assert (await primary.get(handle))["result"] == done["result"]
    plain = Raw(primary.http, primary.url, primary.token, declare=False)
    waited = await plain.tool("wait_for_tasks", {"task_ids": [task_id], "timeout_seconds": 0})
    assert done["result"] == {k: v for k, v in waited.items() if k not in ("resultType", "_meta")}

    # Cancel: a second task, cancelled through tasks/cancel, is cancelled in the broker too.
    second = await primary.tool("submit_tasks", {"tasks": [_task("tasks ext two"), _task("tasks ext three")]})
    assert second["resultType"] == "task"
    ids = handle_task_ids(live_broker.primary_token, second["taskId"])
    assert ids is not None and len(ids) == 2
    acknowledged = await primary.call("tasks/cancel", {"taskId": second["taskId"]}, second["taskId"])
    assert acknowledged["resultType"] == "complete" and set(acknowledged) <= {"resultType", "_meta"}, (
        acknowledged
    )
    cancelled = await primary.get(second["taskId"])
    assert cancelled["status"] == "cancelled" and "result" not in cancelled, cancelled
    async with BrokerClient(live_broker.url, live_broker.primary_token) as client:
        for one in ids:
            assert (await client.get_task(one)).task.status is TaskStatus.CANCELLED


def _without_mcp_tasks(app: BrokerApp) -> None:
    """Give ``app`` the primary server as it was built before MCP tasks: the same tools, no extension."""
    server = ToolsOnlyServer("aiswarm-primary", instructions=INSTRUCTIONS[Role.PRIMARY], version=__version__)
    _add_primary_tools(server, app.ref, app.settings)
    app.servers[Role.PRIMARY] = server
    app.role_apps[Role.PRIMARY] = server.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=transport_security(app.settings),
        host=app.settings.host,
    )


@asynccontextmanager
async def _in_process(home: Path, plain: bool) -> AsyncIterator[Raw]:
    app = BrokerApp(BrokerSettings(home=home))
    if plain:
        _without_mcp_tasks(app)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
            token = (home / PRIMARY_TOKEN_FILE).read_text().strip()
            yield Raw(http, "http://127.0.0.1:8000/mcp", token, declare=False)


async def test_a_client_that_does_not_declare_tasks_sees_the_plain_tools_byte_for_byte(
    tmp_path: Path,
) -> None:
    seen: dict[bool, tuple[bytes, bytes, bytes]] = {}
    for plain in (True, False):
        async with _in_process(tmp_path / f"home-{plain}", plain) as primary:
            listed = await primary.send("tools/list", {})
            submitted = await primary.send(
                "tools/call", {"name": "submit_task", "arguments": _task("plain")}, "submit_task"
            )
            waited = await primary.send(
                "tools/call",
                {"name": "wait_for_tasks", "arguments": {"task_ids": [1], "timeout_seconds": 0}},
                "wait_for_tasks",
            )
            seen[plain] = (listed, _scrub(submitted), _scrub(waited))
    for before, now in zip(seen[True], seen[False], strict=True):
        assert before == now, (before, now)
    assert json.loads(seen[False][1])["result"]["structuredContent"]["tasks"][0]["title"] == "plain"


async def test_a_client_that_does_not_declare_tasks_is_refused_the_task_methods(
    live_broker: BrokerProcess, http: httpx.AsyncClient
) -> None:
    plain = Raw(http, live_broker.url, live_broker.primary_token, declare=False)
    handle = task_handle(live_broker.primary_token, [1])
    assert (await plain.error("tasks/get", {"taskId": handle}, handle))["code"] == -32021
    assert (await plain.error("tasks/cancel", {"taskId": handle}, handle))["code"] == -32021
    refused = await plain.error("subscriptions/listen", {"notifications": {"taskIds": [handle]}})
    assert refused["code"] == -32021, refused


async def test_a_failed_broker_task_completes_the_mcp_task_with_an_error_result(
    live_broker: BrokerProcess, http: httpx.AsyncClient
) -> None:
    primary = Raw(http, live_broker.url, live_broker.primary_token, declare=True)
    handle = (await primary.tool("submit_task", _task("tasks ext failing")))["taskId"]
    (task_id,) = handle_task_ids(live_broker.primary_token, handle) or []
    assert await primary.call("tasks/update", {"taskId": handle, "inputResponses": {"x": {}}}, handle) == {
        "resultType": "complete",
        "_meta": ANY_META,
    }
    worker = await _worker(live_broker, "tasks-ext-3")
    try:
        claim = await worker.claim_task(task_id)
        assert claim.fence_token is not None
        await worker.report_task_completion(
            task_id, claim.fence_token, success=False, error="no disk", retryable=False
        )
    finally:
        await worker.__aexit__(None, None, None)
    failed = await primary.get(handle)
    assert failed["status"] == "completed" and failed["result"]["isError"] is True, failed
    assert f"#{task_id} failed: no disk" in failed["statusMessage"], failed
    assert failed["result"]["structuredContent"]["tasks"][0]["error"] == "no disk", failed


async def test_a_refused_submit_stays_a_plain_tool_error_for_a_declaring_client(
    live_broker: BrokerProcess, http: httpx.AsyncClient
) -> None:
    declaring = Raw(http, live_broker.url, live_broker.primary_token, declare=True)
    refused = await declaring.tool("submit_task", {**_task("bad"), "depends_on": [987654]})
    assert refused["resultType"] == "complete" and refused["isError"] is True, refused
    assert "987654" in refused["content"][0]["text"], refused


async def test_only_the_token_that_submitted_may_read_or_cancel_its_task(
    live_broker: BrokerProcess, http: httpx.AsyncClient
) -> None:
    primary = Raw(http, live_broker.url, live_broker.primary_token, declare=True)
    handle = (await primary.tool("submit_task", _task("mine")))["taskId"]
    admin = Raw(http, live_broker.url, live_broker.admin_token, declare=True)
    for method in ("tasks/get", "tasks/cancel"):
        error = await admin.error(method, {"taskId": handle}, handle)
        assert error["code"] == -32602 and "not found" in error["message"], error
    async with BrokerClient(live_broker.url, live_broker.admin_token) as client:
        worker_token = (await client.issue_agent_token("tasks-ext-2")).token
    worker = Raw(http, live_broker.url, worker_token, declare=True)
    error = await worker.error("tasks/get", {"taskId": handle}, handle)
    assert error["code"] == -32601, error  # the worker's server has no tasks/* at all
    forged = handle.rsplit("-", 1)[0] + "-" + "0" * 32
    assert (await primary.error("tasks/get", {"taskId": forged}, forged))["code"] == -32602
    assert (await primary.get(handle))["status"] == "working"


def _broker_task(task_id: int, status: TaskStatus, **fields: Any) -> Task:
    return Task(
        id=task_id, title=f"t{task_id}", prompt="p", status=status, created_at=1.0, updated_at=2.0, **fields
    )


def test_the_mcp_status_follows_the_broker_tasks() -> None:
    working = mcp_task_state([_broker_task(1, TaskStatus.CLAIMED, claimed_by="qwen-1", progress="50% half")])
    assert working.status == "working" and "qwen-1: 50% half" in working.message
    assert "dependencies [1]" in mcp_task_state([_broker_task(2, TaskStatus.BLOCKED, depends_on=[1])]).message
    assert (
        mcp_task_state([_broker_task(1, TaskStatus.COMPLETED), _broker_task(2, TaskStatus.PENDING)]).status
        == "working"
    )
    assert mcp_task_state([_broker_task(1, TaskStatus.CANCELLED, error="no")]).status == "cancelled"
    mixed = mcp_task_state(
        [_broker_task(1, TaskStatus.CANCELLED), _broker_task(2, TaskStatus.DEAD, error="boom")]
    )
    assert mixed.status == "completed" and mixed.is_terminal and "#2 dead: boom" in mixed.message


def test_a_handle_names_its_tasks_only_for_the_token_that_made_it() -> None:
    handle = task_handle("token-a", [12, 13])
    assert handle.startswith("12.13-")
    assert handle_task_ids("token-a", handle) == [12, 13]
    assert handle_task_ids("token-b", handle) is None
    assert handle_task_ids("token-a", "12.14-" + handle.rsplit("-", 1)[1]) is None
    assert handle_task_ids("token-a", "nonsense") is None


async def test_a_workers_question_is_input_required_and_tasks_update_answers_it(
    live_broker: BrokerProcess, http: httpx.AsyncClient
) -> None:
    primary = Raw(http, live_broker.url, live_broker.primary_token, declare=True)
    handle = (await primary.tool("submit_task", _task("tasks ext asks")))["taskId"]
    (task_id,) = handle_task_ids(live_broker.primary_token, handle) or []
    worker = await _worker(live_broker, "tasks-ext-asker")
    asked: list[Any] = []
    pushed: dict[str, Any] = {}
    try:
        claim = await worker.claim_task(task_id)
        assert claim.claimed and claim.fence_token is not None
        with anyio.fail_after(WAIT):
            stream = primary.listen([handle])
            await anext(stream)  # acknowledged
            await anext(stream)  # the state at subscription time
            async with anyio.create_task_group() as group:

                async def ask() -> None:
                    asked.append(
                        await worker.ask_primary(
                            task_id, claim.fence_token or 0, "Keep the old API?", options=["keep", "break"]
                        )
                    )

                group.start_soon(ask)
                async for message in stream:  # the question is pushed as input_required
                    if message["params"]["status"] == "input_required":
                        pushed = message["params"]
                        break
                await stream.aclose()
                polled = await primary.get(handle)
                assert polled["status"] == "input_required" and "Keep the old API?" in polled["statusMessage"]
                [(key, request)] = polled["inputRequests"].items()
                assert pushed["inputRequests"] == polled["inputRequests"]
                assert request["method"] == "elicitation/create"
                schema = request["params"]["requestedSchema"]
                assert schema["properties"]["answer"]["enum"] == ["keep", "break"]

                declined = {key: {"action": "decline"}, "question-999999": {"action": "accept"}}
                await primary.call("tasks/update", {"taskId": handle, "inputResponses": declined}, handle)
                assert (await primary.get(handle))["status"] == "input_required"  # a decline leaves it open

                accepted = {key: {"action": "accept", "content": {"answer": "keep"}}}
                await primary.call("tasks/update", {"taskId": handle, "inputResponses": accepted}, handle)
        assert asked[0].answer == "keep"
        after = await primary.get(handle)
        assert after["status"] == "working" and "inputRequests" not in after, after
    finally:
        await worker.__aexit__(None, None, None)
