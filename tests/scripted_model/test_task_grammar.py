"""The task-prompt grammar the scripted model follows."""

from __future__ import annotations

import pytest

from launcher.scripted_model.task_grammar import (
    CallMcpTool,
    Fail,
    ReportProgress,
    ReportResult,
    TaskPromptError,
    WriteFile,
    parse_task_prompt,
)


def test_write_block_gives_each_line_a_newline_and_ignores_comments_and_info_string() -> None:
    prompt = "# a comment\n\nWRITE notes/a.txt\n```text\nhello\n  indented\n```\n"
    assert parse_task_prompt(prompt) == [WriteFile("notes/a.txt", "hello\n  indented\n")]


def test_tilde_fence_may_contain_backtick_fences() -> None:
    prompt = "WRITE README.md\n~~~\n```\ncode\n```\n~~~"
    assert parse_task_prompt(prompt) == [WriteFile("README.md", "```\ncode\n```\n")]


def test_create_line_writes_the_rest_of_the_line_verbatim() -> None:
    prompt = "Create the file out/x.txt containing exactly: hi there  "
    assert parse_task_prompt(prompt) == [WriteFile("out/x.txt", "hi there  ")]


def test_progress_and_fail_directives_keep_their_order() -> None:
    prompt = "PROGRESS halfway\ncreate file a containing exactly: 1\nFAIL disk on fire"
    assert parse_task_prompt(prompt) == [ReportProgress("halfway"), WriteFile("a", "1"), Fail("disk on fire")]


@pytest.mark.parametrize(
    ("prompt", "complaint"),
    [
        ("Please refactor the parser.", "line 1: cannot understand"),
        ("WRITE a.txt\nno fence here", "must be followed by a fenced block"),
        ("WRITE a.txt\n```\nnever closed", "never closed"),
        ("WRITE /etc/passwd\n```\nx\n```", "must be relative"),
        ("Create the file ../up.txt containing exactly: x", "must be relative"),
        ("# only a comment\n\n", "asks for nothing"),
    ],
)
def test_anything_outside_the_grammar_is_an_error_naming_the_problem(prompt: str, complaint: str) -> None:
    with pytest.raises(TaskPromptError, match=complaint):
        parse_task_prompt(prompt)


def test_result_sets_the_reported_text() -> None:
    ops = parse_task_prompt("RESULT CHANGES: the parser has no tests\nPROGRESS reviewed")
    assert ops == [ReportResult("CHANGES: the parser has no tests"), ReportProgress("reviewed")]


def test_call_names_an_mcp_tool_with_json_arguments() -> None:
    ops = parse_task_prompt('CALL files__echo {"text": "hi"}\nCALL files__pid')
    assert ops == [CallMcpTool("files__echo", {"text": "hi"}), CallMcpTool("files__pid", {})]
    with pytest.raises(TaskPromptError, match="line 1: CALL arguments are not a JSON object"):
        parse_task_prompt("CALL files__echo {text}")
