"""PostClient, the CLI's SDK-free client, answers as BrokerClient (the MCP SDK) does, against a real broker."""

from __future__ import annotations

import re
import time
from typing import Any

import anyio
import httpx2
import pytest
from mcp.shared.inbound import MCP_METHOD_HEADER, MCP_NAME_HEADER, MCP_PROTOCOL_VERSION_HEADER
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    INTERNAL_ERROR,
    PROTOCOL_VERSION_META_KEY,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from aiswarm_server import post_client
from aiswarm_server.broker_calls import BrokerCallError, BrokerCalls, BrokerUnreachable
from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.post_client import PostClient
from aiswarm_server.replies import StatusReply, SubmitReply, TaskReply
from tests.broker_harness import BrokerProcess
from tests.cli.conftest import closed_port

pytestmark = pytest.mark.anyio


def same_call_same_value(value: Any) -> Any:
    """``value`` without what differs between two identical calls: ids, clocks, numbers in messages."""
    if isinstance(value, dict):
        return {
            k: same_call_same_value(v)
            for k, v in value.items()
            if k != "id" and not k.endswith("_at") and k != "uptime_seconds"
        }
    if isinstance(value, list):
        return [same_call_same_value(v) for v in value]
    return re.sub(r"\d+", "N", value) if isinstance(value, str) else value


def test_the_post_client_speaks_the_sdks_2026_wire() -> None:
    assert post_client.PROTOCOL_VERSION in MODERN_PROTOCOL_VERSIONS
    assert (
        post_client.PROTOCOL_VERSION_KEY,
        post_client.CLIENT_INFO_KEY,
        post_client.CLIENT_CAPABILITIES_KEY,
    ) == (
        PROTOCOL_VERSION_META_KEY,
        CLIENT_INFO_META_KEY,
        CLIENT_CAPABILITIES_META_KEY,
    )
    assert (post_client.PROTOCOL_VERSION_HEADER, post_client.METHOD_HEADER, post_client.NAME_HEADER) == (
        MCP_PROTOCOL_VERSION_HEADER,
        MCP_METHOD_HEADER,
        MCP_NAME_HEADER,
    )
    assert post_client.INTERNAL_ERROR == INTERNAL_ERROR


def comparable(value: BaseModel | Exception) -> Any:
    """A reply as JSON, or an error's type, message and URL; without what differs between two identical calls."""
    if isinstance(value, Exception):
        return type(value).__name__, same_call_same_value(str(value)), getattr(value, "url", None)
    return same_call_same_value(value.model_dump(mode="json"))


async def outcome(client: BrokerCalls, tool: str, reply: type[BaseModel], **arguments: Any) -> Any:
    try:
        return comparable(await client.call(tool, reply, **arguments))
    except (BrokerCallError, BrokerUnreachable) as error:
        return comparable(error)


async def test_replies_and_refusals_match_the_sdk_client(live_broker: BrokerProcess) -> None:
    calls: list[tuple[str, type[BaseModel], dict[str, Any]]] = [
        ("submit_task", SubmitReply, {"title": "same", "prompt": "p", "persona": "tester", "priority": 3}),
        ("get_task", TaskReply, {"task_id": 1}),
        ("get_task", TaskReply, {"task_id": 99_999}),  # refused: no such task
        ("get_task", TaskReply, {"task_id": "one"}),  # refused: the arguments' validation
        ("submit_task", SubmitReply, {"title": "x", "prompt": "p", "persona": "no-one"}),  # refused: persona
        ("no_such_tool", TaskReply, {}),  # a JSON-RPC error
        ("broker_status", StatusReply, {}),  # an admin tool: the primary does not see it
    ]
    token = live_broker.primary_token
    async with BrokerClient(live_broker.url, token) as sdk, PostClient(live_broker.url, token) as post:
        for tool, reply, arguments in calls:
            by_sdk = await outcome(sdk, tool, reply, **arguments)
            by_post = await outcome(post, tool, reply, **arguments)
            assert by_post == by_sdk, tool
    admin = live_broker.admin_token
    async with BrokerClient(live_broker.url, admin) as sdk, PostClient(live_broker.url, admin) as post:
        assert await outcome(post, "broker_status", StatusReply) == await outcome(
            sdk, "broker_status", StatusReply
        )


async def test_no_broker_is_unreachable_for_both_clients() -> None:
    url = f"http://127.0.0.1:{closed_port()}/mcp"
    for client in (BrokerClient(url, "any"), PostClient(url, "any")):
        with pytest.raises(BrokerUnreachable) as raised:
            async with client:
                await client.broker_status()
        assert raised.value.url == url
        assert str(raised.value).startswith(f"cannot talk to the broker at {url}: ")


async def test_a_refused_token_is_unreachable_for_both_and_the_post_client_says_why(
    live_broker: BrokerProcess,
) -> None:
    for client in (
        BrokerClient(live_broker.url, "asw_p_revoked"),
        PostClient(live_broker.url, "asw_p_revoked"),
    ):
        with pytest.raises(BrokerUnreachable) as raised:
            async with client:
                await client.list_tasks()
        assert str(raised.value).startswith(f"lost the broker at {live_broker.url} during list_tasks: ")
        if isinstance(client, PostClient):
            assert "aiswarm token invalid or revoked" in str(raised.value)


async def test_a_call_outlasting_the_json_window_is_read_from_the_event_stream(
    live_broker: BrokerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The broker answers a call still running after 15 s as an SSE stream (pings, then the response).
    streams: list[httpx2.Response] = []

    class Watched(httpx2.EventSource):
        def __init__(self, response: httpx2.Response) -> None:
            streams.append(response)
            super().__init__(response)

    monkeypatch.setattr(post_client.httpx2, "EventSource", Watched)
    token = live_broker.primary_token
    answers: dict[str, Any] = {}
    async with BrokerClient(live_broker.url, token) as sdk, PostClient(live_broker.url, token) as post:
        task = (
            await post.submit_task("nobody takes it", "p", persona="reviewer", capabilities=["none-has"])
        ).tasks[0]

        async def wait(name: str, client: BrokerCalls) -> None:
            answers[name] = comparable(await client.wait_for_tasks([task.id], timeout_seconds=17))

        started = time.monotonic()
        async with anyio.create_task_group() as group:
            group.start_soon(wait, "sdk", sdk)
            group.start_soon(wait, "post", post)
    assert time.monotonic() - started >= 15
    assert len(streams) == 1 and streams[0].headers["content-type"].startswith("text/event-stream")
    assert answers["post"] == answers["sdk"]
    assert answers["post"]["done"] is False
