"""The adapter interface: everything the launcher knows about one agent CLI.

A ``CliAdapter`` knows how to find the CLI's binary, how to give one agent a private
config home (MCP entry for the broker, telemetry off, bounded retries, limits, the
user's own login carried over), the headless command line and environment, and how to
read the CLI's exit status, stderr and JSON output. Adding a CLI is adding one subclass.

The public methods do the shared work (directories, atomic 0600 writes, credential links and
copies, exit-code bookkeeping) and call a small set of per-CLI hooks; the helpers below them build
the parts every CLI's settings share (the broker's MCP entry, the carried-over login).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from aiswarm_server.auth import AGENT_NAME
from aiswarm_server.files import read_json_object, write_private, write_private_json
from launcher.adapters.install import PINNED_CLIS, CliPin, cli_prefix, runtime_env
from launcher.providers import ModelEndpoint, ProviderKind

DEFAULT_TOOL_TIMEOUT_MS = 900_000
"""Per-tool-call timeout written into every CLI's MCP entry: above the broker's longest wait (240 s default)."""

MCP_SERVER_NAME = "aiswarm"
"""The MCP server name in every CLI's settings (gemini advises against ``_`` in server names)."""

AGENT_HEADER = "X-Aiswarm-Agent"
"""Header on model requests naming the agent, so a (scripted) model server can tell agents apart."""
CLI_HEADER = "X-Aiswarm-Cli"
"""Header on the launcher's own probe requests naming the CLI the probe is for."""


class AgentSpec(BaseModel):
    """What the supervisor knows about one agent before it starts the CLI."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=AGENT_NAME.pattern)
    cli: str
    token: str = Field(repr=False)
    """The agent's broker token, sent as ``Authorization: Bearer <token>``."""
    broker_url: str
    """The broker's streamable HTTP MCP endpoint, e.g. ``http://127.0.0.1:8765/mcp``."""
    aiswarm_home: Path
    model: str | None = None
    endpoint: ModelEndpoint | None = None
    persona: str | None = None
    max_turns: int = Field(default=60, ge=1)
    max_wall_seconds: int = Field(default=1800, ge=10)
    tool_timeout_ms: int = Field(default=DEFAULT_TOOL_TIMEOUT_MS, ge=1000)
    model_max_attempts: int = Field(default=3, ge=1)
    """Model request attempts before the CLI gives up, so a rate-limited agent fails in seconds, not minutes."""
    user_home: Path | None = None
    """Where the user's own CLI logins live; None means the real home directory."""

    def resolved_user_home(self) -> Path:
        """The user's home directory to carry credentials over from."""
        return self.user_home if self.user_home is not None else Path.home()


class CarriedCredential(BaseModel):
    """One piece of the user's login made visible to an agent's private home."""

    kind: str
    """What it is: ``oauth``, ``google-accounts``, ``api-key-env``, ``settings``, ``dotenv``, ``auth-file`` ..."""
    source: str
    """The user's file, settings key or environment variable it came from."""
    how: str
    """``symlink``, ``copy``, ``settings`` (values merged into the agent's settings) or ``env`` (inherited)."""
    target: Path | None = None
    write_back: bool = False
    """A copy the CLI may refresh (a rotating OAuth token): after each run a newer, valid copy goes back to
    ``source`` (see :func:`return_user_file`), so the user's login never goes stale."""


class AgentHome(BaseModel):
    """An agent's private config home, as prepared by ``CliAdapter.prepare_agent_home``."""

    spec: AgentSpec
    root: Path
    """``$AISWARM_HOME/agents/<agent-name>``."""
    settings_path: Path
    """The CLI settings file aiswarm wrote (holds the agent token; mode 0600)."""
    env: dict[str, str]
    """Variables that point the CLI at this home (``QWEN_HOME``, ``GEMINI_CLI_HOME``, ``OPENCODE_CONFIG`` ...)."""
    binary: Path | None
    carried: list[CarriedCredential] = Field(default_factory=list)


