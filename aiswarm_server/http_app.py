"""The ASGI app: streamable HTTP MCP at ``/mcp`` (one MCP server per role, chosen by token), ``/health``, ``/metrics``,
the dashboard at ``/ui``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from aiswarm_server import __version__
from aiswarm_server.a2a_agent import A2AEndpoint, is_a2a_path
from aiswarm_server.broker import Broker
from aiswarm_server.config import BrokerSettings
from aiswarm_server.dashboard import Dashboard
from aiswarm_server.gateway.gateway import Gateway
from aiswarm_server.metrics import CONTENT_TYPE, BrokerMetrics
from aiswarm_server.models import Identity, Role
from aiswarm_server.store import open_store
from aiswarm_server.tasklog import BrokerTaskLog
from aiswarm_server.tools import BrokerRef, build_servers
from aiswarm_server.waiters import EXCHANGE_OVER

log = logging.getLogger("aiswarm.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The protocol versions served by sessions (``initialize``, ``Mcp-Session-Id``); a request without the header is one.
_SESSION_VERSIONS = frozenset(v.encode() for v in HANDSHAKE_PROTOCOL_VERSIONS)


def transport_security(settings: BrokerSettings) -> TransportSecuritySettings:
    """Host/Origin checks (DNS-rebinding protection): loopback names always, the bind address when remote."""
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    if not settings.is_loopback:
        bound = f"[{settings.host}]" if ":" in settings.host else settings.host
        hosts.append(f"{bound}:*")
        origins.append(f"http://{bound}:*")
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


async def _send_json(
    send: Send,
    status: int,
    body: dict[str, Any],
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:  # type: ignore[assignment]
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _too_large(send: Send, limit: int) -> None:
    await _send_json(
        send,
        413,
        {
            "error": f"request body over {limit} bytes (AISWARM_MAX_REQUEST_BYTES). Send large inputs as files in "
            "the working directory and put their paths in the prompt."
        },
    )


async def _read_bounded(receive: Receive, limit: int) -> Receive | None:
    """Read a body without a Content-Length, up to ``limit`` bytes; a ``receive`` that replays it, or None."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    return replay


class _DisconnectWatch:
    """A ``receive`` that, once the request body has been read, keeps listening for the client hanging up.

    The server answers a session's call with one JSON body and reads nothing after the request, so nothing else
    would notice; ``over`` is resolved when the client hangs up, or when the response is complete (the server then
    reports ``http.disconnect`` too). The listener ends by itself either way: nothing is cancelled per call.
    """

    __slots__ = ("_listener", "_over", "_receive")

    def __init__(self, receive: Receive, over: asyncio.Future[None]) -> None:
        self._receive = receive
        self._over = over
        self._listener: asyncio.Task[Message] | None = None

    async def __call__(self) -> Message:
        if self._listener is not None:
            return await asyncio.shield(self._listener)
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._hung_up()
        elif not message.get("more_body", False):
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        return message

    async def _listen(self) -> Message:
        message = await self._receive()
        self._hung_up()
        return message

    def _hung_up(self) -> None:
        if not self._over.done():
            self._over.set_result(None)


def _caller(broker: Broker, request: Any) -> Identity | None:
    """Who an MCP request comes from, by its bearer token (the HTTP layer has already checked it)."""
    value = request.headers.get("authorization", "") if request is not None else ""
    token = value[7:].strip() if value.lower().startswith("bearer ") else None
    return broker.tokens.authenticate_cached(token)


