"""``aiswarm mcp``: a stdio MCP server for clients that only speak stdio, bridging every call to the HTTP broker.

The broker stays the one process that owns the database; this bridge holds no state. If no broker serves the
home yet, it starts one in the background (its log goes to ``$AISWARM_HOME/logs/broker.log``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import httpx
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from aiswarm_server import __version__
from aiswarm_server.broker_client import BrokerClient, BrokerUnreachable, local_broker_url, local_token
from aiswarm_server.config import BrokerSettings
from aiswarm_server.home import read_broker_info


def broker_is_up(url: str, timeout: float = 1.0) -> bool:
    """Whether an aiswarm broker answers ``/health`` beside this MCP URL within ``timeout`` seconds."""
    health = url.rsplit("/mcp", 1)[0] + "/health"
    try:
        return httpx.get(health, timeout=timeout).json().get("service") == "aiswarm"
    except (httpx.HTTPError, ValueError):
        return False


def start_broker(settings: BrokerSettings, wait_seconds: float = 20.0) -> str:
    """Start ``aiswarm serve`` for this home in the background and return its URL once it answers."""
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AISWARM_HOME": str(settings.home)}
    with open(logs / "broker.log", "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aiswarm_server",
                "serve",
                "--port",
                str(settings.port),
                "--host",
                settings.host,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,  # outlives this bridge: other clients share it
        )
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        info = read_broker_info(settings.home)
        if info is not None and broker_is_up(info.url):
            return info.url
        if process.poll() is not None:
            raise BrokerUnreachable(
                f"the broker exited at start-up (code {process.returncode}); see {logs / 'broker.log'}"
            )
        time.sleep(0.1)
    raise BrokerUnreachable(
        f"the broker did not answer within {wait_seconds:.0f}s; see {logs / 'broker.log'}"
    )


def resolve_broker(settings: BrokerSettings, url: str | None, start: bool) -> str:
    """The URL of a broker that answers: ``url``, else the one serving the home, started if absent and ``start``.

    Raises :class:`BrokerUnreachable` with the command that fixes it."""
    target = url or local_broker_url(settings)
    if broker_is_up(target):
        return target
    if url is not None or not start:
        raise BrokerUnreachable(f"no aiswarm broker answers at {target}. Start one with `aiswarm serve`.")
    return start_broker(settings)


async def run_bridge(settings: BrokerSettings, *, url: str | None, token: str | None, start: bool) -> None:
    """Serve MCP on stdin/stdout until the client closes it, passing tools/list and tools/call to the broker."""
    target = resolve_broker(settings, url, start)
    secret = token or local_token(settings.home, "primary")
    async with BrokerClient(target, secret) as upstream:
        client = upstream._client
        assert client is not None

        async def list_tools(
            _ctx: Any, _params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            return await client.list_tools()

        async def call_tool(_ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
            return await client.call_tool(params.name, params.arguments or {})

        server: Server[Any] = Server(
            "aiswarm",
            version=__version__,
            instructions="aiswarm broker (via the stdio bridge).",
            on_list_tools=list_tools,
            on_call_tool=call_tool,
        )
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
