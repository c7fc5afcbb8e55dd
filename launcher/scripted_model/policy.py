"""What the scripted model does next, decided from the conversation alone.

The policy behaves like a competent agent that follows its prompt literally. It keeps no
state between requests: each request carries the whole conversation, and the policy
*replays* a small agent script against it. A script is a generator that yields the next
step (call a tool, or answer in text) and receives each tool's result; replaying feeds it
the results already in the conversation, and the first step past them is the answer.

Which script runs depends on the user prompt (the text the launcher or the user wrote):

* **primary**: the prompt names ``submit_tasks`` and holds a fenced ``json`` block with a list
  of tasks (or ``{"tasks": [...]}``). The agent calls ``submit_tasks`` with them, then
  ``wait_for_tasks`` with the returned ids (``mode: "all"``) until ``done`` (at most 4 waits),
  then answers with one line per task. When the submit's result already holds the finished tasks (a client
  speaking MCP Tasks followed the task handle itself), it answers at once.
* **assigned** (per-task mode): the prompt carries the task itself, between ``<task id="N">`` and
  ``</task>``, with a ``Working directory:`` line and the ``fence_token`` to report progress with. The agent
  does the task and gives its final answer, which the launcher reports: the result (the files written, or
  ``RESULT``'s text), ``FAILED: <why>`` when it could not, or nothing at all after ``SILENT``. It calls no
  broker tool unless the task asks for one (``PROGRESS``, ``CALL``).
* **session**: the prompt names ``wait_for_next_event``. The agent calls it in a loop,
  passing back the returned ``cursor``; on a ``task_available`` event it claims that task,
  does it and reports; it stops after N consecutive idle waits, where N comes from the
  prompt ("stop after 2 idle waits"; default 3). ``timeout_seconds N`` in the prompt is passed on.
* **worker**: the prompt names ``claim_task``. The agent calls it (with ``task_id`` when the
  prompt says ``task_id 12``), does the task, reports with ``report_task_completion`` and
  answers in text. If the claim says ``claimed: false`` it answers without working.

"Doing the task" means following the task's own ``prompt``, written in the grammar of
:mod:`launcher.scripted_model.task_grammar`, with the CLI's own file tools (``write_file`` /
``read_file`` in qwen and gemini, ``write`` / ``read`` in opencode, ``Write`` / ``Read`` in Claude
Code), using absolute paths under the task's ``working_dir``; a CLI without a file-writing tool
(codex) writes through its shell tool (``exec_command``). If a write is refused because the file
was not read first (qwen, opencode, Claude Code), the agent reads it and writes again. A prompt outside the grammar, a missing
tool or a failed write ends in ``success: false`` with the reason, never a fake success.

Broker tools are found by suffix, since each CLI prefixes MCP tool names differently
(qwen ``mcp__aiswarm__claim_task``, gemini ``mcp_aiswarm_claim_task``, opencode
``aiswarm_claim_task``). Requests that declare no tools, or ask for JSON matching a schema,
are side requests (titles, routing, next-speaker and loop checks) and get a minimal answer.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Generator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from launcher.prompts import FAILED_PREFIX
from launcher.scripted_model.conversation import Conversation, ToolDeclaration, ToolResult, result_payload
from launcher.scripted_model.task_grammar import (
    AskPrimary,
    CallMcpTool,
    Fail,
    ReportProgress,
    ReportResult,
    Silent,
    TaskPromptError,
    WriteFile,
    parse_task_prompt,
)


class StepKind(StrEnum):
    """What a model response does, for the request statistics."""

    COORDINATION = "coordination"  # calls a broker tool (claim, report, wait, submit ...)
    WORK = "work"  # calls one of the CLI's own tools (read, write ...)
    ANSWER = "answer"  # the final plain-text answer of a run
    SIDE = "side"  # a side request: title, routing, next-speaker or loop check


@dataclass(frozen=True)
class CallTool:
    """Ask the CLI to call the declared tool ``name`` with ``arguments``."""

    name: str
    arguments: dict[str, Any]
    kind: StepKind


@dataclass(frozen=True)
class Answer:
    """Answer in text (for a side request: the JSON text the schema asks for)."""

    text: str
    kind: StepKind = StepKind.ANSWER


Step = CallTool | Answer
Script = Generator[Step, ToolResult, None]

BROKER_TOOLS = frozenset(
    {
        "register_agent",
        "wait_for_next_event",
        "claim_task",
        "report_progress",
        "ask_primary",
        "report_task_completion",
        "update_heartbeat",
        "get_agent_status",
        "submit_task",
        "submit_tasks",
        "get_task",
        "list_tasks",
        "wait_for_tasks",
        "answer_question",
        "cancel_task",
        "list_agents",
        "issue_agent_token",
        "release_task",
        "broker_status",
    }
)

WRITE_TOOLS = ("write_file", "write", "Write")
READ_TOOLS = ("read_file", "read", "Read")
SHELL_TOOLS = ("exec_command", "shell", "Bash", "run_shell_command", "bash")
"""The CLIs' own tools, by the names each CLI gives them (a shell writes only when no write tool exists)."""

