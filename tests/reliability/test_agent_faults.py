"""Agents that die hard (SIGKILL mid-task) or hang: their leases expire, the task is retried by another agent,
dead-lettered with the reason once its attempts are used up, and the silent agent is marked lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from aiswarm_server.broker_client import BrokerCallError, BrokerClient
from tests.broker_harness import BrokerProcess

pytestmark = pytest.mark.anyio

# A worker in its own process: register, claim, say what it holds, then keep "working" until killed.
VICTIM = """
import asyncio, json, sys
from aiswarm_server.broker_client import BrokerClient

async def main() -> None:
    async with BrokerClient(sys.argv[1], sys.argv[2]) as me:
        await me.register_agent(cli="victim")
        claim = await me.claim_task()
        assert claim.task is not None
        print(json.dumps({"task_id": claim.task.id, "fence": claim.fence_token}), flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def broker_env() -> dict[str, str]:
    return {
        "AISWARM_LEASE_SECONDS": "2",
        "AISWARM_MAX_WAIT_SECONDS": "2",
        "AISWARM_AGENT_LOST_SECONDS": "4",  # above max_wait_seconds, so the broker keeps it
        "AISWARM_SWEEP_INTERVAL_SECONDS": "0.2",
    }


async def test_sigkilled_agent_loses_its_task_to_another_agent_and_is_marked_lost(
    broker: BrokerProcess, admin: BrokerClient
) -> None:
    victim_token = (await admin.issue_agent_token("victim-1")).token
    rescuer_token = (await admin.issue_agent_token("rescuer-1")).token
    task_id = (await admin.submit_task("survive a crash", "do it", max_attempts=3)).tasks[0].id

    victim = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        VICTIM,
        broker.url,
        victim_token,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert victim.stdout is not None
        held = json.loads(await asyncio.wait_for(victim.stdout.readline(), 120))
        assert held["task_id"] == task_id
        victim.send_signal(signal.SIGKILL)
        await asyncio.wait_for(victim.wait(), 30)
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()

    async with BrokerClient(broker.url, rescuer_token) as rescuer:
        await rescuer.register_agent(cli="rescuer")
        deadline = time.monotonic() + 60
        while True:
            claim = await rescuer.claim_task(task_id)
            if claim.claimed:
                break
            assert "already claimed by victim-1" in claim.message, claim.message
            assert time.monotonic() < deadline, "the dead agent's lease never expired"
            await rescuer.wait_for_next_event(None, 1)
        assert claim.fence_token is not None and claim.fence_token == held["fence"] + 1
        await rescuer.report_task_completion(task_id, claim.fence_token, success=True, result="rescued")

    task = (await admin.get_task(task_id)).task
    assert task.status == "completed" and task.result == "rescued"
    assert [(a.agent, a.outcome) for a in task.attempts] == [
        ("victim-1", "expired"),
        ("rescuer-1", "completed"),
    ]
    assert task.attempts[0].error is not None and "lease expired" in task.attempts[0].error

    async def victim_status() -> str:
        agents = {a.name: a for a in (await admin.list_agents()).agents}
        return agents["victim-1"].status

    deadline = time.monotonic() + 60
    while await victim_status() != "lost":
        assert time.monotonic() < deadline, "the killed agent was never marked lost"
        await asyncio.sleep(0.2)


async def test_hanging_agents_use_up_the_attempts_and_the_task_is_dead_lettered_with_the_reason(
    broker: BrokerProcess, admin: BrokerClient
) -> None:
    tokens = [(await admin.issue_agent_token(f"hang-{i}")).token for i in range(2)]
    task_id = (await admin.submit_task("hangs its workers", "never finishes", max_attempts=2)).tasks[0].id
    fences: list[int] = []
    async with BrokerClient(broker.url, tokens[0]) as first, BrokerClient(broker.url, tokens[1]) as second:
        for hanger in (first, second):
            await hanger.register_agent(cli="hanger")
            deadline = time.monotonic() + 60
            while not (claim := await hanger.claim_task(task_id)).claimed:
                assert time.monotonic() < deadline, claim.message
                await asyncio.sleep(0.2)
            assert claim.fence_token is not None
            fences.append(claim.fence_token)
            # ... and then the agent hangs: no progress, no heartbeat, until the lease runs out.
            status = ""
            deadline = time.monotonic() + 60
            while status in ("", "claimed"):
                assert time.monotonic() < deadline, "the hung agent's lease never expired"
                await asyncio.sleep(0.2)
                status = (await admin.get_task(task_id)).task.status

        task = (await admin.get_task(task_id)).task
        assert task.status == "dead"
        assert task.error is not None and "lease expired" in task.error and "gave up after 2" in task.error
        assert [(a.agent, a.outcome) for a in task.attempts] == [("hang-0", "expired"), ("hang-1", "expired")]

        # The hung agent wakes up: its report is refused with what happened, and its next wait says so too.
        with pytest.raises(BrokerCallError, match="lease expired"):
            await second.report_task_completion(task_id, fences[1], success=True, result="too late")
        events = (await second.wait_for_next_event(None, 0)).events
        assert ("lease_lost", task_id) in [(e.kind, e.task_id) for e in events]
    waited = await admin.wait_for_tasks([task_id], "all", 0)
    assert waited.done and "Not completed" in waited.message
