"""The chip: builds every component from a config and runs a tile program cycle by cycle.

Execution model
---------------
Every engine of every core runs its queue in order. An instruction may wait for up to two
semaphores and signals up to two when it completes. The event loop (``_engine.chip_run``)
keeps exact integer cycle timestamps and jumps from event to event; same-cycle events run in
the order they were created, so a run is deterministic.

* Matrix engine (systolic.py): LDW loads a weight tile, MM streams activation rows through it
  and finishes once the last result has drained out of the array. Without weight double
  buffering an LDW waits until every MM on the old weights has drained; with it, an LDW fills
  the shadow registers as soon as the MM that uses the previous tile has started streaming.
  An MM starts streaming when its weights are in and the previous MM has streamed. Both read
  and write the SRAM as one stream each (sram.py) and take longer when the banks cannot keep up.
* Vector engine (vector.py): one VOP at a time; throughput cycles (or longer, if the SRAM
  cannot feed it) plus the op's latency.
* DMA engines (dma.py): a descriptor is coalesced (contiguous dimensions folded into one run),
  then cut into requests of at most ``request_bytes`` (never
  crossing a ``request_bytes`` boundary of the DRAM side), one per cycle while fewer than
  ``max_outstanding`` are in flight. A load sends a one-flit request over the NoC to the memory
  controller of the channel that owns the address, waits for the DRAM (arch/dram), and carries
  the data back in a response packet that is written into SRAM; a store reads the SRAM, carries
  the data to the controller, writes it, and gets a one-flit acknowledgement; a copy reads the
  SRAM, carries the data to the other core's SRAM and gets an acknowledgement. The instruction
  completes when all its requests have; the engine starts issuing its next instruction as soon
  as the current one has issued its last request.
* NoC (noc.py): FCFS links, router pipeline latency, serialisation of flits.

Clocks: cores and NoC run at ``clock_ghz``; DRAM at its own command clock. Times convert
through integer femtosecond periods, and a DRAM event that falls inside a core cycle is handled
at the end of that core cycle.

Functional mode applies every instruction's effect on real numpy data in the order the timed run
completed them (a data-race-free program, i.e. one whose semaphores order every conflicting
access, gets the same result in any legal order), so timing never depends on values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tilesim.arch import dma as dma_mod
from tilesim.arch import noc as noc_mod
from tilesim.arch import sram as sram_mod
from tilesim.arch import vector as vector_mod
from tilesim.config import VECTOR_OPS, ChipConfig
from tilesim.dtypes import BY_CODE
from tilesim.errors import InputError, ProgramError
from tilesim.isa.opcodes import Flag, Op, VecOp, engine_kind, engine_name
from tilesim.isa.program import Program

FEMTO = 10**15


_EVENT_KINDS = ("try", "done", "stream", "hop", "arrive", "dram", "dma", "req", "stale")  # _engine.EV_*


@dataclass
class RunStats:
    """What a run measured. Times are core cycles; bytes, flits and counts are totals."""

    program: str
    chip: str
    clock_ghz: float
    cycles: int                          # cycle at which the last instruction completed
    t_issue: np.ndarray                  # int64[instr]: became the head of its queue
    t_start: np.ndarray                  # int64[instr]: began (waits met, resources free)
    t_end: np.ndarray                    # int64[instr]: completed (signalled)
    engine_busy: np.ndarray              # int64[core, engine]: cycles with work in flight
    sram_read_bytes: np.ndarray          # int64[core]
    sram_write_bytes: np.ndarray         # int64[core]
    dma_requests: dict                   # load/store/copy/multicast -> requests
    dram_read_bytes: int                 # bytes DMA asked the DRAM to read
    dram_write_bytes: int
    noc_link_flits: np.ndarray           # int64[link], all links (noc.NocTables order)
    noc_flit_hops: int                   # flits x router-to-router links
    noc_byte_hops: int                   # bytes carried x router-to-router links (data
                                         # payloads; _engine.NOC_CTRL_BYTES per control packet)
    noc_injected_flits: int
    noc_ejected_flits: int
    macs: dict                           # input datatype -> MACs executed
    vector_ops: dict                     # op name -> elements processed
    events: dict = field(default_factory=dict)     # event kind -> events the loop handled
    dram: dict = field(default_factory=dict)       # DRAM counters (arch/dram)
    energy_pj: dict = field(default_factory=dict)  # component -> pJ
    energy_table: dict = field(default_factory=dict)
    memory: "FunctionalMemory | None" = None

    @property
    def seconds(self) -> float:
        return self.cycles / (self.clock_ghz * 1e9)

    @property
    def instructions(self) -> int:
        return int(self.t_end.shape[0])

    def same_timing(self, other: "RunStats") -> bool:
        """Bit-for-bit equal timing and counters (the determinism check)."""
        return (self.cycles == other.cycles
                and all(np.array_equal(getattr(self, f), getattr(other, f))
                        for f in ("t_issue", "t_start", "t_end", "engine_busy",
                                  "sram_read_bytes", "sram_write_bytes", "noc_link_flits"))
                and self.dma_requests == other.dma_requests
                and self.dram.get("counters") == other.dram.get("counters")
                and self.energy_pj == other.energy_pj)


# --------------------------------------------------------------------------------------------
# Per-instruction timing and SRAM footprint, computed once in numpy before the loop
# --------------------------------------------------------------------------------------------


_BITS = np.zeros(256, np.int64)
for _d in BY_CODE.values():
    _BITS[_d.code] = _d.bits
_BITS[0] = 8


def _unique_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, axis=0, return_inverse=True)`` for an int64 [n, c] array, by a
    lexsort over the columns: np.unique sorts the rows as opaque bytes, which took 0.5 s of a
    llama-3-8b layer's 0.6 s of instruction tables."""
    order = np.lexsort(keys.T[::-1])
    srt = keys[order]
    new = np.ones(len(srt), bool)
    new[1:] = (srt[1:] != srt[:-1]).any(axis=1)
    group = np.cumsum(new) - 1
    inverse = np.empty(len(keys), np.int64)
    inverse[order] = group
    return srt[new], inverse


