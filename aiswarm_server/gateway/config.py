"""Upstream MCP servers, declared in ``$AISWARM_HOME/config.toml`` under ``[mcp_servers.<name>]``::

    [mcp_servers.github]                     # a stdio server: the broker starts it once
    command = ["npx", "-y", "@modelcontextprotocol/server-github"]
    env = { GITHUB_PERSONAL_ACCESS_TOKEN = "${GITHUB_TOKEN}" }   # ${VAR}: from the broker's environment
    deny = ["delete_*"]                      # upstream tool names (glob); `allow` keeps only the matches
    roles = ["worker", "primary"]            # who sees its tools (default: both)

    [mcp_servers.docs]                       # a streamable-HTTP server
    url = "https://docs.example.com/mcp"
    headers = { Authorization = "Bearer ${DOCS_TOKEN}" }
    timeout_seconds = 60                     # per call (default 120)

Credentials stay with the broker: ``${VAR}`` is read from the broker's environment when it connects, and nothing
of an upstream's configuration is written into an agent's config home.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aiswarm_server.errors import BrokerError

CONFIG_FILE = "config.toml"
SEPARATOR = "__"
_NAME = r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class GatewayConfigError(BrokerError):
    """The ``[mcp_servers]`` tables cannot be used; the message is one line naming the server and field."""


class UpstreamSpec(BaseModel):
    """One upstream MCP server: a command to start (stdio) or a URL (streamable HTTP)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="", pattern=rf"{_NAME}|^$")
    command: list[str] | None = Field(default=None, min_length=1)
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    url: str | None = Field(default=None, pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict)
    roles: list[Literal["worker", "primary"]] = Field(default_factory=lambda: ["worker", "primary"])
    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)
    timeout_seconds: float = Field(default=120.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _one_transport(self) -> UpstreamSpec:
        if (self.command is None) == (self.url is None):
            raise ValueError(
                'give either command = ["program", "arg", ...] (stdio) or url = "https://..." (HTTP)'
            )
        if self.url is not None and (self.env or self.cwd):
            raise ValueError("env and cwd are for command servers; an HTTP server takes headers")
        if self.command is not None and self.headers:
            raise ValueError("headers are for url servers; a command server takes env")
        return self

    def offers(self, tool: str) -> bool:
        """Whether the configuration lets this upstream tool through (before roles and personas)."""
        if self.allow and not any(fnmatch.fnmatchcase(tool, p) for p in self.allow):
            return False
        return not any(fnmatch.fnmatchcase(tool, p) for p in self.deny)

    def resolved_env(self, environ: dict[str, str] | None = None) -> dict[str, str]:
        """``env`` with ``${VAR}`` taken from the broker's environment, on top of it (a stdio server needs PATH)."""
        source = dict(os.environ if environ is None else environ)
        return {**source, **{k: expand(v, source, self.name, k) for k, v in self.env.items()}}

    def resolved_headers(self, environ: dict[str, str] | None = None) -> dict[str, str]:
        """``headers`` with ``${VAR}`` taken from the broker's environment."""
        source = dict(os.environ if environ is None else environ)
        return {k: expand(v, source, self.name, k) for k, v in self.headers.items()}


def expand(value: str, environ: dict[str, str], server: str, key: str) -> str:
    """Replace ``${VAR}`` with the variable's value; a missing variable is a clear refusal."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise GatewayConfigError(
                f"mcp_servers.{server}: {key} needs ${{{name}}}, which is not set in the broker's environment; "
                "export it before `aiswarm serve`"
            )
        return environ[name]

    return _VARIABLE.sub(one, value)


def load_upstreams(home: Path) -> dict[str, UpstreamSpec]:
    """The ``[mcp_servers.*]`` tables of the home's ``config.toml`` (none when the file or the table is absent)."""
    path = home / CONFIG_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise GatewayConfigError(f"{path}: {error}") from None
    tables = raw.get("mcp_servers", {})
    if not isinstance(tables, dict):
        raise GatewayConfigError(f"{path}: mcp_servers must be tables: [mcp_servers.NAME]")
    specs: dict[str, UpstreamSpec] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise GatewayConfigError(f"{path}: mcp_servers.{name} must be a table")
        try:
            specs[name] = UpstreamSpec.model_validate({**table, "name": name})
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            if first["type"] == "extra_forbidden":
                message = "is not a field of an MCP server (command, cwd, env, url, headers, roles, allow, deny, timeout_seconds)"
            if where == "name":
                message = (
                    "server names are lowercase letters, digits and single dashes (e.g. github, docs-search)"
                )
            raise GatewayConfigError(
                f"{path}: mcp_servers.{name}{'.' + where if where and where != 'name' else ''}: {message}"
            ) from None
    return specs


def tool_allowed(prefixed: str, allow: list[str], deny: list[str]) -> bool:
    """A persona's rule for a gateway tool (``<server>__<tool>``): deny wins, an allow list keeps only matches."""
    if any(fnmatch.fnmatchcase(prefixed, p) for p in deny):
        return False
    return not allow or any(fnmatch.fnmatchcase(prefixed, p) for p in allow)
