"""MCP Tasks (the ``io.modelcontextprotocol/tasks`` extension, 2026-07-28): a submit answered with a task handle.

A primary whose client declares the extension on a ``tools/call`` of ``submit_task`` or ``submit_tasks`` gets a
``CreateTaskResult`` (``resultType: "task"``) once the broker tasks are committed, instead of the submit reply it
would then have to follow with ``wait_for_tasks``. ``tasks/get`` reads the broker tasks behind the handle (working,
with the agent and its last progress; then the finished tasks as the call's result), ``tasks/cancel`` cancels them
through the broker (the holder is told, its fence goes stale), ``subscriptions/listen`` with ``taskIds`` pushes
``notifications/tasks`` whenever one of them changes. Nothing changes for a client that does not declare the
extension, and nothing at all on the 2025-11-25 generation (no ``server/discover``, no per-request capabilities).

A handle is the broker task ids plus an HMAC keyed by the bearer token that submitted them: it names the tasks
for whoever reads it, but only that token can use it (another primary, an admin or a worker gets "not found"),
and it survives broker restarts and works on every broker sharing a PostgreSQL store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

import anyio
import anyio.streams.memory
from mcp import MCPError
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.server import require_client_extension
from mcp.server.subscriptions import SUBSCRIPTION_ID_META_KEY, ListenHandler, SubscriptionBus
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    CallToolRequestParams,
    CallToolResult,
    RequestParams,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
    TextContent,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, ConfigDict, Field

from aiswarm_server.broker import Broker, BrokerNews
from aiswarm_server.errors import BrokerError
from aiswarm_server.models import Question, Task, TaskStatus

log = logging.getLogger(__name__)

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
TASK_TOOLS = frozenset({"submit_task", "submit_tasks"})
"""The tools whose call becomes an MCP task when the client declares the extension."""

POLL_INTERVAL_MS = 2000
"""Suggested ``tasks/get`` interval: a worker takes tens of seconds at least, and a poll is one store read."""

TTL_MS: int | None = None
"""The broker keeps every task (no purge), so a handle stays valid as long as the task does: unlimited."""

_HANDLE_MAC_CHARS = 32
_MAX_SUBSCRIBED = 100
_MAX_STREAMS = 1024  # as the SDK's own listen handler
_MODERN = frozenset(MODERN_PROTOCOL_VERSIONS)

McpTaskStatus = Literal["working", "input_required", "completed", "failed", "cancelled"]


@dataclass(frozen=True, slots=True)
class McpTaskState:
    """What an MCP task says about its broker tasks: a status and a message for the user or the model."""

    status: McpTaskStatus
    message: str

    @property
    def is_terminal(self) -> bool:
        """Whether the MCP task has finished (completed, failed or cancelled) and will not change again."""
        return self.status in ("completed", "failed", "cancelled")


def mcp_task_state(tasks: Sequence[Task]) -> McpTaskState:
    """The one mapping from broker tasks to an MCP task's status (the hook for new broker states).

    Working until every task has finished, with a message naming, per unfinished task, the agent holding it and
    its last progress (or why it waits). Then ``cancelled`` when every task was cancelled, else ``completed``:
    the extension keeps ``failed`` for JSON-RPC errors, so a failed or dead broker task is a completed MCP task
    whose result is an error (``isError``), as a failed synchronous tool call would be.
    """
    unfinished = [t for t in tasks if not t.status.is_terminal or t.merge_unsettled]
    asked = [t.question for t in unfinished if t.question is not None]
    if asked:
        return McpTaskState("input_required", "; ".join(_asks_line(q) for q in asked))
    if unfinished:
        return McpTaskState("working", "; ".join(_working_line(t) for t in unfinished))
    if all(t.status is TaskStatus.CANCELLED for t in tasks):
        return McpTaskState("cancelled", "; ".join(f"#{t.id} cancelled: {t.error}" for t in tasks))
    return McpTaskState("completed", "; ".join(_finished_line(t) for t in tasks))


def _asks_line(question: Question) -> str:
    return f"#{question.task_id}'s worker {question.agent} asks: {question.question}"


def input_request_key(question: Question) -> str:
    """The key of a question's input request in ``inputRequests`` / ``inputResponses`` (unique per question)."""
    return f"question-{question.id}"