class OutcomeKind(StrEnum):
    """How a CLI run ended, as far as the supervisor needs to know."""

    DONE = "done"
    AUTH_FAILURE = "auth_failure"
    """The key or login was refused, or there is none."""
    QUOTA_EXHAUSTED = "quota_exhausted"
    """The provider's request budget (per day, credits) is used up."""
    RATE_LIMITED = "rate_limited"
    BINARY_MISSING = "binary_missing"
    CONFIG_ERROR = "config_error"
    """The CLI refused how it was set up (its settings, the folder, its input)."""
    TURN_LIMIT = "turn_limit"
    CRASHED = "crashed"
    TIMED_OUT = "timed_out"
    NO_REPORT = "no_report"
    """The CLI exited without reporting the task it held."""

    @property
    def not_the_tasks_fault(self) -> bool:
        """The run could not have succeeded on any task: release without an attempt and open the circuit."""
        return self in (OutcomeKind.AUTH_FAILURE, OutcomeKind.BINARY_MISSING, OutcomeKind.CONFIG_ERROR)

    @property
    def out_of_requests(self) -> bool:
        """The provider refused for lack of budget: release without an attempt and cool down."""
        return self in (OutcomeKind.RATE_LIMITED, OutcomeKind.QUOTA_EXHAUSTED)


class RunOutcome(BaseModel):
    """The classified end of one CLI run."""

    kind: OutcomeKind
    reason: str
    """One line a human can read in the agent's log."""
    returncode: int | None


