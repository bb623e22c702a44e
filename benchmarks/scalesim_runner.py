"""Run GEMMs through SCALE-Sim v3 and print one CSV line per run (stdout).

This script runs inside SCALE-Sim's own virtual environment (``pip install scalesim
"numpy<2.4"``), never tilesim's: it imports nothing from tilesim. bench_systolic.py calls it
with that environment's python, and it was used to produce tests/data/scalesim_v3_os_is_small.csv.

    python scalesim_runner.py DATAFLOW ROWS COLS M,K,N [M,K,N ...]

Each GEMM is A[M,K] @ W[K,N]. Output columns: dataflow, rows, cols, M, K, N, total_cycles
(SCALE-Sim's "Total Cycles": the index of the last compute cycle, stalls included),
stall_cycles, no_stall (total_cycles - stall_cycles), wall_s (SCALE-Sim's run, this process).
The SRAMs are made large and the interface bandwidth is computed (CALC) so that runs do not
stall on memory; rows with stall_cycles > 0 say so.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
import tempfile
import time

CONFIG = """[general]
run_name = tilesim_check

[architecture_presets]
ArrayHeight: {rows}
ArrayWidth: {cols}
IfmapSramSzkB: 65536
FilterSramSzkB: 65536
OfmapSramSzkB: 65536
IfmapOffset: 0
FilterOffset: 100000000
OfmapOffset: 200000000
Dataflow: {dataflow}
ReadRequestBuffer: 32
WriteRequestBuffer: 32

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport: false
SparseRep: ellpack_block
OptimizedMapping: false
BlockSize: 8
RandomNumberGeneratorSeed: 40

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
"""


def run(dataflow: str, rows: int, cols: int, m: int, k: int, n: int) -> dict:
    from scalesim.scale_sim import scalesim

    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "tilesim.cfg")
        topo = os.path.join(d, "gemm.csv")
        layout = os.path.join(d, "layout.csv")
        with open(layout, "w") as f:      # custom layouts are off; SCALE-Sim still opens one
            f.write("Layer name,\n")
        with open(cfg, "w") as f:
            f.write(CONFIG.format(rows=rows, cols=cols, dataflow=dataflow))
        with open(topo, "w") as f:
            # SCALE-Sim's GEMM topology columns are Layer, M, N, K (it reads them in that order)
            f.write("Layer, M, N, K,\n")
            f.write(f"g, {m}, {n}, {k},\n")
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            s = scalesim(save_disk_space=True, verbose=False, config=cfg, topology=topo,
                         layout=layout, input_type_gemm=True)
            s.run_scale(top_path=d)
        wall = time.perf_counter() - t0
        report = next(p for p in (os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs)
                      if p.endswith("COMPUTE_REPORT.csv"))
        with open(report) as f:
            rows_ = list(csv.reader(f))
    head = [h.strip() for h in rows_[0]]
    vals = [v.strip() for v in rows_[1]]
    rec = dict(zip(head, vals))
    total = int(float(rec["Total Cycles"]))
    stall = int(float(rec["Stall Cycles"]))
    return {"dataflow": dataflow, "rows": rows, "cols": cols, "M": m, "K": k, "N": n,
            "total_cycles": total, "stall_cycles": stall, "no_stall": total - stall,
            "wall_s": round(wall, 3)}


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    dataflow, rows, cols = argv[0], int(argv[1]), int(argv[2])
    w = csv.writer(sys.stdout)
    for spec in argv[3:]:
        m, k, n = (int(x) for x in spec.split(","))
        r = run(dataflow, rows, cols, m, k, n)
        w.writerow(r.values())
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
