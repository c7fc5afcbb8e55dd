"""Claude Code (``@anthropic-ai/claude-code``): settings in ``$CLAUDE_CONFIG_DIR/settings.json``.

Private home (``CLAUDE_CONFIG_DIR=$AISWARM_HOME/agents/<name>``)::

    settings.json       written by aiswarm (0600): permissions for headless work, the user's env and model
    mcp.json            written by aiswarm (0600): the broker entry, passed with ``--mcp-config``
    .credentials.json   copy of the user's ``~/.claude/.credentials.json`` (a Claude subscription login)

Claude Code rotates the OAuth tokens in ``.credentials.json``; the copy is carried back when it was
refreshed (``CliAdapter.return_logins``). It writes its own state (``.claude.json``, sessions,
projects) beside these. The broker entry lives in its own file, read with ``--strict-mcp-config``,
so neither the user's servers nor a project's ``.mcp.json`` reach the worker; the token is never on
the command line.

Headless permissions: Claude Code refuses ``--dangerously-skip-permissions`` as root, so the worker
runs with ``--permission-mode acceptEdits`` and an allow list (the broker's tools, file tools, the
shell) instead, which works for every user. Tool search is turned off (``ENABLE_TOOL_SEARCH=false``):
otherwise the broker's tools are deferred behind a ``ToolSearch`` call, as qwen hides them without
``alwaysLoadTools``. ``CLAUDE_CODE_MAX_RETRIES`` bounds the retries: with the default a permanent 401
kept a run going for over two minutes (measured), with 2 it ends in about 3 s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from typing_extensions import override

from aiswarm_server.files import read_json_object, write_private_json
from launcher.adapters.base import (
    AGENT_HEADER,
    MCP_SERVER_NAME,
    AgentHome,
    AgentSpec,
    CarriedCredential,
    CliAdapter,
    CredentialFinding,
    OutcomeKind,
    RunOutcome,
    TokenUsage,
    bearer_headers,
    deep_merge,
    last_json_value,
    pick,
)

ALLOWED_TOOLS = (
    f"mcp__{MCP_SERVER_NAME}",
    "Read",
    "Write",
    "Edit",
    "MultiEdit",
    "Glob",
    "Grep",
    "Bash",
    "LS",
)
"""What a headless worker may use without asking: the broker's tools, the file tools and the shell."""

_CARRIED_SETTINGS = ("env", "model", "apiKeyHelper", "awsAuthRefresh", "awsCredentialExport")
"""Keys of the user's ``~/.claude/settings.json`` that choose the login and model."""

_MCP_CONFIG = "mcp.json"

_LOGIN_VARIABLES = ("ANTHROPIC_", "CLAUDE_CODE_OAUTH")
"""Prefixes of the variables that choose Claude Code's API, key or login."""


