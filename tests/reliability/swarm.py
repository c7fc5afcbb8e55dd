"""Worker agents that survive a broker crash, and readers of the broker's database for the final audit.

An agent here is an asyncio task looping wait → claim → work → report over real HTTP with its own worker token.
When the broker disappears it reconnects with a short back-off and carries on; a claim it holds survives the
reconnect and is reported again until the broker answers definitively (recorded, or refused with the reason).
Each agent records which task ids it reported successfully, so "completed exactly once" is checked from the
agents' side as well as from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiswarm_server.broker_client import BrokerCallError, BrokerClient

CALL_TIMEOUT = 60.0
# Starting a broker imports the MCP SDK; on a loaded 2-core machine that alone has taken over a minute.
START_TIMEOUT = 240.0


@dataclass
class AgentRecord:
    """What one agent saw: successful reports, refusals, reconnects."""

    name: str
    reported: list[tuple[int, int]] = field(default_factory=list)  # (task id, fence) answered as recorded
    refused: list[tuple[int, int, str]] = field(default_factory=list)  # (task id, fence, broker's message)
    reconnects: int = 0
    claims: int = 0
    held: tuple[int, int] | None = None  # the claim it is working on or still has to report
    crashed: bool = False

    @property
    def reported_ids(self) -> list[int]:
        return [task_id for task_id, _ in self.reported]


@dataclass
class AgentPlan:
    """How an agent behaves: how long its 'work' takes, and how long it waits for events."""

    work_seconds: tuple[float, float] = (0.01, 0.08)
    wait_seconds: int = 1
    retry_seconds: float = 0.2


async def resilient_agent(
    url: Callable[[], str],
    token: str,
    record: AgentRecord,
    stop: asyncio.Event,
    plan: AgentPlan | None = None,
    deadline: float | None = None,
) -> AgentRecord:
    """Work until ``stop`` is set (or ``deadline`` passes); tolerate the broker vanishing and coming back."""
    plan = plan or AgentPlan()
    end = deadline if deadline is not None else time.monotonic() + 600
    while not stop.is_set() and time.monotonic() < end:
        try:
            async with BrokerClient(url(), token, timeout=10, read_timeout=plan.wait_seconds + 30) as me:
                async with asyncio.timeout(CALL_TIMEOUT):
                    registered = await me.register_agent(cli="reliability")
                cursor = registered.cursor
                if record.held is None and registered.agent.current_task_id is not None:
                    # A claim whose answer was lost in the crash: the broker says we hold it; take it up.
                    async with asyncio.timeout(CALL_TIMEOUT):
                        again = await me.claim_task()
                    if again.claimed and again.task is not None and again.fence_token is not None:
                        record.held = (again.task.id, again.fence_token)
                while not stop.is_set() and time.monotonic() < end:
                    if record.held is None:
                        async with asyncio.timeout(CALL_TIMEOUT):
                            waited = await me.wait_for_next_event(cursor, plan.wait_seconds)
                        cursor = waited.cursor
                        if not any(e.kind == "task_available" for e in waited.events):
                            continue
                        async with asyncio.timeout(CALL_TIMEOUT):
                            claim = await me.claim_task()
                        if not claim.claimed or claim.task is None or claim.fence_token is None:
                            continue
                        record.claims += 1
                        record.held = (claim.task.id, claim.fence_token)
                        await asyncio.sleep(random.uniform(*plan.work_seconds))
                    task_id, fence = record.held
                    try:
                        async with asyncio.timeout(CALL_TIMEOUT):
                            await me.report_task_completion(
                                task_id, fence, success=True, result=f"done by {record.name}"
                            )
                        record.reported.append((task_id, fence))
                    except BrokerCallError as refusal:
                        record.refused.append((task_id, fence, str(refusal)))
                    record.held = None
        except BrokerCallError:
            raise  # a refusal outside a report is a bug in the test or the broker: let it surface
        except Exception:  # the broker vanished (refused connection, reset, 503 while starting ...)
            record.reconnects += 1
            await asyncio.sleep(plan.retry_seconds)
    return record


def read_rows(database: Path, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
    """Read the broker's database directly (read-only; WAL lets this run beside a live broker)."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def dump_tables(database: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, for comparing the database before and after a refused call."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        names = [
            r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        return {name: db.execute(f'SELECT * FROM "{name}" ORDER BY 1, 2').fetchall() for name in names}
    finally:
        db.close()


async def poll(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> None:
    """Wait until ``predicate()`` is truthy, or fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


async def cancel_all(tasks: list[asyncio.Task[AgentRecord]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task
