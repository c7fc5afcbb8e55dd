"""``aiswarm doctor``, ``install-client`` and a broken ``config.toml``, through the real console script.

Whatever is wrong is said in one line per problem, naming the file or the CLI and what to do; never a traceback.
(install-client's other refusals are checked through Typer in ``tests/launcher/test_install_client.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import aiswarm, closed_port

COMMANDS_READING_THE_CONFIG = [["doctor"], ["serve"], ["install-client", "claude"]]


@pytest.fixture
def user(tmp_path: Path) -> dict[str, str]:
    """An empty HOME, no CLIs on PATH, a closed broker port."""
    home = tmp_path / "user"
    home.mkdir()
    return {"HOME": str(home), "PATH": "/usr/bin:/bin", "AISWARM_PORT": str(closed_port())}


@pytest.mark.parametrize("command", COMMANDS_READING_THE_CONFIG, ids=lambda c: " ".join(c))
def test_a_config_file_that_is_not_toml_is_named_in_one_line(
    tmp_path: Path, user: dict[str, str], command: list[str]
) -> None:
    home = tmp_path / "aiswarm"
    home.mkdir()
    (home / "config.toml").write_text('[providers.local]\nkind = "openai-compatible"\nmodel = \n')

    ran = aiswarm(*command, home=home, env=user)

    assert ran.code == 1
    assert ran.err_lines == [
        f"error: {home / 'config.toml'}: not valid TOML, Invalid value (at line 3, column 9); "
        "fix it and run the command again"
    ], ran.err


def test_doctor_prints_each_problem_on_a_line_of_its_own(tmp_path: Path, user: dict[str, str]) -> None:
    ran = aiswarm("doctor", home=tmp_path / "aiswarm", env={**user, "COLUMNS": "80"})

    assert ran.code == 0 and "Traceback" not in ran.out + ran.err
    lines = ran.out.splitlines()
    for cli in ("claude", "codex", "gemini", "opencode", "qwen"):
        assert f"{cli}: not installed: run `aiswarm install-cli {cli}`" in lines, ran.out
        assert (
            f"{cli}: no key or login found: name a provider for it (`aiswarm launch --cli {cli}@NAME`, "
            "[providers.NAME] in config.toml) or export its API key"
        ) in lines, ran.out
    assert any(line.startswith("broker http://127.0.0.1:") and "aiswarm serve" in line for line in lines)
    assert "sign in" not in ran.out  # the free logins of qwen-code and gemini-cli are gone


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("", ["claude"], "no token in {home}/primary.token: start the broker once with `aiswarm serve`"),
        ("broken", ["claude"], "{user}/.claude.json: not valid JSON, line 2, column 1"),
    ],
)
def test_install_client_refuses_in_one_line(
    tmp_path: Path, user: dict[str, str], setup: str, args: list[str], message: str
) -> None:
    home = tmp_path / "aiswarm"
    home.mkdir()
    if setup:
        (home / "primary.token").write_text("asw_p_token\n")
    if setup == "broken":
        (Path(user["HOME"]) / ".claude.json").write_text('{"a": \n')

    ran = aiswarm("install-client", *args, home=home, env=user)

    assert ran.code == 1 and len(ran.err_lines) == 1, ran.err
    assert ran.err.startswith("error: " + message.format(home=home, user=user["HOME"])), ran.err
    assert not (home / "backups").exists()
