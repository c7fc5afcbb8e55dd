"""The typed MCP client for the broker on the MCP SDK, used by the launcher, the benchmark, the bridge and the tests.

It speaks real MCP over streamable HTTP: ``mode="2026-07-28"`` (one self-contained POST per call, the Python
SDK's generation) or ``mode="legacy"`` (the ``initialize`` handshake and session that gemini-cli and qwen-code use).
The typed methods and the errors live in :mod:`aiswarm_server.broker_calls`; the CLI's short commands use the
SDK-free :class:`~aiswarm_server.post_client.PostClient` instead.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Any, Literal

import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR
from typing_extensions import override

from aiswarm_server.broker_calls import (
    BrokerCallError,
    BrokerCalls,
    BrokerUnreachable,
    ReplyT,
    local_broker_url,
    local_token,
    root_cause,
)

__all__ = [
    "BrokerCallError",
    "BrokerClient",
    "BrokerUnreachable",
    "Mode",
    "local_broker_url",
    "local_token",
]

Mode = Literal["2026-07-28", "legacy"]


class BrokerClient(BrokerCalls):
    """``async with BrokerClient(url, token) as broker: await broker.submit_task(...)``."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        mode: Mode = "2026-07-28",
        timeout: float = 30.0,
        read_timeout: float = 600.0,
    ) -> None:
        self.url = url
        self.token = token
        self.mode: Mode = mode
        self._timeout = httpx2.Timeout(timeout, read=read_timeout)
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Client | None = None

    async def __aenter__(self) -> BrokerClient:
        stack = contextlib.AsyncExitStack()
        try:
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers={"Authorization": f"Bearer {self.token}"}, timeout=self._timeout)
            )
            client = Client(streamable_http_client(self.url, http_client=http), mode=self.mode, cache=None)
            self._client = await stack.enter_async_context(client)
            # Replies are parsed with the same pydantic models the server's output schemas come from, so the SDK's
            # extra jsonschema pass over every result (several ms per call for the Task schema) buys nothing here.
            self._client.session.validate_tool_result = _replies_checked_by_pydantic  # type: ignore[method-assign]
        except BaseException as error:
            await stack.aclose()
            raise BrokerUnreachable(
                f"cannot talk to the broker at {self.url}: {root_cause(error)}", self.url
            ) from error
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is None:
            return
        try:
            await stack.aclose()
        except Exception as error:
            # A refused connection fails the SDK's transport task group: the call in flight is cancelled and the
            # group (holding the connect error) surfaces here, on the way out.
            raise BrokerUnreachable(
                f"cannot talk to the broker at {self.url}: {root_cause(error)}", self.url
            ) from error

    @override
    async def call(self, tool: str, reply: type[ReplyT], /, **arguments: Any) -> ReplyT:
        """Call a tool; raise :class:`BrokerCallError` with the broker's message if it refuses."""
        if self._client is None:
            raise RuntimeError("use `async with BrokerClient(...)`")
        args = {k: v for k, v in arguments.items() if v is not None}
        try:
            result = await self._client.call_tool(tool, args)
        except MCPError as error:
            if error.code in (CONNECTION_CLOSED, INTERNAL_ERROR):  # the broker went away or answered non-2xx
                raise BrokerUnreachable(
                    f"lost the broker at {self.url} during {tool}: {error.error.message}", self.url
                ) from error
            raise BrokerCallError(tool, error.error.message) from error
        if result.is_error:
            text = " ".join(getattr(block, "text", "") for block in result.content).strip()
            raise BrokerCallError(tool, text.removeprefix(f"Error executing tool {tool}: "))
        return reply.model_validate(result.structured_content)

    async def list_tool_names(self) -> list[str]:
        """The names of the tools this caller's role sees, sorted."""
        if self._client is None:
            raise RuntimeError("use `async with BrokerClient(...)`")
        return sorted(tool.name for tool in (await self._client.list_tools()).tools)


async def _replies_checked_by_pydantic(name: str, result: Any) -> None:
    """Stands in for the SDK's per-call jsonschema validation: :meth:`BrokerClient.call` validates with pydantic."""
