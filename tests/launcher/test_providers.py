"""Model providers from config.toml: keys from their source, environment overrides, probes without model requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.doctor import check_providers
from launcher.providers import ProviderError, ProviderKind, load_providers
from launcher.scripted_model import ScriptedModelServer

CONFIG = """
port = 8999

[providers.openrouter]
kind = "openai-compatible"
base_url = "https://openrouter.ai/api/v1"
model = "qwen/qwen3-coder:free"
key_env = "OPENROUTER_API_KEY"

[providers.mine]
kind = "cli-login"
"""


def test_providers_are_read_from_the_homes_config_and_overridden_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.toml").write_text(CONFIG)
    monkeypatch.setenv("AISWARM_PROVIDERS__OPENROUTER__MODEL", "other/model")
    providers = load_providers(tmp_path)
    assert providers["openrouter"].kind is ProviderKind.OPENAI_COMPATIBLE
    assert providers["openrouter"].model == "other/model"
    endpoint = providers["openrouter"].endpoint({"OPENROUTER_API_KEY": "sk-secret"})
    assert endpoint is not None and endpoint.api_key == "sk-secret" and "sk-secret" not in repr(endpoint)
    assert providers["mine"].endpoint({}) is None


def test_a_missing_key_and_a_bad_table_are_one_line_each(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(CONFIG)
    with pytest.raises(ProviderError, match=r"\$OPENROUTER_API_KEY is not set") as missing:
        load_providers(tmp_path)["openrouter"].endpoint({})
    assert "\n" not in str(missing.value)
    (tmp_path / "config.toml").write_text('[providers.x]\nkind = "openai-compatible"\n')
    with pytest.raises(ProviderError, match=r"\[providers.x\] needs a key source") as bad:
        load_providers(tmp_path)
    assert "\n" not in str(bad.value)


def test_doctor_probes_each_provider_with_a_models_listing_and_names_a_refused_key(tmp_path: Path) -> None:
    with ScriptedModelServer() as model:
        (tmp_path / "config.toml").write_text(
            f'[providers.local]\nkind = "openai-compatible"\nbase_url = "{model.url}/v1"\nkey_env = "K"\n'
            f'[providers.gem]\nkind = "gemini-api"\nbase_url = "{model.url}"\nkey_env = "K"\n'
        )
        assert [(c.name, c.ok) for c in check_providers(tmp_path, {"K": "k"})] == [
            ("gem", True),
            ("local", True),
        ]
        model.inject_fault(status=401, message="Invalid API key")
        refused = check_providers(tmp_path, {"K": "k"})
        assert all(not c.ok and "key was refused (HTTP 401)" in c.detail for c in refused), refused
        assert model.stats()["by_kind"].get("work", 0) == 0
