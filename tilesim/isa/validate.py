"""Static checks of a tile program against a chip, before anything runs.

:func:`problems` lists everything wrong; :func:`validate` raises ProgramError for the first
problem. Each message names the instruction: ``FILE: line N: ...`` when the program was
assembled from text, else ``core C engine E instruction I: ...`` (position within its queue).
One check needs a run: :func:`sram_races` lists engines that touched the same SRAM bytes at
the same time, one of them writing (a missing semaphore).

The rules
---------
Program
    ``n_cores <= cores.count`` and ``dma_engines <= cores.dma.engines``; every buffer lies in
    its memory, sram buffers on a core of the program.
Opcodes
    each op runs on its engine (``opcodes.OPS_OF_ENGINE``); a VOP names a vector op; datatype
    codes exist; flags belong to the op (MM: accumulate; LDW: transpose; binary VOPs: one of
    bcast_row, bcast_col, bcast_imm).
Tiles
    LDW ``1 <= k <= rows``, ``1 <= n <= cols`` of the array; MM ``m >= 1`` and its k, n equal
    those of the latest LDW before it in the same matrix queue (an MM before any LDW is an
    error); DMA shapes ``>= 1`` in every dimension, and 1 in the dimensions beyond
    ``cores.dma.max_dims`` (the outermost ones); VOP rows and cols (shape[2], shape[3]) ``>= 1``.
Datatypes
    LOAD, STORE, COPY and VOP give ``dtype``; LDW's dtype is the array's ``weight_dtype``; MM's
    dtype is ``input_dtype`` and dtype2 ``acc_dtype``. A sub-byte (int4) innermost run must be
    whole bytes.
Memory
    every byte an instruction touches lies in ``[0, cores.sram.size_bytes)`` of the SRAM it
    addresses, or in ``[0, capacity)`` of DRAM; a chip with ``memory: none`` has no LOAD or
    STORE; a COPY's ``dst_core`` is a core of the program, and so is every destination of a
    multicast LOAD (``dst_core + j * mc_stride``, ``mc_stride >= 1`` when ``mc_count > 1``).
Semaphores
    every wait and signal names a declared semaphore; wait counts are ``>= 1``; and no queue
    waits forever (below).

The bytes an operand touches
----------------------------
An operand is a 4-D strided descriptor: start address A (bytes), shape s[0..3] (elements,
innermost last), strides t[0..3] (bytes, possibly zero or negative), element width w (bits).
With span_d = (s_d - 1) * t_d, it touches bytes ``lo`` to ``hi`` inclusive:

    lo = A + sum_{d<3} min(0, span_d) + min(0, span_3)
    hi = A + sum_{d<3} max(0, span_d) + max(0, span_3) + w/8 - 1         (w >= 8)

A sub-byte innermost dimension is packed: it is one run of s_3 * w / 8 bytes starting at the
row's address, t_3 is not used, and ``hi = A + sum_{d<3} max(0, span_d) + s_3 * w / 8 - 1``.
How each op's operands map onto descriptors:

    LOAD, STORE, COPY   src: (shape, src_stride), dst: (shape, dst_stride), dtype
    LDW                 src: k x n rows (n x k with transpose) of dtype, row stride
                        src_stride[2], rows contiguous
    MM                  src: m x k of dtype, row stride src_stride[2], rows contiguous;
                        dst: m x n of dtype2, row stride dst_stride[2], rows contiguous
    VOP                 src: shape[2] x shape[3] of dtype, strides src_stride[2..3];
                        dst: the same (x 1 for reductions) of dtype2 (0: dtype), dst_stride[2..3];
                        an element stride of 0 means contiguous elements;
                        src2 of binary ops: a full tile (row stride src2_stride, rows
                        contiguous), a contiguous vector of shape[2] values, one per row
                        (bcast_row), one contiguous row (bcast_col), or nothing (bcast_imm)

Queues that can never drain
---------------------------
Semaphores only count up and signals are unconditional, so whether a program can finish does
not depend on timing. The check runs the program abstractly: it takes any queue whose head's
waits hold at the current counts, retires the head (adding its signals; a HALT retires the rest
of its queue too) and repeats until no head can retire. Each queue is resumed only when a
semaphore it waits on reaches the count it needs, so the work is linear in the program size
(times a log for the per-semaphore waiting lists). Every head left waiting at the end is
reported with the semaphore it waits on, the count that semaphore reached, and the count needed.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from tilesim.arch.dram import capacity_bytes
from tilesim.config import ChipConfig, format_size
from tilesim.dtypes import BY_CODE, DTYPES
from tilesim.errors import ProgramError
from tilesim.isa.asm import MNEMONICS, flags_text, mnemonic
from tilesim.isa.opcodes import (BINARY_VOPS, INSTR_DTYPE, NO_SEM, OPS_OF_ENGINE, REDUCE_VOPS,
                                 Engine, Flag, Op, VecOp, engine_name)
from tilesim.isa.program import SPACES, Program


def validate(program: Program, cfg: ChipConfig) -> None:
    """Raise ProgramError (one line) for the first problem of ``program`` on chip ``cfg``."""
    found = problems(program, cfg)
    if found:
        more = len(found) - 1
        tail = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
        raise ProgramError(found[0] + tail)


def problems(program: Program, cfg: ChipConfig) -> list[str]:
    """Every problem of ``program`` on chip ``cfg``, one line each: program-wide ones first,
    then per instruction in record order, then the queues that can never drain."""
    broken = _structure(program)
    if broken:
        return broken
    v = _View(program, cfg)
    found: list[tuple[int, str]] = []
    for check in (_engines, _dtypes, _flags, _tiles, _weights, _memory, _int4_runs,
                  _semaphores):
        found += check(v)
    found.sort(key=lambda item: item[0])
    out = _program_wide(v)
    out += [f"{v.where(i)}: {msg}" for i, msg in found + _never_drain(v)]
    return out


def sram_races(program: Program, cfg: ChipConfig, t_start: np.ndarray, t_end: np.ndarray,
               limit: int = 20) -> list[str]:
    """Data races of a run (not a static check): two instructions of different engines that
    touch overlapping bytes of one core's SRAM, at least one of them writing, while both are
    in flight (their [t_start, t_end) intervals, cycles, overlap). The engines order only
    their own queue, so such a pair means a missing semaphore: what the reader sees depends
    on timing (the functional mode then disagrees with a reference). One line per race, at
    most ``limit``; a queue's own overlapping instructions (a matrix engine accumulating into
    one tile) are its pipeline's business and not listed."""
    v = _View(program, cfg)
    rows = []                 # (core, start, end, lo, hi, instruction, writes)
    for a in v.operands():
        if a.space != "sram":
            continue
        lo, hi = _extent(a)
        for j, i in enumerate(a.index):
            rows.append((int(a.core[j]), int(t_start[i]), int(t_end[i]), int(lo[j]),
                         int(hi[j]), int(i), a.name == "dst"))
    rows.sort()
    out: list[str] = []
    for x, a in enumerate(rows):
        for b in rows[x + 1:]:
            if b[0] != a[0] or b[1] >= a[2]:
                break
            if ((a[6] or b[6]) and a[5] != b[5] and a[3] <= b[4] and b[3] <= a[4]
                    and (v.core[a[5]], v.engine[a[5]]) != (v.core[b[5]], v.engine[b[5]])):
                out.append(f"core {a[0]} SRAM bytes {max(a[3], b[3])}..{min(a[4], b[4])}: "
                           f"{v.where(a[5])} {v.word(a[5])} in cycles [{a[1]}, {a[2]}) and "
                           f"{v.where(b[5])} {v.word(b[5])} in [{b[1]}, {b[2]})")
                if len(out) >= limit:
                    return out
    return out


