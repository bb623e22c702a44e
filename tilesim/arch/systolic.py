"""The systolic array: a PE-level, cycle-accurate model and the tile timing it proves.

An R x C grid of processing elements (PEs) computes ``A (M x K) @ W (K x N)``. Every cycle,
every PE reads registers its neighbours wrote in the previous cycle, does at most one
multiply-accumulate (MAC) and writes its own registers. :func:`simulate_pe` steps that grid
cycle by cycle with real values (a numba kernel); :func:`gemm_cycles` is the closed form of its
cycle count; tests check that the two agree for every shape, dataflow and buffer setting, and
that the closed form equals SCALE-Sim v3's cycle count plus one
(../shared/reference/scalesim_v3_gemm_sweep.csv, tests/data/scalesim_v3_small.csv).

Dataflows
---------
A dataflow says which operand stays in the PEs. Problems bigger than the array are cut into
*folds* (tiles); the fold loops are ``ceil(.)`` products below. Unused PEs of a partial fold
hold zeros and still pass data along, so every fold costs the full R and C (as in SCALE-Sim).

ws, weight-stationary (the chip's matrix engine). A fold holds a ``k x n`` tile of W
(k <= R, n <= C) with ``W[k0+r, n0+c]`` in PE(r, c). Activations enter at the left edge, row r
of the array taking column ``k0+r`` of A, and move one PE right per cycle; partial sums enter
at the top as zero and move one PE down per cycle, each PE adding ``a * w``; finished sums
leave at the bottom, column c giving ``out[m, n0+c]``. The left edge is *skewed*: element r of
activation row m enters array row r at cycle ``m + r`` of the fold's stream, so that it meets
the partial sum of the same m coming down.

is, input-stationary: the same machine with the roles swapped. A fold holds a ``k x m`` tile of
A transposed (``A[m0+c, k0+r]`` in PE(r, c)), columns of W stream in from the left, and column
c of the array produces ``out[m0+c, n]`` for n = 0, 1, ... (it computes out^T = W^T A^T).

os, output-stationary. A fold owns an ``m x n`` output tile (``out[m0+r, n0+c]`` in PE(r, c)).
A enters at the left (row r takes row ``m0+r`` of A, ``A[., k]`` at cycle ``k + r``), W enters
at the top (column c takes ``W[k, n0+c]`` at cycle ``k + c``), both move one PE per cycle, and
each PE accumulates the pairs that meet in it. On its last pair a PE puts its result on its
column's output bus (PEs of a column finish one cycle apart, so one bus per column carries them
without conflict) and clears its accumulator.

Closed forms (derived here; :func:`gemm_cycles` implements them)
----------------------------------------------------------------
Let T be the streamed extent (ws: M, is: N, os: K) and F the number of folds
(ws: ceil(K/R) ceil(N/C), is: ceil(K/R) ceil(M/C), os: ceil(M/R) ceil(N/C)).

One fold of ws/is, from the first cycle of its weight load to its last result:

* weight load, R cycles: the tile enters at the top and shifts down one row per cycle;
* T cycles to feed the T stream rows (one per cycle);
* input skew, R - 1 cycles: the last row's element for array row R-1 enters R - 1 cycles late;
* drain, C - 1 cycles to reach the last column, and 1 cycle in which PE(R-1, C-1) computes.

So a fold takes ``R + T + (R - 1) + (C - 1) + 1 = 2R + C + T - 2`` cycles. One os fold has no
weight load: ``T + (R - 1) + (C - 1) + 1 = T + R + C - 2`` cycles until PE(R-1, C-1) puts the
last result on its bus.

Exposed (``weight_double_buffer=False``): a PE has one weight register, and the load shifts the
new tile through those very registers, disturbing every PE of the array from its first cycle;
so a load starts only when the array is empty (the previous fold's last result is out), and
folds run one after another (SCALE-Sim's model). For os, the same rule: a fold starts when the
previous fold's last result is out.

    ws, is:  cycles = F * (2R + C + T - 2)
    os:      cycles = F * (T + R + C - 2)

Double-buffered (``weight_double_buffer=True``): each PE has a second (shadow) weight register.
The next tile shifts down through the shadow registers while the current tile streams, column
c of the load starting c cycles after column 0 (the same diagonal the activations follow), so a
PE's shadow is refilled only after that PE has switched to the tile it held. Each activation
carries the id of the tile it must meet; a PE switches to its shadow tile when the first
activation of that tile reaches it. Steady state: one fold per ``max(T, R)`` cycles (streaming
or loading, whichever is longer), plus the first load and the last fold's skew and drain:

    ws, is:  cycles = R + (F - 1) * max(T, R) + (T + R + C - 2)

For os the flag means folds overlap in the array: the next fold's operands follow the previous
ones as soon as the two folds' results cannot meet on a column bus (they would if their last
pairs were fewer than R cycles apart):

    os:      cycles = (F - 1) * max(T, R) + (T + R + C - 2)

With F = 1 both settings give the same count.

Tile timing for the chip
------------------------
The chip's in-order matrix engine runs LDW (load a k x n weight tile) and MM (stream m rows
through the loaded tile). Per instruction (:func:`ldw_cycles`, :func:`mm_cycles`):

* LDW occupies the weight-load path for ``R`` cycles (0 for os, which has no load): its tile is
  in place (or, double-buffered, in the shadow registers) at ``ldw.end = ldw.start + R``.
* MM accepts one row per cycle for ``busy = m`` cycles (is: n rows of W^T; os: k operand
  pairs), and its last result is out ``R + C - 2`` cycles after its last row went in:
  ``mm.accept_end = mm.start + busy``, ``mm.end = mm.accept_end + R + C - 2``.

When each may start (the PE model enforces exactly these rules and checks them physically):

* MM_i starts at ``max(ldw_j.end, mm_{i-1}.accept_end)`` where j is the tile it uses (and, os
  only, ``mm_{i-1}.end`` when exposed, or ``mm_{i-1}.end + R - (busy_i + R + C - 2)``, i.e. its
  end at least R cycles after the previous end, when double-buffered).
* LDW_j (ws, is) starts at ``ldw_{j-1}.end`` at the earliest, and also
  - exposed: at the end of the MM before it (the array must be empty);
  - double-buffered: at the start of the MM before it (in-order issue: the previous tile has
    then begun streaming, and the shadow registers it occupied are free as the wave passes).

Composing these over LDW, MM, LDW, MM, ... gives :func:`gemm_cycles` (:func:`schedule` does
it; tests compose random LDW/MM sequences and compare with the PE model's per-op times).

Numbers
-------
Integer inputs multiply and accumulate exactly (int8 x int8 -> int32): values are carried in
float64, which holds every such product and every int32 sum exactly; a result outside int32 is
an error rather than a silent wrap. Floating inputs are first rounded to their datatype
(:func:`tilesim.dtypes.quantize`, nearest-even); each MAC then rounds the product to the
accumulator type and the sum to the accumulator type (no fused multiply-add), and the partial
sums of successive k-folds are added into the output in the accumulator type, in fold order.

Not modelled: stalls for operand supply (SRAM bandwidth is the chip's business), sparsity,
power gating of unused PEs, and a load of fewer than R rows for a short tile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
from numba import njit

from tilesim import dtypes as _dt
from tilesim.errors import InputError

DATAFLOWS = ("ws", "os", "is")
"""weight-stationary, output-stationary, input-stationary."""

TRACE_MAX_CELLS = 4_000_000
"""trace=True records every register of every PE every cycle: at most this many PE-cycles."""

# ============================================================================================
# Closed forms and tile timing (plain Python: the chip simulator and tests use these)
# ============================================================================================


def _check_size(name: str, value, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name}: {value!r} is not allowed (an integer >= 1)")
    if value < 1:
        raise InputError(f"{name}: {value} is not allowed (an integer >= 1)")
    if maximum is not None and value > maximum:
        raise InputError(f"{name}: {value} is not allowed (an integer from 1 to {maximum})")
    return int(value)


def _check_dataflow(dataflow) -> str:
    if dataflow not in DATAFLOWS:
        raise InputError(f"dataflow: {dataflow!r} is not allowed (one of ws, os, is)")
    return dataflow


def fold_counts(M: int, K: int, N: int, rows: int, cols: int, dataflow: str = "ws") -> tuple[int, int]:
    """(F, T): the number of folds and the streamed extent of a GEMM (module docstring)."""
    if dataflow == "ws":
        return math.ceil(K / rows) * math.ceil(N / cols), M
    if dataflow == "is":
        return math.ceil(K / rows) * math.ceil(M / cols), N
    return math.ceil(M / rows) * math.ceil(N / cols), K


def gemm_cycles(M: int, K: int, N: int, rows: int, cols: int, dataflow: str = "ws",
                weight_double_buffer: bool = False) -> int:
    """Cycles for A (M x K) @ W (K x N) on a rows x cols array, from the first weight-load cycle
    to the cycle the last result leaves the array (a count, not SCALE-Sim's last-cycle index).

    Derivation, with R = rows, C = cols, T the streamed extent (ws: M, is: N, os: K) and F the
    folds (ws: ceil(K/R) ceil(N/C); is: ceil(K/R) ceil(M/C); os: ceil(M/R) ceil(N/C)); every
    fold uses the whole array, unused PEs holding zeros. One fold of ws or is costs

        R          weight load: the tile shifts down one row per cycle
      + T          streaming: one row of the streamed operand enters per cycle
      + (R - 1)    input skew: array row r takes its element r cycles after row 0
      + (C - 1)    drain: the last sum passes C - 1 more columns to reach the last one
      + 1          the last MAC, in PE(R-1, C-1), after which its sum leaves the bottom
      = 2R + C + T - 2

    and one fold of os the same without the load: T + R + C - 2 (each PE sends its result on
    its column bus in the cycle of its last MAC). Folding:

    * exposed (one weight register per PE): a load disturbs every PE, so folds run one after
      another: ws, is: F * (2R + C + T - 2); os (folds one at a time): F * (T + R + C - 2).
    * double-buffered: the next tile loads into shadow registers while this one streams, so
      after the first load each fold costs max(T, R) (streaming or loading, whichever is
      longer) and only the last fold's skew and drain are exposed:
      ws, is: R + (F - 1) * max(T, R) + (T + R + C - 2); os (the next fold's operands follow
      once the two folds' results cannot meet on a column bus): (F - 1) * max(T, R) +
      (T + R + C - 2).

    :func:`simulate_pe` counts the same cycles PE by PE; the tests hold the two equal, and the
    exposed forms equal SCALE-Sim v3's count plus one.
    """
    M, K, N = _check_size("M", M), _check_size("K", K), _check_size("N", N)
    R, C = _check_size("rows", rows), _check_size("cols", cols)
    F, T = fold_counts(M, K, N, R, C, _check_dataflow(dataflow))
    load = 0 if dataflow == "os" else R        # the weight (or input) tile load
    fold = T + R + C - 2                       # stream, skew, drain, last MAC
    if not weight_double_buffer:
        return F * (load + fold)
    return load + (F - 1) * max(T, R) + fold


def ldw_cycles(k: int, n: int, rows: int, cols: int, dataflow: str = "ws") -> int:
    """Cycles an LDW of a k x n tile (k <= rows, n <= cols) occupies the weight-load path: the
    tile shifts down one array row per cycle, so always ``rows`` (0 for os, which loads
    nothing). Its tile is usable by an MM starting ``rows`` cycles after the LDW starts."""
    _check_size("k", k, rows), _check_size("n", n, cols)
    return 0 if _check_dataflow(dataflow) == "os" else int(rows)


class MmCycles(NamedTuple):
    """Timing of one MM instruction, relative to its start."""

    busy: int    # cycles the array accepts new rows (m for ws, n for is, k for os)
    total: int   # cycles until its last result has left the array: busy + R + C - 2


def mm_cycles(m: int, k: int, n: int, rows: int, cols: int, dataflow: str = "ws") -> MmCycles:
    """Timing of one MM streaming through a loaded tile: ``busy`` rows accepted one per cycle,
    then ``rows - 1`` cycles of input skew, ``cols - 1`` to reach the last column and one for the
    last MAC. ws: m rows of A through a k x n weight tile; is: n columns of W through a k x m
    input tile; os: k operand pairs into an m x n output tile."""
    busy = {"ws": m, "is": n, "os": k}[_check_dataflow(dataflow)]
    _check_size("m", m), _check_size("k", k), _check_size("n", n)
    return MmCycles(int(busy), int(busy + rows + cols - 2))


class TileTimes(NamedTuple):
    """Per-instruction cycle boundaries of a tile program (all absolute cycle numbers)."""

    ldw: np.ndarray   # int64[n_ldw, 2]: start, end (= start + R)
    mm: np.ndarray    # int64[n_mm, 3]: start, accept_end, end (last result out)

    @property
    def cycles(self) -> int:
        return int(self.mm[:, 2].max()) if len(self.mm) else 0


def schedule(ops: Sequence[tuple], rows: int, cols: int, dataflow: str = "ws",
             weight_double_buffer: bool = False) -> TileTimes:
    """When each LDW and MM of a tile program starts and ends under the rules in the module
    docstring ("Tile timing for the chip"), using only :func:`ldw_cycles` and :func:`mm_cycles`.

    ``ops`` is the program in the form :func:`simulate_tiles` takes. This is the reference the
    chip's matrix engine follows; tests compare it with the PE model, op by op.
    """
    R, C = int(rows), int(cols)
    ldw, mm = _check_ops(ops, R, C, dataflow)[:2]
    drain = R + C - 2
    ldw_t = np.zeros((len(ldw), 2), np.int64)
    mm_t = np.zeros((len(mm), 3), np.int64)
    j = -1                       # tile in use
    prev_mm = -1
    for op in ops:
        if op[0] == "ldw":
            j += 1
            start = 0 if j == 0 else ldw_t[j - 1, 1]
            if prev_mm >= 0:
                gate = mm_t[prev_mm, 0] if weight_double_buffer else mm_t[prev_mm, 2]
                start = max(start, gate)
            ldw_t[j] = (start, start + R)
        else:
            i = prev_mm + 1
            busy = int(op[2]) if dataflow != "os" else int(op[4])
            start = ldw_t[j, 1] if dataflow != "os" else 0
            if i > 0:
                start = max(start, mm_t[i - 1, 1])
                if dataflow == "os":
                    if weight_double_buffer:
                        start = max(start, mm_t[i - 1, 1] + R - busy)
                    else:
                        start = max(start, mm_t[i - 1, 2])
            mm_t[i] = (start, start + busy, start + busy + drain)
            prev_mm = i
    return TileTimes(ldw_t, mm_t)


def gemm_program(M: int, K: int, N: int, rows: int, cols: int, dataflow: str = "ws") -> list[tuple]:
    """The fold sequence simulate_pe runs for a GEMM, as a tile program (see
    :func:`simulate_tiles`): ws and is load each stationary tile and stream the whole other
    extent through it (n-tiles outer, k-tiles inner, so partial sums of one output tile are
    added into it in k order); os computes each output tile in turn over all of K."""
    R, C = rows, cols
    ops: list[tuple] = []
    if dataflow in ("ws", "is"):
        S, T = (N, M) if dataflow == "ws" else (M, N)
        for s0 in range(0, S, C):
            for k0 in range(0, K, R):
                ops.append(("ldw", k0, min(R, K - k0), s0, min(C, S - s0)))
                ops.append(("mm", 0, T))
    else:
        for m0 in range(0, M, R):
            for n0 in range(0, N, C):
                ops.append(("mm", m0, min(R, M - m0), 0, K, n0, min(C, N - n0)))
    return ops


def _check_ops(ops, R, C, dataflow, shape=None):
    """Validate a tile program; return (ldw int64[J,4], mm int64[I,3 or 6], ldw_prev_mm int64[J])."""
    _check_dataflow(dataflow)
    ldw, mm, prev = [], [], []
    last = None
    for n, op in enumerate(ops):
        kind = op[0] if len(op) else None
        if dataflow == "os":
            if kind != "mm" or len(op) != 7:
                raise InputError(f"ops[{n}]: {op!r} is not allowed (os programs are "
                                 "('mm', m0, ml, k0, kl, n0, nl) folds)")
            m0, ml, k0, kl, n0, nl = (int(x) for x in op[1:])
            if not (1 <= ml <= R and 1 <= nl <= C and kl >= 1 and min(m0, k0, n0) >= 0):
                raise InputError(f"ops[{n}]: {op!r} is not allowed (1 <= ml <= {R}, "
                                 f"1 <= nl <= {C}, kl >= 1, offsets >= 0)")
            if shape is not None and (m0 + ml > shape[0] or k0 + kl > shape[1] or n0 + nl > shape[2]):
                raise InputError(f"ops[{n}]: {op!r} reaches outside A {shape[0]}x{shape[1]} "
                                 f"@ W {shape[1]}x{shape[2]}")
            mm.append((m0, ml, k0, kl, n0, nl))
            continue
        if kind == "ldw" and len(op) == 5:
            k0, kl, s0, sl = (int(x) for x in op[1:])
            if not (1 <= kl <= R and 1 <= sl <= C and k0 >= 0 and s0 >= 0):
                raise InputError(f"ops[{n}]: {op!r} is not allowed (1 <= kl <= {R}, "
                                 f"1 <= width <= {C}, offsets >= 0)")
            if shape is not None and (k0 + kl > shape[1] or s0 + sl > shape[2]):
                raise InputError(f"ops[{n}]: {op!r} reaches outside the stationary operand")
            if last == "ldw":
                raise InputError(f"ops[{n}]: an LDW must be followed by an MM before the next LDW")
            ldw.append((k0, kl, s0, sl))
            prev.append(len(mm) - 1)
        elif kind == "mm" and len(op) == 3:
            t0, tl = int(op[1]), int(op[2])
            if not ldw:
                raise InputError(f"ops[{n}]: an MM needs an LDW before it")
            if tl < 1 or t0 < 0 or (shape is not None and t0 + tl > shape[0]):
                raise InputError(f"ops[{n}]: {op!r} is not allowed (rows t0 .. t0+tl-1 of the "
                                 "streamed operand, tl >= 1)")
            mm.append((t0, tl, len(ldw) - 1))
        else:
            raise InputError(f"ops[{n}]: {op!r} is not allowed (('ldw', k0, kl, s0, sl) or "
                             "('mm', t0, tl))")
        last = kind
    if not mm:
        raise InputError("ops: a program needs at least one MM")
    width = 6 if dataflow == "os" else 3
    return (np.array(ldw, np.int64).reshape(-1, 4), np.array(mm, np.int64).reshape(-1, width),
            np.array(prev, np.int64))


# ============================================================================================
# The PE-level model: Python entry points
# ============================================================================================

STATIONARY_PLANES = ("a", "a_tile", "w", "w_tile", "w_next", "w_next_tile", "psum")
"""Registers of a ws/is PE recorded by trace=True (tile ids: -1 empty, -2 a load in transit)."""
STATIONARY_EDGES = ("left", "left_tile", "top", "top_tile", "bottom", "bottom_tile")
OS_PLANES = ("a", "a_fold", "w", "acc")
"""Registers of an os PE recorded by trace=True (fold ids: -1 empty)."""
OS_EDGES = ("left", "left_fold", "top", "bus", "bus_row", "bus_fold")


@dataclass(frozen=True)
class Trace:
    """Register contents at the end of every cycle (trace=True).

    ``planes[name]`` is float64[cycles, R, C]; ``edges[name]`` is float64[cycles, R or C]: the
    values entering at the left and top edges in that cycle and the results leaving (ws/is: at
    the bottom; os: on the column buses). Tags are ids of tiles (ws, is) or folds (os), -1 for
    an empty slot.
    """

    planes: dict
    edges: dict


@dataclass(frozen=True)
class SystolicResult:
    """What :func:`simulate_pe` (and :func:`simulate_tiles`) return."""

    out: np.ndarray            # M x N result: int32 for integer types, else float32
    cycles: int                # from the first load cycle to the last result out
    useful_macs: int           # PE-cycles in which a real activation met a real weight
    folds: np.ndarray          # int64[F, 5]: ldw_start, ldw_end, mm_start, mm_accept_end, mm_end
    rows: int
    cols: int
    dataflow: str
    weight_double_buffer: bool
    input_dtype: str
    weight_dtype: str
    acc_dtype: str
    times: TileTimes = field(repr=False)
    trace: Trace | None = field(default=None, repr=False)

    @property
    def pe_updates(self) -> int:
        """PE-cycles stepped: rows * cols * cycles."""
        return self.rows * self.cols * self.cycles

    @property
    def utilisation(self) -> float:
        """Useful MACs over PE-cycles."""
        return self.useful_macs / self.pe_updates


def _as_matrix(name: str, x) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception:   # noqa: BLE001 - anything numpy cannot read is bad input
        raise InputError(f"{name}: not a numeric matrix") from None
    if arr.ndim != 2:
        raise InputError(f"{name}: a 2-D matrix is needed, got {arr.ndim} dimension(s) "
                         f"with shape {arr.shape}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer)
                                 or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name}: numbers are needed, got dtype {arr.dtype}")
    if 0 in arr.shape:
        raise InputError(f"{name}: shape {arr.shape} is not allowed (every size >= 1)")
    return arr


def _resolve_dtypes(a, input_dtype, weight_dtype, acc_dtype):
    if input_dtype is None:
        input_dtype = "int8" if np.issubdtype(a.dtype, np.integer) else "fp32"
    if weight_dtype is None:
        weight_dtype = input_dtype
    for name, v in (("input_dtype", input_dtype), ("weight_dtype", weight_dtype)):
        if v not in _dt.ARRAY_INPUT_DTYPES:
            raise InputError(f"{name}: {v!r} is not allowed (one of "
                             f"{', '.join(_dt.ARRAY_INPUT_DTYPES)})")
    if _dt.DTYPES[input_dtype].is_int != _dt.DTYPES[weight_dtype].is_int:
        raise InputError(f"weight_dtype: {weight_dtype!r} does not go with input_dtype "
                         f"{input_dtype!r} (both integer or both floating)")
    if acc_dtype is None:
        acc_dtype = "int32" if _dt.DTYPES[input_dtype].is_int else "fp32"
    if acc_dtype not in _dt.ACCUMULATOR_DTYPES:
        raise InputError(f"acc_dtype: {acc_dtype!r} is not allowed (one of "
                         f"{', '.join(_dt.ACCUMULATOR_DTYPES)})")
    for d in (input_dtype, weight_dtype):
        if not _dt.accumulator_ok(d, acc_dtype):
            allowed = "int32" if _dt.DTYPES[d].is_int else "a floating type at least as wide"
            raise InputError(f"acc_dtype: {acc_dtype!r} cannot accumulate {d} products "
                             f"(allowed: {allowed})")
    return input_dtype, weight_dtype, acc_dtype


def _operand(name: str, x: np.ndarray, dtype_name: str) -> np.ndarray:
    """float64 values of an operand in its datatype: integers must be exact; floats round."""
    d = _dt.DTYPES[dtype_name]
    if d.is_int:
        bad = _dt.check_representable(x, dtype_name)
        if bad is not None:
            idx = np.unravel_index(bad, x.shape)
            lo, hi = _dt.INT_RANGES[dtype_name]
            raise InputError(f"{name}[{idx[0]}, {idx[1]}] = {x[idx].item()!r} is not an {dtype_name} "
                             f"value (integers {lo} .. {hi})")
        return np.ascontiguousarray(x, dtype=np.float64)
    return np.ascontiguousarray(_dt.quantize(x, dtype_name), dtype=np.float64)


def _round_params(acc_dtype: str) -> tuple[int, int, int, float]:
    """(mode, precision, emin, max_finite) for the kernels' rounding: mode 0 exact (integers),
    1 fp32 (a float32 conversion), 2 any narrower float format."""
    if _dt.DTYPES[acc_dtype].is_int:
        return 0, 0, 0, 0.0
    if acc_dtype == "fp32":
        return 1, 24, -126, float(np.finfo(np.float32).max)
    f = _dt.FLOAT_FORMATS[acc_dtype]
    return 2, f.precision, f.emin, float(f.max_finite)


def simulate_pe(a, w, rows: int, cols: int, dataflow: str = "ws",
                weight_double_buffer: bool = False, trace: bool = False, *,
                input_dtype: str | None = None, weight_dtype: str | None = None,
                acc_dtype: str | None = None) -> SystolicResult:
    """Compute A (M x K) @ W (K x N) on a rows x cols array, stepping every PE every cycle.

    Returns the output (int32 for integer types, float32 holding accumulator-type values for
    floats), the cycle count, the PE-cycles that did a useful MAC, per-fold boundaries
    ``[ldw_start, ldw_end, mm_start, mm_accept_end, mm_end]`` and, with ``trace=True`` (at most
    :data:`TRACE_MAX_CELLS` PE-cycles), every register of every PE at the end of every cycle.

    Datatypes default by A's numpy type: integer arrays are int8 (accumulating in int32),
    floating arrays fp32 (accumulating in fp32). Integer operands must hold integers in range;
    floating operands are rounded to their datatype first. Bad arguments raise
    :class:`~tilesim.errors.InputError` with a one-line message.
    """
    a = _as_matrix("a", a)
    w = _as_matrix("w", w)
    if a.shape[1] != w.shape[0]:
        raise InputError(f"w: has {w.shape[0]} rows but a has K = {a.shape[1]} columns "
                         f"(A (M x K) @ W (K x N) needs them equal)")
    M, K = a.shape
    N = w.shape[1]
    R = _check_size("rows", rows, 4096)
    C = _check_size("cols", cols, 4096)
    _check_dataflow(dataflow)
    ops = gemm_program(M, K, N, R, C, dataflow)
    return simulate_tiles(a, w, ops, R, C, dataflow, weight_double_buffer, trace,
                          input_dtype=input_dtype, weight_dtype=weight_dtype, acc_dtype=acc_dtype)


def simulate_tiles(a, w, ops: Sequence[tuple], rows: int, cols: int, dataflow: str = "ws",
                   weight_double_buffer: bool = False, trace: bool = False, *,
                   input_dtype: str | None = None, weight_dtype: str | None = None,
                   acc_dtype: str | None = None, _force: TileTimes | None = None) -> SystolicResult:
    """Run a tile program on the PE-level model; the output accumulates ``out[...] += tile``.

    ws: ``("ldw", k0, kl, n0, nl)`` loads ``W[k0:k0+kl, n0:n0+nl]``; ``("mm", m0, ml)`` streams
    rows ``A[m0:m0+ml]`` (columns k0..k0+kl-1 of the loaded tile) and adds the products into
    ``out[m0:m0+ml, n0:n0+nl]``. is: the same in transposed roles, ``("ldw", k0, kl, m0, ml)``
    loads ``A[m0:m0+ml, k0:k0+kl]`` transposed and ``("mm", n0, nl)`` streams columns of W.
    os: ``("mm", m0, ml, k0, kl, n0, nl)`` accumulates ``A[m0:, k0:] @ W[k0:, n0:]`` tiles.
    Every LDW must be followed by at least one MM. ``folds`` of the result pairs each MM with
    the LDW it uses. ``_force`` is for tests only: start each op at the cycle given in its
    ``TileTimes`` (column 0; -1 = by the rules) instead of by the rules, to show that starting
    any op earlier than the rules allow breaks the model's physical checks.
    """
    a = _as_matrix("a", a)
    w = _as_matrix("w", w)
    if a.shape[1] != w.shape[0]:
        raise InputError(f"w: has {w.shape[0]} rows but a has K = {a.shape[1]} columns "
                         f"(A (M x K) @ W (K x N) needs them equal)")
    R = _check_size("rows", rows, 4096)
    C = _check_size("cols", cols, 4096)
    _check_dataflow(dataflow)
    if not isinstance(weight_double_buffer, (bool, np.bool_)):
        raise InputError(f"weight_double_buffer: {weight_double_buffer!r} is not allowed "
                         "(true or false)")
    input_dtype, weight_dtype, acc_dtype = _resolve_dtypes(a, input_dtype, weight_dtype,
                                                           acc_dtype)
    M, K = a.shape
    N = w.shape[1]
    av = _operand("a", a, input_dtype)
    wv = _operand("w", w, weight_dtype)
    mode, prec, emin, maxv = _round_params(acc_dtype)
    if dataflow == "ws":
        stream, stat, shape = av, wv, (M, K, N)
    elif dataflow == "is":
        stream, stat, shape = np.ascontiguousarray(wv.T), np.ascontiguousarray(av.T), (N, K, M)
    else:
        stream, stat, shape = av, wv, (M, K, N)
    ldw, mm, prev = _check_ops(ops, R, C, dataflow, shape)
    plan = schedule(ops, R, C, dataflow, bool(weight_double_buffer))
    bound = int(plan.cycles) + 2 * (R + C) + 16       # a safety stop, never reached when sound
    force_ldw = np.full(len(ldw), -1, np.int64)
    force_mm = np.full(len(mm), -1, np.int64)
    if _force is not None:
        force_ldw[:] = np.asarray(_force.ldw, np.int64).reshape(-1, 2)[:, 0]
        force_mm[:] = np.asarray(_force.mm, np.int64).reshape(-1, 3)[:, 0]
    n_trace = 0
    if trace:
        if R * C * bound > TRACE_MAX_CELLS:
            raise InputError(f"trace: {R}x{C} PEs over about {plan.cycles} cycles is too much "
                             f"to record (at most {TRACE_MAX_CELLS:,} PE-cycles); use a smaller "
                             "array or problem, or trace=False")
        n_trace = bound
    out = np.zeros((shape[0], shape[2]), np.float64)
    if dataflow == "os":
        planes = np.zeros((n_trace, len(OS_PLANES), R, C), np.float64)
        edges = np.zeros((n_trace, len(OS_EDGES), max(R, C)), np.float64)
        mm_t = np.full((len(mm), 3), -1, np.int64)
        cycles, useful, err = _os_kernel(stream, stat, out, mm, R, C, bool(weight_double_buffer),
                                         mode, prec, emin, maxv, bound, mm_t, planes, edges,
                                         force_mm)
        ldw_t = np.zeros((0, 2), np.int64)
    else:
        planes = np.zeros((n_trace, len(STATIONARY_PLANES), R, C), np.float64)
        edges = np.zeros((n_trace, len(STATIONARY_EDGES), max(R, C)), np.float64)
        ldw_t = np.full((len(ldw), 2), -1, np.int64)
        mm_t = np.full((len(mm), 3), -1, np.int64)
        cycles, useful, err = _stationary_kernel(stream, stat, out, ldw, mm, prev, R, C,
                                                 bool(weight_double_buffer), mode, prec, emin,
                                                 maxv, bound, ldw_t, mm_t, planes, edges,
                                                 force_ldw, force_mm)
    if err != 0:
        raise RuntimeError(f"PE model self-check failed: {_ERRORS.get(err, err)} "
                           f"({dataflow}, {R}x{C}, double buffer {weight_double_buffer}); "
                           "this is a bug in tilesim")
    if dataflow == "is":
        out = out.T
    if mode == 0:
        lo, hi = _dt.INT_RANGES["int32"]
        if out.size and (out.min() < lo or out.max() > hi):
            raise InputError(f"{acc_dtype} accumulator overflows: a result of "
                             f"{out.max() if out.max() > hi else out.min():.0f} is outside "
                             f"{lo} .. {hi}; use smaller values or a shorter K")
        out = out.astype(np.int32)
    else:
        out = out.astype(np.float32)
    if dataflow == "os":
        folds = np.stack([mm_t[:, 0], mm_t[:, 0], mm_t[:, 0], mm_t[:, 1], mm_t[:, 2]], axis=1)
    else:
        tile = mm[:, 2]
        folds = np.stack([ldw_t[tile, 0], ldw_t[tile, 1], mm_t[:, 0], mm_t[:, 1], mm_t[:, 2]],
                         axis=1)
    tr = None
    if trace:
        names, enames = (OS_PLANES, OS_EDGES) if dataflow == "os" else (STATIONARY_PLANES,
                                                                      STATIONARY_EDGES)
        tr = Trace({n: planes[:cycles, i] for i, n in enumerate(names)},
                   {n: edges[:cycles, i, :(R if n.startswith("left") else C)]
                    for i, n in enumerate(enames)})
    return SystolicResult(out, int(cycles), int(useful), folds, R, C, dataflow,
                          bool(weight_double_buffer), input_dtype, weight_dtype, acc_dtype,
                          TileTimes(ldw_t, mm_t), tr)


_ERRORS = {
    1: "did not finish within the cycle bound",
    2: "a PE switched to a shadow tile that was not the one its activation needs",
    3: "a weight load overwrote a shadow register its PE had not switched to yet",
    4: "a weight load shifted weights while activations were still in the array",
    5: "a result left the array for a different tile than its column expected",
    6: "two results met on a column output bus in the same cycle",
    7: "an activation entered before its tile was loaded",
    8: "a forced start time found its engine busy or already past",
}


# ============================================================================================
# The PE-level model: numba kernels. Everything they call is in this file (numba#1833), they
# read no module globals, and they allocate nothing per cycle.
# ============================================================================================


@njit(cache=True, inline="always")
def _rnd(x, mode, prec, emin, maxv):
    """Round a float64 to the accumulator format. mode 0: integers, exact; 1: fp32; 2: a
    format of ``prec`` significand bits, smallest normal exponent ``emin`` (nearest-even)."""
    if mode == 0:
        return x
    if mode == 1:
        return np.float64(np.float32(x))
    if x == 0.0 or x != x or x - x != 0.0:        # zero, NaN, infinity
        return x
    u = np.float64(x).view(np.uint64)             # sign | 11-bit exponent | 52-bit fraction
    e = np.int64((u >> np.uint64(52)) & np.uint64(0x7FF)) - 1023
    if e < emin:
        # below the smallest normal the quantum is fixed: adding and subtracting a constant
        # whose last bit is that quantum makes the float64 adder round to it (nearest-even)
        big = math.ldexp(1.5, emin - prec + 1 + 52)
        q = (x + big) - big
    else:
        # keep prec - 1 fraction bits: add just under half of the dropped part (plus one if the
        # kept part is odd, so a tie goes to even), then clear it; a carry bumps the exponent
        drop = np.uint64(53 - prec)
        one = np.uint64(1)
        u = (u + ((one << (drop - one)) - one + ((u >> drop) & one))) & ~((one << drop) - one)
        q = np.uint64(u).view(np.float64)
    if q > maxv:
        return math.inf
    if q < -maxv:
        return -math.inf
    return q


@njit(cache=True)
def _stationary_kernel(stream, stat, out, ldw, mm, ldw_prev_mm, R, C, double, mode, prec,
                       emin, maxv, max_cycles, ldw_t, mm_t, tr_planes, tr_edges, force_ldw,
                       force_mm):
    """ws/is array. stream: T x K rows fed at the left; stat: K x S tiles loaded from the top;
    out: T x S accumulates. ldw[j] = (k0, kl, s0, sl); mm[i] = (t0, tl, tile j). force_ldw[j] and
    force_mm[i] (>= 0) start that op at that cycle instead of by the rules.
    Returns (cycles, useful MACs, error code)."""
    J = ldw.shape[0]
    I = mm.shape[0]
    # --- PE registers. Column 0 of A/G is the left edge; row 0 of P is the zero at the top.
    A0 = np.zeros((R, C + 1))                     # activation registers (ping)
    A1 = np.zeros((R, C + 1))                     # (pong)
    G0 = np.full((R, C + 1), -1, np.int32)        # tile id each activation must meet, -1 empty
    G1 = np.full((R, C + 1), -1, np.int32)
    P = np.zeros((R + 1, C))                      # partial sums; P[r+1] is PE row r's register
    W = np.zeros((R, C))                          # active weight
    WR = np.zeros((R, C), np.uint8)               # 1 if that weight is a real tile element
    WT = np.full((R, C), -1, np.int32)            # tile id of the active weight
    WN = np.zeros((R, C))                         # shadow weight (double buffer)
    WNR = np.zeros((R, C), np.uint8)
    WNT = np.full((R, C), -1, np.int32)
    # --- feeders: the skew buffers hold what was issued in the last R (C) cycles
    ring_mm = np.full(R, -1, np.int64)            # MM issued at cycle t (slot t % R), -1 none
    ring_m = np.zeros(R, np.int64)                # which of its rows
    ring_ld = np.full(C, -1, np.int64)            # LDW row issued at cycle t (slot t % C)
    ring_jj = np.zeros(C, np.int64)
    # --- output collector: per column, the MM whose results arrive next and how many came
    col_mm = np.zeros(C, np.int64)
    col_cnt = np.zeros(C, np.int64)
    mm_got = np.zeros(I, np.int64)
    # --- controller
    next_j = 0
    next_i = 0
    ld_j = -1                                     # LDW issuing now, and since when
    ld_start = 0
    fd_i = -1                                     # MM feeding now
    fd_start = 0
    in_flight = 0                                 # real activations inside the array
    row_tile = np.full(R, -1, np.int64)           # newest tile whose activations entered row r
    row_switch_until = np.zeros(R, np.int64)      # PEs of row r may switch tiles before this
    done = 0
    useful = 0
    n_trace = tr_planes.shape[0]
    for t in range(max_cycles):
        Ao, An = (A0, A1) if t % 2 == 0 else (A1, A0)
        Go, Gn = (G0, G1) if t % 2 == 0 else (G1, G0)
        # ---- controller: start the next MM / LDW when the rules of the docstring allow (the
        # MM first: an LDW may start in the cycle the MM before it starts, never the reverse).
        # A start time in force_mm / force_ldw (>= 0) overrides the rules (tests use it).
        if next_i < I and force_mm[next_i] >= 0:
            if t > force_mm[next_i] or (t == force_mm[next_i] and fd_i >= 0):
                return t, useful, 8
        if fd_i < 0 and next_i < I:
            j = mm[next_i, 2]
            if force_mm[next_i] >= 0:
                ok = t == force_mm[next_i]
            else:
                ok = ldw_t[j, 0] >= 0 and ldw_t[j, 1] <= t
                if ok and next_i > 0:
                    ok = mm_t[next_i - 1, 1] <= t
            if ok:
                fd_i = next_i
                fd_start = t
                mm_t[fd_i, 0] = t
                mm_t[fd_i, 1] = t + mm[fd_i, 1]
                next_i += 1
        if next_j < J and force_ldw[next_j] >= 0:
            if t > force_ldw[next_j] or (t == force_ldw[next_j] and ld_j >= 0):
                return t, useful, 8
        if ld_j < 0 and next_j < J:
            p = ldw_prev_mm[next_j]
            if force_ldw[next_j] >= 0:
                ok = t == force_ldw[next_j]
            else:
                ok = next_j == 0 or ldw_t[next_j - 1, 1] <= t
                if ok and p >= 0:
                    if double:
                        ok = mm_t[p, 0] >= 0 and mm_t[p, 0] <= t
                    else:
                        ok = mm_t[p, 2] >= 0 and mm_t[p, 2] <= t
            if ok:
                ld_j = next_j
                ld_start = t
                ldw_t[ld_j, 0] = t
                ldw_t[ld_j, 1] = t + R
                next_j += 1
        # ---- activation feeder: issue one stream row into the skew buffer
        slot = t % R
        if fd_i >= 0:
            ring_mm[slot] = fd_i
            ring_m[slot] = t - fd_start
            if t - fd_start == mm[fd_i, 1] - 1:
                fd_i = -1
        else:
            ring_mm[slot] = -1
        # left edge: array row r takes element r of the row issued r cycles ago
        s = slot
        for r in range(R):
            i = ring_mm[s] if t - r >= 0 else -1
            if i >= 0:
                j = mm[i, 2]
                x = 0.0
                if r < ldw[j, 1]:
                    x = stream[mm[i, 0] + ring_m[s], ldw[j, 0] + r]
                Ao[r, 0] = x
                Go[r, 0] = j
                in_flight += 1
                if not double and WT[r, 0] != j:
                    return t, useful, 7           # its tile is not (all) in place yet
                if j != row_tile[r]:              # a new tile's first activation enters
                    row_tile[r] = j
                    row_switch_until[r] = t + C   # ... and crosses the row in C cycles
            else:
                Ao[r, 0] = 0.0
                Go[r, 0] = -1
            if Go[r, C] >= 0:
                in_flight -= 1                    # leaves at the right edge this cycle
            s = s - 1 if s > 0 else R - 1
        # ---- every PE, rows bottom-up so P[r] (the sum from above) is still last cycle's
        for r in range(R - 1, -1, -1):
            if double and t < row_switch_until[r]:
                # a PE switches to its shadow tile when that tile's first activation reaches
                # it (only possible while such an activation is crossing this row)
                for c in range(C):
                    g = Go[r, c]
                    if g >= 0 and g != WT[r, c]:
                        if WNT[r, c] != g:
                            return t, useful, 2
                        W[r, c] = WN[r, c]
                        WR[r, c] = WNR[r, c]
                        WT[r, c] = g
            if mode == 0:
                for c in range(C):
                    x = Ao[r, c]
                    g = Go[r, c]
                    An[r, c + 1] = x               # the activation moves one PE right
                    Gn[r, c + 1] = g
                    P[r + 1, c] = P[r, c] + x * W[r, c]   # the sum moves one PE down
                    useful += (g >= 0) * WR[r, c]
            else:
                for c in range(C):
                    x = Ao[r, c]
                    g = Go[r, c]
                    An[r, c + 1] = x
                    Gn[r, c + 1] = g
                    P[r + 1, c] = _rnd(P[r, c] + _rnd(x * W[r, c], mode, prec, emin, maxv),
                                       mode, prec, emin, maxv)
                    useful += (g >= 0) * WR[r, c]
        # ---- results leaving the bottom row
        for c in range(C):
            g = Gn[R - 1, c + 1]
            if g >= 0:
                i = col_mm[c]
                while col_cnt[c] == mm[i, 1]:     # that MM is complete in this column
                    i += 1
                    col_cnt[c] = 0
                col_mm[c] = i
                if mm[i, 2] != g:
                    return t, useful, 5
                j = g
                if c < ldw[j, 3]:
                    o_r = mm[i, 0] + col_cnt[c]
                    o_c = ldw[j, 2] + c
                    out[o_r, o_c] = _rnd(out[o_r, o_c] + P[R, c], mode, prec, emin, maxv)
                col_cnt[c] += 1
                mm_got[i] += 1
                if mm_got[i] == mm[i, 1] * C:
                    mm_t[i, 2] = t + 1
                    done += 1
        # ---- weight load: tiles enter at the top and move down one row per cycle
        top_v = 0.0
        if double:
            # the load of column c runs c cycles behind column 0; inside the shadow registers
            # a weight moves down only into rows the load has reached (rows 0..jj)
            sl = t % C
            if ld_j >= 0:
                ring_ld[sl] = ld_j
                ring_jj[sl] = t - ld_start
                if t - ld_start == R - 1:
                    ld_j = -1
            else:
                ring_ld[sl] = -1
            for c in range(C):
                s = (t - c + C) % C
                j = ring_ld[s] if t - c >= 0 else -1
                if j < 0:
                    if n_trace > 0 and t < n_trace:
                        tr_edges[t, 3, c] = -1
                    continue
                jj = ring_jj[s]
                if WNT[jj, c] != -1 and WNT[jj, c] != WT[jj, c]:
                    return t, useful, 3
                for r in range(jj, 0, -1):
                    WN[r, c] = WN[r - 1, c]
                    WNR[r, c] = WNR[r - 1, c]
                    WNT[r, c] = -2
                kr = R - 1 - jj                   # the tile row that enters now
                top_v = 0.0
                real = 0
                if kr < ldw[j, 1] and c < ldw[j, 3]:
                    top_v = stat[ldw[j, 0] + kr, ldw[j, 2] + c]
                    real = 1
                WN[0, c] = top_v
                WNR[0, c] = real
                WNT[0, c] = -2
                if jj == R - 1:
                    for r in range(R):
                        WNT[r, c] = j
                if n_trace > 0 and t < n_trace:
                    tr_edges[t, 2, c] = top_v
                    tr_edges[t, 3, c] = j
        else:
            if ld_j >= 0:
                if in_flight != 0:
                    return t, useful, 4
                jj = t - ld_start
                kr = R - 1 - jj
                j = ld_j
                for c in range(C):
                    for r in range(R - 1, 0, -1):
                        W[r, c] = W[r - 1, c]
                        WR[r, c] = WR[r - 1, c]
                        WT[r, c] = -2
                    top_v = 0.0
                    real = 0
                    if kr < ldw[j, 1] and c < ldw[j, 3]:
                        top_v = stat[ldw[j, 0] + kr, ldw[j, 2] + c]
                        real = 1
                    W[0, c] = top_v
                    WR[0, c] = real
                    WT[0, c] = -2
                    if n_trace > 0 and t < n_trace:
                        tr_edges[t, 2, c] = top_v
                        tr_edges[t, 3, c] = j
                if jj == R - 1:
                    for r in range(R):
                        for c in range(C):
                            WT[r, c] = j
                    ld_j = -1
            elif n_trace > 0 and t < n_trace:
                for c in range(C):
                    tr_edges[t, 3, c] = -1
        # ---- trace: the registers at the end of cycle t
        if n_trace > 0 and t < n_trace:
            for r in range(R):
                tr_edges[t, 0, r] = Ao[r, 0]
                tr_edges[t, 1, r] = Go[r, 0]
                for c in range(C):
                    tr_planes[t, 0, r, c] = An[r, c + 1]
                    tr_planes[t, 1, r, c] = Gn[r, c + 1]
                    tr_planes[t, 2, r, c] = W[r, c]
                    tr_planes[t, 3, r, c] = WT[r, c]
                    tr_planes[t, 4, r, c] = WN[r, c]
                    tr_planes[t, 5, r, c] = WNT[r, c]
                    tr_planes[t, 6, r, c] = P[r + 1, c]
            for c in range(C):
                tr_edges[t, 4, c] = P[R, c]
                tr_edges[t, 5, c] = Gn[R - 1, c + 1]
        if done == I:
            return t + 1, useful, 0
    return max_cycles, useful, 1


@njit(cache=True)
def _os_kernel(A, Wm, out, mm, R, C, overlap, mode, prec, emin, maxv, max_cycles, mm_t,
               tr_planes, tr_edges, force_mm):
    """os array. A: M x K enters at the left; Wm: K x N enters at the top; out: M x N.
    mm[i] = (m0, ml, k0, kl, n0, nl). Returns (cycles, useful MACs, error code)."""
    I = mm.shape[0]
    X0 = np.zeros((R, C + 1))                     # A values moving right (col 0: left edge)
    X1 = np.zeros((R, C + 1))
    G0 = np.full((R, C + 1), -1, np.int32)        # fold id, -1 empty
    G1 = np.full((R, C + 1), -1, np.int32)
    F0 = np.zeros((R, C + 1), np.uint8)           # bit 0: last pair of the fold, bit 1: real row
    F1 = np.zeros((R, C + 1), np.uint8)
    Y0 = np.zeros((R + 1, C))                     # W values moving down (row 0: top edge)
    Y1 = np.zeros((R + 1, C))
    YR0 = np.zeros((R + 1, C), np.uint8)          # 1: a real column of the tile
    YR1 = np.zeros((R + 1, C), np.uint8)
    ACC = np.zeros((R, C))
    bus_t = np.full(C, -1, np.int64)              # cycle the column bus last carried a result
    bus_v = np.zeros(C)
    bus_f = np.zeros(C, np.int64)
    bus_r = np.zeros(C, np.int64)
    L = max(R, C)
    ring_f = np.full(L, -1, np.int64)             # fold issued at cycle t (slot t % L)
    ring_k = np.zeros(L, np.int64)
    got = np.zeros(I, np.int64)
    n_last = np.zeros(R, np.int64)                # last-pair activations now in row r
    nxt = 0
    fd = -1
    fd_start = 0
    done = 0
    useful = 0
    n_trace = tr_planes.shape[0]
    for t in range(max_cycles):
        Xo, Xn = (X0, X1) if t % 2 == 0 else (X1, X0)
        Go, Gn = (G0, G1) if t % 2 == 0 else (G1, G0)
        Fo, Fn = (F0, F1) if t % 2 == 0 else (F1, F0)
        Yo, Yn = (Y0, Y1) if t % 2 == 0 else (Y1, Y0)
        YRo, YRn = (YR0, YR1) if t % 2 == 0 else (YR1, YR0)
        # ---- controller (a start time in force_mm, >= 0, overrides the rules; tests use it)
        if nxt < I and force_mm[nxt] >= 0:
            if t > force_mm[nxt] or (t == force_mm[nxt] and fd >= 0):
                return t, useful, 8
        if fd < 0 and nxt < I:
            if force_mm[nxt] >= 0:
                ok = t == force_mm[nxt]
            else:
                ok = True
                if nxt > 0:
                    ok = mm_t[nxt - 1, 1] <= t
                    if overlap:
                        ok = ok and t + mm[nxt, 3] >= mm_t[nxt - 1, 1] + R
                    else:
                        ok = ok and mm_t[nxt - 1, 2] >= 0 and mm_t[nxt - 1, 2] <= t
            if ok:
                fd = nxt
                fd_start = t
                mm_t[fd, 0] = t
                mm_t[fd, 1] = t + mm[fd, 3]
                nxt += 1
        slot = t % L
        if fd >= 0:
            ring_f[slot] = fd
            ring_k[slot] = t - fd_start
            if t - fd_start == mm[fd, 3] - 1:
                fd = -1
        else:
            ring_f[slot] = -1
        # ---- edges: row r takes A[m0+r, k0+k] r cycles late, column c takes W[k0+k, n0+c]
        s = slot
        for r in range(R):
            i = ring_f[s] if t - r >= 0 else -1
            if i >= 0:
                k = ring_k[s]
                real = r < mm[i, 1]
                Xo[r, 0] = A[mm[i, 0] + r, mm[i, 2] + k] if real else 0.0
                Go[r, 0] = i
                last = k == mm[i, 3] - 1
                Fo[r, 0] = (1 if last else 0) | (2 if real else 0)
                if last:
                    n_last[r] += 1
            else:
                Xo[r, 0] = 0.0
                Go[r, 0] = -1
                Fo[r, 0] = 0
            if Go[r, C] >= 0 and (Fo[r, C] & 1) == 1:
                n_last[r] -= 1                    # left at the right edge last cycle
            s = s - 1 if s > 0 else L - 1
        s = slot
        for c in range(C):
            i = ring_f[s] if t - c >= 0 else -1
            if i >= 0 and c < mm[i, 5]:
                Yo[0, c] = Wm[mm[i, 2] + ring_k[s], mm[i, 4] + c]
                YRo[0, c] = 1
            else:
                Yo[0, c] = 0.0
                YRo[0, c] = 0
            s = s - 1 if s > 0 else L - 1
        # ---- every PE: pass A right and W down, accumulate the pair that meets here
        for r in range(R):
            if mode == 0:
                for c in range(C):
                    x = Xo[r, c]
                    y = Yo[r, c]
                    g = Go[r, c]
                    f = Fo[r, c]
                    yr = YRo[r, c]
                    Xn[r, c + 1] = x
                    Gn[r, c + 1] = g
                    Fn[r, c + 1] = f
                    Yn[r + 1, c] = y
                    YRn[r + 1, c] = yr
                    ACC[r, c] = ACC[r, c] + x * y
                    useful += (g >= 0) * ((f >> 1) & 1) * yr
            else:
                for c in range(C):
                    x = Xo[r, c]
                    y = Yo[r, c]
                    g = Go[r, c]
                    f = Fo[r, c]
                    yr = YRo[r, c]
                    Xn[r, c + 1] = x
                    Gn[r, c + 1] = g
                    Fn[r, c + 1] = f
                    Yn[r + 1, c] = y
                    YRn[r + 1, c] = yr
                    ACC[r, c] = _rnd(ACC[r, c] + _rnd(x * y, mode, prec, emin, maxv),
                                     mode, prec, emin, maxv)
                    useful += (g >= 0) * ((f >> 1) & 1) * yr
            # a PE whose last pair of a fold just met puts its result on the column bus and
            # clears its accumulator (only possible while a last pair is crossing this row)
            if n_last[r] > 0:
                for c in range(C):
                    if Go[r, c] >= 0 and (Fo[r, c] & 1) == 1:
                        if bus_t[c] == t:
                            return t, useful, 6
                        bus_t[c] = t
                        bus_v[c] = ACC[r, c]
                        bus_f[c] = Go[r, c]
                        bus_r[c] = r
                        ACC[r, c] = 0.0
        # ---- the column buses deliver to the output buffer
        for c in range(C):
            if bus_t[c] == t:
                i = bus_f[c]
                r = bus_r[c]
                if r < mm[i, 1] and c < mm[i, 5]:
                    o_r = mm[i, 0] + r
                    o_c = mm[i, 4] + c
                    out[o_r, o_c] = _rnd(out[o_r, o_c] + bus_v[c], mode, prec, emin, maxv)
                got[i] += 1
                if got[i] == R * C:
                    mm_t[i, 2] = t + 1
                    done += 1
        if n_trace > 0 and t < n_trace:
            for r in range(R):
                tr_edges[t, 0, r] = Xo[r, 0]
                tr_edges[t, 1, r] = Go[r, 0]
                for c in range(C):
                    tr_planes[t, 0, r, c] = Xn[r, c + 1]
                    tr_planes[t, 1, r, c] = Gn[r, c + 1]
                    tr_planes[t, 2, r, c] = Yn[r + 1, c]
                    tr_planes[t, 3, r, c] = ACC[r, c]
            for c in range(C):
                tr_edges[t, 2, c] = Yo[0, c]
                on = bus_t[c] == t
                tr_edges[t, 3, c] = bus_v[c] if on else 0.0
                tr_edges[t, 4, c] = bus_r[c] if on else -1
                tr_edges[t, 5, c] = bus_f[c] if on else -1
        if done == I:
            return t + 1, useful, 0
    return max_cycles, useful, 1


# ============================================================================================
# Teaching: text traces
# ============================================================================================


def _fmt(v: float, width: int) -> str:
    if v != v:
        s = "nan"
    elif float(v).is_integer() and abs(v) < 10 ** (width - 1):
        s = str(int(v))
    else:
        s = f"{v:.{max(1, width - 4)}g}"
    return s.rjust(width)


def trace_table(res: SystolicResult, width: int = 4) -> str:
    """A cycle-by-cycle picture of every PE (PyMTL3-style line traces stacked as a grid).

    ws/is: each PE shows ``a*w+psum`` as ``a w p``: the activation it holds, its active weight
    (``wn`` the shadow weight when double-buffered) and the partial sum it passes down; ``.``
    marks an empty slot. Each row starts with the value entering at its left edge; the line
    under the grid lists the results leaving at the bottom. os: each PE shows ``a w acc``.
    """
    if res.trace is None:
        raise InputError("trace_table needs a result simulated with trace=True")
    tr = res.trace
    R, C = res.rows, res.cols
    lines = []
    dot = ".".rjust(width)
    for t in range(res.cycles):
        lines.append(f"cycle {t}" + _phase(res, t))
        if res.dataflow == "os":
            top = " ".join(_fmt(tr.edges["top"][t, c], width) for c in range(C))
            lines.append(f"{'W in':>{width + 4}} " + top)
            for r in range(R):
                cells = []
                for c in range(C):
                    if tr.planes["a_fold"][t, r, c] < 0:
                        cells.append(f"{dot} {dot} {_fmt(tr.planes['acc'][t, r, c], width)}")
                    else:
                        cells.append(" ".join(_fmt(tr.planes[n][t, r, c], width)
                                              for n in ("a", "w", "acc")))
                left = (_fmt(tr.edges["left"][t, r], width)
                        if tr.edges["left_fold"][t, r] >= 0 else dot)
                lines.append(f"r{r:<2} {left} > " + " | ".join(cells))
            outs = [(_fmt(tr.edges["bus"][t, c], width) + f"@r{int(tr.edges['bus_row'][t, c])}")
                    if tr.edges["bus_fold"][t, c] >= 0 else dot + "   " for c in range(C)]
            lines.append(f"{'bus':>{width + 4}}   " + "   ".join(outs))
        else:
            for r in range(R):
                cells = []
                for c in range(C):
                    a_s = (_fmt(tr.planes["a"][t, r, c], width)
                           if tr.planes["a_tile"][t, r, c] >= 0 else dot)
                    w_s = (_fmt(tr.planes["w"][t, r, c], width)
                           if tr.planes["w_tile"][t, r, c] != -1 else dot)
                    p_s = (_fmt(tr.planes["psum"][t, r, c], width)
                           if tr.planes["a_tile"][t, r, c] >= 0 else dot)
                    cell = f"{a_s} {w_s} {p_s}"
                    if res.weight_double_buffer:
                        wn = (_fmt(tr.planes["w_next"][t, r, c], width)
                              if tr.planes["w_next_tile"][t, r, c] != -1 else dot)
                        cell += f" {wn}"
                    cells.append(cell)
                left = (_fmt(tr.edges["left"][t, r], width)
                        if tr.edges["left_tile"][t, r] >= 0 else dot)
                lines.append(f"r{r:<2} {left} > " + " | ".join(cells))
            outs = [_fmt(tr.edges["bottom"][t, c], width) if tr.edges["bottom_tile"][t, c] >= 0
                    else dot for c in range(C)]
            lines.append(f"{'out':>{width + 4}}   " + "  ".join(outs))
    return "\n".join(lines)


def _phase(res: SystolicResult, t: int) -> str:
    """'  [load tile 0, stream tile 1]': what the controller is doing in cycle t."""
    what = []
    for f, (ls, le, ms, ma, me) in enumerate(res.folds):
        if res.dataflow != "os" and ls <= t < le:
            what.append(f"load tile {f}")
        if ms <= t < ma:
            what.append(f"feed {'fold' if res.dataflow == 'os' else 'tile'} {f}")
        elif ma <= t < me:
            what.append(f"drain {'fold' if res.dataflow == 'os' else 'tile'} {f}")
    return f"  [{', '.join(what)}]" if what else ""


def gemm_cycles_explained(M: int, K: int, N: int, rows: int, cols: int, dataflow: str = "ws",
                          weight_double_buffer: bool = False) -> str:
    """:func:`gemm_cycles` written out with its numbers, e.g.
    ``F x (2R + C + M - 2) = 1 x (2*4 + 4 + 4 - 2) = 14`` (for teaching output)."""
    total = gemm_cycles(M, K, N, rows, cols, dataflow, weight_double_buffer)
    F, T = fold_counts(M, K, N, rows, cols, dataflow)
    R, C = rows, cols
    t = {"ws": "M", "is": "N", "os": "K"}[dataflow]
    folds = {"ws": f"F = ceil(K/R) ceil(N/C) = {math.ceil(K / R)}*{math.ceil(N / C)} = {F}",
             "is": f"F = ceil(K/R) ceil(M/C) = {math.ceil(K / R)}*{math.ceil(M / C)} = {F}",
             "os": f"F = ceil(M/R) ceil(N/C) = {math.ceil(M / R)}*{math.ceil(N / C)} = {F}"}[dataflow]
    if dataflow == "os":
        if weight_double_buffer:
            s = (f"(F-1) max({t},R) + ({t} + R + C - 2) = {F - 1}*{max(T, R)} + "
                 f"({T} + {R} + {C} - 2)")
        else:
            s = f"F ({t} + R + C - 2) = {F}*({T} + {R} + {C} - 2)"
    elif weight_double_buffer:
        s = (f"R + (F-1) max({t},R) + ({t} + R + C - 2) = {R} + {F - 1}*{max(T, R)} + "
             f"({T} + {R} + {C} - 2)")
    else:
        s = f"F (2R + C + {t} - 2) = {F}*(2*{R} + {C} + {T} - 2)"
    return f"{s} = {total}   [{folds}]"
