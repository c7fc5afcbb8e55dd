"""The broker is SIGKILLed three times (at 10%, 50% and 90% of the work) while eight agents work through
300 tasks, and restarted each time on the same home and port.

Every task must end completed exactly once (by the database and by the agents' own records) or dead with the
reason; claims held at the moment of the kill are either reported successfully after the restart or refused
because their lease expired and the task went to someone else.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from aiswarm_server.broker_client import BrokerClient
from tests.broker_harness import BrokerProcess
from tests.reliability.swarm import START_TIMEOUT, AgentRecord, cancel_all, poll, read_rows, resilient_agent

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(900)]

AGENTS = 8
TASKS = 300
LEASE_SECONDS = 3
KILL_POINTS = (0.1, 0.5, 0.9)  # share of the tasks reported when the broker is killed


async def test_sigkilled_broker_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    broker = BrokerProcess(
        tmp_path / "home",
        {"AISWARM_LEASE_SECONDS": str(LEASE_SECONDS), "AISWARM_SWEEP_INTERVAL_SECONDS": "0.2"},
    ).start(START_TIMEOUT)
    agents: list[asyncio.Task[AgentRecord]] = []
    try:
        async with BrokerClient(broker.url, broker.admin_token) as admin:
            tokens = [(await admin.issue_agent_token(f"crash-{i}")).token for i in range(AGENTS)]
            batch = [{"title": f"t{i}", "prompt": f"task {i}"} for i in range(TASKS)]
            ids = [
                t.id
                for chunk in range(0, TASKS, 100)
                for t in (await admin.submit_tasks(batch[chunk : chunk + 100])).tasks
            ]
        assert len(set(ids)) == TASKS

        stop = asyncio.Event()
        records = [AgentRecord(f"crash-{i}") for i in range(AGENTS)]
        agents = [
            asyncio.create_task(resilient_agent(lambda: broker.url, token, record, stop))
            for token, record in zip(tokens, records, strict=True)
        ]

        def reported() -> int:
            return sum(len(r.reported) for r in records)

        held_at_kill: list[tuple[str, int, int]] = []
        for kill_at in KILL_POINTS:
            await poll(
                lambda at=kill_at: reported() >= at * TASKS, 180, f"{kill_at:.0%} of the tasks to be reported"
            )
            broker.kill()
            held_at_kill += [(r.name, *r.held) for r in records if r.held is not None]
            before = {r.name: r.reconnects for r in records}
            # Every agent notices the broker is gone before it comes back.
            await poll(
                lambda seen=before: all(r.reconnects > seen[r.name] for r in records),
                60,
                "agents to see the broker gone",
            )
            await asyncio.to_thread(broker.start, START_TIMEOUT)

        async with BrokerClient(broker.url, broker.admin_token) as admin:

            async def unfinished() -> int:
                counts = (await admin.broker_status()).tasks
                return sum(n for status, n in counts.items() if status not in ("completed", "dead", "failed"))

            deadline = time.monotonic() + 150
            while await unfinished():
                assert time.monotonic() < deadline, (
                    f"tasks still unfinished: {(await admin.broker_status()).tasks}"
                )
                await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*agents), 120)
    finally:
        await cancel_all(agents)
        broker.stop()

    database = broker.home / "aiswarm.db"
    tasks = {r["id"]: r for r in read_rows(database, "SELECT id, status, error FROM tasks")}
    attempts = read_rows(database, "SELECT task_id, agent, fence_token, outcome, error FROM attempts")
    assert set(tasks) == set(ids), "a task was lost"
    statuses = Counter(r["status"] for r in tasks.values())
    assert set(statuses) <= {"completed", "dead"}, statuses
    for row in tasks.values():
        if row["status"] == "dead":
            assert "lease expired" in row["error"] and "gave up after" in row["error"], row["error"]

    # Exactly once, from the agents' side: no id reported successfully twice, and the reports match the database.
    reports = Counter(task_id for r in records for task_id in r.reported_ids)
    assert [task_id for task_id, n in reports.items() if n > 1] == []
    completed = {task_id for task_id, row in tasks.items() if row["status"] == "completed"}
    assert set(reports) == completed
    # ... and from the database's: one completed attempt per completed task, by the agent that was told so.
    done_by = {(a["task_id"], a["agent"], a["fence_token"]) for a in attempts if a["outcome"] == "completed"}
    assert len(done_by) == len(completed)
    assert done_by == {(t, r.name, f) for r in records for t, f in r.reported}
    assert not [a for a in attempts if a["outcome"] == "running"], "an attempt was left running"
    assert {a["outcome"] for a in attempts} <= {"completed", "expired"}

    # Claims held when the broker died: reported after the restart, or refused because the lease expired.
    for name, task_id, fence in held_at_kill:
        record = next(r for r in records if r.name == name)
        if (task_id, fence) in record.reported:
            continue
        refusal = [m for t, f, m in record.refused if (t, f) == (task_id, fence)]
        assert refusal and "no longer valid" in refusal[0], (name, task_id, record.refused)
    # Every refused report is a claim that expired, and that task was finished by an attempt after it.
    for record in records:
        for task_id, fence, message in record.refused:
            assert "lease expired" in message, message
            assert any(a["task_id"] == task_id and a["fence_token"] > fence for a in attempts)
    print(
        f"{len(KILL_POINTS)} kills: {statuses}, {len(held_at_kill)} claims held at the kills, "
        f"{sum(len(r.refused) for r in records)} stale reports refused, "
        f"{sum(r.reconnects for r in records)} reconnects"
    )
