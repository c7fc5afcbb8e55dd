"""The broker's domain: agents, tasks, attempts, events, identities."""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator

from aiswarm_server.limits import (
    ANSWER_WITHIN_DEFAULT_SECONDS,
    ANSWER_WITHIN_MAX_SECONDS,
    DEPENDENCIES_MAX,
    LABEL_MAX_CHARS,
    MAX_ATTEMPTS_LIMIT,
    MAX_CAPABILITIES,
    PATH_MAX_CHARS,
    PRIORITY_MAX,
    PRIORITY_MIN,
    RETRY_BACKOFF_MAX,
    RETRY_DELAY_LIMIT_SECONDS,
    TASK_TIMEOUT_LIMIT_SECONDS,
    TITLE_MAX_CHARS,
)


class TaskStatus(StrEnum):
    """Where a task is in its life; see :data:`TERMINAL_STATUSES` for the final ones."""

    BLOCKED = "blocked"  # waiting for its dependencies to complete, or for its retry delay (retry_at)
    PENDING = "pending"  # claimable
    CLAIMED = "claimed"  # held by one agent under a lease
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"  # every attempt used up

    @property
    def is_terminal(self) -> bool:
        """Whether the task has finished (completed, failed, cancelled or dead) and will not change again."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.DEAD}
)


class Isolation(StrEnum):
    """Where a task's attempts work: in place, in a git worktree of their own, or as the launch decides."""

    NONE = "none"
    WORKTREE = "worktree"
    AUTO = "auto"  # a worktree when the launch runs more than one agent and the task is in a git checkout


class MergeState(StrEnum):
    """How an isolated task's work comes back onto the branch it was submitted from."""

    PENDING = "pending"  # being worked on, or committed and waiting for the merge queue
    MERGED = "merged"
    CONFLICT = "conflict"  # not merged: the files in the way are named, the branch is kept
    MANUAL = "manual"  # kept on its branch for `aiswarm merge` / merge_task
    DISCARDED = "discarded"  # the task did not complete: its branch and worktree are gone
    PROPOSED = "proposed"  # the merge hook ran (e.g. opened a pull request): its last line is in merge_detail
    HOOK_FAILED = (
        "hook_failed"  # the merge hook exited non-zero: its message is in merge_detail, the branch kept
    )
    RESOLVED = "resolved"  # its conflict was resolved by another task (``resolves``), whose work was merged

    @property
    def is_settled(self) -> bool:
        """Whether nothing more happens to the work by itself (everything but ``pending``)."""
        return self is not MergeState.PENDING


class AgentStatus(StrEnum):
    """Whether an agent is waiting for work, holding a task, or has not been heard from for too long."""

    IDLE = "idle"
    BUSY = "busy"
    LOST = "lost"  # not heard from for agent_lost_seconds
    OFFLINE = "offline"  # its launcher stopped it

    @property
    def is_live(self) -> bool:
        """Whether the agent may still call (a lost or offline agent that calls again is live again)."""
        return self.value not in GONE_AGENT_STATUSES


GONE_AGENT_STATUSES = frozenset({"lost", "offline"})


class Role(StrEnum):
    """What a token lets its holder do: one agent's work, submitting and observing, or both plus administration."""

    WORKER = "worker"
    PRIMARY = "primary"
    ADMIN = "admin"


class EventKind(StrEnum):
    """What an event in an agent's durable log tells it."""

    TASK_AVAILABLE = "task_available"
    TASK_CANCELLED = "task_cancelled"
    LEASE_LOST = "lease_lost"
    QUESTION_ANSWERED = "question_answered"  # the primary answered the agent's question (detail: the answer)
    QUESTION_EXPIRED = (
        "question_expired"  # its deadline passed unanswered (detail: continue, or the attempt failed)
    )


class AttemptOutcome(StrEnum):
    """How one attempt at a task ended."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"  # lease ran out or the task's timeout passed
    AGENT_LOST = "agent_lost"
    RELEASED = "released"  # handed back cleanly (graceful stop); does not count as a failure
    CANCELLED = "cancelled"
    UNANSWERED = "unanswered"  # its question said to fail without an answer, and none came by the deadline


class QuestionStatus(StrEnum):
    """Where a worker's question to the primary is: waiting for an answer, or closed and how."""

    OPEN = "open"
    ANSWERED = "answered"
    EXPIRED = "expired"  # its deadline passed unanswered
    WITHDRAWN = "withdrawn"  # the attempt that asked it ended first (completed, cancelled, expired ...)


class OnUnanswered(StrEnum):
    """What happens when a question's deadline passes unanswered."""

    CONTINUE = "continue"  # the worker carries on with its own judgement
    FAIL = "fail"  # the attempt fails, and the task with it (not retried: a new attempt would ask again)


