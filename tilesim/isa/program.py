"""A tile program: per-core, per-engine instruction queues plus named semaphores and buffers.

The instructions of every queue sit in one record array (:data:`~tilesim.isa.opcodes.INSTR_DTYPE`),
queue after queue: core 0's engines in engine order, then core 1's, and so on. ``queue_start``
and ``queue_len`` (``[core, engine]``) say where each queue is. This is the form the numba event
loop reads. Buffers are names for address ranges, used by the assembler, the validator, the
functional mode and error messages; they do not change timing.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tilesim.dtypes import DTYPES
from tilesim.errors import InputError
from tilesim.isa.opcodes import INSTR_DTYPE, MAX_SIGNALS, MAX_WAITS, NO_SEM, Engine, Op, blank

SPACES = ("dram", "sram")


def _flat_layout(dt: np.dtype) -> tuple[dict, struct.Struct]:
    """Each field's (first position, length or 0 for a scalar) in a record flattened to its
    scalars, and the struct that packs such a flat record into ``dt``'s bytes (the records
    are packed, little-endian, fields in offset order: checked here)."""
    codes = {("u", 1): "B", ("i", 1): "b", ("u", 2): "H", ("i", 2): "h", ("u", 4): "I",
             ("i", 4): "i", ("u", 8): "Q", ("i", 8): "q", ("f", 4): "f", ("f", 8): "d"}
    fields, fmt, pos, at = {}, "<", 0, 0
    for name in dt.names:
        sub, off = dt.fields[name][:2]
        base, shape = sub.subdtype if sub.subdtype else (sub, ())
        n = int(np.prod(shape)) if shape else 0
        if off != at:
            raise ValueError(f"INSTR_DTYPE field {name} at byte {off}, not {at}: not packed")
        fields[name] = (pos, n)
        fmt += (str(n) if n else "") + codes[(base.kind, base.itemsize)]
        pos += max(n, 1)
        at += sub.itemsize
    return fields, struct.Struct(fmt)


_FIELD, _PACK = _flat_layout(INSTR_DTYPE)   # name -> (position, sub-array length or 0)
assert _PACK.size == INSTR_DTYPE.itemsize
_POS = {name: f[0] for name, f in _FIELD.items()}
_WAIT_SEM, _WAIT_COUNT, _SIGNAL_SEM = _POS["wait_sem"], _POS["wait_count"], _POS["signal_sem"]
_OP, _SRC, _DST, _SHAPE, _DTYPE = (_POS[f]
                                   for f in ("op", "src_addr", "dst_addr", "shape", "dtype"))
_SRC_STRIDE, _DST_STRIDE = _POS["src_stride"], _POS["dst_stride"]
_DST_CORE, _MC_COUNT, _MC_STRIDE = _POS["dst_core"], _POS["mc_count"], _POS["mc_stride"]
_VOP, _FLAGS, _DTYPE2, _SRC2, _SRC2_STRIDE, _IMM = (
    _POS[f] for f in ("vop", "flags", "dtype2", "src2_addr", "src2_stride", "imm"))
_M, _K, _N = _POS["m"], _POS["k"], _POS["n"]
_TEMPLATE = tuple(_PACK.unpack(blank(1).tobytes()))


def _record(wait, signal) -> list:
    """A blank record's scalars as a flat list (:data:`_FIELD` says where each field is), with
    ``wait`` [(sem, count), ...] and ``signal`` [sem, ...] filled in."""
    if len(wait) > MAX_WAITS or len(signal) > MAX_SIGNALS:
        raise ValueError(f"at most {MAX_WAITS} waits and {MAX_SIGNALS} signals")
    rec = list(_TEMPLATE)
    for i, (sem, n) in enumerate(wait):
        rec[_WAIT_SEM + i], rec[_WAIT_COUNT + i] = sem, n
    for i, sem in enumerate(signal):
        rec[_SIGNAL_SEM + i] = sem
    return rec


@dataclass(frozen=True)
class Buffer:
    """A named address range: in DRAM (core -1) or in one core's SRAM."""

    name: str
    space: str                 # "dram" | "sram"
    core: int                  # owning core for sram, -1 for dram
    addr: int                  # first byte
    dtype: str                 # element datatype name
    shape: tuple[int, ...]     # elements per dimension, outermost first

    @property
    def size_bytes(self) -> int:
        """Bytes the elements take, rounded up (exact integers: no float, no int64 wrap)."""
        return (math.prod(self.shape) * DTYPES[self.dtype].bits + 7) // 8

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.addr + self.size_bytes


