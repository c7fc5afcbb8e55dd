"""Failures that are not the task's fault do not burn the queue: real ``aiswarm launch``, real qwen and gemini.

* A CLI without credentials: launch says so in one line, that CLI takes no task, the other CLI does them all
  with one attempt each.
* A 401 from the model mid-run: the task is released with no failure counted, the CLI's circuit opens, the other
  CLI completes the task; once the key is accepted again the probe (a models listing) closes the circuit and
  the CLI takes work again.
* A 429 on qwen, with and without ``Retry-After``: the launcher sees it in the model traffic, stops the CLI and
  releases the task within 5 s of the first 429 (qwen itself retries silently for 20 s to over a minute).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from launcher.scripted_model import ScriptedModelServer
from tests.broker_harness import BrokerProcess
from tests.clis import InstalledClis
from tests.launcher.conftest import LaunchedSwarm, poll

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@contextmanager
def launched(
    clis: InstalledClis,
    root: Path,
    args: list[str],
    config: str = "",
    extra_env: dict[str, str] | None = None,
) -> Iterator[LaunchedSwarm]:
    """A broker, the scripted model (``{model}`` in ``config`` and ``args`` is its URL) and ``aiswarm launch ARGS``."""
    home, workdir, user_home = root / "home", root / "work", root / "user"
    for d in (home, workdir, user_home):
        d.mkdir(parents=True)
    broker = BrokerProcess(home, {"AISWARM_LEASE_SECONDS": "120"}).start()
    model = ScriptedModelServer().start()
    (home / "config.toml").write_text(config.replace("{model}", model.url))
    env = {
        **os.environ,
        "PATH": clis.path_env(),
        "HOME": str(user_home),
        "AISWARM_HOME": str(home),
        "NO_COLOR": "1",
        **(extra_env or {}),
    }
    for var in ("AISWARM_TOKEN", "GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY"):
        env.pop(var, None)
    launcher_log = root / "launcher.log"
    with open(launcher_log, "wb") as out:
        launcher = subprocess.Popen(
            [
                *(
                    sys.executable,
                    "-m",
                    "aiswarm_server",
                    "launch",
                    "--url",
                    broker.url,
                    "--dir",
                    str(workdir),
                ),
                *("--grace", "5", "--no-ui", *(a.replace("{model}", model.url) for a in args)),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    swarm = LaunchedSwarm(broker, model, launcher, workdir, env, launcher_log, ("qwen-1", "gemini-1"))
    try:
        yield swarm
    finally:
        swarm.stop()


PROVIDERS = """
[providers.scripted]
kind = "openai-compatible"
base_url = "{model}/v1"
model = "aiswarm-model"
key_env = "AISWARM_TEST_SCRIPTED_KEY"