DEFAULT_IDLE_WAITS = 3
MAX_RESULT_WAITS = 4  # stays under the CLIs' loop guards (5 identical calls in a row)
MAX_ANSWER_WAITS = 6  # waits for an answer after ask_primary returned first (each with a new cursor)
ANSWER_WAIT_SECONDS = 50
NO_ANSWER = "(no answer: my own judgement)"


PLANNER_MARKER = "You are the aiswarm planner"


def decide(conversation: Conversation) -> Step:
    """The next step for this conversation."""
    if PLANNER_MARKER in conversation.system:
        return Answer(plan_for(conversation.prompt), StepKind.SIDE)
    if conversation.response_schema is not None:
        return Answer(json.dumps(minimal_instance(conversation.response_schema)), StepKind.SIDE)
    if not conversation.tools:
        return Answer("Scripted task", StepKind.SIDE)
    script = _choose_script(conversation)
    step = next(script)
    for call, result in conversation.history():
        if isinstance(step, Answer):
            return Answer("I already gave my final answer; there is nothing more to do.")
        if call.name != step.name:
            return Answer(
                f"Scripted model lost track of the conversation: expected a call to {step.name}, found {call.name}."
            )
        if result is None:
            return Answer(f"Scripted model error: the call to {call.name} has no result.")
        step = script.send(result)
    return step


def _choose_script(conversation: Conversation) -> Script:
    prompt = conversation.prompt
    tools = Toolbox(conversation)
    if (assigned := _assigned_task(prompt)) is not None:
        return _assigned(tools, conversation, *assigned)
    if "submit_tasks" in prompt and (tasks := _tasks_block(prompt)) is not None:
        return _primary(tools, tasks, _int_after(prompt, r"timeout_seconds"))
    if re.search(r"claim_task with task_id \d+", prompt):
        return _worker(tools, conversation, _int_after(prompt, r"task[_ ]?id"))
    if "wait_for_next_event" in prompt:
        idle = _int_before(prompt, r"(?:consecutive\s+)?(?:idle|empty)\s+(?:waits?|calls?|polls?)")
        return _session(
            tools, conversation, idle or DEFAULT_IDLE_WAITS, _int_after(prompt, r"timeout_seconds")
        )
    if "claim_task" in prompt:
        return _worker(tools, conversation, _int_after(prompt, r"task[_ ]?id"))
    return _say(
        "I have no instructions I can follow: the prompt names none of claim_task, "
        "wait_for_next_event or submit_tasks (with a ```json block of tasks)."
    )


