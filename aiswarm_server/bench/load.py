"""Sections 2-4 against the real broker: wake-up latency, task lifecycle throughput, 1,000 parked agents.

All traffic is real MCP (2026-07-28, one JSON-RPC POST per call) over raw loopback connections
(:mod:`aiswarm_server.bench.rawmcp`): the orchestrator holds the submitter and the lifecycle agents, the parked
agents live in a few :mod:`aiswarm_server.bench.fleet` subprocesses. The parked agents of the wake-up and scale
sections speak either protocol generation (``protocol``); the submitter always speaks 2026-07-28.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable
from typing import Any

from aiswarm_server.bench.fleet import Fleet
from aiswarm_server.bench.processes import HOST, BenchBroker
from aiswarm_server.bench.rawmcp import PROTOCOL_VERSION, Protocol, RawMcpConnection
from aiswarm_server.bench.stats import summarize

BATCH = 200  # the broker's max_batch


async def issue_tokens(broker: BenchBroker, names: list[str], concurrency: int = 16) -> list[tuple[str, str]]:
    """One worker token per name, through the admin tool ``issue_agent_token``."""
    connections = [
        await RawMcpConnection.open(HOST, broker.port, broker.admin_token) for _ in range(concurrency)
    ]
    tokens: dict[str, str] = {}
    queue = list(names)

    async def worker(connection: RawMcpConnection) -> None:
        while queue:
            name = queue.pop()
            tokens[name] = (await connection.call_tool("issue_agent_token", {"agent": name}))["token"]

    try:
        await asyncio.gather(*(worker(c) for c in connections))
    finally:
        for connection in connections:
            await connection.close()
    return [(name, tokens[name]) for name in names]


async def parked_waits(port: int) -> int:
    """``aiswarm_parked_waits`` from the broker's ``/metrics``."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET /metrics HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        text = (await reader.read()).decode()
    finally:
        writer.close()
    for line in text.splitlines():
        if line.startswith("aiswarm_parked_waits "):
            return int(float(line.split()[1]))  # prometheus_client writes gauges as floats (50.0)
    raise RuntimeError("no aiswarm_parked_waits in /metrics")


async def until_parked(port: int, count: int, within_s: float) -> bool:
    """Poll ``/metrics`` until ``count`` waits are parked; False after ``within_s``."""
    deadline = time.monotonic() + within_s
    polls = 0
    while time.monotonic() < deadline:
        if await parked_waits(port) >= count:
            return True
        polls += 1
        # /metrics reads the store: polled every 5 ms for long it would slow the very parking it waits for.
        await asyncio.sleep(0.005 if polls < 20 else 0.25)
    return False


async def submit_backlog(port: int, token: str, count: int, title: str) -> list[int]:
    """Submit ``count`` tasks in batches of 200 through ``submit_tasks``; return their ids."""
    connection = await RawMcpConnection.open(HOST, port, token)
    ids: list[int] = []
    try:
        for start in range(0, count, BATCH):
            batch = [
                {"title": f"{title} {i}", "prompt": "benchmark task: do nothing"}
                for i in range(start, min(count, start + BATCH))
            ]
            reply = await connection.call_tool("submit_tasks", {"tasks": batch})
            ids += [t["id"] for t in reply["tasks"]]
    finally:
        await connection.close()
    return ids


# ------------------------------------------------------------------------------------------ wake-up latency
async def measure_wakeups(
    broker: BenchBroker,
    agents: list[tuple[str, str]],
    trials: int,
    budget: float,
    processes: int,
    protocol: Protocol = PROTOCOL_VERSION,
) -> dict[str, Any]:
    """With ``len(agents)`` agents parked: submit one task, time until the woken agent's wait returns.

    Each trial waits until every agent is parked again (``/metrics``), then submits. The woken agent claims and
    completes the task and parks again, so the queue is empty before the next trial.
    """
    n = len(agents)
    latencies: list[float] = []
    submit_rtts: list[float] = []
    woke: dict[int, asyncio.Future[dict[str, Any]]] = {}
    done: dict[int, asyncio.Future[dict[str, Any]]] = {}
    loop = asyncio.get_running_loop()

    def resolve(table: dict[int, asyncio.Future[dict[str, Any]]], event: dict[str, Any]) -> None:
        future = table.setdefault(event["task"], loop.create_future())
        if not future.done():
            future.set_result(event)

    submitter = await RawMcpConnection.open(HOST, broker.port, broker.primary_token)
    timeouts = 0
    try:
        async with Fleet(broker.port, agents, processes, protocol) as fleet:
            fleet.events.on_woke = lambda e: resolve(woke, e)
            fleet.events.on_done = lambda e: resolve(done, e)
            await fleet.connect()
            await fleet.park()
            if not await until_parked(broker.port, n, 300):
                raise RuntimeError(f"only {await parked_waits(broker.port)} of {n} agents parked after 300 s")
            start = time.monotonic()
            for trial in range(trials):
                if time.monotonic() - start > budget and trial >= 5:
                    break
                if not await until_parked(broker.port, n, 30):
                    raise RuntimeError(f"only {await parked_waits(broker.port)} of {n} agents parked")
                await asyncio.sleep(0.002)
                sent = time.monotonic()
                reply = await submitter.call_tool(
                    "submit_task", {"title": f"wake {trial}", "prompt": "benchmark task: do nothing"}
                )
                submit_rtts.append(time.monotonic() - sent)
                task_id = reply["tasks"][0]["id"]
                try:
                    woken = await asyncio.wait_for(woke.setdefault(task_id, loop.create_future()), 30)
                    await asyncio.wait_for(done.setdefault(task_id, loop.create_future()), 30)
                except TimeoutError:
                    timeouts += 1
                    continue
                latencies.append(woken["t"] - sent)
            errors = list(fleet.events.errors)
            misses = fleet.events.misses
    finally:
        await submitter.close()
    return {
        "agents": n,
        "protocol": protocol,
        "wake": summarize(latencies),
        "submit_rtt": summarize(submit_rtts),
        "timeouts": timeouts,
        "wasted_claims": misses,
        "errors": errors[:5],
        "error_count": len(errors),
    }


