"""The model manager: which model each pipeline runs, and the one place models load and go.

On a K210 two models rarely fit at once, so switching a pipeline's model means deinit,
then load; if the new model cannot be loaded (memory overflow, a corrupted file, a sha256
mismatch) the old one is loaded again and the failure reported. Models in the preload list
(or loaded by command) stay resident while they fit, which makes a switch to them instant.
The SRAM account of the backend decides what fits, never a guess here.

Every frame carries the :class:`Active` binding it was prepared for; a swap replaces the
binding, so the scheduler can drop frames prepared for the old model instead of running
or publishing them under the wrong name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from edged.kpu.backend import KpuBackend, ModelHandle
from edged.kpu.errors import KpuError
from edged.kpu.sram import MemoryReport
from edged.runtime.definitions import DefinitionError
from edged.runtime.pipeline import Pipeline, PipelineDefinition, build_pipeline
from edged.runtime.registry import ModelRegistry, UnknownModel

log = structlog.get_logger(component="models")


class LifecycleError(Exception):
    """A model operation that cannot be carried out; nothing changed. Loading failures are
    :class:`KpuError`s instead and keep MaixPy's codes."""


class UnknownPipelineError(LifecycleError):
    pass


class UnknownModelError(LifecycleError):
    pass


class NotAllowedError(LifecycleError):
    """The model is not in the pipeline's allow-list."""


class RateLimitedError(LifecycleError):
    """The pipeline was swapped too recently."""


class InUseError(LifecycleError):
    """A model a pipeline runs cannot be deinitialised."""


class NotLoadedError(LifecycleError):
    pass


class ModelUnusableError(LifecycleError):
    """The model's files or manifest are broken (a bad kmodel, a sha256 mismatch);
    ``kpu`` is the kmodel error underneath, when there is one."""

    def __init__(self, message: str, kpu: KpuError | None) -> None:
        super().__init__(message)
        self.kpu = kpu


@dataclass(frozen=True, eq=False)
class Active:
    """What a pipeline runs now; replaced (never mutated) by every swap."""

    pipeline: Pipeline
    handle: ModelHandle
    generation: int

    @property
    def model(self) -> str:
        return self.pipeline.model.name


@dataclass(frozen=True)
class Change:
    """What a lifecycle operation did, for the command reply and the logs."""

    action: str
    model: str
    pipeline: str | None = None
    previous: str | None = None
    loaded: tuple[str, ...] = ()
    unloaded: tuple[str, ...] = ()
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "action": self.action,
            "model": self.model,
            "pipeline": self.pipeline,
            "previous": self.previous,
            "loaded": list(self.loaded),
            "unloaded": list(self.unloaded),
            "ms": round(self.seconds * 1e3, 2),
        }


Announce = Callable[[Change], Awaitable[None]]


@dataclass
class SwapCounts:
    """What the stats report of swaps: how many worked, how many failed, the last one's time."""

    swaps: int = 0
    failed: int = 0
    last: float | None = None
    """Seconds the latest successful swap took."""


