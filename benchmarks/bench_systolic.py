"""Speed of the systolic-array models, and the same GEMMs through SCALE-Sim v3 side by side.

    python benchmarks/bench_systolic.py                 # everything quick (about a minute)
    python benchmarks/bench_systolic.py --no-scalesim   # tilesim only
    python benchmarks/bench_systolic.py --big           # + 512^3 on 8x8 in SCALE-Sim (~2 min)
                                                        #   and the decode GEMV at PE level

Prints medians (after a JIT warm-up) of:
  * PE-updates per second of simulate_pe on a 128x128 array (rows * cols * cycles / wall time),
    per dataflow and buffer setting, and for the floating-point paths;
  * gemm_cycles calls per second;
  * simulate_pe on 512^3 with an 8x8 array, and gemm_cycles on the 1x4096x4096 decode GEMV;
  * SCALE-Sim's wall time on the same GEMMs (benchmarks/scalesim_runner.py, run in SCALE-Sim's
    own virtual environment, created on first use: `pip install scalesim "numpy<2.4"`; it is
    never a tilesim dependency), the cycle counts side by side and the wall-time ratios.
Nothing here asserts a time; tests never depend on this file.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tilesim.arch.systolic import gemm_cycles, simulate_pe  # noqa: E402

DEFAULT_VENV = os.environ.get("SCALESIM_VENV", "/tmp/scalesim-venv")


def median_time(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def operands(M, K, N, seed=0, kind="int"):
    rng = np.random.default_rng(seed)
    if kind == "int":
        return rng.integers(-128, 128, (M, K)), rng.integers(-128, 128, (K, N))
    return rng.normal(size=(M, K)), rng.normal(size=(K, N))


def warm_up():
    for df in ("ws", "os", "is"):
        for db in (False, True):
            simulate_pe(np.ones((2, 2), int), np.ones((2, 2), int), 2, 2, df, db)
            simulate_pe(np.ones((2, 2)), np.ones((2, 2)), 2, 2, df, db, input_dtype="bf16",
                        acc_dtype="bf16")


def bench_pe_rate(repeat: int) -> None:
    print("== simulate_pe on a 128x128 array, A 512x512 @ W 512x512 (median of "
          f"{repeat}, after JIT warm-up)")
    print(f"{'dataflow':<9}{'buffer':<9}{'types':<22}{'cycles':>9}{'wall s':>9}"
          f"{'PE-updates/s':>15}")
    M = K = N = 512
    R = C = 128
    cases = [(df, db, "int8") for df in ("ws", "os", "is") for db in (False, True)]
    cases += [("ws", False, "bf16->fp32"), ("ws", False, "bf16->bf16")]
    for df, db, types in cases:
        if types == "int8":
            a, w = operands(M, K, N)
            kw = {}
        else:
            a, w = operands(M, K, N, kind="float")
            kw = {"input_dtype": "bf16", "acc_dtype": types.split("->")[1]}
        t, res = median_time(lambda: simulate_pe(a, w, R, C, df, db, **kw), repeat)
        types_s = "int8 x int8 -> int32" if types == "int8" else f"{types.split('->')[0]} -> {types.split('->')[1]}"
        print(f"{df:<9}{'double' if db else 'exposed':<9}{types_s:<22}{res.cycles:>9}{t:>9.3f}"
              f"{res.pe_updates / t:>15.3g}")


def bench_closed_form(repeat: int) -> None:
    rng = np.random.default_rng(1)
    shapes = [tuple(int(x) for x in rng.integers(1, 8192, 3)) for _ in range(1000)]
    n = 100

    def loop():
        for _ in range(n):
            for M, K, N in shapes:
                gemm_cycles(M, K, N, 128, 128, "ws", True)

    t, _ = median_time(loop, repeat)
    print(f"== gemm_cycles: {n * len(shapes) / t:,.0f} calls/s "
          f"({t / (n * len(shapes)) * 1e6:.2f} us per call, median of {repeat})")


def bench_big_cases(big: bool) -> dict:
    out = {}
    a, w = operands(512, 512, 512)
    t, res = median_time(lambda: simulate_pe(a, w, 8, 8), 1)
    ok = np.array_equal(res.out, a @ w)
    out[(8, 8, 512, 512, 512)] = t
    print(f"== 512^3 on 8x8 at PE level: {t:.3f} s, {res.cycles:,} cycles, "
          f"{res.pe_updates / t:.3g} PE-updates/s, equals numpy: {ok}")
    for rc in (4, 8, 32, 128, 256):
        t, cyc = median_time(lambda: gemm_cycles(1, 4096, 4096, rc, rc), 5)
        print(f"== decode GEMV 1x4096x4096 on {rc}x{rc}: gemm_cycles = {cyc:,} cycles "
              f"in {t * 1e6:.1f} us")
    if big:
        a, w = operands(1, 4096, 4096)
        t, res = median_time(lambda: simulate_pe(a, w, 128, 128), 1)
        print(f"== decode GEMV 1x4096x4096 on 128x128 at PE level: {t:.2f} s, "
              f"{res.cycles:,} cycles, {res.pe_updates / t:.3g} PE-updates/s, "
              f"equals numpy: {np.array_equal(res.out, a @ w)}")
    return out


def ensure_scalesim(venv: str) -> str:
    py = Path(venv) / "bin" / "python"
    if not py.exists():
        print(f"(creating SCALE-Sim's own environment in {venv}: pip install scalesim "
              "'numpy<2.4')", flush=True)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "scalesim", "numpy<2.4"],
                       check=True)
    return str(py)


def bench_scalesim(venv: str, big: bool, repeat: int) -> None:
    py = ensure_scalesim(venv)
    cases = [(128, 128, 128, 128, 128), (128, 128, 512, 512, 512), (32, 32, 128, 128, 128),
             (8, 8, 128, 128, 128), (32, 32, 512, 512, 512)]
    if big:
        cases.append((8, 8, 512, 512, 512))
    print("== the same GEMMs in SCALE-Sim v3 (ws, one run each; tilesim: median of "
          f"{repeat}). SCALE-Sim's count + 1 must equal tilesim's.")
    print(f"{'array':<9}{'M,K,N':<14}{'SCALE-Sim s':>12}{'PE model s':>12}{'closed form s':>15}"
          f"{'x PE model':>12}{'x closed':>12}  cycles (SCALE-Sim+1 / tilesim)")
    for R, C, M, K, N in cases:
        proc = subprocess.run([py, str(HERE / "scalesim_runner.py"), "ws", str(R), str(C),
                               f"{M},{K},{N}"], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{R}x{C:<6}{M},{K},{N}: SCALE-Sim failed: {proc.stderr.strip()[-200:]}")
            continue
        f = proc.stdout.strip().split(",")
        ss_cycles, ss_wall = int(f[8]) + 1, float(f[9])
        a, w = operands(M, K, N)
        t_pe, res = median_time(lambda: simulate_pe(a, w, R, C), repeat)
        t_cf, cyc = median_time(lambda: gemm_cycles(M, K, N, R, C), max(repeat, 5))
        print(f"{f'{R}x{C}':<9}{f'{M},{K},{N}':<14}{ss_wall:>12.3f}{t_pe:>12.4f}{t_cf:>15.2e}"
              f"{ss_wall / t_pe:>12.0f}{ss_wall / t_cf:>12.2e}  {ss_cycles} / {res.cycles}"
              f"{'' if ss_cycles == res.cycles == cyc else '  MISMATCH'}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--no-scalesim", action="store_true", help="skip the SCALE-Sim comparison")
    p.add_argument("--scalesim-venv", default=DEFAULT_VENV,
                   help=f"SCALE-Sim's virtual environment (default {DEFAULT_VENV}, or "
                        "$SCALESIM_VENV; created when missing)")
    p.add_argument("--big", action="store_true",
                   help="also 512^3 on 8x8 in SCALE-Sim (~2 min) and the decode GEMV at PE level")
    p.add_argument("--repeat", type=int, default=3, help="runs per median (default 3)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    warm_up()
    print(f"(JIT warm-up, or loading the numba cache: {time.perf_counter() - t0:.1f} s)")
    bench_pe_rate(args.repeat)
    bench_closed_form(args.repeat)
    bench_big_cases(args.big)
    if not args.no_scalesim:
        bench_scalesim(args.scalesim_venv, args.big, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
