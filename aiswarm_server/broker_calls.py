"""The broker's tools as typed calls, the errors a call can end in, and where a home's broker and tokens are.

Two clients implement :class:`BrokerCalls`: :class:`~aiswarm_server.broker_client.BrokerClient` (the MCP SDK, both
protocol generations; the launcher, the benchmark, the bridge and the tests) and
:class:`~aiswarm_server.post_client.PostClient` (one POST per call without the SDK; the CLI's short commands). This
module imports neither the SDK nor the server.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel

from aiswarm_server.config import BrokerSettings
from aiswarm_server.home import ADMIN_TOKEN_FILE, PRIMARY_TOKEN_FILE, read_broker_info, read_token_file
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

if TYPE_CHECKING:
    from aiswarm_server.models import UsageRecord

ReplyT = TypeVar("ReplyT", bound=BaseModel)


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


def root_cause(error: BaseException) -> str:
    """The innermost error's text, out of exception groups and empty wrappers: what a one-line message names."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if error.__cause__ is not None and str(error) == "":
        error = error.__cause__
    return str(error) or type(error).__name__


class BrokerCalls(ABC):
    """Every broker tool as a typed method over one :meth:`call`; a client supplies ``call`` and ``url``."""

    url: str

    @abstractmethod
    async def call(self, tool: str, reply: type[ReplyT], /, **arguments: Any) -> ReplyT:
        """Call a tool (arguments that are None are left out); raise :class:`BrokerCallError` with the broker's
        message if it refuses, :class:`BrokerUnreachable` if no broker answers."""

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
