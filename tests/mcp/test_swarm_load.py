"""Sixteen agents over real HTTP drain 500 tasks: every task completed exactly once, none claimed twice.

Also measures submit→wake latency and throughput (printed, and written to ``$AISWARM_LOAD_REPORT`` if set);
the assertions are about correctness only: timing targets live in the benchmark.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import pytest

from aiswarm_server.broker_client import BrokerClient
from tests.broker_harness import BrokerProcess

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

AGENTS = 16
TASKS = 500


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def test_sixteen_agents_drain_500_tasks_exactly_once(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "home").start()
    try:
        async with BrokerClient(broker.url, broker.admin_token) as admin:
            tokens = [(await admin.issue_agent_token(f"load-{i}")).token for i in range(AGENTS)]
        submitted_at: dict[int, float] = {}
        woken_at: dict[int, float] = {}
        completed_by: list[tuple[int, str]] = []
        claims: Counter[int] = Counter()
        finished = asyncio.Event()

        async def agent(index: int, token: str) -> None:
            name = f"load-{index}"
            async with BrokerClient(broker.url, token) as me:
                cursor = (await me.register_agent(cli="load-test")).cursor
                while not finished.is_set():
                    reply = await me.wait_for_next_event(cursor, 2)
                    cursor = reply.cursor
                    now = time.perf_counter()
                    for event in reply.events:
                        if event.kind == "task_available" and event.task_id is not None:
                            woken_at.setdefault(event.task_id, now)
                    if not reply.events:
                        continue
                    claim = await me.claim_task()
                    if not claim.claimed or claim.task is None:
                        continue
                    claims[claim.task.id] += 1
                    done = await me.report_task_completion(
                        claim.task.id, claim.fence_token or 0, success=True, result=f"done by {name}"
                    )
                    assert done.status == "completed"
                    completed_by.append((claim.task.id, name))
                    if len(completed_by) == TASKS:
                        finished.set()

        workers = [asyncio.create_task(agent(i, t)) for i, t in enumerate(tokens)]
        # Everyone parks before the first task is submitted.
        async with BrokerClient(broker.url, broker.admin_token) as admin:
            deadline = time.monotonic() + 60
            while (await admin.broker_status()).parked_waits < AGENTS:
                assert time.monotonic() < deadline, "the agents never all parked"
                await asyncio.sleep(0.05)
        started = time.perf_counter()
        async with BrokerClient(broker.url, broker.primary_token) as primary:
            for n in range(TASKS):
                before = time.perf_counter()
                reply = await primary.submit_task(f"task {n}", f"prompt {n}")
                submitted_at[reply.tasks[0].id] = before
            await asyncio.wait_for(finished.wait(), 300)
            elapsed = time.perf_counter() - started
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            listed = (await primary.list_tasks(limit=500)).tasks
            one = await primary.get_task(listed[0].id)

        ids = [task_id for task_id, _ in completed_by]
        assert len(ids) == len(set(ids)) == TASKS
        assert set(ids) == set(submitted_at)
        assert max(claims.values()) == 1, "a task was claimed twice"
        assert all(t.status == "completed" for t in listed) and len(listed) == TASKS
        assert len(one.task.attempts) == 1
        agents_used = {name for _, name in completed_by}
        assert len(agents_used) > AGENTS // 2, agents_used

        latencies = [(woken_at[i] - submitted_at[i]) * 1000 for i in submitted_at if i in woken_at]
        report = {
            "agents": AGENTS,
            "tasks": TASKS,
            "seconds": round(elapsed, 2),
            "tasks_per_second": round(TASKS / elapsed, 1),
            "wake_ms_p50": round(statistics.median(latencies), 2),
            "wake_ms_p99": round(percentile(latencies, 0.99), 2),
            "agents_used": len(agents_used),
        }
        print("\nload:", json.dumps(report))
        if path := os.environ.get("AISWARM_LOAD_REPORT"):
            Path(path).write_text(json.dumps(report, indent=2))
    finally:
        broker.stop()
