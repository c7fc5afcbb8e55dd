"""OpenAI chat completions, as qwen-code and opencode speak it.

Only what the CLIs use: ``messages`` with text, ``tool_calls`` and ``tool`` results,
``tools`` as functions, ``response_format`` for JSON side requests, and ``stream`` (SSE
chunks ending in ``data: [DONE]``) or a plain JSON answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from launcher.scripted_model.conversation import Conversation, ToolCall, ToolDeclaration, ToolResult
from launcher.scripted_model.policy import Answer, Step


def conversation_from_request(body: dict[str, Any]) -> Conversation:
    """The conversation in a ``POST /v1/chat/completions`` body."""
    conversation = Conversation()
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            conversation.tools.append(ToolDeclaration(function["name"], function.get("parameters") or {}))
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        if response_format.get("type") == "json_schema":
            spec = response_format.get("json_schema") or {}
            conversation.response_schema = spec.get("schema") or {"type": "object"}
        elif response_format.get("type") == "json_object":
            conversation.response_schema = {"type": "object"}
    systems: list[str] = []
    for message in body.get("messages") or []:
        role = message.get("role")
        text = _text(message.get("content"))
        if role in ("system", "developer"):
            systems.append(text)
        elif role == "user" and text:
            conversation.user_texts.append(text)
        elif role == "assistant":
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                conversation.calls.append(
                    ToolCall(
                        call.get("id") or "",
                        function.get("name") or "",
                        _arguments(function.get("arguments")),
                    )
                )
        elif role == "tool":
            conversation.results.append(
                ToolResult(message.get("tool_call_id") or "", message.get("name") or "", text)
            )
    conversation.system = "\n\n".join(systems)
    return conversation


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except (TypeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _usage(body: dict[str, Any], step: Step) -> dict[str, int]:
    prompt = len(json.dumps(body.get("messages") or [])) // 4
    completion = max(1, len(json.dumps(step.__dict__)) // 4)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _tool_call(step: Step, call_id: str) -> dict[str, Any]:
    assert not isinstance(step, Answer)
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": step.name, "arguments": json.dumps(step.arguments)},
    }


def completion(body: dict[str, Any], step: Step, call_id: str) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` answer carrying ``step``."""
    if isinstance(step, Answer):
        message: dict[str, Any] = {"role": "assistant", "content": step.text}
        finish = "stop"
    else:
        message = {"role": "assistant", "content": None, "tool_calls": [_tool_call(step, call_id)]}
        finish = "tool_calls"
    return {
        "id": f"chatcmpl-{call_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "scripted",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": _usage(body, step),
    }


def completion_chunks(body: dict[str, Any], step: Step, call_id: str) -> Iterator[str]:
    """The SSE lines of a streamed answer: the step in one delta, the finish reason, usage, ``[DONE]``."""
    base = {
        "id": f"chatcmpl-{call_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model") or "scripted",
    }
    if isinstance(step, Answer):
        delta: dict[str, Any] = {"role": "assistant", "content": step.text}
        finish = "stop"
    else:
        delta = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"index": 0, **_tool_call(step, call_id)}],
        }
        finish = "tool_calls"
    for chunk in (
        {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
        {**base, "choices": [], "usage": _usage(body, step)},
    ):
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def error_body(status: int, message: str) -> dict[str, Any]:
    """An OpenAI-style error object."""
    code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status, "server_error")
    kind = "invalid_request_error" if status == 401 else code
    return {"error": {"message": message, "type": kind, "code": code}}
