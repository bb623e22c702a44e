"""The tile instruction set: engines, opcodes, flags and the instruction record.

Every core has engines, each running its own in-order queue:

    engine 0        matrix   the systolic array: LDW, MM
    engine 1        vector   the SIMD unit: VOP
    engine 2 + i    dma<i>   tensor DMA engine i: LOAD, STORE, COPY

Any instruction may wait for up to two semaphores and signal up to two when it completes.
Semaphores are chip-global monotonic counters: ``wait=s>=n`` holds the instruction until
semaphore ``s`` has been signalled at least ``n`` times; a signal adds one. NOP waits and
signals without doing work; HALT ends its queue.

Operands (fields of :data:`INSTR_DTYPE`; addresses and strides in bytes):

    LOAD   DRAM src_addr -> own SRAM dst_addr, 4-D: shape[0..3] elements of ``dtype``,
           src_stride[0..3], dst_stride[0..3]; shape[3] is the innermost dimension.
           With ``dst_core`` >= 0 the data goes instead to dst_addr in the SRAM of each of the
           cores dst_core + j * mc_stride, j < max(1, mc_count): a multicast (like H100 TMA
           multicast or a Tenstorrent NoC multicast write). Each DRAM read happens once; its
           response packet visits the destinations in that order (path-based multicast: every
           router on the way forwards it and ejects a copy where a destination sits). The
           load completes, and signals, when every destination has written every byte.
    STORE  own SRAM src_addr -> DRAM dst_addr, same descriptor
    COPY   own SRAM src_addr -> SRAM dst_addr of core ``dst_core``, over the NoC
    LDW    K x N weight tile from SRAM src_addr into the array: k, n, row stride src_stride[2];
           flag TRANSPOSE reads an N x K tile and loads its transpose
    MM     stream M x K activations (src_addr, row stride src_stride[2]) through the loaded
           weights; write the M x N result in the accumulator type ``dtype2`` to dst_addr (row
           stride dst_stride[2]), adding to what is there with flag ACCUMULATE
    VOP    ``vop`` on a rows x cols tile (shape[2], shape[3]) of ``dtype`` at src_addr (row stride
           src_stride[2], element stride src_stride[3]); result of ``dtype2`` at dst_addr
           (dst_stride[2], dst_stride[3]). Binary ops take src2 as a full tile (row stride
           src2_stride), one value per row (BCAST_ROW), one row per tile (BCAST_COL) or the
           immediate ``imm`` (BCAST_IMM). Reductions run along a row: the result is rows x 1.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np


class Op(IntEnum):
    NOP = 0
    HALT = 1
    LOAD = 10
    STORE = 11
    COPY = 12
    LDW = 20
    MM = 21
    VOP = 30


class VecOp(IntEnum):
    """Vector sub-operations; names match config.VECTOR_OPS."""

    ADD = 1       # dst = a + b
    SUB = 2       # dst = a - b
    MUL = 3       # dst = a * b
    MAX = 4       # dst = max(a, b)
    RECIP = 5     # dst = 1 / a
    EXP = 6       # dst = exp(a)
    RSQRT = 7     # dst = 1 / sqrt(a + imm)          (imm: epsilon)
    SILU = 8      # dst = a * sigmoid(a)
    GELU = 9      # dst = gelu(a), tanh approximation
    REDUCE_SUM = 10   # dst[r] = sum_c a[r, c]
    REDUCE_MAX = 11   # dst[r] = max_c a[r, c]
    ROPE = 12     # rotate-half RoPE: b = [cos | sin] table, rows x cols
    CONVERT = 13  # dst = a, converted from dtype to dtype2
    COPY = 14     # dst = a


BINARY_VOPS = frozenset({VecOp.ADD, VecOp.SUB, VecOp.MUL, VecOp.MAX, VecOp.ROPE})
REDUCE_VOPS = frozenset({VecOp.REDUCE_SUM, VecOp.REDUCE_MAX})


class Flag(IntEnum):
    ACCUMULATE = 1    # MM: add into the output tile instead of overwriting it
    TRANSPOSE = 2     # LDW: the SRAM tile is N x K; load its transpose
    BCAST_ROW = 4     # VOP: src2 holds one value per row
    BCAST_COL = 8     # VOP: src2 holds one row, used for every row
    BCAST_IMM = 16    # VOP: src2 is the immediate ``imm``


class Engine(IntEnum):
    """Engine index within a core; DMA engine i is DMA + i."""

    MATRIX = 0
    VECTOR = 1
    DMA = 2


OPS_OF_ENGINE = {
    Engine.MATRIX: frozenset({Op.NOP, Op.HALT, Op.LDW, Op.MM}),
    Engine.VECTOR: frozenset({Op.NOP, Op.HALT, Op.VOP}),
    Engine.DMA: frozenset({Op.NOP, Op.HALT, Op.LOAD, Op.STORE, Op.COPY}),
}


def engine_kind(engine: int) -> Engine:
    """Matrix, vector or DMA, for a per-core engine index."""
    return Engine(min(int(engine), int(Engine.DMA)))


def engine_name(engine: int) -> str:
    """'matrix', 'vector', 'dma0', 'dma1', ..."""
    if engine == Engine.MATRIX:
        return "matrix"
    if engine == Engine.VECTOR:
        return "vector"
    return f"dma{engine - Engine.DMA}"


NO_SEM = -1
MAX_WAITS = 2
MAX_SIGNALS = 2

INSTR_DTYPE = np.dtype([
    ("op", np.uint8),
    ("vop", np.uint8),
    ("flags", np.uint8),
    ("dtype", np.uint8),         # dtypes.DType.code of the input / moved elements
    ("dtype2", np.uint8),        # output datatype (MM accumulator, VOP result); 0 = same
    ("dst_core", np.int16),      # COPY destination core, first LOAD multicast core; -1 otherwise
    ("mc_count", np.int16),      # LOAD multicast: destination cores (0 or 1: one)
    ("mc_stride", np.int16),     # LOAD multicast: core-id step between destinations
    ("wait_sem", np.int32, (MAX_WAITS,)),
    ("wait_count", np.int32, (MAX_WAITS,)),
    ("signal_sem", np.int32, (MAX_SIGNALS,)),
    ("m", np.int32),
    ("k", np.int32),
    ("n", np.int32),
    ("shape", np.int32, (4,)),
    ("src_addr", np.int64),
    ("src2_addr", np.int64),
    ("dst_addr", np.int64),
    ("src_stride", np.int64, (4,)),
    ("dst_stride", np.int64, (4,)),
    ("src2_stride", np.int64),
    ("imm", np.float64),
])
"""One instruction. A numpy structured dtype so the numba event loop can read it directly."""


def blank(n: int = 1) -> np.ndarray:
    """``n`` NOP records with no waits, no signals, dst_core -1."""
    r = np.zeros(n, dtype=INSTR_DTYPE)
    r["wait_sem"] = NO_SEM
    r["signal_sem"] = NO_SEM
    r["dst_core"] = -1
    return r
