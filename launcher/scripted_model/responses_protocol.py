"""The OpenAI Responses API (``POST /v1/responses``), as codex speaks it.

The request's ``instructions`` and ``developer``/``system`` messages are the system text; ``input``
holds the messages, earlier ``function_call`` items and their ``function_call_output``. Tools are
``{"type": "function", "name", "parameters"}``, or grouped in a ``{"type": "namespace", "name",
"tools": [...]}`` (codex puts each MCP server's tools in the namespace ``mcp__<server>``). A
namespaced tool is shown to the policy as ``<namespace>__<name>`` (``mcp__aiswarm__claim_task``,
as qwen names it) and its call goes back with the ``namespace`` field. Side requests ask for JSON
with ``text.format`` of type ``json_schema``.

A streamed answer is ``response.created``, ``response.output_item.added``, a text delta for a
message, ``response.output_item.done`` and ``response.completed`` with the usage.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from launcher.scripted_model.conversation import Conversation, ToolCall, ToolDeclaration, ToolResult
from launcher.scripted_model.openai_protocol import error_body as openai_error_body
from launcher.scripted_model.policy import Answer, Step


def qualified_name(namespace: str | None, name: str) -> str:
    """The name the policy sees for tool ``name`` of ``namespace`` (none: the name itself)."""
    if not namespace:
        return name
    return f"{namespace}{name}" if namespace.endswith("_") else f"{namespace}__{name}"


def _declared(body: dict[str, Any]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """Every function tool of the request with its namespace (None at the top level)."""
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "function":
            yield None, tool
        elif tool.get("type") == "namespace":
            for inner in tool.get("tools") or []:
                if isinstance(inner, dict) and inner.get("type") == "function":
                    yield str(tool.get("name") or ""), inner


def conversation_from_request(body: dict[str, Any]) -> Conversation:
    """The conversation in a ``POST /v1/responses`` body."""
    conversation = Conversation()
    for namespace, tool in _declared(body):
        if isinstance(tool.get("name"), str):
            parameters = tool.get("parameters")
            conversation.tools.append(
                ToolDeclaration(
                    qualified_name(namespace, tool["name"]),
                    parameters if isinstance(parameters, dict) else {},
                )
            )
    text_format = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
        schema = text_format.get("schema")
        conversation.response_schema = schema if isinstance(schema, dict) else {"type": "object"}
    systems = [body["instructions"]] if isinstance(body.get("instructions"), str) else []
    items = body.get("input")
    for item in (
        [{"type": "message", "role": "user", "content": items}] if isinstance(items, str) else items or []
    ):
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message":
            text = _text(item.get("content"))
            if item.get("role") in ("system", "developer"):
                systems.append(text)
            elif item.get("role") == "user" and text:
                conversation.user_texts.append(text)
        elif kind == "function_call":
            conversation.calls.append(
                ToolCall(
                    item.get("call_id") or "",
                    qualified_name(item.get("namespace"), item.get("name") or ""),
                    _arguments(item.get("arguments")),
                )
            )
        elif kind == "function_call_output":
            output = item.get("output")
            success = output.get("success") if isinstance(output, dict) else None
            text = _text(output.get("content") if isinstance(output, dict) else output)
            conversation.results.append(ToolResult(item.get("call_id") or "", "", text, success is False))
    conversation.system = "\n\n".join(s for s in systems if s)
    return conversation


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text")
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


def _output_item(body: dict[str, Any], step: Step, call_id: str) -> dict[str, Any]:
    if isinstance(step, Answer):
        return {
            "type": "message",
            "id": f"msg_{call_id}",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": step.text, "annotations": []}],
        }
    item: dict[str, Any] = {
        "type": "function_call",
        "id": f"fc_{call_id}",
        "call_id": call_id,
        "name": step.name,
        "arguments": json.dumps(step.arguments),
        "status": "completed",
    }
    for namespace, tool in _declared(body):
        if namespace and qualified_name(namespace, str(tool.get("name"))) == step.name:
            item |= {"name": tool["name"], "namespace": namespace}
            break
    return item


def _usage(body: dict[str, Any], step: Step) -> dict[str, Any]:
    prompt = len(json.dumps(body.get("input") or [])) // 4
    completion = max(1, len(json.dumps(step.__dict__)) // 4)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def response(body: dict[str, Any], step: Step, call_id: str) -> dict[str, Any]:
    """A complete (non-streamed) ``response`` object carrying ``step``."""
    return {
        "id": f"resp_{call_id}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": body.get("model") or "scripted",
        "output": [_output_item(body, step, call_id)],
        "usage": _usage(body, step),
    }


def response_events(body: dict[str, Any], step: Step, call_id: str) -> Iterator[str]:
    """The SSE events of a streamed answer carrying ``step``."""
    done = response(body, step, call_id)
    item = done["output"][0]
    started = {**done, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "status": "in_progress"}},
    ]
    if isinstance(step, Answer):
        events.append(
            {
                "type": "response.output_text.delta",
                "item_id": item["id"],
                "output_index": 0,
                "content_index": 0,
                "delta": step.text,
            }
        )
    events += [
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": done},
    ]
    for sequence, event in enumerate(events):
        yield f"event: {event['type']}\ndata: {json.dumps({**event, 'sequence_number': sequence})}\n\n"


def error_body(status: int, message: str) -> dict[str, Any]:
    """An OpenAI-style error object (the Responses API shares it with chat completions)."""
    return openai_error_body(status, message)