# --------------------------------------------------------------------------------------------
# The program as arrays
# --------------------------------------------------------------------------------------------

_BITS = np.zeros(256, np.int64)
for _d in DTYPES.values():
    _BITS[_d.code] = _d.bits

_LEGAL = np.zeros((len(Engine), 256), bool)
for _kind, _ops in OPS_OF_ENGINE.items():
    _LEGAL[_kind, [int(o) for o in _ops]] = True

_OP_CODES = frozenset(int(o) for o in Op)
_VOP_CODES = np.array([int(v) for v in VecOp])
_BINARY = np.array([int(v) for v in BINARY_VOPS])
_REDUCE = np.array([int(v) for v in REDUCE_VOPS])
_BCAST = int(Flag.BCAST_ROW | Flag.BCAST_COL | Flag.BCAST_IMM)


def _structure(p: Program) -> list[str]:
    """Problems that make the queues themselves unreadable (then nothing else is checked)."""
    head = p.source or "program"
    if not isinstance(p.instrs, np.ndarray) or p.instrs.dtype != INSTR_DTYPE:
        return [f"{head}: the instruction array is not of INSTR_DTYPE records (build programs "
                "with ProgramBuilder or assemble)"]
    n, shape = len(p.instrs), (p.n_cores, p.engines_per_core)
    if p.n_cores < 1 or p.dma_engines < 0:
        return [f"{head}: {p.n_cores} cores and {p.dma_engines} DMA engines (at least 1 core, "
                "at least 0 DMA engines)"]
    if np.shape(p.queue_start) != shape or np.shape(p.queue_len) != shape:
        return [f"{head}: queue tables of shape {np.shape(p.queue_start)} and "
                f"{np.shape(p.queue_len)} (both {shape}: cores x engines)"]
    cover = np.zeros(n + 1, np.int64)
    for (c, e), start in np.ndenumerate(p.queue_start):
        length = int(p.queue_len[c, e])
        if start < 0 or length < 0 or start + length > n:
            return [f"{head}: queue core {c} engine {engine_name(e)} spans records {start} to "
                    f"{start + length - 1} (within 0 to {n - 1})"]
        cover[start] += 1
        cover[start + length] -= 1
    if n and np.any(np.cumsum(cover[:-1]) != 1):
        return [f"{head}: some records belong to no queue or to two (each record to one queue)"]
    if p.lines is not None and len(p.lines) != n:
        return [f"{head}: {len(p.lines)} source lines for {n} instructions (one per "
                "instruction, or none)"]
    return []


