"""The contract every KPU backend keeps, simulated or a physical chip on a serial link.

There is one KPU: a backend serialises loads, deinits and runs, so a deinit waits for the
run in flight and no run ever sees a half-loaded model. Every failure is a
:class:`~edged.kpu.errors.KpuError` carrying MaixPy's code; a refused load leaves the SRAM
account as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edged.kpu.kmodel.model import KModel
from edged.kpu.sram import MemoryReport

Arrays = list[npt.NDArray[np.generic]]
"""A frame's inputs or outputs, one array per tensor of the model."""


@dataclass(frozen=True)
class ModelHandle:
    """A loaded model: what ``load`` returns and ``run`` and ``deinit`` take."""

    id: int
    name: str
    sha256: str
    nbytes: int
    """General SRAM reserved for it, freed by ``deinit``."""


@dataclass(frozen=True)
class KpuStats:
    """Counters for stats: completed runs and the seconds the KPU spent on them (summed over
    the frames it computes at once)."""

    runs: int
    busy_seconds: float


class KpuBackend(Protocol):
    """One accelerator. All methods but ``memory`` and ``stats`` wait for the KPU."""

    async def load(self, model: KModel, name: str) -> ModelHandle:
        """Reserve SRAM and load; raises ``MemoryOverflow``, ``ModelsFull`` or
        ``KmodelError`` and then changes nothing."""
        ...

    async def deinit(self, handle: ModelHandle) -> None:
        """Free exactly what ``load`` took; a handle not loaded is a ``HandleError``."""
        ...

    async def run(
        self, handle: ModelHandle, inputs: Sequence[npt.NDArray[np.generic]]
    ) -> Arrays:
        """Run one frame: inputs in the model's layout, outputs as the model declares
        them. ``HandleError`` for a handle not loaded, ``RunError`` for a wrong input."""
        ...

    @property
    def concurrent_runs(self) -> int:
        """Frames it computes at once (a board's one KPU: 1)."""
        ...

    def memory(self) -> MemoryReport: ...

    def stats(self) -> KpuStats: ...

    async def close(self) -> None:
        """Deinit every model and release the accelerator; idempotent."""
        ...
