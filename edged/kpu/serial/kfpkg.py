"""``edged device kfpkg``: a kmodel packed for kflash to burn at a flash offset.

A kfpkg is a zip of ``flash-list.json`` and the binaries it lists. kflash.py
(kendryte/kflash.py at 5783d8d, ``kflash.py`` lines 1377-1397) extracts it, turns every
``"address": VALUE,`` line into a string with a regular expression (so each field must
stand on a line of its own, and ``address`` must not be the last field of its object),
then writes each ``bin`` at ``int(address, 0)``; with ``"sha256Prefix": false`` the bytes go
to flash raw, which is what MaixPy's ``kpu.load(offset)`` reads. Sipeed's own model
packages (MaixPy-v1_scripts ``machine_vision/models/face_model_at_0x300000.kfpkg``) have
exactly this layout: ``{"version": "0.1.0", "files": [{"address": 3145728, "bin":
"facedetect.kmodel", "sha256Prefix": false}]}``, two-space indented. kflash_gui reads the
same file.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edged.kpu.kmodel import parse_kmodel

KFPKG_VERSION = "0.1.0"
FLASH_SECTOR = 0x1000
"""kflash writes 4 KiB data frames from the offset; an offset inside a sector would erase
the sector's start, which belongs to whatever lies before."""
SPIFFS_START = 0xD00000
"""MaixPy's file system (/flash) starts here (``projects/maixpy_k210/config_defaults.mk``:
``CONFIG_SPIFFS_START_ADDR=0xD00000``, 3 MiB to the end of the 16 MiB flash)."""
FIRMWARE_ROOM = 0x200000
"""A full MaixPy firmware spans up to about 2 MiB from offset 0."""


class KfpkgError(ValueError):
    """A kfpkg that cannot be made as asked: says which constraint and by how much."""


@dataclass(frozen=True, slots=True)
class KfpkgReport:
    path: Path
    bin: str
    offset: int
    size: int
    notes: tuple[str, ...]

    @property
    def end(self) -> int:
        return self.offset + self.size


def flash_list(bin_name: str, offset: int) -> str:
    """``flash-list.json`` for one raw binary, laid out as kflash's regex needs it."""
    listing = {"version": KFPKG_VERSION,
               "files": [{"address": offset, "bin": bin_name, "sha256Prefix": False}]}
    return json.dumps(listing, indent=2) + "\n"


def write_kfpkg(kmodel_path: str | Path, offset: int, out_path: str | Path) -> KfpkgReport:
    """Pack ``kmodel_path`` to be burnt at ``offset``; the kmodel must be one MaixPy loads
    (v3 or v4: a v5 model is refused with ERR_KMODEL_VERSION, 2002)."""
    source = Path(kmodel_path)
    data = source.read_bytes()
    parse_kmodel(data)
    if offset <= 0:
        raise KfpkgError(f"offset {offset:#x}: MaixPy's kpu.load needs a flash offset above 0")
    if offset % FLASH_SECTOR:
        raise KfpkgError(f"offset {offset:#x} is not on a 4 KiB flash sector boundary; "
                         f"use {offset - offset % FLASH_SECTOR:#x} or "
                         f"{offset - offset % FLASH_SECTOR + FLASH_SECTOR:#x}")
    if offset + len(data) > SPIFFS_START:
        raise KfpkgError(f"{source.name} ({len(data)} bytes) at {offset:#x} ends at "
                         f"{offset + len(data):#x}, inside MaixPy's file system, which starts "
                         f"at {SPIFFS_START:#x}: choose an offset at most "
                         f"{(SPIFFS_START - len(data)) // FLASH_SECTOR * FLASH_SECTOR:#x}")
    notes = []
    if offset < FIRMWARE_ROOM:
        notes.append(f"offset {offset:#x} is within the first 2 MiB, where a full MaixPy "
                     "firmware lies: check that the firmware you burn ends before it")
    out = Path(out_path)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as package:
        package.writestr("flash-list.json", flash_list(source.name, offset))
        package.writestr(source.name, data)
    return KfpkgReport(out, source.name, offset, len(data), tuple(notes))
