"""Each launch replaces its agents' broker tokens, and never takes over the agents of a launch still running.

A real broker process on a loopback port; the supervisor runs in per-task mode with no tasks submitted, so
its agents register and wait without ever starting a CLI.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from launcher.agents import AgentNameLocks, AgentPlan, reserve_names
from launcher.supervisor import AgentState, LaunchConfig, Supervisor
from tests.broker_harness import BrokerProcess

pytestmark = pytest.mark.timeout(180)

AGENTS = ("qwen-1", "gemini-1")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "home").start()
    try:
        yield process
    finally:
        process.stop()


def launch_config(broker: BrokerProcess, tmp_path: Path) -> LaunchConfig:
    return LaunchConfig(
        agents=[AgentPlan(name, name.split("-")[0]) for name in AGENTS],
        broker_url=broker.url,
        admin_token=broker.admin_token,
        home=broker.home,
        workdir=tmp_path,
    )


async def until_idle(supervisor: Supervisor) -> None:
    """Wait until every agent is registered and parked on the broker."""
    async with asyncio.timeout(60):
        while not all(v.state is AgentState.IDLE for v in supervisor.views.values()):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def launch_once(broker: BrokerProcess, tmp_path: Path) -> dict[str, str]:
    """One launch that comes up, idles and is stopped; returns the tokens it issued."""
    supervisor = Supervisor(launch_config(broker, tmp_path))
    run = asyncio.create_task(supervisor.run())
    await until_idle(supervisor)
    supervisor.stop()
    await asyncio.wait_for(run, 30)
    return dict(supervisor.tokens)


def live_tokens(broker: BrokerProcess) -> dict[str, int]:
    """Unrevoked worker tokens per agent, read from the broker's database (read-only)."""
    uri = f"file:{broker.home / 'aiswarm.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        rows = db.execute(
            "SELECT agent, COUNT(*) FROM tokens WHERE agent IS NOT NULL AND revoked_at IS NULL GROUP BY agent"
        ).fetchall()
    return dict(rows)


async def accepted(broker: BrokerProcess, token: str) -> bool:
    """True when the broker lets a request with ``token`` through (a revoked token gets 401 before any MCP)."""
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(
            broker.url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            headers={
                "Accept": "application/json, text/event-stream",
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
            },
        )
    return reply.status_code != 401


def test_relaunch_revokes_the_previous_launchs_tokens_so_one_per_agent_stays_valid(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    first = asyncio.run(launch_once(broker, tmp_path))
    second = asyncio.run(launch_once(broker, tmp_path))

    assert set(first) == set(second) == set(AGENTS)
    assert live_tokens(broker) == dict.fromkeys(AGENTS, 1)
    for name in AGENTS:
        assert first[name] != second[name]
        assert asyncio.run(accepted(broker, first[name])) is False, f"{name}'s old token still works"
        assert asyncio.run(accepted(broker, second[name])) is True
    log = (broker.home / "logs" / "qwen-1.log").read_text()
    assert "Revoked 1 token(s) of qwen-1." in log


def test_a_second_launch_takes_other_names_and_leaves_the_running_launchs_agents_alone(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    async def scenario() -> tuple[dict[str, str], dict[str, str], bool, dict[str, int]]:
        running = Supervisor(launch_config(broker, tmp_path))
        run = asyncio.create_task(running.run())
        await until_idle(running)
        second = await launch_once(broker, tmp_path)
        still_served = all([await accepted(broker, t) for t in running.tokens.values()])
        counts = live_tokens(broker)
        running.stop()
        await asyncio.wait_for(run, 30)
        return dict(running.tokens), second, still_served, counts

    running, second, still_served, counts = asyncio.run(scenario())
    assert set(running) == set(AGENTS)
    assert set(second) == {"qwen-2", "gemini-2"}, "the running launch's names are not reused"
    assert still_served, "starting another launch cut off the running one's agents"
    assert counts == dict.fromkeys([*AGENTS, "qwen-2", "gemini-2"], 1)


def test_names_held_by_a_running_launch_get_the_next_free_number(tmp_path: Path) -> None:
    other = AgentNameLocks(tmp_path)
    assert other.take("qwen-1") and other.take("qwen-3")
    ours = AgentNameLocks(tmp_path)
    plans = [AgentPlan("qwen-1", "qwen"), AgentPlan("qwen-2", "qwen"), AgentPlan("gemini-1", "gemini")]
    assert [p.name for p in reserve_names(plans, ours)] == ["qwen-4", "qwen-2", "gemini-1"]
    other.release()
    ours.release()
    again = AgentNameLocks(tmp_path)
    assert [p.name for p in reserve_names(plans, again)] == ["qwen-1", "qwen-2", "gemini-1"]
    again.release()
