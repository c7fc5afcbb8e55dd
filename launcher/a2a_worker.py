"""Remote A2A agents as swarm workers: tasks for their persona are forwarded to them.

Declared in ``$AISWARM_HOME/config.toml``::

    [a2a_agents.translator]
    url = "https://translator.example.com"     # where its agent card is (/.well-known/agent-card.json)
    persona = "translator"                     # tasks for this persona go to it
    token_env = "TRANSLATOR_TOKEN"             # optional: sent as Authorization: Bearer

``aiswarm launch`` runs one :class:`A2AWorker` per table, as the agent ``a2a-<name>``: it registers with the
broker like any worker, waits for tasks, claims one (lease and fence as usual), sends its prompt to the remote
agent as an A2A message, renews the lease with each status update it streams back (and with a heartbeat while it
is silent), and reports the outcome with the fence token. A cancelled broker task cancels the remote task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tomllib
import uuid
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aiswarm_server.broker_client import BrokerCallError, BrokerClient
from aiswarm_server.errors import BrokerError
from aiswarm_server.replies import ClaimedTask

log = logging.getLogger("aiswarm.a2a_worker")

HEARTBEAT_SECONDS = 30.0
WAIT_SECONDS = 60


class A2AAgentError(BrokerError):
    """An ``[a2a_agents.*]`` table cannot be used; one line naming it."""


class RemoteAgentSpec(BaseModel):
    """One remote A2A agent and the persona it serves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
    url: str = Field(pattern=r"^https?://")
    persona: str = Field(min_length=1, max_length=64)
    capabilities: list[str] = Field(default_factory=list)
    token_env: str | None = None
    timeout_seconds: float = Field(default=1800.0, gt=0)

    @property
    def agent_name(self) -> str:
        """The worker's name in the broker."""
        return f"a2a-{self.name}"

    def headers(self) -> dict[str, str]:
        """The remote agent's credential, read now from the launcher's environment."""
        if self.token_env is None:
            return {}
        token = os.environ.get(self.token_env, "").strip()
        if not token:
            raise A2AAgentError(
                f"a2a_agents.{self.name}: ${self.token_env} is not set; export it before launching"
            )
        return {"Authorization": f"Bearer {token}"}


def load_remote_agents(home: Path) -> list[RemoteAgentSpec]:
    """The ``[a2a_agents.*]`` tables of the home's ``config.toml``."""
    path = home / "config.toml"
    if not path.exists():
        return []
    try:
        tables = tomllib.loads(path.read_text(encoding="utf-8")).get("a2a_agents", {})
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise A2AAgentError(f"{path}: {error}") from None
    specs = []
    for name, table in tables.items():
        try:
            specs.append(RemoteAgentSpec.model_validate({**table, "name": name}))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise A2AAgentError(f"{path}: a2a_agents.{name}.{where}: {first['msg']}") from None
    return specs


