"""Worker agents written against the broker's MCP tools, doing what a test decides, for workflow tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.replies import ClaimedTask

Decision = tuple[bool, str]  # (success, result or error)


@dataclass
class ScriptedWorker:
    """One agent: claims what fits its persona and answers with ``decide(task)``."""

    name: str
    persona: str | None
    decide: Callable[[ClaimedTask], Decision]
    done: list[ClaimedTask] = field(default_factory=list)
    hold: asyncio.Event | None = None  # when set, a claimed task is reported only once the event is set

    async def run(self, url: str, admin_token: str) -> None:
        """Work until cancelled."""
        async with BrokerClient(url, admin_token) as admin:
            token = (await admin.issue_agent_token(self.name)).token
        async with BrokerClient(url, token) as broker:
            cursor = (await broker.register_agent(cli="test", persona=self.persona)).cursor
            while True:
                claim = await broker.claim_task()
                if not claim.claimed or claim.task is None or claim.fence_token is None:
                    cursor = (await broker.wait_for_next_event(cursor, timeout_seconds=2)).cursor
                    continue
                if self.hold is not None:
                    await broker.report_progress(claim.task.id, claim.fence_token, "started")
                    await self.hold.wait()
                success, text = self.decide(claim.task)
                self.done.append(claim.task)
                await broker.report_task_completion(
                    claim.task.id,
                    claim.fence_token,
                    success=success,
                    result=text,
                    error=None if success else text,
                    retryable=True,
                )


@contextlib.asynccontextmanager
async def working(url: str, admin_token: str, *workers: ScriptedWorker) -> AsyncIterator[None]:
    """Run the workers for the duration of the block."""
    tasks = [asyncio.create_task(w.run(url, admin_token)) for w in workers]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
