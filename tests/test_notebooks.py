"""The teaching notebooks (notebooks/*.ipynb) run top to bottom, and what they show holds.

Each notebook runs in a fresh kernel (nbclient) whose environment is this process's plus:

* ``PYTHONPATH`` = this checkout, so the kernel imports the tilesim under test even where
  another copy is installed;
* ``TILESIM_NB_OUT`` = a temporary folder, where the notebook writes its figures and a JSON
  file of its key numbers;
* ``NUMBA_CACHE_DIR`` as conftest.py set it (keyed to the source), inherited, so kernels reuse
  the compiled engine instead of compiling it again.

The first test checks those three things from inside a kernel. The others check that each
notebook wrote its figures and that its numbers hold when recomputed independently here:
closed forms, a fresh simulation, the roofline, a brute-force Pareto front.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT_S = 600          # a cold JIT cache compiles the engine inside one cell (~70 s)


def kernel_env(out: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["TILESIM_NB_OUT"] = str(out)
    return env


def execute(nb, out: Path):
    """Run ``nb`` in place with the notebooks folder as the working directory."""
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env=kernel_env(out))
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert not errors, errors
    return nb


def stdout_of(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.output_type == "stream"
                   and o.name == "stdout")


def test_kernel_imports_this_checkout_and_shares_the_jit_cache(tmp_path):
    cell = ("import json, os, sys, tilesim\n"
            "print(json.dumps({'tilesim': tilesim.__file__, 'python': sys.executable,\n"
            "                  'cache': os.environ.get('NUMBA_CACHE_DIR'),\n"
            "                  'out': os.environ.get('TILESIM_NB_OUT'), 'cwd': os.getcwd()}))")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    seen = json.loads(stdout_of(execute(nb, tmp_path)))
    assert Path(seen["tilesim"]).resolve().is_relative_to(ROOT / "tilesim")
    assert seen["cache"] == os.environ["NUMBA_CACHE_DIR"]
    assert Path(seen["python"]).resolve() == Path(sys.executable).resolve()
    assert Path(seen["out"]) == tmp_path
    assert Path(seen["cwd"]).resolve() == NOTEBOOKS.resolve()


# ---- what each notebook must leave behind, and its numbers checked ------------------------


def check_01(out: Path) -> None:
    """Every cycle count the notebook took from the PE-level model equals the closed form."""
    from tilesim.arch.systolic import gemm_cycles

    r = json.loads((out / "01_systolic_array.json").read_text())
    records = r["pe_vs_closed_form"] + r["dataflows"]
    assert len(records) > 30
    for c in records:
        assert c["pe_cycles"] == gemm_cycles(c["M"], c["K"], c["N"], c["rows"], c["cols"],
                                             c["dataflow"], c["double_buffer"]), c
    for rows, u in r["utilisation_m1"].items():
        R = int(rows)
        assert u == pytest.approx(16 * R * R / (R * R * gemm_cycles(1, 4 * R, 4 * R, R, R,
                                                                       "ws", True)))


def check_02(out: Path) -> None:
    """The loop cycles the notebook shows are what the chip simulator gives; double buffering
    wins; the single-buffered run is the sum of its parts."""
    from tilesim import config
    from tilesim.arch import chip
    from tilesim.isa import assemble
    from tilesim.programs.examples import gemm_tile_loop

    r = json.loads((out / "02_double_buffering.json").read_text())
    s = r["shape"]
    cfg = config.load("teach-4x4")
    for layout, tiled in (("tiled", True), ("row_major", False)):
        d = r["loops"][layout]
        for slots, key in ((1, "single"), (2, "double")):
            prog = assemble(gemm_tile_loop(s["m"], s["k"], s["n"], s["tile_k"], slots,
                                           a_tiled=tiled), key)
            assert chip.run(prog, cfg).cycles == d[key]
        assert d["double"] < d["single"]
        assert d["single"] == d["single_predicted"]


def check_03(out: Path) -> None:
    """The chip's balance and knee from its config; no simulated batch beats the roofline;
    the step's parts add up."""
    from tilesim import config
    from tilesim.arch import dram
    from tilesim.dtypes import DTYPES
    from tilesim.programs.models import ModelSpec

    r = json.loads((out / "03_roofline_and_decode.json").read_text())
    cfg = config.load(r["chip"])
    bytes_per_cycle = dram.peak_gbps(cfg.memory) / cfg.clock_ghz
    assert r["ops_byte"] == pytest.approx(cfg.peak_macs_per_cycle / bytes_per_cycle)
    s = DTYPES[cfg.cores.systolic.weight_dtype].bits / 8
    assert r["knee_batch"] == pytest.approx(s * r["ops_byte"])
    spec = ModelSpec(**r["spec"])
    per_layer = sum(w.count * w.k * w.n for w in
                    spec.attention_weights() + spec.ffn_weights(spec.ffn_dim))
    elements = spec.n_layers * per_layer + spec.vocab_size * spec.d_model
    weight_bytes = elements * DTYPES[spec.weight_dtype].bits / 8
    assert len(r["rows"]) >= 5
    for row in r["rows"]:
        b = row["batch"]
        bound = max(weight_bytes / bytes_per_cycle, b * elements / cfg.peak_macs_per_cycle)
        assert row["weights"] >= bound, row
        assert row["weights"] + row["attention"] + row["other"] == row["cycles"]
        assert row["tokens_per_s"] == pytest.approx(b * cfg.clock_ghz * 1e9 / row["cycles"])