def input_request(question: Question) -> dict[str, Any]:
    """A worker's open question as the extension's input request: an elicitation of one ``answer`` field."""
    answer: dict[str, Any] = {
        "type": "string",
        "title": "Answer",
        "description": "The decision the worker asked for.",
    }
    if question.options:
        answer["enum"] = list(question.options)
    return {
        "method": "elicitation/create",
        "params": {
            "mode": "form",
            "message": _asks_line(question),
            "requestedSchema": {"type": "object", "properties": {"answer": answer}, "required": ["answer"]},
        },
    }


def _answer_of(response: Any) -> str | None:
    """The answer text in an elicitation result (``{"action": "accept", "content": {"answer": ...}}``); None for a
    declined or cancelled one (the question's deadline then decides)."""
    if not isinstance(response, dict) or response.get("action") != "accept":
        return None
    content = response.get("content")
    answer = content.get("answer") if isinstance(content, dict) else None
    return answer if isinstance(answer, str) else None


def _working_line(task: Task) -> str:
    match task.status:
        case TaskStatus.CLAIMED:
            progress = f": {task.progress}" if task.progress else ""
            return f"#{task.id} {task.title!r} is being worked on by {task.claimed_by}{progress}"
        case TaskStatus.BLOCKED if task.retry_at is not None:
            return f"#{task.id} {task.title!r} waits to be retried after a failed attempt"
        case TaskStatus.BLOCKED:
            return f"#{task.id} {task.title!r} waits for its dependencies {task.depends_on}"
        case _:
            return f"#{task.id} {task.title!r} waits for an agent"


def _finished_line(task: Task) -> str:
    if task.status is TaskStatus.COMPLETED:
        agent = task.attempts[-1].agent if task.attempts else "an agent"
        return f"#{task.id} completed by {agent}"
    return f"#{task.id} {task.status.value}: {task.error}"


# --- handles -------------------------------------------------------------------------------------------


def task_handle(token: str, task_ids: Sequence[int]) -> str:
    """The MCP task id for broker tasks submitted with ``token``: ``12.13-<mac>``."""
    ids = ".".join(str(i) for i in task_ids)
    return f"{ids}-{_mac(token, ids)}"


def handle_task_ids(token: str, handle: str) -> list[int] | None:
    """The broker task ids behind ``handle`` if ``token`` made it, else None (unknown, forged or someone else's)."""
    ids, _, mac = handle.rpartition("-")
    if not ids or len(mac) != _HANDLE_MAC_CHARS or not hmac.compare_digest(mac, _mac(token, ids)):
        return None
    try:
        return [int(part) for part in ids.split(".")]
    except ValueError:
        return None


def _mac(token: str, ids: str) -> str:
    digest = hmac.new(token.encode(), f"aiswarm mcp task {ids}".encode(), hashlib.sha256)
    return digest.hexdigest()[:_HANDLE_MAC_CHARS]


# --- wire shapes ---------------------------------------------------------------------------------------


class TaskHandleParams(RequestParams):
    """``tasks/get`` and ``tasks/cancel``: the task's id."""

    task_id: str = Field(alias="taskId", min_length=1, max_length=4096)


class UpdateTaskParams(TaskHandleParams):
    """``tasks/update``: answers to the task's outstanding input requests."""

    input_responses: dict[str, Any] = Field(default_factory=dict, alias="inputResponses")


