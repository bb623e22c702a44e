"""The systolic array: the PE-level model against numpy and against the closed forms, the
closed forms against SCALE-Sim v3, and the tile timing the chip uses against the PE model.

Two fidelities, one expectation: every shape is run through simulate_pe (which steps every PE)
and gemm_cycles / schedule (the formulas); results must equal numpy's matmul and the cycle
counts must equal each other. SCALE-Sim's counts come from ../shared/reference/
scalesim_v3_gemm_sweep.csv and tests/data/scalesim_v3_small.csv; SCALE-Sim prints the index of
the last cycle, so a count is its number plus one.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from tilesim import dtypes
from tilesim.arch import systolic as sy
from tilesim.arch.systolic import gemm_cycles, gemm_program, schedule, simulate_pe, simulate_tiles
from tilesim.errors import InputError

DATA = Path(__file__).resolve().parent.parent / "data"
BUFFERS = (False, True)


def _random_shapes(n: int, seed: int, max_mkn: int = 14, max_rc: int = 6):
    """Seeded shapes, with the corner cases first: M = 1, K < rows, N < cols, non-square
    arrays, 1-wide arrays, and sizes that fold many times."""
    fixed = [(1, 1, 1, 1, 1), (1, 7, 5, 4, 4), (4, 4, 4, 4, 4), (3, 2, 2, 5, 7), (9, 13, 11, 2, 3),
             (1, 20, 17, 3, 2), (6, 5, 4, 1, 6), (5, 6, 7, 6, 1), (2, 31, 29, 2, 2)]
    rng = np.random.default_rng(seed)
    extra = [tuple(int(x) for x in (*rng.integers(1, max_mkn + 1, 3), *rng.integers(1, max_rc + 1, 2)))
             for _ in range(n)]
    return fixed + extra


def _ints(rng, shape, dtype="int8"):
    lo, hi = dtypes.INT_RANGES[dtype]
    return rng.integers(lo, hi + 1, shape)


# ------------------------------------------------------------------------------------------
# The PE model equals numpy and the closed form
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("double", BUFFERS, ids=["exposed", "double"])
@pytest.mark.parametrize("dataflow", sy.DATAFLOWS)
def test_pe_model_equals_matmul_and_closed_form(dataflow, double):
    """For every shape: out == A @ W exactly, cycles == gemm_cycles == schedule, and the
    useful MACs are exactly M*K*N (each real activation meets each real weight once)."""
    rng = np.random.default_rng(1)
    for M, K, N, R, C in _random_shapes(60, seed=10 * sy.DATAFLOWS.index(dataflow) + double):
        a, w = _ints(rng, (M, K)), _ints(rng, (K, N))
        res = simulate_pe(a, w, R, C, dataflow, double)
        assert res.out.dtype == np.int32
        np.testing.assert_array_equal(res.out, a @ w)
        expect = gemm_cycles(M, K, N, R, C, dataflow, double)
        assert res.cycles == expect, (M, K, N, R, C)
        plan = schedule(gemm_program(M, K, N, R, C, dataflow), R, C, dataflow, double)
        assert plan.cycles == expect
        assert res.useful_macs == M * K * N
        assert res.utilisation == pytest.approx(M * K * N / (R * C * expect))
        F, _ = sy.fold_counts(M, K, N, R, C, dataflow)
        assert res.folds.shape == (F, 5)
        assert res.folds[-1, 4] == res.cycles


@pytest.mark.parametrize("dataflow", sy.DATAFLOWS)
def test_int4_and_extreme_int8_accumulate_exactly_in_int32(dataflow):
    rng = np.random.default_rng(2)
    a, w = _ints(rng, (5, 40), "int4"), _ints(rng, (40, 3), "int4")
    res = simulate_pe(a, w, 4, 3, dataflow, input_dtype="int4")
    np.testing.assert_array_equal(res.out, a @ w)
    # -128 * -128 summed 300 times: 4,915,200, far past int16 and exact in int32
    a = np.full((3, 300), -128)
    w = np.full((300, 2), -128)
    res = simulate_pe(a, w, 8, 2, dataflow)
    np.testing.assert_array_equal(res.out, np.full((3, 2), 300 * 16384))


@pytest.mark.slow
def test_int32_accumulator_overflow_is_an_error_not_a_wrap():
    K = 131073                       # 131073 * 16384 > 2**31 - 1
    with pytest.raises(InputError, match="int32 accumulator overflows"):
        simulate_pe(np.full((1, K), -128), np.full((K, 1), -128), 1024, 1)


def test_single_fold_costs_the_same_with_either_buffer_setting():
    for df in sy.DATAFLOWS:
        for M, K, N, R, C in [(4, 4, 4, 4, 4), (1, 3, 2, 4, 4), (7, 5, 3, 8, 8)]:
            if sy.fold_counts(M, K, N, R, C, df)[0] == 1:
                assert gemm_cycles(M, K, N, R, C, df, False) == gemm_cycles(M, K, N, R, C, df, True)


def test_double_buffering_hides_the_weight_load_when_streams_are_long():
    """M >= R: every fold after the first costs only its M stream cycles."""
    M, K, N, R, C = 64, 32, 32, 8, 8
    F = (K // R) * (N // C)
    exposed = gemm_cycles(M, K, N, R, C, "ws", False)
    double = gemm_cycles(M, K, N, R, C, "ws", True)
    assert exposed == F * (2 * R + C + M - 2)
    assert double == R + F * M + R + C - 2
    assert exposed - double == (F - 1) * (2 * R + C - 2)


def test_decode_gemv_is_load_bound_with_double_buffering():
    """M = 1 < R: each fold waits for its R-cycle weight load (the decode regime)."""
    R = C = 128
    F = (4096 // R) * (4096 // C)
    assert gemm_cycles(1, 4096, 4096, R, C, "ws", True) == R + (F - 1) * R + 1 + R + C - 2


# ------------------------------------------------------------------------------------------
# The closed form against SCALE-Sim v3
# ------------------------------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def test_gemm_cycles_equals_scalesim_sweep_plus_one():
    """Every row of scalesim_v3_gemm_sweep.csv (tests/data, a copy of ../shared/reference's; ws,
    exposed weight load), including the runs
    SCALE-Sim could not finish. For finished runs, compute_cycles_no_stall and formula_cycles
    are SCALE-Sim's last-cycle index, so the count is that plus one; pred_lines (the trace
    lines SCALE-Sim would write, one per cycle) is that count. Unfinished runs leave
    formula_cycles empty and keep the closed-form count in pred_lines."""
    rows = _read_csv(DATA / "scalesim_v3_gemm_sweep.csv")
    assert len(rows) == 45
    finished = unfinished = 0
    for r in rows:
        R, C, M, K, N = (int(r[k]) for k in ("rows", "cols", "M", "K", "N"))
        ours = gemm_cycles(M, K, N, R, C, "ws", False)
        if r["status"] == "ok":
            finished += 1
            assert int(r["compute_cycles_no_stall"]) == int(r["formula_cycles"])
            assert ours == int(r["compute_cycles_no_stall"]) + 1, r
        else:
            unfinished += 1
            assert r["formula_cycles"] == ""
        assert ours == int(r["pred_lines"]), r
    assert finished == 26 and unfinished == 19


SMALL = _read_csv(DATA / "scalesim_v3_small.csv")


def test_scalesim_small_reference_covers_all_dataflows_without_stalls():
    assert {r["dataflow"] for r in SMALL} == set(sy.DATAFLOWS)
    assert len(SMALL) == 180
    assert all(r["stall_cycles"] == "0" for r in SMALL)


@pytest.mark.parametrize("dataflow", sy.DATAFLOWS)
def test_closed_form_and_pe_model_equal_real_scalesim_runs(dataflow):
    """tests/data/scalesim_v3_small.csv: SCALE-Sim 3.0.0 on ws, os and is, square and
    non-square arrays; gemm_cycles and the PE model both equal its count plus one."""
    rng = np.random.default_rng(3)
    for r in (r for r in SMALL if r["dataflow"] == dataflow):
        R, C, M, K, N = (int(r[k]) for k in ("rows", "cols", "M", "K", "N"))
        expect = int(r["no_stall"]) + 1
        assert gemm_cycles(M, K, N, R, C, dataflow) == expect, r
        a, w = _ints(rng, (M, K)), _ints(rng, (K, N))
        res = simulate_pe(a, w, R, C, dataflow)
        assert res.cycles == expect, r
        np.testing.assert_array_equal(res.out, a @ w)


# ------------------------------------------------------------------------------------------
# Tile timing for the chip: LDW / MM composed by the rules == the PE model, op by op
# ------------------------------------------------------------------------------------------


def _random_program(rng, dataflow, R, C, T, K, S, n_tiles):
    ops = []
    if dataflow == "os":
        for _ in range(n_tiles):
            ml, nl = int(rng.integers(1, min(R, T) + 1)), int(rng.integers(1, min(C, S) + 1))
            kl = int(rng.integers(1, K + 1))
            ops.append(("mm", int(rng.integers(0, T - ml + 1)), ml, int(rng.integers(0, K - kl + 1)),
                        kl, int(rng.integers(0, S - nl + 1)), nl))
        return ops
    for _ in range(n_tiles):
        kl, sl = int(rng.integers(1, min(R, K) + 1)), int(rng.integers(1, min(C, S) + 1))
        ops.append(("ldw", int(rng.integers(0, K - kl + 1)), kl, int(rng.integers(0, S - sl + 1)), sl))
        for _ in range(int(rng.integers(1, 4))):          # 1 to 3 MMs reuse a loaded tile
            tl = int(rng.integers(1, T + 1))
            ops.append(("mm", int(rng.integers(0, T - tl + 1)), tl))
    return ops


def _program_reference(a, w, ops, dataflow):
    """What a tile program computes, tile by tile, in numpy (integers: exact)."""
    out = np.zeros((a.shape[0], w.shape[1]), np.int64)
    tile = None
    for op in ops:
        if dataflow == "os":
            _, m0, ml, k0, kl, n0, nl = op
            out[m0:m0 + ml, n0:n0 + nl] += a[m0:m0 + ml, k0:k0 + kl] @ w[k0:k0 + kl, n0:n0 + nl]
        elif op[0] == "ldw":
            tile = op[1:]
        else:
            k0, kl, s0, sl = tile
            t0, tl = op[1:]
            if dataflow == "ws":
                out[t0:t0 + tl, s0:s0 + sl] += a[t0:t0 + tl, k0:k0 + kl] @ w[k0:k0 + kl, s0:s0 + sl]
            else:    # is: the tile is A[s0:, k0:] transposed, the stream is W's columns t0..
                out[s0:s0 + sl, t0:t0 + tl] += a[s0:s0 + sl, k0:k0 + kl] @ w[k0:k0 + kl, t0:t0 + tl]
    return out


@pytest.mark.parametrize("double", BUFFERS, ids=["exposed", "double"])
@pytest.mark.parametrize("dataflow", sy.DATAFLOWS)
def test_ldw_mm_timing_composes_to_the_pe_models_per_op_boundaries(dataflow, double):
    """Random LDW/MM programs (several MMs per tile, partial tiles, any row counts): the
    per-instruction times that schedule() derives from ldw_cycles, mm_cycles and the overlap
    rules equal the PE model's, op by op, and the values equal numpy's."""
    rng = np.random.default_rng(4 + double)
    for _ in range(40):
        R, C = (int(x) for x in rng.integers(1, 6, 2))
        M, K, N = (int(x) for x in rng.integers(1, 12, 3))
        a, w = _ints(rng, (M, K)), _ints(rng, (K, N))
        T, S = {"ws": (M, N), "is": (N, M), "os": (M, N)}[dataflow]
        ops = _random_program(rng, dataflow, R, C, T, K, S, int(rng.integers(1, 5)))
        res = simulate_tiles(a, w, ops, R, C, dataflow, double)
        plan = schedule(ops, R, C, dataflow, double)
        np.testing.assert_array_equal(res.times.ldw, plan.ldw)
        np.testing.assert_array_equal(res.times.mm, plan.mm)
        np.testing.assert_array_equal(res.out, _program_reference(a, w, ops, dataflow))
        for (t0, accept_end, end), op in zip(plan.mm, (o for o in ops if o[0] == "mm")):
            if dataflow == "os":
                mc = sy.mm_cycles(op[2], op[4], op[6], R, C, dataflow)   # k = kl pairs
            elif dataflow == "ws":
                mc = sy.mm_cycles(op[2], 1, 1, R, C, dataflow)           # m = tl rows of A
            else:
                mc = sy.mm_cycles(1, 1, op[2], R, C, dataflow)           # n = tl columns of W
            assert (accept_end - t0, end - t0) == (mc.busy, mc.total)
        for s, e in plan.ldw:
            assert e - s == sy.ldw_cycles(1, 1, R, C, dataflow)


@pytest.mark.parametrize("double", BUFFERS, ids=["exposed", "double"])
@pytest.mark.parametrize("dataflow", sy.DATAFLOWS)
def test_gemm_fold_boundaries_follow_the_overlap_rules(dataflow, double):
    """simulate_pe's per-fold [ldw_start, ldw_end, mm_start, mm_accept_end, mm_end] are the
    rules of the module docstring applied fold after fold, in closed form."""
    M, K, N, R, C = 3, 10, 9, 4, 4
    res = simulate_pe(np.ones((M, K), int), np.ones((K, N), int), R, C, dataflow, double)
    F, T = sy.fold_counts(M, K, N, R, C, dataflow)
    drain = R + C - 2
    load = 0 if dataflow == "os" else R
    for f, (ls, le, ms, ma, me) in enumerate(res.folds):
        if double:
            start = load + f * max(T, R)
        else:
            start = load + f * (load + T + drain)
        assert (ms, ma, me) == (start, start + T, start + T + drain)
        if dataflow == "os":
            assert (ls, le) == (ms, ms)
        elif double:    # the next load starts as soon as the previous tile starts streaming
            assert ls == (0 if f == 0 else max(res.folds[f - 1, 1], res.folds[f - 1, 2]))
            assert le == ls + R
        else:           # the load waits for an empty array and the stream for the load
            assert (ls, le) == (ms - R, ms)


# ------------------------------------------------------------------------------------------
# Floating point: same-order reference, and close to matmul
# ------------------------------------------------------------------------------------------


def _rnd(x, acc):
    if acc == "fp32":
        return np.asarray(x, np.float64).astype(np.float32).astype(np.float64)
    return dtypes.round_to_format(x, dtypes.FLOAT_FORMATS[acc])


def _float_reference(a, w, R, dataflow, acc):
    """The PE model's order: ws/is add each k-fold's column sum (k ascending within the fold,
    each product and each sum rounded to acc) into the output; os accumulates all of K."""
    M, K = a.shape
    out = np.zeros((M, w.shape[1]))
    step = K if dataflow == "os" else R
    for k0 in range(0, K, step):
        psum = np.zeros_like(out)
        for k in range(k0, min(k0 + step, K)):
            psum = _rnd(psum + _rnd(np.outer(a[:, k], w[k]), acc), acc)
        out = _rnd(out + psum, acc)
    return out


@pytest.mark.parametrize("inp,acc", [("fp32", "fp32"), ("bf16", "fp32"), ("bf16", "bf16"),
                                     ("fp16", "fp16"), ("fp16", "fp32"), ("fp8e4m3", "fp16"),
                                     ("fp8e5m2", "bf16")])
@pytest.mark.parametrize("dataflow", sy.DATAFLOWS)
def test_float_accumulation_rounds_every_add_in_the_accumulator_type(dataflow, inp, acc):
    rng = np.random.default_rng(5)
    a, w = rng.normal(size=(6, 11)), rng.normal(size=(11, 5))
    res = simulate_pe(a, w, 4, 3, dataflow, True, input_dtype=inp, acc_dtype=acc)
    aq = dtypes.quantize(a, inp).astype(np.float64)
    wq = dtypes.quantize(w, inp).astype(np.float64)
    np.testing.assert_array_equal(res.out, _float_reference(aq, wq, 4, dataflow, acc))
    # and close to exact arithmetic on the quantised inputs: K additions of relative error
    # 2**-p each, on sums of |products| (a loose bound: 2 * K * eps * sum |a||w|)
    eps = 2.0 ** -dtypes.FLOAT_FORMATS[acc].precision
    bound = 2 * 11 * eps * (np.abs(aq) @ np.abs(wq))
    assert np.all(np.abs(res.out - aq @ wq) <= bound + 1e-30)


def test_float_default_is_fp32_and_matches_float32_matmul_closely():
    rng = np.random.default_rng(6)
    a, w = rng.normal(size=(9, 17)), rng.normal(size=(17, 8))
    res = simulate_pe(a, w, 8, 8)
    assert (res.input_dtype, res.acc_dtype, res.out.dtype) == ("fp32", "fp32", np.float32)
    np.testing.assert_allclose(res.out, a @ w, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Teaching trace: where each value is, when (the formulas a student checks by hand)
# ------------------------------------------------------------------------------------------


def test_ws_trace_puts_each_value_where_the_skew_says():
    """4x4 ws, exposed: the tile is in place after R load cycles; A[m, k] sits in PE(k, c)
    at cycle R + m + k + c; out[m, c] leaves column c at cycle R + m + (R - 1) + c."""
    R = C = M = K = N = 4
    a = np.arange(1, 17).reshape(4, 4)
    w = np.arange(-8, 8).reshape(4, 4)
    res = simulate_pe(a, w, R, C, "ws", trace=True)
    tr = res.trace
    assert tr.planes["a"].shape == (res.cycles, R, C) == (14, 4, 4)
    np.testing.assert_array_equal(tr.planes["w"][R - 1], w)
    for m in range(M):
        for k in range(K):
            for c in range(C):
                t = R + m + k + c
                assert tr.planes["a"][t, k, c] == a[m, k]
                assert tr.planes["a_tile"][t, k, c] == 0
        for c in range(N):
            t = R + m + R - 1 + c
            assert tr.edges["bottom"][t, c] == (a @ w)[m, c]
            assert tr.edges["bottom_tile"][t, c] == 0
    text = sy.trace_table(res)
    assert text.count("cycle ") == res.cycles
    assert "cycle 0  [load tile 0]" in text


def test_double_buffered_trace_switches_each_pe_when_the_new_tile_arrives():
    R = C = 2
    a = np.ones((3, 4), int)
    w = np.arange(1, 9).reshape(4, 2)
    res = simulate_pe(a, w, R, C, "ws", True, trace=True)
    tr = res.trace
    ms1 = res.folds[1, 2]
    for r in range(R):
        for c in range(C):
            t = ms1 + r + c                       # tile 1's first activation reaches PE(r, c)
            assert tr.planes["w_tile"][t - 1, r, c] == 0
            assert tr.planes["w_tile"][t, r, c] == 1
            assert tr.planes["w"][t, r, c] == w[2 + r, c]


def test_os_trace_accumulates_in_place_and_sends_results_on_the_column_bus():
    R = C = M = N = 3
    K = 4
    rng = np.random.default_rng(7)
    a, w = _ints(rng, (M, K), "int4"), _ints(rng, (K, N), "int4")
    res = simulate_pe(a, w, R, C, "os", trace=True, input_dtype="int4")
    tr = res.trace
    for r in range(R):
        for c in range(C):
            t = K - 1 + r + c                     # PE(r, c)'s last pair
            assert tr.edges["bus"][t, c] == (a @ w)[r, c]
            assert tr.edges["bus_row"][t, c] == r
            assert tr.planes["acc"][t - 1, r, c] == (a[r, :K - 1] @ w[:K - 1, c])
    assert res.cycles == K + R + C - 2
    assert "bus" in sy.trace_table(res)


# ------------------------------------------------------------------------------------------
# Bad input: one-line InputError naming the argument, the value and what is allowed
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call,match", [
    (lambda: simulate_pe(np.ones((2, 3)), np.ones((4, 2)), 4, 4), r"w: has 4 rows but a has K = 3"),
    (lambda: simulate_pe(np.ones((2, 3), int), np.ones((3, 2), int), 0, 4), r"rows: 0 is not allowed"),
    (lambda: simulate_pe(np.ones((2, 3), int), np.ones((3, 2), int), 4, -2), r"cols: -2 is not allowed"),
    (lambda: simulate_pe(np.ones((2, 3), int), np.ones((3, 2), int), 4, True), r"cols: True"),
    (lambda: simulate_pe(np.ones((2, 3), int), np.ones((3, 2), int), 4, 4, "xs"), r"dataflow: 'xs'"),
    (lambda: simulate_pe(np.ones((0, 3), int), np.ones((3, 2), int), 4, 4), r"a: shape \(0, 3\)"),
    (lambda: simulate_pe(np.ones(3, int), np.ones((3, 2), int), 4, 4), r"a: a 2-D matrix"),
    (lambda: simulate_pe([[1.5, 2]], [[1], [2]], 4, 4, input_dtype="int8"),
     r"a\[0, 0\] = 1.5 is not an int8 value \(integers -128 .. 127\)"),
    (lambda: simulate_pe([[1, 2]], [[1], [200]], 4, 4), r"w\[1, 0\] = 200 is not an int8 value"),
    (lambda: simulate_pe([[1, 2]], [[1], [8]], 4, 4, input_dtype="int4"), r"w\[1, 0\] = 8 is not an int4"),
    (lambda: simulate_pe([[1, 2]], [[1], [2]], 4, 4, input_dtype="int9"), r"input_dtype: 'int9'"),
    (lambda: simulate_pe([[1, 2]], [[1], [2]], 4, 4, acc_dtype="fp32"), r"acc_dtype: 'fp32' cannot"),
    (lambda: simulate_pe([[1.0]], [[1.0]], 4, 4, input_dtype="bf16", acc_dtype="int32"),
     r"acc_dtype: 'int32' cannot accumulate bf16"),
    (lambda: simulate_pe([[1]], [[1]], 4, 4, weight_dtype="bf16"), r"weight_dtype: 'bf16' does not go"),
    (lambda: simulate_pe([["x"]], [[1]], 4, 4), r"a: numbers are needed"),
    (lambda: simulate_pe(np.ones((128, 128), int), np.ones((128, 128), int), 128, 128, trace=True),
     r"trace: 128x128 PEs"),
    (lambda: gemm_cycles(0, 4, 4, 4, 4), r"M: 0 is not allowed"),
    (lambda: gemm_cycles(4, 4, 4, 4, 4, "wx"), r"dataflow: 'wx'"),
    (lambda: gemm_cycles(4, 2.5, 4, 4, 4), r"K: 2.5 is not allowed"),
    (lambda: sy.ldw_cycles(5, 4, 4, 4), r"k: 5 is not allowed \(an integer from 1 to 4\)"),
    (lambda: simulate_tiles([[1]], [[1]], [("mm", 0, 1)], 2, 2), r"ops\[0\]: an MM needs an LDW"),
    (lambda: simulate_tiles([[1]], [[1]], [("ldw", 0, 1, 0, 1), ("ldw", 0, 1, 0, 1)], 2, 2),
     r"ops\[1\]: an LDW must be followed by an MM"),
    (lambda: simulate_tiles([[1]], [[1]], [("ldw", 0, 3, 0, 1), ("mm", 0, 1)], 2, 2), r"ops\[0\]"),
])
def test_bad_input_is_a_one_line_input_error(call, match):
    with pytest.raises(InputError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------
# Larger checks (CI runs them; skip locally with -m "not slow")
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("dataflow", sy.DATAFLOWS)
def test_many_folds_on_a_large_array_stay_exact(dataflow):
    rng = np.random.default_rng(8)
    M, K, N, R, C = 70, 300, 260, 128, 96
    a, w = _ints(rng, (M, K)), _ints(rng, (K, N))
    for double in BUFFERS:
        res = simulate_pe(a, w, R, C, dataflow, double)
        np.testing.assert_array_equal(res.out, a @ w)
        assert res.cycles == gemm_cycles(M, K, N, R, C, dataflow, double)
        assert res.useful_macs == M * K * N


def test_closed_form_is_instant_for_a_decode_gemv():
    """SCALE-Sim cannot finish 1x4096x4096 in 5 minutes (scalesim_v3_gemm_sweep.csv)."""
    assert math.isclose(gemm_cycles(1, 4096, 4096, 128, 128), 392192)


@pytest.mark.parametrize("acc", ["fp16", "bf16", "fp32"])
def test_kernel_rounding_equals_the_dtypes_rounding(acc):
    """The kernels' bit-level rounding (_rnd) agrees with tilesim.dtypes.round_to_format on
    normals, subnormals, ties and overflow."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=3000) * np.exp2(rng.integers(-150, 130, 3000))
    fmt = dtypes.FLOAT_FORMATS[acc]
    grid = np.exp2(np.arange(fmt.emin - fmt.man_bits - 2, 20.0))
    ties = grid * (1 + 2.0 ** -fmt.precision) * np.array([1, 1.5])[:, None]   # halfway cases
    x = np.concatenate([x, ties.ravel(), -ties.ravel(), [fmt.max_finite * 1.0001, 0.0]])
    mode, prec, emin, maxv = sy._round_params(acc)
    got = np.array([sy._rnd(float(v), mode, prec, emin, maxv) for v in x])
    np.testing.assert_array_equal(got, dtypes.round_to_format(x, fmt))


