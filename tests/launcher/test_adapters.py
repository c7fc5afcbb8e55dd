"""The CLI adapters: private agent homes, credential carry-over, headless commands, exit classification."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from launcher.adapters import (
    AgentSpec,
    CliAdapter,
    ModelEndpoint,
    OutcomeKind,
    UnknownCliError,
    get_adapter,
    known_adapters,
)
from tests.clis import InstalledClis

TOKEN = "agent-token-123"
BROKER = "http://127.0.0.1:8765/mcp"


@pytest.fixture
def user_home(tmp_path: Path) -> Path:
    """A fake user HOME holding each CLI's login, as the real CLIs write them."""
    home = tmp_path / "user"
    files = {
        ".qwen/oauth_creds.json": '{"access_token": "qa", "refresh_token": "qr", "expiry_date": 1}',
        ".qwen/settings.json": json.dumps(
            {
                "security": {"auth": {"selectedType": "qwen-oauth"}},
                "model": {"name": "qwen3-coder-plus"},
                "ui": {"theme": "dark"},
                "mcpServers": {"mine": {"command": "x"}},
            }
        ),
        ".qwen/.env": "DASHSCOPE_API_KEY=sk-user\n",
        ".gemini/oauth_creds.json": '{"access_token": "ga", "refresh_token": "gr"}',
        ".gemini/google_accounts.json": '{"active": "me@example.com", "old": []}',
        ".gemini/settings.json": json.dumps(
            {"security": {"auth": {"selectedType": "oauth-personal"}}, "model": {"name": "gemini-2.5-pro"}}
        ),
        ".local/share/opencode/auth.json": '{"anthropic": {"type": "api", "key": "sk-ant"}}',
        ".config/opencode/opencode.json": (
            '{\n  // my model\n  "model": "anthropic/claude-sonnet-4",\n'
            '  "mcp": {"mine": {"type": "local", "command": ["x"]}},\n}\n'
        ),
    }
    for rel, text in files.items():
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return home


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash and mode: to show the user's files are untouched."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def spec(cli: str, tmp_path: Path, user_home: Path, **kw: object) -> AgentSpec:
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


def read_settings(path: Path) -> dict:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return json.loads(path.read_text())


# --- registry ---------------------------------------------------------------------------


def test_registry_knows_the_five_clis_and_names_them_on_error() -> None:
    assert known_adapters() == ["claude", "codex", "gemini", "opencode", "qwen"]
    assert all(isinstance(get_adapter(n), CliAdapter) for n in known_adapters())
    with pytest.raises(UnknownCliError, match="known CLIs are claude, codex, gemini, opencode, qwen"):
        get_adapter("agy")


def test_adapter_reads_its_pin_from_the_install_table() -> None:
    qwen = get_adapter("qwen")
    assert (qwen.package, qwen.version, qwen.binary_name, qwen.min_node_major) == (
        "@qwen-code/qwen-code",
        "0.24.4",
        "qwen",
        22,
    )
    assert get_adapter("opencode").min_node_major is None


def test_agent_name_must_be_a_plain_name(tmp_path: Path, user_home: Path) -> None:
    with pytest.raises(ValueError):
        spec("qwen", tmp_path, user_home, name="../escape")


def test_spec_for_another_cli_is_refused(tmp_path: Path, user_home: Path) -> None:
    with pytest.raises(ValueError, match="not 'gemini'"):
        get_adapter("gemini").prepare_agent_home(spec("qwen", tmp_path, user_home))


# --- settings files ---------------------------------------------------------------------


