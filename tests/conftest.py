"""Shared test fixtures.

Fixtures (session-scoped ones start real services once per test session):

- ``orthanc`` (tests/fixtures/orthanc.py): a real Orthanc PACS with DICOMweb, on free
  loopback ports, authentication on with generated credentials, AET whitelist.
- ``tmp_site``: a SiteConfig whose index and cache live in a fresh temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jipkit.config import SiteConfig

pytest_plugins = ["tests.fixtures.orthanc"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test sees the developer's own JIP configuration or data directories."""
    import os

    for k in list(os.environ):
        if k.startswith("JIP_"):
            monkeypatch.delenv(k)
    home = tmp_path_factory.mktemp("home")  # per test: no test sees another's user files
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))


@pytest.fixture
def tmp_site(tmp_path: Path) -> SiteConfig:
    """A site configuration with its index and cache under ``tmp_path``."""
    return SiteConfig(
        name="test", index_path=tmp_path / "index.sqlite", cache_dir=tmp_path / "cache", workers=2
    )
