"""A loopback reverse proxy that adds ``Authorization: Bearer <token>`` to every request.

The MCP conformance harness cannot send custom headers, and the broker has (deliberately) no unauthenticated
mode: the harness talks to this proxy, which forwards everything else verbatim, Host and Origin included, so the
broker's own DNS-rebinding checks still see what the harness sent. Responses, SSE streams included, are relayed
chunk by chunk.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Any

import httpx
import uvicorn

Message = MutableMapping[str, Any]
_HOP_BY_HOP = {b"authorization", b"content-length", b"connection", b"transfer-encoding", b"keep-alive"}


class AuthProxy:
    """``with AuthProxy("http://127.0.0.1:PORT", token) as proxy: proxy.url`` (serves on a free loopback port)."""

    def __init__(self, upstream: str, token: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.token = token
        config = uvicorn.Config(self, host="127.0.0.1", port=0, lifespan="off", log_level="critical")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def __enter__(self) -> AuthProxy:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the auth proxy failed to start")
            self._thread.join(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # The harness leaves SSE streams open (relayed from the broker, which keeps them open until it stops):
        # a graceful shutdown would wait for them until the join below gave up. Nothing of ours is in flight.
        self._server.force_exit = True
        self._server.should_exit = True
        self._thread.join(15)

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        headers.append((b"authorization", f"Bearer {self.token}".encode()))
        target = (
            self.upstream
            + scope["path"]
            + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
        )
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=None)) as client:
            request = client.build_request(scope["method"], target, headers=headers, content=body)
            response = await client.send(request, stream=True)
            try:
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP],
                    }
                )
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                await response.aclose()
