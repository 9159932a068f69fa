"""Site configuration: file discovery, validation messages, environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

import jipkit as jip
from jipkit.config import BasicAuth, DicomwebSourceConfig, default_config_path, load_config


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """
name = "site-a"
index_path = "data/index.sqlite"
[[sources]]
name = "pacs"
kind = "dicomweb"
url = "https://pacs.example.org/dicom-web/"
auth = { type = "basic", username = "jip", password_env = "PACS_PW" }
max_concurrent = 2
[[sources]]
name = "exports"
kind = "folder"
path = "exports"
"""


def test_defaults_without_any_file() -> None:
    cfg = load_config()
    assert cfg.name == "local" and cfg.sources == [] and cfg.path is None
    assert cfg.index_path.name == "index.sqlite"


def test_explicit_file_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "site.toml", GOOD))
    assert cfg.name == "site-a"
    assert cfg.index_path == tmp_path / "data" / "index.sqlite"
    web = cfg.source("pacs")
    assert isinstance(web, DicomwebSourceConfig) and web.url == "https://pacs.example.org/dicom-web"
    assert cfg.source("exports").path == tmp_path / "exports"  # type: ignore[union-attr]


def test_jip_config_then_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(default_config_path(), 'name = "from-default"\n')
    assert load_config().name == "from-default"
    monkeypatch.setenv("JIP_CONFIG", str(write(tmp_path / "other.toml", 'name = "from-env"\n')))
    assert load_config().name == "from-env"
    assert jip.connect().config.name == "from-env"


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JIP_NAME", "overridden")
    monkeypatch.setenv("JIP_CACHE_MAX_BYTES", "1234")
    cfg = load_config(write(tmp_path / "site.toml", GOOD))
    assert cfg.name == "overridden" and cfg.cache_max_bytes == 1234


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('nmae = "x"\n', ["nmae", "not a known key"]),
        ('cache_max_bytes = "lots"\n', ["cache_max_bytes", "'lots'"]),
        (
            '[[sources]]\nname = "p"\nkind = "dicomweb"\nurl = "ftp://x"\n',
            ["sources.0", "http:// or https://"],
        ),
        ('[[sources]]\nname = "p"\nkind = "dimse"\nhost = "h"\n', ["port", "required"]),
        ('[[sources]]\nname = "p"\nkind = "tape"\n', ["sources.0", "tape"]),
        ("name = [", ["not valid TOML"]),
    ],
)
def test_invalid_file_names_the_key(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(jip.ConfigError) as info:
        load_config(path)
    for f in fragments:
        assert f in str(info.value)
    assert str(path) in str(info.value)


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(jip.ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = BasicAuth(username="u", password_env="PACS_PW")
    with pytest.raises(jip.ConfigError, match="PACS_PW"):
        auth.secret()
    monkeypatch.setenv("PACS_PW", "s3cret")
    assert auth.secret() == "s3cret"
    assert "s3cret" not in repr(BasicAuth(username="u", password="s3cret"))


def test_unknown_source_name(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "site.toml", GOOD))
    with pytest.raises(jip.ConfigError, match="configured: pacs, exports"):
        cfg.source("nope")
