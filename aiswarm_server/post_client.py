"""A broker client without the MCP SDK, for the CLI's short commands: each tool call is one JSON-RPC POST on the MCP
2026-07-28 wire (no handshake, no session), answered with JSON or, for a call that runs past 15 s, an SSE stream.

Importing the SDK's client costs about 0.3 s of CPU (it loads every protocol type of both generations and the
server side); ``aiswarm status`` needs one POST. Refusals and unreachable brokers surface exactly as with
:class:`~aiswarm_server.broker_client.BrokerClient` (tests/mcp/test_post_client.py runs both side by side). The
legacy generation (``initialize`` and a session) is the SDK client's alone.
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

import httpx2
from typing_extensions import override

from aiswarm_server import __version__
from aiswarm_server.broker_calls import BrokerCallError, BrokerCalls, BrokerUnreachable, ReplyT, root_cause

PROTOCOL_VERSION = "2026-07-28"
# The per-request envelope in params._meta and the routing headers the 2026-07-28 wire requires; the names are the
# SDK's (mcp_types, mcp.shared.inbound), which the tests check.
PROTOCOL_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CLIENT_INFO_KEY = "io.modelcontextprotocol/clientInfo"
CLIENT_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
PROTOCOL_VERSION_HEADER = "mcp-protocol-version"
METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"
#: JSON-RPC's "internal error": the broker failed, which the SDK client also reports as a lost broker.
INTERNAL_ERROR = -32603


class PostClient(BrokerCalls):
    """``async with PostClient(url, token) as broker: await broker.broker_status()``."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0, read_timeout: float = 600.0) -> None:
        self.url = url
        self._http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"},
            timeout=httpx2.Timeout(timeout, read=read_timeout),
            # A plain-HTTP broker (the usual loopback one) needs no CA bundle: loading it is 20 ms of CPU, a tenth
            # of `aiswarm status`. The client never follows redirects, so it never leaves this URL.
            verify=not url.startswith("http://"),
        )
        self._last_id = 0

    async def __aenter__(self) -> PostClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._http.aclose()

    @override
    async def call(self, tool: str, reply: type[ReplyT], /, **arguments: Any) -> ReplyT:
        """Call a tool; raise :class:`BrokerCallError` with the broker's message if it refuses."""
        self._last_id += 1
        call_id = self._last_id
        request = {
            "jsonrpc": "2.0",
            "id": call_id,
            "method": "tools/call",
            "params": {
                "name": tool,
                "arguments": {k: v for k, v in arguments.items() if v is not None},
                "_meta": {
                    PROTOCOL_VERSION_KEY: PROTOCOL_VERSION,
                    CLIENT_INFO_KEY: {"name": "aiswarm", "version": __version__},
                    CLIENT_CAPABILITIES_KEY: {},
                },
            },
        }
        # The broker's tool names are ASCII identifiers, so Mcp-Name needs none of the wire's base64 escaping.
        headers = {PROTOCOL_VERSION_HEADER: PROTOCOL_VERSION, METHOD_HEADER: "tools/call", NAME_HEADER: tool}
        try:
            async with self._http.stream("POST", self.url, json=request, headers=headers) as response:
                answer = await self._answer(response, tool, call_id)
        except httpx2.HTTPError as error:
            raise BrokerUnreachable(
                f"cannot talk to the broker at {self.url}: {root_cause(error)}", self.url
            ) from error
        if "error" in answer:
            raise self._refusal(tool, answer["error"])
        result = answer.get("result") or {}
        if result.get("isError"):
            text = " ".join(block.get("text", "") for block in result.get("content", [])).strip()
            raise BrokerCallError(tool, text.removeprefix(f"Error executing tool {tool}: "))
        return reply.model_validate(result.get("structuredContent"))

    async def _answer(self, response: httpx2.Response, tool: str, call_id: int) -> dict[str, Any]:
        """The JSON-RPC response to this call: the JSON body, or the SSE event carrying it (notifications skipped)."""
        kind = response.headers.get("content-type", "").lower()
        if response.status_code >= 400:
            answer = _json_object(await response.aread()) if kind.startswith("application/json") else None
            said = answer.get("error") if answer is not None else None
            if answer is not None and isinstance(said, dict):
                return answer  # a JSON-RPC error at a 4xx status (400 invalid params, 404 unknown method)
            if response.status_code == 404:  # not an MCP endpoint: what the SDK calls "method not found"
                raise BrokerCallError(tool, "Not Found")
            # 401 bad token, 413 too large, 503 starting or stopping: the broker's own {"error": "..."} says which
            why = said if isinstance(said, str) else f"HTTP {response.status_code}"
            raise BrokerUnreachable(f"lost the broker at {self.url} during {tool}: {why}", self.url)
        if kind.startswith("application/json"):
            answer = _json_object(await response.aread())
            if answer is not None:
                return answer
        elif kind.startswith("text/event-stream"):
            async for event in httpx2.EventSource(response):
                message = _json_object(event.data.encode())
                if message is not None and message.get("id") == call_id and "method" not in message:
                    return message
        raise BrokerUnreachable(
            f"lost the broker at {self.url} during {tool}: it ended the response without an answer", self.url
        )

    def _refusal(self, tool: str, error: dict[str, Any]) -> Exception:
        message = str(error.get("message", "the broker refused the call"))
        if error.get("code") == INTERNAL_ERROR:
            return BrokerUnreachable(f"lost the broker at {self.url} during {tool}: {message}", self.url)
        return BrokerCallError(tool, message)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