class _TasksNotification(BaseModel):
    """``notifications/tasks``: a task's full state, as ``tasks/get`` would return it."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["notifications/tasks"] = "notifications/tasks"
    params: dict[str, Any]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _call_result(reply: BaseModel, is_error: bool) -> dict[str, Any]:
    """A ``CallToolResult`` carrying ``reply`` the way the SDK shapes a tool's pydantic return value."""
    structured = reply.model_dump(mode="json")
    text = json.dumps(structured, indent=2, ensure_ascii=False)
    result = CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)
    result.is_error = is_error
    return result.model_dump(by_alias=True, mode="json", exclude_none=True, exclude={"result_type"})


# --- the extension -------------------------------------------------------------------------------------


class BrokerTasks(Extension):
    """The tasks extension on a primary's (or admin's) MCP server, over the broker's own tasks."""

    identifier = TASKS_EXTENSION

    def __init__(self, broker: Callable[[], Broker]) -> None:
        self._broker = broker

    def methods(self) -> Sequence[MethodBinding]:
        """``tasks/get``, ``tasks/update`` and ``tasks/cancel``, on the 2026-07-28 generation only."""
        return (
            MethodBinding("tasks/get", TaskHandleParams, self._get, _MODERN),
            MethodBinding("tasks/update", UpdateTaskParams, self._update, _MODERN),
            MethodBinding("tasks/cancel", TaskHandleParams, self._cancel, _MODERN),
        )

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """Answer a submit with a task handle when this request declares the extension; anything else passes."""
        if params.name not in TASK_TOOLS or ctx.protocol_version not in _MODERN or not _declared(ctx):
            return await call_next(ctx)
        result = await call_next(ctx)
        token = _bearer(ctx)
        if not isinstance(result, CallToolResult) or result.is_error or token is None:
            return result  # a refused submit stays the plain refusal the model can act on
        submitted = (result.structured_content or {}).get("tasks") or []
        ids = [t["id"] for t in submitted if isinstance(t, dict) and isinstance(t.get("id"), int)]
        if not ids:
            return result
        # The submit has committed the tasks, so tasks/get resolves the handle from here on (spec: durably created).
        tasks = await self._broker().store.get_tasks(ids)
        return {"resultType": "task", **await self._detailed(token, ids, tasks, with_payload=False)}

    async def detailed_task(self, token: str, handle: str) -> dict[str, Any]:
        """The ``DetailedTask`` behind ``handle`` (what ``tasks/get`` and ``notifications/tasks`` carry)."""
        ids = self._resolve(token, handle)
        return await self._detailed(token, ids, await self._broker().store.get_tasks(ids))

    def resolve(self, token: str, handle: str) -> list[int] | None:
        """The broker task ids of a handle ``token`` may use, or None."""
        return handle_task_ids(token, handle)

    async def _get(self, ctx: ServerRequestContext[Any, Any], params: TaskHandleParams) -> HandlerResult:
        require_client_extension(ctx, TASKS_EXTENSION)
        return {"resultType": "complete", **await self.detailed_task(_require_bearer(ctx), params.task_id)}

    async def _update(self, ctx: ServerRequestContext[Any, Any], params: UpdateTaskParams) -> HandlerResult:
        require_client_extension(ctx, TASKS_EXTENSION)
        token = _require_bearer(ctx)
        ids = self._resolve(token, params.task_id)
        broker = self._broker()
        identity = broker.tokens.authenticate_cached(token)
        if identity is None:
            raise MCPError(INVALID_REQUEST, "Send your aiswarm token as `Authorization: Bearer <token>`.")
        open_questions = {
            input_request_key(t.question): t.id
            for t in await broker.store.get_tasks(ids)
            if t.question is not None
        }
        # The spec has the server ignore responses to keys it did not issue (or no longer has outstanding).
        for key, response in params.input_responses.items():
            answer = _answer_of(response)
            if key not in open_questions or answer is None:
                continue
            try:
                await broker.answer_question(identity, open_questions[key], answer)
            except BrokerError as error:
                raise MCPError(INVALID_PARAMS, f"Failed to answer {key}: {error}") from error
        return {"resultType": "complete"}

    async def _cancel(self, ctx: ServerRequestContext[Any, Any], params: TaskHandleParams) -> HandlerResult:
        require_client_extension(ctx, TASKS_EXTENSION)
        ids = self._resolve(_require_bearer(ctx), params.task_id)
        broker = self._broker()
        for task_id in ids:
            try:
                await broker.cancel_task(task_id, "cancelled by the primary agent (MCP tasks/cancel)")
            except BrokerError as error:
                raise MCPError(INVALID_PARAMS, f"Failed to cancel task: {error}") from error
        return {"resultType": "complete"}

    def _resolve(self, token: str, handle: str) -> list[int]:
        ids = handle_task_ids(token, handle)
        if ids is None:
            raise MCPError(INVALID_PARAMS, "Failed to retrieve task: Task not found")
        return ids

    async def _detailed(
        self, token: str, ids: list[int], tasks: list[Task], *, with_payload: bool = True
    ) -> dict[str, Any]:
        if len(tasks) != len(ids):
            raise MCPError(INVALID_PARAMS, "Failed to retrieve task: Task not found")
        state = mcp_task_state(tasks)
        detailed: dict[str, Any] = {
            "taskId": task_handle(token, ids),
            "status": state.status,
            "statusMessage": state.message,
            "createdAt": _iso(min(t.created_at for t in tasks)),
            "lastUpdatedAt": _iso(max(t.updated_at for t in tasks)),
            "ttlMs": TTL_MS,
            "pollIntervalMs": POLL_INTERVAL_MS,
        }
        if state.status == "input_required":
            detailed["inputRequests"] = {
                input_request_key(t.question): input_request(t.question)
                for t in tasks
                if t.question is not None
            }
        if with_payload and state.status == "completed":
            reply = await self._broker().wait_for_tasks(ids, "all", 0)
            failed = any(t.status is not TaskStatus.COMPLETED for t in reply.tasks)
            detailed["result"] = _call_result(reply, is_error=failed)
        return detailed


