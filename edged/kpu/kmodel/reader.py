"""Bounds-checked reads from a kmodel buffer.

Every field of a kmodel is read through a :class:`Span`, which knows the bytes it may
touch and refuses anything outside them with the byte offset and the layer in the
message. Nothing is ever allocated from a size that was not checked against the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edged.kpu.errors import KmodelFormatError


@dataclass(frozen=True)
class Span:
    """A window ``[start, end)`` of the file, all reads relative to the file's start."""

    data: bytes
    start: int
    end: int
    layer: int | None = None

    @classmethod
    def of(cls, data: bytes) -> Span:
        return cls(data, 0, len(data))

    def sub(self, offset: int, size: int, *, layer: int | None = None, what: str) -> Span:
        """The window of ``size`` bytes at absolute ``offset``, which must lie inside this one."""
        self.check(offset, size, what)
        return Span(self.data, offset, offset + size, self.layer if layer is None else layer)

    def check(self, offset: int, size: int, what: str) -> None:
        if size < 0 or offset < self.start or offset + size > self.end:
            raise KmodelFormatError(
                f"{what} needs {size} bytes at {offset}, beyond the {self.end - self.start} bytes "
                f"available from {self.start}",
                offset=offset,
                layer=self.layer,
            )

    def unpack(self, fmt: str, offset: int, what: str) -> tuple[int | float, ...]:
        """``struct.unpack`` little-endian ``fmt`` at ``offset``."""
        layout = struct.Struct("<" + fmt)
        self.check(offset, layout.size, what)
        return layout.unpack_from(self.data, offset)

    def u32s(self, offset: int, count: int, what: str) -> tuple[int, ...]:
        return tuple(int(v) for v in self.unpack(f"{count}I", offset, what))

    def array(
        self, offset: int, dtype: npt.DTypeLike, count: int, what: str
    ) -> npt.NDArray[np.generic]:
        """A read-only numpy view of ``count`` items, checked first."""
        dt = np.dtype(dtype).newbyteorder("<")
        self.check(offset, dt.itemsize * count, what)
        view = np.frombuffer(self.data, dtype=dt, count=count, offset=offset)
        view.flags.writeable = False
        return view

    def bytes(self, offset: int, size: int, what: str) -> bytes:
        self.check(offset, size, what)
        return self.data[offset : offset + size]
