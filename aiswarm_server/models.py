"""The broker's domain: agents, tasks, attempts, events, identities."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TaskStatus(StrEnum):
    BLOCKED = "blocked"  # waiting for its dependencies to complete, or for its retry delay (retry_at)
    PENDING = "pending"  # claimable
    CLAIMED = "claimed"  # held by one agent under a lease
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"  # every attempt used up

    @property
    def is_terminal(self) -> bool:
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


class AgentStatus(StrEnum):
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
    WORKER = "worker"
    PRIMARY = "primary"
    ADMIN = "admin"


class EventKind(StrEnum):
    TASK_AVAILABLE = "task_available"
    TASK_CANCELLED = "task_cancelled"
    LEASE_LOST = "lease_lost"


class AttemptOutcome(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"  # lease ran out or the task's timeout passed
    AGENT_LOST = "agent_lost"
    RELEASED = "released"  # handed back cleanly (graceful stop); does not count as a failure
    CANCELLED = "cancelled"


class Identity(BaseModel):
    """Who is calling, as proven by a token."""

    model_config = ConfigDict(frozen=True)

    role: Role
    agent: str | None = None  # set for workers: the only agent this caller may act as
    label: str = ""


class Agent(BaseModel):
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


class Attempt(BaseModel):
    number: int
    agent: str
    fence_token: int
    claimed_at: float
    finished_at: float | None = None
    outcome: AttemptOutcome = AttemptOutcome.RUNNING
    error: str | None = None


class Task(BaseModel):
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

    def fits(self, persona: str | None, capabilities: Iterable[str]) -> bool:
        """Whether an agent with this persona and these capabilities may take the task."""
        if self.persona is not None and self.persona != persona:
            return False
        return set(self.capabilities) <= set(capabilities)


class NewTask(BaseModel):
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

    @property
    def records_isolation(self) -> bool:
        """Whether the task carries anything beyond the isolation defaults (written after the row)."""
        return self.isolation is not Isolation.AUTO or bool(self.files) or self.base_commit is not None


class IsolationUpdate(BaseModel):
    """What an isolated attempt or the merge queue records on its task; None leaves a field as it is."""

    branch: str | None = None
    workspace: str | None = None
    merge_state: MergeState | None = None
    merge_detail: str | None = None
    conflict_files: list[str] | None = None
    diff_stat: str | None = None


class Event(BaseModel):
    id: int
    kind: EventKind
    agent: str
    task_id: int | None = None
    detail: str = ""
    created_at: float


class Claim(BaseModel):
    """A task held by an agent: the fence token must accompany every report about it."""

    task: Task
    fence_token: int
    lease_expires_at: float
    reclaimed: bool = False  # the agent already held it (e.g. the launcher reserved it for the agent)


class TaskChange(BaseModel):
    """What one store operation did, so the service can wake the right waiters afterwards."""

    task: Task | None = None
    created: list[Task] = Field(default_factory=list)
    claimable: list[Task] = Field(default_factory=list)  # tasks that became pending
    finished: list[int] = Field(default_factory=list)  # tasks that reached a terminal status
    notified_agents: list[str] = Field(default_factory=list)  # agents that got a new event
