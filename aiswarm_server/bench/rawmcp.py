"""A minimal MCP client over one raw HTTP/1.1 connection, speaking the 2026-07-28 protocol generation.

Each call is one self-contained JSON-RPC POST to ``/mcp`` with the same headers and ``_meta`` the Python SDK
client sends (captured from ``mcp`` 2.3.0): no ``initialize``, no session id. It exists so the benchmark can
hold 1,000 parked calls from a few processes: an ``mcp.Client`` costs ~1 MB client-side, this costs a socket.

One connection carries one call at a time (HTTP/1.1 keep-alive, no pipelining).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

PROTOCOL_VERSION = "2026-07-28"
_META = {
    "io.modelcontextprotocol/protocolVersion": PROTOCOL_VERSION,
    "io.modelcontextprotocol/clientInfo": {"name": "aiswarm-bench", "version": "0.1.0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


class McpCallError(Exception):
    """A call failed: HTTP status, JSON-RPC error, or a tool error (``isError``)."""


class RawMcpConnection:
    """``conn = await RawMcpConnection.open(host, port, token)``; ``await conn.call_tool(name, args)``."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int, token: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._host = f"{host}:{port}"
        self._token = token
        self._address = (host, port)
        self._next_id = 0
        self.reconnects = 0

    @classmethod
    async def open(cls, host: str, port: int, token: str) -> RawMcpConnection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
        return cls(reader, writer, host, port, token)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call a tool; return its ``structuredContent``. Raise :class:`McpCallError` on any failure."""
        self._next_id += 1
        request_id = self._next_id
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "tools/call",
                "params": {"name": name, "arguments": arguments or {}, "_meta": _META},
            },
            separators=(",", ":"),
        ).encode()
        head = (
            f"POST /mcp HTTP/1.1\r\nHost: {self._host}\r\nAuthorization: Bearer {self._token}\r\n"
            "Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n"
            f"MCP-Protocol-Version: {PROTOCOL_VERSION}\r\nMcp-Method: tools/call\r\nMcp-Name: {name}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            self._writer.write(head + body)
            status, content_type, payload = await self._read_response()
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            if isinstance(error, asyncio.IncompleteReadError) and error.partial:
                raise
            # The server closed an idle keep-alive connection (uvicorn: after 5 s) before reading this
            # request: reconnect and send it again once, as httpx does.
            self.reconnects += 1
            await self.close()
            self._reader, self._writer = await asyncio.open_connection(*self._address, limit=1 << 22)
            self._writer.write(head + body)
            status, content_type, payload = await self._read_response()
        if status != 200:
            raise McpCallError(f"{name}: HTTP {status}: {payload[:300].decode(errors='replace')}")
        message = _find_response(content_type, payload, request_id)
        if "error" in message:
            raise McpCallError(f"{name}: JSON-RPC error {message['error']}")
        result: dict[str, Any] = message["result"]
        if result.get("isError"):
            text = " ".join(str(block.get("text", "")) for block in result.get("content", []))
            raise McpCallError(f"{name}: tool error: {text[:300]}")
        structured: dict[str, Any] = result.get("structuredContent") or {}
        return structured

    async def _read_response(self) -> tuple[int, str, bytes]:
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        content_type = headers.get("content-type", "")
        if "content-length" in headers:
            return status, content_type, await self._reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self._reader.readuntil(b"\r\n")
                    return status, content_type, b"".join(chunks)
                chunks.append(await self._reader.readexactly(size))
                await self._reader.readexactly(2)
        return status, content_type, await self._reader.read()


def _find_response(content_type: str, payload: bytes, request_id: int) -> dict[str, Any]:
    """The JSON-RPC response with ``request_id``, from a JSON body or an SSE stream (pings are skipped)."""
    if content_type.startswith("application/json"):
        message: dict[str, Any] = json.loads(payload)
        return message
    for event in payload.decode().split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:"))
        if not data:
            continue
        candidate: dict[str, Any] = json.loads(data)
        if candidate.get("id") == request_id and ("result" in candidate or "error" in candidate):
            return candidate
    raise McpCallError(f"no response for request {request_id} in the SSE stream")
