"""What a parsed kmodel is, whatever its version: tensors, layers and memory needs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

DType = Literal["uint8", "float32"]

CHIP_SRAM_BYTES = 8 * 1024 * 1024
"""All of the K210's SRAM: no model can ask for more working memory than this."""

MAX_TENSORS = 64
"""A bound on a model's declared inputs and outputs, so that a forged count cannot make a
parser build thousands of tensor descriptions from a small file."""


@dataclass(frozen=True)
class TensorSpec:
    """An input or output tensor as the model declares it (planar, CHW for images)."""

    shape: tuple[int, ...]
    dtype: DType

    @property
    def nbytes(self) -> int:
        return element_count(self.shape) * np.dtype(self.dtype).itemsize


def element_count(shape: tuple[int, ...]) -> int:
    """Values in a tensor of ``shape``, in Python integers: a forged shape cannot wrap."""
    return math.prod(shape)


@dataclass(frozen=True)
class Layer:
    """Base of every decoded layer (v3) or node (v4): where it is and what it is called."""

    index: int
    offset: int


@dataclass(frozen=True)
class Program:
    """The executable part of a model; each version's parser extends it."""

    layers: tuple[Layer, ...]


@dataclass(frozen=True)
class LayerSummary:
    """One layer as reports and the chip-time estimate see it."""

    index: int
    op: str
    on_kpu: bool
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    macs: int
    elements: int
    """Values the layer reads or writes: the work of a CPU layer."""


@dataclass(frozen=True, eq=False)
class Parsed:
    """What a version's parser finds; :class:`KModel` adds the bytes and their identity."""

    program: Program
    main_mem: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    summaries: tuple[LayerSummary, ...]
    kpu_ram_bytes: int
    """The highest KPU RAM byte any layer touches; must fit the chip's 2 MiB."""


@dataclass(frozen=True, eq=False)
class KModel(Parsed):
    """A validated kmodel: the bytes, what it needs and the layers to execute."""

    version: int
    data: bytes
    sha256: str

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def macs(self) -> int:
        return sum(s.macs for s in self.summaries)
