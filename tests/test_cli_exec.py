"""`tilesim exec` and the timeline: the report equals RunStats, functional runs equal numpy,
the Gantt chart is drawn, and every bad input is one line with exit status 2."""
from __future__ import annotations

import json
import re
import types
from pathlib import Path

import numpy as np
import pytest

from tilesim.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "tilesim" / "programs" / "examples" / "gemm_double_buffered.tasm")
CHIP = "teach-4x4"


@pytest.fixture(scope="module")
def direct():
    """(program, RunStats) of the example from chip.run itself; also the one JIT warm-up."""
    from tilesim import config
    from tilesim.arch import chip
    from tilesim.isa import assemble

    program = assemble(Path(EXAMPLE).read_text(), EXAMPLE)
    return program, chip.run(program, config.load(CHIP))


def run(capsys, *argv):
    code = main(["exec", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_report_equals_runstats(capsys, direct):
    program, stats = direct
    code, out, err = run(capsys, EXAMPLE, "--config", CHIP, "--json")
    assert code == 0 and not err
    d = json.loads(out)
    assert d["cycles"] == stats.cycles > 0
    assert d["seconds"] == pytest.approx(stats.cycles / 1e9)       # teach-4x4 runs at 1 GHz
    assert d["instructions"] == len(program.instrs)
    names = ["matrix", "vector"] + [f"dma{i}" for i in range(program.dma_engines)]
    assert d["engine_busy"] == [dict(zip(names, map(int, row))) for row in stats.engine_busy]
    for row in d["engine_busy"]:
        assert all(0 <= v <= d["cycles"] for v in row.values())
    assert d["engine_busy"][0]["matrix"] > 0 and d["engine_busy"][0]["vector"] == 0
    for row, util in zip(d["engine_busy"], d["engine_utilisation"]):
        assert util == {k: pytest.approx(v / d["cycles"]) for k, v in row.items()}
    assert d["dram_read_bytes"] == stats.dram_read_bytes == 16 * 16 + 16 * 4    # A and B, int8
    assert d["dram_write_bytes"] == stats.dram_write_bytes == 16 * 4 * 4         # C, int32
    assert d["dram_gbps"] == pytest.approx(
        (d["dram_read_bytes"] + d["dram_write_bytes"]) / d["seconds"] / 1e9)
    assert d["dram_peak_gbps"] == stats.dram["peak_gbps"]
    assert d["dram_percent_of_peak"] == pytest.approx(100 * d["dram_gbps"] / d["dram_peak_gbps"])
    assert d["dram_commands"] == stats.dram["counters"]
    assert d["noc_flit_hops"] == stats.noc_flit_hops
    assert d["noc_injected_flits"] == d["noc_ejected_flits"] == stats.noc_injected_flits
    assert d["dma_requests"] == stats.dma_requests
    assert d["macs"] == {"int8": 16 * 16 * 4}                                    # M * K * N
    assert d["mac_utilisation"] == pytest.approx(16 * 16 * 4 / (4 * 4 * d["cycles"]))
    assert d["energy_pj"] == pytest.approx(stats.energy_pj)
    assert sum(d["energy_pj"].values()) == pytest.approx(d["energy_total_pj"])
    assert sum(d["energy_percent"].values()) == pytest.approx(100)
    assert d["energy_table"] == stats.energy_table


def test_text_report_names_every_part(capsys, direct):
    _, stats = direct
    code, out, err = run(capsys, EXAMPLE, "--config", CHIP)
    assert code == 0 and not err
    assert f"cycles       {stats.cycles} at 1 GHz = {stats.cycles} ns" in out
    busy = stats.engine_busy[0]
    assert f"matrix {busy[0]} ({100 * busy[0] / stats.cycles:.1f} %)" in out
    assert "vector" not in out.split("DMA requests")[0]          # empty queues are left out
    for word in ("DMA requests load", "% of 12.8 GB/s peak", "flit-hops", "int8 1024",
                 "energy", "dram", "static"):
        assert word in out, word
    assert "static     not modelled" in out          # its table cites no static power


def test_timeline_png_is_written_atomically(capsys, tmp_path, direct):
    png = tmp_path / "timeline.png"
    code, out, err = run(capsys, EXAMPLE, "--config", CHIP, "--timeline", str(png))
    assert code == 0 and not err and str(png) in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert list(tmp_path.iterdir()) == [png]


def test_timeline_rows_lanes_and_traffic_total(direct, tmp_path):
    """One row per non-empty queue; overlapping DMA loads get lanes; the traffic panel moves
    exactly the bytes of the loads and stores; merging bars (max_bars) still draws."""
    from tilesim.report import timeline

    program, stats = direct
    labels, row, lane, nlanes, _ = timeline.rows_and_lanes(stats, program)
    assert labels == ["core 0 matrix", "core 0 dma0", "core 0 dma1"]
    for r in range(len(labels)):                  # bars sharing a lane never overlap
        for ln in range(nlanes[r]):
            sel = np.nonzero((row == r) & (lane == ln))[0]
            s, e = stats.t_start[sel], stats.t_end[sel]
            assert np.all(s[1:] >= e[:-1])
    assert nlanes[1] > 1                          # dma0 issues ahead of completions
    edges, rates = timeline.dma_traffic(stats, program, bins=50)
    moved = {k: float(np.sum(v * np.diff(edges)) / stats.clock_ghz) for k, v in rates.items()}
    assert moved == pytest.approx({"load": stats.dram_read_bytes,
                                   "store": stats.dram_write_bytes})
    out = timeline.plot_timeline(stats, program, tmp_path / "merged.png", max_bars=4,
                                 title="merged")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_merge_bars_joins_close_bars_of_one_group_only():
    from tilesim.report.timeline import merge_bars

    g = np.array([0, 0, 0, 1, 1])
    s = np.array([0, 12, 10, 0, 30])
    e = np.array([10, 20, 11, 5, 40])
    gg, ss, ee = merge_bars(g, s, e, gap=2)
    assert gg.tolist() == [0, 1, 1]
    assert ss.tolist() == [0, 0, 30] and ee.tolist() == [20, 5, 40]


def test_timeline_of_many_instructions_uses_few_artists(tmp_path, monkeypatch):
    """10^5 instructions are drawn as one PolyCollection per category, not one bar each."""
    import matplotlib.axes

    from tilesim.isa.opcodes import Engine, Op
    from tilesim.isa.program import ProgramBuilder
    from tilesim.report import timeline

    n = 100_000
    b = ProgramBuilder(n_cores=1, dma_engines=1)
    for op in (Op.LDW, Op.MM):
        b.emit(0, Engine.MATRIX, op=op)
    b.emit(0, Engine.DMA, op=Op.LOAD)
    prog = b.build()
    reps = np.array([n // 2, n // 2 - 1, 1])           # stretch the tiny program to n records
    prog.instrs = np.repeat(prog.instrs, reps)
    prog.queue_len = np.array([[n - 1, 0, 1]])
    prog.queue_start = np.array([[0, n - 1, n - 1]])
    t = np.arange(n, dtype=np.int64) * 3
    stats = types.SimpleNamespace(t_start=t, t_end=t + 2, cycles=int(t[-1] + 2), clock_ghz=1.0,
                                  program="many", chip="none", seconds=(t[-1] + 2) / 1e9,
                                  dram={})
    added = []
    real = matplotlib.axes.Axes.add_collection
    monkeypatch.setattr(matplotlib.axes.Axes, "add_collection",
                        lambda self, c, *a, **k: added.append(c) or real(self, c, *a, **k))
    timeline.plot_timeline(stats, prog, tmp_path / "many.png")
    assert len(added) == 3                              # ldw, mm, load
    assert (tmp_path / "many.png").stat().st_size > 0


def test_functional_run_prints_a_times_b(capsys, tmp_path, direct):
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (16, 16))
    bm = rng.integers(-128, 128, (16, 4))
    np.save(tmp_path / "a.npy", a.astype(np.int8))
    np.save(tmp_path / "b.npy", bm)                     # int64 values that fit int8
    argv = [EXAMPLE, "--config", CHIP, "--functional", "--input", f"A={tmp_path / 'a.npy'}",
            "--input", f"B={tmp_path / 'b.npy'}", "--output", "C"]
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0 and not err
    d = json.loads(out)
    assert np.array_equal(np.array(d["outputs"]["C"]), a @ bm)
    assert d["cycles"] == direct[1].cycles                 # timing never depends on values
    code, out, err = run(capsys, *argv)
    assert code == 0 and not err
    assert "C (int32, shape (16, 4)) =" in out
    printed = out.split("C (int32, shape (16, 4)) =\n", 1)[1].split("  simulated")[0]
    values = np.array(re.findall(r"-?\d+", printed), np.int64)
    assert np.array_equal(values.reshape(16, 4), a @ bm)


def _bad_asm(tmp_path):
    p = tmp_path / "bad.tasm"
    p.write_text(".program p cores=1 dma_engines=1\n.queue core=0 engine=matrix\n    frob x=1\n")
    return str(p)


@pytest.mark.parametrize("argv,needles", [
    (["nosuch.tasm", "--config", CHIP], ["nosuch.tasm", "cannot read"]),
    ([EXAMPLE, "--config", "nosuch-chip"], ["nosuch-chip", "teach-4x4"]),
    ([EXAMPLE, "--config", CHIP, "--functional", "--input", "X=x.npy"],
     ["--input", "'X' is not a buffer"]),
    ([EXAMPLE, "--config", CHIP, "--functional", "--input", "a=x.npy"],
     ["--input", "did you mean 'A'"]),
    ([EXAMPLE, "--config", CHIP, "--functional", "--input", "A=missing.npy", "--input",
      "Q=q.npy"], ["missing.npy", "no such file", "'Q'"]),
    ([EXAMPLE, "--config", CHIP, "--functional", "--input", "A"], ["--input", "NAME=FILE.npy"]),
    ([EXAMPLE, "--config", CHIP, "--functional", "--output", "Z"], ["--output", "'Z'"]),
    ([EXAMPLE, "--config", CHIP, "--output", "C"], ["--output", "needs --functional"]),
    (["BAD", "--config", CHIP], ["bad.tasm", "line 3", "frob"]),
    ([EXAMPLE, "--config", CHIP, "--timeline", "/no/such/dir/t.png"],
     ["--timeline", "no such folder"]),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, needles):
    argv = [_bad_asm(tmp_path) if a == "BAD" else a for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and not out
    assert err.count("\n") == 1 and err.startswith("error: ")
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"


def test_bad_input_files_are_named(capsys, tmp_path):
    np.save(tmp_path / "short.npy", np.zeros(5))
    np.save(tmp_path / "big.npy", np.full((16, 16), 300))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    code, out, err = run(capsys, EXAMPLE, "--config", CHIP, "--functional",
                         "--input", f"A={tmp_path / 'big.npy'}",
                         "--input", f"B={tmp_path / 'short.npy'}",
                         "--input", f"C={tmp_path / 'junk.npy'}")
    assert code == 2 and not out and err.count("\n") == 1
    for n in ("big.npy", "-128..127", "short.npy", "has 5 values", "holds 64",
              "junk.npy", "cannot read"):
        assert n in err, f"{n!r} not in {err!r}"
