"""A minimal MCP client over one raw HTTP/1.1 connection, speaking either protocol generation.

``2026-07-28`` (the Python SDK's): each call is one self-contained JSON-RPC POST to ``/mcp`` with the same headers
and ``_meta`` the Python SDK client sends (captured from ``mcp`` 2.3.0): no ``initialize``, no session id.
``2025-11-25`` (gemini-cli's and qwen-code's, through ``@modelcontextprotocol/sdk``'s
``StreamableHTTPClientTransport``): ``initialize``, ``notifications/initialized``, then the standalone GET stream
those clients open on a second connection (unless ``standalone_stream`` is false), and every call a POST with
``Mcp-Session-Id`` and ``MCP-Protocol-Version`` answered on an SSE stream.

It exists so the benchmark can hold 1,000 parked calls from a few processes: an ``mcp.Client`` costs ~1 MB
client-side, this costs a socket (two with a standalone stream). One connection carries one call at a time
(HTTP/1.1 keep-alive, no pipelining).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Literal

Protocol = Literal["2026-07-28", "2025-11-25"]
PROTOCOL_VERSION: Protocol = "2026-07-28"
LEGACY_PROTOCOL_VERSION: Protocol = "2025-11-25"
PROTOCOLS: tuple[Protocol, ...] = (PROTOCOL_VERSION, LEGACY_PROTOCOL_VERSION)
_CLIENT_INFO = {"name": "aiswarm-bench", "version": "0.1.0"}
_META = {
    "io.modelcontextprotocol/protocolVersion": PROTOCOL_VERSION,
    "io.modelcontextprotocol/clientInfo": _CLIENT_INFO,
    "io.modelcontextprotocol/clientCapabilities": {},
}
_LIMIT = 1 << 22


class McpCallError(Exception):
    """A call failed: HTTP status, JSON-RPC error, or a tool error (``isError``)."""


class RawMcpConnection:
    """``conn = await RawMcpConnection.open(host, port, token)``; ``await conn.call_tool(name, args)``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        port: int,
        token: str,
        protocol: Protocol = PROTOCOL_VERSION,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._host = f"{host}:{port}"
        self._token = token
        self._address = (host, port)
        self._next_id = 0
        self.protocol: Protocol = protocol
        self.session_id: str | None = None
        self._standalone: asyncio.StreamWriter | None = None
        self.reconnects = 0

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        token: str,
        protocol: Protocol = PROTOCOL_VERSION,
        *,
        standalone_stream: bool = True,
    ) -> RawMcpConnection:
        """Connect; on ``2025-11-25`` also initialize a session and (``standalone_stream``) open its GET stream."""
        reader, writer = await asyncio.open_connection(host, port, limit=_LIMIT)
        connection = cls(reader, writer, host, port, token, protocol)
        if protocol == LEGACY_PROTOCOL_VERSION:
            try:
                await connection._initialize(standalone_stream)
            except BaseException:
                await connection.close()
                raise
        return connection

    async def _initialize(self, standalone_stream: bool) -> None:
        params = {"protocolVersion": LEGACY_PROTOCOL_VERSION, "capabilities": {}, "clientInfo": _CLIENT_INFO}
        status, headers, payload = await self._exchange(self._post("initialize", params, request_id=0))
        if status != 200 or "mcp-session-id" not in headers:
            raise McpCallError(f"initialize: HTTP {status}: {payload[:300].decode(errors='replace')}")
        self.session_id = headers["mcp-session-id"]
        status, _, payload = await self._exchange(self._post("notifications/initialized", None))
        if status != 202:
            raise McpCallError(
                f"notifications/initialized: HTTP {status}: {payload[:300].decode(errors='replace')}"
            )
        if standalone_stream:  # what StreamableHTTPClientTransport does after the 202
            reader, self._standalone = await asyncio.open_connection(*self._address, limit=_LIMIT)
            self._standalone.write(self._head("GET", 0, "text/event-stream"))
            head = await reader.readuntil(b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                raise McpCallError(f"GET stream: {head[:200].decode(errors='replace')}")

    async def close(self) -> None:
        """Close the connection (and the standalone stream); a parked call's server side sees it go."""
        for writer in (self._writer, self._standalone):
            if writer is not None:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()

    async def end_session(self) -> int:
        """``DELETE`` the session on a separate connection, as a client leaving does; return the HTTP status."""
        reader, writer = await asyncio.open_connection(*self._address, limit=_LIMIT)
        try:
            writer.write(self._head("DELETE", 0, "application/json, text/event-stream"))
            head = await reader.readuntil(b"\r\n\r\n")
            return int(head.split(b" ", 2)[1])
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _head(self, method: str, length: int, accept: str) -> bytes:
        session = ""
        if self.session_id is not None:
            session = f"Mcp-Session-Id: {self.session_id}\r\nMCP-Protocol-Version: {self.protocol}\r\n"
        body = f"Content-Type: application/json\r\nContent-Length: {length}\r\n" if method == "POST" else ""
        return (
            f"{method} /mcp HTTP/1.1\r\nHost: {self._host}\r\nAuthorization: Bearer {self._token}\r\n"
            f"Accept: {accept}\r\n{session}{body}\r\n"
        ).encode()

    def _post(self, method: str, params: dict[str, Any] | None, request_id: int | None = None) -> bytes:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if request_id is not None:
            message["id"] = request_id
        if params is not None:
            message["params"] = params
        body = json.dumps(message, separators=(",", ":")).encode()
        return self._head("POST", len(body), "application/json, text/event-stream") + body

    async def _exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        try:
            self._writer.write(request)
            return await self._read_response()
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            if isinstance(error, asyncio.IncompleteReadError) and error.partial:
                raise
            # The server closed an idle keep-alive connection (uvicorn: after 5 s) before reading this
            # request: reconnect and send it again once, as httpx does.
            self.reconnects += 1
            self._writer.close()
            self._reader, self._writer = await asyncio.open_connection(*self._address, limit=_LIMIT)
            self._writer.write(request)
            return await self._read_response()

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call a tool; return its ``structuredContent``. Raise :class:`McpCallError` on any failure."""
        self._next_id += 1
        request_id = self._next_id
        if self.protocol == LEGACY_PROTOCOL_VERSION:
            request = self._post("tools/call", {"name": name, "arguments": arguments or {}}, request_id)
        else:
            body = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "method": "tools/call",
                    "params": {"name": name, "arguments": arguments or {}, "_meta": _META},
                },
                separators=(",", ":"),
            ).encode()
            request = (
                f"POST /mcp HTTP/1.1\r\nHost: {self._host}\r\nAuthorization: Bearer {self._token}\r\n"
                "Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n"
                f"MCP-Protocol-Version: {PROTOCOL_VERSION}\r\nMcp-Method: tools/call\r\nMcp-Name: {name}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
        status, headers, payload = await self._exchange(request)
        if status != 200:
            raise McpCallError(f"{name}: HTTP {status}: {payload[:300].decode(errors='replace')}")
        message = _find_response(headers.get("content-type", ""), payload, request_id)
        if "error" in message:
            raise McpCallError(f"{name}: JSON-RPC error {message['error']}")
        result: dict[str, Any] = message["result"]
        if result.get("isError"):
            text = " ".join(str(block.get("text", "")) for block in result.get("content", []))
            raise McpCallError(f"{name}: tool error: {text[:300]}")
        structured: dict[str, Any] = result.get("structuredContent") or {}
        return structured

    async def _read_response(self) -> tuple[int, dict[str, str], bytes]:
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            return status, headers, await self._reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self._reader.readuntil(b"\r\n")
                    return status, headers, b"".join(chunks)
                chunks.append(await self._reader.readexactly(size))
                await self._reader.readexactly(2)
        return status, headers, await self._reader.read()


def _find_response(content_type: str, payload: bytes, request_id: int) -> dict[str, Any]:
    """The JSON-RPC response with ``request_id``, from a JSON body or an SSE stream (pings are skipped)."""
    if content_type.startswith("application/json"):
        message: dict[str, Any] = json.loads(payload)
        return message
    for event in payload.decode().replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:"))
        if not data:
            continue
        candidate: dict[str, Any] = json.loads(data)
        if candidate.get("id") == request_id and ("result" in candidate or "error" in candidate):
            return candidate
    raise McpCallError(f"no response for request {request_id} in the SSE stream")
