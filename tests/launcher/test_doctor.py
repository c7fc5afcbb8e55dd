"""Doctor: installed CLIs and their versions, Node, logins, and the broker's /health."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console

from launcher.adapters import get_adapter
from launcher.doctor import check_broker, check_cli, render_doctor, run_doctor
from tests.clis import InstalledClis


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "ok"}' if self.path == "/health" else b"no"
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fake_cli(directory: Path, name: str, version: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / name
    binary.write_text(f"#!/bin/sh\necho {version}\n")
    binary.chmod(0o755)
    return binary


def test_broker_health_answers(health_server: str) -> None:
    check = check_broker(f"{health_server}/mcp")
    assert check.ok and check.url == f"{health_server}/health" and "ok" in check.detail


def test_broker_not_running_says_what_to_do() -> None:
    check = check_broker("http://127.0.0.1:1/mcp", timeout=0.5)
    assert not check.ok and "aiswarm serve" in check.detail


def test_installed_cli_with_login_is_ok(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_cli(bin_dir, "opencode", "1.18.33")
    user = tmp_path / "user"
    (user / ".local/share/opencode").mkdir(parents=True)
    (user / ".local/share/opencode/auth.json").write_text("{}")
    check = check_cli(get_adapter("opencode"), tmp_path / "home", user_home=user, env={"PATH": str(bin_dir)})
    assert check.installed and check.source == "PATH" and check.version == "1.18.33"
    assert [c.kind for c in check.credentials] == ["auth-file"]
    assert check.ok, check.problems


def test_private_install_wins_and_wrong_version_and_missing_login_are_reported(tmp_path: Path) -> None:
    home = tmp_path / "home"
    fake_cli(home / "clis" / "opencode" / "node_modules" / ".bin", "opencode", "1.0.0")
    check = check_cli(
        get_adapter("opencode"), home, user_home=tmp_path / "nobody", env={"PATH": "/nonexistent"}
    )
    assert check.source == "aiswarm"
    assert any("differs from the tested 1.18.33" in p for p in check.problems)
    assert any("no key or login found: name a provider" in p for p in check.problems)


def test_missing_cli_points_at_install_cli(tmp_path: Path) -> None:
    check = check_cli(
        get_adapter("gemini"), tmp_path, user_home=tmp_path, env={"PATH": str(tmp_path / "none")}
    )
    assert not check.installed
    assert any("aiswarm install-cli gemini" in p for p in check.problems)
    assert any("needs Node >= 20" in p for p in check.problems)


def test_report_renders_every_cli_and_the_broker(tmp_path: Path, health_server: str) -> None:
    report = run_doctor(
        tmp_path,
        broker_url=health_server,
        user_home=tmp_path,
        env={"PATH": str(tmp_path), "GEMINI_API_KEY": "k"},
    )
    assert [c.name for c in report.clis] == ["claude", "codex", "gemini", "opencode", "qwen"]
    assert report.broker is not None and report.broker.ok
    assert not report.ok
    console = Console(record=True, width=100)
    render_doctor(report, console)
    text = console.export_text()
    assert "gemini" in text and "api-key" in text and "/health" in text
    problems = [f"{c.name}: {p}" for c in report.clis for p in c.problems]
    assert problems and all(line in text.splitlines() for line in problems), text  # one line each, unfolded
    assert "Traceback" not in text


def test_a_vendored_program_without_its_execute_bit_is_reported_with_the_fix(tmp_path: Path) -> None:
    home = tmp_path / "home"
    package = home / "clis" / "qwen" / "node_modules" / "@qwen-code" / "qwen-code"
    (package / "vendor" / "ripgrep" / "x64-linux").mkdir(parents=True)
    (package / "package.json").write_text('{"name": "@qwen-code/qwen-code", "version": "0.24.4"}')
    rg = package / "vendor" / "ripgrep" / "x64-linux" / "rg"
    rg.write_text("")
    rg.chmod(0o644)
    entry = package / "cli.js"
    entry.write_text("#!/bin/sh\necho 0.24.4\n")
    entry.chmod(0o755)
    bin_dir = home / "clis" / "qwen" / "node_modules" / ".bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "qwen").symlink_to(entry)
    env = {"PATH": "/nonexistent", "OPENAI_API_KEY": "k"}
    check = check_cli(get_adapter("qwen"), home, user_home=tmp_path, env=env)
    assert any(
        "vendor/ripgrep/x64-linux/rg is not executable" in p and "install-cli qwen" in p
        for p in check.problems
    )
    rg.chmod(0o755)
    assert not any(
        "not executable" in p
        for p in check_cli(get_adapter("qwen"), home, user_home=tmp_path, env=env).problems
    )


def _files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def test_a_cli_that_writes_into_its_home_to_print_its_version_writes_into_a_scratch_home(
    tmp_path: Path,
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    binary = bin_dir / "gemini"
    binary.write_text(
        "#!/bin/sh\n"
        'for d in "$HOME/.gemini" "${GEMINI_CLI_HOME:-$HOME}/.gemini" "${XDG_STATE_HOME:-$HOME/.local/state}" '
        '"${XDG_CONFIG_HOME:-$HOME/.config}"; do mkdir -p "$d" && touch "$d/projects.json.1234.tmp"; done\n'
        "touch written-in-the-working-directory\n"
        "echo 0.61.0\n"
    )
    binary.chmod(0o755)
    user, moved, xdg = tmp_path / "user", tmp_path / "moved", tmp_path / "xdg"
    for directory in (user / ".gemini", moved, xdg):
        directory.mkdir(parents=True)
    (user / ".gemini" / "settings.json").write_text("{}")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(user),
        "GEMINI_CLI_HOME": str(moved),
        "XDG_STATE_HOME": str(xdg / "state"),
        "XDG_CONFIG_HOME": str(xdg / "config"),
        "GEMINI_API_KEY": "k",
    }

    check = check_cli(get_adapter("gemini"), tmp_path / "aiswarm", user_home=user, env=env)

    assert check.version == "0.61.0"
    assert _files_under(user) == [user / ".gemini" / "settings.json"]
    assert _files_under(moved) == [] and _files_under(xdg) == []
    assert not (Path.cwd() / "written-in-the-working-directory").exists()


@pytest.mark.e2e
def test_doctor_with_the_real_clis_leaves_the_users_cli_homes_as_they_were(
    clis: InstalledClis, tmp_path: Path
) -> None:
    user = tmp_path / "user"
    (user / ".gemini").mkdir(parents=True)
    (user / ".gemini" / "settings.json").write_text("{}")
    (user / ".qwen").mkdir()
    env = {"PATH": clis.path_env(), "HOME": str(user), "GEMINI_API_KEY": "k", "OPENAI_API_KEY": "k"}

    report = run_doctor(tmp_path / "aiswarm", names=["gemini", "qwen", "opencode"], user_home=user, env=env)

    assert all(c.version == get_adapter(c.name).version for c in report.clis), report.clis
    assert _files_under(user) == [user / ".gemini" / "settings.json"]