def _declared(ctx: ServerRequestContext[Any, Any]) -> bool:
    capabilities = ctx.session.client_capabilities
    extensions = capabilities.extensions if capabilities else None
    return bool(extensions) and TASKS_EXTENSION in cast(dict[str, Any], extensions)


def _bearer(ctx: ServerRequestContext[Any, Any]) -> str | None:
    headers = cast(Any, getattr(ctx.request, "headers", None)) or {}
    value = str(headers.get("authorization", ""))
    if not value.lower().startswith("bearer "):
        return None
    return value[7:].strip() or None


def _require_bearer(ctx: ServerRequestContext[Any, Any]) -> str:
    token = _bearer(ctx)
    if token is None:
        raise MCPError(INVALID_REQUEST, "Send your aiswarm token as `Authorization: Bearer <token>`.")
    return token


# --- push: subscriptions/listen with taskIds -----------------------------------------------------------


class TaskListenHandler:
    """``subscriptions/listen``: the SDK's handler, unless the request names ``taskIds``; then a stream of
    ``notifications/tasks`` for the handles this caller may use, sent whenever one of their broker tasks changes.

    A listen without ``taskIds`` is handed to the SDK's handler untouched. The stream starts with the current
    state of each honoured task (a change between the submit and the listen is never missed), then follows the
    broker's news: the observer only queues the ids it heard of, and this handler re-reads the tasks."""

    def __init__(self, tasks: BrokerTasks, standard: ListenHandler, broker: Callable[[], Broker]) -> None:
        self._tasks = tasks
        self._standard = standard
        self._broker = broker
        self._streams: set[anyio.streams.memory.MemoryObjectSendStream[frozenset[int]]] = set()
        self._observed: Broker | None = None

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams
    ) -> SubscriptionsListenResult:
        """Serve one listen stream."""
        requested = (params.notifications.model_extra or {}).get("taskIds")
        if requested is None:
            return await self._standard(ctx, params)
        require_client_extension(ctx, TASKS_EXTENSION)
        if not isinstance(requested, list) or not all(isinstance(h, str) for h in requested):
            raise MCPError(INVALID_PARAMS, "notifications.taskIds must be a list of task ids (strings).")
        if ctx.request_id is None:
            raise MCPError(INVALID_REQUEST, "subscriptions/listen requires a request id")
        if len(self._streams) >= _MAX_STREAMS:
            raise MCPError(INTERNAL_ERROR, "Subscription limit reached")
        token = _require_bearer(ctx)
        handles = {
            h: ids
            for h in cast(list[str], requested)[:_MAX_SUBSCRIBED]
            if (ids := self._tasks.resolve(token, h))
        }
        self._observe()
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: ctx.request_id}
        send, receive = anyio.create_memory_object_stream[frozenset[int]](1024)
        self._streams.add(send)
        try:
            ack = {"notifications": {"taskIds": list(handles)}, "_meta": meta}
            await self._notify(ctx, "notifications/subscriptions/acknowledged", ack)
            last: dict[str, tuple[str, str, str]] = {}
            await self._push(ctx, token, handles, set(handles), last, meta)
            async for changed in receive:
                touched = {h for h, ids in handles.items() if changed.intersection(ids)}
                if touched:
                    await self._push(ctx, token, handles, touched, last, meta)
        finally:
            self._streams.discard(send)
            send.close()
            receive.close()
        return SubscriptionsListenResult(_meta=meta)

    def _observe(self) -> None:
        broker = self._broker()
        if self._observed is not broker:
            broker.observers.append(self._on_news)
            self._observed = broker

    def _on_news(self, news: BrokerNews) -> None:
        if not self._streams:
            return
        change = news.change
        ids = (
            {t.id for t in (*change.created, *change.claimable)}
            | set(change.finished)
            | set(change.questions)
        )
        if change.task is not None:
            ids.add(change.task.id)
        if not ids:
            return
        frozen = frozenset(ids)
        for stream in list(self._streams):
            try:
                stream.send_nowait(frozen)
            except anyio.WouldBlock:
                log.warning("a tasks listen stream is not being read; ending it")
                self._streams.discard(stream)
                stream.close()
            except anyio.ClosedResourceError:
                self._streams.discard(stream)

    async def _push(
        self,
        ctx: ServerRequestContext[Any, Any],
        token: str,
        handles: dict[str, list[int]],
        touched: Iterable[str],
        last: dict[str, tuple[str, str, str]],
        meta: dict[str, Any],
    ) -> None:
        for handle in touched:
            try:
                detailed = await self._tasks.detailed_task(token, handle)
            except MCPError:
                continue
            seen = (detailed["status"], detailed["statusMessage"], detailed["lastUpdatedAt"])
            if last.get(handle) == seen:
                continue
            last[handle] = seen
            await self._notify(ctx, "notifications/tasks", {**detailed, "_meta": meta})

    @staticmethod
    async def _notify(ctx: ServerRequestContext[Any, Any], method: str, params: dict[str, Any]) -> None:
        notification = _TasksNotification.model_construct(method=method, params=params)
        await ctx.session.send_notification(cast(Any, notification), related_request_id=ctx.request_id)


def serve_task_notifications(
    server: MCPServer, tasks: BrokerTasks, bus: SubscriptionBus, broker: Callable[[], Broker]
) -> None:
    """Serve ``subscriptions/listen`` on ``server`` (built with ``extensions=[tasks]``, ``subscriptions=bus``) with
    :class:`TaskListenHandler`: the SDK's stream as before, plus ``notifications/tasks`` for ``taskIds``."""
    handler = TaskListenHandler(tasks, ListenHandler(bus), broker)
    server._lowlevel_server.add_request_handler(  # pyright: ignore[reportPrivateUsage]
        "subscriptions/listen", SubscriptionsListenRequestParams, handler
    )
