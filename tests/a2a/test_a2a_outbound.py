"""A2A outbound: a task for a persona mapped to a remote A2A agent (built with a2a-sdk's server) is forwarded to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.types import GetTaskRequest, TaskState

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.models import TaskStatus
from launcher.a2a_worker import A2AAgentError, A2AWorker, RemoteAgentSpec, load_remote_agents
from tests.broker_harness import BrokerProcess

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port_file = tmp_path_factory.mktemp("remote") / "port"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.a2a.remote_agent", "--port-file", str(port_file)], cwd=ROOT
    )
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, "the remote agent did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port_file.read_text()}"
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path_factory.mktemp("outbound") / "home").start()
    yield process
    process.stop()


@contextlib.asynccontextmanager
async def forwarding(broker: BrokerProcess, spec: RemoteAgentSpec) -> AsyncIterator[A2AWorker]:
    worker = A2AWorker(spec, broker.url, broker.admin_token)
    running = asyncio.create_task(worker.run())
    try:
        # A task may only ask for a persona the broker knows: wait until the worker has registered with its own.
        async with BrokerClient(broker.url, broker.admin_token) as admin:
            deadline = time.monotonic() + 60
            while spec.agent_name not in {a.name for a in (await admin.list_agents()).agents}:
                assert not running.done() and time.monotonic() < deadline, "the A2A worker did not register"
                await asyncio.sleep(0.05)
        yield worker
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running


async def remote_state(url: str, task_id: str) -> int:
    async with httpx.AsyncClient(headers={"Authorization": "Bearer remote-secret"}) as http:
        client = await create_client(url, ClientConfig(httpx_client=http))
        try:
            return (await client.get_task(GetTaskRequest(id=task_id))).status.state
        finally:
            await client.close()


async def finished(client: BrokerClient, task_id: int) -> object:
    while not (await client.wait_for_tasks([task_id], timeout_seconds=30)).done:
        pass
    return (await client.get_task(task_id)).task


async def test_a_task_for_the_remote_persona_is_done_by_the_remote_agent(
    broker: BrokerProcess, remote: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOUTER_TOKEN", "remote-secret")
    spec = RemoteAgentSpec(name="shouter", url=remote, persona="shouter", token_env="SHOUTER_TOKEN")
    async with BrokerClient(broker.url, broker.primary_token) as primary, forwarding(broker, spec) as worker:
        reply = await primary.submit_task("Shout", "make this loud", persona="shouter")
        task = await finished(primary, reply.tasks[0].id)
    assert task.status is TaskStatus.COMPLETED and task.result == "MAKE THIS LOUD"  # type: ignore[attr-defined]
    assert task.attempts[-1].agent == "a2a-shouter" and worker.done == [task.id]  # type: ignore[attr-defined]
    assert task.progress == "shouting"  # type: ignore[attr-defined]  # the remote status renewed the lease


async def test_cancelling_the_broker_task_cancels_the_remote_one(
    broker: BrokerProcess, remote: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOUTER_TOKEN", "remote-secret")
    spec = RemoteAgentSpec(name="waiter", url=remote, persona="waiter", token_env="SHOUTER_TOKEN")
    async with BrokerClient(broker.url, broker.primary_token) as primary, forwarding(broker, spec) as worker:
        reply = await primary.submit_task("Wait", "WAIT for ever", persona="waiter")
        task_id = reply.tasks[0].id
        deadline = time.monotonic() + 60
        while (await primary.get_task(task_id)).task.progress != "shouting":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await primary.cancel_task(task_id, "not needed")
        deadline = time.monotonic() + 60
        while not worker.cancelled_remote:  # the worker hears of it through its event cursor
            assert time.monotonic() < deadline, "the remote task was never cancelled"
            await asyncio.sleep(0.1)
    assert (
        worker.done == []
        and (await remote_state(remote, worker.cancelled_remote[0])) == TaskState.TASK_STATE_CANCELED
    )


async def test_a_remote_agent_without_its_credential_fails_the_task_with_a_clear_error(
    broker: BrokerProcess, remote: str
) -> None:
    spec = RemoteAgentSpec(name="nokey", url=remote, persona="nokey")  # no token: the remote answers 401
    async with BrokerClient(broker.url, broker.primary_token) as primary, forwarding(broker, spec):
        reply = await primary.submit_task("Shout", "loud", persona="nokey", max_attempts=1)
        task = await finished(primary, reply.tasks[0].id)
    assert task.status is TaskStatus.DEAD and f"the A2A agent at {remote} failed" in (task.error or "")  # type: ignore[attr-defined]


def test_a2a_agents_are_read_from_the_config_file_with_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[a2a_agents.shouter]\nurl = "http://127.0.0.1:1"\npersona = "shouter"\n'
    )
    assert [s.agent_name for s in load_remote_agents(tmp_path)] == ["a2a-shouter"]
    (tmp_path / "config.toml").write_text('[a2a_agents.shouter]\nurl = "ftp://x"\npersona = "shouter"\n')
    with pytest.raises(A2AAgentError, match=r"a2a_agents.shouter.url: String should match pattern"):
        load_remote_agents(tmp_path)
    assert os.environ.get("AISWARM_NEVER_SET") is None
