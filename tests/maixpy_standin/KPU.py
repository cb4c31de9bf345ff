# ruff: noqa: N999, N801 - MaixPy's module is KPU and its types are kpu_net, kpu_fmap
"""MaixPy's ``KPU`` module on edged's simulated KPU, with the firmware's checks and texts.

``load`` parses the kmodel (a file, or flash at an offset), reserves its cost in the board's
sys-heap account (``_board.ACCOUNT``) and builds a simulator executor; what does not fit
raises ``ValueError("[MAIXPY]kpu: load error:2006, ERR_NO_MEM: memory not enough")``, as
``Maix_kpu.c`` words it (MaixPy-v1 ``py_kpu_class_load`` and ``get_kpu_err_str``).
``forward`` takes a list of floats or an image's ``pix_ai``; ``run_yolo2`` decodes with
edged's ``Yolo2Decoder(maixpy_compat=True)``, MaixPy's own region-layer quirks included.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from edged.kpu.errors import (
    FirstLayerError,
    KmodelError,
    KmodelVersionError,
    MemoryOverflow,
    ModelsFull,
)
from edged.kpu.kmodel import KMDL, KModel, parse_kmodel
from edged.kpu.sim.executor import Executor, create_executor
from tests.maixpy_standin import _board

if TYPE_CHECKING:
    from edged.vision.yolo2 import Yolo2Decoder

ERR_STR = {
    2001: "ERR_PARAM: please check param, load address or kmodel file name",
    2002: "ERR_KMODEL_VERSION: only support kmodel V3/V4 now",
    2003: "ERR_KMODEL_FORMAT: layer_header.body_size <=0",
    2005: "ERR_READ_FILE: read file failed",
    2006: "ERR_NO_MEM: memory not enough",
    2007: "ERR_GET_CONV_LAYER: first layer should be conv layer",
    2008: "ERR_RUN_MODEL: maybe model dirty",
    2009: "ERR_MODELS_FULL: we only support load 5 models in the same time",
    2013: "ERR_OUTPUTS_SET: need kpu.set_outputs() to set shape",
}


def _load_error(code: int) -> ValueError:
    return ValueError(f"[MAIXPY]kpu: load error:{code}, {ERR_STR[code]}")


class _AiImage(Protocol):
    pix_ai: npt.NDArray[np.uint8] | None

    def width(self) -> int: ...

    def height(self) -> int: ...

    def is_grayscale(self) -> bool: ...


class kpu_fmap(bytes):
    """An output feature map: its raw bytes (MaixPy's buffer protocol) and its shape."""

    _typecode: str
    _shape: tuple[int, int, int]

    @classmethod
    def of(cls, value: npt.NDArray[np.generic], shape: tuple[int, int, int]) -> kpu_fmap:
        fmap = cls(np.ascontiguousarray(value).tobytes())
        fmap._typecode = "f" if value.dtype == np.float32 else "B"
        fmap._shape = shape
        return fmap

    def typecode(self) -> str:
        return self._typecode

    def size(self) -> int:
        return len(self)

    def w(self) -> int:
        return self._shape[0]

    def h(self) -> int:
        return self._shape[1]

    def ch(self) -> int:
        return self._shape[2]


class _Yolo2Find:
    """One ``run_yolo2`` result, with MaixPy's accessors."""

    def __init__(self, rect: tuple[int, int, int, int], classid: int, value: float,
                 index: int, objnum: int) -> None:
        self._rect, self._classid, self._value = rect, classid, value
        self._index, self._objnum = index, objnum

    def rect(self) -> tuple[int, int, int, int]:
        return self._rect

    def classid(self) -> int:
        return self._classid

    def value(self) -> float:
        return self._value

    def index(self) -> int:
        return self._index

    def objnum(self) -> int:
        return self._objnum


class kpu_net:
    def __init__(self, model: KModel, rid: int, path: str | None, addr: int | None) -> None:
        self._model = model
        self._rid: int | None = rid
        self._path, self._addr = path, addr
        self._executor: Executor = create_executor(model)
        self._shapes: dict[int, tuple[int, int, int]] = {}
        self._outputs: list[npt.NDArray[np.generic]] = []
        self._yolo: Yolo2Decoder | None = None

    def model_size(self) -> int:
        return self._model.size

    def model_path(self) -> str | None:
        return self._path

    def model_addr(self) -> int | None:
        return self._addr


def kmodel_extent(head: bytes) -> int:
    """How many bytes the kmodel at the start of ``head`` spans, from its headers, as the
    firmware works it out before reading a model from flash (v3: header, output table, layer
    headers and bodies; v4: header, tensor tables, constants, node headers and bodies)."""
    words: tuple[int, ...] = struct.unpack_from("<10I", head)
    if words[0] == 3:
        n_layers, n_outputs = words[3], words[6]
        at = 28 + 8 * n_outputs
        layers: tuple[int, ...] = struct.unpack_from(f"<{2 * n_layers}I", head, at)
        return at + 8 * n_layers + sum(layers[1::2])
    if words[0] == KMDL and words[1] == 4:
        constants, n_nodes, n_inputs, n_outputs = words[4], words[6], words[7], words[8]
        at = 40 + 32 * n_inputs + 16 * n_outputs + constants
        nodes: tuple[int, ...] = struct.unpack_from(f"<{2 * n_nodes}I", head, at)
        return at + 8 * n_nodes + sum(nodes[1::2])
    raise _load_error(2002)


def load(where: int | str) -> kpu_net:
    if isinstance(where, bool) or not isinstance(where, int | str):
        raise TypeError("[MAIXPY]kpu: only accept int or string")
    if isinstance(where, int):
        if where <= 0:
            raise ValueError("[MAIXPY]kpu: model_addr must > 0 ")
        head = _board.flash_read(where, min(1 << 20, _board.FLASH_BYTES - where))
        data = _board.flash_read(where, kmodel_extent(head))
        name = f"flash@{where:#x}"
    else:
        if not any(ext in where for ext in (".kmodel", ".smodel", ".emodel")):
            raise ValueError("[MAIXPY]kpu: model format don't match, only supply .kmodel ")
        try:
            data = Path(where).read_bytes()
        except OSError:
            raise _load_error(2005) from None
        name = where
    try:
        model = parse_kmodel(data)
    except KmodelVersionError:
        raise _load_error(2002) from None
    except FirstLayerError:
        raise _load_error(2007) from None
    except KmodelError:
        raise _load_error(2003) from None
    try:
        rid = _board.ACCOUNT.reserve(model, name)
    except MemoryOverflow:
        raise _load_error(2006) from None
    except ModelsFull:
        raise _load_error(2009) from None
    return kpu_net(model, rid, where if isinstance(where, str) else None,
                   where if isinstance(where, int) else None)


def _net(net: object) -> kpu_net:
    if not isinstance(net, kpu_net):
        raise TypeError("[MAIXPY]kpu: kpu_net type error")
    return net


def deinit(net: kpu_net) -> bool:
    """Frees the model; a second deinit of the same net does nothing (MaixPy nulls it)."""
    net = _net(net)
    if net._rid is not None:
        _board.ACCOUNT.release(net._rid)
        net._rid = None
    return True


def set_outputs(net: kpu_net, idx: int, w: int, h: int, ch: int) -> bool:
    net = _net(net)
    outputs = net._model.outputs
    if not 0 <= idx < len(outputs):
        return False
    if w * h * ch * np.dtype(outputs[idx].dtype).itemsize != outputs[idx].nbytes:
        return False
    net._shapes[idx] = (w, h, ch)
    return True


def _input(net: kpu_net, feed: list[float] | _AiImage) -> npt.NDArray[np.generic]:
    spec = net._model.inputs[0]
    if isinstance(feed, list):
        if not feed:
            raise ValueError("[MAIXPY]kpu: check input list format err!\r\n")
        return np.asarray(feed, np.float32).reshape(spec.shape)
    pix = feed.pix_ai
    channels = spec.shape[-3] if len(spec.shape) >= 3 else 1
    if (pix is None or (feed.width(), feed.height()) != (spec.shape[-1], spec.shape[-2])
            or feed.is_grayscale() != (channels == 1)):
        raise ValueError("[MAIXPY]kpu: check img format err!\r\n")
    return pix.reshape(spec.shape)


def _run(net: kpu_net, feed: list[float] | _AiImage) -> None:
    if net._rid is None:
        raise OSError(ERR_STR[2008])
    model = net._model
    if model.version == 4 and len(net._shapes) < len(model.outputs):
        raise OSError(ERR_STR[2013])
    net._outputs = net._executor.run([_input(net, feed)])


def _fmap(net: kpu_net, idx: int) -> kpu_fmap:
    value = net._outputs[idx]
    shape = net._shapes.get(idx, (int(value.size), 1, 1))
    return kpu_fmap.of(value, shape)


def forward(net: kpu_net, feed: list[float] | _AiImage, out_index: int = 0,
            dma: int = -1) -> kpu_fmap:
    net = _net(net)
    _run(net, feed)
    return _fmap(net, out_index)


def get_output(net: kpu_net, idx: int) -> kpu_fmap:
    net = _net(net)
    if not 0 <= idx < len(net._outputs):
        raise OSError("sipeed_kpu_get_output err")
    return _fmap(net, idx)


def init_yolo2(net: kpu_net, threshold: float, nms_value: float, anchor_number: int,
               anchor: tuple[float, ...] | list[float], dma: int = -1) -> bool:
    from edged.vision.yolo2 import Yolo2Decoder  # OpenCV: only streaming boards pay for it

    net = _net(net)
    if not 0 <= threshold <= 1:
        raise ValueError("[MAIXPY]kpu: threshold only support 0 to 1")
    if not 0 <= nms_value <= 1:
        raise ValueError("[MAIXPY]kpu: nms_value only support 0 to 1")
    if anchor_number <= 0:
        raise ValueError("[MAIXPY]kpu: anchor_number should > 0")
    if len(anchor) != 2 * anchor_number:
        raise ValueError(f"requested length {2 * anchor_number} but object has length "
                         f"{len(anchor)}")
    net._yolo = Yolo2Decoder(tuple(float(a) for a in anchor), (), float(threshold),
                             float(nms_value), maixpy_compat=True)
    return True


def run_yolo2(net: kpu_net, img: _AiImage) -> list[_Yolo2Find] | None:
    from edged.vision.preprocess import Transform

    net = _net(net)
    decoder = net._yolo
    if decoder is None:
        raise RuntimeError("kpu.run_yolo2 before kpu.init_yolo2 (MaixPy dereferences NULL)")
    _run(net, img)
    found = decoder.decode(net._outputs, Transform.identity(img.width(), img.height()))
    return [
        _Yolo2Find((int(d.box.x), int(d.box.y), int(d.box.w), int(d.box.h)), d.class_id,
                   d.score, i, len(found))
        for i, d in enumerate(found)
    ] or None
