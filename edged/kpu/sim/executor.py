"""Running a parsed kmodel on the simulated K210: one executor per loaded model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from edged.kpu.errors import RunError
from edged.kpu.kmodel.model import KModel, TensorSpec
from edged.kpu.sim.lanes import Lanes, machine_lanes

Rounding = Literal["half-even", "half-up"]
"""How the activation's ``((x - start) * mul) >> shift`` rounds exact halves.

``half-even`` is nncase 0.2's reference (``carry_shift<int64_t, true>`` in
``k210_kernels.h``), the default; ``half-up`` is the SDK's ``kpu_carry_shift`` and the
emulator of nncase 0.1, which also picks the activation segment inclusively (the highest
with ``start <= value``, where nncase 0.2 needs ``start < value``). Public sources do not
say which the silicon does; the two differ by one LSB on exact ties and never change a
detection on the fixture models.
"""

LayerObserver = Callable[[int, float, npt.NDArray[np.generic] | None], None]
"""Called after each layer with its index, the seconds it took, and what it produced."""


class Executor(Protocol):
    """A loaded model's private state (working memory, KPU RAM) and its run loop."""

    model: KModel

    def run(
        self, inputs: Sequence[npt.NDArray[np.generic]], observer: LayerObserver | None = None
    ) -> list[npt.NDArray[np.generic]]: ...


def check_inputs(
    specs: Sequence[TensorSpec], inputs: Sequence[npt.NDArray[np.generic]]
) -> list[npt.NDArray[np.generic]]:
    """Inputs exactly as the model declares them, or a :class:`RunError` that says why."""
    if len(inputs) != len(specs):
        raise RunError(f"the model takes {len(specs)} input(s), got {len(inputs)}")
    checked = []
    for i, (spec, value) in enumerate(zip(specs, inputs, strict=True)):
        array = np.asarray(value)
        if array.dtype != np.dtype(spec.dtype):
            raise RunError(f"input {i} must be {spec.dtype}, got {array.dtype}")
        if array.size != int(np.prod(spec.shape)):
            raise RunError(f"input {i} must have shape {spec.shape}, got {array.shape}")
        checked.append(np.ascontiguousarray(array).reshape(spec.shape))
    return checked


def create_executor(model: KModel, *, rounding: Rounding = "half-even",
                    lanes: Lanes | None = None) -> Executor:
    """An executor for ``model``, with its own working memory and KPU RAM, splitting its
    layers across ``lanes`` (default: one per core)."""
    from edged.kpu.kmodel.v3 import V3Program  # noqa: PLC0415 - versions import this module
    from edged.kpu.sim.v3_exec import V3Executor  # noqa: PLC0415

    lanes = lanes or machine_lanes()
    if isinstance(model.program, V3Program):
        return V3Executor(model, rounding, lanes)
    from edged.kpu.sim.v4_exec import V4Executor  # noqa: PLC0415

    return V4Executor(model, rounding, lanes)
