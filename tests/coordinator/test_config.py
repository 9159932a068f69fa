"""The coordinator's configuration: TOML file, JIP_COORD_* overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from jipkit.coordinator.config import load_coordinator_config
from jipkit.errors import ConfigError


def test_defaults_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_coordinator_config()
    assert (cfg.host, cfg.lease_s, cfg.max_attempts, cfg.long_poll_max_s, cfg.review_quorum) == (
        "127.0.0.1",
        60.0,
        3,
        25.0,
        2,
    )
    path = tmp_path / "coordinator.toml"
    path.write_text(
        'data_dir = "state"\nport = 9100\nlease_s = 30\npublic_url = "https://jip.example.org/"\n'
    )
    monkeypatch.setenv("JIP_COORD_PORT", "9200")
    cfg = load_coordinator_config(path)
    assert (
        cfg.data_dir == tmp_path / "state" and cfg.database_file == tmp_path / "state" / "coordinator.sqlite"
    )
    assert (cfg.port, cfg.lease_s, cfg.url) == (9200, 30.0, "https://jip.example.org")
    monkeypatch.setenv("JIP_COORD_CONFIG", str(path))
    assert load_coordinator_config(port=9300).port == 9300


def test_unknown_keys_and_bad_values_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text("lease = 30\nlong_poll_max_s = 60\n")
    with pytest.raises(ConfigError) as err:
        load_coordinator_config(path)
    assert "lease: not a known key" in str(err.value) and "long_poll_max_s" in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_coordinator_config(tmp_path / "missing.toml")
