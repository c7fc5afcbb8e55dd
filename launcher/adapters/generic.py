"""A CLI described in the config file instead of in Python: ``[clis.<name>]`` in ``$AISWARM_HOME/config.toml``.

For a CLI aiswarm has no adapter for (Antigravity's ``agy``, a newer CLI, a wrapper script), the user
writes how to run it headless, where its MCP entry for the broker goes, and how to read its output::

    [clis.qwen-plain]
    command = ["qwen", "-p", "{prompt}", "--yolo", "--output-format", "json"]   # or prompt = "stdin"
    model_args = ["--model", "{model}"]              # appended when the agent has a model
    env = { QWEN_HOME = "{home}", OPENAI_BASE_URL = "{endpoint_url}", OPENAI_API_KEY = "{endpoint_key}" }
    credential_env = ["OPENAI_API_KEY"]              # keys ``aiswarm doctor`` looks for
    login_files = { "~/.qwen/oauth_creds.json" = "oauth_creds.json" }   # copied into the agent's home

    [clis.qwen-plain.mcp]                            # the settings file aiswarm writes in the agent's home
    file = "settings.json"                           # .json or .toml (or say format = "json" / "toml")
    key = "mcpServers.aiswarm"                       # where the broker's entry goes (dotted; a TOML table)
    entry = { httpUrl = "{broker_url}", headers = { Authorization = "Bearer {token}" }, timeout = "{tool_timeout_ms}" }
    settings = { privacy = { usageStatisticsEnabled = false } }   # anything else the file must say

    [clis.qwen-plain.usage]                          # a JSON object in the output (whole, in an array, or a line)
    where = { type = "result" }                      # only objects with these fields
    input_tokens = "usage.input_tokens"              # dotted paths inside it
    output_tokens = "usage.output_tokens"
    sum = false                                      # true: add up every matching object (one per request)

    [clis.qwen-plain.answer]                         # the model's final answer (the task's result in per-task mode)
    where = { type = "result" }                      # only objects with these fields
    text = "result"                                  # dotted path inside the last matching object

    [clis.qwen-plain.errors]
    exit_codes = { 53 = "turn_limit" }               # codes with a fixed meaning
    message = "error.message"                        # the error text in the output, checked for auth / 429
    rate_limit_lines = ['Retrying in \\d+s']          # stderr lines that mean "rate limited" while it runs

Placeholders, in the command, ``env`` and the MCP file (its keys too): ``{prompt}``, ``{home}`` (the agent's private
directory), ``{agent}``, ``{model}``, ``{broker_url}``, ``{token}`` (the agent's broker token),
``{tool_timeout_ms}``, ``{tool_timeout_seconds}``, ``{endpoint_url}`` (OpenAI-style ``.../v1``),
``{endpoint_host}`` (without ``/v1``), ``{endpoint_key}``, ``{settings_file}``. A value that is exactly one
number placeholder becomes a number; an argument or variable whose placeholder has no value (no model, no
endpoint) is left out. ``{{`` and ``}}`` are literal braces.

:func:`generic_adapters` turns the parsed ``[clis]`` table into adapter classes, which
``launcher.adapters.register_adapter`` makes known by name like the built-in ones.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from typing_extensions import override

from aiswarm_server.files import write_private_json
from launcher.adapters.base import (
    AgentHome,
    AgentSpec,
    CarriedCredential,
    CliAdapter,
    OutcomeKind,
    TokenUsage,
    chosen_model,
    copy_user_file,
    json_lines,
    last_json_value,
)
from launcher.adapters.install import CliPin
from launcher.adapters.settings_files import SettingsFormatError, set_path, write_private_toml

CLIS_TABLE = "clis"
"""The config file's table of CLIs described without Python."""

_NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,40}$"
_PLACEHOLDER_NAMES = frozenset(
    {
        "prompt",
        "home",
        "agent",
        "model",
        "broker_url",
        "token",
        "tool_timeout_ms",
        "tool_timeout_seconds",
        "endpoint_url",
        "endpoint_host",
        "endpoint_key",
        "settings_file",
    }
)