def test_qwen_settings_point_at_broker_with_token_limits_retries_and_privacy(
    tmp_path: Path, user_home: Path
) -> None:
    home = get_adapter("qwen").prepare_agent_home(spec("qwen", tmp_path, user_home), env={})
    assert home.root == tmp_path / "aiswarm" / "agents" / "qwen-1"
    assert home.settings_path == home.root / "settings.json"
    assert home.env == {"QWEN_HOME": str(home.root)}
    s = read_settings(home.settings_path)
    entry = s["mcpServers"]["aiswarm"]
    assert entry["httpUrl"] == BROKER
    assert entry["headers"] == {"Authorization": f"Bearer {TOKEN}"}
    assert entry["timeout"] == 900_000 and entry["trust"] is True and entry["alwaysLoadTools"] is True
    assert s["mcp"]["toolIdleTimeoutMs"] > entry["timeout"]
    assert s["privacy"]["usageStatisticsEnabled"] is False and s["telemetry"]["enabled"] is False
    gen = s["model"]["generationConfig"]
    assert gen["maxRetries"] <= 3 and gen["retryInitialDelayMs"] <= 5000 and gen["retryMaxDelayMs"] <= 10_000
    assert gen["customHeaders"] == {"X-Aiswarm-Agent": "qwen-1"}
    assert s["model"]["maxSessionTurns"] == 60 and s["model"]["maxWallTimeSeconds"] == 1800
    assert s["$version"] == 4


def test_gemini_settings_point_at_broker_and_bound_attempts(tmp_path: Path, user_home: Path) -> None:
    home = get_adapter("gemini").prepare_agent_home(spec("gemini", tmp_path, user_home, max_turns=7), env={})
    assert home.settings_path == home.root / ".gemini" / "settings.json"
    assert home.env == {"GEMINI_CLI_HOME": str(home.root)}
    s = read_settings(home.settings_path)
    entry = s["mcpServers"]["aiswarm"]
    assert entry == {
        "httpUrl": BROKER,
        "headers": {"Authorization": f"Bearer {TOKEN}"},
        "timeout": 900_000,
        "trust": True,
        "description": entry["description"],
    }
    assert s["general"]["maxAttempts"] == 3
    assert s["model"]["maxSessionTurns"] == 7
    assert s["privacy"]["usageStatisticsEnabled"] is False and s["telemetry"]["enabled"] is False


def test_opencode_config_has_remote_mcp_entry_permissions_and_endpoint_provider(
    tmp_path: Path, user_home: Path
) -> None:
    endpoint = ModelEndpoint(base_url="http://127.0.0.1:9000/v1", api_key="k", model="m1")
    home = get_adapter("opencode").prepare_agent_home(
        spec("opencode", tmp_path, user_home, endpoint=endpoint), env={}
    )
    assert home.env["OPENCODE_CONFIG"] == str(home.settings_path)
    assert all(
        Path(home.env[v]).is_relative_to(home.root)
        for v in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME")
    )
    s = read_settings(home.settings_path)
    assert s["mcp"]["aiswarm"] == {
        "type": "remote",
        "url": BROKER,
        "headers": {"Authorization": f"Bearer {TOKEN}"},
        "timeout": 900_000,
        "enabled": True,
    }
    assert s["permission"] == {"*": "allow"} and s["autoupdate"] is False
    provider = s["provider"]["aiswarm"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"] == {
        "baseURL": endpoint.base_url,
        "apiKey": "k",
        "headers": {"X-Aiswarm-Agent": "opencode-1"},
    }
    assert provider["models"]["m1"]["tool_call"] is True
    assert s["model"] == s["small_model"] == "aiswarm/m1"


def test_settings_are_rewritten_atomically_without_leftovers(tmp_path: Path, user_home: Path) -> None:
    adapter = get_adapter("qwen")
    first = adapter.prepare_agent_home(spec("qwen", tmp_path, user_home), env={})
    second = adapter.prepare_agent_home(spec("qwen", tmp_path, user_home, token="new-token"), env={})
    assert first.settings_path == second.settings_path
    assert "new-token" in second.settings_path.read_text()
    assert not [p for p in first.root.iterdir() if p.name.endswith(".tmp")]
    assert stat.S_IMODE(first.root.stat().st_mode) == 0o700


# --- credential carry-over --------------------------------------------------------------


