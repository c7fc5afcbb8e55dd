"""Fixtures for the scripted model tests: the model server, the real CLIs, a stand-in broker.

The CLI versions come from ``launcher/adapters/install.py``, the one place they are pinned.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel
from starlette.types import ASGIApp

from launcher.scripted_model import ScriptedModelServer
from tests.clis import CLI_PACKAGES, InstalledClis, clis

__all__ = ["CLI_PACKAGES", "InstalledClis", "clis"]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def model() -> Iterator[ScriptedModelServer]:
    """A scripted model server on loopback, fresh for each test."""
    with ScriptedModelServer() as server:
        yield server


# --- serving an ASGI app on loopback from a thread ------------------------------------------


class ThreadedServer:
    """Serve an ASGI app on 127.0.0.1 (free port) from a background thread."""

    def __init__(self, app: ASGIApp) -> None:
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True)
        self.port = 0

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("server failed to start")
            self._thread.join(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)


# --- a stand-in for the broker: claim_task and report_task_completion as in CONTRACT.md ------


class TaskView(BaseModel):
    """A task as claim_task returns it."""

    id: int
    title: str
    prompt: str
    working_dir: str | None = None
    persona: str | None = None


class ClaimResult(BaseModel):
    """claim_task's answer."""

    claimed: bool
    task: TaskView | None
    fence_token: int | None
    lease_expires_at: str | None
    message: str


class CompletionResult(BaseModel):
    """report_task_completion's answer."""

    task_id: int
    status: str
    message: str


@dataclass
class StandInBroker:
    """Tasks and reports of the stand-in broker; ``calls`` records (agent, tool, arguments)."""

    tasks: dict[int, TaskView] = field(default_factory=dict)
    status: dict[int, str] = field(default_factory=dict)
    holder: dict[int, str] = field(default_factory=dict)
    reports: list[dict[str, Any]] = field(default_factory=list)
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        """The MCP endpoint."""
        return f"http://127.0.0.1:{self.port}/mcp"

    def add_task(self, task_id: int, title: str, prompt: str, working_dir: Path) -> None:
        """Queue a pending task."""
        self.tasks[task_id] = TaskView(id=task_id, title=title, prompt=prompt, working_dir=str(working_dir))
        self.status[task_id] = "pending"

    def mcp_server(self) -> MCPServer:
        """The MCP server exposing the two worker tools over this state."""
        server = MCPServer("aiswarm")

        def agent_of(ctx: Context) -> str:
            auth = (ctx.headers or {}).get("authorization", "")
            return auth.removeprefix("Bearer ").strip() or "anonymous"

        @server.tool()
        async def claim_task(ctx: Context, task_id: int | None = None) -> ClaimResult:
            """Claim a task (the given one, or the next pending). Do the task's prompt, then call report_task_completion."""
            agent = agent_of(ctx)
            self.calls.append((agent, "claim_task", {"task_id": task_id}))
            ids = [task_id] if task_id is not None else sorted(self.tasks)
            for tid in ids:
                if self.status.get(tid) == "pending" or self.holder.get(tid) == agent:
                    self.status[tid], self.holder[tid] = "claimed", agent
                    return ClaimResult(
                        claimed=True,
                        task=self.tasks[tid],
                        fence_token=tid * 100 + 1,
                        lease_expires_at="2099-01-01T00:00:00Z",
                        message="Task claimed. Do the work in working_dir, then call report_task_completion.",
                    )
            return ClaimResult(
                claimed=False,
                task=None,
                fence_token=None,
                lease_expires_at=None,
                message="No such pending task.",
            )

        @server.tool()
        async def report_task_completion(
            ctx: Context,
            task_id: int,
            fence_token: int,
            success: bool,
            result: str,
            data: dict[str, Any] | None = None,
            error: str | None = None,
        ) -> CompletionResult:
            """Report the outcome of the task you claimed, with the fence_token claim_task gave you."""
            agent = agent_of(ctx)
            arguments = {"task_id": task_id, "fence_token": fence_token, "success": success, "result": result}
            self.calls.append((agent, "report_task_completion", {**arguments, "error": error}))
            if self.holder.get(task_id) != agent or fence_token != task_id * 100 + 1:
                return CompletionResult(
                    task_id=task_id, status="rejected", message="Not your task or stale fence."
                )
            self.reports.append({"agent": agent, **arguments, "error": error})
            self.status[task_id] = "completed" if success else "failed"
            return CompletionResult(
                task_id=task_id, status=self.status[task_id], message="Recorded. Thank you."
            )

        return server


@pytest.fixture
def broker() -> Iterator[StandInBroker]:
    """The stand-in broker served over streamable HTTP on loopback."""
    state = StandInBroker()
    with ThreadedServer(state.mcp_server().streamable_http_app(streamable_http_path="/mcp")) as served:
        state.port = served.port
        yield state
