"""The SRAM account shared by every backend: what each loaded model holds, exactly.

The K210 has 8 MiB of SRAM: 6 MiB of general SRAM, from which the firmware itself, its
stacks, heaps and frame buffers are also taken, and 2 MiB of KPU RAM that holds feature maps
while a model runs. A loaded model keeps its kmodel buffer (the chip executes from it), its
working memory and its input and output buffers in general SRAM until it is deinitialised;
KPU RAM is scratch that every run reuses, so it is checked per model, never summed.

How much general SRAM a program can give to models depends on the runtime around it. The
three profiles, in bytes (sources in ``research/anchors.md`` section 2.4):

``c-sdk``: 5.5 MiB = 5,767,168
    A bare C program on the Kendryte standalone SDK. Sipeed gives about 5.5 MB as the
    largest model in the C SDK (6 MiB of general SRAM less code, stacks and image buffers,
    https://bbs.sipeed.com/t/topic/691) and the KPU description gives 5.5 to 5.9 MiB as the
    largest model that runs in real time (https://wiki.sipeed.com/soft/maixpy/en/api_reference/Maix/kpu.html);
    the lower figure leaves a QVGA frame buffer and a small program room to run.
``maixpy-mini``: 3460 KiB = 3,543,040
    MaixPy's "minimum" firmware: ``kpu.memtest()`` on an M5StickV prints
    ``free sys heap memory: 3460 KB`` (MaixPy-v1#180); Sipeed quotes about 3.5 MB for a model
    in MaixPy. Models come from the sys heap, so its free size at boot is the budget.
``maixpy-full``: 2052 KiB = 2,101,248
    The full MaixPy v0.5.0 firmware (LVGL, video, OpenMV extras): ``kpu.memtest()`` on a Maix
    Dock prints ``free sys heap memory: 2052 KB`` (MaixPy-v1#422, where a 3336 KB model fails
    with ERR_NO_MEM).

``memtest`` prints kilobytes of 1024 bytes (a binary search to 1 KiB), hence the KiB figures.
Every profile has the chip's 2 MiB of KPU RAM and MaixPy's limit of five models loaded at
once (``ERR_MODELS_FULL``, 2009).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

from edged.kpu.errors import HandleError, MemoryOverflow, ModelsFull
from edged.kpu.kmodel.kpu_regs import KPU_RAM_BYTES
from edged.kpu.kmodel.model import KModel

KIB = 1024
MIB = 1024 * KIB

C_SDK_MODEL_BYTES = 5 * MIB + 512 * KIB
"""Sipeed: max model about 5.5 MB in the C SDK; datasheet: 5.5-5.9 MiB in real time."""

MAIXPY_MINI_MODEL_BYTES = 3460 * KIB
"""M5StickV ``kpu.memtest()``: 3460 KB free sys heap (MaixPy-v1#180); Sipeed: about 3.5 MB."""

MAIXPY_FULL_MODEL_BYTES = 2052 * KIB
"""Full v0.5.0 firmware ``kpu.memtest()``: 2052 KB free sys heap (MaixPy-v1#422)."""

MAX_MODELS = 5
"""MaixPy loads at most five models at once (``ERR_MODELS_FULL``)."""


@dataclass(frozen=True)
class RuntimeProfile:
    """What one runtime leaves to models: general SRAM, KPU RAM and a model count."""

    name: str
    model_bytes: int
    kpu_ram_bytes: int = KPU_RAM_BYTES
    max_models: int = MAX_MODELS


PROFILES: dict[str, RuntimeProfile] = {
    p.name: p
    for p in (
        RuntimeProfile("c-sdk", C_SDK_MODEL_BYTES),
        RuntimeProfile("maixpy-mini", MAIXPY_MINI_MODEL_BYTES),
        RuntimeProfile("maixpy-full", MAIXPY_FULL_MODEL_BYTES),
    )
}


def get_profile(profile: str | RuntimeProfile) -> RuntimeProfile:
    """A profile by name (or itself); an unknown name is a ``ValueError`` listing the known."""
    if isinstance(profile, RuntimeProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(
            f"unknown runtime profile {profile!r}; known: {', '.join(PROFILES)}"
        ) from None


@dataclass(frozen=True)
class ModelCost:
    """The general SRAM one loaded model holds, item by item."""

    kmodel: int
    """The kmodel file, resident: the chip executes from this buffer."""
    working: int
    """Working memory from the header (v3 ``main_mem_usage``, v4 ``main_mem``)."""
    input: int
    """The planar input buffer the KPU reads (MaixPy's ``pix_ai``)."""
    output: int
    """The output buffers the model declares."""

    @classmethod
    def of(cls, model: KModel) -> ModelCost:
        return cls(
            kmodel=model.size,
            working=model.main_mem,
            input=sum(t.nbytes for t in model.inputs),
            output=sum(t.nbytes for t in model.outputs),
        )

    @property
    def total(self) -> int:
        return self.kmodel + self.working + self.input + self.output

    def itemised(self) -> str:
        return (
            f"kmodel {self.kmodel} + working {self.working} + input {self.input} + "
            f"output {self.output} = {self.total} bytes"
        )


@dataclass(frozen=True)
class ModelMemory:
    """One live reservation in a :class:`MemoryReport`."""

    id: int
    name: str
    nbytes: int
    cost: ModelCost


@dataclass(frozen=True)
class MemoryReport:
    """The account at one moment: totals and every loaded model."""

    profile: str
    total: int
    used: int
    free: int
    models: tuple[ModelMemory, ...]

    @classmethod
    def of(cls, profile: str, total: int, models: tuple[ModelMemory, ...]) -> MemoryReport:
        """The account of ``models`` against ``total`` bytes."""
        used = sum(m.nbytes for m in models)
        return cls(profile, total, used, total - used, models)


@dataclass(frozen=True)
class FitReport:
    """Whether one model alone fits a profile, and by how much (``edged check``)."""

    profile: str
    cost: ModelCost
    budget: int
    kpu_ram_needed: int
    kpu_ram: int

    @property
    def margin(self) -> int:
        """Bytes left over (negative: missing) when this model is the only one loaded."""
        return self.budget - self.cost.total

    @property
    def fits(self) -> bool:
        return self.margin >= 0 and self.kpu_ram_needed <= self.kpu_ram


def fits(model: KModel, profile: str | RuntimeProfile) -> FitReport:
    """Does ``model`` alone fit ``profile``? A pure check; nothing is reserved."""
    p = get_profile(profile)
    return FitReport(
        p.name, ModelCost.of(model), p.model_bytes, model.kpu_ram_bytes, p.kpu_ram_bytes
    )


class SramAccount:
    """Reservations against one profile; a refused reservation changes nothing.

    Thread-safe, so a backend may reserve on its event loop and report from anywhere.
    """

    def __init__(self, profile: str | RuntimeProfile = "c-sdk") -> None:
        self.profile = get_profile(profile)
        self._live: dict[int, ModelMemory] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def reserve(self, model: KModel, name: str) -> int:
        """Reserve what ``model`` holds while loaded; returns the reservation id.

        Raises :class:`MemoryOverflow` when it needs more KPU RAM than the chip has or more
        general SRAM than is free, :class:`ModelsFull` when the profile's model count is
        reached.
        """
        p = self.profile
        cost = ModelCost.of(model)
        if model.kpu_ram_bytes > p.kpu_ram_bytes:
            raise MemoryOverflow(
                f"model {name!r} uses {model.kpu_ram_bytes} bytes of KPU RAM, more than the "
                f"chip's {p.kpu_ram_bytes}",
                needed=model.kpu_ram_bytes,
                free=p.kpu_ram_bytes,
            )
        with self._lock:
            if len(self._live) >= p.max_models:
                loaded = ", ".join(repr(m.name) for m in self._live.values())
                raise ModelsFull(
                    f"{len(self._live)} models are loaded ({loaded}), the most the "
                    f"{p.name} profile allows; deinit one before loading {name!r}"
                )
            used = sum(m.nbytes for m in self._live.values())
            free = p.model_bytes - used
            if cost.total > free:
                raise MemoryOverflow(
                    f"model {name!r} needs {cost.total} bytes ({cost.itemised()}) but only "
                    f"{free} of {p.model_bytes} bytes are free under the {p.name} profile "
                    f"({used} bytes held by {len(self._live)} loaded model(s))",
                    needed=cost.total,
                    free=free,
                )
            rid = next(self._ids)
            self._live[rid] = ModelMemory(rid, name, cost.total, cost)
            return rid

    def release(self, rid: int) -> None:
        """Free exactly what reservation ``rid`` took; an unknown or freed id is a
        :class:`HandleError`."""
        with self._lock:
            if self._live.pop(rid, None) is None:
                raise HandleError(f"no live memory reservation {rid} (deinit twice?)")

    def report(self) -> MemoryReport:
        with self._lock:
            models = tuple(self._live.values())
        return MemoryReport.of(self.profile.name, self.profile.model_bytes, models)
