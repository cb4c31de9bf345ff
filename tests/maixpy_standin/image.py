"""MaixPy's ``image``: just what feeds the KPU, an image with its ``pix_ai`` buffer.

An RGB565 image keeps 5, 6 and 5 bits per channel, so ``set_pixel`` with an RGB triple and
``pix_to_ai`` round the channels through OpenMV's tables (``rgb2rgb_tab.c``) exactly as the
firmware does; a grayscale image keeps its bytes. A camera frame (``sensor.snapshot``)
carries the sensor's planar RGB888 in ``pix_ai``, as the K210's DVP delivers it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edged.kpu.serial.protocol import G628, G826, RB528, RB825

RGB565, GRAYSCALE = 2, 1
U8 = npt.NDArray[np.uint8]


class Image:
    def __init__(self, size: tuple[int, int] = (320, 240)) -> None:
        self._w, self._h = size
        self._bpp = RGB565
        count = self._w * self._h
        self._planes = [bytearray(count), bytearray(count), bytearray(count)]  # r5, g6, b5
        self._gray = bytearray(0)
        self.pix_ai: U8 | None = None

    @classmethod
    def from_camera(cls, planar_rgb: U8) -> Image:
        """A snapshot: ``pix_ai`` is the sensor's planar RGB888, ``(3, h, w)``."""
        _, h, w = planar_rgb.shape
        img = cls((w, h))
        img.pix_ai = np.ascontiguousarray(planar_rgb)
        return img

    def width(self) -> int:
        return self._w

    def height(self) -> int:
        return self._h

    def to_grayscale(self, copy: bool = False) -> Image:
        """In place, as OpenMV does with ``copy=False``: Y from RGB565 (``yuv_table``'s
        ``(38 r + 75 g + 15 b) >> 7`` on the 8-bit channels)."""
        target = Image((self._w, self._h)) if copy else self
        r5, g6, b5 = self._planes
        target._gray = bytearray(
            (38 * RB528[r] + 75 * G628[g] + 15 * RB528[b]) >> 7
            for r, g, b in zip(r5, g6, b5, strict=True))
        target._bpp = GRAYSCALE
        return target

    def set_pixel(self, x: int, y: int, color: int | tuple[int, int, int]) -> Image:
        i = y * self._w + x
        if self._bpp == GRAYSCALE:
            self._gray[i] = color if isinstance(color, int) else color[0]
        else:
            r, g, b = (color, color, color) if isinstance(color, int) else color
            self._planes[0][i], self._planes[1][i], self._planes[2][i] = (
                RB825[r], G826[g], RB825[b])
        return self

    def pix_to_ai(self) -> None:
        shape = (self._h, self._w)
        if self._bpp == GRAYSCALE:
            self.pix_ai = np.frombuffer(bytes(self._gray), np.uint8).reshape(1, *shape).copy()
            return
        planes = [np.asarray(table, np.uint8)[np.frombuffer(bytes(p), np.uint8)].reshape(shape)
                  for p, table in zip(self._planes, (RB528, G628, RB528), strict=True)]
        self.pix_ai = np.stack(planes)

    def is_grayscale(self) -> bool:
        return self._bpp == GRAYSCALE