class ModelManager:
    """Loads, deinits and swaps models through one backend, one operation at a time."""

    def __init__(
        self,
        backend: KpuBackend,
        registry: ModelRegistry,
        definitions: Mapping[str, PipelineDefinition],
        *,
        preload: Sequence[str] = (),
        allow: Mapping[str, Sequence[str]] | None = None,
        min_swap_interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.definitions = dict(definitions)
        self.preload = tuple(preload)
        self.allow = {k: tuple(v) for k, v in (allow or {}).items()}
        self.min_swap_interval = min_swap_interval
        self.stats = SwapCounts()
        self._clock = clock
        self._lock = asyncio.Lock()
        self._resident: dict[str, ModelHandle] = {}
        self._pinned: set[str] = set()
        self._active: dict[str, Active | None] = {}
        self._models: dict[str, str] = {}  # pipeline -> the model it runs (or is swapping to)
        self._generation = 0
        self._last_swap: dict[str, float] = {}

    # -- start and stop -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load the preload list, then every pipeline's model; a failure here is fatal."""
        async with self._lock:
            for name in self.preload:
                await self._ensure_loaded(name)
                self._pinned.add(name)
            for pipeline, definition in self.definitions.items():
                bound = self._bind(pipeline, definition.model)
                handle = await self._ensure_loaded(definition.model)
                self._activate(pipeline, bound, handle)

    async def apply(self, definitions: Mapping[str, PipelineDefinition]) -> None:
        """Run the pipelines of ``definitions`` (a config reload): new ones start, removed
        ones stop and free their models, changed ones are bound again."""
        async with self._lock:
            changed = {n: d for n, d in definitions.items() if self.definitions.get(n) != d}
            bound = {n: self._bind(n, d.model, d) for n, d in changed.items()}  # verify first
            for gone in set(self.definitions) - set(definitions):
                del self.definitions[gone]
                self._active.pop(gone, None)
                await self._release_unneeded(self._models.pop(gone))
            for name, definition in changed.items():
                previous = self._models.get(name)
                self.definitions[name] = definition
                self._active[name] = None
                self._models[name] = definition.model
                if previous is not None:
                    await self._release_unneeded(previous)
                self._activate(name, bound[name], await self._ensure_loaded(definition.model))

    async def close(self) -> None:
        async with self._lock:
            for pipeline in self._active:
                self._active[pipeline] = None
            for name, handle in list(self._resident.items()):
                await self.backend.deinit(handle)
                del self._resident[name]

    # -- what the scheduler and reports read ----------------------------------------------------

    def active(self, pipeline: str) -> Active | None:
        """The current binding, or None while the pipeline is being swapped."""
        return self._active.get(pipeline)

    def is_current(self, active: Active) -> bool:
        current = self._active.get(active.pipeline.name)
        return current is not None and current.generation == active.generation

    def pipeline_models(self) -> dict[str, str]:
        return dict(self._models)

    def resident(self) -> dict[str, ModelHandle]:
        """Loaded models by name, and the handle each was loaded under."""
        return dict(self._resident)

    def memory(self) -> MemoryReport:
        return self.backend.memory()

    def allowed(self, pipeline: str) -> tuple[str, ...]:
        """The models a pipeline may switch to: its allow-list, or every available model."""
        return self.allow.get(pipeline) or tuple(
            listing.name for listing in self.registry.listings if listing.available
        )

    # -- lifecycle operations -----------------------------------------------------------------

    async def switch(self, pipeline: str, model: str, announce: Announce | None = None) -> Change:
        """Run ``model`` in ``pipeline``: deinit the old model unless something else keeps it,
        load the new one, and on failure load the old one again and re-raise.

        ``announce`` runs after the new model is loaded and before any frame runs on it, so a
        reply published there precedes every detection made with the new model.
        """
        definition = self._definition(pipeline)
        if model not in self.allowed(pipeline):
            raise NotAllowedError(
                f"model {model!r} is not allowed in pipeline {pipeline!r} "
                f"(allowed: {', '.join(self.allowed(pipeline))})"
            )
        async with self._lock:
            previous = self._models[pipeline]
            if model == previous:
                return Change("switch", model, pipeline, previous)
            since = self._clock() - self._last_swap.get(pipeline, -1e9)
            if since < self.min_swap_interval:
                raise RateLimitedError(
                    f"pipeline {pipeline!r} was switched {since:.1f} s ago; wait "
                    f"{self.min_swap_interval - since:.1f} s (swaps are rate-limited)"
                )
            bound = self._bind(pipeline, model, definition)
            started = self._clock()
            self._active[pipeline] = None  # frames prepared for the old model are dropped
            self._models[pipeline] = model
            unloaded: tuple[str, ...] = ()
            loaded: tuple[str, ...] = ()
            try:
                # free the old model first: on a K210 two rarely fit at once
                unloaded = await self._release_unneeded(previous)
                if model not in self._resident:
                    await self._ensure_loaded(model)
                    loaded = (model,)
            except BaseException:
                self.stats.failed += 1
                self._models[pipeline] = previous
                old = await self._ensure_loaded(previous)
                self._activate(pipeline, self._bind(pipeline, previous, definition), old)
                raise
            self._last_swap[pipeline] = self._clock()
            change = Change("switch", model, pipeline, previous, loaded, unloaded,
                            self._clock() - started)
            if announce is not None:
                await announce(change)
            self._activate(pipeline, bound, self._resident[model])
            self.stats.swaps += 1
            self.stats.last = change.seconds
            log.info("model_switched", **change.as_dict())
            return change

    async def load(self, model: str) -> Change:
        """Make ``model`` resident and keep it so (an explicit preload at run time)."""
        self._entry(model)
        async with self._lock:
            started = self._clock()
            loaded = () if model in self._resident else (model,)
            await self._ensure_loaded(model)
            self._pinned.add(model)
            return Change("load", model, loaded=loaded, seconds=self._clock() - started)

    async def deinit(self, model: str) -> Change:
        """Free ``model``; refused while a pipeline runs it (switch that pipeline first)."""
        self._entry(model)
        async with self._lock:
            users = [p for p, m in self._models.items() if m == model]
            if users:
                raise InUseError(
                    f"model {model!r} is running in pipeline(s) {', '.join(users)}: switch "
                    "them to another model first"
                )
            self._pinned.discard(model)
            if model not in self._resident:
                raise NotLoadedError(f"model {model!r} is not loaded")
            started = self._clock()
            await self.backend.deinit(self._resident.pop(model))
            return Change("deinit", model, unloaded=(model,), seconds=self._clock() - started)

    # -- internals ------------------------------------------------------------------------------

    def _definition(self, pipeline: str) -> PipelineDefinition:
        try:
            return self.definitions[pipeline]
        except KeyError:
            raise UnknownPipelineError(
                f"unknown pipeline {pipeline!r} (known: {', '.join(self.definitions)})"
            ) from None

    def _entry(self, model: str) -> None:
        try:
            self.registry.get(model)
        except UnknownModel as exc:
            raise UnknownModelError(str(exc)) from exc
        except DefinitionError as exc:
            raise _unusable(exc) from exc

    def _bind(self, pipeline: str, model: str,
              definition: PipelineDefinition | None = None) -> Pipeline:
        """The pipeline bound to ``model``, verified now (sha256, shapes), not per frame."""
        base = definition or self.definitions[pipeline]
        self._entry(model)
        try:
            return build_pipeline(pipeline, base.model_copy(update={"model": model}),
                                  self.registry)
        except DefinitionError as exc:
            raise _unusable(exc) from exc

    def _activate(self, pipeline: str, bound: Pipeline, handle: ModelHandle) -> None:
        self._generation += 1
        self._models[pipeline] = bound.model.name
        self._active[pipeline] = Active(bound, handle, self._generation)

    async def _ensure_loaded(self, model: str) -> ModelHandle:
        if model not in self._resident:
            entry = self.registry.get(model)
            try:
                self._resident[model] = await self.backend.load(entry.kmodel, model)
            except KpuError as exc:
                log.warning("model_load_failed", model=model, code=exc.code, error=str(exc))
                raise
        return self._resident[model]

    async def _release_unneeded(self, model: str) -> tuple[str, ...]:
        """Deinit ``model`` unless it is pinned or a pipeline runs it."""
        in_use = model in self._models.values()
        if model in self._pinned or in_use or model not in self._resident:
            return ()
        await self.backend.deinit(self._resident.pop(model))
        return (model,)


def _unusable(error: DefinitionError) -> ModelUnusableError:
    cause = error.__cause__
    return ModelUnusableError(str(error), cause if isinstance(cause, KpuError) else None)
