"""The store interface: domain-level operations, each one transaction.

The broker service owns the rules' *decisions* about who may call what; a store applies a state
transition atomically and reports what changed (a :class:`TaskChange`) so the service can wake the
right waiters afterwards. A backend declares what it can do as attributes instead of callers
checking its type.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiswarm_server.models import (
    Agent,
    Claim,
    Event,
    Identity,
    IsolationUpdate,
    NewTask,
    Task,
    TaskChange,
    TaskStatus,
)


@dataclass(slots=True)
class AgentPoll:
    """What an agent's wait finds in one read: its record, new events, tasks it could claim."""

    agent: Agent
    cursor: int
    events: list[Event] = field(default_factory=list)
    claimable: list[Task] = field(default_factory=list)


@dataclass(slots=True)
class ClaimResult:
    claim: Claim | None
    reason: str = ""  # why nothing was claimed, for the agent


@dataclass(slots=True)
class StoreStats:
    tasks: dict[str, int]
    agents: dict[str, int]
    events: int


class Store(ABC):
    """Durable state of the broker. One broker process owns a store."""

    #: Several broker processes may share this store (and see each other's changes).
    shared_between_processes: bool = False

    @abstractmethod
    async def open(self) -> None:
        """Create or migrate the schema. Refuses a database written by a newer aiswarm."""

    @abstractmethod
    async def close(self) -> None: ...

    async def watch_changes(self, apply: Callable[[TaskChange], None]) -> None:
        """Call ``apply`` with every change another broker process commits to this store.

        Only stores shared between processes have such changes; the default does nothing. ``apply`` is the
        service's own wake-up step, so an agent parked on this broker is woken for a task submitted on another.
        """
        return None

    # agents
    @abstractmethod
    async def register_agent(
        self,
        name: str,
        cli: str,
        persona: str | None,
        capabilities: Sequence[str],
        pid: int | None,
        now: float,
    ) -> Agent: ...

    @abstractmethod
    async def get_agent(self, name: str) -> Agent | None: ...

    @abstractmethod
    async def list_agents(self) -> list[Agent]: ...

    @abstractmethod
    async def poll_agent(
        self, name: str, ack_cursor: int | None, now: float, claimable_limit: int = 3
    ) -> AgentPoll:
        """Mark the agent seen, acknowledge events up to ``ack_cursor``, read what is after it."""

    @abstractmethod
    async def heartbeat(self, name: str, now: float, lease_seconds: float) -> tuple[Agent, Task | None]:
        """Mark the agent seen and renew the lease of the task it holds, if any."""

    # tasks
    @abstractmethod
    async def create_tasks(self, tasks: Sequence[NewTask], now: float) -> TaskChange:
        """Insert tasks (dependencies already validated to exist). ``TaskChange.claimable`` lists the pending ones."""

    @abstractmethod
    async def get_task(self, task_id: int, with_attempts: bool = True) -> Task | None: ...

    @abstractmethod
    async def get_tasks(self, task_ids: Sequence[int]) -> list[Task]: ...

    @abstractmethod
    async def list_tasks(self, status: TaskStatus | None, limit: int, offset: int = 0) -> list[Task]: ...

    @abstractmethod
    async def missing_tasks(self, task_ids: Sequence[int]) -> list[int]:
        """The ids among ``task_ids`` that do not exist."""

    @abstractmethod
    async def claim(self, agent: str, task_id: int | None, now: float, lease_seconds: float) -> ClaimResult:
        """Give the agent one task it fits, atomically; or the task it already holds."""

    @abstractmethod
    async def renew(
        self,
        agent: str,
        task_id: int,
        fence_token: int,
        now: float,
        lease_seconds: float,
        progress: str | None,
    ) -> Task:
        """Extend the lease of a held task (raises StaleClaim / TaskCancelled / NotFound)."""

    @abstractmethod
    async def complete(
        self,
        agent: str,
        task_id: int,
        fence_token: int,
        *,
        success: bool,
        retryable: bool,
        result: str | None,
        data: dict[str, Any] | None,
        error: str | None,
        now: float,
    ) -> TaskChange: ...

    @abstractmethod
    async def release(
        self, agent: str, task_id: int, fence_token: int | None, reason: str, now: float
    ) -> TaskChange:
        """Hand a held task back to the queue without counting a failure (graceful stop)."""

    @abstractmethod
    async def cancel(self, task_id: int, reason: str, now: float) -> TaskChange: ...

    @abstractmethod
    async def update_isolation(
        self, task_id: int, fence: int | None, update: IsolationUpdate, now: float
    ) -> Task | None:
        """Record ``update``'s set fields on the task; None when it does not exist or (``fence`` given) the
        task's current fence token is another one."""

    @abstractmethod
    async def sweep(self, now: float, agent_lost_before: float, keep_alive: Sequence[str] = ()) -> TaskChange:
        """Requeue (or dead-letter) expired leases; mark agents not seen since ``agent_lost_before`` lost."""

    @abstractmethod
    async def next_lease_expiry(self) -> float | None: ...

    @abstractmethod
    async def pending_tasks(self, limit: int) -> list[Task]:
        """Claimable tasks in claim order (for re-offering to parked agents)."""

    # tokens
    @abstractmethod
    async def add_token(self, token_hash: str, identity: Identity, now: float) -> None: ...

    @abstractmethod
    async def find_token(self, token_hash: str) -> Identity | None: ...

    @abstractmethod
    async def revoke_tokens(
        self, *, agent: str | None = None, token_hash: str | None = None, now: float
    ) -> int: ...

    @abstractmethod
    async def list_tokens(self) -> list[tuple[str, Identity, float, float | None]]: ...

    @abstractmethod
    async def stats(self) -> StoreStats: ...
