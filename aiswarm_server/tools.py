"""The MCP surface: thin typed tools over the broker service, one small set per role.

Each role gets its own MCP server object, so a worker's ``tools/list`` shows only the worker tools and a
primary's only the submit/observe tools. The HTTP layer picks the server from the caller's token; each tool
re-derives the caller's identity from the same token, never from an argument.

Tool docstrings are what the agents' models read: they say when to call the tool and what to do next.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from aiswarm_server import __version__
from aiswarm_server.broker import Broker, ModelUsage, TaskSpec
from aiswarm_server.config import DEFAULT_WAIT_SECONDS, MAX_WAIT_SECONDS
from aiswarm_server.errors import BrokerError
from aiswarm_server.models import Identity, Isolation, IsolationUpdate, MergeState, Role, TaskStatus
from aiswarm_server.replies import (
    AgentsReply,
    AgentStatusReply,
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

P = ParamSpec("P")
R = TypeVar("R")

TaskId = Annotated[
    int, Field(ge=1, le=2**62, description="A task id, as returned by submit_task or claim_task.")
]
FenceToken = Annotated[
    int, Field(ge=1, le=2**62, description="The fence_token that claim_task returned with this task.")
]


_ASCII_ID = re.compile(r"-?[0-9]{1,19}")
ISOLATION_HELP = (
    "auto (default): in its own git worktree when the launch runs several agents and working_dir is in a git "
    "checkout, merged back onto your branch when done; worktree: always isolated; none: work in working_dir."
)
FILES_HELP = (
    "Paths or globs (relative to working_dir) the task will change, e.g. ['src/api/', 'tests/test_api.py']. "
    "Tasks whose files overlap do not run at the same time: the later one waits."
)


@dataclass
class BrokerRef:
    """Where tools find the running broker (set once the app's lifespan has opened the store)."""

    broker: Broker | None = None

    def get(self) -> Broker:
        if self.broker is None:
            raise ToolError("The broker is starting up; retry in a moment.")
        return self.broker


def _identity(ref: BrokerRef, ctx: Context[Any, Any]) -> Identity:
    headers = ctx.headers or {}
    value = headers.get("authorization", "")
    token = value[7:].strip() if value.lower().startswith("bearer ") else None
    identity = ref.get().tokens.authenticate_cached(token)
    if identity is None:
        raise ToolError("Not authenticated: send your aiswarm token as `Authorization: Bearer <token>`.")
    return identity


def _refusals(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn broker refusals into tool errors whose text the model can act on."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except BrokerError as error:
            raise ToolError(str(error)) from error

    return wrapper


class TaskInput(BaseModel):
    """One task to submit."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(
        min_length=1, max_length=200, description="Short name, e.g. 'Add tests for the parser'."
    )
    prompt: str = Field(
        min_length=1, description="Everything the worker needs: what to do, which files, how to check."
    )
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher runs first.")
    persona: str | None = Field(
        default=None,
        description="Only agents with this persona take it: implementer, reviewer, tester, researcher...",
    )
    capabilities: list[str] = Field(
        default_factory=list, description="Only agents with all of these take it."
    )
    depends_on: list[int | str] = Field(
        default_factory=list,
        description="Task ids (or `key`s of earlier tasks in the same submit_tasks batch) that must complete first.",
    )
    working_dir: str | None = Field(default=None, description="Absolute path the worker should work in.")
    max_attempts: int | None = Field(
        default=None, ge=1, le=100, description="Tries before giving up (default 3)."
    )
    timeout_seconds: int | None = Field(
        default=None, ge=1, le=604_800, description="Per-attempt limit (default 1800)."
    )
    key: str | None = Field(
        default=None,
        max_length=64,
        description="A name for this task that later tasks in the same batch can depend on.",
    )
    retry_delay_seconds: float | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="After a failed attempt, wait this long before the next one (default 0: at once).",
    )
    retry_backoff: float | None = Field(
        default=None, ge=1, le=10, description="Each further retry waits this many times longer (default 1)."
    )
    isolation: Isolation = Field(default=Isolation.AUTO, description=ISOLATION_HELP)
    files: list[str] = Field(default_factory=list, max_length=100, description=FILES_HELP)

    @field_validator("depends_on")
    @classmethod
    def _ids_or_keys(cls, values: list[int | str]) -> list[int | str]:
        """A string of ASCII digits is a task id; other digit-like text (e.g. '²') is neither id nor key."""
        checked: list[int | str] = []
        for value in values:
            if isinstance(value, str) and _ASCII_ID.fullmatch(value.strip()):
                checked.append(int(value))
            elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
                raise ValueError(
                    f"depends_on entry {value[:20]!r} is not a task id: write ids with the digits 0-9, e.g. 12"
                )
            else:
                checked.append(value)
        return checked

    def to_spec(self) -> TaskSpec:
        return TaskSpec(
            self.title,
            self.prompt,
            priority=self.priority,
            persona=self.persona,
            capabilities=self.capabilities,
            depends_on=self.depends_on,
            working_dir=self.working_dir,
            max_attempts=self.max_attempts,
            timeout_seconds=self.timeout_seconds,
            key=self.key,
            retry_delay_seconds=self.retry_delay_seconds,
            retry_backoff=self.retry_backoff,
            isolation=self.isolation,
            files=self.files,
        )


def _add_worker_tools(server: MCPServer, ref: BrokerRef) -> None:
    @server.tool()
    @_refusals
    async def register_agent(
        ctx: Context[Any, Any],
        cli: Annotated[
            str, Field(max_length=64, description="Which CLI you are: qwen, gemini, opencode ...")
        ] = "unknown",
        persona: Annotated[
            str | None, Field(max_length=64, description="Your persona, if you were given one.")
        ] = None,
        capabilities: Annotated[
            list[str], Field(max_length=64, description="What you can do, e.g. ['python'].")
        ] = [],  # noqa: B006
        pid: Annotated[int | None, Field(ge=0, le=2**31, description="Your process id, if known.")] = None,
    ) -> RegisterReply:
        """Register yourself as a worker agent of this swarm (your name comes from your token).

        Call once when you start. Calling again is safe: you stay the same agent and keep any task you hold.
        Then call wait_for_next_event with the returned cursor."""
        return await ref.get().register_agent(
            _identity(ref, ctx), cli=cli, persona=persona, capabilities=capabilities, pid=pid
        )

    @server.tool()
    @_refusals
    async def wait_for_next_event(
        ctx: Context[Any, Any],
        cursor: Annotated[
            str | None,
            Field(max_length=40, description="The cursor from your previous call (omit on the first call)."),
        ] = None,
        timeout_seconds: Annotated[
            int, Field(ge=0, le=MAX_WAIT_SECONDS, description="How long to wait if nothing is there yet.")
        ] = DEFAULT_WAIT_SECONDS,
    ) -> WaitReply:
        """Wait for work: returns at once if a task is available for you or an event concerns you, otherwise
        waits until one arrives or the timeout passes.

        Events: `task_available` (call claim_task with its task_id), `task_cancelled` (stop working on that task),
        `lease_lost` (your claim expired; drop that task). Always pass back the `cursor` from the previous reply:
        it acknowledges what you have seen. If nothing arrived, simply call again with the new cursor."""
        return await ref.get().wait_for_next_event(_identity(ref, ctx), cursor, timeout_seconds)

    @server.tool()
    @_refusals
    async def claim_task(
        ctx: Context[Any, Any],
        task_id: Annotated[
            int | None,
            Field(ge=1, le=2**62, description="The task to claim; omit to take the best available one."),
        ] = None,
    ) -> ClaimReply:
        """Claim a task so that you, and only you, work on it. Returns the task's prompt and a fence_token.

        If you already hold a task (for example one reserved for you), it is returned again. If `claimed` is
        false, do not work on anything: read `message` and call wait_for_next_event."""
        return await ref.get().claim_task(_identity(ref, ctx), task_id)

    @server.tool()
    @_refusals
    async def report_progress(
        ctx: Context[Any, Any],
        task_id: TaskId,
        fence_token: FenceToken,
        message: Annotated[str, Field(max_length=2000, description="One line on where you are.")],
        percent: Annotated[float | None, Field(ge=0, le=100, description="Rough completion, 0-100.")] = None,
    ) -> ProgressReply:
        """Report progress on the task you hold; this also renews your lease on it.

        Call it every few minutes during long work, or you may lose the task to another agent."""
        return await ref.get().report_progress(_identity(ref, ctx), task_id, fence_token, message, percent)

    @server.tool()
    @_refusals
    async def report_task_completion(
        ctx: Context[Any, Any],
        task_id: TaskId,
        fence_token: FenceToken,
        success: Annotated[
            bool, Field(description="true if you did what the task asked, false if you could not.")
        ],
        result: Annotated[
            str | None, Field(description="What you did: files changed, findings, answers. Be concise.")
        ] = None,
        data: Annotated[
            dict[str, Any] | None,
            Field(description="Optional structured output (a JSON object) for the submitter."),
        ] = None,
        error: Annotated[str | None, Field(description="When success is false: what went wrong.")] = None,
        retryable: Annotated[
            bool, Field(description="When success is false: false if retrying elsewhere cannot help.")
        ] = True,
    ) -> CompletionReply:
        """Report that you finished the task you claimed (success or failure), with its result.

        Pass the task_id and fence_token from claim_task. After this you no longer hold the task; call
        wait_for_next_event for more work."""
        return await ref.get().report_task_completion(
            _identity(ref, ctx),
            task_id,
            fence_token,
            success=success,
            result=result,
            data=data,
            error=error,
            retryable=retryable,
        )

    @server.tool()
    @_refusals
    async def update_heartbeat(ctx: Context[Any, Any]) -> HeartbeatReply:
        """Tell the broker you are alive; renews the lease on the task you hold, if any."""
        return await ref.get().heartbeat(_identity(ref, ctx))

    @server.tool()
    @_refusals
    async def get_agent_status(ctx: Context[Any, Any]) -> AgentStatusReply:
        """Show your own agent record and the task you currently hold, if any."""
        return await ref.get().agent_status(_identity(ref, ctx))


def _add_primary_tools(server: MCPServer, ref: BrokerRef) -> None:
    @server.tool()
    @_refusals
    async def submit_task(
        ctx: Context[Any, Any],
        title: Annotated[str, Field(min_length=1, max_length=200, description="Short name of the task.")],
        prompt: Annotated[
            str,
            Field(
                min_length=1,
                description="Everything the worker needs: what to do, which files, how to check.",
            ),
        ],
        priority: Annotated[int, Field(ge=-1000, le=1000, description="Higher runs first.")] = 0,
        persona: Annotated[
            str | None,
            Field(max_length=64, description="implementer, reviewer, tester, researcher ... or omit."),
        ] = None,
        capabilities: Annotated[
            list[str], Field(max_length=32, description="Required agent capabilities.")
        ] = [],  # noqa: B006
        depends_on: Annotated[
            list[int], Field(max_length=200, description="Task ids that must complete first.")
        ] = [],  # noqa: B006
        working_dir: Annotated[
            str | None, Field(max_length=4096, description="Absolute path to work in.")
        ] = None,
        max_attempts: Annotated[
            int | None, Field(ge=1, le=100, description="Tries before giving up (default 3).")
        ] = None,
        timeout_seconds: Annotated[
            int | None, Field(ge=1, le=604_800, description="Per-attempt time limit (default 1800).")
        ] = None,
        isolation: Annotated[Isolation, Field(description=ISOLATION_HELP)] = Isolation.AUTO,
        files: Annotated[list[str], Field(max_length=100, description=FILES_HELP)] = [],  # noqa: B006
    ) -> SubmitReply:
        """Give one task to the swarm of worker agents. Returns the task with its id.

        Write the prompt so that an agent who knows nothing else can do it. Then call wait_for_tasks with the id
        to get the result. For several tasks at once (with dependencies between them) use submit_tasks."""
        identity = _identity(ref, ctx)
        spec = TaskInput(
            title=title,
            prompt=prompt,
            priority=priority,
            persona=persona,
            capabilities=capabilities,
            depends_on=list(depends_on),
            working_dir=working_dir,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
            isolation=isolation,
            files=files,
        ).to_spec()
        return await ref.get().submit_tasks(identity, [spec])

    @server.tool()
    @_refusals
    async def submit_tasks(
        ctx: Context[Any, Any],
        tasks: Annotated[list[TaskInput], Field(min_length=1, description="The tasks, in order.")],
    ) -> SubmitReply:
        """Give several tasks to the swarm at once (all or none are accepted). A task may depend on tasks listed
        before it by their `key`, or on existing task ids; it starts when they have all completed, and fails if
        one of them fails. Then call wait_for_tasks with the returned ids."""
        return await ref.get().submit_tasks(_identity(ref, ctx), [t.to_spec() for t in tasks])

    @server.tool()
    @_refusals
    async def get_task(ctx: Context[Any, Any], task_id: TaskId) -> TaskReply:
        """Look at one task: status, result or error, who worked on it, every attempt."""
        _identity(ref, ctx)
        return await ref.get().get_task(task_id)

    @server.tool()
    @_refusals
    async def list_tasks(
        ctx: Context[Any, Any],
        status: Annotated[TaskStatus | None, Field(description="Only tasks with this status.")] = None,
        limit: Annotated[int, Field(ge=1, le=500, description="At most this many, newest first.")] = 50,
        offset: Annotated[int, Field(ge=0, le=2**31, description="Skip this many (for paging).")] = 0,
    ) -> TasksReply:
        """List tasks, newest first, optionally only those with one status."""
        _identity(ref, ctx)
        return await ref.get().list_tasks(status, limit, offset)

    @server.tool()
    @_refusals
    async def wait_for_tasks(
        ctx: Context[Any, Any],
        task_ids: Annotated[
            list[int], Field(min_length=1, max_length=200, description="The tasks to wait for.")
        ],
        mode: Annotated[
            Literal["all", "any"],
            Field(description="'all': until every task finished; 'any': until one has."),
        ] = "all",
        timeout_seconds: Annotated[
            int, Field(ge=0, le=MAX_WAIT_SECONDS, description="Give up waiting after this long.")
        ] = DEFAULT_WAIT_SECONDS,
    ) -> WaitTasksReply:
        """Wait until all (or any) of the tasks finish, then return them with their results and errors.

        If `done` is false the wait timed out: call it again to keep waiting. Finished tasks have status
        completed, failed, dead (every attempt failed) or cancelled."""
        _identity(ref, ctx)
        return await ref.get().wait_for_tasks(task_ids, mode, timeout_seconds)

    @server.tool()
    @_refusals
    async def cancel_task(
        ctx: Context[Any, Any],
        task_id: TaskId,
        reason: Annotated[str | None, Field(max_length=500, description="Why; the worker is told.")] = None,
    ) -> TaskReply:
        """Cancel a task. A worker holding it is told at its next call; tasks depending on it fail."""
        _identity(ref, ctx)
        return await ref.get().cancel_task(task_id, reason)

    @server.tool()
    @_refusals
    async def merge_task(
        ctx: Context[Any, Any],
        task_id: TaskId,
        discard: Annotated[
            bool, Field(description="Delete the task's branch instead of merging it (its work is dropped).")
        ] = False,
    ) -> TaskReply:
        """Merge a completed task's branch onto the branch it was submitted from, when that did not happen by
        itself: merge_state manual (the launch merges by hand) or conflict (after you resolved what was in the
        way: commit or stash your own changes to the files named, or rebase the branch). Nothing is touched if
        it would overwrite uncommitted work or conflict; the reply says why. discard=true drops the branch."""
        _identity(ref, ctx)
        return await ref.get().merge_task(task_id, discard)

    @server.tool()
    @_refusals
    async def list_agents(ctx: Context[Any, Any]) -> AgentsReply:
        """List the worker agents: name, CLI, persona, status (idle, busy, lost) and current task."""
        _identity(ref, ctx)
        return await ref.get().list_agents()


def _add_admin_tools(server: MCPServer, ref: BrokerRef) -> None:
    @server.tool()
    @_refusals
    async def issue_agent_token(
        ctx: Context[Any, Any],
        agent: Annotated[
            str, Field(min_length=1, max_length=64, description="The agent's stable name, e.g. qwen-1.")
        ],
    ) -> TokenReply:
        """Issue a worker token for one agent (used by the launcher when it writes an agent's settings)."""
        _identity(ref, ctx)
        return await ref.get().issue_agent_token(agent)

    @server.tool()
    @_refusals
    async def revoke_agent_tokens(
        ctx: Context[Any, Any], agent: Annotated[str, Field(min_length=1, max_length=64)]
    ) -> TokenReply:
        """Revoke every token of one agent."""
        _identity(ref, ctx)
        count = await ref.get().tokens.revoke_agent(agent)
        return TokenReply(agent=agent, token="", message=f"Revoked {count} token(s) of {agent}.")

    @server.tool()
    @_refusals
    async def list_tokens(
        ctx: Context[Any, Any],
        agent: Annotated[
            str | None, Field(max_length=64, description="Only this agent's tokens; omit for all.")
        ] = None,
        include_revoked: Annotated[bool, Field(description="Also list revoked tokens.")] = False,
    ) -> TokenListReply:
        """List issued tokens (never the tokens themselves: a fingerprint, role, agent, when issued and revoked)."""
        _identity(ref, ctx)
        return await ref.get().list_tokens(agent=agent, include_revoked=include_revoked)

    @server.tool()
    @_refusals
    async def release_task(
        ctx: Context[Any, Any],
        agent: Annotated[str, Field(min_length=1, max_length=64, description="The agent holding the task.")],
        task_id: TaskId,
        reason: Annotated[str, Field(max_length=500)] = "released by the launcher",
    ) -> CompletionReply:
        """Give a held task back to the queue without counting a failed attempt (graceful stop)."""
        _identity(ref, ctx)
        return await ref.get().release_task(agent, task_id, reason)

    @server.tool()
    @_refusals
    async def record_isolation(
        ctx: Context[Any, Any],
        task_id: TaskId,
        fence_token: Annotated[
            int | None, Field(ge=0, description="The attempt's fence; omit only for the merge queue.")
        ] = None,
        branch: Annotated[str | None, Field(max_length=300)] = None,
        workspace: Annotated[
            str | None, Field(max_length=4096, description="The attempt's directory.")
        ] = None,
        merge_state: MergeState | None = None,
        merge_detail: Annotated[str | None, Field(max_length=4000)] = None,
        conflict_files: Annotated[list[str] | None, Field(max_length=1000)] = None,
        diff_stat: Annotated[str | None, Field(max_length=500)] = None,
    ) -> TaskReply:
        """Record what an isolated attempt did (the launcher): its branch and worktree, then its merge state.
        Refused when fence_token is not the task's current one: a stale attempt's work is never merged."""
        _identity(ref, ctx)
        update = IsolationUpdate(
            branch=branch,
            workspace=workspace,
            merge_state=merge_state,
            merge_detail=merge_detail,
            conflict_files=conflict_files,
            diff_stat=diff_stat,
        )
        return await ref.get().record_isolation(task_id, fence_token, update)

    @server.tool()
    @_refusals
    async def record_model_usage(
        ctx: Context[Any, Any],
        agent: Annotated[str, Field(min_length=1, max_length=64, description="The agent whose CLI ran.")],
        cli: Annotated[str, Field(min_length=1, max_length=64, description="qwen, gemini, opencode ...")],
        provider: Annotated[
            str,
            Field(
                min_length=1,
                max_length=200,
                description="Who served the model: an endpoint's host, or 'login'.",
            ),
        ],
        requests: Annotated[int, Field(ge=0, le=10**9, description="Model requests the run made.")],
        input_tokens: Annotated[int, Field(ge=0, le=10**12)] = 0,
        output_tokens: Annotated[int, Field(ge=0, le=10**12)] = 0,
        task_id: Annotated[int | None, Field(ge=1, le=2**62, description="The task the run was for.")] = None,
    ) -> UsageReply:
        """Record one CLI run's model usage (the launcher calls this after each run) for /metrics and the logs."""
        _identity(ref, ctx)
        usage = ModelUsage(provider.strip(), task_id, requests, input_tokens, output_tokens)
        ref.get().record_model_usage(agent, cli, usage)
        return UsageReply(
            message=f"Recorded {requests} request(s), {input_tokens + output_tokens} token(s) for {agent}."
        )

    @server.tool()
    @_refusals
    async def mark_agents_offline(
        ctx: Context[Any, Any],
        agents: Annotated[
            list[Annotated[str, Field(min_length=1, max_length=64)]],
            Field(min_length=1, max_length=1000, description="The names of the agents that stopped."),
        ],
    ) -> AgentsReply:
        """Mark agents offline at once because their launcher stopped them (release their tasks first). An agent
        that calls the broker again is live again."""
        _identity(ref, ctx)
        return await ref.get().mark_agents_offline(agents)

    @server.tool()
    @_refusals
    async def broker_status(ctx: Context[Any, Any]) -> StatusReply:
        """Counts of tasks and agents by status, parked waits, uptime."""
        _identity(ref, ctx)
        return await ref.get().status()


INSTRUCTIONS = {
    Role.WORKER: (
        "You are a worker agent in an aiswarm swarm. Loop: wait_for_next_event -> claim_task -> do the work with "
        "your own tools -> report_task_completion. Always pass back the cursor and the fence_token you were given."
    ),
    Role.PRIMARY: (
        "aiswarm runs tasks on a swarm of worker agents. submit_task / submit_tasks to hand work out, "
        "wait_for_tasks to collect results, get_task / list_tasks / list_agents to look, cancel_task to stop one."
    ),
    Role.ADMIN: "aiswarm administration: everything a primary can do, plus tokens and leases.",
}


def build_servers(ref: BrokerRef) -> dict[Role, MCPServer]:
    """One MCP server per role, each with only that role's tools."""
    servers: dict[Role, MCPServer] = {}
    for role in Role:
        server = MCPServer(f"aiswarm-{role.value}", instructions=INSTRUCTIONS[role], version=__version__)
        if role is Role.WORKER:
            _add_worker_tools(server, ref)
        else:
            _add_primary_tools(server, ref)
        if role is Role.ADMIN:
            _add_admin_tools(server, ref)
        servers[role] = server
    return servers
