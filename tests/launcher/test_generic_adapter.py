"""A CLI described only in the config file (``[clis.<name>]``): its schema, the home and command it gives, and
the real qwen-code (prompt as an argument) and opencode (prompt on stdin) described that way doing tasks end to end
through ``aiswarm launch``."""

from __future__ import annotations

import json
import re
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import launcher.adapters
from launcher.adapters import (
    AgentSpec,
    GenericCliError,
    ModelEndpoint,
    OutcomeKind,
    get_adapter,
    register_adapter,
    register_configured_clis,
)
from launcher.adapters.generic import configured_adapters, generic_adapters
from tests.launcher.conftest import LaunchedSwarm, LaunchSwarm, poll

BROKER = "http://127.0.0.1:8765/mcp"
TOKEN = "agent-token-123"
ENDPOINT = ModelEndpoint(base_url="http://127.0.0.1:9000/v1", api_key="sk-endpoint", model="m1")

QWEN_DESCRIBED = r"""
# qwen-code, described without Python: the same settings aiswarm's own qwen adapter writes, in the config file.
[clis.qwen-plain]
command = ["qwen", "-p", "{prompt}", "--yolo", "--output-format", "json"]
model_args = ["--model", "{model}"]
credential_env = ["OPENAI_API_KEY"]
login_files = { "~/.qwen/oauth_creds.json" = "oauth_creds.json" }

[clis.qwen-plain.env]
QWEN_HOME = "{home}"
OPENAI_BASE_URL = "{endpoint_url}"
OPENAI_API_KEY = "{endpoint_key}"
OPENAI_MODEL = "{model}"
QWEN_USAGE_STATISTICS_ENABLED = "false"

[clis.qwen-plain.mcp]
file = "settings.json"
key = "mcpServers.aiswarm"
entry = { httpUrl = "{broker_url}", headers = { Authorization = "Bearer {token}" }, timeout = "{tool_timeout_ms}", trust = true, alwaysLoadTools = true }

[clis.qwen-plain.mcp.settings]
"$version" = 4
security = { auth = { selectedType = "openai" } }
privacy = { usageStatisticsEnabled = false }
model = { generationConfig = { maxRetries = 2, retryInitialDelayMs = 2000, customHeaders = { X-Aiswarm-Agent = "{agent}" } } }

[clis.qwen-plain.usage]
where = { type = "result" }
input_tokens = "usage.input_tokens"
output_tokens = "usage.output_tokens"

[clis.qwen-plain.answer]
where = { type = "result", is_error = false }
text = "result"

[clis.qwen-plain.errors]
exit_codes = { 53 = "turn_limit", 55 = "turn_limit" }
where = { type = "result", is_error = true }
message = "error.message"
rate_limit_lines = ['Retrying in \d+\s*s']
"""

OPENCODE_DESCRIBED = """
# opencode, described without Python: the prompt on stdin, the model endpoint as a provider in its JSON config.
[clis.opencode-plain]
command = ["opencode", "run", "--format", "json", "--title", "aiswarm {agent}"]
prompt = "stdin"
model_args = ["--model", "aiswarm/{model}"]

[clis.opencode-plain.env]
OPENCODE_CONFIG = "{settings_file}"
XDG_CONFIG_HOME = "{home}/config"
XDG_DATA_HOME = "{home}/data"
XDG_STATE_HOME = "{home}/state"
OPENCODE_DISABLE_AUTOUPDATE = "1"
OPENCODE_DISABLE_MODELS_FETCH = "1"
OPENCODE_DISABLE_LSP_DOWNLOAD = "1"

[clis.opencode-plain.mcp]
file = "opencode.json"
key = "mcp.aiswarm"
entry = { type = "remote", url = "{broker_url}", headers = { Authorization = "Bearer {token}" }, timeout = "{tool_timeout_ms}", enabled = true }

[clis.opencode-plain.mcp.settings]
autoupdate = false
share = "disabled"
permission = { "*" = "allow" }
model = "aiswarm/{model}"
small_model = "aiswarm/{model}"

[clis.opencode-plain.mcp.settings.provider.aiswarm]
npm = "@ai-sdk/openai-compatible"
options = { baseURL = "{endpoint_url}", apiKey = "{endpoint_key}", headers = { X-Aiswarm-Agent = "{agent}" } }
models = { "{model}" = { tool_call = true } }

[clis.opencode-plain.usage]
sum = true
where = { type = "step_finish" }
input_tokens = "part.tokens.input"
output_tokens = "part.tokens.output"

[clis.opencode-plain.answer]
where = { type = "text" }
text = "part.text"

[clis.opencode-plain.errors]
where = { type = "error" }
message = "error.data.message"
"""

