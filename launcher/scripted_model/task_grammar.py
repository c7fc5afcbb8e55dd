"""The small language a task prompt is written in, so the scripted model can do the work.

A task's ``prompt`` is read line by line. Blank lines and lines starting with ``#`` are
ignored; every other line must be one of these directives (keywords are case-insensitive):

``WRITE <relative/path>`` followed by a fenced block
    Write the block's lines to ``<working_dir>/<relative/path>``, each line ending in a
    newline. The fence is three or more backticks or tildes (an info string after the
    opening fence is allowed and ignored); the block ends at the same fence::

        WRITE notes/hello.txt
        ```
        hello
        world
        ```

    writes ``"hello\\nworld\\n"``.

``Create the file <relative/path> containing exactly: <text>``
    Write ``<text>`` (the rest of the line, verbatim, no newline added). ``Create file``
    works too.

``PROGRESS <message>``
    Call ``report_progress`` with this message (renews the lease) before going on.

``FAIL <reason>``
    Stop and report the task as failed with this reason (for tests of failure handling).

``SILENT``
    End the run with an empty final answer (for tests of how an empty answer is handled); the work is done.

``CALL <tool> <json object>``
    Call the MCP tool ``<tool>`` (under whatever prefix the CLI gives MCP tools) with these arguments, e.g.
    ``CALL files__echo {"text": "hi"}``; the task's result then says what it answered. A tool error fails the task.

``RESULT <text>``
    Report the task done with ``<text>`` as its result (e.g. a reviewer's verdict) instead of the list of files
    written.

``ASK <question>``
    Ask the primary with ``ask_primary`` and wait for the answer (``wait_for_next_event`` with the cursor it
    gives, while it is open). ``{answer}`` in later lines (a ``RESULT``, a file's content) becomes the answer, or
    ``(no answer: my own judgement)`` when the question's deadline passed unanswered.

Paths must be relative and stay inside the task's working directory. Anything else (an
unknown line, a ``WRITE`` without a block, an unterminated block, an absolute path, ``..``)
makes the whole prompt invalid: the agent reports the task failed with a message naming
the offending line, instead of pretending it did the work.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass

_WRITE = re.compile(r"^WRITE\s+(?P<path>\S.*?)\s*$", re.IGNORECASE)
_CREATE = re.compile(
    r"^Create\s+(?:the\s+)?file\s+(?P<path>\S+)\s+containing\s+exactly:\s?(?P<text>.*)$", re.IGNORECASE
)
_PROGRESS = re.compile(r"^PROGRESS\s+(?P<message>\S.*?)\s*$", re.IGNORECASE)
_FAIL = re.compile(r"^FAIL\s+(?P<reason>\S.*?)\s*$", re.IGNORECASE)
_CALL = re.compile(r"^CALL\s+(?P<tool>[A-Za-z0-9_.-]+)(?:\s+(?P<arguments>\{.*\}))?\s*$", re.IGNORECASE)
_SILENT = re.compile(r"^SILENT$", re.IGNORECASE)
_RESULT = re.compile(r"^RESULT\s+(?P<text>\S.*?)\s*$", re.IGNORECASE)
_ASK = re.compile(r"^ASK\s+(?P<question>\S.*?)\s*$", re.IGNORECASE)
_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})[^`]*$")


@dataclass(frozen=True)
class WriteFile:
    """Write ``content`` to ``path`` (relative to the task's working directory)."""

    path: str
    content: str


@dataclass(frozen=True)
class ReportProgress:
    """Report progress with ``message``."""

    message: str


@dataclass(frozen=True)
class Fail:
    """Give up and report the task failed with ``reason``."""

    reason: str


@dataclass(frozen=True)
class ReportResult:
    """Report the task done with ``text`` as its result."""

    text: str


@dataclass(frozen=True)
class CallMcpTool:
    """Call the MCP tool ``tool`` with ``arguments``."""

    tool: str
    arguments: dict[str, object]


@dataclass(frozen=True)
class Silent:
    """End with an empty final answer."""


@dataclass(frozen=True)
class AskPrimary:
    """Ask the primary ``question`` and wait for its answer."""

    question: str


Operation = WriteFile | ReportProgress | Fail | ReportResult | CallMcpTool | Silent | AskPrimary


class TaskPromptError(ValueError):
    """The task prompt does not follow the grammar; the message says where and why."""


def parse_task_prompt(prompt: str) -> list[Operation]:
    """Parse a task prompt into operations, in order.

    Raises :class:`TaskPromptError` for anything outside the grammar, or a prompt that asks
    for nothing at all.
    """
    lines = prompt.splitlines()
    operations: list[Operation] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        number = i + 1
        i += 1
        if not line or line.startswith("#"):
            continue
        if m := _WRITE.match(line):
            path = _checked_path(m["path"], number)
            if i >= len(lines) or not (fence := _FENCE.match(lines[i].strip())):
                raise TaskPromptError(f"line {number}: WRITE {path} must be followed by a fenced block (```)")
            closing = fence["fence"]
            body: list[str] = []
            i += 1
            while i < len(lines) and lines[i].strip() != closing:
                body.append(lines[i])
                i += 1
            if i >= len(lines):
                raise TaskPromptError(
                    f"line {number}: the block for WRITE {path} is never closed with {closing}"
                )
            i += 1
            operations.append(WriteFile(path, "".join(f"{b}\n" for b in body)))
        elif m := _CREATE.match(lines[i - 1].lstrip()):
            operations.append(WriteFile(_checked_path(m["path"], number), m["text"]))
        elif m := _PROGRESS.match(line):
            operations.append(ReportProgress(m["message"]))
        elif m := _FAIL.match(line):
            operations.append(Fail(m["reason"]))
        elif m := _CALL.match(line):
            try:
                arguments = json.loads(m["arguments"] or "{}")
            except json.JSONDecodeError as exc:
                raise TaskPromptError(
                    f"line {number}: CALL arguments are not a JSON object: {exc.msg}"
                ) from None
            operations.append(CallMcpTool(m["tool"], arguments))
        elif m := _RESULT.match(line):
            operations.append(ReportResult(m["text"]))
        elif _SILENT.match(line):
            operations.append(Silent())
        elif m := _ASK.match(line):
            operations.append(AskPrimary(m["question"]))
        else:
            raise TaskPromptError(
                f"line {number}: cannot understand {line[:80]!r} "
                "(expected WRITE <path> + fenced block, 'Create the file <path> containing exactly: <text>', "
                "PROGRESS <message>, FAIL <reason>, CALL <tool> <json>, RESULT <text>, ASK <question> or SILENT)"
            )
    if not operations:
        raise TaskPromptError(
            "the task prompt asks for nothing (no WRITE, Create, PROGRESS, FAIL, CALL, RESULT, ASK or SILENT line)"
        )
    return operations


def _checked_path(raw: str, number: int) -> str:
    path = raw.strip().strip("`'\"")
    normal = posixpath.normpath(path)
    if path.startswith("/") or normal == ".." or normal.startswith("../") or normal == ".":
        raise TaskPromptError(
            f"line {number}: path {path!r} must be relative and inside the working directory"
        )
    return normal
