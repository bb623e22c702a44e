"""Code generation: ops of the graph (graph.py) -> one tile program (tilesim.isa).

Ops run one after another: every queue's first instruction of op j waits until every store of
op j-1 has completed (a chip-wide barrier on the semaphore ``<op>.done``; everything an op does
feeds one of its stores, so its stores finishing means it is finished). Activations pass between
ops through DRAM, as row-major ``[rows x cols]`` tensors; weights sit in DRAM in the tiled
layout their matmul reads (``Layout.weight_strips``); each layer has a KV cache
``[batch, kv_heads, positions, width]``. Inside an op, the DMA engines double-buffer through
semaphores so loads overlap compute.

Per kind:

- matmul, router, lm_head, moe_experts: :mod:`mapping` tiles; weights stream in chunks, two
  slots alternating between the DMA engines; ``ldw`` + ``mm`` per array-row step; the fp32
  accumulator is converted to the activation type by the vector engine (plus the bias, where
  the model has one, its tile's slice loaded while the tile computes) and stored; the store
  is queued behind the next tile's first two chunks' loads, so the in-order DMA queue does
  not hold them up while the tile finishes.
- norm (RMS or layer), residual_add, activation (silu(gate) * up, or gelu), rope: row blocks
  spread over the cores, a handful of vector ops each.
- attention: per (sequence, kv head[, query block]) unit, the new keys/values are appended to
  the cache, then the cache streams through in chunks with an online softmax (running max,
  rescaled sum and accumulator), FlashAttention style; causal masks are additive tiles. When
  the units leave cores idle (decode at small batch) a unit's chunks are split over several
  cores and the partial results merged (flash-decoding; ``emit_attention``).
- embedding: rows of the table gathered by token id (plus the position rows, for learned
  positions); topk: ``top_k`` max-reductions over the router scores (timing only: which
  experts a token runs is fixed when the step is compiled, graph.expert_assignment).
- moe_experts (``_emit_experts``): dispatch (each routed expert's token rows gathered into
  one block), gates (each token's expert weights from its router scores), the experts'
  matmuls by group, combine (each token's expert rows weighted and summed, plus the shared
  experts').

Functional mode needs every value right, and is exercised on dense GQA, MLA, GPT-2-like
(LayerNorm, GELU, biases, learned positions, tied head), sliding-window and MoE models (tests:
their logits equal a numpy reference; MLA runs weight-absorbed, the reference the plain way;
MoE follows the same fixed expert choice), in fp32 and in bf16, with weights of any float type
and a KV cache of any type (converted to the arrays' as it is read). Not computed: MoE expert
biases (no preset has them; the reference refuses them).
"""
from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from tilesim.arch import dram
from tilesim.config import ChipConfig, format_size
from tilesim.dtypes import DTYPES
from tilesim.errors import InputError
from tilesim.isa.opcodes import INSTR_DTYPE, MAX_WAITS, NO_SEM, Engine, Flag, Op, VecOp, blank
from tilesim.isa.program import Program, ProgramBuilder
from tilesim.programs.graph import expert_assignment
from tilesim.programs.mapping import (ALIGN, align, balance, ceil_div, nbytes, plan_matmul,
                                      row_blocks, split)

MAX_PROGRAM_STEPS = 20_000_000
"""Matrix instructions (ldw + mm) one program may hold. Measured: compiling deepseek-v3's
prefill-128 MoE layer for h100-like (12.1 M instructions, 11.5 M of them ldw/mm, the largest
preset program on a preset chip) peaks at 5.0 GB resident, ~410 B an instruction; so a program
at this limit needs ~9 GB, and the two worker processes of a 2-core, 24 GB machine fit. The
next largest, llama-3-8b prefill-2048, holds 2.5 M a layer; llama-3-8b's LM head on
teach-2core's 4 x 4 arrays would hold 66 M (the process was killed for memory)."""
SPLIT_MIN_CHUNKS = 2
"""Key chunks a run of a split attention unit gets at least (one chunk could not overlap its
load with the previous chunk's work)."""
SPLIT_PARTIAL_SHARE = 0.5
"""A later run of a split unit stores its partial (m, l, acc) and the first run loads it back:
that traffic may be at most this share of the keys and values the run reads. It binds for MLA
(deepseek-v3 on h100-like: a 32-head group's partial acc is 64 KiB, a chunk of 32 latent keys
36 KiB, so runs of at least 8 chunks), not for GQA (a llama-3-8b partial is 2 KiB against a
16 KiB chunk of keys and values)."""
NEG = -1e30    # the additive mask value: exp(NEG - max) underflows to 0 in every float type


def _code(dt: str) -> int:
    return DTYPES[dt].code


