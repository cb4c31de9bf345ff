"""Which convolutions may hand their map straight to the next one, from KPU RAM accesses."""

from __future__ import annotations

from edged.kpu.sim.handover import Access, handed_over

MAP = (2, 8, 64)  # a 64-wide map of 2 channels: 16 rows of 64 bytes


def conv(index: int, src: int, dst: int, in_rows: int = 16, out_rows: int = 16) -> Access:
    """A convolution between KPU RAM rows ``src`` and ``dst`` (maps of ``*_rows`` rows)."""
    source = (src * 64, (src + in_rows) * 64)
    target = (dst * 64, (dst + out_rows) * 64)
    return Access(index, (source,), (target,), (source, (in_rows // 8, 8, 64)),
                  (target, (out_rows // 8, 8, 64)))


def test_a_ping_pong_chain_skips_kpu_ram() -> None:
    layers = [conv(0, 0, 100), conv(1, 100, 0), conv(2, 0, 100)]
    assert handed_over(layers) == {0, 1}  # the last one has no next convolution


def test_a_map_read_again_later_stays_in_kpu_ram() -> None:
    layers = [conv(0, 0, 100), conv(1, 100, 200), conv(2, 100, 300)]
    assert handed_over(layers) == frozenset()


def test_bytes_overwritten_before_a_later_read_do_not_count() -> None:
    # layer 1 overwrites the first half of layer 0's map; layer 2 reads only that half
    half = [conv(0, 0, 100), conv(1, 100, 100, out_rows=8), conv(2, 100, 300, in_rows=8)]
    assert handed_over(half) == {0, 1}
    # reading the other half as well keeps both maps in KPU RAM
    both = [*half[:2], conv(2, 100, 300, in_rows=16)]
    assert handed_over(both) == frozenset()


def test_another_shape_or_layer_in_between_goes_through_kpu_ram() -> None:
    assert handed_over([conv(0, 0, 100), conv(1, 100, 200, in_rows=8)]) == frozenset()
    upload = Access(1, writes=((100 * 64, 116 * 64),))
    assert handed_over([conv(0, 0, 100), upload, conv(2, 100, 200)]) == frozenset()


def test_outputs_read_from_kpu_ram_keep_their_maps() -> None:
    layers = [conv(0, 0, 100), conv(1, 100, 200), conv(2, 200, 300)]
    assert handed_over(layers) == {0, 1}
    assert handed_over(layers, final_reads=[(100 * 64, 101 * 64)]) == {1}
    assert handed_over(layers, final_reads=[(215 * 64, 216 * 64)]) == {0}
