"""A small upstream MCP server for the gateway tests, written with the SDK's MCPServer.

``python -m tests.gateway.upstream_server`` serves stdio; ``--http --port-file F`` serves streamable HTTP on a free
loopback port and requires ``Authorization: Bearer $UPSTREAM_TOKEN``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("files")


@server.tool()
async def echo(text: str) -> str:
    """Answer with the text."""
    return f"echo: {text}"


@server.tool()
async def pid() -> int:
    """The server's process id."""
    return os.getpid()


@server.tool()
async def has_credential(ctx: Context[Any, Any]) -> str:
    """Whether the server received its credential (env for stdio, the Authorization header for HTTP)."""
    expected = os.environ.get("UPSTREAM_TOKEN", "")
    headers = ctx.headers or {}
    if headers:
        return "yes" if expected and headers.get("authorization") == f"Bearer {expected}" else "no"
    return "yes" if expected else "no"


@server.tool()
async def delete_everything() -> str:
    """A destructive tool that a read-only persona must not see."""
    return "deleted"


@server.tool()
async def count(steps: int, ctx: Context[Any, Any]) -> str:
    """Count to `steps`, reporting progress at each step."""
    for step in range(1, steps + 1):
        await ctx.report_progress(step, steps, f"step {step}")
    return f"counted to {steps}"


def main() -> None:
    """Serve stdio, or streamable HTTP with ``--http``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--port-file")
    args = parser.parse_args()
    if not args.http:
        server.run("stdio")
        return
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    expected = os.environ.get("UPSTREAM_TOKEN", "")
    app = server.streamable_http_app(streamable_http_path="/mcp")

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if headers.get(b"authorization", b"").decode() != f"Bearer {expected}":
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"no credential"})
                return
        await app(scope, receive, send)

    with open(args.port_file, "w") as out:
        out.write(str(sock.getsockname()[1]))
    uvicorn.run(guarded, fd=sock.fileno(), log_level="warning")


if __name__ == "__main__":
    main()
