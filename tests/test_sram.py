"""The SRAM account: exact per-model costs, refusals that change nothing, exact release."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edged.kpu.errors import HandleError, MemoryOverflow, ModelsFull
from edged.kpu.kmodel import KModel, load_kmodel
from edged.kpu.kmodel.model import Program
from edged.kpu.sram import (
    PROFILES,
    ModelCost,
    RuntimeProfile,
    SramAccount,
    fits,
    get_profile,
)
from tests.conftest import kmodel_path


@pytest.fixture(scope="module")
def face() -> KModel:
    return load_kmodel(kmodel_path("maixpy_facedetect_v3"))


@pytest.fixture(scope="module")
def voc() -> KModel:
    return load_kmodel(kmodel_path("voc20_yolo2_v3"))


def synthetic(size: int, main_mem: int = 0, kpu_ram: int = 0) -> KModel:
    """A model that is only its memory needs, for the account's arithmetic."""
    return KModel(
        version=3,
        data=bytes(size),
        sha256="0" * 64,
        main_mem=main_mem,
        inputs=(),
        outputs=(),
        program=Program(()),
        summaries=(),
        kpu_ram_bytes=kpu_ram,
    )


def test_profiles_hold_the_documented_figures() -> None:
    assert PROFILES["c-sdk"].model_bytes == 5_767_168
    assert PROFILES["maixpy-mini"].model_bytes == 3460 * 1024
    assert PROFILES["maixpy-full"].model_bytes == 2052 * 1024
    for profile in PROFILES.values():
        assert profile.kpu_ram_bytes == 2 * 1024 * 1024
        assert profile.max_models == 5
    with pytest.raises(ValueError, match="maixpy-full"):
        get_profile("maixpy")


def test_cost_is_itemised_and_exact(face: KModel) -> None:
    cost = ModelCost.of(face)
    assert cost == ModelCost(
        kmodel=388_776, working=face.main_mem, input=3 * 240 * 320, output=30 * 15 * 20 * 4
    )
    assert cost.total == 388_776 + face.main_mem + 230_400 + 36_000
    assert 0.65e6 < cost.total < 0.75e6
    assert cost.itemised().endswith(f"= {cost.total} bytes")


@pytest.mark.parametrize(
    ("profile", "together"), [("c-sdk", True), ("maixpy-mini", True), ("maixpy-full", False)]
)
def test_face_and_voc_together(face: KModel, voc: KModel, profile: str, together: bool) -> None:
    assert 1.6e6 < ModelCost.of(voc).total < 1.7e6
    assert fits(face, profile).fits
    assert fits(voc, profile).fits
    account = SramAccount(profile)
    account.reserve(voc, "voc")
    if together:
        account.reserve(face, "face")
        assert account.report().used == ModelCost.of(voc).total + ModelCost.of(face).total
    else:
        with pytest.raises(MemoryOverflow):
            account.reserve(face, "face")


def test_overflow_says_what_and_why(face: KModel, voc: KModel) -> None:
    account = SramAccount("maixpy-full")
    account.reserve(voc, "voc")
    before = account.report()
    with pytest.raises(MemoryOverflow) as info:
        account.reserve(face, "face")
    text = str(info.value)
    needed = ModelCost.of(face).total
    assert "memory overflow" in text
    assert "2006" in text
    assert "ERR_NO_MEM" in text
    assert str(needed) in text
    assert str(before.free) in text
    assert "maixpy-full" in text
    assert ModelCost.of(face).itemised() in text
    assert (info.value.needed, info.value.free) == (needed, before.free)
    assert account.report() == before


def test_sixth_model_is_refused(face: KModel) -> None:
    account = SramAccount("c-sdk")
    for i in range(5):
        account.reserve(face, f"face{i}")
    before = account.report()
    with pytest.raises(ModelsFull) as info:
        account.reserve(face, "face5")
    assert "2009" in str(info.value)
    assert "ERR_MODELS_FULL" in str(info.value)
    assert account.report() == before


def test_kpu_ram_is_checked_per_model() -> None:
    account = SramAccount("c-sdk")
    for i in range(3):  # KPU RAM is scratch for a run: models do not add up
        account.reserve(synthetic(100, kpu_ram=2 * 1024 * 1024), f"m{i}")
    before = account.report()
    with pytest.raises(MemoryOverflow, match="KPU RAM") as info:
        account.reserve(synthetic(100, kpu_ram=2 * 1024 * 1024 + 64), "big")
    assert info.value.needed == 2 * 1024 * 1024 + 64
    assert account.report() == before
    assert not fits(synthetic(100, kpu_ram=3 * 1024 * 1024), "c-sdk").fits


def test_release_restores_exactly(face: KModel, voc: KModel) -> None:
    account = SramAccount("c-sdk")
    account.reserve(voc, "voc")
    before = account.report()
    rid = account.reserve(face, "face")
    during = account.report()
    assert during.used == before.used + ModelCost.of(face).total
    assert [m.name for m in during.models] == ["voc", "face"]
    assert during.models[1].cost == ModelCost.of(face)
    account.release(rid)
    assert account.report() == before
    with pytest.raises(HandleError):
        account.release(rid)
    assert account.report() == before


def test_fits_reports_the_margin(face: KModel) -> None:
    for name, profile in PROFILES.items():
        report = fits(face, name)
        assert report.margin == profile.model_bytes - ModelCost.of(face).total
        assert report.fits
    too_big = synthetic(PROFILES["maixpy-full"].model_bytes + 1)
    report = fits(too_big, "maixpy-full")
    assert report.margin == -1
    assert not report.fits
    assert fits(too_big, "maixpy-mini").fits


TINY = RuntimeProfile("tiny", model_bytes=10_000, max_models=3)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(1, 6000), st.integers(0, 3000), st.integers(0, 5)),
        max_size=40,
    )
)
def test_any_sequence_keeps_the_account_exact(ops: list[tuple[bool, int, int, int]]) -> None:
    account = SramAccount(TINY)
    live: dict[int, int] = {}
    for is_reserve, size, main_mem, pick in ops:
        before = account.report()
        if is_reserve:
            model = synthetic(size, main_mem)
            cost = size + main_mem
            room = len(live) < TINY.max_models and cost <= before.free
            try:
                rid = account.reserve(model, "m")
            except (MemoryOverflow, ModelsFull):
                assert not room
                assert account.report() == before
            else:
                assert room
                live[rid] = cost
        elif live:
            rid = sorted(live)[pick % len(live)]
            account.release(rid)
            del live[rid]
        report = account.report()
        assert report.used == sum(live.values())
        assert report.used <= report.total
        assert report.free == report.total - report.used
        assert {m.id: m.nbytes for m in report.models} == live


def test_report_is_a_value() -> None:
    account = SramAccount("maixpy-mini")
    report = account.report()
    assert dataclasses.is_dataclass(report)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.used = 1  # type: ignore[misc]
    assert report.profile == "maixpy-mini"
    assert (report.total, report.used, report.free, report.models) == (
        3460 * 1024,
        0,
        3460 * 1024,
        (),
    )
