"""Clients that drop their connection mid-call, in both protocol generations: nothing is swallowed.

A dropped ``wait_for_next_event`` must not consume the offer (the next wait sees the task again), and a dropped
``claim_task`` answer must not strand the claim (the next ``claim_task`` returns the same task and fence).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import httpx
import pytest

from aiswarm_server.broker_client import BrokerClient
from tests.broker_harness import BrokerProcess

pytestmark = pytest.mark.anyio

GENERATIONS = ["2026-07-28", "2025-11-25"]
_ids = itertools.count(1)


class RawMcp:
    """Just enough MCP over plain httpx to walk away from a call at the worst moment."""

    def __init__(self, url: str, token: str, version: str) -> None:
        self.url = url
        self.version = version
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": version,
        }
        self.meta: dict[str, Any] = {}
        if version == "2026-07-28":
            self.meta = {
                "io.modelcontextprotocol/protocolVersion": version,
                "io.modelcontextprotocol/clientInfo": {"name": "reliability", "version": "0"},
                "io.modelcontextprotocol/clientCapabilities": {},
            }

    async def start(self) -> None:
        """The 2025-11-25 handshake: initialize, keep the session id, send initialized."""
        if self.version == "2026-07-28":
            return
        async with httpx.AsyncClient(timeout=60) as http:
            body = {
                "jsonrpc": "2.0",
                "id": next(_ids),
                "method": "initialize",
                "params": {
                    "protocolVersion": self.version,
                    "capabilities": {},
                    "clientInfo": {"name": "reliability", "version": "0"},
                },
            }
            reply = await http.post(self.url, json=body, headers=self.headers)
            assert reply.status_code == 200, reply.text
            self.headers["Mcp-Session-Id"] = reply.headers["mcp-session-id"]
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert (await http.post(self.url, json=note, headers=self.headers)).status_code == 202

    def call_body(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        if self.meta:
            params["_meta"] = self.meta
        return {"jsonrpc": "2.0", "id": next(_ids), "method": "tools/call", "params": params}

    def call_headers(self, tool: str) -> dict[str, str]:
        extra = {"Mcp-Method": "tools/call", "Mcp-Name": tool} if self.meta else {}
        return {**self.headers, **extra}

    async def call(self, tool: str, arguments: dict[str, Any], read_timeout: float = 60) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=read_timeout)) as http:
            reply = await http.post(
                self.url, json=self.call_body(tool, arguments), headers=self.call_headers(tool)
            )
        assert reply.status_code == 200, reply.text
        return _result(reply)

    async def abandon(self, tool: str, arguments: dict[str, Any], read_timeout: float) -> None:
        """Send a call and drop the connection when no answer came within ``read_timeout``."""
        with pytest.raises(httpx.ReadTimeout):
            async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=read_timeout)) as http:
                await http.post(
                    self.url, json=self.call_body(tool, arguments), headers=self.call_headers(tool)
                )

    async def send_and_hang_up(self, tool: str, arguments: dict[str, Any], host: str, port: int) -> None:
        """Write the whole request on a raw socket and close it without reading a byte of the answer."""
        body = json.dumps(self.call_body(tool, arguments)).encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in self.call_headers(tool).items())
        request = (
            f"POST /mcp HTTP/1.1\r\nHost: {host}:{port}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        _reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        await writer.drain()
        writer.close()
        await writer.wait_closed()


def _result(reply: httpx.Response) -> dict[str, Any]:
    if reply.headers["content-type"].startswith("application/json"):
        message: dict[str, Any] = reply.json()
    else:
        data = [line[5:].strip() for line in reply.text.splitlines() if line.startswith("data:")]
        message = next(m for m in map(json.loads, data) if "result" in m or "error" in m)
    assert "result" in message, message
    result: dict[str, Any] = message["result"]
    assert not result.get("isError"), result
    structured: dict[str, Any] = result["structuredContent"]
    return structured


@pytest.fixture(scope="module")
def broker_env() -> dict[str, str]:
    return {"AISWARM_SWEEP_INTERVAL_SECONDS": "0.2", "AISWARM_OFFER_SECONDS": "1"}


async def worker(admin: BrokerClient, broker: BrokerProcess, name: str, version: str) -> RawMcp:
    token = (await admin.issue_agent_token(name)).token
    raw = RawMcp(broker.url, token, version)
    await raw.start()
    await raw.call("register_agent", {"cli": "raw"})
    return raw


@pytest.mark.parametrize("version", GENERATIONS)
async def test_a_wait_dropped_by_the_client_does_not_consume_the_offer(
    broker: BrokerProcess, admin: BrokerClient, version: str
) -> None:
    name = f"dropwait-{version}"
    raw = await worker(admin, broker, name, version)
    # The wait is parked when the client gives up on it; the task arrives while the orphan may still be parked.
    await raw.abandon("wait_for_next_event", {"timeout_seconds": 30}, read_timeout=1.0)
    task_id = (await admin.submit_task(f"offered to {name}", "p", persona=None)).tasks[0].id
    waited = await raw.call("wait_for_next_event", {"timeout_seconds": 10})
    offered = [e["task_id"] for e in waited["events"] if e["kind"] == "task_available"]
    assert task_id in offered, waited
    claim = await raw.call("claim_task", {"task_id": task_id})
    assert claim["claimed"], claim
    await raw.call(
        "report_task_completion", {"task_id": task_id, "fence_token": claim["fence_token"], "success": True}
    )
    assert (await admin.get_task(task_id)).task.status == "completed"


@pytest.mark.parametrize("version", GENERATIONS)
async def test_a_claim_whose_answer_was_lost_is_returned_again_by_claim_task(
    broker: BrokerProcess, admin: BrokerClient, version: str
) -> None:
    name = f"dropclaim-{version}"
    raw = await worker(admin, broker, name, version)
    task_id = (await admin.submit_task(f"claimed by {name}", "p")).tasks[0].id
    await raw.send_and_hang_up("claim_task", {"task_id": task_id}, "127.0.0.1", broker.port)

    # The broker may have committed the claim before it noticed the hang-up; either way the truth is one claim.
    claim = await raw.call("claim_task", {})
    assert claim["claimed"] and claim["task"]["id"] == task_id, claim
    again = await raw.call("claim_task", {})
    assert again["task"]["id"] == task_id and again["fence_token"] == claim["fence_token"]
    task = (await admin.get_task(task_id)).task
    assert task.claimed_by == name and task.fence_token == claim["fence_token"]
    assert [a.agent for a in task.attempts] == [name], "the dropped claim left a second attempt"
    done = await raw.call(
        "report_task_completion", {"task_id": task_id, "fence_token": claim["fence_token"], "success": True}
    )
    assert done["status"] == "completed"
    # A report whose answer is lost is simply sent again: the broker answers with the recorded outcome.
    repeat = await raw.call(
        "report_task_completion", {"task_id": task_id, "fence_token": claim["fence_token"], "success": True}
    )
    assert repeat["status"] == "completed"


@pytest.mark.parametrize("version", GENERATIONS)
async def test_a_completion_report_dropped_midway_is_recorded_once_and_answered_on_retry(
    broker: BrokerProcess, admin: BrokerClient, version: str
) -> None:
    name = f"dropreport-{version}"
    raw = await worker(admin, broker, name, version)
    task_id = (await admin.submit_task(f"reported by {name}", "p")).tasks[0].id
    claim = await raw.call("claim_task", {"task_id": task_id})
    args = {"task_id": task_id, "fence_token": claim["fence_token"], "success": True, "result": "once"}
    await raw.send_and_hang_up("report_task_completion", args, "127.0.0.1", broker.port)
    answer = await raw.call("report_task_completion", args)
    assert answer["status"] == "completed"
    task = (await admin.get_task(task_id)).task
    assert task.result == "once" and [a.outcome for a in task.attempts] == ["completed"]
