"""Both wire protocols, the statistics and the fault injection, over real HTTP on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from launcher.scripted_model import ScriptedModelServer

HTTP = httpx.Client(timeout=10)  # one client: a fresh one per request costs ~0.3 s here

CLAIM_TOOLS = [{"type": "function", "function": {"name": "mcp__aiswarm__claim_task", "parameters": {}}}]


def sse_events(text: str) -> list[Any]:
    """The JSON payloads of an SSE body (``[DONE]`` kept as a string)."""
    events: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def chat(model: ScriptedModelServer, body: dict[str, Any], agent: str = "qwen-1") -> httpx.Response:
    return HTTP.post(f"{model.url}/v1/chat/completions", json=body, headers={"X-Aiswarm-Agent": agent})


def test_openai_stream_carries_one_tool_call_then_finish_usage_and_done(model: ScriptedModelServer) -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "claim_task task_id 3"}]}
    response = chat(model, {**body, "tools": CLAIM_TOOLS})

    assert response.headers["content-type"].startswith("text/event-stream")
    first, finish, usage, done = sse_events(response.text)
    [call] = first["choices"][0]["delta"]["tool_calls"]
    assert call["function"] == {"name": "mcp__aiswarm__claim_task", "arguments": '{"task_id": 3}'}
    assert call["index"] == 0 and call["id"]
    assert finish["choices"][0]["finish_reason"] == "tool_calls"
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] > 0
    assert done == "[DONE]"


def test_openai_tool_results_in_parts_drive_the_next_step(model: ScriptedModelServer) -> None:
    claim = {"claimed": False, "task": None, "fence_token": None, "message": "Task 3 was cancelled."}
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "call claim_task with task_id 3"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "a",
                    "type": "function",
                    "function": {"name": "mcp__aiswarm__claim_task", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": [{"type": "text", "text": json.dumps(claim)}]},
    ]
    response = chat(model, {"model": "m", "messages": messages, "tools": CLAIM_TOOLS})

    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "Task not claimed, nothing to do: Task 3 was cancelled."


def test_openai_request_without_tools_is_a_side_request(model: ScriptedModelServer) -> None:
    response = chat(
        model, {"model": "m", "messages": [{"role": "user", "content": "Generate a title"}]}, "oc-1"
    )
    assert response.json()["choices"][0]["message"]["content"] == "Scripted task"
    assert model.stats()["agents"]["oc-1"]["side"] == 1
    assert HTTP.get(f"{model.url}/v1/models").json()["data"][0]["id"] == "scripted"


def gemini_body(contents: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    declarations = [
        {"name": "mcp_aiswarm_claim_task", "parametersJsonSchema": {"type": "object", "properties": {}}},
        {"name": "write_file", "parametersJsonSchema": {"properties": {"file_path": {}, "content": {}}}},
    ]
    return {"contents": contents, "tools": [{"functionDeclarations": declarations}], **extra}


def test_gemini_stream_answers_with_a_function_call_then_works_from_a_wrapped_result(
    model: ScriptedModelServer,
) -> None:
    url = f"{model.url}/v1beta/models/m:streamGenerateContent?alt=sse"
    headers = {"X-Aiswarm-Agent": "gemini-1"}
    user = {"role": "user", "parts": [{"text": "Call claim_task with task_id 8."}]}
    [first] = sse_events(HTTP.post(url, json=gemini_body([user]), headers=headers).text)
    call = first["candidates"][0]["content"]["parts"][0]["functionCall"]
    assert (call["name"], call["args"]) == ("mcp_aiswarm_claim_task", {"task_id": 8})

    claim = {
        "claimed": True,
        "task": {"id": 8, "prompt": "Create the file a.txt containing exactly: A", "working_dir": "/w"},
        "fence_token": 3,
    }
    output = f"<untrusted_context>{json.dumps(claim)}</untrusted_context>"
    contents = [
        user,
        {"role": "model", "parts": [{"functionCall": call}]},
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"id": call["id"], "name": call["name"], "response": {"output": output}}}
            ],
        },
    ]
    [second] = sse_events(HTTP.post(url, json=gemini_body(contents), headers=headers).text)
    write = second["candidates"][0]["content"]["parts"][0]["functionCall"]
    assert (write["name"], write["args"]) == ("write_file", {"file_path": "/w/a.txt", "content": "A"})
    assert second["usageMetadata"]["totalTokenCount"] > 0
    assert model.stats()["agents"]["gemini-1"] == {
        "total": 2,
        "coordination": 1,
        "work": 1,
        "tools": {"mcp_aiswarm_claim_task": 1, "write_file": 1},
    }


def test_gemini_json_side_request_gets_an_object_matching_the_schema(model: ScriptedModelServer) -> None:
    schema = {
        "type": "object",
        "properties": {"reasoning": {"type": "string"}, "model_choice": {"enum": ["flash"]}},
    }
    body = {
        "contents": [{"role": "user", "parts": [{"text": "route this"}]}],
        "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": schema},
    }
    response = HTTP.post(f"{model.url}/v1beta/models/router:generateContent", json=body).json()
    assert json.loads(response["candidates"][0]["content"]["parts"][0]["text"]) == {
        "reasoning": "",
        "model_choice": "flash",
    }
    assert model.stats()["clis"] == {"gemini": {"total": 1, "side": 1}}


def test_fault_for_next_two_requests_of_one_agent_answers_429_with_retry_after(
    model: ScriptedModelServer,
) -> None:
    control = HTTP.post(
        f"{model.url}/_control", json={"op": "fault", "agent": "qwen-1", "count": 2, "retry_after": 3}
    )
    assert control.json() == {"fault_id": 1}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    other = chat(model, body, agent="qwen-2")
    statuses = [chat(model, body).status_code for _ in range(3)]

    assert other.status_code == 200
    assert statuses == [429, 429, 200]
    rejected = chat  # the rejection body is OpenAI-shaped, so the SDKs read it
    model.inject_fault(agent="qwen-1", count=1)
    refused = rejected(model, body)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    stats = HTTP.get(f"{model.url}/_stats").json()
    assert stats["agents"]["qwen-1"] == {"total": 4, "rejected": 3, "side": 1, "tools": {}}
    assert stats["faults"] == []


def test_fault_by_cli_lasts_until_cleared_and_uses_the_gemini_error_shape(model: ScriptedModelServer) -> None:
    HTTP.post(
        f"{model.url}/_control", json={"op": "fault", "cli": "gemini", "status": 503, "retry_after": None}
    )
    url = f"{model.url}/v1beta/models/m:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}
    for _ in range(3):
        refused = HTTP.post(url, json=body)
        assert refused.status_code == 503 and "retry-after" not in refused.headers
        assert refused.json()["error"]["status"] == "UNAVAILABLE"
    assert chat(model, {"model": "m", "messages": []}).status_code == 200  # other CLIs unaffected

    assert HTTP.post(f"{model.url}/_control", json={"op": "clear", "cli": "gemini"}).json() == {"cleared": 1}
    assert HTTP.post(url, json=body).status_code == 200
    assert HTTP.post(f"{model.url}/_control", json={"op": "reset_stats"}).json() == {"reset": True}
    assert model.stats()["total"] == 0
    assert HTTP.post(f"{model.url}/_control", json={"op": "explode"}).status_code == 400


def test_idle_server_counts_nothing(model: ScriptedModelServer) -> None:
    HTTP.get(f"{model.url}/_stats")
    HTTP.get(f"{model.url}/v1/models")
    assert model.stats()["total"] == 0


def test_module_entry_point_writes_its_port_and_serves(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    process = subprocess.Popen(
        [sys.executable, "-m", "launcher.scripted_model", "--port", "0", "--port-file", str(port_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        port = int(port_file.read_text())
        assert process.stdout is not None and process.stdout.readline().strip() == str(port)
        assert HTTP.get(f"http://127.0.0.1:{port}/_stats").json()["total"] == 0
    finally:
        process.terminate()
        assert process.wait(10) == 0
