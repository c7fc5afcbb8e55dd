"""The checks ``aiswarm launch`` makes before an agent takes any work, and that a closed circuit is probed with.

For each CLI: its binary is found and runs (``--version``), its Node is new enough. For each agent: its
provider's key can be read (or, on the CLI's own login, a login is found). Each problem is one line naming the
agent, what is wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from launcher.adapters import get_adapter
from launcher.adapters.install import node_major, runtime_env
from launcher.doctor import cli_version
from launcher.providers import ProviderError


def cli_problems(cli: str, home: Path, env: Mapping[str, str]) -> list[str]:
    """What stops ``cli`` from running at all: no binary, a binary that does not run, too old a Node."""
    adapter = get_adapter(cli)
    run_env = runtime_env(home, env)
    binary = adapter.find_binary(home, path=run_env.get("PATH"))
    if binary is None:
        return [f"{cli} is not installed: run `aiswarm install-cli {cli}`"]
    problems: list[str] = []
    if adapter.min_node_major is not None and (node_major(run_env) or 0) < adapter.min_node_major:
        problems.append(f"{cli} needs Node >= {adapter.min_node_major}: `aiswarm install-cli {cli}` adds it")
    elif cli_version(binary, run_env) is None:
        problems.append(f"`{binary} --version` failed: reinstall with `aiswarm install-cli {cli}`")
    return problems


def credential_problem(
    cli: str,
    endpoint_error: ProviderError | None,
    has_endpoint: bool,
    user_home: Path,
    env: Mapping[str, str],
) -> str | None:
    """Why an agent of ``cli`` has no credentials, or None: its provider's key could not be read
    (``endpoint_error``), or it runs on the CLI's own login and none is found."""
    if endpoint_error is not None:
        return str(endpoint_error)
    if has_endpoint:
        return None
    if get_adapter(cli).find_credentials(user_home, env):
        return None
    return (
        f"no {cli} login or API key found: name a provider (--cli {cli}@NAME, see `aiswarm doctor`) "
        "or --model-endpoint"
    )
