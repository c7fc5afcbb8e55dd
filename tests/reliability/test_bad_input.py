"""Bad input, systematically: property tests over every tool's arguments through a real MCP client against a live
broker, size limits, and malformed JSON-RPC and HTTP.

Every call gets a tool error whose text says what is wrong (never the SDK's masked "Error executing tool X" that
hides a crash) or a result that validates as the tool's reply; a refused call leaves the database exactly as it was;
the broker keeps serving throughout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from pydantic import BaseModel

from aiswarm_server import replies
from tests.broker_harness import BrokerProcess
from tests.reliability.swarm import START_TIMEOUT, dump_tables

LIMITS = {
    "AISWARM_MAX_PROMPT_CHARS": "2000",
    "AISWARM_MAX_RESULT_CHARS": "2000",
    "AISWARM_MAX_BATCH": "5",
    "AISWARM_MAX_WAIT_SECONDS": "1",  # every wait in the fuzzing returns within a second
}
WORKER = "fuzz-1"

REPLIES: dict[str, type[BaseModel]] = {
    "register_agent": replies.RegisterReply,
    "wait_for_next_event": replies.WaitReply,
    "claim_task": replies.ClaimReply,
    "report_progress": replies.ProgressReply,
    "report_task_completion": replies.CompletionReply,
    "update_heartbeat": replies.HeartbeatReply,
    "get_agent_status": replies.AgentStatusReply,
    "submit_task": replies.SubmitReply,
    "submit_tasks": replies.SubmitReply,
    "get_task": replies.TaskReply,
    "list_tasks": replies.TasksReply,
    "wait_for_tasks": replies.WaitTasksReply,
    "cancel_task": replies.TaskReply,
    "merge_task": replies.TaskReply,
    "list_agents": replies.AgentsReply,
    "issue_agent_token": replies.TokenReply,
    "revoke_agent_tokens": replies.TokenReply,
    "release_task": replies.CompletionReply,
    "mark_agents_offline": replies.AgentsReply,
    "record_usage": replies.UsageReply,
    "record_isolation": replies.TaskReply,
    "report_agent_state": replies.AgentStateReply,
    "save_quota_pool": replies.QuotaPoolsReply,
    "list_quota_pools": replies.QuotaPoolsReply,
    "usage_summary": replies.UsageSummaryReply,
    "broker_status": replies.StatusReply,
}
WORKER_TOOLS = [
    "register_agent",
    "wait_for_next_event",
    "claim_task",
    "report_progress",
    "report_task_completion",
    "update_heartbeat",
    "get_agent_status",
]
ADMIN_TOOLS = [name for name in REPLIES if name not in WORKER_TOOLS]

# --- strategies -------------------------------------------------------------------------------------------
HOSTILE_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x1b[2J\x07",
    "\r\n\t\x0b\x0c",
    "'; DROP TABLE tasks; --",
    '" OR 1=1 --',
    "1; DELETE FROM agents",
    "../../../../etc/passwd",
    "/etc/passwd\x00.txt",
    "..\\..\\windows\\system32",
    "%2e%2e%2f%2e%2e%2f",
    "$(rm -rf /)",
    "`id`",
    "\u202e\u2066evil\u2069",
    "\ufeff",
    "\u2028\u2029",
    "😀" * 50,
    "²",
    "٣",
    "-1",
    "0",
    "1e309",
    "NaN",
    "null",
    "{}",
    "[]",
    "a" * 5000,
    "ab" * 60_000,
]
text = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=80),  # lone surrogates cannot be sent as UTF-8
)
numbers = st.one_of(
    st.sampled_from([0, -1, 1, 2, 2**31, 2**53 + 1, 2**62, 2**63, 2**64, -(2**63), 10**30, 0.5, -0.0, 1e308]),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
task_ids = st.one_of(st.integers(min_value=1, max_value=12), numbers)
labels = st.one_of(st.sampled_from(["python", "tester", "reviewer", "Bad Label", "x" * 65]), text)
REALISTIC: dict[str, st.SearchStrategy[Any]] = {
    "task_id": task_ids,
    "fence_token": task_ids,
    "task_ids": st.lists(task_ids, max_size=6),
    "depends_on": st.lists(st.one_of(task_ids, st.sampled_from(["a", "b", "c", "²", "-3"])), max_size=4),
    "title": text,
    "prompt": text,
    "result": text,
    "error": text,
    "message": text,
    "reason": text,
    "cursor": st.one_of(st.sampled_from(["0", "1.1", "99999999999999999999", "1.-1", "x.y"]), text),
    "timeout_seconds": st.one_of(st.integers(min_value=-5, max_value=400), numbers),
    "persona": labels,
    "capabilities": st.lists(labels, max_size=4),
    "status": st.one_of(st.sampled_from(["pending", "completed", "dead", "PENDING", "bogus"]), text),
    "limit": st.one_of(st.integers(min_value=-5, max_value=600), numbers),
    "offset": numbers,
    "mode": st.one_of(st.sampled_from(["all", "any", "some"]), text),
    "agent": st.one_of(st.sampled_from(["qwen-9", "../admin", "a" * 65, ""]), text),
    "success": st.one_of(st.booleans(), json_values),
    "data": json_values,
    "working_dir": st.one_of(
        st.sampled_from(["/tmp/work", "relative/dir", "/x\x00y", "/" + "d" * 5000]), text
    ),
}
TASK_FIELDS = ["title", "prompt", "priority", "persona", "capabilities", "depends_on", "key", "max_attempts"]
REALISTIC["key"] = st.sampled_from(["a", "b", "c"])
REALISTIC["priority"] = st.one_of(st.integers(min_value=-1100, max_value=1100), numbers)
REALISTIC["max_attempts"] = st.one_of(st.integers(min_value=-1, max_value=101), numbers)
task_dicts = st.fixed_dictionaries(
    {}, optional={f: st.one_of(REALISTIC[f], json_values) for f in TASK_FIELDS}
).map(lambda d: {"title": "t", "prompt": "p", **d})
REALISTIC["tasks"] = st.one_of(st.lists(task_dicts, max_size=7), json_values)


def arguments(params: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Any subset of the tool's parameters with plausible or hostile values, plus unknown extra fields."""
    base = st.fixed_dictionaries(
        {}, optional={p: st.one_of(REALISTIC.get(p, json_values), json_values) for p in params}
    )
    extra = st.dictionaries(
        st.sampled_from(["extra", "id", "__proto__", "agent_id", ""]), json_values, max_size=2
    )
    return st.builds(lambda a, e: {**e, **a}, base, extra).filter(lambda a: a.get("agent") != WORKER)