@dataclass
class Program:
    """Instruction queues of every engine of every core, with semaphore and buffer names."""

    n_cores: int
    dma_engines: int
    instrs: np.ndarray                      # INSTR_DTYPE records, queue after queue
    queue_start: np.ndarray                 # int64[n_cores, engines]
    queue_len: np.ndarray                   # int64[n_cores, engines]
    semaphores: list[str] = field(default_factory=list)
    buffers: list[Buffer] = field(default_factory=list)
    lines: np.ndarray | None = None         # int32 source line per instruction (0 = generated)
    name: str = "program"
    source: str = ""                        # file it was assembled from, for messages

    @property
    def engines_per_core(self) -> int:
        return int(Engine.DMA) + self.dma_engines

    def queue(self, core: int, engine: int) -> np.ndarray:
        """The records of one queue (a view)."""
        s = int(self.queue_start[core, engine])
        return self.instrs[s:s + int(self.queue_len[core, engine])]

    def locate(self, index: int) -> tuple[int, int, int]:
        """(core, engine, position in queue) of the instruction at ``index`` in ``instrs``."""
        for c in range(self.n_cores):
            for e in range(self.engines_per_core):
                s, n = int(self.queue_start[c, e]), int(self.queue_len[c, e])
                if s <= index < s + n:
                    return c, e, index - s
        raise IndexError(index)

    def split(self, tags: np.ndarray) -> list[tuple["Program", np.ndarray]]:
        """Cut the program into one program per segment: ``tags`` (int[instr], non-decreasing
        along every queue) names each instruction's segment, e.g. the op it belongs to.
        Returns [(program, index)] in segment order, ``index`` the positions in ``instrs`` of
        the segment's instructions (its own order). A wait on a semaphore that no instruction
        of the segment signals is dropped: it is the barrier on the segments before, which are
        over when this one starts. Empty segments are left out; a program with no instructions
        is one segment, itself (so a run of its segments always has one)."""
        tags = np.asarray(tags)
        qs = self.queue_start.reshape(-1).astype(np.int64)
        ql = self.queue_len.reshape(-1).astype(np.int64)
        n_seg = int(tags.max(initial=-1)) + 1
        # bounds[g, j]: first position of queue g with a tag >= j
        bounds = np.empty((qs.size, n_seg + 1), np.int64)
        for g in range(qs.size):
            t = tags[qs[g]:qs[g] + ql[g]]
            if t.size > 1 and (np.diff(t) < 0).any():
                raise ValueError(f"{self.name}: segment tags go back along queue {g}")
            bounds[g] = qs[g] + np.searchsorted(t, np.arange(n_seg + 1), side="left")
        bounds[:, n_seg] = qs + ql
        out = []
        for j in range(n_seg):
            lo, hi = bounds[:, j], bounds[:, j + 1]
            lens = hi - lo
            if not lens.any():
                continue
            runs = [(a, b) for a, b in zip(lo, hi) if b > a]
            idx = np.concatenate([np.arange(a, b) for a, b in runs])
            ins = np.concatenate([self.instrs[a:b] for a, b in runs])   # slices: faster than
                                                                         # gathering by idx
            signalled = np.unique(ins["signal_sem"])
            ws = ins["wait_sem"]
            outside = (ws != NO_SEM) & ~np.isin(ws, signalled)
            ws[outside] = NO_SEM
            ins["wait_count"][outside] = 0
            start = np.concatenate(([0], np.cumsum(lens)[:-1]))
            out.append((Program(self.n_cores, self.dma_engines, ins,
                                start.reshape(self.queue_start.shape),
                                lens.reshape(self.queue_len.shape), self.semaphores,
                                self.buffers, None if self.lines is None else self.lines[idx],
                                self.name, self.source), idx))
        return out or [(self, np.arange(len(self.instrs)))]

    def buffer(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)

    def __eq__(self, other) -> bool:
        """Same queues, records, names and buffers (source lines and file are not compared)."""
        if not isinstance(other, Program):
            return NotImplemented
        return (self.n_cores == other.n_cores and self.dma_engines == other.dma_engines
                and self.name == other.name
                and np.array_equal(self.queue_start, other.queue_start)
                and np.array_equal(self.queue_len, other.queue_len)
                and self.instrs.tobytes() == other.instrs.tobytes()
                and self.semaphores == other.semaphores and self.buffers == other.buffers)

    # ---- files ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write an .npz holding everything (atomically: a temp file, then rename)."""
        path = Path(path)
        meta = {"n_cores": self.n_cores, "dma_engines": self.dma_engines, "name": self.name,
                "semaphores": self.semaphores,
                "buffers": [[b.name, b.space, b.core, b.addr, b.dtype, list(b.shape)]
                            for b in self.buffers], "format": 1}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, instrs=self.instrs, queue_start=self.queue_start,
                     queue_len=self.queue_len,
                     lines=self.lines if self.lines is not None else np.zeros(0, np.int32),
                     meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "Program":
        """Read a program written by :meth:`save`; InputError if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                instrs = z["instrs"]
                if instrs.dtype != INSTR_DTYPE:
                    raise ValueError("instruction records of another format")
                lines = z["lines"]
                return cls(n_cores=int(meta["n_cores"]), dma_engines=int(meta["dma_engines"]),
                           instrs=instrs.copy(), queue_start=z["queue_start"].astype(np.int64),
                           queue_len=z["queue_len"].astype(np.int64),
                           semaphores=[str(s) for s in meta["semaphores"]],
                           buffers=[Buffer(n, s, int(c), int(a), d, tuple(int(x) for x in sh))
                                    for n, s, c, a, d, sh in meta["buffers"]],
                           lines=lines if len(lines) else None, name=str(meta["name"]),
                           source=str(path))
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: not a tilesim program file ({e})") from None


class ProgramBuilder:
    """Append instructions queue by queue, then :meth:`build` a Program.

    Used by the assembler, the code generator and the example programs::

        b = ProgramBuilder(n_cores=1, dma_engines=2)
        full = b.sem("full0")
        b.emit(0, Engine.DMA, op=Op.LOAD, ..., signal=[full])
        b.emit(0, Engine.MATRIX, op=Op.LDW, ..., wait=[(full, 1)])
        prog = b.build()
    """

    def __init__(self, n_cores: int, dma_engines: int, name: str = "program"):
        self.n_cores, self.dma_engines, self.name = n_cores, dma_engines, name
        self.semaphores: list[str] = []
        self.buffers: list[Buffer] = []
        self._queues: dict[tuple[int, int], list[tuple]] = {}     # records not yet in _blocks
        self._blocks: dict[tuple[int, int], list[np.ndarray]] = {}
        self._lines: dict[tuple[int, int], list[int]] = {}
        self._sem_ids: dict[str, int] = {}

    @property
    def engines_per_core(self) -> int:
        return int(Engine.DMA) + self.dma_engines

    def sem(self, name: str) -> int:
        """Declare a semaphore (or return the id of an existing one)."""
        sid = self._sem_ids.get(name)
        if sid is None:
            sid = self._sem_ids[name] = len(self.semaphores)
            self.semaphores.append(name)
        return sid

    def buffer(self, name: str, space: str, addr: int, dtype: str, shape, core: int = -1) -> Buffer:
        """Declare a named buffer and return it."""
        b = Buffer(name, space, core if space == "sram" else -1, int(addr), dtype,
                   tuple(int(s) for s in shape))
        self.buffers.append(b)
        return b

    def emit(self, core: int, engine: int, *, wait=(), signal=(), line: int = 0, **fields) -> None:
        """Append one instruction to queue (core, engine). ``wait`` is [(sem, count), ...],
        ``signal`` is [sem, ...]; other keyword arguments set record fields by name.

        Records are packed to bytes here and become one structured array in :meth:`build`
        (a compiler emits hundreds of thousands; a numpy record per call costs ~20 us, and
        numpy's conversion of a list of tuples ~4 us a record)."""
        rec = _record(wait, signal)
        for k, v in fields.items():
            f = _FIELD.get(k)
            if f is None:
                raise ValueError(f"no instruction field {k!r} (fields: {', '.join(_POS)})")
            at, n = f
            if n:
                v = list(v) if isinstance(v, (tuple, list, np.ndarray)) else [v] * n
                if len(v) != n:
                    raise ValueError(f"instruction field {k!r} takes {n} values, not {len(v)}")
                rec[at:at + n] = v
            else:
                rec[at] = v
        self._append((core, int(engine)), rec, line)

    def emit_dma(self, core: int, engine: int, wait, signal, op: int, src: int, dst: int,
                 shape: tuple, src_stride: tuple, dst_stride: tuple, dtype: int,
                 dst_core: int = -1, mc_count: int = 0, mc_stride: int = 0) -> None:
        """:meth:`emit` of a LOAD, STORE or COPY with every field given, without the
        keyword-by-keyword walk (a compiler emits hundreds of thousands of these)."""
        rec = _record(wait, signal)
        rec[_OP], rec[_SRC], rec[_DST], rec[_DTYPE] = op, src, dst, dtype
        rec[_SHAPE:_SHAPE + 4] = shape
        rec[_SRC_STRIDE:_SRC_STRIDE + 4] = src_stride
        rec[_DST_STRIDE:_DST_STRIDE + 4] = dst_stride
        rec[_DST_CORE], rec[_MC_COUNT], rec[_MC_STRIDE] = dst_core, mc_count, mc_stride
        self._append((core, engine), rec, 0)

    def emit_array(self, core: int, engine: int, wait, signal, op: int, src: int, dst: int,
                   m: int, k: int, n: int, src_row: int, dst_row: int, dtype: int,
                   dtype2: int, flags: int) -> None:
        """:meth:`emit` of an LDW or MM (row strides in ``src_stride[2]`` and
        ``dst_stride[2]``, every field not named blank), without the keyword walk."""
        rec = _record(wait, signal)
        rec[_OP], rec[_SRC], rec[_DST], rec[_M], rec[_K], rec[_N] = op, src, dst, m, k, n
        rec[_SRC_STRIDE + 2], rec[_DST_STRIDE + 2] = src_row, dst_row
        rec[_DTYPE], rec[_DTYPE2], rec[_FLAGS] = dtype, dtype2, flags
        self._append((core, engine), rec, 0)

    def emit_vop(self, core: int, engine: int, wait, signal, vop: int, src: int, src2: int,
                 dst: int, rows: int, cols: int, src_row: int, dst_row: int, src2_row: int,
                 dtype: int, dtype2: int, flags: int, imm: float) -> None:
        """:meth:`emit` of a VOP over ``rows x cols`` (shape (1, 1, rows, cols), row strides
        in ``src_stride[2]``, ``dst_stride[2]`` and ``src2_stride``), without the keyword
        walk."""
        rec = _record(wait, signal)
        rec[_OP], rec[_VOP], rec[_SRC], rec[_SRC2], rec[_DST] = int(Op.VOP), vop, src, src2, dst
        rec[_SHAPE:_SHAPE + 4] = (1, 1, rows, cols)
        rec[_SRC_STRIDE + 2], rec[_DST_STRIDE + 2], rec[_SRC2_STRIDE] = src_row, dst_row, src2_row
        rec[_DTYPE], rec[_DTYPE2], rec[_FLAGS], rec[_IMM] = dtype, dtype2, flags, imm
        self._append((core, engine), rec, 0)

    def _append(self, key: tuple, rec: list, line: int) -> None:
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = []
            self._lines.setdefault(key, [])
        try:
            q.append(_PACK.pack(*rec))
        except struct.error as e:
            raise ValueError(f"an instruction field is out of its type's range ({e})") from None
        self._lines[key].append(line)

    def emit_block(self, core: int, engine: int, block: np.ndarray) -> None:
        """Append ready-made INSTR_DTYPE records to queue (core, engine): a compiler building
        a run of instructions as numpy columns skips the per-record Python of :meth:`emit`."""
        key = (core, int(engine))
        self._flush(key)
        self._blocks.setdefault(key, []).append(np.asarray(block, INSTR_DTYPE))
        self._lines.setdefault(key, []).extend([0] * len(block))

    def _flush(self, key) -> None:
        q = self._queues.get(key)
        if q:
            self._blocks.setdefault(key, []).append(np.frombuffer(b"".join(q), INSTR_DTYPE))
            q.clear()

    def build(self) -> Program:
        n_e = self.engines_per_core
        start = np.zeros((self.n_cores, n_e), np.int64)
        length = np.zeros((self.n_cores, n_e), np.int64)
        for key in list(self._queues):
            self._flush(key)
        lines, pos = [], 0
        for c in range(self.n_cores):
            for e in range(n_e):
                n = sum(len(b) for b in self._blocks.get((c, e), []))
                start[c, e], length[c, e] = pos, n
                if n:
                    lines.extend(self._lines[(c, e)])
                pos += n
        bad = [k for k in self._blocks if not (0 <= k[0] < self.n_cores and 0 <= k[1] < n_e)]
        if bad:
            raise ValueError(f"queues outside the program's cores/engines: {bad}")
        # copied as bytes: np.concatenate or slice assignment of many small record arrays
        # goes field by field and cost seconds on a 500k-instruction program
        size = INSTR_DTYPE.itemsize
        raw = np.empty(pos * size, np.uint8)
        for (c, e), blocks in self._blocks.items():
            at = int(start[c, e]) * size
            for b in blocks:
                raw[at:at + len(b) * size] = np.ascontiguousarray(b).view(np.uint8)
                at += len(b) * size
        instrs = raw.view(INSTR_DTYPE)
        return Program(self.n_cores, self.dma_engines, instrs, start, length,
                       list(self.semaphores), list(self.buffers),
                       np.array(lines, np.int32), self.name)


__all__ = ["Buffer", "Program", "ProgramBuilder", "SPACES", "Op", "NO_SEM"]
