"""The codex and Claude Code adapters: private homes, the broker's MCP entry, headless runs, outcomes, usage.

The outputs classified here are the real CLIs' (codex 0.171.0 ``exec --json``, Claude Code 2.1.332
``-p --output-format json``), captured against the scripted model with injected 401 and 429 answers.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from launcher.adapters import AgentSpec, ModelEndpoint, OutcomeKind, get_adapter
from launcher.adapters.settings_files import SettingsFormatError, set_path, toml_text
from tests.clis import InstalledClis

TOKEN = "agent-token-123"
BROKER = "http://127.0.0.1:8765/mcp"
ENDPOINT = ModelEndpoint(base_url="http://127.0.0.1:9000/v1", api_key="sk-endpoint", model="m1")


@pytest.fixture
def user_home(tmp_path: Path) -> Path:
    """A user HOME with a codex ChatGPT login and a Claude subscription login, as the CLIs write them."""
    home = tmp_path / "user"
    files = {
        ".codex/auth.json": '{"OPENAI_API_KEY": null, "tokens": {"refresh_token": "cr"}}',
        ".codex/config.toml": 'model = "gpt-5-codex"\nmodel_reasoning_effort = "high"\n[mcp_servers.mine]\ncommand = "x"\n',
        ".claude/.credentials.json": '{"claudeAiOauth": {"accessToken": "a", "refreshToken": "r"}}',
        ".claude/settings.json": json.dumps(
            {"model": "sonnet", "env": {"ANTHROPIC_API_KEY": "sk-user"}, "hooks": {"Stop": []}}
        ),
    }
    for rel, text in files.items():
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return home


def spec(cli: str, tmp_path: Path, user_home: Path, **kw: Any) -> AgentSpec:
    return AgentSpec.model_validate(
        {
            "name": f"{cli}-1",
            "cli": cli,
            "token": TOKEN,
            "broker_url": BROKER,
            "aiswarm_home": tmp_path / "aiswarm",
            "user_home": user_home,
            **kw,
        }
    )


def private(path: Path) -> str:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    return path.read_text()


# --- codex ------------------------------------------------------------------------------


def test_codex_config_points_at_the_broker_and_the_endpoint_with_bounded_retries(
    tmp_path: Path, user_home: Path
) -> None:
    home = get_adapter("codex").prepare_agent_home(
        spec("codex", tmp_path, user_home, endpoint=ENDPOINT), env={}
    )
    assert home.settings_path == home.root / "config.toml"
    assert home.env == {"CODEX_HOME": str(home.root)}
    text = private(home.settings_path)
    config = tomllib.loads(text)
    assert config["mcp_servers"] == {
        "aiswarm": {
            "url": BROKER,
            "http_headers": {"Authorization": f"Bearer {TOKEN}"},
            "tool_timeout_sec": 900,
            "startup_timeout_sec": 30,
        }
    }
    assert config["model"] == "m1" and config["model_provider"] == "aiswarm"
    assert config["model_providers"]["aiswarm"] == {
        "name": "aiswarm model endpoint",
        "base_url": "http://127.0.0.1:9000/v1",
        "env_key": "AISWARM_MODEL_API_KEY",
        "wire_api": "responses",
        "http_headers": {"X-Aiswarm-Agent": "codex-1"},
        "request_max_retries": 2,
        "stream_max_retries": 2,
    }
    assert config["analytics"] == {"enabled": False} and config["check_for_update_on_startup"] is False
    assert "sk-endpoint" not in text, "the endpoint's key goes in the environment, never on disk"
    assert "mine" not in config["mcp_servers"], "the user's own MCP servers stay out of the worker"


def test_codex_command_and_env_run_exec_headless_with_the_key_in_the_environment(
    tmp_path: Path, user_home: Path
) -> None:
    adapter = get_adapter("codex")
    home = adapter.prepare_agent_home(spec("codex", tmp_path, user_home, endpoint=ENDPOINT), env={})
    argv = adapter.command(home, "do it")
    assert argv[1:] == [
        "exec",
        "--json",
        "--ephemeral",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        "--model",
        "m1",
        "do it",
    ]
    env = adapter.env(home, base_env={"HOME": str(user_home), "PATH": "/bin"})
    assert env["CODEX_HOME"] == str(home.root) and env["AISWARM_MODEL_API_KEY"] == "sk-endpoint"
    assert TOKEN not in " ".join(argv)


def test_codex_carries_the_users_login_and_model_choice_but_not_their_servers(
    tmp_path: Path, user_home: Path
) -> None:
    adapter = get_adapter("codex")
    home = adapter.prepare_agent_home(spec("codex", tmp_path, user_home), env={})
    auth = home.root / "auth.json"
    assert private(auth) == (user_home / ".codex" / "auth.json").read_text() and not auth.is_symlink()
    [login] = [c for c in home.carried if c.kind == "auth-file"]
    assert login.how == "copy" and login.write_back
    config = tomllib.loads(home.settings_path.read_text())
    assert (config["model"], config["model_reasoning_effort"]) == ("gpt-5-codex", "high")
    assert "model_provider" not in config and list(config["mcp_servers"]) == ["aiswarm"]
    found = {f.kind for f in adapter.find_credentials(user_home, {"CODEX_API_KEY": "k"})}
    assert found == {"codex-auth", "api-key-env"}


CODEX_401 = "\n".join(
    [
        '{"type":"thread.started","thread_id":"t"}',
        '{"type":"turn.started"}',
        '{"type":"error","message":"Reconnecting... 1/2 (unexpected status 401 Unauthorized: Incorrect API key provided, url: http://127.0.0.1:9/v1/responses)"}',
        '{"type":"error","message":"unexpected status 401 Unauthorized: Incorrect API key provided, url: http://127.0.0.1:9/v1/responses"}',
        '{"type":"turn.failed","error":{"message":"unexpected status 401 Unauthorized: Incorrect API key provided, url: http://127.0.0.1:9/v1/responses"}}',
    ]
)
CODEX_429 = "\n".join(
    [
        '{"type":"turn.started"}',
        '{"type":"error","message":"Reconnecting... 1/2 (exceeded retry limit, last status: 429 Too Many Requests)"}',
        '{"type":"turn.failed","error":{"message":"exceeded retry limit, last status: 429 Too Many Requests"}}',
    ]
)
CODEX_DONE = "\n".join(
    [
        '{"type":"thread.started","thread_id":"t"}',
        '{"type":"item.completed","item":{"id":"item_0","type":"error","message":"Model metadata for `m` not found."}}',
        '{"type":"item.completed","item":{"id":"item_4","type":"agent_message","text":"Task 1: Wrote out/a.txt"}}',
        '{"type":"turn.completed","usage":{"input_tokens":22414,"cached_input_tokens":100,"output_tokens":137,"reasoning_output_tokens":0}}',
    ]
)


def claude_result(**fields: Any) -> str:
    base = {"type": "result", "subtype": "success", "is_error": False, "num_turns": 4, "result": "done"}
    return json.dumps(base | fields)


CLAUDE_401 = claude_result(
    is_error=True,
    api_error_status=401,
    result="Failed to authenticate. API Error: 401 invalid x-api-key",
    terminal_reason="api_error",
)
CLAUDE_429 = claude_result(
    is_error=True, api_error_status=429, result="API Error: Request rejected (429) · Rate limit exceeded"
)


@pytest.mark.parametrize(
    ("cli", "code", "stdout", "kind"),
    [
        ("codex", 0, CODEX_DONE, OutcomeKind.DONE),
        ("codex", 1, CODEX_401, OutcomeKind.AUTH_FAILURE),
        ("codex", 1, CODEX_429, OutcomeKind.RATE_LIMITED),
        ("codex", 1, '{"type":"turn.failed","error":{"message":"stream disconnected"}}', OutcomeKind.CRASHED),
        ("claude", 0, claude_result(), OutcomeKind.DONE),
        ("claude", 1, CLAUDE_401, OutcomeKind.AUTH_FAILURE),
        ("claude", 1, CLAUDE_429, OutcomeKind.RATE_LIMITED),
        ("claude", 1, claude_result(subtype="error_max_turns", is_error=True), OutcomeKind.TURN_LIMIT),
        ("claude", None, "", OutcomeKind.TIMED_OUT),
    ],
)
def test_exit_is_classified_from_the_real_outputs(
    cli: str, code: int | None, stdout: str, kind: OutcomeKind
) -> None:
    outcome = get_adapter(cli).classify_exit(code, stdout, "")
    assert outcome.kind is kind, outcome.reason
    assert outcome.reason and "\n" not in outcome.reason


def test_usage_comes_from_codex_turns_and_claudes_result() -> None:
    codex = get_adapter("codex").parse_usage(CODEX_DONE + "\n" + CODEX_DONE.splitlines()[-1])
    assert codex is not None
    assert (codex.input_tokens, codex.output_tokens, codex.cached_tokens, codex.total_tokens) == (
        44828,
        274,
        200,
        45102,
    )
    usage = {
        "input_tokens": 2776,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 24,
        "output_tokens": 30,
    }
    claude = get_adapter("claude").parse_usage(claude_result(usage=usage))
    assert claude is not None
    assert (claude.input_tokens, claude.output_tokens, claude.cached_tokens, claude.total_tokens) == (
        3800,
        30,
        1000,
        3830,
    )
    assert claude.requests == 4
    for cli in ("codex", "claude"):
        assert get_adapter(cli).parse_usage("") is None
        assert get_adapter(cli).parse_usage("not json") is None


# --- Claude Code ------------------------------------------------------------------------


def test_claude_home_has_the_broker_in_its_own_mcp_file_and_headless_permissions(
    tmp_path: Path, user_home: Path
) -> None:
    adapter = get_adapter("claude")
    home = adapter.prepare_agent_home(spec("claude", tmp_path, user_home, max_turns=9), env={})
    assert home.env == {"CLAUDE_CONFIG_DIR": str(home.root)}
    mcp = json.loads(private(home.root / "mcp.json"))
    assert mcp == {
        "mcpServers": {
            "aiswarm": {
                "type": "http",
                "url": BROKER,
                "headers": {"Authorization": f"Bearer {TOKEN}"},
                "timeout": 900_000,
            }
        }
    }
    settings = json.loads(private(home.settings_path))
    assert settings["permissions"]["defaultMode"] == "acceptEdits"
    assert {"mcp__aiswarm", "Write", "Edit", "Read", "Bash"} <= set(settings["permissions"]["allow"])
    assert settings["model"] == "sonnet" and settings["env"] == {"ANTHROPIC_API_KEY": "sk-user"}
    assert "hooks" not in settings
    argv = adapter.command(home, "do it")
    assert argv[1:] == [
        "-p",
        "do it",
        "--output-format",
        "json",
        "--mcp-config",
        str(home.root / "mcp.json"),
        "--strict-mcp-config",
        "--max-turns",
        "9",
    ]
    assert TOKEN not in " ".join(argv)


def test_claude_env_points_at_the_endpoint_host_with_tool_search_off_and_retries_bounded(
    tmp_path: Path, user_home: Path
) -> None:
    adapter = get_adapter("claude")
    home = adapter.prepare_agent_home(spec("claude", tmp_path, user_home, endpoint=ENDPOINT), env={})
    env = adapter.env(home, base_env={"HOME": str(user_home), "ANTHROPIC_AUTH_TOKEN": "user-token"})
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9000"
    assert env["ANTHROPIC_API_KEY"] == "sk-endpoint" and env["ANTHROPIC_AUTH_TOKEN"] == ""
    assert env["ENABLE_TOOL_SEARCH"] == "false" and env["CLAUDE_CODE_MAX_RETRIES"] == "2"
    assert env["ANTHROPIC_CUSTOM_HEADERS"] == "X-Aiswarm-Agent: claude-1"
    assert adapter.command(home, "x")[-2:] == ["--model", "m1"]
    assert json.loads(home.settings_path.read_text())["env"] == {}, (
        "the user's key must not override the endpoint's"
    )


def test_claude_copies_the_subscription_login_to_carry_refreshes_back(
    tmp_path: Path, user_home: Path
) -> None:
    adapter = get_adapter("claude")
    home = adapter.prepare_agent_home(spec("claude", tmp_path, user_home), env={})
    copy = home.root / ".credentials.json"
    assert private(copy) == (user_home / ".claude" / ".credentials.json").read_text()
    copy.write_text('{"claudeAiOauth": {"accessToken": "b", "refreshToken": "r2"}}')
    later = (user_home / ".claude" / ".credentials.json").stat().st_mtime + 10
    os.utime(copy, (later, later))
    assert adapter.return_logins(home) == [user_home / ".claude" / ".credentials.json"]
    assert "r2" in (user_home / ".claude" / ".credentials.json").read_text()
    found = {f.kind for f in adapter.find_credentials(user_home, {})}
    assert found == {"claude-oauth", "settings-api-key"}


# --- settings files ---------------------------------------------------------------------


def test_toml_rendering_round_trips_nested_tables_inline_tables_and_odd_keys() -> None:
    document = {
        "top": 'a "quoted" \\ value\n',
        "n": 3,
        "servers": {"one two": {"url": "u", "headers": {"X-Y": "z"}, "args": ["a", 1, True]}},
        "empty": {},
    }
    assert tomllib.loads(toml_text(document)) == document
    with pytest.raises(SettingsFormatError):
        toml_text({"missing": None})


def test_set_path_creates_and_replaces_objects_on_the_way() -> None:
    assert set_path({"a": 1, "mcp": "x"}, ["mcp", "servers", "aiswarm"], {"url": "u"}) == {
        "a": 1,
        "mcp": {"servers": {"aiswarm": {"url": "u"}}},
    }


# --- against the real binaries ----------------------------------------------------------


@pytest.mark.e2e
def test_real_codex_loads_the_config_without_a_warning(
    tmp_path: Path, user_home: Path, clis: InstalledClis
) -> None:
    adapter = get_adapter("codex")
    home = adapter.prepare_agent_home(spec("codex", tmp_path, user_home, endpoint=ENDPOINT), env={})
    env = adapter.env(home, base_env={"HOME": str(user_home), "PATH": clis.path_env()})
    doctor = subprocess.run(
        [str(clis.bin / "codex"), "doctor", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    checks = json.loads(doctor.stdout)["checks"]
    config = checks["config.load"]
    assert config["status"] == "ok", config  # an unrecognised key would be a startup warning here
    assert (config["details"]["mcp servers"], config["details"]["model provider"]) == ("1", "aiswarm")
    assert checks["auth.credentials"]["status"] == "ok", checks["auth.credentials"]


@pytest.mark.e2e
def test_real_claude_runs_from_the_private_home(tmp_path: Path, user_home: Path, clis: InstalledClis) -> None:
    adapter = get_adapter("claude")
    home = adapter.prepare_agent_home(spec("claude", tmp_path, user_home, endpoint=ENDPOINT), env={})
    env = adapter.env(home, base_env={"HOME": str(user_home), "PATH": clis.path_env()})
    version = subprocess.run(
        [str(clis.bin / "claude"), "--version"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert version.returncode == 0 and adapter.version in version.stdout, version.stderr
