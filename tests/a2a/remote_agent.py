"""A remote A2A agent built with a2a-sdk's server, for the outbound tests: it answers a task with its text upper-cased.

``python -m tests.a2a.remote_agent --port-file F`` serves on a free loopback port. A message containing ``WAIT``
keeps the task working until it is cancelled; every call needs ``Authorization: Bearer remote-secret``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

import uvicorn
from a2a.helpers.proto_helpers import new_task, new_text_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, TaskState
from starlette.applications import Starlette

TOKEN = "remote-secret"


class ShoutingExecutor(AgentExecutor):
    """Upper-cases the message text, reporting a working status first."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Answer the message."""
        task_id, context_id = context.task_id or "", context.context_id or ""
        await event_queue.enqueue_event(new_task(task_id, context_id, TaskState.TASK_STATE_SUBMITTED))
        updater = TaskUpdater(event_queue, task_id, context_id)
        text = context.get_user_input()
        await updater.update_status(TaskState.TASK_STATE_WORKING, new_text_message("shouting"))
        if "WAIT" in text:
            await asyncio.Event().wait()  # until the task is cancelled
        await updater.add_artifact([new_text_part(text.upper())], name="shout")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Stop."""
        await TaskUpdater(event_queue, context.task_id or "", context.context_id or "").cancel()


def app(base_url: str) -> Any:
    """The agent: card and JSON-RPC, behind a bearer check."""
    card = AgentCard(
        name="shouter",
        description="Upper-cases text",
        supported_interfaces=[
            AgentInterface(url=base_url + "/", protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        version="1.0",
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="shout", name="shout", description="Upper-cases text", tags=["text"])],
    )
    handler = DefaultRequestHandler(
        agent_executor=ShoutingExecutor(), task_store=InMemoryTaskStore(), agent_card=card
    )
    inner = Starlette(routes=[*create_agent_card_routes(card), *create_jsonrpc_routes(handler, "/")])

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        authorized = dict(scope.get("headers", [])).get(b"authorization") == f"Bearer {TOKEN}".encode()
        if scope["type"] == "http" and scope["method"] == "POST" and not authorized:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"no token"})
            return
        await inner(scope, receive, send)

    return guarded


def main() -> None:
    """Serve on a free loopback port, written to --port-file."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    with open(args.port_file, "w") as out:
        out.write(str(port))
    uvicorn.run(app(f"http://127.0.0.1:{port}"), fd=sock.fileno(), log_level="warning")


if __name__ == "__main__":
    main()