# --- a live broker driven from synchronous hypothesis tests --------------------------------------------------
@dataclass
class Live:
    broker: BrokerProcess
    portal: BlockingPortal
    clients: dict[str, Client]
    params: dict[str, list[str]]

    def call(self, role: str, tool: str, args: dict[str, Any]) -> tuple[bool, str, dict[str, Any] | None]:
        result = self.portal.call(self.clients[role].call_tool, tool, args)
        text = " ".join(getattr(block, "text", "") for block in result.content)
        return result.is_error, text, result.structured_content


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    broker = BrokerProcess(tmp_path_factory.mktemp("fuzz") / "home", LIMITS).start(START_TIMEOUT)
    try:
        with start_blocking_portal() as portal, ExitStack() as stack:

            def client(token: str) -> Client:
                http = stack.enter_context(
                    portal.wrap_async_context_manager(
                        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
                    )
                )
                mcp = Client(streamable_http_client(broker.url, http_client=http), cache=None)
                return stack.enter_context(portal.wrap_async_context_manager(mcp))

            admin = client(broker.admin_token)
            issued = portal.call(admin.call_tool, "issue_agent_token", {"agent": WORKER})
            token = issued.structured_content["token"]  # type: ignore[index]
            clients = {"admin": admin, "worker": client(token)}
            params: dict[str, list[str]] = {}
            for c in clients.values():
                for tool in portal.call(c.list_tools).tools:
                    params[tool.name] = sorted(tool.input_schema.get("properties", {}))
            live = Live(broker, portal, clients, params)
            # Something to aim at: tasks 1-8, one claimed by the fuzzing worker, one completed, one blocked.
            live.call("worker", "register_agent", {"cli": "fuzz", "capabilities": ["python"]})
            for i in range(6):
                live.call("admin", "submit_task", {"title": f"target {i}", "prompt": "p"})
            live.call("worker", "claim_task", {"task_id": 1})
            claim = live.call("worker", "claim_task", {})[2]
            assert claim is not None and claim["claimed"]
            live.call("worker", "report_task_completion", {"task_id": 1, "fence_token": 1, "success": True})
            live.call("admin", "submit_task", {"title": "blocked", "prompt": "p", "depends_on": [2]})
            yield live
    finally:
        broker.stop()


