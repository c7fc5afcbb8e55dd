"""The swarm as an A2A agent: an a2a-sdk client sends messages to a real broker process; worker agents do them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.client.client import Client
from a2a.helpers.proto_helpers import get_artifact_text
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskState,
)
from google.protobuf import json_format

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.models import TaskStatus
from tests.broker_harness import BrokerProcess
from tests.workflow.swarm import ScriptedWorker, working

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path_factory.mktemp("a2a") / "home").start()
    yield process
    process.stop()


@pytest.fixture
async def client(broker: BrokerProcess) -> AsyncIterator[Client]:
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {broker.primary_token}"}, timeout=60)
    a2a = await create_client(broker.base, ClientConfig(httpx_client=http, streaming=True))
    try:
        yield a2a
    finally:
        await a2a.close()
        await http.aclose()


def aiswarm_task_id(task: Task) -> int:
    return int(json_format.MessageToDict(task.metadata)["aiswarm_task_id"])


def message(text: str, **metadata: str) -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=text)]),
        metadata=metadata or None,
    )


async def test_the_agent_card_lists_the_personas_as_skills_and_asks_for_a_bearer_token(
    broker: BrokerProcess,
) -> None:
    async with httpx.AsyncClient() as http:
        card = (await http.get(broker.base + "/.well-known/agent-card.json")).json()
    skills = {s["id"] for s in card["skills"]}
    assert {"task", "implementer", "reviewer", "tester", "researcher"} <= skills
    assert card["supportedInterfaces"][0]["url"] == broker.base + "/a2a"
    assert card["capabilities"]["streaming"] is True
    assert "bearer" in card["securitySchemes"]


async def test_a_message_becomes_a_broker_task_followed_to_its_result_by_streaming(
    broker: BrokerProcess, client: Client
) -> None:
    def do(task: object) -> tuple[bool, str]:
        return True, "tests written: 3 passed"

    worker = ScriptedWorker("a2a-tester", "tester", do, hold=asyncio.Event())
    events: list[StreamResponse] = []
    async with working(broker.url, broker.admin_token, worker):
        async for event in client.send_message(message("Write tests for the parser", persona="tester")):
            events.append(event)
            if (
                event.HasField("status_update")
                and event.status_update.status.state == TaskState.TASK_STATE_WORKING
            ):
                assert worker.hold is not None
                worker.hold.set()  # the worker finishes only after the client saw it working

    states = [e.status_update.status.state for e in events if e.HasField("status_update")]
    assert events[0].HasField("task") and states[-1] == TaskState.TASK_STATE_COMPLETED
    working_note = next(e for e in events if e.HasField("status_update")).status_update.status.message
    assert "claimed by a2a-tester: started" in working_note.parts[0].text
    artifacts = [e.artifact_update.artifact for e in events if e.HasField("artifact_update")]
    assert [get_artifact_text(a) for a in artifacts] == ["tests written: 3 passed"]
    broker_id = aiswarm_task_id(events[0].task)
    assert worker.done[0].id == broker_id and worker.done[0].persona == "tester"
    assert worker.done[0].prompt == "Write tests for the parser"

    stored = await client.get_task(GetTaskRequest(id=events[0].task.id))
    assert stored.status.state == TaskState.TASK_STATE_COMPLETED
    assert get_artifact_text(stored.artifacts[0]) == "tests written: 3 passed"


async def test_cancelling_the_a2a_task_cancels_the_broker_task(
    broker: BrokerProcess, broker_admin: BrokerClient
) -> None:
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {broker.primary_token}"}, timeout=60)
    polling = await create_client(broker.base, ClientConfig(httpx_client=http, streaming=False, polling=True))
    try:
        # A persona the broker knows that no agent here has: nobody takes the task.
        first = [e async for e in polling.send_message(message("Nobody takes this", persona="researcher"))]
        a2a_task = first[0].task
        broker_id = aiswarm_task_id(a2a_task)
        cancelled = await polling.cancel_task(CancelTaskRequest(id=a2a_task.id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        task = (await broker_admin.get_task(broker_id)).task
        assert task.status is TaskStatus.CANCELLED and task.error == "cancelled by the A2A client"
    finally:
        await polling.close()
        await http.aclose()


async def test_a2a_refuses_missing_and_worker_tokens_in_one_clear_line(
    broker: BrokerProcess, broker_admin: BrokerClient
) -> None:
    worker_token = (await broker_admin.issue_agent_token("a2a-intruder")).token
    body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {}}
    async with httpx.AsyncClient() as http:
        missing = await http.post(broker.base + "/a2a", json=body)
        as_worker = await http.post(
            broker.base + "/a2a", json=body, headers={"Authorization": f"Bearer {worker_token}"}
        )
    assert missing.status_code == 401 and "primary token" in missing.json()["error"]
    assert as_worker.status_code == 403 and "worker tokens cannot" in as_worker.json()["error"]


@pytest.fixture
async def broker_admin(broker: BrokerProcess) -> AsyncIterator[BrokerClient]:
    async with BrokerClient(broker.url, broker.admin_token) as admin:
        yield admin


async def test_an_empty_message_is_rejected_with_what_to_send(client: Client) -> None:
    events = [e async for e in client.send_message(message("   "))]
    final = events[-1]
    state = final.status_update.status.state if final.HasField("status_update") else final.task.status.state
    assert state == TaskState.TASK_STATE_REJECTED
