"""Soak the broker: minutes of sustained load with agents joining, crashing and leaving.

    uv run python scripts/soak.py --minutes 3

Starts ``aiswarm serve`` on a fresh home (127.0.0.1, a free port), keeps a backlog of tasks submitted by the
primary, and runs a churning fleet of worker agents (asyncio tasks with their own tokens and MCP clients): every
few seconds one agent crashes mid-task (its client vanishes with the claim; the lease expires and the task is
retried elsewhere), one leaves cleanly, and new ones join. At the end it drains the queue and audits the database
and the agents' own records. It prints broker RSS and open file descriptors at the start and the end, and the
numbers of tasks lost and duplicated, which must both be 0 (exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from aiswarm_server.broker_client import BrokerCallError, BrokerClient

LEASE_SECONDS = 4
BACKLOG = 150


@dataclass
class Fleet:
    url: str
    admin_token: str
    reported: Counter[int] = field(default_factory=Counter)  # task id -> successful reports
    completions: int = 0
    crashes: int = 0
    departures: int = 0
    joins: int = 0
    reconnects: int = 0
    refused: int = 0
    next_agent: int = 0


def start_broker(home: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = home / "port"
    env = {
        **os.environ,
        "AISWARM_HOME": str(home),
        "AISWARM_LEASE_SECONDS": str(LEASE_SECONDS),
        "AISWARM_SWEEP_INTERVAL_SECONDS": "0.5",
    }
    log = open(home / "broker.log", "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [sys.executable, "-m", "aiswarm_server", "serve", "--port", "0", "--port-file", str(port_file)],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 300
    while not (port_file.exists() and port_file.read_text()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"the broker did not start; see {home / 'broker.log'}")
        time.sleep(0.1)
    return process, int(port_file.read_text())


def resources(pid: int) -> dict[str, int]:
    process = psutil.Process(pid)
    return {"rss_kib": process.memory_info().rss // 1024, "open_fds": process.num_fds()}


async def agent(
    fleet: Fleet, token: str, name: str, crash_at: float, leave_at: float, stop: asyncio.Event
) -> None:
    """wait → claim → work → report; crash (vanish holding a claim) or leave cleanly when told."""
    while True:
        try:
            async with BrokerClient(fleet.url, token, timeout=30, read_timeout=60) as me:
                cursor = (await me.register_agent(cli="soak")).cursor
                while True:
                    if time.monotonic() > leave_at or stop.is_set():
                        fleet.departures += 1
                        return
                    waited = await me.wait_for_next_event(cursor, 2)
                    cursor = waited.cursor
                    if not waited.events:
                        continue
                    claim = await me.claim_task()
                    if not claim.claimed or claim.task is None or claim.fence_token is None:
                        continue
                    await asyncio.sleep(random.uniform(0.01, 0.2))
                    if time.monotonic() > crash_at:
                        fleet.crashes += 1
                        return  # vanish with the claim: the client closes, the lease runs out
                    try:
                        await me.report_task_completion(
                            claim.task.id, claim.fence_token, success=True, result=name
                        )
                        fleet.reported[claim.task.id] += 1
                        fleet.completions += 1
                    except BrokerCallError:
                        fleet.refused += 1
        except BrokerCallError:
            raise
        except Exception:
            fleet.reconnects += 1
            await asyncio.sleep(0.5)


async def spawn(
    fleet: Fleet, admin: BrokerClient, agents: set[asyncio.Task[None]], lifetime: float, stop: asyncio.Event
) -> None:
    fleet.next_agent += 1
    name = f"soak-{fleet.next_agent}"
    token = (await admin.issue_agent_token(name)).token
    now = time.monotonic()
    crashes = random.random() < 0.5
    crash_at = now + random.uniform(5, lifetime) if crashes else float("inf")
    leave_at = now + random.uniform(5, lifetime) if not crashes else float("inf")
    task = asyncio.create_task(agent(fleet, token, name, crash_at, leave_at, stop))
    agents.add(task)
    task.add_done_callback(agents.discard)
    fleet.joins += 1


async def soak(url: str, admin_token: str, seconds: float, fleet_size: int) -> tuple[Fleet, list[int]]:
    fleet = Fleet(url, admin_token)
    submitted: list[int] = []
    agents: set[asyncio.Task[None]] = set()
    churn_stop, drain_stop = asyncio.Event(), asyncio.Event()
    async with BrokerClient(url, admin_token) as admin:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            while len(agents) < fleet_size:
                await spawn(fleet, admin, agents, 30, churn_stop)
            status = (await admin.broker_status()).tasks
            if status.get("pending", 0) < BACKLOG:
                batch = [{"title": f"soak {len(submitted) + i}", "prompt": "p"} for i in range(25)]
                submitted += [t.id for t in (await admin.submit_tasks(batch)).tasks]
            await asyncio.sleep(0.5)
        # Drain: the churning fleet leaves (after its current report), a steady one finishes every task.
        churn_stop.set()
        drain_end = time.monotonic() + 300
        steady: set[asyncio.Task[None]] = set()
        for i in range(fleet_size):
            token = (await admin.issue_agent_token(f"drain-{i}")).token
            steady.add(
                asyncio.create_task(agent(fleet, token, f"drain-{i}", float("inf"), drain_end, drain_stop))
            )
        while time.monotonic() < drain_end:
            status = (await admin.broker_status()).tasks
            if not any(status.get(s, 0) for s in ("pending", "claimed", "blocked")):
                break
            await asyncio.sleep(0.5)
        drain_stop.set()
        everyone = steady | agents
        _done, stuck = await asyncio.wait(everyone, timeout=120) if everyone else (set(), set())
        for task in stuck:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    return fleet, submitted


def audit(database: Path, fleet: Fleet, submitted: list[int]) -> dict[str, Any]:
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        statuses = dict(db.execute("SELECT id, status FROM tasks").fetchall())
        completed_attempts = Counter(
            row[0] for row in db.execute("SELECT task_id FROM attempts WHERE outcome = 'completed'")
        )
    finally:
        db.close()
    lost = [i for i in submitted if statuses.get(i) not in ("completed", "dead")]
    duplicated = sorted(
        {i for i, n in fleet.reported.items() if n > 1} | {i for i, n in completed_attempts.items() if n > 1}
    )
    completed = {i for i, s in statuses.items() if s == "completed"}
    return {
        "submitted": len(submitted),
        "statuses": dict(Counter(statuses.values())),
        "lost": len(lost),
        "duplicated": len(duplicated),
        # completed in the database but no agent was told (its answer lost): must be 0 too
        "completed_unacknowledged": len(completed - set(fleet.reported)),
        "acknowledged_not_completed": len(set(fleet.reported) - completed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="how long to keep the load up")
    parser.add_argument("--agents", type=int, default=12, help="fleet size kept up while churning")
    parser.add_argument("--json-out", type=Path, help="also write the report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aiswarm-soak-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        broker, port = start_broker(home)
        try:
            url = f"http://127.0.0.1:{port}/mcp"
            admin_token = (home / "admin.token").read_text().strip()
            started = time.monotonic()
            before = resources(broker.pid)
            fleet, submitted = asyncio.run(soak(url, admin_token, args.minutes * 60, args.agents))
            after = resources(broker.pid)
            report = {
                "minutes": round((time.monotonic() - started) / 60, 1),
                "broker_start": before,
                "broker_end": after,
                "agents_joined": fleet.joins + args.agents,
                "agents_crashed": fleet.crashes,
                "agents_left": fleet.departures,
                "completions": fleet.completions,
                "stale_reports_refused": fleet.refused,
                "reconnects": fleet.reconnects,
                **audit(home / "aiswarm.db", fleet, submitted),
            }
        finally:
            broker.terminate()
            try:
                broker.wait(30)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()
    print(json.dumps(report, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    if any(
        report[k] for k in ("lost", "duplicated", "completed_unacknowledged", "acknowledged_not_completed")
    ):
        sys.exit(1)


if __name__ == "__main__":
    main()
