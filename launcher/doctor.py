"""``aiswarm doctor``: is each worker CLI installed, new enough, able to run, logged in; does the broker answer?

Doctor only reads the user's CLI homes (``~/.gemini``, ``~/.qwen`` ...): each CLI's ``--version`` runs in a scratch
home that is deleted afterwards, because some CLIs write there even to print their version (gemini-cli registers
the working directory in ``~/.gemini/projects.json`` and can leave ``projects.json.<uuid>.tmp`` files behind).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from launcher.adapters import CliAdapter, CredentialFinding, get_adapter, known_adapters
from launcher.adapters.install import cli_prefix, node_major, not_executable, package_dir, runtime_env
from launcher.providers import ProviderError, load_providers, probe

VERSION_TIMEOUT_SECONDS = 30.0

CLI_HOME_VARIABLES = (
    "GEMINI_CLI_HOME",
    "QWEN_HOME",
    "CODEX_HOME",
    "CLAUDE_CONFIG_DIR",
    "OPENCODE_CONFIG",
    "OPENCODE_CONFIG_DIR",
)
"""Variables that move a CLI's home away from ``$HOME``: unset for ``--version``, so the scratch home is used."""

XDG_DIRECTORIES = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")
HEALTH_TIMEOUT_SECONDS = 2.0


class CliCheck(BaseModel):
    """What doctor found for one CLI."""

    name: str
    package: str
    pinned_version: str
    binary: Path | None
    source: str | None
    """``aiswarm`` (under $AISWARM_HOME/clis), ``PATH``, or None when not found."""
    version: str | None
    node_major: int | None
    min_node_major: int | None
    credentials: list[CredentialFinding]
    problems: list[str]

    @property
    def installed(self) -> bool:
        """A binary was found."""
        return self.binary is not None

    @property
    def node_ok(self) -> bool:
        """Node is new enough (or not needed)."""
        return self.min_node_major is None or (self.node_major or 0) >= self.min_node_major

    @property
    def ok(self) -> bool:
        """Installed, runnable, and with at least one credential."""
        return not self.problems


class BrokerCheck(BaseModel):
    """Whether the broker's ``/health`` answered."""

    url: str
    ok: bool
    detail: str


class ProviderCheck(BaseModel):
    """Whether a configured provider's key is there and its models listing answers."""

    name: str
    ok: bool
    detail: str


class DoctorReport(BaseModel):
    """Everything doctor found."""

    clis: list[CliCheck]
    broker: BrokerCheck | None
    providers: list[ProviderCheck] = []

    @property
    def ok(self) -> bool:
        """True when nothing needs the user's attention."""
        return (
            all(c.ok for c in self.clis)
            and (self.broker is None or self.broker.ok)
            and all(p.ok for p in self.providers)
        )


def check_providers(home: Path, env: Mapping[str, str] | None = None) -> list[ProviderCheck]:
    """Each provider of the config file: its key is readable and a models listing accepts it (no model request)."""
    try:
        providers = load_providers(home)
    except ProviderError as error:
        return [ProviderCheck(name="config.toml", ok=False, detail=str(error))]
    checks: list[ProviderCheck] = []
    for name, provider in sorted(providers.items()):
        try:
            endpoint = provider.endpoint(env)
        except ProviderError as error:
            checks.append(ProviderCheck(name=name, ok=False, detail=str(error)))
            continue
        if endpoint is None:
            checks.append(ProviderCheck(name=name, ok=True, detail="the CLI's own login"))
            continue
        result = probe(endpoint)
        checks.append(ProviderCheck(name=name, ok=result.ok, detail=result.detail))
    return checks


def check_cli(
    adapter: CliAdapter, home: Path, *, user_home: Path | None = None, env: Mapping[str, str] | None = None
) -> CliCheck:
    """Check one CLI: binary, ``--version`` (run with aiswarm's Node on PATH), Node major, credentials."""
    env = dict(os.environ if env is None else env)
    run_env = runtime_env(home, env)
    binary = adapter.find_binary(home, path=run_env.get("PATH"))
    source = None
    if binary is not None:
        source = "aiswarm" if cli_prefix(home, adapter.name) in binary.parents else "PATH"
    problems: list[str] = []
    version = None
    major = node_major(run_env) if adapter.min_node_major is not None else None
    if binary is None:
        problems.append(f"not installed: run `aiswarm install-cli {adapter.name}`")
    else:
        version = cli_version(binary, run_env)
        if version is None:
            problems.append(
                f"`{binary.name} --version` failed: reinstall with `aiswarm install-cli {adapter.name}`"
            )
        elif adapter.version and version != adapter.version:
            problems.append(f"version {version} differs from the tested {adapter.version}")
        package = package_dir(binary, adapter.package)
        stuck = not_executable(package, adapter.pin) if package is not None else []
        if package is not None and stuck:
            problems.append(
                f"{stuck[0].relative_to(package)} is not executable: run `aiswarm install-cli {adapter.name}` "
                f"(or chmod +x {stuck[0]})"
            )
    if adapter.min_node_major is not None and (major or 0) < adapter.min_node_major:
        found = f"Node {major}" if major else "no Node"
        problems.append(
            f"needs Node >= {adapter.min_node_major}, found {found}: `aiswarm install-cli {adapter.name}` adds it"
        )
    credentials = adapter.find_credentials(user_home or Path.home(), env)
    if not credentials:
        problems.append(
            f"no key or login found: name a provider for it (`aiswarm launch --cli {adapter.name}@NAME`, "
            "[providers.NAME] in config.toml) or export its API key"
        )
    return CliCheck(
        name=adapter.name,
        package=adapter.package,
        pinned_version=adapter.version,
        binary=binary,
        source=source,
        version=version,
        node_major=major,
        min_node_major=adapter.min_node_major,
        credentials=credentials,
        problems=problems,
    )


