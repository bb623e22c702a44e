"""`tilesim systolic`: run one GEMM on the PE-level array and show every PE, every cycle."""
from __future__ import annotations

import argparse

import numpy as np

from tilesim.cli import print_json
from tilesim.dtypes import ACCUMULATOR_DTYPES, ARRAY_INPUT_DTYPES, DTYPES
from tilesim.errors import InputError

TABLE_MAX_PES = 64
"""The cycle-by-cycle table is printed for arrays of at most this many PEs (8x8)."""
TABLE_MAX_CYCLES = 400


def add_parser(sub) -> None:
    p = sub.add_parser(
        "systolic", help="run one GEMM on the PE-level systolic array (teaching)",
        description="Compute A (M x K) @ W (K x N) on a rows x cols systolic array, PE by PE, "
                    "and print the cycle count, the closed form it equals, the utilisation and "
                    "(for arrays up to 8x8) every PE's registers in every cycle.")
    p.add_argument("--config", metavar="CHIP",
                   help="take rows, cols, dataflow, datatypes and double buffering from a chip "
                        "config or preset (e.g. teach-4x4); other flags override it")
    p.add_argument("--rows", type=int, help="PE rows (default 4)")
    p.add_argument("--cols", type=int, help="PE columns (default 4)")
    p.add_argument("--m", type=int, help="rows of A (default 4, or from --a)")
    p.add_argument("--k", type=int, help="columns of A = rows of W (default 4, or from --a)")
    p.add_argument("--n", type=int, help="columns of W (default 4, or from --w)")
    p.add_argument("--dataflow", choices=("ws", "os", "is"), help="default ws")
    p.add_argument("--double-buffer", action=argparse.BooleanOptionalAction, default=None,
                   help="two weight registers per PE: load the next tile while this one streams")
    p.add_argument("--input-dtype", choices=ARRAY_INPUT_DTYPES, help="default int8")
    p.add_argument("--weight-dtype", choices=ARRAY_INPUT_DTYPES, help="default: the input type")
    p.add_argument("--acc-dtype", choices=ACCUMULATOR_DTYPES,
                   help="default int32 for integer inputs, else fp32")
    p.add_argument("--a", metavar="ROWS", help="A as text, rows separated by ';', e.g. '1 2; 3 4' "
                                             "(default: small random numbers)")
    p.add_argument("--w", metavar="ROWS", help="W as text, like --a")
    p.add_argument("--seed", type=int, default=0, help="seed for the random A and W (default 0)")
    p.add_argument("--animate", metavar="FILE", help="draw the run, one frame per cycle, into "
                                                    "FILE.gif (or .mp4 where ffmpeg exists)")
    p.add_argument("--no-table", action="store_true", help="omit the cycle-by-cycle table")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def parse_matrix(flag: str, text: str) -> np.ndarray:
    """'1 2; 3 4' (or '1,2;3,4') -> a 2-D float array; InputError names the flag."""
    rows = [r.replace(",", " ").split() for r in text.split(";") if r.strip()]
    if not rows:
        raise InputError(f"{flag}: {text!r} is empty (rows separated by ';', e.g. '1 2; 3 4')")
    if len({len(r) for r in rows}) != 1:
        raise InputError(f"{flag}: rows have {sorted({len(r) for r in rows})} entries; every "
                         "row needs the same number")
    try:
        return np.array([[float(x) for x in r] for r in rows])
    except ValueError as e:
        raise InputError(f"{flag}: {str(e).split(': ', 1)[-1]} is not a number") from None


def _settings(args) -> dict:
    s = {"rows": 4, "cols": 4, "dataflow": "ws", "weight_double_buffer": False,
         "input_dtype": "int8", "weight_dtype": None, "acc_dtype": None}
    if args.config:
        from tilesim import config
        sc = config.load(args.config).cores.systolic
        s.update(rows=sc.rows, cols=sc.cols, dataflow=sc.dataflow, input_dtype=sc.input_dtype,
                 weight_dtype=sc.weight_dtype, acc_dtype=sc.acc_dtype,
                 weight_double_buffer=sc.weight_double_buffer)
    for key, flag in (("rows", "rows"), ("cols", "cols"), ("dataflow", "dataflow"),
                      ("weight_double_buffer", "double_buffer"), ("input_dtype", "input_dtype"),
                      ("weight_dtype", "weight_dtype"), ("acc_dtype", "acc_dtype")):
        v = getattr(args, flag)
        if v is not None:
            s[key] = v
    if args.input_dtype and not args.weight_dtype:
        s["weight_dtype"] = args.input_dtype
    if args.input_dtype and not args.acc_dtype:
        s["acc_dtype"] = None          # the default for the new input type
    return s


def _operands(args, s) -> tuple[np.ndarray, np.ndarray]:
    a = parse_matrix("--a", args.a) if args.a else None
    w = parse_matrix("--w", args.w) if args.w else None
    dims = {}
    for name, given, from_mat in (("m", args.m, a.shape[0] if a is not None else None),
                                  ("k", args.k, a.shape[1] if a is not None else
                                   (w.shape[0] if w is not None else None)),
                                  ("n", args.n, w.shape[1] if w is not None else None)):
        if given is not None and from_mat is not None and given != from_mat:
            raise InputError(f"--{name}: {given} does not match the matrix given ({from_mat})")
        v = given if given is not None else (from_mat if from_mat is not None else 4)
        if v < 1:
            raise InputError(f"--{name}: {v} is not allowed (an integer >= 1)")
        dims[name] = v
    M, K, N = dims["m"], dims["k"], dims["n"]
    if a is not None and w is not None and a.shape[1] != w.shape[0]:
        raise InputError(f"--w: has {w.shape[0]} rows but --a has K = {a.shape[1]} columns "
                         "(A (M x K) @ W (K x N) needs them equal)")
    rng = np.random.default_rng(args.seed)
    is_int = DTYPES[s["input_dtype"]].is_int
    if a is None:
        a = rng.integers(-4, 5, (M, K)) if is_int else rng.integers(-8, 9, (M, K)) / 4
    if w is None:
        w = rng.integers(-4, 5, (K, N)) if is_int else rng.integers(-8, 9, (K, N)) / 4
    if is_int:        # integer text such as '3.0' is still an integer
        a = a.astype(np.int64) if np.all(a == np.round(a)) else a
        w = w.astype(np.int64) if np.all(w == np.round(w)) else w
    return a, w