class Toolbox:
    """The tools a conversation declares, looked up by what they are for."""

    def __init__(self, conversation: Conversation) -> None:
        self.declared = conversation.tools

    def broker(self, logical: str) -> str | None:
        """The declared name of broker tool ``logical`` (any MCP prefix), or ``None``.

        A prefixed MCP name wins over an exact one: qwen has a ``list_agents`` tool of its own.
        """
        prefixed = re.compile(rf".+_{re.escape(logical)}$")
        for tool in self.declared:
            if prefixed.match(tool.name):
                return tool.name
        return logical if any(t.name == logical for t in self.declared) else None

    def own(self, *names: str) -> ToolDeclaration | None:
        """The first declared CLI tool with one of these exact names."""
        for name in names:
            for tool in self.declared:
                if tool.name == name:
                    return tool
        return None

    def call(self, logical: str, arguments: dict[str, Any]) -> CallTool:
        """A call to broker tool ``logical``; the caller has checked it is declared."""
        name = self.broker(logical) or logical
        return CallTool(name, self.complete(name, arguments), StepKind.COORDINATION)

    def work(self, tool: ToolDeclaration, arguments: dict[str, Any]) -> CallTool:
        """A call to one of the CLI's own tools."""
        return CallTool(tool.name, self.complete(tool.name, arguments), StepKind.WORK)

    def complete(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        # gemini adds a required-looking `wait_for_previous` to every tool; fill such
        # booleans with false rather than leave a required parameter out.
        declared = next((t for t in self.declared if t.name == name), None)
        if declared is None:
            return arguments
        complete = dict(arguments)
        for param in declared.required:
            spec = declared.properties.get(param, {})
            if param not in complete and isinstance(spec, dict) and spec.get("type") == "boolean":
                complete[param] = False
        return complete


# --- scripts -----------------------------------------------------------------------------


def _say(text: str) -> Script:
    yield Answer(text)


def _worker(tools: Toolbox, conversation: Conversation, task_id: int | None) -> Script:
    if tools.broker("claim_task") is None:
        yield Answer(
            "I cannot take a task: no claim_task tool is declared (is the aiswarm MCP server configured?)."
        )
        return
    claim = yield tools.call("claim_task", {} if task_id is None else {"task_id": task_id})
    summary = yield from _handle_claim(tools, conversation, claim)
    yield Answer(summary)


def _assigned(
    tools: Toolbox, conversation: Conversation, task: dict[str, Any], fence_token: int | None
) -> Script:
    outcome = yield from _perform(tools, conversation, task, fence_token)
    if outcome.cancelled:
        yield Answer(f"{FAILED_PREFIX} the task was cancelled")
    elif not outcome.success:
        yield Answer(f"{FAILED_PREFIX} {outcome.error}")
    elif outcome.silent:
        yield Answer("")
    else:
        yield Answer(_summary(outcome))


_ASSIGNED_TASK = re.compile(r'<task id="(?P<id>\d+)">\n(?P<prompt>.*)\n</task>', re.DOTALL)
_WORKING_DIRECTORY = re.compile(r"^Working directory: (?P<path>/.*?)\s*$", re.MULTILINE)


def _assigned_task(prompt: str) -> tuple[dict[str, Any], int | None] | None:
    """The task a per-task prompt carries (id, prompt, working_dir) and the fence to report with, or None."""
    task = _ASSIGNED_TASK.search(prompt)
    if task is None:
        return None
    directory = _WORKING_DIRECTORY.search(prompt)
    return (
        {
            "id": int(task["id"]),
            "prompt": task["prompt"],
            "working_dir": directory["path"] if directory else None,
        },
        _int_after(prompt, "fence_token"),
    )


def _session(tools: Toolbox, conversation: Conversation, idle_limit: int, timeout: int | None) -> Script:
    if tools.broker("wait_for_next_event") is None or tools.broker("claim_task") is None:
        yield Answer("I cannot wait for tasks: wait_for_next_event or claim_task is not declared.")
        return
    cursor: Any = None
    idle = 0
    summaries: list[str] = []
    while idle < idle_limit:
        arguments: dict[str, Any] = {}
        if cursor is not None:
            arguments["cursor"] = cursor
        if timeout is not None:
            arguments["timeout_seconds"] = timeout
        result = yield tools.call("wait_for_next_event", arguments)
        payload = result_payload(result.text)
        if result.is_error or payload is None or "cursor" not in payload:
            summaries.append(f"wait_for_next_event failed: {_first_line(result.text)}")
            break
        cursor = payload["cursor"]
        events = payload.get("events") or []
        available = [e for e in events if isinstance(e, dict) and e.get("kind") == "task_available"]
        if not available:
            idle += 1
            continue
        idle = 0
        for event in available:
            claim = yield tools.call("claim_task", {"task_id": event.get("task_id")})
            summaries.append((yield from _handle_claim(tools, conversation, claim)))
    done = " ".join(summaries) if summaries else "No tasks came."
    yield Answer(f"Stopped after {idle} idle waits. {done}")


def _primary(tools: Toolbox, tasks: list[Any], timeout: int | None) -> Script:
    if tools.broker("submit_tasks") is None or tools.broker("wait_for_tasks") is None:
        yield Answer("I cannot delegate: submit_tasks or wait_for_tasks is not declared.")
        return
    submitted = yield tools.call("submit_tasks", {"tasks": tasks})
    payload = result_payload(submitted.text)
    listed = payload.get("tasks") if payload else None
    ids = [t["id"] for t in listed or [] if isinstance(t, dict) and "id" in t]
    if payload is not None and payload.get("done") is True and ids:
        # A client speaking MCP Tasks followed the task itself: the submit's result is the finished tasks.
        yield Answer(_primary_summary(payload))
        return
    if submitted.is_error or not ids:
        yield Answer(f"Submitting the tasks failed: {_first_line(submitted.text)}")
        return
    arguments: dict[str, Any] = {"task_ids": ids, "mode": "all"}
    if timeout is not None:
        arguments["timeout_seconds"] = timeout
    waited: dict[str, Any] | None = None
    for _ in range(MAX_RESULT_WAITS):
        result = yield tools.call("wait_for_tasks", arguments)
        waited = result_payload(result.text)
        if result.is_error or waited is None:
            yield Answer(f"Waiting for tasks {ids} failed: {_first_line(result.text)}")
            return
        if waited.get("done"):
            break
    assert waited is not None
    yield Answer(_primary_summary(waited))


def _primary_summary(waited: dict[str, Any]) -> str:
    """The primary's answer from a ``wait_for_tasks`` reply: a head line, then one line per task."""
    lines = [
        f"Task {t.get('id')} ({t.get('title')}): {t.get('status')} - {t.get('result') or t.get('error') or ''}".rstrip(
            " -"
        )
        for t in waited.get("tasks") or []
        if isinstance(t, dict)
    ]
    head = "All tasks finished." if waited.get("done") else f"Still pending: {waited.get('pending')}."
    return "\n".join([head, *lines])


# --- doing one claimed task ---------------------------------------------------------------


@dataclass
class _Outcome:
    success: bool
    written: list[str] = field(default_factory=list)
    error: str | None = None
    cancelled: bool = False
    result: str | None = None
    silent: bool = False


def _summary(outcome: _Outcome) -> str:
    """What a successful task's result says: ``RESULT``'s text or what the tools answered, else the files written."""
    return outcome.result or (f"Wrote {', '.join(outcome.written)}" if outcome.written else "Done.")


def _handle_claim(
    tools: Toolbox, conversation: Conversation, claim: ToolResult
) -> Generator[Step, ToolResult, str]:
    """Work on a claimed task and report it; returns a one-line summary for the final answer."""
    payload = result_payload(claim.text)
    if claim.is_error or payload is None:
        return f"claim_task failed: {_first_line(claim.text)}"
    task = payload.get("task")
    if not payload.get("claimed") or not isinstance(task, dict):
        return f"Task not claimed, nothing to do: {payload.get('message') or 'no message'}"
    task_id, fence_token = task.get("id"), payload.get("fence_token")
    outcome = yield from _perform(tools, conversation, task, fence_token)
    if outcome.cancelled:
        return f"Task {task_id} was cancelled; I stopped."
    if tools.broker("report_task_completion") is None:
        return f"Task {task_id}: cannot report, report_task_completion is not declared."
    arguments: dict[str, Any] = {"task_id": task_id, "fence_token": fence_token, "success": outcome.success}
    if outcome.success:
        arguments["result"] = _summary(outcome)
    else:
        arguments["result"] = f"Failed: {outcome.error}"
        arguments["error"] = outcome.error
    report = yield tools.call("report_task_completion", arguments)
    reported = result_payload(report.text) or {}
    said = reported.get("message") or _first_line(report.text)
    return f"Task {task_id}: {arguments['result']} (broker: {said})"


def _perform(
    tools: Toolbox, conversation: Conversation, task: dict[str, Any], fence_token: Any
) -> Generator[Step, ToolResult, _Outcome]:
    try:
        operations = parse_task_prompt(str(task.get("prompt") or ""))
    except TaskPromptError as exc:
        return _Outcome(False, error=f"cannot do this task: {exc}")
    working_dir = task.get("working_dir") or cli_working_dir(conversation)
    written: list[str] = []
    reported: str | None = None
    called: list[str] = []
    silent = False
    decided: str | None = None  # the primary's answer to an ASK
    for op in operations:
        if isinstance(op, Fail):
            return _Outcome(False, written, op.reason)
        if isinstance(op, Silent):
            silent = True
            continue
        if isinstance(op, AskPrimary):
            asked = yield from _ask(tools, task, fence_token, op.question)
            if isinstance(asked, _Outcome):
                asked.written = written
                return asked
            decided = asked
            continue
        if isinstance(op, ReportResult):
            reported = op.text if decided is None else op.text.replace("{answer}", decided)
            continue
        if isinstance(op, CallMcpTool):
            name = tools.broker(op.tool)
            if name is None:
                return _Outcome(False, written, f"the tool {op.tool} is not declared")
            kind = StepKind.COORDINATION if op.tool in BROKER_TOOLS else StepKind.WORK
            answer = yield CallTool(name, tools.complete(name, dict(op.arguments)), kind)
            if answer.is_error:
                return _Outcome(False, written, f"{op.tool} failed: {_first_line(answer.text)}")
            called.append(f"{op.tool}: {_first_line(answer.text)}")
            continue
        if isinstance(op, ReportProgress):
            if tools.broker("report_progress") is None:
                return _Outcome(False, written, "report_progress is not declared")
            progress = yield tools.call(
                "report_progress",
                {"task_id": task.get("id"), "fence_token": fence_token, "message": op.message},
            )
            if (result_payload(progress.text) or {}).get("cancelled") is True:
                return _Outcome(False, written, "cancelled", cancelled=True)
            continue
        assert isinstance(op, WriteFile)
        if decided is not None:
            op = WriteFile(op.path, op.content.replace("{answer}", decided))
        write = tools.own(*WRITE_TOOLS)
        shell = tools.own(*SHELL_TOOLS) if write is None else None
        if write is None and shell is None:
            return _Outcome(
                False, written, "this CLI declares no file-writing tool (write_file or write) and no shell"
            )
        if not working_dir:
            return _Outcome(False, written, "no working directory: the task has none and the CLI states none")
        path = posixpath.join(str(working_dir), op.path)
        if shell is not None:
            result = yield tools.work(shell, _shell_write(shell, path, op.content))
            if _failed(result):
                return _Outcome(False, written, f"writing {op.path} failed: {_first_line(result.text)}")
            written.append(op.path)
            continue
        assert write is not None
        result = yield tools.work(write, {_path_param(write): path, "content": op.content})
        if _needs_read_first(result):
            read = tools.own(*READ_TOOLS)
            if read is None:
                return _Outcome(
                    False, written, f"writing {op.path} needs a read first, but no read tool is declared"
                )
            yield tools.work(read, {_path_param(read): path})
            result = yield tools.work(write, {_path_param(write): path, "content": op.content})
        if _failed(result):
            return _Outcome(False, written, f"writing {op.path} failed: {_first_line(result.text)}")
        written.append(op.path)
    return _Outcome(True, written, result=reported or ("; ".join(called) if called else None), silent=silent)


def _ask(
    tools: Toolbox, task: dict[str, Any], fence_token: Any, question: str
) -> Generator[Step, ToolResult, str | _Outcome]:
    """Ask the primary and wait for the answer: the answer (or :data:`NO_ANSWER` past the deadline), or the
    outcome that ends the task (no tool, a refusal, the attempt ended, no answer after every wait)."""
    if tools.broker("ask_primary") is None:
        return _Outcome(False, error="ask_primary is not declared")
    task_id = task.get("id")
    asked = yield tools.call(
        "ask_primary", {"task_id": task_id, "fence_token": fence_token, "question": question}
    )
    payload = result_payload(asked.text)
    if asked.is_error or payload is None:
        return _Outcome(False, error=f"ask_primary failed: {_first_line(asked.text)}")
    status, cursor = payload.get("status"), payload.get("cursor")
    if status == "answered":
        return str(payload.get("answer"))
    if status == "expired" and payload.get("on_timeout") == "continue":
        return NO_ANSWER
    if status != "open":
        return _Outcome(
            False, error=f"no answer: {payload.get('message')}", cancelled=status in ("withdrawn", "expired")
        )
    for _ in range(MAX_ANSWER_WAITS):
        waited = yield tools.call(
            "wait_for_next_event", {"cursor": cursor, "timeout_seconds": ANSWER_WAIT_SECONDS}
        )
        events = result_payload(waited.text)
        if waited.is_error or events is None:
            return _Outcome(False, error=f"waiting for the answer failed: {_first_line(waited.text)}")
        cursor = events.get("cursor")
        for event in events.get("events") or []:
            if not isinstance(event, dict) or event.get("task_id") != task_id:
                continue
            if event.get("kind") == "question_answered":
                return str(event.get("detail"))
            if event.get("kind") == "question_expired":
                detail = str(event.get("detail"))
                return (
                    NO_ANSWER if "own judgement" in detail else _Outcome(False, error=detail, cancelled=True)
                )
            if event.get("kind") in ("task_cancelled", "lease_lost"):
                return _Outcome(False, error=str(event.get("detail")), cancelled=True)
    return _Outcome(False, error=f"no answer to {question!r} after {MAX_ANSWER_WAITS} waits")


def cli_working_dir(conversation: Conversation) -> str | None:
    """The working directory the CLI states in its system prompt or context, if any."""
    text = f"{conversation.system}\n{conversation.prompt}"
    for pattern in (
        r"<cwd>(/[^<]+)</cwd>",
        r"Primary working directory:\s*(/\S+)",
        r"I'm currently working in the directory:\s*(/\S+)",
        r"Working directory:\s*(/\S+)",
        r"Workspace Directories:\s*\n\s*-\s*(/\S+)",
        r"working directory is:?\s*(/\S+)",
    ):
        if m := re.search(pattern, text, re.IGNORECASE):
            return m.group(1).rstrip(".,`'\"")
    return None


def _shell_write(shell: ToolDeclaration, path: str, content: str) -> dict[str, Any]:
    """Arguments for a shell tool that writes ``content`` to ``path`` exactly (creating its directory)."""
    script = (
        f"mkdir -p {shlex.quote(posixpath.dirname(path))} && "
        f"printf '%s' {shlex.quote(content)} > {shlex.quote(path)}"
    )
    if "cmd" in shell.properties:
        return {"cmd": script}
    command = shell.properties.get("command")
    if isinstance(command, dict) and command.get("type") == "array":
        return {"command": ["bash", "-c", script]}
    return {"command": script}


def _path_param(tool: ToolDeclaration) -> str:
    for name in ("file_path", "absolute_path", "filePath", "path"):
        if name in tool.properties:
            return name
    return "file_path"


_READ_FIRST = re.compile(
    r"not been read|read_file tool first|must read|read (?:it|the file) (?:first|before)", re.I
)


def _needs_read_first(result: ToolResult) -> bool:
    return bool(_READ_FIRST.search(result.text))


_EXIT_CODE = re.compile(r"(?:exit(?:ed with)? code|exit status)[: ]*(-?\d+)", re.IGNORECASE)


def _failed(result: ToolResult) -> bool:
    if result.is_error or re.match(r"\s*(?:error|failed)\b", result.text, re.IGNORECASE):
        return True
    exit_code = _EXIT_CODE.search(result.text)
    return exit_code is not None and int(exit_code.group(1)) != 0


def _first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0][:300] if stripped else "(empty result)"


