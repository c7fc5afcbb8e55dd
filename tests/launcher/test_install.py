"""Installing pinned CLIs under the aiswarm home: idempotent, one-line errors, Node on PATH."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher.adapters.install import (
    PINNED_CLIS,
    InstallError,
    cli_prefix,
    install_cli,
    node_package_name,
    node_path,
    runtime_env,
)


def fake_npm(tmp_path: Path, script: str) -> str:
    """An ``npm`` stand-in: a shell script with the given body (arguments in $@)."""
    npm = tmp_path / "fake-npm"
    npm.write_text("#!/bin/sh\n" + script)
    npm.chmod(0o755)
    return str(npm)


INSTALLING_NPM = """
prefix="$3"; for spec; do :; done
pkg="${spec%@*}"; version="${spec##*@}"
mkdir -p "$prefix/node_modules/$pkg" "$prefix/node_modules/.bin"
printf '{"name": "%s", "version": "%s"}' "$pkg" "$version" > "$prefix/node_modules/$pkg/package.json"
touch "$prefix/node_modules/.bin/opencode"
echo "$@" >> "$prefix/calls.log"
"""


def test_pins_are_the_measured_versions() -> None:
    assert {n: p.spec for n, p in PINNED_CLIS.items()} == {
        "qwen": "@qwen-code/qwen-code@0.24.4",
        "gemini": "@google/gemini-cli@0.61.0",
        "opencode": "opencode-ai@1.18.33",
        "codex": "@openai/codex@0.171.0",
        "claude": "@anthropic-ai/claude-code@2.1.332",
    }


def test_install_runs_npm_into_the_private_prefix_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    npm = fake_npm(tmp_path, INSTALLING_NPM)
    first = install_cli("opencode", home, npm=npm)
    assert first.installed_now and first.version == "1.18.33"
    assert first.prefix == cli_prefix(home, "opencode") == home / "clis" / "opencode"
    assert first.binary == home / "clis" / "opencode" / "node_modules" / ".bin" / "opencode"
    again = install_cli("opencode", home, npm=npm)
    assert not again.installed_now
    assert len((first.prefix / "calls.log").read_text().splitlines()) == 1, "the second call must not run npm"


def test_unknown_cli_is_refused_with_the_known_names(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="known CLIs are claude, codex, gemini, opencode, qwen"):
        install_cli("agy", tmp_path)


def test_missing_npm_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(InstallError, match="npm not found on PATH") as info:
        install_cli("opencode", tmp_path / "home")
    assert "\n" not in str(info.value)


def test_unreachable_registry_is_named(tmp_path: Path) -> None:
    npm = fake_npm(
        tmp_path, "echo 'npm error code ENOTFOUND' >&2\necho 'npm error network request failed' >&2\nexit 1\n"
    )
    with pytest.raises(
        InstallError, match=r"npm registry unreachable while installing opencode-ai@1\.18\.33"
    ):
        install_cli("opencode", tmp_path / "home", npm=npm)


def test_other_npm_failures_quote_the_last_line(tmp_path: Path) -> None:
    npm = fake_npm(tmp_path, "echo 'npm error EACCES: permission denied' >&2\nexit 243\n")
    with pytest.raises(InstallError, match=r"exit 243\): npm error EACCES: permission denied"):
        install_cli("opencode", tmp_path / "home", npm=npm)


def test_runtime_env_puts_private_node_first_only_when_installed(tmp_path: Path) -> None:
    assert node_path(tmp_path) is None
    assert runtime_env(tmp_path, {"PATH": "/usr/bin"})["PATH"] == "/usr/bin"
    bin_dir = tmp_path / "node" / "node_modules" / node_package_name() / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "node").write_text("")
    assert node_path(tmp_path) == bin_dir
    assert runtime_env(tmp_path, {"PATH": "/usr/bin"})["PATH"] == f"{bin_dir}{os.pathsep}/usr/bin"
