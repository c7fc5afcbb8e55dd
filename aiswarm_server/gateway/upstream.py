"""One upstream MCP server: connected once, watched, restarted with backoff, its tools kept current."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, CallToolResult, TextContent, Tool

from aiswarm_server.gateway.config import UpstreamSpec

log = logging.getLogger("aiswarm.gateway")

PING_SECONDS = 2.0
PING_TIMEOUT_SECONDS = 10.0
BACKOFF_START_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
WAIT_FOR_UP_SECONDS = 15.0


class UpstreamDown(Exception):
    """The upstream cannot take the call; the message says why and when to retry."""


class Upstream:
    """Keeps one connection to an upstream server: (re)connects with backoff, lists its tools, forwards calls."""

    def __init__(self, spec: UpstreamSpec) -> None:
        """Not connected until :meth:`start`."""
        self.spec = spec
        self.name = spec.name
        self.tools: list[Tool] = []
        self.state = "starting"
        self.last_error = ""
        self.restarts = 0
        self.failed_starts = 0  # connection attempts in a row that never came up
        self._client: Client | None = None
        self._up = asyncio.Event()
        self._lost = asyncio.Event()
        self._relist = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start connecting in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"aiswarm-upstream-{self.name}")

    async def stop(self) -> None:
        """Close the connection (and stop a stdio server)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    def _target(self) -> Any:
        spec = self.spec
        if spec.command is not None:
            return StdioServerParameters(
                command=spec.command[0], args=spec.command[1:], env=spec.resolved_env(), cwd=spec.cwd
            )
        assert spec.url is not None
        http = httpx2.AsyncClient(
            headers=spec.resolved_headers(), timeout=httpx2.Timeout(30.0, read=spec.timeout_seconds)
        )
        return streamable_http_client(spec.url, http_client=http)

    async def _run(self) -> None:
        backoff = BACKOFF_START_SECONDS
        while True:
            started = time.monotonic()
            try:
                await self._connect_once()
            except asyncio.CancelledError:
                raise
            except BaseException as error:  # a dead process surfaces as an ExceptionGroup from the transport
                self.last_error = _root_cause(error)
                if self.state != "up":
                    self.failed_starts += 1
                log.warning("upstream %s: %s; restarting in %.1f s", self.name, self.last_error, backoff)
            self._mark_down()
            if time.monotonic() - started > 60:
                backoff = BACKOFF_START_SECONDS  # it ran a good while: start the backoff over
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
            self.restarts += 1

    async def _connect_once(self) -> None:
        async def on_message(message: Any) -> None:
            if (
                getattr(getattr(message, "root", message), "method", None)
                == "notifications/tools/list_changed"
            ):
                self._relist.set()

        # A stdio server's stderr goes to the broker's own (its log).
        client = Client(self._target(), message_handler=on_message, cache=None)
        async with client:
            self.tools = (await client.list_tools()).tools
            self._client = client
            self._lost.clear()
            self.state = "up"
            self.last_error = ""
            self.failed_starts = 0
            self._up.set()
            log.info("upstream %s up with %d tool(s)", self.name, len(self.tools))
            await self._watch(client)

    async def _watch(self, client: Client) -> None:
        """List the tools every few seconds (or at once when the upstream says they changed) until it stops answering.

        The listing is the liveness check: ``ping`` is gone from the 2026-07-28 protocol, and a fresh listing also
        catches tool changes of servers that send no ``list_changed`` notification."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._relist.wait(), PING_SECONDS)
            self._relist.clear()
            try:
                self.tools = (await asyncio.wait_for(client.list_tools(), PING_TIMEOUT_SECONDS)).tools
            except TimeoutError:
                raise ConnectionError(
                    f"no answer to tools/list within {PING_TIMEOUT_SECONDS:.0f} s"
                ) from None
            if self._client is None:  # a call failed, but the connection answers: take calls again
                self._client = client
                self._up.set()

    def _mark_down(self) -> None:
        self._client = None
        self._up.clear()
        self._lost.set()
        self.state = "down"

    async def call(
        self, tool: str, arguments: dict[str, Any], progress: ProgressFnT | None
    ) -> CallToolResult:
        """Forward one call; wait a little for an upstream that is (re)starting; never hang past the timeout."""
        # A server that is starting or restarting after a crash gets a moment; one that keeps failing to start
        # is reported at once.
        if self._client is None and self.failed_starts < 2:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._up.wait(), WAIT_FOR_UP_SECONDS)
        client = self._client
        if client is None:
            why = f": {self.last_error}" if self.last_error else ""
            raise UpstreamDown(
                f"the MCP server {self.name!r} is not available{why}. The broker keeps restarting it; retry in a "
                "minute, or do without this tool."
            )
        lost = asyncio.ensure_future(self._lost.wait())
        call = asyncio.ensure_future(
            client.call_tool(
                tool, arguments, read_timeout_seconds=self.spec.timeout_seconds, progress_callback=progress
            )
        )
        try:
            done, _ = await asyncio.wait(
                {call, lost}, timeout=self.spec.timeout_seconds + 5, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
            if not call.done():
                call.cancel()  # cancels the upstream request too (notifications/cancelled)
                with contextlib.suppress(BaseException):
                    await call
        if call not in done:
            if lost in done:
                raise UpstreamDown(
                    f"the MCP server {self.name!r} stopped during the call; it is being restarted. Retry the call "
                    "once (check first whether it already took effect)."
                )
            raise UpstreamDown(f"{self.name}__{tool} gave no answer within {self.spec.timeout_seconds:.0f} s")
        try:
            return call.result()
        except MCPError as error:
            if error.code != CONNECTION_CLOSED:
                return CallToolResult(
                    content=[TextContent(text=f"{self.name}__{tool} failed: {_root_cause(error)}")],
                    is_error=True,
                )
            reason = _root_cause(error)
        except Exception as error:
            reason = _root_cause(error)
        # The connection broke: hold further calls until the watcher has re-checked it (or restarted the server).
        if self._client is client:
            self._client = None
            self._up.clear()
            self._relist.set()
        raise UpstreamDown(
            f"the MCP server {self.name!r} stopped answering during the call ({reason}); it is being checked and "
            "restarted. Retry the call once (check first whether it already took effect)."
        )


def _root_cause(error: BaseException) -> str:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return str(error) or type(error).__name__