class A2AWorker:
    """Forwards the tasks for one persona to one remote A2A agent, as a broker worker."""

    def __init__(self, spec: RemoteAgentSpec, broker_url: str, admin_token: str) -> None:
        """The admin token issues the worker its own agent token when it starts."""
        self.spec = spec
        self.broker_url = broker_url
        self.admin_token = admin_token
        self.done: list[int] = []
        self.cursor: str | None = None
        self.cancelled_remote: list[str] = []  # remote task ids this worker cancelled

    async def run(self) -> None:
        """Register and work until cancelled."""
        async with BrokerClient(self.broker_url, self.admin_token) as admin:
            token = (await admin.issue_agent_token(self.spec.agent_name)).token
        async with BrokerClient(self.broker_url, token) as broker:
            reply = await broker.register_agent(
                cli="a2a", persona=self.spec.persona, capabilities=self.spec.capabilities, pid=os.getpid()
            )
            self.cursor = reply.cursor
            while True:
                claim = await broker.claim_task()
                if not claim.claimed or claim.task is None or claim.fence_token is None:
                    self.cursor = (
                        await broker.wait_for_next_event(self.cursor, timeout_seconds=WAIT_SECONDS)
                    ).cursor
                    continue
                if await self._forward(broker, claim.task, claim.fence_token):
                    self.done.append(claim.task.id)

    async def _forward(self, broker: BrokerClient, task: ClaimedTask, fence: int) -> bool:
        """Send the task to the remote agent and follow it; whether an outcome was reported."""
        from a2a.client import ClientConfig, create_client
        from a2a.types import CancelTaskRequest

        try:
            headers = self.spec.headers()
        except A2AAgentError as error:
            return await self._report(broker, task, fence, False, str(error))
        async with httpx.AsyncClient(headers=headers, timeout=self.spec.timeout_seconds) as http:
            try:
                client = await create_client(self.spec.url, ClientConfig(httpx_client=http, streaming=True))
            except Exception as error:
                return await self._report(
                    broker, task, fence, False, f"cannot reach the A2A agent at {self.spec.url}: {error}"
                )
            remote = _RemoteRun()
            following = asyncio.create_task(self._follow(client, broker, task, fence, remote))
            watching = asyncio.create_task(self._watch(broker, task.id))
            try:
                done, _ = await asyncio.wait({following, watching}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for job in (following, watching):
                    job.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await job
            if following not in done or following.exception() is not None:
                # The task was cancelled or its lease lost (or a report was refused): stop the remote work.
                log.info(
                    "%s: task #%s given up: %s", self.spec.agent_name, task.id, remote.stopped or "claim lost"
                )
                if remote.id:
                    with contextlib.suppress(Exception):
                        await client.cancel_task(CancelTaskRequest(id=remote.id))
                        self.cancelled_remote.append(remote.id)
                await client.close()
                return False
            await client.close()
            success, text = following.result()
        return await self._report(broker, task, fence, success, text)

    async def _follow(
        self, client: Any, broker: BrokerClient, task: ClaimedTask, fence: int, remote: _RemoteRun
    ) -> tuple[bool, str]:
        """Stream the remote task to its end; each status it sends renews the lease."""
        from a2a.helpers.proto_helpers import get_artifact_text
        from a2a.types import Message, Part, Role, SendMessageRequest, TaskState

        request = SendMessageRequest(
            message=Message(
                role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=task.prompt)]
            ),
            metadata={"aiswarm_task_id": task.id, "title": task.title},
        )
        texts: list[str] = []
        state = TaskState.TASK_STATE_UNSPECIFIED
        note = ""
        try:
            async for event in client.send_message(request):
                if event.HasField("task"):
                    remote.id, state = event.task.id, event.task.status.state
                    texts += [get_artifact_text(a) for a in event.task.artifacts]
                elif event.HasField("status_update"):
                    state = event.status_update.status.state
                    note = " ".join(p.text for p in event.status_update.status.message.parts if p.text)
                    if note and state == TaskState.TASK_STATE_WORKING:
                        await broker.report_progress(
                            task.id, fence, note[:500]
                        )  # refused once the claim is lost
                elif event.HasField("artifact_update"):
                    texts.append(get_artifact_text(event.artifact_update.artifact))
                elif event.HasField("message"):
                    texts.append(" ".join(p.text for p in event.message.parts if p.text))
                    state = TaskState.TASK_STATE_COMPLETED
        except BrokerCallError as error:
            remote.stopped = str(error)
            raise
        except Exception as error:
            return False, f"the A2A agent at {self.spec.url} failed: {error}"
        result = "\n".join(t for t in texts if t)
        if state == TaskState.TASK_STATE_COMPLETED:
            return True, result or "done (the remote agent returned no text)"
        name = TaskState.Name(state).removeprefix("TASK_STATE_").lower()
        return False, f"the remote A2A agent ended the task {name}: {note or result}"

    async def _watch(self, broker: BrokerClient, task_id: int) -> None:
        """Return when the task is cancelled or its lease lost; meanwhile keep the agent and its lease alive."""
        while True:
            reply = await broker.wait_for_next_event(self.cursor, timeout_seconds=round(HEARTBEAT_SECONDS))
            self.cursor = reply.cursor
            if any(e.kind in ("task_cancelled", "lease_lost") and e.task_id == task_id for e in reply.events):
                return
            await broker.update_heartbeat()

    async def _report(
        self, broker: BrokerClient, task: ClaimedTask, fence: int, success: bool, text: str
    ) -> bool:
        arguments: dict[str, Any] = {"success": success, "result": text[:60_000]}
        if not success:
            arguments["error"] = text[:2000]
        try:
            await broker.report_task_completion(task.id, fence, **arguments)
        except BrokerCallError as error:
            log.info("%s: report for task #%s refused: %s", self.spec.agent_name, task.id, error)
            return False
        return True


class _RemoteRun:
    """What is known of the remote task while it runs."""

    def __init__(self) -> None:
        self.id = ""
        self.stopped = ""