def test_qwen_copies_the_users_oauth_and_carries_auth_type_and_model(tmp_path: Path, user_home: Path) -> None:
    before = snapshot(user_home)
    home = get_adapter("qwen").prepare_agent_home(spec("qwen", tmp_path, user_home), env={})
    creds, user_creds = home.root / "oauth_creds.json", user_home / ".qwen" / "oauth_creds.json"
    assert not creds.is_symlink(), "qwen replaces a link by its own file when it refreshes"
    assert creds.read_bytes() == user_creds.read_bytes()
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert creds.stat().st_mtime == user_creds.stat().st_mtime, "the copy is as old as the login it copies"
    assert (home.root / ".env").is_symlink()
    s = read_settings(home.settings_path)
    assert s["security"]["auth"]["selectedType"] == "qwen-oauth"
    assert s["model"]["name"] == "qwen3-coder-plus"
    assert "ui" not in s and set(s["mcpServers"]) == {"aiswarm"}, "only login and model choice carry over"
    assert {c.kind for c in home.carried} >= {"oauth", "dotenv", "settings"}
    assert [c.kind for c in home.carried if c.write_back] == ["oauth"]
    assert snapshot(user_home) == before


def qwen_refreshes(creds: Path, text: str, later: float = 5.0) -> None:
    """What qwen does on a token refresh: write a temp file and rename it over its credentials file."""
    tmp = creds.with_name(".oauth_creds.json.qwen-tmp")
    tmp.write_text(text)
    mtime = creds.stat().st_mtime + later
    os.utime(tmp, (mtime, mtime))
    os.replace(tmp, creds)


def test_qwen_refreshed_login_goes_back_to_the_user_and_on_to_the_next_agent(
    tmp_path: Path, user_home: Path
) -> None:
    """Refresh tokens rotate: the refresh one agent did must reach the user's file and every other agent."""
    adapter = get_adapter("qwen")
    user_creds = user_home / ".qwen" / "oauth_creds.json"
    user_creds.chmod(0o600)
    first = adapter.prepare_agent_home(spec("qwen", tmp_path, user_home), env={})
    second = adapter.prepare_agent_home(spec("qwen", tmp_path, user_home, name="qwen-2"), env={})
    assert adapter.return_logins(first) == [], "an unrefreshed copy is not written back"

    rotated = '{"access_token": "qa2", "refresh_token": "qr2", "expiry_date": 2}'
    qwen_refreshes(first.root / "oauth_creds.json", rotated)
    assert adapter.return_logins(first) == [user_creds]
    assert user_creds.read_text() == rotated
    assert stat.S_IMODE(user_creds.stat().st_mode) == 0o600
    assert user_creds.stat().st_mtime == (first.root / "oauth_creds.json").stat().st_mtime
    assert not [p for p in user_creds.parent.iterdir() if p.name.endswith(".tmp")]
    assert adapter.return_logins(first) == [], "written back once"

    adapter.prepare_agent_home(spec("qwen", tmp_path, user_home, name="qwen-2"), env={})
    assert (second.root / "oauth_creds.json").read_text() == rotated, (
        "the next run starts from the live token"
    )


def test_qwen_refresh_is_not_written_back_when_older_invalid_or_the_user_logged_out(
    tmp_path: Path, user_home: Path
) -> None:
    adapter = get_adapter("qwen")
    user_creds = user_home / ".qwen" / "oauth_creds.json"
    login = user_creds.read_text()
    home = adapter.prepare_agent_home(spec("qwen", tmp_path, user_home), env={})
    creds = home.root / "oauth_creds.json"

    for broken in ('{"access_token": "qa2", "refr', "", "[1, 2]"):
        qwen_refreshes(creds, broken)
        assert adapter.return_logins(home) == [] and user_creds.read_text() == login, broken

    qwen_refreshes(creds, '{"access_token": "stale"}', later=-60)
    assert adapter.return_logins(home) == [] and user_creds.read_text() == login

    qwen_refreshes(creds, '{"access_token": "qa3"}', later=60)
    user_creds.unlink()
    assert adapter.return_logins(home) == [] and not user_creds.exists()


