"""Every example site config under deploy/ passes ``edged check``.

The site's own models folder is played by the fixture kmodels (a field engineer drops the
kmodels a site needs into /etc/edged/models), and the MQTT password comes from the
environment as systemd's credential would provide it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import PROJECT, fixture_path
from tests.maixpy_standin.harness import StandinBoard

CONFIGS = sorted((PROJECT / "deploy").glob("*.toml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_site_config_passes_edged_check(config: Path, tmp_path: Path) -> None:
    env = {**os.environ, "EDGED_MODELS__SEARCH_PATH": json.dumps([str(fixture_path("kmodels"))])}
    site = tomllib.loads(config.read_text())
    if "username" in site.get("mqtt", {}):
        env["EDGED_MQTT__PASSWORD"] = "from-a-credential"
    with contextlib.ExitStack() as stack:
        if "serial" in site.get("kpu", {}):  # the board: a stand-in on a pseudo-terminal
            board = stack.enter_context(StandinBoard(tmp_path / "board"))
            env["EDGED_KPU__SERIAL__PORT"] = board.port
        done = subprocess.run([sys.executable, "-m", "edged.cli", "check", str(config)],
                              capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout
    assert "SRAM at start" in done.stdout


def test_there_are_example_configs() -> None:
    assert {c.stem for c in CONFIGS} >= {"lab-bench", "gate", "serial-board"}
