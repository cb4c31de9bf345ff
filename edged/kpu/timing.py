"""How long a real K210 would take to run a model, layer by layer, before deploying it.

The simulator's own speed says nothing about the chip; this estimate does. It is a model
with explicit parameters (:class:`ChipParams`), fitted to public per-layer measurements,
not a cycle-accurate simulation (its accuracy is discussed at the end).

KPU layers (convolution, batch-norm, activation and pooling, one pass)
    The KPU is 64 lanes, each computing a whole 3x3 window (the "64 KPU which are 576bit
    width ... 0.25TOPS@0.3W,400MHz" of Kendryte's description, quoted in
    https://github.com/laanwj/k210-sdk-stuff/blob/master/doc/kpu.md): each cycle it takes
    one 64-byte row of KPU RAM (64 pixels, or 2 or 4 channels of a narrow map) and adds its
    contribution to one output channel. So cycles follow rows, not MACs:

    * ``kpu_cycles_per_row`` x input rows x output channels (input rows once for a
      depthwise layer, whose output channel sees only its own input channel);
    * ``kpu_cycles_per_output_row`` x rows of the convolution-sized output, written back
      through the activation and pooling units (pooling is fused there, nothing more);
    * ``kpu_cycles_per_weight_byte`` x weight bytes, loaded from main memory;
    * ``kpu_layer_cycles`` per layer: registers, batch-norm and activation tables, the
      completion interrupt;
    * all of it once per batch of a v4 layer (nncase 0.2 sends the layer once a batch).

    At 400 MHz this is, on full 64-byte rows, 64 x 9 / 1.06 = 543 MACs/cycle for a 3x3
    convolution (576 peak), 64 / 1.06 = 60 MACs/cycle for a 1x1 (it uses one tap of nine:
    a 1x1 costs as much as a 3x3) and 576 / (1.06 + 0.75) = 318 MACs/cycle for a 3x3
    depthwise layer, which writes a row for every row it reads. Narrow maps waste lanes:
    a 20-pixel row fills 20 of 32 bytes. The four figures are a least-squares fit to the
    23 KPU layers of the MaixPy face detector (the fixture ``maixpy_facedetect_v3``)
    measured on a K210 at 400 MHz in https://github.com/kendryte/nncase/issues/77
    (12.33 ms in all; the fit is within 3 % on every layer over 0.1 ms and within 25 % on
    the small ones), and match the 0.21 ms of a 3-to-16-channel 3x3 layer on 320x240 in
    https://github.com/kendryte/nncase/issues/95.

Data between main memory and KPU RAM
    The input goes to KPU RAM by DMA at ``input_dma_bytes_per_second`` (700 MB/s: "DMA
    upload took 329 us" for 320x240x3 bytes, nncase#95), charged to the first layer. A KPU
    layer whose output goes to main memory (the last layer, or one followed by a CPU
    layer) pays for it too: a v3 model drains the KPU's output FIFO by DMA at
    ``output_dma_bytes_per_second`` (65 MB/s: the excess of the face model's last layer,
    9000 bytes, over the fit); nncase 0.2 (v4) copies it out on the CPU (``kpu_download``,
    https://github.com/kendryte/nncase/issues/96: "replace with CPU") at
    ``download_cycles_per_byte`` (34: the last layers of the test models of nncase#95,
    #96 and #97, 16 channels at 160x120 and 80x60 as the fit of their earlier layers
    shows, take 86 ns a byte more than their convolution).

CPU layers on the 400 MHz RV64 core
    Cycles per value read or written (``LayerSummary.elements``) by kind, plus
    ``cpu_cycles_per_mac`` for the MACs of a convolution or matrix product on the CPU and
    ``cpu_layer_cycles`` per layer:

    * conversion between uint8 and float, 9: measured, the face model's 30x15x20
      dequantize took 0.404 ms (nncase#77; nncase 0.2's takes about 6, nncase#95, #96);
    * layout (uploads to KPU RAM, padding, transposes, copies, concatenation), 13: nncase
      0.2's ``kpu_upload`` of 16x160x120 bytes took 20.4 ms (nncase#97, shapes inferred
      as above);
    * uint8 arithmetic (quantized binary ops, table lookups), 40: a ``QuantizedBinary`` of
      two 16x80x60 maps took 16.0 ms and of two 16x160x120 maps 58.7 ms (same source);
    * float arithmetic, 30, and exp, sigmoid, softmax or square roots, 60: assumed, the
      same loops as above with an FPU operation or a newlib call instead;
    * a multiply-accumulate, 33: fitted so that RFB-320 (``ultraface_v4``, three dilated
      convolutions on the CPU) takes about the 796 ms it takes on the chip
      (https://github.com/kendryte/nncase/tree/master/examples/fast_facedetect).

    These are nncase 0.2's generic N-d kernels; the v3 runtime's plain loops (``kpu.c``)
    are likely faster, so v3 CPU layers lean to the slow side.

    CPU layers are where models lose real time: an ``Add`` on the CPU turns a 30 ms
    MobileNet into 200 ms (https://github.com/kendryte/nncase/issues/148).

Accuracy: KPU layers follow the fit within a few percent; CPU figures rest on a handful of
measurements of nncase 0.2 kernels, so treat a CPU-bound estimate as good to a factor of
two. Limits: weights are taken as 8-bit (a model in the KPU's 16-bit mode is estimated as
8-bit); depthwise-ness is inferred from shapes and MACs, which cannot tell a 1x1
convolution of 9 to 9 channels from a 3x3 depthwise one (taken as depthwise); the KPU and
the CPU never overlap, as in the SDK's synchronous run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edged.kpu.kmodel.kpu_regs import kpu_rows
from edged.kpu.kmodel.model import KModel, LayerSummary


@dataclass(frozen=True)
class ChipParams:
    """Every figure the estimate uses; override any to ask "what if"."""

    clock_hz: float = 400e6
    kpu_cycles_per_row: float = 1.06
    kpu_cycles_per_output_row: float = 0.75
    kpu_cycles_per_weight_byte: float = 1.27
    kpu_layer_cycles: float = 4560
    input_dma_bytes_per_second: float = 700e6
    output_dma_bytes_per_second: float = 65e6
    download_cycles_per_byte: float = 34
    cpu_layer_cycles: float = 2000
    cpu_cycles_conversion: float = 9
    cpu_cycles_layout: float = 13
    cpu_cycles_uint8: float = 40
    cpu_cycles_float: float = 30
    cpu_cycles_transcendental: float = 60
    cpu_cycles_per_mac: float = 33


@dataclass(frozen=True)
class LayerEstimate:
    index: int
    op: str
    seconds: float
    kpu: bool


@dataclass(frozen=True)
class ChipEstimate:
    """Per-layer estimates and their totals; ``fps`` is frames a second, one at a time."""

    layers: tuple[LayerEstimate, ...]

    @property
    def kpu_seconds(self) -> float:
        return sum(layer.seconds for layer in self.layers if layer.kpu)

    @property
    def cpu_seconds(self) -> float:
        return sum(layer.seconds for layer in self.layers if not layer.kpu)

    @property
    def total_seconds(self) -> float:
        return sum(layer.seconds for layer in self.layers)

    @property
    def fps(self) -> float:
        total = self.total_seconds
        return 1.0 / total if total > 0 else math.inf


_TRANSCENDENTAL = ("SOFTMAX", "LOGISTIC", "SIGMOID", "L2NORMALIZATION", "UNARY")
_LAYOUT = ("UPLOAD", "PAD", "TRANSPOSE", "MEMORYCOPY", "CONCAT", "FLATTEN", "SLICE", "RESIZE")
_UINT8 = ("QUANTIZED", "REQUANTIZE", "TABLELOOKUP")


def cpu_cycles_per_element(op: str, params: ChipParams) -> float:
    """The per-value rate of a CPU layer, from its op name (v3 or v4 spelling)."""
    name = op.upper().replace("_", "")
    if any(key in name for key in _TRANSCENDENTAL):
        return params.cpu_cycles_transcendental
    if any(key in name for key in _LAYOUT):
        return params.cpu_cycles_layout
    if any(key in name for key in _UINT8):
        return params.cpu_cycles_uint8
    if "QUANTIZE" in name:  # QUANTIZE, DEQUANTIZE, CHANNELWISE_DEQUANTIZE
        return params.cpu_cycles_conversion
    return params.cpu_cycles_float


def kpu_layer_cycles(layer: LayerSummary, params: ChipParams) -> float:
    """Cycles of one KPU layer, from its input ([N,] C, H, W), output channels and MACs."""
    *batch, channels, height, width = layer.in_shape
    batches = math.prod(batch)
    out_channels = layer.out_shape[-3]
    weights = layer.macs // max(batches * height * width, 1)
    depthwise = channels == out_channels and weights in (channels, 9 * channels)
    passes = 1 if depthwise else out_channels
    return batches * (
        params.kpu_cycles_per_row * kpu_rows(width, height, channels) * passes
        + params.kpu_cycles_per_output_row * kpu_rows(width, height, out_channels)
        + params.kpu_cycles_per_weight_byte * weights
        + params.kpu_layer_cycles
    )


def estimate(model: KModel, params: ChipParams | None = None) -> ChipEstimate:
    """The time each layer of ``model`` would take on a K210, and the totals."""
    p = params or ChipParams()
    summaries = model.summaries
    layers = []
    for i, layer in enumerate(summaries):
        seconds = 0.0
        if i == 0:
            seconds += sum(t.nbytes for t in model.inputs) / p.input_dma_bytes_per_second
        if layer.on_kpu:
            seconds += kpu_layer_cycles(layer, p) / p.clock_hz
            if i + 1 == len(summaries) or not summaries[i + 1].on_kpu:
                out_bytes = math.prod(layer.out_shape)
                if model.version == 3:
                    seconds += out_bytes / p.output_dma_bytes_per_second
                else:
                    seconds += out_bytes * p.download_cycles_per_byte / p.clock_hz
        else:
            cycles = (
                layer.elements * cpu_cycles_per_element(layer.op, p)
                + layer.macs * p.cpu_cycles_per_mac
                + p.cpu_layer_cycles
            )
            seconds += cycles / p.clock_hz
        layers.append(LayerEstimate(layer.index, layer.op, seconds, layer.on_kpu))
    return ChipEstimate(tuple(layers))
