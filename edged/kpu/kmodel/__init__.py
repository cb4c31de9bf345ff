"""kmodel files: parsing and validation into typed, immutable descriptions (no execution)."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from pathlib import Path

from edged.kpu.errors import KmodelFormatError, KmodelVersionError
from edged.kpu.kmodel.model import KModel, LayerSummary, TensorSpec
from edged.kpu.kmodel.v3 import parse_v3
from edged.kpu.kmodel.v4 import parse_v4

KMDL = 0x4B4D444C
"""nncase's ``'KMDL'`` identifier as the first little-endian word (v4 and later)."""

__all__ = ["KModel", "LayerSummary", "TensorSpec", "kmodel_version", "load_kmodel",
           "parse_kmodel"]


def kmodel_version(data: bytes) -> int:
    """The format version, or :class:`KmodelVersionError` for anything but v3 and v4."""
    if len(data) < 8:
        raise KmodelFormatError(f"a kmodel is at least 8 bytes, this one has {len(data)}",
                                offset=len(data))
    first, second = struct.unpack_from("<II", data)
    if first == 3:
        return 3
    if first == KMDL:
        if second == 4:
            return 4
        origin = " (nncase 1.x)" if second == 5 else ""
        raise KmodelVersionError(f"found kmodel v{second}{origin} at byte 4")
    raise KmodelVersionError(
        f"found neither version 3 nor the 'KMDL' identifier: first word is 0x{first:08x}"
    )


def parse_kmodel(data: bytes) -> KModel:
    """Parse and validate a kmodel held in memory."""
    version = kmodel_version(data)
    parsed = parse_v3(data) if version == 3 else parse_v4(data)
    found = {f.name: getattr(parsed, f.name) for f in dataclasses.fields(parsed)}
    return KModel(**found, version=version, data=bytes(data),
                  sha256=hashlib.sha256(data).hexdigest())


def load_kmodel(path: str | Path) -> KModel:
    """Read and parse a kmodel file; unreadable files raise ERR_READ_FILE-style errors."""
    return parse_kmodel(Path(path).read_bytes())
