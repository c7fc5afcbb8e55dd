"""The policy, played against a fake CLI that runs tools in-process.

``play`` is the loop a CLI runs: ask the policy, execute the tool it names, append the call
and its result to the conversation, repeat until a text answer. Each CLI's tool naming
(qwen ``mcp__aiswarm__x`` + ``write_file``, gemini ``mcp_aiswarm_x``, opencode ``aiswarm_x`` +
``write``, Claude Code ``mcp__aiswarm__x`` + ``Write``, codex ``mcp__aiswarm__x`` + its shell ``exec_command``)
is covered.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aiswarm_server.replies import ClaimedTask
from launcher.prompts import task_prompt
from launcher.scripted_model.conversation import (
    Conversation,
    ToolCall,
    ToolDeclaration,
    ToolResult,
    result_payload,
)
from launcher.scripted_model.policy import Answer, CallTool, StepKind, Toolbox, decide, minimal_instance

Executor = Callable[[str, dict[str, Any]], str]

BROKER = ["claim_task", "report_task_completion", "report_progress", "wait_for_next_event"]
PRIMARY = ["submit_tasks", "wait_for_tasks"]
CLI_TOOLS = {
    "qwen": (
        "mcp__aiswarm__",
        [ToolDeclaration("write_file", _s := {"properties": {"file_path": {}, "content": {}}})],
    ),
    "gemini": ("mcp_aiswarm_", [ToolDeclaration("write_file", _s)]),
    "opencode": ("aiswarm_", [ToolDeclaration("write", {"properties": {"filePath": {}, "content": {}}})]),
    "claude": (
        "mcp__aiswarm__",
        [
            ToolDeclaration("Write", {"properties": {"file_path": {}, "content": {}}}),
            ToolDeclaration("Bash", {"properties": {"command": {"type": "string"}}}),
        ],
    ),
    "codex": (
        "mcp__aiswarm__",
        [ToolDeclaration("exec_command", {"properties": {"cmd": {"type": "string"}}})],
    ),
}


def conversation(
    cli: str, prompt: str, broker: list[str] = BROKER, extra: list[ToolDeclaration] | None = None
) -> Conversation:
    prefix, own = CLI_TOOLS[cli]
    tools = [*own, *(extra or []), *(ToolDeclaration(prefix + name) for name in broker)]
    return Conversation(system="You are a CLI.", user_texts=[prompt], tools=tools)


def play(conv: Conversation, execute: Executor, limit: int = 30) -> tuple[str, list[CallTool]]:
    """Run the agent loop to its final answer; returns the answer and the calls made."""
    calls: list[CallTool] = []
    for n in range(limit):
        step = decide(conv)
        if isinstance(step, Answer):
            return step.text, calls
        calls.append(step)
        text = execute(step.name, step.arguments)
        conv.calls.append(ToolCall(f"c{n}", step.name, step.arguments))
        conv.results.append(ToolResult(f"c{n}", step.name, text, text.startswith("Error")))
    raise AssertionError(f"no final answer after {limit} steps: {calls}")


def claim_result(task_id: int, prompt: str, working_dir: Path, claimed: bool = True) -> str:
    task = {"id": task_id, "title": "t", "prompt": prompt, "working_dir": str(working_dir)}
    body = {
        "claimed": claimed,
        "task": task if claimed else None,
        "fence_token": 5 if claimed else None,
        "message": "ok",
    }
    return json.dumps(body)


class FakeWorld:
    """A broker with one task, and a filesystem under ``root``, as a CLI would execute them."""

    def __init__(self, root: Path, prompt: str, claimed: bool = True, refuse_unread: bool = False) -> None:
        self.root, self.prompt, self.claimed, self.refuse_unread = root, prompt, claimed, refuse_unread
        self.reports: list[dict[str, Any]] = []
        self.read: set[str] = set()

    def __call__(self, name: str, args: dict[str, Any]) -> str:
        if name.endswith("claim_task"):
            return claim_result(args.get("task_id", 1), self.prompt, self.root, self.claimed)
        if name.endswith("report_task_completion"):
            self.reports.append(args)
            return '{"task_id": 1, "status": "completed", "message": "Recorded."}'
        if name == "exec_command":
            done = subprocess.run(["bash", "-c", args["cmd"]], capture_output=True, text=True, check=False)
            return f"Chunk ID: 1\nProcess exited with code {done.returncode}\nOutput:\n{done.stdout}{done.stderr}"
        if name in ("write_file", "write", "Write"):
            path = Path(args.get("file_path") or args["filePath"])
            if self.refuse_unread and path.exists() and str(path) not in self.read:
                return f"Error: file {path} has not been read in this session; use the read_file tool first."
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(args["content"])
            return f"Successfully wrote {path}"
        if name == "read_file":
            self.read.add(args["file_path"])
            return Path(args["file_path"]).read_text()
        raise AssertionError(f"unexpected tool {name}")


WRITE_TASK = "WRITE out/hello.txt\n```\nhi\n```"


@pytest.mark.parametrize("cli", ["qwen", "gemini", "opencode", "claude", "codex"])
def test_worker_claims_named_task_writes_with_own_tool_and_reports(cli: str, tmp_path: Path) -> None:
    world = FakeWorld(tmp_path, WRITE_TASK)
    answer, calls = play(conversation(cli, "Call claim_task with task_id 12, do it, report."), world)

    assert (tmp_path / "out" / "hello.txt").read_text() == "hi\n"
    assert [c.kind for c in calls] == [StepKind.COORDINATION, StepKind.WORK, StepKind.COORDINATION]
    assert calls[0].arguments == {"task_id": 12}
    assert world.reports == [
        {"task_id": 12, "fence_token": 5, "success": True, "result": "Wrote out/hello.txt"}
    ]
    assert "Wrote out/hello.txt" in answer


def assigned_prompt(prompt: str, working_dir: Path, task_id: int = 12) -> str:
    """What the launcher tells a per-task CLI (the real prompt, so the policy and the prompt cannot drift)."""
    task = ClaimedTask(
        id=task_id, title="t", prompt=prompt, priority=0, persona=None, capabilities=[], depends_on=[],
        working_dir=str(working_dir), timeout_seconds=60, failures=0, error=None,
    )  # fmt: skip
    return task_prompt("qwen-1", task, 7, working_dir, None)


@pytest.mark.parametrize("cli", ["qwen", "gemini", "opencode", "claude", "codex"])
def test_a_per_task_prompt_is_done_from_the_prompt_with_no_broker_call_and_answered(
    cli: str, tmp_path: Path
) -> None:
    work = tmp_path / "a dir with spaces"
    world = FakeWorld(tmp_path, "unused")
    answer, calls = play(conversation(cli, assigned_prompt(WRITE_TASK, work)), world)

    assert (work / "out" / "hello.txt").read_text() == "hi\n"
    assert [c.kind for c in calls] == [StepKind.WORK]
    assert answer == "Wrote out/hello.txt" and world.reports == []


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [
        ("FAIL the disk is on fire", "FAILED: the disk is on fire"),
        ("WRITE a.txt\n```\nx\n```\nSILENT", ""),
        ("RESULT looks good to me", "looks good to me"),
        ("Do something vague.", "FAILED: cannot do this task: line 1: cannot understand"),
    ],
)
def test_a_per_task_answer_is_the_result_or_says_failed_on_its_first_line(
    prompt: str, answer: str, tmp_path: Path
) -> None:
    said, calls = play(conversation("qwen", assigned_prompt(prompt, tmp_path)), FakeWorld(tmp_path, "unused"))
    assert said.startswith(answer) and (said == "") == (answer == "")
    assert all(c.kind is StepKind.WORK for c in calls)


def test_a_per_task_progress_line_reports_with_the_fence_from_the_prompt(tmp_path: Path) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def world(name: str, args: dict[str, Any]) -> str:
        seen.append((name, args))
        return '{"task_id": 3, "lease_expires_at": 1.0, "message": "ok"}'

    answer, calls = play(conversation("gemini", assigned_prompt("PROGRESS half way", tmp_path, 3)), world)
    assert seen == [("mcp_aiswarm_report_progress", {"task_id": 3, "fence_token": 7, "message": "half way"})]
    assert [c.kind for c in calls] == [StepKind.COORDINATION] and answer == "Done."


def test_worker_without_a_task_id_claims_with_no_arguments(tmp_path: Path) -> None:
    _, calls = play(conversation("qwen", "Call claim_task and do the task."), FakeWorld(tmp_path, WRITE_TASK))
    assert calls[0] == CallTool("mcp__aiswarm__claim_task", {}, StepKind.COORDINATION)


def test_unclaimed_task_ends_in_text_without_work_or_report(tmp_path: Path) -> None:
    world = FakeWorld(tmp_path, WRITE_TASK, claimed=False)
    answer, calls = play(conversation("gemini", "Call claim_task with task_id 3."), world)
    assert [c.name for c in calls] == ["mcp_aiswarm_claim_task"]
    assert "not claimed" in answer and world.reports == []


def test_prompt_outside_the_grammar_is_reported_as_failure_not_faked(tmp_path: Path) -> None:
    world = FakeWorld(tmp_path, "Please refactor everything.")
    play(conversation("opencode", "Call claim_task with task_id 4."), world)
    [report] = world.reports
    assert report["success"] is False and "cannot understand" in report["error"]
    assert list(tmp_path.iterdir()) == []


def test_qwen_refusing_an_unread_overwrite_makes_the_agent_read_then_write(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "hello.txt").write_text("old")
    world = FakeWorld(tmp_path, WRITE_TASK, refuse_unread=True)
    extra = [ToolDeclaration("read_file", {"properties": {"file_path": {}}})]
    _, calls = play(conversation("qwen", "Call claim_task with task_id 1.", extra=extra), world)
    assert [c.name for c in calls][1:4] == ["write_file", "read_file", "write_file"]
    assert (tmp_path / "out" / "hello.txt").read_text() == "hi\n"
    assert world.reports[0]["success"] is True


def test_a_cli_with_only_a_shell_writes_exact_bytes_through_it(tmp_path: Path) -> None:
    content = 'it\'s $HOME `here`\\n "quoted"\n%s 100% $(rm -rf x)\n'
    world = FakeWorld(tmp_path, f"WRITE deep/dir/x.txt\n```\n{content}```")
    _, calls = play(conversation("codex", "Call claim_task with task_id 1."), world)
    assert calls[1].name == "exec_command" and calls[1].kind is StepKind.WORK
    assert (tmp_path / "deep" / "dir" / "x.txt").read_text() == content
    assert world.reports[0]["success"] is True


def test_a_shell_write_that_exits_nonzero_is_reported_as_failure(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file where a directory must go")
    world = FakeWorld(tmp_path, WRITE_TASK)
    play(conversation("codex", "Call claim_task with task_id 1."), world)
    [report] = world.reports
    assert report["success"] is False and "writing out/hello.txt failed" in report["error"]


def test_a_failed_write_is_reported_as_failure(tmp_path: Path) -> None:
    world = FakeWorld(tmp_path, WRITE_TASK)

    def broken_disk(name: str, args: dict[str, Any]) -> str:
        return "Error: disk full" if name == "write_file" else world(name, args)

    play(conversation("gemini", "Call claim_task with task_id 1."), broken_disk)
    assert world.reports[0]["success"] is False
    assert world.reports[0]["error"] == "writing out/hello.txt failed: Error: disk full"


def test_fail_and_progress_directives(tmp_path: Path) -> None:
    world = FakeWorld(tmp_path, "PROGRESS starting\nFAIL cannot reach the database")
    progress: list[dict[str, Any]] = []

    def execute(name: str, args: dict[str, Any]) -> str:
        if name.endswith("report_progress"):
            progress.append(args)
            return '{"cancelled": false, "message": "lease renewed"}'
        return world(name, args)

    play(conversation("qwen", "Call claim_task with task_id 2."), execute)
    assert progress == [{"task_id": 2, "fence_token": 5, "message": "starting"}]
    assert world.reports[0]["success"] is False and world.reports[0]["error"] == "cannot reach the database"


def test_missing_write_tool_fails_the_task_with_the_reason(tmp_path: Path) -> None:
    world = FakeWorld(tmp_path, WRITE_TASK)
    conv = conversation("qwen", "Call claim_task with task_id 1.")
    conv.tools = [t for t in conv.tools if t.name != "write_file"]
    play(conv, world)
    assert "no file-writing tool" in world.reports[0]["error"]


def test_without_a_claim_tool_the_agent_says_so_and_calls_nothing() -> None:
    conv = conversation("qwen", "Call claim_task with task_id 1.", broker=[])
    assert decide(conv) == Answer(
        "I cannot take a task: no claim_task tool is declared (is the aiswarm MCP server configured?)."
    )


def test_session_loops_on_wait_with_fresh_cursor_claims_available_and_stops_after_idle_waits(
    tmp_path: Path,
) -> None:
    world = FakeWorld(tmp_path, WRITE_TASK)
    events = iter([[], [{"id": 1, "kind": "task_available", "task_id": 9}], [], []])
    waits: list[dict[str, Any]] = []

    def execute(name: str, args: dict[str, Any]) -> str:
        if name.endswith("wait_for_next_event"):
            waits.append(args)
            return json.dumps({"events": next(events), "cursor": f"cur-{len(waits)}", "message": "..."})
        return world(name, args)

    prompt = (
        "Loop: call wait_for_next_event, claim on task_available; stop after 2 idle waits. timeout_seconds 30"
    )
    answer, _ = play(conversation("gemini", prompt), execute)
    assert waits == [
        {"timeout_seconds": 30},
        {"cursor": "cur-1", "timeout_seconds": 30},
        {"cursor": "cur-2", "timeout_seconds": 30},
        {"cursor": "cur-3", "timeout_seconds": 30},
    ]
    assert world.reports[0]["task_id"] == 9 and world.reports[0]["success"] is True
    assert answer.startswith("Stopped after 2 idle waits.")


def test_primary_submits_the_json_tasks_waits_for_all_and_summarises() -> None:
    tasks = [{"key": "a", "title": "A", "prompt": "Create the file a containing exactly: 1"}]
    prompt = f"Delegate with submit_tasks:\n```json\n{json.dumps(tasks)}\n```\nthen wait_for_tasks."
    waits = iter([{"done": False, "tasks": [], "pending": [41]}, {"done": True, "pending": []}])
    seen: list[tuple[str, dict[str, Any]]] = []

    def execute(name: str, args: dict[str, Any]) -> str:
        seen.append((name, args))
        if name.endswith("submit_tasks"):
            return json.dumps({"tasks": [{"id": 41, "title": "A", "status": "pending"}], "message": "ok"})
        result = next(waits)
        result.setdefault("tasks", [{"id": 41, "title": "A", "status": "completed", "result": "Wrote a"}])
        return json.dumps(result)

    answer, _ = play(conversation("opencode", prompt, broker=PRIMARY), execute)
    assert seen[0] == ("aiswarm_submit_tasks", {"tasks": tasks})
    assert seen[1:] == [("aiswarm_wait_for_tasks", {"task_ids": [41], "mode": "all"})] * 2
    assert answer == "All tasks finished.\nTask 41 (A): completed - Wrote a"


def test_primary_answers_at_once_when_its_client_followed_the_mcp_task_to_the_results() -> None:
    tasks = [{"title": "A", "prompt": "Create the file a containing exactly: 1"}]
    prompt = f"Delegate with submit_tasks:\n```json\n{json.dumps(tasks)}\n```\nthen wait_for_tasks."
    finished = {"done": True, "tasks": [{"id": 7, "title": "A", "status": "completed", "result": "Wrote a"}]}
    seen: list[str] = []

    def execute(name: str, args: dict[str, Any]) -> str:
        seen.append(name)
        return json.dumps({**finished, "finished": [7], "pending": [], "message": "1 task(s) finished."})

    answer, _ = play(conversation("claude", prompt, broker=PRIMARY), execute)
    assert seen == ["mcp__aiswarm__submit_tasks"]
    assert answer == "All tasks finished.\nTask 7 (A): completed - Wrote a"


def test_unknown_instructions_get_a_plain_answer() -> None:
    step = decide(conversation("qwen", "Tell me a joke."))
    assert isinstance(step, Answer) and "no instructions I can follow" in step.text


def test_side_requests_get_minimal_schema_instances() -> None:
    schema = {
        "type": "OBJECT",
        "properties": {
            "reasoning": {"type": "STRING"},
            "next_speaker": {"type": "string", "enum": ["model", "user"]},
            "confidence": {"type": "number"},
            "flags": {"type": "array", "items": {"type": "boolean"}, "minItems": 1},
        },
    }
    assert minimal_instance(schema) == {
        "reasoning": "",
        "next_speaker": "user",
        "confidence": 0,
        "flags": [False],
    }
    step = decide(Conversation(user_texts=["route"], response_schema=schema))
    assert isinstance(step, Answer) and step.kind is StepKind.SIDE
    assert decide(Conversation(user_texts=["Generate a title"])) == Answer("Scripted task", StepKind.SIDE)


def test_required_boolean_parameters_such_as_geminis_wait_for_previous_are_filled() -> None:
    claim = ToolDeclaration(
        "mcp_aiswarm_claim_task",
        {
            "properties": {"task_id": {}, "wait_for_previous": {"type": "boolean"}},
            "required": ["wait_for_previous"],
        },
    )
    conv = Conversation(user_texts=["claim_task task_id 1"], tools=[claim])
    assert decide(conv) == CallTool(
        claim.name, {"task_id": 1, "wait_for_previous": False}, StepKind.COORDINATION
    )


def test_broker_tools_prefer_the_mcp_name_over_a_cli_tool_of_the_same_name() -> None:
    conv = Conversation(tools=[ToolDeclaration("list_agents"), ToolDeclaration("mcp__aiswarm__list_agents")])
    assert Toolbox(conv).broker("list_agents") == "mcp__aiswarm__list_agents"
    assert Toolbox(Conversation(tools=[ToolDeclaration("claim_task")])).broker("claim_task") == "claim_task"


def test_result_payload_unwraps_gemini_and_prose_wrappers() -> None:
    wrapped = '<untrusted_context>{"claimed": true, "task": null}</untrusted_context>'
    assert result_payload(wrapped) == {"claimed": True, "task": None}
    assert result_payload(json.dumps({"output": wrapped})) == {"claimed": True, "task": None}
    assert result_payload('Tool said: {"a": 1} and more') == {"a": 1}
    assert result_payload("no json here") is None


def test_a_conversation_that_diverges_from_the_script_is_not_papered_over() -> None:
    conv = conversation("qwen", "Call claim_task with task_id 1.")
    conv.calls.append(ToolCall("x", "write_file", {}))
    conv.results.append(ToolResult("x", "write_file", "ok"))
    step = decide(conv)
    assert isinstance(step, Answer) and "lost track" in step.text


ASK_TASK = "ASK Which greeting?\nWRITE out/greeting.txt\n```\n{answer}\n```\nRESULT The primary said {answer}"
ASKING = [*BROKER, "ask_primary"]


def test_ask_gets_the_answer_from_ask_primary_and_uses_it_in_files_and_the_result(tmp_path: Path) -> None:
    world = FakeWorld(tmp_path, ASK_TASK)
    asked: list[dict[str, Any]] = []

    def execute(name: str, args: dict[str, Any]) -> str:
        if name.endswith("ask_primary"):
            asked.append(args)
            return json.dumps({"status": "answered", "answer": "hello", "on_timeout": "continue"})
        return world(name, args)

    play(conversation("gemini", "Call claim_task with task_id 3.", ASKING), execute)
    assert asked == [{"task_id": 3, "fence_token": 5, "question": "Which greeting?"}]
    assert (tmp_path / "out" / "greeting.txt").read_text() == "hello\n"
    assert world.reports[0]["success"] is True and world.reports[0]["result"] == "The primary said hello"


def test_an_open_question_is_waited_for_with_a_new_cursor_each_time(tmp_path: Path) -> None:
    world = FakeWorld(tmp_path, "ASK Which port?\nRESULT port {answer}")
    waits: list[dict[str, Any]] = []

    def execute(name: str, args: dict[str, Any]) -> str:
        if name.endswith("ask_primary"):
            return json.dumps({"status": "open", "cursor": "0.1", "on_timeout": "continue"})
        if name.endswith("wait_for_next_event"):
            waits.append(args)
            answered = (
                [{"kind": "question_answered", "task_id": 4, "detail": "8080"}] if len(waits) == 2 else []
            )
            return json.dumps({"events": answered, "cursor": f"{len(waits)}.{len(waits) + 1}"})
        return world(name, args)

    play(conversation("qwen", "Call claim_task with task_id 4.", ASKING), execute)
    assert [w["cursor"] for w in waits] == ["0.1", "1.2"]
    assert world.reports[0]["result"] == "port 8080"


@pytest.mark.parametrize("on_timeout", ["continue", "fail"])
def test_a_question_past_its_deadline_goes_on_by_its_own_judgement_or_stops(
    on_timeout: str, tmp_path: Path
) -> None:
    world = FakeWorld(tmp_path, "ASK Which port?\nRESULT port {answer}")

    def execute(name: str, args: dict[str, Any]) -> str:
        if name.endswith("ask_primary"):
            return json.dumps({"status": "expired", "on_timeout": on_timeout, "message": "attempt failed"})
        return world(name, args)

    answer, _ = play(conversation("qwen", "Call claim_task with task_id 4.", ASKING), execute)
    if on_timeout == "continue":
        assert world.reports[0]["result"] == "port (no answer: my own judgement)"
    else:
        assert world.reports == [] and "cancelled" in answer  # the attempt is over: nothing to report
