"""The Gemini API (``generateContent`` / ``streamGenerateContent?alt=sse``), as gemini-cli speaks it.

Tools arrive as ``functionDeclarations`` (schema in ``parametersJsonSchema`` or
``parameters``); earlier calls and results as ``functionCall`` / ``functionResponse`` parts.
gemini-cli's side requests (routing, next-speaker, loop checks) ask for JSON through
``generationConfig.responseJsonSchema`` (or ``responseSchema``) and declare no tools.
"""

from __future__ import annotations

import json
from typing import Any

from launcher.scripted_model.conversation import Conversation, ToolCall, ToolDeclaration, ToolResult
from launcher.scripted_model.policy import Answer, Step


def conversation_from_request(body: dict[str, Any]) -> Conversation:
    """The conversation in a ``generateContent`` body."""
    conversation = Conversation(system=_system_text(body.get("systemInstruction")))
    for tool in body.get("tools") or []:
        for declaration in (tool.get("functionDeclarations") if isinstance(tool, dict) else None) or []:
            schema = declaration.get("parametersJsonSchema") or declaration.get("parameters") or {}
            conversation.tools.append(ToolDeclaration(declaration.get("name") or "", schema))
    config = body.get("generationConfig") or {}
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    if schema is not None or config.get("responseMimeType") == "application/json":
        conversation.response_schema = schema if isinstance(schema, dict) else {"type": "object"}
    for content in body.get("contents") or []:
        role = content.get("role")
        for part in content.get("parts") or []:
            if not isinstance(part, dict):
                continue
            if "text" in part and role == "user" and not part.get("thought"):
                conversation.user_texts.append(str(part["text"]))
            elif isinstance(call := part.get("functionCall"), dict):
                args = call.get("args")
                conversation.calls.append(
                    ToolCall(
                        call.get("id") or "", call.get("name") or "", args if isinstance(args, dict) else {}
                    )
                )
            elif isinstance(response := part.get("functionResponse"), dict):
                text, is_error = _response_text(response.get("response"))
                conversation.results.append(
                    ToolResult(response.get("id") or "", response.get("name") or "", text, is_error)
                )
    return conversation


def _system_text(instruction: Any) -> str:
    if isinstance(instruction, str):
        return instruction
    if isinstance(instruction, dict):
        return "\n".join(
            str(p.get("text", "")) for p in instruction.get("parts") or [] if isinstance(p, dict)
        )
    return ""


def _response_text(response: Any) -> tuple[str, bool]:
    if isinstance(response, dict):
        if isinstance(response.get("error"), str | dict):
            error = response["error"]
            return f"Error: {error if isinstance(error, str) else json.dumps(error)}", True
        if isinstance(response.get("output"), str):
            return response["output"], False
        return json.dumps(response), False
    return str(response), False


def generate_response(body: dict[str, Any], step: Step, call_id: str, model: str) -> dict[str, Any]:
    """One ``GenerateContentResponse`` carrying ``step`` (the whole answer for both methods)."""
    if isinstance(step, Answer):
        part: dict[str, Any] = {"text": step.text}
    else:
        part = {"functionCall": {"id": call_id, "name": step.name, "args": step.arguments}}
    prompt = len(json.dumps(body.get("contents") or [])) // 4
    completion = max(1, len(json.dumps(part)) // 4)
    return {
        "candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {
            "promptTokenCount": prompt,
            "candidatesTokenCount": completion,
            "totalTokenCount": prompt + completion,
        },
        "modelVersion": model,
    }


def count_tokens(body: dict[str, Any]) -> dict[str, Any]:
    """A rough ``countTokens`` answer (4 characters a token)."""
    return {"totalTokens": len(json.dumps(body)) // 4}


def error_body(status: int, message: str) -> dict[str, Any]:
    """A Google-API-style error object."""
    reason = {429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE", 500: "INTERNAL"}.get(status, "UNKNOWN")
    return {"error": {"code": status, "message": message, "status": reason}}
