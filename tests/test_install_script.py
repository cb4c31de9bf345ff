"""deploy/install.sh staged into a temporary root: what it lays down, twice, and removes."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PROJECT

SCRIPT = PROJECT / "deploy" / "install.sh"
STAGED = ["--no-user", "--no-venv"]


def run(root: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    # POSIX sh (dash on Debian), not bash: the script must not rely on bashisms.
    sh = shutil.which("dash") or "/bin/sh"
    done = subprocess.run(
        [sh, str(SCRIPT), "--destdir", str(root), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode == 0) == ok, done.stdout + done.stderr
    return done


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    return {
        str(p.relative_to(root)): (mode(p), p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def test_install_lays_down_the_expected_files(tmp_path: Path) -> None:
    done = run(tmp_path, *STAGED)
    units = tmp_path / "etc/systemd/system"
    for name in ["edged.service", "edged@.service"]:
        assert (units / name).read_text() == (PROJECT / "systemd" / name).read_text()
        assert mode(units / name) == 0o644
    conf = tmp_path / "etc/edged"
    assert mode(conf) == 0o750
    assert mode(conf / "models") == 0o750
    assert mode(conf / "credentials") == 0o700
    password = conf / "credentials/mqtt-password"
    assert (mode(password), password.read_bytes()) == (0o600, b"")
    rule = tmp_path / "etc/udev/rules.d/60-edged-gpio.rules"
    assert 'KERNEL=="gpiochip*", GROUP="gpio"' in rule.read_text()
    share = tmp_path / "opt/edged/share"
    assert (share / "doc/edged/deploy.md").read_text() == (PROJECT / "docs/deploy.md").read_text()
    examples = sorted(p.name for p in (PROJECT / "deploy").glob("*.toml"))
    assert sorted(p.name for p in (share / "edged/examples").iterdir()) == examples
    assert (share / "edged/models").is_dir()
    assert (share / "edged/pipelines").is_dir()
    assert not (tmp_path / "opt/edged/venv").exists()
    # The first config is the lab bench (simulated KPU) once the project ships it.
    bench = PROJECT / "deploy/lab-bench.toml"
    if bench.exists():
        assert (conf / "edged.toml").read_text() == bench.read_text()
        assert mode(conf / "edged.toml") == 0o640
    else:
        assert not (conf / "edged.toml").exists()
        assert "no " in done.stdout
        assert "edged.toml yet" in done.stdout


def test_running_twice_changes_nothing(tmp_path: Path) -> None:
    run(tmp_path, *STAGED)
    first = snapshot(tmp_path)
    run(tmp_path, *STAGED)
    assert snapshot(tmp_path) == first


def test_the_sites_config_and_secrets_are_never_overwritten(tmp_path: Path) -> None:
    conf = tmp_path / "etc/edged"
    (conf / "credentials").mkdir(parents=True)
    (conf / "edged.toml").write_text("# this site\n")
    (conf / "edged.toml").chmod(0o640)
    (conf / "credentials/mqtt-password").write_text("s3cret")
    (conf / "credentials/mqtt-password").chmod(0o600)
    done = run(tmp_path, *STAGED)
    assert (conf / "edged.toml").read_text() == "# this site\n"
    assert (conf / "credentials/mqtt-password").read_text() == "s3cret"
    assert "kept" in done.stdout


def test_prefix_is_written_into_the_units(tmp_path: Path) -> None:
    run(tmp_path, *STAGED, "--prefix", "/srv/edged")
    unit = (tmp_path / "etc/systemd/system/edged.service").read_text()
    assert "ExecStart=/srv/edged/venv/bin/edged run /etc/edged/edged.toml" in unit
    assert "/opt/edged" not in unit
    assert (tmp_path / "srv/edged/share/doc/edged/deploy.md").is_file()


def test_uninstall_removes_the_install_and_keeps_the_config(tmp_path: Path) -> None:
    run(tmp_path, *STAGED)
    units = tmp_path / "etc/systemd/system"
    wants = units / "multi-user.target.wants"
    wants.mkdir()
    (wants / "edged.service").symlink_to("../edged.service")
    (wants / "edged@gate.service").symlink_to("../edged@.service")
    (units / "edged.service.d").mkdir()
    (units / "edged.service.d/site.conf").write_text("[Service]\nWatchdogSec=60s\n")
    (tmp_path / "etc/edged/edged.toml").write_text("# this site\n")

    done = run(tmp_path, *STAGED, "--uninstall")
    assert sorted(p.name for p in units.rglob("*.service")) == []
    assert list(wants.iterdir()) == []
    assert not (tmp_path / "etc/udev/rules.d/60-edged-gpio.rules").exists()
    assert not (tmp_path / "opt/edged").exists()
    assert (tmp_path / "etc/edged/edged.toml").read_text() == "# this site\n"
    assert (tmp_path / "etc/edged/credentials/mqtt-password").exists()
    assert str(tmp_path / "etc/edged") in done.stdout
    assert "edged.service.d" in done.stdout  # a kept drop-in is mentioned
    # Uninstalling what is gone is harmless too.
    run(tmp_path, *STAGED, "--uninstall")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown argument: --bogus"),
        (["--prefix"], "--prefix needs a directory"),
        (["--prefix", "opt/edged"], "must be an absolute path"),
        (["--prefix", "/opt/ed ged"], "may hold only"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    done = run(tmp_path, *args, ok=False)
    assert message in done.stderr
    assert not (tmp_path / "etc").exists()