[providers.gemini-key]
kind = "gemini-api"
base_url = "{model}"
model = "aiswarm-model"
key_env = "AISWARM_TEST_GEMINI_KEY"
"""


def test_a_cli_without_credentials_takes_no_task_and_the_other_cli_does_them_all_without_burning_attempts(
    clis: InstalledClis, tmp_path: Path
) -> None:
    args = ["--cli", "qwen@scripted:1,gemini@gemini-key:1", "--probe-interval", "2"]
    with launched(clis, tmp_path, args, PROVIDERS, {"AISWARM_TEST_SCRIPTED_KEY": "k"}) as swarm:
        swarm.wait_parked(count=1)
        ids = swarm.submit({f"nocreds/{i}.txt": f"done {i}" for i in range(3)}, title="nocreds")
        tasks = swarm.wait_done(ids)
        output = swarm.launcher_log.read_text()
    assert [t.status.value for t in tasks] == ["completed"] * 3, swarm.tail()
    assert [[(a.agent, a.outcome.value) for a in t.attempts] for t in tasks] == [
        [("qwen-1", "completed")]
    ] * 3
    about_gemini = [line for line in output.splitlines() if "gemini-1" in line and "no work" in line]
    assert about_gemini == [
        "aiswarm launch: gemini-1 takes no work: provider gemini-key: $AISWARM_TEST_GEMINI_KEY is not set; "
        "export it, or name another key source in $AISWARM_HOME/config.toml"
    ], output
    assert not any("qwen-1 takes no work" in line for line in output.splitlines())
    assert swarm.model.stats()["clis"].get("gemini", {}).get("total", 0) == 0


def test_a_401_mid_run_releases_the_task_opens_the_circuit_and_the_probe_closes_it_once_the_key_works(
    clis: InstalledClis, tmp_path: Path
) -> None:
    args = ["--cli", "qwen,gemini", "--agents", "2", "--model-endpoint", "{model}", "--probe-interval", "2"]
    with launched(clis, tmp_path, args) as swarm:
        swarm.wait_parked()
        fault = swarm.model.inject_fault(status=401, cli="qwen", retry_after=None, message="Invalid API key")
        ids = swarm.submit({f"auth/{i}.txt": f"auth {i}" for i in range(4)}, title="auth")
        tasks = swarm.wait_done(ids)
        qwen_log = swarm.home / "logs" / "qwen-1.log"
        assert "circuit cli:qwen open" in qwen_log.read_text(), swarm.tail()
        assert [t.status.value for t in tasks] == ["completed"] * 4, swarm.tail()
        assert all(t.attempts[-1].agent == "gemini-1" for t in tasks)
        assert all(t.failures == 0 for t in tasks), [(t.id, t.failures) for t in tasks]
        qwen_attempts = [a.outcome.value for t in tasks for a in t.attempts if a.agent == "qwen-1"]
        assert qwen_attempts and set(qwen_attempts) == {"released"}, qwen_attempts
        # A task only qwen may do waits while the circuit is open; the key works again, the probe closes it.
        [only_qwen] = swarm.call(
            lambda b: b.submit_task(
                "qwen only",
                "WRITE auth/qwen.txt\n```\nqwen again\n```\n",
                working_dir=str(swarm.workdir),
                capabilities=["cli:qwen"],
            ),
            token=swarm.broker.primary_token,
        ).tasks
        poll(lambda: "stays open" in qwen_log.read_text(), 60, "a failed probe")
        listed = json.loads(aiswarm(swarm, "agents", "--json"))
        qwen = next(a for a in listed if a["name"] == "qwen-1")
        assert qwen["state"] == "circuit_open" and "cli:qwen" in qwen["state_reason"], qwen
        status = json.loads(aiswarm(swarm, "status", "--json"))
        assert [s["agent"] for s in status["agent_states"]] == ["qwen-1"], status
        assert swarm.call(lambda b: b.get_task(only_qwen.id)).task.status.value == "pending"
        swarm.model.clear_faults(fault_id=fault)
        [task] = swarm.wait_done([only_qwen.id])
        assert task.status.value == "completed" and task.attempts[-1].agent == "qwen-1", swarm.tail()
        assert "circuit cli:qwen closed (the probe passed)" in qwen_log.read_text()
        assert (swarm.workdir / "auth/qwen.txt").read_text() == "qwen again\n"
        usage = json.loads(aiswarm(swarm, "usage", "--by", "cli", "--json"))
        by_cli = {row["key"]: row for row in usage["rows"]}
        assert by_cli["gemini"]["runs"] >= 4 and by_cli["gemini"]["total_tokens"] > 0, usage
        assert by_cli["qwen"]["total_tokens"] > 0, usage
        by_task = {
            row["key"] for row in json.loads(aiswarm(swarm, "usage", "--by", "task", "--json"))["rows"]
        }
        assert {f"#{t.id}" for t in [*tasks, task]} <= by_task


def aiswarm(swarm: LaunchedSwarm, *args: str) -> str:
    """Run an ``aiswarm`` command against the swarm's broker; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "aiswarm_server", *args, "--url", swarm.broker.url],
        env=swarm.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_429_on_qwen_with_and_without_retry_after_is_reacted_to_within_5_seconds(
    clis: InstalledClis, tmp_path: Path
) -> None:
    args = ["--cli", "qwen,gemini", "--agents", "2", "--model-endpoint", "{model}", "--cool-down", "8"]
    with launched(clis, tmp_path, args) as swarm:
        swarm.wait_parked()
        for retry_after in (15.0, None):
            swarm.model.reset_stats()
            fault = swarm.model.inject_fault(status=429, cli="qwen", retry_after=retry_after)
            [task] = swarm.call(
                lambda b, name=f"limited/{retry_after}.txt": b.submit_task(
                    "qwen only",
                    f"WRITE {name}\n```\nlimited\n```\n",
                    working_dir=str(swarm.workdir),
                    capabilities=["cli:qwen"],
                ),
                token=swarm.broker.primary_token,
            ).tasks

            def released(task_id: int = task.id) -> float | None:
                attempts = swarm.call(lambda b: b.get_task(task_id)).task.attempts
                return next((a.finished_at for a in attempts if a.outcome.value == "released"), None)

            released_at: float = poll(released, 120, "the rate-limited task to be released")
            first_429 = min(
                r["at"] for r in swarm.model.stats()["recent"] if r["status"] == 429 and r["cli"] == "qwen"
            )
            print(f"Retry-After {retry_after}: released {released_at - first_429:.2f}s after the first 429")
            assert released_at - first_429 < 5.0, swarm.tail()

            def cooling() -> dict[str, Any] | None:
                listed = json.loads(aiswarm(swarm, "agents", "--json"))
                qwen = next(a for a in listed if a["name"] == "qwen-1")
                return qwen if qwen["state"] == "cooling" else None

            qwen = poll(cooling, 30, "qwen-1 to show as cooling down")
            assert qwen["state_until"] >= released_at + 7, qwen
            if retry_after is not None:
                assert qwen["state_until"] >= released_at + retry_after - 1, (
                    qwen
                )  # the provider's reset honoured
            swarm.model.clear_faults(fault_id=fault)
            [done] = swarm.wait_done([task.id])
            assert done.status.value == "completed" and done.attempts[-1].agent == "qwen-1", swarm.tail()
            assert done.failures == 0
