"""``aiswarm install-client``: aiswarm's entry goes into (and comes out of) each client's real config file.

Every test runs the real Typer command on a throwaway app, against real files under a fake ``HOME``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from aiswarm_server.jsonc import JsoncDocument
from launcher.primaries import ClientConfigError, install_client_command
from launcher.primaries.base import BACKUPS_DIR, backup_dir

TOKEN = "asw_p_primary-token-for-tests"
URL = "http://127.0.0.1:8765/mcp"
CLIENTS = ["claude", "codex", "gemini", "opencode", "qwen"]
ENV_OVERRIDES = ["CLAUDE_CONFIG_DIR", "XDG_CONFIG_HOME", "CODEX_HOME", "GEMINI_CLI_HOME", "QWEN_HOME"]

USER_FILES = {
    "claude": ".claude.json",
    "codex": ".codex/config.toml",
    "gemini": ".gemini/settings.json",
    "opencode": ".config/opencode/opencode.json",
    "qwen": ".qwen/settings.json",
}
PROJECT_FILES = {
    "claude": ".mcp.json",
    "codex": ".codex/config.toml",
    "gemini": ".gemini/settings.json",
    "opencode": "opencode.json",
    "qwen": ".qwen/settings.json",
}

# What users really have: other servers, comments, unusual indentation, keys the clients write themselves.
EXISTING = {
    "claude": """{
  "numStartups": 42,
  "projects": {
    "/home/me/repo": {
      "allowedTools": [],
      "mcpServers": {}
    }
  },
  "mcpServers": {
    "github": {
      "type": "http",
      "url": "https://api.githubcopilot.com/mcp/",
      "headers": {
        "Authorization": "Bearer ghp_user"
      }
    }
  },
  "userID": "c0ffee"
}
""",
    "codex": """# Codex settings
model = "gpt-5-codex"
approval_policy = "on-request"

[mcp_servers.docs]
command = "npx"
args = ["-y", "@upstash/context7-mcp"]

[mcp_servers.docs.env]
API_KEY = "k"   # keep me

# fast profile below
[profiles.fast]
model = "gpt-5-mini"
""",
    "gemini": """{
  // gemini settings, by hand
  "security": { "auth": { "selectedType": "oauth-personal" } },
  "ui": {
    "theme": "GitHub" /* my favourite */
  }
}
""",
    "opencode": """{
  "$schema": "https://opencode.ai/config.json",
  // the model I pay for
  "model": "anthropic/claude-sonnet-4",
  "mcp": {
    "context7": { "type": "remote", "url": "https://mcp.context7.com/mcp" } // docs
  },
  "permission": { "edit": "ask" }
}
""",
    "qwen": """{
\t"$version": 4,
\t"mcpServers": {
\t\t"fs": {
\t\t\t"command": "npx",
\t\t\t"args": ["-y", "@modelcontextprotocol/server-filesystem"]
\t\t}
\t},
\t"general": {"vimMode": true}
}
""",
}

BROKEN = {
    "claude": '{\n  "mcpServers": {\n    "a": 1,\n  }\n  "b": 2\n}\n',
    "codex": 'model = "x"\n[mcp_servers.a\ncommand = "y"\n',
    "gemini": '{\n  "ui": {\n    "theme": "GitHub"\n  \n',
    "opencode": '{\n  "mcp": {\n    "x": tru\n  }\n}\n',
    "qwen": '[\n  "not an object"\n]\n',
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake HOME with a default aiswarm home holding a primary token, and no client overrides set."""
    user_home = tmp_path / "home"
    (user_home / ".aiswarm").mkdir(parents=True)
    (user_home / ".aiswarm" / "primary.token").write_text(TOKEN + "\n")
    monkeypatch.setenv("HOME", str(user_home))
    for name in [
        *ENV_OVERRIDES,
        "AISWARM_HOME",
        "AISWARM_URL",
        "AISWARM_PORT",
        "AISWARM_HOST",
        "AISWARM_TOKEN_FILE",
    ]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AISWARM_CLIENT_STDIO", raising=False)
    return user_home


