"""The README documents every tool with all of its arguments, its commands, variables and client entries."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aiswarm_server.cli import environment_variables
from aiswarm_server.config import BrokerSettings
from aiswarm_server.models import Role
from aiswarm_server.tools import BrokerRef, build_servers
from launcher.isolation.hook import ENV_NAMES
from launcher.primaries.base import AiswarmServer
from launcher.primaries.claude import ClaudeCodeClient
from tests.readme_blocks import README, code_blocks, commands, section

pytestmark = pytest.mark.anyio


def readme_row(tool: str) -> str:
    for line in README.splitlines():
        if line.startswith(f"| `{tool}` |"):
            return line
    raise AssertionError(f"README has no table row for tool `{tool}`")


async def test_every_tool_and_argument_is_documented() -> None:
    servers = build_servers(BrokerRef(), BrokerSettings())
    documented = 0
    for role in (Role.WORKER, Role.PRIMARY):
        for tool in await servers[role].list_tools():
            row = readme_row(tool.name)
            schema = tool.input_schema or {}
            arguments = set(schema.get("properties", {}))
            nested = {p for d in schema.get("$defs", {}).values() for p in d.get("properties", {})}
            in_row = set(re.findall(r"`([a-z_]+)`", row.split("|")[2])) - {"all", "any"}
            assert arguments <= in_row, f"{tool.name}: README misses {sorted(arguments - in_row)}"
            assert in_row <= arguments | nested, (
                f"{tool.name}: README names unknown {sorted(in_row - arguments - nested)}"
            )
            documented += 1
    assert documented == 17
    admin_only = {t.name for t in await servers[Role.ADMIN].list_tools()} - {
        t.name for t in await servers[Role.PRIMARY].list_tools()
    }
    for name in admin_only:
        assert f"`{name}`" in README


def test_getting_started_installs_uv_honestly_and_runs_the_ci_test_command() -> None:
    [block] = code_blocks(section("Getting started"), "bash")
    given = commands(block)
    assert "uv run aiswarm demo" in given and "uv run pytest" in given and "uv tool install ." in given
    # A bare `pip install uv` is refused by the Pythons most systems ship (PEP 668).
    assert not [c for c in given if re.match(r"(python3? -m )?pip3? install .*\buv\b", c)], given
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "\nuv run pytest\n" in ci, ".ci/run must run the README's test command"


def test_the_configuration_table_lists_exactly_the_variables_aiswarm_reads() -> None:
    table = section("Configuration").split("| variable |", 1)[1].split("\n\n", 1)[0]
    documented = {
        name
        for row in table.splitlines()[2:]
        for name in re.findall(r"`(AISWARM_[A-Z_<>]+)`", row.split("|")[1])
    }
    read = set(environment_variables())
    assert read - documented == set(), "README's Configuration table misses these"
    assert documented - read == set(), "README's Configuration table names variables nothing reads"
    # A variable read straight from os.environ, not declared on an option or a setting, must be listed too.
    root = Path(__file__).resolve().parents[1]
    dev_tools = ("aiswarm_server/bench/", "launcher/scripted_model/")  # they document their own variables
    named_in_code = {
        name
        for package in ("aiswarm_server", "launcher")
        for path in (root / package).rglob("*.py")
        if not str(path.relative_to(root)).startswith(dev_tools)
        for name in re.findall(r"\bAISWARM_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8"))
        if not name.startswith("AISWARM_PROVIDERS__")
    }
    set_for_the_merge_hook = {
        f"AISWARM_{name}" for name in ENV_NAMES.values()
    }  # aiswarm sets them, never reads them
    named_in_code -= set_for_the_merge_hook
    assert named_in_code - documented == set(), "the code names variables README's Configuration table misses"


def test_the_hand_written_claude_code_entry_has_the_shape_install_client_writes() -> None:
    [snippet] = code_blocks(section("Using it for real"), "json")
    entry = json.loads(snippet)["mcpServers"]["aiswarm"]
    server = AiswarmServer(transport="http", url="http://127.0.0.1:8765/mcp", token="t")
    written = ClaudeCodeClient().server_entry(server)
    assert entry["type"] == written["type"] == "http"
    assert set(entry) == set(written) - {"timeout"}
    assert entry["url"] == server.url and set(entry["headers"]) == {"Authorization"}


async def test_the_contract_names_every_tool_with_its_arguments_and_reply_fields() -> None:
    contract = (Path(__file__).resolve().parents[1] / "docs" / "CONTRACT.md").read_text(encoding="utf-8")
    servers = build_servers(BrokerRef(), BrokerSettings())
    tools = {t.name: t for role in Role for t in await servers[role].list_tools()}
    table = {role: contract.split(f"| {role.value} |", 1)[1].split("\n", 1)[0] for role in Role}
    for role in (Role.WORKER, Role.PRIMARY):
        listed = set(re.findall(r"[a-z_]+_[a-z_]+|[a-z]+_[a-z]+", table[role]))
        assert {t.name for t in await servers[role].list_tools()} <= listed, table[role]
    admin_only = {t.name for t in await servers[Role.ADMIN].list_tools()} - {
        t.name for t in await servers[Role.PRIMARY].list_tools()
    }
    for name in admin_only:
        assert name in table[Role.ADMIN], f"CONTRACT's admin row misses {name}"
    for name, tool in tools.items():
        entry = contract.split(f"`{name}(", 1)
        assert len(entry) == 2, f"CONTRACT does not describe {name}(...)"
        signature = entry[1].split(")", 1)[0]
        arguments = set((tool.input_schema or {}).get("properties", {}))
        named = set(re.findall(r"([a-z_]+)(?:=|,|$)", signature))
        assert arguments <= named, f"{name}: CONTRACT misses {sorted(arguments - named)}"
        reply = entry[1].split("\n-", 1)[0]
        fields = set((tool.output_schema or {}).get("properties", {}))
        missing = {f for f in fields if not re.search(rf"\b{f}\b", reply)}
        assert not missing, f"{name}: CONTRACT's reply misses {sorted(missing)}"


def test_the_design_layout_lists_every_module_and_nothing_that_is_gone() -> None:
    """docs/DESIGN.md's layout block names each module of the two packages (one line each, indented by folder)."""
    root = Path(__file__).resolve().parents[1]
    design = (root / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    block = design.split("```\naiswarm_server/", 1)[1].split("```", 1)[0]
    documented: set[str] = set()
    folders: list[str] = []
    for line in ("aiswarm_server/" + block).splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        folders = folders[:depth]
        if name.endswith("/"):
            folders.append(name)
            documented.add("".join(folders))
        else:
            documented.add("".join(folders) + name)
    summarized = ("aiswarm_server/bench/", "launcher/scripted_model/", "aiswarm_server/store/migrations/")
    modules = {
        str(path.relative_to(root))
        for package in ("aiswarm_server", "launcher")
        for path in (root / package).rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
        and not str(path.relative_to(root)).startswith(summarized)
    }
    files = {entry for entry in documented if not entry.endswith("/")}
    assert modules - files == set(), "DESIGN.md's layout misses these modules"
    assert {f for f in files if not (root / f).exists()} == set(), (
        "DESIGN.md's layout names files that are gone"
    )
    assert {d for d in documented if d.endswith("/") and not (root / d).is_dir()} == set()