class GenericCliError(ValueError):
    """A ``[clis.<name>]`` table cannot be used; the message is one line saying what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class McpFileSpec(_Strict):
    """The settings file aiswarm writes in the agent's home, holding the broker's MCP entry."""

    file: str
    """Path inside the agent's home (``settings.json``, ``.gemini/settings.json``, ``config.toml``)."""
    format: Literal["json", "toml"] | None = None
    """File format; by default from the file's extension."""
    key: str = "mcpServers.aiswarm"
    """Dotted key path of the entry (in TOML: the table ``[mcp_servers.aiswarm]`` is ``mcp_servers.aiswarm``)."""
    entry: dict[str, Any] = Field(
        default_factory=lambda: {"url": "{broker_url}", "headers": {"Authorization": "Bearer {token}"}}
    )
    """The entry itself, with placeholders."""
    settings: dict[str, Any] = Field(default_factory=dict)
    """Everything else the file must say (telemetry off, trust, limits), with placeholders."""

    @property
    def file_format(self) -> Literal["json", "toml"]:
        """The format the file is written in."""
        return self.format or ("toml" if self.file.endswith(".toml") else "json")

    @field_validator("file")
    @classmethod
    def _inside_the_home(cls, value: str) -> str:
        path = Path(value)
        if path.is_absolute() or ".." in path.parts or not value.strip():
            raise ValueError("must be a relative path inside the agent's home, e.g. settings.json")
        return value


class UsageSpec(_Strict):
    """Where the token counts are in the CLI's JSON output."""

    input_tokens: str
    output_tokens: str
    cached_tokens: str | None = None
    total_tokens: str | None = None
    """Dotted paths inside the matching output object; the total defaults to input + output."""
    where: dict[str, str | int | bool] = Field(default_factory=dict)
    """Only output objects whose top-level fields have these values (``{type = "result"}``)."""
    sum: bool = False
    """Add up every matching object (a CLI that reports each model request); else the last one counts."""


class AnswerSpec(_Strict):
    """Where the model's final answer is in the CLI's JSON output."""

    text: str
    """Dotted path of the answer's text inside the matching output objects."""
    where: dict[str, str | int | bool] = Field(default_factory=dict)
    """Only output objects whose top-level fields have these values (``{type = "result"}``)."""
    join: bool = False
    """Join the texts of every matching object, one per line (a CLI that prints the answer in parts); else the
    last one is the answer."""


class ErrorsSpec(_Strict):
    """How the CLI says a run failed, beyond a non-zero exit code."""

    exit_codes: dict[int, OutcomeKind] = Field(default_factory=dict)
    """Exit codes with a fixed meaning: ``auth_failure``, ``rate_limited``, ``turn_limit``, ``crashed`` ..."""
    message: str | None = None
    """Dotted path of an error message in the output objects (checked for auth and rate-limit wording)."""
    where: dict[str, str | int | bool] = Field(default_factory=dict)
    """Only output objects whose top-level fields have these values."""
    rate_limit_lines: list[str] = Field(default_factory=list)
    """Regular expressions: a stderr line matching one means the CLI is being rate limited right now."""

    @field_validator("rate_limit_lines")
    @classmethod
    def _valid_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{pattern!r} is not a regular expression: {error}") from None
        return value