class ClaudeAdapter(CliAdapter):
    """Claude Code, headless with ``-p PROMPT --output-format json --permission-mode acceptEdits``."""

    name: ClassVar[str] = "claude"

    def user_config_dir(self, user_home: Path, env: Mapping[str, str] | None = None) -> Path:
        """The user's own Claude Code directory: their ``$CLAUDE_CONFIG_DIR`` if set, else ``~/.claude``."""
        own = (env or {}).get("CLAUDE_CONFIG_DIR")
        return Path(own).expanduser() if own else user_home / ".claude"

    @override
    def _settings_path(self, root: Path) -> Path:
        return root / "settings.json"

    @override
    def _home_env(self, agent: AgentSpec, root: Path) -> dict[str, str]:
        return {"CLAUDE_CONFIG_DIR": str(root)}

    @override
    def _build_settings(
        self, agent: AgentSpec, root: Path, env: Mapping[str, str], carried: list[CarriedCredential]
    ) -> dict[str, Any]:
        user_dir = self.user_config_dir(agent.resolved_user_home(), env)
        self._carry_files(user_dir, root, [("oauth", ".credentials.json")], "copy", carried, write_back=True)
        settings = self._carry_user_settings(user_dir / "settings.json", _CARRIED_SETTINGS, carried)
        self._carry_env_keys(agent, env, carried)
        if agent.endpoint is not None:
            # Claude Code applies settings.json's env over its own environment: the user's key or base URL would win.
            settings.pop("apiKeyHelper", None)
            own_env = settings.get("env")
            if isinstance(own_env, dict):
                settings["env"] = {k: v for k, v in own_env.items() if not k.startswith(_LOGIN_VARIABLES)}
        write_private_json(
            root / _MCP_CONFIG,
            {
                "mcpServers": {
                    MCP_SERVER_NAME: {
                        "type": "http",
                        "url": agent.broker_url,
                        "headers": bearer_headers(agent),
                        "timeout": agent.tool_timeout_ms,
                    }
                }
            },
        )
        ours = {"permissions": {"allow": list(ALLOWED_TOOLS), "defaultMode": "acceptEdits"}}
        return deep_merge(settings, ours)

    @override
    def _run_env(self, agent_home: AgentHome) -> dict[str, str]:
        spec = agent_home.spec
        env = {
            "ENABLE_TOOL_SEARCH": "false",
            "CLAUDE_CODE_MAX_RETRIES": str(max(spec.model_max_attempts - 1, 1)),
            "MCP_TOOL_TIMEOUT": str(spec.tool_timeout_ms),
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "ANTHROPIC_CUSTOM_HEADERS": f"{AGENT_HEADER}: {spec.name}",
        }
        if spec.endpoint is not None:
            env |= {
                "ANTHROPIC_API_KEY": spec.endpoint.api_key,
                "ANTHROPIC_AUTH_TOKEN": "",
                "CLAUDE_CODE_OAUTH_TOKEN": "",
            }
            if spec.endpoint.base_url:
                # Claude Code appends /v1/messages itself: an OpenAI-style /v1 on the endpoint must go.
                env["ANTHROPIC_BASE_URL"] = spec.endpoint.base_url.rstrip("/").removesuffix("/v1")
        return env

    @override
    def _arguments(self, agent_home: AgentHome, prompt: str, model: str | None) -> list[str]:
        args = [
            "-p",
            prompt,
            "--output-format",
            "json",
            "--mcp-config",
            str(agent_home.root / _MCP_CONFIG),
            "--strict-mcp-config",
            "--max-turns",
            str(agent_home.spec.max_turns),
        ]
        return [*args, "--model", model] if model else args

    @override
    def _credential_files(self, user_home: Path, env: Mapping[str, str]) -> Iterable[tuple[str, Path]]:
        return [("claude-oauth", self.user_config_dir(user_home, env) / ".credentials.json")]

    @override
    def _credential_env_vars(self) -> tuple[str, ...]:
        return ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")

    @override
    def _settings_credentials(self, user_home: Path, env: Mapping[str, str]) -> list[CredentialFinding]:
        path = self.user_config_dir(user_home, env) / "settings.json"
        chosen = pick(read_json_object(path), "apiKeyHelper", "env")
        found: list[CredentialFinding] = []
        if isinstance(chosen.get("apiKeyHelper"), str):
            found.append(CredentialFinding(kind="settings", detail=f"{path}: apiKeyHelper"))
        keys = chosen.get("env")
        found += [
            CredentialFinding(kind="settings-api-key", detail=f"{path}: env.{k}")
            for k in (keys if isinstance(keys, dict) else {})
            if k in self._credential_env_vars()
        ]
        return found

    @override
    def classify_exit(self, returncode: int | None, stdout: str, stderr: str) -> RunOutcome:
        """As every CLI's, except that a result with subtype ``error_max_turns`` is the turn limit."""
        value = last_json_value(stdout)
        if returncode is not None and isinstance(value, dict) and value.get("subtype") == "error_max_turns":
            return RunOutcome(
                kind=OutcomeKind.TURN_LIMIT,
                reason="Claude Code stopped at --max-turns",
                returncode=returncode,
            )
        return super().classify_exit(returncode, stdout, stderr)

    @override
    def _error_text(self, stdout: str, stderr: str) -> str:
        """From the result object: ``result`` (the error text) with ``api_error_status`` when the run failed."""
        value = last_json_value(stdout)
        if not isinstance(value, dict) or not value.get("is_error"):
            return ""
        status = value.get("api_error_status")
        text = str(value.get("result") or value.get("subtype") or "error")
        return f"{text} (HTTP {status})" if status else text

    @override
    def final_answer(self, stdout: str) -> str:
        """The ``result`` of Claude Code's result object, when the run did not end in an error."""
        value = last_json_value(stdout)
        if not isinstance(value, dict) or value.get("is_error"):
            return ""
        text = value.get("result")
        return text if isinstance(text, str) else ""

    @override
    def parse_usage(self, stdout: str) -> TokenUsage | None:
        """From the result object's ``usage`` (input, output, cache reads and writes) and ``num_turns``."""
        value = last_json_value(stdout)
        usage = value.get("usage") if isinstance(value, dict) else None
        if not isinstance(usage, dict):
            return None
        cache_read = int(usage.get("cache_read_input_tokens") or 0)
        inp = (
            int(usage.get("input_tokens") or 0)
            + int(usage.get("cache_creation_input_tokens") or 0)
            + cache_read
        )
        out = int(usage.get("output_tokens") or 0)
        turns = value.get("num_turns") if isinstance(value, dict) else None
        return TokenUsage(
            input_tokens=inp,
            output_tokens=out,
            cached_tokens=cache_read,
            total_tokens=inp + out,
            requests=turns if isinstance(turns, int) else None,
        )
