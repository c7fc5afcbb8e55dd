"""The MCP surface: thin typed tools over the broker service, one small set per role.

Each role gets its own MCP server object, so a worker's ``tools/list`` shows only the worker tools and a
primary's only the submit/observe tools. The HTTP layer picks the server from the caller's token; each tool
re-derives the caller's identity from the same token, never from an argument.

Tool docstrings are what the agents' models read: they say when to call the tool and what to do next.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

from mcp import MCPError
from mcp.server.extension import Extension
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.subscriptions import InMemorySubscriptionBus, SubscriptionBus
from mcp_types import INVALID_PARAMS, GetPromptResult, ServerCapabilities
from pydantic import Field, StrictFloat, StrictInt, ValidationError, create_model
from typing_extensions import override

from aiswarm_server import __version__
from aiswarm_server.broker import Broker, UsageGrouping
from aiswarm_server.config import DEFAULT_WAIT_SECONDS, MAX_WAIT_SECONDS, BrokerSettings
from aiswarm_server.errors import BrokerError
from aiswarm_server.limits import (
    ANSWER_MAX_CHARS,
    ANSWER_WAIT_DEFAULT_SECONDS,
    ANSWER_WITHIN_DEFAULT_SECONDS,
    ANSWER_WITHIN_MAX_SECONDS,
    COUNT_MAX,
    CURSOR_MAX_CHARS,
    DEPENDENCIES_MAX,
    ID_MAX,
    LABEL_MAX_CHARS,
    LIST_LIMIT_MAX,
    OPTION_MAX_CHARS,
    PROGRESS_MAX_CHARS,
    QUESTION_MAX_CHARS,
    QUESTION_OPTIONS_MAX,
    REASON_MAX_CHARS,
)
from aiswarm_server.mcp_tasks import BrokerTasks, serve_task_notifications
from aiswarm_server.models import (
    AgentState,
    AnswerWithin,
    Capabilities,
    Identity,
    Isolation,
    IsolationUpdate,
    MaxAttempts,
    MergeState,
    OnUnanswered,
    PersonaName,
    Priority,
    Role,
    TaskPrompt,
    TaskRequest,
    TaskStatus,
    TaskTimeout,
    TaskTitle,
    UsageRecord,
    WorkingDir,
)
from aiswarm_server.replies import (
    AgentsReply,
    AgentStateReply,
    AgentStatusReply,
    AnswerReply,
    AskReply,
    ClaimReply,
    CompletionReply,
    HeartbeatReply,
    ProgressReply,
    QuotaPoolsReply,
    RegisterReply,
    StatusReply,
    SubmitReply,
    TaskReply,
    TasksReply,
    TokenListReply,
    TokenReply,
    UsageReply,
    UsageSummaryReply,
    WaitReply,
    WaitTasksReply,
)

P = ParamSpec("P")
R = TypeVar("R")

TaskId = Annotated[
    StrictInt, Field(ge=1, le=ID_MAX, description="A task id, as returned by submit_task or claim_task.")
]
FenceToken = Annotated[
    StrictInt, Field(ge=1, le=ID_MAX, description="The fence_token that claim_task returned with this task.")
]
AgentName = Annotated[
    str, Field(min_length=1, max_length=LABEL_MAX_CHARS, description="The agent's stable name, e.g. qwen-1.")
]
Reason = Annotated[str, Field(max_length=REASON_MAX_CHARS, description="Why; the worker is told.")]
ISOLATION_HELP = TaskRequest.model_fields["isolation"].description
FILES_HELP = TaskRequest.model_fields["files"].description
ANSWER_WITHIN_HELP = TaskRequest.model_fields["answer_within_seconds"].description
ON_UNANSWERED_HELP = TaskRequest.model_fields["on_unanswered"].description


@dataclass
class BrokerRef:
    """Where tools find the running broker (set once the app's lifespan has opened the store)."""

    broker: Broker | None = None

    def get(self) -> Broker:
        """The running broker; a :class:`ToolError` asking to retry while it starts."""
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


def _annotated(**annotations: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Give tool parameters types built from the settings: the SDK evaluates string annotations in the module's
    namespace, where a closure's names do not exist."""

    def apply(fn: Callable[P, R]) -> Callable[P, R]:
        fn.__annotations__.update(annotations)
        return fn

    return apply


def _defaults_said(settings: BrokerSettings) -> tuple[str, str]:
    """The descriptions of max_attempts and timeout_seconds, naming this broker's defaults."""
    return (
        f"Tries before giving up (default {settings.default_max_attempts}).",
        f"Per-attempt time limit in seconds (default {settings.default_task_timeout_seconds}).",
    )


def task_request_schema(settings: BrokerSettings) -> type[TaskRequest]:
    """:class:`TaskRequest` as submit_tasks shows it to a model: the same fields, with this broker's defaults."""
    attempts, timeout = _defaults_said(settings)
    return create_model(
        "TaskRequest",
        __base__=TaskRequest,
        max_attempts=(MaxAttempts | None, Field(default=None, description=attempts)),
        timeout_seconds=(TaskTimeout | None, Field(default=None, description=timeout)),
    )


def _add_worker_tools(server: MCPServer, ref: BrokerRef) -> None:
    @server.tool()
    @_refusals
    async def register_agent(
        ctx: Context[Any, Any],
        cli: Annotated[
            str,
            Field(max_length=LABEL_MAX_CHARS, description="Which CLI you are: qwen, gemini, opencode ..."),
        ] = "unknown",
        persona: Annotated[
            str | None, Field(max_length=LABEL_MAX_CHARS, description="Your persona, if you were given one.")
        ] = None,
        capabilities: Annotated[
            list[str], Field(max_length=LABEL_MAX_CHARS, description="What you can do, e.g. ['python'].")
        ] = [],  # noqa: B006
        pid: Annotated[
            StrictInt | None, Field(ge=0, le=COUNT_MAX, description="Your process id, if known.")
        ] = None,
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
            Field(
                max_length=CURSOR_MAX_CHARS,
                description="The cursor from your previous call (omit on the first call).",
            ),
        ] = None,
        timeout_seconds: Annotated[
            StrictInt,
            Field(ge=0, le=MAX_WAIT_SECONDS, description="How many seconds to wait if nothing is there yet."),
        ] = DEFAULT_WAIT_SECONDS,
    ) -> WaitReply:
        """Wait for work: returns at once if a task is available for you or an event concerns you, otherwise
        waits until one arrives or the timeout passes.

        Events: `task_available` (call claim_task with its task_id), `task_cancelled` (stop working on that task),
        `lease_lost` (your claim expired; drop that task), `question_answered` (the primary's answer to your
        ask_primary question is in `detail`), `question_expired` (no answer in time; `detail` says what now). Always pass back the `cursor` from the previous reply:
        it acknowledges what you have seen. If nothing arrived, simply call again with the new cursor."""
        return await ref.get().wait_for_next_event(_identity(ref, ctx), cursor, timeout_seconds)

    @server.tool()
    @_refusals
    async def claim_task(
        ctx: Context[Any, Any],
        task_id: Annotated[
            StrictInt | None,
            Field(ge=1, le=ID_MAX, description="The task to claim; omit to take the best available one."),
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
        message: Annotated[
            str, Field(max_length=PROGRESS_MAX_CHARS, description="One line on where you are.")
        ],
        percent: Annotated[
            StrictFloat | None, Field(ge=0, le=100, description="Rough completion, 0-100.")
        ] = None,
    ) -> ProgressReply:
        """Report progress on the task you hold; this also renews your lease on it.

        Call it every few minutes during long work, or you may lose the task to another agent."""
        return await ref.get().report_progress(_identity(ref, ctx), task_id, fence_token, message, percent)

    @server.tool()
    @_refusals
    async def ask_primary(
        ctx: Context[Any, Any],
        task_id: TaskId,
        fence_token: FenceToken,
        question: Annotated[
            str,
            Field(
                min_length=1,
                max_length=QUESTION_MAX_CHARS,
                description="What you need decided, with the context the primary needs to answer it.",
            ),
        ],
        options: Annotated[
            list[Annotated[str, Field(max_length=OPTION_MAX_CHARS)]],
            Field(
                max_length=QUESTION_OPTIONS_MAX, description="The choices, when the answer is one of a few."
            ),
        ] = [],  # noqa: B006
        on_timeout: Annotated[
            OnUnanswered | None,
            Field(
                description="If nobody answers in time: 'continue' (you go on with your own judgement) or "
                "'fail' (this attempt fails; only when going on without the answer would do harm). Omit to "
                "follow the task's policy (else continue)."
            ),
        ] = None,
        answer_within_seconds: Annotated[
            StrictInt | None,
            Field(
                ge=1,
                le=ANSWER_WITHIN_MAX_SECONDS,
                description=f"How long the primary has to answer (omit: the task's, else "
                f"{ANSWER_WITHIN_DEFAULT_SECONDS}).",
            ),
        ] = None,
        wait_seconds: Annotated[
            StrictInt,
            Field(ge=0, le=MAX_WAIT_SECONDS, description="How long this call waits for the answer."),
        ] = ANSWER_WAIT_DEFAULT_SECONDS,
    ) -> AskReply:
        """Ask the primary (the user's agent that submitted the work) a question about the task you hold, and
        wait for the answer. Only for decisions you cannot make yourself (a choice between designs, missing
        information, something risky); not for things you can find out by reading the code.

        Pass the task_id and fence_token from claim_task. If `status` is 'answered', follow `answer`. If 'open',
        nobody answered yet: follow `message` (wait with wait_for_next_event and the given cursor, or call
        ask_primary again with the same question). 'expired' means the deadline passed: go on by your own
        judgement, or stop if the message says the attempt failed. One open question at a time."""
        return await ref.get().ask_primary(
            _identity(ref, ctx),
            task_id,
            fence_token,
            question,
            options=options,
            on_timeout=on_timeout,
            answer_within_seconds=answer_within_seconds,
            wait_seconds=wait_seconds,
        )

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


def _add_primary_tools(server: MCPServer, ref: BrokerRef, settings: BrokerSettings) -> None:
    attempts_said, timeout_said = _defaults_said(settings)

    @server.tool()
    @_refusals
    @_annotated(
        max_attempts=Annotated[MaxAttempts | None, Field(description=attempts_said)],
        timeout_seconds=Annotated[TaskTimeout | None, Field(description=timeout_said)],
    )
    async def submit_task(
        ctx: Context[Any, Any],
        title: TaskTitle,
        prompt: TaskPrompt,
        priority: Priority = 0,
        persona: PersonaName | None = None,
        capabilities: Capabilities = [],  # noqa: B006
        depends_on: Annotated[
            list[StrictInt],
            Field(max_length=DEPENDENCIES_MAX, description="Task ids that must complete first."),
        ] = [],  # noqa: B006
        working_dir: WorkingDir | None = None,
        max_attempts: MaxAttempts | None = None,
        timeout_seconds: TaskTimeout | None = None,
        isolation: Annotated[Isolation, Field(description=ISOLATION_HELP)] = Isolation.AUTO,
        files: Annotated[list[str], Field(max_length=100, description=FILES_HELP)] = [],  # noqa: B006
        answer_within_seconds: Annotated[AnswerWithin | None, Field(description=ANSWER_WITHIN_HELP)] = None,
        on_unanswered: Annotated[OnUnanswered | None, Field(description=ON_UNANSWERED_HELP)] = None,
    ) -> SubmitReply:
        """Give one task to the swarm of worker agents. Returns the task with its id.

        Write the prompt so that an agent who knows nothing else can do it. Then call wait_for_tasks with the id
        to get the result. For several tasks at once (with dependencies between them) use submit_tasks."""
        identity = _identity(ref, ctx)
        request = TaskRequest(
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
            answer_within_seconds=answer_within_seconds,
            on_unanswered=on_unanswered,
        )
        return await ref.get().submit_tasks(identity, [request])

    @server.tool()
    @_refusals
    @_annotated(
        tasks=Annotated[
            list[task_request_schema(settings)], Field(min_length=1, description="The tasks, in order.")
        ]
    )
    async def submit_tasks(
        ctx: Context[Any, Any],
        tasks: list[TaskRequest],
    ) -> SubmitReply:
        """Give several tasks to the swarm at once (all or none are accepted). A task may depend on tasks listed
        before it by their `key`, or on existing task ids; it starts when they have all completed, and fails if
        one of them fails. Then call wait_for_tasks with the returned ids."""
        return await ref.get().submit_tasks(_identity(ref, ctx), tasks)

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
        limit: Annotated[
            StrictInt, Field(ge=1, le=LIST_LIMIT_MAX, description="At most this many, newest first.")
        ] = 50,
        offset: Annotated[
            StrictInt, Field(ge=0, le=COUNT_MAX, description="Skip this many (for paging).")
        ] = 0,
    ) -> TasksReply:
        """List tasks, newest first, optionally only those with one status."""
        _identity(ref, ctx)
        return await ref.get().list_tasks(status, limit, offset)

    @server.tool()
    @_refusals
    @_annotated(
        task_ids=Annotated[
            list[StrictInt],
            Field(min_length=1, max_length=settings.max_batch, description="The tasks to wait for."),
        ]
    )
    async def wait_for_tasks(
        ctx: Context[Any, Any],
        task_ids: list[StrictInt],
        mode: Annotated[
            Literal["all", "any"],
            Field(description="'all': until every task finished; 'any': until one has."),
        ] = "all",
        timeout_seconds: Annotated[
            StrictInt,
            Field(ge=0, le=MAX_WAIT_SECONDS, description="Give up waiting after this many seconds."),
        ] = DEFAULT_WAIT_SECONDS,
        questions: Annotated[
            bool,
            Field(
                description="Also return as soon as a worker of these tasks asks you a question (default)."
            ),
        ] = True,
    ) -> WaitTasksReply:
        """Wait until all (or any) of the tasks finish, then return them with their results and errors.

        It also returns early when a worker asks you a question (`questions` lists them): answer each with
        answer_question, then wait again. If `done` is false and no question is listed, the wait timed out: call
        it again to keep waiting. Finished tasks have status completed, failed, dead (every attempt failed) or
        cancelled."""
        _identity(ref, ctx)
        return await ref.get().wait_for_tasks(task_ids, mode, timeout_seconds, questions)

    @server.tool()
    @_refusals
    async def answer_question(
        ctx: Context[Any, Any],
        task_id: TaskId,
        answer: Annotated[
            str,
            Field(
                min_length=1,
                max_length=ANSWER_MAX_CHARS,
                description="Your decision, written so the worker can act on it (one of its options, if it gave some).",
            ),
        ],
    ) -> AnswerReply:
        """Answer the question a task's worker asked you (get_task, list_tasks and wait_for_tasks show it as the
        task's `question`). The worker gets the answer at once and carries on."""
        return await ref.get().answer_question(_identity(ref, ctx), task_id, answer)

    @server.tool()
    @_refusals
    async def cancel_task(
        ctx: Context[Any, Any],
        task_id: TaskId,
        reason: Reason | None = None,
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
    async def issue_agent_token(ctx: Context[Any, Any], agent: AgentName) -> TokenReply:
        """Issue a worker token for one agent (used by the launcher when it writes an agent's settings)."""
        _identity(ref, ctx)
        return await ref.get().issue_agent_token(agent)

    @server.tool()
    @_refusals
    async def revoke_agent_tokens(ctx: Context[Any, Any], agent: AgentName) -> TokenReply:
        """Revoke every token of one agent: its next call is refused. Issue a new one with issue_agent_token."""
        _identity(ref, ctx)
        return await ref.get().revoke_agent_tokens(agent)

    @server.tool()
    @_refusals
    async def list_tokens(
        ctx: Context[Any, Any],
        agent: Annotated[
            str | None,
            Field(max_length=LABEL_MAX_CHARS, description="Only this agent's tokens; omit for all."),
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
        agent: Annotated[AgentName, Field(description="The agent holding the task.")],
        task_id: TaskId,
        reason: Annotated[str, Field(max_length=REASON_MAX_CHARS)] = "released by the launcher",
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
            StrictInt | None, Field(ge=0, description="The attempt's fence; omit only for the merge queue.")
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
    async def report_agent_state(
        ctx: Context[Any, Any],
        state: Annotated[
            AgentState,
            Field(description="'' (clear), 'cooling', 'circuit_open', or 'reset' (close the circuit now)."),
        ],
        agents: Annotated[list[AgentName], Field(max_length=1000)] = [],  # noqa: B006
        cli: Annotated[
            str | None, Field(min_length=1, max_length=64, description="Every agent of this CLI.")
        ] = None,
        reason: Annotated[str, Field(max_length=500)] = "",
        until: Annotated[
            float | None, Field(ge=0, description="Epoch seconds the state lasts until.")
        ] = None,
    ) -> AgentStateReply:
        """Record what the launcher says about agents: cooling down until a time, circuit open and why, or a reset
        the user asked for (the launcher then closes the circuit at once)."""
        _identity(ref, ctx)
        return await ref.get().report_agent_state(agents, cli, state, reason, until)

    @server.tool()
    @_refusals
    async def record_usage(ctx: Context[Any, Any], usage: UsageRecord) -> UsageReply:
        """Record one CLI run's model requests and tokens, on the task attempt it ran (the launcher calls this
        after each run): kept for `aiswarm usage`, counted in /metrics, shown on the dashboard."""
        _identity(ref, ctx)
        broker = ref.get()
        await broker.record_usage(usage)
        return UsageReply(message=f"Recorded {usage.total_tokens} token(s) for {usage.agent}.")

    @server.tool()
    @_refusals
    async def save_quota_pool(
        ctx: Context[Any, Any],
        name: Annotated[
            str, Field(min_length=1, max_length=128, description="The pool, e.g. provider:openrouter.")
        ],
        state: dict[str, Any],
    ) -> QuotaPoolsReply:
        """Keep a quota pool's counters (requests this day and minute), so a relaunch does not forget them."""
        _identity(ref, ctx)
        return await ref.get().save_quota_pool(name, state)

    @server.tool()
    @_refusals
    async def list_quota_pools(ctx: Context[Any, Any]) -> QuotaPoolsReply:
        """Every quota pool's saved counters."""
        _identity(ref, ctx)
        return await ref.get().quota_pools()

    @server.tool()
    @_refusals
    async def usage_summary(
        ctx: Context[Any, Any],
        by: Annotated[
            UsageGrouping, Field(description="Group by day, provider, cli, agent or task.")
        ] = "day",
        days: Annotated[float, Field(gt=0, le=3660, description="How many days back.")] = 30,
    ) -> UsageSummaryReply:
        """Tokens used by the swarm's CLI runs, summed per day, provider, CLI, agent or task."""
        _identity(ref, ctx)
        return await ref.get().usage(by, days)

    @server.tool()
    @_refusals
    async def mark_agents_offline(
        ctx: Context[Any, Any],
        agents: Annotated[
            list[Annotated[str, Field(min_length=1, max_length=LABEL_MAX_CHARS)]],
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
        "your own tools -> report_task_completion. Always pass back the cursor and the fence_token you were given. "
        "A decision only the user can make: ask_primary."
    ),
    Role.PRIMARY: (
        "aiswarm runs tasks on a swarm of worker agents. submit_task / submit_tasks to hand work out, "
        "wait_for_tasks to collect results (and workers' questions: answer_question), get_task / list_tasks / "
        "list_agents to look, cancel_task to stop one."
    ),
    Role.ADMIN: "aiswarm administration: everything a primary can do, plus tokens and leases.",
}


def _one_line(error: ValidationError) -> str:
    """Pydantic's refusal of tool arguments as one line a model can act on (no URLs, no error codes)."""
    problems = []
    for item in error.errors(include_url=False)[:5]:
        where = ".".join(str(part) for part in item["loc"]) or "arguments"
        got = repr(item.get("input"))
        problems.append(f"{where}: {item['msg'].removeprefix('Value error, ')} (got {got[:40]})")
    more = f" (and {error.error_count() - 5} more)" if error.error_count() > 5 else ""
    return "; ".join(problems) + more + ". Fix these arguments and call again."


class ToolsOnlyServer(MCPServer):
    """An MCP server that offers tools and nothing else, and says so; refused arguments are one line.

    The SDK declares the prompts and resources capabilities whenever their handlers exist, and always installs
    them; this server declares neither. A client that asks anyway gets empty lists, and an unknown prompt is an
    invalid-params error (-32602), as an unknown resource already is, instead of an internal error with a
    logged traceback."""

    def __init__(
        self,
        name: str,
        *,
        instructions: str,
        version: str,
        extensions: Sequence[Extension] = (),
        subscriptions: SubscriptionBus | None = None,
    ) -> None:
        super().__init__(
            name,
            instructions=instructions,
            version=version,
            extensions=extensions,
            subscriptions=subscriptions,
        )
        lowlevel = self._lowlevel_server
        declared = lowlevel.get_capabilities

        def tools_only(*args: Any, **kwargs: Any) -> ServerCapabilities:
            return declared(*args, **kwargs).model_copy(update={"prompts": None, "resources": None})

        lowlevel.get_capabilities = tools_only  # type: ignore[method-assign]

    @override
    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as error:
            if not isinstance(error.__cause__, ValidationError):
                raise
            raise ToolError(f"Error executing tool {name}: {_one_line(error.__cause__)}") from error.__cause__

    @override
    async def get_prompt(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        context: Context[Any, Any] | None = None,
    ) -> GetPromptResult:
        raise MCPError(
            INVALID_PARAMS, f"Unknown prompt: {name[:100]}. This server has no prompts, only tools."
        )


def build_servers(ref: BrokerRef, settings: BrokerSettings) -> dict[Role, MCPServer]:
    """One MCP server per role, each with only that role's tools; the primary's and the admin's also answer
    submits with MCP tasks when the client declares the extension (:mod:`aiswarm_server.mcp_tasks`)."""
    servers: dict[Role, MCPServer] = {}
    for role in Role:
        if role is Role.WORKER:
            server = ToolsOnlyServer(
                f"aiswarm-{role.value}", instructions=INSTRUCTIONS[role], version=__version__
            )
        else:
            tasks, bus = BrokerTasks(ref.get), InMemorySubscriptionBus()
            server = ToolsOnlyServer(
                f"aiswarm-{role.value}",
                instructions=INSTRUCTIONS[role],
                version=__version__,
                extensions=[tasks],
                subscriptions=bus,
            )
            serve_task_notifications(server, tasks, bus, ref.get)
        if role is Role.WORKER:
            _add_worker_tools(server, ref)
        else:
            _add_primary_tools(server, ref, settings)
        if role is Role.ADMIN:
            _add_admin_tools(server, ref)
        servers[role] = server
    return servers