class TokenUsage(BaseModel):
    """Tokens one CLI run used, from the CLI's JSON output."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0
    requests: int | None = None


class CredentialFinding(BaseModel):
    """A login the user already has for a CLI (reported by ``aiswarm doctor``)."""

    kind: str
    detail: str


_QUOTA = re.compile(
    r"insufficient_quota|exceeded your current quota|quota exceeded|per[- ]day|daily (?:quota|limit)|"
    r"out of credits|insufficient credits",
    re.I,
)
_RATE_LIMIT = re.compile(r"\b429\b|RESOURCE_EXHAUSTED|quota|rate[ _-]?limit|too many requests", re.I)
_AUTH = re.compile(
    r"\b401\b|\b403\b|UNAUTHENTICATED|PERMISSION_DENIED|invalid[_ ]api[_ ]key|api key not valid|"
    r"incorrect api key|unauthori[sz]ed|authentication (?:failed|required|error)|please (?:log ?in|set an auth)|"
    r"no auth type|oauth token (?:has )?expired|credentials? (?:expired|not found)|ProviderAuthError",
    re.I,
)


class CliAdapter(ABC):
    """Everything the launcher knows about one agent CLI. Subclasses set ``name`` and fill in the hooks."""

    name: ClassVar[str]
    exit_codes: ClassVar[Mapping[int, tuple[OutcomeKind, str]]] = {}
    """Exit codes with a fixed meaning (measured on the pinned versions)."""
    rate_limit_lines: ClassVar[tuple[re.Pattern[str], ...]] = ()
    """CLI-specific stderr lines that mean the model is rate limiting right now."""
    prompt_on_stdin: ClassVar[bool] = False
    """The headless prompt goes to the CLI's stdin instead of its argv (the supervisor writes it, then closes)."""
    starts_warm: ClassVar[bool] = False
    """The CLI reads a prompt on stdin only after its start-up, so it can be started ahead of its task
    (:meth:`warm_command`, :mod:`launcher.warm_pool`)."""

    @property
    def pin(self) -> CliPin:
        """The pinned npm package for this CLI (from ``launcher.adapters.install.PINNED_CLIS``)."""
        return PINNED_CLIS[self.name]

    @property
    def package(self) -> str:
        """npm package name."""
        return self.pin.package

    @property
    def version(self) -> str:
        """Pinned version."""
        return self.pin.version

    @property
    def binary_name(self) -> str:
        """Executable name in ``node_modules/.bin`` and on PATH."""
        return self.pin.binary

    @property
    def min_node_major(self) -> int | None:
        """Lowest Node major the CLI runs on (None: ships its own runtime)."""
        return self.pin.min_node_major

    # --- binary -------------------------------------------------------------------------

    def find_binary(self, home: Path, *, path: str | None = None) -> Path | None:
        """The aiswarm-installed binary under ``$AISWARM_HOME/clis/<name>``, else the one on PATH, else None."""
        private = cli_prefix(home, self.name) / "node_modules" / ".bin" / self.binary_name
        if private.exists():
            return private
        found = shutil.which(self.binary_name, path=path if path is not None else os.environ.get("PATH"))
        return Path(found) if found else None

    # --- private home -------------------------------------------------------------------

    def agent_root(self, spec: AgentSpec) -> Path:
        """``$AISWARM_HOME/agents/<agent-name>``."""
        return spec.aiswarm_home / "agents" / spec.name

    def prepare_agent_home(self, agent: AgentSpec, *, env: Mapping[str, str] | None = None) -> AgentHome:
        """Create the agent's private config home and write the CLI's settings there.

        Idempotent: call it before every run. The user's own files are only read (linked to or
        copied), never modified here; only :meth:`return_logins` writes a refreshed login back.
        ``env`` is the environment the user's credentials are looked up in (default: this process's).
        """
        if agent.cli != self.name:
            raise ValueError(f"agent {agent.name} is for CLI {agent.cli!r}, not {self.name!r}")
        env = os.environ if env is None else env
        root = self.agent_root(agent)
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)
        carried: list[CarriedCredential] = []
        settings = self._build_settings(agent, root, env, carried)
        settings_path = self._settings_path(root)
        self._write_settings(settings_path, settings)
        return AgentHome(
            spec=agent,
            root=root,
            settings_path=settings_path,
            env=self._home_env(agent, root),
            binary=self.find_binary(agent.aiswarm_home),
            carried=carried,
        )

    def return_logins(self, agent_home: AgentHome) -> list[Path]:
        """Carry each ``write_back`` credential the CLI refreshed back to the user's file.

        Called while the CLI runs (a session can outlive a token) and after it exits; cheap when
        nothing changed. Returns the user's files written. Only a copy newer than the user's file and holding a JSON
        object goes back, atomically, under a lock shared by every agent of this aiswarm home.
        """
        lock = agent_home.spec.aiswarm_home / "agents" / ".credentials.lock"
        return [
            Path(c.source)
            for c in agent_home.carried
            if c.write_back and c.target is not None and return_user_file(c.target, Path(c.source), lock)
        ]

    # --- headless run -------------------------------------------------------------------

    def command(self, agent_home: AgentHome, prompt: str, *, model: str | None = None) -> list[str]:
        """The argv for one headless run of ``prompt`` (binary resolved at prepare time, else its bare name).

        With ``prompt_on_stdin`` the prompt is not in the argv: the caller writes it to the CLI's stdin.
        """
        binary = str(agent_home.binary) if agent_home.binary else self.binary_name
        return [binary, *self._arguments(agent_home, prompt, model or chosen_model(agent_home.spec))]

    def warm_command(self, agent_home: AgentHome, *, model: str | None = None) -> list[str] | None:
        """The argv of a run whose prompt is read from stdin only after the CLI's start-up, or None when the CLI
        reads its input first (then nothing is gained by starting it early): see :mod:`launcher.warm_pool`."""
        if not self.starts_warm:
            return None
        arguments = self._warm_arguments(agent_home, model or chosen_model(agent_home.spec))
        return [str(agent_home.binary) if agent_home.binary else self.binary_name, *arguments]

    def env(self, agent_home: AgentHome, *, base_env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The full environment for a headless run: ``base_env`` plus Node on PATH, redirection, endpoint, privacy."""
        env = runtime_env(agent_home.spec.aiswarm_home, base_env)
        home = env.get("HOME")
        if not home or not Path(home).is_dir():
            # qwen crashes when $HOME does not exist; the agent's own directory always does.
            env["HOME"] = str(agent_home.root)
        env.update(agent_home.env)
        env.update(self._run_env(agent_home))
        return env

    # --- reading the result -------------------------------------------------------------

    def classify_exit(self, returncode: int | None, stdout: str, stderr: str) -> RunOutcome:
        """Classify a finished run. ``returncode`` None means the supervisor killed it at its deadline."""
        if returncode is None:
            return RunOutcome(
                kind=OutcomeKind.TIMED_OUT,
                reason="killed by the launcher at the task deadline",
                returncode=None,
            )
        if returncode < 0:
            return RunOutcome(
                kind=OutcomeKind.CRASHED, reason=f"killed by signal {-returncode}", returncode=returncode
            )
        known = self.exit_codes.get(returncode)
        if known is not None:
            kind, reason = known
            return RunOutcome(kind=kind, reason=reason, returncode=returncode)
        error = self._error_text(stdout, stderr)
        if returncode == 0 and not error:
            return RunOutcome(kind=OutcomeKind.DONE, reason="exited 0", returncode=0)
        detail = _one_line(error or stderr or stdout) or "no output"
        if _QUOTA.search(error or stderr):
            return RunOutcome(
                kind=OutcomeKind.QUOTA_EXHAUSTED,
                reason=f"model quota used up: {detail}",
                returncode=returncode,
            )
        if _RATE_LIMIT.search(error or stderr):
            return RunOutcome(
                kind=OutcomeKind.RATE_LIMITED, reason=f"model rate limit: {detail}", returncode=returncode
            )
        if _AUTH.search(error or stderr):
            return RunOutcome(
                kind=OutcomeKind.AUTH_FAILURE, reason=f"not logged in: {detail}", returncode=returncode
            )
        if returncode == 0:
            return RunOutcome(
                kind=OutcomeKind.DONE, reason=f"exited 0 after an error: {detail}", returncode=0
            )
        return RunOutcome(
            kind=OutcomeKind.CRASHED, reason=f"exit {returncode}: {detail}", returncode=returncode
        )

    def detect_rate_limit_line(self, line: str) -> bool:
        """True when a live stderr line shows the CLI is being rate limited (so the supervisor can cool it down early)."""
        return bool(_RATE_LIMIT.search(line)) or any(p.search(line) for p in self.rate_limit_lines)

    @abstractmethod
    def parse_usage(self, stdout: str) -> TokenUsage | None:
        """Tokens used by the run, from the CLI's JSON output; None when the output has none."""

    @abstractmethod
    def final_answer(self, stdout: str) -> str:
        """The model's final answer of the run (the text it ended with), from the CLI's output; "" when there is
        none. In per-task mode it becomes the task's result."""

    def find_credentials(self, user_home: Path, env: Mapping[str, str]) -> list[CredentialFinding]:
        """The logins the user already has for this CLI (files under ``user_home``, keys in ``env``)."""
        found = [
            CredentialFinding(kind=kind, detail=str(path))
            for kind, path in self._credential_files(user_home, env)
            if path.is_file()
        ]
        found += [
            CredentialFinding(kind="api-key-env", detail=var)
            for var in self._credential_env_vars()
            if env.get(var)
        ]
        return found + self._settings_credentials(user_home, env)

    # --- hooks --------------------------------------------------------------------------

    @abstractmethod
    def _settings_path(self, root: Path) -> Path:
        """Where the CLI reads its (user-level) settings inside the agent's root."""

    @abstractmethod
    def _build_settings(
        self, agent: AgentSpec, root: Path, env: Mapping[str, str], carried: list[CarriedCredential]
    ) -> dict[str, Any]:
        """The CLI's settings document; link credentials into ``root`` and record them in ``carried``."""

    @abstractmethod
    def _home_env(self, agent: AgentSpec, root: Path) -> dict[str, str]:
        """Variables that redirect the CLI to the agent's root."""

    @abstractmethod
    def _run_env(self, agent_home: AgentHome) -> dict[str, str]:
        """Further variables for a headless run (endpoint, headers, privacy, trust)."""

    @abstractmethod
    def _arguments(self, agent_home: AgentHome, prompt: str, model: str | None) -> list[str]:
        """The arguments after the binary."""

    def _warm_arguments(self, agent_home: AgentHome, model: str | None) -> list[str]:
        """The arguments of a warm start (the prompt comes on stdin); called only when ``starts_warm``."""
        raise NotImplementedError(f"{self.name} does not start warm")

    @abstractmethod
    def _credential_files(self, user_home: Path, env: Mapping[str, str]) -> Iterable[tuple[str, Path]]:
        """``(kind, path)`` of the user's credential files for this CLI."""

    def _write_settings(self, path: Path, settings: dict[str, Any]) -> None:
        """Write the settings document at ``path`` (0600, atomically): JSON unless the CLI reads another format."""
        write_private_json(path, settings)

    def _settings_credentials(self, user_home: Path, env: Mapping[str, str]) -> list[CredentialFinding]:
        """Logins chosen in the user's settings file (an auth type, a provider with a key)."""
        return []

    def _credential_env_vars(self) -> tuple[str, ...]:
        """Environment variables that carry an API key this CLI honours."""
        return ()

    def _error_text(self, stdout: str, stderr: str) -> str:
        """The error the CLI reported in its output, if any (checked against rate-limit and auth patterns)."""
        return ""

    # --- settings parts every CLI shares ----------------------------------------------------

    def _carry_files(
        self,
        user_dir: Path,
        private_dir: Path,
        files: Iterable[tuple[str, str]],
        how: Literal["symlink", "copy"],
        carried: list[CarriedCredential],
        *,
        write_back: bool = False,
    ) -> None:
        """Link or copy the user's ``(kind, filename)`` files from ``user_dir`` into ``private_dir``."""
        carry = link_user_file if how == "symlink" else copy_user_file
        for kind, filename in files:
            source, target = user_dir / filename, private_dir / filename
            if carry(source, target):
                carried.append(
                    CarriedCredential(
                        kind=kind, source=str(source), how=how, target=target, write_back=write_back
                    )
                )

    def _carry_user_settings(
        self, path: Path, keys: Iterable[str], carried: list[CarriedCredential]
    ) -> dict[str, Any]:
        """The login and model choices (``keys``, dotted) of the user's settings file at ``path``."""
        settings = pick(read_json_object(path), *keys)
        if settings:
            carried.append(CarriedCredential(kind="settings", source=str(path), how="settings"))
        return settings

    def _carry_env_keys(
        self, agent: AgentSpec, env: Mapping[str, str], carried: list[CarriedCredential]
    ) -> None:
        """Record the API keys the CLI inherits from ``env`` (none count with a custom endpoint)."""
        carried.extend(
            CarriedCredential(kind="api-key-env", source=var, how="env")
            for var in self._credential_env_vars()
            if env.get(var) and agent.endpoint is None
        )


def chosen_model(agent: AgentSpec) -> str | None:
    """The model the agent runs: its own, else its provider's, else None (the CLI's default)."""
    return agent.model or (agent.endpoint.model if agent.endpoint else None) or None


def endpoint_kind(agent: AgentSpec) -> ProviderKind:
    """The kind of API the agent's CLI is pointed at (``cli-login`` without a provider endpoint)."""
    return agent.endpoint.kind if agent.endpoint is not None else ProviderKind.CLI_LOGIN


def bearer_headers(agent: AgentSpec) -> dict[str, str]:
    """The agent's token as the MCP entry's ``Authorization`` header."""
    return {"Authorization": f"Bearer {agent.token}"}


def http_mcp_servers(agent: AgentSpec, **extra: Any) -> dict[str, Any]:
    """The ``mcpServers`` block gemini and qwen share: the broker over streamable HTTP, trusted, with a timeout."""
    return {
        MCP_SERVER_NAME: {
            "httpUrl": agent.broker_url,
            "headers": bearer_headers(agent),
            "timeout": agent.tool_timeout_ms,
            "trust": True,
            **extra,
            "description": "aiswarm broker: claim tasks, report progress and results",
        }
    }


def no_usage_statistics() -> dict[str, Any]:
    """Settings that turn off usage statistics and telemetry (gemini and qwen spell them the same)."""
    return {"privacy": {"usageStatisticsEnabled": False}, "telemetry": {"enabled": False}}


# --- helpers shared by adapters ---------------------------------------------------------


def link_user_file(source: Path, target: Path) -> bool:
    """Make ``target`` a symlink to the user's ``source`` file; never touches ``source``.

    Returns False (and removes a stale link) when ``source`` does not exist. A regular file at
    ``target`` (a CLI that refreshed its token replaces the link with its own copy) is kept unless
    the user's file is newer, e.g. after the user logged in again.
    """
    if not source.is_file():
        if target.is_symlink():
            target.unlink()
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        if Path(os.readlink(target)) == source:
            return True
        target.unlink()
    elif target.exists():
        if target.stat().st_mtime >= source.stat().st_mtime:
            return True
        target.unlink()
    target.symlink_to(source)
    return True


def copy_user_file(source: Path, target: Path) -> bool:
    """Copy the user's ``source`` file to ``target`` (0600, atomically) unless ``target`` is as new; never touches ``source``.

    For credential files a CLI rewrites when it refreshes a token (gemini in place, qwen by rename):
    a symlink would let the CLI write the user's file, several agents at once, or be replaced by the
    CLI's own copy. The copy keeps ``source``'s modification time, so "newer" always means "refreshed
    since". Returns False when ``source`` does not exist.
    """
    if not source.is_file():
        return False
    if target.is_symlink():
        target.unlink()
    elif target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
        return True
    write_private(target, source.read_bytes(), mtime=source.stat().st_mtime)
    return True


def return_user_file(target: Path, source: Path, lock: Path) -> bool:
    """Carry an agent's refreshed copy ``target`` back to the user's ``source``; True when it was written.

    Only when ``target`` is a regular file strictly newer than ``source`` (which must still exist: a
    user who logged out stays logged out) and holds a JSON object (a half-written or emptied copy never
    replaces a working login). The write is one rename of a temp file beside ``source`` that keeps its
    mode and takes ``target``'s time. Agents finishing together serialise on ``lock``, so the newest
    copy wins, never the last one to check.
    """
    if target.is_symlink() or not target.is_file():
        return False
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            user_file = source.resolve()
            if not user_file.is_file():
                return False
            theirs, ours = user_file.stat(), target.stat()
            if ours.st_mtime <= theirs.st_mtime:
                return False
            data = target.read_bytes()
            try:
                if not isinstance(json.loads(data), dict):
                    return False
            except ValueError:
                return False
            write_private(user_file, data, mode=stat.S_IMODE(theirs.st_mode), mtime=ours.st_mtime)
            return True
    except OSError:
        return False  # an unwritable home or a vanished file: the user's login stays as it was


def deep_merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively with ``overlay`` (overlay wins); returns ``base``."""
    for key, value in overlay.items():
        current = base.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            deep_merge(current, value)  # pyright: ignore[reportUnknownArgumentType]
        else:
            base[key] = value
    return base


def pick(document: Mapping[str, Any], *dotted: str) -> dict[str, Any]:
    """A new document holding only the given dotted keys of ``document`` (those present)."""
    out: dict[str, Any] = {}
    for key in dotted:
        parts = key.split(".")
        node: Any = document
        for part in parts:
            node = node.get(part) if isinstance(node, Mapping) else None
            if node is None:
                break
        if node is None:
            continue
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = json.loads(json.dumps(node))
    return out


def json_lines(text: str) -> Iterable[dict[str, Any]]:
    """Every line of ``text`` that parses as a JSON object."""
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            yield value


def last_json_value(text: str) -> Any:
    """The whole of ``text`` as JSON if it parses, else the last parseable JSON value found at a line start."""
    text = text.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    lines = text.splitlines()
    for start in range(len(lines) - 1, -1, -1):
        if lines[start].lstrip()[:1] in ("{", "["):
            try:
                value, _ = decoder.raw_decode("\n".join(lines[start:]).lstrip())
            except ValueError:
                continue
            return value
    return None


def _one_line(text: str, limit: int = 240) -> str:
    """The last non-empty line of ``text``, shortened."""
    line = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"