class _View:
    """The program's fields as numpy arrays, where each record sits, and the chip's limits."""

    def __init__(self, p: Program, cfg: ChipConfig):
        self.p, self.cfg = p, cfg
        r = p.instrs
        n = len(r)
        self.op = r["op"].astype(np.int64)
        self.vop = r["vop"].astype(np.int64)
        self.flags = r["flags"].astype(np.int64)
        self.dtype = r["dtype"].astype(np.int64)
        self.dtype2 = r["dtype2"].astype(np.int64)
        self.m, self.k, self.n = (r[f].astype(np.int64) for f in ("m", "k", "n"))
        self.shape = r["shape"].astype(np.int64)
        self.bits = _BITS[self.dtype]
        self.bits_out = np.where(self.dtype2 == 0, self.bits, _BITS[self.dtype2])
        self.core = np.zeros(n, np.int64)
        self.engine = np.zeros(n, np.int64)
        self.qstart = np.zeros(n, np.int64)
        for (c, e), start in np.ndenumerate(p.queue_start):
            end = start + int(p.queue_len[c, e])
            self.core[start:end], self.engine[start:end], self.qstart[start:end] = c, e, start
        self.kind = np.minimum(self.engine, int(Engine.DMA))
        self.ok = _LEGAL[self.kind, self.op] & ((self.op != Op.VOP) | np.isin(self.vop, _VOP_CODES))
        self.sram_bytes = cfg.cores.sram.size_bytes
        self.dram_bytes = capacity_bytes(cfg.memory) if cfg.memory is not None else 0
        self._operands: list | None = None

    def operands(self) -> list:
        """The memory operands of the records (computed once; see _operands)."""
        if self._operands is None:
            self._operands = _operands(self)
        return self._operands

    def is_op(self, op: Op) -> np.ndarray:
        """Records of opcode ``op`` on an engine that runs it."""
        return (self.op == op) & self.ok

    def word(self, i: int) -> str:
        return mnemonic(int(self.op[i]), int(self.vop[i]))

    def where(self, i: int) -> str:
        """'FILE: line N', or '[FILE: ]core C engine E instruction I' without source lines."""
        line = int(self.p.lines[i]) if self.p.lines is not None else 0
        if line > 0:
            return f"{self.p.source or '<program>'}: line {line}"
        head = f"{self.p.source}: " if self.p.source else ""
        return (f"{head}core {self.core[i]} engine {engine_name(int(self.engine[i]))} "
                f"instruction {i - self.qstart[i]}")

    def short_where(self, i: int) -> str:
        """'line N' or 'instruction I' of another record in the same queue, for messages."""
        line = int(self.p.lines[i]) if self.p.lines is not None else 0
        return f"line {line}" if line > 0 else f"instruction {i - self.qstart[i]}"

    def sem_name(self, s: int) -> str:
        return self.p.semaphores[s] if 0 <= s < len(self.p.semaphores) else f"semaphore {s}"


def _dtype_name(code: int) -> str:
    return BY_CODE[code].name if code in BY_CODE else "none" if code == 0 else f"code {code}"


# --------------------------------------------------------------------------------------------
# Program-wide checks
# --------------------------------------------------------------------------------------------


