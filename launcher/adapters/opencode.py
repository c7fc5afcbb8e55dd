"""opencode (``opencode-ai``): config in the file named by ``OPENCODE_CONFIG``.

Private home (``$AISWARM_HOME/agents/<name>``), with ``XDG_CONFIG_HOME``, ``XDG_DATA_HOME`` and
``XDG_STATE_HOME`` pointed inside it so the user's global config, sessions and state stay untouched::

    opencode.json              written by aiswarm (0600): MCP entry, permissions, model/provider
    config/                    XDG_CONFIG_HOME (empty: the user's global config is not merged)
    data/opencode/auth.json    -> the user's ~/.local/share/opencode/auth.json (provider logins and keys)
    state/                     XDG_STATE_HOME (sessions' recent-model list, prompt history)

``auth.json`` is linked, not copied: some providers' OAuth refresh tokens rotate, and opencode
already shares that one file between all its running instances.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from aiswarm_server.files import read_json_object
from launcher.adapters.base import (
    AGENT_HEADER,
    MCP_SERVER_NAME,
    AgentHome,
    AgentSpec,
    CarriedCredential,
    CliAdapter,
    CredentialFinding,
    OutcomeKind,
    TokenUsage,
    bearer_headers,
    chosen_model,
    deep_merge,
    json_lines,
)
from launcher.providers import ProviderKind

ENDPOINT_PROVIDER = "aiswarm"
"""Provider id of the custom OpenAI-compatible endpoint (tests, offline demo)."""

_SDK = {
    ProviderKind.OPENAI_COMPATIBLE: ("@ai-sdk/openai-compatible", "https://api.openai.com/v1", ""),
    ProviderKind.ANTHROPIC_COMPATIBLE: ("@ai-sdk/anthropic", "https://api.anthropic.com", "/v1"),
    ProviderKind.GEMINI_API: ("@ai-sdk/google", "https://generativelanguage.googleapis.com", "/v1beta"),
}
"""The AI SDK package opencode talks to each kind of provider with, its public base URL and the path it adds."""

_CARRIED_SETTINGS = ("model", "small_model", "provider", "enabled_providers", "disabled_providers")
_CONFIG_NAMES = ("opencode.json", "opencode.jsonc", "config.json")


class OpencodeAdapter(CliAdapter):
    """opencode, headless with ``run --format json --title T``, the prompt on stdin."""

    name: ClassVar[str] = "opencode"
    exit_codes: ClassVar[Mapping[int, tuple[OutcomeKind, str]]] = {}
    prompt_on_stdin: ClassVar[bool] = True
    """``opencode run`` re-quotes a message argument holding a space and backslash-escapes its ``"``
    (measured with 1.18.33), so the model would read ``\\"`` wherever the prompt had ``"``; stdin is read as is."""

    def user_config_files(self, user_home: Path, env: Mapping[str, str]) -> list[Path]:
        """The user's global opencode config files, lowest precedence first."""
        base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else user_home / ".config"
        files = [base / "opencode" / n for n in _CONFIG_NAMES]
        if env.get("OPENCODE_CONFIG"):
            files.append(Path(env["OPENCODE_CONFIG"]).expanduser())
        return files

    def user_data_dir(self, user_home: Path, env: Mapping[str, str]) -> Path:
        """The user's opencode data directory (holds ``auth.json``)."""
        base = Path(env["XDG_DATA_HOME"]) if env.get("XDG_DATA_HOME") else user_home / ".local" / "share"
        return base / "opencode"

    def user_state_dir(self, user_home: Path, env: Mapping[str, str]) -> Path:
        """The user's opencode state directory (holds ``model.json``, the recently used models)."""
        base = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else user_home / ".local" / "state"
        return base / "opencode"

    def _settings_path(self, root: Path) -> Path:
        return root / "opencode.json"

    def _home_env(self, agent: AgentSpec, root: Path) -> dict[str, str]:
        return {
            "OPENCODE_CONFIG": str(root / "opencode.json"),
            "XDG_CONFIG_HOME": str(root / "config"),
            "XDG_DATA_HOME": str(root / "data"),
            "XDG_STATE_HOME": str(root / "state"),
        }

    def _build_settings(
        self, agent: AgentSpec, root: Path, env: Mapping[str, str], carried: list[CarriedCredential]
    ) -> dict[str, Any]:
        user_home = agent.resolved_user_home()
        for sub in ("config", "data/opencode", "state/opencode"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._carry_files(
            self.user_data_dir(user_home, env),
            root / "data" / "opencode",
            [("auth-file", "auth.json")],
            "symlink",
            carried,
        )
        settings: dict[str, Any] = {}
        for path in self.user_config_files(user_home, env):
            deep_merge(settings, self._carry_user_settings(path, _CARRIED_SETTINGS, carried))
        if "model" not in settings:
            recent = self._recent_model(user_home, env)
            if recent:
                settings["model"] = recent
                carried.append(
                    CarriedCredential(
                        kind="recent-model",
                        source=str(self.user_state_dir(user_home, env) / "model.json"),
                        how="settings",
                    )
                )
        ours: dict[str, Any] = {
            "$schema": "https://opencode.ai/config.json",
            "autoupdate": False,
            "share": "disabled",
            "permission": {"*": "allow"},
            "mcp": {
                MCP_SERVER_NAME: {
                    "type": "remote",
                    "url": agent.broker_url,
                    "headers": bearer_headers(agent),
                    "timeout": agent.tool_timeout_ms,
                    "enabled": True,
                }
            },
        }
        headers = {AGENT_HEADER: agent.name}
        if agent.endpoint is not None:
            endpoint = agent.endpoint
            model_id = chosen_model(agent) or "default"
            sdk, default_base, suffix = _SDK[endpoint.kind]
            options: dict[str, Any] = {
                "baseURL": (endpoint.base_url or default_base).rstrip("/") + suffix,
                "apiKey": endpoint.api_key,  # the config file is 0600; opencode reads the key nowhere else
                "headers": headers,
            }
            ours["provider"] = {
                ENDPOINT_PROVIDER: {
                    "npm": sdk,
                    "name": f"aiswarm provider {endpoint.provider}",
                    "options": options,
                    "models": {model_id: {"name": model_id, "tool_call": True}},
                }
            }
            ours["model"] = ours["small_model"] = f"{ENDPOINT_PROVIDER}/{model_id}"
        else:
            if agent.model:
                ours["model"] = agent.model
            model = ours.get("model") or settings.get("model")
            if isinstance(model, str) and "/" in model:
                ours["provider"] = {model.split("/", 1)[0]: {"options": {"headers": headers}}}
        return deep_merge(settings, ours)

    def _recent_model(self, user_home: Path, env: Mapping[str, str]) -> str | None:
        """The user's most recently used ``provider/model`` from opencode's state, if any."""
        recent = read_json_object(self.user_state_dir(user_home, env) / "model.json").get("recent")
        if isinstance(recent, list) and recent and isinstance(recent[0], dict):
            provider, model = recent[0].get("providerID"), recent[0].get("modelID")
            if isinstance(provider, str) and isinstance(model, str):
                return f"{provider}/{model}"
        return None

    def _run_env(self, agent_home: AgentHome) -> dict[str, str]:
        return {
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_MODELS_FETCH": "1",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
            "OPENCODE_DISABLE_SHARE": "1",
        }

    def _arguments(self, agent_home: AgentHome, prompt: str, model: str | None) -> list[str]:
        args = ["run", "--format", "json", "--title", f"aiswarm {agent_home.spec.name}"]
        if model:
            if agent_home.spec.endpoint is not None and not model.startswith(f"{ENDPOINT_PROVIDER}/"):
                model = f"{ENDPOINT_PROVIDER}/{model}"  # a provider's model id may hold a "/" itself
            args += ["--model", model]
        return args

    def _credential_files(self, user_home: Path, env: Mapping[str, str]) -> Iterable[tuple[str, Path]]:
        return [("auth-file", self.user_data_dir(user_home, env) / "auth.json")]

    def _credential_env_vars(self) -> tuple[str, ...]:
        return (
            "OPENAI_API_KEY",
            "ANTHROPIC_API_KEY",
            "OPENROUTER_API_KEY",
            "GEMINI_API_KEY",
            "OPENCODE_API_KEY",
        )

    def _settings_credentials(self, user_home: Path, env: Mapping[str, str]) -> list[CredentialFinding]:
        found: list[CredentialFinding] = []
        for path in self.user_config_files(user_home, env):
            providers = read_json_object(path).get("provider")
            if isinstance(providers, dict):
                found += [
                    CredentialFinding(
                        kind="settings-api-key", detail=f"{path}: provider.{pid}.options.apiKey"
                    )
                    for pid, cfg in providers.items()
                    if isinstance(cfg, dict)
                    and isinstance(cfg.get("options"), dict)
                    and cfg["options"].get("apiKey")
                ]
        return found

    def _error_text(self, stdout: str, stderr: str) -> str:
        texts: list[str] = []
        for event in json_lines(stdout):
            if event.get("type") != "error":
                continue
            error = event.get("error") or {}
            data = error.get("data") or {} if isinstance(error, dict) else {}
            status = data.get("statusCode") if isinstance(data, dict) else None
            message = data.get("message") if isinstance(data, dict) else None
            name = error.get("name", "error") if isinstance(error, dict) else "error"
            texts.append(
                f"{name}: {message or ''} (statusCode {status})" if status else f"{name}: {message or error}"
            )
        return " | ".join(texts)

    def final_answer(self, stdout: str) -> str:
        """The ``text`` parts opencode printed after the run's last tool call (earlier text was commentary)."""
        parts: list[str] = []
        for event in json_lines(stdout):
            if event.get("type") == "tool_use":
                parts = []
            elif event.get("type") == "text":
                part = event.get("part")
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    parts.append(text)
        return "\n".join(parts)

    def parse_usage(self, stdout: str) -> TokenUsage | None:
        """Summed over the ``step_finish`` events: ``part.tokens`` (input, output, reasoning, cache.read)."""
        usage: TokenUsage | None = None
        for event in json_lines(stdout):
            if event.get("type") != "step_finish":
                continue
            part = event.get("part") if isinstance(event.get("part"), dict) else event
            tokens = part.get("tokens") if isinstance(part, dict) else None
            if not isinstance(tokens, dict):
                continue
            usage = usage or TokenUsage(requests=0)
            inp = int(tokens.get("input") or 0)
            out = int(tokens.get("output") or 0) + int(tokens.get("reasoning") or 0)
            cache = tokens.get("cache")
            cache = cache if isinstance(cache, dict) else {}
            usage.input_tokens += inp
            usage.output_tokens += out
            usage.cached_tokens += int(cache.get("read") or 0)
            usage.total_tokens += int(tokens.get("total") or inp + out)
            usage.requests = (usage.requests or 0) + 1
        return usage
