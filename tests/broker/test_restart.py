"""Stop the broker mid-run and start it again on the same home: nothing lost, leases honoured."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from aiswarm_server.broker_client import BrokerCallError, BrokerClient
from tests.broker_harness import BrokerProcess

pytestmark = pytest.mark.anyio


async def test_restart_keeps_tasks_results_claims_and_tokens(tmp_path: Path) -> None:
    home = tmp_path / "home"
    broker = BrokerProcess(home, {"AISWARM_LEASE_SECONDS": "600"}).start()
    async with BrokerClient(broker.url, broker.admin_token) as admin:
        holder_token = (await admin.issue_agent_token("holder")).token
        finisher_token = (await admin.issue_agent_token("finisher")).token
    primary_token = broker.primary_token
    async with (
        BrokerClient(broker.url, primary_token) as primary,
        BrokerClient(broker.url, holder_token) as holder,
        BrokerClient(broker.url, finisher_token) as finisher,
    ):
        ids = [
            t.id
            for t in (
                await primary.submit_tasks([{"title": f"t{i}", "prompt": "p"} for i in range(10)])
            ).tasks
        ]
        for _ in range(4):
            claim = await finisher.claim_task()
            assert claim.task is not None
            await finisher.report_task_completion(
                claim.task.id, claim.fence_token or 0, success=True, result="r"
            )
        held = await holder.claim_task()
        assert held.task is not None
    assert broker.stop() in (0, -15)  # graceful stop mid-run (uvicorn re-raises SIGTERM after shutting down)
    assert not (home / "broker.json").exists(), "a graceful stop withdraws the broker's address"

    broker.start()
    assert broker.primary_token == primary_token  # tokens survive
    async with (
        BrokerClient(broker.url, primary_token) as primary,
        BrokerClient(broker.url, holder_token) as holder,
    ):
        tasks = {t.id: t for t in (await primary.list_tasks(limit=50)).tasks}
        assert set(tasks) == set(ids)
        assert sum(t.status == "completed" and t.result == "r" for t in tasks.values()) == 4
        assert tasks[held.task.id].status == "claimed" and tasks[held.task.id].claimed_by == "holder"
        assert sum(t.status == "pending" for t in tasks.values()) == 5

        # The lease taken before the restart is still honoured: the holder reports under the same fence.
        reclaim = await holder.claim_task()
        assert (
            reclaim.task is not None
            and reclaim.task.id == held.task.id
            and reclaim.fence_token == held.fence_token
        )
        await holder.report_task_completion(
            held.task.id, held.fence_token or 0, success=True, result="after restart"
        )
        assert (await primary.get_task(held.task.id)).task.result == "after restart"

    broker.stop()

    # A claim whose agent went silent expires after a hard kill and restart, and goes back to the queue.
    broker.env_overrides["AISWARM_LEASE_SECONDS"] = "3"
    broker.start()
    async with BrokerClient(broker.url, holder_token) as holder:
        silent = await holder.claim_task()
        assert silent.task is not None
    broker.kill()
    broker.start()
    async with (
        BrokerClient(broker.url, primary_token) as primary,
        BrokerClient(broker.url, holder_token) as holder,
    ):
        deadline = time.monotonic() + 60
        while (await primary.get_task(silent.task.id)).task.status != "pending":
            assert time.monotonic() < deadline, "the expired lease was not requeued"
            await asyncio.sleep(0.2)
        with pytest.raises(BrokerCallError, match="no longer valid"):
            await holder.report_task_completion(silent.task.id, silent.fence_token or 0, success=True)
    broker.stop()
