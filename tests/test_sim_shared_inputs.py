"""Frames to the compute process through shared memory: what crosses, reuse, clean-up."""

from __future__ import annotations

from multiprocessing.shared_memory import SharedMemory

import numpy as np
import numpy.typing as npt
import pytest

from edged.kpu.sim.shared_inputs import ALIGN, InputBlocks, read_inputs


def test_inputs_cross_whole_and_aligned() -> None:
    blocks = InputBlocks()
    try:
        inputs: list[npt.NDArray[np.generic]] = [
            np.arange(3 * 5 * 7, dtype=np.uint8).reshape(1, 3, 5, 7),
            np.linspace(-1, 1, 10, dtype=np.float32), np.zeros(0, np.float32)]
        block, layout = blocks.put(inputs)
        assert [offset % ALIGN for offset, _, _ in layout] == [0, 0, 0]
        got = read_inputs(block.name, layout)
        for a, b in zip(got, inputs, strict=True):
            assert (a.dtype, a.shape) == (b.dtype, b.shape)
            np.testing.assert_array_equal(a, b)
    finally:
        blocks.close()


def test_a_block_is_reused_only_once_released_and_freed_on_close() -> None:
    blocks = InputBlocks()
    frame = [np.full((3, 240, 320), 7, np.uint8)]
    first, _ = blocks.put(frame)
    second, _ = blocks.put(frame)  # the first is still busy (its run has not ended)
    assert second.name != first.name
    blocks.release(first)
    again, layout = blocks.put([np.full((3, 240, 320), 9, np.uint8)])
    assert again.name == first.name
    assert int(read_inputs(again.name, layout)[0][2, 239, 319]) == 9
    blocks.release(again)
    blocks.put([np.zeros(10**6, np.uint8)])  # larger than any free block: a new one
    names = [first.name, second.name]
    blocks.close()
    for name in names:
        with pytest.raises(FileNotFoundError):
            SharedMemory(name=name)
