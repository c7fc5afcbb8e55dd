"""The dashboard at ``/ui``: a task board that updates itself, the agents, one task's history, and actions.

The pages are static HTML and one script shipped inside the package; the script reads the JSON twins under
``/ui/api/`` and writes everything it shows with ``textContent``, so nothing from a task is ever parsed as HTML.
The board follows the broker's own change stream (:class:`~aiswarm_server.broker.BrokerNews`) through
server-sent events. Data and actions go through the :class:`~aiswarm_server.broker.Broker` service's methods.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from aiswarm_server.auth import AGENT_NAME
from aiswarm_server.broker import Broker, BrokerNews
from aiswarm_server.dashboard.access import SESSION_COOKIE, SESSION_SECONDS, Access, AccessDenied, Caller
from aiswarm_server.errors import BrokerError, NotFound
from aiswarm_server.models import Agent, Task, TaskRequest, TaskStatus

BOARD_COLUMNS = [
    TaskStatus.PENDING,
    TaskStatus.BLOCKED,
    TaskStatus.CLAIMED,
    TaskStatus.COMPLETED,
    TaskStatus.FAILED,
    TaskStatus.DEAD,
    TaskStatus.CANCELLED,
]
TASKS_PER_COLUMN = 100
# A board stream re-reads without news every 5 s (claims made by other brokers sharing the store), turns a burst
# of changes into one update, and ends after 10 minutes (the browser's EventSource reconnects).
STREAM_POLL_SECONDS = 5.0
STREAM_COALESCE_SECONDS = 0.2
STREAM_LIFETIME_SECONDS = 600.0
USAGE_TASKS_KEPT = 10_000  # model usage is kept in memory for this many tasks (not stored)
LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 16_384

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
FormT = TypeVar("FormT", bound=BaseModel)
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html; charset=utf-8"}


class SubmitForm(BaseModel):
    """A task submitted from the dashboard's form."""

    model_config = ConfigDict(extra="forbid", strict=True)

    title: str = Field(min_length=1, max_length=500)
    prompt: str = Field(min_length=1)
    persona: str | None = None
    priority: int = 0


class ReasonForm(BaseModel):
    """The optional reason given with a cancel or release."""

    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str | None = Field(default=None, max_length=500)


class AnswerForm(BaseModel):
    """The primary's answer to a worker's question, from the task page."""

    model_config = ConfigDict(extra="forbid", strict=True)

    answer: str = Field(min_length=1)


def _static(name: str) -> bytes:
    return resources.files("aiswarm_server.dashboard").joinpath("static", name).read_bytes()


def task_card(task: Task) -> dict[str, Any]:
    """What the board shows of a task (no prompt or result: those are on its page)."""
    return {
        "id": task.id,
        "title": task.title,
        "status": task.status.value,
        "priority": task.priority,
        "persona": task.persona,
        "agent": task.claimed_by,
        "failures": task.failures,
        "progress": task.progress,
        "question": task.question.question if task.question is not None else None,
        "updated_at": task.updated_at,
    }


def agent_view(agent: Agent) -> dict[str, Any]:
    """An agent as the dashboard shows it."""
    return agent.model_dump(
        mode="json",
        include={
            "name",
            "cli",
            "persona",
            "capabilities",
            "status",
            "current_task_id",
            "registered_at",
            "last_seen_at",
        },
    )


