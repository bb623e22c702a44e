"""How fast the DRAM model simulates: requests per wall-second, per standard and pattern.

    python benchmarks/bench_dram.py [--requests N] [--repeats K] [--json]

For each standard (one device) and pattern (64 B requests: streaming reads, random reads,
a 50/50 read/write stream, and same-bank strided reads), it runs the standalone driver K
times after a JIT warm-up and prints the median simulated requests and bursts per second of
the numba run (trace building and statistics excluded), the bandwidth simulated, and what a
decode step of an 8B-parameter model, 16 GB = 250 M 64-byte requests, would take at the
streaming rate. DRAMsim3 (C++) manages 0.06-0.52 M requests per second on such runs
(dram_standards.md, "Simulator speed"). Speed is reported, never asserted: tests do not time.
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

from tilesim.arch.dram import model, patterns  # noqa: E402

STANDARDS = ("ddr3", "hbm2", "hbm2e", "hbm3", "gddr6", "hbm2_dramsim3")
PATTERNS = (("stream reads", "stream", 1.0), ("random reads", "random", 1.0),
            ("stream 50/50 R/W", "stream", 0.5), ("same-bank strided", "strided", 1.0))
DECODE_REQUESTS = 16e9 / 64
DRAMSIM3_REQ_PER_S = (0.06e6, 0.52e6)


def measure(name: str, pattern: str, frac: float, n: int, repeats: int) -> dict:
    s = model.build(model.memory(name))
    cap = s.n_channels * s.std.channel_bytes
    stride = s.std.row_bytes * s.std.banks * s.n_channels
    addr, w = patterns.make(pattern, n, 64, cap, frac, stride=stride, seed=1)
    model.simulate(s, addr[:1000], 64, w[:1000])                   # JIT warm-up
    walls, last = [], None
    for _ in range(repeats):
        last = model.simulate(s, addr, 64, w)
        walls.append(last.wall_s)
    wall = statistics.median(walls)
    bursts = last.counter("RD") + last.counter("WR")
    return {"standard": name, "pattern": pattern, "read_fraction": frac, "requests": n,
            "median_wall_s": wall, "requests_per_s": n / wall, "bursts_per_s": bursts / wall,
            "simulated_gbps": last.bandwidth_gbps, "percent_of_peak":
            100 * last.bandwidth_gbps / s.peak_gbps, "service_calls": last.events}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=1 << 19)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = []
    t0 = time.perf_counter()
    for name in STANDARDS:
        for label, pattern, frac in PATTERNS:
            r = measure(name, pattern, frac, args.requests, args.repeats)
            r["label"] = label
            rows.append(r)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print(f"DRAM model speed: medians of {args.repeats} runs of {args.requests} x 64 B "
          f"requests, one device, after JIT warm-up (one core)")
    print(f"{'standard':14s} {'pattern':18s} {'M req/s':>8s} {'M bursts/s':>10s} "
          f"{'sim GB/s':>9s} {'% peak':>7s}")
    for r in rows:
        print(f"{r['standard']:14s} {r['label']:18s} {r['requests_per_s'] / 1e6:8.2f} "
              f"{r['bursts_per_s'] / 1e6:10.2f} {r['simulated_gbps']:9.1f} "
              f"{r['percent_of_peak']:7.1f}")
    stream = [r for r in rows if r["label"] == "stream reads"]
    worst = min(stream, key=lambda r: r["requests_per_s"])
    best = max(stream, key=lambda r: r["requests_per_s"])
    print()
    print(f"streaming reads: {worst['requests_per_s'] / 1e6:.2f} ({worst['standard']}) to "
          f"{best['requests_per_s'] / 1e6:.2f} ({best['standard']}) M requests/s; "
          f"DRAMsim3: {DRAMSIM3_REQ_PER_S[0] / 1e6:.2f}-{DRAMSIM3_REQ_PER_S[1] / 1e6:.2f}")
    for r in stream:
        print(f"  decode step of an 8B model (16 GB = 250 M x 64 B) on {r['standard']:13s}: "
              f"{DECODE_REQUESTS / r['requests_per_s']:6.1f} s of wall time")
    print(f"(benchmark took {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