class Question(BaseModel):
    """A question a worker asked the primary about the task it holds, under the fence of its attempt."""

    id: int
    task_id: int
    fence_token: int
    agent: str
    question: str
    options: list[str] = Field(default_factory=list)
    on_timeout: OnUnanswered = OnUnanswered.CONTINUE
    status: QuestionStatus = QuestionStatus.OPEN
    asked_at: float
    deadline_at: float = Field(description="Answer by then, or on_timeout applies.")
    answer: str | None = None
    answered_by: str | None = None
    answered_at: float | None = None


class NewQuestion(BaseModel):
    """A question as the service passes it to the store (checked); ``None`` takes the task's policy, then the
    broker's default (the store reads the task)."""

    question: str
    options: list[str] = Field(default_factory=list)
    on_timeout: OnUnanswered | None = None
    answer_within_seconds: float | None = None


class BrokerModel(BaseModel):
    """The base of every model the broker and its clients exchange: its validator is built on first use.

    Building all of them at import was 30 ms of the ~250 ms an ``aiswarm status`` costs, which uses one.
    """

    model_config = ConfigDict(defer_build=True)


class Identity(BrokerModel):
    """Who is calling, as proven by a token."""

    model_config = ConfigDict(frozen=True)

    role: Role
    agent: str | None = None  # set for workers: the only agent this caller may act as
    label: str = ""


class AgentState(StrEnum):
    """What the launcher reports about an agent, beyond idle and busy."""

    NONE = ""
    COOLING = "cooling"  # its provider rate limited it: no work until state_until
    CIRCUIT_OPEN = "circuit_open"  # no work until a probe passes (state_reason says why) or a reset
    RESET = "reset"  # the user asked (aiswarm agents reset) to close its circuit now


class Agent(BrokerModel):
    """A worker agent as registered: stable name, CLI, persona, capabilities, status and durable event cursor."""

    name: str
    cli: str = "unknown"
    persona: str | None = None
    capabilities: list[str] = Field(default_factory=list)
    pid: int | None = None
    status: AgentStatus = AgentStatus.IDLE
    current_task_id: int | None = None
    cursor: int = 0
    registered_at: float
    last_seen_at: float
    state: AgentState = AgentState.NONE
    state_reason: str = ""
    state_until: float | None = None


class UsageRecord(BrokerModel):
    """The model requests and tokens one CLI run used, on the task attempt it ran (task and attempt None: a run
    with no task). Strict: a count is a JSON integer, never a boolean or a string."""

    model_config = ConfigDict(strict=True)

    task_id: int | None = Field(default=None, ge=1)
    attempt: int | None = Field(default=None, ge=1)
    agent: str = Field(min_length=1, max_length=LABEL_MAX_CHARS)
    cli: str = Field(min_length=1, max_length=LABEL_MAX_CHARS)
    provider: str = Field(default="", max_length=200)
    model: str = Field(default="", max_length=200)
    input_tokens: int = Field(default=0, ge=0, le=10**12)
    output_tokens: int = Field(default=0, ge=0, le=10**12)
    cached_tokens: int = Field(default=0, ge=0, le=10**12)
    total_tokens: int = Field(default=0, ge=0, le=10**12)
    requests: int | None = Field(default=None, ge=0, le=10**9)
    recorded_at: float = 0.0


class Attempt(BrokerModel):
    """One claim of a task by one agent, from the claim to its outcome."""

    number: int
    agent: str
    fence_token: int
    claimed_at: float
    finished_at: float | None = None
    outcome: AttemptOutcome = AttemptOutcome.RUNNING
    error: str | None = None