class GenericCliSpec(_Strict):
    """One ``[clis.<name>]`` table: everything aiswarm needs to run a CLI it has no adapter for."""

    command: list[str] = Field(min_length=1)
    """The headless command line; ``{prompt}`` where the prompt goes (unless ``prompt = "stdin"``)."""
    prompt: Literal["argument", "stdin"] | None = None
    """How the prompt is given; by default ``argument`` when the command holds ``{prompt}``, else ``stdin``."""
    model_args: list[str] = Field(default_factory=list)
    """Appended to the command when the agent has a model (``["--model", "{model}"]``)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Variables for every run, with placeholders (point the CLI at ``{home}``, the endpoint, ...)."""
    mcp: McpFileSpec
    usage: UsageSpec | None = None
    answer: AnswerSpec | None = None
    """Where the final answer is; without it the CLI's whole standard output (stripped) is the answer."""
    errors: ErrorsSpec = Field(default_factory=ErrorsSpec)
    credential_env: list[str] = Field(default_factory=list)
    """Environment variables holding an API key this CLI uses (reported by ``aiswarm doctor``)."""
    login_files: dict[str, str] = Field(default_factory=dict)
    """The user's login files (``~/...``) copied into the agent's home (path inside it); refreshed copies go back."""
    package: str | None = None
    """The npm package providing the CLI, if any (for ``aiswarm doctor``)."""
    version: str | None = None
    """The version the description was written for."""

    @property
    def prompt_on_stdin(self) -> bool:
        """The prompt goes to the CLI's stdin rather than its command line."""
        if self.prompt is not None:
            return self.prompt == "stdin"
        return not any("{prompt}" in part for part in self.command)

    @model_validator(mode="after")
    def _known_placeholders(self) -> GenericCliSpec:
        texts = [*self.command, *self.model_args, *self.env.values(), *_strings(self.mcp.entry)]
        for text in [*texts, *_strings(self.mcp.settings)]:
            for name in _placeholders(text):
                if name not in _PLACEHOLDER_NAMES:
                    raise ValueError(
                        f"unknown placeholder {{{name}}} in {text!r}; known: {', '.join(sorted(_PLACEHOLDER_NAMES))}"
                    )
        if self.prompt == "argument" and not any("{prompt}" in part for part in self.command):
            raise ValueError('prompt = "argument" but the command has no {prompt}')
        return self


def parse_cli_table(name: str, table: Mapping[str, Any]) -> GenericCliSpec:
    """The description in ``[clis.<name>]``; GenericCliError (one line naming the field) when it is wrong."""
    if not re.match(_NAME, name):
        raise GenericCliError(
            f"[{CLIS_TABLE}.{name}]: a CLI name is a letter then letters, digits, '-', '_' or '.'"
        )
    try:
        return GenericCliSpec.model_validate(dict(table))
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "table"
        raise GenericCliError(f"[{CLIS_TABLE}.{name}] {where}: {first['msg']}") from None


def generic_adapters(clis: Mapping[str, Any]) -> list[type[GenericAdapter]]:
    """One adapter class per entry of the parsed ``[clis]`` table (GenericCliError on the first bad one)."""
    adapters: list[type[GenericAdapter]] = []
    for name, table in clis.items():
        if not isinstance(table, Mapping):
            raise GenericCliError(f"[{CLIS_TABLE}.{name}] must be a table: see launcher/adapters/generic.py")
        adapters.append(generic_adapter(name, parse_cli_table(name, table)))
    return adapters


