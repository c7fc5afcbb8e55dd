"""The real agent CLIs for end-to-end tests: installed once per session with npm.

Shared by ``tests/scripted_model`` and ``tests/launcher``. The CLI versions come from
``launcher/adapters/install.py``, the one place they are pinned.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from launcher.adapters.install import NODE_MAJOR, PINNED_CLIS, node_package_name

REPO = Path(__file__).resolve().parents[1]

# The pins live in launcher/adapters/install.py (the launcher installs the same versions); the tests
# install every CLI and Node 22 into one shared npm prefix.
CLI_PACKAGES: dict[str, str] = {
    **{name: pin.spec for name, pin in PINNED_CLIS.items()},
    "node": f"{node_package_name()}@{NODE_MAJOR}",
}


# --- the real CLIs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InstalledClis:
    """Where the CLIs live: ``bin`` holds every pinned CLI (qwen, gemini, opencode, codex, claude); ``node_bin`` Node 22."""

    prefix: Path
    bin: Path
    node_bin: Path

    def path_env(self) -> str:
        """A PATH with Node 22 and the CLIs first."""
        return os.pathsep.join([str(self.node_bin), str(self.bin), os.environ.get("PATH", "")])


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI is set, so the end-to-end tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def clis() -> InstalledClis:
    """The pinned CLIs, installed with npm into ``$AISWARM_TEST_CLI_DIR`` (default ``.cache/clis``) if missing.

    Skips when npm is unavailable, unless ``CI`` is set: then it fails.
    """
    prefix = Path(os.environ.get("AISWARM_TEST_CLI_DIR") or REPO / ".cache" / "clis")
    installed = InstalledClis(
        prefix, prefix / "node_modules" / ".bin", prefix / "node_modules" / node_package_name() / "bin"
    )
    wanted = [*(installed.bin / pin.binary for pin in PINNED_CLIS.values()), installed.node_bin / "node"]
    if all(p.exists() for p in wanted) and _versions_match(prefix):
        return installed
    npm = shutil.which("npm")
    if npm is None:
        _missing(f"npm is not installed and the CLIs are missing from {prefix}")
    prefix.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(npm), "install", "--prefix", str(prefix), "--no-audit", "--no-fund", *CLI_PACKAGES.values()],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0 or not all(p.exists() for p in wanted):
        _missing(f"npm install into {prefix} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return installed


def _versions_match(prefix: Path) -> bool:
    for spec in CLI_PACKAGES.values():
        name, _, version = spec.rpartition("@")
        manifest = prefix / "node_modules" / name / "package.json"
        if not manifest.exists():
            return False
        installed = json.loads(manifest.read_text()).get("version", "")
        if installed != version and not installed.startswith(f"{version}."):
            return False
    return True