class Task(BrokerModel):
    """A unit of work: what to do, who may do it, its dependencies, and every attempt and outcome."""

    id: int
    title: str
    prompt: str
    priority: int = 0
    persona: str | None = None
    capabilities: list[str] = Field(default_factory=list)
    depends_on: list[int] = Field(default_factory=list)
    working_dir: str | None = None
    max_attempts: int = 3
    timeout_seconds: int = 1800
    retry_delay_seconds: float = 0.0  # wait before the next attempt after a failure (0: at once)
    retry_backoff: float = 1.0  # each further retry waits this many times longer
    retry_at: float | None = None  # set while a failed task waits for its next attempt (status blocked)
    status: TaskStatus = TaskStatus.PENDING
    claimed_by: str | None = None
    fence_token: int = 0
    lease_expires_at: float | None = None
    claimed_at: float | None = None
    failures: int = 0
    progress: str | None = None
    result: str | None = None
    data: dict[str, Any] | None = None
    error: str | None = None
    submitted_by: str = ""
    created_at: float
    updated_at: float
    finished_at: float | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    isolation: Isolation = Isolation.AUTO
    files: list[str] = Field(default_factory=list)
    base_commit: str | None = None
    target_branch: str | None = None
    branch: str | None = None
    workspace: str | None = None
    merge_state: MergeState | None = None
    merge_detail: str | None = None
    conflict_files: list[str] = Field(default_factory=list)
    diff_stat: str | None = None
    answer_within_seconds: int | None = None  # its workers' questions stay open this long (None: their own)
    on_unanswered: OnUnanswered | None = None  # and then continue or fail (None: as each question says)
    question: Question | None = Field(
        default=None, description="The open question its worker asked you: answer it with answer_question."
    )
    questions: list[Question] = Field(
        default_factory=list, description="Every question asked about the task (get_task only), oldest first."
    )
    waited_on: str | None = (
        None  # why the task last waited without an agent (declared files, unmerged dependency)
    )
    resolves: int | None = None  # the conflicting task whose conflict this task resolves

    @property
    def merge_unsettled(self) -> bool:
        """Completed, but its work is not merged, kept or refused yet (the merge queue has not run)."""
        return self.status is TaskStatus.COMPLETED and self.merge_state is MergeState.PENDING

    @property
    def waiting(self) -> bool:
        """Handed back by its claim and blocked until what it waits for (``waited_on``) is out of the way."""
        return self.status is TaskStatus.BLOCKED and self.retry_at is None and self.waited_on is not None

    def fits(self, persona: str | None, capabilities: Iterable[str]) -> bool:
        """Whether an agent with this persona and these capabilities may take the task."""
        if self.persona is not None and self.persona != persona:
            return False
        return set(self.capabilities) <= set(capabilities)


class NewTask(BrokerModel):
    """A task as submitted, after validation. ``depends_on`` holds task ids."""

    title: str
    prompt: str
    priority: int = 0
    persona: str | None = None
    capabilities: list[str] = Field(default_factory=list)
    depends_on: list[int] = Field(default_factory=list)
    depends_on_batch: list[int] = Field(default_factory=list)  # indexes of earlier tasks in the same batch
    working_dir: str | None = None
    max_attempts: int = 3
    timeout_seconds: int = 1800
    retry_delay_seconds: float = 0.0
    retry_backoff: float = 1.0
    submitted_by: str = ""
    isolation: Isolation = Isolation.AUTO
    files: list[str] = Field(default_factory=list)
    base_commit: str | None = None
    target_branch: str | None = None
    answer_within_seconds: int | None = None
    on_unanswered: OnUnanswered | None = None
    resolves: int | None = None

    @property
    def records_question_policy(self) -> bool:
        """Whether the submitter set a policy for its workers' questions (written after the row)."""
        return self.answer_within_seconds is not None or self.on_unanswered is not None

    @property
    def records_isolation(self) -> bool:
        """Whether the task carries anything beyond the isolation defaults (written after the row)."""
        return (
            self.isolation is not Isolation.AUTO
            or bool(self.files)
            or self.base_commit is not None
            or self.resolves is not None
        )


class IsolationUpdate(BrokerModel):
    """What an isolated attempt or the merge queue records on its task; None leaves a field as it is."""

    branch: str | None = None
    workspace: str | None = None
    merge_state: MergeState | None = None
    merge_detail: str | None = None
    conflict_files: list[str] | None = None
    diff_stat: str | None = None


# What a submitter writes, as typed tool arguments: the submit_task tool and TaskRequest share these.
TaskTitle = Annotated[
    str,
    Field(
        min_length=1, max_length=TITLE_MAX_CHARS, description="Short name, e.g. 'Add tests for the parser'."
    ),
]
TaskPrompt = Annotated[
    str,
    Field(min_length=1, description="Everything the worker needs: what to do, which files, how to check."),
]
Priority = Annotated[StrictInt, Field(ge=PRIORITY_MIN, le=PRIORITY_MAX, description="Higher runs first.")]
PersonaName = Annotated[
    str,
    Field(
        max_length=LABEL_MAX_CHARS,
        description="Only agents with this persona take it: implementer, reviewer, tester, researcher ... or omit.",
    ),
]
Capabilities = Annotated[
    list[str], Field(max_length=MAX_CAPABILITIES, description="Only agents with all of these take it.")
]
WorkingDir = Annotated[
    str, Field(max_length=PATH_MAX_CHARS, description="Absolute path of an existing directory to work in.")
]
MaxAttempts = Annotated[StrictInt, Field(ge=1, le=MAX_ATTEMPTS_LIMIT)]
RetryDelay = Annotated[
    StrictFloat,
    Field(
        ge=0,
        le=RETRY_DELAY_LIMIT_SECONDS,
        description="After a failed attempt, wait this many seconds before the next one (default 0: at once).",
    ),
]
RetryBackoff = Annotated[
    StrictFloat,
    Field(
        ge=1, le=RETRY_BACKOFF_MAX, description="Each further retry waits this many times longer (default 1)."
    ),
]
TaskTimeout = Annotated[StrictInt, Field(ge=1, le=TASK_TIMEOUT_LIMIT_SECONDS)]
AnswerWithin = Annotated[StrictInt, Field(ge=1, le=ANSWER_WITHIN_MAX_SECONDS)]