def _eb(dt: str) -> int:
    return max(DTYPES[dt].bits // 8, 1)


@dataclass
class Tensor:
    """A row-major [rows x cols] array in DRAM."""

    name: str
    addr: int
    rows: int
    cols: int
    dtype: str

    @property
    def row_bytes(self) -> int:
        return nbytes(self.cols, self.dtype)

    def at(self, r: int, c: int = 0) -> int:
        return self.addr + r * self.row_bytes + nbytes(c, self.dtype)


LARGE_TENSOR = 2 << 20
"""Tensors of at least this many bytes start on a multiple of it (PyTorch's CUDA caching
allocator rounds large blocks to 2 MiB). A large tensor's DRAM channels and banks then do not
move when a small tensor before it grows: a 12 KiB shift of every tensor (the attention's mask
tiles) changed the llama-3-8b prefill-2048 down projection by 4.7% with the same code, and
shifts of 0-12 KiB move its prefill-512 one by up to 6% (228.9-242.4 K cycles)."""


class Layout:
    """The DRAM image of a step: weights, KV caches, activations and constants (bump
    allocation, 4 KiB aligned, :data:`LARGE_TENSOR` aligned from that size). ``values`` holds
    arrays to write before a functional run."""

    def __init__(self):
        self.top = 0
        self.tensors: dict[str, Tensor] = {}
        self.values: dict[str, np.ndarray] = {}     # tensor name -> values in its layout

    def tensor(self, name: str, rows: int, cols: int, dtype: str) -> Tensor:
        t = self.tensors.get(name)
        if t is None:
            size = rows * nbytes(cols, dtype)
            if size >= LARGE_TENSOR:
                self.top = align(self.top, LARGE_TENSOR)
            t = Tensor(name, self.top, rows, cols, dtype)
            self.top = align(self.top + size + 64, 4096)
            self.tensors[name] = t
        return t


class Emitter:
    """A ProgramBuilder with op barriers, per-op SRAM allocation and instruction tags."""

    def __init__(self, cfg: ChipConfig, name: str):
        self.cfg = cfg
        self.cores = cfg.cores.count
        self.dma = cfg.cores.dma.engines
        self.b = ProgramBuilder(self.cores, self.dma, name)
        self.tags: dict[tuple[int, int], list[int]] = {}
        self.ops: list[str] = []
        self.prev: tuple[int, int] | None = None   # (done sem, count) of the previous op
        self.done = -1
        self.done_count = 0
        self.fresh: set = set()
        self.sram_top = [0] * self.cores
        self.sram_size = cfg.cores.sram.size_bytes
        self.matmul_only: dict | None = None    # plan_matmul's ``only``
        self.matmul_steps = 0                   # ldw and mm instructions of the matmuls so far

    # ---- ops and barriers -----------------------------------------------------------------
    def begin(self, name: str) -> None:
        if self.done_count:
            self.prev = (self.done, self.done_count)
        self.ops.append(name)
        self.done = self.b.sem(f"{name}.done")
        self.done_count = 0
        self.fresh = set()
        self.sram_top = [0] * self.cores
        self._n = 0

    def sem(self, name: str) -> int:
        return self.b.sem(f"{self.ops[-1]}.{name}")

    def _barrier(self, core: int, engine: int, n_waits: int):
        """The previous op's barrier for the first instruction of this op on a queue: the
        (sem, count) to add to its waits, or None when there is none to add or no free wait
        slot (then a NOP waiting on it goes first)."""
        key = (core, int(engine))
        if key in self.fresh:
            return None
        self.fresh.add(key)
        if self.prev is None:
            return None
        if n_waits >= MAX_WAITS:
            self._raw(core, engine, [self.prev], [], op=Op.NOP)
            return None
        return self.prev

    def _sync(self, core: int, engine: int, wait, signal, final: bool) -> tuple[list, list]:
        """An instruction's waits and signals: the given ones without the Nones, the op
        barrier on a queue's first instruction of the op, and the op's done semaphore when it
        is one of the instructions that finish the op (``final``)."""
        wait = [w for w in wait if w is not None]
        bar = self._barrier(core, engine, len(wait))
        if bar is not None:
            wait.append(bar)
        signal = [s for s in signal if s is not None]
        if final:
            signal.append(self.done)
            self.done_count += 1
        return wait, signal

    def _tag(self, core: int, engine: int, n: int = 1) -> None:
        """The next ``n`` instructions of queue (core, engine) belong to the current op."""
        self.tags.setdefault((core, int(engine)), []).extend([len(self.ops) - 1] * n)

    def emit_block(self, core: int, engine: int, block: np.ndarray) -> None:
        """Append INSTR_DTYPE records built as columns, with the op barrier as :meth:`_sync`
        adds it (into the first record's free wait slot, or a NOP before it)."""
        used = int((block["wait_sem"][0] != NO_SEM).sum())
        bar = self._barrier(core, engine, used)
        if bar is not None:
            block["wait_sem"][0, used], block["wait_count"][0, used] = bar
        self.b.emit_block(core, engine, block)
        self._tag(core, engine, len(block))

    def _raw(self, core, engine, wait, signal, **f):
        self.b.emit(core, engine, wait=wait, signal=signal, **f)
        self._tag(core, engine)

    def alloc(self, core: int, nbytes_: int) -> int:
        a = self.sram_top[core]
        self.sram_top[core] = align(a + nbytes_)
        if self.sram_top[core] > self.sram_size:
            raise InputError(f"{self.cfg.name}: op {self.ops[-1]} needs {self.sram_top[core]} "
                             f"bytes of SRAM on core {core}; cores.sram.size_bytes is "
                             f"{self.sram_size}")
        return a

    def build(self) -> tuple[Program, np.ndarray]:
        prog = self.b.build()
        tags = np.zeros(len(prog.instrs), np.int64)
        n_e = prog.engines_per_core
        for c in range(prog.n_cores):
            for e in range(n_e):
                s, n = int(prog.queue_start[c, e]), int(prog.queue_len[c, e])
                if n:
                    tags[s:s + n] = self.tags[(c, e)]
        return prog, tags

    # ---- instruction helpers --------------------------------------------------------------
    def load(self, core, dma, src, dst, rows, cols, src_row, dst_row, dt, wait=(), signal=(),
             heads=1, src_head=0, dst_head=0, final=False, dst_core=-1, mc_count=0,
             mc_stride=0):
        """DRAM -> SRAM: [heads x] rows x cols elements; into the SRAM of cores dst_core +
        j * mc_stride, j < mc_count, instead of its own with dst_core >= 0 (a multicast)."""
        self._move(Op.LOAD, core, dma, src, dst, rows, cols, src_row, dst_row, dt, wait, signal,
                   heads, src_head, dst_head, final, dst_core=dst_core, mc_count=mc_count,
                   mc_stride=mc_stride)

    def store(self, core, dma, src, dst, rows, cols, src_row, dst_row, dt, wait=(), signal=(),
              heads=1, src_head=0, dst_head=0, final=True):
        """SRAM -> DRAM, the same descriptor; an op's stores finish it (``final``)."""
        self._move(Op.STORE, core, dma, src, dst, rows, cols, src_row, dst_row, dt, wait, signal,
                   heads, src_head, dst_head, final)

    def _move(self, op, core, dma, src, dst, rows, cols, src_row, dst_row, dt, wait, signal,
              heads, src_head, dst_head, final, dst_core=-1, mc_count=0, mc_stride=0):
        """One DMA descriptor, by the builder's direct path (emit_dma)."""
        e = _eb(dt)
        engine = int(Engine.DMA) + dma
        wait, signal = self._sync(core, engine, wait, signal, final)
        self.b.emit_dma(core, engine, wait, signal, int(op), src, dst, (1, heads, rows, cols),
                        (0, src_head, src_row, e), (0, dst_head, dst_row, e), _code(dt),
                        dst_core, mc_count, mc_stride)
        self._tag(core, engine)

    def vop(self, core, vop, src, dst, rows, cols, src_row, dst_row, dt, dt2=None, src2=0,
            src2_row=0, flags=0, imm=0.0, wait=(), signal=()):
        engine = int(Engine.VECTOR)
        wait, signal = self._sync(core, engine, wait, signal, False)
        self.b.emit_vop(core, engine, wait, signal, int(vop), src, src2, dst, rows, cols,
                        src_row, dst_row, src2_row, _code(dt), _code(dt2 or dt), int(flags),
                        float(imm))
        self._tag(core, engine)

    def array(self, core, op, src, dst, m, k, n, src_row, dst_row, dt, dt2=None, flags=0,
              wait=(), signal=()):
        """An LDW (``dst``, ``m``, ``dst_row`` 0, no ``dt2``) or an MM on the matrix engine."""
        engine = int(Engine.MATRIX)
        wait, signal = self._sync(core, engine, wait, signal, False)
        self.b.emit_array(core, engine, wait, signal, int(op), src, dst, m, k, n, src_row,
                          dst_row, _code(dt), _code(dt2) if dt2 else 0, int(flags))
        self._tag(core, engine)


# ============================================================================================
# Matmul
# ============================================================================================


@dataclass
class MatmulJob:
    """``count`` products Y_c = X_c @ W_c. X_c, Y_c are column ranges of DRAM tensors."""

    name: str
    m: int
    k: int
    n: int
    count: int
    x: Tensor
    y: Tensor
    weight: str                      # weight tensor name prefix in the layout
    x_col: list = field(default_factory=lambda: [0])    # column offset of X_c in x
    y_col: list = field(default_factory=lambda: [0])
    x_rows: list = field(default_factory=lambda: [0])   # row offset of X_c (experts)
    y_rows: list = field(default_factory=lambda: [0])
    x_row_step: int = 1              # X row r is x row x_rows + r * x_row_step
    y_parts: list = field(default_factory=list)   # [(first column, Tensor)]: Y's column ranges
                                                  # in separate tensors (a fused projection)
    bias: Tensor | None = None       # [1 x n] added to every row of Y (count 1)

    @property
    def x_row_bytes(self) -> int:
        """DRAM bytes between consecutive rows of X_c."""
        return self.x.row_bytes * self.x_row_step

    def x_addr(self, c: int, r0: int) -> int:
        """DRAM address of row ``r0`` of X_c."""
        return self.x.at(self.x_rows[c % len(self.x_rows)] + r0 * self.x_row_step,
                         self.x_col[c % len(self.x_col)])

    def y_addr(self, c: int, r0: int, col: int) -> int:
        """DRAM address of row ``r0``, column ``col`` of Y_c."""
        if self.y_parts:
            c0, t = self._y_part(col)
            return t.at(r0, col - c0)
        return self.y.at(self.y_rows[c % len(self.y_rows)] + r0,
                         self.y_col[c % len(self.y_col)] + col)

    def y_row_bytes(self, col: int) -> int:
        """DRAM bytes between rows of the tensor that holds Y's column ``col``."""
        return self._y_part(col)[1].row_bytes if self.y_parts else self.y.row_bytes

    def _y_part(self, col: int):
        return [(c0, t) for c0, t in self.y_parts if c0 <= col][-1]


def weight_strips(w: np.ndarray, width: int) -> np.ndarray:
    """A [k x n] weight in the DRAM layout the matmul reads: n-tiles of ``width`` columns one
    after another, each a row-major [k x width_j] strip."""
    k, n = w.shape
    return np.concatenate([w[:, j:j + width].reshape(-1) for j in range(0, n, width)])


def emit_matmul(em: Emitter, lay: Layout, job: MatmulJob, wdt: str, act: str,
                weights: dict | None, plan=None) -> None:
    """The tile program of ``job`` by ``plan`` (default: :func:`plan_matmul`'s best)."""
    cfg = em.cfg
    sa = cfg.cores.systolic
    in_dt, w_dt, acc_dt = sa.input_dtype, sa.weight_dtype, sa.acc_dtype
    plan = plan or plan_matmul(job.m, job.k, job.n, job.count, cfg, in_dt=in_dt, w_dt=wdt,
                               act_dt=act, only=em.matmul_only, bias=job.bias is not None)
    m, k, n = job.m, job.k, job.n
    w, mb, kt, kl = plan.w, plan.mb, plan.kt, plan.kl
    n_tiles, m_blocks = ceil_div(n, w), ceil_div(m, mb)
    em.matmul_steps += (2 * job.count * m_blocks * n_tiles * ceil_div(k, kt)   # ldw + mm
                        * ceil_div(w, sa.cols))
    if em.matmul_steps > MAX_PROGRAM_STEPS:
        raise InputError(
            f"{cfg.name}: op {job.name} ({f'{job.count} products of ' if job.count > 1 else ''}"
            f"{m} x {k} @ {k} x {n} on {sa.rows} x {sa.cols} arrays) takes the program past "
            f"{MAX_PROGRAM_STEPS:,} matrix instructions, more than this machine can hold while "
            f"simulating; use a chip with larger arrays or a smaller model, batch or context")
    # weights in DRAM: per product, strips of w columns
    wt = []
    for c in range(job.count):
        t = lay.tensor(f"{job.weight}#{c}" if job.count > 1 else job.weight, 1,
                       k * n, wdt)
        wt.append(t)
        if weights is not None and t.name not in lay.values:
            src = weights[job.weight][c] if job.count > 1 else weights[job.weight]
            lay.values[t.name] = weight_strips(np.asarray(src), w)
    if plan.gm * plan.gn > 1:
        _emit_matmul_grid(em, job, plan, wt, wdt, act)
        return
    units = [(c, mblk, j) for c in range(job.count) for mblk in range(m_blocks)
             for j in range(n_tiles)]
    conv_w = wdt != w_dt
    conv_x = act != in_dt
    for core, run in enumerate(split(len(units), em.cores)):
        if not len(run):
            continue
        xres = em.alloc(core, nbytes(mb * k, in_dt)) if plan.resident else None
        xstage = em.alloc(core, nbytes(mb * k, act)) if plan.resident and conv_x else None
        xs = [em.alloc(core, nbytes(mb * kl, in_dt)) for _ in range(2)] \
            if not plan.resident else None
        xraw = [em.alloc(core, nbytes(mb * kl, act)) for _ in range(2)] \
            if not plan.resident and conv_x else None
        ws = [em.alloc(core, nbytes(kl * w, w_dt)) for _ in range(2)]
        wraw = [em.alloc(core, nbytes(kl * w, wdt)) for _ in range(2)] if conv_w else None
        acc = em.alloc(core, nbytes(mb * w, acc_dt))
        out = em.alloc(core, nbytes(mb * w, act))
        bb = em.alloc(core, nbytes(w, act)) if job.bias else None
        full = [em.sem(f"c{core}.full{s}") for s in (0, 1)]
        empty = [em.sem(f"c{core}.empty{s}") for s in (0, 1)]
        conv = [em.sem(f"c{core}.conv{s}") for s in (0, 1)]
        xready = em.sem(f"c{core}.x")
        accd = em.sem(f"c{core}.acc")
        outd = em.sem(f"c{core}.out")
        stored = em.sem(f"c{core}.stored")
        per_fill = 1 + (0 if plan.resident else 1)   # loads signalling full per chunk
        fills = [0, 0]
        uses = [0, 0]
        n_chunk = 0
        x_loaded = 0
        x_waited = 0
        cur_x = None
        n_acc = 0
        pending: list = []
        for u in run:
            c, mblk, j = units[u]
            r0 = mblk * mb
            rows = min(mb, m - r0)
            wj = min(w, n - j * w)
            x_row_addr = job.x_addr(c, r0)
            x_row_stride = job.x_row_bytes
            # resident X: load the [rows x k] block once per (product, m-block)
            if plan.resident and cur_x != (c, mblk):
                cur_x = (c, mblk)
                dst = xstage if conv_x else xres
                em.load(core, 0, x_row_addr, dst, rows, k, x_row_stride, nbytes(k, act), act,
                        wait=[(accd, n_acc) if n_acc else None], signal=[xready])
                x_loaded += 1
                if conv_x:
                    em.vop(core, VecOp.CONVERT, xstage, xres, rows, k, nbytes(k, act),
                           nbytes(k, in_dt), act, in_dt, wait=[(xready, x_loaded)],
                           signal=[xready])
                    x_loaded += 1
            strip = wt[c].addr + nbytes(k * j * w, wdt)
            steps = ceil_div(k, kl)
            for s in range(steps):
                k0 = s * kl
                kr = min(kl, k - k0)
                slot = n_chunk % 2
                dma = slot % max(1, em.dma)
                wait_empty = (empty[slot], uses[slot]) if fills[slot] else None
                dst = wraw[slot] if conv_w else ws[slot]
                em.load(core, dma, strip + nbytes(k0 * wj, wdt), dst, 1, kr * wj, 0, 0, wdt,
                        wait=[wait_empty], signal=[full[slot]])
                if not plan.resident:
                    xdst = xraw[slot] if conv_x else xs[slot]
                    em.load(core, dma, x_row_addr + nbytes(k0, act), xdst, rows, kr,
                            x_row_stride, nbytes(kr, act), act, signal=[full[slot]])
                fills[slot] += 1
                need_full = fills[slot] * per_fill
                wait_mat = [(full[slot], need_full)]
                cx = conv_x and not plan.resident
                if conv_w:
                    em.vop(core, VecOp.CONVERT, wraw[slot], ws[slot], 1, kr * wj, 0, 0,
                           wdt, w_dt, wait=wait_mat, signal=[] if cx else [conv[slot]])
                if cx:
                    em.vop(core, VecOp.CONVERT, xraw[slot], xs[slot], rows, kr,
                           nbytes(kr, act), nbytes(kr, in_dt), act, in_dt,
                           wait=() if conv_w else wait_mat, signal=[conv[slot]])
                if conv_w or cx:
                    wait_mat = [(conv[slot], fills[slot])]
                if plan.resident and x_waited != x_loaded:
                    wait_mat.append((xready, x_loaded))
                    x_waited = x_loaded
                if plan.resident:
                    a_addr, a_k0, a_row = xres, k0, nbytes(k, in_dt)
                else:
                    a_addr, a_k0, a_row = xs[slot], 0, nbytes(kr, in_dt)
                em.emit_block(core, Engine.MATRIX, _ldw_mm_run(
                    kr, kt, wj, rows, ws[slot], w_dt, a_addr, a_k0, a_row, in_dt, acc, acc_dt,
                    wait_mat, [(outd, n_acc)] if s == 0 and n_acc else [], s == 0,
                    [empty[slot]] + ([accd] if s == steps - 1 else []), sa.cols))
                uses[slot] += 1
                n_chunk += 1
                if s == min(1, steps - 1):
                    _flush_stores(em, pending)
            n_acc += 1
            _store_tile(em, core, acc, out, job.y_addr(c, r0, j * w), job.y_row_bytes(j * w),
                        rows, wj, acc_dt, act, accd, outd, stored, n_acc,
                        (bb, job.bias.at(0, j * w), em.sem(f"c{core}.bias")) if job.bias
                        else None, pending)
        _flush_stores(em, pending)


def _store_tile(em: Emitter, core: int, acc: int, out: int, y_addr: int, y_row: int, rows: int,
                wj: int, acc_dt: str, act: str, accd: int, outd: int, stored: int,
                n_acc: int, bias=None, defer: list | None = None) -> None:
    """The ``n_acc``-th finished tile of ``core``: the vector engine converts the accumulator
    (once its last mm signalled ``accd`` and the previous tile's store ``stored``) into
    ``out`` in the activation type, and the last DMA engine stores it to ``y_addr``.
    ``bias`` = (SRAM buffer, DRAM address of the tile's slice, semaphore): the slice is
    loaded (on the store's engine, once the previous tile's store is issued, so it lands
    while this tile computes) and added to every row in the activation type. With ``defer``
    (a list) the store is appended to it, for the caller to emit behind the next tile's first
    loads: emitted here it would block them at the head of the queue until this tile is done
    (a 64 x 1024 @ 1024 x 32768 matmul on h100-like: 54,018 cycles, deferred 52,702)."""
    prev = (stored, n_acc - 1) if n_acc > 1 else None
    if bias is not None:
        bb, src, bsem = bias
        em.load(core, em.dma - 1, src, bb, 1, wj, 0, 0, act, wait=[prev], signal=[bsem])
    em.vop(core, VecOp.CONVERT, acc, out, rows, wj, nbytes(wj, acc_dt), nbytes(wj, act),
           acc_dt, act, wait=[(accd, n_acc), prev], signal=[] if bias else [outd])
    if bias is not None:
        em.vop(core, VecOp.ADD, out, out, rows, wj, nbytes(wj, act), nbytes(wj, act), act,
               src2=bb, flags=Flag.BCAST_COL, wait=[(bsem, n_acc)], signal=[outd])
    args = (core, em.dma - 1, out, y_addr, rows, wj, nbytes(wj, act), y_row, act)
    kw = dict(wait=[(outd, n_acc)], signal=[stored])
    if defer is None:
        em.store(*args, **kw)
    else:
        defer.append((args, kw))


def _flush_stores(em: Emitter, pending: list) -> None:
    """Emit the stores :func:`_store_tile` deferred, in order, and forget them."""
    for args, kw in pending:
        em.store(*args, **kw)
    pending.clear()


def _emit_matmul_grid(em: Emitter, job: MatmulJob, plan, wt: list, wdt: str, act: str) -> None:
    """emit_matmul with a multicast grid (mapping: *Multicast groups*). Groups of gm x gn cores
    take contiguous runs of super-units (product, gm m-blocks, gn n-tiles); in each, core
    (a, b) = base + a * gn + b computes m-block a and n-tile b. Per chunk of kl K-rows, X of
    row a is read once and multicast to the row's active cores, W of column b to the column's;
    each active core of the row (column) issues a share of the rows, rotating by chunk.
    Semaphores: xfull[a][slot] and wfull[b][slot] count fills, empty[slot] counts every active
    core's use of a slot (a refill waits for all of them), and per core conv, acc, out, stored
    as in the plain loop."""
    sa = em.cfg.cores.systolic
    in_dt, w_dt, acc_dt = sa.input_dtype, sa.weight_dtype, sa.acc_dtype
    m, k, n = job.m, job.k, job.n
    w, mb, kt, kl, gm, gn = plan.w, plan.mb, plan.kt, plan.kl, plan.gm, plan.gn
    n_tiles, m_blocks = ceil_div(n, w), ceil_div(m, mb)
    supers = [(c, sm, sn) for c in range(job.count) for sm in range(ceil_div(m_blocks, gm))
              for sn in range(ceil_div(n_tiles, gn))]
    conv_w, conv_x = wdt != w_dt, act != in_dt
    size = gm * gn
    steps = ceil_div(k, kl)
    x_row_stride = job.x_row_bytes
    for grp, run in enumerate(split(len(supers), em.cores // size)):
        if not len(run):
            continue
        base = grp * size
        cores = range(base, base + size)
        # every core of the group allocates alike (from the op's empty SRAM), so a buffer has
        # one address group-wide: the multicast loads write it on every core at once
        for core in cores:
            xs, xraw, ws, wraw, acc, out = (
                [em.alloc(core, nbytes(mb * kl, in_dt)) for _ in range(2)],
                [em.alloc(core, nbytes(mb * kl, act)) for _ in range(2)] if conv_x else None,
                [em.alloc(core, nbytes(kl * w, w_dt)) for _ in range(2)],
                [em.alloc(core, nbytes(kl * w, wdt)) for _ in range(2)] if conv_w else None,
                em.alloc(core, nbytes(mb * w, acc_dt)), em.alloc(core, nbytes(mb * w, act)))
            bb = em.alloc(core, nbytes(w, act)) if job.bias else None
        xdst = xraw if conv_x else xs
        wdst = wraw if conv_w else ws
        g = f"g{grp}"
        xfull = [[em.sem(f"{g}.x{a}.full{s}") for s in (0, 1)] for a in range(gm)]
        wfull = [[em.sem(f"{g}.w{b}.full{s}") for s in (0, 1)] for b in range(gn)]
        empty = [em.sem(f"{g}.empty{s}") for s in (0, 1)]
        per = {core: dict(conv=[em.sem(f"c{core}.conv{s}") for s in (0, 1)],
                          accd=em.sem(f"c{core}.acc"), outd=em.sem(f"c{core}.out"),
                          stored=em.sem(f"c{core}.stored"), n_acc=0, used=[0, 0])
               for core in cores}
        x_cnt = [[0, 0] for _ in range(gm)]
        w_cnt = [[0, 0] for _ in range(gn)]
        released = [0, 0]            # empty[slot] signals emitted so far
        n_chunk = 0
        pending: list = []
        for su in run:
            c, sm, sn = supers[su]
            na = min(gm, m_blocks - sm * gm)
            nb = min(gn, n_tiles - sn * gn)
            x_row = [job.x_addr(c, (sm * gm + a) * mb) for a in range(na)]
            rows = [min(mb, m - (sm * gm + a) * mb) for a in range(na)]
            wjs = [min(w, n - (sn * gn + b) * w) for b in range(nb)]
            strips = [wt[c].addr + nbytes(k * (sn * gn + b) * w, wdt) for b in range(nb)]
            for s in range(steps):
                k0 = s * kl
                kr = min(kl, k - k0)
                slot = n_chunk % 2
                dma = slot % max(1, em.dma)
                refill = (empty[slot], released[slot]) if released[slot] else None
                for a in range(na):           # X of row a: a share of its rows per core
                    first = base + a * gn
                    for p, (r0, r1) in enumerate(_shares(rows[a], nb)):
                        em.load(first + (p + s) % nb, dma,
                                x_row[a] + r0 * x_row_stride + nbytes(k0, act),
                                xdst[slot] + r0 * nbytes(kr, act), r1 - r0, kr, x_row_stride,
                                nbytes(kr, act), act, wait=[refill], signal=[xfull[a][slot]],
                                dst_core=first, mc_count=nb, mc_stride=1)
                        x_cnt[a][slot] += 1
                for b in range(nb):           # W of column b: a share of its K-rows per core
                    wj = wjs[b]
                    for p, (r0, r1) in enumerate(_shares(kr, na)):
                        em.load(base + ((p + s) % na) * gn + b, dma,
                                strips[b] + nbytes((k0 + r0) * wj, wdt),
                                wdst[slot] + nbytes(r0 * wj, wdt), 1, (r1 - r0) * wj, 0, 0, wdt,
                                wait=[refill], signal=[wfull[b][slot]], dst_core=base + b,
                                mc_count=na, mc_stride=gn)
                        w_cnt[b][slot] += 1
                for a in range(na):
                    for b in range(nb):
                        core = base + a * gn + b
                        q = per[core]
                        q["used"][slot] += 1
                        xw, ww = (xfull[a][slot], x_cnt[a][slot]), (wfull[b][slot],
                                                                    w_cnt[b][slot])
                        if conv_w:
                            em.vop(core, VecOp.CONVERT, wraw[slot], ws[slot], 1, kr * wjs[b],
                                   0, 0, wdt, w_dt, wait=[ww],
                                   signal=[] if conv_x else [q["conv"][slot]])
                        if conv_x:
                            em.vop(core, VecOp.CONVERT, xraw[slot], xs[slot], rows[a], kr,
                                   nbytes(kr, act), nbytes(kr, in_dt), act, in_dt,
                                   wait=[xw], signal=[q["conv"][slot]])
                        cv = (q["conv"][slot], q["used"][slot])
                        ldw_wait = [cv if conv_w else ww]
                        mm_wait = [cv if conv_x else xw]
                        if s == 0 and q["n_acc"]:
                            mm_wait.append((q["outd"], q["n_acc"]))
                        em.emit_block(core, Engine.MATRIX, _ldw_mm_run(
                            kr, kt, wjs[b], rows[a], ws[slot], w_dt, xs[slot], 0,
                            nbytes(kr, in_dt), in_dt, acc, acc_dt, ldw_wait, mm_wait, s == 0,
                            [empty[slot]] + ([q["accd"]] if s == steps - 1 else []), sa.cols))
                released[slot] += na * nb
                n_chunk += 1
                if s == min(1, steps - 1):
                    _flush_stores(em, pending)
            for a in range(na):
                for b in range(nb):
                    core = base + a * gn + b
                    q = per[core]
                    q["n_acc"] += 1
                    _store_tile(em, core, acc, out,
                                job.y_addr(c, (sm * gm + a) * mb, (sn * gn + b) * w),
                                job.y_row_bytes((sn * gn + b) * w), rows[a], wjs[b], acc_dt,
                                act, q["accd"], q["outd"], q["stored"], q["n_acc"],
                                (bb, job.bias.at(0, (sn * gn + b) * w),
                                 em.sem(f"c{core}.bias")) if job.bias else None, pending)
        _flush_stores(em, pending)


def _shares(rows: int, parts: int) -> list[tuple[int, int]]:
    """``rows`` cut into at most ``parts`` contiguous (start, end) ranges, sizes differing by at
    most one (the first ones larger)."""
    return [(r.start, r.stop) for r in split(rows, min(parts, rows))]


def _ldw_mm_run(kr, kt, wj, rows, w_addr, w_dt, a_addr, a_k0, a_row, in_dt, acc, acc_dt,
                ldw_wait, mm_wait, first, signal, cols) -> np.ndarray:
    """The matrix engine's records for one weight chunk of ``kr`` K-rows and ``wj`` columns,
    in sub-tiles of at most the array's ``cols``: per step of ``kt`` rows and per sub-tile an
    ``ldw`` of its ``kt x cols`` piece of the chunk at ``w_addr`` and an ``mm`` streaming
    ``rows`` rows of X (from K-offset ``a_k0`` of the block at ``a_addr``) into its columns of
    the accumulator, so every X row read from SRAM meets ``wj`` columns of weights. The first
    ldw waits on ``ldw_wait``, the first mm on ``mm_wait``; a tile's first step (``first``)
    overwrites the accumulator, the rest accumulate; the last mm signals ``signal``. Built by
    patching the template's bytes (a matmul emits tens of thousands of chunks)."""
    raw, ldw_src, mm_k, mm_dst = _ldw_mm_template(kr, kt, wj, rows, w_dt, a_row, in_dt,
                                                  acc_dt, cols)
    buf = bytearray(raw)
    size, bits = INSTR_DTYPE.itemsize, DTYPES[in_dt].bits
    for j, (src, k, dst) in enumerate(zip(ldw_src, mm_k, mm_dst)):
        o = 2 * j * size
        _Q.pack_into(buf, o + _F_SRC, src + w_addr)
        _QQQ.pack_into(buf, o + size + _F_SRC, a_addr + ((a_k0 + k) * bits + 7) // 8, 0,
                       acc + dst)
    if first:
        for j in range(ceil_div(wj, cols)):
            buf[(2 * j + 1) * size + _F_FLAGS] = 0
    for o, waits in ((0, ldw_wait), (size, mm_wait)):
        for i, (sem, count) in enumerate(waits):
            _I.pack_into(buf, o + _F_WAIT + 4 * i, sem)
            _I.pack_into(buf, o + _F_COUNT + 4 * i, count)
    for i, sem in enumerate(signal):
        _I.pack_into(buf, len(buf) - size + _F_SIGNAL + 4 * i, sem)
    return np.frombuffer(buf, INSTR_DTYPE)


_Q, _QQQ, _I = struct.Struct("<q"), struct.Struct("<qqq"), struct.Struct("<i")
_F_SRC, _F_FLAGS, _F_WAIT, _F_COUNT, _F_SIGNAL = (
    INSTR_DTYPE.fields[f][1] for f in ("src_addr", "flags", "wait_sem", "wait_count",
                                        "signal_sem"))
assert INSTR_DTYPE.fields["dst_addr"][1] == _F_SRC + 16     # src, src2, dst: one <qqq


@functools.lru_cache(maxsize=256)
def _ldw_mm_template(kr, kt, wj, rows, w_dt, a_row, in_dt, acc_dt, cols):
    """What :func:`_ldw_mm_run` emits for these sizes with every address 0, no waits and no
    signals, as bytes (copied and filled in per chunk: a matmul emits tens of thousands of
    chunks of a handful of shapes), and per (step, sub-tile) pair the ldw's source offset
    (bytes), the mm's K offset (elements) and its accumulator offset (bytes)."""
    steps, subs = ceil_div(kr, kt), ceil_div(wj, cols)
    t = np.repeat(np.arange(steps, dtype=np.int64) * kt, subs)      # step-major pairs
    c0 = np.tile(np.arange(subs, dtype=np.int64) * cols, steps)
    kk = np.minimum(kt, kr - t)
    cw = np.minimum(cols, wj - c0)
    blk = blank(2 * steps * subs)
    ldw, mm = blk[0::2], blk[1::2]
    ldw["op"] = Op.LDW
    ldw["src_addr"] = ((t * wj + c0) * DTYPES[w_dt].bits + 7) // 8
    ldw["k"], ldw["n"] = kk, cw
    ldw["src_stride"][:, 2] = nbytes(wj, w_dt)
    ldw["dtype"] = _code(w_dt)
    mm["op"] = Op.MM
    mm["m"], mm["k"], mm["n"] = rows, kk, cw
    mm["src_stride"][:, 2] = a_row
    mm["dst_stride"][:, 2] = nbytes(wj, acc_dt)
    mm["dtype"], mm["dtype2"] = _code(in_dt), _code(acc_dt)
    mm["flags"] = int(Flag.ACCUMULATE)
    dst = (c0 * DTYPES[acc_dt].bits + 7) // 8
    return (blk.tobytes(), tuple(int(v) for v in ldw["src_addr"]), tuple(int(v) for v in t),
            tuple(int(v) for v in dst))


# ============================================================================================
# Row-wise vector ops
# ============================================================================================


def _row_plan(em: Emitter, rows: int, row_bytes: int, buffers: int, ways: int = 1):
    """Blocks (first row, rows) of a row-wise op, the largest block first: no more rows than
    ``buffers + 1`` buffers of ``row_bytes`` a row fit in a core's SRAM, and no more than it
    takes to give every core the same number of blocks (each row cut into ``ways`` column
    blocks). A core works through its blocks one after another, so blocks sized to the SRAM
    alone would leave most cores idle on a batch of decode rows (batch 64 of a 2,048-wide
    RMSNorm on h100-like: 11 cores of 132, each a serial 6-row block)."""
    budget = em.sram_size // (buffers + 1)
    cap = row_blocks(rows, row_bytes, budget)
    cores = max(1, em.cores // ways)
    per_core = max(1, ceil_div(rows, cap * cores))
    rb = max(1, ceil_div(rows, per_core * cores))
    blocks = [(r, min(rb, rows - r)) for r in range(0, rows, rb)]
    return rb, blocks


def emit_norm(em: Emitter, lay: Layout, x: Tensor, y: Tensor, rows: int, dim: int, kind: str,
              eps: float, gamma: str, beta: str | None, act: str, weights: dict | None,
              x_row0: int = 0, x_row_step: int = 1, x_col: int = 0, y_col: int = 0) -> None:
    """y = norm(x) * gamma (+ beta). fp32 inside; with another act type the normalised rows
    are rounded to it before gamma (and beta) apply in it, as Hugging Face's LlamaRMSNorm
    does (a vector op reads both its sources in one type, and gamma is stored in act)."""
    f32 = "fp32"
    g = lay.tensor(gamma, 1, dim, act)
    if weights is not None and gamma in weights:
        lay.values[gamma] = np.asarray(weights[gamma]).reshape(1, dim)
    bt = lay.tensor(beta, 1, dim, act) if beta else None
    if weights is not None and beta and beta in weights:
        lay.values[beta] = np.asarray(weights[beta]).reshape(1, dim)
    rb, blocks = _row_plan(em, rows, dim * 4, 4)
    active = min(len(blocks), em.cores)           # split gives the first cores the blocks
    for core, run in enumerate(split(len(blocks), em.cores)):
        if not len(run):
            continue
        xb = em.alloc(core, nbytes(rb * dim, act))
        xf = em.alloc(core, nbytes(rb * dim, f32))
        sq = em.alloc(core, nbytes(rb * dim, f32))
        s = em.alloc(core, nbytes(rb, f32) + 64)
        ga = em.alloc(core, nbytes(dim, act))
        be = em.alloc(core, nbytes(dim, act)) if bt else None
        yb = em.alloc(core, nbytes(rb * dim, act))
        ld = em.sem(f"c{core}.ld")
        vd = em.sem(f"c{core}.vd")
        st = em.sem(f"c{core}.st")
        # gamma (and beta) once per group of cores, multicast: 132 cores reading the same
        # 4 KiB one by one queue on the few DRAM channels that hold it
        par = _load_shared(em, core, active, [(g.addr, ga)] + ([(bt.addr, be)] if bt else []),
                           dim, act)
        rowb = nbytes(dim, f32)
        nld = 0
        for i, bi in enumerate(run):
            r0, nr = blocks[bi]
            src = x.at(x_row0 + r0 * x_row_step, x_col)
            em.load(core, 0, src, xb, nr, dim, x.row_bytes * x_row_step, nbytes(dim, act), act,
                    wait=[(vd, i) if i else None], signal=[ld])
            nld += 1
            em.vop(core, VecOp.CONVERT, xb, xf, nr, dim, nbytes(dim, act), rowb, act, f32,
                   wait=[(ld, nld), (st, i) if i else None])
            if kind == "layer":
                em.vop(core, VecOp.REDUCE_SUM, xf, s, nr, dim, rowb, 4, f32)
                em.vop(core, VecOp.MUL, s, s, nr, 1, 4, 4, f32, flags=Flag.BCAST_IMM,
                       imm=1.0 / dim)
                em.vop(core, VecOp.SUB, xf, xf, nr, dim, rowb, rowb, f32, src2=s,
                       flags=Flag.BCAST_ROW)
            em.vop(core, VecOp.MUL, xf, sq, nr, dim, rowb, rowb, f32, src2=xf, src2_row=rowb)
            em.vop(core, VecOp.REDUCE_SUM, sq, s, nr, dim, rowb, 4, f32)
            em.vop(core, VecOp.MUL, s, s, nr, 1, 4, 4, f32, flags=Flag.BCAST_IMM, imm=1.0 / dim)
            em.vop(core, VecOp.RSQRT, s, s, nr, 1, 4, 4, f32, imm=eps)
            em.vop(core, VecOp.MUL, xf, xf, nr, dim, rowb, rowb, f32, src2=s, flags=Flag.BCAST_ROW)
            if act == f32:
                em.vop(core, VecOp.MUL, xf, xf if bt else yb, nr, dim, rowb, rowb, f32,
                       src2=ga, flags=Flag.BCAST_COL, wait=[None if i else par],
                       signal=[] if bt else [vd])
                if bt:
                    em.vop(core, VecOp.ADD, xf, yb, nr, dim, rowb, rowb, f32, src2=be,
                           flags=Flag.BCAST_COL, signal=[vd])
            else:
                # the normalised rows in the act type, then gamma (and beta) in it
                rowa = nbytes(dim, act)
                em.vop(core, VecOp.CONVERT, xf, yb, nr, dim, rowb, rowa, f32, act)
                em.vop(core, VecOp.MUL, yb, yb, nr, dim, rowa, rowa, act, src2=ga,
                       flags=Flag.BCAST_COL, wait=[None if i else par],
                       signal=[] if bt else [vd])
                if bt:
                    em.vop(core, VecOp.ADD, yb, yb, nr, dim, rowa, rowa, act, src2=be,
                           flags=Flag.BCAST_COL, signal=[vd])
            em.store(core, em.dma - 1, yb, y.at(r0, y_col), nr, dim, nbytes(dim, act),
                     y.row_bytes, act, wait=[(vd, i + 1)], signal=[st])


def _load_shared(em: Emitter, core: int, cores: int, vectors: list, cols: int, dt: str):
    """Load the [1 x ``cols``] DRAM vectors (src, SRAM dst) that each of cores 0..``cores``-1
    needs at the same SRAM address: a group of up to ``cores.dma.multicast_cores`` cores reads
    each once, its first core multicasting it to all (one load per core without multicast).
    Call once per core, in core order; returns the (semaphore, count) that ``core`` waits for
    before it reads them."""
    size = max(1, em.cfg.cores.dma.multicast_cores)
    base = core - core % size
    n = min(size, cores - base)
    done = em.sem(f"g{base // size}.shared")
    if core == base:
        mc = {"dst_core": base, "mc_count": n, "mc_stride": 1} if n > 1 else {}
        for src, dst in vectors:
            em.load(core, 0, src, dst, 1, cols, 0, 0, dt, signal=[done], **mc)
    return done, len(vectors)


def emit_binary(em: Emitter, a: Tensor, b: Tensor, y: Tensor, rows: int, cols: int, fn: str,
                act: str) -> None:
    """y = a + b (``add``), silu(a) * b (``silu_mul``) or gelu(a) (``gelu``, b unused).

    Elementwise, so cut into blocks of rows and, when the four buffers of one row do not fit
    the SRAM (llama-3-70b's 28,672-wide FFN activation), into blocks of columns too (of
    multiples of 64 elements, 12 bytes each in half the SRAM). A core with several blocks
    double-buffers them: a block's rows take at most a quarter of the SRAM at 12 bytes an
    element, so two sets of its buffers (a, b, y and an fp32 temporary: 10 bytes an element
    in bf16, 16 in fp32) fit in two thirds, and block i + 1 loads while block i computes and
    stores (one set where a single row is that wide)."""
    f32 = "fp32"
    cb = cols
    if 3 * align(nbytes(cols, act)) + align(nbytes(cols, f32)) > em.sram_size:
        cb = max(1, em.sram_size // 2 // 12)
        cb = cb // 64 * 64 or cb
    rb, rblocks = _row_plan(em, rows, cb * 12, 3, ways=ceil_div(cols, cb))
    blocks = [(r0, nr, c0, min(cb, cols - c0)) for r0, nr in rblocks
              for c0 in range(0, cols, cb)]
    for core, run in enumerate(split(len(blocks), em.cores)):
        if not len(run):
            continue
        one, one_f = nbytes(rb * cb, act), nbytes(rb * cb, f32)
        sets = []                      # (a, b, fp32 temporary, y): two where they fit
        for _ in range(min(2, len(run))):
            if sets and em.sram_top[core] + 3 * align(one) + align(one_f) > em.sram_size:
                break
            sets.append((em.alloc(core, one), em.alloc(core, one), em.alloc(core, one_f),
                         em.alloc(core, one)))
        n_sets = len(sets)
        # per set: loads in (any order, so a count per set) and stores out; the vector
        # engine runs in order, so one count of finished blocks serves both sets
        ld = [em.sem(f"c{core}.ld{k}") for k in range(n_sets)]
        st = [em.sem(f"c{core}.st{k}") for k in range(n_sets)]
        vd = em.sem(f"c{core}.vd")
        n_in = 1 if fn == "gelu" else 2           # loads per block
        rowa, rowf = nbytes(cb, act), nbytes(cb, f32)
        for i, bi in enumerate(run):
            r0, nr, c0, nc = blocks[bi]
            k = i % n_sets
            ab, bb, tf, yb = sets[k]
            reuse = i >= n_sets                # the set held block i - n_sets
            em.load(core, 0, a.at(r0, c0), ab, nr, nc, a.row_bytes, rowa, act,
                    wait=[(vd, i - n_sets + 1) if reuse else None], signal=[ld[k]])
            if n_in == 2:
                em.load(core, 0, b.at(r0, c0), bb, nr, nc, b.row_bytes, rowa, act,
                        signal=[ld[k]])
            w = [(ld[k], (i // n_sets + 1) * n_in), (st[k], i // n_sets) if reuse else None]
            if fn == "add":
                em.vop(core, VecOp.ADD, ab, yb, nr, nc, rowa, rowa, act, src2=bb, src2_row=rowa,
                       wait=w, signal=[vd])
            elif fn == "silu_mul":
                # silu in fp32, rounded to the act type over a (a vector op reads both its
                # sources in one type), times b: as a framework computes it in that type
                em.vop(core, VecOp.SILU, ab, tf, nr, nc, rowa, rowf, act, f32, wait=w)
                em.vop(core, VecOp.CONVERT, tf, ab, nr, nc, rowf, rowa, f32, act)
                em.vop(core, VecOp.MUL, ab, yb, nr, nc, rowa, rowa, act, src2=bb,
                       src2_row=rowa, signal=[vd])
            else:
                em.vop(core, VecOp.GELU, ab, yb, nr, nc, rowa, rowa, act, wait=w, signal=[vd])
            em.store(core, em.dma - 1, yb, y.at(r0, c0), nr, nc, rowa, y.row_bytes, act,
                     wait=[(vd, i + 1)], signal=[st[k]])


def rope_table(positions: np.ndarray, rot_dim: int, theta: float) -> np.ndarray:
    """[cos | sin] rows for the rotate-half RoPE: angle = pos * theta^(-2i/rot_dim)."""
    half = rot_dim // 2
    inv = theta ** (-np.arange(half) * 2.0 / rot_dim)
    ang = positions[:, None].astype(np.float64) * inv[None, :]
    return np.concatenate([np.cos(ang), np.sin(ang)], axis=1)


def emit_rope(em: Emitter, lay: Layout, parts: list, rows: int, rot_dim: int,
              positions: np.ndarray, theta: float, act: str, tag: str) -> None:
    """Rotate ``rot_dim`` columns of every head of each part.

    parts: [(tensor, heads, head_stride_elems, rot_offset_elems[, out])]: in place (the whole
    rows go through the SRAM), or, with ``out`` = (tensor, head_stride_elems, offset_elems),
    only the rotated columns, read from each head and written to ``out``'s heads (MLA: the
    query's rope part goes next to its absorbed latent part, where the attention reads it)."""
    table = lay.tensor(f"{tag}.rope_table", rows, rot_dim, act)
    lay.values[table.name] = rope_table(positions, rot_dim, theta)
    width = sum(p[0].cols if len(p) == 4 else p[1] * rot_dim for p in parts)
    rb, blocks = _row_plan(em, rows, nbytes(width + rot_dim, act), 1)
    rt = nbytes(rot_dim, act)
    for core, run in enumerate(split(len(blocks), em.cores)):
        if not len(run):
            continue
        tb = em.alloc(core, nbytes(rb * rot_dim, act))
        xb = [em.alloc(core, rb * (p[0].row_bytes if len(p) == 4 else p[1] * rt))
              for p in parts]
        ld = em.sem(f"c{core}.ld")
        vd = em.sem(f"c{core}.vd")
        st = em.sem(f"c{core}.st")
        nld = nvd = nst = 0
        for i, bi in enumerate(run):
            r0, nr = blocks[bi]
            em.load(core, 0, table.at(r0), tb, nr, rot_dim, table.row_bytes, rt, act,
                    wait=[(st, nst) if nst else None], signal=[ld])
            nld += 1
            for p, (t, heads, hs, off, *out) in enumerate(parts):
                if out:                         # [heads x rows x rot_dim] in the SRAM
                    em.load(core, 0, t.at(r0, off), xb[p], nr, rot_dim, t.row_bytes, rt, act,
                            signal=[ld], heads=heads, src_head=nbytes(hs, act),
                            dst_head=rb * rt)
                else:
                    em.load(core, 0, t.at(r0), xb[p], nr, t.cols, t.row_bytes, t.row_bytes,
                            act, signal=[ld])
                nld += 1
            # the block's loads may land in any order, so the first rotation waits for all
            # of them (a count of ld cannot tell which ones are in)
            for p, (t, heads, hs, off, *out) in enumerate(parts):
                rowx = rt if out else t.row_bytes
                for h in range(heads):
                    a = xb[p] + (h * rb * rt if out else nbytes(h * hs + off, act))
                    em.vop(core, VecOp.ROPE, a, a, nr, rot_dim, rowx, rowx, act, src2=tb,
                           src2_row=rt, wait=[(ld, nld)] if p == h == 0 else (),
                           signal=[vd] if h == heads - 1 else ())
                nvd += 1
                if out:
                    (ot, ohs, ooff), = out
                    em.store(core, em.dma - 1, xb[p], ot.at(r0, ooff), nr, rot_dim, rt,
                             ot.row_bytes, act, wait=[(vd, nvd)], signal=[st], heads=heads,
                             src_head=rb * rt, dst_head=nbytes(ohs, act))
                else:
                    em.store(core, em.dma - 1, xb[p], t.at(r0), nr, t.cols, rowx, t.row_bytes,
                             act, wait=[(vd, nvd)], signal=[st])
                nst += 1


# ============================================================================================
# Attention
# ============================================================================================


@dataclass
class AttnJob:
    name: str
    batch: int
    q_heads: int
    kv_heads: int
    queries: int            # per sequence
    keys: int               # per sequence, after the append
    start: int              # position of the first query (decode: context; prefill: 0)
    causal: bool
    score_width: int
    value_width: int
    shared_kv: bool         # MLA: values are the first value_width columns of the key rows
    q: Tensor               # [B*queries, q_heads * score_width]
    k_new: Tensor           # [B*queries, kv_heads * score_width] (rows to append)
    v_new: Tensor | None
    out: Tensor             # [B*queries, q_heads * value_width]
    cache_k: Tensor         # [B*kv_heads*positions, score_width]
    cache_v: Tensor | None
    positions: int          # cache rows per (sequence, kv head)
    qk_dim: int             # the softmax scale is 1 / sqrt(qk_dim): head_dim (MLA: nope + rope)
    window: int = 0


def emit_attention(em: Emitter, lay: Layout, job: AttnJob, act: str, kvdt: str) -> None:
    """FlashAttention on the cores: a unit of work is one (sequence, kv head, query block) and
    streams its key chunks through two slots, keeping the running row max m, row sum l and
    the unnormalised output acc (online softmax). When the kv head's query heads do not fit
    one core's SRAM even for one query (MLA: 128 heads of a 512-wide latent), they are cut
    into head groups, a unit each, every one streaming the chunks.

    *Split-K* (flash-decoding): when the units leave cores idle (decode at small batch: one
    unit per sequence and kv head), each unit's key chunks are cut into contiguous runs, one
    per core, of at least SPLIT_MIN_CHUNKS chunks and enough that the partial a run hands
    back is at most SPLIT_PARTIAL_SHARE of what it reads. Every run but the first stores its
    (m, l, acc) to DRAM and signals the unit's semaphore; the first run's core loads them and
    merges: M = max_p m_p, w_p = exp(m_p - M), l = sum_p w_p l_p, acc = sum_p w_p acc_p,
    then writes acc / l as usual. Partials that do not fit its free SRAM at once (MLA's) are
    loaded in batches into its key/value slots, free by then (_merge_runs).

    The new key and value rows are first copied into the cache, in blocks spread over all
    cores (like vLLM's separate cache-write kernel), converted to the cache's type ``kvdt``
    on the way; a chunk holding any of them waits for every block's store, on whichever core
    it runs.

    *Types.* A cache whose type is not the arrays' weight type (an fp8 cache on bf16 arrays)
    is loaded into raw slots and converted on the vector engine, a chunk ahead: its keys
    before the previous chunk's softmax, its values after that softmax's P (so the score
    product never waits behind a softmax, and the values' conversion behind the previous
    P.V). Queries in another type than the arrays' input type are converted by the scaling
    multiply."""
    cfg = em.cfg
    sa = cfg.cores.systolic
    in_dt, acc = sa.input_dtype, sa.acc_dtype
    kar = sa.weight_dtype           # the K/V slots the arrays read
    conv_kv = kvdt != kar           # the cache's chunks land in raw slots and are converted
    conv_q = act != in_dt           # the query is staged in act and converted by its scaling
    f32 = "fp32"
    g = job.q_heads // job.kv_heads
    sw, vw = job.score_width, job.value_width
    ck = min(sa.rows, sa.cols)
    # query blocks: rows = g heads x qb queries
    # prefill's query blocks stream many chunks each: two score and probability buffers let a
    # chunk's scores be computed while the vector engine works on the previous chunk's softmax
    # (decode's units, a few chunks each, keep one)
    two = job.queries > 1
    per_row = (nbytes(sw, in_dt) + (nbytes(sw, act) if conv_q else 0)
               + (3 if two else 2) * nbytes(ck, f32)
               + (2 if two else 1) * nbytes(ck, in_dt) + nbytes(vw, acc)
               + nbytes(vw, act) + 5 * 4)

    def slots(dt: str, aligned=align) -> int:
        """Two K/V slots (one region: K's, then V's) of ``dt``."""
        return 2 * aligned(nbytes(ck * sw, dt)) + (0 if job.shared_kv
                                                   else 2 * aligned(nbytes(ck * vw, dt)))

    # the K/V slots, then raw ones when the cache's type is converted: free once a run's last
    # chunk is used, where a merge whose partials do not fit the free SRAM at once streams
    # them (_merge_runs)
    kv_slots = slots(kar) + (slots(kvdt) if conv_kv else 0)
    fixed = slots(kar, int) + (slots(kvdt, int) if conv_kv else 0)
    # decode appends one row per sequence and kv head: a block then takes the rows of up to
    # seq_block sequences (one strided copy, at most 16 KiB) instead of one row each, which
    # at batch 256 left 16 dependent copies of 256 B per core before any attention began

    def stage_plan(share: float) -> tuple[int, int, int, int]:
        """(stage rows, rows per append block, sequences per block, the SRAM the stage takes:
        act rows and, when the cache's type differs, their converted copy) with ``share`` of
        the rows the stage would take in act alone."""
        rows = max(1, min(int(64 * share), job.queries))
        seqs = 1 if job.queries > 1 else max(1, min(64, job.batch, int(16384 * share)
                                                     // nbytes(max(sw, vw), act)))
        st = max(rows, seqs)
        return st, rows, seqs, nbytes(st * max(sw, vw), act) + (
            nbytes(st * max(sw, vw), kvdt) if kvdt != act else 0)

    def grouping(r: int) -> tuple[int, int, int]:
        """(head groups, queries per block, query blocks) when a unit takes at most r query
        rows: the g query heads of a kv head go to one unit when they fit, else in head
        groups (the first ones largest, as _shares cuts them)."""
        n_groups = ceil_div(g, min(g, max(r, 1)))
        qb = max(1, min(job.queries, r // ceil_div(g, n_groups)))
        return n_groups, qb, ceil_div(job.queries, qb)

    def unit_passes(r: int) -> int:
        """Head groups x query blocks: how often the keys are streamed."""
        n_groups, _, q_blocks = grouping(r)
        return n_groups * q_blocks

    fixed += 20 * ALIGN
    stage, stage_rows, seq_block, stage_bytes = stage_plan(1.0)
    if kvdt != act:
        # the stage's SRAM is held through the op, so a converted copy can cut the query rows a
        # unit takes: then the stage keeps to the act rows' SRAM (fewer rows, more append
        # blocks). deepseek-v3's prefill-512 on h100-like with an fp8 cache: 7 rows, 19 head
        # groups streaming every chunk, against 15 and 9 (bf16: 23 and 6)
        eb = DTYPES[act].bits
        small = stage_plan(eb / (eb + DTYPES[kvdt].bits))
        if (unit_passes((em.sram_size - fixed - small[3]) // per_row)
                < unit_passes((em.sram_size - fixed - stage_bytes) // per_row)):
            stage, stage_rows, seq_block, stage_bytes = small
    fixed += stage_bytes
    r_max = (em.sram_size - fixed) // per_row
    if r_max < 1:
        raise InputError(f"{cfg.name}: attention {job.name} needs more than "
                         f"cores.sram.size_bytes = {em.sram_size} for one query row")
    n_groups, qb, q_blocks = grouping(r_max)
    heads = _shares(g, n_groups)
    gh = heads[0][1]                    # the most heads in a group

    def key_span(qi: int) -> tuple[int, int, int]:
        """Keys [lo, hi) query block ``qi`` can see, and its chunks of ck keys."""
        q0 = qi * qb
        nq = min(qb, job.queries - q0)
        hi = min(job.keys, job.start + q0 + nq) if job.causal else job.keys
        # the block's first query sees the window's earliest key
        lo = max(0, job.start + q0 - job.window + 1) if job.window else 0
        return lo, hi, ceil_div(hi - lo, ck)

    spans = [key_span(qi) for qi in range(q_blocks)]
    n_base = job.batch * job.kv_heads * len(heads) * q_blocks
    # SRAM the merge needs on the first run's core: m and l of every run, acc of the others
    R = gh * qb
    free = em.sram_size - fixed - per_row * R - 4 * ALIGN

    # a later run's partial, stored and loaded again, against one chunk's keys and values
    one = nbytes(R * vw, acc)
    chunk_kv = nbytes(ck * sw, kvdt) + (0 if job.shared_kv else nbytes(ck * vw, kvdt))
    min_run = max(SPLIT_MIN_CHUNKS, math.ceil(2 * (one + nbytes(2 * R, f32))
                                              / (SPLIT_PARTIAL_SHARE * chunk_kv)))

    def merge_fits(p: int) -> bool:
        """The partials of p runs fit the free SRAM at once."""
        return 2 * nbytes(p * R, f32) + nbytes((p - 1) * R * vw, acc) <= free

    def merge_streams(p: int) -> bool:
        """Their m and l fit the free SRAM and one acc fits the K/V slots."""
        return 2 * nbytes(p * R, f32) <= free and one <= kv_slots

    def parts_of(qi: int) -> int:
        p = min(em.cores // n_base, spans[qi][2] // min_run)
        while p > 1 and not (merge_fits(p) or merge_streams(p)):
            p -= 1
        return max(1, p)

    units = [(b, h, hg, qi, p, n) for b in range(job.batch) for h in range(job.kv_heads)
             for hg in range(len(heads)) for qi in range(q_blocks) for n in [parts_of(qi)]
             for p in range(n)]
    owner_of: dict = {}         # (b, h, hg, qi) -> (unit semaphore, first partial row)
    n_partial = 0
    for b, h, hg, qi, p, n in units:
        if p == 0 and n > 1:
            owner_of[(b, h, hg, qi)] = (em.sem(f"u{b}.{h}.{hg}.{qi}.parts"), n_partial)
            n_partial += n - 1
    # the new key/value rows go to the cache first, in blocks of stage_rows spread over all
    # cores; a chunk holding any of them waits, on any core, for all n_app block stores
    pairs = [(t, c, w) for t, c, w in ((job.k_new, job.cache_k, sw), (job.v_new, job.cache_v, vw))
             if t is not None and c is not None]
    appends = [(b, min(seq_block, job.batch - b), h, pair, a0)
               for b in range(0, job.batch, seq_block) for h in range(job.kv_heads)
               for pair in pairs for a0 in range(0, job.queries, stage_rows)]
    n_app = len(appends)
    appended = em.sem("appended") if n_app else None
    append_runs = split(n_app, em.cores)
    if n_partial:
        part_acc = lay.tensor(f"{job.name}.part_acc", n_partial * R, vw, acc)
        part_ml = lay.tensor(f"{job.name}.part_ml", 2 * n_partial, R, f32)
    mask_tiles: dict = {}
    qrow_bytes = job.q.row_bytes
    scale = 1.0 / math.sqrt(job.qk_dim)
    # cost of a unit: the key chunks it streams, plus its query load and output store
    costs = [ceil_div(spans[qi][2], n) + 1 for _, _, _, qi, _, n in units]
    for core, run in enumerate(balance(costs, em.cores)):
        if len(append_runs[core]):
            _append_rows(em, core, [appends[i] for i in append_runs[core]], job, stage, act,
                         kvdt, appended)
        if not len(run):
            continue
        assert n_partial == 0 or len(run) == 1    # a split leaves one unit per core
        qs = em.alloc(core, nbytes(R * sw, in_dt))
        kbuf = [em.alloc(core, nbytes(ck * sw, kar)) for _ in (0, 1)]
        vbuf = [em.alloc(core, nbytes(ck * vw, kar)) for _ in (0, 1)] if not job.shared_kv \
            else kbuf
        kraw, vraw = kbuf, vbuf
        if conv_kv:
            kraw = [em.alloc(core, nbytes(ck * sw, kvdt)) for _ in (0, 1)]
            vraw = [em.alloc(core, nbytes(ck * vw, kvdt)) for _ in (0, 1)] \
                if not job.shared_kv else kraw
        assert em.sram_top[core] - kbuf[0] == kv_slots      # one region, for _merge_runs
        Sb = [em.alloc(core, nbytes(R * ck, f32)) for _ in range(1 + two)]
        Pb = [em.alloc(core, nbytes(R * ck, in_dt)) for _ in range(1 + two)]
        mk = em.alloc(core, nbytes(R * ck, f32))
        m = [em.alloc(core, nbytes(R, f32) + 64) for _ in (0, 1)]
        mc = em.alloc(core, nbytes(R, f32) + 64)
        al = em.alloc(core, nbytes(R, f32) + 64)
        lsum = em.alloc(core, nbytes(R, f32) + 64)
        lc = em.alloc(core, nbytes(R, f32) + 64)
        accb = em.alloc(core, nbytes(R * vw, acc))
        ob = em.alloc(core, nbytes(R * vw, act))
        # a second query slot where the SRAM has room: the next unit's query then loads
        # while this one computes (decode: one chunk per unit at short contexts, so a
        # query load each unit would otherwise add its whole latency)
        qa_bytes = nbytes(R * sw, act) if conv_q else 0
        qsb = [(qs, em.alloc(core, qa_bytes) if conv_q else qs)]
        if len(run) > 1 and (em.sram_top[core] + align(nbytes(R * sw, in_dt))
                             + (align(qa_bytes) if conv_q else 0) <= em.sram_size):
            q2 = em.alloc(core, nbytes(R * sw, in_dt))
            qsb.append((q2, em.alloc(core, qa_bytes) if conv_q else q2))
        q_free: list = [None] * len(qsb)       # what a query slot's next load waits for
        sem = {n: em.sem(f"c{core}.{n}") for n in
               ("q0", "q1", "qs", "full0", "full1", "sc", "p", "pv", "o", "st", "mk",
                "mkf", "pl")}
        if conv_kv:     # chunks' keys (values) converted into their slots
            sem.update({n: em.sem(f"c{core}.{n}") for n in ("ck", "cv")})
        cnt = dict.fromkeys(sem, 0)
        chunk_no = 0
        rowq, rowqa = nbytes(sw, in_dt), nbytes(sw, act)
        rowS, rowP, rowA = nbytes(ck, f32), nbytes(ck, in_dt), nbytes(vw, acc)
        pending = None      # with two buffers, the previous chunk's P.V: after these scores

        def emit_pv(j, rows, nk, first, P, p_need):
            """acc[rows x vw] (+)= P . V over value-width steps of the array columns, once the
            p semaphore reaches ``p_need`` (P is in) and chunk j's values are converted."""
            vsteps = ceil_div(vw, sa.cols)
            vin = [(sem["cv"], j + 1)] if conv_kv and not job.shared_kv else []
            for t in range(vsteps):
                nn = min(sa.cols, vw - t * sa.cols)
                em.array(core, Op.LDW, vbuf[j % 2] + nbytes(t * sa.cols, kar), 0, 0, nk, nn,
                         nbytes(sw if job.shared_kv else vw, kar), 0, kar,
                         wait=[(sem["p"], p_need)] + vin if t == 0 else [])
                em.array(core, Op.MM, P, accb + nbytes(t * sa.cols, acc), rows, nk, nn, rowP,
                         rowA, in_dt, acc, flags=0 if first else int(Flag.ACCUMULATE),
                         signal=[sem["pv"]] if t == vsteps - 1 else [])
            cnt["pv"] += 1

        # the core's chunks in order, over its units: (first key, keys, first cache row)
        flat = []
        for b, h, hg, qi, part, n_parts in (units[ui] for ui in run):
            lo, hi, n_ch = spans[qi]
            c_first, c_end = _shares(n_ch, n_parts)[part] if n_ch else (0, 0)
            for ci in range(c_first, c_end):
                k0 = lo + ci * ck
                flat.append((k0, min(ck, hi - k0), (b * job.kv_heads + h) * job.positions + k0))
        ready: dict = {}        # chunk -> the (semaphore, count) its score product waits for

        def fetch(j: int) -> None:
            """Load chunk j's keys and values into slot j % 2 (raw slots when converted, then
            its keys' conversion; the values' is emitted by convert_values)."""
            k0, nk, base = flat[j]
            slot = j % 2
            dma = slot % max(1, em.dma)
            free = (sem["ck"] if conv_kv else sem["pv"], j - 1) if j >= 2 else None
            # a chunk holding appended rows waits for every append (made by any core)
            waits = [free, (appended, n_app) if n_app and k0 + nk > job.start else None]
            em.load(core, dma, job.cache_k.at(base), kraw[slot], nk, sw,
                    job.cache_k.row_bytes, nbytes(sw, kvdt), kvdt, wait=waits,
                    signal=[sem[f"full{slot}"]])
            nfill = 1
            if not job.shared_kv:
                em.load(core, dma, job.cache_v.at(base), vraw[slot], nk, vw,
                        job.cache_v.row_bytes, nbytes(vw, kvdt), kvdt,
                        wait=[(sem["cv"], j - 1) if conv_kv and j >= 2 else None],
                        signal=[sem[f"full{slot}"]])
                nfill = 2
            cnt[f"full{slot}"] += nfill
            if not conv_kv:
                ready[j] = (sem[f"full{slot}"], cnt[f"full{slot}"])
                return
            # the keys' slot is free once chunk j - 2's score product has read it (and its P.V,
            # when the values are the keys)
            em.vop(core, VecOp.CONVERT, kraw[slot], kbuf[slot], nk, sw, nbytes(sw, kvdt),
                   nbytes(sw, kar), kvdt, kar,
                   wait=[(sem[f"full{slot}"], cnt[f"full{slot}"]),
                         (sem["pv" if job.shared_kv else "sc"], j - 1) if j >= 2 else None],
                   signal=[sem["ck"]])
            ready[j] = (sem["ck"], j + 1)

        def convert_values(j: int) -> None:
            """Chunk j's values into their slot, once chunk j - 2's P.V has read it."""
            if conv_kv and not job.shared_kv and j < len(flat):
                slot = j % 2
                em.vop(core, VecOp.CONVERT, vraw[slot], vbuf[slot], flat[j][1], vw,
                       nbytes(vw, kvdt), nbytes(vw, kar), kvdt, kar,
                       wait=[(sem["pv"], j - 1) if j >= 2 else None], signal=[sem["cv"]])

        for u, ui in enumerate(run):
            b, h, hg, qi, part, n_parts = units[ui]
            qslot = u % len(qsb)
            (qs, qa), qsem = qsb[qslot], f"q{qslot}"
            q0 = qi * qb
            nq = min(qb, job.queries - q0)
            h0, h1 = heads[hg]                  # query heads h0..h1-1 of kv head h
            nh = h1 - h0
            rows = nh * nq
            # the query block: nh heads x nq queries, scaled by 1/sqrt(d) (and converted)
            qsrc = job.q.at(b * job.queries + q0, (h * g + h0) * sw)
            em.load(core, 0, qsrc, qa, nq, sw, qrow_bytes, rowqa, act, heads=nh,
                    src_head=nbytes(sw, act), dst_head=nq * rowqa,
                    wait=[q_free[qslot]], signal=[sem[qsem]])
            cnt[qsem] += 1
            em.vop(core, VecOp.MUL, qa, qs, rows, sw, rowqa, rowq, act, in_dt if conv_q else None,
                   flags=Flag.BCAST_IMM, imm=scale, wait=[(sem[qsem], cnt[qsem])],
                   signal=[sem["qs"]])
            cnt["qs"] += 1
            # keys this block (this run of it) can see, one chunk at a time (the cache must
            # hold the appended rows first)
            lo, hi, n_ch = spans[qi]
            c_first, c_end = _shares(n_ch, n_parts)[part] if n_ch else (0, 0)
            for ci in range(c_first, c_end):
                k0, nk, _ = flat[chunk_no]
                slot = chunk_no % 2
                dma = slot % max(1, em.dma)
                if not conv_kv or chunk_no == 0:   # converted chunks are fetched a chunk ahead
                    fetch(chunk_no)
                    if chunk_no == 0:
                        convert_values(0)
                # causal mask for chunks that cross the diagonal
                need_mask = job.causal and k0 + nk - 1 > job.start + q0
                if job.window:
                    need_mask = need_mask or k0 < job.start + q0 + nq - job.window
                if need_mask:
                    key = (q0, nq, k0, nk, nh)
                    if key not in mask_tiles:
                        pos_q = job.start + q0 + np.arange(nq)
                        pos_k = k0 + np.arange(nk)
                        ok = pos_k[None, :] <= pos_q[:, None]
                        if job.window:
                            ok &= pos_k[None, :] > pos_q[:, None] - job.window
                        t = lay.tensor(f"{job.name}.mask{len(mask_tiles)}", rows, nk, f32)
                        lay.values[t.name] = np.tile(np.where(ok, 0.0, NEG), (nh, 1))
                        mask_tiles[key] = t
                    mt = mask_tiles[key]
                    em.load(core, dma, mt.addr, mk, rows, nk, mt.row_bytes, rowS, f32,
                            wait=[(sem["mkf"], cnt["mk"]) if cnt["mk"] else None],
                            signal=[sem["mk"]])
                    cnt["mk"] += 1
                # scores S[rows x nk] = q . K^T over score-width steps of the array rows, into
                # the buffer whose last softmax has finished with it (its P is converted)
                S, P = Sb[chunk_no % len(Sb)], Pb[chunk_no % len(Pb)]
                steps = ceil_div(sw, sa.rows)
                for t in range(steps):
                    kk = min(sa.rows, sw - t * sa.rows)
                    w = [ready[chunk_no]] if t == 0 else []
                    if t == 0:
                        w.append((sem["p"], cnt["p"] + 1 - len(Sb)) if cnt["p"] >= len(Sb)
                                 else None)
                    em.array(core, Op.LDW, kbuf[slot] + nbytes(t * sa.rows, kar), 0, 0, kk,
                             nk, nbytes(sw, kar), 0, kar, flags=Flag.TRANSPOSE, wait=w)
                    em.array(core, Op.MM, qs + nbytes(t * sa.rows, in_dt), S, rows, kk, nk,
                             rowq, rowS, in_dt, acc, flags=0 if t == 0 else Flag.ACCUMULATE,
                             wait=[(sem["qs"], cnt["qs"])] if t == 0 and ci == c_first else [],
                             signal=[sem["sc"]] if t == steps - 1 else [])  # (scaled query in)
                cnt["sc"] += 1
                if pending:
                    emit_pv(*pending)
                    pending = None
                if conv_kv and chunk_no + 1 < len(flat):
                    fetch(chunk_no + 1)         # its keys convert before this softmax
                first = ci == c_first
                cur, prev = m[chunk_no % 2], m[(chunk_no + 1) % 2]
                vw_ = [(sem["sc"], cnt["sc"])]
                if need_mask:
                    vw_.append((sem["mk"], cnt["mk"]))
                    em.vop(core, VecOp.ADD, S, S, rows, nk, rowS, rowS, f32, src2=mk,
                           src2_row=rowS, wait=vw_, signal=[sem["mkf"]])
                    vw_ = []
                if first:
                    em.vop(core, VecOp.REDUCE_MAX, S, cur, rows, nk, rowS, 4, f32, wait=vw_)
                else:
                    em.vop(core, VecOp.REDUCE_MAX, S, mc, rows, nk, rowS, 4, f32, wait=vw_)
                    em.vop(core, VecOp.MAX, prev, cur, rows, 1, 4, 4, f32, src2=mc, src2_row=4)
                    em.vop(core, VecOp.SUB, prev, al, rows, 1, 4, 4, f32, src2=cur, src2_row=4)
                    em.vop(core, VecOp.EXP, al, al, rows, 1, 4, 4, f32)
                em.vop(core, VecOp.SUB, S, S, rows, nk, rowS, rowS, f32, src2=cur,
                       flags=Flag.BCAST_ROW)
                em.vop(core, VecOp.EXP, S, S, rows, nk, rowS, rowS, f32)
                em.vop(core, VecOp.REDUCE_SUM, S, lsum if first else lc, rows, nk, rowS, 4, f32)
                if not first:
                    em.vop(core, VecOp.MUL, lsum, lsum, rows, 1, 4, 4, f32, src2=al, src2_row=4)
                    em.vop(core, VecOp.ADD, lsum, lsum, rows, 1, 4, 4, f32, src2=lc, src2_row=4)
                    em.vop(core, VecOp.MUL, accb, accb, rows, vw, rowA, rowA, f32, src2=al,
                           flags=Flag.BCAST_ROW, wait=[(sem["pv"], cnt["pv"])])
                # P goes where chunk - 2's P.V has finished reading (two buffers; with one,
                # the previous P.V came before this chunk's scores)
                em.vop(core, VecOp.CONVERT, S, P, rows, nk, rowS, rowP, f32, in_dt,
                       wait=[(sem["pv"], chunk_no - 1) if two and chunk_no >= 2 else None],
                       signal=[sem["p"]])
                cnt["p"] += 1
                convert_values(chunk_no + 1)    # (after this P: its P.V comes first)
                if two:
                    pending = (chunk_no, rows, nk, first, P, cnt["p"])
                else:
                    emit_pv(chunk_no, rows, nk, first, P, cnt["p"])
                chunk_no += 1
            if pending:
                emit_pv(*pending)
                pending = None
            # the slot is free once the last score product has read it (or, without keys,
            # once it is scaled)
            q_free[qslot] = (sem["sc"], cnt["sc"]) if c_end > c_first else (sem["qs"],
                                                                            cnt["qs"])
            if n_parts > 1:
                usem, row0 = owner_of[(b, h, hg, qi)]
                done = (sem["pv"], cnt["pv"])   # the run's last P.V (after its m and l)
                if part:                        # a later run: its (m, l, acc) to DRAM
                    j = row0 + part - 1
                    for src, dst, n_el, dt in ((cur, part_ml.at(2 * j), rows, f32),
                                               (lsum, part_ml.at(2 * j + 1), rows, f32),
                                               (accb, part_acc.at(j * R), rows * vw, acc)):
                        em.store(core, em.dma - 1, src, dst, 1, n_el, 0, 0, dt, wait=[done],
                                 signal=[usem])
                    continue
                _merge_runs(em, core, n_parts, rows, vw, acc, cur, lsum, accb, mc,
                            (part_ml, part_acc, row0, R), (usem, 3 * (n_parts - 1)),
                            [done], sem["pl"],
                            None if merge_fits(n_parts) else (kbuf[0], kv_slots))
            # out = acc / l, stored per head
            em.vop(core, VecOp.RECIP, lsum, lsum, rows, 1, 4, 4, f32, wait=[(sem["pv"], cnt["pv"]),
                   (sem["st"], cnt["st"]) if cnt["st"] else None])
            em.vop(core, VecOp.MUL, accb, ob, rows, vw, rowA, nbytes(vw, act), f32, act,
                   src2=lsum, flags=Flag.BCAST_ROW, signal=[sem["o"]])
            cnt["o"] += 1
            dst = job.out.at(b * job.queries + q0, (h * g + h0) * vw)
            em.store(core, em.dma - 1, ob, dst, nq, vw, nbytes(vw, act), job.out.row_bytes, act,
                     heads=nh, src_head=nq * nbytes(vw, act), dst_head=nbytes(vw, act),
                     wait=[(sem["o"], cnt["o"])], signal=[sem["st"]])
            cnt["st"] += 1


def _append_rows(em, core, blocks, job, stage_rows, act, kvdt, appended) -> None:
    """Copy ``blocks`` (first sequence, sequences, kv head, (new rows, cache, width), first
    row) of the new keys/values into the cache through one stage buffer of ``stage_rows``
    rows (sequences x rows), converted from ``act`` to the cache's ``kvdt`` in a second one
    when they differ; each store signals ``appended``. The stores are not the op's final
    ones: a chunk that reads the rows waits for all of them, and feeds one."""
    stage_width = max(pair[2] for _, _, _, pair, _ in blocks)
    stage = em.alloc(core, nbytes(stage_rows * stage_width, act))
    ld, st = em.sem(f"c{core}.app"), em.sem(f"c{core}.appst")
    conv = kvdt != act
    if conv:
        stage_kv = em.alloc(core, nbytes(stage_rows * stage_width, kvdt))
        cv = em.sem(f"c{core}.appcv")
    for n, (b, nb, h, (t_new, cache, width), a0) in enumerate(blocks):
        na = min(stage_rows // nb, job.queries - a0)
        rowb = nbytes(width, act)
        # the stage is free once its rows are stored (converted, when they are)
        em.load(core, 0, t_new.at(b * job.queries + a0, h * width), stage, na, width,
                t_new.row_bytes, rowb, act, wait=[(cv if conv else st, n) if n else None],
                signal=[ld], heads=nb, src_head=job.queries * t_new.row_bytes,
                dst_head=na * rowb)
        src, rowk, ready = stage, rowb, (ld, n + 1)
        if conv:
            src, rowk, ready = stage_kv, nbytes(width, kvdt), (cv, n + 1)
            em.vop(core, VecOp.CONVERT, stage, stage_kv, nb * na, width, rowb, rowk, act, kvdt,
                   wait=[(ld, n + 1), (st, n) if n else None], signal=[cv])
        em.store(core, em.dma - 1, src, cache.at((b * job.kv_heads + h) * job.positions
                                                 + job.start + a0),
                 na, width, rowk, cache.row_bytes, kvdt, wait=[ready],
                 signal=[st, appended], final=False, heads=nb, src_head=na * rowk,
                 dst_head=job.kv_heads * job.positions * cache.row_bytes)


def _merge_runs(em, core, n, rows, vw, acc, m_own, l_own, acc_own, m_max, dram, ready, wait,
                pl_sem, stream=None) -> None:
    """The first run of a split attention unit merges the other n - 1 runs' (m, l, acc)
    (emit_attention, *Split-K*) into its own ``l_own`` and ``acc_own``, which then hold
    sum_p w_p l_p and sum_p w_p acc_p with w_p = exp(m_p - max_p m_p). ``dram`` is (part_ml,
    part_acc, first partial row, rows per partial); ``ready`` the (semaphore, count) the runs'
    stores reach; ``wait`` the first run's own last P.V. Uses ``m_max`` (rows values) as
    scratch for the max. With ``stream`` = (address, bytes) of SRAM this run no longer uses
    (its K/V slots), the partial accs are loaded there as many at a time as fit, each batch
    once the previous one is added (the same sums in the same order)."""
    f32 = "fp32"
    part_ml, part_acc, row0, R = dram
    e = nbytes(rows, f32)                       # one run's m (or l) row
    one = nbytes(rows * vw, acc)                # one run's acc
    ml = em.alloc(core, nbytes(2 * n * R, f32))    # rows 2p, 2p + 1: m_p, l_p (run 0: own)
    em.load(core, 0, part_ml.at(2 * row0), ml + 2 * e, 2 * (n - 1), rows, part_ml.row_bytes,
            e, f32, wait=[ready], signal=[pl_sem])
    if stream is None:
        accs, per = em.alloc(core, nbytes((n - 1) * R * vw, acc)), n - 1
    else:
        accs, per = stream[0], stream[1] // one
    batches = [(p, min(p + per, n)) for p in range(1, n, per)]
    merged = em.sem(f"c{core}.merged") if len(batches) > 1 else None

    def load_batch(j: int) -> None:
        """Batch j goes where batch j - 1 was once it is added; the first into the K/V slots
        once the run's own last P.V has read them."""
        p0, p1 = batches[j]
        if j:
            free_dst = (merged, j)
        else:
            free_dst = wait[0] if stream is not None else None
        em.load(core, 0, part_acc.at((row0 + p0 - 1) * R), accs, p1 - p0, rows * vw,
                part_acc.row_bytes * R, one, acc, wait=[ready, free_dst], signal=[pl_sem])

    load_batch(0)
    em.vop(core, VecOp.COPY, m_own, ml, 1, rows, e, e, f32, wait=wait + [(pl_sem, 2)])
    em.vop(core, VecOp.COPY, l_own, ml + e, 1, rows, e, e, f32)
    em.vop(core, VecOp.MAX, ml, m_max, 1, rows, e, e, f32, src2=ml + 2 * e)
    for p in range(2, n):
        em.vop(core, VecOp.MAX, m_max, m_max, 1, rows, e, e, f32, src2=ml + 2 * p * e)
    # w_p = exp(m_p - M) over the m rows (every other row of ml), then l_p *= w_p
    em.vop(core, VecOp.SUB, ml, ml, n, rows, 2 * e, 2 * e, f32, src2=m_max, flags=Flag.BCAST_COL)
    em.vop(core, VecOp.EXP, ml, ml, n, rows, 2 * e, 2 * e, f32)
    em.vop(core, VecOp.MUL, ml + e, ml + e, n, rows, 2 * e, 2 * e, f32, src2=ml, src2_row=2 * e)
    em.vop(core, VecOp.ADD, ml + e, l_own, 1, rows, e, e, f32, src2=ml + 3 * e)
    for p in range(2, n):
        em.vop(core, VecOp.ADD, l_own, l_own, 1, rows, e, e, f32, src2=ml + (2 * p + 1) * e)
    # acc = sum_p w_p acc_p: scale each run's rows by its weights, then add them up
    a_row = nbytes(vw, acc)
    em.vop(core, VecOp.MUL, acc_own, acc_own, rows, vw, a_row, a_row, f32, src2=ml,
           flags=Flag.BCAST_ROW)
    for j, (p0, p1) in enumerate(batches):
        if j:
            load_batch(j)
        for p in range(p0, p1):
            blk = accs + (p - p0) * one
            em.vop(core, VecOp.MUL, blk, blk, rows, vw, a_row, a_row, f32, src2=ml + 2 * p * e,
                   flags=Flag.BCAST_ROW, wait=[(pl_sem, 2 + j)] if j and p == p0 else ())
            more = p == p1 - 1 and j < len(batches) - 1      # another batch comes here
            em.vop(core, VecOp.ADD, acc_own, acc_own, rows, vw, a_row, a_row, f32, src2=blk,
                   src2_row=a_row, signal=[merged] if more else [])


# ============================================================================================
# Embedding and top-k
# ============================================================================================


def emit_embedding(em: Emitter, table: Tensor, x: Tensor, tokens: np.ndarray, act: str,
                   pos_table: Tensor | None = None, positions=None) -> None:
    """x[t] = table[tokens[t]] (+ pos_table[positions[t]], learned positions): row gathers
    into SRAM, an add of the gathered position rows, then one store per block."""
    dim = x.cols
    row = nbytes(dim, act)
    rb, blocks = _row_plan(em, len(tokens), row * (2 if pos_table else 1), 1)
    for core, run in enumerate(split(len(blocks), em.cores)):
        if not len(run):
            continue
        buf = em.alloc(core, rb * row)
        pbuf = em.alloc(core, rb * row) if pos_table else None
        ld = em.sem(f"c{core}.ld")
        st = em.sem(f"c{core}.st")
        vd = em.sem(f"c{core}.vd") if pos_table else None
        engines = max(1, em.dma - 1)
        nld = 0
        for i, bi in enumerate(run):
            r0, nr = blocks[bi]
            # a block's first load on each engine waits for the previous block's store,
            # which read the buffers it overwrites
            for r in range(nr):
                em.load(core, r % engines, table.at(int(tokens[r0 + r])),
                        buf + r * row, 1, dim, 0, 0, act,
                        wait=[(st, i) if i and r < engines else None], signal=[ld])
                nld += 1
            if pos_table is not None:
                # runs of consecutive positions (a prompt's) are one strided load each
                p = [int(v) for v in positions[r0:r0 + nr]]
                r = 0
                while r < nr:
                    e = r + 1
                    while e < nr and p[e] == p[e - 1] + 1:
                        e += 1
                    em.load(core, r % engines, pos_table.at(p[r]), pbuf + r * row,
                            e - r, dim, pos_table.row_bytes, row, act,
                            wait=[(st, i) if i else None], signal=[ld])
                    nld += 1
                    r = e
                em.vop(core, VecOp.ADD, buf, buf, nr, dim, row, row, act, src2=pbuf,
                       src2_row=row, wait=[(ld, nld)], signal=[vd])
                wait = [(vd, i + 1)]
            else:
                wait = [(ld, nld)]
            em.store(core, em.dma - 1, buf, x.at(r0), nr, dim, row, x.row_bytes, act,
                     wait=wait, signal=[st])


def emit_topk(em: Emitter, scores: Tensor, out: Tensor, rows: int, experts: int, top_k: int,
              act: str) -> None:
    """Timing of top-k selection: ``top_k`` max-reductions over each row of router scores,
    each followed by masking the winner (a subtract); the result row is stored."""
    f32 = "fp32"
    rb, blocks = _row_plan(em, rows, nbytes(experts, f32) * 2, 1)
    for core, run in enumerate(split(len(blocks), em.cores)):
        if not len(run):
            continue
        sb = em.alloc(core, nbytes(rb * experts, act))
        mx = em.alloc(core, nbytes(rb * top_k, f32) + 64)
        ld = em.sem(f"c{core}.ld")
        vd = em.sem(f"c{core}.vd")
        st = em.sem(f"c{core}.st")
        for i, bi in enumerate(run):
            r0, nr = blocks[bi]
            em.load(core, 0, scores.at(r0), sb, nr, experts, scores.row_bytes,
                    nbytes(experts, act), act, wait=[(st, i) if i else None], signal=[ld])
            rowb = nbytes(experts, act)
            for t in range(top_k):
                em.vop(core, VecOp.REDUCE_MAX, sb, mx + 4 * t, nr, experts, rowb, 4 * top_k, act,
                       f32, wait=[(ld, i + 1)] if t == 0 else ())
                em.vop(core, VecOp.SUB, sb, sb, nr, experts, rowb, rowb, act,
                       src2=mx + 4 * t, flags=Flag.BCAST_ROW,
                       signal=[vd] if t == top_k - 1 else ())
            em.store(core, em.dma - 1, mx, out.at(r0), nr, top_k, 4 * top_k, out.row_bytes, f32,
                     wait=[(vd, i + 1)], signal=[st])


# ============================================================================================
# A list of graph nodes -> one program
# ============================================================================================


@dataclass
class Compiled:
    """A program, the op each instruction belongs to, and the DRAM image description."""

    program: Program
    tags: np.ndarray            # op index per instruction
    ops: list                   # op names, in order
    layout: Layout
    fused: dict = field(default_factory=dict)   # fused op name -> the graph nodes it runs


FUSED = {"q": ("qkv", ("q", "k", "v")), "gate": ("gate_up", ("gate", "up")),
         "q_a": ("qkv_a", ("q_a", "kv_a"))}
"""Projections that read the same input (the normed hidden state) and are emitted as one
matmul, the way serving stacks run them (vLLM's QKVParallelLinear and
MergedColumnParallelLinear; SGLang fuses MLA's q_a and kv_a): the op's name and the nodes it
takes, in order. One op instead of two or three saves each op's fill and drain (the first
weights landing, the last tile's store) and fills more cores; batch-1 decode on h100-like:
llama-3-8b q, k, v 25.0 + 10.0 + 10.0 K cycles alone, qkv 37.8 K; gate and up 81.3 K each,
gate_up 154.4 K; deepseek-v3 q_a and kv_a 20.9 + 14.6 K, qkv_a 26.6 K (measured 2026-12-03)."""

_OUTPUT = {"q_a": "qa", "kv_a": "kva"}
"""compile_nodes' output tensor of a projection, where it is not the node's short name."""


def _fusion(nodes: list, i: int, index: dict, cfg: ChipConfig, act: str, wdt: str,
            only) -> tuple:
    """(fused op name, its nodes, the fused matmul's plan) when ``nodes[i]`` starts a fused
    projection (:data:`FUSED`), else None: the parts must come in order in ``nodes`` (``index``:
    name -> position) with nothing between them that rewrites their input (a norm into the
    hidden state; MLA's q_a_norm and q_b write other tensors), be plain matmuls of one input
    shape, all with a bias or none (the fused bias is theirs end to end), and the fused plan's
    n-tiles must not straddle two parts."""
    node = nodes[i]
    prefix, _, short = node["name"].rpartition(".")
    if node["kind"] != "matmul" or short not in FUSED:
        return None
    fused, want = FUSED[short]
    at = [index.get(f"{prefix}.{sh}", -1) for sh in want]
    if at != sorted(at) or at[0] != i:
        return None
    parts = [nodes[j] for j in at]
    if (any(nd["kind"] == "norm" and nd["name"].rpartition(".")[2] not in
            ("q_a_norm", "kv_a_norm") for nd in nodes[i:at[-1]])
            or any(nd["kind"] != "matmul" or nd.get("count", 1) != 1
                   or (nd["m"], nd["k"]) != (node["m"], node["k"]) for nd in parts)
            or len({bool(nd.get("bias")) for nd in parts}) > 1):
        return None
    sa = cfg.cores.systolic
    plan = plan_matmul(node["m"], node["k"], sum(nd["n"] for nd in parts), 1, cfg,
                       in_dt=sa.input_dtype, w_dt=wdt, act_dt=act, only=only,
                       bias=bool(node.get("bias")))
    if any(nd["n"] % plan.w for nd in parts[:-1]):
        return None
    return f"{prefix}.{fused}", parts, plan


def _positions(phase: str, batch: int, context: int) -> np.ndarray:
    if phase == "prefill":
        return np.tile(np.arange(context), batch)
    return np.full(batch, context)


def compile_nodes(spec, nodes: list, cfg: ChipConfig, phase: str, batch: int, context: int, *,
                  tokens: np.ndarray | None = None, weights: dict | None = None,
                  kv_cache: list | None = None, name: str = "step",
                  matmul_only: dict | None = None) -> Compiled:
    """Tile program for graph ``nodes`` (dicts of graph.py attributes, in execution order).

    ``weights`` (name -> float array, the convention of the tests' reference model) makes the
    layout carry their values for a functional run; ``kv_cache`` (per layer (K, V) of shape
    [B, KV, S, hd]; MLA: (latent [B, 1, S, kv_lora + rope], None)) fills the caches for a
    functional decode step. ``matmul_only`` (MatmulPlan
    field -> value, e.g. ``{"gm": 1, "gn": 1}`` for no multicast) limits every matmul's plan
    search to plans with those values."""
    em = Emitter(cfg, name)
    em.matmul_only = matmul_only
    lay = Layout()
    act, wdt, kvdt = spec.act_dtype, spec.weight_dtype, spec.kv_dtype
    T = batch * context if phase == "prefill" else batch
    queries = context if phase == "prefill" else 1
    keys = context if phase == "prefill" else context + 1
    positions = keys
    d = spec.d_model
    pos = _positions(phase, batch, context)
    if tokens is None:
        tokens = np.arange(T) % spec.vocab_size
    tokens = np.asarray(tokens).reshape(-1)
    mla = spec.attention == "mla"
    H, KV = spec.n_heads, spec.n_kv_heads
    hd = spec.head_dim

    def t(name, rows, cols, dt=act):
        return lay.tensor(name, rows, cols, dt)

    x = t("x", T, d)
    hbuf = t("h", T, d)
    fused: dict = {}
    ran = set()                          # nodes a fused op has run already
    index = {nd["name"]: j for j, nd in enumerate(nodes)}
    if weights is not None:
        weights = dict(weights)          # fused weights join the caller's, not in its dict
    for i, node in enumerate(nodes):
        if node["name"] in ran:
            continue
        kind, nm, L = node["kind"], node["name"], node["layer"]
        fusion = _fusion(nodes, i, index, cfg, act, wdt, matmul_only)
        if fusion:
            fname, parts, plan = fusion
            fused[fname] = [nd["name"] for nd in parts]
            em.begin(fname)
            if weights is not None:
                weights[fname] = np.concatenate([np.asarray(weights[nd["weight"]])
                                                 for nd in parts], axis=1)
            ys, c0 = [], 0
            for nd in parts:
                short = nd["name"].rpartition(".")[2]
                ys.append((c0, t(_OUTPUT.get(short, short), T, nd["n"])))
                c0 += nd["n"]
            bias = t(f"{fname}.bias", 1, c0) if node.get("bias") else None
            if bias is not None and weights is not None:
                lay.values[bias.name] = np.concatenate(
                    [np.asarray(weights[nd["weight"] + ".bias"]).reshape(-1)
                     for nd in parts]).reshape(1, -1)
            emit_matmul(em, lay, MatmulJob(fname, node["m"], node["k"], c0, 1, hbuf, ys[0][1],
                                           fname, y_parts=ys, bias=bias), wdt, act, weights,
                        plan)
            ran.update(fused[fname])
            continue
        em.begin(nm)
        wname = node.get("weight")

        def mm(xt, yt, w_name, **kw):
            if node.get("bias"):
                kw["bias"] = t(f"{w_name}.bias", 1, node["n"])
                if weights is not None:
                    lay.values[kw["bias"].name] = np.asarray(
                        weights[kw["bias"].name]).reshape(1, -1)
            job = MatmulJob(nm, node["m"], node["k"], node["n"], node.get("count", 1), xt, yt,
                            w_name, **kw)
            emit_matmul(em, lay, job, wdt, act, weights)

        if kind == "embedding":
            table = t("embed", spec.vocab_size, d)
            if weights is not None:
                lay.values["embed"] = np.asarray(weights["embed"])
            pos_table = None
            if node["learned_positions"]:
                pos_table = t("pos_embed", spec.max_context, d)
                if weights is not None:
                    lay.values["pos_embed"] = np.asarray(weights["pos_embed"])
            emit_embedding(em, table, x, tokens, act, pos_table, pos)
        elif kind == "norm":
            short = nm.split(".")[-1]
            if short == "final_norm" or nm == "final_norm":
                rows = node["rows"]
                src, step, row0 = x, (context if phase == "prefill" else 1), \
                    (context - 1 if phase == "prefill" else 0)
                dst = t("xf", rows, d)
                emit_norm(em, lay, src, dst, rows, d, node["norm"], node["eps"], nm,
                          f"{nm}.bias" if node["norm"] == "layer" else None, act, weights,
                          x_row0=row0, x_row_step=step)
            elif short in ("q_a_norm", "kv_a_norm"):
                src = t("qa", T, spec.q_lora_rank) if short == "q_a_norm" else \
                    t("kva", T, spec.kv_lora_rank + spec.qk_rope_head_dim)
                emit_norm(em, lay, src, src, T, node["dim"], node["norm"], node["eps"], nm, None,
                          act, weights)
            else:
                emit_norm(em, lay, x, hbuf, T, d, node["norm"], node["eps"], nm,
                          f"{nm}.bias" if node["norm"] == "layer" else None, act, weights)
        elif kind in ("matmul", "router", "lm_head"):
            short = nm.split(".")[-1]
            n = node["n"]
            if kind == "lm_head":
                if node.get("tied") and weights is not None and "embed.T" not in weights:
                    weights["embed.T"] = np.asarray(weights["embed"]).T
                mm(t("xf", node["m"], d), t("logits", node["m"], n), "lm_head" if not node.get(
                    "tied") else "embed.T")
            elif kind == "router":
                mm(hbuf, t("rs", T, n), wname)
            elif short in ("q", "k", "v"):
                mm(hbuf, t(short, T, n), wname)
            elif short == "o":
                mm(t("attn", T, node["k"]), t("o", T, d), wname)
            elif short in ("gate", "up"):
                mm(hbuf, t(short, T, n), wname)
            elif short == "down":
                mm(t("a", T, node["k"]), t("f", T, d), wname)
            elif short == "q_a":
                mm(hbuf, t("qa", T, n), wname)
            elif short == "q_b":
                mm(t("qa", T, node["k"]), t("qb", T, n), wname)
            elif short == "kv_a":
                mm(hbuf, t("kva", T, n), wname)
            elif short == "k_up":
                nope, r, rope = spec.qk_nope_head_dim, spec.kv_lora_rank, spec.qk_rope_head_dim
                qb_t = t("qb", T, H * (nope + rope))
                qm = t("qm", T, H * (r + rope))
                mm(qb_t, qm, wname, x_col=[h * (nope + rope) for h in range(H)],
                   y_col=[h * (r + rope) for h in range(H)])
            elif short == "v_up":
                r, v = spec.kv_lora_rank, spec.v_head_dim
                mm(t("lat", T, H * r), t("attn", T, H * v), wname,
                   x_col=[h * r for h in range(H)], y_col=[h * v for h in range(H)])
            else:
                raise ValueError(f"codegen: no rule for matmul {nm}")
        elif kind == "rope":
            if mla:
                nope, r, rope = spec.qk_nope_head_dim, spec.kv_lora_rank, spec.qk_rope_head_dim
                parts = [(t("qb", T, H * (nope + rope)), H, nope + rope, nope,
                          (t("qm", T, H * (r + rope)), r + rope, r)),
                         (t("kva", T, r + rope), 1, r + rope, r)]
            else:
                parts = [(t("q", T, H * hd), H, hd, 0), (t("k", T, KV * hd), KV, hd, 0)]
            emit_rope(em, lay, parts, T, node["rot_dim"], pos, node["theta"], act, nm)
        elif kind == "attention":
            sw, vw = node["score_width"], node["value_width"]
            kvh = node["kv_heads"]
            ck_name, cv_name = f"layer{L}.cache_k", f"layer{L}.cache_v"
            cache_k = t(ck_name, batch * kvh * positions, sw, kvdt)
            cache_v = None if mla else t(cv_name, batch * kvh * positions, vw, kvdt)
            if kv_cache is not None and phase == "decode":
                kc, vc = kv_cache[L]            # MLA: (latent [B, 1, S, r + rope], None)
                full_k = np.zeros((batch, kvh, positions, sw))
                full_k[:, :, :context] = kc
                lay.values[ck_name] = full_k.reshape(-1, sw)
                if not mla:
                    full_v = np.zeros((batch, kvh, positions, vw))
                    full_v[:, :, :context] = vc
                    lay.values[cv_name] = full_v.reshape(-1, vw)
            if mla:
                job = AttnJob(nm, batch, node["q_heads"], kvh, queries, keys,
                              0 if phase == "prefill" else context, phase == "prefill", sw, vw,
                              True, t("qm", T, H * sw), t("kva", T, sw), None,
                              t("lat", T, H * vw), cache_k, None, positions, spec.head_dim,
                              node["window"])
            else:
                job = AttnJob(nm, batch, node["q_heads"], kvh, queries, keys,
                              0 if phase == "prefill" else context, phase == "prefill", sw, vw,
                              False, t("q", T, H * hd), t("k", T, KV * hd), t("v", T, KV * hd),
                              t("attn", T, H * hd), cache_k, cache_v, positions, hd,
                              node["window"])
            emit_attention(em, lay, job, act, kvdt)
        elif kind == "residual_add":
            src = t("o", T, d) if nm.endswith("attn_residual") else t("f", T, d)
            emit_binary(em, x, src, x, T, d, "add", act)
        elif kind == "activation":
            width = spec.ffn_dim
            if node["fn"] == "silu_mul":
                emit_binary(em, t("gate", T, width), t("up", T, width), t("a", T, width), T,
                            width, "silu_mul", act)
            else:
                emit_binary(em, t("up", T, width), t("up", T, width), t("a", T, width), T, width,
                            "gelu", act)
        elif kind == "topk":
            emit_topk(em, t("rs", T, node["experts"]), t("tk", T, node["top_k"], "fp32"), T,
                      node["experts"], node["top_k"], act)
        elif kind == "moe_experts":
            _emit_experts(em, lay, node, spec, T, hbuf, wdt, act, weights)
        else:
            raise ValueError(f"codegen: no rule for op kind {kind}")
    if cfg.memory is not None and lay.top > (cap := dram.capacity_bytes(cfg.memory)):
        raise InputError(
            f"{cfg.name}: program {name!r} ({spec.name} {phase}, batch {batch}, context "
            f"{context}) lays out {lay.top / 2**20:,.1f} MiB in DRAM (its weights, KV cache and "
            f"activations), more than memory.capacity_bytes ({format_size(cap)}): lower the "
            "batch or the context, or raise memory.capacity_bytes in a copy of the chip file")
    for tn in lay.tensors.values():
        em.b.buffer(tn.name, "dram", tn.addr, tn.dtype, (tn.rows, tn.cols))
    prog, tags = em.build()
    return Compiled(prog, tags, list(em.ops), lay, fused)


def _emit_experts(em, lay, node, spec, T, hbuf, wdt, act, weights) -> None:
    """A MoE layer after its router and top-k: each routed expert's tokens gathered into one
    block of rows (``dispatch``; which tokens: graph.expert_assignment), the gate weights of
    every token's experts from the router's scores (``gates``), per group of experts with the
    same token count gate/up, the activation and down as batched matmuls (the shared experts
    read every token's row as it is), then every token's expert rows weighted and summed with
    its shared experts' rows (``combine``). With ``weights``, each group's matrices are the
    stack of its experts' ``layerI.expert{e}.*`` (``layerI.shared{j}.*``)."""
    d, width, k = node["d_model"], node["width"], node["top_k"]
    if weights is not None and node["bias"]:
        raise InputError(f"{spec.name}: {node['name']}: expert biases (mlp_bias with "
                         "experts) are counted but not computed; a functional run needs a "
                         "model without them")
    groups: dict[int, list[int]] = {}
    for e, n_tok in enumerate(node["tokens_per_expert"]):
        if n_tok:
            groups.setdefault(n_tok, []).append(e)
    if node["shared_experts"]:
        groups.setdefault(-T, []).extend(range(node["shared_experts"]))
    nm = node["name"]
    # the expert-major row layout every expert tensor shares: groups by token count, the
    # shared experts (all T tokens) first, each expert's rows one after another
    layout = []                                   # (tag, rows each, experts, first rows)
    row = 0
    for n_tok, experts in sorted(groups.items()):
        m = abs(n_tok)
        layout.append(("shared" if n_tok < 0 else "routed", m, experts,
                       [row + i * m for i in range(len(experts))]))
        row += m * len(experts)
    total = row
    first = {(tag, e): r for tag, _, experts, rows in layout for e, r in zip(experts, rows)}
    active = node["active_experts"]
    assign = expert_assignment(T, k, active)
    choice_rows = [[first["routed", e] + (t * k + j) // active for j, e in enumerate(es)]
                   for t, es in enumerate(assign)]
    xe = lay.tensor("ex", total, d, act)
    eh = lay.tensor("eh", total, width, act)
    eu = lay.tensor("eu", total, width, act)
    ea = lay.tensor("ea", total, width, act)
    ed = lay.tensor("ed", total, d, act)
    gates = lay.tensor("eg", k, T, "fp32")
    em.begin(f"{nm}.dispatch")
    emit_gather(em, hbuf, xe, sorted((r, t) for t, rows in enumerate(choice_rows)
                                     for r in rows), act)
    em.begin(f"{nm}.gates")
    emit_gates(em, lay.tensor("rs", T, node["experts"], act), gates, assign, spec.router_bias,
               spec.routed_scale, act)
    fn = node["fn"]
    parts = ("gate", "up", "down") if fn == "silu_mul" else ("up", "down")
    if weights is not None:
        for tag, m, experts, _ in layout:
            name = "shared" if tag == "shared" else "expert"
            for part in parts:
                mats = [np.asarray(weights[f"layer{node['layer']}.{name}{e}.{part}"])
                        for e in experts]
                weights[f"{nm}.{tag}{m}.{part}"] = \
                    np.stack(mats) if len(mats) > 1 else mats[0]    # emit_matmul's count
    for tag, m, experts, rows in layout:
        src, x_rows = (hbuf, [0]) if tag == "shared" else (xe, rows)
        for part, out in (("gate", eh), ("up", eu)):
            if part in parts:
                job = MatmulJob(f"{nm}.{part}", m, d, width, len(experts), src, out,
                                f"{nm}.{tag}{m}.{part}", x_rows=x_rows, y_rows=rows)
                em.begin(f"{nm}.{tag}{m}.{part}")
                emit_matmul(em, lay, job, wdt, act, weights)
    em.begin(f"{nm}.act")
    emit_binary(em, eh if fn == "silu_mul" else eu, eu, ea, total, width,
                "silu_mul" if fn == "silu_mul" else "gelu", act)
    for tag, m, experts, rows in layout:
        job = MatmulJob(f"{nm}.down", m, width, d, len(experts), ea, ed, f"{nm}.{tag}{m}.down",
                        x_rows=rows, y_rows=rows)
        em.begin(f"{nm}.{tag}{m}.down")
        emit_matmul(em, lay, job, wdt, act, weights)
    em.begin(f"{nm}.combine")
    emit_combine(em, ed, gates, lay.tensor("f", T, d, act), choice_rows,
                 [first["shared", j] for j in range(node["shared_experts"])], act)


def _runs(*seqs) -> list[tuple[int, int]]:
    """(first index, length) of the maximal runs over which every one of the equally long
    ``seqs`` steps by +1: the pieces a gather of rows (or elements) loads at once."""
    out: list[tuple[int, int]] = []
    for i in range(len(seqs[0])):
        if out and all(q[i] == q[i - 1] + 1 for q in seqs):
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


def emit_gather(em: Emitter, src: Tensor, dst: Tensor, rows: list, act: str) -> None:
    """Whole rows copied through the SRAM: ``rows`` is (dst row, src row) pairs, in dst order.
    Blocks of rows over the cores; a load per run of rows consecutive in both, a store per
    block, two blocks in flight per core."""
    rowb = nbytes(src.cols, act)
    rb, blocks = _row_plan(em, len(rows), rowb, 2)
    for core, run in enumerate(split(len(blocks), em.cores)):
        if not len(run):
            continue
        bufs = [em.alloc(core, nbytes(rb * src.cols, act)) for _ in range(min(2, len(run)))]
        ld = [em.sem(f"c{core}.ld{k}") for k in range(len(bufs))]
        st = [em.sem(f"c{core}.st{k}") for k in range(len(bufs))]
        n_ld = [0] * len(bufs)
        for i, bi in enumerate(run):
            r0, nr = blocks[bi]
            k = i % len(bufs)
            wait = [(st[k], i // len(bufs))] if i >= len(bufs) else []
            block = rows[r0:r0 + nr]
            for a, n in _runs([r for r, _ in block], [r for _, r in block]):
                em.load(core, 0, src.at(block[a][1]), bufs[k] + a * rowb, n, src.cols,
                        src.row_bytes, rowb, act, wait=wait if a == 0 else (), signal=[ld[k]])
                n_ld[k] += 1
            em.store(core, em.dma - 1, bufs[k], dst.at(block[0][0]), nr, src.cols, rowb,
                     dst.row_bytes, act, wait=[(ld[k], n_ld[k])], signal=[st[k]])


def emit_gates(em: Emitter, scores: Tensor, gates: Tensor, assign: list, sigmoid: bool,
               scale: float, act: str) -> None:
    """The weight of each token's experts: ``gates[j, t]`` (fp32, choice-major, so the
    combine reads one choice of a block of tokens as one row) for expert ``assign[t][j]``,
    from token t's router scores: a softmax over its top_k logits (Mixtral), or with
    ``sigmoid`` its top_k sigmoid scores normalised to sum 1 (DeepSeek-V3); times ``scale``
    (DeepSeek-V3's routed_scaling_factor)."""
    f32 = "fp32"
    T, k = len(assign), len(assign[0])
    eb, e4 = nbytes(1, act), 4
    rb, blocks = _row_plan(em, T, k * (eb + 8) + 8, 1)
    for core, run in enumerate(split(len(blocks), em.cores)):
        if not len(run):
            continue
        lb = em.alloc(core, nbytes(rb * k, act))
        lf = em.alloc(core, nbytes(rb * k, f32))
        sm = em.alloc(core, nbytes(rb, f32) + 64)
        gt = em.alloc(core, nbytes(rb * k, f32))
        ld = em.sem(f"c{core}.ld")
        vd = em.sem(f"c{core}.vd")
        st = em.sem(f"c{core}.st")
        n_ld = 0
        for i, bi in enumerate(run):
            r0, nr = blocks[bi]
            wait = [(st, i)] if i else []
            for t in range(r0, r0 + nr):
                for j, n in _runs(assign[t]):     # consecutive experts: one or two runs
                    em.load(core, 0, scores.at(t, assign[t][j]), lb + ((t - r0) * k + j) * eb,
                            1, n, scores.row_bytes, k * eb, act, wait=wait, signal=[ld])
                    wait = []
                    n_ld += 1
            rk = k * e4
            em.vop(core, VecOp.CONVERT, lb, lf, nr, k, k * eb, rk, act, f32, wait=[(ld, n_ld)])
            if sigmoid:                       # 1 / (1 + exp(-x))
                em.vop(core, VecOp.MUL, lf, lf, nr, k, rk, rk, f32, imm=-1.0,
                       flags=Flag.BCAST_IMM)
                em.vop(core, VecOp.EXP, lf, lf, nr, k, rk, rk, f32)
                em.vop(core, VecOp.ADD, lf, lf, nr, k, rk, rk, f32, imm=1.0,
                       flags=Flag.BCAST_IMM)
                em.vop(core, VecOp.RECIP, lf, lf, nr, k, rk, rk, f32)
            else:                             # exp(x - max x)
                em.vop(core, VecOp.REDUCE_MAX, lf, sm, nr, k, rk, e4, f32)
                em.vop(core, VecOp.SUB, lf, lf, nr, k, rk, rk, f32, src2=sm,
                       flags=Flag.BCAST_ROW)
                em.vop(core, VecOp.EXP, lf, lf, nr, k, rk, rk, f32)
            em.vop(core, VecOp.REDUCE_SUM, lf, sm, nr, k, rk, e4, f32)
            em.vop(core, VecOp.RECIP, sm, sm, nr, 1, e4, e4, f32)
            if scale != 1:
                em.vop(core, VecOp.MUL, sm, sm, nr, 1, e4, e4, f32, imm=scale,
                       flags=Flag.BCAST_IMM)
            em.vop(core, VecOp.MUL, lf, lf, nr, k, rk, rk, f32, src2=sm, flags=Flag.BCAST_ROW)
            for j in range(k):                # choice-major: column j -> row j
                em.vop(core, VecOp.COPY, lf + j * e4, gt + j * nr * e4, nr, 1, rk, e4, f32,
                       signal=[vd] if j == k - 1 else ())
            em.store(core, em.dma - 1, gt, gates.at(0, r0), k, nr, nr * e4, gates.row_bytes,
                     f32, wait=[(vd, i + 1)], signal=[st])


def emit_combine(em: Emitter, ed: Tensor, gates: Tensor, y: Tensor, choice_rows: list,
                 shared_rows: list, act: str) -> None:
    """``y[t] = sum_j gates[j, t] x ed[choice_rows[t][j]] + sum_s ed[shared_rows[s] + t]``,
    summed in fp32 and rounded to ``act`` once. Blocks of token rows (and of columns, so a
    block keeps a few rows) over the cores; each term's rows load (one load per run of rows
    consecutive in ``ed``) into one of two slots while the vector engine weighs and adds the
    previous term."""
    f32 = "fp32"
    T, d = y.rows, y.cols
    k = len(choice_rows[0])
    eb = nbytes(1, act)
    direct = act == f32                       # terms load straight into fp32
    per_el = 4 + 2 * eb + (0 if direct else 4) + eb      # acc, two slots, fp32 copy, out
    cb = d
    if 8 * per_el * d > em.sram_size // 2:
        cb = max(64, em.sram_size // 2 // (8 * per_el) // 64 * 64)
    rb, rblocks = _row_plan(em, T, per_el * cb + 8 * k, 1, ways=ceil_div(d, cb))
    blocks = [(r0, nr, c0, min(cb, d - c0)) for r0, nr in rblocks for c0 in range(0, d, cb)]
    terms = [("routed", j) for j in range(k)] + [("shared", s) for s in range(len(shared_rows))]
    for core, run in enumerate(split(len(blocks), em.cores)):
        if not len(run):
            continue
        acc = em.alloc(core, nbytes(rb * cb, f32))
        slot = [em.alloc(core, nbytes(rb * cb, act)) for _ in range(2)]
        tf = slot if direct else [em.alloc(core, nbytes(rb * cb, f32))] * 2
        yb = em.alloc(core, nbytes(rb * cb, act))
        gb = [em.alloc(core, nbytes(k * rb, f32)) for _ in range(2)]
        ld = [em.sem(f"c{core}.ld{s}") for s in (0, 1)]
        n_ld = [0, 0]
        used = em.sem(f"c{core}.used")        # slots the vector engine is done reading
        gl = [em.sem(f"c{core}.gl{s}") for s in (0, 1)]
        vd = em.sem(f"c{core}.vd")            # blocks whose output is ready
        st = em.sem(f"c{core}.st")
        step = 0
        for i, bi in enumerate(run):
            r0, nr, c0, nc = blocks[bi]
            rowa, rowf = nbytes(nc, act), nbytes(nc, f32)
            g = gb[i % 2]
            em.load(core, em.dma - 1, gates.at(0, r0), g, k, nr, gates.row_bytes, nr * 4, f32,
                    wait=[(vd, i - 1) if i >= 2 else None], signal=[gl[i % 2]])
            for q, (kind, j) in enumerate(terms):
                s = step % 2
                wait = [(used, step - 1) if step >= 2 else None]
                if kind == "routed":
                    src = [choice_rows[t][j] for t in range(r0, r0 + nr)]
                    for a, n in _runs(src):
                        em.load(core, 0, ed.at(src[a], c0), slot[s] + a * rowa, n, nc,
                                ed.row_bytes, rowa, act, wait=wait, signal=[ld[s]])
                        wait = []
                        n_ld[s] += 1
                else:
                    em.load(core, 0, ed.at(shared_rows[j] + r0, c0), slot[s], nr, nc,
                            ed.row_bytes, rowa, act, wait=wait, signal=[ld[s]])
                    n_ld[s] += 1
                # the slot is free once its last reader is done: the CONVERT, or (fp32) the
                # op that reads it last
                w = [(ld[s], n_ld[s])]
                if not direct:
                    em.vop(core, VecOp.CONVERT, slot[s], tf[s], nr, nc, rowa, rowf, act, f32,
                           wait=w, signal=[used])
                    w = []
                if kind == "routed":
                    if q == 0:
                        w = w + [(gl[i % 2], i // 2 + 1)]
                    em.vop(core, VecOp.MUL, tf[s], acc if q == 0 else tf[s], nr, nc, rowf,
                           rowf, f32, src2=g + j * nr * 4, flags=Flag.BCAST_ROW, wait=w,
                           signal=[used] if direct and q == 0 else ())
                    w = []
                if q > 0:
                    em.vop(core, VecOp.ADD, acc, acc, nr, nc, rowf, rowf, f32, src2=tf[s],
                           src2_row=rowf, wait=w, signal=[used] if direct else ())
                step += 1
            em.vop(core, VecOp.CONVERT, acc, yb, nr, nc, rowf, rowa, f32, act,
                   wait=[(st, i) if i else None], signal=[vd])
            em.store(core, em.dma - 1, yb, y.at(r0, c0), nr, nc, rowa, y.row_bytes, act,
                     wait=[(vd, i + 1)], signal=[st])