def test_qwen_keeps_its_refreshed_token_until_the_user_logs_in_again(tmp_path: Path, user_home: Path) -> None:
    adapter = get_adapter("qwen")
    home = adapter.prepare_agent_home(spec("qwen", tmp_path, user_home), env={})
    creds = home.root / "oauth_creds.json"
    qwen_refreshes(creds, '{"access_token": "refreshed"}')
    adapter.prepare_agent_home(spec("qwen", tmp_path, user_home), env={})
    assert "refreshed" in creds.read_text()
    user_creds = user_home / ".qwen" / "oauth_creds.json"
    user_creds.write_text('{"access_token": "new-login"}')
    os.utime(user_creds, (creds.stat().st_mtime + 10, creds.stat().st_mtime + 10))
    adapter.prepare_agent_home(spec("qwen", tmp_path, user_home), env={})
    assert not creds.is_symlink() and "new-login" in creds.read_text()


def test_gemini_copies_the_oauth_file_and_links_the_account(tmp_path: Path, user_home: Path) -> None:
    before = snapshot(user_home)
    home = get_adapter("gemini").prepare_agent_home(spec("gemini", tmp_path, user_home), env={})
    private = home.root / ".gemini"
    oauth = private / "oauth_creds.json"
    assert not oauth.is_symlink(), "gemini rewrites the file in place: a link would let it write the user's"
    assert oauth.read_bytes() == (user_home / ".gemini" / "oauth_creds.json").read_bytes()
    assert stat.S_IMODE(oauth.stat().st_mode) == 0o600
    assert (private / "google_accounts.json").is_symlink()
    s = read_settings(home.settings_path)
    assert s["security"]["auth"]["selectedType"] == "oauth-personal"
    assert s["model"]["name"] == "gemini-2.5-pro"
    assert snapshot(user_home) == before


def test_gemini_copy_is_refreshed_when_the_user_logs_in_again(tmp_path: Path, user_home: Path) -> None:
    adapter = get_adapter("gemini")
    home = adapter.prepare_agent_home(spec("gemini", tmp_path, user_home), env={})
    oauth = home.root / ".gemini" / "oauth_creds.json"
    user_oauth = user_home / ".gemini" / "oauth_creds.json"
    user_oauth.write_text('{"access_token": "new-login"}')
    os.utime(user_oauth, (oauth.stat().st_mtime + 10, oauth.stat().st_mtime + 10))
    adapter.prepare_agent_home(spec("gemini", tmp_path, user_home), env={})
    assert "new-login" in oauth.read_text()


def test_opencode_links_auth_and_carries_the_model_from_jsonc(tmp_path: Path, user_home: Path) -> None:
    before = snapshot(user_home)
    home = get_adapter("opencode").prepare_agent_home(spec("opencode", tmp_path, user_home), env={})
    auth = Path(home.env["XDG_DATA_HOME"]) / "opencode" / "auth.json"
    assert auth.is_symlink() and auth.resolve() == (user_home / ".local/share/opencode/auth.json").resolve()
    s = read_settings(home.settings_path)
    assert s["model"] == "anthropic/claude-sonnet-4"
    assert s["provider"]["anthropic"]["options"]["headers"] == {"X-Aiswarm-Agent": "opencode-1"}
    assert set(s["mcp"]) == {"aiswarm"}, "the user's own MCP servers are not started by workers"
    assert snapshot(user_home) == before


def test_api_keys_in_the_environment_are_inherited(tmp_path: Path, user_home: Path) -> None:
    adapter = get_adapter("gemini")
    home = adapter.prepare_agent_home(spec("gemini", tmp_path, user_home), env={"GEMINI_API_KEY": "k"})
    assert any(c.kind == "api-key-env" and c.source == "GEMINI_API_KEY" for c in home.carried)
    assert (
        adapter.env(home, base_env={"GEMINI_API_KEY": "k", "HOME": str(user_home)})["GEMINI_API_KEY"] == "k"
    )


