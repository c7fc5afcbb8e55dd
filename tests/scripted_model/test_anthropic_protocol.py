"""The Anthropic Messages API of the scripted model (Claude Code's wire format), over real HTTP on loopback."""

from __future__ import annotations

import json
from typing import Any

import httpx

from launcher.scripted_model import ScriptedModelServer

HTTP = httpx.Client(timeout=10)

TOOLS = [
    {"name": "mcp__aiswarm__claim_task", "input_schema": {"type": "object", "properties": {}}},
    {"name": "mcp__aiswarm__report_task_completion", "input_schema": {"type": "object", "properties": {}}},
    {"name": "Write", "input_schema": {"type": "object", "properties": {"file_path": {}, "content": {}}}},
    {"type": "web_search_20250305", "name": "web_search"},
]
PROMPT = "Call claim_task with task_id 8, do it, then report_task_completion."


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``(event name, data)`` of each SSE event, checking that the two agree."""
    parsed: list[tuple[str, dict[str, Any]]] = []
    for chunk in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        parsed.append((lines["event"], data))
    return parsed


def post(model: ScriptedModelServer, body: dict[str, Any], agent: str = "claude-1") -> httpx.Response:
    return HTTP.post(
        f"{model.url}/v1/messages?beta=true",
        json={"model": "m", "max_tokens": 32000, "stream": True, **body},
        headers={"X-Aiswarm-Agent": agent, "anthropic-version": "2023-06-01"},
    )


def test_stream_carries_one_tool_use_block_as_claude_code_reads_it(model: ScriptedModelServer) -> None:
    user = {"role": "user", "content": [{"type": "text", "text": "<system-reminder>x</system-reminder>"}]}
    user["content"].append({"type": "text", "text": PROMPT})
    response = post(model, {"messages": [user], "tools": TOOLS})

    assert response.headers["content-type"].startswith("text/event-stream")
    names = [name for name, _ in events(response.text)]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    parsed = dict(events(response.text))
    block = parsed["content_block_start"]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "mcp__aiswarm__claim_task"
    assert block["id"].startswith("toolu_") and block["input"] == {}
    assert json.loads(parsed["content_block_delta"]["delta"]["partial_json"]) == {"task_id": 8}
    assert parsed["message_delta"]["delta"]["stop_reason"] == "tool_use"
    assert parsed["message_start"]["message"]["usage"]["input_tokens"] > 0
    assert model.stats()["clis"]["claude"]["coordination"] == 1


def test_tool_result_blocks_drive_the_next_step(model: ScriptedModelServer) -> None:
    claim = {
        "claimed": True,
        "task": {"id": 8, "prompt": "Create the file a.txt containing exactly: A", "working_dir": "/w"},
        "fence_token": 3,
    }
    messages = [
        {"role": "user", "content": PROMPT},
        {"role": "system", "content": [{"type": "text", "text": "Primary working directory: /elsewhere"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "mcp__aiswarm__claim_task", "input": {}}
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": json.dumps(claim)}],
                }
            ],
        },
    ]
    parsed = dict(events(post(model, {"messages": messages, "tools": TOOLS}).text))
    block = parsed["content_block_start"]["content_block"]
    assert block["name"] == "Write"
    assert json.loads(parsed["content_block_delta"]["delta"]["partial_json"]) == {
        "file_path": "/w/a.txt",
        "content": "A",
    }
    assert model.stats()["by_kind"] == {"work": 1}


def test_final_answer_is_a_text_block_ending_the_turn(model: ScriptedModelServer) -> None:
    claim = {"claimed": False, "task": None, "fence_token": None, "message": "Task 8 was cancelled."}
    messages = [
        {"role": "user", "content": PROMPT},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "mcp__aiswarm__claim_task", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t", "content": json.dumps(claim)}],
        },
    ]
    answer = HTTP.post(
        f"{model.url}/v1/messages", json={"model": "m", "messages": messages, "tools": TOOLS}
    ).json()
    assert answer["stop_reason"] == "end_turn"
    assert answer["content"] == [
        {"type": "text", "text": "Task not claimed, nothing to do: Task 8 was cancelled."}
    ]


def test_side_requests_get_a_short_text_or_the_json_their_schema_asks_for(model: ScriptedModelServer) -> None:
    plain = dict(events(post(model, {"messages": [{"role": "user", "content": "title?"}]}).text))
    assert plain["content_block_delta"]["delta"] == {"type": "text_delta", "text": "Scripted task"}
    schema = {"type": "object", "properties": {"title": {"type": "string"}, "ok": {"type": "boolean"}}}
    body = {
        "messages": [{"role": "user", "content": "summarise"}],
        "output_config": {"format": {"type": "json_schema", "schema": schema}},
    }
    structured = dict(events(post(model, body).text))
    assert json.loads(structured["content_block_delta"]["delta"]["text"]) == {"title": "", "ok": False}
    assert model.stats()["by_kind"] == {"side": 2}


def test_probe_token_count_and_injected_faults_in_anthropic_shape(model: ScriptedModelServer) -> None:
    assert HTTP.head(f"{model.url}/api/hello").status_code == 200
    counted = HTTP.post(f"{model.url}/v1/messages/count_tokens", json={"messages": [{"content": "x" * 400}]})
    assert counted.json()["input_tokens"] > 90
    model.inject_fault(status=429, retry_after=7, cli="claude", count=1)
    limited = post(model, {"messages": [{"role": "user", "content": PROMPT}], "tools": TOOLS})
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    assert limited.json() == {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "Rate limit exceeded (injected by the scripted model)",
        },
    }
    model.inject_fault(status=401, cli="claude", count=1, message="invalid x-api-key")
    refused = post(model, {"messages": [{"role": "user", "content": PROMPT}], "tools": TOOLS})
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    assert post(model, {"messages": [{"role": "user", "content": PROMPT}], "tools": TOOLS}).status_code == 200
