"""Every example site config under deploy/ passes ``edged check``.

The site's own models folder is played by the fixture kmodels (a field engineer drops the
kmodels a site needs into /etc/edged/models), and the MQTT password comes from the
environment as systemd's credential would provide it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import PROJECT, fixture_path

CONFIGS = sorted((PROJECT / "deploy").glob("*.toml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_site_config_passes_edged_check(config: Path) -> None:
    env = {**os.environ, "EDGED_MODELS__SEARCH_PATH": json.dumps([str(fixture_path("kmodels"))])}
    if "username" in tomllib.loads(config.read_text()).get("mqtt", {}):
        env["EDGED_MQTT__PASSWORD"] = "from-a-credential"
    done = subprocess.run([sys.executable, "-m", "edged.cli", "check", str(config)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout
    assert "SRAM at start" in done.stdout


def test_there_are_example_configs() -> None:
    assert {c.stem for c in CONFIGS} >= {"lab-bench", "gate"}
