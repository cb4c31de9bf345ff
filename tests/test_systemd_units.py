"""The unit files: systemd accepts every line, and the decisions they encode stay made."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import PROJECT

UNITS = PROJECT / "systemd"
NAMES = ["edged.service", "edged@.service"]
EDGED = "/opt/edged/venv/bin/edged"

Unit = dict[str, list[str]]  # "Section.Key" -> values, in order (keys may repeat)


def parse(path: Path) -> Unit:
    unit: Unit = defaultdict(list)
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        unit[f"{section}.{key.strip()}"].append(value.strip())
    return unit


def one(unit: Unit, key: str) -> str:
    [value] = unit[key]
    return value


def seconds(span: str) -> float:
    """A systemd time span as the units write them: ``30s``, ``10min`` or bare seconds."""
    if span.endswith("min"):
        return float(span.removesuffix("min")) * 60
    return float(span.removesuffix("s"))


@pytest.fixture
def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return path


@pytest.fixture
def checkable(tmp_path: Path) -> list[Path]:
    """Copies of the units whose ExecStart= binary exists, as `verify` requires."""
    stub = tmp_path / "edged"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    copies = []
    for name in NAMES:
        copy = tmp_path / name
        copy.write_text((UNITS / name).read_text().replace(EDGED, str(stub)))
        copies.append(copy)
    return copies


def verify(analyze: str, units: list[Path]) -> list[str]:
    """Complaints about ``units``; verify exits 0 on an unknown key, so read stderr."""
    done = subprocess.run(
        [analyze, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # Each complaint names the file or the unit (edged@.service is checked as edged@i).
    return [line for line in done.stderr.splitlines() if "edged" in line]


def test_systemd_analyze_verify_accepts_both_units(analyze: str, checkable: list[Path]) -> None:
    assert verify(analyze, checkable) == []


def test_verify_would_catch_a_misspelt_directive(analyze: str, checkable: list[Path]) -> None:
    unit = checkable[0]
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    assert any("WatchdogSecs" in line for line in verify(analyze, [unit]))


def test_sandbox_exposure_stays_low(analyze: str, checkable: list[Path]) -> None:
    # systemd's own 0..10 exposure score: 2.0 or less is what the hardening buys.
    done = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", *map(str, checkable)],
        capture_output=True,
        text=True,
        check=False,
    )
    if "--offline" in done.stderr:  # older than systemd 250
        pytest.skip(f"this systemd-analyze cannot rate a unit file: {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr


@pytest.mark.parametrize("name", NAMES)
def test_service_contract(name: str) -> None:
    unit = parse(UNITS / name)
    config = "/etc/edged/%i.toml" if "@" in name else "/etc/edged/edged.toml"
    assert one(unit, "Service.Type") == "notify"
    assert one(unit, "Service.NotifyAccess") == "main"
    assert one(unit, "Service.ExecStartPre") == f"{EDGED} check {config}"
    assert one(unit, "Service.ExecStart") == f"{EDGED} run {config}"
    assert one(unit, "Service.ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Service.Restart") == "on-failure"
    assert seconds(one(unit, "Service.RestartSec")) > 0
    assert int(one(unit, "Unit.StartLimitBurst")) > 1
    assert seconds(one(unit, "Unit.StartLimitIntervalSec")) > 0
    # A stop that hangs ends by the stop timeout, not as a watchdog failure.
    watchdog = seconds(one(unit, "Service.WatchdogSec"))
    assert 10 <= watchdog <= 120
    assert seconds(one(unit, "Service.TimeoutStopSec")) < watchdog
    assert one(unit, "Install.WantedBy") == "multi-user.target"


@pytest.mark.parametrize("name", NAMES)
def test_user_directories_and_secrets(name: str) -> None:
    unit = parse(UNITS / name)
    assert one(unit, "Service.User") == one(unit, "Service.Group") == "edged"
    assert one(unit, "Service.SupplementaryGroups").split() == ["video", "dialout", "gpio"]
    assert one(unit, "Service.ConfigurationDirectory") == "edged"
    assert one(unit, "Service.CacheDirectory") == "edged"
    instance = "/%i" if "@" in name else ""
    assert one(unit, "Service.StateDirectory") == f"edged{instance}"
    assert one(unit, "Service.RuntimeDirectory") == f"edged{instance}"
    assert set(unit["Service.Environment"]) == {
        "PYTHONUNBUFFERED=1",
        "NUMBA_CACHE_DIR=/var/cache/edged/numba",
    }
    assert unit["Service.EnvironmentFile"][0] == "-/etc/edged/edged.env"
    credential = "%i.mqtt-password" if "@" in name else "mqtt-password"
    assert one(unit, "Service.LoadCredential") == (
        f"mqtt-password:/etc/edged/credentials/{credential}"
    )


@pytest.mark.parametrize("name", NAMES)
def test_hardening(name: str) -> None:
    unit = parse(UNITS / name)
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "SystemCallArchitectures": "native",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "DevicePolicy": "closed",
    }
    assert {key: one(unit, f"Service.{key}") for key in expected} == expected
    assert set(unit["Service.DeviceAllow"]) == {
        "char-video4linux rw",
        "char-ttyUSB rw",
        "char-ttyACM rw",
        "char-gpiochip rw",
    }
    # numba's JIT needs writable executable memory; PrivateUsers= would hide the groups.
    assert "Service.MemoryDenyWriteExecute" not in unit
    assert "Service.PrivateUsers" not in unit
    assert "Service.PrivateDevices" not in unit


def test_template_differs_only_where_the_instance_matters() -> None:
    single, template = (parse(UNITS / name) for name in NAMES)
    per_instance = {
        "Unit.Description",
        "Service.ExecStartPre",
        "Service.ExecStart",
        "Service.StateDirectory",
        "Service.RuntimeDirectory",
        "Service.EnvironmentFile",
        "Service.LoadCredential",
    }
    assert single.keys() == template.keys()
    drift = {k for k in single if k not in per_instance and single[k] != template[k]}
    assert drift == set()
    assert template["Service.EnvironmentFile"] == [
        "-/etc/edged/edged.env",
        "-/etc/edged/%i.env",
    ]