def test_missing_user_login_still_gives_a_working_home(tmp_path: Path) -> None:
    empty = tmp_path / "nobody"
    empty.mkdir()
    for cli in known_adapters():
        home = get_adapter(cli).prepare_agent_home(spec(cli, tmp_path, empty), env={})
        assert home.carried == []
        assert home.settings_path.exists()


def test_custom_endpoint_switches_gemini_to_api_key_auth(tmp_path: Path, user_home: Path) -> None:
    endpoint = ModelEndpoint(base_url="http://127.0.0.1:9000", api_key="k", model="gm")
    adapter = get_adapter("gemini")
    home = adapter.prepare_agent_home(spec("gemini", tmp_path, user_home, endpoint=endpoint), env={})
    s = read_settings(home.settings_path)
    assert s["security"]["auth"]["selectedType"] == "gemini-api-key"
    env = adapter.env(home, base_env={"HOME": str(user_home)})
    assert env["GOOGLE_GEMINI_BASE_URL"] == "http://127.0.0.1:9000" and env["GEMINI_API_KEY"] == "k"


# --- command lines and environment ------------------------------------------------------


def test_qwen_command_and_env(tmp_path: Path, user_home: Path) -> None:
    endpoint = ModelEndpoint(base_url="http://127.0.0.1:9000/v1", api_key="k", model="qm")
    adapter = get_adapter("qwen")
    home = adapter.prepare_agent_home(spec("qwen", tmp_path, user_home, endpoint=endpoint), env={})
    argv = adapter.command(home, "do it")
    assert argv[1:] == ["-p", "do it", "--yolo", "--output-format", "json", "--model", "qm"]
    assert Path(argv[0]).name == "qwen"
    env = adapter.env(home, base_env={"HOME": str(user_home), "PATH": "/usr/bin"})
    assert env["QWEN_HOME"] == str(home.root)
    assert env["QWEN_USAGE_STATISTICS_ENABLED"] == "false"
    assert (env["OPENAI_BASE_URL"], env["OPENAI_API_KEY"], env["OPENAI_MODEL"]) == (
        endpoint.base_url,
        "k",
        "qm",
    )
    assert env["HOME"] == str(user_home)


def test_missing_home_directory_is_replaced_for_qwen(tmp_path: Path, user_home: Path) -> None:
    adapter = get_adapter("qwen")
    home = adapter.prepare_agent_home(spec("qwen", tmp_path, user_home), env={})
    assert adapter.env(home, base_env={"HOME": str(tmp_path / "gone")})["HOME"] == str(home.root)
    assert adapter.env(home, base_env={})["HOME"] == str(home.root)


def test_gemini_command_and_env(tmp_path: Path, user_home: Path) -> None:
    adapter = get_adapter("gemini")
    home = adapter.prepare_agent_home(spec("gemini", tmp_path, user_home), env={})
    assert adapter.command(home, "p")[1:] == ["-p", "p", "--output-format", "json", "--yolo"]
    assert adapter.command(home, "p", model="gemini-2.5-flash")[-2:] == ["--model", "gemini-2.5-flash"]
    env = adapter.env(home, base_env={"HOME": str(user_home)})
    assert env["GEMINI_CLI_HOME"] == str(home.root)
    assert env["GEMINI_CLI_TRUST_WORKSPACE"] == "true"
    assert env["GEMINI_CLI_CUSTOM_HEADERS"] == "X-Aiswarm-Agent: gemini-1"


def test_opencode_command_and_env(tmp_path: Path, user_home: Path) -> None:
    adapter = get_adapter("opencode")
    home = adapter.prepare_agent_home(spec("opencode", tmp_path, user_home), env={})
    argv = adapter.command(home, 'say "hi"', model="anthropic/claude-haiku")
    assert argv[1:] == [
        "run",
        "--format",
        "json",
        "--title",
        "aiswarm opencode-1",
        "--model",
        "anthropic/claude-haiku",
    ]
    assert adapter.prompt_on_stdin, "opencode escapes the quotes of a prompt given as an argument"
    env = adapter.env(home, base_env={"HOME": str(user_home)})
    assert env["OPENCODE_DISABLE_AUTOUPDATE"] == "1" and env["OPENCODE_DISABLE_MODELS_FETCH"] == "1"
    assert env["OPENCODE_CONFIG"] == str(home.settings_path)


