"""Which convolutions hand their output map straight to the next convolution.

Writing a map into KPU RAM's row layout and reading it back is pure overhead when the next
layer is a convolution that reads exactly that map and nothing else ever reads those bytes.
Proven at load, byte range by byte range, from what every layer reads and writes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edged.kpu.kmodel.kpu_regs import KpuLayerArgument

Region = tuple[int, int]
"""KPU RAM bytes ``[start, end)``."""


@dataclass(frozen=True)
class Access:
    """One layer's use of KPU RAM."""

    index: int
    reads: tuple[Region, ...] = ()
    writes: tuple[Region, ...] = ()
    """Bytes the layer certainly overwrites (a conservative list may leave some out)."""
    map_in: tuple[Region, tuple[int, ...]] | None = None
    """A convolution's input map: where it is and its (c, h, w)."""
    map_out: tuple[Region, tuple[int, ...]] | None = None


def conv_access(index: int, arg: KpuLayerArgument, batches: int = 1,
                reads: tuple[Region, ...] = (), writes: tuple[Region, ...] = ()) -> Access:
    """A KPU convolution's use of KPU RAM: the rows its registers name for ``batches`` maps
    in and out (besides ``reads`` and ``writes``); only a single map can be handed over."""
    source = (arg.src_addr * 64, (arg.src_addr + batches * arg.in_rows) * 64)
    target = (arg.dst_addr * 64, (arg.dst_addr + batches * arg.out_rows) * 64)
    single = batches == 1
    return Access(index, (*reads, source), (*writes, target),
                  (source, (arg.in_channels, arg.in_height, arg.in_width)) if single else None,
                  (target, (arg.out_channels, arg.out_height, arg.out_width)) if single else None)


def handed_over(layers: Sequence[Access], final_reads: Sequence[Region] = ()) -> frozenset[int]:
    """Convolutions whose output map only the next convolution reads.

    The map must be exactly the next layer's input (same bytes, same shape), and no later
    layer, nor the model's outputs (``final_reads``), may read any of its bytes before
    later writes have overwritten them.
    """
    handed = set()
    for i, (layer, after) in enumerate(itertools.pairwise(layers)):
        if layer.map_out is None or layer.map_out != after.map_in:
            continue
        live = [layer.map_out[0]]  # the bytes of the map not yet overwritten
        for later in layers[i + 1 :]:
            reads = later.reads if later is not after else ()
            if _overlaps(reads, live):
                break
            for start, end in later.writes:
                live = [piece for s, e in live
                        for piece in ((s, min(e, start)), (max(s, end), e)) if piece[0] < piece[1]]
            if not live:
                handed.add(layer.index)
                break
        else:
            if not _overlaps(final_reads, live):
                handed.add(layer.index)
    return frozenset(handed)


class HandOff:
    """During a run, the map a convolution handed straight to the next one: an executor's
    one piece of hand-over state, reset at the start of each run."""

    def __init__(self, layers: Sequence[Access], final_reads: Sequence[Region] = ()) -> None:
        self.handed = handed_over(layers, final_reads)
        self.map: npt.NDArray[np.uint8] | None = None

    def keep(self, index: int, fmap: npt.NDArray[np.uint8]) -> bool:
        """Hold convolution ``index``'s output for the next convolution if it hands over;
        whether it did (if not, the caller writes it to KPU RAM)."""
        self.map = fmap if index in self.handed else None
        return self.map is not None


def _overlaps(regions: Sequence[Region], live: Sequence[Region]) -> bool:
    return any(s < end and start < e for start, end in regions for s, e in live)
