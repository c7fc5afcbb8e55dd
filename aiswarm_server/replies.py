"""What the broker's tools answer. Every reply carries a ``message``: what happened and what to do next."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from aiswarm_server.models import (
    Agent,
    BrokerModel,
    OnUnanswered,
    Question,
    QuestionStatus,
    Role,
    Task,
    TaskStatus,
)


class EventView(BrokerModel):
    """An event or an available task, as ``wait_for_next_event`` shows it."""

    kind: Literal["task_available", "task_cancelled", "lease_lost", "question_answered", "question_expired"]
    task_id: int | None = None
    title: str | None = None
    detail: str = ""
    event_id: int | None = Field(
        default=None, description="Set for events from the durable log; task_available has none."
    )


class WaitReply(BrokerModel):
    """The answer to ``wait_for_next_event``: what arrived and the cursor to pass back."""

    events: list[EventView]
    cursor: str = Field(description="Pass this back as `cursor` on your next wait_for_next_event call.")
    message: str


class RegisterReply(BrokerModel):
    """The answer to ``register_agent``: the agent record and its cursor."""

    agent: Agent
    cursor: str
    message: str


class ClaimedTask(BrokerModel):
    """What a worker needs to do a task it holds: no timestamps, no bookkeeping, nothing it would have to skip."""

    id: int
    title: str
    prompt: str
    priority: int
    persona: str | None
    capabilities: list[str]
    depends_on: list[int]
    working_dir: str | None
    timeout_seconds: int = Field(description="Seconds this attempt may take, from the claim.")
    failures: int = Field(description="Earlier attempts that failed; `error` says how the last one ended.")
    error: str | None

    @classmethod
    def of(cls, task: Task) -> ClaimedTask:
        """The worker's view of ``task``."""
        return cls(
            id=task.id,
            title=task.title,
            prompt=task.prompt,
            priority=task.priority,
            persona=task.persona,
            capabilities=task.capabilities,
            depends_on=task.depends_on,
            working_dir=_attempt_dir(task),
            timeout_seconds=task.timeout_seconds,
            failures=task.failures,
            error=task.error,
        )


def _attempt_dir(task: Task) -> str | None:
    """Where the attempt works: its worktree's directory while that exists, else the task's own directory."""
    if task.workspace and Path(task.workspace).is_dir():
        return task.workspace
    return task.working_dir


class ClaimReply(BrokerModel):
    """The answer to ``claim_task``: the task and its fence token, or why nothing was claimed."""

    claimed: bool
    task: ClaimedTask | None = None
    fence_token: int | None = Field(default=None, description="Pass this with every report about the task.")
    lease_expires_at: float | None = None
    message: str


class ProgressReply(BrokerModel):
    """The answer to ``report_progress``: the renewed lease."""

    task_id: int
    lease_expires_at: float | None
    message: str


class CompletionReply(BrokerModel):
    """The answer to ``report_task_completion`` and ``release_task``: the task's status afterwards."""

    task_id: int
    status: TaskStatus
    message: str


class HeartbeatReply(BrokerModel):
    """The answer to ``update_heartbeat``: the agent and the lease of the task it holds."""

    agent: Agent
    current_task_id: int | None
    lease_expires_at: float | None
    message: str


class AgentStatusReply(BrokerModel):
    """The answer to ``get_agent_status``."""

    agent: Agent
    current_task: Task | None
    message: str


class TaskReply(BrokerModel):
    """One task with its attempts (``get_task``, ``cancel_task``)."""

    task: Task
    message: str


class TasksReply(BrokerModel):
    """A page of tasks (``list_tasks``)."""

    tasks: list[Task]
    message: str


class SubmittedTask(BrokerModel):
    """A task as submit_task answers it: everything but the prompt the submitter just sent (no need to read it
    back) and the fields only a claim or a result fills in. get_task shows the whole task."""

    id: int
    title: str
    status: TaskStatus
    priority: int
    persona: str | None
    capabilities: list[str]
    depends_on: list[int]
    working_dir: str | None
    max_attempts: int
    timeout_seconds: int
    error: str | None = Field(default=None, description="Set when a dependency had already failed.")

    @classmethod
    def of(cls, task: Task) -> SubmittedTask:
        """The submitter's view of ``task``."""
        return cls(
            id=task.id,
            title=task.title,
            status=task.status,
            priority=task.priority,
            persona=task.persona,
            capabilities=task.capabilities,
            depends_on=task.depends_on,
            working_dir=task.working_dir,
            max_attempts=task.max_attempts,
            timeout_seconds=task.timeout_seconds,
            error=task.error,
        )


class SubmitReply(BrokerModel):
    """The answer to ``submit_task`` and ``submit_tasks``: the tasks in the order given."""

    tasks: list[SubmittedTask]
    message: str


class WaitTasksReply(BrokerModel):
    """The answer to ``wait_for_tasks``: the tasks, which finished, which are pending."""

    done: bool = Field(description="True when the wait condition (any / all finished) was met.")
    tasks: list[Task]
    finished: list[int]
    pending: list[int]
    questions: list[Question] = Field(
        default_factory=list,
        description="Open questions the workers of these tasks ask you: answer each with answer_question.",
    )
    message: str


class AgentsReply(BrokerModel):
    """The answer to ``list_agents``."""

    agents: list[Agent]
    message: str


class TokenReply(BrokerModel):
    """An issued token (``issue_agent_token``) or how many were revoked (``revoke_agent_tokens``, empty token)."""

    agent: str
    token: str
    message: str


class TokenInfo(BrokerModel):
    """One issued token, without the token: only its hash is kept, and only a prefix of that is shown."""

    fingerprint: str = Field(description="The first 12 hex digits of the token's SHA-256.")
    role: Role
    agent: str | None
    label: str
    created_at: float
    revoked_at: float | None


class TokenListReply(BrokerModel):
    """The answer to ``list_tokens``."""

    tokens: list[TokenInfo]
    message: str


class StatusReply(BrokerModel):
    """The answer to ``broker_status``: counts by status, parked waits, where the state lives."""

    version: str
    database: str
    tasks: dict[str, int]
    agents: dict[str, int]
    parked_waits: int
    watched_tasks: int
    uptime_seconds: float
    message: str


class AgentStateReply(BrokerModel):
    """The agents whose launcher-reported state was set."""

    agents: list[Agent]
    message: str


class UsageRow(BrokerModel):
    """Tokens summed over one group (a day, a provider, a CLI, a task ...)."""

    key: str
    runs: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    total_tokens: int
    requests: int


class UsageSummaryReply(BrokerModel):
    """Token usage grouped as asked."""

    by: str
    rows: list[UsageRow]
    message: str


class QuotaPoolsReply(BrokerModel):
    """The quota pools' saved states, by pool name."""

    pools: dict[str, dict[str, Any]]
    message: str


class UsageReply(BrokerModel):
    """The answer to ``record_usage``."""

    message: str


class AskReply(BrokerModel):
    """The answer to ``ask_primary``: the question's state, with the primary's answer once there is one."""

    question_id: int
    task_id: int
    status: QuestionStatus = Field(
        description="answered: read `answer`; open: not answered yet; expired: the deadline passed (see "
        "on_timeout); withdrawn: your attempt ended."
    )
    answer: str | None = None
    options: list[str]
    on_timeout: OnUnanswered
    deadline_at: float
    cursor: str | None = Field(
        default=None, description="While open: pass it to wait_for_next_event to wait for the answer there."
    )
    message: str


class AnswerReply(BrokerModel):
    """The answer to ``answer_question``: the question, now answered."""

    question: Question
    message: str
