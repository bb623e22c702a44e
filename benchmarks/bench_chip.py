"""How fast the chip event loop simulates a large GEMM: instructions and DRAM bursts per second.

    python benchmarks/bench_chip.py [--config tpu-v4i-like] [--m M --k K --n N] [--cores C]
                                    [--repeats R] [--quick] [--timeline FILE.png] [--json]

The program is a weight-streaming GEMM C[M x N] (fp32) = A[M x K] @ W[K x N] in the array's
input type, built with ProgramBuilder. Core c owns N / C columns. It loads its A once, k-tile
by k-tile (dma2, or dma1 ahead of the stores on a chip with two DMA engines per core); then
for every (column tile j, k-tile t) dma0 streams the rows x cols weight tile W[t, j] from DRAM
into one of two SRAM slots while the matrix engine loads the other slot's tile (ldw) and
streams the M rows of A's k-tile t through it (mm), accumulating into one of two C tiles; dma1
stores a C tile as soon as its last k-tile is in. A, W and C are stored tiled in DRAM, as a
compiler would lay them out, so that every transfer is one contiguous run that the DRAM
address mapping spreads over all channels (row-major A or C would send the requests of one
tile to a few channels only).

It runs chip.run once to compile (or load the numba cache), then --repeats times, and prints the
median wall time of chip.run (validation, tables, the numba loop and statistics), simulated
instructions per wall-second, DMA requests and DRAM bursts (RD + WR commands) per wall-second,
and the simulated cycles next to three lower bounds they must respect: DRAM bytes / peak
bandwidth; MACs / (array size x cores); and bytes read (or written) / what the NoC links of the
memory controllers carry, memory_nodes x link_width_bytes per cycle. Speed is reported, never
asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if "NUMBA_CACHE_DIR" not in os.environ:      # the same source-hash cache the tests use
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import _source_hash  # noqa: E402
    os.environ["NUMBA_CACHE_DIR"] = str(ROOT / ".numba_cache" / _source_hash())

from tilesim import config  # noqa: E402
from tilesim.dtypes import DTYPES  # noqa: E402
from tilesim.isa.opcodes import Engine, Flag, Op  # noqa: E402
from tilesim.isa.program import ProgramBuilder  # noqa: E402


def gemm_program(cfg, M: int, K: int, N: int, cores: int):
    """The weight-streaming GEMM described in the module docstring, on ``cores`` cores."""
    sa = cfg.cores.systolic
    R, Cc = sa.rows, sa.cols
    dt_in, dt_acc = sa.input_dtype, sa.acc_dtype
    ib, ab = DTYPES[dt_in].bits // 8, DTYPES[dt_acc].bits // 8
    if K % R or N % (Cc * cores):
        raise SystemExit(f"K must be a multiple of {R} and N of {Cc * cores}")
    KT, NT = K // R, N // (Cc * cores)              # k-tiles; column tiles per core
    code_in, code_acc = DTYPES[dt_in].code, DTYPES[dt_acc].code
    engines = min(3, cfg.cores.dma.engines)
    if engines < 2:
        raise SystemExit(f"{cfg.name} has {engines} DMA engine per core; this program needs 2")
    b = ProgramBuilder(n_cores=cores, dma_engines=engines, name=f"gemm_ws_{M}x{K}x{N}")
    tile_a, tile_w, tile_c = M * R * ib, R * Cc * ib, M * Cc * ab
    a_dram, w_dram = 0, M * K * ib
    c_dram = w_dram + K * N * ib
    # DRAM, tiled so that every transfer is one contiguous run
    b.buffer("A", "dram", a_dram, dt_in, (KT, M, R))              # k-tile t: rows 0..M-1
    b.buffer("W", "dram", w_dram, dt_in, (N // Cc, KT, R, Cc))    # column tile j, k-tile t
    b.buffer("C", "dram", c_dram, dt_acc, (N // Cc, M, Cc))       # column tile j
    a_sram = 0
    w_sram = [KT * tile_a, KT * tile_a + tile_w]
    c_sram = [w_sram[1] + tile_w, w_sram[1] + tile_w + tile_c]
    if c_sram[1] + tile_c > cfg.cores.sram.size_bytes:
        raise SystemExit(f"{c_sram[1] + tile_c} B of SRAM per core needed, "
                         f"{cfg.cores.sram.size_bytes} available: lower --m or --k")
    dma_w, dma_c, dma_a = Engine.DMA, Engine.DMA + 1, Engine.DMA + engines - 1

    def run(count, elem_bytes):             # a contiguous run of ``count`` elements
        return dict(shape=(1, 1, 1, count), src_stride=(0, 0, 0, elem_bytes),
                    dst_stride=(0, 0, 0, elem_bytes))

    for c in range(cores):
        full = [b.sem(f"c{c}_full{s}") for s in (0, 1)]
        empty = [b.sem(f"c{c}_empty{s}") for s in (0, 1)]
        cdone = [b.sem(f"c{c}_cdone{p}") for p in (0, 1)]
        cfree = [b.sem(f"c{c}_cfree{p}") for p in (0, 1)]
        a_ready = b.sem(f"c{c}_a_ready")
        for t in range(KT):                  # A once, k-tile by k-tile; +1 a_ready each
            b.emit(c, dma_a, op=Op.LOAD, src_addr=a_dram + t * tile_a,
                   dst_addr=a_sram + t * tile_a, dtype=code_in, signal=[a_ready],
                   **run(M * R, ib))
        i = 0
        for j in range(NT):
            jg = c * NT + j                          # global column tile
            p, use_c = j % 2, j // 2
            for t in range(KT):
                s, use = i % 2, i // 2
                b.emit(c, dma_w, op=Op.LOAD, src_addr=w_dram + (jg * KT + t) * tile_w,
                       dst_addr=w_sram[s], dtype=code_in, **run(R * Cc, ib),
                       wait=[(empty[s], use)] if use else [], signal=[full[s]])
                b.emit(c, Engine.MATRIX, op=Op.LDW, src_addr=w_sram[s], k=R, n=Cc,
                       dtype=code_in, src_stride=(0, 0, Cc * ib, 0), wait=[(full[s], use + 1)])
                waits = []
                if j == 0:
                    waits.append((a_ready, t + 1))
                if t == 0 and use_c:
                    waits.append((cfree[p], use_c))
                signals = [empty[s]] + ([cdone[p]] if t == KT - 1 else [])
                b.emit(c, Engine.MATRIX, op=Op.MM, src_addr=a_sram + t * tile_a,
                       dst_addr=c_sram[p], m=M, k=R, n=Cc, dtype=code_in, dtype2=code_acc,
                       src_stride=(0, 0, R * ib, 0), dst_stride=(0, 0, Cc * ab, 0),
                       flags=int(Flag.ACCUMULATE) if t else 0, wait=waits, signal=signals)
                i += 1
            b.emit(c, dma_c, op=Op.STORE, src_addr=c_sram[p], dst_addr=c_dram + jg * tile_c,
                   dtype=code_acc, **run(M * Cc, ab), wait=[(cdone[p], use_c + 1)],
                   signal=[cfree[p]])
    return b.build()


def measure(cfg_name: str, M: int, K: int, N: int, cores: int, repeats: int,
            timeline: str | None) -> dict:
    from tilesim.arch import chip

    cfg = config.load(cfg_name)
    cores = cores or cfg.cores.count
    t0 = time.perf_counter()
    prog = gemm_program(cfg, M, K, N, cores)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    chip.run(prog, cfg)                                   # compile or load the numba cache
    first_s = time.perf_counter() - t0
    walls, stats = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        s = chip.run(prog, cfg)
        walls.append(time.perf_counter() - t0)
        if stats is not None:
            assert s.same_timing(stats), "two runs differ: the model is not deterministic"
        stats = s
    wall = statistics.median(walls)
    ctr = stats.dram.get("counters", {})
    bursts = ctr.get("RD", 0) + ctr.get("WR", 0)
    dma_req = sum(stats.dma_requests.values())
    dram_bytes = stats.dram_read_bytes + stats.dram_write_bytes
    peak = stats.dram.get("peak_gbps", 0.0)
    dram_bound = dram_bytes / peak * cfg.clock_ghz if peak else 0.0          # cycles
    sa = cfg.cores.systolic
    mac_bound = M * K * N / (sa.rows * sa.cols * cores)
    # read data leaves the memory controllers' routers through their injection links, written
    # data enters through their ejection links: one flit of link_width_bytes per cycle each
    mc_bytes_per_cycle = len(cfg.noc.memory_nodes) * cfg.noc.link_width_bytes
    noc_bound = max(stats.dram_read_bytes, stats.dram_write_bytes) / mc_bytes_per_cycle
    out = {"config": cfg.name, "M": M, "K": K, "N": N, "cores": cores,
           "instructions": stats.instructions, "cycles": stats.cycles,
           "simulated_us": stats.seconds * 1e6, "build_s": build_s, "first_run_s": first_s,
           "median_wall_s": wall, "walls_s": walls,
           "instructions_per_s": stats.instructions / wall,
           "dma_requests": dma_req, "dma_requests_per_s": dma_req / wall,
           "dram_bursts": bursts, "dram_bursts_per_s": bursts / wall,
           "dram_bytes": dram_bytes, "dram_gbps": dram_bytes / stats.seconds / 1e9,
           "dram_peak_gbps": peak, "dram_bound_cycles": dram_bound,
           "mac_bound_cycles": mac_bound, "noc_mc_bound_cycles": noc_bound,
           "noc_mc_gbps": mc_bytes_per_cycle * cfg.clock_ghz,
           "engine_busy_max_core": stats.engine_busy.max(axis=0).tolist()}
    if timeline:
        from tilesim.report.timeline import plot_timeline
        t0 = time.perf_counter()
        plot_timeline(stats, prog, timeline)
        out["timeline_s"] = time.perf_counter() - t0
        out["timeline"] = timeline
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="tpu-v4i-like")
    p.add_argument("--m", type=int, default=256, help="rows of A (default 256)")
    p.add_argument("--k", type=int, default=8192, help="default 8192")
    p.add_argument("--n", type=int, default=8192, help="default 8192")
    p.add_argument("--cores", type=int, default=0, help="default: every core of the chip")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="K = N = 2048, 3 repeats")
    p.add_argument("--timeline", metavar="FILE.png", help="also draw the timeline and time it")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.k, args.n, args.repeats = 2048, 2048, 3
    r = measure(args.config, args.m, args.k, args.n, args.cores, args.repeats, args.timeline)
    if args.json:
        json.dump(r, sys.stdout, indent=2)
        print()
        return 0
    print(f"chip loop speed: weight-streaming GEMM {r['M']}x{r['K']}x{r['N']} on "
          f"{r['config']} ({r['cores']} cores), median of {args.repeats} runs after warm-up")
    print(f"  program        {r['instructions']} instructions (built in {r['build_s']:.2f} s); "
          f"first run {r['first_run_s']:.1f} s (JIT compile or cache load)")
    print(f"  wall           {r['median_wall_s']:.3f} s per run "
          f"(min {min(r['walls_s']):.3f}, max {max(r['walls_s']):.3f})")
    print(f"  instructions   {r['instructions_per_s'] / 1e3:10.1f} k/s")
    print(f"  DMA requests   {r['dma_requests_per_s'] / 1e6:10.3f} M/s  ({r['dma_requests']} "
          f"requests)")
    print(f"  DRAM bursts    {r['dram_bursts_per_s'] / 1e6:10.3f} M/s  ({r['dram_bursts']} "
          f"RD + WR)")
    print(f"  simulated      {r['cycles']} cycles = {r['simulated_us']:.1f} us; DRAM "
          f"{r['dram_bytes'] / 2**20:.1f} MiB at {r['dram_gbps']:.1f} GB/s of "
          f"{r['dram_peak_gbps']:.1f} peak")
    bound = max(r["dram_bound_cycles"], r["mac_bound_cycles"], r["noc_mc_bound_cycles"])
    print(f"  lower bounds   DRAM peak {r['dram_bound_cycles']:.0f} cycles, MACs "
          f"{r['mac_bound_cycles']:.0f}, NoC links at the memory controllers "
          f"{r['noc_mc_bound_cycles']:.0f} ({r['noc_mc_gbps']:.0f} GB/s): simulated / max = "
          f"{r['cycles'] / bound:.2f}")
    if "timeline_s" in r:
        print(f"  timeline       {r['timeline']} drawn in {r['timeline_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
