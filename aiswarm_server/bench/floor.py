"""Section 1, the floor: what a call costs when the tool does nothing, through the same server stack and client.

Two floors, both measured in the same run as everything else:

* ``noop``: a separate MCPServer with one ``ping`` tool (:mod:`aiswarm_server.bench.noop_server`), served by the
  broker's uvicorn configuration. This is the SDK + HTTP cost alone; every target ratio divides by it.
* ``broker``: the cheapest existing worker tools of the real broker (``get_agent_status``, a read, and
  ``update_heartbeat``, a write): token lookup, role routing and one store trip on top of the SDK.

Each is measured with the raw 2026-07-28 client the load sections use (sequential, and 16 concurrent
connections) and, for the no-op, also with the SDK's ``mcp.Client`` (through :class:`BrokerClient`) and with the
raw client speaking 2025-11-25 (sessions, as gemini-cli and qwen-code do): the floor of that protocol's sections.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiswarm_server.bench.noop_server import PingReply
from aiswarm_server.bench.processes import HOST
from aiswarm_server.bench.rawmcp import PROTOCOL_VERSION, Protocol, RawMcpConnection
from aiswarm_server.bench.stats import timed_calls
from aiswarm_server.broker_client import BrokerClient

CONCURRENCY = 16
WARM_UP = 20


async def _warm(call: Callable[[], Awaitable[object]]) -> None:
    for _ in range(WARM_UP):
        await call()


async def measure_raw(
    port: int,
    tokens: list[str],
    tool: str,
    budget: float,
    max_calls: int,
    protocol: Protocol = PROTOCOL_VERSION,
) -> dict[str, Any]:
    """``tool`` over raw connections: one connection sequentially, then one per token concurrently."""
    connections = [await RawMcpConnection.open(HOST, port, token, protocol) for token in tokens]
    try:
        callers = [_caller(c, tool) for c in connections]
        await _warm(callers[0])
        sequential = await timed_calls(callers[:1], budget, max_calls)
        concurrent = await timed_calls(callers, budget, max_calls * 2)
    finally:
        for connection in connections:
            await connection.close()
    return {"sequential": sequential, "concurrent": concurrent}


def _caller(connection: RawMcpConnection, tool: str) -> Callable[[], Awaitable[object]]:
    async def call() -> object:
        return await connection.call_tool(tool)

    return call


async def measure_sdk_noop(port: int, budget: float, max_calls: int) -> dict[str, Any]:
    """``ping`` through the SDK client (``mcp.Client`` over httpx), sequential and 16 clients."""
    url = f"http://{HOST}:{port}/mcp"
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(BrokerClient(url, "no-token")) for _ in range(CONCURRENCY)]

        def caller(client: BrokerClient) -> Callable[[], Awaitable[object]]:
            async def call() -> object:
                return await client.call("ping", PingReply)

            return call

        callers = [caller(c) for c in clients]
        for call in callers:
            await call()
        await _warm(callers[0])
        sequential = await timed_calls(callers[:1], budget, max_calls)
        concurrent = await timed_calls(callers, budget, max_calls * 2)
    return {"sequential": sequential, "concurrent": concurrent}