def check_04(out: Path) -> None:
    """The bandwidth ratio from the configs; the speed-ups from compare.json; the what-if run
    at the presets' own request size reproduces the compare run exactly."""
    from tilesim import config
    from tilesim.arch import dram

    r = json.loads((out / "04_gddr6_vs_hbm.json").read_text())
    g, h = (config.load(c) for c in r["chips"])
    assert r["bandwidth_ratio"] == pytest.approx(dram.peak_gbps(h.memory)
                                                 / dram.peak_gbps(g.memory))
    runs = json.loads((out / "04_compare" / "compare.json").read_text())
    assert sorted((x["config"], x["phase"]) for x in runs) == sorted(
        (c, p) for c in r["chips"] for p in ("prefill", "decode"))
    by = {(x["config"], x["phase"]): x for x in runs}
    for x in runs:
        assert x["error"] is None
        assert 0 < x["dram_gbps"] <= x["peak_dram_gbps"]
    for phase, key in (("prefill", "ttft_s"), ("decode", "tpot_s")):
        assert r["speedup"][phase] == pytest.approx(
            by[g.name, phase][key] / by[h.name, phase][key])
    preset_request = g.cores.dma.request_bytes
    for c in r["chips"]:
        assert r["whatif"][f"{c}|{preset_request}"] == by[c, "decode"]["tpot_s"]


def check_05(out: Path) -> None:
    """Every point ran; each front the report gives is exactly the set of points that no
    other point dominates (more tokens/s and less cost, one strictly)."""
    from tilesim import sweep

    r = json.loads((out / "05_design_space.json").read_text())
    rep = sweep.report(out / "05_design_space.db")
    assert rep["counts"]["ok"] == r["points"] >= 4
    assert rep["fronts"] == r["fronts"]
    for wl, fronts in rep["fronts"].items():
        rows = [x for x in rep["rows"] if x["workload"] == wl]
        for name, (col, _) in sweep.OBJECTIVES.items():
            def dominated(p):
                return any(q["tokens_per_s"] >= p["tokens_per_s"] and q[col] <= p[col]
                           and (q["tokens_per_s"] > p["tokens_per_s"] or q[col] < p[col])
                           for q in rows)
            assert set(fronts[name]) == {p["key"] for p in rows if not dominated(p)}
            assert fronts[name], name
    for ratios in r["effect"].values():
        assert ratios and all(math.isfinite(x) and x > 0 for x in ratios)


NOTEBOOK_CHECKS = {
    "01_systolic_array": (check_01, ["01_systolic_ws_4x4.gif", "01_utilisation_vs_m.png",
                                     "01_dataflows.png"]),
    "02_double_buffering": (check_02, ["02_timeline_single.png", "02_timeline_double.png",
                                       "02_single_vs_double.png"]),
    "03_roofline_and_decode": (check_03, ["03_roofline.png", "03_decode_vs_batch.png"]),
    "04_gddr6_vs_hbm": (check_04, ["04_hbm3_speedup.png", "04_compare/tpot_s.png"]),
    "05_design_space": (check_05, ["05_pareto/*.png"]),
}
SLOW = {"03_roofline_and_decode", "04_gddr6_vs_hbm", "05_design_space"}


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NOTEBOOK_CHECKS)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in NOTEBOOK_CHECKS])
def test_notebook_runs_and_its_numbers_hold(name, tmp_path):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    execute(nb, tmp_path)
    check, figures = NOTEBOOK_CHECKS[name]
    for pattern in figures:
        found = list(tmp_path.glob(pattern))
        assert found and all(f.stat().st_size > 1000 for f in found), pattern
    check(tmp_path)