class Dashboard:
    """The ``/ui`` ASGI app over the running broker."""

    def __init__(self, broker: Callable[[], Broker | None], allowed_hosts: list[str]) -> None:
        self._broker = broker
        self.access = Access(allowed_hosts)
        self._listeners: set[asyncio.Event] = set()
        self._usage: dict[int, dict[str, int]] = {}  # task id -> model usage its runs reported to this broker
        self.app = Starlette(
            routes=[
                Route("/ui", self.board_page),
                Route("/ui/", self.board_page),
                Route("/ui/agents", self.agents_page),
                Route("/ui/tasks/{task_id:int}", self.task_page),
                Route("/ui/login", self.login_page, methods=["GET"]),
                Route("/ui/login", self.login, methods=["POST"]),
                Route("/ui/logout", self.logout, methods=["POST"]),
                Route("/ui/static/{name:str}", self.static),
                Route("/ui/api/session", self.api_session),
                Route("/ui/api/board", self.api_board),
                Route("/ui/api/agents", self.api_agents),
                Route("/ui/api/tasks", self.api_submit, methods=["POST"]),
                Route("/ui/api/tasks/{task_id:int}", self.api_task),
                Route("/ui/api/tasks/{task_id:int}/cancel", self.api_cancel, methods=["POST"]),
                Route("/ui/api/tasks/{task_id:int}/release", self.api_release, methods=["POST"]),
                Route("/ui/api/tasks/{task_id:int}/requeue", self.api_requeue, methods=["POST"]),
                Route("/ui/api/tasks/{task_id:int}/answer", self.api_answer, methods=["POST"]),
                Route("/ui/api/events", self.api_events),
            ]
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one request (the broker's app routes every ``/ui`` path here)."""
        await self.app(scope, receive, send)

    def observe(self, news: BrokerNews) -> None:
        """The broker's observer: add up a task's model usage; wake every open board stream."""
        usage = news.usage
        if usage is not None:
            if usage.task_id is None:
                return
            if usage.task_id not in self._usage and len(self._usage) >= USAGE_TASKS_KEPT:
                self._usage.pop(next(iter(self._usage)))
            total = self._usage.setdefault(
                usage.task_id, {"runs": 0, "requests": 0, "input_tokens": 0, "output_tokens": 0}
            )
            total["runs"] += 1
            total["requests"] += usage.requests
            total["input_tokens"] += usage.input_tokens
            total["output_tokens"] += usage.output_tokens
        for listener in self._listeners:
            listener.set()

    # plumbing --------------------------------------------------------------------------------------
    def broker(self) -> Broker:
        """The running broker, or a 503 while it starts or stops."""
        broker = self._broker()
        if broker is None:
            raise AccessDenied(503, "the broker is starting or stopping; retry shortly.")
        return broker

    async def _page(self, request: Request, name: str) -> Response:
        try:
            await self.access.caller(request, self.broker().tokens)
        except AccessDenied as denied:
            if denied.status == 401:
                return RedirectResponse("/ui/login", status_code=303)
            return _plain(denied.status, str(denied))
        return Response(_static(name), media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    async def _json(
        self, request: Request, read: Callable[[Broker, Caller], Awaitable[Any]], *, action: bool = False
    ) -> Response:
        try:
            broker = self.broker()
            check = self.access.actor if action else self.access.caller
            caller = await check(request, broker.tokens)
            return _json(200, await read(broker, caller))
        except AccessDenied as denied:
            return _json(denied.status, {"error": str(denied)})
        except NotFound as missing:
            return _json(404, {"error": str(missing)})
        except BrokerError as refused:
            return _json(400, {"error": str(refused)})

    # pages -----------------------------------------------------------------------------------------
    async def board_page(self, request: Request) -> Response:
        """The task board with the agents beside it."""
        return await self._page(request, "board.html")

    async def agents_page(self, request: Request) -> Response:
        """The agents, one row each."""
        return await self._page(request, "agents.html")

    async def task_page(self, request: Request) -> Response:
        """One task: prompt, attempts, result, error, actions."""
        return await self._page(request, "task.html")

    async def login_page(self, request: Request) -> Response:
        """The login form."""
        return _login_form(200, "")

    async def login(self, request: Request) -> Response:
        """Check the token typed in; on success set the session cookie and go to the board."""
        try:
            self.access.check_host(request)
            self.access.check_origin(request)
            body = await request.body()
            token = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
            session_id = await self.access.login(self.broker().tokens, token)
        except AccessDenied as denied:
            return _login_form(denied.status, str(denied))
        response = RedirectResponse("/ui", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=SESSION_SECONDS,
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        """Forget the session and go back to the login form."""
        try:
            self.access.check_host(request)
            self.access.check_origin(request)
        except AccessDenied as denied:
            return _plain(denied.status, str(denied))
        self.access.logout(request)
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/ui")
        return response

    async def static(self, request: Request) -> Response:
        """The script and the style sheet."""
        name: str = request.path_params["name"]
        suffix = name[name.rfind(".") :] if "." in name else ""
        if name not in ("dashboard.js", "dashboard.css"):
            return _plain(404, "no such file")
        return Response(_static(name), media_type=STATIC_TYPES[suffix], headers=SECURITY_HEADERS)

    # JSON twins ------------------------------------------------------------------------------------
    async def api_session(self, request: Request) -> Response:
        """Who is logged in, and the CSRF token the pages send with actions."""

        async def read(_broker: Broker, caller: Caller) -> dict[str, Any]:
            return {
                "role": caller.identity.role.value,
                "label": caller.identity.label,
                "csrf": caller.session.csrf if caller.session else None,
            }

        return await self._json(request, read)

    async def api_board(self, request: Request) -> Response:
        """The board: task counts by status, the newest tasks of each status, the agents."""
        return await self._json(request, lambda broker, _caller: board_snapshot(broker))

    async def api_agents(self, request: Request) -> Response:
        """The agents."""

        async def read(broker: Broker, _caller: Caller) -> dict[str, Any]:
            reply = await broker.list_agents()
            return {"agents": [agent_view(a) for a in reply.agents], "message": reply.message}

        return await self._json(request, read)

    async def api_task(self, request: Request) -> Response:
        """One task, whole: prompt, attempts, result, data, error."""
        task_id: int = request.path_params["task_id"]

        async def read(broker: Broker, _caller: Caller) -> dict[str, Any]:
            reply = await broker.get_task(task_id)
            task = reply.task
            log_tail = None
            if task.status is TaskStatus.CLAIMED and task.claimed_by is not None:
                log_tail = agent_log_tail(broker.settings.home / "logs", task.claimed_by)
            return {
                "task": task.model_dump(mode="json"),
                "usage": self._usage.get(task_id),
                "log_tail": log_tail,
                "message": reply.message,
            }

        return await self._json(request, read)

    async def api_submit(self, request: Request) -> Response:
        """Submit a task."""

        async def act(broker: Broker, caller: Caller) -> dict[str, Any]:
            form = await _form(request, SubmitForm)
            # The broker's own checks refuse what the form lets through, each with its message.
            spec = TaskRequest.model_construct(
                title=form.title, prompt=form.prompt, persona=form.persona or None, priority=form.priority
            )
            reply = await broker.submit_tasks(caller.identity, [spec])
            return reply.model_dump(mode="json")

        return await self._json(request, act, action=True)

    async def api_cancel(self, request: Request) -> Response:
        """Cancel a task (its dependents fail with it)."""
        task_id: int = request.path_params["task_id"]

        async def act(broker: Broker, caller: Caller) -> dict[str, Any]:
            form = await _form(request, ReasonForm)
            reason = (
                form.reason or f"cancelled from the dashboard by {caller.identity.label or 'the primary'}"
            )
            reply = await broker.cancel_task(task_id, reason)
            return {"task": reply.task.model_dump(mode="json"), "message": reply.message}

        return await self._json(request, act, action=True)

    async def api_release(self, request: Request) -> Response:
        """Hand a running task back to the queue without counting a failure."""
        task_id: int = request.path_params["task_id"]

        async def act(broker: Broker, caller: Caller) -> dict[str, Any]:
            form = await _form(request, ReasonForm)
            task = (await broker.get_task(task_id)).task
            if task.status is not TaskStatus.CLAIMED or task.claimed_by is None:
                raise BrokerError(
                    f"Task #{task_id} is {task.status.value}; only a running task can be released."
                )
            reason = form.reason or "released from the dashboard"
            reply = await broker.release_task(task.claimed_by, task_id, reason)
            return reply.model_dump(mode="json")

        return await self._json(request, act, action=True)

    async def api_requeue(self, request: Request) -> Response:
        """Give a dead or failed task another round, as a new task."""
        task_id: int = request.path_params["task_id"]

        async def act(broker: Broker, caller: Caller) -> dict[str, Any]:
            reply = await broker.requeue_task(caller.identity, task_id)
            return reply.model_dump(mode="json")

        return await self._json(request, act, action=True)

    async def api_answer(self, request: Request) -> Response:
        """Answer the open question of the task's worker."""
        task_id: int = request.path_params["task_id"]

        async def act(broker: Broker, caller: Caller) -> dict[str, Any]:
            form = await _form(request, AnswerForm)
            reply = await broker.answer_question(caller.identity, task_id, form.answer)
            return reply.model_dump(mode="json")

        return await self._json(request, act, action=True)

    async def api_events(self, request: Request) -> Response:
        """Server-sent events: a ``board`` event with the whole board whenever it changes."""
        try:
            broker = self.broker()
            await self.access.caller(request, broker.tokens)
        except AccessDenied as denied:
            return _json(denied.status, {"error": str(denied)})
        headers = {**SECURITY_HEADERS, "x-accel-buffering": "no"}
        return StreamingResponse(self._stream(broker), media_type="text/event-stream", headers=headers)

    async def _stream(self, broker: Broker) -> AsyncIterator[bytes]:
        changed = asyncio.Event()
        self._listeners.add(changed)
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + STREAM_LIFETIME_SECONDS
        last = ""
        try:
            yield b"retry: 2000\n\n"
            while loop.time() < ends_at:
                changed.clear()
                snapshot = json.dumps(await board_snapshot(broker), separators=(",", ":"))
                if snapshot != last:
                    last = snapshot
                    yield f"event: board\ndata: {snapshot}\n\n".encode()
                else:
                    yield b": nothing new\n\n"
                try:
                    await asyncio.wait_for(changed.wait(), STREAM_POLL_SECONDS)
                except TimeoutError:
                    continue
                await asyncio.sleep(STREAM_COALESCE_SECONDS)
        finally:
            self._listeners.discard(changed)


def agent_log_tail(logs_dir: Path, agent: str) -> list[str] | None:
    """The last lines of the agent's launcher log, if this broker's home has one (agent names are validated)."""
    if not AGENT_NAME.fullmatch(agent):
        return None
    path = logs_dir / f"{agent}.log"
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    lines = text.splitlines()
    if size > LOG_TAIL_BYTES:
        lines = lines[1:]  # the first one is cut
    return lines[-LOG_TAIL_LINES:]


async def board_snapshot(broker: Broker) -> dict[str, Any]:
    """Counts by status, the newest tasks of each column, and the agents: everything the board draws."""
    status = await broker.status()
    columns: dict[str, list[dict[str, Any]]] = {}
    for column in BOARD_COLUMNS:
        tasks = (await broker.list_tasks(column, TASKS_PER_COLUMN)).tasks
        columns[column.value] = [task_card(t) for t in tasks]
    agents = (await broker.list_agents()).agents
    return {
        "counts": {column.value: status.tasks.get(column.value, 0) for column in BOARD_COLUMNS},
        "columns": columns,
        "agents": [agent_view(a) for a in agents],
    }


async def _form(request: Request, model: type[FormT]) -> FormT:
    body = await request.body()
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BrokerError(f"{where}: {first['msg']} (send a JSON object)") from None


def _json(status: int, body: Any) -> Response:
    return JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})


def _plain(status: int, text: str) -> Response:
    return Response(
        text + "\n", status_code=status, media_type="text/plain; charset=utf-8", headers=SECURITY_HEADERS
    )


def _login_form(status: int, error: str) -> Response:
    page = _static("login.html").decode().replace("{{error}}", html.escape(error))
    return Response(page, status_code=status, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)