@pytest.fixture
def app() -> Iterator[typer.Typer]:
    application = typer.Typer()
    install_client_command(application)

    @application.command("unused")
    def _unused() -> None:  # a second command keeps `install-client` a sub-command, as in the real app
        """Placeholder."""

    yield application


def run(app: typer.Typer, *args: str) -> Result:
    return CliRunner().invoke(app, ["install-client", *args])


def ok(app: typer.Typer, *args: str) -> Result:
    result = run(app, *args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def read_config(path: Path) -> dict[str, Any]:
    text = path.read_text()
    return tomllib.loads(text) if path.suffix == ".toml" else JsoncDocument(text).value


def aiswarm_entry(client: str, path: Path) -> Any:
    config = read_config(path)
    servers = config.get({"codex": "mcp_servers", "opencode": "mcp"}.get(client, "mcpServers"), {})
    return servers.get("aiswarm")


def backups(path: Path) -> list[Path]:
    """The backups install-client kept of ``path``: under the default aiswarm home, none beside the file."""
    assert not [p for p in path.parent.iterdir() if p.name.startswith(f"{path.name}.")]
    kept = backup_dir(Path.home() / ".aiswarm" / BACKUPS_DIR, path.resolve())
    assert not kept.name.startswith(".")
    return sorted(kept.glob(f"{path.name.lstrip('.')}.*"))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------------------ the entries
def test_each_client_gets_its_own_http_entry_with_the_primary_token(app: typer.Typer, home: Path) -> None:
    for client in CLIENTS:
        ok(app, client, "--url", URL)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert aiswarm_entry("claude", home / USER_FILES["claude"]) == {
        "type": "http",
        "url": URL,
        "headers": bearer,
        "timeout": 900_000,
    }
    assert aiswarm_entry("opencode", home / USER_FILES["opencode"]) == {
        "type": "remote",
        "url": URL,
        "headers": bearer,
        "enabled": True,
        "timeout": 900_000,
    }
    gemini = aiswarm_entry("gemini", home / USER_FILES["gemini"])
    assert gemini["httpUrl"] == URL and gemini["headers"] == bearer and gemini["timeout"] > 290_000
    qwen = aiswarm_entry("qwen", home / USER_FILES["qwen"])
    assert qwen["httpUrl"] == URL and qwen["alwaysLoadTools"] is True and qwen["timeout"] > 290_000
    assert aiswarm_entry("codex", home / USER_FILES["codex"]) == {
        "url": URL,
        "http_headers": bearer,
        "tool_timeout_sec": 900,
    }
    assert read_config(home / USER_FILES["opencode"])["$schema"] == "https://opencode.ai/config.json"


def test_codex_entry_uses_only_keys_codex_accepts(app: typer.Typer, home: Path) -> None:
    # Codex's RawMcpServerConfig denies unknown fields and refuses an inline bearer_token.
    accepted = {
        "command", "args", "env", "env_vars", "cwd", "url", "bearer_token_env_var", "http_headers",
        "env_http_headers", "startup_timeout_sec", "startup_timeout_ms", "tool_timeout_sec", "enabled",
        "required", "enabled_tools", "disabled_tools", "scopes", "oauth_resource",
    }  # fmt: skip
    path = home / USER_FILES["codex"]
    ok(app, "codex")
    assert set(aiswarm_entry("codex", path)) <= accepted
    ok(app, "codex", "--stdio")
    entry = aiswarm_entry("codex", path)
    assert set(entry) <= accepted and "url" not in entry


def test_url_defaults_to_the_broker_advertised_in_the_aiswarm_home(app: typer.Typer, home: Path) -> None:
    ok(app, "gemini")
    assert aiswarm_entry("gemini", home / USER_FILES["gemini"])["httpUrl"] == URL
    advertised = {
        "url": "http://127.0.0.1:40123/mcp",
        "pid": 1,
        "host": "127.0.0.1",
        "port": 40123,
        "started_at": 0,
    }
    (home / ".aiswarm" / "broker.json").write_text(json.dumps(advertised))
    ok(app, "gemini")
    assert aiswarm_entry("gemini", home / USER_FILES["gemini"])["httpUrl"] == advertised["url"]


# ------------------------------------------------------------------------------------ merge and remove
@pytest.mark.parametrize("client", CLIENTS)
def test_install_keeps_the_users_config_and_remove_restores_it_byte_for_byte(
    app: typer.Typer, home: Path, client: str
) -> None:
    path = home / USER_FILES[client]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(EXISTING[client])
    path.chmod(0o644)
    original = read_config(path)

    ok(app, client)

    installed = read_config(path)
    assert aiswarm_entry(client, path) is not None
    without_ours = json.loads(json.dumps(installed))
    servers_key = {"codex": "mcp_servers", "opencode": "mcp"}.get(client, "mcpServers")
    del without_ours[servers_key]["aiswarm"]
    if not without_ours[servers_key] and servers_key not in original:
        del without_ours[servers_key]
    assert without_ours == original
    assert list(installed) == list(original) + [k for k in installed if k not in original]  # key order kept
    assert mode(path) == 0o600
    for line in EXISTING[client].splitlines():  # every line the user wrote, comments included, is still there
        assert line.replace(",", "") in path.read_text().replace(",", "")
    [backup] = backups(path)
    assert backup.read_text() == EXISTING[client]
    assert mode(backup) == 0o600

    result = ok(app, client, "--remove")
    assert "removed aiswarm" in result.output
    assert path.read_text() == EXISTING[client]
    assert len(backups(path)) == 2


@pytest.mark.parametrize("client", CLIENTS)
def test_install_into_a_missing_file_creates_it_and_remove_deletes_it_again(
    app: typer.Typer, home: Path, client: str
) -> None:
    path = home / USER_FILES[client]
    ok(app, client)
    assert path.exists() and mode(path) == 0o600
    assert TOKEN in path.read_text()
    assert backups(path) == []  # there was nothing to back up

    ok(app, client, "--remove")
    assert not path.exists()


@pytest.mark.parametrize("client", CLIENTS)
def test_installing_twice_is_installing_once(app: typer.Typer, home: Path, client: str) -> None:
    path = home / USER_FILES[client]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(EXISTING[client])
    ok(app, client)
    first = path.read_bytes()

    result = ok(app, client)

    assert "already installed" in result.output
    assert path.read_bytes() == first
    assert len(backups(path)) == 1


def test_reinstalling_with_another_url_replaces_only_our_entry(app: typer.Typer, home: Path) -> None:
    for client in CLIENTS:
        path = home / USER_FILES[client]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(EXISTING[client])
        ok(app, client)
        ok(app, client, "--url", "http://127.0.0.1:9999/mcp")
        assert "9999" in json.dumps(aiswarm_entry(client, path))
        ok(app, client, "--remove")
        assert path.read_text() == EXISTING[client], client


@pytest.mark.parametrize("client", CLIENTS)
def test_remove_when_aiswarm_is_not_there_changes_nothing(app: typer.Typer, home: Path, client: str) -> None:
    path = home / USER_FILES[client]
    assert "is not in" in ok(app, client, "--remove").output
    assert not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(EXISTING[client])
    assert "is not in" in ok(app, client, "--remove").output
    assert path.read_text() == EXISTING[client]
    assert backups(path) == []


def test_a_config_file_that_held_only_aiswarm_is_kept_if_it_has_comments(
    app: typer.Typer, home: Path
) -> None:
    path = home / USER_FILES["gemini"]
    path.parent.mkdir(parents=True)
    path.write_text("{\n  // mine\n}\n")
    ok(app, "gemini")
    ok(app, "gemini", "--remove")
    assert "// mine" in path.read_text()


def test_a_symlinked_config_is_edited_through_the_link(app: typer.Typer, home: Path, tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles" / "claude.json"
    dotfiles.parent.mkdir()
    dotfiles.write_text(EXISTING["claude"])
    (home / ".claude.json").symlink_to(dotfiles)

    ok(app, "claude")

    assert (home / ".claude.json").is_symlink()
    assert aiswarm_entry("claude", dotfiles) is not None


# --------------------------------------------------------------------------------------------- dry run
@pytest.mark.parametrize("client", CLIENTS)
def test_dry_run_prints_a_diff_and_writes_nothing(app: typer.Typer, home: Path, client: str) -> None:
    path = home / USER_FILES[client]
    result = ok(app, client, "--dry-run")
    assert "--- /dev/null" in result.output and f"+++ {path}" in result.output
    assert "<token>" in result.output and TOKEN not in result.output
    assert not path.exists()

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(EXISTING[client])
    result = ok(app, client, "--dry-run")
    assert f"--- {path}" in result.output and "+" in result.output
    assert path.read_text() == EXISTING[client]
    assert backups(path) == []

    ok(app, client)
    installed = path.read_text()
    result = ok(app, client, "--remove", "--dry-run")
    assert "\n-" in result.output
    assert path.read_text() == installed


# ----------------------------------------------------------------------------------------------- scopes
@pytest.mark.parametrize("client", CLIENTS)
def test_project_scope_edits_the_file_in_the_project_directory(
    app: typer.Typer, home: Path, tmp_path: Path, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    ok(app, client, "--project", str(repo))
    assert aiswarm_entry(client, repo / PROJECT_FILES[client]) is not None
    assert not (home / USER_FILES[client]).exists()

    monkeypatch.chdir(repo)
    result = ok(app, client, "--project", "--remove")
    assert not (repo / PROJECT_FILES[client]).exists()
    assert str(repo / PROJECT_FILES[client]) in result.output


def test_project_scope_warns_that_the_file_holds_the_token(
    app: typer.Typer, home: Path, tmp_path: Path
) -> None:
    result = ok(app, "claude", "--project", str(tmp_path))
    assert "holds your primary token: keep it out of version control" in result.output


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("client", CLIENTS)
def test_project_install_in_a_git_checkout_leaves_only_the_config_file_and_keeps_the_backup_outside(
    app: typer.Typer, home: Path, tmp_path: Path, client: str
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    config = repo / PROJECT_FILES[client]
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(EXISTING[client])
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "config")

    result = ok(app, client, "--project", str(repo))

    assert git(repo, "status", "--porcelain", "--untracked-files=all").splitlines() == [
        f" M {PROJECT_FILES[client]}"
    ]
    holding_token = [p for p in repo.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert holding_token == [config]
    [backup] = backups(config)
    assert backup.read_text() == EXISTING[client] and mode(backup) == 0o600
    assert mode(backup.parent) == 0o700 and (backup.parent / "source").read_text() == f"{config.resolve()}\n"
    assert f"backup: {backup}" in result.output
    assert f"git would commit it, so add {PROJECT_FILES[client]} to .gitignore" in result.output


def test_project_install_says_when_git_already_ignores_the_file(
    app: typer.Typer, home: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / ".gitignore").write_text(".mcp.json\n")

    result = ok(app, "claude", "--project", str(repo))

    assert "holds your primary token (git ignores it here)" in result.output
    assert git(repo, "status", "--porcelain", "--untracked-files=all").splitlines() == ["?? .gitignore"]


@pytest.mark.parametrize(
    ("client", "variable", "relative"),
    [
        ("claude", "CLAUDE_CONFIG_DIR", ".claude.json"),
        ("opencode", "XDG_CONFIG_HOME", "opencode/opencode.json"),
        ("codex", "CODEX_HOME", "config.toml"),
        ("gemini", "GEMINI_CLI_HOME", ".gemini/settings.json"),
        ("qwen", "QWEN_HOME", "settings.json"),
    ],
)
def test_user_scope_honours_the_clients_own_config_location_variable(
    app: typer.Typer,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    client: str,
    variable: str,
    relative: str,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv(variable, str(elsewhere))
    ok(app, client)
    assert aiswarm_entry(client, elsewhere / relative) is not None
    assert not (home / USER_FILES[client]).exists()


def test_opencode_jsonc_is_edited_when_it_is_the_file_that_exists(app: typer.Typer, home: Path) -> None:
    path = home / ".config/opencode/opencode.jsonc"
    path.parent.mkdir(parents=True)
    path.write_text(EXISTING["opencode"])
    ok(app, "opencode")
    assert aiswarm_entry("opencode", path) is not None
    assert not (home / ".config/opencode/opencode.json").exists()


# ------------------------------------------------------------------------------------------------ stdio
@pytest.mark.parametrize("client", CLIENTS)
def test_stdio_mode_configures_the_bridge_without_the_token(
    app: typer.Typer, home: Path, client: str
) -> None:
    path = home / USER_FILES[client]
    ok(app, client, "--stdio")
    entry = aiswarm_entry(client, path)
    command = entry["command"] if client == "opencode" else [entry["command"], *entry["args"]]
    assert Path(command[0]).is_absolute()
    assert command[-1] == "mcp"
    assert TOKEN not in path.read_text()
    assert (
        "env" not in entry and "environment" not in entry
    )  # default home: the bridge finds everything itself


def test_stdio_mode_passes_a_non_default_home_and_token_file(
    app: typer.Typer, home: Path, tmp_path: Path
) -> None:
    other_home = tmp_path / "other-aiswarm"
    other_home.mkdir()
    token_file = tmp_path / "my.token"
    token_file.write_text("asw_p_other\n")
    ok(app, "claude", "--stdio", "--home", str(other_home), "--token-file", str(token_file))
    entry = aiswarm_entry("claude", home / USER_FILES["claude"])
    assert entry["type"] == "stdio"
    assert entry["env"] == {"AISWARM_HOME": str(other_home), "AISWARM_TOKEN": "asw_p_other"}
    assert mode(home / USER_FILES["claude"]) == 0o600

    ok(app, "opencode", "--stdio", "--home", str(other_home), "--url", "http://127.0.0.1:7000/mcp")
    entry = aiswarm_entry("opencode", home / USER_FILES["opencode"])
    assert entry["type"] == "local"
    assert entry["command"][-3:] == ["mcp", "--url", "http://127.0.0.1:7000/mcp"]
    assert entry["environment"] == {"AISWARM_HOME": str(other_home)}


def test_switching_between_http_and_stdio_rewrites_the_whole_entry(app: typer.Typer, home: Path) -> None:
    path = home / USER_FILES["codex"]
    path.parent.mkdir(parents=True)
    path.write_text(EXISTING["codex"])
    ok(app, "codex")
    ok(app, "codex", "--stdio")
    entry = aiswarm_entry("codex", path)
    assert "http_headers" not in entry and entry["args"] == ["mcp"]
    assert read_config(path)["mcp_servers"]["docs"]["env"] == {"API_KEY": "k"}
    ok(app, "codex", "--remove")
    assert path.read_text() == EXISTING["codex"]


# ----------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("client", CLIENTS)
def test_a_config_file_that_does_not_parse_is_refused_and_left_alone(
    app: typer.Typer, home: Path, client: str
) -> None:
    path = home / USER_FILES[client]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BROKEN[client])
    for args in ([client], [client, "--remove"], [client, "--dry-run"]):
        result = run(app, *args)
        assert isinstance(result.exception, ClientConfigError)
        message = str(result.exception)
        assert str(path) in message and "line " in message and "\n" not in message
        assert path.read_text() == BROKEN[client]
        assert backups(path) == []


def test_an_unknown_client_is_refused_with_the_known_ones(app: typer.Typer, home: Path) -> None:
    result = run(app, "cursor")
    assert isinstance(result.exception, ClientConfigError)
    assert (
        str(result.exception)
        == "unknown client 'cursor': known clients are claude, codex, gemini, opencode, qwen"
    )


def test_a_missing_token_says_how_to_get_one(app: typer.Typer, home: Path) -> None:
    (home / ".aiswarm" / "primary.token").unlink()
    result = run(app, "claude")
    assert isinstance(result.exception, ClientConfigError)
    assert "aiswarm serve" in str(result.exception)
    assert not (home / ".claude.json").exists()
    ok(app, "claude", "--stdio")  # the bridge does not need it yet: it starts the broker, which creates it


def test_an_admin_token_is_not_handed_to_the_primary_agent(app: typer.Typer, home: Path) -> None:
    admin = home / ".aiswarm" / "admin.token"
    admin.write_text("asw_a_admin\n")
    result = run(app, "claude", "--token-file", str(admin))
    assert isinstance(result.exception, ClientConfigError)
    assert "admin token" in str(result.exception)


@pytest.mark.parametrize("url", ["127.0.0.1:8765/mcp", "ftp://x/mcp", "http:///mcp"])
def test_a_url_that_is_not_http_is_refused(app: typer.Typer, home: Path, url: str) -> None:
    result = run(app, "gemini", "--url", url)
    assert isinstance(result.exception, ClientConfigError)
    assert "--url" in str(result.exception)


def test_a_directory_needs_project(app: typer.Typer, home: Path, tmp_path: Path) -> None:
    result = run(app, "claude", str(tmp_path))
    assert isinstance(result.exception, ClientConfigError)
    assert "--project" in str(result.exception)
    result = run(app, "claude", "--project", str(tmp_path / "missing"))
    assert isinstance(result.exception, ClientConfigError)


def test_a_codex_entry_not_written_as_a_table_is_refused(app: typer.Typer, home: Path) -> None:
    path = home / USER_FILES["codex"]
    path.parent.mkdir(parents=True)
    inline = 'mcp_servers = { aiswarm = { command = "old" } }\n'
    path.write_text(inline)
    result = run(app, "codex")
    assert isinstance(result.exception, ClientConfigError)
    assert "edit it by hand" in str(result.exception)
    assert path.read_text() == inline


def test_crlf_files_keep_their_line_endings(app: typer.Typer, home: Path) -> None:
    path = home / USER_FILES["gemini"]
    path.parent.mkdir(parents=True)
    original = EXISTING["gemini"].replace("\n", "\r\n").encode()
    path.write_bytes(original)
    ok(app, "gemini")
    assert b"\n" not in path.read_bytes().replace(b"\r\n", b"")
    ok(app, "gemini", "--remove")
    assert path.read_bytes() == original


def test_file_mode_is_kept_when_the_remaining_file_has_no_token(app: typer.Typer, home: Path) -> None:
    path = home / USER_FILES["qwen"]
    path.parent.mkdir(parents=True)
    path.write_text(EXISTING["qwen"])
    ok(app, "qwen", "--stdio")
    os.chmod(path, 0o640)
    ok(app, "qwen", "--stdio", "--url", "http://127.0.0.1:1/mcp")
    assert mode(path) == 0o640


# ------------------------------------------------------------------------------- the text editors, directly
ROUND_TRIPS = [
    "",
    "{}",
    "{}\n",
    '{"a":1}',
    '\ufeff{\n  "a": 1\n}\n',
    '{\n  "mcpServers": {}\n}\n',
    '{\n  "mcpServers": {\n    "x": {"command": "y"},\n  },\n}\n',
    '{\n  "mcpServers": {\n    // servers\n  }\n}\n',
    '{\n  "mcpServers": {\n    "x": 1, // about x\n    /* next */ "y": 2\n  }\n}\n',
    '{\n    "deep": {"deeper": [1, {"k": "v"}]},\n    "s": "with // and /* inside"\n}',
]


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_jsonc_set_then_remove_gives_back_the_same_text(text: str) -> None:
    document = JsoncDocument(text)
    before = document.value
    document.set(("mcpServers", "aiswarm"), {"url": "u", "headers": {"A": "B"}})
    assert document.value["mcpServers"]["aiswarm"] == {"url": "u", "headers": {"A": "B"}}
    document.set(("mcpServers", "aiswarm"), {"url": "v"})
    document.remove(("mcpServers", "aiswarm"))
    after = document.value
    if "mcpServers" not in before:
        assert after == before
        assert document.text in (text, "{}\n") if not text.strip() else document.text == text
    elif before["mcpServers"]:
        assert after == before
        assert document.text == text or "//" in text
    else:  # an empty server list goes with our entry: the same config to every client
        assert after in (before, {k: v for k, v in before.items() if k != "mcpServers"})


def test_jsonc_removes_a_first_member_and_keeps_comments_that_belong_to_others() -> None:
    text = (
        '{\n  "mcpServers": {\n    "aiswarm": {"u": 1},\n    // the next one is mine\n    "mine": 2\n  }\n}\n'
    )
    document = JsoncDocument(text)
    document.remove(("mcpServers", "aiswarm"))
    assert document.value == {"mcpServers": {"mine": 2}}
    assert "// the next one is mine" in document.text


@pytest.mark.parametrize(
    ("text", "line"), [('{\n  "a": 1\n  "b": 2\n}', 3), ('{\n  "a": /* open', 2), ('{"a": "\n"}', 1)]
)
def test_jsonc_errors_name_the_line(text: str, line: int) -> None:
    from aiswarm_server.jsonc import JsoncError

    with pytest.raises(JsoncError) as raised:
        JsoncDocument(text)
    assert raised.value.line == line


def test_toml_table_between_others_is_replaced_in_place_and_removed_cleanly() -> None:
    from launcher.primaries.toml_tables import TomlDocument

    text = (
        '[mcp_servers.a]\ncommand = "a"\n\n[mcp_servers.aiswarm]\nurl = "old"\n\n[mcp_servers.aiswarm.http_headers]\n'
        'X = "y"\n\n# b follows\n[mcp_servers.b]\ncommand = "b"\n'
    )
    document = TomlDocument(text)
    document.set_table(("mcp_servers", "aiswarm"), {"url": "new", "args": ["x"], "env": {"K": "v"}})
    assert document.value["mcp_servers"]["aiswarm"] == {"url": "new", "args": ["x"], "env": {"K": "v"}}
    assert document.text.index("aiswarm") < document.text.index("[mcp_servers.b]")
    assert "# b follows" in document.text
    document.remove_table(("mcp_servers", "aiswarm"))
    assert document.text == '[mcp_servers.a]\ncommand = "a"\n\n# b follows\n[mcp_servers.b]\ncommand = "b"\n'


def test_toml_strings_that_need_escapes_survive() -> None:
    from launcher.primaries.toml_tables import TomlDocument

    odd = 'quote " backslash \\ tab \t del \x7f é 🐝'
    document = TomlDocument("")
    document.set_table(("mcp_servers", "aiswarm"), {"command": odd, "env": {"A KEY": odd}})
    assert tomllib.loads(document.text)["mcp_servers"]["aiswarm"] == {"command": odd, "env": {"A KEY": odd}}


def test_toml_table_added_to_a_group_goes_after_it_and_leaves_the_next_tables_comment_with_it() -> None:
    from launcher.primaries.toml_tables import TomlDocument

    text = '[mcp_servers.a]\ncommand = "a"\n\n# the fast profile\n[profiles.fast]\nmodel = "m"\n'
    document = TomlDocument(text)
    document.set_table(("mcp_servers", "aiswarm"), {"url": "u", "http_headers": {"A": "B"}})
    assert document.text == (
        '[mcp_servers.a]\ncommand = "a"\n\n[mcp_servers.aiswarm]\nurl = "u"\nhttp_headers = {A = "B"}\n\n'
        '# the fast profile\n[profiles.fast]\nmodel = "m"\n'
    )
    document.remove_table(("mcp_servers", "aiswarm"))
    assert document.text == text