class BrokerApp:
    """The whole HTTP surface as one small ASGI callable (no framework routing on the hot path)."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.ref = BrokerRef()
        self.servers: dict[Role, MCPServer] = build_servers(self.ref, settings)
        security = transport_security(settings)
        self.role_apps: dict[Role, ASGIApp] = {
            role: server.streamable_http_app(
                streamable_http_path="/mcp", transport_security=security, host=settings.host
            )
            for role, server in self.servers.items()
        }
        # Sessions (protocol 2025-11-25 and older: gemini-cli, qwen-code) are answered with one JSON body per call
        # instead of an SSE stream per call, whose tasks left ~130 objects of cyclic garbage per call (docs/BENCHMARK.md).
        self.session_managers: dict[Role, StreamableHTTPSessionManager] = {
            role: StreamableHTTPSessionManager(
                server.session_manager.app, json_response=True, security_settings=security
            )
            for role, server in self.servers.items()
        }
        self.broker: Broker | None = None
        self.a2a: A2AEndpoint | None = None
        self.gateway = Gateway.from_home(settings.home)
        if self.gateway.upstreams:  # no upstreams: no middleware on the hot path
            for server in self.servers.values():
                server.middleware.append(self.gateway.middleware(lambda: self.broker, _caller))
        self.on_ready: list[Callable[[Broker], None]] = []
        self.on_stop: list[Callable[[], None]] = []
        self.dashboard = Dashboard(lambda: self.broker, security.allowed_hosts)
        self.on_ready.append(lambda broker: broker.observers.append(self.dashboard.observe))
        self.metrics = BrokerMetrics()
        self.on_ready.append(self.metrics.attach)
        if settings.log_format == "json":
            task_log = BrokerTaskLog(settings.home / "logs")
            self.on_ready.append(task_log.attach)
            self.on_stop.append(task_log.close)

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Open the broker (store, tokens, sweeper) and the role servers' session managers for as long as the app serves."""
        settings = self.settings
        settings.home.mkdir(parents=True, exist_ok=True)
        broker = Broker(open_store(settings), settings)
        await broker.start()
        try:
            await broker.tokens.ensure_local_token(settings.home, Role.ADMIN)
            await broker.tokens.ensure_local_token(settings.home, Role.PRIMARY)
            self.broker = broker
            self.ref.broker = broker
            async with contextlib.AsyncExitStack() as stack:
                self.gateway.start()
                stack.push_async_callback(self.gateway.stop)
                for server in self.servers.values():
                    await stack.enter_async_context(server.session_manager.run())
                for manager in self.session_managers.values():
                    await stack.enter_async_context(manager.run())
                for callback in self.on_ready:
                    callback(broker)
                yield
        finally:
            # Runs on graceful shutdown, before uvicorn re-raises a captured SIGTERM/SIGINT.
            self.ref.broker = None
            for stop_callback in self.on_stop:
                stop_callback()
            await broker.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route one ASGI event: lifespan, ``/mcp`` (authenticated, body size bounded), ``/health``, ``/metrics``, else 404."""
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return
        path: str = scope["path"]
        if path == "/mcp" or path == "/mcp/":
            await self._mcp(scope, receive, send)
        elif path == "/health":
            await _send_json(send, 200, {"status": "ok", "service": "aiswarm", "version": __version__})
        elif path == "/metrics":
            await self._metrics(send)
        elif path == "/ui" or path.startswith("/ui/"):
            await self.dashboard(scope, receive, send)
        elif is_a2a_path(path):
            await self._a2a(scope, receive, send)
        else:
            await _send_json(send, 404, {"error": f"no such endpoint {path}; MCP is served at /mcp"})

    async def _mcp(self, scope: Scope, receive: Receive, send: Send) -> None:
        broker = self.broker
        if broker is None:
            await _send_json(send, 503, {"error": "the broker is starting or stopping; retry shortly"})
            return
        token = None
        length: bytes | None = None
        version: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                text = value.decode("latin-1")
                if text[:7].lower() == "bearer ":
                    token = text[7:].strip()
            elif name == b"content-length":
                length = value
            elif name == b"mcp-protocol-version":
                version = value
        limit = self.settings.max_request_bytes
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _too_large(send, limit)
            return
        if length is None and scope["method"] == "POST":
            replay = await _read_bounded(receive, limit)  # a chunked body: read it, with the same bound
            if replay is None:
                await _too_large(send, limit)
                return
            receive = replay
        identity = await broker.tokens.authenticate(token)
        if identity is None:
            reason = "missing" if token is None else "invalid or revoked"
            await _send_json(
                send,
                401,
                {
                    "error": f"aiswarm token {reason}: send `Authorization: Bearer <token>`. "
                    "The primary token is in $AISWARM_HOME/primary.token; `aiswarm token issue --agent NAME` makes "
                    "a worker token."
                },
                [(b"www-authenticate", b'Bearer realm="aiswarm"')],
            )
            return
        if version is not None and version not in _SESSION_VERSIONS:
            await self.role_apps[identity.role](scope, receive, send)
            return
        manager = self.session_managers[identity.role]
        if scope["method"] != "POST":
            await manager.handle_request(scope, receive, send)
            return
        # A session's call runs in the session's task and outlives this POST if the client hangs up or ends the
        # session: tell it when the exchange is over (the client hung up, or the POST's response ended).
        exchange_over: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        context = EXCHANGE_OVER.set(exchange_over)
        try:
            await manager.handle_request(scope, _DisconnectWatch(receive, exchange_over), send)
        finally:
            EXCHANGE_OVER.reset(context)
            if not exchange_over.done():
                exchange_over.set_result(None)

    async def _a2a(self, scope: Scope, receive: Receive, send: Send) -> None:
        broker = self.broker
        if broker is None:
            await _send_json(send, 503, {"error": "the broker is starting or stopping; retry shortly"})
            return
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                text = value.decode("latin-1")
                if text[:7].lower() == "bearer ":
                    token = text[7:].strip()
            elif name == b"content-length" and (
                not value.isdigit() or int(value) > self.settings.max_request_bytes
            ):
                await _too_large(send, self.settings.max_request_bytes)
                return
        if self.a2a is None:
            self.a2a = A2AEndpoint(lambda: self.broker, self.settings.home)
        identity = await broker.tokens.authenticate(token) if token else None
        await self.a2a(scope, receive, send, identity)

    async def _metrics(self, send: Send) -> None:
        body = await self.metrics.render()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        context = self.lifespan()
        try:
            await context.__aenter__()
        except BaseException as error:
            log.error("broker failed to start: %s", error)
            await send({"type": "lifespan.startup.failed", "message": str(error)})
            raise
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        try:
            await context.__aexit__(None, None, None)
        finally:
            await send({"type": "lifespan.shutdown.complete"})