# ------------------------------------------------------------------------------------------ lifecycle throughput
async def _worker_connections(broker: BenchBroker, agents: list[tuple[str, str]]) -> list[RawMcpConnection]:
    connections: list[RawMcpConnection] = []
    for _, token in agents:
        connection = await RawMcpConnection.open(HOST, broker.port, token)
        await connection.call_tool("register_agent", {"cli": "bench"})
        connections.append(connection)
    return connections


async def measure_drain(broker: BenchBroker, agents: list[tuple[str, str]], tasks: int) -> dict[str, Any]:
    """16 agents drain a backlog: claim_task, report_task_completion, until nothing is left."""
    ids = await submit_backlog(broker.port, broker.primary_token, tasks, "drain")
    connections = await _worker_connections(broker, agents)
    claims: Counter[int] = Counter()
    calls = 0

    async def agent(connection: RawMcpConnection) -> None:
        nonlocal calls
        while True:
            claim = await connection.call_tool("claim_task", {})
            calls += 1
            if not claim["claimed"]:
                return
            task_id = claim["task"]["id"]
            claims[task_id] += 1
            await connection.call_tool(
                "report_task_completion",
                {"task_id": task_id, "fence_token": claim["fence_token"], "success": True, "result": "ok"},
            )
            calls += 1

    try:
        start = time.perf_counter()
        await asyncio.gather(*(agent(c) for c in connections))
        elapsed = time.perf_counter() - start
    finally:
        for connection in connections:
            await connection.close()
    return {
        "agents": len(agents),
        "tasks": tasks,
        "completed": sum(claims.values()),
        "claimed_twice": sum(1 for c in claims.values() if c > 1),
        "all_submitted_completed": set(claims) == set(ids),
        "calls": calls,
        "seconds": round(elapsed, 3),
        "tasks_per_s": round(len(claims) / elapsed, 1),
        "calls_per_task_ideal": 2,
    }


async def measure_end_to_end(
    broker: BenchBroker, agents: list[tuple[str, str]], tasks: int
) -> dict[str, Any]:
    """A submitter submits tasks one by one; 16 agents wait, are woken, claim and complete them."""
    connections = await _worker_connections(broker, agents)
    submitter = await RawMcpConnection.open(HOST, broker.port, broker.primary_token)
    claims: Counter[int] = Counter()
    finished = asyncio.Event()
    counts = {"calls": 0, "wasted_claims": 0, "empty_waits": 0}
    submitted: list[int] = []

    async def agent(connection: RawMcpConnection) -> None:
        cursor: str | None = None
        while True:
            reply = await connection.call_tool(
                "wait_for_next_event", {"cursor": cursor, "timeout_seconds": 60}
            )
            counts["calls"] += 1
            cursor = reply["cursor"]
            if not any(e["kind"] == "task_available" for e in reply["events"]):
                counts["empty_waits"] += 1
                continue
            claim = await connection.call_tool("claim_task", {})
            counts["calls"] += 1
            if not claim["claimed"]:
                counts["wasted_claims"] += 1
                continue
            task_id = claim["task"]["id"]
            await connection.call_tool(
                "report_task_completion",
                {"task_id": task_id, "fence_token": claim["fence_token"], "success": True, "result": "ok"},
            )
            counts["calls"] += 1
            claims[task_id] += 1
            if sum(claims.values()) >= tasks:
                finished.set()

    async def submit() -> None:
        for i in range(tasks):
            reply = await submitter.call_tool(
                "submit_task", {"title": f"e2e {i}", "prompt": "benchmark task"}
            )
            counts["calls"] += 1
            submitted.append(reply["tasks"][0]["id"])

    runners = [asyncio.create_task(agent(c)) for c in connections]
    try:
        await asyncio.sleep(0.2)  # let every agent park
        start = time.perf_counter()
        await submit()
        await asyncio.wait_for(finished.wait(), 120)
        elapsed = time.perf_counter() - start
    finally:
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        for connection in [*connections, submitter]:
            await connection.close()
    return {
        "agents": len(agents),
        "tasks": tasks,
        "completed": sum(claims.values()),
        "claimed_twice": sum(1 for c in claims.values() if c > 1),
        "all_submitted_completed": set(claims) == set(submitted),
        **counts,
        "seconds": round(elapsed, 3),
        "tasks_per_s": round(len(claims) / elapsed, 1),
        "calls_per_task_ideal": 4,
    }


