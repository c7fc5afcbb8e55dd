"""The no-op floor: an MCPServer with one ``ping`` tool, served exactly as the broker serves its MCP servers.

Same SDK, same ``streamable_http_app`` options (path, DNS-rebinding settings), same uvicorn configuration,
listening socket and event loop (uvloop when installed) as ``aiswarm_server.serve``; only the tool does nothing. Run as
``python -m aiswarm_server.bench.noop_server --port-file PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import uvicorn
from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel

from aiswarm_server.config import BrokerSettings
from aiswarm_server.heap import freeze_start_up_heap
from aiswarm_server.http_app import transport_security
from aiswarm_server.serve import bind_socket


class PingReply(BaseModel):
    """What ``ping`` answers: a constant, so the reply is as small as a broker reply can be."""

    ok: bool
    message: str


def build_server() -> MCPServer:
    server = MCPServer("aiswarm-bench-noop")

    @server.tool()
    async def ping() -> PingReply:
        """Answer at once; does nothing."""
        return PingReply(ok=True, message="pong")

    return server


async def serve(port_file: Path) -> None:
    settings = BrokerSettings(home=port_file.parent, port=0)
    server = build_server()
    app = server.streamable_http_app(
        streamable_http_path="/mcp", transport_security=transport_security(settings), host=settings.host
    )
    sock = bind_socket(settings)
    await asyncio.to_thread(port_file.write_text, str(sock.getsockname()[1]), encoding="utf-8")
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=3,
        timeout_keep_alive=120,
        ws="none",
        http="auto",
    )
    freeze_start_up_heap()  # as the broker does once started
    await uvicorn.Server(config).serve(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-file", type=Path, required=True)
    port_file = parser.parse_args().port_file
    try:  # the same event loop as ``aiswarm_server.serve.run``
        import uvloop
    except ImportError:
        asyncio.run(serve(port_file))
    else:
        uvloop.run(serve(port_file))


if __name__ == "__main__":
    main()
