"""The store interface: domain-level operations, each one transaction.

The broker service decides who may call what; a store applies a state transition atomically, following the rules
in :mod:`aiswarm_server.store.rules`, and reports what changed (a :class:`TaskChange`) so the service can wake the
right waiters afterwards. A backend declares what it can do as attributes instead of callers checking its type.

What a :class:`TaskChange` carries, for every operation that returns one: ``task``, the task the operation was
about as it is after the commit (None when nothing was about one task); ``created``, tasks inserted; ``claimable``,
tasks that became pending (a waiting agent may be offered them); ``finished``, ids of tasks that ended (completed,
failed, dead or cancelled: whoever waits on them wants to know); ``notified_agents``, agents given a new event.

Every operation is atomic: it commits whole or changes nothing. A refusal (:class:`NotFound`,
:class:`StaleClaim`, :class:`TaskCancelled`) carries a message for the agent that says what to do instead; a
database that cannot be used raises :class:`StoreUnavailable` (nothing was changed).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiswarm_server.models import (
    Agent,
    AgentState,
    Claim,
    Event,
    Identity,
    IsolationUpdate,
    NewQuestion,
    NewTask,
    Question,
    Task,
    TaskChange,
    TaskStatus,
    UsageRecord,
)
from aiswarm_server.store.rules import Report


@dataclass(slots=True)
class AgentPoll:
    """What an agent's wait finds in one read: its record, new events, tasks it could claim."""

    agent: Agent
    cursor: int
    events: list[Event] = field(default_factory=list)
    claimable: list[Task] = field(default_factory=list)


@dataclass(slots=True)
class ClaimResult:
    """A claim, or why there is none (``reason``, written for the agent)."""

    claim: Claim | None
    reason: str = ""


@dataclass(slots=True)
class QuestionResult:
    """A question as a store operation left it, and what changed (nothing for a repeated ask)."""

    question: Question
    change: TaskChange


@dataclass(slots=True)
class StoreStats:
    """Counts for /metrics: tasks and agents by status, and the newest event id."""

    tasks: dict[str, int]
    agents: dict[str, int]
    events: int


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """What an agent says about itself when it registers (capabilities sorted, without repeats)."""

    cli: str
    persona: str | None
    capabilities: list[str]
    pid: int | None


