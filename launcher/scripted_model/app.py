"""The Starlette app: model endpoints for both protocols, plus ``/_stats`` and ``/_control``.

Routes:

* ``POST /v1/chat/completions`` (also ``/chat/completions``), ``GET /v1/models``: OpenAI.
* ``POST /v1beta/models/{model}:streamGenerateContent`` / ``:generateContent`` / ``:countTokens``: Gemini.
* ``POST /v1/messages``, ``POST /v1/messages/count_tokens``: Anthropic (Claude Code); ``HEAD /api/hello``
  answers the connectivity probe Claude Code sends first.
* ``POST /v1/responses``: the OpenAI Responses API (codex).
* ``GET /_stats``: request counts (see :meth:`ModelState.snapshot`).
* ``POST /_control``: ``{"op": "fault", ...FaultSpec}`` returns ``{"fault_id": n}``;
  ``{"op": "clear", "fault_id"?, "agent"?, "cli"?}``; ``{"op": "reset_stats"}``.

The agent is the ``X-Aiswarm-Agent`` header. The CLI kind is ``X-Aiswarm-Cli`` if sent,
else inferred: the Gemini endpoints are gemini-cli, the Messages API Claude Code, the Responses
API codex; on the chat completions endpoint qwen names MCP tools ``mcp__...`` and opencode
declares its ``bash``/``write`` tools.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from launcher.scripted_model import anthropic_protocol, gemini_protocol, openai_protocol, responses_protocol
from launcher.scripted_model.conversation import Conversation
from launcher.scripted_model.policy import Answer, Step, decide
from launcher.scripted_model.state import REJECTED, UNKNOWN_AGENT, FaultSpec, ModelState, RequestRecord

AGENT_HEADER = "x-aiswarm-agent"
CLI_HEADER = "x-aiswarm-cli"
TRACE_ENV = "AISWARM_SCRIPTED_MODEL_TRACE"


def create_app(state: ModelState | None = None) -> Starlette:
    """A scripted model app; pass ``state`` to share counters and faults with the caller."""
    model_state = state or ModelState()
    call_ids = itertools.count(1)
    trace_path = os.environ.get(TRACE_ENV)

    def trace(request: Request, body: dict[str, Any], step: Step | None) -> None:
        if trace_path:
            entry = {
                "time": time.time(),
                "path": request.url.path,
                "headers": dict(request.headers),
                "body": body,
                "step": repr(step),
            }
            with open(trace_path, "a", encoding="utf-8") as out:
                out.write(json.dumps(entry) + "\n")

    async def rejected(
        agent: str, cli: str, error_body: Callable[[int, str], dict[str, Any]]
    ) -> Response | None:
        fault = model_state.take_fault(agent, cli)
        if fault is None:
            return None
        if fault.delay_seconds:
            await asyncio.sleep(fault.delay_seconds)
        if fault.status is None:
            return None
        model_state.record(RequestRecord(agent, cli, REJECTED, status=fault.status))
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
        return JSONResponse(error_body(fault.status, fault.message), fault.status, headers=headers)

    def answer(agent: str, cli: str, conversation: Conversation) -> Step:
        step = decide(conversation)
        tool = None if isinstance(step, Answer) else step.name
        model_state.record(RequestRecord(agent, cli, step.kind.value, tool))
        return step

    async def chat_completions(request: Request) -> Response:
        body = await _json(request)
        conversation = openai_protocol.conversation_from_request(body)
        agent = request.headers.get(AGENT_HEADER, UNKNOWN_AGENT)
        cli = request.headers.get(CLI_HEADER) or _openai_cli(request, conversation)
        if (refusal := await rejected(agent, cli, openai_protocol.error_body)) is not None:
            return refusal
        step = answer(agent, cli, conversation)
        trace(request, body, step)
        call_id = f"call_{next(call_ids)}"
        if body.get("stream"):

            async def chunks() -> AsyncIterator[str]:
                for chunk in openai_protocol.completion_chunks(body, step, call_id):
                    yield chunk

            return StreamingResponse(chunks(), media_type="text/event-stream")
        return JSONResponse(openai_protocol.completion(body, step, call_id))

    async def list_models(request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": "scripted", "object": "model", "owned_by": "aiswarm"}]}
        )

    async def gemini(request: Request) -> Response:
        model, _, method = request.path_params["target"].rpartition(":")
        body = await _json(request)
        if method == "countTokens":
            return JSONResponse(gemini_protocol.count_tokens(body))
        if method not in ("generateContent", "streamGenerateContent"):
            return JSONResponse(gemini_protocol.error_body(404, f"unknown method {method!r}"), 404)
        agent = request.headers.get(AGENT_HEADER, UNKNOWN_AGENT)
        cli = request.headers.get(CLI_HEADER) or "gemini"
        if (refusal := await rejected(agent, cli, gemini_protocol.error_body)) is not None:
            return refusal
        conversation = gemini_protocol.conversation_from_request(body)
        step = answer(agent, cli, conversation)
        trace(request, body, step)
        response = gemini_protocol.generate_response(body, step, f"call_{next(call_ids)}", model)
        if method == "streamGenerateContent":

            async def events() -> AsyncIterator[str]:
                yield f"data: {json.dumps(response)}\r\n\r\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse(response)

    async def messages(request: Request) -> Response:
        body = await _json(request)
        agent = request.headers.get(AGENT_HEADER, UNKNOWN_AGENT)
        cli = request.headers.get(CLI_HEADER) or "claude"
        if (refusal := await rejected(agent, cli, anthropic_protocol.error_body)) is not None:
            return refusal
        step = answer(agent, cli, anthropic_protocol.conversation_from_request(body))
        trace(request, body, step)
        call_id = f"call_{next(call_ids)}"
        if body.get("stream"):
            return _event_stream(anthropic_protocol.message_events(body, step, call_id))
        return JSONResponse(anthropic_protocol.message(body, step, call_id))

    async def count_message_tokens(request: Request) -> Response:
        return JSONResponse(anthropic_protocol.count_tokens(await _json(request)))

    async def hello(request: Request) -> Response:
        return Response(status_code=200)

    async def responses(request: Request) -> Response:
        body = await _json(request)
        agent = request.headers.get(AGENT_HEADER, UNKNOWN_AGENT)
        cli = request.headers.get(CLI_HEADER) or "codex"
        if (refusal := await rejected(agent, cli, responses_protocol.error_body)) is not None:
            return refusal
        step = answer(agent, cli, responses_protocol.conversation_from_request(body))
        trace(request, body, step)
        call_id = f"call_{next(call_ids)}"
        if body.get("stream"):
            return _event_stream(responses_protocol.response_events(body, step, call_id))
        return JSONResponse(responses_protocol.response(body, step, call_id))

    async def stats(request: Request) -> Response:
        return JSONResponse(model_state.snapshot())

    async def control(request: Request) -> Response:
        body = await _json(request)
        op = body.pop("op", None)
        if op == "fault":
            try:
                spec = FaultSpec.model_validate(body)
            except ValidationError as exc:
                return JSONResponse({"error": str(exc)}, 400)
            return JSONResponse({"fault_id": model_state.add_fault(spec)})
        if op == "clear":
            cleared = model_state.clear_faults(body.get("fault_id"), body.get("agent"), body.get("cli"))
            return JSONResponse({"cleared": cleared})
        if op == "reset_stats":
            model_state.reset_stats()
            return JSONResponse({"reset": True})
        return JSONResponse({"error": f"unknown op {op!r}; use fault, clear or reset_stats"}, 400)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1beta/models/{target:path}", gemini, methods=["POST"]),
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", count_message_tokens, methods=["POST"]),
            Route("/api/hello", hello, methods=["GET", "HEAD"]),
            Route("/v1/responses", responses, methods=["POST"]),
            Route("/_stats", stats, methods=["GET"]),
            Route("/_control", control, methods=["POST"]),
        ]
    )


async def _json(request: Request) -> dict[str, Any]:
    try:
        value = await request.json()
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _event_stream(events: Iterator[str]) -> StreamingResponse:
    async def chunks() -> AsyncIterator[str]:
        for event in events:
            yield event

    return StreamingResponse(chunks(), media_type="text/event-stream")


def _openai_cli(request: Request, conversation: Conversation) -> str:
    agent = request.headers.get("user-agent", "").lower()
    names = {t.name for t in conversation.tools}
    if "qwen" in agent or any(n.startswith("mcp__") for n in names):
        return "qwen"
    if "opencode" in agent or "ai-sdk" in agent or {"bash", "write"} & names:
        return "opencode"
    return "unknown"