def test_private_node_goes_first_on_path(tmp_path: Path, user_home: Path) -> None:
    from launcher.adapters.install import node_package_name

    node_bin = tmp_path / "aiswarm" / "node" / "node_modules" / node_package_name() / "bin"
    node_bin.mkdir(parents=True)
    (node_bin / "node").write_text("")
    adapter = get_adapter("qwen")
    home = adapter.prepare_agent_home(spec("qwen", tmp_path, user_home), env={})
    assert adapter.env(home, base_env={"PATH": "/usr/bin"})["PATH"] == f"{node_bin}{os.pathsep}/usr/bin"


def test_find_binary_prefers_the_aiswarm_install_over_path(tmp_path: Path) -> None:
    adapter = get_adapter("gemini")
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "gemini").write_text("#!/bin/sh\n")
    (on_path / "gemini").chmod(0o755)
    home = tmp_path / "aiswarm"
    assert adapter.find_binary(home, path=str(on_path)) == on_path / "gemini"
    private = home / "clis" / "gemini" / "node_modules" / ".bin" / "gemini"
    private.parent.mkdir(parents=True)
    private.write_text("")
    assert adapter.find_binary(home, path=str(on_path)) == private
    assert adapter.find_binary(tmp_path / "other", path=str(tmp_path / "nowhere")) is None


# --- exit classification (outputs measured on the pinned versions) ----------------

QWEN_429_STDERR = (
    '{"error":{"type":"AlreadyReportedError","message":"[API Error: 429 Too Many Requests]\\n'
    'Possible quota limitations in place ...","code":1}}'
)
QWEN_429_STDOUT = '[{"type":"system"},{"type":"result","subtype":"error_during_execution","is_error":true}]'
GEMINI_429_STDERR = (
    "Attempt 10 failed with status 429. Retrying after 33000ms...\n"
    '{"session_id": "s", "error": {"type": "Error", "message": "Resource has been exhausted (e.g. check quota).", "code": 429}}'
)
OPENCODE_429_STDOUT = (
    '{"type":"step_start","part":{}}\n'
    '{"type":"error","error":{"name":"APIError","data":{"message":"Too Many Requests","statusCode":429,"isRetryable":true}}}\n'
)
OPENCODE_401_STDOUT = (
    '{"type":"error","error":{"name":"APIError","data":{"message":"Unauthorized","statusCode":401}}}\n'
)


@pytest.mark.parametrize(
    ("cli", "code", "stdout", "stderr", "kind"),
    [
        ("qwen", 0, '[{"type":"result","subtype":"success","is_error":false}]', "", OutcomeKind.DONE),
        ("qwen", 1, QWEN_429_STDOUT, QWEN_429_STDERR, OutcomeKind.RATE_LIMITED),
        ("qwen", 1, "", "[API Error: 401 Incorrect API key provided]", OutcomeKind.AUTH_FAILURE),
        ("qwen", 1, "", "Error: loop detected", OutcomeKind.CRASHED),
        ("qwen", 53, "", "", OutcomeKind.TURN_LIMIT),
        ("qwen", 55, "", "", OutcomeKind.TURN_LIMIT),
        ("gemini", 0, '{"session_id":"s","response":"ok","stats":{}}', "", OutcomeKind.DONE),
        ("gemini", 173, "", GEMINI_429_STDERR, OutcomeKind.RATE_LIMITED),
        ("gemini", 1, "", GEMINI_429_STDERR, OutcomeKind.RATE_LIMITED),
        ("gemini", 41, "", "Please set an Auth method", OutcomeKind.AUTH_FAILURE),
        ("gemini", 53, "", "", OutcomeKind.TURN_LIMIT),
        ("gemini", 55, "", "", OutcomeKind.CONFIG_ERROR),
        ("opencode", 0, '{"type":"step_finish","part":{}}\n', "", OutcomeKind.DONE),
        ("opencode", 1, OPENCODE_429_STDOUT, "", OutcomeKind.RATE_LIMITED),
        ("opencode", 1, OPENCODE_401_STDOUT, "", OutcomeKind.AUTH_FAILURE),
        ("opencode", 0, OPENCODE_429_STDOUT, "", OutcomeKind.RATE_LIMITED),
        ("opencode", 1, "", "segfault", OutcomeKind.CRASHED),
        ("qwen", None, "", "", OutcomeKind.TIMED_OUT),
        ("gemini", -9, "", "", OutcomeKind.CRASHED),
    ],
)
def test_exit_is_classified_from_the_measured_outputs(
    cli: str, code: int | None, stdout: str, stderr: str, kind: OutcomeKind
) -> None:
    outcome = get_adapter(cli).classify_exit(code, stdout, stderr)
    assert outcome.kind is kind, outcome.reason
    assert outcome.returncode == code
    assert outcome.reason and "\n" not in outcome.reason


