"""ProgramBuilder: its direct emit paths (the compiler's hot path) write the same records as
the keyword path, and a value outside its field's type is an error, not a wrapped number."""
from __future__ import annotations

import numpy as np
import pytest

from tilesim.isa import Engine, Flag, Op, ProgramBuilder, VecOp


def _both(direct, fields):
    """Build one program by ``direct(builder)`` and one by ``emit(**fields)``."""
    a, b = ProgramBuilder(1, 2), ProgramBuilder(1, 2)
    direct(a)
    b.emit(0, fields.pop("engine"), **fields)
    return a.build().instrs, b.build().instrs


@pytest.mark.parametrize("seed", range(5))
def test_direct_paths_write_what_the_keyword_path_writes(seed):
    rng = np.random.default_rng(seed)
    r = [int(v) for v in rng.integers(1, 2**20, 12)]
    wait, signal = [(3, r[0] % 7), (5, 2)], [r[1] % 9]
    got, want = _both(
        lambda b: b.emit_vop(0, int(Engine.VECTOR), wait, signal, int(VecOp.MUL), r[2], r[3],
                             r[4], r[5], r[6], r[7], r[8], r[9], 2, 3, int(Flag.BCAST_COL),
                             0.25 * r[10]),
        dict(engine=Engine.VECTOR, wait=wait, signal=signal, op=Op.VOP, vop=int(VecOp.MUL),
             src_addr=r[2], src2_addr=r[3], dst_addr=r[4], shape=(1, 1, r[5], r[6]),
             src_stride=(0, 0, r[7], 0), dst_stride=(0, 0, r[8], 0), src2_stride=r[9],
             dtype=2, dtype2=3, flags=int(Flag.BCAST_COL), imm=0.25 * r[10]))
    assert got.tobytes() == want.tobytes()
    got, want = _both(
        lambda b: b.emit_array(0, int(Engine.MATRIX), wait, [], int(Op.MM), r[2], r[3], r[4],
                               r[5], r[6], r[7], r[8], 2, 4, int(Flag.ACCUMULATE)),
        dict(engine=Engine.MATRIX, wait=wait, op=Op.MM, src_addr=r[2], dst_addr=r[3], m=r[4],
             k=r[5], n=r[6], src_stride=(0, 0, r[7], 0), dst_stride=(0, 0, r[8], 0), dtype=2,
             dtype2=4, flags=int(Flag.ACCUMULATE)))
    assert got.tobytes() == want.tobytes()
    shape, ss, ds = (1, 2, r[4] % 50, r[5] % 50), (0, r[6], r[7], 2), (0, r[8], r[9], 2)
    got, want = _both(
        lambda b: b.emit_dma(0, int(Engine.DMA), [], signal, int(Op.LOAD), r[2], r[3], shape,
                             ss, ds, 2, 0, 3, 1),
        dict(engine=Engine.DMA, signal=signal, op=Op.LOAD, src_addr=r[2], dst_addr=r[3],
             shape=shape, src_stride=ss, dst_stride=ds, dtype=2, dst_core=0, mc_count=3,
             mc_stride=1))
    assert got.tobytes() == want.tobytes()
    assert want["shape"][0].tolist() == list(shape) and want["imm"][0] == 0.0


def test_a_value_outside_its_field_is_an_error():
    b = ProgramBuilder(1, 2)
    with pytest.raises(ValueError, match="out of its type's range"):
        b.emit(0, Engine.DMA, op=Op.LOAD, dst_core=40000)        # int16
    with pytest.raises(ValueError, match="takes 4 values, not 3"):
        b.emit(0, Engine.DMA, op=Op.LOAD, shape=(1, 2, 3))
    b.emit(0, Engine.DMA, op=Op.LOAD, dst_core=-1, shape=7)     # a scalar fills a sub-array
    assert b.build().instrs["shape"][0].tolist() == [7, 7, 7, 7]