def check_call(live: Live, role: str, tool: str, args: dict[str, Any]) -> None:
    database = live.broker.home / "aiswarm.db"
    before = dump_tables(database)
    is_error, text, structured = live.call(role, tool, args)
    if is_error:
        prefix = f"Error executing tool {tool}"
        assert text.startswith(prefix + ": ") and len(text) > len(prefix) + 10, (
            f"{tool}({args!r:.300}) crashed the tool (masked error): {text!r:.300}"
        )
        assert dump_tables(database) == before, (
            f"refused {tool}({args!r:.300}) changed the database: {text:.300}"
        )
    else:
        assert structured is not None, text
        REPLIES[tool].model_validate(structured)


FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.mark.parametrize("tool", WORKER_TOOLS)
def test_every_worker_tool_answers_any_arguments_with_a_clear_error_or_a_valid_result(
    live: Live, tool: str
) -> None:
    @FUZZ
    @given(args=arguments(live.params[tool]))
    def fuzz(args: dict[str, Any]) -> None:
        check_call(live, "worker", tool, args)

    fuzz()


@pytest.mark.parametrize("tool", ADMIN_TOOLS)
def test_every_primary_and_admin_tool_answers_any_arguments_with_a_clear_error_or_a_valid_result(
    live: Live, tool: str
) -> None:
    @FUZZ
    @given(args=arguments(live.params[tool]))
    def fuzz(args: dict[str, Any]) -> None:
        check_call(live, "admin", tool, args)

    fuzz()


@pytest.mark.parametrize(
    "tasks",
    [
        [
            {"key": "a", "title": "a", "prompt": "p", "depends_on": ["b"]},
            {"key": "b", "title": "b", "prompt": "p"},
        ],
        [{"key": "a", "title": "a", "prompt": "p", "depends_on": ["a"]}],
        [{"key": "a", "title": "a", "prompt": "p"}, {"key": "a", "title": "a2", "prompt": "p"}],
        [{"title": "a", "prompt": "p", "depends_on": [999_999]}],
        [{"title": "a", "prompt": "p", "depends_on": ["²"]}],
        [{"title": "a", "prompt": "p", "depends_on": [2**70]}],
    ],
    ids=["forward-cycle", "self-cycle", "duplicate-key", "unknown-id", "superscript-digit", "huge-id"],
)
def test_dependency_cycles_and_unknown_dependencies_are_refused_without_a_trace(
    live: Live, tasks: list[dict[str, Any]]
) -> None:
    database = live.broker.home / "aiswarm.db"
    before = dump_tables(database)
    is_error, text, _ = live.call("admin", "submit_tasks", {"tasks": tasks})
    assert is_error and text.startswith("Error executing tool submit_tasks: "), text
    assert dump_tables(database) == before


@pytest.mark.parametrize(
    ("tool", "role", "args", "phrase"),
    [
        (
            "submit_task",
            "admin",
            {"title": "big", "prompt": "x" * 2001},
            "prompt is 2001 characters; the limit is 2000",
        ),
        ("submit_tasks", "admin", {"tasks": [{"title": "t", "prompt": "p"}] * 6}, "the limit is 5. Split it"),
        (
            "report_task_completion",
            "worker",
            {"result": "r" * 2001},
            "result is 2001 characters; the limit is 2000",
        ),
        (
            "report_task_completion",
            "worker",
            {"success": False, "error": "e" * 2001},
            "error is 2001 characters",
        ),
        ("report_task_completion", "worker", {"data": {"blob": "d" * 5000}}, "data is"),
    ],
    ids=["prompt", "batch", "result", "error", "data"],
)
def test_size_limits_are_configurable_and_enforced_with_a_message(
    live: Live, tool: str, role: str, args: dict[str, Any], phrase: str
) -> None:
    if role == "worker":
        live.call("admin", "submit_task", {"title": "sized", "prompt": "p"})
        claim = live.call("worker", "claim_task", {})[2]
        assert claim is not None and claim["claimed"], claim
        args = {"task_id": claim["task"]["id"], "fence_token": claim["fence_token"], "success": True, **args}
    database = live.broker.home / "aiswarm.db"
    before = dump_tables(database)
    is_error, text, _ = live.call(role, tool, args)
    assert is_error and phrase in text, text
    assert dump_tables(database) == before
    if role == "worker":  # hand the claim back so later tests start clean
        live.call("admin", "release_task", {"agent": WORKER, "task_id": args["task_id"]})