class Store(ABC):
    """Durable state of the broker. One broker process owns a store (several may share a PostgreSQL one).

    Times (``now``, ``lease`` ...) are seconds, passed in by the service so tests can move a clock. ``fence`` is a
    claim's fence token: it grows with every claim of a task, so a report from an earlier claim is refused.
    """

    #: Several broker processes may share this store (and see each other's changes).
    shared_between_processes: bool = False

    @abstractmethod
    async def open(self) -> None:
        """Connect, and create or migrate the schema (numbered migrations, applied once).

        Raises :class:`SchemaTooNew` for a database written by a newer aiswarm and :class:`StoreUnavailable` when
        the database cannot be reached or read.
        """

    @abstractmethod
    async def close(self) -> None:
        """Stop background work and close the connections. The store cannot be used afterwards."""

    async def watch_changes(self, apply: Callable[[TaskChange], None]) -> None:
        """Call ``apply`` with every change another broker process commits to this store.

        Only stores shared between processes have such changes; the default does nothing. ``apply`` is the
        service's own wake-up step, so an agent parked on this broker is woken for a task submitted on another.
        """
        return None

    # agents -----------------------------------------------------------------------------------------------
    async def register_agent(
        self,
        name: str,
        cli: str,
        persona: str | None,
        capabilities: Sequence[str],
        pid: int | None,
        now: float,
    ) -> Agent:
        """Create the agent, or update the one of that name (stable names: it keeps its cursor and task).

        Marks it seen (a lost agent is back) and records its CLI, persona, capabilities and process id.
        Returns the agent as stored.
        """
        profile = AgentProfile(cli=cli, persona=persona, capabilities=sorted(set(capabilities)), pid=pid)
        return await self._register_agent(name, profile, now)

    @abstractmethod
    async def _register_agent(self, name: str, profile: AgentProfile, now: float) -> Agent:
        """:meth:`register_agent` with the profile gathered; one transaction."""

    @abstractmethod
    async def get_agent(self, name: str) -> Agent | None:
        """The agent of that name, or None."""

    @abstractmethod
    async def list_agents(self) -> list[Agent]:
        """Every agent, lost ones included, by name."""

    @abstractmethod
    async def mark_agents_offline(self, names: Sequence[str]) -> list[Agent]:
        """Mark these agents offline (their launcher stopped them); the ones that exist, as they are now.

        An offline agent that calls again is live again, as a lost one is.
        """

    @abstractmethod
    async def poll_agent(
        self, name: str, ack_cursor: int | None, now: float, claimable_limit: int = 3
    ) -> AgentPoll:
        """Mark the agent seen, acknowledge its events up to ``ack_cursor``, and read what is after the cursor.

        The cursor only moves forward and is clamped to the newest event (a cursor past it would hide events to
        come); None keeps the stored one. Returns up to 50 events after it and, if the agent holds no task, up to
        ``claimable_limit`` pending tasks it fits in claim order. An agent never seen before is created.
        """

    @abstractmethod
    async def heartbeat(self, name: str, now: float, lease: float) -> tuple[Agent, Task | None]:
        """Mark the agent seen and renew the lease of the task it holds, if any, by ``lease`` seconds.

        A lease never runs past the task's deadline (claim time + its timeout), and a renewal never shortens it
        (a question holds it until its deadline: a heartbeat meanwhile must not undo that). Returns the agent and the task
        whose lease was renewed (None when it holds none, or the deadline has passed).
        """

    # tasks ------------------------------------------------------------------------------------------------
    @abstractmethod
    async def create_tasks(self, tasks: Sequence[NewTask], now: float) -> TaskChange:
        """Insert tasks, all or none (their dependencies already checked to exist).

        A task may depend on earlier ones of the same batch (``depends_on_batch``). Its status follows from its
        dependencies (:func:`rules.status_from_dependencies`). ``created`` lists every new task, ``claimable``
        the pending ones, ``finished`` those failed at once by a dependency that had already failed.
        """

    @abstractmethod
    async def get_task(self, task_id: int, with_attempts: bool = True) -> Task | None:
        """The task with its dependencies (and every attempt, unless ``with_attempts`` is false), or None."""

    @abstractmethod
    async def get_tasks(self, task_ids: Sequence[int]) -> list[Task]:
        """The tasks that exist among ``task_ids``, in that order, with their dependencies (not attempts)."""

    @abstractmethod
    async def list_tasks(self, status: TaskStatus | None, limit: int, offset: int = 0) -> list[Task]:
        """Tasks newest first, optionally of one status; a page of ``limit`` after ``offset``."""

    @abstractmethod
    async def missing_tasks(self, task_ids: Sequence[int]) -> list[int]:
        """The ids among ``task_ids`` that do not exist."""

    @abstractmethod
    async def claim(self, agent: str, task_id: int | None, now: float, lease: float) -> ClaimResult:
        """Give the agent one task it fits, atomically: the named one, or the next pending in priority order.

        An agent that already holds a task gets that one back (``reclaimed``, lease renewed) and may not claim
        another. A claim takes a new fence token, opens an attempt, marks the agent busy and sets the lease to
        ``lease`` seconds (never past the task's timeout). No task, or one that cannot be claimed, returns a
        ClaimResult whose ``reason`` tells the agent what to do; a named task that does not exist raises
        :class:`NotFound`. An agent never seen before is created.
        """

    @abstractmethod
    async def renew(
        self, agent: str, task_id: int, fence: int, now: float, lease: float, progress: str | None
    ) -> Task:
        """Extend the lease of a task the agent holds under ``fence`` and record its progress note, if any.

        Returns the task. Raises :class:`NotFound`, or :class:`StaleClaim` / :class:`TaskCancelled` when the
        claim is no longer the agent's (the message says why and what to do).
        """

    async def complete(
        self,
        agent: str,
        task_id: int,
        fence: int,
        *,
        success: bool,
        retryable: bool,
        result: str | None,
        data: dict[str, Any] | None,
        error: str | None,
        now: float,
    ) -> TaskChange:
        """Record the agent's report on the task it holds under ``fence``, and end its attempt.

        Success completes the task (``finished``) and unblocks dependents whose dependencies are now all
        completed (``claimable``). Failure sends it back to the queue, or fails it (``retryable`` false), or
        dead-letters it when its attempts are used up (:func:`rules.after_attempt`); a task that ends fails its
        dependents, transitively. The same report arriving again is answered with the task as it is; any other
        report from an agent that does not hold the task raises :class:`StaleClaim` / :class:`TaskCancelled`.
        """
        report = Report(success=success, retryable=retryable, result=result, data=data, error=error)
        return await self._complete(agent, task_id, fence, report, now)

    @abstractmethod
    async def _complete(self, agent: str, task_id: int, fence: int, report: Report, now: float) -> TaskChange:
        """:meth:`complete` with the report gathered; one transaction."""

    @abstractmethod
    async def release(
        self, agent: str, task_id: int, fence: int | None, reason: str, now: float
    ) -> TaskChange:
        """Hand a held task back to the queue without counting a failure (graceful stop).

        ``fence`` None releases whatever claim the agent holds on the task. Raises as :meth:`renew` does.
        """

    @abstractmethod
    async def cancel(self, task_id: int, reason: str, now: float) -> TaskChange:
        """Cancel a task that has not ended, and fail everything waiting on it, transitively.

        Its holder, if any, gets a ``task_cancelled`` event (``notified_agents``). A task that has already ended
        is returned unchanged. Raises :class:`NotFound`.
        """

    @abstractmethod
    async def update_isolation(
        self, task_id: int, fence: int | None, update: IsolationUpdate, now: float
    ) -> Task | None:
        """Record ``update``'s set fields on the task; None when it does not exist or (``fence`` given) the
        task's current fence token is another one."""

    @abstractmethod
    async def defer(self, agent: str, task_id: int, fence: int, reason: str, now: float) -> TaskChange:
        """Hand a task just claimed back without counting a failure, to wait ``blocked`` until ``reason`` is gone.

        The attempt ends ``released`` (``waiting: reason``), the agent is free, the task records ``waited_on`` and
        shows the reason as its progress; its timeout starts again at its next claim. Raises as :meth:`renew` does.
        """

    @abstractmethod
    async def waiting_tasks(self, limit: int) -> list[Task]:
        """Tasks :meth:`defer` left waiting (blocked, ``waited_on`` set, no retry time), oldest first."""

    @abstractmethod
    async def end_waits(self, task_ids: Sequence[int], now: float) -> TaskChange:
        """Make the named waiting tasks ``pending`` again (``claimable``); tasks no longer waiting are left alone."""

    @abstractmethod
    async def isolation_holders(self) -> list[Task]:
        """Tasks with declared files that hold them: claimed, or completed with their work not merged yet."""

    @abstractmethod
    async def sweep(
        self, now: float, agent_lost_before: float, keep_alive: Sequence[str] = (), lease: float = 300.0
    ) -> TaskChange:
        """Close questions past their deadline, mark agents not seen since ``agent_lost_before`` lost and requeue
        (or dead-letter) expired leases.

        An overdue question that says ``continue`` expires, its asker gets a ``question_expired`` event and the
        task's lease is renewed by ``lease`` seconds (so the worker can act on it); one that says ``fail`` ends
        the attempt as ``unanswered`` and fails the task (not retried), with the same event. ``keep_alive``
        names agents known to be alive (parked in a wait on this broker). Each ended attempt gives its agent a
        ``lease_lost`` event. Safe to run from several brokers at once: each lease and question is swept once.
        """

    # questions --------------------------------------------------------------------------------------------
    @abstractmethod
    async def ask_question(
        self, agent: str, task_id: int, fence: int, asked: NewQuestion, now: float, lease: float
    ) -> QuestionResult:
        """Record the question of the attempt the agent holds under ``fence``, and hold its lease until the
        question's deadline (:func:`rules.question_deadline`, :func:`rules.lease_while_asking`).

        The same question asked again by the attempt is answered with the recorded one as it is now (open,
        answered or expired), not recorded twice; a different one while one is open is refused
        (:func:`rules.asked_again`). The task's ``question`` is the open one until it closes; ``questions`` in
        the change names the task. Raises as :meth:`renew` does when the agent does not hold the task.
        """

    @abstractmethod
    async def answer_question(
        self, task_id: int, answer: str, answered_by: str, now: float, lease: float
    ) -> QuestionResult:
        """Record the answer to the task's open question: the asker gets a ``question_answered`` event whose
        detail is the answer (``notified_agents``), and the task's lease is renewed by ``lease`` seconds.

        Raises :class:`NotFound` for an unknown task and :class:`InvalidRequest` when it has no open question
        (:func:`rules.no_open_question`).
        """

    @abstractmethod
    async def get_question(self, question_id: int) -> Question | None:
        """The question with that id, or None."""

    @abstractmethod
    async def next_lease_expiry(self) -> float | None:
        """When the earliest lease of a claimed task runs out, or None."""

    @abstractmethod
    async def pending_tasks(self, limit: int) -> list[Task]:
        """Claimable tasks in claim order (for re-offering to parked agents)."""

    @abstractmethod
    async def set_agent_state(
        self, names: Sequence[str], state: AgentState, reason: str, until: float | None
    ) -> list[Agent]:
        """Record what the launcher says about these agents (those that exist); returns them as stored."""

    # usage and quota pools --------------------------------------------------------------------------------
    @abstractmethod
    async def record_usage(self, record: UsageRecord) -> None:
        """Keep the tokens one CLI run used."""

    @abstractmethod
    async def list_usage(self, since: float) -> list[UsageRecord]:
        """Every usage record at or after ``since``, oldest first."""

    @abstractmethod
    async def save_quota_pool(self, name: str, state: dict[str, Any], now: float) -> None:
        """Keep a quota pool's state (the launcher's JSON object), replacing the previous one."""

    @abstractmethod
    async def list_quota_pools(self) -> dict[str, dict[str, Any]]:
        """Every quota pool's last saved state, by name."""

    # tokens -----------------------------------------------------------------------------------------------
    @abstractmethod
    async def add_token(self, token_hash: str, identity: Identity, now: float) -> None:
        """Store a token's hash (never the token) and who it stands for."""

    @abstractmethod
    async def find_token(self, token_hash: str) -> Identity | None:
        """Who a token stands for, or None if it is unknown or revoked."""

    @abstractmethod
    async def revoke_tokens(
        self, *, agent: str | None = None, token_hash: str | None = None, now: float
    ) -> int:
        """Revoke one token (by hash) or every token of an agent; returns how many were revoked."""

    @abstractmethod
    async def list_tokens(self) -> list[tuple[str, Identity, float, float | None]]:
        """Every token as (hash, identity, created at, revoked at or None), oldest first."""

    @abstractmethod
    async def stats(self) -> StoreStats:
        """Counts of tasks and agents by status, and the newest event id."""
