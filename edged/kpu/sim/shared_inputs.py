"""A frame's inputs to the compute process through shared memory, not the pool's pipe.

Pickled into the process pool's pipe, a 230 KB face frame cost the daemon 0.45 ms of CPU
and left the compute process idle 0.3 ms a frame (3.5 ms end to end for 3.0 ms of
compute, measured): each pickle lands in freshly mapped pages, and the 64 KB pipe makes
the writer and the reader take turns. Here the caller copies the inputs once into a block
of shared memory that is reused frame after frame, and only the block's name and the
arrays' layout cross the pipe.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import numpy.typing as npt

Layout = tuple[tuple[int, tuple[int, ...], str], ...]
"""Per input: its byte offset in the block, its shape and its dtype."""

ALIGN = 64


class InputBlocks:
    """The caller's blocks: one per run in flight, each reused once its run has ended."""

    def __init__(self) -> None:
        self._free: list[SharedMemory] = []
        self._made: list[SharedMemory] = []
        self._lock = threading.Lock()  # released from the pool's thread, taken from the caller's

    def put(self, inputs: Sequence[npt.NDArray[np.generic]]) -> tuple[SharedMemory, Layout]:
        """A free block holding ``inputs``, busy until :meth:`release`."""
        ends = list(itertools.accumulate(-(-a.nbytes // ALIGN) * ALIGN for a in inputs))
        starts = [0, *ends[:-1]]
        size = max(ends[-1] if ends else 0, 1)
        with self._lock:
            block = next((b for b in self._free if b.size >= size), None)
            if block is not None:
                self._free.remove(block)
            else:
                block = SharedMemory(create=True, size=size)
                self._made.append(block)
        for start, array in zip(starts, inputs, strict=True):
            np.ndarray(array.shape, array.dtype, block.buf, start)[...] = array
        return block, tuple((start, tuple(array.shape), array.dtype.str)
                            for start, array in zip(starts, inputs, strict=True))

    def release(self, block: SharedMemory) -> None:
        with self._lock:
            if block in self._made:
                self._free.append(block)

    def close(self) -> None:
        """Free every block (once the process that reads them has ended)."""
        with self._lock:
            for block in self._made:
                block.close()
                block.unlink()
            self._made.clear()
            self._free.clear()


_attached: dict[str, SharedMemory] = {}
"""In the compute process: the caller's blocks, attached once each."""


def read_inputs(name: str, layout: Layout) -> list[npt.NDArray[np.generic]]:
    """In the compute process: views of the inputs in block ``name`` (valid while its run
    lasts: the caller reuses the block after)."""
    block = _attached.get(name)
    if block is None:
        block = _attached[name] = SharedMemory(name=name)
    return [np.ndarray(shape, np.dtype(dtype), block.buf, offset)
            for offset, shape, dtype in layout]
