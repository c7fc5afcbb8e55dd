"""What installing aiswarm into an MCP client means, whatever the client.

An :class:`McpClient` knows three things about one client (Claude Code, Codex, gemini-cli ...): where its config
file is at user and project scope, what its MCP server entry for aiswarm looks like, and how to put that entry
into (or take it out of) the file's text. The shared work is here: reading the file, refusing one that does not
parse, planning the change as a :class:`ConfigChange` (a unified diff for ``--dry-run``), a timestamped backup
under the aiswarm home (never next to the file: a project's checkout would show it, token and all), an atomic
write (0600 when the file carries the token), and deleting a file that only held aiswarm's entry.
"""

from __future__ import annotations

import difflib
import hashlib
import stat
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal

from typing_extensions import override

from aiswarm_server.files import write_private
from aiswarm_server.jsonc import JsoncDocument, JsoncError
from launcher.adapters.base import DEFAULT_TOOL_TIMEOUT_MS, MCP_SERVER_NAME
from launcher.errors import LaunchError

SERVER_NAME = MCP_SERVER_NAME
"""The entry's name in every client's config."""

TOOL_TIMEOUT_MS = DEFAULT_TOOL_TIMEOUT_MS
"""Per-tool-call timeout written wherever the client has one: ``wait_for_tasks`` may hold a call for ~290 s."""

STDIO_STARTUP_SECONDS = 30
"""How long a client should give ``aiswarm mcp`` to come up: it may start the broker first (up to 20 s)."""

BACKUPS_DIR = "backups"
"""Where, under the aiswarm home, the files ``install-client`` changed are kept as they were."""

DESCRIPTION = "aiswarm broker: hand tasks to worker agents and wait for their results"


class ClientConfigError(LaunchError):
    """The client's config cannot be changed as asked; the message says why and what to do."""


class Scope(StrEnum):
    """Which of the client's config files: the user's own, or one in a project directory."""

    USER = "user"
    PROJECT = "project"


@dataclass(frozen=True)
class AiswarmServer:
    """How a client reaches the broker: streamable HTTP with the primary token, or ``aiswarm mcp`` over stdio."""

    transport: Literal["http", "stdio"]
    url: str | None = None
    token: str | None = field(default=None, repr=False)
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    tool_timeout_ms: int = TOOL_TIMEOUT_MS

    @property
    def authorization(self) -> dict[str, str]:
        """The token as an ``Authorization`` header."""
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def secret(self) -> str | None:
        """The token when the entry will carry it (in a header, or in the bridge's environment)."""
        return self.token if self.transport == "http" else self.env.get("AISWARM_TOKEN")


@dataclass(frozen=True)
class ConfigChange:
    """One planned change to one config file. ``after is None`` means the file is to be deleted."""

    path: Path
    before: str | None
    after: str | None
    secret: str | None = field(default=None, repr=False)

    @property
    def changed(self) -> bool:
        """Whether the change changes anything."""
        return self.before != self.after

    def diff(self) -> str:
        """A unified diff of the change, with the token shown as ``<token>``."""

        def lines(text: str | None) -> list[str]:
            shown = text or ""
            if self.secret:
                shown = shown.replace(self.secret, "<token>")
            return shown.splitlines(keepends=True)

        old, new = lines(self.before), lines(self.after)
        if old and not old[-1].endswith("\n"):
            old[-1] += "\n\\ No newline at end of file\n"
        if new and not new[-1].endswith("\n"):
            new[-1] += "\n\\ No newline at end of file\n"
        return "".join(
            difflib.unified_diff(
                old,
                new,
                fromfile=str(self.path) if self.before is not None else "/dev/null",
                tofile=str(self.path) if self.after is not None else "/dev/null",
            )
        )

    def apply(self, backups: Path) -> Path | None:
        """Back up the current file (if any) under ``backups``, then write or delete it atomically.

        Returns the backup's path (see :func:`backup_dir`).
        """
        if not self.changed:
            return None
        backup = self._backup(backups) if self.before is not None else None
        if self.after is None:
            self.path.unlink(missing_ok=True)
            return backup
        carries_secret = bool(self.secret) and self.secret in self.after
        keeps_mode = self.path.exists() and not carries_secret
        mode = stat.S_IMODE(self.path.stat().st_mode) if keeps_mode else 0o600
        write_private(self.path, self.after, mode=mode)
        return backup

    def _backup(self, backups: Path) -> Path:
        directory = backup_dir(backups, self.path)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.chmod(0o700)
        write_private(directory / "source", f"{self.path}\n")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = _visible(self.path.name)
        backup = directory / f"{name}.{stamp}"
        counter = 1
        while backup.exists():
            backup = directory / f"{name}.{stamp}-{counter}"
            counter += 1
        # The old file may hold tokens (ours or the user's): the backup is readable by its owner only.
        write_private(backup, self.path.read_bytes())
        return backup


