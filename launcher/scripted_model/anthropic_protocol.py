"""The Anthropic Messages API (``POST /v1/messages``), as Claude Code speaks it.

Tools arrive as ``{"name", "input_schema"}`` (server tools such as web search, which have a
``type`` and no schema, are not the CLI's to call and are skipped); earlier calls and results as
``tool_use`` / ``tool_result`` content blocks. The system prompt is the ``system`` field (text
or blocks) plus any ``system``-role messages. Side requests that want JSON name a schema in
``output_config.format`` (or the older ``output_format``). Claude Code always streams: the
answer is one content block, sent as ``message_start``, ``content_block_start``, one delta,
``content_block_stop``, ``message_delta`` (stop reason and usage) and ``message_stop``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from launcher.scripted_model.conversation import Conversation, ToolCall, ToolDeclaration, ToolResult
from launcher.scripted_model.policy import Answer, Step


def conversation_from_request(body: dict[str, Any]) -> Conversation:
    """The conversation in a ``POST /v1/messages`` body."""
    conversation = Conversation()
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and isinstance(tool.get("name"), str) and "input_schema" in tool:
            schema = tool.get("input_schema")
            conversation.tools.append(
                ToolDeclaration(tool["name"], schema if isinstance(schema, dict) else {})
            )
    conversation.response_schema = _response_schema(body)
    systems = [_text(body.get("system"))]
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        role, content = message.get("role"), message.get("content")
        if role == "system":
            systems.append(_text(content))
            continue
        for block in [{"type": "text", "text": content}] if isinstance(content, str) else content or []:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text" and role == "user" and block.get("text"):
                conversation.user_texts.append(str(block["text"]))
            elif kind == "tool_use" and role == "assistant":
                arguments = block.get("input")
                conversation.calls.append(
                    ToolCall(
                        block.get("id") or "",
                        block.get("name") or "",
                        arguments if isinstance(arguments, dict) else {},
                    )
                )
            elif kind == "tool_result" and role == "user":
                conversation.results.append(
                    ToolResult(
                        block.get("tool_use_id") or "",
                        "",
                        _text(block.get("content")),
                        bool(block.get("is_error")),
                    )
                )
    conversation.system = "\n\n".join(s for s in systems if s)
    return conversation


def _response_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    output_config = body.get("output_config")
    for spec in (
        output_config.get("format") if isinstance(output_config, dict) else None,
        body.get("output_format"),
    ):
        if isinstance(spec, dict) and spec.get("type") == "json_schema":
            schema = spec.get("schema")
            return schema if isinstance(schema, dict) else {"type": "object"}
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


def _usage(body: dict[str, Any], step: Step) -> tuple[int, int]:
    prompt = len(json.dumps(body.get("messages") or [])) // 4
    completion = max(1, len(json.dumps(step.__dict__)) // 4)
    return prompt, completion


def _block(step: Step, call_id: str) -> tuple[dict[str, Any], str]:
    """The answer's content block (complete) and its stop reason."""
    if isinstance(step, Answer):
        return {"type": "text", "text": step.text}, "end_turn"
    return {
        "type": "tool_use",
        "id": f"toolu_{call_id}",
        "name": step.name,
        "input": step.arguments,
    }, "tool_use"


def message(body: dict[str, Any], step: Step, call_id: str) -> dict[str, Any]:
    """A non-streaming ``message`` answer carrying ``step``."""
    block, stop = _block(step, call_id)
    prompt, completion = _usage(body, step)
    return {
        "id": f"msg_{call_id}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model") or "scripted",
        "content": [block],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": completion},
    }


def message_events(body: dict[str, Any], step: Step, call_id: str) -> Iterator[str]:
    """The SSE events of a streamed answer: one content block, then the stop reason and usage."""
    block, stop = _block(step, call_id)
    prompt, completion = _usage(body, step)
    start = {
        **message(body, step, call_id),
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": prompt, "output_tokens": 1},
    }
    if block["type"] == "text":
        opened, delta = {"type": "text", "text": ""}, {"type": "text_delta", "text": block["text"]}
    else:
        opened = {**block, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
    for name, data in (
        ("message_start", {"message": start}),
        ("content_block_start", {"index": 0, "content_block": opened}),
        ("content_block_delta", {"index": 0, "delta": delta}),
        ("content_block_stop", {"index": 0}),
        (
            "message_delta",
            {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": completion}},
        ),
        ("message_stop", {}),
    ):
        yield f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"


def count_tokens(body: dict[str, Any]) -> dict[str, Any]:
    """A rough ``count_tokens`` answer (4 characters a token)."""
    return {"input_tokens": len(json.dumps(body)) // 4}


def error_body(status: int, message: str) -> dict[str, Any]:
    """An Anthropic-style error object."""
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}