# --- malformed JSON-RPC and HTTP ---------------------------------------------------------------------------
def raw_post(live: Live, body: bytes, **headers: str) -> httpx.Response:
    base = {
        "Authorization": f"Bearer {live.broker.primary_token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    return httpx.post(live.broker.url, content=body, headers={**base, **headers}, timeout=120)


CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "list_tasks", "arguments": {}}}


@pytest.mark.parametrize(
    ("body", "headers", "statuses"),
    [
        (b"{not json", {}, (400,)),
        (b"", {}, (400,)),
        (b"[]", {}, (400,)),
        (b'{"jsonrpc": "2.0"}', {}, (400,)),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "tools/list"}', {}, (400,)),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "no/such/method", "params": {}}', {}, (200, 400, 404)),
        (b'{"jsonrpc": "2.0", "id": {"x": 1}, "method": "tools/list"}', {}, (400,)),
        (b"\xff\xfe\x00garbage", {}, (400,)),
        (json.dumps(CALL).encode(), {"Content-Type": "text/plain"}, (400, 415)),
        (json.dumps(CALL).encode(), {"Content-Type": "application/x-www-form-urlencoded"}, (400, 415)),
        (json.dumps(CALL).encode(), {"Accept": "text/html"}, (400, 406)),
        (json.dumps(CALL).encode(), {"Mcp-Session-Id": "no-such-session"}, (400, 404)),
        (json.dumps(CALL).encode(), {"MCP-Protocol-Version": "1999-01-01"}, (400,)),
        (json.dumps({**CALL, "params": {"name": "x" * 100_000, "arguments": {}}}).encode(), {}, (200, 400)),
    ],
    ids=[
        "bad-json",
        "empty",
        "empty-batch",
        "no-method",
        "wrong-version",
        "unknown-method",
        "object-id",
        "binary",
        "text-plain",
        "form",
        "accept-html",
        "unknown-session",
        "unknown-protocol",
        "huge-tool-name",
    ],
)
def test_malformed_requests_get_protocol_errors_not_a_crash(
    live: Live, body: bytes, headers: dict[str, str], statuses: tuple[int, ...]
) -> None:
    reply = raw_post(live, body, **headers)
    assert reply.status_code in statuses, (reply.status_code, reply.text[:300])
    if reply.status_code == 200:
        assert "error" in reply.text or '"isError":true' in reply.text, reply.text[:300]
    assert httpx.get(live.broker.base + "/health", timeout=60).json()["status"] == "ok"


def test_an_oversize_body_is_answered_and_the_broker_keeps_serving(live: Live) -> None:
    huge = json.dumps(
        {**CALL, "params": {"name": "submit_task", "arguments": {"title": "t", "prompt": "z" * 30_000_000}}}
    ).encode()
    reply = raw_post(live, huge)
    assert reply.status_code in (200, 413), reply.status_code
    if reply.status_code == 200:
        assert "the limit is 2000" in reply.text
    assert httpx.get(live.broker.base + "/health", timeout=60).json()["status"] == "ok"


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_get_and_delete_without_a_session_get_protocol_errors(live: Live, method: str) -> None:
    headers = {"Authorization": f"Bearer {live.broker.primary_token}", "Accept": "text/event-stream"}
    reply = httpx.request(method, live.broker.url, headers=headers, timeout=60)
    assert 400 <= reply.status_code < 500, (reply.status_code, reply.text[:300])
    stale = httpx.request(
        method, live.broker.url, headers={**headers, "Mcp-Session-Id": "deadbeef"}, timeout=60
    )
    assert 400 <= stale.status_code < 500


def test_the_broker_logged_no_crash_while_being_fuzzed(live: Live) -> None:
    assert live.broker.log_path is not None
    log = live.broker.log_path.read_text(errors="replace")
    assert "unexpected exception" not in log and "Traceback" not in log, log[-3000:]