def check_broker(url: str, *, timeout: float = HEALTH_TIMEOUT_SECONDS) -> BrokerCheck:
    """GET ``<broker>/health``; ``url`` may be the broker's base URL or its ``/mcp`` endpoint."""
    base = re.sub(r"/mcp/?$", "", url.rstrip("/"))
    health = f"{base}/health"
    try:
        response = httpx.get(health, timeout=timeout)
    except httpx.HTTPError as exc:
        return BrokerCheck(
            url=health, ok=False, detail=f"no answer ({type(exc).__name__}): start it with `aiswarm serve`"
        )
    if response.status_code != 200:
        return BrokerCheck(url=health, ok=False, detail=f"HTTP {response.status_code}")
    return BrokerCheck(url=health, ok=True, detail=_one_line(response.text) or "ok")


def run_doctor(
    home: Path,
    *,
    broker_url: str | None = None,
    names: Iterable[str] | None = None,
    user_home: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> DoctorReport:
    """Check every CLI (or those in ``names``) and, when ``broker_url`` is given, the broker."""
    adapters = [get_adapter(n) for n in (names or known_adapters())]
    # Each `--version` starts a Node CLI (seconds each): check them side by side.
    with ThreadPoolExecutor(max_workers=max(len(adapters), 1)) as pool:
        clis = list(pool.map(lambda a: check_cli(a, home, user_home=user_home, env=env), adapters))
    return DoctorReport(
        clis=clis,
        broker=check_broker(broker_url) if broker_url else None,
        providers=check_providers(home, env),
    )


def render_doctor(report: DoctorReport, console: Console | None = None) -> None:
    """Print the report: a table of the CLIs, then one line per problem, per provider and for the broker."""
    console = console or Console()
    table = Table(title="aiswarm doctor", show_lines=False)
    for column in ("CLI", "installed", "version", "node", "credentials", "status"):
        table.add_column(column)
    for c in report.clis:
        installed = f"{c.source}: {c.binary}" if c.binary else "[red]no[/red]"
        node = "-" if c.min_node_major is None else f"{c.node_major or 'none'} (needs {c.min_node_major})"
        creds = ", ".join(sorted({f.kind for f in c.credentials})) or "[red]none[/red]"
        count = len(c.problems)
        status = (
            "[green]ok[/green]" if c.ok else f"[yellow]{count} problem{'s' if count > 1 else ''}[/yellow]"
        )
        table.add_row(c.name, installed, c.version or "-", node, creds, status)
    console.print(table)
    # Problems go below the table, one line each, so a narrow terminal does not fold them into the cells.
    for c in report.clis:
        for problem in c.problems:
            console.print(
                f"{c.name}: {problem}", style="yellow", highlight=False, markup=False, soft_wrap=True
            )
    for p in report.providers:
        colour = "green" if p.ok else "red"
        console.print(
            f"provider {p.name}: {p.detail}", style=colour, highlight=False, markup=False, soft_wrap=True
        )
    if report.broker is not None:
        colour = "green" if report.broker.ok else "red"
        console.print(
            f"broker {report.broker.url}: {report.broker.detail}",
            style=colour,
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def cli_version(binary: Path, env: Mapping[str, str]) -> str | None:
    """The version ``binary --version`` prints, or None if it fails.

    It runs with ``env`` (its ``PATH`` finds Node) but in a scratch home, deleted afterwards: whatever the CLI
    writes on start-up stays out of the user's own directories, and Node keeps no compile cache for it (the
    launcher's cache in the aiswarm home is for the runs that do work).
    """
    with tempfile.TemporaryDirectory(prefix="aiswarm-version-", ignore_cleanup_errors=True) as scratch:
        run_env = {k: v for k, v in env.items() if k not in CLI_HOME_VARIABLES and k != "NODE_COMPILE_CACHE"}
        run_env["HOME"] = scratch
        run_env |= {name: str(Path(scratch) / name.lower()) for name in XDG_DIRECTORIES}
        try:
            out = subprocess.run(
                [str(binary), "--version"],
                capture_output=True,
                text=True,
                timeout=VERSION_TIMEOUT_SECONDS,
                env=run_env,
                cwd=scratch,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
    match = re.search(r"\d+\.\d+\.\d+\S*", out.stdout)
    return match.group(0) if out.returncode == 0 and match else None


def _one_line(text: str, limit: int = 120) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
