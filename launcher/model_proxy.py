"""The launcher's view of the model traffic: a loopback pass-through between each agent's CLI and its provider.

The CLIs retry a rate limit silently for a long time (qwen-code made about 20 requests over 20 s before its first
stderr line, and with no ``Retry-After`` over a minute, measured with 0.24.4), so stderr alone notices a 429 late.
Each agent's provider base URL is written into its CLI as ``http://127.0.0.1:PORT/<agent>``; the proxy forwards
every request unchanged to the provider (``<base URL>/<rest of the path>``), streams the answer back unchanged,
and tells the supervisor the moment the provider refuses: a 429 (with its ``Retry-After``), a 401 or a 403. The
agent's key passes through in the request headers as the CLI sent it; the proxy neither reads nor logs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

HOST = "127.0.0.1"
REFUSALS = frozenset({401, 403, 429})
_HOP_BY_HOP = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
)

Refusal = Callable[[str, int, float | None], None]
"""``(agent, HTTP status, Retry-After seconds or None)``, called on the supervisor's loop."""
Admission = Callable[[str, str], Awaitable[tuple[int, float | None] | None]]
"""Asked ``(agent, method)`` before each request is forwarded: None forwards it; ``(status, Retry-After)``
answers it with that status instead (a spent quota pool, a CLI being stopped); a 429 is reported as a refusal."""


class ModelProxy:
    """One pass-through server for every agent of a launch; :meth:`route` names where an agent's requests go."""

    def __init__(self, on_refusal: Refusal, admit: Admission | None = None) -> None:
        self._upstreams: dict[str, str] = {}
        self._on_refusal = on_refusal
        self._admit = admit
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=30.0))
        self._server = uvicorn.Server(
            uvicorn.Config(
                Starlette(routes=[Route("/{agent}/{rest:path}", self._forward, methods=["GET", "POST"])]),
                host=HOST,
                port=0,
                log_level="warning",
                lifespan="off",
                access_log=False,
            )
        )
        self._serving: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._serving = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._serving.done():
                self._serving.result()
                raise RuntimeError("the model proxy stopped before it listened")
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close the upstream connections."""
        self._server.should_exit = True
        if self._serving is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._serving, 10)
        await self._client.aclose()

    def route(self, agent: str, upstream: str) -> str:
        """Send ``agent``'s requests to ``upstream`` (a provider base URL); returns the URL its CLI is given."""
        self._upstreams[agent] = upstream.rstrip("/")
        return f"http://{HOST}:{self.port}/{agent}"

    async def _forward(self, request: Request) -> Response:
        agent = request.path_params["agent"]
        upstream = self._upstreams.get(agent)
        if upstream is None:
            return PlainTextResponse(f"no route for agent {agent!r}", 404)
        refusal = await self._admit(agent, request.method) if self._admit is not None else None
        if refusal is not None:
            status, after = refusal
            if status in REFUSALS:
                self._on_refusal(agent, status, after)
            headers = {"Retry-After": f"{after:.0f}"} if after is not None else {}
            message = "the quota pool is spent" if status == 429 else "the launcher is stopping this CLI"
            return JSONResponse({"error": {"message": message, "code": status}}, status, headers=headers)
        url = f"{upstream}/{request.path_params['rest']}"
        if request.url.query:
            url = f"{url}?{request.url.query}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        outgoing = self._client.build_request(
            request.method, url, headers=headers, content=await request.body()
        )
        try:
            answer = await self._client.send(outgoing, stream=True)
        except httpx.HTTPError as error:
            return PlainTextResponse(
                f"the provider at {upstream} did not answer: {type(error).__name__}", 502
            )
        if answer.status_code in REFUSALS:
            self._on_refusal(agent, answer.status_code, retry_after(answer.headers.get("retry-after")))

        async def body() -> AsyncIterator[bytes]:
            async for chunk in answer.aiter_raw():
                yield chunk

        return StreamingResponse(
            body(),
            status_code=answer.status_code,
            headers={k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP},
            background=BackgroundTask(answer.aclose),
        )


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header as seconds from now (delta seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    return None
