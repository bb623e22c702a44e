"""How long `tilesim run` takes on the workloads issue 6 names, cold and warm JIT cache.

    python benchmarks/bench_run.py [--only NAME ...] [--repeats R] [--no-cold] [--json]

Workloads (each a `tilesim run ... --json` in a fresh process, so wall time includes Python
start-up, imports, loading the numba cache, compiling the tile programs and simulating):

- ``default``:        `tilesim run` with no arguments (llama-3-8b decode, batch 1, context
                      1024 on h100-like-hbm3); also run once with an empty numba cache (cold);
- ``prefill-2048``:   llama-3-8b prefill of 2048 tokens on h100-like-hbm3;
- ``70b-fp8-decode``: llama-3-70b decode, fp8 (e4m3) weights, batch 1, context 1024 on
                      h100-like-hbm3.

Prints the median wall seconds of ``--repeats`` warm runs, the cold run, and what each run
simulated (cycles, time per step, DRAM % of peak), so a speed-up that changed results shows.
Targets on a 2-core machine (issue 6): default warm < 10 s, prefill-2048 < 60 s. Speed is
reported here, never asserted in a test.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import _source_hash  # noqa: E402

WORKLOADS = {
    "default": [],
    "prefill-2048": ["--model", "llama-3-8b", "--phase", "prefill", "--context", "2048"],
    "70b-fp8-decode": ["--model", "llama-3-70b", "--weight-dtype", "fp8e4m3"],
}


def run_once(args: list[str], cache_dir: str) -> tuple[float, dict]:
    """Wall seconds and the --json summary of one `tilesim run` in a fresh process."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-c", "import sys; from tilesim.cli import main; sys.exit(main())"]
    out = subprocess.run([*cmd, "run", *args, "--json"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"tilesim run {' '.join(args)} failed:\n{out.stderr}")
    return wall, json.loads(out.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", choices=list(WORKLOADS), default=list(WORKLOADS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache default run")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    warm_cache = str(ROOT / ".numba_cache" / _source_hash())
    rows = []
    if "default" in a.only and not a.no_cold:
        with tempfile.TemporaryDirectory() as cold:
            wall, s = run_once([], cold)
        rows.append({"workload": "default (cold JIT cache)", "wall_s": wall, "summary": s})
    for name in a.only:
        run_once(WORKLOADS[name], warm_cache)          # fills the cache if it is empty
        walls, s = [], None
        for _ in range(a.repeats):
            wall, s = run_once(WORKLOADS[name], warm_cache)
            walls.append(wall)
        rows.append({"workload": f"{name} (warm, median of {a.repeats})",
                     "wall_s": statistics.median(walls), "summary": s})
    if a.json:
        print(json.dumps([{k: r[k] for k in ("workload", "wall_s")} | {
            "cycles": r["summary"]["cycles"], "seconds": r["summary"]["seconds"],
            "dram_pct_of_peak": r["summary"]["dram_pct_of_peak"]} for r in rows], indent=1))
        return 0
    print(f"{'workload':40s} {'wall s':>8s} {'simulated':>12s} {'DRAM % peak':>12s}")
    for r in rows:
        s = r["summary"]
        print(f"{r['workload']:40s} {r['wall_s']:8.1f} {s['seconds'] * 1e3:9.3f} ms "
              f"{s['dram_pct_of_peak']:11.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
