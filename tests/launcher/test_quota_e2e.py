"""A quota pool of N requests a day: after N no dispatch until the pool's reset, then work resumes by itself;
the pool's counters survive a relaunch. A fake wall clock stands in for the day passing.

A real broker process, the real qwen-code, the scripted model and the supervisor in this process; the agent's
provider comes from a config-file provider with ``requests_per_day``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.models import Task
from launcher.agents import AgentPlan
from launcher.providers import Provider, ProviderKind
from launcher.scripted_model import ScriptedModelServer
from launcher.supervisor import AgentState, LaunchConfig, Supervisor
from tests.broker_harness import BrokerProcess
from tests.clis import InstalledClis

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

BUDGET = 5
"""Requests a day: a one-file task takes at least 2 (the write, the final answer; qwen adds side requests now and
then), so three tasks cannot all be done in one day, and the one left waiting fits the next day's budget."""
START = 1_800_000_000.0  # 2027-01-15 08:00 UTC


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "home").start()
    try:
        yield process
    finally:
        process.stop()


def test_a_spent_daily_pool_stops_dispatch_until_its_reset_even_across_a_relaunch(
    broker: BrokerProcess, clis: InstalledClis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", clis.path_env())
    model = ScriptedModelServer().start()
    user_home, workdir = tmp_path / "user", tmp_path / "work"
    user_home.mkdir()
    workdir.mkdir()
    now = [START]
    provider = Provider(
        name="scripted",
        kind=ProviderKind.OPENAI_COMPATIBLE,
        base_url=f"{model.url}/v1",
        model="aiswarm-model",
        key_env="AISWARM_TEST_KEY",
        requests_per_day=BUDGET,
    )
    config = LaunchConfig(
        agents=[AgentPlan("qwen-1", "qwen", provider="scripted")],
        broker_url=broker.url,
        admin_token=broker.admin_token,
        home=broker.home,
        workdir=workdir,
        providers={"scripted": provider},
        base_env={**os.environ, "HOME": str(user_home), "AISWARM_TEST_KEY": "k"},
        clock=lambda: now[0],
    )

    def model_requests() -> int:
        return model.stats()["agents"].get("qwen-1", {}).get("total", 0)

    async def task(primary: BrokerClient, task_id: int) -> Task:
        return (await primary.get_task(task_id)).task

    async def pending(primary: BrokerClient, ids: list[int]) -> list[int]:
        return [i for i in ids if (await task(primary, i)).status.value == "pending"]

    async def held_back(primary: BrokerClient, supervisor: Supervisor, waiting: list[int]) -> None:
        """The agent cools down; for 5 s the waiting tasks stay pending and no request reaches the model."""
        async with asyncio.timeout(240):
            while supervisor.views["qwen-1"].state is not AgentState.COOLING:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        for _ in range(25):
            assert await pending(primary, waiting) == waiting
            assert model_requests() == BUDGET
            await asyncio.sleep(0.2)

    async def scenario() -> tuple[list[Task], str]:
        async with BrokerClient(broker.url, broker.primary_token) as primary:
            first_launch = Supervisor(config)
            run = asyncio.create_task(first_launch.run())
            ids = []
            for name in ("one", "two", "three"):
                prompt = f"WRITE {name}.txt\n```\n{name}\n```\n"
                ids.append((await primary.submit_task(name, prompt, working_dir=str(workdir))).tasks[0].id)
            async with asyncio.timeout(240):
                while first_launch.views["qwen-1"].state is not AgentState.COOLING:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            await asyncio.sleep(1)  # the run that met the spent pool hands its task back
            waiting = await pending(primary, ids)
            assert waiting, "the budget should not cover three tasks"
            await held_back(primary, first_launch, waiting)
            first_launch.stop()
            await asyncio.wait_for(run, 60)

            relaunch = Supervisor(config)
            run = asyncio.create_task(relaunch.run())
            try:
                await held_back(primary, relaunch, waiting)
                listed = {a.name: a for a in (await primary.list_agents()).agents}
                state = f"{listed['qwen-1'].state.value}: {listed['qwen-1'].state_reason}"
                now[0] += 86_400  # the next day: the pool resets and work resumes by itself
                async with asyncio.timeout(240):
                    while (await task(primary, waiting[0])).status.value != "completed":  # noqa: ASYNC110
                        await asyncio.sleep(0.2)
                return [await task(primary, i) for i in ids], state
            finally:
                relaunch.stop()
                await asyncio.wait_for(run, 60)

    try:
        tasks, state = asyncio.run(scenario())
    finally:
        model.stop()
    log = (broker.home / "logs" / "qwen-1.log").read_text(errors="replace")
    assert state.startswith(f"cooling: quota pool scripted spent ({BUDGET}/{BUDGET} today)"), state
    assert model_requests() > BUDGET, log[-3000:]
    assert all(t.failures == 0 for t in tasks), [(t.id, t.failures, t.attempts) for t in tasks]
    assert all(a.outcome.value in ("completed", "released") for t in tasks for a in t.attempts)