def _program_wide(v: _View) -> list[str]:
    p, cfg = v.p, v.cfg
    head = p.source or "program"
    out = []
    if p.n_cores > cfg.cores.count:
        out.append(f"{head}: the program uses {p.n_cores} cores ({cfg.name} has "
                   f"cores.count = {cfg.cores.count})")
    if p.dma_engines > cfg.cores.dma.engines:
        out.append(f"{head}: the program uses {p.dma_engines} DMA engines per core ({cfg.name} "
                   f"has cores.dma.engines = {cfg.cores.dma.engines})")
    for b in p.buffers:
        problem = _buffer_problem(v, b)
        if problem:
            out.append(f"{head}: buffer '{b.name}' {problem}")
    return out


def _buffer_problem(v: _View, b) -> str | None:
    if b.space not in SPACES or b.dtype not in DTYPES:
        return (f"has space {b.space!r} and dtype {b.dtype!r} (space dram or sram; dtype one of "
                f"{', '.join(DTYPES)})")
    end = b.addr + (math.prod(b.shape) * DTYPES[b.dtype].bits + 7) // 8
    if b.space == "sram":
        if not 0 <= b.core < v.p.n_cores:
            return (f"is in the sram of core {b.core} (a core of the program: 0 to "
                    f"{v.p.n_cores - 1})")
        limit = v.sram_bytes
    elif v.cfg.memory is None:
        return f"is in dram ({v.cfg.name} has no off-chip memory: memory: none)"
    else:
        limit = v.dram_bytes
    if b.addr < 0 or end > limit:
        return (f"spans {b.space} bytes {_hex(b.addr)} to {_hex(end - 1)} ({b.space} of "
                f"{v.cfg.name} is {_hex(0)} to {_hex(limit - 1)}, {format_size(limit)})")
    return None


def _hex(x: int) -> str:
    return f"-0x{-x:x}" if x < 0 else f"0x{x:x}"


# --------------------------------------------------------------------------------------------
# Per-instruction checks: each returns [(record index, message), ...]
# --------------------------------------------------------------------------------------------


def _engines(v: _View) -> list[tuple[int, str]]:
    out = []
    for i in np.flatnonzero(~v.ok):
        op, vop, engine = int(v.op[i]), int(v.vop[i]), int(v.engine[i])
        here = engine_name(engine)
        if op == Op.VOP and _LEGAL[v.kind[i], op]:
            out.append((i, f"vop {vop} is not a vector operation (vector ops: "
                           f"{', '.join(x.name.lower() for x in VecOp)})"))
        elif op not in _OP_CODES:
            out.append((i, f"opcode {op} is not an instruction (opcodes: "
                           f"{', '.join(f'{o.value} {o.name}' for o in Op)})"))
        else:
            out.append((i, f"{v.word(i)} cannot run on {here} (on {here}: "
                           f"{', '.join(MNEMONICS[Engine(v.kind[i])])})"))
    return out


def _dtypes(v: _View) -> list[tuple[int, str]]:
    s = v.cfg.cores.systolic
    out = []
    for field, codes in (("dtype", v.dtype), ("dtype2", v.dtype2)):
        for i in np.flatnonzero((codes != 0) & (_BITS[codes] == 0)):
            out.append((i, f"{v.word(i)} {field} code {codes[i]} is not a datatype (codes: "
                           f"{', '.join(f'{d.code} {d.name}' for d in DTYPES.values())})"))
    needs = (v.is_op(Op.LOAD) | v.is_op(Op.STORE) | v.is_op(Op.COPY) | v.is_op(Op.VOP))
    for i in np.flatnonzero(needs & (v.dtype == 0)):
        out.append((i, f"{v.word(i)} has no dtype (dtype= names the elements it moves)"))
    rules = ((Op.LDW, "dtype", v.dtype, s.weight_dtype, "weight_dtype"),
             (Op.MM, "dtype", v.dtype, s.input_dtype, "input_dtype"),
             (Op.MM, "dtype2", v.dtype2, s.acc_dtype, "acc_dtype"))
    for op, field, codes, want, key in rules:
        known = (codes == 0) | (_BITS[codes] > 0)
        for i in np.flatnonzero(v.is_op(op) & known & (codes != DTYPES[want].code)):
            out.append((i, f"{v.word(i)} {field}={_dtype_name(int(codes[i]))} does not match "
                           f"the array ({field}={want}: cores.systolic.{key} of {v.cfg.name})"))
    return out


