"""The merge hook: a command of the user's (``merge_hook`` in config.toml) run instead of a merge, e.g. to open a
pull request for the task's branch.

The command runs through ``sh -c`` in the user's checkout, with the task's branch, id, title, target branch and
repository as environment variables (``AISWARM_BRANCH``, ``AISWARM_TASK_ID``, ``AISWARM_TASK_TITLE``,
``AISWARM_TARGET_BRANCH``, ``AISWARM_REPOSITORY``) and as placeholders (``{branch}``, ``{task_id}``, ``{title}``,
``{target}``, ``{repository}``, each replaced by its shell-quoted value; the shell's ``${...}`` is left alone). Its last line
of output (a pull request's URL, say) is kept on the task; a non-zero exit, or no exit within the timeout, is a
failure whose message is kept, the branch staying for another try.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
from dataclasses import dataclass
from pathlib import Path

from aiswarm_server.models import Task
from launcher.isolation.git import git_env, last_line

ENV_NAMES = {
    "branch": "BRANCH",
    "task_id": "TASK_ID",
    "title": "TASK_TITLE",
    "target": "TARGET_BRANCH",
    "repository": "REPOSITORY",
}
"""Each placeholder's environment variable, after ``AISWARM_``."""
PLACEHOLDERS = tuple(ENV_NAMES)
_PLACEHOLDER = re.compile(r"(?<!\$)\{(\w+)\}")
"""``{name}``, but not the shell's ``${name}``."""
DETAIL_MAX_CHARS = 1000


class MergeHookError(ValueError):
    """The configured hook cannot be used (one line, what to change)."""


@dataclass(frozen=True)
class HookOutcome:
    """What one run of the hook did: ``ok`` (exit 0) and the line kept on the task."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class MergeHook:
    """The user's merge hook command and how long it may run."""

    command: str
    timeout_seconds: float = 300.0

    def __post_init__(self) -> None:
        if not self.command.strip():
            raise MergeHookError(
                "merge_hook is empty: set it to a command, e.g. gh pr create --head {branch}"
            )
        unknown = sorted(set(_PLACEHOLDER.findall(self.command)) - set(PLACEHOLDERS))
        if unknown:
            raise MergeHookError(
                f"merge_hook names {{{unknown[0]}}}; the placeholders are "
                + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
                + " (or use the AISWARM_* environment variables)"
            )

    def command_for(self, values: dict[str, str]) -> str:
        """The command with each placeholder replaced by its shell-quoted value."""
        return _PLACEHOLDER.sub(
            lambda m: shlex.quote(values[m.group(1)]) if m.group(1) in values else m.group(0),
            self.command,
        )

    async def run(self, task: Task, branch: str, checkout: Path) -> HookOutcome:
        """Run the hook for ``task``'s ``branch`` in ``checkout``; never raises for what the command does."""
        values = {
            "branch": branch,
            "task_id": str(task.id),
            "title": task.title,
            "target": task.target_branch or "",
            "repository": str(checkout),
        }
        env = git_env({f"AISWARM_{ENV_NAMES[k]}": v for k, v in values.items()})
        env.pop("GIT_OPTIONAL_LOCKS", None)
        try:
            process = await asyncio.create_subprocess_exec(
                "sh",
                "-c",
                self.command_for(values),
                cwd=str(checkout),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group: a timeout ends everything it started
            )
        except OSError as error:
            return HookOutcome(False, f"merge hook could not start: {error}")
        try:
            out, err = await asyncio.wait_for(process.communicate(), self.timeout_seconds)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            return HookOutcome(False, f"merge hook did not finish within {self.timeout_seconds:.0f} s")
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        if process.returncode != 0:
            said = last_line(stderr) if stderr.strip() else last_line(stdout)
            return HookOutcome(False, f"merge hook exited {process.returncode}: {said}"[:DETAIL_MAX_CHARS])
        said = last_line(stdout) if stdout.strip() else "done (no output)"
        return HookOutcome(True, said[:DETAIL_MAX_CHARS])