def _tile_masks(addr, rows, cols, row_stride, elem_stride, bits, cfg) -> np.ndarray:
    """Bank masks of 2-D tiles (vectorised over instructions; one sram.bank_mask per distinct
    pattern)."""
    period = cfg.banks * cfg.bank_width_bytes
    keys = np.stack([addr % period, rows, cols, row_stride % period, elem_stride, bits], axis=1)
    if keys.shape[0] == 0:
        return np.zeros(0, np.uint64)
    uniq, inverse = _unique_rows(keys)
    masks = np.array([sram_mod.bank_mask(int(a), (int(r), int(c)), (int(rs), int(es)), int(b), cfg)
                      for a, r, c, rs, es, b in uniq], dtype=np.uint64)
    return masks[inverse.ravel()]


def _ceil_bytes(elements, bits):
    return (elements * bits + 7) // 8


def instruction_tables(program: Program, cfg: ChipConfig) -> dict[str, np.ndarray]:
    """dur_a, dur_b (cycles), s_read, s_write (SRAM bytes) and s_mask (banks) per instruction.

    Matrix: LDW dur_a = weight-load cycles; MM dur_a = streaming cycles, dur_b = drain.
    Vector: dur_a = throughput cycles, dur_b = latency. DMA: unused (requests are timed)."""
    from tilesim.arch import systolic

    ins = program.instrs
    n = ins.shape[0]
    dur_a = np.zeros(n, np.int64)
    dur_b = np.zeros(n, np.int64)
    s_read = np.zeros(n, np.int64)
    s_write = np.zeros(n, np.int64)
    s_mask = np.zeros(n, np.uint64)
    sa, scfg = cfg.cores.systolic, cfg.cores.sram
    op = ins["op"]
    flags = ins["flags"].astype(np.int64)
    bits = _BITS[ins["dtype"]]
    obits = np.where(ins["dtype2"] > 0, _BITS[ins["dtype2"]], bits)
    m, k, nn = (ins[f].astype(np.int64) for f in ("m", "k", "n"))
    row_src = ins["src_stride"][:, 2]
    row_dst = ins["dst_stride"][:, 2]
    ebytes = np.maximum(bits // 8, 1)

    sel = np.nonzero(op == Op.LDW)[0]
    if sel.size:
        pairs, inv = _unique_rows(np.stack([k[sel], nn[sel]], 1))
        cyc = np.array([systolic.ldw_cycles(int(a), int(b), sa.rows, sa.cols, sa.dataflow)
                        for a, b in pairs])
        dur_a[sel] = cyc[inv.ravel()]
        s_read[sel] = _ceil_bytes(k[sel] * nn[sel], bits[sel])
        tr = (flags[sel] & Flag.TRANSPOSE) != 0
        s_mask[sel] = _tile_masks(ins["src_addr"][sel], np.where(tr, nn[sel], k[sel]),
                                  np.where(tr, k[sel], nn[sel]), row_src[sel], ebytes[sel],
                                  bits[sel], scfg)

    sel = np.nonzero(op == Op.MM)[0]
    if sel.size:
        trip, inv = _unique_rows(np.stack([m[sel], k[sel], nn[sel]], 1))
        cyc = np.array([systolic.mm_cycles(int(a), int(b), int(c), sa.rows, sa.cols, sa.dataflow)
                        for a, b, c in trip])
        dur_a[sel] = cyc[inv.ravel(), 0]                       # rows accepted
        dur_b[sel] = cyc[inv.ravel(), 1] - cyc[inv.ravel(), 0]  # skew and drain
        out = _ceil_bytes(m[sel] * nn[sel], obits[sel])
        s_read[sel] = _ceil_bytes(m[sel] * k[sel], bits[sel]) + np.where(
            (flags[sel] & Flag.ACCUMULATE) != 0, out, 0)
        s_write[sel] = out
        s_mask[sel] = (_tile_masks(ins["src_addr"][sel], m[sel], k[sel], row_src[sel],
                                   ebytes[sel], bits[sel], scfg)
                       | _tile_masks(ins["dst_addr"][sel], m[sel], nn[sel], row_dst[sel],
                                     np.maximum(obits[sel] // 8, 1), obits[sel], scfg))

    sel = np.nonzero(op == Op.VOP)[0]
    if sel.size:
        vop = ins["vop"][sel].astype(np.int64)
        rows = np.maximum(ins["shape"][sel, 2].astype(np.int64), 1)
        cols = np.maximum(ins["shape"][sel, 3].astype(np.int64), 1)
        elems = rows * cols
        for name in VECTOR_OPS:
            here = vop == int(VecOp[name.upper()])
            if here.any():
                dur_a[sel[here]], dur_b[sel[here]] = vector_mod.vop_cycles(
                    name, elems[here], cfg.cores.vector)
        fl = flags[sel]
        binary = np.isin(vop, [VecOp.ADD, VecOp.SUB, VecOp.MUL, VecOp.MAX, VecOp.ROPE])
        second = np.where(fl & Flag.BCAST_ROW, rows, np.where(fl & Flag.BCAST_COL, cols,
                          np.where(fl & Flag.BCAST_IMM, 0, elems)))
        s_read[sel] = _ceil_bytes(elems + np.where(binary, second, 0), bits[sel])
        reduce = np.isin(vop, [VecOp.REDUCE_SUM, VecOp.REDUCE_MAX])
        out_cols = np.where(reduce, 1, cols)
        s_write[sel] = _ceil_bytes(rows * out_cols, obits[sel])
        es_src = np.where(ins["src_stride"][sel, 3] > 0, ins["src_stride"][sel, 3], ebytes[sel])
        es_dst = np.where(ins["dst_stride"][sel, 3] > 0, ins["dst_stride"][sel, 3],
                          np.maximum(obits[sel] // 8, 1))
        s_mask[sel] = (_tile_masks(ins["src_addr"][sel], rows, cols, row_src[sel], es_src,
                                   bits[sel], scfg)
                       | _tile_masks(ins["dst_addr"][sel], rows, out_cols, row_dst[sel], es_dst,
                                     obits[sel], scfg))
    return {"dur_a": dur_a, "dur_b": dur_b, "s_read": s_read, "s_write": s_write,
            "s_mask": s_mask}


# --------------------------------------------------------------------------------------------
# Functional mode: real values in SRAM and DRAM
# --------------------------------------------------------------------------------------------


def _offsets(base: int, shape, strides) -> np.ndarray:
    """Byte offset of every element of a 4-D descriptor, shape (n0, n1, n2, n3)."""
    idx = [np.arange(max(int(n), 1)) * int(s) for n, s in zip(shape, strides)]
    return (base + idx[0][:, None, None, None] + idx[1][None, :, None, None]
            + idx[2][None, None, :, None] + idx[3][None, None, None, :])


def unknown_buffer(name: str, program: Program) -> str:
    """The message for a buffer name ``program`` does not have, with a did-you-mean."""
    import difflib
    names = [b.name for b in program.buffers]
    hint = ([n for n in names if n.lower() == str(name).lower()]
            or difflib.get_close_matches(str(name), names, n=1))
    return (f"{name!r} is not a buffer of {program.source or program.name}"
            + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def input_problem(program: Program, name: str, values) -> str | None:
    """Why ``values`` cannot be written into buffer ``name`` (unknown buffer, wrong element
    count, values its datatype cannot hold), or None."""
    from tilesim.dtypes import encode
    if name not in {b.name for b in program.buffers}:
        return unknown_buffer(name, program)
    b = program.buffer(name)
    values = np.asarray(values)
    want = int(np.prod(b.shape)) if b.shape else 1
    if values.size != want:
        return (f"has {values.size} values of shape {tuple(values.shape)}, but buffer {name} holds "
                f"{want} ({b.dtype}, shape {tuple(b.shape)})")
    try:
        encode(values.reshape(-1), b.dtype)
    except ValueError as e:
        return f"{e} (buffer {name})"
    return None


class FunctionalMemory:
    """The bytes of every core's SRAM and of the DRAM a program touches, plus named access.

    DRAM is allocated up to the highest byte the program's buffers and instructions reach, not
    the chip's full capacity."""

    def __init__(self, program: Program, cfg: ChipConfig):
        self.program = program
        self.sram = [np.zeros(cfg.cores.sram.size_bytes, np.uint8)
                     for _ in range(program.n_cores)]
        ins = program.instrs
        ends = [b.end for b in program.buffers if b.space == "dram"]
        for op, field_, sfield in ((Op.LOAD, "src_addr", "src_stride"),
                                   (Op.STORE, "dst_addr", "dst_stride")):
            sel = ins[ins["op"] == op]
            for r in sel:
                offs = _offsets(int(r[field_]), r["shape"], r[sfield])
                ends.append(int(offs.max()) + 8)
        self.dram = np.zeros(max(ends, default=0), np.uint8)

    def _space(self, buf):
        return self.dram if buf.space == "dram" else self.sram[buf.core]

    def write(self, name: str, values) -> None:
        """Store ``values`` (any shape with the buffer's element count) into buffer ``name``;
        InputError (one line) when :func:`input_problem` finds something wrong."""
        from tilesim.dtypes import encode
        why = input_problem(self.program, name, values)
        if why:
            raise InputError(f"input {name!r}: {why}")
        b = self.program.buffer(name)
        raw = encode(np.asarray(values).reshape(-1), b.dtype)
        self._space(b)[b.addr:b.addr + raw.size] = raw

    def read(self, name: str) -> np.ndarray:
        """The values of buffer ``name``, in its shape."""
        from tilesim.dtypes import decode
        b = self.program.buffer(name)
        n = int(np.prod(b.shape)) if b.shape else 1
        return decode(self._space(b)[b.addr:b.end], b.dtype, n).reshape(b.shape)


def _gather_tile(mem: np.ndarray, addr: int, rows: int, cols: int, row_stride: int,
                 elem_stride: int, dtype_name: str) -> np.ndarray:
    from tilesim.dtypes import DTYPES, decode
    bits = DTYPES[dtype_name].bits
    if bits < 8:  # packed int4: rows of contiguous nibbles
        nbytes = (cols * bits + 7) // 8
        rows_raw = [mem[addr + r * row_stride: addr + r * row_stride + nbytes] for r in range(rows)]
        return np.stack([decode(x, dtype_name, cols) for x in rows_raw]) if rows else \
            np.zeros((0, cols))
    eb = bits // 8
    es = elem_stride or eb
    offs = addr + np.arange(rows)[:, None] * row_stride + np.arange(cols)[None, :] * es
    raw = mem[offs[..., None] + np.arange(eb)].reshape(-1)
    return decode(raw, dtype_name, rows * cols).reshape(rows, cols)


def _scatter_tile(mem: np.ndarray, addr: int, values: np.ndarray, row_stride: int,
                  elem_stride: int, dtype_name: str) -> None:
    from tilesim.dtypes import DTYPES, encode
    bits = DTYPES[dtype_name].bits
    rows, cols = values.shape
    if bits < 8:
        nbytes = (cols * bits + 7) // 8
        for r in range(rows):
            mem[addr + r * row_stride: addr + r * row_stride + nbytes] = encode(values[r], dtype_name)
        return
    eb = bits // 8
    es = elem_stride or eb
    offs = addr + np.arange(rows)[:, None] * row_stride + np.arange(cols)[None, :] * es
    mem[(offs[..., None] + np.arange(eb)).reshape(-1)] = encode(values.reshape(-1), dtype_name)


def _to_type(values: np.ndarray, name: str) -> np.ndarray:
    """Results -> values representable in ``name``: floats round to nearest even, integers
    wrap (int32 accumulators) or saturate (narrower types)."""
    from tilesim.dtypes import DTYPES, quantize
    d = DTYPES[name]
    if d.is_int:
        v = np.rint(values).astype(np.int64) if np.asarray(values).dtype.kind == "f" else \
            np.asarray(values, np.int64)
        if d.bits == 32:
            return ((v + 2**31) % 2**32) - 2**31
        return quantize(v, name)
    return quantize(np.asarray(values, np.float64), name)


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def apply_instruction(mem: FunctionalMemory, r, core: int, weights: dict, last_ldw: int,
                      cfg: ChipConfig, index: int) -> None:
    """Apply the effect of instruction record ``r`` (run on ``core``) to ``mem``."""
    op = int(r["op"])
    dt = BY_CODE.get(int(r["dtype"]))
    dt2 = BY_CODE.get(int(r["dtype2"])) or dt
    own = mem.sram[core]
    if op in (Op.LOAD, Op.STORE, Op.COPY):
        eb = max(dt.bits // 8, 1)
        shape = [max(int(x), 1) for x in r["shape"]]
        if dt.bits < 8:   # packed: move the innermost run as bytes
            shape[3] = (shape[3] * dt.bits + 7) // 8
            src_str = list(r["src_stride"][:3]) + [1]
            dst_str = list(r["dst_stride"][:3]) + [1]
        else:
            src_str, dst_str = list(r["src_stride"]), list(r["dst_stride"])
        src_mem = mem.dram if op == Op.LOAD else own
        dst_mem = (mem.dram if op == Op.STORE
                   else own if op == Op.LOAD and int(r["dst_core"]) < 0
                   else mem.sram[int(r["dst_core"])])
        so = _offsets(int(r["src_addr"]), shape, src_str)[..., None] + np.arange(eb)
        do = _offsets(int(r["dst_addr"]), shape, dst_str)[..., None] + np.arange(eb)
        if dt.bits < 8:
            so, do = so[..., :1], do[..., :1]
        dst_mem[do.reshape(-1)] = src_mem[so.reshape(-1)]
        if op == Op.LOAD and int(r["dst_core"]) >= 0:      # multicast: the other copies
            for j in range(1, max(int(r["mc_count"]), 1)):
                mem.sram[int(r["dst_core"]) + j * int(r["mc_stride"])][do.reshape(-1)] = \
                    src_mem[so.reshape(-1)]
        return
    if op == Op.LDW:
        k, n = int(r["k"]), int(r["n"])
        if int(r["flags"]) & Flag.TRANSPOSE:
            w = _gather_tile(own, int(r["src_addr"]), n, k, int(r["src_stride"][2]), 0, dt.name).T
        else:
            w = _gather_tile(own, int(r["src_addr"]), k, n, int(r["src_stride"][2]), 0, dt.name)
        weights[index] = w
        return
    if op == Op.MM:
        m, k, n = int(r["m"]), int(r["k"]), int(r["n"])
        w = weights[last_ldw]
        a = _gather_tile(own, int(r["src_addr"]), m, k, int(r["src_stride"][2]), 0, dt.name)
        if dt.is_int:
            out = a.astype(np.int64) @ w.astype(np.int64)
        else:
            out = a.astype(np.float64) @ w.astype(np.float64)
        if int(r["flags"]) & Flag.ACCUMULATE:
            out = out + _gather_tile(own, int(r["dst_addr"]), m, n, int(r["dst_stride"][2]), 0,
                                     dt2.name)
        _scatter_tile(own, int(r["dst_addr"]), _to_type(out, dt2.name), int(r["dst_stride"][2]),
                      0, dt2.name)
        return
    if op == Op.VOP:
        vop = int(r["vop"])
        rows, cols = max(int(r["shape"][2]), 1), max(int(r["shape"][3]), 1)
        x = _gather_tile(own, int(r["src_addr"]), rows, cols, int(r["src_stride"][2]),
                         int(r["src_stride"][3]), dt.name).astype(np.float64)
        fl = int(r["flags"])
        imm = float(r["imm"])
        if vop in (VecOp.ADD, VecOp.SUB, VecOp.MUL, VecOp.MAX, VecOp.ROPE):
            if fl & Flag.BCAST_IMM:
                y = np.full((rows, cols), imm)
            elif fl & Flag.BCAST_ROW:
                y = np.repeat(_gather_tile(own, int(r["src2_addr"]), 1, rows, 0, 0, dt.name)
                              .reshape(rows, 1), cols, axis=1)
            elif fl & Flag.BCAST_COL:
                y = np.repeat(_gather_tile(own, int(r["src2_addr"]), 1, cols, 0, 0, dt.name),
                              rows, axis=0)
            else:
                y = _gather_tile(own, int(r["src2_addr"]), rows, cols, int(r["src2_stride"]), 0,
                                 dt.name)
            y = y.astype(np.float64)
        if vop == VecOp.ADD:
            out = x + y
        elif vop == VecOp.SUB:
            out = x - y
        elif vop == VecOp.MUL:
            out = x * y
        elif vop == VecOp.MAX:
            out = np.maximum(x, y)
        elif vop == VecOp.RECIP:
            out = 1.0 / x
        elif vop == VecOp.EXP:
            out = np.exp(x)
        elif vop == VecOp.RSQRT:
            out = 1.0 / np.sqrt(x + imm)
        elif vop == VecOp.SILU:
            out = x / (1.0 + np.exp(-x))
        elif vop == VecOp.GELU:
            out = _gelu_tanh(x)
        elif vop == VecOp.REDUCE_SUM:
            out = x.sum(axis=1, keepdims=True)
        elif vop == VecOp.REDUCE_MAX:
            out = x.max(axis=1, keepdims=True)
        elif vop == VecOp.ROPE:
            half = cols // 2
            cos, sin = y[:, :half], y[:, half:2 * half]
            x1, x2 = x[:, :half], x[:, half:2 * half]
            out = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=1)
        else:  # CONVERT, COPY
            out = x
        _scatter_tile(own, int(r["dst_addr"]), _to_type(out, dt2.name), int(r["dst_stride"][2]),
                      int(r["dst_stride"][3]), dt2.name)


# --------------------------------------------------------------------------------------------
# Running a program
# --------------------------------------------------------------------------------------------


class MemorySide:
    """The DRAM system of a chip as the event loop sees it: kernel tables and state, the NoC
    node that owns each channel (channels dealt to ``noc.memory_nodes`` in turn), clocks.

    A chip without off-chip memory still passes (never used) tables of a one-channel DDR3 so
    the jitted loop has one signature."""

    def __init__(self, cfg: ChipConfig, req_capacity: int):
        from tilesim.arch import dram
        from tilesim.arch.dram import model

        self.present = cfg.memory is not None
        mem_cfg = cfg.memory if self.present else model.memory("ddr3")
        self.system = model.build(mem_cfg)
        self.T = self.system.tables
        self.S = model.new_state(self.system, req_capacity)
        nodes = cfg.noc.memory_nodes or (0,)
        self.channels = self.system.n_channels if self.present else 0
        self.ch_node = np.array([nodes[c % len(nodes)] for c in range(self.system.n_channels)],
                                np.int64)
        self.capacity_bytes = dram.capacity_bytes(cfg.memory) if self.present else 0
        self.period_fs = round(self.system.tck_ns * 1e6)
        self.chunk_bytes = self.system.chunk_bytes

    def finish(self, end_core_cycle: int, core_fs: int) -> dict:
        """Close the run at the core cycle ``end_core_cycle``: counters and energy as plain data."""
        if not self.present:
            return {}
        from tilesim.arch import _engine
        from tilesim.arch.dram import model
        from tilesim.arch.dram.energy import energy_report

        end = -(-end_core_cycle * core_fs // self.period_fs)
        _engine.dram_finish(self.T, self.S, end)
        counters = model.views(self.system, self.S)["counters"][:, :len(_engine.DRAM_COUNTERS)]
        totals = {name: int(counters[:, k].sum()) for k, name in enumerate(_engine.DRAM_COUNTERS)}
        asked = totals["bytes_read"] + totals["bytes_written"]
        rep = energy_report(self.system, counters, end, asked)
        return {"standard": self.system.std.name, "channels": self.channels,
                "peak_gbps": self.system.peak_gbps, "end_dram_cycle": int(end),
                "counters": totals, "per_channel": counters.copy(),
                "energy_pj": rep["total_pj"], "energy_breakdown_pj": rep["breakdown_pj"]}

_ERRORS = {1: "touches SRAM outside [0, {sram}) bytes", 2: "touches DRAM outside [0, {dram}) bytes",
           3: "the run exceeded its event budget ({events} events): a livelock in the model",
           4: "ran out of an internal pool (requests, packets or SRAM streams)",
           5: "copies or loads to a core that does not exist (dst_core, mc_count, mc_stride)"}


def _where(program: Program, index: int) -> str:
    core, engine, pos = program.locate(index)
    line = int(program.lines[index]) if program.lines is not None and len(program.lines) else 0
    src = f"{program.source}: line {line}: " if program.source and line else ""
    return f"{src}core {core} {engine_name(engine)} instruction {pos}"


def _union_busy(start: np.ndarray, end: np.ndarray) -> int:
    """Cycles covered by the union of intervals [start, end)."""
    if start.size == 0:
        return 0
    order = np.argsort(start, kind="stable")
    s, e = start[order], end[order]
    reach = np.maximum.accumulate(e)
    prev = np.concatenate([[s[0]], reach[:-1]])
    return int(np.sum(np.maximum(0, e - np.maximum(s, prev)) * (e > prev)))


def run(program: Program, cfg: ChipConfig, functional: bool = False,
        inputs: dict | None = None, validate: bool = True, max_events: int | None = None
        ) -> RunStats:
    """Execute ``program`` on chip ``cfg`` cycle by cycle.

    With ``functional=True``, ``inputs`` (buffer name -> values) are written first and every
    instruction computes real values; read results from ``stats.memory.read(name)``.
    Raises ProgramError naming the instruction when the program is invalid, cannot finish
    (deadlock: every blocked instruction and the semaphore it waits on) or breaks a rule at
    run time."""
    from tilesim.arch import _engine
    from tilesim.isa.validate import validate as static_check

    if validate:
        static_check(program, cfg)
    fmem = None
    if functional:   # inputs are checked before the timed run, not after it
        fmem = FunctionalMemory(program, cfg)
        for name, values in (inputs or {}).items():
            fmem.write(name, values)
    tabs = instruction_tables(program, cfg)
    n_e = program.engines_per_core
    n_eng = program.n_cores * n_e
    q_start = program.queue_start.reshape(-1).astype(np.int64)
    q_end = q_start + program.queue_len.reshape(-1).astype(np.int64)
    i_eng = np.zeros(len(program.instrs), np.int64)
    for g in range(n_eng):
        i_eng[q_start[g]:q_end[g]] = g
    eng_kind = np.array([int(engine_kind(g % n_e)) for g in range(n_eng)], np.int64)
    eng_core = np.array([g // n_e for g in range(n_eng)], np.int64)

    noc = noc_mod.build(cfg.noc)
    core_node = np.array(cfg.core_nodes[:program.n_cores], np.int64)
    pool = max(16, n_eng * cfg.cores.dma.max_outstanding + 16)
    mem = MemorySide(cfg, pool)
    core_fs = round(FEMTO / (cfg.clock_ghz * 1e9))
    prm = np.array([
        len(program.semaphores), cfg.cores.dma.max_outstanding, cfg.cores.dma.request_bytes,
        cfg.noc.link_width_bytes, int(cfg.cores.systolic.weight_double_buffer),
        sram_mod.groups(cfg.cores.sram), cfg.cores.sram.size_bytes,
        mem.capacity_bytes, cfg.noc.router_cycles, cfg.noc.link_cycles,
        cfg.noc.inject_cycles, core_fs, mem.period_fs, mem.channels,
        program.dma_engines, cfg.cores.sram.bank_width_bytes,
        ("ws", "os", "is").index(cfg.cores.systolic.dataflow), cfg.cores.systolic.rows,
        pool, mem.chunk_bytes], np.int64)
    cap = sram_mod.capacity_bytes_per_cycle(cfg.cores.sram) * max(
        1, cfg.cores.sram.banks // sram_mod.groups(cfg.cores.sram))
    budget = max_events or 64 * (len(program.instrs) + 1000) + 10**9
    out = _engine.chip_run(
        dma_mod.coalesce(program.instrs, _BITS), i_eng, q_start, q_end, eng_kind, eng_core,
        tabs["dur_a"], tabs["dur_b"], tabs["s_read"], tabs["s_write"], tabs["s_mask"], _BITS,
        prm, float(cap), core_node, noc.next_link.astype(np.int64), noc.link_dst.astype(np.int64),
        noc.n_links, noc.n_nodes,
        mem.T, mem.S, mem.ch_node, budget)
    (t_issue, t_start, t_end, link_flits, sram_rd, sram_wr, req_count, dram_bytes, t_final,
     err, err_instr, _sems, ev_count, byte_hops) = out
    if err:
        msg = _ERRORS[int(err)].format(sram=cfg.cores.sram.size_bytes,
                                       dram=mem.capacity_bytes, events=budget)
        where = _where(program, int(err_instr)) if err_instr >= 0 else program.name
        raise ProgramError(f"{where}: {msg}")
    unfinished = np.nonzero(t_end < 0)[0]
    if unfinished.size:
        raise ProgramError(_deadlock_message(program, t_end, _sems))

    ins = program.instrs
    busy = np.zeros((program.n_cores, n_e), np.int64)
    for g in range(n_eng):
        a, b = q_start[g], q_end[g]
        busy[g // n_e, g % n_e] = _union_busy(t_start[a:b], t_end[a:b])
    n_links = noc.n_links
    mm = ins["op"] == Op.MM
    macs: dict[str, int] = {}
    for code in np.unique(ins["dtype"][mm]):
        sel = mm & (ins["dtype"] == code)
        macs[BY_CODE[int(code)].name] = int((ins["m"][sel].astype(np.int64) * ins["k"][sel]
                                             * ins["n"][sel]).sum())
    vops: dict[str, int] = {}
    vsel = ins["op"] == Op.VOP
    for v in np.unique(ins["vop"][vsel]):
        sel = vsel & (ins["vop"] == v)
        vops[VecOp(int(v)).name.lower()] = int((np.maximum(ins["shape"][sel, 2], 1).astype(np.int64)
                                                * np.maximum(ins["shape"][sel, 3], 1)).sum())
    stats = RunStats(
        program=program.name, chip=cfg.name, clock_ghz=cfg.clock_ghz,
        cycles=int(t_end.max(initial=0)), t_issue=t_issue, t_start=t_start, t_end=t_end,
        engine_busy=busy, sram_read_bytes=sram_rd, sram_write_bytes=sram_wr,
        dma_requests={"load": int(req_count[0]), "store": int(req_count[1]),
                      "copy": int(req_count[2]), "multicast": int(req_count[3])},
        dram_read_bytes=int(dram_bytes[0]), dram_write_bytes=int(dram_bytes[1]),
        noc_link_flits=link_flits, noc_flit_hops=int(link_flits[:n_links].sum()),
        noc_byte_hops=int(byte_hops),
        noc_injected_flits=int(link_flits[n_links:n_links + noc.n_nodes].sum()),
        noc_ejected_flits=int(link_flits[n_links + noc.n_nodes:].sum()),
        macs=macs, vector_ops=vops,
        events={k: int(v) for k, v in zip(_EVENT_KINDS, ev_count)},
        dram=mem.finish(int(t_final), core_fs))
    _account_energy(stats, cfg, mem)
    if functional:
        stats.memory = _run_functional(program, cfg, t_start, t_end, fmem)
    return stats


def _added(values: list):
    """The sum of like values: numbers, arrays, or dicts of them (key by key); a string (a
    name) or any other value is taken from the first."""
    first = values[0]
    if isinstance(first, dict):
        return {k: _added([v[k] for v in values]) for k in first}
    if isinstance(first, (int, float, np.ndarray, np.integer, np.floating)) \
            and not isinstance(first, bool):
        return sum(values[1:], first)
    return first


def join_runs(program: Program, runs: list[tuple[RunStats, np.ndarray]]) -> RunStats:
    """The RunStats of ``program`` run as its segments (``Program.split``), one after another
    on an idle chip: segment k starts when the last instruction of segment k - 1 completes.
    ``runs``: (stats, index) per segment in order, ``index`` its instructions' positions in
    ``program``. Times are shifted by the segment's start; counts, bytes, events and energy
    add up."""
    n = len(program.instrs)
    times = {f: np.full(n, -1, np.int64) for f in ("t_issue", "t_start", "t_end")}
    offset = 0
    for s, idx in runs:
        for f, arr in times.items():
            arr[idx] = getattr(s, f) + offset
        offset += s.cycles
    stats = [s for s, _ in runs]
    add = {f: _added([getattr(s, f) for s in stats]) for f in (
        "engine_busy", "sram_read_bytes", "sram_write_bytes", "dma_requests", "dram_read_bytes",
        "dram_write_bytes", "noc_link_flits", "noc_flit_hops", "noc_byte_hops",
        "noc_injected_flits", "noc_ejected_flits", "events", "dram", "energy_pj")}
    for f in ("macs", "vector_ops"):       # a datatype or op only some segments have
        add[f] = {k: sum(getattr(s, f).get(k, 0) for s in stats)
                  for k in sorted({k for s in stats for k in getattr(s, f)})}
    for k in ("standard", "channels", "peak_gbps"):   # the same memory in every segment
        if k in add["dram"]:
            add["dram"][k] = stats[0].dram[k]
    return RunStats(program=program.name, chip=stats[0].chip, clock_ghz=stats[0].clock_ghz,
                    cycles=offset, energy_table=stats[0].energy_table, **times, **add)


def _deadlock_message(program: Program, t_end: np.ndarray, sems: np.ndarray) -> str:
    """Every queue's first unfinished instruction and the semaphore it waits on."""
    parts = []
    n_e = program.engines_per_core
    for c in range(program.n_cores):
        for e in range(n_e):
            q = np.arange(program.queue_start[c, e], program.queue_start[c, e]
                          + program.queue_len[c, e])
            left = q[t_end[q] < 0]
            if not left.size:
                continue
            i = int(left[0])
            r = program.instrs[i]
            waits = [f"{program.semaphores[s] if s < len(program.semaphores) else s} "
                     f"(at {int(sems[s])}, needs {int(n)})"
                     for s, n in zip(r["wait_sem"], r["wait_count"]) if s >= 0 and sems[s] < n]
            what = "waits on " + " and ".join(waits) if waits else "waits behind its engine"
            parts.append(f"{_where(program, i)} {what}")
    return "deadlock: no engine can make progress: " + "; ".join(parts)


def _account_energy(stats: RunStats, cfg: ChipConfig, mem) -> None:
    """energy_pj by component = action counts x the config's energy table (pJ per action)."""
    table = cfg.energy_table()
    mac_row = {"int4": "mac_int4_pj", "int8": "mac_int8_pj", "fp8e4m3": "mac_fp8_pj",
               "fp8e5m2": "mac_fp8_pj", "bf16": "mac_bf16_pj", "fp16": "mac_fp16_pj",
               "fp32": "mac_fp32_pj"}
    special = {"exp", "rsqrt", "silu", "gelu", "rope", "recip"}
    e = {
        "mac": sum(n * table[mac_row[d]] for d, n in stats.macs.items()),
        "sram": (stats.sram_read_bytes.sum() * table["sram_read_pj_per_byte"]
                 + stats.sram_write_bytes.sum() * table["sram_write_pj_per_byte"]),
        # bytes actually carried: a 4-byte payload on a 256-byte link does not cost 256 bytes
        "noc": stats.noc_byte_hops * table["noc_pj_per_byte_hop"],
        "vector": sum(n * table["vector_special_pj" if op in special else "vector_alu_pj"]
                      for op, n in stats.vector_ops.items()),
        "dram": stats.dram.get("energy_pj", 0.0),
        "static": table["static_mw_per_core"] * cfg.cores.count * stats.seconds * 1e9,
    }
    stats.energy_pj = {k: float(v) for k, v in e.items()}
    stats.energy_table = dict(table)


def _run_functional(program: Program, cfg: ChipConfig, t_start, t_end, mem: FunctionalMemory
                    ) -> FunctionalMemory:
    """Apply every instruction to ``mem`` (inputs written) in completion order (ties: start,
    then program order)."""
    n_e = program.engines_per_core
    core_of = np.zeros(len(program.instrs), np.int64)
    last_ldw = np.full(len(program.instrs), -1, np.int64)
    for c in range(program.n_cores):
        for e in range(n_e):
            a = int(program.queue_start[c, e])
            b = a + int(program.queue_len[c, e])
            core_of[a:b] = c
            cur = -1
            for i in range(a, b):
                if program.instrs[i]["op"] == Op.LDW:
                    cur = i
                last_ldw[i] = cur
    weights: dict[int, np.ndarray] = {}
    for i in np.lexsort((np.arange(len(t_end)), t_start, t_end)):
        apply_instruction(mem, program.instrs[i], int(core_of[i]), weights, int(last_ldw[i]),
                          cfg, int(i))
    return mem