TOML_ON_STDIN = """
[clis.tomly]
command = ["/opt/tomly/bin/tomly", "run", "--config", "{settings_file}"]
prompt = "stdin"
env = { TOMLY_KEY = "{endpoint_key}", TOMLY_TIMEOUT = "{tool_timeout_seconds}s" }

[clis.tomly.mcp]
file = "conf/tomly.toml"
key = "servers.aiswarm"
entry = { url = "{broker_url}", bearer = "{token}", timeout_seconds = "{tool_timeout_seconds}", model = "{model}" }
settings = { telemetry = false, literal = "{{not a placeholder}}" }

[clis.tomly.usage]
sum = true
where = { event = "step" }
input_tokens = "tokens.in"
output_tokens = "tokens.out"
"""


def described(text: str) -> dict[str, Any]:
    return tomllib.loads(text)["clis"]


def spec(cli: str, tmp_path: Path, **kw: Any) -> AgentSpec:
    return AgentSpec.model_validate(
        {
            "name": f"{cli}-1",
            "cli": cli,
            "token": TOKEN,
            "broker_url": BROKER,
            "aiswarm_home": tmp_path / "aiswarm",
            "user_home": tmp_path / "user",
            **kw,
        }
    )


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The described CLIs registered for one test (the registry is put back afterwards)."""
    monkeypatch.setattr(launcher.adapters, "_ADAPTERS", dict(launcher.adapters._ADAPTERS))
    descriptions = described(QWEN_DESCRIBED) | described(OPENCODE_DESCRIBED) | described(TOML_ON_STDIN)
    for adapter in generic_adapters(descriptions):
        register_adapter(adapter)


def test_a_described_cli_gets_a_private_json_settings_file_with_the_broker_entry(tmp_path: Path) -> None:
    (tmp_path / "user" / ".qwen").mkdir(parents=True)
    (tmp_path / "user" / ".qwen" / "oauth_creds.json").write_text('{"refresh_token": "r"}')
    adapter = get_adapter("qwen-plain")
    home = adapter.prepare_agent_home(spec("qwen-plain", tmp_path, endpoint=ENDPOINT), env={})
    assert home.settings_path == home.root / "settings.json"
    assert stat.S_IMODE(home.settings_path.stat().st_mode) == 0o600
    settings = json.loads(home.settings_path.read_text())
    assert settings["mcpServers"]["aiswarm"] == {
        "httpUrl": BROKER,
        "headers": {"Authorization": f"Bearer {TOKEN}"},
        "timeout": 900_000,
        "trust": True,
        "alwaysLoadTools": True,
    }
    assert settings["model"]["generationConfig"]["customHeaders"] == {"X-Aiswarm-Agent": "qwen-plain-1"}
    assert settings["$version"] == 4
    assert (home.root / "oauth_creds.json").read_text() == '{"refresh_token": "r"}'
    assert [c.kind for c in home.carried if c.write_back] == ["login-file"]
    argv = adapter.command(home, 'say "hi"')
    assert argv == ["qwen", "-p", 'say "hi"', "--yolo", "--output-format", "json", "--model", "m1"]
    env = adapter.env(home, base_env={"HOME": str(tmp_path), "PATH": "/bin"})
    assert env["QWEN_HOME"] == str(home.root) and env["OPENAI_BASE_URL"] == ENDPOINT.base_url
    assert env["OPENAI_API_KEY"] == "sk-endpoint" and env["OPENAI_MODEL"] == "m1"
    assert not adapter.prompt_on_stdin


def test_without_an_endpoint_or_model_their_arguments_and_variables_are_left_out(tmp_path: Path) -> None:
    adapter = get_adapter("qwen-plain")
    home = adapter.prepare_agent_home(spec("qwen-plain", tmp_path), env={"OPENAI_API_KEY": "sk-user"})
    assert adapter.command(home, "p") == ["qwen", "-p", "p", "--yolo", "--output-format", "json"]
    env = adapter.env(home, base_env={"HOME": str(tmp_path), "OPENAI_API_KEY": "sk-user"})
    assert env["OPENAI_API_KEY"] == "sk-user" and "OPENAI_BASE_URL" not in env and "OPENAI_MODEL" not in env
    assert [f.kind for f in adapter.find_credentials(tmp_path / "user", {"OPENAI_API_KEY": "k"})] == [
        "api-key-env"
    ]


def test_a_toml_settings_file_a_prompt_on_stdin_and_number_placeholders(tmp_path: Path) -> None:
    adapter = get_adapter("tomly")
    home = adapter.prepare_agent_home(spec("tomly", tmp_path, endpoint=ENDPOINT), env={})
    assert home.settings_path == home.root / "conf" / "tomly.toml"
    config = tomllib.loads(home.settings_path.read_text())
    assert config == {
        "telemetry": False,
        "literal": "{not a placeholder}",
        "servers": {"aiswarm": {"url": BROKER, "bearer": TOKEN, "timeout_seconds": 900, "model": "m1"}},
    }
    assert adapter.prompt_on_stdin
    assert adapter.command(home, "the prompt") == [
        "/opt/tomly/bin/tomly",
        "run",
        "--config",
        str(home.settings_path),
    ]
    env = adapter.env(home, base_env={"HOME": str(tmp_path)})
    assert env["TOMLY_KEY"] == "sk-endpoint" and env["TOMLY_TIMEOUT"] == "900s"
    assert adapter.find_binary(tmp_path) is None  # a path that does not exist is not found on PATH instead


QWEN_OK = json.dumps(
    [
        {"type": "system"},
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "usage": {"input_tokens": 90, "output_tokens": 7},
        },
    ]
)
QWEN_401 = json.dumps(
    [
        {
            "type": "result",
            "is_error": True,
            "error": {"message": "[API Error: 401 Incorrect API key provided]"},
        }
    ]
)


def test_placeholders_in_keys_are_filled_and_a_key_without_a_value_is_left_out(tmp_path: Path) -> None:
    adapter = get_adapter("opencode-plain")
    home = adapter.prepare_agent_home(spec("opencode-plain", tmp_path, endpoint=ENDPOINT), env={})
    provider = json.loads(home.settings_path.read_text())["provider"]["aiswarm"]
    assert provider["models"] == {"m1": {"tool_call": True}}
    assert provider["options"]["baseURL"] == ENDPOINT.base_url
    bare = adapter.prepare_agent_home(spec("opencode-plain", tmp_path), env={})
    settings = json.loads(bare.settings_path.read_text())
    assert settings["provider"]["aiswarm"]["models"] == {} and "model" not in settings
    assert adapter.prompt_on_stdin and adapter.command(bare, "p")[-2:] == [
        "--title",
        "aiswarm opencode-plain-1",
    ]


def test_usage_and_errors_are_read_where_the_description_says() -> None:
    qwen = get_adapter("qwen-plain")
    usage = qwen.parse_usage(QWEN_OK)
    assert usage is not None and (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (90, 7, 97)
    assert qwen.classify_exit(0, QWEN_OK, "").kind is OutcomeKind.DONE
    assert qwen.classify_exit(1, QWEN_401, "").kind is OutcomeKind.AUTH_FAILURE
    assert qwen.classify_exit(53, "", "").kind is OutcomeKind.TURN_LIMIT
    assert qwen.detect_rate_limit_line("Retrying in 60s (attempt 1/10)")
    steps = "\n".join(json.dumps({"event": "step", "tokens": {"in": 10 * i, "out": i}}) for i in (1, 2, 3))
    summed = get_adapter("tomly").parse_usage(steps + '\n{"event": "done"}\n')
    assert summed is not None
    assert (summed.input_tokens, summed.output_tokens, summed.total_tokens, summed.requests) == (60, 6, 66, 3)
    assert get_adapter("tomly").parse_usage("no json") is None


def test_the_final_answer_is_read_where_the_description_says_else_it_is_the_whole_output() -> None:
    answered = json.dumps([{"type": "result", "is_error": False, "result": "Wrote a.txt"}])
    assert get_adapter("qwen-plain").final_answer(answered) == "Wrote a.txt"
    assert get_adapter("qwen-plain").final_answer(QWEN_401) == ""
    texts = "\n".join(json.dumps({"type": "text", "part": {"text": t}}) for t in ("first", "last"))
    assert get_adapter("opencode-plain").final_answer(texts) == "last"
    assert get_adapter("tomly").final_answer("  plain words\n") == "plain words"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"command": ["x"]}, r"\[clis\.bad\] mcp: Field required"),
        (
            {"command": [], "mcp": {"file": "s.json"}},
            r"\[clis\.bad\] command: List should have at least 1 item",
        ),
        ({"command": ["x", "{promt}"], "mcp": {"file": "s.json"}}, r"unknown placeholder \{promt\}"),
        (
            {"command": ["x"], "mcp": {"file": "../escape.json"}},
            r"mcp\.file: Value error, must be a relative path",
        ),
        (
            {"command": ["x"], "mcp": {"file": "s.json"}, "colour": "red"},
            r"colour: Extra inputs are not permitted",
        ),
        (
            {"command": ["x"], "mcp": {"file": "s.json"}, "errors": {"exit_codes": {"3": "sad"}}},
            r"errors\.exit_codes\.3: Input should be 'done', 'auth_failure'",
        ),
        (
            {"command": ["x"], "mcp": {"file": "s.json"}, "prompt": "argument"},
            r"the command has no \{prompt\}",
        ),
    ],
)
def test_a_wrong_description_is_refused_in_one_line_naming_the_field(
    table: dict[str, Any], message: str
) -> None:
    with pytest.raises(GenericCliError, match=message) as info:
        generic_adapters({"bad": table})
    assert "\n" not in str(info.value)


def test_the_config_file_is_read_and_a_built_in_name_cannot_be_taken(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    assert configured_adapters(config) == []
    config.write_text("[broker]\nport = 1\n")
    assert configured_adapters(config) == []
    config.write_text(TOML_ON_STDIN.replace("clis.tomly", "clis.tomly2"))
    assert register_configured_clis(config) == ["tomly2"]
    assert get_adapter("tomly2").prompt_on_stdin
    config.write_text('[clis.qwen]\ncommand = ["qwen"]\nmcp = { file = "s.json" }\n')
    with pytest.raises(GenericCliError, match=r"would replace the built-in qwen adapter"):
        register_configured_clis(config)
    config.write_text("[clis\n")
    with pytest.raises(GenericCliError, match="is not valid TOML"):
        register_configured_clis(config)


def test_the_readme_example_is_a_valid_description(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    example = readme.split("## Worker CLIs", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    [adapter] = generic_adapters(described(example))
    register_adapter(adapter)
    home = get_adapter("qwen-plain").prepare_agent_home(
        spec("qwen-plain", tmp_path, endpoint=ENDPOINT), env={}
    )
    assert json.loads(home.settings_path.read_text())["mcpServers"]["aiswarm"]["httpUrl"] == BROKER
    assert get_adapter("qwen-plain").detect_rate_limit_line("Retrying in 60s (attempt 1/10)")


# --- the real qwen-code, described in the config file, through aiswarm launch -------------------------


@pytest.fixture(
    params=[("qwen-plain", QWEN_DESCRIBED), ("opencode-plain", OPENCODE_DESCRIBED)], ids=["qwen", "opencode"]
)
def described_swarm(request: pytest.FixtureRequest, launch_swarm: LaunchSwarm) -> Iterator[LaunchedSwarm]:
    """A broker, the scripted model and ``aiswarm launch --cli NAME``, NAME described in config.toml only."""
    cli, description = request.param
    swarm = launch_swarm(cli=cli, agents=(f"{cli}-1",), config=description, name=cli)
    yield swarm
    swarm.stop()


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_a_real_cli_described_only_in_the_config_file_does_tasks_through_launch(
    described_swarm: LaunchedSwarm,
) -> None:
    swarm = described_swarm
    [agent] = swarm.agents
    agent_log = swarm.agent_log(agent)

    swarm.wait_parked(1, timeout=120)
    ids = swarm.submit_specs(
        [
            {"title": "block", "prompt": "WRITE out/a.txt\n```\nfrom a CLI\nin the config file\n```\n"},
            {"title": "line", "prompt": "Create the file out/b.txt containing exactly: described"},
        ]
    )
    tasks = swarm.wait_done(ids, timeout=240)
    assert [t.status.value for t in tasks] == ["completed", "completed"], swarm.tail()
    assert {t.attempts[-1].agent for t in tasks} == {agent}
    assert (swarm.workdir / "out" / "a.txt").read_text() == "from a CLI\nin the config file\n"
    assert (swarm.workdir / "out" / "b.txt").read_text() == "described"
    assert swarm.model.stats()["agents"][agent]["work"] == 2  # the header from the described settings

    def usage_reports() -> list[str] | None:
        found = re.findall(r'usage: \{.*"total_tokens": (\d+)', agent_log.read_text())
        return found if len(found) >= 2 else None

    # the report reaches the broker before the CLI has exited
    usages = poll(usage_reports, 60, f"{agent}'s two usage reports")
    assert all(int(total) > 0 for total in usages), swarm.tail()
