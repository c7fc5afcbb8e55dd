"""Parked calls and who to wake. Every wake-up is a hint: the woken call re-reads the truth from the store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from aiswarm_server.models import Task

#: Resolved once the HTTP exchange carrying the current MCP call is over: its client hung up, or its session
#: ended. Set per 2025-11-25 POST by the HTTP layer (``http_app.BrokerApp``), whose SDK runs the call in a session
#: task with the POST's context but neither cancels it when that POST's connection drops nor answers it anywhere
#: else; a 2026-07-28 call needs none (the SDK cancels it with its connection). None outside an HTTP exchange.
EXCHANGE_OVER: ContextVar[asyncio.Future[None] | None] = ContextVar("aiswarm_exchange_over", default=None)


@dataclass(slots=True)
class _Profile:
    persona: str | None = None
    capabilities: frozenset[str] = frozenset()
    known: bool = False  # an agent not yet read from the store is offered anything; it re-checks on wake


@dataclass(slots=True)
class _Parked:
    futures: list[asyncio.Future[None]] = field(default_factory=list)


class AgentWaiters:
    """``wait_for_next_event`` calls parked per agent. A new task wakes one agent it fits, not all of them.

    Insertion order is park order, so the longest-waiting fitting agent is woken first.
    """

    #: How long a submitter waits at most for the agents it woke to reply first.
    REPLY_FIRST_SECONDS = 0.02

    def __init__(self) -> None:
        self._parked: dict[str, _Parked] = {}
        self._profiles: dict[str, _Profile] = {}
        # woken wait -> resolved when that wait leaves its park (it is replying, or parks again)
        self._leaving: dict[asyncio.Future[None], asyncio.Future[None]] = {}

    def remember(self, agent: str, persona: str | None, capabilities: Iterable[str]) -> None:
        """Note an agent's persona and capabilities, so a task is only offered to agents it fits."""
        self._profiles[agent] = _Profile(persona, frozenset(capabilities), True)

    @contextmanager
    def park(
        self, agent: str, exchange_over: asyncio.Future[None] | None = None
    ) -> Iterator[asyncio.Future[None]]:
        """Park one wait of ``agent`` for the duration of the block; the future resolves when it is woken, or as
        soon as ``exchange_over`` does (its caller is gone: from then on no task is offered to this wait)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = self._parked.pop(agent, None) or _Parked()
        entry.futures.append(future)
        self._parked[agent] = entry  # re-insert: moves to the back of the line
        unpark: Callable[[asyncio.Future[None]], None] | None = None
        if exchange_over is not None:
            unpark = _resolver(future)
            exchange_over.add_done_callback(unpark)
        try:
            yield future
        finally:
            if exchange_over is not None and unpark is not None:
                exchange_over.remove_done_callback(unpark)
            entry.futures.remove(future)
            if not entry.futures and self._parked.get(agent) is entry:
                del self._parked[agent]
            left = self._leaving.pop(future, None)
            if left is not None and not left.done():
                left.set_result(None)

    def wake_agent(self, agent: str) -> bool:
        """Wake every parked wait of ``agent``; return whether there was one."""
        entry = self._parked.get(agent)
        if entry is None:
            return False
        woke = False
        for future in entry.futures:
            if not future.done():
                future.set_result(None)
                self._leaving[future] = future.get_loop().create_future()
                woke = True
        return woke

    async def let_woken_reply_first(self) -> None:
        """Give the waits woken so far the loop until they have replied, at most ``REPLY_FIRST_SECONDS``.

        The woken worker is the one waiting on the answer, the submitter that woke it is not (docs/BENCHMARK.md has
        the measurement); a wait that has left its park has built its reply, which the MCP layer sends without
        yielding.
        """
        if not self._leaving:
            return
        await asyncio.wait(list(self._leaving.values()), timeout=self.REPLY_FIRST_SECONDS)

    def offer(self, task: Task, exclude: Iterable[str] = ()) -> str | None:
        """Wake the first parked, not-yet-woken agent that fits ``task``; return its name."""
        skip = set(exclude)
        for agent, entry in self._parked.items():
            if agent in skip or all(f.done() for f in entry.futures):
                continue
            profile = self._profiles.get(agent, _Profile())
            if profile.known and not task.fits(profile.persona, profile.capabilities):
                continue
            self.wake_agent(agent)
            return agent
        return None

    def parked_agents(self) -> list[str]:
        """The agents with a parked wait, longest-waiting first."""
        return list(self._parked)

    def has_parked(self) -> bool:
        """Whether any agent is parked."""
        return bool(self._parked)

    def idle_parked_count(self) -> int:
        """How many parked agents have not been woken yet."""
        return sum(1 for e in self._parked.values() if any(not f.done() for f in e.futures))

    def __len__(self) -> int:
        return sum(len(e.futures) for e in self._parked.values())


def _resolver(future: asyncio.Future[None]) -> Callable[[asyncio.Future[None]], None]:
    def resolve(_: asyncio.Future[None]) -> None:
        if not future.done():
            future.set_result(None)

    return resolve


class TaskWatchers:
    """Primary-side waits on task completion, keyed by task id."""

    def __init__(self) -> None:
        self._watchers: dict[int, set[asyncio.Future[None]]] = {}

    @contextmanager
    def watch(self, task_ids: Iterable[int]) -> Iterator[asyncio.Future[None]]:
        """Watch the tasks for the duration of the block; the future resolves when one of them changes."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ids = set(task_ids)
        for task_id in ids:
            self._watchers.setdefault(task_id, set()).add(future)
        try:
            yield future
        finally:
            for task_id in ids:
                group = self._watchers.get(task_id)
                if group is not None:
                    group.discard(future)
                    if not group:
                        del self._watchers[task_id]

    def notify(self, task_ids: Iterable[int]) -> None:
        """Wake every wait watching one of ``task_ids``."""
        for task_id in task_ids:
            for future in self._watchers.get(task_id, ()):
                if not future.done():
                    future.set_result(None)

    def __len__(self) -> int:
        return len(self._watchers)
