"""A typed MCP client for the broker, used by the CLI commands, the launcher, the benchmark and the tests.

It speaks real MCP over streamable HTTP: ``mode="2026-07-28"`` (one self-contained POST per call, the Python
SDK's generation) or ``mode="legacy"`` (the ``initialize`` handshake and session that gemini-cli and qwen-code use).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR
from pydantic import BaseModel

from aiswarm_server.auth import ADMIN_TOKEN_FILE, PRIMARY_TOKEN_FILE, read_token_file
from aiswarm_server.config import BrokerSettings
from aiswarm_server.models import UsageRecord
from aiswarm_server.replies import (
    AgentsReply,
    AgentStatusReply,
    AnswerReply,
    AskReply,
    ClaimReply,
    CompletionReply,
    HeartbeatReply,
    ProgressReply,
    RegisterReply,
    StatusReply,
    SubmitReply,
    TaskReply,
    TasksReply,
    TokenListReply,
    TokenReply,
    UsageReply,
    WaitReply,
    WaitTasksReply,
)
from aiswarm_server.serve import read_broker_info

ReplyT = TypeVar("ReplyT", bound=BaseModel)
Mode = Literal["2026-07-28", "legacy"]


class BrokerCallError(Exception):
    """The broker refused a tool call; the message says why and what to do."""

    def __init__(self, tool: str, message: str) -> None:
        super().__init__(message)
        self.tool = tool


class BrokerUnreachable(Exception):
    """No broker answers at the URL (or none was ever started for the home)."""

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


def local_broker_url(settings: BrokerSettings) -> str:
    """The URL of the broker serving this home (from ``broker.json``), else the configured address."""
    info = read_broker_info(settings.home)
    return info.url if info is not None else settings.url


def local_token(home: Path, role: Literal["admin", "primary"] = "admin") -> str:
    """The token for ``role`` in this home (``AISWARM_TOKEN`` wins); raise :class:`BrokerUnreachable` if the home has
    none yet (no broker ever started there)."""
    token = os.environ.get("AISWARM_TOKEN") or read_token_file(
        home / (ADMIN_TOKEN_FILE if role == "admin" else PRIMARY_TOKEN_FILE)
    )
    if token is None:
        raise BrokerUnreachable(
            f"no {role} token in {home}: start the broker once with `aiswarm serve` (it creates the tokens), "
            "or set AISWARM_TOKEN."
        )
    return token


class BrokerClient:
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
                f"cannot talk to the broker at {self.url}: {_root_cause(error)}", self.url
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
                f"cannot talk to the broker at {self.url}: {_root_cause(error)}", self.url
            ) from error

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

    # worker
    async def register_agent(self, **kwargs: Any) -> RegisterReply:
        """Register this worker (see the ``register_agent`` tool for the arguments)."""
        return await self.call("register_agent", RegisterReply, **kwargs)

    async def wait_for_next_event(
        self, cursor: str | None = None, timeout_seconds: int | None = None
    ) -> WaitReply:
        """Wait for an event or a claimable task after ``cursor``."""
        return await self.call(
            "wait_for_next_event", WaitReply, cursor=cursor, timeout_seconds=timeout_seconds
        )

    async def claim_task(self, task_id: int | None = None) -> ClaimReply:
        """Claim ``task_id``, or the best task this worker fits."""
        return await self.call("claim_task", ClaimReply, task_id=task_id)

    async def report_progress(self, task_id: int, fence_token: int, message: str) -> ProgressReply:
        """Report progress on a held task and renew its lease."""
        return await self.call(
            "report_progress", ProgressReply, task_id=task_id, fence_token=fence_token, message=message
        )

    async def report_task_completion(self, task_id: int, fence_token: int, **kwargs: Any) -> CompletionReply:
        """Report how a held task ended (``success``, ``result``, ``error``, ``data``, ``retryable``)."""
        return await self.call(
            "report_task_completion", CompletionReply, task_id=task_id, fence_token=fence_token, **kwargs
        )

    async def ask_primary(self, task_id: int, fence_token: int, question: str, **kwargs: Any) -> AskReply:
        """Ask the primary about a held task and wait for the answer (``options``, ``on_timeout``,
        ``answer_within_seconds``, ``wait_seconds`` as the tool takes them)."""
        return await self.call(
            "ask_primary", AskReply, task_id=task_id, fence_token=fence_token, question=question, **kwargs
        )

    async def update_heartbeat(self) -> HeartbeatReply:
        """Tell the broker this worker is alive; renews its lease."""
        return await self.call("update_heartbeat", HeartbeatReply)

    async def get_agent_status(self) -> AgentStatusReply:
        """This worker's record and the task it holds."""
        return await self.call("get_agent_status", AgentStatusReply)

    # primary
    async def submit_task(self, title: str, prompt: str, **kwargs: Any) -> SubmitReply:
        """Submit one task (keyword arguments as the ``submit_task`` tool takes them)."""
        return await self.call("submit_task", SubmitReply, title=title, prompt=prompt, **kwargs)

    async def submit_tasks(self, tasks: list[dict[str, Any]]) -> SubmitReply:
        """Submit several tasks at once, all or none; ``depends_on`` may name earlier ``key``s."""
        return await self.call("submit_tasks", SubmitReply, tasks=tasks)

    async def get_task(self, task_id: int) -> TaskReply:
        """One task with its attempts."""
        return await self.call("get_task", TaskReply, task_id=task_id)

    async def list_tasks(self, status: str | None = None, limit: int = 50, offset: int = 0) -> TasksReply:
        """Tasks newest first, optionally of one status."""
        return await self.call("list_tasks", TasksReply, status=status, limit=limit, offset=offset)

    async def wait_for_tasks(
        self, task_ids: list[int], mode: Literal["all", "any"] = "all", timeout_seconds: int | None = None
    ) -> WaitTasksReply:
        """Wait until all (or any) of the tasks finish, or the broker's wait timeout passes."""
        return await self.call(
            "wait_for_tasks", WaitTasksReply, task_ids=task_ids, mode=mode, timeout_seconds=timeout_seconds
        )

    async def answer_question(self, task_id: int, answer: str) -> AnswerReply:
        """Answer the open question of a task's worker."""
        return await self.call("answer_question", AnswerReply, task_id=task_id, answer=answer)

    async def cancel_task(self, task_id: int, reason: str | None = None) -> TaskReply:
        """Cancel a task that has not finished."""
        return await self.call("cancel_task", TaskReply, task_id=task_id, reason=reason)

    async def merge_task(self, task_id: int, discard: bool = False) -> TaskReply:
        """Merge a completed task's kept branch onto the branch it was submitted from (or discard it)."""
        return await self.call("merge_task", TaskReply, task_id=task_id, discard=discard)

    async def record_isolation(self, task_id: int, fence_token: int | None, **fields: Any) -> TaskReply:
        """Record an isolated attempt's branch, worktree or merge state (refused under a stale fence)."""
        return await self.call(
            "record_isolation", TaskReply, task_id=task_id, fence_token=fence_token, **fields
        )

    async def list_agents(self) -> AgentsReply:
        """The registered worker agents."""
        return await self.call("list_agents", AgentsReply)

    # admin
    async def issue_agent_token(self, agent: str) -> TokenReply:
        """Issue a worker token for ``agent`` (admin only)."""
        return await self.call("issue_agent_token", TokenReply, agent=agent)

    async def revoke_agent_tokens(self, agent: str) -> TokenReply:
        """Revoke every token of ``agent``; the reply's message says how many."""
        return await self.call("revoke_agent_tokens", TokenReply, agent=agent)

    async def list_tokens(self, agent: str | None = None, include_revoked: bool = False) -> TokenListReply:
        """The issued tokens' fingerprints, roles and agents (admin only)."""
        return await self.call("list_tokens", TokenListReply, agent=agent, include_revoked=include_revoked)

    async def record_usage(self, record: UsageRecord) -> UsageReply:
        """Report one CLI run's model requests and tokens (admin only)."""
        return await self.call("record_usage", UsageReply, usage=record.model_dump())

    async def mark_agents_offline(self, agents: list[str]) -> AgentsReply:
        """Mark agents offline because their launcher stopped them (admin only)."""
        return await self.call("mark_agents_offline", AgentsReply, agents=agents)

    async def release_task(
        self, agent: str, task_id: int, reason: str = "released by the launcher"
    ) -> CompletionReply:
        """Put a task ``agent`` holds back in the queue without counting a failure (admin only)."""
        return await self.call("release_task", CompletionReply, agent=agent, task_id=task_id, reason=reason)

    async def broker_status(self) -> StatusReply:
        """Counts of tasks and agents, parked waits, uptime (admin only)."""
        return await self.call("broker_status", StatusReply)


async def _replies_checked_by_pydantic(name: str, result: Any) -> None:
    """Stands in for the SDK's per-call jsonschema validation: :meth:`BrokerClient.call` validates with pydantic."""


def _root_cause(error: BaseException) -> str:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if error.__cause__ is not None and str(error) == "":
        error = error.__cause__
    return str(error) or type(error).__name__