def run(args) -> int:
    from tilesim.arch import systolic as sy

    s = _settings(args)
    for name in ("rows", "cols"):
        if s[name] < 1:
            raise InputError(f"--{name}: {s[name]} is not allowed (an integer >= 1)")
    a, w = _operands(args, s)
    M, K = a.shape
    N = w.shape[1]
    R, C = s["rows"], s["cols"]
    expect = sy.gemm_cycles(M, K, N, R, C, s["dataflow"], s["weight_double_buffer"])
    small = R * C <= TABLE_MAX_PES and expect <= TABLE_MAX_CYCLES
    want_trace = bool(args.animate) or (small and not args.no_table)
    res = sy.simulate_pe(a, w, R, C, s["dataflow"], s["weight_double_buffer"], trace=want_trace,
                         input_dtype=s["input_dtype"], weight_dtype=s["weight_dtype"],
                         acc_dtype=s["acc_dtype"])
    if args.animate:
        from tilesim.report.systolic_anim import animate
        animate(res, args.animate)
    explained = sy.gemm_cycles_explained(M, K, N, R, C, s["dataflow"], s["weight_double_buffer"])
    matches = None        # exact comparison is meaningful for integer types
    if DTYPES[res.acc_dtype].is_int:
        matches = bool(np.array_equal(res.out, np.asarray(a, np.int64) @ np.asarray(w, np.int64)))
    folds = [dict(zip(("ldw_start", "ldw_end", "mm_start", "mm_accept_end", "mm_end"),
                      (int(x) for x in f))) for f in res.folds]
    if args.json:
        out = {
            "rows": R, "cols": C, "dataflow": res.dataflow,
            "weight_double_buffer": res.weight_double_buffer, "input_dtype": res.input_dtype,
            "weight_dtype": res.weight_dtype, "acc_dtype": res.acc_dtype, "M": M, "K": K, "N": N,
            "cycles": res.cycles, "closed_form_cycles": expect, "closed_form": explained,
            "useful_macs": res.useful_macs, "pe_cycles": res.pe_updates,
            "utilisation": res.utilisation, "folds": folds,
            "a": np.asarray(a).tolist(), "w": np.asarray(w).tolist(), "out": res.out.tolist(),
            "equals_numpy": matches,
            "animation": args.animate or None,
        }
        if res.trace is not None:
            out["trace"] = {"planes": {k: v.tolist() for k, v in res.trace.planes.items()},
                            "edges": {k: v.tolist() for k, v in res.trace.edges.items()}}
        print_json(out)
        return 0
    buf = "double-buffered" if res.weight_double_buffer else "exposed"
    what = {"ws": "weight", "is": "input", "os": "output"}[res.dataflow]
    print(f"A {M}x{K} @ W {K}x{N} on a {R}x{C} {res.dataflow} array ({res.input_dtype} x "
          f"{res.weight_dtype} -> {res.acc_dtype}, {what}-stationary, {buf})")
    print(f"cycles       {res.cycles}   (closed form: {explained})")
    print(f"useful MACs  {res.useful_macs} of {res.pe_updates} PE-cycles: utilisation "
          f"{100 * res.utilisation:.1f}%")
    for f, d in enumerate(folds[:8]):
        load = (f"load {d['ldw_start']}-{d['ldw_end']}, " if res.dataflow != "os" else "")
        print(f"fold {f:<7} {load}feed {d['mm_start']}-{d['mm_accept_end']}, "
              f"last result out at {d['mm_end']}")
    if len(folds) > 8:
        print(f"... {len(folds) - 8} more folds")
    if res.trace is not None and not args.no_table:
        print()
        print(_legend(res))
        print(sy.trace_table(res))
    elif not args.no_table:
        print(f"(no cycle-by-cycle table: it is printed for arrays of at most {TABLE_MAX_PES} PEs "
              f"and {TABLE_MAX_CYCLES} cycles)")
    print()
    print("out = A @ W" + ("" if matches is None else
                          ("  (equals numpy's matmul)" if matches else "  (DIFFERS from numpy!)")))
    print(np.array2string(res.out, max_line_width=120, threshold=400))
    if args.animate:
        print(f"animation: {args.animate} ({res.cycles} frames, one per cycle)")
    return 0


def _legend(res) -> str:
    if res.dataflow == "os":
        return ("each PE: a w acc = the A value passing right, the W value passing down, its "
                "accumulator ('.' = empty). A row starts with the value entering at its left; "
                "'bus' lists results leaving on the column output buses (@r = from PE row r).")
    shadow = " wn" if res.weight_double_buffer else ""
    more = ", the shadow value being loaded" if res.weight_double_buffer else ""
    moving, held = (("a value of A", "its weight") if res.dataflow == "ws"
                    else ("a value of W", "its stationary value of A"))
    return (f"each PE: a w p{shadow} = {moving} passing right, {held}, the partial "
            f"sum passing down{more} ('.' = empty). A row starts with the value entering at its "
            "left; 'out' lists the sums leaving the bottom of each column.")