def backup_dir(backups: Path, path: Path) -> Path:
    """The directory under ``backups`` (``$AISWARM_HOME/backups``) holding the backups of the config file ``path``.

    One directory per file, named after the file (without a leading dot, so ``ls`` shows it) and a digest of its
    absolute path (``mcp.json-3f2a9c1b0d``), with a ``source`` file naming the path; each backup is the file's name
    and a timestamp.
    """
    digest = hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:10]
    return backups / f"{_visible(path.name)}-{digest}"


def _visible(name: str) -> str:
    return name.lstrip(".") or name


def read_config_text(path: Path) -> str | None:
    """The file's text exactly as stored (line endings kept), or ``None`` if there is no file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ClientConfigError(f"{path} is a directory, not a config file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientConfigError(f"{path} is not UTF-8 text; fix or move it, nothing was changed") from None


class McpClient(ABC):
    """One MCP client's config: where it lives, what aiswarm's entry looks like, how to edit it."""

    name: ClassVar[str]
    """Command-line name: ``claude``, ``codex`` ..."""
    title: ClassVar[str]
    """Human name: ``Claude Code`` ..."""
    speaks_http: ClassVar[bool] = True
    """False for a client that only starts stdio servers: it always gets ``aiswarm mcp``."""

    def config_path(self, scope: Scope, project_dir: Path, environ: Mapping[str, str]) -> Path:
        """The config file to edit. User scope honours the client's own environment overrides."""
        if scope is Scope.PROJECT:
            return self.project_config_path(project_dir)
        home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
        return self.user_config_path(home, environ)

    def plan_install(self, path: Path, server: AiswarmServer) -> ConfigChange:
        """The change that puts aiswarm's entry into ``path`` (no change if it is already there, identical)."""
        before = read_config_text(path.resolve())
        after = self.with_entry(path, before, self.server_entry(server))
        return ConfigChange(path.resolve(), before, after, server.secret)

    def plan_removal(self, path: Path) -> ConfigChange:
        """The change that takes aiswarm's entry out of ``path``; the file goes if nothing else was in it."""
        before = read_config_text(path.resolve())
        after = self.without_entry(path, before) if before is not None else None
        return ConfigChange(path.resolve(), before, after)

    def after_install_hint(self, scope: Scope) -> str | None:
        """One line telling the user what else to do for the client to pick the entry up."""
        return f"restart {self.title} to load it"

    @abstractmethod
    def user_config_path(self, home: Path, environ: Mapping[str, str]) -> Path:
        """The user's own config file under ``home``, moved where the client's variables in ``environ`` say."""

    @abstractmethod
    def project_config_path(self, directory: Path) -> Path:
        """The config file of the project in ``directory``."""

    @abstractmethod
    def server_entry(self, server: AiswarmServer) -> dict[str, Any]:
        """aiswarm's entry in this client's format."""

    @abstractmethod
    def with_entry(self, path: Path, text: str | None, entry: dict[str, Any]) -> str:
        """``text`` (``None``: no file yet) with aiswarm's entry set to ``entry``."""

    @abstractmethod
    def without_entry(self, path: Path, text: str) -> str | None:
        """``text`` without aiswarm's entry; ``None`` when what is left is an empty config."""


class JsonClient(McpClient):
    """A client whose config is a JSON (or JSONC) object with the servers under ``servers_key``."""

    servers_key: ClassVar[tuple[str, ...]] = ("mcpServers",)
    scaffold: ClassVar[dict[str, Any]] = {}
    """Top-level members a new config file starts with (e.g. opencode's ``$schema``)."""

    def _document(self, path: Path, text: str) -> JsoncDocument:
        try:
            return JsoncDocument(text)
        except JsoncError as error:
            raise ClientConfigError(
                f"{path}: not valid JSON, {error}; fix it first, nothing was changed"
            ) from None

    @override
    def with_entry(self, path: Path, text: str | None, entry: dict[str, Any]) -> str:
        if text is None or not text.strip():
            text = JsoncDocument("").text if not self.scaffold else _scaffold_text(self.scaffold)
        document = self._document(path, text)
        if document.get((*self.servers_key, SERVER_NAME)) == entry:
            return document.text
        try:
            document.set((*self.servers_key, SERVER_NAME), entry)
        except JsoncError as error:
            raise ClientConfigError(f"{path}: cannot add aiswarm's entry: {error}") from None
        return document.text

    @override
    def without_entry(self, path: Path, text: str) -> str | None:
        if not text.strip():
            return text
        document = self._document(path, text)
        try:
            removed = document.remove((*self.servers_key, SERVER_NAME))
        except JsoncError as error:
            raise ClientConfigError(f"{path}: cannot remove aiswarm's entry: {error}") from None
        if removed and not document.has_comments and document.value in ({}, self.scaffold):
            return None
        return document.text


def _scaffold_text(scaffold: dict[str, Any]) -> str:
    document = JsoncDocument("")
    for key, value in scaffold.items():
        document.set((key,), value)
    return document.text