@pytest.mark.parametrize(
    ("cli", "line", "expected"),
    [
        ("qwen", "Retrying in 60s (attempt 1/10)", True),
        ("qwen", "[API Error: 429 Too Many Requests]", True),
        ("gemini", "Attempt 2 failed with status 429. Retrying after 6000ms...", True),
        ("gemini", "Retrying after 11000ms", True),
        ("gemini", "RESOURCE_EXHAUSTED", True),
        ("opencode", "exceeded your current quota", True),
        ("qwen", "YOLO mode is enabled.", False),
        ("gemini", "Ripgrep is not available. Falling back to GrepTool.", False),
        ("opencode", "wrote file /tmp/x4290.txt", False),
    ],
)
def test_rate_limit_lines_are_spotted_while_running(cli: str, line: str, expected: bool) -> None:
    assert get_adapter(cli).detect_rate_limit_line(line) is expected


# --- usage ------------------------------------------------------------------------------


def test_qwen_usage_comes_from_the_result_event() -> None:
    out = json.dumps(
        [
            {"type": "system", "subtype": "init"},
            {
                "type": "result",
                "subtype": "success",
                "num_turns": 5,
                "usage": {"input_tokens": 1200, "output_tokens": 80},
            },
        ]
    )
    usage = get_adapter("qwen").parse_usage(out)
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens, usage.requests) == (
        1200,
        80,
        1280,
        5,
    )


def test_gemini_usage_sums_every_model() -> None:
    out = json.dumps(
        {
            "session_id": "s",
            "response": "done",
            "stats": {
                "models": {
                    "gemini-2.5-pro": {
                        "api": {"totalRequests": 4},
                        "tokens": {"prompt": 1000, "candidates": 50, "total": 1050, "cached": 10},
                    },
                    "gemini-2.5-flash-lite": {
                        "api": {"totalRequests": 1},
                        "tokens": {"prompt": 100, "candidates": 5, "total": 105},
                    },
                }
            },
        }
    )
    usage = get_adapter("gemini").parse_usage(out)
    assert usage is not None
    assert (
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_tokens,
        usage.total_tokens,
        usage.requests,
    ) == (1100, 55, 10, 1155, 5)


def test_opencode_usage_sums_step_finish_events() -> None:
    step = {
        "type": "step_finish",
        "part": {
            "type": "step-finish",
            "tokens": {"input": 500, "output": 20, "reasoning": 5, "cache": {"read": 100, "write": 0}},
        },
    }
    out = "\n".join(
        [json.dumps({"type": "step_start"}), json.dumps(step), json.dumps({"type": "text"}), json.dumps(step)]
    )
    usage = get_adapter("opencode").parse_usage(out)
    assert usage is not None
    assert (
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_tokens,
        usage.total_tokens,
        usage.requests,
    ) == (1000, 50, 200, 1050, 2)


@pytest.mark.parametrize("cli", ["qwen", "gemini", "opencode"])
def test_no_usage_when_output_has_none(cli: str) -> None:
    assert get_adapter(cli).parse_usage("") is None
    assert get_adapter(cli).parse_usage("not json at all") is None


