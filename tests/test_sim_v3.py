"""Whole v3 models on the simulated KPU against outputs of an independent implementation."""

from __future__ import annotations

import numpy as np
import pytest

from edged.kpu.errors import RunError
from edged.kpu.kmodel import parse_kmodel
from edged.kpu.report import random_inputs
from edged.kpu.sim.executor import Rounding, create_executor
from tests.conftest import V3_MODELS, golden_cases, kmodel_path


def _cases(rounding: Rounding) -> list[tuple[str, str]]:
    found = [(name, case.case) for name in V3_MODELS for case in golden_cases(name)
             if rounding == "half-even" or case.outputs_half_up is not None]
    return found or [("missing", "missing")]


@pytest.mark.parametrize("rounding", ["half-even", "half-up"])
def test_golden_outputs_bit_exact(rounding: Rounding) -> None:
    checked = 0
    for name, case_name in _cases(rounding):
        if name == "missing":
            pytest.skip("no golden outputs in ../shared/fixtures/golden")
        model = parse_kmodel(kmodel_path(name).read_bytes())
        executor = create_executor(model, rounding=rounding)
        case = next(c for c in golden_cases(name) if c.case == case_name)
        expected = case.outputs if rounding == "half-even" else case.outputs_half_up
        assert expected is not None
        got = executor.run([case.input])
        assert len(got) == len(expected)
        for out, want in zip(got, expected, strict=True):
            assert out.dtype == want.dtype
            np.testing.assert_array_equal(out.reshape(want.shape), want,
                                          err_msg=f"{name}/{case_name} ({rounding})")
            checked += 1
    assert checked > 0


def test_face_model_every_kpu_layer_matches_the_trace() -> None:
    case = next((c for c in golden_cases("maixpy_facedetect_v3") if c.case == "grace_hopper_crop"),
                None)
    if case is None or not (case.folder / "trace_kpu_layers.npz").exists():
        pytest.skip("golden trace of maixpy_facedetect_v3 is missing")
    trace = np.load(case.folder / "trace_kpu_layers.npz")
    model = parse_kmodel(kmodel_path("maixpy_facedetect_v3").read_bytes())
    produced: dict[int, np.ndarray | None] = {}
    create_executor(model).run([case.input],
                               observer=lambda i, _s, out: produced.__setitem__(i, out))
    for key in trace.files:
        index = int(key.split("_")[0])
        layer_output = produced[index]
        assert layer_output is not None
        np.testing.assert_array_equal(layer_output.reshape(-1), trace[key].reshape(-1),
                                      err_msg=key)


@pytest.mark.parametrize("name", V3_MODELS)
def test_runs_are_deterministic(name: str) -> None:
    model = parse_kmodel(kmodel_path(name).read_bytes())
    executor = create_executor(model)
    (value,) = random_inputs(model, seed=3)
    first = executor.run([value])
    executor.run([np.zeros_like(value)])  # whatever ran in between must not leak
    again = executor.run([value])
    other = create_executor(model).run([value])
    for a, b, c in zip(first, again, other, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_wrong_inputs_are_run_errors() -> None:
    model = parse_kmodel(kmodel_path("maixpy_mnist_v3").read_bytes())
    executor = create_executor(model)
    with pytest.raises(RunError, match="uint8"):
        executor.run([np.zeros((1, 28, 28), np.float32)])
    with pytest.raises(RunError, match=r"\(1, 28, 28\)"):
        executor.run([np.zeros((1, 28, 27), np.uint8)])
    with pytest.raises(RunError, match="1 input"):
        executor.run([])


def test_quantized_add_matches_kpu_c() -> None:
    """``kpu_quantized_add`` against a plain loop written from kpu.c, both shift paths."""
    from edged.kpu.sim.v3_exec import _quantized_add

    def reference(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> np.ndarray:
        off_a, mul_a, sh_a, off_b, mul_b, sh_b, off_o, mul_o, sh_o = (int(v) for v in p)
        out = []
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            va, vb = (x + off_a) * mul_a, (y + off_b) * mul_b
            v = (va + vb) >> sh_a if sh_a == sh_b else (va >> sh_a) + (vb >> sh_b)
            v *= mul_o
            if sh_o > 0:  # kpu_carry_shift
                v >>= sh_o - 1
                v = ((v >> 1) - 1 if v < 0 else (v >> 1) + 1) if v & 1 else v >> 1
            out.append(min(255, max(0, v + off_o)))
        return np.array(out, np.uint8)

    rng = np.random.default_rng(0)
    for trial in range(100):
        a, b = (rng.integers(0, 256, 64, dtype=np.uint8) for _ in range(2))
        shift_a = int(rng.integers(0, 20))
        shift_b = shift_a if trial % 2 else int(rng.integers(0, 20))
        params = np.array([rng.integers(-128, 128), rng.integers(-2**15, 2**15), shift_a,
                           rng.integers(-128, 128), rng.integers(-2**15, 2**15), shift_b,
                           rng.integers(-64, 64), rng.integers(-2**15, 2**15),
                           rng.integers(0, 24)], np.int64)
        out = np.empty(64, np.uint8)
        _quantized_add(a, b, params, out)
        np.testing.assert_array_equal(out, reference(a, b, params))

