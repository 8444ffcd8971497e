import pytest

from daemon.config import load_config, parse_config
from daemon.errors import ConfigError


def test_defaults_need_only_the_two_paths(tmp_path):
    config = parse_config({"library": {"root": str(tmp_path)}, "state_dir": str(tmp_path / "s")})
    assert config.library.settle_seconds == 10
    assert config.library.reconcile_minutes == 15
    assert config.review.host == "127.0.0.1" and config.review.port == 8650
    assert config.db_url.endswith("genretagger.db")


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"library\.setle_seconds: unknown key"):
        parse_config({"library": {"root": str(tmp_path), "setle_seconds": 3},
                      "state_dir": str(tmp_path)})


def test_bad_value_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"workers\.decode_timeout"):
        parse_config({"library": {"root": str(tmp_path)}, "state_dir": str(tmp_path),
                      "workers": {"decode_timeout": -1}})


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("library = [")
    with pytest.raises(ConfigError, match="config.toml: not valid TOML"):
        load_config(path)
