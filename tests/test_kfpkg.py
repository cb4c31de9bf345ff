"""``edged device kfpkg``: the zip kflash and kflash_gui burn, read back as kflash reads it."""

from __future__ import annotations

import argparse
import json
import re
import zipfile
from pathlib import Path

import pytest

from edged.kpu.errors import KmodelVersionError
from edged.kpu.serial.cli import add_device_commands
from edged.kpu.serial.kfpkg import KfpkgError, flash_list, write_kfpkg
from tests.conftest import kmodel_path


def _as_kflash_reads_it(package: Path) -> list[tuple[int, str, bool, bytes]]:
    """kflash.py (kendryte/kflash.py 5783d8d, lines 1377-1397): extract, quote every
    ``"address": X,`` with a regex, parse, and take ``int(address, 0)`` for each bin."""
    with zipfile.ZipFile(package) as zf:
        text = zf.read("flash-list.json").decode()
        quoted = re.sub(r'"address": (.*),', r'"address": "\1",', text)
        listing = json.loads(quoted)
        return [(int(f["address"], 0), f["bin"], f["sha256Prefix"], zf.read(f["bin"]))
                for f in listing["files"]]


def test_a_kfpkg_has_the_layout_kflash_expects(tmp_path: Path) -> None:
    model = kmodel_path("maixpy_facedetect_v3")
    report = write_kfpkg(model, 0x300000, tmp_path / "face.kfpkg")
    with zipfile.ZipFile(report.path) as zf:
        assert sorted(zf.namelist()) == ["flash-list.json", model.name]
        assert zf.testzip() is None
        listing = json.loads(zf.read("flash-list.json"))
    assert listing == {"version": "0.1.0", "files": [
        {"address": 0x300000, "bin": model.name, "sha256Prefix": False}]}
    assert _as_kflash_reads_it(report.path) == [(0x300000, model.name, False,
                                                 model.read_bytes())]
    assert (report.offset, report.size, report.end) == (0x300000, 388776, 0x300000 + 388776)
    assert report.notes == ()


def test_flash_list_puts_each_field_on_its_own_line_address_first() -> None:
    lines = flash_list("m.kmodel", 0x500000).splitlines()
    assert '      "address": 5242880,' in lines  # kflash's regex needs the trailing comma
    assert lines.index('      "address": 5242880,') < lines.index('      "bin": "m.kmodel",')


@pytest.mark.parametrize(("offset", "message"), [
    (0, "above 0"),
    (0x300800, r"not on a 4 KiB flash sector boundary; use 0x300000 or 0x301000"),
    (0xCC0000, r"ends at 0xd1eea8, inside MaixPy's file system, which starts at 0xd00000: "
               r"choose an offset at most 0xca1000"),
])
def test_offsets_kflash_or_maixpy_cannot_use_are_refused(
        tmp_path: Path, offset: int, message: str) -> None:
    with pytest.raises(KfpkgError, match=message):
        write_kfpkg(kmodel_path("maixpy_facedetect_v3"), offset, tmp_path / "x.kfpkg")
    assert not (tmp_path / "x.kfpkg").exists()


def test_a_low_offset_gets_a_note_and_a_v5_model_is_refused(tmp_path: Path) -> None:
    report = write_kfpkg(kmodel_path("iris_v3"), 0x100000, tmp_path / "iris.kfpkg")
    assert "within the first 2 MiB" in report.notes[0]
    with pytest.raises(KmodelVersionError, match="only support kmodel v3/v4"):
        write_kfpkg(kmodel_path("yolox_nano_v5"), 0x300000, tmp_path / "v5.kfpkg")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edged")
    add_device_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_device_kfpkg_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = kmodel_path("maixpy_mnist_v3")
    args = _parser().parse_args(["device", "kfpkg", str(model), "--offset", "0x600000"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "maixpy_mnist_v3_at_0x600000.kfpkg: maixpy_mnist_v3.kmodel (208072 bytes) at flash " \
           "0x600000..0x632cc8" in out
    assert 'kpu.serial.models.<name> = "flash:0x600000"' in out
    assert _as_kflash_reads_it(tmp_path / "maixpy_mnist_v3_at_0x600000.kfpkg")[0][0] == 0x600000

    args = _parser().parse_args(["device", "kfpkg", str(model), "--offset", "0x600001",
                                 "--out", "x.kfpkg"])
    assert args.handler(args) == 2
    assert "edged: offset 0x600001 is not on a 4 KiB flash sector boundary" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser().parse_args(["device", "kfpkg", str(model), "--offset", "3M"])
    assert "'3M' is not a flash offset (write it like 0x300000)" in capsys.readouterr().err