def _flags(v: _View) -> list[tuple[int, str]]:
    allowed = np.zeros(len(v.op), np.int64)
    allowed[v.is_op(Op.MM)] = Flag.ACCUMULATE
    allowed[v.is_op(Op.LDW)] = Flag.TRANSPOSE
    allowed[v.is_op(Op.VOP) & np.isin(v.vop, _BINARY)] = _BCAST
    out = []
    for i in np.flatnonzero(v.flags & ~allowed):
        ok = flags_text(int(allowed[i])).replace("|", ", ") or "none"
        out.append((i, f"{v.word(i)} flags={flags_text(int(v.flags[i]))} not allowed "
                       f"(flags for {v.word(i)}: {ok})"))
    bcast = v.flags & _BCAST
    for i in np.flatnonzero(bcast & (bcast - 1)):
        out.append((i, f"{v.word(i)} flags={flags_text(int(bcast[i]))} combine broadcasts "
                       "(at most one of bcast_row, bcast_col, bcast_imm)"))
    return out


def _tiles(v: _View) -> list[tuple[int, str]]:
    s, dma = v.cfg.cores.systolic, v.cfg.cores.dma
    out = []
    ldw = v.is_op(Op.LDW)
    for field, values, limit, what in (("k", v.k, s.rows, "rows"), ("n", v.n, s.cols, "cols")):
        for i in np.flatnonzero(ldw & ((values < 1) | (values > limit))):
            out.append((i, f"ldw {field}={values[i]} does not fit the array (1 <= {field} <= "
                           f"{limit}: cores.systolic.{what} of {v.cfg.name})"))
    for i in np.flatnonzero(v.is_op(Op.MM) & (v.m < 1)):
        out.append((i, f"mm m={v.m[i]} streams no rows (m >= 1)"))
    moves = v.is_op(Op.LOAD) | v.is_op(Op.STORE) | v.is_op(Op.COPY)
    for i in np.flatnonzero(moves & (v.shape.min(axis=1) < 1)):
        out.append((i, f"{v.word(i)} shape={_shape_text(v.shape[i])} is empty (every "
                       "dimension >= 1)"))
    outer = v.shape[:, :4 - dma.max_dims]
    for i in np.flatnonzero(moves & (v.shape.min(axis=1) >= 1) & np.any(outer != 1, axis=1)):
        out.append((i, f"{v.word(i)} shape={_shape_text(v.shape[i])} has more than "
                       f"{dma.max_dims} dimensions (cores.dma.max_dims = {dma.max_dims} on "
                       f"{v.cfg.name}: the outer {4 - dma.max_dims} must be 1)"))
    for i in np.flatnonzero(v.is_op(Op.VOP) & (v.shape[:, 2:].min(axis=1) < 1)):
        out.append((i, f"{v.word(i)} tile of {v.shape[i, 2]} x {v.shape[i, 3]} is empty (rows "
                       "shape[2] and cols shape[3] >= 1)"))
    return out


def _shape_text(shape) -> str:
    return ",".join(str(int(x)) for x in shape)


def _weights(v: _View) -> list[tuple[int, str]]:
    """Each MM uses the k x n weights of the latest LDW before it in its matrix queue."""
    index = np.arange(len(v.op))
    last = np.maximum.accumulate(np.where(v.is_op(Op.LDW), index, -1))
    mm = v.is_op(Op.MM)
    out = [(i, "mm has no weights: no ldw before it in its queue (an ldw of the k x n tile "
               "first)") for i in np.flatnonzero(mm & (last < v.qstart))]
    j = np.maximum(last, 0)
    differ = mm & (last >= v.qstart) & ((v.k != v.k[j]) | (v.n != v.n[j]))
    for i in np.flatnonzero(differ):
        w = j[i]
        out.append((i, f"mm k={v.k[i]} n={v.n[i]} does not match the weights of the ldw at "
                       f"{v.short_where(w)} (k={v.k[w]} n={v.n[w]})"))
    return out


# ---- memory ---------------------------------------------------------------------------------


@dataclass
class _Operand:
    """One operand of a set of records, as strided descriptors (see the module docstring)."""

    name: str               # "src" | "src2" | "dst"
    space: str              # "sram" | "dram"
    index: np.ndarray       # record of each row
    core: np.ndarray        # whose SRAM; -1 for dram
    addr: np.ndarray        # first byte
    shape: np.ndarray       # [rows, 4] elements, innermost last
    stride: np.ndarray      # [rows, 4] bytes
    bits: np.ndarray        # element width