_ASCII_ID = re.compile(r"-?[0-9]{1,19}")


def is_task_id_text(value: str) -> bool:
    """Whether a ``depends_on`` string is a task id written in ASCII digits (else it names a batch key)."""
    return _ASCII_ID.fullmatch(value.strip()) is not None


class TaskRequest(BrokerModel):
    """A task as a submitter asks for it: defaults not applied yet, and ``depends_on`` may name the ``key`` of an
    earlier task in the same batch. The broker checks it and turns it into a :class:`NewTask`."""

    model_config = ConfigDict(extra="forbid")

    title: TaskTitle
    prompt: TaskPrompt
    priority: Priority = 0
    persona: PersonaName | None = None
    capabilities: Capabilities = Field(default_factory=list)
    depends_on: list[StrictInt | str] = Field(
        default_factory=list,
        max_length=DEPENDENCIES_MAX,
        description="Task ids (or `key`s of earlier tasks in the same submit_tasks batch) that must complete first.",
    )
    working_dir: WorkingDir | None = None
    max_attempts: MaxAttempts | None = Field(default=None, description="Tries before giving up.")
    timeout_seconds: TaskTimeout | None = Field(
        default=None, description="Per-attempt time limit in seconds."
    )
    key: str | None = Field(
        default=None,
        max_length=LABEL_MAX_CHARS,
        description="A name for this task that later tasks in the same batch can depend on.",
    )
    retry_delay_seconds: RetryDelay | None = None
    retry_backoff: RetryBackoff | None = None
    isolation: Isolation = Field(
        default=Isolation.AUTO,
        description="auto (default): in its own git worktree when the launch runs several agents and working_dir is "
        "in a git checkout, merged back onto your branch when done; worktree: always isolated; none: work in "
        "working_dir.",
    )
    files: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Paths or globs (relative to working_dir) the task will change, e.g. ['src/api/', "
        "'tests/test_api.py']. Tasks whose files overlap do not run at the same time: the later one waits.",
    )
    answer_within_seconds: AnswerWithin | None = Field(
        default=None,
        description="If its worker asks you a question (ask_primary), how long you take at most to answer "
        f"(default: the worker's choice, else {ANSWER_WITHIN_DEFAULT_SECONDS}).",
    )
    on_unanswered: OnUnanswered | None = Field(
        default=None,
        description="What its worker does when you leave a question unanswered that long: 'continue' on its own "
        "judgement, or 'fail' the task (default: the worker's choice, else continue).",
    )

    @field_validator("depends_on")
    @classmethod
    def _ids_or_keys(cls, values: list[int | str]) -> list[int | str]:
        """A string of ASCII digits is a task id; other digit-like text (e.g. '²') is neither id nor key."""
        checked: list[int | str] = []
        for value in values:
            if isinstance(value, str) and is_task_id_text(value):
                checked.append(int(value))
            elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
                raise ValueError(
                    f"depends_on entry {value[:20]!r} is not a task id: write ids with the digits 0-9, e.g. 12"
                )
            else:
                checked.append(value)
        return checked


class Event(BrokerModel):
    """One entry in an agent's durable event log (read from its cursor by ``wait_for_next_event``)."""

    id: int
    kind: EventKind
    agent: str
    task_id: int | None = None
    detail: str = ""
    created_at: float


class Claim(BrokerModel):
    """A task held by an agent: the fence token must accompany every report about it."""

    task: Task
    fence_token: int
    lease_expires_at: float
    reclaimed: bool = False  # the agent already held it (e.g. the launcher reserved it for the agent)


class TaskChange(BrokerModel):
    """What one store operation did, so the service can wake the right waiters afterwards."""

    task: Task | None = None
    created: list[Task] = Field(default_factory=list)
    claimable: list[Task] = Field(default_factory=list)  # tasks that became pending
    finished: list[int] = Field(default_factory=list)  # tasks that reached a terminal status
    notified_agents: list[str] = Field(default_factory=list)  # agents that got a new event
    questions: list[int] = Field(default_factory=list)  # tasks whose question was asked, answered or closed
