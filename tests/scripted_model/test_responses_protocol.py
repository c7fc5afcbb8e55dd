"""The OpenAI Responses API of the scripted model (codex's wire format), over real HTTP on loopback."""

from __future__ import annotations

import json
from typing import Any

import httpx

from launcher.scripted_model import ScriptedModelServer

HTTP = httpx.Client(timeout=10)

NAMESPACE = {
    "type": "namespace",
    "name": "mcp__aiswarm",
    "description": "aiswarm broker",
    "tools": [
        {"type": "function", "name": "claim_task", "parameters": {"type": "object", "properties": {}}},
        {"type": "function", "name": "report_task_completion", "parameters": {"type": "object"}},
    ],
}
SHELL = {
    "type": "function",
    "name": "exec_command",
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
}
TOOLS = [SHELL, NAMESPACE, {"type": "web_search", "external_web_access": False}]
PROMPT = "Call claim_task with task_id 5, do it, then report_task_completion."


def message(role: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}


def events(text: str) -> list[dict[str, Any]]:
    """The data of each SSE event, checking the event name matches its ``type``."""
    parsed = []
    for chunk in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        parsed.append(data)
    return parsed


def post(model: ScriptedModelServer, input_items: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    body = {"model": "m", "stream": True, "instructions": "", "input": input_items, "tools": TOOLS, **extra}
    return HTTP.post(f"{model.url}/v1/responses", json=body, headers={"X-Aiswarm-Agent": "codex-1"})


def test_a_namespaced_mcp_tool_is_called_back_with_its_namespace(model: ScriptedModelServer) -> None:
    response = post(model, [message("developer", "You are Codex."), message("user", PROMPT)])

    assert response.headers["content-type"].startswith("text/event-stream")
    stream = events(response.text)
    assert [e["type"] for e in stream] == [
        "response.created",
        "response.output_item.added",
        "response.output_item.done",
        "response.completed",
    ]
    item = stream[2]["item"]
    assert (item["type"], item["namespace"], item["name"]) == ("function_call", "mcp__aiswarm", "claim_task")
    assert json.loads(item["arguments"]) == {"task_id": 5} and item["call_id"]
    usage = stream[3]["response"]["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert model.stats()["clis"]["codex"]["coordination"] == 1


def test_function_call_output_drives_a_shell_write_under_the_working_dir(model: ScriptedModelServer) -> None:
    claim = {
        "claimed": True,
        "task": {"id": 5, "prompt": "Create the file d/a.txt containing exactly: it's", "working_dir": "/w"},
        "fence_token": 2,
    }
    items = [
        message("user", "<environment_context>\n  <cwd>/elsewhere</cwd>\n</environment_context>"),
        message("user", PROMPT),
        {
            "type": "function_call",
            "namespace": "mcp__aiswarm",
            "name": "claim_task",
            "arguments": '{"task_id": 5}',
            "call_id": "call_1",
        },
        {"type": "function_call_output", "call_id": "call_1", "output": json.dumps(claim)},
    ]
    item = events(post(model, items).text)[2]["item"]
    assert item["name"] == "exec_command" and "namespace" not in item
    assert json.loads(item["arguments"]) == {"cmd": "mkdir -p /w/d && printf '%s' 'it'\"'\"'s' > /w/d/a.txt"}


def test_final_answer_is_an_assistant_message_with_its_text_delta(model: ScriptedModelServer) -> None:
    claim = {"claimed": False, "task": None, "fence_token": None, "message": "gone"}
    items = [
        message("user", PROMPT),
        {
            "type": "function_call",
            "namespace": "mcp__aiswarm",
            "name": "claim_task",
            "arguments": "{}",
            "call_id": "c",
        },
        {
            "type": "function_call_output",
            "call_id": "c",
            "output": [{"type": "input_text", "text": json.dumps(claim)}],
        },
    ]
    stream = events(post(model, items).text)
    assert [e["type"] for e in stream][2] == "response.output_text.delta"
    assert stream[2]["delta"] == "Task not claimed, nothing to do: gone"
    done = stream[3]["item"]
    assert done["role"] == "assistant" and done["content"][0]["text"] == stream[2]["delta"]
    complete = HTTP.post(
        f"{model.url}/v1/responses", json={"model": "m", "input": items, "tools": TOOLS}
    ).json()
    assert complete["status"] == "completed" and complete["output"][0]["type"] == "message"


def test_a_json_schema_side_request_gets_matching_json(model: ScriptedModelServer) -> None:
    schema = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
    stream = events(
        post(
            model, [message("user", "summarise")], text={"format": {"type": "json_schema", "schema": schema}}
        ).text
    )
    assert json.loads(stream[2]["delta"]) == {"summary": ""}
    assert model.stats()["by_kind"] == {"side": 1}


def test_injected_faults_come_back_in_openai_error_shape(model: ScriptedModelServer) -> None:
    model.inject_fault(status=429, retry_after=3, cli="codex", count=1)
    limited = post(model, [message("user", PROMPT)])
    assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    model.inject_fault(status=401, cli="codex", count=1, message="Incorrect API key provided")
    refused = post(model, [message("user", PROMPT)])
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert post(model, [message("user", PROMPT)]).status_code == 200
