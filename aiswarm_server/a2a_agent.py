"""The swarm as an A2A agent, served by the broker on its own port.

``GET /.well-known/agent-card.json`` is the agent card (public; its skills are the personas); ``POST /a2a`` is the
A2A 1.0 JSON-RPC endpoint (``SendMessage``, ``SendStreamingMessage``, ``GetTask``, ``CancelTask`` ...), for the
primary or admin token as ``Authorization: Bearer``. A message becomes one broker task (its text is the prompt;
``metadata.persona`` and ``metadata.working_dir`` pick the persona and the directory); the A2A task follows it:
``submitted`` until an agent claims it, ``working`` with each progress report, then an artifact with the result
and ``completed``, or ``failed`` / ``canceled``. Cancelling the A2A task cancels the broker task.

The a2a-sdk takes about 1.5 s to import, so it is imported on the first A2A request, not at broker start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiswarm_server import __version__
from aiswarm_server.broker import Broker
from aiswarm_server.errors import BrokerError
from aiswarm_server.models import Identity, Role, Task, TaskRequest, TaskStatus

if TYPE_CHECKING:
    from a2a.server.agent_execution import RequestContext
    from a2a.server.events import EventQueue
    from a2a.server.tasks import TaskUpdater
    from a2a.types import AgentCard

log = logging.getLogger("aiswarm.a2a")

CARD_PATH = "/.well-known/agent-card.json"
RPC_PATH = "/a2a"
FOLLOW_POLL_SECONDS = 1.0
IDENTITY_STATE = "aiswarm_identity"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def is_a2a_path(path: str) -> bool:
    """Whether the broker should hand this request path to the A2A endpoint."""
    return path in (CARD_PATH, RPC_PATH) or path.startswith(RPC_PATH + "/")


def agent_card(base_url: str, home: Path | None) -> AgentCard:
    """The swarm's agent card: one skill per persona, plus ``task`` for work any agent may take."""
    from a2a.types import (
        AgentCapabilities,
        AgentCard,
        AgentInterface,
        AgentSkill,
        HTTPAuthSecurityScheme,
        SecurityRequirement,
        SecurityScheme,
        StringList,
    )

    skills = [
        AgentSkill(
            id="task",
            name="task",
            description="Any coding task for the swarm's worker agents: the message text is the task's prompt.",
            tags=["coding"],
        )
    ]
    for persona in _personas(home):
        skills.append(
            AgentSkill(
                id=persona.name,
                name=persona.name,
                description=f"{persona.description} (send metadata.persona = {persona.name!r})",
                tags=list(persona.capabilities) or [persona.name],
            )
        )
    return AgentCard(
        name="aiswarm",
        description=(
            "A swarm of coding agent CLIs. Each message becomes one task done by a worker agent; the task's result "
            "is returned as an artifact. metadata.persona picks the kind of worker, metadata.working_dir the "
            "directory (absolute)."
        ),
        supported_interfaces=[
            AgentInterface(url=base_url + RPC_PATH, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        version=__version__,
        capabilities=AgentCapabilities(streaming=True),
        security_schemes={
            "bearer": SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(
                    scheme="bearer", description="The aiswarm primary token ($AISWARM_HOME/primary.token)."
                )
            )
        },
        security_requirements=[SecurityRequirement(schemes={"bearer": StringList(list=[])})],
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain", "application/json"],
        skills=skills,
    )


def _personas(home: Path | None) -> list[Any]:
    try:
        from launcher.personas import PersonaError, load_personas
    except ImportError:  # the broker alone, without the launcher package
        return []
    try:
        return sorted(load_personas(home).values(), key=lambda p: p.name)
    except (PersonaError, OSError) as error:
        log.warning("agent card without persona skills: %s", error)
        return []


class A2AEndpoint:
    """The A2A surface of one broker: built on the first request, sharing the broker's tokens and tasks."""

    def __init__(self, broker: Callable[[], Broker | None], home: Path) -> None:
        """``broker`` gives the running broker (None while it starts or stops); personas come from ``home``."""
        self._broker = broker
        self._home = home
        self._rpc: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None
        self._build_lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send, identity: Identity | None) -> None:
        """Serve the card to anyone; the JSON-RPC endpoint only to the primary or admin token."""
        from starlette.responses import JSONResponse

        if scope["path"] == CARD_PATH:
            from a2a.server.request_handlers.response_helpers import agent_card_to_dict

            card = agent_card(_base_url(scope), self._home)
            await JSONResponse(agent_card_to_dict(card))(scope, receive, send)
            return
        if identity is None or identity.role not in (Role.PRIMARY, Role.ADMIN):
            message = (
                "A2A needs the aiswarm primary token: send `Authorization: Bearer <contents of "
                "$AISWARM_HOME/primary.token>`."
                if identity is None
                else "worker tokens cannot send A2A messages; use the primary token ($AISWARM_HOME/primary.token)."
            )
            await JSONResponse(
                {"error": message},
                status_code=401 if identity is None else 403,
                headers={"www-authenticate": 'Bearer realm="aiswarm"'},
            )(scope, receive, send)
            return
        rpc = self._rpc or await self._build()
        scope.setdefault("state", {})[IDENTITY_STATE] = identity
        await rpc(scope, receive, send)

    async def _build(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        async with self._build_lock:
            if self._rpc is None:
                self._rpc = await asyncio.to_thread(self._make_rpc_app)
            return self._rpc

    def _make_rpc_app(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        from a2a.server.request_handlers import DefaultRequestHandler
        from a2a.server.routes import create_jsonrpc_routes
        from a2a.server.tasks import InMemoryTaskStore
        from starlette.applications import Starlette

        handler = DefaultRequestHandler(
            agent_executor=_make_executor(self._broker),
            task_store=InMemoryTaskStore(),
            agent_card=agent_card("http://127.0.0.1", self._home),
        )
        routes = create_jsonrpc_routes(handler, RPC_PATH, context_builder=_make_context_builder())
        return Starlette(routes=routes)


def _base_url(scope: Scope) -> str:
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
    if host is None:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}"


def _make_context_builder() -> Any:
    from a2a.auth.user import User
    from a2a.server.routes import DefaultServerCallContextBuilder

    class TokenUser(User):
        """The caller as its aiswarm token names it; A2A tasks are scoped to it."""

        def __init__(self, identity: Identity) -> None:
            self.identity = identity

        @property
        def is_authenticated(self) -> bool:
            return True

        @property
        def user_name(self) -> str:
            return self.identity.label or self.identity.role.value

    class TokenContextBuilder(DefaultServerCallContextBuilder):
        """Carries the identity the broker proved from the bearer token into the A2A call."""

        def build(self, request: Any) -> Any:
            context = super().build(request)
            identity: Identity = request.scope["state"][IDENTITY_STATE]
            context.user = TokenUser(identity)
            context.state[IDENTITY_STATE] = identity
            return context

    return TokenContextBuilder()


def _make_executor(broker: Callable[[], Broker | None]) -> Any:
    from a2a.helpers.proto_helpers import new_data_part, new_task, new_text_message, new_text_part
    from a2a.server.agent_execution import AgentExecutor
    from a2a.server.tasks import TaskUpdater
    from a2a.types import TaskState
    from google.protobuf import json_format

    def running_broker() -> Broker:
        current = broker()
        if current is None:
            raise RuntimeError("the broker is starting or stopping; retry shortly")
        return current

    class SwarmExecutor(AgentExecutor):
        """Turns an A2A message into a broker task and reports the task's life as A2A events."""

        def __init__(self) -> None:
            self.broker_tasks: dict[str, int] = {}  # A2A task id -> broker task id

        async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
            """Submit the message as a broker task, then follow it to its end."""
            task_id, context_id = context.task_id or "", context.context_id or ""
            updater = TaskUpdater(event_queue, task_id, context_id)
            prompt = context.get_user_input().strip()
            options = {**context.metadata}
            if context.message is not None:
                options.update(json_format.MessageToDict(context.message.metadata))
            identity: Identity = context.call_context.state[IDENTITY_STATE]
            submitted = new_task(task_id, context_id, TaskState.TASK_STATE_SUBMITTED)
            if context.message is not None:
                submitted.history.append(context.message)
            if not prompt:
                await event_queue.enqueue_event(submitted)
                await updater.reject(
                    new_text_message("send the work as text: the message text becomes the task's prompt")
                )
                return
            try:
                spec = TaskRequest(
                    title=_title(prompt),
                    prompt=prompt,
                    persona=_text_option(options, "persona"),
                    working_dir=_text_option(options, "working_dir"),
                )
                reply = await running_broker().submit_tasks(identity, [spec])
            except (BrokerError, ValueError) as error:
                await event_queue.enqueue_event(submitted)
                await updater.reject(new_text_message(str(error)))
                return
            broker_id = reply.tasks[0].id
            self.broker_tasks[task_id] = broker_id
            submitted.metadata.update({"aiswarm_task_id": broker_id})
            await event_queue.enqueue_event(submitted)
            await self._follow(broker_id, updater)

        async def _follow(self, broker_id: int, updater: TaskUpdater) -> None:
            seen: tuple[str, str | None, str | None] | None = None
            while True:
                current = running_broker()
                await current.wait_for_tasks([broker_id], "all", FOLLOW_POLL_SECONDS)
                task = (await current.get_task(broker_id)).task
                if task.status.is_terminal:
                    await _finish(task, updater)
                    return
                state = (task.status.value, task.claimed_by, task.progress)
                if state != seen:
                    seen = state
                    await _report(task, updater)

        async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
            """Cancel the broker task behind the A2A task."""
            task_id = context.task_id or ""
            broker_id = self.broker_tasks.get(task_id)
            if broker_id is None and context.current_task is not None:
                value = json_format.MessageToDict(context.current_task.metadata).get("aiswarm_task_id")
                broker_id = int(value) if value is not None else None
            updater = TaskUpdater(event_queue, task_id, context.context_id or "")
            if broker_id is not None:
                with contextlib.suppress(BrokerError):
                    await running_broker().cancel_task(broker_id, "cancelled by the A2A client")
            await updater.cancel(new_text_message("cancelled"))

    async def _report(task: Task, updater: TaskUpdater) -> None:
        if task.status is TaskStatus.CLAIMED:
            note = f"task #{task.id} claimed by {task.claimed_by}"
            if task.progress:
                note += f": {task.progress}"
            await updater.update_status(
                TaskState.TASK_STATE_WORKING, new_text_message(note), metadata={"aiswarm_task_id": task.id}
            )
        elif task.retry_at is not None:
            await updater.update_status(
                TaskState.TASK_STATE_WORKING,
                new_text_message(f"task #{task.id} failed an attempt ({task.error}); it will be retried"),
            )

    async def _finish(task: Task, updater: TaskUpdater) -> None:
        if task.status is TaskStatus.COMPLETED:
            parts = [new_text_part(task.result or "")]
            if task.data is not None:
                parts.append(new_data_part(task.data))
            await updater.add_artifact(parts, name="result", metadata={"aiswarm_task_id": task.id})
            await updater.complete()
        elif task.status is TaskStatus.CANCELLED:
            await updater.cancel(new_text_message(task.error or "cancelled"))
        else:
            await updater.failed(new_text_message(f"task #{task.id} ended {task.status.value}: {task.error}"))

    return SwarmExecutor()


def _title(prompt: str) -> str:
    first = " ".join(prompt.splitlines()[0].split()) if prompt else "A2A message"
    return (first[:77] + "...") if len(first) > 80 else (first or "A2A message")


def _text_option(options: dict[str, Any], name: str) -> str | None:
    value = options.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(
            f"metadata.{name} must be text, e.g. {'reviewer' if name == 'persona' else '/home/me/src'}"
        )
    return value
