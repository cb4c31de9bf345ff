"""Errors about models and the accelerator, carrying MaixPy's codes and wording.

Field devices log MaixPy's own texts (``[MAIXPY]kpu: load error:2006, ERR_NO_MEM: memory
not enough``); every error here carries the same code and name so that a log line from
edged and one from a Maix board can be matched, plus the precise reason MaixPy omits.
"""

from __future__ import annotations


class KpuError(Exception):
    """Base of every model and accelerator error; ``code`` is MaixPy's ``sipeed_kpu_err_t``."""

    code = 2015
    name = "ERR_UNKNOWN"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def maixpy(self) -> str:
        """The firmware's own wording: ``load error:<code>, <name>``."""
        return f"load error:{self.code}, {self.name}"

    def __str__(self) -> str:
        return f"{self.maixpy}: {self.detail}"


class KmodelError(KpuError):
    """A kmodel file that cannot be used: wrong version, truncated or inconsistent."""


class KmodelVersionError(KmodelError):
    """Neither v3 nor v4: MaixPy refuses it with ERR_KMODEL_VERSION (2002)."""

    code = 2002
    name = "ERR_KMODEL_VERSION"

    def __str__(self) -> str:
        return f"load error:{self.code}, only support kmodel v3/v4 ({self.name}): {self.detail}"


class KmodelFormatError(KmodelError):
    """A truncated or inconsistent file (ERR_KMODEL_FORMAT, 2003), with where it went wrong."""

    code = 2003
    name = "ERR_KMODEL_FORMAT"

    def __init__(self, detail: str, *, offset: int | None = None, layer: int | None = None) -> None:
        where = []
        if layer is not None:
            where.append(f"layer {layer}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        super().__init__(f"{detail} ({', '.join(where)})" if where else detail)
        self.offset = offset
        self.layer = layer


class FirstLayerError(KmodelError):
    """A v3 model must start with a KPU convolution or a fully connected layer (2007)."""

    code = 2007
    name = "ERR_GET_CONV_LAYER"


class MemoryOverflow(KpuError):
    """A load that does not fit the SRAM budget ("memory overflow"; MaixPy's ERR_NO_MEM)."""

    code = 2006
    name = "ERR_NO_MEM"

    def __init__(self, detail: str, *, needed: int, free: int) -> None:
        super().__init__(detail)
        self.needed = needed
        self.free = free

    def __str__(self) -> str:
        return f"memory overflow: {self.maixpy}: memory not enough: {self.detail}"


class ModelsFull(KpuError):
    """MaixPy holds at most five models at once (ERR_MODELS_FULL, 2009)."""

    code = 2009
    name = "ERR_MODELS_FULL"


class HandleError(KpuError):
    """A handle that is not loaded: deinit twice, or run after deinit (ERR_PARAM, 2001)."""

    code = 2001
    name = "ERR_PARAM"


class RunError(KpuError):
    """A run that cannot proceed: wrong input shape or dtype (ERR_RUN_MODEL, 2008)."""

    code = 2008
    name = "ERR_RUN_MODEL"
