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
    assert any("no login found" in p for p in check.problems)


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
    console = Console(record=True, width=200)
    render_doctor(report, console)
    text = console.export_text()
    assert "gemini" in text and "api-key-env" in text and "/health" in text