@pytest.mark.parametrize("dataflow,double", [("ws", False), ("ws", True), ("is", False),
                                             ("is", True), ("os", True)])
def test_the_overlap_rules_are_tight_no_op_can_start_a_cycle_earlier(dataflow, double):
    """Forced to schedule()'s start times, the PE model gives the same cycles and values; forced
    to start any one LDW or MM one cycle earlier than the rules give, it fails one of its
    physical checks (a load disturbing activations still in the array, a stream meeting a tile
    not yet loaded, a load overwriting a shadow register before its PE switched, two os results
    on one bus) or finds that op's engine still busy. Exposed os is the exception: its
    one-fold-at-a-time rule is SCALE-Sim's policy, not a limit of the array."""
    rng = np.random.default_rng(11)
    for M, K, N, R, C in [(6, 8, 8, 4, 4), (2, 8, 8, 4, 4), (3, 9, 7, 3, 2), (8, 2, 8, 4, 4)]:
        a, w = _ints(rng, (M, K)), _ints(rng, (K, N))
        ops = gemm_program(M, K, N, R, C, dataflow)
        plan = schedule(ops, R, C, dataflow, double)
        res = simulate_tiles(a, w, ops, R, C, dataflow, double, _force=plan)
        assert res.cycles == plan.cycles
        np.testing.assert_array_equal(res.out, a @ w)
        for kind in ("ldw", "mm"):
            for k in range(len(getattr(plan, kind))):
                times = sy.TileTimes(plan.ldw.copy(), plan.mm.copy())
                getattr(times, kind)[k, 0] -= 1
                if getattr(times, kind)[k, 0] < 0:
                    continue
                with pytest.raises(RuntimeError, match="self-check failed"):
                    simulate_tiles(a, w, ops, R, C, dataflow, double, _force=times)
