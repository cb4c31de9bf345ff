"""The deployment config: file, environment, systemd credentials, errors that say where."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.config import DEMO, ConfigError, load_settings


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = 'device_id = "a"\n[mqtt]\nhost = "broker"\nport = 1884\n'
    config = write(tmp_path / "site.toml", text)
    monkeypatch.setenv("EDGED_MQTT__PORT", "8883")
    settings = load_settings(config)
    assert (settings.device_id, settings.mqtt.host, settings.mqtt.port) == ("a", "broker", 8883)


def test_secrets_come_from_systemd_credentials(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt-password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = write(tmp_path / "site.toml", '[mqtt]\nusername = "gate"\n')
    settings = load_settings(config)
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)  # never printed or logged
    (credentials / "mqtt-password").write_text("")  # install.sh leaves an empty one
    with pytest.raises(ConfigError, match="username"):
        load_settings(config)  # a username without a password is refused
    monkeypatch.setenv("EDGED_MQTT__PASSWORD", "from-env")
    password = load_settings(config).mqtt.password
    assert password is not None
    assert password.get_secret_value() == "from-env"


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "models").mkdir()
    config = write(tmp_path / "site" / "edged.toml", '[models]\nsearch_path = ["models"]\n')
    assert load_settings(config).models.search_path == [tmp_path / "site" / "models"]


def test_errors_name_the_file_and_every_field(tmp_path: Path) -> None:
    config = write(tmp_path / "bad.toml",
                   'device_id = "a/b"\nbogus = 1\n[stats]\ninterval = 0\n'
                   '[[cameras]]\nname = "x"\nkind = "shapes"\n[[cameras]]\nname = "x"\n'
                   'kind = "shapes"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    text = str(info.value)
    assert str(config) in text
    for field in ("device_id", "bogus", "stats.interval"):
        assert field in text


def test_duplicate_cameras_are_refused(tmp_path: Path) -> None:
    config = write(tmp_path / "dup.toml", '[[cameras]]\nname = "x"\nkind = "shapes"\n'
                   '[[cameras]]\nname = "x"\nkind = "shapes"\n')
    with pytest.raises(ConfigError, match="camera names must be unique"):
        load_settings(config)


def test_not_toml_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path / "x.toml", "device_id = \n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")


def test_the_demo_runs_the_shipped_model_with_an_embedded_broker() -> None:
    settings = load_settings(None, DEMO)
    assert settings.routes == {"demo": "shapes"}
    assert settings.embedded_broker == "auto"


def test_the_simulator_computes_in_its_own_process_on_one_lane_unless_told(
        tmp_path: Path) -> None:
    defaults = load_settings(write(tmp_path / "empty.toml", "")).kpu
    assert (defaults.process, defaults.lanes, defaults.workers) == (True, 1, 1)
    told = load_settings(write(tmp_path / "told.toml",
                               "[kpu]\nprocess = false\nlanes = 0\nworkers = 3\n"))
    assert (told.kpu.process, told.kpu.lanes, told.kpu.workers) == (False, 0, 3)
    with pytest.raises(ConfigError, match=r"kpu\.lanes"):
        load_settings(write(tmp_path / "bad.toml", "[kpu]\nlanes = -1\n"))
    with pytest.raises(ConfigError, match=r"kpu\.workers"):
        load_settings(write(tmp_path / "none.toml", "[kpu]\nworkers = 0\n"))
