"""The builder configuration: approved mirrors, HF_ENDPOINT, ordering by history."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.config import BuilderConfig, load_config
from builder.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def config(**values) -> BuilderConfig:
    return BuilderConfig.model_validate(values)


TWO = {"mirrors": [{"name": "hub", "url": "https://huggingface.co"}, {"name": "olah", "url": "https://olah.internal/"}]}


def test_the_project_configuration_approves_only_the_official_hub(monkeypatch) -> None:
    monkeypatch.delenv("BUILDER_CONFIG", raising=False)
    loaded = load_config(ROOT)
    assert [(m.name, m.url) for m in loaded.mirrors] == [("hub", "https://huggingface.co")]


def test_mirrors_keep_their_order_and_lose_trailing_slashes() -> None:
    fetch = config(**TWO).fetch_config(None)
    assert [(m.name, m.url) for m in fetch.mirrors] == [("hub", "https://huggingface.co"), ("olah", "https://olah.internal")]


def test_hf_endpoint_must_be_approved_and_goes_first() -> None:
    assert [m.name for m in config(**TWO).fetch_config("https://olah.internal").mirrors] == ["olah", "hub"]
    with pytest.raises(ConfigError, match="HF_ENDPOINT https://hf-mirror.com is not an approved mirror"):
        config(**TWO).fetch_config("https://hf-mirror.com")


def test_history_reorders_unless_disabled() -> None:
    import time

    from builder.ranking import MirrorAttempt

    hub_fails = [MirrorAttempt("hub", time.time(), "failed", 0, 1.0)] * 4
    assert [m.name for m in config(**TWO).fetch_config(None, hub_fails).mirrors] == ["olah", "hub"]
    pinned = config(**TWO, prefer_fastest_mirror=False)
    assert [m.name for m in pinned.fetch_config(None, hub_fails).mirrors] == ["hub", "olah"]
    # an explicit endpoint still wins over history
    assert [m.name for m in config(**TWO).fetch_config("https://huggingface.co", hub_fails).mirrors] == ["hub", "olah"]


def test_a_yaml_config_file_and_its_errors(tmp_path: Path) -> None:
    good = tmp_path / "builder.yaml"
    good.write_text("mirrors:\n  - {name: local, url: http://127.0.0.1:8960}\nfetch: {concurrency: 2}\n")
    loaded = load_config(ROOT, good)
    assert loaded.fetch.concurrency == 2 and loaded.mirrors[0].url == "http://127.0.0.1:8960"
    bad = tmp_path / "bad.yaml"
    bad.write_text("mirrors:\n  - {name: local, url: ftp://x}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: mirrors.0.url: Value error, expected an http\(s\) URL"):
        load_config(ROOT, bad)
    with pytest.raises(ConfigError, match="cannot read the builder configuration"):
        load_config(ROOT, tmp_path / "missing.yaml")


def test_ledger_location(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BUILDER_LEDGER", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert BuilderConfig().ledger_location == tmp_path / "builder" / "ledger.sqlite3"
    monkeypatch.setenv("BUILDER_LEDGER", str(tmp_path / "x.db"))
    assert BuilderConfig().ledger_location == tmp_path / "x.db"



def test_the_tests_default_ledger_is_the_sessions_own(private_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A builder a test starts without BUILDER_LEDGER writes the session's ledger, not the user's
    (tests/conftest.py's private_state; under pytest-xdist each worker has its own)."""
    monkeypatch.delenv("BUILDER_LEDGER", raising=False)
    location = Path(config().ledger_location)
    assert location.is_relative_to(private_state) and not location.is_relative_to(Path.home())