# --- against the real CLIs --------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("cli", ["qwen", "gemini", "opencode"])
def test_real_cli_starts_from_the_private_home(
    cli: str, tmp_path: Path, user_home: Path, clis: InstalledClis
) -> None:
    binary = clis.bin / cli  # installed by the fixture if missing (a failed install fails the run under CI)
    adapter = get_adapter(cli)
    home = adapter.prepare_agent_home(spec(cli, tmp_path, user_home), env={})
    node_bin = clis.node_bin
    env = adapter.env(
        home, base_env={"HOME": str(user_home), "PATH": f"{node_bin}{os.pathsep}{os.environ['PATH']}"}
    )
    out = subprocess.run(
        [str(binary), "--version"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert adapter.version in out.stdout
    if cli == "opencode":
        resolved = subprocess.run(
            [str(binary), "debug", "config"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=tmp_path,
        )
        assert resolved.returncode == 0, resolved.stderr
        config = json.loads(resolved.stdout)
        assert config["mcp"]["aiswarm"]["url"] == BROKER
        assert config["model"] == "anthropic/claude-sonnet-4"


# --- final answer (the task's result in per-task mode) ------------------------------------------

FINAL_ANSWERS = [
    (
        "qwen",
        json.dumps(
            [
                {"type": "system", "subtype": "init"},
                {"type": "assistant", "message": {"content": [{"type": "text", "text": "Writing it."}]}},
                {
                    "type": "result",
                    "subtype": "success",
                    "is_error": False,
                    "result": "Wrote a.txt\nall good",
                },
            ]
        ),
        "Wrote a.txt\nall good",
    ),
    ("qwen", json.dumps([{"type": "result", "is_error": True, "result": "API Error: 401"}]), ""),
    ("gemini", json.dumps({"session_id": "s", "response": "Wrote a.txt", "stats": {}}), "Wrote a.txt"),
    ("gemini", json.dumps({"error": {"message": "quota", "code": 429}}), ""),
    (
        "opencode",
        "\n".join(
            json.dumps(e)
            for e in [
                {"type": "step_start", "part": {"type": "step-start"}},
                {"type": "text", "part": {"type": "text", "text": "Let me write it."}},
                {"type": "tool_use", "part": {"type": "tool", "tool": "write"}},
                {"type": "step_finish", "part": {"type": "step-finish"}},
                {"type": "step_start", "part": {"type": "step-start"}},
                {"type": "text", "part": {"type": "text", "text": "Wrote a.txt"}},
                {"type": "step_finish", "part": {"type": "step-finish"}},
            ]
        ),
        "Wrote a.txt",
    ),
    (
        "codex",
        "\n".join(
            [
                '{"type":"item.completed","item":{"id":"i0","type":"agent_message","text":"On it."}}',
                '{"type":"item.completed","item":{"id":"i1","type":"command_execution","command":"ls"}}',
                '{"type":"item.completed","item":{"id":"i2","type":"agent_message","text":"Wrote a.txt"}}',
                '{"type":"turn.completed","usage":{"input_tokens":1,"output_tokens":1}}',
            ]
        ),
        "Wrote a.txt",
    ),
    ("claude", json.dumps({"type": "result", "is_error": False, "result": "Wrote a.txt"}), "Wrote a.txt"),
    ("claude", json.dumps({"type": "result", "is_error": True, "result": "API Error: 401"}), ""),
]


@pytest.mark.parametrize(("cli", "stdout", "answer"), FINAL_ANSWERS)
def test_the_final_answer_is_the_text_the_model_ended_with(cli: str, stdout: str, answer: str) -> None:
    assert get_adapter(cli).final_answer(stdout) == answer


@pytest.mark.parametrize("cli", ["qwen", "gemini", "opencode", "codex", "claude"])
def test_no_final_answer_when_the_output_has_none(cli: str) -> None:
    assert get_adapter(cli).final_answer("") == ""
    assert get_adapter(cli).final_answer("not json at all") == ""