def _tile(rows, cols, row_stride, elem_stride) -> tuple[np.ndarray, np.ndarray]:
    """Shape and stride arrays of 2-D tiles."""
    one, zero = np.ones_like(rows), np.zeros_like(rows)
    return (np.stack([one, one, rows, cols], axis=1),
            np.stack([zero, zero, row_stride, elem_stride], axis=1))


def _operands(v: _View) -> list[_Operand]:
    """Every operand of every record whose op, datatypes and sizes are known to be sane."""
    r = v.p.instrs
    src, src2, dst = (r[f].astype(np.int64) for f in ("src_addr", "src2_addr", "dst_addr"))
    s_st, d_st = r["src_stride"].astype(np.int64), r["dst_stride"].astype(np.int64)
    s2_st = r["src2_stride"].astype(np.int64)
    out: list[_Operand] = []

    def add(name, space, sel, core, addr, shape, stride, bits):
        out.append(_Operand(name, space, np.flatnonzero(sel), core[sel], addr[sel], shape[sel],
                            stride[sel], bits[sel]))

    nodram = np.full(len(v.op), -1, np.int64)
    dst_core = r["dst_core"].astype(np.int64)
    full = (v.shape.min(axis=1) >= 1) & (v.bits > 0)
    for op, src_space, dst_space in ((Op.LOAD, "dram", "sram"), (Op.STORE, "sram", "dram"),
                                     (Op.COPY, "sram", "sram")):
        sel = v.is_op(op) & full
        add("src", src_space, sel, v.core if src_space == "sram" else nodram, src, v.shape,
            s_st, v.bits)
        if op == Op.LOAD:     # a multicast load writes dst_core's SRAM (and more, alike)
            target = np.where(dst_core >= 0, dst_core, v.core)
        else:
            target = dst_core if op == Op.COPY else nodram
        add("dst", dst_space, sel, target, dst, v.shape, d_st, v.bits)

    elem = v.bits // 8
    transpose = (v.flags & Flag.TRANSPOSE) != 0
    sel = v.is_op(Op.LDW) & (v.k >= 1) & (v.n >= 1) & (v.bits > 0)
    shape, stride = _tile(np.where(transpose, v.n, v.k), np.where(transpose, v.k, v.n),
                          s_st[:, 2], elem)
    add("src", "sram", sel, v.core, src, shape, stride, v.bits)

    sel = v.is_op(Op.MM) & (v.m >= 1) & (v.k >= 1) & (v.n >= 1) & (v.bits > 0) & (v.bits_out > 0)
    add("src", "sram", sel, v.core, src, *_tile(v.m, v.k, s_st[:, 2], elem), v.bits)
    add("dst", "sram", sel, v.core, dst, *_tile(v.m, v.n, d_st[:, 2], v.bits_out // 8),
        v.bits_out)

    rows, cols = v.shape[:, 2], v.shape[:, 3]
    sel = v.is_op(Op.VOP) & (rows >= 1) & (cols >= 1) & (v.bits > 0) & (v.bits_out > 0)
    src_elem = np.where(s_st[:, 3] == 0, elem, s_st[:, 3])
    add("src", "sram", sel, v.core, src, *_tile(rows, cols, s_st[:, 2], src_elem), v.bits)
    out_cols = np.where(np.isin(v.vop, _REDUCE), 1, cols)
    dst_elem = np.where(d_st[:, 3] == 0, v.bits_out // 8, d_st[:, 3])
    add("dst", "sram", sel, v.core, dst, *_tile(rows, out_cols, d_st[:, 2], dst_elem),
        v.bits_out)
    binary = sel & np.isin(v.vop, _BINARY) & ((v.flags & Flag.BCAST_IMM) == 0)
    vector = (v.flags & (Flag.BCAST_ROW | Flag.BCAST_COL)) != 0
    by_row = (v.flags & Flag.BCAST_ROW) != 0
    shape2, stride2 = _tile(np.where(vector, 1, rows), np.where(by_row, rows, cols),
                            np.where(vector, 0, s2_st), elem)
    add("src2", "sram", binary, v.core, src2, shape2, stride2, v.bits)
    return out


def _extent(a: _Operand) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest byte each descriptor touches, in float64 (exact below 2**53)."""
    shape, stride, bits = a.shape.astype(float), a.stride.astype(float), a.bits.astype(float)
    span = (shape - 1) * stride
    packed = bits < 8
    inner = np.where(packed, 0.0, span[:, 3])
    tail = np.where(packed, np.ceil(shape[:, 3] * bits / 8), bits / 8)
    lo = a.addr + np.minimum(span[:, :3], 0).sum(axis=1) + np.minimum(inner, 0)
    hi = (a.addr + np.maximum(span[:, :3], 0).sum(axis=1) + np.maximum(inner, 0)
          + tail - 1)
    return lo, hi


def _extent_exact(a: _Operand, row: int) -> tuple[int, int]:
    """The same as _extent for one row, in Python integers (exact at any size)."""
    shape, stride = [int(x) for x in a.shape[row]], [int(x) for x in a.stride[row]]
    bits, addr = int(a.bits[row]), int(a.addr[row])
    span = [(s - 1) * t for s, t in zip(shape, stride)]
    if bits < 8:
        span[3], tail = 0, (shape[3] * bits + 7) // 8
    else:
        tail = bits // 8
    return (addr + sum(min(0, x) for x in span),
            addr + sum(max(0, x) for x in span) + tail - 1)


def _memory(v: _View) -> list[tuple[int, str]]:
    out = []
    cfg = v.cfg
    if cfg.memory is None:
        for i in np.flatnonzero(v.is_op(Op.LOAD) | v.is_op(Op.STORE)):
            out.append((i, f"{v.word(i)} needs off-chip memory ({cfg.name} has memory: none; "
                           "move data between cores with copy)"))
    copies = v.is_op(Op.COPY)
    dst_core = v.p.instrs["dst_core"].astype(np.int64)
    for i in np.flatnonzero(copies & ((dst_core < 0) | (dst_core >= v.p.n_cores))):
        out.append((i, f"copy dst_core={dst_core[i]} is not a core of the program (0 to "
                       f"{v.p.n_cores - 1})"))
    count = np.maximum(v.p.instrs["mc_count"].astype(np.int64), 1)
    stride = v.p.instrs["mc_stride"].astype(np.int64)
    last = dst_core + (count - 1) * stride
    mcast = v.is_op(Op.LOAD) & (dst_core >= 0)
    bad = mcast & ((dst_core >= v.p.n_cores) | (last >= v.p.n_cores) | (last < 0)
                   | ((count > 1) & (stride < 1)))
    for i in np.flatnonzero(bad):
        out.append((i, f"multicast load to cores {dst_core[i]} + j * {stride[i]}, j < "
                       f"{count[i]}: the cores must be cores of the program (0 to "
                       f"{v.p.n_cores - 1}), with mc_stride >= 1 when mc_count > 1"))
    most = cfg.cores.dma.multicast_cores
    for i in np.flatnonzero(mcast & ~bad & (count > most)):
        out.append((i, f"multicast load to mc_count={count[i]} cores: {cfg.name} multicasts "
                       f"to at most cores.dma.multicast_cores = {most}"))
    for a in v.operands():
        if a.space == "dram" and cfg.memory is None:
            continue
        limit = v.sram_bytes if a.space == "sram" else v.dram_bytes
        lo, hi = _extent(a)
        suspect = (lo < 0) | (hi >= limit) | (np.abs(lo) >= 2.0**52) | (np.abs(hi) >= 2.0**52)
        if a.space == "sram":
            suspect &= (a.core >= 0) & (a.core < v.p.n_cores)   # else dst_core was reported
        for row in np.flatnonzero(suspect):
            first, last = _extent_exact(a, row)
            if first < 0 or last >= limit:
                i = int(a.index[row])
                whose = f"core {a.core[row]}'s sram" if a.space == "sram" else "dram"
                out.append((i, f"{v.word(i)} {a.name} touches {a.space} bytes {_hex(first)} to "
                               f"{_hex(last)} ({whose} is {_hex(0)} to {_hex(limit - 1)}, "
                               f"{format_size(limit)} on {cfg.name})"))
    return out


def _int4_runs(v: _View) -> list[tuple[int, str]]:
    """Sub-byte innermost runs must be whole bytes (reported for the first such operand of a
    record)."""
    found: dict[int, str] = {}
    for a in v.operands():
        cols = a.shape[:, 3]
        for row in np.flatnonzero((a.bits < 8) & (cols * a.bits % 8 != 0)):
            i, bits = int(a.index[row]), int(a.bits[row])
            name = next(d.name for d in DTYPES.values() if d.bits == bits)
            found.setdefault(i, f"{v.word(i)} {a.name}: an innermost run of {cols[row]} {name} "
                                f"is {cols[row] * bits / 8:g} bytes (runs of {name} are whole "
                                f"bytes: a multiple of {8 // math.gcd(8, bits)} elements)")
    return sorted(found.items())


def _semaphores(v: _View) -> list[tuple[int, str]]:
    r = v.p.instrs
    n_sem = len(v.p.semaphores)
    declared = f"{n_sem} declared" + (f": ids 0 to {n_sem - 1}" if n_sem else "")
    out = []
    for what, sems in (("waits on", r["wait_sem"]), ("signals", r["signal_sem"])):
        for i, slot in zip(*np.nonzero((sems != NO_SEM) & ((sems < 0) | (sems >= n_sem)))):
            out.append((i, f"{v.word(i)} {what} semaphore {sems[i, slot]}, which is not "
                           f"declared ({declared})"))
    counts = r["wait_count"]
    for i, slot in zip(*np.nonzero((r["wait_sem"] != NO_SEM) & (counts < 1))):
        out.append((i, f"{v.word(i)} waits for {v.sem_name(int(r['wait_sem'][i, slot]))}>="
                       f"{counts[i, slot]}, which always holds (wait counts >= 1)"))
    return out


# --------------------------------------------------------------------------------------------
# Queues that can never drain
# --------------------------------------------------------------------------------------------


def _never_drain(v: _View) -> list[tuple[int, str]]:
    """The head of every queue still waiting once no head can retire (module docstring).

    Only records that wait or signal take part: the others can neither block nor change a
    count. Records after a queue's first HALT never run, so they take no part either.
    """
    r = v.p.instrs
    halt = (v.op == Op.HALT).astype(np.int64)
    halts_before = np.cumsum(halt) - halt
    live = halts_before == halts_before[v.qstart]
    acts = np.flatnonzero(live & ((r["wait_sem"] >= 0).any(axis=1)
                                  | (r["signal_sem"] >= 0).any(axis=1)))
    wait_cols = [(r["wait_sem"][acts, k].tolist(), r["wait_count"][acts, k].tolist())
                 for k in range(r["wait_sem"].shape[1])]
    signal_cols = [r["signal_sem"][acts, k].tolist() for k in range(r["signal_sem"].shape[1])]
    queues = [(int(s), int(s) + int(n)) for s, n in zip(v.p.queue_start.ravel(),
                                                        v.p.queue_len.ravel()) if n > 0]
    spans = [tuple(np.searchsorted(acts, q).tolist()) for q in queues]   # positions in acts
    head = [lo for lo, _ in spans]
    counts: dict[int, int] = {}
    waiting: dict[int, list[tuple[int, int]]] = {}       # sem -> heap of (count needed, queue)
    ready = list(range(len(queues)))
    while ready:
        q = ready.pop()
        j, stop = head[q], spans[q][1]
        while j < stop:
            unmet = _unmet(counts, wait_cols, j)
            if unmet is not None:
                heapq.heappush(waiting.setdefault(unmet[0], []), (unmet[1], q))
                break
            for sems in signal_cols:
                s = sems[j]
                if s >= 0:
                    c = counts[s] = counts.get(s, 0) + 1
                    heap = waiting.get(s)
                    while heap and heap[0][0] <= c:
                        ready.append(heapq.heappop(heap)[1])
            j += 1
        head[q] = j
    ids, times = np.unique(r["signal_sem"][r["signal_sem"] >= 0], return_counts=True)
    signalled = dict(zip(ids.tolist(), times.tolist()))
    out = []
    for q, (_, end) in enumerate(queues):
        j = head[q]
        if j < spans[q][1]:
            s, need = _unmet(counts, wait_cols, j)
            i = int(acts[j])
            out.append((i, _stuck_message(v, i, s, need, counts.get(s, 0),
                                          signalled.get(s, 0), end - i - 1)))
    return out


def _unmet(counts: dict[int, int], wait_cols: list, j: int) -> tuple[int, int] | None:
    """(semaphore, count needed) of the first wait of record j not yet satisfied, or None."""
    for sems, needs in wait_cols:
        s = sems[j]
        if s >= 0 and counts.get(s, 0) < needs[j]:
            return s, needs[j]
    return None


def _stuck_message(v: _View, i: int, s: int, need: int, have: int, total: int,
                   behind: int) -> str:
    name = v.sem_name(s)
    why = (f"the whole program signals it {total} time{'s' * (total != 1)}" if total < need
           else f"{total - have} of its {total} signals come from instructions that are stuck "
                "themselves")
    later = "1 later instruction of this queue never runs" if behind == 1 else \
        f"{behind} later instructions of this queue never run"
    tail = f"; {later}" if behind else ""
    return f"{v.word(i)} waits forever for {name}>={need}: it only reaches {have} ({why}{tail})"