# ------------------------------------------------------------------------------------------ scale
async def measure_scale(
    broker: BenchBroker, agents: list[tuple[str, str]], processes: int, protocol: Protocol = PROTOCOL_VERSION
) -> dict[str, Any]:
    """``len(agents)`` parked agents: broker RSS and fds before and during, then wake them all at once.

    Woken agents hold (as a model thinking would) until every agent is awake, so claims do not compete with
    the wake-ups being timed; then they all claim and complete, and every task must be completed exactly once.
    """
    n = len(agents)
    before = await _settled_resources(broker)
    samples: list[dict[str, int]] = []
    async with Fleet(broker.port, agents, processes, protocol) as fleet:
        await fleet.connect()
        connected = _resources(broker)
        await fleet.hold(True)
        await fleet.park()
        parked_ok = await until_parked(broker.port, n, 300)
        await asyncio.sleep(0.5)
        parked = _resources(broker)
        sent = time.monotonic()
        ids = await submit_backlog(broker.port, broker.primary_token, n, "scale")
        submitted_at = time.monotonic()
        all_woke = await fleet.wait_for(lambda: len(fleet.events.woke) >= n, 60)
        samples.append(_resources(broker))
        wake_times = sorted(e["t"] - sent for e in fleet.events.woke)
        await fleet.hold(False)
        all_done = await fleet.wait_for(lambda: len(fleet.events.done) >= n, 120)
        completed = Counter(e["task"] for e in fleet.events.done)
        errors = list(fleet.events.errors)
        misses = fleet.events.misses
    after = _resources(broker)
    return {
        "agents": n,
        "protocol": protocol,
        "all_parked": parked_ok,
        "rss_mb": {
            k: round(v["rss"] / 2**20, 1)
            for k, v in {
                "before": before,
                "connected": connected,
                "parked": parked,
                "woken": samples[0],
                "after": after,
            }.items()
        },
        "fds": {
            "before": before["fds"],
            "connected": connected["fds"],
            "parked": parked["fds"],
            "after": after["fds"],
        },
        "rss_above_idle_mb": round((parked["rss"] - before["rss"]) / 2**20, 1),
        "rss_per_parked_agent_kb": round((parked["rss"] - before["rss"]) / 1024 / n, 1),
        "submit_seconds": round(submitted_at - sent, 3),
        "all_woke": all_woke,
        "woke": len(fleet.events.woke),
        "time_to_wake_all_s": round(wake_times[-1], 3) if wake_times else None,
        "time_to_wake_half_s": round(wake_times[len(wake_times) // 2], 3) if wake_times else None,
        "all_done": all_done,
        "completed": sum(completed.values()),
        "completed_twice": sum(1 for c in completed.values() if c > 1),
        "all_submitted_completed": set(completed) == set(ids),
        "wasted_claims": misses,
        "errors": errors[:5],
        "error_count": len(errors),
    }


def _resources(broker: BenchBroker) -> dict[str, int]:
    return {"rss": broker.rss_bytes(), "fds": broker.open_fds()}


async def _settled_resources(broker: BenchBroker, samples: int = 5) -> dict[str, int]:
    """Resources of an idle broker: the fewest open files over a few samples, so a connection the server is
    still closing (the previous call's) is not counted as part of its idle state."""
    taken = []
    for _ in range(samples):
        taken.append(_resources(broker))
        await asyncio.sleep(0.1)
    return {"rss": taken[-1]["rss"], "fds": min(t["fds"] for t in taken)}


async def with_timeout(awaitable: Awaitable[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """A section that overruns or fails is reported as an error instead of ending the benchmark."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        return {"error": f"timed out after {seconds} s"}
    except Exception as error:  # one failed section must not lose the others' results
        return {"error": f"{type(error).__name__}: {error}"[:500]}


__all__ = [
    "issue_tokens",
    "measure_drain",
    "measure_end_to_end",
    "measure_scale",
    "measure_wakeups",
    "with_timeout",
]


async def call_once(
    port: int, token: str, tool: str, arguments: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One call on a fresh connection (registering an agent, warming a fresh broker)."""
    connection = await RawMcpConnection.open(HOST, port, token)
    try:
        return await connection.call_tool(tool, arguments)
    finally:
        await connection.close()