def _int_after(text: str, label: str) -> int | None:
    m = re.search(rf"\b{label}\b[\"'`]?\s*(?:[:=]|is|of)?\s*(\d+)", text, re.IGNORECASE)
    return int(m.group(1)) if m else None


def _int_before(text: str, label: str) -> int | None:
    m = re.search(rf"(\d+)\s+{label}", text, re.IGNORECASE)
    return int(m.group(1)) if m else None


def _tasks_block(prompt: str) -> list[Any] | None:
    for m in re.finditer(r"```json[^\n]*\n(.*?)```", prompt, re.DOTALL):
        try:
            value = json.loads(m.group(1))
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and isinstance(value.get("tasks"), list):
            return value["tasks"]
        if isinstance(value, list):
            return value
    return None


# --- side requests -------------------------------------------------------------------------


def minimal_instance(schema: Any, name: str = "") -> Any:
    """A small value that satisfies a JSON schema (OpenAPI-style upper-case types accepted).

    ``next_speaker`` is answered ``"user"`` so that gemini ends its turn instead of
    prompting the model to continue.
    """
    if not isinstance(schema, dict):
        return {}
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return "user" if name == "next_speaker" and "user" in enum else enum[0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            return minimal_instance(options[0], name)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = str(kind).lower() if kind else ("object" if "properties" in schema else "string")
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        return {key: minimal_instance(sub, key) for key, sub in props.items()}
    if kind == "array":
        count = schema.get("minItems") or 0
        return [minimal_instance(schema.get("items", {}), name) for _ in range(int(count))]
    if kind in ("number", "integer"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return ""


_FENCED = re.compile(r"```[a-zA-Z]*\n(?P<body>.*?)\n```", re.DOTALL)


def plan_for(request: str) -> str:
    """The scripted planner's answer: a fenced block in the request verbatim (so tests can hand it any answer,
    malformed ones included), else a two-step plan: do the request, then review it."""
    fenced = _FENCED.search(request)
    if fenced is not None:
        return fenced["body"]
    text = " ".join(request.split()) or "the request"
    plan = {
        "name": "plan",
        "tasks": [
            {"key": "work", "title": text[:60], "persona": "implementer", "prompt": request},
            {
                "key": "review",
                "title": f"Review: {text[:50]}",
                "persona": "reviewer",
                "depends_on": ["work"],
                "prompt": f"Review the work done for: {text}",
            },
        ],
    }
    return "```json\n" + json.dumps(plan, indent=2) + "\n```"
