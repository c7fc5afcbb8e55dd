"""The README's newcomer path, run as the README writes it: a fresh clone, an empty ``HOME``, the real CLIs.

The commands are read from the README's code blocks ("Getting started", "Using it for real"), so the README and
this test cannot drift apart. What the test changes, and why:

* ``<URL of this repository>`` is this checkout (its committed state); ``uv run pytest`` is given one small test
  file (the suite must not run itself); the shell submit stands for the primary agent handing out work.
* ``aiswarm install-cli qwen`` is not run: the pinned CLIs and Node 22 come from the test session's npm prefix on
  ``PATH`` (``tests/launcher/test_install.py`` covers install-cli), which the demo and the launcher find there.
* The ``local`` provider recipe points at the project's scripted model instead of Ollama.
* uv keeps the machine's warm cache (``UV_CACHE_DIR``) and is told which Python to use (``UV_PYTHON``): the empty
  ``HOME`` hides the Pythons a user's shell finds. Packages come from the cache or the package registry.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from launcher.scripted_model import ScriptedModelServer
from tests.clis import InstalledClis
from tests.launcher.conftest import poll, started_by
from tests.readme_blocks import code_blocks, commands, section

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
REPOSITORY_URL = "<URL of this repository>"
NOT_RUN = {"aiswarm install-cli qwen"}
"""Commands this test does not run, for the reason in the module docstring."""


def _uv_cache_dir() -> str:
    uv = os.environ.get("UV") or shutil.which("uv") or "uv"
    return subprocess.run([uv, "cache", "dir"], capture_output=True, text=True, check=True).stdout.strip()


def _clean_environment(home: Path, clis: InstalledClis) -> dict[str, str]:
    """This process's environment minus everything about this checkout, its venv, uv, pytest and aiswarm."""
    dropped = (
        "UV",
        "VIRTUAL_ENV",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTEST_",
        "AISWARM_",
        "XDG_",
        "PIPX_",
        "COV_",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    real_uv = Path(os.environ.get("UV") or shutil.which("uv") or "uv").resolve().parent
    env |= {
        "HOME": str(home),
        "AISWARM_HOME": str(home / ".aiswarm"),
        # The empty HOME hides pyenv and uv's managed Pythons: name the interpreter this suite runs on.
        "UV_PYTHON": str(Path(sys._base_executable).resolve()),  # pyright: ignore[reportAttributeAccessIssue]
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_CACHE_DIR": _uv_cache_dir(),
        "NO_COLOR": "1",
        "COLUMNS": "200",
        # ~/.local/bin first (pipx and `uv tool install` put uv and aiswarm there, as `uv tool update-shell` would
        # have it); then Node 22 and the CLIs; uv as last resort when pipx is missing outside CI.
        "PATH": os.pathsep.join([str(home / ".local" / "bin"), clis.path_env(), str(real_uv)]),
    }
    return env


class Shell:
    """Runs README commands one by one like a terminal would: a working directory, exported variables, a log."""

    def __init__(self, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.env, self.cwd, self.log = env, cwd, log

    def run(self, command: str, *, extra: str = "", timeout: float = 600, check: bool = True) -> str:
        """Run ``command`` (and ``extra`` arguments); ``cd`` and ``export`` change the shell's state."""
        output = ""
        for part in command.split(" && "):
            words = shlex.split(part)
            if words[0] == "cd":
                self.cwd = (self.cwd / words[1]).resolve()
                continue
            if words[0] == "export":
                name, value = words[1].split("=", 1)
                self.env[name] = value
                continue
            line = f"{part} {extra}".strip()
            done = subprocess.run(
                ["bash", "-c", line],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            output = done.stdout + done.stderr
            with self.log.open("a") as out:
                out.write(f"$ {line}   (in {self.cwd}, exit {done.returncode})\n{output}\n")
            assert "Traceback" not in output, f"`{line}` printed a traceback:\n{output[-4000:]}"
            if check:
                assert done.returncode == 0, f"`{line}` exited {done.returncode}:\n{output[-4000:]}"
        return output


def _local_provider_recipe(model_url: str) -> str:
    """The README's ``[providers.local]`` recipe, pointed at the scripted model."""
    [recipes] = [b for b in code_blocks(section("Model providers"), "toml") if "[providers.local]" in b]
    table = "[providers.local]" + recipes.split("[providers.local]", 1)[1].split("\n[", 1)[0]
    pointed = re.sub(r'^base_url = "[^"]*"', f'base_url = "{model_url}/v1"', table, flags=re.M)
    assert pointed != table, table
    return pointed


def _files(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


def test_the_readme_newcomer_path_works_on_a_fresh_clone_with_an_empty_home(
    clis: InstalledClis, tmp_path: Path
) -> None:
    home, work, project = tmp_path / "home", tmp_path / "work", tmp_path / "project"
    for directory in (home, work, project):
        directory.mkdir()
    [getting_started] = code_blocks(section("Getting started"), "bash")
    [for_real] = code_blocks(section("Using it for real"), "bash")
    shell = Shell(_clean_environment(home, clis), work, tmp_path / "shell.log")
    model = ScriptedModelServer().start()
    launcher: subprocess.Popen[bytes] | None = None
    try:
        for command in commands(getting_started):
            if command.startswith("pipx "):
                if shutil.which("pipx") is None:
                    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                        pytest.fail("pipx is missing: .ci/run installs it for this test")
                    continue  # outside CI, the uv running this suite stands in
                shell.run(command, timeout=900)
                assert (home / ".local" / "bin" / "uv").exists()
            elif command.startswith("git clone"):
                shell.run(command.replace(REPOSITORY_URL, shlex.quote(str(REPO))))
                assert shell.cwd == work / "aiswarm" and (shell.cwd / "uv.lock").exists()
            elif command == "uv run aiswarm demo":
                output = shell.run(command, timeout=900)
                assert "every task done" in output, output[-3000:]
            elif command == "uv run pytest":
                output = shell.run(command, extra="tests/test_readme.py -q -p no:cacheprovider", timeout=900)
                assert re.search(r"\b\d+ passed\b", output), output[-3000:]
            elif command == "uv tool install .":
                shell.run(command, timeout=900)
                assert (home / ".local" / "bin" / "aiswarm").exists()
                assert shell.run("aiswarm --version").startswith("aiswarm ")
            else:
                raise AssertionError(
                    f"the README's getting-started block has a command this test does not know: {command}"
                )

        config = home / ".aiswarm" / "config.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(_local_provider_recipe(model.url))
        subprocess.run(["git", "init", "-q"], cwd=project, check=True)
        (project / "README.md").write_text("my project\n")
        subprocess.run(["git", "add", "-A"], cwd=project, check=True)
        subprocess.run(
            ["git", "-c", "user.name=n", "-c", "user.email=n@example.com", "commit", "-qm", "start"],
            cwd=project,
            check=True,
        )
        shell.cwd = project
        shell.env["AISWARM_NO_UI"] = "1"  # the launcher's log lines instead of the live view, for the log
        token = ""
        for command in commands(for_real):
            if command in NOT_RUN:
                continue
            words = shlex.split(command)
            if command.startswith("export "):
                shell.run(command)
            elif words[:2] == ["aiswarm", "doctor"]:
                before = _files(home)
                output = shell.run(command, check=False)
                assert "provider local: local: models listed" in output, output
                written = set(_files(home)) - set(before)
                assert written == set(), f"doctor wrote into the user's home: {sorted(written)}"
            elif words[:2] == ["aiswarm", "launch"]:
                log = (tmp_path / "launch.log").open("wb")
                launcher = subprocess.Popen(
                    ["bash", "-c", command], cwd=project, env=shell.env, stdout=log, stderr=subprocess.STDOUT
                )
                status = poll(
                    lambda: (
                        subprocess.run(
                            ["aiswarm", "status"], env=shell.env, capture_output=True, text=True, check=False
                        ).returncode
                        == 0
                    ),
                    180,
                    "the broker the launch starts",
                    every=1.0,
                )
                assert status
                prompt = "WRITE hello.txt\n```\nhello from the swarm\n```\n"
                output = shell.run(f"aiswarm submit 'Say hello' -p {shlex.quote(prompt)} --wait", timeout=600)
                assert "completed" in output, output
                # Two agents in a git checkout: the task ran in a worktree and was merged onto the branch.
                poll(lambda: (project / "hello.txt").exists(), 120, "the task's file merged into the project")
                assert (project / "hello.txt").read_text() == "hello from the swarm\n"
                launcher.send_signal(signal.SIGINT)
                assert launcher.wait(120) == 0, (tmp_path / "launch.log").read_text()[-4000:]
                token = (home / ".aiswarm" / "primary.token").read_text().strip()
                assert token
            elif words[:2] == ["aiswarm", "install-client"]:
                output = shell.run(command)
                user_config = (home / ".claude.json").read_text()
                assert '"type": "http"' in user_config and token in user_config, output
                # The same for the project: git shows only the config file, the only file that holds the token.
                output = shell.run(f"{command} --project")
                status = subprocess.run(
                    ["git", "status", "--porcelain", "--untracked-files=all"],
                    cwd=project,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                assert status.splitlines() == ["?? .mcp.json"], status
                holding = [
                    p.name for p in project.rglob("*") if p.is_file() and token.encode() in p.read_bytes()
                ]
                assert holding == [".mcp.json"]
                assert "git would commit it, so add .mcp.json to .gitignore" in output
            else:
                raise AssertionError(
                    f"the README's launch block has a command this test does not know: {command}"
                )
        shell.run("aiswarm stop", check=False)
    finally:
        if launcher is not None and launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for process in started_by(home):
            process.kill()
        model.stop()
    leftovers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if str(home) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == [], leftovers