def configured_adapters(config_file: Path) -> list[type[GenericAdapter]]:
    """The CLIs described in the ``[clis]`` table of ``config_file`` ([] when the file or the table is absent)."""
    try:
        document = tomllib.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except OSError as error:
        raise GenericCliError(f"cannot read {config_file}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise GenericCliError(f"{config_file} is not valid TOML: {error}") from None
    clis = document.get(CLIS_TABLE, {})
    if not isinstance(clis, Mapping):
        raise GenericCliError(f"{config_file}: {CLIS_TABLE} must be a table of [{CLIS_TABLE}.<name>] tables")
    return generic_adapters(clis)


def generic_adapter(name: str, spec: GenericCliSpec) -> type[GenericAdapter]:
    """An adapter class for the CLI ``name`` described by ``spec``."""
    return type(
        f"GenericAdapter[{name}]",
        (GenericAdapter,),
        {
            "name": name,
            "spec": spec,
            "prompt_on_stdin": spec.prompt_on_stdin,
            "exit_codes": {
                code: (kind, f"{name} exited {code} ({kind.value})")
                for code, kind in spec.errors.exit_codes.items()
            },
            "rate_limit_lines": tuple(re.compile(p, re.I) for p in spec.errors.rate_limit_lines),
        },
    )


class GenericAdapter(CliAdapter):
    """A CLI run from its ``[clis.<name>]`` description (a subclass per described CLI: see :func:`generic_adapter`)."""

    spec: ClassVar[GenericCliSpec]

    @property
    @override
    def pin(self) -> CliPin:
        """The described package and version (not one aiswarm installs or pins)."""
        return CliPin(
            package=self.spec.package or self.name,
            version=self.spec.version or "",
            binary=self.spec.command[0],
            min_node_major=None,
        )

    @override
    def find_binary(self, home: Path, *, path: str | None = None) -> Path | None:
        """The command's program: as written when it is a path, else under ``$AISWARM_HOME/clis/<name>`` or on PATH."""
        program = Path(self.spec.command[0]).expanduser()
        if len(program.parts) > 1:
            return program if program.exists() else None
        return super().find_binary(home, path=path)

    # --- hooks --------------------------------------------------------------------------

    @override
    def _settings_path(self, root: Path) -> Path:
        return root / self.spec.mcp.file

    @override
    def _write_settings(self, path: Path, settings: dict[str, Any]) -> None:
        if self.spec.mcp.file_format == "toml":
            try:
                write_private_toml(path, settings)
            except SettingsFormatError as error:
                raise GenericCliError(f"[{CLIS_TABLE}.{self.name}.mcp] {error}") from None
        else:
            write_private_json(path, settings)

    @override
    def _home_env(self, agent: AgentSpec, root: Path) -> dict[str, str]:
        return {}

    @override
    def _build_settings(
        self, agent: AgentSpec, root: Path, env: Mapping[str, str], carried: list[CarriedCredential]
    ) -> dict[str, Any]:
        user_home = agent.resolved_user_home()
        for source, target in self.spec.login_files.items():
            user_file = _user_path(source, user_home)
            if copy_user_file(user_file, root / target):
                carried.append(
                    CarriedCredential(
                        kind="login-file",
                        source=str(user_file),
                        how="copy",
                        target=root / target,
                        write_back=True,
                    )
                )
        self._carry_env_keys(agent, env, carried)
        values = _values(agent, root, self._settings_path(root))
        settings = _fill(self.spec.mcp.settings, values)
        entry = _fill(self.spec.mcp.entry, values)
        return set_path(settings, self.spec.mcp.key.split("."), entry)

    @override
    def _run_env(self, agent_home: AgentHome) -> dict[str, str]:
        values = _values(agent_home.spec, agent_home.root, agent_home.settings_path)
        env: dict[str, str] = {}
        for variable, template in self.spec.env.items():
            value = _fill_text(template, values)
            if value is not None:
                env[variable] = str(value)
        return env

    @override
    def _arguments(self, agent_home: AgentHome, prompt: str, model: str | None) -> list[str]:
        values = _values(agent_home.spec, agent_home.root, agent_home.settings_path) | {"prompt": prompt}
        values["model"] = model
        arguments = [_fill_text(part, values) for part in self.spec.command[1:]]
        if model:
            arguments += [_fill_text(part, values) for part in self.spec.model_args]
        return [str(a) for a in arguments if a is not None]

    @override
    def _credential_files(self, user_home: Path, env: Mapping[str, str]) -> Iterable[tuple[str, Path]]:
        return [("login-file", _user_path(source, user_home)) for source in self.spec.login_files]

    @override
    def _credential_env_vars(self) -> tuple[str, ...]:
        return tuple(self.spec.credential_env)

    @override
    def _error_text(self, stdout: str, stderr: str) -> str:
        path = self.spec.errors.message
        if path is None:
            return ""
        found = [_at(obj, path) for obj in _output_objects(stdout, self.spec.errors.where)]
        return " | ".join(str(m) for m in found if isinstance(m, str | int) and str(m))

    @override
    def final_answer(self, stdout: str) -> str:
        """From the ``[clis.<name>.answer]`` path in the matching output objects; else the whole output."""
        spec = self.spec.answer
        if spec is None:
            return stdout.strip()
        texts = [_at(obj, spec.text) for obj in _output_objects(stdout, spec.where)]
        found = [t for t in texts if isinstance(t, str)]
        return "\n".join(found) if spec.join else (found[-1] if found else "")

    @override
    def parse_usage(self, stdout: str) -> TokenUsage | None:
        """From the ``[clis.<name>.usage]`` paths in the matching output objects (summed, or the last)."""
        spec = self.spec.usage
        if spec is None:
            return None
        counted = [
            obj
            for obj in _output_objects(stdout, spec.where)
            if _number(_at(obj, spec.input_tokens)) is not None
        ]
        if not counted:
            return None
        usage = TokenUsage(requests=len(counted) if spec.sum else None)
        for obj in counted if spec.sum else counted[-1:]:
            inp = _number(_at(obj, spec.input_tokens)) or 0
            out = _number(_at(obj, spec.output_tokens)) or 0
            usage.input_tokens += inp
            usage.output_tokens += out
            usage.cached_tokens += (_number(_at(obj, spec.cached_tokens)) or 0) if spec.cached_tokens else 0
            total = _number(_at(obj, spec.total_tokens)) if spec.total_tokens else None
            usage.total_tokens += total if total is not None else inp + out
        return usage


# --- placeholders and output paths ---------------------------------------------------------------


def _values(agent: AgentSpec, root: Path, settings_file: Path) -> dict[str, Any]:
    endpoint = agent.endpoint
    return {
        "home": str(root),
        "agent": agent.name,
        "model": chosen_model(agent),
        "broker_url": agent.broker_url,
        "token": agent.token,
        "tool_timeout_ms": agent.tool_timeout_ms,
        "tool_timeout_seconds": agent.tool_timeout_ms // 1000,
        "endpoint_url": endpoint.base_url if endpoint and endpoint.base_url else None,
        "endpoint_host": endpoint.base_url.rstrip("/").removesuffix("/v1")
        if endpoint and endpoint.base_url
        else None,
        "endpoint_key": endpoint.api_key if endpoint else None,
        "settings_file": str(settings_file),
    }


def _placeholders(text: str) -> Iterator[str]:
    for _, name, _, _ in string.Formatter().parse(text):
        if name is not None:
            yield name


def _fill_text(template: str, values: Mapping[str, Any]) -> Any:
    """``template`` with its placeholders filled; None when one has no value; a lone number placeholder stays a number."""
    names = list(_placeholders(template))
    if any(values.get(n) is None for n in names):
        return None
    if len(names) == 1 and template == f"{{{names[0]}}}":
        return values[names[0]]
    return template.format_map(values)


def _fill(node: Any, values: Mapping[str, Any]) -> Any:
    """A copy of a settings document with every string's placeholders filled (left out when without value)."""
    if isinstance(node, str):
        return _fill_text(node, values)
    if isinstance(node, Mapping):
        filled = {_fill_text(str(k), values): _fill(v, values) for k, v in node.items()}
        return {str(k): v for k, v in filled.items() if k is not None and v is not None}
    if isinstance(node, list):
        return [v for v in (_fill(item, values) for item in node) if v is not None]
    return node


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _user_path(text: str, user_home: Path) -> Path:
    return user_home / text[2:] if text.startswith("~/") else Path(text)


def _output_objects(stdout: str, where: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSON objects of a CLI's output (one object, an array of them, or JSON lines) that match ``where``."""
    whole = last_json_value(stdout)
    if isinstance(whole, dict):
        objects: list[Any] = [whole]
    elif isinstance(whole, list):
        objects = whole
    else:
        objects = []
    if len(objects) <= 1:
        lines = list(json_lines(stdout))
        objects = lines if len(lines) > len(objects) else objects
    return [o for o in objects if isinstance(o, dict) and all(o.get(k) == v for k, v in where.items())]


def _at(document: Mapping[str, Any], dotted: str) -> Any:
    node: Any = document
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _number(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
